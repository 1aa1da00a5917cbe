//! A fake Neon API v2 on 127.0.0.1, faithful to the contract in reference/neon-api.md: bearer
//! check, asynchronous operations that lock the project while they run, inherited roles and
//! passwords, name conflicts, a branch limit, and injectable 429/503 answers and failed operations.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const SEED_ROLE: &str = "neondb_owner";
pub const SEED_DATABASE: &str = "neondb";

#[derive(Debug, Clone)]
pub struct FakeNeonOptions {
    pub api_key: String,
    pub project_id: String,
    pub parent_branch_id: String,
    pub parent_branch_name: String,
    /// How long an operation takes from `scheduling` through `running` to its end.
    pub operation_duration: Duration,
    /// Branches per project, the default branch included.
    pub branch_limit: usize,
    /// `Retry-After` seconds sent with injected 429s, if any.
    pub retry_after_secs: Option<u64>,
    pub inject_429: u32,
    pub inject_503: u32,
}

impl Default for FakeNeonOptions {
    fn default() -> Self {
        Self {
            api_key: "napi_fake_key_0123456789abcdefghijklmnop".into(),
            project_id: "silent-hall-60879203".into(),
            parent_branch_id: "br-preview-seed".into(),
            parent_branch_name: "preview-seed".into(),
            operation_duration: Duration::from_millis(120),
            branch_limit: 10,
            retry_after_secs: None,
            inject_429: 0,
            inject_503: 0,
        }
    }
}

/// A branch as tests see it.
#[derive(Debug, Clone)]
pub struct BranchInfo {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub annotation: Option<Map<String, Value>>,
    pub restores: u32,
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub client_request_id: Option<String>,
}

pub struct FakeNeon {
    url: String,
    state: Arc<Mutex<Fake>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNeon {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeNeon {
    pub async fn start(opts: FakeNeonOptions) -> FakeNeon {
        let state = Arc::new(Mutex::new(Fake::new(opts)));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Neon");
        let addr = listener.local_addr().expect("fake Neon address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Neon server");
        });
        FakeNeon {
            url: format!("http://{addr}/api/v2"),
            state,
            server,
        }
    }

