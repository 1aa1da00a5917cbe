-- Runs last: moves every sequence past the explicit ids of the fixtures and fills the
-- materialized view.
SELECT setval(pg_get_serial_sequence('public.customers', 'id'), (SELECT max(id) FROM public.customers));
SELECT setval(pg_get_serial_sequence('public.users', 'id'), (SELECT max(id) FROM public.users));
SELECT setval(pg_get_serial_sequence('public.api_keys', 'id'), (SELECT max(id) FROM public.api_keys));
SELECT setval(pg_get_serial_sequence('public.events', 'id'), (SELECT max(id) FROM public.events));
SELECT setval(pg_get_serial_sequence('billing.plans', 'id'), (SELECT max(id) FROM billing.plans));
SELECT setval(pg_get_serial_sequence('billing.subscriptions', 'id'), (SELECT max(id) FROM billing.subscriptions));
SELECT setval(pg_get_serial_sequence('billing.invoices', 'id'), (SELECT max(id) FROM billing.invoices));
SELECT setval(pg_get_serial_sequence('billing.invoice_lines', 'id'), (SELECT max(id) FROM billing.invoice_lines));
SELECT setval(pg_get_serial_sequence('billing.payments', 'id'), (SELECT max(id) FROM billing.payments));
-- Invoice numbers look like INV-001234.
SELECT setval('billing.invoice_number_seq',
              (SELECT max(substr(number, 5)::bigint) FROM billing.invoices WHERE number ~ '^INV-[0-9]+$'));

REFRESH MATERIALIZED VIEW billing.monthly_revenue;
