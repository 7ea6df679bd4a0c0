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

#[path = "support/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use serve::{Scraper, Served, knob, percentile, proc_status};

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

/// Scrapes over one keep-alive connection with a minimal HTTP/1.1 client that
/// reads each body into a reused buffer: measures the exporter and loopback,
/// not a client library's body handling.
fn raw_scrapes(port: u16, gzip: bool, n: usize) -> Vec<Duration> {
    let mut scraper = Scraper::connect(port, "/metrics", gzip).expect("connect");
    (0..n)
        .map(|_| {
            let t = Instant::now();
            scraper.get().expect("scrape");
            t.elapsed()
        })
        .collect()
}

fn main() {
    let flows = knob("BENCH_FLOWS", 1000) as usize;
    let latency_ms = knob("BENCH_LATENCY_MS", 10);
    let concurrency = knob("BENCH_CONCURRENCY", 16);
    let scrapes = knob("BENCH_SCRAPES", 500) as usize;

    let served = Served::start(flows, latency_ms, concurrency);
    let (rt, port, pid, startup) = (&served.rt, served.port, served.pid, served.startup);
    let base = served.base();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
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
    drop(served);
}
