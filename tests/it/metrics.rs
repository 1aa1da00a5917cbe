//! `GET /metrics` black-box: after a known series of calls the exposition, parsed, counts exactly
//! what happened, agrees with the control store, and names no environment.
//!
//! One test, on a cluster of its own: the environments gauge reads the whole control store, and
//! every other app's background sweep could take this test's expired environment.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// This module's own cluster (see above).
static CLUSTER: OnceCell<Arc<Cluster>> = OnceCell::const_new();

async fn cluster() -> Arc<Cluster> {
    cluster_in(&CLUSTER).await
}

fn expected(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn metrics_count_what_happened_and_name_no_environment() {
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("tiny.sql"),
        "CREATE TABLE notes (id int);\n",
    )
    .unwrap();
    let file = dir.path().join("blueprints.toml");
    std::fs::write(
        &file,
        format!(
            "[blueprints.tiny]\nschema = {:?}\npool_size = 1\n",
            dir.path().join("tiny.sql").display().to_string()
        ),
    )
    .unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.merge_file(&file).expect("blueprint config");
    let app = TestApp::spawn_with(cluster, config).await;

    // Fill the pool now (the background warm-up may be at it too: one of them fills it).
    let (status, prepared) = app.post("/v1/blueprints/tiny/prepare", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{prepared}");

    let key = "canary-Zq7xK/web#4242";
    let (status, env) = app
        .post(
            "/v1/environments",
            json!({ "key": key, "labels": { "owner": "labelcanary-Vw3" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let password = env["connection"]["password"].as_str().unwrap().to_owned();
    let id = env["id"].as_str().unwrap().to_owned();
    let (status, _) = app.post("/v1/environments", json!({ "key": key })).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post("/v1/environments", json!({ "key": key, "target": "other" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .post(
            "/v1/environments",
            json!({ "key": "canary-Zq7xK/too-long", "ttl": "1000d" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app.get(&env_path(key)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post(&format!("{}/extend", env_path(key)), json!({ "ttl": "2h" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, rotated) = app
        .post(&format!("{}/credentials", env_path(key)), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let rotated = rotated["connection"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    // Not `app.delete`: its wait for the purge would add GETs to the counts.
    let (status, _) = app
        .call(Method::DELETE, &env_path(key), Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.delete(&env_path("canary-Zq7xK/never")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(Method::GET, "/v1/nowhere/canary-Zq7xK", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // One that expires: whichever sweep gets to it (ours or the background one) counts it once.
    let expiring = app
        .create(json!({ "key": "canary-Zq7xK/expiring", "ttl": "1h" }))
        .await;
    let control = app.admin("previewdb").await;
    control
        .execute(
            "UPDATE environments SET expires_at = now() - interval '1 minute' WHERE id = $1",
            &[&expiring["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()],
        )
        .await
        .unwrap();
    let (status, report) = app.post("/v1/sweep", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["failed"], json!([]));

    // No token, like a Prometheus scrape.
    let res = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = res.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for secret in [
        "canary",
        "Zq7xK",
        "labelcanary",
        id.as_str(),
        password.as_str(),
        rotated.as_str(),
        ADMIN_TOKEN,
    ] {
        assert!(!text.contains(secret), "{secret:?} in the metrics:\n{text}");
    }
    let samples = parse_metrics(&text);

    assert_eq!(
        metric_series(&samples, "previewdb_operations_total"),
        expected(&[
            ("operation=create,outcome=conflict", 1.0),
            ("operation=create,outcome=created", 2.0),
            ("operation=create,outcome=existing", 1.0),
            ("operation=create,outcome=rejected", 1.0),
            ("operation=delete,outcome=ok", 1.0),
            ("operation=delete,outcome=rejected", 1.0),
            ("operation=extend,outcome=ok", 1.0),
            ("operation=rotate,outcome=ok", 1.0),
        ]),
        "{text}"
    );
    assert_eq!(
        metric_series(&samples, "previewdb_create_duration_seconds_count"),
        expected(&[
            ("outcome=created,target=local", 2.0),
            ("outcome=existing,target=local", 1.0),
        ]),
    );
    let buckets = metric_series(&samples, "previewdb_create_duration_seconds_bucket");
    assert_eq!(buckets["le=+Inf,outcome=created,target=local"], 2.0);
    assert_eq!(
        metric_series(&samples, "previewdb_sweep_deleted_total"),
        expected(&[("", 1.0)])
    );
    assert_eq!(
        metric_series(&samples, "previewdb_sweep_failed_total"),
        expected(&[("", 0.0)])
    );

    // The gauge is the control store's own count, every state of every target present.
    let mut in_store = BTreeMap::new();
    for target in ["local", "other"] {
        for state in ["provisioning", "ready", "deleting", "deleted", "failed"] {
            in_store.insert(format!("state={state},target={target}"), 0.0);
        }
    }
    for row in control
        .query(
            "SELECT target, state, count(*) FROM environments GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap()
    {
        let (target, state, n): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        in_store.insert(format!("state={state},target={target}"), n as f64);
    }
    assert_eq!(in_store["state=deleted,target=local"], 2.0);
    assert_eq!(metric_series(&samples, "previewdb_environments"), in_store);
    assert_eq!(
        metric_series(&samples, "previewdb_control_store_up"),
        expected(&[("", 1.0)])
    );
    assert_eq!(
        metric_series(&samples, "previewdb_target_up"),
        expected(&[("target=local", 1.0), ("target=other", 1.0)])
    );
    let max = cluster_max(&app);
    assert_eq!(
        metric_series(&samples, "previewdb_target_max_environments"),
        expected(&[("target=local", max), ("target=other", max)])
    );
    let pool = expected(&[
        ("blueprint=tiny,target=local", 1.0),
        ("blueprint=tiny,target=other", 1.0),
    ]);
    assert_eq!(metric_series(&samples, "previewdb_pool_size"), pool);
    assert_eq!(
        metric_series(&samples, "previewdb_pool_ready"),
        pool,
        "{text}"
    );

    // Requests by route template, never by path.
    let requests = metric_series(&samples, "previewdb_http_requests_total");
    for (labels, n) in [
        ("method=POST,route=/v1/environments,status=201", 2.0),
        ("method=POST,route=/v1/environments,status=200", 1.0),
        ("method=POST,route=/v1/environments,status=409", 1.0),
        ("method=POST,route=/v1/environments,status=422", 1.0),
        ("method=GET,route=/v1/environments/{ref},status=200", 1.0),
        ("method=DELETE,route=/v1/environments/{ref},status=200", 1.0),
        ("method=DELETE,route=/v1/environments/{ref},status=404", 1.0),
        (
            "method=POST,route=/v1/environments/{ref}/extend,status=200",
            1.0,
        ),
        (
            "method=POST,route=/v1/environments/{ref}/credentials,status=200",
            1.0,
        ),
        ("method=POST,route=/v1/sweep,status=200", 1.0),
        ("method=GET,route=unmatched,status=404", 1.0),
    ] {
        assert_eq!(requests.get(labels), Some(&n), "{labels}: {requests:#?}");
    }
    assert_eq!(
        metric_series(&samples, "previewdb_http_request_duration_seconds_count")
            ["method=GET,route=/v1/environments/{ref}"],
        1.0
    );
    let templates = [
        "/v1/environments",
        "/v1/environments/{ref}",
        "/v1/environments/{ref}/extend",
        "/v1/environments/{ref}/credentials",
        "/v1/blueprints/{name}/prepare",
        "/v1/sweep",
        "unmatched",
    ];
    for (_, labels, _) in &samples {
        if let Some(route) = labels.get("route") {
            assert!(templates.contains(&route.as_str()), "route {route:?}");
        }
    }
}

fn cluster_max(app: &TestApp) -> f64 {
    match &app.cluster.config.targets["local"] {
        previewdb::configuration::TargetConfig::Postgres(pg) => f64::from(pg.max_environments),
        _ => panic!("local is a postgres target"),
    }
}
