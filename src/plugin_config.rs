//! The plugin configuration: produced by the sidecar from LiteLLM's `config.yaml`, consumed by
//! the filter. One schema for both sides, so they cannot drift.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Largest request body the filter reads, bytes (`general_settings.max_request_size_mb`;
    /// Envoy's buffer limit is rendered above it).
    pub max_request_body_bytes: usize,
    /// `general_settings.max_response_size_mb` in bytes: a larger non-streamed response is
    /// answered with LiteLLM's 400 instead.
    pub max_response_body_bytes: Option<usize>,
    /// One entry per `model_list` item.
    pub deployments: Vec<Deployment>,
    /// Length of rpm/tpm windows, seconds (`LITELLM_RATE_LIMIT_WINDOW_SIZE`, default 60).
    pub rate_limit_window_seconds: u64,
    /// `general_settings.token_rate_limit_type`.
    pub token_rate_limit_type: crate::rate_limits::TokenCountType,
    pub budgets: BudgetSettings,
    /// Prices of the models wildcard deployments can reach, by lowercase `provider/model`: the
    /// entries of LiteLLM's cost map for those providers (resolved by the sidecar; empty when no
    /// deployment is a wildcard).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub wildcard_prices: BTreeMap<String, Pricing>,
    /// `litellm_settings.block_requests_for_models_without_pricing`: a call to a model with no
    /// price is refused (403 `model_cost_map_missing`).
    pub block_unpriced_models: bool,
    /// Fleet mode (`general_settings.tollgate_fleet`): budgets are enforced against slices
    /// leased from the sidecar, so several Envoys share them (FLEET.md). `None`: this Envoy's
    /// counters alone, exact for one Envoy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSettings>,
    /// `general_settings.apply_user_budget_to_team_keys`: a user's `max_budget` binds its team
    /// keys too (else its personal keys only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub apply_user_budget_to_team_keys: bool,
    /// `general_settings.enforce_user_param`: a virtual key's LLM request must carry `user`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub enforce_user_param: bool,
    /// Headers naming the request's customer after LiteLLM's standard two, lowercase:
    /// `general_settings.user_header_mappings`' `customer` entries, else `user_header_name`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub customer_id_headers: Vec<String>,
    /// The proxy's own model aliases, for every caller.
    #[serde(skip_serializing_if = "ProxyAliases::is_empty")]
    pub aliases: ProxyAliases,
}

/// The config's model aliases: `litellm_settings.model_alias_map` (applied after the team's
/// and the key's aliases) and `router_settings.model_group_alias` (applied last, by the
/// router), as LiteLLM's `resolve_served_model` applies them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyAliases {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_alias_map: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_group_alias: BTreeMap<String, GroupAlias>,
}

/// One `router_settings.model_group_alias` entry (`alias: target` or
/// `alias: {model: target, hidden: true}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupAlias {
    /// The model group the alias routes to.
    pub model: String,
    /// Left out of `/v1/models`, `/model/info` and `/model_group/info`, still callable.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

impl ProxyAliases {
    pub fn is_empty(&self) -> bool {
        self.model_alias_map.is_empty() && self.model_group_alias.is_empty()
    }

    /// The router's target for `model` (`model_group_alias`), if it is an alias.
    pub fn group_target(&self, model: &str) -> Option<&str> {
        self.model_group_alias
            .get(model)
            .map(|a| a.model.as_str())
            .filter(|m| !m.is_empty())
    }

    /// The `model_group_alias` names the listings show (not `hidden`), in name order.
    pub fn listed_group_aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.model_group_alias
            .iter()
            .filter(|(_, a)| !a.hidden && !a.model.is_empty())
            .map(|(name, a)| (name.as_str(), a.model.as_str()))
    }
}

/// Fleet mode's settings (`general_settings.tollgate_fleet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetSettings {
    /// How long a granted slice is valid (`lease_ttl_seconds`, default 10 s).
    pub lease_ttl_ms: u64,
    /// What a budget with no valid slice does when the sidecar cannot lend one in time.
    pub on_no_lease: NoLeasePolicy,
    /// What the sidecar charges for a dead Envoy's lease (read by the sidecar only).
    pub on_lost_lease: LostLeasePolicy,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            lease_ttl_ms: 10_000,
            on_no_lease: NoLeasePolicy::Deny,
            on_lost_lease: LostLeasePolicy::ChargeReserved,
        }
    }
}

