//! The warm pool: per blueprint, `pool_size` databases cloned from its template ahead of time,
//! each with a placeholder role that already owns everything in it. Handing one out is a single
//! round trip — rename role and database, give the role its login and password — and an empty
//! pool falls back to cloning on demand.
//!
//! Entries are made under a `pdb_fill_…` name and renamed to `pdb_pool_…` (role and database in
//! one transaction) once complete, so a ready entry is known by its name, and one that a crash
//! left half-made is too (see `names`): it is dropped by the next filler of that pool, or by
//! garbage collection once nobody holds the pool's fill lock.

use super::lock::AdvisoryLock;
use super::{db_err, names, quote, template::TemplateInfo, Inner};
use crate::backend::{BackendError, ProvisionRequest, Secret};
use crate::blueprint::Blueprint;
use postgres_protocol::escape::escape_literal;
use rand::distributions::{Alphanumeric, DistString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One filler per pool in this process.
#[derive(Default)]
pub struct WarmPool {
    fillers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The advisory-lock namespace of pool fillers, keyed by template hash.
pub const FILL_LOCK: &str = "pool";

/// Takes a ready pool database for the environment, renaming it and its role to the
/// environment's names. `None` when the pool is empty.
pub async fn claim(
    inner: &Inner,
    bp: &Blueprint,
    tpl: &TemplateInfo,
    req: &ProvisionRequest,
    db: &crate::domain::PgIdent,
    role: &crate::domain::PgIdent,
) -> Result<Option<Secret>, BackendError> {
    if bp.pool_size == 0 {
        return Ok(None);
    }
    let (password, attrs) = inner.login_attributes(req.expires_at);
    let env_mark = escape_literal(&format!("{}{}", super::MARK_PREFIX, req.id));
    // Candidates are tried in random order; one taken concurrently (by another request or
    // replica) fails its rename, which rolls back that attempt only, and the next is tried.
    let sql = format!(
        "DO $claim$ DECLARE p text; BEGIN \
           FOR p IN SELECT datname FROM pg_database WHERE starts_with(datname, {prefix}) \
                    ORDER BY random() LOOP \
             BEGIN \
               EXECUTE format('ALTER ROLE %I RENAME TO %s', p, {role_lit}); \
               EXECUTE format('ALTER DATABASE %I RENAME TO %s', p, {db_lit}); \
               ALTER ROLE {role} {attrs}; \
               COMMENT ON ROLE {role} IS {env_mark}; \
               COMMENT ON DATABASE {db} IS {env_mark}; \
               RETURN; \
             EXCEPTION WHEN OTHERS THEN NULL; \
             END; \
           END LOOP; \
           RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = 'previewdb: pool empty'; \
         END $claim$",
        prefix = escape_literal(&names::pool_prefix(bp, &tpl.hash)),
        role_lit = escape_literal(&role.quoted()),
        db_lit = escape_literal(&db.quoted()),
        role = role.quoted(),
        db = db.quoted(),
    );
    match inner.admin().await?.batch_execute(&sql).await {
        Ok(()) => Ok(Some(password)),
        Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "P0002") => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

pub async fn ready_count(inner: &Inner, bp: &Blueprint, hash: &str) -> usize {
    let count = async {
        let row = inner
            .admin()
            .await?
            .query_one(
                "SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)",
                &[&names::pool_prefix(bp, hash)],
            )
            .await
            .map_err(db_err)?;
        Ok::<i64, BackendError>(row.get(0))
    };
    count.await.unwrap_or(0) as usize
}

pub fn refill_in_background(inner: Arc<Inner>, bp: Arc<Blueprint>, tpl: TemplateInfo) {
    if bp.pool_size == 0 {
        return;
    }
    tokio::spawn(async move {
        if let Err(e) = fill(&inner, &bp, &tpl, false).await {
            tracing::warn!(blueprint = %bp.name, error = %e, "pool refill failed");
        }
    });
}

/// Tops the pool of `bp` up to its size, retiring entries of older hashes. One filler per
/// pool across replicas (an advisory lock): with `wait`, for the one at work to finish and
/// then top up; without, leave the work to it.
pub async fn fill(
    inner: &Inner,
    bp: &Blueprint,
    tpl: &TemplateInfo,
    wait: bool,
) -> Result<(), BackendError> {
    let filler = inner
        .pool
        .fillers
        .lock()
        .unwrap()
        .entry(tpl.hash.clone())
        .or_default()
        .clone();
    let _local = match filler.try_lock() {
        Ok(guard) => guard,
        Err(_) if wait => filler.lock().await,
        Err(_) => return Ok(()),
    };
    let _lock = if wait {
        AdvisoryLock::acquire(inner, FILL_LOCK, &tpl.hash).await?
    } else {
        match AdvisoryLock::try_acquire(inner, FILL_LOCK, &tpl.hash).await? {
            Some(lock) => lock,
            None => return Ok(()),
        }
    };
    retire(inner, bp, tpl).await?;
    while ready_count(inner, bp, &tpl.hash).await < bp.pool_size as usize {
        // Each clone is heavy work: it waits for its place in the target's queue.
        let _slot = inner.queue.admit_background().await;
        add_entry(inner, bp, tpl).await?;
    }
    Ok(())
}

/// Drops this blueprint's entries of other hashes, and half-made entries of this one (we hold
/// the fill lock, so nobody is making them).
async fn retire(inner: &Inner, bp: &Blueprint, tpl: &TemplateInfo) -> Result<(), BackendError> {
    let rows = inner
        .admin()
        .await?
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, 'pdb_pool_') \
             OR starts_with(datname, 'pdb_fill_') \
             UNION SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'pdb_fill_')",
            &[],
        )
        .await
        .map_err(db_err)?;
    let this_bp = Some(names::pool_blueprint(bp));
    for row in rows {
        let name: String = row.get(0);
        let retired = match names::kind(&name) {
            Some(names::Kind::Pool { blueprint, hash }) => {
                Some(&blueprint) == this_bp.as_ref() && hash != tpl.hash
            }
            Some(names::Kind::Fill { blueprint, hash }) => {
                Some(&blueprint) == this_bp.as_ref() && hash == tpl.hash
            }
            _ => false,
        };
        if retired {
            drop_entry(inner, &name).await?;
        }
    }
    Ok(())
}

