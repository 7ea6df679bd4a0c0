//! Benchmark: the work of one replica when 10,000 flows over 100 WABAs are
//! shared by 1, 2 and 4 replicas (`--shard.index`/`--shard.total`). Each
//! replica (the release binary) runs alone against the sandbox Graph API, so
//! the figures are its own: the start-up discovery and hour poll (wall time
//! from start to `/-/ready`), peak RSS, and the size of `/metrics`.
//!
//! Run: `cargo bench --bench shards`
//! Knobs (environment): BENCH_FLOWS (10000), BENCH_WABAS (100),
//! BENCH_LATENCY_MS (0), BENCH_CONCURRENCY (16).

#[path = "support/serve.rs"]
mod serve;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flows_exporter::model::Clock;
use flows_exporter::sandbox::Sandbox;
use serve::{Proc, Scraper, free_port, knob, proc_status};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-token";

fn main() {
    let flows = knob("BENCH_FLOWS", 10_000) as usize;
    let wabas = knob("BENCH_WABAS", 100) as usize;
    let latency = knob("BENCH_LATENCY_MS", 0);
    let concurrency = knob("BENCH_CONCURRENCY", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sandbox = Sandbox::generated_wabas(flows, wabas, TOKEN, Clock::system());
    sandbox.set_latency(Duration::from_millis(latency));
    sandbox.set_page_size(100);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind sandbox");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    rt.spawn(
        sandbox
            .clone()
            .serve(listener, stop.clone().cancelled_owned()),
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    let mut text = format!(
        "[graph]\nbase_url = \"http://{addr}\"\nmax_concurrency = {concurrency}\nretry_backoff = \"50ms\"\n\
         [rate_limit]\nmin_call_interval = \"0s\"\nslow_down_at = 0.99\nstop_at = 1.0\n\
         [granularity.day]\nenabled = false\n[granularity.lifetime]\nenabled = false\n"
    );
    for w in 0..wabas {
        text.push_str(&format!(
            "[[wabas]]\nid = \"{}\"\n",
            Sandbox::generated_waba(w)
        ));
    }
    std::fs::write(&config, text).expect("config");

    println!(
        "{flows} flows over {wabas} WABAs, hour granularity, sandbox latency {latency} ms, max_concurrency {concurrency}; each replica alone"
    );
    println!(
        "| replicas | replica | WABAs | flows | start-up (discovery + hour poll) | peak RSS | /metrics |"
    );
    println!("|---|---|---|---|---|---|---|");
    for total in [1u32, 2, 4] {
        for index in 0..total {
            let owned = (0..wabas)
                .filter(|w| {
                    flows_exporter::shard::shard_of(&Sandbox::generated_waba(*w), total) == index
                })
                .count();
            let port = free_port();
            let started = Instant::now();
            let child = Proc(
                Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
                    .args(["serve", "--config.file"])
                    .arg(&config)
                    .arg("--web.listen-address")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--shard.index")
                    .arg(index.to_string())
                    .arg("--shard.total")
                    .arg(total.to_string())
                    .env("WHATSAPP_ACCESS_TOKEN", TOKEN)
                    .env("FLOWS_EXPORTER_LOG", "error")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("start flows-exporter serve"),
            );
            let deadline = started + Duration::from_secs(900);
            loop {
                let ready = Scraper::connect(port, "/-/ready", false)
                    .and_then(|mut s| s.get())
                    .is_ok_and(|(status, _)| status == 200);
                if ready {
                    break;
                }
                assert!(Instant::now() < deadline, "replica never became ready");
                std::thread::sleep(Duration::from_millis(20));
            }
            let startup = started.elapsed();
            let (_, bytes) = Scraper::connect(port, "/metrics", false)
                .and_then(|mut s| s.get())
                .expect("scrape");
            let rss = proc_status(child.0.id(), "VmHWM:");
            let flows_owned = flows / wabas * owned;
            println!(
                "| {total} | {index} | {owned} | {flows_owned} | {:.1} s | {:.1} MiB | {:.2} MB |",
                startup.as_secs_f64(),
                rss as f64 / 1024.0,
                bytes as f64 / 1e6
            );
            drop(child);
        }
    }
    stop.cancel();
}
