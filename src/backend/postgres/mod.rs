//! The `postgres` target: each environment is a database owned by a role of its own, cloned
//! from its blueprint's template (see `template`), preferably out of the warm pool (see `pool`);
//! or, with `schema` isolation, a schema of its own in a shared database (see `schema`).

mod gc;
mod lock;
pub mod names;
mod pool;
mod quota;
mod schema;
mod teardown;
mod template;

use super::{
    object_name, resource, Backend, BackendError, BlueprintStatus, Connection, ProvisionRequest,
    Resources, TargetHealth,
};
use crate::blueprint::Blueprint;
use crate::configuration::PostgresTargetConfig;
use crate::domain::{Isolation, MigrationFormat, PgIdent, Secret, SourceFile};
use crate::pgconn::PgConnector;
use crate::service::{Deadline, WorkQueue};
use crate::sqlexec::migrations::{self, Session};
use crate::store::{Sealer, Store};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use postgres_protocol::escape::escape_literal;
use rand::distributions::{Alphanumeric, DistString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Role passwords outlive the environment by this much, so that an extension racing the expiry
/// never locks a caller out, while a missed teardown still ends access on its own.
const VALID_UNTIL_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// See `Inner::teardowns`.
const TEARDOWNS_AT_ONCE: usize = 8;

/// How every previewdb-made object is marked (in its COMMENT), so that only those are collected.
pub const MARK_PREFIX: &str = "previewdb:env=";

/// What previewdb needs to know about the server once.
#[derive(Debug, Clone, Copy)]
struct ServerInfo {
    major: u32,
    superuser: bool,
}

pub struct PostgresBackend {
    inner: Arc<Inner>,
}

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

struct Inner {
    cfg: PostgresTargetConfig,
    admin: Pool,
    admin_server: PgConnector,
    server: OnceCell<ServerInfo>,
    templates: template::Templates,
    pool: pool::WarmPool,
    queue: Arc<WorkQueue>,
    /// Where the callers' own migrations wait: apart from the clones, builds and resets, so that
    /// migrations that sleep or wait on locks until their deadline cannot hold back the rest.
    migration_queue: Arc<WorkQueue>,
    /// Teardowns running at once: each opens connections of its own (one per database it must
    /// enter), so a burst of deletes must not exhaust the server's connection slots.
    teardowns: tokio::sync::Semaphore,
    /// Guarded admin sessions (see `connect_guarded`) kept open for what a delete waits for:
    /// no session set-up on that path, and its size bounds how many run at once.
    guarded: Pool,
    builder_password: Secret,
    build_timeout: Duration,
    orphan_grace: Duration,
    target: String,
    store: Store,
    sealer: Sealer,
    /// When garbage collection first saw each object that nothing accounts for.
    orphans: Mutex<HashMap<String, std::time::Instant>>,
}

impl PostgresBackend {
    pub fn new(cfg: PostgresTargetConfig, settings: ServiceSettings) -> anyhow::Result<Self> {
        let admin_server = PgConnector::parse(&cfg.admin_url)?;
        let admin = admin_server.pool(16)?;
        let guarded = teardown::GUARDED_SETTINGS
            .iter()
            .fold(admin_server.clone(), |server, (name, value)| {
                server.with_setting(name, value)
            })
            .pool(TEARDOWNS_AT_ONCE)?;
        let queue = WorkQueue::new(cfg.max_concurrent_provisions, cfg.max_queued);
        let migration_queue = WorkQueue::new(cfg.max_concurrent_provisions, cfg.max_queued);
        Ok(Self {
            inner: Arc::new(Inner {
                build_timeout: cfg.provision_timeout.unwrap_or(settings.provision_timeout),
                cfg,
                admin,
                admin_server,
                server: OnceCell::new(),
                templates: Default::default(),
                pool: Default::default(),
                queue,
                migration_queue,
                teardowns: tokio::sync::Semaphore::new(TEARDOWNS_AT_ONCE),
                guarded,
                builder_password: settings.builder_password,
                orphan_grace: settings.orphan_grace,
                target: settings.target,
                store: settings.store,
                sealer: settings.sealer,
                orphans: Default::default(),
            }),
        })
    }

    /// The work queues of this target, by what waits in them (for their figures in `/metrics`).
    pub fn queues(&self) -> Vec<(&'static str, Arc<WorkQueue>)> {
        vec![
            ("provision", self.inner.queue.clone()),
            ("migration", self.inner.migration_queue.clone()),
        ]
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

impl Inner {
    async fn admin(&self) -> Result<deadpool_postgres::Object, BackendError> {
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

    async fn server(&self) -> Result<ServerInfo, BackendError> {
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
    fn db_server(&self, database: &str) -> PgConnector {
        self.admin_server.with_dbname(database)
    }

    /// A login of the environment's own role into `database`, for SQL that previewdb did not
    /// write (a caller's migrations; a blueprint's files in schema isolation): it cannot become
    /// anyone else. Its statements and lock waits end with the deadline, and its sessions carry
    /// an application name of their own so that they can be ended if the work is abandoned.
    fn login(
        &self,
        database: &PgIdent,
        role: &PgIdent,
        password: &Secret,
        deadline: &Deadline,
    ) -> (Session, RunGuard<'_>) {
        self.login_with(database, role, password, deadline, None)
    }

    /// [`Inner::login`], with a `search_path` of its own from the session's start.
    fn login_with(
        &self,
        database: &PgIdent,
        role: &PgIdent,
        password: &Secret,
        deadline: &Deadline,
        search_path: Option<&str>,
    ) -> (Session, RunGuard<'_>) {
        let tag = format!("previewdb-run-{}", uuid::Uuid::new_v4().simple());
        let mut server = self
            .db_server(database.as_str())
            .with_login(role.as_str(), password.expose())
            .with_application_name(&tag);
        if let Some(path) = search_path {
            server = server.with_setting("search_path", path);
        }
        (
            Session::new(server).with_deadline(*deadline),
            RunGuard {
                inner: self,
                tag,
                done: false,
            },
        )
    }

    /// Gives the role back the password previewdb handed out: a tenant may change its own
    /// (`ALTER ROLE … PASSWORD` is allowed to it), and previewdb logs in with the one on record.
    async fn restore_password(
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

    /// A dedicated admin connection to `database`, closed when dropped.
    async fn connect_db(&self, database: &str) -> Result<tokio_postgres::Client, BackendError> {
        self.db_server(database).connect().await.map_err(db_err)
    }

    /// A dedicated admin connection for a database a tenant controls (`None`: the admin's
    /// own): the defaults its owner set cannot act on it, and a tenant's lock fails its
    /// statements instead of holding them (see `teardown::GUARDED_SETTINGS`).
    async fn connect_guarded(
        &self,
        database: Option<&str>,
    ) -> Result<tokio_postgres::Client, BackendError> {
        let mut server = match database {
            Some(db) => self.db_server(db),
            None => self.admin_server.clone(),
        };
        for (name, value) in teardown::GUARDED_SETTINGS {
            server = server.with_setting(name, value);
        }
        server.connect().await.map_err(db_err)
    }

    fn connection(&self, env: &EnvNames, password: Secret) -> Connection {
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
    fn login_attributes(&self, expires_at: DateTime<Utc>) -> (Secret, String) {
        let (password, verifier) = new_password();
        let attrs = format!(
            "{} PASSWORD {}",
            self.login_grant(expires_at),
            escape_literal(&verifier)
        );
        (password, attrs)
    }

    /// `LOGIN … VALID UNTIL …` for a role whose password is already set.
    fn login_grant(&self, expires_at: DateTime<Utc>) -> String {
        format!(
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} \
             VALID UNTIL {}",
            self.cfg.connection_limit,
            valid_until(expires_at),
        )
    }

    /// A non-superuser admin must be a member of a role to create databases it owns.
    async fn grant_membership(
        &self,
        conn: &tokio_postgres::Client,
        role: &PgIdent,
    ) -> Result<(), BackendError> {
        if self.server().await?.superuser {
            return Ok(());
        }
        conn.batch_execute(&format!("GRANT {} TO CURRENT_USER", role.quoted()))
            .await
            .map_err(db_err)
    }

    /// Makes the role and its database from scratch: empty, or cloned from `template`.
    async fn create_cold(
        &self,
        req: &ProvisionRequest,
        template: Option<&template::TemplateInfo>,
        db: &PgIdent,
        role: &PgIdent,
    ) -> Result<Secret, BackendError> {
        let conn = self.admin().await?;
        let (password, attrs) = self.login_attributes(req.expires_at);
        let mark = escape_literal(&format!("{MARK_PREFIX}{}", req.id));
        conn.batch_execute(&format!(
            "CREATE ROLE {r} {attrs}; COMMENT ON ROLE {r} IS {mark};",
            r = role.quoted()
        ))
        .await
        .map_err(db_err)?;
        self.grant_membership(&conn, role).await?;
        self.create_database(&conn, db, role, template, &mark)
            .await?;
        Ok(password)
    }

    /// The environment's database, owned by its role, empty or cloned from `template` (and then
    /// all its objects handed to the role), closed to PUBLIC and marked with `mark` (a literal).
    async fn create_database(
        &self,
        conn: &tokio_postgres::Client,
        db: &PgIdent,
        role: &PgIdent,
        template: Option<&template::TemplateInfo>,
        mark: &str,
    ) -> Result<(), BackendError> {
        match template {
            Some(t) => self.clone_database(conn, db, role, t).await?,
            None => conn
                .batch_execute(&format!(
                    "CREATE DATABASE {} OWNER {}",
                    db.quoted(),
                    role.quoted()
                ))
                .await
                .map_err(db_err)?,
        }
        conn.batch_execute(&format!(
            "REVOKE ALL ON DATABASE {d} FROM PUBLIC; COMMENT ON DATABASE {d} IS {mark};",
            d = db.quoted()
        ))
        .await
        .map_err(db_err)?;
        if template.is_some() {
            self.take_ownership(db, role).await?;
        }
        Ok(())
    }

    /// Clones `template` into `db`, owned by `owner`.
    async fn clone_database(
        &self,
        conn: &tokio_postgres::Client,
        db: &PgIdent,
        owner: &PgIdent,
        template: &template::TemplateInfo,
    ) -> Result<(), BackendError> {
        let strategy = match self.server().await?.major {
            15.. => format!(
                " STRATEGY {}",
                self.cfg
                    .clone_strategy
                    .for_size(template.size_bytes.max(0) as u64)
            ),
            _ => String::new(),
        };
        // CREATE DATABASE cannot share a simple query with anything (it would be a transaction).
        conn.batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE {} OWNER {}{strategy}",
            db.quoted(),
            quote(&template.name),
            owner.quoted()
        ))
        .await
        .map_err(db_err)
    }

    /// Objects in a clone keep the template's owner: hand them all to the environment's role, so
    /// its own migrations can ALTER or DROP anything.
    async fn take_ownership(&self, db: &PgIdent, role: &PgIdent) -> Result<(), BackendError> {
        let client = self.connect_db(db.as_str()).await?;
        client
            .batch_execute(&format!(
                "REASSIGN OWNED BY {} TO {}",
                quote(template::BUILDER_ROLE),
                role.quoted()
            ))
            .await
            .map_err(db_err)
    }

    /// Applies `extra` on top of the blueprint's migrations (already applied, so skipped),
    /// logged in as the environment's role, after waiting for a place in the target's queue of
    /// caller migrations.
    async fn apply_migrations(
        &self,
        env: &EnvNames,
        blueprint: Option<&Blueprint>,
        extra: &[SourceFile],
        password: &Secret,
        deadline: &Deadline,
    ) -> Result<usize, BackendError> {
        let format = blueprint.map_or(MigrationFormat::Plain, |b| b.format);
        let mut files: Vec<SourceFile> =
            blueprint.map(|b| b.migrations.clone()).unwrap_or_default();
        files.extend_from_slice(extra);
        let _slot = self.migration_queue.admit(deadline).await?;
        let (session, mut run) = if env.in_schema {
            self.schema_login(&env.db, &env.role, password, deadline)
        } else {
            self.login(&env.db, &env.role, password, deadline)
        };
        let applied = migrations::apply(format, &session, &files)
            .await
            .map_err(migration_error)?;
        run.done();
        Ok(applied)
    }

    /// Creates the environment's role and database: from the warm pool when it has one ready,
    /// else cloned (or empty) on demand — cold work waits for its place in the target's queue;
    /// then the caller's migrations.
    async fn make(
        self: &Arc<Self>,
        req: &ProvisionRequest,
        db: &PgIdent,
        role: &PgIdent,
    ) -> Result<Secret, BackendError> {
        let password = match &req.blueprint {
            None => {
                let _slot = self.queue.admit(&req.deadline).await?;
                self.create_cold(req, None, db, role).await?
            }
            Some(bp) => {
                let tpl = self.templates.ensure(self, bp, &req.deadline).await?;
                let warm = pool::claim(self, bp, &tpl, req, db, role).await?;
                pool::refill_in_background(self.clone(), bp.clone(), tpl.clone());
                match warm {
                    Some(password) => password,
                    None => {
                        let slot = self.queue.admit(&req.deadline).await?;
                        match self.create_cold(req, Some(&tpl), db, role).await {
                            // Another replica (with another configuration) collected the template:
                            // build it again (the build takes a place of its own).
                            Err(BackendError::Failed {
                                sqlstate:
                                    Some(tokio_postgres::error::SqlState::INVALID_CATALOG_NAME),
                                ..
                            }) => {
                                drop(slot);
                                self.templates.forget(&tpl.hash);
                                self.teardown(db, role).await?;
                                let tpl = self.templates.ensure(self, bp, &req.deadline).await?;
                                let _slot = self.queue.admit(&req.deadline).await?;
                                self.create_cold(req, Some(&tpl), db, role).await?
                            }
                            outcome => outcome?,
                        }
                    }
                }
            }
        };
        if !req.migrations.is_empty() {
            let env = EnvNames {
                db: db.clone(),
                role: role.clone(),
                in_schema: false,
            };
            self.apply_migrations(
                &env,
                req.blueprint.as_deref(),
                &req.migrations,
                &password,
                &req.deadline,
            )
            .await?;
        }
        Ok(password)
    }
}

/// What an environment is made of on the target, read back from its record.
struct EnvNames {
    db: PgIdent,
    role: PgIdent,
    /// `schema` isolation: a schema named after the role in the shared database `db`.
    in_schema: bool,
}

fn names(resources: &Resources) -> Result<EnvNames, BackendError> {
    let get = |k: &str| {
        resource(resources, k)
            .and_then(|n| PgIdent::parse(n).ok())
            .ok_or_else(|| {
                BackendError::failed(format!("environment record lacks a valid `{k}` name"))
            })
    };
    let (db, role) = (get("database")?, get("role")?);
    let in_schema = match resource(resources, "schema") {
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
    fn isolations(&self) -> &'static [Isolation] {
        &[Isolation::Database, Isolation::Schema]
    }

    fn plan(&self, req: &ProvisionRequest) -> Result<Resources, BackendError> {
        let name = object_name(&req.key, &req.id.to_string());
        let mut r = Resources::new();
        match req.isolation {
            // Database and role share one name: `sameuser` rules in pg_hba.conf can then pin
            // each role to its own database.
            Isolation::Database => {
                r.insert("database".into(), name.as_str().into());
            }
            Isolation::Schema => {
                schema::check_blueprint(req.blueprint.as_deref())?;
                let shared = schema::shared_database(req.blueprint.as_deref());
                r.insert("database".into(), shared.as_str().into());
                r.insert("schema".into(), name.as_str().into());
            }
            other => {
                return Err(BackendError::Invalid {
                    message: format!(
                        "isolation {:?} is not offered by this target",
                        other.as_str()
                    ),
                })
            }
        }
        r.insert("role".into(), name.as_str().into());
        Ok(r)
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
            false => inner.make(req, &env.db, &env.role).await,
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
        let sql = format!(
            "ALTER ROLE {} VALID UNTIL {}",
            role.quoted(),
            valid_until(expires_at)
        );
        self.inner
            .admin()
            .await?
            .batch_execute(&sql)
            .await
            .map_err(db_err)
    }

    async fn rotate_credentials(
        &self,
        resources: &Resources,
        expires_at: DateTime<Utc>,
    ) -> Result<Connection, BackendError> {
        let env = names(resources)?;
        let role = &env.role;
        let (password, attrs) = self.inner.login_attributes(expires_at);
        // Sessions opened with the old password are ended too: a rotation is what one does
        // after a leak, and a leaked password's open sessions are the leak.
        let sql = format!(
            "ALTER ROLE {r} {attrs}; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = {name} AND pid <> pg_backend_pid();",
            r = role.quoted(),
            name = escape_literal(role.as_str())
        );
        self.inner
            .admin()
            .await?
            .batch_execute(&sql)
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
        let (db, role) = (env.db, env.role);
        let template = match blueprint {
            Some(bp) => Some(inner.templates.ensure(inner, bp, deadline).await?),
            None => None,
        };
        let _slot = inner.queue.admit(deadline).await?;
        let conn = inner.admin().await?;
        // The tenant owns its database's COMMENT: only our own kind of mark is carried over.
        let mark: Option<Option<String>> = conn
            .query_opt(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                &[&db.as_str()],
            )
            .await
            .map_err(db_err)?
            .map(|r| r.get(0));
        let mark = mark.ok_or_else(|| BackendError::failed(format!("database {db} is missing")))?;
        let mark = mark
            .filter(|m| m.starts_with(MARK_PREFIX) && m.len() <= 64)
            .unwrap_or_else(|| MARK_PREFIX.trim_end_matches('=').to_owned());
        teardown::drop_database(inner, db.as_str()).await?;
        inner
            .create_database(&conn, &db, &role, template.as_ref(), &escape_literal(&mark))
            .await?;
        Ok(())
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
        let tpl = inner.templates.ensure(inner, blueprint, &deadline).await?;
        pool::fill(inner, blueprint, &tpl, true).await?;
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
        let mut status = inner.templates.status(inner, blueprint, &hash).await;
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
        gc::collect_garbage(&self.inner, keep, known, accounted).await
    }

    fn has_quotas(&self) -> bool {
        true
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

/// Sessions started for one run of SQL previewdb did not write (see `Inner::login`). Unless
/// the run completed, they are ended when this is dropped: a caller that gave up, or a
/// deadline that passed, must not leave a statement running on the server.
struct RunGuard<'a> {
    inner: &'a Inner,
    tag: String,
    done: bool,
}

impl RunGuard<'_> {
    fn done(&mut self) {
        self.done = true;
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (pool, tag) = (self.inner.admin.clone(), std::mem::take(&mut self.tag));
        tokio::spawn(async move {
            if let Ok(conn) = pool.get().await {
                let _ = conn
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&tag],
                    )
                    .await;
            }
        });
    }
}

/// Runs `sql` (a transaction that renames database `name`) once nobody is connected to it:
/// sessions just ended may take a moment to go.
async fn rename_when_free(
    admin: &tokio_postgres::Client,
    name: &str,
    sql: &str,
) -> Result<(), BackendError> {
    let mut attempt = 0;
    loop {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            .map_err(db_err)?;
        match admin.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // The failed statement left its transaction open.
                let _ = admin.batch_execute("ROLLBACK").await;
                let in_use = e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE);
                attempt += 1;
                if !in_use || attempt >= 100 {
                    return Err(db_err(e));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A failed run of migrations; one cut short by its deadline (`statement_timeout`) says so.
fn migration_error(e: crate::sqlexec::ScriptError) -> BackendError {
    if e.sqlstate.as_deref() == Some("57014") {
        BackendError::Deadline {
            message: format!("deadline exceeded while applying migrations: {e}"),
        }
    } else {
        BackendError::Migration {
            message: e.to_string(),
        }
    }
}

/// A random 32-character password and its SCRAM-SHA-256 verifier; only the verifier is sent.
/// A fresh password and its SCRAM verifier (the only form of it the server ever sees).
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

/// Maps a server error to a backend error, keeping the server's words; connection loss, and
/// a server that refuses sessions for now (full, starting, stopping), is "unavailable" so
/// callers get a 503 they may retry.
pub(crate) fn db_err(e: tokio_postgres::Error) -> BackendError {
    use tokio_postgres::error::SqlState;
    match e.as_db_error() {
        Some(db) => {
            let mut message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                message.push_str(&format!(": {d}"));
            }
            if [SqlState::TOO_MANY_CONNECTIONS, SqlState::CANNOT_CONNECT_NOW].contains(db.code()) {
                return BackendError::Unavailable {
                    message,
                    retry_after: Some(Duration::from_secs(5)),
                };
            }
            BackendError::Failed {
                message,
                sqlstate: Some(db.code().clone()),
            }
        }
        None => BackendError::Unavailable {
            message: crate::pgconn::describe(&e),
            retry_after: Some(Duration::from_secs(5)),
        },
    }
}
