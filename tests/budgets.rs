#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Budgets through a real Envoy running the built filter (litellm-compat.md §2, §3, §7): every
//! level blocks at `spend >= max_budget` with LiteLLM's exact message, reservations stop
//! concurrent overspend, spend is settled exactly (streams too) and survives a restart, resets
//! happen on time, and a failed upstream call costs nothing.
//!
//! Prices are set in the config so every cost is exact: the prompt is one 12-letter user message
//! (10 prompt tokens at the fake, chat framing included), `max_tokens` 5 (5 completion tokens), at $0.001 in / $0.002 out, so one
//! call costs 10 × 0.001 + 5 × 0.002 = $0.02 = 20 000 000 nano-dollars; with `max_tokens` set the
//! admission reservation equals that cost.

mod common;

use common::{hang_up, within_attempts, TempDir, MASTER_KEY, SETTLE_TIMEOUT};
use common::{poll_until, run_concurrently, sha256_hex, unix_now, Resp, Stack, StackOptions};
use serde_json::{json, Value};
use std::time::Duration;

/// 12 letters: the fake counts 10 prompt tokens as OpenAI does (3 per message + "user" 1 +
/// 3 for the text + 3 priming the reply), and so does the filter's reservation.
const PROMPT: &str = "abcdefghijkl";

/// Three models on the fake: two priced alike, one free (both prices explicitly 0).
const MODELS: &str = r#"
model_list:
  - model_name: priced
    litellm_params:
      model: openai/priced-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
  - model_name: priced-b
    litellm_params:
      model: openai/priced-b-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
  - model_name: free
    litellm_params:
      model: openai/free-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.0
      output_cost_per_token: 0.0
general_settings:
  master_key: @MASTER_KEY@
"#;

fn config(litellm_settings: &str) -> String {
    format!("{MODELS}{litellm_settings}")
}

fn stack(litellm_settings: &str) -> Stack {
    Stack::start(&config(litellm_settings))
}

/// A chat body costing $0.02 on the priced models (`max_tokens` 5).
fn body(model: &str) -> String {
    body_with(model, 5, false)
}

fn body_with(model: &str, max_tokens: u64, stream: bool) -> String {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}]
    })
    .to_string()
}

fn chat(s: &Stack, key: &str, model: &str) -> Resp {
    s.post_with("/v1/chat/completions", key, &[], &body(model))
}

fn chat_ok(s: &Stack, key: &str, model: &str) -> Resp {
    let r = chat(s, key, model);
    r.assert_status(200);
    r
}

fn key_name(key: &str) -> String {
    format!("sk-...{}", &key[key.len() - 4..])
}

fn key_exceeded(alias: &str, key: &str, current: &str, max: &str) -> String {
    format!(
        "Budget has been exceeded! Key={alias} ({}) Current cost: {current}, Max budget: {max}",
        key_name(key)
    )
}

fn assert_budget_exceeded(resp: &Resp, status: u16, message: &str) {
    let err = resp.assert_error_message(status, "budget_exceeded", message);
    assert_eq!(err["param"], Value::Null, "param; body: {}", resp.body);
}

// ---------------------------------------------------------------------------------------------
// Each level blocks at the right request, with LiteLLM's words (§2.3)

/// Key `max_budget` blocks once spend reaches it (`>=`): 3 calls of $0.02 fit $0.06, the 4th is
/// refused; a `max_budget` of 0 refuses the very first call; the alias is named when set.
#[test]
fn key_budget_blocks_at_spend_equal_to_max_budget() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.06}));
    for i in 0..3 {
        let r = chat(&s, &key, "priced");
        assert_eq!(
            r.status,
            200,
            "call {} of 3 within the budget: {}",
            i + 1,
            r.body
        );
    }
    let refused = chat(&s, &key, "priced");
    assert_budget_exceeded(&refused, 422, &key_exceeded("key", &key, "0.06", "0.06"));
    // The refusal is stable (a refused call reserves nothing and costs nothing).
    assert_budget_exceeded(
        &chat(&s, &key, "priced-b"),
        422,
        &key_exceeded("key", &key, "0.06", "0.06"),
    );

    let (aliased, _) = s.generate_key(json!({"max_budget": 0.02, "key_alias": "alpha-budget"}));
    chat_ok(&s, &aliased, "priced");
    assert_budget_exceeded(
        &chat(&s, &aliased, "priced"),
        422,
        &key_exceeded("alpha-budget", &aliased, "0.02", "0.02"),
    );

    let (zero, _) = s.generate_key(json!({"max_budget": 0}));
    assert_budget_exceeded(
        &chat(&s, &zero, "priced"),
        422,
        &key_exceeded("key", &zero, "0.0", "0.0"),
    );

    // Refused calls never reached the provider.
    assert_eq!(s.fake_requests().len(), 4, "3 + 1 admitted calls");
    // And the sidecar settles to exactly the three calls.
    s.wait_key_spend(&key, 0.06);
    s.wait_key_spend(&aliased, 0.02);
    assert_eq!(s.key_info(&zero)["spend"].as_f64(), Some(0.0));
}

