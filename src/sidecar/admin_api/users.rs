//! `/user/*`: internal users (litellm-compat.md §5.3). Creating, changing and listing users
//! is for admins; a user may read its own info.

use super::auth::Authorized;
use super::auth::{Principal, INTERNAL_USER, USER_ROLES};
use super::common::Body;
use super::common::{
    bad_request, changed, check_budget, check_budget_duration, detail_error, forbidden, not_found,
    now_micros, ok, row_json, spend_nanos_of, transact, usd, validation_error, AdminError,
    AdminResult, Fields, PeriodAndLimits,
};
use super::keys::{build_key, flag, GenerateKeyRequest};
use super::teams::join_team;
use super::Shared;
use crate::sidecar::store::{Tx, UserRow};
use crate::time::format_iso8601_utc;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewUserRequest {
    user_id: Option<String>,
    user_email: Option<String>,
    user_alias: Option<String>,
    user_role: Option<String>,
    #[serde(deserialize_with = "super::common::null_default")]
    teams: Vec<String>,
    team_id: Option<String>,
    #[serde(deserialize_with = "super::common::null_default")]
    models: Vec<String>,
    max_budget: Option<f64>,
    budget_duration: Option<String>,
    tpm_limit: Option<u64>,
    rpm_limit: Option<u64>,
    max_parallel_requests: Option<u64>,
    metadata: Option<Map<String, Value>>,
    model_max_budget: Option<Value>,
    auto_create_key: Option<bool>,
    key_alias: Option<String>,
    duration: Option<String>,
    spend: Option<f64>,
}

fn check_role(role: &str) -> Result<(), AdminError> {
    if USER_ROLES.contains(&role) {
        Ok(())
    } else {
        Err(bad_request(&format!(
            "Invalid user_role '{role}'. Must be one of {USER_ROLES:?}"
        )))
    }
}

pub async fn user_new(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    Body(req): Body<NewUserRequest>,
) -> AdminResult {
    let role = req
        .user_role
        .clone()
        .unwrap_or_else(|| INTERNAL_USER.into());
    check_role(&role)?;
    let is_internal = role == INTERNAL_USER;
    let max_budget = req.max_budget.or(if is_internal {
        state.settings().max_internal_user_budget
    } else {
        None
    });
    let budget_duration = req.budget_duration.clone().or(if is_internal {
        state.settings().internal_user_budget_duration.clone()
    } else {
        None
    });
    check_budget("max_budget", max_budget)?;
    let now_us = now_micros();
    let (budget_duration, budget_reset_at) =
        check_budget_duration(&state.settings(), &budget_duration, now_us)?;
    let user_id = req
        .user_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let now = format_iso8601_utc(now_us);
    let spend_nanos = spend_nanos_of(req.spend);
    let user = UserRow {
        user_id: user_id.clone(),
        user_email: req.user_email.clone(),
        user_alias: req.user_alias.clone(),
        user_role: Some(role.clone()),
        teams: Vec::new(),
        models: req.models.clone(),
        max_budget,
        budget_duration,
        budget_reset_at,
        tpm_limit: req.tpm_limit,
        rpm_limit: req.rpm_limit,
        max_parallel_requests: req.max_parallel_requests,
        metadata: Value::Object(req.metadata.clone().unwrap_or_default()),
        model_max_budget: req.model_max_budget.clone().unwrap_or_else(|| json!({})),
        model_spend: json!({}),
        spend: usd(spend_nanos),
        spend_nanos,
        created_at: now.clone(),
        updated_at: now,
    };
    let done = state.store.transact(now_us, |tx| {
        // LiteLLM's `_check_duplicate_user_field`: 409, naming the stored value.
        if tx.user(&user_id)?.is_some() {
            return Err(detail_error(
                409,
                &format!("User with id {user_id} already exists"),
            ));
        }
        if let Some(email) = &req.user_email {
            if let Some(existing) = tx.user_by_email(email)? {
                let stored = existing.user_email.as_deref().unwrap_or(email);
                return Err(detail_error(
                    409,
                    &format!("User with email {stored} already exists"),
                ));
            }
        }
        tx.save_user(&user)?;
        let joined = req.team_id.iter().chain(req.teams.iter());
        for team_id in joined {
            join_team(&state, tx, team_id, &user_id)?;
        }
        let key = if req.auto_create_key.unwrap_or(true) {
            // The auto-created key copies the user's models and limits, not its budget (§5.3).
            let (raw, row) = build_key(
                &state,
                tx,
                GenerateKeyRequest {
                    key_alias: req.key_alias.clone(),
                    duration: req.duration.clone(),
                    models: req.models.clone(),
                    tpm_limit: req.tpm_limit,
                    rpm_limit: req.rpm_limit,
                    max_parallel_requests: req.max_parallel_requests,
                    user_id: Some(user_id.clone()),
                    team_id: req.team_id.clone(),
                    ..Default::default()
                },
            )?;
            tx.insert_key(&row)?;
            tx.invalidate(row.token.clone());
            Some((raw, row))
        } else {
            None
        };
        // The saved row lists the teams the user joined.
        let saved = tx.user(&user_id)?.unwrap_or_else(|| user.clone());
        Ok((saved, key))
    })?;
    let (saved, key) = &done.value;
    let mut resp = row_json(saved);
    if let Value::Object(o) = &mut resp {
        match key {
            Some((raw, row)) => {
                o.insert("key".into(), json!(raw));
                o.insert("token".into(), json!(row.token));
                o.insert("key_name".into(), json!(row.key_name));
                o.insert("key_alias".into(), json!(row.key_alias));
                o.insert("expires".into(), json!(row.expires));
            }
            None => {
                o.insert("key".into(), Value::Null);
                o.insert("expires".into(), Value::Null);
            }
        }
    }
    Ok(changed(resp, &done.entries))
}

