--
-- PostgreSQL database dump
--

\restrict previewdbExampleAppSchema

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: billing; Type: SCHEMA; Schema: -; Owner: app_owner
--

CREATE SCHEMA billing;


ALTER SCHEMA billing OWNER TO app_owner;

--
-- Name: SCHEMA billing; Type: COMMENT; Schema: -; Owner: app_owner
--

COMMENT ON SCHEMA billing IS 'Plans, subscriptions, invoices; everything money-related.';


--
-- Name: pgcrypto; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;


--
-- Name: EXTENSION pgcrypto; Type: COMMENT; Schema: -; Owner: 
--

COMMENT ON EXTENSION pgcrypto IS 'cryptographic functions';


--
-- Name: currency_code; Type: DOMAIN; Schema: billing; Owner: app_owner
--

CREATE DOMAIN billing.currency_code AS character(3)
	CONSTRAINT currency_code_check CHECK ((VALUE ~ '^[A-Z]{3}$'::text));


ALTER DOMAIN billing.currency_code OWNER TO app_owner;

--
-- Name: invoice_status; Type: TYPE; Schema: billing; Owner: app_owner
--

CREATE TYPE billing.invoice_status AS ENUM (
    'draft',
    'open',
    'paid',
    'uncollectible'
);


ALTER TYPE billing.invoice_status OWNER TO app_owner;

--
-- Name: positive_money; Type: DOMAIN; Schema: billing; Owner: app_owner
--

CREATE DOMAIN billing.positive_money AS numeric(12,2)
	CONSTRAINT positive_money_check CHECK ((VALUE >= (0)::numeric));


ALTER DOMAIN billing.positive_money OWNER TO app_owner;

--
-- Name: DOMAIN positive_money; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON DOMAIN billing.positive_money IS 'Money amount; never negative. Use credit notes, not negative invoices.';


--
-- Name: subscription_status; Type: TYPE; Schema: billing; Owner: app_owner
--

CREATE TYPE billing.subscription_status AS ENUM (
    'trialing',
    'active',
    'past_due',
    'cancelled'
);


ALTER TYPE billing.subscription_status OWNER TO app_owner;

--
-- Name: email; Type: DOMAIN; Schema: public; Owner: app_owner
--

