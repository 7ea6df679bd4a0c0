//! Shared by the benchmarks that run the release `flows-exporter serve` binary:
//! a sandbox Graph API with generated flows on loopback, the exporter started
//! against it and waited for until ready, /proc readings of its process, and a
//! minimal keep-alive HTTP/1.1 scraper (plain, or TLS with basic auth) that
//! measures the exporter and loopback rather than a client library.

// Each benchmark includes this file and uses a different part of it.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flows_exporter::model::Clock;
use flows_exporter::sandbox::Sandbox;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";
const USER: &str = "prometheus";
const PASSWORD: &str = "bench-password";

/// TLS and basic auth for the exporter: a fresh CA and server certificate, a
/// web config asking for one user with a bcrypt hash of cost 10, and what a
/// scraper needs to talk to it.
pub struct Secure {
    dir: tempfile::TempDir,
    client: Arc<rustls::ClientConfig>,
    authorization: String,
}

impl Secure {
    pub fn generate() -> Secure {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        std::fs::write(dir.path().join("server.pem"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("server-key.pem"), key.serialize_pem()).expect("write");
        let hash = bcrypt::hash(PASSWORD, 10).expect("bcrypt");
        std::fs::write(
            dir.path().join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\nbasic_auth_users:\n  {USER}: {hash}\n"
            ),
        )
        .expect("write");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("CA");
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        use base64::Engine as _;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        Secure {
            client: Arc::new(client),
            authorization: format!("Authorization: Basic {credentials}\r\n"),
            dir,
        }
    }

    fn web_config(&self) -> PathBuf {
        self.dir.path().join("web.yml")
    }
}

/// A child process (the exporter), killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A number from the environment, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The value of a `/proc/<pid>/status` field (in kB for memory fields), 0 if absent.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The value at quantile `p` of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The exporter, serving the sandbox's flows. Dropping it kills the exporter,
/// stops the sandbox and removes the config directory.
pub struct Served {
    pub rt: tokio::runtime::Runtime,
    pub sandbox: Sandbox,
    /// The exporter's /metrics port on 127.0.0.1.
    pub port: u16,
    pub pid: u32,
    /// From spawning the exporter to `/-/ready` answering 200.
    pub startup: Duration,
    child: Child,
    stop: CancellationToken,
    dir: PathBuf,
    secure: Option<Arc<Secure>>,
}

impl Served {
    /// Starts a sandbox with `flows` generated flows answering after `latency_ms`,
    /// and the exporter with `max_concurrency = concurrency` against it, and waits
    /// (at most ten minutes) until its start-up polls are done.
    pub fn start(flows: usize, latency_ms: u64, concurrency: u64) -> Served {
        Served::start_with(flows, latency_ms, concurrency, None)
    }

    /// [`Served::start`], serving over TLS with basic auth when `secure` is given.
    pub fn start_with(
        flows: usize,
        latency_ms: u64,
        concurrency: u64,
        secure: Option<Arc<Secure>>,
    ) -> Served {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let sandbox = Sandbox::generated(flows, TOKEN, Clock::system());
        sandbox.set_latency(Duration::from_millis(latency_ms));
        sandbox.set_page_size(100);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind sandbox");
        let sandbox_addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        rt.spawn(
            sandbox
                .clone()
                .serve(listener, stop.clone().cancelled_owned()),
        );

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("flows-exporter-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("config.toml");
        let wabas: std::collections::BTreeSet<String> =
            sandbox.flows().into_iter().map(|f| f.waba_id).collect();
        // This measures the exporter, not its rate-limit discipline: no spacing between
        // calls, and thresholds the sandbox's usage figures (capped at 99 % of made-up
        // hourly allowances that 1,000 flows pass) never reach.
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[graph]\nbase_url = \"http://{sandbox_addr}\"\nmax_concurrency = {concurrency}\nretry_backoff = \"50ms\"\n[rate_limit]\nmin_call_interval = \"0s\"\nslow_down_at = 0.99\nstop_at = 1.0\n"
        );
        for w in &wabas {
            text.push_str(&format!("[[wabas]]\nid = \"{w}\"\n"));
        }
        std::fs::write(&config, text).expect("write config");

        let started = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_flows-exporter"));
        command.args(["serve", "--config"]).arg(&config);
        if let Some(secure) = &secure {
            command.arg("--web.config.file").arg(secure.web_config());
        }
        let child = command
            .env("WHATSAPP_ACCESS_TOKEN", TOKEN)
            .env("FLOWS_EXPORTER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flows-exporter serve");
        let mut served = Served {
            rt,
            sandbox,
            port,
            pid: child.id(),
            startup: Duration::ZERO,
            child,
            stop,
            dir,
            secure,
        };
        let deadline = started + Duration::from_secs(600);
        loop {
            let ready = served
                .scraper("/-/ready", false)
                .and_then(|mut s| s.get())
                .is_ok_and(|(status, _)| status == 200);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "exporter never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        served.startup = started.elapsed();
        served
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A keep-alive scraper of `path`, over TLS with basic auth if served so.
    pub fn scraper(&self, path: &str, gzip: bool) -> io::Result<Scraper> {
        Scraper::connect_with(self.port, path, gzip, self.secure.as_deref())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One keep-alive HTTP/1.1 connection that GETs one path again and again and
/// reads each body into a reused buffer.
pub struct Scraper {
    conn: BufReader<Box<dyn Conn>>,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

/// A plain or TLS connection.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

impl Scraper {
    pub fn connect(port: u16, path: &str, gzip: bool) -> io::Result<Scraper> {
        Scraper::connect_with(port, path, gzip, None)
    }

    /// Over TLS with basic auth when `secure` is given (the handshake happens
    /// with the first request).
    pub fn connect_with(
        port: u16,
        path: &str,
        gzip: bool,
        secure: Option<&Secure>,
    ) -> io::Result<Scraper> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let accept = if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        };
        let (conn, authorization): (Box<dyn Conn>, &str) = match secure {
            None => (Box::new(stream), ""),
            Some(secure) => {
                let name =
                    rustls::pki_types::ServerName::try_from("localhost").expect("server name");
                let tls = rustls::ClientConnection::new(secure.client.clone(), name)
                    .map_err(io::Error::other)?;
                (
                    Box::new(rustls::StreamOwned::new(tls, stream)),
                    &secure.authorization,
                )
            }
        };
        Ok(Scraper {
            conn: BufReader::with_capacity(1 << 20, conn),
            request: format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}{authorization}\r\n"
            )
            .into_bytes(),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends the request and reads the answer: its status and body length.
    /// An answer without Content-Length is an error (the exporter always sends it).
    pub fn get(&mut self) -> io::Result<(u16, usize)> {
        let conn = self.conn.get_mut();
        conn.write_all(&self.request)?;
        conn.flush()?;
        let mut status = None;
        let mut length = None;
        loop {
            self.line.clear();
            if self.conn.read_line(&mut self.line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            if self.line == "\r\n" {
                break;
            }
            if status.is_none() {
                status = self
                    .line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok());
                continue;
            }
            if let Some(v) = self
                .line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let status = status.ok_or_else(|| bad("no status line"))?;
        let length = length.ok_or_else(|| bad("no content-length"))?;
        if self.body.len() < length {
            self.body.resize(length, 0);
        }
        self.conn.read_exact(&mut self.body[..length])?;
        Ok((status, length))
    }
}
