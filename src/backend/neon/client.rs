//! Neon HTTP API client: one call = retries of transient answers plus operation polling, all
//! under one deadline, with the API key kept out of every log line and error text.

use crate::domain::Secret;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Tuning of one client; the defaults suit Neon, tests shrink the delays.
#[derive(Debug, Clone)]
pub(super) struct ClientSettings {
    pub base_url: String,
    pub project_id: String,
    pub request_timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub poll_interval: Duration,
}

/// Why a Neon call did not succeed.
#[derive(Debug)]
pub(super) enum NeonError {
    /// Neon answered with an error that retrying will not cure.
    Api {
        status: StatusCode,
        code: String,
        message: String,
        request_id: Option<String>,
        call: String,
    },
    /// Neon could not be reached, or kept answering "try later", until the deadline.
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A Neon operation ended badly.
    Operation {
        id: String,
        action: String,
        status: String,
        error: Option<String>,
    },
}

impl NeonError {
    pub(super) fn status(&self) -> Option<StatusCode> {
        match self {
            NeonError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(super) fn message(&self) -> &str {
        match self {
            NeonError::Api { message, .. } | NeonError::Unavailable { message, .. } => message,
            NeonError::Operation { status, .. } => status,
        }
    }

    /// Neon's branch quota, whichever of the documented shapes it comes in. Only one shape
    /// carries a code; the others say it in their message alone, so the text is matched too.
    pub(super) fn is_branch_limit(&self) -> bool {
        match self {
            NeonError::Api {
                status,
                code,
                message,
                ..
            } => {
                let m = message.to_ascii_lowercase();
                code == "BRANCHES_LIMIT_EXCEEDED"
                    || (matches!(status.as_u16(), 409 | 422)
                        && m.contains("branch")
                        && m.contains("limit"))
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for NeonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NeonError::Api {
                status,
                code,
                message,
                request_id,
                call,
            } => {
                write!(f, "Neon {call} answered {}: {message}", status.as_u16())?;
                if !code.is_empty() {
                    write!(f, " (code {code})")?;
                }
                if let Some(id) = request_id {
                    write!(f, " (request id {id})")?;
                }
                Ok(())
            }
            NeonError::Unavailable { message, .. } => f.write_str(message),
            NeonError::Operation {
                id,
                action,
                status,
                error,
            } => {
                write!(f, "Neon operation {action} {id} ended {status}")?;
                if let Some(e) = error {
                    write!(f, ": {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// When one backend call must be done, retries and waits included.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline(Instant);

impl Deadline {
    pub(super) fn after(d: Duration) -> Self {
        Self(Instant::now() + d)
    }
    fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// A successful answer.
#[derive(Debug)]
pub(super) struct Reply {
    pub body: Value,
}

impl Reply {
    /// Ids of the operations this answer started, which must finish before the change is real.
    pub(super) fn operations(&self) -> Vec<String> {
        self.body["operations"]
            .as_array()
            .map(|ops| {
                ops.iter()
                    .filter(|op| !matches!(op["status"].as_str(), Some("finished" | "skipped")))
                    .filter_map(|op| op["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub(super) struct NeonClient {
    http: reqwest::Client,
    key: Secret,
    s: ClientSettings,
}

impl std::fmt::Debug for NeonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeonClient")
            .field("settings", &self.s)
            .field("key", &self.key)
            .finish()
    }
}

/// Operation states that are over: Neon documents these, anything else is still going.
enum OpState {
    Done,
    Bad,
    Running,
}

fn op_state(status: &str) -> OpState {
    match status {
        "finished" | "skipped" => OpState::Done,
        "failed" | "error" | "cancelled" => OpState::Bad,
        _ => OpState::Running,
    }
}

impl NeonClient {
    pub(super) fn new(key: Secret, mut s: ClientSettings) -> anyhow::Result<Self> {
        s.base_url = s.base_url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .user_agent(concat!("previewdb/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, key, s })
    }

    pub(super) fn project_id(&self) -> &str {
        &self.s.project_id
    }

    /// `/projects/{project}` followed by `rest`; ids and names in `rest` must be encoded by the caller.
    pub(super) fn project_path(&self, rest: &str) -> String {
        format!("/projects/{}{rest}", seg(&self.s.project_id))
    }

    /// Sends one request, retrying what Neon documents as transient until `deadline`.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        deadline: Deadline,
    ) -> Result<Reply, NeonError> {
        let req = Request {
            call: format!("{method} {path}"),
            // One id for all attempts, so that Neon support can correlate the retries.
            request_id: uuid::Uuid::new_v4().to_string(),
            idempotent: method != Method::POST,
            method,
            path,
            query,
            body,
        };
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(NeonError::Unavailable {
                    message: format!("Neon {}: deadline reached before an answer", req.call),
                    retry_after: None,
                });
            }
            let (why, retry_after) = match self.attempt(&req, attempt, remaining).await {
                Attempt::Over(result) => return result,
                Attempt::Retry { why, retry_after } => (why, retry_after),
            };
            let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
            if wait >= deadline.remaining() {
                return Err(NeonError::Unavailable {
                    message: format!(
                        "Neon {}: still failing after {attempt} attempts: {why}",
                        req.call
                    ),
                    retry_after,
                });
            }
            tracing::debug!(call = %req.call, attempt, wait_ms = wait.as_millis() as u64, "retrying Neon call");
            tokio::time::sleep(wait).await;
        }
    }

    /// One try of `req`, given at most `remaining` to answer.
    async fn attempt(&self, req: &Request<'_>, attempt: u32, remaining: Duration) -> Attempt {
        let mut http = self
            .http
            .request(
                req.method.clone(),
                format!("{}{}", self.s.base_url, req.path),
            )
            .bearer_auth(self.key.expose())
            .header("Accept", "application/json")
            .header("X-Request-ID", &req.request_id)
            .timeout(remaining.min(self.s.request_timeout))
            .query(req.query);
        if let Some(b) = req.body {
            http = http.json(b);
        }
        match http.send().await {
            Err(e) => self.not_sent(req, attempt, &e),
            Ok(resp) => self.answered(req, attempt, resp).await,
        }
    }

    /// A request that got no answer: retried, unless it is a POST that may have reached Neon
    /// (one that never connected is retried too), which is not repeated blindly.
    fn not_sent(&self, req: &Request<'_>, attempt: u32, e: &reqwest::Error) -> Attempt {
        let text = self.redact(&e.to_string());
        tracing::debug!(call = %req.call, attempt, error = %text, "Neon request failed");
        if !(req.idempotent || e.is_connect()) {
            return Attempt::Over(Err(NeonError::Unavailable {
                message: format!("Neon {}: {text}", req.call),
                retry_after: None,
            }));
        }
        Attempt::Retry {
            why: text,
            retry_after: None,
        }
    }

    /// Neon's answer: the reply, a transient refusal to retry, or the error it stands for.
    async fn answered(&self, req: &Request<'_>, attempt: u32, resp: reqwest::Response) -> Attempt {
        let status = resp.status();
        let neon_id = header(&resp, "x-neon-ret-request-id");
        let retry_after = header(&resp, "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        tracing::debug!(call = %req.call, attempt, status = status.as_u16(), request_id = %req.request_id,
            neon_request_id = neon_id.as_deref().unwrap_or(""), "Neon answered");
        if status.is_success() {
            return Attempt::Over(success(&req.call, &text));
        }
        let (code, message, body_id) = parse_error(&text);
        let message = self.redact(&message);
        if transient(status, &message, req.idempotent) {
            return Attempt::Retry {
                why: format!("{} {message}", status.as_u16()),
                retry_after,
            };
        }
        Attempt::Over(Err(if status.is_server_error() {
            NeonError::Unavailable {
                message: format!("Neon {} answered {}: {message}", req.call, status.as_u16()),
                retry_after: None,
            }
        } else {
            NeonError::Api {
                status,
                code,
                message,
                request_id: body_id.or(neon_id),
                call: req.call.clone(),
            }
        }))
    }

    /// Polls each operation until it is over; the first bad ending is the error.
    pub(super) async fn wait_operations(
        &self,
        ids: &[String],
        deadline: Deadline,
    ) -> Result<(), NeonError> {
        for id in ids {
            let path = self.project_path(&format!("/operations/{}", seg(id)));
            loop {
                let reply = self.call(Method::GET, &path, &[], None, deadline).await?;
                let op = &reply.body["operation"];
                let status = op["status"].as_str().unwrap_or("");
                match op_state(status) {
                    OpState::Done => break,
                    OpState::Bad => {
                        return Err(NeonError::Operation {
                            id: id.clone(),
                            action: op["action"].as_str().unwrap_or("").to_owned(),
                            status: status.to_owned(),
                            error: op["error"].as_str().map(|e| self.redact(e)),
                        })
                    }
                    OpState::Running => {
                        if self.s.poll_interval >= deadline.remaining() {
                            return Err(NeonError::Unavailable {
                                message: format!(
                                    "Neon operation {id} still {status:?} at the deadline"
                                ),
                                retry_after: None,
                            });
                        }
                        tokio::time::sleep(self.s.poll_interval).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Exponential from `retry_base`, capped, with jitter so that replicas do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .s
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let d = exp.min(self.s.retry_max);
        d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    fn redact(&self, text: &str) -> String {
        let key = self.key.expose();
        if key.is_empty() {
            text.to_owned()
        } else {
            text.replace(key, "***")
        }
    }
}

/// Everything but RFC 3986's unreserved characters, so that ids (`br-…`) stay readable.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment.
pub(super) fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// One call as sent, the same on every attempt.
struct Request<'a> {
    /// `METHOD /path`, for log lines and error texts.
    call: String,
    request_id: String,
    /// Whether a repeat cannot do the work twice: everything but POST.
    idempotent: bool,
    method: Method,
    path: &'a str,
    query: &'a [(&'a str, &'a str)],
    body: Option<&'a Value>,
}

/// What one attempt came to.
enum Attempt {
    Over(Result<Reply, NeonError>),
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
}

/// Whether Neon's refusal may pass on its own. A 422 is transient only while something is "not
/// ready": Neon gives that state no code of its own, so its message text is all there is.
fn transient(status: StatusCode, message: &str, idempotent: bool) -> bool {
    match status.as_u16() {
        423 | 429 | 503 | 524 => true,
        422 => message.to_ascii_lowercase().contains("not ready"),
        500 | 502 | 504 => idempotent,
        _ => false,
    }
}

/// A successful answer's body; an empty one is `null`.
fn success(call: &str, text: &str) -> Result<Reply, NeonError> {
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).map_err(|e| NeonError::Unavailable {
            message: format!("Neon {call}: answer is not JSON: {e}"),
            retry_after: None,
        })?
    };
    Ok(Reply { body })
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `(code, message, request_id)` of a Neon error body; a non-JSON body (a proxy's HTML page)
/// becomes a short message.
fn parse_error(text: &str) -> (String, String, Option<String>) {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.is_object() => (
            v["code"].as_str().unwrap_or("").to_owned(),
            v["message"].as_str().unwrap_or("").to_owned(),
            v["request_id"].as_str().map(str::to_owned),
        ),
        _ => (String::new(), text.chars().take(200).collect(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_states_follow_the_contract() {
        assert!(matches!(op_state("finished"), OpState::Done));
        assert!(matches!(op_state("skipped"), OpState::Done));
        for s in ["failed", "error", "cancelled"] {
            assert!(matches!(op_state(s), OpState::Bad), "{s}");
        }
        for s in [
            "scheduling",
            "running",
            "cancelling",
            "paused-for-a-reason",
            "",
        ] {
            assert!(matches!(op_state(s), OpState::Running), "{s}");
        }
    }

    #[test]
    fn branch_limit_is_recognised_in_every_documented_shape() {
        let api = |status: u16, code: &str, message: &str| NeonError::Api {
            status: StatusCode::from_u16(status).unwrap(),
            code: code.into(),
            message: message.into(),
            request_id: None,
            call: "POST /x".into(),
        };
        assert!(api(422, "BRANCHES_LIMIT_EXCEEDED", "").is_branch_limit());
        assert!(api(409, "", "Branches limit exceeded").is_branch_limit());
        assert!(api(422, "", "number of branches exceeds the limit of 10").is_branch_limit());
        assert!(!api(409, "", "branch already exists").is_branch_limit());
        assert!(!api(400, "", "bad limit").is_branch_limit());
    }

    #[test]
    fn error_bodies_are_parsed_and_html_is_cut_short() {
        let (code, msg, id) = parse_error(r#"{"code":"X","message":"m","request_id":"r"}"#);
        assert_eq!(
            (code.as_str(), msg.as_str(), id.as_deref()),
            ("X", "m", Some("r"))
        );
        let (_, msg, id) = parse_error(&"<html>".repeat(100));
        assert_eq!((msg.chars().count(), id), (200, None));
    }

    #[test]
    fn backoff_grows_and_is_capped_and_jittered() {
        let c = NeonClient::new(
            Secret::new("k"),
            ClientSettings {
                base_url: "http://x/".into(),
                project_id: "p".into(),
                request_timeout: Duration::from_secs(1),
                retry_base: Duration::from_millis(100),
                retry_max: Duration::from_millis(1000),
                poll_interval: Duration::from_millis(10),
            },
        )
        .unwrap();
        for _ in 0..20 {
            let b1 = c.backoff(1);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = c.backoff(3);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            assert!(c.backoff(30) <= Duration::from_millis(1000));
        }
        assert_eq!(c.redact("Bearer k k"), "Bearer *** ***");
        assert!(!format!("{c:?}").contains("\"k\""));
        assert_eq!(seg("br-a_b.c~d"), "br-a_b.c~d");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
