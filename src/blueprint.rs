//! Blueprints: what a new environment starts as — a schema dump, ordered migrations and seed
//! fixtures — read from disk once, when the configuration is loaded, and content-addressed by a
//! hash of every input.

use crate::domain::{ExtensionName, MigrationFormat, PgIdent, SourceFile};
use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};

/// Bumped whenever the way templates are built changes, so old templates are rebuilt.
pub const TEMPLATE_FORMAT_VERSION: u32 = 1;

/// An input file read again when it is needed (a dump or seeds may be large: they are not
/// kept in memory between template builds).
#[derive(Debug, Clone)]
pub struct FileRef {
    pub name: String,
    pub path: PathBuf,
}

impl FileRef {
    fn read(&self) -> anyhow::Result<SourceFile> {
        read_file(&self.path)
    }
}

/// A blueprint's schema dump and seeds, read for a build.
#[derive(Debug)]
pub struct Contents {
    pub schema: Option<SourceFile>,
    pub seeds: Vec<SourceFile>,
}

#[derive(Debug, Clone)]
pub struct Blueprint {
    pub name: PgIdent,
    pub schema: Option<FileRef>,
    pub format: MigrationFormat,
    /// Kept in memory: they are also run under the callers' own migrations.
    pub migrations: Vec<SourceFile>,
    pub seeds: Vec<FileRef>,
    pub extensions: Vec<ExtensionName>,
    pub pool_size: u32,
    /// Overrides the target's size quota for environments of this blueprint.
    pub max_environment_bytes: Option<u64>,
    /// Digest of every input except the server version (see [`Blueprint::hash_for`]).
    content_digest: [u8; 32],
}

/// Where a blueprint's inputs are and how it is used, as its `[blueprints.NAME]` table says
/// (see `configuration`), with absolute paths.
#[derive(Debug)]
pub struct BlueprintSource {
    pub name: PgIdent,
    pub schema: Option<PathBuf>,
    pub migrations: Option<PathBuf>,
    pub format: MigrationFormat,
    pub seeds: Option<PathBuf>,
    pub extensions: Vec<ExtensionName>,
    pub pool_size: u32,
    pub max_environment_bytes: Option<u64>,
}

impl Blueprint {
    /// Reads every file the source names and checks their names; errors name the config key.
    pub fn read(source: BlueprintSource) -> anyhow::Result<Self> {
        let at = format!("blueprints.{}", source.name);
        let schema = match &source.schema {
            Some(p) => Some(read_file(p).with_context(|| format!("{at}.schema"))?),
            None => None,
        };
        let schema_ref = source.schema.map(|path| FileRef {
            name: schema.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            path,
        });
        let migrations = match &source.migrations {
            Some(dir) => read_dir(dir, |n| n.ends_with(".sql") && !n.ends_with(".down.sql"))
                .with_context(|| format!("{at}.migrations"))?,
            None => vec![],
        };
        source
            .format
            .check_names(&migrations)
            .map_err(|e| anyhow!("{at}.migrations: {e}"))?;
        let (seeds, seed_refs) = match &source.seeds {
            Some(dir) => read_seeds(dir).with_context(|| format!("{at}.seeds"))?,
            None => (vec![], vec![]),
        };
        for s in seeds.iter().filter(|s| s.name.ends_with(".csv")) {
            seed_table(&s.name).map_err(|e| anyhow!("{at}.seeds: {e}"))?;
        }
        let mut bp = Blueprint {
            name: source.name,
            schema: schema_ref,
            format: source.format,
            migrations,
            seeds: seed_refs,
            extensions: source.extensions,
            pool_size: source.pool_size,
            max_environment_bytes: source.max_environment_bytes,
            content_digest: [0; 32],
        };
        bp.content_digest = bp.digest(&Contents { schema, seeds });
        Ok(bp)
    }

    /// Reads the dump and the seeds again, for a build; refuses files that changed since the
    /// configuration was loaded, since the template would no longer match its hash.
    pub fn contents(&self) -> Result<Contents, String> {
        let read = || -> anyhow::Result<Contents> {
            Ok(Contents {
                schema: self.schema.as_ref().map(FileRef::read).transpose()?,
                seeds: self
                    .seeds
                    .iter()
                    .map(FileRef::read)
                    .collect::<anyhow::Result<_>>()?,
            })
        };
        let contents = read().map_err(|e| format!("{e:#}"))?;
        if self.digest(&contents) != self.content_digest {
            return Err(
                "its files changed since previewdb loaded its configuration; \
                        restart previewdb to build the new content"
                    .into(),
            );
        }
        Ok(contents)
    }

