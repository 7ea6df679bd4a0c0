//! The Graph API surface of the sandbox: routing a request to the flows listing or a
//! metric query, the JSON shapes of both, Graph error envelopes, paging cursors and the
//! rate-limit usage headers.
//!
//! Nothing here touches sockets: `route` turns a parsed request and the sandbox state
//! into an answer, and `metric_body` renders a metric query (outside the state lock,
//! because a 90-day window means thousands of generated hours).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::data::{self, Point, Window};
use super::{Fault, FaultTarget, SandboxFlow, State, Traffic, Transport};
use crate::model::{Granularity, MetricKind};

/// The version named in answers to a path that has none.
pub(super) const DEFAULT_VERSION: &str = "v23.0";

/// `paging.next` names Meta's host, never the sandbox's: clients must take the cursor
/// from it and re-target their own base, as they must with the real API.
const GRAPH_ORIGIN: &str = "https://graph.facebook.com";

/// Fields the flows listing returns when the request names none.
const DEFAULT_FLOW_FIELDS: &str = "id,name,status,categories,validation_errors";

const FLOW_FIELDS: [&str; 8] = [
    "id",
    "name",
    "status",
    "categories",
    "validation_errors",
    "data_api_version",
    "endpoint_uri",
    "health_status",
];

/// The parts of an HTTP request the Graph surface looks at.
#[derive(Debug)]
pub(super) struct GraphRequest<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    /// The raw query string, still percent-encoded; empty when there is none.
    pub(super) query: &'a str,
    pub(super) authorization: Option<&'a str>,
}

/// What routing decided.
#[derive(Debug)]
pub(super) struct Routed {
    /// The version in the path, echoed in `facebook-api-version`.
    pub(super) version: String,
    /// The business object the call counts against, for `X-Business-Use-Case-Usage`.
    pub(super) waba: Option<String>,
    pub(super) answer: Answer,
    /// An injected transport fault that shapes how the answer travels.
    pub(super) transport: Option<Transport>,
}

#[derive(Debug)]
pub(super) enum Answer {
    Ready {
        status: u16,
        body: String,
        /// Extra delay of an injected fault.
        delay: Duration,
    },
    /// A valid metric query; rendered by `metric_body` once the state lock is released.
    Metric(MetricQuery),
}

#[derive(Debug)]
pub(super) struct MetricQuery {
    flow: SandboxFlow,
    metric: MetricKind,
    granularity: Granularity,
    window: Window,
}

impl MetricQuery {
    pub(super) fn flow_id(&self) -> &str {
        &self.flow.id
    }
}

