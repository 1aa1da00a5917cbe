//! previewdb.toml: parsed, validated and resolved once at start-up — defaults applied,
//! blueprints read, secrets held in types that never print. Errors name the key.
//!
//! `raw` is the file's shape; `targets`, `tokens` and `blueprints` resolve their sections;
//! this module holds [`Config`], the service-wide settings and their defaults.

mod blueprints;
mod raw;
mod targets;
mod tls;
mod tokens;
mod webhooks;

pub use targets::{CloneStrategy, NeonTargetConfig, PostgresTargetConfig, TargetConfig};
pub use tls::ListenerTls;

use crate::blueprint::Blueprint;
use crate::domain::{ApiToken, EncryptionKey, Secret, Ttl};
use crate::pgconn::PgConnector;
use anyhow::{anyhow, bail, Context};
use raw::RawConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults of the service-wide settings; those of a target or a blueprint sit in its module.
const DEFAULT_LISTEN: ([u8; 4], u16) = ([0, 0, 0, 0], 8080);
const DEFAULT_TTL: &str = "48h";
const DEFAULT_MAX_TTL: &str = "14d";
const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
const DEFAULT_PROVISION_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_UPKEEP_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(600);
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `tls_cert` and `tls_key`: the listener speaks HTTPS only.
    pub tls: Option<ListenerTls>,
    /// previewdb's own state; the URL may carry a password.
    pub control_url: Secret,
    pub default_target: String,
    pub default_blueprint: Option<String>,
    pub default_ttl: Ttl,
    pub max_ttl: Ttl,
    /// Seals stored passwords.
    pub encryption_key: EncryptionKey,
    pub max_body_bytes: usize,
    /// Longest a create, reset or migrate may take (a request's `timeout` may ask for less).
    pub provision_timeout: Duration,
    /// How often sweeping, reconciliation, garbage collection and the quota watchdog run.
    pub upkeep_interval: Duration,
    /// How long an object carrying previewdb's prefix that no record or pool accounts for is
    /// left alone before garbage collection drops it.
    pub orphan_grace: Duration,
    /// How the service writes its logs to stderr.
    pub log_format: LogFormat,
    pub tokens: Vec<ApiToken>,
    pub targets: BTreeMap<String, TargetConfig>,
    /// Read when the configuration was loaded, by name.
    pub blueprints: BTreeMap<String, Blueprint>,
    /// The audit trail and its webhooks.
    pub audit: crate::service::AuditSettings,
}

/// Environment variables that override the file.
pub const ENV_CONTROL_URL: &str = "PREVIEWDB_CONTROL_URL";
pub const ENV_ENCRYPTION_KEY: &str = "PREVIEWDB_ENCRYPTION_KEY";
pub const ENV_LISTEN: &str = "PREVIEWDB_LISTEN";
pub const ENV_LOG_FORMAT: &str = "PREVIEWDB_LOG_FORMAT";

