//! The one error type of the API, rendered as RFC 9457 `application/problem+json` with a stable
//! machine-readable `code`.

use crate::service::{Class, ServiceError};
use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub(crate) fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
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
        let (status, code, retry_after) = match e.class() {
            Class::Invalid => (S::UNPROCESSABLE_ENTITY, "invalid_input", None),
            Class::NotFound => (S::NOT_FOUND, "not_found", None),
            Class::Forbidden => (S::FORBIDDEN, "forbidden", None),
            Class::Conflict => (S::CONFLICT, "settings_conflict", None),
            Class::NotReady => (S::CONFLICT, "not_ready", None),
            Class::Cancelled => (S::CONFLICT, "cancelled", None),
            Class::Locked => (S::CONFLICT, "locked", None),
            Class::AtCapacity => (S::TOO_MANY_REQUESTS, "limit_reached", None),
            Class::QueueFull { retry_after } => {
                (S::SERVICE_UNAVAILABLE, "queue_full", Some(retry_after))
            }
            Class::Unavailable { retry_after } => {
                (S::SERVICE_UNAVAILABLE, "unavailable", Some(retry_after))
            }
            Class::DeadlineExceeded => (S::GATEWAY_TIMEOUT, "deadline_exceeded", None),
            Class::BlueprintFailed => (S::UNPROCESSABLE_ENTITY, "blueprint_failed", None),
            Class::MigrationFailed => (S::UNPROCESSABLE_ENTITY, "migration_failed", None),
            Class::ProvisioningFailed => (S::BAD_GATEWAY, "provisioning_failed", None),
            Class::Internal => (S::INTERNAL_SERVER_ERROR, "internal", None),
        };
        if status.is_server_error() {
            tracing::warn!(code, error = %e.chain(), "request failed");
        }
        ApiError {
            retry_after: retry_after.map(|d| d.as_secs().max(1)),
            ..ApiError::new(status, code, e.to_string())
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
