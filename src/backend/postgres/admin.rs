//! The admin SQL that several parts of the backend run — ending sessions, dropping a database or
//! a role, opening and closing a database, comments, rolling back a prepared transaction — spelled
//! once, and how the server's errors become `BackendError`s. Every identifier goes through
//! `quote`, every value is a bound parameter or an escaped literal. The helpers answer the
//! driver's error, so that each caller says which step failed.

use crate::backend::BackendError;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error};

/// The attributes every role previewdb makes is denied (the login, if any, comes apart).
pub(super) const UNPRIVILEGED: &str =
    "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";

pub(super) fn quote(name: &str) -> String {
    escape_identifier(name)
}

/// Whose sessions [`terminate`] ends; never the caller's own.
pub(super) enum Sessions<'a> {
    Role(&'a str),
    Database(&'a str),
    /// Sessions opened with this `application_name` (see `tenant::RunGuard`).
    Application(&'a str),
    Pid(i32),
}

/// Ends the sessions of `whose`, waiting up to `wait` for each to be gone (its locks go only
/// when it has exited); `Duration::ZERO` does not wait.
pub(super) async fn terminate(
    conn: &Client,
    whose: Sessions<'_>,
    wait: Duration,
) -> Result<(), Error> {
    let (column, value): (&str, &(dyn ToSql + Sync)) = match &whose {
        Sessions::Role(role) => ("usename", role),
        Sessions::Database(db) => ("datname", db),
        Sessions::Application(name) => ("application_name", name),
        Sessions::Pid(pid) => ("pid", pid),
    };
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    conn.execute(
        &format!(
            "SELECT pg_terminate_backend(pid, $2) FROM pg_stat_activity \
             WHERE {column} = $1 AND pid <> pg_backend_pid()"
        ),
        &[value, &wait_ms],
    )
    .await?;
    Ok(())
}

/// Runs `sql` (a transaction that renames database `name`) once nobody is connected to it:
/// sessions just ended may take a moment to go.
pub(super) async fn rename_when_free(
    admin: &Client,
    name: &str,
    sql: &str,
) -> Result<(), BackendError> {
    let mut attempt = 0;
    loop {
        terminate(admin, Sessions::Database(name), Duration::ZERO)
            .await
            .map_err(db_err)?;
        match admin.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                // The failed statement left its transaction open.
                let _ = admin.batch_execute("ROLLBACK").await;
                attempt += 1;
                if e.code() != Some(&SqlState::OBJECT_IN_USE) || attempt >= 100 {
                    return Err(db_err(e));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Drops database `name` and whatever sessions are still in it; nothing when it is gone.
pub(super) async fn drop_database(conn: &Client, name: &str) -> Result<(), Error> {
    conn.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote(name)
    ))
    .await
}

pub(super) async fn drop_role(conn: &Client, name: &str) -> Result<(), Error> {
    conn.batch_execute(&format!("DROP ROLE IF EXISTS {}", quote(name)))
        .await
}

pub(super) async fn database_exists(conn: &Client, name: &str) -> Result<bool, Error> {
    let row = conn
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?;
    Ok(row.is_some())
}

pub(super) async fn role_exists(conn: &Client, name: &str) -> Result<bool, Error> {
    let row = conn
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await?;
    Ok(row.is_some())
}

/// Whether sessions may start in database `name` (not even a superuser's when not).
pub(super) async fn allow_connections(conn: &Client, name: &str, allow: bool) -> Result<(), Error> {
    conn.batch_execute(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
        quote(name)
    ))
    .await
}

/// Rolls back prepared transaction `gid` (from the database it was prepared in); one that was
/// finished meanwhile, by its owner or a teardown running beside this one, is no error.
pub(super) async fn rollback_prepared(conn: &Client, gid: &str) -> Result<(), Error> {
    match conn
        .batch_execute(&format!("ROLLBACK PREPARED {}", escape_literal(gid)))
        .await
    {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(()),
        outcome => outcome,
    }
}

/// `REVOKE ALL ON DATABASE … FROM PUBLIC`, for a statement list.
pub(super) fn revoke_public(db: &str) -> String {
    format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote(db))
}

/// `GRANT role TO CURRENT_USER`: a non-superuser admin must be a member of a role to create
/// objects it owns.
pub(super) fn grant_to_admin(role: &str) -> String {
    format!("GRANT {} TO CURRENT_USER", quote(role))
}

/// What carries a comment mark (see `marks`).
#[derive(Clone, Copy)]
pub(super) enum Object {
    Role,
    Database,
    Schema,
}

/// `COMMENT ON … IS …`, for a statement list (a mark often goes in one transaction with what
/// it marks).
pub(super) fn comment_on(object: Object, name: &str, text: &str) -> String {
    let kind = match object {
        Object::Role => "ROLE",
        Object::Database => "DATABASE",
        Object::Schema => "SCHEMA",
    };
    format!(
        "COMMENT ON {kind} {} IS {}",
        quote(name),
        escape_literal(text)
    )
}

/// The comment of database `name`: `None` when there is no such database.
pub(super) async fn database_comment(
    conn: &Client,
    name: &str,
) -> Result<Option<Option<String>>, Error> {
    let row = conn
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The comment of schema `name` in the database `conn` is in: `None` when there is no such
/// schema.
pub(super) async fn schema_comment(
    conn: &Client,
    name: &str,
) -> Result<Option<Option<String>>, Error> {
    let row = conn
        .query_opt(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Maps a server error to a backend error, keeping the server's words and its SQLSTATE;
/// connection loss, and a server that refuses sessions for now (full, starting, stopping), is
/// "unavailable" so callers get a 503 they may retry.
pub(super) fn db_err(e: Error) -> BackendError {
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
