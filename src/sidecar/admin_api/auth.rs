//! Who is calling the admin API and what they may do (litellm-compat.md §5.1): the master key
//! is `proxy_admin`; a virtual key has its user's `user_role`, and a key without a user row
//! has no role, as in LiteLLM's route checks. [`ROUTES`] is the rights table; every handler
//! starts with [`authorize`].

use super::common::{py_repr, AdminError};
use super::AdminState;
use crate::credential::extract_credential;
use crate::errors::ApiError;
use crate::key_format::hash_key;
use crate::sidecar::store::{KeyRow, TeamRow, UserRow};
use crate::time::{format_python_utc, parse_iso8601_utc};
use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

pub const PROXY_ADMIN: &str = "proxy_admin";
pub const PROXY_ADMIN_VIEWER: &str = "proxy_admin_viewer";
pub const INTERNAL_USER: &str = "internal_user";
pub const INTERNAL_USER_VIEWER: &str = "internal_user_viewer";

/// LiteLLM's user roles, as `/user/new` accepts them.
pub const USER_ROLES: [&str; 4] = [
    PROXY_ADMIN,
    PROXY_ADMIN_VIEWER,
    INTERNAL_USER,
    INTERNAL_USER_VIEWER,
];

/// The key routes every team member may use whatever the team grants; also the whole grant of a
/// team without `team_member_permissions` (LiteLLM's `BASELINE_TEAM_MEMBER_PERMISSIONS`).
pub const BASELINE_TEAM_MEMBER_PERMISSIONS: [&str; 2] = ["/key/info", "/key/health"];

/// The key routes `team`'s plain members may use: its `team_member_permissions` and the baseline.
pub fn team_member_permissions(team: &TeamRow) -> Vec<&str> {
    let mut granted: Vec<&str> = team
        .team_member_permissions
        .iter()
        .map(String::as_str)
        .collect();
    for route in BASELINE_TEAM_MEMBER_PERMISSIONS {
        if !granted.contains(&route) {
            granted.push(route);
        }
    }
    granted
}

/// LiteLLM's `does_team_member_have_permissions_for_endpoint` for a key route on one of
/// `team`'s keys: `false` for a non-member (other rules decide), `true` for a team admin or a
/// member the route is granted to, and LiteLLM's 401 for a member it is not granted to.
pub fn check_team_member_route(
    principal: &Principal,
    team: &TeamRow,
    route: &str,
) -> Result<bool, AdminError> {
    match principal.team_role(team) {
        None => Ok(false),
        Some("admin") => Ok(true),
        Some(_) => {
            let granted = team_member_permissions(team);
            if granted.contains(&route) {
                return Ok(true);
            }
            let listed: Vec<String> = granted.iter().map(|r| py_repr(r)).collect();
            Err(AdminError::Api(
                ApiError::new(
                    401,
                    "team_member_permission_error",
                    format!(
                        "Team member does not have permissions for endpoint: {route}. You only have access to the following endpoints: [{}] for team {}. To create keys for this team, please ask your proxy admin to check the team member permission settings and update the settings to allow team member users to create keys.",
                        listed.join(", "),
                        team.team_id
                    ),
                )
                .with_param(route),
            ))
        }
    }
}

/// The caller.
pub enum Principal {
    Master,
    Key {
        key: Box<KeyRow>,
        user: Option<Box<UserRow>>,
    },
}

impl Principal {
    /// The role LiteLLM's route checks see (`auth_checks.get_user_role`): the master key is
    /// `proxy_admin`; a virtual key has its user row's `user_role` (an unknown role counts as
    /// `internal_user`); a key whose user has no row, or that has no user, has none.
    pub fn role(&self) -> Option<&str> {
        match self {
            Principal::Master => Some(PROXY_ADMIN),
            Principal::Key { user, .. } => user.as_ref().map(|u| {
                u.user_role
                    .as_deref()
                    .filter(|r| USER_ROLES.contains(r))
                    .unwrap_or(INTERNAL_USER)
            }),
        }
    }

    /// Master key or a `proxy_admin` user's key.
    pub fn is_admin(&self) -> bool {
        self.role() == Some(PROXY_ADMIN)
    }

    /// May read everything (`proxy_admin`, `proxy_admin_viewer`).
    pub fn is_admin_viewer(&self) -> bool {
        matches!(self.role(), Some(PROXY_ADMIN | PROXY_ADMIN_VIEWER))
    }

