//! Routes are data: a [`Routes`] table of paths, each with its own policy
//! (the methods it answers, how it authenticates, whether it reads a request
//! body and how much) and its handler. [`Routes::respond`] applies the policy
//! the same way for every route, so a new kind of route (a signed webhook
//! that reads a bounded body and checks its signature instead of basic auth)
//! is one more row, not a new branch in every handler.
//!
//! [`exporter`] builds the exporter's table: `/metrics`, `/`, `/-/healthy`,
//! `/-/ready`, `POST /-/reload`. [`reload`] is the one reload entry point (the
//! reload route and the app's SIGHUP).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};

use super::{Chunks, HttpStats, landing};
use crate::exporter::{Exporter, Readiness, ReloadError};
use crate::web::{AuthResult, Web, WebConfig};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request body accepted by a route that never reads one (by its
/// Content-Length); it is not read either way.
pub const MAX_UNREAD_BODY_BYTES: u64 = 64 * 1024;
/// Time a route that reads a body gives the client to send all of it.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a route authenticates a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The web config's basic auth (open when it has no users).
    Web,
    /// None at the HTTP level: the handler checks what it needs (a signature).
    Handler,
}

/// Whether a route reads the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPolicy {
    /// Never read: a declared body over [`MAX_UNREAD_BODY_BYTES`] gets 413,
    /// one of unknown length (chunked) 411.
    Unread,
    /// Read whole, up to this many bytes (413 past it), within [`BODY_TIMEOUT`]
    /// (408 past it).
    Read { limit: u64 },
}

/// A request as a handler sees it: the head, the body its route read (empty
/// for [`BodyPolicy::Unread`]) and the client's address.
#[derive(Debug)]
pub struct Request {
    pub head: Parts,
    pub body: Bytes,
    pub peer: SocketAddr,
    /// The values of the route's `{name}` segments, in order.
    pub params: Vec<(String, String)>,
}

/// Matches `path` against a route's path, whose segments may be `{name}`
/// (any one non-empty segment); the named values, or `None`.
fn matches(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    if !pattern.contains('{') {
        return (pattern == path).then(Vec::new);
    }
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    let mut params = Vec::new();
    loop {
        match (p.next(), q.next()) {
            (None, None) => return Some(params),
            (Some(want), Some(got)) => {
                if let Some(name) = want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    if got.is_empty() {
                        return None;
                    }
                    params.push((name.to_owned(), got.to_owned()));
                } else if want != got {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// What answers a route.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response<Chunks>> + Send>> + Send + Sync>;

/// One row of the table.
pub struct Route {
    pub path: String,
    /// GET routes answer HEAD too, without a body.
    pub methods: &'static [Method],
    pub auth: Auth,
    pub body: BodyPolicy,
    pub handler: Handler,
    /// Told the status of a request refused for its body (too large, too
    /// slow, broken off) before the handler saw it, to count it.
    pub body_refused: Option<BodyRefused>,
}

/// See [`Route::body_refused`].
pub type BodyRefused = Arc<dyn Fn(StatusCode) + Send + Sync>;

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("auth", &self.auth)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// The routes of one listener.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    /// The 404's text: where to go instead.
    not_found: String,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            routes: Vec::new(),
            not_found: "not found; try /metrics\n".to_owned(),
        }
    }
}

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }

    /// What a path no route has is told (404).
    pub fn not_found(mut self, text: impl Into<String>) -> Routes {
        self.not_found = text.into();
        self
    }

    /// Adds a row; a later row for the same path is never reached. A path
    /// segment written `{name}` matches any one segment, handed to the
    /// handler in [`Request::params`].
    pub fn route(mut self, route: Route) -> Routes {
        self.routes.push(route);
        self
    }

    /// Answers one request by its route's policy: the body's declared size,
    /// then authentication, then the method, then the body is read (if the
    /// route reads one), then the handler; the web config's headers go on
    /// whatever the answer is. A path no route has gets 404, behind basic
    /// auth like the routes that use it.
    pub async fn respond(
        &self,
        web: &Web,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
        stats: &HttpStats,
    ) -> Response<Chunks> {
        let found = self
            .routes
            .iter()
            .find_map(|r| matches(&r.path, req.uri().path()).map(|params| (r, params)));
        let mut response = match found {
            Some((route, params)) => self.respond_by(route, params, web, req, peer, stats).await,
            None => {
                if let Some(refused) = refuse_unread_body(&req) {
                    refused
                } else if let Some(refused) = refuse_auth(web, &req, peer, stats).await {
                    refused
                } else {
                    let mut r = plain(StatusCode::NOT_FOUND, "");
                    *r.body_mut() = Chunks::one(self.not_found.clone());
                    r
                }
            }
        };
        for (name, value) in web.headers() {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }

    async fn respond_by(
        &self,
        route: &Route,
        params: Vec<(String, String)>,
        web: &Web,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
        stats: &HttpStats,
    ) -> Response<Chunks> {
        if let BodyPolicy::Unread = route.body {
            if let Some(refused) = refuse_unread_body(&req) {
                if let Some(hook) = &route.body_refused {
                    hook(refused.status());
                }
                return refused;
            }
        }
        if route.auth == Auth::Web {
            if let Some(refused) = refuse_auth(web, &req, peer, stats).await {
                return refused;
            }
        }
        let head_only = req.method() == Method::HEAD && route.methods.contains(&Method::GET);
        if !route.methods.contains(req.method()) && !head_only {
            let allow: Vec<&str> = route
                .methods
                .iter()
                .flat_map(|m| {
                    if *m == Method::GET {
                        vec!["GET", "HEAD"]
                    } else {
                        vec![m.as_str()]
                    }
                })
                .collect();
            let allow = allow.join(", ");
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "");
            *r.body_mut() = Chunks::one(format!("only {allow}\n"));
            if let Ok(v) = HeaderValue::from_str(&allow) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            return r;
        }
        let (head, body) = req.into_parts();
        let body = match route.body {
            BodyPolicy::Unread => Bytes::new(),
            BodyPolicy::Read { limit } => match read_body(body, limit).await {
                Ok(b) => b,
                Err(refused) => {
                    if let Some(hook) = &route.body_refused {
                        hook(refused.status());
                    }
                    return refused;
                }
            },
        };
        let mut response = (route.handler)(Request {
            head,
            body,
            peer,
            params,
        })
        .await;
        if head_only {
            *response.body_mut() = Chunks::default();
        }
        response
    }
}

