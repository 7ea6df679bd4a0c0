//! Renders a [`Snapshot`] into the Prometheus text format with the `prometheus`
//! crate's data model and encoder, once per poll, and keeps the result ready to
//! serve: the text and a pre-compressed gzip prefix (see [`Rendered`]).
//!
//! The flattening of Graph answers into samples (names, labels, the cumulative
//! latency histogram) lives in `flowdata`, shared with the backfill.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use flate2::{Compress, Compression, FlushCompress, Status};
use prometheus::TextEncoder;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::flowdata::{self, FamilyKind, PointSamples};
use crate::model::{DataPoint, Granularity, MetricKind};
use crate::snapshot::{CellStatus, Snapshot};

const CACHED: &str = "Cached: refreshed when a poll of the Flows Metrics API ends, not on scrape, because Graph data lags hours and calls are rate limited.";
const LATENCY: &str = flowdata::LATENCY.name;

pub use crate::flowdata::{KNOWN_ERROR_TYPES, LatencyHistogram, latency_histogram};

/// A metric family under construction (also used by `webhook::render`).
pub(crate) struct Family(pub(crate) MetricFamily);

impl Family {
    pub(crate) fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Family(mf)
    }

    fn metric(labels: &[(&str, &str)]) -> Metric {
        let pairs = labels
            .iter()
            .map(|(k, v)| {
                let mut p = LabelPair::default();
                p.set_name((*k).to_owned());
                p.set_value((*v).to_owned());
                p
            })
            .collect();
        Metric::from_label(pairs)
    }

    pub(crate) fn gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = Family::metric(labels);
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        self.0.mut_metric().push(m);
    }

    pub(crate) fn counter(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = Family::metric(labels);
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
        self.0.mut_metric().push(m);
    }

    /// A histogram: cumulative `buckets`, `+Inf` is `count`; a `_sum` only
    /// when there is one (Meta reports none for endpoint latency).
    pub(crate) fn histogram_sum(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: Option<f64>,
    ) {
        let mut m = Family::metric(labels);
        let mut ph = Histogram::default();
        ph.set_bucket(
            buckets
                .iter()
                .map(|(le, c)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(*c);
                    b
                })
                .collect(),
        );
        ph.set_sample_count(count);
        if let Some(sum) = sum {
            ph.set_sample_sum(sum);
        }
        m.set_histogram(ph);
        self.0.mut_metric().push(m);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], h: &LatencyHistogram) {
        self.histogram_sum(labels, &h.buckets, h.count, None);
    }
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64
}

/// One (flow, metric) cell of one granularity, as the render loops see it.
struct CellRef<'a> {
    flow_id: &'a str,
    granularity: &'static str,
    metric: MetricKind,
    cell: &'a crate::snapshot::Cell,
}

impl CellRef<'_> {
    fn labels(&self) -> [(&str, &str); 3] {
        [
            ("flow_id", self.flow_id),
            ("granularity", self.granularity),
            ("metric", self.metric.label()),
        ]
    }

    /// The point shown for `metric`, if this cell is of that metric.
    fn shown(&self, metric: MetricKind) -> Option<&DataPoint> {
        (self.metric == metric)
            .then_some(self.cell.shown.as_ref())
            .flatten()
    }
}

/// Builds the exposition one metric family at a time: a family's metric
/// objects are encoded with the `prometheus` crate's encoder and dropped before
/// the next family is built, so a render of many flows never holds them all.
struct Renderer<'a> {
    snapshot: &'a Snapshot,
    granularities: &'a [Granularity],
    encoder: TextEncoder,
    out: String,
    scratch: String,
}

impl<'a> Renderer<'a> {
    fn cells(&self) -> impl Iterator<Item = CellRef<'a>> + 'a {
        let snapshot = self.snapshot;
        self.granularities.iter().flat_map(move |g| {
            snapshot.cells.get(g).into_iter().flat_map(move |cells| {
                cells.iter().map(move |((flow_id, metric), cell)| CellRef {
                    flow_id,
                    granularity: g.label(),
                    metric: *metric,
                    cell,
                })
            })
        })
    }

