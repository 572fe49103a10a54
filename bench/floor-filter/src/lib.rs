//! The floor under tollgate.wasm. Plugin configuration (plain text, whitespace-separated):
//!
//! - `pass`: an HTTP context per request and nothing else (every callback continues);
//! - `buffer`: what any filter that reads the request body and the response's usage must do:
//!   read the request headers once, hold and read the whole request body, read the response
//!   headers once, hold and read the whole response body (a stream: read each chunk as it
//!   passes, never held);
//! - `calls=N` (with `buffer`): N more shared-data reads per request, to price one host call;
//! - `add=N` / `setmap=N` (with `buffer`): add N response headers, one host call each, or by
//!   writing the whole map back in one call (how to add headers cheaply);
//! - `sets=N`, `hdrs=N`, `counts=N`, `clock=N`, `enqueue=N` (with `buffer`): N more of one host
//!   call kind per request, to price it: a shared-data write (compare-and-set on the value just
//!   read), a request-header replace, a counter increment, a clock read, a shared-queue enqueue
//!   (Envoy then calls the root's `on_queue_ready`; the root dequeues all on a 1 s tick, as
//!   tollgate.wasm does).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::Cell;
use std::rc::Rc;

#[derive(Clone, Copy, Default)]
struct Mode {
    buffer: bool,
    calls: u32,
    add: u32,
    setmap: u32,
    sets: u32,
    hdrs: u32,
    counts: u32,
    clock: u32,
    enqueue: u32,
    counter: u32,
    queue: u32,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot::default()) });
}}

#[derive(Default)]
struct FloorRoot {
    mode: Rc<Cell<Mode>>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut mode = Mode::default();
        for word in text.split_whitespace() {
            match word {
                "pass" => mode.buffer = false,
                "buffer" => mode.buffer = true,
                w => {
                    let Some((name, n)) = w.split_once('=') else {
                        return false;
                    };
                    let Ok(n) = n.parse() else { return false };
                    match name {
                        "calls" => mode.calls = n,
                        "add" => mode.add = n,
                        "setmap" => mode.setmap = n,
                        "sets" => mode.sets = n,
                        "hdrs" => mode.hdrs = n,
                        "counts" => mode.counts = n,
                        "clock" => mode.clock = n,
                        "enqueue" => mode.enqueue = n,
                        _ => return false,
                    }
                }
            }
        }
        // One entry for the priced host calls to read.
        let _ = hostcalls::set_shared_data("floor", Some(b"0123456789abcdef"), None);
        if mode.counts > 0 {
            mode.counter =
                hostcalls::define_metric(proxy_wasm::types::MetricType::Counter, "floor_calls")
                    .unwrap_or(0);
        }
        if mode.enqueue > 0 {
            mode.queue = hostcalls::register_shared_queue("floor").unwrap_or(0);
            let _ = hostcalls::set_tick_period(std::time::Duration::from_secs(1));
        }
        self.mode.set(mode);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp {
            mode: self.mode.get(),
            streamed: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn on_tick(&mut self) {
        let queue = self.mode.get().queue;
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue) {}
    }
}

struct FloorHttp {
    mode: Mode,
    streamed: bool,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        if !self.mode.buffer {
            return Action::Continue;
        }
        let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "content-length");
        for _ in 0..self.mode.calls {
            let _ = hostcalls::get_shared_data("floor");
        }
        for _ in 0..self.mode.sets {
            if let Ok((Some(value), cas)) = hostcalls::get_shared_data("floor") {
                let _ = hostcalls::set_shared_data("floor", Some(&value), cas);
            }
        }
        for i in 0..self.mode.hdrs {
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "x-floor",
                Some(if i % 2 == 0 { "12.5" } else { "13.5" }),
            );
        }
        for _ in 0..self.mode.counts {
            let _ = hostcalls::increment_metric(self.mode.counter, 1);
        }
        for _ in 0..self.mode.clock {
            let _ = hostcalls::get_current_time();
        }
        for _ in 0..self.mode.enqueue {
            let _ = hostcalls::enqueue_shared_queue(self.mode.queue, Some(b"0123456789abcdef"));
        }
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.mode.buffer {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        if !self.mode.buffer {
            return Action::Continue;
        }
        let mut headers =
            hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
        for i in 0..self.mode.add {
            let _ = hostcalls::add_map_value(
                MapType::HttpResponseHeaders,
                &format!("x-floor-{i}"),
                "12.5",
            );
        }
        if self.mode.setmap > 0 {
            for i in 0..self.mode.setmap {
                headers.push((format!("x-floor-{i}"), b"12.5".to_vec()));
            }
            let pairs: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            let _ = hostcalls::set_map_bytes(MapType::HttpResponseHeaders, pairs);
        }
        self.streamed = headers
            .iter()
            .any(|(name, value)| name == "content-type" && value.starts_with(b"text/event-stream"));
        if end_of_stream || self.streamed {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.mode.buffer {
            return Action::Continue;
        }
        if !end_of_stream && !self.streamed {
            return Action::Pause;
        }
        let _ = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size);
        Action::Continue
    }
}
