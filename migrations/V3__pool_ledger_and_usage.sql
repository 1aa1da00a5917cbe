-- The warm pools' ledger: one row per pool entry that is ready on its target (its role and
-- database, both named `name`, renamed from `pdb_fill_…` once complete). The entry's role already
-- carries the SCRAM verifier of the password sealed here, so a hand-out takes a row with one
-- statement (SKIP LOCKED: concurrent hand-outs never wait for each other) and renames it.
CREATE TABLE pool_entries (
    target          text NOT NULL,
    name            text NOT NULL,
    -- The pool: blueprint and template hash, as in the entry's name (`pdb_pool_<bp>_<hash>_`).
    pool            text NOT NULL,
    -- Binds the sealed password to this row (XChaCha20-Poly1305, like environments').
    id              uuid NOT NULL,
    password_sealed bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, name)
);
CREATE INDEX pool_entries_by_pool ON pool_entries (target, pool, created_at);

-- Live environments per target, kept by the very statements that make an environment live or
-- end it (see the store), so that a create's capacity check reads and bumps one row instead of
-- counting thousands.
CREATE TABLE target_usage (
    target text PRIMARY KEY,
    live   bigint NOT NULL CHECK (live >= 0)
);
INSERT INTO target_usage (target, live)
    SELECT target, count(*) FROM environments
    WHERE state IN ('provisioning', 'ready', 'deleting') GROUP BY target;

-- A delete answers once the environment is closed; its data may still be dropped after that
-- (`teardown_pending` on a `deleted` record). The reconciler looks for such work on every pass.
CREATE INDEX environments_unfinished ON environments (id)
    WHERE state IN ('provisioning', 'deleting')
       OR (state IN ('failed', 'deleted') AND teardown_pending);
