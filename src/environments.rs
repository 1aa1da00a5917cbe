//! The environment lifecycle, independent of HTTP: idempotent create per key, lookup, delete,
//! extend, credential rotation, reset, sweep and reconciliation of interrupted work.
//!
//! Every change to a key happens under that key's lock (see `Store::lock_key`), and runs in a
//! task of its own so that a caller hanging up cannot leave an environment half-made.

use crate::backend::{
    Backend, BackendError, BlueprintStatus, Connection, ProvisionRequest, Secret, TargetHealth,
};
use crate::blueprint::{Blueprint, SourceFile};
use crate::domain::{EnvKey, InvalidInput, Isolation, Labels, Ttl};
use crate::metrics::{error_outcome, Metrics, Operation};
use crate::store::{EnvRecord, ListFilter, Sealer, State, Store, StoreError, StoredConnection};
use chrono::{SubsecRound, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A provisioning backend as configured under `[targets.NAME]`.
pub struct Target {
    pub name: String,
    pub kind: &'static str,
    pub backend: Arc<dyn Backend>,
    pub max_environments: u32,
}

/// What a caller asks for; parsed from the request at the edge.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub key: EnvKey,
    pub target: Option<String>,
    pub isolation: Option<Isolation>,
    pub ttl: Option<Ttl>,
    pub labels: Labels,
    /// A blueprint name; `None` asks for the default one, `Some("")` for an empty database.
    pub blueprint: Option<String>,
    /// The caller's own migrations, applied on top of the blueprint.
    pub migrations: Vec<SourceFile>,
}

/// An environment as returned to callers; the password only where the caller may see it.
#[derive(Debug, Clone)]
pub struct Env {
    pub record: EnvRecord,
    pub password: Option<Secret>,
}

impl Env {
    pub fn connection(&self) -> Option<Connection> {
        let stored = self.record.connection.as_ref()?;
        Some(stored.with_password(self.password.clone().unwrap_or_else(|| Secret::new(""))))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("no environment matches {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    AtCapacity(String),
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    ProvisioningFailed(String),
    #[error("{0}")]
    BlueprintFailed(String),
    #[error("{0}")]
    MigrationFailed(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ServiceError::Unavailable {
                message: m,
                retry_after: Duration::from_secs(5),
            },
            StoreError::Query(e) if e.as_db_error().is_none() => ServiceError::Unavailable {
                message: format!("control store: {e}"),
                retry_after: Duration::from_secs(5),
            },
            StoreError::Query(e) => ServiceError::Internal(format!("control store: {e}")),
        }
    }
}

impl From<BackendError> for ServiceError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable {
                message,
                retry_after,
            } => ServiceError::Unavailable {
                message,
                retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
            },
            BackendError::LimitReached { message } => ServiceError::AtCapacity(message),
            BackendError::Invalid { message } => InvalidInput::new("isolation", message).into(),
            BackendError::Failed { message } => ServiceError::ProvisioningFailed(message),
            e @ BackendError::Blueprint { .. } => ServiceError::BlueprintFailed(e.to_string()),
            BackendError::Migration { message } => ServiceError::MigrationFailed(message),
        }
    }
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// What a sweep did.
#[derive(Debug, Default, serde::Serialize)]
pub struct SweepReport {
    pub deleted: Vec<SweptEnv>,
    pub failed: Vec<SweptEnv>,
}

