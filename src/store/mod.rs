//! The control-plane store: previewdb's own state in PostgreSQL, schema from `migrations/`.

mod crypto;
mod record;

pub use crypto::Sealer;
pub use record::{EnvRecord, ListFilter, State, StoredConnection};

use crate::advisory_key;
use crate::backend::Resources;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

refinery::embed_migrations!("migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("control store unavailable: {0}")]
    Unavailable(String),
    #[error("control store error: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(crate::pgconn::describe(&e))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    local_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds the per-key lock that serialises every change to one environment key, across this
/// process (a mutex) and across replicas (a transaction-scoped advisory lock in the store).
pub struct KeyLock {
    _local: tokio::sync::OwnedMutexGuard<()>,
    conn: Option<deadpool_postgres::Object>,
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Ending the transaction releases the advisory lock; the connection must not go
            // back to the pool inside it.
            tokio::spawn(async move {
                let _ = conn.batch_execute("ROLLBACK").await;
            });
        }
    }
}

const COLUMNS: &str = "id, key, target, isolation, blueprint, blueprint_hash, settings_digest, state, \
    error, resources, teardown_pending, connection, password_sealed, labels, created_at, updated_at, \
    expires_at, deleted_at";

impl Store {
    /// Connects and brings the schema up to date (one replica at a time).
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let pool = crate::pgconn::PgConnector::parse(url)?.pool(32)?;
        let store = Self {
            pool,
            local_locks: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await?;
        conn.execute(
            "SELECT pg_advisory_lock($1)",
            &[&advisory_key("store", "migrations")],
        )
        .await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let outcome = migrations::runner()
            .set_migration_table_name("previewdb_schema_history")
            .run_async(client)
            .await;
        conn.execute(
            "SELECT pg_advisory_unlock($1)",
            &[&advisory_key("store", "migrations")],
        )
        .await?;
        outcome?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub async fn lock_key(&self, key: &str) -> Result<KeyLock> {
        let local = {
            let mut map = self.local_locks.lock().unwrap();
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(key.to_owned()).or_default().clone()
        };
        let guard = local.lock_owned().await;
        let conn = self.pool.get().await?;
        let mut lock = KeyLock {
            _local: guard,
            conn: Some(conn),
        };
        // One round trip: the id is a number we computed, and the explicit BEGIN keeps the
        // transaction (and with it the lock) open after this query.
        let conn = lock.conn.as_mut().expect("just set");
        conn.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            advisory_key("env", key)
        ))
        .await?;
        Ok(lock)
    }

    /// Takes the key's lock only if nobody holds it (used to find orphaned provisioning rows).
    pub async fn try_lock_key(&self, key: &str) -> Result<Option<KeyLock>> {
        let local = {
            let mut map = self.local_locks.lock().unwrap();
            map.entry(key.to_owned()).or_default().clone()
        };
        let Ok(guard) = local.try_lock_owned() else {
            return Ok(None);
        };
        let conn = self.pool.get().await?;
        conn.batch_execute("BEGIN").await?;
        let mut lock = KeyLock {
            _local: guard,
            conn: Some(conn),
        };
        let conn = lock.conn.as_mut().expect("just set");
        let row = conn
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&advisory_key("env", key)],
            )
            .await?;
        Ok(row.get::<_, bool>(0).then_some(lock))
    }

    pub async fn insert(&self, r: &EnvRecord) -> Result<()> {
        let conn = self.pool.get().await?;
        conn.execute(
            "INSERT INTO environments (id, key, target, isolation, blueprint, blueprint_hash, \
             settings_digest, state, resources, labels, created_at, updated_at, expires_at, teardown_pending) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, true)",
            &[
                &r.id,
                &r.key,
                &r.target,
                &r.isolation.as_str(),
                &r.blueprint,
                &r.blueprint_hash,
                &r.settings_digest,
                &r.state.as_str(),
                &serde_json::Value::Object(r.resources.clone()),
                &serde_json::to_value(&r.labels).expect("labels serialise"),
                &r.created_at,
                &r.expires_at,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn mark_ready(
        &self,
        id: Uuid,
        resources: &Resources,
        connection: &StoredConnection,
        password_sealed: &[u8],
    ) -> Result<()> {
        self.exec(
            "UPDATE environments SET state = 'ready', resources = $2, connection = $3, \
             password_sealed = $4, error = NULL, updated_at = now() WHERE id = $1",
            &[
                &id,
                &serde_json::Value::Object(resources.clone()),
                &serde_json::to_value(connection).expect("connection serialises"),
                &password_sealed,
            ],
        )
        .await
    }

    /// Records a failure; `teardown_pending` says whether something may remain on the target.
    pub async fn mark_failed(&self, id: Uuid, error: &str, teardown_pending: bool) -> Result<()> {
        self.exec(
            "UPDATE environments SET state = 'failed', error = $2, teardown_pending = $3, \
             password_sealed = NULL, updated_at = now() WHERE id = $1",
            &[&id, &error, &teardown_pending],
        )
        .await
    }

    pub async fn mark_deleting(&self, id: Uuid) -> Result<()> {
        self.exec(
            "UPDATE environments SET state = 'deleting', updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await
    }

    pub async fn mark_deleted(&self, id: Uuid) -> Result<()> {
        self.exec(
            "UPDATE environments SET state = 'deleted', teardown_pending = false, password_sealed = NULL, \
             deleted_at = coalesce(deleted_at, now()), updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await
    }

    pub async fn mark_cleaned(&self, id: Uuid) -> Result<()> {
        self.exec(
            "UPDATE environments SET teardown_pending = false, updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await
    }

    pub async fn set_expiry(&self, id: Uuid, expires_at: DateTime<Utc>) -> Result<()> {
        self.exec(
            "UPDATE environments SET expires_at = $2, updated_at = now() WHERE id = $1",
            &[&id, &expires_at],
        )
        .await
    }

    pub async fn set_password(
        &self,
        id: Uuid,
        connection: &StoredConnection,
        sealed: &[u8],
    ) -> Result<()> {
        self.exec(
            "UPDATE environments SET connection = $2, password_sealed = $3, updated_at = now() WHERE id = $1",
            &[&id, &serde_json::to_value(connection).expect("connection serialises"), &sealed],
        )
        .await
    }

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        self.pool.get().await?.execute(sql, params).await?;
        Ok(())
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<EnvRecord>> {
        let rows = self.pool.get().await?.query(sql, params).await?;
        Ok(rows.iter().map(EnvRecord::from_row).collect())
    }

    pub async fn get_by_id(&self, id: Uuid) -> Result<Option<EnvRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM environments WHERE id = $1");
        Ok(self.query(&sql, &[&id]).await?.pop())
    }

    /// The live environment of a key, else its most recent tombstone.
    pub async fn get_by_key(&self, key: &str) -> Result<Option<EnvRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM environments WHERE key = $1 \
             ORDER BY state IN ('provisioning', 'ready', 'deleting') DESC, created_at DESC LIMIT 1"
        );
        Ok(self.query(&sql, &[&key]).await?.pop())
    }

    pub async fn live_by_key(&self, key: &str) -> Result<Option<EnvRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM environments WHERE key = $1 AND state IN ('provisioning', 'ready', 'deleting')"
        );
        Ok(self.query(&sql, &[&key]).await?.pop())
    }

    /// Newest first; `LIMIT NULL` is no limit, so nothing is ever cut off unless asked for.
    pub async fn list(&self, f: &ListFilter) -> Result<Vec<EnvRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM environments \
             WHERE ($1::text IS NULL OR key = $1) AND ($2::text IS NULL OR target = $2) \
               AND (CASE WHEN $3::text IS NULL THEN state <> 'deleted' ELSE state = $3 END) \
               AND labels @> $4::jsonb \
               AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid)) \
             ORDER BY created_at DESC, id DESC LIMIT $5::bigint"
        );
        let labels = serde_json::to_value(&f.labels).expect("labels serialise");
        let (after_at, after_id) = f.after.unzip();
        self.query(
            &sql,
            &[
                &f.key,
                &f.target,
                &f.state.map(State::as_str),
                &labels,
                &f.limit,
                &after_at,
                &after_id,
            ],
        )
        .await
    }

    pub async fn count_live(&self, target: &str) -> Result<i64> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "SELECT count(*) FROM environments WHERE target = $1 \
                 AND state IN ('provisioning', 'ready', 'deleting')",
                &[&target],
            )
            .await?;
        Ok(row.get(0))
    }

    /// How many environments each target holds in each state, tombstones included; states
    /// without any are left out.
    pub async fn count_by_target_and_state(&self) -> Result<Vec<(String, State, i64)>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT target, state, count(*) FROM environments GROUP BY target, state",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.get(0), State::parse(r.get(1))?, r.get(2))))
            .collect())
    }

    /// Template hashes that live environments were made from (reset needs them). Across all
    /// targets: two targets may share a cluster, and a hash names the same content everywhere.
    pub async fn live_blueprint_hashes(&self) -> Result<Vec<String>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT DISTINCT blueprint_hash FROM environments WHERE blueprint_hash IS NOT NULL \
                 AND state IN ('provisioning', 'ready', 'deleting')",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Ready environments whose time is up.
    pub async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<EnvRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM environments WHERE state = 'ready' AND expires_at <= $1"
        );
        self.query(&sql, &[&now]).await
    }

    /// Rows that may have left something behind: interrupted provisions and teardowns, and
    /// failures whose clean-up did not complete.
    pub async fn unfinished(&self) -> Result<Vec<EnvRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM environments WHERE state IN ('provisioning', 'deleting') \
             OR (state = 'failed' AND teardown_pending)"
        );
        self.query(&sql, &[]).await
    }
}
