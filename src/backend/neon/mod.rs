//! Neon backend: an environment is a branch of a seeded parent branch, named after the
//! environment key, reached through its own role — never the parent's inherited one.

mod client;

use crate::backend::{
    object_name, Backend, BackendError, Capabilities, ProvisionRequest, Support, TargetHealth,
};
use crate::configuration::NeonTargetConfig;
use crate::domain::{Connection, InvalidInput, Isolation, NeonResources, Resources, Secret};
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use client::{seg, ClientSettings, Deadline, NeonClient, NeonError, Reply};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// Neon refuses `expires_at` more than 30 days ahead; the margin absorbs clock skew.
const MAX_EXPIRY: chrono::Duration = chrono::Duration::days(30);
const EXPIRY_MARGIN: chrono::Duration = chrono::Duration::hours(1);
/// Annotation key that marks a branch as previewdb's, so only those are ever adopted or deleted.
const MARK: &str = "previewdb";
/// Backoff stops doubling here, whatever the configured first delay.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Health checks must answer quickly even when the provisioning deadline is long.
const HEALTH_DEADLINE: Duration = Duration::from_secs(10);

pub struct NeonBackend {
    target: String,
    client: NeonClient,
    parent_branch: String,
    parent_id: tokio::sync::OnceCell<String>,
    database: String,
    pooled: bool,
    /// The `read_write` endpoint every environment gets, as sent to Neon.
    endpoint_spec: Value,
    deadline: Duration,
}

impl std::fmt::Debug for NeonBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeonBackend")
            .field("target", &self.target)
            .field("client", &self.client)
            .field("parent_branch", &self.parent_branch)
            .finish_non_exhaustive()
    }
}

/// A compute endpoint: where connections go.
struct Endpoint {
    id: String,
    host: String,
}

/// Where an environment's branch came from: only one we created is ours to roll back.
enum Origin {
    Created {
        id: String,
        endpoint: Option<Endpoint>,
        operations: Vec<String>,
    },
    Adopted(Found),
}

/// A branch found by exact name.
struct Found {
    id: String,
    parent_id: Option<String>,
    /// `None` when the listing carried no annotations at all, so ownership cannot be told.
    marked: Option<bool>,
}

