//! `schema` isolation on a postgres target: a schema and a role of its own in a database shared
//! per blueprint, checked in PostgreSQL itself.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::Path;

fn schema_of(env: &Value) -> String {
    env["connection"]["schema"]
        .as_str()
        .expect("a schema")
        .to_owned()
}

async fn count(admin: &tokio_postgres::Client, sql: &str, name: &str) -> i64 {
    admin.query_one(sql, &[&name]).await.unwrap().get(0)
}

#[tokio::test]
async fn schema_environments_share_a_database_but_nothing_else() {
    let app = TestApp::spawn().await;
    let a = app
        .create(json!({ "key": "schema/a", "isolation": "schema" }))
        .await;
    let b = app
        .create(json!({ "key": "schema/b", "isolation": "schema" }))
        .await;
    assert_eq!(a["isolation"], "schema");
    assert_eq!(a["connection"]["database"], "pdb_shared");
    assert_eq!(b["connection"]["database"], "pdb_shared");
    let (sa, sb) = (schema_of(&a), schema_of(&b));
    assert_eq!(sa, a["connection"]["user"].as_str().unwrap());

    let ca = connect(&uri(&a)).await.expect("a logs in");
    let row = ca
        .query_one(
            "SELECT current_user::text, current_schema()::text, \
             (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, bool>(2)
        ),
        (sa.clone(), sa.clone(), false)
    );
    ca.batch_execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('mine')")
        .await
        .expect("a creates in its own schema");

    let cb = connect(&uri(&b)).await.expect("b logs in");
    for sql in [
        format!("SELECT * FROM {sa}.notes"),
        format!("CREATE TABLE {sa}.intruder (x int)"),
        "CREATE TABLE public.squatter (x int)".to_owned(),
        "CREATE SCHEMA elsewhere".to_owned(),
    ] {
        let e = cb.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
    }
    // Nor any other database: environments', previewdb's own, postgres.
    for db in ["postgres", "previewdb"] {
        let e = connect(&uri_for_database(&b, db))
            .await
            .err()
            .unwrap_or_else(|| panic!("{db} is reachable"));
        assert_eq!(sqlstate(&e), "42501", "{db}: {e}");
    }

    // Teardown: sessions ended, schema, data and role gone; the neighbour untouched.
    let (status, deleted) = app.delete(&env_path("schema/a")).await;
    assert_eq!(
        (status, deleted["state"].as_str()),
        (StatusCode::OK, Some("deleted"))
    );
    assert!(
        ca.simple_query("SELECT 1").await.is_err(),
        "a's session ended"
    );
    let shared = app.admin("pdb_shared").await;
    assert_eq!(
        count(
            &shared,
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &sa
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &shared,
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &sa
        )
        .await,
        0
    );
    let e = connect(&uri(&a)).await.expect_err("a's password refused");
    assert_eq!(sqlstate(&e), "28P01");
    cb.batch_execute("CREATE TABLE still_here (x int)")
        .await
        .expect("b unaffected");
    let (status, _) = app.delete(&env_path("schema/b")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        count(
            &shared,
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &sb
        )
        .await,
        0
    );
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[tokio::test]
async fn a_blueprint_of_migrations_and_seeds_runs_in_the_schema() {
    let dir = temp_dir();
    let base = dir.path();
    write(
        &base.join("migrations"),
        &[
            (
                "20240101000000_accounts.sql",
                "CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL); \
                 CREATE TABLE tokens (id serial, t bytea NOT NULL DEFAULT digest('x', 'sha256'));",
            ),
            (
                "20240102000000_index.sql",
                "-- no-transaction\nCREATE INDEX CONCURRENTLY accounts_name ON accounts (name);",
            ),
        ],
    );
    write(
        &base.join("seeds"),
        &[
            ("01_accounts.csv", "id,name\n1,ada\n2,grace\n3,edsger\n"),
            ("02_tokens.sql", "INSERT INTO tokens DEFAULT VALUES;"),
        ],
    );
    write(&base.join("broken"), &[("01_accounts.csv", "id,name\n1\n")]);
    write(base, &[("schema.sql", "CREATE TABLE public.x (y int);\n")]);
    let file = base.join("blueprints.toml");
    std::fs::write(
        &file,
        format!(
            "[blueprints.accounts]\nmigrations = {m:?}\nmigrations_format = \"sqlx\"\nseeds = {s:?}\n\
             extensions = [\"pgcrypto\"]\npool_size = 0\n\
             [blueprints.broken_seed]\nmigrations = {m:?}\nmigrations_format = \"sqlx\"\nseeds = {b:?}\n\
             extensions = [\"pgcrypto\"]\npool_size = 0\n\
             [blueprints.dumped]\nschema = {d:?}\npool_size = 0\n",
            m = base.join("migrations").display().to_string(),
            s = base.join("seeds").display().to_string(),
            b = base.join("broken").display().to_string(),
            d = base.join("schema.sql").display().to_string(),
        ),
    )
    .unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.merge_file(&file).expect("blueprints");
    let app = TestApp::spawn_with(cluster, config).await;

    let env = app
        .create(json!({
            "key": "schema/bp", "isolation": "schema", "blueprint": "accounts",
            "migrations": [{ "name": "20240103000000_pr.sql", "sql": "ALTER TABLE accounts ADD COLUMN email text;" }]
        }))
        .await;
    assert_eq!(env["connection"]["database"], "pdb_shared_accounts");
    let schema = schema_of(&env);
    let c = connect(&uri(&env)).await.unwrap();
    let facts = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap() }
    };
    let row = facts(
        "SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM tokens), \
         (SELECT count(*) FROM _sqlx_migrations), \
         (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass('_sqlx_migrations')), \
         (SELECT count(*) FROM pg_tables WHERE schemaname = 'public'), \
         (SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace \
            AND relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user))",
    )
    .await;
    assert_eq!(
        row.get::<_, i64>(0),
        4,
        "seeded: 3 accounts, 1 token made by pgcrypto"
    );
    assert_eq!(
        row.get::<_, i64>(1),
        3,
        "blueprint's two and the request's one"
    );
    assert_eq!(
        row.get::<_, String>(2),
        schema,
        "sqlx's history lives in the environment's schema"
    );
    assert_eq!(row.get::<_, i64>(3), 0, "nothing in public");
    assert_eq!(row.get::<_, i64>(4), 0, "everything belongs to the role");
    c.batch_execute("ALTER TABLE accounts ADD COLUMN note text; INSERT INTO accounts (id, name) VALUES (4, 'barbara')")
        .await
        .expect("the role alters what the blueprint made");

    // Migrate keeps the data; reset returns to the blueprint with the same credentials.
    let path = env_path("schema/bp");
    let (status, migrated) = app
        .post(
            &format!("{path}/migrate"),
            json!({ "migrations": [
                { "name": "20240103000000_pr.sql", "sql": "ALTER TABLE accounts ADD COLUMN email text;" },
                { "name": "20240104000000_more.sql", "sql": "CREATE TABLE audits (id int);" }
            ] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{migrated}");
    assert_eq!(migrated["applied"], 1);
    assert_eq!(
        facts("SELECT count(*) FROM accounts")
            .await
            .get::<_, i64>(0),
        4
    );
    let (status, reset) = app.post(&format!("{path}/reset"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    let c = connect(&uri(&env))
        .await
        .expect("same credentials after reset");
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM _sqlx_migrations), \
             to_regclass('audits') IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, bool>(2)
        ),
        (3, 2, true)
    );

    // A failing seed fails the create and leaves no role and no schema.
    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "schema/broken", "isolation": "schema", "blueprint": "broken_seed" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("01_accounts.csv"),
        "{p}"
    );
    let shared = app.admin("pdb_shared_broken_seed").await;
    let schemas: i64 = shared
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE obj_description(oid, 'pg_namespace') LIKE 'previewdb:env=%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "the failed environment's schema was dropped");
    let (_, record) = app.get(&env_path("schema/broken")).await;
    assert_eq!(record["state"], "failed", "{record}");
    let mark = format!("previewdb:env={}", record["id"].as_str().unwrap());
    let roles: i64 = app
        .admin("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = $1",
            &[&mark],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0, "the failed environment's role was dropped");

    // A blueprint that starts from a pg_dump file cannot be loaded into a schema: a clear 422.
    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "schema/dumped", "isolation": "schema", "blueprint": "dumped" }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input")),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("pg_dump"), "{p}");
}

