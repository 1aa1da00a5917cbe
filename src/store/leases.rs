//! The SQL of per-key leases (see `service::lease` for how they are held and renewed).

use super::{Result, Store};
use std::time::Duration;
use uuid::Uuid;

impl Store {
    /// Takes the lease of `key` unless someone else holds an unexpired one. One statement, so
    /// no connection is held while the work runs.
    pub async fn take_lease(
        &self,
        key: &str,
        holder: Uuid,
        replica: Uuid,
        purpose: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "INSERT INTO key_leases AS l (key, holder, replica, purpose, expires_at) \
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
                 ON CONFLICT (key) DO UPDATE SET holder = EXCLUDED.holder, replica = EXCLUDED.replica, \
                   purpose = EXCLUDED.purpose, expires_at = EXCLUDED.expires_at, cancel_requested = false \
                 WHERE l.expires_at < now() \
                 RETURNING holder",
                &[&key, &holder, &replica, &purpose, &ttl.as_secs_f64()],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Extends the leases still held by `holders`; answers those still held, each with
    /// whether a cancellation was asked for. A holder missing from the answer lost its lease.
    pub async fn renew_leases(&self, holders: &[Uuid], ttl: Duration) -> Result<Vec<(Uuid, bool)>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "UPDATE key_leases SET expires_at = now() + make_interval(secs => $2) \
                 WHERE holder = ANY($1) RETURNING holder, cancel_requested",
                &[&holders, &ttl.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn release_lease(&self, key: &str, holder: Uuid) -> Result<()> {
        self.pool
            .get()
            .await?
            .execute(
                "DELETE FROM key_leases WHERE key = $1 AND holder = $2",
                &[&key, &holder],
            )
            .await?;
        Ok(())
    }

    /// Asks whoever holds `key` for one of `purposes` to stop.
    pub async fn request_lease_cancel(&self, key: &str, purposes: &[&str]) -> Result<bool> {
        let n = self
            .pool
            .get()
            .await?
            .execute(
                "UPDATE key_leases SET cancel_requested = true \
                 WHERE key = $1 AND purpose = ANY($2) AND expires_at > now()",
                &[&key, &purposes],
            )
            .await?;
        Ok(n > 0)
    }

    /// Forgets leases that expired long ago (their holders died and nobody took the key since).
    pub async fn prune_leases(&self) -> Result<u64> {
        Ok(self
            .pool
            .get()
            .await?
            .execute(
                "DELETE FROM key_leases WHERE expires_at < now() - interval '1 hour'",
                &[],
            )
            .await?)
    }
}
