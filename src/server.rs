//! The only module that serves HTTP: `/metrics` (from memory, gzip when asked),
//! `/` (a landing page), `/-/healthy`, `/-/ready` and `POST /-/reload`, over
//! plain TCP or TLS, behind basic auth when the web config ([`crate::web`])
//! asks. Takes an already-bound listener and a shutdown future; on shutdown it
//! stops accepting and lets open connections finish their request. A reload
//! ([`reload`], for `POST /-/reload` and the app's SIGHUP) reads the config
//! file and the web config file again, both or neither; the web config in use
//! is read per request (basic auth, headers) and per connection (TLS), so a
//! switch between plain HTTP and TLS applies to new connections only.
//!
//! Limits: MAX_CONNECTIONS at once, a 16 KiB request head, 10 s for a head or a
//! TLS handshake, no request body read (64 KiB at most declared), connections
//! recycled after two minutes.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::exporter::{self, Exporter, Readiness, ReloadError};
use crate::web::{Web, WebConfig};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; further ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// Largest request head (request line and headers) read; larger is refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client gets to send its request head (and to finish a TLS
/// handshake); an idle keep-alive connection is closed after it too.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body accepted (by Content-Length); none is ever read.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;
/// A connection older than this is closed once its current request is
/// answered; a client stuck reading a response loses it CLOSE_GRACE later.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(120);
/// Time the request in progress gets when its connection is being closed.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A response body made of a few ready chunks, sent without copying them.
#[derive(Debug, Default)]
pub struct Chunks(std::collections::VecDeque<Bytes>);

impl Chunks {
    fn one(b: impl Into<Bytes>) -> Chunks {
        Chunks(std::iter::once(b.into()).collect())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

/// Serves plain HTTP without authentication until `shutdown` resolves; see
/// [`serve_web`].
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_web(listener, exporter, Arc::new(WebConfig::default()), shutdown).await
}

/// Serves with the web config's TLS, basic auth and headers until `shutdown`
/// resolves, then lets open connections finish their request (up to 10 s).
/// A reload swaps the web config in `web`: each new request gets its basic
/// auth and headers, each new connection its TLS settings.
pub async fn serve_web(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    web: Arc<WebConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Stop accepting while MAX_CONNECTIONS are open, so a flood of clients
        // cannot exhaust memory or file descriptors.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let ctx = Ctx {
            exporter: exporter.clone(),
            web: web.clone(),
            stop: stop.clone(),
            peer,
        };
        // Each connection task is owned by `connections`, which waits for it below.
        connections.spawn(async move {
            connection(stream, ctx).await;
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    // Every connection ends within CLOSE_GRACE of `stop`; this is a backstop.
    if tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), connections.wait())
        .await
        .is_err()
    {
        warn!("connections still open after the grace period");
    }
    Ok(())
}

/// What a connection task needs.
struct Ctx {
    exporter: Arc<Exporter>,
    web: Arc<WebConfig>,
    stop: CancellationToken,
    peer: std::net::SocketAddr,
}

/// One accepted connection: the TLS handshake if the web config in use asks
/// for TLS, then HTTP/1. A reload that turns TLS on or off changes what new
/// connections get; this one stays as it started until it closes (at most
/// MAX_CONNECTION_AGE).
async fn connection(mut stream: TcpStream, ctx: Ctx) {
    // Responses are written whole; do not let Nagle hold back their tail.
    let _ = stream.set_nodelay(true);
    let Some(tls) = ctx.web.current().tls_config() else {
        return http(stream, ctx).await;
    };
    // A TLS client speaks first, with a handshake record (0x16). Anything
    // else is most likely plain HTTP: say so, as Go's servers do, and close.
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first)) => r,
        () = ctx.stop.cancelled() => return,
    };
    match peeked {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            // Read what was sent (bounded) so closing does not reset the
            // connection before the client reads the answer.
            let mut head = vec![0u8; MAX_HEAD_BYTES];
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut head)).await;
            let _ = stream.write_all(PLAIN_HTTP_TO_TLS).await;
            let _ = stream.shutdown().await;
            debug!(peer = %ctx.peer, "plain HTTP on the TLS port refused");
            return;
        }
        _ => return,
    }
    // The handshake gets the same time as a request head, so a slow client
    // cannot hold a connection permit for long.
    let accepted = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, TlsAcceptor::from(tls).accept(stream)) => r,
        () = ctx.stop.cancelled() => return,
    };
    match accepted {
        Ok(Ok(stream)) => http(stream, ctx).await,
        Ok(Err(e)) => debug!(peer = %ctx.peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(peer = %ctx.peer, "TLS handshake timed out"),
    }
}

