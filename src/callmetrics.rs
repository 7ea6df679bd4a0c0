//! Messenger call quality, pure: the intake body a business's client posts
//! after each call (Meta's `call_metrics` payload, from WebRTC `getStats()`)
//! checked into [`CallMetrics`]; the body forwarded to Graph; the quality
//! histograms ([`QualityStats`]); and the relay's rules ([`relay_result`],
//! [`next_step`]): what a Graph answer means for an outbox item.
//!
//! Meta writes the same thing several ways, and every way is accepted:
//! - `end_call_reason`: `Hangup_Call` (the enum list), `HangupCall` (its
//!   sample code), `HANGUP_CALL` (generated clients): compared without case
//!   and underscores, kept as [`EndReason`], forwarded as the enum list
//!   writes it.
//! - `audio_stats`: the field table's `jitter`, `round_trip_time_ms`,
//!   `jitter_buffer_delay_ms`, `total_samples_duration_ms`, or its example's
//!   (and WebRTC's) `jitter_sec`, `round_trip_time_sec`,
//!   `jitter_buffer_delay_sec`, `total_samples_duration_sec`: all kept in
//!   seconds; forwarded as the field table asks (`jitter` in seconds, the
//!   `_ms` fields in milliseconds, and `call_ended_time`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{ErrorClass, GraphError};
use crate::webhook::calls::Hist;

/// The 22 documented `end_call_reason` values, as Meta's enum list writes them.
pub const END_REASONS: [&str; 22] = [
    "Call_End_Accept_After_Hang_Up",
    "Caller_Not_Visible",
    "Camera_Permission_Denied",
    "Client_Error",
    "Client_Interrupted",
    "Connection_Dropped",
    "Hangup_Call",
    "Ignore_Call",
    "In_Another_Call",
    "Inactive_Timeout",
    "Incoming_Timeout",
    "Max_Allowed_Participants_Reached",
    "Microphone_Permission_Denied",
    "No_Answer_Timeout",
    "No_Permission",
    "Removed_By_Participant",
    "Ring_Muted",
    "Signaling_Message_Failed",
    "Unexpected_End_Of_Call",
    "Unknown",
    "Version_Unsupported",
    "WebRTC_Error",
];

/// One of [`END_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndReason(usize);

impl EndReason {
    /// Any spelling: case and underscores do not matter.
    pub fn parse(s: &str) -> Option<EndReason> {
        let norm = |t: &str| -> String {
            t.chars()
                .filter(|c| *c != '_')
                .flat_map(char::to_lowercase)
                .collect()
        };
        let wanted = norm(s.trim());
        END_REASONS
            .iter()
            .position(|r| norm(r) == wanted)
            .map(EndReason)
    }

    /// As Meta's enum list writes it (what is forwarded).
    pub fn documented(self) -> &'static str {
        END_REASONS[self.0]
    }

    /// The `reason` label: lower case with underscores.
    pub fn label(self) -> String {
        self.documented().to_ascii_lowercase()
    }
}

/// A field of the intake body that is wrong, and how: the 400's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub why: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.why)
        } else {
            write!(f, "field `{}`: {}", self.field, self.why)
        }
    }
}

fn bad(field: &str, why: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        why: why.into(),
    }
}

/// The audio statistics, in seconds where they are times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioStats {
    pub jitter: f64,
    pub packets_lost: i64,
    pub packets_received: u64,
    /// WebRTC's `totalRoundTripTime`: a sum over the call's measurements.
    pub round_trip_time: f64,
    /// WebRTC's `jitterBufferDelay`: a sum over every emitted sample.
    pub jitter_buffer_delay: f64,
    pub concealed_samples: u64,
    pub silent_concealed_samples: u64,
    pub total_samples_duration: f64,
}

/// A checked intake body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallMetrics {
    pub call_id: String,
    pub end_call_reason: EndReason,
    pub end_call_subreason: String,
    pub call_ended_time: i64,
    /// 0 (the seed script's placeholder) or absent: not known.
    pub first_audio_packet_received_time: Option<i64>,
    pub audio: AudioStats,
}

/// Longest `call_id` and `end_call_subreason` accepted.
pub const MAX_TEXT: usize = 1024;

