//! Builds the application from its configuration: store, targets, background work, HTTP server.

use crate::backend::postgres::PostgresBackend;
use crate::backend::Backend;
use crate::configuration::{Config, TargetConfig};
use crate::environments::{Environments, Target};
use crate::http::{router, AppState};
use crate::store::{Sealer, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often expired environments are swept and unfinished work is reconciled.
const LIFECYCLE_INTERVAL: Duration = Duration::from_secs(30);

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    envs: Arc<Environments>,
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let store = Store::open(&config.control_url).await?;
        let mut targets = Vec::new();
        for (name, t) in &config.targets {
            let (kind, backend, max): (&'static str, Arc<dyn Backend>, u32) = match t {
                TargetConfig::Postgres(pg) => {
                    let backend = PostgresBackend::new(pg.clone())?;
                    match backend.harden().await {
                        Ok(revoked) if !revoked.is_empty() => {
                            tracing::info!(target = %name, databases = ?revoked, "revoked PUBLIC CONNECT")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(target = %name, error = %e, "target not reachable at start-up"),
                    }
                    ("postgres", Arc::new(backend), pg.max_environments)
                }
                TargetConfig::Neon(n) => (
                    "neon",
                    Arc::new(crate::backend::neon::NeonBackend::new(name, n)?),
                    n.max_environments.unwrap_or(25),
                ),
            };
            targets.push(Target { name: name.clone(), kind, backend, max_environments: max });
        }
        let envs = Environments::new(
            store,
            Sealer::new(&config.encryption_key),
            targets,
            config.default_target.clone(),
            config.default_ttl,
            config.max_ttl,
        );
        let state = AppState { envs: envs.clone(), tokens: Arc::new(config.tokens.clone()) };
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self { listener, router: router(state, config.max_body_bytes), envs })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn environments(&self) -> Arc<Environments> {
        self.envs.clone()
    }

    /// Serves until `shutdown` resolves, sweeping and reconciling in the background.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let lifecycle = tokio::spawn(lifecycle_loop(self.envs.clone()));
        let result = axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await;
        lifecycle.abort();
        Ok(result?)
    }
}

/// Reconciles at start-up, then sweeps expired environments and retries unfinished clean-ups.
async fn lifecycle_loop(envs: Arc<Environments>) {
    loop {
        match envs.reconcile().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "reconciled unfinished environments"),
            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
        }
        match envs.sweep().await {
            Ok(r) if !r.deleted.is_empty() || !r.failed.is_empty() => {
                tracing::info!(deleted = r.deleted.len(), failed = r.failed.len(), "swept expired environments")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
        tokio::time::sleep(LIFECYCLE_INTERVAL).await;
    }
}

/// Logs as text to stderr, filtered by `RUST_LOG` (default `info`). Statement texts of the
/// PostgreSQL driver stay at `debug` and below, and our own code never logs passwords.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
