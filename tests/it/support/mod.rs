//! Test harness: real PostgreSQL clusters (from the installed server binaries) — one shared by
//! most modules, and one of its own for each module whose tests change or count a whole cluster —
//! and the application spawned per test on a random port, driven over HTTP like any caller.

pub mod fake_neon;
pub mod logs;
pub mod serve;

use previewdb::configuration::Config;
use previewdb::dev::{self, DevOptions};
use previewdb::domain::{token_digest, ApiToken, Scope};
use previewdb::embedded::EmbeddedPostgres;
use previewdb::startup::Application;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, Once};
use tokio::sync::OnceCell;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const READ_TOKEN: &str = "test-read-token";
pub const WRITE_TOKEN: &str = "test-write-token";

pub struct Cluster {
    pub postgres: EmbeddedPostgres,
    pub config: Config,
    _dir: tempfile::TempDir,
}

/// The cluster of every module that does not declare its own.
static SHARED: OnceCell<Arc<Cluster>> = OnceCell::const_new();

/// Every cluster started, to stop at exit: statics are never dropped.
static STARTED: Mutex<Vec<Arc<Cluster>>> = Mutex::new(Vec::new());

/// A world-traversable temporary directory: when tests run as root the server runs as an
/// unprivileged user that must reach its data directory.
pub fn temp_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("previewdb-test-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The shared cluster. Its control store and targets see every sharing module's environments,
/// so tests on it name what they look for (their keys, prefixes or labels).
pub async fn cluster() -> Arc<Cluster> {
    cluster_in(&SHARED).await
}

/// The cluster kept in `cell`, started on first use: a module whose tests change the cluster's
/// settings, kill servers or count everything in it keeps one of its own in a static of its own.
pub async fn cluster_in(cell: &'static OnceCell<Arc<Cluster>>) -> Arc<Cluster> {
    cell.get_or_init(Cluster::start).await.clone()
}

impl Cluster {
    async fn start() -> Arc<Cluster> {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            std::env::set_var(dev::DEV_TOKEN_ENV, ADMIN_TOKEN);
            // SAFETY: registering a plain extern "C" function.
            unsafe { libc::atexit(remove_clusters) };
        });
        let dir = temp_dir();
        let setup = dev::setup(&DevOptions {
            listen: Some("127.0.0.1:0".into()),
            data_dir: dir.path().join("data"),
            config: None,
        })
        .await
        .expect("embedded PostgreSQL for tests");
        let mut config = setup.config;
        for (name, token, scopes) in [
            ("reader", READ_TOKEN, vec![Scope::Read]),
            ("writer", WRITE_TOKEN, vec![Scope::Read, Scope::Write]),
        ] {
            config.tokens.push(ApiToken {
                name: name.into(),
                sha256: token_digest(token),
                scopes,
                reach: Default::default(),
            });
        }
        // Tests that want blueprints configure their own.
        config.blueprints.clear();
        config.default_blueprint = None;
        // A second name for the same cluster, to ask for "other settings".
        let local = config.targets["local"].clone();
        config.targets.insert("other".into(), local);
        let cluster = Arc::new(Cluster {
            postgres: setup.postgres,
            config,
            _dir: dir,
        });
        STARTED.lock().unwrap().push(cluster.clone());
        cluster
    }
}

