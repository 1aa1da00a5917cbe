//! Service-wide endpoints: health, readiness, metrics, targets, sweep.

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::domain::Scope;
use crate::environments::SweepReport;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::Json;
use serde_json::{json, Value};

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the control store answers.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.envs.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "error": e.to_string() })),
        ),
    }
}

/// Prometheus metrics, without a token like `/healthz`: nothing in them names an environment.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let body = crate::metrics::render(&state.envs).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}

pub async fn targets(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let mut items = vec![];
    for t in state.envs.targets() {
        let health = t.backend.health().await;
        let live = state
            .envs
            .store()
            .count_live(&t.name)
            .await
            .map_err(crate::environments::ServiceError::from)?;
        items.push(json!({
            "name": t.name,
            "kind": t.kind,
            "isolations": t.backend.isolations(),
            "health": health,
            "live_environments": live,
            "max_environments": t.max_environments,
        }));
    }
    Ok(Json(json!({ "items": items })))
}

pub async fn sweep(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SweepReport>, ApiError> {
    caller.require(Scope::Delete)?;
    Ok(Json(state.envs.sweep().await?))
}
