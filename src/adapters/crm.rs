//! `crm`: a captured lead becomes a contact upsert keyed by the normalised e-mail, delivered as a
//! HubSpot-style batch upsert of one contact matched by e-mail (`idProperty: email`): repeating it
//! changes nothing, so the provider is naturally idempotent.

use serde_json::{Map, Value as Json, json};

use super::delivery::{CallContext, DeliveryError, Idempotency, Plan, Receipt, Request, Response};
use super::{Adapter, AdapterError, bearer, pick, receipt_at, required};
use crate::model::command::{Command, CommandType};
use crate::model::identity::normalize_email;
use crate::model::{Event, EventType};

/// The CRM adapter.
pub struct Crm;

/// The upsert endpoint, relative to `adapters.crm.base_url`.
pub const UPSERT_PATH: &str = "/crm/v3/objects/contacts/batch/upsert";

/// The command's fields as CRM contact properties (all strings, as the CRM stores them).
fn properties(data: &Map<String, Json>) -> Map<String, Json> {
    let mut props = Map::new();
    for (field, property) in [
        ("email", "email"),
        ("first_name", "firstname"),
        ("last_name", "lastname"),
        ("company", "company"),
        ("phone", "phone"),
        ("lifecycle_stage", "lifecyclestage"),
        ("utm_campaign", "utm_campaign"),
        ("consent_marketing", "onceflow_consent_marketing"),
    ] {
        let value = match data.get(field) {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Bool(b)) => b.to_string(),
            _ => continue,
        };
        props.insert(property.into(), Json::String(value));
    }
    props
}

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

    fn idempotency(&self) -> Idempotency {
        Idempotency::Natural
    }

    fn plan(&self, command: &Command, cx: &CallContext<'_>) -> Result<Plan, DeliveryError> {
        let email = command
            .data
            .get("email")
            .and_then(Json::as_str)
            .ok_or_else(|| DeliveryError::Permanent {
                reason: "the command has no e-mail".into(),
                status: None,
            })?;
        let body = json!({"inputs": [{
            "idProperty": "email",
            "id": email,
            "properties": properties(&command.data),
        }]});
        Ok(Plan::Call(bearer(
            Request::post_json(UPSERT_PATH, &body),
            cx,
        )))
    }

    fn receipt(
        &self,
        _command: &Command,
        response: &Response,
        now_ms: i64,
    ) -> Result<Receipt, DeliveryError> {
        receipt_at(self.name(), response, now_ms, "/results/0/id")
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
    fn an_upsert_matches_by_email_and_sends_strings() {
        let c = &Crm.decide(&lead()).unwrap()[0];
        let cx = CallContext {
            credentials: Some("k"),
            hop: 0,
            now_ms: 0,
        };
        let Plan::Call(r) = Crm.plan(c, &cx).unwrap() else {
            panic!()
        };
        assert_eq!(r.path, UPSERT_PATH);
        let body: Json = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["inputs"][0]["idProperty"], "email");
        assert_eq!(body["inputs"][0]["id"], "ada@example.com");
        assert_eq!(body["inputs"][0]["properties"]["firstname"], "Ada");
        assert_eq!(
            body["inputs"][0]["properties"]["onceflow_consent_marketing"],
            "true"
        );
        assert!(
            r.headers
                .contains(&("authorization".into(), "Bearer k".into()))
        );
        let ok = Response {
            status: 200,
            headers: vec![],
            body: br#"{"status":"COMPLETE","results":[{"id":"901","new":true}]}"#.to_vec(),
        };
        assert_eq!(
            Crm.receipt(c, &ok, 0).unwrap().provider_id.as_deref(),
            Some("901")
        );
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
