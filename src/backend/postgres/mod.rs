//! The `postgres` target: each environment is a database owned by a role of its own, cloned
//! from its blueprint's template (see `database`, `template`), preferably out of the warm pool
//! (see `pool`); or, with `schema` isolation, a schema of its own in a shared database (see
//! `schema`). This module is the `Backend` impl, which reads an environment's names from its
//! record and hands the work to those modules; `target` holds what they all work with, `admin`
//! the SQL they share, `names` and `marks` how previewdb's objects are recognised.

mod admin;
mod database;
mod gc;
mod lock;
mod marks;
pub mod names;
mod pool;
mod quota;
mod schema;
mod target;
mod teardown;
mod template;
mod tenant;

pub use target::ServiceSettings;

use super::{
    object_name, Backend, BackendError, BlueprintStatus, Capabilities, ProvisionRequest, Support,
    TargetHealth,
};
use crate::blueprint::Blueprint;
use crate::bounds::{Deadline, WorkQueue};
use crate::configuration::PostgresTargetConfig;
use crate::domain::{
    Connection, InvalidInput, Isolation, PgIdent, PostgresResources, Resources, Secret, SourceFile,
};
use admin::{db_err, quote, Sessions};
use chrono::{DateTime, Utc};
use names::EnvNames;
use std::sync::Arc;
use std::time::Duration;
use target::Inner;

pub struct PostgresBackend {
    inner: Arc<Inner>,
    templates: template::Templates,
    pool: Arc<pool::WarmPool>,
    orphans: gc::Orphans,
}

impl PostgresBackend {
    pub fn new(cfg: PostgresTargetConfig, settings: ServiceSettings) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner::new(cfg, settings)?),
            templates: Default::default(),
            pool: Default::default(),
            orphans: Default::default(),
        })
    }

    /// Hardens the cluster for untrusted roles: PUBLIC loses CONNECT on every database that is
    /// not an environment's, so a role reaches its own database only.
    pub async fn harden(&self) -> Result<Vec<String>, BackendError> {
        let inner = &self.inner;
        if !inner.cfg.revoke_public_connect {
            return Ok(vec![]);
        }
        let conn = inner.admin().await?;
        let rows = conn
            .query(
                "SELECT d.datname FROM pg_database d \
                 WHERE d.datallowconn AND NOT starts_with(d.datname, $1) \
                 AND has_database_privilege('public', d.oid, 'CONNECT')",
                &[&names::PREFIX],
            )
            .await
            .map_err(db_err)?;
        let mut revoked = vec![];
        for row in rows {
            let name: String = row.get(0);
            let sql = format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", quote(&name));
            match conn.batch_execute(&sql).await {
                Ok(()) => revoked.push(name),
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "could not revoke PUBLIC CONNECT")
                }
            }
        }
        Ok(revoked)
    }
}

