//! Who is calling the admin API and what they may do (litellm-compat.md §5.1): the master key
//! is `proxy_admin`; a virtual key has its user's `user_role` (`internal_user` without a user
//! row).

use super::common::AdminError;
use super::AdminState;
use crate::credential::extract_credential;
use crate::duration::{format_python_utc, parse_iso8601_utc};
use crate::errors::ApiError;
use crate::key_format::hash_key;
use crate::sidecar::store::{KeyRow, TeamRow, UserRow};
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

/// The caller.
pub enum Principal {
    Master,
    Key {
        key: Box<KeyRow>,
        user: Option<Box<UserRow>>,
    },
}

impl Principal {
    pub fn role(&self) -> &str {
        match self {
            Principal::Master => PROXY_ADMIN,
            Principal::Key { user, .. } => user
                .as_ref()
                .and_then(|u| u.user_role.as_deref())
                .filter(|r| USER_ROLES.contains(r))
                .unwrap_or(INTERNAL_USER),
        }
    }

    /// Master key or a `proxy_admin` user's key.
    pub fn is_admin(&self) -> bool {
        self.role() == PROXY_ADMIN
    }

    /// May read everything (`proxy_admin`, `proxy_admin_viewer`).
    pub fn is_admin_viewer(&self) -> bool {
        matches!(self.role(), PROXY_ADMIN | PROXY_ADMIN_VIEWER)
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

    /// A team admin of `team` (LiteLLM lets them manage the team's keys and members).
    pub fn is_team_admin(&self, team: &TeamRow) -> bool {
        self.user_id().is_some_and(|u| team.is_admin(u))
    }

    pub fn is_team_member(&self, team: &TeamRow) -> bool {
        self.user_id().is_some_and(|u| team.member(u).is_some())
    }
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

/// LiteLLM's refusal of a management route to a non-admin (401).
pub fn not_admin(principal: &Principal, route: &str) -> AdminError {
    AdminError::Api(ApiError::new(
        401,
        "auth_error",
        format!(
            "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route={route}. Your role={}. Your user_id={}",
            principal.role(),
            principal.user_id().map(mask_id).unwrap_or_else(|| "None".into())
        ),
    ))
}

/// The route is for `proxy_admin` only.
pub fn require_admin(principal: &Principal, route: &str) -> Result<(), AdminError> {
    if principal.is_admin() {
        Ok(())
    } else {
        Err(not_admin(principal, route))
    }
}

/// The route reads everything: `proxy_admin` or `proxy_admin_viewer`.
pub fn require_admin_view(principal: &Principal, route: &str) -> Result<(), AdminError> {
    if principal.is_admin_viewer() {
        Ok(())
    } else {
        Err(not_admin(principal, route))
    }
}

/// The route changes things: viewers (`*_viewer`) may not call it.
pub fn require_writer(principal: &Principal, route: &str) -> Result<(), AdminError> {
    match principal.role() {
        PROXY_ADMIN | INTERNAL_USER => Ok(()),
        _ => Err(not_admin(principal, route)),
    }
}

/// Authenticates and requires `proxy_admin`.
pub fn admin_only(
    state: &AdminState,
    headers: &HeaderMap,
    route: &str,
) -> Result<Principal, AdminError> {
    let p = authenticate(state, headers)?;
    require_admin(&p, route)?;
    Ok(p)
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
        assert_eq!(key(None).role(), INTERNAL_USER);
        assert!(key(Some(PROXY_ADMIN)).is_admin());
        assert!(key(Some(PROXY_ADMIN_VIEWER)).is_admin_viewer());
        assert!(!key(Some(PROXY_ADMIN_VIEWER)).is_admin());
        assert!(require_writer(&key(Some(INTERNAL_USER_VIEWER)), "/key/generate").is_err());
        assert!(require_writer(&key(None), "/key/generate").is_ok());
    }
}
