//! `email`: a welcome e-mail for every captured lead, and the campaign e-mail a campaign step
//! triggers (sent at its `scheduled_at`).
//!
//! Delivery speaks one of two provider APIs (`adapters.email.provider`):
//! - `resend` (the default): `POST /emails` with the command id as `Idempotency-Key`, which the
//!   provider honours for 24 hours; scheduling up to 30 days ahead (`scheduled_at`).
//! - `sendgrid`: `POST /v3/mail/send`, which has no idempotency key: every accepted call is one
//!   more e-mail, so a command in doubt is parked by default; scheduling up to 72 hours ahead
//!   (`send_at`).
//!
//! A send further ahead than the provider can schedule waits in the deliver retry tiers until it
//! is within reach.

use std::time::Duration;

use serde_json::{Map, Value as Json, json};

use super::delivery::{CallContext, DeliveryError, Idempotency, Plan, Receipt, Request, Response};
use super::{Adapter, AdapterError, bearer, key_in_flight, receipt_at, required, rfc3339, text};
use crate::config::AdapterSettings;
use crate::model::command::{Command, CommandType};
use crate::model::identity::normalize_email;
use crate::model::{Event, EventType};

/// The sender when `adapters.email.from` is not set.
pub const DEFAULT_FROM: &str = "onceflow <hello@onceflow.example>";

/// Which provider API the adapter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Resend-style: honours `Idempotency-Key`.
    Resend,
    /// SendGrid-style: no idempotency key.
    SendGrid,
}

impl Provider {
    /// How far ahead the provider schedules a send.
    pub fn horizon(self) -> Duration {
        match self {
            Provider::Resend => Duration::from_secs(30 * 86_400),
            Provider::SendGrid => Duration::from_secs(72 * 3_600),
        }
    }
}

/// The e-mail adapter.
pub struct Email {
    provider: Provider,
    from: String,
}

impl Email {
    /// The adapter for `settings` (`provider`, `from`).
    pub fn new(settings: &AdapterSettings) -> Email {
        Email {
            provider: match settings.provider.as_deref() {
                Some("sendgrid") => Provider::SendGrid,
                _ => Provider::Resend,
            },
            from: settings.from.clone().unwrap_or_else(|| DEFAULT_FROM.into()),
        }
    }

    fn resend(&self, c: &Command, to: &str, send_at: Option<i64>) -> Request {
        let template = c
            .data
            .get("template_id")
            .and_then(Json::as_str)
            .unwrap_or("");
        let purpose = c.data.get("purpose").and_then(Json::as_str).unwrap_or("");
        let mut body = json!({
            "from": self.from,
            "to": [to],
            "subject": format!("{purpose}: {template}"),
            "text": variables_text(&c.data),
            "tags": [{"name": "template", "value": template}, {"name": "purpose", "value": purpose}],
        });
        if let Some(at) = send_at {
            body["scheduled_at"] = json!(rfc3339(at));
        }
        Request::post_json("/emails", &body).header("idempotency-key", &c.meta.command_id)
    }

    fn sendgrid(&self, c: &Command, to: &str, send_at: Option<i64>) -> Request {
        let mut body = json!({
            "personalizations": [{
                "to": [{"email": to}],
                "dynamic_template_data": c.data.get("variables").cloned().unwrap_or(json!({})),
            }],
            "from": {"email": self.from},
            "template_id": c.data.get("template_id").cloned().unwrap_or(Json::Null),
            "custom_args": {"onceflow_command_id": c.meta.command_id},
        });
        if let Some(at) = send_at {
            body["send_at"] = json!(at.div_euclid(1000));
        }
        Request::post_json("/v3/mail/send", &body)
    }
}

