//! The request path as a state machine over a [`Host`]: every host call an HTTP request makes
//! (headers, bodies, local replies, sidecar lookups, shared data, the spend queue, the clock)
//! goes through the trait, so whole requests run on the host against a mock
//! (`flow::tests`). The proxy-wasm adapter (`filter`) implements it and maps each [`Step`] to an
//! `Action`.

pub mod key_cache;
mod request;

/// A host for unit tests and the request profile (`examples/request_profile.rs`).
#[cfg(not(target_arch = "wasm32"))]
pub mod mock;
#[cfg(test)]
mod tests;

pub use request::{Flow, Step};

use crate::errors::ApiError;
use crate::metrics::Metric;
use crate::plugin_config::PluginConfig;
use crate::provider_keys::ProviderKeys;
use crate::shared_store::VersionedStore;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// The host calls of the request path. Shared data is the [`VersionedStore`] half (one host
/// call per `get` or `set`). Every method handles its own host errors (logged, then a no-op or
/// `None`): nothing here can fail the VM.
pub trait Host: VersionedStore {
    fn now_micros(&self) -> i64;
    fn log_warn(&self, message: &str);
    /// All request headers (names lowercase), one host call.
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Sets (`Some`) or removes (`None`) one request header.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    fn request_body(&self, size: usize) -> Vec<u8>;
    fn replace_request_body(&self, current_size: usize, body: &[u8]);
    /// All response headers, one host call.
    fn response_headers(&self) -> Vec<(String, String)>;
    fn response_header(&self, name: &str) -> Option<String>;
    /// Sets (`Some`: every value of `name` replaced by this one) or removes (`None`) one
    /// response header.
    fn set_response_header(&self, name: &str, value: Option<&str>);
    /// Adds a value of `name` (kept beside any other): for a name the response lacks, cheaper
    /// in Envoy than a replace, which looks the name up first.
    fn add_response_header(&self, name: &str, value: &str);
    /// Replaces the whole response header map, one host call.
    fn set_response_headers(&self, headers: &[(String, String)]);
    fn response_body(&self, size: usize) -> Vec<u8>;
    fn replace_response_body(&self, current_size: usize, body: &[u8]);
    /// Answers locally (`content-type: application/json` plus `headers`).
    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]);
    /// A GET to the sidecar; the token names its answer (`None`: it could not be sent).
    fn dispatch_get(&self, call: &SidecarCall<'_>) -> Option<u32>;
    /// A POST of a JSON `body` to the sidecar, as [`Host::dispatch_get`].
    fn dispatch_post(&self, call: &SidecarCall<'_>, body: &[u8]) -> Option<u32>;
    /// The status of the sidecar answer being delivered.
    fn call_response_status(&self) -> Option<u16>;
    fn call_response_body(&self, size: usize) -> Option<Vec<u8>>;
    fn enqueue(&self, queue: u32, value: &[u8]) -> bool;
    /// Adds `n` to one of the filter's counters (one host call).
    fn count(&self, metric: Metric, n: u64);
    /// Records `value` in one of the filter's histograms (one host call).
    fn record(&self, metric: Metric, value: u64);
}

/// A request to the sidecar's internal API.
pub struct SidecarCall<'a> {
    pub cluster: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub authorization: &'a str,
    pub timeout: Duration,
}

