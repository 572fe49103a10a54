//! What every admin endpoint shares: LiteLLM's error rendering, request-body parsing (with
//! "absent" and "null" kept apart for updates), field validation and the response with its
//! `x-tollgate-invalidate` header.

use super::AdminSettings;
use crate::contract::INVALIDATE_HEADER;
use crate::errors::ApiError;
use crate::sidecar::store::{nanos_to_usd, usd_to_nanos, BudgetRow, Committed, Tx};
use crate::time::{add_duration, format_iso8601_utc, parse_duration, validate_budget_duration_at};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Most entries an `x-tollgate-invalidate` header lists; more are sent as `*`.
pub const MAX_INVALIDATE_ENTRIES: usize = 256;

/// An error as LiteLLM's management endpoints render it: the OpenAI-style envelope, or
/// FastAPI's `{"detail": ...}` (body validation).
#[derive(Debug)]
pub enum AdminError {
    Api(ApiError),
    Detail(StatusCode, Value),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Api(e) => {
                let status =
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, [("content-type", "application/json")], e.body()).into_response()
            }
            AdminError::Detail(status, detail) => {
                (status, Json(json!({ "detail": detail }))).into_response()
            }
        }
    }
}

impl From<anyhow::Error> for AdminError {
    fn from(e: anyhow::Error) -> Self {
        // An unreachable database is the store being down, not a fault in the call: 503, so
        // the filter keeps serving what it knows and retries.
        if let Some(down) = e.downcast_ref::<crate::sidecar::store::Unavailable>() {
            return AdminError::Api(ApiError::new(
                503,
                "service_unavailable",
                format!("Service Unavailable, {down}"),
            ));
        }
        AdminError::Api(ApiError::new(
            500,
            "internal_server_error",
            format!("Internal Server Error, {e}"),
        ))
    }
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        AdminError::Api(e)
    }
}

pub type AdminResult = Result<Response, AdminError>;

/// Python's `repr` of a str, as LiteLLM's messages embed it.
pub fn py_repr(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// `HTTPException(400, detail={"error": msg})` as LiteLLM renders it: the message is the
/// Python repr of the detail dict (litellm-compat.md §5.3).
pub fn bad_request(msg: &str) -> AdminError {
    detail_error(400, msg)
}

/// `HTTPException(status, detail={"error": msg})` rendered by `handle_exception_on_proxy`.
pub fn detail_error(status: u16, msg: &str) -> AdminError {
    let error_type = match status {
        401 | 403 => "auth_error",
        404 => "not_found_error",
        _ => "invalid_request_error",
    };
    AdminError::Api(ApiError::new(
        status,
        error_type,
        format!("{{'error': {}}}", py_repr(msg)),
    ))
}

/// A plain 404 (`ProxyException` with type `not_found_error`).
pub fn not_found(msg: &str) -> AdminError {
    AdminError::Api(ApiError::new(404, "not_found_error", msg))
}

/// A 403 for a caller who may use the route but not on this object.
pub fn forbidden(msg: &str) -> AdminError {
    AdminError::Api(ApiError::new(403, "auth_error", msg))
}

/// A FastAPI/pydantic validation failure: 422 `{"detail":[{...}]}`.
pub fn validation_error(loc: &[&str], msg: &str) -> AdminError {
    AdminError::Detail(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!([{"type": "value_error", "loc": loc, "msg": msg, "input": null}]),
    )
}

fn body_text(body: &[u8]) -> &[u8] {
    if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    }
}

/// A field that may be sent as `null` and then takes its default (pydantic's
/// `Optional[list] = []`): `#[serde(deserialize_with = "null_default")]`.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Parses a JSON body into a request type; failures answer like FastAPI (422).
pub fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body_text(body)).map_err(|e| validation_error(&["body"], &e.to_string()))
}

/// A LiteLLM-style JSON body of type `T` as an axum extractor: an empty body reads as `{}`,
/// a malformed one is FastAPI's 422 ([`parse_body`]).
pub struct Body<T>(pub T);

/// The request body's bytes (the size limit is the router's); a body that cannot be read is a
/// 400 in LiteLLM's envelope.
async fn body_bytes<S: Send + Sync>(
    req: axum::extract::Request,
    state: &S,
) -> Result<axum::body::Bytes, AdminError> {
    use axum::extract::FromRequest;
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| AdminError::Api(ApiError::bad_request(e.body_text())))
}

