//! Rate-limit discipline as plain decisions over time values (sans-IO): the
//! [`Governor`] owned by the Graph client is fed the usage Graph reports on every
//! answer and every throttled answer, and before each call it says go now, wait
//! until an instant, or refuse. It reads no clock and sleeps nowhere; the client
//! passes `now` in and does the waiting.
//!
//! Per call it applies, in order:
//! 1. a client-wide pause after Graph throttled the app (Graph's
//!    `estimated_time_to_regain_access`, else exponential backoff with jitter),
//!    then the call's WABA's own pause after Graph throttled that WABA (80007,
//!    80008): wait it out when it ends within `max_wait`, else refuse;
//! 2. the optional per-WABA budget: a call that would make more than
//!    `waba_calls_per_hour` in any rolling 60 minutes is refused, so the budget
//!    is never exceeded;
//! 3. usage at or above `stop_at` (the higher of the app's and the call's WABA's
//!    figure): refused, except one probe per `cool_down`, because usage only
//!    updates with an answer;
//! 4. pacing: at least `min_call_interval` between any two call starts, and
//!    between two starts for the same WABA a gap growing linearly from zero at
//!    `slow_down_at` to `max_delay` at `stop_at`.
//!
//! A call the governor lets through is recorded at once, so concurrent callers
//! can never together exceed the budget or skip the pacing. Calls are counted
//! per minute, so the governor's memory does not grow with the call rate; usage
//! is kept for the configured WABAs and at most [`EXTRA_BUSINESS_IDS`] other
//! business ids Graph reports, each forgotten [`FORGET_BUSINESS_AFTER`] after
//! Graph last named it, so a hostile header cannot grow it without end.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// The key calls of a flow whose WABA is not known (a static flow discovery has
/// not seen) count under.
pub const UNKNOWN_WABA: &str = "unknown";

/// The key a call for a flow of `waba_id` counts under (empty: not known).
pub fn waba_key(waba_id: &str) -> &str {
    if waba_id.is_empty() {
        UNKNOWN_WABA
    } else {
        waba_id
    }
}
/// One usage reading from a rate-limit header, in percent of the hourly allowance.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// `app` for X-App-Usage, `business_use_case` for X-Business-Use-Case-Usage.
    pub scope: &'static str,
    /// The business object id (empty for app usage).
    pub business_id: String,
    /// The use-case `type` (empty for app usage).
    pub kind: String,
    pub call_count: f64,
    pub total_cputime: f64,
    pub total_time: f64,
    /// `estimated_time_to_regain_access`, in minutes.
    pub regain_minutes: Option<f64>,
}

impl Usage {
    /// The highest of the three percentages, as a fraction (1.0 = 100 %): Graph
    /// throttles when any of them reaches 100.
    pub fn fraction(&self) -> f64 {
        let pct = self.call_count.max(self.total_cputime).max(self.total_time);
        if pct.is_finite() {
            pct.max(0.0) / 100.0
        } else {
            0.0
        }
    }
}

/// The longest throttle backoff when Graph gives no estimate.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Business ids in usage headers tracked besides the configured WABAs.
pub const EXTRA_BUSINESS_IDS: usize = 10;
/// A business id that is not a configured WABA is forgotten (its usage and
/// series) once Graph has not named it for this long.
pub const FORGET_BUSINESS_AFTER: Duration = Duration::from_secs(3600);

/// Why a call waited before going out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitReason {
    /// `min_call_interval` since the client's previous call.
    Pacing,
    /// The gap usage between `slow_down_at` and `stop_at` asks for.
    UsageSlowdown,
    /// A throttle pause that ends soon enough to wait for.
    Throttle,
}

impl WaitReason {
    pub const ALL: [WaitReason; 3] = [
        WaitReason::Pacing,
        WaitReason::UsageSlowdown,
        WaitReason::Throttle,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WaitReason::Pacing => "pacing",
            WaitReason::UsageSlowdown => "usage_slowdown",
            WaitReason::Throttle => "throttle",
        }
    }
}

