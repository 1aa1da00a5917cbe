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

#[cfg(test)]
mod tests {
    use crate::configuration::Config;
    use crate::domain::EventKind;
    use std::path::Path;
    use std::time::Duration;

    /// A config with `top` lines at the top level and `tables` at the end.
    fn parse(top: &str, tables: &str) -> anyhow::Result<Config> {
        let text = format!(
            "control_url = \"postgres://u@h/db\"\nencryption_key = \"{}\"\n{top}\n\
             [targets.local]\nkind = \"postgres\"\nadmin_url = \"postgres://a@h/postgres\"\n\
             public_host = \"h\"\n{tables}",
            "00".repeat(32)
        );
        Config::parse(&text, Path::new("."))
    }

    const HOOK: &str =
        "[[webhooks]]\nurl = \"https://h.example/x\"\nsecret_env = \"PREVIEWDB_TEST_HOOK_SECRET\"\n";

    #[test]
    fn webhooks_read_their_secret_and_events_and_errors_name_the_entry() {
        std::env::set_var("PREVIEWDB_TEST_HOOK_SECRET", "s3cret");
        let c = parse("", "").unwrap();
        assert_eq!(c.audit.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.audit.expiring_notice, Duration::from_secs(3600));
        assert!(c.audit.webhooks.is_empty());
        let c = parse(
            "audit_retention = \"7d\"",
            &format!("{HOOK}events = [\"expiring\", \"swept\"]\n{HOOK}"),
        )
        .unwrap();
        assert_eq!(c.audit.retention, Duration::from_secs(7 * 86_400));
        let names: Vec<_> = c.audit.webhooks.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["webhook0", "webhook1"]);
        assert_eq!(c.audit.webhooks[0].secret.expose(), "s3cret");
        assert!(c.audit.webhooks[0].wants(EventKind::Swept));
        assert!(!c.audit.webhooks[0].wants(EventKind::Created));
        assert!(c.audit.webhooks[1].wants(EventKind::Created));
        let unset =
            "[[webhooks]]\nurl = \"https://h/x\"\nsecret_env = \"PREVIEWDB_TEST_HOOK_UNSET\"\n";
        for (top, tables, names) in [
            (
                "",
                unset.to_owned(),
                "webhooks[0].secret_env: the environment variable PREVIEWDB_TEST_HOOK_UNSET",
            ),
            (
                "",
                format!("{HOOK}events = [\"exploded\"]\n"),
                "webhooks[0].events[0]: unknown event \"exploded\"",
            ),
            ("", format!("{HOOK}events = []\n"), "webhooks[0].events"),
            ("", HOOK.replace("https", "ftp"), "webhooks[0].url"),
            ("", format!("{HOOK}name = \"a b\"\n"), "webhooks[0].name"),
            (
                "audit_retention = \"forever\"",
                String::new(),
                "audit_retention",
            ),
            (
                "expiring_notice = \"soon\"",
                String::new(),
                "expiring_notice",
            ),
        ] {
            let e = format!("{:#}", parse(top, &tables).unwrap_err());
            assert!(e.contains(names), "{top}{tables}: {e}");
        }
    }
}