/// An organization's `max_budget` is shared by its teams' keys: two teams' keys spend it
/// together and, once it is spent, both get LiteLLM's 422 naming the organization; raising it
/// (`PATCH /organization/update`) reaches Envoy at once. The organization's `models` hold for
/// a team key whose team allows every model (403 `org_model_access_denied`).
#[test]
fn organization_budget_is_shared_by_its_teams_and_its_models_bind_them() {
    let s = stack("");
    s.admin_post(
        "/organization/new",
        &json!({"organization_id": "org-1", "organization_alias": "Acme",
                "max_budget": 0.04, "models": ["priced", "priced-b"]}),
    )
    .assert_status(200);
    for team in ["team-x", "team-y"] {
        s.admin_post(
            "/team/new",
            &json!({"team_id": team, "organization_id": "org-1"}),
        )
        .assert_status(200);
    }
    let (kx, _) = s.generate_key(json!({"team_id": "team-x"}));
    let (ky, _) = s.generate_key(json!({"team_id": "team-y"}));
    chat_ok(&s, &kx, "priced");
    chat_ok(&s, &ky, "priced-b");
    let spent = "Budget has been exceeded! Organization=org-1 Current cost: 0.04, Max budget: 0.04";
    assert_budget_exceeded(&chat(&s, &kx, "priced"), 422, spent);
    assert_budget_exceeded(&chat(&s, &ky, "priced-b"), 422, spent);
    assert_eq!(
        s.fake_requests().len(),
        2,
        "refused calls never reach the provider"
    );

    // The organization's models: "free" is not among them.
    chat(&s, &ky, "free").assert_error_message(
        403,
        "org_model_access_denied",
        "The requested model 'free' is not available for this API key, or the model name is invalid. Check the models available to you and try again.",
    );

    // The sidecar charged the organization for both teams.
    poll_until("organization spend 0.04", SETTLE_TIMEOUT, || {
        let info = s.get("/organization/info?organization_id=org-1", Some(MASTER_KEY));
        let spend = info.json()["spend"].as_f64();
        if spend.is_some_and(|v| (v - 0.04).abs() < 1e-12) {
            Ok(())
        } else {
            Err(info.body.to_string())
        }
    });

    let raised = s.request(
        "PATCH",
        "/organization/update",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {MASTER_KEY}")),
        ],
        Some(&json!({"organization_id": "org-1", "max_budget": 0.06}).to_string()),
    );
    raised.assert_status(200);
    chat_ok(&s, &ky, "priced");
    assert_budget_exceeded(
        &chat(&s, &kx, "priced"),
        422,
        "Budget has been exceeded! Organization=org-1 Current cost: 0.06, Max budget: 0.06",
    );
}

/// A user's `max_budget` (`/user/new`) applies to all of its (team-less) keys together.
#[test]
fn user_budget_blocks_every_key_of_the_user() {
    let s = stack("");
    s.admin_post(
        "/user/new",
        &json!({"user_id": "budget-user", "max_budget": 0.04, "auto_create_key": false}),
    )
    .assert_status(200);
    let (k1, _) = s.generate_key(json!({"user_id": "budget-user"}));
    let (k2, _) = s.generate_key(json!({"user_id": "budget-user"}));
    let (other, _) = s.generate_key(json!({}));

    chat_ok(&s, &k1, "priced");
    chat_ok(&s, &k2, "priced-b");
    let message = "ExceededBudget: User=budget-user over budget. Spend=0.04, Budget=0.04";
    assert_budget_exceeded(&chat(&s, &k1, "priced"), 422, message);
    assert_budget_exceeded(&chat(&s, &k2, "priced"), 422, message);
    // A key of nobody in particular is not affected.
    chat_ok(&s, &other, "priced");

    poll_until("user spend settled", SETTLE_TIMEOUT, || {
        let r = s.get("/user/info?user_id=budget-user", Some(MASTER_KEY));
        r.assert_status(200);
        let v = r.json();
        if v["user_info"]["spend"].as_f64() == Some(0.04) {
            Ok(())
        } else {
            Err(r.body.clone())
        }
    });
    s.wait_key_spend(&k1, 0.02);
    s.wait_key_spend(&k2, 0.02);
}

