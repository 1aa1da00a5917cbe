//! The environment lifecycle, independent of HTTP: idempotent create per key, lookup, delete,
//! extend, credential rotation, reset, sweep and reconciliation of interrupted work.
//!
//! Every change to a key happens under that key's lease (see `service::lease`), within a
//! deadline (see `service::deadline`), and runs in a task of its own so that a caller hanging
//! up cannot leave an environment half-made. A DELETE stops a create, reset or migrate of the
//! same key that is still running, on any replica.

use crate::backend::{
    Backend, BackendError, BlueprintStatus, Connection, ProvisionRequest, TargetHealth,
};
use crate::blueprint::Blueprint;
use crate::domain::{EnvKey, InvalidInput, Isolation, Labels, Secret, SourceFile, Ttl};
use crate::metrics::{error_outcome, Metrics, Operation};
use crate::service::lease::{LeaseError, Purpose, Stop};
use crate::service::{Deadline, Lease, Leases, WorkQueue};
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
    /// Longest a create, reset or migrate on this target may take.
    pub provision_timeout: Duration,
    /// Where heavy work on this target waits for its turn, by kind of work.
    pub queues: Vec<(&'static str, Arc<WorkQueue>)>,
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
    /// How long the caller is willing to wait, within the target's `provision_timeout`.
    pub timeout: Option<Duration>,
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
    /// The work did not finish in time; it was cancelled and rolled back.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The target's queue of heavy work is full.
    #[error("{message}")]
    QueueFull {
        message: String,
        retry_after: Duration,
    },
    /// A DELETE of the key stopped this operation.
    #[error("{0}")]
    Cancelled(String),
    /// The environment's logins are refused (e.g. it is over its size quota).
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Internal(String),
}

