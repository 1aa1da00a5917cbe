//! The GitHub Action's script (`action/previewdb.sh`), run with bash as a runner would run it —
//! `GITHUB_OUTPUT`, `GITHUB_ENV` and `GITHUB_EVENT_PATH` files — and as the GitLab example runs
//! it (a dotenv file), against the live service; its outputs are checked in PostgreSQL.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("action/previewdb.sh")
}

/// One run of the script.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    /// `$GITHUB_OUTPUT` (or the dotenv file), parsed.
    outputs: BTreeMap<String, String>,
    /// `$GITHUB_ENV`, parsed.
    env: BTreeMap<String, String>,
}

impl Run {
    fn out(&self, name: &str) -> &str {
        self.outputs
            .get(name)
            .unwrap_or_else(|| panic!("no output {name}: {:?}\n{}", self.outputs, self.stderr))
    }

    fn assert_ok(&self) {
        assert_eq!(
            self.code, 0,
            "script failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }
}

/// Parses the file format of `$GITHUB_OUTPUT` / `$GITHUB_ENV`: `name<<DELIM` … `DELIM` blocks
/// and `name=value` lines.
fn parse_github_file(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delim)) = line.split_once("<<") {
            let mut value = Vec::new();
            for l in lines.by_ref() {
                if l == delim {
                    break;
                }
                value.push(l);
            }
            map.insert(name.to_owned(), value.join("\n"));
        } else if let Some((name, value)) = line.split_once('=') {
            map.insert(name.to_owned(), value.to_owned());
        }
    }
    map
}

/// A GitHub runner's files for one job: event, outputs, env.
struct Runner {
    dir: tempfile::TempDir,
    repository: String,
}

impl Runner {
    fn new(event: Value) -> Runner {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("event.json"), event.to_string()).unwrap();
        let repository = format!(
            "acme/action-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Runner { dir, repository }
    }

