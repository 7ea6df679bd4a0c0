//! The HTTP edge against hostile clients on loopback, as an attacker on the
//! network would try it: connections that send nothing, clients that ask for
//! a large answer and never read it, a flood of wrong passwords, and all of
//! them at once. In each, a new client must get its answer within a second,
//! and the right password must be answered fast. Bounded in connections and
//! time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flows_exporter::server::routes::{Auth, BodyPolicy, Route, Routes};
use flows_exporter::server::{self, HttpStats};
use flows_exporter::web::{Web, WebConfig};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::*;

const USER: &str = "prometheus";
const PASSWORD: &str = "right-pass-9Zq";
/// A new client must be answered within this while the attacks run.
const NEW_CLIENT_BUDGET: Duration = Duration::from_secs(1);
/// The size of the answer the slow readers ask for.
const BIG: usize = 8 << 20;

/// Open file descriptors this process may have (`Max open files`).
fn nofile_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// `want` connections, or as many as the descriptor limit leaves room for
/// (the server in this process holds its side of each).
fn attackers(want: usize) -> usize {
    let n = want.min(nofile_limit().saturating_sub(600) / 2);
    assert!(
        n > server::MAX_CONNECTIONS,
        "the limit of open files is too low: {}",
        nofile_limit()
    );
    n
}

/// A server with `/metrics` of the exporter's kind replaced by a fixed answer:
/// `/big` (8 MiB), `/-/healthy`, behind the web config `web`.
struct Edge {
    addr: SocketAddr,
    stats: Arc<flows_exporter::telemetry::Telemetry>,
    stop: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Edge {
    async fn start(web: Web) -> Edge {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let big = Bytes::from(vec![b'x'; BIG]);
        let routes = Routes::new()
            .route(Route {
                path: "/big".to_owned(),
                methods: &[Method::GET],
                auth: Auth::Web,
                body: BodyPolicy::Unread,
                handler: Arc::new(move |_| {
                    let big = big.clone();
                    Box::pin(async move { Response::new(server::Chunks::one(big)) })
                }),
                body_refused: None,
            })
            .route(Route {
                path: "/-/healthy".to_owned(),
                methods: &[Method::GET],
                auth: Auth::Web,
                body: BodyPolicy::Unread,
                handler: Arc::new(|_| {
                    Box::pin(async { Response::new(server::Chunks::one("OK\n")) })
                }),
                body_refused: None,
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(flows_exporter::telemetry::Telemetry::new());
        let stop = CancellationToken::new();
        let counters: Arc<HttpStats> = stats.clone();
        tokio::spawn(server::serve_routes(
            listener,
            Arc::new(routes),
            Arc::new(WebConfig::fixed(web)),
            counters,
            stop.clone().cancelled_owned(),
        ));
        Edge { addr, stats, stop }
    }

    fn metric(&self, series: &str) -> f64 {
        let mut out = Vec::new();
        self.stats.render(&mut out);
        value(
            &String::from_utf8(out).expect("UTF-8"),
            &format!("whatsapp_flows_exporter_{series}"),
        )
        .unwrap_or(0.0)
    }

    /// A new client's GET of `path` on a new connection: its status and time.
    async fn new_client(&self, path: &str, auth: Option<(&str, &str)>) -> (u16, Duration) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let started = Instant::now();
        let mut req = client.get(format!("http://{}{path}", self.addr));
        if let Some((user, password)) = auth {
            req = req.basic_auth(user, Some(password));
        }
        let response = req.send().await.expect("the new client is answered");
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        (status, started.elapsed())
    }
}

/// `n` connections that connect and send nothing, held open.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let opened =
            futures_util::future::join_all(chunk.iter().map(|_| TcpStream::connect(addr))).await;
        held.extend(opened.into_iter().filter_map(Result::ok));
    }
    held
}

/// `n` clients that ask for `/big` and never read a byte of it.
async fn slow_readers(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().expect("socket");
        let _ = socket.set_recv_buffer_size(4096);
        let Ok(mut stream) = socket.connect(addr).await else {
            continue;
        };
        let request = format!("GET /big HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_ok() {
            held.push(stream);
        }
    }
    held
}

/// Clients from 127.0.0.2 that send wrong passwords as fast as they are
/// answered, until `stop`; returns how many they sent and how many got 429.
fn wrong_password_flood(
    addr: SocketAddr,
    clients: usize,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let attacker: IpAddr = [127, 0, 0, 2].into();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .local_address(attacker)
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("client");
                    let (mut sent, mut limited) = (0, 0);
                    let mut i = 0u64;
                    while !stop.is_cancelled() {
                        i += 1;
                        let r = client
                            .get(format!("http://{addr}/-/healthy"))
                            .basic_auth(USER, Some(format!("guess-{c}-{i}")))
                            .send()
                            .await;
                        sent += 1;
                        if r.is_ok_and(|r| r.status() == StatusCode::TOO_MANY_REQUESTS) {
                            limited += 1;
                        }
                    }
                    (sent, limited)
                })
            })
            .collect();
        let mut total = (0, 0);
        for t in tasks {
            let (s, l) = t.await.unwrap_or((0, 0));
            total.0 += s;
            total.1 += l;
        }
        total
    })
}

fn with_user() -> Web {
    let hash = bcrypt::hash(PASSWORD, 10).expect("bcrypt");
    Web::parse(
        &format!("basic_auth_users:\n  {USER}: {hash}\n"),
        std::path::Path::new("."),
    )
    .expect("web config")
}

