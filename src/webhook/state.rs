//! What the webhooks have said, as plain data, and the pure rules that apply
//! a new payload to it. [`State::plan`] decides, without changing anything,
//! what a payload changes (a [`Plan`]); the store writes the plan durably;
//! then [`State::apply`] makes it the state in memory. A plan the store could
//! not write is dropped, and the state is as if the payload never came (Meta
//! sends it again).
//!
//! The rules, from Meta's delivery (at least once, in any order):
//! - a change seen before (same WABA, time and content: [`Change::key`]) is a
//!   duplicate: counted, not applied;
//! - per flow and alert (and per flow for its status) the event in force is
//!   the one with the latest `entry.time` (a payload without one takes the
//!   time it was received); an older one arriving later is counted as out of
//!   order and does not replace it; one of the same time does.

use std::collections::{BTreeMap, HashMap};

use super::calls::{self, CallRecord, PageStats};
use super::payload::{Alert, AlertKind, Change, Detail, Event, Payload};

/// The alert in force for one flow and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub active: bool,
    pub threshold: Option<f64>,
    /// `entry.time` (Unix seconds) of the event.
    pub time: i64,
    pub detail: Detail,
}

/// A flow's status as the last status change in force said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    pub status: String,
    pub time: i64,
}

/// Everything the webhooks have said that is still in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub alerts: BTreeMap<(String, AlertKind), AlertRecord>,
    pub statuses: BTreeMap<String, StatusRecord>,
    /// Status changes applied, by (flow, from, to); `from` is `NONE` for a
    /// flow's creation.
    pub status_changes: BTreeMap<(String, String, String), u64>,
    pub expiry_warnings: BTreeMap<String, u64>,
    /// When a payload for each WABA last came (Unix seconds, as received).
    pub last_received: BTreeMap<String, i64>,
    /// Keys of the changes applied, with when they came: the duplicate memory.
    pub seen: HashMap<String, i64>,
    /// Messenger calls by (Page, call id), until done and past the retention.
    pub calls: BTreeMap<(String, String), CallRecord>,
    /// Counts per Page (calls and call quality).
    pub pages: BTreeMap<String, PageStats>,
    /// Call-metrics intakes received, by (Page, call id): each is recorded
    /// and relayed once.
    pub intakes: std::collections::BTreeSet<(String, String)>,
}

/// What one payload changes, decided by [`State::plan`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub received_at: i64,
    /// Keys of the changes applied (none of them seen before).
    pub seen: Vec<String>,
    /// New alerts in force (the last one for a flow and kind wins).
    pub alerts: Vec<(String, AlertKind, AlertRecord)>,
    /// New statuses in force.
    pub statuses: Vec<(String, StatusRecord)>,
    /// Status changes to count: (flow, from, to).
    pub status_changes: Vec<(String, String, String)>,
    /// Expiry warnings to count, by flow.
    pub expiry_warnings: Vec<String>,
    /// WABAs this payload was for.
    pub wabas: Vec<String>,
    /// Calls as they are after this plan (new values of the ones it touches).
    pub calls: BTreeMap<(String, String), CallRecord>,
    /// Pages' counts after this plan (new values of the ones it touches).
    pub pages: BTreeMap<String, PageStats>,
    /// A call-metrics intake to record and relay.
    pub intake: Option<Intake>,
    pub tally: Tally,
}

/// An accepted call-metrics post.
#[derive(Debug, Clone, PartialEq)]
pub struct Intake {
    pub page_id: String,
    pub metrics: crate::callmetrics::CallMetrics,
}

/// What the self-metrics count of one payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Changes read (duplicates excepted): (field, event label).
    pub events: Vec<(String, String)>,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Changes of `flows` that could not be understood, with why (for the log).
    pub malformed: Vec<String>,
    /// Event names not known (for the log).
    pub unknown: Vec<String>,
}

/// The rows a payload (or an intake) can touch: what a shared store reads,
/// under its lock, to plan against the state every replica sees.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Touched {
    /// Duplicate keys of its changes.
    pub keys: Vec<String>,
    /// Flows whose alerts or status it may change.
    pub flows: Vec<String>,
    /// (Page, call id) of its call updates or intake.
    pub calls: Vec<(String, String)>,
    pub pages: Vec<String>,
}

