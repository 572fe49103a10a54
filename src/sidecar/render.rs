//! Turns a loaded LiteLLM config into what gets deployed: the plugin configuration, an Envoy
//! bootstrap (for `envoy -c` / `func-e run -c`); Istio manifests are in [`super::istio`].

use super::cost_map::{CostMap, COST_MAP_LITELLM_VERSION};
use super::litellm_config::{LiteLlmConfig, ModelEntry};
use crate::key_format::hash_key;
use crate::plugin_config::{
    BudgetSettings, Deployment, FleetSettings, LostLeasePolicy, NoLeasePolicy, PluginConfig,
    Pricing, PLUGIN_CONFIG_VERSION,
};
use crate::provider_keys::without_provider_keys;
use crate::rate_limits::TokenCountType;
use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Name of the Envoy cluster that reaches the sidecar.
pub const SIDECAR_CLUSTER: &str = "tollgate_sidecar";
/// Default request body limit (LLM prompts can be large; Envoy's buffer limit matches it).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Every upstream cluster's name starts so; the route that obeys the filter's choice only
/// accepts such names.
pub const UPSTREAM_CLUSTER_PREFIX: &str = "tollgate_upstream_";
/// In the xDS directory: the upstream clusters (CDS from the filesystem).
pub const XDS_CLUSTERS_FILE: &str = "clusters.yaml";
/// In the xDS directory: the filter's configuration (extension config discovery).
pub const XDS_FILTER_FILE: &str = "tollgate-filter.yaml";
const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Where an upstream lives, parsed from `api_base`.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub cluster: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub base_path: String,
}

impl Upstream {
    pub fn authority(&self) -> String {
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Default `api_base` of OpenAI-compatible providers LiteLLM knows by prefix.
const DEFAULT_API_BASES: [(&str, &str); 10] = [
    ("openai", "https://api.openai.com/v1"),
    ("text-completion-openai", "https://api.openai.com/v1"),
    ("groq", "https://api.groq.com/openai/v1"),
    ("mistral", "https://api.mistral.ai/v1"),
    ("deepseek", "https://api.deepseek.com/v1"),
    ("together_ai", "https://api.together.xyz/v1"),
    ("fireworks_ai", "https://api.fireworks.ai/inference/v1"),
    ("perplexity", "https://api.perplexity.ai"),
    ("xai", "https://api.x.ai/v1"),
    ("openrouter", "https://openrouter.ai/api/v1"),
];

fn default_api_base(provider: &str) -> Option<&'static str> {
    DEFAULT_API_BASES
        .iter()
        .find(|(p, _)| *p == provider)
        .map(|(_, base)| *base)
}

/// The cost map's prices for every model of `providers` (`""`: the providers a bare name can
/// reach), keyed `provider/model` lowercased, for the filter to price wildcard routes. Only
/// the providers wildcard entries reach: the filter holds this table in memory.
fn wildcard_price_table(map: &CostMap, providers: &[String]) -> BTreeMap<String, Pricing> {
    let mut wanted: Vec<&str> = Vec::new();
    for p in providers {
        if p.is_empty() {
            wanted.extend(DEFAULT_API_BASES.iter().map(|(p, _)| *p));
        } else {
            wanted.push(p);
        }
    }
    let mut table = BTreeMap::new();
    for provider in wanted {
        for (name, e) in map.provider_entries(provider) {
            table.insert(
                format!("{provider}/{name}"),
                Pricing {
                    input_cost_per_token: e.input_cost_per_token,
                    output_cost_per_token: e.output_cost_per_token,
                    cache_read_input_token_cost: e.cache_read_input_token_cost,
                    output_cost_per_reasoning_token: e.output_cost_per_reasoning_token,
                    max_output_tokens: e.max_output_tokens,
                },
            );
        }
    }
    table
}

/// `openai/gpt-4o` → (`openai`, `gpt-4o`); a bare name is OpenAI's.
pub fn split_provider(model: &str) -> (String, String) {
    match model.split_once('/') {
        Some((p, m)) => (p.to_string(), m.to_string()),
        None => ("openai".to_string(), model.to_string()),
    }
}

/// Parses `http(s)://host[:port][/path]`.
pub fn parse_api_base(api_base: &str) -> Result<Upstream> {
    let (tls, rest) = if let Some(r) = api_base.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = api_base.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(anyhow!(
            "api_base `{api_base}` must start with http:// or https://"
        ));
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (
            h.to_string(),
            p.parse::<u16>()
                .map_err(|_| anyhow!("api_base `{api_base}` has an invalid port"))?,
        ),
        _ => (hostport.to_string(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(anyhow!("api_base `{api_base}` has no host"));
    }
    let sanitized: String = format!("{host}_{port}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(Upstream {
        cluster: format!("{UPSTREAM_CLUSTER_PREFIX}{sanitized}"),
        tls,
        host,
        port,
        base_path: path.trim_end_matches('/').to_string(),
    })
}

pub fn deployment_id(index: usize, entry: &ModelEntry) -> String {
    if let Some(id) = &entry.model_info.id {
        return id.clone();
    }
    let seed = format!(
        "{index}|{}|{}|{}",
        entry.model_name,
        entry.litellm_params.model,
        entry.litellm_params.api_base.as_deref().unwrap_or("")
    );
    hex::encode(Sha256::digest(seed.as_bytes()))
}

/// What the filter needs, plus the upstreams Envoy needs clusters for.
#[derive(Debug)]
pub struct Rendered {
    pub plugin: PluginConfig,
    pub upstreams: Vec<Upstream>,
}

/// One `tollgate serve` replica Envoy reaches.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarEndpoint {
    pub host: String,
    pub port: u16,
}

