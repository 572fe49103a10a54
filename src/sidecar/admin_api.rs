//! LiteLLM's admin API (litellm-compat.md §5), served by the sidecar behind Envoy, plus the
//! internal endpoints the filter uses: key lookup, spend batches and the proxy budget.

use super::store::{
    nanos_to_usd, usd_to_nanos, KeyFilter, KeyRow, ResetClock, SpendLogQuery, Store, UserRow,
};
use crate::credential::extract_credential;
use crate::duration::{
    add_duration, format_iso8601_utc, parse_duration, parse_iso8601_utc,
    validate_budget_duration_at,
};
use crate::errors::ApiError;
use crate::key_format::{abbreviate, hash_key, is_token_hash, validate_custom_key};
use crate::plugin_config::BudgetSettings;
use crate::records::{KeyLookup, KeyRecord, ModelBudget, SpendBatch, SpendEvent};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Settings from config.yaml that the admin API needs.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    pub master_key: String,
    pub internal_token: String,
    pub key_header_name: Option<String>,
    pub max_internal_user_budget: Option<f64>,
    pub internal_user_budget_duration: Option<String>,
    /// Largest admin request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Largest spend batch the filter may post, bytes.
    pub max_spend_batch_bytes: usize,
    /// Proxy budget, timezone and reset time of day (`render::budget_settings`).
    pub budgets: BudgetSettings,
}

impl AdminSettings {
    /// How budget periods align.
    pub fn reset_clock(&self) -> ResetClock {
        ResetClock::from_budget_settings(&self.budgets)
    }
}

/// Default for [`AdminSettings::max_spend_batch_bytes`].
pub const MAX_SPEND_BATCH_BYTES: usize = 8 * 1024 * 1024;

pub struct AdminState {
    pub store: Store,
    pub settings: AdminSettings,
}

type Shared = Arc<AdminState>;

/// An error as LiteLLM's management endpoints render it.
#[derive(Debug)]
struct AdminError(ApiError);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [("content-type", "application/json")],
            self.0.body(),
        )
            .into_response()
    }
}

impl From<anyhow::Error> for AdminError {
    fn from(e: anyhow::Error) -> Self {
        AdminError(ApiError::new(
            500,
            "internal_server_error",
            format!("Internal Server Error, {e}"),
        ))
    }
}

type AdminResult = Result<Response, AdminError>;

/// Python's `repr` of a str, as LiteLLM's messages embed it.
fn py_repr(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// `HTTPException(400, detail={"error": msg})` as LiteLLM renders it: the message is the
/// Python repr of the detail dict (litellm-compat.md §5.3).
fn bad_request(msg: &str) -> AdminError {
    AdminError(ApiError::new(
        400,
        "invalid_request_error",
        format!("{{'error': {}}}", py_repr(msg)),
    ))
}

fn not_found(msg: &str) -> AdminError {
    AdminError(ApiError::new(404, "not_found_error", msg))
}

/// Who is calling the admin API.
enum Principal {
    Admin,
    Key(Box<KeyRow>),
}

fn authenticate(state: &AdminState, headers: &HeaderMap) -> Result<Principal, AdminError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let raw =
        extract_credential(get, state.settings.key_header_name.as_deref()).map_err(AdminError)?;
    let master = state.settings.master_key.as_bytes();
    if !master.is_empty() && bool::from(raw.as_bytes().ct_eq(master)) {
        return Ok(Principal::Admin);
    }
    if !raw.starts_with("sk-") {
        return Err(AdminError(ApiError::not_a_virtual_key(&raw)));
    }
    match state.store.key(&hash_key(&raw))? {
        Some(row) => Ok(Principal::Key(Box::new(row))),
        None => Err(AdminError(ApiError::invalid_api_key())),
    }
}

fn admin_only(state: &AdminState, headers: &HeaderMap, route: &str) -> Result<(), AdminError> {
    match authenticate(state, headers)? {
        Principal::Admin => Ok(()),
        Principal::Key(row) => Err(AdminError(ApiError::new(
            401,
            "auth_error",
            format!(
                "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route={route}. Your role=internal_user. Your user_id={}",
                row.user_id.as_deref().map(mask_id).unwrap_or_else(|| "None".into())
            ),
        ))),
    }
}

