//! Tokens scoped to some keys (`keys = ["acme/web#*"]`), targets and a number of live
//! environments: what they may do, what they are refused, and what they see. Checked over HTTP
//! and in PostgreSQL.

use crate::support::{cluster, env_path, TestApp, ADMIN_TOKEN};
use previewdb::domain::{token_digest, ApiToken, KeyPattern, Reach, Scope};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WEB: &str = "scoped-web-token";
const API: &str = "scoped-api-token";
const CAPPED: &str = "scoped-capped-token";

/// An app whose tokens reach `<org>/web#*` (WEB), `<org>/api#*` (API), and `<org>/capped#*`
/// with `max_live = 3` on its default target only (CAPPED). `org` is new per test: the cluster
/// is shared. The default target is the cluster's `local` under a name only this app knows, so
/// that no other app's sweep takes this test's expired environments.
async fn app(org: &str) -> TestApp {
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    let own_target = format!("t_{org}");
    let local = config.targets["local"].clone();
    config.targets.insert(own_target.clone(), local);
    config.default_target = own_target.clone();
    let all = vec![Scope::Read, Scope::Write, Scope::Delete, Scope::Reveal];
    let token = |name: &str, secret: &str, pattern: String, reach: Reach| ApiToken {
        name: name.into(),
        sha256: token_digest(secret),
        scopes: all.clone(),
        reach: Reach {
            keys: Some(vec![KeyPattern::parse(&pattern).unwrap()]),
            ..reach
        },
    };
    config.tokens.extend([
        token("web-ci", WEB, format!("{org}/web#*"), Reach::default()),
        token("api-ci", API, format!("{org}/api#*"), Reach::default()),
        token(
            "capped-ci",
            CAPPED,
            format!("{org}/capped#*"),
            Reach {
                targets: Some(vec![own_target]),
                max_live: Some(3),
                ..Reach::default()
            },
        ),
    ]);
    TestApp::spawn_with(cluster, config).await
}

