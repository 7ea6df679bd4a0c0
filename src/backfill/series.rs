//! The history of one (flow, metric, granularity) as series: the samples of every
//! period, grouped by series, ready for the OpenMetrics writer or remote write.
//! The names and labels come from `flowdata`, like the live exposition's. Pure.

use std::collections::BTreeMap;

use crate::flowdata::{self, LatencyHistogram, PointSamples};
use crate::model::{Granularity, MetricKind};

use super::remote_write::TimeSeries;

/// Every kept period of one flow, metric and granularity, oldest first, each
/// already flattened (and so validated) by [`flowdata::point_samples`].
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub flow_id: String,
    pub granularity: Granularity,
    pub metric: MetricKind,
    /// `(period start in unix seconds, samples)`, strictly increasing in time.
    pub points: Vec<(i64, PointSamples)>,
}

/// One gauge series: its extra label (`error_type`, `result`), if any, and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeSeries {
    pub extra: Option<(&'static str, String)>,
    pub samples: Vec<(i64, f64)>,
}

/// A history grouped into series.
#[derive(Debug, Clone, PartialEq)]
pub enum Flat<'a> {
    /// Series in label order; a label value absent from a period (a new error
    /// type Meta reported only sometimes) has no sample for that period.
    Gauges(Vec<GaugeSeries>),
    /// One histogram point per period.
    Histogram(Vec<(i64, &'a LatencyHistogram)>),
}

impl History {
    /// `flow_id` and `granularity`, the labels every series of it has.
    pub fn labels(&self) -> [(&'static str, &str); 2] {
        [
            ("flow_id", self.flow_id.as_str()),
            ("granularity", self.granularity.label()),
        ]
    }

    pub fn flatten(&self) -> Flat<'_> {
        if self.metric == MetricKind::LatencySecondsCeil {
            return Flat::Histogram(
                self.points
                    .iter()
                    .filter_map(|(t, s)| match s {
                        PointSamples::Histogram(h) => Some((*t, h)),
                        _ => None,
                    })
                    .collect(),
            );
        }
        let mut single = Vec::new();
        let mut by_label: BTreeMap<(&'static str, &str), Vec<(i64, f64)>> = BTreeMap::new();
        for (t, s) in &self.points {
            match s {
                PointSamples::Single(v) => single.push((*t, *v)),
                PointSamples::ByLabel(name, values) => {
                    for (value, v) in values {
                        by_label.entry((name, value)).or_default().push((*t, *v));
                    }
                }
                PointSamples::None | PointSamples::Histogram(_) => {}
            }
        }
        let mut series = Vec::new();
        if !single.is_empty() {
            series.push(GaugeSeries {
                extra: None,
                samples: single,
            });
        }
        series.extend(
            by_label
                .into_iter()
                .map(|((name, value), samples)| GaugeSeries {
                    extra: Some((name, value.to_owned())),
                    samples,
                }),
        );
        Flat::Gauges(series)
    }

    /// The `whatsapp_flows_data_period_start_timestamp_seconds` samples: each
    /// period's start, at its start.
    pub fn period_starts(&self) -> Vec<(i64, f64)> {
        self.points.iter().map(|(t, _)| (*t, *t as f64)).collect()
    }

    /// How many samples this history writes, the period starts included.
    pub fn sample_count(&self) -> u64 {
        let data: usize = self
            .points
            .iter()
            .map(|(_, s)| match s {
                PointSamples::None => 0,
                PointSamples::Single(_) => 1,
                PointSamples::ByLabel(_, values) => values.len(),
                PointSamples::Histogram(h) => h.buckets.len() + 2,
            })
            .sum();
        (data + self.points.len()) as u64
    }

    /// The same samples as remote-write series (timestamps in milliseconds).
    pub fn time_series(&self) -> Vec<TimeSeries> {
        let family = flowdata::family(self.metric);
        let labels = self.labels();
        let ms = |samples: &[(i64, f64)]| -> Vec<(i64, f64)> {
            samples.iter().map(|(t, v)| (t * 1000, *v)).collect()
        };
        let mut out = Vec::new();
        match self.flatten() {
            Flat::Gauges(series) => {
                for s in series {
                    let mut l = labels.to_vec();
                    if let Some((name, value)) = &s.extra {
                        l.push((name, value));
                    }
                    out.push(TimeSeries::new(family.name, &l, ms(&s.samples)));
                }
            }
            Flat::Histogram(points) => {
                if let Some((_, first)) = points.first() {
                    let bucket_name = format!("{}_bucket", family.name);
                    let bounds = first
                        .buckets
                        .iter()
                        .map(|(le, _)| *le)
                        .chain([f64::INFINITY]);
                    for (i, le) in bounds.enumerate() {
                        let le = flowdata::le_label(le);
                        let mut l = labels.to_vec();
                        l.push(("le", &le));
                        let samples = points
                            .iter()
                            .map(|(t, h)| {
                                let v = h.buckets.get(i).map_or(h.count, |(_, c)| *c);
                                (t * 1000, v as f64)
                            })
                            .collect();
                        out.push(TimeSeries::new(&bucket_name, &l, samples));
                    }
                    let samples = points
                        .iter()
                        .map(|(t, h)| (t * 1000, h.count as f64))
                        .collect();
                    out.push(TimeSeries::new(
                        &format!("{}_count", family.name),
                        &labels,
                        samples,
                    ));
                }
            }
        }
        let mut l = labels.to_vec();
        l.push(("metric", self.metric.label()));
        out.push(TimeSeries::new(
            flowdata::PERIOD_START.name,
            &l,
            ms(&self.period_starts()),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn history(metric: MetricKind, points: &[(i64, &[(&str, f64)])]) -> History {
        History {
            flow_id: "42".to_owned(),
            granularity: Granularity::Hour,
            metric,
            points: points
                .iter()
                .map(|(t, values)| {
                    (
                        *t,
                        flowdata::point_samples(metric, &kv(values)).expect("valid"),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn error_types_become_one_series_each() {
        let h = history(
            MetricKind::RequestError,
            &[
                (3600, &[("timeout_error", 2.0)]),
                (7200, &[("new_kind", 1.0)]),
            ],
        );
        let Flat::Gauges(series) = h.flatten() else {
            panic!("gauges")
        };
        let names: Vec<&str> = series
            .iter()
            .map(|s| s.extra.as_ref().map_or("", |(_, v)| v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                "cannot_be_served",
                "new_kind",
                "no_http_response_error",
                "timeout_error",
                "unexpected_http_status_code"
            ]
        );
        assert_eq!(series[1].samples, vec![(7200, 1.0)], "only where reported");
        assert_eq!(series[3].samples, vec![(3600, 2.0), (7200, 0.0)]);
        // 4 documented types x 2 periods + the new one once + 2 period starts.
        assert_eq!(h.sample_count(), 11);
        let total: usize = h.time_series().iter().map(|s| s.samples.len()).sum();
        assert_eq!(total as u64, h.sample_count());
    }

    #[test]
    fn latency_becomes_bucket_and_count_series_for_remote_write() {
        let h = history(
            MetricKind::LatencySecondsCeil,
            &[(3600, &[("1", 5.0), ("10+", 1.0)]), (7200, &[("2", 3.0)])],
        );
        let ts = h.time_series();
        // 10 buckets, +Inf, _count, and the period start.
        assert_eq!(ts.len(), 13);
        let label = |s: &TimeSeries, k: &str| {
            s.labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            label(&ts[0], "__name__"),
            "whatsapp_flows_endpoint_request_latency_seconds_bucket"
        );
        assert_eq!(label(&ts[0], "le"), "1");
        assert_eq!(ts[0].samples, vec![(3_600_000, 5.0), (7_200_000, 0.0)]);
        assert_eq!(label(&ts[10], "le"), "+Inf");
        assert_eq!(ts[10].samples, vec![(3_600_000, 6.0), (7_200_000, 3.0)]);
        assert_eq!(
            label(&ts[11], "__name__"),
            "whatsapp_flows_endpoint_request_latency_seconds_count"
        );
        assert_eq!(ts[11].samples, ts[10].samples);
        assert_eq!(
            label(&ts[12], "metric"),
            "endpoint_request_latency_seconds_ceil"
        );
        assert_eq!(
            ts[12].samples,
            vec![(3_600_000, 3600.0), (7_200_000, 7200.0)]
        );
        let total: usize = ts.iter().map(|s| s.samples.len()).sum();
        assert_eq!(total as u64, h.sample_count());
    }
}
