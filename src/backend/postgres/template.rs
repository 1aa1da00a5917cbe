//! Templates: a blueprint built once per target into a database named by its content hash,
//! marked `IS_TEMPLATE true, ALLOW_CONNECTIONS false`, and cloned for every environment.
//!
//! Builds run as a dedicated non-superuser role, so that a dump's `OWNER TO` lines for roles
//! this cluster lacks are skipped with a warning, and every clone can hand all objects to its
//! environment's role with `REASSIGN OWNED`. The builder *logs in* (its password is derived
//! from the service's encryption key, so every replica knows it): the files run in a session
//! that cannot become anyone else. The template database itself is the admin's.
//!
//! Concurrent requests for one hash build it once: a task per build that its callers wait for
//! (a caller that gives up does not stop a build others need), an in-process mutex per hash,
//! and an advisory lock on the target across replicas. A build runs under a `pdb_bld_` name and
//! is renamed to its `pdb_tpl_` name when finished (see `names`); its mark records what it was
//! built from (see `marks`). Cloning a template for an environment or a pool entry is here too.

use super::admin::{self, db_err, quote, Object};
use super::lock::AdvisoryLock;
use super::marks::{self, TemplateMark};
use super::names;
use super::target::Inner;
use crate::backend::{BackendError, BlueprintStatus};
use crate::blueprint::{seed_table, Blueprint};
use crate::bounds::Deadline;
use crate::domain::PgIdent;
use crate::sqlexec::{self, migrations, Mode, Policy, Script, ScriptError};
use postgres_protocol::escape::escape_literal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_postgres::Client;

/// Owns every object of a template until a clone reassigns them.
const BUILDER_ROLE: &str = "previewdb_builder";
/// The advisory-lock namespace of template builds, keyed by the build's name.
pub(super) const BUILD_LOCK: &str = "template";

#[derive(Debug, Clone)]
pub(super) struct TemplateInfo {
    pub name: String,
    pub hash: String,
    pub warnings: Vec<String>,
    /// On disk, which decides how it is best cloned (see `CloneStrategy`).
    pub size_bytes: i64,
}

#[derive(Default)]
enum Slot {
    #[default]
    Unknown,
    Ready(TemplateInfo),
    /// A build that failed on the blueprint's own content: the same hash fails the same way.
    Failed(String),
}