fn org() -> String {
    format!("org{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.call(method, path, Some(token), body).await
}

async fn role_exists(app: &TestApp, role: &str) -> bool {
    let admin = app.admin("postgres").await;
    admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_token_acts_only_on_its_own_keys() {
    let org = org();
    let app = app(&org).await;
    let web_key = format!("{org}/web#1");
    let api_key = format!("{org}/api#1");
    let (status, web_env) = call(
        &app,
        Method::POST,
        "/v1/environments",
        WEB,
        Some(json!({ "key": web_key })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{web_env}");
    let (status, api_env) = call(
        &app,
        Method::POST,
        "/v1/environments",
        API,
        Some(json!({ "key": api_key })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{api_env}");

    // Create, get (by key and by id), reveal, extend, rotate, reset, migrate and delete of the
    // other repository's environment: 403 each, naming the key.
    let (status, problem) = call(
        &app,
        Method::POST,
        "/v1/environments",
        WEB,
        Some(json!({ "key": format!("{org}/api#2") })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["code"], "forbidden");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("outside the token's keys"),
        "{problem}"
    );
    let api_id = api_env["id"].as_str().unwrap();
    for path in [env_path(&api_key), format!("/v1/environments/{api_id}")] {
        for (method, suffix, body) in [
            (Method::GET, "", None),
            (Method::GET, "?reveal=true", None),
            (Method::POST, "/extend", Some(json!({ "ttl": "2h" }))),
            (Method::POST, "/credentials", None),
            (Method::POST, "/reset", None),
            (
                Method::POST,
                "/migrate",
                Some(json!({ "migrations": [{ "name": "a.sql", "sql": "select 1" }] })),
            ),
            (Method::DELETE, "", None),
        ] {
            let (status, problem) =
                call(&app, method.clone(), &format!("{path}{suffix}"), WEB, body).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path}{suffix}: {problem}"
            );
            assert_eq!(problem["code"], "forbidden");
        }
    }
    // A key out of reach is refused whether or not it exists: nobody learns other keys.
    let (status, _) = call(
        &app,
        Method::GET,
        &env_path(&format!("{org}/api#404")),
        WEB,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &app,
        Method::GET,
        &env_path(&format!("{org}/web#404")),
        WEB,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Nothing happened to it: still ready, its role still there.
    let (status, still) = app.get(&env_path(&api_key)).await;
    assert_eq!(
        (status, still["state"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    assert!(role_exists(&app, api_env["connection"]["user"].as_str().unwrap()).await);

    // Listings show only the token's own keys, also when it asks for another's by filter.
    let (_, listed) = call(&app, Method::GET, "/v1/environments?limit=1000", WEB, None).await;
    let keys: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec![web_key.as_str()], "{listed}");
    let (_, filtered) = call(
        &app,
        Method::GET,
        &format!("/v1/environments?key={}", urlencode(&api_key)),
        WEB,
        None,
    )
    .await;
    assert_eq!(filtered["items"], json!([]), "{filtered}");

    // Its own: get with the password, delete.
    let (status, own) = call(
        &app,
        Method::GET,
        &format!("{}?reveal=true", env_path(&web_key)),
        WEB,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(own["connection"]["password"].is_string());
    let (status, _) = call(&app, Method::DELETE, &env_path(&web_key), WEB, None).await;
    assert_eq!(status, StatusCode::OK);
    app.delete(&env_path(&api_key)).await;
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn a_scoped_sweep_sweeps_only_its_own_keys() {
    let org = org();
    let app = app(&org).await;
    let web_key = format!("{org}/web#old");
    let api_key = format!("{org}/api#old");
    for (token, key) in [(WEB, &web_key), (API, &api_key)] {
        let (status, env) = call(
            &app,
            Method::POST,
            "/v1/environments",
            token,
            Some(json!({ "key": key, "ttl": "1s" })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, report) = call(&app, Method::POST, "/v1/sweep", WEB, None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let swept: Vec<&str> = report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(swept, vec![web_key.as_str()], "{report}");
    let (_, api_env) = app.get(&env_path(&api_key)).await;
    assert_eq!(api_env["state"], "ready", "{api_env}");
    let (_, report) = call(&app, Method::POST, "/v1/sweep", API, None).await;
    let swept: Vec<&str> = report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(swept, vec![api_key.as_str()], "{report}");
}

#[tokio::test]
async fn max_live_caps_concurrent_creates_exactly_and_targets_are_confined() {
    let org = org();
    let app = app(&org).await;
    let creates = (0..8).map(|i| {
        let app = &app;
        let key = format!("{org}/capped#{i}");
        async move {
            call(
                app,
                Method::POST,
                "/v1/environments",
                CAPPED,
                Some(json!({ "key": key })),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(creates).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(created, 3, "{answers:?}");
    assert_eq!(limited.len(), 5, "{answers:?}");
    assert_eq!(limited[0].1["code"], "limit_reached");
    assert!(
        limited[0].1["detail"]
            .as_str()
            .unwrap()
            .contains("max_live"),
        "{:?}",
        limited[0]
    );
    // Exactly three roles exist in PostgreSQL for them.
    for (status, env) in &answers {
        let user = env["connection"]["user"].as_str();
        if *status == StatusCode::CREATED {
            assert!(role_exists(&app, user.unwrap()).await);
        }
    }

    // Another target than its own: refused before anything is made.
    let (status, problem) = call(
        &app,
        Method::POST,
        "/v1/environments",
        CAPPED,
        Some(json!({ "key": format!("{org}/capped#x"), "target": "other" })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("target \"other\""),
        "{problem}"
    );

    // One deleted frees a place.
    let first = answers
        .iter()
        .find(|(s, _)| *s == StatusCode::CREATED)
        .unwrap();
    let (status, _) = call(
        &app,
        Method::DELETE,
        &env_path(first.1["key"].as_str().unwrap()),
        CAPPED,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = call(
        &app,
        Method::POST,
        "/v1/environments",
        CAPPED,
        Some(json!({ "key": format!("{org}/capped#again") })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let (_, listed) = call(&app, Method::GET, "/v1/environments", CAPPED, None).await;
    for env in listed["items"].as_array().unwrap() {
        let (status, _) = call(
            &app,
            Method::DELETE,
            &env_path(env["key"].as_str().unwrap()),
            ADMIN_TOKEN,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
}
