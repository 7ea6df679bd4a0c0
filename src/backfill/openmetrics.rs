//! A streaming writer of OpenMetrics text with a timestamp on every sample, the
//! input of `promtool tsdb create-blocks-from openmetrics`. Writes to any
//! `io::Write`; no other I/O.
//!
//! It enforces what OpenMetrics asks of such a file, and refuses what would
//! break it: one `# TYPE` (and `# UNIT`, `# HELP`) per family, families never
//! interleaved or reopened, timestamps increasing within a series, a histogram's
//! buckets and `_count` of one timestamp together (a MetricPoint), label values
//! escaped (`\\`, `\"`, `\n`), and `# EOF` at the end. Series must not be
//! interleaved either; the caller writes each series whole (the writer does not
//! remember every label set, which would cost memory per series).
//!
//! Two deliberate choices, both so the samples land in the same series as the
//! live exporter's:
//! - `le` is written `1` .. `10` and `+Inf`, as the live exposition writes it.
//!   OpenMetrics prefers canonical floats (`1.0`), but Prometheus 2.x stores the
//!   label as written, and `le="1.0"` would be another series.
//! - The latency histogram has `_bucket` and `_count` but no `_sum`: Meta does
//!   not report the sum. OpenMetrics pairs `_count` with `_sum`; Prometheus'
//!   parser (promtool 2.42, checked by the end-to-end test) accepts the family
//!   without `_sum`, and the live series has `_count`, so it is kept.

use std::io::{self, Write};

use crate::flowdata::{FamilyKind, LatencyHistogram, le_label};