    async fn create(&self, vars: &[(&'static str, String)]) -> Run {
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.run("create", &refs).await
    }

    /// Runs `previewdb.sh command` with a fresh `GITHUB_OUTPUT` and `GITHUB_ENV` and `vars`.
    async fn run(&self, command: &str, vars: &[(&str, &str)]) -> Run {
        let out = self
            .dir
            .path()
            .join(format!("output-{}", uuid::Uuid::new_v4()));
        let env = self
            .dir
            .path()
            .join(format!("env-{}", uuid::Uuid::new_v4()));
        std::fs::write(&out, "").unwrap();
        std::fs::write(&env, "").unwrap();
        let event = self.dir.path().join("event.json");
        let mut all: Vec<(&str, String)> = vec![
            ("GITHUB_ACTIONS", "true".into()),
            ("GITHUB_REPOSITORY", self.repository.clone()),
            ("GITHUB_EVENT_NAME", "pull_request".into()),
            ("GITHUB_EVENT_PATH", event.display().to_string()),
            ("GITHUB_OUTPUT", out.display().to_string()),
            ("GITHUB_ENV", env.display().to_string()),
        ];
        all.extend(vars.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let (code, stdout, stderr) = run_script(command, &all, self.dir.path()).await;
        Run {
            code,
            stdout,
            stderr,
            outputs: parse_github_file(&std::fs::read_to_string(&out).unwrap()),
            env: parse_github_file(&std::fs::read_to_string(&env).unwrap()),
        }
    }
}

/// Runs the script with bash, with only PATH and HOME of this process's environment.
async fn run_script(command: &str, vars: &[(&str, String)], cwd: &Path) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(script())
        .arg(command)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        );
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the script finishes")
        .expect("bash runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn migrations_dir(parent: &Path, files: &[(&str, &str)]) -> PathBuf {
    let dir = parent.join(format!("migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).unwrap();
    }
    dir
}

async fn current_user(url: &str) -> String {
    let client = connect(url).await.expect("the handed-out db_url logs in");
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn table_exists(url: &str, table: &str) -> bool {
    let client = connect(url).await.expect("login");
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn action_creates_finds_and_deletes_the_pull_requests_database() {
    let app = TestApp::spawn().await;
    let runner = Runner::new(
        json!({ "action": "opened", "number": 123, "pull_request": { "number": 123 } }),
    );
    let key = format!("{}#123", runner.repository);
    // File name order (bytewise), whatever order the directory lists them in: each one needs
    // the one before.
    let dir = migrations_dir(
        runner.dir.path(),
        &[
            (
                "010_index.sql",
                "CREATE INDEX invoices_customer ON invoices (customer);\n",
            ),
            (
                "002_invoices.sql",
                "CREATE TABLE invoices (id int, customer int REFERENCES customers);\n",
            ),
            (
                "001_customers.sql",
                "CREATE TABLE customers (id int PRIMARY KEY);\n",
            ),
            ("README.md", "not a migration"),
        ],
    );
    let dir = dir.display().to_string();
    let base = [
        ("PREVIEWDB_URL", app.base.as_str()),
        ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
        ("PREVIEWDB_BLUEPRINT", "-"),
        ("PREVIEWDB_MIGRATIONS", dir.as_str()),
    ];
    let mut create_vars = base.to_vec();
    create_vars.extend([
        ("PREVIEWDB_LABELS", "repo=acme/web, pr=123,team=a=b"),
        ("PREVIEWDB_TTL", "2h"),
        ("PREVIEWDB_EXPORT_ENV", "true"),
    ]);

    let first = runner.run("create", &create_vars).await;
    first.assert_ok();
    assert_eq!(first.out("created"), "true");
    assert_eq!(first.out("key"), key);
    assert_eq!(first.out("state"), "ready");
    let password = first.out("db_password").to_owned();
    let db_url = first.out("db_url").to_owned();
    assert!(password.len() >= 16, "{password:?}");
    assert!(db_url.contains(&password));
    let port: u16 = first.out("db_port").parse().expect("db_port is a number");
    assert!(port > 0);
    assert!(!first.out("db_host").is_empty());
    assert!(chrono::DateTime::parse_from_rfc3339(first.out("expires_at")).is_ok());

    // The secrets are masked before anything else prints them, and nothing else does.
    let lines: Vec<&str> = first.stdout.lines().collect();
    let first_mention = lines
        .iter()
        .position(|l| l.contains(&password))
        .expect("the password is masked");
    assert_eq!(lines[first_mention], format!("::add-mask::{password}"));
    assert!(lines.contains(&format!("::add-mask::{db_url}").as_str()));
    for line in &lines {
        if line.contains(&password) {
            assert!(line.starts_with("::add-mask::"), "{line}");
        }
    }
    assert!(!first.stderr.contains(&password), "{}", first.stderr);

    // The outputs log in, as the role they name, to a database holding the migrations.
    assert_eq!(current_user(&db_url).await, first.out("db_user"));
    let client = connect(&db_url).await.unwrap();
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, first.out("db_name"));
    for table in ["customers", "invoices", "invoices_customer"] {
        assert!(table_exists(&db_url, table).await, "{table} was migrated");
    }
    // $GITHUB_ENV for later steps.
    assert_eq!(first.env["DATABASE_URL"], db_url);
    assert_eq!(first.env["PGPASSWORD"], password);
    assert_eq!(first.env["PGUSER"], first.out("db_user"));
    assert_eq!(first.env["PGPORT"], port.to_string());

    // Labels and ttl reached the environment, under the URL-encoded key.
    let (status, env) = app.get(&env_path(&key)).await;
    assert!(status.is_success(), "{status} {env}");
    assert_eq!(env["id"], first.out("id"));
    assert_eq!(
        env["labels"],
        json!({ "repo": "acme/web", "pr": "123", "team": "a=b" })
    );
    let created =
        chrono::DateTime::parse_from_rfc3339(env["created_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(env["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 7200);

    // The next push: the same environment.
    let again = runner.run("create", &create_vars).await;
    again.assert_ok();
    assert_eq!(again.out("created"), "false");
    assert_eq!(again.out("id"), first.out("id"));
    assert_eq!(again.out("db_password"), password);

    let got = runner.run("get", &base).await;
    got.assert_ok();
    assert_eq!(got.out("id"), first.out("id"));
    assert_eq!(got.out("db_url"), db_url);
    assert_eq!(got.out("created"), "false");
    assert!(got.stdout.contains(&format!("::add-mask::{password}")));

    // Closed: deleted, and the credentials stop working.
    let deleted = runner
        .run("delete", &[base[0], base[1], ("PREVIEWDB_WAIT", "true")])
        .await;
    deleted.assert_ok();
    assert_eq!(deleted.out("existed"), "true");
    assert_eq!(deleted.out("id"), first.out("id"));
    assert_eq!(deleted.out("purged"), "true");
    assert!(connect(&db_url).await.is_err(), "login after delete");

    let twice = runner.run("delete", &base).await;
    twice.assert_ok();
    assert_eq!(twice.out("existed"), "true");

    let gone = runner.run("get", &base).await;
    assert_eq!(gone.code, 3, "{}\n{}", gone.stdout, gone.stderr);
    assert!(gone.stderr.contains("deleted"), "{}", gone.stderr);
    assert!(gone.stdout.contains("::error"), "{}", gone.stdout);
    assert!(!gone.outputs.contains_key("db_url"));

    let never = runner
        .run(
            "delete",
            &[base[0], base[1], ("PREVIEWDB_KEY", "acme/never-created#1")],
        )
        .await;
    never.assert_ok();
    assert_eq!(never.out("existed"), "false");
    assert!(
        never.stdout.contains("nothing to delete"),
        "{}",
        never.stdout
    );

    let bad = runner
        .run("create", &[base[0], ("PREVIEWDB_TOKEN", "not-a-token")])
        .await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("unauthorized"), "{}", bad.stderr);
    assert!(bad.outputs.is_empty(), "{:?}", bad.outputs);
}

#[tokio::test]
async fn action_key_needs_a_pull_request_and_a_valid_timeout() {
    let app = TestApp::spawn().await;
    let runner = Runner::new(json!({ "ref": "refs/heads/main" }));
    let vars = [
        ("PREVIEWDB_URL", app.base.as_str()),
        ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
    ];
    let run = runner.run("create", &vars).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("names no pull request"),
        "{}",
        run.stderr
    );

    let mut bad = vars.to_vec();
    bad.extend([("PREVIEWDB_KEY", "acme/x#1"), ("PREVIEWDB_TIMEOUT", "soon")]);
    let run = runner.run("create", &bad).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("timeout"), "{}", run.stderr);

    let run = runner.run("rotate", &vars).await;
    assert_eq!(run.code, 2, "{}", run.stderr);

    // Bad settings fail before any request: nothing is created.
    for (var, value, named) in [
        ("PREVIEWDB_EXPORT_ENV", "maybe", "export-env"),
        ("PREVIEWDB_ON_CONFLICT", "ignore", "on-conflict"),
        ("PREVIEWDB_LABELS", "team", "labels"),
    ] {
        let mut bad = vars.to_vec();
        bad.extend([("PREVIEWDB_KEY", "acme/bad-settings#1"), (var, value)]);
        let run = runner.run("create", &bad).await;
        assert_eq!(run.code, 2, "{var}: {}", run.stderr);
        assert!(run.stderr.contains(named), "{}", run.stderr);
    }
    let (status, _) = app.get(&env_path("acme/bad-settings#1")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn action_recreates_on_changed_migrations_and_reports_failed_ones() {
    let app = TestApp::spawn().await;
    let runner = Runner::new(json!({ "number": 7, "pull_request": { "number": 7 } }));
    let v1 = migrations_dir(
        runner.dir.path(),
        &[("V1__a.sql", "CREATE TABLE a (id int);")],
    );
    let v2 = migrations_dir(
        runner.dir.path(),
        &[
            ("V1__a.sql", "CREATE TABLE a (id int);"),
            ("V2__b.sql", "CREATE TABLE b (id int);"),
        ],
    );
    let (v1, v2) = (v1.display().to_string(), v2.display().to_string());
    let vars = |dir: &str, on_conflict: &str| -> Vec<(&'static str, String)> {
        vec![
            ("PREVIEWDB_URL", app.base.clone()),
            ("PREVIEWDB_TOKEN", ADMIN_TOKEN.into()),
            ("PREVIEWDB_BLUEPRINT", "-".into()),
            ("PREVIEWDB_MIGRATIONS", dir.into()),
            ("PREVIEWDB_ON_CONFLICT", on_conflict.into()),
        ]
    };

    let first = runner.create(&vars(&v1, "fail")).await;
    first.assert_ok();
    assert_eq!(first.out("created"), "true");

    // A push adds a migration: the settings differ.
    let conflict = runner.create(&vars(&v2, "fail")).await;
    assert_eq!(conflict.code, 4, "{}", conflict.stderr);
    assert!(
        conflict.stderr.contains("settings_conflict"),
        "{}",
        conflict.stderr
    );

    let recreated = runner.create(&vars(&v2, "recreate")).await;
    recreated.assert_ok();
    assert_eq!(recreated.out("created"), "true");
    assert_ne!(recreated.out("id"), first.out("id"));
    assert!(table_exists(recreated.out("db_url"), "b").await);
    assert!(
        connect(first.out("db_url")).await.is_err(),
        "the old one is gone"
    );

    // A failing migration: exit 8, the server's file and line, nothing created.
    let broken = migrations_dir(
        runner.dir.path(),
        &[("V1__bad.sql", "SELECT 1;\nCREATE TABLE;\n")],
    );
    let mut v = vars(&broken.display().to_string(), "fail");
    v.push(("PREVIEWDB_KEY", format!("{}#8", runner.repository)));
    let failed = runner.create(&v).await;
    assert_eq!(failed.code, 8, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("migration_failed"),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("V1__bad.sql"), "{}", failed.stderr);
    let (status, env) = app
        .get(&env_path(&format!("{}#8", runner.repository)))
        .await;
    assert_eq!(
        (status.as_u16(), env["state"].as_str()),
        (200, Some("failed")),
        "{env}"
    );

    let missing = runner
        .create(&vars("/nonexistent/migrations", "fail"))
        .await;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
}

/// A GitLab job: no GitHub files, the key from the merge request, the outputs in a dotenv file
/// (`artifacts:reports:dotenv`), and the password printed nowhere.
#[tokio::test]
async fn script_writes_gitlab_dotenv_outside_github() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let project = format!(
        "group/app-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let dotenv = dir.path().join("previewdb.env");
    let vars = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("GITLAB_CI", "true".to_owned()),
            ("CI_PROJECT_PATH", project.clone()),
            ("CI_MERGE_REQUEST_IID", "42".into()),
            ("PREVIEWDB_URL", app.base.clone()),
            ("PREVIEWDB_TOKEN", ADMIN_TOKEN.into()),
            ("PREVIEWDB_OUTPUT_FILE", dotenv.display().to_string()),
        ];
        v.extend_from_slice(extra);
        v
    };
    let (code, stdout, stderr) = run_script(
        "create",
        &vars(&[("PREVIEWDB_LABELS", "ci=gitlab".into())]),
        dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&dotenv).unwrap();
    // GitLab's dotenv rules: KEY=value lines, no quotes, blank lines or comments, few variables.
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() <= 10, "{text}");
    let mut vals = BTreeMap::new();
    for line in &lines {
        let (k, v) = line.split_once('=').expect("KEY=value");
        assert!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
            "{line}"
        );
        assert!(!v.starts_with('"') && !v.starts_with('\''), "{line}");
        vals.insert(k.to_owned(), v.to_owned());
    }
    let password = &vals["PREVIEWDB_DB_PASSWORD"];
    let db_url = &vals["PREVIEWDB_DB_URL"];
    assert_eq!(vals["PREVIEWDB_CREATED"], "true");
    assert!(!stdout.contains(password) && !stderr.contains(password));
    assert!(
        !stdout.contains("::"),
        "no GitHub workflow commands: {stdout}"
    );
    assert_eq!(current_user(db_url).await, vals["PREVIEWDB_DB_USER"]);

