# Sourced by regenerate.sh and verify.sh: a throw-away PostgreSQL cluster in a temp directory.
# Provides: start_cluster, stop_cluster (run automatically on exit), PGHOST/PGPORT/PGUSER exported.

PG_BIN="${PG_BIN:-}"
if [ -z "$PG_BIN" ]; then
    if command -v initdb >/dev/null 2>&1; then
        PG_BIN="$(dirname "$(readlink -f "$(command -v initdb)")")"
    else
        PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    fi
fi
for tool in initdb pg_ctl psql pg_dump; do
    [ -x "$PG_BIN/$tool" ] || { echo "$tool not found in $PG_BIN (set PG_BIN)" >&2; exit 1; }
done

# PostgreSQL refuses to run as root: run the server-side tools as "postgres" then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_cluster() {
    PG_TMP="$(mktemp -d "${TMPDIR:-/tmp}/previewdb-seed.XXXXXX")"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_TMP"; fi
    trap stop_cluster EXIT
    as_pg "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$PG_TMP/initdb.log" 2>&1 ||
        { cat "$PG_TMP/initdb.log" >&2; exit 1; }
    PGPORT="$(free_port)"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 \
        -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $PG_TMP -c fsync=off" start >/dev/null ||
        { cat "$PG_TMP/server.log" >&2; exit 1; }
    export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
    unset PGPASSWORD PGSERVICE PGOPTIONS
}

stop_cluster() {
    if [ -n "${PG_TMP:-}" ] && [ -d "$PG_TMP" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_TMP"
    fi
}

psql_() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
