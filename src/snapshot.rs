//! The exporter's state as plain data: the flows it knows, and for each
//! granularity and (flow, metric) the value it shows and how that value's last
//! poll went. Polls produce the next snapshot; `exposition` renders one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::StaticFlow;
use crate::error::{CallError, ErrorClass};
use crate::model::{
    DataPoint, Flow, FlowSource, FlowStatus, Granularity, Listing, MetricKind, Truncation,
};
use crate::ratelimit::Refusal;

/// Why a call got no answer (a cell's last poll, a WABA's last listing): the
/// `class` label of `flow_failing_metrics`, `flow_errors_total` and
/// `discovery_failing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// The call was made and failed this way.
    Graph(ErrorClass),
    /// The rate-limit governor refused the call: it was not sent.
    Refused(Refusal),
    /// The poll did not make the call (it had stopped, or gave up on the
    /// flow or its WABA); the reason is in the log.
    NotAttempted,
}

impl FailureClass {
    pub fn label(self) -> &'static str {
        match self {
            FailureClass::Graph(class) => class.label(),
            FailureClass::Refused(refusal) => refusal.label(),
            FailureClass::NotAttempted => "not_attempted",
        }
    }
}

impl From<&CallError> for FailureClass {
    fn from(e: &CallError) -> FailureClass {
        match e {
            CallError::Failed(e) => FailureClass::Graph(e.class),
            CallError::Refused(r) => FailureClass::Refused(*r),
        }
    }
}

/// How the last poll of one (flow, metric, granularity) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellStatus {
    /// Graph answered and a settled period is shown.
    Fresh,
    /// Graph answered, but with no period that has ended and settled.
    NoSettledPeriod,
    /// Graph answered 139006: fewer than 250 requests.
    InsufficientData,
    /// No answer; the last good value (if any) is still shown, stale.
    Failed(FailureClass),
}

/// One (flow, metric) of one granularity.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub shown: Option<DataPoint>,
    pub status: CellStatus,
    /// When Graph last answered this cell definitively (data or 139006).
    pub last_success: Option<DateTime<Utc>>,
}

impl Cell {
    /// The value shown comes from an earlier poll because the last one failed.
    pub fn is_stale(&self) -> bool {
        matches!(self.status, CellStatus::Failed(_)) && self.shown.is_some()
    }
}

pub type Cells = BTreeMap<(String, MetricKind), Cell>;

/// What discovery last learned about one WABA.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WabaState {
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<FailureClass>,
    /// The last successful listing was cut short (its flows are kept).
    pub truncated: Option<Truncation>,
    /// Entries of the last successful listing that were not flows.
    pub skipped_entries: usize,
}

/// Everything the exporter shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every flow known, discovered or configured, by id.
    pub flows: BTreeMap<String, Flow>,
    pub wabas: BTreeMap<String, WabaState>,
    pub cells: BTreeMap<Granularity, Cells>,
    /// When the last poll of each granularity finished.
    pub polled_at: BTreeMap<Granularity, DateTime<Utc>>,
    /// Failed calls by flow and class since start (or since the flow reappeared).
    pub errors_total: BTreeMap<(String, FailureClass), u64>,
    /// Flow statuses the webhooks put in force, with the event's time. A
    /// status newer than the flow's last listing wins over the listed one;
    /// a listing newer than it wins back (discovery reconciles).
    pub pushed_statuses: BTreeMap<String, (FlowStatus, DateTime<Utc>)>,
}

impl Snapshot {
    /// The flows whose metrics are polled, in id order.
    pub fn polled_flows(&self) -> Vec<Flow> {
        self.flows
            .values()
            .filter(|f| f.is_polled())
            .cloned()
            .collect()
    }