impl Touched {
    /// What `payload` can touch.
    pub fn of(payload: &Payload) -> Touched {
        let mut t = Touched::default();
        for entry in &payload.entries {
            for change in &entry.changes {
                t.keys.push(change.key.clone());
                match &change.event {
                    Event::Alert(a) => t.flows.push(a.flow_id.clone()),
                    Event::StatusChange { flow_id, .. } => t.flows.push(flow_id.clone()),
                    Event::Call(c) => {
                        t.calls.push((entry.id.clone(), c.call_id.clone()));
                        t.pages.push(entry.id.clone());
                    }
                    _ => {}
                }
            }
        }
        t.flows.sort();
        t.flows.dedup();
        t.calls.sort();
        t.calls.dedup();
        t.pages.sort();
        t.pages.dedup();
        t
    }

    /// What an intake for this call can touch.
    pub fn intake(page_id: &str, call_id: &str) -> Touched {
        Touched {
            calls: vec![(page_id.to_owned(), call_id.to_owned())],
            pages: vec![page_id.to_owned()],
            ..Touched::default()
        }
    }
}

/// The `from` label of a flow's creation.
pub const CREATED: &str = "NONE";

/// The object of WhatsApp Business Account webhooks.
pub const WABA_OBJECT: &str = "whatsapp_business_account";

impl Plan {
    /// Whether writing it changes anything but the raw log.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
            && self.wabas.is_empty()
            && self.calls.is_empty()
            && self.pages.is_empty()
            && self.intake.is_none()
    }
}

impl State {
    /// Decides what `payload`, received at `received_at` (Unix seconds),
    /// changes. Pure: `self` is not touched.
    pub fn plan(&self, payload: &Payload, received_at: i64) -> Plan {
        let mut plan = Plan {
            received_at,
            ..Plan::default()
        };
        for entry in &payload.entries {
            if payload.object == WABA_OBJECT
                && !entry.id.is_empty()
                && !plan.wabas.contains(&entry.id)
            {
                plan.wabas.push(entry.id.clone());
            }
            for (field, n) in &entry.other {
                for _ in 0..*n {
                    plan.tally
                        .events
                        .push((field.clone(), "not_processed".into()));
                }
            }
            let time = entry.time.unwrap_or(received_at);
            for change in &entry.changes {
                self.plan_change(&mut plan, change, time, &entry.id);
            }
        }
        plan
    }

    /// `owner`: the entry's id (a WABA, or for `calls` a Page).
    fn plan_change(&self, plan: &mut Plan, change: &Change, time: i64, owner: &str) {
        if let Event::NotProcessed = change.event {
            plan.tally
                .events
                .push((change.field.clone(), change.event.label().to_owned()));
            return;
        }
        if self.seen.contains_key(&change.key) || plan.seen.contains(&change.key) {
            plan.tally.duplicates += 1;
            return;
        }
        plan.seen.push(change.key.clone());
        plan.tally
            .events
            .push((change.field.clone(), change.event.label().to_owned()));
        match &change.event {
            Event::Alert(alert) => self.plan_alert(plan, alert, time),
            Event::StatusChange { flow_id, old, new } => {
                plan.status_changes.push((
                    flow_id.clone(),
                    old.clone().unwrap_or_else(|| CREATED.to_owned()),
                    new.clone(),
                ));
                let in_force = plan
                    .statuses
                    .iter()
                    .rev()
                    .find(|(f, _)| f == flow_id)
                    .map(|(_, s)| s.time)
                    .or_else(|| self.statuses.get(flow_id).map(|s| s.time));
                if in_force.is_some_and(|t| t > time) {
                    plan.tally.out_of_order += 1;
                } else {
                    plan.statuses.push((
                        flow_id.clone(),
                        StatusRecord {
                            status: new.clone(),
                            time,
                        },
                    ));
                }
            }
            Event::ExpiryWarning { flow_id } => plan.expiry_warnings.push(flow_id.clone()),
            Event::Unknown { name } => plan.tally.unknown.push(name.clone()),
            Event::Malformed { name, why } => {
                plan.tally.malformed.push(format!("{name}: {why}"));
            }
            Event::Call(call) => {
                // Calls are keyed by the entry's id, the Page.
                let page = owner.to_owned();
                let key = (page.clone(), call.call_id.clone());
                let mut record = plan
                    .calls
                    .get(&key)
                    .or_else(|| self.calls.get(&key))
                    .cloned()
                    .unwrap_or_default();
                let mut stats = self.page_stats(plan, &page);
                calls::apply(&mut record, &mut stats, call, plan.received_at);
                plan.calls.insert(key, record);
                plan.pages.insert(page, stats);
            }
            Event::NotProcessed => {}
        }
    }

    /// The Page's counts as the plan has them so far.
    fn page_stats(&self, plan: &Plan, page: &str) -> PageStats {
        plan.pages
            .get(page)
            .or_else(|| self.pages.get(page))
            .cloned()
            .unwrap_or_default()
    }

