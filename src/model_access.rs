//! Model access lists, with LiteLLM's semantics (litellm-compat.md §6).
//!
//! A list allows a model when it is empty or holds `*` / `all-proxy-models`, names the model,
//! names an access group one of the model's deployments belongs to, or holds a wildcard that
//! matches the requested name (or `provider/name`).

/// Special entries that allow everything.
const ALLOW_ALL: [&str; 2] = ["*", "all-proxy-models"];

/// Facts about the requested model that list matching needs.
pub struct ModelFacts<'a> {
    /// The name the client asked for.
    pub requested: &'a str,
    /// Access groups of every deployment serving that name.
    pub access_groups: &'a [String],
    /// Provider of the model (`openai` for `openai/gpt-4o`), for `provider/*` wildcards.
    pub provider: Option<&'a str>,
}

/// The provider LiteLLM's `get_llm_provider` finds for a requested name: the prefix of
/// `provider/model`, or `openai` for OpenAI's own model families. `None` for names it cannot
/// place, which then never match `provider/*` wildcards (litellm-compat.md §6).
pub fn provider_of_requested(name: &str) -> Option<&str> {
    if let Some((provider, rest)) = name.split_once('/') {
        return (!provider.is_empty() && !rest.is_empty()).then_some(provider);
    }
    const OPENAI_FAMILIES: [&str; 12] = [
        "gpt-",
        "o1",
        "o3",
        "o4",
        "chatgpt-",
        "text-embedding-",
        "davinci",
        "babbage",
        "dall-e",
        "whisper",
        "tts-",
        "omni-moderation",
    ];
    OPENAI_FAMILIES
        .iter()
        .any(|f| name.starts_with(f))
        .then_some("openai")
}

/// Whether `list` allows every model (empty, `*` or `all-proxy-models`).
pub fn allows_all(list: &[String]) -> bool {
    list.is_empty() || list.iter().any(|m| ALLOW_ALL.contains(&m.as_str()))
}

/// Whether `list` allows the model. `team_models` resolves `all-team-models` in a key's list
/// (`None` = the key has no team: no restriction).
pub fn list_allows(list: &[String], facts: &ModelFacts<'_>) -> bool {
    if allows_all(list) {
        return true;
    }
    if list.iter().any(|m| facts.access_groups.contains(m)) {
        return true;
    }
    let provider_name = facts.provider.map(|p| format!("{p}/{}", facts.requested));
    list.iter()
        .filter(|m| !facts.access_groups.contains(m))
        .any(|entry| {
            if entry == facts.requested {
                return true;
            }
            if entry.contains('*') {
                return wildcard_match(entry, facts.requested)
                    || provider_name
                        .as_deref()
                        .is_some_and(|pn| wildcard_match(entry, pn));
            }
            false
        })
}

/// A request's model name after the aliases (LiteLLM's `_can_object_call_model` and
/// `resolve_served_model`).
#[derive(Debug, Clone, PartialEq)]
pub struct AliasedModel {
    /// The model the request is sent to: the team's alias target, then the key's, then the
    /// proxy's `model_alias_map`, the key's again, and last the router's `model_group_alias`.
    pub dispatched: String,
    /// The name the access lists are checked against: the key alias's target (before the
    /// router's alias) when a key alias applied, else the requested one.
    pub checked: String,
    /// With no key alias applied, LiteLLM also allows the call when a list allows the
    /// proxy's alias target of the requested name (`model_alias_map`, else
    /// `model_group_alias`): either name may be the one an admin listed.
    pub also_checked: Option<String>,
    /// `checked` is one of the team's aliases, which LiteLLM allows whatever the lists say
    /// (`_model_in_team_aliases`): the team's admin chose where it goes.
    pub team_alias: bool,
}

