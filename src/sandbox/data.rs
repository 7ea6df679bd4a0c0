//! The sandbox's traffic model: the numbers a flow's endpoint "did" in every hour, and
//! how the Metrics API folds those hours into HOUR, DAY and LIFETIME data points.
//!
//! Everything here is a plain function of (flow, hour start, clock reading): no RNG
//! state, no I/O. One hour of one flow is drawn from a hash of the flow id and the hour
//! start, so two calls, two sandboxes or two test runs serve the same numbers. DAY and
//! LIFETIME points are sums of the ingested hours they cover, which keeps every metric
//! consistent with every other (latency buckets sum to the request count, a day is the
//! sum of its hours, an error rate is errors over requests of the same period).

use std::cmp::Reverse;
use std::ops::AddAssign;

use chrono::{DateTime, Days, DurationRound, NaiveDate, NaiveTime, TimeDelta, Timelike, Utc};

use super::{SandboxFlow, Traffic};
use crate::model::{Granularity, MetricKind};

/// `ENDPOINT_REQUEST_ERROR` keys, in the order the sandbox serves them.
pub(super) const ERROR_KEYS: [&str; 4] = [
    "timeout_error",
    "unexpected_http_status_code",
    "cannot_be_served",
    "no_http_response_error",
];

/// `ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL` keys: one bucket per whole second, then 10+.
pub(super) const LATENCY_KEYS: [&str; 11] =
    ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "10+"];

/// Meta checks a v3.0+ endpoint's availability periodically; the sandbox says every
/// five minutes.
const CHECKS_PER_HOUR: u64 = 12;

/// Data is served only for hours that ended at least this long ago ("it may take a
/// couple of hours for metric events to be ingested").
const INGESTION_LAG: TimeDelta = TimeDelta::hours(2);

/// DAY periods start at a Pacific-time midnight. The real API moves to 07:00 UTC in
/// summer; the sandbox keeps 08:00 all year, which is what every documented example shows.
const DAY_START: TimeDelta = TimeDelta::hours(8);

/// Multiplier of a flow's base traffic per UTC hour of day: quiet nights, busy
/// 14:00-22:00 UTC (European afternoon and American morning). Never zero, so every
/// hour has requests.
const DAILY_SHAPE: [f64; 24] = [
    0.5, 0.4, 0.35, 0.3, 0.3, 0.35, 0.45, 0.6, 0.75, 0.9, 1.0, 1.05, 1.1, 1.2, 1.5, 1.65, 1.75,
    1.8, 1.75, 1.7, 1.6, 1.5, 1.3, 0.8,
];

/// Latency bucket weights (per mille) before per-hour jitter: most requests answer
/// within two seconds, then a long tail. The "10+" weight is per flow (see `FlowTraits`).
const LATENCY_PROFILE: [f64; 10] = [560.0, 240.0, 80.0, 40.0, 25.0, 15.0, 10.0, 7.0, 5.0, 4.0];

/// The value of one `{"key", "value"}` pair, keeping counts integral so they serialise
/// as `315`, not `315.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Value {
    Count(u64),
    Ratio(f64),
}

impl Value {
    pub(super) fn as_f64(self) -> f64 {
        match self {
            // Counts stay far below 2^53, so this is exact.
            Value::Count(n) => n as f64,
            Value::Ratio(r) => r,
        }
    }
}

/// One data point as served: its period start and its non-zero key/value pairs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Point {
    pub(super) start: DateTime<Utc>,
    pub(super) data: Vec<(&'static str, Value)>,
}

/// A query window after defaults and clamping, both dates inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) since: NaiveDate,
    pub(super) until: NaiveDate,
}