impl From<LeaseError> for ServiceError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Busy => ServiceError::Unavailable {
                message: "another operation on this environment is still running; retry later"
                    .into(),
                retry_after: Duration::from_secs(2),
            },
            LeaseError::Store(e) => e.into(),
        }
    }
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
            BackendError::Failed { message, .. } => ServiceError::ProvisioningFailed(message),
            e @ BackendError::Blueprint { .. } => ServiceError::BlueprintFailed(e.to_string()),
            BackendError::Migration { message } => ServiceError::MigrationFailed(message),
            BackendError::Busy {
                message,
                retry_after,
            } => ServiceError::QueueFull {
                message,
                retry_after,
            },
            BackendError::Deadline { message } => ServiceError::DeadlineExceeded(message),
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
    leases: Arc<Leases>,
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
            leases: Leases::start(store.clone()),
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
        let accounted = self.store.accounted_resources().await?;
        if let Err(e) = self.store.prune_leases().await {
            tracing::warn!(error = %e, "could not prune expired key leases");
        }
        let mut dropped = vec![];
        for t in self.targets.values() {
            dropped.extend(t.backend.collect_garbage(&keep, &known, &accounted).await?);
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
            .map_or(crate::domain::MigrationFormat::Plain, |b| b.format);
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
        let deadline = Deadline::after(spec.timeout.map_or(target.provision_timeout, |t| {
            t.min(target.provision_timeout)
        }));

        let lease = self
            .leases
            .acquire(spec.key.as_str(), Purpose::Create, &deadline)
            .await?;
        let outcome = self
            .create_leased(
                &spec,
                target,
                isolation,
                blueprint_name,
                blueprint,
                ttl,
                digest,
                &deadline,
                &lease,
            )
            .await;
        // Released after the answer: until then the next call for this key waits (here or on another replica).
        tokio::spawn(lease.release());
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_leased(
        &self,
        spec: &CreateSpec,
        target: &Target,
        isolation: Isolation,
        blueprint_name: Option<String>,
        blueprint: Option<Arc<Blueprint>>,
        ttl: Ttl,
        digest: String,
        deadline: &Deadline,
        lease: &Lease,
    ) -> Result<(Env, bool)> {
        let target_name = &target.name;
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
                // We hold the key's lease, so whoever started this provision is gone.
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
                    deadline: *deadline,
                };
                (record, req)
            }
            None => {
                // Stored timestamps have microsecond precision; answer what will be read back.
                let now = Utc::now().trunc_subsecs(6);
                let req = ProvisionRequest {
                    id: Uuid::now_v7(),
                    key: spec.key.clone(),
                    isolation,
                    expires_at: now + ttl.as_chrono(),
                    blueprint: blueprint.clone(),
                    migrations: spec.migrations.clone(),
                    deadline: *deadline,
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
                    size_bytes: None,
                    lock_reason: None,
                };
                if !self
                    .store
                    .insert_within(&record, target.max_environments)
                    .await?
                {
                    return Err(ServiceError::AtCapacity(format!(
                        "target {target_name:?} holds its maximum of {} environments",
                        target.max_environments
                    )));
                }
                (record, req)
            }
        };

        let work = async {
            if resuming {
                target.backend.resume(&req, &mut record.resources).await
            } else {
                target.backend.provision(&req, &mut record.resources).await
            }
        };
        let outcome = stoppable(work, deadline, lease, "create").await;
        let connection = match outcome {
            Ok(c) => c,
            Err(e) => {
                let message = e.to_string();
                // The backend rolled back (or was stopped halfway): tear down once more as a
                // backstop and remember if that could not complete, so the reconciler finishes it.
                let pending = target.backend.teardown(&record.resources).await.is_err();
                self.store.mark_failed(record.id, &message, pending).await?;
                tracing::warn!(env = %record.id, error = %message, "provision failed");
                return Err(e);
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
        self.store.mark_deleted(rec.id, false).await?;
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

    /// Finds an environment by reference: a canonical UUID (`8-4-4-4-12` hex) is an id first,
    /// and a key when no environment has that id; anything else is a key (the live
    /// environment, else the latest tombstone).
    pub async fn find(&self, reference: &str) -> Result<EnvRecord> {
        let by_id = match canonical_uuid(reference) {
            Some(id) => self.store.get_by_id(id).await?,
            None => None,
        };
        let found = match by_id {
            Some(record) => Some(record),
            None => self.store.get_by_key(reference).await?,
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

    /// Revokes the credentials and ends the sessions, then answers the tombstone (also for an
    /// already deleted one); the data is dropped right after, or before the answer with
    /// `wait_for_data` (the tombstone's `purged`). A create, reset or migrate of the key still
    /// running is stopped first.
    pub async fn delete(self: &Arc<Self>, reference: &str, wait_for_data: bool) -> Result<Env> {
        let this = self.clone();
        let reference = reference.to_owned();
        join(tokio::spawn(async move {
            let result = async {
                let record = this.find(&reference).await?;
                this.leases.cancel(&record.key).await?;
                let deadline = Deadline::after(this.target(&record.target)?.provision_timeout);
                this.delete_leased(record.id, &record.key, &deadline, wait_for_data)
                    .await
            }
            .await;
            this.count(Operation::Delete, result.as_ref().map(|_| "ok"));
            result.map(|(env, _)| env)
        }))
        .await
    }

    /// Deletes under the key's lease; `true` if this call tore the environment down, `false` if
    /// it was already deleted.
    async fn delete_leased(
        self: &Arc<Self>,
        id: Uuid,
        key: &str,
        deadline: &Deadline,
        wait_for_data: bool,
    ) -> Result<(Env, bool)> {
        let lease = self.leases.acquire(key, Purpose::Delete, deadline).await?;
        let outcome = self.delete_record(id, None, deadline, wait_for_data).await;
        // Released after the answer: until then the next call for this key waits (here or on another replica).
        tokio::spawn(lease.release());
        outcome
    }

    /// Tears down record `id` (the caller holds its key's lease). With `expired_by`, only if it
    /// is still ready and expired at that moment: an extend may have come first.
    async fn delete_record(
        self: &Arc<Self>,
        id: Uuid,
        expired_by: Option<chrono::DateTime<Utc>>,
        deadline: &Deadline,
        wait_for_data: bool,
    ) -> Result<(Env, bool)> {
        let record = self
            .store
            .get_by_id(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        let spared =
            expired_by.is_some_and(|now| record.state != State::Ready || record.expires_at > now);
        let backend = &self.target(&record.target)?.backend;
        let late = |e| {
            // Left as it is: the reconciler finishes it.
            ServiceError::DeadlineExceeded(format!(
                "the teardown did not finish in time ({e}); it will be retried"
            ))
        };
        let tore_down = match record.state {
            // Closed already; its data may still be going.
            State::Deleted if record.teardown_pending && wait_for_data => {
                deadline
                    .run(backend.teardown(&record.resources))
                    .await
                    .map_err(late)??;
                self.store.mark_cleaned(id).await?;
                false
            }
            State::Deleted => false,
            _ if spared => false,
            state => {
                if state != State::Failed {
                    self.store.mark_deleting(id).await?;
                }
                let closing = async {
                    match wait_for_data {
                        true => backend.teardown(&record.resources).await.map(|()| false),
                        false => backend.lock_out(&record.resources).await,
                    }
                };
                let data_left = deadline.run(closing).await.map_err(late)??;
                self.store.mark_deleted(id, data_left).await?;
                if data_left {
                    self.purge_in_background(record.clone());
                }
                tracing::info!(env = %id, "environment deleted");
                true
            }
        };
        let record = match tore_down || wait_for_data {
            true => self
                .store
                .get_by_id(id)
                .await?
                .ok_or_else(|| ServiceError::NotFound(id.to_string()))?,
            false => record,
        };
        let env = Env {
            record,
            password: None,
        };
        Ok((env, tore_down))
    }

    /// Drops what a delete left of `record` (already closed to everyone). Should this fail or
    /// the process stop, the record stays `teardown_pending` and the reconciler finishes it.
    fn purge_in_background(self: &Arc<Self>, record: EnvRecord) {
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = async {
                let backend = &this.target(&record.target)?.backend;
                backend.teardown(&record.resources).await?;
                this.store.mark_cleaned(record.id).await?;
                Ok::<(), ServiceError>(())
            };
            match outcome.await {
                Ok(()) => tracing::info!(env = %record.id, "environment data dropped"),
                Err(e) => {
                    tracing::warn!(env = %record.id, error = %e, "data of a deleted environment not dropped yet; it will be retried")
                }
            }
        });
    }

    /// Runs `op` on a ready environment under its key's lease, and counts it as `operation`.
    /// `op` gets the operation's deadline; a DELETE of the key stops it.
    async fn with_ready<T, F>(
        self: &Arc<Self>,
        operation: Operation,
        purpose: Purpose,
        reference: &str,
        op: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a Self,
                EnvRecord,
                &'a Target,
                &'a Deadline,
            ) -> futures_util::future::BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        let this = self.clone();
        let reference = reference.to_owned();
        join(tokio::spawn(async move {
            let result = async {
                let record = this.find(&reference).await?;
                let target = this.target(&record.target)?;
                let deadline = Deadline::after(target.provision_timeout);
                let lease = this.leases.acquire(&record.key, purpose, &deadline).await?;
                let outcome = async {
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
                    stoppable(
                        op(&this, record, target, &deadline),
                        &deadline,
                        &lease,
                        purpose.as_str(),
                    )
                    .await
                }
                .await;
                lease.release().await;
                outcome
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
            Purpose::Extend,
            reference,
            move |this, mut record, target, _| {
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
        self.with_ready(
            Operation::Rotate,
            Purpose::Rotate,
            reference,
            |this, mut record, target, _| {
                Box::pin(async move {
                    refuse_locked(&record)?;
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
            },
        )
        .await
    }

    /// Back to the blueprint with the same credentials; a locked environment (over its quota)
    /// is let in again, since its data is gone.
    pub async fn reset(self: &Arc<Self>, reference: &str) -> Result<Env> {
        self.with_ready(
            Operation::Reset,
            Purpose::Reset,
            reference,
            |this, mut record, target, deadline| {
                Box::pin(async move {
                    let blueprint = record
                        .blueprint
                        .as_deref()
                        .and_then(|b| this.blueprints.get(b));
                    let password = this.open_password(&record)?;
                    if record.lock_reason.is_some() {
                        // Blueprint files may run logged in as the environment.
                        target.backend.set_locked(&record.resources, false).await?;
                    }
                    target
                        .backend
                        .reset(&record.resources, blueprint, &password, deadline)
                        .await?;
                    if record.lock_reason.take().is_some() {
                        this.store.set_lock(record.id, None).await?;
                        tracing::info!(env = %record.id, "reset: environment unlocked");
                    }
                    Ok(Env {
                        record,
                        password: Some(password),
                    })
                })
            },
        )
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
            Purpose::Migrate,
            reference,
            move |this, record, target, deadline| {
                Box::pin(async move {
                    refuse_locked(&record)?;
                    let blueprint = record
                        .blueprint
                        .as_deref()
                        .and_then(|b| this.blueprints.get(b))
                        .cloned();
                    let format = blueprint
                        .as_ref()
                        .map_or(crate::domain::MigrationFormat::Plain, |b| b.format);
                    for m in &migrations {
                        format
                            .check_name(&m.name)
                            .map_err(|e| InvalidInput::new("migrations", e))?;
                    }
                    let password = this.open_password(&record)?;
                    let applied = target
                        .backend
                        .migrate(
                            &record.resources,
                            blueprint.as_deref(),
                            &migrations,
                            &password,
                            deadline,
                        )
                        .await?;
                    Ok((
                        Env {
                            record,
                            password: Some(password),
                        },
                        applied,
                    ))
                })
            },
        )
        .await
    }

    /// Deletes every expired environment now. Each is checked again under its key's lease (an
    /// extend may have come first), and the answer lists only what this sweep tore down
    /// itself: another replica's sweep may have been first.
    pub async fn sweep(self: &Arc<Self>) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let now = Utc::now();
        for rec in self.store.expired(now).await? {
            let this = self.clone();
            let (id, key, target) = (rec.id, rec.key.clone(), rec.target.clone());
            let outcome = join(tokio::spawn(async move {
                let deadline = Deadline::after(this.target(&target)?.provision_timeout);
                let lease = this.leases.acquire(&key, Purpose::Sweep, &deadline).await?;
                let result = this
                    .delete_record(id, Some(Utc::now()), &deadline, false)
                    .await;
                lease.release().await;
                match &result {
                    Ok((_, true)) => this.metrics.swept(true),
                    Ok((_, false)) => {}
                    Err(_) => this.metrics.swept(false),
                }
                result
            }))
            .await;
            let swept = |error| SweptEnv {
                id,
                key: rec.key.clone(),
                error,
            };
            match outcome {
                Ok((_, true)) => report.deleted.push(swept(None)),
                Ok((_, false)) => {}
                Err(e) => report.failed.push(swept(Some(e.to_string()))),
            }
        }
        Ok(report)
    }

    /// Completes work that a stopped process left unfinished: provisions nobody is running are
    /// rolled back, interrupted deletions completed, failed clean-ups retried.
    pub async fn reconcile(&self) -> Result<usize> {
        let mut done = 0;
        for rec in self.store.unfinished().await? {
            let Some(lease) = self
                .leases
                .try_acquire(&rec.key, Purpose::Reconcile)
                .await?
            else {
                continue;
            };
            let outcome = self.reconcile_one(rec.id).await;
            lease.release().await;
            match outcome {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(env = %rec.id, error = %e, "reconciliation did not complete")
                }
            }
        }
        Ok(done)
    }

    async fn reconcile_one(&self, id: Uuid) -> Result<bool> {
        let Some(rec) = self.store.get_by_id(id).await? else {
            return Ok(false);
        };
        let Ok(target) = self.target(&rec.target) else {
            return Ok(false);
        };
        match rec.state {
            State::Provisioning => {
                self.abandon(&rec, "interrupted: previewdb stopped while provisioning")
                    .await?
            }
            State::Deleting => self.finish_delete(&rec).await?,
            State::Failed | State::Deleted if rec.teardown_pending => {
                target.backend.teardown(&rec.resources).await?;
                self.store.mark_cleaned(rec.id).await?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Measures every ready environment on targets with quotas; locks out those over their
    /// quota (logins refused, sessions ended) and lets in again those back under it.
    pub async fn enforce_quotas(&self) -> Result<usize> {
        let mut changed = 0;
        for target in self.targets.values().filter(|t| t.backend.has_quotas()) {
            let envs = self.store.ready_on(&target.name).await?;
            if envs.is_empty() {
                continue;
            }
            let resources: Vec<_> = envs.iter().map(|e| &e.resources).collect();
            let sizes = target.backend.measure(&resources).await?;
            let measured: Vec<(Uuid, i64)> = sizes.iter().map(|(i, b)| (envs[*i].id, *b)).collect();
            self.store.set_sizes(&measured).await?;
            for (i, bytes) in sizes {
                let env = &envs[i];
                let blueprint = env
                    .blueprint
                    .as_deref()
                    .and_then(|b| self.blueprints.get(b));
                let quota = target.backend.quota_for(blueprint.map(|b| b.as_ref()));
                let over = quota.is_some_and(|q| bytes as u64 > q);
                if over == env.lock_reason.is_some() {
                    continue;
                }
                // Busy keys are measured again next round.
                let Some(lease) = self.leases.try_acquire(&env.key, Purpose::Quota).await? else {
                    continue;
                };
                let outcome = async {
                    let still = self.store.get_by_id(env.id).await?;
                    if still.as_ref().is_none_or(|r| r.state != State::Ready) {
                        return Ok(false);
                    }
                    target.backend.set_locked(&env.resources, over).await?;
                    self.store
                        .set_lock(env.id, over.then_some("over_quota"))
                        .await?;
                    Ok::<bool, ServiceError>(true)
                }
                .await;
                lease.release().await;
                if outcome? {
                    changed += 1;
                    match over {
                        true => {
                            tracing::warn!(env = %env.id, size_bytes = bytes, quota = ?quota, "environment over its size quota: locked")
                        }
                        false => {
                            tracing::info!(env = %env.id, size_bytes = bytes, "environment under its size quota again: unlocked")
                        }
                    }
                }
            }
        }
        Ok(changed)
    }
}

/// Runs `work` until it finishes, the deadline passes or the lease says to stop; in the last
/// two cases `work` is dropped (the caller rolls back what it made).
async fn stoppable<T>(
    work: impl std::future::Future<Output = std::result::Result<T, impl Into<ServiceError>>>,
    deadline: &Deadline,
    lease: &Lease,
    what: &str,
) -> Result<T> {
    tokio::select! {
        outcome = work => outcome.map_err(Into::into),
        stop = lease.stopped() => Err(match stop {
            Stop::Cancelled => ServiceError::Cancelled(format!(
                "the {what} was stopped by a DELETE of this environment"
            )),
            Stop::Lost => ServiceError::Unavailable {
                message: format!("the {what} lost its lease on the key (is the control store reachable?)"),
                retry_after: Duration::from_secs(5),
            },
        }),
        _ = tokio::time::sleep_until(deadline.instant()) => Err(ServiceError::DeadlineExceeded(format!(
            "the {what} did not finish within its deadline of {}s; it was cancelled and rolled back",
            deadline.budget().as_secs_f64().round()
        ))),
    }
}

fn refuse_locked(record: &EnvRecord) -> Result<()> {
    match &record.lock_reason {
        Some(reason) => Err(ServiceError::Locked(format!(
            "environment is locked ({reason}: {} bytes); delete, reset or extend it",
            record.size_bytes.unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

/// `8-4-4-4-12` hexadecimal digits, and nothing else: the one form in which an id is written.
fn canonical_uuid(reference: &str) -> Option<Uuid> {
    let id = Uuid::try_parse(reference).ok()?;
    (reference.len() == 36).then_some(id)
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
