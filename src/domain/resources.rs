//! What an environment owns on its target, by backend: named by the backend's `plan` before
//! anything exists (so that a crash can always be rolled back), completed with ids learnt while
//! provisioning, and kept in the control store as a JSON object whose keys are the field names.

use serde::{Deserialize, Serialize};

/// One environment's objects on its target. Stored untagged, so records written before this
/// type existed (a flat JSON object) load unchanged; each variant refuses the other's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Resources {
    Neon(NeonResources),
    Postgres(PostgresResources),
}

/// A database of its own (database isolation) or a schema in a shared database (schema
/// isolation), and the role that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresResources {
    /// The environment's own database, or the shared one its schema lives in.
    pub database: String,
    pub role: String,
    /// Schema isolation: the schema, named like the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// A Neon branch of the target's parent branch, its endpoint, and a role of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeonResources {
    /// From the key alone, so that a rerun after a crash finds the same branch.
    pub branch_name: String,
    pub role: String,
    pub project_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Known once the branch exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_host: Option<String>,
}

/// Resources of another backend's kind were handed to a backend (a record moved between
/// targets of different kinds by hand, or a mixed-up configuration).
#[derive(Debug, thiserror::Error)]
#[error("the environment record holds {found} resources, not {wanted} ones")]
pub struct ForeignResources {
    pub wanted: &'static str,
    pub found: &'static str,
}

impl Resources {
    fn kind(&self) -> &'static str {
        match self {
            Resources::Neon(_) => "Neon",
            Resources::Postgres(_) => "PostgreSQL",
        }
    }

    fn foreign(&self, wanted: &'static str) -> ForeignResources {
        ForeignResources {
            wanted,
            found: self.kind(),
        }
    }

    pub fn postgres(&self) -> Result<&PostgresResources, ForeignResources> {
        match self {
            Resources::Postgres(r) => Ok(r),
            other => Err(other.foreign("PostgreSQL")),
        }
    }

    pub fn neon(&self) -> Result<&NeonResources, ForeignResources> {
        match self {
            Resources::Neon(r) => Ok(r),
            other => Err(other.foreign("Neon")),
        }
    }

    pub fn neon_mut(&mut self) -> Result<&mut NeonResources, ForeignResources> {
        match self {
            Resources::Neon(r) => Ok(r),
            other => Err(other.foreign("Neon")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_objects_load_as_their_kind_and_serialise_back_unchanged() {
        let stored = [
            json!({ "database": "pdb_env_a", "role": "pdb_env_a" }),
            json!({ "database": "pdb_shared", "role": "pdb_env_b", "schema": "pdb_env_b" }),
            json!({ "branch_name": "acme/web#1", "role": "pdb_env_c", "project_id": "p-1" }),
            json!({ "branch_name": "acme/web#1", "role": "pdb_env_c", "project_id": "p-1",
                    "parent_id": "br-p", "branch_id": "br-1", "endpoint_id": "ep-1",
                    "endpoint_host": "ep-1.neon.tech" }),
        ];
        for value in stored {
            let r: Resources = serde_json::from_value(value.clone()).unwrap();
            let neon = value.get("branch_name").is_some();
            assert_eq!(r.neon().is_ok(), neon, "{value}");
            assert_eq!(r.postgres().is_ok(), !neon, "{value}");
            assert_eq!(serde_json::to_value(&r).unwrap(), value);
        }
    }

    #[test]
    fn objects_of_neither_shape_are_refused() {
        for value in [
            json!({}),
            json!({ "database": "d" }),
            json!({ "database": "d", "role": "r", "branch_id": "br-1" }),
            json!("pdb_env_a"),
        ] {
            assert!(
                serde_json::from_value::<Resources>(value.clone()).is_err(),
                "{value}"
            );
        }
    }

    #[test]
    fn a_backend_handed_the_other_kind_is_told_so() {
        let r = Resources::Postgres(PostgresResources {
            database: "d".into(),
            role: "r".into(),
            schema: None,
        });
        let e = r.neon().unwrap_err().to_string();
        assert_eq!(
            e,
            "the environment record holds PostgreSQL resources, not Neon ones"
        );
    }
}
