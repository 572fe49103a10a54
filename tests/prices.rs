#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Prices without writing them and settings copied from LiteLLM's docs (issue 13 §1-2), and
//! config mistakes that must not pass silently (issue 12 item 11), through a real Envoy running
//! the built filter and the `tollgate` binary.

mod common;

use common::{
    envoy_bin, run_to_exit, tollgate_bin, tollgate_wasm, Resp, Stack, TempDir, MASTER_KEY,
};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// 40 characters: 10 prompt tokens at the fake.
const PROMPT: &str = "0123456789abcdefghij0123456789abcdefghij";

/// LiteLLM 1.110.2's cost map: `gpt-4o-mini`.
const GPT_4O_MINI_IN: f64 = 1.5e-7;
const GPT_4O_MINI_OUT: f64 = 6e-7;

/// No prices anywhere: LiteLLM prices these from its cost map.
const UNPRICED: &str = r#"
model_list:
  - model_name: mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
general_settings:
  master_key: @MASTER_KEY@
"#;

fn body(model: &str, max_tokens: u64) -> String {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": PROMPT}]
    })
    .to_string()
}

fn chat(s: &Stack, key: &str, model: &str) -> Resp {
    s.post_with("/v1/chat/completions", key, &[], &body(model, 5))
}

fn nanos(usd: f64) -> i64 {
    (usd * 1e9).round() as i64
}

