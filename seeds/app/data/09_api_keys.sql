-- API keys: computed in SQL with pgcrypto (through public.hash_api_key), deterministic.
-- The raw key of key n is 'lk_live_' || md5('example-key-' || n); only its hash is stored.
INSERT INTO public.api_keys (id, customer_id, label, prefix, key_hash, created_at, revoked_at)
SELECT n,
       1 + (n * 7) % 500,
       CASE n % 3 WHEN 0 THEN 'CI pipeline' WHEN 1 THEN 'Zapier integration' ELSE 'Local dev – ' || n END,
       left('lk_live_' || md5('example-key-' || n), 12),
       public.hash_api_key('lk_live_' || md5('example-key-' || n)),
       timestamptz '2024-01-01 00:00:00+00' + n * interval '1 day 3 hours',
       CASE WHEN n % 10 = 0 THEN timestamptz '2025-06-01 00:00:00+00' + n * interval '1 hour' END
  FROM generate_series(1, 300) AS n;
