//! The `postgres` target: each environment is a database owned by a role of its own.

use super::{object_name, resource, Backend, BackendError, Connection, ProvisionRequest, Resources, Secret, TargetHealth};
use crate::configuration::PostgresTargetConfig;
use crate::domain::{Isolation, PgIdent};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use postgres_protocol::escape::escape_literal;
use rand::distributions::{Alphanumeric, DistString};
use std::time::Duration;

/// Role passwords outlive the environment by this much, so that an extension racing the expiry
/// never locks a caller out, while a missed teardown still ends access on its own.
const VALID_UNTIL_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// How every previewdb-made object is marked (in its COMMENT), so that only those are collected.
pub const MARK_PREFIX: &str = "previewdb:env=";

pub struct PostgresBackend {
    cfg: PostgresTargetConfig,
    pool: Pool,
}

impl PostgresBackend {
    pub fn new(cfg: PostgresTargetConfig) -> anyhow::Result<Self> {
        let pool = crate::store::connect_pool(&cfg.admin_url, 16)?;
        Ok(Self { cfg, pool })
    }

    async fn admin(&self) -> Result<deadpool_postgres::Object, BackendError> {
        self.pool.get().await.map_err(|e| BackendError::Unavailable {
            message: format!("cannot reach the target's admin connection: {e}"),
            retry_after: Some(Duration::from_secs(5)),
        })
    }

    /// Hardens the cluster for untrusted roles: PUBLIC loses CONNECT on every database that is
    /// not an environment's, so a role reaches its own database only.
    pub async fn harden(&self) -> Result<Vec<String>, BackendError> {
        if !self.cfg.revoke_public_connect {
            return Ok(vec![]);
        }
        let conn = self.admin().await?;
        let rows = conn
            .query(
                "SELECT d.datname FROM pg_database d \
                 WHERE d.datallowconn AND NOT coalesce(shobj_description(d.oid, 'pg_database'), '') LIKE $1 \
                 AND has_database_privilege('public', d.oid, 'CONNECT')",
                &[&format!("{MARK_PREFIX}%")],
            )
            .await
            .map_err(db_err)?;
        let mut revoked = vec![];
        for row in rows {
            let name: String = row.get(0);
            let sql = format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", quote(&name));
            match conn.batch_execute(&sql).await {
                Ok(()) => revoked.push(name),
                Err(e) => tracing::warn!(database = %name, error = %e, "could not revoke PUBLIC CONNECT"),
            }
        }
        Ok(revoked)
    }

    fn names(resources: &Resources) -> Result<(PgIdent, PgIdent), BackendError> {
        let get = |k: &str| {
            resource(resources, k)
                .and_then(|n| PgIdent::parse(n).ok())
                .ok_or_else(|| BackendError::failed(format!("environment record lacks a valid `{k}` name")))
        };
        Ok((get("database")?, get("role")?))
    }

    fn connection(&self, db: &PgIdent, role: &PgIdent, password: Secret) -> Connection {
        Connection {
            host: self.cfg.public_host.clone(),
            port: self.cfg.public_port,
            database: db.as_str().to_owned(),
            schema: None,
            user: role.as_str().to_owned(),
            password,
            params: vec![],
        }
    }

