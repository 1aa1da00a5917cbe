//! PostgreSQL object names that previewdb generates or accepts from its config.

use super::InvalidInput;

/// PostgreSQL silently truncates identifiers past 63 bytes; we stay below.
pub(super) const MAX_IDENT_BYTES: usize = 63;

/// An identifier that can only hold `[a-z_][a-z0-9_]*`, at most 63 bytes. It is still always
/// quoted when it reaches SQL ([`PgIdent::quoted`]); the restriction makes names predictable and
/// collision-free rather than being the only line of defence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PgIdent(String);

impl PgIdent {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let err = |reason: &str| InvalidInput::new("identifier", format!("{raw:?} {reason}"));
        if raw.is_empty() || raw.len() > MAX_IDENT_BYTES {
            return Err(err("must be 1–63 bytes"));
        }
        let mut chars = raw.chars();
        let first = chars.next().unwrap_or('0');
        if !(first.is_ascii_lowercase() || first == '_') {
            return Err(err("must start with a lowercase letter or underscore"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(err("may only contain a-z, 0-9 and _"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier as a quoted SQL identifier.
    pub fn quoted(&self) -> String {
        postgres_protocol::escape::escape_identifier(&self.0)
    }
}

impl TryFrom<String> for PgIdent {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PgIdent> for String {
    fn from(id: PgIdent) -> String {
        id.0
    }
}

impl std::fmt::Display for PgIdent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_names() {
        assert!(PgIdent::parse("pdb_acme_1a2b").is_ok());
        for bad in ["", "A", "1abc", "a-b", "a\"b", "a b", "é", &"a".repeat(64)] {
            assert!(PgIdent::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(PgIdent::parse("abc").unwrap().quoted(), "\"abc\"");
    }
}
