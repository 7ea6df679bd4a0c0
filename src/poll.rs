//! Pure decisions of a poll, with no I/O and no clock of their own: which window
//! to ask Graph for, which period of an answer to show, what one call's result
//! means for the rest of the poll ([`PollPolicy`]), and how one result turns a
//! cell of the snapshot into its next state.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::config::GranularityConfig;
use crate::error::{CallError, ErrorClass, NetworkKind};
use crate::model::{DataPoint, Granularity, MetricKind};
use crate::ratelimit::Refusal;
use crate::snapshot::{Cell, CellStatus, FailureClass};

/// The `since` date to send: the UTC date `lookback` before now, so the answer
/// holds whole periods back to there. `until` is never sent: Graph then uses the
/// current date, which is the newest data there is.
pub fn query_since(cfg: &GranularityConfig, now: DateTime<Utc>) -> Option<NaiveDate> {
    let lookback = chrono::Duration::from_std(cfg.lookback?).ok()?;
    Some((now - lookback).date_naive())
}

/// The data point a live series shows: the newest period that has ended at least
/// `trust_after` ago. A period still in progress, or too fresh to have settled,
/// is never shown. LIFETIME has one point, shown as it is.
pub fn select_period(
    points: &[DataPoint],
    granularity: Granularity,
    trust_after: Duration,
    now: DateTime<Utc>,
) -> Option<&DataPoint> {
    let Some(period) = granularity.period() else {
        return points.iter().max_by_key(|p| p.start);
    };
    let trust = chrono::Duration::from_std(trust_after).unwrap_or(chrono::Duration::MAX);
    points
        .iter()
        .filter(|p| {
            p.start
                .checked_add_signed(period)
                .and_then(|end| end.checked_add_signed(trust))
                .is_some_and(|trusted_at| trusted_at <= now)
        })
        .max_by_key(|p| p.start)
}

/// Why a poll stopped calling Graph: every further call would fail the same
/// way, whatever its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Graph rejected the access token (190).
    Token,
    /// The Metrics API is not served in this API version.
    ApiGone,
    /// Graph throttled the app (4, 17, 32, 613), or the client is paused after
    /// it did.
    Throttled,
    /// Graph's host refuses or cannot be reached: connection failures in a row.
    Unreachable,
    /// Calls of several different flows failed on the network in a row, with
    /// no answer between them: Graph as a whole hangs or breaks connections.
    Failing,
}

impl Halt {
    pub fn label(self) -> &'static str {
        match self {
            Halt::Token => "token",
            Halt::ApiGone => "api_gone",
            Halt::Throttled => "throttled",
            Halt::Unreachable => "graph_unreachable",
            Halt::Failing => "graph_failing",
        }
    }

    /// What it means, for the log and `/-/ready`.
    pub fn describe(self) -> &'static str {
        match self {
            Halt::Token => "Graph rejected the access token (code 190)",
            Halt::ApiGone => "Graph does not serve the Flows Metrics API in this API version",
            Halt::Throttled => "Graph throttled the app",
            Halt::Unreachable => "Graph cannot be reached (connection failures in a row)",
            Halt::Failing => {
                "calls of several flows in a row failed on the network (Graph hangs or breaks connections)"
            }
        }
    }
}

/// Why a poll did not make a call; the `reason` of `graph_calls_saved_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The poll had stopped (see [`Halt`]).
    PollHalted(Halt),
    /// A call of this flow ran out of time earlier in the poll.
    FlowTimedOut,
    /// Graph throttled the flow's WABA earlier in the poll (80007, 80008).
    WabaPaused,
}

impl SkipReason {
    /// Every `reason` label a skip can have.
    pub const LABELS: [&'static str; 3] = ["poll_halted", "flow_timed_out", "waba_paused"];

    pub fn label(self) -> &'static str {
        match self {
            SkipReason::PollHalted(_) => "poll_halted",
            SkipReason::FlowTimedOut => "flow_timed_out",
            SkipReason::WabaPaused => "waba_paused",
        }
    }
}

/// One call a poll plans: the flow and the WABA key its calls count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub flow_id: &'a str,
    pub waba: &'a str,
}

