//! `[[webhooks]]` and the audit trail's settings (`audit_retention`, `expiring_notice`,
//! `webhook_retry_base`); errors name the entry by position (`webhooks[0].secret_env`).

use super::raw::RawWebhook;
use super::{duration_or, Config};
use crate::domain::{EventKind, Secret, Webhook};
use crate::service::AuditSettings;
use anyhow::{anyhow, bail};
use std::time::Duration;

pub(super) struct RawAudit {
    pub retention: Option<String>,
    pub expiring_notice: Option<String>,
    pub retry_base: Option<String>,
    pub webhooks: Vec<RawWebhook>,
}

const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_EXPIRING_NOTICE: Duration = Duration::from_secs(3600);
const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);

/// The file's settings over `base`'s; its webhooks after `base`'s. A secret is read from its
/// variable now: a webhook whose secret is missing fails the start.
pub(super) fn resolve(raw: RawAudit, base: Option<&Config>) -> anyhow::Result<AuditSettings> {
    let old = base.map(|b| &b.audit);
    let mut webhooks = old.map(|a| a.webhooks.clone()).unwrap_or_default();
    for (i, w) in raw.webhooks.into_iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let url = reqwest::Url::parse(&w.url).map_err(|e| anyhow!("{at}.url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("{at}.url: {:?} is not an http(s) URL", w.url);
        }
        let secret = std::env::var(&w.secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "{at}.secret_env: the environment variable {} (the webhook's HMAC secret) is not set",
                    w.secret_env
                )
            })?;
        let events = match w.events {
            None => None,
            Some(names) if names.is_empty() => {
                bail!("{at}.events: must not be empty (leave it out for all events)")
            }
            Some(names) => Some(
                names
                    .iter()
                    .enumerate()
                    .map(|(j, n)| {
                        EventKind::parse(n).ok_or_else(|| {
                            let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                            anyhow!(
                                "{at}.events[{j}]: unknown event {n:?} (one of {})",
                                known.join(", ")
                            )
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        };
        let name = w
            .name
            .unwrap_or_else(|| format!("webhook{}", webhooks.len()));
        let plain = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !plain {
            bail!("{at}.name: {name:?} must be 1–63 of [A-Za-z0-9_.-]");
        }
        if webhooks.iter().any(|h: &Webhook| h.name == name) {
            bail!("{at}.name: {name:?} is used twice");
        }
        webhooks.push(Webhook {
            name,
            url: url.to_string(),
            secret: Secret::new(secret),
            events,
        });
    }
    Ok(AuditSettings {
        retention: duration_or(
            "audit_retention",
            raw.retention,
            old.map(|a| a.retention),
            DEFAULT_RETENTION,
        )?,
        expiring_notice: duration_or(
            "expiring_notice",
            raw.expiring_notice,
            old.map(|a| a.expiring_notice),
            DEFAULT_EXPIRING_NOTICE,
        )?,
        retry_base: duration_or(
            "webhook_retry_base",
            raw.retry_base,
            old.map(|a| a.retry_base),
            DEFAULT_RETRY_BASE,
        )?,
        webhooks,
    })
}
