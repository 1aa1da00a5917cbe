//! Provisioning backends: where an environment's data and credentials actually live.
//!
//! Every backend follows the same protocol, driven by the environment service:
//! `plan` names everything that will be created (recorded before anything exists, so a crash
//! can be rolled back), `provision` creates it, and `teardown` removes it idempotently — it
//! must succeed on resources that were only planned, half-made, or already gone.

pub mod neon;
pub mod postgres;
pub mod registry;

use crate::blueprint::Blueprint;
use crate::bounds::{Deadline, QueueFull, WorkQueue};
use crate::domain::{Connection, EnvKey, InvalidInput, Isolation, Resources, Secret, SourceFile};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// What an environment is asked to be.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub id: Uuid,
    pub key: EnvKey,
    pub isolation: Isolation,
    pub expires_at: DateTime<Utc>,
    /// What the environment starts as; `None` for an empty database (or a Neon parent branch).
    pub blueprint: Option<Arc<Blueprint>>,
    /// The caller's own migrations, applied on top of the blueprint in its format.
    pub migrations: Vec<SourceFile>,
    /// By when the environment must be ready; every wait and statement is bounded by it.
    pub deadline: Deadline,
}

/// The state of a target as seen from previewdb.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetHealth {
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The target cannot be reached right now; the caller may retry.
    #[error("target unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The target refuses because a limit was reached (e.g. Neon's branch limit).
    #[error("{message}")]
    LimitReached { message: String },
    /// The request cannot be served as asked (e.g. an isolation the backend lacks); names the
    /// request's field.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The target answered with an error.
    #[error("{message}")]
    Failed {
        message: String,
        /// The server's error code, when the target is a PostgreSQL server: what callers
        /// branch on, never the message text.
        sqlstate: Option<tokio_postgres::error::SqlState>,
    },
    /// A blueprint's files failed to build into a template (file, line, server message).
    #[error("blueprint {blueprint:?} failed to build: {message}")]
    Blueprint { blueprint: String, message: String },
    /// The caller's migrations failed (file, line, server message).
    #[error("migration failed: {message}")]
    Migration { message: String },
    /// The target's work queue is full; the caller may retry after `retry_after`.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after: Duration,
    },
    /// The work did not finish within its deadline (and was cancelled).
    #[error("{message}")]
    Deadline { message: String },
}

impl BackendError {
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            sqlstate: None,
        }
    }
}

impl From<crate::domain::ForeignResources> for BackendError {
    fn from(e: crate::domain::ForeignResources) -> Self {
        BackendError::failed(e.to_string())
    }
}

impl From<QueueFull> for BackendError {
    fn from(e: QueueFull) -> Self {
        match e {
            QueueFull::Full { retry_after, .. } => BackendError::Busy {
                message: format!("target busy: {e}"),
                retry_after,
            },
            QueueFull::Expired { .. } => BackendError::Deadline {
                message: e.to_string(),
            },
        }
    }
}

/// What a backend offers. The service decides by these, never by the target's kind.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// The `kind` of `[targets.NAME]`, as `/v1/targets` shows it.
    pub kind: &'static str,
    /// Isolations offered; the first is the default.
    pub isolations: &'static [Isolation],
    /// Whether environments are made from blueprints (and the default blueprint applies).
    pub blueprints: Support,
    /// Whether the caller's migrations are applied, on create and on `/migrate`.
    pub migrations: Support,
    /// Whether sizes are measured and environments over their quota locked out.
    pub quotas: bool,
}

/// Whether a backend does something; if not, why, in words for the caller who asked for it
/// (completing "target NAME …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Yes,
    No(&'static str),
}

impl Support {
    pub fn is_yes(self) -> bool {
        self == Support::Yes
    }
}