#[derive(Debug, serde::Serialize)]
pub struct SweptEnv {
    pub id: Uuid,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Service-wide settings from the configuration.
pub struct Defaults {
    pub target: String,
    pub blueprint: Option<String>,
    pub ttl: Ttl,
    pub max_ttl: Ttl,
}

pub struct Environments {
    store: Store,
    sealer: Sealer,
    targets: BTreeMap<String, Target>,
    blueprints: BTreeMap<String, Arc<Blueprint>>,
    defaults: Defaults,
    metrics: Metrics,
}

impl Environments {
    pub fn new(
        store: Store,
        sealer: Sealer,
        targets: Vec<Target>,
        blueprints: Vec<Blueprint>,
        defaults: Defaults,
    ) -> Arc<Self> {
        let targets = targets.into_iter().map(|t| (t.name.clone(), t)).collect();
        let blueprints = blueprints
            .into_iter()
            .map(|b| (b.name.to_string(), Arc::new(b)))
            .collect();
        Arc::new(Self {
            store,
            sealer,
            targets,
            blueprints,
            defaults,
            metrics: Metrics::new(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts how an operation ended: `Ok` with the name of its success, or its error.
    fn count(
        &self,
        operation: Operation,
        outcome: std::result::Result<&'static str, &ServiceError>,
    ) {
        self.metrics
            .operation(operation, outcome.unwrap_or_else(error_outcome));
    }

    pub fn blueprints(&self) -> impl Iterator<Item = &Arc<Blueprint>> {
        self.blueprints.values()
    }

    fn blueprint(&self, name: &str) -> Result<&Arc<Blueprint>> {
        self.blueprints.get(name).ok_or_else(|| {
            InvalidInput::new("blueprint", format!("no blueprint named {name:?}")).into()
        })
    }

    /// The blueprint's state on every target that builds templates.
    pub async fn blueprint_status(&self, name: &str) -> Result<Vec<(String, BlueprintStatus)>> {
        let bp = self
            .blueprint(name)
            .map_err(|_| ServiceError::NotFound(name.to_owned()))?;
        let mut out = vec![];
        for t in self.targets.values().filter(|t| t.kind == "postgres") {
            out.push((t.name.clone(), t.backend.blueprint_status(bp).await));
        }
        Ok(out)
    }

    /// Builds the blueprint's template and fills its pool on every target that builds templates.
    pub async fn prepare_blueprint(&self, name: &str) -> Result<Vec<(String, BlueprintStatus)>> {
        let bp = self
            .blueprint(name)
            .map_err(|_| ServiceError::NotFound(name.to_owned()))?;
        let mut out = vec![];
        for t in self.targets.values().filter(|t| t.kind == "postgres") {
            out.push((t.name.clone(), t.backend.prepare(bp).await?));
        }
        Ok(out)
    }

    /// Drops templates and pool databases that neither the configuration nor a live
    /// environment refers to.
    pub async fn collect_garbage(&self) -> Result<Vec<String>> {
        let mut keep = self.store.live_blueprint_hashes().await?;
        for t in self.targets.values() {
            for bp in self.blueprints.values() {
                match t.backend.blueprint_hash(bp).await {
                    Ok(Some(h)) => keep.push(h),
                    Ok(None) => {}
                    // Without every current hash nothing can be told apart: collect nothing.
                    Err(_) => return Ok(vec![]),
                }
            }
        }
        let known: Vec<String> = self.blueprints.keys().cloned().collect();
        let mut dropped = vec![];
        for t in self.targets.values() {
            dropped.extend(t.backend.collect_garbage(&keep, &known).await?);
        }
        Ok(dropped)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    pub async fn target_health(&self, name: &str) -> Option<TargetHealth> {
        Some(self.targets.get(name)?.backend.health().await)
    }

    fn target(&self, name: &str) -> Result<&Target> {
        self.targets
            .get(name)
            .ok_or_else(|| InvalidInput::new("target", format!("no target named {name:?}")).into())
    }

    fn ttl(&self, ttl: Option<Ttl>) -> Result<Ttl> {
        let ttl = ttl.unwrap_or(self.defaults.ttl);
        if ttl > self.defaults.max_ttl {
            return Err(InvalidInput::new(
                "ttl",
                format!("{ttl} is longer than the maximum {}", self.defaults.max_ttl),
            )
            .into());
        }
        Ok(ttl)
    }

    /// Creates the environment of `spec.key`, or returns the live one when its settings match
    /// (`Ok((env, false))`). Runs to completion even if the caller goes away.
    pub async fn create(self: &Arc<Self>, spec: CreateSpec) -> Result<(Env, bool)> {
        let this = self.clone();
        join(tokio::spawn(async move {
            let started = Instant::now();
            let result = this.create_inner(spec).await;
            if let Ok((env, created)) = &result {
                this.metrics
                    .create_answered(&env.record.target, *created, started.elapsed());
            }
            let success = |(_, created): &(Env, bool)| match created {
                true => "created",
                false => "existing",
            };
            this.count(Operation::Create, result.as_ref().map(success));
            result
        }))
        .await
    }

    async fn create_inner(&self, spec: CreateSpec) -> Result<(Env, bool)> {
        let target_name = spec
            .target
            .clone()
            .unwrap_or_else(|| self.defaults.target.clone());
        let target = self.target(&target_name)?;
        let isolation = spec.isolation.unwrap_or(target.backend.isolations()[0]);
        if !target.backend.isolations().contains(&isolation) {
            return Err(InvalidInput::new(
                "isolation",
                format!(
                    "target {target_name:?} does not offer isolation {:?}",
                    isolation.as_str()
                ),
            )
            .into());
        }
        // Neon targets seed from their parent branch: no default blueprint there.
        let builds_templates = target.kind == "postgres";
        let blueprint_name = match spec.blueprint.as_deref() {
            Some("") => None,
            Some(name) => Some(name.to_owned()),
            None if builds_templates => self.defaults.blueprint.clone(),
            None => None,
        };
        let blueprint = blueprint_name
            .as_deref()
            .map(|n| self.blueprint(n))
            .transpose()?
            .cloned();
        if !spec.migrations.is_empty() && !builds_templates {
            return Err(InvalidInput::new(
                "migrations",
                format!("target {target_name:?} does not apply migrations; run them against the branch with your own tool"),
            )
            .into());
        }
        if blueprint.is_some() && !builds_templates {
            return Err(InvalidInput::new(
                "blueprint",
                format!("target {target_name:?} seeds environments from its parent branch; leave blueprint out"),
            )
            .into());
        }
        let format = blueprint
            .as_ref()
            .map_or(crate::blueprint::MigrationFormat::Plain, |b| b.format);
        for m in &spec.migrations {
            format
                .check_name(&m.name)
                .map_err(|e| InvalidInput::new("migrations", e))?;
        }
        let ttl = self.ttl(spec.ttl)?;
        let digest = settings_digest(
            &target_name,
            isolation,
            blueprint_name.as_deref(),
            &spec.migrations,
        );

        let _lock = self.store.lock_key(spec.key.as_str()).await?;
        let mut resume = None;
        if let Some(existing) = self.store.live_by_key(spec.key.as_str()).await? {
            match existing.state {
                State::Ready if existing.settings_digest == digest => {
                    let password = self.open_password(&existing)?;
                    return Ok((Env { record: existing, password: Some(password) }, false));
                }
                State::Ready => {
                    return Err(ServiceError::Conflict(format!(
                        "environment {:?} exists with other settings (target {}, isolation {}, blueprint {}); \
                         delete it first or use another key",
                        existing.key,
                        existing.target,
                        existing.isolation.as_str(),
                        existing.blueprint.as_deref().unwrap_or("none")
                    )))
                }
                // We hold the key's lock, so whoever started this provision is gone.
                State::Provisioning if existing.settings_digest == digest => resume = Some(existing),
                State::Provisioning => {
                    self.abandon(&existing, "interrupted: previewdb stopped while provisioning").await?
                }
                State::Deleting => self.finish_delete(&existing).await?,
                State::Deleted | State::Failed => unreachable!("not live"),
            }
        }

        let resuming = resume.is_some();
        let (mut record, req) = match resume {
            Some(record) => {
                let req = ProvisionRequest {
                    id: record.id,
                    key: spec.key.clone(),
                    isolation,
                    expires_at: record.expires_at,
                    blueprint: blueprint.clone(),
                    migrations: spec.migrations.clone(),
                };
                (record, req)
            }
            None => {
                let live = self.store.count_live(&target_name).await?;
                if live >= i64::from(target.max_environments) {
                    return Err(ServiceError::AtCapacity(format!(
                        "target {target_name:?} holds its maximum of {} environments",
                        target.max_environments
                    )));
                }
                // Stored timestamps have microsecond precision; answer what will be read back.
                let now = Utc::now().trunc_subsecs(6);
                let req = ProvisionRequest {
                    id: Uuid::now_v7(),
                    key: spec.key.clone(),
                    isolation,
                    expires_at: now + ttl.as_chrono(),
                    blueprint: blueprint.clone(),
                    migrations: spec.migrations.clone(),
                };
                let blueprint_hash = match &blueprint {
                    Some(bp) => target.backend.blueprint_hash(bp).await?,
                    None => None,
                };
                let record = EnvRecord {
                    id: req.id,
                    key: spec.key.as_str().to_owned(),
                    target: target_name.clone(),
                    isolation,
                    blueprint: blueprint_name.clone(),
                    blueprint_hash,
                    settings_digest: digest,
                    state: State::Provisioning,
                    error: None,
                    resources: target.backend.plan(&req)?,
                    teardown_pending: true,
                    connection: None,
                    password_sealed: None,
                    labels: spec.labels.clone(),
                    created_at: now,
                    updated_at: now,
                    expires_at: req.expires_at,
                    deleted_at: None,
                };
                self.store.insert(&record).await?;
                (record, req)
            }
        };

        let outcome = if resuming {
            target.backend.resume(&req, &mut record.resources).await
        } else {
            target.backend.provision(&req, &mut record.resources).await
        };
        let connection = match outcome {
            Ok(c) => c,
            Err(e) => {
                let message = e.to_string();
                // The backend rolled back; tear down once more as a backstop and remember if
                // that could not complete, so the reconciler finishes it.
                let pending = target.backend.teardown(&record.resources).await.is_err();
                self.store.mark_failed(record.id, &message, pending).await?;
                tracing::warn!(env = %record.id, error = %message, "provision failed");
                return Err(e.into());
            }
        };
        let stored = StoredConnection::from_connection(&connection);
        let sealed = self.sealer.seal(record.id, connection.password.expose());
        if let Err(e) = self
            .store
            .mark_ready(record.id, &record.resources, &stored, &sealed)
            .await
        {
            let _ = target.backend.teardown(&record.resources).await;
            return Err(e.into());
        }
        record.state = State::Ready;
        record.connection = Some(stored);
        tracing::info!(env = %record.id, target = %record.target, "environment ready");
        Ok((
            Env {
                record,
                password: Some(connection.password),
            },
            true,
        ))
    }

    /// Tears down what an interrupted provision may have made and records it as failed.
    async fn abandon(&self, rec: &EnvRecord, why: &str) -> Result<()> {
        let backend = &self.target(&rec.target)?.backend;
        let pending = backend.teardown(&rec.resources).await.is_err();
        self.store.mark_failed(rec.id, why, pending).await?;
        Ok(())
    }

    async fn finish_delete(&self, rec: &EnvRecord) -> Result<()> {
        self.target(&rec.target)?
            .backend
            .teardown(&rec.resources)
            .await?;
        self.store.mark_deleted(rec.id).await?;
        Ok(())
    }

    fn open_password(&self, rec: &EnvRecord) -> Result<Secret> {
        rec.password_sealed
            .as_deref()
            .and_then(|s| self.sealer.open(rec.id, s))
            .map(Secret::new)
            .ok_or_else(|| {
                ServiceError::Internal(
                    "the stored password cannot be opened (was the encryption key changed?)".into(),
                )
            })
    }

    /// Finds an environment by id or by key (the live one, else the latest tombstone).
    pub async fn find(&self, reference: &str) -> Result<EnvRecord> {
        let found = match Uuid::parse_str(reference) {
            Ok(id) => self.store.get_by_id(id).await?,
            Err(_) => self.store.get_by_key(reference).await?,
        };
        found.ok_or_else(|| ServiceError::NotFound(reference.to_owned()))
    }

    pub async fn get(&self, reference: &str, reveal: bool) -> Result<Env> {
        let record = self.find(reference).await?;
        let password = if reveal && record.state == State::Ready {
            Some(self.open_password(&record)?)
        } else {
            None
        };
        Ok(Env { record, password })
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<EnvRecord>> {
        Ok(self.store.list(filter).await?)
    }

    /// Revokes, disconnects and drops; answers the tombstone, also for an already deleted one.
    pub async fn delete(self: &Arc<Self>, reference: &str) -> Result<Env> {
        let this = self.clone();
        let reference = reference.to_owned();
        join(tokio::spawn(async move {
            let result = match this.find(&reference).await {
                Ok(record) => this.delete_locked(record.id, &record.key).await,
                Err(e) => Err(e),
            };
            this.count(Operation::Delete, result.as_ref().map(|_| "ok"));
            result.map(|(env, _)| env)
        }))
        .await
    }

    /// Deletes under the key's lock; `true` if this call tore the environment down, `false` if
    /// it was already deleted.
    async fn delete_locked(&self, id: Uuid, key: &str) -> Result<(Env, bool)> {
        let _lock = self.store.lock_key(key).await?;
        let record = self
            .store
            .get_by_id(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        if record.state == State::Deleted {
            let env = Env {
                record,
                password: None,
            };
            return Ok((env, false));
        }
        if record.state != State::Failed {
            self.store.mark_deleting(id).await?;
        }
        self.target(&record.target)?
            .backend
            .teardown(&record.resources)
            .await?;
        self.store.mark_deleted(id).await?;
        tracing::info!(env = %id, "environment deleted");
        let record = self
            .store
            .get_by_id(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        let env = Env {
            record,
            password: None,
        };
        Ok((env, true))
    }

    /// Runs `op` on a ready environment under its key's lock, and counts it as `operation`.
    async fn with_ready<T, F>(
        self: &Arc<Self>,
        operation: Operation,
        reference: &str,
        op: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a Self,
                EnvRecord,
                &'a Target,
            ) -> futures_util::future::BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        let this = self.clone();
        let reference = reference.to_owned();
        join(tokio::spawn(async move {
            let result = async {
                let record = this.find(&reference).await?;
                let _lock = this.store.lock_key(&record.key).await?;
                let record = this
                    .store
                    .get_by_id(record.id)
                    .await?
                    .ok_or_else(|| ServiceError::NotFound(record.id.to_string()))?;
                if record.state != State::Ready {
                    return Err(ServiceError::NotReady(format!(
                        "environment is {}, not ready",
                        record.state.as_str()
                    )));
                }
                let target = this.target(&record.target)?;
                op(&this, record, target).await
            }
            .await;
            this.count(operation, result.as_ref().map(|_| "ok"));
            result
        }))
        .await
    }

    pub async fn extend(self: &Arc<Self>, reference: &str, ttl: Ttl) -> Result<Env> {
        let ttl = self
            .ttl(Some(ttl))
            .inspect_err(|e| self.count(Operation::Extend, Err(e)))?;
        self.with_ready(
            Operation::Extend,
            reference,
            move |this, mut record, target| {
                Box::pin(async move {
                    let expires_at = Utc::now().trunc_subsecs(6) + ttl.as_chrono();
                    target.backend.extend(&record.resources, expires_at).await?;
                    this.store.set_expiry(record.id, expires_at).await?;
                    record.expires_at = expires_at;
                    let password = Some(this.open_password(&record)?);
                    Ok(Env { record, password })
                })
            },
        )
        .await
    }

    pub async fn rotate_credentials(self: &Arc<Self>, reference: &str) -> Result<Env> {
        self.with_ready(Operation::Rotate, reference, |this, mut record, target| {
            Box::pin(async move {
                let connection = target
                    .backend
                    .rotate_credentials(&record.resources, record.expires_at)
                    .await?;
                let stored = StoredConnection::from_connection(&connection);
                let sealed = this.sealer.seal(record.id, connection.password.expose());
                this.store.set_password(record.id, &stored, &sealed).await?;
                record.connection = Some(stored);
                Ok(Env {
                    record,
                    password: Some(connection.password),
                })
            })
        })
        .await
    }

    pub async fn reset(self: &Arc<Self>, reference: &str) -> Result<Env> {
        self.with_ready(Operation::Reset, reference, |this, record, target| {
            Box::pin(async move {
                let blueprint = record
                    .blueprint
                    .as_deref()
                    .and_then(|b| this.blueprints.get(b));
                target
                    .backend
                    .reset(&record.resources, blueprint.map(|b| b.as_ref()))
                    .await?;
                let password = Some(this.open_password(&record)?);
                Ok(Env { record, password })
            })
        })
        .await
    }

    /// Applies more migrations to a live environment, keeping its data.
    pub async fn migrate(
        self: &Arc<Self>,
        reference: &str,
        migrations: Vec<SourceFile>,
    ) -> Result<(Env, usize)> {
        self.with_ready(
            Operation::Migrate,
            reference,
            move |this, record, target| {
                Box::pin(async move {
                    let blueprint = record
                        .blueprint
                        .as_deref()
                        .and_then(|b| this.blueprints.get(b))
                        .cloned();
                    let format = blueprint
                        .as_ref()
                        .map_or(crate::blueprint::MigrationFormat::Plain, |b| b.format);
                    for m in &migrations {
                        format
                            .check_name(&m.name)
                            .map_err(|e| InvalidInput::new("migrations", e))?;
                    }
                    let applied = target
                        .backend
                        .migrate(&record.resources, blueprint.as_deref(), &migrations)
                        .await?;
                    let password = Some(this.open_password(&record)?);
                    Ok((Env { record, password }, applied))
                })
            },
        )
        .await
    }

    /// Deletes every expired environment now. Counted apart from the callers' deletes, and
    /// only what this sweep tore down itself (another replica's sweep may have been first).
    pub async fn sweep(self: &Arc<Self>) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        for rec in self.store.expired(Utc::now()).await? {
            let this = self.clone();
            let (id, key) = (rec.id, rec.key.clone());
            let outcome = join(tokio::spawn(async move {
                let result = this.delete_locked(id, &key).await;
                match &result {
                    Ok((_, true)) => this.metrics.swept(true),
                    Ok((_, false)) => {}
                    Err(_) => this.metrics.swept(false),
                }
                result
            }))
            .await;
            match outcome {
                Ok(_) => report.deleted.push(SweptEnv {
                    id: rec.id,
                    key: rec.key,
                    error: None,
                }),
                Err(e) => report.failed.push(SweptEnv {
                    id: rec.id,
                    key: rec.key,
                    error: Some(e.to_string()),
                }),
            }
        }
        Ok(report)
    }

    /// Completes work that a stopped process left unfinished: provisions nobody is running are
    /// rolled back, interrupted deletions completed, failed clean-ups retried.
    pub async fn reconcile(&self) -> Result<usize> {
        let mut done = 0;
        for rec in self.store.unfinished().await? {
            let Some(_lock) = self.store.try_lock_key(&rec.key).await? else {
                continue;
            };
            let Some(rec) = self.store.get_by_id(rec.id).await? else {
                continue;
            };
            let Ok(target) = self.target(&rec.target) else {
                continue;
            };
            let outcome = match rec.state {
                State::Provisioning => {
                    self.abandon(&rec, "interrupted: previewdb stopped while provisioning")
                        .await
                }
                State::Deleting => self.finish_delete(&rec).await,
                State::Failed if rec.teardown_pending => {
                    match target.backend.teardown(&rec.resources).await {
                        Ok(()) => self.store.mark_cleaned(rec.id).await.map_err(Into::into),
                        Err(e) => Err(e.into()),
                    }
                }
                _ => continue,
            };
            match outcome {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(env = %rec.id, error = %e, "reconciliation did not complete")
                }
            }
        }
        Ok(done)
    }
}

async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await
        .map_err(|e| ServiceError::Internal(format!("task failed: {e}")))?
}

/// What makes two creates of one key "the same environment".
fn settings_digest(
    target: &str,
    isolation: Isolation,
    blueprint: Option<&str>,
    migrations: &[SourceFile],
) -> String {
    use sha2::Digest;
    let migrations: Vec<[&str; 2]> = migrations
        .iter()
        .map(|m| [m.name.as_str(), m.text.as_str()])
        .collect();
    let doc = serde_json::json!({ "target": target, "isolation": isolation, "blueprint": blueprint, "migrations": migrations });
    hex::encode(sha2::Sha256::digest(doc.to_string().as_bytes()))
}
