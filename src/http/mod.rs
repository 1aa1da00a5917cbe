//! The REST API v1: routing, middleware, and the mapping of requests onto the services.

mod auth;
mod blueprints;
mod environments;
mod error;
mod events;
mod openapi;
mod paging;
mod storable;
mod system;

pub(crate) use error::ApiError;

use crate::domain::ApiToken;
use crate::service::Environments;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderName, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

#[derive(Clone)]
pub(crate) struct AppState {
    pub envs: Arc<Environments>,
    pub tokens: Arc<Vec<ApiToken>>,
}

/// `axum::extract::Query` whose rejections are problem+json (code `invalid_query`); a value
/// PostgreSQL cannot store is `invalid_input`.
pub(crate) struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::new(r.status(), "invalid_query", r.body_text()))?;
        storable::check_params(
            "query parameter",
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        let Query(v) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::new(r.status(), "invalid_query", r.body_text()))?;
        Ok(ApiQuery(v))
    }
}

/// `axum::extract::Path` whose rejections (e.g. bad percent-encoding) are problem+json (code
/// `invalid_path`); a value PostgreSQL cannot store is `invalid_input`.
pub(crate) struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(v) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::new(r.status(), "invalid_path", r.body_text()))?;
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::new(r.status(), "invalid_path", r.body_text()))?;
        storable::check_params(
            "path parameter",
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        Ok(ApiPath(v))
    }
}

/// `axum::Json` whose rejections are problem+json; a value PostgreSQL cannot store, anywhere in
/// the body, is `invalid_input` naming its field.
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Through a `Value` first: the NUL check must see every key and value, also those the
        // target type would refuse for another reason, and must come before any of them.
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        storable::check_json(&value)?;
        let v = T::deserialize(value).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })?;
        Ok(ApiJson(v))
    }
}

pub(crate) fn router(state: AppState, max_body_bytes: usize) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route(
            "/v1/environments",
            post(environments::create).get(environments::list),
        )
        .route(
            "/v1/environments/{ref}",
            get(environments::get).delete(environments::delete),
        )
        .route("/v1/environments/{ref}/extend", post(environments::extend))
        .route(
            "/v1/environments/{ref}/credentials",
            post(environments::rotate_credentials),
        )
        .route("/v1/environments/{ref}/reset", post(environments::reset))
        .route(
            "/v1/environments/{ref}/migrate",
            post(environments::migrate),
        )
        .route("/v1/environments/{ref}/events", get(events::of_environment))
        .route("/v1/events", get(events::all))
        .route("/v1/blueprints", get(blueprints::list))
        .route("/v1/blueprints/{name}", get(blueprints::get))
        .route("/v1/blueprints/{name}/prepare", post(blueprints::prepare))
        .route("/v1/sweep", post(system::sweep))
        .route("/v1/targets", get(system::targets))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe_request,
        ))
        // The span every line a request causes is logged in (spawned work carries it on, see
        // `service`); its own events are off: `observe_request` writes the one access line.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(())
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// The `request` span: method, route template (never the path, which carries environment
/// keys) and the request id `SetRequestIdLayer` gave it or the caller sent.
fn request_span(req: &Request) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %req.method(),
        route = %route_of(req),
        request_id = %id
    )
}

/// The route template of a request (`/v1/environments/{ref}`), `unmatched` for none.
fn route_of(req: &Request) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |r| r.as_str())
}

/// Probes and scrapes, whose access lines are at DEBUG so that they do not flood the log.
const QUIET_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Counts a request under its route template, never its path, which carries environment keys
/// (unrouted requests count as `unmatched`), and writes its access line, in the request's
/// span (method, route, request id): status and duration in milliseconds, at INFO (probes at
/// DEBUG).
async fn observe_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(req).await;
    let took = started.elapsed();
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    let status = response.status().as_u16();
    state.envs.metrics().request(method, route, status, took);
    // Microsecond precision: most answers take well under a millisecond or a few.
    let duration_ms = (took.as_secs_f64() * 1e6).round() / 1e3;
    if QUIET_ROUTES.contains(&route) {
        tracing::debug!(status, duration_ms, "access");
    } else {
        tracing::info!(status, duration_ms, "access");
    }
    response
}