CREATE DOMAIN public.email AS text
	CONSTRAINT email_format CHECK ((VALUE ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'::text))
	CONSTRAINT email_length CHECK ((length(VALUE) <= 254));


ALTER DOMAIN public.email OWNER TO app_owner;

--
-- Name: DOMAIN email; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON DOMAIN public.email IS 'An e-mail address; format checked loosely (one @, a dot in the domain).';


--
-- Name: plan_tier; Type: TYPE; Schema: public; Owner: app_owner
--

CREATE TYPE public.plan_tier AS ENUM (
    'free',
    'starter',
    'pro',
    'enterprise'
);


ALTER TYPE public.plan_tier OWNER TO app_owner;

--
-- Name: user_role; Type: TYPE; Schema: public; Owner: app_owner
--

CREATE TYPE public.user_role AS ENUM (
    'owner',
    'admin',
    'member',
    'viewer'
);


ALTER TYPE public.user_role OWNER TO app_owner;

--
-- Name: format_money(numeric, character); Type: FUNCTION; Schema: billing; Owner: app_owner
--

CREATE FUNCTION billing.format_money(amount numeric, currency character) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $_$
    SELECT CASE currency
        WHEN 'USD' THEN '$' || to_char(amount, 'FM999G999G990D00')
        WHEN 'EUR' THEN to_char(amount, 'FM999G999G990D00') || ' €'
        WHEN 'GBP' THEN '£' || to_char(amount, 'FM999G999G990D00')
        ELSE to_char(amount, 'FM999G999G990D00') || ' ' || currency
    END;
$_$;


ALTER FUNCTION billing.format_money(amount numeric, currency character) OWNER TO app_owner;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: invoice_lines; Type: TABLE; Schema: billing; Owner: app_owner
--

CREATE TABLE billing.invoice_lines (
    id bigint NOT NULL,
    invoice_id bigint NOT NULL,
    "position" smallint NOT NULL,
    description text NOT NULL,
    quantity numeric(10,2) DEFAULT 1 NOT NULL,
    unit_price billing.positive_money NOT NULL,
    amount numeric(12,2) GENERATED ALWAYS AS (round((quantity * (unit_price)::numeric), 2)) STORED,
    CONSTRAINT invoice_lines_quantity_check CHECK ((quantity > (0)::numeric))
);


ALTER TABLE billing.invoice_lines OWNER TO app_owner;

--
-- Name: COLUMN invoice_lines.amount; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON COLUMN billing.invoice_lines.amount IS 'Generated: quantity × unit_price, rounded to cents.';


--
-- Name: invoice_total(bigint); Type: FUNCTION; Schema: billing; Owner: app_owner
--

CREATE FUNCTION billing.invoice_total(p_invoice_id bigint) RETURNS numeric
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT COALESCE(sum(l.amount), (0)::numeric) AS "coalesce"
    FROM billing.invoice_lines l
   WHERE (l.invoice_id = invoice_total.p_invoice_id);
END;


ALTER FUNCTION billing.invoice_total(p_invoice_id bigint) OWNER TO app_owner;

--
-- Name: audit_row_change(); Type: FUNCTION; Schema: public; Owner: app_owner
--

CREATE FUNCTION public.audit_row_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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
$$;


ALTER FUNCTION public.audit_row_change() OWNER TO app_owner;

--
-- Name: hash_api_key(text); Type: FUNCTION; Schema: public; Owner: app_owner
--

CREATE FUNCTION public.hash_api_key(raw_key text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT
    AS $_$ SELECT public.digest('ledgerly:' || $1, 'sha256') $_$;


ALTER FUNCTION public.hash_api_key(raw_key text) OWNER TO app_owner;

--
-- Name: FUNCTION hash_api_key(raw_key text); Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON FUNCTION public.hash_api_key(raw_key text) IS 'sha256 of the key with a fixed prefix; keys are never stored.';


--
-- Name: set_updated_at(); Type: FUNCTION; Schema: public; Owner: app_owner
--

CREATE FUNCTION public.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Keep updated_at honest; callers may not set it themselves.
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;


ALTER FUNCTION public.set_updated_at() OWNER TO app_owner;

--
-- Name: FUNCTION set_updated_at(); Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON FUNCTION public.set_updated_at() IS 'Trigger: sets updated_at := now() on every real change.';


--
-- Name: invoice_number_seq; Type: SEQUENCE; Schema: billing; Owner: app_owner
--

CREATE SEQUENCE billing.invoice_number_seq
    START WITH 1000
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE billing.invoice_number_seq OWNER TO app_owner;

--
-- Name: SEQUENCE invoice_number_seq; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON SEQUENCE billing.invoice_number_seq IS 'Human-facing invoice numbers (INV-001000, …); gaps are fine.';


--
-- Name: invoices; Type: TABLE; Schema: billing; Owner: app_owner
--

CREATE TABLE billing.invoices (
    id bigint NOT NULL,
    number text DEFAULT ('INV-'::text || lpad((nextval('billing.invoice_number_seq'::regclass))::text, 6, '0'::text)) NOT NULL,
    customer_id bigint NOT NULL,
    subscription_id bigint,
    status billing.invoice_status DEFAULT 'draft'::billing.invoice_status NOT NULL,
    currency billing.currency_code DEFAULT 'USD'::bpchar NOT NULL,
    total billing.positive_money DEFAULT 0 NOT NULL,
    issued_at timestamp with time zone,
    due_at timestamp with time zone,
    paid_at timestamp with time zone,
    memo text,
    CONSTRAINT invoices_due_after_issue CHECK (((due_at IS NULL) OR (issued_at IS NULL) OR (due_at >= issued_at))),
    CONSTRAINT invoices_paid_has_date CHECK (((status <> 'paid'::billing.invoice_status) OR (paid_at IS NOT NULL)))
);


ALTER TABLE billing.invoices OWNER TO app_owner;

--
-- Name: TABLE invoices; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON TABLE billing.invoices IS 'One invoice per billing period; total is the sum of its lines.';


--
-- Name: COLUMN invoices.memo; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON COLUMN billing.invoices.memo IS 'Printed under the lines; may contain newlines, quotes; anything.';


--
-- Name: customer_balances; Type: VIEW; Schema: billing; Owner: app_owner
--

CREATE VIEW billing.customer_balances AS
 SELECT i.customer_id,
    i.currency,
    sum((i.total)::numeric) FILTER (WHERE (i.status = 'open'::billing.invoice_status)) AS open_amount,
    count(*) FILTER (WHERE ((i.status = 'open'::billing.invoice_status) AND (i.due_at < now()))) AS overdue_invoices,
    max(i.paid_at) AS last_payment_at
   FROM billing.invoices i
  GROUP BY i.customer_id, i.currency;


ALTER TABLE billing.customer_balances OWNER TO app_owner;

--
-- Name: invoice_lines_id_seq; Type: SEQUENCE; Schema: billing; Owner: app_owner
--

ALTER TABLE billing.invoice_lines ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME billing.invoice_lines_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: invoices_id_seq; Type: SEQUENCE; Schema: billing; Owner: app_owner
--

CREATE SEQUENCE billing.invoices_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE billing.invoices_id_seq OWNER TO app_owner;

--
-- Name: invoices_id_seq; Type: SEQUENCE OWNED BY; Schema: billing; Owner: app_owner
--

ALTER SEQUENCE billing.invoices_id_seq OWNED BY billing.invoices.id;


--
-- Name: monthly_revenue; Type: MATERIALIZED VIEW; Schema: billing; Owner: app_owner
--

CREATE MATERIALIZED VIEW billing.monthly_revenue AS
 SELECT date_trunc('month'::text, i.paid_at) AS month,
    i.currency,
    count(*) AS invoices,
    sum((i.total)::numeric) AS revenue
   FROM billing.invoices i
  WHERE (i.status = 'paid'::billing.invoice_status)
  GROUP BY (date_trunc('month'::text, i.paid_at)), i.currency
  WITH NO DATA;


ALTER TABLE billing.monthly_revenue OWNER TO app_owner;

--
-- Name: MATERIALIZED VIEW monthly_revenue; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON MATERIALIZED VIEW billing.monthly_revenue IS 'Paid revenue per month; REFRESH MATERIALIZED VIEW CONCURRENTLY nightly.';


--
-- Name: plans; Type: TABLE; Schema: billing; Owner: app_owner
--

CREATE TABLE billing.plans (
    id integer NOT NULL,
    code text NOT NULL,
    name text NOT NULL,
    tier public.plan_tier NOT NULL,
    monthly_price billing.positive_money NOT NULL,
    currency billing.currency_code DEFAULT 'USD'::bpchar NOT NULL,
    seats_included integer DEFAULT 1 NOT NULL,
    active boolean DEFAULT true NOT NULL,
    CONSTRAINT plans_seats_included_check CHECK ((seats_included > 0))
);


ALTER TABLE billing.plans OWNER TO app_owner;

--
-- Name: TABLE plans; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON TABLE billing.plans IS 'The price list. Plans are never deleted, only deactivated.';


--
-- Name: plans_id_seq; Type: SEQUENCE; Schema: billing; Owner: app_owner
--

CREATE SEQUENCE billing.plans_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE billing.plans_id_seq OWNER TO app_owner;

--
-- Name: plans_id_seq; Type: SEQUENCE OWNED BY; Schema: billing; Owner: app_owner
--

ALTER SEQUENCE billing.plans_id_seq OWNED BY billing.plans.id;


--
-- Name: subscriptions; Type: TABLE; Schema: billing; Owner: app_owner
--

CREATE TABLE billing.subscriptions (
    id bigint NOT NULL,
    customer_id bigint NOT NULL,
    plan_id integer NOT NULL,
    status billing.subscription_status DEFAULT 'trialing'::billing.subscription_status NOT NULL,
    seats integer DEFAULT 1 NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    current_period_end timestamp with time zone NOT NULL,
    cancelled_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT subscriptions_cancelled_consistent CHECK (((status = 'cancelled'::billing.subscription_status) = (cancelled_at IS NOT NULL))),
    CONSTRAINT subscriptions_seats_check CHECK ((seats > 0))
);


ALTER TABLE billing.subscriptions OWNER TO app_owner;

--
-- Name: subscriptions_id_seq; Type: SEQUENCE; Schema: billing; Owner: app_owner
--

ALTER TABLE billing.subscriptions ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME billing.subscriptions_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: customers; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.customers (
    id bigint NOT NULL,
    name text NOT NULL,
    billing_email public.email NOT NULL,
    country character(2) DEFAULT 'US'::bpchar NOT NULL,
    tax_id text,
    address text,
    notes text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT customers_name_not_blank CHECK ((btrim(name) <> ''::text))
);


ALTER TABLE public.customers OWNER TO app_owner;

--
-- Name: TABLE customers; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON TABLE public.customers IS 'Paying organisations (tenants). One row per account, not per person.';


--
-- Name: COLUMN customers.tax_id; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON COLUMN public.customers.tax_id IS 'VAT/GST number as printed on invoices; NULL when exempt.';


--
-- Name: COLUMN customers.address; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON COLUMN public.customers.address IS 'Postal address, several lines; free text.';


--
-- Name: active_subscriptions; Type: VIEW; Schema: public; Owner: app_owner
--

CREATE VIEW public.active_subscriptions AS
 SELECT s.id AS subscription_id,
    c.id AS customer_id,
    c.name AS customer_name,
    p.code AS plan_code,
    p.tier,
    s.seats,
    s.current_period_end
   FROM ((billing.subscriptions s
     JOIN public.customers c ON ((c.id = s.customer_id)))
     JOIN billing.plans p ON ((p.id = s.plan_id)))
  WHERE (s.status = ANY (ARRAY['trialing'::billing.subscription_status, 'active'::billing.subscription_status, 'past_due'::billing.subscription_status]));


ALTER TABLE public.active_subscriptions OWNER TO app_owner;

--
-- Name: VIEW active_subscriptions; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON VIEW public.active_subscriptions IS 'Live subscriptions with their customer and plan.';


--
-- Name: api_keys; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.api_keys (
    id integer NOT NULL,
    customer_id bigint NOT NULL,
    label text NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone
);


ALTER TABLE public.api_keys OWNER TO app_owner;

--
-- Name: COLUMN api_keys.prefix; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON COLUMN public.api_keys.prefix IS 'First 8 characters of the key, shown in the UI.';


--
-- Name: api_keys_id_seq; Type: SEQUENCE; Schema: public; Owner: app_owner
--

ALTER TABLE public.api_keys ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME public.api_keys_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: audit_log; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.audit_log (
    id bigint NOT NULL,
    table_name text NOT NULL,
    row_id bigint,
    action text NOT NULL,
    actor text DEFAULT CURRENT_USER NOT NULL,
    changed_at timestamp with time zone DEFAULT now() NOT NULL,
    old_row jsonb,
    new_row jsonb,
    CONSTRAINT audit_log_action_check CHECK ((action = ANY (ARRAY['INSERT'::text, 'UPDATE'::text, 'DELETE'::text])))
);


ALTER TABLE public.audit_log OWNER TO app_owner;

--
-- Name: TABLE audit_log; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON TABLE public.audit_log IS 'Append-only change log, written by audit triggers.';


--
-- Name: audit_log_id_seq; Type: SEQUENCE; Schema: public; Owner: app_owner
--

CREATE SEQUENCE public.audit_log_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE public.audit_log_id_seq OWNER TO app_owner;

--
-- Name: audit_log_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: app_owner
--

ALTER SEQUENCE public.audit_log_id_seq OWNED BY public.audit_log.id;


--
-- Name: customers_id_seq; Type: SEQUENCE; Schema: public; Owner: app_owner
--

CREATE SEQUENCE public.customers_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


ALTER TABLE public.customers_id_seq OWNER TO app_owner;

--
-- Name: customers_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: app_owner
--

ALTER SEQUENCE public.customers_id_seq OWNED BY public.customers.id;


--
-- Name: events; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.events (
    id bigint NOT NULL,
    customer_id bigint,
    user_id bigint,
    kind text NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL
)
PARTITION BY RANGE (occurred_at);


ALTER TABLE public.events OWNER TO app_owner;

--
-- Name: TABLE events; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON TABLE public.events IS 'Product analytics events, partitioned by year; old partitions get detached and archived.';


--
-- Name: COLUMN events.payload; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON COLUMN public.events.payload IS 'Event-specific attributes; schema depends on kind.';


--
-- Name: events_2024; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.events_2024 (
    id bigint NOT NULL,
    customer_id bigint,
    user_id bigint,
    kind text NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL
);


ALTER TABLE public.events_2024 OWNER TO app_owner;

--
-- Name: events_2025; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.events_2025 (
    id bigint NOT NULL,
    customer_id bigint,
    user_id bigint,
    kind text NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL
);


ALTER TABLE public.events_2025 OWNER TO app_owner;

--
-- Name: events_default; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.events_default (
    id bigint NOT NULL,
    customer_id bigint,
    user_id bigint,
    kind text NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL
);


ALTER TABLE public.events_default OWNER TO app_owner;

--
-- Name: events_id_seq; Type: SEQUENCE; Schema: public; Owner: app_owner
--

ALTER TABLE public.events ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME public.events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: users; Type: TABLE; Schema: public; Owner: app_owner
--

CREATE TABLE public.users (
    id bigint NOT NULL,
    customer_id bigint NOT NULL,
    email public.email NOT NULL,
    full_name text NOT NULL,
    role public.user_role DEFAULT 'member'::public.user_role NOT NULL,
    last_login_at timestamp with time zone,
    deactivated_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);


ALTER TABLE public.users OWNER TO app_owner;

--
-- Name: TABLE users; Type: COMMENT; Schema: public; Owner: app_owner
--

COMMENT ON TABLE public.users IS 'People who log in; each belongs to exactly one customer.';


--
-- Name: users_id_seq; Type: SEQUENCE; Schema: public; Owner: app_owner
--

ALTER TABLE public.users ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (
    SEQUENCE NAME public.users_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: events_2024; Type: TABLE ATTACH; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_2024 FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2025-01-01 00:00:00+00');


--
-- Name: events_2025; Type: TABLE ATTACH; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_2025 FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2026-01-01 00:00:00+00');


--
-- Name: events_default; Type: TABLE ATTACH; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.events ATTACH PARTITION public.events_default DEFAULT;


--
-- Name: invoices id; Type: DEFAULT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoices ALTER COLUMN id SET DEFAULT nextval('billing.invoices_id_seq'::regclass);


--
-- Name: plans id; Type: DEFAULT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.plans ALTER COLUMN id SET DEFAULT nextval('billing.plans_id_seq'::regclass);


--
-- Name: audit_log id; Type: DEFAULT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.audit_log ALTER COLUMN id SET DEFAULT nextval('public.audit_log_id_seq'::regclass);


--
-- Name: customers id; Type: DEFAULT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.customers ALTER COLUMN id SET DEFAULT nextval('public.customers_id_seq'::regclass);


--
-- Name: invoice_lines invoice_lines_pkey; Type: CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoice_lines
    ADD CONSTRAINT invoice_lines_pkey PRIMARY KEY (id);


--
-- Name: invoice_lines invoice_lines_position_key; Type: CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoice_lines
    ADD CONSTRAINT invoice_lines_position_key UNIQUE (invoice_id, "position");


--
-- Name: invoices invoices_number_key; Type: CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoices
    ADD CONSTRAINT invoices_number_key UNIQUE (number);


--
-- Name: invoices invoices_pkey; Type: CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoices
    ADD CONSTRAINT invoices_pkey PRIMARY KEY (id);


--
-- Name: plans plans_code_key; Type: CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.plans
    ADD CONSTRAINT plans_code_key UNIQUE (code);


--
-- Name: plans plans_pkey; Type: CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.plans
    ADD CONSTRAINT plans_pkey PRIMARY KEY (id);


--
-- Name: subscriptions subscriptions_pkey; Type: CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.subscriptions
    ADD CONSTRAINT subscriptions_pkey PRIMARY KEY (id);


--
-- Name: api_keys api_keys_key_hash_key; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);


--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);


--
-- Name: customers customers_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.customers
    ADD CONSTRAINT customers_pkey PRIMARY KEY (id);


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id, occurred_at);


--
-- Name: events_2024 events_2024_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.events_2024
    ADD CONSTRAINT events_2024_pkey PRIMARY KEY (id, occurred_at);


--
-- Name: events_2025 events_2025_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.events_2025
    ADD CONSTRAINT events_2025_pkey PRIMARY KEY (id, occurred_at);


--
-- Name: events_default events_default_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.events_default
    ADD CONSTRAINT events_default_pkey PRIMARY KEY (id, occurred_at);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: invoices_customer_id_idx; Type: INDEX; Schema: billing; Owner: app_owner
--

CREATE INDEX invoices_customer_id_idx ON billing.invoices USING btree (customer_id, issued_at DESC);


--
-- Name: invoices_open_due_idx; Type: INDEX; Schema: billing; Owner: app_owner
--

CREATE INDEX invoices_open_due_idx ON billing.invoices USING btree (due_at) WHERE (status = 'open'::billing.invoice_status);


--
-- Name: monthly_revenue_month_currency_idx; Type: INDEX; Schema: billing; Owner: app_owner
--

CREATE UNIQUE INDEX monthly_revenue_month_currency_idx ON billing.monthly_revenue USING btree (month, currency);


--
-- Name: subscriptions_customer_id_idx; Type: INDEX; Schema: billing; Owner: app_owner
--

CREATE INDEX subscriptions_customer_id_idx ON billing.subscriptions USING btree (customer_id);


--
-- Name: subscriptions_one_live_per_customer; Type: INDEX; Schema: billing; Owner: app_owner
--

CREATE UNIQUE INDEX subscriptions_one_live_per_customer ON billing.subscriptions USING btree (customer_id) WHERE (status = ANY (ARRAY['trialing'::billing.subscription_status, 'active'::billing.subscription_status, 'past_due'::billing.subscription_status]));


--
-- Name: INDEX subscriptions_one_live_per_customer; Type: COMMENT; Schema: billing; Owner: app_owner
--

COMMENT ON INDEX billing.subscriptions_one_live_per_customer IS 'A customer has at most one live subscription.';


--
-- Name: api_keys_live_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX api_keys_live_idx ON public.api_keys USING btree (customer_id) WHERE (revoked_at IS NULL);


--
-- Name: customers_billing_email_key; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE UNIQUE INDEX customers_billing_email_key ON public.customers USING btree (lower((billing_email)::text));


--
-- Name: events_kind_occurred_at_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_kind_occurred_at_idx ON ONLY public.events USING btree (kind, occurred_at);


--
-- Name: events_2024_kind_occurred_at_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_2024_kind_occurred_at_idx ON public.events_2024 USING btree (kind, occurred_at);


--
-- Name: events_payload_gin; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_payload_gin ON ONLY public.events USING gin (payload jsonb_path_ops);


--
-- Name: events_2024_payload_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_2024_payload_idx ON public.events_2024 USING gin (payload jsonb_path_ops);


--
-- Name: events_2025_kind_occurred_at_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_2025_kind_occurred_at_idx ON public.events_2025 USING btree (kind, occurred_at);


--
-- Name: events_2025_payload_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_2025_payload_idx ON public.events_2025 USING gin (payload jsonb_path_ops);


--
-- Name: events_default_kind_occurred_at_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_default_kind_occurred_at_idx ON public.events_default USING btree (kind, occurred_at);


--
-- Name: events_default_payload_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX events_default_payload_idx ON public.events_default USING gin (payload jsonb_path_ops);


--
-- Name: users_customer_id_idx; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE INDEX users_customer_id_idx ON public.users USING btree (customer_id);


--
-- Name: users_email_key; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE UNIQUE INDEX users_email_key ON public.users USING btree (lower((email)::text));


--
-- Name: users_one_owner_per_customer; Type: INDEX; Schema: public; Owner: app_owner
--

CREATE UNIQUE INDEX users_one_owner_per_customer ON public.users USING btree (customer_id) WHERE ((role = 'owner'::public.user_role) AND (deactivated_at IS NULL));


--
-- Name: events_2024_kind_occurred_at_idx; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_kind_occurred_at_idx ATTACH PARTITION public.events_2024_kind_occurred_at_idx;


--
-- Name: events_2024_payload_idx; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_payload_gin ATTACH PARTITION public.events_2024_payload_idx;


--
-- Name: events_2024_pkey; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_2024_pkey;


--
-- Name: events_2025_kind_occurred_at_idx; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_kind_occurred_at_idx ATTACH PARTITION public.events_2025_kind_occurred_at_idx;


--
-- Name: events_2025_payload_idx; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_payload_gin ATTACH PARTITION public.events_2025_payload_idx;


--
-- Name: events_2025_pkey; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_2025_pkey;


--
-- Name: events_default_kind_occurred_at_idx; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_kind_occurred_at_idx ATTACH PARTITION public.events_default_kind_occurred_at_idx;


--
-- Name: events_default_payload_idx; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_payload_gin ATTACH PARTITION public.events_default_payload_idx;


--
-- Name: events_default_pkey; Type: INDEX ATTACH; Schema: public; Owner: app_owner
--

ALTER INDEX public.events_pkey ATTACH PARTITION public.events_default_pkey;


--
-- Name: invoices invoices_audit; Type: TRIGGER; Schema: billing; Owner: app_owner
--

CREATE TRIGGER invoices_audit AFTER INSERT OR DELETE OR UPDATE ON billing.invoices FOR EACH ROW EXECUTE FUNCTION public.audit_row_change();


--
-- Name: subscriptions subscriptions_set_updated_at; Type: TRIGGER; Schema: billing; Owner: app_owner
--

CREATE TRIGGER subscriptions_set_updated_at BEFORE UPDATE ON billing.subscriptions FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();


--
-- Name: customers customers_set_updated_at; Type: TRIGGER; Schema: public; Owner: app_owner
--

CREATE TRIGGER customers_set_updated_at BEFORE UPDATE ON public.customers FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();


--
-- Name: users users_set_updated_at; Type: TRIGGER; Schema: public; Owner: app_owner
--

CREATE TRIGGER users_set_updated_at BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();


--
-- Name: invoice_lines invoice_lines_invoice_id_fkey; Type: FK CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoice_lines
    ADD CONSTRAINT invoice_lines_invoice_id_fkey FOREIGN KEY (invoice_id) REFERENCES billing.invoices(id) ON DELETE CASCADE;


--
-- Name: invoices invoices_customer_id_fkey; Type: FK CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoices
    ADD CONSTRAINT invoices_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id);


