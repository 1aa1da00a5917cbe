//! Blueprints end to end: real `pg_dump` output, migrations in three formats, seeds, templates
//! built once, the warm pool, and the caller's own migrations — checked in PostgreSQL itself.

use crate::support::*;
use previewdb::embedded::EmbeddedPostgres;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn repo_seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

fn bin(tool: &str) -> PathBuf {
    EmbeddedPostgres::find_bin_dir()
        .expect("PostgreSQL binaries")
        .join(tool)
}

/// Connection flags for the cluster's command-line tools, as the admin over its socket.
fn cli_args(app: &TestApp, database: &str) -> Vec<String> {
    let pg = &app.cluster.postgres;
    vec![
        "-h".into(),
        pg.socket_dir().display().to_string(),
        "-p".into(),
        pg.port().to_string(),
        "-U".into(),
        previewdb::embedded::ADMIN_USER.into(),
        "-d".into(),
        database.into(),
    ]
}

fn run_tool(tool: &str, args: &[String]) -> String {
    let out = std::process::Command::new(bin(tool))
        .args(args)
        .output()
        .expect("tool runs");
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A test app whose config has these blueprint tables added (written to `dir/blueprints.toml`).
async fn app_with_blueprints(dir: &Path, toml: &str) -> TestApp {
    let file = dir.join("blueprints.toml");
    std::fs::write(&file, toml).unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.merge_file(&file).expect("blueprint config");
    TestApp::spawn_with(cluster, config).await
}

/// The ready pool entries of a prepared blueprint on all targets: the test cluster is also
/// target "other", and each target keeps a pool of its own there.
fn pool_ready_everywhere(prepared: &Value) -> i64 {
    prepared["targets"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["pool_ready"].as_i64().unwrap())
        .sum()
}

/// `pg_dump --schema-only` without ownership, privileges and the random `\restrict` keys.
fn schema_of(app: &TestApp, database: &str) -> String {
    let mut args = cli_args(app, database);
    args.extend(["--schema-only", "--no-owner", "--no-privileges"].map(String::from));
    run_tool("pg_dump", &args)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Equal texts, or a panic naming the first differing line (dumps are too long to print whole).
fn assert_same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let i = g
        .iter()
        .zip(&w)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(w.len()));
    panic!(
        "{what}: the environment's schema differs from the source's at line {}:\n  env:    {:?}\n  source: {:?}\n({} vs {} lines)",
        i + 1,
        g.get(i.saturating_sub(0)..(i + 3).min(g.len())),
        w.get(i..(i + 3).min(w.len())),
        g.len(),
        w.len()
    );
}

/// Builds the example app's source database with psql and dumps it with the installed pg_dump.
async fn dumped_source(
    app: &TestApp,
    dir: &Path,
    name: &str,
    with_data: bool,
) -> (String, PathBuf) {
    let admin = app.admin("postgres").await;
    admin
        .batch_execute(
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_owner') THEN CREATE ROLE app_owner; END IF; \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_reader') THEN CREATE ROLE app_reader; END IF; \
             END $$",
        )
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
        ))
        .await
        .ok();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .ok();
    let mut args = cli_args(app, name);
    args.extend(["-q", "-v", "ON_ERROR_STOP=1", "-f"].map(String::from));
    args.push(
        repo_seeds()
            .join("app/source/schema-source.sql")
            .display()
            .to_string(),
    );
    run_tool("psql", &args);
    if with_data {
        let src = connect(&app.cluster.postgres.admin_url(name))
            .await
            .unwrap();
        src.batch_execute(
            "INSERT INTO public.customers (name, billing_email, address) VALUES ('Ada; Lovelace', 'ada@example.com', E'1 Main St\\nLondon'), \
             (E'O''Brien\\ttab', 'ob@example.com', NULL)",
        )
        .await
        .unwrap();
    }
    let mut dump_args = cli_args(app, name);
    if !with_data {
        dump_args.push("--schema-only".into());
    }
    // As if dumped on another cluster: its owner and reader roles do not exist here.
    let dump = run_tool("pg_dump", &dump_args)
        .replace("OWNER TO previewdb_admin", "OWNER TO owner_elsewhere")
        .replace("TO app_reader", "TO reader_elsewhere")
        .replace("FOR ROLE previewdb_admin", "FOR ROLE owner_elsewhere");
    assert!(
        dump.contains("\\restrict"),
        "this pg_dump emits \\restrict lines"
    );
    if with_data {
        assert!(
            dump.contains("COPY public.customers"),
            "the dump carries COPY data"
        );
    }
    let path = dir.join(format!("{name}.sql"));
    std::fs::write(&path, &dump).unwrap();
    (name.to_owned(), path)
}

