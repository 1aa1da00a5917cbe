//! The Neon backend driven through the `Backend` trait against a fake Neon that follows the
//! API contract: branches, own roles, operations, retries, adoption, limits, secrecy.

use crate::support::fake_neon::{FakeNeon, FakeNeonOptions, SEED_ROLE};
use crate::support::logs;
use chrono::{DateTime, Duration as Days, Utc};
use previewdb::backend::neon::NeonBackend;
use previewdb::backend::{Backend, BackendError, ProvisionRequest};
use previewdb::configuration::NeonTargetConfig;
use previewdb::domain::{Connection, Resources};
use previewdb::domain::{EnvKey, Isolation};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A string field of a Neon environment's resources, by its stored name.
fn resource<'a>(resources: &'a Resources, name: &str) -> Option<&'a str> {
    let r = resources.neon().expect("Neon resources");
    match name {
        "branch_name" => Some(&r.branch_name),
        "role" => Some(&r.role),
        "branch_id" => r.branch_id.as_deref(),
        "endpoint_id" => r.endpoint_id.as_deref(),
        "endpoint_host" => r.endpoint_host.as_deref(),
        other => panic!("Neon resources have no {other:?}"),
    }
}

static NEXT_VAR: AtomicUsize = AtomicUsize::new(0);

/// A backend on `fake`, its key in a variable of its own so tests can run in parallel.
fn backend_with(fake: &FakeNeon, key: &str, extra: &str) -> NeonBackend {
    let var = format!(
        "PREVIEWDB_TEST_NEON_KEY_{}",
        NEXT_VAR.fetch_add(1, Ordering::SeqCst)
    );
    std::env::set_var(&var, key);
    let mut table: toml::Table = toml::from_str(&format!(
        "api_url = {:?}\napi_key_env = {var:?}\nproject_id = {:?}\nparent_branch = \"preview-seed\"\n\
         deadline = \"20s\"\nretry_base_ms = 10\npoll_interval_ms = 20\n",
        fake.url(),
        fake.project_id()
    ))
    .unwrap();
    table.extend(toml::from_str::<toml::Table>(extra).expect("extra config"));
    let cfg: NeonTargetConfig = table.try_into().expect("config");
    NeonBackend::new("neon", &cfg).expect("backend")
}

async fn start(opts: FakeNeonOptions) -> (FakeNeon, NeonBackend) {
    let fake = FakeNeon::start(opts).await;
    let backend = backend_with(&fake, &fake.api_key(), "");
    (fake, backend)
}

fn request(key: &str, ttl: Days) -> ProvisionRequest {
    ProvisionRequest {
        id: uuid::Uuid::new_v4(),
        key: EnvKey::parse(key).unwrap(),
        isolation: Isolation::Branch,
        expires_at: Utc::now() + ttl,
        blueprint: None,
        migrations: vec![],
        deadline: previewdb::bounds::Deadline::after(Duration::from_secs(60)),
    }
}

async fn provision(
    b: &NeonBackend,
    req: &ProvisionRequest,
) -> (Result<Connection, BackendError>, Resources) {
    let mut resources = b.plan(req).expect("plan");
    let result = b.provision(req, &mut resources).await;
    (result, resources)
}

/// Statuses Neon answered to `method` on paths matching `pattern` (below `/projects/{id}`,
/// `*` standing for one segment).
fn statuses(fake: &FakeNeon, method: &str, pattern: &str) -> Vec<u16> {
    let prefix = format!("/api/v2/projects/{}", fake.project_id());
    let want: Vec<&str> = pattern.split('/').collect();
    fake.requests()
        .into_iter()
        .filter(|r| r.method == method)
        .filter(|r| {
            let Some(rest) = r.path.strip_prefix(&prefix) else {
                return false;
            };
            let got: Vec<&str> = rest.split('/').collect();
            got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| *w == "*" || g == w)
        })
        .map(|r| r.status)
        .collect()
}

fn near(a: DateTime<Utc>, b: DateTime<Utc>, slack: Days) -> bool {
    (a - b).abs() <= slack
}

