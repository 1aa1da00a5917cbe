//! What the service reports of itself: the figures `/metrics` renders, the targets
//! `/v1/targets` lists, and readiness. Targets' health and pools are probed at most every few
//! seconds, each probe bounded in time.

use super::{Environments, Result};
use crate::backend::TargetHealth;
use crate::domain::Isolation;
use crate::metrics::{PoolFigures, ProcessFigures, Snapshot, TargetFigures};
use crate::store::{State, StoreError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long targets' health and pools, read at a scrape, are reused: `/metrics` needs no token,
/// so scraping it often must not turn into as many calls to a target (or to Neon's API).
const PROBE_TTL: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What targets looked like at the last probe.
#[derive(Default)]
pub(super) struct Probe {
    at: Option<Instant>,
    up: BTreeMap<String, bool>,
    pools: Vec<PoolFigures>,
}

/// A target as `/v1/targets` lists it.
#[derive(Debug, serde::Serialize)]
pub struct TargetView {
    pub name: String,
    pub kind: &'static str,
    pub isolations: &'static [Isolation],
    pub health: TargetHealth,
    pub live_environments: i64,
    pub max_environments: u32,
}

impl Environments {
    /// Ready to serve when the control store answers.
    pub async fn ready(&self) -> std::result::Result<(), StoreError> {
        self.store.ping().await
    }

    /// Every target with its health (asked now) and live environments.
    pub async fn target_views(&self) -> Result<Vec<TargetView>> {
        let mut views = vec![];
        for t in self.targets.values() {
            views.push(TargetView {
                name: t.name.clone(),
                kind: t.capabilities.kind,
                isolations: t.capabilities.isolations,
                health: t.backend.health().await,
                live_environments: self.store.count_live(&t.name).await?,
                max_environments: t.max_environments,
            });
        }
        Ok(views)
    }

    /// The figures of one `/metrics` scrape: counts from the control store now, targets from
    /// the last probe (probing again when it is older than `PROBE_TTL`).
    pub async fn snapshot(&self) -> Snapshot {
        let (counts, locked, backlog, (up, pools)) = tokio::join!(
            self.store.count_by_target_and_state(),
            self.store.count_locked(),
            self.store.delivery_backlog(),
            async {
                let mut probe = self.probe.lock().await;
                if probe.at.is_none_or(|at| at.elapsed() >= PROBE_TTL) {
                    *probe = self.probe_targets().await;
                }
                (probe.up.clone(), probe.pools.clone())
            }
        );
        let environments = counts
            .inspect_err(|e| tracing::warn!(error = %e, "metrics: control store did not answer"))
            .ok()
            .map(|rows| {
                let mut by: BTreeMap<(String, &'static str), i64> = self
                    .targets
                    .keys()
                    .flat_map(|t| State::ALL.map(|s| ((t.clone(), s.as_str()), 0)))
                    .collect();
                by.extend(rows.into_iter().map(|(t, s, n)| ((t, s.as_str()), n)));
                by.into_iter().map(|((t, s), n)| (t, s, n)).collect()
            });
        let locked = locked.ok().map(|rows| {
            let mut by: BTreeMap<String, i64> =
                self.targets.keys().map(|t| (t.clone(), 0)).collect();
            by.extend(rows);
            by.into_iter().collect()
        });
        let targets = self
            .targets
            .values()
            .map(|t| TargetFigures {
                name: t.name.clone(),
                up: up.get(&t.name).copied().unwrap_or(false),
                max_environments: t.max_environments,
                queues: t
                    .queues
                    .iter()
                    .map(|(name, q)| (*name, q.queued(), q.running()))
                    .collect(),
            })
            .collect();
        Snapshot {
            environments,
            locked,
            webhook_backlog: backlog.ok(),
            targets,
            pools,
            process: ProcessFigures::read(),
        }
    }

    /// Health of every target and pool fill of every blueprint on targets that build
    /// templates, all at once, each bounded in time.
    async fn probe_targets(&self) -> Probe {
        use futures_util::future::join_all;
        let up = join_all(self.targets.values().map(|t| async move {
            let healthy = tokio::time::timeout(PROBE_TIMEOUT, t.backend.health())
                .await
                .is_ok_and(|h| h.healthy);
            (t.name.clone(), healthy)
        }));
        let pools = join_all(
            self.template_targets()
                .flat_map(|t| self.blueprints.values().map(move |bp| (t, bp)))
                .map(|(t, bp)| async move {
                    let status =
                        tokio::time::timeout(PROBE_TIMEOUT, t.backend.blueprint_status(bp))
                            .await
                            .ok()?;
                    // Without a hash the target was not reached: no figure rather than a false 0.
                    status.hash.as_ref()?;
                    Some(PoolFigures {
                        target: t.name.clone(),
                        blueprint: bp.name.to_string(),
                        ready: status.pool_ready,
                        size: status.pool_size,
                    })
                }),
        );
        let (up, pools) = tokio::join!(up, pools);
        Probe {
            at: Some(Instant::now()),
            up: up.into_iter().collect(),
            pools: pools.into_iter().flatten().collect(),
        }
    }
}