/// What this process knows of each template, by hash.
#[derive(Default)]
pub(super) struct Templates {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl Templates {
    /// Forgets a template another process dropped, so the next `ensure` builds it again.
    pub(super) fn forget(&self, hash: &str) {
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

    /// The ready template of `bp` on this target, building it first if needed; waits for a
    /// build until `deadline`.
    pub(super) async fn ensure(
        &self,
        inner: &Arc<Inner>,
        bp: &Arc<Blueprint>,
        deadline: &Deadline,
    ) -> Result<TemplateInfo, BackendError> {
        let hash = bp.hash_for(inner.server().await?.major);
        let slot = self.slot(&hash);
        if let Ok(Slot::Ready(t)) = slot.try_lock().as_deref() {
            return Ok(t.clone());
        }
        // A task of its own: a caller that gives up does not stop a build others need.
        // It logs in the span of the request that started it.
        let build = fill_slot(slot, inner.clone(), bp.clone(), hash);
        let build = tokio::spawn(tracing::Instrument::in_current_span(build));
        match deadline.run(build).await {
            Ok(joined) => {
                joined.map_err(|e| BackendError::failed(format!("template build: {e}")))?
            }
            Err(e) => Err(BackendError::Deadline {
                message: format!("waiting for the template to be built: {e}"),
            }),
        }
    }

    pub(super) async fn status(
        &self,
        inner: &Inner,
        bp: &Blueprint,
        hash: &str,
    ) -> BlueprintStatus {
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
            Ok(Slot::Unknown) => match existing(inner, &names::template(bp, hash)).await {
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

/// Settles `slot` (locked meanwhile): what it already holds, or the outcome of a build bounded
/// by the target's build timeout. A failure of the blueprint's own is kept, so that the next
/// request fails at once.
async fn fill_slot(
    slot: Arc<tokio::sync::Mutex<Slot>>,
    inner: Arc<Inner>,
    bp: Arc<Blueprint>,
    hash: String,
) -> Result<TemplateInfo, BackendError> {
    let mut slot = slot.lock_owned().await;
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
    let deadline = Deadline::after(inner.build_timeout);
    let outcome = match deadline
        .run(build_once(&inner, &bp, &hash, &deadline))
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => Err(BackendError::Deadline {
            message: format!(
                "building the template of blueprint {:?}: {e}",
                bp.name.as_str()
            ),
        }),
    };
    match &outcome {
        Ok(t) => *slot = Slot::Ready(t.clone()),
        Err(BackendError::Blueprint { message, .. }) => *slot = Slot::Failed(message.clone()),
        Err(_) => {}
    }
    outcome
}

/// A finished template of that name, if the target has one.
async fn existing(inner: &Inner, name: &str) -> Result<Option<TemplateInfo>, BackendError> {
    let row = inner
        .admin()
        .await?
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database'), pg_database_size(oid) FROM pg_database \
             WHERE datname = $1 AND datistemplate",
            &[&name],
        )
        .await
        .map_err(db_err)?;
    let size_bytes: i64 = row.as_ref().map_or(0, |r| r.get(1));
    let comment: Option<String> = row.and_then(|r| r.get(0));
    let mark = comment.as_deref().and_then(TemplateMark::parse);
    Ok(mark.map(|m| TemplateInfo {
        name: name.to_owned(),
        hash: m.hash,
        warnings: m.warnings,
        size_bytes,
    }))
}

/// Builds under the target-wide advisory lock of this template, unless another process
/// finished it meanwhile.
async fn build_once(
    inner: &Inner,
    bp: &Blueprint,
    hash: &str,
    deadline: &Deadline,
) -> Result<TemplateInfo, BackendError> {
    let name = names::template(bp, hash);
    if let Some(t) = existing(inner, &name).await? {
        return Ok(t);
    }
    let building = names::build(bp, hash);
    let _lock = AdvisoryLock::acquire(&inner.admin_server, BUILD_LOCK, &building).await?;
    if let Some(t) = existing(inner, &name).await? {
        return Ok(t);
    }
    let _slot = inner.queue.admit(deadline).await?;
    let started = std::time::Instant::now();
    match build(inner, bp, hash, &building, &name).await {
        Ok(t) => {
            tracing::info!(blueprint = %bp.name, template = %name, ms = started.elapsed().as_millis() as u64, "template built");
            Ok(t)
        }
        Err(e) => {
            // A failed build leaves nothing.
            super::teardown::drop_database(inner, &building).await?;
            Err(e)
        }
    }
}

fn blueprint_error(bp: &Blueprint, e: ScriptError) -> BackendError {
    BackendError::Blueprint {
        blueprint: bp.name.to_string(),
        message: e.to_string(),
    }
}

/// Builds `bp` into database `name` (under the build lock), renamed to `final_name` when done.
async fn build(
    inner: &Inner,
    bp: &Blueprint,
    hash: &str,
    name: &str,
    final_name: &str,
) -> Result<TemplateInfo, BackendError> {
    let admin = inner.admin().await?;
    ensure_builder(inner, &admin).await?;
    create_build_database(inner, &admin, bp, hash, name).await?;
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
    let session = migrations::Session::new(
        inner
            .db_server(name)
            .with_login(BUILDER_ROLE, inner.builder_password.expose()),
    );
    let warnings = load(bp, &session).await?;
    let client = inner.connect_db(name).await?;
    client.batch_execute("ANALYZE").await.map_err(db_err)?;
    drop(client);
    let mark = TemplateMark {
        blueprint: bp.name.to_string(),
        hash: hash.to_owned(),
        warnings,
        built_at: Some(chrono::Utc::now()),
    };
    finish(&admin, name, final_name, mark).await
}

/// The role that builds templates, able to log in with the password every replica derives (so
/// any verifier set here lets each log in). Concurrent builds (of other blueprints, or on other
/// replicas) would update the role's row at once ("tuple concurrently updated"): one at a time.
async fn ensure_builder(inner: &Inner, admin: &Client) -> Result<(), BackendError> {
    let verifier =
        postgres_protocol::password::scram_sha_256(inner.builder_password.expose().as_bytes());
    let _role_lock = AdvisoryLock::acquire(&inner.admin_server, "builder", BUILDER_ROLE).await?;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN \
             CREATE ROLE {builder} NOLOGIN {attrs}; {comment}; END IF; END $$; \
             ALTER ROLE {builder} LOGIN {attrs} PASSWORD {verifier}",
            lit = escape_literal(BUILDER_ROLE),
            builder = quote(BUILDER_ROLE),
            attrs = admin::UNPRIVILEGED,
            comment = admin::comment_on(Object::Role, BUILDER_ROLE, marks::BUILDER),
            verifier = escape_literal(&verifier)
        ))
        .await
        .map_err(db_err)?;
    if !inner.server().await?.superuser {
        admin
            .batch_execute(&admin::grant_to_admin(BUILDER_ROLE))
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// An empty database `name` for a build, the builder allowed to create in it.
async fn create_build_database(
    inner: &Inner,
    admin: &Client,
    bp: &Blueprint,
    hash: &str,
    name: &str,
) -> Result<(), BackendError> {
    // Leftovers of a build interrupted by a crash (we hold the build lock, so nobody is on it).
    admin::drop_database(admin, name).await.map_err(db_err)?;
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
            "{}; GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}; {};",
            admin::revoke_public(name),
            quote(name),
            quote(BUILDER_ROLE),
            admin::comment_on(Object::Database, name, &marks::building(bp, hash)),
        ))
        .await
        .map_err(db_err)?;
    inner
        .connect_db(name)
        .await?
        .batch_execute(&format!(
            "GRANT CREATE, USAGE ON SCHEMA public TO {}",
            quote(BUILDER_ROLE)
        ))
        .await
        .map_err(db_err)
}

/// Closes the build `name`, then marks it a template and renames it to `final_name` in one
/// transaction: a `pdb_tpl_` database is always complete.
async fn finish(
    admin: &Client,
    name: &str,
    final_name: &str,
    mark: TemplateMark,
) -> Result<TemplateInfo, BackendError> {
    admin::allow_connections(admin, name, false)
        .await
        .map_err(db_err)?;
    let finish = format!(
        "BEGIN; ALTER DATABASE {n} RENAME TO {t}; ALTER DATABASE {t} IS_TEMPLATE true; \
         {comment}; COMMIT;",
        n = quote(name),
        t = quote(final_name),
        comment = admin::comment_on(Object::Database, final_name, &mark.comment()),
    );
    admin::rename_when_free(admin, name, &finish).await?;
    let size_bytes: i64 = admin
        .query_one("SELECT pg_database_size($1::text)", &[&final_name])
        .await
        .map_err(db_err)?
        .get(0);
    Ok(TemplateInfo {
        name: final_name.to_owned(),
        hash: mark.hash,
        warnings: mark.warnings,
        size_bytes,
    })
}

/// Clones `template` into `db`, owned by `owner`.
pub(super) async fn clone_database(
    inner: &Inner,
    conn: &Client,
    db: &PgIdent,
    owner: &PgIdent,
    template: &TemplateInfo,
) -> Result<(), BackendError> {
    let strategy = match inner.server().await?.major {
        15.. => format!(
            " STRATEGY {}",
            inner
                .cfg
                .clone_strategy
                .for_size(template.size_bytes.max(0) as u64)
        ),
        _ => String::new(),
    };
    // CREATE DATABASE cannot share a simple query with anything (it would be a transaction).
    conn.batch_execute(&format!(
        "CREATE DATABASE {} TEMPLATE {} OWNER {}{strategy}",
        db.quoted(),
        quote(&template.name),
        owner.quoted()
    ))
    .await
    .map_err(db_err)
}

/// Objects in a clone keep the template's owner: hand them all to the environment's role, so
/// its own migrations can ALTER or DROP anything.
pub(super) async fn take_ownership(
    inner: &Inner,
    db: &PgIdent,
    role: &PgIdent,
) -> Result<(), BackendError> {
    inner
        .connect_db(db.as_str())
        .await?
        .batch_execute(&format!(
            "REASSIGN OWNED BY {} TO {}",
            quote(BUILDER_ROLE),
            role.quoted()
        ))
        .await
        .map_err(db_err)
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
    // A plain read: builds are rare, and the files are the blueprint's own.
    let contents = bp.contents().map_err(|message| BackendError::Blueprint {
        blueprint: bp.name.to_string(),
        message,
    })?;
    if let Some(schema) = &contents.schema {
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
    for seed in &contents.seeds {
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
