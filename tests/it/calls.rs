//! Messenger Calling through real HTTP: the `calls` webhooks in any order and
//! more than once, a restart in the middle of a call, the call-metrics
//! intake's checks, and the relay to the sandbox's `call_metrics` with every
//! documented error, a restart with items pending, and the 24-hour cut-off.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use flows_exporter::app::{WebhookListener, run_with};
use flows_exporter::callmetrics::RelayResult;
use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::Clock;
use flows_exporter::relay::Relay;
use flows_exporter::sandbox::calling::calls_webhook;
use flows_exporter::sandbox::meta::MetaWebhooks;
use flows_exporter::store::sqlite::Sqlite;
use flows_exporter::web::WebConfig;
use flows_exporter::webhook::{AppSecrets, Receiver, Settings};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const SECRET: &str = "calls-app-secret-19";
const INTAKE: &str = "intake-bearer-77";
const PAGE: &str = "106378625516323";

/// The exporter with a receiver over `db`, the sandbox as Graph and as
/// Meta's calling side, and a relay the test runs by hand.
struct Calls {
    base: String,
    hooks: String,
    receiver: Arc<Receiver>,
    relay: Relay,
    sandbox: RunningSandbox,
    clock: Arc<AtomicI64>,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Calls {
    async fn start(db: &Path) -> Calls {
        Calls::start_with(
            db,
            realistic().await,
            Arc::new(AtomicI64::new(now().timestamp())),
        )
        .await
    }

    async fn start_with(db: &Path, sandbox: RunningSandbox, clock: Arc<AtomicI64>) -> Calls {
        sandbox.sandbox.add_page(PAGE);
        let at = clock.clone();
        let clock_fn = Clock::from_fn(move || {
            chrono::DateTime::from_timestamp(at.load(Ordering::SeqCst), 0).expect("valid")
        });
        let text = config_text(
            &sandbox.base_url,
            "[granularity.day]\nenabled = false\n[granularity.lifetime]\nenabled = false\n",
        );
        let config = Config::parse(&text).expect("valid");
        let ex =
            Exporter::new(config.clone(), Secret::new(TOKEN), clock_fn.clone()).expect("exporter");
        let receiver = Receiver::new(
            Settings {
                intake_token: Some(Secret::new(INTAKE)),
                pages: [PAGE.to_owned()].into(),
                call_timeout: Duration::from_secs(3600),
                ..Settings::new(AppSecrets::parse(SECRET).expect("secret"))
            },
            Arc::new(Sqlite::open(db).expect("store")),
            clock_fn,
        )
        .expect("receiver");
        let relay = Relay::new(
            receiver.clone(),
            &config.graph,
            [(PAGE.to_owned(), Secret::new(TOKEN))].into(),
        )
        .expect("relay");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", metrics.local_addr().expect("addr"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hooks = format!("http://{}", listener.local_addr().expect("addr"));
        sandbox
            .sandbox
            .set_webhook_target(&format!("{hooks}/webhooks"), SECRET);
        let stop = CancellationToken::new();
        let run = tokio::spawn(run_with(
            ex,
            vec![metrics],
            "/metrics",
            Arc::new(WebConfig::default()),
            Some(WebhookListener {
                listener,
                receiver: receiver.clone(),
                web: Arc::new(WebConfig::default()),
                path: "/webhooks".into(),
                relay: None,
            }),
            stop.clone(),
        ));
        Calls {
            base,
            hooks,
            receiver,
            relay,
            sandbox,
            clock,
            stop,
            run,
        }
    }

    async fn stop(self) -> (RunningSandbox, Arc<AtomicI64>) {
        self.stop.cancel();
        self.run.await.expect("task").expect("run ends cleanly");
        (self.sandbox, self.clock)
    }

    async fn webhook(&self, call: Value) {
        let t = self.clock.load(Ordering::SeqCst);
        let body = calls_webhook(PAGE, t, call);
        let status = MetaWebhooks::new(format!("{}/webhooks", self.hooks), SECRET)
            .post(&body)
            .await
            .expect("post");
        assert_eq!(status, 200);
    }

    async fn intake(&self, token: Option<&str>, page: &str, body: &str) -> (u16, String) {
        let mut r = http()
            .post(format!("{}/calls/{page}/metrics", self.hooks))
            .body(body.to_owned());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.expect("post");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Places a call through the sandbox's calling API; its id.
    async fn place_call(&self) -> String {
        let r: Value = serde_json::from_str(
            &http()
                .post(format!("{}/v23.0/{PAGE}/calls", self.sandbox.base_url))
                .bearer_auth(TOKEN)
                .body(
                    json!({"platform":"messenger","to":"5275811702471834","action":"connect",
                    "session":{"sdp_type":"offer","sdp":"v=0\r\ns=-\r\n"}})
                    .to_string(),
                )
                .send()
                .await
                .expect("connect")
                .text()
                .await
                .expect("body"),
        )
        .expect("json");
        assert_eq!(r["session"]["sdp_response"]["sdp_type"], "answer", "{r}");
        r["id"].as_str().expect("a call id").to_owned()
    }

    async fn end_call(&self, id: &str) {
        let r = http()
            .post(format!("{}/v23.0/{PAGE}/calls", self.sandbox.base_url))
            .bearer_auth(TOKEN)
            .body(json!({"platform":"messenger","call_id":id,"action":"terminate"}).to_string())
            .send()
            .await
            .expect("terminate");
        assert_eq!(r.status(), 200);
    }

    async fn metrics(&self) -> String {
        get_text(&format!("{}/metrics", self.base)).await
    }
}

fn v(text: &str, series: &str) -> Option<f64> {
    value(text, series)
}

fn metrics_body(call_id: &str, ended: i64) -> String {
    json!({"platform":"messenger","call_id":call_id,"end_call_reason":"HangupCall",
        "end_call_subreason":"Conversation was finished","call_ended_time":ended,
        "first_audio_packet_received_time": ended - 30,
        "audio_stats":{"jitter_sec":0.02,"packets_lost":10,"packets_received":990,
            "round_trip_time_sec":1.5,"jitter_buffer_delay_sec":1440.0,"concealed_samples":4800,
            "silent_concealed_samples":960,"total_samples_duration_sec":60.0}})
    .to_string()
}

#[tokio::test]
async fn call_events_count_once_in_any_order_and_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("calls.db");
    let c = Calls::start(&db).await;
    let t = now().timestamp();
    // Call A: terminate first, then the rest, each twice.
    let a_terminate = json!({"id":"c_A","event":"terminate","timestamp":t+130,"status":"Completed","start_time":t,"end_time":t+130,"duration":120});
    let a_connect = json!({"id":"c_A","to":PAGE,"from":"1","event":"connect","timestamp":t,"call_direction":"user_initiated"});
    let a_accepted = json!({"id":"c_A","event":"call_status","timestamp":t+10,"recipient_id":"1","call_status":"accepted"});
    for call in [
        &a_terminate,
        &a_terminate,
        &a_connect,
        &a_accepted,
        &a_connect,
        &a_accepted,
    ] {
        c.webhook(call.clone()).await;
    }
    // Call B: connected, ringing, a media update, and then the restart.
    c.webhook(json!({"id":"c_B","to":PAGE,"from":"2","event":"connect","timestamp":t+5,"call_direction":"business_initiated"})).await;
    c.webhook(json!({"id":"c_B","event":"call_status","timestamp":t+6,"recipient_id":"2","call_status":"ringing"})).await;
    c.webhook(json!({"id":"c_B","event":"media_update","timestamp":t+7,"session":{"version":2,"sdp_renegotiation":{"sdp_type":"offer","sdp":"v=0"}}})).await;
    let text = c.metrics().await;
    let p = format!("page_id=\"{PAGE}\"");
    assert_eq!(
        v(
            &text,
            &format!("messenger_calls_started_total{{{p},direction=\"user_initiated\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_calls_started_total{{{p},direction=\"business_initiated\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!(
                "messenger_calls_ended_total{{{p},direction=\"user_initiated\",status=\"completed\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_status_total{{{p},status=\"accepted\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_status_total{{{p},status=\"ringing\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_duration_seconds_sum{{{p},direction=\"user_initiated\"}}")
        ),
        Some(120.0)
    );
    assert_eq!(
        v(
            &text,
            &format!(
                "messenger_call_duration_seconds_bucket{{{p},direction=\"user_initiated\",le=\"60\"}}"
            )
        ),
        Some(0.0)
    );
    assert_eq!(
        v(
            &text,
            &format!(
                "messenger_call_duration_seconds_bucket{{{p},direction=\"user_initiated\",le=\"120\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_answer_delay_seconds_sum{{{p}}}")
        ),
        Some(10.0)
    );
    assert_eq!(
        v(&text, &format!("messenger_calls_active{{{p}}}")),
        Some(1.0)
    );
    assert_eq!(
        v(&text, &format!("messenger_call_media_updates_total{{{p}}}")),
        Some(1.0)
    );
    assert_eq!(
        v(&text, "whatsapp_flows_exporter_webhook_duplicates_total"),
        Some(3.0)
    );
    let (ok, printed) = promtool_check(&text);
    assert!(ok && printed.trim().is_empty(), "promtool: {printed}");

    // Restart in the middle of call B; its terminate comes after.
    let (sandbox, clock) = c.stop().await;
    let c = Calls::start_with(&db, sandbox, clock).await;
    assert_eq!(
        v(
            &c.metrics().await,
            &format!("messenger_calls_active{{{p}}}")
        ),
        Some(1.0)
    );
    c.webhook(json!({"id":"c_B","event":"terminate","timestamp":t+65,"status":"FAILED","start_time":t+5,"end_time":t+65,"duration":""})).await;
    // And the connect again, as Meta may resend it: nothing counted twice.
    c.webhook(json!({"id":"c_B","to":PAGE,"from":"2","event":"connect","timestamp":t+5,"call_direction":"business_initiated"})).await;
    let text = c.metrics().await;
    assert_eq!(
        v(&text, &format!("messenger_calls_active{{{p}}}")),
        Some(0.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_calls_started_total{{{p},direction=\"business_initiated\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!(
                "messenger_calls_ended_total{{{p},direction=\"business_initiated\",status=\"failed\"}}"
            )
        ),
        Some(1.0)
    );
    assert!(
        v(
            &text,
            &format!(
                "messenger_call_duration_seconds_count{{{p},direction=\"business_initiated\"}}"
            )
        )
        .is_none(),
        "no duration when the business never connected"
    );

    // A call with no terminate ages out after the call timeout.
    c.webhook(json!({"id":"c_C","to":PAGE,"from":"3","event":"connect","timestamp":t+70,"call_direction":"user_initiated"})).await;
    assert_eq!(
        v(
            &c.metrics().await,
            &format!("messenger_calls_active{{{p}}}")
        ),
        Some(1.0)
    );
    c.clock.store(t + 3 * 3600, Ordering::SeqCst);
    c.receiver.age_calls().expect("ages");
    let text = c.metrics().await;
    assert_eq!(
        v(&text, &format!("messenger_calls_active{{{p}}}")),
        Some(0.0)
    );
    assert_eq!(
        v(&text, &format!("messenger_calls_aged_out_total{{{p}}}")),
        Some(1.0)
    );

    c.stop().await;
}

#[tokio::test]
async fn the_intake_checks_every_rule_and_every_spelling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Calls::start(&dir.path().join("calls.db")).await;
    let ended = now().timestamp();
    let good = metrics_body("c_ok", ended);
    assert_eq!(c.intake(None, PAGE, &good).await.0, 401);
    assert_eq!(c.intake(Some("wrong"), PAGE, &good).await.0, 401);
    assert_eq!(c.intake(Some(INTAKE), "999999", &good).await.0, 404);
    for (from, to, field) in [
        (
            "\"platform\":\"messenger\"",
            "\"platform\":\"ig\"",
            "platform",
        ),
        ("\"call_id\":\"c_ok\"", "\"call_id\":\"\"", "call_id"),
        ("HangupCall", "Hangup", "end_call_reason"),
        (
            &format!("\"call_ended_time\":{ended}"),
            &format!("\"call_ended_time\":{}", ended * 1000),
            "call_ended_time",
        ),
        ("\"jitter_sec\":0.02,", "", "audio_stats.jitter"),
        (
            "\"packets_received\":990",
            "\"packets_received\":\"lots\"",
            "audio_stats.packets_received",
        ),
    ] {
        let body = good.replace(from, to);
        assert_ne!(body, good, "{from}");
        let (status, text) = c.intake(Some(INTAKE), PAGE, &body).await;
        assert_eq!(status, 400, "{field}: {text}");
        assert!(
            text.contains(&format!("field `{field}`")),
            "{field}: {text}"
        );
    }
    // Every spelling Meta uses is taken: reason and the _ms field names.
    for (i, reason) in ["Hangup_Call", "HangupCall", "HANGUP_CALL", "hangup_call"]
        .iter()
        .enumerate()
    {
        let id = format!("c_spell_{i}");
        let body = metrics_body(&id, ended)
            .replace("HangupCall", reason)
            .replace("\"jitter_sec\":0.02", "\"jitter\":0.02")
            .replace(
                "\"jitter_buffer_delay_sec\":1440.0",
                "\"jitter_buffer_delay_ms\":1440000.0",
            )
            .replace(
                "\"total_samples_duration_sec\":60.0",
                "\"total_samples_duration_ms\":60000.0",
            )
            .replace("\"round_trip_time_sec\":1.5", "\"round_trip_time_ms\":1500");
        assert_eq!(c.intake(Some(INTAKE), PAGE, &body).await.0, 202, "{reason}");
    }
    assert_eq!(c.intake(Some(INTAKE), PAGE, &good).await.0, 202);
    let (status, text) = c.intake(Some(INTAKE), PAGE, &good).await;
    assert_eq!((status, text.contains("already received")), (202, true));
    let text = c.metrics().await;
    let p = format!("page_id=\"{PAGE}\"");
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_end_reasons_total{{{p},reason=\"hangup_call\"}}")
        ),
        Some(5.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_audio_packet_loss_ratio_sum{{{p}}}")
        ),
        Some(0.05)
    );
    // 1440 s of buffer delay over 60 s x 48,000 samples: 0.5 ms a sample, five calls.
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_audio_jitter_buffer_delay_seconds_sum{{{p}}}")
        ),
        Some(0.0025)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_audio_concealed_samples_ratio_sum{{{p}}}")
        ),
        Some(5.0 * 4800.0 / (60.0 * 48000.0))
    );
    assert_eq!(
        v(
            &text,
            "messenger_call_metrics_intake_total{result=\"accepted\"}"
        ),
        Some(5.0)
    );
    assert_eq!(
        v(
            &text,
            "messenger_call_metrics_intake_total{result=\"duplicate\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            "messenger_call_metrics_intake_total{result=\"invalid\"}"
        ),
        Some(6.0)
    );
    assert_eq!(
        v(
            &text,
            "messenger_call_metrics_intake_total{result=\"unauthorized\"}"
        ),
        Some(2.0)
    );
    assert!(!text.contains(INTAKE));
    c.stop().await;
}

