//! Benchmark: the webhook receiver of the release binary (`flows-exporter
//! serve` with `[webhooks]`), storing into its SQLite file on disk with the
//! durability it ships with (WAL, every commit synced before the 200).
//! Signed payloads of about 1 KB, 10 KB and 1 MB (Meta sends up to 3 MB and
//! 1,000 updates a batch) are posted by a few concurrent clients over
//! keep-alive connections; every change is new (no duplicates). Prints, per
//! size: posts and events (changes applied) per second, and answer times
//! (p50, p99, max) as the clients saw them; then checks on `/metrics` that
//! every post was accepted and nothing was lost.
//!
//! Run: `cargo bench --bench webhooks`
//! Knobs (environment): BENCH_CLIENTS (4), BENCH_POSTS_1K (4000),
//! BENCH_POSTS_10K (2000), BENCH_POSTS_1M (60).

#[path = "support/serve.rs"]
mod serve;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flows_exporter::webhook::AppSecrets;
use serde_json::json;
use serve::{Proc, free_port, knob, percentile};

const SECRET: &str = "bench-app-secret";
const WABA: &str = "102290129340398";

/// A signed body of about `target` bytes: `changes` ENDPOINT_ERROR_RATE events
/// for distinct flows, each with a message padded so the whole reaches `target`.
fn body(post: u64, changes: usize, target: usize) -> String {
    let pad = (target / changes).saturating_sub(330);
    let values: Vec<serde_json::Value> = (0..changes)
        .map(|i| {
            json!({"field": "flows", "value": {
                "event": "ENDPOINT_ERROR_RATE", "flow_id": format!("{}", 1_000_000 + i),
                "error_rate": 14.28, "threshold": 10, "alert_state": "ACTIVATED",
                "message": "x".repeat(pad),
                "errors": [{"error_type": "TIMEOUT", "error_rate": 66.66, "error_count": 2},
                           {"error_type": "CAPABILITY_ERROR", "error_rate": 33.33, "error_count": 1}]}})
        })
        .collect();
    json!({"object": "whatsapp_business_account",
           "entry": [{"id": WABA, "time": 1_700_000_000 + post, "changes": values}]})
    .to_string()
}

fn main() {
    let clients = knob("BENCH_CLIENTS", 4);
    let sizes = [
        ("1 KB", 1024usize, 2usize, knob("BENCH_POSTS_1K", 4000)),
        ("10 KB", 10 * 1024, 10, knob("BENCH_POSTS_10K", 2000)),
        ("1 MB", 1024 * 1024, 1000, knob("BENCH_POSTS_1M", 60)),
    ];
    let dir = tempfile::tempdir_in(".").expect("temp dir on the working disk");
    let (metrics_port, hook_port) = (free_port(), free_port());
    let db = dir.path().join("bench.db");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{metrics_port}\"\n[graph]\nbase_url = \"http://127.0.0.1:9\"\n\
             [[wabas]]\nid = \"{WABA}\"\n[webhooks]\nlisten = \"127.0.0.1:{hook_port}\"\n\
             [storage]\npath = \"{}\"\n",
            db.display()
        ),
    )
    .expect("config");
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("WHATSAPP_ACCESS_TOKEN", "bench-token")
            .env("META_APP_SECRET", SECRET)
            .env("FLOWS_EXPORTER_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flows-exporter serve"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("http://127.0.0.1:{hook_port}/webhooks");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(&url).send().await.is_err() {
            assert!(Instant::now() < deadline, "the receiver never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    println!(
        "webhook receiver, release build, SQLite WAL synchronous=FULL on {}; {clients} clients, keep-alive",
        db.display()
    );
    println!("| payload | changes/post | posts | posts/s | events/s | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut post_no = 0u64;
    let mut total_posts = 0u64;
    for (label, size, changes, posts) in sizes {
        // Bodies made and signed before the clock starts.
        let bodies: Vec<(String, String)> = (0..posts)
            .map(|i| {
                let b = body(post_no + i, changes, size);
                let sig = AppSecrets::sign(SECRET, b.as_bytes());
                (b, sig)
            })
            .collect();
        post_no += posts;
        total_posts += posts;
        let actual = bodies[0].0.len();
        let bodies = Arc::new(bodies);
        let started = Instant::now();
        let mut times: Vec<Duration> = rt.block_on(async {
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    let (http, url, bodies) = (http.clone(), url.clone(), bodies.clone());
                    tokio::spawn(async move {
                        let mut times = Vec::new();
                        for (b, sig) in bodies.iter().skip(c as usize).step_by(clients as usize) {
                            let t = Instant::now();
                            let r = http
                                .post(&url)
                                .header("x-hub-signature-256", sig)
                                .body(b.clone())
                                .send()
                                .await
                                .expect("post");
                            assert_eq!(r.status(), 200);
                            times.push(t.elapsed());
                        }
                        times
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("client"));
            }
            all
        });
        let wall = started.elapsed().as_secs_f64();
        times.sort();
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {label} ({actual} B) | {changes} | {posts} | {:.0} | {:.0} | {} | {} | {} |",
            posts as f64 / wall,
            (posts as usize * changes) as f64 / wall,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().expect("times")),
        );
    }
    let text = rt.block_on(async {
        http.get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body")
    });
    let accepted = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("whatsapp_flows_exporter_webhook_requests_total{result=\"accepted\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert_eq!(accepted as u64, total_posts, "every post accepted");
    let rss_kib = serve::proc_status(child.0.id(), "VmHWM:");
    let _ = child.0.kill();
    let _ = child.0.wait();
    let db_bytes: u64 = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "\n{total_posts} posts accepted (/metrics agrees); exporter peak RSS {:.1} MiB; database files {:.1} MiB",
        rss_kib as f64 / 1024.0,
        db_bytes as f64 / (1024.0 * 1024.0)
    );
}