/// `litellm_settings.max_budget: 0` refuses the first priced call of anyone, master key
/// included; a free model still answers.
#[test]
fn proxy_budget_zero_blocks_the_first_request() {
    let s = stack("litellm_settings:\n  max_budget: 0\n");
    let (key, _) = s.generate_key(json!({}));
    let message = "Budget has been exceeded! Current cost: 0.0, Max budget: 0.0";
    assert_budget_exceeded(&chat(&s, &key, "priced"), 422, message);
    assert_budget_exceeded(&chat(&s, MASTER_KEY, "priced"), 422, message);
    chat_ok(&s, &key, "free");
    assert_eq!(s.fake_requests().len(), 1, "only the free call went out");
}

/// A positive proxy budget is shared by every caller and blocks at `>=` (Tollgate's one
/// deliberate difference from LiteLLM's strict `>`); `/global/spend` settles to it.
#[test]
fn proxy_budget_is_shared_by_every_caller() {
    let s = stack("litellm_settings:\n  max_budget: 0.04\n");
    let (k1, _) = s.generate_key(json!({}));
    let (k2, _) = s.generate_key(json!({}));
    chat_ok(&s, &k1, "priced");
    chat_ok(&s, MASTER_KEY, "priced-b");
    let message = "Budget has been exceeded! Current cost: 0.04, Max budget: 0.04";
    assert_budget_exceeded(&chat(&s, &k2, "priced"), 422, message);
    assert_budget_exceeded(&chat(&s, MASTER_KEY, "priced"), 422, message);
    poll_until("global spend settled", SETTLE_TIMEOUT, || {
        let r = s.get("/global/spend", Some(MASTER_KEY));
        r.assert_status(200);
        let v = r.json();
        if v["spend"].as_f64() == Some(0.04) && v["max_budget"].as_f64() == Some(0.04) {
            Ok(())
        } else {
            Err(r.body.clone())
        }
    });
}

/// `model_max_budget` on a key limits that model only, with LiteLLM's message naming the key
/// hash, its alias (or `None`) and the model.
#[test]
fn key_model_budget_blocks_only_that_model() {
    let s = stack("");
    let (key, v) = s.generate_key(json!({
        "model_max_budget": {"priced": {"max_budget": 0.04, "budget_duration": "30s"}}
    }));
    let hash = v["token"].as_str().expect("token").to_string();
    assert_eq!(hash, sha256_hex(&key));
    chat_ok(&s, &key, "priced");
    chat_ok(&s, &key, "priced");
    assert_budget_exceeded(
        &chat(&s, &key, "priced"),
        422,
        &format!("LiteLLM Virtual Key: {hash}, key_alias: None, exceeded budget for model=priced"),
    );
    // Other models are not limited by it.
    chat_ok(&s, &key, "priced-b");
    chat_ok(&s, &key, "priced-b");
    chat_ok(&s, &key, "priced-b");

    let (aliased, v) = s.generate_key(json!({
        "key_alias": "model-budget-alias",
        "model_max_budget": {"priced-b": {"max_budget": 0.02, "budget_duration": "1h"}}
    }));
    let hash = v["token"].as_str().expect("token").to_string();
    chat_ok(&s, &aliased, "priced-b");
    assert_budget_exceeded(
        &chat(&s, &aliased, "priced-b"),
        422,
        &format!(
            "LiteLLM Virtual Key: {hash}, key_alias: model-budget-alias, exceeded budget for model=priced-b"
        ),
    );
    chat_ok(&s, &aliased, "priced");
}

/// `litellm_settings.budget_exceeded_status_code` changes the status of every budget refusal.
#[test]
fn budget_exceeded_status_code_is_configurable() {
    let s = stack("litellm_settings:\n  budget_exceeded_status_code: 429\n");
    let (key, _) = s.generate_key(json!({"max_budget": 0.02}));
    chat_ok(&s, &key, "priced");
    assert_budget_exceeded(
        &chat(&s, &key, "priced"),
        429,
        &key_exceeded("key", &key, "0.02", "0.02"),
    );
    s.admin_post(
        "/user/new",
        &json!({"user_id": "status-user", "max_budget": 0, "auto_create_key": false}),
    )
    .assert_status(200);
    let (user_key, _) = s.generate_key(json!({"user_id": "status-user"}));
    assert_budget_exceeded(
        &chat(&s, &user_key, "priced"),
        429,
        "ExceededBudget: User=status-user over budget. Spend=0.0, Budget=0.0",
    );
}

