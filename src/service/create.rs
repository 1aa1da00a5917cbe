//! Creating an environment, idempotently per key: the live environment of the key is answered
//! again when its settings match; a provision an earlier process left behind is resumed or
//! rolled back; otherwise a record is written (names planned, within the target's capacity)
//! before anything is made, so that a crash at any point can be rolled back.

use super::plan::{self, Plan, Terms};
use super::{
    join, spawn_in_span, stoppable, CreateSpec, Deadline, Env, Environments, Lease, Result,
    ServiceError,
};
use crate::backend::registry::Target;
use crate::backend::ProvisionRequest;
use crate::domain::{Actor, EventKind, NewEvent};
use crate::metrics::Operation;
use crate::service::lease::Purpose;
use crate::store::{EnvRecord, Insert, KeyQuota, State, StoredConnection};
use chrono::{SubsecRound, Utc};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// One create under way: what was asked, how it resolved, and what bounds it.
struct Work<'a> {
    spec: &'a CreateSpec,
    plan: &'a Plan,
    target: &'a Target,
    deadline: &'a Deadline,
    lease: &'a Lease,
    actor: &'a Actor,
}

/// What a live record of the key leaves for a create to do.
enum Start {
    /// The same environment is ready: answer it.
    Answer(Env),
    /// A provision with the same settings was interrupted: finish it.
    Resume(EnvRecord),
    /// Nothing live: make a new one.
    Fresh,
}

