#!/usr/bin/env bash
# previewdb client for pipelines: the logic of the GitHub Action (action.yml) and of the GitLab CI
# example. Needs only bash, curl and jq. Usage: previewdb.sh create|get|delete, configured by
# environment variables (README, "GitHub Action"):
#
#   PREVIEWDB_URL, PREVIEWDB_TOKEN      service URL and API token (required)
#   PREVIEWDB_KEY                       environment key; default <repo>#<PR> on GitHub
#                                       (GITHUB_REPOSITORY, GITHUB_EVENT_PATH), <project>!<MR>
#                                       on GitLab (CI_PROJECT_PATH, CI_MERGE_REQUEST_IID)
#   PREVIEWDB_BLUEPRINT                 blueprint name; empty: the service's default; "-": an
#                                       empty database
#   PREVIEWDB_TARGET, PREVIEWDB_ISOLATION, PREVIEWDB_TTL
#   PREVIEWDB_LABELS                    name=value,name=value
#   PREVIEWDB_MIGRATIONS                directory whose *.sql files (name order) are sent along
#   PREVIEWDB_ON_CONFLICT               fail (default) | recreate: on 409 settings_conflict,
#                                       delete the environment and create it anew
#   PREVIEWDB_TIMEOUT                   bound of the whole call, retries included (default 120s)
#   PREVIEWDB_REVEAL                    get: ask for the password (default true)
#   PREVIEWDB_WAIT                      delete: answer only once the data is dropped (false)
#   PREVIEWDB_EXPORT_ENV                true: also write DATABASE_URL and PG* to $GITHUB_ENV
#   PREVIEWDB_OUTPUT_FILE               also write the outputs there as KEY=value lines
#                                       (PREVIEWDB_DB_URL=…; GitLab's artifacts:reports:dotenv)
#
# Outputs go to $GITHUB_OUTPUT when it is set. Exit codes: 0 ok, 1 other failure (401, 403, an
# unexpected answer), 2 usage, 3 not found (or deleted, for get), 4 conflict, 5 limit reached,
# 6 unavailable after retries or timed out, 7 invalid input, 8 blueprint, migration or
# provisioning failed.
set -euo pipefail

prog="previewdb"
in_github=false
if [ "${GITHUB_ACTIONS:-}" = "true" ] || [ -n "${GITHUB_OUTPUT:-}" ]; then
  in_github=true
fi

say() { printf '%s: %s\n' "$prog" "$*"; }

fail() {
  local code="$1"
  shift
  if $in_github; then
    # Workflow commands take one line: newlines are escaped as GitHub documents.
    local msg="$*"
    msg="${msg//'%'/'%25'}"
    msg="${msg//$'\r'/'%0D'}"
    msg="${msg//$'\n'/'%0A'}"
    printf '::error title=previewdb::%s\n' "$msg"
  fi
  printf '%s: %s\n' "$prog" "$*" >&2
  exit "$code"
}

need() {
  command -v "$1" >/dev/null 2>&1 || fail 2 "$1 is required on this runner"
}
need curl
need jq

command="${1:-${PREVIEWDB_COMMAND:-}}"
case "$command" in
  create | get | delete) ;;
  "") fail 2 "usage: previewdb.sh create|get|delete (or PREVIEWDB_COMMAND)" ;;
  *) fail 2 "command must be create, get or delete, not \"$command\"" ;;
esac

base="${PREVIEWDB_URL:-}"
base="${base%/}"
[ -n "$base" ] || fail 2 "url (PREVIEWDB_URL) is required"
[ -n "${PREVIEWDB_TOKEN:-}" ] || fail 2 "token (PREVIEWDB_TOKEN) is required"
case "${PREVIEWDB_TOKEN}" in
  *$'\n'* | *$'\r'*) fail 2 "token must be one line" ;;
esac
# Masked in case it did not come from a secret.
$in_github && printf '::add-mask::%s\n' "$PREVIEWDB_TOKEN"

