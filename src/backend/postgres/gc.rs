//! Garbage collection on a postgres target, by name alone (see `names`): templates nobody needs,
//! pool entries of templates that go, half-made builds and pool entries nobody is making, and
//! any other object carrying the prefix that no record accounts for — the last only once it has
//! been seen unaccounted for `orphan_grace`, so that work that started an instant ago is never
//! taken for a leftover. Nothing without the prefix is ever touched.

use super::lock::AdvisoryLock;
use super::marks::TemplateMark;
use super::names::{self, Kind};
use super::target::Inner;
use super::{pool, teardown, template};
use crate::backend::{BackendError, Resources};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;
use tokio_postgres::Row;

/// A template of a blueprint this process does not know (another replica's configuration, or
/// a blueprint removed since) is only collected once it is this old.
const FOREIGN_TEMPLATE_GRACE: chrono::Duration = chrono::Duration::hours(24);

/// When garbage collection first saw each object that nothing accounts for.
#[derive(Default)]
pub(super) struct Orphans(Mutex<HashMap<String, Instant>>);

/// One pass: what it dropped. `keep` are the hashes of templates still wanted, `known` the
/// blueprints this process is configured with, `accounted` the records of live environments.
pub(super) async fn collect_garbage(
    inner: &Inner,
    orphans: &Orphans,
    keep: &[String],
    known: &[String],
    accounted: &[Resources],
) -> Result<Vec<String>, BackendError> {
    let (databases, roles) = listing(inner).await?;
    let recorded: HashSet<&str> = accounted
        .iter()
        .filter_map(|r| r.postgres().ok())
        .flat_map(|r| [r.database.as_str(), r.role.as_str()])
        .collect();
    let mut pass = Pass {
        inner,
        recorded,
        dropped: vec![],
        candidates: HashSet::new(),
    };
    let stale_template = |comment: Option<&str>, hash: &str| {
        !keep.iter().any(|k| k == hash) && is_stale_template(comment, known)
    };
    let dropped_dbs = pass.databases(&databases, stale_template).await?;
    let db_names: HashSet<String> = databases.iter().map(|r| r.get(0)).collect();
    pass.roles(&roles, &db_names, &dropped_dbs).await?;
    let due = orphans.due(&pass.candidates, inner.orphan_grace);
    for name in due {
        if pass.drop_orphan(&name, &db_names, &roles).await {
            orphans.0.lock().unwrap().remove(&name);
        }
    }
    strike_from_ledger(inner, &pass.dropped).await;
    Ok(pass.dropped)
}

/// Every database (with its comment) and role carrying the prefix. One statement, so one
/// snapshot: a pool entry renamed (role and database together) while this runs is seen under
/// one name or the other, never as a role without its database.
async fn listing(inner: &Inner) -> Result<(Vec<Row>, Vec<String>), BackendError> {
    // `accounted` was read before this listing: an object whose record was written after that
    // read shows up as a candidate, and the grace period keeps it until a pass sees its record.
    let listed = inner
        .admin()
        .await?
        .query(
            "SELECT datname, shobj_description(oid, 'pg_database'), true FROM pg_database \
             WHERE starts_with(datname, $1) \
             UNION ALL SELECT rolname, NULL, false FROM pg_roles WHERE starts_with(rolname, $1)",
            &[&names::PREFIX],
        )
        .await
        .map_err(super::admin::db_err)?;
    let (databases, roles): (Vec<_>, Vec<_>) = listed.into_iter().partition(|r| r.get(2));
    Ok((databases, roles.iter().map(|r| r.get(0)).collect()))
}

/// Whether a template (not among those kept) may go, by its mark: its blueprint is one this
/// process knows (and no longer wants), or it is old enough; unmarked ones always.
fn is_stale_template(comment: Option<&str>, known: &[String]) -> bool {
    match comment.and_then(TemplateMark::parse) {
        Some(mark) => {
            let old = mark
                .built_at
                .is_none_or(|t| chrono::Utc::now() - t > FOREIGN_TEMPLATE_GRACE);
            known.contains(&mark.blueprint) || old
        }
        None => true,
    }
}

/// What one collection has found and done so far.
struct Pass<'a> {
    inner: &'a Inner,
    /// The names the records account for.
    recorded: HashSet<&'a str>,
    dropped: Vec<String>,
    /// Objects with the prefix that no record accounts for (see `Orphans`).
    candidates: HashSet<String>,
}

