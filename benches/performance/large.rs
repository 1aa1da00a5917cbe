//! The large blueprint, generated at the start of each run from a fixed seed: about 100
//! tables of varied column types, primary keys (serial and composite), foreign keys, indexes, a
//! trigger function and views, written as plain `pg_dump`-style schema, two refinery
//! migrations and one seed file per table (`COPY … FROM stdin` and CSV, alternately) of about
//! `seed_bytes` in all. The same bytes every run (an LCG, no clock, no hash-map order), so
//! that its template hash, and the figures, are comparable between runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub(crate) const TABLES: usize = 100;

pub(crate) struct Generated {
    pub schema: PathBuf,
    pub migrations: PathBuf,
    pub seeds: PathBuf,
    pub tables: usize,
    pub rows: u64,
    pub seed_bytes: u64,
    pub seed_files: usize,
}

/// Knuth's MMIX LCG; the high bits are the usable ones.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 16
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Int,
    Big,
    Small,
    Num,
    Text,
    Varchar,
    Bool,
    Ts,
    Date,
    Uuid,
    Json,
    Float,
    Inet,
    IntArr,
}

const TYPES: [Ty; 13] = [
    Ty::Int,
    Ty::Big,
    Ty::Small,
    Ty::Num,
    Ty::Text,
    Ty::Varchar,
    Ty::Bool,
    Ty::Ts,
    Ty::Date,
    Ty::Json,
    Ty::Float,
    Ty::Inet,
    Ty::IntArr,
];

impl Ty {
    fn sql(self) -> &'static str {
        match self {
            Ty::Int => "integer",
            Ty::Big => "bigint",
            Ty::Small => "smallint",
            Ty::Num => "numeric(12,2)",
            Ty::Text => "text",
            Ty::Varchar => "character varying(80)",
            Ty::Bool => "boolean",
            Ty::Ts => "timestamp with time zone",
            Ty::Date => "date",
            Ty::Uuid => "uuid",
            Ty::Json => "jsonb",
            Ty::Float => "double precision",
            Ty::Inet => "inet",
            Ty::IntArr => "integer[]",
        }
    }
}

struct Col {
    name: String,
    ty: Ty,
    nullable: bool,
    default: Option<&'static str>,
    /// The table (index) this column references by its `id`.
    fk: Option<usize>,
}

struct Table {
    schema: &'static str,
    name: String,
    cols: Vec<Col>,
    /// Serial `id` primary key; otherwise the first two columns are a composite one.
    serial: bool,
    csv: bool,
    touch_trigger: bool,
    rows: u64,
}

