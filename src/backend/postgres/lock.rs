//! The target-wide advisory lock guard: held on a connection of its own, which dropping the
//! guard closes, and closing the connection is what releases the lock. So a lock cannot outlive
//! its guard, whether the holder finishes, fails, or its future is dropped halfway.
//!
//! Why not a pooled connection that is unlocked and handed back on release (and taken out of
//! the pool when the guard is dropped unreleased): a waiter would hold one of the admin pool's
//! few slots while it waits, and the holder it waits for needs admin connections of its own to
//! do the work — a handful of waiters (concurrent creates in one shared database, say) would
//! starve the holder until the pool's wait timeout. A lock session costs one connection set-up,
//! which template builds, pool fills and shared-database set-ups dwarf.

use super::admin::db_err;
use crate::backend::BackendError;
use crate::pgconn::PgConnector;

pub(super) struct AdvisoryLock {
    _session: tokio_postgres::Client,
}

impl AdvisoryLock {
    /// Waits for the lock `key` of `namespace` on the server `admin` reaches (the caller bounds
    /// the wait with its deadline). Dropped while waiting, the session ends as soon as the
    /// server answers the wait, so a lock granted late is released at once.
    pub(super) async fn acquire(
        admin: &PgConnector,
        namespace: &str,
        key: &str,
    ) -> Result<Self, BackendError> {
        let session = admin.connect().await.map_err(db_err)?;
        session
            .execute(
                "SELECT pg_advisory_lock($1)",
                &[&crate::pgconn::advisory_key(namespace, key)],
            )
            .await
            .map_err(db_err)?;
        Ok(Self { _session: session })
    }

    /// Takes the lock only if nobody holds it.
    pub(super) async fn try_acquire(
        admin: &PgConnector,
        namespace: &str,
        key: &str,
    ) -> Result<Option<Self>, BackendError> {
        let session = admin.connect().await.map_err(db_err)?;
        let got: bool = session
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&crate::pgconn::advisory_key(namespace, key)],
            )
            .await
            .map_err(db_err)?
            .get(0);
        Ok(got.then_some(Self { _session: session }))
    }

    /// Whether anyone holds the lock right now (taking it for an instant to find out).
    pub(super) async fn is_free(
        admin: &PgConnector,
        namespace: &str,
        key: &str,
    ) -> Result<bool, BackendError> {
        Ok(Self::try_acquire(admin, namespace, key).await?.is_some())
    }
}
