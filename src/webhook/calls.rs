//! Messenger Calling's `calls` webhooks, pure: one call update → a
//! [`CallEvent`], and the rules that turn the events of a call, in whatever
//! order and however often they come, into counts made exactly once per call
//! and event ([`CallRecord`], [`PageStats`]).
//!
//! Meta's calling FAQ: duplicates happen and ordering is not guaranteed (a
//! `terminate` can come before its `connect`). So a call's record keeps what
//! was seen and what was counted: `connect` counts a start; `terminate`
//! counts an end once the direction is known (from the `connect`, however
//! late it comes, or `unknown` when the call ages out without one); the
//! answer delay is observed once both `connect` and `accepted` are known.
//! Timestamps are Unix seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payload::cut;

/// Who placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    BusinessInitiated,
    UserInitiated,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::BusinessInitiated => "business_initiated",
            Direction::UserInitiated => "user_initiated",
        }
    }
}

/// The `direction` label of a call whose `connect` never came.
pub const UNKNOWN_DIRECTION: &str = "unknown";

/// One update of `entry[].calls[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallChange {
    pub call_id: String,
    pub timestamp: Option<i64>,
    pub event: CallEvent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    Connect {
        direction: Option<Direction>,
    },
    /// `ringing`, `accepted`, or another status (as `other`).
    Status {
        status: &'static str,
    },
    MediaUpdate {
        version: Option<i64>,
    },
    Terminate {
        /// `completed`, `failed` or `other`.
        status: &'static str,
        duration: Option<f64>,
    },
}

impl CallEvent {
    /// The `event` label of `webhook_events_total`.
    pub fn label(&self) -> &'static str {
        match self {
            CallEvent::Connect { .. } => "connect",
            CallEvent::Status { .. } => "call_status",
            CallEvent::MediaUpdate { .. } => "media_update",
            CallEvent::Terminate { .. } => "terminate",
        }
    }
}

/// Parses one call update; `Err` says what is missing.
pub fn parse(v: &Value) -> Result<CallChange, String> {
    let Value::Object(o) = v else {
        return Err("a call update is not an object".into());
    };
    let call_id = o
        .get("id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or("no call `id`")?;
    let timestamp = o.get("timestamp").and_then(seconds);
    let event = match o.get("event").and_then(Value::as_str) {
        Some("connect") => CallEvent::Connect {
            direction: match o.get("call_direction").and_then(Value::as_str) {
                Some(d) if d.eq_ignore_ascii_case("business_initiated") => {
                    Some(Direction::BusinessInitiated)
                }
                Some(d) if d.eq_ignore_ascii_case("user_initiated") => {
                    Some(Direction::UserInitiated)
                }
                _ => None,
            },
        },
        Some("call_status") => CallEvent::Status {
            status: match o.get("call_status").and_then(Value::as_str) {
                Some(s) if s.eq_ignore_ascii_case("ringing") => "ringing",
                Some(s) if s.eq_ignore_ascii_case("accepted") => "accepted",
                Some(_) => "other",
                None => return Err("call_status without `call_status`".into()),
            },
        },
        Some("media_update") => CallEvent::MediaUpdate {
            version: o
                .get("session")
                .and_then(|s| s.get("version"))
                .and_then(seconds),
        },
        Some("terminate") => CallEvent::Terminate {
            status: match o.get("status").and_then(Value::as_str) {
                Some(s) if s.eq_ignore_ascii_case("completed") => "completed",
                Some(s) if s.eq_ignore_ascii_case("failed") => "failed",
                _ => "other",
            },
            // Empty when the business never connected: "", null or absent.
            duration: o.get("duration").and_then(|d| match d {
                Value::Number(n) => n.as_f64().filter(|x| x.is_finite() && *x >= 0.0),
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0),
                _ => None,
            }),
        },
        Some(other) => return Err(format!("unknown call event `{}`", cut(other))),
        None => return Err("no `event`".into()),
    };
    Ok(CallChange {
        call_id: cut(call_id).to_owned(),
        timestamp,
        event,
    })
}

/// A whole number of seconds (or a numeric string), if finite.
fn seconds(v: &Value) -> Option<i64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (x.is_finite() && x.abs() < 1e15).then(|| x.floor() as i64)
}

/// What is known and counted of one call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub direction: Option<Direction>,
    pub connected_at: Option<i64>,
    pub accepted_at: Option<i64>,
    pub media_version: Option<i64>,
    pub terminated: Option<Terminated>,
    pub counted: Counted,
    /// When the last update of the call was received (Unix seconds): calls
    /// age out from it.
    pub last_seen: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Terminated {
    pub status: String,
    pub at: Option<i64>,
    pub duration: Option<f64>,
}

/// Which of a call's counts were made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counted {
    pub started: bool,
    pub ringing: bool,
    pub accepted: bool,
    pub other_status: bool,
    pub ended: bool,
    pub answer_delay: bool,
    pub aged_out: bool,
}

