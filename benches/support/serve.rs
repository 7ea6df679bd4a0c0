//! Shared by the benchmarks that run the release `flows-exporter serve` binary:
//! a sandbox Graph API with generated flows on loopback, the exporter started
//! against it and waited for until ready, /proc readings of its process, and a
//! minimal keep-alive HTTP/1.1 scraper that measures the exporter and loopback
//! rather than a client library.

// Each benchmark includes this file and uses a different part of it.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flows_exporter::model::Clock;
use flows_exporter::sandbox::Sandbox;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";

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
}

impl Served {
    /// Starts a sandbox with `flows` generated flows answering after `latency_ms`,
    /// and the exporter with `max_concurrency = concurrency` against it, and waits
    /// (at most ten minutes) until its start-up polls are done.
    pub fn start(flows: usize, latency_ms: u64, concurrency: u64) -> Served {
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
        // No spacing between calls (`min_call_interval`): this measures the exporter, not its pacing.
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[graph]\nbase_url = \"http://{sandbox_addr}\"\nmax_concurrency = {concurrency}\nretry_backoff_seconds = 0.05\n[rate_limit]\nmin_call_interval = \"0s\"\n"
        );
        for w in &wabas {
            text.push_str(&format!("[[wabas]]\nid = \"{w}\"\n"));
        }
        std::fs::write(&config, text).expect("write config");

        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
            .args(["serve", "--config"])
            .arg(&config)
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
        };
        let deadline = started + Duration::from_secs(600);
        loop {
            let ready = Scraper::connect(port, "/-/ready", false)
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
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl Scraper {
    pub fn connect(port: u16, path: &str, gzip: bool) -> io::Result<Scraper> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let accept = if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        };
        Ok(Scraper {
            writer,
            reader: BufReader::with_capacity(1 << 20, stream),
            request: format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}\r\n").into_bytes(),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Sends the request and reads the answer: its status and body length.
    /// An answer without Content-Length is an error (the exporter always sends it).
    pub fn get(&mut self) -> io::Result<(u16, usize)> {
        self.writer.write_all(&self.request)?;
        let mut status = None;
        let mut length = None;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
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
        self.reader.read_exact(&mut self.body[..length])?;
        Ok((status, length))
    }
}
