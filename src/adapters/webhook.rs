//! `webhook`: the configured event types are forwarded, as canonical JSON, to a generic signed POST.
//!
//! Delivery follows Standard Webhooks (as Svix signs): `POST` to `adapters.webhook.base_url` with
//! `webhook-id` (the command id, by which receivers deduplicate), `webhook-timestamp` (unix
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` under the
//! `whsec_…` secret; plus `X-Onceflow-Hop` (the event's hop count + 1), so an onceflow intake that
//! receives its own webhook back through an external automation can stop the loop.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value as Json, json};
use sha2::Sha256;

use super::delivery::{CallContext, DeliveryError, Idempotency, Plan, Request};
use super::{Adapter, AdapterError};
use crate::config::AdapterSettings;
use crate::model::command::{Command, CommandType};
use crate::model::identity::canonical_json;
use crate::model::{Event, EventType};

/// The generic webhook adapter.
pub struct Webhook {
    event_types: Vec<EventType>,
}

impl Webhook {
    /// Forwards `settings.event_types` (every type when unset).
    pub fn new(settings: &AdapterSettings) -> Webhook {
        Webhook {
            event_types: settings
                .event_types
                .clone()
                .unwrap_or_else(|| EventType::ALL.to_vec()),
        }
    }
}

/// The header that carries the hop count.
pub const HOP_HEADER: &str = "x-onceflow-hop";

/// The key of a Standard Webhooks secret: the base64 after `whsec_` (or the raw text of a secret
/// without the prefix).
fn signing_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// The `webhook-signature` value of `body` sent as `id` at `timestamp` (unix seconds).
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&signing_key(secret))
        .unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

impl Adapter for Webhook {
    fn name(&self) -> &str {
        "webhook"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        let Some(t) = event.event_type().filter(|t| self.event_types.contains(t)) else {
            return Ok(Vec::new());
        };
        let body = json!({"event_id": event.meta.event_id, "type": t.name(), "source": event.meta.source,
                          "occurred_at": event.meta.occurred_at, "data": Json::Object(event.data.clone())});
        let Json::Object(data) =
            json!({"event_type": t.name(), "body_json": canonical_json(&body)})
        else {
            return Ok(Vec::new());
        };
        Ok(vec![Command::new(
            event,
            self.name(),
            0,
            CommandType::WebhookPost,
            data,
        )?])
    }

    fn idempotency(&self) -> Idempotency {
        Idempotency::Keys
    }

    fn plan(&self, command: &Command, cx: &CallContext<'_>) -> Result<Plan, DeliveryError> {
        let secret = cx.credentials.ok_or_else(|| DeliveryError::Permanent {
            reason: "no signing secret (adapters.webhook.credentials_env)".into(),
            status: None,
        })?;
        let body = command
            .data
            .get("body_json")
            .and_then(Json::as_str)
            .unwrap_or("{}")
            .as_bytes()
            .to_vec();
        let id = &command.meta.command_id;
        let timestamp = cx.now_ms.div_euclid(1000);
        let signed = signature(secret, id, timestamp, &body);
        let mut request = Request::post_json("", &Json::Null);
        request.body = body;
        Ok(Plan::Call(
            request
                .header("webhook-signature", signed)
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(HOP_HEADER, (cx.hop + 1).to_string()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{invoice, lead};

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_post_is_signed_and_counts_one_more_hop() {
        let w = Webhook::new(&AdapterSettings::default());
        let c = &w.decide(&lead()).unwrap()[0];
        let cx = CallContext {
            credentials: Some("whsec_c2VjcmV0"),
            hop: 2,
            now_ms: 1_700_000_000_123,
        };
        let Plan::Call(r) = w.plan(c, &cx).unwrap() else {
            panic!()
        };
        let header = |k: &str| r.headers.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(header("x-onceflow-hop"), "3");
        assert_eq!(header("webhook-timestamp"), "1700000000");
        assert_eq!(
            header("webhook-signature"),
            signature("whsec_c2VjcmV0", &c.meta.command_id, 1_700_000_000, &r.body)
        );
        assert_eq!(r.body, c.data["body_json"].as_str().unwrap().as_bytes());
    }

    #[test]
    fn only_configured_types_are_forwarded() {
        let w = Webhook::new(&AdapterSettings {
            event_types: Some(vec![EventType::LeadCaptured]),
            ..AdapterSettings::default()
        });
        let c = &w.decide(&lead()).unwrap()[0];
        let body: Json = serde_json::from_str(c.data["body_json"].as_str().unwrap()).unwrap();
        assert_eq!(body["data"]["form_id"], "contact");
        assert!(w.decide(&invoice("EUR", 100, "cus_1")).unwrap().is_empty());
    }
}