impl Answer {
    fn ok(body: String) -> Answer {
        Answer::Ready {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }

    fn error(error: GraphError, trace_id: &str) -> Answer {
        Answer::Ready {
            status: error.status,
            body: error.body(trace_id),
            delay: Duration::ZERO,
        }
    }

    fn fault(fault: Fault) -> Answer {
        Answer::Ready {
            status: fault.status,
            body: fault.body,
            delay: fault.delay,
        }
    }
}

/// Routes one request. Order: token, version prefix, method, path. A well-formed metric
/// call is logged; metric and listing calls are checked against injected faults before
/// the flow or WABA is looked up, so a fault can stand in for any answer.
pub(super) fn route(
    state: &mut State,
    req: &GraphRequest<'_>,
    trace_id: &str,
    now: DateTime<Utc>,
) -> Routed {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let (version, rest) = match segments.split_first() {
        Some((first, rest)) if is_version(first) => (Some(*first), rest),
        _ => (None, segments.as_slice()),
    };
    let authorized = req.authorization == Some(format!("Bearer {}", state.token).as_str());
    let result = if authorized {
        dispatch(state, req, version, rest, now)
    } else {
        Err(GraphError::invalid_token())
    };
    let transport = if authorized && !state.transports.is_empty() {
        take_transport(state, rest, req.query)
    } else {
        None
    };
    Routed {
        transport,
        version: version.unwrap_or(DEFAULT_VERSION).to_owned(),
        // A call without a valid token is not attributed to any business.
        waba: if authorized {
            business_object(state, rest)
        } else {
            None
        },
        answer: result.unwrap_or_else(|error| Answer::error(error, trace_id)),
    }
}

/// An authorised request, by path.
fn dispatch(
    state: &mut State,
    req: &GraphRequest<'_>,
    version: Option<&str>,
    rest: &[&str],
    now: DateTime<Utc>,
) -> Result<Answer, GraphError> {
    let Some(version) = version else {
        return Err(GraphError::unknown_path(req.path));
    };
    if req.method != "GET" {
        return Err(GraphError::invalid_param(format!(
            "Unsupported {} request.",
            req.method.to_ascii_lowercase()
        )));
    }
    match rest {
        [id] => node(state, id, req.query, now),
        [waba, "flows"] => flows_page(state, version, waba, req.query),
        _ => Err(GraphError::unknown_path(req.path)),
    }
}

/// The WABA a call counts against: the flow's for a node call, the listed one for a
/// listing; `None` when the object is unknown.
fn business_object(state: &State, rest: &[&str]) -> Option<String> {
    match rest {
        [id] => state
            .flows
            .iter()
            .find(|f| f.id == *id)
            .map(|f| f.waba_id.clone()),
        [waba, "flows"] => state.wabas.iter().find(|w| w == waba).cloned(),
        _ => None,
    }
}

/// Renders the answer to a metric query: `{"id", "metric": {"name", "granularity",
/// "data_points": [...]}}`, values as JSON strings for a `StringValues` flow.
pub(super) fn metric_body(query: &MetricQuery, now: DateTime<Utc>) -> String {
    let points = data::points(
        &query.flow,
        query.metric,
        query.granularity,
        query.window,
        now,
    );
    let as_strings = matches!(query.flow.traffic, Traffic::StringValues { .. });
    let data_points: Vec<Value> = points.iter().map(|p| point_json(p, as_strings)).collect();
    json!({
        "id": query.flow.id,
        "metric": {
            "name": query.metric.api_name(),
            "granularity": query.granularity.api_name(),
            "data_points": data_points,
        }
    })
    .to_string()
}

fn point_json(point: &Point, as_strings: bool) -> Value {
    let data: Vec<Value> = point
        .data
        .iter()
        .map(|(key, value)| {
            let value = match (value, as_strings) {
                (data::Value::Count(n), false) => json!(n),
                (data::Value::Ratio(r), false) => json!(r),
                // Rust prints the shortest text that parses back to the same f64.
                (data::Value::Count(n), true) => json!(n.to_string()),
                (data::Value::Ratio(r), true) => json!(r.to_string()),
            };
            json!({"key": key, "value": value})
        })
        .collect();
    json!({
        "timestamp": point.start.format("%Y-%m-%dT%H:%M:%S+0000").to_string(),
        "data": data,
    })
}

/// `GET /{version}/{id}`: a metric query when `fields` asks for `metric`, otherwise
/// the bare node.
fn node(
    state: &mut State,
    id: &str,
    query: &str,
    now: DateTime<Utc>,
) -> Result<Answer, GraphError> {
    let fields = query_param(query, "fields").unwrap_or_default();
    let flow = state.flows.iter().find(|f| f.id == id).cloned();
    let is_waba = state.wabas.iter().any(|w| w == id);

    let metric_field = split_fields(&fields)
        .into_iter()
        .find(|f| *f == "metric" || f.starts_with("metric."));
    let Some(metric_field) = metric_field else {
        return if flow.is_some() || is_waba {
            Ok(Answer::ok(json!({ "id": id }).to_string()))
        } else {
            Err(GraphError::no_such_object(id))
        };
    };

    let spec = MetricSpec::parse(metric_field)?;
    state
        .metric_log
        .push((id.to_owned(), spec.metric, spec.granularity));
    let call = Call::Metrics {
        flow_id: id,
        metric: spec.metric,
        granularity: spec.granularity,
    };
    if let Some(fault) = take_fault(&mut state.faults, &call) {
        return Ok(Answer::fault(fault));
    }

    let Some(flow) = flow else {
        return Err(if is_waba {
            GraphError::invalid_param(
                "(#100) Tried accessing nonexisting field (metric) on node type \
                 (WhatsAppBusinessAccount)"
                    .to_owned(),
            )
        } else {
            GraphError::no_such_object(id)
        });
    };
    if !data::has_enough_data(&flow) {
        return Err(GraphError::not_enough_data());
    }
    let window = Window::resolve(spec.granularity, spec.since, spec.until, now.date_naive());
    Ok(Answer::Metric(MetricQuery {
        flow,
        metric: spec.metric,
        granularity: spec.granularity,
        window,
    }))
}

/// `metric.name(X).granularity(Y)[.since(D)][.until(D)]`, names case-insensitive.
#[derive(Debug)]
struct MetricSpec {
    metric: MetricKind,
    granularity: Granularity,
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
}

impl MetricSpec {
    fn parse(field: &str) -> Result<MetricSpec, GraphError> {
        let syntax_error = || {
            GraphError::new(
                400,
                2500,
                None,
                format!("Syntax error \"Expected .modifier(value)\" in field: {field}"),
            )
        };
        let (mut name, mut granularity, mut since, mut until) = (None, None, None, None);
        let mut rest = field.strip_prefix("metric").unwrap_or(field);
        while !rest.is_empty() {
            let after_dot = rest.strip_prefix('.').ok_or_else(syntax_error)?;
            let (modifier, after_open) = after_dot.split_once('(').ok_or_else(syntax_error)?;
            let (arg, after_close) = after_open.split_once(')').ok_or_else(syntax_error)?;
            let arg = arg.trim();
            match modifier {
                "name" => name = Some(arg),
                "granularity" => granularity = Some(arg),
                "since" => since = Some(parse_date("since", arg)?),
                "until" => until = Some(parse_date("until", arg)?),
                other => {
                    return Err(GraphError::invalid_param(format!(
                        "(#100) Unknown modifier ({other}) on field (metric)"
                    )));
                }
            }
            rest = after_close;
        }

        let name = name.ok_or_else(|| required("name"))?;
        let metric = MetricKind::from_api_name(name).ok_or_else(|| {
            let names: Vec<&str> = MetricKind::ALL.iter().map(|m| m.api_name()).collect();
            GraphError::invalid_param(format!(
                "(#100) Param name must be one of {{{}}}",
                names.join(", ")
            ))
        })?;
        let granularity = granularity.ok_or_else(|| required("granularity"))?;
        let granularity = Granularity::from_api_name(granularity).ok_or_else(|| {
            GraphError::invalid_param(
                "(#100) Param granularity must be one of {DAY, HOUR, LIFETIME}".to_owned(),
            )
        })?;
        Ok(MetricSpec {
            metric,
            granularity,
            since,
            until,
        })
    }
}

fn required(param: &str) -> GraphError {
    GraphError::invalid_param(format!("(#100) The parameter {param} is required"))
}

fn parse_date(param: &str, arg: &str) -> Result<NaiveDate, GraphError> {
    NaiveDate::parse_from_str(arg, "%Y-%m-%d").map_err(|_| {
        GraphError::invalid_param(format!(
            "(#100) Param {param} must be a date in YYYY-MM-DD format"
        ))
    })
}

/// `GET /{version}/{waba_id}/flows`: one page of the WABA's flows.
fn flows_page(
    state: &mut State,
    version: &str,
    waba: &str,
    query: &str,
) -> Result<Answer, GraphError> {
    if let Some(fault) = take_fault(&mut state.faults, &Call::FlowsList { waba_id: waba }) {
        return Ok(Answer::fault(fault));
    }
    if !state.wabas.iter().any(|w| w == waba) {
        return Err(GraphError::no_such_object(waba));
    }

    // An empty `fields=` asks for the defaults, as no `fields` at all does.
    let fields_param = query_param(query, "fields").filter(|f| !f.is_empty());
    let fields = split_fields(fields_param.as_deref().unwrap_or(DEFAULT_FLOW_FIELDS));
    if let Some(unknown) = fields.iter().find(|f| !FLOW_FIELDS.contains(f)) {
        return Err(GraphError::invalid_param(format!(
            "(#100) Tried accessing nonexisting field ({unknown}) on node type (WhatsAppFlow)"
        )));
    }
    let limit = match query_param(query, "limit") {
        None => state.page_size,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                GraphError::invalid_param(
                    "(#100) Param limit must be a positive integer".to_owned(),
                )
            })?,
    };
    let cursor = match query_param(query, "after") {
        None => Cursor {
            offset: 0,
            empty_page: false,
        },
        Some(text) => Cursor::decode(&text).ok_or_else(|| {
            GraphError::invalid_param("(#100) The after cursor is not valid".to_owned())
        })?,
    };

    let flows: Vec<&SandboxFlow> = state.flows.iter().filter(|f| f.waba_id == waba).collect();
    if cursor.offset >= flows.len() && state.endless_paging {
        // A paging bug of the kind a client must survive: one more empty page,
        // with a cursor never named before, again and again.
        let next = Cursor {
            offset: cursor.offset + 1,
            empty_page: false,
        };
        let url = format!(
            "{GRAPH_ORIGIN}/{version}/{waba}/flows?limit={limit}&after={}",
            next.encode()
        );
        return Ok(Answer::ok(
            json!({"data": [], "paging": {"cursors": {"before": cursor.encode(), "after": next.encode()}, "next": url}})
                .to_string(),
        ));
    }
    if cursor.offset >= flows.len() {
        // Like Graph, an empty result carries no paging at all.
        return Ok(Answer::ok(json!({ "data": [] }).to_string()));
    }

    let (data, next) = if cursor.empty_page {
        // The inserted empty page: nothing, but a `next` to the real next page.
        let next = Cursor {
            offset: cursor.offset,
            empty_page: false,
        };
        (Vec::new(), Some(next))
    } else {
        let end = cursor.offset.saturating_add(limit).min(flows.len());
        let data: Vec<Value> = flows[cursor.offset..end]
            .iter()
            .map(|flow| flow_json(flow, &fields))
            .collect();
        let next = (end < flows.len() || state.endless_paging).then(|| Cursor {
            offset: end,
            empty_page: state.empty_page_after == Some(cursor.offset / limit),
        });
        (data, next)
    };

    let after = next.unwrap_or(Cursor {
        offset: flows.len(),
        empty_page: false,
    });
    let mut paging = json!({
        "cursors": {"before": cursor.encode(), "after": after.encode()},
    });
    if let Some(next) = next {
        let mut url = format!("{GRAPH_ORIGIN}/{version}/{waba}/flows?");
        if let Some(fields) = &fields_param {
            url.push_str(&format!("fields={}&", percent_encode(fields)));
        }
        url.push_str(&format!("limit={limit}&after={}", next.encode()));
        paging["next"] = json!(url);
    }
    Ok(Answer::ok(
        json!({ "data": data, "paging": paging }).to_string(),
    ))
}