/// Resolves `requested` through the team's `model_aliases`, the key's `aliases` and the
/// proxy's aliases, in LiteLLM's order.
pub fn resolve_aliases(
    requested: &str,
    team_aliases: &std::collections::BTreeMap<String, String>,
    key_aliases: &std::collections::BTreeMap<String, String>,
    proxy: &crate::plugin_config::ProxyAliases,
) -> AliasedModel {
    let through = |map: &'_ std::collections::BTreeMap<String, String>, name: &str| -> String {
        map.get(name).map_or(name, String::as_str).to_string()
    };
    let after_team = through(team_aliases, requested);
    let after_key = through(key_aliases, &after_team);
    let after_global = through(&proxy.model_alias_map, &after_key);
    let after_key_again = through(key_aliases, &after_global);
    let key_alias_applied = after_key != after_team || after_key_again != after_global;
    let dispatched = proxy
        .group_target(&after_key_again)
        .map_or_else(|| after_key_again.clone(), str::to_string);
    let (checked, also_checked) = if key_alias_applied {
        (after_key_again, None)
    } else {
        let target = proxy
            .model_alias_map
            .get(requested)
            .map(String::as_str)
            .or_else(|| proxy.group_target(requested))
            .filter(|t| *t != requested)
            .map(str::to_string);
        (requested.to_string(), target)
    };
    AliasedModel {
        team_alias: team_aliases.contains_key(&checked),
        dispatched,
        checked,
        also_checked,
    }
}

