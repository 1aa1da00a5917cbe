//! A teardown that nothing a tenant does can block.
//!
//! A tenant owns its database (or schema) and its role, and may use that to get in the way:
//! mark its database a template, refuse connections, leave prepared transactions (which outlive
//! every session and hold their locks), set defaults that hijack or cripple admin sessions in
//! its database (`role`, `search_path`, `default_transaction_read_only`, `statement_timeout`,
//! `idle_session_timeout`, `local_preload_libraries`), hold locks in an open transaction, or be
//! granted things by another environment (which makes `DROP ROLE` refuse). Each step here undoes
//! one of those, and every statement runs in a guarded session (see `Inner::connect_guarded`)
//! whose lock and statement timeouts turn "wait forever" into an error: the record then stays
//! `deleting` and the teardown is retried, each step being idempotent.
//!
//! Only what is the environment's own is touched: its role's sessions and prepared
//! transactions, its databases, its schema, what its role owns or was granted. The one
//! exception is a session or prepared transaction that holds a lock on an object inside the
//! environment's schema: it is ended, since the object goes away in any case.

use super::admin::{self, db_err, quote, Sessions};
use super::names::EnvNames;
use super::target::Inner;
use crate::backend::BackendError;
use crate::domain::PgIdent;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// How long ending a session waits for it to be gone: its locks are released only when it
/// has exited.
const TERMINATE_WAIT: Duration = Duration::from_secs(5);

impl Inner {
    /// Tears down whichever kind the environment is.
    pub(super) async fn remove(&self, env: &EnvNames) -> Result<(), BackendError> {
        match env.in_schema {
            true => self.teardown_schema(&env.db, &env.role).await,
            false => self.teardown(&env.db, &env.role).await,
        }
    }

    /// Lock-out, the environment's database, whatever else its role owns, the role.
    pub(super) async fn teardown(&self, db: &PgIdent, role: &PgIdent) -> Result<(), BackendError> {
        let conn = self.connect_guarded(None).await?;
        lock_out(self, &conn, role.as_str()).await?;
        drop(conn);
        drop_database(self, db.as_str()).await?;
        drop_role(self, role.as_str()).await
    }

    /// What a delete waits for: the role locked out and its database closed to everyone
    /// (grants revoked, connections refused, sessions ended). The data goes with `teardown`.
    ///
    /// A burst of deletes queues for the few guarded sessions. Each waits as long as its
    /// caller's deadline allows (every caller bounds this call), not the pool's own 30 s: a
    /// delete that has time left must not fail on a pool timeout.
    pub(super) async fn close(&self, db: &PgIdent, role: &PgIdent) -> Result<(), BackendError> {
        let within_deadline = deadpool_postgres::Timeouts {
            wait: None,
            ..self.guarded.timeouts()
        };
        let conn = self
            .guarded
            .timeout_get(&within_deadline)
            .await
            .map_err(|e| BackendError::Unavailable {
                message: crate::pgconn::describe(&e),
                retry_after: None,
            })?;
        lock_out(self, &conn, role.as_str()).await?;
        if database_exists(&conn, db.as_str()).await? {
            close_database(&conn, db.as_str()).await?;
        }
        Ok(())
    }

    /// Lock-out, the schema and what the role owns in the shared database, the role. The
    /// shared database's other sessions are the neighbours' and are left alone.
    pub(super) async fn teardown_schema(
        &self,
        db: &PgIdent,
        role: &PgIdent,
    ) -> Result<(), BackendError> {
        let conn = self.connect_guarded(None).await?;
        lock_out(self, &conn, role.as_str()).await?;
        let shared_exists = database_exists(&conn, db.as_str()).await?;
        drop(conn);
        if shared_exists {
            let shared = self.connect_guarded(Some(db.as_str())).await?;
            end_lock_holders(&shared, role.as_str()).await?;
            shared
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", role.quoted()))
                .await
                .map_err(|e| step(&format!("drop schema {role} in {db}"), e))?;
        }
        // Also drops the role's large objects, publications and grants in the shared database.
        drop_role(self, role.as_str()).await
    }
}

