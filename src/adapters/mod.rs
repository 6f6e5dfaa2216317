//! Adapters: pure logic for one external system. For the processor, `decide` turns an event into
//! commands; for the dispatcher, `plan` turns a command into the HTTP request that delivers it and
//! `receipt` reads the provider's answer ([`delivery`]). The dispatcher does the I/O.
//!
//! Invariants:
//! - No adapter imports rdkafka or an HTTP library, or does I/O: given the same event `decide`
//!   returns the same commands (up to `created_at`), so a batch redone after a crash decides the
//!   same work; given the same command and context `plan` builds the same request.
//! - Every request carries the command id as the provider's idempotency key, in the form that
//!   provider understands (header, field, webhook id); [`Adapter::idempotency`] says whether the
//!   provider honours it, which decides the default in-doubt policy.
//! - Every failure carries its disposition: [`AdapterError::Retry`] (with an optional delay the
//!   adapter knows, like a Retry-After) goes through the retry tiers, [`AdapterError::Permanent`]
//!   goes straight to the DLQ.
//! - [`NAMES`] and [`build`] are the one registry: configuration accepts only these names.
//! - An event type an adapter does not act on yields no commands (not an error).

mod analytics;
mod billing;
mod crm;
pub mod delivery;
mod email;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::config::{AdapterSettings, InDoubt};
use crate::model::command::Command;
use crate::model::{Event, FieldError};
use delivery::{CallContext, DeliveryError, Idempotency, Plan, Receipt, Response};

/// Every built-in adapter, by name.
pub const NAMES: [&str; 5] = ["analytics", "billing", "crm", "email", "webhook"];

/// Why an adapter could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// Try again later (not before `after`, when given).
    #[error("retry later: {message}")]
    Retry {
        /// The earliest sensible retry, when the adapter knows it.
        after: Option<Duration>,
        /// What happened.
        message: String,
    },
    /// Will never succeed.
    #[error("permanent: {reason}")]
    Permanent {
        /// Why.
        reason: String,
    },
}

impl From<FieldError> for AdapterError {
    fn from(e: FieldError) -> Self {
        AdapterError::Permanent {
            reason: e.to_string(),
        }
    }
}

/// An adapter's decision logic.
pub trait Adapter: Send + Sync {
    /// The adapter's name (used in topic and group names).
    fn name(&self) -> &str;

    /// The commands `event` calls for.
    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError>;

    /// How the provider treats a repeated call.
    fn idempotency(&self) -> Idempotency {
        Idempotency::None
    }

    /// The in-doubt policy when the settings name none: resend where the provider can tell a
    /// duplicate, park where it cannot.
    fn default_in_doubt(&self) -> InDoubt {
        match self.idempotency() {
            Idempotency::Keys | Idempotency::Natural => InDoubt::Resend,
            Idempotency::None => InDoubt::Park,
        }
    }

    /// The request that delivers `command` (or how long it must wait first).
    fn plan(&self, command: &Command, _cx: &CallContext<'_>) -> Result<Plan, DeliveryError> {
        Err(DeliveryError::Permanent {
            reason: format!(
                "adapter {} cannot deliver {}",
                self.name(),
                command.command_type
            ),
            status: None,
        })
    }

    /// What the provider's answer to `command`'s request means.
    fn receipt(
        &self,
        _command: &Command,
        response: &Response,
        now_ms: i64,
    ) -> Result<Receipt, DeliveryError> {
        delivery::check_status(self.name(), response, now_ms)?;
        Ok(Receipt::default())
    }
}

/// The built-in adapter `name`, configured.
pub fn build(name: &str, settings: &AdapterSettings) -> Option<Arc<dyn Adapter>> {
    Some(match name {
        "analytics" => Arc::new(analytics::Analytics),
        "billing" => Arc::new(billing::Billing),
        "crm" => Arc::new(crm::Crm),
        "email" => Arc::new(email::Email::new(settings)),
        "webhook" => Arc::new(webhook::Webhook::new(settings)),
        _ => return None,
    })
}

/// The string field `name` of the event's data, if present and not null.
fn text<'a>(data: &'a Map<String, Json>, name: &str) -> Option<&'a str> {
    data.get(name).and_then(Json::as_str)
}

/// The string field `name`, required.
fn required<'a>(data: &'a Map<String, Json>, name: &str) -> Result<&'a str, AdapterError> {
    text(data, name).ok_or_else(|| AdapterError::Permanent {
        reason: format!("data.{name} is missing"),
    })
}

/// `Authorization: Bearer <credentials>`, when there are credentials.
fn bearer(request: delivery::Request, cx: &CallContext<'_>) -> delivery::Request {
    match cx.credentials {
        Some(key) => request.header("authorization", format!("Bearer {key}")),
        None => request,
    }
}

