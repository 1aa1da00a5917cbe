//! `previewdb env …`: a small client of the REST API for pipelines. It prints a connection
//! string, `KEY=value` lines, the JSON record, GitHub Actions outputs or a Kubernetes Secret, and
//! its exit code says what went wrong (see [`exit`]), so that a pipeline can branch on it.
//!
//! The whole command, retries included, is bounded by `--timeout`; `503` answers and connection
//! errors are retried with exponential backoff, waiting what `Retry-After` asks when it says.
//! Output goes through [`write_out`], which treats a closed pipe (`… | head -c1`) as the end of
//! the output rather than an error: Rust ignores SIGPIPE, so writes fail with `BrokenPipe`.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Exit codes of `previewdb env`, as README's CLI section lists them.
pub mod exit {
    pub const OK: u8 = 0;
    /// Anything not below: a token refused (401/403), a server error (500), an unexpected answer.
    pub const OTHER: u8 = 1;
    /// The command line: unknown flag, missing token, `--label` without `=`, unreadable
    /// `--migrations` directory, `-o github` without `$GITHUB_OUTPUT` (clap's own errors are 2).
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const LIMIT: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
    pub const INVALID: u8 = 7;
    pub const FAILED: u8 = 8;
}

/// A failed command: its exit code and what to tell the user on stderr.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Args)]
pub struct EnvArgs {
    /// previewdb's base URL.
    #[arg(
        long,
        env = "PREVIEWDB_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API token.
    #[arg(long, env = "PREVIEWDB_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// What to print.
    #[arg(long, short, value_enum, default_value_t = Output::Uri, global = true)]
    output: Output,
    /// Longest the whole command may take, retries included: seconds, or 90s, 2m, 1h30m.
    #[arg(long, default_value = "120s", value_parser = parse_timeout, global = true)]
    timeout: Duration,
    /// Name of the Secret `-o k8s-secret` writes.
    #[arg(long, default_value = "previewdb", global = true)]
    secret_name: String,
    /// Namespace of the Secret `-o k8s-secret` writes (left out: kubectl's current one).
    #[arg(long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// The connection URI.
    Uri,
    /// DATABASE_URL, PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD and PREVIEWDB_ENV_ID lines.
    Env,
    /// The environment record (with `created` for create).
    Json,
    /// Appends db_url, db_host, db_port, db_name, db_user, db_password, id, created and
    /// expires_at to $GITHUB_OUTPUT; prints `::add-mask::` for the password and URI.
    Github,
    /// A v1 Secret manifest (JSON) with DATABASE_URL and the PG* keys, for `kubectl apply -f -`.
    K8sSecret,
}

impl Output {
    /// Outputs whose point is to carry the credentials: `get` asks for the password for them.
    fn carries_password(self) -> bool {
        matches!(self, Output::Github | Output::K8sSecret)
    }
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Create (or fetch, when it exists with the same settings) the environment of KEY.
    Create {
        key: String,
        #[arg(long)]
        blueprint: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        isolation: Option<String>,
        #[arg(long)]
        ttl: Option<String>,
        /// name=value, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A directory of the pull request's migrations: its files, sorted by name.
        #[arg(long)]
        migrations: Option<PathBuf>,
    },
    /// Show an environment (by id or key); the password only with --reveal (implied by
    /// `-o github` and `-o k8s-secret`). A deleted one exits 3 unless --include-deleted.
    Get {
        reference: String,
        #[arg(long)]
        reveal: bool,
        #[arg(long)]
        include_deleted: bool,
    },
    /// List live environments (JSON).
    List {
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
    /// Tear an environment down.
    Delete {
        reference: String,
        /// Succeed (exit 0, nothing printed) when no environment of that id or key ever existed.
        #[arg(long)]
        missing_ok: bool,
    },
    /// Push an environment's expiry out.
    Extend {
        reference: String,
        #[arg(long)]
        ttl: String,
    },
    /// Return an environment to its blueprint, keeping its credentials.
    Reset { reference: String },
    /// Give an environment a new password (the old one stops working at once).
    Rotate { reference: String },
    /// Apply more migrations to an environment, keeping its data.
    Migrate {
        reference: String,
        /// A directory of migrations: its files, sorted by name.
        #[arg(long)]
        migrations: PathBuf,
    },
}

/// `--timeout`: a number of seconds, or a duration such as `90s`, `2m`, `1h30m`.
fn parse_timeout(raw: &str) -> Result<Duration, String> {
    if let Ok(secs) = raw.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    crate::domain::Ttl::parse(raw)
        .map(crate::domain::Ttl::as_duration)
        .map_err(|e| e.reason)
}

/// Runs `previewdb env …`; what went wrong carries its exit code.
pub async fn run(args: EnvArgs) -> Result<(), Failure> {
    let deadline = Instant::now() + args.timeout;
    match tokio::time::timeout_at(deadline, execute(&args, deadline)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::new(
            exit::UNAVAILABLE,
            format!("no answer within --timeout {:?}", args.timeout),
        )),
    }
}

