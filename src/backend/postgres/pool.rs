//! The warm pool: per blueprint, `pool_size` databases cloned from its template ahead of time,
//! each with a role that already owns everything in it and carries the SCRAM verifier of a
//! fresh password, which is sealed in the control store's pool ledger. A hand-out therefore
//! takes one ledger row (one statement, `SKIP LOCKED`) and runs one short transaction on the
//! target — rename role and database, give the role its login — with no catalog scan and no
//! password hashing on the way (PostgreSQL checks every verifier it is given against the empty
//! password, a full SCRAM derivation: that is paid at fill time). An empty pool falls back to
//! cloning on demand.
//!
//! Entries are made under a `pdb_fill_…` name, renamed to `pdb_pool_…` (role and database in
//! one transaction) once complete, and then entered in the ledger. What a crash leaves between
//! those steps is told apart by name and ledger: half-made entries are dropped by the next filler
//! of that pool (or by garbage collection once nobody holds the pool's fill lock), and the next
//! filler also drops ready entries the ledger lacks and ledger rows whose entry is gone.

use super::admin::{self, db_err, quote, Object};
use super::lock::AdvisoryLock;
use super::marks;
use super::names::{self, Kind};
use super::target::{new_password, Inner};
use super::template::{self, TemplateInfo};
use crate::backend::{BackendError, ProvisionRequest};
use crate::blueprint::Blueprint;
use crate::domain::{PgIdent, Secret};
use crate::store::{PoolEntry, StoreError};
use postgres_protocol::escape::escape_literal;
use rand::distributions::{Alphanumeric, DistString};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// The advisory-lock namespace of pool fillers, keyed by template hash.
pub(super) const FILL_LOCK: &str = "pool";

/// Ledger rows tried per hand-out before it falls back to a clone: a row's entry may be gone
/// (collected with its template, or dropped by a filler's repair).
const CLAIM_ATTEMPTS: usize = 3;

/// How long a refill waits after a hand-out while the pool is still at least half full: a
/// clone writes its whole template to the WAL that the next hand-outs' commits wait on, so a
/// run of hand-outs goes first. Below half, the refill starts at once.
const REFILL_SETTLE: Duration = Duration::from_millis(250);

/// One filler per pool in this process.
#[derive(Default)]
pub(super) struct WarmPool {
    fillers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn ledger_err(e: StoreError) -> BackendError {
    match e {
        StoreError::Unavailable(message) => BackendError::Unavailable {
            message,
            retry_after: None,
        },
        e @ (StoreError::Query(_) | StoreError::Unreadable(_)) => {
            BackendError::failed(format!("pool ledger: {e}"))
        }
    }
}

/// Takes a ready pool entry for the environment, renaming it and its role to the environment's
/// names. `None` when the pool is empty.
pub(super) async fn claim(
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
    let pool = names::pool_prefix(bp, &tpl.hash);
    let mark = marks::env(req.id);
    for _ in 0..CLAIM_ATTEMPTS {
        let Some(entry) = inner
            .store
            .take_pool_entry(&inner.target, &pool)
            .await
            .map_err(ledger_err)?
        else {
            return Ok(None);
        };
        // Sealed under another key (a deployment that changed it): the entry is useless, and
        // the next filler drops it as one the ledger lacks.
        let Some(password) = inner.sealer.open(entry.id, &entry.password_sealed) else {
            continue;
        };
        // One implicit transaction: both renames and the login, or nothing.
        let sql = format!(
            "ALTER ROLE {from} RENAME TO {role}; ALTER DATABASE {from} RENAME TO {db}; \
             ALTER ROLE {role} {login}; {role_mark}; {db_mark}",
            from = quote(&entry.name),
            role = role.quoted(),
            db = db.quoted(),
            login = inner.login_grant(req.expires_at),
            role_mark = admin::comment_on(Object::Role, role.as_str(), &mark),
            db_mark = admin::comment_on(Object::Database, db.as_str(), &mark),
        );
        match inner.admin().await?.batch_execute(&sql).await {
            Ok(()) => return Ok(Some(Secret::new(password))),
            // The server refused this entry (gone, say): the next one may do.
            Err(e) if e.as_db_error().is_some() => {
                tracing::debug!(entry = %entry.name, error = %e, "pool entry not claimable");
            }
            Err(e) => return Err(db_err(e)),
        }
    }
    Ok(None)
}

/// The ready entries of a pool, as the ledger knows them.
pub(super) async fn ready_count(inner: &Inner, bp: &Blueprint, hash: &str) -> usize {
    inner
        .store
        .count_pool_entries(&inner.target, &names::pool_prefix(bp, hash))
        .await
        .unwrap_or(0) as usize
}

impl WarmPool {
    pub(super) fn refill_in_background(
        self: &Arc<Self>,
        inner: Arc<Inner>,
        bp: Arc<Blueprint>,
        tpl: TemplateInfo,
    ) {
        if bp.pool_size == 0 {
            return;
        }
        let pool = self.clone();
        let refill = async move {
            if ready_count(&inner, &bp, &tpl.hash).await * 2 >= bp.pool_size as usize {
                tokio::time::sleep(REFILL_SETTLE).await;
            }
            if let Err(e) = pool.fill(&inner, &bp, &tpl, false).await {
                tracing::warn!(blueprint = %bp.name, error = %e, "pool refill failed");
            }
        };
        // In the span of the request (if any) that took from the pool.
        tokio::spawn(tracing::Instrument::in_current_span(refill));
    }

