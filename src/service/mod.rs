//! The environment service, independent of HTTP: one file per kind of operation.
//!
//! - `plan`: a create request resolved against the configuration (pure, unit-tested);
//! - `create`: idempotent create per key, resuming or rolling back interrupted work;
//! - `operate`: lookup, listing, delete, extend, credential rotation, reset, migrate;
//! - `upkeep`: sweep, reconciliation, size quotas, garbage collection, warm-up, and the
//!   background loop that runs them;
//! - `snapshot`: counts and probes for `/metrics`, `/v1/targets` and readiness;
//! - `error`: [`ServiceError`] and the guide to every error type;
//! - `audit`: the audit trail's pages, `expiring` notices and retention;
//! - `webhooks`: the deliverer of the webhooks' outbox (signed, retried, at-least-once);
//! - `lease`: per-key leases — one change to a key at a time, across replicas, without holding
//!   a connection.
//!
//! Every change to a key happens under that key's lease, within a deadline, and runs in a task
//! of its own so that a caller hanging up cannot leave an environment half-made. A DELETE stops
//! a create, reset or migrate of the same key that is still running, on any replica.

mod audit;
mod create;
mod error;
pub mod lease;
mod operate;
mod plan;
mod snapshot;
mod upkeep;
mod webhooks;

pub use audit::{AuditSettings, EventPage, EventsFrom};
pub use error::{Class, Result, ServiceError};
pub use lease::{Lease, Leases};
pub use operate::Env;
pub use plan::{CreateSpec, Defaults};
pub use snapshot::TargetView;
pub use upkeep::{run_upkeep, SweepReport, SweptEnv, NO_WARM_UP_ENV};
pub use webhooks::run_deliveries;

use crate::backend::registry::Target;
use crate::blueprint::Blueprint;
use crate::bounds::Deadline;
use crate::domain::InvalidInput;
use crate::domain::Secret;
use crate::metrics::{Metrics, Operation};
use crate::store::{EnvRecord, Sealer, Store};
use lease::Stop;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Environments {
    store: Store,
    leases: Arc<Leases>,
    sealer: Sealer,
    targets: BTreeMap<String, Target>,
    blueprints: BTreeMap<String, Arc<Blueprint>>,
    defaults: Defaults,
    metrics: Metrics,
    probe: tokio::sync::Mutex<snapshot::Probe>,
    audit: AuditSettings,
}

impl Environments {
    pub fn new(
        store: Store,
        sealer: Sealer,
        targets: Vec<Target>,
        blueprints: Vec<Blueprint>,
        defaults: Defaults,
        audit: AuditSettings,
    ) -> Arc<Self> {
        let store = store.with_webhooks(audit.webhooks.clone());
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
            probe: Default::default(),
            audit,
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
            .operation(operation, outcome.unwrap_or_else(ServiceError::outcome));
    }

    pub fn blueprints(&self) -> impl Iterator<Item = &Arc<Blueprint>> {
        self.blueprints.values()
    }

    fn target(&self, name: &str) -> Result<&Target> {
        self.targets
            .get(name)
            .ok_or_else(|| InvalidInput::new("target", format!("no target named {name:?}")).into())
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

/// `tokio::spawn`, the task logging in the caller's span: what a request's work does in a task
/// of its own carries the request's id. Background upkeep has no span to give.
pub(crate) fn spawn_in_span<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(work.instrument(tracing::Span::current()))
}

/// Waits for an operation run in a task of its own (so that a caller hanging up cannot stop
/// it halfway).
async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await
        .map_err(|e| ServiceError::Internal(format!("task failed: {e}")))?
}