    /// The caller's user id (none for the master key or a key without user).
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::Master => None,
            Principal::Key { key, .. } => key.user_id.as_deref(),
        }
    }

    pub fn key(&self) -> Option<&KeyRow> {
        match self {
            Principal::Master => None,
            Principal::Key { key, .. } => Some(key),
        }
    }

    /// A team's key without user (LiteLLM's `is_team_service_account`): it may create and
    /// update keys of its own team only.
    pub fn service_account_team(&self) -> Option<&str> {
        self.key()
            .filter(|k| k.user_id.is_none())
            .and_then(|k| k.team_id.as_deref())
    }

    /// A team admin of `team` (LiteLLM lets them manage the team's keys and members).
    pub fn is_team_admin(&self, team: &TeamRow) -> bool {
        self.user_id().is_some_and(|u| team.is_admin(u))
    }

    /// The caller's role in `team` (`admin` or `user`), `None` when not a member.
    pub fn team_role<'t>(&self, team: &'t TeamRow) -> Option<&'t str> {
        self.user_id()
            .and_then(|u| team.member(u))
            .map(|m| m.role.as_str())
    }

    /// A member of `team`, or the team's own service-account key.
    pub fn is_team_member(&self, team: &TeamRow) -> bool {
        self.user_id().is_some_and(|u| team.member(u).is_some())
            || self.service_account_team() == Some(team.team_id.as_str())
    }

    /// The key carries LiteLLM's `get_spend_routes` permission (only admins can set it).
    fn may_read_global_spend(&self) -> bool {
        self.key()
            .and_then(|k| k.permissions.get("get_spend_routes"))
            .is_some_and(|v| !v.is_null() && v != &serde_json::Value::Bool(false))
    }
}

/// What a non-admin may do with an admin route (LiteLLM's route groups in
/// `_types.py:LiteLLMRoutes`, applied as `route_checks.non_proxy_admin_allowed_routes_check`
/// does). The handler then limits the caller to what it owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `info_routes`: any caller; the handler shows only the caller's own things.
    Info,
    /// `key_management_routes` writes: `internal_user`s (their own keys and their teams'),
    /// and a team's key without user for `/key/generate` and `/key/update` in its team.
    KeyWrite,
    /// `spend_tracking_routes`: `internal_user`(`_viewer`)s, scoped to their own spend.
    Spend,
    /// `global_spend_tracking_routes`: admins, admin viewers and keys with the
    /// `get_spend_routes` permission.
    GlobalSpend,
    /// `self_managed_routes`: any caller; the handler requires an admin of the team.
    TeamAdmin,
    /// LiteLLM's `org_admin_only_routes` that change things: any caller passes the route
    /// check; the handler requires a proxy admin or an `org_admin` of the organization named.
    OrgAdmin,
    /// `/organization/info`: as [`RouteKind::OrgAdmin`], and proxy admin viewers may read.
    OrgAdminRead,
    /// Reads for `proxy_admin` and `proxy_admin_viewer`.
    AdminRead,
    /// Changes for `proxy_admin` only.
    AdminWrite,
}

/// Every admin route and its kind (`/end_user/*` is checked as `/customer/*`). This is the
/// rights table SECURITY.md documents.
pub const ROUTES: &[(&str, RouteKind)] = &[
    ("/key/generate", RouteKind::KeyWrite),
    ("/key/update", RouteKind::KeyWrite),
    ("/key/delete", RouteKind::KeyWrite),
    ("/key/regenerate", RouteKind::KeyWrite),
    ("/key/block", RouteKind::KeyWrite),
    ("/key/unblock", RouteKind::KeyWrite),
    ("/key/info", RouteKind::Info),
    ("/key/list", RouteKind::Info),
    ("/user/new", RouteKind::AdminWrite),
    ("/user/update", RouteKind::AdminWrite),
    ("/user/delete", RouteKind::AdminWrite),
    ("/user/info", RouteKind::Info),
    ("/user/list", RouteKind::AdminRead),
    ("/team/new", RouteKind::AdminWrite),
    ("/team/delete", RouteKind::AdminWrite),
    ("/team/block", RouteKind::AdminWrite),
    ("/team/unblock", RouteKind::AdminWrite),
    ("/team/update", RouteKind::TeamAdmin),
    ("/team/member_add", RouteKind::TeamAdmin),
    ("/team/member_delete", RouteKind::TeamAdmin),
    ("/team/member_update", RouteKind::TeamAdmin),
    ("/team/info", RouteKind::Info),
    ("/team/list", RouteKind::Info),
    ("/organization/new", RouteKind::AdminWrite),
    ("/organization/update", RouteKind::AdminWrite),
    ("/organization/delete", RouteKind::AdminWrite),
    ("/organization/list", RouteKind::Info),
    ("/organization/info", RouteKind::OrgAdminRead),
    ("/organization/member_add", RouteKind::OrgAdmin),
    ("/organization/member_update", RouteKind::OrgAdmin),
    ("/organization/member_delete", RouteKind::OrgAdmin),
    ("/customer/new", RouteKind::AdminWrite),
    ("/customer/update", RouteKind::AdminWrite),
    ("/customer/delete", RouteKind::AdminWrite),
    ("/customer/block", RouteKind::AdminWrite),
    ("/customer/unblock", RouteKind::AdminWrite),
    ("/customer/info", RouteKind::AdminRead),
    ("/customer/list", RouteKind::AdminRead),
    ("/budget/new", RouteKind::AdminWrite),
    ("/budget/update", RouteKind::AdminWrite),
    ("/budget/delete", RouteKind::AdminWrite),
    ("/budget/info", RouteKind::AdminRead),
    ("/budget/list", RouteKind::AdminRead),
    ("/spend/logs", RouteKind::Spend),
    ("/user/daily/activity", RouteKind::Spend),
    ("/global/spend", RouteKind::GlobalSpend),
    ("/model/info", RouteKind::Info),
    ("/model_group/info", RouteKind::Info),
];

