-- Per-key leases: who is changing a key right now. A row is taken with one statement, renewed
-- while the work runs and deleted when it ends; a replica that dies stops renewing, and its
-- keys are free again once `expires_at` passes. No connection is held while the work runs.
CREATE TABLE key_leases (
    key              text PRIMARY KEY,
    -- One id per acquisition, so a lease taken over after expiry is told apart from its
    -- former holder's.
    holder           uuid NOT NULL,
    replica          uuid NOT NULL,
    -- What the holder does: create, delete, extend, rotate, reset, migrate, sweep, reconcile.
    purpose          text NOT NULL,
    expires_at       timestamptz NOT NULL,
    -- Set by a DELETE of the key on any replica: the holder stops a create, reset or migrate.
    cancel_requested boolean NOT NULL DEFAULT false
);

-- Size quota: measured by the watchdog; an environment over its quota is locked (no login).
ALTER TABLE environments
    ADD COLUMN size_bytes bigint,
    ADD COLUMN size_measured_at timestamptz,
    ADD COLUMN lock_reason text CHECK (lock_reason IN ('over_quota'));
