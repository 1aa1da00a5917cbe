//! `schema` isolation: each environment is a schema owned by a role of its own, in a database
//! shared by the environments of one blueprint on the target. It costs no database per
//! environment, and its wall is thinner: a role sees the names of other schemas in the
//! catalogs (never their contents, which need USAGE it does not have).
//!
//! There is no template to clone: a blueprint's migrations and seeds run in the new schema,
//! as its role, when the environment is made. A blueprint with a `pg_dump` schema is refused:
//! pg_dump qualifies every name with the schema it came from (`public.`), so its objects would
//! not land in the environment's schema.

use super::admin::{self, db_err, Object};
use super::lock::AdvisoryLock;
use super::marks;
use super::names::EnvNames;
use super::target::Inner;
use super::template;
use crate::backend::{BackendError, ProvisionRequest};
use crate::blueprint::Blueprint;
use crate::bounds::Deadline;
use crate::domain::{InvalidInput, PgIdent, Secret, SourceFile};

pub(super) fn check_blueprint(blueprint: Option<&Blueprint>) -> Result<(), BackendError> {
    match blueprint.and_then(|bp| bp.schema.as_ref().map(|s| (bp, s))) {
        Some((bp, dump)) => Err(InvalidInput::new(
            "isolation",
            format!(
                "blueprint {:?} starts from a pg_dump file ({}), which names every object with \
                 its schema (public.…) and so cannot be loaded into an environment's own schema; \
                 use isolation \"database\" for it",
                bp.name.as_str(),
                dump.name
            ),
        )
        .into()),
        None => Ok(()),
    }
}

impl Inner {
    /// The role, its schema in the shared database, and the blueprint's files run in it.
    pub(super) async fn make_in_schema(
        &self,
        req: &ProvisionRequest,
        db: &PgIdent,
        role: &PgIdent,
    ) -> Result<Secret, BackendError> {
        let blueprint = req.blueprint.as_deref();
        self.ensure_shared(db, blueprint).await?;
        let conn = self.admin().await?;
        let (password, attrs) = self.login_attributes(req.expires_at);
        let mark = marks::env(req.id);
        conn.batch_execute(&format!(
            "CREATE ROLE {r} {attrs}; {comment}; \
             GRANT {d} TO {r}; \
             ALTER ROLE {r} IN DATABASE {d} SET search_path = {r}, public;",
            r = role.quoted(),
            d = db.quoted(),
            comment = admin::comment_on(Object::Role, role.as_str(), &mark),
        ))
        .await
        .map_err(db_err)?;
        self.grant_membership(&conn, role).await?;
        drop(conn);
        self.create_schema(db, role, &mark).await?;
        self.fill_schema(
            db,
            role,
            blueprint,
            &req.migrations,
            &password,
            &req.deadline,
        )
        .await?;
        Ok(password)
    }

    async fn create_schema(
        &self,
        db: &PgIdent,
        role: &PgIdent,
        mark: &str,
    ) -> Result<(), BackendError> {
        self.connect_db(db.as_str())
            .await?
            .batch_execute(&format!(
                "CREATE SCHEMA {r} AUTHORIZATION {r}; {comment};",
                r = role.quoted(),
                comment = admin::comment_on(Object::Schema, role.as_str(), mark),
            ))
            .await
            .map_err(db_err)
    }

    /// Runs the blueprint's migrations and seeds, then `extra` migrations, logged in as the
    /// role, in its schema; the tools' history tables land there too.
    async fn fill_schema(
        &self,
        db: &PgIdent,
        role: &PgIdent,
        blueprint: Option<&Blueprint>,
        extra: &[SourceFile],
        password: &Secret,
        deadline: &Deadline,
    ) -> Result<(), BackendError> {
        if let Some(bp) = blueprint {
            let _slot = self.queue.admit(deadline).await?;
            let (session, mut run) = self.schema_login(db, role, password, deadline);
            template::load(bp, &session).await?;
            run.done();
        }
        if !extra.is_empty() {
            let env = EnvNames {
                db: db.clone(),
                role: role.clone(),
                in_schema: true,
            };
            self.apply_migrations(&env, blueprint, extra, password, deadline)
                .await?;
        }
        Ok(())
    }

