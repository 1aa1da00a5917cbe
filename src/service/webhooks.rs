//! The webhook deliverer, one per replica: claims due outbox rows for a lease, posts each
//! event signed with its webhook's secret (no control-store connection held meanwhile), and
//! marks it delivered or due again after an exponential backoff with jitter. A replica that
//! dies mid-delivery leaves its rows to be claimed again once their lease has passed:
//! at-least-once, the `X-Previewdb-Delivery` id the same on every attempt.

use super::Environments;
use crate::domain::Webhook;
use crate::store::Due;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// Retries wait at most this long.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// How long a claimed row is this replica's; well over a post's timeout.
const LEASE: Duration = Duration::from_secs(30);
/// A receiver that has not answered by then failed this attempt.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox is looked at when it had nothing due.
const POLL: Duration = Duration::from_millis(200);
/// Rows claimed at once.
const BATCH: i64 = 32;

/// Delivers until the task is aborted; returns at once without webhooks.
pub async fn run_deliveries(envs: Arc<Environments>) {
    if envs.audit.webhooks.is_empty() {
        return;
    }
    // A redirect is an answer that is not a 2xx: it is not followed (a POST would turn into a GET).
    let http = reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let http = match http {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; nothing will be delivered");
            return;
        }
    };
    loop {
        match envs.deliver_due(&http).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "webhooks: outbox not read"),
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Environments {
    /// Posts every due delivery once; how many were claimed.
    async fn deliver_due(&self, http: &reqwest::Client) -> super::Result<usize> {
        let names: Vec<String> = self.audit.webhooks.iter().map(|w| w.name.clone()).collect();
        let due = self.store.claim_deliveries(&names, LEASE, BATCH).await?;
        for d in &due {
            let Some(hook) = self.audit.webhooks.iter().find(|w| w.name == d.webhook) else {
                continue;
            };
            let outcome = post(http, hook, d).await;
            self.metrics.webhook_delivery(
                &hook.name,
                if outcome.is_ok() {
                    "delivered"
                } else {
                    "failed"
                },
            );
            match outcome {
                Ok(()) => self.store.delivered(d.id).await?,
                Err(error) => {
                    let delay = backoff(self.audit.retry_base, d.attempts);
                    tracing::warn!(webhook = %hook.name, delivery = %d.id, attempts = d.attempts,
                        retry_in_ms = delay.as_millis() as u64, error = %error, "webhook delivery failed");
                    self.store.retry_delivery(d.id, delay, &error).await?;
                }
            }
        }
        Ok(due.len())
    }
}

/// The body of a delivery: the event, and the environment as it is now.
pub(crate) fn body(d: &Due) -> serde_json::Value {
    let e = &d.event;
    let environment = d
        .environment
        .clone()
        .unwrap_or_else(|| serde_json::json!({ "id": e.environment_id, "key": e.key }));
    serde_json::json!({
        "id": e.id,
        "at": e.at,
        "event": e.event,
        "actor": e.actor,
        "request_id": e.request_id,
        "outcome": e.outcome,
        "detail": e.detail,
        "environment": environment,
    })
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(http: &reqwest::Client, hook: &Webhook, d: &Due) -> Result<(), String> {
    let body = serde_json::to_vec(&body(d)).expect("JSON serialises");
    let res = http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header(
            "x-previewdb-signature",
            signature(hook.secret.expose().as_bytes(), &body),
        )
        .header("x-previewdb-delivery", d.id.to_string())
        .header("x-previewdb-event", &d.event.event)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    match res.status() {
        s if s.is_success() => Ok(()),
        s => Err(format!("the receiver answered {s}")),
    }
}

/// The wait before attempt `attempts + 1`: `base`, doubled per attempt made, capped, times a
/// random factor of 0.5–1.0 so that receivers coming back are not hit all at once.
fn backoff(base: Duration, attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let delay = base.saturating_mul(1 << exp).min(MAX_RETRY_DELAY);
    delay.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(1);
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (60, 300)] {
            let d = backoff(base, attempts);
            let full = Duration::from_secs(full);
            assert!(d <= full && d >= full / 2, "{attempts}: {d:?}");
        }
    }
}
