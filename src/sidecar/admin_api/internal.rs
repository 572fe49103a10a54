//! The filter's endpoints (`/tollgate/internal/v1/*`, internal bearer only): key and customer
//! lookups, the change log, spend batches, the proxy budget and the provider keys.

use super::auth::internal_only;
use super::common::{model_limits, now_micros, transact, AdminError, AdminResult};
use super::{AdminState, Shared};
use crate::errors::ApiError;
use crate::provider_keys::ProviderKeys;
use crate::records::{
    BudgetState, Changes, CustomerLookup, CustomerRecord, KeyLookup, KeyRecord, LeaseRequest,
    ModelBudget, SpendBatch,
};
use crate::sidecar::metrics::StoreOp;
use crate::sidecar::store::leases::LeaseSettings;
use crate::sidecar::store::{nanos_to_usd, BudgetRow, EndUserRow, KeyRow, Tx, UserRow};
use crate::time::parse_iso8601_utc;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A key's `model_max_budget` as the filter enforces it (§2.4): entries
/// `{"max_budget"|"budget_limit": f, "budget_duration"|"time_period": "1d"}`; an entry without a
/// duration (or a limit) is unusable and skipped, as in LiteLLM. A JSON-encoded string is read too.
pub fn model_budgets(v: &Value) -> BTreeMap<String, ModelBudget> {
    let decoded;
    let v = match v {
        Value::String(s) => {
            decoded = serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
            &decoded
        }
        _ => v,
    };
    let Some(entries) = v.as_object() else {
        return BTreeMap::new();
    };
    let field = |e: &Value, a: &str, b: &str| -> Option<Value> {
        e.get(a)
            .filter(|x| !x.is_null())
            .or_else(|| e.get(b).filter(|x| !x.is_null()))
            .cloned()
    };
    entries
        .iter()
        .filter_map(|(model, e)| {
            let max_budget = budget_number(&field(e, "max_budget", "budget_limit")?)?;
            let duration = field(e, "budget_duration", "time_period")?;
            let duration = duration.as_str().filter(|d| !d.is_empty())?;
            Some((
                model.clone(),
                ModelBudget {
                    max_budget,
                    budget_duration: duration.to_string(),
                },
            ))
        })
        .collect()
}

/// A budget limit as LiteLLM reads it: a number, or a string `float()` accepts (the docs write
/// `"budget_limit": "0.0000001"`). Only finite values.
fn budget_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

/// `validate_model_max_budget` on /key/generate and /key/update: each entry an object whose
/// `budget_limit`/`max_budget` is a number (or numeric string), `time_period`/`budget_duration`
/// a string, `tpm_limit`/`rpm_limit` integers. Beyond LiteLLM (which stores it and then never
/// enforces the entry), a duration that does not parse is refused too. An entry without a
/// duration is accepted and not enforced, as in LiteLLM.
pub fn validate_model_max_budget(v: &Value) -> Result<(), String> {
    let entries = match v {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        _ => return Err("model_max_budget must be a dictionary".into()),
    };
    for (model, e) in entries {
        let Some(e) = e.as_object() else {
            return Err(format!("the entry for {model} must be a dictionary"));
        };
        let get = |a: &str, b: &str| {
            e.get(b)
                .filter(|x| !x.is_null())
                .or_else(|| e.get(a).filter(|x| !x.is_null()))
        };
        let limit = get("max_budget", "budget_limit");
        if let Some(l) = limit {
            if budget_number(l).is_none() {
                return Err(format!("{model}: budget_limit must be a number, got {l}"));
            }
        }
        let duration = get("budget_duration", "time_period");
        match duration {
            Some(Value::String(d)) => {
                crate::time::validate_budget_duration(d)
                    .map_err(|why| format!("{model}: {why}"))?;
            }
            Some(other) => {
                return Err(format!(
                    "{model}: time_period must be a string, got {other}"
                ))
            }
            None => {}
        }
        for k in ["tpm_limit", "rpm_limit"] {
            if let Some(x) = e.get(k).filter(|x| !x.is_null()) {
                if x.as_u64().is_none() {
                    return Err(format!("{model}: {k} must be an integer, got {x}"));
                }
            }
        }
    }
    Ok(())
}

/// A budget row's limit and period with an entity's spend and period end.
fn budget_state(
    budget: Option<&BudgetRow>,
    spend_nanos: i64,
    reset_at: Option<&str>,
) -> Option<BudgetState> {
    budget.map(|b| BudgetState {
        max_budget: b.max_budget,
        budget_duration: b.budget_duration.clone(),
        budget_reset_at_micros: reset_at.and_then(parse_iso8601_utc),
        spend_nanos,
    })
}

