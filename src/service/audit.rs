//! The audit trail as the service keeps it: its settings, the pages callers read (of one
//! environment, or of every key within their reach), and the upkeep that sends `expiring`
//! notices and removes events past their retention. Events themselves are written by the
//! store in the transaction of the change they report (see `store::events`).

use super::{Environments, Result};
use crate::domain::{Actor, EventKind, NewEvent, Webhook};
use crate::store::{EventQuery, StoredEvent};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The settings of the audit trail and its webhooks.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// How long events are kept after their environment's deletion.
    pub retention: Duration,
    /// How long before its expiry an environment's `expiring` event is written.
    pub expiring_notice: Duration,
    pub webhooks: Vec<Webhook>,
    /// The first retry of a failed delivery waits this long, each later one twice as long
    /// (capped at 5 minutes), with jitter.
    pub retry_base: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 24 * 3600),
            expiring_notice: Duration::from_secs(3600),
            webhooks: vec![],
            retry_base: Duration::from_secs(1),
        }
    }
}

/// Where a page of events starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsFrom {
    /// The beginning.
    Start,
    /// Events at or after this time.
    Time(DateTime<Utc>),
    /// Events after this one (the `next` of a previous page).
    After(i64),
}

/// A page of events, oldest first, and where the next one starts.
pub struct EventPage {
    pub items: Vec<StoredEvent>,
    /// Where to continue: after the last item, or where this page started when it is empty.
    pub next: EventsFrom,
    /// Whether more events were already there past this page.
    pub more: bool,
}

impl Environments {
    /// The events of the environment `reference` names (refused, like a GET, outside the
    /// caller's keys).
    pub async fn environment_events(
        &self,
        reference: &str,
        from: EventsFrom,
        limit: i64,
        actor: &Actor,
    ) -> Result<EventPage> {
        let record = self.find(reference, actor).await?;
        self.event_page(Some(record.id), None, from, limit).await
    }

    /// The events of every key within the caller's reach.
    pub async fn events(&self, from: EventsFrom, limit: i64, actor: &Actor) -> Result<EventPage> {
        let keys = actor.reach.key_likes();
        self.event_page(None, keys.as_deref(), from, limit).await
    }

    async fn event_page(
        &self,
        environment: Option<uuid::Uuid>,
        keys: Option<&[String]>,
        from: EventsFrom,
        limit: i64,
    ) -> Result<EventPage> {
        let (after, since) = match from {
            EventsFrom::Start => (None, None),
            EventsFrom::Time(t) => (None, Some(t)),
            EventsFrom::After(id) => (Some(id), None),
        };
        let mut items = self
            .store
            .events(&EventQuery {
                environment,
                keys,
                after,
                since,
                // One more than asked for tells whether there is more.
                limit: limit + 1,
            })
            .await?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next = items.last().map_or(from, |e| EventsFrom::After(e.id));
        Ok(EventPage { items, next, more })
    }

    /// Writes an event that reports no change of the record (its change is on the target).
    pub(super) async fn note(
        &self,
        env: uuid::Uuid,
        kind: EventKind,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Result<()> {
        Ok(self
            .store
            .record_event(env, &NewEvent::new(kind, actor, detail))
            .await?)
    }

    /// Writes one `expiring` event for each environment whose expiry is now within the
    /// notice, once per expiry across replicas.
    pub async fn notice_expiring(&self) -> Result<usize> {
        let actor = Actor::upkeep("sweeper");
        let notice = self.audit.expiring_notice;
        Ok(self
            .store
            .notice_expiring(notice, |expires_at| {
                NewEvent::new(
                    EventKind::Expiring,
                    &actor,
                    serde_json::json!({ "expires_at": expires_at }),
                )
            })
            .await?)
    }

    /// Removes the events of environments deleted longer than `audit_retention` ago.
    pub async fn prune_events(&self) -> Result<u64> {
        Ok(self.store.prune_events(self.audit.retention).await?)
    }
}
