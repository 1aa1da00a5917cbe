//! Values that must never reach a log: their `Debug` prints `***` instead of the value, so a
//! struct holding one can derive `Debug` safely.

/// A secret string (a password, an admin URL with its password, an API key).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The 32-byte key that seals stored passwords (and from which the builder's password is
/// derived); written in the config as 64 hex characters.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    pub fn from_hex(s: &str) -> Option<Self> {
        super::hex_32(s).map(Self)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
        let key = EncryptionKey::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(key.expose(), &[0xab; 32]);
        assert_eq!(format!("{key:?}"), "EncryptionKey(***)");
        assert!(EncryptionKey::from_hex("abcd").is_none());
    }
}
