//! `/key/*`.

use super::*;
use crate::key_format::hash_key;

#[test]
fn update_changes_fields_and_null_clears() {
    let api = Api::start(BudgetSettings::default());
    let (raw, token) = api.new_key(json!({
        "key_alias": "k1", "max_budget": 5.0, "duration": "1h", "models": ["gpt-a"],
        "rpm_limit": 3, "metadata": {"team": "x"}
    }));
    let a = api.master(
        "POST",
        "/key/update",
        Some(json!({
            "key": raw, "max_budget": null, "rpm_limit": 7, "duration": null,
            "budget_duration": "1d", "models": ["gpt-b"], "model_rpm_limit": {"gpt-b": 2},
            "spend": 1.5, "key_alias": "renamed"
        })),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.entries(), vec![token.clone()]);
    assert_eq!(a.body["max_budget"], Value::Null);
    assert_eq!(a.body["rpm_limit"], 7);
    assert_eq!(a.body["expires"], Value::Null);
    assert_eq!(a.body["key_alias"], "renamed");
    assert!(a.body.get("token").is_none());
    assert!(a.body["budget_reset_at"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    let rec = api.lookup(&token);
    assert_eq!(rec.max_budget, None);
    assert_eq!(rec.models, vec!["gpt-b"]);
    assert_eq!(rec.rpm_limit, Some(7));
    assert_eq!(rec.model_rpm_limit["gpt-b"], 2);
    assert_eq!(rec.spend_nanos, 1_500_000_000);
    assert_eq!(rec.expires_at_micros, None);
    assert_eq!(rec.budget_duration.as_deref(), Some("1d"));

    // By hash, and by alias; "-1" never expires.
    let a = api.master(
        "POST",
        "/key/update",
        Some(json!({"key": token, "duration": "2h"})),
    );
    assert!(a.body["expires"].is_string());
    let a = api.master(
        "POST",
        "/key/update",
        Some(json!({"key_alias": "renamed", "duration": "-1", "tpm_limit": 10})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["expires"], Value::Null);
    assert_eq!(api.lookup(&token).tpm_limit, Some(10));

    // Errors.
    let a = api.master(
        "POST",
        "/key/update",
        Some(json!({"key": "sk-nope-nope-nope"})),
    );
    assert_eq!(a.status, 404);
    let a = api.master(
        "POST",
        "/key/update",
        Some(json!({"key": raw, "max_budget": -1})),
    );
    assert_eq!(a.status, 400);
    assert!(message(&a.body).contains("max_budget must be a non-negative finite number"));
    let a = api.master(
        "POST",
        "/key/update",
        Some(json!({"key": raw, "budget_duration": "0d"})),
    );
    assert_eq!(a.status, 400);
    let a = api.master(
        "POST",
        "/key/update",
        Some(json!({"key": raw, "team_id": "ghost"})),
    );
    assert_eq!(a.status, 400);
    assert!(message(&a.body).contains("Team doesn't exist in db. Team=ghost"));
    let a = api.master("POST", "/key/update", Some(json!({"rpm_limit": 1})));
    assert_eq!(a.status, 422);
}

#[test]
fn delete_by_key_or_alias() {
    let api = Api::start(BudgetSettings::default());
    let (raw1, t1) = api.new_key(json!({}));
    let (_, t2) = api.new_key(json!({"key_alias": "two"}));
    let a = api.master("POST", "/key/delete", Some(json!({"keys": [raw1.clone()]})));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"deleted_keys": [raw1]}));
    assert_eq!(a.entries(), vec![t1.clone()]);
    assert!(matches!(api.lookup_any(&t1), KeyLookup::NotFound));
    let (status, v) = api.call("GET", "/key/info", &format!("Bearer {raw1}"), None);
    assert_eq!(status, 401);
    assert_eq!(v["error"]["type"], "token_not_found_in_db");
    let a = api.master("POST", "/key/delete", Some(json!({"key_aliases": ["two"]})));
    assert_eq!(a.body, json!({"deleted_keys": ["two"]}));
    assert_eq!(a.entries(), vec![t2]);
    // Unknown keys: nothing is deleted.
    let a = api.master("POST", "/key/delete", Some(json!({"keys": [t1]})));
    assert_eq!(a.status, 404);
    assert_eq!(
        api.master("POST", "/key/delete", Some(json!({}))).status,
        400
    );
}