truthy() {
  case "${1,,}" in
    true | 1 | yes | on) return 0 ;;
    false | 0 | no | off | "") return 1 ;;
    *) fail 2 "$2 must be true or false, not \"$1\"" ;;
  esac
}

# Settings checked before anything is asked of the service.
for flag in "PREVIEWDB_EXPORT_ENV:export-env:false" "PREVIEWDB_REVEAL:reveal:true" "PREVIEWDB_WAIT:wait:false"; do
  IFS=: read -r var input default <<<"$flag"
  truthy "${!var:-$default}" "$input" || true
done
case "${PREVIEWDB_ON_CONFLICT:-fail}" in
  fail | recreate) ;;
  *) fail 2 "on-conflict must be fail or recreate, not \"${PREVIEWDB_ON_CONFLICT}\"" ;;
esac

# --- the key ------------------------------------------------------------------------------------
key="${PREVIEWDB_KEY:-}"
if [ -z "$key" ]; then
  if [ -n "${GITHUB_REPOSITORY:-}" ] && [ -n "${GITHUB_EVENT_PATH:-}" ] && [ -f "$GITHUB_EVENT_PATH" ]; then
    pr="$(jq -r '.pull_request.number // .number
                 // (if .issue.pull_request then .issue.number else empty end) // empty' \
      "$GITHUB_EVENT_PATH")"
    [ -n "$pr" ] || fail 2 "key: this ${GITHUB_EVENT_NAME:-} event names no pull request; set the key input"
    key="${GITHUB_REPOSITORY}#${pr}"
  elif [ -n "${CI_PROJECT_PATH:-}" ] && [ -n "${CI_MERGE_REQUEST_IID:-}" ]; then
    key="${CI_PROJECT_PATH}!${CI_MERGE_REQUEST_IID}"
  else
    fail 2 "key (PREVIEWDB_KEY) is required outside a pull request or merge request pipeline"
  fi
fi
key_path="$(jq -rn --arg k "$key" '$k | @uri')"

# --- the time budget ----------------------------------------------------------------------------
timeout_spec="${PREVIEWDB_TIMEOUT:-120s}"
case "$timeout_spec" in
  *[!0-9smh]* | "" | [smh]*) fail 2 "timeout must be like 120, 90s, 10m or 1h, not \"$timeout_spec\"" ;;
esac
case "$timeout_spec" in
  *s) timeout_secs="${timeout_spec%s}" ;;
  *m) timeout_secs=$((${timeout_spec%m} * 60)) ;;
  *h) timeout_secs=$((${timeout_spec%h} * 3600)) ;;
  *) timeout_secs="$timeout_spec" ;;
esac
case "$timeout_secs" in
  *[!0-9]* | "") fail 2 "timeout must be like 120, 90s, 10m or 1h, not \"$timeout_spec\"" ;;