/// One flow of the listing with only the requested fields.
fn flow_json(flow: &SandboxFlow, fields: &[&str]) -> Value {
    let mut object = Map::new();
    for field in fields {
        let value = match *field {
            "id" => json!(flow.id),
            "name" => json!(flow.name),
            "status" => json!(flow.status),
            "categories" => json!(["OTHER"]),
            "validation_errors" => json!([]),
            "data_api_version" => json!(flow.data_api_version),
            "endpoint_uri" => json!(format!("https://flows.example.com/endpoint/{}", flow.id)),
            "health_status" => health_status(flow),
            // Unknown fields were rejected before any flow was rendered.
            _ => continue,
        };
        object.insert((*field).to_owned(), value);
    }
    Value::Object(object)
}

/// `health_status` as Graph shapes it: the overall verdict and one entry per entity.
fn health_status(flow: &SandboxFlow) -> Value {
    let mut flow_entity = json!({
        "entity_type": "FLOW",
        "id": flow.id,
        "can_send_message": flow.can_send_message,
    });
    match flow.can_send_message.as_str() {
        "BLOCKED" => {
            flow_entity["errors"] = json!([{
                "error_code": 141014,
                "error_description": "The flow endpoint is unavailable.",
                "possible_solution": "Check that the endpoint is reachable and answers health checks.",
            }]);
        }
        "LIMITED" => {
            flow_entity["additional_info"] =
                json!(["The flow endpoint has a high error rate; sending is throttled."]);
        }
        _ => {}
    }
    json!({
        "can_send_message": flow.can_send_message,
        "entities": [
            flow_entity,
            {"entity_type": "WABA", "id": flow.waba_id, "can_send_message": "AVAILABLE"},
        ],
    })
}

