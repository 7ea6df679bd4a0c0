//! The call-metrics relay: sends each item of the durable outbox (filled by
//! the intake, `webhook::Receiver::intake`) to Graph's `POST
//! /{page_id}/call_metrics` with its Page's token, once, and records what
//! came of it. What an answer means (done, final, retry when) is
//! `callmetrics::relay_result` and `callmetrics::next_step`, pure; nothing is
//! sent 24 hours after the call ended. The outbox lives in the store, so
//! pending items survive a restart and go out after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::callmetrics::{self, OutboxState, RelayResult};
use crate::config::{GraphConfig, Secret};
use crate::store::{OutboxItem, OutboxUpdate};
use crate::webhook::Receiver;

/// Items taken from the outbox per round.
const BATCH: usize = 32;
/// How often the outbox is looked at when nothing wakes the relay.
const IDLE: Duration = Duration::from_secs(5);

/// Sends the outbox's items.
#[derive(Debug)]
pub struct Relay {
    receiver: Arc<Receiver>,
    http: reqwest::Client,
    base_url: String,
    api_version: String,
    tokens: BTreeMap<String, Secret>,
}

impl Relay {
    /// A relay to `graph`'s base URL and version, with these Pages' tokens.
    pub fn new(
        receiver: Arc<Receiver>,
        graph: &GraphConfig,
        tokens: BTreeMap<String, Secret>,
    ) -> anyhow::Result<Relay> {
        // reqwest is built without a bundled crypto provider; install ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(graph.timeout)
            .connect_timeout(graph.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("flows-exporter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Relay {
            receiver,
            http,
            base_url: graph.base_url.clone(),
            api_version: graph.api_version.clone(),
            tokens,
        })
    }

    /// Until `stop`: sends what is due, then waits for an intake or a while.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let sent = tokio::select! {
                n = self.run_once() => n,
                () = stop.cancelled() => return,
            };
            if sent >= BATCH {
                continue;
            }
            tokio::select! {
                () = self.receiver.outbox_notify().notified() => {}
                () = tokio::time::sleep(IDLE) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One round: every item due now (at most a batch), one attempt each.
    /// Returns how many were tried.
    pub async fn run_once(&self) -> usize {
        let now = self.receiver.clock().now().timestamp();
        let store = self.receiver.store().clone();
        let due = match tokio::task::spawn_blocking(move || store.outbox_due(now, BATCH)).await {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the call-metrics outbox");
                return 0;
            }
            Err(e) => {
                warn!(error = %e, "call-metrics outbox read failed");
                return 0;
            }
        };
        let n = due.len();
        for item in due {
            self.attempt(item).await;
        }
        self.publish(now).await;
        n
    }

    async fn attempt(&self, item: OutboxItem) {
        let now = self.receiver.clock().now().timestamp();
        let attempts = item.attempts + 1;
        let result = if !callmetrics::within_window(item.ended_at, now) {
            RelayResult::Expired
        } else if let Some(token) = self.tokens.get(&item.page_id) {
            let answer = crate::graph::post_call_metrics(
                &self.http,
                &self.base_url,
                &self.api_version,
                &item.page_id,
                token,
                &item.body,
            )
            .await;
            let result = callmetrics::relay_result(answer.as_ref().map(|ok| *ok));
            if let Err(e) = &answer {
                debug!(page_id = %item.page_id, call_id = %item.call_id, class = e.class.label(), error = %e, "call_metrics answered with an error");
            }
            result
        } else {
            // The Page left the config: nobody can send for it.
            RelayResult::Permission
        };
        let (state, next_at) = callmetrics::next_step(result, attempts, now, item.ended_at);
        self.receiver.metrics().forwarded(&item.page_id, result);
        match state {
            OutboxState::Done => {
                debug!(page_id = %item.page_id, call_id = %item.call_id, result = result.label(), "call metrics relayed");
            }
            OutboxState::Failed => {
                warn!(page_id = %item.page_id, call_id = %item.call_id, result = result.label(), attempts, "call metrics not relayed; giving up");
            }
            OutboxState::Pending => {
                info!(page_id = %item.page_id, call_id = %item.call_id, result = result.label(), attempts, retry_in_seconds = next_at - now, "call metrics not relayed yet; will retry");
            }
        }
        let update = OutboxUpdate {
            state,
            attempts,
            next_at,
            result: result.label().to_owned(),
        };
        let store = self.receiver.store().clone();
        let id = item.id;
        match tokio::task::spawn_blocking(move || store.outbox_update(id, &update)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot record a relay attempt; the item is tried again")
            }
            Err(e) => warn!(error = %e, "relay attempt record failed"),
        }
    }

    /// Sets the outbox gauges.
    async fn publish(&self, now: i64) {
        let store = self.receiver.store().clone();
        if let Ok(Ok(summary)) = tokio::task::spawn_blocking(move || store.outbox_summary()).await {
            self.receiver.metrics().set_outbox(&summary, now);
        }
    }
}
