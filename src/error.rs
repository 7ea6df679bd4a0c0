//! The error taxonomy of Graph calls, as plain data: what kind of failure a
//! call ended in ([`ErrorClass`]), the classified error itself ([`GraphError`]),
//! the endpoints calls go to ([`Endpoint`]), and how a Graph error envelope
//! becomes a `GraphError` ([`parse_error`], [`classify`]). No I/O: the Graph
//! client, the wire parsers, the poll policy, the snapshot and the backfill all
//! import it, and it imports none of them.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::ratelimit::Refusal;

/// What kind of failure a Graph call ended in; decides what the exporter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// 139006: fewer than 250 requests; a state of the flow, not a failure.
    InsufficientData,
    /// 190: the access token is invalid or expired.
    Token,
    /// 10, 200-299: a permission is missing.
    Permission,
    /// 4, 17, 32, 613: Graph throttles the app; every call would be refused.
    Throttled,
    /// 80007 (the WABA's rate limit), 80008 (the WhatsApp Business Management
    /// use case's, counted per app and business object): Graph throttles the
    /// calls for one WABA; other WABAs' calls go on.
    WabaThrottled,
    /// 100 on the `metric` field: the Metrics API is not served in this version.
    ApiGone,
    /// 100 otherwise, e.g. the flow does not exist.
    InvalidRequest,
    /// 1, 2, `is_transient`, or a 5xx.
    Transient,
    /// Connection refused, reset, timed out, an answer cut off (see
    /// [`NetworkKind`]).
    Network,
    /// An answer that is not what Graph documents.
    Malformed,
    /// A Graph error code this exporter does not know.
    Unknown,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 11] = [
        ErrorClass::InsufficientData,
        ErrorClass::Token,
        ErrorClass::Permission,
        ErrorClass::Throttled,
        ErrorClass::WabaThrottled,
        ErrorClass::ApiGone,
        ErrorClass::InvalidRequest,
        ErrorClass::Transient,
        ErrorClass::Network,
        ErrorClass::Malformed,
        ErrorClass::Unknown,
    ];

    /// Label value used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::InsufficientData => "insufficient_data",
            ErrorClass::Token => "token",
            ErrorClass::Permission => "permission",
            ErrorClass::Throttled => "throttled",
            ErrorClass::WabaThrottled => "waba_throttled",
            ErrorClass::ApiGone => "api_gone",
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::Transient => "transient",
            ErrorClass::Network => "network",
            ErrorClass::Malformed => "malformed",
            ErrorClass::Unknown => "unknown",
        }
    }

    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Transient | ErrorClass::Network | ErrorClass::Throttled
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How a call ended without an answer: the rate-limit governor did not let
/// it go, or it went (at least once) and failed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Not sent: the governor refused it (see [`Refusal`]).
    Refused(Refusal),
    /// Sent and failed; with retries, the last attempt's error.
    Failed(GraphError),
}

impl CallError {
    /// The Graph error, when the call was sent.
    pub fn graph(&self) -> Option<&GraphError> {
        match self {
            CallError::Failed(e) => Some(e),
            CallError::Refused(_) => None,
        }
    }

    /// The error class, when the call was sent.
    pub fn class(&self) -> Option<ErrorClass> {
        self.graph().map(|e| e.class)
    }

    /// The error class's label, or the refusal's.
    pub fn label(&self) -> &'static str {
        match self {
            CallError::Failed(e) => e.class.label(),
            CallError::Refused(r) => r.label(),
        }
    }

    /// Graph's error code, when it sent one.
    pub fn code(&self) -> Option<i64> {
        self.graph().and_then(|e| e.code)
    }

    /// The trace id Meta support asks for, when Graph sent one.
    pub fn fbtrace_id(&self) -> Option<&str> {
        self.graph().and_then(|e| e.fbtrace_id.as_deref())
    }
}

impl From<GraphError> for CallError {
    fn from(e: GraphError) -> CallError {
        CallError::Failed(e)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Failed(e) => e.fmt(f),
            CallError::Refused(r) => write!(f, "not sent: {}", r.describe()),
        }
    }
}

