//! The environment record as stored, and the filters of a listing.

use crate::domain::{Connection, Isolation, Labels, Resources, Secret};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Provisioning,
    Ready,
    Deleting,
    Deleted,
    Failed,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Provisioning,
        State::Ready,
        State::Deleting,
        State::Deleted,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Provisioning => "provisioning",
            State::Ready => "ready",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Everything about a connection except its password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredConnection {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub schema: Option<String>,
    pub user: String,
    #[serde(default)]
    pub params: Vec<(String, String)>,
}

impl StoredConnection {
    pub fn from_connection(c: &Connection) -> Self {
        Self {
            host: c.host.clone(),
            port: c.port,
            database: c.database.clone(),
            schema: c.schema.clone(),
            user: c.user.clone(),
            params: c.params.clone(),
        }
    }

    pub fn with_password(&self, password: Secret) -> Connection {
        Connection {
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            schema: self.schema.clone(),
            user: self.user.clone(),
            password,
            params: self.params.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EnvRecord {
    pub id: Uuid,
    pub key: String,
    pub target: String,
    pub isolation: Isolation,
    pub blueprint: Option<String>,
    pub blueprint_hash: Option<String>,
    pub settings_digest: String,
    pub state: State,
    pub error: Option<String>,
    pub resources: Resources,
    pub teardown_pending: bool,
    pub connection: Option<StoredConnection>,
    pub password_sealed: Option<Vec<u8>>,
    pub labels: Labels,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Last size measured by the quota watchdog.
    pub size_bytes: Option<i64>,
    /// Why logins are refused (`over_quota`), when they are.
    pub lock_reason: Option<String>,
}

impl EnvRecord {
    pub(super) fn from_row(row: &tokio_postgres::Row) -> Result<Self, super::StoreError> {
        let resources = read_resources(row.get("resources"))?;
        let labels: BTreeMap<String, String> =
            serde_json::from_value(row.get("labels")).unwrap_or_default();
        Ok(Self {
            id: row.get("id"),
            key: row.get("key"),
            target: row.get("target"),
            isolation: Isolation::parse(row.get("isolation")).unwrap_or(Isolation::Database),
            blueprint: row.get("blueprint"),
            blueprint_hash: row.get("blueprint_hash"),
            settings_digest: row.get("settings_digest"),
            state: State::parse(row.get("state")).unwrap_or(State::Failed),
            error: row.get("error"),
            resources,
            teardown_pending: row.get("teardown_pending"),
            connection: row
                .get::<_, Option<serde_json::Value>>("connection")
                .and_then(|v| serde_json::from_value(v).ok()),
            password_sealed: row.get("password_sealed"),
            labels: Labels::parse(labels).unwrap_or_default(),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            expires_at: row.get("expires_at"),
            deleted_at: row.get("deleted_at"),
            size_bytes: row.get("size_bytes"),
            lock_reason: row.get("lock_reason"),
        })
    }

    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            State::Provisioning | State::Ready | State::Deleting
        )
    }
}

/// An environment's stored resources, or why they cannot be read.
pub(super) fn read_resources(value: serde_json::Value) -> Result<Resources, super::StoreError> {
    serde_json::from_value(value.clone()).map_err(|e| {
        super::StoreError::Unreadable(format!("environment resources {value} unreadable: {e}"))
    })
}

/// What a listing selects, newest first (`created_at DESC, id DESC`).
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub key: Option<String>,
    pub target: Option<String>,
    pub state: Option<State>,
    pub labels: BTreeMap<String, String>,
    /// At most this many rows; `None` returns all of them.
    pub limit: Option<i64>,
    /// Only rows after this one in the listing's order (keyset paging: stable under inserts).
    pub after: Option<(DateTime<Utc>, Uuid)>,
}