/// Connection failures in a row (of any flows) after which Graph's host is
/// taken to be unreachable.
pub const CONNECT_FAILURES_HALT: usize = 3;
/// Distinct flows whose calls failed on the network in a row, with no answer
/// between them, after which Graph as a whole is taken to be failing. One
/// flow's failures, however many, never count for more than one.
pub const FAILING_FLOWS_HALT: usize = 3;

/// What one call's result means for the rest of its poll (or backfill), for
/// its flow, its WABA and the app: fed every result (`record`) and asked
/// before every call (`check`). Plain decisions over plain data; the caller
/// does the I/O.
///
/// - For the app, the poll stops: Graph rejected the token (190), the Metrics
///   API is gone, Graph throttled the app (or a pause after it refused the
///   call), [`CONNECT_FAILURES_HALT`] connection failures in a row, or network
///   failures of [`FAILING_FLOWS_HALT`] different flows in a row. An answer
///   from Graph, of any kind, ends a row.
/// - For a WABA: Graph throttled it (80007, 80008, or a pause after it refused
///   the call): its other flows' calls are not made in this poll.
/// - For a flow: a call of it ran out of time (attempt timeout or deadline):
///   its other calls are not made in this poll, so a hanging flow costs one
///   deadline, not one per metric.
/// - Anything else concerns that call alone.
#[derive(Debug, Default)]
pub struct PollPolicy {
    halt: Option<Halt>,
    timed_out_flows: HashSet<String>,
    paused_wabas: HashSet<String>,
    /// Connection failures since the last answer.
    connect_failures: usize,
    /// Flows with a network failure since the last answer.
    failing_flows: HashSet<String>,
}

impl PollPolicy {
    pub fn new() -> PollPolicy {
        PollPolicy::default()
    }

    /// Whether to make the call for `target` now: `None` to go ahead, or why not.
    pub fn check(&self, target: Target<'_>) -> Option<SkipReason> {
        if let Some(halt) = self.halt {
            Some(SkipReason::PollHalted(halt))
        } else if self.timed_out_flows.contains(target.flow_id) {
            Some(SkipReason::FlowTimedOut)
        } else if self.paused_wabas.contains(target.waba) {
            Some(SkipReason::WabaPaused)
        } else {
            None
        }
    }

    /// Takes in the result of a call that was made (or refused by the rate
    /// limit).
    pub fn record(&mut self, target: Target<'_>, result: Result<(), &CallError>) {
        let e = match result {
            Ok(()) => {
                self.answered();
                return;
            }
            Err(CallError::Refused(refusal)) => {
                match refusal {
                    Refusal::ThrottlePause => self.stop(Halt::Throttled),
                    Refusal::WabaThrottlePause => {
                        self.paused_wabas.insert(target.waba.to_owned());
                    }
                    // The governor refuses the WABA's calls by itself, one
                    // probe at a time; nothing to decide here.
                    Refusal::UsageHigh | Refusal::Budget => {}
                }
                return;
            }
            Err(CallError::Failed(e)) => e,
        };
        match e.class {
            ErrorClass::Token => self.stop(Halt::Token),
            ErrorClass::ApiGone => self.stop(Halt::ApiGone),
            ErrorClass::Throttled => self.stop(Halt::Throttled),
            ErrorClass::WabaThrottled => {
                self.paused_wabas.insert(target.waba.to_owned());
                self.answered();
            }
            ErrorClass::Network => {
                if e.network == Some(NetworkKind::TimedOut) {
                    self.timed_out_flows.insert(target.flow_id.to_owned());
                }
                if e.network == Some(NetworkKind::Connect) {
                    self.connect_failures += 1;
                    if self.connect_failures >= CONNECT_FAILURES_HALT {
                        self.stop(Halt::Unreachable);
                    }
                }
                self.failing_flows.insert(target.flow_id.to_owned());
                if self.failing_flows.len() >= FAILING_FLOWS_HALT {
                    self.stop(Halt::Failing);
                }
            }
            // Graph answered: it is there, and this concerns this call.
            _ => self.answered(),
        }
    }