#[tokio::test]
async fn a_real_pg_dump_loads_and_round_trips() {
    let dir = temp_dir();
    let probe = TestApp::spawn().await;
    let (source, schema_only) = dumped_source(&probe, dir.path(), "bp_src_schema", false).await;
    let (source_data, full) = dumped_source(&probe, dir.path(), "bp_src_full", true).await;
    let app = app_with_blueprints(
        dir.path(),
        &format!(
            "[blueprints.dump_schema]\nschema = {:?}\nextensions = [\"pgcrypto\"]\npool_size = 0\n\
             [blueprints.dump_full]\nschema = {:?}\nextensions = [\"pgcrypto\"]\npool_size = 1\n",
            schema_only.display().to_string(),
            full.display().to_string()
        ),
    )
    .await;

    for (blueprint, src) in [("dump_schema", &source), ("dump_full", &source_data)] {
        let env = app
            .create(json!({ "key": format!("dump/{blueprint}"), "blueprint": blueprint }))
            .await;
        assert_eq!(env["blueprint"], blueprint);
        assert!(
            env["blueprint_hash"]
                .as_str()
                .is_some_and(|h| h.len() == 16),
            "{env}"
        );
        let db = env["connection"]["database"].as_str().unwrap();
        assert_same(&schema_of(&app, db), &schema_of(&app, src), blueprint);

        let client = connect(&uri(&env)).await.unwrap();
        let role = env["connection"]["user"].as_str().unwrap();
        let foreign: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname IN ('public', 'billing') AND c.relkind IN ('r', 'p', 'v', 'm', 'S') \
                 AND pg_get_userbyid(c.relowner) <> $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            foreign, 0,
            "{blueprint}: every relation belongs to the environment's role"
        );
        client
            .batch_execute("ALTER TABLE billing.invoices ADD COLUMN reviewed boolean")
            .await
            .expect("ALTER a dumped table");
        client
            .batch_execute("DROP VIEW IF EXISTS public.active_subscriptions CASCADE")
            .await
            .expect("DROP a dumped view");
    }
    let env = app.get(&env_path("dump/dump_full")).await.1;
    let client = connect(
        &app.cluster
            .postgres
            .admin_url(env["connection"]["database"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let names: Vec<String> = client
        .query("SELECT name::text FROM public.customers ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        vec!["Ada; Lovelace".to_string(), "O'Brien\ttab".to_string()],
        "COPY data arrived intact"
    );

    // Ownership and grants for roles the target may lack are reported, not fatal.
    let (_, status) = app.get("/v1/blueprints/dump_schema").await;
    let warnings = status["targets"]["local"]["warnings"].as_array().unwrap();
    let warned = |what: &str| warnings.iter().any(|w| w.as_str().unwrap().contains(what));
    assert!(
        warned("OWNER TO owner_elsewhere")
            && warned("GRANT SELECT ON TABLE")
            && warned("does not exist"),
        "{status}"
    );
    assert_eq!(status["targets"]["local"]["template"], "ready");
}

#[tokio::test]
async fn the_example_blueprint_is_handed_out_warm_and_owned_by_the_environment() {
    let dir = temp_dir();
    let seeds = repo_seeds();
    let app = app_with_blueprints(
        dir.path(),
        &format!(
            "[blueprints.example]\nschema = {s:?}\nmigrations = {m:?}\nmigrations_format = \"refinery\"\nseeds = {d:?}\n\
             extensions = [\"pgcrypto\"]\npool_size = 2\n",
            s = seeds.join("app/schema.sql").display().to_string(),
            m = seeds.join("app/migrations").display().to_string(),
            d = seeds.join("app/data").display().to_string(),
        ),
    )
    .await;
    let (status, prepared) = app.post("/v1/blueprints/example/prepare", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{prepared}");
    assert_eq!(prepared["targets"]["local"]["pool_ready"], 2, "{prepared}");
    let admin = app.admin("postgres").await;
    let pooled: Vec<u32> = admin
        .query(
            "SELECT oid FROM pg_database WHERE starts_with(datname, 'pdb_pool_example_')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        pooled.len() as i64,
        pool_ready_everywhere(&prepared),
        "{prepared}"
    );

    let env = app
        .create(json!({ "key": "warm/1", "blueprint": "example" }))
        .await;
    let db = env["connection"]["database"].as_str().unwrap();
    let oid: u32 = admin
        .query_one("SELECT oid FROM pg_database WHERE datname = $1", &[&db])
        .await
        .unwrap()
        .get(0);
    assert!(
        pooled.contains(&oid),
        "the environment is a database that was waiting in the pool"
    );

    let client = connect(&uri(&env)).await.unwrap();
    let rows: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM users) + (SELECT count(*) FROM billing.invoices) \
             + (SELECT count(*) FROM billing.invoice_lines) + (SELECT count(*) FROM billing.payments) + (SELECT count(*) FROM events)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rows >= 10_000, "seeded: {rows} rows");
    client
        .batch_execute("ALTER TABLE customers ADD COLUMN vip boolean")
        .await
        .expect("ALTER a seeded table");
    client
        .batch_execute("ALTER TABLE billing.payments DROP COLUMN IF EXISTS note")
        .await
        .expect("ALTER a migrated table");
    client
        .batch_execute("ALTER TYPE billing.invoice_status ADD VALUE 'disputed'")
        .await
        .expect("ALTER a dumped type");

    // The application's own tool, run as the environment's role, sees V1–V4 as applied.
    let mut migrations: Vec<refinery::Migration> = std::fs::read_dir(seeds.join("app/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            refinery::Migration::unapplied(
                p.file_stem().unwrap().to_str().unwrap(),
                &std::fs::read_to_string(&p).unwrap(),
            )
            .unwrap()
        })
        .collect();
    migrations.push(
        refinery::Migration::unapplied(
            "V5__add_invoice_reviewer",
            "ALTER TABLE billing.invoices ADD COLUMN reviewer text;",
        )
        .unwrap(),
    );
    let mut client = connect(&uri(&env)).await.unwrap();
    let report = refinery::Runner::new(&migrations)
        .run_async(&mut client)
        .await
        .expect("refinery runs as the env role");
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    assert_eq!(applied, vec!["add_invoice_reviewer".to_string()]);

    // The pool refills behind the hand-out.
    let mut ready = 0;
    for _ in 0..100 {
        let (_, s) = app.get("/v1/blueprints/example").await;
        ready = s["targets"]["local"]["pool_ready"].as_u64().unwrap();
        if ready == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 2, "the pool refilled");

    // Reset returns to the blueprint with the same credentials; migrate keeps the data.
    let path = env_path("warm/1");
    let (status, _) = app.post(&format!("{path}/reset"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let client = connect(&uri(&env))
        .await
        .expect("same password after reset");
    let reviewer: i64 = client
        .query_one("SELECT count(*) FROM information_schema.columns WHERE table_name = 'invoices' AND column_name = 'reviewer'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reviewer, 0, "reset dropped what was added");
    let (status, migrated) = app
        .post(&format!("{path}/migrate"), json!({ "migrations": [{ "name": "V6__reviewer.sql", "sql": "ALTER TABLE billing.invoices ADD COLUMN reviewer text;" }] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{migrated}");
    assert_eq!(migrated["applied"], 1);
    let n: i64 = client
        .query_one("SELECT count(*) FROM billing.invoices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6000, "data kept");
    let owner: String = client
        .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'invoices' AND schemaname = 'billing'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, env["connection"]["user"].as_str().unwrap());
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 6]);
}

fn write_files(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[tokio::test]
async fn sqlx_and_plain_formats_are_recorded_as_their_tools_record_them() {
    let dir = temp_dir();
    write_files(
        &dir.path().join("sqlx"),
        &[
            (
                "20240101000000_init.sql",
                "CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL);",
            ),
            (
                "20240102000000_index.sql",
                "-- no-transaction\nCREATE INDEX CONCURRENTLY accounts_name ON accounts (name);",
            ),
        ],
    );
    write_files(
        &dir.path().join("plain"),
        &[
            (
                "001_init.sql",
                "CREATE TABLE notes (id int PRIMARY KEY, body text);",
            ),
            ("002_seed.sql", "INSERT INTO notes VALUES (1, 'a;b');"),
        ],
    );
    let app = app_with_blueprints(
        dir.path(),
        &format!(
            "[blueprints.with_sqlx]\nmigrations = {:?}\nmigrations_format = \"sqlx\"\npool_size = 0\n\
             [blueprints.with_plain]\nmigrations = {:?}\nmigrations_format = \"plain\"\npool_size = 0\n",
            dir.path().join("sqlx").display().to_string(),
            dir.path().join("plain").display().to_string()
        ),
    )
    .await;

    let env = app
        .create(json!({ "key": "sqlx/1", "blueprint": "with_sqlx",
                        "migrations": [{ "name": "20240103000000_pr.sql", "sql": "ALTER TABLE accounts ADD COLUMN email text;" }] }))
        .await;
    // sqlx's own migrator, pointed at the app's migrations plus one new one, runs only the new one.
    let app_dir = dir.path().join("sqlx-app");
    write_files(
        &app_dir,
        &[
            (
                "20240101000000_init.sql",
                "CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL);",
            ),
            (
                "20240102000000_index.sql",
                "-- no-transaction\nCREATE INDEX CONCURRENTLY accounts_name ON accounts (name);",
            ),
            (
                "20240103000000_pr.sql",
                "ALTER TABLE accounts ADD COLUMN email text;",
            ),
            (
                "20240104000000_next.sql",
                "ALTER TABLE accounts ADD COLUMN active boolean NOT NULL DEFAULT true;",
            ),
        ],
    );
    let migrator = sqlx::migrate::Migrator::new(app_dir.as_path())
        .await
        .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&uri(&env))
        .await
        .unwrap();
    migrator
        .run(&pool)
        .await
        .expect("sqlx sees the earlier migrations as applied");
    let rows: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![
            20240101000000,
            20240102000000,
            20240103000000,
            20240104000000
        ]
    );
    assert!(rows.iter().all(|r| r.1));
    pool.close().await;

    let env = app
        .create(json!({ "key": "plain/1", "blueprint": "with_plain", "migrations": [{ "name": "003_pr.sql", "sql": "ALTER TABLE notes ADD COLUMN tag text;" }] }))
        .await;
    let client = connect(&uri(&env)).await.unwrap();
    let names: Vec<String> = client
        .query("SELECT name FROM previewdb_migrations ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["001_init.sql", "002_seed.sql", "003_pr.sql"]);
    let body: String = client
        .query_one("SELECT body FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(body, "a;b");

    // A migration name that does not fit the format is refused before anything is made.
    let (status, p) = app
        .post("/v1/environments", json!({ "key": "sqlx/bad-name", "blueprint": "with_sqlx", "migrations": [{ "name": "V9__x.sql", "sql": "SELECT 1;" }] }))
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input")),
        "{p}"
    );
}

async fn nothing_left(app: &TestApp, key_slug: &str, template_prefix: &str) {
    let admin = app.admin("postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE $1 OR datname LIKE $2) \
                  + (SELECT count(*) FROM pg_roles WHERE rolname LIKE $1)",
            &[
                &format!("pdb_env_{key_slug}%"),
                &format!("{template_prefix}%"),
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no template, database or role is left behind");
}

#[tokio::test]
async fn failures_name_file_line_and_server_message_and_leave_nothing() {
    let dir = temp_dir();
    write_files(
        &dir.path().join("broken_dump"),
        &[("schema.sql", "CREATE TABLE a (id int);\n\nCREATE TABLE b (\n  id int,\n  a_id int REFERENCES nowhere (id)\n);\n")],
    );
    write_files(
        &dir.path().join("broken_mig"),
        &[
            ("V1__ok.sql", "CREATE TABLE t (id int);"),
            (
                "V2__bad.sql",
                "ALTER TABLE t ADD COLUMN x int;\nALTER TABLE t ADD COLUMN x int;\n",
            ),
        ],
    );
    write_files(
        &dir.path().join("good_mig"),
        &[("V1__ok.sql", "CREATE TABLE t (id int);")],
    );
    let app = app_with_blueprints(
        dir.path(),
        &format!(
            "[blueprints.broken_dump]\nschema = {:?}\npool_size = 1\n\
             [blueprints.broken_mig]\nmigrations = {:?}\nmigrations_format = \"refinery\"\npool_size = 1\n\
             [blueprints.good_mig]\nmigrations = {:?}\nmigrations_format = \"refinery\"\npool_size = 0\n",
            dir.path().join("broken_dump/schema.sql").display().to_string(),
            dir.path().join("broken_mig").display().to_string(),
            dir.path().join("good_mig").display().to_string()
        ),
    )
    .await;

    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "broken/dump", "blueprint": "broken_dump" }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("blueprint_failed")),
        "{p}"
    );
    let detail = p["detail"].as_str().unwrap();
    // No error position for an unknown REFERENCES target: the statement's first line.
    assert!(detail.contains("schema.sql:3"), "file and line: {detail}");
    assert!(detail.contains("CREATE TABLE b"), "statement: {detail}");
    assert!(
        detail.contains("relation \"nowhere\" does not exist"),
        "server message: {detail}"
    );
    nothing_left(&app, "broken_dump", "pdb_tpl_broken_dump_").await;

    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "broken/mig", "blueprint": "broken_mig" }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("blueprint_failed")),
        "{p}"
    );
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("V2__bad.sql:2"), "{detail}");
    assert!(
        detail.contains("column \"x\" of relation \"t\" already exists"),
        "{detail}"
    );
    nothing_left(&app, "broken_mig", "pdb_tpl_broken_mig_").await;

    let (status, p) = app
        .post(
            "/v1/environments",
            json!({ "key": "broken/pr", "blueprint": "good_mig",
                    "migrations": [{ "name": "V2__pr.sql", "sql": "ALTER TABLE t ADD COLUMN y int;\nSELECT * FROM missing_table;\n" }] }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("migration_failed")),
        "{p}"
    );
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("V2__pr.sql:2") && detail.contains("missing_table"),
        "{detail}"
    );
    nothing_left(&app, "broken_pr", "pdb_nothing_").await;
    let (_, rec) = app.get(&env_path("broken/pr")).await;
    assert_eq!(rec["state"], "failed", "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_build_one_template() {
    let dir = temp_dir();
    write_files(
        &dir.path().join("once"),
        &[("schema.sql", "CREATE TABLE built (at timestamptz, backend int);\nINSERT INTO built SELECT clock_timestamp(), pg_backend_pid();\nSELECT pg_sleep(0.5);\n")],
    );
    let app = std::sync::Arc::new(
        app_with_blueprints(
            dir.path(),
            &format!(
                "[blueprints.once]\nschema = {:?}\npool_size = 0\n",
                dir.path().join("once/schema.sql").display().to_string()
            ),
        )
        .await,
    );
    // A second replica on the same control store and target.
    let other = std::sync::Arc::new(
        TestApp::spawn_with(app.cluster.clone(), {
            let mut c = app.cluster.config.clone();
            c.merge_file(&dir.path().join("blueprints.toml")).unwrap();
            c
        })
        .await,
    );
    let (a, b) = tokio::join!(
        app.post(
            "/v1/environments",
            json!({ "key": "once/a", "blueprint": "once" })
        ),
        other.post(
            "/v1/environments",
            json!({ "key": "once/b", "blueprint": "once" })
        )
    );
    assert_eq!(a.0, StatusCode::CREATED, "{}", a.1);
    assert_eq!(b.0, StatusCode::CREATED, "{}", b.1);
    let built = |env: Value| async move {
        let c = connect(&uri(&env)).await.unwrap();
        let r = c
            .query_one("SELECT at::text, backend FROM built", &[])
            .await
            .unwrap();
        (r.get::<_, String>(0), r.get::<_, i32>(1))
    };
    assert_eq!(
        built(a.1).await,
        built(b.1).await,
        "both were cloned from one build"
    );
    let admin = app.admin("postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pdb_tpl_once_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let t = admin
        .query_one("SELECT datistemplate, datallowconn FROM pg_database WHERE datname LIKE 'pdb_tpl_once_%'", &[])
        .await
        .unwrap();
    assert_eq!((t.get::<_, bool>(0), t.get::<_, bool>(1)), (true, false));
}

#[tokio::test]
async fn a_changed_blueprint_retires_its_old_pool_and_unused_templates_are_dropped() {
    let dir = temp_dir();
    let files = dir.path().join("evolving");
    write_files(
        &files,
        &[(
            "schema.sql",
            "CREATE TABLE v (n int);\nINSERT INTO v VALUES (1);\n",
        )],
    );
    let toml = format!(
        "[blueprints.evolving]\nschema = {:?}\npool_size = 1\n",
        files.join("schema.sql").display().to_string()
    );
    // A replica with one more blueprint than the other.
    let foreign = format!(
        "{toml}[blueprints.foreign]\nschema = {:?}\npool_size = 0\n",
        files.join("foreign.sql").display().to_string()
    );
    write_files(&files, &[("foreign.sql", "CREATE TABLE f (n int);\n")]);
    let old = app_with_blueprints(dir.path(), &foreign).await;
    old.post("/v1/blueprints/foreign/prepare", json!({})).await;
    let (_, first) = old.post("/v1/blueprints/evolving/prepare", json!({})).await;
    let old_hash = first["targets"]["local"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept = old
        .create(json!({ "key": "evolving/live", "blueprint": "evolving" }))
        .await;
    old.post("/v1/blueprints/evolving/prepare", json!({})).await;

    // The blueprint's files change: a new hash, a new template; the old pool is retired.
    write_files(
        &files,
        &[(
            "schema.sql",
            "CREATE TABLE v (n int);\nINSERT INTO v VALUES (2);\n",
        )],
    );
    let new = app_with_blueprints(dir.path(), &toml).await;
    let (_, second) = new.post("/v1/blueprints/evolving/prepare", json!({})).await;
    let new_hash = second["targets"]["local"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(old_hash, new_hash);
    let admin = new.admin("postgres").await;
    let count = |pattern: String| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT count(*) FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE $1", &[&pattern])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let pooled = |hash: String| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)",
                    &[&format!("pdb_pool_evolving_{hash}_")],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(pooled(old_hash.clone()).await, 0, "old pool retired");
    assert_eq!(
        pooled(new_hash.clone()).await,
        pool_ready_everywhere(&second)
    );

    // The old template stays while a live environment was made from it (reset needs it) …
    new.app.collect_garbage().await.unwrap();
    assert_eq!(
        count(format!("previewdb:template=%\"hash\":\"{old_hash}\"%")).await,
        1
    );
    let (status, _) = new
        .post(&format!("{}/reset", env_path("evolving/live")), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // … and goes once nothing refers to it.
    new.delete(&env_path("evolving/live")).await;
    let dropped = new.app.collect_garbage().await.unwrap();
    assert!(dropped.iter().any(|d| d.contains(&old_hash)), "{dropped:?}");
    assert_eq!(
        count(format!("previewdb:template=%\"hash\":\"{old_hash}\"%")).await,
        0
    );
    assert_eq!(
        count(format!("previewdb:template=%\"hash\":\"{new_hash}\"%")).await,
        1,
        "the current template stays"
    );
    let _ = kept;
}

/// A template build cut off by its deadline while it holds the target-wide build lock (its
/// migration sleeps) gives the lock up at once: the lock's session ends with the build, so no
/// later build of that hash waits for a lock nobody holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_cut_off_by_its_deadline_leaves_no_advisory_lock() {
    let dir = temp_dir();
    let migrations = dir.path().join("sleepy");
    write_files(&migrations, &[("V1__sleep.sql", "SELECT pg_sleep(60);\n")]);
    let file = dir.path().join("blueprints.toml");
    let toml = format!(
        "[blueprints.sleepy]\nmigrations = {:?}\nmigrations_format = \"refinery\"\npool_size = 0\n",
        migrations.display().to_string()
    );
    std::fs::write(&file, toml).unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.provision_timeout = std::time::Duration::from_secs(5);
    config.merge_file(&file).expect("blueprint config");
    let app = TestApp::spawn_with(cluster, config).await;
    let (_, status) = app.get("/v1/blueprints/sleepy").await;
    let hash = status["targets"]["local"]["hash"].as_str().unwrap();
    let key = previewdb::pgconn::advisory_key("template", &format!("pdb_bld_sleepy_{hash}"));
    let admin = app.admin("postgres").await;
    let held = || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = $1",
                &[&key],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let create = app.post(
        "/v1/environments",
        json!({ "key": "sleepy/one", "blueprint": "sleepy" }),
    );
    let watch = async {
        let mut seen = false;
        for _ in 0..100 {
            seen |= held().await == 1;
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        seen
    };
    let ((status, problem), seen) = tokio::join!(create, watch);
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{problem}");
    assert!(seen, "the build held its lock while it ran");
    let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while held().await != 0 {
        assert!(
            std::time::Instant::now() < gone_by,
            "the build lock outlived the build"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