/// Checks an intake body. The error names the first wrong field.
pub fn parse_intake(body: &[u8]) -> Result<CallMetrics, FieldError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad("", format!("not JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(bad("", "not a JSON object"));
    };
    match o.get("platform").and_then(Value::as_str) {
        Some(p) if p.eq_ignore_ascii_case("messenger") => {}
        Some(_) => return Err(bad("platform", "must be \"messenger\"")),
        None => return Err(bad("platform", "missing; must be \"messenger\"")),
    }
    let call_id = match o.get("call_id").and_then(Value::as_str).map(str::trim) {
        Some(c) if !c.is_empty() && c.len() <= MAX_TEXT => c.to_owned(),
        Some(c) if !c.is_empty() => {
            return Err(bad("call_id", format!("longer than {MAX_TEXT} bytes")));
        }
        _ => return Err(bad("call_id", "missing or empty")),
    };
    let end_call_reason = match o.get("end_call_reason").and_then(Value::as_str) {
        Some(r) => EndReason::parse(r).ok_or_else(|| {
            bad(
                "end_call_reason",
                "not one of the 22 documented values (Hangup_Call, Connection_Dropped, ...)",
            )
        })?,
        None => return Err(bad("end_call_reason", "missing")),
    };
    let end_call_subreason = match o.get("end_call_subreason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= MAX_TEXT => s.clone(),
        Some(Value::String(_)) => {
            return Err(bad(
                "end_call_subreason",
                format!("longer than {MAX_TEXT} bytes"),
            ));
        }
        Some(_) => return Err(bad("end_call_subreason", "must be a string")),
    };
    let call_ended_time =
        unix_seconds(&o, "call_ended_time")?.ok_or_else(|| bad("call_ended_time", "missing"))?;
    if call_ended_time <= 0 {
        return Err(bad("call_ended_time", "must be a Unix time in seconds"));
    }
    let first_audio_packet_received_time =
        unix_seconds(&o, "first_audio_packet_received_time")?.filter(|t| *t > 0);
    let Some(Value::Object(a)) = o.get("audio_stats") else {
        return Err(bad("audio_stats", "missing or not an object"));
    };
    let audio = AudioStats {
        jitter: seconds_either(a, "jitter", "jitter_sec", false)?,
        packets_lost: whole(a, "packets_lost", true)?,
        packets_received: whole(a, "packets_received", false)? as u64,
        round_trip_time: seconds_either(a, "round_trip_time_ms", "round_trip_time_sec", true)?,
        jitter_buffer_delay: seconds_either(
            a,
            "jitter_buffer_delay_ms",
            "jitter_buffer_delay_sec",
            true,
        )?,
        concealed_samples: whole(a, "concealed_samples", false)? as u64,
        silent_concealed_samples: whole(a, "silent_concealed_samples", false)? as u64,
        total_samples_duration: seconds_either(
            a,
            "total_samples_duration_ms",
            "total_samples_duration_sec",
            true,
        )?,
    };
    Ok(CallMetrics {
        call_id,
        end_call_reason,
        end_call_subreason,
        call_ended_time,
        first_audio_packet_received_time,
        audio,
    })
}

/// A Unix time in seconds; one that looks like milliseconds (after 2286) is
/// refused rather than guessed.
fn unix_seconds(o: &Map<String, Value>, field: &str) -> Result<Option<i64>, FieldError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let x = number(v).ok_or_else(|| bad(field, "must be a number (Unix seconds)"))?;
            if !(0.0..1e10).contains(&x) {
                return Err(bad(
                    field,
                    "must be a Unix time in seconds (not milliseconds)",
                ));
            }
            Ok(Some(x.floor() as i64))
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// The field table's `table` name (in milliseconds when `table_ms`, else
/// seconds) or the example's `example` name (seconds), in seconds. One of
/// the two must be there, finite and not negative; the error names the
/// table's.
fn seconds_either(
    a: &Map<String, Value>,
    table: &str,
    example: &str,
    table_ms: bool,
) -> Result<f64, FieldError> {
    let read = |name: &str| -> Result<Option<f64>, FieldError> {
        match a.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match number(v) {
                Some(x) if x >= 0.0 => Ok(Some(x)),
                _ => Err(bad(
                    &format!("audio_stats.{name}"),
                    "must be a number of at least 0",
                )),
            },
        }
    };
    if let Some(x) = read(table)? {
        return Ok(if table_ms { x / 1000.0 } else { x });
    }
    read(example)?.ok_or_else(|| {
        bad(
            &format!("audio_stats.{table}"),
            format!("missing (or {example})"),
        )
    })
}