const PLAIN_HTTP_TO_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// HTTP/1 on a (possibly TLS) stream until the client closes, the server
/// stops, or the connection is MAX_CONNECTION_AGE old; in the last two cases
/// the request in progress gets CLOSE_GRACE to finish.
async fn http<S>(stream: S, ctx: Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ctx {
        exporter,
        web,
        stop,
        peer,
    } = ctx;
    let service = hyper::service::service_fn(move |req| {
        let exporter = exporter.clone();
        let web = web.clone();
        async move { Ok::<_, Infallible>(respond(&exporter, &web, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stop.cancelled() => None,
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(CLOSE_GRACE, conn)
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The checks every request goes through before its route: body size, then
/// basic auth; then the configured headers on whatever the answer is. The web
/// config is the one in use when the request arrives, even on a connection
/// opened before a reload: a user the reload removed is refused at once.
async fn respond(
    exporter: &Arc<Exporter>,
    config: &Arc<WebConfig>,
    req: Request<Incoming>,
) -> Response<Chunks> {
    let web: Arc<Web> = config.current();
    let mut response = if let Some(refused) = refuse_body(&req) {
        refused
    } else if !web.authorized(req.headers()).await {
        let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        r
    } else if req.uri().path() == "/-/reload" {
        reload_route(exporter, config, &req).await
    } else {
        route(exporter, &req)
    };
    for (name, value) in web.headers() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// No route reads a request body, so none is ever read: a body larger than
/// MAX_BODY_BYTES (by its Content-Length) gets 413 and one of unknown length
/// (chunked) 411, both closing the connection rather than draining it.
fn refuse_body(req: &Request<Incoming>) -> Option<Response<Chunks>> {
    let size = req.body().size_hint();
    let mut r = match size.upper() {
        Some(n) if n <= MAX_BODY_BYTES => return None,
        Some(_) => plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        None => plain(
            StatusCode::LENGTH_REQUIRED,
            "a request body needs a Content-Length\n",
        ),
    };
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

fn route(exporter: &Exporter, req: &Request<Incoming>) -> Response<Chunks> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut response = match req.uri().path() {
        "/metrics" => metrics(exporter, req),
        "/" => html(landing_page(exporter)),
        "/-/healthy" => plain(StatusCode::OK, "OK\n"),
        "/-/ready" => match exporter.readiness() {
            Readiness::Ready => plain(StatusCode::OK, "OK\n"),
            Readiness::NotReady(why) => {
                let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "");
                *r.body_mut() = Chunks::one(format!("not ready: {why}\n"));
                r
            }
        },
        _ => plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    };
    if req.method() == Method::HEAD {
        *response.body_mut() = Chunks::default();
    }
    response
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
async fn reload_route(
    exporter: &Arc<Exporter>,
    web: &Arc<WebConfig>,
    req: &Request<Incoming>,
) -> Response<Chunks> {
    if req.method() != Method::POST {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only POST\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (status, text) = match reload(exporter.clone(), web.clone()).await {
        Ok(()) => (StatusCode::OK, "reloaded\n".to_owned()),
        Err(e @ ReloadError::Invalid { .. }) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let mut r = plain(status, "");
    *r.body_mut() = Chunks::one(text);
    r
}

fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
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

fn metrics(exporter: &Exporter, req: &Request<Incoming>) -> Response<Chunks> {
    let scrape = exporter.scrape(accepts_gzip(req));
    let mut r = Response::new(Chunks(scrape.parts.into()));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if scrape.gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Chunks> {
    let mut r = Response::new(Chunks::one(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
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

/// Escapes text for HTML; flow names come from Graph and are not trusted.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn landing_page(exporter: &Exporter) -> String {
    let granularities: Vec<_> = exporter
        .config()
        .granularities
        .iter()
        .map(|g| g.granularity)
        .collect();
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>flows-exporter</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>\
         <h1>flows-exporter</h1><p>Prometheus exporter for the WhatsApp Flows Metrics API. \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/-/healthy\">/-/healthy</a> · \
         <a href=\"/-/ready\">/-/ready</a></p>",
    );
    let ready = match exporter.readiness() {
        Readiness::Ready => "yes".to_owned(),
        Readiness::NotReady(why) => format!("no: {}", esc(&why)),
    };
    let _ = write!(
        page,
        "<p>Version {}. Ready: {ready}. Graph API {} at {}.</p>",
        env!("CARGO_PKG_VERSION"),
        esc(&exporter.config().graph.api_version),
        esc(&exporter.config().graph.base_url),
    );
    let wabas = exporter.waba_rows();
    if !wabas.is_empty() {
        page.push_str("<h2>Discovery</h2><table><tr><th>WABA</th><th>last listed</th><th>last listing</th></tr>");
        for (waba, state) in wabas {
            let last = match state.last_success {
                Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                None => "never".into(),
            };
            let status = match (state.last_error, state.truncated) {
                (Some(class), _) => format!("failing: {}", class.label()),
                (None, Some(t)) => format!("cut short: {}", esc(&t.describe())),
                (None, None) if state.last_success.is_some() => "ok".to_owned(),
                (None, None) => "not listed yet".to_owned(),
            };
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{last}</td><td>{status}</td></tr>",
                esc(&waba)
            );
        }
        page.push_str("</table><h2>Flows</h2>");
    }
    page.push_str("<table><tr><th>flow id</th><th>name</th><th>WABA</th><th>status</th><th>can_send_message</th><th>polled</th>");
    for g in &granularities {
        let _ = write!(page, "<th>last answer ({})</th>", g.label());
    }
    page.push_str("</tr>");
    for exporter::FlowRow { flow, last_answer } in exporter.flow_rows() {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(&flow.id),
            esc(&flow.name),
            esc(&flow.waba_id),
            esc(flow.status.as_str()),
            esc(&flow.can_send_message),
            if flow.is_polled() { "yes" } else { "no" },
        );
        for g in &granularities {
            let cell = match last_answer.get(g).copied().flatten() {
                Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                None => "–".into(),
            };
            let _ = write!(page, "<td>{cell}</td>");
        }
        page.push_str("</tr>");
    }
    page.push_str("</table></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escapes_html() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
