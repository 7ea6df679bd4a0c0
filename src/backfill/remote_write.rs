//! Prometheus remote write 1.0 without I/O: the `WriteRequest` protobuf encoded
//! by hand, snappy block compression, and cutting series into batches.
//!
//! The message is small enough not to need a protobuf library:
//!
//! ```text
//! message WriteRequest { repeated TimeSeries timeseries = 1; }
//! message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//! message Label        { string name = 1; string value = 2; }
//! message Sample       { double value = 1; int64 timestamp = 2; }  // milliseconds
//! ```
//!
//! Labels are sorted by name (with `__name__`) and samples increase in time, as
//! receivers require. The HTTP side lives in `backfill::sink`.

/// One series with its samples: labels sorted by name, `__name__` among them.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSeries {
    pub labels: Vec<(String, String)>,
    /// `(timestamp in milliseconds, value)`, increasing in time.
    pub samples: Vec<(i64, f64)>,
}

impl TimeSeries {
    /// A series named `name` with `labels` (any order; sorted here).
    pub fn new(name: &str, labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> TimeSeries {
        let mut all: Vec<(String, String)> = Vec::with_capacity(labels.len() + 1);
        all.push(("__name__".to_owned(), name.to_owned()));
        all.extend(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        all.sort_by(|a, b| a.0.cmp(&b.0));
        TimeSeries {
            labels: all,
            samples,
        }
    }
}

// Protobuf wire types.
const LEN: u8 = 2;
const I64: u8 = 1;
const VARINT: u8 = 0;

const fn tag(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn label_len(name: &str, value: &str) -> usize {
    1 + varint_len(name.len() as u64)
        + name.len()
        + 1
        + varint_len(value.len() as u64)
        + value.len()
}

fn sample_len(timestamp: i64) -> usize {
    // A negative int64 is a ten-byte varint (two's complement), as protobuf says.
    1 + 8 + 1 + varint_len(timestamp as u64)
}

fn series_len(s: &TimeSeries) -> usize {
    let labels: usize = s
        .labels
        .iter()
        .map(|(k, v)| {
            let n = label_len(k, v);
            1 + varint_len(n as u64) + n
        })
        .sum();
    let samples: usize = s
        .samples
        .iter()
        .map(|(t, _)| {
            let n = sample_len(*t);
            1 + varint_len(n as u64) + n
        })
        .sum();
    labels + samples
}

/// Appends the protobuf `WriteRequest` holding `series` to `out`.
pub fn encode(series: &[TimeSeries], out: &mut Vec<u8>) {
    let total: usize = series
        .iter()
        .map(|s| {
            let n = series_len(s);
            1 + varint_len(n as u64) + n
        })
        .sum();
    out.reserve(total);
    for s in series {
        out.push(tag(1, LEN));
        put_varint(out, series_len(s) as u64);
        for (k, v) in &s.labels {
            out.push(tag(1, LEN));
            put_varint(out, label_len(k, v) as u64);
            out.push(tag(1, LEN));
            put_varint(out, k.len() as u64);
            out.extend_from_slice(k.as_bytes());
            out.push(tag(2, LEN));
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
        }
        for (t, v) in &s.samples {
            out.push(tag(2, LEN));
            put_varint(out, sample_len(*t) as u64);
            out.push(tag(1, I64));
            out.extend_from_slice(&v.to_le_bytes());
            out.push(tag(2, VARINT));
            put_varint(out, *t as u64);
        }
    }
}

/// The request body: the encoded `WriteRequest`, snappy-compressed in the raw
/// (block) format remote write uses, not the framed one.
pub fn body(series: &[TimeSeries]) -> Result<Vec<u8>, snap::Error> {
    let mut raw = Vec::new();
    encode(series, &mut raw);
    snap::raw::Encoder::new().compress_vec(&raw)
}

/// Collects series into batches of at most `max_samples` samples, splitting a
/// long series over consecutive batches (its samples stay in time order, and
/// batches are sent in order).
#[derive(Debug)]
pub struct Batcher {
    max_samples: usize,
    pending: Vec<TimeSeries>,
    pending_samples: usize,
}

impl Batcher {
    pub fn new(max_samples: usize) -> Batcher {
        Batcher {
            max_samples: max_samples.max(1),
            pending: Vec::new(),
            pending_samples: 0,
        }
    }

    /// Adds a series; returns the batches it filled, in order (usually none).
    pub fn push(&mut self, mut series: TimeSeries) -> Vec<Vec<TimeSeries>> {
        let mut full = Vec::new();
        while !series.samples.is_empty() {
            let room = self.max_samples - self.pending_samples;
            if series.samples.len() <= room {
                self.pending_samples += series.samples.len();
                self.pending.push(series);
                break;
            }
            let rest = series.samples.split_off(room);
            self.pending.push(TimeSeries {
                labels: series.labels.clone(),
                samples: std::mem::replace(&mut series.samples, rest),
            });
            self.pending_samples = self.max_samples;
            full.extend(self.flush());
        }
        if self.pending_samples == self.max_samples {
            full.extend(self.flush());
        }
        full
    }

    /// The batch collected so far, if it has any sample.
    pub fn flush(&mut self) -> Option<Vec<TimeSeries>> {
        if self.pending_samples == 0 {
            return None;
        }
        self.pending_samples = 0;
        self.pending.retain(|s| !s.samples.is_empty());
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf reader for the test: (field, wire type, payload).
    fn fields(mut buf: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
        fn varint(buf: &mut &[u8]) -> u64 {
            let mut n = 0u64;
            let mut shift = 0;
            loop {
                let b = buf[0];
                *buf = &buf[1..];
                n |= u64::from(b & 0x7f) << shift;
                if b < 0x80 {
                    return n;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf);
            let (field, wire) = (key >> 3, (key & 7) as u8);
            let payload = match wire {
                0 => varint(&mut buf).to_le_bytes().to_vec(),
                1 => {
                    let p = buf[..8].to_vec();
                    buf = &buf[8..];
                    p
                }
                2 => {
                    let n = varint(&mut buf) as usize;
                    let p = buf[..n].to_vec();
                    buf = &buf[n..];
                    p
                }
                other => panic!("unexpected wire type {other}"),
            };
            out.push((field, wire, payload));
        }
        out
    }

    #[test]
    fn encodes_the_documented_message_byte_for_byte() {
        let s = TimeSeries::new("up", &[("job", "a")], vec![(1000, 1.0)]);
        assert_eq!(
            s.labels,
            vec![
                ("__name__".to_owned(), "up".to_owned()),
                ("job".to_owned(), "a".to_owned())
            ]
        );
        let mut out = Vec::new();
        encode(&[s], &mut out);
        let mut expected = vec![0x0a, 40];
        // Label __name__="up"
        expected.extend([0x0a, 14, 0x0a, 8]);
        expected.extend(b"__name__");
        expected.extend([0x12, 2]);
        expected.extend(b"up");
        // Label job="a"
        expected.extend([0x0a, 8, 0x0a, 3]);
        expected.extend(b"job");
        expected.extend([0x12, 1, b'a']);
        // Sample 1.0 @ 1000 ms
        expected.extend([0x12, 12, 0x09]);
        expected.extend(1.0f64.to_le_bytes());
        expected.extend([0x10, 0xe8, 0x07]);
        assert_eq!(expected[1] as usize, expected.len() - 2);
        assert_eq!(out, expected);
    }

    #[test]
    fn round_trips_labels_values_and_timestamps() {
        let series = vec![
            TimeSeries::new(
                "m",
                &[("flow_id", "1"), ("error_type", "x\"y")],
                vec![(1_706_601_600_000, 0.125), (1_706_605_200_000, 3.0)],
            ),
            TimeSeries::new("n", &[], vec![(-5, f64::MAX)]),
        ];
        let mut out = Vec::new();
        encode(&series, &mut out);
        let top = fields(&out);
        assert_eq!(top.len(), 2);
        for ((field, wire, payload), want) in top.iter().zip(&series) {
            assert_eq!((*field, *wire), (1, 2));
            let mut labels = Vec::new();
            let mut samples = Vec::new();
            for (f, _, p) in fields(payload) {
                let inner = fields(&p);
                if f == 1 {
                    let text = |i: usize| String::from_utf8(inner[i].2.clone()).expect("utf8");
                    labels.push((text(0), text(1)));
                } else {
                    let value = f64::from_le_bytes(inner[0].2[..8].try_into().expect("8"));
                    let t = u64::from_le_bytes(inner[1].2[..8].try_into().expect("8")) as i64;
                    samples.push((t, value));
                }
            }
            assert_eq!(labels, want.labels);
            assert_eq!(samples, want.samples);
        }
        let names: Vec<&str> = series[0].labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["__name__", "error_type", "flow_id"], "sorted");
    }

    #[test]
    fn snappy_body_decompresses_to_the_message() {
        let series = vec![TimeSeries::new(
            "m",
            &[("a", "b")],
            (0..500).map(|i| (i * 3_600_000, i as f64)).collect(),
        )];
        let compressed = body(&series).expect("compress");
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&compressed)
            .expect("raw snappy");
        let mut expected = Vec::new();
        encode(&series, &mut expected);
        assert_eq!(raw, expected);
        assert!(compressed.len() < raw.len());
    }

    #[test]
    fn batches_split_long_series_in_order() {
        let mut b = Batcher::new(4);
        let s = |name: &str, n: i64| {
            TimeSeries::new(name, &[], (0..n).map(|t| (t, t as f64)).collect())
        };
        assert!(b.push(s("a", 3)).is_empty());
        let full = b.push(s("b", 6));
        // a(3)+b(1) | b(4) | b(1) pending
        assert_eq!(full.len(), 2);
        let counts: Vec<Vec<usize>> = full
            .iter()
            .map(|batch| batch.iter().map(|s| s.samples.len()).collect())
            .collect();
        assert_eq!(counts, vec![vec![3, 1], vec![4]]);
        assert_eq!(full[1][0].samples[0].0, 1, "b continues where it stopped");
        let rest = b.flush().expect("pending");
        assert_eq!(rest[0].samples, vec![(5, 5.0)]);
        assert!(b.flush().is_none());
        assert!(
            b.push(s("c", 0)).is_empty(),
            "an empty series sends nothing"
        );
        assert!(b.flush().is_none());
        let exact = b.push(s("d", 4));
        assert_eq!(exact.len(), 1, "a batch that is exactly full goes at once");
    }
}
