//! A key never makes a key wider than itself: what a non-admin caller asks for on
//! `/key/generate`, `/key/update` and `/key/regenerate` must fit inside the calling key's own
//! models, budget and budget period, rate limits, per-model limits, expiry and routes (LiteLLM's
//! delegation ceiling on `max_budget`, carried over to every limit). On `/key/generate` what the
//! request leaves open is taken from the caller; on an update only what changes is checked.

use super::common::model_limits;
use super::internal::model_budgets;
use crate::model_access::{allows_all, list_allows, provider_of_requested, ModelFacts};
use crate::plugin_config::PluginConfig;
use crate::records::{BudgetState, KeyRecord};
use crate::sidecar::store::KeyRow;
use crate::time::{parse_duration, parse_iso8601_utc, ParsedDuration};
use serde_json::{Map, Value};

/// Fits `row` inside `caller`. `before` is the key as stored (update, regenerate): aspects it
/// shares with `row` are left alone. Without `before` (generate), unset aspects inherit the
/// caller's. The error is the message for a 400.
pub fn fit_within(
    caller: &KeyRow,
    plugin: &PluginConfig,
    before: Option<&KeyRow>,
    row: &mut KeyRow,
) -> Result<(), String> {
    let inherit = before.is_none();
    let changed = |same: &dyn Fn(&KeyRow) -> bool| before.is_none_or(|b| !same(b));

    if changed(&|b| b.models == row.models) {
        fit_models(caller, plugin, inherit, &mut row.models)?;
    }
    if changed(&|b| b.max_budget == row.max_budget) {
        if let Some(mine) = caller.max_budget {
            match row.max_budget {
                None if inherit => row.max_budget = Some(mine),
                Some(asked) if asked <= mine => {}
                asked => {
                    return Err(format!(
                        "max_budget ({}) cannot exceed the caller's own max_budget ({mine}).",
                        asked.map_or("None".to_string(), |a| a.to_string())
                    ))
                }
            }
        }
    }
    if changed(&|b| b.budget_duration == row.budget_duration) {
        fit_budget_duration(caller, row)?;
    }
    for (name, mine, asked, was) in [
        (
            "tpm_limit",
            caller.tpm_limit,
            &mut row.tpm_limit,
            before.map(|b| b.tpm_limit),
        ),
        (
            "rpm_limit",
            caller.rpm_limit,
            &mut row.rpm_limit,
            before.map(|b| b.rpm_limit),
        ),
        (
            "max_parallel_requests",
            caller.max_parallel_requests,
            &mut row.max_parallel_requests,
            before.map(|b| b.max_parallel_requests),
        ),
    ] {
        if was == Some(*asked) {
            continue;
        }
        fit_limit(name, mine, asked, inherit)?;
    }
    for field in ["model_rpm_limit", "model_tpm_limit"] {
        if changed(&|b| model_limits(&b.metadata, field) == model_limits(&row.metadata, field)) {
            fit_model_limits(caller, field, inherit, &mut row.metadata)?;
        }
    }
    if changed(&|b| model_budgets(&b.model_max_budget) == model_budgets(&row.model_max_budget)) {
        fit_model_budgets(caller, inherit, &mut row.model_max_budget)?;
    }
    if changed(&|b| b.expires == row.expires) {
        if let Some(mine) = caller.expires.as_deref() {
            let mine_at = parse_iso8601_utc(mine);
            match row.expires.as_deref().map(parse_iso8601_utc) {
                None if inherit => row.expires = Some(mine.to_string()),
                Some(Some(at)) if mine_at.is_some_and(|m| at <= m) => {}
                _ => {
                    return Err(format!(
                        "The key cannot outlive the calling key: expires ({}) is after the caller's own expiry ({mine}).",
                        row.expires.as_deref().unwrap_or("never")
                    ))
                }
            }
        }
    }
    if changed(&|b| b.allowed_routes == row.allowed_routes) && !caller.allowed_routes.is_empty() {
        if inherit && row.allowed_routes.is_empty() {
            row.allowed_routes = caller.allowed_routes.clone();
        } else if row.allowed_routes.is_empty()
            || row
                .allowed_routes
                .iter()
                .any(|r| !caller.allowed_routes.contains(r))
        {
            return Err(format!(
                "allowed_routes {:?} are wider than the caller's own allowed_routes {:?}.",
                row.allowed_routes, caller.allowed_routes
            ));
        }
    }
    Ok(())
}