/// Writes one OpenMetrics document.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    /// The family being written, and its type.
    current: Option<(String, FamilyKind)>,
    /// Every family written so far (a handful: one per metric).
    seen: Vec<String>,
    samples: u64,
    /// Scratch space for one series' `name{labels} ` prefix.
    prefix: Vec<u8>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer {
            out,
            current: None,
            seen: Vec::new(),
            samples: 0,
            prefix: Vec::with_capacity(256),
        }
    }

    /// Samples written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Starts a family: `# TYPE`, then `# UNIT` and `# HELP` when given.
    pub fn family(
        &mut self,
        name: &str,
        kind: FamilyKind,
        unit: Option<&str>,
        help: &str,
    ) -> io::Result<()> {
        self.open(name, kind)?;
        let type_name = match kind {
            FamilyKind::Gauge => "gauge",
            FamilyKind::Histogram => "histogram",
        };
        writeln!(self.out, "# TYPE {name} {type_name}")?;
        if let Some(unit) = unit {
            writeln!(self.out, "# UNIT {name} {unit}")?;
        }
        if !help.is_empty() {
            write!(self.out, "# HELP {name} ")?;
            let mut escaped = Vec::with_capacity(help.len());
            escape(help, &mut escaped);
            self.out.write_all(&escaped)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Appends a family written elsewhere (for example spilled to a file while
    /// other families were written): `section` must be exactly that family's
    /// lines, as another `Writer` wrote them, without `# EOF`.
    pub fn append_family(
        &mut self,
        name: &str,
        kind: FamilyKind,
        samples: u64,
        section: &mut impl io::Read,
    ) -> io::Result<()> {
        self.open(name, kind)?;
        io::copy(section, &mut self.out)?;
        self.samples += samples;
        Ok(())
    }

    fn open(&mut self, name: &str, kind: FamilyKind) -> io::Result<()> {
        debug_assert!(is_metric_name(name), "bad metric name {name}");
        if self.seen.iter().any(|s| s == name) {
            return Err(invalid(format!(
                "family {name} was already written: families must not be interleaved"
            )));
        }
        self.seen.push(name.to_owned());
        self.current = Some((name.to_owned(), kind));
        Ok(())
    }

    fn current(&self, kind: FamilyKind) -> io::Result<&str> {
        match &self.current {
            Some((name, k)) if *k == kind => Ok(name),
            Some((name, k)) => Err(invalid(format!(
                "a {kind:?} series written into {name}, a {k:?} family"
            ))),
            None => Err(invalid("a series written before any family".to_owned())),
        }
    }

    /// Writes one whole gauge series of the current family: `labels` in the
    /// order given, `samples` as `(unix seconds, value)` in increasing time.
    pub fn gauge(&mut self, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> io::Result<()> {
        check_increasing(samples.iter().map(|(t, _)| *t))?;
        let name = self.current(FamilyKind::Gauge)?.to_owned();
        self.prefix.clear();
        series_prefix(&mut self.prefix, &name, "", labels, None);
        let mut line = Vec::with_capacity(self.prefix.len() + 48);
        for (t, v) in samples {
            line.clear();
            line.extend_from_slice(&self.prefix);
            push_sample(&mut line, *v, *t);
            self.out.write_all(&line)?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// Writes one whole histogram series of the current family: for each
    /// timestamp, in increasing order, its cumulative buckets, `+Inf` and `_count`.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        points: &[(i64, &LatencyHistogram)],
    ) -> io::Result<()> {
        check_increasing(points.iter().map(|(t, _)| *t))?;
        let name = self.current(FamilyKind::Histogram)?.to_owned();
        // One prefix per bucket bound, then `+Inf` and `_count`, rendered once.
        let bounds: Vec<f64> = points
            .first()
            .map(|(_, h)| h.buckets.iter().map(|(le, _)| *le).collect())
            .unwrap_or_default();
        let mut prefixes: Vec<Vec<u8>> = Vec::with_capacity(bounds.len() + 2);
        for le in bounds.iter().copied().chain([f64::INFINITY]) {
            let mut p = Vec::with_capacity(160);
            series_prefix(&mut p, &name, "_bucket", labels, Some(&le_label(le)));
            prefixes.push(p);
        }
        let mut count_prefix = Vec::with_capacity(160);
        series_prefix(&mut count_prefix, &name, "_count", labels, None);

        let mut block = Vec::with_capacity(prefixes.iter().map(|p| p.len() + 32).sum());
        for (t, h) in points {
            if h.buckets.len() != bounds.len()
                || h.buckets.iter().zip(&bounds).any(|((le, _), b)| le != b)
            {
                return Err(invalid(format!(
                    "histogram {name} changes its buckets between timestamps"
                )));
            }
            block.clear();
            for ((_, cumulative), prefix) in h.buckets.iter().zip(&prefixes) {
                block.extend_from_slice(prefix);
                push_sample(&mut block, *cumulative as f64, *t);
            }
            for prefix in [&prefixes[bounds.len()], &count_prefix] {
                block.extend_from_slice(prefix);
                push_sample(&mut block, h.count as f64, *t);
            }
            self.out.write_all(&block)?;
            self.samples += bounds.len() as u64 + 2;
        }
        Ok(())
    }

    /// Ends the document with `# EOF` and hands back the output, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"# EOF\n")?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Hands back the output without `# EOF`: for a section that another
    /// writer appends with [`Writer::append_family`].
    pub fn into_section(mut self) -> io::Result<(W, u64)> {
        self.out.flush()?;
        Ok((self.out, self.samples))
    }
}

fn check_increasing(mut timestamps: impl Iterator<Item = i64>) -> io::Result<()> {
    let Some(mut previous) = timestamps.next() else {
        return Ok(());
    };
    for t in timestamps {
        if t <= previous {
            return Err(invalid(format!(
                "timestamps must increase within a series: {t} after {previous}"
            )));
        }
        previous = t;
    }
    Ok(())
}

/// `name{label="value",...} ` with the values escaped; `le` last when given.
fn series_prefix(
    out: &mut Vec<u8>,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
    let mut first = true;
    for (k, v) in all {
        debug_assert!(is_label_name(k), "bad label name {k}");
        out.push(if first { b'{' } else { b',' });
        first = false;
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"=\"");
        escape(v, out);
        out.push(b'"');
    }
    if !first {
        out.push(b'}');
    }
    out.push(b' ');
}

/// Escapes a label value or HELP text: backslash, double quote and line feed.
pub fn escape(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

/// `value timestamp\n`. Whole numbers (every count) are written as integers,
/// other values in Rust's shortest form that reads back to the same f64.
fn push_sample(out: &mut Vec<u8>, value: f64, timestamp: i64) {
    push_value(out, value);
    out.push(b' ');
    push_int(out, timestamp);
    out.push(b'\n');
}

fn push_value(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        push_int(out, v as i64);
    } else {
        // `Display` for f64 never uses an exponent and round-trips exactly.
        let _ = write!(out, "{v}");
    }
}

fn push_int(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowdata::latency_histogram;

    fn text(w: Writer<Vec<u8>>) -> String {
        String::from_utf8(w.finish().expect("finish")).expect("utf8")
    }

    #[test]
    fn gauge_family_with_escaped_labels_and_eof() {
        let mut w = Writer::new(Vec::new());
        w.family(
            "whatsapp_flows_endpoint_request_errors",
            FamilyKind::Gauge,
            None,
            "Errors \"by\" type\\kind\nper period.",
        )
        .expect("family");
        w.gauge(
            &[
                ("flow_id", "1"),
                ("error_type", "odd \"quoted\" \\ back\nslash"),
            ],
            &[(1_706_601_600, 3.0), (1_706_605_200, 0.125)],
        )
        .expect("series");
        assert_eq!(w.samples(), 2);
        assert_eq!(
            text(w),
            concat!(
                "# TYPE whatsapp_flows_endpoint_request_errors gauge\n",
                "# HELP whatsapp_flows_endpoint_request_errors Errors \\\"by\\\" type\\\\kind\\nper period.\n",
                "whatsapp_flows_endpoint_request_errors{flow_id=\"1\",error_type=\"odd \\\"quoted\\\" \\\\ back\\nslash\"} 3 1706601600\n",
                "whatsapp_flows_endpoint_request_errors{flow_id=\"1\",error_type=\"odd \\\"quoted\\\" \\\\ back\\nslash\"} 0.125 1706605200\n",
                "# EOF\n",
            )
        );
    }

    #[test]
    fn histogram_points_keep_buckets_and_count_together() {
        let h1 = latency_histogram(&[("1".into(), 2.0), ("10+".into(), 1.0)]).expect("valid");
        let h2 = latency_histogram(&[("3".into(), 4.0)]).expect("valid");
        let mut w = Writer::new(Vec::new());
        w.family("lat_seconds", FamilyKind::Histogram, Some("seconds"), "")
            .expect("family");
        w.histogram(&[("flow_id", "7")], &[(100, &h1), (200, &h2)])
            .expect("series");
        assert_eq!(w.samples(), 24);
        let out = text(w);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# TYPE lat_seconds histogram");
        assert_eq!(lines[1], "# UNIT lat_seconds seconds");
        assert_eq!(lines[2], "lat_seconds_bucket{flow_id=\"7\",le=\"1\"} 2 100");
        assert_eq!(
            lines[11],
            "lat_seconds_bucket{flow_id=\"7\",le=\"10\"} 2 100"
        );
        assert_eq!(
            lines[12],
            "lat_seconds_bucket{flow_id=\"7\",le=\"+Inf\"} 3 100"
        );
        assert_eq!(lines[13], "lat_seconds_count{flow_id=\"7\"} 3 100");
        assert_eq!(
            lines[14],
            "lat_seconds_bucket{flow_id=\"7\",le=\"1\"} 0 200"
        );
        assert_eq!(
            lines[16],
            "lat_seconds_bucket{flow_id=\"7\",le=\"3\"} 4 200"
        );
        assert_eq!(lines[25], "lat_seconds_count{flow_id=\"7\"} 4 200");
        assert_eq!(lines[26], "# EOF");
        assert_eq!(lines.len(), 27);
        assert!(!out.contains("_sum"), "no invented sum");
    }

    #[test]
    fn refuses_what_would_break_the_file() {
        let mut w = Writer::new(Vec::new());
        assert!(w.gauge(&[], &[(1, 1.0)]).is_err(), "no family yet");
        w.family("a", FamilyKind::Gauge, None, "").expect("family");
        let err = w
            .gauge(&[("x", "1")], &[(2, 1.0), (2, 1.0)])
            .expect_err("repeated timestamp");
        assert!(err.to_string().contains("increase"), "{err}");
        assert!(w.gauge(&[], &[(3, 1.0), (1, 1.0)]).is_err(), "going back");
        let h = latency_histogram(&[]).expect("valid");
        assert!(
            w.histogram(&[], &[(1, &h)]).is_err(),
            "histogram in a gauge"
        );
        w.family("b", FamilyKind::Gauge, None, "").expect("family");
        let err = w
            .family("a", FamilyKind::Gauge, None, "")
            .expect_err("reopened");
        assert!(err.to_string().contains("interleaved"), "{err}");
        assert_eq!(w.samples(), 0, "nothing of a refused series is counted");
    }

    #[test]
    fn values_and_timestamps() {
        let mut out = Vec::new();
        for (v, t) in [
            (0.0, 0),
            (315.0, 1_706_601_600),
            (0.12625250501002, 5),
            (1e15, -3),
            (f64::NAN, 1),
            (f64::NEG_INFINITY, 1),
        ] {
            push_sample(&mut out, v, t);
        }
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "0 0\n315 1706601600\n0.12625250501002 5\n1000000000000000 -3\nNaN 1\n-Inf 1\n"
        );
    }

    #[test]
    fn an_appended_family_counts_as_written() {
        let mut spill = Writer::new(Vec::new());
        spill
            .family("b", FamilyKind::Gauge, None, "")
            .expect("family");
        spill.gauge(&[("k", "v")], &[(1, 2.0)]).expect("series");
        let (section, n) = spill.into_section().expect("section");

        let mut w = Writer::new(Vec::new());
        w.family("a", FamilyKind::Gauge, None, "").expect("family");
        w.gauge(&[], &[(1, 1.0)]).expect("series");
        w.append_family("b", FamilyKind::Gauge, n, &mut section.as_slice())
            .expect("append");
        assert!(w.family("b", FamilyKind::Gauge, None, "").is_err());
        assert_eq!(w.samples(), 2);
        assert_eq!(
            text(w),
            "# TYPE a gauge\na 1 1\n# TYPE b gauge\nb{k=\"v\"} 2 1\n# EOF\n"
        );
    }
}