    /// Ages out the calls last seen before `cutoff` (see [`calls::age_out`]).
    pub fn plan_aging(&self, now: i64, cutoff: i64) -> Plan {
        let mut plan = Plan {
            received_at: now,
            ..Plan::default()
        };
        for ((page, call), record) in &self.calls {
            if record.last_seen >= cutoff || record.is_done() {
                continue;
            }
            let mut record = record.clone();
            let mut stats = self.page_stats(&plan, page);
            if calls::age_out(&mut record, &mut stats, cutoff) {
                plan.calls.insert((page.clone(), call.clone()), record);
                plan.pages.insert(page.clone(), stats);
            }
        }
        plan
    }

    /// Plans an accepted call-metrics intake: its quality figures counted
    /// (with the first-audio delay when the call's `connect` was seen).
    pub fn plan_intake(
        &self,
        page_id: &str,
        metrics: crate::callmetrics::CallMetrics,
        now: i64,
    ) -> Plan {
        let mut plan = Plan {
            received_at: now,
            ..Plan::default()
        };
        let connected_at = self
            .calls
            .get(&(page_id.to_owned(), metrics.call_id.clone()))
            .and_then(|r| r.connected_at);
        let mut stats = self.page_stats(&plan, page_id);
        stats.quality.record(&metrics, connected_at);
        plan.pages.insert(page_id.to_owned(), stats);
        plan.intake = Some(Intake {
            page_id: page_id.to_owned(),
            metrics,
        });
        plan
    }

    fn plan_alert(&self, plan: &mut Plan, alert: &Alert, time: i64) {
        let in_force = plan
            .alerts
            .iter()
            .rev()
            .find(|(f, k, _)| *f == alert.flow_id && *k == alert.kind)
            .map(|(_, _, r)| r.time)
            .or_else(|| {
                self.alerts
                    .get(&(alert.flow_id.clone(), alert.kind))
                    .map(|r| r.time)
            });
        if in_force.is_some_and(|t| t > time) {
            plan.tally.out_of_order += 1;
            return;
        }
        plan.alerts.push((
            alert.flow_id.clone(),
            alert.kind,
            AlertRecord {
                active: alert.active,
                threshold: alert.threshold,
                time,
                detail: alert.detail.clone(),
            },
        ));
    }

    /// Makes a plan (written durably by then) the state in force.
    pub fn apply(&mut self, plan: &Plan) {
        for key in &plan.seen {
            self.seen.insert(key.clone(), plan.received_at);
        }
        for (flow, kind, record) in &plan.alerts {
            self.alerts.insert((flow.clone(), *kind), record.clone());
        }
        for (flow, record) in &plan.statuses {
            self.statuses.insert(flow.clone(), record.clone());
        }
        for change in &plan.status_changes {
            *self.status_changes.entry(change.clone()).or_default() += 1;
        }
        for flow in &plan.expiry_warnings {
            *self.expiry_warnings.entry(flow.clone()).or_default() += 1;
        }
        for waba in &plan.wabas {
            self.last_received.insert(waba.clone(), plan.received_at);
        }
        for (key, record) in &plan.calls {
            self.calls.insert(key.clone(), record.clone());
        }
        for (page, stats) in &plan.pages {
            self.pages.insert(page.clone(), stats.clone());
        }
        if let Some(intake) = &plan.intake {
            self.intakes
                .insert((intake.page_id.clone(), intake.metrics.call_id.clone()));
        }
    }

    /// Forgets calls that are done and were last seen before `cutoff`.
    pub fn forget_calls_before(&mut self, cutoff: i64) {
        self.calls
            .retain(|_, r| !(r.is_done() && r.last_seen < cutoff));
    }

