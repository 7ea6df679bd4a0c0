//! The webhook receiver through real HTTP: the subscription check, the
//! signature, every `flows` event of Meta's reference with exact series,
//! batches, duplicates, order, unknown events and fields, restarts, the body
//! limit, concurrency, and the flow status in `flow_info`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use flows_exporter::app::{WebhookListener, run_with};
use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::Clock;
use flows_exporter::sandbox::meta::{MetaWebhooks, envelope};
use flows_exporter::store::Store as _;
use flows_exporter::store::sqlite::Sqlite;
use flows_exporter::web::WebConfig;
use flows_exporter::webhook::{AppSecrets, Receiver, Settings};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const SECRET_A: &str = "app-secret-one-4f1c";
const SECRET_B: &str = "app-secret-two-9d2e";
const VERIFY: &str = "verify-me-7781";
const INTAKE: &str = "intake-bearer-5521";
const PAGE: &str = "106378625516323";
/// `entry.time` of the tests' events: the pinned clock's now.
fn t0() -> i64 {
    now().timestamp()
}

/// An exporter (realistic sandbox, one granularity) with a webhook receiver
/// over the database at `db`, both served; the clock can be moved.
struct Hooks {
    ex: Arc<Exporter>,
    url: String,
    base: String,
    receiver: Arc<Receiver>,
    clock: Arc<AtomicI64>,
    _sandbox: RunningSandbox,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Hooks {
    async fn start(db: &Path) -> Hooks {
        let sb = realistic().await;
        let text = config_text(
            &sb.base_url,
            "[granularity.day]\nenabled = false\n[granularity.lifetime]\nenabled = false\n",
        );
        let clock = Arc::new(AtomicI64::new(t0()));
        let at = clock.clone();
        let clock_fn = Clock::from_fn(move || {
            chrono::DateTime::from_timestamp(at.load(Ordering::SeqCst), 0).expect("valid")
        });
        let config = Config::parse(&text).expect("valid");
        let ex = Exporter::new(config, Secret::new(TOKEN), clock_fn.clone()).expect("exporter");
        let receiver = Receiver::new(
            Settings {
                verify_token: Some(Secret::new(VERIFY)),
                intake_token: Some(Secret::new(INTAKE)),
                pages: [PAGE.to_owned()].into(),
                ..Settings::new(
                    AppSecrets::parse(&format!("{SECRET_A},{SECRET_B}")).expect("secrets"),
                )
            },
            Arc::new(Sqlite::open(db).expect("store")),
            clock_fn,
        )
        .expect("receiver");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", metrics.local_addr().expect("addr"));
        let hooks = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/webhooks", hooks.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let run = tokio::spawn(run_with(
            ex.clone(),
            vec![metrics],
            "/metrics",
            Arc::new(WebConfig::default()),
            Some(WebhookListener {
                listener: hooks,
                receiver: receiver.clone(),
                web: Arc::new(WebConfig::default()),
                path: "/webhooks".into(),
                relay: None,
            }),
            stop.clone(),
        ));
        wait_for("start-up", Duration::from_secs(20), || ex.is_ready()).await;
        Hooks {
            ex,
            url,
            base,
            receiver,
            clock,
            _sandbox: sb,
            stop,
            run,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.run.await.expect("task").expect("run ends cleanly");
    }

    fn meta(&self, secret: &str) -> MetaWebhooks {
        MetaWebhooks::new(self.url.clone(), secret)
    }

    /// Signs with the first app's secret and posts; the status.
    async fn post(&self, body: &str) -> u16 {
        self.meta(SECRET_A).post(body).await.expect("post")
    }

    /// Posts `body` with this `X-Hub-Signature-256` (or none); the status.
    async fn post_raw(&self, signature: Option<&str>, body: &str) -> u16 {
        let mut request = http().post(&self.url).body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        request.send().await.expect("post").status().as_u16()
    }

    async fn metrics(&self) -> String {
        get_text(&format!("{}/metrics", self.base)).await
    }

