-- previewdb's control-plane state: one row per environment, kept as a tombstone after deletion.
CREATE TABLE environments (
    id               uuid PRIMARY KEY,
    key              text NOT NULL,
    target           text NOT NULL,
    isolation        text NOT NULL,
    blueprint        text,
    blueprint_hash   text,
    -- Digest of the settings that make two creates "the same" (idempotency check).
    settings_digest  text NOT NULL,
    state            text NOT NULL
                     CHECK (state IN ('provisioning', 'ready', 'deleting', 'deleted', 'failed')),
    error            text,
    -- Backend-specific names of what lives on the target, recorded before it is created.
    resources        jsonb NOT NULL DEFAULT '{}',
    -- Whether something may still be left on the target (a failed teardown is retried).
    teardown_pending boolean NOT NULL DEFAULT false,
    -- Host, port, database, schema, user, params: everything but the password.
    connection       jsonb,
    -- XChaCha20-Poly1305: 24-byte nonce followed by the sealed password.
    password_sealed  bytea,
    labels           jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    deleted_at       timestamptz
);

-- A key names at most one live environment.
CREATE UNIQUE INDEX environments_live_key ON environments (key)
    WHERE state IN ('provisioning', 'ready', 'deleting');
CREATE INDEX environments_key ON environments (key, created_at DESC);
CREATE INDEX environments_expiry ON environments (expires_at) WHERE state = 'ready';
CREATE INDEX environments_target_live ON environments (target)
    WHERE state IN ('provisioning', 'ready', 'deleting');
