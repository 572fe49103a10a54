//! `GET /model/info` (also `/v1/model/info`): the deployments of the loaded config that the
//! caller may use (the master key and admins: all). `/v1/models` is answered by the filter.

use super::auth::{authorize, Principal};
use super::common::{now_micros, ok, AdminError, AdminResult};
use super::internal::key_record;
use super::Shared;
use crate::admission::{visible_models, Caller};
use crate::plugin_config::Deployment;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
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

pub async fn model_info(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let principal = authorize(&state, &headers, "/model/info")?;
    let settings = state.settings();
    let plugin = &settings.plugin;
    let allowed: Option<Vec<String>> = match &principal {
        p if p.is_admin_viewer() => None,
        Principal::Master => None,
        Principal::Key { key, .. } => {
            let record = state
                .store
                .transact(now_micros(), |tx| {
                    key_record(tx, key, &state).map_err(AdminError::from)
                })?
                .value;
            let caller = Caller::VirtualKey {
                record: std::rc::Rc::new(record),
                raw_last4: String::new(),
            };
            Some(
                visible_models(plugin, &caller)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            )
        }
    };
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
        .filter(|d| allowed.as_ref().map_or(true, |a| a.contains(&d.model_name)))
        .filter(|d| id.map_or(true, |i| *i == d.id))
        .map(|d| deployment_json(d, settings.model_info_extra.get(&d.id)))
        .collect();
    Ok(ok(json!({ "data": data })))
}