    fn stored(&self) -> u64 {
        self.receiver.store().raw_count().expect("count")
    }
}

fn requests(text: &str, result: &str) -> f64 {
    value(
        text,
        &format!("whatsapp_flows_exporter_webhook_requests_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

fn alert(text: &str, name: &str, flow: &str, kind: &str) -> Option<f64> {
    value(
        text,
        &format!("{name}{{flow_id=\"{flow}\",alert=\"{kind}\"}}"),
    )
}

const FLOW: &str = "1180349906393871";

#[tokio::test]
async fn the_subscription_check_echoes_the_challenge_only_for_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let get = |query: String| {
        let url = format!("{}?{query}", h.url);
        async move {
            let r = http().get(url).send().await.expect("get");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    assert_eq!(
        get(format!(
            "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY}"
        ))
        .await,
        (200, "1158201444".to_owned())
    );
    for query in [
        "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=wrong".to_owned(),
        format!("hub.mode=unsubscribe&hub.challenge=1&hub.verify_token={VERIFY}"),
        format!("hub.mode=subscribe&hub.verify_token={VERIFY}"),
        "hub.mode=subscribe&hub.challenge=1".to_owned(),
        format!("hub.mode=subscribe&hub.challenge=%3Cscript%3E%20x&hub.verify_token={VERIFY}"),
    ] {
        assert_eq!(get(query.clone()).await.0, 403, "{query}");
    }
    let lost = http()
        .get(h.url.replace("/webhooks", "/metrics"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        lost.status(),
        404,
        "/metrics is not on the webhook listener"
    );
    assert!(
        lost.text()
            .await
            .expect("body")
            .contains("webhooks go to /webhooks")
    );
    let text = h.metrics().await;
    assert_eq!(requests(&text, "verified"), 1.0);
    assert_eq!(requests(&text, "verify_refused"), 5.0);
    assert!(!text.contains(VERIFY));
    h.stop().await;
}

#[tokio::test]
async fn signatures_are_checked_over_the_bytes_received() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let body = envelope(
        WABA_1,
        t0(),
        &[json!({"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":FLOW,"warning":"soon"})],
    );
    // Either configured app may sign.
    assert_eq!(h.post(&body).await, 200);
    assert_eq!(h.meta(SECRET_B).post(&body).await.expect("post"), 200);
    // Another app's secret, no header, a malformed header, a body changed after signing.
    assert_eq!(
        h.meta("someone-elses-secret")
            .post(&body)
            .await
            .expect("post"),
        401
    );
    assert_eq!(h.post_raw(None, &body).await, 401);
    assert_eq!(h.post_raw(Some("sha1=0123"), &body).await, 401);
    let signature = AppSecrets::sign(SECRET_A, body.as_bytes());
    assert_eq!(
        h.post_raw(Some(&signature), &body.replace("soon", "later"))
            .await,
        401
    );
    // Meta signs the escaped form of non-ASCII text: the escaped bytes pass,
    // the same JSON with the characters written out does not.
    let escaped = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","time":1706616000,"changes":[{"field":"flows","value":{"event":"FLOW_STATUS_CHANGE","flow_id":"947325160880432","old_status":"THROTTLED","new_status":"PUBLISHED","message":"Flow \u00e4\u00f6\u00e5 changed status"}}]}]}"#;
    let signature = AppSecrets::sign(SECRET_A, escaped.as_bytes());
    assert_eq!(h.post_raw(Some(&signature), escaped).await, 200);
    let written_out = escaped.replace(r"\u00e4\u00f6\u00e5", "äöå");
    assert_eq!(h.post_raw(Some(&signature), &written_out).await, 401);

    assert_eq!(h.stored(), 3, "only the signed bodies are stored");
    let text = h.metrics().await;
    assert_eq!(requests(&text, "accepted"), 3.0);
    assert_eq!(requests(&text, "bad_signature"), 5.0);
    for secret in [SECRET_A, SECRET_B, VERIFY] {
        assert!(!text.contains(secret), "a secret in /metrics");
    }
    h.stop().await;
}

#[tokio::test]
async fn every_event_of_the_reference_becomes_exact_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let t = t0();
    // One batch: two entries (two WABAs), several changes each, integers and floats.
    let body = json!({"object":"whatsapp_business_account","entry":[
        {"id": WABA_1, "time": t, "changes":[
            {"field":"flows","value":{"event":"ENDPOINT_ERROR_RATE","flow_id":"1312058623344795","error_rate":14.28,"threshold":10,
              "alert_state":"ACTIVATED","message":"The flow endpoint request error rate has reached the 5% threshold",
              "errors":[{"error_type":"CAPABILITY_ERROR","error_rate":66.66,"error_count":2},{"error_type":"TIMEOUT","error_rate":33.33,"error_count":1}]}},
            {"field":"flows","value":{"event":"ENDPOINT_LATENCY","flow_id":FLOW,"p90_latency":8000,"p50_latency":500,"requests_count":34,
              "threshold":7000,"alert_state":"ACTIVATED","message":"Flow endpoint latency has reached the p90 threshold"}},
            {"field":"flows","value":{"event":"FLOW_STATUS_CHANGE","flow_id":"947325160880432","old_status":"THROTTLED","new_status":"BLOCKED",
              "message":"Flow Order tracking changed status from THROTTLED to BLOCKED"}}]},
        {"id": WABA_2, "time": t + 1, "changes":[
            {"field":"flows","value":{"event":"ENDPOINT_AVAILABILITY","flow_id":"1467393620448117","alert_state":"ACTIVATED","availability":75,"threshold":90,
              "message":"The flow endpoint availability has breached the 90% threshold"}},
            {"field":"flows","value":{"event":"CLIENT_ERROR_RATE","flow_id":"1467393620448117","error_rate":6,"threshold":5,"alert_state":"ACTIVATED",
              "message":"client errors","errors":[{"error_type":"INVALID_SCREEN_TRANSITION","error_rate":100,"error_count":3}]}},
            {"field":"flows","value":{"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":"1467393620448117","warning":"Your current Flow version will freeze in 21 days."}},
            {"field":"flows","value":{"event":"FLOW_STATUS_CHANGE","flow_id":"5550001","new_status":"DRAFT","message":"created"}}]}
    ]}).to_string();
    assert_eq!(h.post(&body).await, 200);
    let text = h.metrics().await;
    let expect = [
        (
            "whatsapp_flows_alert_active{flow_id=\"1312058623344795\",alert=\"endpoint_error_rate\"}",
            1.0,
        ),
        (
            "whatsapp_flows_alert_threshold{flow_id=\"1312058623344795\",alert=\"endpoint_error_rate\"}",
            0.1,
        ),
        (
            "whatsapp_flows_alert_last_change_timestamp_seconds{flow_id=\"1312058623344795\",alert=\"endpoint_error_rate\"}",
            t as f64,
        ),
        (
            "whatsapp_flows_webhook_error_ratio{flow_id=\"1312058623344795\",source=\"endpoint\"}",
            0.1428,
        ),
        (
            "whatsapp_flows_webhook_error_type_ratio{flow_id=\"1312058623344795\",source=\"endpoint\",error_type=\"CAPABILITY_ERROR\"}",
            0.6666,
        ),
        (
            "whatsapp_flows_webhook_error_type_errors{flow_id=\"1312058623344795\",source=\"endpoint\",error_type=\"CAPABILITY_ERROR\"}",
            2.0,
        ),
        (
            "whatsapp_flows_webhook_error_type_ratio{flow_id=\"1312058623344795\",source=\"endpoint\",error_type=\"TIMEOUT\"}",
            0.3333,
        ),
        (
            "whatsapp_flows_webhook_error_type_errors{flow_id=\"1312058623344795\",source=\"endpoint\",error_type=\"TIMEOUT\"}",
            1.0,
        ),
        (
            "whatsapp_flows_alert_active{flow_id=\"1180349906393871\",alert=\"endpoint_latency\"}",
            1.0,
        ),
        (
            "whatsapp_flows_alert_threshold{flow_id=\"1180349906393871\",alert=\"endpoint_latency\"}",
            7.0,
        ),
        (
            "whatsapp_flows_webhook_latency_p50_seconds{flow_id=\"1180349906393871\"}",
            0.5,
        ),
        (
            "whatsapp_flows_webhook_latency_p90_seconds{flow_id=\"1180349906393871\"}",
            8.0,
        ),
        (
            "whatsapp_flows_webhook_latency_requests{flow_id=\"1180349906393871\"}",
            34.0,
        ),
        (
            "whatsapp_flows_alert_active{flow_id=\"1467393620448117\",alert=\"endpoint_availability\"}",
            1.0,
        ),
        (
            "whatsapp_flows_alert_threshold{flow_id=\"1467393620448117\",alert=\"endpoint_availability\"}",
            0.9,
        ),
        (
            "whatsapp_flows_alert_last_change_timestamp_seconds{flow_id=\"1467393620448117\",alert=\"endpoint_availability\"}",
            (t + 1) as f64,
        ),
        (
            "whatsapp_flows_webhook_availability_ratio{flow_id=\"1467393620448117\"}",
            0.75,
        ),
        (
            "whatsapp_flows_alert_active{flow_id=\"1467393620448117\",alert=\"client_error_rate\"}",
            1.0,
        ),
        (
            "whatsapp_flows_alert_threshold{flow_id=\"1467393620448117\",alert=\"client_error_rate\"}",
            0.05,
        ),
        (
            "whatsapp_flows_webhook_error_ratio{flow_id=\"1467393620448117\",source=\"client\"}",
            0.06,
        ),
        (
            "whatsapp_flows_webhook_error_type_errors{flow_id=\"1467393620448117\",source=\"client\",error_type=\"INVALID_SCREEN_TRANSITION\"}",
            3.0,
        ),
        (
            "whatsapp_flows_version_expiry_warnings_total{flow_id=\"1467393620448117\"}",
            1.0,
        ),
        (
            "whatsapp_flows_status_changes_total{flow_id=\"947325160880432\",from=\"THROTTLED\",to=\"BLOCKED\"}",
            1.0,
        ),
        (
            "whatsapp_flows_status_changes_total{flow_id=\"5550001\",from=\"NONE\",to=\"DRAFT\"}",
            1.0,
        ),
        (
            "whatsapp_flows_exporter_webhook_events_total{event=\"ENDPOINT_ERROR_RATE\",field=\"flows\"}",
            1.0,
        ),
        (
            "whatsapp_flows_exporter_webhook_events_total{event=\"FLOW_STATUS_CHANGE\",field=\"flows\"}",
            2.0,
        ),
        (
            "whatsapp_flows_exporter_webhook_last_received_timestamp_seconds{waba_id=\"102290129340398\"}",
            t as f64,
        ),
        (
            "whatsapp_flows_exporter_webhook_last_received_timestamp_seconds{waba_id=\"104996122399160\"}",
            t as f64,
        ),
    ];
    for (series, v) in expect {
        assert_eq!(value(&text, series), Some(v), "{series}");
    }
    assert_eq!(samples(&text, "whatsapp_flows_alert_active{").len(), 4);
    // The status change shows at once in flow_info (the event is as new as the listing).
    assert!(
        text.contains("whatsapp_flows_flow_info{flow_id=\"947325160880432\",flow_name=\"Order tracking\",waba_id=\"102290129340398\",status=\"BLOCKED\""),
        "{}",
        samples(&text, "whatsapp_flows_flow_info{flow_id=\"947325160880432\"").join("\n")
    );
    let (ok, printed) = promtool_check(&text);
    assert!(
        ok && printed.trim().is_empty(),
        "promtool check metrics: {printed}"
    );

    // Recovery: the alerts go to 0 and the figures follow the newest event.
    let recovered = envelope(
        WABA_1,
        t + 60,
        &[
            json!({"event":"ENDPOINT_LATENCY","flow_id":FLOW,"p90_latency":900,"p50_latency":120,"requests_count":50,"threshold":7000,"alert_state":"DEACTIVATED"}),
        ],
    );
    assert_eq!(h.post(&recovered).await, 200);
    let text = h.metrics().await;
    assert_eq!(
        alert(
            &text,
            "whatsapp_flows_alert_active",
            FLOW,
            "endpoint_latency"
        ),
        Some(0.0)
    );
    assert_eq!(
        alert(
            &text,
            "whatsapp_flows_alert_last_change_timestamp_seconds",
            FLOW,
            "endpoint_latency"
        ),
        Some((t + 60) as f64)
    );
    assert_eq!(
        value(
            &text,
            &format!("whatsapp_flows_webhook_latency_p90_seconds{{flow_id=\"{FLOW}\"}}")
        ),
        Some(0.9)
    );
    h.stop().await;
}

#[tokio::test]
async fn duplicates_and_late_events_do_not_change_what_is_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let t = t0();
    let activated = |time| {
        envelope(
            WABA_1,
            time,
            &[
                json!({"event":"ENDPOINT_AVAILABILITY","flow_id":FLOW,"alert_state":"ACTIVATED","availability":70,"threshold":90}),
            ],
        )
    };
    let recovered = envelope(
        WABA_1,
        t + 100,
        &[
            json!({"event":"ENDPOINT_AVAILABILITY","flow_id":FLOW,"alert_state":"DEACTIVATED","availability":100,"threshold":90}),
            json!({"event":"FLOW_STATUS_CHANGE","flow_id":FLOW,"old_status":"THROTTLED","new_status":"PUBLISHED"}),
        ],
    );
    let late = envelope(
        WABA_1,
        t + 50,
        &[
            json!({"event":"FLOW_STATUS_CHANGE","flow_id":FLOW,"old_status":"PUBLISHED","new_status":"THROTTLED"}),
        ],
    );
    for body in [&recovered, &recovered, &activated(t), &late, &recovered] {
        assert_eq!(h.post(body).await, 200);
    }
    let text = h.metrics().await;
    assert_eq!(
        alert(
            &text,
            "whatsapp_flows_alert_active",
            FLOW,
            "endpoint_availability"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_webhook_duplicates_total"),
        Some(4.0)
    );
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_webhook_out_of_order_total"),
        Some(2.0)
    );
    // Both status changes happened and are counted once; the newer one is in force.
    assert_eq!(
        value(
            &text,
            &format!(
                "whatsapp_flows_status_changes_total{{flow_id=\"{FLOW}\",from=\"THROTTLED\",to=\"PUBLISHED\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "whatsapp_flows_status_changes_total{{flow_id=\"{FLOW}\",from=\"PUBLISHED\",to=\"THROTTLED\"}}"
            )
        ),
        Some(1.0)
    );
    assert!(
        samples(
            &text,
            &format!("whatsapp_flows_flow_info{{flow_id=\"{FLOW}\"")
        )
        .iter()
        .all(|l| l.contains("status=\"PUBLISHED\""))
    );
    // Every signed body is kept, duplicates too.
    assert_eq!(h.stored(), 5);
    h.stop().await;
}

#[tokio::test]
async fn unknown_events_fields_and_bodies_are_kept_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":WABA_1,"time":t0(),"changes":[
        {"field":"messages","value":{"messaging_product":"whatsapp","messages":[{"type":"interactive"}]}},
        {"field":"flows","value":{"event":"FLOW_SOMETHING_NEW","flow_id":FLOW,"extra":{"deep":[1,2,3]}}},
        {"field":"flows","value":{"event":"ENDPOINT_LATENCY","flow_id":FLOW,"alert_state":"ACTIVATED","p90_latency":"8000","new_field":true}},
        {"field":"flows","value":{"event":"ENDPOINT_LATENCY","flow_id":FLOW,"alert_state":"MAYBE"}}
    ]}]}).to_string();
    assert_eq!(h.post(&body).await, 200);
    // Signed, but not a webhook at all: stored and answered 200 all the same.
    assert_eq!(h.post("this is not JSON").await, 200);
    assert_eq!(h.post(r#"{"object":"page"}"#).await, 200);
    let text = h.metrics().await;
    for (event, field, n) in [
        ("not_processed", "messages", 1.0),
        ("unknown", "flows", 1.0),
        ("ENDPOINT_LATENCY", "flows", 1.0),
        ("malformed", "flows", 1.0),
    ] {
        assert_eq!(
            value(
                &text,
                &format!(
                    "whatsapp_flows_exporter_webhook_events_total{{event=\"{event}\",field=\"{field}\"}}"
                )
            ),
            Some(n),
            "{event} {field}"
        );
    }
    assert_eq!(requests(&text, "accepted"), 1.0);
    assert_eq!(requests(&text, "unparsed"), 2.0);
    assert_eq!(
        value(
            &text,
            &format!("whatsapp_flows_webhook_latency_p90_seconds{{flow_id=\"{FLOW}\"}}")
        ),
        Some(8.0)
    );
    assert_eq!(h.stored(), 3);
    h.stop().await;
}

#[tokio::test]
async fn the_state_and_the_duplicate_memory_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("w.db");
    let t = t0();
    let body = envelope(
        WABA_1,
        t + 10,
        &[
            json!({"event":"ENDPOINT_ERROR_RATE","flow_id":FLOW,"error_rate":50,"threshold":50,"alert_state":"ACTIVATED","errors":[{"error_type":"TIMEOUT","error_rate":100,"error_count":9}]}),
            json!({"event":"FLOW_STATUS_CHANGE","flow_id":"947325160880432","old_status":"THROTTLED","new_status":"BLOCKED"}),
            json!({"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":FLOW,"warning":"soon"}),
        ],
    );
    let h = Hooks::start(&db).await;
    assert_eq!(h.post(&body).await, 200);
    let keep = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.starts_with("whatsapp_flows_alert_")
                        || l.starts_with("whatsapp_flows_webhook_")
                        || l.starts_with("whatsapp_flows_status_changes_total")
                        || l.starts_with("whatsapp_flows_version_expiry")
                        || l.starts_with("whatsapp_flows_exporter_webhook_last_received")
                        || l.starts_with("whatsapp_flows_flow_info{flow_id=\"947325160880432\""))
            })
            .map(str::to_owned)
            .collect()
    };
    let before = keep(&h.metrics().await);
    assert!(before.len() >= 8, "{before:?}");
    h.stop().await;

    let h = Hooks::start(&db).await;
    let after = keep(&h.metrics().await);
    assert_eq!(before, after);
    // Meta sends it again after the restart: remembered, not applied twice.
    assert_eq!(h.post(&body).await, 200);
    let text = h.metrics().await;
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_webhook_duplicates_total"),
        Some(3.0)
    );
    assert_eq!(keep(&text), before);
    h.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let big = format!(
        r#"{{"object":"whatsapp_business_account","entry":[],"pad":"{}"}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let signature = AppSecrets::sign(SECRET_A, big.as_bytes());
    let status = http()
        .post(&h.url)
        .header("x-hub-signature-256", signature)
        .body(big)
        .send()
        .await
        .map(|r| r.status().as_u16());
    // The server answers 413 and closes; a client still sending may see the reset instead.
    if let Ok(status) = status {
        assert_eq!(status, 413);
    }
    // A 3 MB body, what Meta may send, passes.
    let pad = "y".repeat(3 * 1024 * 1024);
    let fits = format!(r#"{{"object":"whatsapp_business_account","entry":[],"pad":"{pad}"}}"#);
    assert_eq!(h.post(&fits).await, 200);
    let text = h.metrics().await;
    assert_eq!(requests(&text, "too_large"), 1.0);
    assert_eq!(h.stored(), 1);
    h.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_signed_posts_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let meta = h.meta(SECRET_B);
    let posts = (0..200).map(|i| {
        let meta = meta.clone();
        async move {
            let body = envelope(WABA_2, t0() + i, &[json!({"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":format!("77{i:04}"),"warning":"soon"})]);
            meta.post(&body).await.expect("post")
        }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(h.stored(), 200);
    let text = h.metrics().await;
    assert_eq!(
        samples(&text, "whatsapp_flows_version_expiry_warnings_total{").len(),
        200
    );
    assert_eq!(requests(&text, "accepted"), 200.0);
    h.stop().await;
    // And all of it is on disk.
    let store = Sqlite::open(&dir.path().join("w.db")).expect("reopen");
    assert_eq!(store.load().expect("load").expiry_warnings.len(), 200);
}

#[tokio::test]
async fn discovery_reconciles_a_pushed_status_the_newer_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Hooks::start(&dir.path().join("w.db")).await;
    let status = |text: &str, flow: &str| -> String {
        samples(
            text,
            &format!("whatsapp_flows_flow_info{{flow_id=\"{flow}\""),
        )
        .first()
        .and_then(|l| l.split("status=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_owned()
    };
    let orders = "947325160880432";
    // Older than the listing: the listing's THROTTLED stays.
    let old = envelope(
        WABA_1,
        t0() - 3600,
        &[
            json!({"event":"FLOW_STATUS_CHANGE","flow_id":orders,"old_status":"THROTTLED","new_status":"PUBLISHED"}),
        ],
    );
    assert_eq!(h.post(&old).await, 200);
    assert_eq!(status(&h.metrics().await, orders), "THROTTLED");
    // Newer than the listing: shown at once.
    let new = envelope(
        WABA_1,
        t0() + 60,
        &[
            json!({"event":"FLOW_STATUS_CHANGE","flow_id":orders,"old_status":"THROTTLED","new_status":"BLOCKED"}),
        ],
    );
    assert_eq!(h.post(&new).await, 200);
    assert_eq!(status(&h.metrics().await, orders), "BLOCKED");
    // A discovery listed before the event keeps it; one listed after wins back.
    h.ex.discover().await;
    assert_eq!(status(&h.metrics().await, orders), "BLOCKED");
    h.clock.store(t0() + 120, Ordering::SeqCst);
    h.ex.discover().await;
    assert_eq!(status(&h.metrics().await, orders), "THROTTLED");
    h.stop().await;
}

#[test]
fn webhook_config_errors_name_the_key() {
    let base = "[[wabas]]\nid = \"1\"\n";
    for (extra, key) in [
        ("[webhooks]\npath = \"/w\"\n", "webhooks.listen"),
        ("[webhooks]\nlisten = \"nope\"\n", "webhooks.listen"),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9878\"\n",
            "webhooks.listen",
        ),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9879\"\npath = \"webhooks\"\n",
            "webhooks.path",
        ),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9879\"\napp_secret_env = \"A\"\napp_secret_file = \"/x\"\n",
            "webhooks.app_secret_file",
        ),
        (
            "[webhooks]\nlisten = \"127.0.0.1:9879\"\nsecret = \"x\"\n",
            "webhooks.secret",
        ),
        ("[storage]\nretention = \"2h\"\n", "storage.retention"),
        ("[storage]\nretention = \"soon\"\n", "storage.retention"),
        ("[storage]\nfile = \"x.db\"\n", "storage.file"),
    ] {
        let e = Config::parse(&format!("{base}{extra}")).expect_err(extra);
        assert_eq!(e.key, key, "{extra}: {e}");
    }
    let ok =
        Config::parse(&format!("{base}[webhooks]\nlisten = \"127.0.0.1:9879\"\n")).expect("valid");
    let w = ok.webhooks.expect("on");
    assert_eq!(w.path, "/webhooks");
    assert_eq!(ok.storage.path, Path::new("flows-exporter.db"));
    assert_eq!(ok.storage.retention, Duration::from_secs(30 * 86400));
}

/// A store whose disk fails on demand: what a full disk or a lost volume
/// does to the real one.
#[derive(Debug)]
struct FailingDisk {
    inner: Sqlite,
    broken: std::sync::atomic::AtomicBool,
}

impl flows_exporter::store::Store for FailingDisk {
    fn commit(
        &self,
        raw: Option<flows_exporter::store::Raw<'_>>,
        plan: &flows_exporter::webhook::state::Plan,
    ) -> Result<(), flows_exporter::store::StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(flows_exporter::store::StoreError("disk I/O error".into()));
        }
        self.inner.commit(raw, plan)
    }
    fn load(
        &self,
    ) -> Result<flows_exporter::webhook::state::State, flows_exporter::store::StoreError> {
        self.inner.load()
    }
    fn prune(
        &self,
        cutoff: i64,
    ) -> Result<flows_exporter::store::Pruned, flows_exporter::store::StoreError> {
        self.inner.prune(cutoff)
    }
    fn raw_count(&self) -> Result<u64, flows_exporter::store::StoreError> {
        self.inner.raw_count()
    }
    fn outbox_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<flows_exporter::store::OutboxItem>, flows_exporter::store::StoreError> {
        self.inner.outbox_due(now, limit)
    }
    fn outbox_update(
        &self,
        id: i64,
        update: &flows_exporter::store::OutboxUpdate,
    ) -> Result<(), flows_exporter::store::StoreError> {
        self.inner.outbox_update(id, update)
    }
    fn outbox_summary(
        &self,
    ) -> Result<flows_exporter::store::OutboxSummary, flows_exporter::store::StoreError> {
        self.inner.outbox_summary()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// When the store cannot write, the answer is 500 (Meta sends the payload
/// again) and nothing changes; the same payload sent again once the disk is
/// back is applied, once.
#[tokio::test]
async fn a_store_that_cannot_write_answers_500_and_changes_nothing() {
    let store = Arc::new(FailingDisk {
        inner: Sqlite::temporary().expect("store"),
        broken: std::sync::atomic::AtomicBool::new(true),
    });
    let receiver = Receiver::new(
        Settings::new(AppSecrets::parse(SECRET_A).expect("secret")),
        store.clone(),
        Clock::fixed(now()),
    )
    .expect("receiver");
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/webhooks", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(flows_exporter::server::serve_routes(
        listener,
        Arc::new(flows_exporter::server::routes::webhooks(
            receiver.clone(),
            ex,
            "/webhooks",
        )),
        Arc::new(WebConfig::default()),
        Arc::new(NoCounters),
        stop.clone().cancelled_owned(),
    ));
    let meta = MetaWebhooks::new(url, SECRET_A);
    let body = envelope(
        WABA_1,
        t0(),
        &[
            json!({"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":FLOW,"warning":"soon"}),
            json!({"event":"ENDPOINT_AVAILABILITY","flow_id":FLOW,"alert_state":"ACTIVATED","availability":50,"threshold":90}),
        ],
    );
    assert_eq!(meta.post(&body).await.expect("post"), 500);
    assert_eq!(
        receiver.snapshot(),
        flows_exporter::webhook::state::State::default()
    );
    assert_eq!(
        receiver
            .metrics()
            .requests(flows_exporter::webhook::RequestResult::StoreFailed),
        1
    );
    store.broken.store(false, Ordering::SeqCst);
    assert_eq!(meta.post(&body).await.expect("post"), 200);
    assert_eq!(meta.post(&body).await.expect("post"), 200);
    let state = receiver.snapshot();
    assert_eq!(state.expiry_warnings[FLOW], 1);
    assert_eq!(state.alerts.len(), 1);
    assert_eq!(store.load().expect("load"), state);
}

struct NoCounters;

impl flows_exporter::server::HttpCounters for NoCounters {
    fn set_connections(&self, _: usize) {}
    fn shed(&self, _: flows_exporter::server::Shed) {}
    fn auth(&self, _: flows_exporter::web::AuthResult) {}
}
