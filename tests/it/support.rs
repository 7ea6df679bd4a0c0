//! Shared set-up: a sandbox on port 0 with a pinned clock, an exporter pointed at
//! it, and helpers to scrape. One place to change when an API changes.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::Clock;
use flows_exporter::sandbox::Sandbox;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "EAAtest-token-7Qx9";
pub const WABA_1: &str = "102290129340398";
pub const WABA_2: &str = "104996122399160";

/// The instant every test pins: a Tuesday noon, UTC.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 30, 12, 0, 0)
        .single()
        .expect("valid date")
}

/// A running sandbox; stops when dropped.
pub struct RunningSandbox {
    pub sandbox: Sandbox,
    pub base_url: String,
    stop: CancellationToken,
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_sandbox(sandbox: Sandbox) -> RunningSandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_sandbox_on(sandbox, listener)
}

/// Serves `sandbox` on an already-bound listener (e.g. the address of one stopped
/// before, to bring Graph back).
pub fn start_sandbox_on(sandbox: Sandbox, listener: TcpListener) -> RunningSandbox {
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(
        sandbox
            .clone()
            .serve(listener, stop.clone().cancelled_owned()),
    );
    RunningSandbox {
        sandbox,
        base_url,
        stop,
    }
}

pub async fn realistic() -> RunningSandbox {
    start_sandbox(Sandbox::realistic(TOKEN, Clock::fixed(now()))).await
}

/// Config text for an exporter against `base_url`: both WABAs, fast retries,
/// one call at a time so the order of calls (and so the usage headers) is fixed.
pub fn config_text(base_url: &str, extra: &str) -> String {
    format!(
        r#"
[graph]
base_url = "{base_url}"
api_version = "v23.0"
max_concurrency = 1
max_retries = 2
retry_backoff = "10ms"
timeout = "5s"

[[wabas]]
id = "{WABA_1}"

[[wabas]]
id = "{WABA_2}"
{extra}
"#
    )
}

pub fn exporter_with(text: &str, token: &str) -> Arc<Exporter> {
    let config = Config::parse(text).expect("test config is valid");
    Exporter::new(config, Secret::new(token), Clock::fixed(now())).expect("exporter")
}

pub fn exporter(base_url: &str) -> Arc<Exporter> {
    exporter_with(&config_text(base_url, ""), TOKEN)
}

/// The whole `/metrics` text as a scrape without gzip would get it.
pub fn scrape(exporter: &Exporter) -> String {
    let scrape = exporter.scrape(false);
    let bytes: Vec<u8> = scrape
        .parts
        .iter()
        .flat_map(|b| b.iter().copied())
        .collect();
    String::from_utf8(bytes).expect("exposition is UTF-8")
}

