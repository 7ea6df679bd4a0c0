//! Scale-out end to end with real parts: the sandbox with many WABAs, three
//! exporter replicas with `shard_total = 3`, Prometheus 2.42 in agent mode
//! scraping them and remote-writing into VictoriaMetrics. In VictoriaMetrics
//! every flow's series arrived exactly once and equals a single exporter's
//! output; the shard alerts are quiet; after one replica stops, its shard's
//! series go stale and the missing-shard alert's expression fires.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::sandbox::Sandbox;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const WABAS: usize = 12;

fn config(base_url: &str, cluster: &str) -> Config {
    let mut text = format!(
        "[graph]\nbase_url = \"{base_url}\"\nmax_concurrency = 8\n\
         [rate_limit]\nmin_call_interval = \"0s\"\nslow_down_at = 0.99\nstop_at = 1.0\n\
         [discovery]\nschedule = \"0 0 0 1 1 *\"\n\
         [granularity.hour]\nschedule = \"0 0 0 1 1 *\"\n[granularity.day]\nenabled = false\n\
         [granularity.lifetime]\nenabled = false\n{cluster}\n"
    );
    for w in 0..WABAS {
        text.push_str(&format!(
            "[[wabas]]\nid = \"{}\"\n",
            Sandbox::generated_waba(w)
        ));
    }
    Config::parse(&text).expect("valid")
}

