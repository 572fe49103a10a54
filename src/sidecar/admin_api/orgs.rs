//! `/organization/*`: organizations, their budget row and members (LiteLLM's
//! `organization_endpoints.py`). Creating, updating and deleting organizations is for proxy
//! admins; an organization's `org_admin` may read it and manage its members; any caller may
//! list the organizations it belongs to.

use super::auth::{not_admin, Authorized, Principal};
use super::auth::{INTERNAL_USER, INTERNAL_USER_VIEWER, PROXY_ADMIN, PROXY_ADMIN_VIEWER};
use super::budgets::{apply as apply_budget_fields, check as check_budget};
use super::common::{
    changed, detail_error, new_uuid, ok, py_repr, row_json, set_metadata, spend_nanos_of, transact,
    upsert_budget_row, validation_error, AdminError, AdminResult, BudgetChange, Fields,
};
use super::Shared;
use crate::errors::ApiError;
use crate::sidecar::store::{BudgetRow, OrgMembershipRow, OrgRow, Tx, UserRow};
use crate::time::format_iso8601_utc;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

pub const ORG_ADMIN: &str = "org_admin";
/// The roles a member may have in an organization (LiteLLM's `ROLES_WITHIN_ORG`).
pub const ORG_ROLES: [&str; 3] = [ORG_ADMIN, INTERNAL_USER, INTERNAL_USER_VIEWER];

/// The fields of `LiteLLM_BudgetTable` a request may set: they go to the organization's
/// budget row, not to the organization.
const BUDGET_FIELDS: [&str; 8] = [
    "max_budget",
    "soft_budget",
    "max_parallel_requests",
    "tpm_limit",
    "rpm_limit",
    "model_max_budget",
    "budget_duration",
    "allowed_models",
];

/// An `HTTPException` whose `detail` is a plain string: the message is the string itself.
pub fn plain_error(status: u16, msg: &str) -> AdminError {
    let error_type = match status {
        401 | 403 => "auth_error",
        404 => "not_found_error",
        _ => "invalid_request_error",
    };
    AdminError::Api(ApiError::new(status, error_type, msg))
}

