//! What each `previewdb env` subcommand asks of the API: the [`Call`] (method, path, query and
//! body) built from the command line before anything is sent, so that a malformed `--label` or
//! an unreadable `--migrations` directory fails as a usage error without touching the network.

use super::{exit, EnvCommand, Failure, Output};
use serde_json::{json, Value};
use std::path::Path;
use tokio::time::Instant;

/// One API call: method, path below the base URL, query and body.
pub(super) struct Call {
    pub(super) method: reqwest::Method,
    pub(super) path: String,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) body: Option<Value>,
}

impl Call {
    fn new(method: reqwest::Method, path: String, body: Option<Value>) -> Call {
        Call {
            method,
            path,
            query: vec![],
            body,
        }
    }

    pub(super) fn of(
        command: &EnvCommand,
        output: Output,
        deadline: Instant,
    ) -> Result<Call, Failure> {
        use reqwest::Method;
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
                Call::create(body, deadline)
            }
            EnvCommand::Get {
                reference, reveal, ..
            } => {
                let mut c = Call::new(Method::GET, env_path(reference), None);
                if *reveal || output.carries_password() {
                    c.query.push(("reveal", "true".into()));
                }
                c
            }
            EnvCommand::List { label, state } => {
                let mut c = Call::new(Method::GET, "/v1/environments".into(), None);
                c.query.extend(label.clone().map(|l| ("label", l)));
                c.query.extend(state.clone().map(|s| ("state", s)));
                c
            }
            EnvCommand::Delete { reference, .. } => {
                Call::new(Method::DELETE, env_path(reference), None)
            }
            EnvCommand::Extend { reference, ttl } => {
                Call::action(reference, "extend", Some(json!({ "ttl": ttl })))
            }
            EnvCommand::Reset { reference } => Call::action(reference, "reset", None),
            EnvCommand::Rotate { reference } => Call::action(reference, "credentials", None),
            EnvCommand::Migrate {
                reference,
                migrations,
            } => Call::action(
                reference,
                "migrate",
                Some(json!({ "migrations": migration_files(migrations)? })),
            ),
        })
    }

    /// `POST /v1/environments` with the options given.
    fn create(mut body: Value, deadline: Instant) -> Call {
        // The server gives up (and rolls back) when this command would stop waiting.
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        if left >= 1 {
            body["timeout"] = format!("{left}s").into();
        }
        Call::new(
            reqwest::Method::POST,
            "/v1/environments".into(),
            Some(without_nulls(body)),
        )
    }

    /// `POST /v1/environments/{reference}/{action}`.
    fn action(reference: &str, action: &str, body: Option<Value>) -> Call {
        Call::new(
            reqwest::Method::POST,
            format!("{}/{action}", env_path(reference)),
            body,
        )
    }
}

/// The path of one environment, its id or key percent-encoded.
fn env_path(reference: &str) -> String {
    format!(
        "/v1/environments/{}",
        percent_encoding::utf8_percent_encode(reference, percent_encoding::NON_ALPHANUMERIC)
    )
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
