//! Provisioning backends: where an environment's data and credentials actually live.
//!
//! Every backend follows the same protocol, driven by the environment service:
//! `plan` names everything that will be created (recorded before anything exists, so a crash
//! can be rolled back), `provision` creates it, and `teardown` removes it idempotently — it
//! must succeed on resources that were only planned, half-made, or already gone.

pub mod neon;
pub mod postgres;

use crate::blueprint::Blueprint;
use crate::domain::{EnvKey, Isolation, Secret, SourceFile};
use crate::service::{Deadline, QueueFull};
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

/// Backend-specific names and ids of what an environment owns on its target, kept in the
/// control store as JSON.
pub type Resources = serde_json::Map<String, serde_json::Value>;

/// Everything but RFC 3986 unreserved characters is percent-encoded in URI parts.
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How a caller reaches an environment.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub schema: Option<String>,
    pub user: String,
    pub password: Secret,
    /// Extra URI query parameters, e.g. `sslmode=require`.
    pub params: Vec<(String, String)>,
}

impl Connection {
    /// `postgresql://user:password@host:port/database?…`, every part percent-encoded; without
    /// the password unless `reveal`.
    pub fn uri(&self, reveal: bool) -> String {
        use percent_encoding::utf8_percent_encode as enc;
        let user = enc(&self.user, URI_COMPONENT);
        let userinfo = if reveal {
            format!("{user}:{}", enc(self.password.expose(), URI_COMPONENT))
        } else {
            user.to_string()
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut uri = format!(
            "postgresql://{userinfo}@{host}:{}/{}",
            self.port,
            enc(&self.database, URI_COMPONENT)
        );
        let mut params = self.params.clone();
        if let Some(schema) = &self.schema {
            params.push(("options".into(), format!("-csearch_path={schema},public")));
        }
        for (i, (k, v)) in params.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(&format!(
                "{}={}",
                enc(k, URI_COMPONENT),
                enc(v, URI_COMPONENT)
            ));
        }
        uri
    }
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
    /// The request cannot be served as asked (e.g. an isolation the backend lacks).
    #[error("{message}")]
    Invalid { message: String },
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

/// One target kind. Implementations must keep caller strings out of SQL and credentials out of
/// logs and error messages.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Isolations this backend offers; the first is the default.
    fn isolations(&self) -> &'static [Isolation];

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
    /// run logged in as the environment's role, with `password`.
    async fn migrate(
        &self,
        _resources: &Resources,
        _blueprint: Option<&Blueprint>,
        _migrations: &[SourceFile],
        _password: &Secret,
        _deadline: &Deadline,
    ) -> Result<usize, BackendError> {
        Err(BackendError::Invalid {
            message: "this target does not apply migrations".into(),
        })
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

    /// Whether this target measures sizes and can lock environments out (size quotas).
    fn has_quotas(&self) -> bool {
        false
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
    /// again.
    async fn set_locked(&self, _resources: &Resources, _locked: bool) -> Result<(), BackendError> {
        Err(BackendError::Invalid {
            message: "this target cannot lock environments".into(),
        })
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

/// Reads a string entry of `Resources`.
pub fn resource<'a>(resources: &'a Resources, name: &str) -> Option<&'a str> {
    resources.get(name).and_then(|v| v.as_str())
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
