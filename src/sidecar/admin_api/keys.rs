//! `/key/*`: virtual keys (litellm-compat.md §5.2, §5.3). Admins manage every key; an internal
//! user manages its own keys and those of teams it administers, and creates keys for itself
//! or for teams it belongs to.

use super::auth::Authorized;
use super::auth::{authorize, check_team_member_route, Principal};
use super::ceiling;
use super::common::{
    bad_request, changed, check_budget, check_budget_duration, detail_error, expiry, forbidden,
    not_found, now_micros, ok, row_json, set_metadata, spend_nanos_of, transact, usd,
    validation_error, AdminError, AdminResult, Fields, PeriodAndLimits,
};
use super::orgs::plain_error;
use super::{AdminState, Shared};
use crate::errors::ApiError;
use crate::key_format::{abbreviate, hash_key, is_token_hash, validate_custom_key};
use crate::sidecar::store::{KeyQuery, KeyRow, Tx};
use crate::time::{format_iso8601_utc, parse_iso8601_utc};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// `sha256` of a raw key; a stored token (64 hex) is taken as it is.
pub fn token_of(key: &str) -> String {
    if is_token_hash(key) {
        key.to_string()
    } else {
        hash_key(key)
    }
}

pub fn new_raw_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerateKeyRequest {
    pub key: Option<String>,
    pub key_alias: Option<String>,
    pub duration: Option<String>,
    #[serde(deserialize_with = "super::common::null_default")]
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub model_rpm_limit: Option<Value>,
    pub model_tpm_limit: Option<Value>,
    pub model_max_budget: Option<Value>,
    pub metadata: Option<Map<String, Value>>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub aliases: Option<Value>,
    pub config: Option<Value>,
    pub permissions: Option<Value>,
    pub blocked: Option<bool>,
    #[serde(deserialize_with = "super::common::null_default")]
    pub allowed_routes: Vec<String>,
    pub key_type: Option<String>,
    pub budget_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub organization_id: Option<String>,
    pub spend: Option<f64>,
}

/// LiteLLM's message when a key names a team that does not exist.
fn no_such_team(team_id: &str) -> AdminError {
    bad_request(&format!(
        "Team doesn't exist in db. Team={team_id}. Create team via `/team/new` call."
    ))
}

/// LiteLLM's `Invalid model_max_budget: ...` (400).
fn check_model_max_budget(v: &Value) -> Result<(), AdminError> {
    super::internal::validate_model_max_budget(v).map_err(|why| {
        bad_request(&format!(
            "Invalid model_max_budget: {why}. Example of valid model_max_budget: https://docs.litellm.ai/docs/proxy/users"
        ))
    })
}

fn no_such_budget(budget_id: &str) -> AdminError {
    bad_request(&format!("Budget doesn't exist in db. Budget={budget_id}."))
}

