//! End to end with real parts: the sandbox Graph API, the exporter (scheduler
//! and HTTP server, system clock), and a real Prometheus that scrapes it every
//! second and loads the shipped rules. Every PromQL expression of every
//! dashboard, with its template variables resolved through Prometheus like
//! Grafana would, must return data; the rules must evaluate without errors;
//! the scraped exposition must pass `promtool check metrics`; and an alert must
//! go to `firing` when the sandbox starts rejecting the token.

use std::collections::BTreeMap;
use std::time::Duration;

use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::{Exporter, Job};
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::sandbox::Sandbox;
use flows_exporter::sandbox::meta::{MetaWebhooks, envelope};
use flows_exporter::store::sqlite::Sqlite;
use flows_exporter::webhook::{AppSecrets, Receiver, Settings};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::dashboards::{self, BUILTINS, Dashboard, Variable};
use crate::prometheus::Prometheus;
use crate::rules;
use crate::support::*;

/// Bound on every wait for Prometheus to see something.
const WAIT: Duration = Duration::from_secs(30);

const HOOK_SECRET: &str = "e2e-app-secret";
const INTAKE: &str = "e2e-intake-token";
const PAGE: &str = "106378625516323";

/// The alert proven live.
const LIVE_ALERT: &str = "WhatsAppFlowsTokenInvalid";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_work_against_a_real_prometheus() {
    let _turn = real_servers().await;
    // The sandbox and the exporter both read the system clock, so periods,
    // last-success times and staleness are what a live system would show.
    let sb = start_sandbox(Sandbox::realistic(TOKEN, Clock::system())).await;
    let text = config_text(
        &sb.base_url,
        // Polls run when the test says so, never on a schedule mid-test.
        r#"
[discovery]
schedule = "0 0 0 1 1 *"
[granularity.hour]
schedule = "0 0 0 1 1 *"
[granularity.day]
schedule = "0 0 0 1 1 *"
[granularity.lifetime]
schedule = "0 0 0 1 1 *"
"#,
    );
    let config = Config::parse(&text).expect("test config is valid");
    let ex = Exporter::new(config, Secret::new(TOKEN), Clock::system()).expect("exporter");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let exporter_addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    // The webhook receiver too, so the webhook panels and alerts have data.
    let hooks = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hooks_url = format!("http://{}/webhooks", hooks.local_addr().expect("addr"));
    let receiver = Receiver::new(
        Settings {
            intake_token: Some(Secret::new(INTAKE)),
            pages: [PAGE.to_owned()].into(),
            ..Settings::new(AppSecrets::parse(HOOK_SECRET).expect("secret"))
        },
        Arc::new(Sqlite::temporary().expect("store")),
        Clock::system(),
    )
    .expect("receiver");
    // Messenger calls: the sandbox places them and sends their webhooks; the
    // relay sends their metrics back to it.
    sb.sandbox.add_page(PAGE);
    sb.sandbox.set_webhook_target(&hooks_url, HOOK_SECRET);
    let relay = flows_exporter::relay::Relay::new(
        receiver.clone(),
        &ex.config().graph,
        [(PAGE.to_owned(), Secret::new(TOKEN))].into(),
    )
    .expect("relay");
    let run = tokio::spawn(flows_exporter::app::run_with(
        ex.clone(),
        vec![listener],
        "/metrics",
        Arc::new(flows_exporter::web::WebConfig::default()),
        Some(flows_exporter::app::WebhookListener {
            listener: hooks,
            receiver,
            web: Arc::new(flows_exporter::web::WebConfig::default()),
            path: "/webhooks".into(),
            relay: Some(relay),
        }),
        stop.clone(),
    ));

    let prom =
        Prometheus::start(&exporter_addr, &rules::with_for(&rules::rules_text(), "1s")).await;

    // The start-up discovery and polls, then a few scrapes of their results.
    let deadline = std::time::Instant::now() + WAIT;
    while !ex.is_ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    prom.wait_for(
        r#"count_over_time(up{job="whatsapp_flows"}[1m]) >= 3"#,
        WAIT,
    )
    .await;
    // One more round of every job while Prometheus watches, as a running system
    // has every hour: counters rise, so rate- and increase-based panels have
    // something to show.
    ex.run_job(Job::Discovery).await;
    for g in [Granularity::Hour, Granularity::Day, Granularity::Lifetime] {
        ex.run_job(Job::Poll(g)).await;
    }
    prom.wait_for(
        r#"sum(increase(whatsapp_flows_exporter_polls_total{poll="lifetime"}[1m])) > 0"#,
        WAIT,
    )
    .await;

    post_webhooks(&sb.sandbox, &hooks_url).await;
    prom.wait_for("whatsapp_flows_webhook_latency_p90_seconds", WAIT)
        .await;
    // Two rounds of calls with scrapes between, so rates have something.
    for round in 0..2 {
        place_calls(&sb, &hooks_url, round).await;
        prom.wait_for(
            &format!(
                r#"sum(messenger_call_metrics_forwarded_total{{result="sent"}}) >= {}"#,
                5 * (round + 1)
            ),
            WAIT,
        )
        .await;
    }

    check_target_and_exposition(&prom, &exporter_addr).await;
    check_rules_evaluate(&prom).await;
    check_every_dashboard_query(&prom).await;
    prove_live_alert(&prom, &sb.sandbox, &ex).await;
    prove_webhook_alert(&prom, &hooks_url).await;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("the exporter stops")
        .expect("task")
        .expect("the exporter ran without error");
}

