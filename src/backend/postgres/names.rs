//! The names of everything previewdb makes on a postgres target. Each carries the reserved
//! prefix `pdb_` and a kind, so that what a crash left half-made is recognised by its name
//! alone, and nothing without the prefix is ever dropped:
//!
//! | name | what |
//! |---|---|
//! | `pdb_env_<slug>_<hash>` | an environment's role and database (or schema) |
//! | `pdb_tpl_<blueprint>_<hash16>` | a finished template |
//! | `pdb_bld_<blueprint>_<hash16>` | a template being built (renamed to `pdb_tpl_` when done) |
//! | `pdb_fill_<blueprint>_<hash16>_<rand8>` | a pool entry being made (role and database) |
//! | `pdb_pool_<blueprint>_<hash16>_<rand8>` | a ready pool entry (renamed from `pdb_fill_`) |
//! | `pdb_shared`, `pdb_shared_<blueprint>` | the shared database of schema isolation, and the role whose members may connect to it |

use crate::blueprint::Blueprint;
use crate::domain::PgIdent;

pub const PREFIX: &str = "pdb_";

/// What an environment is made of on the target, read back from its record.
pub(super) struct EnvNames {
    pub db: PgIdent,
    pub role: PgIdent,
    /// `schema` isolation: a schema named after the role in the shared database `db`.
    pub in_schema: bool,
}

/// What a name that carries the prefix stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Template {
        hash: String,
    },
    Build {
        hash: String,
    },
    Pool {
        blueprint: String,
        hash: String,
    },
    Fill {
        blueprint: String,
        hash: String,
    },
    Shared,
    /// An environment's, or anything else with the prefix: only records account for these.
    Other,
}

fn bp_part(bp: &Blueprint, max: usize) -> String {
    bp.name.as_str().chars().take(max).collect()
}

pub fn template(bp: &Blueprint, hash: &str) -> String {
    format!("pdb_tpl_{}_{hash}", bp_part(bp, 30))
}

pub fn build(bp: &Blueprint, hash: &str) -> String {
    format!("pdb_bld_{}_{hash}", bp_part(bp, 30))
}

/// How `bp` appears in its pool entries' names.
pub fn pool_blueprint(bp: &Blueprint) -> String {
    bp_part(bp, 20)
}

/// What every ready pool entry of `bp` at `hash` starts with.
pub fn pool_prefix(bp: &Blueprint, hash: &str) -> String {
    format!("pdb_pool_{}_{hash}_", bp_part(bp, 20))
}

/// A new pool entry's name while it is made, and the name it gets once ready.
pub fn pool_entry(bp: &Blueprint, hash: &str, suffix: &str) -> (String, String) {
    let bp = bp_part(bp, 20);
    (
        format!("pdb_fill_{bp}_{hash}_{suffix}"),
        format!("pdb_pool_{bp}_{hash}_{suffix}"),
    )
}

/// The shared database of `blueprint`'s environments in schema isolation (or of those without
/// one); its name is also that of the role whose members may connect to it.
pub(super) fn shared_database(blueprint: Option<&Blueprint>) -> PgIdent {
    let name = match blueprint {
        Some(bp) => format!("pdb_shared_{}", bp_part(bp, 40)),
        None => "pdb_shared".to_owned(),
    };
    PgIdent::parse(&name).expect("made of a valid identifier")
}

/// Reads a name; `None` for names without the prefix (never previewdb's).
pub fn kind(name: &str) -> Option<Kind> {
    let rest = name.strip_prefix(PREFIX)?;
    let hex16 = |h: &str| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit());
    // `<blueprint>_<hash16>` at the end of a name.
    let bp_hash = |s: &str| {
        let (bp, hash) = s.rsplit_once('_')?;
        (hex16(hash) && !bp.is_empty()).then(|| (bp.to_owned(), hash.to_owned()))
    };
    // `<blueprint>_<hash16>_<rand8>`.
    let bp_hash_rand = |s: &str| {
        let (head, rand) = s.rsplit_once('_')?;
        (rand.len() == 8 && rand.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(())
            .and_then(|_| bp_hash(head))
    };
    let kind = if let Some(r) = rest.strip_prefix("tpl_") {
        bp_hash(r).map(|(_, hash)| Kind::Template { hash })
    } else if let Some(r) = rest.strip_prefix("bld_") {
        bp_hash(r).map(|(_, hash)| Kind::Build { hash })
    } else if let Some(r) = rest.strip_prefix("pool_") {
        bp_hash_rand(r).map(|(blueprint, hash)| Kind::Pool { blueprint, hash })
    } else if let Some(r) = rest.strip_prefix("fill_") {
        bp_hash_rand(r).map(|(blueprint, hash)| Kind::Fill { blueprint, hash })
    } else if rest == "shared" || rest.starts_with("shared_") {
        Some(Kind::Shared)
    } else {
        None
    };
    Some(kind.unwrap_or(Kind::Other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_and_environment_names_never_look_like_others() {
        let h = "0123456789abcdef";
        assert_eq!(
            kind(&format!("pdb_tpl_my_app_{h}")),
            Some(Kind::Template { hash: h.into() })
        );
        assert_eq!(
            kind(&format!("pdb_bld_app_{h}")),
            Some(Kind::Build { hash: h.into() })
        );
        assert_eq!(
            kind(&format!("pdb_pool_my_app_{h}_ab12cd34")),
            Some(Kind::Pool {
                blueprint: "my_app".into(),
                hash: h.into()
            })
        );
        assert_eq!(
            kind(&format!("pdb_fill_app_{h}_ab12cd34")),
            Some(Kind::Fill {
                blueprint: "app".into(),
                hash: h.into()
            })
        );
        assert_eq!(kind("pdb_shared_app"), Some(Kind::Shared));
        assert_eq!(kind("pdb_env_pool_x_1234"), Some(Kind::Other));
        assert_eq!(kind("pdb_pool_broken"), Some(Kind::Other));
        assert_eq!(kind("postgres"), None);
        assert_eq!(kind("previewdb_builder"), None);
        // Whatever the key, an environment's name starts with `pdb_env_`.
        let key = crate::domain::EnvKey::parse(&format!("tpl/x_{h}")).unwrap();
        let env = crate::backend::object_name(&key, "id");
        assert!(env.as_str().starts_with("pdb_env_"));
        assert_eq!(kind(env.as_str()), Some(Kind::Other));
    }
}