    fn emit(&mut self, family: Family) {
        let family = family.0;
        if family.get_metric().is_empty() {
            return;
        }
        if family.name() != LATENCY {
            if let Err(e) = self.encoder.encode_utf8(&[family], &mut self.out) {
                tracing::error!(error = %e, "cannot encode flow metrics");
            }
            return;
        }
        self.scratch.clear();
        if let Err(e) = self.encoder.encode_utf8(&[family], &mut self.scratch) {
            tracing::error!(error = %e, "cannot encode flow metrics");
            return;
        }
        // The crate's encoder always writes `_sum`, but Meta does not report the
        // sum of latencies and it cannot be derived from ceil-second buckets, so
        // those lines are dropped rather than published as a made-up number.
        let sum_prefix = format!("{LATENCY}_sum");
        for line in self.scratch.lines().filter(|l| !l.starts_with(&sum_prefix)) {
            self.out.push_str(line);
            self.out.push('\n');
        }
    }

    /// A family with one sample per cell for which `value` gives one.
    fn per_cell(&mut self, name: &str, help: &str, value: impl Fn(&CellRef<'_>) -> Option<f64>) {
        let mut f = Family::new(name, &with_cached(help), MetricType::GAUGE);
        for c in self.cells() {
            if let Some(v) = value(&c) {
                f.gauge(&c.labels(), v);
            }
        }
        self.emit(f);
    }

    /// A family of per-flow data: the samples of each shown point of `metric`,
    /// flattened by [`flowdata::point_samples`] (shared with the backfill).
    fn per_point(&mut self, metric: MetricKind) {
        let family = flowdata::family(metric);
        let kind = match family.kind {
            FamilyKind::Gauge => MetricType::GAUGE,
            FamilyKind::Histogram => MetricType::HISTOGRAM,
        };
        let mut f = Family::new(family.name, &with_cached(family.help), kind);
        for c in self.cells() {
            let Some(point) = c.shown(metric) else {
                continue;
            };
            let labels = [("flow_id", c.flow_id), ("granularity", c.granularity)];
            // A point is flattened once when polled (`choose_point`); an invalid
            // one never becomes `shown`, so an error here cannot happen.
            match flowdata::point_samples(metric, &point.values) {
                Ok(PointSamples::None) | Err(_) => {}
                Ok(PointSamples::Single(v)) => f.gauge(&labels, v),
                Ok(PointSamples::ByLabel(name, values)) => {
                    for (value, v) in &values {
                        f.gauge(&[labels[0], labels[1], (name, value)], *v);
                    }
                }
                Ok(PointSamples::Histogram(h)) => f.histogram(&labels, &h),
            }
        }
        self.emit(f);
    }
}

fn with_cached(help: &str) -> String {
    format!("{help} {CACHED}")
}

/// Renders the per-flow part of `/metrics`. `size_hint` is the size of the
/// previous render, to allocate the text once.
pub fn render(snapshot: &Snapshot, granularities: &[Granularity], size_hint: usize) -> String {
    let mut r = Renderer {
        snapshot,
        granularities,
        encoder: TextEncoder::new(),
        out: String::with_capacity(size_hint + size_hint / 8 + 4096),
        scratch: String::new(),
    };

    let mut info = Family::new(
        "whatsapp_flows_flow_info",
        &with_cached(
            "Always 1 for every flow discovered in a configured WABA or listed in the config; labels carry its name, WABA, status, health (can_send_message) and how it is known (source).",
        ),
        MetricType::GAUGE,
    );
    for f in snapshot.flows.values() {
        let source = match f.source {
            crate::model::FlowSource::Discovered => "discovered",
            crate::model::FlowSource::Static => "static",
        };
        info.gauge(
            &[
                ("flow_id", &f.id),
                ("flow_name", &f.name),
                ("waba_id", &f.waba_id),
                ("status", f.status.as_str()),
                ("can_send_message", &f.can_send_message),
                ("data_api_version", &f.data_api_version),
                ("source", source),
            ],
            1.0,
        );
    }
    r.emit(info);

    for metric in MetricKind::ALL {
        r.per_point(metric);
    }
    r.per_cell(
        flowdata::PERIOD_START.name,
        flowdata::PERIOD_START.help,
        |c| c.cell.shown.as_ref().map(|p| unix(p.start)),
    );
    r.per_cell(
        "whatsapp_flows_insufficient_data",
        "1 while Graph answers error 139006 (the flow had fewer than 250 endpoint requests) for this metric, else 0; no values are shown then.",
        |c| Some(f64::from(u8::from(c.cell.status == CellStatus::InsufficientData))),
    );
    r.per_cell(
        "whatsapp_flows_data_stale",
        "1 when the last poll of this metric failed and the values shown are the last good ones from an earlier poll, else 0.",
        |c| Some(f64::from(u8::from(c.cell.is_stale()))),
    );
    r.per_cell(
        "whatsapp_flows_exporter_last_success_timestamp_seconds",
        "Unix time at which Graph last answered this flow, metric and granularity (with data or 139006).",
        |c| c.cell.last_success.map(unix),
    );

    let mut failing_count: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for c in r.cells() {
        if let CellStatus::Failed(class) = c.cell.status {
            *failing_count.entry((c.flow_id, class.label())).or_default() += 1;
        }
    }
    let mut failing = Family::new(
        "whatsapp_flows_exporter_flow_failing_metrics",
        &with_cached(
            "Number of this flow's metrics (over all granularities) whose last poll failed, by error class; absent when none fails.",
        ),
        MetricType::GAUGE,
    );
    for ((flow_id, class), n) in failing_count {
        failing.gauge(&[("flow_id", flow_id), ("class", class)], n as f64);
    }
    r.emit(failing);

    let mut errors_total = Family::new(
        "whatsapp_flows_exporter_flow_errors_total",
        &with_cached(
            "Failed metric polls of this flow by error class since the exporter started (a call not made because the poll halted counts with the class that halted it; 139006 is not counted: it is a state, see whatsapp_flows_insufficient_data).",
        ),
        MetricType::COUNTER,
    );
    for ((flow_id, class), n) in &snapshot.errors_total {
        errors_total.counter(&[("flow_id", flow_id), ("class", class.label())], *n as f64);
    }
    r.emit(errors_total);

    let mut waba_success = Family::new(
        "whatsapp_flows_exporter_discovery_last_success_timestamp_seconds",
        &with_cached("Unix time at which the flows of this WABA were last listed successfully."),
        MetricType::GAUGE,
    );
    for (waba, state) in &snapshot.wabas {
        if let Some(t) = state.last_success {
            waba_success.gauge(&[("waba_id", waba)], unix(t));
        }
    }
    r.emit(waba_success);

    let mut waba_failing = Family::new(
        "whatsapp_flows_exporter_discovery_failing",
        &with_cached(
            "1 while the last listing of this WABA's flows failed, by error class; absent when it succeeded. Its flows known before are kept.",
        ),
        MetricType::GAUGE,
    );
    for (waba, state) in &snapshot.wabas {
        if let Some(class) = state.last_error {
            waba_failing.gauge(&[("waba_id", waba), ("class", class.label())], 1.0);
        }
    }
    r.emit(waba_failing);

    let mut truncated = Family::new(
        "whatsapp_flows_exporter_discovery_truncated",
        &with_cached(
            "1 when the last listing of this WABA's flows was cut short (more pages than limits.listing_pages, or a paging loop); the flows of the pages read are kept. Absent otherwise.",
        ),
        MetricType::GAUGE,
    );
    let mut skipped_entries = Family::new(
        "whatsapp_flows_exporter_discovery_skipped_entries",
        &with_cached(
            "Entries of the last listing of this WABA that were skipped because they are not a flow (an id that is not a Graph id); the rest of the listing is kept.",
        ),
        MetricType::GAUGE,
    );
    for (waba, state) in &snapshot.wabas {
        if state.truncated.is_some() {
            truncated.gauge(&[("waba_id", waba)], 1.0);
        }
        if state.last_success.is_some() {
            skipped_entries.gauge(&[("waba_id", waba)], state.skipped_entries as f64);
        }
    }
    r.emit(truncated);
    r.emit(skipped_entries);

    let mut per_status: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for f in snapshot.flows.values() {
        *per_status
            .entry((&f.waba_id, f.status.as_str()))
            .or_default() += 1;
    }
    let mut discovered = Family::new(
        "whatsapp_flows_exporter_discovered_flows",
        &with_cached(
            "Flows known per WABA (empty waba_id: configured flows discovery did not find) and status.",
        ),
        MetricType::GAUGE,
    );
    for ((waba, status), n) in per_status {
        discovered.gauge(&[("waba_id", waba), ("status", status)], n as f64);
    }
    r.emit(discovered);

    // The text is kept for many scrapes: give back what the estimate over-reserved.
    r.out.shrink_to_fit();
    r.out
}

/// A rendered per-flow exposition, ready to serve many times: the text, and the
/// same text as the start of a gzip stream (raw deflate, sync-flushed, no final
/// block) with its CRC, so a scrape that asks for gzip compresses only the small
/// live part and appends it (see [`Rendered::gzip_with`]).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: bytes::Bytes,
    deflated: bytes::Bytes,
    crc: crc32fast::Hasher,
}