fn whole(a: &Map<String, Value>, name: &str, negative_ok: bool) -> Result<i64, FieldError> {
    let field = format!("audio_stats.{name}");
    let x = a
        .get(name)
        .and_then(number)
        .ok_or_else(|| bad(&field, "missing or not a number"))?;
    if x.fract() != 0.0 || x.abs() > 1e15 || (!negative_ok && x < 0.0) {
        return Err(bad(&field, "must be a whole number of at least 0"));
    }
    Ok(x as i64)
}

/// The body forwarded to `POST /{page_id}/call_metrics`: the documented form.
pub fn forward_body(m: &CallMetrics) -> Value {
    let mut body = json!({
        "platform": "messenger",
        "call_id": m.call_id,
        "end_call_reason": m.end_call_reason.documented(),
        "end_call_subreason": m.end_call_subreason,
        "call_ended_time": m.call_ended_time,
        "audio_stats": {
            "call_ended_time": m.call_ended_time,
            "jitter": m.audio.jitter,
            "packets_lost": m.audio.packets_lost,
            "packets_received": m.audio.packets_received,
            "round_trip_time_ms": m.audio.round_trip_time * 1000.0,
            "jitter_buffer_delay_ms": m.audio.jitter_buffer_delay * 1000.0,
            "concealed_samples": m.audio.concealed_samples,
            "silent_concealed_samples": m.audio.silent_concealed_samples,
            "total_samples_duration_ms": m.audio.total_samples_duration * 1000.0,
        }
    });
    if let Some(t) = m.first_audio_packet_received_time {
        body["first_audio_packet_received_time"] = json!(t);
    }
    body
}

/// The sample rate the per-sample figures assume: Opus, WebRTC's audio codec,
/// runs at 48 kHz.
pub const SAMPLE_RATE: f64 = 48_000.0;

pub const JITTER_BUCKETS: [f64; 8] = [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5];
pub const RATIO_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];
pub const JITTER_BUFFER_BUCKETS: [f64; 8] = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0];
pub const FIRST_AUDIO_BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0];

/// The quality figures of one Page's calls, from the intake.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityStats {
    pub jitter: Hist,
    pub packet_loss: Hist,
    pub jitter_buffer_delay: Hist,
    pub concealed: Hist,
    pub first_audio_delay: Hist,
    pub end_reasons: BTreeMap<String, u64>,
}

/// The quality figures of one call, in base units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub jitter: f64,
    /// lost / (lost + received); `None` with no packets.
    pub packet_loss: Option<f64>,
    /// `jitter_buffer_delay` / emitted samples (`total_samples_duration` x
    /// [`SAMPLE_RATE`]): the average time a sample waited in the buffer.
    pub jitter_buffer_delay: Option<f64>,
    /// `concealed_samples` / samples received (`total_samples_duration` x
    /// [`SAMPLE_RATE`]), at most 1: W3C's concealment ratio with the
    /// received samples estimated from the duration.
    pub concealed: Option<f64>,
}

pub fn quality(a: &AudioStats) -> Quality {
    let lost = a.packets_lost.max(0) as f64;
    let total = lost + a.packets_received as f64;
    let samples = a.total_samples_duration * SAMPLE_RATE;
    Quality {
        jitter: a.jitter,
        packet_loss: (total > 0.0).then(|| lost / total),
        jitter_buffer_delay: (samples >= 1.0).then(|| a.jitter_buffer_delay / samples),
        concealed: (samples >= 1.0).then(|| (a.concealed_samples as f64 / samples).min(1.0)),
    }
}

impl QualityStats {
    /// Records one accepted intake. `connected_at`: the call's `connect`
    /// timestamp, when the webhook was seen.
    pub fn record(&mut self, m: &CallMetrics, connected_at: Option<i64>) {
        let q = quality(&m.audio);
        self.jitter.observe(&JITTER_BUCKETS, q.jitter);
        if let Some(v) = q.packet_loss {
            self.packet_loss.observe(&RATIO_BUCKETS, v);
        }
        if let Some(v) = q.jitter_buffer_delay {
            self.jitter_buffer_delay.observe(&JITTER_BUFFER_BUCKETS, v);
        }
        if let Some(v) = q.concealed {
            self.concealed.observe(&RATIO_BUCKETS, v);
        }
        if let (Some(first), Some(connect)) = (m.first_audio_packet_received_time, connected_at) {
            self.first_audio_delay
                .observe(&FIRST_AUDIO_BUCKETS, (first - connect).max(0) as f64);
        }
        *self
            .end_reasons
            .entry(m.end_call_reason.label())
            .or_default() += 1;
    }
}