#[tokio::test]
async fn provision_hands_out_the_envs_own_role_on_one_new_branch() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let req = request("acme/web#123", Days::days(60));
    let (conn, res) = provision(&b, &req).await;
    let conn = conn.expect("provision");

    let branches = fake.preview_branches();
    assert_eq!(branches.len(), 1, "{branches:?}");
    let br = &branches[0];
    assert_eq!(br.name, "acme/web#123");
    assert_eq!(br.parent_id.as_deref(), Some("br-preview-seed"));
    let cap = Utc::now() + Days::days(30);
    let expires = br.expires_at.expect("expires_at sent");
    assert!(
        expires <= cap && expires > cap - Days::hours(2),
        "{expires} vs cap {cap}"
    );
    let note = br.annotation.as_ref().expect("annotation");
    assert_eq!(note["previewdb"], "true");
    assert_eq!(note["previewdb_env_id"], req.id.to_string());
    assert_eq!(fake.branch_create_calls(), 1);

    // The branch inherited the seed's owner and its password; the env got neither.
    let roles = fake.roles(&br.id);
    assert!(
        roles.contains(&(SEED_ROLE.to_string(), fake.seed_password())),
        "{roles:?}"
    );
    assert_ne!(conn.user, SEED_ROLE);
    assert_ne!(conn.password.expose(), fake.seed_password());
    assert_eq!(Some(conn.user.as_str()), resource(&res, "role"));
    assert!(
        conn.user.starts_with("pdb_env_acme_web_123_"),
        "{}",
        conn.user
    );
    assert!(
        roles.contains(&(conn.user.clone(), conn.password.expose().to_string())),
        "{roles:?}"
    );

    let endpoints = fake.endpoints(&br.id);
    assert_eq!(endpoints.len(), 1);
    assert_eq!(conn.host, endpoints[0].1);
    assert!(conn.host.starts_with("ep-") && conn.host.ends_with(".aws.neon.tech"));
    assert_eq!((conn.port, conn.database.as_str()), (5432, "neondb"));
    assert_eq!(
        conn.params,
        vec![("sslmode".to_string(), "require".to_string())]
    );
    assert_eq!(resource(&res, "branch_id"), Some(br.id.as_str()));
    assert_eq!(resource(&res, "endpoint_id"), Some(endpoints[0].0.as_str()));
    assert_eq!(resource(&res, "endpoint_host"), Some(conn.host.as_str()));

    // Waiting for operations means the project was never found locked, and they were polled.
    let log = fake.requests();
    assert!(log.iter().all(|r| r.status != 423), "{log:?}");
    assert!(
        log.iter().any(|r| r.path.contains("/operations/")),
        "operations were not polled"
    );
    assert!(
        log.iter().all(|r| r.client_request_id.is_some()),
        "X-Request-ID missing"
    );
    assert_eq!(b.capabilities().isolations, &[Isolation::Branch]);
}

#[tokio::test]
async fn plan_names_the_branch_after_the_key_only() {
    let (_fake, b) = start(FakeNeonOptions::default()).await;
    let one = b.plan(&request("acme/web#7", Days::days(1))).unwrap();
    let two = b.plan(&request("acme/web#7", Days::days(2))).unwrap();
    assert_eq!(resource(&one, "branch_name"), Some("acme/web#7"));
    assert_eq!(
        one, two,
        "a rerun with a new id must find the same branch and role"
    );
    let mut wrong = request("acme/web#7", Days::days(1));
    wrong.isolation = Isolation::Database;
    assert!(matches!(b.plan(&wrong), Err(BackendError::Invalid { .. })));
}

#[tokio::test]
async fn pooled_connections_use_the_pooler_host_and_parent_may_be_an_id() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let b = backend_with(
        &fake,
        &fake.api_key(),
        "pooled = true\nparent_branch = \"br-preview-seed\"\n",
    );
    let (conn, res) = provision(&b, &request("pool/me", Days::days(1))).await;
    let conn = conn.expect("provision");
    let host = resource(&res, "endpoint_host").unwrap();
    let (id, region) = host.split_once('.').unwrap();
    assert_eq!(conn.host, format!("{id}-pooler.{region}"));
}

