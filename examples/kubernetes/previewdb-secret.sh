#!/usr/bin/env bash
# Writes a preview's database credentials into its namespace as a Secret (DATABASE_URL, PGHOST,
# PGPORT, PGDATABASE, PGUSER, PGPASSWORD): `previewdb env create … -o k8s-secret | kubectl apply`.
# Run by the pre-install / PreSync hook Job of preview-db-hook.yaml, in the image that
# Containerfile.hook builds (previewdb + kubectl + bash).
#
# Environment: PREVIEWDB_URL, PREVIEWDB_TOKEN, PREVIEWDB_KEY (e.g. acme/web#42); optional
# PREVIEWDB_BLUEPRINT, PREVIEWDB_TTL, PREVIEWDB_SECRET_NAME (default preview-db),
# PREVIEWDB_TIMEOUT (default 600s), POD_NAMESPACE (the Secret's namespace; the Job sets it from
# the downward API). Exits with previewdb's exit code when previewdb fails (see README), else
# with kubectl's.
set -euo pipefail

: "${PREVIEWDB_KEY:?set PREVIEWDB_KEY to the key of the environment, e.g. acme/web#42}"
args=(env create "$PREVIEWDB_KEY" -o k8s-secret
  --secret-name "${PREVIEWDB_SECRET_NAME:-preview-db}" --timeout "${PREVIEWDB_TIMEOUT:-600s}")
if [ -n "${POD_NAMESPACE:-}" ]; then args+=(--namespace "$POD_NAMESPACE"); fi
if [ -n "${PREVIEWDB_BLUEPRINT:-}" ]; then args+=(--blueprint "$PREVIEWDB_BLUEPRINT"); fi
if [ -n "${PREVIEWDB_TTL:-}" ]; then args+=(--ttl "$PREVIEWDB_TTL"); fi

# Server-side apply: no last-applied-configuration annotation repeating the password.
set +e
previewdb "${args[@]}" | kubectl apply --server-side --field-manager=previewdb --force-conflicts -f -
status=("${PIPESTATUS[@]}")
set -e
if [ "${status[0]}" -ne 0 ]; then
  echo "previewdb env create failed (exit ${status[0]}); no Secret written" >&2
  exit "${status[0]}"
fi
exit "${status[1]}"
