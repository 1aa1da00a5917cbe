//! `database` isolation: each environment is a database owned by a role of its own (both of
//! one name), taken from the warm pool when it has one ready, else cloned from its blueprint's
//! template (or empty) on demand; the caller's migrations then run as that role. A reset drops
//! the database and clones it again, keeping the role and its password.

use super::admin::{self, db_err, Object};
use super::marks;
use super::names::EnvNames;
use super::pool::{self, WarmPool};
use super::target::Inner;
use super::template::{self, TemplateInfo, Templates};
use crate::backend::{BackendError, ProvisionRequest, Secret};
use crate::blueprint::Blueprint;
use crate::bounds::Deadline;
use crate::domain::PgIdent;
use std::sync::Arc;
use tokio_postgres::error::SqlState;

/// Creates the environment's role and database, then runs the caller's migrations.
pub(super) async fn make(
    inner: &Arc<Inner>,
    templates: &Templates,
    pool: &Arc<WarmPool>,
    req: &ProvisionRequest,
    db: &PgIdent,
    role: &PgIdent,
) -> Result<Secret, BackendError> {
    let password = match &req.blueprint {
        None => {
            let _slot = inner.queue.admit(&req.deadline).await?;
            create_cold(inner, req, None, db, role).await?
        }
        Some(bp) => {
            let tpl = templates.ensure(inner, bp, &req.deadline).await?;
            let warm = pool::claim(inner, bp, &tpl, req, db, role).await?;
            pool.refill_in_background(inner.clone(), bp.clone(), tpl.clone());
            match warm {
                Some(password) => password,
                None => clone_on_demand(inner, templates, bp, tpl, req, db, role).await?,
            }
        }
    };
    if !req.migrations.is_empty() {
        let env = EnvNames {
            db: db.clone(),
            role: role.clone(),
            in_schema: false,
        };
        inner
            .apply_migrations(
                &env,
                req.blueprint.as_deref(),
                &req.migrations,
                &password,
                &req.deadline,
            )
            .await?;
    }
    Ok(password)
}

/// Clones `tpl` for the environment once it has its place in the target's queue. A template
/// another replica (with another configuration) collected meanwhile is built again, the build
/// taking a place of its own.
async fn clone_on_demand(
    inner: &Arc<Inner>,
    templates: &Templates,
    bp: &Arc<Blueprint>,
    tpl: TemplateInfo,
    req: &ProvisionRequest,
    db: &PgIdent,
    role: &PgIdent,
) -> Result<Secret, BackendError> {
    let slot = inner.queue.admit(&req.deadline).await?;
    match create_cold(inner, req, Some(&tpl), db, role).await {
        Err(BackendError::Failed {
            sqlstate: Some(SqlState::INVALID_CATALOG_NAME),
            ..
        }) => {
            drop(slot);
            templates.forget(&tpl.hash);
            inner.teardown(db, role).await?;
            let tpl = templates.ensure(inner, bp, &req.deadline).await?;
            let _slot = inner.queue.admit(&req.deadline).await?;
            create_cold(inner, req, Some(&tpl), db, role).await
        }
        outcome => outcome,
    }
}

/// Makes the role and its database from scratch: empty, or cloned from `template`.
async fn create_cold(
    inner: &Inner,
    req: &ProvisionRequest,
    template: Option<&TemplateInfo>,
    db: &PgIdent,
    role: &PgIdent,
) -> Result<Secret, BackendError> {
    let conn = inner.admin().await?;
    let (password, attrs) = inner.login_attributes(req.expires_at);
    let mark = marks::env(req.id);
    conn.batch_execute(&format!(
        "CREATE ROLE {} {attrs}; {};",
        role.quoted(),
        admin::comment_on(Object::Role, role.as_str(), &mark),
    ))
    .await
    .map_err(db_err)?;
    inner.grant_membership(&conn, role).await?;
    create_database(inner, &conn, db, role, template, &mark).await?;
    Ok(password)
}

/// The environment's database, owned by its role, empty or cloned from `template` (and then
/// all its objects handed to the role), closed to PUBLIC and marked with `mark`.
async fn create_database(
    inner: &Inner,
    conn: &tokio_postgres::Client,
    db: &PgIdent,
    role: &PgIdent,
    template: Option<&TemplateInfo>,
    mark: &str,
) -> Result<(), BackendError> {
    match template {
        Some(t) => template::clone_database(inner, conn, db, role, t).await?,
        None => conn
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {}",
                db.quoted(),
                role.quoted()
            ))
            .await
            .map_err(db_err)?,
    }
    conn.batch_execute(&format!(
        "{}; {};",
        admin::revoke_public(db.as_str()),
        admin::comment_on(Object::Database, db.as_str(), mark),
    ))
    .await
    .map_err(db_err)?;
    if template.is_some() {
        template::take_ownership(inner, db, role).await?;
    }
    Ok(())
}

/// Back to the blueprint: the database is dropped and made again (empty without one), the
/// role and its password kept.
pub(super) async fn reset(
    inner: &Arc<Inner>,
    templates: &Templates,
    env: &EnvNames,
    blueprint: Option<&Arc<Blueprint>>,
    deadline: &Deadline,
) -> Result<(), BackendError> {
    let (db, role) = (&env.db, &env.role);
    let template = match blueprint {
        Some(bp) => Some(templates.ensure(inner, bp, deadline).await?),
        None => None,
    };
    let _slot = inner.queue.admit(deadline).await?;
    let conn = inner.admin().await?;
    let comment = admin::database_comment(&conn, db.as_str())
        .await
        .map_err(db_err)?
        .ok_or_else(|| BackendError::failed(format!("database {db} is missing")))?;
    let mark = marks::carried_over(comment);
    super::teardown::drop_database(inner, db.as_str()).await?;
    create_database(inner, &conn, db, role, template.as_ref(), &mark).await
}