/// `tollgate_fleet.on_no_lease`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoLeasePolicy {
    /// 503 for a request on a limited budget (as for an unknown key while the sidecar is down).
    #[default]
    Deny,
    /// This Envoy's own counters against the whole limit (LiteLLM's per-pod fallback: up to N
    /// times the budget across N Envoys).
    Local,
}

/// `tollgate_fleet.on_lost_lease`: what a budget lease is charged once it lapsed and its
/// grace for late events ended without the Envoy's events (FLEET.md §4.8, Envoy `kill -9`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostLeasePolicy {
    /// Its last report's use not applied yet (`used − applied`): admitted calls whose spend
    /// events died with the Envoy.
    #[default]
    ChargeReserved,
    /// Its whole unused grant too: never over the budget, at the price of charging calls that
    /// were never made.
    ChargeGrant,
    /// Nothing: the unlogged use is forgiven.
    Release,
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
    pub timezone: crate::time::ZoneOffsets,
    /// `litellm_settings.budget_reset_time`, seconds after midnight.
    pub reset_time_of_day_seconds: u32,
    /// `general_settings.disable_budget_reservation`.
    pub disable_reservation: bool,
    /// Output tokens assumed for a reservation when the request sets no `max_tokens`
    /// (LiteLLM's `DEFAULT_MAX_OUTPUT_TOKENS_FALLBACK`, capped by the model's `max_output_tokens`).
    pub default_output_tokens: u64,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            proxy_max_budget: None,
            proxy_budget_duration: None,
            exceeded_status_code: 422,
            timezone: crate::time::ZoneOffsets::default(),
            reset_time_of_day_seconds: 0,
            disable_reservation: false,
            default_output_tokens: 16384,
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
    /// Wildcard deployments (`model_name` with `*`) only: `litellm_params.model` as written
    /// (`openai/*`, `*`), filled in from the requested name when routed. `provider` is then the
    /// one upstream this copy serves (empty: any, the entry has its own `api_base`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model_pattern: String,
}

/// USD per token; `None` when the config does not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pricing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_cost_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_cost_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<f64>,
    /// Reasoning tokens' rate (the output rate when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_cost_per_reasoning_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
}

impl Pricing {
    /// These prices, with the fields they leave unset taken from `fallback`.
    pub fn or(&self, fallback: &Pricing) -> Pricing {
        Pricing {
            input_cost_per_token: self.input_cost_per_token.or(fallback.input_cost_per_token),
            output_cost_per_token: self
                .output_cost_per_token
                .or(fallback.output_cost_per_token),
            cache_read_input_token_cost: self
                .cache_read_input_token_cost
                .or(fallback.cache_read_input_token_cost),
            output_cost_per_reasoning_token: self
                .output_cost_per_reasoning_token
                .or(fallback.output_cost_per_reasoning_token),
            max_output_tokens: self.max_output_tokens.or(fallback.max_output_tokens),
        }
    }
}

impl PluginConfig {
    /// Deployments serving a public model name.
    pub fn deployments_for(&self, model: &str) -> Vec<&Deployment> {
        self.deployments
            .iter()
            .filter(|d| d.model_name == model)
            .collect()
    }

    /// LiteLLM's pattern routing (`PatternMatchRouter`) for a name no deployment is named after:
    /// the deployments of the most specific wildcard `model_name` matching `model` (else
    /// `provider/model`), each filled in for this request: backend model, provider and prices
    /// (the entry's own, else the cost map's for that model).
    pub fn wildcard_route(&self, model: &str, provider: Option<&str>) -> Vec<Deployment> {
        let mut patterns: Vec<&str> = Vec::new();
        for d in &self.deployments {
            if d.model_name.contains('*') && !patterns.contains(&d.model_name.as_str()) {
                patterns.push(&d.model_name);
            }
        }
        // Most specific first: longer regex, then more regex syntax (stable for ties).
        patterns.sort_by_key(|p| std::cmp::Reverse(pattern_specificity(p)));
        let prefixed = provider.map(|p| format!("{p}/{model}"));
        let requests = std::iter::once(model).chain(prefixed.as_deref());
        for request in requests {
            for pattern in &patterns {
                let Some(captures) = pattern_captures(pattern, request) else {
                    continue;
                };
                return self.fill_in(pattern, request, &captures);
            }
        }
        Vec::new()
    }

