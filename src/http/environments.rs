//! `/v1/environments`: thin handlers that parse, authorise and delegate to `Environments`.

use super::auth::Caller;
use super::{paging, ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::domain::Scope;
use crate::domain::SourceFile;
use crate::domain::{EnvKey, Isolation, Labels, Ttl};
use crate::service::{CreateSpec, Env};
use crate::store::{EnvRecord, ListFilter, State};
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    key: String,
    blueprint: Option<String>,
    target: Option<String>,
    isolation: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    migrations: Vec<MigrationBody>,
    /// How long to wait at most, e.g. `90s` (the target's `provision_timeout` caps it).
    timeout: Option<String>,
}

/// One of the caller's migrations: a file name in the blueprint's format and its SQL.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MigrationBody {
    name: String,
    sql: String,
}

fn migration_files(body: Vec<MigrationBody>) -> Result<Vec<SourceFile>, ApiError> {
    let mut names = std::collections::HashSet::new();
    body.into_iter()
        .map(|m| {
            let plain = !m.name.is_empty()
                && m.name.len() <= 200
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !plain {
                return Err(ApiError::invalid(format!(
                    "migrations: {:?} must be 1–200 of [A-Za-z0-9._-]",
                    m.name
                )));
            }
            if !names.insert(m.name.clone()) {
                return Err(ApiError::invalid(format!(
                    "migrations: {:?} appears twice",
                    m.name
                )));
            }
            Ok(SourceFile {
                name: m.name,
                text: m.sql,
            })
        })
        .collect()
}

impl CreateBody {
    fn parse(self) -> Result<CreateSpec, ApiError> {
        let isolation = match self.isolation.as_deref() {
            None => None,
            Some(s) => Some(Isolation::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "isolation: {s:?} is not one of database, schema, branch"
                ))
            })?),
        };
        Ok(CreateSpec {
            key: EnvKey::parse(&self.key).map_err(|e| ApiError::invalid(e.to_string()))?,
            target: self.target,
            isolation,
            ttl: self
                .ttl
                .as_deref()
                .map(Ttl::parse)
                .transpose()
                .map_err(|e| ApiError::invalid(e.to_string()))?,
            labels: Labels::parse(self.labels).map_err(|e| ApiError::invalid(e.to_string()))?,
            blueprint: self.blueprint,
            migrations: migration_files(self.migrations)?,
            timeout: self
                .timeout
                .as_deref()
                .map(|t| {
                    Ttl::parse(t)
                        .map(Ttl::as_duration)
                        .map_err(|e| ApiError::invalid(format!("timeout: {}", e.reason)))
                })
                .transpose()?,
        })
    }
}

