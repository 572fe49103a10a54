//! Loading LiteLLM's `config.yaml` (litellm-compat.md §1): typed, with unknown keys reported,
//! wrong types and missing fields refused with the field and line, `os.environ/NAME` resolved
//! and `environment_variables` applied.

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use crate::plugin_config::{GroupAlias, ProxyAliases};

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LiteLlmConfig {
    #[serde(default)]
    pub model_list: Vec<ModelEntry>,
    #[serde(default)]
    pub general_settings: GeneralSettings,
    #[serde(default)]
    pub litellm_settings: LitellmSettings,
    #[serde(default)]
    pub environment_variables: BTreeMap<String, ScalarValue>,
    /// Only `model_group_alias` is used ([`proxy_aliases`]); the rest is accepted and not
    /// used: routing is Envoy's job.
    #[serde(default)]
    pub router_settings: Option<serde_yaml_ng::Value>,
}

/// A YAML scalar written as a string, number or boolean (environment variable values).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScalarValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ScalarValue {
    fn as_string(&self) -> String {
        match self {
            ScalarValue::Str(s) => s.clone(),
            ScalarValue::Int(i) => i.to_string(),
            ScalarValue::Float(f) => f.to_string(),
            ScalarValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub model_name: String,
    pub litellm_params: LitellmParams,
    #[serde(default)]
    pub model_info: ModelInfo,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LitellmParams {
    pub model: String,
    pub api_base: Option<String>,
    pub api_key: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub default_api_key_rpm_limit: Option<u64>,
    pub default_api_key_tpm_limit: Option<u64>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    pub cache_read_input_token_cost: Option<f64>,
    pub output_cost_per_reasoning_token: Option<f64>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub timeout: Option<f64>,
    pub stream_timeout: Option<f64>,
    pub max_retries: Option<u32>,
    pub api_version: Option<String>,
    pub organization: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelInfo {
    pub id: Option<String>,
    #[serde(default)]
    pub access_groups: Vec<String>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    pub cache_read_input_token_cost: Option<f64>,
    pub output_cost_per_reasoning_token: Option<f64>,
    pub max_output_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub mode: Option<String>,
    pub base_model: Option<String>,
    /// Every other `model_info` field (`supports_vision`, `team_id`, ...): LiteLLM passes them
    /// through to `/model/info`, and so does Tollgate.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The `model_info` fields Tollgate reads (a passthrough key close to one of these is most
/// likely a misspelling of it).
const MODEL_INFO_FIELDS: [&str; 11] = [
    "id",
    "access_groups",
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "output_cost_per_reasoning_token",
    "max_output_tokens",
    "max_tokens",
    "max_input_tokens",
    "mode",
    "base_model",
];

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GeneralSettings {
    pub master_key: Option<String>,
    pub database_url: Option<String>,
    /// PostgreSQL store: connections per sidecar (default 10).
    pub database_connection_pool_limit: Option<u64>,
    /// PostgreSQL store: seconds to wait for a connection (default 5).
    pub database_connection_timeout: Option<f64>,
    pub litellm_key_header_name: Option<String>,
    pub dangerously_permit_weak_or_unset_master_key: Option<bool>,
    pub proxy_budget_rescheduler_min_time: Option<u64>,
    pub proxy_budget_rescheduler_max_time: Option<u64>,
    pub proxy_batch_write_at: Option<u64>,
    pub disable_budget_reservation: Option<bool>,
    pub disable_reset_budget: Option<bool>,
    pub enforce_user_param: Option<bool>,
    pub user_header_name: Option<String>,
    pub user_header_mappings: Option<Vec<UserHeaderMapping>>,
    pub token_rate_limit_type: Option<String>,
    pub always_include_stream_usage: Option<bool>,
    pub user_api_key_cache_ttl: Option<f64>,
    pub allow_requests_on_db_unavailable: Option<bool>,
    pub include_call_id_in_error_body: Option<bool>,
    pub apply_user_budget_to_team_keys: Option<bool>,
    pub fail_closed_budget_enforcement: Option<bool>,
    pub fail_closed_rate_limit_enforcement: Option<bool>,
    pub store_model_in_db: Option<bool>,
    /// Tollgate's own: rpm/tpm window length in seconds (LiteLLM only reads the
    /// `LITELLM_RATE_LIMIT_WINDOW_SIZE` environment variable, which wins when set).
    pub rate_limit_window_size: Option<u64>,
    /// Largest request / non-streamed response body, MiB (LiteLLM's enterprise settings).
    pub max_request_size_mb: Option<f64>,
    pub max_response_size_mb: Option<f64>,
    /// What team admins may change on `/team/update` (LiteLLM's allow-list; unset: nothing).
    pub team_admin_editable_team_fields: Option<Vec<String>>,
    /// Tollgate's own: fleet mode (budgets shared by several Envoys through leases). Present,
    /// even empty (`{}`), it is on.
    pub tollgate_fleet: Option<FleetConfig>,
}

/// One `general_settings.user_header_mappings` entry: a header and the role its value names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserHeaderMapping {
    pub header_name: String,
    pub litellm_user_role: String,
}

/// The headers naming a request's customer besides LiteLLM's standard two, lowercase, in
/// LiteLLM's order (`get_end_user_id_from_request_body`): the `customer` entries of
/// `user_header_mappings`, else the deprecated `user_header_name`.
pub fn customer_id_headers(config: &LiteLlmConfig) -> Vec<String> {
    let gs = &config.general_settings;
    let mapped: Vec<String> = gs
        .user_header_mappings
        .iter()
        .flatten()
        .filter(|m| m.litellm_user_role.eq_ignore_ascii_case("customer"))
        .map(|m| m.header_name.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if !mapped.is_empty() {
        return mapped;
    }
    gs.user_header_name
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

/// `general_settings.tollgate_fleet`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// How long a leased slice is valid, 2..=300 s (default 10).
    pub lease_ttl_seconds: Option<u64>,
    /// `deny` (default) or `local`.
    pub on_no_lease: Option<String>,
    /// `charge_reserved` (default), `charge_grant` or `release`.
    pub on_lost_lease: Option<String>,
}

/// Lease TTLs accepted, seconds: at least two renewal ticks, at most five minutes of a dead
/// Envoy's slice held back.
pub const FLEET_TTL_SECONDS: std::ops::RangeInclusive<u64> = 2..=300;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LitellmSettings {
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub budget_exceeded_status_code: Option<u16>,
    pub budget_rollover: Option<bool>,
    pub timezone: Option<String>,
    pub budget_reset_time: Option<String>,
    pub max_end_user_budget_id: Option<String>,
    pub max_end_user_budget: Option<f64>,
    pub max_internal_user_budget: Option<f64>,
    pub internal_user_budget_duration: Option<String>,
    pub default_key_generate_params: Option<KeyGenerateDefaults>,
    pub upperbound_key_generate_params: Option<KeyGenerateBounds>,
    /// LiteLLM applies it to users made by SSO and SCIM, which Tollgate does not have.
    pub default_internal_user_params: Option<serde_yaml_ng::Value>,
    pub default_team_params: Option<TeamDefaults>,
    pub block_requests_for_models_without_pricing: Option<bool>,
    pub drop_params: Option<bool>,
    pub set_verbose: Option<bool>,
    pub json_logs: Option<bool>,
    pub request_timeout: Option<f64>,
    pub num_retries: Option<u32>,
    pub callbacks: Option<serde_yaml_ng::Value>,
    pub success_callback: Option<serde_yaml_ng::Value>,
    pub failure_callback: Option<serde_yaml_ng::Value>,
    pub model_alias_map: Option<BTreeMap<String, String>>,
    pub require_auth_for_metrics_endpoint: Option<bool>,
}

/// `litellm_settings.default_key_generate_params`: what `/key/generate` fills in where the
/// request leaves a field unset (LiteLLM's `_common_key_generation_helper`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct KeyGenerateDefaults {
    pub max_budget: Option<f64>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub max_parallel_requests: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub budget_duration: Option<String>,
    pub duration: Option<String>,
    pub models: Option<Vec<String>>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `litellm_settings.upperbound_key_generate_params` (LiteLLM's
/// `LiteLLM_UpperboundKeyGenerateParams`): the most a key may be given.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct KeyGenerateBounds {
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub duration: Option<String>,
    pub max_parallel_requests: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
}

/// `litellm_settings.default_team_params`: what `/team/new` fills in where the request
/// leaves a field unset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TeamDefaults {
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub team_member_permissions: Option<Vec<String>>,
    pub organization_id: Option<String>,
}

/// A loaded config plus the warnings a user should see at startup.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: LiteLlmConfig,
    pub warnings: Vec<String>,
}

const ENV_PREFIX: &str = "os.environ/";

/// Reads and validates `path`, applies `environment_variables` to this process and resolves
/// every `os.environ/NAME` reference.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut loaded = parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    apply_environment_variables(&loaded.config);
    resolve_env_refs(&mut loaded, |name| std::env::var(name).ok());
    Ok(loaded)
}

/// Parses config text; errors name the field path and line (serde_yaml_ng reports both).
pub fn parse(text: &str) -> Result<Loaded> {
    let mut warnings = Vec::new();
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let config: LiteLlmConfig = if text.trim().is_empty() {
        LiteLlmConfig::default()
    } else {
        serde_ignored::deserialize(deserializer, |path| {
            warnings.push(unknown_key_warning(&path.to_string()));
        })
        .map_err(|e| anyhow!("invalid config: {e}"))?
    };
    for (i, m) in config.model_list.iter().enumerate() {
        for key in m.model_info.extra.keys() {
            if let Some(k) = nearest_key(key, &MODEL_INFO_FIELDS) {
                warnings.push(format!("model_list.{i}.model_info.{key} is passed through to /model/info but not used; did you mean `{k}`?"));
            }
        }
    }
    if config.model_list.is_empty() {
        warnings.push("WARNING: the config has no models (model_list is empty or missing): every LLM call will be refused with 400 until models are added".to_string());
    }
    check_settings(&config)?;
    for (i, m) in config.model_list.iter().enumerate() {
        if m.model_name.trim().is_empty() {
            return Err(anyhow!(
                "invalid config: model_list[{i}].model_name is empty"
            ));
        }
        if m.litellm_params.model.trim().is_empty() {
            return Err(anyhow!(
                "invalid config: model_list[{i}].litellm_params.model is empty"
            ));
        }
        let (p, info) = (&m.litellm_params, &m.model_info);
        for (field, v) in [
            (
                "litellm_params.input_cost_per_token",
                p.input_cost_per_token,
            ),
            (
                "litellm_params.output_cost_per_token",
                p.output_cost_per_token,
            ),
            (
                "litellm_params.cache_read_input_token_cost",
                p.cache_read_input_token_cost,
            ),
            (
                "litellm_params.output_cost_per_reasoning_token",
                p.output_cost_per_reasoning_token,
            ),
            (
                "model_info.output_cost_per_reasoning_token",
                info.output_cost_per_reasoning_token,
            ),
            ("litellm_params.max_budget", p.max_budget),
            ("model_info.input_cost_per_token", info.input_cost_per_token),
            (
                "model_info.output_cost_per_token",
                info.output_cost_per_token,
            ),
            (
                "model_info.cache_read_input_token_cost",
                info.cache_read_input_token_cost,
            ),
        ] {
            finite(v, &format!("model_list[{i}].{field}"))?;
        }
    }
    let ls = &config.litellm_settings;
    finite(ls.max_budget, "litellm_settings.max_budget")?;
    finite(
        ls.max_end_user_budget,
        "litellm_settings.max_end_user_budget",
    )?;
    finite(
        ls.max_internal_user_budget,
        "litellm_settings.max_internal_user_budget",
    )?;
    for (v, field) in [
        (
            ls.default_key_generate_params
                .as_ref()
                .and_then(|d| d.max_budget),
            "litellm_settings.default_key_generate_params.max_budget",
        ),
        (
            ls.upperbound_key_generate_params
                .as_ref()
                .and_then(|d| d.max_budget),
            "litellm_settings.upperbound_key_generate_params.max_budget",
        ),
        (
            ls.default_team_params.as_ref().and_then(|d| d.max_budget),
            "litellm_settings.default_team_params.max_budget",
        ),
    ] {
        finite(v, field)?;
    }
    for (d, field) in [
        (
            ls.default_key_generate_params
                .as_ref()
                .and_then(|d| d.duration.as_deref()),
            "litellm_settings.default_key_generate_params.duration",
        ),
        (
            ls.upperbound_key_generate_params
                .as_ref()
                .and_then(|d| d.duration.as_deref()),
            "litellm_settings.upperbound_key_generate_params.duration",
        ),
    ] {
        if let Some(d) = d.filter(|d| *d != "-1") {
            crate::time::parse_duration(d)
                .map_err(|e| anyhow!("invalid config: {field}: invalid duration '{d}': {e}"))?;
        }
    }
    // Settings LiteLLM honours that Tollgate reads and does not (yet) apply: each would
    // otherwise change budgets or who is charged without a word.
    let gs = &config.general_settings;
    for (set, what) in [
        (
            gs.disable_reset_budget == Some(true),
            "general_settings.disable_reset_budget is not supported: budgets still reset at budget_reset_at",
        ),
        (
            ls.budget_rollover == Some(true),
            "litellm_settings.budget_rollover is not supported: a reset starts the next period at 0",
        ),
    ] {
        if set {
            warnings.push(format!("WARNING: {what}"));
        }
    }
    if ls.default_internal_user_params.is_some() {
        warnings.push("litellm_settings.default_internal_user_params is ignored: LiteLLM applies it to users made by SSO or SCIM, which Tollgate does not have".to_string());
    }
    Ok(Loaded { config, warnings })
}

/// The field names `#[derive(Deserialize)]` gives `T` (what it passes to `deserialize_struct`),
/// so the list of known keys is the structs themselves.
fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    type ProbeResult<V> = std::result::Result<V, serde::de::value::Error>;
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> ProbeResult<V::Value> {
            Err(Self::Error::custom("probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> ProbeResult<V::Value> {
            *self.0 = fields;
            Err(Self::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The keys Tollgate knows at the place `path` (`model_list.0.litellm_params.rpmm`) points to.
fn known_keys_at(path: &str) -> &'static [&'static str] {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        [_] => field_names::<LiteLlmConfig>(),
        ["general_settings", _] => field_names::<GeneralSettings>(),
        ["litellm_settings", _] => field_names::<LitellmSettings>(),
        ["litellm_settings", "default_key_generate_params", _] => {
            field_names::<KeyGenerateDefaults>()
        }
        ["litellm_settings", "upperbound_key_generate_params", _] => {
            field_names::<KeyGenerateBounds>()
        }
        ["litellm_settings", "default_team_params", _] => field_names::<TeamDefaults>(),
        ["model_list", _, _] => field_names::<ModelEntry>(),
        ["model_list", _, "litellm_params", _] => field_names::<LitellmParams>(),
        _ => &[],
    }
}

/// The known key a misspelt one most likely meant: the closest by edit distance, if close.
pub fn nearest_key<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (1 + key.len() / 6).min(3);
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn unknown_key_warning(path: &str) -> String {
    // serde_ignored writes `?` for a `Some`: not part of the key's place in the file.
    let path = path.replace(".?.", ".");
    let path = path.as_str();
    let key = path.rsplit('.').next().unwrap_or(path);
    match nearest_key(key, known_keys_at(path)) {
        Some(k) => format!("unknown config key `{path}` is ignored; did you mean `{k}`?"),
        None => format!("unknown config key `{path}` is ignored"),
    }
}

/// Values of known settings that LiteLLM would reject (or silently replace) are refused, naming
/// the field: a config mistake must not pass silently.
fn check_settings(config: &LiteLlmConfig) -> Result<()> {
    // Provider keys are looked up by deployment id: two entries sharing an id would send one
    // provider's key to the other's api_base.
    let mut ids: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (i, m) in config.model_list.iter().enumerate() {
        if let Some(id) = m.model_info.id.as_deref() {
            if let Some((first, name)) = ids.insert(id, (i, &m.model_name)) {
                return Err(anyhow!(
                    "invalid config: model_list[{first}] ({name}) and model_list[{i}] ({}) have the same model_info.id `{id}`; each deployment needs its own id",
                    m.model_name
                ));
            }
        }
    }
    let ls = &config.litellm_settings;
    let durations = [
        (
            "litellm_settings.budget_duration".to_string(),
            &ls.budget_duration,
        ),
        (
            "litellm_settings.internal_user_budget_duration".to_string(),
            &ls.internal_user_budget_duration,
        ),
    ]
    .into_iter()
    .chain(
        [
            (
                "litellm_settings.default_key_generate_params.budget_duration",
                ls.default_key_generate_params
                    .as_ref()
                    .map(|d| &d.budget_duration),
            ),
            (
                "litellm_settings.upperbound_key_generate_params.budget_duration",
                ls.upperbound_key_generate_params
                    .as_ref()
                    .map(|d| &d.budget_duration),
            ),
            (
                "litellm_settings.default_team_params.budget_duration",
                ls.default_team_params.as_ref().map(|d| &d.budget_duration),
            ),
        ]
        .into_iter()
        .filter_map(|(field, v)| Some((field.to_string(), v?))),
    )
    .chain(config.model_list.iter().enumerate().map(|(i, m)| {
        (
            format!("model_list[{i}].litellm_params.budget_duration"),
            &m.litellm_params.budget_duration,
        )
    }));
    for (field, value) in durations {
        if let Some(v) = value {
            crate::time::validate_budget_duration(v)
                .map_err(|why| anyhow!("invalid config: {field}: {why}"))?;
        }
    }
    if let Some(t) = &ls.budget_reset_time {
        if crate::time::parse_time_of_day(t).is_none() {
            return Err(anyhow!(
                "invalid config: litellm_settings.budget_reset_time: `{t}` is not a time of day (use \"HH:MM\" or \"HH:MM:SS\")"
            ));
        }
    }
    if let Some(code) = ls.budget_exceeded_status_code {
        if !(100..=599).contains(&code) {
            return Err(anyhow!(
                "invalid config: litellm_settings.budget_exceeded_status_code: {code} is not an HTTP status code"
            ));
        }
    }
    if let Some(f) = &config.general_settings.tollgate_fleet {
        if let Some(ttl) = f.lease_ttl_seconds {
            if !FLEET_TTL_SECONDS.contains(&ttl) {
                return Err(anyhow!(
                    "invalid config: general_settings.tollgate_fleet.lease_ttl_seconds: {ttl} must be between {} and {} seconds",
                    FLEET_TTL_SECONDS.start(),
                    FLEET_TTL_SECONDS.end()
                ));
            }
        }
        if let Some(p) = &f.on_no_lease {
            if !matches!(p.as_str(), "deny" | "local") {
                return Err(anyhow!(
                    "invalid config: general_settings.tollgate_fleet.on_no_lease: `{p}` must be one of deny, local"
                ));
            }
        }
        if let Some(p) = &f.on_lost_lease {
            if !matches!(p.as_str(), "charge_reserved" | "charge_grant" | "release") {
                return Err(anyhow!(
                    "invalid config: general_settings.tollgate_fleet.on_lost_lease: `{p}` must be one of charge_reserved, charge_grant, release"
                ));
            }
        }
    }
    if let Some(t) = &config.general_settings.token_rate_limit_type {
        if !matches!(t.as_str(), "input" | "output" | "total") {
            return Err(anyhow!(
                "invalid config: general_settings.token_rate_limit_type: `{t}` must be one of input, output, total"
            ));
        }
    }
    proxy_aliases(config)?;
    Ok(())
}

/// `litellm_settings.model_alias_map` and `router_settings.model_group_alias` (entries
/// `alias: target` or `alias: {model: target, hidden: bool}`, as LiteLLM's
/// `RouterModelGroupAliasItem`); any other shape is refused, naming the entry.
pub fn proxy_aliases(config: &LiteLlmConfig) -> Result<ProxyAliases> {
    use serde_yaml_ng::Value as Yaml;
    let mut aliases = ProxyAliases {
        model_alias_map: config
            .litellm_settings
            .model_alias_map
            .clone()
            .unwrap_or_default(),
        ..Default::default()
    };
    let Some(entries) = config
        .router_settings
        .as_ref()
        .and_then(|r| r.get("model_group_alias"))
        .filter(|v| !v.is_null())
    else {
        return Ok(aliases);
    };
    let Yaml::Mapping(entries) = entries else {
        return Err(anyhow!(
            "invalid config: router_settings.model_group_alias must be a mapping of alias to model group"
        ));
    };
    for (alias, entry) in entries {
        let Yaml::String(alias) = alias else {
            return Err(anyhow!(
                "invalid config: router_settings.model_group_alias: alias {alias:?} is not a string"
            ));
        };
        let wrong = || {
            anyhow!(
                "invalid config: router_settings.model_group_alias.{alias}: expected a model group name or {{model: <name>, hidden: true|false}}"
            )
        };
        let item = match entry {
            Yaml::String(model) => GroupAlias {
                model: model.clone(),
                hidden: false,
            },
            Yaml::Mapping(item) => GroupAlias {
                model: item
                    .get("model")
                    .and_then(Yaml::as_str)
                    .ok_or_else(wrong)?
                    .to_string(),
                hidden: match item.get("hidden") {
                    None | Some(Yaml::Null) => false,
                    Some(h) => h.as_bool().ok_or_else(wrong)?,
                },
            },
            _ => return Err(wrong()),
        };
        if item.model.is_empty() {
            return Err(wrong());
        }
        aliases.model_group_alias.insert(alias.clone(), item);
    }
    Ok(aliases)
}

/// Prices and budgets must be finite: YAML's `.inf` / `.nan` would reach the filter as JSON
/// `null` (no price, no budget), not what the config says.
fn finite(value: Option<f64>, field: &str) -> Result<()> {
    match value {
        Some(v) if !v.is_finite() => Err(anyhow!(
            "invalid config: {field} must be a finite number, got {v}"
        )),
        _ => Ok(()),
    }
}

fn apply_environment_variables(config: &LiteLlmConfig) {
    for (name, value) in &config.environment_variables {
        let value = value.as_string();
        let resolved = match value.strip_prefix(ENV_PREFIX) {
            Some(var) => match std::env::var(var) {
                Ok(v) => v,
                Err(_) => continue,
            },
            None => value,
        };
        if !name.is_empty()
            && !name.contains('=')
            && !name.contains('\0')
            && !resolved.contains('\0')
        {
            std::env::set_var(name, resolved);
        }
    }
}

fn resolve(
    value: &mut Option<String>,
    field: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) {
    let Some(v) = value.as_deref() else { return };
    let Some(name) = v.strip_prefix(ENV_PREFIX) else {
        return;
    };
    let resolved = lookup(name);
    if resolved.is_none() {
        warnings.push(format!(
            "{field}: environment variable {name} is not set; the field is left empty"
        ));
    }
    *value = resolved;
}

/// Replaces `os.environ/NAME` in every string field with the variable's value (LiteLLM leaves
/// the field empty when the variable is unset).
pub fn resolve_env_refs(loaded: &mut Loaded, lookup: impl Fn(&str) -> Option<String>) {
    let warnings = &mut loaded.warnings;
    let c = &mut loaded.config;
    resolve(
        &mut c.general_settings.master_key,
        "general_settings.master_key",
        &lookup,
        warnings,
    );
    resolve(
        &mut c.general_settings.database_url,
        "general_settings.database_url",
        &lookup,
        warnings,
    );
    for (i, m) in c.model_list.iter_mut().enumerate() {
        let p = &mut m.litellm_params;
        resolve(
            &mut p.api_base,
            &format!("model_list[{i}].litellm_params.api_base"),
            &lookup,
            warnings,
        );
        resolve(
            &mut p.api_key,
            &format!("model_list[{i}].litellm_params.api_key"),
            &lookup,
            warnings,
        );
        let mut model = Some(p.model.clone());
        resolve(
            &mut model,
            &format!("model_list[{i}].litellm_params.model"),
            &lookup,
            warnings,
        );
        p.model = model.unwrap_or_default();
    }
    if c.general_settings.master_key.is_none() {
        c.general_settings.master_key = lookup("LITELLM_MASTER_KEY");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
model_list:
  - model_name: gpt-mock
    litellm_params:
      model: openai/gpt-mock
      api_base: http://127.0.0.1:8080/v1
      api_key: os.environ/MOCK_KEY
      input_cost_per_token: 0.001
    model_info:
      access_groups: ["beta"]
general_settings:
  master_key: os.environ/MASTER
  surprise: 1
litellm_settings:
  max_budget: 10
"#;

    /// Found by fuzzing (fuzz/fuzz_targets/config.rs): `.inf` / `.nan` survived loading but became
    /// `null` in the plugin config, so the filter saw no budget (or no price).
    #[test]
    fn refuses_non_finite_prices_and_budgets() {
        let e = parse("litellm_settings: {max_budget: .inf, timezone: \"+05:45\"}\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("litellm_settings.max_budget must be a finite number"),
            "{e}"
        );
        let e = parse(
            "model_list:\n  - {model_name: b, litellm_params: {model: openai/x, api_base: \"http://h:1/v1\", input_cost_per_token: .nan}}\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("model_list[0].litellm_params.input_cost_per_token must be a finite"),
            "{e}"
        );
        let e = parse("model_list:\n  - {model_name: b, litellm_params: {model: openai/x}, model_info: {output_cost_per_token: -.inf}}\n").unwrap_err();
        assert!(
            e.to_string().contains("model_info.output_cost_per_token"),
            "{e}"
        );
        assert!(parse("litellm_settings: {max_budget: 1.5}\n").is_ok());
    }

    #[test]
    fn parses_resolves_and_warns() {
        let mut loaded = parse(SAMPLE).unwrap();
        assert!(loaded
            .warnings
            .iter()
            .any(|w| w.contains("general_settings.surprise")));
        resolve_env_refs(&mut loaded, |n| match n {
            "MOCK_KEY" => Some("provider-secret".into()),
            "MASTER" => Some("sk-master-123456".into()),
            _ => None,
        });
        let c = &loaded.config;
        assert_eq!(
            c.model_list[0].litellm_params.api_key.as_deref(),
            Some("provider-secret")
        );
        assert_eq!(
            c.general_settings.master_key.as_deref(),
            Some("sk-master-123456")
        );
        assert_eq!(c.model_list[0].model_info.access_groups, vec!["beta"]);
        assert_eq!(c.litellm_settings.max_budget, Some(10.0));
    }

    #[test]
    fn unset_env_leaves_field_empty_with_warning() {
        let mut loaded = parse(SAMPLE).unwrap();
        resolve_env_refs(&mut loaded, |_| None);
        assert_eq!(loaded.config.model_list[0].litellm_params.api_key, None);
        assert!(loaded.warnings.iter().any(|w| w.contains("MOCK_KEY")));
    }

    #[test]
    fn wrong_type_names_field_and_line() {
        let err = parse("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      rpm: lots\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rpm"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = parse("model_list:\n  - model_name: a\n    litellm_params: {api_base: x}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `model`"), "{err}");
    }

    /// Issue 12 item 11: invalid values of known settings are refused, naming the field.
    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        for (text, field) in [
            (
                "litellm_settings: {budget_duration: 30x}\n",
                "litellm_settings.budget_duration: Invalid budget_duration '30x'",
            ),
            (
                "litellm_settings: {internal_user_budget_duration: 0d}\n",
                "litellm_settings.internal_user_budget_duration",
            ),
            (
                "model_list:\n  - {model_name: a, litellm_params: {model: openai/x, budget_duration: soon}}\n",
                "model_list[0].litellm_params.budget_duration",
            ),
            (
                "litellm_settings: {budget_reset_time: \"25:00\"}\n",
                "litellm_settings.budget_reset_time",
            ),
            (
                "litellm_settings: {budget_exceeded_status_code: 42}\n",
                "litellm_settings.budget_exceeded_status_code",
            ),
            (
                "general_settings: {token_rate_limit_type: tokens}\n",
                "general_settings.token_rate_limit_type",
            ),
            (
                "general_settings: {tollgate_fleet: {lease_ttl_seconds: 1}}\n",
                "general_settings.tollgate_fleet.lease_ttl_seconds",
            ),
            (
                "general_settings: {tollgate_fleet: {lease_ttl_seconds: 301}}\n",
                "general_settings.tollgate_fleet.lease_ttl_seconds",
            ),
            (
                "general_settings: {tollgate_fleet: {on_no_lease: allow}}\n",
                "general_settings.tollgate_fleet.on_no_lease",
            ),
            (
                "general_settings: {tollgate_fleet: {on_lost_lease: forgive}}\n",
                "general_settings.tollgate_fleet.on_lost_lease",
            ),
            (
                "general_settings: {tollgate_fleet: {lease_ttl: 10}}\n",
                "lease_ttl",
            ),
            (
                "general_settings: {tollgate_fleet: {lease_ttl_seconds: ten}}\n",
                "lease_ttl_seconds",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        assert!(
            parse("litellm_settings: {budget_duration: 30d, budget_reset_time: \"09:30\"}\n")
                .is_ok()
        );
    }

    /// Issue 12 item 11: a misspelt key gets the nearest known key suggested.
    #[test]
    fn misspelt_keys_get_a_suggestion() {
        let loaded = parse(
            "model_lsit: []\nmodel_list:\n  - {model_name: a, litellm_params: {model: openai/x, input_cost_per_tokn: 1}}\ngeneral_settings: {master_ky: x, zzzzzzzz: 1}\n",
        )
        .unwrap();
        let w = loaded.warnings.join("\n");
        assert!(
            w.contains("`model_lsit` is ignored; did you mean `model_list`?"),
            "{w}"
        );
        assert!(
            w.contains("`model_list.0.litellm_params.input_cost_per_tokn` is ignored; did you mean `input_cost_per_token`?"),
            "{w}"
        );
        assert!(w.contains("did you mean `master_key`?"), "{w}");
        assert!(
            w.contains("`general_settings.zzzzzzzz` is ignored\n")
                || w.ends_with("`general_settings.zzzzzzzz` is ignored"),
            "{w}"
        );
    }

    /// Issue 13 §2: `model_info` fields LiteLLM passes through are kept, without warnings; a
    /// misspelt price among them is still pointed out.
    #[test]
    fn model_info_passthrough_fields_are_kept() {
        let loaded = parse("model_list:\n  - {model_name: a, litellm_params: {model: openai/x}, model_info: {supports_vision: true, mode: chat, base_model: gpt-4o, team_id: t1, input_cost_per_tokn: 1}}\n").unwrap();
        let info = &loaded.config.model_list[0].model_info;
        assert_eq!(info.extra["supports_vision"], serde_json::json!(true));
        assert_eq!(info.extra["team_id"], serde_json::json!("t1"));
        assert_eq!(info.mode.as_deref(), Some("chat"));
        assert_eq!(info.base_model.as_deref(), Some("gpt-4o"));
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("did you mean `input_cost_per_token`"));
    }

    /// Issue 12 item 11: a config with no models warns loudly.
    #[test]
    fn proxy_aliases_are_read_and_bad_shapes_refused() {
        let loaded = parse(
            "litellm_settings:\n  model_alias_map: {gpt4: gpt-4o}\nrouter_settings:\n  routing_strategy: simple-shuffle\n  model_group_alias:\n    claude: claude-3\n    secret: {model: gpt-4o, hidden: true}\n    open: {model: gpt-4o}\n",
        )
        .unwrap();
        assert!(
            !loaded
                .warnings
                .iter()
                .any(|w| w.contains("alias") || w.contains("routing")),
            "{:?}",
            loaded.warnings
        );
        let a = proxy_aliases(&loaded.config).unwrap();
        assert_eq!(
            a.model_alias_map.get("gpt4").map(String::as_str),
            Some("gpt-4o")
        );
        assert_eq!(a.group_target("claude"), Some("claude-3"));
        assert!(a.model_group_alias["secret"].hidden);
        assert!(!a.model_group_alias["open"].hidden);
        let listed: Vec<&str> = a.listed_group_aliases().map(|(n, _)| n).collect();
        assert_eq!(listed, ["claude", "open"]);
        for bad in [
            "router_settings: {model_group_alias: [a, b]}\n",
            "router_settings: {model_group_alias: {x: 3}}\n",
            "router_settings: {model_group_alias: {x: {hidden: true}}}\n",
            "router_settings: {model_group_alias: {x: {model: m, hidden: maybe}}}\n",
            "router_settings: {model_group_alias: {x: \"\"}}\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("router_settings.model_group_alias"),
                "{bad}: {e}"
            );
        }
        assert!(parse("litellm_settings: {model_alias_map: {a: [b]}}\n").is_err());
    }

    #[test]
    fn key_and_team_defaults_are_read_and_checked() {
        let loaded = parse(
            "litellm_settings:\n  default_key_generate_params: {max_budget: 5, models: [a], allowed_routes: [x]}\n  upperbound_key_generate_params: {max_budget: 10, duration: 30d}\n  default_team_params: {max_budget: 1, team_member_permissions: [/key/generate]}\n  default_internal_user_params: {user_role: internal_user}\n",
        )
        .unwrap();
        let ls = &loaded.config.litellm_settings;
        let d = ls.default_key_generate_params.clone().unwrap();
        assert_eq!(
            (d.max_budget, d.models),
            (Some(5.0), Some(vec!["a".to_string()]))
        );
        assert_eq!(
            ls.upperbound_key_generate_params
                .clone()
                .unwrap()
                .duration
                .as_deref(),
            Some("30d")
        );
        assert_eq!(
            ls.default_team_params.clone().unwrap().max_budget,
            Some(1.0)
        );
        let w = loaded.warnings.join("\n");
        assert!(
            w.contains("`litellm_settings.default_key_generate_params.allowed_routes` is ignored"),
            "{w}"
        );
        assert!(w.contains("default_internal_user_params is ignored"), "{w}");
        for (bad, field) in [
            (
                "litellm_settings: {upperbound_key_generate_params: {duration: 30x}}\n",
                "upperbound_key_generate_params.duration",
            ),
            (
                "litellm_settings: {default_team_params: {budget_duration: 1x}}\n",
                "default_team_params.budget_duration",
            ),
            (
                "litellm_settings: {default_key_generate_params: {max_budget: .inf}}\n",
                "default_key_generate_params.max_budget",
            ),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn unsupported_budget_settings_warn() {
        let loaded = parse(
            "general_settings: {disable_reset_budget: true}\nlitellm_settings: {budget_rollover: true}\n",
        )
        .unwrap();
        let w = loaded.warnings.join("\n");
        for field in ["disable_reset_budget", "budget_rollover"] {
            assert!(
                w.contains(&format!("{field} is not supported")),
                "{field}: {w}"
            );
        }
        let quiet = parse("general_settings: {disable_reset_budget: false}\n").unwrap();
        assert!(!quiet.warnings.join("\n").contains("not supported"));
    }

    #[test]
    fn customer_headers_come_from_mappings_else_user_header_name() {
        let headers = |text: &str| customer_id_headers(&parse(text).unwrap().config);
        assert!(headers("general_settings: {}\n").is_empty());
        assert_eq!(
            headers("general_settings: {user_header_name: X-My-User}\n"),
            ["x-my-user"]
        );
        assert_eq!(
            headers("general_settings:\n  user_header_name: x-old\n  user_header_mappings:\n    - {header_name: X-Staff, litellm_user_role: internal_user}\n    - {header_name: X-Customer, litellm_user_role: customer}\n"),
            ["x-customer"]
        );
        assert_eq!(
            headers("general_settings:\n  user_header_name: x-old\n  user_header_mappings:\n    - {header_name: X-Staff, litellm_user_role: internal_user}\n"),
            ["x-old"]
        );
    }

    #[test]
    fn no_models_warns() {
        let loaded =
            parse("model_lsit:\n  - {model_name: a, litellm_params: {model: openai/x}}\n").unwrap();
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.starts_with("WARNING: the config has no models")),
            "{:?}",
            loaded.warnings
        );
        assert!(!parse(SAMPLE)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("no models")));
    }

    #[test]
    fn empty_config_is_valid() {
        assert!(parse("").unwrap().config.model_list.is_empty());
    }

    /// Two deployments with one `model_info.id` would share one provider key slot.
    #[test]
    fn duplicate_deployment_ids_are_refused() {
        let text = concat!(
            "model_list:\n",
            "  - {model_name: a, litellm_params: {model: openai/x, api_base: 'https://one.example'}, model_info: {id: dup}}\n",
            "  - {model_name: b, litellm_params: {model: openai/y, api_base: 'https://two.example'}, model_info: {id: dup}}\n",
        );
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains(
                "model_list[0] (a) and model_list[1] (b) have the same model_info.id `dup`"
            ),
            "{err}"
        );
        assert!(parse(&text.replacen("id: dup}}\n", "id: one}}\n", 1)).is_ok());
    }
}
