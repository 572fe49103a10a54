//! The admin handlers through the router without a port (`oneshot`): the shared extractors
//! and the one block/unblock path for keys, teams and customers.

use super::*;

fn state() -> Arc<AdminState> {
    test_state(BudgetSettings::default(), None, |_| {})
}

fn master() -> String {
    format!("Bearer {MASTER}")
}

/// Authorization runs before the body is read: a caller without a credential gets the 401,
/// not the body's 422; an admin with a malformed body gets FastAPI's 422.
#[test]
fn authorization_comes_before_the_body() {
    let state = state();
    let a = oneshot(
        &state,
        "POST",
        "/team/new",
        "Bearer sk-nobody",
        Some(json!([1])),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    let a = oneshot(&state, "POST", "/team/new", &master(), Some(json!([1])));
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.body["detail"][0]["loc"], json!(["body"]));
    // The second name of a route is authorized as the first (`/end_user/*` = `/customer/*`).
    let (raw, _) = {
        let k = oneshot(&state, "POST", "/key/generate", &master(), Some(json!({})));
        (k.body["key"].as_str().unwrap().to_string(), ())
    };
    let a = oneshot(
        &state,
        "POST",
        "/end_user/block",
        &format!("Bearer {raw}"),
        Some(json!({"user_ids": ["c"]})),
    );
    assert_eq!(a.status, 401, "{}", a.body);
}

/// One block/unblock path serves keys, teams and customers (also as `/end_user/*`), each
/// answering as LiteLLM does and telling the filter what to forget.
#[test]
fn block_and_unblock_every_entity() {
    let state = state();
    let k = oneshot(&state, "POST", "/key/generate", &master(), Some(json!({})));
    let (raw, token) = (
        k.body["key"].as_str().unwrap().to_string(),
        k.body["token"].as_str().unwrap().to_string(),
    );
    let a = oneshot(
        &state,
        "POST",
        "/key/block",
        &master(),
        Some(json!({"key": raw})),
    );
    assert_eq!((a.status, a.body["blocked"].clone()), (200, json!(true)));
    assert_eq!(a.entries(), vec![token.clone()]);
    let a = oneshot(
        &state,
        "POST",
        "/key/unblock",
        &master(),
        Some(json!({"key": token})),
    );
    assert_eq!(a.body["blocked"], json!(false));
    let a = oneshot(
        &state,
        "POST",
        "/key/block",
        &master(),
        Some(json!({"key": "sk-none"})),
    );
    assert_eq!(a.status, 404, "{}", a.body);

    oneshot(
        &state,
        "POST",
        "/team/new",
        &master(),
        Some(json!({"team_id": "t"})),
    );
    let a = oneshot(
        &state,
        "POST",
        "/team/block",
        &master(),
        Some(json!({"team_id": "t"})),
    );
    assert_eq!((a.status, a.body["blocked"].clone()), (200, json!(true)));
    let a = oneshot(
        &state,
        "POST",
        "/team/unblock",
        &master(),
        Some(json!({"team_id": "t"})),
    );
    assert_eq!(a.body["blocked"], json!(false));

    let a = oneshot(
        &state,
        "POST",
        "/end_user/block",
        &master(),
        Some(json!({"user_ids": ["c1"]})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["blocked_users"][0]["user_id"], "c1");
    assert_eq!(a.entries(), vec!["customer:c1".to_string()]);
    let a = oneshot(
        &state,
        "POST",
        "/customer/unblock",
        &master(),
        Some(json!({"user_ids": ["c1"]})),
    );
    assert_eq!(a.body["unblocked_users"][0]["blocked"], json!(false));
    let a = oneshot(
        &state,
        "POST",
        "/customer/block",
        &master(),
        Some(json!({})),
    );
    assert_eq!(a.status, 422, "{}", a.body);
}
