//! `/team/*` and what team keys look like to the filter.

use super::*;

#[test]
fn team_lifecycle_and_key_records() {
    let api = Api::start(BudgetSettings::default());
    let t = api.admin(
        "POST",
        "/team/new",
        Some(json!({
            "team_id": "t1", "team_alias": "Team One", "models": ["gpt-a"],
            "max_budget": 10.0, "budget_duration": "30d", "rpm_limit": 5, "tpm_limit": 500,
            "model_rpm_limit": {"gpt-a": 2}, "metadata": {"owner": "ops"},
            "team_member_budget": 1.5, "team_member_budget_duration": "1d",
            "team_member_rpm_limit": 3,
            "members_with_roles": [{"role": "admin", "user_id": "lead"}],
        })),
    );
    assert_eq!(t["team_id"], "t1");
    assert_eq!(t["models"], json!(["gpt-a"]));
    assert!(t["budget_reset_at"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    assert_eq!(t["metadata"]["owner"], "ops");
    assert_eq!(t["metadata"]["model_rpm_limit"]["gpt-a"], 2);
    let member_budget = t["metadata"]["team_member_budget_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t["members_with_roles"][0]["user_id"], "lead");
    // The member's user row was created.
    let lead = api.admin("GET", "/user/info?user_id=lead", None);
    assert_eq!(lead["user_info"]["teams"], json!(["t1"]));
    assert_eq!(lead["teams"][0]["team_id"], "t1");
    // Duplicates are refused.
    let a = api.master("POST", "/team/new", Some(json!({"team_id": "t1"})));
    assert_eq!(a.status, 400);
    assert!(
        message(&a.body).contains("Team id = t1 already exists. Please use a different team id.")
    );
    // A generated id.
    let other = api.admin("POST", "/team/new", Some(json!({})));
    assert_eq!(other["team_id"].as_str().unwrap().len(), 36);

    let (_, token) = api.new_key(json!({"team_id": "t1", "user_id": "lead"}));
    let rec = api.lookup(&token);
    assert_eq!(rec.team_models, vec!["gpt-a"]);
    assert!(!rec.team_blocked);
    let tb = rec.team_budget.clone().unwrap();
    assert_eq!(
        (tb.max_budget, tb.budget_duration.as_deref()),
        (Some(10.0), Some("30d"))
    );
    assert!(tb.budget_reset_at_micros.is_some());
    assert_eq!(
        (rec.team_rpm_limit, rec.team_tpm_limit),
        (Some(5), Some(500))
    );
    assert_eq!(rec.team_model_rpm_limit["gpt-a"], 2);
    // The member has no budget of its own: the team's default applies.
    let mb = rec.team_member_budget.clone().unwrap();
    assert_eq!(
        (mb.max_budget, mb.budget_duration.as_deref()),
        (Some(1.5), Some("1d"))
    );
    assert_eq!(rec.team_member_rpm_limit, Some(3));

    // Info.
    let info = api.admin("GET", "/team/info?team_id=t1", None);
    assert_eq!(info["team_id"], "t1");
    assert_eq!(info["team_info"]["team_alias"], "Team One");
    assert_eq!(info["keys"].as_array().unwrap().len(), 1);
    assert_eq!(info["team_memberships"][0]["user_id"], "lead");
    assert_eq!(
        info["team_memberships"][0]["litellm_budget_table"]["budget_id"],
        json!(member_budget)
    );
    let a = api.master("GET", "/team/info?team_id=nope", None);
    assert_eq!(a.status, 404);

    // Update: every key of the team is invalidated.
    let a = api.master(
        "POST",
        "/team/update",
        Some(json!({"team_id": "t1", "models": [], "max_budget": null, "team_member_budget": 2.5})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"]["models"], json!([]));
    assert_eq!(a.entries(), vec![token.clone()]);
    let rec = api.lookup(&token);
    assert!(rec.team_models.is_empty());
    assert_eq!(rec.team_budget.unwrap().max_budget, None);
    assert_eq!(rec.team_member_budget.unwrap().max_budget, Some(2.5));

    // Block / unblock.
    let a = api.master("POST", "/team/block", Some(json!({"team_id": "t1"})));
    assert_eq!((a.status, a.body["blocked"].clone()), (200, json!(true)));
    assert_eq!(a.entries(), vec![token.clone()]);
    assert!(api.lookup(&token).team_blocked);
    api.admin("POST", "/team/unblock", Some(json!({"team_id": "t1"})));
    assert!(!api.lookup(&token).team_blocked);
    assert_eq!(
        api.master("POST", "/team/block", Some(json!({"team_id": "zz"})))
            .status,
        404
    );

    // Delete: the team's keys go with it.
    let a = api.master("POST", "/team/delete", Some(json!({"team_ids": ["t1"]})));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"deleted_teams": ["t1"]}));
    assert_eq!(a.entries(), vec![token.clone()]);
    assert!(matches!(api.lookup_any(&token), KeyLookup::NotFound));
    let lead = api.admin("GET", "/user/info?user_id=lead", None);
    assert_eq!(lead["user_info"]["teams"], json!([]));
    assert_eq!(
        api.master("POST", "/team/delete", Some(json!({"team_ids": ["t1"]})))
            .status,
        404
    );
}

#[test]
fn members_and_their_budgets() {
    let api = Api::start(BudgetSettings::default());
    api.admin("POST", "/team/new", Some(json!({"team_id": "t"})));
    let a = api.master(
        "POST",
        "/team/member_add",
        Some(json!({
            "team_id": "t",
            "member": [{"role": "user", "user_id": "m1"}, {"role": "admin", "user_email": "m2@x.io"}],
            "max_budget_in_team": 0.5, "budget_duration": "1h",
        })),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["members_with_roles"].as_array().unwrap().len(), 2);
    assert_eq!(a.body["updated_users"].as_array().unwrap().len(), 2);
    let m = &a.body["updated_team_memberships"][0];
    assert_eq!(m["litellm_budget_table"]["max_budget"], 0.5);
    assert_eq!(m["litellm_budget_table"]["budget_duration"], "1h");
    let m2 = a.body["updated_users"][1]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(a.body["updated_users"][1]["user_email"], "m2@x.io");
    // Already a member.
    let a = api.master(
        "POST",
        "/team/member_add",
        Some(json!({"team_id": "t", "member": {"user_id": "m1"}})),
    );
    assert_eq!(a.status, 400);

    let (_, token) = api.new_key(json!({"team_id": "t", "user_id": "m1"}));
    let rec = api.lookup(&token);
    let mb = rec.team_member_budget.unwrap();
    assert_eq!(
        (mb.max_budget, mb.budget_duration.as_deref()),
        (Some(0.5), Some("1h"))
    );
    assert!(mb.budget_reset_at_micros.is_some());

    // Spend on a team key charges the team and the membership.
    let mut e = event("r1", &token, "m1", 250_000_000);
    e.team_id = Some("t".into());
    api.spend(vec![e]);
    let rec = api.lookup(&token);
    assert_eq!(rec.team_budget.unwrap().spend_nanos, 250_000_000);
    assert_eq!(rec.team_member_budget.unwrap().spend_nanos, 250_000_000);
    let info = api.admin("GET", "/team/info?team_id=t", None);
    assert_eq!(info["team_info"]["spend"], 0.25);

    // The team admin (m2) manages members; m1 (a plain member) may not.
    let m1_key = api.new_key(json!({"user_id": "m1"})).0;
    let m2_key = api.new_key(json!({"user_id": m2})).0;
    let a = api.with_key(
        &m1_key,
        "POST",
        "/team/member_add",
        Some(json!({"team_id": "t", "member": {"user_id": "x"}})),
    );
    assert_eq!(a.status, 403);
    let a = api.with_key(
        &m2_key,
        "POST",
        "/team/member_update",
        Some(json!({"team_id": "t", "user_id": "m1", "max_budget_in_team": 0.75})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.entries(), vec![token.clone()]);
    assert_eq!(
        api.lookup(&token).team_member_budget.unwrap().max_budget,
        Some(0.75)
    );
    // Members may read the team; a plain member makes team keys once the team grants it.
    assert_eq!(
        api.with_key(&m1_key, "GET", "/team/info?team_id=t", None)
            .status,
        200
    );
    let a = api.with_key(
        &m1_key,
        "POST",
        "/key/generate",
        Some(json!({"team_id": "t"})),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    api.admin(
        "POST",
        "/team/update",
        Some(json!({"team_id": "t", "team_member_permissions": ["/key/generate"]})),
    );
    let a = api.with_key(
        &m1_key,
        "POST",
        "/key/generate",
        Some(json!({"team_id": "t"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        (a.body["team_id"].clone(), a.body["user_id"].clone()),
        (json!("t"), json!("m1"))
    );
    let outsider = api.admin("POST", "/user/new", Some(json!({"user_id": "out"})));
    let outsider = outsider["key"].as_str().unwrap();
    assert_eq!(
        api.with_key(outsider, "GET", "/team/info?team_id=t", None)
            .status,
        403
    );
    assert_eq!(
        api.with_key(
            outsider,
            "POST",
            "/key/generate",
            Some(json!({"team_id": "t"}))
        )
        .status,
        403
    );
    assert_eq!(
        api.with_key(
            &m2_key,
            "POST",
            "/team/block",
            Some(json!({"team_id": "t"}))
        )
        .status,
        401
    );

    // Removing the member drops its membership budget from its team keys.
    let a = api.master(
        "POST",
        "/team/member_delete",
        Some(json!({"team_id": "t", "user_id": "m1"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.entries().contains(&token));
    assert!(api.lookup(&token).team_member_budget.is_none());
    let a = api.master(
        "POST",
        "/team/member_delete",
        Some(json!({"team_id": "t", "user_id": "m1"})),
    );
    assert_eq!(a.status, 400);
    let list = api.admin("GET", "/team/list", None);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// LiteLLM's team member permissions on team keys: by default a plain member may read the
/// team's keys (`/key/info`) and nothing else; a team admin may do everything; the team's
/// `team_member_permissions` grant more.
#[test]
fn team_member_permissions_gate_team_key_routes() {
    let api = Api::start(BudgetSettings::default());
    api.admin(
        "POST",
        "/team/new",
        Some(json!({"team_id": "t", "members_with_roles": [{"role": "admin", "user_id": "lead"}]})),
    );
    // `/user/new` with `team_id` makes a plain member and gives it a team key.
    let m = api.admin(
        "POST",
        "/user/new",
        Some(json!({"user_id": "m", "team_id": "t"})),
    );
    assert_eq!(m["teams"], json!(["t"]));
    let m_key = m["key"].as_str().unwrap().to_string();
    let info = api.admin("GET", "/team/info?team_id=t", None);
    assert_eq!(
        info["team_info"]["members_with_roles"][1],
        json!({"role": "user", "user_id": "m", "user_email": null, "user_alias": null})
    );
    assert_eq!(info["team_memberships"][1]["user_id"], "m");
    assert_eq!(info["team_memberships"][1]["budget_source"], "none");
    let own = api.admin("GET", &format!("/key/info?key={m_key}"), None);
    assert_eq!(own["info"]["team_id"], "t");
    // ... so `/team/member_update` works on it.
    let a = api.master(
        "POST",
        "/team/member_update",
        Some(json!({"team_id": "t", "user_id": "m", "max_budget_in_team": 2.0})),
    );
    assert_eq!(a.status, 200, "{}", a.body);

    let lead_key = api.new_key(json!({"user_id": "lead", "team_id": "t"})).0;
    // Default permissions: the member reads the lead's team key, changes nothing of it.
    let a = api.with_key(&m_key, "GET", &format!("/key/info?key={lead_key}"), None);
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.with_key(
        &m_key,
        "POST",
        "/key/generate",
        Some(json!({"team_id": "t"})),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"]["type"], "team_member_permission_error");
    assert_eq!(a.body["error"]["param"], "/key/generate");
    assert_eq!(
        message(&a.body),
        "Team member does not have permissions for endpoint: /key/generate. You only have access to the following endpoints: ['/key/info', '/key/health'] for team t. To create keys for this team, please ask your proxy admin to check the team member permission settings and update the settings to allow team member users to create keys."
    );
    for (route, body) in [
        ("/key/update", json!({"key": lead_key, "key_alias": "x"})),
        ("/key/delete", json!({"keys": [lead_key]})),
        ("/key/regenerate", json!({"key": lead_key})),
    ] {
        let a = api.with_key(&m_key, "POST", route, Some(body));
        assert_eq!(a.status, 401, "{route}: {}", a.body);
        assert_eq!(a.body["error"]["param"], route);
    }
    // Even its own team key.
    let a = api.with_key(
        &m_key,
        "POST",
        "/key/update",
        Some(json!({"key": m_key, "key_alias": "mine"})),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    // The team admin manages the member's key.
    let a = api.with_key(
        &lead_key,
        "POST",
        "/key/update",
        Some(json!({"key": m_key, "key_alias": "by-lead"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // Granted routes work, the baseline stays.
    api.admin(
        "POST",
        "/team/update",
        Some(json!({"team_id": "t", "team_member_permissions": ["/key/generate", "/key/update"]})),
    );
    let a = api.with_key(
        &m_key,
        "POST",
        "/key/generate",
        Some(json!({"team_id": "t"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.with_key(
        &m_key,
        "POST",
        "/key/update",
        Some(json!({"key": lead_key, "key_alias": "renamed"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.with_key(&m_key, "GET", &format!("/key/info?key={lead_key}"), None);
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.with_key(
        &m_key,
        "POST",
        "/key/delete",
        Some(json!({"keys": [lead_key]})),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        message(&a.body).contains("['/key/generate', '/key/update', '/key/info', '/key/health']")
    );
    // Any key of the team reads `/team/info`; other teams' keys get LiteLLM's refusal.
    let (team_key, _) = api.new_key(json!({"team_id": "t"}));
    let a = api.with_key(&team_key, "GET", "/team/info?team_id=t", None);
    assert_eq!(a.status, 200, "{}", a.body);
    api.admin("POST", "/team/new", Some(json!({"team_id": "u"})));
    let a = api.with_key(&team_key, "GET", "/team/info?team_id=u", None);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(message(&a.body).contains("Team key for team=t not authorized to access this team=u"));
    let a = api.with_key(&m_key, "GET", "/team/info?team_id=u", None);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(message(&a.body).contains("User=m not authorized to access this team=u"));
    // A team that does not exist is refused by `/user/new`.
    let a = api.master(
        "POST",
        "/user/new",
        Some(json!({"user_id": "n", "team_id": "nope"})),
    );
    assert_eq!(a.status, 404, "{}", a.body);
}

/// `litellm_settings.default_team_params` fills what `/team/new` leaves unset.
#[test]
fn config_defaults_for_new_teams() {
    let state = test_state(BudgetSettings::default(), None, |s| {
        s.team_defaults = crate::sidecar::litellm_config::TeamDefaults {
            max_budget: Some(50.0),
            budget_duration: Some("7d".into()),
            rpm_limit: Some(20),
            team_member_permissions: Some(vec!["/key/generate".into()]),
            ..Default::default()
        };
    });
    let master = format!("Bearer {MASTER}");
    let t = oneshot(
        &state,
        "POST",
        "/team/new",
        &master,
        Some(json!({"team_id": "a"})),
    );
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["max_budget"], 50.0);
    assert_eq!(t.body["budget_duration"], "7d");
    assert_eq!(t.body["rpm_limit"], 20);
    assert_eq!(t.body["team_member_permissions"], json!(["/key/generate"]));
    let t = oneshot(
        &state,
        "POST",
        "/team/new",
        &master,
        Some(json!({"team_id": "b", "max_budget": 1, "budget_duration": null})),
    );
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["max_budget"], 1.0);
    assert_eq!(t.body["budget_duration"], Value::Null);
}
