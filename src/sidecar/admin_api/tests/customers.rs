//! `/customer/*` (= `/end_user/*`) and the filter's customer lookup.

use super::*;
use crate::records::CustomerRecord;

fn found(l: CustomerLookup) -> CustomerRecord {
    match l {
        CustomerLookup::Found { customer } => *customer,
        other => panic!("{other:?}"),
    }
}

#[test]
fn customer_lifecycle() {
    let api = Api::start(BudgetSettings::default());
    let a = api.master(
        "POST",
        "/customer/new",
        Some(json!({
            "user_id": "c1", "alias": "Acme", "max_budget": 2.0, "budget_duration": "1d",
            "rpm_limit": 7, "models": ["gpt-a"], "spend": 0.5,
        })),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.entries(), vec!["customer:c1"]);
    assert_eq!(a.body["user_id"], "c1");
    assert_eq!(a.body["alias"], "Acme");
    assert_eq!(a.body["spend"], 0.5);
    assert_eq!(a.body["blocked"], false);
    let budget_id = a.body["budget_id"].as_str().unwrap().to_string();
    assert_eq!(
        a.body["litellm_budget_table"]["budget_id"],
        json!(budget_id)
    );
    assert_eq!(a.body["litellm_budget_table"]["max_budget"], 2.0);
    assert_eq!(a.body["litellm_budget_table"]["rpm_limit"], 7);
    let c = found(api.customer("c1"));
    assert_eq!(c.models, vec!["gpt-a"]);
    assert_eq!(c.rpm_limit, Some(7));
    let b = c.budget.unwrap();
    assert_eq!((b.max_budget, b.spend_nanos), (Some(2.0), 500_000_000));
    assert_eq!(b.budget_duration.as_deref(), Some("1d"));
    assert!(b.budget_reset_at_micros.is_some());

    // Duplicates, bad combinations, unknown budget.
    let a = api.master("POST", "/customer/new", Some(json!({"user_id": "c1"})));
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["param"], "user_id");
    assert!(message(&a.body).starts_with("Customer already exists, passed user_id=c1."));
    let a = api.master(
        "POST",
        "/customer/new",
        Some(json!({"user_id": "c2", "max_budget": 1.0, "budget_id": budget_id})),
    );
    assert_eq!(a.status, 400);
    let a = api.master(
        "POST",
        "/customer/new",
        Some(json!({"user_id": "c2", "budget_id": "nope"})),
    );
    assert_eq!(a.status, 400);
    assert_eq!(
        api.master("POST", "/customer/new", Some(json!({"alias": "x"})))
            .status,
        422
    );
    let a = api.master(
        "POST",
        "/customer/new",
        Some(json!({"user_id": "c2", "default_model": "nope"})),
    );
    assert_eq!(a.status, 422);

    // Info and its 404.
    let info = api.admin("GET", "/customer/info?end_user_id=c1", None);
    assert_eq!(info["alias"], "Acme");
    let a = api.master("GET", "/customer/info?end_user_id=ghost", None);
    assert_eq!(a.status, 404);
    assert_eq!(
        a.body,
        json!({"error": {"message": "End User Id=ghost does not exist in db", "type": "not_found", "param": "end_user_id", "code": "404"}})
    );

    // Update: budget fields go to its budget row.
    let a = api.master(
        "POST",
        "/customer/update",
        Some(json!({"user_id": "c1", "max_budget": 3.0, "blocked": true, "alias": "Acme2"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.entries(), vec!["customer:c1"]);
    assert_eq!(a.body["litellm_budget_table"]["max_budget"], 3.0);
    assert_eq!(a.body["budget_id"], json!(budget_id));
    let c = found(api.customer("c1"));
    assert!(c.blocked);
    assert_eq!(c.budget.unwrap().max_budget, Some(3.0));
    let a = api.master(
        "POST",
        "/customer/update",
        Some(json!({"user_id": "ghost"})),
    );
    assert_eq!(
        (a.status, a.body["error"]["param"].clone()),
        (404, json!("user_id"))
    );

    // Block / unblock (block creates unknown customers).
    let a = api.master(
        "POST",
        "/customer/unblock",
        Some(json!({"user_ids": ["c1"]})),
    );
    assert_eq!(a.status, 200);
    assert!(!found(api.customer("c1")).blocked);
    let a = api.master(
        "POST",
        "/end_user/block",
        Some(json!({"user_ids": ["c1", "c3"]})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.entries(), vec!["customer:c1", "customer:c3"]);
    assert!(found(api.customer("c3")).blocked);

    let list = api.admin("GET", "/customer/list", None);
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Delete: all must exist.
    let a = api.master(
        "POST",
        "/customer/delete",
        Some(json!({"user_ids": ["c1", "zz"]})),
    );
    assert_eq!(a.status, 404);
    assert_eq!(message(&a.body), "End User Id(s)=zz do not exist in db");
    let a = api.master(
        "POST",
        "/customer/delete",
        Some(json!({"user_ids": ["c1", "c3"]})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["deleted_customers"], 2);
    assert_eq!(
        a.body["message"],
        "Successfully deleted customers with ids: ['c1', 'c3']"
    );
    assert!(matches!(
        api.customer("c1"),
        CustomerLookup::NotFound {
            default_budget: None
        }
    ));
}

#[test]
fn default_customer_budget_and_spend() {
    let api = Api::start_with(BudgetSettings::default(), Some("free-tier"));
    assert!(matches!(
        api.customer("x"),
        CustomerLookup::NotFound {
            default_budget: None
        }
    ));
    let a = api.master(
        "POST",
        "/budget/new",
        Some(json!({"budget_id": "free-tier", "max_budget": 0.1, "rpm_limit": 2, "budget_duration": "1d"})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    // The default budget changes what every unknown customer gets: everything is stale.
    assert_eq!(a.invalidate.as_deref(), Some("*"));
    match api.customer("x") {
        CustomerLookup::NotFound {
            default_budget: Some(b),
        } => {
            assert_eq!((b.max_budget, b.spend_nanos), (Some(0.1), 0));
        }
        other => panic!("{other:?}"),
    }
    // A customer created by spend follows the default budget.
    let (_, token) = api.new_key(json!({}));
    let mut e = event("r1", &token, "u", 40_000_000);
    e.end_user = Some("walk-in".into());
    api.spend(vec![e]);
    let c = found(api.customer("walk-in"));
    let b = c.budget.unwrap();
    assert_eq!((b.max_budget, b.spend_nanos), (Some(0.1), 40_000_000));
    assert_eq!(b.budget_duration.as_deref(), Some("1d"));
    assert_eq!(c.rpm_limit, Some(2));
    // Its info shows no budget row of its own.
    let info = api.admin("GET", "/customer/info?end_user_id=walk-in", None);
    assert_eq!(info["litellm_budget_table"], Value::Null);
    assert_eq!(info["spend"], 0.04);
}