    fn fill_in(&self, pattern: &str, request: &str, captures: &[&str]) -> Vec<Deployment> {
        self.deployments
            .iter()
            .filter(|d| d.model_name == pattern)
            .filter_map(|d| {
                let model = fill_wildcards(&d.model_pattern, request, captures);
                let (provider, backend) = match model.split_once('/') {
                    Some((p, m)) => (p.to_string(), m.to_string()),
                    None => ("openai".to_string(), model.clone()),
                };
                if !d.provider.is_empty() && d.provider != provider {
                    return None;
                }
                let mut routed = d.clone();
                routed.pricing = d.pricing.or(&self.wildcard_price(&provider, &backend));
                routed.provider = provider;
                routed.backend_model = backend;
                Some(routed)
            })
            .collect()
    }

    /// The cost map's prices for `provider/model`, else for the name LiteLLM strips it to (dated
    /// snapshot, fine-tune, version suffix).
    fn wildcard_price(&self, provider: &str, model: &str) -> Pricing {
        let stripped = crate::cost::strip_model_name(model, Some(provider));
        [model, stripped.as_str()]
            .iter()
            .find_map(|m| {
                self.wildcard_prices
                    .get(&format!("{provider}/{m}").to_lowercase())
            })
            .cloned()
            .unwrap_or_default()
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

/// LiteLLM's `calculate_pattern_specificity` of `re.escape(pattern).replace("\\*", "(.*)")`:
/// (length, count of regex syntax characters).
fn pattern_specificity(pattern: &str) -> (usize, usize) {
    let mut regex = String::new();
    for c in pattern.chars() {
        match c {
            '*' => regex.push_str("(.*)"),
            c if "()[]{}?+-|^$\\.&~# \t\n\r\x0b\x0c".contains(c) => {
                regex.push('\\');
                regex.push(c);
            }
            c => regex.push(c),
        }
    }
    let complexity = regex.chars().filter(|c| "*+?\\^$|()".contains(*c)).count();
    (regex.len(), complexity)
}

/// `re.match` of the wildcard `pattern` (each `*` a greedy `(.*)`, anchored at the start only)
/// against `text`: the captured runs.
pub fn pattern_captures<'t>(pattern: &str, text: &'t str) -> Option<Vec<&'t str>> {
    let mut segments = pattern.split('*');
    let first = segments.next()?;
    let rest = text.strip_prefix(first)?;
    let segments: Vec<&str> = segments.collect();
    let mut out = Vec::new();
    captures_from(&segments, rest, &mut out).then_some(out)
}

fn captures_from<'t>(segments: &[&str], text: &'t str, out: &mut Vec<&'t str>) -> bool {
    let Some((literal, rest)) = segments.split_first() else {
        return true;
    };
    if literal.is_empty() && rest.is_empty() {
        out.push(text);
        return true;
    }
    let positions: Vec<usize> = text.match_indices(literal).map(|(i, _)| i).collect();
    for pos in positions.into_iter().rev() {
        out.push(&text[..pos]);
        if captures_from(rest, &text[pos + literal.len()..], out) {
            return true;
        }
        out.pop();
    }
    false
}

