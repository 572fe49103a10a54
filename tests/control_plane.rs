//! Admin changes take effect in Envoy on the very next request (issue 3): the life of a key,
//! a team block, customers. Real Envoy, real sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Stack, MASTER_KEY};
use serde_json::json;

fn chat_as(stack: &Stack, key: &str, model: &str, user: Option<&str>) -> common::Resp {
    let mut body =
        json!({"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    stack.post("/v1/chat/completions", Some(key), &body.to_string())
}

#[test]
fn life_of_a_key_is_seen_at_once() {
    let stack = Stack::default_config();
    let (key, _) = stack.generate_key(json!({"key_alias": "life"}));
    chat_as(&stack, &key, "gpt-4o-mini", None).assert_status(200);

    stack
        .admin_post("/key/update", &json!({"key": key, "models": ["gpt-4o"]}))
        .assert_status(200);
    chat_as(&stack, &key, "gpt-4o-mini", None).assert_error(403, "key_model_access_denied");
    chat_as(&stack, &key, "gpt-4o", None).assert_status(200);

    stack
        .admin_post("/key/block", &json!({"key": key}))
        .assert_status(200);
    chat_as(&stack, &key, "gpt-4o", None).assert_error_message(
        401,
        "auth_error",
        "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.",
    );
    stack
        .admin_post("/key/unblock", &json!({"key": key}))
        .assert_status(200);
    chat_as(&stack, &key, "gpt-4o", None).assert_status(200);

    stack
        .admin_post("/key/update", &json!({"key": key, "rpm_limit": 1}))
        .assert_status(200);
    chat_as(&stack, &key, "gpt-4o", None).assert_status(200);
    chat_as(&stack, &key, "gpt-4o", None).assert_error(429, "throttling_error");

    stack
        .admin_post("/key/delete", &json!({"keys": [key]}))
        .assert_status(200);
    chat_as(&stack, &key, "gpt-4o", None).assert_error(401, "token_not_found_in_db");
}

#[test]
fn regenerated_key_replaces_the_old_one_at_once() {
    let stack = Stack::default_config();
    let (old, _) = stack.generate_key(json!({"models": ["gpt-4o-mini"]}));
    chat_as(&stack, &old, "gpt-4o-mini", None).assert_status(200);
    let resp = stack.admin_post("/key/regenerate", &json!({"key": old}));
    resp.assert_status(200);
    let new = resp.json()["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    chat_as(&stack, &old, "gpt-4o-mini", None).assert_error(401, "token_not_found_in_db");
    chat_as(&stack, &new, "gpt-4o-mini", None).assert_status(200);
    chat_as(&stack, &new, "gpt-4o", None).assert_error(403, "key_model_access_denied");
}

#[test]
fn team_block_refuses_every_key_of_the_team() {
    let stack = Stack::default_config();
    stack
        .admin_post(
            "/team/new",
            &json!({"team_id": "team-a", "models": ["gpt-4o-mini"]}),
        )
        .assert_status(200);
    let (k1, _) = stack.generate_key(json!({"team_id": "team-a"}));
    let (k2, _) = stack.generate_key(json!({"team_id": "team-a"}));
    chat_as(&stack, &k1, "gpt-4o-mini", None).assert_status(200);
    chat_as(&stack, &k2, "gpt-4o", None).assert_error(403, "team_model_access_denied");

    stack
        .admin_post("/team/block", &json!({"team_id": "team-a"}))
        .assert_status(200);
    for k in [&k1, &k2] {
        chat_as(&stack, k, "gpt-4o-mini", None).assert_error_message(
            401,
            "auth_error",
            "Authentication Error, Team=team-a is blocked. Update via `/team/unblock` if you're an admin.",
        );
    }
    stack
        .admin_post("/team/unblock", &json!({"team_id": "team-a"}))
        .assert_status(200);
    chat_as(&stack, &k1, "gpt-4o-mini", None).assert_status(200);
}

#[test]
fn customer_budget_row_and_block_apply() {
    let stack = Stack::default_config();
    stack
        .admin_post(
            "/budget/new",
            &json!({"budget_id": "zero", "max_budget": 0.0}),
        )
        .assert_status(200);
    stack
        .admin_post(
            "/customer/new",
            &json!({"user_id": "cust-broke", "budget_id": "zero"}),
        )
        .assert_status(200);
    let (key, _) = stack.generate_key(json!({}));
    // gpt-4o-mini has no price in this config; a budget of $0 still blocks (spend 0 >= 0).
    let resp = chat_as(&stack, &key, "gpt-4o-mini", Some("cust-broke"));
    resp.assert_error_message(
        422,
        "budget_exceeded",
        "ExceededBudget: End User=cust-broke over budget. Spend=0.0, Budget=0.0",
    );
    chat_as(&stack, &key, "gpt-4o-mini", Some("someone-else")).assert_status(200);

    stack
        .admin_post(
            "/customer/new",
            &json!({"user_id": "cust-x", "models": ["gpt-4o"]}),
        )
        .assert_status(200);
    chat_as(&stack, &key, "gpt-4o-mini", Some("cust-x"))
        .assert_error(403, "customer_model_access_denied");
    stack
        .admin_post("/customer/block", &json!({"user_ids": ["cust-x"]}))
        .assert_status(200);
    let blocked = chat_as(&stack, &key, "gpt-4o", Some("cust-x"));
    assert_eq!(blocked.status, 401, "{}", blocked.body);
    stack
        .admin_post("/customer/unblock", &json!({"user_ids": ["cust-x"]}))
        .assert_status(200);
    chat_as(&stack, &key, "gpt-4o", Some("cust-x")).assert_status(200);
    let _ = MASTER_KEY;
}

#[test]
fn team_customer_and_model_per_team_rate_limits() {
    let stack = Stack::default_config();
    stack
        .admin_post(
            "/team/new",
            &json!({"team_id": "t-rl", "rpm_limit": 2, "model_rpm_limit": {"gpt-4o": 1}}),
        )
        .assert_status(200);
    let (k1, _) = stack.generate_key(json!({"team_id": "t-rl"}));
    let (k2, _) = stack.generate_key(json!({"team_id": "t-rl"}));
    // model_per_team: one gpt-4o call for the whole team
    let ok = chat_as(&stack, &k1, "gpt-4o", None);
    ok.assert_status(200);
    assert_eq!(
        ok.header("x-ratelimit-team-remaining-requests"),
        Some("1"),
        "{:?}",
        ok.headers
    );
    let refused = chat_as(&stack, &k2, "gpt-4o", None);
    let err = refused.assert_error(429, "throttling_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit exceeded for model_per_team: t-rl:gpt-4o."),
        "{err}"
    );
    // team rpm 2, shared by both keys: the refused call above counted too (LiteLLM counts them)
    let err = chat_as(&stack, &k1, "gpt-4o-mini", None).assert_error(429, "throttling_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit exceeded for team: t-rl."),
        "{err}"
    );

    stack
        .admin_post("/customer/new", &json!({"user_id": "c-rl", "rpm_limit": 1}))
        .assert_status(200);
    let (k3, _) = stack.generate_key(json!({}));
    let ok = chat_as(&stack, &k3, "gpt-4o-mini", Some("c-rl"));
    ok.assert_status(200);
    assert_eq!(
        ok.header("x-ratelimit-end_user-limit-requests"),
        Some("1"),
        "{:?}",
        ok.headers
    );
    let refused = chat_as(&stack, &k3, "gpt-4o-mini", Some("c-rl"));
    let err = refused.assert_error(429, "throttling_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit exceeded for end_user: c-rl."),
        "{err}"
    );
    assert_eq!(refused.header("rate_limit_type"), Some("requests"));
    chat_as(&stack, &k3, "gpt-4o-mini", Some("c-other")).assert_status(200);
}