/// Every flow of the sandbox gets each of Meta's four alerts (raised now, so
/// none has lasted long enough to fire) with its figures, as Meta would send
/// them: every webhook panel of every flow has data.
async fn post_webhooks(sandbox: &Sandbox, url: &str) {
    let meta = MetaWebhooks::new(url, HOOK_SECRET);
    let now = chrono::Utc::now().timestamp();
    for flow in sandbox.flows() {
        let id = flow.id.as_str();
        let body = envelope(
            &flow.waba_id,
            now,
            &[
                json!({"event":"ENDPOINT_ERROR_RATE","flow_id":id,"error_rate":14.28,"threshold":10,"alert_state":"ACTIVATED",
                   "errors":[{"error_type":"TIMEOUT","error_rate":100,"error_count":3}]}),
                json!({"event":"CLIENT_ERROR_RATE","flow_id":id,"error_rate":6,"threshold":5,"alert_state":"ACTIVATED",
                   "errors":[{"error_type":"INVALID_SCREEN_TRANSITION","error_rate":100,"error_count":2}]}),
                json!({"event":"ENDPOINT_LATENCY","flow_id":id,"p50_latency":700,"p90_latency":8000,"requests_count":40,"threshold":7000,"alert_state":"ACTIVATED"}),
                json!({"event":"ENDPOINT_AVAILABILITY","flow_id":id,"availability":100,"threshold":90,"alert_state":"DEACTIVATED"}),
            ],
        );
        assert_eq!(meta.post(&body).await.expect("post"), 200);
    }
}

/// Five calls at once through the sandbox's calling API as the demo's
/// business places them (one the consumer never picks up, which fails), each
/// with its metrics posted to the intake.
async fn place_calls(sb: &RunningSandbox, hooks_url: &str, round: u64) {
    let business = flows_exporter::sandbox::business::Business {
        graph: format!("{}/v23.0", sb.base_url),
        token: TOKEN.to_owned(),
        page_id: PAGE.to_owned(),
        intake: hooks_url.replace("/webhooks", &format!("/calls/{PAGE}/metrics")),
        intake_token: INTAKE.to_owned(),
    };
    let client = http();
    let clock = Clock::system();
    let calls = (1..=5).map(|n| business.one_call(&client, &sb.sandbox, &clock, round * 5 + n));
    futures_util::future::join_all(calls).await;
}