pub(super) async fn drop_entry(inner: &Inner, name: &str) -> Result<(), BackendError> {
    super::teardown::drop_database(inner, name).await?;
    super::teardown::drop_role(inner, name).await
}

async fn add_entry(inner: &Inner, bp: &Blueprint, tpl: &TemplateInfo) -> Result<(), BackendError> {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rngs::OsRng, 8)
        .to_ascii_lowercase();
    let (filling, ready) = names::pool_entry(bp, &tpl.hash, &suffix);
    match make_entry(inner, tpl, &filling, &ready).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = drop_entry(inner, &filling).await;
            Err(e)
        }
    }
}

async fn make_entry(
    inner: &Inner,
    tpl: &TemplateInfo,
    filling: &str,
    ready: &str,
) -> Result<(), BackendError> {
    let admin = inner.admin().await?;
    let name = crate::domain::PgIdent::parse(filling).expect("a valid pool name");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
            name.quoted()
        ))
        .await
        .map_err(db_err)?;
    inner.grant_membership(&admin, &name).await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {n} TEMPLATE {t} OWNER {n}",
            n = name.quoted(),
            t = quote(&tpl.name)
        ))
        .await
        .map_err(db_err)?;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {} FROM PUBLIC",
            name.quoted()
        ))
        .await
        .map_err(db_err)?;
    inner.take_ownership(&name, &name).await?;
    let promote = format!(
        "BEGIN; ALTER ROLE {f} RENAME TO {r}; ALTER DATABASE {f} RENAME TO {r}; COMMIT;",
        f = name.quoted(),
        r = quote(ready)
    );
    super::rename_when_free(&admin, filling, &promote).await
}