/// 1,500 connections that send nothing cannot keep a new scraper out: at the
/// limit, the connection that waited longest is shed for the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_hold_the_door_shut() {
    let edge = Edge::start(Web::default()).await;
    let n = attackers(1500);
    let held = idle_connections(edge.addr, n).await;
    assert!(
        held.len() > server::MAX_CONNECTIONS,
        "{} opened",
        held.len()
    );
    for _ in 0..5 {
        let (status, took) = edge.new_client("/-/healthy", None).await;
        assert_eq!(status, 200);
        assert!(took < NEW_CLIENT_BUDGET, "a new client waited {took:?}");
    }
    let shed = edge.metric("http_connections_shed_total{reason=\"idle\"}");
    assert!(
        shed >= (held.len() - server::MAX_CONNECTIONS) as f64,
        "{shed} shed"
    );
    assert!(edge.metric("http_connections") <= server::MAX_CONNECTIONS as f64 + 1.0);
    drop(held);
}

/// 520 clients that ask for an 8 MiB answer and never read it cannot make
/// the server unreachable: the stalled ones are shed first, and any of them
/// loses its connection after WRITE_STALL anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cannot_starve_the_server() {
    let edge = Edge::start(Web::default()).await;
    let held = slow_readers(edge.addr, 520).await;
    assert_eq!(held.len(), 520);
    // Let the answers fill the socket buffers and stall.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let (status, took) = edge.new_client("/-/healthy", None).await;
        assert_eq!(status, 200);
        assert!(took < NEW_CLIENT_BUDGET, "a new client waited {took:?}");
    }
    eprintln!(
        "shed idle {} stalled {} busy {}, open {}",
        edge.metric("http_connections_shed_total{reason=\"idle\"}"),
        edge.metric("http_connections_shed_total{reason=\"stalled\"}"),
        edge.metric("http_connections_shed_total{reason=\"busy\"}"),
        edge.metric("http_connections")
    );
    assert!(edge.metric("http_connections_shed_total{reason=\"stalled\"}") >= 8.0);
    drop(held);
}

/// A flood of wrong passwords (40 clients from 127.0.0.2, as fast as they are
/// answered, for 3 s) cannot delay the right user: its first scrape, which
/// must run bcrypt, is answered fast; the flood is limited to a few checks a
/// second and answered 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_flood_does_not_delay_the_right_user() {
    let edge = Edge::start(with_user()).await;
    let stop = CancellationToken::new();
    let flood = wrong_password_flood(edge.addr, 40, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, took) = edge.new_client("/-/healthy", Some((USER, PASSWORD))).await;
    assert_eq!(status, 200);
    assert!(took < NEW_CLIENT_BUDGET, "the right user waited {took:?}");
    let (status, took) = edge.new_client("/-/healthy", Some((USER, PASSWORD))).await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(200),
        "a checked user waited {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let (sent, limited) = flood.await.expect("flood");
    assert!(
        limited > sent / 2,
        "{limited} of {sent} wrong passwords were limited"
    );
    // Five tries, then about one a second, over 3 s from one address.
    let denied = edge.metric("http_auth_checks_total{result=\"denied\"}");
    assert!(denied <= 12.0, "{denied} wrong passwords were checked");
    assert_eq!(
        edge.metric("http_auth_checks_total{result=\"limited\"}"),
        limited as f64
    );
    assert_eq!(
        edge.metric("http_auth_checks_total{result=\"allowed\"}"),
        2.0
    );
}

/// All three at once: idle connections, slow readers and a wrong-password
/// flood. A new client with the right password still gets its answer within
/// a second, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_attacks_at_once() {
    let edge = Edge::start(with_user()).await;
    let stop = CancellationToken::new();
    let flood = wrong_password_flood(edge.addr, 20, stop.clone());
    let readers = slow_readers(edge.addr, 300).await;
    let idle = idle_connections(edge.addr, attackers(1000)).await;
    for _ in 0..5 {
        let (status, took) = edge.new_client("/-/healthy", Some((USER, PASSWORD))).await;
        assert_eq!(status, 200);
        assert!(took < NEW_CLIENT_BUDGET, "a new client waited {took:?}");
    }
    stop.cancel();
    let _ = flood.await;
    drop((readers, idle));
}

/// A route that reads a body does so within its limit and time; a route that
/// does not refuses bodies it would not read.
#[tokio::test]
async fn a_route_reads_a_bounded_body_within_its_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let routes = Routes::new().route(Route {
        path: "/echo".to_owned(),
        methods: &[Method::POST],
        auth: Auth::Handler,
        body: BodyPolicy::Read { limit: 1024 },
        handler: Arc::new(|req| {
            Box::pin(async move {
                Response::new(server::Chunks::one(format!("{} bytes", req.body.len())))
            })
        }),
        body_refused: None,
    });
    let stop = CancellationToken::new();
    let counters: Arc<HttpStats> = Arc::new(flows_exporter::telemetry::Telemetry::new());
    tokio::spawn(server::serve_routes(
        listener,
        Arc::new(routes),
        Arc::new(WebConfig::default()),
        counters,
        stop.clone().cancelled_owned(),
    ));
    let client = http();
    let url = format!("http://{addr}/echo");
    let ok = client
        .post(&url)
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "1000 bytes");
    let big = client
        .post(&url)
        .body(vec![b'a'; 2000])
        .send()
        .await
        .expect("post");
    assert_eq!(big.status(), 413);
    let get = client.get(&url).send().await.expect("get");
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    // A body that never comes: 408 after the body time limit, not a held
    // connection.
    let started = Instant::now();
    let answer = raw_for(
        &addr.to_string(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this",
        flows_exporter::server::routes::BODY_TIMEOUT + Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < flows_exporter::server::routes::BODY_TIMEOUT + Duration::from_secs(2)
    );
    stop.cancel();
}
