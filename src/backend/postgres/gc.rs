//! Garbage collection on a postgres target, by name alone (see `names`): templates nobody needs,
//! pool entries of templates that go, half-made builds and pool entries nobody is making, and
//! any other object carrying the prefix that no record accounts for — the last only once it has
//! been seen unaccounted for `orphan_grace`, so that work that started an instant ago is never
//! taken for a leftover. Nothing without the prefix is ever touched.

use super::lock::AdvisoryLock;
use super::names::{self, Kind};
use super::{db_err, pool, template, Inner};
use crate::backend::{BackendError, Resources};
use std::collections::HashSet;
use std::time::Instant;

pub async fn collect_garbage(
    inner: &Inner,
    keep: &[String],
    known: &[String],
    accounted: &[Resources],
) -> Result<Vec<String>, BackendError> {
    let admin = inner.admin().await?;
    // `accounted` was read before this listing: an object whose record was written after that
    // read shows up as a candidate, and the grace period keeps it until a pass sees its record.
    // One statement, so one snapshot: a pool entry renamed (role and database together) while
    // this runs is seen under one name or the other, never as a role without its database.
    let listed = admin
        .query(
            "SELECT datname, shobj_description(oid, 'pg_database'), true FROM pg_database \
             WHERE starts_with(datname, $1) \
             UNION ALL SELECT rolname, NULL, false FROM pg_roles WHERE starts_with(rolname, $1)",
            &[&names::PREFIX],
        )
        .await
        .map_err(db_err)?;
    let (databases, roles): (Vec<_>, Vec<_>) = listed.into_iter().partition(|r| r.get(2));
    let roles: Vec<String> = roles.iter().map(|r| r.get(0)).collect();
    drop(admin);
    let recorded: HashSet<&str> = accounted
        .iter()
        .filter_map(|r| r.postgres().ok())
        .flat_map(|r| [r.database.as_str(), r.role.as_str()])
        .collect();

    let stale_template = |comment: Option<&str>, hash: &str| {
        if keep.iter().any(|k| k == hash) {
            return false;
        }
        match comment.and_then(template::template_mark) {
            Some((blueprint, built_at)) => {
                let old = built_at
                    .is_none_or(|t| chrono::Utc::now() - t > template::foreign_template_grace());
                known.contains(&blueprint) || old
            }
            None => true,
        }
    };
    // Pool entries live as long as the template they were cloned from.
    let surviving: HashSet<String> = databases
        .iter()
        .filter_map(|r| match names::kind(r.get(0))? {
            Kind::Template { hash } if !stale_template(r.get(1), &hash) => Some(hash),
            _ => None,
        })
        .collect();

    let mut dropped = vec![];
    let mut candidates = HashSet::new();
    let mut dropped_dbs = HashSet::new();
    for row in &databases {
        let name: String = row.get(0);
        let stale = match names::kind(&name) {
            Some(Kind::Template { hash }) => stale_template(row.get(1), &hash),
            Some(Kind::Build { .. }) => lock_is_free(inner, template::BUILD_LOCK, &name).await?,
            Some(Kind::Pool { hash, .. }) => !surviving.contains(&hash),
            Some(Kind::Fill { hash, .. }) => lock_is_free(inner, pool::FILL_LOCK, &hash).await?,
            Some(Kind::Shared) | None => false,
            Some(Kind::Other) => {
                if !recorded.contains(name.as_str()) {
                    candidates.insert(name.clone());
                }
                false
            }
        };
        if stale {
            match super::teardown::drop_database(inner, &name).await {
                Ok(()) => {
                    dropped_dbs.insert(name.clone());
                    dropped.push(name);
                }
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "could not drop a stale database")
                }
            }
        }
    }
    let db_names: HashSet<String> = databases.iter().map(|r| r.get(0)).collect();
    for role in &roles {
        let stale = match names::kind(role) {
            // A pool entry's role goes with its database, or alone when that never came to be.
            Some(Kind::Pool { .. }) => dropped_dbs.contains(role) || !db_names.contains(role),
            Some(Kind::Fill { hash, .. }) => {
                dropped_dbs.contains(role) || lock_is_free(inner, pool::FILL_LOCK, &hash).await?
            }
            Some(Kind::Other) => {
                if !recorded.contains(role.as_str()) {
                    candidates.insert(role.clone());
                }
                false
            }
            _ => false,
        };
        if stale {
            match super::teardown::drop_role(inner, role).await {
                Ok(()) => dropped.push(role.clone()),
                Err(e) => tracing::warn!(role = %role, error = %e, "could not drop a stale role"),
            }
        }
    }

    // Orphans: dropped once seen unaccounted for the grace period.
    let due: Vec<String> = {
        let mut seen = inner.orphans.lock().unwrap();
        seen.retain(|name, _| candidates.contains(name));
        let now = Instant::now();
        candidates
            .iter()
            .filter(|name| {
                now.duration_since(*seen.entry((*name).clone()).or_insert(now))
                    >= inner.orphan_grace
            })
            .cloned()
            .collect()
    };
    for name in due {
        let outcome = async {
            if db_names.contains(&name) {
                super::teardown::drop_database(inner, &name).await?;
            }
            if roles.contains(&name) {
                super::teardown::drop_role(inner, &name).await?;
            }
            Ok::<(), BackendError>(())
        }
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(name = %name, "dropped an object no record accounts for");
                inner.orphans.lock().unwrap().remove(&name);
                dropped.push(name);
            }
            Err(e) => tracing::warn!(name = %name, error = %e, "could not drop an orphan"),
        }
    }
    let dropped_entries: Vec<String> = dropped
        .iter()
        .filter(|name| matches!(names::kind(name), Some(Kind::Pool { .. })))
        .cloned()
        .collect();
    if !dropped_entries.is_empty() {
        if let Err(e) = inner
            .store
            .remove_pool_entries(&inner.target, &dropped_entries)
            .await
        {
            tracing::warn!(error = %e, "could not strike dropped pool entries from the ledger");
        }
    }
    Ok(dropped)
}

async fn lock_is_free(inner: &Inner, namespace: &str, key: &str) -> Result<bool, BackendError> {
    Ok(AdvisoryLock::try_acquire(inner, namespace, key)
        .await?
        .is_some())
}
