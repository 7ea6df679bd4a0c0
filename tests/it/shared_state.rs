//! Two replicas sharing webhook state through a real PostgreSQL: events
//! posted alternately to both, duplicates racing on both, the same call's
//! metrics taken in on both at once, and two relays racing for the outbox.
//! Both replicas show the same state; every event is applied once and every
//! outbox item sent once.

use std::sync::Arc;

use flows_exporter::model::Clock;
use flows_exporter::relay::Relay;
use flows_exporter::sandbox::meta::{MetaWebhooks, envelope};
use flows_exporter::store::Store;
use flows_exporter::store::postgres::Postgres as PgStore;
use flows_exporter::web::WebConfig;
use flows_exporter::webhook::{AppSecrets, Receiver, Settings};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const SECRET: &str = "shared-app-secret";
const INTAKE: &str = "shared-intake";
const PAGE: &str = "106378625516323";

struct Replica {
    receiver: Arc<Receiver>,
    url: String,
}

async fn replica(pg: &str, sb: &RunningSandbox, stop: &CancellationToken) -> Replica {
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(pg).expect("connects"));
    let receiver = Receiver::new(
        Settings {
            intake_token: Some(flows_exporter::config::Secret::new(INTAKE)),
            pages: [PAGE.to_owned()].into(),
            ..Settings::new(AppSecrets::parse(SECRET).expect("secret"))
        },
        store,
        Clock::fixed(now()),
    )
    .expect("receiver");
    let ex = exporter(&sb.base_url);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(flows_exporter::server::serve_routes(
        listener,
        Arc::new(flows_exporter::server::routes::webhooks(
            receiver.clone(),
            ex,
            "/webhooks",
        )),
        Arc::new(WebConfig::default()),
        Arc::new(flows_exporter::app::NoHttpCounters),
        stop.clone().cancelled_owned(),
    ));
    Replica { receiver, url }
}

/// The webhook-derived series of a replica (its own counters left out).
fn state_series(r: &Receiver) -> Vec<String> {
    let mut out = Vec::new();
    r.render_into(&mut out);
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && !l.starts_with("whatsapp_flows_exporter_webhook_")
                && !l.starts_with("messenger_call_metrics_")
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_state_and_apply_everything_once() {
    let _turn = real_servers().await;
    let pg = Postgres::start().await;
    let sb = realistic().await;
    sb.sandbox.add_page(PAGE);
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (a, b) = (
        replica(&pg.url, &sb, &stop).await,
        replica(&pg.url, &sb, &stop).await,
    );
    let post = |url: &str, body: String| {
        let meta = MetaWebhooks::new(format!("{url}/webhooks"), SECRET);
        async move { meta.post(&body).await.expect("post") }
    };
    let t = now().timestamp();
    // Alternately: an alert raised on A, cleared on B; warnings on both.
    let flow = "1180349906393871";
    let raised = envelope(
        WABA_1,
        t,
        &[
            json!({"event":"ENDPOINT_LATENCY","flow_id":flow,"p50_latency":500,"p90_latency":8000,"requests_count":34,"threshold":7000,"alert_state":"ACTIVATED"}),
        ],
    );
    let cleared = envelope(
        WABA_1,
        t + 60,
        &[
            json!({"event":"ENDPOINT_LATENCY","flow_id":flow,"p50_latency":200,"p90_latency":900,"requests_count":40,"threshold":7000,"alert_state":"DEACTIVATED"}),
        ],
    );
    assert_eq!(post(&a.url, raised.clone()).await, 200);
    assert_eq!(post(&b.url, cleared).await, 200);
    // Meta sends the first one again, to B this time: a duplicate, though B
    // never saw it.
    assert_eq!(post(&b.url, raised).await, 200);
    // Twenty events, each sent to both at once: a duplicate race each time.
    let races = (0..20).map(|i| {
        let body = envelope(WABA_2, t + i, &[json!({"event":"FLOW_VERSION_EXPIRY_WARNING","flow_id":format!("88{i:03}"),"warning":"soon"})]);
        let (pa, pb) = (post(&a.url, body.clone()), post(&b.url, body));
        async move { tokio::join!(pa, pb) }
    });
    for (sa, sb_) in futures_util::future::join_all(races).await {
        assert_eq!((sa, sb_), (200, 200));
    }
    a.receiver.refresh().expect("refresh");
    b.receiver.refresh().expect("refresh");
    let (sa, sb_) = (state_series(&a.receiver), state_series(&b.receiver));
    assert_eq!(sa, sb_, "both replicas show the same state");
    let text = sa.join("\n");
    assert!(
        text.contains(&format!(
            "whatsapp_flows_alert_active{{flow_id=\"{flow}\",alert=\"endpoint_latency\"}} 0"
        )),
        "{text}"
    );
    assert_eq!(
        sa.iter()
            .filter(|l| l.starts_with("whatsapp_flows_version_expiry_warnings_total{"))
            .count(),
        20
    );
    assert!(
        sa.iter()
            .filter(|l| l.starts_with("whatsapp_flows_version_expiry_warnings_total{"))
            .all(|l| l.ends_with(" 1")),
        "each once: {text}"
    );
    let dups = |r: &Receiver| {
        let mut out = Vec::new();
        r.render_into(&mut out);
        value(
            &String::from_utf8(out).expect("utf-8"),
            "whatsapp_flows_exporter_webhook_duplicates_total",
        )
        .unwrap_or(0.0)
    };
    // The resend, and one of each racing pair.
    assert_eq!(dups(&a.receiver) + dups(&b.receiver), 21.0);

    // The same call's metrics taken in on both at once: recorded once.
    let body = json!({"platform":"messenger","call_id":"c_race","end_call_reason":"Hangup_Call","call_ended_time":t,
        "first_audio_packet_received_time":t-10,"audio_stats":{"jitter":0.01,"packets_lost":1,"packets_received":99,
        "round_trip_time_ms":100,"jitter_buffer_delay_ms":100,"concealed_samples":10,"silent_concealed_samples":1,
        "total_samples_duration_ms":10000}}).to_string();
    let intake = |url: &str| {
        let req = http()
            .post(format!("{url}/calls/{PAGE}/metrics"))
            .bearer_auth(INTAKE)
            .body(body.clone());
        async move { req.send().await.expect("post").text().await.expect("body") }
    };
    let (ra, rb) = tokio::join!(intake(&a.url), intake(&b.url));
    let accepted = [&ra, &rb]
        .iter()
        .filter(|r| r.starts_with("accepted"))
        .count();
    assert_eq!(accepted, 1, "{ra} / {rb}");
    assert_eq!(
        a.receiver
            .store()
            .outbox_summary()
            .expect("summary")
            .pending,
        1
    );

    // Two relays race for the outbox: the item goes out once. (Meta never
    // placed this call, so the sandbox answers invalid call id: final.)
    let relay = |r: &Replica| {
        Relay::new(
            r.receiver.clone(),
            &exporter(&sb.base_url).config().graph,
            [(PAGE.to_owned(), flows_exporter::config::Secret::new(TOKEN))].into(),
        )
        .expect("relay")
    };
    let (ra, rb) = (relay(&a), relay(&b));
    let (na, nb) = tokio::join!(ra.run_once(), rb.run_once());
    assert_eq!(na + nb, 1, "one relay took the item");
    assert_eq!(sb.sandbox.call_metrics_posts(), 1, "sent once");
}