    fn answered(&mut self) {
        self.connect_failures = 0;
        self.failing_flows.clear();
    }

    fn stop(&mut self, halt: Halt) {
        self.halt.get_or_insert(halt);
    }

    /// Why the poll stopped calling Graph, if it did.
    pub fn halt(&self) -> Option<Halt> {
        self.halt
    }
}

/// The order a poll's calls go out in: metric by metric, each over every flow
/// (flows by index), so a flow's calls are spread over the poll; and one call
/// per flow at a time: a call of a flow that has a call in flight waits while
/// later calls go ahead, so a flow that hangs holds one place, and its next
/// call is decided once its first has ended.
#[derive(Debug)]
pub struct Dispatch {
    queue: VecDeque<(usize, MetricKind)>,
    /// Calls passed over because their flow had a call in flight, in order.
    waiting: VecDeque<(usize, MetricKind)>,
    busy: HashSet<usize>,
}

impl Dispatch {
    /// The calls of `flows` flows (indices `0..flows`).
    pub fn new(flows: usize) -> Dispatch {
        let mut queue = VecDeque::with_capacity(flows * MetricKind::ALL.len());
        for metric in MetricKind::ALL {
            for flow in 0..flows {
                queue.push_back((flow, metric));
            }
        }
        Dispatch {
            queue,
            waiting: VecDeque::new(),
            busy: HashSet::new(),
        }
    }

    /// Whether a call may be able to go now (`take` may still find none).
    pub fn may_go(&self) -> bool {
        !self.queue.is_empty() || self.waiting.iter().any(|(f, _)| !self.busy.contains(f))
    }

    /// The next call whose flow has no call in flight, now in flight; `None`
    /// when every call left waits for its flow.
    pub fn take(&mut self) -> Option<(usize, MetricKind)> {
        if let Some(i) = self
            .waiting
            .iter()
            .position(|(f, _)| !self.busy.contains(f))
        {
            let call = self.waiting.remove(i)?;
            self.busy.insert(call.0);
            return Some(call);
        }
        while let Some(call) = self.queue.pop_front() {
            if self.busy.contains(&call.0) {
                self.waiting.push_back(call);
            } else {
                self.busy.insert(call.0);
                return Some(call);
            }
        }
        None
    }

    /// The call of `flow` that `take` gave ended (or was not made).
    pub fn done(&mut self, flow: usize) {
        self.busy.remove(&flow);
    }
}

/// What became of one planned call of a poll.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// Graph answered; the settled period to show, if there is one.
    Answered(Option<DataPoint>),
    /// The call was refused or failed.
    Failed(CallError),
    /// The poll did not make the call.
    NotAttempted(SkipReason),
}

