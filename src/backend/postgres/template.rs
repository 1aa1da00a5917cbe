//! Templates: a blueprint built once per target into a database named by its content hash,
//! marked `IS_TEMPLATE true, ALLOW_CONNECTIONS false`, and cloned for every environment.
//!
//! Builds run as a dedicated non-superuser role, so that a dump's `OWNER TO` lines for roles
//! this cluster lacks are skipped with a warning, and every clone can hand all objects to its
//! environment's role with `REASSIGN OWNED`. The template database itself is the admin's. Concurrent requests for one hash build it once: an
//! in-process mutex per hash, and an advisory lock on the target across replicas.

use super::{db_err, quote, Inner};
use crate::backend::{BackendError, BlueprintStatus};
use crate::blueprint::{seed_table, Blueprint};
use crate::sqlexec::{self, migrations, Mode, Policy, Script, ScriptError};
use postgres_protocol::escape::escape_literal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Owns every object of a template until a clone reassigns them.
pub const BUILDER_ROLE: &str = "previewdb_builder";
const TEMPLATE_MARK: &str = "previewdb:template=";
const BUILDING_MARK: &str = "previewdb:building=";

#[derive(Debug, Clone)]
pub struct TemplateInfo {
    pub name: String,
    pub hash: String,
    pub warnings: Vec<String>,
}

#[derive(Default)]
enum Slot {
    #[default]
    Unknown,
    Ready(TemplateInfo),
    /// A build that failed on the blueprint's own content: the same hash fails the same way.
    Failed(String),
}

#[derive(Default)]
pub struct Templates {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Mark {
    blueprint: String,
    hash: String,
    warnings: Vec<String>,
    #[serde(default)]
    built_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A template of a blueprint this process does not know (another replica's configuration, or
/// a blueprint removed since) is only collected once it is this old.
const FOREIGN_TEMPLATE_GRACE: chrono::Duration = chrono::Duration::hours(24);

pub fn template_name(bp: &Blueprint, hash: &str) -> String {
    let name: String = bp.name.as_str().chars().take(30).collect();
    format!("pdb_tpl_{name}_{hash}")
}

impl Templates {
    /// Forgets a template another process dropped, so the next `ensure` builds it again.
    pub fn forget(&self, hash: &str) {
        self.slots.lock().unwrap().remove(hash);
    }

    fn slot(&self, hash: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots
            .lock()
            .unwrap()
            .entry(hash.to_owned())
            .or_default()
            .clone()
    }

    /// The ready template of `bp` on this target, building it first if needed.
    pub async fn ensure(
        &self,
        inner: &Inner,
        bp: &Blueprint,
    ) -> Result<TemplateInfo, BackendError> {
        let hash = bp.hash_for(inner.server().await?.major);
        let slot = self.slot(&hash);
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Ready(t) => return Ok(t.clone()),
            Slot::Failed(message) => {
                return Err(BackendError::Blueprint {
                    blueprint: bp.name.to_string(),
                    message: message.clone(),
                })
            }
            Slot::Unknown => {}
        }
        match build_once(inner, bp, &hash).await {
            Ok(t) => {
                *slot = Slot::Ready(t.clone());
                Ok(t)
            }
            Err(e) => {
                if let BackendError::Blueprint { message, .. } = &e {
                    *slot = Slot::Failed(message.clone());
                }
                Err(e)
            }
        }
    }

    pub async fn status(&self, inner: &Inner, bp: &Blueprint, hash: &str) -> BlueprintStatus {
        let slot = self.slot(hash);
        let mut status = BlueprintStatus {
            hash: Some(hash.to_owned()),
            ..Default::default()
        };
        // A slot locked by someone else is a build under way.
        match slot.try_lock().as_deref() {
            Err(_) => status.template = "building".into(),
            Ok(Slot::Ready(t)) => {
                status.template = "ready".into();
                status.warnings = t.warnings.clone();
            }
            Ok(Slot::Failed(m)) => {
                status.template = "failed".into();
                status.error = Some(m.clone());
            }
            Ok(Slot::Unknown) => match existing(inner, &template_name(bp, hash)).await {
                Ok(Some(t)) => {
                    status.template = "ready".into();
                    status.warnings = t.warnings;
                }
                Ok(None) => status.template = "absent".into(),
                Err(e) => {
                    status.template = "unknown".into();
                    status.error = Some(e.to_string());
                }
            },
        }
        status
    }
}

/// A finished template of that name, if the target has one.
async fn existing(inner: &Inner, name: &str) -> Result<Option<TemplateInfo>, BackendError> {
    let row = inner
        .admin()
        .await?
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1 AND datistemplate",
            &[&name],
        )
        .await
        .map_err(db_err)?;
    let comment: Option<String> = row.and_then(|r| r.get(0));
    let mark = comment
        .as_deref()
        .and_then(|c| c.strip_prefix(TEMPLATE_MARK))
        .and_then(|json| serde_json::from_str::<Mark>(json).ok());
    Ok(mark.map(|m| TemplateInfo {
        name: name.to_owned(),
        hash: m.hash,
        warnings: m.warnings,
    }))
}

/// Builds under the target-wide advisory lock of this template, unless another process
/// finished it meanwhile.
async fn build_once(
    inner: &Inner,
    bp: &Blueprint,
    hash: &str,
) -> Result<TemplateInfo, BackendError> {
    let name = template_name(bp, hash);
    if let Some(t) = existing(inner, &name).await? {
        return Ok(t);
    }
    let lock = inner.admin().await?;
    let key = lock_key(&name);
    lock.execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(db_err)?;
    let outcome = build_locked(inner, bp, hash, &name).await;
    let _ = lock.execute("SELECT pg_advisory_unlock($1)", &[&key]).await;
    outcome
}

async fn build_locked(
    inner: &Inner,
    bp: &Blueprint,
    hash: &str,
    name: &str,
) -> Result<TemplateInfo, BackendError> {
    if let Some(t) = existing(inner, name).await? {
        return Ok(t);
    }
    let started = std::time::Instant::now();
    match build(inner, bp, hash, name).await {
        Ok(t) => {
            tracing::info!(blueprint = %bp.name, template = %name, ms = started.elapsed().as_millis() as u64, "template built");
            Ok(t)
        }
        Err(e) => {
            // A failed build leaves nothing.
            let conn = inner.admin().await?;
            conn.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(name)
            ))
            .await
            .map_err(db_err)?;
            Err(e)
        }
    }
}

