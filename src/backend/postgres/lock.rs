//! A target-wide advisory lock held on a connection of its own: closing the connection is
//! what releases it, so a lock can never outlive its guard — not even when the future holding
//! it is dropped halfway — and no pooled connection is tied up while its holder works.

use super::{db_err, Inner};
use crate::backend::BackendError;

pub struct AdvisoryLock {
    _conn: tokio_postgres::Client,
}

impl AdvisoryLock {
    /// Waits for the lock `key` of `namespace` (the caller bounds the wait with its deadline:
    /// dropping this future closes the connection, which ends the server-side wait too).
    pub async fn acquire(inner: &Inner, namespace: &str, key: &str) -> Result<Self, BackendError> {
        let conn = inner.admin_server.connect().await.map_err(db_err)?;
        conn.execute(
            "SELECT pg_advisory_lock($1)",
            &[&crate::advisory_key(namespace, key)],
        )
        .await
        .map_err(db_err)?;
        Ok(Self { _conn: conn })
    }

    /// Takes the lock only if nobody holds it.
    pub async fn try_acquire(
        inner: &Inner,
        namespace: &str,
        key: &str,
    ) -> Result<Option<Self>, BackendError> {
        let conn = inner.admin_server.connect().await.map_err(db_err)?;
        let got: bool = conn
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&crate::advisory_key(namespace, key)],
            )
            .await
            .map_err(db_err)?
            .get(0);
        Ok(got.then_some(Self { _conn: conn }))
    }
}
