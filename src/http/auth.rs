//! Bearer tokens and their scopes. Tokens are configured as SHA-256 digests and compared in
//! constant time; the token itself is never stored or logged.

use super::{ApiError, AppState};
use crate::domain::{token_digest, Actor, Scope};
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, StatusCode};

/// The authenticated caller of a request.
pub(super) struct Caller {
    pub actor: Actor,
    scopes: Vec<Scope>,
}

impl Caller {
    /// `admin` holds every scope but `environments:reveal`, which a token holds only when its
    /// configuration gave it (see `Scope::with_reveal_default`).
    pub(super) fn require(&self, scope: Scope) -> Result<(), ApiError> {
        let by_admin = scope != Scope::Reveal && self.scopes.contains(&Scope::Admin);
        if self.scopes.contains(&scope) || by_admin {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} lacks the scope {}",
                self.actor.name,
                scope.as_str()
            ),
        ))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        let digest = token_digest(token);
        let found = state.tokens.iter().fold(None, |found, t| {
            if t.sha256.matches(&digest) {
                Some(t)
            } else {
                found
            }
        });
        let t = found.ok_or_else(|| ApiError::unauthorized("unknown token"))?;
        // Set by `SetRequestIdLayer` (or the caller) before any handler runs.
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Caller {
            actor: Actor::caller(&t.name, request_id, t.reach.clone()),
            scopes: t.scopes.clone(),
        })
    }
}
