//! `webhook`: the configured event types are forwarded, as canonical JSON, to a generic signed POST.

use serde_json::{Value as Json, json};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{invoice, lead};

    #[test]
    fn only_configured_types_are_forwarded() {
        let w = Webhook::new(&AdapterSettings {
            base_url: None,
            event_types: Some(vec![EventType::LeadCaptured]),
        });
        let c = &w.decide(&lead()).unwrap()[0];
        let body: Json = serde_json::from_str(c.data["body_json"].as_str().unwrap()).unwrap();
        assert_eq!(body["data"]["form_id"], "contact");
        assert!(w.decide(&invoice("EUR", 100, "cus_1")).unwrap().is_empty());
    }
}