#[test]
fn list_pages_and_filters() {
    let api = Api::start(BudgetSettings::default());
    let mut tokens = Vec::new();
    for i in 0..5 {
        let user = if i < 3 { "alice" } else { "bob" };
        tokens.push(
            api.new_key(json!({"user_id": user, "key_alias": format!("a{i}")}))
                .1,
        );
    }
    let v = api.admin("GET", "/key/list?page=1&size=2", None);
    assert_eq!(v["keys"], json!([tokens[0], tokens[1]]));
    assert_eq!(
        (&v["total_count"], &v["current_page"], &v["total_pages"]),
        (&json!(5), &json!(1), &json!(3))
    );
    let v = api.admin("GET", "/key/list?page=3&size=2", None);
    assert_eq!(v["keys"], json!([tokens[4]]));
    let v = api.admin("GET", "/key/list?user_id=bob&return_full_object=true", None);
    assert_eq!(v["total_count"], 2);
    assert_eq!(v["keys"][0]["key_alias"], "a3");
    let v = api.admin("GET", "/key/list?key_alias=a1", None);
    assert_eq!(v["keys"], json!([tokens[1]]));
    assert_eq!(api.master("GET", "/key/list?size=101", None).status, 422);
    assert_eq!(api.master("GET", "/key/list?page=0", None).status, 422);
}

#[test]
fn block_unblock() {
    let api = Api::start(BudgetSettings::default());
    let (raw, token) = api.new_key(json!({}));
    let a = api.master("POST", "/key/block", Some(json!({"key": raw})));
    assert_eq!(a.status, 200);
    assert_eq!(a.body["blocked"], true);
    assert_eq!(a.entries(), vec![token.clone()]);
    assert!(api.lookup(&token).blocked);
    let a = api.master("POST", "/key/unblock", Some(json!({"key": token.clone()})));
    assert_eq!(a.body["blocked"], false);
    assert!(!api.lookup(&token).blocked);
    let a = api.master(
        "POST",
        "/key/block",
        Some(json!({"key": "sk-missing-key-123"})),
    );
    assert_eq!(a.status, 404);
    assert_eq!(message(&a.body), "Key not found.");
}