    // The key is <project>!<merge request>.
    let (status, env) = app.get(&env_path(&format!("{project}!42"))).await;
    assert!(status.is_success(), "{status} {env}");
    assert_eq!(env["id"].as_str(), Some(vals["PREVIEWDB_ID"].as_str()));
    assert_eq!(env["labels"], json!({ "ci": "gitlab" }));

    std::fs::remove_file(&dotenv).unwrap();
    let (code, stdout, stderr) = run_script("delete", &vars(&[]), dir.path()).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&dotenv).unwrap();
    assert!(text.contains("PREVIEWDB_EXISTED=true"), "{text}");
    assert!(connect(db_url).await.is_err(), "login after delete");
}

/// In front of the service: answers 503 with `Retry-After` to the first `fail_first` requests,
/// then passes requests on to `upstream` (one request per connection).
async fn flaky_proxy(
    upstream: String,
    fail_first: usize,
    retry_after: u64,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let http = http.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let read = sock.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut request_line = lines.next().unwrap_or_default().split(' ');
                let method = request_line.next().unwrap_or_default().to_owned();
                let path = request_line.next().unwrap_or_default().to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let read = sock.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..read]);
                }
                let (status, content_type, body) = if n < fail_first {
                    let body = json!({ "type": "https://previewdb.dev/problems/unavailable",
                        "title": "Service Unavailable", "status": 503, "code": "unavailable",
                        "detail": "the target cannot be reached" })
                    .to_string();
                    (
                        503,
                        "application/problem+json".to_owned(),
                        body.into_bytes(),
                    )
                } else {
                    let mut req =
                        http.request(method.parse().unwrap(), format!("{upstream}{path}"));
                    for (k, v) in &headers {
                        if k == "authorization" || k == "content-type" {
                            req = req.header(k.as_str(), v.as_str());
                        }
                    }
                    let res = req
                        .body(buf[head_end..head_end + length].to_vec())
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    let ct = res
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/json")
                        .to_owned();
                    (status, ct, res.bytes().await.unwrap().to_vec())
                };
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                if status == 503 {
                    answer.push_str(&format!("Retry-After: {retry_after}\r\n"));
                }
                answer.push_str("\r\n");
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn action_retries_503_as_retry_after_says_within_its_timeout() {
    let app = TestApp::spawn().await;
    let runner = Runner::new(json!({ "number": 9, "pull_request": { "number": 9 } }));

    // Two 503s asking for 2 s each, then the service: created after at least 4 s.
    let (url, seen) = flaky_proxy(app.base.clone(), 2, 2).await;
    let started = Instant::now();
    let run = runner
        .run(
            "create",
            &[
                ("PREVIEWDB_URL", url.as_str()),
                ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
                ("PREVIEWDB_BLUEPRINT", "-"),
            ],
        )
        .await;
    run.assert_ok();
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(run.out("created"), "true");
    assert_eq!(
        run.stderr.matches("retrying in 2s").count(),
        2,
        "{}",
        run.stderr
    );
    assert_eq!(current_user(run.out("db_url")).await, run.out("db_user"));

    // Always unavailable: it gives up once the next wait would pass the timeout, exit 6.
    let (url, seen) = flaky_proxy(app.base.clone(), usize::MAX, 2).await;
    let started = Instant::now();
    let run = runner
        .run(
            "get",
            &[
                ("PREVIEWDB_URL", url.as_str()),
                ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
                ("PREVIEWDB_TIMEOUT", "5s"),
            ],
        )
        .await;
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(seen.load(Ordering::SeqCst) >= 2);
    assert!(run.stderr.contains("unavailable"), "{}", run.stderr);

    // Nothing listening: connection errors are retried too, then exit 6.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let run = runner
        .run(
            "delete",
            &[
                ("PREVIEWDB_URL", closed.as_str()),
                ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
                ("PREVIEWDB_TIMEOUT", "3"),
            ],
        )
        .await;
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("retrying"), "{}", run.stderr);
}