impl SidecarEndpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        SidecarEndpoint {
            host: host.into(),
            port,
        }
    }

    /// `HOST:PORT` (`[v6]:PORT` for an IPv6 address).
    pub fn parse(text: &str) -> Result<Self> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("sidecar `{text}` is not HOST:PORT"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| anyhow!("sidecar `{text}` has an invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(anyhow!("sidecar `{text}` has no host"));
        }
        Ok(SidecarEndpoint::new(host, port))
    }
}

/// Options that do not come from config.yaml.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub listen_address: String,
    pub listen_port: u16,
    /// The sidecar replicas of the `tollgate_sidecar` cluster (any of them answers any call;
    /// several share one PostgreSQL store). The first one names the filter's authority.
    pub sidecars: Vec<SidecarEndpoint>,
    pub envoy_admin_port: u16,
    pub wasm_path: String,
    /// Envoy only: a directory whose files (written by `tollgate up` or `tollgate serve
    /// --xds-dir`) carry the filter configuration and the upstream clusters, so config.yaml
    /// edits apply without a restart. `None`: everything inline, static.
    pub xds_dir: Option<String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            listen_address: "127.0.0.1".into(),
            listen_port: 4000,
            sidecars: vec![SidecarEndpoint::new("127.0.0.1", 4001)],
            envoy_admin_port: 9901,
            wasm_path: "target/wasm32-wasip1/release/tollgate.wasm".into(),
            xds_dir: None,
        }
    }
}

impl RenderOptions {
    /// The first sidecar, which names the authority of the filter's calls (every replica
    /// answers whatever authority it is called with).
    pub fn first_sidecar(&self) -> Result<&SidecarEndpoint> {
        self.sidecars
            .first()
            .ok_or_else(|| anyhow!("no sidecar endpoint given"))
    }
}

/// A size in MiB as LiteLLM reads it (`int(mb * 1024 * 1024)`); `None` when not positive.
fn mb_to_bytes(mb: f64) -> Option<usize> {
    (mb.is_finite() && mb > 0.0).then_some((mb * 1024.0 * 1024.0) as usize)
}

/// rpm/tpm window: LiteLLM's `LITELLM_RATE_LIMIT_WINDOW_SIZE` environment variable, else
/// `general_settings.rate_limit_window_size` (Tollgate's key), else 60 s.
pub fn rate_limit_window_seconds(config: &LiteLlmConfig) -> u64 {
    std::env::var("LITELLM_RATE_LIMIT_WINDOW_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(config.general_settings.rate_limit_window_size)
        .filter(|w| *w > 0)
        .unwrap_or(60)
}

/// Budget settings as the filter needs them. An unknown time zone falls back to UTC (as in
/// LiteLLM); [`super::prepare`] warns about it.
pub fn budget_settings(config: &LiteLlmConfig) -> BudgetSettings {
    let ls = &config.litellm_settings;
    let gs = &config.general_settings;
    BudgetSettings {
        // LiteLLM: `max_budget` 0.0 means "disabled"; Tollgate: an explicit 0 means $0.
        proxy_max_budget: ls.max_budget,
        proxy_budget_duration: ls.budget_duration.clone(),
        exceeded_status_code: ls.budget_exceeded_status_code.unwrap_or(422),
        timezone: ls
            .timezone
            .as_deref()
            .and_then(|name| super::timezone::resolve(name).ok())
            .unwrap_or_default(),
        reset_time_of_day_seconds: ls
            .budget_reset_time
            .as_deref()
            .and_then(crate::time::parse_time_of_day)
            .unwrap_or(0),
        disable_reservation: gs.disable_budget_reservation.unwrap_or(false),
        ..Default::default()
    }
}

/// The internal bearer between filter and sidecar, derived from the master key.
pub fn internal_token(master_key: &str) -> String {
    hash_key(&format!("tollgate-internal:{master_key}"))
}

/// A deployment's prices, field by field: `litellm_params`, then `model_info`, then LiteLLM's
/// cost map entry for `model_info.base_model` (else `litellm_params.model`), as LiteLLM merges a
/// deployment's custom pricing over the map's entry. Also the map key used, if any.
pub fn deployment_pricing(entry: &ModelEntry, map: &CostMap) -> (Pricing, Option<String>) {
    let (p, info) = (&entry.litellm_params, &entry.model_info);
    let found = match info.base_model.as_deref().filter(|b| !b.is_empty()) {
        // `_base_model_pricing_provider`: under the deployment's provider, else the base
        // model's own.
        Some(base) => {
            let provider = p.model.split_once('/').map(|(pr, _)| pr);
            map.lookup(base, provider)
                .filter(|(_, e)| e.is_priced())
                .or_else(|| map.lookup(base, None))
        }
        None => map.lookup(&p.model, None),
    };
    let (key, e) = match found {
        Some((k, e)) => (Some(k.to_string()), Some(e)),
        None => (None, None),
    };
    let pricing = Pricing {
        input_cost_per_token: p
            .input_cost_per_token
            .or(info.input_cost_per_token)
            .or(e.and_then(|e| e.input_cost_per_token)),
        output_cost_per_token: p
            .output_cost_per_token
            .or(info.output_cost_per_token)
            .or(e.and_then(|e| e.output_cost_per_token)),
        cache_read_input_token_cost: p
            .cache_read_input_token_cost
            .or(info.cache_read_input_token_cost)
            .or(e.and_then(|e| e.cache_read_input_token_cost)),
        output_cost_per_reasoning_token: p
            .output_cost_per_reasoning_token
            .or(info.output_cost_per_reasoning_token)
            .or(e.and_then(|e| e.output_cost_per_reasoning_token)),
        max_output_tokens: info
            .max_output_tokens
            .or(info.max_tokens)
            .or(e.and_then(|e| e.max_output_tokens)),
    };
    (pricing, key)
}

/// What `/model/info` shows of a deployment's `model_info` beyond prices: the fields the config
/// passes through (`supports_vision`, `base_model`, ...) and, when the config does not say, the
/// cost map's `mode` and `max_input_tokens` (LiteLLM merges its model info in the same way).
pub fn model_info_passthrough(entry: &ModelEntry, map: &CostMap) -> serde_json::Map<String, Value> {
    let info = &entry.model_info;
    let mut out: serde_json::Map<String, Value> = info
        .extra
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let found = deployment_pricing(entry, map)
        .1
        .and_then(|k| map.get(&k).map(|(_, e)| e.clone()));
    let mode = info
        .mode
        .clone()
        .or_else(|| found.as_ref().and_then(|e| e.mode.clone()));
    let max_input = info
        .max_input_tokens
        .or_else(|| found.as_ref().and_then(|e| e.max_input_tokens));
    for (k, v) in [
        ("mode", mode.map(Value::from)),
        ("base_model", info.base_model.clone().map(Value::from)),
        ("max_input_tokens", max_input.map(Value::from)),
        ("max_tokens", info.max_tokens.map(Value::from)),
    ] {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    }
    // The cost map's capability flags, under what the config itself says.
    for (k, v) in found.iter().flat_map(|e| e.supports.iter()) {
        out.entry(k.clone()).or_insert(Value::Bool(*v));
    }
    out
}

/// One warning per deployment that ends up with no token price: its spend will be 0, so no
/// budget can stop it.
pub fn unpriced_warnings(config: &LiteLlmConfig) -> Result<Vec<String>> {
    let map = super::cost_map::current()?;
    Ok(config
        .model_list
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.litellm_params.model.contains('*'))
        .filter(|(_, m)| !crate::cost::is_priced(&deployment_pricing(m, &map).0))
        .map(|(i, m)| {
            format!(
                "model_list[{i}] ({}): `{}` has no price in the config nor in LiteLLM's cost map ({COST_MAP_LITELLM_VERSION}); spend for {} will be 0 and no budget limits it. Set litellm_params.input_cost_per_token / output_cost_per_token, or model_info.base_model to a known model",
                m.model_name, m.litellm_params.model, m.model_name
            )
        })
        .chain(unpriced_wildcard_warning(config))
        .collect())
}