/// A model whose prices are both explicitly 0 skips every budget check (§2.2), so an exhausted
/// key still reaches it, and it costs nothing.
#[test]
fn free_model_passes_an_exhausted_budget() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.02}));
    chat_ok(&s, &key, "priced");
    assert_budget_exceeded(
        &chat(&s, &key, "priced"),
        422,
        &key_exceeded("key", &key, "0.02", "0.02"),
    );
    chat_ok(&s, &key, "free");
    chat_ok(&s, &key, "free");
    // Still blocked on priced models; the free calls added nothing.
    assert_budget_exceeded(
        &chat(&s, &key, "priced-b"),
        422,
        &key_exceeded("key", &key, "0.02", "0.02"),
    );
    let (zero, _) = s.generate_key(json!({"max_budget": 0}));
    chat_ok(&s, &zero, "free");
    s.wait_spend_logs(&key, 3);
    assert_eq!(s.key_info(&key)["spend"].as_f64(), Some(0.02));
}

// ---------------------------------------------------------------------------------------------
// Cost and spend headers (§7.2), streams (§7.3)

/// Non-streamed answers carry the exact cost, the key's spend after the call, its budget and
/// what is left.
#[test]
fn non_stream_cost_headers_are_exact() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.1}));
    let r = chat_ok(&s, &key, "priced");
    assert_eq!(r.json()["usage"]["prompt_tokens"], 10, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 5, "{}", r.body);
    assert_eq!(
        r.header("x-litellm-response-cost"),
        Some("0.02"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-litellm-key-spend"),
        Some("0.02"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-litellm-key-max-budget"),
        Some("0.1"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-litellm-key-remaining-budget"),
        Some("0.08"),
        "{:?}",
        r.headers
    );

    // 10 × 0.001 + 20 × 0.002 = 0.05; spend 0.07.
    let r = s.post_with(
        "/v1/chat/completions",
        &key,
        &[],
        &body_with("priced", 20, false),
    );
    r.assert_status(200);
    assert_eq!(
        r.header("x-litellm-response-cost"),
        Some("0.05"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-litellm-key-spend"),
        Some("0.07"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-litellm-key-remaining-budget"),
        Some("0.03"),
        "{:?}",
        r.headers
    );

    // The master key has no key budget: the cost, but no key headers.
    let r = chat_ok(&s, MASTER_KEY, "priced");
    assert_eq!(
        r.header("x-litellm-response-cost"),
        Some("0.02"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-litellm-key-spend"), None, "{:?}", r.headers);

    s.wait_key_spend(&key, 0.07);
}

/// `x-litellm-key-remaining-budget` (Tollgate's own header) is the budget minus the spend in
/// integer nano-dollars, like every other money figure: with $0.1 and $0.04 spent it says
/// `0.06`, not the float difference `0.1 - 0.04 = 0.060000000000000005`.
#[test]
fn remaining_budget_header_is_exact_in_nano_dollars() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.1}));
    for (i, (spend, remaining)) in [
        ("0.02", "0.08"),
        ("0.04", "0.06"),
        ("0.06", "0.04"),
        ("0.08", "0.02"),
        ("0.1", "0.0"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = chat_ok(&s, &key, "priced");
        assert_eq!(
            r.header("x-litellm-key-spend"),
            Some(spend),
            "call {}: {:?}",
            i + 1,
            r.headers
        );
        assert_eq!(
            r.header("x-litellm-key-remaining-budget"),
            Some(remaining),
            "call {}: remaining budget must be exact (integer nano-dollars); {:?}",
            i + 1,
            r.headers
        );
    }
}

fn sse_chunks(resp: &Resp) -> Vec<Value> {
    let events: Vec<&str> = resp
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last().copied(), Some("[DONE]"), "{}", resp.body);
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("SSE data is JSON"))
        .collect()
}

fn usage_chunks(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .filter_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .collect()
}

/// A stream is charged exactly from the usage the filter asked the provider for; the usage
/// chunk reaches only a client that asked for it.
#[test]
fn streaming_is_charged_exactly_and_usage_chunk_shown_only_when_asked() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 1.0}));

    let r = s.post_with(
        "/v1/chat/completions",
        &key,
        &[],
        &body_with("priced", 5, true),
    );
    r.assert_status(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    let chunks = sse_chunks(&r);
    assert!(
        usage_chunks(&chunks).is_empty(),
        "usage shown unasked: {}",
        r.body
    );
    assert!(
        chunks.iter().all(|c| c["choices"] != json!([])),
        "{}",
        r.body
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "ok ok ok ok ok ", "{}", r.body);
    // Streams carry no cost header (§7.2), but the key's budget is known up front.
    assert_eq!(r.header("x-litellm-response-cost"), None, "{:?}", r.headers);
    assert_eq!(
        r.header("x-litellm-key-max-budget"),
        Some("1.0"),
        "{:?}",
        r.headers
    );
    s.wait_key_spend(&key, 0.02);

    let mut asked: Value = serde_json::from_str(&body_with("priced", 5, true)).unwrap();
    asked["stream_options"] = json!({"include_usage": true});
    let r = s.post_with("/v1/chat/completions", &key, &[], &asked.to_string());
    r.assert_status(200);
    let usage = usage_chunks(&sse_chunks(&r));
    assert_eq!(usage.len(), 1, "{}", r.body);
    assert_eq!(usage[0]["prompt_tokens"], 10, "{}", r.body);
    assert_eq!(usage[0]["completion_tokens"], 5, "{}", r.body);
    assert_eq!(usage[0]["total_tokens"], 15, "{}", r.body);
    s.wait_key_spend(&key, 0.04);

    let rows = s.wait_spend_logs(&key, 2);
    for row in &rows {
        assert_eq!(row["spend"].as_f64(), Some(0.02), "{row:#}");
        assert_eq!(row["prompt_tokens"], 10, "{row:#}");
        assert_eq!(row["completion_tokens"], 5, "{row:#}");
        assert_eq!(row["status"], "success", "{row:#}");
        assert_eq!(row["metadata"]["estimated"], false, "{row:#}");
    }
    // The provider was asked for usage both times.
    for request in s.fake_requests() {
        assert_eq!(
            request["body"]["stream_options"]["include_usage"], true,
            "{request:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Resets (§3.2)

/// Sleeps until the system clock reads `at` (Unix seconds).
fn sleep_until(at: f64) {
    let left = at - unix_now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// `budget_duration: 2s` resets at the next even second (calendar-aligned, exact and lazy):
/// refused just before the boundary, admitted just after.
#[test]
fn two_second_budget_duration_resets_on_time() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.02, "budget_duration": "2s"}));
    // Fetch the key into the filter first (a free call checks no budget).
    chat_ok(&s, &key, "free");

    let exceeded = key_exceeded("key", &key, "0.02", "0.02");
    // Each attempt needs its first two calls answered within 1.45 s, and its call 0.25 s
    // before the boundary answered before it. A machine too slow for that (a loaded CI box)
    // tries again in a period of its own instead of failing; a wrong answer fails at once.
    let boundary = within_attempts(|attempt| {
        if attempt > 1 {
            // The period of the last call may hold spend: start after it.
            sleep_until((unix_now() / 2.0).floor() * 2.0 + 2.0);
        }
        // Start right after an even second, so a whole period lies ahead.
        let start = poll_until("an even second", Duration::from_secs(5), || {
            let t = unix_now();
            let phase = t % 2.0;
            if (0.02..0.25).contains(&phase) {
                Ok(t)
            } else {
                Err(format!("phase {phase}"))
            }
        });
        let boundary = (start / 2.0).floor() * 2.0 + 2.0;
        chat_ok(&s, &key, "priced");
        let refused = chat(&s, &key, "priced");
        if unix_now() >= boundary - 0.3 {
            return None;
        }
        assert_budget_exceeded(&refused, 422, &exceeded);

        // Still the same period a little before the boundary.
        sleep_until(boundary - 0.25);
        let r = chat(&s, &key, "priced");
        if unix_now() >= boundary && r.status == 200 {
            // Answered after the boundary: it may have been admitted in the next period.
            return None;
        }
        assert_budget_exceeded(&r, 422, &exceeded);
        Some(boundary)
    });

    // Just after it, the budget is whole again.
    sleep_until(boundary + 0.05);
    let r = chat(&s, &key, "priced");
    let at = unix_now();
    assert_eq!(
        r.status,
        200,
        "no reset at the boundary ({:.3} s after it): {}",
        at - boundary,
        r.body
    );
    assert_eq!(
        r.header("x-litellm-key-spend"),
        Some("0.02"),
        "{:?}",
        r.headers
    );
    // Spent again in this period: refused, if answered before the next boundary (a later
    // answer may come from the period after).
    let r = chat(&s, &key, "priced");
    if unix_now() < boundary + 2.0 {
        assert_budget_exceeded(&r, 422, &exceeded);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency: reservations (§2.9)

/// 50 simultaneous calls against a budget that fits exactly 10 (Envoy with 2 workers): exactly
/// 10 are admitted, the final spend is exactly 10 × $0.02, nothing more.
#[test]
fn fifty_concurrent_requests_against_a_budget_for_ten_admit_exactly_ten() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.2}));
    // Fetch the key into the filter first (a free call checks no budget).
    chat_ok(&s, &key, "free");
    s.clear_fake_requests();

    let answers = run_concurrently(50, |_| {
        s.post_with(
            "/v1/chat/completions",
            &key,
            &[("x-fake-delay-ms", "300")],
            &body("priced"),
        )
    });
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Resp> = answers.iter().filter(|r| r.status != 200).collect();
    eprintln!(
        "budget concurrency: admitted {ok} of 50, refused {}",
        refused.len()
    );
    let expected = key_exceeded("key", &key, "0.2", "0.2");
    for r in &refused {
        assert_budget_exceeded(r, 422, &expected);
    }
    assert_eq!(
        ok, 10,
        "admitted calls; a budget of 0.2 fits exactly 10 × 0.02"
    );
    assert_eq!(s.fake_requests().len(), 10);

    // 10 priced rows, plus the free call that fetched the key.
    let rows = s.wait_spend_logs(&key, 11);
    let priced: Vec<&Value> = rows.iter().filter(|r| r["model"] == "priced").collect();
    assert_eq!(priced.len(), 10, "{rows:#?}");
    let total: i64 = priced
        .iter()
        .map(|r| (r["spend"].as_f64().unwrap() * 1e9).round() as i64)
        .sum();
    s.wait_key_spend(&key, 0.2);
    eprintln!("budget concurrency: settled spend {total} nano-dollars (budget 200000000)");
    assert_eq!(
        total,
        200_000_000,
        "overspend in nano-dollars: {}",
        total - 200_000_000
    );
    assert_budget_exceeded(&chat(&s, &key, "priced"), 422, &expected);
}

