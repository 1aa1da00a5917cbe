//! `previewdb env …` and `previewdb completion`: the built binary run as a pipeline runs it,
//! against a live service on the shared cluster; exit codes provoked for real.

use crate::support::*;
use previewdb::configuration::{PostgresTargetConfig, TargetConfig};
use serde_json::Value;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_previewdb");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `previewdb ARGS` with `env` set (and nothing inherited that would point it elsewhere).
async fn previewdb(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("PREVIEWDB_URL")
        .env_remove("PREVIEWDB_TOKEN")
        .env_remove("GITHUB_OUTPUT")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("previewdb runs");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "previewdb {args:?} panicked: {}",
        run.stderr
    );
    run
}

/// `previewdb env --url APP --token ADMIN ARGS`.
async fn env_cmd(app: &TestApp, args: &[&str]) -> Run {
    env_cmd_with(app, args, &[]).await
}

async fn env_cmd_with(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["env"];
    all.extend_from_slice(args);
    previewdb(
        &all,
        &[
            &[
                ("PREVIEWDB_URL", app.base.as_str()),
                ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
            ],
            env,
        ]
        .concat(),
    )
    .await
}

fn expect(run: &Run, code: i32, what: &str) {
    assert_eq!(
        run.code, code,
        "{what}: exit {} (stdout {:?}, stderr {:?})",
        run.code, run.stdout, run.stderr
    );
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", run.stdout))
}

#[tokio::test]
async fn exit_codes_tell_failures_apart() {
    let app = TestApp::spawn_with(cluster().await, {
        let mut config = cluster().await.config.clone();
        let TargetConfig::Postgres(local) = config.targets["local"].clone() else {
            unreachable!()
        };
        config.targets.insert(
            "full".into(),
            TargetConfig::Postgres(PostgresTargetConfig {
                max_environments: 0,
                ..local
            }),
        );
        config
    })
    .await;

    let ok = env_cmd(&app, &["create", "cli/codes#1"]).await;
    expect(&ok, 0, "create");
    assert!(ok.stdout.starts_with("postgres"), "{}", ok.stdout);

    let missing = env_cmd(&app, &["get", "cli/codes#never"]).await;
    expect(&missing, 3, "get of a key that never existed");
    assert!(missing.stderr.contains("not_found"), "{}", missing.stderr);
    expect(
        &env_cmd(&app, &["reset", "cli/codes#never"]).await,
        3,
        "reset of a key that never existed",
    );

    let conflict = env_cmd(&app, &["create", "cli/codes#1", "--target", "other"]).await;
    expect(&conflict, 4, "create of the key with other settings");
    assert!(
        conflict.stderr.contains("settings_conflict"),
        "{}",
        conflict.stderr
    );

    let full = env_cmd(&app, &["create", "cli/codes#2", "--target", "full"]).await;
    expect(&full, 5, "create on a target at its max_environments");
    assert!(full.stderr.contains("limit_reached"), "{}", full.stderr);

    let invalid = env_cmd(&app, &["create", "cli/codes#3", "--ttl", "forever"]).await;
    expect(&invalid, 7, "create with a ttl that is no duration");
    assert!(
        invalid.stderr.contains("invalid_input"),
        "{}",
        invalid.stderr
    );
    expect(
        &env_cmd(&app, &["extend", "cli/codes#1", "--ttl", "soon"]).await,
        7,
        "extend with a ttl that is no duration",
    );

    let dir = temp_dir();
    std::fs::write(dir.path().join("001_broken.sql"), "SELEC 1;\n").unwrap();
    let failed = env_cmd(
        &app,
        &[
            "create",
            "cli/codes#4",
            "--migrations",
            dir.path().to_str().unwrap(),
        ],
    )
    .await;
    expect(&failed, 8, "create whose migrations fail");
    assert!(
        failed.stderr.contains("migration_failed"),
        "{}",
        failed.stderr
    );

    // Usage: clap's own errors, and what the command line lacks or gets wrong.
    expect(
        &env_cmd(&app, &["frobnicate"]).await,
        2,
        "an unknown subcommand",
    );
    expect(
        &env_cmd(&app, &["create", "cli/codes#5", "--label", "team"]).await,
        2,
        "a label without =",
    );
    expect(
        &env_cmd(
            &app,
            &["create", "cli/codes#5", "--migrations", "/nonexistent/dir"],
        )
        .await,
        2,
        "a migrations directory that does not exist",
    );
    expect(
        &env_cmd(&app, &["get", "cli/codes#1", "-o", "github"]).await,
        2,
        "-o github without $GITHUB_OUTPUT",
    );
    let no_token = previewdb(&["env", "--url", &app.base, "get", "cli/codes#1"], &[]).await;
    expect(&no_token, 2, "no token");
    assert!(no_token.stderr.contains("token"), "{}", no_token.stderr);
    expect(
        &previewdb(
            &["env", "--url", &app.base, "--token", "wrong", "get", "x"],
            &[],
        )
        .await,
        1,
        "a token the service does not know",
    );
}

