//! `GET /user/daily/activity` (LiteLLM's `SpendAnalyticsPaginatedResponse`, the endpoint its
//! UI draws spend over time from): spend per UTC day, broken down by model and by key (each
//! key with its alias, team and user), summed here from the spend-log rows the store keeps.

use super::auth::{authorize, Principal};
use super::common::{bad_request, AdminError, AdminResult};
use super::Shared;
use crate::key_format::{hash_key, is_token_hash};
use crate::records::SpendEvent;
use crate::sidecar::store::{nanos_to_usd, KeyFilter, SpendLogQuery};
use crate::time::{format_iso8601_utc, parse_iso8601_utc};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

const DAY_MICROS: i64 = 86_400_000_000;

/// LiteLLM's `SpendMetrics` (the fields Tollgate records; the rest stay 0).
#[derive(Default, Clone, Copy)]
struct Metrics {
    spend_nanos: i64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cache_read_input_tokens: u64,
    total_tokens: u64,
    successful_requests: u64,
    failed_requests: u64,
}

impl Metrics {
    fn add(&mut self, e: &SpendEvent) {
        self.spend_nanos = self.spend_nanos.saturating_add(e.spend_nanos);
        self.prompt_tokens = self.prompt_tokens.saturating_add(e.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(e.completion_tokens);
        self.cache_read_input_tokens = self.cache_read_input_tokens.saturating_add(e.cached_tokens);
        self.total_tokens = self.total_tokens.saturating_add(e.total_tokens);
        if e.status == "success" {
            self.successful_requests += 1;
        } else {
            self.failed_requests += 1;
        }
    }

    fn requests(&self) -> u64 {
        self.successful_requests + self.failed_requests
    }

    fn json(&self) -> Value {
        json!({
            "spend": nanos_to_usd(self.spend_nanos),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": 0,
            "total_tokens": self.total_tokens,
            "successful_requests": self.successful_requests,
            "failed_requests": self.failed_requests,
            "api_requests": self.requests(),
        })
    }
}

/// One day's totals and breakdowns.
#[derive(Default)]
struct Day {
    metrics: Metrics,
    models: BTreeMap<String, Metrics>,
    /// Per key hash: its metrics and the first row's alias, team and user.
    api_keys: BTreeMap<String, (Metrics, Value)>,
}

/// The response for `events` (any order): days ascending, only days with rows.
fn daily_activity(events: &[SpendEvent], master_hash: &str) -> Value {
    let mut days: BTreeMap<String, Day> = BTreeMap::new();
    let mut total = Metrics::default();
    for e in events {
        let date = format_iso8601_utc(e.start_time_micros)
            .get(..10)
            .unwrap_or_default()
            .to_string();
        let day = days.entry(date).or_default();
        day.metrics.add(e);
        total.add(e);
        day.models.entry(e.model.clone()).or_default().add(e);
        let key = e.api_key.clone().unwrap_or_else(|| master_hash.to_string());
        day.api_keys
            .entry(key)
            .or_insert_with(|| {
                (
                    Metrics::default(),
                    json!({"key_alias": e.key_alias, "team_id": e.team_id, "user_id": e.user_id}),
                )
            })
            .0
            .add(e);
    }
    let results: Vec<Value> = days
        .into_iter()
        .map(|(date, day)| {
            let by_model: Map<String, Value> = day
                .models
                .iter()
                .map(|(m, metrics)| {
                    (
                        m.clone(),
                        json!({"metrics": metrics.json(), "metadata": {}, "api_key_breakdown": {}}),
                    )
                })
                .collect();
            let api_keys: Map<String, Value> = day
                .api_keys
                .into_iter()
                .map(|(k, (metrics, metadata))| {
                    (k, json!({"metrics": metrics.json(), "metadata": metadata}))
                })
                .collect();
            json!({
                "date": date,
                "metrics": day.metrics.json(),
                "breakdown": {
                    "models": by_model,
                    "model_groups": by_model,
                    "providers": {},
                    "endpoints": {},
                    "mcp_servers": {},
                    "api_keys": api_keys,
                    "entities": {},
                },
            })
        })
        .collect();
    json!({
        "results": results,
        "metadata": {
            "total_spend": nanos_to_usd(total.spend_nanos),
            "total_prompt_tokens": total.prompt_tokens,
            "total_completion_tokens": total.completion_tokens,
            "total_tokens": total.total_tokens,
            "total_api_requests": total.requests(),
            "total_successful_requests": total.successful_requests,
            "total_failed_requests": total.failed_requests,
            "total_cache_read_input_tokens": total.cache_read_input_tokens,
            "total_cache_creation_input_tokens": 0,
            "page": 1,
            "total_pages": 1,
            "has_more": false,
        },
    })
}

/// A `YYYY-MM-DD` day (LiteLLM parses these with `%Y-%m-%d`): its first microsecond, UTC.
fn day_start(field: &str, s: &str) -> Result<i64, AdminError> {
    let s = s.trim();
    match parse_iso8601_utc(s) {
        Some(micros) if s.len() == 10 => Ok(micros),
        _ => Err(bad_request(&format!(
            "Invalid {field} '{s}'. Use YYYY-MM-DD (e.g. 2026-01-31)."
        ))),
    }
}

/// `GET /user/daily/activity?start_date=&end_date=[&model=][&api_key=][&user_id=]`: both days
/// included. A key that may not read everything sees only its user's rows (or, with no user,
/// its own), as on `/spend/logs`. All days come in one page.
pub async fn user_daily_activity(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let principal = authorize(&state, &headers, "/user/daily/activity")?;
    let param = |name: &str| q.get(name).filter(|v| !v.is_empty()).cloned();
    let (Some(start), Some(end)) = (param("start_date"), param("end_date")) else {
        return Err(bad_request("Please provide start_date and end_date"));
    };
    let master_key = state.settings().master_key.clone();
    let master_hash = hash_key(&master_key);
    let mut query = SpendLogQuery {
        user_id: param("user_id"),
        start_micros: Some(day_start("start_date", &start)?),
        end_micros: Some(day_start("end_date", &end)?.saturating_add(DAY_MICROS)),
        ..Default::default()
    };
    if let Some(k) = param("api_key") {
        let token = if is_token_hash(&k) { k } else { hash_key(&k) };
        query.api_key = if !master_key.is_empty() && token == master_hash {
            KeyFilter::Master
        } else {
            KeyFilter::Token(token)
        };
    }
    if let Principal::Key { key: own, .. } = &principal {
        if !principal.is_admin_viewer() {
            match &own.user_id {
                Some(u) => query.user_id = Some(u.clone()),
                None => query.api_key = KeyFilter::Token(own.token.clone()),
            }
        }
    }
    let mut events = state.store.spend_logs(&query)?;
    if let Some(model) = param("model") {
        events.retain(|e| e.model == model);
    }
    Ok(Json(daily_activity(&events, &master_hash)).into_response())
}

pub fn routes() -> axum::Router<Shared> {
    axum::Router::new().route(
        "/user/daily/activity",
        axum::routing::get(user_daily_activity),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{event, Api, MASTER};
    use super::*;
    use crate::plugin_config::BudgetSettings;

    fn at(day: &str, hour: i64) -> i64 {
        parse_iso8601_utc(day).unwrap() + hour * 3_600_000_000
    }

    #[test]
    fn sums_per_day_model_and_key() {
        let mut a = event("r1", "tok-a", "alice", 1_000_000_000);
        a.start_time_micros = at("2026-03-01", 23);
        a.team_id = Some("team-1".into());
        let mut b = event("r2", "tok-a", "alice", 500_000_000);
        b.start_time_micros = at("2026-03-02", 0);
        b.model = "gpt-4o".into();
        let mut c = event("r3", "tok-b", "bob", 250_000_000);
        c.start_time_micros = at("2026-03-02", 5);
        c.status = "failure".into();
        let mut master = event("r4", "", "", 1);
        master.api_key = None;
        master.start_time_micros = at("2026-03-02", 6);
        let v = daily_activity(&[c, master, b, a], "master-hash");
        let days = v["results"].as_array().unwrap();
        assert_eq!(days.len(), 2);
        assert_eq!(days[0]["date"], "2026-03-01");
        assert_eq!(days[0]["metrics"]["spend"], 1.0);
        assert_eq!(
            days[0]["breakdown"]["api_keys"]["tok-a"]["metadata"]["team_id"],
            "team-1"
        );
        assert_eq!(days[1]["date"], "2026-03-02");
        assert_eq!(days[1]["metrics"]["api_requests"], 3);
        assert_eq!(days[1]["metrics"]["failed_requests"], 1);
        assert_eq!(
            days[1]["breakdown"]["models"]["gpt-4o"]["metrics"]["spend"],
            0.5
        );
        assert_eq!(
            days[1]["breakdown"]["models"]["gpt-4o-mini"]["metrics"]["api_requests"],
            2
        );
        assert_eq!(
            days[1]["breakdown"]["api_keys"]["tok-b"]["metadata"]["key_alias"],
            "alias-1"
        );
        assert_eq!(
            days[1]["breakdown"]["api_keys"]["master-hash"]["metrics"]["api_requests"],
            1
        );
        assert_eq!(v["metadata"]["total_spend"], 1.750000001);
        assert_eq!(v["metadata"]["total_api_requests"], 4);
    }

    #[test]
    fn served_with_dates_required_and_scoped_to_the_caller() {
        let api = Api::start(BudgetSettings::default());
        let alice = api.admin("POST", "/user/new", Some(json!({"user_id": "alice"})));
        let alice_key = alice["key"].as_str().unwrap().to_string();
        let bob = api.admin("POST", "/user/new", Some(json!({"user_id": "bob"})));
        let bob_token = hash_key(bob["key"].as_str().unwrap());
        let (status, _) = api.spend(vec![
            event("r1", &hash_key(&alice_key), "alice", 1_000_000_000),
            event("r2", &bob_token, "bob", 2_000_000_000),
        ]);
        assert_eq!(status, 200);
        let today = &format_iso8601_utc(crate::sidecar::admin_api::common::now_micros())[..10];
        let path = format!("/user/daily/activity?start_date={today}&end_date={today}");

        let all = api.admin("GET", &path, None);
        assert_eq!(all["metadata"]["total_spend"], 3.0);
        assert_eq!(all["results"][0]["date"], *today);
        let bob_only = api.admin("GET", &format!("{path}&api_key={bob_token}"), None);
        assert_eq!(bob_only["metadata"]["total_spend"], 2.0);
        let no_model = api.admin("GET", &format!("{path}&model=gpt-4o"), None);
        assert_eq!(no_model["results"], json!([]));

        // An internal user sees their own spend only, whatever user they ask for.
        let (status, mine) = api.call(
            "GET",
            &format!("{path}&user_id=bob"),
            &format!("Bearer {alice_key}"),
            None,
        );
        assert_eq!(status, 200, "{mine}");
        assert_eq!(mine["metadata"]["total_spend"], 1.0);

        let (status, v) = api.call(
            "GET",
            "/user/daily/activity?start_date=2026-01-01",
            &format!("Bearer {MASTER}"),
            None,
        );
        assert_eq!(status, 400);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Please provide start_date and end_date"));
        let (status, _) = api.call(
            "GET",
            "/user/daily/activity?start_date=2026-01-01T00:00:00Z&end_date=2026-01-02",
            &format!("Bearer {MASTER}"),
            None,
        );
        assert_eq!(status, 400);
    }
}