/// One warning when wildcard entries without their own prices exist: clients choose the model,
/// and one the cost map does not know has no price.
fn unpriced_wildcard_warning(config: &LiteLlmConfig) -> Option<String> {
    let names: Vec<&str> = config
        .model_list
        .iter()
        .filter(|m| m.litellm_params.model.contains('*'))
        .filter(|m| !crate::cost::is_priced(&deployment_pricing(m, &CostMap::default()).0))
        .map(|m| m.model_name.as_str())
        .collect();
    if names.is_empty() {
        return None;
    }
    let blocked = config
        .litellm_settings
        .block_requests_for_models_without_pricing
        .unwrap_or(false);
    Some(format!(
        "wildcard entries ({}) can route to models with no price in LiteLLM's cost map ({COST_MAP_LITELLM_VERSION}); {}",
        names.join(", "),
        if blocked {
            "calls to them are refused (block_requests_for_models_without_pricing)"
        } else {
            "calls to them are refused when a budget applies and free otherwise. Set litellm_settings.block_requests_for_models_without_pricing: true to refuse them always"
        }
    ))
}

/// The providers a wildcard entry can reach: its own prefix (`openai/*`), or for a bare `*`
/// every provider Tollgate knows the API of (`""`: whatever the entry's `api_base` serves).
/// A bare `*` with an `api_key` reaches only `openai`, where it sends unprefixed names: one
/// key is one provider's, and LiteLLM would send it to every provider a client names.
fn wildcard_providers(entry: &ModelEntry) -> Vec<String> {
    let p = &entry.litellm_params;
    match p.model.split_once('/') {
        Some((provider, _)) if !provider.contains('*') => vec![provider.to_string()],
        _ if p.api_base.is_some() => vec![String::new()],
        _ if p.api_key.as_deref().is_some_and(|k| !k.is_empty()) => vec!["openai".to_string()],
        _ => DEFAULT_API_BASES
            .iter()
            .map(|(provider, _)| *provider)
            .filter(|provider| *provider != "text-completion-openai")
            .map(str::to_string)
            .collect(),
    }
}