/// `set_deployment_model_name`: the deployment's `litellm_params.model` with its `*`s replaced by
/// the captured runs in order; the request itself when there are more runs than `*`s.
fn fill_wildcards(model: &str, request: &str, captures: &[&str]) -> String {
    if !model.contains('*') {
        return model.to_string();
    }
    if captures.len() > model.matches('*').count() {
        return request.to_string();
    }
    let mut out = model.to_string();
    for c in captures {
        out = out.replacen('*', c, 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wildcard(model_name: &str, pattern: &str, provider: &str) -> Deployment {
        Deployment {
            model_name: model_name.into(),
            id: format!("{model_name}|{provider}"),
            provider: provider.into(),
            backend_model: "*".into(),
            model_pattern: pattern.into(),
            ..Default::default()
        }
    }

    #[test]
    fn captures_like_python_re_match() {
        assert_eq!(
            pattern_captures("openai/*", "openai/gpt-4o"),
            Some(vec!["gpt-4o"])
        );
        assert_eq!(
            pattern_captures("*", "groq/llama"),
            Some(vec!["groq/llama"])
        );
        assert_eq!(
            pattern_captures("*meta.llama3*", "x-meta.llama3-70b"),
            Some(vec!["x-", "-70b"])
        );
        assert_eq!(pattern_captures("openai/*", "groq/x"), None);
        assert_eq!(
            fill_wildcards("bedrock/meta.llama3*", "r", &["x-", "-70b"]),
            "r"
        );
        assert_eq!(
            fill_wildcards("openai/*", "r", &["gpt-4o"]),
            "openai/gpt-4o"
        );
        assert!(pattern_specificity("openai/*") > pattern_specificity("*"));
    }

    /// Issue 13 §2: `*`, `openai/*` and `groq/*` routed as LiteLLM does, priced from the table.
    #[test]
    fn wildcard_routes_fill_in_backend_model_and_prices() {
        let mut c = PluginConfig {
            deployments: vec![
                wildcard("*", "*", "openai"),
                wildcard("*", "*", "groq"),
                wildcard("groq/*", "groq/*", "groq"),
                wildcard("openai/*", "openai/*", "openai"),
            ],
            ..Default::default()
        };
        c.wildcard_prices.insert(
            "openai/gpt-4o-mini".into(),
            Pricing {
                input_cost_per_token: Some(1.5e-7),
                output_cost_per_token: Some(6e-7),
                ..Default::default()
            },
        );
        // Exact `openai/*` wins over `*` (more specific).
        let r = c.wildcard_route("openai/gpt-4o-mini-2024-07-18", Some("openai"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].model_name, "openai/*");
        assert_eq!(r[0].backend_model, "gpt-4o-mini-2024-07-18");
        assert_eq!(r[0].pricing.input_cost_per_token, Some(1.5e-7));
        // A bare name goes to `*`'s OpenAI copy.
        let r = c.wildcard_route("gpt-4o-mini", Some("openai"));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].model_name.as_str(), r[0].provider.as_str()),
            ("*", "openai")
        );
        assert_eq!(r[0].pricing.output_cost_per_token, Some(6e-7));
        // `groq/...` matches `groq/*` before `*`.
        let r = c.wildcard_route("groq/llama-3.1-8b-instant", Some("groq"));
        assert_eq!(r[0].model_name, "groq/*");
        assert_eq!(r[0].backend_model, "llama-3.1-8b-instant");
        assert_eq!(r[0].pricing, Pricing::default());
        // Explicit prices on the entry win.
        c.deployments[3].pricing.input_cost_per_token = Some(1.0);
        let r = c.wildcard_route("openai/gpt-4o-mini", Some("openai"));
        assert_eq!(r[0].pricing.input_cost_per_token, Some(1.0));
        assert_eq!(r[0].pricing.output_cost_per_token, Some(6e-7));
        // A fine-tune is priced as LiteLLM strips it (`ft:<base>`), like the sidecar's lookup.
        c.wildcard_prices.insert(
            "openai/ft:gpt-4o-mini-2024-07-18".into(),
            Pricing {
                input_cost_per_token: Some(3e-7),
                ..Default::default()
            },
        );
        let r = c.wildcard_route("ft:gpt-4o-mini-2024-07-18:org::abc", Some("openai"));
        assert_eq!(r[0].backend_model, "ft:gpt-4o-mini-2024-07-18:org::abc");
        assert_eq!(r[0].pricing.input_cost_per_token, Some(3e-7));
        // No wildcard deployments: nothing.
        let none = PluginConfig::default();
        assert!(none.wildcard_route("gpt-4o", Some("openai")).is_empty());
    }

    /// `provider/*` also takes a bare name of that provider (`route(f"{provider}/{model}")`).
    #[test]
    fn provider_prefixed_retry() {
        let c = PluginConfig {
            deployments: vec![wildcard("openai/*", "openai/*", "openai")],
            ..Default::default()
        };
        let r = c.wildcard_route("gpt-4o", Some("openai"));
        assert_eq!(r[0].backend_model, "gpt-4o");
        assert!(c.wildcard_route("mystery", None).is_empty());
    }
}