/// Fifty schema environments created at once, then deleted at once: none fails (a grant on the
/// shared database per environment made concurrent ones fail with "tuple concurrently
/// updated"), each can log in while it lives, and nothing of them is left.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_schema_environments_come_and_go_without_errors() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let calls = |delete: bool| {
        let app = app.clone();
        (0..50).map(move |i| {
            let app = app.clone();
            async move {
                let key = format!("schema/burst-{i}");
                match delete {
                    false => {
                        app.post(
                            "/v1/environments",
                            json!({ "key": key, "isolation": "schema", "blueprint": "" }),
                        )
                        .await
                    }
                    true => app.delete(&env_path(&key)).await,
                }
            }
        })
    };
    let created = futures_util::future::join_all(calls(false)).await;
    for (status, env) in &created {
        assert_eq!(*status, StatusCode::CREATED, "{env}");
    }
    for (_, env) in created.iter().take(3) {
        let client = connect(&uri(env)).await.expect("its password logs in");
        client
            .simple_query("CREATE TABLE mine (n int)")
            .await
            .unwrap();
    }
    for (status, gone) in futures_util::future::join_all(calls(true)).await {
        assert_eq!(status, StatusCode::OK, "{gone}");
    }
    let admin = app.admin("postgres").await;
    let left = count(
        &admin,
        "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)",
        "pdb_env_schema_burst",
    )
    .await;
    assert_eq!(left, 0);
}