/// Everything the filter needs to decide for one key: the key (with its `budget_id` row's
/// limits where its own are unset), its user, its team, its membership in the team, and the
/// proxy budget. Budget periods that have ended are reset first.
pub fn key_record(tx: &Tx<'_>, row: &KeyRow, state: &AdminState) -> anyhow::Result<KeyRecord> {
    let user: Option<UserRow> = match &row.user_id {
        Some(id) => tx.user(id)?,
        None => None,
    };
    let linked = match &row.budget_id {
        Some(id) => tx.budget(id)?,
        None => None,
    };
    let linked = linked.as_ref();
    let proxy = tx.proxy_budget()?;
    let mut record = KeyRecord {
        model_rpm_limit: model_limits(&row.metadata, "model_rpm_limit"),
        model_tpm_limit: model_limits(&row.metadata, "model_tpm_limit"),
        user_rpm_limit: user.as_ref().and_then(|u| u.rpm_limit),
        user_tpm_limit: user.as_ref().and_then(|u| u.tpm_limit),
        token: row.token.clone(),
        key_name: row.key_name.clone(),
        key_alias: row.key_alias.clone(),
        models: row.models.clone(),
        user_id: row.user_id.clone(),
        team_id: row.team_id.clone(),
        user_models: user.as_ref().map(|u| u.models.clone()).unwrap_or_default(),
        expires_at_micros: row.expires.as_deref().and_then(parse_iso8601_utc),
        blocked: row.blocked.unwrap_or(false),
        max_budget: row.max_budget.or(linked.and_then(|b| b.max_budget)),
        spend: nanos_to_usd(row.spend_nanos),
        rpm_limit: row.rpm_limit.or(linked.and_then(|b| b.rpm_limit)),
        tpm_limit: row.tpm_limit.or(linked.and_then(|b| b.tpm_limit)),
        max_parallel_requests: row
            .max_parallel_requests
            .or(linked.and_then(|b| b.max_parallel_requests)),
        budget_duration: row
            .budget_duration
            .clone()
            .or(linked.and_then(|b| b.budget_duration.clone())),
        budget_reset_at_micros: row.budget_reset_at_micros(),
        spend_nanos: row.spend_nanos,
        model_max_budget: model_budgets(&row.model_max_budget),
        aliases: crate::model_access::alias_map(&row.aliases),
        user_budget: user.as_ref().map(UserRow::budget_state),
        proxy_budget: Some(proxy.state(state.settings().budgets.proxy_max_budget)),
        ..Default::default()
    };
    let mut team_org = None;
    if let Some(team_id) = &row.team_id {
        if let Some(team) = tx.team(team_id)? {
            team_org.clone_from(&team.organization_id);
            record.team_models = team.models.clone();
            record.team_model_aliases = crate::model_access::alias_map(&team.model_aliases);
            record.team_blocked = team.blocked;
            record.team_budget = Some(BudgetState {
                max_budget: team.max_budget,
                budget_duration: team.budget_duration.clone(),
                budget_reset_at_micros: team.budget_reset_at.as_deref().and_then(parse_iso8601_utc),
                spend_nanos: team.spend_nanos,
            });
            record.team_rpm_limit = team.rpm_limit;
            record.team_tpm_limit = team.tpm_limit;
            record.team_model_rpm_limit = model_limits(&team.metadata, "model_rpm_limit");
            record.team_model_tpm_limit = model_limits(&team.metadata, "model_tpm_limit");
            if let Some(user_id) = &row.user_id {
                if let Some((m, budget)) = tx.membership(team_id, user_id)? {
                    record.team_member_budget =
                        budget_state(budget.as_ref(), m.spend_nanos, m.budget_reset_at.as_deref());
                    record.team_member_rpm_limit = budget.as_ref().and_then(|b| b.rpm_limit);
                    record.team_member_tpm_limit = budget.as_ref().and_then(|b| b.tpm_limit);
                }
            }
        }
    }
    // LiteLLM's `org_id or team.organization_id`.
    if let Some(org_id) = row.organization_id.clone().or(team_org) {
        if let Some((org, budget)) = tx.organization(&org_id)? {
            record.organization_models = org.models.clone();
            record.organization_budget = budget_state(
                budget.as_ref(),
                org.spend_nanos,
                org.budget_reset_at.as_deref(),
            );
            record.organization_rpm_limit = budget.as_ref().and_then(|b| b.rpm_limit);
            record.organization_tpm_limit = budget.as_ref().and_then(|b| b.tpm_limit);
            record.organization_model_rpm_limit = model_limits(&org.metadata, "model_rpm_limit");
            record.organization_model_tpm_limit = model_limits(&org.metadata, "model_tpm_limit");
            record.organization_id = Some(org_id);
        }
    }
    Ok(record)
}