/// What one relay attempt came to: the `result` label of
/// `messenger_call_metrics_forwarded_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RelayResult {
    Sent,
    AlreadySubmitted,
    OutsideWindow,
    InvalidCallId,
    InvalidPageId,
    Permission,
    /// Not sent: 24 hours after `call_ended_time` had passed.
    Expired,
    InProgress,
    Transient,
    Throttled,
    Token,
    Unknown,
}

impl RelayResult {
    pub const ALL: [RelayResult; 12] = [
        RelayResult::Sent,
        RelayResult::AlreadySubmitted,
        RelayResult::OutsideWindow,
        RelayResult::InvalidCallId,
        RelayResult::InvalidPageId,
        RelayResult::Permission,
        RelayResult::Expired,
        RelayResult::InProgress,
        RelayResult::Transient,
        RelayResult::Throttled,
        RelayResult::Token,
        RelayResult::Unknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RelayResult::Sent => "sent",
            RelayResult::AlreadySubmitted => "already_submitted",
            RelayResult::OutsideWindow => "outside_window",
            RelayResult::InvalidCallId => "invalid_call_id",
            RelayResult::InvalidPageId => "invalid_page_id",
            RelayResult::Permission => "permission",
            RelayResult::Expired => "expired",
            RelayResult::InProgress => "in_progress",
            RelayResult::Transient => "transient",
            RelayResult::Throttled => "throttled",
            RelayResult::Token => "token",
            RelayResult::Unknown => "unknown",
        }
    }
}

/// What Graph's answer to a `call_metrics` post means. Meta documents its
/// errors as messages only, so the six are told apart by their text (case
/// ignored); codes decide the rest as for any Graph call.
pub fn relay_result(answer: Result<bool, &GraphError>) -> RelayResult {
    let e = match answer {
        Ok(true) => return RelayResult::Sent,
        // `{"success": false}` is a failure of no known kind.
        Ok(false) => return RelayResult::Unknown,
        Err(e) => e,
    };
    let m = e.message.to_ascii_lowercase();
    let has = |s: &str| m.contains(s);
    if has("already") && has("submit") {
        RelayResult::AlreadySubmitted
    } else if has("24") && (has("window") || has("hour")) {
        RelayResult::OutsideWindow
    } else if has("in progress") {
        RelayResult::InProgress
    } else if has("invalid call") {
        RelayResult::InvalidCallId
    } else if has("invalid page") {
        RelayResult::InvalidPageId
    } else {
        match e.class {
            ErrorClass::Permission => RelayResult::Permission,
            _ if has("permission") => RelayResult::Permission,
            ErrorClass::Token => RelayResult::Token,
            ErrorClass::Throttled | ErrorClass::WabaThrottled => RelayResult::Throttled,
            ErrorClass::Transient | ErrorClass::Network => RelayResult::Transient,
            _ => RelayResult::Unknown,
        }
    }
}

/// Where an outbox item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OutboxState {
    Pending,
    Done,
    Failed,
}

impl OutboxState {
    pub const ALL: [OutboxState; 3] =
        [OutboxState::Pending, OutboxState::Done, OutboxState::Failed];

    pub fn label(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Done => "done",
            OutboxState::Failed => "failed",
        }
    }
}

/// How long after `call_ended_time` Meta accepts metrics.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Tries of an answer of no known kind before the item is given up.
pub const MAX_UNKNOWN_TRIES: u32 = 5;

