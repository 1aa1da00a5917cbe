//! Neon's API as typed calls on one project: branches found, created, restored, expired and
//! deleted; endpoints; roles and their passwords; each call waiting for the operations it
//! started. What Neon's answers mean (gone, malformed, ours) is read here, once.

use super::client::{seg, Deadline, NeonClient, NeonError, Reply};
use crate::configuration::NeonTargetConfig;
use crate::domain::Secret;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Neon refuses `expires_at` more than 30 days ahead; the margin absorbs clock skew.
const MAX_EXPIRY: chrono::Duration = chrono::Duration::days(30);
const EXPIRY_MARGIN: chrono::Duration = chrono::Duration::hours(1);
/// Annotation key that marks a branch as previewdb's, so only those are ever adopted or deleted.
const MARK: &str = "previewdb";

/// The calls of one Neon project, on one client.
#[derive(Debug)]
pub(super) struct NeonApi {
    client: NeonClient,
    /// The `read_write` endpoint every environment gets, as sent to Neon.
    endpoint_spec: Value,
}

/// A compute endpoint: where connections go.
pub(super) struct Endpoint {
    pub id: String,
    pub host: String,
}

/// A branch found by exact name.
pub(super) struct Found {
    pub id: String,
    parent_id: Option<String>,
    /// `None` when the listing carried no annotations at all, so ownership cannot be told.
    marked: Option<bool>,
}

impl Found {
    /// Whether this branch may be taken over (or deleted) by a target on `parent_id`.
    pub(super) fn ours(&self, parent_id: &str) -> bool {
        self.marked != Some(false) && self.parent_id.as_deref() == Some(parent_id)
    }
}

/// A branch just created, with what Neon made alongside it.
pub(super) struct Created {
    pub id: String,
    pub endpoint: Option<Endpoint>,
    /// Operations still running; the branch is usable once they are over.
    pub operations: Vec<String>,
}

/// What a new environment branch is made of.
pub(super) struct NewBranch<'a> {
    pub name: &'a str,
    pub parent_id: &'a str,
    pub expires_at: DateTime<Utc>,
    pub env_id: uuid::Uuid,
    pub target: &'a str,
}

impl NeonApi {
    /// The calls on `client`; endpoints get the compute settings of `cfg`.
    pub(super) fn new(client: NeonClient, cfg: &NeonTargetConfig) -> Self {
        let mut endpoint_spec = json!({ "type": "read_write" });
        if let Some(v) = cfg.autoscaling_limit_min_cu {
            endpoint_spec["autoscaling_limit_min_cu"] = json!(v);
        }
        if let Some(v) = cfg.autoscaling_limit_max_cu {
            endpoint_spec["autoscaling_limit_max_cu"] = json!(v);
        }
        if let Some(v) = cfg.suspend_timeout_seconds {
            endpoint_spec["suspend_timeout_seconds"] = json!(v);
        }
        Self {
            client,
            endpoint_spec,
        }
    }

    pub(super) fn project_id(&self) -> &str {
        self.client.project_id()
    }

    /// Sends a call and waits for the operations it started.
    async fn call_and_wait(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        dl: Deadline,
    ) -> Result<Reply, NeonError> {
        let reply = self.client.call(method, path, &[], body, dl).await?;
        self.client.wait_operations(&reply.operations(), dl).await?;
        Ok(reply)
    }

    pub(super) async fn wait_operations(
        &self,
        operations: &[String],
        dl: Deadline,
    ) -> Result<(), NeonError> {
        self.client.wait_operations(operations, dl).await
    }

    /// The project's PostgreSQL major version, when Neon says.
    pub(super) async fn pg_version(&self, dl: Deadline) -> Result<Option<i64>, NeonError> {
        let path = self.client.project_path("");
        let reply = self.client.call(Method::GET, &path, &[], None, dl).await?;
        Ok(reply.body["project"]["pg_version"].as_i64())
    }