/// A listing position. Encoded as opaque base64url text, as Graph's cursors look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    offset: usize,
    /// The page this cursor opens is the inserted empty page.
    empty_page: bool,
}

impl Cursor {
    fn encode(self) -> String {
        let text = format!("sandbox:{}:{}", self.offset, u8::from(self.empty_page));
        base64url_encode(text.as_bytes())
    }

    fn decode(text: &str) -> Option<Cursor> {
        let bytes = base64url_decode(text)?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.strip_prefix("sandbox:")?.split(':');
        let offset = parts.next()?.parse().ok()?;
        let empty_page = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        Some(Cursor { offset, empty_page })
    }
}

/// Which kind of call a fault is checked against.
#[derive(Debug)]
enum Call<'a> {
    Metrics {
        flow_id: &'a str,
        metric: MetricKind,
        granularity: Granularity,
    },
    FlowsList {
        waba_id: &'a str,
    },
}

fn fault_matches(target: &FaultTarget, call: &Call<'_>) -> bool {
    fn matches<T: PartialEq + ?Sized>(wanted: Option<&T>, actual: &T) -> bool {
        wanted.is_none_or(|w| w == actual)
    }
    match (target, call) {
        (
            FaultTarget::Metrics {
                flow_id,
                metric,
                granularity,
            },
            Call::Metrics {
                flow_id: id,
                metric: m,
                granularity: g,
            },
        ) => {
            matches(flow_id.as_deref(), *id)
                && matches(metric.as_ref(), m)
                && matches(granularity.as_ref(), g)
        }
        (FaultTarget::FlowsList { waba_id }, Call::FlowsList { waba_id: w }) => {
            matches(waba_id.as_deref(), *w)
        }
        _ => false,
    }
}