#[tokio::test]
async fn nobody_listening_exits_6_within_the_timeout() {
    // A port that was free a moment ago: connection refused, retried until --timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let run = previewdb(
        &[
            "env",
            "--url",
            &url,
            "--token",
            "t",
            "--timeout",
            "2s",
            "get",
            "x",
        ],
        &[],
    )
    .await;
    let took = started.elapsed();
    expect(&run, 6, "nobody listening");
    assert!(run.stderr.contains("Connection refused"), "{}", run.stderr);
    // Retried (backoff 0.25 s, 0.5 s, 1 s …) rather than giving up at once, within the bound.
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

/// A port that accepts nothing for `late` and then forwards to `app`, answering the first
/// `refusals` requests itself with `503 unavailable` and `Retry-After: retry_after`; counts
/// requests.
async fn flaky_front(
    app: &TestApp,
    late: Duration,
    refusals: usize,
    retry_after: u64,
) -> (String, Arc<AtomicUsize>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let base = app.base.clone();
    tokio::spawn(async move {
        tokio::time::sleep(late).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let http = reqwest::Client::new();
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (head, body) = read_request(&mut sock).await;
            let answer = if n < refusals {
                let problem = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"code":"unavailable","detail":"try later"}"#;
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {retry_after}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{problem}",
                    problem.len()
                )
            } else {
                let mut lines = head.lines();
                let mut first = lines.next().unwrap().split(' ');
                let (method, path) = (first.next().unwrap(), first.next().unwrap());
                let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
                for line in lines {
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization")
                            || k.eq_ignore_ascii_case("content-type")
                        {
                            req = req.header(k.trim(), v.trim());
                        }
                    }
                }
                let res = req.body(body).send().await.unwrap();
                let status = res.status();
                let text = res.text().await.unwrap();
                format!(
                    "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or(""),
                    text.len()
                )
            };
            sock.write_all(answer.as_bytes()).await.unwrap();
            let _ = sock.shutdown().await;
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

/// One HTTP/1.1 request: its head and its body (by content-length).
async fn read_request(sock: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "request cut short");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "body cut short");
                body.extend_from_slice(&chunk[..n]);
            }
            return (head, body);
        }
    }
}

#[tokio::test]
async fn refused_connections_and_503_are_retried_honouring_retry_after() {
    let app = TestApp::spawn().await;
    // Nobody listens for 0.6 s, then two 503s with Retry-After: 1, then the service answers.
    let (url, seen) = flaky_front(&app, Duration::from_millis(600), 2, 1).await;
    let started = Instant::now();
    let run = previewdb(
        &[
            "env",
            "--url",
            &url,
            "--token",
            ADMIN_TOKEN,
            "--timeout",
            "30s",
            "-o",
            "json",
            "create",
            "cli/retry#1",
        ],
        &[],
    )
    .await;
    let took = started.elapsed();
    expect(&run, 0, "create through refusals and 503s");
    assert_eq!(json_of(&run)["created"], true);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "two 503s, then the real answer"
    );
    assert!(
        took >= Duration::from_millis(2600),
        "Retry-After: 1 waited twice: {took:?}"
    );

    // A Retry-After (30 s) the timeout (10 s) cannot wait for: exit 6 at once.
    let (url, _) = flaky_front(&app, Duration::ZERO, usize::MAX, 30).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let run = previewdb(
        &[
            "env",
            "--url",
            &url,
            "--token",
            ADMIN_TOKEN,
            "--timeout",
            "10s",
            "get",
            "cli/retry#1",
        ],
        &[],
    )
    .await;
    expect(&run, 6, "503 with a Retry-After beyond the timeout");
    assert!(run.stderr.contains("unavailable"), "{}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up at once rather than at the timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn delete_missing_ok_and_get_of_a_deleted_environment() {
    let app = TestApp::spawn().await;
    expect(
        &env_cmd(&app, &["delete", "cli/del#never"]).await,
        3,
        "delete of a key that never existed",
    );
    let missing_ok = env_cmd(&app, &["delete", "cli/del#never", "--missing-ok"]).await;
    expect(
        &missing_ok,
        0,
        "delete --missing-ok of a key that never existed",
    );
    assert_eq!(missing_ok.stdout, "");

    expect(&env_cmd(&app, &["create", "cli/del#1"]).await, 0, "create");
    let deleted = env_cmd(&app, &["delete", "cli/del#1", "-o", "json"]).await;
    expect(&deleted, 0, "delete");
    assert_eq!(json_of(&deleted)["state"], "deleted");
    // Deleting again is fine (the API is idempotent), with or without --missing-ok.
    expect(
        &env_cmd(&app, &["delete", "cli/del#1"]).await,
        0,
        "delete again",
    );

    let get = env_cmd(&app, &["get", "cli/del#1"]).await;
    expect(&get, 3, "get of a deleted environment");
    assert_eq!(get.stdout, "", "no password-less URI printed");
    assert!(get.stderr.contains("deleted"), "{}", get.stderr);
    let shown = env_cmd(
        &app,
        &["get", "cli/del#1", "--include-deleted", "-o", "json"],
    )
    .await;
    expect(&shown, 0, "get --include-deleted");
    assert_eq!(json_of(&shown)["state"], "deleted");
}