/// What a key may itself do, as the filter enforces it ([`key_record`]): its models (an empty
/// or `all-team-models` list is its team's models; without team, its user's) and its limits
/// (its own, else its `budget_id` row's). The ceiling for the keys it creates.
pub fn effective_key(tx: &Tx<'_>, row: &KeyRow, state: &AdminState) -> anyhow::Result<KeyRow> {
    let record = key_record(tx, row, state)?;
    let mut models = crate::admission::key_models(&record).to_vec();
    if crate::model_access::allows_all(&models) {
        models = match record.team_id {
            Some(_) => record.team_models.clone(),
            None => record.user_models.clone(),
        };
    }
    Ok(KeyRow {
        models,
        max_budget: record.max_budget,
        budget_duration: record.budget_duration,
        rpm_limit: record.rpm_limit,
        tpm_limit: record.tpm_limit,
        max_parallel_requests: record.max_parallel_requests,
        ..row.clone()
    })
}

/// The filter's view of a customer: its budget (own, else the proxy's default).
pub fn customer_record(row: &EndUserRow, budget: Option<&BudgetRow>) -> CustomerRecord {
    CustomerRecord {
        user_id: row.user_id.clone(),
        blocked: row.blocked,
        models: row.models.clone(),
        budget: budget_state(budget, row.spend_nanos, row.budget_reset_at.as_deref()),
        rpm_limit: budget.and_then(|b| b.rpm_limit),
        tpm_limit: budget.and_then(|b| b.tpm_limit),
    }
}

/// `GET /tollgate/internal/v1/keys/{hash}` → [`KeyLookup`].
pub async fn internal_key(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let started = std::time::Instant::now();
    let done = transact(&state, |tx| {
        let Some(row) = tx.key(&hash)? else {
            return Ok(KeyLookup::NotFound);
        };
        Ok(KeyLookup::Found {
            key: Box::new(key_record(tx, &row, &state)?),
            seq: tx.change_seq()?,
        })
    })?;
    state
        .metrics
        .observe_store(StoreOp::KeyLookup, started.elapsed().as_secs_f64());
    Ok(Json(done.value).into_response())
}

/// `GET /tollgate/internal/v1/customers/{id}` → [`CustomerLookup`].
pub async fn internal_customer(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let done = transact(&state, |tx| {
        Ok(match tx.end_user(&id)? {
            Some((row, budget)) => CustomerLookup::Found {
                customer: Box::new(customer_record(&row, budget.as_ref())),
            },
            None => CustomerLookup::NotFound {
                default_budget: budget_state(tx.default_end_user_budget()?.as_ref(), 0, None),
            },
        })
    })?;
    Ok(Json(done.value).into_response())
}

/// `GET /tollgate/internal/v1/changes?since=<seq>` → [`Changes`]: the entries recorded after
/// `since` (key hashes, `customer:<id>`, or `*`). Without `since`: the latest seq only.
pub async fn internal_changes(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let since =
        match q.get("since").filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<i64>().map_err(|_| {
                AdminError::Api(ApiError::bad_request(format!("Invalid since '{s}'")))
            })?),
        };
    let c = state.store.changes_since(since)?;
    Ok(Json(Changes {
        seq: c.seq,
        entries: c.entries,
        provider_keys: Some(ProviderKeys::of(&state.settings().plugin.deployments).fingerprint),
    })
    .into_response())
}

/// `GET /tollgate/internal/v1/provider-keys` → [`ProviderKeys`]: the keys the filter puts on
/// upstream requests (they are in no Envoy or Istio configuration). Answered only to the
/// internal bearer; in Istio also only to the gateway's mesh identity (an AuthorizationPolicy).
pub async fn internal_provider_keys(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let keys = ProviderKeys::of(&state.settings().plugin.deployments);
    let mut response = Json(keys).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `POST /tollgate/internal/v1/spend`: the filter's settled calls. Idempotent per `event_id`.
pub async fn internal_spend(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let batch: SpendBatch = serde_json::from_slice(&body)
        .map_err(|e| AdminError::Api(ApiError::bad_request(format!("Invalid spend batch: {e}"))))?;
    let shared = Arc::clone(&state);
    let applied = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let (applied, indexes) = shared
            .store
            .apply_spend_batch_indexed(&batch, now_micros())?;
        shared
            .metrics
            .observe_store(StoreOp::SpendBatch, started.elapsed().as_secs_f64());
        let events: Vec<_> = indexes
            .iter()
            .filter_map(|&i| batch.events.get(i))
            .collect();
        shared
            .metrics
            .record_spend_batch(&events, applied.duplicates, &shared.settings().plugin);
        anyhow::Ok(applied)
    })
    .await
    .map_err(|e| anyhow::anyhow!("spend batch task failed: {e}"))??;
    Ok(Json(applied).into_response())
}

