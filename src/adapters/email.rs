//! `email`: a welcome e-mail for every captured lead, and the campaign e-mail a campaign step
//! triggers (sent at its `scheduled_at`).

use serde_json::{Map, Value as Json, json};

use super::{Adapter, AdapterError, required, text};
use crate::model::command::{Command, CommandType};
use crate::model::identity::normalize_email;
use crate::model::{Event, EventType};

/// The e-mail adapter.
pub struct Email;

impl Adapter for Email {
    fn name(&self) -> &str {
        "email"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        let d = &event.data;
        let data = match event.event_type() {
            Some(EventType::LeadCaptured) => {
                let mut variables = Map::new();
                for field in ["first_name", "company"] {
                    if let Some(v) = text(d, field) {
                        variables.insert(field.into(), Json::String(v.into()));
                    }
                }
                json!({
                    "to": normalize_email(required(d, "email")?),
                    "template_id": "welcome",
                    "purpose": "welcome",
                    "variables": variables,
                    "send_at": null,
                })
            }
            Some(EventType::CampaignTriggered) => json!({
                "to": normalize_email(required(d, "recipient_email")?),
                "template_id": required(d, "template_id")?,
                "purpose": "campaign",
                "variables": d.get("variables").cloned().unwrap_or(json!({})),
                "send_at": d.get("scheduled_at").cloned().unwrap_or(Json::Null),
            }),
            _ => return Ok(Vec::new()),
        };
        let Json::Object(data) = data else {
            return Ok(Vec::new());
        };
        Ok(vec![Command::new(
            event,
            self.name(),
            0,
            CommandType::EmailSend,
            data,
        )?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{event, lead};

    #[test]
    fn a_lead_gets_a_welcome_email() {
        let c = &Email.decide(&lead()).unwrap()[0];
        assert_eq!(
            (c.data["to"].as_str(), c.data["purpose"].as_str()),
            (Some("ada@example.com"), Some("welcome"))
        );
        assert_eq!(c.data["variables"]["first_name"], "Ada");
    }

    #[test]
    fn a_campaign_step_is_sent_at_its_scheduled_time() {
        let e = event(
            EventType::CampaignTriggered,
            json!({"campaign_id": "c", "recipient_email": "Bob@X.io", "template_id": "day-2",
                   "scheduled_at": 1_795_500_000_000_i64, "variables": {"offer": "20%"}}),
        );
        let c = &Email.decide(&e).unwrap()[0];
        assert_eq!(c.data["to"], "bob@x.io");
        assert_eq!(c.data["send_at"], 1_795_500_000_000_i64);
        assert_eq!(c.data["purpose"], "campaign");
    }
}