// ---------------------------------------------------------------------------------------------
// Durability and the spend record

/// Spend lives in the sidecar's store: after a restart of sidecar and Envoy on the same data
/// dir, a key at its budget is still refused, and the proxy's spend carries on.
#[test]
fn spend_survives_a_restart_on_the_same_data_dir() {
    let data = TempDir::new("budget-restart");
    let settings = "litellm_settings:\n  max_budget: 0.08\n";
    let cfg = config(settings);
    let key = {
        let s = Stack::start_with(StackOptions {
            config: cfg.clone(),
            data_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        });
        let (key, _) = s.generate_key(json!({"max_budget": 0.04}));
        chat_ok(&s, &key, "priced");
        chat_ok(&s, &key, "priced");
        assert_budget_exceeded(
            &chat(&s, &key, "priced"),
            422,
            &key_exceeded("key", &key, "0.04", "0.04"),
        );
        s.wait_key_spend(&key, 0.04);
        key
    };
    let s = Stack::start_with_data_dir(&cfg, data.path());
    assert_budget_exceeded(
        &chat(&s, &key, "priced"),
        422,
        &key_exceeded("key", &key, "0.04", "0.04"),
    );
    assert_eq!(s.key_info(&key)["spend"].as_f64(), Some(0.04));
    let global = s.get("/global/spend", Some(MASTER_KEY));
    assert_eq!(
        global.json()["spend"].as_f64(),
        Some(0.04),
        "{}",
        global.body
    );
    // The proxy budget (0.08) has room for exactly two more calls.
    let (fresh, _) = s.generate_key(json!({}));
    chat_ok(&s, &fresh, "priced");
    chat_ok(&s, &fresh, "priced");
    assert_budget_exceeded(
        &chat(&s, &fresh, "priced"),
        422,
        "Budget has been exceeded! Current cost: 0.08, Max budget: 0.08",
    );
}

