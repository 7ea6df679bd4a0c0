//! A signed webhook body → domain events, pure. The envelope is
//! `{"object": ..., "entry": [{"id", "time", "changes": [{"field", "value"}]}]}`;
//! every entry and every change is read. Changes of the `flows` field become
//! [`Event`]s; other fields (`messages`, Messenger's `calls`, ...) are only
//! counted. Nothing here fails on a change it does not understand: it becomes
//! [`Event::Unknown`] or [`Event::Malformed`], so that the rest of the batch
//! still applies.
//!
//! Numbers are read as floats whether Meta sends `14` or `14.28` (its pages
//! document integers and show floats). Thresholds and values are converted
//! to base units here: percentages to ratios, milliseconds to seconds. Text
//! that becomes a label value is cut to [`MAX_LABEL_LEN`] bytes, and an
//! event's error types are bounded ([`MAX_ERROR_TYPES`], the rest summed into
//! `other`).

use std::fmt;

use serde_json::Value;

/// Longest label value taken from a payload (flow ids, error types, statuses).
pub const MAX_LABEL_LEN: usize = 64;
/// Error types kept per event; the rest are summed into `other`.
pub const MAX_ERROR_TYPES: usize = 20;

/// Why a body is not a webhook envelope at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError(pub String);

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One webhook body.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub object: String,
    pub entries: Vec<Entry>,
}

/// One `entry`: a WABA (or, for Messenger, a Page) and its changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    /// `entry.time`, Unix seconds; in every example Meta gives, not in its
    /// field table.
    pub time: Option<i64>,
    pub changes: Vec<Change>,
    /// Updates of fields this exporter does not process that came outside
    /// `changes` (Messenger's `calls`, `messaging`): (field, how many).
    pub other: Vec<(String, usize)>,
}

/// One `change` of an entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The field, cut and checked to be a label value (see [`field_label`]).
    pub field: String,
    /// Identifies the change with its WABA and time, for duplicate detection:
    /// the SHA-256 of the WABA id, the time and the change's JSON in a
    /// canonical form (keys sorted), in hex.
    pub key: String,
    pub event: Event,
}

/// The event a `flows` change carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Alert(Alert),
    StatusChange {
        flow_id: String,
        /// `None` when the flow was created.
        old: Option<String>,
        new: String,
    },
    ExpiryWarning {
        flow_id: String,
    },
    /// An event name this exporter does not know (kept raw, counted).
    Unknown {
        name: String,
    },
    /// A known event without what it needs (say, no `flow_id`).
    Malformed {
        name: String,
        why: String,
    },
    /// A Messenger `calls` update (object `page`).
    Call(super::calls::CallChange),
    /// A change of a field other than `flows`: acknowledged and counted.
    NotProcessed,
}

impl Event {
    /// The `event` label of `webhook_events_total`.
    pub fn label(&self) -> &str {
        match self {
            Event::Alert(a) => a.kind.event_name(),
            Event::StatusChange { .. } => "FLOW_STATUS_CHANGE",
            Event::ExpiryWarning { .. } => "FLOW_VERSION_EXPIRY_WARNING",
            Event::Unknown { .. } => "unknown",
            Event::Malformed { .. } => "malformed",
            Event::Call(c) => c.event.label(),
            Event::NotProcessed => "not_processed",
        }
    }
}

/// The four threshold alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    EndpointErrorRate,
    EndpointLatency,
    EndpointAvailability,
    ClientErrorRate,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [
        AlertKind::EndpointErrorRate,
        AlertKind::EndpointLatency,
        AlertKind::EndpointAvailability,
        AlertKind::ClientErrorRate,
    ];

    pub fn event_name(self) -> &'static str {
        match self {
            AlertKind::EndpointErrorRate => "ENDPOINT_ERROR_RATE",
            AlertKind::EndpointLatency => "ENDPOINT_LATENCY",
            AlertKind::EndpointAvailability => "ENDPOINT_AVAILABILITY",
            AlertKind::ClientErrorRate => "CLIENT_ERROR_RATE",
        }
    }

    /// The `alert` label: the event name in lower case.
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::EndpointErrorRate => "endpoint_error_rate",
            AlertKind::EndpointLatency => "endpoint_latency",
            AlertKind::EndpointAvailability => "endpoint_availability",
            AlertKind::ClientErrorRate => "client_error_rate",
        }
    }

    pub fn from_label(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.label() == s)
    }

    fn from_event(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.event_name() == s)
    }
}

