//! Black-box tests of the REST API against a real PostgreSQL, checked in PostgreSQL itself.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn handed_out_database_works_with_least_privilege() {
    let app = TestApp::spawn().await;
    let env = app
        .create(json!({ "key": "acme/web#101", "labels": { "team": "web" } }))
        .await;
    assert_eq!(env["state"], "ready");
    assert_eq!(env["isolation"], "database");
    assert_eq!(env["target"], "local");
    let role = env["connection"]["user"].as_str().unwrap().to_owned();
    let database = env["connection"]["database"].as_str().unwrap().to_owned();

    let client = connect(&uri(&env))
        .await
        .expect("the handed-out URI logs in");
    let row = client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), role);
    assert_eq!(row.get::<_, String>(1), database);
    client
        .batch_execute("CREATE TABLE invoices (id serial PRIMARY KEY, total numeric)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO invoices (total) VALUES (9.5)")
        .await
        .unwrap();
    let e = client
        .batch_execute("CREATE DATABASE sneaky")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let e = client
        .batch_execute("CREATE ROLE sneaky")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");

    let admin = app.admin("postgres").await;
    let r = admin
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, \
             rolconnlimit, rolvaliduntil, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
        (false, false, false, false, false, true)
    );
    assert!(r.get::<_, i32>(6) > 0, "connection limit set");
    let valid_until: chrono::DateTime<chrono::Utc> = r.get(7);
    let expires: chrono::DateTime<chrono::Utc> =
        env["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        valid_until > expires && valid_until <= expires + chrono::Duration::hours(2),
        "{valid_until} vs {expires}"
    );
    let id = env["id"].as_str().unwrap();
    assert_eq!(
        r.get::<_, Option<String>>(8),
        Some(format!("previewdb:env={id}"))
    );
    let d = admin
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text, datacl::text, shobj_description(oid, 'pg_database') \
             FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .unwrap();
    assert_eq!(d.get::<_, String>(0), role);
    let acl: Option<String> = d.get(1);
    assert!(
        acl.as_deref()
            .is_some_and(|a| !a.contains("=c") && !a.contains("=Tc")),
        "PUBLIC has no rights: {acl:?}"
    );
    assert_eq!(
        d.get::<_, Option<String>>(2),
        Some(format!("previewdb:env={id}"))
    );

    // No other database is reachable with these credentials.
    let other = app.create(json!({ "key": "acme/web#102" })).await;
    let other_db = other["connection"]["database"].as_str().unwrap();
    for db in [other_db, "previewdb", "postgres", "template1"] {
        let e = connect(&uri_for_database(&env, db))
            .await
            .err()
            .unwrap_or_else(|| panic!("{db} reachable"));
        assert_eq!(sqlstate(&e), "42501", "{db}: {e}");
    }
}

