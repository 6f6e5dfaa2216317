//! E-mail, two API shapes of one provider:
//! - Resend-style `POST /email/emails`: honours `Idempotency-Key` for 24 hours (the same key and
//!   body answer the stored response again; the same key with another body is a 409
//!   `invalid_idempotent_request`; the same key while the first request still runs is a 409
//!   `concurrent_idempotent_requests`); schedules up to 30 days ahead (`scheduled_at`).
//! - SendGrid-style `POST /email/v3/mail/send`: no idempotency key at all; every accepted call is
//!   one more e-mail (202, empty body, `X-Message-Id`); schedules up to 72 hours ahead (`send_at`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use super::{header, is_email, json_body};
use crate::Provider;
use crate::faults::{Auth, CallCx, error};
use crate::state::{KeyCheck, KeyGuard, State, Stored, now_ms};

const RESEND_HORIZON_MS: i64 = 30 * 86_400_000;
const SENDGRID_HORIZON_S: i64 = 72 * 3_600;

fn resend_error(status: StatusCode, name: &str, message: &str) -> Response {
    error(Provider::Email, status, name, message)
}

/// Resend-style send.
pub async fn resend(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = header(&headers, "idempotency-key");
    let cx = match CallCx::begin(&state, Provider::Email, &headers, Auth::Bearer, key.clone()).await
    {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let invalid = |m: &str| resend_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", m);
    let b = match json_body(Provider::Email, &body) {
        Ok(b) => b,
        Err(r) => return cx.finish(r, "rejected", false).await,
    };
    let to: Vec<String> = match &b.get("to") {
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if to.is_empty() || !to.iter().all(|t| is_email(t)) {
        return cx
            .finish(
                invalid("`to` must be one or more e-mail addresses"),
                "rejected",
                false,
            )
            .await;
    }
    if b.get("from")
        .and_then(Json::as_str)
        .is_none_or(str::is_empty)
    {
        return cx
            .finish(invalid("`from` is required"), "rejected", false)
            .await;
    }
    if b.get("subject")
        .and_then(Json::as_str)
        .is_none_or(str::is_empty)
    {
        return cx
            .finish(invalid("`subject` is required"), "rejected", false)
            .await;
    }
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 256) {
        return cx
            .finish(
                invalid("Idempotency-Key must have 1 to 256 characters"),
                "rejected",
                false,
            )
            .await;
    }
    let scheduled = match b.get("scheduled_at").and_then(Json::as_str) {
        None => None,
        Some(t) => match t.parse::<jiff::Timestamp>() {
            Ok(at) if at.as_millisecond() - now_ms() > RESEND_HORIZON_MS => {
                return cx
                    .finish(
                        invalid("scheduled_at is more than 30 days ahead"),
                        "rejected",
                        false,
                    )
                    .await;
            }
            Ok(at) => Some(at.to_string()),
            Err(_) => {
                return cx
                    .finish(
                        invalid("scheduled_at is not an RFC 3339 time"),
                        "rejected",
                        false,
                    )
                    .await;
            }
        },
    };
    let mut guard = None;
    if let Some(k) = &key {
        let fingerprint = Json::Object(b.clone()).to_string();
        match state.key_begin(Provider::Email, k, &fingerprint) {
            KeyCheck::Fresh => guard = Some(KeyGuard::new(&state, Provider::Email, k)),
            KeyCheck::InFlight => {
                let r = resend_error(
                    StatusCode::CONFLICT,
                    "concurrent_idempotent_requests",
                    "Same idempotency key used while original request is still in progress.",
                );
                return cx.finish(r, "rejected", false).await;
            }
            KeyCheck::Mismatch => {
                let r = resend_error(
                    StatusCode::CONFLICT,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload. Change your idempotency key or payload.",
                );
                return cx.finish(r, "rejected", false).await;
            }
            KeyCheck::Replay(stored) => {
                let r = (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    stored.body,
                )
                    .into_response();
                return cx.finish(r, "replayed", false).await;
            }
        }
    }
    cx.work().await;
    let id = uuid::Uuid::new_v4().to_string();
    let kind = if scheduled.is_some() {
        "email_scheduled"
    } else {
        "email_sent"
    };
    cx.effect(
        key.as_deref().unwrap_or(&id),
        Some(id.clone()),
        kind,
        json!({"api": "resend", "to": to, "subject": b.get("subject"), "scheduled_at": scheduled}),
    );
    let answer = json!({"id": id}).to_string().into_bytes();
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

fn sendgrid_error(field: &str, message: &str) -> Response {
    let body = json!({"errors": [{"message": message, "field": field, "help": null}]});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// SendGrid-style send: no idempotency key.
pub async fn sendgrid(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cx = match CallCx::begin(&state, Provider::Email, &headers, Auth::Bearer, None).await {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let b = match json_body(Provider::Email, &body) {
        Ok(b) => b,
        Err(_) => {
            return cx
                .finish(sendgrid_error("", "Bad Request"), "rejected", false)
                .await;
        }
    };
    let to = b["personalizations"][0]["to"][0]["email"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !is_email(&to) {
        let r = sendgrid_error(
            "personalizations.0.to",
            "a recipient e-mail address is required",
        );
        return cx.finish(r, "rejected", false).await;
    }
    if !b["from"]["email"].as_str().is_some_and(is_email) {
        return cx
            .finish(
                sendgrid_error("from.email", "a sender is required"),
                "rejected",
                false,
            )
            .await;
    }
    if b.get("template_id").and_then(Json::as_str).is_none()
        && b.get("subject").and_then(Json::as_str).is_none()
    {
        return cx
            .finish(
                sendgrid_error("subject", "a subject or a template_id is required"),
                "rejected",
                false,
            )
            .await;
    }
    let send_at = b.get("send_at").and_then(Json::as_i64);
    if send_at.is_some_and(|at| at - now_ms() / 1_000 > SENDGRID_HORIZON_S) {
        return cx
            .finish(
                sendgrid_error("send_at", "send_at is more than 72 hours ahead"),
                "rejected",
                false,
            )
            .await;
    }
    cx.work().await;
    let id = state.id(22);
    let kind = if send_at.is_some() {
        "email_scheduled"
    } else {
        "email_sent"
    };
    cx.effect(&id, Some(id.clone()), kind,
        json!({"api": "sendgrid", "to": to, "template_id": b.get("template_id"), "send_at": send_at}));
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-message-id", v);
    }
    cx.finish(r, "ok", true).await
}
