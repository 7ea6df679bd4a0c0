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
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
use crate::web::{AuthResult, WebConfig};

/// Connections open at once; at this many, a new one makes room (see
/// [`serve_routes`]).
pub const MAX_CONNECTIONS: usize = 512;
/// A client that stops reading its answer for this long loses the connection.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
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
    pub fn one(b: impl Into<Bytes>) -> Chunks {
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
    let stats: Arc<HttpStats> = exporter.telemetry_handle();
    let routes = Arc::new(routes::exporter(
        exporter,
        web.clone(),
        DEFAULT_METRICS_PATH,
    ));
    serve_routes(listener, routes, web, stats, shutdown).await
}

/// Where the exposition is served unless `--web.telemetry-path` says otherwise.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

/// Serves `routes` with the web config's TLS, basic auth and headers until
/// `shutdown` resolves, then lets open connections finish their request (up
/// to 10 s). A reload swaps the web config in `web`: each new request gets its
/// basic auth and headers, each new connection its TLS settings. `stats`
/// counts what the transport does (connections, shedding, auth).
///
/// It never stops accepting. At [`MAX_CONNECTIONS`], a new connection makes
/// room by closing the connection that has waited longest on its client
/// (for a request head or handshake, or to read an answer it stopped
/// reading); if every connection is being answered, the new one gets 503.
/// So idle or stalled clients, however many, cannot keep a new scraper out.
pub async fn serve_routes(
    listener: TcpListener,
    routes: Arc<Routes>,
    web: Arc<WebConfig>,
    stats: Arc<HttpStats>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let registry = Arc::new(Registry::default());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        if registry.len() >= MAX_CONNECTIONS {
            match registry.shed_longest_waiting() {
                Some(reason) => stats.shed(reason),
                None => {
                    stats.shed(Shed::Busy);
                    connections.spawn(refuse_busy(stream));
                    continue;
                }
            }
        }
        let conn = registry.open();
        stats.set_connections(registry.len());
        let ctx = Ctx {
            routes: routes.clone(),
            web: web.clone(),
            stop: stop.clone(),
            peer,
            conn: conn.clone(),
            stats: stats.clone(),
        };
        let registry = registry.clone();
        let stats = stats.clone();
        // Each connection task is owned by `connections`, which waits for it below.
        connections.spawn(async move {
            tokio::select! {
                () = connection(stream, ctx) => {}
                // Shed to make room for a new client.
                () = conn.shed.cancelled() => {}
            }
            registry.close(conn.id);
            stats.set_connections(registry.len());
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

/// What a full server tells a new client when every connection is being
/// answered (none waits on its client): try again in a second.
async fn refuse_busy(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 21\r\n\r\nserver busy; retry.\r\n";

/// Why a connection was closed to make room for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// It had not sent a (next) request head, or not finished its TLS
    /// handshake.
    Idle,
    /// It had stopped reading its answer.
    Stalled,
    /// Not a connection closed: a new one refused with 503 because every
    /// connection was being answered.
    Busy,
}

impl Shed {
    pub const ALL: [Shed; 3] = [Shed::Idle, Shed::Stalled, Shed::Busy];

    pub fn label(self) -> &'static str {
        match self {
            Shed::Idle => "idle",
            Shed::Stalled => "stalled",
            Shed::Busy => "busy",
        }
    }
}

/// What the transport counts; kept by the app's telemetry.
pub trait HttpCounters: Send + Sync {
    fn set_connections(&self, open: usize);
    fn shed(&self, why: Shed);
    fn auth(&self, result: AuthResult);
}

/// The counters a listener reports to.
pub type HttpStats = dyn HttpCounters;

/// The open connections of one listener, and when each started waiting on
/// its client, so the one that has waited longest can be shed.
#[derive(Debug, Default)]
struct Registry {
    conns: std::sync::Mutex<std::collections::HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

impl Registry {
    fn open(&self) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            opened: Instant::now(),
            waiting_head: AtomicU64::new(1),
            stalled_write: AtomicU64::new(0),
            shed: CancellationToken::new(),
        });
        self.lock().insert(id, conn.clone());
        conn
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Closes the connection that has waited longest on its client and says
    /// why it waited; `None` when no connection waits.
    fn shed_longest_waiting(&self) -> Option<Shed> {
        let mut conns = self.lock();
        let (id, since, why) = conns
            .values()
            .filter_map(|c| c.waiting().map(|(since, why)| (c.id, since, why)))
            .min_by_key(|(_, since, _)| *since)?;
        let _ = since;
        if let Some(conn) = conns.remove(&id) {
            conn.shed.cancel();
        }
        Some(why)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open connection as the registry sees it.
#[derive(Debug)]
struct Conn {
    id: u64,
    opened: Instant,
    /// Microseconds after `opened` (plus one) since which it waits for a
    /// request head or handshake; 0 while a request is being answered.
    waiting_head: AtomicU64,
    /// Microseconds after `opened` (plus one) since which a write is blocked
    /// because the client does not read; 0 otherwise.
    stalled_write: AtomicU64,
    shed: CancellationToken,
}

impl Conn {
    fn stamp(&self) -> u64 {
        self.opened.elapsed().as_micros() as u64 + 1
    }

    /// Since when, and why, it waits on its client, if it does. An answer
    /// stuck in a blocked write is stalled, even once hyper is done with its
    /// body and waits for the next head.
    fn waiting(&self) -> Option<(Instant, Shed)> {
        let at = |v: u64| self.opened + Duration::from_micros(v - 1);
        let head = self.waiting_head.load(Ordering::Relaxed);
        let write = self.stalled_write.load(Ordering::Relaxed);
        match (head, write) {
            (0, 0) => None,
            (h, 0) => Some((at(h), Shed::Idle)),
            (0, w) => Some((at(w), Shed::Stalled)),
            (h, w) => Some((at(h.min(w)), Shed::Stalled)),
        }
    }

    /// A request head arrived: it is being answered.
    fn answering(&self) {
        self.waiting_head.store(0, Ordering::Relaxed);
    }

    /// Its answer was written (or dropped): it waits for the next head.
    fn answered(&self) {
        self.waiting_head.store(self.stamp(), Ordering::Relaxed);
    }
}

/// Marks its connection answered when the answer's body is done with
/// (written or dropped).
struct Answering(Arc<Conn>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answered();
    }
}

/// A response body that keeps its connection marked as being answered until
/// hyper is done with it.
struct Answer {
    chunks: Chunks,
    _answering: Answering,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.chunks).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.chunks.size_hint()
    }
}