/// `log_format`: human-readable lines, or one JSON object a line for a log collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    fn parse(key: &str, s: &str) -> anyhow::Result<Self> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => bail!("{key}: {s:?} is not a log format (text or json)"),
        }
    }

    /// What `PREVIEWDB_LOG_FORMAT` asks for, if it is set; `previewdb dev` starts logging
    /// before it reads any file, so this is all it goes by.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(ENV_LOG_FORMAT) {
            Ok(s) => Self::parse(ENV_LOG_FORMAT, &s).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => bail!("{ENV_LOG_FORMAT}: {e}"),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text, &dir_of(path))
            .with_context(|| format!("in config file {}", path.display()))
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
        let extra = Self::from_raw(raw, &dir_of(path), Some(self))
            .with_context(|| format!("in config file {}", path.display()))?;
        *self = extra;
        Ok(())
    }

    /// Resolves a parsed file; with `base`, on top of an existing configuration.
    fn from_raw(raw: RawConfig, base_dir: &Path, base: Option<&Config>) -> anyhow::Result<Self> {
        let listen = listen(raw.listen, base)?;
        let control_url = control_url(raw.control_url, base)?;
        let (default_ttl, max_ttl) = ttls(raw.default_ttl, raw.max_ttl, base)?;
        let encryption_key = encryption_key(raw.encryption_key, raw.encryption_key_env, base)?;
        let tokens = tokens::resolve(raw.tokens, base.map(|b| b.tokens.as_slice()))?;
        let targets = targets::resolve(raw.targets, base.map(|b| &b.targets))?;
        let default_target = default_target(raw.default_target, base, &targets)?;
        let base_dir = absolute(base_dir)?;
        let blueprints =
            blueprints::resolve(raw.blueprints, &base_dir, base.map(|b| &b.blueprints))?;
        let default_blueprint = default_blueprint(raw.default_blueprint, base, &blueprints)?;
        tokens::check_names(
            &tokens,
            |t| targets.contains_key(t),
            |b| blueprints.contains_key(b),
        )?;
        let tls = listener_tls(
            raw.tls_cert,
            raw.tls_key,
            raw.tls_handshake_timeout,
            &base_dir,
            base,
        )?;
        let log_format = log_format(raw.log_format, base)?;
        let audit = webhooks::resolve(
            webhooks::RawAudit {
                retention: raw.audit_retention,
                expiring_notice: raw.expiring_notice,
                retry_base: raw.webhook_retry_base,
                webhooks: raw.webhooks,
            },
            base,
        )?;
        Ok(Config {
            audit,
            listen,
            tls,
            log_format,
            provision_timeout: duration_or(
                "provision_timeout",
                raw.provision_timeout,
                base.map(|b| b.provision_timeout),
                DEFAULT_PROVISION_TIMEOUT,
            )?,
            upkeep_interval: duration_or(
                "upkeep_interval",
                raw.upkeep_interval,
                base.map(|b| b.upkeep_interval),
                DEFAULT_UPKEEP_INTERVAL,
            )?,
            orphan_grace: duration_or(
                "orphan_grace",
                raw.orphan_grace,
                base.map(|b| b.orphan_grace),
                DEFAULT_ORPHAN_GRACE,
            )?,
            control_url,
            default_target,
            default_blueprint,
            default_ttl,
            max_ttl,
            encryption_key,
            max_body_bytes: raw
                .max_body_bytes
                .or(base.map(|b| b.max_body_bytes))
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            tokens,
            targets,
            blueprints,
        })
    }
}

/// The directory relative paths of the file at `path` resolve against.
fn dir_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `dir` made absolute, so that what a blueprint names is found whatever the working directory
/// is later; the empty path is the working directory.
fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).with_context(|| format!("resolving the directory {}", dir.display()))
}

fn listen(raw: Option<String>, base: Option<&Config>) -> anyhow::Result<SocketAddr> {
    match std::env::var(ENV_LISTEN).ok().or(raw) {
        Some(s) => s
            .parse()
            .map_err(|e| anyhow!("listen: {s:?} is not an address: {e}")),
        None => Ok(base.map_or(DEFAULT_LISTEN.into(), |b| b.listen)),
    }
}

/// `tls_cert` and `tls_key` (both or neither, relative to the file's directory), read now;
/// without them, the TLS of the configuration underneath, if any.
fn listener_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    handshake_timeout: Option<String>,
    base_dir: &Path,
    base: Option<&Config>,
) -> anyhow::Result<Option<ListenerTls>> {
    let old = base.and_then(|b| b.tls.clone());
    let timeout = duration_or(
        "tls_handshake_timeout",
        handshake_timeout.clone(),
        old.as_ref().map(|t| t.handshake_timeout),
        DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    )?;
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(ListenerTls::load(
            &base_dir.join(cert),
            &base_dir.join(key),
            timeout,
        )?)),
        (Some(_), None) => bail!("tls_cert: given without tls_key (give both, or neither)"),
        (None, Some(_)) => bail!("tls_key: given without tls_cert (give both, or neither)"),
        (None, None) => match old {
            Some(mut tls) => {
                tls.handshake_timeout = timeout;
                Ok(Some(tls))
            }
            None if handshake_timeout.is_some() => {
                bail!("tls_handshake_timeout: given without tls_cert and tls_key")
            }
            None => Ok(None),
        },
    }
}

