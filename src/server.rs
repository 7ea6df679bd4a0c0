//! The only module that serves HTTP. Split by what each part does:
//!
//! - this module is the transport: it accepts on an already-bound listener,
//!   does the TLS handshake when the web config ([`crate::web`]) asks, bounds
//!   connections and their time, and on shutdown stops accepting and lets
//!   open connections finish their request;
//! - [`routes`]: the table of routes, each with its own policy (methods,
//!   authentication, body), and the exporter's routes (`/metrics` from
//!   memory, `/-/healthy`, `/-/ready`, `POST /-/reload`);
//! - [`landing`]: the landing page (`/`).
//!
//! The web config in use is read per request (basic auth, headers) and per
//! connection (TLS), so a switch between plain HTTP and TLS applies to new
//! connections only. A reload ([`reload`], for `POST /-/reload` and the app's
//! SIGHUP) reads the config file and the web config file again, both or
//! neither.
//!
//! Limits: MAX_CONNECTIONS at once, a 16 KiB request head, 10 s for a head or a
//! TLS handshake, connections recycled after two minutes.

pub mod landing;
pub mod routes;

pub use routes::{Routes, reload};

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::exporter::Exporter;
use crate::web::WebConfig;

/// Connections served at once; further ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// Largest request head (request line and headers) read; larger is refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client gets to send its request head (and to finish a TLS
/// handshake); an idle keep-alive connection is closed after it too.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Serves the exporter's routes over plain HTTP without authentication until
/// `shutdown` resolves; see [`serve_web`].
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_web(listener, exporter, Arc::new(WebConfig::default()), shutdown).await
}

/// Serves the exporter's routes (`/metrics` at its usual path) with the web
/// config's TLS, basic auth and headers until `shutdown` resolves; see
/// [`serve_routes`].
pub async fn serve_web(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    web: Arc<WebConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let routes = Arc::new(routes::exporter(
        exporter,
        web.clone(),
        DEFAULT_METRICS_PATH,
    ));
    serve_routes(listener, routes, web, shutdown).await
}

/// Where the exposition is served unless `--web.telemetry-path` says otherwise.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

/// Serves `routes` with the web config's TLS, basic auth and headers until
/// `shutdown` resolves, then lets open connections finish their request (up
/// to 10 s). A reload swaps the web config in `web`: each new request gets its
/// basic auth and headers, each new connection its TLS settings.
pub async fn serve_routes(
    listener: TcpListener,
    routes: Arc<Routes>,
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
            routes: routes.clone(),
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
    routes: Arc<Routes>,
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
        routes,
        web,
        stop,
        peer,
    } = ctx;
    let service = hyper::service::service_fn(move |req| {
        let routes = routes.clone();
        // The web config in use when the request arrives, even on a
        // connection opened before a reload: a user the reload removed is
        // refused at once.
        let web = web.current();
        async move { Ok::<_, Infallible>(routes.respond(&web, req, peer).await) }
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