pub fn plugin_config(config: &LiteLlmConfig, opts: &RenderOptions) -> Result<Rendered> {
    let first_sidecar = opts.first_sidecar()?;
    let cost_map = super::cost_map::current()?;
    let mut deployments = Vec::new();
    let mut upstreams: Vec<Upstream> = Vec::new();
    let mut wildcard_providers_seen: Vec<String> = Vec::new();
    for (i, entry) in config.model_list.iter().enumerate() {
        let p = &entry.litellm_params;
        let is_pattern = entry.model_name.contains('*');
        // A wildcard entry becomes one deployment per provider it reaches; its prices come
        // from the config, else per requested model from `wildcard_prices`.
        let copies: Vec<(String, String)> = if is_pattern {
            wildcard_providers(entry)
                .into_iter()
                .map(|provider| (provider, "*".to_string()))
                .collect()
        } else {
            vec![split_provider(&p.model)]
        };
        let pricing = if is_pattern && p.model.contains('*') {
            deployment_pricing(entry, &CostMap::default()).0
        } else {
            deployment_pricing(entry, &cost_map).0
        };
        for (provider, backend_model) in copies {
            let default_base = default_api_base(if provider.is_empty() {
                "openai"
            } else {
                &provider
            });
            let api_base = match (&p.api_base, default_base) {
                (Some(b), _) => b.clone(),
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(anyhow!(
                        "model_list[{i}] ({}): provider `{provider}` needs litellm_params.api_base (Tollgate forwards to OpenAI-compatible APIs)",
                        entry.model_name
                    ))
                }
            };
            let upstream = parse_api_base(&api_base)
                .map_err(|e| anyhow!("model_list[{i}] ({}): {e}", entry.model_name))?;
            let info = &entry.model_info;
            if is_pattern && !wildcard_providers_seen.contains(&provider) {
                wildcard_providers_seen.push(provider.clone());
            }
            deployments.push(Deployment {
                model_name: entry.model_name.clone(),
                id: deployment_id(i, entry),
                provider,
                backend_model,
                cluster: upstream.cluster.clone(),
                authority: upstream.authority(),
                base_path: upstream.base_path.clone(),
                api_key: p.api_key.clone().filter(|k| !k.is_empty()),
                access_groups: info.access_groups.clone(),
                default_api_key_rpm_limit: p.default_api_key_rpm_limit,
                default_api_key_tpm_limit: p.default_api_key_tpm_limit,
                pricing: pricing.clone(),
                model_pattern: if is_pattern {
                    p.model.clone()
                } else {
                    String::new()
                },
            });
            if !upstreams.iter().any(|u| u.cluster == upstream.cluster) {
                upstreams.push(upstream);
            }
        }
    }
    let wildcard_prices = wildcard_price_table(&cost_map, &wildcard_providers_seen);
    let master = config
        .general_settings
        .master_key
        .clone()
        .unwrap_or_default();
    let plugin = PluginConfig {
        version: PLUGIN_CONFIG_VERSION,
        master_key_hash: (!master.is_empty()).then(|| hash_key(&master)),
        sidecar_cluster: SIDECAR_CLUSTER.to_string(),
        sidecar_authority: format!("{}:{}", first_sidecar.host, first_sidecar.port),
        internal_token: internal_token(&master),
        sidecar_timeout_ms: 2000,
        negative_cache_seconds: 2,
        key_header_name: config.general_settings.litellm_key_header_name.clone(),
        max_request_body_bytes: config
            .general_settings
            .max_request_size_mb
            .and_then(mb_to_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES),
        max_response_body_bytes: config
            .general_settings
            .max_response_size_mb
            .and_then(mb_to_bytes),
        deployments,
        rate_limit_window_seconds: rate_limit_window_seconds(config),
        token_rate_limit_type: match config.general_settings.token_rate_limit_type.as_deref() {
            Some("input") => TokenCountType::Input,
            Some("output") => TokenCountType::Output,
            _ => TokenCountType::Total,
        },
        budgets: budget_settings(config),
        wildcard_prices,
        block_unpriced_models: config
            .litellm_settings
            .block_requests_for_models_without_pricing
            .unwrap_or(false),
        fleet: fleet_settings(config),
        aliases: super::litellm_config::proxy_aliases(config)?,
        customer_id_headers: super::litellm_config::customer_id_headers(config),
        enforce_user_param: config.general_settings.enforce_user_param == Some(true),
        apply_user_budget_to_team_keys: config.general_settings.apply_user_budget_to_team_keys
            == Some(true),
    };
    Ok(Rendered { plugin, upstreams })
}

/// `general_settings.tollgate_fleet` (values checked by the loader): present turns fleet mode
/// on.
fn fleet_settings(config: &LiteLlmConfig) -> Option<FleetSettings> {
    let f = config.general_settings.tollgate_fleet.as_ref()?;
    let defaults = FleetSettings::default();
    Some(FleetSettings {
        lease_ttl_ms: f
            .lease_ttl_seconds
            .map_or(defaults.lease_ttl_ms, |s| s.saturating_mul(1000)),
        on_no_lease: match f.on_no_lease.as_deref() {
            Some("local") => NoLeasePolicy::Local,
            _ => NoLeasePolicy::Deny,
        },
        on_lost_lease: match f.on_lost_lease.as_deref() {
            Some("charge_grant") => LostLeasePolicy::ChargeGrant,
            Some("release") => LostLeasePolicy::Release,
            _ => LostLeasePolicy::ChargeReserved,
        },
    })
}

fn socket(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

fn is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

fn upstream_cluster(u: &Upstream) -> Value {
    let mut cluster = json!({
        "name": u.cluster,
        "type": if is_ip(&u.host) { "STATIC" } else { "LOGICAL_DNS" },
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": u.cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(&u.host, u.port)}}]}]
        }
    });
    if u.tls {
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": u.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}
                    }
                }
            }
        });
    }
    cluster
}

/// The Wasm HTTP filter entry, shared by the Envoy bootstrap and documentation.
pub fn wasm_filter(plugin: &PluginConfig, wasm_path: &str) -> Result<Value> {
    Ok(json!({
        "name": "tollgate",
        "typed_config": {
            "@type": WASM_TYPE_URL,
            "config": {
                "name": "tollgate",
                "root_id": "tollgate",
                "vm_config": {
                    "vm_id": "tollgate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path}}
                },
                // Provider keys stay out: the filter fetches them from the sidecar.
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": serde_json::to_string(&without_provider_keys(plugin))?
                },
                // Without it a paused request never gets its body callback (DESIGN.md).
                "allow_on_headers_stop_iteration": true,
                // A VM that cannot start or has failed refuses traffic (never lets it through
                // unchecked). FAIL_RELOAD is not used: calls in flight in a failed VM never
                // settle, so their parallel slots and reservations would stay taken.
                "failure_policy": "FAIL_CLOSED"
            }
        }
    }))
}