/// The newest matching fault, used up by one if it is counted.
fn take_fault(faults: &mut Vec<(FaultTarget, Fault)>, call: &Call<'_>) -> Option<Fault> {
    // A fault injected with `times: Some(0)` never fires; drop such leftovers first.
    faults.retain(|(_, fault)| fault.times != Some(0));
    let index = faults
        .iter()
        .rposition(|(target, _)| fault_matches(target, call))?;
    let fault = faults[index].1.clone();
    if let Some(times) = &mut faults[index].1.times {
        *times -= 1;
        if *times == 0 {
            faults.remove(index);
        }
    }
    Some(fault)
}

/// The newest transport fault matching this call (a metric query or a listing), used
/// up by one if it is counted. Calls that are neither never match.
fn take_transport(state: &mut State, rest: &[&str], query: &str) -> Option<Transport> {
    let fields = query_param(query, "fields").unwrap_or_default();
    let spec = split_fields(&fields)
        .into_iter()
        .find(|f| *f == "metric" || f.starts_with("metric."))
        .and_then(|f| MetricSpec::parse(f).ok());
    let call = match (rest, spec) {
        ([id], Some(spec)) => Call::Metrics {
            flow_id: id,
            metric: spec.metric,
            granularity: spec.granularity,
        },
        ([waba, "flows"], _) => Call::FlowsList { waba_id: waba },
        _ => return None,
    };
    let transports = &mut state.transports;
    transports.retain(|(_, _, times)| *times != Some(0));
    let index = transports
        .iter()
        .rposition(|(target, _, _)| fault_matches(target, &call))?;
    let transport = transports[index].1.clone();
    if let Some(times) = &mut transports[index].2 {
        *times -= 1;
        if *times == 0 {
            transports.remove(index);
        }
    }
    Some(transport)
}

/// A Graph error before it is rendered.
#[derive(Debug)]
pub(super) struct GraphError {
    status: u16,
    code: u32,
    subcode: Option<u32>,
    message: String,
    /// `error_user_title` and `error_user_msg`, when Graph sends them.
    user_text: Option<(&'static str, &'static str)>,
}

impl GraphError {
    fn new(status: u16, code: u32, subcode: Option<u32>, message: String) -> GraphError {
        GraphError {
            status,
            code,
            subcode,
            message,
            user_text: None,
        }
    }

    fn invalid_param(message: String) -> GraphError {
        GraphError::new(400, 100, None, message)
    }

    fn no_such_object(id: &str) -> GraphError {
        GraphError::new(
            400,
            100,
            Some(33),
            format!(
                "Unsupported get request. Object with ID '{id}' does not exist, cannot be \
                 loaded due to missing permissions, or does not support this operation. \
                 Please read the Graph API documentation at \
                 https://developers.facebook.com/docs/graph-api"
            ),
        )
    }

