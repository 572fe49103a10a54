#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Metrics through a real `tollgate up`: after a known sequence of calls (admitted,
//! budget-refused, rate-limited, upstream 500) the sidecar's `/metrics` (reached through
//! Envoy) and Envoy's `/stats/prometheus` (its admin port on 127.0.0.1) show exact values.
//!
//! Envoy's side also carries the filter's own counters: `tollgate_requests_total{outcome,upstream}`,
//! `tollgate_tokens_total{direction}`, `tollgate_spend_nanos_total`, and its sidecar traffic:
//! `tollgate_key_lookups_total{result}`, `tollgate_spend_events_queued_total`,
//! `tollgate_spend_batches_total{result}`, `tollgate_lease_borrows_total{result}` and
//! `tollgate_lease_renewals_total{result}` (zero here: fleet mode is off).
//!
//! One call: a 12-letter prompt (10 prompt tokens at the fake) and `max_tokens` 5 (5 completion
//! tokens) at $0.001 in / $0.002 out = $0.02.

mod common;

use common::prometheus::{one, parse, values};
use common::{poll_until, sha256_hex, Stack, MASTER_KEY, SETTLE_TIMEOUT};
use serde_json::{json, Value};
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
    model_info:
      id: priced-id
general_settings:
  master_key: @MASTER_KEY@
"#;

fn body() -> String {
    json!({
        "model": "priced",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "abcdefghijkl"}]
    })
    .to_string()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Envoy's admin port, from the bootstrap `tollgate up` rendered.
fn envoy_admin_port(s: &Stack) -> u16 {
    let bootstrap: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(s.data_dir.join("envoy.yaml")).unwrap())
            .unwrap();
    let address = &bootstrap["admin"]["address"]["socket_address"];
    assert_eq!(address["address"], "127.0.0.1", "{address}");
    address["port_value"].as_u64().unwrap() as u16
}

