//! Targets built from their `[targets.NAME]` configuration: the one place that knows which
//! backend implements which kind, and what each needs to start.

use super::neon::NeonBackend;
use super::postgres::{PostgresBackend, ServiceSettings};
use super::{Backend, Capabilities};
use crate::bounds::WorkQueue;
use crate::configuration::{Config, TargetConfig};
use crate::domain::Secret;
use crate::store::{Sealer, Store};
use std::sync::Arc;
use std::time::Duration;

/// A provisioning backend as configured under `[targets.NAME]`.
pub struct Target {
    pub name: String,
    pub backend: Arc<dyn Backend>,
    /// Read once from the backend: they do not change while it runs.
    pub capabilities: Capabilities,
    pub max_environments: u32,
    /// Longest a create, reset or migrate on this target may take.
    pub provision_timeout: Duration,
    /// Where heavy work on this target waits for its turn, by kind of work.
    pub queues: Vec<(&'static str, Arc<WorkQueue>)>,
}

impl Target {
    fn new(
        name: &str,
        backend: Arc<dyn Backend>,
        max_environments: u32,
        provision_timeout: Duration,
    ) -> Self {
        Self {
            name: name.to_owned(),
            capabilities: backend.capabilities(),
            queues: backend.queues(),
            backend,
            max_environments,
            provision_timeout,
        }
    }
}

/// Builds every configured target. A target that cannot be reached yet is built anyway (it is
/// reported unhealthy until it answers); a configuration it cannot use is an error.
pub async fn build_targets(config: &Config, store: &Store) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    for (name, t) in &config.targets {
        targets.push(match t {
            TargetConfig::Postgres(pg) => {
                let settings = ServiceSettings {
                    builder_password: builder_password(config.encryption_key.expose()),
                    provision_timeout: config.provision_timeout,
                    orphan_grace: config.orphan_grace,
                    target: name.clone(),
                    store: store.clone(),
                    sealer: Sealer::new(config.encryption_key.expose()),
                };
                let backend = PostgresBackend::new(pg.clone(), settings)?;
                harden(name, &backend).await;
                let timeout = pg.provision_timeout.unwrap_or(config.provision_timeout);
                Target::new(name, Arc::new(backend), pg.max_environments, timeout)
            }
            TargetConfig::Neon(n) => {
                let backend = Arc::new(NeonBackend::new(name, n)?);
                Target::new(name, backend, n.max_environments, config.provision_timeout)
            }
        });
    }
    Ok(targets)
}

/// Takes CONNECT from PUBLIC on the cluster's other databases; an unreachable cluster is
/// hardened by its next start.
async fn harden(name: &str, backend: &PostgresBackend) {
    match backend.harden().await {
        Ok(revoked) if !revoked.is_empty() => {
            tracing::info!(target = %name, databases = ?revoked, "revoked PUBLIC CONNECT")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(target = %name, error = %e, "target not reachable at start-up"),
    }
}

/// The password `previewdb_builder` logs in with, derived from the key every replica shares
/// (so that each can set it and all can use it) and useless without that key.
fn builder_password(encryption_key: &[u8; 32]) -> Secret {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"previewdb:builder-password:");
    h.update(encryption_key);
    Secret::new(hex::encode(h.finalize()))
}
