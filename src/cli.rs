//! `previewdb env …`: a small client of the REST API for pipelines, printing a connection
//! string, `KEY=value` lines for `$GITHUB_ENV`, or the JSON record.

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

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
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// The connection URI.
    Uri,
    /// DATABASE_URL, PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD and PREVIEWDB_ENV_ID lines.
    Env,
    /// The environment record.
    Json,
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
    },
    /// Show an environment (by id or key); the password only with --reveal.
    Get {
        reference: String,
        #[arg(long)]
        reveal: bool,
    },
    /// List live environments.
    List {
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
    /// Tear an environment down.
    Delete { reference: String },
    /// Push an environment's expiry out.
    Extend {
        reference: String,
        #[arg(long)]
        ttl: String,
    },
    /// Return an environment to its blueprint, keeping its credentials.
    Reset { reference: String },
}

pub async fn run(args: EnvArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .clone()
        .context("no token: pass --token or set PREVIEWDB_TOKEN")?;
    let base = args.url.trim_end_matches('/');
    let req = request(&reqwest::Client::new(), base, &args.command)?;
    let body = send(req, &token, base).await?;
    print(&args.command, args.output, &body);
    Ok(())
}

/// The API call that carries out `command`, not yet authenticated.
fn request(
    http: &reqwest::Client,
    base: &str,
    command: &EnvCommand,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let env_url = |r: &str| {
        format!(
            "{base}/v1/environments/{}",
            percent_encoding::utf8_percent_encode(r, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    Ok(match command {
        EnvCommand::Create {
            key,
            blueprint,
            target,
            isolation,
            ttl,
            labels,
        } => {
            let body = json!({ "key": key, "blueprint": blueprint, "target": target, "isolation": isolation,
                               "ttl": ttl, "labels": label_map(labels)? });
            http.post(format!("{base}/v1/environments"))
                .json(&without_nulls(&body))
        }
        EnvCommand::Get { reference, reveal } => {
            http.get(env_url(reference)).query(&[("reveal", reveal)])
        }
        EnvCommand::List { label, state } => {
            let mut q = vec![];
            if let Some(l) = label {
                q.push(("label", l.clone()))
            }
            if let Some(s) = state {
                q.push(("state", s.clone()))
            }
            http.get(format!("{base}/v1/environments")).query(&q)
        }
        EnvCommand::Delete { reference } => http.delete(env_url(reference)),
        EnvCommand::Extend { reference, ttl } => http
            .post(format!("{}/extend", env_url(reference)))
            .json(&json!({ "ttl": ttl })),
        EnvCommand::Reset { reference } => http.post(format!("{}/reset", env_url(reference))),
    })
}

/// `--label name=value` flags as the JSON object the API takes.
fn label_map(labels: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut map = serde_json::Map::new();
    for l in labels {
        let (k, v) = l.split_once('=').context("--label wants name=value")?;
        map.insert(k.into(), v.into());
    }
    Ok(map)
}

/// Options not given are left out, so the server applies its defaults.
fn without_nulls(body: &Value) -> serde_json::Map<String, Value> {
    body.as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Sends `req` with the token; the JSON answer, or the API's problem as an error.
async fn send(req: reqwest::RequestBuilder, token: &str, base: &str) -> anyhow::Result<Value> {
    let res = req
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("calling {base}"))?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = body.get("detail").and_then(Value::as_str).unwrap_or("");
        let code = body.get("code").and_then(Value::as_str).unwrap_or("");
        bail!("{status} {code}: {detail}");
    }
    Ok(body)
}

fn print(command: &EnvCommand, output: Output, body: &Value) {
    let str_of = |v: &Value, k: &str| {
        v.get(k)
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .unwrap_or_default()
    };
    match (output, command) {
        (Output::Json, _) | (_, EnvCommand::List { .. }) => {
            println!("{}", serde_json::to_string_pretty(body).unwrap_or_default())
        }
        (Output::Uri, _) => println!(
            "{}",
            body.pointer("/connection/uri")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        (Output::Env, _) => {
            let c = body.get("connection").cloned().unwrap_or(Value::Null);
            println!("DATABASE_URL={}", str_of(&c, "uri"));
            for (name, field) in [
                ("PGHOST", "host"),
                ("PGPORT", "port"),
                ("PGDATABASE", "database"),
                ("PGUSER", "user"),
                ("PGPASSWORD", "password"),
            ] {
                if c.get(field).is_some() {
                    println!("{name}={}", str_of(&c, field));
                }
            }
            println!("PREVIEWDB_ENV_ID={}", str_of(body, "id"));
        }
    }
}