/// What every request of a worker shares (one per root context).
pub struct Shared {
    pub config: Rc<PluginConfig>,
    /// Spreads requests over the deployments of one model name.
    pub pick: Cell<usize>,
    pub spend_queue: Option<u32>,
    /// Fleet mode: the queue of slices due for renewal ([`crate::contract::LEASE_QUEUE`]).
    pub lease_queue: Option<u32>,
    /// Fleet mode: this Envoy process's id ([`crate::contract::ENVOY_ID_KEY`]).
    pub envoy_id: Option<String>,
    /// Key records this worker has decoded.
    pub decoded: key_cache::Decoded,
    /// This instance's random id and its call counter: spend event ids
    /// ([`crate::records::event_id`]).
    pub instance_id: [u8; 16],
    pub calls: Cell<u64>,
    /// Spend events of this worker not yet on the shared queue, comma-joined (a queue item
    /// holds up to [`SPEND_EVENTS_PER_ITEM`] of them; [`contract::spend_batch_body`] joins
    /// items the same way), and how many. Flushed when full and on every root tick.
    spend_buffer: RefCell<Vec<u8>>,
    spend_buffered: Cell<u64>,
    /// False once the root context is done (a reload replaced it): calls still in flight then
    /// queue their events at once, since no tick will flush this buffer again.
    spend_buffering: Cell<bool>,
    /// The provider keys from the sidecar (VM memory only); `None` until the first answer, and
    /// LLM calls are refused until then.
    pub provider_keys: RefCell<Option<Rc<ProviderKeys>>>,
    /// The filter's metrics as this VM defined them, by [`Metric::index`] (`None`: not defined).
    pub metric_ids: MetricIds,
}

/// Most spend events one worker holds before putting them on the shared queue. A VM that dies
/// (a trap) loses the ones it holds: at most this many, or one tick (1 s) of its calls
/// (SECURITY.md, "Failure behaviour").
pub const SPEND_EVENTS_PER_ITEM: u64 = 32;

pub type MetricIds = [Option<u32>; crate::metrics::METRIC_COUNT];

impl Shared {
    pub fn new(config: PluginConfig, spend_queue: Option<u32>, instance_id: [u8; 16]) -> Self {
        Shared {
            config: Rc::new(config),
            pick: Cell::new(0),
            spend_queue,
            lease_queue: None,
            envoy_id: None,
            decoded: key_cache::Decoded::default(),
            instance_id,
            calls: Cell::new(0),
            spend_buffer: RefCell::new(Vec::new()),
            spend_buffered: Cell::new(0),
            spend_buffering: Cell::new(true),
            provider_keys: RefCell::new(None),
            metric_ids: [None; crate::metrics::METRIC_COUNT],
        }
    }

    /// Keeps one settled call's spend event (JSON) for the shared queue: one enqueue per
    /// [`SPEND_EVENTS_PER_ITEM`] events instead of one per call (each enqueue also makes Envoy
    /// call the queue's root context). The root flushes the rest on every tick.
    pub fn queue_spend_event(&self, host: &impl Host, event: &[u8]) {
        {
            let mut buffer = self.spend_buffer.borrow_mut();
            if !buffer.is_empty() {
                buffer.push(b',');
            }
            buffer.extend_from_slice(event);
        }
        self.spend_buffered.set(self.spend_buffered.get() + 1);
        if self.spend_buffered.get() >= SPEND_EVENTS_PER_ITEM || !self.spend_buffering.get() {
            self.flush_spend_events(host);
        }
    }

    /// The root context is going away: queues what is buffered, and every later event at once.
    pub fn stop_buffering_spend_events(&self, host: &impl Host) {
        self.spend_buffering.set(false);
        self.flush_spend_events(host);
    }

    /// Puts the buffered spend events on the shared queue as one item (a failed enqueue loses
    /// them, as a failed per-event enqueue did: it only fails if the queue is gone).
    pub fn flush_spend_events(&self, host: &impl Host) {
        let n = self.spend_buffered.replace(0);
        let item = std::mem::take(&mut *self.spend_buffer.borrow_mut());
        if n == 0 {
            return;
        }
        if let Some(queue) = self.spend_queue {
            if host.enqueue(queue, &item) {
                host.count(Metric::SpendEventsQueued, n);
            }
        }
    }

    /// A new spend event id, unique per Envoy process and call.
    pub fn next_event_id(&self) -> String {
        let seq = self.calls.get();
        self.calls.set(seq.wrapping_add(1));
        crate::records::event_id(&self.instance_id, seq)
    }
}

/// Sends an error in LiteLLM's envelope.
pub fn send_error(host: &impl Host, error: &ApiError) {
    let extra: Vec<(&str, &str)> = error
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    host.send_response(error.status, &extra, &error.body());
}
