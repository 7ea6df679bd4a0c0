//! The sandbox plays Meta for Messenger Calling (seeds 000, 001, 002, 004):
//! `POST /{page-id}/calls` (`connect` with an SDP offer answers an SDP answer
//! and a call id; `terminate`), `POST /{page-id}/call_metrics` with the
//! documented errors, and the `calls` webhooks each of them causes (queued
//! here, posted signed by the sandbox's server to the receiver set with
//! `Sandbox::set_webhook_target`). Pure: state in, answer and webhooks out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// One call the sandbox placed.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxCall {
    pub page_id: String,
    pub to: String,
    pub connected_at: i64,
    /// When the consumer picked up.
    pub accepted_at: Option<i64>,
    /// Unix seconds; `None` while in progress.
    pub ended_at: Option<i64>,
}

/// The sandbox's calling state.
#[derive(Debug, Default)]
pub struct Calling {
    /// Pages that may call (others get "Invalid page-id").
    pub pages: BTreeSet<String>,
    /// Pages whose app lacks the calling capability.
    pub no_permission: BTreeSet<String>,
    pub calls: BTreeMap<String, SandboxCall>,
    /// Call ids whose metrics were submitted.
    pub submitted: BTreeSet<String>,
    /// Every call_metrics body accepted, in order (tests read them).
    pub received_metrics: Vec<Value>,
    /// The next `call_metrics` posts answer this instead (status, body), once each.
    pub injected: Vec<(u16, String)>,
    /// `call_metrics` posts received, whatever their answer.
    pub posts: u64,
    serial: u64,
}

/// An answer: HTTP status and JSON body, and the `calls` webhooks to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub webhooks: Vec<String>,
}

fn error(status: u16, code: u32, message: &str) -> Answer {
    Answer {
        status,
        body: json!({"error": {"message": message, "type": "OAuthException", "code": code,
                     "fbtrace_id": "AsandboxCalling"}})
        .to_string(),
        webhooks: Vec::new(),
    }
}

/// A `calls` webhook body for one call update.
pub fn calls_webhook(page_id: &str, time: i64, call: Value) -> String {
    json!({"object": "page", "entry": [{"id": page_id, "time": time, "calls": [call]}]}).to_string()
}

impl Calling {
    /// `POST /{page_id}/calls`.
    pub fn calls(&mut self, page_id: &str, body: &Value, now: i64) -> Answer {
        if !self.pages.contains(page_id) {
            return error(400, 100, "Invalid Page ID");
        }
        if self.no_permission.contains(page_id) {
            return error(
                403,
                200,
                "Permissions error: the app does not have the calling capability",
            );
        }
        match body.get("action").and_then(Value::as_str) {
            Some("connect") => {
                let Some(to) = body.get("to").and_then(Value::as_str) else {
                    return error(
                        400,
                        100,
                        "Request format validation error: `to` is required",
                    );
                };
                let has_offer = body
                    .get("session")
                    .and_then(|s| s.get("sdp"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with("v=0"));
                if !has_offer {
                    return error(
                        400,
                        100,
                        "Request format validation error: session.sdp must be an RFC 4566 SDP offer",
                    );
                }
                self.serial += 1;
                let id = format!("c_sandbox{:06}{now}", self.serial);
                self.calls.insert(
                    id.clone(),
                    SandboxCall {
                        page_id: page_id.to_owned(),
                        to: to.to_owned(),
                        connected_at: now,
                        accepted_at: None,
                        ended_at: None,
                    },
                );
                let webhooks = vec![
                    calls_webhook(
                        page_id,
                        now,
                        json!({"id": id, "to": page_id, "from": to, "event": "connect",
                        "timestamp": now, "call_direction": "business_initiated"}),
                    ),
                    calls_webhook(
                        page_id,
                        now,
                        json!({"id": id, "event": "call_status", "timestamp": now,
                        "recipient_id": to, "call_status": "ringing"}),
                    ),
                ];
                Answer {
                    status: 200,
                    body: json!({"success": true, "id": id, "session": {"sdp_response": {
                        "sdp_type": "answer",
                        "sdp": "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=sandbox\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}}})
                    .to_string(),
                    webhooks,
                }
            }
            Some("terminate") => {
                let Some(id) = body.get("call_id").and_then(Value::as_str) else {
                    return error(400, 100, "Invalid call ID");
                };
                let Some(call) = self.calls.get_mut(id).filter(|c| c.page_id == page_id) else {
                    return error(400, 100, "Invalid call ID or Page ID");
                };
                if call.ended_at.is_some() {
                    return error(400, 100, "Call already terminated");
                }
                call.ended_at = Some(now);
                // A call the consumer never picked up failed, and has no
                // duration (the business never connected).
                let (status, duration) = match call.accepted_at {
                    Some(at) => ("Completed", json!(now - at)),
                    None => ("Failed", json!("")),
                };
                Answer {
                    status: 200,
                    body: json!({"success": true}).to_string(),
                    webhooks: vec![calls_webhook(
                        page_id,
                        now,
                        json!({"id": id, "event": "terminate", "timestamp": now, "status": status,
                            "start_time": call.connected_at, "end_time": now, "duration": duration}),
                    )],
                }
            }
            _ => error(
                400,
                100,
                "Request format validation error: action must be connect or terminate",
            ),
        }
    }

    /// The consumer picks up: the `accepted` webhook of a call the sandbox placed.
    pub fn accept(&mut self, call_id: &str, now: i64) -> Option<String> {
        let call = self
            .calls
            .get_mut(call_id)
            .filter(|c| c.ended_at.is_none())?;
        call.accepted_at.get_or_insert(now);
        Some(calls_webhook(
            &call.page_id,
            now,
            json!({"id": call_id, "event": "call_status",
            "timestamp": now, "recipient_id": call.to, "call_status": "accepted"}),
        ))
    }

    /// `POST /{page_id}/call_metrics`, with Meta's documented errors.
    pub fn call_metrics(&mut self, page_id: &str, body: &Value, now: i64) -> Answer {
        self.posts += 1;
        if let Some((status, body)) = (!self.injected.is_empty()).then(|| self.injected.remove(0)) {
            return Answer {
                status,
                body,
                webhooks: Vec::new(),
            };
        }
        if !self.pages.contains(page_id) {
            return error(400, 100, "Invalid page-id");
        }
        if self.no_permission.contains(page_id) {
            return error(
                403,
                200,
                "Invalid permissions. The app will be required to have the calling capability and the Page will be required to be eligible for calling",
            );
        }
        let Some(id) = body.get("call_id").and_then(Value::as_str) else {
            return error(400, 100, "Invalid call id");
        };
        let Some(call) = self.calls.get(id).filter(|c| c.page_id == page_id) else {
            return error(400, 100, "Invalid call id");
        };
        let Some(ended) = call.ended_at else {
            return error(400, 100, "Call is still in progress");
        };
        if now > ended + 24 * 3600 {
            return error(
                400,
                100,
                "Metrics submitted outside of 24-hour submission window",
            );
        }
        if !self.submitted.insert(id.to_owned()) {
            return error(400, 100, "Metrics have already been submitted");
        }
        self.received_metrics.push(body.clone());
        Answer {
            status: 200,
            body: json!({"success": true}).to_string(),
            webhooks: Vec::new(),
        }
    }
}
