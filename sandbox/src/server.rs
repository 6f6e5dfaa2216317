//! The accept loop. The router is served with hyper directly so that a response marked
//! [`DropConnection`] is never sent: the service fails instead, and hyper closes the connection
//! without an answer, as a provider that crashed or timed out after acting would.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

/// Marks a response that must not be sent: its connection is dropped instead.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

/// The error that makes hyper drop a connection.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
pub struct Dropped;

/// Serves `router` on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    let req = req.map(Body::new);
                    let response = match ServiceExt::<Request<Body>>::oneshot(router, req).await {
                        Ok(r) => r,
                        Err(never) => {
                            let never: Infallible = never;
                            match never {}
                        }
                    };
                    if response.extensions().get::<DropConnection>().is_some() {
                        return Err(Dropped);
                    }
                    Ok(response)
                }
            });
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
        });
    }
}