impl Window {
    /// Applies the documented defaults and clamps `since` to the oldest allowed date
    /// (HOUR 30 days back, DAY 90 days back; LIFETIME is treated like DAY). Dates are
    /// calendar dates of the clock's UTC date.
    ///
    /// What an older `since` does on the real API is undocumented; the sandbox clamps it
    /// silently.
    pub(super) fn resolve(
        granularity: Granularity,
        since: Option<NaiveDate>,
        until: Option<NaiveDate>,
        today: NaiveDate,
    ) -> Window {
        let days_back = match granularity {
            Granularity::Hour => 30,
            Granularity::Day | Granularity::Lifetime => 90,
        };
        let oldest = today - Days::new(days_back);
        Window {
            since: since.map_or(oldest, |d| d.max(oldest)),
            // Nothing after today exists; clamping also keeps a hostile
            // far-future `until` from overflowing the date arithmetic.
            until: until.map_or(today, |d| d.min(today)),
        }
    }

    /// The hours `[start, end)` the window covers.
    ///
    /// The choice (undocumented upstream): a period belongs to the window when its start
    /// falls on a date from `since` to `until`, both inclusive. HOUR periods are dated in
    /// UTC, so the window is `since 00:00 UTC .. until+1 00:00 UTC`; DAY and LIFETIME are
    /// dated by their Pacific-day start, so it is `since 08:00 UTC .. until+1 08:00 UTC`.
    /// With the default `until` (today) the in-progress day is therefore included, with
    /// the hours ingested so far.
    fn hours(self, granularity: Granularity) -> (DateTime<Utc>, DateTime<Utc>) {
        let offset = match granularity {
            Granularity::Hour => TimeDelta::zero(),
            Granularity::Day | Granularity::Lifetime => DAY_START,
        };
        let start = midnight(self.since) + offset;
        let end = midnight(self.until + Days::new(1)) + offset;
        (start, end)
    }
}

/// Whether the flow answers metric queries with data rather than error 139006 ("not
/// enough data"): a DRAFT flow has never had endpoint traffic, and a `BelowThreshold`
/// flow stays under Meta's 250-request minimum.
pub(super) fn has_enough_data(flow: &SandboxFlow) -> bool {
    flow.status != "DRAFT" && flow.traffic != Traffic::BelowThreshold
}

/// The data points the sandbox serves for this query, oldest first.
///
/// The caller decides whether the flow answers with data at all (DRAFT and
/// below-threshold flows answer an error instead); a `BelowThreshold` flow that gets
/// here has no points.
pub(super) fn points(
    flow: &SandboxFlow,
    metric: MetricKind,
    granularity: Granularity,
    window: Window,
    now: DateTime<Utc>,
) -> Vec<Point> {
    let base = match flow.traffic {
        Traffic::Normal { base_per_hour } | Traffic::StringValues { base_per_hour } => {
            base_per_hour
        }
        Traffic::BelowThreshold => return Vec::new(),
    };
    if metric == MetricKind::Availability && !has_availability_checks(&flow.data_api_version) {
        return Vec::new();
    }
    let traits = FlowTraits::of(flow);

    let (start, end) = window.hours(granularity);
    // Only hours that have ended at least INGESTION_LAG ago exist. The newest DAY (and
    // the LIFETIME point) still shows up, with the hours ingested so far.
    let end = end.min(start_of_hour(now - INGESTION_LAG));

    // Each period's start with its summed counts; hours come in order, so a period's
    // hours are consecutive.
    let mut periods: Vec<(DateTime<Utc>, Counts)> = Vec::new();
    let mut hour = start;
    while hour < end {
        let period_start = match granularity {
            Granularity::Hour => hour,
            Granularity::Day => start_of_day(hour),
            Granularity::Lifetime => start,
        };
        let counts = hour_counts(&flow.id, base, &traits, hour);
        match periods.last_mut() {
            Some((last_start, sum)) if *last_start == period_start => *sum += counts,
            _ => periods.push((period_start, counts)),
        }
        hour += TimeDelta::hours(1);
    }

    periods
        .into_iter()
        .map(|(start, counts)| Point {
            start,
            data: counts.data(metric),
        })
        .collect()
}