/// Template variables as `key: value` lines (the provider-side template is out of scope here).
fn variables_text(data: &Map<String, Json>) -> String {
    match data.get("variables") {
        Some(Json::Object(vars)) => vars
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

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

    fn idempotency(&self) -> Idempotency {
        match self.provider {
            Provider::Resend => Idempotency::Keys,
            Provider::SendGrid => Idempotency::None,
        }
    }

    fn plan(&self, command: &Command, cx: &CallContext<'_>) -> Result<Plan, DeliveryError> {
        let to = command
            .data
            .get("to")
            .and_then(Json::as_str)
            .ok_or_else(|| DeliveryError::Permanent {
                reason: "the command has no recipient".into(),
                status: None,
            })?;
        let send_at = command
            .data
            .get("send_at")
            .and_then(Json::as_i64)
            .filter(|at| *at > cx.now_ms);
        let horizon = i64::try_from(self.provider.horizon().as_millis()).unwrap_or(i64::MAX);
        if let Some(at) = send_at
            && at - cx.now_ms > horizon
        {
            return Ok(Plan::Wait(at - horizon));
        }
        let request = match self.provider {
            Provider::Resend => self.resend(command, to, send_at),
            Provider::SendGrid => self.sendgrid(command, to, send_at),
        };
        Ok(Plan::Call(bearer(request, cx)))
    }

    fn receipt(
        &self,
        _command: &Command,
        response: &Response,
        now_ms: i64,
    ) -> Result<Receipt, DeliveryError> {
        if let Some(e) = key_in_flight(response, "/name", "concurrent_idempotent_requests") {
            return Err(e);
        }
        let mut receipt = receipt_at(self.name(), response, now_ms, "/id")?;
        if self.provider == Provider::SendGrid {
            receipt.provider_id = response.header("x-message-id").map(str::to_string);
        }
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{event, lead};

    fn email(provider: &str) -> Email {
        Email::new(&AdapterSettings {
            provider: Some(provider.into()),
            ..AdapterSettings::default()
        })
    }

    fn cx(now_ms: i64) -> CallContext<'static> {
        CallContext {
            credentials: Some("key"),
            hop: 0,
            now_ms,
        }
    }

    #[test]
    fn resend_gets_the_command_id_as_idempotency_key_and_sendgrid_gets_none() {
        let resend = email("resend");
        let c = &resend.decide(&lead()).unwrap()[0];
        let Plan::Call(r) = resend.plan(c, &cx(0)).unwrap() else {
            panic!()
        };
        assert_eq!(r.path, "/emails");
        assert!(
            r.headers
                .contains(&("idempotency-key".into(), c.meta.command_id.clone()))
        );
        assert_eq!(resend.idempotency(), Idempotency::Keys);
        let sendgrid = email("sendgrid");
        let Plan::Call(r) = sendgrid.plan(c, &cx(0)).unwrap() else {
            panic!()
        };
        assert_eq!(r.path, "/v3/mail/send");
        assert!(!r.headers.iter().any(|(k, _)| k == "idempotency-key"));
        assert_eq!(sendgrid.idempotency(), Idempotency::None);
        assert_eq!(
            sendgrid.default_in_doubt(),
            crate::config::InDoubt::Park,
            "a provider that cannot tell a duplicate parks by default"
        );
    }

    #[test]
    fn a_send_beyond_the_providers_horizon_waits_and_a_nearer_one_is_scheduled() {
        let e = event(
            EventType::CampaignTriggered,
            json!({"campaign_id": "c", "recipient_email": "bob@x.io", "template_id": "t",
                   "scheduled_at": 10 * 86_400_000_i64, "variables": {}}),
        );
        let sendgrid = email("sendgrid");
        let c = &sendgrid.decide(&e).unwrap()[0];
        let three_days = 72 * 3_600_000;
        assert_eq!(
            sendgrid.plan(c, &cx(0)).unwrap(),
            Plan::Wait(10 * 86_400_000 - three_days)
        );
        let Plan::Call(r) = sendgrid.plan(c, &cx(8 * 86_400_000)).unwrap() else {
            panic!()
        };
        let body: Json = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["send_at"], 10 * 86_400);
        let Plan::Call(r) = email("resend").plan(c, &cx(0)).unwrap() else {
            panic!("within Resend's 30 days")
        };
        let body: Json = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["scheduled_at"], "1970-01-11T00:00:00Z");
    }

    #[test]
    fn a_lead_gets_a_welcome_email() {
        let c = &email("resend").decide(&lead()).unwrap()[0];
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
        let c = &email("resend").decide(&e).unwrap()[0];
        assert_eq!(c.data["to"], "bob@x.io");
        assert_eq!(c.data["send_at"], 1_795_500_000_000_i64);
        assert_eq!(c.data["purpose"], "campaign");
    }
}