impl Environments {
    /// Creates the environment of `spec.key`, or returns the live one when its settings match
    /// (`Ok((env, false))`). Runs to completion even if the caller goes away.
    pub async fn create(self: &Arc<Self>, spec: CreateSpec, actor: &Actor) -> Result<(Env, bool)> {
        let this = self.clone();
        let actor = actor.clone();
        join(spawn_in_span(async move {
            let started = Instant::now();
            let result = this.create_inner(spec, &actor).await;
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

    async fn create_inner(&self, spec: CreateSpec, actor: &Actor) -> Result<(Env, bool)> {
        let terms = |name: &str| {
            let t = self.targets.get(name)?;
            Some(Terms {
                capabilities: t.capabilities,
                provision_timeout: t.provision_timeout,
            })
        };
        let plan = plan::resolve(&spec, &self.defaults, &self.blueprints, terms)?;
        within_reach(&spec, &plan, actor)?;
        let target = self.target(&plan.target)?;
        let deadline = Deadline::after(plan.budget);
        let lease = self
            .leases
            .acquire(spec.key.as_str(), Purpose::Create, &deadline)
            .await?;
        let outcome = async {
            let (record, resuming) = match self.start(&spec, &plan, actor).await? {
                Start::Answer(env) => {
                    self.note(
                        env.record.id,
                        EventKind::HandedOut,
                        actor,
                        serde_json::json!({}),
                    )
                    .await?;
                    return Ok((env, false));
                }
                Start::Resume(record) => (record, true),
                Start::Fresh => {
                    let record = self
                        .insert_record(&spec, &plan, target, &deadline, actor)
                        .await?;
                    (record, false)
                }
            };
            let work = Work {
                spec: &spec,
                plan: &plan,
                target,
                deadline: &deadline,
                lease: &lease,
                actor,
            };
            self.provision(work, record, resuming)
                .await
                .map(|env| (env, true))
        }
        .await;
        // Released after the answer: until then the next call for this key waits (here or on
        // another replica).
        spawn_in_span(lease.release());
        outcome
    }

    /// Looks at the key's live record (the caller holds the key's lease, so whoever started an
    /// unfinished one is gone).
    async fn start(&self, spec: &CreateSpec, plan: &Plan, actor: &Actor) -> Result<Start> {
        let Some(existing) = self.store.live_by_key(spec.key.as_str()).await? else {
            return Ok(Start::Fresh);
        };
        let same = existing.settings_digest == plan.digest;
        match existing.state {
            State::Ready if same => {
                let password = self.open_password(&existing)?;
                Ok(Start::Answer(Env {
                    record: existing,
                    password: Some(password),
                }))
            }
            State::Ready => Err(ServiceError::Conflict(format!(
                "environment {:?} exists with other settings (target {}, isolation {}, blueprint {}); \
                 delete it first or use another key",
                existing.key,
                existing.target,
                existing.isolation.as_str(),
                existing.blueprint.as_deref().unwrap_or("none")
            ))),
            State::Provisioning if same => Ok(Start::Resume(existing)),
            State::Provisioning => {
                let why = "interrupted: previewdb stopped while provisioning";
                let event = NewEvent::new(EventKind::Failed, actor, json!({ "error": why }));
                self.abandon(&existing, why, &event).await?;
                Ok(Start::Fresh)
            }
            State::Deleting => {
                let event = NewEvent::new(EventKind::Deleted, actor, json!({}));
                self.finish_delete(&existing, &event).await?;
                Ok(Start::Fresh)
            }
            State::Deleted | State::Failed => unreachable!("not live"),
        }
    }

    /// Writes the new environment's record, with everything it will own named, if the target
    /// has room for it.
    async fn insert_record(
        &self,
        spec: &CreateSpec,
        plan: &Plan,
        target: &Target,
        deadline: &Deadline,
        actor: &Actor,
    ) -> Result<EnvRecord> {
        // Stored timestamps have microsecond precision; answer what will be read back.
        let now = Utc::now().trunc_subsecs(6);
        let id = Uuid::now_v7();
        let expires_at = now + plan.ttl.as_chrono();
        let req = request(spec, plan, id, expires_at, deadline);
        let blueprint_hash = match &plan.blueprint {
            Some(bp) => target.backend.blueprint_hash(bp).await?,
            None => None,
        };
        let record = EnvRecord {
            id,
            key: spec.key.as_str().to_owned(),
            target: target.name.clone(),
            isolation: plan.isolation,
            blueprint: plan.blueprint.as_ref().map(|b| b.name.to_string()),
            blueprint_hash,
            settings_digest: plan.digest.clone(),
            state: State::Provisioning,
            error: None,
            resources: target.backend.plan(&req)?,
            teardown_pending: true,
            connection: None,
            password_sealed: None,
            labels: spec.labels.clone(),
            created_at: now,
            updated_at: now,
            expires_at,
            deleted_at: None,
            size_bytes: None,
            lock_reason: None,
        };
        let likes = actor
            .reach
            .key_likes()
            .unwrap_or_else(|| vec!["%".to_owned()]);
        let quota = actor.reach.max_live.map(|max_live| KeyQuota {
            likes: &likes,
            max_live,
        });
        match self
            .store
            .insert_within(&record, target.max_environments, quota)
            .await?
        {
            Insert::Recorded => Ok(record),
            Insert::TargetFull => Err(ServiceError::AtCapacity(format!(
                "target {:?} holds its maximum of {} environments",
                target.name, target.max_environments
            ))),
            Insert::QuotaFull { live } => Err(ServiceError::AtCapacity(format!(
                "{:?} holds {live} live environments, its max_live; delete one first",
                actor.name
            ))),
        }
    }

    /// Makes (or, `resuming` an interrupted provision, finishes) what `record` names, and
    /// records it ready with its sealed password; on failure, tears it down and records why.
    async fn provision(&self, w: Work<'_>, mut record: EnvRecord, resuming: bool) -> Result<Env> {
        let target = w.target;
        let req = request(w.spec, w.plan, record.id, record.expires_at, w.deadline);
        let work = async {
            match resuming {
                true => target.backend.resume(&req, &mut record.resources).await,
                false => target.backend.provision(&req, &mut record.resources).await,
            }
        };
        let connection = match stoppable(work, w.deadline, w.lease, "create").await {
            Ok(c) => c,
            Err(e) => {
                let message = e.to_string();
                // The backend rolled back (or was stopped halfway): tear down once more as a
                // backstop and remember if that could not complete, so the reconciler finishes it.
                let pending = target.backend.teardown(&record.resources).await.is_err();
                let event = NewEvent::new(EventKind::Failed, w.actor, json!({ "error": message }));
                self.store
                    .mark_failed(record.id, &message, pending, &event)
                    .await?;
                tracing::warn!(env = %record.id, error = %e.chain(), "provision failed");
                return Err(e);
            }
        };
        let stored = StoredConnection::from_connection(&connection);
        let sealed = self.sealer.seal(record.id, connection.password.expose());
        let detail = json!({
            "target": record.target,
            "blueprint": record.blueprint,
            "expires_at": record.expires_at,
        });
        let event = NewEvent::new(EventKind::Created, w.actor, detail);
        if let Err(e) = self
            .store
            .mark_ready(record.id, &record.resources, &stored, &sealed, &event)
            .await
        {
            let _ = target.backend.teardown(&record.resources).await;
            return Err(e.into());
        }
        record.state = State::Ready;
        record.connection = Some(stored);
        tracing::info!(env = %record.id, target = %record.target, "environment ready");
        Ok(Env {
            record,
            password: Some(connection.password),
        })
    }

    /// Tears down what an interrupted provision may have made and records it as failed,
    /// reported by `event`.
    pub(super) async fn abandon(&self, rec: &EnvRecord, why: &str, event: &NewEvent) -> Result<()> {
        let backend = &self.target(&rec.target)?.backend;
        let pending = backend.teardown(&rec.resources).await.is_err();
        self.store.mark_failed(rec.id, why, pending, event).await?;
        Ok(())
    }

    pub(super) async fn finish_delete(&self, rec: &EnvRecord, event: &NewEvent) -> Result<()> {
        self.target(&rec.target)?
            .backend
            .teardown(&rec.resources)
            .await?;
        self.store.mark_deleted(rec.id, false, event).await?;
        Ok(())
    }
}

/// Refuses a create outside the caller's reach: a key outside its patterns, or a target or
/// blueprint it was not given.
fn within_reach(spec: &CreateSpec, plan: &Plan, actor: &Actor) -> Result<()> {
    let reach = &actor.reach;
    let blueprint = plan.blueprint.as_ref().map(|b| b.name.as_str());
    let refusal = if !reach.covers_key(spec.key.as_str()) {
        format!("key {:?} is outside the token's keys", spec.key.as_str())
    } else if !reach.allows_target(&plan.target) {
        format!("target {:?} is not among the token's targets", plan.target)
    } else if !reach.allows_blueprint(blueprint) {
        format!(
            "blueprint {:?} is not among the token's blueprints",
            blueprint.unwrap_or_default()
        )
    } else {
        return Ok(());
    };
    Err(ServiceError::Forbidden(format!(
        "{:?} may not create this environment: {refusal}",
        actor.name
    )))
}

fn request(
    spec: &CreateSpec,
    plan: &Plan,
    id: Uuid,
    expires_at: chrono::DateTime<Utc>,
    deadline: &Deadline,
) -> ProvisionRequest {
    ProvisionRequest {
        id,
        key: spec.key.clone(),
        isolation: plan.isolation,
        expires_at,
        blueprint: plan.blueprint.clone(),
        migrations: spec.migrations.clone(),
        deadline: *deadline,
    }
}