#[tokio::test]
async fn locked_project_rate_limits_and_unavailability_are_ridden_out() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    fake.hold_project(Duration::from_millis(400));
    fake.inject_429(2);
    fake.inject_503(2);
    let (conn, _) = provision(&b, &request("acme/web#9", Days::days(1))).await;
    conn.expect("provision despite 423/429/503");
    let seen: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    for code in [423, 429, 503] {
        assert!(seen.contains(&code), "{code} never answered: {seen:?}");
    }
    assert_eq!(fake.preview_branches().len(), 1);
    assert_eq!(
        statuses(&fake, "POST", "/branches")
            .iter()
            .filter(|s| **s == 201)
            .count(),
        1
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (fake, b) = start(FakeNeonOptions {
        retry_after_secs: Some(1),
        ..Default::default()
    })
    .await;
    fake.inject_429(1);
    let t = Instant::now();
    assert!(b.health().await.healthy);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "retried after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn retries_end_at_the_deadline_as_unavailable() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let b = backend_with(&fake, &fake.api_key(), "deadline = \"1s\"\n");
    fake.inject_503(10_000);
    let t = Instant::now();
    let (conn, _) = provision(&b, &request("acme/web#10", Days::days(1))).await;
    assert!(
        matches!(conn, Err(BackendError::Unavailable { .. })),
        "{conn:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_failed_branch_operation_fails_provision_and_leaves_no_branch() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    fake.fail_next_operations(1);
    let (conn, _) = provision(&b, &request("acme/web#11", Days::days(1))).await;
    let err = conn.expect_err("failed operation must fail provision");
    assert!(matches!(err, BackendError::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains("failed"), "{err}");
    assert!(
        fake.preview_branches().is_empty(),
        "{:?}",
        fake.preview_branches()
    );
    // 423s are the other operation of the create still running.
    let deletes: Vec<u16> = statuses(&fake, "DELETE", "/branches/*")
        .into_iter()
        .filter(|s| *s != 423)
        .collect();
    assert_eq!(deletes, vec![200]);
}

#[tokio::test]
async fn a_failed_role_operation_also_rolls_the_branch_back() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    fake.fail_next_operations_of("apply_config", 1);
    let (conn, _) = provision(&b, &request("acme/web#12", Days::days(1))).await;
    assert!(conn.is_err());
    assert!(fake.preview_branches().is_empty());
    assert_eq!(statuses(&fake, "POST", "/branches/*/roles").len(), 1);
}

#[tokio::test]
async fn a_branch_left_by_a_crash_is_adopted() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let req = request("acme/web#13", Days::days(3));
    // previewdb died after Neon made the branch, before it had an endpoint recorded.
    let marker = serde_json::json!({"previewdb": "true", "previewdb_env_id": req.id.to_string()});
    let left = fake.create_branch_directly("acme/web#13", Some(marker), false);

    let (conn, res) = provision(&b, &req).await;
    let conn = conn.expect("adopt");
    assert!(fake.branch_create_calls() <= 1);
    assert!(statuses(&fake, "POST", "/branches")
        .iter()
        .all(|s| *s == 409));
    let named = fake.branches_named("acme/web#13");
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].id, left);
    assert_eq!(resource(&res, "branch_id"), Some(left.as_str()));
    let expires = named[0]
        .expires_at
        .expect("adopted branch gets the env's expiry");
    assert!(near(expires, req.expires_at, Days::seconds(2)), "{expires}");
    let endpoints = fake.endpoints(&left);
    assert_eq!(
        endpoints.len(),
        1,
        "a read_write endpoint is created for an adopted branch"
    );
    assert_eq!(conn.host, endpoints[0].1);

    // A second rerun finds the role too and hands out a fresh password for it.
    let (again, res2) = provision(&b, &req).await;
    let again = again.expect("second adopt");
    assert_eq!(resource(&res2, "branch_id"), Some(left.as_str()));
    assert_eq!(again.user, conn.user);
    assert_ne!(again.password.expose(), conn.password.expose());
    let roles = fake.roles(&left);
    assert_eq!(roles.iter().filter(|(n, _)| *n == again.user).count(), 1);
    assert!(roles.contains(&(again.user.clone(), again.password.expose().to_string())));
    assert_eq!(fake.endpoints(&left).len(), 1);
}