/// An instant query against VictoriaMetrics' Prometheus API.
async fn vm_query(base: &str, expr: &str) -> Vec<Value> {
    let body: Value = serde_json::from_str(
        &http()
            .get(format!(
                "{base}/api/v1/query?query={}",
                crate::prometheus::encode(expr)
            ))
            .send()
            .await
            .expect("query")
            .text()
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(body["status"], "success", "{expr}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Queries until `done` holds for the result, at most `within`.
async fn vm_wait(
    base: &str,
    expr: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let r = vm_query(base, expr).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {expr}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A series as `name{labels}` without the scrape's own labels, sorted.
fn series_key(metric: &serde_json::Map<String, Value>) -> String {
    let name = metric["__name__"].as_str().unwrap_or("");
    let labels: BTreeMap<&str, &str> = metric
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
        .collect();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// The same key for a line of the text format (labels sorted).
fn line_key(line: &str) -> (String, f64) {
    let (series, value) = line.rsplit_once(' ').expect("a sample line");
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let mut pairs: Vec<&str> = if labels.is_empty() {
        Vec::new()
    } else {
        labels.split("\",").collect()
    };
    for p in &mut pairs {
        *p = p.trim_end_matches('"');
    }
    pairs.sort();
    let labels: Vec<String> = pairs.iter().map(|p| format!("{p}\"")).collect();
    (
        format!("{name}{{{}}}", labels.join(",")),
        value.parse().expect("a value"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_through_a_prometheus_agent_into_victoria_metrics() {
    let _turn = real_servers().await;
    let sb = start_sandbox(Sandbox::generated_wabas(
        60,
        WABAS,
        TOKEN,
        Clock::fixed(now()),
    ))
    .await;
    let stop_all = CancellationToken::new();
    let _stop_on_exit = stop_all.clone().drop_guard();

    // What one exporter exports, for comparison.
    let single = Exporter::new(
        config(&sb.base_url, ""),
        Secret::new(TOKEN),
        Clock::fixed(now()),
    )
    .expect("exporter");
    single.discover().await;
    single.poll(Granularity::Hour).await;
    let whole = flows_exporter::exposition::render(&single.snapshot(), &[Granularity::Hour], 0);
    let whole: BTreeMap<String, f64> = whole
        .lines()
        .filter(|l| l.starts_with("whatsapp_flows_") && !l.starts_with("whatsapp_flows_exporter_"))
        .map(line_key)
        .collect();
    assert!(whole.len() > 300, "{} series", whole.len());

    // Three replicas, each with its own stop.
    let mut targets = Vec::new();
    let mut stops = Vec::new();
    for index in 0..3 {
        let cfg = config(
            &sb.base_url,
            &format!("[cluster]\nshard_index = {index}\nshard_total = 3\n"),
        );
        let ex = Exporter::new(cfg, Secret::new(TOKEN), Clock::fixed(now())).expect("exporter");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        targets.push(listener.local_addr().expect("addr").to_string());
        let stop = stop_all.child_token();
        tokio::spawn(flows_exporter::app::run(ex.clone(), listener, stop.clone()));
        wait_for("a replica's start-up", Duration::from_secs(30), || {
            ex.is_ready()
        })
        .await;
        stops.push(stop);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let vm_port = free_port();
    let mut vm = Server::start(
        "victoria-metrics",
        &[
            format!("-httpListenAddr=127.0.0.1:{vm_port}"),
            format!("-storageDataPath={}", dir.path().join("vm").display()),
            "-loggerLevel=ERROR".to_owned(),
            "-search.latencyOffset=0s".to_owned(),
            "-search.maxStalenessInterval=5s".to_owned(),
        ],
        vm_port,
        dir.path(),
    );
    vm.wait_ready("/health").await;
    let agent_port = free_port();
    let targets_yaml: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let agent_config = dir.path().join("agent.yml");
    std::fs::write(
        &agent_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: whatsapp_flows\n    static_configs:\n      - targets: [{}]\n\
             remote_write:\n  - url: {}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
            targets_yaml.join(", "),
            vm.base
        ),
    )
    .expect("agent config");
    let mut agent = Server::start(
        "prometheus",
        &[
            "--enable-feature=agent".to_owned(),
            format!("--config.file={}", agent_config.display()),
            format!(
                "--storage.agent.path={}",
                dir.path().join("agent").display()
            ),
            format!("--web.listen-address=127.0.0.1:{agent_port}"),
            "--log.level=warn".to_owned(),
        ],
        agent_port,
        dir.path(),
    );
    agent.wait_ready("/-/ready").await;

    // Every flow series arrived, from exactly one replica, with the single
    // exporter's value.
    let flow_series = r#"{__name__=~"whatsapp_flows_.+", __name__!~"whatsapp_flows_exporter_.+", job="whatsapp_flows"}"#;
    let got = vm_wait(&vm.base, flow_series, Duration::from_secs(60), |r| {
        r.len() >= whole.len()
    })
    .await;
    let mut seen: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for s in &got {
        let metric = s["metric"].as_object().expect("metric");
        let key = series_key(metric);
        let value: f64 = s["value"][1]
            .as_str()
            .expect("value")
            .parse()
            .expect("number");
        let instance = metric["instance"].as_str().unwrap_or("").to_owned();
        if let Some((_, other)) = seen.insert(key.clone(), (value, instance.clone())) {
            panic!("{key} came from two replicas: {other} and {instance}");
        }
    }
    assert_eq!(seen.len(), whole.len(), "as many series as one exporter");
    for (key, want) in &whole {
        let (got, _) = seen
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing in VictoriaMetrics"));
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{key}: {got} vs {want}"
        );
    }

    // The shard alerts' expressions are quiet.
    let rules = crate::rules::rules_text();
    let expr_of = |alert: &str| -> String {
        let block = rules
            .split(&format!("- alert: {alert}\n"))
            .nth(1)
            .expect("the alert");
        let expr = block.split("expr: |\n").nth(1).expect("a block expr");
        expr.lines()
            .take_while(|l| l.starts_with("          "))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let missing = expr_of("WhatsAppFlowsExporterShardMissing");
    let misconfigured = expr_of("WhatsAppFlowsExporterShardsMisconfigured");
    assert!(vm_query(&vm.base, &missing).await.is_empty(), "{missing}");
    assert!(
        vm_query(&vm.base, &misconfigured).await.is_empty(),
        "{misconfigured}"
    );

    // Replica 2 stops: its shard goes stale and the missing-shard alert fires.
    let shard_2 = r#"count(whatsapp_flows_flow_info{job="whatsapp_flows"})"#;
    let before = vm_query(&vm.base, shard_2).await[0]["value"][1]
        .as_str()
        .expect("v")
        .parse::<f64>()
        .expect("n");
    stops[2].cancel();
    let fired = vm_wait(&vm.base, &missing, Duration::from_secs(60), |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(fired[0]["value"][1], "1", "{fired:?}");
    let after = vm_wait(&vm.base, shard_2, Duration::from_secs(60), |r| {
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n < before)
    })
    .await;
    eprintln!(
        "flow_info series: {before} with 3 replicas, {} after replica 2 stopped",
        after[0]["value"][1]
    );

    // From 3 to 4 replicas: how many of the WABAs move.
    let owners = |total: u32| -> Vec<u32> {
        (0..WABAS)
            .map(|w| flows_exporter::shard::shard_of(&Sandbox::generated_waba(w), total))
            .collect()
    };
    let moved = owners(3)
        .iter()
        .zip(owners(4))
        .filter(|(a, b)| **a != *b)
        .count();
    eprintln!("3 -> 4 replicas: {moved} of {WABAS} WABAs move (each to the new replica)");
    assert!(moved <= WABAS / 2, "{moved}");
    drop(agent);
    drop(vm);
}
