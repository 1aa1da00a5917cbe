//! Every operation on an existing environment: lookup by id or key, listing, delete (closing
//! it at once, dropping its data right after), and the changes that need it ready — extend,
//! credential rotation, reset, migrate — each under its key's lease and within a deadline.

use super::plan;
use super::{join, spawn_in_span, stoppable, Deadline, Environments, Result, ServiceError};
use crate::backend::registry::Target;
use crate::backend::Support;
use crate::domain::Secret;
use crate::domain::SourceFile;
use crate::domain::{Actor, Connection, EventKind, InvalidInput, NewEvent, Ttl};
use crate::metrics::Operation;
use crate::service::lease::Purpose;
use crate::store::{EnvRecord, ListFilter, State, StoredConnection};
use chrono::{SubsecRound, Utc};
use std::sync::Arc;
use uuid::Uuid;

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

impl Environments {
    /// Finds an environment by reference: a canonical UUID (`8-4-4-4-12` hex) is an id first,
    /// and a key when no environment has that id; anything else is a key (the live
    /// environment, else the latest tombstone).
    ///
    /// Refused when the key is out of `actor`'s reach: a key reference before any lookup (so
    /// that nobody learns which keys exist outside its own), an id once found.
    pub async fn find(&self, reference: &str, actor: &Actor) -> Result<EnvRecord> {
        let out_of_reach = |key: &str| {
            ServiceError::Forbidden(format!(
                "{:?} may not act on environment {key:?}: its key is outside the token's keys",
                actor.name
            ))
        };
        let id = canonical_uuid(reference);
        if id.is_none() && !actor.reach.covers_key(reference) {
            return Err(out_of_reach(reference));
        }
        let by_id = match id {
            Some(id) => self.store.get_by_id(id).await?,
            None => None,
        };
        let found = match by_id {
            Some(record) => Some(record),
            None => self.store.get_by_key(reference).await?,
        };
        let record = found.ok_or_else(|| ServiceError::NotFound(reference.to_owned()))?;
        if !actor.reach.covers_key(&record.key) {
            return Err(out_of_reach(&record.key));
        }
        Ok(record)
    }

    pub async fn get(&self, reference: &str, reveal: bool, actor: &Actor) -> Result<Env> {
        let record = self.find(reference, actor).await?;
        let password = if reveal && record.state == State::Ready {
            Some(self.open_password(&record)?)
        } else {
            None
        };
        Ok(Env { record, password })
    }

    /// Lists what `filter` asks for among the keys within `actor`'s reach.
    pub async fn list(&self, filter: &ListFilter, actor: &Actor) -> Result<Vec<EnvRecord>> {
        let keys = actor.reach.key_likes();
        Ok(self.store.list(filter, keys.as_deref()).await?)
    }