/// Stops every cluster and removes its files.
extern "C" fn remove_clusters() {
    let started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    for cluster in started.iter() {
        cluster.postgres.stop();
        let _ = std::fs::remove_dir_all(cluster._dir.path());
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub cluster: Arc<Cluster>,
    pub app: Arc<previewdb::service::Environments>,
}

impl TestApp {
    /// An app on the shared cluster, configured as the cluster is.
    pub async fn spawn() -> TestApp {
        Self::spawn_on(cluster().await).await
    }

    /// An app on `cluster`, configured as that cluster is.
    pub async fn spawn_on(cluster: Arc<Cluster>) -> TestApp {
        let config = cluster.config.clone();
        Self::spawn_with(cluster, config).await
    }

    pub async fn spawn_with(cluster: Arc<Cluster>, config: Config) -> TestApp {
        let app = Application::build(&config)
            .await
            .expect("application builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let envs = app.environments();
        tokio::spawn(app.run_until(std::future::pending()));
        TestApp {
            base,
            http: reqwest::Client::new(),
            cluster,
            app: envs,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(ADMIN_TOKEN), Some(body))
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(ADMIN_TOKEN), None).await
    }

    /// DELETE, then wait (bounded) for the data to be dropped too, so that what follows may
    /// look for it in PostgreSQL; answers the DELETE's own answer.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let answer = self
            .call(Method::DELETE, path, Some(ADMIN_TOKEN), None)
            .await;
        let app = self;
        until_purged(&answer, |id| async move {
            app.get(&format!("/v1/environments/{id}")).await.1
        })
        .await;
        answer
    }

    /// Creates an environment and insists on success.
    pub async fn create(&self, body: Value) -> Value {
        let (status, env) = self.post("/v1/environments", body).await;
        assert!(status.is_success(), "create failed: {status} {env}");
        env
    }

    /// A superuser session on `database`, over the cluster's private socket.
    pub async fn admin(&self, database: &str) -> tokio_postgres::Client {
        connect(&self.cluster.postgres.admin_url(database))
            .await
            .expect("admin connection")
    }
}

pub fn env_path(reference: &str) -> String {
    format!(
        "/v1/environments/{}",
        percent_encoding::utf8_percent_encode(reference, percent_encoding::NON_ALPHANUMERIC)
    )
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub fn uri(env: &Value) -> String {
    env["connection"]["uri"]
        .as_str()
        .expect("connection uri")
        .to_owned()
}

/// The handed-out URI pointed at another database, with the same credentials.
pub fn uri_for_database(env: &Value, database: &str) -> String {
    let c = &env["connection"];
    format!(
        "host={} port={} user={} password={} dbname={}",
        c["host"].as_str().unwrap(),
        c["port"],
        c["user"].as_str().unwrap(),
        c["password"].as_str().unwrap(),
        database
    )
}

pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no db error: {e}"))
}

/// One sample of the exposition: metric name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// Parses `GET /metrics` (OpenMetrics text): `name{a="x",b="y"} value`, `#` lines skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = value.parse().expect("numeric value");
            let Some((name, rest)) = series.split_once('{') else {
                return (series.to_owned(), BTreeMap::new(), value);
            };
            let mut labels = BTreeMap::new();
            let mut chars = rest.strip_suffix('}').expect("closing brace").chars();
            loop {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                if key.is_empty() {
                    break;
                }
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut val = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => val.push('\n'),
                            Some(c) => val.push(c),
                            None => panic!("dangling escape in {line}"),
                        },
                        '"' => break,
                        c => val.push(c),
                    }
                }
                labels.insert(key, val);
                if chars.next() != Some(',') {
                    break;
                }
            }
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// The values of metric `name`, keyed by its labels rendered as `a=x,b=y`.
pub fn metric_series(samples: &[Sample], name: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, labels, v)| {
            let key = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (key, *v)
        })
        .collect()
}

/// Polls (for at most three minutes: a burst of deletes purges 8 at a time per target, slowly on
/// a loaded 2-core machine) until the deleted environment of `answer` says `purged`; a DELETE
/// answers before the data is dropped. Does nothing for an answer that is no tombstone. Polls
/// every 200 ms: hundreds of pollers at once must not become the load that slows the purge.
pub async fn until_purged<F, Fut>(answer: &(StatusCode, Value), get: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let (status, body) = answer;
    if *status != StatusCode::OK || body["state"] != "deleted" {
        return;
    }
    let id = body["id"]
        .as_str()
        .expect("a tombstone has an id")
        .to_owned();
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut env = body.clone();
    while env["purged"] != true {
        assert!(
            std::time::Instant::now() < give_up,
            "data of a deleted environment still not dropped: {env}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        env = get(id.clone()).await;
    }
}