#[derive(Serialize)]
pub(super) struct ConnectionView {
    uri: String,
    host: String,
    port: u16,
    database: String,
    schema: Option<String>,
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

#[derive(Serialize)]
pub(super) struct EnvView {
    id: uuid::Uuid,
    key: String,
    state: State,
    target: String,
    isolation: Isolation,
    blueprint: Option<String>,
    blueprint_hash: Option<String>,
    connection: Option<ConnectionView>,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Logins refused (see `lock_reason`); deleting, resetting and extending still work.
    locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_reason: Option<String>,
    /// The size last measured by the quota watchdog.
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<i64>,
    /// Of a deleted or failed environment: whether nothing of it is left on the target. A
    /// delete answers once nobody can reach the environment; its data may go a moment later.
    #[serde(skip_serializing_if = "Option::is_none")]
    purged: Option<bool>,
}

impl From<Env> for EnvView {
    fn from(env: Env) -> Self {
        let connection = env.connection().map(|c| {
            let reveal = env.password.is_some();
            ConnectionView {
                uri: c.uri(reveal),
                password: reveal.then(|| c.password.expose().to_owned()),
                host: c.host,
                port: c.port,
                database: c.database,
                schema: c.schema,
                user: c.user,
            }
        });
        let r = env.record;
        EnvView {
            id: r.id,
            key: r.key,
            state: r.state,
            target: r.target,
            isolation: r.isolation,
            blueprint: r.blueprint,
            blueprint_hash: r.blueprint_hash,
            connection,
            created_at: r.created_at,
            expires_at: r.expires_at,
            deleted_at: r.deleted_at,
            labels: r.labels,
            error: r.error,
            locked: r.lock_reason.is_some(),
            lock_reason: r.lock_reason,
            size_bytes: r.size_bytes,
            purged: matches!(r.state, State::Deleted | State::Failed)
                .then_some(!r.teardown_pending),
        }
    }
}

impl From<EnvRecord> for EnvView {
    fn from(record: EnvRecord) -> Self {
        Env {
            record,
            password: None,
        }
        .into()
    }
}

pub(super) async fn create(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<EnvView>), ApiError> {
    caller.require(Scope::Write)?;
    let (env, created) = state.envs.create(body.parse()?, &caller.actor).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(env.into())))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    key: Option<String>,
    label: Option<String>,
    state: Option<String>,
    target: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub(super) struct ListView {
    items: Vec<EnvView>,
    /// The cursor of the following page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

pub(super) async fn list(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListView>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = paging::parse_limit(q.limit.as_deref())?;
    let mut filter = ListFilter {
        key: q.key,
        target: q.target,
        // One more than asked for tells whether a following page exists.
        limit: Some(limit + 1),
        after: q.cursor.as_deref().map(paging::decode_cursor).transpose()?,
        ..Default::default()
    };
    if let Some(s) = q.state {
        filter.state = Some(
            State::parse(&s)
                .ok_or_else(|| ApiError::invalid(format!("state: unknown state {s:?}")))?,
        );
    }
    if let Some(sel) = q.label {
        for part in sel.split(',') {
            let (k, v) =
                Labels::parse_selector(part).map_err(|e| ApiError::invalid(e.to_string()))?;
            filter.labels.insert(k, v);
        }
    }
    let mut records = state.envs.list(&filter, &caller.actor).await?;
    let next = if records.len() as i64 > limit {
        records.truncate(limit as usize);
        records
            .last()
            .map(|r| paging::encode_cursor(r.created_at, r.id))
    } else {
        None
    };
    let items = records.into_iter().map(EnvView::from).collect();
    Ok(Json(ListView { items, next }))
}

#[derive(Deserialize)]
pub(super) struct GetQuery {
    #[serde(default)]
    reveal: bool,
}

pub(super) async fn get(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> Result<Json<EnvView>, ApiError> {
    caller.require(Scope::Read)?;
    if q.reveal {
        caller.require(Scope::Reveal)?;
    }
    Ok(Json(
        state
            .envs
            .get(&reference, q.reveal, &caller.actor)
            .await?
            .into(),
    ))
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    /// Answer only once the data is dropped too (`purged: true`), not as soon as nobody can
    /// reach the environment any more.
    #[serde(default)]
    wait: bool,
}

pub(super) async fn delete(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Json<EnvView>, ApiError> {
    caller.require(Scope::Delete)?;
    Ok(Json(
        state
            .envs
            .delete(&reference, q.wait, &caller.actor)
            .await?
            .into(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExtendBody {
    ttl: String,
}

pub(super) async fn extend(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ApiJson(body): ApiJson<ExtendBody>,
) -> Result<Json<EnvView>, ApiError> {
    caller.require(Scope::Write)?;
    let ttl = Ttl::parse(&body.ttl).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Json(
        state
            .envs
            .extend(&reference, ttl, &caller.actor)
            .await?
            .into(),
    ))
}

pub(super) async fn rotate_credentials(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<EnvView>, ApiError> {
    caller.require(Scope::Write)?;
    Ok(Json(
        state
            .envs
            .rotate_credentials(&reference, &caller.actor)
            .await?
            .into(),
    ))
}

pub(super) async fn reset(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
) -> Result<Json<EnvView>, ApiError> {
    caller.require(Scope::Write)?;
    Ok(Json(
        state.envs.reset(&reference, &caller.actor).await?.into(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MigrateBody {
    migrations: Vec<MigrationBody>,
}

#[derive(Serialize)]
pub(super) struct MigrateView {
    applied: usize,
    #[serde(flatten)]
    environment: EnvView,
}

pub(super) async fn migrate(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ApiJson(body): ApiJson<MigrateBody>,
) -> Result<Json<MigrateView>, ApiError> {
    caller.require(Scope::Write)?;
    let files = migration_files(body.migrations)?;
    let (env, applied) = state.envs.migrate(&reference, files, &caller.actor).await?;
    Ok(Json(MigrateView {
        applied,
        environment: env.into(),
    }))
}
