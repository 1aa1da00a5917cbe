//! Neon backend: an environment is a branch of a seeded parent branch, named after the
//! environment key, reached through its own role — never the parent's inherited one.
//!
//! `mod.rs` is the `Backend` impl, deciding what to call; `api` holds the typed calls of Neon's
//! API and `client` the transport beneath them (retries, operation polling, the deadline).

mod api;
mod client;

use crate::backend::{
    object_name, Backend, BackendError, Capabilities, ProvisionRequest, Support, TargetHealth,
};
use crate::configuration::NeonTargetConfig;
use crate::domain::{Connection, InvalidInput, Isolation, NeonResources, Resources, Secret};
use anyhow::{anyhow, bail, Context};
use api::{Created, Endpoint, Found, NeonApi, NewBranch};
use chrono::{DateTime, Utc};
use client::{ClientSettings, Deadline, NeonClient, NeonError};
use reqwest::StatusCode;
use std::time::Duration;

/// Backoff stops doubling here, whatever the configured first delay.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Health checks must answer quickly even when the provisioning deadline is long.
const HEALTH_DEADLINE: Duration = Duration::from_secs(10);

pub struct NeonBackend {
    target: String,
    api: NeonApi,
    parent_branch: String,
    parent_id: tokio::sync::OnceCell<String>,
    database: String,
    pooled: bool,
    deadline: Duration,
}

impl std::fmt::Debug for NeonBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeonBackend")
            .field("target", &self.target)
            .field("api", &self.api)
            .field("parent_branch", &self.parent_branch)
            .finish_non_exhaustive()
    }
}

/// Where an environment's branch came from: only one we created is ours to roll back.
enum Origin {
    Created(Created),
    Adopted(Found),
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
        Ok(Self {
            target: target_name.to_owned(),
            api: NeonApi::new(client, cfg),
            parent_branch: cfg.parent_branch.clone(),
            parent_id: tokio::sync::OnceCell::new(),
            database: cfg.database.clone(),
            pooled: cfg.pooled,
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
                    self.api.project_id(),
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
                    .api
                    .find_branch(&self.parent_branch, dl)
                    .await
                    .map_err(|e| self.error(e))?
                {
                    Some(b) => Ok(b.id),
                    None => Err(BackendError::failed(format!(
                        "target {}: parent branch {:?} not found in Neon project {}",
                        self.target,
                        self.parent_branch,
                        self.api.project_id()
                    ))),
                }
            })
            .await
            .cloned()
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
                self.api.wait_operations(&operations, dl).await?;
                endpoint
            }
            None => {
                // An earlier life of the key may have left an earlier expiry on the branch.
                self.api.set_expiry(branch_id, req.expires_at, dl).await?;
                None
            }
        };
        let endpoint = match endpoint {
            Some(ep) => ep,
            None => self.api.endpoint_of(branch_id, dl).await?,
        };
        resources.endpoint_id = Some(endpoint.id);
        resources.endpoint_host = Some(endpoint.host.clone());
        let password = self.api.own_role(branch_id, role, dl).await?;
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
            .api
            .find_branch(name, dl)
            .await
            .map_err(|e| self.error(e))?;
        if let Some(b) = found {
            return Ok(Origin::Adopted(b));
        }
        let new = NewBranch {
            name,
            parent_id: parent,
            expires_at: req.expires_at,
            env_id: req.id,
            target: &self.target,
        };
        match self.api.create_branch(&new, dl).await {
            Ok(created) => Ok(Origin::Created(created)),
            // A rerun racing its own earlier attempt: the branch appeared since the search.
            Err(e) if e.status() == Some(StatusCode::CONFLICT) && !e.is_branch_limit() => {
                match self
                    .api
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
            self.api.project_id(),
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
            .api
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
        if found.ours(&parent) {
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
            project_id: self.api.project_id().to_owned(),
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
            Origin::Created(Created {
                id,
                endpoint,
                operations,
            }) => {
                tracing::info!(target_name = %self.target, branch_id = %id, env_id = %req.id, "created Neon branch");
                (id, Some((endpoint, operations)))
            }
            Origin::Adopted(b) => {
                if !b.ours(&parent) {
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
                    match self.api.delete_branch(&branch_id, self.deadline()).await {
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
        match self.api.delete_role(&branch_id, &resources.role, dl).await {
            Ok(()) => {}
            Err(e @ NeonError::Unavailable { .. }) => return Err(self.error(e)),
            // Deleting the branch below takes the role with it; that must not be blocked.
            Err(e) => {
                tracing::warn!(target_name = %self.target, branch_id = %branch_id, error = %e,
                "could not delete the environment's role; deleting its branch anyway")
            }
        }
        self.api
            .delete_branch(&branch_id, dl)
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
        self.api
            .set_expiry(branch_id, expires_at, self.deadline())
            .await
            .map_err(|e| self.error(e))
    }

    async fn rotate_credentials(
        &self,
        resources: &Resources,
        _expires_at: DateTime<Utc>,
    ) -> Result<Connection, BackendError> {
        let (branch_id, role, host) = self.live(resources)?;
        let password = self
            .api
            .new_password(branch_id, role, self.deadline())
            .await
            .map_err(|e| self.error(e))?;
        Ok(self.connection(host, role, password))
    }

    async fn reset(
        &self,
        resources: &Resources,
        _blueprint: Option<&std::sync::Arc<crate::blueprint::Blueprint>>,
        _password: &Secret,
        _deadline: &crate::bounds::Deadline,
    ) -> Result<(), BackendError> {
        let (branch_id, _, _) = self.live(resources)?;
        let dl = self.deadline();
        let parent = match &resources.neon()?.parent_id {
            Some(p) => p.clone(),
            None => self.parent_id(dl).await?,
        };
        self.api
            .restore(branch_id, &parent, dl)
            .await
            .map_err(|e| self.error(e))
    }

    async fn health(&self) -> TargetHealth {
        let dl = Deadline::after(self.deadline.min(HEALTH_DEADLINE));
        match self.api.pg_version(dl).await {
            Ok(version) => TargetHealth {
                healthy: true,
                server_version: version.map(|v| format!("PostgreSQL {v} (Neon)")),
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
}
