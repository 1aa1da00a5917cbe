//! The SQL of the warm pools' ledger (see `backend::postgres::pool`): which entries are ready
//! on which target, each with the sealed password its role already carries.

use super::{Result, Store};
use uuid::Uuid;

/// A ready pool entry, taken out of the ledger for a hand-out.
pub struct PoolEntry {
    pub name: String,
    pub id: Uuid,
    pub password_sealed: Vec<u8>,
}

impl Store {
    pub async fn add_pool_entry(&self, target: &str, pool: &str, entry: &PoolEntry) -> Result<()> {
        self.exec(
            "INSERT INTO pool_entries (target, name, pool, id, password_sealed) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &target,
                &entry.name,
                &pool,
                &entry.id,
                &entry.password_sealed,
            ],
        )
        .await
    }

    /// Takes the oldest entry of `pool` that no concurrent hand-out is taking; `None` when the
    /// pool is empty. One statement: the row is gone once this answers.
    pub async fn take_pool_entry(&self, target: &str, pool: &str) -> Result<Option<PoolEntry>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "DELETE FROM pool_entries WHERE (target, name) = ( \
                   SELECT target, name FROM pool_entries WHERE target = $1 AND pool = $2 \
                   ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING name, id, password_sealed",
                &[&target, &pool],
            )
            .await?;
        Ok(row.map(|r| PoolEntry {
            name: r.get(0),
            id: r.get(1),
            password_sealed: r.get(2),
        }))
    }

    /// Every row of the ledger, of every target and pool: `(target, name)`.
    pub async fn pool_entry_names(&self) -> Result<Vec<(String, String)>> {
        let rows = self
            .pool
            .get()
            .await?
            .query("SELECT target, name FROM pool_entries", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn count_pool_entries(&self, target: &str, pool: &str) -> Result<i64> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "SELECT count(*) FROM pool_entries WHERE target = $1 AND pool = $2",
                &[&target, &pool],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn remove_pool_entries(&self, target: &str, names: &[String]) -> Result<()> {
        self.exec(
            "DELETE FROM pool_entries WHERE target = $1 AND name = ANY($2)",
            &[&target, &names],
        )
        .await
    }
}
