//! A webhook receiver that verifies Standard Webhooks signatures (as Svix signs):
//! `webhook-signature` is a space-separated list of `v1,<base64 HMAC-SHA256>` over
//! `"<webhook-id>.<webhook-timestamp>.<raw body>"`, keyed by the base64 part of the `whsec_…`
//! secret; the timestamp must be within 5 minutes of now. A receiver deduplicates by
//! `webhook-id`, so a repeat answers 200 and changes nothing. Written from the specification,
//! independently of onceflow's signer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value as Json, json};
use sha2::Sha256;

use super::header;
use crate::Provider;
use crate::faults::{Auth, CallCx, error};
use crate::state::{State, now_ms};

const TOLERANCE_S: i64 = 300;

/// Why a signature was refused.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8], now_s: i64) -> Result<String, String> {
    let id = header(headers, "webhook-id").ok_or("missing webhook-id")?;
    let ts = header(headers, "webhook-timestamp").ok_or("missing webhook-timestamp")?;
    let sigs = header(headers, "webhook-signature").ok_or("missing webhook-signature")?;
    let t: i64 = ts
        .parse()
        .map_err(|_| "webhook-timestamp is not a number")?;
    if (now_s - t).abs() > TOLERANCE_S {
        return Err(format!(
            "webhook-timestamp is {} s away from now",
            now_s - t
        ));
    }
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b| STANDARD.decode(b).ok())
        .ok_or("the receiver's secret is not whsec_<base64>")?;
    for sig in sigs.split(' ') {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(b64) else {
            continue;
        };
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&key) else {
            continue;
        };
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&tag).is_ok() {
            return Ok(id);
        }
    }
    Err("no v1 signature matches".into())
}

/// Receives a webhook.
pub async fn receive(
    Extract(state): Extract<Arc<State>>,
    path: Option<Path<String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cx = match CallCx::begin(
        &state,
        Provider::Webhook,
        &headers,
        Auth::None,
        header(&headers, "webhook-id"),
    )
    .await
    {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let id = match verify(&state.webhook_secret, &headers, &body, now_ms() / 1_000) {
        Ok(id) => id,
        Err(why) => {
            let r = error(
                Provider::Webhook,
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                &why,
            );
            return cx.finish(r, "unauthorized", false).await;
        }
    };
    cx.work().await;
    let ok = (StatusCode::OK, axum::Json(json!({"received": true}))).into_response();
    if !state.first_time(Provider::Webhook, &id) {
        return cx.finish(ok, "deduplicated", false).await;
    }
    let detail = json!({
        "path": path.map(|Path(p)| p).unwrap_or_default(),
        "headers": {
            "x-onceflow-hop": header(&headers, "x-onceflow-hop"),
            "x-correlation-id": header(&headers, "x-correlation-id"),
            "traceparent": header(&headers, "traceparent"),
        },
        "body": serde_json::from_slice::<Json>(&body).unwrap_or(Json::Null),
    });
    cx.effect(&id, None, "webhook_received", detail);
    cx.finish(ok, "ok", true).await
}
