//! The plugin configuration: produced by the sidecar from LiteLLM's `config.yaml`, consumed by
//! the filter. One schema for both sides, so they cannot drift.

use serde::{Deserialize, Serialize};

/// Schema version; bumped when a change is not backward compatible.
pub const PLUGIN_CONFIG_VERSION: u32 = 1;

/// Request header the filter sets to choose the upstream cluster; Envoy's routes match on it.
pub const CLUSTER_HEADER: &str = "x-tollgate-cluster";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginConfig {
    pub version: u32,
    /// `sha256(master_key)`; the filter compares hashes, never holds the raw key.
    pub master_key_hash: Option<String>,
    /// Envoy cluster of the sidecar, for key lookups (`dispatch_http_call`).
    pub sidecar_cluster: String,
    /// `:authority` sent to the sidecar.
    pub sidecar_authority: String,
    /// Bearer the sidecar's internal endpoints require (derived from the master key).
    pub internal_token: String,
    /// Timeout of a sidecar lookup, milliseconds.
    pub sidecar_timeout_ms: u64,
    /// How long an unknown key is remembered as unknown, seconds.
    pub negative_cache_seconds: u64,
    /// `general_settings.litellm_key_header_name`.
    pub key_header_name: Option<String>,
    /// Largest request body the filter reads, bytes (Envoy's buffer limit should match).
    pub max_request_body_bytes: usize,
    /// One entry per `model_list` item.
    pub deployments: Vec<Deployment>,
    /// Length of rpm/tpm windows, seconds (`LITELLM_RATE_LIMIT_WINDOW_SIZE`, default 60).
    pub rate_limit_window_seconds: u64,
    /// `general_settings.token_rate_limit_type`.
    pub token_rate_limit_type: crate::rate_limits::TokenCountType,
    pub budgets: BudgetSettings,
}

/// Budget settings from `litellm_settings` / `general_settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetSettings {
    /// `litellm_settings.max_budget`: proxy-wide, USD (`None`: no proxy budget).
    pub proxy_max_budget: Option<f64>,
    pub proxy_budget_duration: Option<String>,
    /// `litellm_settings.budget_exceeded_status_code` (422).
    pub exceeded_status_code: u16,
    /// `litellm_settings.timezone` as UTC offsets over time (resolved by the sidecar).
    pub timezone: crate::duration::ZoneOffsets,
    /// `litellm_settings.budget_reset_time`, seconds after midnight.
    pub reset_time_of_day_seconds: u32,
    /// `general_settings.disable_budget_reservation`.
    pub disable_reservation: bool,
    /// Output tokens assumed for a reservation when the request sets no `max_tokens`
    /// (LiteLLM's `DEFAULT_MAX_OUTPUT_TOKENS_FALLBACK`, capped by the model's `max_output_tokens`).
    pub default_output_tokens: u64,
    /// `litellm_settings.max_end_user_budget_id`'s budget, applied to customers without their own.
    pub default_end_user_budget: Option<crate::records::BudgetState>,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            proxy_max_budget: None,
            proxy_budget_duration: None,
            exceeded_status_code: 422,
            timezone: crate::duration::ZoneOffsets::default(),
            reset_time_of_day_seconds: 0,
            disable_reservation: false,
            default_output_tokens: 16384,
            default_end_user_budget: None,
        }
    }
}

/// One `model_list` entry, resolved to what the filter needs to route it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deployment {
    /// Public name clients send as `model`.
    pub model_name: String,
    /// `model_info.id`, or a stable id derived from the entry.
    pub id: String,
    /// Provider from `litellm_params.model` (`openai` in `openai/gpt-4o`).
    pub provider: String,
    /// Model name the provider expects (`gpt-4o`).
    pub backend_model: String,
    /// Envoy cluster that reaches `api_base`.
    pub cluster: String,
    /// `:authority` for the provider (host, with port when not the scheme's default).
    pub authority: String,
    /// Path of `api_base` (`/v1`), joined with the route.
    pub base_path: String,
    /// The provider key put in `Authorization` instead of the caller's virtual key.
    pub api_key: Option<String>,
    pub access_groups: Vec<String>,
    pub pricing: Pricing,
    /// Per-key rpm/tpm defaults for this model (`litellm_params.default_api_key_*_limit`).
    pub default_api_key_rpm_limit: Option<u64>,
    pub default_api_key_tpm_limit: Option<u64>,
}

/// USD per token; `None` when the config does not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pricing {
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    pub cache_read_input_token_cost: Option<f64>,
    /// Reasoning tokens' rate (the output rate when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_cost_per_reasoning_token: Option<f64>,
    pub max_output_tokens: Option<u64>,
}

impl PluginConfig {
    /// Deployments serving a public model name.
    pub fn deployments_for(&self, model: &str) -> Vec<&Deployment> {
        self.deployments
            .iter()
            .filter(|d| d.model_name == model)
            .collect()
    }

    /// Distinct public model names, in config order.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for d in &self.deployments {
            if !names.contains(&d.model_name.as_str()) {
                names.push(&d.model_name);
            }
        }
        names
    }
}
