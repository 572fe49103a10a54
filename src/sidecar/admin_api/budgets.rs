//! `/budget/*`: budget rows (litellm-compat.md §5.3) that customers, team memberships, teams'
//! default member budgets and keys link to. Admin only (viewers may read).

use super::auth::Authorized;
use super::common::{
    bad_request, changed, check_budget_duration, detail_error, new_uuid, ok, row_json, transact,
    validation_error, AdminError, AdminResult, Fields,
};
use super::{AdminState, Shared};
use crate::sidecar::store::{BudgetRow, Tx};
use crate::time::format_iso8601_utc;
use axum::extract::{Query, State};
use serde_json::{json, Value};
use std::collections::HashMap;

/// `max_budget must be a non-negative finite number. Received: x` (LiteLLM's budget and
/// organization endpoints).
pub(super) fn check(field: &str, v: Option<f64>) -> Result<(), AdminError> {
    match v {
        Some(b) if !b.is_finite() || b < 0.0 => Err(bad_request(&format!(
            "{field} must be a non-negative finite number. Received: {}",
            crate::cost::py_float(b)
        ))),
        _ => Ok(()),
    }
}

/// Applies the fields of a `/budget/new` or `/budget/update` body; `null` clears.
pub(super) fn apply(
    state: &AdminState,
    now: i64,
    row: &mut BudgetRow,
    f: &Fields,
) -> Result<(), AdminError> {
    for (field, slot) in [
        ("max_budget", &mut row.max_budget),
        ("soft_budget", &mut row.soft_budget),
    ] {
        if let Some(v) = f.float(field)? {
            check(field, v)?;
            *slot = v;
        }
    }
    for (field, slot) in [
        ("max_parallel_requests", &mut row.max_parallel_requests),
        ("tpm_limit", &mut row.tpm_limit),
        ("rpm_limit", &mut row.rpm_limit),
    ] {
        if let Some(v) = f.uint(field)? {
            *slot = v;
        }
    }
    if let Some(v) = f.value("model_max_budget") {
        row.model_max_budget = Some(v).filter(|v| !v.is_null());
    }
    if let Some(v) = f.strings("allowed_models")? {
        row.allowed_models = v.unwrap_or_default();
    }
    if let Some(v) = f.string("budget_duration")? {
        let (d, at) = check_budget_duration(&state.settings(), &v, now)?;
        row.budget_duration = d;
        row.budget_reset_at = at;
    }
    if let Some(v) = f.string("budget_reset_at")? {
        row.budget_reset_at = v;
    }
    row.updated_at = format_iso8601_utc(now);
    Ok(())
}

/// Notes every cached decision that depends on budget row `id`: keys linked to it, keys of
/// teams whose default member budget it is, keys of members with it as their own, customers
/// linked to it, keys governed by organizations whose budget it is; everything when it is the
/// proxy's default customer budget.
fn invalidate_dependents(tx: &mut Tx<'_>, id: &str) -> Result<(), AdminError> {
    if tx.default_end_user_budget_id() == Some(id) {
        tx.invalidate("*");
        return Ok(());
    }
    let mut entries = tx.tokens_with_budget(id)?;
    for team in tx.teams_with_member_budget(id)? {
        entries.extend(tx.tokens_of_team(&team)?);
    }
    for (team, user) in tx.memberships_with_budget(id)? {
        entries.extend(tx.tokens_of_member(&team, &user)?);
    }
    for org in tx.organizations_with_budget(id)? {
        entries.extend(tx.tokens_of_organization(&org)?);
    }
    for customer in tx.end_users_with_budget(id)? {
        entries.push(format!("customer:{customer}"));
    }
    tx.invalidate_all(entries);
    Ok(())
}

/// `POST /budget/new`: `budget_id` (a uuid if absent), limits, `budget_duration`.
pub async fn budget_new(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let done = transact(&state, |tx| {
        let now = tx.now();
        let id = f.string("budget_id")?.flatten().unwrap_or_else(new_uuid);
        if tx.budget(&id)?.is_some() {
            return Err(bad_request(&format!(
                "Budget with id '{id}' already exists."
            )));
        }
        let created = format_iso8601_utc(now);
        let mut row = BudgetRow {
            budget_id: id.clone(),
            created_at: created,
            created_by: Some("default_user_id".into()),
            updated_by: Some("default_user_id".into()),
            ..Default::default()
        };
        apply(&state, now, &mut row, &f)?;
        tx.save_budget(&row)?;
        invalidate_dependents(tx, &id)?;
        Ok(row_json(&row))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `POST /budget/update {"budget_id", ...}`.
pub async fn budget_update(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let Some(Some(id)) = f.string("budget_id")? else {
        return Err(bad_request("budget_id is required"));
    };
    let done = transact(&state, |tx| {
        let Some(mut row) = tx.budget(&id)? else {
            return Err(detail_error(
                404,
                &format!("Budget not found, passed budget_id={id}"),
            ));
        };
        apply(&state, tx.now(), &mut row, &f)?;
        tx.save_budget(&row)?;
        invalidate_dependents(tx, &id)?;
        Ok(row_json(&row))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `POST /budget/delete {"id"}` (also `budget_id`): answers the deleted row.
pub async fn budget_delete(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let id = match (f.string("id")?.flatten(), f.string("budget_id")?.flatten()) {
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Err(validation_error(&["body", "id"], "Field required")),
    };
    let done = transact(&state, |tx| {
        let Some(row) = tx.budget(&id)? else {
            return Err(detail_error(
                404,
                &format!("Budget not found, passed budget_id={id}"),
            ));
        };
        invalidate_dependents(tx, &id)?;
        tx.delete_budget(&id)?;
        Ok(row_json(&row))
    })?;
    Ok(changed(done.value, &done.entries))
}

fn rows_for(state: &AdminState, ids: Vec<String>) -> AdminResult {
    if ids.is_empty() {
        return Err(bad_request(
            "Specify list of budget id's to query. Passed in=[]",
        ));
    }
    let done = transact(state, |tx| {
        let mut out = Vec::new();
        for id in &ids {
            if let Some(b) = tx.budget(id)? {
                out.push(row_json(&b));
            }
        }
        Ok(out)
    })?;
    Ok(ok(Value::Array(done.value)))
}

/// `POST /budget/info {"budgets": [...]}`: the rows that exist.
pub async fn budget_info(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let ids = f.string_list("budgets")?.unwrap_or_default();
    rows_for(&state, ids)
}

/// `GET /budget/info?budgets=a,b` (or `budget_id=`): the same as the POST form.
pub async fn budget_info_get(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let ids: Vec<String> = q
        .get("budgets")
        .or_else(|| q.get("budget_id"))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    rows_for(&state, ids)
}

/// `GET /budget/list`: every budget row.
pub async fn budget_list(State(state): State<Shared>, Authorized(_): Authorized) -> AdminResult {
    let done = transact(&state, |tx| Ok(tx.budgets()?))?;
    Ok(ok(json!(done
        .value
        .iter()
        .map(row_json)
        .collect::<Vec<_>>())))
}

/// The `/budget/*` routes.
pub fn routes() -> axum::Router<Shared> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/budget/new", post(budget_new))
        .route("/budget/info", post(budget_info).get(budget_info_get))
        .route("/budget/update", post(budget_update))
        .route("/budget/delete", post(budget_delete))
        .route("/budget/list", get(budget_list))
}