/// Envoy routes: the upstream cluster the filter chose (it names it in a header the client
/// cannot set: the filter removes it from every request it does not route), internal paths
/// hidden, the rest (admin API, health) to the sidecar. One route for every upstream, so
/// clusters added by a reload need no route change.
fn routes() -> Value {
    json!([
        {
            "match": {"prefix": "/tollgate/internal"},
            "direct_response": {"status": 404, "body": {"inline_string": "{\"detail\":\"Not Found\"}"}}
        },
        {
            "match": {"prefix": "/", "headers": [{
                "name": crate::plugin_config::CLUSTER_HEADER,
                "string_match": {"prefix": UPSTREAM_CLUSTER_PREFIX}
            }]},
            "route": {
                "cluster_header": crate::plugin_config::CLUSTER_HEADER,
                "timeout": "600s",
                "auto_host_rewrite": false
            },
            // The routing header is Tollgate's; the provider never sees it.
            "request_headers_to_remove": [crate::plugin_config::CLUSTER_HEADER]
        },
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": SIDECAR_CLUSTER,
                "timeout": "60s",
                // Only retries of calls no replica has seen (admin writes are not idempotent),
                // on another replica.
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,reset-before-request",
                    "num_retries": 2,
                    "retry_host_predicate": [{
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
                    }],
                    "host_selection_retry_max_attempts": 3
                }
            }
        }
    ])
}

/// The xDS file with the upstream clusters (a `DiscoveryResponse`, as JSON; valid YAML).
pub fn xds_clusters_file(upstreams: &[Upstream]) -> String {
    let resources: Vec<Value> = upstreams
        .iter()
        .map(|u| {
            let mut c = upstream_cluster(u);
            c["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
            c
        })
        .collect();
    json!({"resources": resources}).to_string()
}

/// The xDS file with the filter's configuration (a `DiscoveryResponse` of one
/// `TypedExtensionConfig`, as JSON; valid YAML).
pub fn xds_filter_file(plugin: &PluginConfig, wasm_path: &str) -> Result<String> {
    let filter = wasm_filter(plugin, wasm_path)?;
    Ok(json!({"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "tollgate",
        "typed_config": filter["typed_config"]
    }]})
    .to_string())
}

fn path_source(dir: &str, file: &str) -> Value {
    let path = std::path::Path::new(dir).join(file);
    json!({"resource_api_version": "V3", "path_config_source": {"path": path.display().to_string()}})
}

/// Envoy's own replies when a provider cannot be reached (no healthy upstream, connection
/// failure or reset, overflow, no such cluster: 503; upstream timeout: 504) in LiteLLM's error
/// envelope, with Envoy's reason as the message, instead of Envoy's plain text. Only replies
/// carrying those response flags are rewritten: the filter's own replies are already JSON.
fn upstream_failure_replies() -> Value {
    let mapper = |status: u32, flags: &[&str]| {
        json!({
            "filter": {"and_filter": {"filters": [
                {"status_code_filter": {"comparison": {"op": "EQ", "value": {
                    "default_value": status,
                    "runtime_key": format!("tollgate.local_reply.status_{status}")
                }}}},
                {"response_flag_filter": {"flags": flags}}
            ]}},
            "body_format_override": {"json_format": {"error": {
                "message": "%LOCAL_REPLY_BODY%",
                "type": "internal_server_error",
                "param": null,
                "code": status.to_string()
            }}}
        })
    };
    json!({"mappers": [
        mapper(503, &["UH", "UF", "UO", "URX", "UC", "NC"]),
        mapper(504, &["UT"]),
    ]})
}

