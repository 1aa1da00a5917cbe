//! Builds the application from its configuration: store, targets, background work, HTTP server.

use crate::backend::postgres::{PostgresBackend, ServiceSettings};
use crate::backend::Backend;
use crate::configuration::{Config, TargetConfig};
use crate::environments::{Defaults, Environments, Target};
use crate::http::{router, AppState};
use crate::store::{Sealer, Store};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    envs: Arc<Environments>,
    upkeep_interval: std::time::Duration,
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let store = Store::open(config.control_url.expose()).await?;
        let mut targets = Vec::new();
        for (name, t) in &config.targets {
            let mut queues = vec![];
            let mut provision_timeout = config.provision_timeout;
            let (kind, backend, max): (&'static str, Arc<dyn Backend>, u32) = match t {
                TargetConfig::Postgres(pg) => {
                    let backend = PostgresBackend::new(
                        pg.clone(),
                        ServiceSettings {
                            builder_password: builder_password(config.encryption_key.expose()),
                            provision_timeout: config.provision_timeout,
                            orphan_grace: config.orphan_grace,
                            target: name.clone(),
                            store: store.clone(),
                            sealer: Sealer::new(config.encryption_key.expose()),
                        },
                    )?;
                    queues = backend.queues();
                    provision_timeout = pg.provision_timeout.unwrap_or(provision_timeout);
                    match backend.harden().await {
                        Ok(revoked) if !revoked.is_empty() => {
                            tracing::info!(target = %name, databases = ?revoked, "revoked PUBLIC CONNECT")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(target = %name, error = %e, "target not reachable at start-up")
                        }
                    }
                    ("postgres", Arc::new(backend), pg.max_environments)
                }
                TargetConfig::Neon(n) => (
                    "neon",
                    Arc::new(crate::backend::neon::NeonBackend::new(name, n)?),
                    n.max_environments,
                ),
            };
            targets.push(Target {
                name: name.clone(),
                kind,
                backend,
                max_environments: max,
                provision_timeout,
                queues,
            });
        }
        let blueprints = config.blueprints.values().cloned().collect();
        let defaults = Defaults {
            target: config.default_target.clone(),
            blueprint: config.default_blueprint.clone(),
            ttl: config.default_ttl,
            max_ttl: config.max_ttl,
        };
        let envs = Environments::new(
            store,
            Sealer::new(config.encryption_key.expose()),
            targets,
            blueprints,
            defaults,
        );
        let state = AppState {
            envs: envs.clone(),
            tokens: Arc::new(config.tokens.clone()),
        };
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            router: router(state, config.max_body_bytes),
            envs,
            upkeep_interval: config.upkeep_interval,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn environments(&self) -> Arc<Environments> {
        self.envs.clone()
    }

    /// Serves until `shutdown` resolves, sweeping and reconciling in the background.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let lifecycle = tokio::spawn(crate::lifecycle::run(
            self.envs.clone(),
            self.upkeep_interval,
        ));
        let result = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        lifecycle.abort();
        Ok(result?)
    }
}

/// The password `previewdb_builder` logs in with, derived from the key every replica shares
/// (so that each can set it and all can use it) and useless without that key.
fn builder_password(encryption_key: &[u8; 32]) -> crate::domain::Secret {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"previewdb:builder-password:");
    h.update(encryption_key);
    crate::domain::Secret::new(hex::encode(h.finalize()))
}

/// Logs as text to stderr, filtered by `RUST_LOG` (default `info`). Statement texts of the
/// PostgreSQL driver stay at `debug` and below, and our own code never logs passwords.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