    /// Replaces the flow set after a discovery. A WABA whose listing failed keeps
    /// the flows it had; static flows are always present. State of flows that
    /// vanished is dropped, so their series disappear.
    pub fn apply_discovery(
        &mut self,
        statics: &[StaticFlow],
        results: Vec<(String, Result<Listing, CallError>)>,
        now: DateTime<Utc>,
    ) {
        let mut flows: BTreeMap<String, Flow> = BTreeMap::new();
        // WABAs no longer configured lose their state (and series).
        self.wabas
            .retain(|id, _| results.iter().any(|(waba, _)| waba == id));
        for (waba, result) in results {
            let state = self.wabas.entry(waba.clone()).or_default();
            match result {
                Ok(listing) => {
                    state.last_success = Some(now);
                    state.last_error = None;
                    state.truncated = listing.truncated;
                    state.skipped_entries = listing.skipped.len();
                    for f in listing.flows {
                        flows.insert(f.id.clone(), f);
                    }
                }
                Err(e) => {
                    state.last_error = Some(FailureClass::from(&e));
                    for f in self.flows.values().filter(|f| f.waba_id == waba) {
                        flows.insert(f.id.clone(), f.clone());
                    }
                }
            }
        }
        for s in statics {
            let flow = flows.entry(s.id.clone()).or_insert_with(|| Flow {
                id: s.id.clone(),
                name: String::new(),
                waba_id: String::new(),
                status: FlowStatus::Unknown,
                data_api_version: String::new(),
                can_send_message: String::new(),
                source: FlowSource::Static,
            });
            flow.source = FlowSource::Static;
            if let Some(name) = &s.name {
                flow.name = name.clone();
            }
        }
        self.flows = flows;
        let pushed: Vec<(String, FlowStatus, DateTime<Utc>)> = self
            .pushed_statuses
            .iter()
            .map(|(id, (status, at))| (id.clone(), status.clone(), *at))
            .collect();
        for (id, status, at) in pushed {
            self.show_pushed_status(&id, status, at);
        }
        self.prune();
    }

    /// A flow status a webhook put in force at `at`. It shows at once for a
    /// known flow unless the flow's last listing is newer. Returns whether a
    /// flow's shown status changed.
    pub fn apply_pushed_status(
        &mut self,
        flow_id: &str,
        status: FlowStatus,
        at: DateTime<Utc>,
    ) -> bool {
        match self.pushed_statuses.get(flow_id) {
            Some((_, known)) if *known > at => return false,
            _ => {}
        }
        self.pushed_statuses
            .insert(flow_id.to_owned(), (status.clone(), at));
        let changed = self.show_pushed_status(flow_id, status, at);
        if changed {
            self.prune();
        }
        changed
    }

    fn show_pushed_status(&mut self, flow_id: &str, status: FlowStatus, at: DateTime<Utc>) -> bool {
        let Some(flow) = self.flows.get_mut(flow_id) else {
            return false;
        };
        let listed = self.wabas.get(&flow.waba_id).and_then(|w| w.last_success);
        if listed.is_some_and(|listed| listed > at) || flow.status == status {
            return false;
        }
        flow.status = status;
        true
    }

    /// Drops state of flows that are no longer known or no longer polled.
    fn prune(&mut self) {
        let flows = &self.flows;
        let polled = |id: &String| flows.get(id).is_some_and(Flow::is_polled);
        for cells in self.cells.values_mut() {
            cells.retain(|(id, _), _| polled(id));
        }
        self.errors_total
            .retain(|(id, _), _| flows.contains_key(id));
    }

    /// Drops the cells of granularities that are not polled any more (a reload
    /// disabled them), so their series go and do not come back stale.
    pub fn retain_granularities(&mut self, polled: &[Granularity]) {
        self.cells.retain(|g, _| polled.contains(g));
        self.polled_at.retain(|g, _| polled.contains(g));
    }

    /// Swaps in the cells of a finished poll of one granularity, whole.
    pub fn apply_poll(&mut self, granularity: Granularity, cells: Cells, now: DateTime<Utc>) {
        for ((flow_id, _), cell) in &cells {
            if let CellStatus::Failed(class) = cell.status {
                *self
                    .errors_total
                    .entry((flow_id.clone(), class))
                    .or_default() += 1;
            }
        }
        self.cells.insert(granularity, cells);
        self.polled_at.insert(granularity, now);
        self.prune();
    }
}
