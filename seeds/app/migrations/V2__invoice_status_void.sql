-- Invoices issued by mistake are voided rather than deleted.
-- ALTER TYPE … ADD VALUE may run inside a transaction since PostgreSQL 12, but the new value
-- cannot be *used* until that transaction commits: nothing below (and nothing else in this
-- migration) may mention 'void'. Seeds, applied after all migrations, use it.
ALTER TYPE billing.invoice_status ADD VALUE IF NOT EXISTS 'void' AFTER 'paid';
COMMENT ON TYPE billing.invoice_status IS 'draft → open → paid | void | uncollectible';