/// The cost LiteLLM computes for this answer's usage at gpt-4o-mini's prices, nano-dollars.
fn gpt_4o_mini_cost(r: &Resp) -> i64 {
    let usage = &r.json()["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap() as f64;
    let completion = usage["completion_tokens"].as_u64().unwrap() as f64;
    nanos(prompt * GPT_4O_MINI_IN + completion * GPT_4O_MINI_OUT)
}

fn header_nanos(r: &Resp, name: &str) -> Option<i64> {
    r.header(name)?.parse::<f64>().ok().map(nanos)
}

/// Issue 13 §1: a config with no explicit prices charges LiteLLM's price for gpt-4o-mini, and
/// a budget stops the key.
#[test]
fn unpriced_gpt_4o_mini_is_charged_litellm_cost_map_price() {
    let s = Stack::start(UNPRICED);
    let (key, _) = s.generate_key(json!({}));
    let r = chat(&s, &key, "mini");
    r.assert_status(200);
    let cost = gpt_4o_mini_cost(&r);
    assert!(cost > 0);
    assert_eq!(
        header_nanos(&r, "x-litellm-response-cost"),
        Some(cost),
        "{:?}",
        r.headers
    );
    let r2 = chat(&s, &key, "mini");
    r2.assert_status(200);
    let total = cost + gpt_4o_mini_cost(&r2);
    common::poll_until("key spend", common::SETTLE_TIMEOUT, || {
        let spend = s.key_info(&key)["spend"].as_f64().unwrap_or(0.0);
        if nanos(spend) == total {
            Ok(())
        } else {
            Err(format!("spend {spend}"))
        }
    });

    // A budget of one call's cost: the next call is refused.
    let (limited, _) = s.generate_key(json!({"max_budget": cost as f64 / 1e9}));
    chat(&s, &limited, "mini").assert_status(200);
    let r = chat(&s, &limited, "mini");
    r.assert_error(422, "budget_exceeded");

    // /model/info shows the resolved prices.
    let info = s.get("/model/info", Some(MASTER_KEY)).json();
    let mi = &info["data"][0]["model_info"];
    assert_eq!(
        mi["input_cost_per_token"].as_f64(),
        Some(GPT_4O_MINI_IN),
        "{info}"
    );
    assert_eq!(mi["output_cost_per_token"].as_f64(), Some(GPT_4O_MINI_OUT));
    assert_eq!(mi["max_output_tokens"].as_u64(), Some(16384));
}

/// `tollgate up` on this config must exit non-zero without serving; its stderr.
fn up_must_fail(config: &str, env: &[(&str, &str)]) -> String {
    let dir = TempDir::new("upfail");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        &config_path,
        common::render_template(config, common::free_port()),
    )
    .unwrap();
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("up")
        .arg("--config")
        .arg(&config_path)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(common::free_port().to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--wasm")
        .arg(tollgate_wasm())
        .args([
            "--concurrency",
            "1",
            "--envoy-admin-port",
            "0",
            "--exit-on-stdin-eof",
        ])
        .env("ENVOY_BIN", envoy_bin())
        .env_remove("LITELLM_MASTER_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (status, stdout, stderr) = run_to_exit("tollgate up", &mut cmd, Duration::from_secs(60));
    assert!(!status.success(), "should have failed:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("ready"), "{stdout}");
    stderr
}

/// Issue 12 item 11: an invalid `budget_duration` in litellm_settings is refused at startup,
/// naming the field.
#[test]
fn invalid_budget_duration_is_refused_at_startup() {
    let stderr = up_must_fail(
        &format!("{UNPRICED}litellm_settings:\n  budget_duration: 30x\n"),
        &[],
    );
    assert!(
        stderr.contains("litellm_settings.budget_duration: Invalid budget_duration '30x'"),
        "{stderr}"
    );
}

/// Issue 13 §1: a cost map override that cannot be used is refused, not silently ignored.
#[test]
fn remote_cost_map_url_is_refused() {
    let stderr = up_must_fail(
        UNPRICED,
        &[(
            "LITELLM_MODEL_COST_MAP_URL",
            "https://example.com/model_prices.json",
        )],
    );
    assert!(
        stderr.contains("LITELLM_MODEL_COST_MAP_URL") && stderr.contains("does not download"),
        "{stderr}"
    );
}

/// Issue 13 §1: `LITELLM_MODEL_COST_MAP_URL` names a local file whose entries go over the
/// bundled map.
#[test]
fn cost_map_override_file_prices_a_model() {
    let dir = TempDir::new("costmap");
    let map = dir.path().join("prices.json");
    std::fs::write(
        &map,
        r#"{"gpt-4o-mini": {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002, "litellm_provider": "openai"}}"#,
    )
    .unwrap();
    let s = Stack::start_with(common::StackOptions {
        config: UNPRICED.to_string(),
        env: vec![(
            "LITELLM_MODEL_COST_MAP_URL".to_string(),
            map.display().to_string(),
        )],
        ..Default::default()
    });
    let r = chat(&s, MASTER_KEY, "mini");
    r.assert_status(200);
    let usage: &Value = &r.json()["usage"];
    let expected = nanos(
        usage["prompt_tokens"].as_f64().unwrap() * 0.001
            + usage["completion_tokens"].as_f64().unwrap() * 0.002,
    );
    assert_eq!(header_nanos(&r, "x-litellm-response-cost"), Some(expected));
}

/// Issue 12 item 11: an edit with an invalid setting is not applied; the old config stays.
#[test]
fn reload_with_invalid_budget_duration_keeps_the_old_config() {
    let s = Stack::start(UNPRICED);
    let (key, _) = s.generate_key(json!({}));
    let before = chat(&s, &key, "mini");
    before.assert_status(200);
    let cost = gpt_4o_mini_cost(&before);
    // The edit would make the model cost $1 per token, but its budget_duration is invalid.
    let edited = format!(
        "{}litellm_settings:\n  budget_duration: 30x\n",
        UNPRICED.replace(
            "      api_key: @PROVIDER_KEY@\n",
            "      api_key: @PROVIDER_KEY@\n      input_cost_per_token: 1.0\n"
        )
    );
    std::fs::write(
        s.config_path(),
        common::render_template(&edited, s.fake_port),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let after = chat(&s, &key, "mini");
    after.assert_status(200);
    assert_eq!(
        header_nanos(&after, "x-litellm-response-cost"),
        Some(gpt_4o_mini_cost(&after))
    );
    assert_eq!(gpt_4o_mini_cost(&after), cost);
}

/// Issue 13 §2: `model_max_budget` written as LiteLLM's docs show it (the limit a string) is
/// accepted and enforced; what LiteLLM refuses gets 400.
#[test]
fn model_max_budget_as_the_docs_write_it_is_enforced() {
    let s = Stack::start(UNPRICED);
    let (key, v) = s.generate_key(json!({
        "model_max_budget": {"mini": {"budget_limit": "0.0000001", "time_period": "1d"}}
    }));
    let hash = v["token"].as_str().unwrap().to_string();
    chat(&s, &key, "mini").assert_status(200);
    let r = common::poll_until("model budget refusal", common::SETTLE_TIMEOUT, || {
        let r = chat(&s, &key, "mini");
        if r.status == 200 {
            Err("still admitted".to_string())
        } else {
            Ok(r)
        }
    });
    r.assert_error_message(
        422,
        "budget_exceeded",
        &format!("LiteLLM Virtual Key: {hash}, key_alias: None, exceeded budget for model=mini"),
    );

    for bad in [
        json!({"mini": {"budget_limit": "a lot", "time_period": "1d"}}),
        json!({"mini": 5}),
        json!({"mini": {"budget_limit": 1, "time_period": "30x"}}),
    ] {
        let r = s.admin_post("/key/generate", &json!({"model_max_budget": bad}));
        let err = r.assert_error(400, "invalid_request_error");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("Invalid model_max_budget"),
            "{bad}: {err}"
        );
    }
    let r = s.admin_post(
        "/key/update",
        &json!({"key": key, "model_max_budget": {"mini": {"budget_limit": []}}}),
    );
    r.assert_error(400, "invalid_request_error");
}

/// Issue 13 §2: `litellm_settings.max_end_user_budget` (the docs' customer budget) holds every
/// customer without a budget of its own.
#[test]
fn max_end_user_budget_is_the_default_customer_budget() {
    let s = Stack::start(&format!(
        "{UNPRICED}litellm_settings:\n  max_end_user_budget: 0.000001\n"
    ));
    let (key, _) = s.generate_key(json!({}));
    let as_customer = |user: &str| {
        s.post_with(
            "/v1/chat/completions",
            &key,
            &[],
            &json!({"model": "mini", "max_tokens": 5, "user": user,
                    "messages": [{"role": "user", "content": PROMPT}]})
            .to_string(),
        )
    };
    // One call costs more than $0.000001: the next one is refused.
    as_customer("cust-1").assert_status(200);
    let r = common::poll_until("customer budget refusal", common::SETTLE_TIMEOUT, || {
        let r = as_customer("cust-1");
        if r.status == 200 {
            Err("still admitted".to_string())
        } else {
            Ok(r)
        }
    });
    let err = r.assert_error(422, "budget_exceeded");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("ExceededBudget: End User=cust-1 over budget."),
        "{err}"
    );
    // Another customer has its own spend; a customer with its own budget is not held to it.
    as_customer("cust-2").assert_status(200);
    s.admin_post(
        "/customer/new",
        &json!({"user_id": "rich", "max_budget": 100.0}),
    )
    .assert_status(200);
    as_customer("rich").assert_status(200);
    as_customer("rich").assert_status(200);
}

/// Issue 13 §2: `model_info` fields LiteLLM passes through reach /model/info.
#[test]
fn model_info_passthrough_reaches_model_info() {
    let s = Stack::start(&UNPRICED.replace(
        "      api_key: @PROVIDER_KEY@\n",
        "      api_key: @PROVIDER_KEY@\n    model_info:\n      supports_vision: true\n      base_model: gpt-4o-mini\n      my_team_label: blue\n",
    ));
    let info = s.get("/model/info", Some(MASTER_KEY)).json();
    let mi = &info["data"][0]["model_info"];
    assert_eq!(mi["supports_vision"], json!(true), "{info}");
    assert_eq!(mi["base_model"], json!("gpt-4o-mini"));
    assert_eq!(mi["my_team_label"], json!("blue"));
    assert_eq!(mi["mode"], json!("chat"));
    assert_eq!(mi["max_input_tokens"], json!(128000));
}

/// Issue 13 §2: per-model key limits answer with LiteLLM's
/// `x-litellm-key-remaining-{requests,tokens}-<model>` beside `x-ratelimit-*`.
#[test]
fn per_model_key_limit_headers_as_litellm_documents_them() {
    let s = Stack::start(UNPRICED);
    let (key, _) = s.generate_key(json!({
        "model_rpm_limit": {"mini": 5},
        "model_tpm_limit": {"mini": 100000}
    }));
    let r = chat(&s, &key, "mini");
    r.assert_status(200);
    assert_eq!(
        r.header("x-litellm-key-remaining-requests-mini"),
        Some("4"),
        "{:?}",
        r.headers
    );
    let tokens: u64 = r
        .header("x-litellm-key-remaining-tokens-mini")
        .unwrap_or_else(|| panic!("{:?}", r.headers))
        .parse()
        .unwrap();
    assert!(tokens < 100000 && tokens > 90000, "{tokens}");
    assert!(r
        .header("x-ratelimit-model_per_key-remaining-requests")
        .is_some());
    // Without a per-model limit: no per-model header.
    let (plain, _) = s.generate_key(json!({}));
    let r = chat(&s, &plain, "mini");
    assert!(
        !r.headers
            .iter()
            .any(|(k, _)| k.starts_with("x-litellm-key-remaining-requests-")),
        "{:?}",
        r.headers
    );
}

/// Wildcard entries as real configs write them, on the fake upstream.
const WILDCARDS: &str = r#"
model_list:
  - model_name: "openai/*"
    litellm_params:
      model: "openai/*"
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: "*"
    litellm_params:
      model: "*"
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
general_settings:
  master_key: @MASTER_KEY@
"#;

/// Issue 13 §2: config-level wildcard deployments are routed as LiteLLM routes them (the most
/// specific pattern, the backend model filled in) and charged the cost map's price of the
/// model actually called.
#[test]
fn wildcard_deployments_route_and_charge_cost_map_prices() {
    let s = Stack::start(WILDCARDS);
    let (key, _) = s.generate_key(json!({}));
    for (requested, sent) in [
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini", "gpt-4o-mini"),
    ] {
        s.clear_fake_requests();
        let r = chat(&s, &key, requested);
        r.assert_status(200);
        let seen = s.fake_requests();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["body"]["model"], json!(sent), "{requested}");
        assert_eq!(
            header_nanos(&r, "x-litellm-response-cost"),
            Some(gpt_4o_mini_cost(&r)),
            "{requested}: {:?}",
            r.headers
        );
    }
    // A fine-tune is priced as LiteLLM prices it (`ft:gpt-4o-mini-2024-07-18`: $0.3/$1.2 per M).
    let r = chat(&s, &key, "ft:gpt-4o-mini-2024-07-18:org::abc");
    r.assert_status(200);
    let usage = &r.json()["usage"];
    let ft_cost = nanos(
        usage["prompt_tokens"].as_u64().unwrap() as f64 * 3e-7
            + usage["completion_tokens"].as_u64().unwrap() as f64 * 1.2e-6,
    );
    assert_eq!(
        header_nanos(&r, "x-litellm-response-cost"),
        Some(ft_cost),
        "{:?}",
        r.headers
    );
    // A model the cost map does not know is routed too when no budget applies (charged
    // nothing, as in LiteLLM)...
    chat(&s, &key, "my-local-model").assert_status(200);
    // ...and refused when one does: it would spend $0 against it.
    let (budgeted, _) = s.generate_key(json!({"max_budget": 1.0}));
    s.clear_fake_requests();
    chat(&s, &budgeted, "my-local-model").assert_error(403, "model_cost_map_missing");
    assert!(s.fake_requests().is_empty());
    chat(&s, &budgeted, "gpt-4o-mini").assert_status(200);
    // A key limited to `openai/*` may call OpenAI models only.
    let (limited, _) = s.generate_key(json!({"models": ["openai/*"]}));
    chat(&s, &limited, "openai/gpt-4o-mini").assert_status(200);
    chat(&s, &limited, "my-local-model").assert_error(403, "key_model_access_denied");
}

/// `litellm_settings.block_requests_for_models_without_pricing` refuses unpriced models with
/// LiteLLM's 403 and message, budget or not; priced ones pass.
#[test]
fn block_requests_for_models_without_pricing_refuses_unpriced_models() {
    let config = format!(
        "{WILDCARDS}litellm_settings:\n  block_requests_for_models_without_pricing: true\n"
    );
    let s = Stack::start(&config);
    let (key, _) = s.generate_key(json!({}));
    s.clear_fake_requests();
    chat(&s, &key, "my-local-model").assert_error_message(
        403,
        "model_cost_map_missing",
        "Model 'my-local-model' has no pricing in the cost map, so litellm cannot price the request. Requests for unpriced models are blocked because 'block_requests_for_models_without_pricing' is enabled. Add pricing (input_cost_per_token/output_cost_per_token) to allow the request.",
    );
    assert!(s.fake_requests().is_empty());
    chat(&s, &key, "openai/gpt-4o-mini").assert_status(200);
}

/// The ids `/v1/models` lists.
fn listed(s: &Stack, path: &str, key: &str) -> Vec<String> {
    let r = s.get(path, Some(key));
    r.assert_status(200);
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Issue 13 §3: `/v1/models` (answered by the filter in Envoy) expands wildcard deployments
/// into the cost map's models instead of listing them verbatim; `return_wildcard_routes=true`
/// adds the routes; a key sees what its list allows, its team's aliases included.
/// `/model_group/info` (the sidecar behind Envoy) describes one expanded model with the cost
/// map's prices and capabilities.
#[test]
fn model_listings_expand_wildcards_as_litellm() {
    let s = Stack::start(WILDCARDS);
    let all = listed(&s, "/v1/models", MASTER_KEY);
    assert!(all.contains(&"openai/gpt-4o-mini".to_string()), "{all:?}");
    assert!(!all.iter().any(|m| m.contains('*')), "{all:?}");
    let routes = listed(&s, "/v1/models?return_wildcard_routes=true", MASTER_KEY);
    assert!(routes.contains(&"openai/*".to_string()), "{routes:?}");
    assert!(routes.contains(&"*".to_string()), "{routes:?}");
    assert!(listed(&s, "/models?only_model_access_groups=true", MASTER_KEY).is_empty());

    s.admin_post(
        "/team/new",
        &json!({"team_id": "t", "models": ["openai/gpt-4o-mini"], "model_aliases": {"small": "openai/gpt-4o-mini"}}),
    )
    .assert_status(200);
    let (key, _) = s.generate_key(json!({"team_id": "t", "models": ["openai/gpt-4o-mini"]}));
    assert_eq!(
        listed(&s, "/v1/models", &key),
        ["openai/gpt-4o-mini", "small"]
    );

    let r = s.get(
        "/model_group/info?model_group=openai/gpt-4o-mini",
        Some(&key),
    );
    r.assert_status(200);
    let groups = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(g["model_group"], "openai/gpt-4o-mini");
    assert_eq!(g["providers"], json!(["openai"]));
    assert_eq!(g["input_cost_per_token"].as_f64(), Some(GPT_4O_MINI_IN));
    assert_eq!(g["output_cost_per_token"].as_f64(), Some(GPT_4O_MINI_OUT));
    assert_eq!(g["max_output_tokens"].as_f64(), Some(16384.0));
    let mine = s.get("/model_group/info", Some(&key)).json();
    assert_eq!(mine["data"].as_array().map(Vec::len), Some(1), "{mine}");
}

/// Two models and the proxy's aliases for them, as LiteLLM's docs write them.
const ALIASES: &str = r#"
model_list:
  - model_name: mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: big
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
litellm_settings:
  model_alias_map:
    gpt4-mini: mini
router_settings:
  routing_strategy: simple-shuffle
  model_group_alias:
    small: mini
    quiet:
      model: big
      hidden: true
general_settings:
  master_key: @MASTER_KEY@
"#;

/// `litellm_settings.model_alias_map` and `router_settings.model_group_alias`: an alias is
/// sent to its target's deployment at the target's price; a key may call it when its list
/// allows the alias or the target; `/v1/models` lists the router's aliases that are not
/// `hidden`.
#[test]
fn proxy_aliases_route_to_their_target_before_access_checks() {
    let s = Stack::start(ALIASES);
    let (key, _) = s.generate_key(json!({"models": ["mini"]}));
    for alias in ["gpt4-mini", "small", "mini"] {
        s.clear_fake_requests();
        let r = chat(&s, &key, alias);
        r.assert_status(200);
        let seen = s.fake_requests();
        assert_eq!(seen.len(), 1, "{alias}: {seen:?}");
        assert_eq!(seen[0]["body"]["model"], "gpt-4o-mini", "{alias}");
        assert_eq!(
            header_nanos(&r, "x-litellm-response-cost"),
            Some(gpt_4o_mini_cost(&r)),
            "{alias}: {:?}",
            r.headers
        );
    }
    // The hidden alias goes to `big`, which this key may not use under either name.
    chat(&s, &key, "quiet").assert_error_message(
        403,
        "key_model_access_denied",
        "The requested model 'quiet' is not available for this API key, or the model name is invalid. Check the models available to you and try again.",
    );
    // A key listing the alias itself may call it.
    let (by_alias, _) = s.generate_key(json!({"models": ["quiet"]}));
    s.clear_fake_requests();
    chat(&s, &by_alias, "quiet").assert_status(200);
    assert_eq!(s.fake_requests()[0]["body"]["model"], "gpt-4o");
    chat(&s, &by_alias, "big").assert_error(403, "key_model_access_denied");

    assert_eq!(
        listed(&s, "/v1/models", MASTER_KEY),
        ["mini", "big", "small"]
    );
    let info = s.get("/model_group/info?model_group=small", Some(MASTER_KEY));
    info.assert_status(200);
    let g = &info.json()["data"][0];
    assert_eq!(g["model_group"], "small");
    assert_eq!(g["input_cost_per_token"].as_f64(), Some(GPT_4O_MINI_IN));
}

/// A `model_group_alias` entry of a shape LiteLLM cannot use stops startup, naming it.
#[test]
fn malformed_model_group_alias_is_refused_at_startup() {
    let stderr = up_must_fail(
        &format!("{UNPRICED}router_settings:\n  model_group_alias:\n    fast: [mini]\n"),
        &[],
    );
    assert!(
        stderr.contains("router_settings.model_group_alias.fast"),
        "{stderr}"
    );
}

/// `default_key_generate_params` and `upperbound_key_generate_params` as LiteLLM's docs write
/// them: a key made without a budget gets the default one, and it binds; more than the bound
/// is refused with LiteLLM's message.
#[test]
fn key_generate_defaults_and_upper_bounds_from_the_config() {
    let config = format!(
        "{UNPRICED}litellm_settings:\n  default_key_generate_params:\n    max_budget: 0.000001\n  upperbound_key_generate_params:\n    max_budget: 1\n    rpm_limit: 50\n"
    );
    let s = Stack::start(&config);
    let (key, made) = s.generate_key(json!({}));
    assert_eq!(made["max_budget"].as_f64(), Some(0.000001), "{made}");
    assert_eq!(made["rpm_limit"].as_u64(), Some(50), "{made}");
    chat(&s, &key, "mini").assert_status(200);
    common::poll_until("key spend", common::SETTLE_TIMEOUT, || {
        match chat(&s, &key, "mini").status {
            422 => Ok(()),
            other => Err(format!("status {other}")),
        }
    });
    s.admin_post("/key/generate", &json!({"max_budget": 2}))
        .assert_error_message(
        400,
        "invalid_request_error",
        "{'error': 'max_budget is over max limit set in config - user_value=2.0; max_value=1.0'}",
    );
}

/// `general_settings.user_header_name` (LiteLLM's deprecated name for a customer header):
/// the header names the customer, whose budget then applies.
#[test]
fn user_header_name_names_the_customer() {
    let config = format!("{UNPRICED}  user_header_name: X-My-User\n");
    let s = Stack::start(&config);
    s.admin_post(
        "/budget/new",
        &json!({"budget_id": "zero", "max_budget": 0.0}),
    )
    .assert_status(200);
    s.admin_post(
        "/customer/new",
        &json!({"user_id": "broke", "budget_id": "zero"}),
    )
    .assert_status(200);
    let (key, _) = s.generate_key(json!({}));
    s.post_with(
        "/v1/chat/completions",
        &key,
        &[("x-my-user", "broke")],
        &body("mini", 5),
    )
    .assert_error_message(
        422,
        "budget_exceeded",
        "ExceededBudget: End User=broke over budget. Spend=0.0, Budget=0.0",
    );
    chat(&s, &key, "mini").assert_status(200);
}

/// `general_settings.enforce_user_param`: a key's call without `user` is refused with
/// LiteLLM's 401; with it, or with the master key, it goes through.
#[test]
fn enforce_user_param_refuses_calls_without_user() {
    let config = format!("{UNPRICED}  enforce_user_param: true\n");
    let s = Stack::start(&config);
    let (key, _) = s.generate_key(json!({}));
    s.clear_fake_requests();
    chat(&s, &key, "mini").assert_error_message(
        401,
        "auth_error",
        "Authentication Error, 'user' param not passed in. 'enforce_user_param'=True",
    );
    assert!(s.fake_requests().is_empty());
    let with_user =
        json!({"model": "mini", "user": "u1", "messages": [{"role": "user", "content": PROMPT}]});
    s.post_with("/v1/chat/completions", &key, &[], &with_user.to_string())
        .assert_status(200);
    chat(&s, MASTER_KEY, "mini").assert_status(200);
}

/// `general_settings.apply_user_budget_to_team_keys`: a user's budget binds its team keys too.
#[test]
fn user_budget_binds_team_keys_when_configured() {
    let config = format!("{UNPRICED}  apply_user_budget_to_team_keys: true\n");
    let s = Stack::start(&config);
    s.admin_post("/team/new", &json!({"team_id": "t"}))
        .assert_status(200);
    s.admin_post("/user/new", &json!({"user_id": "u", "max_budget": 0.0}))
        .assert_status(200);
    let (key, _) = s.generate_key(json!({"user_id": "u", "team_id": "t"}));
    chat(&s, &key, "mini").assert_error_message(
        422,
        "budget_exceeded",
        "ExceededBudget: User=u over budget. Spend=0.0, Budget=0.0",
    );
    // Without a user budget the team key is served.
    s.admin_post("/user/new", &json!({"user_id": "v"}))
        .assert_status(200);
    let (free, _) = s.generate_key(json!({"user_id": "v", "team_id": "t"}));
    chat(&s, &free, "mini").assert_status(200);
}
