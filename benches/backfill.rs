//! Benchmark of the backfill:
//!
//! 1. The OpenMetrics file writer: samples per second writing the history of
//!    BENCH_FLOWS flows (90 days of DAY and 30 days of HOUR, the sandbox's
//!    numbers) to a file, the period-start spill and `# EOF` included. Only the
//!    writing is timed, not making up the data.
//! 2. Remote-write encoding: samples per second turning the same histories into
//!    series, batches of 5,000 samples, protobuf and snappy (no network).
//! 3. A real backfill (the release binary) of BENCH_FLOWS flows x 90 days of
//!    DAY (BENCH_GRANULARITY=hour,day for both) from the sandbox over loopback
//!    into a file: wall time, samples, and the process's peak RSS.
//!
//! Run: `cargo bench --bench backfill`
//! Knobs (environment): BENCH_FLOWS (1000), BENCH_GRANULARITY (day),
//! BENCH_CONCURRENCY (8).

#[path = "support/serve.rs"]
mod serve;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use flows_exporter::backfill::remote_write::{self, Batcher};
use flows_exporter::backfill::series::History;
use flows_exporter::backfill::sink::FileSink;
use flows_exporter::flowdata;
use flows_exporter::model::{Clock, Granularity, MetricKind};
use flows_exporter::sandbox::Sandbox;
use serve::proc_status;

const TOKEN: &str = "bench-token";

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Every history of every flow, metric and granularity, in the order the
/// backfill writes them, handed to `f` one at a time (never all in memory).
fn for_each_history(sandbox: &Sandbox, mut f: impl FnMut(&History)) {
    let today = Utc::now().date_naive();
    let flows = sandbox.flows();
    for metric in MetricKind::ALL {
        for flow in &flows {
            for (g, days) in [(Granularity::Hour, 30), (Granularity::Day, 90)] {
                let points = sandbox
                    .data_points(&flow.id, metric, g, Some(today - Days::new(days)), None)
                    .into_iter()
                    .map(|(start, values)| {
                        let samples = flowdata::point_samples(metric, &values).expect("valid");
                        (start.timestamp(), samples)
                    })
                    .collect();
                f(&History {
                    flow_id: flow.id.clone(),
                    granularity: g,
                    metric,
                    points,
                });
            }
        }
    }
}

fn main() {
    let flows: usize = knob("BENCH_FLOWS", "1000").parse().expect("BENCH_FLOWS");
    let granularity = knob("BENCH_GRANULARITY", "day");
    let concurrency = knob("BENCH_CONCURRENCY", "8");
    let dir = tempfile::tempdir().expect("temp dir");
    let sandbox = Sandbox::generated(flows, TOKEN, Clock::system());
    println!("flows-exporter backfill benchmark: {flows} flows");
    println!();

    // 1. File writer.
    let path = dir.path().join("writer.om");
    let mut sink = FileSink::create(&path).expect("create");
    let mut writing = Duration::ZERO;
    let mut family = None;
    for_each_history(&sandbox, |h| {
        let t = Instant::now();
        if family != Some(h.metric) {
            family = Some(h.metric);
            sink.family(flowdata::family(h.metric)).expect("family");
        }
        sink.history(h).expect("write");
        writing += t.elapsed();
    });
    let t = Instant::now();
    let samples = sink.finish().expect("finish");
    writing += t.elapsed();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "OpenMetrics file writer: {samples} samples ({:.0} MiB) in {:.2} s: {:.2} M samples/s",
        bytes as f64 / (1 << 20) as f64,
        writing.as_secs_f64(),
        samples as f64 / writing.as_secs_f64() / 1e6
    );
    let _ = std::fs::remove_file(&path);

    // 2. Remote-write encoding.
    let mut batcher = Batcher::new(5000);
    let (mut encoding, mut samples, mut compressed, mut requests) =
        (Duration::ZERO, 0u64, 0u64, 0u64);
    for_each_history(&sandbox, |h| {
        let t = Instant::now();
        for series in h.time_series() {
            samples += series.samples.len() as u64;
            for batch in batcher.push(series) {
                compressed += remote_write::body(&batch).expect("snappy").len() as u64;
                requests += 1;
            }
        }
        encoding += t.elapsed();
    });
    if let Some(batch) = batcher.flush() {
        compressed += remote_write::body(&batch).expect("snappy").len() as u64;
        requests += 1;
    }
    println!(
        "remote-write encoding (series, batches of 5000, protobuf, snappy): {samples} samples in {:.2} s: {:.2} M samples/s, {requests} requests, {:.1} bytes/sample compressed",
        encoding.as_secs_f64(),
        samples as f64 / encoding.as_secs_f64() / 1e6,
        compressed as f64 / samples as f64
    );

    // 3. A real backfill against the sandbox.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    sandbox.set_page_size(100);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind sandbox");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    rt.spawn(
        sandbox
            .clone()
            .serve(listener, stop.clone().cancelled_owned()),
    );
    let config = dir.path().join("config.toml");
    // This measures the exporter, not its rate-limit discipline: no spacing between
    // calls, and thresholds the sandbox's usage figures (capped at 99 % of made-up
    // hourly allowances that 1,000 flows pass) never reach.
    let mut text = format!(
        "[graph]\nbase_url = \"http://{addr}\"\nmax_concurrency = {concurrency}\nretry_backoff = \"50ms\"\n[rate_limit]\nmin_call_interval = \"0s\"\nslow_down_at = 0.99\nstop_at = 1.0\n"
    );
    for waba in flows_exporter::sandbox::REALISTIC_WABA_IDS {
        text.push_str(&format!("[[wabas]]\nid = \"{waba}\"\n"));
    }
    std::fs::write(&config, text).expect("config");
    let today = Utc::now().date_naive();
    let output = dir.path().join("backfill.om");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .args(["backfill", "--config"])
        .arg(&config)
        .args(["--since", &(today - Days::new(90)).to_string()])
        .args(["--until", &today.to_string()])
        .args(["--granularity", &granularity])
        .arg("--output")
        .arg(&output)
        .env("WHATSAPP_ACCESS_TOKEN", TOKEN)
        .env("FLOWS_EXPORTER_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flows-exporter backfill");
    let pid = child.id();
    let mut peak_kib = 0;
    let status = loop {
        peak_kib = peak_kib.max(proc_status(pid, "VmHWM:"));
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = started.elapsed();
    let mut summary = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut summary);
    }
    assert!(status.success(), "backfill failed: {summary}");
    let samples = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("samples:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let calls = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("Graph calls:"))
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    println!(
        "backfill of {flows} flows, --granularity {granularity}, 90 days, release binary, sandbox on loopback, max_concurrency {concurrency}: {samples} samples, {calls} Graph calls in {:.1} s; peak RSS {:.1} MiB",
        wall.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
    stop.cancel();
}
