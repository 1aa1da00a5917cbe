//! Prometheus metrics for `GET /metrics`. One idea: counters and histograms are recorded by the
//! service where an outcome is known, gauges are read afresh from the control store and the
//! targets at scrape time, and label values are only names from the configuration (targets,
//! blueprints) or fixed words (states, operations, outcomes, routes) — never an environment's
//! key, labels, credentials or a request's raw path.

use crate::environments::{Environments, ServiceError};
use crate::store::State;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The OpenMetrics text format, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Environments are handed out warm in milliseconds, cold in a few hundred, and a template build
/// on the way takes seconds.
const CREATE_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long targets' health and pools, read at a scrape, are reused: `/metrics` needs no token,
/// so scraping it often must not turn into as many calls to a target (or to Neon's API).
const PROBE_TTL: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the service does to environments, counted in `previewdb_operations_total`.
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    Create,
    Delete,
    Extend,
    Reset,
    Migrate,
    Rotate,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Extend => "extend",
            Operation::Reset => "reset",
            Operation::Migrate => "migrate",
            Operation::Rotate => "rotate",
        }
    }
}

/// The outcome of a failed operation: the caller's doing (`rejected`, `conflict`), a quota
/// (`limit_reached`), or the service's or a target's (`error`), which is what to alert on.
pub fn error_outcome(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::Conflict(_) | ServiceError::Cancelled(_) => "conflict",
        ServiceError::Invalid(_)
        | ServiceError::NotFound(_)
        | ServiceError::NotReady(_)
        | ServiceError::Locked(_)
        | ServiceError::MigrationFailed(_) => "rejected",
        ServiceError::AtCapacity(_) | ServiceError::QueueFull { .. } => "limit_reached",
        ServiceError::Unavailable { .. }
        | ServiceError::DeadlineExceeded(_)
        | ServiceError::ProvisioningFailed(_)
        | ServiceError::BlueprintFailed(_)
        | ServiceError::Internal(_) => "error",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    target: String,
    /// `provision` (clones, builds, resets, refills) or `migration` (callers' migrations).
    queue: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CreateLabels {
    target: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabels {
    target: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    target: String,
    blueprint: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// What targets looked like at the last probe.
#[derive(Default)]
struct Probe {
    at: Option<Instant>,
    up: Vec<(String, bool)>,
    /// (target, blueprint, ready, size) of every blueprint on every target that builds templates.
    pools: Vec<(String, String, usize, u32)>,
}

/// The metrics one process records; gauges of shared state are added at each scrape.
pub struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    create_duration: Histograms<CreateLabels>,
    sweep_deleted: Counter,
    sweep_failed: Counter,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<RouteLabels>,
    probe: tokio::sync::Mutex<Probe>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("previewdb");
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "operations",
            "Operations on environments by outcome: created, existing, ok, conflict, rejected \
             (the caller's input), limit_reached, error (the service's or a target's)",
            operations.clone(),
        );
        let create_duration: Histograms<CreateLabels> =
            Family::new_with_constructor(|| Histogram::new(CREATE_BUCKETS));
        registry.register_with_unit(
            "create_duration",
            "Time to answer a successful create: created (warm from the pool, cold, or with a \
             template build) or existing",
            Unit::Seconds,
            create_duration.clone(),
        );
        let sweep_deleted = Counter::default();
        registry.register(
            "sweep_deleted",
            "Expired environments torn down by a sweep of this process",
            sweep_deleted.clone(),
        );
        let sweep_failed = Counter::default();
        registry.register(
            "sweep_failed",
            "Expired environments a sweep of this process failed to tear down",
            sweep_failed.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, matched route and status",
            requests.clone(),
        );
        let request_duration: Histograms<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency by method and matched route",
            Unit::Seconds,
            request_duration.clone(),
        );
        Self {
            registry,
            operations,
            create_duration,
            sweep_deleted,
            sweep_failed,
            requests,
            request_duration,
            probe: Default::default(),
        }
    }

    /// Counts an operation that ended in `outcome` (`ok`, `created`, `existing`, or one of
    /// [`error_outcome`]).
    pub fn operation(&self, operation: Operation, outcome: &'static str) {
        self.operations
            .get_or_create(&OperationLabels {
                operation: operation.as_str(),
                outcome,
            })
            .inc();
    }

    /// A successful create on `target` (a configured name), `created` or answered `existing`.
    pub fn create_answered(&self, target: &str, created: bool, took: Duration) {
        self.create_duration
            .get_or_create(&CreateLabels {
                target: target.to_owned(),
                outcome: if created { "created" } else { "existing" },
            })
            .observe(took.as_secs_f64());
    }

    /// An expired environment a sweep tore down (`true`) or failed to.
    pub fn swept(&self, deleted: bool) {
        match deleted {
            true => self.sweep_deleted.inc(),
            false => self.sweep_failed.inc(),
        };
    }

    /// An HTTP request; `route` must be a route template (or a fixed word), never a raw path.
    pub fn request(&self, method: &'static str, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                method,
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The exposition: this process's counters and histograms, then gauges read now from the
/// control store (environments by target and state) and, at most every few seconds, from the
/// targets (health, pools).
pub async fn render(envs: &Environments) -> String {
    let metrics = envs.metrics();
    let mut scrape = Registry::with_prefix("previewdb");

    let (counts, locked, probe) = tokio::join!(
        envs.store().count_by_target_and_state(),
        envs.store().count_locked(),
        async {
            let mut probe = metrics.probe.lock().await;
            if probe.at.is_none_or(|at| at.elapsed() >= PROBE_TTL) {
                *probe = probe_targets(envs).await;
            }
            (probe.up.clone(), probe.pools.clone())
        }
    );

    let store_up = Gauge::<i64>::default();
    scrape.register(
        "control_store_up",
        "1 if the control store answered this scrape",
        store_up.clone(),
    );
    let environments = Family::<EnvironmentLabels, Gauge>::default();
    scrape.register(
        "environments",
        "Environments in the control store by target and state (deleted ones are tombstones)",
        environments.clone(),
    );
    match counts {
        Ok(rows) => {
            store_up.set(1);
            let mut by: BTreeMap<(String, &'static str), i64> = envs
                .targets()
                .flat_map(|t| State::ALL.map(|s| ((t.name.clone(), s.as_str()), 0)))
                .collect();
            for (target, state, n) in rows {
                by.insert((target, state.as_str()), n);
            }
            for ((target, state), n) in by {
                environments
                    .get_or_create(&EnvironmentLabels { target, state })
                    .set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: control store did not answer"),
    }

    let locked_gauge = Family::<TargetLabels, Gauge>::default();
    scrape.register(
        "environments_locked",
        "Ready environments whose logins are refused because they are over their size quota",
        locked_gauge.clone(),
    );
    if let Ok(rows) = locked {
        let mut by: BTreeMap<String, i64> = envs.targets().map(|t| (t.name.clone(), 0)).collect();
        by.extend(rows);
        for (target, n) in by {
            locked_gauge.get_or_create(&TargetLabels { target }).set(n);
        }
    }
    let queued = Family::<QueueLabels, Gauge>::default();
    scrape.register(
        "provision_queue_waiting",
        "Requests waiting for a place in the target's queue of heavy work",
        queued.clone(),
    );
    let running = Family::<QueueLabels, Gauge>::default();
    scrape.register(
        "provision_queue_running",
        "Heavy work (cold clones, builds, migrations, resets, refills) running on the target",
        running.clone(),
    );
    for t in envs.targets() {
        for (queue, q) in &t.queues {
            let labels = QueueLabels {
                target: t.name.clone(),
                queue,
            };
            queued.get_or_create(&labels).set(q.queued() as i64);
            running.get_or_create(&labels).set(q.running() as i64);
        }
    }

    let (up, pools) = probe;
    let target_up = Family::<TargetLabels, Gauge>::default();
    scrape.register(
        "target_up",
        "1 if the target answered its health check (probed at most every 5 s)",
        target_up.clone(),
    );
    for (target, healthy) in up {
        target_up
            .get_or_create(&TargetLabels { target })
            .set(i64::from(healthy));
    }
    let max_environments = Family::<TargetLabels, Gauge>::default();
    scrape.register(
        "target_max_environments",
        "The configured max_environments of the target",
        max_environments.clone(),
    );
    for t in envs.targets() {
        max_environments
            .get_or_create(&TargetLabels {
                target: t.name.clone(),
            })
            .set(i64::from(t.max_environments));
    }
    let pool_ready = Family::<PoolLabels, Gauge>::default();
    scrape.register(
        "pool_ready",
        "Databases waiting in the blueprint's warm pool on the target",
        pool_ready.clone(),
    );
    let pool_size = Family::<PoolLabels, Gauge>::default();
    scrape.register(
        "pool_size",
        "The configured pool_size of the blueprint",
        pool_size.clone(),
    );
    for (target, blueprint, ready, size) in pools {
        let labels = PoolLabels { target, blueprint };
        pool_ready
            .get_or_create(&labels)
            .set(i64::try_from(ready).unwrap_or(i64::MAX));
        pool_size.get_or_create(&labels).set(i64::from(size));
    }

    let mut out = String::new();
    text::encode_registry(&mut out, &metrics.registry)
        .and_then(|()| text::encode_registry(&mut out, &scrape))
        .and_then(|()| text::encode_eof(&mut out))
        .expect("writing to a String cannot fail");
    out
}

/// Health of every target and pool fill of every blueprint on targets that build templates,
/// all at once, each bounded in time.
async fn probe_targets(envs: &Environments) -> Probe {
    use futures_util::future::join_all;
    let up = join_all(envs.targets().map(|t| async move {
        let healthy = tokio::time::timeout(PROBE_TIMEOUT, t.backend.health())
            .await
            .is_ok_and(|h| h.healthy);
        (t.name.clone(), healthy)
    }));
    let pools = join_all(
        envs.targets()
            .filter(|t| t.capabilities.blueprints.is_yes())
            .flat_map(|t| envs.blueprints().map(move |bp| (t, bp)))
            .map(|(t, bp)| async move {
                let status = tokio::time::timeout(PROBE_TIMEOUT, t.backend.blueprint_status(bp))
                    .await
                    .ok()?;
                // Without a hash the target was not reached: no figure rather than a false 0.
                status.hash.as_ref()?;
                Some((
                    t.name.clone(),
                    bp.name.to_string(),
                    status.pool_ready,
                    status.pool_size,
                ))
            }),
    );
    let (up, pools) = tokio::join!(up, pools);
    Probe {
        at: Some(Instant::now()),
        up,
        pools: pools.into_iter().flatten().collect(),
    }
}