/// The kind of a route; a route missing from [`ROUTES`] is for admins only.
pub fn route_kind(route: &str) -> RouteKind {
    ROUTES
        .iter()
        .find(|(r, _)| *r == route)
        .map(|(_, k)| *k)
        .unwrap_or(RouteKind::AdminWrite)
}

/// May `principal` call `route` at all (before the handler looks at what it touches)?
pub fn check_route(principal: &Principal, route: &str) -> Result<(), AdminError> {
    if principal.is_admin() {
        return Ok(());
    }
    let kind = route_kind(route);
    if kind == RouteKind::GlobalSpend && principal.may_read_global_spend() {
        return Ok(());
    }
    let role = principal.role();
    if role == Some(PROXY_ADMIN_VIEWER) {
        // Reads everything, changes nothing (`_check_proxy_admin_viewer_access`).
        return match kind {
            RouteKind::Info
            | RouteKind::Spend
            | RouteKind::GlobalSpend
            | RouteKind::AdminRead
            | RouteKind::OrgAdminRead => Ok(()),
            _ => Err(AdminError::Api(ApiError::new(
                403,
                "auth_error",
                format!(
                    "user not allowed to access this route, role= {PROXY_ADMIN_VIEWER}. Trying to access: {route}"
                ),
            ))),
        };
    }
    let allowed = match kind {
        RouteKind::Info | RouteKind::TeamAdmin | RouteKind::OrgAdmin | RouteKind::OrgAdminRead => {
            true
        }
        RouteKind::KeyWrite => {
            role == Some(INTERNAL_USER)
                || (principal.service_account_team().is_some()
                    && matches!(route, "/key/generate" | "/key/update"))
        }
        RouteKind::Spend => matches!(role, Some(INTERNAL_USER | INTERNAL_USER_VIEWER)),
        RouteKind::GlobalSpend | RouteKind::AdminRead | RouteKind::AdminWrite => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(not_admin(principal, route))
    }
}

/// Authenticates the caller and checks its right to call `route` ([`check_route`]).
pub fn authorize(
    state: &AdminState,
    headers: &HeaderMap,
    route: &str,
) -> Result<Principal, AdminError> {
    let p = authenticate(state, headers)?;
    check_route(&p, route)?;
    Ok(p)
}

pub fn authenticate(state: &AdminState, headers: &HeaderMap) -> Result<Principal, AdminError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let settings = state.settings();
    let raw = extract_credential(get, settings.key_header_name.as_deref())?;
    let master = settings.master_key.as_bytes();
    if !master.is_empty() && bool::from(raw.as_bytes().ct_eq(master)) {
        return Ok(Principal::Master);
    }
    if !raw.starts_with("sk-") {
        return Err(ApiError::not_a_virtual_key(&raw).into());
    }
    let Some(key) = state.store.key(&hash_key(&raw))? else {
        return Err(ApiError::invalid_api_key().into());
    };
    // A blocked or expired key is refused on every route, as in LiteLLM.
    if key.blocked == Some(true) {
        return Err(ApiError::key_blocked().into());
    }
    let now = super::common::now_micros();
    if let Some(expires) = key.expires.as_deref().and_then(parse_iso8601_utc) {
        if expires < now {
            return Err(ApiError::expired_key(
                &key.key_name,
                &format_python_utc(expires),
                &format_python_utc(now),
            )
            .into());
        }
    }
    let user = match &key.user_id {
        Some(u) => state.store.user(u)?.map(Box::new),
        None => None,
    };
    Ok(Principal::Key {
        key: Box::new(key),
        user,
    })
}

