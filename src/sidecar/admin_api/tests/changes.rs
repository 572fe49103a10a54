//! The change log the filter polls, and `/model/info`.

use super::*;
use crate::records::Changes;

fn changes(api: &Api, since: Option<i64>) -> Changes {
    let path = match since {
        Some(s) => format!("/tollgate/internal/v1/changes?since={s}"),
        None => "/tollgate/internal/v1/changes".to_string(),
    };
    let (status, v) = api.call("GET", &path, &api.internal, None);
    assert_eq!(status, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

#[test]
fn change_log_lists_what_changed_since() {
    let api = Api::start(BudgetSettings::default());
    let start = changes(&api, None);
    assert_eq!((start.seq, start.entries.len()), (0, 0));
    let (raw, token) = api.new_key(json!({}));
    let after_generate = changes(&api, None).seq;
    assert_eq!(changes(&api, Some(0)).entries, vec![token.clone()]);
    api.admin("POST", "/key/block", Some(json!({"key": raw})));
    api.admin("POST", "/customer/new", Some(json!({"user_id": "c9"})));
    let c = changes(&api, Some(after_generate));
    assert_eq!(c.entries, vec![token.clone(), "customer:c9".to_string()]);
    // Up to date: nothing. A seq from another store (ahead of this one): everything.
    assert!(changes(&api, Some(c.seq)).entries.is_empty());
    assert_eq!(changes(&api, Some(c.seq + 100)).entries, vec!["*"]);
    // Read-only calls record nothing.
    api.admin("GET", "/key/list", None);
    api.lookup(&token);
    assert_eq!(changes(&api, None).seq, c.seq);
    // The internal bearer is required.
    let (status, _) = api.call(
        "GET",
        "/tollgate/internal/v1/changes?since=0",
        &format!("Bearer {MASTER}"),
        None,
    );
    assert_eq!(status, 401);
    let (status, _) = api.call(
        "GET",
        "/tollgate/internal/v1/changes?since=x",
        &api.internal,
        None,
    );
    assert_eq!(status, 400);
}

#[test]
fn big_changes_collapse_to_a_star() {
    let api = Api::start(BudgetSettings::default());
    api.admin("POST", "/team/new", Some(json!({"team_id": "big"})));
    let before = changes(&api, None).seq;
    // 300 keys: too many for one header.
    for _ in 0..300 {
        api.new_key(json!({"team_id": "big"}));
    }
    let mid = changes(&api, None).seq;
    let a = api.master("POST", "/team/block", Some(json!({"team_id": "big"})));
    assert_eq!(a.invalidate.as_deref(), Some("*"));
    // The log keeps them one by one (the filter can tombstone exactly).
    let c = changes(&api, Some(mid));
    assert_eq!(c.entries.len(), 300);
    assert_eq!(changes(&api, Some(before)).entries.len(), 300);
}

#[test]
fn pruned_history_answers_star() {
    use crate::sidecar::store::Store;
    let store = Store::open(std::path::Path::new(":memory:")).unwrap();
    let write = |n: usize| {
        store
            .transact(0, |tx| {
                for i in 0..n {
                    tx.invalidate(format!("k{i}"));
                }
                Ok::<_, anyhow::Error>(())
            })
            .unwrap()
    };
    write(3);
    let c = store.changes_since(Some(0)).unwrap();
    assert_eq!((c.seq, c.entries.len()), (3, 3));
    // More than an answer may list.
    write(10_001);
    let c = store.changes_since(Some(0)).unwrap();
    assert_eq!(c.entries, vec!["*"]);
    let c = store.changes_since(Some(3)).unwrap();
    assert_eq!(c.entries, vec!["*"]);
    assert_eq!(c.seq, 4);
    write(2);
    assert_eq!(
        store.changes_since(Some(4)).unwrap().entries,
        vec!["k0", "k1"]
    );
}

#[test]
fn model_info_shows_what_the_caller_may_use() {
    let api = Api::start(BudgetSettings::default());
    let all = api.admin("GET", "/model/info", None);
    let names: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gpt-a", "gpt-b", "gpt-c"]);
    assert_eq!(
        all["data"][0]["model_info"]["access_groups"],
        json!(["beta"])
    );
    assert_eq!(all["data"][0]["litellm_params"]["model"], "openai/gpt-a");
    let (raw, _) = api.new_key(json!({"models": ["beta", "gpt-c"]}));
    let mine = api.with_key(&raw, "GET", "/model/info", None);
    assert_eq!(mine.status, 200);
    let names: Vec<&str> = mine.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gpt-a", "gpt-c"]);
    // A team key: the team's list applies too.
    api.admin(
        "POST",
        "/team/new",
        Some(json!({"team_id": "t", "models": ["gpt-c"]})),
    );
    let (raw, _) = api.new_key(json!({"team_id": "t", "models": ["all-team-models"]}));
    let v = api.with_key(&raw, "GET", "/v1/model/info", None).body;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["model_name"], "gpt-c");
    let v = api.admin("GET", "/model/info?litellm_model_id=gpt-b-id", None);
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
}

#[test]
fn provider_keys_go_to_the_internal_bearer_only_with_the_change_log_fingerprint() {
    let api = Api::start(BudgetSettings::default());
    let path = crate::contract::PROVIDER_KEYS_PATH;
    let (status, v) = api.call("GET", path, &api.internal, None);
    assert_eq!(status, 200, "{v}");
    let keys: crate::provider_keys::ProviderKeys = serde_json::from_value(v).unwrap();
    assert_eq!(keys.key_for("gpt-b-id"), Some("sk-provider-gpt-b"));
    assert_eq!(keys.keys.len(), 3);
    assert_eq!(changes(&api, None).provider_keys, Some(keys.fingerprint));
    for auth in [
        format!("Bearer {MASTER}"),
        "Bearer sk-nope".to_string(),
        String::new(),
    ] {
        let (status, v) = api.call("GET", path, &auth, None);
        assert_eq!(status, 401, "{auth}: {v}");
        assert!(!v.to_string().contains("sk-provider-"), "{v}");
    }
}
