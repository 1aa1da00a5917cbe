-- Source of seeds/app/schema.sql: the schema of "Ledgerly", a small invoicing SaaS.
-- regenerate.sh loads this file as role app_owner into a scratch cluster and dumps it with
-- pg_dump --schema-only.  Edit this file, then run regenerate.sh; never edit schema.sql by hand.
--
-- Objects worth knowing about when loading the dump elsewhere:
--   * everything is owned by app_owner, app_reader gets SELECT (roles may be absent on a target);
--   * pgcrypto lives in schema public (CREATE EXTENSION + COMMENT ON EXTENSION in the dump);
--   * public.events is partitioned by range on occurred_at (2024, 2025, DEFAULT);
--   * billing.invoice_total uses a SQL-standard body (BEGIN ATOMIC … END) with ';' inside.

\set ON_ERROR_STOP 1

-- pgcrypto is a trusted extension: app_owner (owner of the database) may create it.
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;

CREATE SCHEMA billing;
COMMENT ON SCHEMA billing IS 'Plans, subscriptions, invoices; everything money-related.';

-- ---------------------------------------------------------------------------------------------
-- Types and domains
-- ---------------------------------------------------------------------------------------------
CREATE TYPE public.plan_tier AS ENUM ('free', 'starter', 'pro', 'enterprise');
CREATE TYPE billing.invoice_status AS ENUM ('draft', 'open', 'paid', 'uncollectible');
CREATE TYPE billing.subscription_status AS ENUM ('trialing', 'active', 'past_due', 'cancelled');
CREATE TYPE public.user_role AS ENUM ('owner', 'admin', 'member', 'viewer');

