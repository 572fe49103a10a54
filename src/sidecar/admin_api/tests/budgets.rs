//! `/budget/*`.

use super::*;

#[test]
fn budget_rows_and_their_dependents() {
    let api = Api::start(BudgetSettings::default());
    let b = api.admin(
        "POST",
        "/budget/new",
        Some(json!({"budget_id": "gold", "max_budget": 5.0, "soft_budget": 4.0, "tpm_limit": 100, "rpm_limit": 10, "max_parallel_requests": 2, "budget_duration": "7d"})),
    );
    assert_eq!(b["budget_id"], "gold");
    assert_eq!(b["max_budget"], 5.0);
    assert!(b["budget_reset_at"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    let generated = api.admin("POST", "/budget/new", Some(json!({"max_budget": 1.0})));
    assert_eq!(generated["budget_id"].as_str().unwrap().len(), 36);
    let a = api.master("POST", "/budget/new", Some(json!({"budget_id": "gold"})));
    assert_eq!(a.status, 400);
    assert!(message(&a.body).contains("Budget with id 'gold' already exists."));
    let a = api.master("POST", "/budget/new", Some(json!({"max_budget": -2})));
    assert_eq!(a.status, 400);
    assert!(
        message(&a.body).contains("max_budget must be a non-negative finite number. Received: -2")
    );
    let a = api.master(
        "POST",
        "/budget/new",
        Some(json!({"budget_duration": "5x"})),
    );
    assert_eq!(a.status, 400);

    // Info (POST list and GET), list.
    let v = api.admin(
        "POST",
        "/budget/info",
        Some(json!({"budgets": ["gold", "none"]})),
    );
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["tpm_limit"], 100);
    let v = api.admin("GET", "/budget/info?budgets=gold", None);
    assert_eq!(v[0]["budget_id"], "gold");
    assert_eq!(
        api.master("POST", "/budget/info", Some(json!({"budgets": []})))
            .status,
        400
    );
    assert_eq!(
        api.admin("GET", "/budget/list", None)
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Dependents: a customer, a key linked to it.
    api.admin(
        "POST",
        "/customer/new",
        Some(json!({"user_id": "c", "budget_id": "gold"})),
    );
    let (_, token) = api.new_key(json!({"budget_id": "gold"}));
    let rec = api.lookup(&token);
    // The key follows the row where its own fields are unset.
    assert_eq!(
        (rec.max_budget, rec.tpm_limit, rec.max_parallel_requests),
        (Some(5.0), Some(100), Some(2))
    );
    let a = api.master(
        "POST",
        "/budget/update",
        Some(json!({"budget_id": "gold", "max_budget": 6.0, "tpm_limit": null})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["max_budget"], 6.0);
    assert_eq!(a.body["tpm_limit"], Value::Null);
    let mut want = vec![token.clone(), "customer:c".to_string()];
    want.sort();
    assert_eq!(a.entries(), want);
    assert_eq!(api.lookup(&token).max_budget, Some(6.0));
    assert_eq!(
        api.master("POST", "/budget/update", Some(json!({"max_budget": 1.0})))
            .status,
        400
    );
    assert_eq!(
        api.master("POST", "/budget/update", Some(json!({"budget_id": "x"})))
            .status,
        404
    );

    let a = api.master("POST", "/budget/delete", Some(json!({"id": "gold"})));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["budget_id"], "gold");
    assert_eq!(a.entries(), want);
    assert_eq!(api.lookup(&token).max_budget, None);
    assert_eq!(
        api.master("POST", "/budget/delete", Some(json!({"id": "gold"})))
            .status,
        404
    );
}