#[tokio::test]
async fn repeated_create_returns_the_same_environment_and_conflicts_on_other_settings() {
    let app = TestApp::spawn().await;
    let (s1, first) = app
        .post("/v1/environments", json!({ "key": "acme/web#201" }))
        .await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    let (s2, again) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#201", "ttl": "2h" }),
        )
        .await;
    assert_eq!(s2, StatusCode::OK, "{again}");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        first["connection"]["password"],
        again["connection"]["password"]
    );
    connect(&uri(&again))
        .await
        .expect("the repeated answer's password works");

    let (s3, conflict) = app
        .post(
            "/v1/environments",
            json!({ "key": "acme/web#201", "target": "other" }),
        )
        .await;
    assert_eq!(s3, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["code"], "settings_conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_key_yield_exactly_one_environment() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let mut tasks = vec![];
    for _ in 0..100 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.post("/v1/environments", json!({ "key": "acme/web#race" }))
                .await
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    let mut passwords = std::collections::HashSet::new();
    for t in tasks {
        let (status, env) = t.await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status} {env}"
        );
        created += usize::from(status == StatusCode::CREATED);
        ids.insert(env["id"].as_str().unwrap().to_owned());
        passwords.insert(env["connection"]["password"].as_str().unwrap().to_owned());
    }
    assert_eq!((created, ids.len(), passwords.len()), (1, 1, 1));
    let admin = app.admin("postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pdb_env_acme_web_race_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn delete_revokes_credentials_ends_sessions_and_drops_data() {
    let app = TestApp::spawn().await;
    let env = app.create(json!({ "key": "acme/web#301" })).await;
    let role = env["connection"]["user"].as_str().unwrap().to_owned();
    let session = connect(&uri(&env)).await.unwrap();
    session
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();

    let (status, deleted) = app.delete(&env_path("acme/web#301")).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["state"], "deleted");
    assert!(deleted["deleted_at"].is_string());

    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "the open session was ended"
    );
    let admin = app.admin("postgres").await;
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1) + (SELECT count(*) FROM pg_database WHERE datname = $1)",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "role and database are gone");
    let e = connect(&uri(&env)).await.expect_err("old password refused");
    assert_eq!(sqlstate(&e), "28P01", "{e}");

    // Deleting again, by id or key, answers the tombstone.
    let id = env["id"].as_str().unwrap();
    let (again, tomb) = app.delete(&env_path(id)).await;
    assert_eq!(
        (again, tomb["state"].as_str()),
        (StatusCode::OK, Some("deleted"))
    );
    let (_, by_key) = app.get(&env_path("acme/web#301")).await;
    assert_eq!(by_key["state"], "deleted");
    let (_, live) = app.get("/v1/environments?key=acme%2Fweb%23301").await;
    assert_eq!(
        live["items"].as_array().unwrap().len(),
        0,
        "deleted ones are not listed by default"
    );
    let (_, dead) = app
        .get("/v1/environments?key=acme%2Fweb%23301&state=deleted")
        .await;
    assert_eq!(dead["items"].as_array().unwrap().len(), 1);

    // The key is free for a new environment.
    let (status, reborn) = app
        .post("/v1/environments", json!({ "key": "acme/web#301" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(reborn["id"], env["id"]);
}

async fn leftovers(app: &TestApp, slug: &str) -> i64 {
    let admin = app.admin("postgres").await;
    let pattern = format!("pdb_{slug}%");
    let on_target: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE $1) + (SELECT count(*) FROM pg_database WHERE datname LIKE $1)",
            &[&pattern],
        )
        .await
        .unwrap()
        .get(0);
    let control = app.admin("previewdb").await;
    let recorded: i64 = control
        .query_one(
            "SELECT count(*) FROM environments WHERE key LIKE 'bad-input%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    on_target + recorded
}

#[tokio::test]
async fn bad_input_gets_a_clear_problem_and_changes_nothing() {
    let app = TestApp::spawn().await;
    // what is wrong, token, body, expected status, expected code
    type Case<'a> = (&'a str, Option<&'a str>, Option<Value>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing key",
            Some(ADMIN_TOKEN),
            Some(json!({ "ttl": "1h" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "empty key",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "long key",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": format!("bad-input{}", "x".repeat(200)) })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "newline",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input\nx" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "nul",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input\u{0}x" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "unknown target",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input-1", "target": "mars" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "bad ttl",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input-2", "ttl": "forever" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "ttl over max",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input-3", "ttl": "400d" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "bad isolation",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input-4", "isolation": "vm" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "unoffered isolation",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input-5", "isolation": "branch" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "unknown field",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input-6", "colour": "red" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "bad label",
            Some(ADMIN_TOKEN),
            Some(json!({ "key": "bad-input-7", "labels": { "a b": "c" } })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "no token",
            None,
            Some(json!({ "key": "bad-input-8" })),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "wrong token",
            Some("nope"),
            Some(json!({ "key": "bad-input-9" })),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "read-only token",
            Some(READ_TOKEN),
            Some(json!({ "key": "bad-input-10" })),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (what, token, body, want, code) in cases {
        let (status, problem) = app
            .call(Method::POST, "/v1/environments", token, body)
            .await;
        assert_eq!(status, want, "{what}: {problem}");
        assert_eq!(problem["code"], code, "{what}: {problem}");
        assert_eq!(problem["status"], want.as_u16(), "{what}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {problem}"
        );
    }
    // The detail names what was wrong.
    let (_, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "bad-input-11", "ttl": "3x" }),
        )
        .await;
    assert!(p["detail"].as_str().unwrap().contains("ttl"), "{p}");

    let raw = |body: &'static str| {
        app.http
            .post(format!("{}/v1/environments", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = raw("{\"key\": \"bad-input-12\",").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "malformed_json");

    let huge = format!(
        "{{\"key\": \"bad-input-13\", \"labels\": {{\"a\": \"{}\"}}}}",
        "x".repeat(5 << 20)
    );
    let res = app
        .http
        .post(format!("{}/v1/environments", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "body_too_large");

    let (status, p) = app.get(&env_path("no/such#env")).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _) = app.delete(&env_path("no/such#env")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(
            Method::DELETE,
            &env_path("no/such#env"),
            Some(WRITE_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "delete needs environments:delete"
    );

    assert_eq!(
        leftovers(&app, "bad_input").await,
        0,
        "bad input left something behind"
    );
}

#[tokio::test]
async fn awkward_keys_are_stored_verbatim_and_never_reach_sql() {
    let app = TestApp::spawn().await;
    let admin = app.admin("postgres").await;
    for key in [
        "it's-a-trap'; DROP ROLE previewdb_admin; --",
        "quote\"d\"; SELECT pg_sleep(10)",
        "back\\slash\\",
        "café/日本語#7",
        "$$ dollar $$",
    ] {
        let env = app.create(json!({ "key": key })).await;
        assert_eq!(env["key"], key);
        let name = env["connection"]["database"].as_str().unwrap();
        assert!(
            name.len() < 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        connect(&uri(&env)).await.expect("login works");
        let (status, got) = app.get(&env_path(key)).await;
        assert_eq!(
            (status, &got["id"]),
            (StatusCode::OK, &env["id"]),
            "lookup by key {key:?}"
        );
        let (status, _) = app.delete(&env_path(key)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let alive: bool = admin
        .query_one(
            "SELECT count(*) = 1 FROM pg_roles WHERE rolname = 'previewdb_admin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(alive);
}

#[tokio::test]
async fn extend_rotate_and_reset() {
    let app = TestApp::spawn().await;
    let env = app
        .create(json!({ "key": "acme/web#401", "ttl": "1h" }))
        .await;
    let path = env_path("acme/web#401");

    let (status, extended) = app
        .post(&format!("{path}/extend"), json!({ "ttl": "3d" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{extended}");
    let before: chrono::DateTime<chrono::Utc> =
        env["expires_at"].as_str().unwrap().parse().unwrap();
    let after: chrono::DateTime<chrono::Utc> =
        extended["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(after - before > chrono::Duration::days(2));
    let admin = app.admin("postgres").await;
    let until: chrono::DateTime<chrono::Utc> = admin
        .query_one(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1",
            &[&env["connection"]["user"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(until > after, "VALID UNTIL follows the expiry");
    let (status, _) = app
        .post(&format!("{path}/extend"), json!({ "ttl": "100d" }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let session = connect(&uri(&env)).await.unwrap();
    session
        .batch_execute("CREATE TABLE scratch (x int)")
        .await
        .unwrap();
    let (status, reset) = app.post(&format!("{path}/reset"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    let fresh = connect(&uri(&env))
        .await
        .expect("same credentials after reset");
    let n: i64 = fresh
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "reset dropped the data");

    let open = connect(&uri(&env))
        .await
        .expect("a session before rotation");
    let (status, rotated) = app.post(&format!("{path}/credentials"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert!(
        open.simple_query("SELECT 1").await.is_err(),
        "the session opened with the old password was ended"
    );
    assert_ne!(
        rotated["connection"]["password"],
        env["connection"]["password"]
    );
    let e = connect(&uri(&env))
        .await
        .expect_err("old password stops working");
    assert_eq!(sqlstate(&e), "28P01");
    connect(&uri(&rotated)).await.expect("new password works");
    let (_, shown) = app.get(&format!("{path}?reveal=true")).await;
    assert_eq!(
        shown["connection"]["password"],
        rotated["connection"]["password"]
    );
    let (_, hidden) = app.get(&path).await;
    assert!(hidden["connection"].get("password").is_none(), "{hidden}");
    assert!(!hidden["connection"]["uri"]
        .as_str()
        .unwrap()
        .contains(rotated["connection"]["password"].as_str().unwrap()));
}

/// An app whose default target is the cluster's `local` under a name only it knows: every app
/// on the shared cluster sweeps as it starts, and one that knew the target could take this
/// test's expired environment before the sweep whose answer must list it.
async fn app_with_a_target_of_its_own() -> TestApp {
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    let local = config.targets["local"].clone();
    config.targets.insert("api-sweep".into(), local);
    config.default_target = "api-sweep".into();
    TestApp::spawn_with(cluster, config).await
}

#[tokio::test]
async fn sweep_deletes_what_expired_and_lists_filter() {
    let app = app_with_a_target_of_its_own().await;
    let short = app
        .create(json!({ "key": "sweep/short", "ttl": "1s", "labels": { "pr": "77" } }))
        .await;
    let long = app
        .create(json!({ "key": "sweep/long", "ttl": "1h", "labels": { "pr": "78" } }))
        .await;
    let (_, listed) = app.get("/v1/environments?label=pr%3D77").await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], short["id"]);
    assert!(items[0]["connection"].get("password").is_none());

    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (status, report) = app.post("/v1/sweep", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let deleted: Vec<&Value> = report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert!(deleted.contains(&&short["id"]), "{report}");
    assert!(!deleted.contains(&&long["id"]), "{report}");
    let (_, s) = app.get(&env_path("sweep/short")).await;
    assert_eq!(s["state"], "deleted");
    let (_, l) = app.get(&env_path("sweep/long")).await;
    assert_eq!(l["state"], "ready");
}

#[tokio::test]
async fn health_readiness_and_targets() {
    let app = TestApp::spawn().await;
    let (status, _) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ready) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    let (status, targets) = app
        .call(Method::GET, "/v1/targets", Some(READ_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{targets}");
    let local = targets["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "local")
        .unwrap()
        .clone();
    assert_eq!(local["health"]["healthy"], true);
    assert_eq!(local["kind"], "postgres");
    assert!(local["live_environments"].is_number());
}

#[tokio::test]
async fn an_interrupted_provision_is_rolled_back_by_reconciliation() {
    let app = TestApp::spawn().await;
    let env = app.create(json!({ "key": "crash/during-provision" })).await;
    let role = env["connection"]["user"].as_str().unwrap().to_owned();
    // As if previewdb had died after creating the role and database but before recording them.
    let control = app.admin("previewdb").await;
    control
        .execute(
            "UPDATE environments SET state = 'provisioning', connection = NULL WHERE id = $1",
            &[&uuid(&env)],
        )
        .await
        .unwrap();
    // Other test apps' lifecycle loops share this control store and may get there first.
    let mut after = Value::Null;
    for _ in 0..50 {
        app.app.reconcile().await.unwrap();
        after = app.get(&env_path(env["id"].as_str().unwrap())).await.1;
        if after["state"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(after["state"], "failed", "{after}");
    assert!(after["error"].as_str().unwrap().contains("interrupted"));
    let admin = app.admin("postgres").await;
    let left: i64 = admin
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

fn uuid(env: &Value) -> uuid::Uuid {
    env["id"].as_str().unwrap().parse().unwrap()
}
