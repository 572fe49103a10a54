//! Who may call which admin route (issue 12): every route with every kind of caller, against
//! LiteLLM's route checks (SECURITY.md, "Admin API rights"); then what a key may create.

use super::*;

/// The kinds of caller. The letters are the columns of [`RIGHTS`].
const CALLERS: [(char, &str); 8] = [
    ('M', "master key"),
    ('A', "key of a proxy_admin user"),
    ('V', "key of a proxy_admin_viewer user"),
    ('I', "key of an internal_user"),
    ('W', "key of an internal_user_viewer"),
    ('T', "team key without user"),
    ('N', "key without user or team"),
    ('R', "key whose user_id has no user row"),
];

/// Route, body, and the callers the route check lets through. Everyone else is refused
/// before the handler: `proxy_admin_viewer` with 403, the others with LiteLLM's 401.
const RIGHTS: &[(&str, &str, &str)] = &[
    ("POST /key/generate", "{}", "MAIT"),
    ("POST /key/update", r#"{"key":"VICTIM"}"#, "MAIT"),
    (
        "POST /key/delete",
        r#"{"keys":["sk-no-such-key-000000"]}"#,
        "MAI",
    ),
    (
        "POST /key/regenerate",
        r#"{"key":"sk-no-such-key-000000"}"#,
        "MAI",
    ),
    ("POST /key/sk-no-such-key-000000/regenerate", "{}", "MAI"),
    (
        "POST /key/block",
        r#"{"key":"sk-no-such-key-000000"}"#,
        "MAI",
    ),
    (
        "POST /key/unblock",
        r#"{"key":"sk-no-such-key-000000"}"#,
        "MAI",
    ),
    ("GET /key/info?key=VICTIM", "", "MAVIWTNR"),
    ("GET /key/list", "", "MAVIWTNR"),
    ("POST /user/new", r#"{"auto_create_key":false}"#, "MA"),
    ("POST /user/update", r#"{"user_id":"nobody"}"#, "MA"),
    ("POST /user/delete", r#"{"user_ids":["nobody"]}"#, "MA"),
    ("GET /user/info?user_id=internal", "", "MAVIWTNR"),
    ("GET /user/list", "", "MAV"),
    ("POST /team/new", "{}", "MA"),
    ("POST /team/delete", r#"{"team_ids":["nope"]}"#, "MA"),
    ("POST /team/block", r#"{"team_id":"nope"}"#, "MA"),
    ("POST /team/unblock", r#"{"team_id":"nope"}"#, "MA"),
    ("POST /team/update", r#"{"team_id":"t"}"#, "MAIWTNR"),
    (
        "POST /team/member_add",
        r#"{"team_id":"t","member":{"user_id":"x","role":"user"}}"#,
        "MAIWTNR",
    ),
    (
        "POST /team/member_delete",
        r#"{"team_id":"t","user_id":"x"}"#,
        "MAIWTNR",
    ),
    (
        "POST /team/member_update",
        r#"{"team_id":"t","user_id":"x","role":"admin"}"#,
        "MAIWTNR",
    ),
    ("GET /team/info?team_id=t", "", "MAVIWTNR"),
    ("GET /team/list", "", "MAVIWTNR"),
    (
        "POST /organization/new",
        r#"{"organization_alias":"o"}"#,
        "MA",
    ),
    (
        "PATCH /organization/update",
        r#"{"organization_id":"o"}"#,
        "MA",
    ),
    (
        "DELETE /organization/delete",
        r#"{"organization_ids":["nope"]}"#,
        "MA",
    ),
    ("GET /organization/list", "", "MAVIWTNR"),
    ("GET /organization/info?organization_id=o", "", "MAV"),
    (
        "POST /organization/member_add",
        r#"{"organization_id":"o","member":{"user_id":"x","role":"internal_user"}}"#,
        "MA",
    ),
    (
        "PATCH /organization/member_update",
        r#"{"organization_id":"o","user_id":"x","role":"org_admin"}"#,
        "MA",
    ),
    (
        "DELETE /organization/member_delete",
        r#"{"organization_id":"o","user_id":"x"}"#,
        "MA",
    ),
    ("POST /customer/new", r#"{"user_id":"cust-new"}"#, "MA"),
    ("POST /customer/update", r#"{"user_id":"cust"}"#, "MA"),
    ("POST /customer/delete", r#"{"user_ids":["nobody"]}"#, "MA"),
    ("POST /customer/block", r#"{"user_ids":["cust"]}"#, "MA"),
    ("POST /customer/unblock", r#"{"user_ids":["cust"]}"#, "MA"),
    ("GET /customer/info?end_user_id=cust", "", "MAV"),
    ("GET /customer/list", "", "MAV"),
    ("POST /end_user/new", r#"{"user_id":"cust-new-2"}"#, "MA"),
    ("GET /end_user/list", "", "MAV"),
    ("POST /budget/new", "{}", "MA"),
    ("POST /budget/update", r#"{"budget_id":"nope"}"#, "MA"),
    ("POST /budget/delete", r#"{"id":"nope"}"#, "MA"),
    ("POST /budget/info", r#"{"budgets":["nope"]}"#, "MAV"),
    ("GET /budget/info?budget_id=nope", "", "MAV"),
    ("GET /budget/list", "", "MAV"),
    ("GET /spend/logs", "", "MAVIW"),
    ("GET /global/spend", "", "MAV"),
    ("GET /model/info", "", "MAVIWTNR"),
    ("GET /v1/model/info", "", "MAVIWTNR"),
    ("GET /health/readiness", "", "MAVIWTNR"),
    ("GET /health/liveliness", "", "MAVIWTNR"),
];

/// Whether the answer is the route check's refusal (rather than the handler's).
fn refused_by_route(a: &Answer) -> Option<u16> {
    let m = message(&a.body);
    if a.status == 401 && m.contains("Only proxy admin can be used") {
        return Some(401);
    }
    if a.status == 403 && m.contains("user not allowed to access this route") {
        return Some(403);
    }
    None
}

/// Raw keys of each kind of caller (the master key for `M`).
fn callers(api: &Api) -> Vec<(char, String)> {
    api.admin("POST", "/team/new", Some(json!({"team_id": "t"})));
    let user_key = |id: &str, role: &str| {
        let u = api.admin(
            "POST",
            "/user/new",
            Some(json!({"user_id": id, "user_role": role})),
        );
        u["key"].as_str().unwrap().to_string()
    };
    vec![
        ('M', MASTER.to_string()),
        ('A', user_key("admin", "proxy_admin")),
        ('V', user_key("viewer", "proxy_admin_viewer")),
        ('I', user_key("internal", "internal_user")),
        ('W', user_key("iviewer", "internal_user_viewer")),
        ('T', api.new_key(json!({"team_id": "t"})).0),
        ('N', api.new_key(json!({})).0),
        ('R', api.new_key(json!({"user_id": "ghost"})).0),
    ]
}

#[test]
fn every_route_with_every_kind_of_caller() {
    let api = Api::start(BudgetSettings::default());
    let callers = callers(&api);
    api.admin("POST", "/customer/new", Some(json!({"user_id": "cust"})));
    let (victim, _) = api.new_key(json!({"key_alias": "victim"}));
    let mut wrong = Vec::new();
    for (route, body, allowed) in RIGHTS {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("VICTIM", &victim);
        let body = body.replace("VICTIM", &victim);
        for (who, raw) in &callers {
            let a = api.send(
                method,
                &path,
                &format!("Bearer {raw}"),
                (!body.is_empty()).then(|| body.clone()),
            );
            let want = if allowed.contains(*who) {
                None
            } else if *who == 'V' {
                Some(403)
            } else {
                Some(401)
            };
            if refused_by_route(&a) != want {
                let name = CALLERS.iter().find(|(c, _)| c == who).unwrap().1;
                wrong.push(format!(
                    "{route} by {name}: want {want:?}, got {} {}",
                    a.status, a.body
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // A customer is no caller: its id is no credential.
    let a = api.with_key("cust", "GET", "/customer/info?end_user_id=cust", None);
    assert_eq!(a.status, 401);
}

/// Issue 12's reproduction: a key without user, with a tiny budget and one model, asks for a
/// key with another model and no budget.
#[test]
fn a_key_without_user_cannot_mint_keys() {
    let api = Api::start(BudgetSettings::default());
    let (parent, _) = api.new_key(json!({"max_budget": 0.000001, "models": ["gpt-a"]}));
    let a = api.with_key(
        &parent,
        "POST",
        "/key/generate",
        Some(json!({"models": ["gpt-b"]})),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(
        message(&a.body),
        "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route=/key/generate. Your role=unknown. Your user_id=unknown"
    );
    // Nor may it widen itself.
    let a = api.with_key(
        &parent,
        "POST",
        "/key/update",
        Some(json!({"key": parent, "max_budget": null})),
    );
    assert_eq!(a.status, 401, "{}", a.body);
}

/// An internal user's key creates keys only inside its own limits; what it leaves open is
/// taken from it.
#[test]
fn a_users_key_creates_nothing_wider_than_itself() {
    let api = Api::start(BudgetSettings::default());
    // The user's own budget covers all its keys (see `children_do_not_multiply_a_budget`).
    api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "u", "auto_create_key": false, "max_budget": 10})),
    );
    let (mine, my_token) = api.new_key(json!({
        "user_id": "u", "models": ["gpt-a"], "max_budget": 1.0, "budget_duration": "30d",
        "tpm_limit": 100, "rpm_limit": 10, "max_parallel_requests": 2, "duration": "1d",
        "model_max_budget": {"gpt-a": {"budget_limit": 0.5, "time_period": "30d"}},
        "model_rpm_limit": {"gpt-a": 5},
    }));
    let wider = [
        json!({"models": ["gpt-b"]}),
        json!({"models": ["all-proxy-models"]}),
        json!({"max_budget": 2.0}),
        json!({"budget_duration": "1d"}),
        json!({"tpm_limit": 1000}),
        json!({"rpm_limit": 11}),
        json!({"max_parallel_requests": 3}),
        json!({"duration": "30d"}),
        json!({"model_max_budget": {"gpt-a": {"budget_limit": 5, "time_period": "30d"}}}),
        json!({"model_rpm_limit": {"gpt-a": 50}}),
    ];
    for body in wider {
        let a = api.with_key(&mine, "POST", "/key/generate", Some(body.clone()));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
    for (field, body) in [
        (
            "permissions",
            json!({"permissions": {"get_spend_routes": true}}),
        ),
        (
            "allowed_routes",
            json!({"allowed_routes": ["/key/generate"]}),
        ),
        ("spend", json!({"spend": -100})),
        ("budget_id", json!({"budget_id": "b"})),
    ] {
        let a = api.with_key(&mine, "POST", "/key/generate", Some(body.clone()));
        assert_eq!(a.status, 403, "{body}: {}", a.body);
        assert!(message(&a.body).contains(field), "{}", a.body);
    }
    let a = api.with_key(&mine, "POST", "/key/generate", Some(json!({})));
    assert_eq!(a.status, 200, "{}", a.body);
    let child = &a.body;
    assert_eq!(child["user_id"], "u");
    assert_eq!(child["models"], json!(["gpt-a"]));
    assert_eq!(child["max_budget"], 1.0);
    assert_eq!(child["tpm_limit"], 100);
    assert_eq!(child["rpm_limit"], 10);
    assert_eq!(child["max_parallel_requests"], 2);
    assert!(!child["expires"].is_null());
    assert_eq!(child["model_max_budget"]["gpt-a"]["budget_limit"], 0.5);
    assert_eq!(child["metadata"]["model_rpm_limit"]["gpt-a"], 5);
    let narrower =
        json!({"models": ["gpt-a"], "max_budget": 0.5, "budget_duration": "60d", "rpm_limit": 1});
    let a = api.with_key(&mine, "POST", "/key/generate", Some(narrower));
    assert_eq!(a.status, 200, "{}", a.body);

    // Nor may it widen itself (or a sibling) by an update.
    for body in [
        json!({"key": my_token, "models": []}),
        json!({"key": my_token, "max_budget": null}),
        json!({"key": my_token, "tpm_limit": null}),
        json!({"key": my_token, "duration": null}),
        json!({"key": my_token, "budget_duration": "1h"}),
    ] {
        let a = api.with_key(&mine, "POST", "/key/update", Some(body.clone()));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
    for body in [
        json!({"key": my_token, "user_id": null}),
        json!({"key": my_token, "team_id": "t"}),
        json!({"key": my_token, "permissions": {"get_spend_routes": true}}),
    ] {
        let a = api.with_key(&mine, "POST", "/key/update", Some(body.clone()));
        assert!(matches!(a.status, 400 | 403), "{body}: {}", a.body);
    }
    let a = api.with_key(
        &mine,
        "POST",
        "/key/update",
        Some(json!({"key": my_token, "key_alias": "renamed", "rpm_limit": 5})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.with_key(
        &mine,
        "POST",
        "/key/regenerate",
        Some(json!({"key": my_token, "max_budget": 100})),
    );
    assert_eq!(a.status, 400, "{}", a.body);
}

/// A team's key without user creates keys for its own team only.
#[test]
fn a_team_key_creates_keys_for_its_team_only() {
    let api = Api::start(BudgetSettings::default());
    api.admin(
        "POST",
        "/team/new",
        Some(json!({"team_id": "t", "max_budget": 5})),
    );
    api.admin("POST", "/team/new", Some(json!({"team_id": "other"})));
    let (team_key, _) = api.new_key(json!({"team_id": "t", "max_budget": 1.0}));
    for body in [
        json!({}),
        json!({"team_id": "other"}),
        json!({"team_id": "t", "user_id": "x"}),
    ] {
        let a = api.with_key(&team_key, "POST", "/key/generate", Some(body.clone()));
        assert_eq!(a.status, 403, "{body}: {}", a.body);
    }
    let a = api.with_key(
        &team_key,
        "POST",
        "/key/generate",
        Some(json!({"team_id": "t", "max_budget": 2.0})),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    let a = api.with_key(
        &team_key,
        "POST",
        "/key/generate",
        Some(json!({"team_id": "t"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["team_id"], "t");
    assert_eq!(a.body["max_budget"], 1.0);
}

/// A key's owner cannot undo an admin's block: only proxy admins and admins of the key's team
/// block or unblock (LiteLLM's `_check_key_admin_access`), by any route.
#[test]
fn an_owner_cannot_unblock_its_key() {
    let api = Api::start(BudgetSettings::default());
    for u in ["u", "lead"] {
        api.admin(
            "POST",
            "/user/new",
            Some(json!({"user_id": u, "auto_create_key": false})),
        );
    }
    api.admin(
        "POST",
        "/team/new",
        // Members may use every key route, so what refuses below is the block rule alone.
        Some(json!({"team_id": "t", "members_with_roles": [
            {"user_id": "u", "role": "user"}, {"user_id": "lead", "role": "admin"}],
            "team_member_permissions": ["/key/generate", "/key/update", "/key/regenerate",
                "/key/block", "/key/unblock", "/key/delete"]})),
    );
    let (mine, _) = api.new_key(json!({"user_id": "u"}));
    let (blocked, blocked_token) = api.new_key(json!({"user_id": "u", "team_id": "t"}));
    api.admin("POST", "/key/block", Some(json!({"key": blocked_token})));
    for (path, body) in [
        ("/key/unblock", json!({"key": blocked_token})),
        (
            "/key/update",
            json!({"key": blocked_token, "blocked": false}),
        ),
        (
            "/key/regenerate",
            json!({"key": blocked_token, "blocked": false}),
        ),
    ] {
        let a = api.with_key(&mine, "POST", path, Some(body.clone()));
        assert_eq!(a.status, 403, "{path} {body}: {}", a.body);
        assert!(
            message(&a.body).contains("Only proxy admins, team admins, or org admins"),
            "{}",
            a.body
        );
    }
    assert!(api.lookup(&blocked_token).blocked);
    // Nor may it block (LiteLLM: admins only); an unrelated update keeps the block.
    let a = api.with_key(&mine, "POST", "/key/block", Some(json!({"key": mine})));
    assert_eq!(a.status, 403, "{}", a.body);
    let a = api.with_key(
        &mine,
        "POST",
        "/key/update",
        Some(json!({"key": blocked_token, "key_alias": "x", "blocked": true})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.with_key(&blocked, "GET", "/key/info", None);
    assert_eq!(a.status, 401, "{}", a.body);
    // The team's admin may unblock.
    let lead = api.new_key(json!({"user_id": "lead"})).0;
    let a = api.with_key(
        &lead,
        "POST",
        "/key/unblock",
        Some(json!({"key": blocked_token})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!api.lookup(&blocked_token).blocked);
}

/// A team admin cannot lift its own team's limits: by default it may change nothing on
/// `/team/update` (LiteLLM's `team_admin_editable_team_fields` is empty), and what a proxy
/// admin opens never includes models, per-model budgets or removing/raising `max_budget`.
#[test]
fn a_team_admin_cannot_lift_its_teams_limits() {
    let team_admin = |api: &Api| {
        api.admin(
            "POST",
            "/user/new",
            Some(json!({"user_id": "u", "auto_create_key": false})),
        );
        api.admin(
            "POST",
            "/team/new",
            Some(json!({"team_id": "T", "max_budget": 1, "models": ["gpt-a"],
                "members_with_roles": [{"user_id": "u", "role": "admin"}]})),
        );
        api.new_key(json!({"user_id": "u"})).0
    };
    let api = Api::start(BudgetSettings::default());
    let u = team_admin(&api);
    for body in [
        json!({"team_id": "T", "max_budget": null, "models": []}),
        json!({"team_id": "T", "max_budget": 0.5}),
        json!({"team_id": "T", "team_alias": "x"}),
    ] {
        let a = api.with_key(&u, "POST", "/team/update", Some(body.clone()));
        assert_eq!(a.status, 403, "{body}: {}", a.body);
        assert!(
            message(&a.body).contains("Team admins on this proxy cannot edit team settings"),
            "{}",
            a.body
        );
    }
    let team = api.admin("GET", "/team/info?team_id=T", None);
    assert_eq!(team["team_info"]["max_budget"], 1.0);
    assert_eq!(team["team_info"]["models"], json!(["gpt-a"]));

    // With fields opened, only those, and the budget only downwards.
    let api = Api::start_tweaked(BudgetSettings::default(), None, |s| {
        s.team_admin_editable_team_fields = ["max_budget", "rpm_limit", "metadata"]
            .map(String::from)
            .to_vec();
    });
    let u = team_admin(&api);
    for (body, says) in [
        (json!({"team_id": "T", "models": []}), "'models'"),
        (
            json!({"team_id": "T", "model_max_budget": {"gpt-a": {"budget_limit": 9, "time_period": "1d"}}}),
            "'model_max_budget'",
        ),
        (json!({"team_id": "T", "tpm_limit": 5}), "'tpm_limit'"),
        (
            json!({"team_id": "T", "team_member_budget": 5}),
            "'team_member_budget'",
        ),
        (
            json!({"team_id": "T", "model_rpm_limit": {"gpt-a": 9}}),
            "'model_rpm_limit'",
        ),
        (
            json!({"team_id": "T", "max_budget": null}),
            "remove a team's max_budget",
        ),
        (
            json!({"team_id": "T", "max_budget": 2}),
            "raise a team's max_budget",
        ),
    ] {
        let a = api.with_key(&u, "POST", "/team/update", Some(body.clone()));
        assert_eq!(a.status, 403, "{body}: {}", a.body);
        assert!(message(&a.body).contains(says), "{body}: {}", a.body);
    }
    let a = api.with_key(
        &u,
        "POST",
        "/team/update",
        Some(
            json!({"team_id": "T", "max_budget": 0.5, "rpm_limit": 3, "models": ["gpt-a"],
            "metadata": {"owner": "ops"}}),
        ),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"]["max_budget"], 0.5);
    assert_eq!(a.body["data"]["rpm_limit"], 3);
    // The proxy admin still may do anything.
    let a = api.master(
        "POST",
        "/team/update",
        Some(json!({"team_id": "T", "max_budget": null, "models": []})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Issue 12 (R2): the ceiling is what the calling key may itself do, limits it inherits
/// included: a team key with `models: []` and no budget of its own is bound by its team's
/// models and budget, so its keys stay in the team with the team's models; a key whose
/// limits come from its `budget_id` row passes them on. Nor may its owner take a key out of
/// its team.
#[test]
fn inherited_limits_bound_what_a_key_creates() {
    let api = Api::start(BudgetSettings::default());
    api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "u", "auto_create_key": false, "max_budget": 100})),
    );
    api.admin(
        "POST",
        "/team/new",
        Some(json!({"team_id": "T", "max_budget": 1, "models": ["gpt-a"],
            "members_with_roles": [{"user_id": "u", "role": "user"}],
            "team_member_permissions": ["/key/generate", "/key/update"]})),
    );
    api.admin("POST", "/team/new", Some(json!({"team_id": "U"})));
    let (k, k_token) = api.new_key(json!({"user_id": "u", "team_id": "T", "models": []}));
    // Scenario A: the child stays in T, with T's models.
    let a = api.with_key(&k, "POST", "/key/generate", Some(json!({})));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["team_id"], "T");
    assert_eq!(a.body["models"], json!(["gpt-a"]));
    for body in [json!({"models": ["gpt-b"]}), json!({"models": ["*"]})] {
        let a = api.with_key(&k, "POST", "/key/generate", Some(body.clone()));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
    let a = api.with_key(&k, "POST", "/key/generate", Some(json!({"team_id": "U"})));
    assert_eq!(a.status, 403, "{}", a.body);
    // Nor out of the team by an update.
    let a = api.with_key(
        &k,
        "POST",
        "/key/update",
        Some(json!({"key": k_token, "team_id": null})),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(api.lookup(&k_token).team_id.as_deref(), Some("T"));

    // Scenario B: limits from a budget row pass on.
    api.admin(
        "POST",
        "/budget/new",
        Some(json!({"budget_id": "b", "max_budget": 1, "rpm_limit": 10})),
    );
    let (kb, _) = api.new_key(json!({"user_id": "u", "budget_id": "b"}));
    let a = api.with_key(&kb, "POST", "/key/generate", Some(json!({})));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["max_budget"], 1.0);
    assert_eq!(a.body["rpm_limit"], 10);
    for body in [json!({"max_budget": 2}), json!({"rpm_limit": 11})] {
        let a = api.with_key(&kb, "POST", "/key/generate", Some(body.clone()));
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
}

/// Issue 12 (R3): a key whose budget is its own cannot mint keys, or each child would bring a
/// fresh budget (a $1 key spent to $0.99 mints a $1 key, spends it, mints another...). With a
/// user budget covering all the user's keys, it may.
#[test]
fn children_do_not_multiply_a_budget() {
    let api = Api::start(BudgetSettings::default());
    api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "u", "auto_create_key": false})),
    );
    let (parent, token) = api.new_key(json!({"user_id": "u", "max_budget": 1.0}));
    let (status, _) = api.spend(vec![event("e1", &token, "u", 990_000_000)]);
    assert_eq!(status, 200);
    let a = api.with_key(&parent, "POST", "/key/generate", Some(json!({})));
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        message(&a.body).contains("cannot generate keys"),
        "{}",
        a.body
    );
    let a = api.with_key(
        &parent,
        "POST",
        "/key/generate",
        Some(json!({"max_budget": 0.01})),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    // A user budget caps every key of the user together: minting is fine then.
    api.admin(
        "POST",
        "/user/update",
        Some(json!({"user_id": "u", "max_budget": 1.0})),
    );
    let a = api.with_key(&parent, "POST", "/key/generate", Some(json!({})));
    assert_eq!(a.status, 200, "{}", a.body);
    // A key without any budget creates keys freely (they are no wider).
    api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "free", "auto_create_key": false})),
    );
    let (free, _) = api.new_key(json!({"user_id": "free"}));
    let a = api.with_key(&free, "POST", "/key/generate", Some(json!({})));
    assert_eq!(a.status, 200, "{}", a.body);
}

/// A refused admin call whose body arrives after its headers (as Envoy may send it) leaves
/// the connection usable: the 401 waits for the body, so hyper does not close the connection
/// after answering, and the next call on it (Envoy reuses its upstream connections) is
/// answered rather than reset (Envoy would turn that reset into a 503).
#[test]
fn a_refused_call_with_a_late_body_keeps_the_connection() {
    use std::io::{Read, Write};
    let api = Api::start(BudgetSettings::default());
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let body = r#"{"user_id":"x"}"#;
    let head = |n: usize| {
        format!(
            "POST /customer/block HTTP/1.1\r\nhost: sidecar\r\nauthorization: Bearer sk-wrong\r\n\
             content-type: application/json\r\ncontent-length: {n}\r\n\r\n"
        )
    };
    let mut answers = String::new();
    for _ in 0..2 {
        conn.write_all(head(body.len()).as_bytes()).unwrap();
        conn.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        conn.write_all(body.as_bytes()).unwrap();
        // One whole answer: headers, then its content-length of body.
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(conn.read(&mut byte).unwrap(), 1, "closed: {answers}");
            buf.push(byte[0]);
        }
        let text = String::from_utf8(buf).unwrap().to_ascii_lowercase();
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut rest = vec![0u8; length];
        conn.read_exact(&mut rest).unwrap();
        assert!(text.starts_with("http/1.1 401"), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
        answers.push_str(&text);
    }
}
