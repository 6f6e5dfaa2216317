//! `analytics`: every event becomes one track call, with the entity key as the user key and only
//! non-personal fields as properties.
//!
//! Delivery is a Segment-style `POST /v1/track` with HTTP Basic credentials (the write key as user
//! name) and the command id as `messageId`, by which the provider deduplicates.

use base64::Engine;
use serde_json::{Map, Value as Json, json};

use super::delivery::{CallContext, DeliveryError, Idempotency, Plan, Receipt, Request, Response};
use super::{Adapter, AdapterError, rfc3339};
use crate::model::command::{Command, CommandType};
use crate::model::{Event, EventType};

/// The analytics adapter.
pub struct Analytics;

/// Fields that may be sent as properties, per event type (never e-mail, names or phone).
fn property_fields(t: EventType) -> &'static [&'static str] {
    match t {
        EventType::LeadCaptured => &["form_id", "company", "consent_marketing", "utm_campaign"],
        EventType::ContentPublished => &["content_id", "locale", "tags"],
        EventType::CampaignTriggered => &["campaign_id", "template_id"],
        EventType::InvoiceRequested => &["currency", "amount_minor"],
    }
}

fn as_property(v: &Json) -> Option<String> {
    match v {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        Json::Array(items) => Some(
            items
                .iter()
                .filter_map(as_property)
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

impl Adapter for Analytics {
    fn name(&self) -> &str {
        "analytics"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        let Some(t) = event.event_type() else {
            return Err(AdapterError::Permanent {
                reason: format!("unknown event type {}", event.meta.event_type),
            });
        };
        let properties: Map<String, Json> = property_fields(t)
            .iter()
            .filter_map(|f| {
                event
                    .data
                    .get(*f)
                    .and_then(as_property)
                    .map(|v| ((*f).to_string(), Json::String(v)))
            })
            .collect();
        // Built in place: `json!` would serialize each value again (the properties map copied
        // whole), once per event.
        let data: Map<String, Json> = [
            ("event_name", Json::from(t.name())),
            ("user_key", Json::String(event.entity_key()?)),
            ("properties", Json::Object(properties)),
            ("timestamp", Json::from(event.meta.occurred_at)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(vec![Command::new(
            event,
            self.name(),
            0,
            CommandType::AnalyticsTrack,
            data,
        )?])
    }

    fn idempotency(&self) -> Idempotency {
        Idempotency::Keys
    }

    fn plan(&self, command: &Command, cx: &CallContext<'_>) -> Result<Plan, DeliveryError> {
        let d = &command.data;
        let body = json!({
            "messageId": command.meta.command_id,
            "userId": d.get("user_key").cloned().unwrap_or(Json::Null),
            "event": d.get("event_name").cloned().unwrap_or(Json::Null),
            "properties": d.get("properties").cloned().unwrap_or(json!({})),
            "timestamp": d.get("timestamp").and_then(Json::as_i64).map(rfc3339),
        });
        let mut request = Request::post_json("/v1/track", &body);
        if let Some(key) = cx.credentials {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
            request = request.header("authorization", format!("Basic {basic}"));
        }
        Ok(Plan::Call(request))
    }

    fn receipt(
        &self,
        command: &Command,
        response: &Response,
        now_ms: i64,
    ) -> Result<Receipt, DeliveryError> {
        super::delivery::check_status(self.name(), response, now_ms)?;
        Ok(Receipt {
            provider_id: Some(command.meta.command_id.clone()),
            replayed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::lead;

    #[test]
    fn a_track_call_carries_no_pii() {
        let c = &Analytics.decide(&lead()).unwrap()[0];
        let text = serde_json::to_string(&c.data).unwrap();
        assert!(!text.contains("Ada") && !text.contains("7946"), "{text}");
        assert_eq!(c.data["properties"]["form_id"], "contact");
        assert_eq!(c.data["properties"]["consent_marketing"], "true");
        assert_eq!(c.data["event_name"], "LeadCaptured");
    }

    #[test]
    fn a_track_call_is_keyed_by_the_command_id_with_basic_credentials() {
        let c = &Analytics.decide(&lead()).unwrap()[0];
        let cx = CallContext {
            credentials: Some("wk"),
            hop: 0,
            now_ms: 0,
        };
        let Plan::Call(r) = Analytics.plan(c, &cx).unwrap() else {
            panic!()
        };
        let body: Json = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["messageId"], c.meta.command_id.as_str());
        assert_eq!(body["timestamp"], "2026-11-23T10:00:00Z");
        assert!(
            r.headers
                .contains(&("authorization".into(), "Basic d2s6".into()))
        );
    }
}
