//! `GET /v1/models` (answered by the filter) and the model names `/model/info` and
//! `/model_group/info` show a caller, as LiteLLM 1.110.2 lists them (`model_list`,
//! `get_complete_model_list`): the models the caller may call, a wildcard deployment
//! (`openai/*`) expanded into the cost map's models of its provider, the query options
//! `return_wildcard_routes`, `include_model_access_groups` and `only_model_access_groups`, and
//! one row per team or key alias whose target is listed.

use crate::admission::{key_models, Caller};
use crate::model_access::{allows_all, list_allows, resolve_aliases, wildcard_match, ModelFacts};
use crate::plugin_config::PluginConfig;
use crate::records::KeyRecord;

/// The query options of `/v1/models` Tollgate answers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ListOptions {
    /// Also list the wildcard routes themselves (`openai/*`), not only what they expand to.
    pub return_wildcard_routes: bool,
    /// Also list the access groups the caller may use.
    pub include_model_access_groups: bool,
    /// List only those access groups.
    pub only_model_access_groups: bool,
}

impl ListOptions {
    /// The options in a request path's query string (`/v1/models?return_wildcard_routes=true`).
    /// Booleans are read as FastAPI reads them: `true`/`1`/`yes`/`on` (any case) are true.
    pub fn from_path(path: &str) -> ListOptions {
        let mut options = ListOptions::default();
        let Some((_, query)) = path.split_once('?') else {
            return options;
        };
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let on = matches!(
                value.to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            );
            match name {
                "return_wildcard_routes" => options.return_wildcard_routes = on,
                "include_model_access_groups" => options.include_model_access_groups = on,
                "only_model_access_groups" => options.only_model_access_groups = on,
                _ => {}
            }
        }
        options
    }
}

/// Whether the caller's lists allow `name`: the key's, then its team's (team keys) or its
/// user's (personal keys).
fn caller_allows(caller: &Caller, facts: &ModelFacts<'_>) -> bool {
    match caller {
        Caller::Master => true,
        Caller::VirtualKey { record, .. } => {
            list_allows(key_models(record), facts) && list_allows(second_list(record), facts)
        }
    }
}

/// The list that applies after the key's own: the team's for team keys, else the user's.
fn second_list(record: &KeyRecord) -> &[String] {
    match record.team_id {
        Some(_) => &record.team_models,
        None => &record.user_models,
    }
}

/// Whether the caller may use access group `group` by name (a list that allows everything,
/// or names the group).
fn caller_has_group(caller: &Caller, group: &str) -> bool {
    let has = |list: &[String]| allows_all(list) || list.iter().any(|m| m == group);
    match caller {
        Caller::Master => true,
        Caller::VirtualKey { record, .. } => has(key_models(record)) && has(second_list(record)),
    }
}

/// What LiteLLM's `get_known_models_from_wildcard` lists for a wildcard deployment: the cost
/// map's models of the deployment's provider matching its pattern, as `provider/model`. A
/// bare `*` routed to `*` names no provider and lists nothing.
pub fn wildcard_expansion(config: &PluginConfig, model_name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in config.deployments_for(model_name) {
        // `model_name: "*"` with `model: "openai/*"` expands as `openai/*`.
        let pattern = if model_name == "*" && d.model_pattern.contains('/') {
            d.model_pattern.as_str()
        } else {
            model_name
        };
        let Some((prefix, _)) = pattern.split_once('/') else {
            continue;
        };
        let provider = if d.provider.is_empty() {
            prefix
        } else {
            d.provider.as_str()
        };
        for key in config.wildcard_prices.keys() {
            let Some(model) = key.strip_prefix(provider).and_then(|m| m.strip_prefix('/')) else {
                continue;
            };
            let listed = format!("{prefix}/{model}");
            if wildcard_match(pattern, &listed) && !out.contains(&listed) {
                out.push(listed);
            }
        }
    }
    out
}

