//! One module per provider API. Each handler runs the fault checks ([`crate::faults::CallCx`]),
//! validates the request as the real provider would, performs the effect at most once per
//! idempotency key or message id where the provider deduplicates, and answers in the provider's
//! own shape.

pub mod analytics;
pub mod billing;
pub mod crm;
pub mod email;
pub mod webhook;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value as Json;

use crate::Provider;
use crate::faults::error;

/// The value of header `name`.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The body as a JSON object, or the provider's 400.
pub fn json_body(
    provider: Provider,
    body: &[u8],
) -> Result<serde_json::Map<String, Json>, Response> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(_) => Err(error(
            provider,
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(error(
            provider,
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("malformed JSON: {e}"),
        )),
    }
}

/// A plausible e-mail address (something@something.tld).
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
}
