//! How an environment is separated from its neighbours.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Own database and role on a PostgreSQL target.
    Database,
    /// Own schema and role in a database shared per blueprint.
    Schema,
    /// Own Neon branch and role.
    Branch,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Database => "database",
            Isolation::Schema => "schema",
            Isolation::Branch => "branch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "database" => Some(Self::Database),
            "schema" => Some(Self::Schema),
            "branch" => Some(Self::Branch),
            _ => None,
        }
    }
}