    fn digest(&self, contents: &Contents) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut field = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field("format-version", &TEMPLATE_FORMAT_VERSION.to_be_bytes());
        if let Some(s) = &contents.schema {
            field("schema", s.text.as_bytes());
        }
        field("migrations-format", self.format.as_str().as_bytes());
        for m in &self.migrations {
            field("migration-name", m.name.as_bytes());
            field("migration", m.text.as_bytes());
        }
        for s in &contents.seeds {
            field("seed-name", s.name.as_bytes());
            field("seed", s.text.as_bytes());
        }
        let mut ext: Vec<&str> = self.extensions.iter().map(ExtensionName::as_str).collect();
        ext.sort();
        field("extensions", ext.join(",").as_bytes());
        h.finalize().into()
    }

    /// The template hash on a server of the given major version: 16 hex characters.
    pub fn hash_for(&self, server_major: u32) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.content_digest);
        h.update(server_major.to_be_bytes());
        hex::encode(&h.finalize()[..8])
    }
}

/// The table a CSV seed file loads into: `users.csv`, `01_users.csv` → `"users"`;
/// `billing.plans.csv` → `"billing"."plans"`. Returns the quoted, qualified name.
pub fn seed_table(file: &str) -> Result<String, String> {
    let stem = file.strip_suffix(".csv").unwrap_or(file);
    let stem = match stem.split_once(['_', '-']) {
        Some((prefix, rest))
            if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest
        }
        _ => stem,
    };
    let parts: Vec<&str> = stem.split('.').collect();
    if parts.is_empty() || parts.len() > 2 {
        return Err(format!(
            "{file:?}: a CSV seed is named TABLE.csv or SCHEMA.TABLE.csv"
        ));
    }
    parts
        .iter()
        .map(|p| {
            PgIdent::parse(p)
                .map(|id| id.quoted())
                .map_err(|_| format!("{file:?}: {p:?} is not a lowercase table name"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|q| q.join("."))
}

fn read_file(path: &Path) -> anyhow::Result<SourceFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(SourceFile { name, text })
}

/// The directory's matching files in name order.
fn read_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<SourceFile>> {
    let mut files = vec![];
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?
    {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_file() && keep(&name) {
            files.push(read_file(&path)?);
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if files.is_empty() {
        bail!("{} holds no matching files", dir.display());
    }
    Ok(files)
}

/// The seed files of `dir`, read now (for the digest) and referenced (to be read again).
fn read_seeds(dir: &Path) -> anyhow::Result<(Vec<SourceFile>, Vec<FileRef>)> {
    let seeds = read_dir(dir, |n| n.ends_with(".sql") || n.ends_with(".csv"))?;
    let refs = seeds
        .iter()
        .map(|s| FileRef {
            name: s.name.clone(),
            path: dir.join(&s.name),
        })
        .collect();
    Ok((seeds, refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_read_again_and_must_still_match() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("seeds")).unwrap();
        std::fs::write(dir.path().join("schema.sql"), "CREATE TABLE t (n int);").unwrap();
        std::fs::write(dir.path().join("seeds/t.csv"), "n\n1\n").unwrap();
        let bp = Blueprint::read(BlueprintSource {
            name: PgIdent::parse("app").unwrap(),
            schema: Some(dir.path().join("schema.sql")),
            migrations: None,
            format: MigrationFormat::Plain,
            seeds: Some(dir.path().join("seeds")),
            extensions: vec![],
            pool_size: 2,
            max_environment_bytes: None,
        })
        .unwrap();
        let contents = bp.contents().unwrap();
        assert_eq!(contents.schema.unwrap().text, "CREATE TABLE t (n int);");
        assert_eq!(contents.seeds[0].text, "n\n1\n");
        std::fs::write(dir.path().join("seeds/t.csv"), "n\n2\n").unwrap();
        assert!(bp.contents().unwrap_err().contains("changed"));
    }

    #[test]
    fn seed_tables_from_file_names() {
        assert_eq!(seed_table("users.csv").unwrap(), "\"users\"");
        assert_eq!(seed_table("01_users.csv").unwrap(), "\"users\"");
        assert_eq!(
            seed_table("02-billing.plans.csv").unwrap(),
            "\"billing\".\"plans\""
        );
        assert!(seed_table("Users.csv").is_err());
        assert!(seed_table("a.b.c.csv").is_err());
        assert!(seed_table("x\"y.csv").is_err());
    }
}
