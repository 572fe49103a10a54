//! The floor under tollgate.wasm. Plugin configuration (plain text, whitespace-separated):
//!
//! - `pass`: an HTTP context per request and nothing else (every callback continues);
//! - `buffer`: what any filter that reads the request body and the response's usage must do:
//!   read the request headers once, hold and read the whole request body, read the response
//!   headers once, hold and read the whole response body (a stream: read each chunk as it
//!   passes, never held);
//! - `calls=N` (with `buffer`): N more shared-data reads per request, to price one host call;
//! - `add=N` / `setmap=N` (with `buffer`): add N response headers, one host call each, or by
//!   writing the whole map back in one call (how to add headers cheaply).

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
                        _ => return false,
                    }
                }
            }
        }
        // One entry for the priced host calls to read.
        let _ = hostcalls::set_shared_data("floor", Some(b"0123456789abcdef"), None);
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