pub async fn user_info(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let user_id = match (&principal, q.get("user_id")) {
        (p, Some(id)) if p.is_admin_viewer() => id.clone(),
        (Principal::Master, None) => {
            return Err(bad_request(
                "Please pass the user to look up: /user/info?user_id=<id>",
            ))
        }
        (p, asked) => {
            let Some(own_id) = p.user_id().map(str::to_string) else {
                return Err(forbidden("This key belongs to no user."));
            };
            if asked.is_some_and(|a| *a != own_id) {
                return Err(forbidden("You are not allowed to view other users' info."));
            }
            own_id
        }
    };
    let done = transact(&state, |tx| {
        let Some(user) = tx.user(&user_id)? else {
            return Err(not_found(&format!("User {user_id} not found")));
        };
        let keys: Vec<Value> = tx.keys_of_user(&user_id)?.iter().map(row_json).collect();
        let mut teams = Vec::new();
        for t in &user.teams {
            if let Some(team) = tx.team(t)? {
                teams.push(row_json(&team));
            }
        }
        Ok(json!({
            "user_id": user_id,
            "user_info": row_json(&user),
            "keys": keys,
            "teams": teams,
        }))
    })?;
    Ok(ok(done.value))
}

/// The user a body names: `user_id`, else `user_email`.
/// The user a `/user/update` body names by `user_id`, else `user_email`; a proxy admin naming
/// one that does not exist creates it, as LiteLLM 1.110.2's upsert does.
fn find_or_create_user(
    tx: &Tx<'_>,
    f: &Fields,
    principal: &Principal,
) -> Result<UserRow, AdminError> {
    let id = f.string("user_id")?.flatten();
    let email = f.string("user_email")?.flatten();
    let found = match (&id, &email) {
        (Some(id), _) => tx.user(id)?,
        (None, Some(email)) => tx.user_by_email(email)?,
        (None, None) => return Err(validation_error(&["body", "user_id"], "Field required")),
    };
    if let Some(user) = found {
        return Ok(user);
    }
    if !principal.is_admin() {
        return Err(detail_error(
            404,
            "User not found. Only PROXY_ADMIN can create users via /user/update; use /user/new instead.",
        ));
    }
    let created = format_iso8601_utc(tx.now());
    Ok(UserRow {
        user_id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        user_email: email,
        metadata: json!({}),
        model_max_budget: json!({}),
        model_spend: json!({}),
        created_at: created.clone(),
        updated_at: created,
        ..Default::default()
    })
}

