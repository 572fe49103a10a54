//! Thin wrappers over `proxy_wasm::hostcalls` that turn every host error into a logged no-op
//! or an `Option`, so no host failure can panic the VM.
//!
//! Writes whose SDK wrapper has no error to return (proxy-wasm 0.2's `hostcalls.rs` maps every
//! status but `Ok` to a trap, which no code here can catch) drop their `Result` with `let _`:
//! a logging arm there could never run. The calls that can fail (`enqueue_shared_queue`,
//! `dispatch_http_call`, `increment_metric`, `set_shared_data`'s CAS) handle each error.

use crate::flow::{Host, SidecarCall};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};
use std::time::{Duration, UNIX_EPOCH};

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

pub fn now_micros() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

pub fn request_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub fn replace_request_body(current_size: usize, body: &[u8]) {
    let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, current_size, body);
}

pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

fn send_response(status: u16, extra: &[(&str, &str)], body: &[u8]) {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    let _ = hostcalls::send_http_response(u32::from(status), headers, Some(body));
}

/// A GET to the sidecar cluster; the token identifies the answer in `on_http_call_response`.
pub fn dispatch_get(
    cluster: &str,
    authority: &str,
    path: &str,
    authorization: &str,
    timeout: Duration,
) -> Result<u32, ()> {
    hostcalls::dispatch_http_call(
        cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            ("authorization", authorization),
        ],
        None,
        vec![],
        timeout,
    )
    .map_err(|e| {
        log(
            LogLevel::Error,
            &format!("tollgate: dispatch to {cluster} failed: {e:?}"),
        )
    })
}

pub fn call_response_status() -> Option<u16> {
    map_value(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.parse().ok())
}

pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

/// Envoy shared data as a `VersionedStore` (process-wide, all workers of one `vm_id`).
pub struct SharedData;

impl crate::shared_store::VersionedStore for SharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), cas)) => Some((v, cas.unwrap_or(0))),
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), crate::shared_store::StoreError> {
        use crate::shared_store::StoreError;
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(proxy_wasm::types::Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

pub fn set_response_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
}

pub fn add_response_header(name: &str, value: &str) {
    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
}

pub fn response_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub fn replace_response_body(current_size: usize, body: &[u8]) {
    let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, current_size, body);
}

pub fn register_queue(name: &str) -> Option<u32> {
    hostcalls::register_shared_queue(name).ok()
}

pub fn enqueue(queue: u32, value: &[u8]) -> bool {
    match hostcalls::enqueue_shared_queue(queue, Some(value)) {
        Ok(()) => true,
        Err(e) => {
            log(
                LogLevel::Error,
                &format!("tollgate: cannot enqueue on a shared queue: {e:?}"),
            );
            false
        }
    }
}

pub fn dequeue(queue: u32) -> Option<Vec<u8>> {
    hostcalls::dequeue_shared_queue(queue).ok().flatten()
}

pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
}

/// A POST of JSON to the sidecar cluster.
pub fn dispatch_post(
    cluster: &str,
    authority: &str,
    path: &str,
    authorization: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<u32, ()> {
    hostcalls::dispatch_http_call(
        cluster,
        vec![
            (":method", "POST"),
            (":path", path),
            (":authority", authority),
            ("authorization", authorization),
            ("content-type", "application/json"),
        ],
        Some(body),
        vec![],
        timeout,
    )
    .map_err(|e| {
        log(
            LogLevel::Error,
            &format!("tollgate: dispatch to {cluster} failed: {e:?}"),
        )
    })
}

/// All request headers in one host call (names are lowercase in Envoy).
pub fn request_headers() -> Vec<(String, String)> {
    map(MapType::HttpRequestHeaders)
}

/// A header map with values read as bytes: the SDK's `get_map` panics (and so kills the VM) on a
/// value that is not UTF-8, which any client or upstream can send. Such bytes become U+FFFD.
fn map(map_type: MapType) -> Vec<(String, String)> {
    hostcalls::get_map_bytes(map_type)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                String::from_utf8(v).unwrap_or_else(|e| lossy(e.as_bytes())),
            )
        })
        .collect()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One header value, read as bytes (see [`map`]).
fn map_value(map_type: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map_type, name)
        .ok()
        .flatten()
        .map(|v| String::from_utf8(v).unwrap_or_else(|e| lossy(e.as_bytes())))
}

/// All response headers in one host call.
pub fn response_headers() -> Vec<(String, String)> {
    map(MapType::HttpResponseHeaders)
}