fn lock_key(name: &str) -> i64 {
    crate::advisory_key("template", name)
}

fn blueprint_error(bp: &Blueprint, e: ScriptError) -> BackendError {
    BackendError::Blueprint {
        blueprint: bp.name.to_string(),
        message: e.to_string(),
    }
}

async fn build(
    inner: &Inner,
    bp: &Blueprint,
    hash: &str,
    name: &str,
) -> Result<TemplateInfo, BackendError> {
    let admin = inner.admin().await?;
    let builder = quote(BUILDER_ROLE);
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN \
             CREATE ROLE {builder} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; \
             COMMENT ON ROLE {builder} IS 'previewdb: owns template objects'; END IF; END $$",
            lit = escape_literal(BUILDER_ROLE)
        ))
        .await
        .map_err(db_err)?;
    if !inner.server().await?.superuser {
        admin
            .batch_execute(&format!("GRANT {builder} TO CURRENT_USER"))
            .await
            .map_err(db_err)?;
    }
    // Leftovers of a build interrupted by a crash (we hold the build lock, so nobody is on it).
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(name)
        ))
        .await
        .map_err(db_err)?;
    // The template database itself belongs to the admin, not the builder: `REASSIGN OWNED BY`
    // in a clone also moves the builder's shared objects (databases), which would hand every
    // template to that clone's role.
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote(name)
        ))
        .await
        .map_err(db_err)?;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {n} FROM PUBLIC; GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {n} TO {builder}; \
             COMMENT ON DATABASE {n} IS {m};",
            n = quote(name),
            m = escape_literal(&format!("{BUILDING_MARK}{}:{hash}", bp.name))
        ))
        .await
        .map_err(db_err)?;
    inner
        .connect_db(name)
        .await?
        .batch_execute(&format!(
            "GRANT CREATE, USAGE ON SCHEMA public TO {builder}"
        ))
        .await
        .map_err(db_err)?;

    // Extensions need the admin; everything else runs as the builder.
    if !bp.extensions.is_empty() {
        let client = inner.connect_db(name).await?;
        for ext in &bp.extensions {
            client
                .batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {}", ext.quoted()))
                .await
                .map_err(|e| BackendError::Blueprint {
                    blueprint: bp.name.to_string(),
                    message: format!("extension {ext}: {}", db_err(e)),
                })?;
        }
    }
    let session = migrations::Session::new(&inner.db_server(name), BUILDER_ROLE);
    let warnings = load(bp, &session).await?;
    let client = inner.connect_db(name).await?;
    client.batch_execute("ANALYZE").await.map_err(db_err)?;
    drop(client);

    let mark = Mark {
        blueprint: bp.name.to_string(),
        hash: hash.to_owned(),
        warnings: warnings.clone(),
        built_at: Some(chrono::Utc::now()),
    };
    let mark = format!(
        "{TEMPLATE_MARK}{}",
        serde_json::to_string(&mark).expect("mark serialises")
    );
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            quote(name)
        ))
        .await
        .map_err(db_err)?;
    admin
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", &[&name])
        .await
        .map_err(db_err)?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {n} IS_TEMPLATE true; COMMENT ON DATABASE {n} IS {m};",
            n = quote(name),
            m = escape_literal(&mark)
        ))
        .await
        .map_err(db_err)?;
    Ok(TemplateInfo {
        name: name.to_owned(),
        hash: hash.to_owned(),
        warnings,
    })
}

