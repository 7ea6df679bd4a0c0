//! Benchmark: what hanging flows cost a poll. A sandbox Graph API serves
//! generated flows with a realistic per-call latency; one exporter (in this
//! process, release build) polls the hour granularity once with every flow
//! answering, then once with some flows whose calls never answer. Prints both
//! wall times, the difference against the call deadline, and the calls the
//! hanging flows cost.
//!
//! Run: `cargo bench --bench hanging`
//! Knobs (environment): BENCH_FLOWS (1000), BENCH_HANGING (10, spread evenly),
//! BENCH_LATENCY_MS (150), BENCH_CONCURRENCY (16), BENCH_DEADLINE_S (10; the
//! request timeout is the same, so a hanging call is one attempt).

#[path = "support/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::sandbox::Sandbox;
use serve::knob;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";

fn main() {
    let flows = knob("BENCH_FLOWS", 1000) as usize;
    let hanging = knob("BENCH_HANGING", 10) as usize;
    let latency_ms = knob("BENCH_LATENCY_MS", 150);
    let concurrency = knob("BENCH_CONCURRENCY", 16);
    let deadline_s = knob("BENCH_DEADLINE_S", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sandbox = Sandbox::generated(flows, TOKEN, Clock::system());
        sandbox.set_latency(Duration::from_millis(latency_ms));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let served = tokio::spawn(
            sandbox
                .clone()
                .serve(listener, stop.clone().cancelled_owned()),
        );
        let config = Config::parse(&format!(
            "[graph]\nbase_url = \"{base}\"\nmax_concurrency = {concurrency}\n\
             timeout = \"{deadline_s}s\"\ndeadline = \"{deadline_s}s\"\n\
             [rate_limit]\nmin_call_interval = \"0s\"\nslow_down_at = 0.99\nstop_at = 1.0\n\
             [granularity.day]\nenabled = false\n[granularity.lifetime]\nenabled = false\n\
             [[wabas]]\nid = \"{}\"\n[[wabas]]\nid = \"{}\"\n",
            flows_exporter::sandbox::REALISTIC_WABA_IDS[0],
            flows_exporter::sandbox::REALISTIC_WABA_IDS[1],
        ))
        .expect("bench config");
        let exporter =
            Exporter::new(config, Secret::new(TOKEN), Clock::system()).expect("exporter");
        exporter.discover().await;
        let polled = exporter.snapshot().polled_flows().len();
        println!(
            "hanging-flow benchmark: {polled} flows, sandbox latency {latency_ms} ms, max_concurrency {concurrency}, deadline {deadline_s} s"
        );

        let started = Instant::now();
        exporter.poll(Granularity::Hour).await;
        let healthy = started.elapsed();
        let calls_healthy = sandbox.take_metric_requests().len();
        let bound = calls_healthy as f64 * latency_ms as f64 / 1000.0 / concurrency as f64;
        println!(
            "poll, every flow answering: {:.2} s for {calls_healthy} calls (bound {bound:.2} s: calls x latency / concurrency)",
            healthy.as_secs_f64()
        );

        let step = (flows / hanging.max(1)).max(1);
        let hung: Vec<String> = sandbox
            .flows()
            .into_iter()
            .step_by(step)
            .take(hanging)
            .map(|f| f.id)
            .collect();
        for id in &hung {
            sandbox.set_flow_latency(id, Duration::from_secs(24 * 3600));
        }
        let started = Instant::now();
        exporter.poll(Granularity::Hour).await;
        let with_hangs = started.elapsed();
        let calls = sandbox.take_metric_requests();
        let to_hung = calls.iter().filter(|(f, _, _)| hung.contains(f)).count();
        let extra = with_hangs.as_secs_f64() - healthy.as_secs_f64();
        println!(
            "poll, {} flows hanging: {:.2} s for {} calls ({to_hung} to the hanging flows)",
            hung.len(),
            with_hangs.as_secs_f64(),
            calls.len()
        );
        println!(
            "difference: {extra:+.2} s = {:.2} deadlines ({})",
            extra / deadline_s as f64,
            if extra <= deadline_s as f64 {
                "at most one deadline longer"
            } else {
                "MORE than one deadline longer"
            }
        );
        stop.cancel();
        let _ = served.await;
    });
}
