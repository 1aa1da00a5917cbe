//! Background work: reconciling what a stopped process left unfinished, warming blueprints'
//! templates and pools, sweeping expired environments, enforcing size quotas and collecting
//! unused templates and leftovers, every `interval`.

use crate::environments::Environments;
use std::sync::Arc;
use std::time::Duration;

/// Set to anything but `0` to start without warming blueprints: the benchmark times a first,
/// cold template build, which warming at start would already have done.
pub const NO_WARM_UP_ENV: &str = "PREVIEWDB_NO_WARM_UP";

pub async fn run(envs: Arc<Environments>, interval: Duration) {
    if std::env::var_os(NO_WARM_UP_ENV).is_none_or(|v| v == "0") {
        tokio::spawn(warm_up(envs.clone()));
    }
    loop {
        match envs.enforce_quotas().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "size quotas: environments locked or unlocked"),
            Err(e) => tracing::warn!(error = %e, "size quota check failed"),
        }
        match envs.reconcile().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "reconciled unfinished environments"),
            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
        }
        match envs.sweep().await {
            Ok(r) if !r.deleted.is_empty() || !r.failed.is_empty() => {
                tracing::info!(
                    deleted = r.deleted.len(),
                    failed = r.failed.len(),
                    "swept expired environments"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
        tokio::time::sleep(interval).await;
        match envs.collect_garbage().await {
            Ok(d) if !d.is_empty() => {
                tracing::info!(dropped = ?d, "dropped unused templates and pool databases")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// Builds every configured blueprint's template and fills its pool, so the first caller is
/// served warm.
async fn warm_up(envs: Arc<Environments>) {
    let names: Vec<String> = envs.blueprints().map(|b| b.name.to_string()).collect();
    for name in names {
        match envs.prepare_blueprint(&name).await {
            Ok(_) => tracing::info!(blueprint = %name, "blueprint prepared"),
            Err(e) => {
                tracing::warn!(blueprint = %name, error = %e, "blueprint could not be prepared")
            }
        }
    }
}
