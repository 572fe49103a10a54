//! A host for unit tests: in-memory shared data and spend queue, scripted headers and bodies,
//! and a log of every host call made (so tests can count them).

use super::{Host, Shared, SidecarCall};
use crate::metrics::Metric;
use crate::plugin_config::{BudgetSettings, Deployment, PluginConfig};
use crate::provider_keys::ProviderKeys;
use crate::shared_store::{MemoryStore, StoreError, VersionedStore};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A local reply the flow sent.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The queue id tests give the lease queue (the spend queue is 1).
pub const LEASE_QUEUE_ID: u32 = 2;

/// A plugin configuration for driving whole requests on this host (the flow's tests, the
/// request profile): the sidecar's settings filled in, `deployments` served under a proxy-wide
/// budget of `proxy_max_budget` dollars.
pub fn plugin_config(deployments: Vec<Deployment>, proxy_max_budget: f64) -> PluginConfig {
    PluginConfig {
        sidecar_cluster: "tollgate_sidecar".into(),
        sidecar_authority: "sidecar".into(),
        internal_token: "internal".into(),
        sidecar_timeout_ms: 1000,
        negative_cache_seconds: 60,
        max_request_body_bytes: 1 << 20,
        rate_limit_window_seconds: 60,
        deployments,
        budgets: BudgetSettings {
            proxy_max_budget: Some(proxy_max_budget),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A host at `now_micros` and the flow's state on `config` as a configured worker has it
/// (spend queue 1, provider keys loaded).
pub fn configured(config: PluginConfig, now_micros: i64) -> (MockHost, Shared) {
    let keys = ProviderKeys::of(&config.deployments);
    let shared = Shared::new(config, Some(1), [7; 16]);
    *shared.provider_keys.borrow_mut() = Some(Rc::new(keys));
    let host = MockHost::default();
    host.now.set(now_micros);
    (host, shared)
}

#[derive(Default)]
pub struct MockHost {
    pub store: MemoryStore,
    pub now: Cell<i64>,
    /// Every host call, by name, in order.
    pub calls: RefCell<Vec<&'static str>>,
    pub request_headers: RefCell<Vec<(String, String)>>,
    pub request_body: RefCell<Vec<u8>>,
    pub response_headers: RefCell<Vec<(String, String)>>,
    /// The response chunk being delivered (replaced chunks are written back here).
    pub response_chunk: RefCell<Vec<u8>>,
    pub reply: RefCell<Option<Reply>>,
    /// Paths dispatched to the sidecar; a call's token is its index plus one.
    pub dispatched: RefCell<Vec<String>>,
    /// Bodies POSTed to the sidecar, by path, in order.
    pub posted: RefCell<Vec<(String, Vec<u8>)>>,
    /// `dispatch` fails (the sidecar cluster cannot be reached).
    pub dispatch_fails: Cell<bool>,
    /// The sidecar answer being delivered: status and body.
    pub call_answer: RefCell<Option<(u16, Vec<u8>)>>,
    pub queue: RefCell<Vec<Vec<u8>>>,
    /// Items enqueued on [`LEASE_QUEUE_ID`].
    pub lease_queue: RefCell<Vec<Vec<u8>>>,
    /// Counter increments, in order.
    pub counted: RefCell<Vec<(Metric, u64)>>,
    /// Histogram values, in order.
    pub recorded: RefCell<Vec<(Metric, u64)>>,
}

impl MockHost {
    fn log_call(&self, name: &'static str) {
        self.calls.borrow_mut().push(name);
    }

    pub fn call_count(&self) -> usize {
        self.calls.borrow().len()
    }

    pub fn count_of(&self, name: &str) -> usize {
        self.calls.borrow().iter().filter(|c| **c == name).count()
    }

    pub fn clear_calls(&self) {
        self.calls.borrow_mut().clear();
    }

    pub fn request_header(&self, name: &str) -> Option<String> {
        self.request_headers
            .borrow()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn response_header_value(&self, name: &str) -> Option<String> {
        self.response_headers
            .borrow()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn set_in(map: &RefCell<Vec<(String, String)>>, name: &str, value: Option<&str>) {
    let mut map = map.borrow_mut();
    map.retain(|(k, _)| k != name);
    if let Some(v) = value {
        map.push((name.to_string(), v.to_string()));
    }
}

impl VersionedStore for MockHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.log_call("shared_get");
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.log_call("shared_set");
        self.store.set(key, value, cas)
    }
}

impl Host for MockHost {
    fn now_micros(&self) -> i64 {
        self.log_call("now");
        self.now.get()
    }

    fn log_warn(&self, _message: &str) {
        self.log_call("log");
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        self.log_call("request_headers");
        self.request_headers.borrow().clone()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        self.log_call("set_request_header");
        set_in(&self.request_headers, name, value);
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        self.log_call("request_body");
        let body = self.request_body.borrow();
        body[..size.min(body.len())].to_vec()
    }

    fn replace_request_body(&self, _current_size: usize, body: &[u8]) {
        self.log_call("replace_request_body");
        *self.request_body.borrow_mut() = body.to_vec();
    }

    fn response_headers(&self) -> Vec<(String, String)> {
        self.log_call("response_headers");
        self.response_headers.borrow().clone()
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.log_call("response_header");
        self.response_header_value(name)
    }

    fn set_response_header(&self, name: &str, value: Option<&str>) {
        self.log_call("set_response_header");
        set_in(&self.response_headers, name, value);
    }

    fn add_response_header(&self, name: &str, value: &str) {
        self.log_call("add_response_header");
        self.response_headers
            .borrow_mut()
            .push((name.to_string(), value.to_string()));
    }

    fn set_response_headers(&self, headers: &[(String, String)]) {
        self.log_call("set_response_headers");
        *self.response_headers.borrow_mut() = headers.to_vec();
    }

    fn response_body(&self, _size: usize) -> Vec<u8> {
        self.log_call("response_body");
        self.response_chunk.borrow().clone()
    }

    fn replace_response_body(&self, _current_size: usize, body: &[u8]) {
        self.log_call("replace_response_body");
        *self.response_chunk.borrow_mut() = body.to_vec();
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.log_call("send_response");
        let mut all = vec![("content-type".to_string(), "application/json".to_string())];
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        *self.reply.borrow_mut() = Some(Reply {
            status,
            headers: all,
            body: body.to_vec(),
        });
    }

    fn dispatch_get(&self, call: &SidecarCall<'_>) -> Option<u32> {
        self.log_call("dispatch");
        if self.dispatch_fails.get() {
            return None;
        }
        let mut dispatched = self.dispatched.borrow_mut();
        dispatched.push(call.path.to_string());
        u32::try_from(dispatched.len()).ok()
    }

    fn dispatch_post(&self, call: &SidecarCall<'_>, body: &[u8]) -> Option<u32> {
        self.log_call("dispatch_post");
        if self.dispatch_fails.get() {
            return None;
        }
        self.posted
            .borrow_mut()
            .push((call.path.to_string(), body.to_vec()));
        let mut dispatched = self.dispatched.borrow_mut();
        dispatched.push(call.path.to_string());
        u32::try_from(dispatched.len()).ok()
    }

    fn call_response_status(&self) -> Option<u16> {
        self.log_call("call_response_status");
        self.call_answer.borrow().as_ref().map(|(s, _)| *s)
    }

    fn call_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        self.log_call("call_response_body");
        self.call_answer.borrow().as_ref().map(|(_, b)| b.clone())
    }

    fn enqueue(&self, queue: u32, value: &[u8]) -> bool {
        self.log_call("enqueue");
        if queue == LEASE_QUEUE_ID {
            self.lease_queue.borrow_mut().push(value.to_vec());
        } else {
            self.queue.borrow_mut().push(value.to_vec());
        }
        true
    }

    fn count(&self, metric: Metric, n: u64) {
        self.log_call("count");
        self.counted.borrow_mut().push((metric, n));
    }

    fn record(&self, metric: Metric, value: u64) {
        self.log_call("record");
        self.recorded.borrow_mut().push((metric, value));
    }
}
