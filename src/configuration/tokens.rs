//! `[[tokens]]`: API tokens as SHA-256 digests with their scopes and reach (keys, targets,
//! blueprints, `max_live`); errors name the token by its position and name
//! (`tokens[0] (ci).sha256`).

use super::raw::RawToken;
use crate::domain::{ApiToken, KeyPattern, Reach, Scope, TokenDigest};
use anyhow::{anyhow, bail};

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
        let reach = reach(&t, &at)?;
        tokens.push(ApiToken {
            name: t.name,
            sha256: digest,
            scopes,
            reach,
        });
    }
    Ok(tokens)
}

/// A token's `keys`, `targets`, `blueprints` and `max_live`. An empty list would reach
/// nothing: it is refused, since leaving the key out is how "all" is written.
fn reach(t: &RawToken, at: &str) -> anyhow::Result<Reach> {
    for (field, list) in [
        ("keys", &t.keys),
        ("targets", &t.targets),
        ("blueprints", &t.blueprints),
    ] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            bail!("{at}.{field}: must not be empty (leave it out to allow all)");
        }
    }
    let keys = t
        .keys
        .as_ref()
        .map(|ks| {
            ks.iter()
                .enumerate()
                .map(|(j, k)| KeyPattern::parse(k).map_err(|e| anyhow!("{at}.keys[{j}]: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    if t.max_live == Some(0) {
        bail!("{at}.max_live: must be at least 1");
    }
    Ok(Reach {
        keys,
        targets: t.targets.clone(),
        blueprints: t.blueprints.clone(),
        max_live: t.max_live,
    })
}

/// Every target and blueprint a token names must exist.
pub(super) fn check_names(
    tokens: &[ApiToken],
    is_target: impl Fn(&str) -> bool,
    is_blueprint: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    for (i, t) in tokens.iter().enumerate() {
        let at = format!("tokens[{i}] ({})", t.name);
        for (j, name) in t.reach.targets.iter().flatten().enumerate() {
            if !is_target(name) {
                bail!("{at}.targets[{j}]: no target or target group named {name:?}");
            }
        }
        for (j, name) in t.reach.blueprints.iter().flatten().enumerate() {
            if !is_blueprint(name) {
                bail!("{at}.blueprints[{j}]: no blueprint named {name:?}");
            }
        }
    }
    Ok(())
}