#[tokio::test]
async fn the_relay_sends_once_and_handles_every_documented_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("calls.db");
    let c = Calls::start(&db).await;
    let p = PAGE;
    let count = |r: RelayResult| c.receiver.metrics().forwarded_count(p, r);

    // A real call: placed and ended through the sandbox's API, its webhooks
    // delivered to the receiver, then its metrics posted and relayed.
    let id = c.place_call().await;
    assert!(c.sandbox.sandbox.accept_call(&id).await);
    // Still in progress at Meta: retried later, not lost.
    assert_eq!(
        c.intake(Some(INTAKE), p, &metrics_body(&id, now().timestamp()))
            .await
            .0,
        202
    );
    assert_eq!(c.relay.run_once().await, 1);
    assert_eq!(count(RelayResult::InProgress), 1);
    assert_eq!(c.relay.run_once().await, 0, "not due again yet");
    c.end_call(&id).await;
    c.clock.fetch_add(61, Ordering::SeqCst);
    assert_eq!(c.relay.run_once().await, 1);
    assert_eq!(count(RelayResult::Sent), 1);
    let sent = c.sandbox.sandbox.received_call_metrics();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["end_call_reason"], "Hangup_Call");
    assert_eq!(
        sent[0]["audio_stats"]["jitter_buffer_delay_ms"],
        1_440_000.0
    );
    let text = c.metrics().await;
    assert_eq!(
        v(
            &text,
            &format!(
                "messenger_calls_started_total{{page_id=\"{p}\",direction=\"business_initiated\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!(
                "messenger_calls_ended_total{{page_id=\"{p}\",direction=\"business_initiated\",status=\"completed\"}}"
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            &text,
            &format!("messenger_call_first_audio_delay_seconds_count{{page_id=\"{p}\"}}")
        ),
        Some(1.0)
    );

    // A call the consumer never picks up fails, without a duration.
    let unanswered = c.place_call().await;
    c.end_call(&unanswered).await;
    let text = c.metrics().await;
    assert_eq!(
        v(
            &text,
            &format!(
                "messenger_calls_ended_total{{page_id=\"{p}\",direction=\"business_initiated\",status=\"failed\"}}"
            )
        ),
        Some(1.0)
    );

    // Meta's documented errors, one call each.
    let ended = c.clock.load(Ordering::SeqCst);
    let cases: [(&str, u16, &str, RelayResult); 6] = [
        (
            "c_dup",
            400,
            "Metrics have already been submitted",
            RelayResult::AlreadySubmitted,
        ),
        (
            "c_late",
            400,
            "Metrics submitted outside of 24-hour submission window",
            RelayResult::OutsideWindow,
        ),
        ("c_bad", 400, "Invalid call id", RelayResult::InvalidCallId),
        ("c_page", 400, "Invalid page-id", RelayResult::InvalidPageId),
        (
            "c_perm",
            403,
            "Invalid permissions. The app will be required to have the calling capability",
            RelayResult::Permission,
        ),
        (
            "c_5xx",
            503,
            "Service temporarily unavailable",
            RelayResult::Transient,
        ),
    ];
    for (call, status, message, want) in cases {
        let code = if status == 403 {
            200
        } else if status == 503 {
            2
        } else {
            100
        };
        c.sandbox.sandbox.inject_call_metrics(
            status,
            &json!({"error":{"message":message,"type":"OAuthException","code":code}}).to_string(),
        );
        assert_eq!(
            c.intake(Some(INTAKE), p, &metrics_body(call, ended))
                .await
                .0,
            202
        );
        assert_eq!(c.relay.run_once().await, 1, "{call}");
        assert_eq!(count(want), 1, "{call}: {message}");
    }
    c.relay.run_once().await;
    let summary = c.receiver.store().outbox_summary().expect("summary");
    // Done: the first call and "already submitted"; pending: the 5xx; the rest failed.
    assert_eq!(
        (summary.done, summary.pending, summary.failed),
        (2, 1, 4),
        "{summary:?}"
    );

    // A restart with the 5xx item pending: it goes out after it (here: Meta
    // says invalid call id, as the sandbox never placed it).
    let (sandbox, clock) = c.stop().await;
    let c = Calls::start_with(&db, sandbox, clock).await;
    c.clock.fetch_add(3600, Ordering::SeqCst);
    assert_eq!(c.relay.run_once().await, 1);
    assert_eq!(
        c.receiver
            .metrics()
            .forwarded_count(p, RelayResult::InvalidCallId),
        1
    );

    // The 24-hour cut-off: an item whose call ended a day ago is never sent.
    let before = c.sandbox.sandbox.call_metrics_posts();
    let now_s = c.clock.load(Ordering::SeqCst);
    assert_eq!(
        c.intake(
            Some(INTAKE),
            p,
            &metrics_body("c_old", now_s - 24 * 3600 - 1)
        )
        .await
        .0,
        202
    );
    assert_eq!(c.relay.run_once().await, 1);
    assert_eq!(
        c.receiver
            .metrics()
            .forwarded_count(p, RelayResult::Expired),
        1
    );
    assert_eq!(
        c.sandbox.sandbox.call_metrics_posts(),
        before,
        "nothing sent to Graph"
    );
    let text = c.metrics().await;
    assert_eq!(
        v(&text, "messenger_call_metrics_outbox{state=\"pending\"}"),
        Some(0.0)
    );
    assert!(!text.contains(TOKEN), "the Page token never shows");
    c.stop().await;
}
