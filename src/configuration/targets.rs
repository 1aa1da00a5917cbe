//! `[targets.NAME]`: where environments live, each section resolved into the settings of its
//! kind with every default applied here, so that a backend reads plain values.

use super::duration;
use super::raw::{ByteSize, RawNeonTarget, RawPostgresTarget, RawTarget};
use crate::domain::PgIdent;
use crate::pgconn::{PgConnector, SslMode};
use anyhow::{anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum TargetConfig {
    Postgres(PostgresTargetConfig),
    Neon(Box<NeonTargetConfig>),
}

/// `Debug` is written by hand: `admin_url` may carry the admin's password.
#[derive(Clone)]
pub struct PostgresTargetConfig {
    pub admin_url: String,
    pub public_host: String,
    pub public_port: u16,
    /// `sslmode` written into handed-out connection strings, when set.
    pub public_sslmode: Option<String>,
    pub max_environments: u32,
    /// `CONNECTION LIMIT` of each environment role.
    pub connection_limit: i32,
    /// Revoke PUBLIC's CONNECT on the target's other databases at start-up, so that an
    /// environment's role can reach its own database only.
    pub revoke_public_connect: bool,
    /// Heavy work (cold clones, builds, caller migrations, resets) running at once.
    pub max_concurrent_provisions: usize,
    /// Requests that may wait for a place beyond those running; past it, 503 `queue_full`.
    pub max_queued: usize,
    /// Overrides the service-wide `provision_timeout` for this target.
    pub provision_timeout: Option<Duration>,
    /// Size above which an environment is locked (login refused); `None` for no quota.
    pub max_environment_bytes: Option<u64>,
    /// How templates are cloned (`CREATE DATABASE … STRATEGY`, PostgreSQL 15 and later).
    pub clone_strategy: CloneStrategy,
}

impl std::fmt::Debug for PostgresTargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTargetConfig")
            .field("admin_url", &"***")
            .field("public_host", &self.public_host)
            .field("public_port", &self.public_port)
            .field("public_sslmode", &self.public_sslmode)
            .field("max_environments", &self.max_environments)
            .field("connection_limit", &self.connection_limit)
            .field("revoke_public_connect", &self.revoke_public_connect)
            .field("max_concurrent_provisions", &self.max_concurrent_provisions)
            .field("max_queued", &self.max_queued)
            .field("provision_timeout", &self.provision_timeout)
            .field("max_environment_bytes", &self.max_environment_bytes)
            .field("clone_strategy", &self.clone_strategy)
            .finish()
    }
}

/// Resolved from its section, every default applied; it also deserializes on its own, resolved
/// the same way (the backend's tests build one from TOML). It holds no secret: the API key is
/// read by the backend, from `api_key_file` or `api_key_env`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawNeonTarget")]
pub struct NeonTargetConfig {
    pub api_url: String,
    pub api_key_env: String,
    pub api_key_file: Option<PathBuf>,
    pub project_id: String,
    pub parent_branch: String,
    pub database: String,
    pub autoscaling_limit_min_cu: Option<f64>,
    pub autoscaling_limit_max_cu: Option<f64>,
    pub suspend_timeout_seconds: Option<i64>,
    pub pooled: bool,
    /// Overall deadline for one Neon call including retries and operation waits (`deadline`,
    /// e.g. "3m").
    pub deadline: Duration,
    pub max_environments: u32,
    /// First retry delay (`retry_base_ms`), doubling up to 10 s.
    pub retry_base: Duration,
    /// How often a running Neon operation is polled (`poll_interval_ms`).
    pub poll_interval: Duration,
    /// Timeout of one HTTP request (`request_timeout_seconds`).
    pub request_timeout: Duration,
}

impl TryFrom<RawNeonTarget> for NeonTargetConfig {
    type Error = anyhow::Error;

    fn try_from(raw: RawNeonTarget) -> anyhow::Result<Self> {
        neon("target", raw)
    }
}

