//! `GET /openapi.json`: the hand-written OpenAPI 3.1 description of this API, served as is.
//! `tests/it/openapi.rs` holds it to what the server really answers.

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;

const DOCUMENT: &str = include_str!("openapi.json");

pub(super) async fn document() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT,
    )
}