#[test]
fn regenerate_keeps_settings_and_kills_the_old_key() {
    let api = Api::start(BudgetSettings::default());
    let (raw, token) = api.new_key(json!({"key_alias": "r", "max_budget": 3.0, "spend": 1.0}));
    let a = api.master("POST", "/key/regenerate", Some(json!({"key": raw})));
    assert_eq!(a.status, 200, "{}", a.body);
    let new_raw = a.body["key"].as_str().unwrap().to_string();
    let new_token = hash_key(&new_raw);
    assert_ne!(new_raw, raw);
    assert_eq!(a.body["token"], json!(new_token));
    assert_eq!(a.body["max_budget"], 3.0);
    assert_eq!(a.body["spend"], 1.0);
    let mut want = vec![token.clone(), new_token.clone()];
    want.sort();
    assert_eq!(a.entries(), want);
    assert!(matches!(api.lookup_any(&token), KeyLookup::NotFound));
    assert_eq!(api.lookup(&new_token).key_alias.as_deref(), Some("r"));
    // Path form with a custom new key and a changed field.
    let a = api.master(
        "POST",
        &format!("/key/{new_raw}/regenerate"),
        Some(json!({"new_key": "sk-my-custom-key-0001", "max_budget": 4.0})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["key"], "sk-my-custom-key-0001");
    assert_eq!(a.body["max_budget"], 4.0);
    assert_eq!(
        api.master("POST", "/key/regenerate", Some(json!({"key": raw})))
            .status,
        404
    );
    let a = api.master(
        "POST",
        "/key/regenerate",
        Some(json!({"key": "sk-my-custom-key-0001", "new_key": "bad"})),
    );
    assert_eq!(a.status, 400);
}

#[test]
fn internal_users_manage_their_own_keys_only() {
    let api = Api::start(BudgetSettings::default());
    let alice = api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "alice", "user_role": "internal_user"})),
    );
    let alice_key = alice["key"].as_str().unwrap().to_string();
    let bob = api.admin("POST", "/user/new", Some(json!({"user_id": "bob"})));
    let bob_key = bob["key"].as_str().unwrap().to_string();

    // Alice makes a key for herself (user_id filled in).
    let a = api.with_key(
        &alice_key,
        "POST",
        "/key/generate",
        Some(json!({"key_alias": "mine"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["user_id"], "alice");
    let mine = a.body["key"].as_str().unwrap().to_string();
    // Not for bob.
    let a = api.with_key(
        &alice_key,
        "POST",
        "/key/generate",
        Some(json!({"user_id": "bob"})),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    // She may update and block her own keys, not bob's.
    let a = api.with_key(
        &alice_key,
        "POST",
        "/key/update",
        Some(json!({"key": mine, "rpm_limit": 1})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.with_key(
        &alice_key,
        "POST",
        "/key/update",
        Some(json!({"key": bob_key, "rpm_limit": 1})),
    );
    assert_eq!(a.status, 403);
    let a = api.with_key(
        &alice_key,
        "POST",
        "/key/delete",
        Some(json!({"keys": [bob_key]})),
    );
    assert_eq!(a.status, 403);
    // She cannot reset her spend or lift her own budget.
    let a = api.with_key(
        &alice_key,
        "POST",
        "/key/update",
        Some(json!({"key": mine, "spend": 0.0})),
    );
    assert_eq!(a.status, 403);
    // A blocked key is refused everywhere.
    api.admin("POST", "/key/block", Some(json!({"key": mine})));
    let a = api.with_key(&mine, "POST", "/key/unblock", Some(json!({"key": mine})));
    assert_eq!(a.status, 401);
    assert_eq!(
        message(&a.body),
        "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin."
    );
    // Her list holds her keys only.
    let a = api.with_key(&alice_key, "GET", "/key/list", None);
    assert_eq!(a.body["total_count"], 2);
    // Admin-only routes.
    let a = api.with_key(
        &alice_key,
        "POST",
        "/user/new",
        Some(json!({"user_id": "eve"})),
    );
    assert_eq!(a.status, 401);
    assert!(message(&a.body).contains("Only proxy admin can be used"));
    assert!(message(&a.body).contains("Your role=internal_user"));
    for (method, path) in [
        ("POST", "/team/new"),
        ("POST", "/customer/new"),
        ("POST", "/budget/new"),
        ("GET", "/global/spend"),
        ("POST", "/user/update"),
    ] {
        let a = api.with_key(&alice_key, method, path, Some(json!({"user_id": "x"})));
        assert_eq!(a.status, 401, "{path}: {}", a.body);
    }
    let capped = api
        .new_key(json!({"user_id": "alice", "max_budget": 2.0}))
        .0;
    let a = api.with_key(
        &capped,
        "POST",
        "/key/update",
        Some(json!({"key": capped, "max_budget": 5.0})),
    );
    assert_eq!(a.status, 400);
    assert!(message(&a.body).contains("cannot exceed the caller's own max_budget"));
    let a = api.with_key(
        &capped,
        "POST",
        "/key/generate",
        Some(json!({"max_budget": 1.0})),
    );
    // alice has no budget of her own: a new key would be a fresh $1 (issue 12).
    assert_eq!(a.status, 403, "{}", a.body);
    api.admin(
        "POST",
        "/user/update",
        Some(json!({"user_id": "alice", "max_budget": 10.0})),
    );
    let a = api.with_key(
        &capped,
        "POST",
        "/key/generate",
        Some(json!({"max_budget": 1.0})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // A proxy_admin user's key is an admin.
    let root = api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "root", "user_role": "proxy_admin"})),
    );
    let root_key = root["key"].as_str().unwrap().to_string();
    let a = api.with_key(
        &root_key,
        "POST",
        "/user/new",
        Some(json!({"user_id": "eve"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // A viewer cannot create keys.
    let viewer = api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "v", "user_role": "internal_user_viewer"})),
    );
    let a = api.with_key(
        viewer["key"].as_str().unwrap(),
        "POST",
        "/key/generate",
        Some(json!({})),
    );
    assert_eq!(a.status, 401);
}

#[test]
fn generate_checks_the_team_and_the_new_token_is_invalidated() {
    let api = Api::start(BudgetSettings::default());
    let a = api.master("POST", "/key/generate", Some(json!({"team_id": "ghost"})));
    assert_eq!(a.status, 400);
    assert_eq!(
        message(&a.body),
        "{'error': \"Team doesn't exist in db. Team=ghost. Create team via `/team/new` call.\"}"
    );
    let a = api.master("POST", "/key/generate", Some(json!({})));
    assert_eq!(
        a.entries(),
        vec![a.body["token"].as_str().unwrap().to_string()]
    );
}

/// `litellm_settings.default_key_generate_params` fills what `/key/generate` leaves unset;
/// `upperbound_key_generate_params` fills the rest and refuses more, on `/key/update` too,
/// with LiteLLM's message.
#[test]
fn config_defaults_and_upper_bounds_for_keys() {
    use crate::sidecar::litellm_config::{KeyGenerateBounds, KeyGenerateDefaults};
    let state = test_state(BudgetSettings::default(), None, |s| {
        s.key_generate_defaults = KeyGenerateDefaults {
            max_budget: Some(5.0),
            budget_duration: Some("30d".into()),
            models: Some(vec!["gpt-a".into()]),
            metadata: Some(json!({"from": "defaults"}).as_object().unwrap().clone()),
            ..Default::default()
        };
        s.key_generate_bounds = KeyGenerateBounds {
            max_budget: Some(10.0),
            rpm_limit: Some(100),
            duration: Some("30d".into()),
            ..Default::default()
        };
    });
    let master = format!("Bearer {MASTER}");
    let generate = |body: Value| oneshot(&state, "POST", "/key/generate", &master, Some(body));
    let k = generate(json!({}));
    assert_eq!(k.status, 200, "{}", k.body);
    assert_eq!(k.body["max_budget"], 5.0);
    assert_eq!(k.body["budget_duration"], "30d");
    assert_eq!(k.body["models"], json!(["gpt-a"]));
    assert_eq!(k.body["metadata"]["from"], "defaults");
    // The bounds fill what neither the request nor the defaults set.
    assert_eq!(k.body["rpm_limit"], 100);
    assert!(k.body["expires"].is_string(), "{}", k.body);
    // What the request sets wins; an explicit null `budget_duration` never resets.
    let k = generate(json!({"max_budget": 7, "models": ["gpt-b"], "budget_duration": null}));
    assert_eq!(k.status, 200, "{}", k.body);
    assert_eq!(k.body["max_budget"], 7.0);
    assert_eq!(k.body["models"], json!(["gpt-b"]));
    assert_eq!(k.body["budget_duration"], Value::Null);
    let raw = k.body["key"].as_str().unwrap().to_string();
    for (body, text) in [
        (
            json!({"max_budget": 200}),
            "max_budget is over max limit set in config - user_value=200.0; max_value=10.0",
        ),
        (
            json!({"rpm_limit": 101}),
            "rpm_limit is over max limit set in config - user_value=101; max_value=100",
        ),
        (
            json!({"duration": "-1"}),
            "duration is over max limit set in config - user_value=-1; max_value=30d",
        ),
        (
            json!({"duration": "31d"}),
            "duration is over max limit set in config - user_value=31d; max_value=30d",
        ),
    ] {
        let a = generate(body.clone());
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(message(&a.body), format!("{{'error': '{text}'}}"), "{body}");
        let mut update = body.clone();
        update["key"] = json!(raw);
        let a = oneshot(&state, "POST", "/key/update", &master, Some(update));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(message(&a.body), format!("{{'error': '{text}'}}"), "{body}");
    }
    // Within the bounds, an update passes and fills nothing in.
    let a = oneshot(
        &state,
        "POST",
        "/key/update",
        &master,
        Some(json!({"key": raw, "max_budget": 10, "duration": "1d"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["rpm_limit"], 100);
}
