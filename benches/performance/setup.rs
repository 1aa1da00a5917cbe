//! The world the benchmark runs in: a private PostgreSQL (initdb into a temporary directory,
//! run as an unprivileged user when we are root) and the release `previewdb serve` as a
//! separate process configured by a file, so that its memory is its own to read.

use anyhow::{bail, Context};
use previewdb::embedded::{Durability, EmbeddedPostgres};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const TOKEN: &str = "bench-token";

pub(crate) struct Cluster {
    pub pg: EmbeddedPostgres,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("previewdb-bench-")
            .tempdir()?;
        // When run as root, the server runs as another user that must reach its data directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let data = dir.path().join("data");
        // Production settings (fsync, synchronous commit, full pages) unless asked otherwise:
        // a hand-out's commits and a clone's WAL cost what they would on a real server.
        let durability = match std::env::var("PREVIEWDB_BENCH_FAST_PG").as_deref() {
            Ok("1") => Durability::Fast,
            _ => Durability::Full,
        };
        let pg =
            tokio::task::spawn_blocking(move || EmbeddedPostgres::start_with(&data, durability))
                .await?
                .context("starting PostgreSQL")?;
        previewdb::dev::create_database_if_missing(&pg.admin_url("postgres"), "previewdb").await?;
        Ok(Self { pg, dir })
    }

    pub(crate) fn admin_url(&self, db: &str) -> String {
        self.pg.admin_url(db)
    }

    pub(crate) async fn admin(&self, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.admin_url(db)).await
    }
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// One blueprint of the generated configuration.
pub(crate) struct BlueprintConfig {
    pub name: String,
    pub schema: Option<PathBuf>,
    pub migrations: Option<PathBuf>,
    pub format: &'static str,
    pub seeds: Option<PathBuf>,
    pub extensions: Vec<String>,
    pub pool_size: usize,
}

impl BlueprintConfig {
    fn toml(&self) -> String {
        let mut t = format!("[blueprints.{}]\n", self.name);
        let path = |k: &str, p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| format!("{k} = {:?}\n", p.display().to_string()))
                .unwrap_or_default()
        };
        t += &path("schema", &self.schema);
        t += &path("migrations", &self.migrations);
        t += &path("seeds", &self.seeds);
        t += &format!(
            "migrations_format = {:?}\nextensions = {:?}\npool_size = {}\n\n",
            self.format, self.extensions, self.pool_size
        );
        t
    }
}

pub(crate) struct Service {
    child: Child,
    pub pid: u32,
    pub base: String,
    log: PathBuf,
}

impl Service {
    /// Writes the configuration into `dir` and starts `previewdb serve`, waiting for `/readyz`.
    pub(crate) async fn start(
        cluster: &Cluster,
        dir: &Path,
        max_environments: usize,
        max_concurrent_provisions: Option<usize>,
        blueprints: &[BlueprintConfig],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\ncontrol_url = {control:?}\nencryption_key = \"{key}\"\n\
             default_target = \"local\"\n\n\
             [[tokens]]\nname = \"bench\"\nsha256 = \"{digest}\"\n\
             scopes = [\"environments:read\", \"environments:write\", \"environments:delete\", \"admin\"]\n\n\
             [targets.local]\nkind = \"postgres\"\nadmin_url = {admin:?}\npublic_host = \"127.0.0.1\"\n\
             public_port = {pg_port}\nmax_environments = {max_environments}\n\n",
            control = cluster.admin_url("previewdb"),
            key = hex::encode(key),
            digest = hex::encode(previewdb::domain::token_digest(TOKEN)),
            admin = cluster.admin_url("postgres"),
            pg_port = cluster.pg.port(),
        );
        if let Some(n) = max_concurrent_provisions {
            text += &format!("max_concurrent_provisions = {n}\n\n");
        }
        for bp in blueprints {
            text += &bp.toml();
        }
        let config = dir.join("previewdb.toml");
        std::fs::write(&config, text)?;
        let log = dir.join("serve.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_previewdb"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            // The file decides; nothing of the caller's environment may override it.
            .env_remove("RUST_LOG")
            .env_remove(previewdb::configuration::ENV_CONTROL_URL)
            .env_remove(previewdb::configuration::ENV_LISTEN)
            .env_remove(previewdb::configuration::ENV_ENCRYPTION_KEY)
            .env(previewdb::service::NO_WARM_UP_ENV, "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting previewdb serve")?;
        let mut service = Service {
            pid: child.id(),
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = service.child.try_wait()? {
                bail!("previewdb serve exited ({status}):\n{}", service.log_tail());
            }
            let ready = http
                .get(format!("{}/readyz", service.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(service);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "previewdb serve not ready within 60 s:\n{}",
                    service.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `VmRSS` and `VmHWM` (peak) of the process, in bytes.
    pub(crate) fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("{name} missing from /proc/{}/status", self.pid))?;
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("unreadable {line:?}"))?;
            Ok(kb * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Still running? A service that died mid-run makes every later figure meaningless.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("previewdb serve exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
