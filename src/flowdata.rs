//! What one Flows Metrics API data point becomes in Prometheus: the metric
//! family it belongs to (name, type, help) and its samples (extra label, value).
//!
//! Shared by the live exposition (`exposition`) and the backfill (`backfill`), so
//! both produce exactly the same metric names and label sets from the same data.
//! Pure functions over plain data; no I/O.

use std::collections::BTreeMap;

use crate::model::MetricKind;

/// The error types Meta documents; a period's answer lists only the non-zero
/// ones, so the missing ones are shown as 0.
pub const KNOWN_ERROR_TYPES: [&str; 4] = [
    "cannot_be_served",
    "no_http_response_error",
    "timeout_error",
    "unexpected_http_status_code",
];

/// Where error types Meta does not document go beyond `limits.unknown_error_types`.
pub const OTHER_ERROR_TYPE: &str = "other";
/// An undocumented error-type key longer than this is always folded into
/// `other`: it would make a label of any length.
pub const MAX_ERROR_TYPE_BYTES: usize = 64;

/// Bounds the error types of one REQUEST_ERROR data point: documented types
/// are kept; of the others (repeated keys summed), the `cap` with the most
/// errors (then by name) keep their own key, and the rest, with any longer
/// than [`MAX_ERROR_TYPE_BYTES`], are summed into `other`. Returns the values
/// and how many keys were folded.
pub fn fold_error_types(values: Vec<(String, f64)>, cap: usize) -> (Vec<(String, f64)>, usize) {
    let mut kept: Vec<(String, f64)> =
        Vec::with_capacity(values.len().min(KNOWN_ERROR_TYPES.len() + cap + 1));
    let mut unknown: BTreeMap<String, f64> = BTreeMap::new();
    for (key, v) in values {
        if KNOWN_ERROR_TYPES.contains(&key.as_str()) {
            kept.push((key, v));
        } else {
            *unknown.entry(key).or_default() += v;
        }
    }
    let mut unknown: Vec<(String, f64)> = unknown.into_iter().collect();
    let (mut fits, long): (Vec<_>, Vec<_>) = unknown
        .drain(..)
        .partition(|(key, _)| key.len() <= MAX_ERROR_TYPE_BYTES);
    fits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest = if fits.len() > cap {
        fits.split_off(cap)
    } else {
        Vec::new()
    };
    let folded = rest.len() + long.len();
    kept.extend(fits);
    if folded > 0 {
        let sum: f64 = rest.iter().chain(&long).map(|(_, v)| v).sum();
        match kept.iter_mut().find(|(k, _)| k == OTHER_ERROR_TYPE) {
            Some((_, v)) => *v += sum,
            None => kept.push((OTHER_ERROR_TYPE.to_owned(), sum)),
        }
    }
    (kept, folded)
}

/// The results of Meta's availability checks, in label order.
pub const AVAILABILITY_RESULTS: [&str; 2] = ["failed", "succeeded"];

/// The type of a flow-data family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    Gauge,
    Histogram,
}

/// A metric family of per-flow data: every series has `flow_id` and
/// `granularity`, plus `extra_label` when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: FamilyKind,
    /// The label that tells one value of a data point from another, if any
    /// (`error_type`, `result`); histograms use `le` instead.
    pub extra_label: Option<&'static str>,
    /// What a series means. The live exposition appends a note on caching.
    pub help: &'static str,
}

pub const REQUESTS: Family = Family {
    name: "whatsapp_flows_endpoint_requests",
    kind: FamilyKind::Gauge,
    extra_label: None,
    help: "Requests Meta sent to the flow's endpoint in the period whose start is whatsapp_flows_data_period_start_timestamp_seconds (a per-period value, not a counter).",
};

pub const ERRORS: Family = Family {
    name: "whatsapp_flows_endpoint_request_errors",
    kind: FamilyKind::Gauge,
    extra_label: Some("error_type"),
    help: "Failed endpoint requests in the period, by Meta's error_type (a per-period value, not a counter).",
};

