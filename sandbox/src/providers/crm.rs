//! CRM, HubSpot-style: `POST /crm/crm/v3/objects/contacts/batch/upsert` with
//! `{"inputs": [{"idProperty": "email", "id": "<email>", "properties": {...}}]}`. Contacts are
//! matched by e-mail (case-insensitively): the same upsert twice is one contact, and a repeat that
//! changes nothing is a call but no effect.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use super::{is_email, json_body};
use crate::Provider;
use crate::faults::{Auth, CallCx, error};
use crate::state::State;

fn invalid(message: &str) -> Response {
    error(
        Provider::Crm,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        message,
    )
}

/// The upsert handler.
pub async fn upsert(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cx = match CallCx::begin(&state, Provider::Crm, &headers, Auth::Bearer, None).await {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let inputs = match json_body(Provider::Crm, &body).map(|mut b| b.remove("inputs")) {
        Ok(Some(Json::Array(inputs))) if (1..=100).contains(&inputs.len()) => inputs,
        Ok(_) => {
            return cx
                .finish(
                    invalid("inputs must be an array of 1 to 100 contacts"),
                    "rejected",
                    false,
                )
                .await;
        }
        Err(r) => return cx.finish(r, "rejected", false).await,
    };
    let mut parsed = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let email = input["id"].as_str().unwrap_or_default();
        if input["idProperty"] != "email" || !is_email(email) {
            return cx
                .finish(
                    invalid("each input needs idProperty email and a valid e-mail id"),
                    "rejected",
                    false,
                )
                .await;
        }
        let mut props = BTreeMap::new();
        if let Some(map) = input["properties"].as_object() {
            for (k, v) in map {
                let Some(v) = v.as_str() else {
                    return cx
                        .finish(
                            invalid(&format!("property {k} must be a string")),
                            "rejected",
                            false,
                        )
                        .await;
                };
                props.insert(k.clone(), v.to_string());
            }
        }
        props.insert("email".into(), email.to_lowercase());
        parsed.push((email.to_lowercase(), props));
    }
    cx.work().await;
    let mut results = Vec::new();
    let mut performed = false;
    for (email, props) in parsed {
        let (id, merged, created, changed) = state.upsert_contact(&email, &props);
        if changed {
            performed = true;
            let kind = if created {
                "contact_created"
            } else {
                "contact_updated"
            };
            cx.effect(
                &email,
                Some(id.to_string()),
                kind,
                json!({"email": email, "properties": merged}),
            );
        }
        results.push(json!({"id": id.to_string(), "properties": merged, "new": created}));
    }
    let answer = (
        StatusCode::OK,
        axum::Json(json!({"status": "COMPLETE", "results": results})),
    )
        .into_response();
    cx.finish(answer, "ok", performed).await
}