/// The Envoy bootstrap, as JSON (valid YAML too).
pub fn envoy_bootstrap(rendered: &Rendered, opts: &RenderOptions) -> Result<Value> {
    let mut clusters = vec![sidecar_cluster(&opts.sidecars)?];
    let tollgate_filter = match &opts.xds_dir {
        Some(dir) => json!({
            "name": "tollgate",
            "config_discovery": {
                "config_source": path_source(dir, XDS_FILTER_FILE),
                "type_urls": [WASM_TYPE_URL]
            }
        }),
        None => {
            clusters.extend(rendered.upstreams.iter().map(upstream_cluster));
            wasm_filter(&rendered.plugin, &opts.wasm_path)?
        }
    };
    let mut bootstrap = json!({
        "admin": {"address": socket("127.0.0.1", opts.envoy_admin_port)},
        "stats_config": filter_stats_config(),
        "static_resources": {
            "listeners": [{
                "name": "tollgate",
                "address": socket(&opts.listen_address, opts.listen_port),
                // One Envoy per port: with SO_REUSEPORT a second one would bind too and split
                // the traffic (`tollgate up` checks the port first; this closes the race).
                "enable_reuse_port": false,
                "per_connection_buffer_limit_bytes": rendered.plugin.max_request_body_bytes + 64 * 1024,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "tollgate",
                        "codec_type": "AUTO",
                        "route_config": {
                            "name": "tollgate",
                            "virtual_hosts": [{"name": "tollgate", "domains": ["*"], "routes": routes()}]
                        },
                        "local_reply_config": upstream_failure_replies(),
                        "http_filters": [
                            tollgate_filter,
                            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }],
            "clusters": clusters
        }
    });
    if let Some(dir) = &opts.xds_dir {
        // Dynamic resources need a node identity.
        bootstrap["node"] = json!({"id": "tollgate", "cluster": "tollgate"});
        bootstrap["dynamic_resources"] = json!({"cds_config": path_source(dir, XDS_CLUSTERS_FILE)});
    }
    Ok(bootstrap)
}

/// The cluster of the sidecar replicas: round robin over them; a replica that fails calls in a
/// row (connection refused or reset after a `kill -9`, 502/503/504) is ejected at once, for
/// 10 s and longer each time it fails again, so filter calls and admin calls go to the others.
/// The filter's own calls (`dispatch_http_call`) take no route, hence no retry policy: their
/// callers try again on the next tick, or fail closed for an unknown key.
fn sidecar_cluster(sidecars: &[SidecarEndpoint]) -> Result<Value> {
    if sidecars.is_empty() {
        return Err(anyhow!("no sidecar endpoint given"));
    }
    let cluster_type = if sidecars.iter().all(|s| is_ip(&s.host)) {
        "STATIC"
    } else if sidecars.len() == 1 {
        "LOGICAL_DNS"
    } else {
        // LOGICAL_DNS takes one endpoint only; STRICT_DNS also spreads over every address a
        // name resolves to (a headless Service).
        "STRICT_DNS"
    };
    let endpoints: Vec<Value> = sidecars
        .iter()
        .map(|s| json!({"endpoint": {"address": socket(&s.host, s.port)}}))
        .collect();
    Ok(json!({
        "name": SIDECAR_CLUSTER,
        "type": cluster_type,
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": SIDECAR_CLUSTER,
            "endpoints": [{"lb_endpoints": endpoints}]
        },
        // Connection failures count as gateway errors (local-origin errors are not split).
        "outlier_detection": {
            "consecutive_gateway_failure": 2,
            "enforcing_consecutive_gateway_failure": 100,
            "consecutive_5xx": 5,
            "enforcing_consecutive_5xx": 100,
            "interval": "1s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 100
        }
    }))
}

/// Envoy's default tags plus the filter metrics' labels ([`crate::metrics::STATS_TAGS`]).
fn filter_stats_config() -> Value {
    let tags: Vec<Value> = crate::metrics::STATS_TAGS
        .iter()
        .map(|tag| json!({"tag_name": tag, "regex": crate::metrics::stats_tag_regex(tag)}))
        .collect();
    json!({"use_all_default_tags": true, "stats_tags": tags})
}