/// The first steps of every teardown: the role's prepared transactions are rolled back (one
/// that ran `ALTER ROLE` holds the row every later step must change), it may no longer log in,
/// and its sessions are ended. Does nothing when the role is gone.
pub(super) async fn lock_out(inner: &Inner, conn: &Client, role: &str) -> Result<(), BackendError> {
    if !role_exists(conn, role).await? {
        return Ok(());
    }
    // Best effort: what fails here fails again below, after the role can no longer log in.
    if let Err(e) = rollback_prepared(inner, conn, None, Some(role)).await {
        tracing::warn!(role = %role, error = %e, "prepared transactions not rolled back yet");
    }
    conn.batch_execute(&format!("ALTER ROLE {} NOLOGIN", quote(role)))
        .await
        .map_err(|e| step(&format!("lock role {role} out"), e))?;
    end_sessions(conn, Sessions::Role(role), role).await?;
    // A session may have prepared a transaction before it was ended.
    rollback_prepared(inner, conn, None, Some(role)).await
}

/// Ends what holds schema `role` in shared database `db` without locking the role out (for a
/// reset): the role's sessions and prepared transactions, and others' locks on its objects.
/// Answers a guarded session in `db` for what comes next.
pub(super) async fn release_schema(
    inner: &Inner,
    db: &PgIdent,
    role: &PgIdent,
) -> Result<Client, BackendError> {
    let conn = inner.connect_guarded(None).await?;
    end_sessions(&conn, Sessions::Role(role.as_str()), role.as_str()).await?;
    rollback_prepared(inner, &conn, None, Some(role.as_str())).await?;
    let shared = inner.connect_guarded(Some(db.as_str())).await?;
    end_lock_holders(&shared, role.as_str()).await?;
    Ok(shared)
}

/// Drops database `name` whatever its owner did to it; nothing when it does not exist.
///
/// Callers lock its owner out first: this closes the database to everyone else, ends its
/// sessions and prepared transactions, and undoes `IS_TEMPLATE` and the database's settings.
pub(super) async fn drop_database(inner: &Inner, name: &str) -> Result<(), BackendError> {
    let conn = inner.connect_guarded(None).await?;
    if !database_exists(&conn, name).await? {
        return Ok(());
    }
    close_database(&conn, name).await?;
    rollback_prepared(inner, &conn, Some(name), None).await?;
    let d = quote(name);
    // The flags first: a template cannot be dropped, and RESET ALL is only about later admin
    // sessions in it (the guarded settings override them in any case).
    conn.batch_execute(&format!(
        "ALTER DATABASE {d} IS_TEMPLATE false; ALTER DATABASE {d} CONNECTION LIMIT -1; \
         ALTER DATABASE {d} RESET ALL;"
    ))
    .await
    .map_err(|e| step(&format!("undo the owner's changes to database {name}"), e))?;
    admin::drop_database(&conn, name)
        .await
        .map_err(|e| step(&format!("drop database {name}"), e))
}

/// Closes database `name` to everyone and ends its sessions. Whoever the owner let in
/// (another environment's role, PUBLIC) could otherwise connect again before the drop, read
/// what is there, or prepare a transaction.
async fn close_database(conn: &Client, name: &str) -> Result<(), BackendError> {
    let grantees = conn
        .query(
            "SELECT DISTINCT (SELECT rolname FROM pg_roles r WHERE r.oid = a.grantee) \
             FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
            &[&name],
        )
        .await
        .map_err(|e| step(&format!("read the privileges on database {name}"), e))?;
    let d = quote(name);
    for g in grantees {
        let grantee = g
            .get::<_, Option<String>>(0)
            .map_or("PUBLIC".into(), |r| quote(&r));
        conn.batch_execute(&format!("REVOKE ALL ON DATABASE {d} FROM {grantee}"))
            .await
            .map_err(|e| step(&format!("close database {name}"), e))?;
    }
    // Not even a superuser's session may start there now.
    admin::allow_connections(conn, name, false)
        .await
        .map_err(|e| step(&format!("close database {name}"), e))?;
    end_sessions(conn, Sessions::Database(name), name).await
}