/// Why a call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The client is paused after Graph throttled the app, for longer than a
    /// call waits.
    ThrottlePause,
    /// The call's WABA is paused after Graph throttled it (80007, 80008), for
    /// longer than a call waits.
    WabaThrottlePause,
    /// Usage is at or above `stop_at` and the next probe is not due.
    UsageHigh,
    /// The WABA's calls in the last 60 minutes reached `waba_calls_per_hour`.
    Budget,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::ThrottlePause,
        Refusal::WabaThrottlePause,
        Refusal::UsageHigh,
        Refusal::Budget,
    ];

    /// What the refusal means, for logs and errors.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::ThrottlePause => {
                "paused after Graph throttled the app, for longer than a call waits"
            }
            Refusal::WabaThrottlePause => {
                "the WABA is paused after Graph throttled it, for longer than a call waits"
            }
            Refusal::UsageHigh => {
                "the rate-limit usage Graph reported is at or above rate_limit.stop_at"
            }
            Refusal::Budget => {
                "the WABA used its rate_limit.waba_calls_per_hour in the last 60 minutes"
            }
        }
    }

    /// The `reason` label of `graph_calls_saved_total`, and the `class` of a
    /// cell whose call was refused.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ThrottlePause => "throttle_pause",
            Refusal::WabaThrottlePause => "waba_throttle_pause",
            Refusal::UsageHigh => "usage_high",
            Refusal::Budget => "budget",
        }
    }
}

/// What to do with a call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Call now; the call is recorded. `probe`: the one call let through while
    /// usage is at or above `stop_at`.
    Go {
        probe: bool,
    },
    /// Ask again at `until`.
    Wait {
        until: Instant,
        reason: WaitReason,
    },
    Refuse(Refusal),
}

/// The rate-limit state of one WABA, for the live metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct WabaState {
    pub calls_last_hour: u64,
    pub budget: Option<u32>,
    /// Calls for this WABA are refused now (budget used up, usage too high, or
    /// paused after Graph throttled it).
    pub refusing: bool,
}

/// A pause of one WABA's calls after Graph throttled them.
#[derive(Debug, Clone, Copy)]
struct Pause {
    until: Instant,
    /// Throttled answers in a row for this WABA; the exponent of its backoff.
    streak: u32,
}

/// One usage figure: the highest of a header's percentages, as a fraction.
#[derive(Debug, Clone, Copy, Default)]
struct Source {
    usage: f64,
    /// While usage is at or above `stop_at`: when the next probe may go.
    probe_at: Option<Instant>,
}

/// The call starts of one WABA as counts per minute: at most 61 counters,
/// whatever the call rate. The hour's count takes the oldest minute whole, so
/// it may include calls up to 61 minutes old: a budget errs on the safe side
/// (a call is refused up to a minute later than strictly needed), never over.
#[derive(Debug, Clone, Default)]
struct CallWindow(VecDeque<(u64, u64)>);

impl CallWindow {
    fn record(&mut self, minute: u64) {
        self.forget_before(minute);
        match self.0.back_mut() {
            Some((m, n)) if *m >= minute => *n += 1,
            _ => self.0.push_back((minute, 1)),
        }
    }

    /// Calls in the minutes `minute - 60 ..= minute`.
    fn last_hour(&mut self, minute: u64) -> u64 {
        self.forget_before(minute);
        self.0.iter().map(|(_, n)| n).sum()
    }