    async fn create(&self, req: &ProvisionRequest, db: &PgIdent, role: &PgIdent) -> Result<Secret, BackendError> {
        let conn = self.admin().await?;
        let (password, verifier) = new_password();
        let mark = escape_literal(&format!("{MARK_PREFIX}{}", req.id));
        conn.batch_execute(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
             CONNECTION LIMIT {limit} VALID UNTIL {until} PASSWORD {verifier}; \
             COMMENT ON ROLE {role} IS {mark};",
            role = role.quoted(),
            limit = self.cfg.connection_limit,
            until = valid_until(req.expires_at),
            verifier = escape_literal(&verifier),
        ))
        .await
        .map_err(db_err)?;
        // A non-superuser admin must be a member of the role to create a database it owns.
        conn.batch_execute(&format!(
            "DO $$ BEGIN IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN \
             EXECUTE format('GRANT %I TO %I', {role_lit}, current_user); END IF; END $$",
            role_lit = escape_literal(role.as_str())
        ))
        .await
        .map_err(db_err)?;
        conn.batch_execute(&format!("CREATE DATABASE {} OWNER {}", db.quoted(), role.quoted()))
            .await
            .map_err(db_err)?;
        conn.batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; COMMENT ON DATABASE {db} IS {mark};",
            db = db.quoted()
        ))
        .await
        .map_err(db_err)?;
        Ok(password)
    }
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
    fn isolations(&self) -> &'static [Isolation] {
        &[Isolation::Database]
    }

    fn plan(&self, req: &ProvisionRequest) -> Result<Resources, BackendError> {
        if req.isolation != Isolation::Database {
            return Err(BackendError::Invalid {
                message: format!("isolation {:?} is not offered by this target", req.isolation.as_str()),
            });
        }
        // Database and role share one name: `sameuser` rules in pg_hba.conf can then pin each
        // role to its own database.
        let name = object_name(&req.key, &req.id.to_string());
        let mut r = Resources::new();
        r.insert("database".into(), name.as_str().into());
        r.insert("role".into(), name.as_str().into());
        Ok(r)
    }

    async fn provision(&self, req: &ProvisionRequest, resources: &mut Resources) -> Result<Connection, BackendError> {
        let (db, role) = Self::names(resources)?;
        match self.create(req, &db, &role).await {
            Ok(password) => Ok(self.connection(&db, &role, password)),
            Err(e) => {
                if let Err(cleanup) = self.teardown(resources).await {
                    tracing::warn!(error = %cleanup, "rollback of a failed provision did not complete");
                }
                Err(e)
            }
        }
    }

    async fn teardown(&self, resources: &Resources) -> Result<(), BackendError> {
        let (db, role) = Self::names(resources)?;
        let conn = self.admin().await?;
        let role_exists = conn
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role.as_str()])
            .await
            .map_err(db_err)?
            .is_some();
        if role_exists {
            conn.batch_execute(&format!("ALTER ROLE {} NOLOGIN", role.quoted())).await.map_err(db_err)?;
        }
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE (usename = $1 OR datname = $2) AND pid <> pg_backend_pid()",
            &[&role.as_str(), &db.as_str()],
        )
        .await
        .map_err(db_err)?;
        conn.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.quoted()))
            .await
            .map_err(db_err)?;
        if role_exists {
            conn.batch_execute(&format!("DROP ROLE IF EXISTS {}", role.quoted())).await.map_err(db_err)?;
        }
        Ok(())
    }

    async fn extend(&self, resources: &Resources, expires_at: DateTime<Utc>) -> Result<(), BackendError> {
        let (_, role) = Self::names(resources)?;
        let sql = format!("ALTER ROLE {} VALID UNTIL {}", role.quoted(), valid_until(expires_at));
        self.admin().await?.batch_execute(&sql).await.map_err(db_err)
    }

    async fn rotate_credentials(&self, resources: &Resources, expires_at: DateTime<Utc>) -> Result<Connection, BackendError> {
        let (db, role) = Self::names(resources)?;
        let (password, verifier) = new_password();
        let sql = format!(
            "ALTER ROLE {} PASSWORD {} VALID UNTIL {}",
            role.quoted(),
            escape_literal(&verifier),
            valid_until(expires_at)
        );
        self.admin().await?.batch_execute(&sql).await.map_err(db_err)?;
        Ok(self.connection(&db, &role, password))
    }

    async fn reset(&self, resources: &Resources) -> Result<(), BackendError> {
        let (db, role) = Self::names(resources)?;
        let conn = self.admin().await?;
        let mark: Option<String> = conn
            .query_opt(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                &[&db.as_str()],
            )
            .await
            .map_err(db_err)?
            .and_then(|r| r.get(0));
        let mark = mark.ok_or_else(|| BackendError::failed(format!("database {db} is missing")))?;
        // DROP and CREATE DATABASE cannot share a simple query (it would be one transaction).
        conn.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.quoted())).await.map_err(db_err)?;
        conn.batch_execute(&format!("CREATE DATABASE {} OWNER {}", db.quoted(), role.quoted()))
            .await
            .map_err(db_err)?;
        conn.batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; COMMENT ON DATABASE {db} IS {mark};",
            db = db.quoted(),
            mark = escape_literal(&mark)
        ))
        .await
        .map_err(db_err)
    }

    async fn health(&self) -> TargetHealth {
        let probe = async {
            let conn = self.admin().await?;
            let row = conn.query_one("SHOW server_version", &[]).await.map_err(db_err)?;
            Ok::<String, BackendError>(row.get(0))
        };
        match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(v)) => TargetHealth { healthy: true, server_version: Some(v), error: None },
            Ok(Err(e)) => TargetHealth { healthy: false, server_version: None, error: Some(e.to_string()) },
            Err(_) => TargetHealth { healthy: false, server_version: None, error: Some("timed out".into()) },
        }
    }
}

/// A random 32-character password and its SCRAM-SHA-256 verifier; only the verifier is sent.
fn new_password() -> (Secret, String) {
    let password = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    (Secret::new(password), verifier)
}

fn valid_until(expires_at: DateTime<Utc>) -> String {
    escape_literal(&(expires_at + VALID_UNTIL_GRACE).to_rfc3339())
}

fn quote(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Maps a server error to a backend error, keeping the server's words; connection loss is
/// "unavailable" so callers get a 503 they may retry.
pub(crate) fn db_err(e: tokio_postgres::Error) -> BackendError {
    match e.as_db_error() {
        Some(db) => {
            let mut message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                message.push_str(&format!(": {d}"));
            }
            BackendError::Failed { message }
        }
        None if e.is_closed() || e.to_string().contains("connect") => BackendError::Unavailable {
            message: e.to_string(),
            retry_after: Some(Duration::from_secs(5)),
        },
        None => BackendError::Failed { message: e.to_string() },
    }
}