async fn execute(args: &EnvArgs, deadline: Instant) -> Result<(), Failure> {
    let token = args.token.clone().ok_or_else(|| {
        Failure::new(exit::USAGE, "no token: pass --token or set PREVIEWDB_TOKEN")
    })?;
    let github_output = match args.output {
        Output::Github => Some(std::env::var_os("GITHUB_OUTPUT").ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                "-o github needs $GITHUB_OUTPUT (a file to append to)",
            )
        })?),
        _ => None,
    };
    let base = args.url.trim_end_matches('/');
    let call = Call::of(&args.command, args.output, deadline)?;
    let http = reqwest::Client::new();
    let answer = send(&http, base, &token, &call, deadline).await;
    let (status, body) = match answer {
        Err(f) if f.code == exit::NOT_FOUND => {
            if let EnvCommand::Delete {
                missing_ok: true,
                reference,
            } = &args.command
            {
                write_err(&format!(
                    "no environment {reference:?}: nothing to delete (--missing-ok)"
                ));
                return Ok(());
            }
            return Err(f);
        }
        other => other?,
    };
    if let EnvCommand::Get {
        include_deleted: false,
        reference,
        ..
    } = &args.command
    {
        if body["state"] == "deleted" {
            return Err(Failure::new(
                exit::NOT_FOUND,
                format!(
                    "environment {reference:?} was deleted at {} (--include-deleted shows it)",
                    body["deleted_at"].as_str().unwrap_or("?")
                ),
            ));
        }
    }
    let created =
        matches!(args.command, EnvCommand::Create { .. }) && status == reqwest::StatusCode::CREATED;
    let text = match (&args.command, args.output) {
        (EnvCommand::List { .. }, _) => pretty(&body),
        (EnvCommand::Delete { .. }, Output::Json) => pretty(&body),
        (EnvCommand::Delete { .. }, _) => String::new(),
        (_, Output::Json) => {
            let mut body = body;
            if let (EnvCommand::Create { .. }, Some(map)) = (&args.command, body.as_object_mut()) {
                map.insert("created".into(), created.into());
            }
            pretty(&body)
        }
        (_, Output::Uri) => format!("{}\n", str_of(&body["connection"], "uri")),
        (_, Output::Env) => env_lines(&body),
        (_, Output::K8sSecret) => pretty(&secret(&body, &args.secret_name, &args.namespace)),
        (_, Output::Github) => {
            let path = github_output.expect("checked above");
            append_github_output(Path::new(&path), &body, created)?;
            github_masks(&body)
        }
    };
    write_out(&text)
}