#[tokio::test]
async fn json_says_whether_create_created() {
    let app = TestApp::spawn().await;
    let first = env_cmd(&app, &["create", "cli/created#1", "-o", "json"]).await;
    expect(&first, 0, "first create");
    let first = json_of(&first);
    assert_eq!(first["created"], true);
    let again = env_cmd(&app, &["create", "cli/created#1", "-o", "json"]).await;
    expect(&again, 0, "second create");
    let again = json_of(&again);
    assert_eq!(again["created"], false);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        again["connection"]["password"],
        first["connection"]["password"]
    );
}

/// `name=value` lines of a $GITHUB_OUTPUT file.
fn github_outputs(path: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').expect("name=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn github_output_appends_outputs_and_masks_first() {
    let app = TestApp::spawn().await;
    let dir = temp_dir();
    let file = dir.path().join("github_output");
    std::fs::write(&file, "earlier=kept\n").unwrap();
    let file_s = file.to_str().unwrap();

    let run = env_cmd_with(
        &app,
        &["create", "cli/gh#1", "-o", "github"],
        &[("GITHUB_OUTPUT", file_s)],
    )
    .await;
    expect(&run, 0, "create -o github");
    let out = github_outputs(&file);
    assert_eq!(out["earlier"], "kept", "appended, not overwritten");
    let password = &out["db_password"];
    let url = &out["db_url"];
    assert!(!password.is_empty() && url.contains(password.as_str()));
    assert_eq!(
        run.stdout,
        format!("::add-mask::{password}\n::add-mask::{url}\n"),
        "the password, then the URI, masked before anything else"
    );
    assert_eq!(out["created"], "true");
    for k in [
        "db_host",
        "db_port",
        "db_name",
        "db_user",
        "id",
        "expires_at",
    ] {
        assert!(!out[k].is_empty(), "{k} empty: {out:?}");
    }
    let (_, env) = app
        .get(&format!("{}?reveal=true", env_path("cli/gh#1")))
        .await;
    assert_eq!(out["id"], env["id"].as_str().unwrap());
    assert_eq!(out["db_port"], env["connection"]["port"].to_string());
    assert_eq!(out["expires_at"], env["expires_at"].as_str().unwrap());
    connect(url).await.expect("db_url logs in");

    // get implies --reveal for -o github; created is false for what was found.
    std::fs::write(&file, "").unwrap();
    let run = env_cmd_with(
        &app,
        &["get", "cli/gh#1", "-o", "github"],
        &[("GITHUB_OUTPUT", file_s)],
    )
    .await;
    expect(&run, 0, "get -o github");
    let again = github_outputs(&file);
    assert_eq!(again["db_password"], *password);
    assert_eq!(again["created"], "false");
}

