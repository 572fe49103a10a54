//! LiteLLM's admin API (litellm-compat.md §5), served by the sidecar behind Envoy, plus the
//! internal endpoints the filter uses (`/tollgate/internal/v1/*`).
//!
//! One module per entity: [`keys`], [`users`], [`teams`], [`customers`], [`budgets`], plus
//! [`spend`], [`models`], [`health`] and the filter's [`internal`] endpoints. Every change that
//! can alter what the filter decides for some keys answers with `x-tollgate-invalidate` (the
//! affected key hashes and `customer:<id>` entries, or `*`) and is recorded in the change log
//! the filter polls (`GET /tollgate/internal/v1/changes?since=<seq>`).

mod auth;
mod block;
mod budgets;
mod ceiling;
mod common;
mod customers;
mod health;
mod internal;
mod key_defaults;
mod keys;
mod metrics;
mod models;
mod orgs;
mod spend;
mod spend_report;
mod teams;
mod users;

#[cfg(test)]
mod tests;

pub use common::{invalidate_header, MAX_INVALIDATE_ENTRIES};
pub use internal::{customer_record, key_record, model_budgets};

use super::store::{ResetClock, Store};
use crate::plugin_config::{BudgetSettings, PluginConfig};
use axum::Router;
use std::sync::Arc;

/// Settings from config.yaml that the admin API needs.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    pub master_key: String,
    pub internal_token: String,
    pub key_header_name: Option<String>,
    pub max_internal_user_budget: Option<f64>,
    pub internal_user_budget_duration: Option<String>,
    /// Largest admin request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Largest spend batch the filter may post, bytes.
    pub max_spend_batch_bytes: usize,
    /// Proxy budget, timezone and reset time of day (`render::budget_settings`).
    pub budgets: BudgetSettings,
    /// The rendered plugin configuration: the model list for `/model/info` and model checks.
    pub plugin: PluginConfig,
    /// `litellm_settings.max_end_user_budget_id`.
    pub default_end_user_budget_id: Option<String>,
    /// Per deployment id: the `model_info` fields `/model/info` passes through.
    pub model_info_extra:
        std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>>,
    /// Per deployment id: `litellm_params.tpm` / `rpm`, summed per group by `/model_group/info`.
    pub deployment_tpm_rpm: std::collections::HashMap<String, (Option<u64>, Option<u64>)>,
    /// `litellm_settings.max_end_user_budget` (used when no budget id is set).
    pub default_end_user_max_budget: Option<f64>,
    /// `litellm_settings.require_auth_for_metrics_endpoint` (LiteLLM 1.110.2: on unless set
    /// to `false`): `/metrics` wants an admin credential.
    pub require_auth_for_metrics: bool,
    /// `general_settings.team_admin_editable_team_fields`: what a team admin may change on
    /// `/team/update` (empty: nothing, as in LiteLLM).
    pub team_admin_editable_team_fields: Vec<String>,
    /// `litellm_settings.default_key_generate_params`.
    pub key_generate_defaults: crate::sidecar::litellm_config::KeyGenerateDefaults,
    /// `litellm_settings.upperbound_key_generate_params`.
    pub key_generate_bounds: crate::sidecar::litellm_config::KeyGenerateBounds,
    /// `litellm_settings.default_team_params`.
    pub team_defaults: crate::sidecar::litellm_config::TeamDefaults,
}

impl AdminSettings {
    /// How budget periods align.
    pub fn reset_clock(&self) -> ResetClock {
        ResetClock::from_budget_settings(&self.budgets)
    }

    /// Fleet mode's `on_lost_lease` (the default without fleet mode: no leases to lose).
    pub fn lost_lease_policy(&self) -> crate::plugin_config::LostLeasePolicy {
        self.plugin
            .fleet
            .as_ref()
            .map(|f| f.on_lost_lease)
            .unwrap_or_default()
    }
}

/// Default for [`AdminSettings::max_spend_batch_bytes`].
pub const MAX_SPEND_BATCH_BYTES: usize = 8 * 1024 * 1024;

pub struct AdminState {
    pub store: Store,
    /// What `/metrics` reports.
    pub metrics: crate::sidecar::metrics::SidecarMetrics,
    /// From config.yaml; a reload replaces them (handlers take a snapshot per call).
    settings: std::sync::RwLock<Arc<AdminSettings>>,
}

impl AdminState {
    pub fn new(store: Store, settings: AdminSettings) -> AdminState {
        AdminState {
            store,
            metrics: Default::default(),
            settings: std::sync::RwLock::new(Arc::new(settings)),
        }
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<AdminSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A reloaded config.yaml: its settings apply from the next call on.
    pub fn replace_settings(&self, settings: AdminSettings) {
        self.store.reconfigure(
            settings.reset_clock(),
            settings.default_end_user_budget_id.clone(),
            settings.default_end_user_max_budget,
            settings.lost_lease_policy(),
        );
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }
}

type Shared = Arc<AdminState>;

pub fn router(state: Arc<AdminState>) -> Router {
    let limit = state.settings().max_body_bytes.max(1024);
    let spend_limit = state.settings().max_spend_batch_bytes.max(limit);
    // Each module serves its own routes; they are put together here, once.
    let r = Router::new()
        .merge(keys::routes())
        .merge(users::routes())
        .merge(teams::routes())
        .merge(orgs::routes())
        .merge(customers::routes())
        .merge(budgets::routes())
        .merge(models::routes())
        .merge(spend::routes())
        .merge(health::routes())
        .merge(spend_report::routes())
        .merge(internal::routes(spend_limit))
        .merge(crate::sidecar::ui::router());
    r.fallback(health::fallback)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            (limit, spend_limit),
            bounded_body,
        ))
        .with_state(state)
}

/// Most bytes of an over-limit body read (and dropped) before the 413 is sent.
const MAX_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// Reads every admin body before the route sees it, and refuses one over the limit with 413
/// in LiteLLM's envelope (drained first, up to [`MAX_DRAIN_BYTES`]: answering and closing while
/// the client is still sending resets the connection, and Envoy would turn the 413 into a
/// 503). Read first, too, within the limit: a route that answers without reading its body (a
/// 401 from the auth extractor) would leave it unread if it arrives after the headers, and
/// hyper then closes the connection after answering; Envoy, reusing that connection for its
/// next call, answers that call 503 "connection termination".
async fn bounded_body(
    axum::extract::State((limit, spend_limit)): axum::extract::State<(usize, usize)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_core::Stream;
    let limit = if req.uri().path() == crate::contract::SPEND_PATH {
        spend_limit
    } else {
        limit
    } as u64;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared == Some(0) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    while let Some(chunk) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await
    {
        let Ok(chunk) = chunk else { break };
        seen = seen.saturating_add(chunk.len() as u64);
        if seen <= limit {
            kept.extend_from_slice(&chunk);
        } else if seen > MAX_DRAIN_BYTES {
            break;
        }
    }
    if seen > limit {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        return common::AdminError::from(crate::errors::ApiError::body_too_large(limit))
            .into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(kept),
    ))
    .await
}