    /// Forgets the keys of changes received before `cutoff` (the retention).
    pub fn forget_seen_before(&mut self, cutoff: i64) -> usize {
        let before = self.seen.len();
        self.seen.retain(|_, at| *at >= cutoff);
        before - self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::parse;
    use super::*;

    fn body(entries: &str) -> Vec<u8> {
        format!(r#"{{"object":"whatsapp_business_account","entry":[{entries}]}}"#).into_bytes()
    }

    fn entry(waba: &str, time: i64, values: &[&str]) -> String {
        let changes: Vec<String> = values
            .iter()
            .map(|v| format!(r#"{{"field":"flows","value":{v}}}"#))
            .collect();
        format!(
            r#"{{"id":"{waba}","time":{time},"changes":[{}]}}"#,
            changes.join(",")
        )
    }

    const ACTIVATED: &str = r#"{"event":"ENDPOINT_AVAILABILITY","flow_id":"1","alert_state":"ACTIVATED","availability":75,"threshold":90}"#;
    const RECOVERED: &str = r#"{"event":"ENDPOINT_AVAILABILITY","flow_id":"1","alert_state":"DEACTIVATED","availability":100,"threshold":90}"#;

    fn ingest(state: &mut State, body: &[u8], at: i64) -> Plan {
        let payload = parse(body).expect("parses");
        let plan = state.plan(&payload, at);
        state.apply(&plan);
        plan
    }

    #[test]
    fn newer_replaces_older_does_not() {
        let mut s = State::default();
        ingest(&mut s, &body(&entry("w", 200, &[RECOVERED])), 1000);
        let plan = ingest(&mut s, &body(&entry("w", 100, &[ACTIVATED])), 1001);
        assert_eq!(plan.tally.out_of_order, 1);
        let r = &s.alerts[&("1".to_owned(), AlertKind::EndpointAvailability)];
        assert!(!r.active);
        assert_eq!(r.time, 200);
        ingest(&mut s, &body(&entry("w", 300, &[ACTIVATED])), 1002);
        assert!(s.alerts[&("1".to_owned(), AlertKind::EndpointAvailability)].active);
    }

    #[test]
    fn duplicates_apply_once_even_within_a_batch() {
        let mut s = State::default();
        let one = entry(
            "w",
            100,
            &[r#"{"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":"9","warning":"x"}"#],
        );
        let plan = ingest(&mut s, &body(&format!("{one},{one}")), 1000);
        assert_eq!(plan.tally.duplicates, 1);
        let plan = ingest(&mut s, &body(&one), 1001);
        assert_eq!(plan.tally.duplicates, 1);
        assert_eq!(s.expiry_warnings["9"], 1);
        // The same change at another time is another event.
        ingest(
            &mut s,
            &body(&entry(
                "w",
                101,
                &[r#"{"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":"9","warning":"x"}"#],
            )),
            1002,
        );
        assert_eq!(s.expiry_warnings["9"], 2);
    }

    #[test]
    fn key_order_and_spacing_do_not_hide_a_duplicate() {
        let mut s = State::default();
        ingest(&mut s, &body(&entry("w", 5, &[ACTIVATED])), 10);
        let reordered = r#"{ "threshold":90, "flow_id":"1","event":"ENDPOINT_AVAILABILITY","availability":75,"alert_state":"ACTIVATED"}"#;
        let plan = ingest(&mut s, &body(&entry("w", 5, &[reordered])), 11);
        assert_eq!(plan.tally.duplicates, 1);
    }

    #[test]
    fn status_changes_count_every_one_and_keep_the_newest() {
        let mut s = State::default();
        let change = |old: &str, new: &str| {
            format!(
                r#"{{"event":"FLOW_STATUS_CHANGE","flow_id":"7","old_status":"{old}","new_status":"{new}"}}"#
            )
        };
        let created = r#"{"event":"FLOW_STATUS_CHANGE","flow_id":"7","new_status":"DRAFT"}"#;
        ingest(&mut s, &body(&entry("w", 10, &[created])), 100);
        ingest(
            &mut s,
            &body(&entry("w", 30, &[&change("PUBLISHED", "THROTTLED")])),
            101,
        );
        let late = ingest(
            &mut s,
            &body(&entry("w", 20, &[&change("DRAFT", "PUBLISHED")])),
            102,
        );
        assert_eq!(late.tally.out_of_order, 1);
        assert_eq!(s.statuses["7"].status, "THROTTLED");
        assert_eq!(s.status_changes.len(), 3);
        assert_eq!(
            s.status_changes[&("7".into(), CREATED.into(), "DRAFT".into())],
            1
        );
        assert_eq!(s.last_received["w"], 102);
    }

    #[test]
    fn other_fields_are_counted_not_applied_and_forgetting_is_bounded() {
        let mut s = State::default();
        let b = br#"{"object":"whatsapp_business_account","entry":[{"id":"w","time":1,"changes":[{"field":"messages","value":{"x":1}},{"field":"flows","value":{"event":"SOMETHING_NEW","flow_id":"1"}}]}]}"#;
        let plan = ingest(&mut s, b, 50);
        assert_eq!(
            plan.tally.events,
            vec![
                ("messages".to_owned(), "not_processed".to_owned()),
                ("flows".to_owned(), "unknown".to_owned())
            ]
        );
        assert_eq!(s.seen.len(), 1);
        assert_eq!(s.forget_seen_before(51), 1);
        assert!(s.seen.is_empty());
    }
}