#[tokio::test]
async fn resume_after_a_crash_adopts_instead_of_remaking() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let req = request("acme/web#24", Days::days(1));
    let marker = serde_json::json!({"previewdb": "true", "previewdb_env_id": req.id.to_string()});
    let left = fake.create_branch_directly("acme/web#24", Some(marker), true);
    let mut res = b.plan(&req).unwrap();
    b.resume(&req, &mut res).await.expect("resume");
    assert_eq!(resource(&res, "branch_id"), Some(left.as_str()));
    assert_eq!(fake.branch_create_calls(), 0);
    assert!(statuses(&fake, "DELETE", "/branches/*").is_empty());
    assert_eq!(fake.endpoints(&left).len(), 1);
}

#[tokio::test]
async fn concurrent_attempts_meet_409_and_adopt_one_branch() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let req = request("acme/web#14", Days::days(1));
    let (r1, r2) = tokio::join!(provision(&b, &req), provision(&b, &req));
    r1.0.expect("first");
    r2.0.expect("second");
    assert_eq!(fake.branches_named("acme/web#14").len(), 1);
    assert_eq!(fake.branch_create_calls(), 2);
    assert!(statuses(&fake, "POST", "/branches").contains(&409));
    assert_eq!(resource(&r1.1, "branch_id"), resource(&r2.1, "branch_id"));
}

#[tokio::test]
async fn a_foreign_branch_with_the_same_name_is_neither_adopted_nor_deleted() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let theirs = fake.create_branch_directly("acme/web#15", None, true);
    let req = request("acme/web#15", Days::days(1));
    let (conn, res) = provision(&b, &req).await;
    let err = conn.expect_err("must not take over someone else's branch");
    assert!(err.to_string().contains("did not make"), "{err}");
    b.teardown(&b.plan(&req).unwrap())
        .await
        .expect("teardown of a planned env");
    assert!(resource(&res, "branch_id").is_none());
    assert_eq!(fake.branches_named("acme/web#15")[0].id, theirs);
}

#[tokio::test]
async fn teardown_removes_role_and_branch_and_is_idempotent() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let (conn, res) = provision(&b, &request("acme/web#16", Days::days(1))).await;
    conn.expect("provision");
    b.teardown(&res).await.expect("teardown");
    assert!(fake.preview_branches().is_empty());
    assert_eq!(statuses(&fake, "DELETE", "/branches/*/roles/*"), vec![200]);
    assert_eq!(statuses(&fake, "DELETE", "/branches/*"), vec![200]);

    b.teardown(&res).await.expect("second teardown");
    assert_eq!(statuses(&fake, "DELETE", "/branches/*"), vec![200, 204]);
    assert_eq!(
        statuses(&fake, "DELETE", "/branches/*/roles/*"),
        vec![200, 404]
    );

    // Only planned, never created: nothing to find, nothing deleted.
    let before = fake.requests().len();
    let planned = b.plan(&request("never/made", Days::days(1))).unwrap();
    b.teardown(&planned).await.expect("planned-only teardown");
    assert!(fake.requests()[before..].iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn teardown_of_a_planned_env_finds_a_crash_left_branch_by_name() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let req = request("acme/web#17", Days::days(1));
    fake.create_branch_directly(
        "acme/web#17",
        Some(serde_json::json!({"previewdb": "true"})),
        true,
    );
    b.teardown(&b.plan(&req).unwrap()).await.expect("teardown");
    assert!(fake.branches_named("acme/web#17").is_empty());
}

