#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The sidecar dies (`kill -9`) between calls, with Envoy running on (issue 3, item 3): nothing
//! it had acknowledged is lost, Envoy keeps admitting keys it knows and buffers their spend,
//! keys it has never seen are refused with 503 (fail closed), and when the sidecar is back the
//! buffered spend arrives exactly once.
//!
//! Runs the split topology a user runs with their own Envoy: `tollgate serve --xds-dir` plus
//! Envoy from `tollgate render --format envoy --xds-dir`.

mod common;

use common::{chat_body, poll_until, Resp, Stack, SETTLE_TIMEOUT};
use serde_json::json;
use std::time::Duration;

const CONFIG: &str = r#"
model_list:
  - model_name: priced
    litellm_params:
      model: openai/priced-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
general_settings:
  master_key: @MASTER_KEY@
"#;

fn chat(s: &Stack, key: &str) -> Resp {
    s.post("/v1/chat/completions", Some(key), &chat_body("priced"))
}

/// The call's cost from `x-litellm-response-cost`, in nano-dollars.
fn cost_nanos(r: &Resp) -> i64 {
    let usd: f64 = r
        .header("x-litellm-response-cost")
        .unwrap_or_else(|| panic!("no cost header: {r:?}"))
        .parse()
        .expect("cost is a number");
    (usd * 1e9).round() as i64
}

fn spend_nanos(s: &Stack, key: &str) -> i64 {
    let spend = s.key_info(key)["spend"]
        .as_f64()
        .expect("spend is a number");
    (spend * 1e9).round() as i64
}

#[test]
fn sidecar_kill_9_between_calls_loses_nothing() {
    let mut s = Stack::start_split(CONFIG);
    let (known, _) = s.generate_key(json!({"max_budget": 100.0}));
    let (unseen, _) = s.generate_key(json!({"max_budget": 100.0}));

    let first = chat(&s, &known);
    first.assert_status(200);
    let unit = cost_nanos(&first);
    assert!(unit > 0, "the priced model costs something");
    poll_until(
        "the first call's spend reaches the sidecar",
        SETTLE_TIMEOUT,
        || match spend_nanos(&s, &known) {
            n if n == unit => Ok(()),
            n => Err(format!("spend {n}")),
        },
    );

    // Acknowledged the instant before the kill: it must survive it.
    let (acknowledged, _) = s.generate_key(json!({}));
    s.kill_sidecar();

    // Envoy keeps serving the key it knows, and counts its spend locally.
    for i in 0..5 {
        let r = chat(&s, &known);
        assert_eq!(r.status, 200, "call {i} with the sidecar down: {r:?}");
        assert_eq!(cost_nanos(&r), unit);
        let key_spend: f64 = r
            .header("x-litellm-key-spend")
            .expect("key spend header")
            .parse()
            .unwrap();
        assert_eq!(
            (key_spend * 1e9).round() as i64,
            unit * (i + 2),
            "spend is visible to the next call at once, sidecar or not"
        );
    }
    // A key Envoy has never seen cannot be checked: refused, not waved through.
    let refused = chat(&s, &unseen);
    refused.assert_error(503, "internal_server_error");
    // The admin API is the sidecar: unavailable, and Envoy says so.
    assert_eq!(s.get("/key/info", Some(common::MASTER_KEY)).status, 503);

    s.restart_sidecar();

    // The buffered events arrive, each once: 1 + 5 calls.
    poll_until(
        "buffered spend reaches the sidecar",
        SETTLE_TIMEOUT,
        || match spend_nanos(&s, &known) {
            n if n == 6 * unit => Ok(()),
            n => Err(format!("spend {n}, want {}", 6 * unit)),
        },
    );
    let logs = s.spend_logs(&known);
    assert_eq!(logs.len(), 6, "each call logged once: {logs:?}");
    // Wait two more flush periods: no event is applied twice.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(spend_nanos(&s, &known), 6 * unit);

    // The refusal was not remembered as "invalid key", and the key created just before the
    // kill is in the store.
    chat(&s, &unseen).assert_status(200);
    chat(&s, &acknowledged).assert_status(200);
}
