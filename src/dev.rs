//! `previewdb dev`: the embedded default — a private PostgreSQL as control store and target.

use crate::configuration::Config;
use crate::domain::token_digest;
use crate::embedded::{Durability, EmbeddedPostgres};
use anyhow::Context;
use rand::distributions::{Alphanumeric, DistString};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct DevOptions {
    pub listen: Option<String>,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
}

/// The running embedded cluster and the configuration that points at it.
pub struct DevSetup {
    pub postgres: EmbeddedPostgres,
    pub config: Config,
    pub token: String,
}

pub const DEV_TOKEN_ENV: &str = "PREVIEWDB_DEV_TOKEN";

/// Starts (initialising on first use) the private cluster under `data_dir` and derives a config.
pub async fn setup(opts: &DevOptions) -> anyhow::Result<DevSetup> {
    setup_with(opts, Durability::Fast).await
}

/// [`setup`] with a cluster of the given durability (benchmarks ask for `Full`).
pub async fn setup_with(opts: &DevOptions, durability: Durability) -> anyhow::Result<DevSetup> {
    let data_dir = opts.data_dir.clone();
    let postgres =
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start_with(&data_dir, durability))
            .await??;
    create_database_if_missing(&postgres.admin_url("postgres"), "previewdb").await?;
    let key = persistent_key(&postgres.data_dir().join("encryption.key"))?;
    let token = dev_token();
    let mut config = Config::parse(&base_config(&postgres, &key, &token), Path::new("."))?;
    if let Some(examples) = example_blueprints() {
        config.merge_file(&examples)?;
    }
    if let Some(extra) = &opts.config {
        config.merge_file(extra)?;
    }
    if let Some(listen) = &opts.listen {
        config.listen = listen
            .parse()
            .with_context(|| format!("--listen {listen:?}"))?;
    }
    Ok(DevSetup {
        postgres,
        config,
        token,
    })
}

/// `$PREVIEWDB_DEV_TOKEN` when set (so scripts know it in advance), else a fresh random one.
fn dev_token() -> String {
    std::env::var(DEV_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            format!(
                "pdb_dev_{}",
                Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32)
            )
        })
}

/// The configuration of `previewdb dev` before blueprints and `--config` are merged in: the
/// cluster as control store and as the one target, and `token` with every scope.
fn base_config(postgres: &EmbeddedPostgres, key: &str, token: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:8080"
control_url = {control:?}
encryption_key = "{key}"
default_target = "local"

[[tokens]]
name = "dev"
sha256 = "{digest}"
scopes = ["environments:read", "environments:write", "environments:delete", "admin"]

[targets.local]
kind = "postgres"
admin_url = {admin:?}
public_host = "127.0.0.1"
public_port = {port}
max_environments = 200
"#,
        control = postgres.admin_url("previewdb"),
        admin = postgres.admin_url("postgres"),
        digest = hex::encode(token_digest(token)),
        port = postgres.port(),
    )
}

/// The example blueprints shipped in `seeds/`: next to the working directory, else in the
/// source tree previewdb was built from.
fn example_blueprints() -> Option<PathBuf> {
    [
        PathBuf::from("seeds"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"),
    ]
    .into_iter()
    .map(|d| d.join("previewdb.dev.toml"))
    .find(|p| p.is_file())
}

pub async fn create_database_if_missing(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let client = crate::pgconn::PgConnector::parse(admin_url)?
        .connect()
        .await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let sql = format!(
            "CREATE DATABASE {}",
            postgres_protocol::escape::escape_identifier(name)
        );
        client.batch_execute(&sql).await?;
    }
    Ok(())
}

/// The key sealing stored passwords must survive restarts, or stored passwords become unreadable.
fn persistent_key(path: &Path) -> anyhow::Result<String> {
    if let Ok(k) = std::fs::read_to_string(path) {
        return Ok(k.trim().to_owned());
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    let hex = hex::encode(key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(hex.as_bytes())?;
    Ok(hex)
}
