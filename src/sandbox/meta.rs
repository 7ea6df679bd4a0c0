//! The sandbox plays Meta's webhook side: it signs `flows` events with an app
//! secret and posts them to a receiver, as Meta does. `demo` runs
//! [`MetaWebhooks::play`]: a loop of alerts activating and recovering, a
//! status change (applied to the sandbox's listing too, so discovery agrees),
//! an expiry warning, a duplicate and an out-of-order pair. Tests and the
//! benchmark use [`envelope`] and [`MetaWebhooks::post`].

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Sandbox;
use crate::model::Clock;
use crate::webhook::AppSecrets;

/// A `whatsapp_business_account` body with one entry of `flows` changes.
pub fn envelope(waba_id: &str, time: i64, values: &[Value]) -> String {
    let changes: Vec<Value> = values
        .iter()
        .map(|v| json!({"field": "flows", "value": v}))
        .collect();
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "time": time, "changes": changes}]
    })
    .to_string()
}

/// Posts signed webhooks to one receiver URL.
#[derive(Debug, Clone)]
pub struct MetaWebhooks {
    url: String,
    secret: String,
    http: reqwest::Client,
}

impl MetaWebhooks {
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> MetaWebhooks {
        // reqwest is built without a bundled crypto provider; install ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        MetaWebhooks {
            url: url.into(),
            secret: secret.into(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("a client with the ring provider installed"),
        }
    }

    /// Signs and posts `body`; the status the receiver answered.
    pub async fn post(&self, body: &str) -> Result<u16, reqwest::Error> {
        let signature = AppSecrets::sign(&self.secret, body.as_bytes());
        let response = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body.to_owned())
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// Until `stop`: every `period`, one round of the demo's events for the
    /// realistic sandbox's flows. The sandbox's listing follows the status
    /// changes.
    pub async fn play(
        self,
        sandbox: Sandbox,
        clock: Clock,
        period: Duration,
        stop: CancellationToken,
    ) {
        let waba = super::REALISTIC_WABA_IDS[0];
        let waba_2 = super::REALISTIC_WABA_IDS[1];
        let (booking, leads, orders, loyalty) = (
            "1180349906393871",
            "1312058623344795",
            "947325160880432",
            "1467393620448117",
        );
        let pause = period / 4;
        loop {
            let t = clock.now().timestamp();
            let degraded = [
                envelope(
                    waba,
                    t,
                    &[
                        json!({"event": "ENDPOINT_LATENCY", "flow_id": booking, "p50_latency": 900, "p90_latency": 8200,
                           "requests_count": 412, "threshold": 7000, "alert_state": "ACTIVATED",
                           "message": "Flow endpoint latency has reached the p90 threshold of 7s in the last 30 minutes."}),
                        json!({"event": "ENDPOINT_ERROR_RATE", "flow_id": leads, "error_rate": 14.28, "threshold": 10,
                           "alert_state": "ACTIVATED",
                           "message": "The flow endpoint request error rate has reached the 10% threshold in the last 30 minutes.",
                           "errors": [{"error_type": "CAPABILITY_ERROR", "error_rate": 66.66, "error_count": 2},
                                      {"error_type": "TIMEOUT", "error_rate": 33.33, "error_count": 1}]}),
                        json!({"event": "FLOW_STATUS_CHANGE", "flow_id": orders, "old_status": "THROTTLED", "new_status": "PUBLISHED",
                           "message": "Flow Order tracking changed status from THROTTLED to PUBLISHED"}),
                    ],
                ),
                envelope(
                    waba_2,
                    t,
                    &[
                        json!({"event": "ENDPOINT_AVAILABILITY", "flow_id": loyalty, "availability": 75, "threshold": 90,
                           "alert_state": "ACTIVATED",
                           "message": "The flow endpoint availability has breached the 90% threshold in the last 10 minutes."}),
                        json!({"event": "FLOW_VERSION_EXPIRY_WARNING", "flow_id": loyalty,
                           "warning": "Your current Flow version will freeze in 21 days."}),
                    ],
                ),
            ];
            sandbox.set_status(orders, "PUBLISHED");
            for body in &degraded {
                self.send(body).await;
            }
            // Meta delivers at least once: the same body again.
            self.send(&degraded[0]).await;
            if sleep_or_stop(pause, &stop).await {
                return;
            }
            let t = clock.now().timestamp();
            let recovered = envelope(
                waba,
                t,
                &[
                    json!({"event": "ENDPOINT_LATENCY", "flow_id": booking, "p50_latency": 310, "p90_latency": 1200,
                       "requests_count": 388, "threshold": 7000, "alert_state": "DEACTIVATED",
                       "message": "Flow endpoint latency is back under the p90 threshold of 7s."}),
                    json!({"event": "ENDPOINT_ERROR_RATE", "flow_id": leads, "error_rate": 2.5, "threshold": 10,
                       "alert_state": "DEACTIVATED", "message": "The flow endpoint request error rate is back under 10%.",
                       "errors": [{"error_type": "TIMEOUT", "error_rate": 100, "error_count": 1}]}),
                    json!({"event": "FLOW_STATUS_CHANGE", "flow_id": orders, "old_status": "PUBLISHED", "new_status": "THROTTLED",
                       "message": "Flow Order tracking changed status from PUBLISHED to THROTTLED"}),
                ],
            );
            sandbox.set_status(orders, "THROTTLED");
            self.send(&recovered).await;
            if sleep_or_stop(pause, &stop).await {
                return;
            }
            // An out-of-order pair: the recovery arrives before the alert it ends.
            let t = clock.now().timestamp();
            let newer = envelope(
                waba_2,
                t,
                &[
                    json!({"event": "ENDPOINT_AVAILABILITY", "flow_id": loyalty, "availability": 100, "threshold": 90,
                       "alert_state": "DEACTIVATED", "message": "The flow endpoint availability is back above 90%."}),
                ],
            );
            let older = envelope(
                waba_2,
                t - 30,
                &[
                    json!({"event": "CLIENT_ERROR_RATE", "flow_id": loyalty, "error_rate": 6.0, "threshold": 5,
                       "alert_state": "ACTIVATED", "message": "The flow client error rate has reached the 5% threshold.",
                       "errors": [{"error_type": "INVALID_SCREEN_TRANSITION", "error_rate": 100, "error_count": 3}]}),
                    json!({"event": "ENDPOINT_AVAILABILITY", "flow_id": loyalty, "availability": 80, "threshold": 90,
                       "alert_state": "ACTIVATED", "message": "The flow endpoint availability has breached the 90% threshold."}),
                ],
            );
            self.send(&newer).await;
            self.send(&older).await;
            if sleep_or_stop(period - 2 * pause, &stop).await {
                return;
            }
        }
    }

    async fn send(&self, body: &str) {
        match self.post(body).await {
            Ok(200) => debug!("sandbox Meta: webhook delivered"),
            Ok(status) => warn!(status, "sandbox Meta: the receiver did not answer 200"),
            Err(e) => warn!(error = %e, "sandbox Meta: cannot deliver a webhook"),
        }
    }
}

/// Sleeps; true when `stop` came first.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = stop.cancelled() => true,
    }
}