impl CallRecord {
    /// Connected, not terminated, not aged out.
    pub fn is_active(&self) -> bool {
        self.connected_at.is_some() && self.terminated.is_none() && !self.counted.aged_out
    }

    /// Whether nothing more can be counted for it (it may be forgotten).
    pub fn is_done(&self) -> bool {
        self.counted.ended || self.counted.aged_out
    }
}

/// Upper bounds of the duration histogram (seconds).
pub const DURATION_BUCKETS: [f64; 10] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];
/// Upper bounds of the answer-delay histogram (seconds).
pub const ANSWER_DELAY_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0];

/// A cumulative histogram with fixed bounds (those of its metric).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hist {
    /// Observations at or under each bound, in bound order (not cumulative).
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Hist {
    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets.resize(bounds.len(), 0);
        }
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    /// Cumulative counts per bound, as Prometheus wants them.
    pub fn cumulative(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        let mut total = 0;
        bounds
            .iter()
            .enumerate()
            .map(|(i, b)| {
                total += self.buckets.get(i).copied().unwrap_or(0);
                (*b, total)
            })
            .collect()
    }
}

/// The counts of one Page, made exactly once per call and event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageStats {
    pub started: BTreeMap<String, u64>,
    pub status: BTreeMap<String, u64>,
    /// By (direction, status).
    #[serde(with = "pairs")]
    pub ended: BTreeMap<(String, String), u64>,
    pub duration: BTreeMap<String, Hist>,
    pub answer_delay: Hist,
    pub media_updates: u64,
    pub aged_out: u64,
    /// From the call-metrics intake.
    pub quality: super::super::callmetrics::QualityStats,
}

