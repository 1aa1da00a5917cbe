//! The edges of the API (issue 7, "the small ones"): values PostgreSQL cannot store, extension
//! names, paging of the listing, the reveal scope, and `previewdb dev` as root from a folder
//! others cannot enter. Black-box over HTTP, checked in PostgreSQL itself.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// Rows of the control store for a key (NUL-free keys only, of course).
async fn rows_of_key(app: &TestApp, key: &str) -> i64 {
    app.admin("previewdb")
        .await
        .query_one("SELECT count(*) FROM environments WHERE key = $1", &[&key])
        .await
        .unwrap()
        .get(0)
}

fn assert_invalid_naming(status: StatusCode, body: &Value, field: &str) {
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("{field}: ")) && detail.contains("NUL"),
        "{field}: {detail}"
    );
}

#[tokio::test]
async fn nul_bytes_anywhere_are_refused_naming_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    let key = "edges/nul#1";
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "key": "edges/nul\u{0}#1" }), "key"),
        (
            json!({ "key": key, "labels": { "team": "a\u{0}b" } }),
            "labels.team",
        ),
        (
            json!({ "key": key, "labels": { "te\u{0}am": "ab" } }),
            "labels (a key)",
        ),
        (json!({ "key": key, "ttl": "1h\u{0}" }), "ttl"),
        (json!({ "key": key, "blueprint": "\u{0}" }), "blueprint"),
        (json!({ "key": key, "target": "local\u{0}" }), "target"),
        (
            json!({ "key": key, "isolation": "\u{0}schema" }),
            "isolation",
        ),
        (
            json!({ "key": key, "migrations": [{ "name": "1\u{0}.sql", "sql": "SELECT 1" }] }),
            "migrations[0].name",
        ),
        (
            json!({ "key": key, "migrations": [
                { "name": "1.sql", "sql": "SELECT 1" },
                { "name": "2.sql", "sql": "SELECT '\u{0}'" }
            ] }),
            "migrations[1].sql",
        ),
    ];
    for (body, field) in cases {
        let (status, p) = app.post("/v1/environments", body).await;
        assert_invalid_naming(status, &p, field);
    }
    assert_eq!(rows_of_key(&app, key).await, 0, "nothing was recorded");

    // Query strings and path segments alike.
    for (path, field) in [
        ("/v1/environments?label=a=%00", "query parameter label"),
        ("/v1/environments?key=a%00", "query parameter key"),
        ("/v1/environments?target=%00", "query parameter target"),
        ("/v1/environments/a%00b", "path parameter ref"),
        ("/v1/blueprints/a%00", "path parameter name"),
    ] {
        let (status, p) = app.get(path).await;
        assert_invalid_naming(status, &p, field);
    }

    // On a live environment, a refused extend or migrate changes nothing either.
    let env = app.create(json!({ "key": key, "ttl": "1h" })).await;
    let path = env_path(key);
    let (status, p) = app
        .post(&format!("{path}/extend"), json!({ "ttl": "\u{0}9h" }))
        .await;
    assert_invalid_naming(status, &p, "ttl");
    let (status, p) = app
        .post(
            &format!("{path}/migrate"),
            json!({ "migrations": [{ "name": "x.sql", "sql": "CREATE TABLE t (c text DEFAULT '\u{0}')" }] }),
        )
        .await;
    assert_invalid_naming(status, &p, "migrations[0].sql");
    let (_, now) = app.get(&path).await;
    assert_eq!(now["expires_at"], env["expires_at"]);
    let tenant = connect(&uri(&env)).await.unwrap();
    let tables: i64 = tenant
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "the refused migration did not run");
    let (status, _) = app.delete(&path).await;
    assert_eq!(status, StatusCode::OK);
}

/// Writes `toml` next to a fresh directory and spawns an app with it merged in.
async fn app_with(dir: &Path, toml: &str) -> TestApp {
    let file = dir.join("extra.toml");
    std::fs::write(&file, toml).unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.merge_file(&file).expect("test config");
    TestApp::spawn_with(cluster, config).await
}

