#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! 256 simultaneous calls against a budget, an rpm limit and a parallel limit, on Envoy with 2
//! and 4 worker threads (issue 7, item 3): the admitted count is exact, and the spend the
//! sidecar records (read from `/key/info` after the spend flush) is exact to the nano-dollar.

mod common;

use common::{run_concurrently, Resp, Stack, StackOptions};
use serde_json::json;
use std::time::Instant;

/// 12 letters: the fake counts 10 prompt tokens as OpenAI does (3 per message + "user" 1 +
/// 3 for the text + 3 priming the reply), and so does the filter's reservation.
const PROMPT: &str = "abcdefghijkl";

/// A call with [`PROMPT`] and `max_tokens: 5` costs exactly $0.02 (10 × 0.001 + 5 × 0.002), and
/// so does its reservation.
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

const CALL_NANOS: i64 = 20_000_000;
const N: usize = 256;

fn body() -> String {
    json!({
        "model": "priced",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": PROMPT}]
    })
    .to_string()
}

fn burst(s: &Stack, key: &str, delay_ms: &str) -> Vec<Resp> {
    run_concurrently(N, |_| {
        s.post_with(
            "/v1/chat/completions",
            key,
            &[("x-fake-delay-ms", delay_ms)],
            &body(),
        )
    })
}

/// Checks the split of `answers` into `admitted` 200s and the rest refused with `status`.
fn assert_split(answers: &[Resp], admitted: usize, status: u16, error_type: &str, what: &str) {
    let ok = answers.iter().filter(|r| r.status == 200).count();
    for r in answers.iter().filter(|r| r.status != 200) {
        r.assert_error(status, error_type);
    }
    assert_eq!(ok, admitted, "{what}: admitted calls");
}

/// The key's spend in `/key/info` once every admitted call is settled, in nano-dollars.
fn settled_spend(s: &Stack, key: &str, calls: usize) -> i64 {
    s.wait_spend_logs(key, calls);
    let expected = calls as i64 * CALL_NANOS;
    let info = s.wait_key_spend(key, expected as f64 / 1e9);
    (info["spend"].as_f64().unwrap() * 1e9).round() as i64
}

fn scenario(workers: u16) {
    let started = Instant::now();
    let s = Stack::start_with(StackOptions {
        config: CONFIG.to_string(),
        // A long rpm window: the burst cannot straddle two windows.
        env: vec![("LITELLM_RATE_LIMIT_WINDOW_SIZE".into(), "3600".into())],
        concurrency: Some(workers),
        ..Default::default()
    });

    // Budget: one warm-up call ($0.02) then 256 at once against $0.42, room for exactly 20.
    let k = 20;
    let (key, _) = s.generate_key(json!({"max_budget": 0.42}));
    s.post_with("/v1/chat/completions", &key, &[], &body())
        .assert_status(200);
    let answers = burst(&s, &key, "300");
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert_split(&answers, k, 422, "budget_exceeded", "budget for 20");
    let spend = settled_spend(&s, &key, k + 1);
    eprintln!(
        "concurrency: {workers} workers: budget: admitted {ok}/{k}, spend {spend}/{} nano-dollars",
        (k as i64 + 1) * CALL_NANOS
    );
    assert_eq!(spend, (k as i64 + 1) * CALL_NANOS);

    // rpm: 256 at once on rpm 25 (one used by the warm-up).
    let rpm = 25;
    let (key, _) = s.generate_key(json!({"rpm_limit": rpm}));
    s.post_with("/v1/chat/completions", &key, &[], &body())
        .assert_status(200);
    let answers = burst(&s, &key, "100");
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert_split(&answers, rpm - 1, 429, "throttling_error", "rpm 25");
    let spend = settled_spend(&s, &key, rpm);
    eprintln!(
        "concurrency: {workers} workers: rpm: admitted {ok}/{}, spend {spend}/{} nano-dollars",
        rpm - 1,
        rpm as i64 * CALL_NANOS
    );
    assert_eq!(spend, rpm as i64 * CALL_NANOS);

    // max_parallel_requests 8 with a slow upstream: 8 in flight, 248 refused; the slots are
    // all free afterwards (8 more at once pass). The upstream holds the 8 for 10 s, so the
    // burst has all come in before a slot frees, on a loaded machine too.
    let parallel = 8;
    let (key, _) = s.generate_key(json!({"max_parallel_requests": parallel}));
    s.post_with("/v1/chat/completions", &key, &[], &body())
        .assert_status(200);
    let answers = burst(&s, &key, "10000");
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert_split(&answers, parallel, 429, "throttling_error", "parallel 8");
    let again = run_concurrently(parallel, |_| {
        s.post_with(
            "/v1/chat/completions",
            &key,
            &[("x-fake-delay-ms", "500")],
            &body(),
        )
    });
    assert!(again.iter().all(|r| r.status == 200), "slots leaked");
    let calls = 1 + 2 * parallel;
    let spend = settled_spend(&s, &key, calls);
    eprintln!(
        "concurrency: {workers} workers: parallel: admitted {ok}/{parallel}, spend {spend}/{} nano-dollars",
        calls as i64 * CALL_NANOS
    );
    assert_eq!(spend, calls as i64 * CALL_NANOS);
    eprintln!(
        "concurrency: {workers} workers: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn burst_of_256_on_2_workers() {
    scenario(2);
}

#[test]
fn burst_of_256_on_4_workers() {
    scenario(4);
}
