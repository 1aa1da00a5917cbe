//! A target that goes away: callers get 503 with Retry-After, and no state is lost or half-made.

use crate::support::*;
use previewdb::configuration::{PostgresTargetConfig, TargetConfig};
use previewdb::embedded::EmbeddedPostgres;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn target_down_answers_503_and_keeps_state() {
    let cluster = cluster().await;
    let dir = temp_dir();
    let data = dir.path().join("flaky");
    let flaky = tokio::task::spawn_blocking({
        let data = data.clone();
        move || EmbeddedPostgres::start(&data)
    })
    .await
    .unwrap()
    .expect("second cluster");
    let mut config = cluster.config.clone();
    let TargetConfig::Postgres(local) = config.targets["local"].clone() else {
        unreachable!()
    };
    config.targets.insert(
        "flaky".into(),
        TargetConfig::Postgres(PostgresTargetConfig {
            admin_url: flaky.admin_url("postgres"),
            public_host: "127.0.0.1".into(),
            public_port: flaky.port(),
            public_sslmode: None,
            max_environments: 10,
            connection_limit: 5,
            revoke_public_connect: true,
            ..local
        }),
    );
    let app = TestApp::spawn_with(cluster.clone(), config.clone()).await;
    let env = app
        .create(json!({ "key": "flaky/1", "target": "flaky" }))
        .await;

    flaky.stop();

    // Creating on the stopped target: 503 with Retry-After, recorded as failed, nothing live.
    let res = app
        .http
        .post(format!("{}/v1/environments", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "key": "flaky/2", "target": "flaky" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable");
    let (_, attempt) = app.get(&env_path("flaky/2")).await;
    assert_eq!(attempt["state"], "failed", "{attempt}");

    // Deleting the existing one: 503, and the record is still there to finish later.
    let (status, p) = app.delete(&env_path("flaky/1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{p}");
    let (status, still) = app.get(&env_path("flaky/1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(still["id"], env["id"]);
    assert_eq!(still["state"], "deleting");
    let (_, targets) = app.get("/v1/targets").await;
    let t = targets["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "flaky")
        .unwrap()
        .clone();
    assert_eq!(t["health"]["healthy"], false, "{t}");
    // What an operator's dashboard shows: the target down, the failures the service's own.
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_metrics(&text);
    let up = metric_series(&samples, "previewdb_target_up");
    assert_eq!(
        (up["target=flaky"], up["target=local"]),
        (0.0, 1.0),
        "{text}"
    );
    let operations = metric_series(&samples, "previewdb_operations_total");
    assert_eq!(operations["operation=create,outcome=error"], 1.0, "{text}");
    assert_eq!(operations["operation=delete,outcome=error"], 1.0, "{text}");

    // The target comes back: the interrupted deletion completes, nothing is left on it.
    let flaky = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&data))
        .await
        .unwrap()
        .unwrap();
    let mut config = config.clone();
    if let Some(TargetConfig::Postgres(t)) = config.targets.get_mut("flaky") {
        t.admin_url = flaky.admin_url("postgres");
        t.public_port = flaky.port();
    }
    let app = TestApp::spawn_with(cluster, config).await;
    // The app's own lifecycle loop may be reconciling already; wait for the outcome.
    let mut gone = serde_json::Value::Null;
    for _ in 0..50 {
        app.app.reconcile().await.unwrap();
        gone = app.get(&env_path("flaky/1")).await.1;
        if gone["state"] == "deleted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(gone["state"], "deleted", "{gone}");
    let admin = connect(&flaky.admin_url("postgres")).await.unwrap();
    let left: i64 = admin
        .query_one("SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pdb_%') + (SELECT count(*) FROM pg_database WHERE datname LIKE 'pdb_%')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