/// A threshold alert, in base units.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub flow_id: String,
    pub kind: AlertKind,
    /// `alert_state` is `ACTIVATED`.
    pub active: bool,
    /// Ratio (error rates, availability) or seconds (latency).
    pub threshold: Option<f64>,
    pub detail: Detail,
}

/// What an alert reports besides its state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Detail {
    ErrorRate {
        /// `error_rate` / 100.
        ratio: Option<f64>,
        errors: Vec<ErrorType>,
    },
    Latency {
        p50_seconds: Option<f64>,
        p90_seconds: Option<f64>,
        requests: Option<f64>,
    },
    Availability {
        /// `availability` / 100.
        ratio: Option<f64>,
    },
}

/// One entry of an error-rate event's `errors[]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorType {
    pub error_type: String,
    /// `error_rate` / 100.
    pub ratio: Option<f64>,
    pub count: Option<f64>,
}

/// Parses a body. Fails only when it is not JSON or not an envelope
/// (`entry` is not a list); anything inside an entry that is wrong becomes
/// an [`Event::Malformed`] or is skipped.
pub fn parse(body: &[u8]) -> Result<Payload, PayloadError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError(format!("not JSON: {e}")))?;
    let Value::Object(root) = root else {
        return Err(PayloadError("not a JSON object".into()));
    };
    let object = root
        .get("object")
        .and_then(Value::as_str)
        .map(|s| cut(s).to_owned())
        .unwrap_or_default();
    let Some(Value::Array(raw_entries)) = root.get("entry") else {
        return Err(PayloadError("no `entry` list".into()));
    };
    let mut entries = Vec::with_capacity(raw_entries.len());
    for raw in raw_entries {
        let Value::Object(e) = raw else { continue };
        let id = e.get("id").and_then(id_string).unwrap_or_default();
        let time = e.get("time").and_then(number).map(|t| t.floor() as i64);
        let mut changes = Vec::new();
        let mut other = Vec::new();
        for (k, v) in e {
            match (k.as_str(), v) {
                ("id" | "time", _) => {}
                ("changes", Value::Array(list)) => {
                    for c in list {
                        changes.push(change(&id, time, c));
                    }
                }
                ("calls", Value::Array(list)) => {
                    for c in list {
                        changes.push(call_change(&id, time, c));
                    }
                }
                (field, Value::Array(list)) => other.push((field_label(field), list.len())),
                _ => {}
            }
        }
        entries.push(Entry {
            id,
            time,
            changes,
            other,
        });
    }
    Ok(Payload { object, entries })
}

/// A field name as a label value: lower-case letters, digits and `_`, at most
/// [`MAX_LABEL_LEN`]; anything else is `invalid`.
pub fn field_label(s: &str) -> String {
    if !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        s.to_owned()
    } else {
        "invalid".to_owned()
    }
}

fn change(waba: &str, time: Option<i64>, raw: &Value) -> Change {
    let key = change_key(waba, time, raw);
    let field = raw.get("field").and_then(Value::as_str).unwrap_or("");
    let field = if field.is_empty() {
        "none".to_owned()
    } else {
        field_label(field)
    };
    let event = if field == "flows" {
        flows_event(raw.get("value"))
    } else {
        Event::NotProcessed
    };
    Change { field, key, event }
}