// --- the examples' shell ----------------------------------------------------------------------

fn example(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines after `lines[at]` indented deeper than it (blank ones kept), dedented: the body of
/// a YAML block (`run: |`, `- |`, `env:`).
fn block_below(lines: &[&str], at: usize) -> Vec<String> {
    let own = indent(lines[at]);
    let body: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > own)
        .copied()
        .collect();
    let strip = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(strip..).unwrap_or("").to_owned())
        .collect()
}

/// The first line at or after `from` whose text (indentation stripped) is `text`.
fn find_line(lines: &[&str], from: usize, text: &str) -> usize {
    from + lines[from..]
        .iter()
        .position(|l| l.trim() == text)
        .unwrap_or_else(|| panic!("no line {text:?}"))
}

/// `KEY: value` lines of a YAML mapping block, quotes removed.
fn mapping(block: &[String]) -> Vec<(String, String)> {
    block
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(' '))
        .map(|l| {
            let (k, v) = l.split_once(':').expect("key: value");
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// `$NAME` and `${NAME}` replaced from `vars`, as GitLab expands job variables.
fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("closing brace");
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Runs a step's shell as the runner would (`bash -eo pipefail`) in `cwd` with `vars`.
async fn run_shell(
    body: &str,
    vars: &BTreeMap<String, String>,
    cwd: &Path,
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", body])
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .envs(vars);
    let output = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the step finishes")
        .expect("bash runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A checkout of an app: blueprint `app` built from its first two plain migrations (as the
/// service would be configured from the main branch), and a pull request adding a third; the
/// examples' migration runner at scripts/psql-migrate.sh.
async fn app_checkout() -> (TestApp, tempfile::TempDir) {
    let work = temp_dir();
    let base = work.path().join("base-migrations");
    let mine = work.path().join("db/migrations");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::create_dir_all(work.path().join("scripts")).unwrap();
    let files = [
        (
            "001_customers.sql",
            "CREATE TABLE customers (id int PRIMARY KEY, name text);\n",
        ),
        (
            "002_seed.sql",
            "INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace');\n",
        ),
    ];
    for (name, sql) in files {
        std::fs::write(base.join(name), sql).unwrap();
        std::fs::write(mine.join(name), sql).unwrap();
    }
    std::fs::write(
        mine.join("003_invoices.sql"),
        "CREATE TABLE invoices (id int, customer int REFERENCES customers);\n\
         INSERT INTO invoices SELECT id, id FROM customers;\n",
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/psql-migrate.sh"),
        work.path().join("scripts/psql-migrate.sh"),
    )
    .unwrap();
    let toml = work.path().join("blueprints.toml");
    std::fs::write(
        &toml,
        format!(
            "[blueprints.app]\nmigrations = {:?}\nmigrations_format = \"plain\"\npool_size = 0\n",
            base.display().to_string()
        ),
    )
    .unwrap();
    let cluster = cluster().await;
    let mut config = cluster.config.clone();
    config.merge_file(&toml).expect("blueprint config");
    (TestApp::spawn_with(cluster, config).await, work)
}

async fn invoices(url: &str) -> i64 {
    let client = connect(url).await.expect("login");
    client
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0)
}

/// examples/github-actions/preview-db.yml: every `with:` is an input of action.yml, and the
/// migration-test job's shell, after the action's create, migrates the handed-out database.
#[tokio::test]
async fn github_example_workflow_migration_test_runs() {
    let workflow = example("examples/github-actions/preview-db.yml");
    let action = example("action.yml");
    let action_lines: Vec<&str> = action.lines().collect();
    let inputs: Vec<String> = mapping(&block_below(
        &action_lines,
        find_line(&action_lines, 0, "inputs:"),
    ))
    .into_iter()
    .map(|(k, _)| k)
    .collect();
    let lines: Vec<&str> = workflow.lines().collect();
    let mut withs = 0;
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "with:" {
            for (k, _) in mapping(&block_below(&lines, i)) {
                assert!(
                    inputs.contains(&k),
                    "input {k} is not in action.yml: {inputs:?}"
                );
                withs += 1;
            }
        }
    }
    assert!(withs >= 10, "{withs}");
    assert!(workflow.contains("types: [opened, synchronize, reopened, closed]"));

    let (app, work) = app_checkout().await;
    let runner = Runner::new(
        json!({ "action": "synchronize", "number": 5, "pull_request": { "number": 5 } }),
    );
    // The migration-test job's create step, as action.yml maps its inputs.
    let create = runner
        .run(
            "create",
            &[
                ("PREVIEWDB_URL", app.base.as_str()),
                ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
                (
                    "PREVIEWDB_KEY",
                    &format!("{}#5/migrations/1-1", runner.repository),
                ),
                ("PREVIEWDB_BLUEPRINT", "app"),
                ("PREVIEWDB_TTL", "2h"),
                ("PREVIEWDB_EXPORT_ENV", "true"),
            ],
        )
        .await;
    create.assert_ok();

    let step = find_line(&lines, 0, "- name: Run the pull request's migrations");
    let section = block_below(&lines, step);
    let section: Vec<&str> = section.iter().map(String::as_str).collect();
    let mut vars: BTreeMap<String, String> = create.env.clone();
    vars.extend(mapping(&block_below(
        &section,
        find_line(&section, 0, "env:"),
    )));
    let body = block_below(&section, find_line(&section, 0, "run: |")).join("\n");
    let (code, stdout, stderr) = run_shell(&body, &vars, work.path()).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The blueprint's two were there already: only the pull request's third ran.
    assert!(stdout.contains("applying 003_invoices.sql"), "{stdout}");
    assert!(!stdout.contains("applying 001"), "{stdout}");
    assert!(stdout.contains("3 migrations recorded"), "{stdout}");
    assert_eq!(invoices(create.out("db_url")).await, 2);

    // Run again (a re-run of the job on the same database): nothing to do.
    let (code, stdout, stderr) = run_shell(&body, &vars, work.path()).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("0 applied"), "{stdout}");
    // A migration edited after it ran is refused.
    std::fs::write(
        work.path().join("db/migrations/003_invoices.sql"),
        "SELECT 1;\n",
    )
    .unwrap();
    let (code, _, stderr) = run_shell(&body, &vars, work.path()).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("applied before with other contents"),
        "{stderr}"
    );
}