/// `/spend/logs?api_key=` has one row per call, streams and failures included, and flushing
/// never duplicates one.
#[test]
fn spend_logs_list_each_request_once() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({}));
    chat_ok(&s, &key, "priced");
    chat_ok(&s, &key, "priced-b");
    s.post_with(
        "/v1/chat/completions",
        &key,
        &[],
        &body_with("priced", 5, true),
    )
    .assert_status(200);
    s.post_with(
        "/v1/chat/completions",
        &key,
        &[("x-fake-status", "500")],
        &body("priced"),
    )
    .assert_status(500);
    chat_ok(&s, &key, "free");
    let made = 5;

    let rows = s.wait_spend_logs(&key, made);
    // Two more flush periods: still one row per call.
    std::thread::sleep(Duration::from_millis(2200));
    let rows_later = s.spend_logs(&key);
    assert_eq!(rows_later.len(), made, "{rows_later:#?}");

    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), made, "request ids are unique: {rows:#?}");
    assert!(ids.iter().all(|id| !id.is_empty()), "{rows:#?}");
    let hash = sha256_hex(&key);
    assert!(
        rows.iter().all(|r| r["api_key"] == hash.as_str()),
        "{rows:#?}"
    );

    let mut by_status: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                (r["spend"].as_f64().unwrap() * 1e9).round() as i64,
            )
        })
        .collect();
    by_status.sort();
    assert_eq!(
        by_status,
        vec![
            ("free".into(), "success".into(), 0),
            ("priced".into(), "failure".into(), 0),
            ("priced".into(), "success".into(), 20_000_000),
            ("priced".into(), "success".into(), 20_000_000),
            ("priced-b".into(), "success".into(), 20_000_000),
        ],
        "{rows:#?}"
    );
    assert_eq!(s.key_info(&key)["spend"].as_f64(), Some(0.06));
}

