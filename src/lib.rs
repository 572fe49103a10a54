//! Tollgate: LiteLLM-compatible virtual keys, budgets and limits inside Envoy.
//!
//! The modules at this level are the pure core: plain functions over plain data, no host calls,
//! shared by the proxy-wasm filter (`filter`, wasm32 only) and the sidecar (`sidecar`, host only).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admission;
pub mod budgets;
pub mod contract;
pub mod cost;
pub mod credential;
pub mod entry;
pub mod errors;
pub mod flow;
pub mod key_format;
pub mod lease_tick;
pub mod leases;
pub mod metrics;
pub mod model_access;
pub mod model_list;
pub mod plugin_config;
pub mod provider_keys;
pub mod rate_leases;
pub mod rate_limits;
pub mod records;
pub mod request_body;
pub mod response_headers;
pub mod routes;
pub mod shared_store;
pub mod time;
pub mod token_estimate;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(not(target_arch = "wasm32"))]
pub mod sidecar;
