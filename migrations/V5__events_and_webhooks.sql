-- The audit trail: one row per lifecycle event, written in the same transaction as the change
-- it reports. Ids are taken under a transaction-scoped advisory lock (see the store), so they
-- become visible in id order and `id > cursor` never skips a later commit.
CREATE TABLE events (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    environment_id uuid NULL,
    key            text,
    event          text NOT NULL,
    actor          text NOT NULL,
    request_id     text,
    outcome        text NOT NULL CHECK (outcome IN ('ok', 'error')),
    detail         jsonb
);
CREATE INDEX events_by_environment ON events (environment_id, id);
CREATE INDEX events_at ON events (at);

-- The webhooks' outbox: one row per event and webhook, written with the event. A deliverer
-- claims due rows for a lease (`claimed_until`), posts without holding a connection, then
-- marks the row delivered or schedules the next attempt: at-least-once, across crashes.
CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES events ON DELETE CASCADE,
    webhook         text NOT NULL,
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    delivered_at    timestamptz,
    last_error      text
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX deliveries_event ON deliveries (event_id);

-- The expiry an `expiring` notice was sent for: one notice per expiry, across replicas; an
-- extend changes `expires_at` and so arms the notice again.
ALTER TABLE environments ADD COLUMN expiry_noticed_for timestamptz NULL;
