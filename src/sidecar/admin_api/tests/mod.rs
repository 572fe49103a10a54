//! The admin API over a real local port (in-process router, in-memory store), called with
//! ureq as a client would.

mod budgets;
mod changes;
mod customers;
mod handlers;
mod keys;
mod leases;
mod metrics;
mod models;
mod orgs;
mod rights;
mod spend;
mod teams;
mod users;

use super::common::now_micros;
use super::{router, AdminSettings, AdminState, MAX_SPEND_BATCH_BYTES};
use crate::contract::INVALIDATE_HEADER;
use crate::plugin_config::{BudgetSettings, Deployment, PluginConfig};
use crate::records::{CustomerLookup, KeyLookup, KeyRecord, SpendBatch, SpendEvent};
use crate::sidecar::store::{ResetClock, Store};
use serde_json::{json, Value};
use std::sync::Arc;

pub const MASTER: &str = "sk-master-test-key";

/// One answer: status, JSON body, `x-tollgate-invalidate`.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub invalidate: Option<String>,
}

impl Answer {
    /// The invalidated entries, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .invalidate
            .as_deref()
            .map(|h| h.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The admin API on an ephemeral port, with an in-memory store.
pub struct Api {
    pub base: String,
    pub internal: String,
    _rt: tokio::runtime::Runtime,
}

pub fn models() -> PluginConfig {
    let dep = |name: &str, groups: &[&str]| Deployment {
        model_name: name.into(),
        id: format!("{name}-id"),
        provider: "openai".into(),
        backend_model: name.into(),
        access_groups: groups.iter().map(|s| s.to_string()).collect(),
        api_key: Some(format!("sk-provider-{name}")),
        ..Default::default()
    };
    PluginConfig {
        deployments: vec![
            dep("gpt-a", &["beta"]),
            dep("gpt-b", &[]),
            dep("gpt-c", &[]),
        ],
        ..Default::default()
    }
}

impl Api {
    pub fn start(budgets: BudgetSettings) -> Api {
        Api::start_with(budgets, None)
    }

    pub fn start_with(budgets: BudgetSettings, default_end_user_budget: Option<&str>) -> Api {
        Api::start_tweaked(budgets, default_end_user_budget, |_| {})
    }

    /// [`Api::start_with`], with `tweak` applied to the settings.
    pub fn start_tweaked(
        budgets: BudgetSettings,
        default_end_user_budget: Option<&str>,
        tweak: impl FnOnce(&mut AdminSettings),
    ) -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = test_state(budgets, default_end_user_budget, tweak);
        let internal = state.settings().internal_token.clone();
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

    pub fn send(&self, method: &str, path: &str, auth: &str, body: Option<String>) -> Answer {
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
        let invalidate = resp.header(INVALIDATE_HEADER).map(str::to_string);
        let text = resp.into_string().unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            invalidate,
        }
    }

    pub fn call(&self, method: &str, path: &str, auth: &str, body: Option<String>) -> (u16, Value) {
        let a = self.send(method, path, auth, body);
        (a.status, a.body)
    }

    /// A call with the master key.
    pub fn master(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.send(
            method,
            path,
            &format!("Bearer {MASTER}"),
            body.map(|b| b.to_string()),
        )
    }

    /// A call with the master key that must succeed.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let a = self.master(method, path, body);
        assert_eq!(a.status, 200, "{method} {path}: {}", a.body);
        a.body
    }

    /// A call with a virtual key.
    pub fn with_key(&self, raw: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.send(
            method,
            path,
            &format!("Bearer {raw}"),
            body.map(|b| b.to_string()),
        )
    }

    pub fn spend(&self, events: Vec<SpendEvent>) -> (u16, Value) {
        let body = serde_json::to_string(&SpendBatch { events }).unwrap();
        self.call(
            "POST",
            "/tollgate/internal/v1/spend",
            &self.internal,
            Some(body),
        )
    }

    pub fn lookup_any(&self, token: &str) -> KeyLookup {
        let (status, v) = self.call(
            "GET",
            &format!("/tollgate/internal/v1/keys/{token}"),
            &self.internal,
            None,
        );
        assert_eq!(status, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    pub fn lookup(&self, token: &str) -> KeyRecord {
        match self.lookup_any(token) {
            KeyLookup::Found { key, .. } => *key,
            KeyLookup::NotFound => panic!("key {token} not found"),
        }
    }

    pub fn customer(&self, id: &str) -> CustomerLookup {
        let (status, v) = self.call(
            "GET",
            &format!("/tollgate/internal/v1/customers/{id}"),
            &self.internal,
            None,
        );
        assert_eq!(status, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    /// A new key (master key); returns (raw, token).
    pub fn new_key(&self, body: Value) -> (String, String) {
        let k = self.admin("POST", "/key/generate", Some(body));
        (
            k["key"].as_str().unwrap().to_string(),
            k["token"].as_str().unwrap().to_string(),
        )
    }
}

/// The admin API's state with an in-memory store, [`models`] and `tweak` applied.
pub fn test_state(
    budgets: BudgetSettings,
    default_end_user_budget: Option<&str>,
    tweak: impl FnOnce(&mut AdminSettings),
) -> Arc<AdminState> {
    let store = Store::open(std::path::Path::new(":memory:"))
        .unwrap()
        .with_reset_clock(ResetClock::from_budget_settings(&budgets))
        .with_default_end_user_budget(default_end_user_budget.map(str::to_string));
    store
        .configure_proxy_budget(budgets.proxy_budget_duration.as_deref(), now_micros())
        .unwrap();
    let internal = crate::sidecar::render::internal_token(MASTER);
    let mut settings = AdminSettings {
        master_key: MASTER.into(),
        internal_token: internal.clone(),
        max_body_bytes: 1024 * 1024,
        max_spend_batch_bytes: MAX_SPEND_BATCH_BYTES,
        budgets,
        plugin: models(),
        default_end_user_budget_id: default_end_user_budget.map(str::to_string),
        ..Default::default()
    };
    tweak(&mut settings);
    Arc::new(AdminState::new(store, settings))
}

/// One call through the router, without a port (`tower::ServiceExt::oneshot`).
pub fn oneshot(
    state: &Arc<AdminState>,
    method: &str,
    path: &str,
    auth: &str,
    body: Option<Value>,
) -> Answer {
    use tower::ServiceExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    rt.block_on(async {
        let resp = router(Arc::clone(state)).oneshot(request).await.unwrap();
        let status = resp.status().as_u16();
        let invalidate = resp
            .headers()
            .get(INVALIDATE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            invalidate,
        }
    })
}

pub fn event(id: &str, token: &str, user: &str, nanos: i64) -> SpendEvent {
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

/// The message of an error envelope.
pub fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn unknown_paths_are_404_and_llm_paths_503() {
    let api = Api::start(BudgetSettings::default());
    assert_eq!(api.master("GET", "/nope", None).status, 404);
    let a = api.master("POST", "/v1/chat/completions", Some(json!({})));
    assert_eq!(a.status, 503);
}