#[tokio::test]
async fn extension_names_with_a_dash_build_and_work_in_both_isolations() {
    let dir = temp_dir();
    let app = app_with(
        dir.path(),
        "[blueprints.uuids]\nextensions = [\"uuid-ossp\", \"pg_trgm\"]\npool_size = 0\n",
    )
    .await;
    for isolation in ["database", "schema"] {
        let key = format!("edges/uuid-ossp#{isolation}");
        let env = app
            .create(json!({ "key": key, "blueprint": "uuids", "isolation": isolation }))
            .await;
        let tenant = connect(&uri(&env)).await.expect("tenant logs in");
        let row = tenant
            .query_one(
                "SELECT uuid_generate_v4()::text, similarity('uuid', 'uuid-ossp')",
                &[],
            )
            .await
            .expect("the extensions' functions are there");
        let id: String = row.get(0);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert!(row.get::<_, f32>(1) > 0.0);
        drop(tenant);
        let (status, _) = app.delete(&env_path(&key)).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn listing_pages_through_everything_exactly_once_newest_first() {
    let app = TestApp::spawn().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let selector = format!("label=edges-run={run}");
    let mut keys = Vec::new();
    // Created a few at a time: enough to need five pages of 7, cheap (empty databases).
    for chunk in (0..30).collect::<Vec<_>>().chunks(5) {
        let creates = chunk.iter().map(|i| {
            let key = format!("edges/page#{run}-{i:02}");
            let app = &app;
            let run = run.clone();
            async move {
                app.create(json!({ "key": key, "labels": { "edges-run": run } }))
                    .await;
                key
            }
        });
        keys.extend(futures_util::future::join_all(creates).await);
    }

    let mut seen: Vec<(String, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/v1/environments?{selector}&limit=7"),
            Some(c) => format!("/v1/environments?{selector}&limit=7&cursor={c}"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(items.iter().map(|e| {
            (
                e["created_at"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap().to_owned(),
            )
        }));
        if pages == 1 {
            // Created after the first page: newer than everything, so later pages stay put.
            app.create(
                json!({ "key": format!("edges/page#{run}-late"), "labels": { "edges-run": run } }),
            )
            .await;
        }
        match page.get("next") {
            Some(next) => {
                assert_eq!(items.len(), 7, "only the last page may be short");
                cursor = Some(next.as_str().unwrap().to_owned());
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 5, "30 = 4 × 7 + 2");
    let got: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
    let unique: BTreeSet<&str> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no environment twice: {got:?}");
    assert_eq!(
        unique,
        keys.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "every environment once"
    );
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0));
    assert_eq!(
        seen.iter().map(|s| &s.0).collect::<Vec<_>>(),
        sorted.iter().map(|s| &s.0).collect::<Vec<_>>(),
        "newest first"
    );

    // The default page is 100; a full listing is never cut silently.
    let (_, all) = app.get(&format!("/v1/environments?{selector}")).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 31);
    assert!(all.get("next").is_none());
    let (_, one) = app
        .get(&format!("/v1/environments?{selector}&limit=1"))
        .await;
    assert_eq!(one["items"][0]["key"], format!("edges/page#{run}-late"));
    assert!(one["next"].is_string());

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "cursor=nonsense",
        "cursor=djE6eDp5",
    ] {
        let (status, p) = app.get(&format!("/v1/environments?{bad}")).await;
        assert_eq!(
            (status, p["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input")),
            "{bad}: {p}"
        );
    }
    let (status, _) = app.get("/v1/environments?limit=1000").await;
    assert_eq!(status, StatusCode::OK);

    for key in keys.iter().chain([&format!("edges/page#{run}-late")]) {
        let (status, _) = app.delete(&env_path(key)).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn revealing_passwords_needs_its_own_scope() {
    let dir = temp_dir();
    let token = |name: &str, scopes: &str, extra: &str| {
        format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n{extra}\n",
            hex::encode(previewdb::domain::token_digest(&format!("tok-{name}")))
        )
    };
    let toml = [
        token(
            "writer",
            "\"environments:read\", \"environments:write\"",
            "",
        ),
        token(
            "quiet-writer",
            "\"environments:read\", \"environments:write\"",
            "reveal = false",
        ),
        token("quiet-admin", "\"admin\"", "reveal = false"),
        token(
            "revealer",
            "\"environments:read\", \"environments:reveal\"",
            "",
        ),
    ]
    .concat();
    let app = app_with(dir.path(), &toml).await;
    let key = "edges/reveal#1";
    let env = app.create(json!({ "key": key })).await;
    let password = env["connection"]["password"].as_str().unwrap().to_owned();
    let path = format!("{}?reveal=true", env_path(key));

    for (token, allowed) in [
        (READ_TOKEN, false),
        ("tok-quiet-writer", false),
        ("tok-quiet-admin", false),
        ("tok-writer", true),
        ("tok-revealer", true),
        (ADMIN_TOKEN, true),
    ] {
        let (status, body) = app.call(Method::GET, &path, Some(token), None).await;
        if allowed {
            assert_eq!(status, StatusCode::OK, "{token}: {body}");
            assert_eq!(body["connection"]["password"], password.as_str(), "{token}");
            connect(&uri(&body))
                .await
                .expect("the revealed URI logs in");
        } else {
            assert_eq!(
                (status, body["code"].as_str()),
                (StatusCode::FORBIDDEN, Some("forbidden")),
                "{token}: {body}"
            );
            assert!(
                body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("environments:reveal"),
                "{body}"
            );
        }
        // Without reveal, every reader gets the environment, never the password.
        let (status, body) = app
            .call(Method::GET, &env_path(key), Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{token}");
        assert!(body["connection"].get("password").is_none(), "{token}");
    }
    let (status, _) = app.delete(&env_path(key)).await;
    assert_eq!(status, StatusCode::OK);
}

/// Stops `previewdb dev` with SIGTERM when the test ends, also when it fails half-way.
struct Dev(std::process::Child);

impl Dev {
    fn stop(&mut self) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.0.try_wait() {
            return status;
        }
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[tokio::test]
async fn dev_runs_as_root_from_a_folder_others_cannot_enter() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only meaningful as root (the server then runs as `postgres`)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    // Like a project in /root: a folder only root may enter, with the data dir inside it.
    let private = tempfile::Builder::new()
        .prefix("previewdb-private-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = private.path().join("project").join(".previewdb");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = || {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_previewdb"))
            .args([
                "dev",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(&data_dir)
            .current_dir(private.path())
            .env("PREVIEWDB_DEV_TOKEN", "edges-dev-token")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("previewdb dev starts");
        Dev(child)
    };
    std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let wait_ready = |dev: &mut Dev| {
        let http = http.clone();
        let base = base.clone();
        let exited = dev.0.try_wait().unwrap();
        async move {
            assert!(exited.is_none(), "previewdb dev exited: {exited:?}");
            for _ in 0..600 {
                if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                    if r.status() == StatusCode::OK {
                        return;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("previewdb dev did not become ready in 60 s");
        }
    };
    let stop = |dev: &mut Dev| {
        let status = dev.stop();
        assert!(status.success(), "previewdb dev stopped with {status}");
    };

    let mut child = start();
    wait_ready(&mut child).await;
    let home = std::fs::read_link(data_dir.join(previewdb::embedded::CLUSTER_LINK))
        .expect("the data dir links to where the cluster lives");
    let pgdata = home.join("pgdata").display().to_string();
    assert!(
        !processes_mentioning(&pgdata).is_empty(),
        "its postgres runs"
    );

    let create = |key: &'static str| {
        http.post(format!("{base}/v1/environments"))
            .bearer_auth("edges-dev-token")
            .json(&json!({ "key": key, "blueprint": "" }))
            .send()
    };
    let res = create("edges/dev#1").await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let env: Value = res.json().await.unwrap();
    let tenant = connect(&uri(&env))
        .await
        .expect("log in as the environment");
    let user: String = tenant
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, env["connection"]["user"].as_str().unwrap());
    drop(tenant);

    stop(&mut child);
    assert_eq!(
        processes_mentioning(&pgdata),
        Vec::<String>::new(),
        "no postgres of it remains"
    );

    // A restart finds the same cluster, and its key still opens the stored password.
    let mut child = start();
    wait_ready(&mut child).await;
    let res = http
        .get(format!("{base}{}?reveal=true", env_path("edges/dev#1")))
        .bearer_auth("edges-dev-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let again: Value = res.json().await.unwrap();
    assert_eq!(
        again["connection"]["password"],
        env["connection"]["password"]
    );
    stop(&mut child);
    assert!(processes_mentioning(&pgdata).is_empty());
    std::fs::remove_dir_all(&home).unwrap();
}