#[tokio::test]
async fn k8s_secret_carries_a_url_that_logs_in() {
    let app = TestApp::spawn().await;
    let run = env_cmd(
        &app,
        &[
            "create",
            "cli/k8s#1",
            "-o",
            "k8s-secret",
            "--secret-name",
            "preview-db",
            "--namespace",
            "pr-42",
        ],
    )
    .await;
    expect(&run, 0, "create -o k8s-secret");
    let secret = json_of(&run);
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["name"], "preview-db");
    assert_eq!(secret["metadata"]["namespace"], "pr-42");
    let data = secret["stringData"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "DATABASE_URL",
            "PGDATABASE",
            "PGHOST",
            "PGPASSWORD",
            "PGPORT",
            "PGUSER"
        ]
    );
    let url = data["DATABASE_URL"].as_str().unwrap();
    let client = connect(url).await.expect("DATABASE_URL logs in");
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, data["PGUSER"].as_str().unwrap());
    let by_parts = format!(
        "host={} port={} dbname={} user={} password={}",
        data["PGHOST"].as_str().unwrap(),
        data["PGPORT"].as_str().unwrap(),
        data["PGDATABASE"].as_str().unwrap(),
        data["PGUSER"].as_str().unwrap(),
        data["PGPASSWORD"].as_str().unwrap()
    );
    connect(&by_parts).await.expect("the PG* keys log in");

    // Without --namespace the Secret goes where kubectl points; get reveals the password.
    let run = env_cmd(&app, &["get", "cli/k8s#1", "-o", "k8s-secret"]).await;
    expect(&run, 0, "get -o k8s-secret");
    let secret = json_of(&run);
    assert!(secret["metadata"].get("namespace").is_none());
    assert_eq!(secret["metadata"]["name"], "previewdb");
    assert_eq!(secret["stringData"]["DATABASE_URL"], url);
}

#[tokio::test]
async fn migrations_directories_rotate_and_migrate() {
    let app = TestApp::spawn().await;
    let dir = temp_dir();
    // Name order matters: 002 alters what 001 creates.
    std::fs::write(
        dir.path().join("002_note.sql"),
        "ALTER TABLE cli_items ADD COLUMN note text;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("001_items.sql"),
        "CREATE TABLE cli_items (id int PRIMARY KEY);\n",
    )
    .unwrap();
    let run = env_cmd(
        &app,
        &[
            "create",
            "cli/mig#1",
            "--blueprint",
            "",
            "--migrations",
            dir.path().to_str().unwrap(),
        ],
    )
    .await;
    expect(&run, 0, "create --migrations");
    let url = run.stdout.trim().to_owned();
    let client = connect(&url).await.unwrap();
    client
        .batch_execute("INSERT INTO cli_items (id, note) VALUES (1, 'kept')")
        .await
        .expect("both migrations ran, in name order");

    let more = temp_dir();
    std::fs::write(
        more.path().join("003_size.sql"),
        "ALTER TABLE cli_items ADD COLUMN size int;\n",
    )
    .unwrap();
    let run = env_cmd(
        &app,
        &[
            "migrate",
            "cli/mig#1",
            "--migrations",
            more.path().to_str().unwrap(),
            "-o",
            "json",
        ],
    )
    .await;
    expect(&run, 0, "migrate --migrations");
    assert_eq!(json_of(&run)["applied"], 1);
    let note: String = client
        .query_one("SELECT note FROM cli_items WHERE size IS NULL", &[])
        .await
        .expect("the new column, the data kept")
        .get(0);
    assert_eq!(note, "kept");
    drop(client);

    let rotated = env_cmd(&app, &["rotate", "cli/mig#1", "-o", "env"]).await;
    expect(&rotated, 0, "rotate");
    let vars: std::collections::BTreeMap<&str, &str> = rotated
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    let new_url = vars["DATABASE_URL"];
    assert_ne!(new_url, url);
    connect(new_url).await.expect("the new password logs in");
    assert!(connect(&url).await.is_err(), "the old password is refused");
}

#[tokio::test]
async fn completion_scripts_are_printed() {
    for shell in ["bash", "zsh", "fish"] {
        let run = previewdb(&["completion", shell], &[]).await;
        expect(&run, 0, shell);
        assert!(run.stdout.contains("previewdb"), "{shell}: {}", run.stdout);
        assert!(
            run.stdout.contains("missing-ok"),
            "{shell} knows env's flags"
        );
    }
    let run = previewdb(&["completion", "bash"], &[]).await;
    assert!(run.stdout.contains("complete -F"), "{}", run.stdout);
    expect(
        &previewdb(&["completion", "tcsh"], &[]).await,
        2,
        "an unknown shell",
    );
}

/// Runs `previewdb ARGS` with stdout a pipe whose reading end is closed before it starts.
fn run_into_closed_pipe(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("PREVIEWDB_URL")
        .env_remove("PREVIEWDB_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("previewdb runs")
}

#[tokio::test]
async fn a_closed_pipe_ends_the_output_quietly() {
    let app = TestApp::spawn().await;
    expect(&env_cmd(&app, &["create", "cli/pipe#1"]).await, 0, "create");
    let env = [
        ("PREVIEWDB_URL", app.base.as_str()),
        ("PREVIEWDB_TOKEN", ADMIN_TOKEN),
    ];
    for args in [
        &["completion", "bash"][..],
        &["env", "get", "cli/pipe#1", "-o", "json"],
        &["env", "list"],
    ] {
        let (args, env) = (
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            env.map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            (args.join(" "), run_into_closed_pipe(&args, &env))
        })
        .await
        .unwrap();
        let (what, out) = out;
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned()
            ),
            (Some(0), String::new()),
            "{what} into a closed pipe"
        );
    }

    // And as a shell runs it: `… | head -c1`.
    let script =
        format!("set -o pipefail; {BIN:?} completion bash | head -c1 >/dev/null; echo \"$?\"");
    let out = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kubernetes")
        .join(name)
}

