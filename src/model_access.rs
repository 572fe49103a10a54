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

/// A request's model name after the caller's aliases (LiteLLM's `_can_object_call_model` and
/// `_update_model_if_team_alias_exists` / `_update_model_if_key_alias_exists`).
#[derive(Debug, Clone, PartialEq)]
pub struct AliasedModel {
    /// The model the request is sent to: the team's alias target, then the key's.
    pub dispatched: String,
    /// The name the access lists are checked against: the dispatched name when a key alias
    /// applied, else the requested one.
    pub checked: String,
    /// `checked` is one of the team's aliases, which LiteLLM allows whatever the lists say
    /// (`_model_in_team_aliases`): the team's admin chose where it goes.
    pub team_alias: bool,
}

/// Resolves `requested` through the team's `model_aliases`, then the key's `aliases`.
pub fn resolve_aliases(
    requested: &str,
    team_aliases: &std::collections::BTreeMap<String, String>,
    key_aliases: &std::collections::BTreeMap<String, String>,
) -> AliasedModel {
    let after_team = team_aliases
        .get(requested)
        .map_or(requested, String::as_str);
    let after_key = key_aliases
        .get(after_team)
        .map_or(after_team, String::as_str);
    let checked = if after_key != after_team {
        after_key
    } else {
        requested
    };
    AliasedModel {
        dispatched: after_key.to_string(),
        checked: checked.to_string(),
        team_alias: team_aliases.contains_key(checked),
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

    #[test]
    fn team_alias_is_checked_by_its_own_name() {
        let r = resolve_aliases("fast", &map(&[("fast", "gpt-b")]), &map(&[]));
        assert_eq!(r.dispatched, "gpt-b");
        assert_eq!(r.checked, "fast");
        assert!(r.team_alias);
        let r = resolve_aliases("gpt-b", &map(&[("fast", "gpt-b")]), &map(&[]));
        assert_eq!((r.dispatched.as_str(), r.team_alias), ("gpt-b", false));
    }

    #[test]
    fn key_alias_is_checked_by_its_target_after_the_team_alias() {
        let r = resolve_aliases("mine", &map(&[]), &map(&[("mine", "gpt-a")]));
        assert_eq!(
            (r.dispatched.as_str(), r.checked.as_str()),
            ("gpt-a", "gpt-a")
        );
        assert!(!r.team_alias);
        // The team's alias applies first; the key's then maps its target.
        let r = resolve_aliases("fast", &map(&[("fast", "mid")]), &map(&[("mid", "gpt-a")]));
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
