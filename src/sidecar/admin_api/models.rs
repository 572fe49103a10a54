//! `GET /model/info` (also `/v1/model/info`): the deployments of the loaded config that the
//! caller may use (the master key and admins: all); `GET /model_group/info`: one entry per
//! model name the caller may use, its deployments merged as LiteLLM merges them.
//! `/v1/models` is answered by the filter.

use super::auth::Authorized;
use super::auth::Principal;
use super::common::{now_micros, ok, AdminError, AdminResult};
use super::internal::key_record;
use super::Shared;
use crate::admission::Caller;
use crate::model_list::{visible_models, ListOptions};
use crate::plugin_config::Deployment;
use axum::extract::{Query, State};
use serde_json::{json, Value};
use std::collections::HashMap;

/// One `model_list` entry as LiteLLM's `/model/info` shows it (no provider key), with the
/// `model_info` fields the config passes through.
fn deployment_json(d: &Deployment, extra: Option<&serde_json::Map<String, Value>>) -> Value {
    let model = if !d.model_pattern.is_empty() {
        d.model_pattern.clone()
    } else if d.provider.is_empty() {
        d.backend_model.clone()
    } else {
        format!("{}/{}", d.provider, d.backend_model)
    };
    let mut v = json!({
        "model_name": d.model_name,
        "litellm_params": {
            "model": model,
            "default_api_key_rpm_limit": d.default_api_key_rpm_limit,
            "default_api_key_tpm_limit": d.default_api_key_tpm_limit,
        },
        "model_info": {
            "id": d.id,
            "db_model": false,
            "access_groups": d.access_groups,
            "input_cost_per_token": d.pricing.input_cost_per_token,
            "output_cost_per_token": d.pricing.output_cost_per_token,
            "cache_read_input_token_cost": d.pricing.cache_read_input_token_cost,
            "output_cost_per_reasoning_token": d.pricing.output_cost_per_reasoning_token,
            "max_output_tokens": d.pricing.max_output_tokens,
            "litellm_provider": d.provider,
        },
    });
    if let (Some(extra), Some(info)) = (extra, v["model_info"].as_object_mut()) {
        for (k, val) in extra {
            info.entry(k.clone()).or_insert_with(|| val.clone());
        }
    }
    v
}

/// The model names the caller may use (`None`: all, for the master key and admin roles).
/// Wildcard routes are kept as such (`/model/info` lists deployments).
fn allowed_names(
    state: &Shared,
    principal: &Principal,
    options: ListOptions,
) -> Result<Option<Vec<String>>, AdminError> {
    let key = match principal {
        p if p.is_admin_viewer() => return Ok(None),
        Principal::Master => return Ok(None),
        Principal::Key { key, .. } => key,
    };
    let record = state
        .store
        .transact(now_micros(), |tx| {
            key_record(tx, key, state).map_err(AdminError::from)
        })?
        .value;
    let caller = Caller::VirtualKey {
        record: std::rc::Rc::new(record),
        raw_last4: String::new(),
    };
    Ok(Some(visible_models(
        &state.settings().plugin,
        &caller,
        options,
    )))
}

pub async fn model_info(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let settings = state.settings();
    let plugin = &settings.plugin;
    let routes = ListOptions {
        return_wildcard_routes: true,
        ..Default::default()
    };
    let allowed = allowed_names(&state, &principal, routes)?;
    let id = q.get("litellm_model_id").filter(|s| !s.is_empty());
    // A wildcard entry is one deployment per provider in the plugin config: shown once.
    let mut seen: Vec<&str> = Vec::new();
    let data: Vec<Value> = plugin
        .deployments
        .iter()
        .filter(|d| {
            let first = !seen.contains(&d.id.as_str());
            seen.push(&d.id);
            first
        })
        .filter(|d| allowed.as_ref().is_none_or(|a| a.contains(&d.model_name)))
        .filter(|d| id.is_none_or(|i| *i == d.id))
        .map(|d| deployment_json(d, settings.model_info_extra.get(&d.id)))
        .collect();
    // The router's listed aliases, each as its target's deployments under the alias's name
    // (LiteLLM's `get_model_list`).
    let mut data = data;
    for (alias, target) in plugin.aliases.listed_group_aliases() {
        if allowed
            .as_ref()
            .is_some_and(|a| !a.iter().any(|n| n == alias))
        {
            continue;
        }
        let mut seen: Vec<String> = Vec::new();
        for d in crate::admission::route_candidates(plugin, target) {
            if seen.contains(&d.id) || id.is_some_and(|i| *i != d.id) {
                continue;
            }
            seen.push(d.id.clone());
            let mut aliased = d.into_owned();
            aliased.model_name = alias.to_string();
            data.push(deployment_json(
                &aliased,
                settings.model_info_extra.get(&aliased.id),
            ));
        }
    }
    Ok(ok(json!({ "data": data })))
}

/// The `supports_*` flags `ModelGroupInfo` has, each `false` unless a deployment says `true`.
const GROUP_SUPPORTS: [&str; 8] = [
    "supports_parallel_function_calling",
    "supports_vision",
    "supports_web_search",
    "supports_url_context",
    "supports_continuation",
    "supports_reasoning",
    "supports_function_calling",
    "supports_fast_mode",
];

