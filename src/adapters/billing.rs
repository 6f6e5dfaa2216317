//! `billing`: an invoice request becomes a Stripe-style invoice creation, validated as the billing
//! API would validate it, so a request it would refuse goes to the DLQ at once instead of failing
//! at delivery.

use serde_json::{Value as Json, json};

use super::{Adapter, AdapterError, required};
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
