//! SQL previewdb did not write — a caller's migrations, a blueprint's files in schema isolation —
//! runs in a login of the environment's own role, which cannot become anyone else. Its
//! statements and lock waits end with the deadline, and its sessions carry an application name
//! of their own so that they are ended when the run is abandoned.

use super::admin::{self, Sessions};
use super::names::EnvNames;
use super::target::Inner;
use crate::backend::{BackendError, Secret};
use crate::blueprint::Blueprint;
use crate::bounds::Deadline;
use crate::domain::PgIdent;
use crate::domain::{MigrationFormat, SourceFile};
use crate::sqlexec::migrations::{self, Session};
use std::time::Duration;
use tokio_postgres::error::SqlState;

impl Inner {
    /// A login of `role` into `database` (see the module's doc).
    pub(super) fn login(
        &self,
        database: &PgIdent,
        role: &PgIdent,
        password: &Secret,
        deadline: &Deadline,
    ) -> (Session, RunGuard<'_>) {
        self.login_with(database, role, password, deadline, None)
    }

    /// A login of `role` in the shared database, its schema first on the search path.
    pub(super) fn schema_login(
        &self,
        db: &PgIdent,
        role: &PgIdent,
        password: &Secret,
        deadline: &Deadline,
    ) -> (Session, RunGuard<'_>) {
        let path = format!("{role},public");
        self.login_with(db, role, password, deadline, Some(&path))
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

    /// Applies `extra` on top of the blueprint's migrations (already applied, so skipped),
    /// logged in as the environment's role, after waiting for a place in the target's queue of
    /// caller migrations.
    pub(super) async fn apply_migrations(
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
}

/// Sessions started for one run of SQL previewdb did not write (see `Inner::login`). Unless
/// the run completed, they are ended when this is dropped: a caller that gave up, or a
/// deadline that passed, must not leave a statement running on the server.
pub(super) struct RunGuard<'a> {
    inner: &'a Inner,
    tag: String,
    done: bool,
}

impl RunGuard<'_> {
    pub(super) fn done(&mut self) {
        self.done = true;
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (pool, tag) = (self.inner.admin.clone(), std::mem::take(&mut self.tag));
        let terminate = async move {
            if let Ok(conn) = pool.get().await {
                let _ = admin::terminate(&conn, Sessions::Application(&tag), Duration::ZERO).await;
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(terminate));
    }
}

/// A failed run of migrations; one cut short by its deadline (`statement_timeout`) says so.
fn migration_error(e: crate::sqlexec::ScriptError) -> BackendError {
    if e.sqlstate.as_deref() == Some(SqlState::QUERY_CANCELED.code()) {
        BackendError::Deadline {
            message: format!("deadline exceeded while applying migrations: {e}"),
        }
    } else {
        BackendError::Migration {
            message: e.to_string(),
        }
    }
}
