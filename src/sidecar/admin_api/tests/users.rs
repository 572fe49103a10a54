//! `/user/*`.

use super::*;

#[test]
fn update_delete_and_list_users() {
    let api = Api::start(BudgetSettings::default());
    let alice = api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "alice", "user_email": "a@x.io", "max_budget": 10.0})),
    );
    let alice_token = alice["token"].as_str().unwrap().to_string();
    let (_, extra) = api.new_key(json!({"user_id": "alice"}));
    api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "bob", "user_email": "b@x.io", "auto_create_key": false})),
    );

    let a = api.master(
        "POST",
        "/user/update",
        Some(json!({"user_id": "alice", "max_budget": null, "models": ["gpt-b"], "rpm_limit": 4, "budget_duration": "1d"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["user_id"], "alice");
    assert_eq!(a.body["data"]["max_budget"], Value::Null);
    assert_eq!(a.body["data"]["rpm_limit"], 4);
    let mut want = vec![alice_token.clone(), extra.clone()];
    want.sort();
    assert_eq!(a.entries(), want);
    let rec = api.lookup(&alice_token);
    assert_eq!(rec.user_models, vec!["gpt-b"]);
    assert_eq!(rec.user_rpm_limit, Some(4));
    assert_eq!(rec.user_budget.unwrap().max_budget, None);
    // By email; a taken email is refused; a bad role too.
    let a = api.master(
        "POST",
        "/user/update",
        Some(json!({"user_email": "b@x.io", "user_alias": "B"})),
    );
    assert_eq!(a.body["data"]["user_alias"], "B");
    let a = api.master(
        "POST",
        "/user/update",
        Some(json!({"user_id": "alice", "user_email": "b@x.io"})),
    );
    assert_eq!(a.status, 400);
    let a = api.master(
        "POST",
        "/user/update",
        Some(json!({"user_id": "alice", "user_role": "god"})),
    );
    assert_eq!(a.status, 400);
    // The admin updating a user that does not exist creates it (LiteLLM 1.110.2 upserts).
    let a = api.master(
        "POST",
        "/user/update",
        Some(json!({"user_id": "zed", "max_budget": 3.0, "user_email": "zed@x.io"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let zed = api.admin("GET", "/user/info?user_id=zed", None);
    assert_eq!(zed["user_info"]["max_budget"], 3.0);
    assert_eq!(zed["user_info"]["user_email"], "zed@x.io");
    let a = api.master(
        "POST",
        "/user/update",
        Some(json!({"user_email": "new@x.io", "user_alias": "New"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"]["user_email"], "new@x.io");
    assert_eq!(a.body["data"]["user_id"].as_str().unwrap().len(), 36);

    let v = api.admin("GET", "/user/list?page=1&page_size=1", None);
    assert_eq!(
        (v["total"].clone(), v["total_pages"].clone()),
        (json!(4), json!(4))
    );
    assert_eq!(v["users"][0]["user_id"], "alice");
    let v = api.admin("GET", "/user/list?role=internal_user", None);
    assert_eq!(v["total"], 2);

    // Deleting a user deletes its keys.
    let a = api.master("POST", "/user/delete", Some(json!({"user_ids": ["alice"]})));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"deleted_users": ["alice"]}));
    assert_eq!(a.entries(), want);
    assert!(matches!(api.lookup_any(&alice_token), KeyLookup::NotFound));
    assert!(matches!(api.lookup_any(&extra), KeyLookup::NotFound));
    assert_eq!(
        api.master("GET", "/user/info?user_id=alice", None).status,
        404
    );
    assert_eq!(
        api.master("POST", "/user/delete", Some(json!({}))).status,
        422
    );
}

#[test]
fn users_see_only_themselves() {
    let api = Api::start(BudgetSettings::default());
    let alice = api.admin("POST", "/user/new", Some(json!({"user_id": "alice"})));
    api.admin("POST", "/user/new", Some(json!({"user_id": "bob"})));
    let key = alice["key"].as_str().unwrap();
    let a = api.with_key(key, "GET", "/user/info", None);
    assert_eq!(a.status, 200);
    assert_eq!(a.body["user_id"], "alice");
    assert_eq!(
        api.with_key(key, "GET", "/user/info?user_id=bob", None)
            .status,
        403
    );
    assert_eq!(api.with_key(key, "GET", "/user/list", None).status, 401);
    assert_eq!(
        api.with_key(
            key,
            "POST",
            "/user/delete",
            Some(json!({"user_ids": ["bob"]}))
        )
        .status,
        401
    );
}

/// `/user/new` on a taken id or email: LiteLLM's 409 from `_check_duplicate_user_field`.
#[test]
fn duplicate_user_is_409_as_litellm() {
    let state = test_state(BudgetSettings::default(), None, |_| {});
    let master = format!("Bearer {MASTER}");
    let new = |body: Value| oneshot(&state, "POST", "/user/new", &master, Some(body));
    assert_eq!(
        new(json!({"user_id": "u1", "user_email": "u@x.io"})).status,
        200
    );
    let a = new(json!({"user_id": "u1"}));
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(
        message(&a.body),
        "{'error': 'User with id u1 already exists'}"
    );
    let a = new(json!({"user_id": "u2", "user_email": "u@x.io"}));
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(
        message(&a.body),
        "{'error': 'User with email u@x.io already exists'}"
    );
}

/// A wrong master key and an unknown key get LiteLLM's authentication messages on the admin
/// API too.
#[test]
fn wrong_credentials_get_litellms_messages() {
    let state = test_state(BudgetSettings::default(), None, |_| {});
    let a = oneshot(&state, "GET", "/key/list", "Bearer sk-wrong-master", None);
    assert_eq!(a.status, 401);
    assert_eq!(a.body["error"]["type"], "token_not_found_in_db");
    assert_eq!(a.body["error"]["param"], "key");
    assert_eq!(
        message(&a.body),
        "Authentication Error, Invalid API key provided."
    );
    let a = oneshot(&state, "GET", "/key/list", "Bearer wrong-master-key", None);
    assert_eq!(a.status, 401);
    assert_eq!(a.body["error"]["type"], "auth_error");
    assert_eq!(
        message(&a.body),
        "LiteLLM Virtual Key expected. Received=wron****-key, expected to start with 'sk-'."
    );
}
