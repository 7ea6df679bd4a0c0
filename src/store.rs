//! Durable storage of what the webhooks said, behind the small [`Store`]
//! interface: write a received payload with what it changes in one
//! transaction, load the state in force at start-up, prune what is past the
//! retention. [`sqlite::Sqlite`] is the embedded implementation (one file,
//! WAL mode, every commit synced to disk before the webhook's 200 goes
//! back); a shared database for several replicas is another implementation
//! of the same trait.
//!
//! The calls block (file I/O and fsync): callers run them on the blocking
//! pool.

pub mod postgres;
pub mod sqlite;

use std::fmt;

use crate::webhook::state::{Plan, State, Touched};

/// A storage failure, with what was being done. Webhook answers become 500
/// (Meta sends the payload again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A webhook body as received, signature checked.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    /// Unix seconds.
    pub received_at: i64,
    pub body: &'a [u8],
    /// Whether it parsed as a webhook envelope.
    pub understood: bool,
}

/// A call-metrics item waiting to be relayed to Graph.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub id: i64,
    pub page_id: String,
    pub call_id: String,
    /// The JSON body to post, as checked and rewritten at intake.
    pub body: String,
    /// `call_ended_time`: nothing is sent 24 hours after it.
    pub ended_at: i64,
    pub attempts: u32,
}

/// What one attempt at an item came to.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxUpdate {
    pub state: crate::callmetrics::OutboxState,
    pub attempts: u32,
    pub next_at: i64,
    pub result: String,
}

/// The outbox at a glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxSummary {
    pub pending: u64,
    pub done: u64,
    pub failed: u64,
    /// Received time of the oldest pending item.
    pub oldest_pending: Option<i64>,
}

impl OutboxSummary {
    /// From rows of (state, items, oldest received time) per state.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, i64, Option<i64>)>) -> OutboxSummary {
        let mut summary = OutboxSummary::default();
        for (state, n, oldest) in rows {
            let n = n.max(0) as u64;
            match state.as_str() {
                "pending" => {
                    summary.pending = n;
                    summary.oldest_pending = oldest;
                }
                "done" => summary.done = n,
                _ => summary.failed += n,
            }
        }
        summary
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub raw_events: u64,
    pub seen_keys: u64,
}

/// Durable webhook state.
pub trait Store: Send + Sync + fmt::Debug {
    /// Writes `raw` and `plan` in one transaction, durable when this returns
    /// `Ok`. Alerts and statuses are replaced only by an event at least as
    /// new as the stored one, whatever the plan says (another writer may have
    /// been first).
    fn commit(&self, raw: Option<Raw<'_>>, plan: &Plan) -> Result<(), StoreError>;

    /// The state in force (alerts, statuses, counters, the duplicate memory).
    fn load(&self) -> Result<State, StoreError>;

    /// Removes raw payloads and duplicate keys received before `cutoff` (Unix
    /// seconds).
    fn prune(&self, cutoff: i64) -> Result<Pruned, StoreError>;

    /// Pending call-metrics items due at `now`, oldest first, at most `limit`.
    fn outbox_due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;

    /// Records the outcome of an attempt at an item.
    fn outbox_update(&self, id: i64, update: &OutboxUpdate) -> Result<(), StoreError>;

    /// Items per state, and when the oldest pending one was received.
    fn outbox_summary(&self) -> Result<OutboxSummary, StoreError>;

    /// How many raw payloads are kept (for tests and the landing page).
    fn raw_count(&self) -> Result<u64, StoreError>;

    /// Where the data lives, for logs (never a password).
    fn describe(&self) -> String;

    /// Whether other processes write the same data: then the receiver plans
    /// against the store's state ([`Store::commit_planned`]) rather than its
    /// own, and reloads its state from the store now and then.
    fn shared(&self) -> bool {
        false
    }

    /// For a shared store: while holding a lock every writer takes, reads the
    /// rows `touched` names, lets `plan` decide against them, and writes the
    /// plan (with `raw`) in the same transaction. Returns the plan written.
    fn commit_planned(
        &self,
        raw: Option<Raw<'_>>,
        touched: &Touched,
        plan: &mut (dyn FnMut(&State) -> Plan + Send),
    ) -> Result<Plan, StoreError> {
        let _ = (raw, touched, plan);
        Err(StoreError(format!(
            "{} is not a shared store",
            self.describe()
        )))
    }
}
