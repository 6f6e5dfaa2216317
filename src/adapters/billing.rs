//! `billing`: an invoice request becomes a Stripe-style invoice creation, validated as the billing
//! API would validate it, so a request it would refuse goes to the DLQ at once instead of failing
//! at delivery.
//!
//! Delivery is Stripe's `POST /v1/invoices`, form-encoded, with the command id as
//! `Idempotency-Key`: the provider replays its stored answer to a repeat (`Idempotent-Replayed:
//! true`) for 24 hours, answers 409 while the same key is in flight (retried), and 400 to the same
//! key with other parameters (permanent). Money is at stake, so a command in doubt is parked by
//! default even though the provider honours keys: after 24 hours a resend would be a second
//! invoice.

use serde_json::{Value as Json, json};

use super::delivery::{CallContext, DeliveryError, Idempotency, Plan, Receipt, Request, Response};
use super::{Adapter, AdapterError, bearer, key_in_flight, receipt_at, required};
use crate::config::InDoubt;
use crate::model::command::{Command, CommandType};
use crate::model::identity::normalize_email;
use crate::model::{Event, EventType};

/// Currencies the billing provider settles in.
const CURRENCIES: [&str; 12] = [
    "AUD", "CAD", "CHF", "CZK", "DKK", "EUR", "GBP", "JPY", "NOK", "PLN", "SEK", "USD",
];
/// The provider's smallest charge, in minor units.
const MIN_AMOUNT: i64 = 50;
/// The provider's largest charge, in minor units.
const MAX_AMOUNT: i64 = 99_999_999;

/// The billing adapter.
pub struct Billing;

fn permanent(reason: impl Into<String>) -> AdapterError {
    AdapterError::Permanent {
        reason: reason.into(),
    }
}

impl Adapter for Billing {
    fn name(&self) -> &str {
        "billing"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        if event.event_type() != Some(EventType::InvoiceRequested) {
            return Ok(Vec::new());
        }
        let d = &event.data;
        let customer = required(d, "customer_id")?;
        let valid_customer = customer.strip_prefix("cus_").is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if !valid_customer {
            return Err(permanent(format!(
                "customer id `{customer}` is not a billing customer id (cus_…)"
            )));
        }
        let currency = required(d, "currency")?;
        if !CURRENCIES.contains(&currency) {
            return Err(permanent(format!("currency {currency} is not supported")));
        }
        let amount = d
            .get("amount_minor")
            .and_then(Json::as_i64)
            .ok_or_else(|| permanent("amount is missing"))?;
        if !(MIN_AMOUNT..=MAX_AMOUNT).contains(&amount) {
            return Err(permanent(format!(
                "amount {amount} is outside {MIN_AMOUNT}..={MAX_AMOUNT} minor units"
            )));
        }
        if let Some(due) = d.get("due_at").and_then(Json::as_i64)
            && due < event.meta.occurred_at
        {
            return Err(permanent("due date lies before the request"));
        }
        let Json::Object(data) = json!({
            "customer_id": customer,
            "customer_email": normalize_email(required(d, "customer_email")?),
            "currency": currency,
            "amount_minor": amount,
            "description": required(d, "description")?,
            "due_at": d.get("due_at").cloned().unwrap_or(Json::Null),
        }) else {
            return Ok(Vec::new());
        };
        Ok(vec![Command::new(
            event,
            self.name(),
            0,
            CommandType::InvoiceCreate,
            data,
        )?])
    }

    fn idempotency(&self) -> Idempotency {
        Idempotency::Keys
    }

    fn default_in_doubt(&self) -> InDoubt {
        InDoubt::Park
    }