/// Whether a new key's spending is also capped by a budget shared with its siblings: its
/// team's or its team membership's (team keys), or its user's (personal keys, where the filter
/// enforces it). A caller whose budget is only its own cannot mint keys, or each child would
/// bring a fresh budget of the same size (LiteLLM's ceiling compares `max_budget`s and ignores
/// spend, so there a spent $1 key mints another $1 key, and so on).
pub fn shares_a_budget(child: &KeyRecord) -> bool {
    let capped = |b: &Option<BudgetState>| b.as_ref().is_some_and(|b| b.max_budget.is_some());
    if child.team_id.is_some() {
        capped(&child.team_budget) || capped(&child.team_member_budget)
    } else {
        capped(&child.user_budget)
    }
}

/// Each model the key may call must be one the caller may call: named in the caller's list,
/// or a plain model name the caller's list allows (through an access group or a wildcard).
fn fit_models(
    caller: &KeyRow,
    plugin: &PluginConfig,
    inherit: bool,
    models: &mut Vec<String>,
) -> Result<(), String> {
    if allows_all(&caller.models) {
        return Ok(());
    }
    if inherit && models.is_empty() {
        models.clone_from(&caller.models);
        return Ok(());
    }
    let is_group = |m: &str| {
        plugin
            .deployments
            .iter()
            .any(|d| d.access_groups.iter().any(|g| g == m))
    };
    let fits = |m: &String| {
        if caller.models.contains(m) {
            return true;
        }
        if m.contains('*') || is_group(m) {
            return false;
        }
        let groups: Vec<String> = plugin
            .deployments
            .iter()
            .filter(|d| d.model_name == *m)
            .flat_map(|d| d.access_groups.iter().cloned())
            .collect();
        list_allows(
            &caller.models,
            &ModelFacts {
                requested: m,
                access_groups: &groups,
                provider: provider_of_requested(m),
            },
        )
    };
    if allows_all(models) || !models.iter().all(fits) {
        return Err(format!(
            "models {models:?} are wider than the caller's own models {:?}.",
            caller.models
        ));
    }
    Ok(())
}

fn fit_limit(
    name: &str,
    mine: Option<u64>,
    asked: &mut Option<u64>,
    inherit: bool,
) -> Result<(), String> {
    let Some(mine) = mine else { return Ok(()) };
    match *asked {
        None if inherit => *asked = Some(mine),
        Some(a) if a <= mine => {}
        a => {
            return Err(format!(
                "{name} ({}) cannot exceed the caller's own {name} ({mine}).",
                a.map_or("None".to_string(), |a| a.to_string())
            ))
        }
    }
    Ok(())
}

/// Seconds of a period, months taken as 30 days (only to compare periods).
fn period_seconds(d: &str) -> Option<u64> {
    match parse_duration(d).ok()? {
        ParsedDuration::Seconds(s) => Some(s),
        ParsedDuration::Months(m) => Some(u64::from(m) * 30 * 86_400),
    }
}

/// A budget that renews may not renew more often than the caller's: with a caller budget, the
/// key's period must be at least the caller's (a budget that never renews always fits).
fn fit_budget_duration(caller: &KeyRow, row: &KeyRow) -> Result<(), String> {
    let (Some(_), Some(asked)) = (caller.max_budget, row.budget_duration.as_deref()) else {
        return Ok(());
    };
    let mine = caller.budget_duration.as_deref();
    let fits = match (period_seconds(asked), mine.and_then(period_seconds)) {
        (Some(a), Some(m)) => a >= m,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "budget_duration ({asked}) would renew the budget more often than the caller's own budget_duration ({}).",
            mine.unwrap_or("None")
        ))
    }
}

