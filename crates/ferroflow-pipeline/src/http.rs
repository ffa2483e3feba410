//! The operations endpoint: `/metrics` (Prometheus), `/healthz` (the process is alive),
//! `/readyz` (the job restored its state and is consuming), `/status` (a JSON summary for
//! humans and tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::PipelineMetrics;

/// What the endpoint serves.
#[derive(Debug)]
pub struct Endpoint {
    /// The metrics.
    pub metrics: PipelineMetrics,
    /// Set once the job has restored its state and started consuming.
    pub ready: AtomicBool,
    /// Builds the `/status` document.
    pub status: StatusFn,
}

/// Builds the `/status` JSON document.
pub struct StatusFn(pub Box<dyn Fn() -> serde_json::Value + Send + Sync>);

impl std::fmt::Debug for StatusFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusFn")
    }
}

/// Binds `listen` and serves in the background; returns the bound address (port 0 picks one).
pub async fn serve(listen: &str, endpoint: Arc<Endpoint>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(endpoint);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
    });
    Ok(addr)
}

async fn metrics(State(e): State<Arc<Endpoint>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], e.metrics.render())
}

async fn readyz(State(e): State<Arc<Endpoint>>) -> impl IntoResponse {
    if e.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn status(State(e): State<Arc<Endpoint>>) -> impl IntoResponse {
    axum::Json((e.status.0)())
}
