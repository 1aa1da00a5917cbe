//! Upkeep, in the background of every replica: sweeping expired environments, completing
//! what a stopped process left unfinished, enforcing size quotas, collecting unused templates
//! and leftovers, and warming blueprints' templates and pools — and the loop that runs them.

use super::{join, plan, spawn_in_span, Deadline, Environments, Result, ServiceError};
use crate::backend::registry::Target;
use crate::backend::BlueprintStatus;
use crate::blueprint::Blueprint;
use crate::domain::{Actor, EventKind, NewEvent};
use crate::service::lease::Purpose;
use crate::store::{EnvRecord, State};
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

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

impl Environments {
    /// The blueprint's state on every target that builds templates.
    pub async fn blueprint_status(&self, name: &str) -> Result<Vec<(String, BlueprintStatus)>> {
        let bp = self.configured(name)?;
        let mut out = vec![];
        for t in self.template_targets() {
            out.push((t.name.clone(), t.backend.blueprint_status(&bp).await));
        }
        Ok(out)
    }

    /// Builds the blueprint's template and fills its pool on every target that builds templates.
    pub async fn prepare_blueprint(&self, name: &str) -> Result<Vec<(String, BlueprintStatus)>> {
        let bp = self.configured(name)?;
        let mut out = vec![];
        for t in self.template_targets() {
            out.push((t.name.clone(), t.backend.prepare(&bp).await?));
        }
        Ok(out)
    }

    fn configured(&self, name: &str) -> Result<Arc<Blueprint>> {
        plan::blueprint(&self.blueprints, name).map_err(|_| ServiceError::NotFound(name.to_owned()))
    }

