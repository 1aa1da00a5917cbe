//! Lifecycle events of the audit trail: what happened to an environment, who did it, in which
//! request and how it ended — and the webhooks that are told about them.

use super::{Actor, Secret};

/// What happened. The names are fixed: they are stored, filtered on by webhooks and read by
/// callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    /// A repeat create answered with the live environment (200).
    HandedOut,
    Extended,
    Rotated,
    Reset,
    Migrated,
    Deleted,
    Swept,
    Reconciled,
    Failed,
    QuotaLocked,
    Expiring,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Created,
        EventKind::HandedOut,
        EventKind::Extended,
        EventKind::Rotated,
        EventKind::Reset,
        EventKind::Migrated,
        EventKind::Deleted,
        EventKind::Swept,
        EventKind::Reconciled,
        EventKind::Failed,
        EventKind::QuotaLocked,
        EventKind::Expiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::HandedOut => "handed_out",
            EventKind::Extended => "extended",
            EventKind::Rotated => "rotated",
            EventKind::Reset => "reset",
            EventKind::Migrated => "migrated",
            EventKind::Deleted => "deleted",
            EventKind::Swept => "swept",
            EventKind::Reconciled => "reconciled",
            EventKind::Failed => "failed",
            EventKind::QuotaLocked => "quota_locked",
            EventKind::Expiring => "expiring",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An event about to be written, with the change it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub actor: String,
    pub request_id: Option<String>,
    /// `ok`, or `error` for a change that failed (`failed`, an error in `detail`).
    pub outcome: &'static str,
    /// A small JSON object: a ttl and expiry, an error message.
    pub detail: serde_json::Value,
}

impl NewEvent {
    pub fn new(kind: EventKind, actor: &Actor, detail: serde_json::Value) -> Self {
        Self {
            kind,
            actor: actor.name.clone(),
            request_id: actor.request_id.clone(),
            outcome: match kind {
                EventKind::Failed => "error",
                _ => "ok",
            },
            detail,
        }
    }
}

/// A `[[webhooks]]` entry: where events are posted, the secret their bodies are signed with,
/// and which events it wants (`None`: all).
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Names it in the outbox and in metrics: `name`, else `webhook<N>` by position.
    pub name: String,
    pub url: String,
    pub secret: Secret,
    pub events: Option<Vec<EventKind>>,
}

impl Webhook {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.as_ref().is_none_or(|es| es.contains(&kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("exploded"), None);
    }

    #[test]
    fn a_failure_is_an_error() {
        let actor = Actor::upkeep("sweeper");
        let e = NewEvent::new(EventKind::Failed, &actor, serde_json::json!({}));
        assert_eq!((e.outcome, e.actor.as_str()), ("error", "sweeper"));
        assert_eq!(
            NewEvent::new(EventKind::Swept, &actor, serde_json::json!({})).outcome,
            "ok"
        );
    }
}
