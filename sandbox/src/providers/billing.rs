//! Billing, Stripe-style: `POST /billing/v1/invoices`, form-encoded, `Authorization: Bearer`, with
//! Stripe's idempotency semantics for `Idempotency-Key` (remembered 24 hours):
//! - the same key and the same parameters: the stored answer again, byte for byte, with
//!   `Idempotent-Replayed: true`, and no second invoice;
//! - the same key with other parameters: 400 `idempotency_error` naming the key;
//! - the same key while its first request still runs: 409 `idempotency_key_in_use`;
//! - a request that fails validation saves no result (the key stays free).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json, json};

use super::header;
use crate::Provider;
use crate::faults::{Auth, CallCx};
use crate::state::{KeyCheck, KeyGuard, State, Stored};

const CURRENCIES: [&str; 12] = [
    "aud", "cad", "chf", "czk", "dkk", "eur", "gbp", "jpy", "nok", "pln", "sek", "usd",
];

fn stripe_error(status: StatusCode, error: Json) -> Response {
    (status, axum::Json(json!({"error": error}))).into_response()
}

fn invalid(code: &str, param: &str, message: &str) -> Response {
    stripe_error(
        StatusCode::BAD_REQUEST,
        json!({"type": "invalid_request_error", "code": code, "param": param, "message": message}),
    )
}

/// Checks an invoice's parameters as Stripe would.
fn validate(p: &BTreeMap<String, String>) -> Result<(), Response> {
    let need = |k: &str| {
        p.get(k).filter(|v| !v.is_empty()).ok_or_else(|| {
            invalid(
                "parameter_missing",
                k,
                &format!("Missing required param: {k}."),
            )
        })
    };
    let customer = need("customer")?;
    if !customer.starts_with("cus_") {
        return Err(invalid(
            "resource_missing",
            "customer",
            &format!("No such customer: '{customer}'"),
        ));
    }
    let currency = need("currency")?;
    if !CURRENCIES.contains(&currency.as_str()) {
        return Err(invalid(
            "parameter_invalid",
            "currency",
            &format!(
                "Invalid currency: {currency}. Stripe currently supports these currencies: {}",
                CURRENCIES.join(", ")
            ),
        ));
    }
    let amount = need("amount")?;
    if !amount
        .parse::<i64>()
        .is_ok_and(|a| (50..=99_999_999).contains(&a))
    {
        return Err(invalid(
            "parameter_invalid",
            "amount",
            "Amount must be an integer between 50 and 99999999.",
        ));
    }
    if let Some(due) = p.get("due_date")
        && due.parse::<i64>().is_err()
    {
        return Err(invalid(
            "parameter_invalid",
            "due_date",
            "Invalid integer: due_date.",
        ));
    }
    Ok(())
}

/// Creates an invoice.
pub async fn create(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = header(&headers, "idempotency-key");
    let cx = match CallCx::begin(
        &state,
        Provider::Billing,
        &headers,
        Auth::Bearer,
        key.clone(),
    )
    .await
    {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let form = header(&headers, "content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if !form {
        let r = invalid(
            "parameter_invalid",
            "",
            "Invalid request: send application/x-www-form-urlencoded parameters.",
        );
        return cx.finish(r, "rejected", false).await;
    }
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if let Err(r) = validate(&params) {
        return cx.finish(r, "rejected", false).await;
    }
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 255) {
        return cx
            .finish(
                invalid(
                    "parameter_invalid",
                    "Idempotency-Key",
                    "Idempotency keys are at most 255 characters.",
                ),
                "rejected",
                false,
            )
            .await;
    }
    let mut guard = None;
    if let Some(k) = &key {
        let fingerprint = serde_json::to_string(&params).unwrap_or_default();
        match state.key_begin(Provider::Billing, k, &fingerprint) {
            KeyCheck::Fresh => guard = Some(KeyGuard::new(&state, Provider::Billing, k)),
            KeyCheck::InFlight => {
                let r = stripe_error(
                    StatusCode::CONFLICT,
                    json!({"type": "idempotency_error", "code": "idempotency_key_in_use",
                    "message": format!("There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): {k}. Please try again later.")}),
                );
                return cx.finish(r, "rejected", false).await;
            }
            KeyCheck::Mismatch => {
                let r = stripe_error(
                    StatusCode::BAD_REQUEST,
                    json!({"type": "idempotency_error",
                    "message": format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request.")}),
                );
                return cx.finish(r, "rejected", false).await;
            }
            KeyCheck::Replay(stored) => {
                let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
                let r = (
                    status,
                    [
                        ("content-type", "application/json"),
                        ("idempotent-replayed", "true"),
                    ],
                    stored.body,
                )
                    .into_response();
                return cx.finish(r, "replayed", false).await;
            }
        }
    }
    cx.work().await;
    let id = format!("in_{}", state.id(24));
    let metadata: Map<String, Json> = params
        .iter()
        .filter_map(|(k, v)| {
            let inner = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((inner.to_string(), Json::String(v.clone())))
        })
        .collect();
    let amount: i64 = params
        .get("amount")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let invoice = json!({
        "id": id, "object": "invoice", "customer": params.get("customer"), "currency": params.get("currency"),
        "amount_due": amount, "description": params.get("description"),
        "due_date": params.get("due_date").and_then(|d| d.parse::<i64>().ok()),
        "collection_method": params.get("collection_method"),
        "status": "open", "metadata": metadata, "created": state.clock_ms() / 1_000,
    });
    cx.effect(
        key.as_deref().unwrap_or(&id),
        Some(id.clone()),
        "invoice_created",
        json!({"customer": params.get("customer"), "currency": params.get("currency"), "amount": amount}),
    );
    let answer = invoice.to_string().into_bytes();
    if let Some(g) = guard {
        g.done(Stored {
            status: 200,
            body: answer.clone(),
        });
    }
    let r = (
        StatusCode::OK,
        [("content-type", "application/json")],
        answer,
    )
        .into_response();
    cx.finish(r, "ok", true).await
}
