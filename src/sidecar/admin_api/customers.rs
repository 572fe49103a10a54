//! `/customer/*` (= `/end_user/*`): customers, the end users a request names (litellm-compat.md
//! §2.5, §5.3). As in LiteLLM, a customer's limits live in a budget row (`budget_id`):
//! `max_budget`, `budget_duration`, `tpm_limit`, ... on `/customer/new` create one. Admin only.
//!
//! Tollgate enforces `blocked` (LiteLLM only stores it): a blocked customer's requests get
//! 401 `auth_error` (see `admission::check_customer`).

use super::auth::Authorized;
use super::common::{
    bad_request, changed, check_budget, check_budget_duration, detail_error, new_uuid, ok,
    row_json, spend_nanos_of, transact, usd, validation_error, AdminError, AdminResult, Fields,
};
use super::{AdminState, Shared};
use crate::errors::ApiError;
use crate::sidecar::store::{BudgetRow, EndUserRow, Tx};
use crate::time::format_iso8601_utc;
use axum::extract::{Query, State};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Budget fields a customer request may carry (they go to its budget row).
const BUDGET_FIELDS: [&str; 8] = [
    "max_budget",
    "soft_budget",
    "budget_duration",
    "tpm_limit",
    "rpm_limit",
    "max_parallel_requests",
    "model_max_budget",
    "budget_reset_at",
];

/// A customer as LiteLLM answers it (`LiteLLM_EndUserTable` with `litellm_budget_table`).
pub fn customer_json(row: &EndUserRow, budget: Option<&BudgetRow>) -> Value {
    json!({
        "user_id": row.user_id,
        "alias": row.alias,
        "spend": usd(row.spend_nanos),
        "allowed_model_region": row.allowed_model_region,
        "default_model": row.default_model,
        "budget_id": row.budget_id,
        "blocked": row.blocked,
        "models": row.models,
        // The linked row only (not the proxy's default customer budget).
        "litellm_budget_table": budget
            .filter(|b| row.budget_id.as_deref() == Some(b.budget_id.as_str()))
            .map(row_json),
        "object_permission": null,
        "object_permission_id": null,
    })
}

fn not_found(id: &str, param: &str) -> AdminError {
    AdminError::Api(
        ApiError::new(
            404,
            "not_found",
            format!("End User Id={id} does not exist in db"),
        )
        .with_param(param),
    )
}

/// Applies budget fields to `row` (validated); true when any was given (non-null).
fn apply_budget_fields(
    state: &AdminState,
    tx: &Tx<'_>,
    row: &mut BudgetRow,
    f: &Fields,
) -> Result<bool, AdminError> {
    let now = tx.now();
    let mut any = false;
    if let Some(Some(v)) = f.float("max_budget")? {
        check_budget("max_budget", Some(v))?;
        row.max_budget = Some(v);
        any = true;
    }
    if let Some(Some(v)) = f.float("soft_budget")? {
        check_budget("soft_budget", Some(v))?;
        row.soft_budget = Some(v);
        any = true;
    }
    if let Some(Some(d)) = f.string("budget_duration")? {
        let (d, at) = check_budget_duration(&state.settings(), &Some(d), now)?;
        row.budget_duration = d;
        row.budget_reset_at = at;
        any = true;
    }
    if let Some(Some(at)) = f.string("budget_reset_at")? {
        row.budget_reset_at = Some(at);
        any = true;
    }
    for (field, slot) in [
        ("tpm_limit", &mut row.tpm_limit),
        ("rpm_limit", &mut row.rpm_limit),
        ("max_parallel_requests", &mut row.max_parallel_requests),
    ] {
        if let Some(Some(v)) = f.uint(field)? {
            *slot = Some(v);
            any = true;
        }
    }
    if let Some(v) = f.value("model_max_budget").filter(|v| !v.is_null()) {
        row.model_max_budget = Some(v);
        any = true;
    }
    if any {
        row.updated_at = format_iso8601_utc(now);
    }
    Ok(any)
}

