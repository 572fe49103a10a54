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

/// Issue 13 §3 through `tollgate up` and Envoy, as a LiteLLM admin script calls it: a user
/// made with `team_id` is a member with a working team key and LiteLLM's default member
/// permissions, reads its team; `/user/update` creates an unknown user; organizations are
/// created, read, updated, listed, given members and deleted, and bind their teams' keys.
#[test]
fn litellm_admin_scripts_for_teams_users_and_organizations() {
    let stack = Stack::default_config();
    let master = [
        ("authorization", format!("Bearer {MASTER_KEY}")),
        ("content-type", "application/json".to_string()),
    ];
    let master: Vec<(&str, &str)> = master.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let send = |method: &str, path: &str, body: serde_json::Value| {
        stack.request(method, path, &master, Some(&body.to_string()))
    };

    send(
        "POST",
        "/organization/new",
        json!({"organization_id": "org-1", "organization_alias": "Acme", "models": ["gpt-4o-mini"], "max_budget": 10.0}),
    )
    .assert_status(200);
    let info = stack.get("/organization/info?organization_id=org-1", Some(MASTER_KEY));
    info.assert_status(200);
    assert_eq!(info.json()["organization_alias"], "Acme");
    send(
        "PATCH",
        "/organization/update",
        json!({"organization_id": "org-1", "organization_alias": "Acme2"}),
    )
    .assert_status(200);
    let list = stack.get("/organization/list?org_alias=acme2", Some(MASTER_KEY));
    list.assert_status(200);
    assert_eq!(list.json()[0]["organization_id"], "org-1");

    stack
        .admin_post(
            "/team/new",
            &json!({"team_id": "t", "organization_id": "org-1"}),
        )
        .assert_status(200);
    let member = stack.admin_post("/user/new", &json!({"user_id": "m", "team_id": "t"}));
    member.assert_status(200);
    let member_key = member.json()["key"].as_str().unwrap().to_string();
    // The member's key is a team key of the organization: its models bind the team.
    chat_as(&stack, &member_key, "gpt-4o-mini", None).assert_status(200);
    chat_as(&stack, &member_key, "gpt-4o", None).assert_error(403, "org_model_access_denied");
    // LiteLLM's default member permissions: read the team, not create its keys.
    let team = stack.get("/team/info?team_id=t", Some(&member_key));
    team.assert_status(200);
    assert_eq!(team.json()["team_info"]["organization_id"], "org-1");
    stack
        .post(
            "/key/generate",
            Some(&member_key),
            &json!({"team_id": "t"}).to_string(),
        )
        .assert_error(401, "team_member_permission_error");
    stack
        .admin_post(
            "/team/member_update",
            &json!({"team_id": "t", "user_id": "m", "max_budget_in_team": 1.0}),
        )
        .assert_status(200);

    // The admin's `/user/update` on an unknown user creates it (LiteLLM 1.110.2 upserts).
    stack
        .admin_post(
            "/user/update",
            &json!({"user_id": "new", "max_budget": 2.0}),
        )
        .assert_status(200);
    let user = stack.get("/user/info?user_id=new", Some(MASTER_KEY));
    user.assert_status(200);
    assert_eq!(user.json()["user_info"]["max_budget"], 2.0);

    send(
        "POST",
        "/organization/member_add",
        json!({"organization_id": "org-1", "member": [{"role": "org_admin", "user_id": "new"}]}),
    )
    .assert_status(200);
    // Deleting the organization takes its team's keys with it.
    send(
        "DELETE",
        "/organization/delete",
        json!({"organization_ids": ["org-1"]}),
    )
    .assert_status(200);
    chat_as(&stack, &member_key, "gpt-4o-mini", None).assert_error(401, "token_not_found_in_db");
}