/// The next state of an item after an attempt (`attempts` counts it) that
/// came to `result` at `now`, and when to try again if pending.
pub fn next_step(
    result: RelayResult,
    attempts: u32,
    now: i64,
    ended_at: i64,
) -> (OutboxState, i64) {
    let backoff = |base: i64, cap: i64| -> i64 {
        let shift = attempts.saturating_sub(1).min(20);
        (base.saturating_mul(1i64 << shift)).min(cap)
    };
    let (state, next) = match result {
        RelayResult::Sent | RelayResult::AlreadySubmitted => (OutboxState::Done, now),
        RelayResult::OutsideWindow
        | RelayResult::InvalidCallId
        | RelayResult::InvalidPageId
        | RelayResult::Permission
        | RelayResult::Expired => (OutboxState::Failed, now),
        RelayResult::Unknown if attempts >= MAX_UNKNOWN_TRIES => (OutboxState::Failed, now),
        // The call is not over at Meta yet: ask again in a minute, then less often.
        RelayResult::InProgress => (OutboxState::Pending, now + backoff(60, 600)),
        RelayResult::Transient | RelayResult::Unknown => {
            (OutboxState::Pending, now + backoff(10, 1800))
        }
        // Throttled, or a token to be rotated: wait longer.
        RelayResult::Throttled | RelayResult::Token => {
            (OutboxState::Pending, now + backoff(60, 3600))
        }
    };
    // Nothing goes out after the window: an item past it fails when next due.
    let deadline = ended_at + WINDOW.as_secs() as i64;
    if state == OutboxState::Pending && next >= deadline {
        return (OutboxState::Pending, deadline);
    }
    (state, next)
}

