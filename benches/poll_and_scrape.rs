//! Benchmark: the `flows-exporter serve` binary (release build) against the
//! sandbox Graph API serving many flows on loopback.
//!
//! Measures a full poll's wall time per granularity against the lower bound
//! set by concurrency and sandbox latency (calls x latency / concurrency), the
//! CPU time of the start-up polls, `/metrics` latency (median, p99) and size,
//! and the exporter's peak RSS.
//!
//! Run: `cargo bench --bench poll_and_scrape`
//! Knobs (environment): BENCH_FLOWS (1000), BENCH_LATENCY_MS (10),
//! BENCH_CONCURRENCY (16), BENCH_SCRAPES (500).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flows_exporter::model::Clock;
use flows_exporter::sandbox::Sandbox;

const TOKEN: &str = "bench-token";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Scrapes over one keep-alive connection with a minimal HTTP/1.1 client that
/// reads each body into a reused buffer: measures the exporter and loopback,
/// not a client library's body handling.
fn raw_scrapes(port: u16, gzip: bool, n: usize) -> Vec<Duration> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n",
        if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        }
    );
    let mut body = vec![0u8; 32 << 20];
    let mut times = Vec::with_capacity(n);
    let mut line = String::new();
    for _ in 0..n {
        let t = Instant::now();
        writer.write_all(request.as_bytes()).expect("send");
        let mut length = None;
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.expect("content-length");
        reader.read_exact(&mut body[..length]).expect("body");
        times.push(t.elapsed());
    }
    times
}

fn main() {
    let flows = knob("BENCH_FLOWS", 1000) as usize;
    let latency_ms = knob("BENCH_LATENCY_MS", 10);
    let concurrency = knob("BENCH_CONCURRENCY", 16);
    let scrapes = knob("BENCH_SCRAPES", 500) as usize;

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
    let stop = tokio_util::sync::CancellationToken::new();
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
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[graph]\nbase_url = \"http://{sandbox_addr}\"\nmax_concurrency = {concurrency}\nretry_backoff_seconds = 0.05\n"
    );
    for w in &wabas {
        text.push_str(&format!("[[wabas]]\nid = \"{w}\"\n"));
    }
    std::fs::write(&config, text).expect("write config");

    let started = Instant::now();
    let child = Proc(
        Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("WHATSAPP_ACCESS_TOKEN", TOKEN)
            .env("FLOWS_EXPORTER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flows-exporter serve"),
    );
    let pid = child.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let ready = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(r) = client.get(format!("{base}/-/ready")).send().await {
                if r.status() == 200 {
                    return true;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(ready, "exporter never became ready");
    let startup = started.elapsed();
    let startup_cpu = cpu_seconds(pid);

    let body = rt.block_on(async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
    });

    let calls_per_poll = flows as f64 * 5.0;
    let bound = calls_per_poll * latency_ms as f64 / 1000.0 / concurrency as f64;
    println!(
        "flows-exporter benchmark: {flows} flows, sandbox latency {latency_ms} ms, max_concurrency {concurrency}"
    );
    println!();
    println!(
        "start-up (discovery + hour, day, lifetime polls): {:.2} s wall, {:.2} s CPU",
        startup.as_secs_f64(),
        startup_cpu
    );
    for job in ["hour", "day", "lifetime"] {
        let sum = metric(
            &body,
            &format!("whatsapp_flows_exporter_poll_duration_seconds_sum{{poll=\"{job}\"}}"),
        );
        println!(
            "full poll ({job}): {:.0} calls in {sum:.2} s; bound {bound:.2} s (calls x latency / concurrency) -> {:.0} % of ideal",
            calls_per_poll,
            100.0 * bound / sum
        );
    }

    for gzip in [false, true] {
        let (mut times, size) = rt.block_on(async {
            let mut times = Vec::with_capacity(scrapes);
            let mut size = 0;
            for _ in 0..scrapes {
                let t = Instant::now();
                let mut req = client.get(format!("{base}/metrics"));
                if gzip {
                    req = req.header("accept-encoding", "gzip");
                }
                let bytes = req
                    .send()
                    .await
                    .expect("scrape")
                    .bytes()
                    .await
                    .expect("body");
                times.push(t.elapsed());
                size = bytes.len();
            }
            (times, size)
        });
        times.sort();
        println!(
            "/metrics {} (reqwest, body collected): {} scrapes, median {:.2} ms, p99 {:.2} ms, {} bytes",
            if gzip { "gzip " } else { "plain" },
            scrapes,
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.99).as_secs_f64() * 1000.0,
            size
        );
    }
    for gzip in [false, true] {
        let mut times = raw_scrapes(port, gzip, scrapes);
        times.sort();
        println!(
            "/metrics {} (raw keep-alive client, body read and dropped): median {:.2} ms, p99 {:.2} ms",
            if gzip { "gzip " } else { "plain" },
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.99).as_secs_f64() * 1000.0,
        );
    }

    println!(
        "exporter RSS: peak {:.1} MiB, now {:.1} MiB; series lines: {}",
        proc_status(pid, "VmHWM:") as f64 / 1024.0,
        proc_status(pid, "VmRSS:") as f64 / 1024.0,
        body.lines().filter(|l| !l.starts_with('#')).count()
    );
    drop(child);
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