#[tokio::test]
async fn rotate_reset_and_extend_speak_neon() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let (conn, res) = provision(&b, &request("acme/web#18", Days::days(1))).await;
    let conn = conn.expect("provision");
    let branch = resource(&res, "branch_id").unwrap().to_owned();

    let rotated = b
        .rotate_credentials(&res, Utc::now() + Days::days(1))
        .await
        .expect("rotate");
    assert_eq!(
        (rotated.user.as_str(), rotated.host.as_str()),
        (conn.user.as_str(), conn.host.as_str())
    );
    assert_ne!(rotated.password.expose(), conn.password.expose());
    assert!(fake
        .roles(&branch)
        .contains(&(conn.user.clone(), rotated.password.expose().to_string())));

    let deadline = previewdb::bounds::Deadline::after(Duration::from_secs(60));
    b.reset(&res, None, &previewdb::domain::Secret::new(""), &deadline)
        .await
        .expect("reset");
    assert_eq!(fake.preview_branches()[0].restores, 1);

    let later = Utc::now() + Days::days(5);
    b.extend(&res, later).await.expect("extend");
    assert!(near(
        fake.preview_branches()[0].expires_at.unwrap(),
        later,
        Days::seconds(2)
    ));
    b.extend(&res, Utc::now() + Days::days(90))
        .await
        .expect("extend past Neon's cap");
    let capped = fake.preview_branches()[0].expires_at.unwrap();
    assert!(capped <= Utc::now() + Days::days(30) && capped > Utc::now() + Days::days(29));
    assert_eq!(statuses(&fake, "PATCH", "/branches/*"), vec![200, 200]);
}

#[tokio::test]
async fn the_branch_limit_becomes_limit_reached() {
    // main + preview-seed + one preview branch.
    let (fake, b) = start(FakeNeonOptions {
        branch_limit: 3,
        ..Default::default()
    })
    .await;
    provision(&b, &request("one", Days::days(1)))
        .await
        .0
        .expect("first fits");
    let (conn, _) = provision(&b, &request("two", Days::days(1))).await;
    match conn {
        Err(BackendError::LimitReached { message }) => {
            assert!(message.contains("branch limit"), "{message}")
        }
        other => panic!("expected LimitReached, got {other:?}"),
    }
    assert!(fake.branches_named("two").is_empty());
}

#[tokio::test]
async fn other_client_errors_fail_at_once_with_neons_message_and_request_id() {
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let (conn, res) = provision(&b, &request("acme/web#19", Days::days(1))).await;
    conn.expect("provision");
    let err = b
        .extend(&res, Utc::now() - Days::hours(1))
        .await
        .expect_err("past expiry");
    let text = err.to_string();
    assert!(matches!(err, BackendError::Failed { .. }), "{err:?}");
    assert!(text.contains("expires_at must be in the future"), "{text}");
    assert!(
        text.contains("400") && text.contains("request id fake-req-"),
        "{text}"
    );
    assert_eq!(
        statuses(&fake, "PATCH", "/branches/*"),
        vec![400],
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn the_api_key_never_reaches_logs_or_errors() {
    let logs = logs::capture();
    let (fake, b) = start(FakeNeonOptions::default()).await;
    let key = fake.api_key();
    let mut texts = vec![format!("{b:?}")];
    fake.inject_429(1);
    let (conn, res) = provision(&b, &request("acme/web#20", Days::days(1))).await;
    texts.push(format!("{:?}", conn.expect("provision")));
    texts.push(format!(
        "{:?}",
        b.extend(&res, Utc::now() - Days::hours(1)).await
    ));
    fake.fail_next_operations(1);
    let failed = provision(&b, &request("acme/web#21", Days::days(1)))
        .await
        .0
        .expect_err("failed op");
    texts.push(format!("{failed} {failed:?}"));

    let wrong = backend_with(&fake, "napi_wrong_key_abcdefghijklmnopqrstuvwxyz", "");
    let denied = provision(&wrong, &request("acme/web#22", Days::days(1)))
        .await
        .0
        .expect_err("401");
    texts.push(format!("{denied} {denied:?}"));
    assert!(denied.to_string().contains("401"), "{denied}");
    texts.push(format!("{wrong:?}"));
    texts.push(format!("{:?}", wrong.health().await));

    // A network error: reqwest's text names the URL, which must not carry the key either.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg: NeonTargetConfig = toml::from_str(&format!(
        "api_url = \"http://{dead}/api/v2\"\napi_key_env = \"PREVIEWDB_TEST_NEON_DEAD\"\nproject_id = \"p\"\n\
         parent_branch = \"br-x\"\ndeadline = \"1s\"\nretry_base_ms = 10\n"
    ))
    .unwrap();
    std::env::set_var("PREVIEWDB_TEST_NEON_DEAD", &key);
    let unreachable = NeonBackend::new("dead", &cfg).unwrap();
    let down = provision(&unreachable, &request("acme/web#23", Days::days(1)))
        .await
        .0
        .expect_err("down");
    assert!(matches!(down, BackendError::Unavailable { .. }), "{down:?}");
    texts.push(format!("{down} {down:?}"));

    let logs = logs.text();
    assert!(
        logs.contains("Neon answered"),
        "the subscriber saw nothing: {} bytes",
        logs.len()
    );
    assert!(!logs.contains(&key), "key in logs");
    assert!(!logs.contains("napi_wrong_key"), "wrong key in logs");
    for t in &texts {
        assert!(
            !t.contains(&key) && !t.contains("napi_wrong_key"),
            "key in {t}"
        );
    }
}

