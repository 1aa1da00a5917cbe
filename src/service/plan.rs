//! Resolving a create request into a plan: which target, isolation, blueprint, time-to-live and
//! deadline it gets, and what makes two creates of one key "the same environment". A pure
//! function of the request and the configuration, so it is tested without any server.

use crate::backend::{Capabilities, Support};
use crate::blueprint::Blueprint;
use crate::domain::{EnvKey, InvalidInput, Isolation, Labels, Ttl};
use crate::domain::{MigrationFormat, SourceFile};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What a caller asks for; parsed from the request at the edge.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub key: EnvKey,
    pub target: Option<String>,
    pub isolation: Option<Isolation>,
    pub ttl: Option<Ttl>,
    pub labels: Labels,
    /// A blueprint name; `None` asks for the default one, `Some("")` for an empty database.
    pub blueprint: Option<String>,
    /// The caller's own migrations, applied on top of the blueprint.
    pub migrations: Vec<SourceFile>,
    /// How long the caller is willing to wait, within the target's `provision_timeout`.
    pub timeout: Option<Duration>,
}

/// Service-wide settings from the configuration.
pub struct Defaults {
    pub target: String,
    pub blueprint: Option<String>,
    pub ttl: Ttl,
    pub max_ttl: Ttl,
}

/// What the plan needs to know of a target.
#[derive(Debug, Clone, Copy)]
pub(super) struct Terms {
    pub capabilities: Capabilities,
    /// Longest a create on the target may take.
    pub provision_timeout: Duration,
}

/// A create request resolved against the configuration.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub target: String,
    pub isolation: Isolation,
    pub blueprint: Option<Arc<Blueprint>>,
    pub ttl: Ttl,
    /// How long the create may take: the caller's timeout within the target's.
    pub budget: Duration,
    /// Equal for two creates of one key that ask for the same environment.
    pub digest: String,
}

/// Resolves `spec`: `terms` looks a target up by name. Refuses what the target cannot do, and
/// names the request's field at fault.
pub(super) fn resolve(
    spec: &CreateSpec,
    defaults: &Defaults,
    blueprints: &BTreeMap<String, Arc<Blueprint>>,
    terms: impl FnOnce(&str) -> Option<Terms>,
) -> Result<Plan, InvalidInput> {
    let target = spec.target.as_deref().unwrap_or(&defaults.target);
    let Terms {
        capabilities: caps,
        provision_timeout,
    } = terms(target)
        .ok_or_else(|| InvalidInput::new("target", format!("no target named {target:?}")))?;
    let isolation = spec.isolation.unwrap_or(caps.isolations[0]);
    if !caps.isolations.contains(&isolation) {
        return Err(InvalidInput::new(
            "isolation",
            format!(
                "target {target:?} does not offer isolation {:?}",
                isolation.as_str()
            ),
        ));
    }
    let blueprint_name = match spec.blueprint.as_deref() {
        Some("") => None,
        Some(name) => Some(name),
        None if caps.blueprints.is_yes() => defaults.blueprint.as_deref(),
        None => None,
    };
    let blueprint = blueprint_name
        .map(|n| blueprint(blueprints, n))
        .transpose()?;
    if let (false, Support::No(why)) = (spec.migrations.is_empty(), caps.migrations) {
        return Err(InvalidInput::new(
            "migrations",
            format!("target {target:?} {why}"),
        ));
    }
    if let (true, Support::No(why)) = (blueprint.is_some(), caps.blueprints) {
        return Err(InvalidInput::new(
            "blueprint",
            format!("target {target:?} {why}"),
        ));
    }
    check_migrations(blueprint.as_deref(), &spec.migrations)?;
    Ok(Plan {
        target: target.to_owned(),
        isolation,
        digest: settings_digest(target, isolation, blueprint_name, &spec.migrations),
        blueprint,
        ttl: within_max(spec.ttl.unwrap_or(defaults.ttl), defaults)?,
        budget: spec
            .timeout
            .map_or(provision_timeout, |t| t.min(provision_timeout)),
    })
}

