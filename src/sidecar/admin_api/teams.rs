//! `/team/*`: teams, their members and member budgets (litellm-compat.md §2.3, §2.7, §5.3).
//! Creating, deleting and (un)blocking teams is for admins; a team admin may update its team
//! and manage its members; members may read it.

use super::auth::Authorized;
use super::auth::{Principal, INTERNAL_USER};
use super::common::{
    bad_request, changed, check_budget, check_budget_duration, detail_error, forbidden, new_uuid,
    ok, row_json, set_metadata, spend_nanos_of, transact, validation_error, AdminError,
    AdminResult, Fields, PeriodAndLimits,
};
use super::common::{upsert_budget_row, BudgetChange};
use super::{AdminState, Shared};
use crate::sidecar::store::{BudgetRow, Member, MembershipRow, TeamRow, Tx, UserRow};
use crate::time::format_iso8601_utc;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

const TEAM_ROLES: [&str; 2] = ["admin", "user"];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewTeamRequest {
    team_id: Option<String>,
    team_alias: Option<String>,
    pub organization_id: Option<String>,
    #[serde(deserialize_with = "super::common::null_default")]
    models: Vec<String>,
    pub max_budget: Option<f64>,
    soft_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    max_parallel_requests: Option<u64>,
    #[serde(deserialize_with = "super::common::null_default")]
    members_with_roles: Vec<Member>,
    metadata: Option<Map<String, Value>>,
    model_aliases: Option<Value>,
    model_max_budget: Option<Value>,
    model_rpm_limit: Option<Value>,
    model_tpm_limit: Option<Value>,
    team_member_budget: Option<f64>,
    team_member_budget_duration: Option<String>,
    team_member_rpm_limit: Option<u64>,
    team_member_tpm_limit: Option<u64>,
    #[serde(deserialize_with = "super::common::null_default")]
    pub team_member_permissions: Vec<String>,
    #[serde(deserialize_with = "super::common::null_default")]
    blocked: bool,
}

fn team_not_found(team_id: &str) -> AdminError {
    detail_error(404, &format!("Team not found, passed team_id={team_id}"))
}

fn load_team(tx: &Tx<'_>, team_id: &str) -> Result<TeamRow, AdminError> {
    tx.team(team_id)?.ok_or_else(|| team_not_found(team_id))
}

/// A team admin (or a proxy admin) may change the team.
fn require_team_admin(
    principal: &Principal,
    team: &TeamRow,
    route: &str,
) -> Result<(), AdminError> {
    if principal.is_admin() || principal.is_team_admin(team) {
        return Ok(());
    }
    Err(forbidden(&format!(
        "Only proxy admins or admins of team={} can call {route}.",
        team.team_id
    )))
}

/// The team's default member budget: `team_member_budget` (+ duration, rpm, tpm) as a budget
/// row, created or updated, its id kept in `metadata.team_member_budget_id` (§2.7).
fn set_member_budget(
    state: &AdminState,
    tx: &Tx<'_>,
    team: &mut TeamRow,
    max_budget: Option<Option<f64>>,
    duration: Option<Option<String>>,
    rpm: Option<Option<u64>>,
    tpm: Option<Option<u64>>,
) -> Result<(), AdminError> {
    if max_budget.is_none() && duration.is_none() && rpm.is_none() && tpm.is_none() {
        return Ok(());
    }
    let id = team.member_budget_id().map(str::to_string);
    let budget_id = upsert_budget_row(
        &state.settings(),
        tx,
        id.as_deref(),
        BudgetChange {
            max_budget_field: "team_member_budget",
            max_budget,
            budget_duration: duration,
            rpm_limit: rpm,
            tpm_limit: tpm,
        },
    )?;
    set_metadata(
        &mut team.metadata,
        "team_member_budget_id",
        Some(json!(budget_id)),
    );
    Ok(())
}