/// `POST /user/update`: `user_id` or `user_email` plus any fields; `null` clears. Answers
/// `{"user_id", "data": <row>}` as LiteLLM does.
pub async fn user_update(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let done = transact(&state, |tx| {
        let mut user = find_or_create_user(tx, &f, &principal)?;
        let now = tx.now();
        if f.has("user_id") {
            if let Some(email) = f.string("user_email")? {
                if let Some(e) = &email {
                    if tx
                        .user_by_email(e)?
                        .is_some_and(|other| other.user_id != user.user_id)
                    {
                        return Err(bad_request(&format!("User with email={e} already exists.")));
                    }
                }
                user.user_email = email;
            }
        }
        if let Some(v) = f.string("user_alias")? {
            user.user_alias = v;
        }
        if let Some(v) = f.string("user_role")? {
            if let Some(r) = &v {
                check_role(r)?;
            }
            user.user_role = v;
        }
        if let Some(v) = f.strings("models")? {
            user.models = v.unwrap_or_default();
        }
        if let Some(v) = f.float("max_budget")? {
            check_budget("max_budget", v)?;
            user.max_budget = v;
        }
        f.apply_period_and_limits(
            &state.settings(),
            now,
            PeriodAndLimits {
                soft_budget: None,
                budget_duration: &mut user.budget_duration,
                budget_reset_at: &mut user.budget_reset_at,
                tpm_limit: &mut user.tpm_limit,
                rpm_limit: &mut user.rpm_limit,
                max_parallel_requests: &mut user.max_parallel_requests,
            },
        )?;
        if let Some(v) = f.value("metadata") {
            user.metadata = if v.is_null() { json!({}) } else { v };
        }
        if let Some(v) = f.value("model_max_budget") {
            user.model_max_budget = if v.is_null() { json!({}) } else { v };
        }
        if let Some(Some(spend)) = f.float("spend")? {
            user.set_spend_nanos(spend_nanos_of(Some(spend)));
        }
        user.updated_at = format_iso8601_utc(now);
        tx.save_user(&user)?;
        let tokens = tx.tokens_of_user(&user.user_id)?;
        tx.invalidate_all(tokens);
        Ok(json!({"user_id": user.user_id, "data": row_json(&user)}))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// Removes a user from every team it is in (memberships and `members_with_roles`).
pub fn leave_all_teams(tx: &Tx<'_>, user: &UserRow) -> Result<(), AdminError> {
    for team_id in &user.teams {
        if let Some(mut team) = tx.team(team_id)? {
            team.members_with_roles
                .retain(|m| m.user_id.as_deref() != Some(user.user_id.as_str()));
            tx.save_team(&team)?;
        }
    }
    tx.delete_memberships_of_user(&user.user_id)?;
    tx.delete_org_memberships_of_user(&user.user_id)?;
    Ok(())
}

/// `POST /user/delete {"user_ids": [...]}`: the users, their keys and their team memberships.
pub async fn user_delete(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let ids = f
        .string_list("user_ids")?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| validation_error(&["body", "user_ids"], "Field required"))?;
    let done = transact(&state, |tx| {
        let mut deleted = Vec::new();
        for id in &ids {
            let tokens = tx.tokens_of_user(id)?;
            for t in &tokens {
                tx.delete_key(t)?;
            }
            tx.invalidate_all(tokens);
            if let Some(user) = tx.user(id)? {
                leave_all_teams(tx, &user)?;
                tx.delete_user(id)?;
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    })?;
    Ok(changed(json!({"deleted_users": done.value}), &done.entries))
}

/// `GET /user/list?page=1&page_size=25&role=`: `{users, total, page, page_size, total_pages}`.
pub async fn user_list(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let number = |name: &str, default: u64| -> Result<u64, AdminError> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                validation_error(&["query", name], "Input should be a positive integer")
            }),
        }
    };
    let page = number("page", 1)?;
    let size = number("page_size", 25)?.min(100);
    let role = q.get("role").filter(|r| !r.is_empty()).cloned();
    let _ = flag(None);
    let done = transact(&state, |tx| {
        Ok(tx.users(role.as_deref(), (page - 1).saturating_mul(size), size)?)
    })?;
    let (users, total) = done.value;
    Ok(ok(json!({
        "users": users.iter().map(row_json).collect::<Vec<_>>(),
        "total": total,
        "page": page,
        "page_size": size,
        "total_pages": total.div_ceil(size),
    })))
}

/// The `/user/*` routes.
pub fn routes() -> axum::Router<Shared> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/user/new", post(user_new))
        .route("/user/info", get(user_info))
        .route("/user/update", post(user_update))
        .route("/user/delete", post(user_delete))
        .route("/user/list", get(user_list))
}
