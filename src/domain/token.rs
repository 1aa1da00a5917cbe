//! API tokens: the scopes a token may hold and the digest it is configured by. Below both the
//! configuration (which parses them) and the HTTP layer (which checks them).

/// API token scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Scope {
    #[serde(rename = "environments:read")]
    Read,
    #[serde(rename = "environments:write")]
    Write,
    #[serde(rename = "environments:delete")]
    Delete,
    #[serde(rename = "admin")]
    Admin,
    /// Reading passwords back (`?reveal=true`). Not implied by `admin`: a token holds it when
    /// listed, or by [`Scope::with_reveal_default`].
    #[serde(rename = "environments:reveal")]
    Reveal,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::Delete,
        Scope::Admin,
        Scope::Reveal,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sc| sc.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "environments:read",
            Scope::Write => "environments:write",
            Scope::Delete => "environments:delete",
            Scope::Admin => "admin",
            Scope::Reveal => "environments:reveal",
        }
    }

    /// A token that may write (or is `admin`) may also reveal, unless `reveal = false` says
    /// otherwise: whoever can create an environment gets its password in the answer anyway.
    pub fn with_reveal_default(
        mut scopes: Vec<Scope>,
        reveal: Option<bool>,
    ) -> Result<Vec<Scope>, String> {
        let listed = scopes.contains(&Scope::Reveal);
        let writes = scopes.contains(&Scope::Write) || scopes.contains(&Scope::Admin);
        match reveal {
            Some(false) if listed => {
                return Err("reveal = false contradicts the scope environments:reveal".into())
            }
            Some(false) => {}
            Some(true) | None if writes && !listed => scopes.push(Scope::Reveal),
            Some(true) if !listed => {
                return Err("reveal = true needs environments:write or admin;                             else list the scope environments:reveal"
                    .into())
            }
            _ => {}
        }
        Ok(scopes)
    }
}

/// A configured token: its name (for messages and the audit trail), digest, scopes, and what
/// it may reach.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub name: String,
    pub sha256: TokenDigest,
    pub scopes: Vec<Scope>,
    pub reach: super::Reach,
}

/// SHA-256 of a bearer token, as the config stores it. Compared in constant time, so that
/// timing tells nothing about how much of a guess was right, and never printed.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// 64 hex characters, as `[[tokens]] sha256` is written.
    pub fn from_hex(s: &str) -> Option<Self> {
        super::hex_32(s).map(Self)
    }

    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl AsRef<[u8]> for TokenDigest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(***)")
    }
}

/// SHA-256 of a bearer token, to compare with the configured digests.
pub fn token_digest(token: &str) -> TokenDigest {
    use sha2::Digest;
    TokenDigest(sha2::Sha256::digest(token.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::Scope::{self, *};
    use super::*;

    fn with(scopes: &[Scope], reveal: Option<bool>) -> Result<Vec<Scope>, String> {
        Scope::with_reveal_default(scopes.to_vec(), reveal)
    }

    #[test]
    fn writers_and_admins_reveal_unless_told_not_to() {
        assert!(with(&[Read, Write], None).unwrap().contains(&Reveal));
        assert!(with(&[Admin], None).unwrap().contains(&Reveal));
        assert!(!with(&[Read, Write], Some(false)).unwrap().contains(&Reveal));
        assert!(!with(&[Admin], Some(false)).unwrap().contains(&Reveal));
        assert!(!with(&[Read], None).unwrap().contains(&Reveal));
        assert!(with(&[Read, Reveal], None).unwrap().contains(&Reveal));
        assert_eq!(with(&[Write, Reveal], None).unwrap().len(), 2);
    }

    #[test]
    fn digests_read_from_hex_match_and_never_print() {
        let digest = token_digest("tok");
        let configured = TokenDigest::from_hex(&hex::encode(digest)).unwrap();
        assert!(configured.matches(&digest));
        assert!(!configured.matches(&token_digest("tok2")));
        assert!(TokenDigest::from_hex("abcd").is_none());
        assert_eq!(format!("{configured:?}"), "TokenDigest(***)");
    }

    #[test]
    fn contradictions_are_refused() {
        assert!(with(&[Read, Reveal], Some(false)).is_err());
        assert!(with(&[Read], Some(true)).is_err());
    }
}