impl std::error::Error for CallError {}

/// How one HTTP attempt to Graph ended: the `outcome` label of
/// `graph_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Success,
    Failed(ErrorClass),
}

impl Outcome {
    /// `success` or the error class.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed(class) => class.label(),
        }
    }

    /// Every outcome there is, `success` first.
    pub fn all() -> impl Iterator<Item = Outcome> {
        std::iter::once(Outcome::Success).chain(ErrorClass::ALL.into_iter().map(Outcome::Failed))
    }
}

/// What Graph's answers have said about one thing (the access token, the
/// Metrics API): nothing yet, yes, or no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validity {
    #[default]
    Unknown,
    Accepted,
    Rejected,
}

/// The state of the Graph client's access as Graph's answers show it. Owned
/// by the client, which updates it after every answer and publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApiHealth {
    /// Accepted after an answer with data or 139006; rejected after code 190.
    pub token: Validity,
    /// Accepted after a metric answer with data or 139006; rejected after
    /// code 100 on the `metric` field.
    pub metrics_api: Validity,
}

impl ApiHealth {
    /// The state after one answer of `endpoint` ended in `outcome`.
    pub fn after(mut self, endpoint: Endpoint, outcome: Outcome) -> ApiHealth {
        match outcome {
            Outcome::Success | Outcome::Failed(ErrorClass::InsufficientData) => {
                self.token = Validity::Accepted;
                if endpoint == Endpoint::Metric {
                    self.metrics_api = Validity::Accepted;
                }
            }
            Outcome::Failed(ErrorClass::Token) => self.token = Validity::Rejected,
            Outcome::Failed(ErrorClass::ApiGone) => self.metrics_api = Validity::Rejected,
            Outcome::Failed(_) => {}
        }
        self
    }
}

/// How a network failure happened; what it says of Graph differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkKind {
    /// No connection to Graph's host (refused, unreachable, name not found,
    /// TLS handshake): the host, not one flow.
    Connect,
    /// Graph did not answer in time (an attempt's timeout or the call's
    /// deadline): may be one flow's calls only.
    TimedOut,
    /// The connection broke (reset, an answer cut off).
    Broken,
}

/// A failed Graph call, classified. Never carries the access token: every
/// text in it went through a [`Redactor`] before it was cut.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphError {
    pub class: ErrorClass,
    /// For `ErrorClass::Network`: how.
    pub network: Option<NetworkKind>,
    pub code: Option<i64>,
    pub subcode: Option<i64>,
    pub message: String,
    pub fbtrace_id: Option<String>,
    pub http_status: Option<u16>,
    /// For throttling: how long Graph says to wait.
    pub regain_after: Option<Duration>,
}

impl GraphError {
    pub fn malformed(message: impl Into<String>) -> GraphError {
        GraphError::new(ErrorClass::Malformed, message)
    }

    pub fn new(class: ErrorClass, message: impl Into<String>) -> GraphError {
        GraphError {
            class,
            network: None,
            code: None,
            subcode: None,
            message: message.into(),
            fbtrace_id: None,
            http_status: None,
            regain_after: None,
        }
    }

