//! The control-plane store: previewdb's own state in PostgreSQL, schema from `migrations/`.

mod crypto;
mod events;
mod leases;
mod pool;
mod record;

pub(crate) use crypto::Sealer;
pub(crate) use events::{Due, EventQuery, StoredEvent};
pub(crate) use pool::PoolEntry;
pub(crate) use record::{EnvRecord, ListFilter, State, StoredConnection};

use crate::domain::{NewEvent, Resources, Webhook};
use crate::pgconn::advisory_key;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

refinery::embed_migrations!("migrations");

/// Connections to the control store. Every use is one short statement or transaction (no
/// caller holds one while it waits for anything else), so a few serve hundreds of callers.
const POOL_SIZE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("control store unavailable: {0}")]
    Unavailable(String),
    #[error("control store error: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// A stored value this version cannot read; nothing is done with such a record.
    #[error("control store: {0}")]
    Unreadable(String),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(crate::pgconn::describe(&e))
    }
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Who is told about events: each event gets an outbox row per webhook that wants it.
    hooks: std::sync::Arc<[Webhook]>,
}

const COLUMNS: &str = "id, key, target, isolation, blueprint, blueprint_hash, settings_digest, state, \
    error, resources, teardown_pending, connection, password_sealed, labels, created_at, updated_at, \
    expires_at, deleted_at, size_bytes, lock_reason";

/// Records with work left: a provision or deletion under way (or interrupted), or a teardown
/// still to do. The same predicate as the partial index `environments_unfinished`.
const UNFINISHED: &str = "state IN ('provisioning', 'deleting') \
    OR (state IN ('failed', 'deleted') AND teardown_pending)";

/// `update` (of one environment, to a state that is not live) with the target's live count
/// taken down when, and only when, the row was live before: one statement, so the count
/// cannot drift from the rows.
fn leaving_live(update: &str) -> String {
    format!(
        "WITH before AS (SELECT target FROM environments WHERE id = $1 \
           AND state IN ('provisioning', 'ready', 'deleting') FOR UPDATE), \
         changed AS ({update} RETURNING target) \
         UPDATE target_usage u SET live = u.live - 1 \
         FROM before JOIN changed USING (target) WHERE u.target = before.target"
    )
}

