//! A private PostgreSQL cluster run from the server binaries installed on this machine: the
//! store and target of `previewdb dev`, and the real server every test talks to.
// Process control has no safe std API: the server's death signal (prctl), its stop (kill)
// and the unprivileged user it runs as (getpwnam) go through libc.
#![allow(unsafe_code)]

use anyhow::{anyhow, bail, Context};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The cluster's bootstrap superuser. It alone may log in without a password, and only over the
/// cluster's Unix socket (mode 0700); every other role needs its SCRAM password.
pub const ADMIN_USER: &str = "previewdb_admin";

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found on PATH \
or under /usr/lib/postgresql/*/bin. Install the server package, e.g. `apt-get install \
postgresql` (Debian/Ubuntu), `dnf install postgresql-server` (Fedora) or `brew install \
postgresql@16` (macOS), or put its bin directory on PATH.";

/// How the cluster treats its writes. `Fast` (the default of `previewdb dev` and the tests)
/// trades crash safety for speed; `Full` keeps PostgreSQL's defaults, as a production server
/// would, for benchmarks whose figures must hold there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    #[default]
    Fast,
    Full,
}

pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    pid: u32,
    exited: ExitSlot,
    waiter: Mutex<Option<JoinHandle<()>>>,
}

impl EmbeddedPostgres {
    /// Locates `initdb` and `postgres`: next to a `postgres` on PATH, else the newest
    /// `/usr/lib/postgresql/<major>/bin`.
    pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
        let has_server =
            |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join("postgres");
                if candidate.is_file() {
                    let real = std::fs::canonicalize(&candidate).unwrap_or(candidate);
                    if let Some(bin) = real.parent().filter(|d| has_server(d)) {
                        return Ok(bin.to_path_buf());
                    }
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                has_server(&bin).then_some((major, bin))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, bin)| bin)
            .ok_or_else(|| anyhow!(INSTALL_HINT))
    }

    /// Initialises `data_dir` when it holds no cluster yet, then starts the server on a free
    /// local port. The server is a child of this process and dies with it.
    pub fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, Durability::Fast)
    }

    /// [`start`](Self::start) with writes as durable as `durability` says.
    pub fn start_with(data_dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        let bin = Self::find_bin_dir()?;
        let layout = Layout::prepare(data_dir)?;
        if !layout.pgdata().join("PG_VERSION").exists() {
            layout.init_cluster(&bin)?;
        }
        let port = free_port()?;
        let log_path = layout.home.join("postgres.log");
        let cmd = layout.server(&bin, port, durability, &log_path)?;
        let (pid, exited, waiter) = spawn_server(cmd)?;
        let pg = Self {
            data_dir: layout.home,
            socket_dir: layout.socket_dir,
            port,
            pid,
            exited,
            waiter: Mutex::new(Some(waiter)),
        };
        pg.wait_ready(&log_path)?;
        Ok(pg)
    }

    fn wait_ready(&self, log_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        // The postmaster writes `ready` as the last line of postmaster.pid once it accepts
        // connections (PostgreSQL 10+); an open port alone may still answer "starting up".
        let pid_file = self.data_dir.join("pgdata").join("postmaster.pid");
        loop {
            if let Some(status) = *self.exited.lock().unwrap() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "postgres exited during start-up ({status}):\n{}",
                    tail.join("\n")
                );
            }
            let ready = std::fs::read_to_string(&pid_file)
                .map(|s| {
                    // A stale file from a crashed run names another pid.
                    let mine = s
                        .lines()
                        .next()
                        .is_some_and(|l| l.trim() == self.pid.to_string());
                    mine && s.lines().nth(7).is_some_and(|l| l.trim() == "ready")
                })
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not become ready within 60 s; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Where the cluster and its key live: the `--data-dir` given, or the place it links to
    /// (see [`cluster_home`]).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A connection URL for the admin over the Unix socket.
    pub fn admin_url(&self, database: &str) -> String {
        let host: String = percent_encoding::utf8_percent_encode(
            &self.socket_dir.to_string_lossy(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        format!(
            "postgresql://{ADMIN_USER}@/{database}?host={host}&port={}",
            self.port
        )
    }

    /// Fast shutdown: ends sessions, then waits for the server to exit.
    pub fn stop(&self) {
        if let Some(waiter) = self.waiter.lock().unwrap().take() {
            if self.exited.lock().unwrap().is_none() {
                // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
                unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
            }
            let _ = waiter.join();
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Set to the server's exit status by the thread that owns the child, once the server exits.
type ExitSlot = Arc<Mutex<Option<ExitStatus>>>;

/// Where one cluster lives and whom its server runs as, settled before anything starts.
struct Layout {
    /// The cluster's home (see [`cluster_home`]): its `pgdata`, log and key are inside.
    home: PathBuf,
    socket_dir: PathBuf,
    /// The (uid, gid) the server runs as when we are root.
    run_as: Option<(u32, u32)>,
}

impl Layout {
    fn prepare(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let run_as = unprivileged_user()?;
        let home = cluster_home(&data_dir, run_as)?;
        let socket_dir = socket_dir_for(&home)?;
        let layout = Self {
            home,
            socket_dir,
            run_as,
        };
        for dir in [&layout.home, &layout.socket_dir] {
            layout
                .hand_over(dir)
                .with_context(|| format!("handing {} to the postgres user", dir.display()))?;
        }
        Ok(layout)
    }

    fn pgdata(&self) -> PathBuf {
        self.home.join("pgdata")
    }

    /// Gives `path` to the server's user, when that is not us.
    fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        match self.run_as {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    /// A new cluster whose admin alone logs in without a password (see [`PG_HBA`]).
    fn init_cluster(&self, bin: &Path) -> anyhow::Result<()> {
        let pgdata = self.pgdata();
        let out = server_command(&bin.join("initdb"), self.run_as)
            .arg("-D")
            .arg(&pgdata)
            .args([
                "-U",
                ADMIN_USER,
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
            ])
            .args(["--auth-host=scram-sha-256", "--no-sync"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(pgdata.join("pg_hba.conf"), PG_HBA)?;
        Ok(())
    }

    /// The server's command line on `port`, its output appended to `log_path`.
    fn server(
        &self,
        bin: &Path,
        port: u16,
        durability: Durability,
        log_path: &Path,
    ) -> anyhow::Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        self.hand_over(log_path)?;
        let mut cmd = server_command(&bin.join("postgres"), self.run_as);
        cmd.arg("-D")
            .arg(self.pgdata())
            .arg("-p")
            .arg(port.to_string());
        for setting in [
            "listen_addresses=127.0.0.1".to_string(),
            format!("unix_socket_directories={}", self.socket_dir.display()),
            "unix_socket_permissions=0700".into(),
            "max_connections=300".into(),
            // Tenants may PREPARE TRANSACTION, as on many production servers: teardown must cope.
            "max_prepared_transactions=16".into(),
            "password_encryption=scram-sha-256".into(),
        ] {
            cmd.arg("-c").arg(setting);
        }
        if durability == Durability::Fast {
            for setting in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ] {
                cmd.arg("-c").arg(setting);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }
}

/// Starts the server and returns its pid, the slot its exit status lands in, and the thread
/// that owns it.
fn spawn_server(mut cmd: Command) -> anyhow::Result<(u32, ExitSlot, JoinHandle<()>)> {
    // SAFETY: prctl is async-signal-safe; it makes the kernel stop the server when the
    // thread that started it ends, so a killed test run or CLI leaves no server behind.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The death signal is tied to the thread that spawns the child, so a thread that lives
    // exactly as long as the server spawns it and waits for it.
    let (tx, rx) = std::sync::mpsc::channel();
    let exited = ExitSlot::default();
    let exit_slot = exited.clone();
    let waiter = std::thread::Builder::new()
        .name("postgres".into())
        .spawn(move || {
            let mut child: Child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => return drop(tx.send(Err(e))),
            };
            let _ = tx.send(Ok(child.id()));
            let status = child.wait();
            *exit_slot.lock().unwrap() = status.ok();
        })?;
    let pid = rx.recv()?.context("starting postgres")?;
    Ok((pid, exited, waiter))
}

const PG_HBA: &str = "\
# Written by previewdb: only the admin, on the private socket, logs in without a password.
local   all  previewdb_admin                  trust
local   all  all                              scram-sha-256
host    all  previewdb_admin  0.0.0.0/0       reject
host    all  previewdb_admin  ::/0            reject
host    all  all              127.0.0.1/32    scram-sha-256
host    all  all              ::1/128         scram-sha-256
";

/// PostgreSQL refuses to run as root; when we are root, the server runs as `postgres` (or `nobody`).
fn unprivileged_user() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid cannot fail; getpwnam returns a pointer into static storage that we copy
    // out of before any other call could overwrite it.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        for name in [c"postgres", c"nobody"] {
            let pw = libc::getpwnam(name.as_ptr());
            if !pw.is_null() {
                return Ok(Some(((*pw).pw_uid, (*pw).pw_gid)));
            }
        }
    }
    bail!(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
    )
}

fn server_command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    // initdb resolves its own path from the working directory, which the server's user may not
    // be allowed to enter (`previewdb dev` started as root from /root/project).
    cmd.current_dir("/");
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

/// Inside `--data-dir`: the symbolic link to a cluster kept elsewhere.
pub const CLUSTER_LINK: &str = "cluster";

/// Where root keeps clusters its server user could not reach in place.
const RELOCATED_ROOT: &str = "/var/lib/previewdb";

/// Where the cluster lives. Normally `data_dir` itself; but when we are root and the server's
/// user cannot even pass through one of `data_dir`'s parents (a project in root's 0700 home),
/// the cluster, its socket and its key go to a directory of that user's own under
/// `/var/lib/previewdb`, named after a hash of the data dir, and `data_dir/cluster` links to it:
/// restarts follow the link (also after the data dir was moved), and the key stays with the
/// cluster whose passwords it seals.
pub fn cluster_home(data_dir: &Path, run_as: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    let Some((uid, gid)) = run_as else {
        return Ok(data_dir.to_path_buf());
    };
    let link = data_dir.join(CLUSTER_LINK);
    let home = if link.symlink_metadata().is_ok() {
        std::fs::read_link(&link).with_context(|| format!("reading {}", link.display()))?
    } else if let Some(blocked) = first_unreachable_parent(data_dir, uid, gid) {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        let home = Path::new(RELOCATED_ROOT).join(&hex::encode(digest)[..16]);
        let fix = format!(
            "the PostgreSQL server runs as uid {uid}, which cannot enter {blocked}; either              `chmod o+x {blocked}` or pass a --data-dir that user can reach (e.g. under /tmp)",
            blocked = blocked.display()
        );
        std::fs::create_dir_all(&home)
            .with_context(|| format!("creating {} ({fix})", home.display()))?;
        std::os::unix::fs::symlink(&home, &link)
            .with_context(|| format!("linking {} ({fix})", link.display()))?;
        home
    } else {
        return Ok(data_dir.to_path_buf());
    };
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(&home, Some(uid), Some(gid))
        .with_context(|| format!("handing {} to the postgres user", home.display()))?;
    Ok(home)
}

/// The first proper ancestor of `dir` that `uid`/`gid` may not search (no `x` for it), judged
/// from the mode bits (supplementary groups are not considered, which errs towards relocating).
fn first_unreachable_parent(dir: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().skip(1).find_map(|p| {
        let m = std::fs::metadata(p).ok()?;
        let mode = m.mode();
        let ok = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!ok).then(|| p.to_path_buf())
    })
}

/// Unix socket paths are limited to about 100 bytes; long data directories get a socket
/// directory under /tmp instead.
fn socket_dir_for(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let preferred = data_dir.join("run");
    let dir = if preferred.as_os_str().len() < 80 {
        preferred
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        std::env::temp_dir().join(format!("previewdb-{}", &hex::encode(digest)[..12]))
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