fn names(resources: &Resources) -> Result<EnvNames, BackendError> {
    let r = resources
        .postgres()
        .map_err(|e| BackendError::failed(e.to_string()))?;
    let valid = |k: &str, n: &str| {
        PgIdent::parse(n).map_err(|_| {
            BackendError::failed(format!("environment record lacks a valid `{k}` name"))
        })
    };
    let (db, role) = (valid("database", &r.database)?, valid("role", &r.role)?);
    let in_schema = match &r.schema {
        None => false,
        Some(s) if s == role.as_str() => true,
        Some(_) => {
            return Err(BackendError::failed(
                "environment record has a stray schema name",
            ))
        }
    };
    Ok(EnvNames {
        db,
        role,
        in_schema,
    })
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "postgres",
            isolations: &[Isolation::Database, Isolation::Schema],
            blueprints: Support::Yes,
            migrations: Support::Yes,
            quotas: true,
        }
    }

    fn queues(&self) -> Vec<(&'static str, Arc<WorkQueue>)> {
        vec![
            ("provision", self.inner.queue.clone()),
            ("migration", self.inner.migration_queue.clone()),
        ]
    }

    fn plan(&self, req: &ProvisionRequest) -> Result<Resources, BackendError> {
        let name = object_name(&req.key, &req.id.to_string());
        let role = name.as_str().to_owned();
        let (database, schema) = match req.isolation {
            // Database and role share one name: `sameuser` rules in pg_hba.conf can then pin
            // each role to its own database.
            Isolation::Database => (role.clone(), None),
            Isolation::Schema => {
                schema::check_blueprint(req.blueprint.as_deref())?;
                let shared = names::shared_database(req.blueprint.as_deref());
                (shared.as_str().to_owned(), Some(role.clone()))
            }
            other => {
                return Err(InvalidInput::new(
                    "isolation",
                    format!(
                        "isolation {:?} is not offered by this target",
                        other.as_str()
                    ),
                )
                .into())
            }
        };
        Ok(Resources::Postgres(PostgresResources {
            database,
            role,
            schema,
        }))
    }

    async fn provision(
        &self,
        req: &ProvisionRequest,
        resources: &mut Resources,
    ) -> Result<Connection, BackendError> {
        let inner = &self.inner;
        let env = names(resources)?;
        let made = match env.in_schema {
            true => inner.make_in_schema(req, &env.db, &env.role).await,
            false => {
                database::make(inner, &self.templates, &self.pool, req, &env.db, &env.role).await
            }
        };
        match made {
            Ok(password) => Ok(inner.connection(&env, password)),
            Err(e) => {
                if let Err(cleanup) = inner.remove(&env).await {
                    tracing::warn!(error = %cleanup, "rollback of a failed provision did not complete");
                }
                Err(e)
            }
        }
    }

    async fn teardown(&self, resources: &Resources) -> Result<(), BackendError> {
        let env = names(resources)?;
        let _slot = self.inner.teardowns.acquire().await;
        self.inner.remove(&env).await
    }

    /// A database's own environment is closed and its role locked out at once; dropping the
    /// database waits for a checkpoint (PostgreSQL 15 forces one per `DROP DATABASE`), so that
    /// is left for `teardown`. A schema goes at once: nothing there waits for a checkpoint.
    async fn lock_out(&self, resources: &Resources) -> Result<bool, BackendError> {
        let env = names(resources)?;
        if env.in_schema {
            self.teardown(resources).await?;
            return Ok(false);
        }
        self.inner.close(&env.db, &env.role).await?;
        Ok(true)
    }

    async fn extend(
        &self,
        resources: &Resources,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let role = names(resources)?.role;
        self.inner.extend_login(&role, expires_at).await
    }

    async fn rotate_credentials(
        &self,
        resources: &Resources,
        expires_at: DateTime<Utc>,
    ) -> Result<Connection, BackendError> {
        let env = names(resources)?;
        let (password, attrs) = self.inner.login_attributes(expires_at);
        let conn = self.inner.admin().await?;
        conn.batch_execute(&format!("ALTER ROLE {} {attrs}", env.role.quoted()))
            .await
            .map_err(db_err)?;
        // Sessions opened with the old password are ended too: a rotation is what one does
        // after a leak, and a leaked password's open sessions are the leak.
        admin::terminate(&conn, Sessions::Role(env.role.as_str()), Duration::ZERO)
            .await
            .map_err(db_err)?;
        Ok(self.inner.connection(&env, password))
    }

    async fn reset(
        &self,
        resources: &Resources,
        blueprint: Option<&Arc<Blueprint>>,
        password: &Secret,
        deadline: &Deadline,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        let env = names(resources)?;
        if env.in_schema {
            let bp = blueprint.map(|b| b.as_ref());
            return inner
                .reset_schema(&env.db, &env.role, bp, password, deadline)
                .await;
        }
        database::reset(inner, &self.templates, &env, blueprint, deadline).await
    }

    async fn health(&self) -> TargetHealth {
        let probe = async {
            let conn = self.inner.admin().await?;
            let row = conn
                .query_one("SHOW server_version", &[])
                .await
                .map_err(db_err)?;
            Ok::<String, BackendError>(row.get(0))
        };
        match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(v)) => TargetHealth {
                healthy: true,
                server_version: Some(v),
                error: None,
            },
            Ok(Err(e)) => TargetHealth {
                healthy: false,
                server_version: None,
                error: Some(e.to_string()),
            },
            Err(_) => TargetHealth {
                healthy: false,
                server_version: None,
                error: Some("timed out".into()),
            },
        }
    }

    async fn blueprint_hash(&self, blueprint: &Blueprint) -> Result<Option<String>, BackendError> {
        Ok(Some(blueprint.hash_for(self.inner.server().await?.major)))
    }

    async fn prepare(&self, blueprint: &Arc<Blueprint>) -> Result<BlueprintStatus, BackendError> {
        let inner = &self.inner;
        let deadline = Deadline::after(inner.build_timeout);
        let tpl = self.templates.ensure(inner, blueprint, &deadline).await?;
        self.pool.fill(inner, blueprint, &tpl, true).await?;
        Ok(self.blueprint_status(blueprint).await)
    }

    async fn blueprint_status(&self, blueprint: &Arc<Blueprint>) -> BlueprintStatus {
        let inner = &self.inner;
        let hash = match inner.server().await {
            Ok(s) => blueprint.hash_for(s.major),
            Err(e) => {
                return BlueprintStatus {
                    template: "unknown".into(),
                    error: Some(e.to_string()),
                    ..Default::default()
                }
            }
        };
        let mut status = self.templates.status(inner, blueprint, &hash).await;
        status.pool_ready = pool::ready_count(inner, blueprint, &hash).await;
        status.pool_size = blueprint.pool_size;
        status
    }

    async fn migrate(
        &self,
        resources: &Resources,
        blueprint: Option<&Blueprint>,
        migrations: &[SourceFile],
        password: &Secret,
        deadline: &Deadline,
    ) -> Result<usize, BackendError> {
        let env = names(resources)?;
        self.inner.restore_password(&env.role, password).await?;
        self.inner
            .apply_migrations(&env, blueprint, migrations, password, deadline)
            .await
    }

    async fn collect_garbage(
        &self,
        keep: &[String],
        known: &[String],
        accounted: &[Resources],
    ) -> Result<Vec<String>, BackendError> {
        gc::collect_garbage(&self.inner, &self.orphans, keep, known, accounted).await
    }

    fn quota_for(&self, blueprint: Option<&Blueprint>) -> Option<u64> {
        blueprint
            .and_then(|b| b.max_environment_bytes)
            .or(self.inner.cfg.max_environment_bytes)
    }

    async fn measure(&self, envs: &[&Resources]) -> Result<Vec<(usize, i64)>, BackendError> {
        let named: Vec<Option<EnvNames>> = envs.iter().map(|r| names(r).ok()).collect();
        quota::measure(&self.inner, &named).await
    }

    async fn set_locked(&self, resources: &Resources, locked: bool) -> Result<(), BackendError> {
        quota::set_locked(&self.inner, &names(resources)?.role, locked).await
    }
}