impl<S: Send + Sync, T: for<'de> Deserialize<'de>> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AdminError> {
        parse_body(&body_bytes(req, state).await?).map(Body)
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Fields {
    type Rejection = AdminError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AdminError> {
        Fields::parse(&body_bytes(req, state).await?)
    }
}

/// A JSON object body whose fields are read one by one: an update distinguishes a field that
/// is absent (unchanged) from one that is `null` (cleared).
/// The budget-period and limit fields `/key/update`, `/team/update` and `/user/update` share,
/// borrowed from the row being updated (users have no `soft_budget`).
pub struct PeriodAndLimits<'a> {
    pub soft_budget: Option<&'a mut Option<f64>>,
    pub budget_duration: &'a mut Option<String>,
    pub budget_reset_at: &'a mut Option<String>,
    pub tpm_limit: &'a mut Option<u64>,
    pub rpm_limit: &'a mut Option<u64>,
    pub max_parallel_requests: &'a mut Option<u64>,
}

pub struct Fields(pub Map<String, Value>);

impl Fields {
    pub fn parse(body: &[u8]) -> Result<Fields, AdminError> {
        match serde_json::from_slice::<Value>(body_text(body)) {
            Ok(Value::Object(m)) => Ok(Fields(m)),
            Ok(_) => Err(validation_error(
                &["body"],
                "Input should be a valid dictionary",
            )),
            Err(e) => Err(validation_error(&["body"], &e.to_string())),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The whole body as a request type, as [`Body`] reads it.
    pub fn body<T: for<'de> Deserialize<'de>>(&self) -> Result<T, AdminError> {
        serde_json::from_value(Value::Object(self.0.clone()))
            .map_err(|e| validation_error(&["body"], &e.to_string()))
    }

    /// The raw value: `None` absent, `Some(Null)` null.
    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    fn typed<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<Option<Option<T>>, AdminError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => serde_json::from_value::<T>(v.clone())
                .map(|t| Some(Some(t)))
                .map_err(|e| validation_error(&["body", name], &e.to_string())),
        }
    }

    /// `None`: absent; `Some(None)`: null; `Some(Some(s))`: a string.
    pub fn string(&self, name: &str) -> Result<Option<Option<String>>, AdminError> {
        self.typed(name)
    }

    pub fn float(&self, name: &str) -> Result<Option<Option<f64>>, AdminError> {
        self.typed(name)
    }

    pub fn uint(&self, name: &str) -> Result<Option<Option<u64>>, AdminError> {
        self.typed(name)
    }

    pub fn boolean(&self, name: &str) -> Result<Option<Option<bool>>, AdminError> {
        self.typed(name)
    }

    /// Applies the shared budget-period and limit fields present in the body (null clears):
    /// `soft_budget`, `budget_duration` (which recomputes `budget_reset_at`), `tpm_limit`,
    /// `rpm_limit`, `max_parallel_requests`.
    pub fn apply_period_and_limits(
        &self,
        settings: &AdminSettings,
        now_micros: i64,
        to: PeriodAndLimits<'_>,
    ) -> Result<(), AdminError> {
        if let Some(soft) = to.soft_budget {
            if let Some(v) = self.float("soft_budget")? {
                check_budget("soft_budget", v)?;
                *soft = v;
            }
        }
        if let Some(v) = self.string("budget_duration")? {
            let (d, at) = check_budget_duration(settings, &v, now_micros)?;
            *to.budget_duration = d;
            *to.budget_reset_at = at;
        }
        if let Some(v) = self.uint("tpm_limit")? {
            *to.tpm_limit = v;
        }
        if let Some(v) = self.uint("rpm_limit")? {
            *to.rpm_limit = v;
        }
        if let Some(v) = self.uint("max_parallel_requests")? {
            *to.max_parallel_requests = v;
        }
        Ok(())
    }

    pub fn strings(&self, name: &str) -> Result<Option<Option<Vec<String>>>, AdminError> {
        self.typed(name)
    }

    /// A JSON value (object, list, ...): `Some(Null)` for null.
    pub fn value(&self, name: &str) -> Option<Value> {
        self.0.get(name).cloned()
    }

