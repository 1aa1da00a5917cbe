//! The warm pool: per blueprint, `pool_size` databases cloned from its template ahead of time,
//! each with a placeholder role that already owns everything in it. Handing one out is a single
//! round trip — rename role and database, give the role its login and password — and an empty
//! pool falls back to cloning on demand. Pool entries are marked in their COMMENT with their
//! blueprint and template hash, so that a changed blueprint retires the old ones.

use super::{db_err, quote, template::TemplateInfo, Inner};
use crate::backend::{BackendError, ProvisionRequest, Secret};
use crate::blueprint::Blueprint;
use crate::domain::PgIdent;
use postgres_protocol::escape::escape_literal;
use rand::distributions::{Alphanumeric, DistString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const POOL_MARK: &str = "previewdb:pool=";
const FILLING_MARK: &str = "previewdb:pool-filling=";

/// One filler per pool in this process.
#[derive(Default)]
pub struct WarmPool {
    fillers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn mark(prefix: &str, bp: &Blueprint, hash: &str) -> String {
    format!("{prefix}{}:{hash}", bp.name)
}

pub fn is_pool_mark(comment: &str) -> bool {
    comment.starts_with(POOL_MARK) || comment.starts_with(FILLING_MARK)
}

/// A pool entry whose template is not among `templates` (the hashes of the templates that stay).
pub fn is_stale(comment: &str, templates: &[String]) -> bool {
    let rest = comment
        .strip_prefix(POOL_MARK)
        .or_else(|| comment.strip_prefix(FILLING_MARK));
    rest.and_then(|r| r.rsplit(':').next())
        .is_some_and(|hash| !templates.iter().any(|k| k == hash))
}

/// Takes a ready pool database for the environment, renaming it and its role to the
/// environment's names. `None` when the pool is empty.
pub async fn claim(
    inner: &Inner,
    bp: &Blueprint,
    tpl: &TemplateInfo,
    req: &ProvisionRequest,
    db: &PgIdent,
    role: &PgIdent,
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
           FOR p IN SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') = {pool_mark} \
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
        pool_mark = escape_literal(&mark(POOL_MARK, bp, &tpl.hash)),
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
    count_marked(inner, &mark(POOL_MARK, bp, hash))
        .await
        .unwrap_or(0) as usize
}

async fn count_marked(inner: &Inner, mark: &str) -> Result<i64, BackendError> {
    let row = inner
        .admin()
        .await?
        .query_one(
            "SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') = $1",
            &[&mark],
        )
        .await
        .map_err(db_err)?;
    Ok(row.get(0))
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
    let lock = inner.admin().await?;
    let key = crate::advisory_key("pool", &tpl.hash);
    if wait {
        lock.execute("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .map_err(db_err)?;
    } else {
        let got: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(db_err)?
            .get(0);
        if !got {
            return Ok(());
        }
    }
    let outcome = top_up(inner, bp, tpl).await;
    let _ = lock.execute("SELECT pg_advisory_unlock($1)", &[&key]).await;
    outcome
}

async fn top_up(inner: &Inner, bp: &Blueprint, tpl: &TemplateInfo) -> Result<(), BackendError> {
    retire(inner, bp, tpl).await?;
    while ready_count(inner, bp, &tpl.hash).await < bp.pool_size as usize {
        add_entry(inner, bp, tpl).await?;
    }
    Ok(())
}

/// Drops this blueprint's entries of other hashes, and half-made entries of this one (we hold
/// the fill lock, so nobody is making them).
async fn retire(inner: &Inner, bp: &Blueprint, tpl: &TemplateInfo) -> Result<(), BackendError> {
    let rows = inner.marked_databases("previewdb:pool").await?;
    let current = mark(POOL_MARK, bp, &tpl.hash);
    let own = |prefix: &str, c: &str| {
        c.strip_prefix(prefix).is_some_and(|r| {
            r.rsplit_once(':')
                .is_some_and(|(b, _)| b == bp.name.as_str())
        })
    };
    for (name, comment) in rows {
        let retired =
            (own(POOL_MARK, &comment) && comment != current) || own(FILLING_MARK, &comment);
        if retired {
            drop_entry(inner, &name).await?;
        }
    }
    Ok(())
}

async fn drop_entry(inner: &Inner, name: &str) -> Result<(), BackendError> {
    let admin = inner.admin().await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(name)
        ))
        .await
        .map_err(db_err)?;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote(name)))
        .await
        .map_err(db_err)
}

async fn add_entry(inner: &Inner, bp: &Blueprint, tpl: &TemplateInfo) -> Result<(), BackendError> {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rngs::OsRng, 10)
        .to_ascii_lowercase();
    let name =
        PgIdent::parse(&format!("pdb_pool_{}_{suffix}", &tpl.hash[..8])).expect("valid pool name");
    match make_entry(inner, bp, tpl, &name).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = drop_entry(inner, name.as_str()).await;
            Err(e)
        }
    }
}

async fn make_entry(
    inner: &Inner,
    bp: &Blueprint,
    tpl: &TemplateInfo,
    name: &PgIdent,
) -> Result<(), BackendError> {
    let admin = inner.admin().await?;
    let filling = escape_literal(&mark(FILLING_MARK, bp, &tpl.hash));
    admin
        .batch_execute(&format!(
            "CREATE ROLE {n} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; \
             COMMENT ON ROLE {n} IS {filling};",
            n = name.quoted()
        ))
        .await
        .map_err(db_err)?;
    inner.grant_membership(&admin, name).await?;
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
            "REVOKE ALL ON DATABASE {n} FROM PUBLIC; COMMENT ON DATABASE {n} IS {filling};",
            n = name.quoted()
        ))
        .await
        .map_err(db_err)?;
    inner.take_ownership(name, name).await?;
    // Our session in it must be gone before it can be renamed at hand-out.
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name.as_str()],
        )
        .await
        .map_err(db_err)?;
    let ready = escape_literal(&mark(POOL_MARK, bp, &tpl.hash));
    admin
        .batch_execute(&format!(
            "COMMENT ON ROLE {n} IS {ready}; COMMENT ON DATABASE {n} IS {ready};",
            n = name.quoted()
        ))
        .await
        .map_err(db_err)
}