/// Python's `repr` of a list of str.
pub fn py_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| py_repr(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// Who did it, as LiteLLM records `created_by` / `updated_by` (the master key's user is
/// `default_user_id`).
fn actor(principal: &Principal) -> String {
    principal.user_id().unwrap_or("default_user_id").to_string()
}

/// LiteLLM's org-admin gate (`org_admin_only_routes` in the route check, then
/// `verify_org_access`): proxy admins, and the organization's `org_admin`s; `read` also lets
/// proxy admin viewers in. Anyone else gets the route check's 401.
fn require_org_admin(
    tx: &Tx<'_>,
    principal: &Principal,
    organization_id: &str,
    route: &str,
    read: bool,
) -> Result<(), AdminError> {
    if principal.is_admin() || (read && principal.is_admin_viewer()) {
        return Ok(());
    }
    if let Some(user) = principal.user_id() {
        let membership = tx.org_membership(organization_id, user)?;
        if membership.is_some_and(|m| m.user_role.as_deref() == Some(ORG_ADMIN)) {
            return Ok(());
        }
    }
    Err(not_admin(principal, route))
}

/// The organization as LiteLLM answers it (`LiteLLM_OrganizationTable` with its
/// `litellm_budget_table`).
fn org_json(org: &OrgRow, budget: Option<&BudgetRow>) -> Value {
    let mut v = row_json(org);
    if let Value::Object(o) = &mut v {
        // Tollgate's own bookkeeping of the budget row's period.
        o.remove("budget_duration");
        o.remove("budget_reset_at");
        o.insert("users".into(), Value::Null);
        o.insert("object_permission".into(), Value::Null);
        o.insert(
            "litellm_budget_table".into(),
            budget.map(row_json).unwrap_or(Value::Null),
        );
    }
    v
}

fn membership_json(tx: &Tx<'_>, m: &OrgMembershipRow) -> Result<Value, AdminError> {
    let user = tx.user(&m.user_id)?;
    let budget = match &m.budget_id {
        Some(id) => tx.budget(id)?,
        None => None,
    };
    let mut v = row_json(m);
    v["user_email"] = json!(user.as_ref().and_then(|u| u.user_email.clone()));
    v["user"] = user.as_ref().map(row_json).unwrap_or(Value::Null);
    v["litellm_budget_table"] = budget.as_ref().map(row_json).unwrap_or(Value::Null);
    Ok(v)
}

/// `LiteLLM_OrganizationTableWithMembers`: the organization with its members and teams.
fn org_with_members(
    tx: &Tx<'_>,
    org: &OrgRow,
    budget: Option<&BudgetRow>,
) -> Result<Value, AdminError> {
    let mut v = org_json(org, budget);
    let mut members = Vec::new();
    for m in tx.org_memberships_of_organization(&org.organization_id)? {
        members.push(membership_json(tx, &m)?);
    }
    let mut teams = Vec::new();
    for id in tx.teams_of_organization(&org.organization_id)? {
        if let Some(t) = tx.team(&id)? {
            teams.push(row_json(&t));
        }
    }
    v["members"] = Value::Array(members);
    v["teams"] = Value::Array(teams);
    Ok(v)
}

fn load_org(
    tx: &Tx<'_>,
    organization_id: &str,
    not_found: impl FnOnce() -> AdminError,
) -> Result<(OrgRow, Option<BudgetRow>), AdminError> {
    tx.organization(organization_id)?.ok_or_else(not_found)
}

fn not_found_for(organization_id: &str) -> AdminError {
    detail_error(
        404,
        &format!("Organization not found for organization_id={organization_id}"),
    )
}

/// `model_rpm_limit` / `model_tpm_limit` of a request go into `metadata`, as LiteLLM keeps them.
fn fold_model_limits(metadata: &mut Value, f: &Fields) {
    for field in ["model_rpm_limit", "model_tpm_limit"] {
        if let Some(v) = f.value(field).filter(|v| !v.is_null()) {
            set_metadata(metadata, field, Some(v));
        }
    }
}

/// Every key whose requests `organization_id` governs must be looked up again.
fn invalidate_org(tx: &mut Tx<'_>, organization_id: &str) -> Result<(), AdminError> {
    let tokens = tx.tokens_of_organization(organization_id)?;
    tx.invalidate_all(tokens);
    Ok(())
}

/// `POST /organization/new`: `organization_alias` (required), `organization_id`, `models`,
/// `metadata`, `model_rpm_limit`/`model_tpm_limit`, and either `budget_id` (an existing budget
/// row) or the budget fields (`max_budget`, `budget_duration`, `tpm_limit`, `rpm_limit`, ...),
/// which become a new budget row. Answers the organization with `litellm_budget_table`.
pub async fn organization_new(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let Some(Some(alias)) = f.string("organization_alias")? else {
        return Err(validation_error(
            &["body", "organization_alias"],
            "Field required",
        ));
    };
    check_budget("max_budget", f.float("max_budget")?.flatten())?;
    check_budget("soft_budget", f.float("soft_budget")?.flatten())?;
    let models = f.strings("models")?.flatten().unwrap_or_default();
    let done = transact(&state, |tx| {
        let now = tx.now();
        let created = format_iso8601_utc(now);
        let id = f
            .string("organization_id")?
            .flatten()
            .unwrap_or_else(new_uuid);
        if tx.organization(&id)?.is_some() {
            return Err(detail_error(
                400,
                &format!("Organization id = {id} already exists. Please use a different organization id."),
            ));
        }
        let budget = match f.string("budget_id")?.flatten() {
            Some(budget_id) => tx.budget(&budget_id)?.ok_or_else(|| {
                detail_error(400, &format!("Budget not found for budget_id={budget_id}"))
            })?,
            None => {
                let mut row = BudgetRow {
                    budget_id: new_uuid(),
                    created_at: created.clone(),
                    created_by: Some(actor(&principal)),
                    updated_by: Some(actor(&principal)),
                    ..Default::default()
                };
                apply_budget_fields(&state, now, &mut row, &f)?;
                tx.save_budget(&row)?;
                row
            }
        };
        let mut metadata = match f.value("metadata") {
            Some(v @ Value::Object(_)) => v,
            _ => json!({}),
        };
        fold_model_limits(&mut metadata, &f);
        let org = OrgRow {
            organization_id: id.clone(),
            organization_alias: Some(alias.clone()),
            budget_id: budget.budget_id.clone(),
            metadata,
            models: models.clone(),
            model_spend: json!({}),
            created_by: actor(&principal),
            updated_by: actor(&principal),
            created_at: created.clone(),
            updated_at: created,
            ..Default::default()
        };
        tx.save_organization(&org)?;
        let (org, budget) = load_org(tx, &id, || not_found_for(&id))?;
        Ok(org_json(&org, budget.as_ref()))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `PATCH /organization/update {"organization_id", ...}`: `organization_alias`, `models`,
/// `metadata` (merged into the stored one), `model_rpm_limit`/`model_tpm_limit`, `spend`; the
/// budget fields update the organization's budget row. Fields sent as `null` are left as they
/// are (LiteLLM drops them). Answers the organization with members and teams.
pub async fn organization_update(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    check_budget("max_budget", f.float("max_budget")?.flatten())?;
    check_budget("soft_budget", f.float("soft_budget")?.flatten())?;
    let Some(Some(id)) = f.string("organization_id")? else {
        return Err(detail_error(400, "organization_id is required"));
    };
    let done = transact(&state, |tx| {
        let now = tx.now();
        let (mut org, budget) = load_org(tx, &id, || not_found_for(&id))?;
        if BUDGET_FIELDS
            .iter()
            .any(|field| f.raw(field).is_some_and(|v| !v.is_null()))
        {
            let mut row = budget.unwrap_or_else(|| BudgetRow {
                budget_id: org.budget_id.clone(),
                created_at: format_iso8601_utc(now),
                ..Default::default()
            });
            // LiteLLM updates only the fields sent with a value.
            let sent = Fields(
                f.0.iter()
                    .filter(|(k, v)| BUDGET_FIELDS.contains(&k.as_str()) && !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            apply_budget_fields(&state, now, &mut row, &sent)?;
            row.updated_by = Some(actor(&principal));
            tx.save_budget(&row)?;
        }
        if let Some(alias) = f.string("organization_alias")?.flatten() {
            org.organization_alias = Some(alias);
        }
        if let Some(models) = f.strings("models")?.flatten() {
            org.models = models;
        }
        if let Some(Value::Object(new)) = f.value("metadata") {
            if !org.metadata.is_object() {
                org.metadata = json!({});
            }
            for (k, v) in new {
                set_metadata(&mut org.metadata, &k, Some(v));
            }
        }
        fold_model_limits(&mut org.metadata, &f);
        if let Some(spend) = f.float("spend")?.flatten() {
            org.set_spend_nanos(spend_nanos_of(Some(spend)));
        }
        org.updated_by = actor(&principal);
        org.updated_at = format_iso8601_utc(now);
        tx.save_organization(&org)?;
        invalidate_org(tx, &id)?;
        let (org, budget) = load_org(tx, &id, || not_found_for(&id))?;
        org_with_members(tx, &org, budget.as_ref())
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `DELETE /organization/delete {"organization_ids": [...]}`: each organization with its
/// memberships, its teams (their keys and memberships too) and the keys naming it. Answers the
/// deleted organizations.
pub async fn organization_delete(
    State(state): State<Shared>,
    Authorized(_): Authorized,
    f: Fields,
) -> AdminResult {
    let ids = f
        .string_list("organization_ids")?
        .ok_or_else(|| validation_error(&["body", "organization_ids"], "Field required"))?;
    let done = transact(&state, |tx| {
        let mut deleted = Vec::new();
        for id in &ids {
            let (org, budget) = load_org(tx, id, || {
                detail_error(404, &format!("Organization={id} not found"))
            })?;
            deleted.push(org_with_members(tx, &org, budget.as_ref())?);
        }
        for id in &ids {
            invalidate_org(tx, id)?;
            for team in tx.teams_of_organization(id)? {
                super::teams::delete_team_and_keys(tx, &team)?;
            }
            let field = tx.keys_naming_organization(id)?;
            for token in &field {
                tx.delete_key(token)?;
            }
            tx.delete_organization(id)?;
        }
        Ok(Value::Array(deleted))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `GET /organization/list?org_id=&org_alias=`: every organization for proxy admins and
/// viewers, the caller's organizations otherwise; `org_alias` matches part of the alias,
/// ignoring case.
pub async fn organization_list(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let org_id = q.get("org_id").filter(|s| !s.is_empty());
    let alias = q
        .get("org_alias")
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase());
    let done = transact(&state, |tx| {
        let ids = if principal.is_admin_viewer() {
            tx.organization_ids()?
        } else {
            match principal.user_id() {
                Some(user) => tx
                    .org_memberships_of_user(user)?
                    .into_iter()
                    .map(|m| m.organization_id)
                    .collect(),
                None => Vec::new(),
            }
        };
        let mut out = Vec::new();
        for id in ids {
            if org_id.is_some_and(|want| *want != id) {
                continue;
            }
            let Some((org, budget)) = tx.organization(&id)? else {
                continue;
            };
            if let Some(part) = &alias {
                let name = org
                    .organization_alias
                    .as_deref()
                    .unwrap_or("")
                    .to_lowercase();
                if !name.contains(part.as_str()) {
                    continue;
                }
            }
            out.push(org_with_members(tx, &org, budget.as_ref())?);
        }
        Ok(Value::Array(out))
    })?;
    Ok(ok(done.value))
}

/// `GET /organization/info?organization_id=`: the organization with members and teams.
pub async fn organization_info(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    Query(q): Query<HashMap<String, String>>,
) -> AdminResult {
    let id = q
        .get("organization_id")
        .filter(|s| !s.is_empty())
        .cloned()
        .ok_or_else(|| validation_error(&["query", "organization_id"], "Field required"))?;
    let done = transact(&state, |tx| {
        require_org_admin(tx, &principal, &id, "/organization/info", true)?;
        let (org, budget) = load_org(tx, &id, || detail_error(404, "Organization not found"))?;
        org_with_members(tx, &org, budget.as_ref())
    })?;
    Ok(ok(done.value))
}

/// `POST /organization/info {"organizations": [...]}` (LiteLLM's deprecated form): the
/// organizations found, with `litellm_budget_table`.
pub async fn organization_info_deprecated(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let ids = f
        .strings("organizations")?
        .flatten()
        .ok_or_else(|| validation_error(&["body", "organizations"], "Field required"))?;
    if ids.is_empty() {
        return Err(detail_error(
            400,
            "Specify list of organization id's to query. Passed in=[]",
        ));
    }
    let done = transact(&state, |tx| {
        let mut out = Vec::new();
        for id in &ids {
            require_org_admin(tx, &principal, id, "/organization/info", true)?;
        }
        for id in &ids {
            if let Some((org, budget)) = tx.organization(id)? {
                out.push(org_json(&org, budget.as_ref()));
            }
        }
        Ok(Value::Array(out))
    })?;
    Ok(ok(done.value))
}

/// One `member` of `/organization/member_add` (LiteLLM's `OrgMember`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OrgMember {
    role: Option<String>,
    user_id: Option<String>,
    user_email: Option<String>,
}

fn role_error(loc: &[&str]) -> AdminError {
    validation_error(
        loc,
        "Input should be 'org_admin', 'internal_user' or 'internal_user_viewer'",
    )
}

fn org_members_of(f: &Fields) -> Result<Vec<OrgMember>, AdminError> {
    let parse = |v: &Value| -> Result<OrgMember, AdminError> {
        let m: OrgMember = serde_json::from_value(v.clone())
            .map_err(|e| validation_error(&["body", "member"], &e.to_string()))?;
        if m.user_id.is_none() && m.user_email.is_none() {
            return Err(validation_error(
                &["body", "member"],
                "Value error, Either user id or user email must be provided",
            ));
        }
        match m.role.as_deref() {
            None => Err(validation_error(
                &["body", "member", "role"],
                "Field required",
            )),
            Some(r) if !ORG_ROLES.contains(&r) => Err(role_error(&["body", "member", "role"])),
            Some(_) => Ok(m),
        }
    };
    match f.raw("member") {
        Some(Value::Array(list)) => list.iter().map(parse).collect(),
        Some(m @ Value::Object(_)) => Ok(vec![parse(m)?]),
        _ => Err(validation_error(&["body", "member"], "Field required")),
    }
}

/// `POST /organization/member_add {"organization_id", "member": {role, user_id | user_email}
/// | [...]}`: users not known yet are created (as internal users). Answers
/// `{organization_id, updated_users, updated_organization_memberships}`.
pub async fn organization_member_add(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let org_id = f.required_string("organization_id")?;
    let members = org_members_of(&f)?;
    let done = transact(&state, |tx| {
        require_org_admin(tx, &principal, &org_id, "/organization/member_add", false)?;
        load_org(tx, &org_id, || not_found_for(&org_id))?;
        let now = format_iso8601_utc(tx.now());
        let mut users = Vec::new();
        let mut memberships = Vec::new();
        for m in &members {
            let existing = match &m.user_id {
                Some(id) => tx.user(id)?,
                None => None,
            };
            let existing = match (existing, &m.user_email) {
                (None, Some(email)) => tx.user_by_email(email)?,
                (found, _) => found,
            };
            let user = match existing {
                Some(u) => u,
                None => {
                    let u = UserRow {
                        user_id: m.user_id.clone().unwrap_or_else(new_uuid),
                        user_email: m.user_email.clone(),
                        user_role: Some(INTERNAL_USER.into()),
                        metadata: json!({}),
                        model_max_budget: json!({}),
                        model_spend: json!({}),
                        created_at: now.clone(),
                        updated_at: now.clone(),
                        ..Default::default()
                    };
                    tx.save_user(&u)?;
                    u
                }
            };
            if tx.org_membership(&org_id, &user.user_id)?.is_some() {
                return Err(detail_error(
                    400,
                    &format!(
                        "User={} is already a member of organization={org_id}.",
                        user.user_id
                    ),
                ));
            }
            let membership = OrgMembershipRow {
                user_id: user.user_id.clone(),
                organization_id: org_id.clone(),
                user_role: m.role.clone(),
                created_at: now.clone(),
                updated_at: now.clone(),
                ..Default::default()
            };
            tx.save_org_membership(&membership)?;
            users.push(row_json(&user));
            memberships.push(row_json(&membership));
        }
        Ok(json!({
            "organization_id": org_id,
            "updated_users": users,
            "updated_organization_memberships": memberships,
        }))
    })?;
    Ok(changed(done.value, &done.entries))
}

/// The member a body names: `user_id`, else the user with `user_email`.
fn member_user_id(tx: &Tx<'_>, f: &Fields) -> Result<String, AdminError> {
    match (
        f.string("user_id")?.flatten(),
        f.string("user_email")?.flatten(),
    ) {
        (Some(id), _) => Ok(id),
        (None, Some(email)) => tx.user_by_email(&email)?.map(|u| u.user_id).ok_or_else(|| {
            detail_error(
                400,
                &format!("Unique user not found for user_email={email}. Potential duplicate OR non-existent user_email in LiteLLM_UserTable. Use 'user_id' instead."),
            )
        }),
        (None, None) => Err(validation_error(
            &["body"],
            "Value error, Either user id or user email must be provided",
        )),
    }
}

fn member_not_found(user_id: &str) -> AdminError {
    detail_error(
        404,
        &format!("Member not found in organization for user_id={user_id}"),
    )
}

/// `PATCH /organization/member_update {"organization_id", "user_id" | "user_email", "role"?,
/// "max_budget_in_organization"?}`: answers the membership with its `litellm_budget_table`.
pub async fn organization_member_update(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let org_id = f.required_string("organization_id")?;
    if f.raw("user_id").is_none_or(Value::is_null) && f.raw("user_email").is_none_or(Value::is_null)
    {
        return Err(validation_error(
            &["body"],
            "Value error, Either user id or user email must be provided",
        ));
    }
    let role = f.string("role")?.flatten();
    if role.as_deref().is_some_and(|r| !ORG_ROLES.contains(&r)) {
        return Err(validation_error(
            &["body", "role"],
            &format!(
                "Value error, Invalid role. Must be one of: {}",
                py_list(&ORG_ROLES.map(String::from))
            ),
        ));
    }
    let max_budget = f.float("max_budget_in_organization")?.flatten();
    let done = transact(&state, |tx| {
        require_org_admin(
            tx,
            &principal,
            &org_id,
            "/organization/member_update",
            false,
        )?;
        load_org(tx, &org_id, || {
            detail_error(
                400,
                &format!("Organization not found for organization_id={org_id}"),
            )
        })?;
        let user_id = member_user_id(tx, &f)?;
        let mut membership = tx
            .org_membership(&org_id, &user_id)?
            .ok_or_else(|| member_not_found(&user_id))?;
        let target_role = tx.user(&user_id)?.and_then(|u| u.user_role);
        if matches!(
            target_role.as_deref(),
            Some(PROXY_ADMIN | PROXY_ADMIN_VIEWER)
        ) && !principal.is_admin()
        {
            return Err(detail_error(
                403,
                "Only PROXY_ADMIN may modify the organization role of a user who is a global PROXY_ADMIN.",
            ));
        }
        if let Some(role) = &role {
            membership.user_role = Some(role.clone());
        }
        if max_budget.is_some() {
            let id = upsert_budget_row(
                &state.settings(),
                tx,
                membership.budget_id.as_deref(),
                BudgetChange {
                    max_budget_field: "max_budget_in_organization",
                    max_budget: Some(max_budget),
                    ..Default::default()
                },
            )?;
            membership.budget_id = Some(id);
        }
        membership.updated_at = format_iso8601_utc(tx.now());
        tx.save_org_membership(&membership)?;
        membership_json(tx, &membership)
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `DELETE /organization/member_delete {"organization_id", "user_id" | "user_email"}`:
/// answers the deleted membership.
pub async fn organization_member_delete(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    f: Fields,
) -> AdminResult {
    let org_id = f.required_string("organization_id")?;
    let done = transact(&state, |tx| {
        require_org_admin(
            tx,
            &principal,
            &org_id,
            "/organization/member_delete",
            false,
        )?;
        let user_id = member_user_id(tx, &f)?;
        let membership = tx
            .org_membership(&org_id, &user_id)?
            .ok_or_else(|| member_not_found(&user_id))?;
        let answer = membership_json(tx, &membership)?;
        tx.delete_org_membership(&org_id, &user_id)?;
        Ok(answer)
    })?;
    Ok(changed(done.value, &done.entries))
}

/// LiteLLM's `_check_org_team_limits` for a team joining `organization_id` (`/team/new`): the
/// organization must exist; the team's `max_budget`, `tpm_limit` and `rpm_limit` may not
/// exceed the organization's; its `models` must be among the organization's (unless those are
/// empty or hold `all-proxy-models`).
pub fn check_team_in_org(
    tx: &Tx<'_>,
    organization_id: &str,
    models: &[String],
    max_budget: Option<f64>,
    tpm_limit: Option<u64>,
    rpm_limit: Option<u64>,
) -> Result<(), AdminError> {
    let Some((org, budget)) = tx.organization(organization_id)? else {
        return Err(plain_error(
            400,
            &format!("Organization not found for organization_id={organization_id}"),
        ));
    };
    let budget = budget.unwrap_or_default();
    if let (Some(team), Some(max)) = (max_budget, budget.max_budget) {
        if team > max {
            return Err(detail_error(
                400,
                &format!(
                    "Team max_budget ({}) exceeds organization's max_budget ({}). Organization: {organization_id}",
                    crate::cost::py_float(team),
                    crate::cost::py_float(max)
                ),
            ));
        }
    }
    if !org.models.is_empty() && !org.models.iter().any(|m| m == "all-proxy-models") {
        if let Some(m) = models.iter().find(|m| !org.models.contains(m)) {
            return Err(detail_error(
                400,
                &format!(
                    "Model '{m}' not in organization's allowed models. Organization allowed models={}. Organization: {organization_id}",
                    py_list(&org.models)
                ),
            ));
        }
    }
    for (field, team, org_limit) in [
        ("tpm_limit", tpm_limit, budget.tpm_limit),
        ("rpm_limit", rpm_limit, budget.rpm_limit),
    ] {
        if let (Some(team), Some(limit)) = (team, org_limit) {
            if team > limit {
                return Err(detail_error(
                    400,
                    &format!(
                        "Team {field} ({team}) exceeds organization's {field} ({limit}). Organization: {organization_id}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The `/organization/*` routes, with LiteLLM's methods.
pub fn routes() -> axum::Router<Shared> {
    use axum::routing::{delete, get, patch, post};
    axum::Router::new()
        .route("/organization/new", post(organization_new))
        .route("/organization/update", patch(organization_update))
        .route("/organization/delete", delete(organization_delete))
        .route("/organization/list", get(organization_list))
        .route(
            "/organization/info",
            get(organization_info).post(organization_info_deprecated),
        )
        .route("/organization/member_add", post(organization_member_add))
        .route(
            "/organization/member_update",
            patch(organization_member_update),
        )
        .route(
            "/organization/member_delete",
            delete(organization_member_delete),
        )
}
