//! `litellm_settings.default_key_generate_params`, `upperbound_key_generate_params` and
//! `default_team_params`: what `/key/generate` and `/team/new` fill in where a request leaves
//! a field unset, and the most `/key/generate`, `/key/update` and `/key/regenerate` may give a
//! key (LiteLLM's `_enforce_upperbound_key_params`).

use super::common::{bad_request, duration_seconds, AdminError, Fields};
use super::keys::GenerateKeyRequest;
use super::teams::NewTeamRequest;
use crate::sidecar::litellm_config::{KeyGenerateBounds, KeyGenerateDefaults, TeamDefaults};
use serde_json::{Map, Value};

fn fill<T>(field: &mut Option<T>, default: &Option<T>)
where
    T: Clone,
{
    if field.is_none() {
        field.clone_from(default);
    }
}

/// Fills the fields a `/key/generate` request leaves unset from `default_key_generate_params`;
/// `budget_duration` only when the request does not name it (an explicit `null` is a budget
/// that never resets), `models` when empty, `metadata` when empty.
pub fn apply_key_defaults(
    d: &KeyGenerateDefaults,
    req: &mut GenerateKeyRequest,
    budget_duration_given: bool,
) {
    fill(&mut req.max_budget, &d.max_budget);
    fill(&mut req.user_id, &d.user_id);
    fill(&mut req.team_id, &d.team_id);
    fill(&mut req.max_parallel_requests, &d.max_parallel_requests);
    fill(&mut req.tpm_limit, &d.tpm_limit);
    fill(&mut req.rpm_limit, &d.rpm_limit);
    fill(&mut req.duration, &d.duration);
    if !budget_duration_given {
        fill(&mut req.budget_duration, &d.budget_duration);
    }
    if let (true, Some(models)) = (req.models.is_empty(), &d.models) {
        req.models.clone_from(models);
    }
    if let (true, Some(metadata)) = (req.metadata.as_ref().is_none_or(Map::is_empty), &d.metadata) {
        req.metadata = Some(metadata.clone());
    }
}

/// Fills the fields a `/team/new` request leaves unset from `default_team_params` (LiteLLM's
/// `new_team`): `budget_duration` only when the request does not name it,
/// `team_member_permissions` when empty.
pub fn apply_team_defaults(
    d: &TeamDefaults,
    req: &mut NewTeamRequest,
    budget_duration_given: bool,
) {
    fill(&mut req.organization_id, &d.organization_id);
    fill(&mut req.max_budget, &d.max_budget);
    fill(&mut req.tpm_limit, &d.tpm_limit);
    fill(&mut req.rpm_limit, &d.rpm_limit);
    if !budget_duration_given {
        fill(&mut req.budget_duration, &d.budget_duration);
    }
    if let (true, Some(permissions)) = (
        req.team_member_permissions.is_empty(),
        &d.team_member_permissions,
    ) {
        req.team_member_permissions.clone_from(permissions);
    }
}

/// The fields `upperbound_key_generate_params` bounds, as a request gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bounded {
    pub max_budget: Option<f64>,
    pub max_parallel_requests: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub budget_duration: Option<String>,
    pub duration: Option<String>,
}

impl Bounded {
    /// The bounded fields of an update's body (`/key/update`, `/key/regenerate`).
    pub fn of_fields(f: &Fields) -> Bounded {
        let number = |name: &str| f.raw(name).and_then(Value::as_u64);
        let text = |name: &str| f.raw(name).and_then(Value::as_str).map(str::to_string);
        Bounded {
            max_budget: f.raw("max_budget").and_then(Value::as_f64),
            max_parallel_requests: number("max_parallel_requests"),
            tpm_limit: number("tpm_limit"),
            rpm_limit: number("rpm_limit"),
            budget_duration: text("budget_duration"),
            duration: text("duration"),
        }
    }
}

fn over_limit(field: &str, value: &str, bound: &str) -> AdminError {
    bad_request(&format!(
        "{field} is over max limit set in config - user_value={value}; max_value={bound}"
    ))
}

fn bound_number<T: PartialOrd + Copy>(
    field: &str,
    value: &mut Option<T>,
    bound: Option<T>,
    fill: bool,
    show: impl Fn(T) -> String,
) -> Result<(), AdminError> {
    let Some(bound) = bound else {
        return Ok(());
    };
    match *value {
        None if fill => *value = Some(bound),
        Some(v) if v > bound => return Err(over_limit(field, &show(v), &show(bound))),
        _ => {}
    }
    Ok(())
}

fn bound_duration(
    field: &str,
    value: &mut Option<String>,
    bound: &Option<String>,
    fill: bool,
    now_secs: i64,
) -> Result<(), AdminError> {
    let Some(bound) = bound else {
        return Ok(());
    };
    match value {
        None if fill => *value = Some(bound.clone()),
        Some(v) => {
            let limit = duration_seconds(bound, now_secs).unwrap_or(i64::MAX);
            // `-1` (never) is longer than any bound; a value that does not parse is refused
            // by the field's own check.
            let asked = if v == "-1" {
                Some(i64::MAX)
            } else {
                duration_seconds(v, now_secs)
            };
            if asked.is_some_and(|a| a > limit) {
                return Err(over_limit(field, v, bound));
            }
        }
        None => {}
    }
    Ok(())
}

/// LiteLLM's `_enforce_upperbound_key_params`: a field above its bound is a 400 naming both
/// values; with `fill` (`/key/generate`) an unset field takes its bound.
pub fn enforce_key_bounds(
    b: &KeyGenerateBounds,
    v: &mut Bounded,
    fill: bool,
    now_secs: i64,
) -> Result<(), AdminError> {
    bound_number(
        "max_budget",
        &mut v.max_budget,
        b.max_budget,
        fill,
        crate::cost::py_float,
    )?;
    let int = |n: u64| n.to_string();
    bound_number(
        "max_parallel_requests",
        &mut v.max_parallel_requests,
        b.max_parallel_requests,
        fill,
        int,
    )?;
    bound_number("tpm_limit", &mut v.tpm_limit, b.tpm_limit, fill, int)?;
    bound_number("rpm_limit", &mut v.rpm_limit, b.rpm_limit, fill, int)?;
    bound_duration(
        "budget_duration",
        &mut v.budget_duration,
        &b.budget_duration,
        fill,
        now_secs,
    )?;
    bound_duration("duration", &mut v.duration, &b.duration, fill, now_secs)
}

/// [`apply_key_defaults`], then [`enforce_key_bounds`] with `fill`, on a `/key/generate`
/// request, in LiteLLM's order.
pub fn key_generate_settings(
    defaults: &KeyGenerateDefaults,
    bounds: &KeyGenerateBounds,
    req: &mut GenerateKeyRequest,
    budget_duration_given: bool,
    now_secs: i64,
) -> Result<(), AdminError> {
    apply_key_defaults(defaults, req, budget_duration_given);
    let mut v = Bounded {
        max_budget: req.max_budget,
        max_parallel_requests: req.max_parallel_requests,
        tpm_limit: req.tpm_limit,
        rpm_limit: req.rpm_limit,
        budget_duration: req.budget_duration.take(),
        duration: req.duration.take(),
    };
    enforce_key_bounds(bounds, &mut v, true, now_secs)?;
    req.max_budget = v.max_budget;
    req.max_parallel_requests = v.max_parallel_requests;
    req.tpm_limit = v.tpm_limit;
    req.rpm_limit = v.rpm_limit;
    req.budget_duration = v.budget_duration;
    req.duration = v.duration;
    Ok(())
}