/// Whether Meta runs availability checks for this `data_api_version` (3.0 and later).
fn has_availability_checks(data_api_version: &str) -> bool {
    let major = data_api_version.split('.').next().unwrap_or("");
    major.parse::<u32>().is_ok_and(|major| major >= 3)
}

/// What one flow's endpoint did over some hours.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    requests: u64,
    /// Indexed like `ERROR_KEYS`.
    errors: [u64; 4],
    /// Indexed like `LATENCY_KEYS`; sums to `requests`.
    latency: [u64; 11],
    checks_succeeded: u64,
    checks_failed: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.requests += other.requests;
        for (sum, n) in self.errors.iter_mut().zip(other.errors) {
            *sum += n;
        }
        for (sum, n) in self.latency.iter_mut().zip(other.latency) {
            *sum += n;
        }
        self.checks_succeeded += other.checks_succeeded;
        self.checks_failed += other.checks_failed;
    }
}

impl Counts {
    /// The `data` array of one metric for these counts. Zero counts are left out, as
    /// the real API leaves out keys it has nothing for.
    fn data(&self, metric: MetricKind) -> Vec<(&'static str, Value)> {
        match metric {
            MetricKind::RequestCount => vec![("value", Value::Count(self.requests))],
            MetricKind::RequestError => non_zero(&ERROR_KEYS, &self.errors),
            MetricKind::RequestErrorRate => {
                let errors: u64 = self.errors.iter().sum();
                // Recomputed from the summed counts, never averaged over hours.
                vec![("value", Value::Ratio(ratio(errors, self.requests)))]
            }
            MetricKind::LatencySecondsCeil => non_zero(&LATENCY_KEYS, &self.latency),
            MetricKind::Availability => non_zero(
                &["succeeded", "failed"],
                &[self.checks_succeeded, self.checks_failed],
            ),
        }
    }
}

/// `part / whole` rounded to 14 decimals, as in Meta's example (`0.12625250501002`).
/// It also keeps the served text short enough that every JSON parser, including
/// serde_json without `float_roundtrip`, reads back exactly the f64 `data_points` reports.
fn ratio(part: u64, whole: u64) -> f64 {
    let exact = part as f64 / whole as f64;
    (exact * 1e14).round() / 1e14
}

fn non_zero(keys: &[&'static str], counts: &[u64]) -> Vec<(&'static str, Value)> {
    keys.iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|(key, n)| (*key, Value::Count(*n)))
        .collect()
}

/// Per-flow character, fixed for the flow's life: how error-prone it is, whether it has
/// a slow tail beyond ten seconds, how often its availability check fails.
#[derive(Debug, Clone, Copy)]
struct FlowTraits {
    error_rate: f64,
    slow_tail_weight: f64,
    check_failure_chance: f64,
}

impl FlowTraits {
    fn of(flow: &SandboxFlow) -> FlowTraits {
        let mut dice = Dice::new(&flow.id, FLOW_TRAITS_SALT);
        let error_rate = dice.between(0.005, 0.04);
        let slow_tail_weight = if dice.chance(0.5) {
            dice.between(8.0, 20.0)
        } else {
            0.0
        };
        // A flow Meta limits or blocks got there through a struggling endpoint.
        let (error_factor, check_failure_chance) = match flow.can_send_message.as_str() {
            "LIMITED" => (3.0, 0.12),
            "BLOCKED" => (5.0, 0.3),
            _ => (1.0, 0.03),
        };
        FlowTraits {
            error_rate: error_rate * error_factor,
            slow_tail_weight,
            check_failure_chance,
        }
    }
}

/// Salt that keeps the per-flow draw apart from every per-hour draw (hour starts are
/// multiples of 3600, never -1).
const FLOW_TRAITS_SALT: i64 = -1;