/// A stored alias map (`{"alias": "model"}`) as LiteLLM's `alias_map` reads it: string
/// entries only; anything else is no aliases.
pub fn alias_map(value: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    value
        .as_object()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|(alias, target)| Some((alias.clone(), target.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `*` matches any run of characters (LiteLLM turns the entry into `^entry.replace('*','.*')$`).
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn facts<'a>(requested: &'a str, groups: &'a [String]) -> ModelFacts<'a> {
        ModelFacts {
            requested,
            access_groups: groups,
            provider: Some("openai"),
        }
    }

    #[test]
    fn empty_star_and_all_proxy_models_allow_all() {
        let g = s(&[]);
        assert!(list_allows(&s(&[]), &facts("x", &g)));
        assert!(list_allows(&s(&["*"]), &facts("x", &g)));
        assert!(list_allows(&s(&["all-proxy-models"]), &facts("x", &g)));
    }

    #[test]
    fn exact_and_group() {
        let g = s(&["beta"]);
        assert!(list_allows(&s(&["gpt-a"]), &facts("gpt-a", &g)));
        assert!(!list_allows(&s(&["gpt-b"]), &facts("gpt-a", &g)));
        assert!(list_allows(&s(&["beta"]), &facts("gpt-a", &g)));
        assert!(!list_allows(&s(&["alpha"]), &facts("gpt-a", &g)));
    }

    #[test]
    fn wildcards_on_name_and_provider() {
        let g = s(&[]);
        assert!(list_allows(&s(&["gpt-*"]), &facts("gpt-4o", &g)));
        assert!(list_allows(&s(&["openai/*"]), &facts("gpt-4o", &g)));
        assert!(!list_allows(&s(&["anthropic/*"]), &facts("gpt-4o", &g)));
        assert!(!list_allows(&s(&["claude*"]), &facts("gpt-4o", &g)));
    }

    #[test]
    fn provider_comes_from_the_requested_name() {
        assert_eq!(provider_of_requested("gpt-4o"), Some("openai"));
        assert_eq!(
            provider_of_requested("anthropic/claude-3"),
            Some("anthropic")
        );
        assert_eq!(provider_of_requested("public-chat"), None);
        assert_eq!(provider_of_requested("/x"), None);
    }

    fn map(entries: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        entries
            .iter()
            .map(|(a, t)| (a.to_string(), t.to_string()))
            .collect()
    }

    fn none() -> crate::plugin_config::ProxyAliases {
        crate::plugin_config::ProxyAliases::default()
    }

    fn proxy(
        global: &[(&str, &str)],
        group: &[(&str, &str, bool)],
    ) -> crate::plugin_config::ProxyAliases {
        crate::plugin_config::ProxyAliases {
            model_alias_map: map(global),
            model_group_alias: group
                .iter()
                .map(|(a, t, hidden)| {
                    let alias = crate::plugin_config::GroupAlias {
                        model: t.to_string(),
                        hidden: *hidden,
                    };
                    (a.to_string(), alias)
                })
                .collect(),
        }
    }

    #[test]
    fn proxy_aliases_apply_after_the_callers_and_allow_either_name() {
        let p = proxy(&[("gpt4", "gpt-4o")], &[("claude", "claude-group", false)]);
        // The global map: sent to the target, lists may allow the alias or the target.
        let r = resolve_aliases("gpt4", &map(&[]), &map(&[]), &p);
        assert_eq!(
            (r.dispatched.as_str(), r.checked.as_str()),
            ("gpt-4o", "gpt4")
        );
        assert_eq!(r.also_checked.as_deref(), Some("gpt-4o"));
        // The router's alias: the same, applied last.
        let r = resolve_aliases("claude", &map(&[]), &map(&[]), &p);
        assert_eq!(r.dispatched, "claude-group");
        assert_eq!(r.also_checked.as_deref(), Some("claude-group"));
        // A team alias to a global alias goes on to its target; lists see the team alias.
        let r = resolve_aliases("fast", &map(&[("fast", "gpt4")]), &map(&[]), &p);
        assert_eq!(r.dispatched, "gpt-4o");
        assert!(r.team_alias);
        // A key alias whose target is a router alias: checked by the key alias's target.
        let r = resolve_aliases("mine", &map(&[]), &map(&[("mine", "claude")]), &p);
        assert_eq!(
            (r.dispatched.as_str(), r.checked.as_str()),
            ("claude-group", "claude")
        );
        assert_eq!(r.also_checked, None);
        // The global map's target goes through the key's aliases again, then the router's.
        let p = proxy(&[("gpt4", "mid")], &[("last", "gpt-final", true)]);
        let r = resolve_aliases("gpt4", &map(&[]), &map(&[("mid", "last")]), &p);
        assert_eq!(
            (r.dispatched.as_str(), r.checked.as_str()),
            ("gpt-final", "last")
        );
        // An unaliased name is checked as it is.
        let r = resolve_aliases("gpt-4o", &map(&[]), &map(&[]), &p);
        assert_eq!((r.dispatched.as_str(), r.also_checked), ("gpt-4o", None));
    }

    #[test]
    fn team_alias_is_checked_by_its_own_name() {
        let r = resolve_aliases("fast", &map(&[("fast", "gpt-b")]), &map(&[]), &none());
        assert_eq!(r.dispatched, "gpt-b");
        assert_eq!(r.checked, "fast");
        assert!(r.team_alias);
        let r = resolve_aliases("gpt-b", &map(&[("fast", "gpt-b")]), &map(&[]), &none());
        assert_eq!((r.dispatched.as_str(), r.team_alias), ("gpt-b", false));
    }

    #[test]
    fn key_alias_is_checked_by_its_target_after_the_team_alias() {
        let r = resolve_aliases("mine", &map(&[]), &map(&[("mine", "gpt-a")]), &none());
        assert_eq!(
            (r.dispatched.as_str(), r.checked.as_str()),
            ("gpt-a", "gpt-a")
        );
        assert!(!r.team_alias);
        // The team's alias applies first; the key's then maps its target.
        let r = resolve_aliases(
            "fast",
            &map(&[("fast", "mid")]),
            &map(&[("mid", "gpt-a")]),
            &none(),
        );
        assert_eq!(
            (r.dispatched.as_str(), r.checked.as_str()),
            ("gpt-a", "gpt-a")
        );
    }

    #[test]
    fn alias_maps_keep_string_entries_only() {
        let v = serde_json::json!({"a": "x", "b": 1, "c": null});
        assert_eq!(alias_map(&v), map(&[("a", "x")]));
        assert!(alias_map(&serde_json::json!("{}")).is_empty());
    }

    #[test]
    fn wildcard_matcher() {
        assert!(wildcard_match("a*c", "abc"));
        assert!(wildcard_match("a*c", "ac"));
        assert!(!wildcard_match("a*c", "a"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("a*b*c", "axxc"));
        assert!(!wildcard_match("ab*ba", "aba"));
    }
}