esac
[ "$timeout_secs" -gt 0 ] || fail 2 "timeout must be positive"
deadline=$(($(date +%s) + timeout_secs))
remaining() {
  local r=$((deadline - $(date +%s)))
  [ "$r" -gt 0 ] || r=0
  echo "$r"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The token reaches curl through a file, never its command line (visible in ps).
umask 077
printf 'Authorization: Bearer %s\n' "$PREVIEWDB_TOKEN" >"$tmp/auth"

# --- HTTP with retries --------------------------------------------------------------------------
# request METHOD PATH [BODY_FILE]: sets status; the answer is in $tmp/body. Retries 503 and
# connection failures with exponential backoff (1 s, 2 s, 4 s … at most 15 s) or the server's
# Retry-After, until the timeout.
status=""
request() {
  local method="$1" path="$2" body="${3:-}" attempt=0 wait rc left retry_after
  while :; do
    attempt=$((attempt + 1))
    left="$(remaining)"
    [ "$left" -gt 0 ] || fail 6 "$method $path: no answer within the timeout ($timeout_spec)"
    local args=(-sS -X "$method" -H @"$tmp/auth" -H 'Accept: application/json'
      -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}'
      --connect-timeout "$((left < 10 ? left : 10))" --max-time "$left")
    if [ -n "$body" ]; then
      args+=(-H 'Content-Type: application/json' --data-binary @"$body")
    fi
    : >"$tmp/headers"
    rc=0
    status="$(curl "${args[@]}" "$base$path" 2>"$tmp/curl-err")" || rc=$?
    retry_after=""
    if [ "$rc" -eq 0 ] && [ "$status" != "503" ]; then
      return 0
    fi
    if [ "$rc" -ne 0 ]; then
      case "$rc" in
        6 | 7 | 16 | 18 | 28 | 35 | 52 | 55 | 56) ;;
        *) fail 1 "$method $path: $(tr -d '\r' <"$tmp/curl-err")" ;;
      esac
      what="$(tr -d '\r' <"$tmp/curl-err" | tail -n 1)"
    else
      what="HTTP 503 $(problem_text)"
      retry_after="$(tr -d '\r' <"$tmp/headers" | sed -n 's/^[Rr]etry-[Aa]fter:[[:space:]]*//p' | tail -n 1)"
    fi
    wait=$((1 << (attempt - 1 < 4 ? attempt - 1 : 4)))
    [ "$wait" -le 15 ] || wait=15
    if [ -n "$retry_after" ]; then
      case "$retry_after" in
        *[!0-9]*)
          # An HTTP date.
          local at
          at="$(date -d "$retry_after" +%s 2>/dev/null || echo "")"
          [ -n "$at" ] && wait=$((at - $(date +%s)))
          ;;
        *) wait="$retry_after" ;;
      esac
      [ "$wait" -ge 1 ] || wait=1
    fi
    left="$(remaining)"
    if [ "$wait" -ge "$left" ]; then
      if [ "$rc" -eq 0 ]; then
        fail 6 "$method $path: $what; gave up after $attempt attempts (timeout $timeout_spec)"
      fi
      fail 6 "$method $path: cannot reach $base: $what; gave up after $attempt attempts (timeout $timeout_spec)"
    fi
    say "$method $path: $what; retrying in ${wait}s (attempt $attempt)" >&2
    sleep "$wait"
  done
}

# "code: detail" of a problem+json answer, or the start of whatever else came back.
problem_text() {
  jq -r 'if type == "object" and has("code") then "\(.code): \(.detail // .title // "")"
         else tostring end' "$tmp/body" 2>/dev/null || head -c 300 "$tmp/body"
}

# Fails with the answer's problem, exit code by class.
fail_answer() {
  local what="$1" code
  code="$(jq -r '.code? // empty' "$tmp/body" 2>/dev/null || true)"
  local exit_code=1
  case "$status:$code" in
    404:*) exit_code=3 ;;
    409:*) exit_code=4 ;;
    429:*) exit_code=5 ;;
    503:* | 504:*) exit_code=6 ;;
    *:blueprint_failed | *:migration_failed | 502:*) exit_code=8 ;;
    400:* | 413:* | 422:*) exit_code=7 ;;
  esac
  fail "$exit_code" "$what failed: HTTP $status $(problem_text)"
}

# --- outputs ------------------------------------------------------------------------------------
# set_output NAME VALUE: $GITHUB_OUTPUT (heredoc form, safe for any value) and the dotenv file.
set_output() {
  local name="$1" value="$2"
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    local delim
    delim="previewdb_$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s<<%s\n%s\n%s\n' "$name" "$delim" "$value" "$delim" >>"$GITHUB_OUTPUT"
  fi
  if [ -n "${PREVIEWDB_OUTPUT_FILE:-}" ]; then
    case "$value" in
      *$'\n'* | *$'\r'*) fail 1 "output $name holds a line break, which a dotenv file cannot" ;;
    esac
    printf 'PREVIEWDB_%s=%s\n' "${name^^}" "$value" >>"$PREVIEWDB_OUTPUT_FILE"
  fi
}

