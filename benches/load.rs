//! Load test: many concurrent scrapers against `/metrics` of the release
//! `flows-exporter serve` binary holding 1,000 flows of data, on loopback.
//!
//! Each scraper is a thread with one keep-alive connection that scrapes as fast
//! as answers come, first plain text, then gzip. Each phase is bounded both in
//! time and in requests. Asserts that no request failed (connect or I/O error,
//! or a status other than 200) and reports p50/p99 latency and throughput.
//!
//! Run: `cargo bench --bench load`
//! Knobs (environment): LOAD_FLOWS (1000), LOAD_SCRAPERS (200),
//! LOAD_SECONDS (10, per phase), LOAD_MAX_REQUESTS (200000, per phase),
//! LOAD_TLS (0; 1 serves /metrics over TLS behind bcrypt basic auth, as a
//! `--web.config.file` asks, and every scraper does a handshake and sends the
//! password).

#[path = "support/serve.rs"]
mod serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serve::{Scraper, Secure, Served, knob, percentile, proc_status};

struct Phase {
    times: Vec<Duration>,
    errors: Vec<String>,
    bytes: u64,
    wall: Duration,
}

/// Runs `scrapers` threads against /metrics until `seconds` pass or
/// `max_requests` have been started.
fn phase(
    port: u16,
    secure: Option<Arc<Secure>>,
    gzip: bool,
    scrapers: u64,
    seconds: u64,
    max_requests: u64,
) -> Phase {
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..scrapers)
        .map(|_| {
            let started = started.clone();
            let secure = secure.clone();
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut errors = Vec::new();
                let mut bytes = 0u64;
                let mut scraper =
                    match Scraper::connect_with(port, "/metrics", gzip, secure.as_deref()) {
                        Ok(s) => s,
                        Err(e) => return (times, vec![format!("connect: {e}")], bytes),
                    };
                while Instant::now() < deadline
                    && started.fetch_add(1, Ordering::Relaxed) < max_requests
                {
                    let t = Instant::now();
                    match scraper.get() {
                        Ok((200, n)) => {
                            times.push(t.elapsed());
                            bytes += n as u64;
                        }
                        Ok((status, _)) => errors.push(format!("status {status}")),
                        Err(e) => {
                            errors.push(format!("scrape: {e}"));
                            break;
                        }
                    }
                }
                (times, errors, bytes)
            })
        })
        .collect();
    let mut all = Phase {
        times: Vec::new(),
        errors: Vec::new(),
        bytes: 0,
        wall: Duration::ZERO,
    };
    for t in threads {
        let (times, errors, bytes) = t.join().expect("scraper thread");
        all.times.extend(times);
        all.errors.extend(errors);
        all.bytes += bytes;
    }
    all.wall = t0.elapsed();
    all.times.sort();
    all
}

fn main() {
    let flows = knob("LOAD_FLOWS", 1000) as usize;
    let scrapers = knob("LOAD_SCRAPERS", 200);
    let seconds = knob("LOAD_SECONDS", 10);
    let max_requests = knob("LOAD_MAX_REQUESTS", 200_000);

    // Sandbox latency and poll concurrency only shape the start-up polls here.
    let tls = knob("LOAD_TLS", 0) == 1;
    let secure = tls.then(|| Arc::new(Secure::generate()));
    let served = Served::start_with(flows, 1, 16, secure.clone());
    println!(
        "flows-exporter load test: {flows} flows, {scrapers} concurrent keep-alive scrapers, at most {seconds} s and {max_requests} requests per phase{}",
        if tls {
            ", over TLS with basic auth (bcrypt cost 10)"
        } else {
            ", plain HTTP"
        }
    );
    println!("exporter ready after {:.2} s", served.startup.as_secs_f64());

    let mut failed = Vec::new();
    for gzip in [false, true] {
        let p = phase(
            served.port,
            secure.clone(),
            gzip,
            scrapers,
            seconds,
            max_requests,
        );
        let n = p.times.len();
        let name = if gzip { "gzip " } else { "plain" };
        println!(
            "/metrics {name}: {n} scrapes in {:.2} s = {:.0} scrapes/s, {:.0} MiB/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} bytes per answer; errors {}",
            p.wall.as_secs_f64(),
            n as f64 / p.wall.as_secs_f64(),
            p.bytes as f64 / p.wall.as_secs_f64() / (1 << 20) as f64,
            percentile(&p.times, 0.5).as_secs_f64() * 1000.0,
            percentile(&p.times, 0.99).as_secs_f64() * 1000.0,
            percentile(&p.times, 1.0).as_secs_f64() * 1000.0,
            p.bytes / n.max(1) as u64,
            p.errors.len()
        );
        failed.extend(p.errors.into_iter().map(|e| format!("{name}: {e}")));
    }
    println!(
        "exporter RSS: peak {:.1} MiB, now {:.1} MiB",
        proc_status(served.pid, "VmHWM:") as f64 / 1024.0,
        proc_status(served.pid, "VmRSS:") as f64 / 1024.0,
    );
    drop(served);
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}
