//! The name of a PostgreSQL extension as a blueprint lists it (`pgcrypto`, `uuid-ossp`,
//! `postgis_topology`).

use super::identifier::MAX_IDENT_BYTES;
use super::InvalidInput;

/// Any name PostgreSQL accepts as an extension name: an identifier of 1–63 bytes that is always
/// quoted where it reaches SQL ([`ExtensionName::quoted`]), so `-` and capitals are fine. Like
/// PostgreSQL (`check_valid_extension_name`), refuses `--`, a leading or trailing `-` and path
/// separators, since the name also names the extension's control file on the server's disk;
/// control characters are refused too: no real extension has them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ExtensionName(String);

impl ExtensionName {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let err = |reason: &str| InvalidInput::new("extension", format!("{raw:?} {reason}"));
        if raw.is_empty() || raw.len() > MAX_IDENT_BYTES {
            return Err(err("must be 1–63 bytes"));
        }
        if raw.chars().any(char::is_control) {
            return Err(err("must not contain control characters (NUL, newline, …)"));
        }
        if raw.contains("--") || raw.starts_with('-') || raw.ends_with('-') {
            return Err(err(
                "must not contain \"--\" nor begin or end with \"-\" (PostgreSQL's rule)",
            ));
        }
        if raw.contains('/') || raw.contains('\\') {
            return Err(err("must not contain a path separator"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier.
    pub fn quoted(&self) -> String {
        postgres_protocol::escape::escape_identifier(&self.0)
    }
}

impl std::fmt::Display for ExtensionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_extension_names() {
        for ok in [
            "uuid-ossp",
            "postgis_topology",
            "pg_trgm",
            "pgcrypto",
            "address_standardizer-3",
            "Odd\"Name",
            &"x".repeat(63),
        ] {
            assert!(ExtensionName::parse(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(
            ExtensionName::parse("uuid-ossp").unwrap().quoted(),
            "\"uuid-ossp\""
        );
        assert_eq!(ExtensionName::parse("a\"b").unwrap().quoted(), "\"a\"\"b\"");
    }

    #[test]
    fn refuses_what_postgresql_refuses_or_truncates() {
        for bad in [
            "",
            &"x".repeat(64),
            "a\0b",
            "a\nb",
            "a--b",
            "-a",
            "a-",
            "../plpgsql",
            "a\\b",
        ] {
            assert!(ExtensionName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