    fn unknown_path(path: &str) -> GraphError {
        GraphError::new(400, 2500, None, format!("Unknown path components: {path}"))
    }

    /// Never echoes the token that was sent.
    fn invalid_token() -> GraphError {
        GraphError::new(
            401,
            190,
            Some(467),
            "Error validating access token: The access token is invalid.".to_owned(),
        )
    }

    /// Error 139006. Its HTTP status, subcode and texts are undocumented; the sandbox
    /// sends 400, no subcode, and the two texts Meta's pages quote.
    fn not_enough_data() -> GraphError {
        GraphError {
            user_text: Some((
                "Metrics threshold is not reached",
                "The flow has fewer than 250 endpoint requests, so there is not enough data \
                 to provide metrics.",
            )),
            ..GraphError::new(
                400,
                139006,
                None,
                "Not enough data to provide flow metrics".to_owned(),
            )
        }
    }

    fn body(&self, trace_id: &str) -> String {
        let mut body = error_envelope(self.code, self.subcode, &self.message, trace_id);
        if let Some((title, message)) = self.user_text {
            body["error"]["error_user_title"] = json!(title);
            body["error"]["error_user_msg"] = json!(message);
        }
        body.to_string()
    }
}

/// `{"error": {"message", "type", "code", "error_subcode"?, "is_transient"?, "fbtrace_id"}}`.
pub(super) fn error_envelope(
    code: u32,
    subcode: Option<u32>,
    message: &str,
    trace_id: &str,
) -> Value {
    // Graph calls a missing object a GraphMethodException and nearly everything else,
    // throttling included, an OAuthException.
    let kind = if code == 100 && subcode == Some(33) {
        "GraphMethodException"
    } else {
        "OAuthException"
    };
    let mut error = json!({
        "message": message,
        "type": kind,
        "code": code,
        "fbtrace_id": trace_id,
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    if matches!(code, 1 | 2) {
        error["is_transient"] = json!(true);
    }
    json!({ "error": error })
}

/// An `fbtrace_id`-like string: "A" and 22 base64url characters drawn from the seed.
pub(super) fn trace_id(seed: u64) -> String {
    let bytes: Vec<u8> = [data::mix(seed), data::mix(!seed)]
        .iter()
        .flat_map(|n| n.to_le_bytes())
        .collect();
    let mut id = String::from("A");
    id.push_str(&base64url_encode(&bytes)[..22]);
    id
}

/// Calls in the last hour, for the usage headers.
#[derive(Debug, Default)]
pub(super) struct Usage {
    app: VecDeque<DateTime<Utc>>,
    by_waba: HashMap<String, VecDeque<DateTime<Utc>>>,
}

/// Hourly allowances the percentages are computed against. 5000 is Meta's documented
/// WhatsApp Business Management allowance for a WABA with a registered number; the app
/// figure is undocumented and made up, larger because it spans every WABA.
const WABA_CALLS_PER_HOUR: u64 = 5000;
const APP_CALLS_PER_HOUR: u64 = 10_000;

impl Usage {
    /// Counts one call and returns the `X-App-Usage` and `X-Business-Use-Case-Usage`
    /// header values. With no known business object the latter is `{}`.
    pub(super) fn record(&mut self, waba: Option<&str>, now: DateTime<Utc>) -> (String, String) {
        let app_calls = count_call(&mut self.app, now);
        let app = json!({
            "call_count": percent(app_calls, APP_CALLS_PER_HOUR),
            "total_cputime": percent(app_calls, APP_CALLS_PER_HOUR * 4),
            "total_time": percent(app_calls, APP_CALLS_PER_HOUR * 2),
        });
        let mut business = Map::new();
        if let Some(waba) = waba {
            let calls = count_call(self.by_waba.entry(waba.to_owned()).or_default(), now);
            business.insert(
                waba.to_owned(),
                json!([{
                    "type": "whatsapp_business_management",
                    "call_count": percent(calls, WABA_CALLS_PER_HOUR),
                    "total_cputime": percent(calls, WABA_CALLS_PER_HOUR * 4),
                    "total_time": percent(calls, WABA_CALLS_PER_HOUR * 2),
                    "estimated_time_to_regain_access": 0,
                }]),
            );
        }
        (app.to_string(), Value::Object(business).to_string())
    }
}

/// Adds a call at `now` and returns how many fall in the rolling hour.
fn count_call(calls: &mut VecDeque<DateTime<Utc>>, now: DateTime<Utc>) -> u64 {
    calls.push_back(now);
    let hour_ago = now - TimeDelta::hours(1);
    while calls.front().is_some_and(|t| *t <= hour_ago) {
        calls.pop_front();
    }
    calls.len() as u64
}

/// Percentage of an allowance used; never 100 on its own (the sandbox only throttles
/// through injected faults).
fn percent(calls: u64, allowance: u64) -> u64 {
    (calls * 100 / allowance).min(99)
}

fn is_version(segment: &str) -> bool {
    let Some((major, minor)) = segment.strip_prefix('v').and_then(|v| v.split_once('.')) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

/// Splits a `fields` value at the commas that are not inside `(...)` or `{...}`.
fn split_fields(fields: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in fields.char_indices() {
        match c {
            '(' | '{' => depth += 1,
            ')' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(fields[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(fields[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The first value of a query parameter, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Unpadded base64url, so a cursor needs no escaping in a URL.
fn base64url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for text in ["", "a", "ab", "abc", "abcd", "sandbox:12:1"] {
            let encoded = base64url_encode(text.as_bytes());
            assert!(!encoded.contains(['=', '+', '/']));
            assert_eq!(base64url_decode(&encoded).as_deref(), Some(text.as_bytes()));
        }
        assert_eq!(base64url_encode(b"abc"), "YWJj");
        assert_eq!(base64url_decode("!!!!"), None);
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            offset: 42,
            empty_page: true,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("QVFIUm"), None);
    }

    #[test]
    fn fields_split_outside_parentheses() {
        assert_eq!(
            split_fields("id, metric.name(A).granularity(DAY),health_status{a,b}"),
            [
                "id",
                "metric.name(A).granularity(DAY)",
                "health_status{a,b}"
            ]
        );
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let query = "fields=metric.name%28ENDPOINT_REQUEST_COUNT%29&limit=5";
        assert_eq!(
            query_param(query, "fields").as_deref(),
            Some("metric.name(ENDPOINT_REQUEST_COUNT)")
        );
        assert_eq!(query_param(query, "limit").as_deref(), Some("5"));
        assert_eq!(query_param(query, "after"), None);
        assert_eq!(percent_encode("id,name"), "id%2Cname");
    }

    #[test]
    fn metric_spec_parses_and_reports_errors() {
        let spec = MetricSpec::parse(
            "metric.name(endpoint_request_count).granularity(day).since(2024-01-28)",
        )
        .expect("valid spec");
        assert_eq!(spec.metric, MetricKind::RequestCount);
        assert_eq!(spec.granularity, Granularity::Day);
        assert_eq!(spec.since, NaiveDate::from_ymd_opt(2024, 1, 28));
        assert_eq!(spec.until, None);

        let error = MetricSpec::parse("metric.name(NOPE).granularity(DAY)").expect_err("bad name");
        assert_eq!(error.code, 100);
        assert!(
            error
                .message
                .starts_with("(#100) Param name must be one of {")
        );
        let error =
            MetricSpec::parse("metric.name(ENDPOINT_REQUEST_COUNT").expect_err("unbalanced");
        assert_eq!(error.code, 2500);
        let error = MetricSpec::parse("metric.granularity(DAY)").expect_err("no name");
        assert!(error.message.contains("name is required"));
    }

    #[test]
    fn usage_grows_with_calls_and_forgets_after_an_hour() {
        let mut usage = Usage::default();
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        for _ in 0..99 {
            usage.record(Some("1"), t0);
        }
        let (app, business) = usage.record(Some("1"), t0);
        assert_eq!(app, r#"{"call_count":1,"total_cputime":0,"total_time":0}"#);
        assert!(business.contains(r#""call_count":2"#));
        let (app, business) = usage.record(None, t0 + TimeDelta::hours(2));
        assert_eq!(app, r#"{"call_count":0,"total_cputime":0,"total_time":0}"#);
        assert_eq!(business, "{}");
    }

    #[test]
    fn versions_need_a_v_and_two_numbers() {
        assert!(is_version("v23.0"));
        assert!(is_version("v9.10"));
        assert!(!is_version("23.0"));
        assert!(!is_version("v23"));
        assert!(!is_version("flows"));
    }
}