pub const ERROR_RATIO: Family = Family {
    name: "whatsapp_flows_endpoint_request_error_ratio",
    kind: FamilyKind::Gauge,
    extra_label: None,
    help: "Failed endpoint requests divided by all endpoint requests in the period, 0 to 1, as Meta computes it.",
};

pub const LATENCY: Family = Family {
    name: "whatsapp_flows_endpoint_request_latency_seconds",
    kind: FamilyKind::Histogram,
    extra_label: None,
    help: "Endpoint request latency in the period as Meta reports it, in whole seconds rounded up; a per-period snapshot, never rate() it. The sum is unknown and not published.",
};

pub const AVAILABILITY: Family = Family {
    name: "whatsapp_flows_endpoint_availability_checks",
    kind: FamilyKind::Gauge,
    extra_label: Some("result"),
    help: "Meta's periodic endpoint availability checks in the period, by result (succeeded or failed); only flows with data_api_version 3.0 or later have them.",
};

/// The start of the period the values describe; labelled with `metric` rather
/// than an extra value label.
pub const PERIOD_START: Family = Family {
    name: "whatsapp_flows_data_period_start_timestamp_seconds",
    kind: FamilyKind::Gauge,
    extra_label: Some("metric"),
    help: "Unix time at which the period shown for each metric begins: the newest period that has ended and settled (LIFETIME: its single point).",
};

/// The family a metric's data points go to.
pub fn family(metric: MetricKind) -> &'static Family {
    match metric {
        MetricKind::RequestCount => &REQUESTS,
        MetricKind::RequestError => &ERRORS,
        MetricKind::RequestErrorRate => &ERROR_RATIO,
        MetricKind::LatencySecondsCeil => &LATENCY,
        MetricKind::Availability => &AVAILABILITY,
    }
}

/// Cumulative latency buckets built from per-bucket ceil-second counts.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    /// `(le, cumulative count)` for le = 1..=10 seconds.
    pub buckets: Vec<(f64, u64)>,
    /// Every request, the `+Inf` bucket and `_count`.
    pub count: u64,
}

/// Flattens `ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL` data: key `"n"` (1..=10) holds
/// requests that took more than n-1 and at most n seconds; `"10+"` holds the rest
/// and goes only into `+Inf`. Missing keys are zero. Any other key, or a count
/// that is not a whole number, is an error: the answer is not what Meta documents.
pub fn latency_histogram(values: &[(String, f64)]) -> Result<LatencyHistogram, String> {
    let mut per_bucket = [0u64; 10];
    let mut over: u64 = 0;
    for (key, v) in values {
        if v.fract() != 0.0 || *v < 0.0 || *v > 1e15 {
            return Err(format!(
                "latency bucket `{key}` has a count that is not a whole number: {v}"
            ));
        }
        let n = *v as u64;
        let slot = match key.as_str() {
            "10+" => &mut over,
            k => match k.parse::<usize>() {
                Ok(i @ 1..=10) => &mut per_bucket[i - 1],
                _ => return Err(format!("unknown latency bucket key `{key}`")),
            },
        };
        // A body of up to MAX_BODY_BYTES can repeat a key with a huge count often
        // enough to pass u64::MAX; that is not a real answer, and wrapping
        // would make the buckets non-cumulative.
        *slot = slot.checked_add(n).ok_or_else(too_many)?;
    }
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(per_bucket.len());
    for (i, n) in per_bucket.iter().enumerate() {
        cumulative = cumulative.checked_add(*n).ok_or_else(too_many)?;
        buckets.push(((i + 1) as f64, cumulative));
    }
    Ok(LatencyHistogram {
        buckets,
        count: cumulative.checked_add(over).ok_or_else(too_many)?,
    })
}

fn too_many() -> String {
    "latency bucket counts add up to more than a u64 holds".to_owned()
}