/// One target kind. Implementations must keep caller strings out of SQL and credentials out of
/// logs and error messages.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    fn capabilities(&self) -> Capabilities;

    /// The work queues of this target, by what waits in them (for their figures in `/metrics`).
    fn queues(&self) -> Vec<(&'static str, Arc<WorkQueue>)> {
        vec![]
    }

    /// Names everything `provision` will create for this request.
    fn plan(&self, req: &ProvisionRequest) -> Result<Resources, BackendError>;

    /// Creates the environment. May add ids learnt on the way to `resources`. On failure, what
    /// was created is removed before returning (the service also runs `teardown` as a backstop).
    async fn provision(
        &self,
        req: &ProvisionRequest,
        resources: &mut Resources,
    ) -> Result<Connection, BackendError>;

    /// Finishes a provision that an earlier process started and never recorded (it crashed).
    /// By default the leftovers are removed and the environment is made anew; backends that
    /// can find and adopt what was made (a Neon branch by name) do that instead.
    async fn resume(
        &self,
        req: &ProvisionRequest,
        resources: &mut Resources,
    ) -> Result<Connection, BackendError> {
        self.teardown(resources).await?;
        self.provision(req, resources).await
    }

    /// Revokes credentials, ends sessions and removes the data. Idempotent.
    async fn teardown(&self, resources: &Resources) -> Result<(), BackendError>;

    /// The first half of a teardown, for a delete that answers before the data is gone:
    /// nobody can reach the environment any more (credentials revoked, sessions ended) when
    /// this returns. Answers whether data is left for a `teardown` to remove; the default is a
    /// whole teardown, leaving nothing.
    async fn lock_out(&self, resources: &Resources) -> Result<bool, BackendError> {
        self.teardown(resources).await?;
        Ok(false)
    }

    /// Moves the credentials' expiry along with the environment's.
    async fn extend(
        &self,
        resources: &Resources,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError>;

    /// Replaces the password; the old one stops working at once. Returns the new connection.
    async fn rotate_credentials(
        &self,
        resources: &Resources,
        expires_at: DateTime<Utc>,
    ) -> Result<Connection, BackendError>;

    /// Returns the environment's data to its starting point, keeping its credentials
    /// (`password` is the current one: blueprint files may run logged in as the environment).
    async fn reset(
        &self,
        resources: &Resources,
        blueprint: Option<&Arc<Blueprint>>,
        password: &Secret,
        deadline: &Deadline,
    ) -> Result<(), BackendError>;

    async fn health(&self) -> TargetHealth;

    /// The content hash a blueprint's template has on this target.
    async fn blueprint_hash(&self, _blueprint: &Blueprint) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    /// Builds the blueprint's template now and fills its pool.
    async fn prepare(&self, blueprint: &Arc<Blueprint>) -> Result<BlueprintStatus, BackendError> {
        Ok(self.blueprint_status(blueprint).await)
    }

    async fn blueprint_status(&self, _blueprint: &Arc<Blueprint>) -> BlueprintStatus {
        BlueprintStatus::default()
    }

    /// Applies more of the caller's migrations to a live environment, keeping its data. They
    /// run logged in as the environment's role, with `password`. Only called where
    /// `capabilities().migrations` says so.
    async fn migrate(
        &self,
        _resources: &Resources,
        _blueprint: Option<&Blueprint>,
        _migrations: &[SourceFile],
        _password: &Secret,
        _deadline: &Deadline,
    ) -> Result<usize, BackendError> {
        Err(InvalidInput::new("migrations", "this target does not apply migrations").into())
    }

    /// Drops templates and pooled databases of blueprint hashes not in `keep` (those of
    /// blueprints not in `known`, by name, only when long unused), and anything carrying
    /// previewdb's name prefix that neither `accounted` (the resources of every record that may
    /// still own something) nor a pool accounts for, once it has been seen so for a grace period.
    async fn collect_garbage(
        &self,
        _keep: &[String],
        _known: &[String],
        _accounted: &[Resources],
    ) -> Result<Vec<String>, BackendError> {
        Ok(vec![])
    }

    /// The size quota of an environment made from `blueprint`, if any.
    fn quota_for(&self, _blueprint: Option<&Blueprint>) -> Option<u64> {
        None
    }

    /// The size in bytes of each environment (by its index in `envs`) that could be measured.
    async fn measure(&self, _envs: &[&Resources]) -> Result<Vec<(usize, i64)>, BackendError> {
        Ok(vec![])
    }

    /// Refuses the environment's logins and ends its sessions (`locked`), or lets it log in
    /// again. Only called where `capabilities().quotas` says so.
    async fn set_locked(&self, _resources: &Resources, _locked: bool) -> Result<(), BackendError> {
        Err(BackendError::failed("this target cannot lock environments"))
    }
}

/// A blueprint's state on one target.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BlueprintStatus {
    pub hash: Option<String>,
    /// `absent`, `building`, `ready` or `failed`; `unsupported` where the target has no templates.
    pub template: String,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pool_ready: usize,
    pub pool_size: u32,
}

/// Builds a PostgreSQL object name from an environment key: `pdb_env_<slug>_<hash>`, where the
/// slug is the key in `[a-z0-9_]` (readable in `\l`) and the hash of `key` and `salt` keeps two
/// keys — or two lives of one key, when the salt is the environment id — from ever colliding.
/// Always below 63 bytes. `pdb_env_` sets environments apart from previewdb's other objects
/// (see `backend::postgres::names`), whatever the key.
pub fn object_name(key: &EnvKey, salt: &str) -> crate::domain::PgIdent {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(key.as_str().as_bytes());
    h.update([0]);
    h.update(salt.as_bytes());
    let hash = hex::encode(&h.finalize()[..6]);
    let slug = key.slug(40);
    let name = if slug.is_empty() {
        format!("pdb_env_{hash}")
    } else {
        format!("pdb_env_{slug}_{hash}")
    };
    crate::domain::PgIdent::parse(&name).expect("generated names are valid identifiers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_safe_capped_and_distinct() {
        let a = EnvKey::parse("acme/web#123").unwrap();
        let b = EnvKey::parse("acme/web#123 ")
            .unwrap_or_else(|_| EnvKey::parse("acme/web/123").unwrap());
        assert!(object_name(&a, "x")
            .as_str()
            .starts_with("pdb_env_acme_web_123_"));
        assert_ne!(object_name(&a, "x"), object_name(&b, "x"));
        assert_ne!(object_name(&a, "x"), object_name(&a, "y"));
        let long = EnvKey::parse(&"é".repeat(200)).unwrap();
        assert!(object_name(&long, "").as_str().len() < 63);
        assert!(
            object_name(&EnvKey::parse(&"z".repeat(200)).unwrap(), "")
                .as_str()
                .len()
                < 63
        );
    }
}
