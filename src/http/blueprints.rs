//! `/v1/blueprints`: what each blueprint is made of, and its template and pool on each target.

use super::auth::Caller;
use super::{ApiError, ApiPath, AppState};
use crate::backend::BlueprintStatus;
use crate::blueprint::Blueprint;
use crate::domain::Scope;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

fn describe(bp: &Blueprint, targets: Option<Vec<(String, BlueprintStatus)>>) -> Value {
    let mut v = json!({
        "name": bp.name,
        "schema": bp.schema.as_ref().map(|s| &s.name),
        "migrations_format": bp.format,
        "migrations": bp.migrations.iter().map(|m| &m.name).collect::<Vec<_>>(),
        "seeds": bp.seeds.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "extensions": bp.extensions,
        "pool_size": bp.pool_size,
    });
    if let Some(targets) = targets {
        v["targets"] = targets
            .into_iter()
            .map(|(name, status)| (name, json!(status)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    v
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let items: Vec<Value> = state
        .envs
        .blueprints()
        .map(|bp| describe(bp, None))
        .collect();
    Ok(Json(json!({ "items": items })))
}

pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Read)?;
    let targets = state.envs.blueprint_status(&name).await?;
    described(&state, &name, targets)
}

pub(super) async fn prepare(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let targets = state.envs.prepare_blueprint(&name).await?;
    described(&state, &name, targets)
}

fn described(
    state: &AppState,
    name: &str,
    targets: Vec<(String, BlueprintStatus)>,
) -> Result<Json<Value>, ApiError> {
    let bp = state
        .envs
        .blueprints()
        .find(|b| b.name.as_str() == name)
        .ok_or_else(|| ApiError::not_found(name))?;
    Ok(Json(describe(bp, Some(targets))))
}