/// A latency alert Meta raised an hour ago and never cleared fires
/// WhatsAppFlowsWebhookAlertActive in Prometheus.
async fn prove_webhook_alert(prom: &Prometheus, url: &str) {
    let flow = "1467393620448117";
    let before = prom
        .query(r#"ALERTS{alertname="WhatsAppFlowsWebhookAlertActive"}"#)
        .await
        .expect("ALERTS");
    assert!(before.is_empty(), "fires before the old alert: {before:?}");
    let hour_ago = chrono::Utc::now().timestamp() - 3600;
    let body = envelope(
        WABA_2,
        hour_ago,
        &[json!({"event":"ENDPOINT_AVAILABILITY","flow_id":flow,
        "availability":60,"threshold":90,"alert_state":"ACTIVATED"})],
    );
    // Older than the DEACTIVATED in force: out of order, not applied.
    assert_eq!(
        MetaWebhooks::new(url, HOOK_SECRET)
            .post(&body)
            .await
            .expect("post"),
        200
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        prom.query(r#"ALERTS{alertname="WhatsAppFlowsWebhookAlertActive"}"#)
            .await
            .expect("ALERTS")
            .is_empty()
    );
    // The same alert on a flow with no newer event is in force and fires.
    let body = envelope(
        WABA_2,
        hour_ago,
        &[json!({"event":"ENDPOINT_AVAILABILITY","flow_id":"5550123",
        "availability":60,"threshold":90,"alert_state":"ACTIVATED"})],
    );
    assert_eq!(
        MetaWebhooks::new(url, HOOK_SECRET)
            .post(&body)
            .await
            .expect("post"),
        200
    );
    let firing = prom
        .wait_for(
            r#"ALERTS{alertname="WhatsAppFlowsWebhookAlertActive", alertstate="firing"}"#,
            WAIT,
        )
        .await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].label("flow_id"), "5550123", "{firing:?}");
    assert_eq!(
        firing[0].label("alert"),
        "endpoint_availability",
        "{firing:?}"
    );
}

