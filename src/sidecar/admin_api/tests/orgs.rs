//! `/organization/*` through the router (`oneshot`), and what organization keys look like to
//! the filter.

use super::*;

struct Org {
    state: Arc<AdminState>,
}

impl Org {
    fn new() -> Org {
        Org {
            state: test_state(BudgetSettings::default(), None, |_| {}),
        }
    }

    fn call(&self, auth: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
        oneshot(&self.state, method, path, &format!("Bearer {auth}"), body)
    }

    fn master(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.call(MASTER, method, path, body)
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let a = self.master(method, path, body);
        assert_eq!(a.status, 200, "{method} {path}: {}", a.body);
        a.body
    }

    /// A user with `role` and its key (raw).
    fn user(&self, user_id: &str, role: &str) -> String {
        let u = self.admin(
            "POST",
            "/user/new",
            Some(json!({"user_id": user_id, "user_role": role})),
        );
        u["key"].as_str().unwrap().to_string()
    }

    fn internal(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let token = crate::sidecar::render::internal_token(MASTER);
        oneshot(&self.state, method, path, &format!("Bearer {token}"), body)
    }

    fn record(&self, token: &str) -> KeyRecord {
        let a = self.internal("GET", &format!("/tollgate/internal/v1/keys/{token}"), None);
        match serde_json::from_value::<KeyLookup>(a.body).unwrap() {
            KeyLookup::Found { key, .. } => *key,
            KeyLookup::NotFound => panic!("no key {token}"),
        }
    }
}