--
-- Name: invoices invoices_subscription_id_fkey; Type: FK CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.invoices
    ADD CONSTRAINT invoices_subscription_id_fkey FOREIGN KEY (subscription_id) REFERENCES billing.subscriptions(id) ON DELETE SET NULL;


--
-- Name: subscriptions subscriptions_customer_id_fkey; Type: FK CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.subscriptions
    ADD CONSTRAINT subscriptions_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id);


--
-- Name: subscriptions subscriptions_plan_id_fkey; Type: FK CONSTRAINT; Schema: billing; Owner: app_owner
--

ALTER TABLE ONLY billing.subscriptions
    ADD CONSTRAINT subscriptions_plan_id_fkey FOREIGN KEY (plan_id) REFERENCES billing.plans(id);


--
-- Name: api_keys api_keys_customer_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id) ON DELETE CASCADE;


--
-- Name: events events_customer_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE public.events
    ADD CONSTRAINT events_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id) ON DELETE SET NULL;


--
-- Name: users users_customer_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: app_owner
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id) ON DELETE CASCADE;


--
-- Name: SCHEMA billing; Type: ACL; Schema: -; Owner: app_owner
--

GRANT USAGE ON SCHEMA billing TO app_reader;


--
-- Name: TABLE invoice_lines; Type: ACL; Schema: billing; Owner: app_owner
--

