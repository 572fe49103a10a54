//! LiteLLM's admin API (litellm-compat.md §5), served by the sidecar behind Envoy, plus the
//! internal endpoints the filter uses (`/tollgate/internal/v1/*`).
//!
//! One module per entity: [`keys`], [`users`], [`teams`], [`customers`], [`budgets`], plus
//! [`spend`], [`models`], [`health`] and the filter's [`internal`] endpoints. Every change that
//! can alter what the filter decides for some keys answers with `x-tollgate-invalidate` (the
//! affected key hashes and `customer:<id>` entries, or `*`) and is recorded in the change log
//! the filter polls (`GET /tollgate/internal/v1/changes?since=<seq>`).

mod auth;
mod budgets;
mod ceiling;
mod common;
mod customers;
mod health;
mod internal;
mod keys;
mod metrics;
mod models;
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
use axum::routing::{get, post};
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
}

impl AdminSettings {
    /// How budget periods align.
    pub fn reset_clock(&self) -> ResetClock {
        ResetClock::from_budget_settings(&self.budgets)
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
        );
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }
}

type Shared = Arc<AdminState>;

pub fn router(state: Arc<AdminState>) -> Router {
    let limit = state.settings().max_body_bytes.max(1024);
    let spend_limit = state.settings().max_spend_batch_bytes.max(limit);
    let mut r = Router::new()
        .route("/key/generate", post(keys::key_generate))
        .route("/key/info", get(keys::key_info))
        .route("/key/update", post(keys::key_update))
        .route("/key/delete", post(keys::key_delete))
        .route("/key/list", get(keys::key_list))
        .route("/key/block", post(keys::key_block))
        .route("/key/unblock", post(keys::key_unblock))
        .route("/key/regenerate", post(keys::key_regenerate))
        .route("/key/{key}/regenerate", post(keys::key_regenerate_path))
        .route("/user/new", post(users::user_new))
        .route("/user/info", get(users::user_info))
        .route("/user/update", post(users::user_update))
        .route("/user/delete", post(users::user_delete))
        .route("/user/list", get(users::user_list))
        .route("/team/new", post(teams::team_new))
        .route("/team/info", get(teams::team_info))
        .route("/team/list", get(teams::team_list))
        .route("/team/update", post(teams::team_update))
        .route("/team/delete", post(teams::team_delete))
        .route("/team/member_add", post(teams::team_member_add))
        .route("/team/member_delete", post(teams::team_member_delete))
        .route("/team/member_update", post(teams::team_member_update))
        .route("/team/block", post(teams::team_block))
        .route("/team/unblock", post(teams::team_unblock))
        .route("/budget/new", post(budgets::budget_new))
        .route(
            "/budget/info",
            post(budgets::budget_info).get(budgets::budget_info_get),
        )
        .route("/budget/update", post(budgets::budget_update))
        .route("/budget/delete", post(budgets::budget_delete))
        .route("/budget/list", get(budgets::budget_list))
        .route("/model/info", get(models::model_info))
        .route("/v1/model/info", get(models::model_info))
        .route("/model_group/info", get(models::model_group_info))
        .route("/health/liveliness", get(health::liveliness))
        .route("/health/liveness", get(health::liveliness))
        .route("/health/readiness", get(health::readiness))
        .route("/metrics", get(metrics::metrics))
        .route("/spend/logs", get(spend::spend_logs))
        .route("/global/spend", get(spend::global_spend))
        .route(
            "/user/daily/activity",
            get(spend_report::user_daily_activity),
        )
        .route(
            &format!("{}{{hash}}", crate::contract::KEYS_PATH),
            get(internal::internal_key),
        )
        .route(
            &format!("{}{{id}}", crate::contract::CUSTOMERS_PATH),
            get(internal::internal_customer),
        )
        .route(
            crate::contract::CHANGES_PATH,
            get(internal::internal_changes),
        )
        .route(
            crate::contract::SPEND_PATH,
            post(internal::internal_spend).layer(axum::extract::DefaultBodyLimit::max(spend_limit)),
        )
        .route("/tollgate/internal/v1/proxy", get(internal::internal_proxy))
        .route(
            crate::provider_keys::PROVIDER_KEYS_PATH,
            get(internal::internal_provider_keys),
        );
    // LiteLLM serves customers under both names.
    for prefix in ["/customer", "/end_user"] {
        r = r
            .route(&format!("{prefix}/new"), post(customers::customer_new))
            .route(&format!("{prefix}/info"), get(customers::customer_info))
            .route(
                &format!("{prefix}/update"),
                post(customers::customer_update),
            )
            .route(
                &format!("{prefix}/delete"),
                post(customers::customer_delete),
            )
            .route(&format!("{prefix}/block"), post(customers::customer_block))
            .route(
                &format!("{prefix}/unblock"),
                post(customers::customer_unblock),
            )
            .route(&format!("{prefix}/list"), get(customers::customer_list));
    }
    r.merge(crate::sidecar::ui::router())
        .fallback(health::fallback)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            (limit, spend_limit),
            bounded_body,
        ))
        .with_state(state)
}

/// Most bytes of an over-limit body read (and dropped) before the 413 is sent.
const MAX_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// Refuses an admin body over the limit with 413 in LiteLLM's envelope. The body is drained
/// first (up to [`MAX_DRAIN_BYTES`]): answering and closing while the client is still sending
/// resets the connection, and Envoy would then turn the 413 into a 503.
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
    if declared.is_some_and(|l| l <= limit) {
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
