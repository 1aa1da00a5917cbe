//! The baseline a caller without previewdb pays: `createdb`, then `psql -f` of the dump, the
//! migrations and the seeds (CSV through `\copy`), the same files the blueprint names — each a
//! separate psql process, as a shell script would run them.

use super::setup::Cluster;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) struct Recipe {
    pub extensions: Vec<String>,
    pub schema: Option<PathBuf>,
    pub migrations: Vec<PathBuf>,
    pub seeds: Vec<PathBuf>,
}

/// Files of `dir` with one of `extensions`, in name order (refinery's `V{n}__` by number).
pub(crate) fn files(dir: &Path, extensions: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    v.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
    });
    let version = |p: &PathBuf| -> (u64, String) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let n = name
            .strip_prefix('V')
            .and_then(|r| r.split_once("__"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or(0);
        (n, name)
    };
    v.sort_by_key(version);
    Ok(v)
}

/// What one run of the recipe took, and the errors psql reported and went on from (the
/// example dump names roles this cluster lacks, as dumps from elsewhere do).
pub(crate) struct Outcome {
    pub took: Duration,
    pub errors: usize,
    pub first_error: Option<String>,
}

pub(crate) fn run(cluster: &Cluster, recipe: &Recipe, db: &str) -> anyhow::Result<Outcome> {
    let bin = previewdb::embedded::EmbeddedPostgres::find_bin_dir()?;
    let socket = cluster.pg.socket_dir().to_path_buf();
    let port = cluster.pg.port().to_string();
    let tool = |name: &str| {
        let mut c = Command::new(bin.join(name));
        c.arg("-h")
            .arg(&socket)
            .args(["-p", &port, "-U", previewdb::embedded::ADMIN_USER])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        c
    };
    let mut steps: Vec<Command> = vec![];
    let mut createdb = tool("createdb");
    createdb.arg(db);
    steps.push(createdb);
    let psql = |args: &[&str]| {
        let mut c = tool("psql");
        c.args(["-X", "-q", "-d", db]).args(args);
        c
    };
    for ext in &recipe.extensions {
        let sql = format!(
            "CREATE EXTENSION IF NOT EXISTS {}",
            postgres_protocol::escape::escape_identifier(ext)
        );
        steps.push(psql(&["-c", &sql]));
    }
    for f in recipe.schema.iter().chain(&recipe.migrations) {
        steps.push(psql(&["-f", &f.to_string_lossy()]));
    }
    for f in &recipe.seeds {
        let name = f.file_name().unwrap().to_string_lossy();
        if name.ends_with(".csv") {
            let table = previewdb::blueprint::seed_table(&name).map_err(anyhow::Error::msg)?;
            let path = f.to_string_lossy().replace('\'', "''");
            let copy = format!("\\copy {table} FROM '{path}' WITH (FORMAT csv, HEADER true)");
            steps.push(psql(&["-c", &copy]));
        } else {
            steps.push(psql(&["-f", &f.to_string_lossy()]));
        }
    }
    let started = Instant::now();
    let (mut errors, mut first_error) = (0, None);
    for mut step in steps {
        let out = step
            .output()
            .with_context(|| format!("running {:?}", step.get_program()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stderr.lines().filter(|l| l.contains("ERROR:")) {
            errors += 1;
            first_error.get_or_insert_with(|| line.to_owned());
        }
        if !out.status.success() {
            bail!(
                "{:?} failed ({}): {stderr}",
                step.get_args().collect::<Vec<_>>(),
                out.status
            );
        }
    }
    Ok(Outcome {
        took: started.elapsed(),
        errors,
        first_error,
    })
}