fn check_default_model(state: &AdminState, f: &Fields) -> Result<(), AdminError> {
    if let Some(Some(m)) = f.string("default_model")? {
        let settings = state.settings();
        let names = settings.plugin.model_names();
        if !names.contains(&m.as_str()) {
            return Err(detail_error(
                422,
                &format!(
                    "Default Model not on proxy. Configure via `/model/new` or config.yaml. Default_model={m}, proxy_model_names={names:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// `POST /customer/new`: `user_id` (required), `alias`, `blocked`, `max_budget` or `budget_id`
/// (not both), `budget_duration`, `tpm_limit`, `rpm_limit`, `models`, `spend`, ...
pub async fn customer_new(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let user_id = f.required_string("user_id")?;
    let budget_id = f.string("budget_id")?.flatten();
    if budget_id.is_some() && matches!(f.float("max_budget")?, Some(Some(_))) {
        return Err(bad_request(
            "Either 'max_budget' or 'budget_id' should be provided, not both",
        ));
    }
    check_default_model(&state, &f)?;
    let done = transact(&state, |tx| {
        let now = tx.now();
        if tx.end_user(&user_id)?.is_some() {
            return Err(AdminError::Api(
                ApiError::new(
                    400,
                    "bad_request",
                    format!(
                        "Customer already exists, passed user_id={user_id}. Please pass a new user_id."
                    ),
                )
                .with_param("user_id"),
            ));
        }
        let created = format_iso8601_utc(now);
        let mut budget = BudgetRow {
            budget_id: new_uuid(),
            created_at: created.clone(),
            ..Default::default()
        };
        let linked = if apply_budget_fields(&state, tx, &mut budget, &f)? {
            tx.save_budget(&budget)?;
            Some(budget.budget_id.clone())
        } else if let Some(id) = &budget_id {
            if tx.budget(id)?.is_none() {
                return Err(bad_request(&format!(
                    "Budget doesn't exist in db. Budget={id}."
                )));
            }
            Some(id.clone())
        } else {
            None
        };
        let spend_nanos = spend_nanos_of(f.float("spend")?.flatten());
        let row = EndUserRow {
            user_id: user_id.clone(),
            alias: f.string("alias")?.flatten(),
            spend: usd(spend_nanos),
            spend_nanos,
            allowed_model_region: f.string("allowed_model_region")?.flatten(),
            default_model: f.string("default_model")?.flatten(),
            budget_id: linked,
            blocked: f.boolean("blocked")?.flatten().unwrap_or(false),
            models: f.strings("models")?.flatten().unwrap_or_default(),
            created_at: created.clone(),
            updated_at: created,
            ..Default::default()
        };
        tx.save_end_user(&row)?;
        tx.invalidate_customer(&user_id);
        let (row, budget) = tx
            .end_user(&user_id)?
            .ok_or_else(|| not_found(&user_id, "user_id"))?;
        Ok(customer_json(&row, budget.as_ref()))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `GET /customer/info?end_user_id=`.
pub async fn customer_info(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let id = q
        .get("end_user_id")
        .cloned()
        .ok_or_else(|| validation_error(&["query", "end_user_id"], "Field required"))?;
    let done = transact(&state, |tx| {
        let (row, budget) = tx
            .end_user(&id)?
            .ok_or_else(|| not_found(&id, "end_user_id"))?;
        Ok(customer_json(&row, budget.as_ref()))
    })?;
    Ok(ok(done.value))
}

/// `POST /customer/update {"user_id", ...}`: budget fields update the customer's budget row
/// (created if it has none); `budget_id` links another row. As in LiteLLM, `null` fields are
/// ignored.
pub async fn customer_update(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let user_id = f.required_string("user_id")?;
    check_default_model(&state, &f)?;
    let done = transact(&state, |tx| {
        let now = tx.now();
        let Some((mut row, _)) = tx.end_user(&user_id)? else {
            return Err(not_found(&user_id, "user_id"));
        };
        if let Some(Some(id)) = f.string("budget_id")? {
            if tx.budget(&id)?.is_none() {
                return Err(bad_request(&format!(
                    "Budget doesn't exist in db. Budget={id}."
                )));
            }
            row.budget_id = Some(id);
        }
        if BUDGET_FIELDS.iter().any(|b| f.has(b)) {
            let mut budget = match row.budget_id.as_deref() {
                Some(id) => tx.budget(id)?,
                None => None,
            }
            .unwrap_or_else(|| BudgetRow {
                budget_id: new_uuid(),
                created_at: format_iso8601_utc(now),
                ..Default::default()
            });
            if apply_budget_fields(&state, tx, &mut budget, &f)? {
                tx.save_budget(&budget)?;
                row.budget_id = Some(budget.budget_id.clone());
            }
        }
        if let Some(Some(v)) = f.string("alias")? {
            row.alias = Some(v);
        }
        if let Some(Some(v)) = f.boolean("blocked")? {
            row.blocked = v;
        }
        if let Some(Some(v)) = f.strings("models")? {
            row.models = v;
        }
        if let Some(Some(v)) = f.string("allowed_model_region")? {
            row.allowed_model_region = Some(v);
        }
        if let Some(Some(v)) = f.string("default_model")? {
            row.default_model = Some(v);
        }
        if let Some(Some(v)) = f.float("spend")? {
            row.set_spend_nanos(spend_nanos_of(Some(v)));
        }
        row.updated_at = format_iso8601_utc(now);
        tx.save_end_user(&row)?;
        tx.invalidate_customer(&user_id);
        let (row, budget) = tx
            .end_user(&user_id)?
            .ok_or_else(|| not_found(&user_id, "user_id"))?;
        Ok(customer_json(&row, budget.as_ref()))
    })?;
    Ok(changed(done.value, &done.entries))
}

fn user_ids(f: &Fields) -> Result<Vec<String>, AdminError> {
    f.string_list("user_ids")?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| validation_error(&["body", "user_ids"], "Field required"))
}

fn py_list(ids: &[String]) -> String {
    let items: Vec<String> = ids.iter().map(|i| super::common::py_repr(i)).collect();
    format!("[{}]", items.join(", "))
}

/// `POST /customer/delete {"user_ids": [...]}`: all must exist (404 otherwise).
pub async fn customer_delete(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let ids = user_ids(&f)?;
    let done = transact(&state, |tx| {
        let mut missing = Vec::new();
        for id in &ids {
            if tx.end_user(id)?.is_none() {
                missing.push(id.clone());
            }
        }
        if !missing.is_empty() {
            return Err(AdminError::Api(
                ApiError::new(
                    404,
                    "not_found",
                    format!("End User Id(s)={} do not exist in db", missing.join(", ")),
                )
                .with_param("user_ids"),
            ));
        }
        for id in &ids {
            tx.delete_end_user(id)?;
            tx.invalidate_customer(id);
        }
        Ok(ids.len())
    })?;
    Ok(changed(
        json!({
            "deleted_customers": done.value,
            "message": format!("Successfully deleted customers with ids: {}", py_list(&ids)),
        }),
        &done.entries,
    ))
}

/// A customer's `blocked` flag (`{"user_ids": [...]}`); as LiteLLM's block, an unknown
/// customer is created, blocked.
pub struct CustomerBlock;

impl super::block::Blockable for CustomerBlock {
    const ROUTES: [&'static str; 2] = ["/customer/block", "/customer/unblock"];

    fn set_blocked(
        _state: &AdminState,
        tx: &mut Tx<'_>,
        _principal: &super::auth::Principal,
        _route: &str,
        body: &Fields,
        blocked: bool,
    ) -> Result<Value, AdminError> {
        let ids = user_ids(body)?;
        let now = format_iso8601_utc(tx.now());
        let mut out = Vec::new();
        for id in &ids {
            let mut row = match tx.end_user(id)? {
                Some((row, _)) => row,
                None if blocked => EndUserRow {
                    user_id: id.clone(),
                    created_at: now.clone(),
                    ..Default::default()
                },
                None => continue,
            };
            row.blocked = blocked;
            row.updated_at = now.clone();
            tx.save_end_user(&row)?;
            tx.invalidate_customer(id);
            let budget = tx.end_user(id)?.and_then(|(_, b)| b);
            out.push(customer_json(&row, budget.as_ref()));
        }
        let field = if blocked {
            "blocked_users"
        } else {
            "unblocked_users"
        };
        Ok(json!({ field: out }))
    }
}

/// `GET /customer/list`: every customer (admins and admin viewers).
pub async fn customer_list(State(state): State<Shared>, Authorized(_): Authorized) -> AdminResult {
    let done = transact(&state, |tx| Ok(tx.end_users()?))?;
    let list: Vec<Value> = done
        .value
        .iter()
        .map(|(row, budget)| customer_json(row, budget.as_ref()))
        .collect();
    Ok(ok(Value::Array(list)))
}

/// The `/customer/*` routes, also served as `/end_user/*` (LiteLLM has both names).
pub fn routes() -> axum::Router<Shared> {
    use super::block::{block, unblock};
    use axum::routing::{get, post};
    let mut r = axum::Router::new();
    for prefix in ["/customer", "/end_user"] {
        r = r
            .route(&format!("{prefix}/new"), post(customer_new))
            .route(&format!("{prefix}/info"), get(customer_info))
            .route(&format!("{prefix}/update"), post(customer_update))
            .route(&format!("{prefix}/delete"), post(customer_delete))
            .route(&format!("{prefix}/block"), post(block::<CustomerBlock>))
            .route(&format!("{prefix}/unblock"), post(unblock::<CustomerBlock>))
            .route(&format!("{prefix}/list"), get(customer_list));
    }
    r
}
