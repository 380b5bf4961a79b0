//! Probes, metrics and public keys.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use tracing::warn;

use crate::state::AppState;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: every database answers and the audit chain verifies up to its head.
pub async fn readyz(State(app): State<AppState>) -> impl IntoResponse {
    if app.audit.broken().is_some() {
        // The reason is logged where it was found; a probe answer names no entry.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "audit_chain_broken"})),
        );
    }
    for db in &app.dbs {
        if let Err(e) = sqlx::query("SELECT 1").execute(db.pool()).await {
            warn!(error = %e, "readiness check failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable"})),
            );
        }
    }
    let datasets = app.datasets.all().len();
    if datasets == 0 {
        // Ready (authentication and the audit log work), but an operator should know.
        return (
            StatusCode::OK,
            Json(json!({"status": "ready", "datasets": 0,
                "warning": "no dataset contract is loaded: add one to datasets_dir or PUT /v1/datasets/{name}"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"status": "ready", "datasets": datasets})),
    )
}

/// `GET /metrics`: Prometheus (OpenMetrics text).
pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}

/// `GET /.well-known/jwks.json`: the public keys of issued tokens.
pub async fn jwks(State(app): State<AppState>) -> Json<Value> {
    Json(app.tokens.jwks())
}