/// A stream whose blocked writes are timed: a client that stops reading its
/// answer for [`WRITE_STALL`] loses the connection, and meanwhile the
/// registry knows it is stalled (and sheds it first when full).
struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Watched<S> {
    /// A write could not go on: start (or keep) the stall clock; an error once
    /// it ran out.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.stall.is_none() {
            self.conn
                .stalled_write
                .store(self.conn.stamp(), Ordering::Relaxed);
        }
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading its answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed(&mut self) {
        if self.stall.take().is_some() {
            self.conn.stalled_write.store(0, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx).map(|r| r.map(|()| 0)),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.blocked(cx).map(|r| r.map(|()| 0)),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.blocked(cx),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a connection task needs.
struct Ctx {
    routes: Arc<Routes>,
    web: Arc<WebConfig>,
    stop: CancellationToken,
    peer: std::net::SocketAddr,
    conn: Arc<Conn>,
    stats: Arc<HttpStats>,
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
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = stream.write_all(PLAIN_HTTP_TO_TLS).await;
                let _ = stream.shutdown().await;
            })
            .await;
            debug!(peer = %ctx.peer, "plain HTTP on the TLS port refused");
            return;
        }
        _ => return,
    }
    // The handshake gets the same time as a request head, so a slow client
    // cannot hold a connection for long.
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
        conn: state,
        stats,
    } = ctx;
    let watched = Watched {
        inner: stream,
        conn: state.clone(),
        stall: None,
    };
    let service = hyper::service::service_fn(move |req| {
        state.answering();
        let answering = Answering(state.clone());
        let routes = routes.clone();
        let stats = stats.clone();
        // The web config in use when the request arrives, even on a
        // connection opened before a reload: a user the reload removed is
        // refused at once.
        let web = web.current();
        async move {
            let response = routes.respond(&web, req, peer, &*stats).await;
            Ok::<_, Infallible>(response.map(|chunks| Answer {
                chunks,
                _answering: answering,
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(watched), service);
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