/// One API call: method, path below the base URL, query and body.
struct Call {
    method: reqwest::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Call {
    fn of(command: &EnvCommand, output: Output, deadline: Instant) -> Result<Call, Failure> {
        use reqwest::Method;
        let env_path = |r: &str| {
            format!(
                "/v1/environments/{}",
                percent_encoding::utf8_percent_encode(r, percent_encoding::NON_ALPHANUMERIC)
            )
        };
        let call = |method, path, body| Call {
            method,
            path,
            query: vec![],
            body,
        };
        Ok(match command {
            EnvCommand::Create {
                key,
                blueprint,
                target,
                isolation,
                ttl,
                labels,
                migrations,
            } => {
                let mut body = json!({ "key": key, "blueprint": blueprint, "target": target,
                                       "isolation": isolation, "ttl": ttl,
                                       "labels": label_map(labels)? });
                if let Some(dir) = migrations {
                    body["migrations"] = migration_files(dir)?;
                }
                // The server gives up (and rolls back) when this command would stop waiting.
                let left = deadline.saturating_duration_since(Instant::now()).as_secs();
                if left >= 1 {
                    body["timeout"] = format!("{left}s").into();
                }
                call(
                    Method::POST,
                    "/v1/environments".into(),
                    Some(without_nulls(body)),
                )
            }
            EnvCommand::Get {
                reference, reveal, ..
            } => {
                let mut c = call(Method::GET, env_path(reference), None);
                if *reveal || output.carries_password() {
                    c.query.push(("reveal", "true".into()));
                }
                c
            }
            EnvCommand::List { label, state } => {
                let mut c = call(Method::GET, "/v1/environments".into(), None);
                if let Some(l) = label {
                    c.query.push(("label", l.clone()));
                }
                if let Some(s) = state {
                    c.query.push(("state", s.clone()));
                }
                c
            }
            EnvCommand::Delete { reference, .. } => call(Method::DELETE, env_path(reference), None),
            EnvCommand::Extend { reference, ttl } => call(
                Method::POST,
                format!("{}/extend", env_path(reference)),
                Some(json!({ "ttl": ttl })),
            ),
            EnvCommand::Reset { reference } => {
                call(Method::POST, format!("{}/reset", env_path(reference)), None)
            }
            EnvCommand::Rotate { reference } => call(
                Method::POST,
                format!("{}/credentials", env_path(reference)),
                None,
            ),
            EnvCommand::Migrate {
                reference,
                migrations,
            } => call(
                Method::POST,
                format!("{}/migrate", env_path(reference)),
                Some(json!({ "migrations": migration_files(migrations)? })),
            ),
        })
    }
}

/// `--label name=value` flags as the JSON object the API takes.
fn label_map(labels: &[String]) -> Result<Value, Failure> {
    let mut map = serde_json::Map::new();
    for l in labels {
        let (k, v) = l.split_once('=').ok_or_else(|| {
            Failure::new(exit::USAGE, format!("--label wants name=value, not {l:?}"))
        })?;
        map.insert(k.into(), v.into());
    }
    Ok(Value::Object(map))
}

/// The regular files of `dir` (dot files left out), sorted by name, as `[{name, sql}]`.
fn migration_files(dir: &Path) -> Result<Value, Failure> {
    let usage = |what: String| Failure::new(exit::USAGE, what);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| usage(format!("--migrations {}: {e}", dir.display())))?;
    let mut files = vec![];
    for entry in entries {
        let entry = entry.map_err(|e| usage(format!("--migrations {}: {e}", dir.display())))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let sql = std::fs::read_to_string(&path)
            .map_err(|e| usage(format!("--migrations: {}: {e}", path.display())))?;
        files.push((name, sql));
    }
    if files.is_empty() {
        return Err(usage(format!(
            "--migrations {}: no files in it",
            dir.display()
        )));
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|(name, sql)| json!({ "name": name, "sql": sql }))
        .collect())
}

/// Options not given are left out, so the server applies its defaults.
fn without_nulls(body: Value) -> Value {
    match body {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// Longest wait between two attempts when the server names none.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Sends `call` until it is answered other than `503` or the deadline comes: the status and JSON
/// of a success, or the failure with its exit code.
async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    call: &Call,
    deadline: Instant,
) -> Result<(reqwest::StatusCode, Value), Failure> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut req = http
            .request(call.method.clone(), format!("{base}{}", call.path))
            .bearer_auth(token)
            .timeout(left)
            .query(&call.query);
        if let Some(b) = &call.body {
            req = req.json(b);
        }
        let (failure, wait) = match req.send().await {
            Ok(res) if res.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                let retry_after = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let status = res.status();
                let body: Value = res.json().await.unwrap_or(Value::Null);
                (
                    problem(status, &body),
                    retry_after.unwrap_or(backoff.min(MAX_BACKOFF)),
                )
            }
            Ok(res) => {
                let status = res.status();
                let text = res.text().await.map_err(|e| {
                    Failure::new(
                        exit::UNAVAILABLE,
                        format!("reading the answer of {base}: {e}"),
                    )
                })?;
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if status.is_success() {
                    return Ok((status, body));
                }
                return Err(problem(status, &body));
            }
            Err(e) if e.is_timeout() => {
                return Err(Failure::new(
                    exit::UNAVAILABLE,
                    format!("{base}: no answer within --timeout"),
                ))
            }
            Err(e) if e.is_connect() => (
                Failure::new(
                    exit::UNAVAILABLE,
                    format!("cannot reach {base}: {}", chain(&e)),
                ),
                backoff.min(MAX_BACKOFF),
            ),
            Err(e) => {
                return Err(Failure::new(
                    exit::OTHER,
                    format!("calling {base}: {}", chain(&e)),
                ))
            }
        };
        if Instant::now() + wait >= deadline {
            return Err(Failure::new(
                failure.code,
                format!("{} (giving up: --timeout leaves no time to retry)", failure),
            ));
        }
        tokio::time::sleep(wait).await;
        backoff *= 2;
    }
}

