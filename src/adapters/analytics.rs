//! `analytics`: every event becomes one track call, with the entity key as the user key and only
//! non-personal fields as properties.

use serde_json::{Map, Value as Json, json};

use super::Adapter;
use super::AdapterError;
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
        let Json::Object(data) = json!({
            "event_name": t.name(),
            "user_key": event.entity_key()?,
            "properties": properties,
            "timestamp": event.meta.occurred_at,
        }) else {
            return Ok(Vec::new());
        };
        Ok(vec![Command::new(
            event,
            self.name(),
            0,
            CommandType::AnalyticsTrack,
            data,
        )?])
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
}