/// An upstream 500 costs nothing and gives its reservation back: a key whose budget fits one
/// call still gets that call after a failure.
#[test]
fn upstream_error_is_not_charged() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.02}));
    for status in ["500", "503"] {
        let r = s.post_with(
            "/v1/chat/completions",
            &key,
            &[("x-fake-status", status)],
            &body("priced"),
        );
        assert_eq!(r.status.to_string(), status, "{}", r.body);
        assert_eq!(r.header("x-litellm-response-cost"), None, "{:?}", r.headers);
    }
    let r = chat_ok(&s, &key, "priced");
    assert_eq!(
        r.header("x-litellm-key-spend"),
        Some("0.02"),
        "{:?}",
        r.headers
    );
    assert_budget_exceeded(
        &chat(&s, &key, "priced"),
        422,
        &key_exceeded("key", &key, "0.02", "0.02"),
    );
    let rows = s.wait_spend_logs(&key, 3);
    let failures: Vec<&Value> = rows.iter().filter(|r| r["status"] == "failure").collect();
    assert_eq!(failures.len(), 2, "{rows:#?}");
    assert!(
        failures.iter().all(|r| r["spend"].as_f64() == Some(0.0)),
        "{rows:#?}"
    );
    s.wait_key_spend(&key, 0.02);
}

/// A call whose client hangs up before the provider answers costs nothing and gives its
/// reservation back: a key whose budget fits one call still gets it afterwards.
#[test]
fn client_abort_releases_the_budget_reservation() {
    let s = stack("");
    let (key, _) = s.generate_key(json!({"max_budget": 0.02}));
    chat_ok(&s, &key, "free");
    s.clear_fake_requests();
    let bearer = format!("Bearer {key}");
    // The client hangs up once the check below is done (not after a fixed time, which a loaded
    // machine could outlast); the upstream would answer only after a minute.
    let call = s.open_request(
        "/v1/chat/completions",
        &[("authorization", &bearer), ("x-fake-delay-ms", "60000")],
        &body("priced"),
    );
    poll_until("the call at the upstream", SETTLE_TIMEOUT, || {
        match s.fake_requests().len() {
            0 => Err("none yet".into()),
            _ => Ok(()),
        }
    });
    // While it is in flight, its reservation holds the whole budget.
    assert_budget_exceeded(
        &chat(&s, &key, "priced"),
        422,
        &key_exceeded("key", &key, "0.02", "0.02"),
    );
    let got = hang_up(call, Duration::from_millis(10));
    assert!(
        got.is_empty(),
        "the aborted call got an answer: {}",
        String::from_utf8_lossy(&got)
    );
    // Once Envoy has seen the hang-up, the reservation is released and nothing was charged.
    let r = poll_until("the reservation released", SETTLE_TIMEOUT, || {
        let r = chat(&s, &key, "priced");
        match r.status {
            200 => Ok(r),
            _ => Err(r.body),
        }
    });
    assert_eq!(
        r.header("x-litellm-key-spend"),
        Some("0.02"),
        "{:?}",
        r.headers
    );
    s.wait_spend_logs(&key, 3);
    assert_eq!(s.key_info(&key)["spend"].as_f64(), Some(0.02));
}