/// The samples one data point of one metric gives, for one flow and granularity.
#[derive(Debug, Clone, PartialEq)]
pub enum PointSamples {
    /// No sample: the answer had no value for this metric.
    None,
    /// One sample labelled only with `flow_id` and `granularity`.
    Single(f64),
    /// One sample per value of the named label (the family's `extra_label`),
    /// in label order.
    ByLabel(&'static str, Vec<(String, f64)>),
    Histogram(LatencyHistogram),
}

/// Turns one data point's `(key, value)` pairs into samples:
///
/// - REQUEST_COUNT, ERROR_RATE: key `value`, or the only key.
/// - REQUEST_ERROR: one sample per error type; documented types missing from the
///   answer are 0, types Meta adds later appear as they come.
/// - LATENCY_SECONDS_CEIL: a cumulative histogram (see [`latency_histogram`]);
///   an undocumented shape is an error.
/// - AVAILABILITY: `failed` and `succeeded`, missing ones 0; other keys ignored.
///
/// Values of one label that add up to infinity are an error.
pub fn point_samples(metric: MetricKind, values: &[(String, f64)]) -> Result<PointSamples, String> {
    let samples = match metric {
        MetricKind::RequestCount | MetricKind::RequestErrorRate => {
            single_value(values).map_or(PointSamples::None, PointSamples::Single)
        }
        MetricKind::RequestError => {
            let mut by_type: BTreeMap<&str, f64> =
                KNOWN_ERROR_TYPES.iter().map(|t| (*t, 0.0)).collect();
            for (k, v) in values {
                *by_type.entry(k).or_default() += v;
            }
            PointSamples::ByLabel(
                "error_type",
                by_type
                    .into_iter()
                    .map(|(t, v)| (t.to_owned(), v))
                    .collect(),
            )
        }
        MetricKind::LatencySecondsCeil => PointSamples::Histogram(latency_histogram(values)?),
        MetricKind::Availability => PointSamples::ByLabel(
            "result",
            AVAILABILITY_RESULTS
                .iter()
                .map(|result| {
                    let n = values
                        .iter()
                        .filter(|(k, _)| k == result)
                        .fold(0.0, |sum, (_, v)| sum + v);
                    ((*result).to_owned(), n)
                })
                .collect(),
        ),
    };
    // Each value is finite, but a key repeated with values near f64::MAX sums
    // to infinity, which is not a count.
    if let PointSamples::ByLabel(label, values) = &samples {
        if let Some((key, _)) = values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!(
                "{label} `{key}` values add up past what a float holds"
            ));
        }
    }
    Ok(samples)
}

/// The single value of REQUEST_COUNT and ERROR_RATE: key `value`, or the only key.
fn single_value(values: &[(String, f64)]) -> Option<f64> {
    values
        .iter()
        .find(|(k, _)| k == "value")
        .or(if values.len() == 1 {
            values.first()
        } else {
            None
        })
        .map(|(_, v)| *v)
}