    /// A network failure of this kind.
    pub fn network(kind: NetworkKind, message: impl Into<String>) -> GraphError {
        GraphError {
            network: Some(kind),
            ..GraphError::new(ErrorClass::Network, message)
        }
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.class)?;
        if let Some(code) = self.code {
            write!(f, " (code {code}")?;
            if let Some(sub) = self.subcode {
                write!(f, ", subcode {sub}")?;
            }
            write!(f, ")")?;
        }
        if let Some(status) = self.http_status {
            write!(f, " HTTP {status}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(t) = &self.fbtrace_id {
            write!(f, " [fbtrace_id {t}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for GraphError {}

/// The Graph endpoints the exporter calls, as the `endpoint` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Flows,
    Metric,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Flows => "flows",
            Endpoint::Metric => "metric",
        }
    }
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: WireError,
}

#[derive(Debug, Deserialize)]
struct WireError {
    #[serde(default)]
    message: String,
    code: Option<i64>,
    error_subcode: Option<i64>,
    fbtrace_id: Option<String>,
    is_transient: Option<bool>,
}

/// The longest Graph error message kept (after redaction).
pub const MAX_MESSAGE_BYTES: usize = 300;
/// The longest trace id kept (Graph's are 11 to 30 characters).
pub const MAX_TRACE_BYTES: usize = 64;

/// Turns a non-success answer into a classified error. The class comes from
/// `error.code` alone (the HTTP status is not reliable); without a Graph error
/// envelope, a 5xx is transient and anything else is malformed. Graph's texts
/// are redacted, then cut.
pub fn parse_error(status: u16, body: &[u8], redact: &Redactor) -> GraphError {
    match error_envelope(status, body, redact) {
        Some(e) => e,
        None => GraphError {
            http_status: Some(status),
            ..GraphError::new(
                if status >= 500 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Malformed
                },
                format!("HTTP {status} without a Graph error object"),
            )
        },
    }
}

/// The Graph error a body carries, if it is an error envelope
/// (`{"error": {...}}`), whatever the HTTP status: a 2xx answer can carry
/// one too, and it is an error like any other.
pub fn error_envelope(status: u16, body: &[u8], redact: &Redactor) -> Option<GraphError> {
    let ErrorEnvelope { error: e } = serde_json::from_slice::<ErrorEnvelope>(body).ok()?;
    let class = classify(e.code, &e.message, e.is_transient.unwrap_or(false), status);
    Some(GraphError {
        class,
        network: None,
        code: e.code,
        subcode: e.error_subcode,
        message: redact.cut(&e.message, MAX_MESSAGE_BYTES),
        fbtrace_id: e.fbtrace_id.map(|t| redact.cut(&t, MAX_TRACE_BYTES)),
        http_status: Some(status),
        regain_after: None,
    })
}

/// Maps a Graph error code to what the exporter does about it.
pub fn classify(code: Option<i64>, message: &str, is_transient: bool, status: u16) -> ErrorClass {
    match code {
        Some(139006) => ErrorClass::InsufficientData,
        Some(190) | Some(102) => ErrorClass::Token,
        Some(10) | Some(200..=299) => ErrorClass::Permission,
        Some(4) | Some(17) | Some(32) | Some(613) => ErrorClass::Throttled,
        Some(80007) | Some(80008) => ErrorClass::WabaThrottled,
        // Code 100 is "invalid parameter". On the `metric` field it is how Graph
        // says the field does not exist (any more) in this version.
        Some(100) if mentions_metric_field(message) => ErrorClass::ApiGone,
        Some(100) => ErrorClass::InvalidRequest,
        Some(1) | Some(2) => ErrorClass::Transient,
        _ if is_transient || status >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Unknown,
    }
}

fn mentions_metric_field(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("(metric)")
        || m.contains("field metric")
        || m.contains("fields: metric")
        || m.contains("`metric`")
        || m.contains("'metric'")
}

/// Scrubs the secrets the exporter holds (the access token) out of text that
/// came from Graph or the network, before it can reach a log line, an error,
/// a label or the landing page. Redact first, then cut ([`Redactor::cut`]):
/// cutting first could leave a piece of a secret that no longer matches.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

impl Redactor {
    /// Scrubs these secrets (empty ones are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        Redactor {
            secrets: secrets
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Scrubs nothing: for text that cannot hold a secret (tests, fuzzing).
    pub fn none() -> Redactor {
        Redactor::default()
    }

