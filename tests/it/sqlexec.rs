//! The SQL file executor against a real PostgreSQL: pg_dump round trips, located errors,
//! tolerated ownership statements, meta-commands, non-transactional statements and CSV COPY.

use crate::support::cluster;
use previewdb::embedded::{EmbeddedPostgres, ADMIN_USER};
use previewdb::sqlexec::{self, Item, Mode, Policy, RunReport, Script, ScriptError};
use std::path::{Path, PathBuf};
use tokio_postgres::{Client, NoTls};

/// A session on the shared cluster, whose `t_…` scratch databases are these tests' own (previewdb
/// names its own `pdb_…`). Each `#[tokio::test]` has its own runtime, so only the server is
/// shared, never a client.
async fn connect(database: &str) -> Client {
    let url = cluster().await.postgres.admin_url(database);
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A new, empty database, and a dedicated connection to it.
async fn scratch_db(name: &str) -> Client {
    connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    connect(name).await
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sqlexec")
        .join(name)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).expect("read fixture")
}

fn parse_fixture(name: &str) -> Script {
    Script::parse(name, &fixture(name)).expect("parse fixture")
}

async fn run(
    client: &Client,
    script: &Script,
    mode: Mode,
    tolerate_missing_roles: bool,
) -> Result<RunReport, ScriptError> {
    sqlexec::run(
        client,
        script,
        mode,
        &Policy {
            tolerate_missing_roles,
        },
    )
    .await
}

async fn pg_dump(database: &str, options: &[&str]) -> String {
    let cluster = cluster().await;
    let pg = &cluster.postgres;
    let bin = EmbeddedPostgres::find_bin_dir()
        .expect("PostgreSQL bin dir")
        .join("pg_dump");
    let output = std::process::Command::new(bin)
        .arg("-h")
        .arg(pg.socket_dir())
        .args([
            "-p",
            &pg.port().to_string(),
            "-U",
            ADMIN_USER,
            "--no-password",
        ])
        .args(options)
        .arg(database)
        .output()
        .expect("run pg_dump");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 dump")
}