    /// A required non-empty string.
    pub fn required_string(&self, name: &str) -> Result<String, AdminError> {
        match self.string(name)? {
            Some(Some(s)) if !s.is_empty() => Ok(s),
            _ => Err(validation_error(&["body", name], "Field required")),
        }
    }

    /// A list of strings, also accepted as a single string.
    pub fn string_list(&self, name: &str) -> Result<Option<Vec<String>>, AdminError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(v) => serde_json::from_value::<Vec<String>>(v.clone())
                .map(Some)
                .map_err(|e| validation_error(&["body", name], &e.to_string())),
        }
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `max_budget` / `soft_budget` / ... must be non-negative and not NaN (§2.3).
pub fn check_budget(field: &str, v: Option<f64>) -> Result<(), AdminError> {
    match v {
        Some(b) if b.is_nan() || b < 0.0 => Err(bad_request(&format!(
            "{field} must be a non-negative finite number"
        ))),
        _ => Ok(()),
    }
}

/// Validates a `budget_duration` (§3.1) and computes its first `budget_reset_at` (§3.2).
pub fn check_budget_duration(
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
                &b.timezone,
                b.reset_time_of_day_seconds,
            )
            .map_err(|m| bad_request(&m))?;
            let reset_at = settings.reset_clock().next_reset_iso(d, now_micros);
            Ok((Some(d.clone()), Some(reset_at)))
        }
    }
}

/// A `duration` / `budget_duration` as seconds from `now_secs` (months by the calendar), as
/// LiteLLM's `duration_in_seconds` measures it; `None` when it does not parse.
pub fn duration_seconds(d: &str, now_secs: i64) -> Option<i64> {
    parse_duration(d)
        .ok()
        .map(|p| add_duration(now_secs, p).saturating_sub(now_secs))
}