/// The `le` label value of a latency bucket bound, written as the live
/// exposition writes it (`1` .. `10`, `+Inf`), so both make the same series.
pub fn le_label(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".to_owned()
    } else {
        format!("{le}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn latency_buckets_from_the_docs_example() {
        let h = latency_histogram(&kv(&[
            ("1", 410.0),
            ("3", 61.0),
            ("10", 2.0),
            ("10+", 33.0),
        ]))
        .expect("valid");
        let cumulative: Vec<u64> = h.buckets.iter().map(|(_, c)| *c).collect();
        assert_eq!(
            cumulative,
            vec![410, 410, 471, 471, 471, 471, 471, 471, 471, 473]
        );
        assert_eq!(h.buckets[9].0, 10.0);
        assert_eq!(h.count, 506, "+Inf holds the 10+ requests too");
    }

    #[test]
    fn latency_rejects_what_meta_does_not_document() {
        assert!(latency_histogram(&kv(&[("11", 1.0)])).is_err());
        assert!(latency_histogram(&kv(&[("0", 1.0)])).is_err());
        assert!(latency_histogram(&kv(&[("fast", 1.0)])).is_err());
        assert!(latency_histogram(&kv(&[("2", 1.5)])).is_err());
        let empty = latency_histogram(&[]).expect("no keys is zero everywhere");
        assert_eq!(empty.count, 0);
    }

    #[test]
    fn latency_counts_that_overflow_are_rejected_not_wrapped() {
        // Each count passes the per-value check; their sum does not fit a u64.
        let many = vec![("1".to_owned(), 1e15); 20_000];
        assert!(latency_histogram(&many).is_err());
        let spread: Vec<_> = (1..=10)
            .map(|i| (i.to_string(), 1e15))
            .cycle()
            .take(20_000)
            .collect();
        assert!(latency_histogram(&spread).is_err());
        let over = vec![("10+".to_owned(), 1e15); 20_000];
        assert!(latency_histogram(&over).is_err());
        let edge = vec![("10+".to_owned(), 1e15); 10_000];
        let h = latency_histogram(&edge).expect("1e19 fits");
        assert_eq!(h.count, 10_000_000_000_000_000_000);
    }

    #[test]
    fn repeated_keys_that_sum_to_infinity_are_rejected() {
        let huge = kv(&[("timeout_error", 1e308), ("timeout_error", 1e308)]);
        assert!(point_samples(MetricKind::RequestError, &huge).is_err());
        let huge = kv(&[("failed", 1e308), ("failed", 1e308)]);
        assert!(point_samples(MetricKind::Availability, &huge).is_err());
    }

    #[test]
    fn errors_fill_documented_types_and_keep_new_ones() {
        let s = point_samples(
            MetricKind::RequestError,
            &kv(&[("timeout_error", 5.0), ("brand_new_error", 2.0)]),
        )
        .expect("valid");
        assert_eq!(
            s,
            PointSamples::ByLabel(
                "error_type",
                kv(&[
                    ("brand_new_error", 2.0),
                    ("cannot_be_served", 0.0),
                    ("no_http_response_error", 0.0),
                    ("timeout_error", 5.0),
                    ("unexpected_http_status_code", 0.0),
                ])
            )
        );
    }

    #[test]
    fn unknown_error_types_are_bounded() {
        let mut values = kv(&[("timeout_error", 5.0), ("cannot_be_served", 1.0)]);
        values.extend((0..10_000).map(|i| (format!("new_error_{i:05}"), f64::from(i % 7))));
        values.push(("x".repeat(1000), 3.0));
        let total: f64 = values.iter().map(|(_, v)| v).sum();
        let (kept, folded) = fold_error_types(values, 3);
        assert_eq!(folded, 10_000 - 3 + 1);
        let keys: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        // The documented types, the three largest others (ties by name), other.
        assert_eq!(
            keys,
            [
                "timeout_error",
                "cannot_be_served",
                "new_error_00006",
                "new_error_00013",
                "new_error_00020",
                "other"
            ]
        );
        let after: f64 = kept.iter().map(|(_, v)| v).sum();
        assert_eq!(after, total, "nothing is lost, only summed");
        // Few enough: unchanged, no `other`.
        let few = kv(&[("brand_new", 2.0), ("timeout_error", 1.0)]);
        let (kept, folded) = fold_error_types(few.clone(), 3);
        assert_eq!((folded, kept.len()), (0, 2));
        // A cap of 0 folds every undocumented type.
        let (kept, folded) = fold_error_types(few, 0);
        assert_eq!(folded, 1);
        assert_eq!(kept, kv(&[("timeout_error", 1.0), ("other", 2.0)]));
    }

    #[test]
    fn single_values_and_availability() {
        let one = |m, pairs: &[(&str, f64)]| point_samples(m, &kv(pairs)).expect("valid");
        assert_eq!(
            one(MetricKind::RequestCount, &[("value", 315.0)]),
            PointSamples::Single(315.0)
        );
        assert_eq!(
            one(MetricKind::RequestErrorRate, &[("rate", 0.25)]),
            PointSamples::Single(0.25),
            "the only key counts as the value"
        );
        assert_eq!(
            one(MetricKind::RequestCount, &[("a", 1.0), ("b", 2.0)]),
            PointSamples::None
        );
        assert_eq!(
            one(MetricKind::Availability, &[("succeeded", 12.0)]),
            PointSamples::ByLabel("result", kv(&[("failed", 0.0), ("succeeded", 12.0)]))
        );
        assert_eq!(le_label(1.0), "1");
        assert_eq!(le_label(10.0), "10");
        assert_eq!(le_label(f64::INFINITY), "+Inf");
    }
}
