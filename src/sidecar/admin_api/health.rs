//! Health endpoints and what the sidecar answers on paths it does not serve.

use super::Shared;
use crate::errors::ApiError;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub async fn liveliness() -> Response {
    Json(json!("I'm alive!")).into_response()
}

pub async fn readiness(State(state): State<Shared>) -> Response {
    let db = if state.store.ping().is_ok() {
        "connected"
    } else {
        "disconnected"
    };
    let status = if db == "connected" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if db == "connected" { "healthy" } else { "unhealthy" },
            "db": db,
            "cache": null,
            "litellm_version": concat!("tollgate-", env!("CARGO_PKG_VERSION")),
            "success_callbacks": [],
        })),
    )
        .into_response()
}

/// LLM routes reach the sidecar only when the filter is not running in Envoy.
async fn llm_without_filter() -> Response {
    let e = ApiError::service_unavailable("Tollgate's Envoy filter is not active on this route; LLM calls are not served by the sidecar.");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "application/json")],
        e.body(),
    )
        .into_response()
}

pub async fn fallback(uri: Uri) -> Response {
    if crate::routes::classify(uri.path()).is_some() {
        return llm_without_filter().await;
    }
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

/// The health probes and `/metrics`.
pub fn routes() -> axum::Router<Shared> {
    use axum::routing::get;
    axum::Router::new()
        .route("/health/liveliness", get(liveliness))
        .route("/health/liveness", get(liveliness))
        .route("/health/readiness", get(readiness))
        .route("/metrics", get(super::metrics::metrics))
}