/// Drops role `name` and everything it owns or was granted anywhere on the cluster; nothing
/// when it does not exist.
///
/// Databases it owns go under any name (found by owner, not by the recorded name); in every
/// database where `pg_shdepend` shows it owns objects or holds privileges (grants another
/// environment made it included), `DROP OWNED BY` runs; memberships go with the role.
pub(super) async fn drop_role(inner: &Inner, name: &str) -> Result<(), BackendError> {
    let conn = inner.connect_guarded(None).await?;
    if !role_exists(&conn, name).await? {
        return Ok(());
    }
    lock_out(inner, &conn, name).await?;
    let owned = conn
        .query(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            &[&name],
        )
        .await
        .map_err(|e| step(&format!("find the databases role {name} owns"), e))?;
    for row in owned {
        drop_database(inner, row.get::<_, &str>(0)).await?;
    }
    for (db, allows) in databases_holding(&conn, name).await? {
        drop_owned_in(inner, &conn, name, &db, allows).await?;
    }
    admin::drop_role(&conn, name)
        .await
        .map_err(|e| step(&format!("drop role {name}"), e))
}

/// The databases where role `name` owns objects or holds privileges, and whether each allows
/// connections; the admin's own among them, for privileges on shared objects (dbid 0), which
/// DROP OWNED revokes in any database.
async fn databases_holding(conn: &Client, name: &str) -> Result<Vec<(String, bool)>, BackendError> {
    let admin_db: Option<String> = conn
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| step("read the admin database", e))?
        .get(0);
    let rows = conn
        .query(
            "SELECT DISTINCT d.datname, d.datallowconn FROM pg_shdepend s \
             JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass \
             AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            &[&name],
        )
        .await
        .map_err(|e| step(&format!("find where role {name} is depended on"), e))?;
    let mut databases: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if let Some(db) = admin_db {
        if !databases.iter().any(|(d, _)| *d == db) {
            databases.push((db, true));
        }
    }
    Ok(databases)
}

/// `DROP OWNED BY role` in `db`. A database that refuses connections (its owner, another
/// environment, may have done that to keep the grants it made alive) is opened for the time
/// it takes and closed again.
async fn drop_owned_in(
    inner: &Inner,
    conn: &Client,
    role: &str,
    db: &str,
    allows_connections: bool,
) -> Result<(), BackendError> {
    if !allows_connections {
        admin::allow_connections(conn, db, true)
            .await
            .map_err(|e| step(&format!("open database {db} to drop what {role} holds"), e))?;
    }
    let outcome = async {
        inner
            .connect_guarded(Some(db))
            .await?
            // CASCADE: what others built there on the role's objects (a view on its table)
            // would otherwise keep them, and the role, alive.
            .batch_execute(&format!("DROP OWNED BY {} CASCADE", quote(role)))
            .await
            .map_err(|e| step(&format!("drop what role {role} owns or holds in {db}"), e))
    }
    .await;
    if !allows_connections {
        if let Err(e) = admin::allow_connections(conn, db, false).await {
            tracing::warn!(database = %db, error = %e, "could not close a database again");
        }
    }
    outcome
}

/// Rolls back the prepared transactions made in database `db` or by role `owner`, each while
/// connected to its own database (PostgreSQL finishes them nowhere else).
async fn rollback_prepared(
    inner: &Inner,
    conn: &Client,
    db: Option<&str>,
    owner: Option<&str>,
) -> Result<(), BackendError> {
    let rows = conn
        .query(
            "SELECT p.database, p.gid, d.datallowconn OR pg_get_userbyid(d.datdba) = $2 \
                    OR d.datname = $1 FROM pg_prepared_xacts p \
             JOIN pg_database d ON d.datname = p.database \
             WHERE p.database = $1 OR p.owner = $2 ORDER BY 1",
            &[&db, &owner],
        )
        .await
        .map_err(|e| step("list prepared transactions", e))?;
    // Ordered by database: one session per database they sit in.
    let mut current: Option<(String, Client)> = None;
    for row in rows {
        let (database, gid, reachable): (String, String, bool) =
            (row.get(0), row.get(1), row.get(2));
        if !reachable {
            return Err(BackendError::failed(format!(
                "teardown could not roll back prepared transaction {gid:?} of role {}: it sits \
                 in database {database}, which is not the environment's and refuses connections",
                owner.unwrap_or("?")
            )));
        }
        open_for_rollback(conn, &database, &gid).await?;
        if current.as_ref().map(|(d, _)| d) != Some(&database) {
            current = Some((
                database.clone(),
                inner.connect_guarded(Some(&database)).await?,
            ));
        }
        let client = &current.as_ref().expect("just set").1;
        admin::rollback_prepared(client, &gid).await.map_err(|e| {
            step(
                &format!("roll back prepared transaction {gid:?} in {database}"),
                e,
            )
        })?;
    }
    Ok(())
}