/// `litellm_settings.timezone` as an IANA zone with DST: a daily budget resets at the next
/// local midnight in New York, whichever offset (EST or EDT) is in force then. The expected
/// instant is computed independently with jiff's tz database.
#[test]
fn daily_budget_resets_at_new_york_midnight() {
    let s = stack("litellm_settings:\n  timezone: America/New_York\n");
    let (key, generated) = s.generate_key(json!({"max_budget": 1.0, "budget_duration": "1d"}));
    let ny = jiff::tz::TimeZone::get("America/New_York").expect("tzdb has New York");
    let now = jiff::Timestamp::now().to_zoned(ny.clone());
    let midnight = now
        .date()
        .tomorrow()
        .expect("tomorrow exists")
        .to_zoned(ny)
        .expect("midnight exists in New York")
        .timestamp();
    let expected = midnight.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let reset_at = generated["budget_reset_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no budget_reset_at in {generated}"));
    assert!(
        reset_at.starts_with(&expected),
        "budget_reset_at {reset_at}, expected New York midnight {expected}Z"
    );
    assert!(s.key_info(&key)["budget_reset_at"]
        .as_str()
        .is_some_and(|r| r.starts_with(&expected)));
    // The filter gets the zone's transitions, not a single offset (its configuration is in the
    // extension-config file `tollgate up` keeps for Envoy).
    let file = s.data_dir.join("xds").join("tollgate-filter.yaml");
    let text = std::fs::read_to_string(&file).expect("the filter's xDS file");
    let xds: Value = serde_json::from_str(&text).expect("the xDS file is JSON");
    let plugin: Value = serde_json::from_str(
        xds["resources"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .expect("plugin configuration string"),
    )
    .expect("plugin configuration JSON");
    let transitions = plugin["budgets"]["timezone"]["transitions"]
        .as_array()
        .expect("transitions");
    assert!(
        transitions.len() > 200,
        "the plugin configuration carries New York's DST transitions: {}",
        transitions.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Aliases (litellm-compat.md §6): the team's `model_aliases` and the key's `aliases`

/// A team alias is allowed whatever the team's and key's lists say (LiteLLM's
/// `_model_in_team_aliases`), goes to its target's deployment and is charged at the target's
/// price; the target by its own name stays refused; `/team/update` moves the alias at once.
/// A key alias is checked by its target.
#[test]
fn team_and_key_aliases_route_to_the_target_at_its_price() {
    let s = stack("");
    s.admin_post(
        "/team/new",
        &json!({"team_id": "aliased", "models": ["free"], "model_aliases": {"fast": "priced"}}),
    )
    .assert_status(200);
    let (key, _) = s.generate_key(json!({"team_id": "aliased", "models": ["free"]}));
    s.clear_fake_requests();
    chat_ok(&s, &key, "fast");
    let seen = s.fake_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["body"]["model"], "priced-backend", "{:#}", seen[0]);
    s.wait_key_spend(&key, 0.02);
    let denied = chat(&s, &key, "priced");
    denied.assert_error_message(
        403,
        "key_model_access_denied",
        "The requested model 'priced' is not available for this API key, or the model name is invalid. Check the models available to you and try again.",
    );

    s.admin_post(
        "/team/update",
        &json!({"team_id": "aliased", "model_aliases": {"fast": "free"}}),
    )
    .assert_status(200);
    s.clear_fake_requests();
    poll_until("the alias follows /team/update", SETTLE_TIMEOUT, || {
        chat_ok(&s, &key, "fast");
        let seen = s.fake_requests();
        match seen.last().map(|r| r["body"]["model"].clone()) {
            Some(m) if m == "free-backend" => Ok(()),
            other => Err(format!("upstream model {other:?}")),
        }
    });

    let (own, _) = s.generate_key(json!({
        "models": ["priced-b"],
        "aliases": {"mine": "priced-b", "sneaky": "priced"}
    }));
    s.clear_fake_requests();
    chat_ok(&s, &own, "mine");
    assert_eq!(s.fake_requests()[0]["body"]["model"], "priced-b-backend");
    s.wait_key_spend(&own, 0.02);
    chat(&s, &own, "sneaky").assert_error_message(
        403,
        "key_model_access_denied",
        "The requested model 'sneaky' is not available for this API key, or the model name is invalid. Check the models available to you and try again.",
    );
}