/// Builds a key row (not stored yet); returns the raw key with it.
pub fn build_key(
    state: &AdminState,
    tx: &Tx<'_>,
    req: GenerateKeyRequest,
) -> Result<(String, KeyRow), AdminError> {
    check_budget("max_budget", req.max_budget)?;
    check_budget("soft_budget", req.soft_budget)?;
    if let Some(m) = &req.model_max_budget {
        check_model_max_budget(m)?;
    }
    let now = tx.now();
    let (budget_duration, budget_reset_at) =
        check_budget_duration(&state.settings(), &req.budget_duration, now)?;
    let raw = match &req.key {
        Some(custom) => {
            validate_custom_key(custom).map_err(|m| bad_request(&m))?;
            custom.clone()
        }
        None => new_raw_key()?,
    };
    let token = hash_key(&raw);
    if tx.key(&token)?.is_some() {
        return Err(bad_request(
            "Unique key constraint violated: this key already exists.",
        ));
    }
    if let Some(alias) = &req.key_alias {
        if tx.key_alias_taken(alias, &token)? {
            return Err(bad_request(&format!(
                "Key with alias '{alias}' already exists."
            )));
        }
    }
    if let Some(team) = &req.team_id {
        if tx.team(team)?.is_none() {
            return Err(no_such_team(team));
        }
    }
    if let Some(b) = &req.budget_id {
        if tx.budget(b)?.is_none() {
            return Err(no_such_budget(b));
        }
    }
    let mut metadata = req.metadata.unwrap_or_default();
    // LiteLLM keeps these management fields inside metadata.
    if let Some(v) = req.model_rpm_limit {
        metadata.insert("model_rpm_limit".into(), v);
    }
    if let Some(v) = req.model_tpm_limit {
        metadata.insert("model_tpm_limit".into(), v);
    }
    let created = format_iso8601_utc(now);
    let spend_nanos = spend_nanos_of(req.spend);
    let row = KeyRow {
        token,
        key_name: abbreviate(&raw),
        key_alias: req.key_alias,
        user_id: req.user_id,
        team_id: req.team_id,
        models: req.models,
        max_budget: req.max_budget,
        soft_budget: req.soft_budget,
        budget_reset_at,
        budget_duration,
        tpm_limit: req.tpm_limit,
        rpm_limit: req.rpm_limit,
        max_parallel_requests: req.max_parallel_requests,
        metadata: Value::Object(metadata),
        aliases: req.aliases.unwrap_or_else(|| json!({})),
        config: req.config.unwrap_or_else(|| json!({})),
        permissions: req.permissions.unwrap_or_else(|| json!({})),
        model_max_budget: req.model_max_budget.unwrap_or_else(|| json!({})),
        model_spend: json!({}),
        allowed_routes: req.allowed_routes,
        tags: req.tags,
        key_type: Some(req.key_type.unwrap_or_else(|| "default".into())),
        budget_id: req.budget_id,
        organization_id: req.organization_id,
        blocked: req.blocked,
        expires: expiry(req.duration.as_deref(), now)?,
        spend: usd(spend_nanos),
        spend_nanos,
        created_at: created.clone(),
        updated_at: created,
        created_by: None,
        updated_by: None,
    };
    Ok((raw, row))
}

/// `/key/generate`'s answer: the row with the raw key.
pub fn key_response(raw: &str, row: &KeyRow) -> Value {
    let mut v = row_json(row);
    if let Value::Object(o) = &mut v {
        o.insert("key".into(), json!(raw));
        o.insert("token_id".into(), json!(row.token));
        o.insert("litellm_budget_table".into(), Value::Null);
    }
    v
}

/// What a non-admin may ask for on `/key/generate`: keys for itself, or for a team it is a
/// member of (a team's key without user: for its own team only), without the admin-only
/// fields. [`ceiling::fit_within`] then keeps the new key inside the caller's own.
fn check_generate_rights(
    principal: &Principal,
    tx: &Tx<'_>,
    req: &mut GenerateKeyRequest,
) -> Result<(), AdminError> {
    if principal.is_admin() {
        return Ok(());
    }
    let own = principal.user_id().map(str::to_string);
    match (&req.user_id, &own) {
        (None, _) => req.user_id = own.clone(),
        (Some(asked), Some(me)) if asked == me => {}
        (Some(asked), _) => {
            return Err(forbidden(&format!(
                "User can only create keys for themselves. Got user_id={asked}, Your user_id={}",
                own.as_deref().unwrap_or("None")
            )))
        }
    }
    if let Some(team) = principal.service_account_team() {
        if req.team_id.as_deref() != Some(team) {
            return Err(forbidden(&format!(
                "Service account keys can only create keys for their own team. team_id={team}"
            )));
        }
    }
    // A team's key creates keys of its team only: they stay under its team's limits.
    if let Some(mine) = principal.key().and_then(|k| k.team_id.as_deref()) {
        match req.team_id.as_deref() {
            None => req.team_id = Some(mine.to_string()),
            Some(t) if t == mine => {}
            Some(t) => {
                return Err(forbidden(&format!(
                    "A team's key can only create keys for its own team. team_id={t}, the calling key's team_id={mine}"
                )))
            }
        }
    }
    if let Some(team_id) = &req.team_id {
        let Some(team) = tx.team(team_id)? else {
            return Err(no_such_team(team_id));
        };
        if !principal.is_team_member(&team) {
            return Err(forbidden(&format!(
                "User={} is not a member of Team={team_id}. Only team members can create keys for the team.",
                own.as_deref().unwrap_or("None")
            )));
        }
        if principal.service_account_team().is_none() {
            check_team_member_route(principal, &team, "/key/generate")?;
        }
    }
    let admin_only_fields = [
        (
            "permissions",
            req.permissions.as_ref().is_some_and(|p| !is_empty_json(p)),
        ),
        ("allowed_routes", !req.allowed_routes.is_empty()),
        ("budget_id", req.budget_id.is_some()),
        ("spend", req.spend.is_some_and(|s| s != 0.0)),
    ];
    if let Some((field, _)) = admin_only_fields.iter().find(|(_, set)| *set) {
        return Err(only_admins_set(field));
    }
    Ok(())
}

