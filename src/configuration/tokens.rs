//! `[[tokens]]`: API tokens as SHA-256 digests with their scopes; errors name the token by its
//! position and name (`tokens[0] (ci).sha256`).

use super::raw::RawToken;
use crate::domain::{ApiToken, Scope, TokenDigest};
use anyhow::anyhow;

/// The tokens of a file, after those of `base`.
pub(super) fn resolve(
    raw: Vec<RawToken>,
    base: Option<&[ApiToken]>,
) -> anyhow::Result<Vec<ApiToken>> {
    let mut tokens = base.map(<[ApiToken]>::to_vec).unwrap_or_default();
    for (i, t) in raw.into_iter().enumerate() {
        let at = format!("tokens[{i}] ({})", t.name);
        let digest = TokenDigest::from_hex(&t.sha256).ok_or_else(|| {
            anyhow!("{at}.sha256: must be 64 hex characters (sha256 of the token)")
        })?;
        let scopes = t
            .scopes
            .iter()
            .map(|s| Scope::parse(s).ok_or_else(|| anyhow!("{at}.scopes: unknown scope {s:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let scopes =
            Scope::with_reveal_default(scopes, t.reveal).map_err(|e| anyhow!("{at}: {e}"))?;
        tokens.push(ApiToken {
            name: t.name,
            sha256: digest,
            scopes,
        });
    }
    Ok(tokens)
}
