//! `/spend/logs` and `/global/spend` (litellm-compat.md §5.3): spend as the sidecar recorded
//! it from the filter's settled calls.

use super::auth::Authorized;
use super::auth::Principal;
use super::common::{bad_request, now_micros, AdminError, AdminResult};
use super::Shared;
use crate::key_format::{hash_key, is_token_hash};
use crate::records::SpendEvent;
use crate::sidecar::store::{nanos_to_usd, KeyFilter, SpendLogQuery};
use crate::time::{format_iso8601_utc, parse_iso8601_utc};
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

/// `start_date` / `end_date` of `/spend/logs`: `YYYY-MM-DD` (UTC days, the end day included)
/// or a full ISO 8601 time (the end instant included). Returns unix microseconds, the end
/// exclusive.
fn spend_log_bound(field: &str, s: &str, end: bool) -> Result<i64, AdminError> {
    let micros = parse_iso8601_utc(s).ok_or_else(|| {
        bad_request(&format!(
            "Invalid {field} '{s}'. Use YYYY-MM-DD (e.g. 2026-01-31)."
        ))
    })?;
    Ok(match (end, s.trim().len() == 10) {
        (false, _) => micros,
        (true, true) => micros.saturating_add(86_400_000_000),
        (true, false) => micros.saturating_add(1),
    })
}

/// One `LiteLLM_SpendLogs` row as `/spend/logs` returns it.
fn spend_log_json(e: &SpendEvent, master_hash: &str) -> Value {
    let api_key = e.api_key.clone().unwrap_or_else(|| master_hash.to_string());
    json!({
        "request_id": e.request_id,
        "call_type": e.call_type,
        "api_key": api_key,
        "spend": nanos_to_usd(e.spend_nanos),
        "total_tokens": e.total_tokens,
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "startTime": format_iso8601_utc(e.start_time_micros),
        "endTime": format_iso8601_utc(e.end_time_micros),
        "completionStartTime": format_iso8601_utc(e.end_time_micros),
        "model": e.model,
        "model_id": e.model_id,
        "model_group": e.model,
        "user": e.user_id.clone().unwrap_or_default(),
        "end_user": e.end_user.clone().unwrap_or_default(),
        "team_id": e.team_id,
        "status": e.status,
        "cache_hit": "False",
        "request_tags": [],
        "metadata": {
            "estimated": e.estimated,
            "cached_tokens": e.cached_tokens,
            "user_api_key": api_key,
            "user_api_key_alias": e.key_alias,
            "user_api_key_user_id": e.user_id,
            "user_api_key_team_id": e.team_id,
            "user_api_key_end_user_id": e.end_user,
            // The client's `x-request-id`: informative only, never a key.
            "client_request_id": e.client_request_id,
            // The filter-minted id the store de-duplicates by.
            "spend_event_id": e.event_id,
        },
    })
}

/// `GET /spend/logs?api_key=&user_id=&request_id=&start_date=&end_date=`: spend-log rows,
/// newest first; the given filters all apply. A virtual key sees only its user's rows (or, with
/// no user, its own).
pub async fn spend_logs(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let param = |name: &str| q.get(name).filter(|v| !v.is_empty()).cloned();
    let master_hash = hash_key(&state.settings().master_key);
    let mut query = SpendLogQuery {
        user_id: param("user_id"),
        request_id: param("request_id"),
        ..Default::default()
    };
    if let Some(k) = param("api_key") {
        let token = if is_token_hash(&k) { k } else { hash_key(&k) };
        query.api_key = if !state.settings().master_key.is_empty() && token == master_hash {
            KeyFilter::Master
        } else {
            KeyFilter::Token(token)
        };
    }
    if let Some(s) = param("start_date") {
        query.start_micros = Some(spend_log_bound("start_date", &s, false)?);
    }
    if let Some(s) = param("end_date") {
        query.end_micros = Some(spend_log_bound("end_date", &s, true)?);
    }
    if let Some(l) = param("limit") {
        query.limit = Some(
            l.parse()
                .map_err(|_| bad_request(&format!("Invalid limit '{l}'")))?,
        );
    }
    if let Principal::Key { key: own, .. } = &principal {
        if !principal.is_admin_viewer() {
            match &own.user_id {
                Some(u) => query.user_id = Some(u.clone()),
                None => query.api_key = KeyFilter::Token(own.token.clone()),
            }
        }
    }
    let rows: Vec<Value> = state
        .store
        .spend_logs(&query)?
        .iter()
        .map(|e| spend_log_json(e, &master_hash))
        .collect();
    Ok(Json(rows).into_response())
}

/// `GET /global/spend`: the proxy budget's spend and limit.
pub async fn global_spend(State(state): State<Shared>, Authorized(_): Authorized) -> AdminResult {
    let proxy = state.store.proxy_budget_at(now_micros())?;
    Ok(Json(json!({
        "spend": proxy.spend_usd(),
        "max_budget": state.settings().budgets.proxy_max_budget.unwrap_or(0.0),
    }))
    .into_response())
}

/// `/spend/logs` and `/global/spend`.
pub fn routes() -> axum::Router<Shared> {
    use axum::routing::get;
    axum::Router::new()
        .route("/spend/logs", get(spend_logs))
        .route("/global/spend", get(global_spend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_log_dates_include_the_end_day() {
        let start = spend_log_bound("start_date", "2026-01-02", false).unwrap();
        let end = spend_log_bound("end_date", "2026-01-02", true).unwrap();
        assert_eq!(end - start, 86_400_000_000);
        assert!(spend_log_bound("end_date", "01/02/2026", true).is_err());
    }
}