    /// Targets that make environments from blueprints (and so build templates).
    pub(super) fn template_targets(&self) -> impl Iterator<Item = &Target> {
        self.targets
            .values()
            .filter(|t| t.capabilities.blueprints.is_yes())
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

    /// Deletes every expired environment now. Each is checked again under its key's lease (an
    /// extend may have come first), and the answer lists only what this sweep tore down
    /// itself: another replica's sweep may have been first. A caller whose reach is limited
    /// to some keys sweeps only those.
    pub async fn sweep(self: &Arc<Self>, actor: &Actor) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let now = Utc::now();
        let keys = actor.reach.key_likes();
        for rec in self.store.expired(now, keys.as_deref()).await? {
            let this = self.clone();
            let (id, key, target) = (rec.id, rec.key.clone(), rec.target.clone());
            let actor = actor.clone();
            let outcome = join(spawn_in_span(async move {
                let deadline = Deadline::after(this.target(&target)?.provision_timeout);
                let lease = this.leases.acquire(&key, Purpose::Sweep, &deadline).await?;
                let result = this
                    .delete_record(id, Some(Utc::now()), &deadline, false, &actor)
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
                    tracing::warn!(env = %rec.id, error = %e.chain(), "reconciliation did not complete")
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
        let reconciler = Actor::upkeep("reconciler");
        match rec.state {
            State::Provisioning => {
                let why = "interrupted: previewdb stopped while provisioning";
                let detail = serde_json::json!({ "was": "provisioning", "error": why });
                let event = NewEvent::new(EventKind::Reconciled, &reconciler, detail);
                self.abandon(&rec, why, &event).await?
            }
            State::Deleting => {
                let detail = serde_json::json!({ "was": "deleting" });
                let event = NewEvent::new(EventKind::Reconciled, &reconciler, detail);
                self.finish_delete(&rec, &event).await?
            }
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
        for target in self.targets.values().filter(|t| t.capabilities.quotas) {
            let envs = self.store.ready_on(&target.name).await?;
            if envs.is_empty() {
                continue;
            }
            let resources: Vec<_> = envs.iter().map(|e| &e.resources).collect();
            let sizes = target.backend.measure(&resources).await?;
            let measured: Vec<(Uuid, i64)> = sizes.iter().map(|(i, b)| (envs[*i].id, *b)).collect();
            self.store.set_sizes(&measured).await?;
            for (i, bytes) in sizes {
                if self.apply_quota(target, &envs[i], bytes).await? {
                    changed += 1;
                }
            }
        }
        Ok(changed)
    }

    /// Locks `env` out if `bytes` is over its quota, or lets it in again if no longer;
    /// whether that changed anything. A busy key is measured again next round.
    async fn apply_quota(&self, target: &Target, env: &EnvRecord, bytes: i64) -> Result<bool> {
        let blueprint = env
            .blueprint
            .as_deref()
            .and_then(|b| self.blueprints.get(b));
        let quota = target.backend.quota_for(blueprint.map(|b| b.as_ref()));
        let over = quota.is_some_and(|q| bytes as u64 > q);
        if over == env.lock_reason.is_some() {
            return Ok(false);
        }
        let Some(lease) = self.leases.try_acquire(&env.key, Purpose::Quota).await? else {
            return Ok(false);
        };
        let outcome = async {
            let still = self.store.get_by_id(env.id).await?;
            if still.as_ref().is_none_or(|r| r.state != State::Ready) {
                return Ok(false);
            }
            target.backend.set_locked(&env.resources, over).await?;
            let detail = serde_json::json!({ "locked": over, "size_bytes": bytes, "quota": quota });
            let event = NewEvent::new(EventKind::QuotaLocked, &Actor::upkeep("quota"), detail);
            self.store
                .set_lock(env.id, over.then_some("over_quota"), Some(&event))
                .await?;
            Ok::<bool, ServiceError>(true)
        }
        .await;
        lease.release().await;
        if outcome? {
            match over {
                true => {
                    tracing::warn!(env = %env.id, size_bytes = bytes, quota = ?quota, "environment over its size quota: locked")
                }
                false => {
                    tracing::info!(env = %env.id, size_bytes = bytes, "environment under its size quota again: unlocked")
                }
            }
            return Ok(true);
        }
        Ok(false)
    }
}

/// Set to anything but `0` to start without warming blueprints: the benchmark times a first,
/// cold template build, which warming at start would already have done.
pub const NO_WARM_UP_ENV: &str = "PREVIEWDB_NO_WARM_UP";

pub async fn run_upkeep(envs: Arc<Environments>, interval: Duration) {
    if std::env::var_os(NO_WARM_UP_ENV).is_none_or(|v| v == "0") {
        tokio::spawn(warm_up(envs.clone()));
    }
    loop {
        match envs.enforce_quotas().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "size quotas: environments locked or unlocked"),
            Err(e) => tracing::warn!(error = %e.chain(), "size quota check failed"),
        }
        match envs.reconcile().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "reconciled unfinished environments"),
            Err(e) => tracing::warn!(error = %e.chain(), "reconciliation failed"),
        }
        match envs.sweep(&Actor::upkeep("sweeper")).await {
            Ok(r) if !r.deleted.is_empty() || !r.failed.is_empty() => {
                tracing::info!(
                    deleted = r.deleted.len(),
                    failed = r.failed.len(),
                    "swept expired environments"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "sweep failed"),
        }
        match envs.notice_expiring().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "expiring notices written"),
            Err(e) => tracing::warn!(error = %e.chain(), "expiring notices failed"),
        }
        tokio::time::sleep(interval).await;
        match envs.prune_events().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "events past their retention removed"),
            Err(e) => tracing::warn!(error = %e.chain(), "events not pruned"),
        }
        match envs.collect_garbage().await {
            Ok(d) if !d.is_empty() => {
                tracing::info!(dropped = ?d, "dropped unused templates and pool databases")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "garbage collection failed"),
        }
    }
}

/// Builds every configured blueprint's template and fills its pool, so the first caller is
/// served warm.
async fn warm_up(envs: Arc<Environments>) {
    let names: Vec<String> = envs.blueprints().map(|b| b.name.to_string()).collect();
    for name in names {
        match envs.prepare_blueprint(&name).await {
            Ok(_) => tracing::info!(blueprint = %name, "blueprint prepared"),
            Err(e) => {
                tracing::warn!(blueprint = %name, error = %e.chain(), "blueprint could not be prepared")
            }
        }
    }
}