    /// `text` with every secret replaced by `<redacted>`.
    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }

    /// [`clean`](Self::clean), then cut to at most `max` bytes.
    pub fn cut(&self, text: &str, max: usize) -> String {
        truncate(&self.clean(text), max)
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary), marking a cut
/// with `…`. Text that may hold a secret goes through [`Redactor::cut`] instead.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let cases = [
            (
                400,
                r#"{"error":{"message":"Not enough data","code":139006,"fbtrace_id":"T"}}"#,
                ErrorClass::InsufficientData,
            ),
            (
                401,
                r#"{"error":{"message":"Session expired","code":190,"error_subcode":463}}"#,
                ErrorClass::Token,
            ),
            (
                403,
                r#"{"error":{"message":"Permission","code":10}}"#,
                ErrorClass::Permission,
            ),
            (
                403,
                r#"{"error":{"message":"Permission","code":200}}"#,
                ErrorClass::Permission,
            ),
            (
                400,
                r#"{"error":{"message":"Too many","code":80008}}"#,
                ErrorClass::WabaThrottled,
            ),
            (
                400,
                r#"{"error":{"message":"WABA rate limit","code":80007}}"#,
                ErrorClass::WabaThrottled,
            ),
            (
                400,
                r#"{"error":{"message":"Spiky","code":613,"error_subcode":1996}}"#,
                ErrorClass::Throttled,
            ),
            (
                429,
                r#"{"error":{"message":"Too many","code":4}}"#,
                ErrorClass::Throttled,
            ),
            (
                400,
                r#"{"error":{"message":"(#100) Tried accessing nonexisting field (metric)","code":100}}"#,
                ErrorClass::ApiGone,
            ),
            (
                400,
                r#"{"error":{"message":"Unsupported get request","code":100,"error_subcode":33}}"#,
                ErrorClass::InvalidRequest,
            ),
            (
                500,
                r#"{"error":{"message":"Unknown","code":1}}"#,
                ErrorClass::Transient,
            ),
            (
                400,
                r#"{"error":{"message":"x","code":999,"is_transient":true}}"#,
                ErrorClass::Transient,
            ),
            (
                400,
                r#"{"error":{"message":"x","code":999}}"#,
                ErrorClass::Unknown,
            ),
            (502, "<html>bad gateway</html>", ErrorClass::Transient),
            (404, "not json", ErrorClass::Malformed),
        ];
        for (status, body, class) in cases {
            assert_eq!(
                parse_error(status, body.as_bytes(), &Redactor::none()).class,
                class,
                "{body}"
            );
        }
        let e = parse_error(
            400,
            br#"{"error":{"message":"m","code":139006,"error_subcode":2494021,"fbtrace_id":"AbC"}}"#,
            &Redactor::none(),
        );
        assert_eq!(
            (e.code, e.subcode, e.fbtrace_id.as_deref()),
            (Some(139006), Some(2494021), Some("AbC"))
        );
    }

    #[test]
    fn secrets_are_scrubbed_before_the_cut() {
        let token = "EAAsecret-token-123456";
        let redact = Redactor::new([token]);
        // The token straddles the cut point: cutting first would leave its head.
        let message = format!("{}{token} tail", "x".repeat(290));
        let body =
            format!(r#"{{"error":{{"message":"{message}","code":1,"fbtrace_id":"{token}"}}}}"#);
        let e = parse_error(500, body.as_bytes(), &redact);
        assert!(!e.message.contains("EAAsecret"), "{}", e.message);
        assert!(e.message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert_eq!(e.fbtrace_id.as_deref(), Some(REDACTED));
        // JSON escapes do not hide it: the scrub is of the decoded text.
        let escaped = r#"{"error":{"message":"\u0045AAsecret-token-123456","code":1}}"#;
        let e = parse_error(500, escaped.as_bytes(), &redact);
        assert_eq!(e.message, REDACTED);
        assert_eq!(Redactor::new([""]).clean("text"), "text");
    }

    #[test]
    fn a_2xx_body_with_an_error_object_is_that_error() {
        let e = error_envelope(
            200,
            br#"{"error":{"message":"Not enough data","code":139006}}"#,
            &Redactor::none(),
        )
        .expect("an error envelope");
        assert_eq!(e.class, ErrorClass::InsufficientData);
        let e = error_envelope(200, br#"{"error":{"code":190}}"#, &Redactor::none())
            .expect("an error envelope");
        assert_eq!(e.class, ErrorClass::Token);
        assert!(error_envelope(200, br#"{"id":"1","metric":{}}"#, &Redactor::none()).is_none());
    }
}