impl Table {
    fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

const NOUNS: [&str; 20] = [
    "accounts",
    "users",
    "orders",
    "invoices",
    "notes",
    "products",
    "shipments",
    "payments",
    "tickets",
    "sessions",
    "projects",
    "tasks",
    "comments",
    "events",
    "addresses",
    "contracts",
    "refunds",
    "coupons",
    "reviews",
    "devices",
];

const WORDS: [&str; 24] = [
    "alpha",
    "bravo",
    "O'Brien",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "\"quoted\"",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "übung",
    "victor",
    "whiskey",
    "x-ray",
];

fn define(rng: &mut Lcg) -> Vec<Table> {
    let mut tables: Vec<Table> = Vec::with_capacity(TABLES);
    for i in 0..TABLES {
        let schema = if i % 5 == 4 { "crm" } else { "public" };
        let name = format!("t{i:03}_{}", NOUNS[i % NOUNS.len()]);
        let serial_parents: Vec<usize> = (0..i).filter(|&j| tables[j].serial).collect();
        let join = i >= 20 && i % 10 == 9;
        let mut cols = vec![];
        if join {
            let a = serial_parents[rng.below(serial_parents.len() as u64) as usize];
            let mut b = serial_parents[rng.below(serial_parents.len() as u64) as usize];
            if b == a {
                b = serial_parents[(serial_parents.iter().position(|&p| p == a).unwrap() + 1)
                    % serial_parents.len()];
            }
            for p in [a, b] {
                cols.push(Col {
                    name: format!("ref{p:03}_id"),
                    ty: Ty::Big,
                    nullable: false,
                    default: None,
                    fk: Some(p),
                });
            }
        } else {
            cols.push(Col {
                name: "id".into(),
                ty: Ty::Big,
                nullable: false,
                default: None,
                fk: None,
            });
            if i >= 3 {
                for _ in 0..rng.below(3) {
                    let p = serial_parents[rng.below(serial_parents.len() as u64) as usize];
                    let name = format!("ref{p:03}_id");
                    if cols.iter().all(|c| c.name != name) {
                        cols.push(Col {
                            name,
                            ty: Ty::Big,
                            nullable: rng.chance(30),
                            default: None,
                            fk: Some(p),
                        });
                    }
                }
            }
            if rng.chance(40) {
                cols.push(Col {
                    name: "public_id".into(),
                    ty: Ty::Uuid,
                    nullable: false,
                    default: None,
                    fk: None,
                });
            }
        }
        for c in 0..3 + rng.below(9) {
            let ty = TYPES[rng.below(TYPES.len() as u64) as usize];
            cols.push(Col {
                name: format!(
                    "c{c:02}_{}",
                    ty.sql().split([' ', '(', '[']).next().unwrap()
                ),
                ty,
                nullable: rng.chance(25),
                default: match ty {
                    Ty::Bool if rng.chance(50) => Some("false"),
                    Ty::Int if rng.chance(30) => Some("0"),
                    _ => None,
                },
                fk: None,
            });
        }
        let touch_trigger = !join && i % 3 == 0;
        if touch_trigger {
            cols.push(Col {
                name: "updated_at".into(),
                ty: Ty::Ts,
                nullable: false,
                default: Some("now()"),
                fk: None,
            });
        }
        tables.push(Table {
            schema,
            name,
            cols,
            serial: !join,
            csv: i % 2 == 1,
            touch_trigger,
            rows: 0,
        });
    }
    tables
}

fn value(rng: &mut Lcg, col: &Col, tables: &[Table], row: u64, out: &mut String) -> bool {
    if col.nullable && rng.chance(10) {
        return false;
    }
    if let Some(p) = col.fk {
        let _ = write!(out, "{}", 1 + rng.below(tables[p].rows));
        return true;
    }
    match col.ty {
        Ty::Int => {
            let _ = write!(out, "{}", rng.below(2_000_000) as i64 - 1_000_000);
        }
        Ty::Big => {
            let _ = write!(out, "{}", rng.next() as i64);
        }
        Ty::Small => {
            let _ = write!(out, "{}", rng.below(30_000));
        }
        Ty::Num => {
            let _ = write!(out, "{}.{:02}", rng.below(1_000_000), rng.below(100));
        }
        Ty::Text | Ty::Varchar => {
            let n = if col.ty == Ty::Text {
                1 + rng.below(14)
            } else {
                1 + rng.below(5)
            };
            for w in 0..n {
                if w > 0 {
                    out.push_str(if rng.chance(10) { ", " } else { " " });
                }
                out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            }
        }
        Ty::Bool => out.push(if rng.chance(50) { 't' } else { 'f' }),
        Ty::Ts => {
            let at =
                chrono::DateTime::from_timestamp(1_672_531_200 + rng.below(63_072_000) as i64, 0)
                    .expect("in range");
            let _ = write!(out, "{}", at.format("%Y-%m-%d %H:%M:%S+00"));
        }
        Ty::Date => {
            let at = chrono::DateTime::from_timestamp(
                1_577_836_800 + 86_400 * rng.below(3650) as i64,
                0,
            )
            .expect("in range");
            let _ = write!(out, "{}", at.format("%Y-%m-%d"));
        }
        Ty::Uuid => {
            // Row number in the last group keeps them unique whatever the generator does.
            let (a, b) = (rng.next(), rng.next());
            let _ = write!(
                out,
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                a as u32,
                (a >> 32) as u16,
                b & 0xfff,
                (b >> 12) & 0xfff,
                row
            );
        }
        Ty::Json => {
            let _ = write!(
                out,
                "{{\"k\": {}, \"tag\": \"{}\", \"on\": {}}}",
                rng.below(1000),
                WORDS[rng.below(WORDS.len() as u64) as usize].replace('"', "\\\""),
                rng.chance(50)
            );
        }
        Ty::Float => {
            let _ = write!(out, "{}", rng.below(10_000_000) as f64 / 1024.0);
        }
        Ty::Inet => {
            let _ = write!(
                out,
                "10.{}.{}.{}",
                rng.below(256),
                rng.below(256),
                1 + rng.below(254)
            );
        }
        Ty::IntArr => {
            out.push('{');
            for k in 0..1 + rng.below(5) {
                if k > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", rng.below(1000));
            }
            out.push('}');
        }
    }
    true
}

fn copy_text_escape(raw: &str, out: &mut String) {
    for ch in raw.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn csv_escape(raw: &str, out: &mut String) {
    if raw.is_empty() || raw.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&raw.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(raw);
    }
}

/// One table's seed file: rows until `budget` bytes (a composite key caps them at what its
/// parents allow).
fn seed_file(rng: &mut Lcg, tables: &mut [Table], i: usize, budget: usize) -> (String, String) {
    let t = &tables[i];
    let file = if t.csv {
        if t.schema == "public" {
            format!("{i:03}_{}.csv", t.name)
        } else {
            format!("{i:03}_{}.{}.csv", t.schema, t.name)
        }
    } else {
        format!("{i:03}_{}.sql", t.name)
    };
    let names: Vec<&str> = t.cols.iter().map(|c| c.name.as_str()).collect();
    let mut out = String::with_capacity(budget + 4096);
    if t.csv {
        out.push_str(&names.join(","));
        out.push('\n');
    } else {
        let _ = writeln!(
            out,
            "-- Seed rows of {}, generated by benches/performance/large.rs.\n\
             COPY {} ({}) FROM stdin;",
            t.qualified(),
            t.qualified(),
            names.join(", ")
        );
    }
    let max_rows = if t.serial {
        u64::MAX
    } else {
        let (a, b) = (t.cols[0].fk.unwrap(), t.cols[1].fk.unwrap());
        tables[a].rows * tables[b].rows
    };
    let mut raw = String::new();
    let mut row = 0u64;
    while (out.len() < budget || row < 20) && row < max_rows {
        row += 1;
        for (k, col) in tables[i].cols.iter().enumerate() {
            if k > 0 {
                out.push(if tables[i].csv { ',' } else { '\t' });
            }
            raw.clear();
            let present = if tables[i].serial && k == 0 {
                let _ = write!(raw, "{row}");
                true
            } else if !tables[i].serial && k < 2 {
                // Distinct pairs: row r ↦ (r mod |a|, r div |a|), both 1-based.
                let a = tables[tables[i].cols[0].fk.unwrap()].rows;
                let r = row - 1;
                let _ = write!(raw, "{}", if k == 0 { r % a + 1 } else { r / a + 1 });
                true
            } else {
                value(rng, col, tables, row, &mut raw)
            };
            match (present, tables[i].csv) {
                (false, true) => {}
                (false, false) => out.push_str("\\N"),
                (true, true) => csv_escape(&raw, &mut out),
                (true, false) => copy_text_escape(&raw, &mut out),
            }
        }
        out.push('\n');
    }
    if !tables[i].csv {
        out.push_str("\\.\n");
    }
    tables[i].rows = row;
    (file, out)
}

fn schema_dump(tables: &[Table]) -> String {
    let mut s = String::from(
        "--\n-- PostgreSQL database dump\n--\n\n\
         -- Generated by benches/performance/large.rs (deterministic, in pg_dump's plain layout)\n\n\
         SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\n\
         SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\
         SELECT pg_catalog.set_config('search_path', '', false);\nSET check_function_bodies = false;\n\
         SET xmloption = content;\nSET client_min_messages = warning;\nSET row_security = off;\n\n\
         --\n-- Name: crm; Type: SCHEMA; Schema: -; Owner: -\n--\n\nCREATE SCHEMA crm;\n\n\
         --\n-- Name: touch_updated_at(); Type: FUNCTION; Schema: public; Owner: -\n--\n\n\
         CREATE FUNCTION public.touch_updated_at() RETURNS trigger\n    LANGUAGE plpgsql\n    AS $$\n\
         BEGIN\n    -- Keeps ';' and quotes inside a body: a splitter on ';' would break here.\n\
         \x20   NEW.updated_at := now();\n    RETURN NEW;\nEND;\n$$;\n\n\
         SET default_tablespace = '';\n\nSET default_table_access_method = heap;\n\n",
    );
    for (i, t) in tables.iter().enumerate() {
        let q = t.qualified();
        let _ = writeln!(
            s,
            "--\n-- Name: {}; Type: TABLE; Schema: {}; Owner: -\n--\n\nCREATE TABLE {q} (",
            t.name, t.schema
        );
        let cols: Vec<String> = t
            .cols
            .iter()
            .map(|c| {
                let mut d = format!("    {} {}", c.name, c.ty.sql());
                if let Some(v) = c.default {
                    let _ = write!(d, " DEFAULT {v}");
                }
                if !c.nullable {
                    d.push_str(" NOT NULL");
                }
                d
            })
            .collect();
        let _ = writeln!(s, "{}\n);\n", cols.join(",\n"));
        if i % 7 == 0 {
            let _ = writeln!(
                s,
                "COMMENT ON TABLE {q} IS 'Generated table {i}; it''s part of the large blueprint.';\n"
            );
        }
        if t.serial {
            let _ = writeln!(
                s,
                "--\n-- Name: {n}_id_seq; Type: SEQUENCE; Schema: {sc}; Owner: -\n--\n\n\
                 CREATE SEQUENCE {q}_id_seq\n    START WITH 1\n    INCREMENT BY 1\n    NO MINVALUE\n    \
                 NO MAXVALUE\n    CACHE 1;\n\nALTER SEQUENCE {q}_id_seq OWNED BY {q}.id;\n",
                n = t.name,
                sc = t.schema
            );
        }
    }
    s.push_str(
        "--\n-- Name: v_table_sizes; Type: VIEW; Schema: public; Owner: -\n--\n\n\
         CREATE VIEW public.v_table_sizes AS\n SELECT c.relname,\n    pg_relation_size((c.oid)::regclass) AS bytes\n   \
         FROM pg_class c\n  WHERE (c.relkind = 'r'::\"char\");\n\n",
    );
    for t in tables.iter().filter(|t| t.serial) {
        let q = t.qualified();
        let _ = writeln!(
            s,
            "ALTER TABLE ONLY {q} ALTER COLUMN id SET DEFAULT nextval('{q}_id_seq'::regclass);\n"
        );
    }
    for t in tables {
        let q = t.qualified();
        let key = if t.serial {
            "id".to_owned()
        } else {
            format!("{}, {}", t.cols[0].name, t.cols[1].name)
        };
        let _ = writeln!(
            s,
            "ALTER TABLE ONLY {q}\n    ADD CONSTRAINT {}_pkey PRIMARY KEY ({key});\n",
            t.name
        );
    }
    for (i, t) in tables.iter().enumerate() {
        let q = t.qualified();
        for c in &t.cols {
            // A composite key's first column is indexed by the key already.
            let fk_index = c.fk.is_some() && (t.serial || c.name != t.cols[0].name);
            if fk_index {
                let _ = writeln!(
                    s,
                    "CREATE INDEX {}_{}_idx ON {q} USING btree ({});\n",
                    t.name, c.name, c.name
                );
            } else if c.ty == Ty::Uuid {
                let _ = writeln!(
                    s,
                    "CREATE UNIQUE INDEX {}_{}_key ON {q} USING btree ({});\n",
                    t.name, c.name, c.name
                );
            } else if c.fk.is_none() && i % 4 == 0 && matches!(c.ty, Ty::Ts | Ty::Date | Ty::Int) {
                let _ = writeln!(
                    s,
                    "CREATE INDEX {}_{}_idx ON {q} USING btree ({});\n",
                    t.name, c.name, c.name
                );
            }
        }
        if t.touch_trigger {
            let _ = writeln!(
                s,
                "CREATE TRIGGER {}_touch BEFORE UPDATE ON {q} FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();\n",
                t.name
            );
        }
    }
    for t in tables {
        let q = t.qualified();
        for c in t.cols.iter().filter(|c| c.fk.is_some()) {
            let parent = tables[c.fk.unwrap()].qualified();
            let _ = writeln!(
                s,
                "ALTER TABLE ONLY {q}\n    ADD CONSTRAINT {}_{}_fkey FOREIGN KEY ({}) REFERENCES {parent}(id);\n",
                t.name, c.name, c.name
            );
        }
    }
    s.push_str("--\n-- PostgreSQL database dump complete\n--\n\n");
    s
}

fn migrations(tables: &[Table]) -> [(String, String); 2] {
    let mut v1 = String::from("-- Columns added after the dump was taken; seeds name their columns, so they keep working.\n");
    for t in tables.iter().filter(|t| !t.csv).step_by(9) {
        let _ = writeln!(
            v1,
            "ALTER TABLE {} ADD COLUMN archived boolean DEFAULT false NOT NULL;",
            t.qualified()
        );
    }
    v1.push_str(
        "CREATE TABLE public.audit_log (\n    id bigserial PRIMARY KEY,\n    table_name text NOT NULL,\n    \
         changed_at timestamp with time zone DEFAULT now() NOT NULL,\n    payload jsonb\n);\n",
    );
    let mut v2 = String::from("-- Reporting: an index and a view over the two first tables.\n");
    let (a, b) = (&tables[0], &tables[1]);
    let _ = writeln!(
        v2,
        "CREATE INDEX audit_log_table_idx ON public.audit_log (table_name, changed_at);\n\
         CREATE VIEW public.v_counts AS\n  SELECT (SELECT count(*) FROM {}) AS {}, (SELECT count(*) FROM {}) AS {};\n\
         COMMENT ON VIEW public.v_counts IS $c$Row counts; a 'dollar-quoted' comment.$c$;",
        a.qualified(),
        a.name,
        b.qualified(),
        b.name
    );
    [
        ("V1__audit_columns.sql".into(), v1),
        ("V2__reporting.sql".into(), v2),
    ]
}

/// Writes the blueprint under `root` (`schema.sql`, `migrations/`, `data/`).
pub(crate) fn generate(root: &Path, seed_bytes: usize) -> anyhow::Result<Generated> {
    let mut rng = Lcg(0x5eed_2024_0008);
    let mut tables = define(&mut rng);
    let weights: Vec<u64> = (0..TABLES)
        .map(|_| {
            if rng.chance(12) {
                40 + rng.below(40)
            } else {
                1 + rng.below(6)
            }
        })
        .collect();
    let total: u64 = weights.iter().sum();
    let schema = root.join("schema.sql");
    let migrations_dir = root.join("migrations");
    let seeds = root.join("data");
    std::fs::create_dir_all(&migrations_dir)?;
    std::fs::create_dir_all(&seeds)?;
    std::fs::write(&schema, schema_dump(&tables))?;
    for (name, text) in migrations(&tables) {
        std::fs::write(migrations_dir.join(name), text)?;
    }
    let mut written = 0u64;
    for (i, weight) in weights.iter().enumerate() {
        let budget = (seed_bytes as u64 * weight / total) as usize;
        let (file, text) = seed_file(&mut rng, &mut tables, i, budget);
        written += text.len() as u64;
        std::fs::write(seeds.join(file), text)?;
    }
    let mut finish =
        String::from("-- Runs last: every sequence past the explicit ids of the seeds.\n");
    for t in tables.iter().filter(|t| t.serial) {
        let _ = writeln!(
            finish,
            "SELECT pg_catalog.setval('{}_id_seq', {}, true);",
            t.qualified(),
            t.rows
        );
    }
    written += finish.len() as u64;
    std::fs::write(seeds.join("999_finish.sql"), finish)?;
    Ok(Generated {
        schema,
        migrations: migrations_dir,
        seeds,
        tables: tables.len(),
        rows: tables.iter().map(|t| t.rows).sum(),
        seed_bytes: written,
        seed_files: TABLES + 1,
    })
}