GRANT SELECT ON TABLE billing.invoice_lines TO app_reader;


--
-- Name: FUNCTION hash_api_key(raw_key text); Type: ACL; Schema: public; Owner: app_owner
--

REVOKE ALL ON FUNCTION public.hash_api_key(raw_key text) FROM PUBLIC;


--
-- Name: TABLE invoices; Type: ACL; Schema: billing; Owner: app_owner
--

GRANT SELECT ON TABLE billing.invoices TO app_reader;


--
-- Name: TABLE customer_balances; Type: ACL; Schema: billing; Owner: app_owner
--

GRANT SELECT ON TABLE billing.customer_balances TO app_reader;


--
-- Name: TABLE monthly_revenue; Type: ACL; Schema: billing; Owner: app_owner
--

GRANT SELECT ON TABLE billing.monthly_revenue TO app_reader;


--
-- Name: TABLE plans; Type: ACL; Schema: billing; Owner: app_owner
--

GRANT SELECT ON TABLE billing.plans TO app_reader;


--
-- Name: TABLE subscriptions; Type: ACL; Schema: billing; Owner: app_owner
--

GRANT SELECT ON TABLE billing.subscriptions TO app_reader;


--
-- Name: TABLE customers; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.customers TO app_reader;


--
-- Name: TABLE active_subscriptions; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.active_subscriptions TO app_reader;


--
-- Name: TABLE api_keys; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.api_keys TO app_reader;


--
-- Name: TABLE events; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.events TO app_reader;


--
-- Name: TABLE events_2024; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.events_2024 TO app_reader;


--
-- Name: TABLE events_2025; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.events_2025 TO app_reader;


--
-- Name: TABLE events_default; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.events_default TO app_reader;


--
-- Name: TABLE users; Type: ACL; Schema: public; Owner: app_owner
--

GRANT SELECT ON TABLE public.users TO app_reader;


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: billing; Owner: app_owner
--

ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA billing GRANT SELECT ON TABLES  TO app_reader;


--
-- PostgreSQL database dump complete
--

\unrestrict previewdbExampleAppSchema