fn mask_id(id: &str) -> String {
    let n = id.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    let head: String = id.chars().take(2).collect();
    let tail: String = id.chars().skip(n - 2).collect();
    format!("{head}{}{tail}", "*".repeat(n - 4))
}

/// Parses a JSON body; failures answer like FastAPI/pydantic (422 `{"detail":[...]}`).
fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(text).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": [{"type": "value_error", "loc": ["body"], "msg": e.to_string(), "input": null}]})),
        )
            .into_response()
            .into()
    })
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn new_raw_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn check_budget(field: &str, v: Option<f64>) -> Result<(), AdminError> {
    match v {
        Some(b) if b.is_nan() || b < 0.0 => Err(bad_request(&format!(
            "{field} must be a non-negative finite number"
        ))),
        _ => Ok(()),
    }
}

/// Validates a `budget_duration` (§3.1) and computes its first `budget_reset_at` (§3.2).
fn check_budget_duration(
    settings: &AdminSettings,
    v: &Option<String>,
    now_micros: i64,
) -> Result<(Option<String>, Option<String>), AdminError> {
    match v {
        None => Ok((None, None)),
        Some(d) => {
            let b = &settings.budgets;
            validate_budget_duration_at(
                d,
                now_micros.div_euclid(1_000_000),
                b.utc_offset_seconds,
                b.reset_time_of_day_seconds,
            )
            .map_err(|m| bad_request(&m))?;
            let reset_at = settings.reset_clock().next_reset_iso(d, now_micros);
            Ok((Some(d.clone()), Some(reset_at)))
        }
    }
}

/// A stored row as the API shows it: `spend_nanos` is Tollgate's own field.
fn row_json<T: serde::Serialize>(row: &T) -> Value {
    let mut v = serde_json::to_value(row).unwrap_or_else(|_| json!({}));
    if let Value::Object(o) = &mut v {
        o.remove("spend_nanos");
    }
    v
}

/// A `spend` given at creation as nano-dollars (LiteLLM stores it unchecked; a non-finite value
/// is taken as 0).
fn spend_nanos_of(spend: Option<f64>) -> i64 {
    spend
        .filter(|s| s.is_finite())
        .map(usd_to_nanos)
        .unwrap_or(0)
}

