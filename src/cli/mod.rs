//! `previewdb env …`: a small client of the REST API for pipelines — its command line, and one
//! run of it: the call is built from the arguments (`request`), sent within `--timeout`, retries
//! included (`transport`), and the answer printed as a connection string, `KEY=value` lines, the
//! JSON record, GitHub Actions outputs or a Kubernetes Secret (`output`). Its exit code says what
//! went wrong (see [`exit`]), so that a pipeline can branch on it.

mod output;
mod request;
mod transport;

pub use output::{write_err, write_out};

use clap::{Args, Subcommand, ValueEnum};
use request::Call;
use serde_json::Value;
use std::path::PathBuf;
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
    let answer = transport::send(&http, base, &token, &call, deadline).await;
    let (status, body) = match answer {
        Err(f) if f.code == exit::NOT_FOUND => return missing(&args.command, f),
        other => other?,
    };
    refuse_deleted(&args.command, &body)?;
    let created =
        matches!(args.command, EnvCommand::Create { .. }) && status == reqwest::StatusCode::CREATED;
    let text = output::render(args, body, created, github_output.as_deref())?;
    write_out(&text)
}

/// A `not_found` answer: success for `delete --missing-ok`, else the failure itself.
fn missing(command: &EnvCommand, failure: Failure) -> Result<(), Failure> {
    if let EnvCommand::Delete {
        missing_ok: true,
        reference,
    } = command
    {
        write_err(&format!(
            "no environment {reference:?}: nothing to delete (--missing-ok)"
        ));
        return Ok(());
    }
    Err(failure)
}

/// `get` of a deleted environment exits 3 like a missing one, unless `--include-deleted`.
fn refuse_deleted(command: &EnvCommand, body: &Value) -> Result<(), Failure> {
    if let EnvCommand::Get {
        include_deleted: false,
        reference,
        ..
    } = command
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
    Ok(())
}