/// A body a route never reads: refused when declared larger than
/// [`MAX_UNREAD_BODY_BYTES`] (413) or of unknown length (411), closing the
/// connection rather than draining it.
fn refuse_unread_body(req: &hyper::Request<Incoming>) -> Option<Response<Chunks>> {
    match req.body().size_hint().upper() {
        Some(n) if n <= MAX_UNREAD_BODY_BYTES => None,
        Some(_) => Some(closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        )),
        None => Some(closing(
            StatusCode::LENGTH_REQUIRED,
            "a request body needs a Content-Length\n",
        )),
    }
}

/// The web config's basic auth: `None` when the request may go on. Every
/// check is counted, except when there are no users.
async fn refuse_auth(
    web: &Web,
    req: &hyper::Request<Incoming>,
    peer: SocketAddr,
    stats: &HttpStats,
) -> Option<Response<Chunks>> {
    if web.users() == 0 {
        return None;
    }
    let result = web.authorize(req.headers(), peer.ip()).await;
    stats.auth(result);
    match result {
        AuthResult::Allowed => None,
        AuthResult::Denied => {
            let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            Some(r)
        }
        AuthResult::Limited => {
            let mut r = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; retry later\n",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Some(r)
        }
    }
}

/// Reads a whole body of at most `limit` bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, Response<Chunks>> {
    let too_large = || closing(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, limit as usize);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(plain(StatusCode::BAD_REQUEST, "request body broken off\n")),
        Err(_) => Err(closing(
            StatusCode::REQUEST_TIMEOUT,
            "request body not sent in time\n",
        )),
    }
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Chunks>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// The exporter's routes, with the exposition at `metrics_path` (`/metrics`
/// unless `--web.telemetry-path` says otherwise).
pub fn exporter(exporter: Arc<Exporter>, web: Arc<WebConfig>, metrics_path: &str) -> Routes {
    let get: &'static [Method] = &[Method::GET];
    let page_path = metrics_path.to_owned();
    let (ex1, ex2, ex3, ex4) = (
        exporter.clone(),
        exporter.clone(),
        exporter.clone(),
        exporter,
    );
    let mut routes = Routes::new().route(Route {
        path: metrics_path.to_owned(),
        methods: get,
        auth: Auth::Web,
        body: BodyPolicy::Unread,
        handler: handler(move |req| {
            let ex = ex1.clone();
            async move { metrics(&ex, &req.head) }
        }),
        body_refused: None,
    });
    if metrics_path != "/" {
        routes = routes.route(Route {
            path: "/".to_owned(),
            methods: get,
            auth: Auth::Web,
            body: BodyPolicy::Unread,
            handler: handler(move |_| {
                let ex = ex2.clone();
                let path = page_path.clone();
                async move { html(landing::page(&ex, &path)) }
            }),
            body_refused: None,
        });
    }
    routes
        .route(Route {
            path: "/-/healthy".to_owned(),
            methods: get,
            auth: Auth::Web,
            body: BodyPolicy::Unread,
            handler: handler(|_| async { plain(StatusCode::OK, "OK\n") }),
            body_refused: None,
        })
        .route(Route {
            path: "/-/ready".to_owned(),
            methods: get,
            auth: Auth::Web,
            body: BodyPolicy::Unread,
            handler: handler(move |_| {
                let ex = ex3.clone();
                async move { ready(&ex) }
            }),
            body_refused: None,
        })
        .route(Route {
            path: "/-/reload".to_owned(),
            methods: &[Method::POST],
            auth: Auth::Web,
            body: BodyPolicy::Unread,
            handler: handler(move |_| {
                let ex = ex4.clone();
                let web = web.clone();
                async move { reload_route(ex, web).await }
            }),
            body_refused: None,
        })
}

