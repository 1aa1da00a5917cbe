//! Migration formats, each recorded exactly as its own tool records it, so that the
//! application's tool later sees them as applied and runs only new ones: refinery (through the
//! refinery crate), sqlx (through sqlx's run-time `Migrator`) and plain files (previewdb's own
//! `previewdb_migrations` table).

use super::{Item, Mode, Policy, Script, ScriptError};
use crate::bounds::Deadline;
use crate::domain::{MigrationFormat, SourceFile};
use crate::pgconn::PgConnector;
use tokio_postgres::error::SqlState;

/// Where migrations run: a database reached through `server`, which must log in as the role
/// that is to own what they create (see `PgConnector::with_login`) — never an admin login that
/// switches role, which the SQL could switch back.
#[derive(Clone)]
pub struct Session {
    server: PgConnector,
    deadline: Option<Deadline>,
}

impl Session {
    pub fn new(server: PgConnector) -> Self {
        Self {
            server,
            deadline: None,
        }
    }

    /// Every connection's statements and lock waits end before `deadline`: each connection
    /// gets what is left when it is opened (a run opens several, one after another).
    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    fn server(&self) -> PgConnector {
        match &self.deadline {
            None => self.server.clone(),
            Some(d) => {
                let ms = d.statement_timeout_ms();
                self.server
                    .with_setting("statement_timeout", &ms.to_string())
                    .with_setting("lock_timeout", &ms.min(30_000).to_string())
            }
        }
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.server().connect().await
    }

    /// A one-connection pool: `&PgPool` is what sqlx's migrator accepts without tripping the
    /// compiler's higher-ranked `Send` inference, which `&mut PgConnection` does.
    async fn connect_sqlx(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(self.server().sqlx_options())
            .await
    }
}

/// Applies the not-yet-applied files of `files` (all of a blueprint's migrations followed by
/// any new ones) in `format`; earlier ones must match what was recorded. Returns how many ran.
pub async fn apply(
    format: MigrationFormat,
    session: &Session,
    files: &[SourceFile],
) -> Result<usize, ScriptError> {
    if files.is_empty() {
        return Ok(0);
    }
    format
        .check_names(files)
        .map_err(|e| ScriptError::local(&e.file, 0, "", e.reason))?;
    match format {
        MigrationFormat::Refinery => apply_refinery(session, files).await,
        MigrationFormat::Sqlx => apply_sqlx(session, files).await,
        MigrationFormat::Plain => apply_plain(session, files).await,
    }
}

async fn apply_refinery(session: &Session, files: &[SourceFile]) -> Result<usize, ScriptError> {
    let migrations = files
        .iter()
        .map(|f| {
            refinery::Migration::unapplied(f.name.trim_end_matches(".sql"), &f.text)
                .map_err(not_a_statement(&f.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = session
        .connect()
        .await
        .map_err(not_a_statement("(connection)"))?;
    let runner = refinery::Runner::new(&migrations)
        .set_abort_missing(false)
        .set_abort_divergent(true);
    match runner.run_async(&mut client).await {
        Ok(report) => Ok(report.applied_migrations().len()),
        Err(e) => Err(refinery_failure(session, &mut client, files, &e).await),
    }
}

/// What refinery's `error` was, pinned to the failing file and, where replaying finds it, the
/// failing statement.
async fn refinery_failure(
    session: &Session,
    client: &mut tokio_postgres::Client,
    files: &[SourceFile],
    error: &refinery::Error,
) -> ScriptError {
    let source =
        std::error::Error::source(error).and_then(|s| s.downcast_ref::<tokio_postgres::Error>());
    // refinery runs only unapplied migrations, in order; the failing one is the first of
    // those it did not report as applied.
    let failing = failing_file(client, files).await;
    match (source, failing) {
        (Some(err), Some(f)) => locate(session, f, err.code().map(SqlState::code))
            .await
            .unwrap_or_else(|| ScriptError::server(&f.name, 1, &f.text, err)),
        (_, f) => ScriptError::local(
            f.map_or("(migrations)", |f| f.name.as_str()),
            0,
            "",
            error.to_string(),
        ),
    }
}

/// The first file refinery has not recorded.
async fn failing_file<'a>(
    client: &mut tokio_postgres::Client,
    files: &'a [SourceFile],
) -> Option<&'a SourceFile> {
    let rows = client
        .query("SELECT name FROM refinery_schema_history", &[])
        .await
        .ok()?;
    let recorded: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    files.iter().find(|f| {
        let stem = f.name.trim_end_matches(".sql");
        let name = stem.split_once("__").map_or(stem, |(_, n)| n);
        !recorded.iter().any(|r| r == name)
    })
}

async fn apply_sqlx(session: &Session, files: &[SourceFile]) -> Result<usize, ScriptError> {
    // sqlx's run-time Migrator reads a directory: hand it exactly these files.
    let dir = tempfile::tempdir().map_err(not_a_statement("(migrations)"))?;
    for f in files {
        std::fs::write(dir.path().join(&f.name), &f.text).map_err(not_a_statement(&f.name))?;
    }
    let mut migrator = sqlx::migrate::Migrator::new(dir.path())
        .await
        .map_err(not_a_statement("(migrations)"))?;
    migrator.set_ignore_missing(true);
    let pool = session
        .connect_sqlx()
        .await
        .map_err(not_a_statement("(connection)"))?;
    let before = sqlx_applied(&pool).await;
    let outcome = migrator.run(&pool).await;
    let after = sqlx_applied(&pool).await;
    pool.close().await;
    match outcome {
        Ok(()) => Ok(after.saturating_sub(before)),
        Err(sqlx::migrate::MigrateError::ExecuteMigration(err, version)) => {
            Err(sqlx_failure(session, files, &err, version).await)
        }
        Err(e) => Err(not_a_statement("(migrations)")(e)),
    }
}

/// The error `err` of the migration numbered `version`, pinned to its file and, where the
/// server's position or replaying finds it, the failing statement.
async fn sqlx_failure(
    session: &Session,
    files: &[SourceFile],
    err: &sqlx::Error,
    version: i64,
) -> ScriptError {
    let file = files.iter().find(|f| {
        f.name
            .split_once('_')
            .is_some_and(|(v, _)| v.parse() == Ok(version))
    });
    let Some(f) = file else {
        return ScriptError::local(&version.to_string(), 0, "", err.to_string());
    };
    let db = err.as_database_error();
    if let Some(located) = locate(session, f, db.and_then(|d| d.code()).as_deref()).await {
        return located;
    }
    match db.and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()) {
        Some(db) => {
            let pos = match db.position() {
                Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
                _ => None,
            };
            from_server(f, db.code(), db.message(), db.detail(), db.hint(), pos)
        }
        None => ScriptError::local(&f.name, 0, "", err.to_string()),
    }
}

/// A tool that runs a whole file at once reports no line unless the server gives a position.
/// Replaying the file statement by statement in a transaction that is always rolled back finds
/// the failing statement and its line. Files that cannot run in a transaction are not replayed,
/// nor is one whose run was cut short by its deadline (`sqlstate` 57014): it would only be cut
/// short again.
async fn locate(
    session: &Session,
    file: &SourceFile,
    sqlstate: Option<&str>,
) -> Option<ScriptError> {
    if sqlstate == Some(SqlState::QUERY_CANCELED.code()) {
        return None;
    }
    let script = Script::parse(&file.name, &file.text).ok()?;
    if script.has_non_transactional() {
        return None;
    }
    let client = session.connect().await.ok()?;
    client.batch_execute("BEGIN").await.ok()?;
    let mut found = None;
    for item in &script.items {
        if let Item::Statement { sql, line } = item {
            if let Err(e) = client.batch_execute(sql).await {
                found = Some(ScriptError::server(&file.name, *line, sql, &e));
                break;
            }
        }
    }
    let _ = client.batch_execute("ROLLBACK").await;
    found
}

/// An error of the tool, the connection or the history table rather than of a statement: it
/// names `place` and no line.
fn not_a_statement<E: std::fmt::Display>(place: &str) -> impl FnOnce(E) -> ScriptError + '_ {
    move |e| ScriptError::local(place, 0, "", e.to_string())
}

