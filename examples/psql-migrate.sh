#!/usr/bin/env bash
# A psql-based migration runner, the "app's own tool" of the CI examples (copy it to
# scripts/psql-migrate.sh in your repository, or use sqlx-cli, refinery or Flyway instead, with
# the blueprint's matching migrations_format).
#
#   psql-migrate.sh DIR      (connects to $DATABASE_URL)
#
# Applies DIR's *.sql files in file name order (bytewise), each in one transaction with its
# record, skipping those already recorded. It keeps the history where previewdb's `plain`
# migrations_format does (previewdb_migrations: name, sha256 of the text), so a database cut from
# a plain blueprint runs only the files the blueprint (or the create's migrations) did not; a
# recorded file whose contents changed is an error.
set -euo pipefail
dir="${1:?usage: psql-migrate.sh DIR}"
: "${DATABASE_URL:?DATABASE_URL is not set}"
[ -d "$dir" ] || { echo "psql-migrate: $dir is not a directory" >&2; exit 2; }

run_psql() { PGOPTIONS="-c client_min_messages=warning" psql "$DATABASE_URL" --no-psqlrc --quiet -v ON_ERROR_STOP=1 "$@"; }

run_psql -c "CREATE TABLE IF NOT EXISTS previewdb_migrations (name text PRIMARY KEY, \
checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"

applied=0
while IFS= read -r -d '' file; do
  name="${file##*/}"
  sum="$(sha256sum "$file" | cut -d' ' -f1)"
  recorded="$(run_psql -At -v name="$name" -f - <<<"SELECT checksum FROM previewdb_migrations WHERE name = :'name'")"
  if [ -n "$recorded" ]; then
    [ "$recorded" = "$sum" ] || { echo "psql-migrate: $name was applied before with other contents" >&2; exit 1; }
    continue
  fi
  echo "psql-migrate: applying $name"
  { cat "$file"; printf '\n;\nINSERT INTO previewdb_migrations (name, checksum) VALUES (:'"'"'name'"'"', :'"'"'sum'"'"');\n'; } |
    run_psql --single-transaction -v name="$name" -v sum="$sum" -f -
  applied=$((applied + 1))
done < <(find "$dir" -maxdepth 1 -type f -name '*.sql' -print0 | LC_ALL=C sort -z)
echo "psql-migrate: $applied applied"