    /// The API base, e.g. `http://127.0.0.1:1234/api/v2`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn st(&self) -> MutexGuard<'_, Fake> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn api_key(&self) -> String {
        self.st().opts.api_key.clone()
    }

    pub fn project_id(&self) -> String {
        self.st().opts.project_id.clone()
    }

    pub fn parent_id(&self) -> String {
        self.st().opts.parent_branch_id.clone()
    }

    /// The seed role's password, which every child branch inherits.
    pub fn seed_password(&self) -> String {
        let st = self.st();
        let parent = st.branch(&st.opts.parent_branch_id).expect("seed branch");
        parent
            .roles
            .iter()
            .find(|r| r.name == SEED_ROLE)
            .expect("seed role")
            .password
            .clone()
    }

    /// Every branch but the default one and the seed.
    pub fn preview_branches(&self) -> Vec<BranchInfo> {
        let st = self.st();
        st.branches
            .iter()
            .filter(|b| !b.default && b.id != st.opts.parent_branch_id)
            .map(|b| st.info(b))
            .collect()
    }

    pub fn branches_named(&self, name: &str) -> Vec<BranchInfo> {
        let st = self.st();
        st.branches
            .iter()
            .filter(|b| b.name == name)
            .map(|b| st.info(b))
            .collect()
    }

    /// `POST …/branches` calls that got past authentication, injection and locking.
    pub fn branch_create_calls(&self) -> u32 {
        self.st().create_calls
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.st().log.clone()
    }

    /// `(name, password)` of a branch's roles.
    pub fn roles(&self, branch_id: &str) -> Vec<(String, String)> {
        let st = self.st();
        st.branch(branch_id)
            .map(|b| {
                b.roles
                    .iter()
                    .map(|r| (r.name.clone(), r.password.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `(id, host)` of a branch's endpoints.
    pub fn endpoints(&self, branch_id: &str) -> Vec<(String, String)> {
        let st = self.st();
        st.endpoints
            .iter()
            .filter(|e| e.branch_id == branch_id)
            .map(|e| (e.id.clone(), e.host.clone()))
            .collect()
    }

    pub fn inject_429(&self, n: u32) {
        self.st().inject_429 += n;
    }

    pub fn inject_503(&self, n: u32) {
        self.st().inject_503 += n;
    }

    /// The next `n` operations started end `failed`.
    pub fn fail_next_operations(&self, n: u32) {
        let mut st = self.st();
        st.fail_ops += n;
        st.fail_action = None;
    }

    /// The next `n` operations of `action` (e.g. `apply_config`) end `failed`.
    pub fn fail_next_operations_of(&self, action: &str, n: u32) {
        let mut st = self.st();
        st.fail_ops += n;
        st.fail_action = Some(action.into());
    }

    /// Starts an operation that keeps the project locked (423 on changes) for `d`.
    pub fn hold_project(&self, d: Duration) {
        let mut st = self.st();
        let main = st.default_branch.clone();
        st.start_op_for("apply_config", &main, None, d);
    }

    /// Makes a branch of the seed as Neon would, without an API call: what a crash right
    /// after Neon created the branch leaves behind. No endpoint when `with_endpoint` is false.
    pub fn create_branch_directly(
        &self,
        name: &str,
        annotation: Option<Value>,
        with_endpoint: bool,
    ) -> String {
        let mut st = self.st();
        let parent = st.opts.parent_branch_id.clone();
        let id = st.new_branch(name, &parent, None);
        if let Some(Value::Object(a)) = annotation {
            st.annotations.insert(id.clone(), a);
        }
        if with_endpoint {
            st.new_endpoint(&id, &json!({"type": "read_write"}));
        }
        id
    }
}

// ---- state ----

struct Role {
    name: String,
    password: String,
}

struct Branch {
    id: String,
    name: String,
    parent_id: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    default: bool,
    roles: Vec<Role>,
    databases: Vec<(String, String)>,
    restores: u32,
}

struct Endpoint {
    id: String,
    branch_id: String,
    host: String,
    kind: String,
    settings: Value,
    created_at: DateTime<Utc>,
}

struct Op {
    id: String,
    action: String,
    branch_id: String,
    endpoint_id: Option<String>,
    started: Instant,
    created_at: DateTime<Utc>,
    duration: Duration,
    fails: bool,
}

impl Op {
    fn status(&self) -> &'static str {
        let t = self.started.elapsed();
        if t < self.duration / 3 {
            "scheduling"
        } else if t < self.duration {
            "running"
        } else if self.fails {
            "failed"
        } else {
            "finished"
        }
    }

    fn done(&self) -> bool {
        self.started.elapsed() >= self.duration
    }

    fn json(&self, project: &str) -> Value {
        let status = self.status();
        let mut v = json!({
            "id": self.id, "project_id": project, "branch_id": self.branch_id, "action": self.action,
            "status": status, "failures_count": if status == "failed" { 1 } else { 0 },
            "created_at": ts(self.created_at), "updated_at": ts(Utc::now()),
            "total_duration_ms": self.started.elapsed().min(self.duration).as_millis() as u64,
        });
        if let Some(ep) = &self.endpoint_id {
            v["endpoint_id"] = json!(ep);
        }
        if status == "failed" {
            v["error"] = json!("injected failure");
        }
        v
    }
}

struct Fake {
    opts: FakeNeonOptions,
    default_branch: String,
    branches: Vec<Branch>,
    endpoints: Vec<Endpoint>,
    operations: Vec<Op>,
    annotations: HashMap<String, Map<String, Value>>,
    inject_429: u32,
    inject_503: u32,
    fail_ops: u32,
    fail_action: Option<String>,
    create_calls: u32,
    log: Vec<LoggedRequest>,
    seq: u64,
}

type Answer = (StatusCode, Value);

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 16)
}

fn err(status: StatusCode, code: &str, message: &str) -> Answer {
    (status, json!({ "code": code, "message": message }))
}

fn not_found(what: &str) -> Answer {
    err(StatusCode::NOT_FOUND, "", &format!("{what} not found"))
}

impl Fake {
    fn new(opts: FakeNeonOptions) -> Self {
        let mut f = Fake {
            default_branch: String::new(),
            branches: Vec::new(),
            endpoints: Vec::new(),
            operations: Vec::new(),
            annotations: HashMap::new(),
            inject_429: opts.inject_429,
            inject_503: opts.inject_503,
            fail_ops: 0,
            fail_action: None,
            create_calls: 0,
            log: Vec::new(),
            seq: 0,
            opts,
        };
        let main = f.next_id("br");
        f.branches.push(Branch {
            id: main.clone(),
            name: "main".into(),
            parent_id: None,
            expires_at: None,
            created_at: Utc::now(),
            default: true,
            roles: vec![Role {
                name: SEED_ROLE.into(),
                password: password(),
            }],
            databases: vec![(SEED_DATABASE.into(), SEED_ROLE.into())],
            restores: 0,
        });
        f.new_endpoint(&main, &json!({"type": "read_write"}));
        f.default_branch = main.clone();
        // The seed gets its own owner password: a child must inherit this one, not main's.
        f.branches.push(Branch {
            id: f.opts.parent_branch_id.clone(),
            name: f.opts.parent_branch_name.clone(),
            parent_id: Some(main),
            expires_at: None,
            created_at: Utc::now(),
            default: false,
            roles: vec![Role {
                name: SEED_ROLE.into(),
                password: password(),
            }],
            databases: vec![(SEED_DATABASE.into(), SEED_ROLE.into())],
            restores: 0,
        });
        f
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-fake-{:08}", self.seq)
    }

    fn branch(&self, id: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.id == id)
    }

    fn branch_mut(&mut self, id: &str) -> Option<&mut Branch> {
        self.branches.iter_mut().find(|b| b.id == id)
    }

    fn info(&self, b: &Branch) -> BranchInfo {
        BranchInfo {
            id: b.id.clone(),
            name: b.name.clone(),
            parent_id: b.parent_id.clone(),
            expires_at: b.expires_at,
            annotation: self.annotations.get(&b.id).cloned(),
            restores: b.restores,
        }
    }

    fn locked(&self) -> bool {
        self.operations.iter().any(|o| !o.done())
    }

    fn start_op(&mut self, action: &str, branch_id: &str, endpoint_id: Option<&str>) -> Value {
        let d = self.opts.operation_duration;
        self.start_op_for(action, branch_id, endpoint_id, d)
    }

    fn start_op_for(
        &mut self,
        action: &str,
        branch_id: &str,
        endpoint_id: Option<&str>,
        d: Duration,
    ) -> Value {
        let fails = self.fail_ops > 0 && self.fail_action.as_deref().is_none_or(|a| a == action);
        if fails {
            self.fail_ops -= 1;
        }
        let op = Op {
            id: uuid::Uuid::new_v4().to_string(),
            action: action.into(),
            branch_id: branch_id.into(),
            endpoint_id: endpoint_id.map(str::to_owned),
            started: Instant::now(),
            created_at: Utc::now(),
            duration: d,
            fails,
        };
        let v = op.json(&self.opts.project_id);
        self.operations.push(op);
        v
    }

    /// A child of `parent` inheriting its roles, passwords and databases.
    fn new_branch(
        &mut self,
        name: &str,
        parent: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> String {
        let id = self.next_id("br");
        let (roles, databases) = match self.branch(parent) {
            Some(p) => (
                p.roles
                    .iter()
                    .map(|r| Role {
                        name: r.name.clone(),
                        password: r.password.clone(),
                    })
                    .collect(),
                p.databases.clone(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        self.branches.push(Branch {
            id: id.clone(),
            name: name.into(),
            parent_id: Some(parent.into()),
            expires_at,
            created_at: Utc::now(),
            default: false,
            roles,
            databases,
            restores: 0,
        });
        id
    }

    fn new_endpoint(&mut self, branch_id: &str, spec: &Value) -> String {
        let id = self.next_id("ep");
        let settings = json!({
            "autoscaling_limit_min_cu": spec.get("autoscaling_limit_min_cu").cloned().unwrap_or(json!(0.25)),
            "autoscaling_limit_max_cu": spec.get("autoscaling_limit_max_cu").cloned().unwrap_or(json!(0.25)),
            "suspend_timeout_seconds": spec.get("suspend_timeout_seconds").cloned().unwrap_or(json!(0)),
        });
        self.endpoints.push(Endpoint {
            host: format!("{id}.us-east-2.aws.neon.tech"),
            id: id.clone(),
            branch_id: branch_id.into(),
            kind: spec["type"].as_str().unwrap_or("read_write").into(),
            settings,
            created_at: Utc::now(),
        });
        id
    }

    fn op_running(&self, branch_id: &str, action: &str) -> bool {
        self.operations
            .iter()
            .any(|o| o.branch_id == branch_id && o.action == action && !o.done())
    }

    fn branch_json(&self, b: &Branch) -> Value {
        let init = self.op_running(&b.id, "create_branch");
        let mut v = json!({
            "id": b.id, "project_id": self.opts.project_id, "parent_id": b.parent_id, "name": b.name,
            "current_state": if init { "init" } else { "ready" }, "default": b.default, "protected": false,
            "created_at": ts(b.created_at), "updated_at": ts(Utc::now()),
        });
        if init {
            v["pending_state"] = json!("ready");
        }
        if let Some(e) = b.expires_at {
            v["expires_at"] = json!(ts(e));
        }
        v
    }

    fn endpoint_json(&self, e: &Endpoint) -> Value {
        let starting = self
            .operations
            .iter()
            .any(|o| o.endpoint_id.as_deref() == Some(&e.id) && !o.done());
        let mut v = json!({
            "id": e.id, "project_id": self.opts.project_id, "branch_id": e.branch_id, "host": e.host,
            "type": e.kind, "current_state": if starting { "init" } else { "active" },
            "region_id": "aws-us-east-2", "created_at": ts(e.created_at),
        });
        if let (Value::Object(v), Value::Object(s)) = (&mut v, &e.settings) {
            v.extend(s.clone());
        }
        v
    }

    fn role_json(branch_id: &str, r: &Role, with_password: bool) -> Value {
        let mut v = json!({ "branch_id": branch_id, "name": r.name, "protected": false,
                            "created_at": ts(Utc::now()), "updated_at": ts(Utc::now()) });
        if with_password {
            v["password"] = json!(r.password);
        }
        v
    }

    /// Neon's limit on `expires_at`: RFC 3339, in the future, at most 30 days ahead.
    fn parse_expiry(v: &Value) -> Result<Option<DateTime<Utc>>, Answer> {
        let bad = |m: &str| err(StatusCode::BAD_REQUEST, "", m);
        match v {
            Value::Null => Ok(None),
            Value::String(s) => {
                let t = DateTime::parse_from_rfc3339(s)
                    .map_err(|_| bad("expires_at must be an RFC 3339 timestamp"))?
                    .with_timezone(&Utc);
                if t <= Utc::now() {
                    return Err(bad("expires_at must be in the future"));
                }
                if t > Utc::now() + chrono::Duration::days(30) {
                    return Err(bad(
                        "expires_at must not be more than 30 days in the future",
                    ));
                }
                Ok(Some(t))
            }
            _ => Err(bad("expires_at must be a string")),
        }
    }

    fn route(
        &mut self,
        method: &Method,
        segs: &[String],
        query: &HashMap<String, String>,
        body: &Value,
    ) -> Answer {
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let ["projects", project, rest @ ..] = s.as_slice() else {
            return not_found("route");
        };
        if *project != self.opts.project_id {
            return not_found("project");
        }
        let m = method.as_str();
        if m != "GET" && self.locked() {
            return err(
                StatusCode::LOCKED,
                "",
                "project already has running conflicting operations, scheduling of new ones is prohibited",
            );
        }
        match (m, rest) {
            ("GET", []) => (
                StatusCode::OK,
                json!({"project": {"id": self.opts.project_id, "name": "fake", "pg_version": 17,
                                   "region_id": "aws-us-east-2", "default_branch_id": self.default_branch}}),
            ),
            ("GET", ["branches"]) => self.list_branches(query),
            ("POST", ["branches"]) => self.create_branch(body),
            ("GET", ["branches", b]) => match self.branch(b) {
                Some(br) => (StatusCode::OK, json!({ "branch": self.branch_json(br) })),
                None => not_found("branch"),
            },
            ("PATCH", ["branches", b]) => self.patch_branch(b, body),
            ("DELETE", ["branches", b]) => self.delete_branch(b),
            ("POST", ["branches", b, "restore"]) => self.restore(b, body),
            ("GET", ["branches", b, "endpoints"]) => match self.branch(b) {
                Some(_) => {
                    let eps: Vec<Value> = self
                        .endpoints
                        .iter()
                        .filter(|e| e.branch_id == *b)
                        .map(|e| self.endpoint_json(e))
                        .collect();
                    (StatusCode::OK, json!({ "endpoints": eps }))
                }
                None => not_found("branch"),
            },
            ("POST", ["endpoints"]) => self.create_endpoint(body),
            ("GET", ["branches", b, "roles"]) => match self.branch(b) {
                Some(br) => {
                    let roles: Vec<Value> = br
                        .roles
                        .iter()
                        .map(|r| Self::role_json(b, r, false))
                        .collect();
                    (StatusCode::OK, json!({ "roles": roles }))
                }
                None => not_found("branch"),
            },
            ("POST", ["branches", b, "roles"]) => self.create_role(b, body),
            ("DELETE", ["branches", b, "roles", r]) => self.delete_role(b, r),
            ("POST", ["branches", b, "roles", r, "reset_password"]) => self.reset_password(b, r),
            ("GET", ["branches", b, "roles", r, "reveal_password"]) => {
                match self
                    .branch(b)
                    .and_then(|br| br.roles.iter().find(|x| x.name == *r))
                {
                    Some(role) => (StatusCode::OK, json!({ "password": role.password })),
                    None => not_found("role"),
                }
            }
            ("GET", ["operations", id]) => match self.operations.iter().find(|o| o.id == *id) {
                Some(op) => (
                    StatusCode::OK,
                    json!({ "operation": op.json(&self.opts.project_id) }),
                ),
                None => not_found("operation"),
            },
            _ => not_found("route"),
        }
    }

    fn list_branches(&self, query: &HashMap<String, String>) -> Answer {
        let search = query
            .get("search")
            .map(|s| s.to_lowercase())
            .unwrap_or_default();
        let matching: Vec<&Branch> = self
            .branches
            .iter()
            .filter(|b| b.name.to_lowercase().contains(&search) || b.id.contains(&search))
            .collect();
        let start: usize = query
            .get("cursor")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(10_000);
        let page: Vec<&Branch> = matching.iter().skip(start).take(limit).copied().collect();
        let mut annotations = Map::new();
        for b in &page {
            if let Some(a) = self.annotations.get(&b.id) {
                annotations.insert(
                    b.id.clone(),
                    json!({"object": {"type": "console/branch", "id": b.id}, "value": a}),
                );
            }
        }
        let mut pagination = json!({});
        if start + page.len() < matching.len() {
            pagination["next"] = json!((start + page.len()).to_string());
        }
        let branches: Vec<Value> = page.iter().map(|b| self.branch_json(b)).collect();
        (
            StatusCode::OK,
            json!({ "branches": branches, "annotations": annotations, "pagination": pagination }),
        )
    }

    fn create_branch(&mut self, body: &Value) -> Answer {
        self.create_calls += 1;
        let spec = &body["branch"];
        let parent = spec["parent_id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| self.default_branch.clone());
        if self.branch(&parent).is_none() {
            return not_found("parent branch");
        }
        let name = match spec["name"].as_str() {
            Some(n) if n.is_empty() || n.chars().count() > 256 => {
                return err(
                    StatusCode::BAD_REQUEST,
                    "",
                    "name must be 1 to 256 characters",
                )
            }
            Some(n) => n.to_owned(),
            None => format!("br-unnamed-{}", self.seq + 1),
        };
        if self.branches.iter().any(|b| b.name == name) {
            return err(StatusCode::CONFLICT, "", "branch already exists");
        }
        if self.branches.len() >= self.opts.branch_limit {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "BRANCHES_LIMIT_EXCEEDED",
                &format!(
                    "number of branches exceeds the limit of {} branches per project",
                    self.opts.branch_limit
                ),
            );
        }
        let expires_at = match Self::parse_expiry(&spec["expires_at"]) {
            Ok(e) => e,
            Err(a) => return a,
        };
        let endpoint_specs = body["endpoints"].as_array().cloned().unwrap_or_default();
        if endpoint_specs
            .iter()
            .any(|e| !matches!(e["type"].as_str(), Some("read_write" | "read_only")))
        {
            return err(
                StatusCode::BAD_REQUEST,
                "",
                "endpoints[].type must be read_write or read_only",
            );
        }
        let id = self.new_branch(&name, &parent, expires_at);
        if let Some(Value::Object(a)) = body.get("annotation_value") {
            self.annotations.insert(id.clone(), a.clone());
        }
        let mut operations = vec![self.start_op("create_branch", &id, None)];
        let mut endpoints = Vec::new();
        for spec in &endpoint_specs {
            let ep = self.new_endpoint(&id, spec);
            operations.push(self.start_op("start_compute", &id, Some(&ep)));
            endpoints.push(ep);
        }
        let b = self.branch(&id).expect("just created");
        let roles: Vec<Value> = b
            .roles
            .iter()
            .map(|r| Self::role_json(&id, r, true))
            .collect();
        let databases: Vec<Value> = b
            .databases
            .iter()
            .map(|(n, o)| json!({"branch_id": id, "name": n, "owner_name": o}))
            .collect();
        let eps: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| endpoints.contains(&e.id))
            .collect();
        let mut answer = json!({
            "branch": self.branch_json(b),
            "endpoints": eps.iter().map(|e| self.endpoint_json(e)).collect::<Vec<_>>(),
            "operations": operations, "roles": roles, "databases": databases,
        });
        // Neon leaves connection_uris out when it cannot tell which role and database to use.
        if let ([role], [(db, _)], Some(ep)) =
            (b.roles.as_slice(), b.databases.as_slice(), eps.first())
        {
            let pooler = ep.host.replacen('.', "-pooler.", 1);
            answer["connection_uris"] = json!([{
                "connection_uri": format!("postgresql://{}:{}@{}/{}?sslmode=require", role.name, role.password, ep.host, db),
                "connection_parameters": {"database": db, "role": role.name, "password": role.password,
                                          "host": ep.host, "pooler_host": pooler},
            }]);
        }
        (StatusCode::CREATED, answer)
    }

    fn patch_branch(&mut self, id: &str, body: &Value) -> Answer {
        if self.branch(id).is_none() {
            return not_found("branch");
        }
        let spec = &body["branch"];
        let expires = match spec.get("expires_at") {
            Some(v) => match Self::parse_expiry(v) {
                Ok(e) => Some(e),
                Err(a) => return a,
            },
            None => None,
        };
        let b = self.branch_mut(id).expect("checked above");
        if let Some(e) = expires {
            b.expires_at = e;
        }
        if let Some(n) = spec["name"].as_str() {
            b.name = n.into();
        }
        let b = self.branch(id).expect("checked above");
        (
            StatusCode::OK,
            json!({ "branch": self.branch_json(b), "operations": [] }),
        )
    }

    fn delete_branch(&mut self, id: &str) -> Answer {
        let Some(b) = self.branch(id) else {
            return (StatusCode::NO_CONTENT, Value::Null);
        };
        if b.default {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "",
                "cannot delete the default branch",
            );
        }
        if self
            .branches
            .iter()
            .any(|c| c.parent_id.as_deref() == Some(id))
        {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "",
                "cannot delete a branch that has children",
            );
        }
        let branch = self.branch_json(b);
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .filter(|e| e.branch_id == id)
            .map(|e| e.id.clone())
            .collect();
        let mut operations: Vec<Value> = eps
            .iter()
            .map(|e| self.start_op("suspend_compute", id, Some(e)))
            .collect();
        operations.push(self.start_op("delete_timeline", id, None));
        self.branches.retain(|b| b.id != id);
        self.endpoints.retain(|e| e.branch_id != id);
        self.annotations.remove(id);
        (
            StatusCode::OK,
            json!({ "branch": branch, "operations": operations }),
        )
    }

    fn restore(&mut self, id: &str, body: &Value) -> Answer {
        let Some(source) = body["source_branch_id"].as_str() else {
            return err(StatusCode::BAD_REQUEST, "", "source_branch_id is required");
        };
        if self.branch(source).is_none() {
            return not_found("source branch");
        }
        let Some(b) = self.branch_mut(id) else {
            return not_found("branch");
        };
        b.restores += 1;
        let op = self.start_op("create_timeline", id, None);
        let b = self.branch(id).expect("checked above");
        (
            StatusCode::OK,
            json!({ "branch": self.branch_json(b), "operations": [op] }),
        )
    }

    fn create_endpoint(&mut self, body: &Value) -> Answer {
        let spec = &body["endpoint"];
        let Some(branch_id) = spec["branch_id"].as_str().map(str::to_owned) else {
            return err(
                StatusCode::BAD_REQUEST,
                "",
                "endpoint.branch_id is required",
            );
        };
        if self.branch(&branch_id).is_none() {
            return not_found("branch");
        }
        if spec["type"] != "read_write" && spec["type"] != "read_only" {
            return err(
                StatusCode::BAD_REQUEST,
                "",
                "endpoint.type must be read_write or read_only",
            );
        }
        if spec["type"] == "read_write"
            && self
                .endpoints
                .iter()
                .any(|e| e.branch_id == branch_id && e.kind == "read_write")
        {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "",
                "read_write endpoint already exists",
            );
        }
        let ep = self.new_endpoint(&branch_id, spec);
        let op = self.start_op("start_compute", &branch_id, Some(&ep));
        let e = self
            .endpoints
            .iter()
            .find(|e| e.id == ep)
            .expect("just created");
        (
            StatusCode::CREATED,
            json!({ "endpoint": self.endpoint_json(e), "operations": [op] }),
        )
    }

    fn create_role(&mut self, branch_id: &str, body: &Value) -> Answer {
        let Some(name) = body["role"]["name"]
            .as_str()
            .filter(|n| !n.is_empty() && n.len() <= 63)
        else {
            return err(
                StatusCode::BAD_REQUEST,
                "",
                "role.name must be 1 to 63 bytes",
            );
        };
        let Some(b) = self.branch_mut(branch_id) else {
            return not_found("branch");
        };
        if b.roles.iter().any(|r| r.name == name) {
            return err(StatusCode::CONFLICT, "", "role already exists");
        }
        b.roles.push(Role {
            name: name.into(),
            password: password(),
        });
        let role = Self::role_json(branch_id, b.roles.last().expect("just pushed"), true);
        let op = self.start_op("apply_config", branch_id, None);
        (
            StatusCode::CREATED,
            json!({ "role": role, "operations": [op] }),
        )
    }

    fn delete_role(&mut self, branch_id: &str, name: &str) -> Answer {
        let Some(b) = self.branch_mut(branch_id) else {
            return not_found("branch");
        };
        let Some(pos) = b.roles.iter().position(|r| r.name == name) else {
            return not_found("role");
        };
        let role = Self::role_json(branch_id, &b.roles.remove(pos), false);
        let op = self.start_op("apply_config", branch_id, None);
        (StatusCode::OK, json!({ "role": role, "operations": [op] }))
    }

    fn reset_password(&mut self, branch_id: &str, name: &str) -> Answer {
        let Some(b) = self.branch_mut(branch_id) else {
            return not_found("branch");
        };
        let Some(r) = b.roles.iter_mut().find(|r| r.name == name) else {
            return not_found("role");
        };
        r.password = password();
        let role = Self::role_json(branch_id, r, true);
        let op = self.start_op("apply_config", branch_id, None);
        (StatusCode::OK, json!({ "role": role, "operations": [op] }))
    }
}