/// One hour of one flow. The draws happen in a fixed order, so the same (flow, hour)
/// always gives the same counts.
fn hour_counts(flow_id: &str, base: u32, traits: &FlowTraits, hour: DateTime<Utc>) -> Counts {
    let mut dice = Dice::new(flow_id, hour.timestamp());

    let shape = DAILY_SHAPE[hour.hour() as usize];
    let requests = (f64::from(base) * shape * dice.between(0.8, 1.2))
        .round()
        .max(1.0) as u64;

    let error_rate = (traits.error_rate * dice.between(0.3, 1.7)).min(0.9);
    let error_total = (requests as f64 * error_rate).round() as u64;
    let error_weights = [
        1 + dice.below(6),
        dice.below(5),
        if dice.chance(0.2) {
            1 + dice.below(2)
        } else {
            0
        },
        u64::from(dice.chance(0.3)),
    ];

    let mut latency_weights = [0u64; 11];
    for (i, (weight, profile)) in latency_weights.iter_mut().zip(LATENCY_PROFILE).enumerate() {
        // Buckets "4" to "10" are sometimes empty, so consumers meet gaps in the middle.
        let gap = (3..=9).contains(&i) && dice.chance(0.3);
        *weight = if gap {
            0
        } else {
            (profile * dice.between(0.6, 1.4)).round() as u64
        };
    }
    latency_weights[10] = (traits.slow_tail_weight * dice.between(0.6, 1.4)).round() as u64;

    let checks_failed = if dice.chance(traits.check_failure_chance) {
        1 + dice.below(3)
    } else {
        0
    };

    Counts {
        requests,
        errors: split(error_total, error_weights),
        latency: split(requests, latency_weights),
        checks_succeeded: CHECKS_PER_HOUR - checks_failed,
        checks_failed,
    }
}