    /// Revokes the credentials and ends the sessions, then answers the tombstone (also for an
    /// already deleted one); the data is dropped right after, or before the answer with
    /// `wait_for_data` (the tombstone's `purged`). A create, reset or migrate of the key still
    /// running is stopped first.
    pub async fn delete(
        self: &Arc<Self>,
        reference: &str,
        wait_for_data: bool,
        actor: &Actor,
    ) -> Result<Env> {
        let this = self.clone();
        let reference = reference.to_owned();
        let actor = actor.clone();
        join(spawn_in_span(async move {
            let result = async {
                let record = this.find(&reference, &actor).await?;
                this.leases.cancel(&record.key).await?;
                let deadline = Deadline::after(this.target(&record.target)?.provision_timeout);
                this.delete_leased(record.id, &record.key, &deadline, wait_for_data, &actor)
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
        actor: &Actor,
    ) -> Result<(Env, bool)> {
        let lease = self.leases.acquire(key, Purpose::Delete, deadline).await?;
        let outcome = self
            .delete_record(id, None, deadline, wait_for_data, actor)
            .await;
        // Released after the answer: until then the next call for this key waits (here or on another replica).
        spawn_in_span(lease.release());
        outcome
    }

    /// Tears down record `id` (the caller holds its key's lease). With `expired_by`, only if it
    /// is still ready and expired at that moment: an extend may have come first. `actor` is
    /// who the `deleted` (or, `expired_by`, `swept`) event names.
    pub(super) async fn delete_record(
        self: &Arc<Self>,
        id: Uuid,
        expired_by: Option<chrono::DateTime<Utc>>,
        deadline: &Deadline,
        wait_for_data: bool,
        actor: &Actor,
    ) -> Result<(Env, bool)> {
        let record = self
            .store
            .get_by_id(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))?;
        let spared =
            expired_by.is_some_and(|now| record.state != State::Ready || record.expires_at > now);
        let backend = &self.target(&record.target)?.backend;
        let tore_down = match record.state {
            // Closed already; its data may still be going.
            State::Deleted if record.teardown_pending && wait_for_data => {
                deadline
                    .run(backend.teardown(&record.resources))
                    .await
                    .map_err(late_teardown)??;
                self.store.mark_cleaned(id).await?;
                false
            }
            State::Deleted => false,
            _ if spared => false,
            _ => {
                let event = match expired_by {
                    Some(_) => NewEvent::new(
                        EventKind::Swept,
                        actor,
                        serde_json::json!({ "expires_at": record.expires_at }),
                    ),
                    None => NewEvent::new(EventKind::Deleted, actor, serde_json::json!({})),
                };
                self.close(&record, deadline, wait_for_data, &event).await?;
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

    /// Records `record` deleting, closes it to everyone (and, `wait_for_data`, drops its data
    /// before answering), and records it deleted; the data left is dropped in the background.
    async fn close(
        self: &Arc<Self>,
        record: &EnvRecord,
        deadline: &Deadline,
        wait_for_data: bool,
        event: &NewEvent,
    ) -> Result<()> {
        let backend = &self.target(&record.target)?.backend;
        if record.state != State::Failed {
            self.store.mark_deleting(record.id).await?;
        }
        let closing = async {
            match wait_for_data {
                true => backend.teardown(&record.resources).await.map(|()| false),
                false => backend.lock_out(&record.resources).await,
            }
        };
        let data_left = deadline.run(closing).await.map_err(late_teardown)??;
        self.store.mark_deleted(record.id, data_left, event).await?;
        if data_left {
            self.purge_in_background(record.clone());
        }
        tracing::info!(env = %record.id, "environment deleted");
        Ok(())
    }

    /// Drops what a delete left of `record` (already closed to everyone). Should this fail or
    /// the process stop, the record stays `teardown_pending` and the reconciler finishes it.
    fn purge_in_background(self: &Arc<Self>, record: EnvRecord) {
        let this = self.clone();
        spawn_in_span(async move {
            let outcome = async {
                let backend = &this.target(&record.target)?.backend;
                backend.teardown(&record.resources).await?;
                this.store.mark_cleaned(record.id).await?;
                Ok::<(), ServiceError>(())
            };
            match outcome.await {
                Ok(()) => tracing::info!(env = %record.id, "environment data dropped"),
                Err(e) => {
                    tracing::warn!(env = %record.id, error = %e.chain(), "data of a deleted environment not dropped yet; it will be retried")
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
        actor: &Actor,
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
        let actor = actor.clone();
        join(spawn_in_span(async move {
            let result = async {
                let record = this.find(&reference, &actor).await?;
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

    pub async fn extend(self: &Arc<Self>, reference: &str, ttl: Ttl, actor: &Actor) -> Result<Env> {
        let ttl = plan::within_max(ttl, &self.defaults)
            .map_err(ServiceError::from)
            .inspect_err(|e| self.count(Operation::Extend, Err(e)))?;
        let by = actor.clone();
        self.with_ready(
            Operation::Extend,
            Purpose::Extend,
            reference,
            actor,
            move |this, mut record, target, _| {
                Box::pin(async move {
                    let expires_at = Utc::now().trunc_subsecs(6) + ttl.as_chrono();
                    target.backend.extend(&record.resources, expires_at).await?;
                    let detail = serde_json::json!({
                        "ttl": ttl.to_string(),
                        "expires_at": expires_at,
                    });
                    let event = NewEvent::new(EventKind::Extended, &by, detail);
                    this.store.set_expiry(record.id, expires_at, &event).await?;
                    record.expires_at = expires_at;
                    let password = Some(this.open_password(&record)?);
                    Ok(Env { record, password })
                })
            },
        )
        .await
    }

    pub async fn rotate_credentials(
        self: &Arc<Self>,
        reference: &str,
        actor: &Actor,
    ) -> Result<Env> {
        let by = actor.clone();
        self.with_ready(
            Operation::Rotate,
            Purpose::Rotate,
            reference,
            actor,
            move |this, mut record, target, _| {
                Box::pin(async move {
                    refuse_locked(&record)?;
                    let connection = target
                        .backend
                        .rotate_credentials(&record.resources, record.expires_at)
                        .await?;
                    let stored = StoredConnection::from_connection(&connection);
                    let sealed = this.sealer.seal(record.id, connection.password.expose());
                    let event = NewEvent::new(EventKind::Rotated, &by, serde_json::json!({}));
                    this.store
                        .set_password(record.id, &stored, &sealed, &event)
                        .await?;
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
    pub async fn reset(self: &Arc<Self>, reference: &str, actor: &Actor) -> Result<Env> {
        let by = actor.clone();
        self.with_ready(
            Operation::Reset,
            Purpose::Reset,
            reference,
            actor,
            move |this, mut record, target, deadline| {
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
                        this.store.set_lock(record.id, None, None).await?;
                        tracing::info!(env = %record.id, "reset: environment unlocked");
                    }
                    this.note(record.id, EventKind::Reset, &by, serde_json::json!({}))
                        .await?;
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
        actor: &Actor,
    ) -> Result<(Env, usize)> {
        let by = actor.clone();
        self.with_ready(
            Operation::Migrate,
            Purpose::Migrate,
            reference,
            actor,
            move |this, record, target, deadline| {
                Box::pin(async move {
                    refuse_locked(&record)?;
                    if let Support::No(why) = target.capabilities.migrations {
                        let why = format!("target {:?} {why}", target.name);
                        return Err(InvalidInput::new("migrations", why).into());
                    }
                    let blueprint = record
                        .blueprint
                        .as_deref()
                        .and_then(|b| this.blueprints.get(b))
                        .cloned();
                    plan::check_migrations(blueprint.as_deref(), &migrations)?;
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
                    let detail = serde_json::json!({ "applied": applied });
                    this.note(record.id, EventKind::Migrated, &by, detail)
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
}

/// A teardown that ran out of time is left as it is: the reconciler finishes it.
fn late_teardown(e: crate::bounds::deadline::Expired) -> ServiceError {
    ServiceError::DeadlineExceeded(format!(
        "the teardown did not finish in time ({e}); it will be retried"
    ))
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