/// Adds one member: creates its user row if missing, its membership (with its own budget row
/// when `max_budget_in_team` or `budget_duration` is given) and records the team on the user.
fn add_member(
    state: &AdminState,
    tx: &mut Tx<'_>,
    team: &mut TeamRow,
    member: &Member,
    budget: (Option<f64>, Option<String>),
) -> Result<(UserRow, MembershipRow), AdminError> {
    let role = if member.role.is_empty() {
        "user"
    } else {
        member.role.as_str()
    };
    if !TEAM_ROLES.contains(&role) {
        return Err(validation_error(
            &["body", "member", "role"],
            "Input should be 'admin' or 'user'",
        ));
    }
    let now = tx.now();
    let existing = match (&member.user_id, &member.user_email) {
        (Some(id), _) => tx.user(id)?,
        (None, Some(email)) => tx.user_by_email(email)?,
        (None, None) => {
            return Err(bad_request("A member needs a user_id or a user_email."));
        }
    };
    let mut user = match existing {
        Some(u) => u,
        None => UserRow {
            user_id: member.user_id.clone().unwrap_or_else(new_uuid),
            user_email: member.user_email.clone(),
            user_role: Some(INTERNAL_USER.into()),
            metadata: json!({}),
            model_max_budget: json!({}),
            model_spend: json!({}),
            created_at: format_iso8601_utc(now),
            updated_at: format_iso8601_utc(now),
            ..Default::default()
        },
    };
    if team.member(&user.user_id).is_some() {
        return Err(bad_request(&format!(
            "User={} is already a member of team={}.",
            user.user_id, team.team_id
        )));
    }
    team.members_with_roles.push(Member {
        role: role.to_string(),
        user_id: Some(user.user_id.clone()),
        user_email: user
            .user_email
            .clone()
            .or_else(|| member.user_email.clone()),
    });
    if !user.teams.contains(&team.team_id) {
        user.teams.push(team.team_id.clone());
    }
    tx.save_user(&user)?;
    let mut membership = tx
        .membership(&team.team_id, &user.user_id)?
        .map(|(m, _)| m)
        .unwrap_or_else(|| MembershipRow {
            team_id: team.team_id.clone(),
            user_id: user.user_id.clone(),
            ..Default::default()
        });
    let (max_in_team, duration) = budget;
    if max_in_team.is_some() || duration.is_some() {
        check_budget("max_budget_in_team", max_in_team)?;
        let (d, at) = check_budget_duration(&state.settings(), &duration, now)?;
        let row = BudgetRow {
            budget_id: new_uuid(),
            max_budget: max_in_team,
            budget_duration: d,
            budget_reset_at: at,
            created_at: format_iso8601_utc(now),
            updated_at: format_iso8601_utc(now),
            ..Default::default()
        };
        tx.save_budget(&row)?;
        membership.budget_id = Some(row.budget_id);
    }
    tx.save_membership(&membership)?;
    let tokens = tx.tokens_of_member(&team.team_id, &user.user_id)?;
    tx.invalidate_all(tokens);
    Ok((user, membership))
}

/// `/user/new`'s `team_id` and `teams`: the user joins each team as a plain member, as
/// LiteLLM's `team_member_add` makes it; a team it already belongs to is left as it is.
pub(super) fn join_team(
    state: &AdminState,
    tx: &mut Tx<'_>,
    team_id: &str,
    user_id: &str,
) -> Result<(), AdminError> {
    let mut team = load_team(tx, team_id)?;
    if team.member(user_id).is_some() {
        return Ok(());
    }
    let member = Member {
        role: "user".into(),
        user_id: Some(user_id.to_string()),
        user_email: None,
    };
    add_member(state, tx, &mut team, &member, (None, None))?;
    tx.save_team(&team)?;
    Ok(())
}

/// LiteLLM's `_member_budget_source`: whose budget a membership is held to.
fn member_budget_source(budget_id: Option<&str>, team_default: Option<&str>) -> &'static str {
    match (budget_id, team_default) {
        (Some(own), d) if Some(own) != d => "custom",
        (_, Some(_)) => "team_default",
        _ => "none",
    }
}

fn membership_json(m: &MembershipRow, budget: Option<&BudgetRow>) -> Value {
    json!({
        "team_id": m.team_id,
        "user_id": m.user_id,
        "budget_id": m.budget_id,
        "spend": m.spend,
        "litellm_budget_table": budget.map(row_json),
    })
}