/// `POST /tollgate/internal/v1/leases` (fleet mode): one Envoy's cumulative report on the
/// budgets it uses → a grant per item, in the request's order, made in one store transaction
/// (`Tx::lease`). A malformed item (unknown level, wrong number of ids, a scope that is not
/// the name of its level and ids) refuses the whole call with 400.
pub async fn internal_leases(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let req: LeaseRequest = serde_json::from_slice(&body).map_err(|e| {
        AdminError::Api(ApiError::bad_request(format!("Invalid lease request: {e}")))
    })?;
    if req.envoy_id.is_empty() {
        return Err(AdminError::Api(ApiError::bad_request(
            "Invalid lease request: envoy_id is empty",
        )));
    }
    if let Some(why) = req
        .items
        .iter()
        .find_map(crate::sidecar::store::leases::item_error)
    {
        return Err(AdminError::Api(ApiError::bad_request(format!(
            "Invalid lease request: {why}"
        ))));
    }
    let settings = state.settings();
    let lease_settings = LeaseSettings {
        ttl_ms: settings
            .plugin
            .fleet
            .clone()
            .unwrap_or_default()
            .lease_ttl_ms,
        proxy_max_budget: settings.budgets.proxy_max_budget,
        rate_window_micros: i64::try_from(settings.plugin.rate_limit_window_seconds.max(1))
            .unwrap_or(60)
            .saturating_mul(1_000_000),
    };
    let answer = state.store.lease(&req, lease_settings, now_micros())?;
    Ok(Json(answer).into_response())
}

/// The filter's endpoints; a spend batch may be larger than other bodies (`spend_limit`).
pub fn routes(spend_limit: usize) -> axum::Router<Shared> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            &format!("{}{{hash}}", crate::contract::KEYS_PATH),
            get(internal_key),
        )
        .route(
            &format!("{}{{id}}", crate::contract::CUSTOMERS_PATH),
            get(internal_customer),
        )
        .route(crate::contract::CHANGES_PATH, get(internal_changes))
        .route(
            crate::contract::SPEND_PATH,
            post(internal_spend).layer(axum::extract::DefaultBodyLimit::max(spend_limit)),
        )
        .route(crate::contract::LEASES_PATH, post(internal_leases))
        .route(
            crate::contract::PROVIDER_KEYS_PATH,
            get(internal_provider_keys),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn model_max_budget_entries_need_a_duration() {
        let v = json!({
            "gpt-4o": {"max_budget": 1.5, "budget_duration": "1d"},
            "gpt-4o-mini": {"budget_limit": 0.5, "time_period": "1h"},
            "no-period": {"max_budget": 2.0},
            "no-limit": {"budget_duration": "1d"},
            "nulls": {"max_budget": null, "budget_limit": 3.0, "budget_duration": null, "time_period": "7d"},
        });
        let m = model_budgets(&v);
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["gpt-4o", "gpt-4o-mini", "nulls"]
        );
        assert_eq!(m["gpt-4o-mini"].max_budget, 0.5);
        assert_eq!(m["gpt-4o-mini"].budget_duration, "1h");
        assert_eq!(m["nulls"].budget_duration, "7d");
        assert_eq!(model_budgets(&json!(v.to_string())), m);
        assert!(model_budgets(&json!([])).is_empty());
    }

    /// Issue 13 §2: the docs write the limit as a string; it is enforced like a number.
    #[test]
    fn string_budget_limit_as_the_docs_write_it() {
        let v = json!({"gpt-4o": {"budget_limit": "0.0000001", "time_period": "1d"}});
        let m = model_budgets(&v);
        assert_eq!(m["gpt-4o"].max_budget, 0.0000001);
        assert_eq!(m["gpt-4o"].budget_duration, "1d");
        assert!(validate_model_max_budget(&v).is_ok());
    }

    #[test]
    fn invalid_model_max_budget_is_refused() {
        for bad in [
            json!([1]),
            json!({"m": 5.0}),
            json!({"m": {"budget_limit": "lots", "time_period": "1d"}}),
            json!({"m": {"budget_limit": 1, "time_period": 30}}),
            json!({"m": {"budget_limit": 1, "time_period": "30x"}}),
            json!({"m": {"max_budget": 1, "budget_duration": "1d", "tpm_limit": "many"}}),
        ] {
            assert!(validate_model_max_budget(&bad).is_err(), "{bad}");
        }
        assert!(validate_model_max_budget(&json!({})).is_ok());
        assert!(validate_model_max_budget(&json!({"m": {"budget_limit": 1}})).is_ok());
        assert!(validate_model_max_budget(&json!(null)).is_ok());
        assert!(validate_model_max_budget(
            &json!({"m": {"max_budget": 2, "budget_duration": "30d", "tpm_limit": 10}})
        )
        .is_ok());
    }
}