impl Store {
    /// Connects and brings the schema up to date (one replica at a time).
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let pool = crate::pgconn::PgConnector::parse(url)?.pool(POOL_SIZE)?;
        let store = Self {
            pool,
            hooks: std::sync::Arc::new([]),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The same store, writing outbox rows for `hooks`.
    pub fn with_webhooks(self, hooks: Vec<Webhook>) -> Self {
        Self {
            hooks: hooks.into(),
            ..self
        }
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        // The lock lives as long as this session, which is taken out of the pool for good:
        // however the migration ends (an error, a dropped future), the session closes when
        // `conn` is dropped, and with it the lock.
        let mut conn = deadpool_postgres::Object::take(self.pool.get().await?);
        conn.execute(
            "SELECT pg_advisory_lock($1)",
            &[&advisory_key("store", "migrations")],
        )
        .await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        migrations::runner()
            .set_migration_table_name("previewdb_schema_history")
            .run_async(client)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Records a new environment unless its target already holds `max_live` live ones, or the
    /// caller's `quota` is used up. The target's row in `target_usage` is bumped only while
    /// under the limit, and the environment is inserted only when it was (concurrent creates
    /// queue on that row for the length of a commit, never overshoot). A quota's count is
    /// taken under a transaction-scoped lock on its patterns, for the same reason.
    pub async fn insert_within(
        &self,
        r: &EnvRecord,
        max_live: u32,
        quota: Option<KeyQuota<'_>>,
    ) -> Result<Insert> {
        let mut client = self.pool.get().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
            &r.id,
            &r.key,
            &r.target,
            &r.isolation.as_str(),
            &r.blueprint,
            &r.blueprint_hash,
            &r.settings_digest,
            &r.state.as_str(),
            &resources_json(&r.resources),
            &serde_json::to_value(&r.labels).expect("labels serialise"),
            &r.created_at,
            &r.expires_at,
            &i64::from(max_live),
        ];
        let Some(quota) = quota else {
            let inserted = client.execute(INSERT_WITHIN_TARGET, &params).await?;
            return Ok(if inserted == 1 {
                Insert::Recorded
            } else {
                Insert::TargetFull
            });
        };
        let tx = client.transaction().await?;
        let lock = advisory_key("max_live", &quota.likes.join("\n"));
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
            .await?;
        let live: i64 = tx
            .query_one(
                "SELECT count(*) FROM environments \
                 WHERE state IN ('provisioning', 'ready', 'deleting') AND key LIKE ANY($1)",
                &[&quota.likes],
            )
            .await?
            .get(0);
        if live >= i64::from(quota.max_live) {
            tx.rollback().await?;
            return Ok(Insert::QuotaFull { live });
        }
        if tx.execute(INSERT_WITHIN_TARGET, &params).await? == 0 {
            tx.rollback().await?;
            return Ok(Insert::TargetFull);
        }
        tx.commit().await?;
        Ok(Insert::Recorded)
    }

    pub async fn mark_ready(
        &self,
        id: Uuid,
        resources: &Resources,
        connection: &StoredConnection,
        password_sealed: &[u8],
        event: &NewEvent,
    ) -> Result<()> {
        self.exec_recording(
            "UPDATE environments SET state = 'ready', resources = $2, connection = $3, \
             password_sealed = $4, error = NULL, updated_at = now() WHERE id = $1",
            &[
                &id,
                &resources_json(resources),
                &serde_json::to_value(connection).expect("connection serialises"),
                &password_sealed,
            ],
            id,
            event,
        )
        .await
    }

    /// Records a failure; `teardown_pending` says whether something may remain on the target.
    pub async fn mark_failed(
        &self,
        id: Uuid,
        error: &str,
        teardown_pending: bool,
        event: &NewEvent,
    ) -> Result<()> {
        self.exec_recording(
            &leaving_live(
                "UPDATE environments SET state = 'failed', error = $2, teardown_pending = $3, \
                 password_sealed = NULL, updated_at = now() WHERE id = $1",
            ),
            &[&id, &error, &teardown_pending],
            id,
            event,
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

    /// `data_left`: the environment is closed but its data is still to drop (see
    /// `Backend::lock_out`); the reconciler finishes that should this process stop first.
    pub async fn mark_deleted(&self, id: Uuid, data_left: bool, event: &NewEvent) -> Result<()> {
        self.exec_recording(
            &leaving_live(
                "UPDATE environments SET state = 'deleted', teardown_pending = $2, \
                 password_sealed = NULL, deleted_at = coalesce(deleted_at, now()), \
                 updated_at = now() WHERE id = $1",
            ),
            &[&id, &data_left],
            id,
            event,
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

    pub async fn set_expiry(
        &self,
        id: Uuid,
        expires_at: DateTime<Utc>,
        event: &NewEvent,
    ) -> Result<()> {
        self.exec_recording(
            "UPDATE environments SET expires_at = $2, updated_at = now() WHERE id = $1",
            &[&id, &expires_at],
            id,
            event,
        )
        .await
    }

    pub async fn set_password(
        &self,
        id: Uuid,
        connection: &StoredConnection,
        sealed: &[u8],
        event: &NewEvent,
    ) -> Result<()> {
        self.exec_recording(
            "UPDATE environments SET connection = $2, password_sealed = $3, updated_at = now() WHERE id = $1",
            &[&id, &serde_json::to_value(connection).expect("connection serialises"), &sealed],
            id,
            event,
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
        rows.iter().map(EnvRecord::from_row).collect()
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
    /// With `keys` (`LIKE` patterns), only keys matching one of them.
    pub async fn list(&self, f: &ListFilter, keys: Option<&[String]>) -> Result<Vec<EnvRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM environments \
             WHERE ($1::text IS NULL OR key = $1) AND ($2::text IS NULL OR target = $2) \
               AND (CASE WHEN $3::text IS NULL THEN state <> 'deleted' ELSE state = $3 END) \
               AND labels @> $4::jsonb \
               AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid)) \
               AND ($8::text[] IS NULL OR key LIKE ANY($8)) \
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
                &keys,
            ],
        )
        .await
    }

    pub async fn count_live(&self, target: &str) -> Result<i64> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "SELECT live FROM target_usage WHERE target = $1",
                &[&target],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get(0)))
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

