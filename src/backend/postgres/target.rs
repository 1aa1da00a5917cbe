//! What every part of a postgres target works with: its settings, the admin's connections (a
//! pool, dedicated sessions into any database, guarded sessions for databases a tenant
//! controls), what the server is, the work queues, and the credentials previewdb hands out.
//! Nothing here knows templates, pools or teardowns; they all build on it.

use super::admin::{self, db_err};
use super::names::EnvNames;
use crate::backend::{BackendError, Connection, Secret};
use crate::bounds::WorkQueue;
use crate::configuration::PostgresTargetConfig;
use crate::domain::PgIdent;
use crate::pgconn::PgConnector;
use crate::store::{Sealer, Store};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use postgres_protocol::escape::escape_literal;
use rand::distributions::{Alphanumeric, DistString};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Role passwords outlive the environment by this much, so that an extension racing the expiry
/// never locks a caller out, while a missed teardown still ends access on its own.
const VALID_UNTIL_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// See `Inner::teardowns`.
const TEARDOWNS_AT_ONCE: usize = 8;

/// Settings every guarded admin session starts with; startup options outrank the defaults a
/// database owner may set with `ALTER DATABASE … SET`.
const GUARDED_SETTINGS: &[(&str, &str)] = &[
    // Else a tenant's `ALTER DATABASE own SET role = own` makes our session act as the tenant.
    ("role", "none"),
    // Else a tenant's schema listed first shadows catalog views and functions we call.
    ("search_path", "pg_catalog,pg_temp"),
    ("default_transaction_read_only", "off"),
    // A library named here that does not exist makes every login to the database fail.
    ("local_preload_libraries", ""),
    ("idle_session_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    // A tenant's lock makes the statement fail, not wait: the teardown is retried later.
    ("lock_timeout", "5s"),
    // DROP DATABASE waits for a checkpoint, which can take a while on a busy server.
    ("statement_timeout", "60s"),
];

/// What a postgres target takes from the service-wide settings.
pub struct ServiceSettings {
    /// The password `previewdb_builder` logs in with; the same on every replica.
    pub builder_password: Secret,
    /// Longest a create, reset or migrate may take (also bounds a template build).
    pub provision_timeout: Duration,
    /// How long an unaccounted object with the prefix is left before it is collected.
    pub orphan_grace: Duration,
    /// The target's name in the configuration: its rows in the pool ledger carry it.
    pub target: String,
    /// Where the warm pools' ledger is kept (see `pool`).
    pub store: Store,
    /// Seals the passwords of pool entries in the ledger.
    pub sealer: Sealer,
}

/// What previewdb needs to know about the server once.
#[derive(Debug, Clone, Copy)]
pub(super) struct ServerInfo {
    pub major: u32,
    pub superuser: bool,
}

pub(super) struct Inner {
    pub cfg: PostgresTargetConfig,
    pub admin: Pool,
    pub admin_server: PgConnector,
    server: OnceCell<ServerInfo>,
    pub queue: Arc<WorkQueue>,
    /// Where the callers' own migrations wait: apart from the clones, builds and resets, so that
    /// migrations that sleep or wait on locks until their deadline cannot hold back the rest.
    pub migration_queue: Arc<WorkQueue>,
    /// Teardowns running at once: each opens connections of its own (one per database it must
    /// enter), so a burst of deletes must not exhaust the server's connection slots.
    pub teardowns: tokio::sync::Semaphore,
    /// Guarded admin sessions (see `connect_guarded`) kept open for what a delete waits for:
    /// no session set-up on that path, and its size bounds how many run at once.
    pub guarded: Pool,
    pub builder_password: Secret,
    pub build_timeout: Duration,
    pub orphan_grace: Duration,
    pub target: String,
    pub store: Store,
    pub sealer: Sealer,
}

impl Inner {
    pub(super) fn new(
        cfg: PostgresTargetConfig,
        settings: ServiceSettings,
    ) -> anyhow::Result<Self> {
        let admin_server = PgConnector::parse(&cfg.admin_url)?;
        let admin = admin_server.pool(16)?;
        let guarded = guarded(admin_server.clone()).pool(TEARDOWNS_AT_ONCE)?;
        Ok(Self {
            build_timeout: cfg.provision_timeout.unwrap_or(settings.provision_timeout),
            queue: WorkQueue::new(cfg.max_concurrent_provisions, cfg.max_queued),
            migration_queue: WorkQueue::new(cfg.max_concurrent_provisions, cfg.max_queued),
            cfg,
            admin,
            admin_server,
            server: OnceCell::new(),
            teardowns: tokio::sync::Semaphore::new(TEARDOWNS_AT_ONCE),
            guarded,
            builder_password: settings.builder_password,
            orphan_grace: settings.orphan_grace,
            target: settings.target,
            store: settings.store,
            sealer: settings.sealer,
        })
    }

    pub(super) async fn admin(&self) -> Result<deadpool_postgres::Object, BackendError> {
        self.admin
            .get()
            .await
            .map_err(|e| BackendError::Unavailable {
                message: format!(
                    "cannot reach the target's admin connection: {}",
                    crate::pgconn::describe(&e)
                ),
                retry_after: Some(Duration::from_secs(5)),
            })
    }

    pub(super) async fn server(&self) -> Result<ServerInfo, BackendError> {
        self.server
            .get_or_try_init(|| async {
                let row = self
                    .admin()
                    .await?
                    .query_one(
                        "SELECT current_setting('server_version_num')::int / 10000, rolsuper \
                         FROM pg_roles WHERE rolname = current_user",
                        &[],
                    )
                    .await
                    .map_err(db_err)?;
                Ok(ServerInfo {
                    major: row.get::<_, i32>(0) as u32,
                    superuser: row.get(1),
                })
            })
            .await
            .copied()
    }

    /// The admin's connection settings, pointed at another database of the target.
    pub(super) fn db_server(&self, database: &str) -> PgConnector {
        self.admin_server.with_dbname(database)
    }

    /// A dedicated admin connection to `database`, closed when dropped.
    pub(super) async fn connect_db(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, BackendError> {
        self.db_server(database).connect().await.map_err(db_err)
    }

    /// A dedicated admin connection for a database a tenant controls (`None`: the admin's
    /// own): the defaults its owner set cannot act on it, and a tenant's lock fails its
    /// statements instead of holding them (see `GUARDED_SETTINGS`).
    pub(super) async fn connect_guarded(
        &self,
        database: Option<&str>,
    ) -> Result<tokio_postgres::Client, BackendError> {
        let server = match database {
            Some(db) => self.db_server(db),
            None => self.admin_server.clone(),
        };
        guarded(server).connect().await.map_err(db_err)
    }

    /// A non-superuser admin must be a member of a role to create databases it owns.
    pub(super) async fn grant_membership(
        &self,
        conn: &tokio_postgres::Client,
        role: &PgIdent,
    ) -> Result<(), BackendError> {
        if self.server().await?.superuser {
            return Ok(());
        }
        conn.batch_execute(&admin::grant_to_admin(role.as_str()))
            .await
            .map_err(db_err)
    }

    /// How a caller reaches environment `env` with `password`.
    pub(super) fn connection(&self, env: &EnvNames, password: Secret) -> Connection {
        let (db, role) = (&env.db, &env.role);
        Connection {
            host: self.cfg.public_host.clone(),
            port: self.cfg.public_port,
            database: db.as_str().to_owned(),
            schema: env.in_schema.then(|| role.as_str().to_owned()),
            user: role.as_str().to_owned(),
            password,
            params: self
                .cfg
                .public_sslmode
                .iter()
                .map(|m| ("sslmode".to_owned(), m.clone()))
                .collect(),
        }
    }

    /// `LOGIN … VALID UNTIL … PASSWORD …` for an environment role; only the verifier is sent.
    pub(super) fn login_attributes(&self, expires_at: DateTime<Utc>) -> (Secret, String) {
        let (password, verifier) = new_password();
        let attrs = format!(
            "{} PASSWORD {}",
            self.login_grant(expires_at),
            escape_literal(&verifier)
        );
        (password, attrs)
    }

    /// `LOGIN … VALID UNTIL …` for a role whose password is already set.
    pub(super) fn login_grant(&self, expires_at: DateTime<Utc>) -> String {
        format!(
            "LOGIN {} CONNECTION LIMIT {} VALID UNTIL {}",
            admin::UNPRIVILEGED,
            self.cfg.connection_limit,
            valid_until(expires_at),
        )
    }

    /// Moves the end of `role`'s password's validity along with its environment's.
    pub(super) async fn extend_login(
        &self,
        role: &PgIdent,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let sql = format!(
            "ALTER ROLE {} VALID UNTIL {}",
            role.quoted(),
            valid_until(expires_at)
        );
        self.admin()
            .await?
            .batch_execute(&sql)
            .await
            .map_err(db_err)
    }

    /// Gives the role back the password previewdb handed out: a tenant may change its own
    /// (`ALTER ROLE … PASSWORD` is allowed to it), and previewdb logs in with the one on record.
    pub(super) async fn restore_password(
        &self,
        role: &PgIdent,
        password: &Secret,
    ) -> Result<(), BackendError> {
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        self.admin()
            .await?
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD {}",
                role.quoted(),
                escape_literal(&verifier)
            ))
            .await
            .map_err(db_err)
    }
}

fn guarded(server: PgConnector) -> PgConnector {
    GUARDED_SETTINGS
        .iter()
        .fold(server, |server, (name, value)| {
            server.with_setting(name, value)
        })
}

/// A fresh random 32-character password and its SCRAM-SHA-256 verifier (the only form of it
/// the server ever sees).
pub(super) fn new_password() -> (Secret, String) {
    let password = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    (Secret::new(password), verifier)
}

fn valid_until(expires_at: DateTime<Utc>) -> String {
    escape_literal(&(expires_at + VALID_UNTIL_GRACE).to_rfc3339())
}