async fn handle(
    State(state): State<Arc<Mutex<Fake>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.seq += 1;
    let request_id = format!("fake-req-{:06}", st.seq);
    let path = uri.path().to_owned();
    let mut retry_after = None;
    let (status, mut value) = 'answer: {
        let authorized = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", st.opts.api_key));
        if !authorized {
            break 'answer err(StatusCode::UNAUTHORIZED, "", "authentication required");
        }
        if st.inject_503 > 0 {
            st.inject_503 -= 1;
            break 'answer err(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                "service temporarily unavailable",
            );
        }
        if st.inject_429 > 0 {
            st.inject_429 -= 1;
            retry_after = st.opts.retry_after_secs;
            break 'answer err(StatusCode::TOO_MANY_REQUESTS, "", "rate limit exceeded");
        }
        let Some(rest) = path.strip_prefix("/api/v2/") else {
            break 'answer not_found("route");
        };
        let segs: Vec<String> = rest
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let query: HashMap<String, String> = uri.query().map(url_decode_pairs).unwrap_or_default();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => {
                    break 'answer err(
                        StatusCode::BAD_REQUEST,
                        "",
                        "request body is not valid JSON",
                    )
                }
            }
        };
        st.route(&method, &segs, &query, &body)
    };
    if !status.is_success() {
        value["request_id"] = json!(request_id);
    }
    st.log.push(LoggedRequest {
        method: method.to_string(),
        path,
        status: status.as_u16(),
        client_request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    drop(st);
    let mut resp = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, axum::Json(value)).into_response()
    };
    resp.headers_mut().insert(
        "x-neon-ret-request-id",
        HeaderValue::from_str(&request_id).expect("ascii id"),
    );
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(s));
    }
    resp
}

/// `application/x-www-form-urlencoded` query pairs.
fn url_decode_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}