#[tokio::test]
async fn kubernetes_hook_pipes_a_secret_into_kubectl() {
    let app = TestApp::spawn().await;
    // kubectl needs a cluster, which this machine has not: a stand-in on PATH records what
    // the script hands it (its arguments and stdin); the Secret it got is then checked here.
    let shim = temp_dir();
    let kubectl = shim.path().join("kubectl");
    std::fs::write(
        &kubectl,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" >\"$SHIM_DIR/args\"\ncat >\"$SHIM_DIR/stdin\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &kubectl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        shim.path().display(),
        bin_dir.display()
    );
    let run_script = |env: Vec<(&'static str, String)>| {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(example("previewdb-secret.sh"))
            .env_clear()
            .env("PATH", &path)
            .env("SHIM_DIR", shim.path())
            .env("PREVIEWDB_URL", &app.base)
            .env("PREVIEWDB_TOKEN", ADMIN_TOKEN)
            .envs(env);
        async move { cmd.output().await.unwrap() }
    };

    let out = run_script(vec![
        ("PREVIEWDB_KEY", "cli/hook#42".into()),
        ("PREVIEWDB_TTL", "2h".into()),
        ("POD_NAMESPACE", "pr-42".into()),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(shim.path().join("args")).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "apply",
            "--server-side",
            "--field-manager=previewdb",
            "--force-conflicts",
            "-f",
            "-"
        ]
    );
    let secret: Value =
        serde_json::from_str(&std::fs::read_to_string(shim.path().join("stdin")).unwrap()).unwrap();
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "preview-db");
    assert_eq!(secret["metadata"]["namespace"], "pr-42");
    let url = secret["stringData"]["DATABASE_URL"].as_str().unwrap();
    connect(url)
        .await
        .expect("the Secret's DATABASE_URL logs in");
    let (_, env) = app.get(&env_path("cli/hook#42")).await;
    assert_eq!(
        secret["metadata"]["annotations"]["previewdb/environment-id"],
        env["id"]
    );

    // A permanent failure: previewdb's exit code, and kubectl got nothing to apply.
    let out = run_script(vec![
        ("PREVIEWDB_KEY", "cli/hook#43".into()),
        ("PREVIEWDB_BLUEPRINT", "no-such-blueprint".into()),
    ])
    .await;
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Secret written"));
    assert_eq!(
        std::fs::read_to_string(shim.path().join("stdin")).unwrap(),
        ""
    );

    let out = run_script(vec![]).await;
    assert!(!out.status.success(), "PREVIEWDB_KEY is required");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PREVIEWDB_KEY"));
}

/// The block scalar under the first `- |` of `yaml`, dedented: a container's shell script.
fn block_script(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "- |").skip(1);
    let first = lines.next().expect("a script under `- |`");
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(
            lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent),
        )
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect()
}

#[tokio::test]
async fn sweep_cronjob_script_sweeps_with_real_curl() {
    let app = TestApp::spawn().await;
    let yaml = std::fs::read_to_string(example("previewdb-sweep-cronjob.yaml")).unwrap();
    let script = block_script(&yaml);
    assert!(script.contains("/v1/sweep"), "{script}");
    let env = app
        .create(serde_json::json!({ "key": "cli/sweep#1", "ttl": "1s" }))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sweep = |token: &'static str| {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", &script])
            .env("PREVIEWDB_URL", &app.base)
            .env("PREVIEWDB_TOKEN", token);
        async move { cmd.output().await.unwrap() }
    };
    let out = sweep(ADMIN_TOKEN).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the sweep's JSON answer");
    assert!(report["deleted"].is_array() && report["failed"].is_array());
    let (_, now) = app
        .get(&format!("/v1/environments/{}", env["id"].as_str().unwrap()))
        .await;
    assert_eq!(now["state"], "deleted", "the expired environment is gone");

    // A token without environments:delete: curl fails (exit 22), the problem in the log.
    let out = sweep(READ_TOKEN).await;
    assert_eq!(out.status.code(), Some(22));
    assert!(String::from_utf8_lossy(&out.stdout).contains("forbidden"));
}
