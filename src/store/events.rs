//! The audit trail and the webhooks' outbox in the control store. An event is written in the
//! transaction of the change it reports, together with one outbox row per webhook that wants
//! it, so a crash loses no event and no event reports a change that did not commit.
//!
//! Ordering: every event insert first takes one transaction-scoped advisory lock
//! (`events/commit-order`), so event ids are allocated and committed one transaction at a time.
//! An id is therefore visible only after every smaller id has committed (or rolled back), and a
//! reader paging by `id > cursor` never skips an event that commits later. The lock is held
//! only for the rest of a short transaction (the change itself is one statement).

use super::{Result, Store};
use crate::domain::{NewEvent, Webhook};
use crate::pgconn::advisory_key;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// An event as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub actor: String,
    pub request_id: Option<String>,
    pub outcome: String,
    pub detail: Option<serde_json::Value>,
    pub environment_id: Option<Uuid>,
    pub key: Option<String>,
}

impl StoredEvent {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        Self {
            id: r.get("id"),
            at: r.get("at"),
            event: r.get("event"),
            actor: r.get("actor"),
            request_id: r.get("request_id"),
            outcome: r.get("outcome"),
            detail: r.get("detail"),
            environment_id: r.get("environment_id"),
            key: r.get("key"),
        }
    }
}

/// Which events a page holds: of one environment, or of keys matching `keys` (`LIKE`
/// patterns; `None`: all), after event `after` or from time `since`, oldest first.
pub struct EventQuery<'a> {
    pub environment: Option<Uuid>,
    pub keys: Option<&'a [String]>,
    pub after: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// An outbox row claimed for delivery, with what its body is made of.
pub struct Due {
    pub id: Uuid,
    pub webhook: String,
    pub attempts: i32,
    pub event: StoredEvent,
    /// The environment as it is now (`None` if its record is gone).
    pub environment: Option<serde_json::Value>,
}

const EVENT_COLUMNS: &str =
    "e.id, e.at, e.event, e.actor, e.request_id, e.outcome, e.detail, e.environment_id, e.key";

/// Writes `event` about environment `env` (its key read from its record) and its outbox rows,
/// inside the caller's transaction `tx`.
pub(super) async fn record(
    tx: &tokio_postgres::Transaction<'_>,
    hooks: &[Webhook],
    env: Uuid,
    event: &NewEvent,
) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&advisory_key("events", "commit-order")],
    )
    .await?;
    let webhooks: Vec<&str> = hooks
        .iter()
        .filter(|h| h.wants(event.kind))
        .map(|h| h.name.as_str())
        .collect();
    tx.execute(
        "WITH ev AS ( \
           INSERT INTO events (environment_id, key, event, actor, request_id, outcome, detail) \
           SELECT id, key, $2, $3, $4, $5, $6 FROM environments WHERE id = $1 RETURNING id) \
         INSERT INTO deliveries (id, event_id, webhook, attempts, next_attempt_at) \
         SELECT gen_random_uuid(), ev.id, w, 0, now() FROM ev, unnest($7::text[]) AS w",
        &[
            &env,
            &event.kind.as_str(),
            &event.actor,
            &event.request_id,
            &event.outcome,
            &event.detail,
            &webhooks,
        ],
    )
    .await?;
    Ok(())
}