fn is_empty_json(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// LiteLLM's refusal of an admin-only key field (`permissions`, `allowed_routes`; Tollgate adds
/// `budget_id` and `spend`, which would lift the key's limits).
fn only_admins_set(field: &str) -> AdminError {
    forbidden(&format!("Only proxy admins can set `{field}` on a key."))
}

/// Keeps a key a non-admin creates or changes inside what the calling key may itself do
/// (its limits as the filter enforces them, inherited ones included). A new key must also not
/// multiply a budget that is the caller's own: see [`ceiling::shares_a_budget`].
fn fit_caller(
    state: &AdminState,
    tx: &Tx<'_>,
    principal: &Principal,
    before: Option<&KeyRow>,
    row: &mut KeyRow,
) -> Result<(), AdminError> {
    let Some(caller) = principal.key().filter(|_| !principal.is_admin()) else {
        return Ok(());
    };
    let caller = super::internal::effective_key(tx, caller, state)?;
    ceiling::fit_within(&caller, &state.settings().plugin, before, row)
        .map_err(|m| bad_request(&m))?;
    if let (None, Some(mine)) = (before, caller.max_budget) {
        let child = super::internal::key_record(tx, row, state)?;
        if !ceiling::shares_a_budget(&child) {
            return Err(forbidden(&format!(
                "A key whose budget is its own (max_budget={mine}) cannot generate keys: each new key would get a budget of its own. Ask a proxy admin, or give the user (or team) a max_budget that covers all its keys."
            )));
        }
    }
    Ok(())
}

pub async fn key_generate(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    fields: Fields,
) -> AdminResult {
    let mut req: GenerateKeyRequest = fields.body()?;
    let settings = state.settings();
    let done = transact(&state, |tx| {
        check_generate_rights(&principal, tx, &mut req)?;
        check_key_organization(tx, &principal, &mut req)?;
        // The config's defaults and bounds apply after the caller's rights are checked on
        // what it asked for (LiteLLM's order).
        super::key_defaults::key_generate_settings(
            &settings.key_generate_defaults,
            &settings.key_generate_bounds,
            &mut req,
            fields.has("budget_duration"),
            tx.now() / 1_000_000,
        )?;
        let (raw, mut row) = build_key(&state, tx, req)?;
        fit_caller(&state, tx, &principal, None, &mut row)?;
        tx.insert_key(&row)?;
        // The filter may hold a short "unknown key" answer for this token.
        tx.invalidate(row.token.clone());
        Ok(key_response(&raw, &row))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// A key's organization (LiteLLM's `/key/generate`): a team key without one takes its
/// team's; a named organization must exist, and a caller other than a proxy admin must be a
/// member of it unless it is the team's.
fn check_key_organization(
    tx: &Tx<'_>,
    principal: &Principal,
    req: &mut GenerateKeyRequest,
) -> Result<(), AdminError> {
    let team_org = match &req.team_id {
        Some(team) => tx.team(team)?.and_then(|t| t.organization_id),
        None => None,
    };
    let Some(org) = req.organization_id.clone() else {
        req.organization_id = team_org;
        return Ok(());
    };
    if !principal.is_admin() && team_org.as_deref() != Some(org.as_str()) {
        let member = match principal.user_id() {
            Some(user) => tx.org_membership(&org, user)?.is_some(),
            None => false,
        };
        if !member {
            return Err(plain_error(
                403,
                &format!("Caller is not a member of organization_id={org}"),
            ));
        }
    }
    if tx.organization(&org)?.is_none() {
        return Err(plain_error(
            400,
            &format!("Organization not found for organization_id={org}"),
        ));
    }
    Ok(())
}

/// May the caller use the key route `route` on this key: an admin; on a team key, a member of
/// its team as the team's `team_member_permissions` allow (a plain member lacking the route
/// gets LiteLLM's 401, even for a key it owns); else the key itself or its owner.
fn may_manage(
    principal: &Principal,
    tx: &Tx<'_>,
    row: &KeyRow,
    route: &str,
) -> Result<bool, AdminError> {
    if principal.is_admin() {
        return Ok(true);
    }
    if let Some(team_id) = &row.team_id {
        if let Some(team) = tx.team(team_id)? {
            if check_team_member_route(principal, &team, route)? {
                return Ok(true);
            }
        }
    }
    if principal.key().is_some_and(|k| k.token == row.token) {
        return Ok(true);
    }
    if principal.user_id().is_some() && principal.user_id() == row.user_id.as_deref() {
        return Ok(true);
    }
    Ok(false)
}

/// May the caller block or unblock this key: a proxy admin or an admin of the key's team
/// (LiteLLM's `_check_key_admin_access`); its owner may not undo an admin's block.
fn may_block(principal: &Principal, tx: &Tx<'_>, row: &KeyRow) -> Result<bool, AdminError> {
    if principal.is_admin() {
        return Ok(true);
    }
    if let Some(team_id) = &row.team_id {
        if let Some(team) = tx.team(team_id)? {
            return Ok(principal.is_team_admin(&team));
        }
    }
    Ok(false)
}

/// LiteLLM's refusal of `/key/block`, `/key/unblock` (and of `blocked` on an update).
fn not_key_admin(principal: &Principal, route: &str) -> AdminError {
    forbidden(&format!(
        "Only proxy admins, team admins, or org admins can call {route}. user_role={}, user_id={}",
        principal.role().unwrap_or("None"),
        principal.user_id().unwrap_or("None")
    ))
}

/// May the caller see this key: as [`may_manage`] for `/key/info` (every member of the key's
/// team), or an admin viewer.
fn may_view(principal: &Principal, tx: &Tx<'_>, row: &KeyRow) -> Result<bool, AdminError> {
    Ok(principal.is_admin_viewer() || may_manage(principal, tx, row, "/key/info")?)
}

fn not_yours() -> AdminError {
    forbidden("You are not allowed to access this key. Only the key's owner, its team's admins and proxy admins may.")
}

pub fn key_status(row: &KeyRow, now: i64) -> &'static str {
    match row.expires.as_deref().and_then(parse_iso8601_utc) {
        Some(exp) if exp < now => "expired",
        _ => "active",
    }
}

pub async fn key_info(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let asked = match (q.get("key"), &principal) {
        (Some(k), _) => k.clone(),
        (None, Principal::Key { key, .. }) => key.token.clone(),
        (None, Principal::Master) => {
            return Err(bad_request(
                "Please pass the key to look up: /key/info?key=<key>",
            ))
        }
    };
    let now = now_micros();
    let done = state.store.transact(now, |tx| {
        let Some(row) = tx.key(&token_of(&asked))? else {
            return Err(not_found("Key not found in database"));
        };
        if !may_view(&principal, tx, &row)? {
            return Err(forbidden("You are not allowed to access this key's info. Your user_id does not own this key."));
        }
        Ok(row)
    })?;
    let row = done.value;
    let mut info = row_json(&row);
    if let Value::Object(o) = &mut info {
        o.remove("token");
        o.insert("status".into(), json!(key_status(&row, now)));
    }
    Ok(ok(json!({"key": asked, "info": info})))
}

/// The key a `/key/update`-like body names: `key` (raw or hash), else `key_alias`.
fn find_key(tx: &Tx<'_>, f: &Fields) -> Result<KeyRow, AdminError> {
    if let Some(Some(k)) = f.string("key")? {
        return tx
            .key(&token_of(&k))?
            .ok_or_else(|| not_found("Key not found."));
    }
    if let Some(Some(alias)) = f.string("key_alias")? {
        return tx
            .key_by_alias(&alias)?
            .ok_or_else(|| not_found("Key not found."));
    }
    Err(validation_error(&["body", "key"], "Field required"))
}

/// Applies the fields of a `/key/update` (or `/key/regenerate`) body: absent fields stay,
/// `null` clears.
fn apply_key_fields(
    state: &AdminState,
    tx: &Tx<'_>,
    principal: &Principal,
    row: &mut KeyRow,
    f: &Fields,
    alias_is_selector: bool,
) -> Result<(), AdminError> {
    let now = tx.now();
    // `upperbound_key_generate_params` bounds what an update gives too (no filling in).
    super::key_defaults::enforce_key_bounds(
        &state.settings().key_generate_bounds,
        &mut super::key_defaults::Bounded::of_fields(f),
        false,
        now / 1_000_000,
    )?;
    if !alias_is_selector {
        if let Some(alias) = f.string("key_alias")? {
            if let Some(a) = &alias {
                if tx.key_alias_taken(a, &row.token)? {
                    return Err(bad_request(&format!(
                        "Key with alias '{a}' already exists."
                    )));
                }
            }
            row.key_alias = alias;
        }
    }
    if f.has("duration") {
        row.expires = expiry(f.string("duration")?.flatten().as_deref(), now)?;
    }
    if let Some(v) = f.strings("models")? {
        row.models = v.unwrap_or_default();
    }
    if let Some(v) = f.float("max_budget")? {
        check_budget("max_budget", v)?;
        row.max_budget = v;
    }
    f.apply_period_and_limits(
        &state.settings(),
        now,
        PeriodAndLimits {
            soft_budget: Some(&mut row.soft_budget),
            budget_duration: &mut row.budget_duration,
            budget_reset_at: &mut row.budget_reset_at,
            tpm_limit: &mut row.tpm_limit,
            rpm_limit: &mut row.rpm_limit,
            max_parallel_requests: &mut row.max_parallel_requests,
        },
    )?;
    if let Some(v) = f.value("metadata") {
        row.metadata = match v {
            Value::Null => json!({}),
            Value::Object(_) => v,
            _ => {
                return Err(validation_error(
                    &["body", "metadata"],
                    "Input should be a valid dictionary",
                ))
            }
        };
    }
    for field in [
        "model_rpm_limit",
        "model_tpm_limit",
        "temp_budget_increase",
        "temp_budget_expiry",
    ] {
        if let Some(v) = f.value(field) {
            set_metadata(&mut row.metadata, field, Some(v));
        }
    }
    if f.has("temp_budget_increase") != f.has("temp_budget_expiry") {
        return Err(bad_request(
            "temp_budget_increase and temp_budget_expiry must be set together.",
        ));
    }
    if !principal.is_admin() {
        let stored = [
            ("permissions", Some(row.permissions.clone())),
            ("allowed_routes", Some(json!(row.allowed_routes))),
            ("budget_id", Some(json!(row.budget_id))),
        ];
        for (field, current) in stored {
            if let Some(asked) = f.value(field) {
                let unchanged = current
                    .is_some_and(|c| c == asked || (is_empty_json(&c) && is_empty_json(&asked)));
                if !unchanged {
                    return Err(only_admins_set(field));
                }
            }
        }
    }
    for (field, slot) in [
        ("model_max_budget", &mut row.model_max_budget),
        ("aliases", &mut row.aliases),
        ("config", &mut row.config),
        ("permissions", &mut row.permissions),
    ] {
        if let Some(v) = f.value(field) {
            if field == "model_max_budget" {
                check_model_max_budget(&v)?;
            }
            *slot = if v.is_null() { json!({}) } else { v };
        }
    }
    // Checked against the key's team before any move.
    if let Some(v) = f.boolean("blocked")? {
        if v.unwrap_or(false) != row.blocked.unwrap_or(false) && !may_block(principal, tx, row)? {
            return Err(not_key_admin(
                principal,
                if v == Some(true) {
                    "/key/block"
                } else {
                    "/key/unblock"
                },
            ));
        }
        row.blocked = v;
    }
    if let Some(v) = f.string("user_id")? {
        if !principal.is_admin() && v != row.user_id {
            // A key without its user would escape the user's budget and role.
            return Err(forbidden(match v {
                None => "Non-admin users cannot remove the user_id from a key.",
                Some(_) => "Only proxy admins can move a key to another user.",
            }));
        }
        row.user_id = v;
    }
    if let Some(v) = f.string("team_id")? {
        if let Some(t) = &v {
            let Some(team) = tx.team(t)? else {
                return Err(no_such_team(t));
            };
            // LiteLLM's `validate_key_team_change`: the initiator administers the new team.
            if !principal.is_admin() && v != row.team_id && !principal.is_team_admin(&team) {
                return Err(forbidden(&format!(
                    "User={} is not a Proxy Admin or Team Admin for team={t}.",
                    principal.user_id().unwrap_or("None")
                )));
            }
        } else if !principal.is_admin() && row.team_id.is_some() {
            // A key taken out of its team would escape the team's budget and models.
            return Err(forbidden(
                "Non-admin users cannot remove the team_id from a key.",
            ));
        }
        if !principal.is_admin() && v != row.team_id && principal.service_account_team().is_some() {
            return Err(forbidden(
                "Service account keys can only manage keys of their own team.",
            ));
        }
        row.team_id = v;
    }
    if let Some(v) = f.strings("allowed_routes")? {
        row.allowed_routes = v.unwrap_or_default();
    }
    if let Some(v) = f.strings("tags")? {
        row.tags = v;
    }
    if let Some(v) = f.string("key_type")? {
        row.key_type = v;
    }
    if let Some(v) = f.string("budget_id")? {
        if let Some(b) = &v {
            if tx.budget(b)?.is_none() {
                return Err(no_such_budget(b));
            }
        }
        row.budget_id = v;
    }
    if let Some(v) = f.string("organization_id")? {
        row.organization_id = v;
    }
    if let Some(Some(spend)) = f.float("spend")? {
        if !principal.is_admin() {
            return Err(forbidden("Only proxy admins can set a key's spend."));
        }
        row.set_spend_nanos(spend_nanos_of(Some(spend)));
    }
    row.updated_at = format_iso8601_utc(now);
    row.updated_by = principal.user_id().map(str::to_string);
    Ok(())
}

/// `POST /key/update`: any field of `/key/generate`; `null` clears; `duration: null | "-1"`
/// never expires; `budget_duration` starts a new aligned period; `spend` sets the spend.
pub async fn key_update(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let done = transact(&state, |tx| {
        let mut row = find_key(tx, &f)?;
        if !may_manage(&principal, tx, &row, "/key/update")? {
            return Err(not_yours());
        }
        let by_alias = !f.has("key");
        let before = row.clone();
        apply_key_fields(&state, tx, &principal, &mut row, &f, by_alias)?;
        fit_caller(&state, tx, &principal, Some(&before), &mut row)?;
        tx.save_key(&row)?;
        tx.invalidate(row.token.clone());
        let mut v = row_json(&row);
        if let Value::Object(o) = &mut v {
            o.remove("token");
            o.insert(
                "key".into(),
                f.raw("key").cloned().unwrap_or_else(|| json!(row.token)),
            );
        }
        Ok(v)
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `POST /key/delete {"keys": [raw|hash]}` or `{"key_aliases": [...]}`: all or nothing.
pub async fn key_delete(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let keys = f.string_list("keys")?;
    let aliases = f.string_list("key_aliases")?;
    let (asked, by_alias) = match (keys, aliases) {
        (Some(k), _) if !k.is_empty() => (k, false),
        (_, Some(a)) if !a.is_empty() => (a, true),
        _ => {
            return Err(bad_request(
                "Pass the keys to delete: {\"keys\": [...]} or {\"key_aliases\": [...]}",
            ))
        }
    };
    let done = transact(&state, |tx| {
        let mut missing = Vec::new();
        let mut rows = Vec::new();
        for a in &asked {
            let row = if by_alias {
                tx.key_by_alias(a)?
            } else {
                tx.key(&token_of(a))?
            };
            match row {
                Some(r) if may_manage(&principal, tx, &r, "/key/delete")? => rows.push(r),
                Some(_) => return Err(not_yours()),
                None => missing.push(a.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(detail_error(
                404,
                &format!("Failed to delete all keys. Keys not found: {missing:?}"),
            ));
        }
        for r in &rows {
            tx.delete_key(&r.token)?;
            tx.invalidate(r.token.clone());
        }
        Ok(())
    })?;
    Ok(changed(json!({"deleted_keys": asked}), &done.entries))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KeyListQuery {
    page: Option<String>,
    size: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    key_alias: Option<String>,
    key_hash: Option<String>,
    organization_id: Option<String>,
    return_full_object: Option<String>,
}

fn query_number(name: &str, v: Option<&str>, default: u64, max: u64) -> Result<u64, AdminError> {
    let Some(v) = v else { return Ok(default) };
    match v.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(_) if max == u64::MAX => Err(validation_error(
            &["query", name],
            "Input should be greater than or equal to 1",
        )),
        Ok(_) => Err(validation_error(
            &["query", name],
            &format!("Input should be greater than or equal to 1 and less than or equal to {max}"),
        )),
        Err(_) => Err(validation_error(
            &["query", name],
            "Input should be a valid integer, unable to parse string as an integer",
        )),
    }
}

pub fn flag(v: Option<&str>) -> bool {
    matches!(
        v.map(str::to_ascii_lowercase).as_deref(),
        Some("true" | "1" | "yes")
    )
}

/// `GET /key/list?page=1&size=10&user_id=&team_id=&key_alias=&key_hash=&return_full_object=`:
/// `{keys: [token | row], total_count, current_page, total_pages}`. Non-admins see their own
/// user's keys.
pub async fn key_list(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<KeyListQuery>,
) -> AdminResult {
    let page = query_number("page", q.page.as_deref(), 1, u64::MAX)?;
    let size = query_number("size", q.size.as_deref(), 10, 100)?;
    let mut query = KeyQuery {
        user_id: q.user_id.filter(|s| !s.is_empty()),
        team_id: q.team_id.filter(|s| !s.is_empty()),
        key_alias: q.key_alias.filter(|s| !s.is_empty()),
        token: q.key_hash.filter(|s| !s.is_empty()).map(|k| token_of(&k)),
        organization_id: q.organization_id.filter(|s| !s.is_empty()),
        offset: (page - 1).saturating_mul(size),
        limit: size,
    };
    if !principal.is_admin_viewer() {
        match principal.user_id() {
            Some(u) => query.user_id = Some(u.to_string()),
            None => query.token = principal.key().map(|k| k.token.clone()),
        }
    }
    let full = flag(q.return_full_object.as_deref());
    let done = transact(&state, |tx| {
        // LiteLLM: a non-admin filters by an organization only if it is a member of it.
        if let Some(org) = query.organization_id.as_deref() {
            let member = match principal.user_id() {
                Some(u) => tx.org_membership(org, u)?.is_some(),
                None => false,
            };
            if !principal.is_admin_viewer() && !member {
                return Err(AdminError::Api(
                    ApiError::new(
                        403,
                        "bad_request_error",
                        "You are not authorized to check this organization's keys",
                    )
                    .with_param("organization_id"),
                ));
            }
        }
        Ok(tx.keys(&query)?)
    })?;
    let (rows, total) = done.value;
    let keys: Vec<Value> = rows
        .iter()
        .map(|r| if full { row_json(r) } else { json!(r.token) })
        .collect();
    Ok(ok(json!({
        "keys": keys,
        "total_count": total,
        "current_page": page,
        "total_pages": total.div_ceil(size),
    })))
}

/// A key's `blocked` flag (`{"key": raw|hash}`); its owner may set it where LiteLLM lets it.
pub struct KeyBlock;

impl super::block::Blockable for KeyBlock {
    const ROUTES: [&'static str; 2] = ["/key/block", "/key/unblock"];

    fn set_blocked(
        _state: &super::AdminState,
        tx: &mut crate::sidecar::store::Tx<'_>,
        principal: &Principal,
        route: &str,
        body: &Fields,
        blocked: bool,
    ) -> Result<Value, AdminError> {
        let key = body.required_string("key")?;
        let Some(mut row) = tx.key(&token_of(&key))? else {
            return Err(not_found("Key not found."));
        };
        if !may_block(principal, tx, &row)? {
            return Err(not_key_admin(principal, route));
        }
        row.blocked = Some(blocked);
        row.updated_at = format_iso8601_utc(tx.now());
        tx.save_key(&row)?;
        tx.invalidate(row.token.clone());
        Ok(row_json(&row))
    }
}

async fn regenerate(state: Shared, headers: HeaderMap, f: Fields, key: String) -> AdminResult {
    let principal = authorize(&state, &headers, "/key/regenerate")?;
    let done = transact(&state, |tx| {
        let Some(old) = tx.key(&token_of(&key))? else {
            return Err(not_found("Key not found."));
        };
        if !may_manage(&principal, tx, &old, "/key/regenerate")? {
            return Err(not_yours());
        }
        let raw = match f.string("new_key")?.flatten() {
            Some(custom) => {
                validate_custom_key(&custom).map_err(|m| bad_request(&m))?;
                custom
            }
            None => new_raw_key()?,
        };
        let token = hash_key(&raw);
        if tx.key(&token)?.is_some() {
            return Err(bad_request(
                "Unique key constraint violated: this key already exists.",
            ));
        }
        let mut row = old.clone();
        apply_key_fields(&state, tx, &principal, &mut row, &f, false)?;
        fit_caller(&state, tx, &principal, Some(&old), &mut row)?;
        row.token = token;
        row.key_name = abbreviate(&raw);
        tx.delete_key(&old.token)?;
        tx.insert_key(&row)?;
        tx.invalidate(old.token.clone());
        tx.invalidate(row.token.clone());
        Ok(key_response(&raw, &row))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `POST /key/regenerate {"key", "new_key"?, ...fields}`: a new raw key for the same settings
/// and spend; the old key stops working at once.
pub async fn key_regenerate(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    // Authentication before body validation, as in LiteLLM (FastAPI runs the auth dependency
    // first): an anonymous caller learns nothing about the body's shape.
    authorize(&state, &headers, "/key/regenerate")?;
    let f = Fields::parse(&body)?;
    let key = f.required_string("key")?;
    regenerate(state, headers, f, key).await
}

/// `POST /key/{key}/regenerate`.
pub async fn key_regenerate_path(
    State(state): State<Shared>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    authorize(&state, &headers, "/key/regenerate")?;
    let f = Fields::parse(&body)?;
    regenerate(state, headers, f, key).await
}

/// The `/key/*` routes.
pub fn routes() -> axum::Router<Shared> {
    use super::block::{block, unblock};
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/key/generate", post(key_generate))
        .route("/key/info", get(key_info))
        .route("/key/update", post(key_update))
        .route("/key/delete", post(key_delete))
        .route("/key/list", get(key_list))
        .route("/key/block", post(block::<KeyBlock>))
        .route("/key/unblock", post(unblock::<KeyBlock>))
        .route("/key/regenerate", post(key_regenerate))
        .route("/key/{key}/regenerate", post(key_regenerate_path))
}