/// `$PREVIEWDB_LOG_FORMAT`, else the file's `log_format`, else the configuration's so far.
fn log_format(raw: Option<String>, base: Option<&Config>) -> anyhow::Result<LogFormat> {
    if let Some(format) = LogFormat::from_env()? {
        return Ok(format);
    }
    match raw {
        Some(s) => LogFormat::parse("log_format", &s),
        None => Ok(base.map(|b| b.log_format).unwrap_or_default()),
    }
}

fn control_url(raw: Option<String>, base: Option<&Config>) -> anyhow::Result<Secret> {
    let url = std::env::var(ENV_CONTROL_URL)
        .ok()
        .or(raw)
        .or_else(|| base.map(|b| b.control_url.expose().to_owned()))
        .ok_or_else(|| anyhow!("control_url: missing (or set {ENV_CONTROL_URL})"))?;
    PgConnector::parse(&url).map_err(|e| anyhow!("control_url: {e:#}"))?;
    Ok(Secret::new(url))
}

/// `default_ttl` and `max_ttl`, the first no longer than the second.
fn ttls(
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    base: Option<&Config>,
) -> anyhow::Result<(Ttl, Ttl)> {
    let ttl = |key: &str, raw: Option<String>, old: Option<Ttl>, default: &str| match raw {
        Some(s) => Ttl::parse(&s).map_err(|e| anyhow!("{key}: {}", e.reason)),
        None => Ok(old.unwrap_or_else(|| Ttl::parse(default).expect("valid default"))),
    };
    let default_ttl = ttl(
        "default_ttl",
        default_ttl,
        base.map(|b| b.default_ttl),
        DEFAULT_TTL,
    )?;
    let max_ttl = ttl("max_ttl", max_ttl, base.map(|b| b.max_ttl), DEFAULT_MAX_TTL)?;
    if default_ttl > max_ttl {
        bail!("default_ttl: {default_ttl} is longer than max_ttl {max_ttl}");
    }
    Ok((default_ttl, max_ttl))
}

fn encryption_key(
    raw: Option<String>,
    env: Option<String>,
    base: Option<&Config>,
) -> anyhow::Result<EncryptionKey> {
    let env = env.unwrap_or_else(|| ENV_ENCRYPTION_KEY.to_string());
    match std::env::var(&env).ok().or(raw) {
        Some(k) => EncryptionKey::from_hex(&k)
            .ok_or_else(|| anyhow!("must be 32 bytes written as 64 hex characters"))
            .with_context(|| format!("encryption_key (or ${env})")),
        None => match base {
            Some(b) => Ok(b.encryption_key.clone()),
            None => bail!("encryption_key: missing (set it, or ${env}, to 64 hex characters)"),
        },
    }
}

fn default_target(
    raw: Option<String>,
    base: Option<&Config>,
    targets: &BTreeMap<String, TargetConfig>,
) -> anyhow::Result<String> {
    let name = raw
        .or_else(|| base.map(|b| b.default_target.clone()))
        .or_else(|| {
            (targets.len() == 1)
                .then(|| targets.keys().next().cloned())
                .flatten()
        })
        .ok_or_else(|| anyhow!("default_target: missing (and there is not exactly one target)"))?;
    if !targets.contains_key(&name) {
        bail!("default_target: no target named {name:?} under [targets]");
    }
    Ok(name)
}

fn default_blueprint(
    raw: Option<String>,
    base: Option<&Config>,
    blueprints: &BTreeMap<String, Blueprint>,
) -> anyhow::Result<Option<String>> {
    let name = raw.or_else(|| base.and_then(|b| b.default_blueprint.clone()));
    if let Some(bp) = &name {
        if !blueprints.contains_key(bp) {
            bail!("default_blueprint: no blueprint named {bp:?} under [blueprints]");
        }
    }
    Ok(name)
}

/// The duration `raw` says, else the one already configured, else `default`.
fn duration_or(
    key: &str,
    raw: Option<String>,
    old: Option<Duration>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match raw {
        Some(v) => duration(key, &v),
        None => Ok(old.unwrap_or(default)),
    }
}