const NEON_API_URL: &str = "https://console.neon.tech/api/v2";
const NEON_KEY_ENV: &str = "NEON_API_KEY";
const NEON_DATABASE: &str = "neondb";
const NEON_MAX_ENVIRONMENTS: u32 = 25;
const NEON_DEADLINE: Duration = Duration::from_secs(300);
const NEON_RETRY_BASE: Duration = Duration::from_millis(250);
const NEON_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Branch creation can exceed 10 s.
const NEON_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `WAL_LOG` copies a template page by page through the write-ahead log: no checkpoint, but
/// WAL as big as the template. `FILE_COPY` copies its files: two checkpoints whatever the size,
/// then a plain file copy. `Auto` takes `FILE_COPY` for templates above the given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneStrategy {
    Auto { file_copy_above: u64 },
    WalLog,
    FileCopy,
}

impl CloneStrategy {
    /// The default threshold of `Auto` (see the README's "Performance").
    pub const FILE_COPY_ABOVE: u64 = 64 << 20;

    /// The `STRATEGY` for a template of `size` bytes.
    pub fn for_size(self, size: u64) -> &'static str {
        match self {
            Self::Auto { file_copy_above } if size > file_copy_above => "FILE_COPY",
            Self::Auto { .. } | Self::WalLog => "WAL_LOG",
            Self::FileCopy => "FILE_COPY",
        }
    }

    /// From `clone_strategy` and `file_copy_above`; `at` names the target's section.
    fn resolve(at: &str, name: Option<&str>, above: Option<ByteSize>) -> anyhow::Result<Self> {
        Ok(match (name, above) {
            (None | Some("auto"), above) => CloneStrategy::Auto {
                file_copy_above: above.map_or(CloneStrategy::FILE_COPY_ABOVE, ByteSize::bytes),
            },
            (Some(_), Some(_)) => {
                bail!("{at}.file_copy_above: only with clone_strategy = \"auto\"")
            }
            (Some("wal_log"), None) => CloneStrategy::WalLog,
            (Some("file_copy"), None) => CloneStrategy::FileCopy,
            (Some(other), None) => bail!(
                "{at}.clone_strategy: {other:?} is none of \"auto\", \"wal_log\", \"file_copy\""
            ),
        })
    }
}

/// The targets of a file, added to (or replacing by name) those of `base`.
pub(super) fn resolve(
    raw: BTreeMap<String, RawTarget>,
    base: Option<&BTreeMap<String, TargetConfig>>,
) -> anyhow::Result<BTreeMap<String, TargetConfig>> {
    let mut targets = base.cloned().unwrap_or_default();
    for (name, t) in raw {
        PgIdent::parse(&name).map_err(|_| {
            anyhow!("targets.{name}: target names must be lowercase letters, digits and _")
        })?;
        let at = format!("targets.{name}");
        let target = match t {
            RawTarget::Postgres(raw) => TargetConfig::Postgres(postgres(&at, *raw)?),
            RawTarget::Neon(raw) => TargetConfig::Neon(Box::new(neon(&at, *raw)?)),
        };
        targets.insert(name, target);
    }
    Ok(targets)
}