impl Rendered {
    pub fn new(text: String) -> Rendered {
        // A sync flush ends the output on a byte boundary without a final block,
        // so more deflate blocks can follow it.
        let mut deflated = deflate(text.as_bytes(), FlushCompress::Sync, Vec::new());
        deflated.shrink_to_fit();
        let mut crc = crc32fast::Hasher::new();
        crc.update(text.as_bytes());
        Rendered {
            text: text.into(),
            deflated: deflated.into(),
            crc,
        }
    }

    pub fn empty() -> Rendered {
        Rendered::new(String::new())
    }

    /// `text` followed by `tail`, as one gzip member (RFC 1952).
    pub fn gzip_with(&self, tail: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.deflated.len() + tail.len() / 4 + 1024);
        // Header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        out.extend_from_slice(&self.deflated);
        let mut out = deflate(tail, FlushCompress::Finish, out);
        let mut crc = self.crc.clone();
        let mut tail_crc = crc32fast::Hasher::new();
        tail_crc.update(tail);
        crc.combine(&tail_crc);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        let total = (self.text.len() + tail.len()) as u32; // ISIZE is the length mod 2^32
        out.extend_from_slice(&total.to_le_bytes());
        out
    }
}

/// Raw-deflates `data` onto `out`, ending with `flush` (Sync: byte-aligned, more
/// may follow; Finish: final block). Loops until the compressor has no more
/// output, which a single call does not guarantee when `out` fills up.
fn deflate(data: &[u8], flush: FlushCompress, mut out: Vec<u8>) -> Vec<u8> {
    let mut c = Compress::new(Compression::fast(), false);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(data.len() / 4).max(4096));
        }
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&data[consumed..], &mut out, flush);
        let done = match status {
            Ok(Status::StreamEnd) => true,
            // Output stops short of the buffer's end only when all is flushed.
            Ok(_) => {
                flush == FlushCompress::Sync
                    && c.total_in() as usize == data.len()
                    && out.len() < out.capacity()
            }
            Err(_) => true, // cannot happen with a valid compressor; never loop forever
        };
        if done {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_prefix_plus_tail_is_one_valid_member() {
        let text: String = (0..50_000)
            .map(|i| format!("series_{i}{{flow_id=\"{i}\"}} {i}\n"))
            .collect();
        let rendered = Rendered::new(text.clone());
        let tail = b"# HELP live Live.\n# TYPE live gauge\nlive 1\n";
        let gz = rendered.gzip_with(tail);
        // A single-member decoder must see everything: no concatenated members.
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut out)
            .expect("valid gzip (CRC and length checked)");
        assert_eq!(
            out,
            format!("{text}{}", std::str::from_utf8(tail).expect("utf8"))
        );
        let empty = Rendered::empty().gzip_with(b"");
        let mut out = String::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_string(&mut out)
            .expect("valid empty gzip");
        assert_eq!(out, "");
    }
}