/// `expires` for a key `duration`: exact, not aligned (§5.2).
fn expiry(duration: &Option<String>, now: i64) -> Result<Option<String>, AdminError> {
    match duration.as_deref() {
        None | Some("-1") => Ok(None),
        Some(d) => {
            let parsed = parse_duration(d)
                .map_err(|e| bad_request(&format!("Invalid duration '{d}': {e}")))?;
            let end = add_duration(now / 1_000_000, parsed);
            Ok(Some(format_iso8601_utc(
                end.saturating_mul(1_000_000) + now % 1_000_000,
            )))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GenerateKeyRequest {
    key: Option<String>,
    key_alias: Option<String>,
    duration: Option<String>,
    models: Vec<String>,
    max_budget: Option<f64>,
    soft_budget: Option<f64>,
    budget_duration: Option<String>,
    tpm_limit: Option<u64>,
    rpm_limit: Option<u64>,
    max_parallel_requests: Option<u64>,
    model_rpm_limit: Option<Value>,
    model_tpm_limit: Option<Value>,
    model_max_budget: Option<Value>,
    metadata: Option<Map<String, Value>>,
    user_id: Option<String>,
    team_id: Option<String>,
    aliases: Option<Value>,
    config: Option<Value>,
    permissions: Option<Value>,
    blocked: Option<bool>,
    allowed_routes: Vec<String>,
    key_type: Option<String>,
    budget_id: Option<String>,
    tags: Option<Vec<String>>,
    organization_id: Option<String>,
    spend: Option<f64>,
}

/// Builds and stores a key row; returns the raw key with the row.
fn create_key(state: &AdminState, req: GenerateKeyRequest) -> Result<(String, KeyRow), AdminError> {
    check_budget("max_budget", req.max_budget)?;
    check_budget("soft_budget", req.soft_budget)?;
    let now = now_micros();
    let (budget_duration, budget_reset_at) =
        check_budget_duration(&state.settings, &req.budget_duration, now)?;
    let raw = match &req.key {
        Some(custom) => {
            validate_custom_key(custom).map_err(|m| bad_request(&m))?;
            custom.clone()
        }
        None => new_raw_key()?,
    };
    let token = hash_key(&raw);
    if state.store.key(&token)?.is_some() {
        return Err(bad_request(
            "Unique key constraint violated: this key already exists.",
        ));
    }
    if let Some(alias) = &req.key_alias {
        if state.store.key_alias_taken(alias)? {
            return Err(bad_request(&format!(
                "Key with alias '{alias}' already exists."
            )));
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
    let row = KeyRow {
        token: token.clone(),
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
        expires: expiry(&req.duration, now)?,
        spend: nanos_to_usd(spend_nanos_of(req.spend)),
        spend_nanos: spend_nanos_of(req.spend),
        created_at: created.clone(),
        updated_at: created,
        created_by: None,
        updated_by: None,
    };
    Ok((raw, row))
}

fn key_response(raw: &str, row: &KeyRow) -> Value {
    let mut v = row_json(row);
    if let Value::Object(o) = &mut v {
        o.insert("key".into(), json!(raw));
        o.insert("token_id".into(), json!(row.token));
        o.insert("litellm_budget_table".into(), Value::Null);
    }
    v
}

async fn key_generate(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    admin_only(&state, &headers, "/key/generate")?;
    let req: GenerateKeyRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return Ok(*resp),
    };
    let (raw, row) = create_key(&state, req)?;
    state.store.insert_key(&row)?;
    Ok(Json(key_response(&raw, &row)).into_response())
}

fn key_status(row: &KeyRow, now: i64) -> &'static str {
    match row.expires.as_deref().and_then(parse_iso8601_utc) {
        Some(exp) if exp < now => "expired",
        _ => "active",
    }
}

async fn key_info(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let principal = authenticate(&state, &headers)?;
    let now = now_micros();
    let (asked, row) = match (q.get("key"), &principal) {
        (Some(k), _) => {
            let token = if is_token_hash(k) {
                k.clone()
            } else {
                hash_key(k)
            };
            (k.clone(), state.store.key_at(&token, now)?)
        }
        (None, Principal::Key(own)) => (own.token.clone(), state.store.key_at(&own.token, now)?),
        (None, Principal::Admin) => {
            return Err(bad_request(
                "Please pass the key to look up: /key/info?key=<key>",
            ))
        }
    };
    let Some(row) = row else {
        return Err(not_found("Key not found in database"));
    };
    if let Principal::Key(own) = &principal {
        let same_user = own.user_id.is_some() && own.user_id == row.user_id;
        if own.token != row.token && !same_user {
            return Err(AdminError(ApiError::new(403, "auth_error", "You are not allowed to access this key's info. Your user_id does not own this key.")));
        }
    }
    let mut info = row_json(&row);
    if let Value::Object(o) = &mut info {
        o.remove("token");
        o.insert("status".into(), json!(key_status(&row, now)));
    }
    Ok(Json(json!({"key": asked, "info": info})).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NewUserRequest {
    user_id: Option<String>,
    user_email: Option<String>,
    user_alias: Option<String>,
    user_role: Option<String>,
    teams: Vec<String>,
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

const USER_ROLES: [&str; 4] = [
    "proxy_admin",
    "proxy_admin_viewer",
    "internal_user",
    "internal_user_viewer",
];

async fn user_new(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    admin_only(&state, &headers, "/user/new")?;
    let req: NewUserRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(resp) => return Ok(*resp),
    };
    let role = req
        .user_role
        .clone()
        .unwrap_or_else(|| "internal_user".into());
    if !USER_ROLES.contains(&role.as_str()) {
        return Err(bad_request(&format!(
            "Invalid user_role '{role}'. Must be one of {USER_ROLES:?}"
        )));
    }
    let is_internal = role == "internal_user";
    let max_budget = req.max_budget.or(if is_internal {
        state.settings.max_internal_user_budget
    } else {
        None
    });
    let budget_duration = req.budget_duration.clone().or(if is_internal {
        state.settings.internal_user_budget_duration.clone()
    } else {
        None
    });
    check_budget("max_budget", max_budget)?;
    let now_us = now_micros();
    let (budget_duration, budget_reset_at) =
        check_budget_duration(&state.settings, &budget_duration, now_us)?;
    let user_id = req
        .user_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if state.store.user(&user_id)?.is_some() {
        return Err(bad_request(&format!(
            "User with id={user_id} already exists."
        )));
    }
    if let Some(email) = &req.user_email {
        if state.store.user_email_taken(email)? {
            return Err(bad_request(&format!(
                "User with email={email} already exists."
            )));
        }
    }
    let now = format_iso8601_utc(now_us);
    let user = UserRow {
        user_id: user_id.clone(),
        user_email: req.user_email.clone(),
        user_alias: req.user_alias.clone(),
        user_role: Some(role.clone()),
        teams: req.teams.clone(),
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
        spend: nanos_to_usd(spend_nanos_of(req.spend)),
        spend_nanos: spend_nanos_of(req.spend),
        created_at: now.clone(),
        updated_at: now,
    };
    let key = if req.auto_create_key.unwrap_or(true) {
        // The auto-created key copies the user's models and limits, not its budget (§5.3).
        Some(create_key(
            &state,
            GenerateKeyRequest {
                key_alias: req.key_alias.clone(),
                duration: req.duration.clone(),
                models: req.models.clone(),
                tpm_limit: req.tpm_limit,
                rpm_limit: req.rpm_limit,
                max_parallel_requests: req.max_parallel_requests,
                user_id: Some(user_id.clone()),
                ..Default::default()
            },
        )?)
    } else {
        None
    };
    state
        .store
        .insert_user_with_key(&user, key.as_ref().map(|(_, row)| row))?;
    let mut resp = row_json(&user);
    if let Value::Object(o) = &mut resp {
        match &key {
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
    Ok(Json(resp).into_response())
}

async fn user_info(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let principal = authenticate(&state, &headers)?;
    let user_id = match (&principal, q.get("user_id")) {
        (Principal::Admin, Some(id)) => id.clone(),
        (Principal::Admin, None) => {
            return Err(bad_request(
                "Please pass the user to look up: /user/info?user_id=<id>",
            ))
        }
        (Principal::Key(own), asked) => {
            let Some(own_id) = own.user_id.clone() else {
                return Err(AdminError(ApiError::new(
                    403,
                    "auth_error",
                    "This key belongs to no user.",
                )));
            };
            if asked.is_some_and(|a| *a != own_id) {
                return Err(AdminError(ApiError::new(
                    403,
                    "auth_error",
                    "You are not allowed to view other users' info.",
                )));
            }
            own_id
        }
    };
    let now = now_micros();
    let Some(user) = state.store.user_at(&user_id, now)? else {
        return Err(not_found(&format!("User {user_id} not found")));
    };
    let keys: Vec<Value> = state
        .store
        .keys_of_user_at(&user_id, now)?
        .iter()
        .map(row_json)
        .collect();
    Ok(
        Json(json!({"user_id": user_id, "user_info": row_json(&user), "keys": keys, "teams": []}))
            .into_response(),
    )
}

async fn liveliness() -> Response {
    Json(json!("I'm alive!")).into_response()
}

async fn readiness(State(state): State<Shared>) -> Response {
    let db = if state.store.ping().is_ok() {
        "connected"
    } else {
        "disconnected"
    };
    let status = if db == "connected" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if db == "connected" { "healthy" } else { "unhealthy" },
            "db": db,
            "cache": null,
            "litellm_version": concat!("tollgate-", env!("CARGO_PKG_VERSION")),
            "success_callbacks": [],
        })),
    )
        .into_response()
}

/// Only the filter (which holds the internal token) may call the internal endpoints.
fn internal_only(state: &AdminState, headers: &HeaderMap) -> Result<(), AdminError> {
    let expected = format!("Bearer {}", state.settings.internal_token);
    let given = headers
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if state.settings.internal_token.is_empty() || !bool::from(given.ct_eq(expected.as_bytes())) {
        return Err(AdminError(ApiError::new(
            401,
            "auth_error",
            "internal endpoint",
        )));
    }
    Ok(())
}

/// A key's `model_max_budget` as the filter enforces it (§2.4): entries
/// `{"max_budget"|"budget_limit": f, "budget_duration"|"time_period": "1d"}`; an entry without a
/// duration (or a limit) is unusable and skipped, as in LiteLLM. A JSON-encoded string is read too.
fn model_budgets(v: &Value) -> BTreeMap<String, ModelBudget> {
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
            let max_budget = field(e, "max_budget", "budget_limit")?.as_f64()?;
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

/// The filter's key lookup: what it needs to decide, for one key hash. Budget periods that have
/// ended are reset first (and that is persisted), so the spends seed fresh counters.
async fn internal_key(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let now = now_micros();
    let Some(row) = state.store.key_at(&hash, now)? else {
        return Ok(Json(KeyLookup::NotFound).into_response());
    };
    let user = match &row.user_id {
        Some(id) => state.store.user_at(id, now)?,
        None => None,
    };
    let proxy = state.store.proxy_budget_at(now)?;
    let model_limits = |field: &str| -> BTreeMap<String, u64> {
        row.metadata
            .get(field)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let record = KeyRecord {
        model_rpm_limit: model_limits("model_rpm_limit"),
        model_tpm_limit: model_limits("model_tpm_limit"),
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
        max_budget: row.max_budget,
        spend: nanos_to_usd(row.spend_nanos),
        rpm_limit: row.rpm_limit,
        tpm_limit: row.tpm_limit,
        max_parallel_requests: row.max_parallel_requests,
        budget_duration: row.budget_duration.clone(),
        budget_reset_at_micros: row.budget_reset_at_micros(),
        spend_nanos: row.spend_nanos,
        model_max_budget: model_budgets(&row.model_max_budget),
        user_budget: user.as_ref().map(UserRow::budget_state),
        proxy_budget: Some(proxy.state(state.settings.budgets.proxy_max_budget)),
    };
    Ok(Json(KeyLookup::Found {
        key: Box::new(record),
    })
    .into_response())
}

/// `POST /tollgate/internal/v1/spend`: the filter's settled calls. Idempotent per `request_id`.
async fn internal_spend(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AdminResult {
    internal_only(&state, &headers)?;
    let batch: SpendBatch = serde_json::from_slice(&body)
        .map_err(|e| AdminError(ApiError::bad_request(format!("Invalid spend batch: {e}"))))?;
    let shared = Arc::clone(&state);
    let applied =
        tokio::task::spawn_blocking(move || shared.store.apply_spend_batch(&batch, now_micros()))
            .await
            .map_err(|e| anyhow::anyhow!("spend batch task failed: {e}"))??;
    Ok(Json(applied).into_response())
}

/// `GET /tollgate/internal/v1/proxy`: the proxy budget's state (the filter seeds its counter).
async fn internal_proxy(State(state): State<Shared>, headers: HeaderMap) -> AdminResult {
    internal_only(&state, &headers)?;
    let proxy = state.store.proxy_budget_at(now_micros())?;
    Ok(Json(proxy.state(state.settings.budgets.proxy_max_budget)).into_response())
}

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
        },
    })
}

/// `GET /spend/logs?api_key=&user_id=&request_id=&start_date=&end_date=`: spend-log rows,
/// newest first; the given filters all apply. A virtual key sees only its user's rows (or, with
/// no user, its own).
async fn spend_logs(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let principal = authenticate(&state, &headers)?;
    let param = |name: &str| q.get(name).filter(|v| !v.is_empty()).cloned();
    let master_hash = hash_key(&state.settings.master_key);
    let mut query = SpendLogQuery {
        user_id: param("user_id"),
        request_id: param("request_id"),
        ..Default::default()
    };
    if let Some(k) = param("api_key") {
        let token = if is_token_hash(&k) { k } else { hash_key(&k) };
        query.api_key = if !state.settings.master_key.is_empty() && token == master_hash {
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
    if let Principal::Key(own) = &principal {
        match &own.user_id {
            Some(u) => query.user_id = Some(u.clone()),
            None => query.api_key = KeyFilter::Token(own.token.clone()),
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
async fn global_spend(State(state): State<Shared>, headers: HeaderMap) -> AdminResult {
    admin_only(&state, &headers, "/global/spend")?;
    let proxy = state.store.proxy_budget_at(now_micros())?;
    Ok(Json(json!({
        "spend": proxy.spend_usd(),
        "max_budget": state.settings.budgets.proxy_max_budget.unwrap_or(0.0),
    }))
    .into_response())
}

/// LLM routes reach the sidecar only when the filter is not running in Envoy.
async fn llm_without_filter() -> Response {
    let e = ApiError::service_unavailable("Tollgate's Envoy filter is not active on this route; LLM calls are not served by the sidecar.");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "application/json")],
        e.body(),
    )
        .into_response()
}

async fn fallback(uri: Uri) -> Response {
    if crate::routes::classify(uri.path()).is_some() {
        return llm_without_filter().await;
    }
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

pub fn router(state: Arc<AdminState>) -> Router {
    let limit = state.settings.max_body_bytes.max(1024);
    let spend_limit = state.settings.max_spend_batch_bytes.max(limit);
    Router::new()
        .route("/key/generate", post(key_generate))
        .route("/key/info", get(key_info))
        .route("/user/new", post(user_new))
        .route("/user/info", get(user_info))
        .route("/health/liveliness", get(liveliness))
        .route("/health/liveness", get(liveliness))
        .route("/health/readiness", get(readiness))
        .route("/spend/logs", get(spend_logs))
        .route("/global/spend", get(global_spend))
        .route("/tollgate/internal/v1/keys/{hash}", get(internal_key))
        .route(
            "/tollgate/internal/v1/spend",
            post(internal_spend).layer(axum::extract::DefaultBodyLimit::max(spend_limit)),
        )
        .route("/tollgate/internal/v1/proxy", get(internal_proxy))
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr_quotes_like_python() {
        assert_eq!(py_repr("abc"), "'abc'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(bad_request("x").0.message, "{'error': 'x'}");
    }

    #[test]
    fn generated_keys_have_litellm_shape() {
        let k = new_raw_key().unwrap();
        assert_eq!(k.len(), 25);
        assert!(k.starts_with("sk-"));
        assert!(k[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(k, new_raw_key().unwrap());
    }

    #[test]
    fn masks_user_ids() {
        assert_eq!(mask_id("abcdef"), "ab**ef");
        assert_eq!(mask_id("abc"), "***");
    }

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

    #[test]
    fn spend_log_dates_include_the_end_day() {
        let start = spend_log_bound("start_date", "2026-01-02", false).unwrap();
        let end = spend_log_bound("end_date", "2026-01-02", true).unwrap();
        assert_eq!(end - start, 86_400_000_000);
        assert!(spend_log_bound("end_date", "01/02/2026", true).is_err());
    }

    const MASTER: &str = "sk-master-test-key";

    /// The admin API on an ephemeral port, with an in-memory store.
    struct Api {
        base: String,
        internal: String,
        _rt: tokio::runtime::Runtime,
    }

    impl Api {
        fn start(budgets: BudgetSettings) -> Api {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let store = Store::open(std::path::Path::new(":memory:"))
                .unwrap()
                .with_reset_clock(ResetClock::from_budget_settings(&budgets));
            store
                .configure_proxy_budget(budgets.proxy_budget_duration.as_deref(), now_micros())
                .unwrap();
            let internal = crate::sidecar::render::internal_token(MASTER);
            let state = Arc::new(AdminState {
                store,
                settings: AdminSettings {
                    master_key: MASTER.into(),
                    internal_token: internal.clone(),
                    max_body_bytes: 1024 * 1024,
                    max_spend_batch_bytes: MAX_SPEND_BATCH_BYTES,
                    budgets,
                    ..Default::default()
                },
            });
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap();
            rt.spawn(async move { axum::serve(listener, router(state)).await });
            Api {
                base: format!("http://{addr}"),
                internal: format!("Bearer {internal}"),
                _rt: rt,
            }
        }

        fn call(&self, method: &str, path: &str, auth: &str, body: Option<String>) -> (u16, Value) {
            let req = ureq::request(method, &format!("{}{path}", self.base))
                .set("authorization", auth)
                .set("content-type", "application/json");
            let resp = match body {
                Some(b) => req.send_string(&b),
                None => req.call(),
            };
            let resp = match resp {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            let status = resp.status();
            let text = resp.into_string().unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }

        fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
            let (status, v) = self.call(
                method,
                path,
                &format!("Bearer {MASTER}"),
                body.map(|b| b.to_string()),
            );
            assert_eq!(status, 200, "{method} {path}: {v}");
            v
        }

        fn spend(&self, events: Vec<SpendEvent>) -> (u16, Value) {
            let body = serde_json::to_string(&SpendBatch { events }).unwrap();
            self.call(
                "POST",
                "/tollgate/internal/v1/spend",
                &self.internal,
                Some(body),
            )
        }

        fn lookup(&self, token: &str) -> KeyRecord {
            let (status, v) = self.call(
                "GET",
                &format!("/tollgate/internal/v1/keys/{token}"),
                &self.internal,
                None,
            );
            assert_eq!(status, 200, "{v}");
            match serde_json::from_value(v).unwrap() {
                KeyLookup::Found { key } => *key,
                KeyLookup::NotFound => panic!("key {token} not found"),
            }
        }
    }

    fn event(id: &str, token: &str, user: &str, nanos: i64) -> SpendEvent {
        let now = now_micros();
        SpendEvent {
            request_id: id.into(),
            api_key: Some(token.into()),
            key_alias: Some("alias-1".into()),
            user_id: Some(user.into()),
            end_user: Some("customer-1".into()),
            model: "gpt-4o-mini".into(),
            model_id: "dep-1".into(),
            spend_nanos: nanos,
            prompt_tokens: 12,
            completion_tokens: 8,
            total_tokens: 20,
            estimated: true,
            status: "success".into(),
            call_type: "acompletion".into(),
            start_time_micros: now - 2_000,
            end_time_micros: now,
            ..Default::default()
        }
    }

    #[test]
    fn spend_flows_from_batch_to_litellm_endpoints() {
        let api = Api::start(BudgetSettings {
            proxy_max_budget: Some(100.0),
            proxy_budget_duration: Some("30d".into()),
            ..Default::default()
        });
        let user = api.admin(
            "POST",
            "/user/new",
            Some(json!({"user_id": "alice", "max_budget": 10.0, "budget_duration": "1d"})),
        );
        assert!(user["budget_reset_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z"));
        assert!(user.get("spend_nanos").is_none());
        let raw = user["key"].as_str().unwrap().to_string();
        let token = hash_key(&raw);
        let key = api.admin(
            "POST",
            "/key/generate",
            Some(json!({
                "user_id": "alice", "max_budget": 5.0, "budget_duration": "1h",
                "model_max_budget": {"gpt-4o": {"budget_limit": 1.0, "time_period": "1d"}, "x": {"max_budget": 1.0}},
            })),
        );
        let token2 = key["token"].as_str().unwrap().to_string();
        assert!(key["budget_reset_at"]
            .as_str()
            .unwrap()
            .ends_with(":00:00Z"));

        // Internal endpoints want the internal token.
        let (status, _) = api.call(
            "POST",
            "/tollgate/internal/v1/spend",
            &format!("Bearer {MASTER}"),
            Some("{}".into()),
        );
        assert_eq!(status, 401);
        let (status, v) = api.spend(vec![]);
        assert_eq!((status, &v), (200, &json!({"applied": 0, "duplicates": 0})));
        let (status, v) = api.call(
            "POST",
            "/tollgate/internal/v1/spend",
            &api.internal,
            Some("{not json".into()),
        );
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");

        let batch = vec![
            event("req-1", &token, "alice", 250_000_000),
            event("req-2", &token2, "alice", 1_000_000_000),
        ];
        let (status, v) = api.spend(batch.clone());
        assert_eq!((status, &v), (200, &json!({"applied": 2, "duplicates": 0})));
        let (_, v) = api.spend(batch);
        assert_eq!(v, json!({"applied": 0, "duplicates": 2}));

        let info = api.admin("GET", &format!("/key/info?key={raw}"), None);
        assert_eq!(info["info"]["spend"], 0.25);
        assert!(info["info"].get("spend_nanos").is_none());
        let info = api.admin("GET", "/user/info?user_id=alice", None);
        assert_eq!(info["user_info"]["spend"], 1.25);
        assert_eq!(info["keys"].as_array().unwrap().len(), 2);
        let global = api.admin("GET", "/global/spend", None);
        assert_eq!(global, json!({"spend": 1.25, "max_budget": 100.0}));

        let logs = api.admin("GET", &format!("/spend/logs?api_key={raw}"), None);
        let logs = logs.as_array().unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0]["request_id"], "req-1");
        assert_eq!(logs[0]["api_key"], json!(token));
        assert_eq!(logs[0]["spend"], 0.25);
        assert_eq!(logs[0]["user"], "alice");
        assert_eq!(logs[0]["end_user"], "customer-1");
        assert_eq!(logs[0]["total_tokens"], 20);
        assert_eq!(logs[0]["metadata"]["estimated"], true);
        assert_eq!(logs[0]["metadata"]["user_api_key_alias"], "alias-1");
        assert!(logs[0]["startTime"].as_str().unwrap().ends_with('Z'));
        let today = &logs[0]["startTime"].as_str().unwrap()[..10];
        let all = api.admin(
            "GET",
            &format!("/spend/logs?user_id=alice&start_date={today}&end_date={today}"),
            None,
        );
        assert_eq!(all.as_array().unwrap().len(), 2);
        let none = api.admin(
            "GET",
            "/spend/logs?start_date=2000-01-01&end_date=2000-01-02",
            None,
        );
        assert_eq!(none, json!([]));
        // A virtual key sees only its user's logs; /global/spend is admin only.
        let (status, mine) = api.call(
            "GET",
            "/spend/logs?user_id=bob",
            &format!("Bearer {raw}"),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(mine.as_array().unwrap().len(), 2);
        let (status, _) = api.call("GET", "/global/spend", &format!("Bearer {raw}"), None);
        assert_eq!(status, 401);

        let rec = api.lookup(&token2);
        assert_eq!(rec.spend_nanos, 1_000_000_000);
        assert_eq!(rec.spend, 1.0);
        assert_eq!(rec.budget_duration.as_deref(), Some("1h"));
        assert!(rec.budget_reset_at_micros.unwrap() > now_micros());
        assert_eq!(rec.model_max_budget.len(), 1);
        assert_eq!(rec.model_max_budget["gpt-4o"].budget_duration, "1d");
        let ub = rec.user_budget.unwrap();
        assert_eq!((ub.max_budget, ub.spend_nanos), (Some(10.0), 1_250_000_000));
        assert_eq!(ub.budget_duration.as_deref(), Some("1d"));
        let pb = rec.proxy_budget.unwrap();
        assert_eq!(
            (pb.max_budget, pb.spend_nanos),
            (Some(100.0), 1_250_000_000)
        );
        assert!(pb.budget_reset_at_micros.is_some());
        let (status, proxy) = api.call("GET", "/tollgate/internal/v1/proxy", &api.internal, None);
        assert_eq!(status, 200);
        let proxy: crate::records::BudgetState = serde_json::from_value(proxy).unwrap();
        assert_eq!(proxy, pb);
    }

    #[test]
    fn spend_batches_may_exceed_the_admin_body_limit() {
        let api = Api::start(BudgetSettings::default());
        let events: Vec<SpendEvent> = (0..5000)
            .map(|i| event(&format!("big-{i:05}-{}", "x".repeat(200)), "t", "u", 1))
            .collect();
        let body = serde_json::to_string(&SpendBatch { events }).unwrap();
        assert!(body.len() > 1024 * 1024 && body.len() < MAX_SPEND_BATCH_BYTES);
        let (status, v) = api.call(
            "POST",
            "/tollgate/internal/v1/spend",
            &api.internal,
            Some(body),
        );
        assert_eq!(
            (status, &v),
            (200, &json!({"applied": 5000, "duplicates": 0}))
        );
        let global = api.admin("GET", "/global/spend", None);
        assert_eq!(global, json!({"spend": 5e-6, "max_budget": 0.0}));
        let too_big = format!(
            "{{\"events\": [], \"pad\": \"{}\"}}",
            "x".repeat(MAX_SPEND_BATCH_BYTES)
        );
        let (status, _) = api.call(
            "POST",
            "/tollgate/internal/v1/spend",
            &api.internal,
            Some(too_big),
        );
        assert_eq!(status, 413);
    }
}