/// Lets sessions into `database` (ours, being dropped, so ours to open) for rolling back
/// prepared transaction `gid` there. One that holds the database's catalog row makes this
/// wait, then fail: the error says so.
async fn open_for_rollback(conn: &Client, database: &str, gid: &str) -> Result<(), BackendError> {
    let allows: bool = conn
        .query_one(
            "SELECT datallowconn FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .map_err(|e| step(&format!("look up database {database}"), e))?
        .get(0);
    if allows {
        return Ok(());
    }
    admin::allow_connections(conn, database, true)
        .await
        .map_err(|e| {
            let why = if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                " (the transaction itself holds the database's catalog row; only a session \
                 in the database can end it, e.g. the server in single-user mode)"
            } else {
                ""
            };
            step(
                &format!("open database {database} to roll back prepared transaction {gid:?}{why}"),
                e,
            )
        })
}

/// Ends the sessions and prepared transactions of others that hold or wait for locks on
/// `schema` (the environment's own, in a shared database) or its relations, which DROP SCHEMA
/// would wait for; e.g. a neighbour the tenant let create in its schema.
async fn end_lock_holders(shared: &Client, schema: &str) -> Result<(), BackendError> {
    let holders = shared
        .query(
            "WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = $1) \
             SELECT DISTINCT l.pid, (SELECT p.gid FROM pg_locks t JOIN pg_prepared_xacts p \
                            ON p.transaction = t.transactionid \
                            WHERE t.virtualtransaction = l.virtualtransaction \
                            AND t.locktype = 'transactionid' LIMIT 1) \
             FROM pg_locks l \
             WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.pid IS DISTINCT FROM pg_backend_pid() \
             AND ((l.locktype = 'relation' AND l.relation IN \
                    (SELECT c.oid FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns))) \
               OR (l.locktype = 'object' AND l.classid = 'pg_namespace'::regclass \
                    AND l.objid IN (SELECT oid FROM ns)))",
            &[&schema],
        )
        .await
        .map_err(|e| step(&format!("find who holds locks in schema {schema}"), e))?;
    for row in holders {
        let (pid, gid): (Option<i32>, Option<String>) = (row.get(0), row.get(1));
        if let Some(pid) = pid {
            admin::terminate(shared, Sessions::Pid(pid), TERMINATE_WAIT)
                .await
                .map_err(|e| step("end a session holding a lock in the schema", e))?;
        } else if let Some(gid) = gid {
            admin::rollback_prepared(shared, &gid)
                .await
                .map_err(|e| step(&format!("roll back prepared transaction {gid:?}"), e))?;
        }
    }
    Ok(())
}

/// Ends the sessions of `whose` (`what` names them in an error) and waits until they are gone.
async fn end_sessions(conn: &Client, whose: Sessions<'_>, what: &str) -> Result<(), BackendError> {
    admin::terminate(conn, whose, TERMINATE_WAIT)
        .await
        .map_err(|e| step(&format!("end the sessions of {what}"), e))
}

async fn role_exists(conn: &Client, role: &str) -> Result<bool, BackendError> {
    admin::role_exists(conn, role)
        .await
        .map_err(|e| step(&format!("look up role {role}"), e))
}

async fn database_exists(conn: &Client, name: &str) -> Result<bool, BackendError> {
    admin::database_exists(conn, name)
        .await
        .map_err(|e| step(&format!("look up database {name}"), e))
}

/// The server's error, prefixed with the teardown step it stopped.
fn step(what: &str, e: tokio_postgres::Error) -> BackendError {
    match db_err(e) {
        BackendError::Failed { message, sqlstate } => BackendError::Failed {
            message: format!("teardown could not {what}: {message}"),
            sqlstate,
        },
        other => other,
    }
}
