//! Sending a [`Call`] to the API within the command's deadline: `503` answers and connection
//! errors are retried with exponential backoff (or after what `Retry-After` asks), and an answer
//! that is not a success becomes a [`Failure`] whose exit code says what went wrong.

use super::request::Call;
use super::{exit, Failure};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait between two attempts when the server names none.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How one attempt ended, when it did not end the command.
enum Attempt {
    /// A success: its status and JSON.
    Answered(reqwest::StatusCode, Value),
    /// Worth another try after the wait; the failure is what to report if none is left.
    Retry(Failure, Duration),
}

/// Sends `call` until it is answered other than `503` or the deadline comes: the status and JSON
/// of a success, or the failure with its exit code.
pub(super) async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    call: &Call,
    deadline: Instant,
) -> Result<(reqwest::StatusCode, Value), Failure> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (failure, wait) = match attempt(http, base, token, call, left, backoff).await? {
            Attempt::Answered(status, body) => return Ok((status, body)),
            Attempt::Retry(failure, wait) => (failure, wait),
        };
        if Instant::now() + wait >= deadline {
            return Err(Failure::new(
                failure.code,
                format!("{} (giving up: --timeout leaves no time to retry)", failure),
            ));
        }
        tokio::time::sleep(wait).await;
        backoff *= 2;
    }
}

/// One request, given `left` to answer; `backoff` is the wait before a retry the server does not
/// time itself.
async fn attempt(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    call: &Call,
    left: Duration,
    backoff: Duration,
) -> Result<Attempt, Failure> {
    let mut req = http
        .request(call.method.clone(), format!("{base}{}", call.path))
        .bearer_auth(token)
        .timeout(left)
        .query(&call.query);
    if let Some(b) = &call.body {
        req = req.json(b);
    }
    match req.send().await {
        Ok(res) if res.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
            let retry_after = retry_after(res.headers());
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            Ok(Attempt::Retry(
                problem(status, &body),
                retry_after.unwrap_or(backoff.min(MAX_BACKOFF)),
            ))
        }
        Ok(res) => {
            let status = res.status();
            let text = res.text().await.map_err(|e| {
                Failure::new(
                    exit::UNAVAILABLE,
                    format!("reading the answer of {base}: {e}"),
                )
            })?;
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(Attempt::Answered(status, body));
            }
            Err(problem(status, &body))
        }
        Err(e) if e.is_timeout() => Err(Failure::new(
            exit::UNAVAILABLE,
            format!("{base}: no answer within --timeout"),
        )),
        Err(e) if e.is_connect() => Ok(Attempt::Retry(
            Failure::new(
                exit::UNAVAILABLE,
                format!("cannot reach {base}: {}", crate::pgconn::describe(&e)),
            ),
            backoff.min(MAX_BACKOFF),
        )),
        Err(e) => Err(Failure::new(
            exit::OTHER,
            format!("calling {base}: {}", crate::pgconn::describe(&e)),
        )),
    }
}

/// `Retry-After` when it gives seconds; an HTTP date leaves the wait to the backoff.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The API's problem (RFC 9457) as a failure: the exit code comes from its `code`, else from
/// the status.
fn problem(status: reqwest::StatusCode, body: &Value) -> Failure {
    let code = body.get("code").and_then(Value::as_str).unwrap_or("");
    let detail = body
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
    let exit_code = match code {
        "not_found" => exit::NOT_FOUND,
        "settings_conflict" | "not_ready" | "locked" | "cancelled" => exit::CONFLICT,
        "limit_reached" => exit::LIMIT,
        "unavailable" | "queue_full" | "deadline_exceeded" => exit::UNAVAILABLE,
        "blueprint_failed" | "migration_failed" | "provisioning_failed" => exit::FAILED,
        "malformed_json"
        | "invalid_query"
        | "invalid_path"
        | "bad_request"
        | "invalid_body"
        | "invalid_input"
        | "body_too_large"
        | "unsupported_media_type" => exit::INVALID,
        _ => match status.as_u16() {
            404 => exit::NOT_FOUND,
            409 => exit::CONFLICT,
            429 => exit::LIMIT,
            503 | 504 => exit::UNAVAILABLE,
            400 | 413 | 415 | 422 => exit::INVALID,
            502 => exit::FAILED,
            _ => exit::OTHER,
        },
    };
    let code = if code.is_empty() {
        String::new()
    } else {
        format!(" {code}")
    };
    Failure::new(exit_code, format!("{status}{code}: {detail}"))
}