    /// Finds a branch by exact name; Neon's `search` also matches substrings and ids.
    pub(super) async fn find_branch(
        &self,
        name: &str,
        dl: Deadline,
    ) -> Result<Option<Found>, NeonError> {
        let path = self.client.project_path("/branches");
        let mut cursor: Option<String> = None;
        // A bound, so that a server repeating its cursor cannot keep us here.
        for _ in 0..50 {
            let mut query = vec![("search", name)];
            if let Some(c) = &cursor {
                query.push(("cursor", c));
            }
            let reply = self
                .client
                .call(Method::GET, &path, &query, None, dl)
                .await?;
            let branches = reply.body["branches"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(b) = branches.iter().find(|b| b["name"].as_str() == Some(name)) {
                let id = b["id"].as_str().unwrap_or_default().to_owned();
                let annotations = reply.body.get("annotations").filter(|a| a.is_object());
                let marked = annotations.map(|a| a[&id]["value"][MARK].as_str() == Some("true"));
                return Ok(Some(Found {
                    id,
                    parent_id: b["parent_id"].as_str().map(str::to_owned),
                    marked,
                }));
            }
            let next = reply.body["pagination"]["next"].as_str().map(str::to_owned);
            if branches.is_empty() || next.is_none() || next == cursor {
                break;
            }
            cursor = next;
        }
        Ok(None)
    }

    /// Creates a marked branch with its endpoint; does not wait for the operations.
    pub(super) async fn create_branch(
        &self,
        new: &NewBranch<'_>,
        dl: Deadline,
    ) -> Result<Created, NeonError> {
        let body = json!({
            "branch": { "parent_id": new.parent_id, "name": new.name,
                        "expires_at": neon_expiry(new.expires_at) },
            "endpoints": [self.endpoint_spec],
            "annotation_value": { MARK: "true", "previewdb_env_id": new.env_id.to_string(),
                                  "previewdb_target": new.target },
        });
        let path = self.client.project_path("/branches");
        let reply = self
            .client
            .call(Method::POST, &path, &[], Some(&body), dl)
            .await?;
        let Some(id) = reply.body["branch"]["id"].as_str().map(str::to_owned) else {
            return Err(malformed("branch create", "branch.id"));
        };
        let endpoint = reply.body["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["type"] == "read_write"))
            .and_then(endpoint);
        Ok(Created {
            id,
            endpoint,
            operations: reply.operations(),
        })
    }

    /// The branch's `read_write` endpoint, created when the branch has none.
    pub(super) async fn endpoint_of(
        &self,
        branch_id: &str,
        dl: Deadline,
    ) -> Result<Endpoint, NeonError> {
        let path = self
            .client
            .project_path(&format!("/branches/{}/endpoints", seg(branch_id)));
        let reply = self.client.call(Method::GET, &path, &[], None, dl).await?;
        let existing = reply.body["endpoints"]
            .as_array()
            .and_then(|eps| eps.iter().find(|e| e["type"] == "read_write"))
            .and_then(endpoint);
        if let Some(ep) = existing {
            return Ok(ep);
        }
        let mut spec = self.endpoint_spec.clone();
        spec["branch_id"] = json!(branch_id);
        let body = json!({ "endpoint": spec });
        let reply = self
            .call_and_wait(
                Method::POST,
                &self.client.project_path("/endpoints"),
                Some(&body),
                dl,
            )
            .await?;
        endpoint(&reply.body["endpoint"])
            .ok_or_else(|| malformed("endpoint create", "endpoint.id/host"))
    }

    /// Creates the environment's own role, or — on a branch adopted from an earlier attempt
    /// where it already exists — gives it a new password that only this attempt knows.
    pub(super) async fn own_role(
        &self,
        branch_id: &str,
        role: &str,
        dl: Deadline,
    ) -> Result<Secret, NeonError> {
        let roles = self
            .client
            .project_path(&format!("/branches/{}/roles", seg(branch_id)));
        let body = json!({ "role": { "name": role } });
        let reply = match self
            .call_and_wait(Method::POST, &roles, Some(&body), dl)
            .await
        {
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
                self.reset_password(branch_id, role, dl).await?
            }
            other => other?,
        };
        password(&reply).ok_or_else(|| malformed("role create", "role.password"))
    }

    /// A new password for `role`; the old one stops working once this returns, because it waits
    /// for the operation.
    pub(super) async fn new_password(
        &self,
        branch_id: &str,
        role: &str,
        dl: Deadline,
    ) -> Result<Secret, NeonError> {
        let reply = self.reset_password(branch_id, role, dl).await?;
        password(&reply).ok_or_else(|| malformed("reset_password", "role.password"))
    }

    async fn reset_password(
        &self,
        branch_id: &str,
        role: &str,
        dl: Deadline,
    ) -> Result<Reply, NeonError> {
        let path = self.client.project_path(&format!(
            "/branches/{}/roles/{}/reset_password",
            seg(branch_id),
            seg(role)
        ));
        self.call_and_wait(Method::POST, &path, None, dl).await
    }

    /// Deletes a role of a branch; answers that say it is already gone count.
    pub(super) async fn delete_role(
        &self,
        branch_id: &str,
        role: &str,
        dl: Deadline,
    ) -> Result<(), NeonError> {
        let path =
            self.client
                .project_path(&format!("/branches/{}/roles/{}", seg(branch_id), seg(role)));
        match self.call_and_wait(Method::DELETE, &path, None, dl).await {
            Err(e) if gone(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Deletes a branch and waits until it is gone; answers that say it is already gone count.
    pub(super) async fn delete_branch(
        &self,
        branch_id: &str,
        dl: Deadline,
    ) -> Result<(), NeonError> {
        let path = self
            .client
            .project_path(&format!("/branches/{}", seg(branch_id)));
        match self.call_and_wait(Method::DELETE, &path, None, dl).await {
            Err(e) if gone(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    pub(super) async fn set_expiry(
        &self,
        branch_id: &str,
        expires_at: DateTime<Utc>,
        dl: Deadline,
    ) -> Result<(), NeonError> {
        let path = self
            .client
            .project_path(&format!("/branches/{}", seg(branch_id)));
        let body = json!({ "branch": { "expires_at": neon_expiry(expires_at) } });
        self.call_and_wait(Method::PATCH, &path, Some(&body), dl)
            .await
            .map(drop)
    }

    /// Puts the branch's data back to the source branch's current state.
    pub(super) async fn restore(
        &self,
        branch_id: &str,
        source_branch_id: &str,
        dl: Deadline,
    ) -> Result<(), NeonError> {
        let path = self
            .client
            .project_path(&format!("/branches/{}/restore", seg(branch_id)));
        let body = json!({ "source_branch_id": source_branch_id });
        self.call_and_wait(Method::POST, &path, Some(&body), dl)
            .await
            .map(drop)
    }
}

/// Neon's answers that mean "already gone" for a delete. A 422 says it only in its message:
/// Neon gives that case no code of its own.
fn gone(e: &NeonError) -> bool {
    match e.status().map(|s| s.as_u16()) {
        Some(404) => true,
        Some(422) => e.message().to_ascii_lowercase().contains("not found"),
        _ => false,
    }
}

fn endpoint(v: &Value) -> Option<Endpoint> {
    Some(Endpoint {
        id: v["id"].as_str()?.to_owned(),
        host: v["host"].as_str()?.to_owned(),
    })
}

fn password(reply: &Reply) -> Option<Secret> {
    reply.body["role"]["password"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(Secret::new)
}

fn malformed(call: &str, field: &str) -> NeonError {
    NeonError::Unavailable {
        message: format!("Neon {call}: answer lacks {field}"),
        retry_after: None,
    }
}

/// `expires_at` as Neon takes it: RFC 3339, no further ahead than Neon allows.
fn neon_expiry(expires_at: DateTime<Utc>) -> String {
    let cap = Utc::now() + MAX_EXPIRY - EXPIRY_MARGIN;
    expires_at
        .min(cap)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_capped_below_thirty_days() {
        let far =
            DateTime::parse_from_rfc3339(&neon_expiry(Utc::now() + chrono::Duration::days(60)))
                .unwrap()
                .with_timezone(&Utc);
        assert!(far <= Utc::now() + MAX_EXPIRY && far > Utc::now() + chrono::Duration::days(29));
        let near = Utc::now() + chrono::Duration::hours(2);
        assert_eq!(
            neon_expiry(near),
            near.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
    }

    #[test]
    fn delete_answers_that_mean_gone() {
        let api = |status: u16, message: &str| NeonError::Api {
            status: StatusCode::from_u16(status).unwrap(),
            code: String::new(),
            message: message.into(),
            request_id: None,
            call: "DELETE /x".into(),
        };
        assert!(gone(&api(404, "")));
        assert!(gone(&api(422, "branch not found")));
        assert!(!gone(&api(422, "cannot delete branch with children")));
        assert!(!gone(&api(400, "not found")));
    }
}
