//! The router: every provider under its prefix, and the inspection and control endpoints (no
//! credentials: a loopback tool): `GET /healthz`, `GET /_effects[?provider=]`,
//! `GET /_calls[?provider=]`, `GET /_counts` (effects and calls by outcome per provider, without
//! copying the logs: the one to watch a long run with), `GET /_faults`, `PUT /_faults/{provider}` (a [`Faults`] JSON
//! object, replacing), `POST /_reset`, `POST /_clock/advance` (`{"ms": N}`). Unknown paths and
//! wrong methods answer JSON too.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as Extract};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

use crate::Provider;
use crate::faults::Faults;
use crate::providers::{analytics, billing, crm, email, webhook};
use crate::state::State;

fn problem(status: StatusCode, error: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "detail": detail})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Which {
    provider: Option<String>,
}

fn which(q: &Which) -> Result<Option<Provider>, Response> {
    match &q.provider {
        None => Ok(None),
        Some(name) => Provider::parse(name)
            .map(Some)
            .ok_or_else(|| problem(StatusCode::BAD_REQUEST, "unknown_provider", name)),
    }
}

/// The sandbox's router over `state`.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/crm/crm/v3/objects/contacts/batch/upsert",
            post(crm::upsert),
        )
        .route("/email/emails", post(email::resend))
        .route("/email/v3/mail/send", post(email::sendgrid))
        .route("/billing/v1/invoices", post(billing::create))
        .route("/analytics/v1/track", post(analytics::track))
        .route("/webhook", post(webhook::receive))
        .route("/webhook/{*path}", post(webhook::receive))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/_effects", get(effects))
        .route("/_calls", get(calls))
        .route("/_counts", get(counts))
        .route("/_faults", get(faults))
        .route("/_faults/{provider}", put(set_faults))
        .route("/_reset", post(reset))
        .route("/_clock/advance", post(advance))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .with_state(state)
}

async fn effects(Extract(state): Extract<Arc<State>>, Query(q): Query<Which>) -> Response {
    match which(&q) {
        Ok(p) => axum::Json(json!({"effects": state.effects(p)})).into_response(),
        Err(r) => r,
    }
}

async fn calls(Extract(state): Extract<Arc<State>>, Query(q): Query<Which>) -> Response {
    match which(&q) {
        Ok(p) => axum::Json(json!({"calls": state.calls(p)})).into_response(),
        Err(r) => r,
    }
}

async fn counts(Extract(state): Extract<Arc<State>>) -> Response {
    let all: BTreeMap<Provider, serde_json::Value> = state
        .counts()
        .into_iter()
        .map(|(p, (effects, calls))| (p, json!({"effects": effects, "calls": calls})))
        .collect();
    axum::Json(all).into_response()
}

async fn faults(Extract(state): Extract<Arc<State>>) -> Response {
    let all: BTreeMap<Provider, Faults> = Provider::ALL
        .into_iter()
        .map(|p| (p, state.all_faults().remove(&p).unwrap_or_default()))
        .collect();
    axum::Json(all).into_response()
}

async fn set_faults(
    Extract(state): Extract<Arc<State>>,
    Path(provider): Path<String>,
    body: Bytes,
) -> Response {
    let Some(p) = Provider::parse(&provider) else {
        return problem(StatusCode::NOT_FOUND, "unknown_provider", &provider);
    };
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            state.set_faults(p, f.clone());
            axum::Json(f).into_response()
        }
        Err(e) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_faults",
            &e.to_string(),
        ),
    }
}

async fn reset(Extract(state): Extract<Arc<State>>) -> Response {
    state.reset();
    axum::Json(json!({"reset": true})).into_response()
}

#[derive(Deserialize)]
struct Advance {
    ms: u64,
}

async fn advance(Extract(state): Extract<Arc<State>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Advance>(&body) {
        Ok(a) => {
            state.advance_clock(std::time::Duration::from_millis(a.ms));
            axum::Json(json!({"clock_ms": state.clock_ms()})).into_response()
        }
        Err(e) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            &e.to_string(),
        ),
    }
}