    /// Ready environments whose time is up; with `keys` (`LIKE` patterns), only theirs.
    pub async fn expired(
        &self,
        now: DateTime<Utc>,
        keys: Option<&[String]>,
    ) -> Result<Vec<EnvRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM environments WHERE state = 'ready' AND expires_at <= $1 \
             AND ($2::text[] IS NULL OR key LIKE ANY($2))"
        );
        self.query(&sql, &[&now, &keys]).await
    }

    /// Rows that may have left something behind: interrupted provisions and teardowns, and
    /// failures whose clean-up did not complete.
    pub async fn unfinished(&self) -> Result<Vec<EnvRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM environments WHERE {UNFINISHED}");
        self.query(&sql, &[]).await
    }

    /// The resources of every record that may still own something on a target (live ones,
    /// and failures whose clean-up is pending), on any target: what garbage collection must
    /// leave alone.
    pub async fn accounted_resources(&self) -> Result<Vec<Resources>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT resources FROM environments \
                 WHERE state IN ('provisioning', 'ready', 'deleting') OR teardown_pending",
                &[],
            )
            .await?;
        // One unreadable record fails the whole answer: collecting garbage without knowing
        // what it owns could drop a live environment.
        rows.iter()
            .map(|r| record::read_resources(r.get(0)))
            .collect()
    }

    /// Ready environments of `target`, for the quota watchdog.
    pub async fn ready_on(&self, target: &str) -> Result<Vec<EnvRecord>> {
        let sql =
            format!("SELECT {COLUMNS} FROM environments WHERE state = 'ready' AND target = $1");
        self.query(&sql, &[&target]).await
    }

    /// Records measured sizes, one statement for the lot.
    pub async fn set_sizes(&self, sizes: &[(Uuid, i64)]) -> Result<()> {
        let (ids, bytes): (Vec<Uuid>, Vec<i64>) = sizes.iter().copied().unzip();
        self.exec(
            "UPDATE environments e SET size_bytes = m.bytes, size_measured_at = now() \
             FROM unnest($1::uuid[], $2::bigint[]) AS m(id, bytes) WHERE e.id = m.id",
            &[&ids, &bytes],
        )
        .await
    }

    /// Sets or clears (`None`) the reason logins are refused; with `event`, reported in the
    /// same transaction.
    pub async fn set_lock(
        &self,
        id: Uuid,
        reason: Option<&str>,
        event: Option<&NewEvent>,
    ) -> Result<()> {
        let sql = "UPDATE environments SET lock_reason = $2, updated_at = now() WHERE id = $1";
        match event {
            Some(event) => self.exec_recording(sql, &[&id, &reason], id, event).await,
            None => self.exec(sql, &[&id, &reason]).await,
        }
    }

    /// Live environments locked out, per target.
    pub async fn count_locked(&self) -> Result<Vec<(String, i64)>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "SELECT target, count(*) FROM environments \
                 WHERE lock_reason IS NOT NULL AND state = 'ready' GROUP BY target",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

fn resources_json(resources: &Resources) -> serde_json::Value {
    serde_json::to_value(resources).expect("resources are plain strings")
}

/// The insert of `Store::insert_within`: the environment, only if the target's count of live
/// ones could be bumped under its limit (`$13`).
const INSERT_WITHIN_TARGET: &str = "WITH place AS ( \
       INSERT INTO target_usage AS u (target, live) SELECT $3, 1 WHERE $13::bigint > 0 \
       ON CONFLICT (target) DO UPDATE SET live = u.live + 1 WHERE u.live < $13 \
       RETURNING 1) \
     INSERT INTO environments (id, key, target, isolation, blueprint, blueprint_hash, \
       settings_digest, state, resources, labels, created_at, updated_at, expires_at, \
       teardown_pending) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, true FROM place";

/// A limit on the live environments among some keys: a token's `max_live` over its `keys`
/// (as `LIKE` patterns).
pub struct KeyQuota<'a> {
    pub likes: &'a [String],
    pub max_live: u32,
}

/// What `Store::insert_within` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    Recorded,
    TargetFull,
    QuotaFull { live: i64 },
}
