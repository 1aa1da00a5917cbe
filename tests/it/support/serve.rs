//! `previewdb serve` as a separate process on the test cluster: started from the binary cargo
//! built, configured by a file like an operator's, killed with SIGKILL and started again.

use super::{Cluster, ADMIN_TOKEN};
use previewdb::domain::token_digest;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a replica's configuration adds to the test cluster's: lines at the top level, lines of
/// `[targets.local]`, and whole tables (blueprints, more targets).
#[derive(Clone, Default)]
pub struct ServeOptions {
    pub top: String,
    pub local: String,
    pub tables: String,
    /// Environment variables of the process, set after (so possibly over) `RUST_LOG`.
    pub env: Vec<(&'static str, String)>,
}

pub struct Replica {
    pub base: String,
    pub http: reqwest::Client,
    child: Option<Child>,
    config: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Replica {
    pub async fn start(cluster: Arc<Cluster>, opts: &ServeOptions) -> Replica {
        let dir = super::temp_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = &cluster.postgres;
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\ncontrol_url = {control:?}\nencryption_key = \"{key}\"\n\
             default_target = \"local\"\n{top}\n\
             [[tokens]]\nname = \"admin\"\nsha256 = \"{digest}\"\nscopes = [\"admin\"]\n\n\
             [targets.local]\nkind = \"postgres\"\nadmin_url = {admin:?}\npublic_host = \"127.0.0.1\"\n\
             public_port = {pg_port}\nmax_environments = 5000\n{local}\n\n{tables}\n",
            control = pg.admin_url("previewdb"),
            key = hex::encode(cluster.config.encryption_key.expose()),
            top = opts.top,
            digest = hex::encode(token_digest(ADMIN_TOKEN)),
            admin = pg.admin_url("postgres"),
            pg_port = pg.port(),
            local = opts.local,
            tables = opts.tables,
        );
        let config = dir.path().join("previewdb.toml");
        std::fs::write(&config, text).unwrap();
        let mut replica = Replica {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            child: None,
            log: dir.path().join("serve.log"),
            env: opts.env.clone(),
            config,
            _dir: dir,
        };
        replica.restart().await;
        replica
    }

    /// Starts the process (again) and waits until it answers `/readyz`.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_previewdb"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,tokio_postgres=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("previewdb serve starts");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("previewdb serve exited ({status}):\n{}", self.log_tail());
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "previewdb serve not ready within 60 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no clean-up of any kind runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the process wrote to stdout and stderr (one file) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(300));
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status();
                let text = res.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            // A killed replica: no answer at all.
            Err(e) => (StatusCode::IM_A_TEAPOT, Value::String(e.to_string())),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// DELETE, then wait (bounded) for the data to be dropped too (see `until_purged`).
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let answer = self.call(Method::DELETE, path, None).await;
        super::until_purged(&answer, |id| async move {
            self.get(&format!("/v1/environments/{id}")).await.1
        })
        .await;
        answer
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