/// The sample lines (no comments) whose series name starts with `prefix`.
pub fn samples(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The value of the one sample line that starts with `series` (name and labels
/// exactly as written), or None.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.parse().expect("sample value is a number"))
}

/// Runs `promtool check metrics` on an exposition and returns what it printed.
pub fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (the test command installs Debian's prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    outcome(&child.wait_with_output().expect("promtool runs"))
}

/// Whether a finished command succeeded, and what it printed (stdout, then
/// stderr).
pub fn outcome(out: &std::process::Output) -> (bool, String) {
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// A running HTTP server for an exporter; stops when dropped.
pub struct RunningServer {
    pub base: String,
    stop: CancellationToken,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start_server(exporter: Arc<Exporter>) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(flows_exporter::server::serve(
        listener,
        exporter,
        stop.clone().cancelled_owned(),
    ));
    RunningServer { base, stop }
}

/// [`start_server`] with a web config (TLS, basic auth); `base` is
/// `https://127.0.0.1:PORT` when it has TLS.
pub async fn start_server_web(
    exporter: Arc<Exporter>,
    web: flows_exporter::web::Web,
) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let scheme = if web.is_tls() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(flows_exporter::server::serve_web(
        listener,
        exporter,
        Arc::new(flows_exporter::web::WebConfig::fixed(web)),
        stop.clone().cancelled_owned(),
    ));
    RunningServer { base, stop }
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The body of a GET of `url` (any status).
pub async fn get_text(url: &str) -> String {
    http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("body")
}

/// The value of a per-cell series (`flow_id`, `granularity`, `metric` labels).
pub fn cell(text: &str, name: &str, flow: &str, granularity: &str, metric: &str) -> Option<f64> {
    value(
        text,
        &format!("{name}{{flow_id=\"{flow}\",granularity=\"{granularity}\",metric=\"{metric}\"}}"),
    )
}

/// Log lines written while the returned guard lives, on this thread (a
/// `#[tokio::test]` runtime runs every task on it), as the binary writes them.
pub fn capture_logs() -> (tracing::subscriber::DefaultGuard, Logs) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (tracing::subscriber::set_default(subscriber), logs)
}

#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `done` holds, checking every 50 ms, and fails after `within`.
pub async fn wait_for(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A child process, killed (and reaped) when dropped, so a failing test leaves
/// no exporter running.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends the signal `name` (`TERM`, `HUP`, ...) to `child` with kill(1).
pub fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits (bounded) for `child` to exit and returns its status.
pub fn wait_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process did not exit within {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends raw bytes on a fresh connection to `addr` (`host:port`) and returns
/// all that comes back (bounded by 5 s).
pub async fn raw(addr: &str, request: &[u8]) -> String {
    raw_for(addr, request, std::time::Duration::from_secs(5)).await
}

/// [`raw`], reading for at most `within`.
pub async fn raw_for(addr: &str, request: &[u8], within: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// `flow_failing_metrics` summed over flows, by class.
pub fn failing_by_class(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut by_class = std::collections::BTreeMap::new();
    for line in samples(text, "whatsapp_flows_exporter_flow_failing_metrics{") {
        let class = line
            .split("class=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a class label")
            .to_owned();
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a value");
        *by_class.entry(class).or_default() += v;
    }
    by_class
}

/// Collects a child's standard error, line by line, into a shared buffer as
/// it comes (on a thread of its own).
pub fn collect_stderr(child: &mut std::process::Child) -> Arc<std::sync::Mutex<String>> {
    use std::io::BufRead as _;
    let stderr = child.stderr.take().expect("stderr is piped");
    let logs = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut all = sink.lock().expect("logs");
            all.push_str(&line);
            all.push('\n');
        }
    });
    logs
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server child process (Prometheus, VictoriaMetrics), killed and reaped
/// when dropped; its standard error goes to a log file in `dir`.
pub struct Server {
    child: std::process::Child,
    pub base: String,
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(program: &str, args: &[String], port: u16, dir: &std::path::Path) -> Server {
        let log = dir.join(format!("{program}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} must be installed (scripts/test installs it): {e}")
            });
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self, path: &str) {
        let client = http();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}{path}", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited with {status}: {}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} not ready within 60 s: {}",
                self.base,
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// A throwaway PostgreSQL (Debian's package) on a loopback port: its data
/// directory in a temporary directory, run as the `postgres` user when the
/// tests run as root (PostgreSQL refuses root), trust authentication on
/// 127.0.0.1 only. Stopped and removed when dropped.
pub struct Postgres {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Postgres {
    pub async fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).max())
            .expect("PostgreSQL must be installed (the test command installs Debian's postgresql)");
        let dir = tempfile::Builder::new()
            .prefix("flows-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let data = dir.path().join("data");
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let run = |program: &str| -> std::process::Command {
            if as_root {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                c
            } else {
                std::process::Command::new(bin.join(program))
            }
        };
        if as_root {
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let out = run("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("pg.log")).expect("log");
        let child = run("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let pg = Postgres {
            child,
            url,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Accepting connections is not yet accepting queries.
        let url = pg.url.clone();
        let ready = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                match postgres::Client::connect(&url, postgres::NoTls) {
                    Ok(_) => return true,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(_) => return false,
                }
            }
        })
        .await
        .expect("task");
        assert!(ready, "PostgreSQL never accepted a connection");
        pg
    }
}

/// One test at a time may run real servers (Prometheus, VictoriaMetrics,
/// PostgreSQL): on 2 cores, several at once slow each other enough that
/// Prometheus 2.42 sometimes leaves a sample written into its out-of-order
/// head out of a query. Hold the guard for the whole test.
pub async fn real_servers() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}