set_env() {
  local name="$1" value="$2" delim
  delim="previewdb_$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s<<%s\n%s\n%s\n' "$name" "$delim" "$value" "$delim" >>"$GITHUB_ENV"
}

field() { jq -r "($1) | if . == null then \"\" else tostring end" "$tmp/body"; }

# Masks the secrets of the answer in $tmp/body, before anything else prints or stores them.
mask_secrets() {
  local password uri encoded
  password="$(field .connection.password)"
  uri="$(field .connection.uri)"
  if $in_github; then
    if [ -n "$password" ]; then
      printf '::add-mask::%s\n' "$password"
      encoded="$(jq -rn --arg p "$password" '$p | @uri')"
      [ "$encoded" = "$password" ] || printf '::add-mask::%s\n' "$encoded"
    fi
    [ -n "$uri" ] && [ -n "$password" ] && printf '::add-mask::%s\n' "$uri"
  fi
  return 0
}

# The connection outputs of the environment in $tmp/body.
environment_outputs() {
  local created="$1"
  set_output db_url "$(field .connection.uri)"
  set_output db_host "$(field .connection.host)"
  set_output db_port "$(field .connection.port)"
  set_output db_name "$(field .connection.database)"
  set_output db_user "$(field .connection.user)"
  set_output db_password "$(field .connection.password)"
  set_output id "$(field .id)"
  set_output created "$created"
  set_output expires_at "$(field .expires_at)"
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    # Not in the dotenv file: GitLab takes few variables from one.
    set_output db_schema "$(field .connection.schema)"
    set_output key "$(field .key)"
    set_output state "$(field .state)"
  fi
  if truthy "${PREVIEWDB_EXPORT_ENV:-false}" "export-env"; then
    [ -n "${GITHUB_ENV:-}" ] || fail 2 "export-env needs GITHUB_ENV"
    set_env DATABASE_URL "$(field .connection.uri)"
    set_env PGHOST "$(field .connection.host)"
    set_env PGPORT "$(field .connection.port)"
    set_env PGDATABASE "$(field .connection.database)"
    set_env PGUSER "$(field .connection.user)"
    set_env PGPASSWORD "$(field .connection.password)"
  fi
}

# --- create -------------------------------------------------------------------------------------
create_body() {
  local labels_json='{}' migrations_json='[]'
  if [ -n "${PREVIEWDB_LABELS:-}" ]; then
    local pair name value
    IFS=',' read -r -a pairs <<<"$PREVIEWDB_LABELS"
    for pair in "${pairs[@]}"; do
      pair="${pair#"${pair%%[![:space:]]*}"}"
      pair="${pair%"${pair##*[![:space:]]}"}"
      [ -n "$pair" ] || continue
      case "$pair" in
        *=*) ;;
        *) fail 2 "labels: \"$pair\" is not name=value" ;;
      esac
      name="${pair%%=*}"
      value="${pair#*=}"
      [ -n "$name" ] || fail 2 "labels: \"$pair\" has no name"
      labels_json="$(jq -c --arg n "$name" --arg v "$value" '. + {($n): $v}' <<<"$labels_json")"
    done
  fi
  if [ -n "${PREVIEWDB_MIGRATIONS:-}" ]; then
    local dir="$PREVIEWDB_MIGRATIONS" f count=0
    [ -d "$dir" ] || fail 2 "migrations: $dir is not a directory"
    printf '[]' >"$tmp/migrations.json"
    # File name order, bytewise, whatever the runner's locale.
    while IFS= read -r -d '' f; do
      jq -c --arg name "${f##*/}" --rawfile sql "$f" '. + [{name: $name, sql: $sql}]' \
        "$tmp/migrations.json" >"$tmp/migrations.next"
      mv "$tmp/migrations.next" "$tmp/migrations.json"
      count=$((count + 1))
    done < <(find "$dir" -maxdepth 1 -type f -name '*.sql' -print0 | LC_ALL=C sort -z)
    if [ "$count" -eq 0 ]; then
      say "migrations: no .sql files in $dir; none sent" >&2
    else
      say "sending $count migration(s) from $dir" >&2
    fi
    migrations_json="$(cat "$tmp/migrations.json")"
  fi
  local blueprint="${PREVIEWDB_BLUEPRINT:-}"
  jq -n \
    --arg key "$key" \
    --arg blueprint "$blueprint" \
    --arg target "${PREVIEWDB_TARGET:-}" \
    --arg isolation "${PREVIEWDB_ISOLATION:-}" \
    --arg ttl "${PREVIEWDB_TTL:-}" \
    --arg timeout "$(remaining)s" \
    --argjson labels "$labels_json" \
    --slurpfile migrations <(printf '%s' "$migrations_json") \
    '{key: $key, timeout: $timeout}
     + (if $blueprint == "-" then {blueprint: ""} elif $blueprint != "" then {blueprint: $blueprint} else {} end)
     + (if $target != "" then {target: $target} else {} end)
     + (if $isolation != "" then {isolation: $isolation} else {} end)
     + (if $ttl != "" then {ttl: $ttl} else {} end)
     + (if ($labels | length) > 0 then {labels: $labels} else {} end)
     + (if ($migrations[0] | length) > 0 then {migrations: $migrations[0]} else {} end)' \
    >"$tmp/create.json"
}