/// The same Envoy without Tollgate: every request goes to the first deployment's upstream
/// unchanged. The ceiling benchmarks compare against.
pub fn envoy_bare_bootstrap(rendered: &Rendered, opts: &RenderOptions) -> Result<Value> {
    let static_opts = RenderOptions {
        xds_dir: None,
        ..opts.clone()
    };
    let mut boot = envoy_bootstrap(rendered, &static_opts)?;
    let first = rendered
        .upstreams
        .first()
        .map(|u| u.cluster.clone())
        .ok_or_else(|| anyhow!("the config has no model_list entry to proxy to"))?;
    let hcm = &mut boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    hcm["http_filters"] = json!([{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]);
    hcm["route_config"]["virtual_hosts"][0]["routes"] =
        json!([{"match": {"prefix": "/"}, "route": {"cluster": first, "timeout": "600s"}}]);
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::litellm_config::parse;

    #[test]
    fn api_base_parsing() {
        let u = parse_api_base("https://api.openai.com/v1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        assert_eq!(u.authority(), "api.openai.com");
        let u = parse_api_base("http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!(
            (u.port, u.base_path.as_str(), u.authority()),
            (8080, "/v1", "127.0.0.1:8080".to_string())
        );
        assert!(parse_api_base("ftp://x").is_err());
        assert!(parse_api_base("http://h:notaport/").is_err());
    }

    /// `/model/info` and `/model_group/info` get the cost map's capability flags; the
    /// config's own `model_info` wins.
    #[test]
    fn model_info_carries_the_cost_maps_capabilities() {
        let loaded = parse(
            "model_list:\n  - model_name: m\n    litellm_params: {model: openai/gpt-4o-mini}\n    model_info: {supports_vision: false}\n",
        )
        .unwrap();
        let map = crate::sidecar::cost_map::current().unwrap();
        let info = model_info_passthrough(&loaded.config.model_list[0], &map);
        assert_eq!(info["supports_function_calling"], Value::Bool(true));
        assert_eq!(info["supports_vision"], Value::Bool(false));
        assert_eq!(info["mode"], "chat");
    }

    #[test]
    fn renders_deployments_and_pricing_precedence() {
        let loaded = parse(
            "model_list:\n  - model_name: m\n    litellm_params: {model: openai/real, api_base: 'http://127.0.0.1:9/v1', input_cost_per_token: 2}\n    model_info: {input_cost_per_token: 1, output_cost_per_token: 3, access_groups: [g]}\ngeneral_settings: {master_key: sk-master-key-0001}\n",
        )
        .unwrap();
        let r = plugin_config(&loaded.config, &RenderOptions::default()).unwrap();
        let d = &r.plugin.deployments[0];
        assert_eq!(d.backend_model, "real");
        assert_eq!(d.pricing.input_cost_per_token, Some(2.0));
        assert_eq!(d.pricing.output_cost_per_token, Some(3.0));
        assert_eq!(d.access_groups, vec!["g"]);
        assert_eq!(
            r.plugin.master_key_hash.as_deref(),
            Some(hash_key("sk-master-key-0001").as_str())
        );
        let boot = envoy_bootstrap(&r, &RenderOptions::default()).unwrap();
        let text = boot.to_string();
        assert!(text.contains("allow_on_headers_stop_iteration"));
        assert!(text.contains(&d.cluster));
    }

    /// `general_settings.tollgate_fleet` turns fleet mode on, with its defaults or values;
    /// without it the plugin config has no fleet settings.
    #[test]
    fn fleet_settings_come_from_general_settings() {
        let fleet = |text: &str| {
            let loaded = parse(text).unwrap();
            plugin_config(&loaded.config, &RenderOptions::default())
                .unwrap()
                .plugin
                .fleet
        };
        assert_eq!(fleet("model_list: []\n"), None);
        assert_eq!(
            fleet("general_settings: {tollgate_fleet: {}}\n"),
            Some(FleetSettings::default())
        );
        assert_eq!(
            fleet("general_settings:\n  tollgate_fleet: {lease_ttl_seconds: 30, on_no_lease: local, on_lost_lease: charge_grant}\n"),
            Some(FleetSettings {
                lease_ttl_ms: 30_000,
                on_no_lease: NoLeasePolicy::Local,
                on_lost_lease: LostLeasePolicy::ChargeGrant,
            })
        );
        assert_eq!(
            fleet("general_settings: {tollgate_fleet: {on_lost_lease: release}}\n")
                .map(|f| f.on_lost_lease),
            Some(LostLeasePolicy::Release)
        );
    }

    /// Issue 13 §1: a deployment without explicit prices is priced from LiteLLM's cost map.
    #[test]
    fn prices_come_from_litellm_cost_map() {
        let loaded = parse(
            "model_list:\n  - {model_name: mini, litellm_params: {model: openai/gpt-4o-mini, api_key: x}}\n  - {model_name: az, litellm_params: {model: openai/my-azure-deploy, api_base: 'http://127.0.0.1:9/v1'}, model_info: {base_model: gpt-4o-mini}}\n  - {model_name: mixed, litellm_params: {model: gpt-4o-mini, output_cost_per_token: 0.5}}\n  - {model_name: unknown, litellm_params: {model: openai/no-such-model-xyz}}\n",
        )
        .unwrap();
        let r = plugin_config(&loaded.config, &RenderOptions::default()).unwrap();
        let p = |i: usize| r.plugin.deployments[i].pricing.clone();
        assert_eq!(p(0).input_cost_per_token, Some(1.5e-7));
        assert_eq!(p(0).output_cost_per_token, Some(6e-7));
        assert_eq!(p(0).cache_read_input_token_cost, Some(7.5e-8));
        assert_eq!(p(0).max_output_tokens, Some(16384));
        assert_eq!(p(1).input_cost_per_token, Some(1.5e-7));
        // Explicit prices win field by field; the rest comes from the map.
        assert_eq!(p(2).output_cost_per_token, Some(0.5));
        assert_eq!(p(2).input_cost_per_token, Some(1.5e-7));
        assert_eq!(p(3), Pricing::default());
        let warnings = unpriced_warnings(&loaded.config).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("model_list[3] (unknown)")
                && warnings[0].contains("spend for unknown will be 0"),
            "{warnings:?}"
        );
    }

    /// Issue 13 §2: wildcard entries as real configs write them; prices for their providers'
    /// models go into a compact table.
    #[test]
    fn wildcard_entries_render_per_provider_with_a_price_table() {
        let loaded = parse(
            "model_list:\n  - {model_name: '*', litellm_params: {model: '*'}}\n  - {model_name: 'groq/*', litellm_params: {model: 'groq/*', api_key: g}}\n  - {model_name: 'local/*', litellm_params: {model: 'openai/*', api_base: 'http://127.0.0.1:9/v1'}}\n",
        )
        .unwrap();
        let r = plugin_config(&loaded.config, &RenderOptions::default()).unwrap();
        let star: Vec<&Deployment> = r
            .plugin
            .deployments
            .iter()
            .filter(|d| d.model_name == "*")
            .collect();
        assert!(star
            .iter()
            .any(|d| d.provider == "openai" && d.authority == "api.openai.com"));
        assert!(star.iter().any(|d| d.provider == "groq"));
        assert!(star.iter().all(|d| d.model_pattern == "*"));
        let prices = &r.plugin.wildcard_prices;
        assert_eq!(
            prices["openai/gpt-4o-mini"].input_cost_per_token,
            Some(1.5e-7)
        );
        assert!(prices.keys().any(|k| k.starts_with("groq/")));
        // The filter routes through it with the cost map's price.
        let routed = r.plugin.wildcard_route("local/gpt-4o-mini", None);
        assert_eq!(routed[0].backend_model, "gpt-4o-mini");
        assert_eq!(routed[0].authority, "127.0.0.1:9");
        assert_eq!(routed[0].pricing.output_cost_per_token, Some(6e-7));
        let json = serde_json::to_string(&r.plugin).unwrap();
        assert!(
            json.len() < 400_000,
            "plugin config is {} bytes",
            json.len()
        );
        // One warning for all wildcard entries: they can reach models with no price.
        let warnings = unpriced_warnings(&loaded.config).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "wildcard entries (*, groq/*, local/*) can route to models with no price"
            ),
            "{warnings:?}"
        );
        assert!(!r.plugin.block_unpriced_models);
        let blocking = parse(
            "model_list:\n  - {model_name: m, litellm_params: {model: openai/gpt-4o-mini}}\nlitellm_settings: {block_requests_for_models_without_pricing: true}\n",
        )
        .unwrap();
        let r = plugin_config(&blocking.config, &RenderOptions::default()).unwrap();
        assert!(r.plugin.block_unpriced_models);
        assert!(unpriced_warnings(&blocking.config).unwrap().is_empty());
    }

    /// A bare `*` with one provider key must not hand that key to every provider: it routes
    /// only where unprefixed names go (`openai`); `groq/x` finds no deployment.
    #[test]
    fn bare_wildcard_key_reaches_only_its_provider() {
        let loaded = parse(
            "model_list:\n  - {model_name: '*', litellm_params: {model: '*', api_key: sk-openai-only}}\n",
        )
        .unwrap();
        let r = plugin_config(&loaded.config, &RenderOptions::default()).unwrap();
        let keyed: Vec<(&str, &str)> = r
            .plugin
            .deployments
            .iter()
            .filter(|d| d.api_key.is_some())
            .map(|d| (d.provider.as_str(), d.authority.as_str()))
            .collect();
        assert_eq!(keyed, vec![("openai", "api.openai.com")]);
        assert!(r
            .plugin
            .wildcard_route("groq/llama-3.1-8b-instant", None)
            .is_empty());
        assert!(r
            .plugin
            .wildcard_route("anthropic/claude-3-5-haiku", None)
            .is_empty());
        let routed = r.plugin.wildcard_route("gpt-4o-mini", Some("openai"));
        assert_eq!(routed.len(), 1);
        assert_eq!(routed[0].authority, "api.openai.com");
        let routed = r
            .plugin
            .wildcard_route("openai/gpt-4o-mini", Some("openai"));
        assert_eq!(routed[0].backend_model, "gpt-4o-mini");
    }

    #[test]
    fn envoy_configs_carry_no_provider_key() {
        let loaded = parse(
            "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_key: sk-provider-in-config-77}\n",
        )
        .unwrap();
        let r = plugin_config(&loaded.config, &RenderOptions::default()).unwrap();
        assert_eq!(
            r.plugin.deployments[0].api_key.as_deref(),
            Some("sk-provider-in-config-77")
        );
        let boot = envoy_bootstrap(&r, &RenderOptions::default()).unwrap();
        let filter = xds_filter_file(&r.plugin, "m.wasm").unwrap();
        for text in [boot.to_string(), filter] {
            assert!(!text.contains("sk-provider-in-config-77"), "{text}");
        }
    }

    /// Issue 15: several sidecar replicas in one cluster, balanced, a dead one ejected, admin
    /// calls no replica saw retried on another; the filter's authority stays one value.
    #[test]
    fn sidecar_cluster_lists_every_replica() {
        let loaded = parse(
            "model_list:\n  - {model_name: m, litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:9/v1'}}\n",
        )
        .unwrap();
        let opts = RenderOptions {
            sidecars: vec![
                SidecarEndpoint::new("127.0.0.1", 4101),
                SidecarEndpoint::parse("127.0.0.2:4102").unwrap(),
            ],
            ..Default::default()
        };
        let r = plugin_config(&loaded.config, &opts).unwrap();
        assert_eq!(r.plugin.sidecar_authority, "127.0.0.1:4101");
        let yaml = serde_yaml_ng::to_string(&envoy_bootstrap(&r, &opts).unwrap()).unwrap();
        let boot: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
        let sidecar = clusters
            .iter()
            .find(|c| c["name"] == SIDECAR_CLUSTER)
            .unwrap();
        assert_eq!(sidecar["type"], "STATIC");
        assert_eq!(sidecar["lb_policy"], "ROUND_ROBIN");
        let addresses: Vec<(String, u64)> = sidecar["load_assignment"]["endpoints"][0]
            ["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let a = &e["endpoint"]["address"]["socket_address"];
                (
                    a["address"].as_str().unwrap().to_string(),
                    a["port_value"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            addresses,
            vec![("127.0.0.1".into(), 4101), ("127.0.0.2".into(), 4102)]
        );
        let outlier = &sidecar["outlier_detection"];
        assert_eq!(outlier["consecutive_gateway_failure"], 2);
        assert_eq!(outlier["enforcing_consecutive_gateway_failure"], 100);
        assert_eq!(outlier["max_ejection_percent"], 100);
        let routes = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        let to_sidecar = &routes.last().unwrap()["route"];
        assert_eq!(to_sidecar["cluster"], SIDECAR_CLUSTER);
        assert_eq!(
            to_sidecar["retry_policy"]["retry_on"],
            "connect-failure,refused-stream,reset-before-request"
        );
        // Names: one stays LOGICAL_DNS, several resolve each (STRICT_DNS).
        let named = |hosts: &[&str]| {
            let opts = RenderOptions {
                sidecars: hosts
                    .iter()
                    .map(|h| SidecarEndpoint::new(*h, 4001))
                    .collect(),
                ..Default::default()
            };
            sidecar_cluster(&opts.sidecars).unwrap()["type"].clone()
        };
        assert_eq!(named(&["tollgate"]), "LOGICAL_DNS");
        assert_eq!(named(&["a.svc", "127.0.0.1"]), "STRICT_DNS");
        assert!(SidecarEndpoint::parse("nohost").is_err());
        assert!(SidecarEndpoint::parse(":1").is_err());
        assert_eq!(
            SidecarEndpoint::parse("[::1]:4001").unwrap(),
            SidecarEndpoint::new("::1", 4001)
        );
        let none = RenderOptions {
            sidecars: Vec::new(),
            ..Default::default()
        };
        assert!(plugin_config(&loaded.config, &none).is_err());
    }

    #[test]
    fn unknown_provider_without_base_is_refused() {
        let loaded =
            parse("model_list:\n  - model_name: m\n    litellm_params: {model: bedrock/x}\n")
                .unwrap();
        let err = plugin_config(&loaded.config, &RenderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_base"), "{err}");
    }
}