CREATE DOMAIN public.email AS text
    CONSTRAINT email_format CHECK (VALUE ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$')
    CONSTRAINT email_length CHECK (length(VALUE) <= 254);
COMMENT ON DOMAIN public.email IS 'An e-mail address; format checked loosely (one @, a dot in the domain).';

CREATE DOMAIN billing.positive_money AS numeric(12,2)
    CONSTRAINT positive_money_check CHECK (VALUE >= 0);
COMMENT ON DOMAIN billing.positive_money IS 'Money amount; never negative. Use credit notes, not negative invoices.';

CREATE DOMAIN billing.currency_code AS character(3)
    CONSTRAINT currency_code_check CHECK (VALUE ~ '^[A-Z]{3}$');

-- ---------------------------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION public.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
BEGIN
    -- Keep updated_at honest; callers may not set it themselves.
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$fn$;
COMMENT ON FUNCTION public.set_updated_at() IS 'Trigger: sets updated_at := now() on every real change.';

CREATE TABLE public.audit_log (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    row_id bigint,
    action text NOT NULL CHECK (action IN ('INSERT', 'UPDATE', 'DELETE')),
    actor text NOT NULL DEFAULT current_user,
    changed_at timestamptz NOT NULL DEFAULT now(),
    old_row jsonb,
    new_row jsonb
);
COMMENT ON TABLE public.audit_log IS 'Append-only change log, written by audit triggers.';

CREATE FUNCTION public.audit_row_change() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
DECLARE
    v_id bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_id := OLD.id;
    ELSE
        v_id := NEW.id;
    END IF;
    INSERT INTO public.audit_log (table_name, row_id, action, old_row, new_row)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, v_id, TG_OP,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;  -- AFTER trigger; the result is ignored
END;
$fn$;

CREATE FUNCTION billing.format_money(amount numeric, currency character) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
AS $fn$
    SELECT CASE currency
        WHEN 'USD' THEN '$' || to_char(amount, 'FM999G999G990D00')
        WHEN 'EUR' THEN to_char(amount, 'FM999G999G990D00') || ' €'
        WHEN 'GBP' THEN '£' || to_char(amount, 'FM999G999G990D00')
        ELSE to_char(amount, 'FM999G999G990D00') || ' ' || currency
    END;
$fn$;

CREATE FUNCTION public.hash_api_key(raw_key text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT
AS $$ SELECT public.digest('ledgerly:' || $1, 'sha256') $$;
COMMENT ON FUNCTION public.hash_api_key(text) IS 'sha256 of the key with a fixed prefix; keys are never stored.';

-- ---------------------------------------------------------------------------------------------
-- Customers and users
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    billing_email public.email NOT NULL,
    country character(2) NOT NULL DEFAULT 'US',
    tax_id text,
    address text,
    notes text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT customers_name_not_blank CHECK (btrim(name) <> '')
);
COMMENT ON TABLE public.customers IS 'Paying organisations (tenants). One row per account, not per person.';
COMMENT ON COLUMN public.customers.tax_id IS 'VAT/GST number as printed on invoices; NULL when exempt.';
COMMENT ON COLUMN public.customers.address IS 'Postal address, several lines; free text.';
CREATE UNIQUE INDEX customers_billing_email_key ON public.customers (lower(billing_email::text));
CREATE TRIGGER customers_set_updated_at BEFORE UPDATE ON public.customers
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

CREATE TABLE public.users (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id) ON DELETE CASCADE,
    email public.email NOT NULL,
    full_name text NOT NULL,
    role public.user_role NOT NULL DEFAULT 'member',
    last_login_at timestamptz,
    deactivated_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.users IS 'People who log in; each belongs to exactly one customer.';
CREATE UNIQUE INDEX users_email_key ON public.users (lower(email::text));
CREATE INDEX users_customer_id_idx ON public.users (customer_id);
CREATE UNIQUE INDEX users_one_owner_per_customer ON public.users (customer_id)
    WHERE role = 'owner' AND deactivated_at IS NULL;
CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON public.users
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

CREATE TABLE public.api_keys (
    id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id) ON DELETE CASCADE,
    label text NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
COMMENT ON COLUMN public.api_keys.prefix IS 'First 8 characters of the key, shown in the UI.';
CREATE INDEX api_keys_live_idx ON public.api_keys (customer_id) WHERE revoked_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Billing
-- ---------------------------------------------------------------------------------------------
CREATE TABLE billing.plans (
    id serial PRIMARY KEY,
    code text NOT NULL UNIQUE,
    name text NOT NULL,
    tier public.plan_tier NOT NULL,
    monthly_price billing.positive_money NOT NULL,
    currency billing.currency_code NOT NULL DEFAULT 'USD',
    seats_included integer NOT NULL DEFAULT 1 CHECK (seats_included > 0),
    active boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE billing.plans IS 'The price list. Plans are never deleted, only deactivated.';

CREATE TABLE billing.subscriptions (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    plan_id integer NOT NULL REFERENCES billing.plans (id),
    status billing.subscription_status NOT NULL DEFAULT 'trialing',
    seats integer NOT NULL DEFAULT 1 CHECK (seats > 0),
    started_at timestamptz NOT NULL DEFAULT now(),
    current_period_end timestamptz NOT NULL,
    cancelled_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_cancelled_consistent
        CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);
CREATE INDEX subscriptions_customer_id_idx ON billing.subscriptions (customer_id);
CREATE UNIQUE INDEX subscriptions_one_live_per_customer ON billing.subscriptions (customer_id)
    WHERE status IN ('trialing', 'active', 'past_due');
COMMENT ON INDEX billing.subscriptions_one_live_per_customer IS 'A customer has at most one live subscription.';
CREATE TRIGGER subscriptions_set_updated_at BEFORE UPDATE ON billing.subscriptions
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

CREATE SEQUENCE billing.invoice_number_seq START WITH 1000 INCREMENT BY 1 NO CYCLE;
COMMENT ON SEQUENCE billing.invoice_number_seq IS 'Human-facing invoice numbers (INV-001000, …); gaps are fine.';

CREATE TABLE billing.invoices (
    id bigserial PRIMARY KEY,
    number text NOT NULL UNIQUE
        DEFAULT 'INV-' || lpad(nextval('billing.invoice_number_seq')::text, 6, '0'),
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    subscription_id bigint REFERENCES billing.subscriptions (id) ON DELETE SET NULL,
    status billing.invoice_status NOT NULL DEFAULT 'draft',
    currency billing.currency_code NOT NULL DEFAULT 'USD',
    total billing.positive_money NOT NULL DEFAULT 0,
    issued_at timestamptz,
    due_at timestamptz,
    paid_at timestamptz,
    memo text,
    CONSTRAINT invoices_paid_has_date CHECK (status <> 'paid' OR paid_at IS NOT NULL),
    CONSTRAINT invoices_due_after_issue CHECK (due_at IS NULL OR issued_at IS NULL OR due_at >= issued_at)
);
COMMENT ON TABLE billing.invoices IS 'One invoice per billing period; total is the sum of its lines.';
COMMENT ON COLUMN billing.invoices.memo IS 'Printed under the lines; may contain newlines, quotes; anything.';
CREATE INDEX invoices_customer_id_idx ON billing.invoices (customer_id, issued_at DESC);
CREATE INDEX invoices_open_due_idx ON billing.invoices (due_at) WHERE status = 'open';
CREATE TRIGGER invoices_audit AFTER INSERT OR UPDATE OR DELETE ON billing.invoices
    FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();

CREATE TABLE billing.invoice_lines (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    invoice_id bigint NOT NULL REFERENCES billing.invoices (id) ON DELETE CASCADE,
    position smallint NOT NULL,
    description text NOT NULL,
    quantity numeric(10,2) NOT NULL DEFAULT 1 CHECK (quantity > 0),
    unit_price billing.positive_money NOT NULL,
    amount numeric(12,2) GENERATED ALWAYS AS (round(quantity * unit_price, 2)) STORED,
    CONSTRAINT invoice_lines_position_key UNIQUE (invoice_id, position)
);
COMMENT ON COLUMN billing.invoice_lines.amount IS 'Generated: quantity × unit_price, rounded to cents.';

CREATE FUNCTION billing.invoice_total(p_invoice_id bigint) RETURNS numeric
    LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce(sum(l.amount), 0)
      FROM billing.invoice_lines l
     WHERE l.invoice_id = p_invoice_id;
END;

-- ---------------------------------------------------------------------------------------------
-- Product analytics: a partitioned event stream
-- ---------------------------------------------------------------------------------------------
CREATE TABLE public.events (
    id bigint GENERATED BY DEFAULT AS IDENTITY,
    customer_id bigint REFERENCES public.customers (id) ON DELETE SET NULL,
    user_id bigint,
    kind text NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
COMMENT ON TABLE public.events IS 'Product analytics events, partitioned by year; old partitions get detached and archived.';
COMMENT ON COLUMN public.events.payload IS 'Event-specific attributes; schema depends on kind.';
CREATE TABLE public.events_2024 PARTITION OF public.events
    FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2025-01-01 00:00:00+00');
CREATE TABLE public.events_2025 PARTITION OF public.events
    FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2026-01-01 00:00:00+00');
CREATE TABLE public.events_default PARTITION OF public.events DEFAULT;
CREATE INDEX events_kind_occurred_at_idx ON public.events (kind, occurred_at);
CREATE INDEX events_payload_gin ON public.events USING gin (payload jsonb_path_ops);

-- ---------------------------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------------------------
CREATE VIEW public.active_subscriptions AS
    SELECT s.id AS subscription_id, c.id AS customer_id, c.name AS customer_name,
           p.code AS plan_code, p.tier, s.seats, s.current_period_end
      FROM billing.subscriptions s
      JOIN public.customers c ON c.id = s.customer_id
      JOIN billing.plans p ON p.id = s.plan_id
     WHERE s.status IN ('trialing', 'active', 'past_due');
COMMENT ON VIEW public.active_subscriptions IS 'Live subscriptions with their customer and plan.';

CREATE VIEW billing.customer_balances AS
    SELECT i.customer_id,
           i.currency,
           sum(i.total) FILTER (WHERE i.status = 'open') AS open_amount,
           count(*) FILTER (WHERE i.status = 'open' AND i.due_at < now()) AS overdue_invoices,
           max(i.paid_at) AS last_payment_at
      FROM billing.invoices i
     GROUP BY i.customer_id, i.currency;

CREATE MATERIALIZED VIEW billing.monthly_revenue AS
    SELECT date_trunc('month', i.paid_at) AS month,
           i.currency,
           count(*) AS invoices,
           sum(i.total) AS revenue
      FROM billing.invoices i
     WHERE i.status = 'paid'
     GROUP BY 1, 2
WITH NO DATA;
CREATE UNIQUE INDEX monthly_revenue_month_currency_idx ON billing.monthly_revenue (month, currency);
COMMENT ON MATERIALIZED VIEW billing.monthly_revenue IS 'Paid revenue per month; REFRESH MATERIALIZED VIEW CONCURRENTLY nightly.';

-- ---------------------------------------------------------------------------------------------
-- Privileges: app_reader is the read-only reporting role
-- ---------------------------------------------------------------------------------------------
GRANT USAGE ON SCHEMA billing TO app_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA billing TO app_reader;
REVOKE ALL ON public.audit_log FROM app_reader;
REVOKE EXECUTE ON FUNCTION public.hash_api_key(text) FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT ON TABLES TO app_reader;