/// `expires` for a key `duration`: exact, not aligned (§5.2). `None` / `"-1"`: never.
pub fn expiry(duration: Option<&str>, now: i64) -> Result<Option<String>, AdminError> {
    match duration {
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

/// A stored row as the API shows it: `spend_nanos` is Tollgate's own field.
pub fn row_json<T: serde::Serialize>(row: &T) -> Value {
    let mut v = serde_json::to_value(row).unwrap_or_else(|_| json!({}));
    if let Value::Object(o) = &mut v {
        o.remove("spend_nanos");
    }
    v
}

/// A `spend` given by a caller, as nano-dollars (a non-finite value is taken as 0).
pub fn spend_nanos_of(spend: Option<f64>) -> i64 {
    spend
        .filter(|s| s.is_finite())
        .map(usd_to_nanos)
        .unwrap_or(0)
}

/// USD from nano-dollars (re-exported for the endpoint modules).
pub fn usd(nanos: i64) -> f64 {
    nanos_to_usd(nanos)
}

/// `{"field": {"model": n}}` entries of a metadata object as a map of limits.
pub fn model_limits(metadata: &Value, field: &str) -> std::collections::BTreeMap<String, u64> {
    metadata
        .get(field)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    v.as_u64()
                        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                        .map(|n| (k.clone(), n))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sets or removes `metadata[field]`.
pub fn set_metadata(metadata: &mut Value, field: &str, v: Option<Value>) {
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    if let Value::Object(m) = metadata {
        match v {
            Some(Value::Null) | None => {
                m.remove(field);
            }
            Some(v) => {
                m.insert(field.to_string(), v);
            }
        }
    }
}

/// The value of `x-tollgate-invalidate` for these entries: comma-separated, or `*` when there
/// are more than [`MAX_INVALIDATE_ENTRIES`] (or one of them is `*`). `None` when empty.
pub fn invalidate_header(entries: &[String]) -> Option<String> {
    if entries.is_empty() {
        return None;
    }
    if entries.len() > MAX_INVALIDATE_ENTRIES || entries.iter().any(|e| e == "*") {
        return Some("*".into());
    }
    Some(entries.join(","))
}

/// A JSON answer to a change, with the entries it made stale in `x-tollgate-invalidate`.
pub fn changed(body: Value, entries: &[String]) -> Response {
    let mut resp = Json(body).into_response();
    if let Some(v) = invalidate_header(entries).and_then(|v| HeaderValue::from_str(&v).ok()) {
        resp.headers_mut().insert(INVALIDATE_HEADER, v);
    }
    resp
}

/// Runs `f` in one store transaction at the current time (see `Store::transact`).
pub fn transact<T>(
    state: &super::AdminState,
    f: impl FnOnce(&mut Tx<'_>) -> Result<T, AdminError>,
) -> Result<Committed<T>, AdminError> {
    state.store.transact(now_micros(), f)
}

/// What a request sets on a budget row: `None` leaves a field, `Some(None)` clears it.
#[derive(Default)]
pub struct BudgetChange {
    /// The request field `max_budget` came from, for its error message.
    pub max_budget_field: &'static str,
    pub max_budget: Option<Option<f64>>,
    pub budget_duration: Option<Option<String>>,
    pub rpm_limit: Option<Option<u64>>,
    pub tpm_limit: Option<Option<u64>>,
}

/// Creates or updates the budget row `id` names (a new row when `id` is `None`; the named id
/// when it names nothing) with `change` applied; returns the row's id.
pub fn upsert_budget_row(
    settings: &AdminSettings,
    tx: &Tx<'_>,
    id: Option<&str>,
    change: BudgetChange,
) -> Result<String, AdminError> {
    let now = tx.now();
    let mut row = match id {
        Some(id) => tx.budget(id)?.unwrap_or_else(|| BudgetRow {
            budget_id: id.to_string(),
            ..Default::default()
        }),
        None => BudgetRow {
            budget_id: new_uuid(),
            created_at: format_iso8601_utc(now),
            ..Default::default()
        },
    };
    if let Some(v) = change.max_budget {
        check_budget(change.max_budget_field, v)?;
        row.max_budget = v;
    }
    if let Some(v) = change.budget_duration {
        let (d, at) = check_budget_duration(settings, &v, now)?;
        row.budget_duration = d;
        row.budget_reset_at = at;
    }
    if let Some(v) = change.rpm_limit {
        row.rpm_limit = v;
    }
    if let Some(v) = change.tpm_limit {
        row.tpm_limit = v;
    }
    row.updated_at = format_iso8601_utc(now);
    tx.save_budget(&row)?;
    Ok(row.budget_id)
}

/// A JSON answer.
pub fn ok(body: Value) -> Response {
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr_quotes_like_python() {
        assert_eq!(py_repr("abc"), "'abc'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        match bad_request("x") {
            AdminError::Api(e) => assert_eq!(e.message, "{'error': 'x'}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_keep_absent_and_null_apart() {
        let f = Fields::parse(br#"{"a": null, "b": "x", "n": 3, "l": "one"}"#).unwrap();
        assert_eq!(f.string("a").unwrap(), Some(None));
        assert_eq!(f.string("b").unwrap(), Some(Some("x".into())));
        assert_eq!(f.string("zz").unwrap(), None);
        assert_eq!(f.uint("n").unwrap(), Some(Some(3)));
        assert!(f.uint("b").is_err());
        assert_eq!(f.string_list("l").unwrap(), Some(vec!["one".to_string()]));
        assert!(Fields::parse(b"[]").is_err());
        assert!(Fields::parse(b"  ").unwrap().0.is_empty());
    }

    #[test]
    fn null_takes_the_default() {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct R {
            #[serde(deserialize_with = "null_default")]
            models: Vec<String>,
        }
        let r: R = parse_body(br#"{"models": null}"#).unwrap();
        assert!(r.models.is_empty());
        let r: R = parse_body(br#"{"models": ["a"]}"#).unwrap();
        assert_eq!(r.models, vec!["a"]);
        assert!(parse_body::<R>(br#"{"models": 3}"#).is_err());
    }

    #[test]
    fn invalidate_header_caps_at_256() {
        assert_eq!(invalidate_header(&[]), None);
        let two = vec!["a".to_string(), "customer:b".to_string()];
        assert_eq!(invalidate_header(&two).as_deref(), Some("a,customer:b"));
        let many: Vec<String> = (0..257).map(|i| i.to_string()).collect();
        assert_eq!(invalidate_header(&many).as_deref(), Some("*"));
        assert_eq!(
            invalidate_header(&many[..256]).unwrap().split(',').count(),
            256
        );
    }
}