/// Prometheus scrapes the exporter without errors, and the exposition it
/// scrapes passes `promtool check metrics` without a word.
async fn check_target_and_exposition(prom: &Prometheus, exporter_addr: &str) {
    let targets = prom.api("/api/v1/targets").await.expect("targets");
    let active = targets["activeTargets"].as_array().expect("activeTargets");
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(active[0]["lastError"], "", "{targets}");

    let up = prom.query(r#"up{job="whatsapp_flows"}"#).await.expect("up");
    assert!(up.len() == 1 && up[0].value == 1.0, "{up:?}");

    let text = http()
        .get(format!("http://{exporter_addr}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let (ok, printed) = promtool_check(&text);
    assert!(ok, "promtool check metrics failed: {printed}");
    assert_eq!(printed, "", "promtool check metrics must report nothing");
}

/// Every rule of the shipped file is loaded and has evaluated without error,
/// and every recording rule has written series.
async fn check_rules_evaluate(prom: &Prometheus) {
    let expected = rules::alert_names(&rules::rules_text());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let data = prom.api("/api/v1/rules").await.expect("rules");
        let loaded: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let alerts: Vec<&str> = loaded
            .iter()
            .filter(|r| r["type"] == "alerting")
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(alerts, expected, "Prometheus loaded every alert");
        assert!(loaded.iter().any(|r| r["type"] == "recording"));
        let errors: Vec<String> = loaded
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(errors.is_empty(), "rules failed to evaluate: {errors:#?}");
        if loaded.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rules never evaluated: {data}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for record in rules::record_names(&rules::rules_text()) {
        prom.wait_for(&record, WAIT).await;
    }
}

/// Resolves a dashboard's variables through Prometheus, in order, as Grafana
/// does on load: "All" where the dashboard saves it as current, else the first
/// value. Custom variables give one set of values per option.
async fn resolve_variables(prom: &Prometheus, d: &Dashboard) -> Vec<BTreeMap<String, String>> {
    let builtins: BTreeMap<String, String> = BUILTINS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut sets = vec![builtins];
    for v in d.variables() {
        let mut next = Vec::new();
        for values in sets {
            match &v {
                Variable::Datasource { .. } => next.push(values),
                Variable::Custom { name, options } => {
                    for option in options {
                        let mut values = values.clone();
                        values.insert(name.clone(), option.clone());
                        next.push(values);
                    }
                }
                Variable::Query {
                    name,
                    query,
                    all_value,
                    regex,
                } => {
                    let query = dashboards::substitute(query, &values)
                        .unwrap_or_else(|e| panic!("{}: variable {name}: {e}", d.file));
                    let found = variable_values(prom, &query, regex).await;
                    assert!(
                        !found.is_empty(),
                        "{}: variable {name} has no values: {query}",
                        d.file
                    );
                    let mut values = values.clone();
                    let chosen = all_value.clone().unwrap_or_else(|| found[0].clone());
                    values.insert(name.clone(), chosen);
                    next.push(values);
                }
            }
        }
        sets = next;
    }
    sets
}

/// The values of a `label_values(...)` or `query_result(...)` variable query.
async fn variable_values(prom: &Prometheus, query: &str, regex: &str) -> Vec<String> {
    let (expr, label) = if let Some((selector, label)) = dashboards::parse_label_values(query) {
        assert!(
            !selector.is_empty(),
            "label_values without a metric: {query}"
        );
        (selector, label)
    } else if let Some(expr) = dashboards::parse_query_result(query) {
        let label = dashboards::value_label_of_regex(regex)
            .unwrap_or_else(|| panic!("query_result needs a regex capturing (?<value>): {regex}"));
        (expr, label)
    } else {
        panic!("unsupported variable query: {query}");
    };
    let samples = prom
        .query(&expr)
        .await
        .unwrap_or_else(|e| panic!("variable query {expr}: {e}"));
    let mut values: Vec<String> = samples
        .iter()
        .map(|s| s.label(&label).to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    values.sort();
    values.dedup();
    values
}

/// Every expression of every panel returns at least one sample that is a
/// number, for every combination of the dashboards' custom variables.
async fn check_every_dashboard_query(prom: &Prometheus) {
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for d in dashboards::load_all() {
        let targets = d.targets();
        assert!(!targets.is_empty(), "{}: no queries", d.file);
        for values in resolve_variables(prom, &d).await {
            for t in &targets {
                let expr = dashboards::substitute(t.expr, &values)
                    .unwrap_or_else(|e| panic!("{}: {}: {e}", d.file, t.describe()));
                evaluated += 1;
                let at = || {
                    let vars: Vec<String> = values
                        .iter()
                        .filter(|(k, _)| !k.starts_with("__"))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    format!("{} {} [{}]\n  {expr}", d.file, t.describe(), vars.join(" "))
                };
                match prom.query(&expr).await {
                    Err(e) => failures.push(format!("{}\n  error: {e}", at())),
                    Ok(samples) if samples.is_empty() => {
                        failures.push(format!("{}\n  returned nothing", at()));
                    }
                    Ok(samples) if samples.iter().all(|s| s.value.is_nan()) => {
                        failures.push(format!("{}\n  returned only NaN: {samples:?}", at()));
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    assert!(evaluated > 100, "only {evaluated} queries evaluated");
    assert!(
        failures.is_empty(),
        "{} of {evaluated} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The token stops working at Graph: after the next poll the exporter says so,
/// and the alert goes from not firing to firing in Prometheus; with the token
/// back it resolves.
async fn prove_live_alert(prom: &Prometheus, sandbox: &Sandbox, ex: &Exporter) {
    let selector = format!(r#"ALERTS{{alertname="{LIVE_ALERT}"}}"#);
    let before = prom.query(&selector).await.expect("ALERTS");
    assert!(
        before.is_empty(),
        "{LIVE_ALERT} is active before the fault: {before:?}"
    );

    sandbox.set_token("a-token-issued-elsewhere");
    ex.poll(Granularity::Hour).await;
    assert_eq!(
        value(&scrape(ex), "whatsapp_flows_exporter_token_valid"),
        Some(0.0),
        "the exporter saw Graph reject the token"
    );
    let firing = prom
        .wait_for(
            &format!(r#"ALERTS{{alertname="{LIVE_ALERT}", alertstate="firing"}}"#),
            WAIT,
        )
        .await;
    assert_eq!(firing[0].label("severity"), "critical", "{firing:?}");
    assert_eq!(firing[0].label("job"), "whatsapp_flows", "{firing:?}");

    // The annotations Prometheus rendered for it.
    let alerts = prom.api("/api/v1/alerts").await.expect("alerts");
    let alert = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == LIVE_ALERT)
        .unwrap_or_else(|| panic!("{LIVE_ALERT} missing from /api/v1/alerts: {alerts}"));
    assert_eq!(alert["state"], "firing");
    let summary = alert["annotations"]["summary"].as_str().unwrap_or("");
    assert!(summary.contains("rejects the access token"), "{summary}");

    // A new token and a successful poll clear it.
    sandbox.set_token(TOKEN);
    ex.poll(Granularity::Hour).await;
    let deadline = std::time::Instant::now() + WAIT;
    while !prom.query(&selector).await.expect("ALERTS").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{LIVE_ALERT} did not resolve after the token was fixed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
