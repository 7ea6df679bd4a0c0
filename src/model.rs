//! Domain types shared by every module: flows, the five Flows metrics, the three
//! granularities, the data points the Metrics API answers with, and the clock.
//!
//! Nothing here knows about HTTP, JSON or Prometheus; the Graph wire types live in
//! `graph`, the exposition types in `exposition`.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

/// Period granularity of the Flows Metrics API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    Hour,
    Day,
    Lifetime,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Hour, Granularity::Day, Granularity::Lifetime];

    /// The value Graph expects in `granularity(...)`.
    pub fn api_name(self) -> &'static str {
        match self {
            Granularity::Hour => "HOUR",
            Granularity::Day => "DAY",
            Granularity::Lifetime => "LIFETIME",
        }
    }

    /// The `granularity` label value and config table name.
    pub fn label(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Lifetime => "lifetime",
        }
    }

    pub fn from_api_name(s: &str) -> Option<Granularity> {
        Granularity::ALL
            .into_iter()
            .find(|g| g.api_name().eq_ignore_ascii_case(s))
    }

    /// Nominal length of one period; `None` for LIFETIME, which is a single point.
    pub fn period(self) -> Option<Duration> {
        match self {
            Granularity::Hour => Some(Duration::hours(1)),
            Granularity::Day => Some(Duration::days(1)),
            Granularity::Lifetime => None,
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The five documented Flows metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetricKind {
    RequestCount,
    RequestError,
    RequestErrorRate,
    LatencySecondsCeil,
    Availability,
}

impl MetricKind {
    pub const ALL: [MetricKind; 5] = [
        MetricKind::RequestCount,
        MetricKind::RequestError,
        MetricKind::RequestErrorRate,
        MetricKind::LatencySecondsCeil,
        MetricKind::Availability,
    ];

    /// The name Graph uses in `metric.name(...)`.
    pub fn api_name(self) -> &'static str {
        match self {
            MetricKind::RequestCount => "ENDPOINT_REQUEST_COUNT",
            MetricKind::RequestError => "ENDPOINT_REQUEST_ERROR",
            MetricKind::RequestErrorRate => "ENDPOINT_REQUEST_ERROR_RATE",
            MetricKind::LatencySecondsCeil => "ENDPOINT_REQUEST_LATENCY_SECONDS_CEIL",
            MetricKind::Availability => "ENDPOINT_AVAILABILITY",
        }
    }

    /// The `metric` label value: the API name in lower case, so it reads like
    /// Meta's documentation.
    pub fn label(self) -> &'static str {
        match self {
            MetricKind::RequestCount => "endpoint_request_count",
            MetricKind::RequestError => "endpoint_request_error",
            MetricKind::RequestErrorRate => "endpoint_request_error_rate",
            MetricKind::LatencySecondsCeil => "endpoint_request_latency_seconds_ceil",
            MetricKind::Availability => "endpoint_availability",
        }
    }

    pub fn from_api_name(s: &str) -> Option<MetricKind> {
        MetricKind::ALL
            .into_iter()
            .find(|m| m.api_name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// Lifecycle status of a flow as Graph reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FlowStatus {
    Draft,
    Published,
    Deprecated,
    Blocked,
    Throttled,
    /// A status this exporter does not know yet (Graph may add some).
    Other(String),
    /// A statically configured flow that discovery has not seen.
    Unknown,
}

impl FlowStatus {
    pub fn parse(s: &str) -> FlowStatus {
        match s {
            "DRAFT" => FlowStatus::Draft,
            "PUBLISHED" => FlowStatus::Published,
            "DEPRECATED" => FlowStatus::Deprecated,
            "BLOCKED" => FlowStatus::Blocked,
            "THROTTLED" => FlowStatus::Throttled,
            other => FlowStatus::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            FlowStatus::Draft => "DRAFT",
            FlowStatus::Published => "PUBLISHED",
            FlowStatus::Deprecated => "DEPRECATED",
            FlowStatus::Blocked => "BLOCKED",
            FlowStatus::Throttled => "THROTTLED",
            FlowStatus::Other(s) => s,
            FlowStatus::Unknown => "UNKNOWN",
        }
    }

    /// Whether a flow in this status can have endpoint traffic, and so metrics.
    /// DRAFT and DEPRECATED flows are never polled: the calls would burn quota
    /// for nothing. Unknown statuses are polled, so that a status Meta adds later
    /// does not silently hide a flow.
    pub fn has_endpoint_traffic(&self) -> bool {
        !matches!(self, FlowStatus::Draft | FlowStatus::Deprecated)
    }
}

/// Where the exporter learned about a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowSource {
    Discovered,
    Static,
}

/// A flow as the rest of the exporter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub id: String,
    pub name: String,
    /// Empty for a static flow that discovery has not seen.
    pub waba_id: String,
    pub status: FlowStatus,
    pub data_api_version: String,
    /// `health_status.can_send_message`: AVAILABLE, LIMITED or BLOCKED; empty when unknown.
    pub can_send_message: String,
    pub source: FlowSource,
}

impl Flow {
    /// Whether the exporter polls this flow's metrics: every static flow, and every
    /// discovered flow whose status can have endpoint traffic.
    pub fn is_polled(&self) -> bool {
        self.source == FlowSource::Static || self.status.has_endpoint_traffic()
    }
}

/// What listing one WABA's flows gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub flows: Vec<Flow>,
    /// Entries skipped because they are not a flow the exporter can poll
    /// (an id that is not a Graph id), with why.
    pub skipped: Vec<String>,
    /// Set when the listing was cut short; the flows of the pages read are kept.
    pub truncated: Option<Truncation>,
}

/// Why a listing was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// `limits.listing_pages` pages were read and Graph named another.
    PageCap(usize),
    /// Graph named a page cursor it had named before.
    PagingLoop,
}

impl Truncation {
    pub fn describe(self) -> String {
        match self {
            Truncation::PageCap(n) => {
                format!("Graph named a page after the {n} of limits.listing_pages")
            }
            Truncation::PagingLoop => "Graph named a page cursor a second time".to_owned(),
        }
    }
}

/// One data point of one metric: the start of its period and its key/value pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    pub start: DateTime<Utc>,
    pub values: Vec<(String, f64)>,
}

/// The source of "now". Injected so tests and the sandbox can pin time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    pub fn fixed(at: DateTime<Utc>) -> Clock {
        Clock(Arc::new(move || at))
    }

    pub fn from_fn(f: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}