#[test]
fn team_member_rate_limit_applies_per_member() {
    let stack = Stack::default_config();
    stack
        .admin_post(
            "/user/new",
            &json!({"user_id": "member-1", "auto_create_key": false}),
        )
        .assert_status(200);
    stack
        .admin_post(
            "/user/new",
            &json!({"user_id": "member-2", "auto_create_key": false}),
        )
        .assert_status(200);
    stack
        .admin_post(
            "/team/new",
            &json!({
                "team_id": "t-members",
                "team_member_rpm_limit": 1,
                "members_with_roles": [{"role": "user", "user_id": "member-1"}, {"role": "user", "user_id": "member-2"}]
            }),
        )
        .assert_status(200);
    let (k1, _) = stack.generate_key(json!({"team_id": "t-members", "user_id": "member-1"}));
    let (k2, _) = stack.generate_key(json!({"team_id": "t-members", "user_id": "member-2"}));
    let ok = chat_as(&stack, &k1, "gpt-4o-mini", None);
    ok.assert_status(200);
    assert_eq!(
        ok.header("x-ratelimit-team_member-limit-requests"),
        Some("1"),
        "{:?}",
        ok.headers
    );
    let err = chat_as(&stack, &k1, "gpt-4o-mini", None).assert_error(429, "throttling_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit exceeded for team_member: t-members:member-1."),
        "{err}"
    );
    // another member of the same team has a window of its own
    chat_as(&stack, &k2, "gpt-4o-mini", None).assert_status(200);
}
