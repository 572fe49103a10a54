//! `POST /tollgate/internal/v1/leases` (fleet mode).

use super::*;
use crate::records::{LeaseAnswer, LeaseItem, LeaseRequest};

fn item(level: &str, ids: &[&str], used: i64, want: i64) -> LeaseItem {
    LeaseItem {
        scope: crate::budgets::scope_name(level, ids),
        level: level.into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        used,
        want,
        ..Default::default()
    }
}

fn lease(api: &Api, seq: u64, items: Vec<LeaseItem>) -> (u16, Value) {
    let body = serde_json::to_string(&LeaseRequest {
        envoy_id: "0123456789abcdef0123456789abcdef".into(),
        seq,
        items,
    })
    .unwrap();
    api.call(
        "POST",
        crate::contract::LEASES_PATH,
        &api.internal,
        Some(body),
    )
}

#[test]
fn leases_answer_each_budget_in_the_request_order() {
    let api = Api::start(BudgetSettings {
        proxy_max_budget: Some(100.0),
        proxy_budget_duration: Some("30d".into()),
        ..Default::default()
    });
    let key = api.admin(
        "POST",
        "/key/generate",
        Some(json!({
            "max_budget": 5.0,
            "model_max_budget": {"gpt-4o": {"budget_limit": 1.0, "time_period": "1d"}},
        })),
    );
    let token = key["token"].as_str().unwrap().to_string();

    // The internal token only; malformed requests are 400 in LiteLLM's envelope.
    let (status, _) = api.call(
        "POST",
        crate::contract::LEASES_PATH,
        &format!("Bearer {MASTER}"),
        Some("{}".into()),
    );
    assert_eq!(status, 401);
    for bad in [
        vec![item("org", &["o"], 0, 1)],
        vec![LeaseItem {
            scope: "key:other".into(),
            ..item("key", &[&token], 0, 1)
        }],
    ] {
        let (status, v) = lease(&api, 1, bad);
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    let want = 10_000_000; // one cent
    let (status, v) = lease(
        &api,
        2,
        vec![
            item("proxy", &[], 0, want),
            item("key", &[&token], 0, want),
            item("key_model", &[&token, "gpt-4o"], 0, want),
            item("user", &["nobody"], 3, want),
        ],
    );
    assert_eq!(status, 200, "{v}");
    let a: LeaseAnswer = serde_json::from_value(v).unwrap();
    let scopes: Vec<&str> = a.items.iter().map(|g| g.scope.as_str()).collect();
    assert_eq!(
        scopes,
        [
            "proxy:litellm-proxy-budget".to_string(),
            format!("key:{token}"),
            format!("key_model:{token}:gpt-4o"),
            "user:nobody".to_string()
        ]
    );
    let maxes: Vec<Option<i64>> = a.items.iter().map(|g| g.max_nanos).collect();
    assert_eq!(
        maxes,
        [
            Some(100_000_000_000),
            Some(5_000_000_000),
            Some(1_000_000_000),
            None
        ]
    );
    assert!(a.items[..3]
        .iter()
        .all(|g| g.grant == want && g.ttl_ms == 10_000));
    // The proxy budget's period is its reset time; a key without a duration has none; the
    // model budget's window opened now for a day.
    assert!(a.items[0].period > now_micros());
    assert_eq!(a.items[1].period, 0);
    let day = 86_400_000_000;
    assert!((a.items[2].period - now_micros() - day).abs() < 60_000_000);
    // Tracked only (no record): used + want.
    assert_eq!(a.items[3].grant, 3 + want);
}
