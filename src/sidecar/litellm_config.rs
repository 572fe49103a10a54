//! Loading LiteLLM's `config.yaml` (litellm-compat.md §1): typed, with unknown keys reported,
//! wrong types and missing fields refused with the field and line, `os.environ/NAME` resolved
//! and `environment_variables` applied.

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

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
    /// Accepted and not used: routing is Envoy's job.
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
    pub max_output_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub mode: Option<String>,
    pub base_model: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GeneralSettings {
    pub master_key: Option<String>,
    pub database_url: Option<String>,
    pub litellm_key_header_name: Option<String>,
    pub dangerously_permit_weak_or_unset_master_key: Option<bool>,
    pub proxy_budget_rescheduler_min_time: Option<u64>,
    pub proxy_budget_rescheduler_max_time: Option<u64>,
    pub proxy_batch_write_at: Option<u64>,
    pub disable_budget_reservation: Option<bool>,
    pub disable_reset_budget: Option<bool>,
    pub enforce_user_param: Option<bool>,
    pub user_header_name: Option<String>,
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
}

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
    pub default_key_generate_params: Option<serde_yaml_ng::Value>,
    pub upperbound_key_generate_params: Option<serde_yaml_ng::Value>,
    pub default_internal_user_params: Option<serde_yaml_ng::Value>,
    pub default_team_params: Option<serde_yaml_ng::Value>,
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
            warnings.push(format!("unknown config key `{path}` is ignored"));
        })
        .map_err(|e| anyhow!("invalid config: {e}"))?
    };
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
    Ok(Loaded { config, warnings })
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

    #[test]
    fn empty_config_is_valid() {
        assert!(parse("").unwrap().config.model_list.is_empty());
    }
}
