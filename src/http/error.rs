//! The one error type of the API, rendered as RFC 9457 `application/problem+json` with a stable
//! machine-readable `code`.

use crate::environments::ServiceError;
use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("https://previewdb.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut res = (self.status, body.to_string()).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use StatusCode as S;
        match e {
            ServiceError::Invalid(i) => ApiError::invalid(i.to_string()),
            ServiceError::NotFound(_) => ApiError::not_found(e.to_string()),
            ServiceError::Conflict(m) => ApiError::new(S::CONFLICT, "settings_conflict", m),
            ServiceError::NotReady(m) => ApiError::new(S::CONFLICT, "not_ready", m),
            ServiceError::AtCapacity(m) => ApiError::new(S::TOO_MANY_REQUESTS, "limit_reached", m),
            ServiceError::Unavailable {
                message,
                retry_after,
            } => ApiError {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", message)
            },
            ServiceError::ProvisioningFailed(m) => {
                ApiError::new(S::BAD_GATEWAY, "provisioning_failed", m)
            }
            ServiceError::BlueprintFailed(m) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "blueprint_failed", m)
            }
            ServiceError::MigrationFailed(m) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "migration_failed", m)
            }
            ServiceError::DeadlineExceeded(m) => {
                ApiError::new(S::GATEWAY_TIMEOUT, "deadline_exceeded", m)
            }
            ServiceError::QueueFull {
                message,
                retry_after,
            } => ApiError {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..ApiError::new(S::SERVICE_UNAVAILABLE, "queue_full", message)
            },
            ServiceError::Cancelled(m) => ApiError::new(S::CONFLICT, "cancelled", m),
            ServiceError::Locked(m) => ApiError::new(S::CONFLICT, "locked", m),
            ServiceError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        use StatusCode as S;
        let (status, code) = match &r {
            JsonRejection::JsonSyntaxError(_) => (S::BAD_REQUEST, "malformed_json"),
            JsonRejection::JsonDataError(_) => (S::UNPROCESSABLE_ENTITY, "invalid_body"),
            JsonRejection::MissingJsonContentType(_) => {
                (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ if r.status() == S::PAYLOAD_TOO_LARGE => (S::PAYLOAD_TOO_LARGE, "body_too_large"),
            _ => (r.status(), "bad_request"),
        };
        ApiError::new(status, code, r.body_text())
    }
}