    fn forget_before(&mut self, minute: u64) {
        while self.0.front().is_some_and(|(m, _)| m + 60 < minute) {
            self.0.pop_front();
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Governor {
    cfg: RateLimitConfig,
    max_wait: Duration,
    app: Source,
    /// By business object id, which for the WhatsApp Business Management use
    /// case is the WABA id.
    business: HashMap<String, Source>,
    last_start: Option<Instant>,
    last_start_by_waba: HashMap<String, Instant>,
    /// Call starts in the last hour, by WABA (kept whether or not a budget is set:
    /// they are the `waba_calls_last_hour` gauge).
    calls: BTreeMap<String, CallWindow>,
    /// Minute 0 of the call windows: the first instant the governor was given.
    epoch: Option<Instant>,
    paused_until: Option<Instant>,
    /// Throttled answers in a row; the exponent of the backoff.
    throttle_streak: u32,
    /// WABAs Graph throttled on their own (80007, 80008), by WABA key.
    waba_pauses: HashMap<String, Pause>,
    /// The configured WABAs: their usage is always kept.
    configured: Vec<String>,
    /// Other business ids whose usage is kept, with when Graph last named them.
    extra_ids: HashMap<String, Instant>,
    /// A throttled call is waiting out the pause to try once more; the other
    /// calls throttled meanwhile give up rather than all coming back at once.
    throttle_retry_taken: bool,
}

impl Governor {
    /// `max_wait`: the longest throttle pause a call waits out rather than fails.
    /// `wabas` are shown in the metrics from the start.
    pub fn new(cfg: RateLimitConfig, max_wait: Duration, wabas: &[String]) -> Governor {
        Governor {
            cfg,
            max_wait,
            app: Source::default(),
            business: HashMap::new(),
            last_start: None,
            last_start_by_waba: HashMap::new(),
            calls: wabas
                .iter()
                .map(|w| (w.clone(), CallWindow::default()))
                .collect(),
            epoch: None,
            paused_until: None,
            throttle_streak: 0,
            waba_pauses: HashMap::new(),
            configured: wabas.to_vec(),
            extra_ids: HashMap::new(),
            throttle_retry_taken: false,
        }
    }

    /// Takes new settings (a reload) and keeps what was observed: usage, the
    /// throttle pause and the calls of the last hour, so a reload never hands a
    /// WABA still configured a fresh budget. WABAs added are shown in the
    /// metrics from now on; WABAs removed leave them (and their count).
    pub fn reconfigure(&mut self, cfg: RateLimitConfig, wabas: &[String]) {
        self.cfg = cfg;
        self.configured = wabas.to_vec();
        self.calls
            .retain(|w, _| w == UNKNOWN_WABA || wabas.iter().any(|c| c == w));
        for w in wabas {
            self.calls.entry(w.clone()).or_default();
        }
    }

    /// Records the usage of one answer: the app's figure and each business
    /// object's (several use-case readings of one object count as their highest),
    /// as fractions of the allowance (1.0 = 100 %). Keeps the configured WABAs'
    /// usage and that of at most [`EXTRA_BUSINESS_IDS`] other ids; returns the
    /// other ids it forgot because Graph has not named them for
    /// [`FORGET_BUSINESS_AFTER`].
    pub fn observe(
        &mut self,
        app: Option<f64>,
        business: &[(String, f64)],
        now: Instant,
    ) -> Vec<String> {
        let stop_at = self.cfg.stop_at;
        let cool_down = self.cfg.cool_down;
        let update = |source: &mut Source, usage: f64| {
            source.usage = usage;
            if usage < stop_at {
                source.probe_at = None;
            } else if source.probe_at.is_none() {
                source.probe_at = Some(now + cool_down);
            }
        };
        if let Some(u) = app {
            update(&mut self.app, u);
        }
        let mut highest: HashMap<&str, f64> = HashMap::new();
        for (id, u) in business {
            let e = highest.entry(id.as_str()).or_insert(*u);
            *e = e.max(*u);
        }
        let mut ids: Vec<(&str, f64)> = highest.into_iter().collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        for (id, u) in ids {
            if self.admit_business(id, now) {
                update(self.business.entry(id.to_owned()).or_default(), u);
            }
        }
        let forgotten: Vec<String> = self
            .extra_ids
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) >= FORGET_BUSINESS_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &forgotten {
            self.extra_ids.remove(id);
            self.business.remove(id);
        }
        forgotten
    }

    /// Whether usage of `id` is kept: a configured WABA, or one of the other
    /// ids while there is room for them (seen now).
    fn admit_business(&mut self, id: &str, now: Instant) -> bool {
        if self.configured.iter().any(|w| w == id) {
            return true;
        }
        if let Some(seen) = self.extra_ids.get_mut(id) {
            *seen = now;
            return true;
        }
        if self.extra_ids.len() < EXTRA_BUSINESS_IDS {
            self.extra_ids.insert(id.to_owned(), now);
            return true;
        }
        false
    }

    /// Whether usage of the business id is kept (see [`Governor::observe`]).
    pub fn tracks_business(&self, id: &str) -> bool {
        self.configured.iter().any(|w| w == id) || self.extra_ids.contains_key(id)
    }

    /// A throttled answer: pauses every call for `regain` (Graph's estimate) or,
    /// without one, for `backoff x 2^(throttled answers in a row)` scaled by
    /// `jitter` (in [0.5, 1]). Returns the pause. With Graph's estimate, usage at
    /// or above `stop_at` gets its probe when the pause ends rather than after
    /// `cool_down`: Graph said when access comes back.
    pub fn throttled(
        &mut self,
        now: Instant,
        regain: Option<Duration>,
        backoff: Duration,
        jitter: f64,
    ) -> Duration {
        // Calls in flight together are throttled together: answers arriving
        // while the pause the first one started still runs belong to the same
        // episode and take its step of the backoff, so an episode doubles the
        // backoff once, not once per call in flight.
        let same_episode = self.paused_for(now).is_some();
        let step = if same_episode {
            self.throttle_streak.saturating_sub(1)
        } else {
            self.throttle_streak
        };
        let pause = regain.unwrap_or_else(|| {
            backoff
                .saturating_mul(1 << step.min(10))
                .mul_f64(jitter.clamp(0.5, 1.0))
                .min(MAX_BACKOFF)
        });
        if !same_episode {
            self.throttle_streak = self.throttle_streak.saturating_add(1);
        }
        let until = now + pause;
        if self.paused_until.is_none_or(|u| u < until) {
            self.paused_until = Some(until);
        }
        if regain.is_some() {
            let stop_at = self.cfg.stop_at;
            for s in std::iter::once(&mut self.app)
                .chain(self.business.values_mut())
                .filter(|s| s.usage >= stop_at)
            {
                s.probe_at = self.paused_until;
            }
        }
        pause
    }

    /// Graph throttled the calls of one WABA (80007, 80008): pauses that
    /// WABA's calls for `regain` or, without it, for `backoff x 2^(its
    /// throttled answers in a row)` scaled by `jitter`. Other WABAs' calls go
    /// on. Returns the pause.
    pub fn throttled_waba(
        &mut self,
        waba: &str,
        now: Instant,
        regain: Option<Duration>,
        backoff: Duration,
        jitter: f64,
    ) -> Duration {
        let previous = self.waba_pauses.get(waba).copied();
        let same_episode = previous.is_some_and(|p| p.until > now);
        let streak = previous.map_or(0, |p| p.streak);
        let step = if same_episode {
            streak.saturating_sub(1)
        } else {
            streak
        };
        let pause = regain.unwrap_or_else(|| {
            backoff
                .saturating_mul(1 << step.min(10))
                .mul_f64(jitter.clamp(0.5, 1.0))
                .min(MAX_BACKOFF)
        });
        let until = (now + pause).max(previous.map_or(now, |p| p.until));
        let streak = if same_episode {
            streak
        } else {
            streak.saturating_add(1)
        };
        self.waba_pauses
            .insert(waba.to_owned(), Pause { until, streak });
        // As for the app: with Graph's estimate, the WABA's usage at or above
        // stop_at gets its probe when the pause ends, not after cool_down.
        if regain.is_some() {
            let stop_at = self.cfg.stop_at;
            if let Some(s) = self.business.get_mut(waba).filter(|s| s.usage >= stop_at) {
                s.probe_at = Some(until);
            }
        }
        pause
    }

    /// An answer that is not throttling: the backoff starts over (the app's,
    /// and the WABA's the call counted against).
    pub fn answered(&mut self, waba: &str) {
        self.throttle_streak = 0;
        self.waba_pauses.remove(waba);
    }

    /// How long the pause of `waba`'s calls after Graph throttled them lasts
    /// from `now`, if any.
    pub fn waba_paused_for(&self, waba: &str, now: Instant) -> Option<Duration> {
        self.waba_pauses
            .get(waba)
            .and_then(|p| p.until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// A throttled call asks whether it may wait out the pause and try again.
    /// Only one may at a time: with many calls in flight when Graph throttles,
    /// the rest fail at once (and the poll stops) instead of each retrying
    /// after the pause. The holder gives the slot back with
    /// [`Governor::release_throttle_retry`] once its next attempt ended.
    pub fn claim_throttle_retry(&mut self) -> bool {
        !std::mem::replace(&mut self.throttle_retry_taken, true)
    }

    pub fn release_throttle_retry(&mut self) {
        self.throttle_retry_taken = false;
    }

    /// How long the client-wide throttle pause lasts from `now`, if any.
    pub fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// The usage that applies to a call for `waba`: the higher of the app's and
    /// the WABA's.
    fn usage_for(&self, waba: &str) -> f64 {
        self.business
            .get(waba)
            .map_or(self.app.usage, |b| b.usage.max(self.app.usage))
    }

    /// The gap between two call starts for one WABA at this usage.
    fn delay_for(&self, usage: f64) -> Duration {
        let (slow, stop) = (self.cfg.slow_down_at, self.cfg.stop_at);
        if usage < slow {
            return Duration::ZERO;
        }
        self.cfg
            .max_delay
            .mul_f64(((usage - slow) / (stop - slow)).min(1.0))
    }

    /// Decides about one call for `waba` at `now`; a `Go` is recorded as a call.
    pub fn decide(&mut self, waba: &str, now: Instant) -> Decision {
        let pauses = [
            (self.paused_for(now), Refusal::ThrottlePause),
            (self.waba_paused_for(waba, now), Refusal::WabaThrottlePause),
        ];
        for (left, refusal) in pauses {
            if let Some(left) = left {
                return if left <= self.max_wait {
                    Decision::Wait {
                        until: now + left,
                        reason: WaitReason::Throttle,
                    }
                } else {
                    Decision::Refuse(refusal)
                };
            }
        }
        if let Some(budget) = self.cfg.waba_calls_per_hour {
            if self.calls_last_hour(waba, now) >= u64::from(budget) {
                return Decision::Refuse(Refusal::Budget);
            }
        }
        let stop_at = self.cfg.stop_at;
        let high: Vec<Option<Instant>> = [Some(&self.app), self.business.get(waba)]
            .into_iter()
            .flatten()
            .filter(|s| s.usage >= stop_at)
            .map(|s| s.probe_at)
            .collect();
        let probe = !high.is_empty();
        if probe && !high.iter().all(|at| at.is_some_and(|at| at <= now)) {
            return Decision::Refuse(Refusal::UsageHigh);
        }

        let mut until = now;
        let mut reason = WaitReason::Pacing;
        if let Some(last) = self.last_start {
            until = until.max(last + self.cfg.min_call_interval);
        }
        if !probe {
            let gap = self.delay_for(self.usage_for(waba));
            if let Some(last) = self.last_start_by_waba.get(waba) {
                let t = *last + gap;
                if !gap.is_zero() && t > until {
                    until = t;
                    reason = WaitReason::UsageSlowdown;
                }
            }
        }
        if until > now {
            return Decision::Wait { until, reason };
        }

        self.last_start = Some(now);
        self.last_start_by_waba.insert(waba.to_owned(), now);
        let minute = self.minute(now);
        self.calls
            .entry(waba.to_owned())
            .or_default()
            .record(minute);
        if probe {
            let next = now + self.cfg.cool_down;
            for s in [Some(&mut self.app), self.business.get_mut(waba)]
                .into_iter()
                .flatten()
                .filter(|s| s.usage >= stop_at)
            {
                s.probe_at = Some(next);
            }
        }
        Decision::Go { probe }
    }

    /// Calls started for `waba` in the 60 minutes before `now`, counting the
    /// whole of the oldest minute (see `CallWindow`): never fewer than were
    /// made, at most one minute's calls more.
    pub fn calls_last_hour(&mut self, waba: &str, now: Instant) -> u64 {
        let minute = self.minute(now);
        self.calls
            .get_mut(waba)
            .map_or(0, |calls| calls.last_hour(minute))
    }

    /// Whole minutes from the epoch (the first instant seen) to `now`; an instant
    /// before the epoch (a concurrent caller's) counts as minute 0.
    fn minute(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_secs() / 60
    }

    /// Every WABA seen (configured or called), with its state at `now`.
    pub fn states(&mut self, now: Instant) -> Vec<(String, WabaState)> {
        let wabas: Vec<String> = self.calls.keys().cloned().collect();
        wabas
            .into_iter()
            .map(|waba| {
                let calls_last_hour = self.calls_last_hour(&waba, now);
                let budget = self.cfg.waba_calls_per_hour;
                let usage_high = self.usage_for(&waba) >= self.cfg.stop_at;
                let paused = self
                    .waba_paused_for(&waba, now)
                    .is_some_and(|left| left > self.max_wait);
                let refusing =
                    usage_high || paused || budget.is_some_and(|b| calls_last_hour >= u64::from(b));
                (
                    waba,
                    WabaState {
                        calls_last_hour,
                        budget,
                        refusing,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);
    const HOUR: Duration = Duration::from_secs(3600);
    const A: &str = "111";
    const B: &str = "222";

    fn cfg() -> RateLimitConfig {
        RateLimitConfig {
            slow_down_at: 0.75,
            stop_at: 0.95,
            max_delay: Duration::from_secs(20),
            cool_down: Duration::from_secs(60),
            min_call_interval: Duration::ZERO,
            waba_calls_per_hour: None,
        }
    }

    fn with_budget(calls_per_hour: u32) -> RateLimitConfig {
        RateLimitConfig {
            waba_calls_per_hour: Some(calls_per_hour),
            ..cfg()
        }
    }

    fn governor(cfg: RateLimitConfig) -> Governor {
        Governor::new(cfg, Duration::from_secs(60), &[A.to_owned(), B.to_owned()])
    }

    fn go(g: &mut Governor, waba: &str, now: Instant) {
        assert_eq!(g.decide(waba, now), Decision::Go { probe: false });
    }

    #[test]
    fn low_usage_goes_at_once() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        g.observe(Some(0.1), &[(A.into(), 0.74)], t0);
        for i in 0..10 {
            go(&mut g, A, t0 + i * MS);
        }
        assert_eq!(g.calls_last_hour(A, t0 + 10 * MS), 10);
    }

    #[test]
    fn min_call_interval_spaces_every_call_of_the_client() {
        let mut g = governor(RateLimitConfig {
            min_call_interval: 100 * MS,
            ..cfg()
        });
        let t0 = Instant::now();
        go(&mut g, A, t0);
        // Another WABA's call is spaced too: the interval is client-wide.
        assert_eq!(
            g.decide(B, t0 + 30 * MS),
            Decision::Wait {
                until: t0 + 100 * MS,
                reason: WaitReason::Pacing
            }
        );
        go(&mut g, B, t0 + 100 * MS);
    }

    #[test]
    fn slowdown_grows_linearly_between_the_thresholds() {
        let g = governor(cfg());
        assert_eq!(g.delay_for(0.5), Duration::ZERO);
        assert_eq!(g.delay_for(0.75), Duration::ZERO);
        assert_eq!(g.delay_for(0.85), Duration::from_secs(10));
        assert_eq!(g.delay_for(0.95), Duration::from_secs(20));
        assert_eq!(g.delay_for(1.2), Duration::from_secs(20));

        let mut g = governor(cfg());
        let t0 = Instant::now();
        g.observe(None, &[(A.into(), 0.85)], t0);
        go(&mut g, A, t0);
        let next = t0 + Duration::from_secs(10);
        assert_eq!(
            g.decide(A, t0 + MS),
            Decision::Wait {
                until: next,
                reason: WaitReason::UsageSlowdown
            }
        );
        // The other WABA's usage is low: not slowed.
        go(&mut g, B, t0 + MS);
        go(&mut g, A, next);
    }

    #[test]
    fn app_usage_applies_to_every_waba() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        g.observe(Some(0.85), &[(A.into(), 0.1)], t0);
        assert_eq!(g.usage_for(A), 0.85);
        assert_eq!(g.usage_for(B), 0.85);
        // Several readings of one object in one answer count as the highest.
        g.observe(None, &[(B.into(), 0.9), (B.into(), 0.2)], t0);
        assert_eq!(g.usage_for(B), 0.9);
    }

    #[test]
    fn stop_at_the_threshold_then_one_probe_per_cool_down() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        let cool = Duration::from_secs(60);
        g.observe(None, &[(A.into(), 0.96)], t0);
        assert_eq!(g.decide(A, t0), Decision::Refuse(Refusal::UsageHigh));
        assert_eq!(
            g.decide(A, t0 + cool - MS),
            Decision::Refuse(Refusal::UsageHigh)
        );
        go(&mut g, B, t0);
        // Exactly one probe after the cool-down, however many ask.
        assert_eq!(g.decide(A, t0 + cool), Decision::Go { probe: true });
        assert_eq!(g.decide(A, t0 + cool), Decision::Refuse(Refusal::UsageHigh));
        assert_eq!(
            g.decide(A, t0 + cool + MS),
            Decision::Refuse(Refusal::UsageHigh)
        );
        // The probe's answer says usage is still high: the next probe one cool-down later.
        g.observe(None, &[(A.into(), 0.97)], t0 + cool + MS);
        assert_eq!(
            g.decide(A, t0 + 2 * cool - MS),
            Decision::Refuse(Refusal::UsageHigh)
        );
        assert_eq!(g.decide(A, t0 + 2 * cool), Decision::Go { probe: true });
        // It went down: calls go again, spaced for the usage.
        g.observe(None, &[(A.into(), 0.5)], t0 + 2 * cool + MS);
        go(&mut g, A, t0 + 2 * cool + 2 * MS);
        go(&mut g, A, t0 + 2 * cool + 3 * MS);
        assert_eq!(g.calls_last_hour(A, t0 + 3 * cool), 4);
    }

    #[test]
    fn high_app_usage_lets_one_probe_through_for_the_whole_client() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        let cool = Duration::from_secs(60);
        g.observe(Some(1.0), &[], t0);
        assert_eq!(g.decide(A, t0), Decision::Refuse(Refusal::UsageHigh));
        assert_eq!(g.decide(A, t0 + cool), Decision::Go { probe: true });
        assert_eq!(g.decide(B, t0 + cool), Decision::Refuse(Refusal::UsageHigh));
    }

    #[test]
    fn the_call_count_keeps_at_most_61_minutes_whatever_the_rate() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        // 100,000 calls over three hours (more than 9 a second).
        let step = Duration::from_millis(108);
        for i in 0..100_000u32 {
            go(&mut g, A, t0 + step * i);
        }
        let end = t0 + step * 99_999;
        let window = &g.calls[A].0;
        assert!(window.len() <= 61, "{} minutes kept", window.len());
        // The hour's count is never below the calls of the last 60 minutes and
        // at most one minute's calls above.
        let exact = (0..100_000u32)
            .filter(|i| end.saturating_duration_since(t0 + step * *i) < HOUR)
            .count() as u64;
        let counted = g.calls_last_hour(A, end);
        assert!(counted >= exact, "{counted} < {exact}");
        assert!(counted <= exact + 60_000 / 108 + 1, "{counted} vs {exact}");
    }

    #[test]
    fn answers_throttled_together_double_the_backoff_once() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        let base = Duration::from_secs(2);
        // Eight calls in flight, all throttled within a millisecond.
        for i in 0..8 {
            g.throttled(t0 + MS * i, None, base, 1.0);
        }
        // One episode: the pause is 2 s from the last of them, not 2^8 x 2 s.
        assert_eq!(g.paused_for(t0), Some(base + 7 * MS));
        // The retry after the pause is throttled again: the next step.
        let after = t0 + base + 7 * MS;
        assert_eq!(g.throttled(after, None, base, 1.0), 2 * base);
    }

    #[test]
    fn one_throttled_call_at_a_time_waits_to_retry() {
        let mut g = governor(cfg());
        assert!(g.claim_throttle_retry());
        assert!(!g.claim_throttle_retry(), "the others give up");
        g.release_throttle_retry();
        assert!(
            g.claim_throttle_retry(),
            "free again once the retry was made"
        );
    }

    #[test]
    fn a_reload_keeps_the_calls_of_the_last_hour() {
        let mut g = governor(with_budget(3));
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        go(&mut g, A, t0);
        go(&mut g, A, t0 + min);
        // The same budget reloaded: still two calls used.
        g.reconfigure(with_budget(3), &[A.to_owned(), B.to_owned()]);
        go(&mut g, A, t0 + 2 * min);
        assert_eq!(g.decide(A, t0 + 3 * min), Decision::Refuse(Refusal::Budget));
        // A larger budget counts the calls already made.
        g.reconfigure(with_budget(4), &[A.to_owned()]);
        go(&mut g, A, t0 + 4 * min);
        assert_eq!(g.decide(A, t0 + 5 * min), Decision::Refuse(Refusal::Budget));
        assert_eq!(g.calls_last_hour(A, t0 + 5 * min), 4);
    }

    #[test]
    fn budget_is_never_exceeded_in_any_rolling_hour() {
        let mut g = governor(with_budget(3));
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        go(&mut g, A, t0);
        go(&mut g, A, t0 + 10 * min);
        go(&mut g, A, t0 + 20 * min);
        assert_eq!(
            g.decide(A, t0 + 30 * min),
            Decision::Refuse(Refusal::Budget)
        );
        // Another WABA has its own budget.
        go(&mut g, B, t0 + 30 * min);
        assert_eq!(
            g.decide(A, t0 + 60 * min - MS),
            Decision::Refuse(Refusal::Budget)
        );
        // Minutes are counted whole: the first call's minute leaves the window
        // once 61 minutes have passed (never early), then one more may go.
        assert_eq!(
            g.decide(A, t0 + 60 * min + 30 * SEC),
            Decision::Refuse(Refusal::Budget)
        );
        go(&mut g, A, t0 + 61 * min);
        assert_eq!(
            g.decide(A, t0 + 61 * min),
            Decision::Refuse(Refusal::Budget)
        );
        // Over a long run, no 60-minute window holds more than the budget.
        let mut starts = vec![t0, t0 + 10 * min, t0 + 20 * min, t0 + 61 * min];
        let mut t = t0 + 61 * min;
        while t < t0 + 300 * min {
            t += 7 * min;
            if g.decide(A, t) == (Decision::Go { probe: false }) {
                starts.push(t);
            }
        }
        for s in &starts {
            let in_window = starts
                .iter()
                .filter(|x| **x >= *s && **x < *s + HOUR)
                .count();
            assert!(in_window <= 3, "{in_window} calls in the hour from {s:?}");
        }
        let states = g.states(t);
        assert_eq!(states[0].0, A);
        assert_eq!(states[0].1.budget, Some(3));
    }

    #[test]
    fn throttling_pauses_every_call_with_backoff_when_graph_gives_no_estimate() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        let regain = Duration::from_secs(30);
        g.observe(None, &[(B.into(), 1.0)], t0);
        assert_eq!(g.throttled(t0, Some(regain), 10 * MS, 1.0), regain);
        // Short enough to wait for, for every WABA.
        for waba in [A, B] {
            assert_eq!(
                g.decide(waba, t0 + MS),
                Decision::Wait {
                    until: t0 + regain,
                    reason: WaitReason::Throttle
                }
            );
        }
        go(&mut g, A, t0 + regain);
        // Graph's estimate (30 s), not the cool-down (60 s), says when the
        // probe for the WABA at full usage may go.
        assert_eq!(g.decide(B, t0 + regain), Decision::Go { probe: true });
        // Long: refused at once.
        let t1 = t0 + regain;
        g.throttled(t1, Some(Duration::from_secs(300)), 10 * MS, 1.0);
        assert_eq!(
            g.decide(A, t1 + Duration::from_secs(100)),
            Decision::Refuse(Refusal::ThrottlePause)
        );
        assert_eq!(g.paused_for(t1 + Duration::from_secs(300)), None);
        // Without an estimate the backoff doubles with each throttled answer in a
        // row, jittered, and starts over after an answer that is not throttling.
        // (Each answer comes once the pause before it ended: answers within a
        // pause are one episode.)
        let t2 = t1 + Duration::from_secs(300);
        assert_eq!(g.throttled(t2, None, 10 * MS, 1.0), 40 * MS);
        let t3 = t2 + 40 * MS;
        assert_eq!(g.throttled(t3, None, 10 * MS, 0.5), 40 * MS);
        let t4 = t3 + 40 * MS;
        assert_eq!(g.throttled(t4, None, 10 * MS, 1.0), 160 * MS);
        g.answered(A);
        assert_eq!(
            g.throttled(t4, None, 10 * MS, 0.75),
            Duration::from_micros(7500)
        );
        // A shorter pause never shortens a longer one.
        assert_eq!(g.paused_for(t4), Some(160 * MS));
    }

    #[test]
    fn states_say_when_a_waba_is_refused() {
        let mut g = governor(with_budget(1));
        let t0 = Instant::now();
        go(&mut g, A, t0);
        g.observe(None, &[(B.into(), 0.99)], t0);
        let states = g.states(t0);
        assert_eq!(
            states,
            vec![
                (
                    A.to_owned(),
                    WabaState {
                        calls_last_hour: 1,
                        budget: Some(1),
                        refusing: true
                    }
                ),
                (
                    B.to_owned(),
                    WabaState {
                        calls_last_hour: 0,
                        budget: Some(1),
                        refusing: true
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_throttled_waba_pauses_that_waba_only() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        let regain = Duration::from_secs(300);
        assert_eq!(g.throttled_waba(A, t0, Some(regain), 10 * MS, 1.0), regain);
        assert_eq!(
            g.decide(A, t0 + SEC),
            Decision::Refuse(Refusal::WabaThrottlePause)
        );
        go(&mut g, B, t0 + SEC);
        assert_eq!(g.paused_for(t0 + SEC), None, "the app is not paused");
        assert!(g.states(t0 + SEC)[0].1.refusing);
        assert!(!g.states(t0 + SEC)[1].1.refusing);
        go(&mut g, A, t0 + regain);
        g.answered(A);
        // A short pause is waited out, like the app's.
        g.throttled_waba(A, t0 + regain, None, 10 * MS, 1.0);
        assert_eq!(
            g.decide(A, t0 + regain),
            Decision::Wait {
                until: t0 + regain + 10 * MS,
                reason: WaitReason::Throttle
            }
        );
        // Without an estimate, the WABA's backoff doubles with its own streak.
        let t1 = t0 + regain + 10 * MS;
        assert_eq!(g.throttled_waba(A, t1, None, 10 * MS, 1.0), 20 * MS);
        g.answered(A);
        assert_eq!(g.waba_paused_for(A, t1), None);
    }

    #[test]
    fn usage_is_kept_for_configured_wabas_and_a_few_others_for_a_while() {
        let mut g = governor(cfg());
        let t0 = Instant::now();
        let many: Vec<(String, f64)> = (0..10_000).map(|i| (format!("9{i:05}"), 0.5)).collect();
        let mut all = many.clone();
        all.push((A.to_owned(), 0.99));
        assert!(g.observe(None, &all, t0).is_empty());
        assert!(
            g.business.len() <= EXTRA_BUSINESS_IDS + 1,
            "{}",
            g.business.len()
        );
        assert!(g.tracks_business(A));
        assert_eq!(g.decide(A, t0), Decision::Refuse(Refusal::UsageHigh));
        // The others are forgotten an hour after Graph last named them.
        let later = t0 + FORGET_BUSINESS_AFTER;
        let forgotten = g.observe(None, &[(A.to_owned(), 0.1)], later);
        assert_eq!(forgotten.len(), EXTRA_BUSINESS_IDS);
        assert!(g.observe(None, &[], later).is_empty(), "forgotten once");
        assert_eq!(g.business.len(), 1);
        assert!(!g.tracks_business(&many[0].0));
        assert!(g.tracks_business(A), "a configured WABA is never forgotten");
    }
}