/// The model names a caller sees, without its aliases (`/model_group/info`, `/model/info`).
pub fn visible_models(config: &PluginConfig, caller: &Caller, options: ListOptions) -> Vec<String> {
    let groups_of = |name: &str| -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for d in config.deployments_for(name) {
            for g in &d.access_groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        groups
    };
    let allowed = |name: &str, groups: &[String]| {
        caller_allows(
            caller,
            &ModelFacts {
                requested: name,
                access_groups: groups,
                provider: crate::model_access::provider_of_requested(name),
            },
        )
    };
    let mut access_groups: Vec<String> = Vec::new();
    for d in &config.deployments {
        for g in &d.access_groups {
            if !access_groups.contains(g) && caller_has_group(caller, g) {
                access_groups.push(g.clone());
            }
        }
    }
    if options.only_model_access_groups {
        return access_groups;
    }
    let mut names: Vec<String> = Vec::new();
    let mut wildcards: Vec<String> = Vec::new();
    for name in config.model_names() {
        let groups = groups_of(name);
        if !name.contains('*') {
            if allowed(name, &groups) {
                names.push(name.to_string());
            }
            continue;
        }
        if options.return_wildcard_routes && allowed(name, &groups) {
            wildcards.push(name.to_string());
        }
        for model in wildcard_expansion(config, name) {
            if allowed(&model, &groups) {
                wildcards.push(model);
            }
        }
    }
    // The router's aliases that are not `hidden`, as model groups of their own (LiteLLM's
    // `get_model_list` lists them), when their target routes and the caller may use them.
    for (alias, target) in config.aliases.listed_group_aliases() {
        let candidates = crate::admission::route_candidates(config, target);
        let mut groups: Vec<String> = Vec::new();
        for d in &candidates {
            for g in &d.access_groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        if !candidates.is_empty() && !names.iter().any(|n| n == alias) && allowed(alias, &groups) {
            names.push(alias.to_string());
        }
    }
    if options.include_model_access_groups {
        names.extend(access_groups);
    }
    for name in wildcards {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// `/v1/models`: [`visible_models`] plus one row per team alias, then key alias, whose
/// target is listed (LiteLLM's `alias_listing_entries`).
pub fn listed_models(config: &PluginConfig, caller: &Caller, options: ListOptions) -> Vec<String> {
    let mut names = visible_models(config, caller, options);
    if let Caller::VirtualKey { record, .. } = caller {
        let aliases = record
            .team_model_aliases
            .keys()
            .chain(record.aliases.keys());
        let mut added: Vec<String> = Vec::new();
        for alias in aliases {
            let target = resolve_aliases(
                alias,
                &record.team_model_aliases,
                &record.aliases,
                &config.aliases,
            );
            if !names.contains(alias)
                && !added.contains(alias)
                && names.contains(&target.dispatched)
            {
                added.push(alias.clone());
            }
        }
        names.extend(added);
    }
    names
}

/// The `/v1/models` answer in OpenAI's shape, as LiteLLM writes it.
pub fn model_list_body(names: &[String]) -> Vec<u8> {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 1677610602, "owned_by": "openai"}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_config::{Deployment, Pricing};

    fn dep(name: &str, provider: &str, pattern: &str, groups: &[&str]) -> Deployment {
        Deployment {
            model_name: name.into(),
            id: format!("{name}-id"),
            provider: provider.into(),
            model_pattern: pattern.into(),
            access_groups: groups.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn config() -> PluginConfig {
        let mut cfg = PluginConfig {
            deployments: vec![
                dep("gpt-a", "openai", "", &["beta"]),
                dep("gpt-b", "openai", "", &[]),
                dep("anthropic/*", "anthropic", "anthropic/*", &[]),
                dep("*", "", "*", &[]),
            ],
            ..Default::default()
        };
        for m in [
            "anthropic/claude-3-haiku",
            "anthropic/claude-3-opus",
            "openai/gpt-4o",
        ] {
            cfg.wildcard_prices.insert(m.into(), Pricing::default());
        }
        cfg
    }

    fn key(record: KeyRecord) -> Caller {
        Caller::VirtualKey {
            record: std::rc::Rc::new(record),
            raw_last4: "abcd".into(),
        }
    }

    fn models(list: &[&str]) -> KeyRecord {
        KeyRecord {
            models: list.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn options_are_read_from_the_query() {
        assert_eq!(ListOptions::from_path("/v1/models"), ListOptions::default());
        let o = ListOptions::from_path(
            "/v1/models?return_wildcard_routes=True&include_model_access_groups=1&x=y",
        );
        assert!(o.return_wildcard_routes && o.include_model_access_groups);
        assert!(!o.only_model_access_groups);
        assert!(
            !ListOptions::from_path("/models?only_model_access_groups=false")
                .only_model_access_groups
        );
    }

    #[test]
    fn wildcards_are_expanded_not_listed() {
        let cfg = config();
        let all = visible_models(&cfg, &Caller::Master, ListOptions::default());
        assert_eq!(
            all,
            [
                "gpt-a",
                "gpt-b",
                "anthropic/claude-3-haiku",
                "anthropic/claude-3-opus"
            ]
        );
        let with_routes = visible_models(
            &cfg,
            &Caller::Master,
            ListOptions {
                return_wildcard_routes: true,
                ..Default::default()
            },
        );
        assert_eq!(
            with_routes,
            [
                "gpt-a",
                "gpt-b",
                "anthropic/*",
                "anthropic/claude-3-haiku",
                "anthropic/claude-3-opus",
                "*"
            ]
        );
    }

    #[test]
    fn expansion_follows_the_callers_lists() {
        let cfg = config();
        let k = key(models(&["anthropic/claude-3-h*", "gpt-b"]));
        assert_eq!(
            visible_models(&cfg, &k, ListOptions::default()),
            ["gpt-b", "anthropic/claude-3-haiku"]
        );
    }

    #[test]
    fn access_groups_on_request() {
        let cfg = config();
        let k = key(models(&["beta"]));
        assert_eq!(visible_models(&cfg, &k, ListOptions::default()), ["gpt-a"]);
        let include = ListOptions {
            include_model_access_groups: true,
            ..Default::default()
        };
        assert_eq!(visible_models(&cfg, &k, include), ["gpt-a", "beta"]);
        let only = ListOptions {
            only_model_access_groups: true,
            ..Default::default()
        };
        assert_eq!(visible_models(&cfg, &k, only), ["beta"]);
        assert!(visible_models(&cfg, &key(models(&["gpt-b"])), only).is_empty());
    }

    #[test]
    fn aliases_with_a_listed_target_are_listed() {
        let cfg = config();
        let mut record = models(&["gpt-b"]);
        record.team_id = Some("t".into());
        record.team_model_aliases = [("fast".to_string(), "gpt-b".to_string())].into();
        record.aliases = [("hidden".to_string(), "gpt-a".to_string())].into();
        assert_eq!(
            listed_models(&cfg, &key(record), ListOptions::default()),
            ["gpt-b", "fast"]
        );
    }

    #[test]
    fn router_aliases_are_listed_unless_hidden() {
        let mut cfg = config();
        for (alias, target, hidden) in [("a-alias", "gpt-a", false), ("b-hidden", "gpt-b", true)] {
            cfg.aliases.model_group_alias.insert(
                alias.into(),
                crate::plugin_config::GroupAlias {
                    model: target.into(),
                    hidden,
                },
            );
        }
        let all = listed_models(&cfg, &Caller::Master, ListOptions::default());
        assert_eq!(all[..3], ["gpt-a", "gpt-b", "a-alias"], "{all:?}");
        assert!(!all.iter().any(|m| m == "b-hidden"), "{all:?}");
        // A key sees an alias its list allows: by the alias's name or the target's group.
        for (list, expected) in [
            (&["beta"][..], &["gpt-a", "a-alias"][..]),
            (&["a-alias"], &["a-alias"]),
            (&["gpt-b"], &["gpt-b"]),
        ] {
            let k = key(models(list));
            assert_eq!(
                listed_models(&cfg, &k, ListOptions::default()),
                expected,
                "{list:?}"
            );
        }
    }

    #[test]
    fn body_has_openais_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&model_list_body(&["m".to_string()])).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"object": "list", "data": [{"id": "m", "object": "model", "created": 1677610602, "owned_by": "openai"}]})
        );
    }
}
