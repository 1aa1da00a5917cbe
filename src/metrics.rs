//! Prometheus metrics for `GET /metrics`. One idea: counters and histograms are recorded by the
//! service where an outcome is known, gauges are read afresh from the control store and the
//! targets at scrape time, and label values are only names from the configuration (targets,
//! blueprints) or fixed words (states, operations, outcomes, routes) — never an environment's
//! key, labels, credentials or a request's raw path.

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};
use std::time::Duration;

/// The OpenMetrics text format, which Prometheus scrapes natively.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Environments are handed out warm in milliseconds, cold in a few hundred, and a template build
/// on the way takes seconds.
const CREATE_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    /// The webhook's configured name.
    webhook: String,
    /// `delivered` or `failed` (an attempt that will be retried).
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metrics one process records; gauges of shared state are added at each scrape.
pub struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    create_duration: Histograms<CreateLabels>,
    sweep_deleted: Counter,
    sweep_failed: Counter,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<RouteLabels>,
    webhook_deliveries: Family<WebhookLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("previewdb");
        let operations = registered(
            &mut registry,
            "operations",
            "Operations on environments by outcome: created, existing, ok, conflict, rejected \
             (the caller's input), limit_reached, error (the service's or a target's)",
            Family::<OperationLabels, Counter>::default(),
        );
        let create_duration = registered_in_seconds(
            &mut registry,
            "create_duration",
            "Time to answer a successful create: created (warm from the pool, cold, or with a \
             template build) or existing",
            Histograms::<CreateLabels>::new_with_constructor(|| Histogram::new(CREATE_BUCKETS)),
        );
        let sweep_deleted = registered(
            &mut registry,
            "sweep_deleted",
            "Expired environments torn down by a sweep of this process",
            Counter::default(),
        );
        let sweep_failed = registered(
            &mut registry,
            "sweep_failed",
            "Expired environments a sweep of this process failed to tear down",
            Counter::default(),
        );
        let requests = registered(
            &mut registry,
            "http_requests",
            "HTTP requests by method, matched route and status",
            Family::<RequestLabels, Counter>::default(),
        );
        let request_duration = registered_in_seconds(
            &mut registry,
            "http_request_duration",
            "HTTP request latency by method and matched route",
            Histograms::<RouteLabels>::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
        );
        let webhook_deliveries = registered(
            &mut registry,
            "webhook_deliveries",
            "Webhook delivery attempts of this process by webhook and outcome (delivered, failed)",
            Family::<WebhookLabels, Counter>::default(),
        );
        registered(
            &mut registry,
            "build_info",
            "Always 1; its label is the version of this build",
            Family::<BuildLabels, Gauge>::default(),
        )
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        Self {
            registry,
            operations,
            create_duration,
            sweep_deleted,
            sweep_failed,
            requests,
            request_duration,
            webhook_deliveries,
        }
    }

    /// A webhook delivery attempt: `delivered` or `failed`.
    pub fn webhook_delivery(&self, webhook: &str, outcome: &'static str) {
        self.webhook_deliveries
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts an operation that ended in `outcome` (`ok`, `created`, `existing`, or the
    /// outcome of its error: `conflict`, `rejected`, `limit_reached`, `error`).
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

/// Shared state as the service read it for one scrape.
pub struct Snapshot {
    /// Environments by (target, state), zeros included; `None` when the control store did not
    /// answer.
    pub environments: Option<Vec<(String, &'static str, i64)>>,
    /// Locked environments by target, zeros included; `None` when not answered.
    pub locked: Option<Vec<(String, i64)>>,
    /// Webhook deliveries not made yet; `None` when not answered.
    pub webhook_backlog: Option<i64>,
    pub targets: Vec<TargetFigures>,
    /// The warm pool of every blueprint on every target that builds templates and answered.
    pub pools: Vec<PoolFigures>,
    /// `None` where `/proc/self` cannot be read (not Linux).
    pub process: Option<ProcessFigures>,
}

/// This process as Linux's `/proc` shows it, for the `process_*` series every Prometheus client
/// exports under the same names. Read by hand: prometheus-client, unlike the Go and Java
/// clients, has no process collector, and these are a few lines of `/proc` — no crate (and no
/// `unsafe` `sysconf`) needed for them.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessFigures {
    /// Resident set size (`VmRSS` of `/proc/self/status`).
    pub resident_memory_bytes: u64,
    /// User and system CPU time (`utime` + `stime` of `/proc/self/stat`).
    pub cpu_seconds: f64,
    /// Entries of `/proc/self/fd`, less the one reading it.
    pub open_fds: u64,
    /// Since the Unix epoch: boot time (`btime` of `/proc/stat`) plus `starttime`.
    pub start_time_seconds: f64,
}

/// The kernel reports `/proc` times in clock ticks of `USER_HZ`, which is 100 on every
/// architecture Linux's user ABI fixes it for (Prometheus' Go `procfs` hard-codes it too).
const USER_HZ: f64 = 100.0;

impl ProcessFigures {
    /// Reads this process's figures now; `None` if `/proc` is missing or unreadable.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let system = std::fs::read_to_string("/proc/stat").ok()?;
        let fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Self::parse(&status, &stat, &system, fds)
    }

    /// The figures from the texts of `/proc/self/status`, `/proc/self/stat` and `/proc/stat`,
    /// and the number of entries listed in `/proc/self/fd` (while it was open).
    fn parse(status: &str, stat: &str, system: &str, fd_entries: usize) -> Option<Self> {
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        // The command name (field 2) is in parentheses and may hold spaces and parentheses:
        // the fields counted here start after the last `)`, at field 3 (`state`).
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let (utime, stime, starttime) = (field(14)?, field(15)?, field(22)?);
        let boot: f64 = system
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            resident_memory_bytes: rss_kb * 1024,
            cpu_seconds: (utime + stime) / USER_HZ,
            open_fds: fd_entries.saturating_sub(1) as u64,
            start_time_seconds: boot + starttime / USER_HZ,
        })
    }
}