/// One update of Messenger's `entry[].calls[]`.
fn call_change(page: &str, time: Option<i64>, raw: &Value) -> Change {
    let key = change_key(page, time, raw);
    let event = match super::calls::parse(raw) {
        Ok(c) => Event::Call(c),
        Err(why) => Event::Malformed {
            name: raw
                .get("event")
                .and_then(Value::as_str)
                .map(|s| cut(s).to_owned())
                .unwrap_or_default(),
            why,
        },
    };
    Change {
        field: "calls".to_owned(),
        key,
        event,
    }
}

/// SHA-256 over the WABA id, the time and the canonical JSON of the change
/// (`serde_json` keeps object keys sorted, so key order and whitespace in
/// the body do not matter).
fn change_key(waba: &str, time: Option<i64>, raw: &Value) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(waba.as_bytes());
    ctx.update(b"\0");
    ctx.update(time.map(|t| t.to_string()).unwrap_or_default().as_bytes());
    ctx.update(b"\0");
    ctx.update(raw.to_string().as_bytes());
    let digest = ctx.finish();
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn flows_event(value: Option<&Value>) -> Event {
    let Some(Value::Object(v)) = value else {
        return Event::Malformed {
            name: String::new(),
            why: "`value` is not an object".into(),
        };
    };
    let name = v.get("event").and_then(Value::as_str).unwrap_or("");
    let malformed = |why: &str| Event::Malformed {
        name: cut(name).to_owned(),
        why: why.to_owned(),
    };
    let Some(flow_id) = v.get("flow_id").and_then(id_string) else {
        return if name == "FLOW_STATUS_CHANGE"
            || name == "FLOW_VERSION_EXPIRY_WARNING"
            || AlertKind::from_event(name).is_some()
        {
            malformed("no `flow_id`")
        } else {
            Event::Unknown {
                name: cut(name).to_owned(),
            }
        };
    };
    let num = |k: &str| v.get(k).and_then(number);
    match name {
        "FLOW_STATUS_CHANGE" => {
            let Some(new) = v.get("new_status").and_then(Value::as_str) else {
                return malformed("no `new_status`");
            };
            let old = v
                .get("old_status")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| cut(s).to_owned());
            Event::StatusChange {
                flow_id,
                old,
                new: cut(new).to_owned(),
            }
        }
        "FLOW_VERSION_EXPIRY_WARNING" => Event::ExpiryWarning { flow_id },
        _ => {
            let Some(kind) = AlertKind::from_event(name) else {
                return Event::Unknown {
                    name: cut(name).to_owned(),
                };
            };
            let active = match v.get("alert_state").and_then(Value::as_str) {
                Some("ACTIVATED") => true,
                Some("DEACTIVATED") => false,
                _ => return malformed("`alert_state` is neither ACTIVATED nor DEACTIVATED"),
            };
            let (threshold, detail) = match kind {
                AlertKind::EndpointErrorRate | AlertKind::ClientErrorRate => (
                    num("threshold").map(percent),
                    Detail::ErrorRate {
                        ratio: num("error_rate").map(percent),
                        errors: error_types(v.get("errors")),
                    },
                ),
                AlertKind::EndpointLatency => (
                    num("threshold").map(millis),
                    Detail::Latency {
                        p50_seconds: num("p50_latency").map(millis),
                        p90_seconds: num("p90_latency").map(millis),
                        requests: num("requests_count"),
                    },
                ),
                AlertKind::EndpointAvailability => (
                    num("threshold").map(percent),
                    Detail::Availability {
                        ratio: num("availability").map(percent),
                    },
                ),
            };
            Event::Alert(Alert {
                flow_id,
                kind,
                active,
                threshold,
                detail,
            })
        }
    }
}

