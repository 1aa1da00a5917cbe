//! What a caller may reach: the keys it may act on (glob patterns such as `acme/web#*`), the
//! targets and blueprints it may create on, and how many live environments its keys may hold.
//! Configured per token (and per OIDC issuer, templated from the token's claims); checked by the
//! service, and pushed into the control store's queries so that listings and sweeps only ever
//! see the caller's own keys.

use super::env_key::MAX_KEY_CHARS;

/// A glob over environment keys: `*` stands for any run of characters (`/` and `#` included),
/// `?` for exactly one; everything else is itself. Matched against the whole key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern(String);

impl KeyPattern {
    /// 1–200 characters without control characters, like a key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.chars().count() > MAX_KEY_CHARS {
            return Err(format!(
                "{raw:?} must be 1–{MAX_KEY_CHARS} characters (a glob such as \"acme/web#*\")"
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(format!("{raw:?} must not contain control characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The literal text `s` as a pattern matching only itself, for building patterns from
    /// values a caller does not control the meaning of (an OIDC claim): its `*`, `?` and `\`
    /// are escaped with `\`.
    pub fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, '*' | '?' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, key: &str) -> bool {
        let pattern = self.tokens();
        let key: Vec<char> = key.chars().collect();
        glob_match(&pattern, &key)
    }

    /// The same pattern as a `LIKE` pattern with the default escape `\`, so that PostgreSQL
    /// filters by it: `*` → `%`, `?` → `_`, and a literal `%`, `_` or `\` escaped.
    pub fn to_like(&self) -> String {
        let mut like = String::with_capacity(self.0.len() + 4);
        for token in self.tokens() {
            match token {
                Token::Any => like.push('%'),
                Token::One => like.push('_'),
                Token::Literal(c) => {
                    if matches!(c, '%' | '_' | '\\') {
                        like.push('\\');
                    }
                    like.push(c);
                }
            }
        }
        like
    }

    fn tokens(&self) -> Vec<Token> {
        let mut tokens = vec![];
        let mut chars = self.0.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::Any,
                '?' => Token::One,
                // A trailing `\` stands for itself.
                '\\' => Token::Literal(chars.next().unwrap_or('\\')),
                c => Token::Literal(c),
            });
        }
        tokens
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Any,
    One,
    Literal(char),
}

/// Iterative glob matching with one backtrack point (the last `*`): linear in practice and
/// never exponential, whatever the pattern.
fn glob_match(pattern: &[Token], key: &[char]) -> bool {
    let (mut p, mut k) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        match pattern.get(p) {
            Some(Token::Any) => {
                star = Some((p, k));
                p += 1;
            }
            Some(Token::One) => (p, k) = (p + 1, k + 1),
            Some(Token::Literal(c)) if *c == key[k] => (p, k) = (p + 1, k + 1),
            _ => match star {
                Some((sp, sk)) => {
                    star = Some((sp, sk + 1));
                    (p, k) = (sp + 1, sk + 1);
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|t| *t == Token::Any)
}

/// A caller's reach. `None` in a field means no restriction there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub keys: Option<Vec<KeyPattern>>,
    /// Targets and target groups, by the name a create gives (or the default it falls to).
    pub targets: Option<Vec<String>>,
    /// Blueprints by name; the empty database is always allowed.
    pub blueprints: Option<Vec<String>>,
    /// At most this many live environments among the keys of `keys`.
    pub max_live: Option<u32>,
}

impl Reach {
    pub fn covers_key(&self, key: &str) -> bool {
        self.keys
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(key)))
    }

    pub fn allows_target(&self, name: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| t == name))
    }

    pub fn allows_blueprint(&self, name: Option<&str>) -> bool {
        match (name, &self.blueprints) {
            (None, _) | (_, None) => true,
            (Some(name), Some(bs)) => bs.iter().any(|b| b == name),
        }
    }

    /// The key patterns as `LIKE` patterns, for the control store; `None` for every key.
    pub fn key_likes(&self) -> Option<Vec<String>> {
        self.keys
            .as_ref()
            .map(|ps| ps.iter().map(KeyPattern::to_like).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> KeyPattern {
        KeyPattern::parse(s).unwrap()
    }

    #[test]
    fn globs_match_whole_keys() {
        assert!(p("acme/web#*").matches("acme/web#123"));
        assert!(p("acme/web#*").matches("acme/web#"));
        assert!(!p("acme/web#*").matches("acme/web2#1"));
        assert!(!p("acme/web#*").matches("xacme/web#1"));
        assert!(p("acme/*").matches("acme/api#7/x"));
        assert!(p("*#1?").matches("a#12"));
        assert!(!p("*#1?").matches("a#1"));
        assert!(p("a*b*c").matches("aXbYbZc"));
        assert!(!p("a*b*c").matches("aXbYbZ"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exact1"));
        assert!(p("*").matches(""));
    }

    #[test]
    fn escaped_metacharacters_are_literal() {
        let pattern = p(&format!("{}#*", KeyPattern::escape("we*rd?")));
        assert!(pattern.matches("we*rd?#1"));
        assert!(!pattern.matches("weXXrd!#1"));
        assert_eq!(pattern.to_like(), "we*rd?#%");
    }

    #[test]
    fn like_patterns_escape_what_like_treats_specially() {
        assert_eq!(p("acme/web#*").to_like(), "acme/web#%");
        assert_eq!(p("a_b%c?").to_like(), "a\\_b\\%c_");
        assert_eq!(p("back\\\\slash").to_like(), "back\\\\slash");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(KeyPattern::parse("").is_err());
        assert!(KeyPattern::parse("a\nb").is_err());
        assert!(KeyPattern::parse(&"x".repeat(201)).is_err());
    }

    #[test]
    fn an_unrestricted_reach_allows_everything() {
        let all = Reach::default();
        assert!(all.covers_key("any"));
        assert!(all.allows_target("t"));
        assert!(all.allows_blueprint(Some("b")));
        assert_eq!(all.key_likes(), None);
        let some = Reach {
            keys: Some(vec![p("acme/web#*")]),
            targets: Some(vec!["fleet".into()]),
            blueprints: Some(vec!["app".into()]),
            max_live: Some(3),
        };
        assert!(!some.covers_key("acme/api#1"));
        assert!(!some.allows_target("local"));
        assert!(some.allows_blueprint(None));
        assert!(!some.allows_blueprint(Some("other")));
    }
}
