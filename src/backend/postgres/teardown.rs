//! Dropping what previewdb made, idempotently (interim: see the teardown branch).

use super::{db_err, quote, Inner};
use crate::backend::BackendError;

pub(super) async fn drop_database(inner: &Inner, name: &str) -> Result<(), BackendError> {
    let admin = inner.admin().await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(db_err)?
        .is_some();
    if !exists {
        return Ok(());
    }
    admin
        .batch_execute(&format!("ALTER DATABASE {} IS_TEMPLATE false", quote(name)))
        .await
        .map_err(db_err)?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(name)
        ))
        .await
        .map_err(db_err)
}

pub(super) async fn drop_role(inner: &Inner, name: &str) -> Result<(), BackendError> {
    let admin = inner.admin().await?;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote(name)))
        .await
        .map_err(db_err)
}
