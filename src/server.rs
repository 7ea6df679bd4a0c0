//! The only module that serves HTTP: `/metrics` (from memory, gzip when asked),
//! `/` (a landing page), `/-/healthy`, `/-/ready` and `POST /-/reload`. Takes an already-bound
//! listener and a shutdown future; on shutdown it stops accepting and lets open
//! connections finish.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::exporter::{self, Exporter, ReloadError};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; further ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// Largest request head (request line and headers) read; larger is refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client gets to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Serves until `shutdown` resolves, then waits (up to 10 s) for open
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        // Responses are written whole; do not let Nagle hold back their tail.
        let _ = stream.set_nodelay(true);
        let exporter = exporter.clone();
        let service = hyper::service::service_fn(move |req| {
            let exporter = exporter.clone();
            async move { Ok::<_, Infallible>(route(&exporter, &req)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        // Each connection task is watched by `graceful`, which waits for it below.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after 10 s; closing them");
    }
    Ok(())
}

fn route(exporter: &Exporter, req: &Request<Incoming>) -> Response<Chunks> {
    if req.uri().path() == "/-/reload" {
        return reload(exporter, req);
    }
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
        "/-/ready" if exporter.is_ready() => plain(StatusCode::OK, "OK\n"),
        "/-/ready" => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first poll has not finished\n",
        ),
        _ => plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    };
    if req.method() == Method::HEAD {
        *response.body_mut() = Chunks::default();
    }
    response
}

/// `POST /-/reload` (Prometheus' convention): reads the config file again. The
/// answer says whether it was applied, or what is wrong with it, by key.
fn reload(exporter: &Exporter, req: &Request<Incoming>) -> Response<Chunks> {
    if req.method() != Method::POST {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only POST\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (status, text) = match exporter.reload() {
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
    let _ = write!(
        page,
        "<p>Version {}. Ready: {}. Graph API {} at {}.</p>",
        env!("CARGO_PKG_VERSION"),
        if exporter.is_ready() {
            "yes"
        } else {
            "no (first poll running)"
        },
        esc(&exporter.config().graph.api_version),
        esc(&exporter.config().graph.base_url),
    );
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