fn fit_model_limits(
    caller: &KeyRow,
    field: &str,
    inherit: bool,
    metadata: &mut Value,
) -> Result<(), String> {
    let mine = model_limits(&caller.metadata, field);
    if mine.is_empty() {
        return Ok(());
    }
    let asked = model_limits(metadata, field);
    let mut merged = Map::new();
    for (model, limit) in &mine {
        match asked.get(model) {
            None if inherit => {}
            Some(a) if a <= limit => {}
            a => {
                return Err(format!(
                    "{field}[{model}] ({}) cannot exceed the caller's own ({limit}).",
                    a.map_or("None".to_string(), |a| a.to_string())
                ))
            }
        }
        merged.insert(
            model.clone(),
            Value::from(*asked.get(model).unwrap_or(limit)),
        );
    }
    for (model, limit) in asked {
        merged.entry(model).or_insert(Value::from(limit));
    }
    if let Value::Object(o) = metadata {
        o.insert(field.to_string(), Value::Object(merged));
    }
    Ok(())
}

fn fit_model_budgets(
    caller: &KeyRow,
    inherit: bool,
    model_max_budget: &mut Value,
) -> Result<(), String> {
    let mine = model_budgets(&caller.model_max_budget);
    if mine.is_empty() {
        return Ok(());
    }
    let asked = model_budgets(model_max_budget);
    for (model, limit) in &mine {
        match asked.get(model) {
            None if inherit => {
                if let (Value::Object(o), Some(entry)) =
                    (&mut *model_max_budget, caller.model_max_budget.get(model))
                {
                    o.insert(model.clone(), entry.clone());
                } else {
                    *model_max_budget = caller.model_max_budget.clone();
                }
            }
            Some(a)
                if a.max_budget <= limit.max_budget
                    && period_seconds(&a.budget_duration)
                        .zip(period_seconds(&limit.budget_duration))
                        .is_some_and(|(a, m)| a >= m) => {}
            _ => {
                return Err(format!(
                    "model_max_budget[{model}] cannot exceed the caller's own ({} per {}).",
                    limit.max_budget, limit.budget_duration
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller() -> KeyRow {
        KeyRow {
            models: vec!["gpt-a".into()],
            max_budget: Some(1.0),
            budget_duration: Some("30d".into()),
            tpm_limit: Some(100),
            rpm_limit: Some(10),
            max_parallel_requests: Some(2),
            metadata: json!({"model_rpm_limit": {"gpt-a": 5}}),
            model_max_budget: json!({"gpt-a": {"budget_limit": 0.5, "time_period": "30d"}}),
            expires: Some("2030-01-01T00:00:00Z".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_key_inherits_what_it_leaves_open() {
        let mut row = KeyRow {
            metadata: json!({}),
            model_max_budget: json!({}),
            ..Default::default()
        };
        fit_within(&caller(), &PluginConfig::default(), None, &mut row).unwrap();
        assert_eq!(row.models, vec!["gpt-a".to_string()]);
        assert_eq!(row.max_budget, Some(1.0));
        assert_eq!(
            (row.tpm_limit, row.rpm_limit, row.max_parallel_requests),
            (Some(100), Some(10), Some(2))
        );
        assert_eq!(row.expires.as_deref(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(row.metadata["model_rpm_limit"]["gpt-a"], 5);
        assert_eq!(row.model_max_budget["gpt-a"]["budget_limit"], 0.5);
    }

    #[test]
    fn a_new_key_may_not_be_wider() {
        let wider: Vec<(&str, KeyRow)> = vec![
            (
                "models",
                KeyRow {
                    models: vec!["gpt-b".into()],
                    ..Default::default()
                },
            ),
            (
                "models",
                KeyRow {
                    models: vec!["*".into()],
                    ..Default::default()
                },
            ),
            (
                "max_budget",
                KeyRow {
                    max_budget: Some(2.0),
                    ..Default::default()
                },
            ),
            (
                "budget_duration",
                KeyRow {
                    budget_duration: Some("1d".into()),
                    ..Default::default()
                },
            ),
            (
                "tpm_limit",
                KeyRow {
                    tpm_limit: Some(101),
                    ..Default::default()
                },
            ),
            (
                "rpm_limit",
                KeyRow {
                    rpm_limit: Some(11),
                    ..Default::default()
                },
            ),
            (
                "max_parallel_requests",
                KeyRow {
                    max_parallel_requests: Some(3),
                    ..Default::default()
                },
            ),
            (
                "model_rpm_limit",
                KeyRow {
                    metadata: json!({"model_rpm_limit": {"gpt-a": 6}}),
                    ..Default::default()
                },
            ),
            (
                "model_max_budget",
                KeyRow {
                    model_max_budget: json!({"gpt-a": {"budget_limit": 0.6, "time_period": "30d"}}),
                    ..Default::default()
                },
            ),
            (
                "expires",
                KeyRow {
                    expires: Some("2031-01-01T00:00:00Z".into()),
                    ..Default::default()
                },
            ),
        ];
        for (what, mut row) in wider {
            let err = fit_within(&caller(), &PluginConfig::default(), None, &mut row).unwrap_err();
            assert!(err.contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn an_update_checks_only_what_changes() {
        let stored = KeyRow {
            max_budget: Some(5.0),
            metadata: json!({}),
            ..Default::default()
        };
        // A team admin's key (budget 1) renames a team key with budget 5: allowed.
        let mut renamed = KeyRow {
            key_alias: Some("x".into()),
            ..stored.clone()
        };
        fit_within(
            &caller(),
            &PluginConfig::default(),
            Some(&stored),
            &mut renamed,
        )
        .unwrap();
        // Clearing its own budget is widening.
        let me = caller();
        let mut cleared = KeyRow {
            max_budget: None,
            ..me.clone()
        };
        assert!(fit_within(&me, &PluginConfig::default(), Some(&me), &mut cleared).is_err());
        let mut all_models = KeyRow {
            models: vec![],
            ..me.clone()
        };
        assert!(fit_within(&me, &PluginConfig::default(), Some(&me), &mut all_models).is_err());
        let mut never = KeyRow {
            expires: None,
            ..me.clone()
        };
        assert!(fit_within(&me, &PluginConfig::default(), Some(&me), &mut never).is_err());
    }

    /// A child's spending is shared-capped by its team (or membership) budget when it has a
    /// team, by its user's budget otherwise; a key-level budget alone is not shared.
    #[test]
    fn shared_budgets_cover_children() {
        let capped = Some(BudgetState {
            max_budget: Some(1.0),
            ..Default::default()
        });
        let uncapped = Some(BudgetState::default());
        let child = |team: bool, user, team_budget, member| KeyRecord {
            team_id: team.then(|| "t".to_string()),
            max_budget: Some(1.0),
            user_budget: user,
            team_budget,
            team_member_budget: member,
            ..Default::default()
        };
        assert!(!shares_a_budget(&child(false, None, None, None)));
        assert!(!shares_a_budget(&child(
            false,
            uncapped.clone(),
            None,
            None
        )));
        assert!(shares_a_budget(&child(false, capped.clone(), None, None)));
        // A team key is not held to its user's budget by the filter.
        assert!(!shares_a_budget(&child(
            true,
            capped.clone(),
            uncapped,
            None
        )));
        assert!(shares_a_budget(&child(true, None, capped.clone(), None)));
        assert!(shares_a_budget(&child(true, None, None, capped)));
    }
}