fn neon(at: &str, raw: RawNeonTarget) -> anyhow::Result<NeonTargetConfig> {
    if raw.project_id.is_empty() || raw.parent_branch.is_empty() {
        bail!("{at}: project_id and parent_branch are required");
    }
    Ok(NeonTargetConfig {
        api_url: raw.api_url.unwrap_or_else(|| NEON_API_URL.into()),
        api_key_env: raw.api_key_env.unwrap_or_else(|| NEON_KEY_ENV.into()),
        api_key_file: raw.api_key_file,
        project_id: raw.project_id,
        parent_branch: raw.parent_branch,
        database: raw.database.unwrap_or_else(|| NEON_DATABASE.into()),
        autoscaling_limit_min_cu: raw.autoscaling_limit_min_cu,
        autoscaling_limit_max_cu: raw.autoscaling_limit_max_cu,
        suspend_timeout_seconds: raw.suspend_timeout_seconds,
        pooled: raw.pooled.unwrap_or(false),
        deadline: raw
            .deadline
            .map(|v| duration(&format!("{at}.deadline"), &v))
            .transpose()?
            .unwrap_or(NEON_DEADLINE),
        max_environments: raw.max_environments.unwrap_or(NEON_MAX_ENVIRONMENTS),
        retry_base: raw
            .retry_base_ms
            .map_or(NEON_RETRY_BASE, Duration::from_millis),
        poll_interval: raw
            .poll_interval_ms
            .map_or(NEON_POLL_INTERVAL, Duration::from_millis),
        request_timeout: raw
            .request_timeout_seconds
            .map_or(NEON_REQUEST_TIMEOUT, Duration::from_secs),
    })
}

fn postgres(at: &str, raw: RawPostgresTarget) -> anyhow::Result<PostgresTargetConfig> {
    let admin_url = raw
        .admin_url_env
        .as_deref()
        .and_then(|v| std::env::var(v).ok())
        .or(raw.admin_url)
        .ok_or_else(|| anyhow!("{at}.admin_url: missing"))?;
    PgConnector::parse(&admin_url).map_err(|e| anyhow!("{at}.admin_url: {e:#}"))?;
    if let Some(m) = &raw.public_sslmode {
        SslMode::parse(m).map_err(|e| anyhow!("{at}.public_sslmode: {e}"))?;
    }
    Ok(PostgresTargetConfig {
        admin_url,
        public_host: raw.public_host,
        public_port: raw.public_port.unwrap_or(5432),
        public_sslmode: raw.public_sslmode,
        max_environments: raw.max_environments.unwrap_or(500),
        connection_limit: raw.connection_limit.unwrap_or(20),
        revoke_public_connect: raw.revoke_public_connect.unwrap_or(true),
        max_concurrent_provisions: match raw.max_concurrent_provisions {
            Some(0) => bail!("{at}.max_concurrent_provisions: must be at least 1"),
            n => n.unwrap_or(8),
        },
        max_queued: raw.max_queued.unwrap_or(1000),
        provision_timeout: raw
            .provision_timeout
            .map(|v| duration(&format!("{at}.provision_timeout"), &v))
            .transpose()?,
        max_environment_bytes: raw.max_environment_bytes.map(ByteSize::bytes),
        clone_strategy: CloneStrategy::resolve(
            at,
            raw.clone_strategy.as_deref(),
            raw.file_copy_above,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_tuning_defaults_are_applied_here() {
        let cfg: NeonTargetConfig =
            toml::from_str("project_id = \"p\"\nparent_branch = \"main\"\n").unwrap();
        assert_eq!(
            (
                cfg.deadline,
                cfg.request_timeout,
                cfg.retry_base,
                cfg.poll_interval
            ),
            (
                Duration::from_secs(300),
                Duration::from_secs(30),
                Duration::from_millis(250),
                Duration::from_millis(500)
            )
        );
        let cfg: NeonTargetConfig = toml::from_str(
            "project_id = \"p\"\nparent_branch = \"main\"\ndeadline = \"3m\"\nretry_base_ms = 10\n",
        )
        .unwrap();
        assert_eq!(
            (cfg.deadline, cfg.retry_base),
            (Duration::from_secs(180), Duration::from_millis(10))
        );
    }

    #[test]
    fn a_bad_neon_deadline_names_its_key() {
        let raw: BTreeMap<String, RawTarget> = toml::from_str(
            "[n]\nkind = \"neon\"\nproject_id = \"p\"\nparent_branch = \"main\"\ndeadline = \"soon\"\n",
        )
        .unwrap();
        let e = resolve(raw, None).unwrap_err().to_string();
        assert!(e.starts_with("targets.n.deadline: "), "{e}");
    }
}
