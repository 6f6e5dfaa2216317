//! Who may use the console: the token, as `Authorization: Bearer <token>` (scripts) or as a session
//! cookie set by the login form (the page). State-changing requests carried by the cookie must also
//! prove they come from the console's own pages.
//!
//! Invariants:
//! - Every page and API call needs the token, except `/healthz` and the login form itself; without
//!   it a page answers 401 with the login form and the API 401 JSON.
//! - The cookie holds a value derived from the token (HMAC-SHA256 of "session"), never the token;
//!   it is `HttpOnly`, `SameSite=Strict`, `Path=/`.
//! - A POST authenticated by the cookie is refused (403) unless its `Origin` (when sent) is the
//!   console's own host, the browser does not label it `Sec-Fetch-Site: cross-site`, and it carries
//!   the CSRF token (HMAC-SHA256 of "csrf") in the `X-CSRF-Token` header or a `csrf` form field.
//!   A POST with the bearer token carries no ambient credential and needs none of that.
//! - Comparisons of secrets are constant-time.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{App, ConsoleError};

/// The cookie's name.
pub const COOKIE: &str = "onceflow_console";
/// Largest form body the CSRF check reads.
const FORM_LIMIT: usize = 64 * 1024;

/// How a request proved it may use the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The session cookie of the login form.
    Cookie,
}

/// `hex(HMAC-SHA256(token, purpose))`.
pub fn derive(token: &str, purpose: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!());
    mac.update(purpose.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time equality of two strings.
pub fn same(a: &str, b: &str) -> bool {
    // Compare the MACs of both under a fixed key: equal inputs, equal MACs; the comparison of the
    // MACs is Mac::verify_slice's constant-time one.
    let tag = |s: &str| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(b"onceflow-console-compare")
            .unwrap_or_else(|_| unreachable!());
        m.update(s.as_bytes());
        m
    };
    tag(a).verify_slice(&tag(b).finalize().into_bytes()).is_ok()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

/// Who the request is, if anyone.
pub fn caller(app: &App, headers: &HeaderMap) -> Option<Caller> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|t| same(t, &app.token)) {
        return Some(Caller::Bearer);
    }
    cookie_value(headers)
        .filter(|c| same(c, &app.session))
        .map(|_| Caller::Cookie)
}

fn cross_site(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_foreign = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| {
            let o = o.split_once("://").map_or(o, |(_, rest)| rest);
            o != host
        });
    let fetch_foreign = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site");
    origin_foreign || fetch_foreign
}

/// The middleware of every protected route (see the module invariants).
pub async fn require(
    State(app): State<std::sync::Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let api = request.uri().path().starts_with("/api/") || request.uri().path() == "/openapi.json";
    let Some(who) = caller(&app, request.headers()) else {
        return ConsoleError::Unauthorized { api }.into_response();
    };
    if who == Caller::Bearer || request.method() == Method::GET || request.method() == Method::HEAD
    {
        let mut request = request;
        request.extensions_mut().insert(who);
        return next.run(request).await;
    }
    if cross_site(request.headers()) {
        return ConsoleError::Forbidden {
            api,
            reason: "a cross-site request cannot change anything here",
        }
        .into_response();
    }
    let in_header = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| same(t, &app.csrf));
    if in_header {
        let mut request = request;
        request.extensions_mut().insert(who);
        return next.run(request).await;
    }
    // A form: read it (bounded), check its csrf field, hand the same bytes on.
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, FORM_LIMIT).await else {
        return ConsoleError::Forbidden {
            api,
            reason: "the form is too large to check",
        }
        .into_response();
    };
    let ok = form_urlencoded::parse(&bytes).any(|(k, v)| k == "csrf" && same(&v, &app.csrf));
    if !ok {
        return ConsoleError::Forbidden {
            api,
            reason: "the request does not carry the console's CSRF token",
        }
        .into_response();
    }
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(who);
    next.run(request).await
}

/// The `Set-Cookie` value of a session (or, `None`, of its removal).
pub fn set_cookie(session: Option<&str>) -> String {
    match session {
        Some(v) => format!("{COOKIE}={v}; HttpOnly; SameSite=Strict; Path=/"),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    }
}

/// The status of a refusal.
pub fn status_of(e: &ConsoleError) -> StatusCode {
    match e {
        ConsoleError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        ConsoleError::Forbidden { .. } => StatusCode::FORBIDDEN,
        ConsoleError::NotFound { .. } => StatusCode::NOT_FOUND,
        ConsoleError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        ConsoleError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        ConsoleError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}