    fn plan(&self, command: &Command, cx: &CallContext<'_>) -> Result<Plan, DeliveryError> {
        let d = &command.data;
        let field = |name: &str| match d.get(name) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let missing = |name: &str| DeliveryError::Permanent {
            reason: format!("the command has no {name}"),
            status: None,
        };
        let mut fields = vec![
            (
                "customer".to_string(),
                field("customer_id").ok_or_else(|| missing("customer_id"))?,
            ),
            (
                "currency".to_string(),
                field("currency")
                    .ok_or_else(|| missing("currency"))?
                    .to_ascii_lowercase(),
            ),
            (
                "amount".to_string(),
                field("amount_minor").ok_or_else(|| missing("amount_minor"))?,
            ),
            (
                "description".to_string(),
                field("description").unwrap_or_default(),
            ),
            ("collection_method".to_string(), "send_invoice".to_string()),
        ];
        match d.get("due_at").and_then(Json::as_i64) {
            Some(ms) => fields.push(("due_date".into(), ms.div_euclid(1000).to_string())),
            None => fields.push(("days_until_due".into(), "30".into())),
        }
        fields.push((
            "metadata[onceflow_command_id]".into(),
            command.meta.command_id.clone(),
        ));
        fields.push((
            "metadata[onceflow_event_id]".into(),
            command.meta.event_id.clone(),
        ));
        let request = Request::post_form("/v1/invoices", &fields)
            .header("idempotency-key", &command.meta.command_id);
        Ok(Plan::Call(bearer(request, cx)))
    }

    fn receipt(
        &self,
        _command: &Command,
        response: &Response,
        now_ms: i64,
    ) -> Result<Receipt, DeliveryError> {
        if let Some(e) = key_in_flight(response, "/error/code", "idempotency_key_in_use") {
            return Err(e);
        }
        let mut receipt = receipt_at(self.name(), response, now_ms, "/id")?;
        receipt.replayed = response.header("idempotent-replayed") == Some("true");
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::test_support::{invoice, lead};

    #[test]
    fn a_valid_request_becomes_one_invoice() {
        let c = &Billing.decide(&invoice("EUR", 1999, "cus_42")).unwrap()[0];
        assert_eq!(c.command_type, CommandType::InvoiceCreate);
        assert_eq!(c.data["amount_minor"], 1999);
        assert_eq!(c.key, "cus_42");
    }

    #[test]
    fn an_invoice_is_form_encoded_with_the_command_id_as_idempotency_key() {
        let c = &Billing.decide(&invoice("EUR", 1999, "cus_42")).unwrap()[0];
        let cx = CallContext {
            credentials: Some("sk_test"),
            hop: 0,
            now_ms: 0,
        };
        let Plan::Call(r) = Billing.plan(c, &cx).unwrap() else {
            panic!()
        };
        let body = String::from_utf8(r.body).unwrap();
        assert!(
            body.contains("customer=cus_42&currency=eur&amount=1999"),
            "{body}"
        );
        assert!(
            body.contains("metadata%5Bonceflow_command_id%5D="),
            "{body}"
        );
        assert_eq!(r.content_type, "application/x-www-form-urlencoded");
        assert!(
            r.headers
                .contains(&("idempotency-key".into(), c.meta.command_id.clone()))
        );
        let replay = Response {
            status: 200,
            headers: vec![("idempotent-replayed".into(), "true".into())],
            body: br#"{"id":"in_1"}"#.to_vec(),
        };
        let receipt = Billing.receipt(c, &replay, 0).unwrap();
        assert_eq!(
            (receipt.provider_id.as_deref(), receipt.replayed),
            (Some("in_1"), true)
        );
        let in_flight = Response {
            status: 409,
            headers: vec![],
            body: br#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use"}}"#
                .to_vec(),
        };
        assert!(matches!(
            Billing.receipt(c, &in_flight, 0),
            Err(DeliveryError::Retry { .. })
        ));
        let mismatch = Response {
            status: 400,
            headers: vec![],
            body: br#"{"error":{"type":"idempotency_error"}}"#.to_vec(),
        };
        assert!(matches!(
            Billing.receipt(c, &mismatch, 0),
            Err(DeliveryError::Permanent {
                status: Some(400),
                ..
            })
        ));
    }

    #[test]
    fn what_the_provider_would_refuse_is_permanent() {
        for (currency, amount, customer) in [
            ("XTS", 1999, "cus_42"),
            ("EUR", 10, "cus_42"),
            ("EUR", 100_000_000, "cus_42"),
            ("EUR", 1999, "42"),
        ] {
            match Billing.decide(&invoice(currency, amount, customer)) {
                Err(AdapterError::Permanent { .. }) => {}
                other => panic!("{currency} {amount} {customer}: {other:?}"),
            }
        }
        assert!(Billing.decide(&lead()).unwrap().is_empty());
    }
}
