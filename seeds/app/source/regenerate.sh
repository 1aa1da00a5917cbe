#!/usr/bin/env bash
# Rebuilds ../schema.sql from schema-source.sql: loads the source as role app_owner into a
# scratch cluster and takes a plain `pg_dump --schema-only` (owners and privileges kept).
#
#   seeds/app/source/regenerate.sh            # PG_BIN=/usr/lib/postgresql/15/bin to pick a version
#
# The restrict key is fixed so that regenerating an unchanged source gives an identical file
# (the blueprint hash of previewdb depends on it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/cluster.sh"

start_cluster
psql_ -c "CREATE ROLE app_owner LOGIN" -c "CREATE ROLE app_reader NOLOGIN" \
      -c "CREATE DATABASE app OWNER app_owner"
psql_ -U app_owner -d app -f "$here/schema-source.sql"
"$PG_BIN/pg_dump" --schema-only --restrict-key=previewdbExampleAppSchema -d app -f "$here/../schema.sql.tmp"
mv "$here/../schema.sql.tmp" "$here/../schema.sql"
echo "wrote $(cd "$here/.." && pwd)/schema.sql ($(wc -l <"$here/../schema.sql") lines, $("$PG_BIN/pg_dump" --version))"