pub async fn team_new(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    fields: Fields,
) -> AdminResult {
    let mut req: NewTeamRequest = fields.body()?;
    super::key_defaults::apply_team_defaults(
        &state.settings().team_defaults,
        &mut req,
        fields.has("budget_duration"),
    );
    check_budget("max_budget", req.max_budget)?;
    check_budget("soft_budget", req.soft_budget)?;
    if let (Some(soft), Some(max)) = (req.soft_budget, req.max_budget) {
        if soft >= max {
            return Err(bad_request(&format!(
                "soft_budget ({soft}) must be strictly lower than max_budget ({max})"
            )));
        }
    }
    let done = transact(&state, |tx| {
        let now = tx.now();
        let team_id = req.team_id.clone().unwrap_or_else(new_uuid);
        if tx.team(&team_id)?.is_some() {
            return Err(bad_request(&format!(
                "Team id = {team_id} already exists. Please use a different team id."
            )));
        }
        if let Some(org) = &req.organization_id {
            super::orgs::check_team_in_org(
                tx,
                org,
                &req.models,
                req.max_budget,
                req.tpm_limit,
                req.rpm_limit,
            )?;
        }
        let (budget_duration, budget_reset_at) =
            check_budget_duration(&state.settings(), &req.budget_duration, now)?;
        let mut metadata = Value::Object(req.metadata.clone().unwrap_or_default());
        set_metadata(
            &mut metadata,
            "model_rpm_limit",
            req.model_rpm_limit.clone(),
        );
        set_metadata(
            &mut metadata,
            "model_tpm_limit",
            req.model_tpm_limit.clone(),
        );
        let created = format_iso8601_utc(now);
        let mut team = TeamRow {
            team_id: team_id.clone(),
            team_alias: req.team_alias.clone(),
            organization_id: req.organization_id.clone(),
            metadata,
            max_budget: req.max_budget,
            soft_budget: req.soft_budget,
            budget_duration,
            budget_reset_at,
            models: req.models.clone(),
            tpm_limit: req.tpm_limit,
            rpm_limit: req.rpm_limit,
            max_parallel_requests: req.max_parallel_requests,
            blocked: req.blocked,
            model_aliases: req.model_aliases.clone().unwrap_or_else(|| json!({})),
            model_max_budget: req.model_max_budget.clone().unwrap_or_else(|| json!({})),
            model_spend: json!({}),
            team_member_permissions: req.team_member_permissions.clone(),
            created_at: created.clone(),
            updated_at: created,
            ..Default::default()
        };
        set_member_budget(
            &state,
            tx,
            &mut team,
            req.team_member_budget.map(Some),
            req.team_member_budget_duration.clone().map(Some),
            req.team_member_rpm_limit.map(Some),
            req.team_member_tpm_limit.map(Some),
        )?;
        for m in &req.members_with_roles {
            add_member(&state, tx, &mut team, m, (None, None))?;
        }
        tx.save_team(&team)?;
        Ok(row_json(&team))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// LiteLLM's `validate_membership`: admins (and viewers), any key of the team itself, and
/// the team's members may read it.
fn check_team_info_access(principal: &Principal, team: &TeamRow) -> Result<(), AdminError> {
    let key_team = principal.key().and_then(|k| k.team_id.as_deref());
    if principal.is_admin_viewer()
        || key_team == Some(team.team_id.as_str())
        || principal.is_team_member(team)
    {
        return Ok(());
    }
    let denied = match (principal.user_id(), key_team) {
        (Some(user), _) => format!(
            "User={user} not authorized to access this team={}",
            team.team_id
        ),
        (None, Some(other)) => format!(
            "Team key for team={other} not authorized to access this team={}",
            team.team_id
        ),
        (None, None) => format!(
            "API key not authorized to access this team={}. No user_id or team_id associated with this key.",
            team.team_id
        ),
    };
    Err(detail_error(403, &denied))
}

/// `GET /team/info?team_id=`: `{team_id, team_info, keys, team_memberships}`.
pub async fn team_info(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let team_id = q
        .get("team_id")
        .filter(|t| !t.is_empty())
        .cloned()
        .ok_or_else(|| validation_error(&["query", "team_id"], "Field required"))?;
    let done = transact(&state, |tx| {
        let team = load_team(tx, &team_id)?;
        check_team_info_access(&principal, &team)?;
        let keys: Vec<Value> = tx.keys_of_team(&team_id)?.iter().map(row_json).collect();
        let default_budget = match team.member_budget_id() {
            Some(id) => tx.budget(id)?,
            None => None,
        };
        let default_id = default_budget.as_ref().map(|b| b.budget_id.as_str());
        let memberships: Vec<Value> = tx
            .memberships_of_team(&team_id)?
            .iter()
            .map(|(m, b)| {
                let mut v = membership_json(m, b.as_ref());
                v["budget_source"] =
                    json!(member_budget_source(m.budget_id.as_deref(), default_id));
                v
            })
            .collect();
        // Members as LiteLLM hydrates them: with the user's alias, and its email when missing.
        let mut members = Vec::new();
        for m in &team.members_with_roles {
            let user = match &m.user_id {
                Some(id) => tx.user(id)?,
                None => None,
            };
            members.push(json!({
                "role": m.role,
                "user_id": m.user_id,
                "user_email": m.user_email.clone().or_else(|| user.as_ref().and_then(|u| u.user_email.clone())),
                "user_alias": user.as_ref().and_then(|u| u.user_alias.clone()),
            }));
        }
        let mut info = row_json(&team);
        info["members_with_roles"] = Value::Array(members);
        info["team_member_budget_table"] = json!(default_budget.as_ref().map(row_json));
        Ok(json!({
            "team_id": team_id,
            "team_info": info,
            "keys": keys,
            "team_memberships": memberships,
        }))
    })?;
    Ok(ok(done.value))
}

/// `GET /team/list`: every team for admins, the caller's teams otherwise.
pub async fn team_list(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
) -> AdminResult {
    let done = transact(&state, |tx| Ok(tx.teams()?))?;
    let teams: Vec<Value> = done
        .value
        .iter()
        .filter(|t| principal.is_admin_viewer() || principal.is_team_member(t))
        .map(row_json)
        .collect();
    Ok(ok(Value::Array(teams)))
}

/// Where LiteLLM's UI keeps `team_admin_editable_team_fields` (named in its refusals).
const TEAM_ADMIN_SETTINGS: &str = "Settings > UI > Team admin editable fields";

/// The team fields `general_settings.team_admin_editable_team_fields` may open to team admins
/// (LiteLLM's `SUPPORTED_TEAM_ADMIN_EDITABLE_TEAM_FIELDS`), plus `raise_max_budget`. `models`,
/// `model_max_budget`, per-model limits, the organization and the member permissions never are.
const TEAM_ADMIN_EDITABLE: [&str; 10] = [
    "tpm_limit",
    "rpm_limit",
    "max_budget",
    "soft_budget",
    "metadata",
    "team_member_budget",
    "team_member_budget_duration",
    "team_member_tpm_limit",
    "team_member_rpm_limit",
    "raise_max_budget",
];

/// Metadata keys only a proxy admin may add, change or remove (LiteLLM's
/// `PROXY_CONTROLLED_TEAM_METADATA_KEYS`: the fields folded into metadata and proxy settings).
const PROXY_CONTROLLED_METADATA: [&str; 36] = [
    "model_rpm_limit",
    "model_tpm_limit",
    "model_itpm_limit",
    "model_otpm_limit",
    "default_estimated_output_tokens",
    "default_estimated_output_tokens_per_model",
    "mcp_rpm_limit",
    "tag_rpm_limit",
    "rpm_limit_type",
    "tpm_limit_type",
    "enforced_params",
    "temp_budget_increase",
    "temp_budget_expiry",
    "allowed_vector_store_indexes",
    "enforced_batch_output_expires_after",
    "enforced_file_expires_after",
    "throttle_on_budget_exceeded",
    "enable_prompt_caching",
    "end_user_budget_id",
    "require_trace_id",
    "disable_global_guardrails",
    "guardrails",
    "policies",
    "tags",
    "team_member_key_duration",
    "prompts",
    "logging",
    "secret_manager_settings",
    "allowed_passthrough_routes",
    "denied_passthrough_routes",
    "spend_logs_metadata",
    "model_config",
    "callback_settings",
    "priority",
    "allowed_tools",
    "opted_out_global_guardrails",
];

/// What the proxy admin opened to team admins: the configured names LiteLLM supports.
fn team_admin_editable_fields(configured: &[String]) -> Vec<&'static str> {
    TEAM_ADMIN_EDITABLE
        .into_iter()
        .filter(|f| configured.iter().any(|c| c == f))
        .collect()
}

/// The team's member-budget row, if it has one.
fn member_budget_row(tx: &Tx<'_>, team: &TeamRow) -> Result<Option<BudgetRow>, AdminError> {
    Ok(match team.member_budget_id() {
        Some(id) => tx.budget(id)?,
        None => None,
    })
}

/// LiteLLM's `team_admin_edit_verdict` and `_check_team_budget_update_authority` for a caller
/// that is a team admin but no proxy admin: every field whose stored value the update changes
/// must be one the proxy admin opened; `max_budget` may be lowered (or set where there was
/// none), raised only with `raise_max_budget`, never removed. A resent `budget_duration` keeps
/// the current period (LiteLLM drops resent values). Compared as stored, so resending a value
/// is no change.
fn check_team_admin_edit(
    permitted: &[&str],
    (before, member_before): (&TeamRow, Option<&BudgetRow>),
    (after, member_after): (&mut TeamRow, Option<&BudgetRow>),
) -> Result<(), AdminError> {
    if after.budget_duration == before.budget_duration {
        after.budget_reset_at.clone_from(&before.budget_reset_at);
    }
    let mut changed: Vec<String> = Vec::new();
    let (old, new) = (row_json(before), row_json(&*after));
    let ignored = [
        "metadata",
        "budget_reset_at",
        "updated_at",
        "admins",
        "members",
    ];
    if let (Value::Object(old), Value::Object(new)) = (&old, &new) {
        for (field, value) in new {
            if !ignored.contains(&field.as_str()) && old.get(field) != Some(value) {
                changed.push(field.clone());
            }
        }
    }
    let empty = Map::new();
    let old_meta = before.metadata.as_object().unwrap_or(&empty);
    let new_meta = after.metadata.as_object().unwrap_or(&empty);
    for key in old_meta.keys().chain(new_meta.keys()) {
        if key == "team_member_budget_id" || old_meta.get(key) == new_meta.get(key) {
            continue;
        }
        if PROXY_CONTROLLED_METADATA.contains(&key.as_str()) {
            return Err(forbidden(&format!(
                "Team metadata key '{key}' is a proxy setting that team admins cannot add, change or remove in team settings. Ask a proxy admin to change it."
            )));
        }
        changed.push("metadata".into());
    }
    let member = |b: Option<&BudgetRow>| {
        b.map(|b| {
            (
                b.max_budget,
                b.budget_duration.clone(),
                b.tpm_limit,
                b.rpm_limit,
            )
        })
        .unwrap_or_default()
    };
    let (mb, md, mt, mr) = member(member_before);
    let (na, nd, nt, nr) = member(member_after);
    for (field, differs) in [
        ("team_member_budget", mb != na),
        ("team_member_budget_duration", md != nd),
        ("team_member_tpm_limit", mt != nt),
        ("team_member_rpm_limit", mr != nr),
    ] {
        if differs {
            changed.push(field.into());
        }
    }
    changed.sort();
    if let Some(field) = changed.iter().find(|f| !permitted.contains(&f.as_str())) {
        return Err(forbidden(&format!(
            "Team admins on this proxy do not have permission to update '{field}'. Ask a proxy admin to add it under {TEAM_ADMIN_SETTINGS}."
        )));
    }
    if let Some(current) = before.max_budget {
        match after.max_budget {
            None => {
                return Err(forbidden(&format!(
                    "Only a proxy admin can remove a team's max_budget. Team's current max_budget={current}."
                )))
            }
            Some(asked) if asked > current && !permitted.contains(&"raise_max_budget") => {
                return Err(forbidden(&format!(
                    "Only a proxy admin can raise a team's max_budget. Team's current max_budget={current}, requested={asked}."
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `POST /team/update {"team_id", ...fields}`: `null` clears. Answers
/// `{"team_id", "data": <row>}` as LiteLLM does.
pub async fn team_update(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let team_id = f.required_string("team_id")?;
    let done = transact(&state, |tx| {
        let mut team = load_team(tx, &team_id)?;
        require_team_admin(&principal, &team, "/team/update")?;
        let settings = state.settings();
        let team_admin_may = team_admin_editable_fields(&settings.team_admin_editable_team_fields);
        if !principal.is_admin() && team_admin_may.is_empty() {
            return Err(forbidden(&format!(
                "Team admins on this proxy cannot edit team settings. Ask a proxy admin to enable fields under {TEAM_ADMIN_SETTINGS}."
            )));
        }
        let before = team.clone();
        let member_budget_before = member_budget_row(tx, &team)?;
        let now = tx.now();
        if let Some(v) = f.string("team_alias")? {
            team.team_alias = v;
        }
        if let Some(v) = f.string("organization_id")? {
            team.organization_id = v;
        }
        if let Some(v) = f.strings("models")? {
            team.models = v.unwrap_or_default();
        }
        if let Some(v) = f.float("max_budget")? {
            check_budget("max_budget", v)?;
            team.max_budget = v;
        }
        f.apply_period_and_limits(
            &state.settings(),
            now,
            PeriodAndLimits {
                soft_budget: Some(&mut team.soft_budget),
                budget_duration: &mut team.budget_duration,
                budget_reset_at: &mut team.budget_reset_at,
                tpm_limit: &mut team.tpm_limit,
                rpm_limit: &mut team.rpm_limit,
                max_parallel_requests: &mut team.max_parallel_requests,
            },
        )?;
        if let Some(v) = f.value("metadata") {
            // LiteLLM keeps its own fields in metadata: a new metadata keeps them.
            let keep = team.member_budget_id().map(str::to_string);
            team.metadata = if v.is_null() { json!({}) } else { v };
            if let Some(id) = keep {
                set_metadata(&mut team.metadata, "team_member_budget_id", Some(json!(id)));
            }
        }
        for field in ["model_rpm_limit", "model_tpm_limit"] {
            if let Some(v) = f.value(field) {
                set_metadata(&mut team.metadata, field, Some(v));
            }
        }
        if let Some(v) = f.value("model_aliases") {
            team.model_aliases = if v.is_null() { json!({}) } else { v };
        }
        if let Some(v) = f.value("model_max_budget") {
            team.model_max_budget = if v.is_null() { json!({}) } else { v };
        }
        if let Some(v) = f.boolean("blocked")? {
            if !principal.is_admin() {
                return Err(forbidden("Only proxy admins can block or unblock a team."));
            }
            team.blocked = v.unwrap_or(false);
        }
        if let Some(v) = f.strings("team_member_permissions")? {
            team.team_member_permissions = v.unwrap_or_default();
        }
        if let Some(Some(spend)) = f.float("spend")? {
            if !principal.is_admin() {
                return Err(forbidden("Only proxy admins can set a team's spend."));
            }
            team.set_spend_nanos(spend_nanos_of(Some(spend)));
        }
        set_member_budget(
            &state,
            tx,
            &mut team,
            f.float("team_member_budget")?,
            f.string("team_member_budget_duration")?,
            f.uint("team_member_rpm_limit")?,
            f.uint("team_member_tpm_limit")?,
        )?;
        if !principal.is_admin() {
            let member_budget_after = member_budget_row(tx, &team)?;
            check_team_admin_edit(
                &team_admin_may,
                (&before, member_budget_before.as_ref()),
                (&mut team, member_budget_after.as_ref()),
            )?;
        }
        // A team in an organization stays within its limits (checked when any of them is
        // sent, or the team moves).
        if let Some(org) = &team.organization_id {
            let touched = [
                "organization_id",
                "models",
                "max_budget",
                "tpm_limit",
                "rpm_limit",
            ];
            if touched.iter().any(|field| f.has(field)) {
                super::orgs::check_team_in_org(
                    tx,
                    org,
                    &team.models,
                    team.max_budget,
                    team.tpm_limit,
                    team.rpm_limit,
                )?;
            }
        }
        team.updated_at = format_iso8601_utc(now);
        tx.save_team(&team)?;
        let tokens = tx.tokens_of_team(&team_id)?;
        tx.invalidate_all(tokens);
        Ok(json!({"team_id": team_id, "data": row_json(&team)}))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `POST /team/delete {"team_ids": [...]}`: the teams, their memberships and their keys.
pub async fn team_delete(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let ids = f
        .string_list("team_ids")?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| validation_error(&["body", "team_ids"], "Field required"))?;
    let done = transact(&state, |tx| {
        for id in &ids {
            load_team(tx, id)?;
        }
        for id in &ids {
            delete_team_and_keys(tx, id)?;
        }
        Ok(())
    })?;
    Ok(changed(json!({"deleted_teams": ids}), &done.entries))
}

/// Deletes a team, its memberships and its keys, and takes it off its members' `teams`.
pub(super) fn delete_team_and_keys(tx: &mut Tx<'_>, id: &str) -> Result<(), AdminError> {
    let team = load_team(tx, id)?;
    let tokens = tx.tokens_of_team(id)?;
    for t in &tokens {
        tx.delete_key(t)?;
    }
    tx.invalidate_all(tokens);
    for m in &team.members_with_roles {
        if let Some(u) = &m.user_id {
            if let Some(mut user) = tx.user(u)? {
                user.teams.retain(|t| t != id);
                tx.save_user(&user)?;
            }
        }
    }
    tx.delete_team(id)?;
    Ok(())
}

fn members_of(f: &Fields) -> Result<Vec<Member>, AdminError> {
    match f.raw("member") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|m| {
                serde_json::from_value::<Member>(m.clone())
                    .map_err(|e| validation_error(&["body", "member"], &e.to_string()))
            })
            .collect(),
        Some(m @ Value::Object(_)) => serde_json::from_value::<Member>(m.clone())
            .map(|m| vec![m])
            .map_err(|e| validation_error(&["body", "member"], &e.to_string())),
        _ => Err(validation_error(&["body", "member"], "Field required")),
    }
}

/// `POST /team/member_add {"team_id", "member": {...} | [...], "max_budget_in_team",
/// "budget_duration"}`: the team with `updated_users` and `updated_team_memberships`.
pub async fn team_member_add(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let team_id = f.required_string("team_id")?;
    let members = members_of(&f)?;
    let budget = (
        f.float("max_budget_in_team")?.flatten(),
        f.string("budget_duration")?.flatten(),
    );
    let done = transact(&state, |tx| {
        let mut team = load_team(tx, &team_id)?;
        require_team_admin(&principal, &team, "/team/member_add")?;
        let mut users = Vec::new();
        let mut memberships = Vec::new();
        for m in &members {
            let (user, membership) = add_member(&state, tx, &mut team, m, budget.clone())?;
            let b = tx.membership_budget(&membership, Some(&team))?;
            users.push(row_json(&user));
            memberships.push(membership_json(&membership, b.as_ref()));
        }
        team.updated_at = format_iso8601_utc(tx.now());
        tx.save_team(&team)?;
        let mut v = row_json(&team);
        if let Value::Object(o) = &mut v {
            o.insert("updated_users".into(), Value::Array(users));
            o.insert("updated_team_memberships".into(), Value::Array(memberships));
        }
        Ok(v)
    })?;
    Ok(changed(done.value, &done.entries))
}

/// The member a body names: `user_id`, else `user_email`.
fn member_user_id(tx: &Tx<'_>, f: &Fields, team: &TeamRow) -> Result<String, AdminError> {
    let id = match (
        f.string("user_id")?.flatten(),
        f.string("user_email")?.flatten(),
    ) {
        (Some(id), _) => Some(id),
        (None, Some(email)) => team
            .members_with_roles
            .iter()
            .find(|m| m.user_email.as_deref() == Some(email.as_str()))
            .and_then(|m| m.user_id.clone())
            .or(tx.user_by_email(&email)?.map(|u| u.user_id)),
        (None, None) => {
            return Err(validation_error(&["body", "user_id"], "Field required"));
        }
    };
    match id {
        Some(id) if team.member(&id).is_some() => Ok(id),
        _ => Err(bad_request(&format!(
            "User is not a member of team={}.",
            team.team_id
        ))),
    }
}

/// `POST /team/member_delete {"team_id", "user_id" | "user_email"}`.
pub async fn team_member_delete(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let team_id = f.required_string("team_id")?;
    let done = transact(&state, |tx| {
        let mut team = load_team(tx, &team_id)?;
        require_team_admin(&principal, &team, "/team/member_delete")?;
        let user_id = member_user_id(tx, &f, &team)?;
        team.members_with_roles
            .retain(|m| m.user_id.as_deref() != Some(user_id.as_str()));
        team.updated_at = format_iso8601_utc(tx.now());
        tx.save_team(&team)?;
        tx.delete_membership(&team_id, &user_id)?;
        if let Some(mut user) = tx.user(&user_id)? {
            user.teams.retain(|t| t != &team_id);
            tx.save_user(&user)?;
        }
        let tokens = tx.tokens_of_member(&team_id, &user_id)?;
        tx.invalidate_all(tokens);
        Ok(row_json(&team))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `POST /team/member_update {"team_id", "user_id" | "user_email", "role"?,
/// "max_budget_in_team"?, "budget_duration"?}`.
pub async fn team_member_update(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let team_id = f.required_string("team_id")?;
    let done = transact(&state, |tx| {
        let mut team = load_team(tx, &team_id)?;
        require_team_admin(&principal, &team, "/team/member_update")?;
        let user_id = member_user_id(tx, &f, &team)?;
        if let Some(Some(role)) = f.string("role")? {
            if !TEAM_ROLES.contains(&role.as_str()) {
                return Err(validation_error(
                    &["body", "role"],
                    "Input should be 'admin' or 'user'",
                ));
            }
            for m in &mut team.members_with_roles {
                if m.user_id.as_deref() == Some(user_id.as_str()) {
                    m.role = role.clone();
                }
            }
            tx.save_team(&team)?;
        }
        let max = f.float("max_budget_in_team")?;
        let duration = f.string("budget_duration")?;
        let (mut membership, _) = tx.membership(&team_id, &user_id)?.unwrap_or_else(|| {
            (
                MembershipRow {
                    team_id: team_id.clone(),
                    user_id: user_id.clone(),
                    ..Default::default()
                },
                None,
            )
        });
        if max.is_some() || duration.is_some() {
            let id = upsert_budget_row(
                &state.settings(),
                tx,
                membership.budget_id.as_deref(),
                BudgetChange {
                    max_budget_field: "max_budget_in_team",
                    max_budget: max,
                    budget_duration: duration,
                    ..Default::default()
                },
            )?;
            membership.budget_id = Some(id);
        }
        tx.save_membership(&membership)?;
        let budget = tx.membership_budget(&membership, Some(&team))?;
        let tokens = tx.tokens_of_member(&team_id, &user_id)?;
        tx.invalidate_all(tokens);
        Ok(membership_json(&membership, budget.as_ref()))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// A team's `blocked` flag (`{"team_id"}`): every key of the team is refused (401) until
/// unblocked.
pub struct TeamBlock;

impl super::block::Blockable for TeamBlock {
    const ROUTES: [&'static str; 2] = ["/team/block", "/team/unblock"];

    fn set_blocked(
        _state: &super::AdminState,
        tx: &mut crate::sidecar::store::Tx<'_>,
        _principal: &Principal,
        _route: &str,
        body: &Fields,
        blocked: bool,
    ) -> Result<Value, AdminError> {
        let team_id = body.required_string("team_id")?;
        let mut team = load_team(tx, &team_id)?;
        team.blocked = blocked;
        team.updated_at = format_iso8601_utc(tx.now());
        tx.save_team(&team)?;
        let tokens = tx.tokens_of_team(&team_id)?;
        tx.invalidate_all(tokens);
        Ok(row_json(&team))
    }
}

/// The `/team/*` routes.
pub fn routes() -> axum::Router<Shared> {
    use super::block::{block, unblock};
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/team/new", post(team_new))
        .route("/team/info", get(team_info))
        .route("/team/list", get(team_list))
        .route("/team/update", post(team_update))
        .route("/team/delete", post(team_delete))
        .route("/team/member_add", post(team_member_add))
        .route("/team/member_delete", post(team_member_delete))
        .route("/team/member_update", post(team_member_update))
        .route("/team/block", post(block::<TeamBlock>))
        .route("/team/unblock", post(unblock::<TeamBlock>))
}