/// `errors[]`, bounded: the first [`MAX_ERROR_TYPES`] distinct types as sent
/// (cut), the rest summed into `other` (counts added; ratios added, as they
/// are shares of the same total).
fn error_types(v: Option<&Value>) -> Vec<ErrorType> {
    let Some(Value::Array(list)) = v else {
        return Vec::new();
    };
    let mut out: Vec<ErrorType> = Vec::new();
    let mut other: Option<ErrorType> = None;
    for e in list {
        let Some(name) = e.get("error_type").and_then(Value::as_str) else {
            continue;
        };
        let name = cut(name);
        let ratio = e.get("error_rate").and_then(number).map(percent);
        let count = e.get("error_count").and_then(number);
        if let Some(known) = out.iter_mut().find(|t| t.error_type == name) {
            known.ratio = add(known.ratio, ratio);
            known.count = add(known.count, count);
        } else if out.len() < MAX_ERROR_TYPES && name != "other" {
            out.push(ErrorType {
                error_type: name.to_owned(),
                ratio,
                count,
            });
        } else {
            let o = other.get_or_insert(ErrorType {
                error_type: "other".into(),
                ratio: None,
                count: None,
            });
            o.ratio = add(o.ratio, ratio);
            o.count = add(o.count, count);
        }
    }
    out.extend(other);
    out
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

fn percent(x: f64) -> f64 {
    shift(x, 2)
}

fn millis(x: f64) -> f64 {
    shift(x, 3)
}

/// `x` / 10^`places`, as the decimal the payload wrote: 14.28 % is 0.1428,
/// not the 0.14279999999999998 that a float division gives.
fn shift(x: f64, places: u8) -> f64 {
    format!("{x}e-{places}")
        .parse()
        .unwrap_or(x / 10f64.powi(i32::from(places)))
}

/// A JSON number, or a string holding one (as Graph sometimes sends); never
/// NaN or infinite.
fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// An id: a non-empty string (cut), or a whole number written without quotes.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(cut(s.trim()).to_owned()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// `s` cut to at most [`MAX_LABEL_LEN`] bytes, at a character boundary.
pub fn cut(s: &str) -> &str {
    if s.len() <= MAX_LABEL_LEN {
        return s;
    }
    let mut end = MAX_LABEL_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_units_are_the_decimals_meta_wrote() {
        assert_eq!(percent(14.28), 0.1428);
        assert_eq!(percent(66.66), 0.6666);
        assert_eq!(percent(90.0), 0.9);
        assert_eq!(millis(8000.0), 8.0);
        assert_eq!(millis(1234.5), 1.2345);
    }

    #[test]
    fn labels_are_cut_and_error_types_bounded() {
        let errors: Vec<String> = (0..30)
            .map(|i| format!(r#"{{"error_type":"T{i}","error_rate":1,"error_count":2}}"#))
            .collect();
        let value = format!(
            r#"{{"event":"CLIENT_ERROR_RATE","flow_id":"{}","alert_state":"ACTIVATED","error_rate":30,"threshold":5,"errors":[{}]}}"#,
            "9".repeat(200),
            errors.join(",")
        );
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"w","changes":[{{"field":"flows","value":{value}}}]}}]}}"#
        );
        let p = parse(body.as_bytes()).expect("parses");
        let Event::Alert(a) = &p.entries[0].changes[0].event else {
            panic!("an alert: {:?}", p.entries[0].changes[0].event);
        };
        assert_eq!(a.flow_id.len(), MAX_LABEL_LEN);
        let Detail::ErrorRate { errors, .. } = &a.detail else {
            panic!("error rate detail");
        };
        assert_eq!(errors.len(), MAX_ERROR_TYPES + 1);
        let other = errors.last().expect("other");
        assert_eq!(other.error_type, "other");
        assert_eq!(other.count, Some(20.0));
    }

    #[test]
    fn not_an_envelope_is_an_error_a_bad_change_is_not() {
        assert!(parse(b"not json").is_err());
        assert!(parse(b"[]").is_err());
        assert!(parse(br#"{"object":"x"}"#).is_err());
        let p = parse(br#"{"object":"whatsapp_business_account","entry":[{"id":"w","changes":[{"field":"flows","value":{"event":"ENDPOINT_LATENCY","alert_state":"ACTIVATED"}},{"field":"flows","value":7}]}]}"#).expect("parses");
        assert!(matches!(
            p.entries[0].changes[0].event,
            Event::Malformed { .. }
        ));
        assert!(matches!(
            p.entries[0].changes[1].event,
            Event::Malformed { .. }
        ));
    }
}