/// Splits `total` in proportion to `weights` so that the parts sum exactly to `total`
/// (largest remainder). A zero weight always gets zero; if every weight is zero the
/// first part takes everything.
fn split<const N: usize>(total: u64, weights: [u64; N]) -> [u64; N] {
    let mut parts = [0u64; N];
    let sum: u64 = weights.iter().sum();
    if sum == 0 {
        if let Some(first) = parts.first_mut() {
            *first = total;
        }
        return parts;
    }
    for (part, weight) in parts.iter_mut().zip(weights) {
        *part = total * weight / sum;
    }
    let mut left = total - parts.iter().sum::<u64>();
    // Hand the rounding leftovers to the largest fractions; the sort is stable, so ties
    // go to the earlier (faster, commoner) key.
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by_key(|&i| Reverse(total * weights[i] % sum));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// A short deterministic stream of draws seeded from (flow id, salt): FNV-1a over the
/// id, then splitmix64 steps. Not random, only well mixed, which is all the sandbox
/// needs; std's hasher is avoided because its output may change between releases.
#[derive(Debug)]
struct Dice {
    state: u64,
}

impl Dice {
    fn new(flow_id: &str, salt: i64) -> Dice {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in flow_id.bytes().chain(salt.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Dice { state: hash }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// A fraction in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An integer in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The splitmix64 finaliser: spreads every input bit over the whole output.
pub(super) fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    date.and_time(NaiveTime::MIN).and_utc()
}

fn start_of_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    // Truncation only fails for instants near the end of chrono's range.
    t.duration_trunc(TimeDelta::hours(1)).unwrap_or(t)
}

/// The start of the DAY period (08:00 UTC) that contains this instant.
fn start_of_day(t: DateTime<Utc>) -> DateTime<Utc> {
    midnight((t - DAY_START).date_naive()) + DAY_START
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn flow(traffic: Traffic, data_api_version: &str) -> SandboxFlow {
        SandboxFlow {
            id: "1180349906393871".to_owned(),
            name: "Test".to_owned(),
            waba_id: "102290129340398".to_owned(),
            status: "PUBLISHED".to_owned(),
            data_api_version: data_api_version.to_owned(),
            can_send_message: "AVAILABLE".to_owned(),
            traffic,
        }
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("valid instant")
    }

    #[test]
    fn split_sums_exactly_and_keeps_zero_weights_zero() {
        for total in [0, 1, 7, 99, 1000] {
            let parts = split(total, [5, 0, 3, 1, 0, 1]);
            assert_eq!(parts.iter().sum::<u64>(), total);
            assert_eq!((parts[1], parts[4]), (0, 0));
        }
        assert_eq!(split(9, [0, 0]), [9, 0]);
    }

    #[test]
    fn window_defaults_and_clamps() {
        let today = date(2024, 1, 30);
        let w = Window::resolve(Granularity::Hour, None, None, today);
        assert_eq!(
            w,
            Window {
                since: date(2023, 12, 31),
                until: today
            }
        );
        let w = Window::resolve(Granularity::Day, Some(date(2020, 1, 1)), None, today);
        assert_eq!(w.since, date(2023, 11, 1));
        let w = Window::resolve(
            Granularity::Day,
            Some(date(2024, 1, 28)),
            Some(date(2024, 1, 29)),
            today,
        );
        assert_eq!(
            w.hours(Granularity::Day),
            (at(2024, 1, 28, 8), at(2024, 1, 30, 8))
        );
        assert_eq!(
            w.hours(Granularity::Hour),
            (at(2024, 1, 28, 0), at(2024, 1, 30, 0))
        );
    }

    #[test]
    fn days_start_at_eight_utc() {
        assert_eq!(start_of_day(at(2024, 1, 30, 7)), at(2024, 1, 29, 8));
        assert_eq!(start_of_day(at(2024, 1, 30, 8)), at(2024, 1, 30, 8));
        assert_eq!(start_of_day(at(2024, 1, 30, 23)), at(2024, 1, 30, 8));
    }

    #[test]
    fn newest_hour_ended_two_hours_ago_and_the_current_day_is_partial() {
        let f = flow(Traffic::Normal { base_per_hour: 100 }, "3.0");
        let now = at(2024, 1, 30, 12) + TimeDelta::minutes(30);
        let window = Window::resolve(Granularity::Hour, None, None, now.date_naive());
        let hours = points(&f, MetricKind::RequestCount, Granularity::Hour, window, now);
        assert_eq!(hours.last().map(|p| p.start), Some(at(2024, 1, 30, 9)));
        assert_eq!(hours.len(), 30 * 24 + 10);

        let window = Window::resolve(Granularity::Day, None, None, now.date_naive());
        let days = points(&f, MetricKind::RequestCount, Granularity::Day, window, now);
        let today = days.last().expect("a partial day");
        assert_eq!(today.start, at(2024, 1, 30, 8));
        let partial: f64 = hours[hours.len() - 2..]
            .iter()
            .map(|p| p.data[0].1.as_f64())
            .sum();
        assert_eq!(today.data[0].1.as_f64(), partial);
    }

    #[test]
    fn availability_only_from_data_api_version_3() {
        let now = at(2024, 1, 30, 12);
        let window = Window::resolve(Granularity::Day, None, None, now.date_naive());
        let old = flow(Traffic::Normal { base_per_hour: 100 }, "2.1");
        assert!(
            points(
                &old,
                MetricKind::Availability,
                Granularity::Day,
                window,
                now
            )
            .is_empty()
        );
        let new = flow(Traffic::Normal { base_per_hour: 100 }, "3.1");
        assert!(
            !points(
                &new,
                MetricKind::Availability,
                Granularity::Day,
                window,
                now
            )
            .is_empty()
        );
        assert!(has_availability_checks("10.0"));
        assert!(!has_availability_checks("garbage"));
    }

    #[test]
    fn every_hour_has_requests_and_buckets_sum_to_them() {
        let f = flow(Traffic::Normal { base_per_hour: 0 }, "3.0");
        let traits = FlowTraits::of(&f);
        for h in 0..48 {
            let c = hour_counts(&f.id, 0, &traits, at(2024, 1, 1, 0) + TimeDelta::hours(h));
            assert!(c.requests >= 1);
            assert_eq!(c.latency.iter().sum::<u64>(), c.requests);
            assert_eq!(c.checks_succeeded + c.checks_failed, CHECKS_PER_HOUR);
        }
    }
}