#[test]
fn organization_lifecycle_teams_and_key_records() {
    let api = Org::new();
    let org = api.admin(
        "POST",
        "/organization/new",
        Some(json!({
            "organization_id": "org-1", "organization_alias": "Acme",
            "models": ["gpt-a", "gpt-b"], "max_budget": 10.0, "budget_duration": "30d",
            "rpm_limit": 7, "tpm_limit": 700, "model_rpm_limit": {"gpt-a": 3},
            "metadata": {"owner": "ops"},
        })),
    );
    assert_eq!(org["organization_id"], "org-1");
    assert_eq!(org["organization_alias"], "Acme");
    assert_eq!(org["models"], json!(["gpt-a", "gpt-b"]));
    assert_eq!(org["spend"], 0.0);
    assert_eq!(org["created_by"], "default_user_id");
    assert_eq!(org["metadata"]["owner"], "ops");
    assert_eq!(org["metadata"]["model_rpm_limit"]["gpt-a"], 3);
    let budget = &org["litellm_budget_table"];
    assert_eq!(budget["budget_id"], org["budget_id"]);
    assert_eq!(
        (
            &budget["max_budget"],
            &budget["rpm_limit"],
            &budget["budget_duration"]
        ),
        (&json!(10.0), &json!(7), &json!("30d"))
    );
    assert!(org.get("budget_reset_at").is_none(), "{org}");

    // LiteLLM's refusals.
    let a = api.master(
        "POST",
        "/organization/new",
        Some(json!({"organization_alias": "x", "max_budget": -1})),
    );
    assert_eq!(a.status, 400);
    assert_eq!(
        message(&a.body),
        "{'error': 'max_budget must be a non-negative finite number. Received: -1.0'}"
    );
    let a = api.master("POST", "/organization/new", Some(json!({"models": []})));
    assert_eq!(a.status, 422, "{}", a.body);
    let a = api.master(
        "POST",
        "/organization/new",
        Some(json!({"organization_id": "org-1", "organization_alias": "again"})),
    );
    assert_eq!(a.status, 400);

    // Teams join it within its limits.
    let team = |body: Value| api.master("POST", "/team/new", Some(body));
    let a = team(json!({"team_id": "t0", "organization_id": "nope"}));
    assert_eq!(a.status, 400);
    assert_eq!(
        message(&a.body),
        "Organization not found for organization_id=nope"
    );
    let a = team(json!({"team_id": "t0", "organization_id": "org-1", "models": ["gpt-c"]}));
    assert_eq!(a.status, 400);
    assert_eq!(
        message(&a.body),
        "{'error': \"Model 'gpt-c' not in organization's allowed models. Organization allowed models=['gpt-a', 'gpt-b']. Organization: org-1\"}"
    );
    let a = team(json!({"team_id": "t0", "organization_id": "org-1", "max_budget": 11}));
    assert_eq!(
        message(&a.body),
        "{'error': \"Team max_budget (11.0) exceeds organization's max_budget (10.0). Organization: org-1\"}"
    );
    let a = team(json!({"team_id": "t0", "organization_id": "org-1", "rpm_limit": 8}));
    assert_eq!(
        message(&a.body),
        "{'error': \"Team rpm_limit (8) exceeds organization's rpm_limit (7). Organization: org-1\"}"
    );
    let t = team(json!({"team_id": "t1", "organization_id": "org-1", "models": ["gpt-a"]}));
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["organization_id"], "org-1");
    // /team/update holds the team to the organization too.
    let a = api.master(
        "POST",
        "/team/update",
        Some(json!({"team_id": "t1", "models": ["gpt-c"]})),
    );
    assert_eq!(a.status, 400, "{}", a.body);

    // A team key takes its team's organization; the filter gets the organization's state.
    let k = api.admin("POST", "/key/generate", Some(json!({"team_id": "t1"})));
    let token = k["token"].as_str().unwrap().to_string();
    assert_eq!(k["organization_id"], "org-1");
    let info = api.admin("GET", &format!("/key/info?key={token}"), None);
    assert_eq!(info["info"]["organization_id"], "org-1");
    let rec = api.record(&token);
    assert_eq!(rec.organization_id.as_deref(), Some("org-1"));
    assert_eq!(rec.organization_models, ["gpt-a", "gpt-b"]);
    assert_eq!(
        (rec.organization_rpm_limit, rec.organization_tpm_limit),
        (Some(7), Some(700))
    );
    assert_eq!(rec.organization_model_rpm_limit.get("gpt-a"), Some(&3));
    let ob = rec.organization_budget.clone().unwrap();
    assert_eq!(
        (ob.max_budget, ob.budget_duration.as_deref(), ob.spend_nanos),
        (Some(10.0), Some("30d"), 0)
    );
    assert!(ob.budget_reset_at_micros.is_some());
    // A key may name an organization that exists.
    let a = api.master(
        "POST",
        "/key/generate",
        Some(json!({"organization_id": "nope"})),
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (
            400,
            "Organization not found for organization_id=nope".into()
        )
    );
    let own = api.admin(
        "POST",
        "/key/generate",
        Some(json!({"organization_id": "org-1"})),
    );
    let own_token = own["token"].as_str().unwrap().to_string();
    // /key/list filters by the key's organization (the team key took its team's).
    let listed = api.admin("GET", "/key/list?organization_id=org-1", None);
    assert_eq!(listed["keys"], json!([token, own_token]));
    let listed = api.admin("GET", "/key/list?organization_id=org-2", None);
    assert_eq!(listed["keys"], json!([]));
    let outsider = api.user("outsider", "internal_user");
    let a = api.call(&outsider, "GET", "/key/list?organization_id=org-1", None);
    assert_eq!(
        (a.status, message(&a.body)),
        (
            403,
            "You are not authorized to check this organization's keys".into()
        )
    );
    assert_eq!(
        api.record(&own_token).organization_id.as_deref(),
        Some("org-1")
    );

    // Spend of its keys adds to the organization's.
    let mut e = event("r1", &token, "nobody", 250_000_000);
    e.event_id = "e1".into();
    e.team_id = Some("t1".into());
    let a = api.internal(
        "POST",
        "/tollgate/internal/v1/spend",
        Some(serde_json::to_value(SpendBatch { events: vec![e] }).unwrap()),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let info = api.admin("GET", "/organization/info?organization_id=org-1", None);
    assert_eq!(info["spend"], 0.25);
    assert_eq!(info["teams"][0]["team_id"], "t1");
    assert_eq!(info["members"], json!([]));
    assert_eq!(
        api.record(&token).organization_budget.unwrap().spend_nanos,
        250_000_000
    );

    // An update changes the budget row and tells the filter about every key it governs.
    let a = api.master(
        "PATCH",
        "/organization/update",
        Some(json!({
            "organization_id": "org-1", "max_budget": 1.0, "organization_alias": "Acme2",
            "metadata": {"tier": "gold"}, "models": ["gpt-a"],
        })),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["litellm_budget_table"]["max_budget"], 1.0);
    assert_eq!(a.body["litellm_budget_table"]["rpm_limit"], 7);
    assert_eq!(a.body["metadata"]["owner"], "ops");
    assert_eq!(a.body["metadata"]["tier"], "gold");
    assert_eq!(a.body["organization_alias"], "Acme2");
    let mut expected = vec![token.clone(), own_token.clone()];
    expected.sort();
    assert_eq!(a.entries(), expected);
    assert_eq!(
        api.record(&token).organization_budget.unwrap().max_budget,
        Some(1.0)
    );
    // /budget/update of its budget row reaches its keys as well.
    let budget_id = a.body["budget_id"].as_str().unwrap().to_string();
    let b = api.master(
        "POST",
        "/budget/update",
        Some(json!({"budget_id": budget_id, "tpm_limit": 5})),
    );
    assert_eq!(b.entries(), expected);
    let a = api.master(
        "PATCH",
        "/organization/update",
        Some(json!({"max_budget": 1})),
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (400, "{'error': 'organization_id is required'}".into())
    );
    let a = api.master(
        "PATCH",
        "/organization/update",
        Some(json!({"organization_id": "nope"})),
    );
    assert_eq!(a.status, 404);

    // Lists, with LiteLLM's filters.
    api.admin(
        "POST",
        "/organization/new",
        Some(json!({"organization_id": "org-2", "organization_alias": "Other"})),
    );
    let all = api.admin("GET", "/organization/list", None);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let some = api.admin("GET", "/organization/list?org_alias=acme", None);
    assert_eq!(some.as_array().unwrap().len(), 1);
    assert_eq!(some[0]["organization_id"], "org-1");
    let some = api.admin("GET", "/organization/list?org_id=org-2", None);
    assert_eq!(some[0]["organization_alias"], "Other");
    let old = api.admin(
        "POST",
        "/organization/info",
        Some(json!({"organizations": ["org-1", "org-2"]})),
    );
    assert_eq!(old.as_array().unwrap().len(), 2);

    // Delete: its teams, their keys and the keys naming it go with it.
    let a = api.master(
        "DELETE",
        "/organization/delete",
        Some(json!({"organization_ids": ["org-1"]})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body[0]["organization_id"], "org-1");
    assert_eq!(a.entries(), expected);
    let a = api.master("GET", "/organization/info?organization_id=org-1", None);
    assert_eq!(
        (a.status, message(&a.body)),
        (404, "{'error': 'Organization not found'}".into())
    );
    assert_eq!(api.master("GET", "/team/info?team_id=t1", None).status, 404);
    let gone = api.internal("GET", &format!("/tollgate/internal/v1/keys/{token}"), None);
    assert_eq!(gone.body["status"], "not_found");
    let a = api.master(
        "DELETE",
        "/organization/delete",
        Some(json!({"organization_ids": ["org-1"]})),
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (404, "{'error': 'Organization=org-1 not found'}".into())
    );
}

#[test]
fn organization_members_and_who_may_do_what() {
    let api = Org::new();
    for (id, alias) in [("org-1", "One"), ("org-2", "Two")] {
        api.admin(
            "POST",
            "/organization/new",
            Some(json!({"organization_id": id, "organization_alias": alias})),
        );
    }
    let boss = api.user("boss", "internal_user");
    let worker = api.user("worker", "internal_user");
    let root = api.user("root", "proxy_admin");
    let viewer = api.user("viewer", "proxy_admin_viewer");

    let add = api.admin(
        "POST",
        "/organization/member_add",
        Some(json!({
            "organization_id": "org-1",
            "member": [
                {"role": "org_admin", "user_id": "boss"},
                {"role": "internal_user", "user_id": "worker"},
                {"role": "internal_user_viewer", "user_email": "new@example.com"},
            ],
        })),
    );
    assert_eq!(add["organization_id"], "org-1");
    let users = add["updated_users"].as_array().unwrap();
    assert_eq!(users.len(), 3);
    // An unknown email becomes a new internal user.
    assert_eq!(users[2]["user_email"], "new@example.com");
    assert_eq!(users[2]["user_role"], "internal_user");
    let ms = &add["updated_organization_memberships"];
    assert_eq!(ms[0]["user_role"], "org_admin");
    assert_eq!(ms[1]["organization_id"], "org-1");
    let a = api.master(
        "POST",
        "/organization/member_add",
        Some(json!({"organization_id": "org-1", "member": {"role": "admin", "user_id": "x"}})),
    );
    assert_eq!(a.status, 422, "{}", a.body);
    let a = api.master(
        "POST",
        "/organization/member_add",
        Some(
            json!({"organization_id": "nope", "member": {"role": "internal_user", "user_id": "x"}}),
        ),
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (
            404,
            "{'error': 'Organization not found for organization_id=nope'}".into()
        )
    );

    // The org admin may read its organization and manage its members.
    let a = api.call(
        &boss,
        "GET",
        "/organization/info?organization_id=org-1",
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["members"].as_array().unwrap().len(), 3);
    assert_eq!(a.body["members"][0]["user_id"], "boss");
    let a = api.call(
        &boss,
        "PATCH",
        "/organization/member_update",
        Some(
            json!({"organization_id": "org-1", "user_id": "worker", "role": "org_admin",
                    "max_budget_in_organization": 2.5}),
        ),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["user_role"], "org_admin");
    assert_eq!(a.body["litellm_budget_table"]["max_budget"], 2.5);
    let a = api.call(
        &boss,
        "PATCH",
        "/organization/member_update",
        Some(json!({"organization_id": "org-1", "user_id": "worker", "role": "boss"})),
    );
    assert_eq!(a.status, 422);
    // ... but not outside it, nor what only proxy admins do.
    let not_admin = |route: &str| {
        format!(
            "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route={route}. Your role=internal_user. Your user_id=****"
        )
    };
    let a = api.call(
        &boss,
        "GET",
        "/organization/info?organization_id=org-2",
        None,
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (401, not_admin("/organization/info"))
    );
    let a = api.call(
        &boss,
        "POST",
        "/organization/member_add",
        Some(json!({"organization_id": "org-2", "member": {"role": "internal_user", "user_id": "boss"}})),
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (401, not_admin("/organization/member_add"))
    );
    for (method, route, body) in [
        (
            "POST",
            "/organization/new",
            json!({"organization_alias": "x"}),
        ),
        (
            "PATCH",
            "/organization/update",
            json!({"organization_id": "org-1", "max_budget": 100}),
        ),
        (
            "DELETE",
            "/organization/delete",
            json!({"organization_ids": ["org-1"]}),
        ),
    ] {
        let a = api.call(&boss, method, route, Some(body));
        assert_eq!((a.status, message(&a.body)), (401, not_admin(route)));
    }
    // A plain member may not manage members.
    let a = api.call(
        &api.user("plain", "internal_user"),
        "POST",
        "/organization/member_add",
        Some(json!({"organization_id": "org-1", "member": {"role": "internal_user", "user_id": "plain"}})),
    );
    assert_eq!(a.status, 401);
    // Members list their organizations only; admins and viewers list all.
    let mine = api.call(&worker, "GET", "/organization/list", None);
    assert_eq!(mine.status, 200);
    assert_eq!(mine.body.as_array().unwrap().len(), 1);
    assert_eq!(mine.body[0]["organization_id"], "org-1");
    for key in [&root, &viewer] {
        let all = api.call(key, "GET", "/organization/list", None);
        assert_eq!(all.body.as_array().unwrap().len(), 2);
    }
    // Viewers read, and change nothing.
    let a = api.call(
        &viewer,
        "GET",
        "/organization/info?organization_id=org-2",
        None,
    );
    assert_eq!(a.status, 200);
    let a = api.call(
        &viewer,
        "DELETE",
        "/organization/member_delete",
        Some(json!({"organization_id": "org-1", "user_id": "worker"})),
    );
    assert_eq!(a.status, 403);
    // Only a proxy admin changes the org role of a proxy admin.
    api.admin(
        "POST",
        "/organization/member_add",
        Some(json!({"organization_id": "org-1", "member": {"role": "internal_user", "user_id": "root"}})),
    );
    let a = api.call(
        &boss,
        "PATCH",
        "/organization/member_update",
        Some(json!({"organization_id": "org-1", "user_id": "root", "role": "org_admin"})),
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (
            403,
            "{'error': 'Only PROXY_ADMIN may modify the organization role of a user who is a global PROXY_ADMIN.'}".into()
        )
    );
    let a = api.call(
        &root,
        "PATCH",
        "/organization/member_update",
        Some(json!({"organization_id": "org-1", "user_id": "root", "role": "org_admin"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = api.call(
        &boss,
        "PATCH",
        "/organization/member_update",
        Some(json!({"organization_id": "org-1", "user_id": "stranger", "role": "org_admin"})),
    );
    assert_eq!(
        (a.status, message(&a.body)),
        (
            404,
            "{'error': 'Member not found in organization for user_id=stranger'}".into()
        )
    );

    // Removing a member; by email too.
    let a = api.call(
        &boss,
        "DELETE",
        "/organization/member_delete",
        Some(json!({"organization_id": "org-1", "user_email": "new@example.com"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["user_role"], "internal_user_viewer");
    let a = api.call(
        &boss,
        "DELETE",
        "/organization/member_delete",
        Some(json!({"organization_id": "org-1", "user_id": "worker"})),
    );
    assert_eq!(a.status, 200);
    let info = api.admin("GET", "/organization/info?organization_id=org-1", None);
    let left: Vec<&str> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["boss", "root"]);
    // A deleted user leaves its organizations.
    api.admin("POST", "/user/delete", Some(json!({"user_ids": ["boss"]})));
    let info = api.admin("GET", "/organization/info?organization_id=org-1", None);
    assert_eq!(info["members"].as_array().unwrap().len(), 1);
}
