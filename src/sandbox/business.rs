//! A small simulated business for `demo`: it places Messenger calls through
//! the sandbox's calling API, the consumer picks up, the call ends, and the
//! business's client posts the call's metrics (the seed's `transformRtcStats`
//! output) to the exporter's intake, which relays them to the sandbox's
//! `call_metrics`. Every step's webhook goes to the receiver as Meta's would.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Sandbox;
use crate::model::Clock;

/// Where the business talks to.
#[derive(Debug, Clone)]
pub struct Business {
    /// The sandbox Graph API, with the version: `http://127.0.0.1:PORT/v23.0`.
    pub graph: String,
    pub token: String,
    pub page_id: String,
    /// The exporter's intake URL for the Page.
    pub intake: String,
    pub intake_token: String,
}

impl Business {
    /// Until `stop`: a call every `period`, each a few seconds long.
    pub async fn play(
        self,
        sandbox: Sandbox,
        clock: Clock,
        period: Duration,
        stop: CancellationToken,
    ) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let Ok(http) = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
        else {
            return;
        };
        let mut n: u64 = 0;
        loop {
            n += 1;
            tokio::select! {
                () = self.one_call(&http, &sandbox, &clock, n) => {}
                () = stop.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Call number `n`: placed, picked up (unless `n` is a multiple of
    /// five), ended a few seconds later, its metrics posted to the intake.
    pub async fn one_call(&self, http: &reqwest::Client, sandbox: &Sandbox, clock: &Clock, n: u64) {
        let calls = format!("{}/{}/calls", self.graph, self.page_id);
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        let connect = json!({"platform": "messenger", "to": format!("52758117024{:05}", n % 100_000),
            "action": "connect", "session": {"sdp_type": "offer", "sdp": offer}});
        let Some(answer) = self.post(http, &calls, &connect).await else {
            return;
        };
        let Some(call_id) = answer.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        // The consumer picks up after a moment (every fifth call never does).
        let picks_up = n % 5 != 0;
        tokio::time::sleep(Duration::from_secs(1 + n % 3)).await;
        if picks_up {
            sandbox.accept_call(&call_id).await;
        }
        let first_audio = clock.now().timestamp();
        tokio::time::sleep(Duration::from_secs(2 + n % 4)).await;
        let terminate = json!({"platform": "messenger", "call_id": call_id, "action": "terminate"});
        if self.post(http, &calls, &terminate).await.is_none() {
            return;
        }
        // The client's getStats(), as the seed's transformRtcStats shapes it.
        let seconds = 2.0 + (n % 4) as f64;
        let received = 50 * seconds as u64;
        let lost = n % 7;
        let metrics = json!({
            "platform": "messenger",
            "call_id": call_id,
            "end_call_reason": if picks_up { "HangupCall" } else { "No_Answer_Timeout" },
            "end_call_subreason": if picks_up { "Conversation was finished" } else { "The consumer did not pick up" },
            "call_ended_time": clock.now().timestamp(),
            "first_audio_packet_received_time": if picks_up { first_audio } else { 0 },
            "audio_stats": {
                "jitter_sec": 0.004 + (n % 5) as f64 * 0.006,
                "packets_lost": lost,
                "packets_received": received,
                "round_trip_time_sec": 0.08 * seconds,
                "jitter_buffer_delay_sec": 0.06 * seconds * 48_000.0,
                "concealed_samples": lost * 960,
                "silent_concealed_samples": lost * 480,
                "total_samples_duration_sec": seconds
            }
        });
        let posted = http
            .post(&self.intake)
            .bearer_auth(&self.intake_token)
            .header("content-type", "application/json")
            .body(metrics.to_string())
            .send()
            .await;
        match posted {
            Ok(r) if r.status().as_u16() == 202 => {
                debug!(call_id = %call_id, "demo business: call metrics posted")
            }
            Ok(r) => warn!(
                status = r.status().as_u16(),
                "demo business: the intake refused call metrics"
            ),
            Err(e) => warn!(error = %e, "demo business: cannot post call metrics"),
        }
    }

    async fn post(&self, http: &reqwest::Client, url: &str, body: &Value) -> Option<Value> {
        let r = http
            .post(url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .inspect_err(|e| warn!(error = %e, "demo business: the calling API is unreachable"))
            .ok()?;
        if !r.status().is_success() {
            warn!(
                status = r.status().as_u16(),
                "demo business: the calling API refused"
            );
            return None;
        }
        serde_json::from_slice(&r.bytes().await.ok()?).ok()
    }
}