    /// Tops the pool of `bp` up to its size, retiring entries of older hashes. One filler per
    /// pool across replicas (an advisory lock): with `wait`, for the one at work to finish and
    /// then top up; without, leave the work to it.
    pub(super) async fn fill(
        &self,
        inner: &Inner,
        bp: &Blueprint,
        tpl: &TemplateInfo,
        wait: bool,
    ) -> Result<(), BackendError> {
        let filler = self
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
        let size = bp.pool_size as usize;
        // A refill after a hand-out from a pool others keep full costs one ledger count, not a
        // session of its own for the lock.
        if !wait && ready_count(inner, bp, &tpl.hash).await >= size {
            return Ok(());
        }
        let server = &inner.admin_server;
        let _lock = if wait {
            AdvisoryLock::acquire(server, FILL_LOCK, &tpl.hash).await?
        } else {
            match AdvisoryLock::try_acquire(server, FILL_LOCK, &tpl.hash).await? {
                Some(lock) => lock,
                None => return Ok(()),
            }
        };
        retire(inner, bp, tpl).await?;
        top_up(inner, bp, tpl, size).await
    }
}

/// Adds entries until the pool holds `size`.
async fn top_up(
    inner: &Inner,
    bp: &Blueprint,
    tpl: &TemplateInfo,
    size: usize,
) -> Result<(), BackendError> {
    loop {
        let missing = size.saturating_sub(ready_count(inner, bp, &tpl.hash).await);
        if missing == 0 {
            return Ok(());
        }
        // Clones side by side (the server's own clone rate grows with concurrency), each
        // waiting for its place in the target's queue like any heavy work.
        let clones = (0..missing.min(inner.cfg.max_concurrent_provisions)).map(|_| async {
            let _slot = inner.queue.admit_background().await;
            add_entry(inner, bp, tpl).await
        });
        for outcome in futures_util::future::join_all(clones).await {
            outcome?;
        }
    }
}

/// Drops this blueprint's entries of other hashes and half-made entries of this one (we hold
/// the fill lock, so nobody is making them), and brings ledger and target back in step: ready
/// entries the ledger lacks (a filler died before entering one, or a hand-out before renaming
/// the one it took) are dropped, and so are rows whose entry is gone.
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
    // Several targets may name one cluster: an entry is only unknown when no target's rows
    // name it, but this target repairs only its own rows.
    let rows_of_all = inner.store.pool_entry_names().await.map_err(ledger_err)?;
    let ledger: HashSet<&str> = rows_of_all.iter().map(|(_, n)| n.as_str()).collect();
    let this_bp = names::pool_blueprint(bp);
    let mut present = HashSet::new();
    for row in rows {
        let name: String = row.get(0);
        let retired = match names::kind(&name) {
            Some(Kind::Pool { blueprint, hash }) if blueprint == this_bp => {
                hash != tpl.hash || !ledger.contains(name.as_str())
            }
            Some(Kind::Fill { blueprint, hash }) => blueprint == this_bp && hash == tpl.hash,
            _ => false,
        };
        if retired {
            drop_entry(inner, &name).await?;
        } else {
            present.insert(name);
        }
    }
    let this_pool = names::pool_prefix(bp, &tpl.hash);
    let gone: Vec<String> = rows_of_all
        .into_iter()
        .filter(|(target, name)| {
            *target == inner.target && name.starts_with(&this_pool) && !present.contains(name)
        })
        .map(|(_, name)| name)
        .collect();
    if !gone.is_empty() {
        inner
            .store
            .remove_pool_entries(&inner.target, &gone)
            .await
            .map_err(ledger_err)?;
    }
    Ok(())
}

async fn drop_entry(inner: &Inner, name: &str) -> Result<(), BackendError> {
    super::teardown::drop_database(inner, name).await?;
    super::teardown::drop_role(inner, name).await
}

async fn add_entry(inner: &Inner, bp: &Blueprint, tpl: &TemplateInfo) -> Result<(), BackendError> {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rngs::OsRng, 8)
        .to_ascii_lowercase();
    let (filling, ready) = names::pool_entry(bp, &tpl.hash, &suffix);
    let password = match make_entry(inner, tpl, &filling, &ready).await {
        Ok(password) => password,
        Err(e) => {
            let _ = drop_entry(inner, &filling).await;
            return Err(e);
        }
    };
    let id = Uuid::new_v4();
    let entry = PoolEntry {
        password_sealed: inner.sealer.seal(id, password.expose()),
        id,
        name: ready,
    };
    let pool = names::pool_prefix(bp, &tpl.hash);
    if let Err(e) = inner
        .store
        .add_pool_entry(&inner.target, &pool, &entry)
        .await
    {
        let _ = drop_entry(inner, &entry.name).await;
        return Err(ledger_err(e));
    }
    Ok(())
}

/// Clones the template into a `filling` entry whose role owns everything in it and has a fresh
/// password (but no login yet), then renames both to `ready`. Answers the password.
async fn make_entry(
    inner: &Inner,
    tpl: &TemplateInfo,
    filling: &str,
    ready: &str,
) -> Result<Secret, BackendError> {
    let admin = inner.admin().await?;
    let name = PgIdent::parse(filling).expect("a valid pool name");
    let (password, verifier) = new_password();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {} NOLOGIN {} PASSWORD {}",
            name.quoted(),
            admin::UNPRIVILEGED,
            escape_literal(&verifier)
        ))
        .await
        .map_err(db_err)?;
    inner.grant_membership(&admin, &name).await?;
    template::clone_database(inner, &admin, &name, &name, tpl).await?;
    admin
        .batch_execute(&admin::revoke_public(filling))
        .await
        .map_err(db_err)?;
    template::take_ownership(inner, &name, &name).await?;
    let promote = format!(
        "BEGIN; ALTER ROLE {f} RENAME TO {r}; ALTER DATABASE {f} RENAME TO {r}; COMMIT;",
        f = name.quoted(),
        r = quote(ready)
    );
    admin::rename_when_free(&admin, filling, &promote).await?;
    Ok(password)
}
