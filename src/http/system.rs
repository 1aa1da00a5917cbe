//! Service-wide endpoints: health, readiness, metrics, targets, sweep.

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::domain::Scope;
use crate::service::SweepReport;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::Json;
use serde_json::{json, Value};

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the control store answers.
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.envs.ready().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "error": e.to_string() })),
        ),
    }
}

/// Prometheus metrics, without a token like `/healthz`: nothing in them names an environment.
pub(super) async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let snapshot = state.envs.snapshot().await;
    let body = crate::metrics::render(state.envs.metrics(), &snapshot);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}

pub(super) async fn targets(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let items = state.envs.target_views().await?;
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn sweep(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SweepReport>, ApiError> {
    caller.require(Scope::Delete)?;
    Ok(Json(state.envs.sweep(&caller.actor).await?))
}