fn duration(key: &str, v: &str) -> anyhow::Result<Duration> {
    Ttl::parse(v)
        .map(Ttl::as_duration)
        .map_err(|e| anyhow!("{key}: {}", e.reason))
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
    fn debug_shows_no_secret() {
        let key = "ab".repeat(32);
        let digest = crate::domain::token_digest("the-token");
        let text = format!(
            "control_url = \"postgres://ctl:ctl-pw@h/db\"\nencryption_key = \"{key}\"\n\
             [[tokens]]\nname = \"ci\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n\
             [targets.local]\nkind = \"postgres\"\n\
             admin_url = \"postgres://admin:admin-pw@h/postgres\"\npublic_host = \"h\"\n",
            hex::encode(digest)
        );
        let shown = format!("{:?}", Config::parse(&text, Path::new(".")).unwrap());
        for secret in [
            "ctl-pw".to_owned(),
            "admin-pw".to_owned(),
            key,
            format!("{:?}", [0xabu8; 32]),
            hex::encode(digest),
            format!("{:?}", digest.as_ref()),
        ] {
            assert!(!shown.contains(&secret), "{secret} in {shown}");
        }
        assert!(shown.contains("public_host: \"h\""), "{shown}");
    }

    #[test]
    fn blueprints_are_read_with_the_config_against_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.sql"), "CREATE TABLE t (n int);").unwrap();
        let file = dir.path().join("extra.toml");
        std::fs::write(&file, "[blueprints.app]\nschema = \"schema.sql\"\n").unwrap();
        let mut c = parse("").unwrap();
        c.merge_file(&file).unwrap();
        let schema = c.blueprints["app"].schema.as_ref().unwrap();
        assert_eq!(schema.path, dir.path().join("schema.sql"));
        assert_eq!(c.blueprints["app"].pool_size, 2);
        std::fs::write(&file, "[blueprints.other]\nschema = \"gone.sql\"\n").unwrap();
        let e = format!("{:#}", c.merge_file(&file).unwrap_err());
        assert!(e.contains("blueprints.other.schema: reading"), "{e}");
        std::fs::write(&file, "[blueprints.more]\npool_size = 1\n").unwrap();
        c.merge_file(&file).unwrap();
        assert_eq!(c.blueprints.keys().collect::<Vec<_>>(), ["app", "more"]);
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        // No test of this binary sets PREVIEWDB_LOG_FORMAT; the override is tested on the
        // binary (tests/it/logs.rs).
        assert_eq!(parse("").unwrap().log_format, LogFormat::Text);
        assert_eq!(
            parse("log_format = \"json\"").unwrap().log_format,
            LogFormat::Json
        );
        assert_eq!(
            parse("log_format = \"text\"").unwrap().log_format,
            LogFormat::Text
        );
        let e = format!("{:#}", parse("log_format = \"JSON\"").unwrap_err());
        assert!(
            e.contains("log_format: \"JSON\" is not a log format"),
            "{e}"
        );
    }

    #[test]
    fn a_scoped_token_reads_its_reach_and_refusals_name_the_key() {
        let token = |extra: &str| {
            format!(
                "[[tokens]]\nname = \"web\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n{extra}",
                "ab".repeat(32)
            )
        };
        let c = parse(&token(
            "keys = [\"acme/web#*\"]\ntargets = [\"local\"]\nmax_live = 5",
        ))
        .unwrap();
        let reach = &c.tokens[0].reach;
        assert!(reach.covers_key("acme/web#1") && !reach.covers_key("acme/api#1"));
        assert_eq!(reach.targets.as_deref(), Some(&["local".to_owned()][..]));
        assert_eq!((reach.blueprints.as_ref(), reach.max_live), (None, Some(5)));
        for (extra, names) in [
            ("keys = []", "tokens[0] (web).keys: must not be empty"),
            ("keys = [\"\"]", "tokens[0] (web).keys[0]"),
            (
                "targets = [\"nowhere\"]",
                "tokens[0] (web).targets[0]: no target",
            ),
            (
                "blueprints = [\"nope\"]",
                "tokens[0] (web).blueprints[0]: no blueprint",
            ),
            (
                "max_live = 0",
                "tokens[0] (web).max_live: must be at least 1",
            ),
        ] {
            let e = format!("{:#}", parse(&token(extra)).unwrap_err());
            assert!(e.contains(names), "{extra}: {e}");
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
