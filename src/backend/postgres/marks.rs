//! The marks previewdb writes in the COMMENT of what it makes, and reads back: an environment's
//! (`previewdb:env=<id>`), a finished template's (`previewdb:template=<json>`: blueprint, hash,
//! warnings, build time), a build's, a shared database's and the builder role's. Names say what
//! an object is (see `names`); marks carry what the name cannot, and are parsed here only.

use crate::blueprint::Blueprint;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How every environment's objects are marked, with the environment's id after it.
const ENV_PREFIX: &str = "previewdb:env=";
const TEMPLATE_PREFIX: &str = "previewdb:template=";
/// How a shared database is marked, with the blueprint's name after it.
const SHARED_PREFIX: &str = "previewdb:shared=";
/// The comment of the role that builds templates.
pub(super) const BUILDER: &str = "previewdb: owns template objects";

/// The mark of environment `id`'s role, database or schema.
pub(super) fn env(id: Uuid) -> String {
    format!("{ENV_PREFIX}{id}")
}

/// What an environment's database or schema is marked with again after a reset, given its
/// comment before: the tenant owns that COMMENT, so only a mark of our own kind (and of a sane
/// length) is carried over.
pub(super) fn carried_over(comment: Option<String>) -> String {
    comment
        .filter(|m| m.starts_with(ENV_PREFIX) && m.len() <= 64)
        .unwrap_or_else(|| ENV_PREFIX.trim_end_matches('=').to_owned())
}

/// The mark of a template while it is built.
pub(super) fn building(bp: &Blueprint, hash: &str) -> String {
    format!("previewdb:building={}:{hash}", bp.name)
}

/// The mark of the shared database of `blueprint`'s environments in schema isolation.
pub(super) fn shared(blueprint: Option<&Blueprint>) -> String {
    format!(
        "{SHARED_PREFIX}{}",
        blueprint.map_or("", |b| b.name.as_str())
    )
}

/// What a finished template's mark records.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct TemplateMark {
    pub blueprint: String,
    pub hash: String,
    pub warnings: Vec<String>,
    /// Missing in the marks of older versions.
    #[serde(default)]
    pub built_at: Option<DateTime<Utc>>,
}

impl TemplateMark {
    pub(super) fn comment(&self) -> String {
        let json = serde_json::to_string(self).expect("a template mark serialises");
        format!("{TEMPLATE_PREFIX}{json}")
    }

    /// Reads a database's comment; `None` when it is not a template's mark.
    pub(super) fn parse(comment: &str) -> Option<Self> {
        serde_json::from_str(comment.strip_prefix(TEMPLATE_PREFIX)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_mark_reads_back_and_nothing_else_reads_as_one() {
        let mark = TemplateMark {
            blueprint: "app".into(),
            hash: "0123456789abcdef".into(),
            warnings: vec!["skipped OWNER TO".into()],
            built_at: Some(Utc::now()),
        };
        assert_eq!(TemplateMark::parse(&mark.comment()), Some(mark));
        let old = r#"previewdb:template={"blueprint":"a","hash":"h","warnings":[]}"#;
        assert_eq!(TemplateMark::parse(old).unwrap().built_at, None);
        assert_eq!(TemplateMark::parse("previewdb:template=nonsense"), None);
        assert_eq!(TemplateMark::parse(&env(Uuid::nil())), None);
    }

    #[test]
    fn only_our_own_kind_of_mark_is_carried_over() {
        let ours = env(Uuid::nil());
        assert_eq!(carried_over(Some(ours.clone())), ours);
        assert_eq!(carried_over(Some("the tenant's".into())), "previewdb:env");
        assert_eq!(carried_over(None), "previewdb:env");
        let long = format!("{ENV_PREFIX}{}", "x".repeat(60));
        assert_eq!(carried_over(Some(long)), "previewdb:env");
    }
}
