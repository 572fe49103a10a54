#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Failure policy (SECURITY.md "Failure behaviour"; issue 7, item 5): a filter that cannot run
//! refuses traffic instead of letting it through, and an Envoy restart loses only the
//! process-local shared data: the spend in the sidecar's store still bounds every budget.
//! (The sidecar being down, and `kill -9`, are covered by the lead's sidecar suite.)

mod common;

use common::{envoy_bin, free_port, Stack, TempDir, MASTER_KEY};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// $0.02 on `priced`: 10 prompt tokens at the fake (OpenAI's chat count: 3 + "user" 1 + 3 for
/// the 12 letters + 3) and 5 completion tokens.
fn body() -> String {
    json!({
        "model": "priced",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "abcdefghijkl"}]
    })
    .to_string()
}

/// The filter's `on_configure` fails (its configuration is not valid): with the rendered
/// `failure_policy: FAIL_CLOSED`, Envoy does not serve the route unfiltered. It refuses the config (exits)
/// or, if it runs, answers 5xx without reaching the upstream.
#[test]
fn a_filter_that_cannot_start_fails_closed() {
    let s = Stack::start(CONFIG);
    // The static bootstrap `tollgate render` gives users (the filter configuration inline).
    let (status, rendered, err) = common::run_to_exit(
        "tollgate render",
        Command::new(common::tollgate_bin())
            .args(["render", "--format", "envoy", "--config"])
            .arg(s.config_path())
            .args(["--port", &s.port.to_string()])
            .args(["--envoy-admin-port", &free_port().to_string()])
            .arg("--wasm")
            .arg(common::tollgate_wasm())
            .env_remove("LITELLM_MASTER_KEY"),
        Duration::from_secs(30),
    );
    assert!(status.success(), "tollgate render failed: {err}");
    assert!(
        rendered.contains("failure_policy: FAIL_CLOSED"),
        "{rendered}"
    );
    let start = rendered
        .find("value: '{\"version\"")
        .expect("plugin configuration");
    let end = start
        + rendered[start..]
            .find("}'\n")
            .expect("end of the configuration")
        + 2;
    let port = free_port();
    let admin = free_port();
    let broken = format!(
        "{}value: 'this is not the plugin configuration'{}",
        &rendered[..start],
        &rendered[end..]
    )
    .replace(
        &format!("port_value: {}", s.port),
        &format!("port_value: {port}"),
    );
    // Envoy's own admin port: a fresh one.
    let admin_line = broken
        .lines()
        .take(6)
        .find(|l| l.trim_start().starts_with("port_value:"))
        .expect("admin port")
        .to_string();
    let broken = broken.replacen(&admin_line, &format!("      port_value: {admin}"), 1);
    let dir = TempDir::new("broken-envoy");
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, &broken).unwrap();
    s.clear_fake_requests();

    let log = dir.path().join("envoy.log");
    let mut envoy = Command::new(envoy_bin())
        .arg("-c")
        .arg(&path)
        .args(["--use-dynamic-base-id", "--concurrency", "1", "-l", "info"])
        .arg("--log-path")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envoy");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answers = Vec::new();
    let exited = loop {
        if let Ok(Some(status)) = envoy.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let auth = format!("Bearer {MASTER_KEY}");
        let r = common::agent()
            .post(&url)
            .set("authorization", &auth)
            .set("content-type", "application/json")
            .send_string(&body());
        match r {
            Ok(resp) => answers.push(resp.status()),
            Err(ureq::Error::Status(code, _)) => answers.push(code),
            Err(ureq::Error::Transport(_)) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = envoy.kill();
    let _ = envoy.wait();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("failure policy: broken plugin config: envoy exit {exited:?}, answers {answers:?}");
    assert!(
        log_text.contains("invalid plugin configuration"),
        "the filter's on_configure should have refused the config:\n{log_text}"
    );
    assert!(
        answers.iter().all(|s| *s >= 500),
        "a filter that cannot start must not let calls through: {answers:?}"
    );
    assert!(
        s.fake_requests().is_empty(),
        "a call reached the upstream through a broken filter"
    );
}

/// Envoy restarts on the same data dir: shared data (counters, cached keys, rpm windows,
/// parallel slots, reservations) starts empty, but spend is rebuilt from the sidecar's store,
/// so a key's budget still holds exactly, and its in-flight slot does not stay taken.
#[test]
fn an_envoy_restart_keeps_budgets_from_the_store() {
    let data = TempDir::new("restart");
    let (budgeted, limited) = {
        let s = Stack::start_with_data_dir(CONFIG, data.path());
        let (budgeted, _) = s.generate_key(json!({"max_budget": 0.06}));
        let (limited, _) = s.generate_key(json!({"rpm_limit": 2, "max_parallel_requests": 1}));
        for _ in 0..2 {
            s.post_with("/v1/chat/completions", &budgeted, &[], &body())
                .assert_status(200);
            s.post_with("/v1/chat/completions", &limited, &[], &body())
                .assert_status(200);
        }
        s.post_with("/v1/chat/completions", &limited, &[], &body())
            .assert_error(429, "throttling_error");
        // Both keys' spend in the store before the stop: each Envoy worker flushes its own
        // events on its own tick, so one key's spend arriving says nothing of the other's.
        s.wait_key_spend(&budgeted, 0.04);
        s.wait_key_spend(&limited, 0.04);
        // A call in flight when the stack stops: its slot and reservation die with Envoy.
        let bearer = format!("Bearer {limited}");
        let _ = s.abort_request(
            "/v1/chat/completions",
            &[("authorization", &bearer), ("x-fake-delay-ms", "20000")],
            &body(),
            Duration::from_millis(10),
        );
        (budgeted, limited)
    };
    let s = Stack::start_with_data_dir(CONFIG, data.path());
    // Budget: 0.04 spent before the restart, room for exactly one more $0.02 call.
    let r = s.post_with("/v1/chat/completions", &budgeted, &[], &body());
    r.assert_status(200);
    assert_eq!(
        r.header("x-litellm-key-spend"),
        Some("0.06"),
        "{:?}",
        r.headers
    );
    s.post_with("/v1/chat/completions", &budgeted, &[], &body())
        .assert_error(422, "budget_exceeded");
    // Rate windows and parallel slots are Envoy-local: they start over (documented).
    s.post_with("/v1/chat/completions", &limited, &[], &body())
        .assert_status(200);
    s.wait_key_spend(&budgeted, 0.06);
    s.wait_key_spend(&limited, 0.06);
}

/// A provider that cannot be reached: Envoy's own reply (503, "upstream connect error ...") goes
/// out in LiteLLM's error envelope instead of Envoy's plain text, nothing is charged, and the
/// call's slot and reservation are given back. The filter's own error replies keep their body.
#[test]
fn an_unreachable_provider_is_a_json_503_and_costs_nothing() {
    let dead_port = free_port();
    // A second deployment, on a port nothing listens on.
    let config = CONFIG.replace(
        "general_settings:",
        &format!(
            "  - model_name: unreachable
    litellm_params:
      model: openai/unreachable-backend
      api_base: http://127.0.0.1:{dead_port}/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
general_settings:"
        ),
    );
    let s = Stack::start(&config);
    let (key, _) = s.generate_key(json!({"max_budget": 0.05, "max_parallel_requests": 1}));
    let dead_body = body().replace("\"priced\"", "\"unreachable\"");
    for _ in 0..3 {
        let r = s.post_with("/v1/chat/completions", &key, &[], &dead_body);
        let err = r.assert_error(503, "internal_server_error");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        let message = err["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("upstream connect error"),
            "Envoy's reason is kept as the message: {message}"
        );
        assert!(err["param"].is_null(), "{}", r.body);
    }
    // Nothing charged, and the parallel slot and the budget reservation were given back each
    // time: a $0.02 call on the live model still fits the $0.05 budget twice.
    for _ in 0..2 {
        s.post_with("/v1/chat/completions", &key, &[], &body())
            .assert_status(200);
    }
    s.wait_key_spend(&key, 0.04);
    // The filter's own refusals are untouched: an unknown key is still its 401.
    s.post_with("/v1/chat/completions", "sk-not-a-key-at-all", &[], &body())
        .assert_error(401, "token_not_found_in_db");
}