/// One `ModelGroupInfoProxy`: the group's deployments merged as LiteLLM's
/// `_set_model_group_info` merges them (largest context and prices, a capability when any
/// deployment has it, providers in order, `tpm`/`rpm` summed over the deployments that set them).
fn model_group_json(
    name: &str,
    deployments: &[std::borrow::Cow<'_, Deployment>],
    settings: &super::AdminSettings,
) -> Value {
    let mut providers: Vec<&str> = Vec::new();
    let mut max_input: Option<f64> = None;
    let mut max_output: Option<f64> = None;
    let mut input_cost: Option<f64> = None;
    let mut output_cost: Option<f64> = None;
    let mut mode: Option<Value> = None;
    let mut description: Option<Value> = None;
    let mut tpm: Option<u64> = None;
    let mut rpm: Option<u64> = None;
    let mut supports: serde_json::Map<String, Value> = GROUP_SUPPORTS
        .iter()
        .map(|k| (k.to_string(), Value::Bool(false)))
        .collect();
    let larger = |acc: &mut Option<f64>, v: Option<f64>| {
        if let Some(v) = v {
            if acc.is_none_or(|a| v > a) {
                *acc = Some(v);
            }
        }
    };
    let mut seen: Vec<&str> = Vec::new();
    for d in deployments {
        // A wildcard entry is one deployment per provider in the plugin config: counted once.
        if seen.contains(&d.id.as_str()) {
            continue;
        }
        seen.push(&d.id);
        if !d.provider.is_empty() && !providers.contains(&d.provider.as_str()) {
            providers.push(&d.provider);
        }
        let extra = settings.model_info_extra.get(&d.id);
        let field = |k: &str| extra.and_then(|e| e.get(k)).filter(|v| !v.is_null());
        larger(
            &mut max_input,
            field("max_input_tokens").and_then(Value::as_f64),
        );
        larger(
            &mut max_output,
            d.pricing.max_output_tokens.map(|t| t as f64),
        );
        larger(&mut input_cost, d.pricing.input_cost_per_token);
        larger(&mut output_cost, d.pricing.output_cost_per_token);
        if mode.is_none() {
            mode = field("mode").cloned();
        }
        if description.is_none() {
            description = field("description").cloned();
        }
        for k in GROUP_SUPPORTS {
            if field(k).and_then(Value::as_bool) == Some(true) {
                supports.insert(k.to_string(), Value::Bool(true));
            }
        }
        if let Some((t, r)) = settings.deployment_tpm_rpm.get(&d.id) {
            if let Some(t) = t {
                tpm = Some(tpm.unwrap_or(0).saturating_add(*t));
            }
            if let Some(r) = r {
                rpm = Some(rpm.unwrap_or(0).saturating_add(*r));
            }
        }
    }
    let mut v = json!({
        "model_group": name,
        "providers": providers,
        "max_input_tokens": max_input,
        "max_output_tokens": max_output,
        "input_cost_per_token": input_cost,
        "output_cost_per_token": output_cost,
        "input_cost_per_pixel": null,
        "mode": mode,
        "tpm": tpm,
        "rpm": rpm,
        "itpm": null,
        "otpm": null,
        "supported_reasoning_efforts": null,
        "supported_openai_params": [],
        "configurable_clientside_auth_params": null,
        "description": description,
        "supported_endpoints": null,
        "deployment_pricing": [],
        "supports_background_chat": false,
        "is_public_model_group": false,
        "health_status": null,
        "health_response_time": null,
        "health_checked_at": null,
        "custom_tags": null,
        "custom_metadata": null,
    });
    if let Some(o) = v.as_object_mut() {
        o.extend(supports);
    }
    v
}

/// `GET /model_group/info[?model_group=<name>]`: one entry per model name the caller may use
/// (wildcard routes expanded into the models they reach, as LiteLLM lists them).
pub async fn model_group_info(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let settings = state.settings();
    let plugin = &settings.plugin;
    let names = match allowed_names(&state, &principal, ListOptions::default())? {
        Some(names) => names,
        None => visible_models(plugin, &Caller::Master, ListOptions::default()),
    };
    let wanted = q.get("model_group");
    let data: Vec<Value> = names
        .iter()
        .filter(|name| wanted.is_none_or(|w| w == *name))
        .map(|name| {
            // A router alias describes its target's deployments under its own name.
            let target = plugin.aliases.group_target(name).unwrap_or(name);
            let deployments = crate::admission::route_candidates(plugin, target);
            model_group_json(name, &deployments, &settings)
        })
        .collect();
    Ok(ok(json!({ "data": data })))
}

/// `/model/info` (also `/v1/model/info`) and `/model_group/info`.
pub fn routes() -> axum::Router<Shared> {
    use axum::routing::get;
    axum::Router::new()
        .route("/model/info", get(model_info))
        .route("/v1/model/info", get(model_info))
        .route("/model_group/info", get(model_group_info))
}