/// Whether an item may still be sent at `now`.
pub fn within_window(ended_at: i64, now: i64) -> bool {
    now < ended_at + WINDOW.as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EXAMPLE: &str = r#"{ "platform": "messenger", "call_id": "c_M5YPhGE5jm0L_PMQdScLlYJlR7tU_f0rgXinCqnTQ", "end_call_reason": "Hangup_Call", "end_call_subreason": "Conversation was finished", "call_ended_time": 123456, "first_audio_packet_received_time": 12345, "audio_stats": { "jitter_sec": 0.01, "packets_lost": 0, "packets_received": 1000, "round_trip_time_sec": 10.5, "jitter_buffer_delay_sec": 4000.5, "concealed_samples": 2000, "silent_concealed_samples": 16000, "total_samples_duration_sec": 316.5 } }"#;

    #[test]
    fn the_seed_example_and_the_field_table_spelling_are_the_same_call() {
        let a = parse_intake(SEED_EXAMPLE.as_bytes()).expect("the seed example");
        let table = SEED_EXAMPLE
            .replace("\"jitter_sec\"", "\"jitter\"")
            .replace(
                "\"round_trip_time_sec\": 10.5",
                "\"round_trip_time_ms\": 10500",
            )
            .replace(
                "\"jitter_buffer_delay_sec\": 4000.5",
                "\"jitter_buffer_delay_ms\": 4000500",
            )
            .replace(
                "\"total_samples_duration_sec\": 316.5",
                "\"total_samples_duration_ms\": 316500",
            )
            .replace("Hangup_Call", "HANGUP_CALL");
        let b = parse_intake(table.as_bytes()).expect("the table's spelling");
        assert_eq!(a, b);
        assert_eq!(a.audio.round_trip_time, 10.5);
        assert_eq!(a.end_call_reason.documented(), "Hangup_Call");
        let q = quality(&a.audio);
        assert_eq!(q.packet_loss, Some(0.0));
        let jbd = q.jitter_buffer_delay.expect("jbd");
        assert!((jbd - 4000.5 / (316.5 * 48000.0)).abs() < 1e-12);
    }

    #[test]
    fn every_spelling_of_every_reason() {
        for r in END_REASONS {
            for s in [
                r.to_owned(),
                r.replace('_', ""),
                r.to_ascii_uppercase(),
                r.to_ascii_lowercase(),
            ] {
                assert_eq!(
                    EndReason::parse(&s).map(EndReason::documented),
                    Some(r),
                    "{s}"
                );
            }
        }
        assert_eq!(
            EndReason::parse("HangupCall")
                .map(EndReason::label)
                .as_deref(),
            Some("hangup_call")
        );
        assert!(EndReason::parse("Hung_Up").is_none());
    }

    #[test]
    fn each_wrong_field_is_named() {
        let cases = [
            (
                "\"platform\": \"messenger\"",
                "\"platform\": \"whatsapp\"",
                "platform",
            ),
            (
                "\"call_id\": \"c_M5YPhGE5jm0L_PMQdScLlYJlR7tU_f0rgXinCqnTQ\"",
                "\"call_id\": \" \"",
                "call_id",
            ),
            ("Hangup_Call", "Hung_Up", "end_call_reason"),
            (
                "\"call_ended_time\": 123456",
                "\"call_ended_time\": 1706616000000",
                "call_ended_time",
            ),
            (
                "\"call_ended_time\": 123456",
                "\"call_ended_time\": \"yesterday\"",
                "call_ended_time",
            ),
            (
                "\"first_audio_packet_received_time\": 12345",
                "\"first_audio_packet_received_time\": -5",
                "first_audio_packet_received_time",
            ),
            ("\"jitter_sec\": 0.01,", "", "audio_stats.jitter"),
            (
                "\"packets_lost\": 0",
                "\"packets_lost\": 0.5",
                "audio_stats.packets_lost",
            ),
            (
                "\"packets_received\": 1000",
                "\"packets_received\": -1",
                "audio_stats.packets_received",
            ),
            (
                "\"round_trip_time_sec\": 10.5",
                "\"round_trip_time_sec\": -1",
                "audio_stats.round_trip_time_sec",
            ),
            (
                "\"concealed_samples\": 2000,",
                "",
                "audio_stats.concealed_samples",
            ),
            (
                "\"total_samples_duration_sec\": 316.5",
                "\"total_samples_duration_ms\": \"x\"",
                "audio_stats.total_samples_duration_ms",
            ),
        ];
        for (from, to, field) in cases {
            let body = SEED_EXAMPLE.replace(from, to);
            assert_ne!(body, SEED_EXAMPLE, "{from}");
            let e = parse_intake(body.as_bytes()).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        assert_eq!(parse_intake(b"[]").expect_err("array").field, "");
    }

    #[test]
    fn graph_answers_map_to_results_and_steps() {
        let err = |code: i64, msg: &str| GraphError {
            code: Some(code),
            ..GraphError::new(crate::error::classify(Some(code), msg, false, 400), msg)
        };
        for (e, want) in [
            (
                err(100, "Metrics have already been submitted for this call"),
                RelayResult::AlreadySubmitted,
            ),
            (
                err(
                    100,
                    "Metrics submitted outside of 24-hour submission window",
                ),
                RelayResult::OutsideWindow,
            ),
            (
                err(100, "Call is still in progress"),
                RelayResult::InProgress,
            ),
            (err(100, "Invalid call id"), RelayResult::InvalidCallId),
            (err(100, "Invalid page-id"), RelayResult::InvalidPageId),
            (err(200, "Invalid permissions"), RelayResult::Permission),
            (
                err(2, "Service temporarily unavailable"),
                RelayResult::Transient,
            ),
            (
                err(613, "Calls to this api have exceeded the rate limit"),
                RelayResult::Throttled,
            ),
            (
                err(190, "Error validating access token"),
                RelayResult::Token,
            ),
            (err(999, "Something else"), RelayResult::Unknown),
        ] {
            assert_eq!(relay_result(Err(&e)), want, "{}", e.message);
        }
        assert_eq!(relay_result(Ok(true)), RelayResult::Sent);
        assert_eq!(relay_result(Ok(false)), RelayResult::Unknown);

        let ended = 1_000_000;
        assert_eq!(
            next_step(RelayResult::Sent, 1, ended, ended).0,
            OutboxState::Done
        );
        assert_eq!(
            next_step(RelayResult::OutsideWindow, 1, ended, ended).0,
            OutboxState::Failed
        );
        assert_eq!(
            next_step(RelayResult::InProgress, 1, ended, ended),
            (OutboxState::Pending, ended + 60)
        );
        assert_eq!(
            next_step(RelayResult::Transient, 3, ended, ended),
            (OutboxState::Pending, ended + 40)
        );
        assert_eq!(
            next_step(RelayResult::Unknown, MAX_UNKNOWN_TRIES, ended, ended).0,
            OutboxState::Failed
        );
        // Retries never go past the window.
        let late = ended + 24 * 3600 - 5;
        assert_eq!(
            next_step(RelayResult::Throttled, 1, late, ended),
            (OutboxState::Pending, ended + 24 * 3600)
        );
        assert!(within_window(ended, late));
        assert!(!within_window(ended, ended + 24 * 3600));
    }
}
