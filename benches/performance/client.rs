//! The service seen as any caller sees it: HTTP requests with a bearer token, and answers kept
//! whole (status, problem `code`, `detail`) so that a failure can be counted and explained.

use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub(crate) struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
}

pub(crate) enum Answer {
    Http {
        status: u16,
        body: Value,
        retry_after: Option<Duration>,
    },
    Transport(String),
}

impl Answer {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Answer::Http { status, .. } => Some(*status),
            Answer::Transport(_) => None,
        }
    }

    pub(crate) fn is(&self, status: u16) -> bool {
        self.status() == Some(status)
    }

    pub(crate) fn body(&self) -> &Value {
        match self {
            Answer::Http { body, .. } => body,
            Answer::Transport(_) => &Value::Null,
        }
    }

    pub(crate) fn id(&self) -> Option<String> {
        self.body()["id"].as_str().map(str::to_owned)
    }

    /// `<operation> <status> <code>`, e.g. `create 503 queue_full`.
    pub(crate) fn label(&self, operation: &str) -> String {
        match self {
            Answer::Http { status, body, .. } => match body["code"].as_str() {
                Some(code) => format!("{operation} {status} {code}"),
                None => format!("{operation} {status}"),
            },
            Answer::Transport(e) => format!("{operation} transport error ({e})"),
        }
    }

    /// What the answer says went wrong: its problem's `detail`, or the transport error.
    pub(crate) fn detail(&self) -> String {
        match self {
            Answer::Http { body, .. } => body["detail"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned),
            Answer::Transport(e) => e.clone(),
        }
    }

    /// How long a polite client waits before trying again: `Retry-After`, capped so that a
    /// load level's clients keep the service busy.
    pub(crate) fn pause(&self) -> Duration {
        match self {
            Answer::Http {
                retry_after: Some(d),
                ..
            } => (*d).min(Duration::from_secs(2)),
            _ => Duration::from_millis(200),
        }
    }
}

impl Api {
    pub(crate) fn new(base: String, token: String, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(timeout)
            .build()?;
        Ok(Self { base, http, token })
    }

    pub(crate) async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        match req.bearer_auth(&self.token).send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let retry_after = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = res.json().await.unwrap_or(Value::Null);
                Answer::Http {
                    status,
                    body,
                    retry_after,
                }
            }
            Err(e) => Answer::Transport(e.without_url().to_string()),
        }
    }

    /// Sends and times the request as the client sees it: until the whole body has arrived.
    pub(crate) async fn timed(&self, req: reqwest::RequestBuilder) -> (Answer, Duration) {
        let t = Instant::now();
        let answer = self.send(req).await;
        (answer, t.elapsed())
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).json(&body)
    }

    pub(crate) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    pub(crate) fn delete_env(&self, id: &str) -> reqwest::RequestBuilder {
        self.http
            .delete(self.url(&format!("/v1/environments/{id}")))
    }

    pub(crate) fn create_env(&self, key: &str, blueprint: &str) -> reqwest::RequestBuilder {
        self.post(
            "/v1/environments",
            json!({ "key": key, "blueprint": blueprint }),
        )
    }

    /// `POST /v1/blueprints/{name}/prepare`: the template built and the pool filled.
    pub(crate) async fn prepare(&self, blueprint: &str) -> anyhow::Result<(Value, Duration)> {
        let (answer, took) = self
            .timed(self.post(&format!("/v1/blueprints/{blueprint}/prepare"), json!({})))
            .await;
        anyhow::ensure!(
            answer.is(200),
            "preparing blueprint {blueprint}: {} — {}",
            answer.label("prepare"),
            answer.detail()
        );
        Ok((answer.body().clone(), took))
    }

    /// The blueprint's status on the `local` target (hash, template state, pool fill).
    pub(crate) async fn blueprint_status(&self, blueprint: &str) -> anyhow::Result<Value> {
        let answer = self
            .send(self.get(&format!("/v1/blueprints/{blueprint}")))
            .await;
        anyhow::ensure!(
            answer.is(200),
            "reading blueprint {blueprint}: {} — {}",
            answer.label("get"),
            answer.detail()
        );
        Ok(answer.body()["targets"]["local"].clone())
    }

    /// Waits until the pool of `blueprint` holds at least `want` ready entries, up to `limit`.
    /// Returns whether it did.
    pub(crate) async fn wait_pool(&self, blueprint: &str, want: u64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if let Ok(s) = self.blueprint_status(blueprint).await {
                if s["pool_ready"].as_u64().unwrap_or(0) >= want {
                    return true;
                }
            }
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