/// A map keyed by pairs, stored as a list of entries (JSON object keys are
/// strings only).
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Map = BTreeMap<(String, String), u64>;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        map.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        Ok(Vec::<((String, String), u64)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// Applies one update of a call to its record and its Page's counts.
pub fn apply(
    record: &mut CallRecord,
    stats: &mut PageStats,
    change: &CallChange,
    received_at: i64,
) {
    record.last_seen = record.last_seen.max(received_at);
    let at = change.timestamp.unwrap_or(received_at);
    match &change.event {
        CallEvent::Connect { direction } => {
            if record.direction.is_none() {
                record.direction = *direction;
            }
            record.connected_at = Some(record.connected_at.map_or(at, |c| c.min(at)));
            if !record.counted.started {
                record.counted.started = true;
                let label = record.direction.map_or(UNKNOWN_DIRECTION, Direction::label);
                *stats.started.entry(label.to_owned()).or_default() += 1;
            }
        }
        CallEvent::Status { status } => {
            let counted = match *status {
                "ringing" => &mut record.counted.ringing,
                "accepted" => {
                    record.accepted_at = Some(record.accepted_at.map_or(at, |a| a.min(at)));
                    &mut record.counted.accepted
                }
                _ => &mut record.counted.other_status,
            };
            if !*counted {
                *counted = true;
                *stats.status.entry((*status).to_owned()).or_default() += 1;
            }
        }
        CallEvent::MediaUpdate { version } => {
            stats.media_updates += 1;
            if let Some(v) = version {
                record.media_version = Some(record.media_version.map_or(*v, |m| m.max(*v)));
            }
        }
        CallEvent::Terminate { status, duration } => {
            if record.terminated.is_none() {
                record.terminated = Some(Terminated {
                    status: (*status).to_owned(),
                    at: change.timestamp,
                    duration: *duration,
                });
            }
        }
    }
    settle(record, stats, false);
}

/// Counts what has become countable: the end once the direction is known
/// (or, when `aging`, without it), the answer delay once both times are.
fn settle(record: &mut CallRecord, stats: &mut PageStats, aging: bool) {
    if let (Some(c), Some(a)) = (record.connected_at, record.accepted_at) {
        if !record.counted.answer_delay {
            record.counted.answer_delay = true;
            stats
                .answer_delay
                .observe(&ANSWER_DELAY_BUCKETS, (a - c).max(0) as f64);
        }
    }
    if let Some(t) = &record.terminated {
        if !record.counted.ended && (record.direction.is_some() || record.counted.started || aging)
        {
            record.counted.ended = true;
            let direction = record.direction.map_or(UNKNOWN_DIRECTION, Direction::label);
            *stats
                .ended
                .entry((direction.to_owned(), t.status.clone()))
                .or_default() += 1;
            if let Some(d) = t.duration {
                stats
                    .duration
                    .entry(direction.to_owned())
                    .or_default()
                    .observe(&DURATION_BUCKETS, d);
            }
        }
    }
}

/// A call last seen before `cutoff`: one still active is aged out (counted),
/// one terminated without a `connect` is counted as ended with an unknown
/// direction. Returns whether anything changed.
pub fn age_out(record: &mut CallRecord, stats: &mut PageStats, cutoff: i64) -> bool {
    if record.last_seen >= cutoff || record.is_done() {
        return false;
    }
    if record.terminated.is_some() {
        settle(record, stats, true);
    } else {
        record.counted.aged_out = true;
        stats.aged_out += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(event: CallEvent, ts: i64) -> CallChange {
        CallChange {
            call_id: "c1".into(),
            timestamp: Some(ts),
            event,
        }
    }

    fn run(events: &[CallChange]) -> (CallRecord, PageStats) {
        let (mut r, mut s) = (CallRecord::default(), PageStats::default());
        for e in events {
            apply(&mut r, &mut s, e, 1000);
        }
        (r, s)
    }

    #[test]
    fn any_order_counts_each_event_once() {
        let connect = change(
            CallEvent::Connect {
                direction: Some(Direction::BusinessInitiated),
            },
            100,
        );
        let accepted = change(CallEvent::Status { status: "accepted" }, 104);
        let terminate = change(
            CallEvent::Terminate {
                status: "completed",
                duration: Some(120.0),
            },
            230,
        );
        let in_order = run(&[connect.clone(), accepted.clone(), terminate.clone()]);
        let reversed = run(&[terminate.clone(), accepted.clone(), connect.clone()]);
        let repeated = run(&[
            terminate.clone(),
            connect.clone(),
            terminate,
            accepted.clone(),
            connect,
            accepted,
        ]);
        for (r, s) in [&in_order, &reversed, &repeated] {
            assert_eq!(s.started["business_initiated"], 1);
            assert_eq!(s.status["accepted"], 1);
            assert_eq!(
                s.ended[&("business_initiated".to_owned(), "completed".to_owned())],
                1
            );
            assert_eq!(s.duration["business_initiated"].count, 1);
            assert_eq!(s.answer_delay.count, 1);
            assert_eq!(s.answer_delay.sum, 4.0);
            assert!(!r.is_active());
        }
    }

    #[test]
    fn a_call_never_terminated_ages_out_and_one_never_connected_ends_unknown() {
        let (mut r, mut s) = run(&[change(CallEvent::Connect { direction: None }, 100)]);
        assert!(r.is_active());
        assert!(!age_out(&mut r, &mut s, 1000));
        assert!(age_out(&mut r, &mut s, 1001));
        assert!(!r.is_active());
        assert_eq!(s.aged_out, 1);
        assert!(!age_out(&mut r, &mut s, 5000), "once");

        let (mut r, mut s) = run(&[change(
            CallEvent::Terminate {
                status: "failed",
                duration: None,
            },
            100,
        )]);
        assert!(s.ended.is_empty(), "waits for the connect");
        assert!(age_out(&mut r, &mut s, 1001));
        assert_eq!(s.ended[&("unknown".to_owned(), "failed".to_owned())], 1);
        assert!(
            s.duration.is_empty(),
            "no duration when the business never connected"
        );
    }

    #[test]
    fn page_stats_survive_json() {
        let (_, s) = run(&[
            change(
                CallEvent::Connect {
                    direction: Some(Direction::UserInitiated),
                },
                1,
            ),
            change(
                CallEvent::Terminate {
                    status: "failed",
                    duration: Some(3.0),
                },
                9,
            ),
        ]);
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(
            serde_json::from_str::<PageStats>(&json).expect("reads back"),
            s
        );
    }

    #[test]
    fn parses_each_event_and_refuses_what_is_missing() {
        let v = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        let c = parse(&v(r#"{"id":"c","event":"connect","timestamp":1671644824,"call_direction":"user_initiated","to":"1","from":"2"}"#)).expect("connect");
        assert_eq!(
            c.event,
            CallEvent::Connect {
                direction: Some(Direction::UserInitiated)
            }
        );
        let t = parse(&v(
            r#"{"id":"c","event":"terminate","timestamp":1,"status":"Completed","duration":""}"#,
        ))
        .expect("terminate");
        assert_eq!(
            t.event,
            CallEvent::Terminate {
                status: "completed",
                duration: None
            }
        );
        let t = parse(&v(
            r#"{"id":"c","event":"terminate","status":"FAILED","duration":120}"#,
        ))
        .expect("terminate");
        assert_eq!(
            t.event,
            CallEvent::Terminate {
                status: "failed",
                duration: Some(120.0)
            }
        );
        let m = parse(&v(
            r#"{"id":"c","event":"media_update","session":{"version":3}}"#,
        ))
        .expect("media");
        assert_eq!(m.event, CallEvent::MediaUpdate { version: Some(3) });
        assert!(parse(&v(r#"{"event":"connect"}"#)).is_err());
        assert!(parse(&v(r#"{"id":"c","event":"call_status"}"#)).is_err());
        assert!(parse(&v(r#"{"id":"c","event":"dance"}"#)).is_err());
    }
}