#[test]
fn sidecar_and_envoy_metrics_count_a_known_sequence() {
    let s = Stack::start(CONFIG);
    let team = s.admin_post(
        "/team/new",
        &json!({"team_id": "t-metrics", "team_alias": "Metrics Team", "max_budget": 1.0}),
    );
    team.assert_status(200);
    s.admin_post(
        "/user/new",
        &json!({"user_id": "u-metrics", "max_budget": 0.5, "auto_create_key": false}),
    )
    .assert_status(200);
    let (budgeted, _) = s.generate_key(json!({
        "max_budget": 0.02, "key_alias": "metrics-a", "team_id": "t-metrics", "user_id": "u-metrics"
    }));
    let (limited, _) = s.generate_key(json!({
        "rpm_limit": 1, "key_alias": "metrics-b",
        "model_rpm_limit": {"priced": 3}, "model_tpm_limit": {"priced": 1000}
    }));
    let (failing, _) = s.generate_key(json!({"key_alias": "metrics-c"}));

    // Admitted, then refused for its budget once the first call's spend is settled.
    s.post_with("/v1/chat/completions", &budgeted, &[], &body())
        .assert_status(200);
    s.wait_key_spend(&budgeted, 0.02);
    let refused = s.post_with("/v1/chat/completions", &budgeted, &[], &body());
    assert_eq!(refused.status / 100, 4, "{}", refused.body);
    // Admitted, then rate-limited.
    let limited_ok = s.post_with("/v1/chat/completions", &limited, &[], &body());
    limited_ok.assert_status(200);
    s.post_with("/v1/chat/completions", &limited, &[], &body())
        .assert_status(429);
    // The upstream fails.
    s.post_with(
        "/v1/chat/completions",
        &failing,
        &[("x-fake-status", "500")],
        &body(),
    )
    .assert_status(500);
    // A key Tollgate never issued.
    s.post_with(
        "/v1/chat/completions",
        "sk-never-issued-by-tollgate",
        &[],
        &body(),
    )
    .assert_status(401);
    s.wait_spend_logs(&limited, 1);
    s.wait_spend_logs(&failing, 1);

    // LiteLLM 1.110.2 asks for auth on /metrics unless told otherwise.
    let anonymous = s.get("/metrics", None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let scraped = s.get("/metrics", Some(MASTER_KEY));
    scraped.assert_status(200);
    assert_eq!(scraped.header("server"), Some("envoy"));
    let m = parse(&scraped.body);
    let text = &scraped.body;

    let hash_a = sha256_hex(&budgeted);
    let hash_b = sha256_hex(&limited);
    let hash_c = sha256_hex(&failing);
    let call_a = [
        ("hashed_api_key", hash_a.as_str()),
        ("api_key_alias", "metrics-a"),
        ("team", "t-metrics"),
        ("user", "u-metrics"),
        ("model", "priced-backend"),
        ("requested_model", "priced"),
        ("model_id", "priced-id"),
        ("api_provider", "openai"),
        ("end_user", "None"),
    ];
    assert_eq!(
        one(&m, "litellm_requests_metric_total", &call_a),
        1.0,
        "{text}"
    );
    assert!(
        close(one(&m, "litellm_spend_metric_total", &call_a), 0.02),
        "{text}"
    );
    assert_eq!(one(&m, "litellm_input_tokens_metric_total", &call_a), 10.0);
    assert_eq!(one(&m, "litellm_output_tokens_metric_total", &call_a), 5.0);
    assert_eq!(one(&m, "litellm_total_tokens_metric_total", &call_a), 15.0);
    let call_b = [
        ("hashed_api_key", hash_b.as_str()),
        ("api_key_alias", "metrics-b"),
    ];
    assert_eq!(
        one(&m, "litellm_requests_metric_total", &call_b),
        1.0,
        "{text}"
    );
    // Refused calls never reach the ledger; the failed one is not a LiteLLM request.
    assert_eq!(
        values(&m, "litellm_requests_metric_total", &[])
            .iter()
            .sum::<f64>(),
        2.0,
        "{text}"
    );
    assert!(values(
        &m,
        "litellm_requests_metric_total",
        &[("hashed_api_key", &hash_c)]
    )
    .is_empty());
    // What the key's per-model limits had left when its successful call was admitted (the
    // headers it got), and LiteLLM's `sys.maxsize` for a key without such limits.
    let remaining = |name: &str, hash: &str| {
        one(
            &m,
            name,
            &[
                ("hashed_api_key", hash),
                ("model", "priced"),
                ("model_id", "priced-id"),
            ],
        )
    };
    let header = |name: &str| -> f64 {
        limited_ok
            .header(name)
            .unwrap_or_else(|| panic!("{name}: {:?}", limited_ok.headers))
            .parse()
            .unwrap()
    };
    let requests_left = "litellm_remaining_api_key_requests_for_model";
    let tokens_left = "litellm_remaining_api_key_tokens_for_model";
    assert_eq!(remaining(requests_left, &hash_b), 2.0, "{text}");
    assert_eq!(
        remaining(requests_left, &hash_b),
        header("x-litellm-key-remaining-requests-priced")
    );
    let tokens = remaining(tokens_left, &hash_b);
    assert!(tokens > 0.0 && tokens < 1000.0, "{text}");
    assert_eq!(tokens, header("x-litellm-key-remaining-tokens-priced"));
    assert_eq!(remaining(requests_left, &hash_a), i64::MAX as f64, "{text}");
    assert_eq!(remaining(tokens_left, &hash_a), i64::MAX as f64, "{text}");
    // Set on successful calls only (the failed key has none).
    assert!(values(&m, requests_left, &[("hashed_api_key", &hash_c)]).is_empty());
    assert_eq!(
        one(&m, "tollgate_spend_events_total", &[("result", "applied")]),
        3.0,
        "{text}"
    );
    assert!(one(&m, "tollgate_spend_batches_applied_total", &[]) >= 1.0);

    let key_a = [
        ("hashed_api_key", hash_a.as_str()),
        ("api_key_alias", "metrics-a"),
    ];
    assert!(
        close(
            one(&m, "litellm_remaining_api_key_budget_metric", &key_a),
            0.0
        ),
        "{text}"
    );
    assert!(close(
        one(&m, "litellm_api_key_max_budget_metric", &key_a),
        0.02
    ));
    let team_labels = [("team", "t-metrics"), ("team_alias", "Metrics Team")];
    assert!(
        close(
            one(&m, "litellm_remaining_team_budget_metric", &team_labels),
            0.98
        ),
        "{text}"
    );
    assert!(close(
        one(&m, "litellm_team_max_budget_metric", &team_labels),
        1.0
    ));
    let user_labels = [("user", "u-metrics")];
    assert!(
        close(
            one(&m, "litellm_remaining_user_budget_metric", &user_labels),
            0.48
        ),
        "{text}"
    );

    // Envoy's own stats, on its admin port on loopback: the one upstream 500 and the three
    // refusals (budget, rate limit, unknown key) plus the anonymous /metrics, by response class.
    let port = envoy_admin_port(&s);
    let classes = |text: &str| {
        let e = parse(text);
        ["2", "4", "5"].map(|c| {
            values(
                &e,
                "envoy_http_downstream_rq_xx",
                &[
                    ("envoy_response_code_class", c),
                    ("envoy_http_conn_manager_prefix", "tollgate"),
                ],
            )
        })
    };
    // Counted when each answer completes: poll for the last one.
    let envoy = poll_until("Envoy's /stats/prometheus", SETTLE_TIMEOUT, || {
        let r = common::prometheus::envoy_stats(port);
        // A batch is counted when the sidecar's answer reaches the filter, after it applied it.
        let e = parse(&r.body);
        let flushed = values(&e, "tollgate_spend_batches_total", &[("result", "flushed")]);
        // Histograms are merged at Envoy's stats flush (every 5 s).
        let timed: f64 = values(&e, "tollgate_admission_time_us_count", &[])
            .iter()
            .sum();
        if r.status == 200
            && classes(&r.body)[1] == [4.0]
            && flushed.first() >= Some(&1.0)
            && timed == 6.0
        {
            Ok(r.body)
        } else {
            Err(format!("{}: {}", r.status, r.body))
        }
    });
    let [ok, refused, failed] = classes(&envoy);
    assert_eq!(refused, [4.0], "{envoy}");
    assert_eq!(failed, [1.0], "{envoy}");
    assert_eq!(ok.len(), 1, "{envoy}");

    // The filter's counters (labels from the bootstrap's `stats_tags`).
    let e = parse(&envoy);
    let filter_lines: String = envoy
        .lines()
        .filter(|l| l.contains("tollgate_") && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let requests = |outcome: &str, upstream: &str| {
        one(
            &e,
            "tollgate_requests_total",
            &[("outcome", outcome), ("upstream", upstream)],
        )
    };
    for (outcome, upstream, want) in [
        ("admitted", "2xx", 2.0),
        ("admitted", "5xx", 1.0),
        ("budget", "none", 1.0),
        ("rate_limit", "none", 1.0),
        ("auth", "none", 1.0),
        ("admitted", "4xx", 0.0),
        ("model_access", "none", 0.0),
        ("bad_request", "none", 0.0),
        ("other", "none", 0.0),
    ] {
        assert_eq!(
            requests(outcome, upstream),
            want,
            "{outcome} {upstream}: {filter_lines}"
        );
    }
    assert_eq!(
        values(&e, "tollgate_requests_total", &[])
            .iter()
            .sum::<f64>(),
        6.0,
        "{filter_lines}"
    );
    // Admission time: one sample per call, by outcome, in Envoy's buckets (µs).
    let timed = |outcome: &str| {
        one(
            &e,
            "tollgate_admission_time_us_count",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(timed("admitted"), 3.0, "{filter_lines}");
    for outcome in ["budget", "rate_limit", "auth"] {
        assert_eq!(timed(outcome), 1.0, "{outcome}: {filter_lines}");
    }
    let buckets = values(
        &e,
        "tollgate_admission_time_us_bucket",
        &[("outcome", "admitted")],
    );
    assert!(buckets.len() >= 10, "{filter_lines}");
    assert_eq!(
        one(
            &e,
            "tollgate_admission_time_us_bucket",
            &[("outcome", "admitted"), ("le", "+Inf")]
        ),
        3.0,
        "{filter_lines}"
    );
    // The unknown key and the first call of each key waited for the sidecar's lookup.
    assert!(
        one(
            &e,
            "tollgate_admission_time_us_sum",
            &[("outcome", "admitted")]
        ) > 0.0,
        "{filter_lines}"
    );
    let tokens = |direction: &str| one(&e, "tollgate_tokens_total", &[("direction", direction)]);
    assert_eq!(tokens("input"), 20.0, "{filter_lines}");
    assert_eq!(tokens("output"), 10.0, "{filter_lines}");
    // Two calls at $0.02.
    assert_eq!(
        one(&e, "tollgate_spend_nanos_total", &[]),
        40_000_000.0,
        "{filter_lines}"
    );

    // The sidecar traffic: each of the four keys looked up once at the sidecar (the unknown
    // one answered "not found"), the second calls of the first two found in shared data.
    let lookups = |result: &str| one(&e, "tollgate_key_lookups_total", &[("result", result)]);
    assert_eq!(lookups("sidecar"), 4.0, "{filter_lines}");
    assert_eq!(lookups("cached"), 2.0, "{filter_lines}");
    assert_eq!(lookups("failed"), 0.0, "{filter_lines}");
    // One event per admitted call, sent in at least one batch, none put back.
    assert_eq!(
        one(&e, "tollgate_spend_events_queued_total", &[]),
        3.0,
        "{filter_lines}"
    );
    let batches = |result: &str| one(&e, "tollgate_spend_batches_total", &[("result", result)]);
    assert!(batches("flushed") >= 1.0, "{filter_lines}");
    assert_eq!(batches("retried"), 0.0, "{filter_lines}");
    for result in ["granted", "refused", "failed"] {
        assert_eq!(
            one(&e, "tollgate_lease_borrows_total", &[("result", result)]),
            0.0,
            "{filter_lines}"
        );
    }
    for result in ["sent", "failed"] {
        assert_eq!(
            one(&e, "tollgate_lease_renewals_total", &[("result", result)]),
            0.0,
            "{filter_lines}"
        );
    }
}

/// Fleet mode on one Envoy (SQLite store): each budget's first call borrows a slice, and a
/// borrow the sidecar can no longer grant is counted as refused.
#[test]
fn fleet_lease_borrows_are_counted_by_result() {
    let config = CONFIG.replace(
        "general_settings:\n",
        "general_settings:\n  tollgate_fleet: {lease_ttl_seconds: 2}\n",
    );
    let s = Stack::start(&config);
    // $100: the first call borrows a slice.
    let (roomy, _) = s.generate_key(json!({"max_budget": 100.0}));
    // 1000 nano-dollars: the first call is lent what is left and admitted (a slice admits
    // while anything of it is unused), the second, once that slice has expired, finds
    // nothing left to lend.
    let (tiny, _) = s.generate_key(json!({"max_budget": 0.000001}));
    s.post_with("/v1/chat/completions", &roomy, &[], &body())
        .assert_status(200);
    s.post_with("/v1/chat/completions", &tiny, &[], &body())
        .assert_status(200);
    s.wait_key_spend(&tiny, 0.02);
    // The slice expires (a renewal of it, sent on the next tick, lasts 2 s from its sending),
    // so the next call asks the sidecar again instead of refusing on what a renewal answer
    // told it. 3 s would do on an idle machine; 2 s more for a tick late on a loaded one.
    std::thread::sleep(Duration::from_millis(5000));
    let refused = s.post_with("/v1/chat/completions", &tiny, &[], &body());
    assert_eq!(refused.status / 100, 4, "{}", refused.body);
    // The master key has no budget to borrow for.
    s.post_with("/v1/chat/completions", MASTER_KEY, &[], &body())
        .assert_status(200);

    let port = envoy_admin_port(&s);
    let e = poll_until("the borrows on /stats/prometheus", SETTLE_TIMEOUT, || {
        let r = common::prometheus::envoy_stats(port);
        let e = parse(&r.body);
        let admitted = values(
            &e,
            "tollgate_requests_total",
            &[("outcome", "admitted"), ("upstream", "2xx")],
        );
        if admitted == [3.0] {
            Ok(e)
        } else {
            Err(format!("{}: {}", r.status, r.body))
        }
    });
    let borrows = |result: &str| one(&e, "tollgate_lease_borrows_total", &[("result", result)]);
    assert_eq!(borrows("granted"), 2.0);
    assert_eq!(borrows("refused"), 1.0);
    assert_eq!(borrows("failed"), 0.0);
    assert_eq!(
        one(
            &e,
            "tollgate_requests_total",
            &[("outcome", "budget"), ("upstream", "none")]
        ),
        1.0
    );
    // Every renewal report sent was answered.
    assert_eq!(
        one(&e, "tollgate_lease_renewals_total", &[("result", "failed")]),
        0.0
    );
}
