//! `crm`: a captured lead becomes a contact upsert keyed by the normalised e-mail.

use serde_json::{Value as Json, json};

use super::{Adapter, AdapterError, pick, required};
use crate::model::command::{Command, CommandType};
use crate::model::identity::normalize_email;
use crate::model::{Event, EventType};

/// The CRM adapter.
pub struct Crm;

impl Adapter for Crm {
    fn name(&self) -> &str {
        "crm"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        if event.event_type() != Some(EventType::LeadCaptured) {
            return Ok(Vec::new());
        }
        let d = &event.data;
        let mut data = pick(
            d,
            &[
                "first_name",
                "last_name",
                "company",
                "phone",
                "utm_campaign",
            ],
        );
        data.insert(
            "email".into(),
            Json::String(normalize_email(required(d, "email")?)),
        );
        data.insert("lifecycle_stage".into(), json!("lead"));
        data.insert(
            "consent_marketing".into(),
            d.get("consent_marketing").cloned().unwrap_or(json!(false)),
        );
        Ok(vec![Command::new(
            event,
            self.name(),
            0,
            CommandType::CrmUpsertContact,
            data,
        )?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{invoice, lead};

    #[test]
    fn a_lead_becomes_one_upsert_with_the_normalised_email() {
        let cmds = Crm.decide(&lead()).unwrap();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].command_type, CommandType::CrmUpsertContact);
        assert_eq!(cmds[0].data["email"], "ada@example.com");
        assert_eq!(cmds[0].data["lifecycle_stage"], "lead");
        assert_eq!(cmds[0].data["utm_campaign"], "autumn");
    }

    #[test]
    fn other_events_need_nothing() {
        assert!(
            Crm.decide(&invoice("EUR", 100, "cus_1"))
                .unwrap()
                .is_empty()
        );
    }
}