fn ready(exporter: &Exporter) -> Response<Chunks> {
    match exporter.readiness() {
        Readiness::Ready => plain(StatusCode::OK, "OK\n"),
        Readiness::NotReady(why) => {
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "");
            *r.body_mut() = Chunks::one(format!("not ready: {why}\n"));
            r
        }
    }
}

/// Reads the exporter's config file and, if the server has one, its web config
/// file again, and applies both or neither (see [`Exporter::reload_with`]):
/// a bad web config refuses the new config file too, and the other way round.
/// The new web config applies from the next request on (TLS: the next
/// connection). SIGHUP and `POST /-/reload` both come here.
///
/// The web config lives here, beside the server that uses it, rather than in
/// the exporter: the exporter only learns that something else is checked
/// with its config.
pub async fn reload(exporter: Arc<Exporter>, web: Arc<WebConfig>) -> Result<(), ReloadError> {
    // Off the runtime: a reload reads and parses files (the config, the token,
    // the web config and its certificates) with blocking I/O.
    let reloaded = tokio::task::spawn_blocking(move || {
        exporter.reload_with(|| match web.check() {
            Ok(new) => Ok(move || {
                if let Some(new) = new {
                    web.swap(new);
                }
            }),
            Err(error) => Err(ReloadError::Invalid {
                path: web.path().unwrap_or(Path::new("")).to_owned(),
                error,
            }),
        })
    });
    match reloaded.await {
        Ok(result) => result,
        // A blocking task is cancelled only when the runtime shuts down, and
        // then no one awaits this; what is left is a panic, passed on.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `POST /-/reload` (Prometheus' convention): see [`reload`]. The answer says
/// whether it was applied, or what is wrong, by file and key.
async fn reload_route(exporter: Arc<Exporter>, web: Arc<WebConfig>) -> Response<Chunks> {
    let (status, text) = match reload(exporter, web).await {
        Ok(()) => (StatusCode::OK, "reloaded\n".to_owned()),
        Err(e @ ReloadError::Invalid { .. }) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let mut r = plain(status, "");
    *r.body_mut() = Chunks::one(text);
    r
}

fn accepts_gzip(head: &Parts) -> bool {
    head.headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn metrics(exporter: &Exporter, head: &Parts) -> Response<Chunks> {
    let scrape = exporter.scrape(accepts_gzip(head));
    let mut r = Response::new(Chunks(scrape.parts.into()));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if scrape.gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// A plain-text answer.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Chunks> {
    let mut r = Response::new(Chunks::one(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A plain-text answer that closes the connection (a body left unread or
/// half sent is not drained).
fn closing(status: StatusCode, text: &'static str) -> Response<Chunks> {
    let mut r = plain(status, text);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn html(body: String) -> Response<Chunks> {
    let mut r = Response::new(Chunks::one(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The call-metrics intake's route on the webhook listener.
pub const INTAKE_PATH: &str = "/calls/{page_id}/metrics";
/// Largest call-metrics body accepted (the documented one is under 1 KB).
pub const MAX_INTAKE_BYTES: u64 = 64 * 1024;

/// The webhook listener's routes: `path` answers Meta's subscription check
/// (GET) and its signed payloads (POST, up to
/// [`webhook::MAX_BODY_BYTES`](crate::webhook::MAX_BODY_BYTES)). The route
/// has no basic auth: the signature (POST) and the verify token (GET) are its
/// authentication. Flow statuses a payload puts in force go to the exporter.
pub fn webhooks(
    receiver: Arc<crate::webhook::Receiver>,
    exporter: Arc<Exporter>,
    path: &str,
) -> Routes {
    use crate::webhook::{Handshake, IntakeResult, Received, RequestResult};
    let counted = receiver.clone();
    let intake = receiver.clone();
    let intake_route = Route {
        path: INTAKE_PATH.to_owned(),
        methods: &[Method::POST],
        auth: Auth::Handler,
        body: BodyPolicy::Read {
            limit: MAX_INTAKE_BYTES,
        },
        handler: handler(move |req| {
            let receiver = intake.clone();
            async move {
                let page = req
                    .params
                    .iter()
                    .find(|(k, _)| k == "page_id")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let authorization = req
                    .head
                    .headers
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes().to_vec());
                match receiver.intake(page, authorization, req.body).await {
                    IntakeResult::Accepted => plain(StatusCode::ACCEPTED, "accepted\n"),
                    IntakeResult::Duplicate => plain(
                        StatusCode::ACCEPTED,
                        "already received; not recorded or sent again\n",
                    ),
                    IntakeResult::Unauthorized => {
                        let mut r = plain(StatusCode::UNAUTHORIZED, "bearer token required\n");
                        r.headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                        r
                    }
                    IntakeResult::UnknownPage => plain(
                        StatusCode::NOT_FOUND,
                        "this Page is not configured ([[pages]])\n",
                    ),
                    IntakeResult::Invalid(e) => {
                        let mut r = plain(StatusCode::BAD_REQUEST, "");
                        *r.body_mut() = Chunks::one(format!("{e}\n"));
                        r
                    }
                    IntakeResult::Failed(_) => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "not stored; send it again\n",
                    ),
                }
            }
        }),
        body_refused: None,
    };
    Routes::new()
        .not_found(format!(
            "not found; webhooks go to {path}, call metrics to /calls/{{page_id}}/metrics\n"
        ))
        .route(intake_route)
        .route(Route {
            path: path.to_owned(),
            methods: &[Method::GET, Method::POST],
            auth: Auth::Handler,
            body: BodyPolicy::Read {
                limit: crate::webhook::MAX_BODY_BYTES,
            },
            handler: handler(move |req| {
                let receiver = receiver.clone();
                let exporter = exporter.clone();
                async move {
                    if req.head.method != Method::POST {
                        let query = req.head.uri.query().unwrap_or("");
                        return match receiver.handshake(query) {
                            Handshake::Verified(challenge) => {
                                let mut r = plain(StatusCode::OK, "");
                                *r.body_mut() = Chunks::one(challenge);
                                r
                            }
                            Handshake::Refused => {
                                plain(StatusCode::FORBIDDEN, "verification refused\n")
                            }
                        };
                    }
                    let signature = req
                        .head
                        .headers
                        .get("x-hub-signature-256")
                        .map(|v| v.as_bytes().to_vec());
                    match receiver.receive(signature, req.body).await {
                        Received::Accepted(accepted) => {
                            if !accepted.statuses.is_empty() {
                                let statuses = accepted.statuses;
                                // Rendering the flows again is CPU work.
                                let _ = tokio::task::spawn_blocking(move || {
                                    exporter.apply_pushed_statuses(&statuses)
                                })
                                .await;
                            }
                            plain(StatusCode::OK, "OK\n")
                        }
                        Received::BadSignature(_) => {
                            plain(StatusCode::UNAUTHORIZED, "bad signature\n")
                        }
                        Received::Failed(_) => plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "not stored; send it again\n",
                        ),
                    }
                }
            }),
            body_refused: Some(Arc::new(move |status| {
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    counted.metrics().request(RequestResult::TooLarge);
                }
            })),
        })
}