/// RFC 3339 text of an epoch-ms time (UTC).
fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// The id field `field` of a JSON answer, as text.
fn id_of(response: &Response, pointer: &str) -> Option<String> {
    response.json()?.pointer(pointer).and_then(|v| match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// The receipt of an answer whose provider id is at JSON `pointer`, after the shared status
/// classification.
fn receipt_at(
    adapter: &str,
    response: &Response,
    now_ms: i64,
    pointer: &str,
) -> Result<Receipt, DeliveryError> {
    delivery::check_status(adapter, response, now_ms)?;
    Ok(Receipt {
        provider_id: id_of(response, pointer),
        replayed: false,
    })
}

/// A 409 whose JSON `pointer` is `value`: the same idempotency key is in flight at the provider;
/// nothing was performed by this call, so it is tried again in a second.
fn key_in_flight(response: &Response, pointer: &str, value: &str) -> Option<DeliveryError> {
    (response.status == 409 && id_of(response, pointer).as_deref() == Some(value)).then(|| {
        DeliveryError::Retry {
            after: Some(Duration::from_secs(1)),
            message: "the same idempotency key is in flight at the provider".into(),
            status: Some(409),
        }
    })
}

/// Copies the listed fields (those present) from `data`.
fn pick(data: &Map<String, Json>, names: &[&str]) -> Map<String, Json> {
    names
        .iter()
        .filter_map(|n| data.get(*n).map(|v| ((*n).to_string(), v.clone())))
        .collect()
}

#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::{Value as Json, json};

    use crate::model::{Event, EventType};

    /// An event of `t` with `data`, from source `test`.
    pub fn event(t: EventType, data: Json) -> Event {
        let Json::Object(map) = data else {
            panic!("data must be an object")
        };
        Event::new(
            t,
            "test",
            Some("e-1"),
            1_795_428_000_000,
            map,
            Some("corr-1".into()),
        )
    }

    pub fn lead() -> Event {
        event(
            EventType::LeadCaptured,
            json!({"email": " Ada@Example.com ", "first_name": "Ada", "last_name": null, "company": "AE",
                   "phone": "+44 20 7946 0958", "form_id": "contact", "consent_marketing": true,
                   "utm_campaign": "autumn"}),
        )
    }

    pub fn invoice(currency: &str, amount: i64, customer: &str) -> Event {
        event(
            EventType::InvoiceRequested,
            json!({"customer_id": customer, "customer_email": "billing@acme.io", "currency": currency,
                   "amount_minor": amount, "description": "Pro plan", "due_at": null}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::catalog::Catalog;

    #[test]
    fn the_registry_builds_every_name_and_only_those() {
        for name in NAMES {
            let a = build(name, &AdapterSettings::default()).unwrap();
            assert_eq!(a.name(), name);
        }
        assert!(build("nope", &AdapterSettings::default()).is_none());
    }

    #[test]
    fn every_command_of_every_adapter_fits_its_schema() {
        use crate::model::EventType;
        use serde_json::json;
        let catalog = Catalog::builtin().unwrap();
        let events = [
            test_support::lead(),
            test_support::invoice("EUR", 1999, "cus_42"),
            test_support::event(
                EventType::CampaignTriggered,
                json!({"campaign_id": "c", "recipient_email": "bob@x.io", "template_id": "t",
                       "scheduled_at": 1_795_500_000_000_i64, "variables": {"a": "b"}}),
            ),
            test_support::event(
                EventType::ContentPublished,
                json!({"content_id": "p1", "title": "T", "url": "https://x.io/p1", "author_email": null,
                       "tags": ["a", "b"], "locale": "en"}),
            ),
        ];
        let mut decided = 0;
        for name in NAMES {
            let adapter = build(name, &AdapterSettings::default()).unwrap();
            for e in &events {
                for (i, c) in adapter.decide(e).unwrap().into_iter().enumerate() {
                    let (_, schema) = catalog.latest(c.command_type.schema_name()).unwrap();
                    let v = c
                        .to_avro(schema)
                        .unwrap_or_else(|err| panic!("{name} {:?}: {err}", c.command_type));
                    assert!(v.validate(schema.schema()));
                    assert_eq!(
                        c.meta.command_id,
                        crate::model::identity::command_id(&e.meta.event_id, name, i)
                    );
                    assert_eq!(c.meta.event_id, e.meta.event_id);
                    assert_eq!(c.meta.correlation_id, "corr-1");
                    assert_eq!(c.key, e.entity_key().unwrap());
                    decided += 1;
                }
            }
        }
        assert!(decided >= 10, "{decided}");
    }
}