do_create() {
  create_body
  request POST /v1/environments "$tmp/create.json"
  if [ "$status" = "409" ] && [ "$(jq -r '.code? // empty' "$tmp/body")" = "settings_conflict" ]; then
    case "${PREVIEWDB_ON_CONFLICT:-fail}" in
      fail) ;;
      recreate)
        say "$key exists with other settings; deleting it to create it anew" >&2
        request DELETE "/v1/environments/$key_path?wait=true"
        [ "$status" = "200" ] || [ "$status" = "404" ] || fail_answer "delete of $key"
        create_body
        request POST /v1/environments "$tmp/create.json"
        ;;
      *) fail 2 "on-conflict must be fail or recreate, not \"${PREVIEWDB_ON_CONFLICT}\"" ;;
    esac
  fi
  local created
  case "$status" in
    201) created=true ;;
    200) created=false ;;
    *) fail_answer "create of $key" ;;
  esac
  mask_secrets
  environment_outputs "$created"
  if $created; then
    say "created $(field .id) for $key: database $(field .connection.database) on $(field .connection.host):$(field .connection.port), expires $(field .expires_at)"
  else
    say "found $(field .id) for $key: database $(field .connection.database) on $(field .connection.host):$(field .connection.port), expires $(field .expires_at)"
  fi
}

do_get() {
  local query=""
  truthy "${PREVIEWDB_REVEAL:-true}" "reveal" && query="?reveal=true"
  request GET "/v1/environments/$key_path$query"
  [ "$status" = "200" ] || fail_answer "get of $key"
  local state
  state="$(field .state)"
  if [ "$state" = "deleted" ]; then
    fail 3 "get of $key: environment $(field .id) was deleted at $(field .deleted_at)"
  fi
  mask_secrets
  environment_outputs false
  say "$key is $(field .id), $state: database $(field .connection.database) on $(field .connection.host):$(field .connection.port), expires $(field .expires_at)"
}

do_delete() {
  local query=""
  truthy "${PREVIEWDB_WAIT:-false}" "wait" && query="?wait=true"
  request DELETE "/v1/environments/$key_path$query"
  case "$status" in
    200)
      set_output id "$(field .id)"
      set_output existed true
      set_output purged "$(field .purged)"
      say "deleted $(field .id) ($key); data purged: $(field .purged)"
      ;;
    404)
      set_output id ""
      set_output existed false
      set_output purged true
      say "no environment was ever created for $key: nothing to delete"
      ;;
    *) fail_answer "delete of $key" ;;
  esac
}

"do_$command"
