//! `GET /metrics`: the sidecar's Prometheus exposition ([`crate::sidecar::metrics`]).

use super::auth::authenticate;
use super::common::{AdminError, AdminResult};
use super::Shared;
use crate::errors::ApiError;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;

/// OpenMetrics-compatible text exposition, as `prometheus_client` encodes it.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// LiteLLM 1.110.2 runs auth on `/metrics` unless
/// `litellm_settings.require_auth_for_metrics_endpoint: false`, and refuses with 401 and this
/// message. Tollgate asks for an admin (master key, or a `proxy_admin` /
/// `proxy_admin_viewer` user's key): the metrics name every key, user and team.
fn unauthorized(why: &str) -> AdminError {
    AdminError::Api(ApiError::new(
        401,
        "auth_error",
        format!(
            "Unauthorized access to metrics endpoint: {why} To allow unauthenticated access, set \
             `litellm_settings.require_auth_for_metrics_endpoint: false` in your proxy_config.yaml."
        ),
    ))
}

pub async fn metrics(State(state): State<Shared>, headers: HeaderMap) -> AdminResult {
    if state.settings().require_auth_for_metrics {
        match authenticate(&state, &headers) {
            Ok(p) if p.is_admin_viewer() => {}
            Ok(_) => return Err(unauthorized("only proxy admins may read metrics.")),
            Err(AdminError::Api(e)) => return Err(unauthorized(&e.message)),
            Err(e) => return Err(e),
        }
    }
    let shared = state.clone();
    let (budgets, seq) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            shared.store.budget_snapshot()?,
            shared.store.changes_since(None)?.seq,
        ))
    })
    .await
    .map_err(|e| anyhow::anyhow!("metrics task failed: {e}"))??;
    let body = state
        .metrics
        .encode(&budgets, seq)
        .map_err(|e| anyhow::anyhow!("encoding metrics: {e}"))?;
    Ok(([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response())
}
