//! The proxy-wasm adapter: moves bytes between Envoy and the pure core. Every host call goes
//! through `proxy_wasm::hostcalls` (see `host`), whose errors are handled; the SDK's trait
//! helpers unwrap and would panic the VM.

mod host;
mod http;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::TollgateRoot::default()) });
}}