pub struct TargetFigures {
    pub name: String,
    /// Whether it answered its last health check.
    pub up: bool,
    pub max_environments: u32,
    /// (queue, waiting, running) of each of its work queues.
    pub queues: Vec<(&'static str, usize, usize)>,
}

#[derive(Clone)]
pub struct PoolFigures {
    pub target: String,
    pub blueprint: String,
    pub ready: usize,
    pub size: u32,
}

/// The exposition: this process's counters and histograms, then the gauges of `snapshot`.
pub(crate) fn render(metrics: &Metrics, snapshot: &Snapshot) -> String {
    let mut scrape = Registry::with_prefix("previewdb");
    register_environments(&mut scrape, snapshot);
    register_targets(&mut scrape, snapshot);
    register_pools(&mut scrape, snapshot);
    let mut process = Registry::with_prefix("process");
    if let Some(figures) = &snapshot.process {
        register_process(&mut process, figures);
    }
    let mut out = String::new();
    text::encode_registry(&mut out, &metrics.registry)
        .and_then(|()| text::encode_registry(&mut out, &scrape))
        .and_then(|()| text::encode_registry(&mut out, &process))
        .and_then(|()| text::encode_eof(&mut out))
        .expect("writing to a String cannot fail");
    out
}

fn register_environments(scrape: &mut Registry, snapshot: &Snapshot) {
    let store_up = registered(
        scrape,
        "control_store_up",
        "1 if the control store answered this scrape",
        Gauge::<i64>::default(),
    );
    let environments = registered(
        scrape,
        "environments",
        "Environments in the control store by target and state (deleted ones are tombstones)",
        Family::<EnvironmentLabels, Gauge>::default(),
    );
    if let Some(rows) = &snapshot.environments {
        store_up.set(1);
        for (target, state, n) in rows {
            let labels = EnvironmentLabels {
                target: target.clone(),
                state,
            };
            environments.get_or_create(&labels).set(*n);
        }
    }
    let locked = registered(
        scrape,
        "environments_locked",
        "Ready environments whose logins are refused because they are over their size quota",
        Family::<TargetLabels, Gauge>::default(),
    );
    for (target, n) in snapshot.locked.iter().flatten() {
        let labels = TargetLabels {
            target: target.clone(),
        };
        locked.get_or_create(&labels).set(*n);
    }
    let backlog = registered(
        scrape,
        "webhook_backlog",
        "Webhook deliveries in the outbox not made yet (all replicas)",
        Gauge::<i64>::default(),
    );
    backlog.set(snapshot.webhook_backlog.unwrap_or(0));
}

fn register_targets(scrape: &mut Registry, snapshot: &Snapshot) {
    let queued = registered(
        scrape,
        "provision_queue_waiting",
        "Requests waiting for a place in the target's queue of heavy work",
        Family::<QueueLabels, Gauge>::default(),
    );
    let running = registered(
        scrape,
        "provision_queue_running",
        "Heavy work (cold clones, builds, migrations, resets, refills) running on the target",
        Family::<QueueLabels, Gauge>::default(),
    );
    let target_up = registered(
        scrape,
        "target_up",
        "1 if the target answered its health check (probed at most every 5 s)",
        Family::<TargetLabels, Gauge>::default(),
    );
    let max_environments = registered(
        scrape,
        "target_max_environments",
        "The configured max_environments of the target",
        Family::<TargetLabels, Gauge>::default(),
    );
    for t in &snapshot.targets {
        for (queue, waiting, busy) in &t.queues {
            let labels = QueueLabels {
                target: t.name.clone(),
                queue,
            };
            queued.get_or_create(&labels).set(*waiting as i64);
            running.get_or_create(&labels).set(*busy as i64);
        }
        let labels = TargetLabels {
            target: t.name.clone(),
        };
        target_up.get_or_create(&labels).set(i64::from(t.up));
        max_environments
            .get_or_create(&labels)
            .set(i64::from(t.max_environments));
    }
}

fn register_pools(scrape: &mut Registry, snapshot: &Snapshot) {
    let pool_ready = registered(
        scrape,
        "pool_ready",
        "Databases waiting in the blueprint's warm pool on the target",
        Family::<PoolLabels, Gauge>::default(),
    );
    let pool_size = registered(
        scrape,
        "pool_size",
        "The configured pool_size of the blueprint",
        Family::<PoolLabels, Gauge>::default(),
    );
    for p in &snapshot.pools {
        let labels = PoolLabels {
            target: p.target.clone(),
            blueprint: p.blueprint.clone(),
        };
        pool_ready
            .get_or_create(&labels)
            .set(i64::try_from(p.ready).unwrap_or(i64::MAX));
        pool_size.get_or_create(&labels).set(i64::from(p.size));
    }
}

/// The standard `process_*` series (`registry` has the prefix `process`).
fn register_process(registry: &mut Registry, p: &ProcessFigures) {
    registry.register_with_unit(
        "resident_memory",
        "Resident memory size in bytes",
        Unit::Bytes,
        ConstGauge::new(p.resident_memory_bytes),
    );
    registry.register_with_unit(
        "cpu",
        "Total user and system CPU time spent in seconds",
        Unit::Seconds,
        ConstCounter::new(p.cpu_seconds),
    );
    registry.register(
        "open_fds",
        "Number of open file descriptors",
        ConstGauge::new(p.open_fds),
    );
    registry.register_with_unit(
        "start_time",
        "Start time of the process since the Unix epoch in seconds",
        Unit::Seconds,
        ConstGauge::new(p.start_time_seconds),
    );
}

/// `metric`, registered in `registry`; the returned handle records into what the registry
/// encodes.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// [`registered`] with its unit, seconds, in the name.
fn registered_in_seconds<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read_from_proc_texts() {
        let status = "Name:\tpreviewdb\nVmPeak:\t  9000 kB\nVmRSS:\t   20480 kB\nThreads:\t5\n";
        // A command name with a space and a parenthesis, as the kernel shows it.
        let stat = "4242 (pre view) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 \
                    12345 1000000 5000 18446744073709551615";
        let system = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let p = ProcessFigures::parse(status, stat, system, 8).unwrap();
        assert_eq!(
            p,
            ProcessFigures {
                resident_memory_bytes: 20480 * 1024,
                cpu_seconds: 3.0,
                open_fds: 7,
                start_time_seconds: 1_700_000_123.45,
            }
        );
        assert_eq!(
            ProcessFigures::parse("VmRSS: 1 MB\n", stat, system, 1),
            None
        );
        assert_eq!(
            ProcessFigures::parse(status, "4242 (x) S 1", system, 1),
            None
        );
    }
}