async fn sqlx_applied(pool: &sqlx::PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_or(0, |n| n as usize)
}

const PLAIN_HISTORY: &str = "CREATE TABLE IF NOT EXISTS previewdb_migrations (\
    name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())";

async fn apply_plain(session: &Session, files: &[SourceFile]) -> Result<usize, ScriptError> {
    let recorded = plain_history(session).await?;
    let mut ran = 0;
    for f in files {
        let checksum = checksum(&f.text);
        match recorded.get(&f.name) {
            Some(c) if *c == checksum => continue,
            Some(_) => {
                return Err(ScriptError::local(
                    &f.name,
                    0,
                    "",
                    "was applied before with different contents".into(),
                ));
            }
            None => {}
        }
        // Each file runs on a connection of its own: scripts may change session settings.
        let client = session.connect().await.map_err(not_a_statement(&f.name))?;
        let script = recording_script(f, &checksum)?;
        super::run(&client, &script, Mode::Transaction, &Policy::default()).await?;
        ran += 1;
    }
    Ok(ran)
}

/// The checksum of every file recorded as applied, by name; the table is made on first use.
async fn plain_history(
    session: &Session,
) -> Result<std::collections::HashMap<String, String>, ScriptError> {
    let client = session
        .connect()
        .await
        .map_err(not_a_statement("(connection)"))?;
    client
        .batch_execute(PLAIN_HISTORY)
        .await
        .map_err(not_a_statement("previewdb_migrations"))?;
    let rows = client
        .query("SELECT name, checksum FROM previewdb_migrations", &[])
        .await
        .map_err(not_a_statement("previewdb_migrations"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The script of `f`, followed by the statement that records it, so that both happen in the
/// same transaction.
fn recording_script(f: &SourceFile, checksum: &str) -> Result<Script, ScriptError> {
    let mut script = Script::parse(&f.name, &f.text)?;
    let line = script.items.last().map_or(1, super::item_line);
    script.items.push(Item::Statement {
        sql: format!(
            "INSERT INTO previewdb_migrations (name, checksum) VALUES ({}, {})",
            postgres_protocol::escape::escape_literal(&f.name),
            postgres_protocol::escape::escape_literal(checksum)
        ),
        line,
    });
    Ok(script)
}

fn checksum(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A server error inside a whole file that its tool ran: the position (1-based, in
/// characters) gives the line.
fn from_server(
    f: &SourceFile,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
    position: Option<usize>,
) -> ScriptError {
    let (line, excerpt) = match position {
        Some(p) => {
            let before: String = f.text.chars().take(p.saturating_sub(1)).collect();
            let line = before.matches('\n').count() + 1;
            (
                line,
                f.text.lines().nth(line - 1).unwrap_or("").trim().to_owned(),
            )
        }
        None => (0, String::new()),
    };
    ScriptError {
        file: f.name.clone(),
        line,
        statement: excerpt,
        sqlstate: Some(code.to_owned()),
        message: message.to_owned(),
        detail: detail.map(str::to_owned),
        hint: hint.map(str::to_owned),
        context: None,
    }
}
