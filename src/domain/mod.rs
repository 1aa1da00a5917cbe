//! Values parsed once at the edge (from a request or the config) into types that can only hold
//! valid values, the secrets among them (which never print), and the values every layer passes
//! around: an environment's connection and its resources.

mod actor;
mod connection;
mod env_key;
mod event;
mod extension;
mod identifier;
mod isolation;
mod labels;
mod reach;
mod resources;
mod secret;
mod source;
mod token;
mod ttl;

pub use actor::Actor;
pub use connection::Connection;
pub use env_key::EnvKey;
pub use event::{EventKind, NewEvent, Webhook};
pub use extension::ExtensionName;
pub use identifier::PgIdent;
pub use isolation::Isolation;
pub use labels::Labels;
pub use reach::{KeyPattern, Reach};
pub use resources::{ForeignResources, NeonResources, PostgresResources, Resources};
pub use secret::{EncryptionKey, Secret};
pub use source::{MigrationFormat, MigrationNameError, SourceFile};
pub use token::{token_digest, ApiToken, Scope, TokenDigest};
pub use ttl::Ttl;

/// Why a piece of caller input was refused; `field` names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// 32 bytes written as 64 hex characters, surrounding whitespace ignored.
fn hex_32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s.trim()).ok()?.try_into().ok()
}
