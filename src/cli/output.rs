//! What `previewdb env` prints once the API has answered: the connection URI, `KEY=value`
//! lines, the JSON record, GitHub Actions outputs and masks, or a Kubernetes Secret — and the
//! writes to stdout and stderr themselves. A closed pipe (`… | head -c1`) is the end of the
//! output rather than an error: Rust ignores SIGPIPE, so writes fail with `BrokenPipe`.

use super::{exit, EnvArgs, EnvCommand, Failure, Output};
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

/// The text `args` asks for, given the answer `body`. `-o github` appends to `github_output`
/// (already checked to be set) and returns the masks.
pub(super) fn render(
    args: &EnvArgs,
    body: Value,
    created: bool,
    github_output: Option<&OsStr>,
) -> Result<String, Failure> {
    Ok(match (&args.command, args.output) {
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
            append_github_output(Path::new(path), &body, created)?;
            github_masks(&body)
        }
    })
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
