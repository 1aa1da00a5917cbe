//! The caller's name for an environment, e.g. `acme/web#123`.

use super::InvalidInput;

/// Longest key accepted, in characters.
pub(super) const MAX_KEY_CHARS: usize = 200;

/// A validated environment key: 1–200 printable characters, no control characters, no
/// surrounding whitespace. Quotes, semicolons, backslashes and non-ASCII are allowed: a key only
/// ever reaches SQL as a bind parameter, and object names are derived from it, never copied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EnvKey(String);

impl EnvKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let err = |reason: &str| InvalidInput::new("key", reason);
        if raw.is_empty() {
            return Err(err("must not be empty"));
        }
        if raw.chars().count() > MAX_KEY_CHARS {
            return Err(err(&format!("must be at most {MAX_KEY_CHARS} characters")));
        }
        if raw.chars().any(char::is_control) {
            return Err(err(
                "must not contain control characters (newline, NUL, tab, …)",
            ));
        }
        if raw.trim() != raw {
            return Err(err("must not start or end with whitespace"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `[a-z0-9_]` rendering of the key for use inside generated object names, at most `max` bytes.
    pub fn slug(&self, max: usize) -> String {
        let mut slug = String::with_capacity(max);
        for c in self.0.chars() {
            let c = c.to_ascii_lowercase();
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            };
            if c == '_' && (slug.is_empty() || slug.ends_with('_')) {
                continue;
            }
            if slug.len() == max {
                break;
            }
            slug.push(c);
        }
        slug.trim_end_matches('_').to_owned()
    }
}

impl std::fmt::Display for EnvKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_awkward_printable_keys() {
        for k in [
            "acme/web#123",
            "it's; DROP TABLE x;--",
            "back\\slash",
            "café/日本#1",
            "\"q\"",
        ] {
            assert!(EnvKey::parse(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn refuses_empty_long_and_control_characters() {
        assert!(EnvKey::parse("").is_err());
        assert!(EnvKey::parse(&"a".repeat(201)).is_err());
        assert!(EnvKey::parse(&"a".repeat(200)).is_ok());
        assert!(EnvKey::parse("a\nb").is_err());
        assert!(EnvKey::parse("a\0b").is_err());
        assert!(EnvKey::parse(" a").is_err());
    }

    #[test]
    fn slug_is_lowercase_alnum_underscore_and_capped() {
        let k = EnvKey::parse("Acme/Web#123 — café").unwrap();
        assert_eq!(k.slug(40), "acme_web_123_caf");
        assert_eq!(EnvKey::parse("';--").unwrap().slug(40), "");
        assert!(EnvKey::parse(&"x".repeat(200)).unwrap().slug(30).len() == 30);
    }
}
