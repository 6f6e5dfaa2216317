//! Analytics, Segment-style: `POST /analytics/v1/track` with HTTP Basic credentials (the write key
//! as user name), `{"messageId", "userId" | "anonymousId", "event", "properties", "timestamp"}`.
//! The provider deduplicates by `messageId` (24 hours): a repeat answers 200 and changes nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use super::json_body;
use crate::Provider;
use crate::faults::{Auth, CallCx, error};
use crate::state::State;

/// A track call.
pub async fn track(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = serde_json::from_slice::<Json>(&body).ok();
    let message_id = b
        .as_ref()
        .and_then(|b| b.get("messageId"))
        .and_then(Json::as_str)
        .map(str::to_string);
    let cx = match CallCx::begin(
        &state,
        Provider::Analytics,
        &headers,
        Auth::Basic,
        message_id.clone(),
    )
    .await
    {
        Ok(cx) => cx,
        Err(r) => return r,
    };
    let b = match json_body(Provider::Analytics, &body) {
        Ok(b) => b,
        Err(r) => return cx.finish(r, "rejected", false).await,
    };
    let bad = |m: &str| error(Provider::Analytics, StatusCode::BAD_REQUEST, "invalid", m);
    if b.get("event")
        .and_then(Json::as_str)
        .is_none_or(str::is_empty)
    {
        return cx
            .finish(bad("`event` is required"), "rejected", false)
            .await;
    }
    let user = b
        .get("userId")
        .or_else(|| b.get("anonymousId"))
        .and_then(Json::as_str);
    if user.is_none_or(str::is_empty) {
        return cx
            .finish(
                bad("one of `userId` or `anonymousId` is required"),
                "rejected",
                false,
            )
            .await;
    }
    cx.work().await;
    let id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let ok = (StatusCode::OK, axum::Json(json!({"success": true}))).into_response();
    if !state.first_time(Provider::Analytics, &id) {
        return cx.finish(ok, "deduplicated", false).await;
    }
    cx.effect(
        &id,
        Some(id.clone()),
        "track",
        json!({"event": b.get("event"), "userId": user, "properties": b.get("properties")}),
    );
    cx.finish(ok, "ok", true).await
}