#[tokio::test]
async fn the_key_can_come_from_a_file() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neon.key");
    std::fs::write(&path, format!("{}\n", fake.api_key())).unwrap();
    let b = backend_with(
        &fake,
        "unused",
        &format!("api_key_file = {:?}\n", path.display().to_string()),
    );
    assert!(b.health().await.healthy);
    let missing: NeonTargetConfig = toml::from_str(
        "api_key_env = \"PREVIEWDB_TEST_NEON_UNSET\"\nproject_id = \"p\"\nparent_branch = \"x\"\n",
    )
    .unwrap();
    let e = NeonBackend::new("t", &missing)
        .expect_err("no key")
        .to_string();
    assert!(e.contains("PREVIEWDB_TEST_NEON_UNSET"), "{e}");
}

#[tokio::test]
async fn the_fake_follows_the_contract() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let http = reqwest::Client::new();
    let base = format!("{}/projects/{}", fake.url(), fake.project_id());
    let key = fake.api_key();

    let r = http.get(&base).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let rid = r.headers()["x-neon-ret-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["request_id"], rid.as_str());
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(http.get(&base).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&base)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let create = serde_json::json!({"branch": {"parent_id": fake.parent_id(), "name": "x"},
                                    "endpoints": [{"type": "read_write"}]});
    let r = http
        .post(format!("{base}/branches"))
        .bearer_auth(&key)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: serde_json::Value = r.json().await.unwrap();
    let ops = made["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2);
    assert!(ops.iter().all(|o| o["status"] == "scheduling"));
    assert_eq!(made["branch"]["current_state"], "init");
    assert!(made["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == SEED_ROLE && r["password"] == fake.seed_password()));

    // Changes are refused while operations run, then the duplicate name is a conflict.
    let r = http
        .post(format!("{base}/branches"))
        .bearer_auth(&key)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 423);
    let op = format!("{base}/operations/{}", ops[0]["id"].as_str().unwrap());
    let mut seen = Vec::new();
    loop {
        let v: serde_json::Value = http
            .get(&op)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let s = v["operation"]["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "finished" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["scheduling", "running", "finished"]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = http
        .post(format!("{base}/branches"))
        .bearer_auth(&key)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // The seed now has a child, and a missing branch is already gone.
    let r = http
        .delete(format!("{base}/branches/{}", fake.parent_id()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = http
        .delete(format!("{base}/branches/br-missing-1"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let far = (Utc::now() + Days::days(31)).to_rfc3339();
    let id = made["branch"]["id"].as_str().unwrap();
    let r = http
        .patch(format!("{base}/branches/{id}"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"branch": {"expires_at": far}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