pub fn mask_id(id: &str) -> String {
    let n = id.chars().count();
    if n <= 4 {
        return "*".repeat(n);
    }
    let head: String = id.chars().take(2).collect();
    let tail: String = id.chars().skip(n - 2).collect();
    format!("{head}{}{tail}", "*".repeat(n - 4))
}

/// LiteLLM's refusal of a management route to a non-admin (401). A caller without user row
/// has role and user id `unknown` there (`_raise_admin_only_route_exception`).
pub fn not_admin(principal: &Principal, route: &str) -> AdminError {
    let (role, user_id) = match principal.role() {
        Some(role) => (
            role,
            principal
                .user_id()
                .map(mask_id)
                .unwrap_or_else(|| "None".into()),
        ),
        None => ("unknown", "unknown".to_string()),
    };
    AdminError::Api(ApiError::new(
        401,
        "auth_error",
        format!(
            "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route={route}. Your role={role}. Your user_id={user_id}"
        ),
    ))
}

/// Only the filter (which holds the internal token) may call the internal endpoints.
pub fn internal_only(state: &AdminState, headers: &HeaderMap) -> Result<(), AdminError> {
    let expected = format!("Bearer {}", state.settings().internal_token);
    let given = headers
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if state.settings().internal_token.is_empty() || !bool::from(given.ct_eq(expected.as_bytes())) {
        return Err(AdminError::Api(ApiError::new(
            401,
            "auth_error",
            "internal endpoint",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_user_ids() {
        assert_eq!(mask_id("abcdef"), "ab**ef");
        assert_eq!(mask_id("abc"), "***");
    }

    #[test]
    fn roles_come_from_the_user_row() {
        let key = |role: Option<&str>| Principal::Key {
            key: Box::new(KeyRow {
                user_id: Some("u".into()),
                ..Default::default()
            }),
            user: role.map(|r| {
                Box::new(UserRow {
                    user_id: "u".into(),
                    user_role: Some(r.into()),
                    ..Default::default()
                })
            }),
        };
        assert!(Principal::Master.is_admin());
        assert_eq!(key(None).role(), None);
        assert_eq!(key(Some("bogus")).role(), Some(INTERNAL_USER));
        assert!(key(Some(PROXY_ADMIN)).is_admin());
        assert!(key(Some(PROXY_ADMIN_VIEWER)).is_admin_viewer());
        assert!(!key(Some(PROXY_ADMIN_VIEWER)).is_admin());
        assert!(check_route(&key(Some(INTERNAL_USER_VIEWER)), "/key/generate").is_err());
        assert!(check_route(&key(Some(INTERNAL_USER)), "/key/generate").is_ok());
        // A key whose user has no row has no role: no key writes.
        assert!(check_route(&key(None), "/key/generate").is_err());
        assert_eq!(route_kind("/no/such/route"), RouteKind::AdminWrite);
    }
}

/// The route name authorization checks for a request path: the path itself, except LiteLLM's
/// second names (`/end_user/*` is `/customer/*`, `/v1/model/info` is `/model/info`) and
/// `/key/{key}/regenerate`, which is `/key/regenerate`.
pub fn route_name(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("/end_user/") {
        return format!("/customer/{rest}");
    }
    if let Some(rest) = path.strip_prefix("/v1/") {
        if rest == "model/info" {
            return "/model/info".into();
        }
    }
    if path.starts_with("/key/") && path.ends_with("/regenerate") {
        return "/key/regenerate".into();
    }
    path.to_string()
}

/// The caller, authenticated and allowed on the request's route ([`authorize`]): an axum
/// extractor, so a handler only states that it needs one. It runs before the body is read.
pub struct Authorized(pub Principal);

impl axum::extract::FromRequestParts<super::Shared> for Authorized {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &super::Shared,
    ) -> Result<Self, Self::Rejection> {
        authorize(state, &parts.headers, &route_name(parts.uri.path())).map(Authorized)
    }
}

#[cfg(test)]
mod route_name_tests {
    use super::route_name;

    #[test]
    fn second_names_map_to_litellms_route() {
        assert_eq!(route_name("/end_user/block"), "/customer/block");
        assert_eq!(route_name("/v1/model/info"), "/model/info");
        assert_eq!(route_name("/key/sk-abc/regenerate"), "/key/regenerate");
        assert_eq!(route_name("/team/info"), "/team/info");
    }
}
