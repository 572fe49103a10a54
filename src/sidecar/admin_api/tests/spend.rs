//! Spend batches from the filter and the LiteLLM endpoints that show them.

use super::*;
use crate::key_format::hash_key;

#[test]
fn spend_flows_from_batch_to_litellm_endpoints() {
    let api = Api::start(BudgetSettings {
        proxy_max_budget: Some(100.0),
        proxy_budget_duration: Some("30d".into()),
        ..Default::default()
    });
    let user = api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "alice", "max_budget": 10.0, "budget_duration": "1d"})),
    );
    assert!(user["budget_reset_at"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    assert!(user.get("spend_nanos").is_none());
    let raw = user["key"].as_str().unwrap().to_string();
    let token = hash_key(&raw);
    let key = api.admin(
        "POST",
        "/key/generate",
        Some(json!({
            "user_id": "alice", "max_budget": 5.0, "budget_duration": "1h",
            "model_max_budget": {"gpt-4o": {"budget_limit": 1.0, "time_period": "1d"}, "x": {"max_budget": 1.0}},
        })),
    );
    let token2 = key["token"].as_str().unwrap().to_string();
    assert!(key["budget_reset_at"]
        .as_str()
        .unwrap()
        .ends_with(":00:00Z"));

    // Internal endpoints want the internal token.
    let (status, _) = api.call(
        "POST",
        "/tollgate/internal/v1/spend",
        &format!("Bearer {MASTER}"),
        Some("{}".into()),
    );
    assert_eq!(status, 401);
    let (status, v) = api.spend(vec![]);
    assert_eq!((status, &v), (200, &json!({"applied": 0, "duplicates": 0})));
    let (status, v) = api.call(
        "POST",
        "/tollgate/internal/v1/spend",
        &api.internal,
        Some("{not json".into()),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let batch = vec![
        event("req-1", &token, "alice", 250_000_000),
        event("req-2", &token2, "alice", 1_000_000_000),
    ];
    let (status, v) = api.spend(batch.clone());
    assert_eq!((status, &v), (200, &json!({"applied": 2, "duplicates": 0})));
    let (_, v) = api.spend(batch);
    assert_eq!(v, json!({"applied": 0, "duplicates": 2}));

    let info = api.admin("GET", &format!("/key/info?key={raw}"), None);
    assert_eq!(info["info"]["spend"], 0.25);
    assert!(info["info"].get("spend_nanos").is_none());
    let info = api.admin("GET", "/user/info?user_id=alice", None);
    assert_eq!(info["user_info"]["spend"], 1.25);
    assert_eq!(info["keys"].as_array().unwrap().len(), 2);
    let global = api.admin("GET", "/global/spend", None);
    assert_eq!(global, json!({"spend": 1.25, "max_budget": 100.0}));

    let logs = api.admin("GET", &format!("/spend/logs?api_key={raw}"), None);
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["request_id"], "req-1");
    assert_eq!(logs[0]["api_key"], json!(token));
    assert_eq!(logs[0]["spend"], 0.25);
    assert_eq!(logs[0]["user"], "alice");
    assert_eq!(logs[0]["end_user"], "customer-1");
    assert_eq!(logs[0]["total_tokens"], 20);
    assert_eq!(logs[0]["metadata"]["estimated"], true);
    assert_eq!(logs[0]["metadata"]["user_api_key_alias"], "alias-1");
    assert!(logs[0]["startTime"].as_str().unwrap().ends_with('Z'));
    let today = &logs[0]["startTime"].as_str().unwrap()[..10];
    let all = api.admin(
        "GET",
        &format!("/spend/logs?user_id=alice&start_date={today}&end_date={today}"),
        None,
    );
    assert_eq!(all.as_array().unwrap().len(), 2);
    let none = api.admin(
        "GET",
        "/spend/logs?start_date=2000-01-01&end_date=2000-01-02",
        None,
    );
    assert_eq!(none, json!([]));
    // A virtual key sees only its user's logs; /global/spend is admin only.
    let (status, mine) = api.call(
        "GET",
        "/spend/logs?user_id=bob",
        &format!("Bearer {raw}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(mine.as_array().unwrap().len(), 2);
    let (status, _) = api.call("GET", "/global/spend", &format!("Bearer {raw}"), None);
    assert_eq!(status, 401);

    let rec = api.lookup(&token2);
    assert_eq!(rec.spend_nanos, 1_000_000_000);
    assert_eq!(rec.spend, 1.0);
    assert_eq!(rec.budget_duration.as_deref(), Some("1h"));
    assert!(rec.budget_reset_at_micros.unwrap() > now_micros());
    assert_eq!(rec.model_max_budget.len(), 1);
    assert_eq!(rec.model_max_budget["gpt-4o"].budget_duration, "1d");
    let ub = rec.user_budget.unwrap();
    assert_eq!((ub.max_budget, ub.spend_nanos), (Some(10.0), 1_250_000_000));
    assert_eq!(ub.budget_duration.as_deref(), Some("1d"));
    let pb = rec.proxy_budget.unwrap();
    assert_eq!(
        (pb.max_budget, pb.spend_nanos),
        (Some(100.0), 1_250_000_000)
    );
    assert!(pb.budget_reset_at_micros.is_some());
}

#[test]
fn spend_batches_may_exceed_the_admin_body_limit() {
    let api = Api::start(BudgetSettings::default());
    let events: Vec<SpendEvent> = (0..5000)
        .map(|i| event(&format!("big-{i:05}-{}", "x".repeat(200)), "t", "u", 1))
        .collect();
    let body = serde_json::to_string(&SpendBatch { events }).unwrap();
    assert!(body.len() > 1024 * 1024 && body.len() < MAX_SPEND_BATCH_BYTES);
    let (status, v) = api.call(
        "POST",
        "/tollgate/internal/v1/spend",
        &api.internal,
        Some(body),
    );
    assert_eq!(
        (status, &v),
        (200, &json!({"applied": 5000, "duplicates": 0}))
    );
    let global = api.admin("GET", "/global/spend", None);
    assert_eq!(global, json!({"spend": 5e-6, "max_budget": 0.0}));
    let too_big = format!(
        "{{\"events\": [], \"pad\": \"{}\"}}",
        "x".repeat(MAX_SPEND_BATCH_BYTES)
    );
    let (status, _) = api.call(
        "POST",
        "/tollgate/internal/v1/spend",
        &api.internal,
        Some(too_big),
    );
    assert_eq!(status, 413);
}
