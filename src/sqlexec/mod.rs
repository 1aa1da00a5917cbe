//! Runs SQL files — plain `pg_dump` output, migrations, seeds — over a tokio-postgres client
//! without psql, one statement at a time, so that every failure names its file, line, statement
//! and what the server said.

// ScriptError carries every field the server reports, by design; it is built once per failed
// script, so its size costs nothing that matters.
#![allow(clippy::result_large_err)]

pub mod lexer;
pub mod migrations;

pub use lexer::{Item, LexError};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::Client;

/// Characters of a statement quoted in errors and warnings.
const EXCERPT_CHARS: usize = 160;
/// COPY data goes out in pieces: the server caps a single protocol message at 1 GB.
const COPY_CHUNK_BYTES: usize = 1 << 20;
const SAVEPOINT: &str = "previewdb_sqlexec_tolerated";
/// SQLSTATEs of a missing role (undefined_object) and of a missing privilege.
const TOLERATED_CODES: [&str; 2] = ["42704", "42501"];

/// A parsed SQL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub file: String,
    pub items: Vec<Item>,
}

impl Script {
    /// Splits `text`, rejecting unterminated quotes, comments and COPY data, and psql
    /// meta-commands other than `\restrict` / `\unrestrict`.
    pub fn parse(file: &str, text: &str) -> Result<Script, ScriptError> {
        let items =
            lexer::split(text).map_err(|e| ScriptError::local(file, e.line, "", e.message))?;
        let script = Script {
            file: file.to_string(),
            items,
        };
        script.check_meta_commands()?;
        Ok(script)
    }

    /// True when some statement cannot run inside a transaction block.
    pub fn has_non_transactional(&self) -> bool {
        self.first_statement_where(cannot_run_in_transaction)
            .is_some()
    }

    /// Why a transaction around the whole script would not work, if it would not.
    fn autocommit_reason(&self) -> Option<String> {
        if let Some(line) = self.first_statement_where(cannot_run_in_transaction) {
            return Some(format!(
                "the statement at line {line} cannot run inside a transaction block"
            ));
        }
        // Its own COMMIT would end ours half-way and silently give up atomicity.
        self.first_statement_where(controls_transaction)
            .map(|line| format!("the statement at line {line} controls transactions itself"))
    }

    fn first_statement_where(&self, test: fn(&[&str]) -> bool) -> Option<usize> {
        self.items.iter().find_map(|item| match item {
            Item::Statement { sql, line } if words_match(sql, test) => Some(*line),
            _ => None,
        })
    }