/// The next state of one (flow, metric) cell after a poll's `outcome`.
///
/// - A settled period replaces whatever was shown.
/// - An answer without a settled period shows nothing (the API said so).
/// - 139006 shows nothing: no numbers are invented for a flow under the threshold.
/// - Any other error, a refused call and a call not made keep the last good
///   value, marked stale, so one bad poll does not blank a dashboard; why is
///   recorded.
pub fn next_cell(previous: Option<&Cell>, outcome: &CallOutcome, now: DateTime<Utc>) -> Cell {
    let failed = |why: FailureClass| Cell {
        shown: previous.and_then(|c| c.shown.clone()),
        status: CellStatus::Failed(why),
        last_success: previous.and_then(|c| c.last_success),
    };
    match outcome {
        CallOutcome::Answered(Some(point)) => Cell {
            shown: Some(point.clone()),
            status: CellStatus::Fresh,
            last_success: Some(now),
        },
        CallOutcome::Answered(None) => Cell {
            shown: None,
            status: CellStatus::NoSettledPeriod,
            last_success: Some(now),
        },
        CallOutcome::Failed(e) if e.class() == Some(ErrorClass::InsufficientData) => Cell {
            shown: None,
            status: CellStatus::InsufficientData,
            last_success: Some(now),
        },
        CallOutcome::Failed(e) => failed(FailureClass::from(e)),
        CallOutcome::NotAttempted(_) => failed(FailureClass::NotAttempted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GraphError;
    use chrono::TimeZone;

    fn failed(class: ErrorClass) -> CallOutcome {
        CallOutcome::Failed(CallError::Failed(GraphError::new(class, "test")))
    }

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, d, h, 0, 0).unwrap()
    }

    fn point(start: DateTime<Utc>, v: f64) -> DataPoint {
        DataPoint {
            start,
            values: vec![("value".into(), v)],
        }
    }

    #[test]
    fn hour_shows_newest_settled_period() {
        let points: Vec<_> = (0..12).map(|h| point(at(30, h), h as f64)).collect();
        // now 12:00, trust 3h: 08:00-09:00 ended at 09:00, trusted at 12:00.
        let p = select_period(
            &points,
            Granularity::Hour,
            Duration::from_secs(3 * 3600),
            at(30, 12),
        );
        assert_eq!(p.map(|p| p.start), Some(at(30, 8)));
        // trust 0: 11:00 is still in progress, 10:00 ended at 11:00.
        let p = select_period(&points, Granularity::Hour, Duration::ZERO, at(30, 11));
        assert_eq!(p.map(|p| p.start), Some(at(30, 10)));
    }

    #[test]
    fn day_in_progress_is_never_shown() {
        let points = vec![
            point(at(28, 8), 1.0),
            point(at(29, 8), 2.0),
            point(at(30, 8), 3.0),
        ];
        // 2024-01-30 12:00: the day that began 01-29 08:00 ended 01-30 08:00;
        // with 6h trust it is trusted at 14:00, so 01-28 is shown.
        let p = select_period(
            &points,
            Granularity::Day,
            Duration::from_secs(6 * 3600),
            at(30, 12),
        );
        assert_eq!(p.map(|p| p.start), Some(at(28, 8)));
        let p = select_period(
            &points,
            Granularity::Day,
            Duration::from_secs(6 * 3600),
            at(30, 14),
        );
        assert_eq!(p.map(|p| p.start), Some(at(29, 8)));
        let none = select_period(&points[2..], Granularity::Day, Duration::ZERO, at(30, 12));
        assert_eq!(none, None);
    }

    #[test]
    fn lifetime_is_the_single_point() {
        let points = vec![point(at(1, 8), 9.0)];
        let p = select_period(
            &points,
            Granularity::Lifetime,
            Duration::from_secs(99999),
            at(1, 9),
        );
        assert_eq!(p.map(|p| p.values[0].1), Some(9.0));
    }

    #[test]
    fn since_is_lookback_before_now() {
        let cfg = crate::config::Config::default_granularity(Granularity::Day);
        assert_eq!(
            query_since(&cfg, at(30, 1)),
            NaiveDate::from_ymd_opt(2024, 1, 26)
        );
        let life = crate::config::Config::default_granularity(Granularity::Lifetime);
        assert_eq!(query_since(&life, at(30, 1)), None);
    }

    /// One step of a policy table: a call of `flow` of `waba` and what it
    /// ended in (`None`: an answer with data).
    type Step = (&'static str, &'static str, Option<CallError>);
    /// A row of the policy table: name, steps, the halt, and the verdicts for
    /// three later calls.
    type Row = (
        &'static str,
        Vec<Step>,
        Option<Halt>,
        [Option<SkipReason>; 3],
    );

    fn graph(class: ErrorClass) -> Option<CallError> {
        Some(CallError::Failed(GraphError::new(class, "test")))
    }

    fn net(kind: NetworkKind) -> Option<CallError> {
        Some(CallError::Failed(GraphError::network(kind, "test")))
    }

    fn refused(r: Refusal) -> Option<CallError> {
        Some(CallError::Refused(r))
    }

    /// Feeds the steps to a new policy and returns it.
    fn after(steps: &[Step]) -> PollPolicy {
        let mut policy = PollPolicy::new();
        for (flow, waba, result) in steps {
            let target = Target {
                flow_id: flow,
                waba,
            };
            assert_eq!(policy.check(target), None, "{flow} was not to be called");
            policy.record(target, result.as_ref().map_or(Ok(()), Err));
        }
        policy
    }

    #[test]
    fn the_poll_policy_table() {
        use ErrorClass::*;
        use NetworkKind::*;
        // (what happened, then: is the poll stopped, and what happens to a
        // call of flow f9 of WABA w1, of f1 (the first flow) and of f8 of w2)
        let halted = |h| Some(SkipReason::PollHalted(h));
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("answers", vec![("f1", "w1", None), ("f2", "w2", None)], None, [None, None, None]),
            ("190 stops the poll", vec![("f1", "w1", graph(Token))], Some(Halt::Token), [halted(Halt::Token); 3]),
            ("API gone stops the poll", vec![("f1", "w1", graph(ApiGone))], Some(Halt::ApiGone), [halted(Halt::ApiGone); 3]),
            ("the app throttled stops the poll", vec![("f1", "w1", graph(Throttled))], Some(Halt::Throttled), [halted(Halt::Throttled); 3]),
            ("a refusal for the app's pause stops the poll", vec![("f1", "w1", refused(Refusal::ThrottlePause))], Some(Halt::Throttled), [halted(Halt::Throttled); 3]),
            ("a throttled WABA pauses that WABA only",
                vec![("f1", "w1", graph(WabaThrottled))], None,
                [Some(SkipReason::WabaPaused), Some(SkipReason::WabaPaused), None]),
            ("a refusal for a WABA's pause pauses that WABA only",
                vec![("f1", "w1", refused(Refusal::WabaThrottlePause))], None,
                [Some(SkipReason::WabaPaused), Some(SkipReason::WabaPaused), None]),
            ("usage and budget refusals are the governor's to repeat",
                vec![("f1", "w1", refused(Refusal::UsageHigh)), ("f2", "w1", refused(Refusal::Budget))], None, [None, None, None]),
            ("a timeout ends that flow's calls only",
                vec![("f1", "w1", net(TimedOut))], None, [None, Some(SkipReason::FlowTimedOut), None]),
            ("one flow's failures in a row never stop the poll",
                vec![("f1", "w1", net(Broken)), ("f1", "w1", net(Broken)), ("f1", "w1", net(Broken)), ("f1", "w1", net(Broken))],
                None, [None, None, None]),
            ("two flows failing is not yet Graph failing",
                vec![("f1", "w1", net(TimedOut)), ("f2", "w1", net(TimedOut))], None,
                [None, Some(SkipReason::FlowTimedOut), None]),
            ("three different flows failing in a row stop the poll",
                vec![("f1", "w1", net(TimedOut)), ("f2", "w1", net(Broken)), ("f3", "w2", net(Broken))],
                Some(Halt::Failing), [halted(Halt::Failing); 3]),
            ("an answer between them ends the row",
                vec![("f1", "w1", net(Broken)), ("f2", "w1", net(Broken)), ("f4", "w1", None), ("f3", "w2", net(Broken))],
                None, [None, None, None]),
            ("an error answer ends the row too: Graph is there",
                vec![("f1", "w1", net(Broken)), ("f2", "w1", net(Broken)), ("f4", "w1", graph(Transient)), ("f3", "w2", net(Broken))],
                None, [None, None, None]),
            ("139006 ends the row",
                vec![("f1", "w1", net(Broken)), ("f2", "w1", net(Broken)), ("f4", "w1", graph(InsufficientData)), ("f3", "w2", net(Broken))],
                None, [None, None, None]),
            ("a refusal does not end the row: Graph was not asked",
                vec![("f1", "w1", net(Broken)), ("f2", "w1", net(Broken)), ("f4", "w1", refused(Refusal::Budget)), ("f3", "w2", net(Broken))],
                Some(Halt::Failing), [halted(Halt::Failing); 3]),
            ("three connection failures stop the poll, whatever the flows",
                vec![("f1", "w1", net(Connect)), ("f1", "w1", net(Connect)), ("f1", "w1", net(Connect))],
                Some(Halt::Unreachable), [halted(Halt::Unreachable); 3]),
            ("per-call errors concern that call",
                vec![("f1", "w1", graph(Malformed)), ("f1", "w1", graph(Permission)), ("f1", "w1", graph(InvalidRequest)), ("f1", "w1", graph(Unknown))],
                None, [None, None, None]),
        ];
        for (name, steps, halt, [other, first, other_waba]) in table {
            let policy = after(&steps);
            assert_eq!(policy.halt(), halt, "{name}: halt");
            let check = |flow_id, waba| policy.check(Target { flow_id, waba });
            assert_eq!(check("f9", "w1"), other, "{name}: another flow of w1");
            assert_eq!(check("f1", "w1"), first, "{name}: the first flow");
            assert_eq!(check("f8", "w2"), other_waba, "{name}: a flow of w2");
        }
    }

    #[test]
    fn a_flow_has_one_call_in_flight_at_a_time() {
        use MetricKind::*;
        let mut d = Dispatch::new(3);
        // Metric by metric over the flows.
        assert_eq!(d.take(), Some((0, RequestCount)));
        assert_eq!(d.take(), Some((1, RequestCount)));
        assert_eq!(d.take(), Some((2, RequestCount)));
        d.done(1);
        d.done(2);
        // Flow 0's call is still in flight: its next call waits, later ones go.
        assert_eq!(d.take(), Some((1, RequestError)));
        assert_eq!(d.take(), Some((2, RequestError)));
        assert_eq!(d.take(), None, "every call left waits for a busy flow");
        assert!(!d.may_go());
        d.done(0);
        assert!(d.may_go());
        // The waiting call of flow 0 goes first once its flow is free.
        assert_eq!(d.take(), Some((0, RequestError)));
        let mut rest = Vec::new();
        d.done(0);
        d.done(1);
        d.done(2);
        while let Some((flow, metric)) = d.take() {
            rest.push((flow, metric));
            d.done(flow);
        }
        assert_eq!(rest.len(), 15 - 6);
        assert!(!d.may_go());
    }

    #[test]
    fn the_first_halt_is_kept() {
        let mut policy = after(&[("f1", "w1", graph(ErrorClass::Token))]);
        policy.record(
            Target {
                flow_id: "f2",
                waba: "w1",
            },
            Err(&CallError::Failed(GraphError::new(
                ErrorClass::Throttled,
                "late",
            ))),
        );
        assert_eq!(policy.halt(), Some(Halt::Token));
    }

    #[test]
    fn cell_transitions() {
        let good = next_cell(
            None,
            &CallOutcome::Answered(Some(point(at(30, 1), 5.0))),
            at(30, 5),
        );
        assert_eq!(good.status, CellStatus::Fresh);

        let throttled = failed(ErrorClass::Throttled);
        let stale = next_cell(Some(&good), &throttled, at(30, 6));
        assert_eq!(
            stale.status,
            CellStatus::Failed(FailureClass::Graph(ErrorClass::Throttled))
        );
        assert_eq!(stale.shown, good.shown, "last good value is kept");
        assert_eq!(stale.last_success, Some(at(30, 5)));

        let few = failed(ErrorClass::InsufficientData);
        let insufficient = next_cell(Some(&good), &few, at(30, 7));
        assert_eq!(insufficient.status, CellStatus::InsufficientData);
        assert_eq!(
            insufficient.shown, None,
            "no numbers invented under the threshold"
        );
        assert_eq!(insufficient.last_success, Some(at(30, 7)));

        let empty = next_cell(Some(&good), &CallOutcome::Answered(None), at(30, 8));
        assert_eq!(empty.shown, None);

        let refused = next_cell(
            Some(&good),
            &CallOutcome::Failed(CallError::Refused(Refusal::Budget)),
            at(30, 9),
        );
        assert_eq!(
            (refused.status, refused.last_success),
            (
                CellStatus::Failed(FailureClass::Refused(Refusal::Budget)),
                Some(at(30, 5))
            )
        );
        let skipped = next_cell(
            Some(&good),
            &CallOutcome::NotAttempted(SkipReason::PollHalted(Halt::Token)),
            at(30, 9),
        );
        assert_eq!(
            skipped.status,
            CellStatus::Failed(FailureClass::NotAttempted)
        );
        assert_eq!(skipped.shown, good.shown, "last good value is kept");
    }
}
