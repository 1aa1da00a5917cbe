//! Pages of `GET /v1/environments`: `?limit=` and an opaque `?cursor=` naming the last item
//! of the previous page, so that pages stay stable while environments are created.

use super::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub(super) const DEFAULT_LIMIT: i64 = 100;
pub(super) const MAX_LIMIT: i64 = 1000;

/// `?limit=`: 1–1000, default 100.
pub(super) fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    raw.parse::<i64>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "limit: {raw:?} must be an integer from 1 to {MAX_LIMIT}"
            ))
        })
}

/// The position after which the next page starts: the listing's sort key of its last item.
pub(super) fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{}:{id}", created_at.timestamp_micros()))
}

pub(super) fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || {
        ApiError::invalid(
            "cursor: not a cursor this service handed out (take `next` of the previous page)",
        )
    };
    let text = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ':');
    if parts.next() != Some("v1") {
        return Err(bad());
    }
    let micros: i64 = parts.next().and_then(|m| m.parse().ok()).ok_or_else(bad)?;
    let id = parts
        .next()
        .and_then(|i| Uuid::parse_str(i).ok())
        .ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((at, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_to_the_microsecond() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
    }

    #[test]
    fn foreign_cursors_are_refused() {
        for bad in [
            "",
            "!!",
            "djE6",
            &URL_SAFE_NO_PAD.encode("v2:1:x"),
            &URL_SAFE_NO_PAD.encode("v1:99999999999999999999:00000000-0000-0000-0000-000000000000"),
        ] {
            assert_eq!(
                decode_cursor(bad).unwrap_err().code,
                "invalid_input",
                "{bad}"
            );
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None).unwrap(), 100);
        assert_eq!(parse_limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "x", "1.5", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