    fn check_meta_commands(&self) -> Result<(), ScriptError> {
        for item in &self.items {
            if let Item::Meta {
                command,
                args,
                line,
            } = item
            {
                if !matches!(command.as_str(), "restrict" | "unrestrict") {
                    let message =
                        format!("psql meta-command \\{command} at line {line} is not supported");
                    let statement = format!("\\{command} {args}");
                    return Err(ScriptError::local(
                        &self.file,
                        *line,
                        statement.trim_end(),
                        message,
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every statement commits on its own.
    Autocommit,
    /// BEGIN … COMMIT around the whole script, ROLLBACK on error.
    Transaction,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Skip ownership, privilege and public-schema/extension comment statements that fail for a
    /// missing role or privilege: a dump taken elsewhere names roles this cluster lacks.
    pub tolerate_missing_roles: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Statements that ran, COPYs included, skipped ones not.
    pub statements: usize,
    pub copied_rows: u64,
    pub warnings: Vec<String>,
    /// The mode the script actually ran in: a Transaction request falls back to Autocommit
    /// when the script cannot run in one (a warning says why).
    pub mode: Mode,
}

/// A failure, located in its file. `statement` is empty when the error is not about one
/// statement (a lexical error); `sqlstate` is `None` when the server did not report the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ScriptError {
    pub file: String,
    /// 1-based; where the server gives an error position, the line of that position.
    pub line: usize,
    /// An excerpt: the statement's first characters, whitespace collapsed.
    pub statement: String,
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The server's CONTEXT (where in a function or COPY input the error arose).
    pub context: Option<String>,
}

impl ScriptError {
    pub(crate) fn local(file: &str, line: usize, statement: &str, message: String) -> Self {
        Self {
            file: file.to_string(),
            line,
            statement: excerpt(statement),
            sqlstate: None,
            message,
            detail: None,
            hint: None,
            context: None,
        }
    }

    /// An error the server (or the connection) reported for `sql`, which starts at `line`.
    pub(crate) fn server(
        file: &str,
        line: usize,
        sql: &str,
        error: &tokio_postgres::Error,
    ) -> Self {
        let Some(db) = error.as_db_error() else {
            return Self::local(file, line, sql, error.to_string());
        };
        let offset = match db.position() {
            Some(ErrorPosition::Original(position)) => newlines_before(sql, *position),
            _ => 0,
        };
        Self {
            sqlstate: Some(db.code().code().to_string()),
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
            context: db.where_().map(str::to_string),
            ..Self::local(file, line + offset, sql, db.message().to_string())
        }
    }

    /// The 1-based input line of a failed COPY, from a context like `COPY t, line 3, column a: …`.
    fn copy_input_line(&self) -> Option<usize> {
        let context = self.context.as_deref()?;
        let rest = &context[context.find(", line ")? + ", line ".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    fn render(&self) -> String {
        let mut text = format!("{}:{}: {}", self.file, self.line, self.message);
        if let Some(code) = &self.sqlstate {
            text += &format!(" (SQLSTATE {code})");
        }
        if !self.statement.is_empty() {
            text += &format!("\n  statement: {}", self.statement);
        }
        for (label, value) in [
            ("detail", &self.detail),
            ("hint", &self.hint),
            ("context", &self.context),
        ] {
            if let Some(value) = value {
                text += &format!("\n  {label}: {value}");
            }
        }
        text
    }
}

/// Runs `script` on `client`.
///
/// Dumps change session settings (`SET …`, an empty `search_path`), so `client` must be a
/// dedicated connection that is closed afterwards, never a pooled one handed back to others.
pub async fn run(
    client: &Client,
    script: &Script,
    mode: Mode,
    policy: &Policy,
) -> Result<RunReport, ScriptError> {
    script.check_meta_commands()?;
    let mut runner = Runner {
        client,
        script,
        policy,
        report: RunReport {
            statements: 0,
            copied_rows: 0,
            warnings: Vec::new(),
            mode,
        },
    };
    if mode == Mode::Transaction {
        if let Some(reason) = script.autocommit_reason() {
            runner.report.mode = Mode::Autocommit;
            runner.report.warnings.push(format!(
                "{}: ran without a transaction: {reason}",
                script.file
            ));
        }
    }
    match runner.report.mode {
        Mode::Autocommit => runner.run_items().await?,
        Mode::Transaction => runner.run_in_transaction().await?,
    }
    Ok(runner.report)
}

/// COPYs CSV `data` with a header line into `quoted_table`, an identifier the caller has
/// already validated and quoted. Returns the number of rows.
pub async fn copy_csv(
    client: &Client,
    file: &str,
    quoted_table: &str,
    data: &[u8],
) -> Result<u64, ScriptError> {
    let sql = format!("COPY {quoted_table} FROM STDIN WITH (FORMAT csv, HEADER true)");
    copy_in(client, &sql, Bytes::copy_from_slice(data))
        .await
        .map_err(|e| {
            let mut error = ScriptError::server(file, 1, &sql, &e);
            // The server counts physical lines, newlines inside quoted fields included.
            if let Some(line) = error.copy_input_line() {
                error.line = line;
            }
            error
        })
}

struct Runner<'a> {
    client: &'a Client,
    script: &'a Script,
    policy: &'a Policy,
    report: RunReport,
}

impl Runner<'_> {
    async fn run_in_transaction(&mut self) -> Result<(), ScriptError> {
        let last_line = self.script.items.last().map_or(1, item_line);
        self.control("BEGIN", 1).await?;
        let outcome = self.run_items().await;
        if outcome.is_err() {
            // The error being reported matters more than a failed rollback, and closing the
            // dedicated connection discards the transaction anyway.
            if let Err(e) = self.client.batch_execute("ROLLBACK").await {
                tracing::debug!(file = %self.script.file, error = %e, "rollback after a script error failed");
            }
            return outcome;
        }
        self.control("COMMIT", last_line).await
    }

    async fn run_items(&mut self) -> Result<(), ScriptError> {
        for item in &self.script.items {
            match item {
                Item::Statement { sql, line } => self.statement(sql, *line).await?,
                Item::Copy { sql, data, line } => self.copy(sql, data, *line).await?,
                // check_meta_commands let only \restrict and \unrestrict through; they guard
                // psql against meta-commands hidden in data and mean nothing here.
                Item::Meta { .. } => {}
            }
        }
        Ok(())
    }

    async fn statement(&mut self, sql: &str, line: usize) -> Result<(), ScriptError> {
        tracing::debug!(file = %self.script.file, line, statement = %excerpt(sql), "executing");
        if self.policy.tolerate_missing_roles && words_match(sql, is_privilege_statement) {
            return self.tolerant_statement(sql, line).await;
        }
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.error(line, sql, &e))?;
        self.report.statements += 1;
        Ok(())
    }

    /// Runs a statement whose failure for a missing role or privilege is only a warning; in a
    /// transaction a savepoint keeps that failure from aborting the whole transaction.
    async fn tolerant_statement(&mut self, sql: &str, line: usize) -> Result<(), ScriptError> {
        let guarded = self.report.mode == Mode::Transaction;
        if guarded {
            self.control(&format!("SAVEPOINT {SAVEPOINT}"), line)
                .await?;
        }
        let outcome = self.client.batch_execute(sql).await;
        let tolerated = outcome
            .as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .filter(|db| TOLERATED_CODES.contains(&db.code().code()));
        if let Some(db) = tolerated {
            let warning = format!(
                "{}:{line}: skipped `{}`: {}",
                self.script.file,
                excerpt(sql),
                db.message()
            );
            if guarded {
                self.control(
                    &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"),
                    line,
                )
                .await?;
            }
            self.report.warnings.push(warning);
            return Ok(());
        }
        outcome.map_err(|e| self.error(line, sql, &e))?;
        if guarded {
            self.control(&format!("RELEASE SAVEPOINT {SAVEPOINT}"), line)
                .await?;
        }
        self.report.statements += 1;
        Ok(())
    }

    async fn copy(&mut self, sql: &str, data: &str, line: usize) -> Result<(), ScriptError> {
        tracing::debug!(file = %self.script.file, line, statement = %excerpt(sql), "copying");
        let rows = copy_in(self.client, sql, Bytes::from(data.to_string()))
            .await
            .map_err(|e| {
                let mut error = self.error(line, sql, &e);
                if let Some(row) = error.copy_input_line() {
                    // Text-format COPY data has one row per line, starting after the COPY line.
                    let first_data_line = line + sql.matches('\n').count() + 1;
                    error.line = first_data_line + row - 1;
                }
                error
            })?;
        self.report.statements += 1;
        self.report.copied_rows += rows;
        Ok(())
    }

    /// Runs a statement of our own (transaction control), blamed on the script's `line`.
    async fn control(&self, sql: &str, line: usize) -> Result<(), ScriptError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.error(line, sql, &e))
    }

    fn error(&self, line: usize, sql: &str, error: &tokio_postgres::Error) -> ScriptError {
        ScriptError::server(&self.script.file, line, sql, error)
    }
}

async fn copy_in(client: &Client, sql: &str, data: Bytes) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<str, Bytes>(sql).await?;
    let mut sink = std::pin::pin!(sink);
    let mut offset = 0;
    while offset < data.len() {
        let end = data.len().min(offset + COPY_CHUNK_BYTES);
        sink.feed(data.slice(offset..end)).await?;
        offset = end;
    }
    sink.as_mut().finish().await
}

fn item_line(item: &Item) -> usize {
    match item {
        Item::Statement { line, .. } | Item::Copy { line, .. } | Item::Meta { line, .. } => *line,
    }
}

/// How many line breaks precede the 1-based character `position` of `sql`.
fn newlines_before(sql: &str, position: u32) -> usize {
    let preceding = (position as usize).saturating_sub(1);
    sql.chars().take(preceding).filter(|&c| c == '\n').count()
}

fn excerpt(sql: &str) -> String {
    let collapsed = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

fn words_match(sql: &str, test: fn(&[&str]) -> bool) -> bool {
    let words = lexer::words(sql);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    test(&words)
}

/// Statements PostgreSQL refuses inside a transaction block.
fn cannot_run_in_transaction(words: &[&str]) -> bool {
    match words {
        ["CREATE" | "DROP", "DATABASE" | "TABLESPACE", ..] => true,
        ["CREATE", "INDEX", "CONCURRENTLY", ..]
        | ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", ..]
        | ["DROP", "INDEX", "CONCURRENTLY", ..] => true,
        ["REINDEX", rest @ ..] => rest
            .iter()
            .any(|w| matches!(*w, "CONCURRENTLY" | "SYSTEM" | "DATABASE")),
        ["ALTER", "TABLE", .., "DETACH", "PARTITION", _, "CONCURRENTLY"] => true,
        ["ALTER", "DATABASE", _, "SET", "TABLESPACE", ..] => true,
        ["VACUUM", ..] | ["ALTER", "SYSTEM", ..] => true,
        // Only the argument-less form (all clustered tables) refuses a transaction block.
        ["CLUSTER", rest @ ..] => rest.iter().all(|w| matches!(*w, "VERBOSE" | "(" | ")")),
        _ => false,
    }
}

/// Transaction control other than savepoints, which nest harmlessly inside our transaction.
fn controls_transaction(words: &[&str]) -> bool {
    match words {
        ["BEGIN" | "START" | "COMMIT" | "END" | "ABORT", ..] => true,
        ["PREPARE", "TRANSACTION", ..] => true,
        ["ROLLBACK", rest @ ..] => !rest.contains(&"TO"),
        _ => false,
    }
}

/// Statements that fail when a dump names roles this cluster lacks, or assume ownership of
/// objects that come with every database.
fn is_privilege_statement(words: &[&str]) -> bool {
    match words {
        ["GRANT" | "REVOKE", ..] => true,
        ["ALTER", "DEFAULT", "PRIVILEGES", ..] => true,
        // Not `RENAME [COLUMN] owner TO x`.
        ["ALTER", .., before, "OWNER", "TO", _] => {
            !matches!(*before, "RENAME" | "COLUMN" | "CONSTRAINT" | "ATTRIBUTE")
        }
        ["COMMENT", "ON", "EXTENSION", ..] => true,
        ["COMMENT", "ON", "SCHEMA", schema, ..] => matches!(*schema, "PUBLIC" | "\"public\""),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(sql: &str, test: fn(&[&str]) -> bool) -> bool {
        words_match(sql, test)
    }

    #[test]
    fn non_transactional_statements() {
        for sql in [
            "CREATE DATABASE x",
            "drop tablespace t",
            "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
            "DROP INDEX CONCURRENTLY IF EXISTS i",
            "REINDEX (VERBOSE) TABLE CONCURRENTLY t",
            "VACUUM (ANALYZE) t",
            "ALTER SYSTEM SET work_mem = '8MB'",
            "CLUSTER VERBOSE",
            "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
        ] {
            assert!(classify(sql, cannot_run_in_transaction), "{sql}");
        }
        for sql in [
            "CREATE INDEX i ON t (a)",
            "CLUSTER t USING i",
            "CREATE TABLE database (a int)",
            "COMMENT ON TABLE t IS 'VACUUM'",
        ] {
            assert!(!classify(sql, cannot_run_in_transaction), "{sql}");
        }
    }

    #[test]
    fn transaction_control() {
        for sql in [
            "BEGIN",
            "start transaction",
            "COMMIT",
            "END",
            "ROLLBACK",
            "ROLLBACK PREPARED 'x'",
        ] {
            assert!(classify(sql, controls_transaction), "{sql}");
        }
        for sql in [
            "SAVEPOINT s",
            "ROLLBACK TO SAVEPOINT s",
            "RELEASE s",
            "SELECT 'BEGIN'",
        ] {
            assert!(!classify(sql, controls_transaction), "{sql}");
        }
    }

    #[test]
    fn privilege_statements() {
        for sql in [
            "ALTER TABLE public.t OWNER TO bob",
            "ALTER FUNCTION public.f(integer) OWNER TO \"Bob\"",
            "GRANT SELECT ON TABLE t TO bob",
            "REVOKE ALL ON SCHEMA public FROM PUBLIC",
            "ALTER DEFAULT PRIVILEGES FOR ROLE bob GRANT SELECT ON TABLES TO alice",
            "COMMENT ON EXTENSION plpgsql IS 'PL/pgSQL procedural language'",
            "COMMENT ON SCHEMA public IS 'standard public schema'",
        ] {
            assert!(classify(sql, is_privilege_statement), "{sql}");
        }
        for sql in [
            "ALTER TABLE t RENAME COLUMN owner TO holder",
            "COMMENT ON SCHEMA app IS 'x'",
            "COMMENT ON TABLE t IS 'GRANT'",
            "CREATE TABLE grant_log (a int)",
        ] {
            assert!(!classify(sql, is_privilege_statement), "{sql}");
        }
    }

    #[test]
    fn parse_rejects_unknown_meta_commands_with_their_line() {
        let err = Script::parse("seed.sql", "SELECT 1;\n\\set x 1\n").unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("seed.sql", 2));
        assert_eq!(
            err.message,
            "psql meta-command \\set at line 2 is not supported"
        );
        assert!(Script::parse("dump.sql", "\\restrict k\nSELECT 1;\n\\unrestrict k\n").is_ok());
    }

    #[test]
    fn parse_reports_lex_errors_with_the_file() {
        let err = Script::parse("m.sql", "SELECT 1;\nSELECT 'oops;\n").unwrap_err();
        assert_eq!(
            (err.file.as_str(), err.line, err.sqlstate.clone()),
            ("m.sql", 2, None)
        );
        assert!(
            err.to_string()
                .starts_with("m.sql:2: unterminated string literal"),
            "{err}"
        );
    }

    #[test]
    fn error_positions_map_to_lines() {
        assert_eq!(newlines_before("SELECT\n  1,\n  x", 16), 2);
        assert_eq!(newlines_before("SELECT x", 8), 0);
        // Positions count characters, not bytes.
        assert_eq!(newlines_before("SELECT 'é',\n'ü'\n, y", 17), 2);
    }

    #[test]
    fn excerpts_collapse_whitespace_and_cut_long_statements() {
        assert_eq!(excerpt("SELECT\n   1,\t2"), "SELECT 1, 2");
        let long = format!("SELECT '{}'", "é".repeat(300));
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn display_omits_absent_parts() {
        let mut err = ScriptError::local("a.sql", 3, "SELECT  1", "boom".into());
        assert_eq!(err.to_string(), "a.sql:3: boom\n  statement: SELECT 1");
        err.sqlstate = Some("22P02".into());
        err.hint = Some("try again".into());
        assert_eq!(
            err.to_string(),
            "a.sql:3: boom (SQLSTATE 22P02)\n  statement: SELECT 1\n  hint: try again"
        );
    }
}
