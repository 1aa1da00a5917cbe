//! A `neon` target driven through the REST API, against the local fake of Neon's API.

use crate::support::fake_neon::{FakeNeon, FakeNeonOptions, SEED_ROLE};
use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

async fn app_with_neon(fake: &FakeNeon, var: &str) -> TestApp {
    std::env::set_var(var, fake.api_key());
    let dir = temp_dir();
    let file = dir.path().join("neon.toml");
    std::fs::write(
        &file,
        format!(
            "[targets.neon]\nkind = \"neon\"\napi_url = {:?}\napi_key_env = {var:?}\nproject_id = {:?}\n\
             parent_branch = \"preview-seed\"\ndeadline = \"20s\"\nretry_base_ms = 10\npoll_interval_ms = 20\n\
             max_environments = 5\n",
            fake.url(),
            fake.project_id()
        ),
    )
    .unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.merge_file(&file).unwrap();
    TestApp::spawn_with(cluster, config).await
}

#[tokio::test]
async fn a_neon_branch_per_key_over_the_api() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let app = app_with_neon(&fake, "PREVIEWDB_TEST_NEON_API_1").await;

    let (status, env) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#900", "target": "neon", "ttl": "3d" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert_eq!(env["isolation"], "branch");
    let c = &env["connection"];
    assert!(c["host"].as_str().unwrap().starts_with("ep-"), "{env}");
    assert_ne!(c["user"], SEED_ROLE, "never the parent's inherited role");
    assert_ne!(c["password"], fake.seed_password().as_str());
    assert!(c["uri"].as_str().unwrap().contains("sslmode=require"));
    let branches = fake.branches_named("acme/web#900");
    assert_eq!(branches.len(), 1);
    assert_eq!(
        branches[0].parent_id.as_deref(),
        Some(fake.parent_id().as_str())
    );
    let expires: chrono::DateTime<chrono::Utc> =
        env["expires_at"].as_str().unwrap().parse().unwrap();
    let on_neon = branches[0]
        .expires_at
        .expect("expires_at set on the branch");
    assert!(
        (on_neon - expires).num_seconds().abs() <= 5,
        "{on_neon} vs {expires}"
    );
    let role = c["user"].as_str().unwrap();
    assert!(
        fake.roles(&branches[0].id).iter().any(|(r, _)| r == role),
        "the env's own role exists on the branch"
    );

    // Same key again: same environment, no second branch.
    let (status, again) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#900", "target": "neon", "ttl": "3d" }),
        )
        .await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &env["id"]));
    assert_eq!(fake.branch_create_calls(), 1);

    // A blueprint does not apply to a branch: its parent is the seed.
    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#901", "target": "neon", "blueprint": "app" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");

    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#904", "target": "neon", "migrations": [{ "name": "a.sql", "sql": "SELECT 1" }] }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "migrations are not silently dropped: {p}"
    );
    assert!(fake.branches_named("acme/web#904").is_empty());

    let path = env_path("acme/web#900");
    let (status, rotated) = app.post(&format!("{path}/credentials"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_ne!(
        rotated["connection"]["password"],
        env["connection"]["password"]
    );
    let (status, _) = app.post(&format!("{path}/reset"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.branches_named("acme/web#900")[0].restores, 1);
    let (status, _) = app
        .post(&format!("{path}/extend"), json!({ "ttl": "10d" }))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, deleted) = app.delete(&path).await;
    assert_eq!(
        (status, deleted["state"].as_str()),
        (StatusCode::OK, Some("deleted")),
        "{deleted}"
    );
    assert!(
        fake.branches_named("acme/web#900").is_empty(),
        "the branch is gone"
    );
    let (status, _) = app.delete(&path).await;
    assert_eq!(status, StatusCode::OK, "a second delete succeeds");
}

#[tokio::test]
async fn a_rerun_after_a_crash_adopts_the_branch() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let app = app_with_neon(&fake, "PREVIEWDB_TEST_NEON_API_2").await;
    // previewdb died after Neon made the branch and before it recorded anything.
    fake.create_branch_directly("acme/web#902", Some(json!({ "previewdb": "true" })), true);
    let (status, env) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#902", "target": "neon" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert_eq!(
        fake.branches_named("acme/web#902").len(),
        1,
        "adopted, not duplicated"
    );
    assert_eq!(fake.branch_create_calls(), 0);
}

#[tokio::test]
async fn a_failed_operation_fails_the_create_and_leaves_no_branch() {
    let fake = FakeNeon::start(FakeNeonOptions::default()).await;
    let app = app_with_neon(&fake, "PREVIEWDB_TEST_NEON_API_3").await;
    fake.fail_next_operations_of("create_branch", 1);
    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#903", "target": "neon" }),
        )
        .await;
    assert!(status.is_server_error(), "{status} {p}");
    assert!(fake.branches_named("acme/web#903").is_empty());
    let (_, rec) = app.get(&env_path("acme/web#903")).await;
    assert_eq!(rec["state"], "failed", "{rec}");
    assert!(
        !p.to_string().contains(&fake.api_key()),
        "the API key never reaches an error body"
    );
}