/// A dump without its `\restrict` lines, whose key is random per run.
fn without_restrict(dump: &str) -> String {
    dump.lines()
        .filter(|line| !line.starts_with("\\restrict ") && !line.starts_with("\\unrestrict "))
        .map(|line| format!("{line}\n"))
        .collect()
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

async fn exists(client: &Client, relation: &str) -> bool {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
        .await
        .expect("to_regclass");
    row.get(0)
}

const ROUND_TRIP_TABLES: [&str; 6] = [
    "public.person",
    "public.event",
    "public.event_2024",
    "public.event_2025",
    "public.audit",
    "public.mood_counts",
];

async fn source_db(name: &str) -> String {
    scratch_db(name)
        .await
        .batch_execute(&fixture("source.sql"))
        .await
        .expect("load source fixture");
    pg_dump(name, &[]).await
}

#[tokio::test]
async fn pg_dump_output_round_trips() {
    let dump = source_db("t_dump_source").await;
    // The dump must exercise what plain splitting on `;` gets wrong.
    for needle in [
        "COPY public.person (",
        "BEGIN ATOMIC",
        "DO ( INSERT",
        "$$;",
        "ATTACH PARTITION",
    ] {
        assert!(dump.contains(needle), "dump lacks {needle}:\n{dump}");
    }
    let script = Script::parse("source.sql", &dump).expect("parse dump");
    let target = scratch_db("t_dump_target").await;
    let report = run(&target, &script, Mode::Transaction, false)
        .await
        .expect("load dump");

    assert_eq!(report.mode, Mode::Transaction);
    assert_eq!(report.warnings, Vec::<String>::new());
    let copies = script
        .items
        .iter()
        .filter(|item| matches!(item, Item::Copy { .. }))
        .count();
    let statements = script
        .items
        .iter()
        .filter(|item| matches!(item, Item::Statement { .. }))
        .count();
    assert_eq!(report.statements, statements + copies);
    for options in [&["--schema-only"][..], &["--data-only"][..]] {
        assert_eq!(
            without_restrict(&pg_dump("t_dump_source", options).await),
            without_restrict(&pg_dump("t_dump_target", options).await),
            "pg_dump {options:?} differs"
        );
    }
    // The dump emptied search_path on `target`: check on fresh connections.
    let (source, target) = (
        connect("t_dump_source").await,
        connect("t_dump_target").await,
    );
    for table in ROUND_TRIP_TABLES {
        assert_eq!(
            count(&source, table).await,
            count(&target, table).await,
            "{table}"
        );
    }
    let copied = count(&source, "public.person").await
        + count(&source, "public.event").await
        + count(&source, "public.audit").await;
    assert_eq!(report.copied_rows, copied as u64);
}

#[tokio::test]
async fn dump_with_restrict_lines_loads() {
    let dump = without_restrict(&source_db("t_restrict_source").await);
    let text = format!("\\restrict abc\n{dump}\\unrestrict abc\n");
    let script = Script::parse("restricted.sql", &text).expect("parse");
    assert!(
        matches!(&script.items[0], Item::Meta { command, args, line: 1 } if command == "restrict" && args == "abc")
    );

    let target = scratch_db("t_restrict_target").await;
    run(&target, &script, Mode::Autocommit, false)
        .await
        .expect("load");
    let (source, target) = (
        connect("t_restrict_source").await,
        connect("t_restrict_target").await,
    );
    for table in ROUND_TRIP_TABLES {
        assert_eq!(
            count(&source, table).await,
            count(&target, table).await,
            "{table}"
        );
    }
}

#[tokio::test]
async fn failure_names_file_line_statement_and_server_message() {
    let script = parse_fixture("failing.sql");
    let client = scratch_db("t_failing").await;
    let err = run(&client, &script, Mode::Transaction, false)
        .await
        .expect_err("line 7 fails");

    assert_eq!(err.file, "failing.sql");
    assert_eq!(err.line, 7, "the line of the server's error position");
    assert_eq!(err.sqlstate.as_deref(), Some("22P02"));
    assert_eq!(
        err.message,
        "invalid input syntax for type integer: \"three\""
    );
    assert_eq!(
        err.statement,
        "INSERT INTO gadget VALUES (2, 'two'), ('three', 'x')"
    );
    assert!(
        err.to_string().starts_with(
            "failing.sql:7: invalid input syntax for type integer: \"three\" (SQLSTATE 22P02)\n  statement: INSERT INTO gadget"
        ),
        "{err}"
    );
    assert!(
        !exists(&client, "gadget").await,
        "the transaction was rolled back"
    );
}

#[tokio::test]
async fn autocommit_keeps_what_ran_before_the_failure() {
    let script = parse_fixture("failing.sql");
    let client = scratch_db("t_failing_autocommit").await;
    let err = run(&client, &script, Mode::Autocommit, false)
        .await
        .expect_err("line 7 fails");
    assert_eq!(err.line, 7);
    assert_eq!(count(&client, "gadget").await, 1);
}

#[tokio::test]
async fn copy_errors_point_at_the_data_row() {
    let script = parse_fixture("bad_copy.sql");
    let client = scratch_db("t_bad_copy").await;
    let err = run(&client, &script, Mode::Transaction, false)
        .await
        .expect_err("row 3 is bad");

    assert_eq!((err.file.as_str(), err.line), ("bad_copy.sql", 5));
    assert_eq!(err.sqlstate.as_deref(), Some("22P02"));
    assert_eq!(
        err.message,
        "invalid input syntax for type integer: \"three\""
    );
    assert!(
        err.context.as_deref().is_some_and(|c| c.contains("line 3")),
        "{err}"
    );
}

#[tokio::test]
async fn missing_roles_are_tolerated_only_when_asked() {
    let script = parse_fixture("ownership.sql");
    for mode in [Mode::Transaction, Mode::Autocommit] {
        let db = format!("t_roles_tolerated_{mode:?}").to_lowercase();
        let client = scratch_db(&db).await;
        let report = run(&client, &script, mode, true)
            .await
            .expect("ownership skipped");
        assert_eq!(
            report.warnings,
            vec![
                "ownership.sql:2: skipped `ALTER TABLE owned OWNER TO nosuchrole`: role \"nosuchrole\" does not exist",
                "ownership.sql:3: skipped `GRANT SELECT ON TABLE owned TO nosuchrole`: role \"nosuchrole\" does not exist",
            ],
            "{mode:?}"
        );
        assert_eq!(report.statements, 2);
        assert_eq!(
            count(&client, "owned").await,
            1,
            "{mode:?}: the statements after the skipped ones ran"
        );
    }

    let client = scratch_db("t_roles_strict").await;
    let err = run(&client, &script, Mode::Transaction, false)
        .await
        .expect_err("missing role");
    assert_eq!((err.line, err.sqlstate.as_deref()), (2, Some("42704")));
    assert_eq!(err.message, "role \"nosuchrole\" does not exist");
    assert!(!exists(&client, "owned").await);
}

#[tokio::test]
async fn tolerance_does_not_hide_other_errors() {
    let script = Script::parse(
        "other.sql",
        "CREATE TABLE t (id int);\nGRANT SELECT ON nosuchtable TO PUBLIC;\n",
    )
    .expect("parse");
    let client = scratch_db("t_roles_other_error").await;
    let err = run(&client, &script, Mode::Transaction, true)
        .await
        .expect_err("missing table");
    assert_eq!((err.line, err.sqlstate.as_deref()), (2, Some("42P01")));
}

#[tokio::test]
async fn connect_meta_command_is_rejected_with_its_line() {
    let err = Script::parse("connect.sql", &fixture("connect.sql")).expect_err("\\connect");
    assert_eq!(
        (err.file.as_str(), err.line, err.sqlstate.clone()),
        ("connect.sql", 3, None)
    );
    assert_eq!(
        err.message,
        "psql meta-command \\connect at line 3 is not supported"
    );
    assert_eq!(err.statement, "\\connect other_database");

    // A script built without `parse` is checked before anything runs.
    let script = Script {
        file: "connect.sql".into(),
        items: sqlexec::lexer::split(&fixture("connect.sql")).expect("split"),
    };
    let client = scratch_db("t_connect").await;
    let err = run(&client, &script, Mode::Autocommit, false)
        .await
        .expect_err("\\connect");
    assert_eq!(err.line, 3);
    assert!(!exists(&client, "before_connect").await);
}

#[tokio::test]
async fn non_transactional_statements_run_in_autocommit() {
    let script = parse_fixture("concurrently.sql");
    assert!(script.has_non_transactional());
    let client = scratch_db("t_concurrently").await;
    let report = run(&client, &script, Mode::Transaction, false)
        .await
        .expect("run");

    assert_eq!(report.mode, Mode::Autocommit);
    assert_eq!(report.warnings.len(), 1);
    assert!(
        report.warnings[0].contains("line 3 cannot run inside a transaction block"),
        "{:?}",
        report.warnings
    );
    assert!(exists(&client, "big_id_idx").await);

    let transactional = Script::parse(
        "plain.sql",
        "CREATE TABLE t (id int);\nCREATE INDEX t_idx ON t (id);",
    )
    .expect("parse");
    assert!(!transactional.has_non_transactional());
    let report = run(&client, &transactional, Mode::Transaction, false)
        .await
        .expect("run");
    assert_eq!(report.mode, Mode::Transaction);
}

async fn contact_table(database: &str) -> Client {
    let client = scratch_db(database).await;
    client
        .batch_execute("CREATE TABLE contact (id integer PRIMARY KEY, name text, bio text)")
        .await
        .expect("table");
    client
}

#[tokio::test]
async fn copy_csv_loads_quotes_commas_and_newlines() {
    let client = contact_table("t_csv").await;
    let data = std::fs::read(fixture_path("contacts.csv")).expect("read csv");
    let rows = sqlexec::copy_csv(&client, "contacts.csv", "public.contact", &data)
        .await
        .expect("copy");
    assert_eq!(rows, 3);

    let rows = client
        .query("SELECT id, name, bio FROM contact ORDER BY id", &[])
        .await
        .expect("select");
    let got: Vec<(i32, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Some("Smith, Ann".into()), Some("said \"hi\"".into())),
            (2, Some("Bob".into()), Some("line one\nline two".into())),
            (3, None, Some(String::new())),
        ]
    );
}

#[tokio::test]
async fn copy_csv_bad_row_names_file_and_line() {
    let client = contact_table("t_csv_bad").await;
    let data = std::fs::read(fixture_path("contacts_bad.csv")).expect("read csv");
    let err = sqlexec::copy_csv(&client, "contacts_bad.csv", "public.contact", &data)
        .await
        .expect_err("bad id");

    // The bad record is the third, on the fourth line: the second spans two lines.
    assert_eq!((err.file.as_str(), err.line), ("contacts_bad.csv", 4));
    assert_eq!(err.sqlstate.as_deref(), Some("22P02"));
    assert_eq!(err.message, "invalid input syntax for type integer: \"x2\"");
    assert!(
        err.to_string()
            .starts_with("contacts_bad.csv:4: invalid input syntax"),
        "{err}"
    );
    assert!(
        err.context.as_deref().is_some_and(|c| c.contains("line 4")),
        "{err}"
    );
    assert_eq!(count(&client, "contact").await, 0);
}
