//! `onceflow console`: the operator console, a token-protected web page (server-rendered HTML, a
//! little JavaScript, nothing from a CDN) and a JSON API under `/api/`, over the same library code
//! as the CLI ([`crate::ops`]): health ([`crate::ops::health`]), dead letters
//! ([`crate::ops::dlq`]), replays ([`crate::ops::replay`]) and the audit trail
//! ([`crate::ops::audit`]).
//!
//! Invariants:
//! - Nothing but `/healthz` and the login form is served without the token ([`auth`]); a
//!   state-changing request is a POST with CSRF protection.
//! - A replay always goes through a dry run (counts by reason) and needs a reason; it then runs
//!   as a job of this process whose progress survives a page reload (not a console restart: the
//!   replay itself is resumable from the replay group's offsets).
//! - Pages show dead letters masked as the CLI does; no page ever shows the token, a credential or
//!   a secret.

mod api;
pub mod auth;
mod jobs;
mod openapi;
mod pages;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::codec::AvroCodec;
use crate::config::{ConfigError, Settings};

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The token is not configured or unreadable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The codec could not be built.
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
}

/// A refusal or failure, answered as JSON under `/api/` and as a page elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No or a wrong token.
    #[error("the console needs its token")]
    Unauthorized {
        /// Under `/api/`.
        api: bool,
    },
    /// A request the console refuses (cross-site, no CSRF token).
    #[error("{reason}")]
    Forbidden {
        /// Under `/api/`.
        api: bool,
        /// Why.
        reason: &'static str,
    },
    /// Nothing there.
    #[error("{what}")]
    NotFound {
        /// Under `/api/`.
        api: bool,
        /// What is missing.
        what: String,
    },
    /// A request that cannot be done as asked.
    #[error("{detail}")]
    BadRequest {
        /// Under `/api/`.
        api: bool,
        /// What is wrong.
        detail: String,
    },
    /// A method this path does not take.
    #[error("method not allowed here")]
    MethodNotAllowed {
        /// Under `/api/`.
        api: bool,
    },
    /// Kafka or the registry failed.
    #[error("{detail}")]
    Unavailable {
        /// Under `/api/`.
        api: bool,
        /// What failed (masked).
        detail: String,
    },
}

impl ConsoleError {
    fn api(&self) -> bool {
        match self {
            ConsoleError::Unauthorized { api }
            | ConsoleError::MethodNotAllowed { api }
            | ConsoleError::Forbidden { api, .. }
            | ConsoleError::NotFound { api, .. }
            | ConsoleError::BadRequest { api, .. }
            | ConsoleError::Unavailable { api, .. } => *api,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ConsoleError::Unauthorized { .. } => "unauthorized",
            ConsoleError::Forbidden { .. } => "forbidden",
            ConsoleError::NotFound { .. } => "not_found",
            ConsoleError::BadRequest { .. } => "bad_request",
            ConsoleError::MethodNotAllowed { .. } => "method_not_allowed",
            ConsoleError::Unavailable { .. } => "unavailable",
        }
    }

    /// A Kafka or registry failure, masked.
    pub fn unavailable(api: bool, e: impl std::fmt::Display) -> ConsoleError {
        ConsoleError::Unavailable {
            api,
            detail: crate::telemetry::mask::mask_pii(&e.to_string()),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = auth::status_of(&self);
        if self.api() {
            let body = json!({"error": self.code(), "detail": self.to_string()});
            return (status, axum::Json(body)).into_response();
        }
        let page = match &self {
            ConsoleError::Unauthorized { .. } => pages::login(None),
            other => pages::problem(status, &other.to_string()),
        };
        let mut r = (status, page).into_response();
        if status == axum::http::StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
        }
        r
    }
}

/// What every handler shares.
pub struct App {
    /// The settings (adapters, topics, broker).
    pub settings: Settings,
    /// The token.
    token: String,
    /// The session cookie's value (derived from the token).
    session: String,
    /// The CSRF token (derived from the token).
    csrf: String,
    /// Replay jobs.
    jobs: jobs::Jobs,
    /// Decodes dead letters for previews.
    codec: AvroCodec,
}

/// Builds the console for `settings`; the token is read now (a missing one stops start-up naming
/// its key).
pub fn build(settings: &Settings) -> Result<Router, StartError> {
    let token = match &settings.console.token {
        Some(secret) => secret.resolve("console.token_env")?,
        None => {
            return Err(ConfigError::Invalid {
                key: "console.token_env".into(),
                reason: "the console needs a token (token_env or token_file)".into(),
            }
            .into());
        }
    };
    Ok(router(Arc::new(App {
        settings: settings.clone(),
        session: auth::derive(&token, "session"),
        csrf: auth::derive(&token, "csrf"),
        token,
        jobs: jobs::Jobs::default(),
        codec: AvroCodec::new(&settings.registry)?,
    })))
}

fn router(app: Arc<App>) -> Router {
    let protected = Router::new()
        .route("/", get(pages::overview))
        .route("/dlq/{adapter}/{stage}", get(pages::dlq_list))
        .route(
            "/dlq/{adapter}/{stage}/{partition}/{offset}",
            get(pages::record),
        )
        .route("/replays/preview", post(pages::replay_preview))
        .route("/replays", post(pages::replay_start))
        .route("/replays/{id}", get(pages::replay_progress))
        .route("/audit", get(pages::audit))
        .route("/logout", post(pages::logout))
        .route("/api/overview", get(api::overview))
        .route("/api/dlq/{adapter}/{stage}", get(api::dlq_list))
        .route(
            "/api/dlq/{adapter}/{stage}/{partition}/{offset}",
            get(api::record),
        )
        .route("/api/replays", post(api::replay))
        .route("/api/replays/{id}", get(api::replay_status))
        .route("/api/audit", get(api::audit))
        .route("/openapi.json", get(openapi::document))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            auth::require,
        ));
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/login", get(pages::login_page).post(pages::login_submit))
        .merge(protected)
        .fallback(|uri: axum::http::Uri| async move {
            ConsoleError::NotFound {
                api: uri.path().starts_with("/api/"),
                what: "no such page".into(),
            }
        })
        .method_not_allowed_fallback(|uri: axum::http::Uri| async move {
            ConsoleError::MethodNotAllowed {
                api: uri.path().starts_with("/api/"),
            }
        })
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A route's path segments, or the console's own 400 for what the framework refuses (a segment
/// that is not UTF-8, `%ff`): never axum's plain-text rejection.
pub(crate) fn segments<T>(
    api: bool,
    path: Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>,
) -> Result<T, ConsoleError> {
    path.map(|axum::extract::Path(t)| t)
        .map_err(|e| ConsoleError::BadRequest {
            api,
            detail: e.body_text(),
        })
}
