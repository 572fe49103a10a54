//! `/metrics`: LiteLLM's counters fed by spend batches (new events only), its budget gauges
//! from the store, Tollgate's own series.

use super::*;

/// The value of the one series `name{labels}` (labels as encoded, in order), if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn scrape(api: &Api) -> String {
    let a = api.send("GET", "/metrics", "", None);
    assert_eq!(a.status, 200, "{}", a.body);
    a.body.as_str().unwrap().to_string()
}

#[test]
fn spend_batches_feed_litellm_metrics_once_per_event() {
    let api = Api::start(BudgetSettings::default());
    api.admin(
        "POST",
        "/team/new",
        Some(json!({"team_id": "t1", "team_alias": "Team One", "max_budget": 2.0})),
    );
    api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "alice", "max_budget": 1.0})),
    );
    let key = api.admin(
        "POST",
        "/key/generate",
        Some(json!({"user_id": "alice", "team_id": "t1", "max_budget": 0.5, "key_alias": "k-a"})),
    );
    let token2 = key["token"].as_str().unwrap().to_string();

    let mut first = event("req-1", &token2, "alice", 250_000_000);
    first.team_id = Some("t1".into());
    first.model = "gpt-a".into();
    first.model_id = "gpt-a-id".into();
    first.key_alias = Some("k-a".into());
    let mut failed = first.clone();
    failed.request_id = "req-2".into();
    failed.status = "failure".into();
    failed.spend_nanos = 0;
    let (status, v) = api.spend(vec![first.clone(), failed]);
    assert_eq!((status, &v), (200, &json!({"applied": 2, "duplicates": 0})));
    // A replayed batch is not counted again.
    let (status, v) = api.spend(vec![first]);
    assert_eq!((status, &v), (200, &json!({"applied": 0, "duplicates": 1})));

    let text = scrape(&api);
    let labels = format!(
        "{{end_user=\"None\",hashed_api_key=\"{token2}\",api_key_alias=\"k-a\",model=\"gpt-a\",\
         team=\"t1\",team_alias=\"None\",user=\"alice\",user_email=\"None\",client_ip=\"None\",\
         user_agent=\"None\",requested_model=\"gpt-a\",model_id=\"gpt-a-id\",api_provider=\"openai\"}}"
    );
    assert_eq!(
        series(&text, &format!("litellm_requests_metric_total{labels}")),
        Some(1.0),
        "{text}"
    );
    let spend_labels = labels.replace('}', ",service_tier=\"None\"}");
    assert_eq!(
        series(&text, &format!("litellm_spend_metric_total{spend_labels}")),
        Some(0.25),
        "{text}"
    );
    let token_labels = labels
        .replace(",client_ip=\"None\"", "")
        .replace(",user_agent=\"None\"", "");
    for (name, v) in [
        ("litellm_input_tokens_metric_total", 12.0),
        ("litellm_output_tokens_metric_total", 8.0),
        ("litellm_total_tokens_metric_total", 20.0),
    ] {
        assert_eq!(
            series(&text, &format!("{name}{token_labels}")),
            Some(v),
            "{name}: {text}"
        );
    }
    // The failed call is not a LiteLLM request: one series only.
    assert_eq!(
        text.matches("litellm_requests_metric_total{").count(),
        1,
        "{text}"
    );

    let key_labels = format!("{{hashed_api_key=\"{token2}\",api_key_alias=\"k-a\"}}");
    assert_eq!(
        series(
            &text,
            &format!("litellm_remaining_api_key_budget_metric{key_labels}")
        ),
        Some(0.25)
    );
    assert_eq!(
        series(
            &text,
            &format!("litellm_api_key_max_budget_metric{key_labels}")
        ),
        Some(0.5)
    );
    assert_eq!(
        series(
            &text,
            "litellm_remaining_team_budget_metric{team=\"t1\",team_alias=\"Team One\"}"
        ),
        Some(1.75)
    );
    assert_eq!(
        series(
            &text,
            "litellm_remaining_user_budget_metric{user=\"alice\"}"
        ),
        Some(0.75)
    );
    assert_eq!(
        series(&text, "litellm_user_max_budget_metric{user=\"alice\"}"),
        Some(1.0)
    );
    assert_eq!(
        series(&text, "tollgate_spend_events_total{result=\"applied\"}"),
        Some(2.0)
    );
    assert_eq!(
        series(&text, "tollgate_spend_events_total{result=\"duplicate\"}"),
        Some(1.0)
    );
    assert_eq!(
        series(&text, "tollgate_spend_batches_applied_total"),
        Some(2.0)
    );
    assert_eq!(
        series(
            &text,
            "tollgate_store_latency_seconds_count{op=\"spend_batch\"}"
        ),
        Some(2.0)
    );
    assert!(
        series(&text, "tollgate_change_log_position").unwrap() > 0.0,
        "{text}"
    );
}

/// With `require_auth_for_metrics_endpoint` on (LiteLLM 1.110.2's default), `/metrics` wants
/// an admin: none or a plain key gets LiteLLM's 401; the master key or a `proxy_admin_viewer`'s
/// key is served.
#[test]
fn metrics_auth_wants_an_admin_when_required() {
    let api = Api::start_tweaked(BudgetSettings::default(), None, |s| {
        s.require_auth_for_metrics = true
    });
    let plain = api.admin("POST", "/key/generate", Some(json!({})))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer = api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "v", "user_role": "proxy_admin_viewer"})),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    for auth in ["".to_string(), format!("Bearer {plain}")] {
        let a = api.send("GET", "/metrics", &auth, None);
        assert_eq!(a.status, 401, "{auth}: {}", a.body);
        let m = message(&a.body);
        assert!(
            m.starts_with("Unauthorized access to metrics endpoint: "),
            "{m}"
        );
        assert!(
            m.ends_with("To allow unauthenticated access, set `litellm_settings.require_auth_for_metrics_endpoint: false` in your proxy_config.yaml."),
            "{m}"
        );
    }
    for auth in [MASTER, viewer.as_str()] {
        let a = api.send("GET", "/metrics", &format!("Bearer {auth}"), None);
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a
            .body
            .as_str()
            .unwrap()
            .contains("# TYPE litellm_spend_metric counter"));
    }
}

/// LiteLLM reads the switch from `litellm_settings`; unset means on.
#[test]
fn require_auth_for_metrics_endpoint_is_read_from_litellm_settings() {
    let on = |yaml: &str| {
        crate::sidecar::litellm_config::parse(yaml)
            .unwrap()
            .config
            .litellm_settings
            .require_auth_for_metrics_endpoint
    };
    assert_eq!(on("general_settings: {master_key: sk-1}\n"), None);
    assert_eq!(
        on("litellm_settings: {require_auth_for_metrics_endpoint: false}\n"),
        Some(false)
    );
}
