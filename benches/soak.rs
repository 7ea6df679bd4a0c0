//! Soak: thousands of polls of the exporter, in process, against the sandbox
//! Graph API on loopback, with the resident set size (VmRSS) sampled as it goes.
//!
//! The clock is a fake one that moves one hour per round (a round polls hour,
//! day and lifetime), so every round brings new periods and retires old ones,
//! as weeks of real running would. Every `SOAK_SAMPLE_EVERY` polls it also
//! rediscovers, scrapes (plain and gzip) and samples VmRSS. After warm-up
//! (the first quarter of samples) RSS must stay within a bound: the mean of the
//! last quarter may exceed the mean of the second quarter by at most
//! `SOAK_MAX_GROWTH_PERCENT` (10) percent or 4 MiB, whichever is larger.
//!
//! Run: `cargo bench --bench soak`
//! Knobs (environment): SOAK_FLOWS (10), SOAK_POLLS (3000),
//! SOAK_SAMPLE_EVERY (100), SOAK_SECONDS (150, a bound on the polling time).

#[path = "support/serve.rs"]
mod serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::sandbox::{REALISTIC_WABA_IDS, Sandbox};
use serve::{knob, proc_status};

const TOKEN: &str = "soak-token";

fn rss_kib() -> u64 {
    proc_status(std::process::id(), "VmRSS:")
}

fn mean(xs: &[u64]) -> f64 {
    xs.iter().sum::<u64>() as f64 / xs.len().max(1) as f64
}

fn main() {
    let flows = knob("SOAK_FLOWS", 10) as usize;
    let polls = knob("SOAK_POLLS", 3000);
    let sample_every = knob("SOAK_SAMPLE_EVERY", 100).max(1);
    let seconds = knob("SOAK_SECONDS", 150);
    let max_growth_percent = knob("SOAK_MAX_GROWTH_PERCENT", 10) as f64;

    let start: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 1, 5, 12, 0, 0)
        .single()
        .expect("valid start");
    let now = Arc::new(AtomicI64::new(start.timestamp()));
    let clock = {
        let now = now.clone();
        Clock::from_fn(move || {
            DateTime::from_timestamp(now.load(Ordering::Relaxed), 0).expect("in range")
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sandbox = Sandbox::generated(flows, TOKEN, clock.clone());
    sandbox.set_page_size(100);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind sandbox");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let server = rt.spawn(
        sandbox
            .clone()
            .serve(listener, stop.clone().cancelled_owned()),
    );

    // This measures the exporter, not its rate-limit discipline: no spacing between
    // calls, and thresholds the sandbox's usage figures (capped at 99 % of made-up
    // hourly allowances that 1,000 flows pass) never reach.
    let mut text = format!(
        "[graph]\nbase_url = \"http://{addr}\"\nmax_concurrency = 8\nretry_backoff = \"10ms\"\n[rate_limit]\nmin_call_interval = \"0s\"\nslow_down_at = 0.99\nstop_at = 1.0\n"
    );
    for w in REALISTIC_WABA_IDS {
        text.push_str(&format!("[[wabas]]\nid = \"{w}\"\n"));
    }
    let config = Config::parse(&text).expect("soak config");
    let exporter = Exporter::new(config, Secret::new(TOKEN), clock).expect("exporter");

    let granularities = [Granularity::Hour, Granularity::Day, Granularity::Lifetime];
    let t0 = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut done = 0u64;
    let mut scrape_bytes = 0;
    rt.block_on(async {
        exporter.discover().await;
        while done < polls && t0.elapsed() < Duration::from_secs(seconds) {
            let g = granularities[(done % 3) as usize];
            exporter.poll(g).await;
            done += 1;
            if done % 3 == 0 {
                now.fetch_add(3600, Ordering::Relaxed);
            }
            if done % sample_every == 0 {
                exporter.discover().await;
                scrape_bytes = exporter
                    .scrape(false)
                    .parts
                    .iter()
                    .map(|p| p.len())
                    .sum::<usize>();
                let _ = exporter.scrape(true);
                let _ = sandbox.take_metric_requests();
                samples.push((done, rss_kib()));
            }
        }
    });
    let wall = t0.elapsed();
    stop.cancel();
    let _ = rt.block_on(server);

    println!(
        "flows-exporter soak: {flows} flows, {done} polls ({} Graph calls) in {:.1} s, fake clock advanced {} h; last /metrics {} bytes",
        sandbox.request_count(),
        wall.as_secs_f64(),
        done / 3,
        scrape_bytes
    );
    println!("RSS (MiB) every {sample_every} polls:");
    for chunk in samples.chunks(10) {
        let row: Vec<String> = chunk
            .iter()
            .map(|(n, kib)| format!("{n}:{:.1}", *kib as f64 / 1024.0))
            .collect();
        println!("  {}", row.join("  "));
    }
    assert!(
        samples.len() >= 8,
        "too few samples to judge: {}",
        samples.len()
    );
    let q = samples.len() / 4;
    let rss: Vec<u64> = samples.iter().map(|(_, kib)| *kib).collect();
    let warm = mean(&rss[q..2 * q]);
    let last = mean(&rss[rss.len() - q..]);
    let bound = (warm * max_growth_percent / 100.0).max(4.0 * 1024.0);
    println!(
        "after warm-up: second quarter mean {:.1} MiB, last quarter mean {:.1} MiB, growth {:+.1} MiB ({:+.1} %), bound {:.1} MiB",
        warm / 1024.0,
        last / 1024.0,
        (last - warm) / 1024.0,
        100.0 * (last - warm) / warm,
        bound / 1024.0
    );
    assert!(
        last - warm <= bound,
        "RSS grew by {:.1} MiB after warm-up",
        (last - warm) / 1024.0
    );
}
