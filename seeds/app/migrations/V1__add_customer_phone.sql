-- Customers can leave a phone number for billing questions (E.164, e.g. +14155550123).
ALTER TABLE customers ADD COLUMN phone text;
ALTER TABLE customers ADD CONSTRAINT customers_phone_e164 CHECK (phone ~ '^\+[1-9][0-9]{6,14}$');
COMMENT ON COLUMN customers.phone IS 'E.164 phone number for billing questions; optional.';