/// Runs a blueprint's files through `session`: its dump, its migrations (recorded in their
/// tool's history) and its seeds. Returns the statements skipped as warnings.
pub(super) async fn load(
    bp: &Blueprint,
    session: &migrations::Session,
) -> Result<Vec<String>, BackendError> {
    let mut warnings = vec![];
    let tolerant = Policy {
        tolerate_missing_roles: true,
    };
    if let Some(schema) = &bp.schema {
        let script =
            Script::parse(&schema.name, &schema.text).map_err(|e| blueprint_error(bp, e))?;
        let client = session.connect().await.map_err(db_err)?;
        let report = sqlexec::run(&client, &script, Mode::Autocommit, &tolerant)
            .await
            .map_err(|e| blueprint_error(bp, e))?;
        warnings.extend(report.warnings);
    }
    migrations::apply(bp.format, session, &bp.migrations)
        .await
        .map_err(|e| blueprint_error(bp, e))?;
    for seed in &bp.seeds {
        // A connection per file: seed scripts may change session settings.
        let client = session.connect().await.map_err(db_err)?;
        if seed.name.ends_with(".csv") {
            let table = seed_table(&seed.name)
                .map_err(|m| blueprint_error(bp, ScriptError::local(&seed.name, 0, "", m)))?;
            sqlexec::copy_csv(&client, &seed.name, &table, seed.text.as_bytes())
                .await
                .map_err(|e| blueprint_error(bp, e))?;
        } else {
            let script =
                Script::parse(&seed.name, &seed.text).map_err(|e| blueprint_error(bp, e))?;
            let report = sqlexec::run(&client, &script, Mode::Transaction, &tolerant)
                .await
                .map_err(|e| blueprint_error(bp, e))?;
            warnings.extend(report.warnings);
        }
    }
    Ok(warnings)
}

/// Drops templates and pooled databases of hashes not in `keep`, and leftovers of builds and
/// pool fills that nobody is running. Only objects marked as previewdb's are considered, and
/// those of blueprints not in `known` only when long unused: replicas may run other configs.
pub async fn collect_garbage(
    inner: &Inner,
    keep: &[String],
    known: &[String],
) -> Result<Vec<String>, BackendError> {
    let admin = inner.admin().await?;
    let marked = inner.marked_databases("previewdb:").await?;
    let stale_template = |comment: &str| {
        comment
            .strip_prefix(TEMPLATE_MARK)
            .and_then(|json| serde_json::from_str::<Mark>(json).ok())
            .map(|m| {
                let old = m
                    .built_at
                    .is_none_or(|t| chrono::Utc::now() - t > FOREIGN_TEMPLATE_GRACE);
                !keep.contains(&m.hash) && (known.contains(&m.blueprint) || old)
            })
    };
    // Pool entries live as long as the template they were cloned from.
    let surviving: Vec<String> = marked
        .iter()
        .filter_map(|(_, c)| {
            let m: Mark = serde_json::from_str(c.strip_prefix(TEMPLATE_MARK)?).ok()?;
            (stale_template(c) == Some(false)).then_some(m.hash)
        })
        .collect();
    let mut dropped = vec![];
    for (name, comment) in marked.iter() {
        let stale = if let Some(stale) = stale_template(comment) {
            stale
        } else if comment.starts_with(BUILDING_MARK) {
            // Being built right now if its build lock is held.
            let free: bool = admin
                .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(name)])
                .await
                .map_err(db_err)?
                .get(0);
            if free {
                let _ = admin
                    .execute("SELECT pg_advisory_unlock($1)", &[&lock_key(name)])
                    .await;
            }
            free
        } else {
            super::pool::is_stale(comment, &surviving)
        };
        if !stale {
            continue;
        }
        let n = quote(name);
        let dropped_ok = admin
            .batch_execute(&format!("ALTER DATABASE {n} IS_TEMPLATE false"))
            .await
            .and(
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
                    .await,
            );
        match dropped_ok {
            Ok(()) => {
                if super::pool::is_pool_mark(comment) {
                    let _ = admin
                        .batch_execute(&format!("DROP ROLE IF EXISTS {n}"))
                        .await;
                }
                dropped.push(name.clone());
            }
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "could not drop a stale database")
            }
        }
    }
    Ok(dropped)
}