impl Pass<'_> {
    /// Drops stale templates, builds and pool entries nobody is making, and pool entries of
    /// templates that go; answers the databases dropped.
    async fn databases(
        &mut self,
        databases: &[Row],
        stale_template: impl Fn(Option<&str>, &str) -> bool,
    ) -> Result<HashSet<String>, BackendError> {
        // Pool entries live as long as the template they were cloned from.
        let surviving: HashSet<String> = databases
            .iter()
            .filter_map(|r| match names::kind(r.get(0))? {
                Kind::Template { hash } if !stale_template(r.get(1), &hash) => Some(hash),
                _ => None,
            })
            .collect();
        let mut dropped_dbs = HashSet::new();
        for row in databases {
            let name: String = row.get(0);
            let stale = match names::kind(&name) {
                Some(Kind::Template { hash }) => stale_template(row.get(1), &hash),
                Some(Kind::Build { .. }) => self.lock_is_free(template::BUILD_LOCK, &name).await?,
                Some(Kind::Pool { hash, .. }) => !surviving.contains(&hash),
                Some(Kind::Fill { hash, .. }) => self.lock_is_free(pool::FILL_LOCK, &hash).await?,
                Some(Kind::Shared) | None => false,
                Some(Kind::Other) => {
                    self.note_candidate(&name);
                    false
                }
            };
            if !stale {
                continue;
            }
            match teardown::drop_database(self.inner, &name).await {
                Ok(()) => {
                    dropped_dbs.insert(name.clone());
                    self.dropped.push(name);
                }
                Err(e) => {
                    tracing::warn!(database = %name, error = %e, "could not drop a stale database")
                }
            }
        }
        Ok(dropped_dbs)
    }

    /// Drops the roles of pool entries that went (or never came to be) and of fills nobody is
    /// making.
    async fn roles(
        &mut self,
        roles: &[String],
        db_names: &HashSet<String>,
        dropped_dbs: &HashSet<String>,
    ) -> Result<(), BackendError> {
        for role in roles {
            let stale = match names::kind(role) {
                // A pool entry's role goes with its database, or alone when that never came to be.
                Some(Kind::Pool { .. }) => dropped_dbs.contains(role) || !db_names.contains(role),
                Some(Kind::Fill { hash, .. }) => {
                    dropped_dbs.contains(role) || self.lock_is_free(pool::FILL_LOCK, &hash).await?
                }
                Some(Kind::Other) => {
                    self.note_candidate(role);
                    false
                }
                _ => false,
            };
            if !stale {
                continue;
            }
            match teardown::drop_role(self.inner, role).await {
                Ok(()) => self.dropped.push(role.clone()),
                Err(e) => tracing::warn!(role = %role, error = %e, "could not drop a stale role"),
            }
        }
        Ok(())
    }

    fn note_candidate(&mut self, name: &str) {
        if !self.recorded.contains(name) {
            self.candidates.insert(name.to_owned());
        }
    }

    /// Drops orphan `name` (its database, its role, whichever exist); whether it went.
    async fn drop_orphan(
        &mut self,
        name: &str,
        db_names: &HashSet<String>,
        roles: &[String],
    ) -> bool {
        let outcome = async {
            if db_names.contains(name) {
                teardown::drop_database(self.inner, name).await?;
            }
            if roles.iter().any(|r| r == name) {
                teardown::drop_role(self.inner, name).await?;
            }
            Ok::<(), BackendError>(())
        }
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(name = %name, "dropped an object no record accounts for");
                self.dropped.push(name.to_owned());
                true
            }
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "could not drop an orphan");
                false
            }
        }
    }

    async fn lock_is_free(&self, namespace: &str, key: &str) -> Result<bool, BackendError> {
        AdvisoryLock::is_free(&self.inner.admin_server, namespace, key).await
    }
}

impl Orphans {
    /// Notes when each of `candidates` was first seen (forgetting those no longer among them)
    /// and answers those seen for `grace` or longer.
    fn due(&self, candidates: &HashSet<String>, grace: std::time::Duration) -> Vec<String> {
        let mut seen = self.0.lock().unwrap();
        seen.retain(|name, _| candidates.contains(name));
        let now = Instant::now();
        candidates
            .iter()
            .filter(|name| now.duration_since(*seen.entry((*name).clone()).or_insert(now)) >= grace)
            .cloned()
            .collect()
    }
}

/// Strikes the ready pool entries among `dropped` from the ledger.
async fn strike_from_ledger(inner: &Inner, dropped: &[String]) {
    let entries: Vec<String> = dropped
        .iter()
        .filter(|name| matches!(names::kind(name), Some(Kind::Pool { .. })))
        .cloned()
        .collect();
    if entries.is_empty() {
        return;
    }
    if let Err(e) = inner
        .store
        .remove_pool_entries(&inner.target, &entries)
        .await
    {
        tracing::warn!(error = %e, "could not strike dropped pool entries from the ledger");
    }
}
