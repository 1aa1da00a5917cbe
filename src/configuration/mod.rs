//! previewdb.toml: parsed, validated and resolved once at start-up. Errors name the key.

use crate::domain::{ApiToken, PgIdent, Scope, TokenDigest, Ttl};
use crate::pgconn::{PgConnector, SslMode};
use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Raw file layout. Unknown keys are refused so that a typo fails loudly.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    control_url: Option<String>,
    default_target: Option<String>,
    default_blueprint: Option<String>,
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    encryption_key: Option<String>,
    encryption_key_env: Option<String>,
    max_body_bytes: Option<usize>,
    provision_timeout: Option<String>,
    upkeep_interval: Option<String>,
    orphan_grace: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    blueprints: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    /// `false` withholds `environments:reveal` from a token with `environments:write`/`admin`.
    reveal: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgresTarget {
    admin_url: Option<String>,
    admin_url_env: Option<String>,
    public_host: String,
    public_port: Option<u16>,
    public_sslmode: Option<String>,
    max_environments: Option<u32>,
    connection_limit: Option<i32>,
    revoke_public_connect: Option<bool>,
    max_concurrent_provisions: Option<usize>,
    max_queued: Option<usize>,
    provision_timeout: Option<String>,
    max_environment_bytes: Option<ByteSize>,
    clone_strategy: Option<String>,
    file_copy_above: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawTarget {
    Postgres(Box<RawPostgresTarget>),
    Neon(Box<NeonTargetConfig>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeonTargetConfig {
    #[serde(default = "default_neon_api_url")]
    pub api_url: String,
    #[serde(default = "default_neon_key_env")]
    pub api_key_env: String,
    pub api_key_file: Option<PathBuf>,
    pub project_id: String,
    pub parent_branch: String,
    #[serde(default = "default_neon_database")]
    pub database: String,
    pub autoscaling_limit_min_cu: Option<f64>,
    pub autoscaling_limit_max_cu: Option<f64>,
    pub suspend_timeout_seconds: Option<i64>,
    #[serde(default)]
    pub pooled: bool,
    /// Overall deadline for one Neon call including retries and operation waits, e.g. "3m".
    pub deadline: Option<String>,
    pub max_environments: Option<u32>,
    /// First retry delay in milliseconds (default 250), doubling up to 10 s.
    pub retry_base_ms: Option<u64>,
    /// How often a running Neon operation is polled, in milliseconds (default 500).
    pub poll_interval_ms: Option<u64>,
    /// Timeout of one HTTP request in seconds (default 30: branch creation can exceed 10 s).
    pub request_timeout_seconds: Option<u64>,
}

fn default_neon_api_url() -> String {
    "https://console.neon.tech/api/v2".into()
}
fn default_neon_key_env() -> String {
    "NEON_API_KEY".into()
}
fn default_neon_database() -> String {
    "neondb".into()
}

#[derive(Debug, Clone)]
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
}

/// A size in bytes: an integer, or a string such as `"500MB"` or `"2GiB"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(#[serde(deserialize_with = "de_byte_text")] u64),
}

impl ByteSize {
    pub fn bytes(self) -> u64 {
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
pub fn parse_bytes(s: &str) -> Result<u64, String> {
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

#[derive(Debug, Clone)]
pub enum TargetConfig {
    Postgres(PostgresTargetConfig),
    Neon(Box<NeonTargetConfig>),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub control_url: String,
    pub default_target: String,
    pub default_blueprint: Option<String>,
    pub default_ttl: Ttl,
    pub max_ttl: Ttl,
    /// 32-byte key that seals stored passwords.
    pub encryption_key: [u8; 32],
    pub max_body_bytes: usize,
    /// Longest a create, reset or migrate may take (a request's `timeout` may ask for less).
    pub provision_timeout: Duration,
    /// How often sweeping, reconciliation, garbage collection and the quota watchdog run.
    pub upkeep_interval: Duration,
    /// How long an object carrying previewdb's prefix that no record or pool accounts for is
    /// left alone before garbage collection drops it.
    pub orphan_grace: Duration,
    pub tokens: Vec<ApiToken>,
    pub targets: BTreeMap<String, TargetConfig>,
    /// Blueprint tables, resolved by the blueprint module; paths are relative to `base_dir`.
    pub blueprints: BTreeMap<String, toml::Value>,
    pub base_dir: PathBuf,
}

/// Environment variables that override the file.
pub const ENV_CONTROL_URL: &str = "PREVIEWDB_CONTROL_URL";
pub const ENV_ENCRYPTION_KEY: &str = "PREVIEWDB_ENCRYPTION_KEY";
pub const ENV_LISTEN: &str = "PREVIEWDB_LISTEN";

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &base).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses a config document; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> anyhow::Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        Self::from_raw(raw, base_dir, None)
    }

    /// Merges `extra` (a `--config` given to `previewdb dev`) into `self`: its targets, tokens and
    /// blueprints are added, and its scalar settings win.
    pub fn merge_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let raw: RawConfig = toml::from_str(&text)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("in config file {}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let extra = Self::from_raw(raw, &base, Some(self))
            .with_context(|| format!("in config file {}", path.display()))?;
        *self = extra;
        Ok(())
    }

    /// Resolves a parsed file; with `base`, on top of an existing configuration.
    fn from_raw(raw: RawConfig, base_dir: &Path, base: Option<&Config>) -> anyhow::Result<Self> {
        let listen = match std::env::var(ENV_LISTEN).ok().or(raw.listen) {
            Some(s) => s
                .parse()
                .map_err(|e| anyhow!("listen: {s:?} is not an address: {e}"))?,
            None => base
                .map(|b| b.listen)
                .unwrap_or(([0, 0, 0, 0], 8080).into()),
        };
        let control_url = std::env::var(ENV_CONTROL_URL)
            .ok()
            .or(raw.control_url)
            .or_else(|| base.map(|b| b.control_url.clone()))
            .ok_or_else(|| anyhow!("control_url: missing (or set {ENV_CONTROL_URL})"))?;
        PgConnector::parse(&control_url).map_err(|e| anyhow!("control_url: {e:#}"))?;
        let ttl = |key: &str,
                   v: Option<String>,
                   fallback: Option<Ttl>,
                   dflt: &str|
         -> anyhow::Result<Ttl> {
            match v {
                Some(s) => Ttl::parse(&s).map_err(|e| anyhow!("{key}: {}", e.reason)),
                None => Ok(fallback.unwrap_or_else(|| Ttl::parse(dflt).expect("valid default"))),
            }
        };
        let default_ttl = ttl(
            "default_ttl",
            raw.default_ttl,
            base.map(|b| b.default_ttl),
            "48h",
        )?;
        let max_ttl = ttl("max_ttl", raw.max_ttl, base.map(|b| b.max_ttl), "14d")?;
        if default_ttl > max_ttl {
            bail!("default_ttl: {default_ttl} is longer than max_ttl {max_ttl}");
        }

        let key_env = raw
            .encryption_key_env
            .unwrap_or_else(|| ENV_ENCRYPTION_KEY.to_string());
        let encryption_key = match std::env::var(&key_env).ok().or(raw.encryption_key) {
            Some(k) => parse_key(&k).with_context(|| format!("encryption_key (or ${key_env})"))?,
            None => match base {
                Some(b) => b.encryption_key,
                None => {
                    bail!("encryption_key: missing (set it, or ${key_env}, to 64 hex characters)")
                }
            },
        };

        let mut tokens = base.map(|b| b.tokens.clone()).unwrap_or_default();
        for (i, t) in raw.tokens.into_iter().enumerate() {
            let at = format!("tokens[{i}] ({})", t.name);
            let digest = TokenDigest::from_hex(&t.sha256).ok_or_else(|| {
                anyhow!("{at}.sha256: must be 64 hex characters (sha256 of the token)")
            })?;
            let scopes = t
                .scopes
                .iter()
                .map(|s| Scope::parse(s).ok_or_else(|| anyhow!("{at}.scopes: unknown scope {s:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let scopes =
                Scope::with_reveal_default(scopes, t.reveal).map_err(|e| anyhow!("{at}: {e}"))?;
            tokens.push(ApiToken {
                name: t.name,
                sha256: digest,
                scopes,
            });
        }

        let mut targets = base.map(|b| b.targets.clone()).unwrap_or_default();
        for (name, t) in raw.targets {
            PgIdent::parse(&name).map_err(|_| {
                anyhow!("targets.{name}: target names must be lowercase letters, digits and _")
            })?;
            let at = format!("targets.{name}");
            let target = match t {
                RawTarget::Postgres(raw) => {
                    let RawPostgresTarget {
                        admin_url,
                        admin_url_env,
                        public_host,
                        public_port,
                        public_sslmode,
                        max_environments,
                        connection_limit,
                        revoke_public_connect,
                        max_concurrent_provisions,
                        max_queued,
                        provision_timeout,
                        max_environment_bytes,
                        clone_strategy,
                        file_copy_above,
                    } = *raw;
                    let admin_url = admin_url_env
                        .as_deref()
                        .and_then(|v| std::env::var(v).ok())
                        .or(admin_url)
                        .ok_or_else(|| anyhow!("{at}.admin_url: missing"))?;
                    PgConnector::parse(&admin_url).map_err(|e| anyhow!("{at}.admin_url: {e:#}"))?;
                    if let Some(m) = &public_sslmode {
                        SslMode::parse(m).map_err(|e| anyhow!("{at}.public_sslmode: {e}"))?;
                    }
                    TargetConfig::Postgres(PostgresTargetConfig {
                        admin_url,
                        public_host,
                        public_port: public_port.unwrap_or(5432),
                        public_sslmode,
                        max_environments: max_environments.unwrap_or(500),
                        connection_limit: connection_limit.unwrap_or(20),
                        revoke_public_connect: revoke_public_connect.unwrap_or(true),
                        max_concurrent_provisions: match max_concurrent_provisions {
                            Some(0) => bail!("{at}.max_concurrent_provisions: must be at least 1"),
                            n => n.unwrap_or(8),
                        },
                        max_queued: max_queued.unwrap_or(1000),
                        provision_timeout: provision_timeout
                            .map(|v| duration(&format!("{at}.provision_timeout"), &v))
                            .transpose()?,
                        max_environment_bytes: max_environment_bytes.map(ByteSize::bytes),
                        clone_strategy: match (clone_strategy.as_deref(), file_copy_above) {
                            (None | Some("auto"), above) => CloneStrategy::Auto {
                                file_copy_above: above
                                    .map_or(CloneStrategy::FILE_COPY_ABOVE, ByteSize::bytes),
                            },
                            (Some(_), Some(_)) => bail!(
                                "{at}.file_copy_above: only with clone_strategy = \"auto\""
                            ),
                            (Some("wal_log"), None) => CloneStrategy::WalLog,
                            (Some("file_copy"), None) => CloneStrategy::FileCopy,
                            (Some(other), None) => bail!(
                                "{at}.clone_strategy: {other:?} is none of \"auto\", \"wal_log\", \"file_copy\""
                            ),
                        },
                    })
                }
                RawTarget::Neon(n) => {
                    if n.project_id.is_empty() || n.parent_branch.is_empty() {
                        bail!("{at}: project_id and parent_branch are required");
                    }
                    if let Some(d) = &n.deadline {
                        Ttl::parse(d).map_err(|e| anyhow!("{at}.deadline: {}", e.reason))?;
                    }
                    TargetConfig::Neon(n)
                }
            };
            targets.insert(name, target);
        }

        let default_target = raw
            .default_target
            .or_else(|| base.map(|b| b.default_target.clone()))
            .or_else(|| {
                (targets.len() == 1)
                    .then(|| targets.keys().next().cloned())
                    .flatten()
            })
            .ok_or_else(|| {
                anyhow!("default_target: missing (and there is not exactly one target)")
            })?;
        if !targets.contains_key(&default_target) {
            bail!("default_target: no target named {default_target:?} under [targets]");
        }

        let mut blueprints = base.map(|b| b.blueprints.clone()).unwrap_or_default();
        for (name, mut bp) in raw.blueprints {
            PgIdent::parse(&name).map_err(|_| {
                anyhow!(
                    "blueprints.{name}: blueprint names must be lowercase letters, digits and _"
                )
            })?;
            // Remember where relative paths of this table point.
            if let toml::Value::Table(t) = &mut bp {
                t.insert(
                    "__base_dir".into(),
                    toml::Value::String(base_dir.display().to_string()),
                );
            }
            blueprints.insert(name, bp);
        }
        let default_blueprint = raw
            .default_blueprint
            .or_else(|| base.and_then(|b| b.default_blueprint.clone()));
        if let Some(bp) = &default_blueprint {
            if !blueprints.contains_key(bp) {
                bail!("default_blueprint: no blueprint named {bp:?} under [blueprints]");
            }
        }

        let provision_timeout = match raw.provision_timeout {
            Some(v) => duration("provision_timeout", &v)?,
            None => base.map_or(Duration::from_secs(300), |b| b.provision_timeout),
        };
        let upkeep_interval = match raw.upkeep_interval {
            Some(v) => duration("upkeep_interval", &v)?,
            None => base.map_or(Duration::from_secs(30), |b| b.upkeep_interval),
        };
        let orphan_grace = match raw.orphan_grace {
            Some(v) => duration("orphan_grace", &v)?,
            None => base.map_or(Duration::from_secs(600), |b| b.orphan_grace),
        };

        Ok(Config {
            listen,
            provision_timeout,
            upkeep_interval,
            orphan_grace,
            control_url,
            default_target,
            default_blueprint,
            default_ttl,
            max_ttl,
            encryption_key,
            max_body_bytes: raw
                .max_body_bytes
                .or(base.map(|b| b.max_body_bytes))
                .unwrap_or(4 << 20),
            tokens,
            targets,
            blueprints,
            base_dir: base
                .map(|b| b.base_dir.clone())
                .unwrap_or_else(|| base_dir.to_path_buf()),
        })
    }
}

fn duration(key: &str, v: &str) -> anyhow::Result<Duration> {
    Ttl::parse(v)
        .map(Ttl::as_duration)
        .map_err(|e| anyhow!("{key}: {}", e.reason))
}

fn parse_key(s: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(s.trim())
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| anyhow!("must be 32 bytes written as 64 hex characters"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn parse(extra: &str) -> anyhow::Result<Config> {
        let text = format!(
            "control_url = \"postgres://u@h/db\"\nencryption_key = \"{KEY}\"\n{extra}\n\
             [targets.local]\nkind = \"postgres\"\nadmin_url = \"postgres://a@h/postgres\"\npublic_host = \"h\"\n"
        );
        Config::parse(&text, Path::new("."))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.default_target, "local");
        assert_eq!(c.default_ttl.to_string(), "2d");
        assert_eq!(c.max_ttl.to_string(), "14d");
    }

    #[test]
    fn clone_strategy_is_chosen_by_template_size_unless_fixed() {
        let strategy = |extra: &str| {
            let text = format!(
                "control_url = \"postgres://u@h/db\"\nencryption_key = \"{KEY}\"\n\
                 [targets.local]\nkind = \"postgres\"\nadmin_url = \"postgres://a@h/postgres\"\n\
                 public_host = \"h\"\n{extra}"
            );
            Config::parse(&text, Path::new(".")).map(|c| match &c.targets["local"] {
                TargetConfig::Postgres(pg) => pg.clone_strategy,
                _ => unreachable!(),
            })
        };
        let auto = strategy("").unwrap();
        assert_eq!(auto.for_size(8 << 20), "WAL_LOG");
        assert_eq!(
            auto.for_size(CloneStrategy::FILE_COPY_ABOVE + 1),
            "FILE_COPY"
        );
        let small = strategy("file_copy_above = \"1MB\"").unwrap();
        assert_eq!(small.for_size(8 << 20), "FILE_COPY");
        assert_eq!(
            strategy("clone_strategy = \"wal_log\"")
                .unwrap()
                .for_size(u64::MAX),
            "WAL_LOG"
        );
        assert_eq!(
            strategy("clone_strategy = \"file_copy\"")
                .unwrap()
                .for_size(1),
            "FILE_COPY"
        );
        for bad in [
            "clone_strategy = \"copy\"",
            "clone_strategy = \"wal_log\"\nfile_copy_above = 5",
        ] {
            let e = format!("{:#}", strategy(bad).unwrap_err());
            assert!(e.contains("targets.local."), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = format!("{:#}", parse("default_ttl = \"forever\"").unwrap_err());
        assert!(e.contains("default_ttl"), "{e}");
        let e = format!("{:#}", parse("lisen = \"x\"").unwrap_err());
        assert!(e.contains("lisen"), "{e}");
        let e = format!("{:#}", parse("default_target = \"nope\"").unwrap_err());
        assert!(e.contains("default_target"), "{e}");
        let e = format!(
            "{:#}",
            parse("[[tokens]]\nname = \"ci\"\nsha256 = \"zz\"\nscopes = []").unwrap_err()
        );
        assert!(e.contains("tokens[0] (ci).sha256"), "{e}");
        let e = format!(
            "{:#}",
            parse("[targets.tls]\nkind = \"postgres\"\nadmin_url = \"postgres://a:pw@h/p?sslmode=verify-full&sslrootcert=/missing.pem\"\npublic_host = \"h\"").unwrap_err()
        );
        assert!(
            e.contains("targets.tls.admin_url: sslrootcert /missing.pem"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse("[targets.tls]\nkind = \"postgres\"\nadmin_url = \"postgres://a@h/p\"\npublic_host = \"h\"\npublic_sslmode = \"always\"").unwrap_err()
        );
        assert!(
            e.contains("targets.tls.public_sslmode: sslmode \"always\""),
            "{e}"
        );
    }
}