impl NeonBackend {
    /// Builds the backend of target `target_name`; reads the API key from `api_key_file` or
    /// the environment variable `api_key_env`.
    pub fn new(target_name: &str, cfg: &NeonTargetConfig) -> anyhow::Result<Self> {
        let at = format!("targets.{target_name}");
        let key = match &cfg.api_key_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("{at}.api_key_file: cannot read {}", path.display()))?,
            None => std::env::var(&cfg.api_key_env).map_err(|_| {
                anyhow!(
                    "{at}: the Neon API key variable ${} is not set",
                    cfg.api_key_env
                )
            })?,
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("{at}: the Neon API key is empty");
        }
        let client = NeonClient::new(
            Secret::new(key),
            ClientSettings {
                base_url: cfg.api_url.clone(),
                project_id: cfg.project_id.clone(),
                request_timeout: cfg.request_timeout,
                retry_base: cfg.retry_base,
                retry_max: RETRY_MAX,
                poll_interval: cfg.poll_interval,
            },
        )
        .with_context(|| format!("{at}: building the HTTP client"))?;
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
        Ok(Self {
            target: target_name.to_owned(),
            client,
            parent_branch: cfg.parent_branch.clone(),
            parent_id: tokio::sync::OnceCell::new(),
            database: cfg.database.clone(),
            pooled: cfg.pooled,
            endpoint_spec,
            deadline: cfg.deadline,
        })
    }

    fn deadline(&self) -> Deadline {
        Deadline::after(self.deadline)
    }

    fn error(&self, e: NeonError) -> BackendError {
        if e.is_branch_limit() {
            return BackendError::LimitReached {
                message: format!(
                    "Neon project {} (target {}) reached its branch limit: {}; delete stale branches \
                     or raise the plan's branch limit",
                    self.client.project_id(),
                    self.target,
                    e.message()
                ),
            };
        }
        match e {
            NeonError::Unavailable {
                message,
                retry_after,
            } => BackendError::Unavailable {
                message,
                retry_after,
            },
            other => BackendError::failed(other.to_string()),
        }
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

    /// The parent branch's id: configured as `br-…`, or looked up once by exact name.
    async fn parent_id(&self, dl: Deadline) -> Result<String, BackendError> {
        let looks_like_id = self.parent_branch.starts_with("br-")
            && self
                .parent_branch
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if looks_like_id {
            return Ok(self.parent_branch.clone());
        }
        self.parent_id
            .get_or_try_init(|| async {
                match self
                    .find_branch(&self.parent_branch, dl)
                    .await
                    .map_err(|e| self.error(e))?
                {
                    Some(b) => Ok(b.id),
                    None => Err(BackendError::failed(format!(
                        "target {}: parent branch {:?} not found in Neon project {}",
                        self.target,
                        self.parent_branch,
                        self.client.project_id()
                    ))),
                }
            })
            .await
            .cloned()
    }

    /// Finds a branch by exact name; Neon's `search` also matches substrings and ids.
    async fn find_branch(&self, name: &str, dl: Deadline) -> Result<Option<Found>, NeonError> {
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

    /// Whether a branch found by name may be taken over (or deleted) by this target.
    fn owned(&self, b: &Found, parent_id: &str) -> bool {
        b.marked != Some(false) && b.parent_id.as_deref() == Some(parent_id)
    }

    /// The branch's `read_write` endpoint, created when the branch has none.
    async fn endpoint_of(&self, branch_id: &str, dl: Deadline) -> Result<Endpoint, NeonError> {
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
    async fn own_role(
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

    /// Deletes a branch and waits until it is gone; answers that say it is already gone count.
    async fn delete_branch(&self, branch_id: &str, dl: Deadline) -> Result<(), NeonError> {
        let path = self
            .client
            .project_path(&format!("/branches/{}", seg(branch_id)));
        match self.call_and_wait(Method::DELETE, &path, None, dl).await {
            Err(e) if gone(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn set_expiry(
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

    fn connection(&self, endpoint_host: &str, role: &str, password: Secret) -> Connection {
        let host = if self.pooled {
            pooler_host(endpoint_host)
        } else {
            endpoint_host.to_owned()
        };
        Connection {
            host,
            port: 5432,
            database: self.database.clone(),
            schema: None,
            user: role.to_owned(),
            password,
            params: vec![("sslmode".into(), "require".into())],
        }
    }

    /// Everything after the branch exists: endpoint, expiry of an adopted branch, own role.
    async fn complete(
        &self,
        req: &ProvisionRequest,
        branch_id: &str,
        created: Option<(Option<Endpoint>, Vec<String>)>,
        role: &str,
        resources: &mut NeonResources,
        dl: Deadline,
    ) -> Result<Connection, NeonError> {
        let endpoint = match created {
            Some((endpoint, operations)) => {
                self.client.wait_operations(&operations, dl).await?;
                endpoint
            }
            None => {
                // An earlier life of the key may have left an earlier expiry on the branch.
                self.set_expiry(branch_id, req.expires_at, dl).await?;
                None
            }
        };
        let endpoint = match endpoint {
            Some(ep) => ep,
            None => self.endpoint_of(branch_id, dl).await?,
        };
        resources.endpoint_id = Some(endpoint.id);
        resources.endpoint_host = Some(endpoint.host.clone());
        let password = self.own_role(branch_id, role, dl).await?;
        Ok(self.connection(&endpoint.host, role, password))
    }

    /// The environment's branch: found by name (an earlier attempt made it), else created.
    async fn create_or_find(
        &self,
        req: &ProvisionRequest,
        name: &str,
        parent: &str,
        dl: Deadline,
    ) -> Result<Origin, BackendError> {
        let found = self
            .find_branch(name, dl)
            .await
            .map_err(|e| self.error(e))?;
        if let Some(b) = found {
            return Ok(Origin::Adopted(b));
        }
        let body = json!({
            "branch": { "parent_id": parent, "name": name, "expires_at": neon_expiry(req.expires_at) },
            "endpoints": [self.endpoint_spec],
            "annotation_value": { MARK: "true", "previewdb_env_id": req.id.to_string(),
                                  "previewdb_target": self.target },
        });
        let path = self.client.project_path("/branches");
        match self
            .client
            .call(Method::POST, &path, &[], Some(&body), dl)
            .await
        {
            Ok(reply) => {
                let Some(id) = reply.body["branch"]["id"].as_str().map(str::to_owned) else {
                    return Err(self.error(malformed("branch create", "branch.id")));
                };
                let endpoint = reply.body["endpoints"]
                    .as_array()
                    .and_then(|eps| eps.iter().find(|e| e["type"] == "read_write"))
                    .and_then(endpoint);
                Ok(Origin::Created {
                    id,
                    endpoint,
                    operations: reply.operations(),
                })
            }
            // A rerun racing its own earlier attempt: the branch appeared since the search.
            Err(e) if e.status() == Some(StatusCode::CONFLICT) && !e.is_branch_limit() => {
                match self
                    .find_branch(name, dl)
                    .await
                    .map_err(|e| self.error(e))?
                {
                    Some(b) => Ok(Origin::Adopted(b)),
                    None => Err(self.error(e)),
                }
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn refuse_foreign(&self, name: &str, b: &Found) -> BackendError {
        BackendError::failed(format!(
            "Neon project {} already has a branch named {name:?} ({}) that previewdb did not make from \
             the parent branch; rename or delete it",
            self.client.project_id(),
            b.id
        ))
    }

    /// The branch an environment's resources point at, looked up by name when only planned.
    async fn recorded_branch(
        &self,
        resources: &NeonResources,
        dl: Deadline,
    ) -> Result<Option<String>, BackendError> {
        if let Some(id) = &resources.branch_id {
            return Ok(Some(id.clone()));
        }
        let Some(found) = self
            .find_branch(&resources.branch_name, dl)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(None);
        };
        let parent = match &resources.parent_id {
            Some(p) => p.clone(),
            None => self.parent_id(dl).await?,
        };
        if self.owned(&found, &parent) {
            Ok(Some(found.id))
        } else {
            tracing::warn!(target_name = %self.target, branch_id = %found.id,
                "branch with the environment's name is not previewdb's; left alone");
            Ok(None)
        }
    }

    /// The parts of a provisioned environment that credential calls need.
    fn live<'a>(
        &self,
        resources: &'a Resources,
    ) -> Result<(&'a str, &'a str, &'a str), BackendError> {
        let r = resources.neon()?;
        match (&r.branch_id, &r.endpoint_host) {
            (Some(b), Some(h)) => Ok((b, &r.role, h)),
            _ => Err(no_branch()),
        }
    }
}

#[async_trait::async_trait]
impl Backend for NeonBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "neon",
            isolations: &[Isolation::Branch],
            // The parent branch is the seed.
            blueprints: Support::No(
                "seeds environments from its parent branch; leave blueprint out",
            ),
            migrations: Support::No(
                "does not apply migrations; run them against the branch with your own tool",
            ),
            quotas: false,
        }
    }

    fn plan(&self, req: &ProvisionRequest) -> Result<Resources, BackendError> {
        if req.isolation != Isolation::Branch {
            return Err(InvalidInput::new(
                "isolation",
                format!(
                    "Neon target {} offers isolation \"branch\" only",
                    self.target
                ),
            )
            .into());
        }
        // From the key alone, so that a rerun after a crash finds the same branch and role.
        Ok(Resources::Neon(NeonResources {
            branch_name: req.key.as_str().to_owned(),
            role: object_name(&req.key, "neon").as_str().to_owned(),
            project_id: self.client.project_id().to_owned(),
            parent_id: None,
            branch_id: None,
            endpoint_id: None,
            endpoint_host: None,
        }))
    }

    async fn provision(
        &self,
        req: &ProvisionRequest,
        resources: &mut Resources,
    ) -> Result<Connection, BackendError> {
        let resources = resources.neon_mut()?;
        let dl = self.deadline();
        let parent = self.parent_id(dl).await?;
        resources.parent_id = Some(parent.clone());
        let name = resources.branch_name.clone();
        let (branch_id, created) = match self.create_or_find(req, &name, &parent, dl).await? {
            Origin::Created {
                id,
                endpoint,
                operations,
            } => {
                tracing::info!(target_name = %self.target, branch_id = %id, env_id = %req.id, "created Neon branch");
                (id, Some((endpoint, operations)))
            }
            Origin::Adopted(b) => {
                if !self.owned(&b, &parent) {
                    return Err(self.refuse_foreign(&name, &b));
                }
                tracing::info!(target_name = %self.target, branch_id = %b.id, env_id = %req.id, "adopting Neon branch");
                (b.id, None)
            }
        };
        resources.branch_id = Some(branch_id.clone());
        let we_created = created.is_some();
        let role = resources.role.clone();
        match self
            .complete(req, &branch_id, created, &role, resources, dl)
            .await
        {
            Ok(conn) => Ok(conn),
            Err(e) => {
                if we_created {
                    // A fresh deadline: the original may be what just ran out.
                    match self.delete_branch(&branch_id, self.deadline()).await {
                        Ok(()) => resources.branch_id = None,
                        Err(cleanup) => {
                            tracing::warn!(target_name = %self.target, branch_id = %branch_id,
                            error = %cleanup, "could not delete the branch of a failed provision")
                        }
                    }
                }
                Err(self.error(e))
            }
        }
    }

    /// A crashed attempt's branch is found by its name and adopted, not remade.
    async fn resume(
        &self,
        req: &ProvisionRequest,
        resources: &mut Resources,
    ) -> Result<Connection, BackendError> {
        self.provision(req, resources).await
    }

    async fn teardown(&self, resources: &Resources) -> Result<(), BackendError> {
        let dl = self.deadline();
        let resources = resources.neon()?;
        let Some(branch_id) = self.recorded_branch(resources, dl).await? else {
            return Ok(());
        };
        {
            let path = self.client.project_path(&format!(
                "/branches/{}/roles/{}",
                seg(&branch_id),
                seg(&resources.role)
            ));
            match self.call_and_wait(Method::DELETE, &path, None, dl).await {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e @ NeonError::Unavailable { .. }) => return Err(self.error(e)),
                // Deleting the branch below takes the role with it; that must not be blocked.
                Err(e) => {
                    tracing::warn!(target_name = %self.target, branch_id = %branch_id, error = %e,
                    "could not delete the environment's role; deleting its branch anyway")
                }
            }
        }
        self.delete_branch(&branch_id, dl)
            .await
            .map_err(|e| self.error(e))
    }

    async fn extend(
        &self,
        resources: &Resources,
        expires_at: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let Some(branch_id) = &resources.neon()?.branch_id else {
            return Err(no_branch());
        };
        self.set_expiry(branch_id, expires_at, self.deadline())
            .await
            .map_err(|e| self.error(e))
    }

    async fn rotate_credentials(
        &self,
        resources: &Resources,
        _expires_at: DateTime<Utc>,
    ) -> Result<Connection, BackendError> {
        let (branch_id, role, host) = self.live(resources)?;
        // Waiting for the operation is what makes the old password stop working.
        let reply = self
            .reset_password(branch_id, role, self.deadline())
            .await
            .map_err(|e| self.error(e))?;
        let password = password(&reply)
            .ok_or_else(|| self.error(malformed("reset_password", "role.password")))?;
        Ok(self.connection(host, role, password))
    }

    async fn reset(
        &self,
        resources: &Resources,
        _blueprint: Option<&std::sync::Arc<crate::blueprint::Blueprint>>,
        _password: &Secret,
        _deadline: &crate::service::Deadline,
    ) -> Result<(), BackendError> {
        let (branch_id, _, _) = self.live(resources)?;
        let dl = self.deadline();
        let parent = match &resources.neon()?.parent_id {
            Some(p) => p.clone(),
            None => self.parent_id(dl).await?,
        };
        let path = self
            .client
            .project_path(&format!("/branches/{}/restore", seg(branch_id)));
        let body = json!({ "source_branch_id": parent });
        self.call_and_wait(Method::POST, &path, Some(&body), dl)
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    async fn health(&self) -> TargetHealth {
        let dl = Deadline::after(self.deadline.min(HEALTH_DEADLINE));
        let path = self.client.project_path("");
        match self.client.call(Method::GET, &path, &[], None, dl).await {
            Ok(reply) => TargetHealth {
                healthy: true,
                server_version: reply.body["project"]["pg_version"]
                    .as_i64()
                    .map(|v| format!("PostgreSQL {v} (Neon)")),
                error: None,
            },
            Err(e) => TargetHealth {
                healthy: false,
                server_version: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// A ready environment whose record lacks its branch: the record is inconsistent, not the
/// caller's request.
fn no_branch() -> BackendError {
    BackendError::failed("the environment has no provisioned Neon branch")
}

/// Neon's answers that mean "already gone" for a delete.
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

/// `ep-x.region.aws.neon.tech` → `ep-x-pooler.region.aws.neon.tech`.
fn pooler_host(host: &str) -> String {
    match host.split_once('.') {
        Some((first, rest)) => format!("{first}-pooler.{rest}"),
        None => format!("{host}-pooler"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooler_host_inserts_after_the_endpoint_id() {
        assert_eq!(
            pooler_host("ep-cool-1.us-east-2.aws.neon.tech"),
            "ep-cool-1-pooler.us-east-2.aws.neon.tech"
        );
    }

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
