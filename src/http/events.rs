//! The audit trail over HTTP: `GET /v1/environments/{ref}/events` and `GET /v1/events`, pages
//! oldest first with `?since=` (an RFC 3339 time, or the opaque `next` of the previous page)
//! and `?limit=`; `next` is always given, so a poller keeps passing it.

use super::auth::Caller;
use super::{paging, ApiError, ApiPath, ApiQuery, AppState};
use crate::domain::Scope;
use crate::service::{EventPage, EventsFrom};
use crate::store::StoredEvent;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    since: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub(super) struct EventsView {
    items: Vec<StoredEvent>,
    /// Pass as `since` to continue after this page (also after the last one).
    next: String,
    /// Whether more events were already there past this page.
    more: bool,
}

impl From<EventPage> for EventsView {
    fn from(p: EventPage) -> Self {
        EventsView {
            items: p.items,
            next: encode(p.next),
            more: p.more,
        }
    }
}

pub(super) async fn of_environment(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventsView>, ApiError> {
    caller.require(Scope::Read)?;
    let (from, limit) = q.parse()?;
    let page = state
        .envs
        .environment_events(&reference, from, limit, &caller.actor)
        .await?;
    Ok(Json(page.into()))
}

pub(super) async fn all(
    AxState(state): AxState<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventsView>, ApiError> {
    caller.require(Scope::Read)?;
    let (from, limit) = q.parse()?;
    Ok(Json(
        state.envs.events(from, limit, &caller.actor).await?.into(),
    ))
}

impl EventsQuery {
    fn parse(&self) -> Result<(EventsFrom, i64), ApiError> {
        let bad = |e: ApiError| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.detail);
        let limit = paging::parse_limit(self.limit.as_deref()).map_err(bad)?;
        let from = match self.since.as_deref() {
            None => EventsFrom::Start,
            Some(raw) => decode(raw).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!(
                        "since: {raw:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) \
                         nor the `next` of a previous page"
                    ),
                )
            })?,
        };
        Ok((from, limit))
    }
}

/// `ev1:<id>` (after that event) or `ev1t:<microseconds>` (from that time, for a page that
/// came back empty), base64url.
fn encode(from: EventsFrom) -> String {
    let text = match from {
        EventsFrom::Start => "ev1:0".to_owned(),
        EventsFrom::After(id) => format!("ev1:{id}"),
        EventsFrom::Time(t) => format!("ev1t:{}", t.timestamp_micros()),
    };
    URL_SAFE_NO_PAD.encode(text)
}

fn decode(raw: &str) -> Option<EventsFrom> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(EventsFrom::Time(t.with_timezone(&Utc)));
    }
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    if let Some(id) = text.strip_prefix("ev1:") {
        return id
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(EventsFrom::After);
    }
    let micros = text.strip_prefix("ev1t:")?.parse().ok()?;
    DateTime::from_timestamp_micros(micros).map(EventsFrom::Time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_times_are_read() {
        for from in [
            EventsFrom::After(0),
            EventsFrom::After(42),
            EventsFrom::Time(DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap()),
        ] {
            assert_eq!(decode(&encode(from)), Some(from));
        }
        assert_eq!(
            decode("2026-01-31T12:00:00+01:00"),
            Some(EventsFrom::Time(
                DateTime::parse_from_rfc3339("2026-01-31T11:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            ))
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            &URL_SAFE_NO_PAD.encode("ev1:-3"),
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
