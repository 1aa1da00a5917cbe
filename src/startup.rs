//! Builds the application from its configuration: store, targets, background work, HTTP server.

use crate::backend::registry::build_targets;
use crate::configuration::{Config, ListenerTls, LogFormat};
use crate::http::{router, AppState};
use crate::service::{Defaults, Environments};
use crate::store::{Sealer, Store};
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Application {
    listener: TcpListener,
    tls: Option<ListenerTls>,
    router: axum::Router,
    envs: Arc<Environments>,
    upkeep_interval: std::time::Duration,
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let store = Store::open(config.control_url.expose()).await?;
        let targets = build_targets(config, &store).await?;
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
            config.audit.clone(),
        );
        let state = AppState {
            envs: envs.clone(),
            tokens: Arc::new(config.tokens.clone()),
        };
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            tls: config.tls.clone(),
            router: router(state, config.max_body_bytes),
            envs,
            upkeep_interval: config.upkeep_interval,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// `https` when the listener speaks TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn environments(&self) -> Arc<Environments> {
        self.envs.clone()
    }

    /// Serves until `shutdown` resolves, sweeping and reconciling in the background.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let lifecycle = tokio::spawn(crate::service::run_upkeep(
            self.envs.clone(),
            self.upkeep_interval,
        ));
        let deliveries = tokio::spawn(crate::service::run_deliveries(self.envs.clone()));
        let result = match &self.tls {
            Some(tls) => {
                let listener = crate::listener::TlsListener::new(self.listener, tls)?;
                axum::serve(listener, self.router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => {
                axum::serve(self.listener, self.router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        lifecycle.abort();
        deliveries.abort();
        Ok(result?)
    }
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`): text with colours only
/// when stderr is a terminal (and `NO_COLOR` is unset), or one JSON object a line with the
/// event's fields under `fields` (not at the top level, where a field named `target` would
/// clash with the event's target) and the spans it happened in (`request` carries the request
/// id) under `spans`. Statement texts of the PostgreSQL driver stay at `debug` and below, and
/// our own code never logs passwords.
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
