//! Who acts on an environment: the name the audit trail gives it, the request it came in, and
//! what it may reach. Built at the edge (a token, an OIDC subject) or by the service itself for
//! its own upkeep.

use super::Reach;

/// The one acting: a token's name, an OIDC subject, or the service's own `sweeper` and
/// `reconciler`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The `x-request-id` of the request, when the action came in one.
    pub request_id: Option<String>,
    pub reach: Reach,
}

impl Actor {
    /// The caller of a request.
    pub fn caller(name: impl Into<String>, request_id: Option<String>, reach: Reach) -> Self {
        Self {
            name: name.into(),
            request_id,
            reach,
        }
    }

    /// The service itself, doing its upkeep (`sweeper`, `reconciler`, `quota`): it reaches
    /// everything.
    pub fn upkeep(name: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            request_id: None,
            reach: Reach::default(),
        }
    }
}
