//! `/key/block`, `/team/block`, `/customer/block` (also `/end_user/block`) and their
//! `/unblock`, written once: the caller is authorized for the entity's route, the flag is
//! set in one transaction, and the answer carries what the filter must forget.

use super::auth::Authorized;
use super::auth::Principal;
use super::common::{changed, transact, AdminError, AdminResult, Fields};
use super::{AdminState, Shared};
use crate::sidecar::store::Tx;
use axum::extract::State;
use serde_json::Value;

/// An entity `/block` and `/unblock` act on.
pub trait Blockable {
    /// The route names authorization checks: `[block, unblock]`.
    const ROUTES: [&'static str; 2];

    /// Sets `blocked` on what the body names, within `tx`; returns the answer's body.
    fn set_blocked(
        state: &AdminState,
        tx: &mut Tx<'_>,
        principal: &Principal,
        route: &str,
        body: &Fields,
        blocked: bool,
    ) -> Result<Value, AdminError>;
}

fn set<T: Blockable>(
    state: &AdminState,
    principal: &Principal,
    body: &Fields,
    blocked: bool,
) -> AdminResult {
    let route = T::ROUTES[usize::from(!blocked)];
    let done = transact(state, |tx| {
        T::set_blocked(state, tx, principal, route, body, blocked)
    })?;
    Ok(changed(done.value, &done.entries))
}

/// `POST /<entity>/block`.
pub async fn block<T: Blockable>(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    body: Fields,
) -> AdminResult {
    set::<T>(&state, &principal, &body, true)
}

/// `POST /<entity>/unblock`.
pub async fn unblock<T: Blockable>(
    State(state): State<Shared>,
    Authorized(principal): Authorized,
    body: Fields,
) -> AdminResult {
    set::<T>(&state, &principal, &body, false)
}
