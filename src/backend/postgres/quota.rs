//! Size quotas on a postgres target: how big each environment is (its database, or its
//! schema's tables in the shared database), and locking one out or letting it in again.

use super::admin::{self, db_err, Sessions};
use super::names::EnvNames;
use super::target::Inner;
use crate::backend::BackendError;
use crate::domain::PgIdent;
use std::collections::HashMap;
use std::time::Duration;

/// The size of each environment of `envs` that could be measured, by its index.
pub(super) async fn measure(
    inner: &Inner,
    envs: &[Option<EnvNames>],
) -> Result<Vec<(usize, i64)>, BackendError> {
    let mut databases: HashMap<&str, usize> = HashMap::new();
    let mut schemas: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
    for (i, env) in envs.iter().enumerate() {
        match env {
            Some(e) if e.in_schema => {
                let shared = schemas.entry(e.db.as_str()).or_default();
                shared.insert(e.role.as_str(), i);
            }
            Some(e) => {
                databases.insert(e.db.as_str(), i);
            }
            None => {}
        }
    }
    let mut sizes = vec![];
    let names: Vec<&str> = databases.keys().copied().collect();
    let rows = inner
        .admin()
        .await?
        .query(
            "SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(db_err)?;
    for row in rows {
        sizes.push((databases[row.get::<_, &str>(0)], row.get(1)));
    }
    for (db, in_db) in schemas {
        let names: Vec<&str> = in_db.keys().copied().collect();
        let rows = inner
            .connect_db(db)
            .await?
            .query(
                "SELECT n.nspname, coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                 FROM pg_namespace n LEFT JOIN pg_class c \
                   ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm') \
                 WHERE n.nspname = ANY($1) GROUP BY n.nspname",
                &[&names],
            )
            .await
            .map_err(db_err)?;
        for row in rows {
            sizes.push((in_db[row.get::<_, &str>(0)], row.get(1)));
        }
    }
    Ok(sizes)
}

/// `locked`: logins refused and sessions ended; else logins allowed again.
pub(super) async fn set_locked(
    inner: &Inner,
    role: &PgIdent,
    locked: bool,
) -> Result<(), BackendError> {
    let conn = inner.admin().await?;
    let login = if locked { "NOLOGIN" } else { "LOGIN" };
    conn.batch_execute(&format!("ALTER ROLE {} {login}", role.quoted()))
        .await
        .map_err(db_err)?;
    if locked {
        admin::terminate(&conn, Sessions::Role(role.as_str()), Duration::ZERO)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}
