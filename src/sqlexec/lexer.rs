//! Splits SQL text the way psql reads it: statements end at a `;` that is outside every quote,
//! dollar quote and comment; `COPY … FROM stdin` carries the data rows that follow it; a line
//! starting with `\` between statements is a psql meta-command.
//!
//! Delimiters are all ASCII and UTF-8 never reuses ASCII bytes inside a multi-byte character, so
//! the scan works on bytes and slices the text only at ASCII positions.

/// One unit of a script, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One SQL statement, without the trailing `;`, with the 1-based line where it starts (first non-blank, non-comment char).
    Statement { sql: String, line: usize },
    /// `COPY … FROM stdin;` followed by its data rows up to the `\.` line (exclusive). `data` holds the raw rows, each ending in '\n'.
    Copy {
        sql: String,
        data: String,
        line: usize,
    },
    /// A psql meta-command line such as `\restrict KEY` or `\connect db` (backslash command at the start of a line, outside any statement).
    Meta {
        command: String,
        args: String,
        line: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LexError {
    pub line: usize,
    pub message: String,
}

/// Splits a whole script into statements, COPY blocks and meta-commands.
pub fn split(text: &str) -> Result<Vec<Item>, LexError> {
    let mut tokens = Tokenizer::new(text);
    let mut items = Vec::new();
    while let Some(token) = tokens.next_token()? {
        match token.kind {
            Kind::Space | Kind::Comment | Kind::Semicolon => {}
            Kind::Other(b'\\') if tokens.starts_line(token.start) => {
                items.push(meta_command(&mut tokens, &token));
            }
            _ => {
                if let Some(item) = statement(&mut tokens, &token)? {
                    items.push(item);
                }
            }
        }
    }
    Ok(items)
}

/// The significant words of one statement, for classifying it: keywords and plain identifiers
/// upper-cased, quoted identifiers verbatim (with their quotes), every string literal as `'`,
/// any other character as itself. Comments and whitespace are dropped.
pub(crate) fn words(sql: &str) -> Vec<String> {
    let mut tokens = Tokenizer::new(sql);
    let mut words = Vec::new();
    // The statement already lexed once, so an error cannot occur here; stopping is enough.
    while let Ok(Some(token)) = tokens.next_token() {
        let text = &sql[token.start..token.end];
        match token.kind {
            Kind::Space | Kind::Comment => {}
            Kind::Word => words.push(text.to_ascii_uppercase()),
            Kind::Literal => words.push("'".into()),
            Kind::QuotedIdent | Kind::Semicolon | Kind::Other(_) => words.push(text.into()),
        }
    }
    words
}

fn meta_command(tokens: &mut Tokenizer, backslash: &Token) -> Item {
    let rest = tokens.rest_of_line();
    let rest = rest.trim_end();
    let (command, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    Item::Meta {
        command: command.to_string(),
        args: args.trim().to_string(),
        line: backslash.line,
    }
}

/// Reads one statement starting at `first`; `None` when it is empty.
fn statement(tokens: &mut Tokenizer, first: &Token) -> Result<Option<Item>, LexError> {
    let mut end = tokens.text.len();
    let mut terminated = false;
    let mut nesting = Nesting::default();
    let mut token = Some(first.clone());
    while let Some(t) = token {
        if t.kind == Kind::Semicolon && nesting.at_top() {
            end = t.start;
            terminated = true;
            break;
        }
        nesting.observe(t.kind, &tokens.text[t.start..t.end]);
        token = tokens.next_token()?;
    }
    let sql = tokens.text[first.start..end].trim_end().to_string();
    if sql.is_empty() {
        return Ok(None);
    }
    if terminated && is_copy_from_stdin(&words(&sql)) {
        let data = copy_data(tokens, first.line)?;
        return Ok(Some(Item::Copy {
            sql,
            data,
            line: first.line,
        }));
    }
    Ok(Some(Item::Statement {
        sql,
        line: first.line,
    }))
}

/// psql's rule for semicolons that do not end a statement: those inside parentheses (rules
/// with several actions) and those inside the `BEGIN … END` of a SQL-standard routine body
/// (`CREATE FUNCTION … BEGIN ATOMIC …; END`), where `CASE … END` nests too.
#[derive(Default)]
struct Nesting {
    leading_words: Vec<String>,
    parens: usize,
    begins: usize,
}

impl Nesting {
    fn at_top(&self) -> bool {
        self.parens == 0 && self.begins == 0
    }

    fn observe(&mut self, kind: Kind, text: &str) {
        match kind {
            Kind::Other(b'(') => self.parens += 1,
            Kind::Other(b')') => self.parens = self.parens.saturating_sub(1),
            Kind::Word => self.word(text.to_ascii_uppercase()),
            _ => {}
        }
    }

    fn word(&mut self, word: String) {
        if self.leading_words.len() < 4 {
            self.leading_words.push(word.clone());
        }
        if !self.defines_routine() || self.parens > 0 {
            return;
        }
        match word.as_str() {
            "BEGIN" => self.begins += 1,
            "CASE" if self.begins > 0 => self.begins += 1,
            "END" => self.begins = self.begins.saturating_sub(1),
            _ => {}
        }
    }

    fn defines_routine(&self) -> bool {
        let words: Vec<&str> = self.leading_words.iter().map(String::as_str).collect();
        matches!(
            words.as_slice(),
            ["CREATE", "FUNCTION" | "PROCEDURE", ..]
                | ["CREATE", "OR", "REPLACE", "FUNCTION" | "PROCEDURE", ..]
        )
    }
}

fn is_copy_from_stdin(words: &[String]) -> bool {
    words.first().is_some_and(|w| w == "COPY")
        && words
            .windows(2)
            .any(|pair| pair[0] == "FROM" && pair[1] == "STDIN")
}

/// The rows after a `COPY … FROM stdin;` line, up to a line that is exactly `\.`.
fn copy_data(tokens: &mut Tokenizer, copy_line: usize) -> Result<String, LexError> {
    let semicolon_line = tokens.line;
    let after = tokens.rest_of_line().trim();
    // psql would run text after the `;` only once the data is read; refusing it is clearer.
    if !after.is_empty() && !after.starts_with("--") {
        return Err(LexError {
            line: semicolon_line,
            message: format!("unexpected text after COPY … FROM stdin: {after}"),
        });
    }
    let mut data = String::new();
    while !tokens.at_end() {
        let row = tokens.rest_of_line();
        let row = row.strip_suffix('\n').unwrap_or(row);
        let row = row.strip_suffix('\r').unwrap_or(row);
        if row == "\\." {
            return Ok(data);
        }
        data.push_str(row);
        data.push('\n');
    }
    Err(LexError {
        line: copy_line,
        message: "COPY … FROM stdin data has no terminating `\\.` line".into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    Word,
    /// A string literal or dollar-quoted string.
    Literal,
    QuotedIdent,
    Semicolon,
    Other(u8),
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
    line: usize,
}

struct Tokenizer<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Tokenizer<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            line: 1,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    fn bump(&mut self) {
        if self.bytes[self.pos] == b'\n' {
            self.line += 1;
        }
        self.pos += 1;
    }

    /// Whether only blanks precede `pos` on its line.
    fn starts_line(&self, pos: usize) -> bool {
        self.bytes[..pos]
            .iter()
            .rev()
            .take_while(|&&b| b != b'\n')
            .all(u8::is_ascii_whitespace)
    }

    /// Consumes up to and including the next newline.
    fn rest_of_line(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(b) = self.peek(0) {
            self.bump();
            if b == b'\n' {
                break;
            }
        }
        &self.text[start..self.pos]
    }

    fn next_token(&mut self) -> Result<Option<Token>, LexError> {
        let Some(b) = self.peek(0) else {
            return Ok(None);
        };
        let (start, line) = (self.pos, self.line);
        let kind = match b {
            b if b.is_ascii_whitespace() => self.space(),
            b'-' if self.peek(1) == Some(b'-') => self.line_comment(),
            b'/' if self.peek(1) == Some(b'*') => self.block_comment(line)?,
            b'\'' => self.quoted(b'\'', false, line)?,
            b'"' => self.quoted(b'"', false, line)?,
            b'$' if self.dollar_tag().is_some() => self.dollar_quoted(line)?,
            b'e' | b'E' if self.peek(1) == Some(b'\'') => {
                self.bump();
                self.quoted(b'\'', true, line)?
            }
            b if is_ident_start(b) || b.is_ascii_digit() => self.word(),
            b';' => self.single(Kind::Semicolon),
            b => self.single(Kind::Other(b)),
        };
        Ok(Some(Token {
            kind,
            start,
            end: self.pos,
            line,
        }))
    }

    fn single(&mut self, kind: Kind) -> Kind {
        self.bump();
        kind
    }

    fn space(&mut self) -> Kind {
        while self.peek(0).is_some_and(|b| b.is_ascii_whitespace()) {
            self.bump();
        }
        Kind::Space
    }

    fn word(&mut self) -> Kind {
        // `$` may continue an identifier (`a$b`), which is why `a$b$` is no dollar quote.
        while self
            .peek(0)
            .is_some_and(|b| is_ident_start(b) || b.is_ascii_digit() || b == b'$')
        {
            self.bump();
        }
        Kind::Word
    }

    fn line_comment(&mut self) -> Kind {
        while self.peek(0).is_some_and(|b| b != b'\n') {
            self.bump();
        }
        Kind::Comment
    }

    /// PostgreSQL block comments nest, unlike C's.
    fn block_comment(&mut self, line: usize) -> Result<Kind, LexError> {
        let mut depth = 0usize;
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return Ok(Kind::Comment);
                    }
                }
                (Some(_), _) => self.bump(),
                (None, _) => return Err(unterminated("block comment", line)),
            }
        }
    }

    /// A `'…'` string or `"…"` identifier, where a doubled quote stands for itself; in an
    /// `E'…'` string a backslash also escapes the next character.
    fn quoted(
        &mut self,
        quote: u8,
        backslash_escapes: bool,
        line: usize,
    ) -> Result<Kind, LexError> {
        self.bump();
        loop {
            match self.peek(0) {
                None => {
                    let what = if quote == b'"' {
                        "quoted identifier"
                    } else {
                        "string literal"
                    };
                    return Err(unterminated(what, line));
                }
                Some(b'\\') if backslash_escapes && self.peek(1).is_some() => {
                    self.bump();
                    self.bump();
                }
                Some(b) if b == quote && self.peek(1) == Some(quote) => {
                    self.bump();
                    self.bump();
                }
                Some(b) if b == quote => {
                    self.bump();
                    let kind = if quote == b'"' {
                        Kind::QuotedIdent
                    } else {
                        Kind::Literal
                    };
                    return Ok(kind);
                }
                Some(_) => self.bump(),
            }
        }
    }

    /// The `$tag$` opening at the current position, if it is one: the tag is empty or an
    /// identifier not starting with a digit, so `$1` is a parameter.
    fn dollar_tag(&self) -> Option<&'a str> {
        let rest = &self.bytes[self.pos + 1..];
        let tag_len = match rest.first() {
            Some(&b) if is_ident_start(b) => rest
                .iter()
                .take_while(|&&b| is_ident_start(b) || b.is_ascii_digit())
                .count(),
            _ => 0,
        };
        (rest.get(tag_len) == Some(&b'$')).then(|| &self.text[self.pos..self.pos + tag_len + 2])
    }

    fn dollar_quoted(&mut self, line: usize) -> Result<Kind, LexError> {
        let tag = self.dollar_tag().unwrap_or("$$");
        for _ in 0..tag.len() {
            self.bump();
        }
        let Some(offset) = self.text[self.pos..].find(tag) else {
            return Err(unterminated(&format!("dollar-quoted string {tag}"), line));
        };
        for _ in 0..offset + tag.len() {
            self.bump();
        }
        Ok(Kind::Literal)
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn unterminated(what: &str, line: usize) -> LexError {
    LexError {
        line,
        message: format!("unterminated {what} starting at line {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(sql: &str, line: usize) -> Item {
        Item::Statement {
            sql: sql.into(),
            line,
        }
    }

    fn sqls(text: &str) -> Vec<String> {
        split(text)
            .unwrap()
            .into_iter()
            .map(|item| match item {
                Item::Statement { sql, .. } | Item::Copy { sql, .. } => sql,
                Item::Meta { command, .. } => format!("\\{command}"),
            })
            .collect()
    }

    #[test]
    fn plain_statements_with_lines() {
        let items = split("SELECT 1;\n\n  SELECT\n 2 ;SELECT 3").unwrap();
        assert_eq!(
            items,
            vec![
                stmt("SELECT 1", 1),
                stmt("SELECT\n 2", 3),
                stmt("SELECT 3", 4)
            ]
        );
    }

    #[test]
    fn blank_and_comment_only_input_yields_nothing() {
        assert_eq!(split("").unwrap(), vec![]);
        assert_eq!(
            split("  \n-- just a comment\n/* block */\n;\n ; \n").unwrap(),
            vec![]
        );
    }

    #[test]
    fn leading_comments_do_not_count_as_statement_start() {
        let items =
            split("-- header\n/* a\n b */\n\nCREATE TABLE t (id int); -- trailing\n").unwrap();
        assert_eq!(items, vec![stmt("CREATE TABLE t (id int)", 5)]);
    }

    #[test]
    fn semicolons_inside_strings_and_identifiers() {
        let text = "INSERT INTO \"a;b\"\"c\" VALUES ('x;''y'), ('it''s; fine');\nSELECT 2;";
        assert_eq!(
            sqls(text),
            vec![
                "INSERT INTO \"a;b\"\"c\" VALUES ('x;''y'), ('it''s; fine')",
                "SELECT 2"
            ]
        );
    }

    #[test]
    fn escape_strings_honour_backslashes() {
        let text = "SELECT E'it\\'s; \\\\';\nSELECT e'\\\\';\nSELECT 'plain\\';";
        assert_eq!(
            sqls(text),
            vec![
                "SELECT E'it\\'s; \\\\'",
                "SELECT e'\\\\'",
                "SELECT 'plain\\'"
            ]
        );
    }

    #[test]
    fn an_identifier_ending_in_e_is_no_escape_prefix_but_the_string_is_still_a_string() {
        // `name'…'` is not valid SQL, but the quote must still hide the `;`.
        assert_eq!(
            sqls("SELECT type'a;b';SELECT 2"),
            vec!["SELECT type'a;b'", "SELECT 2"]
        );
    }

    #[test]
    fn dollar_quoted_bodies() {
        let text = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$\nBEGIN\n  RETURN 1; -- $$ inside\nEND;\n$fn$;\nDO $$ BEGIN PERFORM 1; END $$;\nSELECT 3;";
        let items = split(text).unwrap();
        assert_eq!(items.len(), 3);
        assert!(
            matches!(&items[0], Item::Statement { sql, line: 1 } if sql.ends_with("END;\n$fn$"))
        );
        assert_eq!(items[1], stmt("DO $$ BEGIN PERFORM 1; END $$", 6));
        assert_eq!(items[2], stmt("SELECT 3", 7));
    }

    #[test]
    fn parameters_and_identifier_dollars_are_not_dollar_quotes() {
        let text = "PREPARE p AS SELECT $1, a$b$ FROM t WHERE x = $2;\nSELECT 2;";
        assert_eq!(
            sqls(text),
            vec![
                "PREPARE p AS SELECT $1, a$b$ FROM t WHERE x = $2",
                "SELECT 2"
            ]
        );
    }

    #[test]
    fn nested_block_comments() {
        let text = "SELECT /* a /* nested; */ still comment; */ 1;\nSELECT 2;";
        assert_eq!(
            sqls(text),
            vec!["SELECT /* a /* nested; */ still comment; */ 1", "SELECT 2"]
        );
    }

    #[test]
    fn line_comments_hide_semicolons_and_quotes() {
        assert_eq!(
            sqls("SELECT 1 -- not; the 'end\n + 1;"),
            vec!["SELECT 1 -- not; the 'end\n + 1"]
        );
    }

    #[test]
    fn crlf_line_endings() {
        let items = split("SELECT 1;\r\n\r\nSELECT\r\n  2;\r\n").unwrap();
        assert_eq!(items, vec![stmt("SELECT 1", 1), stmt("SELECT\r\n  2", 3)]);
    }

    #[test]
    fn copy_blocks_keep_raw_rows() {
        let text = "SET x = 1;\nCOPY public.t (a, b) FROM stdin;\n1\ta;b\t\\N\n2\t\\t tab\t'q'\n\\.\nSELECT 1;\n";
        let items = split(text).unwrap();
        assert_eq!(
            items,
            vec![
                stmt("SET x = 1", 1),
                Item::Copy {
                    sql: "COPY public.t (a, b) FROM stdin".into(),
                    data: "1\ta;b\t\\N\n2\t\\t tab\t'q'\n".into(),
                    line: 2,
                },
                stmt("SELECT 1", 6),
            ]
        );
    }

    #[test]
    fn copy_detection_is_case_insensitive_with_options_and_crlf() {
        let text = "copy t from STDIN with (format csv);\r\na,\"b;c\"\r\n\\.\r\nCOPY t TO stdout;";
        let items = split(text).unwrap();
        assert_eq!(
            items[0],
            Item::Copy {
                sql: "copy t from STDIN with (format csv)".into(),
                data: "a,\"b;c\"\n".into(),
                line: 1
            }
        );
        assert_eq!(items[1], stmt("COPY t TO stdout", 4));
    }

    #[test]
    fn copy_with_empty_data_and_terminator_at_eof() {
        let items = split("COPY t FROM stdin;\n\\.").unwrap();
        assert_eq!(
            items,
            vec![Item::Copy {
                sql: "COPY t FROM stdin".into(),
                data: String::new(),
                line: 1
            }]
        );
    }

    #[test]
    fn copy_without_terminator_is_an_error_at_the_copy_line() {
        let err = split("SELECT 1;\n\nCOPY t FROM stdin;\n1\n2\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("\\."), "{err}");
    }

    #[test]
    fn text_after_copy_on_the_same_line_is_an_error() {
        let err = split("COPY t FROM stdin; SELECT 1;\n\\.\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn meta_commands_between_statements() {
        let text = "\\restrict abc123\nSELECT 1;\n  \\connect  other db \r\nSELECT 2;\n\\unrestrict abc123\n";
        let items = split(text).unwrap();
        assert_eq!(
            items,
            vec![
                Item::Meta {
                    command: "restrict".into(),
                    args: "abc123".into(),
                    line: 1
                },
                stmt("SELECT 1", 2),
                Item::Meta {
                    command: "connect".into(),
                    args: "other db".into(),
                    line: 3
                },
                stmt("SELECT 2", 4),
                Item::Meta {
                    command: "unrestrict".into(),
                    args: "abc123".into(),
                    line: 5
                },
            ]
        );
    }

    #[test]
    fn backslash_inside_a_statement_is_not_a_meta_command() {
        assert_eq!(sqls("SELECT 1\n\\gx\n;"), vec!["SELECT 1\n\\gx"]);
    }

    #[test]
    fn unterminated_constructs_name_their_start_line() {
        let cases = [
            ("SELECT 1;\nSELECT 'abc;\n\n", 2, "string"),
            ("SELECT 1;\n\nSELECT E'a\\';\n", 3, "string"),
            ("SELECT \"abc;\n", 1, "identifier"),
            ("SELECT 1;\nDO $body$ BEGIN END $$;\n", 2, "$body$"),
            ("SELECT 1;\n\n\n/* a /* b */\n", 4, "comment"),
        ];
        for (text, line, what) in cases {
            let err = split(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(what), "{text:?}: {err}");
        }
    }

    #[test]
    fn semicolons_inside_parentheses_do_not_end_a_statement() {
        let text = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); NOTIFY t);\nSELECT 2;";
        assert_eq!(
            sqls(text),
            vec![
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); NOTIFY t)",
                "SELECT 2"
            ]
        );
    }

    #[test]
    fn sql_standard_routine_bodies_keep_their_semicolons() {
        let body = "CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND";
        let text = format!("{body};\nBEGIN;\nSELECT 3;\nEND;");
        assert_eq!(sqls(&text), vec![body, "BEGIN", "SELECT 3", "END"]);
    }

    #[test]
    fn words_classify_statements() {
        assert_eq!(
            words("create /* x */ index \"Concurrently\" on t ('a;')"),
            vec![
                "CREATE",
                "INDEX",
                "\"Concurrently\"",
                "ON",
                "T",
                "(",
                "'",
                ")"
            ]
        );
    }
}
