//! The file's shape, as serde reads it: every key optional where a default exists, unknown keys
//! refused so that a typo fails loudly. Nothing here is validated beyond its TOML type, and
//! nothing derives `Debug`: these still hold admin URLs and keys in clear.

use crate::domain::MigrationFormat;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub control_url: Option<String>,
    pub default_target: Option<String>,
    pub default_blueprint: Option<String>,
    pub default_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub encryption_key: Option<String>,
    pub encryption_key_env: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub provision_timeout: Option<String>,
    pub upkeep_interval: Option<String>,
    pub orphan_grace: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_handshake_timeout: Option<String>,
    pub log_format: Option<String>,
    pub audit_retention: Option<String>,
    pub expiring_notice: Option<String>,
    pub webhook_retry_base: Option<String>,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    #[serde(default)]
    pub targets: BTreeMap<String, RawTarget>,
    /// Read table by table (see `blueprints`), so that an error names the blueprint.
    #[serde(default)]
    pub blueprints: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub name: String,
    pub sha256: String,
    pub scopes: Vec<String>,
    /// `false` withholds `environments:reveal` from a token with `environments:write`/`admin`.
    pub reveal: Option<bool>,
    /// Glob patterns of the keys the token may act on; every key when left out.
    pub keys: Option<Vec<String>>,
    /// Targets (or target groups) it may create on; any when left out.
    pub targets: Option<Vec<String>>,
    /// Blueprints it may create from; any when left out.
    pub blueprints: Option<Vec<String>>,
    /// At most this many live environments among its keys.
    pub max_live: Option<u32>,
}

/// A `[[webhooks]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub name: Option<String>,
    pub url: String,
    /// The environment variable holding the HMAC secret.
    pub secret_env: String,
    /// Event names; every event when left out.
    pub events: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawTarget {
    Postgres(Box<RawPostgresTarget>),
    Neon(Box<RawNeonTarget>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgresTarget {
    pub admin_url: Option<String>,
    pub admin_url_env: Option<String>,
    pub public_host: String,
    pub public_port: Option<u16>,
    pub public_sslmode: Option<String>,
    pub max_environments: Option<u32>,
    pub connection_limit: Option<i32>,
    pub revoke_public_connect: Option<bool>,
    pub max_concurrent_provisions: Option<usize>,
    pub max_queued: Option<usize>,
    pub provision_timeout: Option<String>,
    pub max_environment_bytes: Option<ByteSize>,
    pub clone_strategy: Option<String>,
    pub file_copy_above: Option<ByteSize>,
}

/// A `kind = "neon"` section; also what a standalone `NeonTargetConfig` is read from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNeonTarget {
    pub api_url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub project_id: String,
    pub parent_branch: String,
    pub database: Option<String>,
    pub autoscaling_limit_min_cu: Option<f64>,
    pub autoscaling_limit_max_cu: Option<f64>,
    pub suspend_timeout_seconds: Option<i64>,
    pub pooled: Option<bool>,
    pub deadline: Option<String>,
    pub max_environments: Option<u32>,
    pub retry_base_ms: Option<u64>,
    pub poll_interval_ms: Option<u64>,
    pub request_timeout_seconds: Option<u64>,
}

/// A `[blueprints.NAME]` table; paths are relative to the config file's directory.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBlueprint {
    pub schema: Option<PathBuf>,
    pub migrations: Option<PathBuf>,
    pub migrations_format: Option<MigrationFormat>,
    pub seeds: Option<PathBuf>,
    #[serde(default)]
    pub extensions: Vec<String>,
    pub pool_size: Option<u32>,
    pub max_environment_bytes: Option<ByteSize>,
}

/// A size in bytes: an integer, or a string such as `"500MB"` or `"2GiB"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub(super) enum ByteSize {
    Bytes(u64),
    Text(#[serde(deserialize_with = "de_byte_text")] u64),
}

impl ByteSize {
    pub(super) fn bytes(self) -> u64 {
        match self {
            ByteSize::Bytes(n) | ByteSize::Text(n) => n,
        }
    }
}

fn de_byte_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_bytes(&s).map_err(serde::de::Error::custom)
}

/// `"512"`, `"500MB"`, `"2GiB"`, `"1.5GB"` → bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 500MB or 2GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as u64)
}
