//! The operations endpoint of every long-running role, on its own listener (`*.metrics_listen`):
//! `/metrics` (Prometheus), `/healthz` (the process is alive) and `/readyz` (the role is doing its
//! work: a stage has a live session with the broker). Kubernetes probes and Prometheus scrapes
//! both land here, never on a role's public port.
//!
//! Invariant: `/readyz` answers 503 until the role says it is ready, and again whenever it says it
//! is not (a stage rejoining after a fatal error).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

/// Whether a role is ready; cheap to clone, shared with the role.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A readiness that starts as `ready`.
    pub fn new(ready: bool) -> Readiness {
        Readiness(Arc::new(AtomicBool::new(ready)))
    }

    /// Says whether the role is ready.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the role is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A metrics recorder is installed already.
    #[error("installing the Prometheus recorder: {0}")]
    Recorder(String),
    /// The address cannot be bound.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// The endpoint's routes.
pub fn router(metrics: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.get();
                async move {
                    if ready {
                        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
                    } else {
                        let body = json!({"error": "not_ready", "detail": "not processing yet (joining, restoring or rejoining)"});
                        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
                    }
                }
            }),
        )
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(json!({"error": "method_not_allowed", "detail": "only GET is served"})),
            )
        })
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "not_found", "detail": "/metrics, /healthz, /readyz"})),
            )
        })
}

/// Installs the Prometheus recorder and serves the endpoint on `listen` in the background; the
/// role says through the returned [`Readiness`] (not ready at first) when it is ready. Start it
/// before building the role, so that what the role records while it starts is exported.
pub async fn start(listen: SocketAddr) -> Result<Readiness, EndpointError> {
    let readiness = Readiness::new(false);
    let handle = PrometheusBuilder::new()
        .set_buckets(super::metrics::BUCKETS)
        .map_err(|e| EndpointError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| EndpointError::Recorder(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| EndpointError::Bind(listen, e))?;
    // Without the exporter's own listener nobody drains histograms' old samples: do it here.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = router(handle, readiness.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "operations endpoint stopped");
        }
    });
    Ok(readiness)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn readyz_follows_the_role_and_every_error_is_json() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let readiness = Readiness::new(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, router(handle, readiness.clone())).into_future());
        let http = reqwest::Client::new();
        let get = |path: &str| {
            let (http, url) = (http.clone(), format!("{base}{path}"));
            async move {
                let r = http.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        assert_eq!(get("/healthz").await.0, 200);
        let (status, body) = get("/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains(r#""error":"not_ready""#), "{body}");
        readiness.set(true);
        assert_eq!(get("/readyz").await.0, 200);
        readiness.set(false);
        assert_eq!(get("/readyz").await.0, 503);
        assert_eq!(get("/metrics").await.0, 200);
        let (status, body) = get("/nope").await;
        assert_eq!(status, 404);
        assert!(body.contains(r#""error":"not_found""#), "{body}");
        let r = http.post(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert!(r.text().await.unwrap().contains("method_not_allowed"));
    }
}