/// The API's problem (RFC 9457) as a failure: the exit code comes from its `code`, else from
/// the status.
fn problem(status: reqwest::StatusCode, body: &Value) -> Failure {
    let code = body.get("code").and_then(Value::as_str).unwrap_or("");
    let detail = body
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
    let exit_code = match code {
        "not_found" => exit::NOT_FOUND,
        "settings_conflict" | "not_ready" | "locked" | "cancelled" => exit::CONFLICT,
        "limit_reached" => exit::LIMIT,
        "unavailable" | "queue_full" | "deadline_exceeded" => exit::UNAVAILABLE,
        "blueprint_failed" | "migration_failed" | "provisioning_failed" => exit::FAILED,
        "malformed_json"
        | "invalid_query"
        | "invalid_path"
        | "bad_request"
        | "invalid_body"
        | "invalid_input"
        | "body_too_large"
        | "unsupported_media_type" => exit::INVALID,
        _ => match status.as_u16() {
            404 => exit::NOT_FOUND,
            409 => exit::CONFLICT,
            429 => exit::LIMIT,
            503 | 504 => exit::UNAVAILABLE,
            400 | 413 | 415 | 422 => exit::INVALID,
            502 => exit::FAILED,
            _ => exit::OTHER,
        },
    };
    let code = if code.is_empty() {
        String::new()
    } else {
        format!(" {code}")
    };
    Failure::new(exit_code, format!("{status}{code}: {detail}"))
}

/// An error and its sources, as `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// A field as text: strings as they are, numbers as JSON writes them, absent as "".
fn str_of(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(x) => x.to_string(),
    }
}

/// The connection's variables: DATABASE_URL and those libpq reads, present fields only.
fn connection_vars(body: &Value) -> Vec<(&'static str, String)> {
    let c = &body["connection"];
    let mut vars = vec![("DATABASE_URL", str_of(c, "uri"))];
    for (name, field) in [
        ("PGHOST", "host"),
        ("PGPORT", "port"),
        ("PGDATABASE", "database"),
        ("PGUSER", "user"),
        ("PGPASSWORD", "password"),
    ] {
        if c.get(field).is_some_and(|v| !v.is_null()) {
            vars.push((name, str_of(c, field)));
        }
    }
    vars
}

fn env_lines(body: &Value) -> String {
    let mut out = String::new();
    for (k, v) in connection_vars(body) {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(&format!("PREVIEWDB_ENV_ID={}\n", str_of(body, "id")));
    out
}

/// A v1 Secret with the connection's variables as `stringData`.
fn secret(body: &Value, name: &str, namespace: &Option<String>) -> Value {
    let data: serde_json::Map<String, Value> = connection_vars(body)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    let mut metadata = json!({
        "name": name,
        "labels": { "app.kubernetes.io/managed-by": "previewdb" },
        "annotations": {
            "previewdb/environment-id": str_of(body, "id"),
            "previewdb/key": str_of(body, "key"),
            "previewdb/expires-at": str_of(body, "expires_at"),
        },
    });
    if let Some(ns) = namespace {
        metadata["namespace"] = ns.clone().into();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": data,
    })
}

/// GitHub's workflow commands that hide the secrets from the job's log, printed before anything
/// else can show them.
fn github_masks(body: &Value) -> String {
    let c = &body["connection"];
    ["password", "uri"]
        .iter()
        .map(|f| str_of(c, f))
        .filter(|v| !v.is_empty())
        .map(|v| format!("::add-mask::{v}\n"))
        .collect()
}

/// Appends the outputs to `$GITHUB_OUTPUT`: `name=value`, or GitHub's heredoc form for a
/// value with a line break.
fn append_github_output(path: &Path, body: &Value, created: bool) -> Result<(), Failure> {
    let c = &body["connection"];
    let outputs = [
        ("db_url", str_of(c, "uri")),
        ("db_host", str_of(c, "host")),
        ("db_port", str_of(c, "port")),
        ("db_name", str_of(c, "database")),
        ("db_user", str_of(c, "user")),
        ("db_password", str_of(c, "password")),
        ("id", str_of(body, "id")),
        ("created", created.to_string()),
        ("expires_at", str_of(body, "expires_at")),
    ];
    let mut text = String::new();
    for (k, v) in outputs {
        if v.contains('\n') || v.contains('\r') {
            let delim = format!("previewdb_{}", uuid::Uuid::new_v4().simple());
            text.push_str(&format!("{k}<<{delim}\n{v}\n{delim}\n"));
        } else {
            text.push_str(&format!("{k}={v}\n"));
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| {
            Failure::new(
                exit::OTHER,
                format!("$GITHUB_OUTPUT {}: {e}", path.display()),
            )
        })
}

/// Writes `text` to stdout. A closed pipe ends the output quietly (exit 0): the reader has
/// what it wanted.
pub fn write_out(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(
            exit::OTHER,
            format!("writing the output: {e}"),
        )),
    }
}

/// A line on stderr; nothing when stderr is closed too.
pub fn write_err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
