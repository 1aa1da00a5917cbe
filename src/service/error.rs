//! Errors, and which type is used where.
//!
//! | type | raised by | carries |
//! |---|---|---|
//! | [`InvalidInput`](crate::domain::InvalidInput) | `domain` parsers, the service's plan, backends' `plan` | the request field at fault and why |
//! | [`ScriptError`](crate::sqlexec::ScriptError) | `sqlexec`: a SQL file that failed | file, line, statement, SQLSTATE, server message |
//! | [`StoreError`](crate::store::StoreError) | `store`: the control store | the driver's error, its cause chain intact |
//! | [`BackendError`](crate::backend::BackendError) | backends: a target | by cause: unavailable, limit, busy, deadline, failed with the server's SQLSTATE, blueprint, migration |
//! | [`ServiceError`] | `service`: every operation | one of the above as its source, or the service's own refusal |
//! | [`ApiError`](crate::http::ApiError) | `http` only | status, stable `code`, detail: problem+json |
//! | `anyhow::Error` | start-up and configuration only | the context chain, printed once at exit |
//!
//! Each layer converts the one below with `From` (`?`), keeping it as the source. What a
//! failure *is* — the HTTP status and code, the metrics outcome — is decided once, by
//! [`ServiceError::class`]. Callers are answered the outer message; the whole cause chain is
//! logged where a failure is the service's or a target's.

use crate::backend::BackendError;
use crate::domain::InvalidInput;
use crate::service::lease::LeaseError;
use crate::store::StoreError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("no environment matches {0:?}")]
    NotFound(String),
    /// Out of the caller's reach (its token's keys, targets or blueprints).
    #[error("{0}")]
    Forbidden(String),
    /// The key's environment exists with other settings.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotReady(String),
    /// The target holds its configured maximum of environments.
    #[error("{0}")]
    AtCapacity(String),
    /// Something the service waits on is busy or gone for now (another operation on the key,
    /// a lost lease); the caller may retry.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// The work did not finish in time; it was cancelled and rolled back.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A DELETE of the key stopped this operation.
    #[error("{0}")]
    Cancelled(String),
    /// The environment's logins are refused (e.g. it is over its size quota).
    #[error("{0}")]
    Locked(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A fault of the service itself (a task that panicked, a password that cannot be opened).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// What a failure is, for whoever answers or counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Invalid,
    NotFound,
    Forbidden,
    Conflict,
    NotReady,
    Cancelled,
    Locked,
    AtCapacity,
    /// The target's queue of heavy work is full.
    QueueFull {
        retry_after: Duration,
    },
    Unavailable {
        retry_after: Duration,
    },
    DeadlineExceeded,
    BlueprintFailed,
    MigrationFailed,
    /// A target answered with an error.
    ProvisioningFailed,
    Internal,
}

/// When a store or target that did not answer is worth asking again.
const STORE_RETRY: Duration = Duration::from_secs(5);

impl ServiceError {
    pub fn class(&self) -> Class {
        match self {
            ServiceError::Invalid(_) => Class::Invalid,
            ServiceError::NotFound(_) => Class::NotFound,
            ServiceError::Forbidden(_) => Class::Forbidden,
            ServiceError::Conflict(_) => Class::Conflict,
            ServiceError::NotReady(_) => Class::NotReady,
            ServiceError::AtCapacity(_) => Class::AtCapacity,
            ServiceError::Unavailable { retry_after, .. } => Class::Unavailable {
                retry_after: *retry_after,
            },
            ServiceError::DeadlineExceeded(_) => Class::DeadlineExceeded,
            ServiceError::Cancelled(_) => Class::Cancelled,
            ServiceError::Locked(_) => Class::Locked,
            ServiceError::Store(e) => store_class(e),
            ServiceError::Backend(e) => backend_class(e),
            ServiceError::Internal(_) => Class::Internal,
        }
    }

    /// How the operation ended, for `previewdb_operations_total`: the caller's doing
    /// (`rejected`, `conflict`), a limit (`limit_reached`), or the service's or a target's
    /// (`error`), which is what to alert on.
    pub fn outcome(&self) -> &'static str {
        match self.class() {
            Class::Conflict | Class::Cancelled => "conflict",
            Class::Invalid
            | Class::NotFound
            | Class::Forbidden
            | Class::NotReady
            | Class::Locked
            | Class::MigrationFailed => "rejected",
            Class::AtCapacity | Class::QueueFull { .. } => "limit_reached",
            Class::Unavailable { .. }
            | Class::DeadlineExceeded
            | Class::ProvisioningFailed
            | Class::BlueprintFailed
            | Class::Internal => "error",
        }
    }

    /// The message and every cause under it, `: `-separated, for the log.
    pub fn chain(&self) -> String {
        crate::pgconn::describe(self)
    }
}

fn store_class(e: &StoreError) -> Class {
    match e {
        StoreError::Unavailable(_) => Class::Unavailable {
            retry_after: STORE_RETRY,
        },
        // No answer from the server at all (connection closed, timed out): worth a retry.
        StoreError::Query(q) if q.as_db_error().is_none() => Class::Unavailable {
            retry_after: STORE_RETRY,
        },
        StoreError::Query(_) | StoreError::Unreadable(_) => Class::Internal,
    }
}

fn backend_class(e: &BackendError) -> Class {
    match e {
        BackendError::Unavailable { retry_after, .. } => Class::Unavailable {
            retry_after: retry_after.unwrap_or(STORE_RETRY),
        },
        BackendError::LimitReached { .. } => Class::AtCapacity,
        BackendError::Invalid(_) => Class::Invalid,
        BackendError::Failed { .. } => Class::ProvisioningFailed,
        BackendError::Blueprint { .. } => Class::BlueprintFailed,
        BackendError::Migration { .. } => Class::MigrationFailed,
        BackendError::Busy { retry_after, .. } => Class::QueueFull {
            retry_after: *retry_after,
        },
        BackendError::Deadline { .. } => Class::DeadlineExceeded,
    }
}

impl From<LeaseError> for ServiceError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Busy => ServiceError::Unavailable {
                message: "another operation on this environment is still running; retry later"
                    .into(),
                retry_after: Duration::from_secs(2),
            },
            LeaseError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = ServiceError::from(BackendError::Unavailable {
            message: "connection refused".into(),
            retry_after: None,
        });
        assert_eq!(e.chain(), "target unavailable: connection refused");
        assert_eq!(
            e.class(),
            Class::Unavailable {
                retry_after: STORE_RETRY
            }
        );
        assert_eq!(e.outcome(), "error");
    }

    #[test]
    fn the_callers_doing_is_not_counted_as_an_error() {
        let invalid = ServiceError::from(BackendError::from(InvalidInput::new("isolation", "x")));
        assert_eq!(invalid.to_string(), "isolation: x");
        assert_eq!(invalid.outcome(), "rejected");
        let migration = ServiceError::from(BackendError::Migration {
            message: "V2__x.sql:1: boom".into(),
        });
        assert_eq!(migration.outcome(), "rejected");
        let busy = ServiceError::from(BackendError::Busy {
            message: "target busy".into(),
            retry_after: Duration::from_secs(3),
        });
        assert_eq!(busy.outcome(), "limit_reached");
    }
}