impl Store {
    /// Runs `sql` and writes `event` about `env` in one transaction.
    pub(super) async fn exec_recording(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        env: Uuid,
        event: &NewEvent,
    ) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(sql, params).await?;
        record(&tx, &self.hooks, env, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes an event that reports no change of the record (a hand-out, a reset, a
    /// migration: their change is on the target).
    pub async fn record_event(&self, env: Uuid, event: &NewEvent) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        record(&tx, &self.hooks, env, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of events, oldest first.
    pub async fn events(&self, q: &EventQuery<'_>) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e \
             WHERE ($1::uuid IS NULL OR e.environment_id = $1) \
               AND ($2::text[] IS NULL OR e.key LIKE ANY($2)) \
               AND ($3::bigint IS NULL OR e.id > $3) \
               AND ($4::timestamptz IS NULL OR e.at >= $4) \
             ORDER BY e.id LIMIT $5"
        );
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &sql,
                &[&q.environment, &q.keys, &q.after, &q.since, &q.limit],
            )
            .await?;
        Ok(rows.iter().map(StoredEvent::from_row).collect())
    }

    /// Marks every ready environment whose expiry is within `notice` as noticed for that
    /// expiry and writes its `expiring` event (made by `event` from the expiry), in one
    /// transaction: each expiry is noticed once, whichever replica gets there first (a second
    /// one's UPDATE waits for the first's row locks and then finds nothing left to do).
    pub async fn notice_expiring(
        &self,
        notice: Duration,
        event: impl Fn(DateTime<Utc>) -> NewEvent,
    ) -> Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "UPDATE environments SET expiry_noticed_for = expires_at \
                 WHERE state = 'ready' AND expires_at <= now() + $1::text::interval \
                   AND expiry_noticed_for IS DISTINCT FROM expires_at \
                 RETURNING id, expires_at",
                &[&pg_interval(notice)],
            )
            .await?;
        for r in &rows {
            record(&tx, &self.hooks, r.get(0), &event(r.get(1))).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Removes the events of environments deleted (or failed) longer than `retention` ago.
    pub async fn prune_events(&self, retention: Duration) -> Result<u64> {
        Ok(self
            .pool
            .get()
            .await?
            .execute(
                "DELETE FROM events e USING environments env \
                 WHERE env.id = e.environment_id AND env.state IN ('deleted', 'failed') \
                   AND coalesce(env.deleted_at, env.updated_at) < now() - $1::text::interval",
                &[&pg_interval(retention)],
            )
            .await?)
    }

    /// Claims up to `max` due outbox rows of the `webhooks` named for `lease` (rows another
    /// replica holds are skipped, not waited for) and commits, so no connection is held while
    /// they are posted. Rows of a webhook no longer configured stay where they are.
    pub async fn claim_deliveries(
        &self,
        webhooks: &[String],
        lease: Duration,
        max: i64,
    ) -> Result<Vec<Due>> {
        let sql = format!(
            "WITH claimed AS ( \
               UPDATE deliveries d SET claimed_until = now() + $1::text::interval, \
                 attempts = d.attempts + 1 \
               WHERE d.id IN (SELECT id FROM deliveries \
                 WHERE delivered_at IS NULL AND next_attempt_at <= now() AND webhook = ANY($3) \
                   AND (claimed_until IS NULL OR claimed_until < now()) \
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
               RETURNING d.id AS delivery, d.event_id, d.webhook, d.attempts) \
             SELECT c.delivery, c.webhook, c.attempts, {EVENT_COLUMNS}, \
               CASE WHEN env.id IS NULL THEN NULL ELSE jsonb_build_object( \
                 'id', env.id, 'key', env.key, 'target', env.target, 'state', env.state, \
                 'isolation', env.isolation, 'blueprint', env.blueprint, \
                 'labels', env.labels, 'created_at', env.created_at, \
                 'expires_at', env.expires_at, 'deleted_at', env.deleted_at) END AS environment \
             FROM claimed c JOIN events e ON e.id = c.event_id \
             LEFT JOIN environments env ON env.id = e.environment_id \
             ORDER BY e.id"
        );
        let rows = self
            .pool
            .get()
            .await?
            .query(&sql, &[&pg_interval(lease), &max, &webhooks])
            .await?;
        Ok(rows
            .iter()
            .map(|r| Due {
                id: r.get("delivery"),
                webhook: r.get("webhook"),
                attempts: r.get("attempts"),
                event: StoredEvent::from_row(r),
                environment: r.get("environment"),
            })
            .collect())
    }

    pub async fn delivered(&self, id: Uuid) -> Result<()> {
        self.exec(
            "UPDATE deliveries SET delivered_at = now(), claimed_until = NULL, last_error = NULL \
             WHERE id = $1",
            &[&id],
        )
        .await
    }

    /// Gives a claimed row back, due again after `delay`.
    pub async fn retry_delivery(&self, id: Uuid, delay: Duration, error: &str) -> Result<()> {
        self.exec(
            "UPDATE deliveries SET next_attempt_at = now() + $2::text::interval, claimed_until = NULL, \
             last_error = $3 WHERE id = $1",
            &[&id, &pg_interval(delay), &error],
        )
        .await
    }

    /// Outbox rows not delivered yet.
    pub async fn delivery_backlog(&self) -> Result<i64> {
        Ok(self
            .pool
            .get()
            .await?
            .query_one(
                "SELECT count(*) FROM deliveries WHERE delivered_at IS NULL",
                &[],
            )
            .await?
            .get(0))
    }
}

/// An interval as text PostgreSQL reads (`1.500000 seconds`), since tokio-postgres has no
/// `interval` type of its own.
fn pg_interval(d: Duration) -> String {
    format!("{:.6} seconds", d.as_secs_f64())
}