/// The lines of GitLab job `job`.
fn gitlab_job<'a>(lines: &[&'a str], job: &str) -> Vec<&'a str> {
    let at = lines
        .iter()
        .position(|l| *l == format!("{job}:"))
        .unwrap_or_else(|| panic!("no job {job}"));
    std::iter::once(lines[at])
        .chain(
            lines[at + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.starts_with(' '))
                .copied(),
        )
        .collect()
}

/// Runs a GitLab job's `script` (or `after_script`) with its `variables` expanded over `ci`.
async fn run_gitlab(
    lines: &[&str],
    job: &str,
    part: &str,
    ci: &BTreeMap<String, String>,
    cwd: &Path,
) -> (i32, String, String) {
    let job_lines = gitlab_job(lines, job);
    let mut vars = ci.clone();
    if let Some(at) = job_lines.iter().position(|l| l.trim() == "variables:") {
        for (k, v) in mapping(&block_below(&job_lines, at)) {
            let v = expand(&v, &vars);
            vars.insert(k, v);
        }
    }
    let at = find_line(&job_lines, 0, &format!("{part}:"));
    let item = find_line(&job_lines, at, "- |");
    let body = block_below(&job_lines, item).join("\n");
    run_shell(&body, &vars, cwd).await
}

/// examples/gitlab-ci/.gitlab-ci.yml: its jobs' shell, with the script in place of its
/// download, against the service: the review database with its dotenv, the migration test that
/// migrates and drops its own database, and the stop job.
#[tokio::test]
async fn gitlab_example_jobs_run() {
    let text = example("examples/gitlab-ci/.gitlab-ci.yml");
    let lines: Vec<&str> = text.lines().collect();
    assert!(text.contains("dotenv: previewdb.env"));
    let (app, work) = app_checkout().await;
    let project = format!(
        "group/app-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let ci: BTreeMap<String, String> = [
        ("GITLAB_CI", "true".to_owned()),
        ("CI_PROJECT_PATH", project.clone()),
        ("CI_MERGE_REQUEST_IID", "17".into()),
        ("CI_JOB_ID", "9001".into()),
        ("PREVIEWDB_URL", app.base.clone()),
        ("PREVIEWDB_TOKEN", ADMIN_TOKEN.into()),
        ("PREVIEWDB_SH", script().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let (code, stdout, stderr) = run_gitlab(&lines, "preview-db", "script", &ci, work.path()).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let dotenv = std::fs::read_to_string(work.path().join("previewdb.env")).unwrap();
    let vals: BTreeMap<&str, &str> = dotenv.lines().filter_map(|l| l.split_once('=')).collect();
    assert!(!stdout.contains(vals["PREVIEWDB_DB_PASSWORD"]));
    assert!(!stderr.contains(vals["PREVIEWDB_DB_PASSWORD"]));
    // The review database holds the blueprint and the merge request's migration.
    assert_eq!(invoices(vals["PREVIEWDB_DB_URL"]).await, 2);
    let (status, env) = app.get(&env_path(&format!("{project}!17"))).await;
    assert!(status.is_success(), "{status} {env}");
    assert_eq!(env["labels"]["mr"], "17");
    assert_eq!(env["blueprint"], "app");

    // The migration test: its own database, migrated by the app's tool, dropped afterwards.
    let (code, stdout, stderr) =
        run_gitlab(&lines, "migration-test", "script", &ci, work.path()).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("applying 003_invoices.sql"), "{stdout}");
    let mt = std::fs::read_to_string(work.path().join("migration-db.env")).unwrap();
    let mt_url = mt
        .lines()
        .find_map(|l| l.strip_prefix("PREVIEWDB_DB_URL="))
        .unwrap()
        .to_owned();
    assert_ne!(mt_url, vals["PREVIEWDB_DB_URL"]);
    assert_eq!(invoices(&mt_url).await, 2);
    let (status, env) = app
        .get(&env_path(&format!("{project}!17/migrations/9001")))
        .await;
    assert_eq!(
        (status.as_u16(), env["state"].as_str()),
        (200, Some("ready"))
    );
    let (code, stdout, stderr) =
        run_gitlab(&lines, "migration-test", "after_script", &ci, work.path()).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        connect(&mt_url).await.is_err(),
        "the migration test's database is gone"
    );

    // The merge request closes: the stop job.
    let (code, stdout, stderr) =
        run_gitlab(&lines, "preview-db-stop", "script", &ci, work.path()).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("deleted"), "{stdout}");
    assert!(connect(vals["PREVIEWDB_DB_URL"]).await.is_err());
    // Again, as after auto_stop_in: still fine.
    let (code, _, stderr) = run_gitlab(&lines, "preview-db-stop", "script", &ci, work.path()).await;
    assert_eq!(code, 0, "{stderr}");
}
