#!/usr/bin/env bash
# Checks the example blueprint end to end with psql, the way previewdb builds a template:
# extensions, schema.sql, migrations in version order, seeds in name order. Then prints row
# counts, requires >= 10,000 rows in all and refreshes the materialized view.
#
#   seeds/app/source/verify.sh            # PG_BIN=/usr/lib/postgresql/15/bin to pick a version
#
# Roles app_owner / app_reader are created first so that psql can run the dump's OWNER TO and
# GRANT lines with ON_ERROR_STOP; previewdb itself copes with them being absent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
app="$(cd "$here/.." && pwd)"
. "$here/cluster.sh"

EXTENSIONS=(pgcrypto)
MIN_ROWS=10000

start_cluster
psql_ -c "CREATE ROLE app_owner NOLOGIN" -c "CREATE ROLE app_reader NOLOGIN" -c "CREATE DATABASE verify"
export PGDATABASE=verify

for ext in "${EXTENSIONS[@]}"; do
    psql_ -c "CREATE EXTENSION IF NOT EXISTS \"$ext\""
done

echo "== schema.sql"
psql_ -f "$app/schema.sql" >/dev/null

echo "== migrations"
# refinery: V{n}__{name}.sql, applied by integer version, each in its own transaction.
mapfile -t migrations < <(
    for f in "$app"/migrations/V*__*.sql; do
        b="$(basename "$f")"; v="${b#V}"; v="${v%%__*}"
        [[ "$v" =~ ^[0-9]+$ ]] || { echo "bad migration name: $b" >&2; exit 1; }
        printf '%d\t%s\n' "$v" "$f"
    done | sort -n -k1,1 | cut -f2-
)
for f in "${migrations[@]}"; do
    echo "   $(basename "$f")"
    psql_ -1 -f "$f"
done

echo "== seeds"
mapfile -t seeds < <(find "$app/data" -maxdepth 1 -type f \( -name '*.csv' -o -name '*.sql' \) -printf '%f\n' | LC_ALL=C sort)
for name in "${seeds[@]}"; do
    f="$app/data/$name"
    case "$name" in
        *.csv)
            table="${name%.csv}"
            if [[ "$table" =~ ^[0-9]+[_-](.*)$ ]]; then table="${BASH_REMATCH[1]}"; fi
            echo "   $name -> $table"
            psql_ -1 -c "\\copy $table FROM '$f' WITH (FORMAT csv, HEADER true)"
            ;;
        *.sql)
            echo "   $name"
            psql_ -1 -f "$f" >/dev/null
            ;;
    esac
done

echo "== row counts"
psql_ -c "
CREATE TEMP TABLE counts AS
SELECT n.nspname || '.' || c.relname AS table_name,
       (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint AS rows
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname IN ('public', 'billing');
SELECT table_name, rows FROM counts ORDER BY table_name;
SELECT sum(rows) AS total_rows FROM counts;
DO \$\$
DECLARE total bigint;
BEGIN
    SELECT sum(rows) INTO total FROM counts;
    IF total < $MIN_ROWS THEN
        RAISE EXCEPTION 'only % rows, expected at least $MIN_ROWS', total;
    END IF;
END
\$\$;"

echo "== partitions of public.events"
psql_ -c "SELECT tableoid::regclass AS partition, count(*) FROM public.events GROUP BY 1 ORDER BY 1"

echo "== materialized view"
psql_ -c "REFRESH MATERIALIZED VIEW CONCURRENTLY billing.monthly_revenue" \
      -c "SELECT count(*) AS months, sum(revenue) AS revenue FROM billing.monthly_revenue"

echo "== sanity"
psql_ -At -c "SELECT 'next invoice number: ' || (SELECT column_default FROM information_schema.columns WHERE table_schema = 'billing' AND table_name = 'invoices' AND column_name = 'number')" \
      -c "INSERT INTO billing.invoices (customer_id) VALUES (1) RETURNING 'new invoice: id ' || id || ', ' || number" \
      -c "INSERT INTO public.customers (name, billing_email) VALUES ('New Co', 'new@new.example') RETURNING 'new customer id ' || id" \
      -c "SELECT 'void invoices: ' || count(*) FROM billing.invoices WHERE status = 'void'" \
      -c "SELECT 'audit rows: ' || count(*) FROM public.audit_log" \
      -c "SELECT 'customer 4 notes: ' || notes FROM public.customers WHERE id = 4"
echo "OK: blueprint app verified"
