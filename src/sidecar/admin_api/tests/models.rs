//! `/model_group/info`, called through the router without a port.

use super::*;
use crate::plugin_config::Pricing;

fn settings(s: &mut AdminSettings) {
    let priced = |input: f64, output: f64, max_output: u64| Pricing {
        input_cost_per_token: Some(input),
        output_cost_per_token: Some(output),
        max_output_tokens: Some(max_output),
        ..Default::default()
    };
    s.plugin.deployments[0].pricing = priced(1e-6, 2e-6, 4096);
    let mut second = s.plugin.deployments[0].clone();
    second.id = "gpt-a-2".into();
    second.provider = "azure".into();
    second.pricing = priced(3e-6, 1e-6, 8192);
    s.plugin.deployments.push(second);
    s.plugin.deployments.push(Deployment {
        model_name: "anthropic/*".into(),
        id: "anthropic-any".into(),
        provider: "anthropic".into(),
        model_pattern: "anthropic/*".into(),
        ..Default::default()
    });
    s.plugin
        .wildcard_prices
        .insert("anthropic/claude-x".into(), priced(5e-6, 6e-6, 1000));
    let info = |v: Value| v.as_object().unwrap().clone();
    s.model_info_extra.insert(
        "gpt-a-id".into(),
        info(json!({"mode": "chat", "max_input_tokens": 128000, "supports_vision": true})),
    );
    s.model_info_extra.insert(
        "gpt-a-2".into(),
        info(json!({"max_input_tokens": 16000, "supports_function_calling": true})),
    );
    s.deployment_tpm_rpm
        .insert("gpt-a-id".into(), (Some(1000), Some(10)));
    s.deployment_tpm_rpm
        .insert("gpt-a-2".into(), (Some(500), None));
}

fn groups(a: &Answer) -> Vec<String> {
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["model_group"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn model_group_info_merges_deployments_as_litellm() {
    let state = test_state(BudgetSettings::default(), None, settings);
    let master = format!("Bearer {MASTER}");
    let all = oneshot(&state, "GET", "/model_group/info", &master, None);
    // The wildcard route is expanded into the cost map's models, not listed itself.
    assert_eq!(
        groups(&all),
        ["gpt-a", "gpt-b", "gpt-c", "anthropic/claude-x"]
    );
    let a = &all.body["data"][0];
    assert_eq!(a["providers"], json!(["openai", "azure"]));
    assert_eq!(a["max_input_tokens"], json!(128000.0));
    assert_eq!(a["max_output_tokens"], json!(8192.0));
    assert_eq!(a["input_cost_per_token"], json!(3e-6));
    assert_eq!(a["output_cost_per_token"], json!(2e-6));
    assert_eq!(a["mode"], "chat");
    assert_eq!(
        (a["tpm"].clone(), a["rpm"].clone()),
        (json!(1500), json!(10))
    );
    assert_eq!(a["supports_vision"], true);
    assert_eq!(a["supports_function_calling"], true);
    assert_eq!(a["supports_reasoning"], false);
    let b = &all.body["data"][1];
    assert_eq!(
        (b["tpm"].clone(), b["mode"].clone()),
        (Value::Null, Value::Null)
    );
    let x = &all.body["data"][3];
    assert_eq!(x["providers"], json!(["anthropic"]));
    assert_eq!(x["input_cost_per_token"], json!(5e-6));

    let one = oneshot(
        &state,
        "GET",
        "/model_group/info?model_group=gpt-c",
        &master,
        None,
    );
    assert_eq!(groups(&one), ["gpt-c"]);
}

#[test]
fn model_group_info_shows_a_key_its_own_models() {
    let state = test_state(BudgetSettings::default(), None, settings);
    let master = format!("Bearer {MASTER}");
    let k = oneshot(
        &state,
        "POST",
        "/key/generate",
        &master,
        Some(json!({"models": ["beta", "gpt-c"]})),
    );
    let raw = k.body["key"].as_str().unwrap().to_string();
    let mine = oneshot(
        &state,
        "GET",
        "/model_group/info",
        &format!("Bearer {raw}"),
        None,
    );
    assert_eq!(groups(&mine), ["gpt-a", "gpt-c"]);
    let nobody = oneshot(&state, "GET", "/model_group/info", "Bearer sk-nope", None);
    assert_eq!(nobody.status, 401, "{}", nobody.body);
}

/// `router_settings.model_group_alias`: a listed alias is a model group of its own, described
/// by its target's deployments; a hidden one is left out.
#[test]
fn router_aliases_are_model_groups_unless_hidden() {
    let state = test_state(BudgetSettings::default(), None, |s| {
        settings(s);
        for (alias, target, hidden) in [("fast", "gpt-a", false), ("secret", "gpt-b", true)] {
            s.plugin.aliases.model_group_alias.insert(
                alias.into(),
                crate::plugin_config::GroupAlias {
                    model: target.into(),
                    hidden,
                },
            );
        }
    });
    let master = format!("Bearer {MASTER}");
    let all = oneshot(&state, "GET", "/model_group/info", &master, None);
    let names = groups(&all);
    assert!(names.contains(&"fast".to_string()), "{names:?}");
    assert!(!names.contains(&"secret".to_string()), "{names:?}");
    let fast = oneshot(
        &state,
        "GET",
        "/model_group/info?model_group=fast",
        &master,
        None,
    );
    let g = &fast.body["data"][0];
    assert_eq!(g["model_group"], "fast");
    assert_eq!(g["providers"], json!(["openai", "azure"]));
    assert_eq!(g["input_cost_per_token"], json!(3e-6));

    let info = oneshot(&state, "GET", "/model/info", &master, None);
    let rows: Vec<(String, String)> = info.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["model_name"].as_str().unwrap().to_string(),
                d["model_info"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        rows.contains(&("fast".into(), "gpt-a-id".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&("fast".into(), "gpt-a-2".into())),
        "{rows:?}"
    );
    assert!(!rows.iter().any(|(n, _)| n == "secret"), "{rows:?}");

    // A key sees the alias when its list allows the target's access group.
    let k = oneshot(
        &state,
        "POST",
        "/key/generate",
        &master,
        Some(json!({"models": ["beta"]})),
    );
    let raw = k.body["key"].as_str().unwrap().to_string();
    let mine = oneshot(
        &state,
        "GET",
        "/model_group/info",
        &format!("Bearer {raw}"),
        None,
    );
    assert_eq!(groups(&mine), ["gpt-a", "fast"]);
}