/// A configured blueprint by name.
pub(super) fn blueprint(
    blueprints: &BTreeMap<String, Arc<Blueprint>>,
    name: &str,
) -> Result<Arc<Blueprint>, InvalidInput> {
    blueprints
        .get(name)
        .cloned()
        .ok_or_else(|| InvalidInput::new("blueprint", format!("no blueprint named {name:?}")))
}

/// A time-to-live a caller asked for, refused above the configured maximum.
pub(super) fn within_max(ttl: Ttl, defaults: &Defaults) -> Result<Ttl, InvalidInput> {
    if ttl > defaults.max_ttl {
        return Err(InvalidInput::new(
            "ttl",
            format!("{ttl} is longer than the maximum {}", defaults.max_ttl),
        ));
    }
    Ok(ttl)
}

/// The caller's migrations must be named as the blueprint's format wants (plain SQL without one).
pub(super) fn check_migrations(
    blueprint: Option<&Blueprint>,
    migrations: &[SourceFile],
) -> Result<(), InvalidInput> {
    let format = blueprint.map_or(MigrationFormat::Plain, |b| b.format);
    Ok(format.check_names(migrations)?)
}

/// What makes two creates of one key "the same environment".
fn settings_digest(
    target: &str,
    isolation: Isolation,
    blueprint: Option<&str>,
    migrations: &[SourceFile],
) -> String {
    use sha2::Digest;
    let migrations: Vec<[&str; 2]> = migrations
        .iter()
        .map(|m| [m.name.as_str(), m.text.as_str()])
        .collect();
    let doc = serde_json::json!({ "target": target, "isolation": isolation, "blueprint": blueprint, "migrations": migrations });
    hex::encode(sha2::Sha256::digest(doc.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::BlueprintSource;

    const POSTGRES: Capabilities = Capabilities {
        kind: "postgres",
        isolations: &[Isolation::Database, Isolation::Schema],
        blueprints: Support::Yes,
        migrations: Support::Yes,
        quotas: true,
    };
    const NEON: Capabilities = Capabilities {
        kind: "neon",
        isolations: &[Isolation::Branch],
        blueprints: Support::No("seeds from its parent branch"),
        migrations: Support::No("does not apply migrations"),
        quotas: false,
    };
    const TIMEOUT: Duration = Duration::from_secs(120);

    fn terms(name: &str) -> Option<Terms> {
        let capabilities = match name {
            "local" => POSTGRES,
            "neon" => NEON,
            _ => return None,
        };
        Some(Terms {
            capabilities,
            provision_timeout: TIMEOUT,
        })
    }

    fn defaults() -> Defaults {
        Defaults {
            target: "local".into(),
            blueprint: Some("app".into()),
            ttl: Ttl::parse("24h").unwrap(),
            max_ttl: Ttl::parse("7d").unwrap(),
        }
    }

    /// A blueprint `app` in refinery's format, read from files like any configured one.
    fn blueprints() -> (tempfile::TempDir, BTreeMap<String, Arc<Blueprint>>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("migrations")).unwrap();
        std::fs::write(
            dir.path().join("migrations/V1__init.sql"),
            "create table t ();",
        )
        .unwrap();
        let bp = Blueprint::read(BlueprintSource {
            name: crate::domain::PgIdent::parse("app").unwrap(),
            schema: None,
            migrations: Some(dir.path().join("migrations")),
            format: MigrationFormat::Refinery,
            seeds: None,
            extensions: vec![],
            pool_size: 0,
            max_environment_bytes: None,
        })
        .unwrap();
        (dir, BTreeMap::from([("app".to_owned(), Arc::new(bp))]))
    }

    fn spec(key: &str) -> CreateSpec {
        CreateSpec {
            key: EnvKey::parse(key).unwrap(),
            target: None,
            isolation: None,
            ttl: None,
            labels: Labels::default(),
            blueprint: None,
            migrations: vec![],
            timeout: None,
        }
    }

    fn migration(name: &str, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn defaults_fill_what_the_caller_left_out() {
        let (_dir, bps) = blueprints();
        let plan = resolve(&spec("acme/web#1"), &defaults(), &bps, terms).unwrap();
        assert_eq!(plan.target, "local");
        assert_eq!(plan.isolation, Isolation::Database);
        assert_eq!(plan.blueprint.unwrap().name.as_str(), "app");
        assert_eq!(plan.ttl, Ttl::parse("24h").unwrap());
        assert_eq!(plan.budget, TIMEOUT);
    }

    #[test]
    fn an_empty_blueprint_name_asks_for_an_empty_database() {
        let (_dir, bps) = blueprints();
        let s = CreateSpec {
            blueprint: Some(String::new()),
            ..spec("k")
        };
        assert!(resolve(&s, &defaults(), &bps, terms)
            .unwrap()
            .blueprint
            .is_none());
    }

    #[test]
    fn a_target_without_blueprints_gets_no_default_and_refuses_a_named_one() {
        let (_dir, bps) = blueprints();
        let on_neon = CreateSpec {
            target: Some("neon".into()),
            ..spec("k")
        };
        let plan = resolve(&on_neon, &defaults(), &bps, terms).unwrap();
        assert_eq!(plan.isolation, Isolation::Branch);
        assert!(plan.blueprint.is_none());
        let named = CreateSpec {
            blueprint: Some("app".into()),
            ..on_neon.clone()
        };
        let e = resolve(&named, &defaults(), &bps, terms).unwrap_err();
        assert_eq!(e.field, "blueprint");
        assert_eq!(e.reason, "target \"neon\" seeds from its parent branch");
        let migrating = CreateSpec {
            migrations: vec![migration("1.sql", "select 1")],
            ..on_neon
        };
        let e = resolve(&migrating, &defaults(), &bps, terms).unwrap_err();
        assert_eq!(e.field, "migrations");
    }

    #[test]
    fn refusals_name_the_field_at_fault() {
        let (_dir, bps) = blueprints();
        let cases = [
            (
                CreateSpec {
                    target: Some("nowhere".into()),
                    ..spec("k")
                },
                "target",
            ),
            (
                CreateSpec {
                    isolation: Some(Isolation::Branch),
                    ..spec("k")
                },
                "isolation",
            ),
            (
                CreateSpec {
                    blueprint: Some("missing".into()),
                    ..spec("k")
                },
                "blueprint",
            ),
            (
                CreateSpec {
                    ttl: Some(Ttl::parse("30d").unwrap()),
                    ..spec("k")
                },
                "ttl",
            ),
            (
                // Not a refinery name, and `app` is in refinery's format.
                CreateSpec {
                    migrations: vec![migration("init.sql", "select 1")],
                    ..spec("k")
                },
                "migrations",
            ),
        ];
        for (s, field) in cases {
            let e = resolve(&s, &defaults(), &bps, terms).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn the_callers_timeout_only_shortens_the_targets() {
        let (_dir, bps) = blueprints();
        let budget = |t| {
            let s = CreateSpec {
                timeout: Some(Duration::from_secs(t)),
                ..spec("k")
            };
            resolve(&s, &defaults(), &bps, terms).unwrap().budget
        };
        assert_eq!(budget(5), Duration::from_secs(5));
        assert_eq!(budget(3600), TIMEOUT);
    }

    #[test]
    fn the_digest_tells_settings_apart_but_not_labels_or_ttl() {
        let (_dir, bps) = blueprints();
        let digest = |s: CreateSpec| resolve(&s, &defaults(), &bps, terms).unwrap().digest;
        let base = digest(spec("k"));
        let relabelled = CreateSpec {
            ttl: Some(Ttl::parse("1h").unwrap()),
            labels: Labels::parse([("team".to_owned(), "x".to_owned())].into()).unwrap(),
            ..spec("k")
        };
        assert_eq!(digest(relabelled), base);
        let others = [
            CreateSpec {
                isolation: Some(Isolation::Schema),
                ..spec("k")
            },
            CreateSpec {
                blueprint: Some(String::new()),
                ..spec("k")
            },
            CreateSpec {
                migrations: vec![migration("V2__x.sql", "select 1")],
                ..spec("k")
            },
        ];
        for other in others {
            assert_ne!(digest(other), base);
        }
    }
}