pub fn response_header_value(name: &str) -> Option<String> {
    map_value(MapType::HttpResponseHeaders, name)
}

/// Replaces the whole response header map in one host call.
pub fn set_response_headers(headers: &[(String, String)]) {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _ = hostcalls::set_map(MapType::HttpResponseHeaders, pairs);
}

/// Defines the filter's metrics (once per VM, when the plugin is configured). The SDK traps
/// where Envoy refuses one, so `Err` never comes back; a missing id is simply not recorded.
pub fn define_metrics() -> crate::flow::MetricIds {
    use crate::metrics::Kind;
    use proxy_wasm::types::MetricType;
    let mut ids = [None; crate::metrics::METRIC_COUNT];
    if cfg!(feature = "bench-no-filter-metrics") {
        return ids;
    }
    for metric in crate::metrics::Metric::all() {
        let name = metric.name();
        let kind = match metric.kind() {
            Kind::Counter => MetricType::Counter,
            Kind::Histogram => MetricType::Histogram,
        };
        if let Ok(id) = hostcalls::define_metric(kind, &name) {
            if let Some(slot) = ids.get_mut(metric.index()) {
                *slot = Some(id);
            }
        }
    }
    ids
}

/// The request path's host calls, over proxy-wasm, with the VM's counters.
pub struct ProxyHost<'a> {
    pub metric_ids: &'a crate::flow::MetricIds,
}

impl crate::shared_store::VersionedStore for ProxyHost<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        SharedData.get(key)
    }

    fn set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), crate::shared_store::StoreError> {
        SharedData.set(key, value, cas)
    }
}

impl Host for ProxyHost<'_> {
    fn now_micros(&self) -> i64 {
        now_micros()
    }

    fn log_warn(&self, message: &str) {
        log(LogLevel::Warn, message);
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        request_headers()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        set_request_header(name, value);
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        request_body(size)
    }

    fn replace_request_body(&self, current_size: usize, body: &[u8]) {
        replace_request_body(current_size, body);
    }

    fn response_headers(&self) -> Vec<(String, String)> {
        response_headers()
    }

    fn response_header(&self, name: &str) -> Option<String> {
        response_header_value(name)
    }

    fn set_response_header(&self, name: &str, value: Option<&str>) {
        set_response_header(name, value);
    }

    fn add_response_header(&self, name: &str, value: &str) {
        add_response_header(name, value);
    }

    fn set_response_headers(&self, headers: &[(String, String)]) {
        set_response_headers(headers);
    }

    fn response_body(&self, size: usize) -> Vec<u8> {
        response_body(size)
    }

    fn replace_response_body(&self, current_size: usize, body: &[u8]) {
        replace_response_body(current_size, body);
    }

    fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        send_response(status, headers, body);
    }

    fn dispatch_get(&self, call: &SidecarCall<'_>) -> Option<u32> {
        dispatch_get(
            call.cluster,
            call.authority,
            call.path,
            call.authorization,
            call.timeout,
        )
        .ok()
    }

    fn dispatch_post(&self, call: &SidecarCall<'_>, body: &[u8]) -> Option<u32> {
        dispatch_post(
            call.cluster,
            call.authority,
            call.path,
            call.authorization,
            body,
            call.timeout,
        )
        .ok()
    }

    fn call_response_status(&self) -> Option<u16> {
        call_response_status()
    }

    fn call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        call_response_body(size)
    }

    fn enqueue(&self, queue: u32, value: &[u8]) -> bool {
        enqueue(queue, value)
    }

    fn count(&self, metric: crate::metrics::Metric, n: u64) {
        count(self.metric_ids, metric, n);
    }

    fn record(&self, metric: crate::metrics::Metric, value: u64) {
        let Some(Some(id)) = self.metric_ids.get(metric.index()) else {
            return;
        };
        if let Err(e) = hostcalls::record_metric(*id, value) {
            log(
                LogLevel::Warn,
                &format!("tollgate: metric record failed: {e:?}"),
            );
        }
    }
}

/// Adds `n` to one of the VM's counters (also the root context's, for its own traffic).
pub fn count(ids: &crate::flow::MetricIds, metric: crate::metrics::Metric, n: u64) {
    let Some(Some(id)) = ids.get(metric.index()) else {
        return;
    };
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    if let Err(e) = hostcalls::increment_metric(*id, n) {
        log(
            LogLevel::Warn,
            &format!("tollgate: metric increment failed: {e:?}"),
        );
    }
}