    /// Creates the shared database, its group role and the blueprint's extensions in it, once,
    /// under a target-wide advisory lock.
    async fn ensure_shared(
        &self,
        db: &PgIdent,
        blueprint: Option<&Blueprint>,
    ) -> Result<(), BackendError> {
        let extensions = blueprint.map(|b| b.extensions.as_slice()).unwrap_or(&[]);
        let wanted: Vec<&str> = extensions.iter().map(|e| e.as_str()).collect();
        if self.shared_is_ready(db, &wanted).await? {
            return Ok(());
        }
        let _lock = AdvisoryLock::acquire(&self.admin_server, "shared", db.as_str()).await?;
        self.create_shared(db, blueprint).await?;
        let shared = self.connect_db(db.as_str()).await?;
        // Nobody creates in `public`: it holds the extensions, which everyone may use.
        shared
            .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            .await
            .map_err(db_err)?;
        for ext in extensions {
            shared
                .batch_execute(&format!(
                    "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA public",
                    ext.quoted()
                ))
                .await
                .map_err(|e| BackendError::Blueprint {
                    blueprint: blueprint.map(|b| b.name.to_string()).unwrap_or_default(),
                    message: format!("extension {ext}: {}", db_err(e)),
                })?;
        }
        Ok(())
    }

    /// The shared database and its group role, where missing (under the shared lock).
    async fn create_shared(
        &self,
        db: &PgIdent,
        blueprint: Option<&Blueprint>,
    ) -> Result<(), BackendError> {
        let conn = self.admin().await?;
        if !admin::database_exists(&conn, db.as_str())
            .await
            .map_err(db_err)?
        {
            conn.batch_execute(&format!("CREATE DATABASE {}", db.quoted()))
                .await
                .map_err(db_err)?;
            conn.batch_execute(&format!(
                "{}; {};",
                admin::revoke_public(db.as_str()),
                admin::comment_on(Object::Database, db.as_str(), &marks::shared(blueprint)),
            ))
            .await
            .map_err(db_err)?;
        }
        // The environments' way in: membership of a role of the database's name, which alone
        // holds CONNECT and TEMPORARY on it. A grant per environment would rewrite the
        // database's row each time, and concurrent creates and teardowns would fail with
        // "tuple concurrently updated"; memberships are rows of their own.
        if !admin::role_exists(&conn, db.as_str())
            .await
            .map_err(db_err)?
        {
            conn.batch_execute(&format!(
                "CREATE ROLE {d} NOLOGIN {attrs}; GRANT CONNECT, TEMPORARY ON DATABASE {d} TO {d};",
                d = db.quoted(),
                attrs = admin::UNPRIVILEGED,
            ))
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    /// Whether the shared database exists with every wanted extension.
    async fn shared_is_ready(
        &self,
        db: &PgIdent,
        extensions: &[&str],
    ) -> Result<bool, BackendError> {
        let row = self
            .admin()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) \
                 AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                &[&db.as_str()],
            )
            .await
            .map_err(db_err)?;
        if !row.get::<_, bool>(0) {
            return Ok(false);
        }
        if extensions.is_empty() {
            return Ok(true);
        }
        let present: i64 = self
            .connect_db(db.as_str())
            .await?
            .query_one(
                "SELECT count(*) FROM pg_extension WHERE extname = ANY($1)",
                &[&extensions],
            )
            .await
            .map_err(db_err)?
            .get(0);
        Ok(present as usize == extensions.len())
    }

    /// Back to the blueprint: the schema is dropped and made again, the role kept.
    pub(super) async fn reset_schema(
        &self,
        db: &PgIdent,
        role: &PgIdent,
        blueprint: Option<&Blueprint>,
        password: &Secret,
        deadline: &Deadline,
    ) -> Result<(), BackendError> {
        // Its prepared transactions and locks would make DROP SCHEMA wait for ever.
        let shared = super::teardown::release_schema(self, db, role).await?;
        let comment = admin::schema_comment(&shared, role.as_str())
            .await
            .map_err(db_err)?
            .ok_or_else(|| BackendError::failed(format!("schema {role} is missing")))?;
        let mark = marks::carried_over(comment);
        shared
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", role.quoted()))
            .await
            .map_err(db_err)?;
        self.create_schema(db, role, &mark).await?;
        self.restore_password(role, password).await?;
        self.fill_schema(db, role, blueprint, &[], password, deadline)
            .await
    }
}
