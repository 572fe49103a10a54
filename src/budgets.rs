//! Budgets at every level (litellm-compat.md §2), over a `VersionedStore`.
//!
//! Each budget is one shared-data entry `reset_at spend reserved` (µs, nano-dollars; binary,
//! [`crate::entry`]). Checks
//! run in LiteLLM's order; every level blocks at `spend + reserved >= max_budget` (Tollgate's
//! one deliberate difference: LiteLLM is strict `>` for teams, customers and the proxy).
//! Admission reserves the request's maximum cost against every budget (all or nothing), so
//! concurrent requests cannot together pass a budget; settlement swaps it for the real cost.
//! Resets are lazy and exact: the first check or charge after `reset_at` starts the new period.
//!
//! Fleet mode (FLEET.md §4.4) adds the lease to the entry:
//! `reset_at spend reserved grant deadline global global_at asked asked_used peak waiting`. `spend` and
//! `reserved` are then this Envoy's use in the period, `grant` the cumulative slice leased from
//! the sidecar for it, valid until `deadline` (µs). A limited budget admits iff
//! `now < deadline` and `spend + reserved < grant` (FLEET I2), reserving the full estimate so
//! a crossing shows in the next report. `global` is the fleet's settled spend from the last
//! answer and `global_at` this Envoy's `spend` when it came (headers show
//! `global + spend − global_at`); `asked`, `asked_used` and `peak` drive renewals (when the slice was last asked for,
//! the use then, and the largest reservation since). Entries written outside fleet mode keep
//! their lease fields zero (left out: 3 fields), and a 3-field entry reads as one without a lease.

use crate::cost::{nanos_to_usd, py_float};
use crate::entry::Fields;
use crate::errors::ApiError;
use crate::plugin_config::NoLeasePolicy;
use crate::records::{LeaseAnswer, LeaseGrant, LeaseItem};
use crate::shared_store::{update, Decision, StoreError, VersionedStore};
use crate::time::{add_duration, next_reset_at_str, parse_duration, ZoneOffsets, UTC};

use crate::contract::BUDGET_PREFIX as PREFIX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// A virtual key: `alias` (or "key") and `key_name` (`sk-...abcd`) for the message.
    Key {
        alias: String,
        key_name: String,
    },
    /// `model_max_budget` of a key: window from the first charge, not calendar-aligned.
    KeyModel {
        token: String,
        alias: String,
        model: String,
    },
    User,
    /// A team (`scope.id` is the team id).
    Team,
    /// A user's budget inside a team.
    TeamMember {
        user: String,
        team: String,
    },
    EndUser,
    /// An organization (`scope.id` is the organization id): its teams' keys share it.
    Organization,
    Proxy,
}

impl Level {
    pub fn tag(&self) -> &'static str {
        match self {
            Level::Key { .. } => "key",
            Level::KeyModel { .. } => "key_model",
            Level::User => "user",
            Level::Team => "team",
            Level::TeamMember { .. } => "team_member",
            Level::EndUser => "end_user",
            Level::Organization => "organization",
            Level::Proxy => "proxy",
        }
    }
}

/// One budget a request touches.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub level: Level,
    pub id: String,
    /// `None`: spend is tracked, nothing is enforced.
    pub max_budget_usd: Option<f64>,
    pub duration: Option<String>,
    /// Where the sidecar's record stands, used when the entry does not exist yet.
    pub seed_spend_nanos: i64,
    pub seed_reset_at_micros: Option<i64>,
}

/// How periods are computed (from the plugin's budget settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar<'a> {
    pub zone: &'a ZoneOffsets,
    pub reset_time_of_day_seconds: u32,
}

impl Default for Calendar<'_> {
    fn default() -> Self {
        Calendar {
            zone: &UTC,
            reset_time_of_day_seconds: 0,
        }
    }
}

/// One budget's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub reset_at: i64,
    pub spend: i64,
    pub reserved: i64,
    /// Fleet mode: the slice leased for the period (cumulative, nano-dollars), valid while
    /// `now < deadline` (µs).
    pub grant: i64,
    pub deadline: i64,
    /// Fleet mode: the budget's settled spend across the fleet, from the last lease answer,
    /// and this Envoy's `spend` when it came.
    pub global: i64,
    pub global_at: i64,
    /// Fleet mode: when a renewal was last enqueued (µs), `spend + reserved` then (for the
    /// demand rate), and the largest reservation since.
    pub asked: i64,
    pub asked_used: i64,
    pub peak: i64,
    /// Fleet mode: the reservations of requests that paused to borrow for this slice since the
    /// last answer. A borrow asks for all of them: concurrent requests on a cold (or used-up)
    /// slice each send a borrow, the answers are taken by `max`, so an answer sized for one
    /// request would admit one of them and refuse the rest.
    pub waiting: i64,
    /// Fleet mode: the next period's slice, issued ahead in the last seconds of this one
    /// (FLEET.md §4.7): for the period ending at `next_period`, valid until `next_deadline`.
    /// Installed as `grant` when the period rolls into it.
    pub next_period: i64,
    pub next_grant: i64,
    pub next_deadline: i64,
    /// Fleet mode: the seq of the lease call whose answer set `grant` (and `next_grant`):
    /// answers are applied in seq order, so a shrink takes effect and a late, older answer
    /// changes nothing. `seq` is also what the entry reports as `held_seq`.
    pub seq: i64,
    pub next_seq: i64,
}

// The entry, in this order ([`crate::entry`]): outside fleet mode only the first three are
// ever non-zero, so the entry is 24 bytes.
crate::entry::i64_fields!(Counter {
    reset_at,
    spend,
    reserved,
    grant,
    deadline,
    global,
    global_at,
    asked,
    asked_used,
    peak,
    waiting,
    next_period,
    next_grant,
    next_deadline,
    seq,
    next_seq,
});

impl Counter {
    /// This Envoy's use in the period: settled spend plus reservations in flight.
    pub fn used(&self) -> i64 {
        self.spend.saturating_add(self.reserved)
    }

    /// Fleet mode: the budget's spend across the fleet as far as this Envoy knows: the last
    /// answer's, plus what this Envoy spent since.
    pub fn fleet_spend(&self) -> i64 {
        self.global
            .saturating_add(self.spend.saturating_sub(self.global_at).max(0))
    }

    /// Fleet I2: the slice can admit one more request.
    pub fn slice_admits(&self, now: i64) -> bool {
        now < self.deadline && self.used() < self.grant
    }

    /// A new period: nothing spent (reservations in flight stay until settled), and no lease
    /// unless the one issued ahead is for it. Fleet mode keeps the demand estimate going: the
    /// use since the reset counts from the reset, and the largest reservation stays.
    fn roll(&mut self, reset_at: i64) {
        let ahead = reset_at != 0 && self.next_period == reset_at;
        let fleet = self.asked != 0;
        *self = Counter {
            reset_at,
            reserved: self.reserved,
            grant: if ahead { self.next_grant } else { 0 },
            deadline: if ahead { self.next_deadline } else { 0 },
            seq: if ahead { self.next_seq } else { 0 },
            asked: if fleet { self.reset_at } else { 0 },
            asked_used: if fleet { self.reserved } else { 0 },
            peak: if fleet { self.peak } else { 0 },
            ..Counter::default()
        };
    }

    /// Fleet mode: the last seconds of the period and no slice of the next one held past
    /// the reset: a report now gets the next period's slice ahead.
    pub fn next_due(&self, now: i64) -> bool {
        crate::leases::pre_issue_due(self.reset_at, now, 0) && self.next_deadline <= self.reset_at
    }
}

/// One budget this request holds a reservation on (or is charged to).
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub key: String,
    pub reserved: i64,
    pub duration: Option<String>,
    pub aligned: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetTicket {
    pub charges: Vec<Charge>,
    /// The key's spend and budget as admitted (for `x-litellm-key-*` headers).
    pub key_spend_nanos: Option<i64>,
    pub key_max_budget: Option<f64>,
}

pub fn storage_key(scope: &Scope) -> String {
    format!(
        "{PREFIX}{}",
        scope_name(scope.level.tag(), &[scope.id.as_str()])
    )
}

/// The proxy budget's id (LiteLLM's `litellm-proxy-budget`).
pub const PROXY_BUDGET_ID: &str = "litellm-proxy-budget";

/// A budget's name, the same in the filter's shared data (after [`PREFIX`]) and in the
/// sidecar's lease rows (fleet mode's `LeaseItem.scope`): `<level>:<ids joined by ':'>`, e.g.
/// `key:<token>`, `key_model:<token>:<entry>`, `team_member:<team>:<user>`; the proxy's (no
/// ids) is `proxy:litellm-proxy-budget`.
pub fn scope_name(level: &str, ids: &[&str]) -> String {
    if ids.is_empty() && level == "proxy" {
        return format!("{level}:{PROXY_BUDGET_ID}");
    }
    format!("{level}:{}", ids.join(":"))
}

/// The ids naming a budget in a lease ([`LeaseItem::ids`]).
pub fn lease_ids(scope: &Scope) -> Vec<String> {
    match &scope.level {
        Level::Key { .. } | Level::User | Level::Team | Level::Organization | Level::EndUser => {
            vec![scope.id.clone()]
        }
        Level::KeyModel { token, .. } => {
            let entry = scope
                .id
                .strip_prefix(token.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .unwrap_or(&scope.id);
            vec![token.clone(), entry.to_string()]
        }
        Level::TeamMember { user, team } => vec![team.clone(), user.clone()],
        Level::Proxy => Vec::new(),
    }
}

/// A budget's lease item as of its entry `c`, asking for `want` beyond its use.
fn lease_item(scope: &Scope, c: &Counter, want: i64) -> LeaseItem {
    let ids = lease_ids(scope);
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    LeaseItem {
        scope: scope_name(scope.level.tag(), &names),
        level: scope.level.tag().to_string(),
        ids,
        period: c.reset_at,
        used: c.used(),
        held: c.grant,
        held_seq: u64::try_from(c.seq).unwrap_or(0),
        want: want.max(0),
        returning: false,
        reservation: c.peak.max(0),
        ..Default::default()
    }
}

/// The end of the period that starts at `now` (µs), or 0 when there is no period.
fn period_end(duration: Option<&str>, aligned: bool, now: i64, cal: Calendar<'_>) -> i64 {
    let Some(d) = duration else { return 0 };
    let now_secs = now.div_euclid(1_000_000);
    let end = if aligned {
        next_reset_at_str(d, now_secs, cal.zone, cal.reset_time_of_day_seconds)
    } else {
        match parse_duration(d) {
            Ok(p) => add_duration(now_secs, p),
            Err(_) => return 0,
        }
    };
    end.saturating_mul(1_000_000)
}

/// The counter as of `now`: seeded when missing, reset when its period has ended.
fn current(
    value: Option<&[u8]>,
    scope_seed: (i64, Option<i64>),
    duration: Option<&str>,
    aligned: bool,
    now: i64,
    cal: Calendar<'_>,
) -> Counter {
    let mut c = match value {
        Some(v) => Counter::decode(v),
        None => Counter {
            reset_at: scope_seed.1.unwrap_or(0),
            spend: scope_seed.0.max(0),
            ..Counter::default()
        },
    };
    match duration {
        None => c.reset_at = 0,
        Some(_) => {
            let ended = c.reset_at != 0 && now >= c.reset_at;
            if ended || c.reset_at == 0 {
                let end = period_end(duration, aligned, now, cal);
                if ended {
                    c.roll(end);
                } else {
                    c.reset_at = end;
                }
            }
        }
    }
    c
}

fn exceeded(scope: &Scope, current_nanos: i64, max: f64, status: u16) -> ApiError {
    let x = py_float(nanos_to_usd(current_nanos));
    let y = py_float(max);
    let message = match &scope.level {
        Level::Key { alias, key_name } => format!(
            "Budget has been exceeded! Key={alias} ({key_name}) Current cost: {x}, Max budget: {y}"
        ),
        Level::KeyModel {
            token,
            alias,
            model,
        } => format!(
            "LiteLLM Virtual Key: {token}, key_alias: {alias}, exceeded budget for model={model}"
        ),
        Level::User => format!(
            "ExceededBudget: User={} over budget. Spend={x}, Budget={y}",
            scope.id
        ),
        Level::Team => format!(
            "Budget has been exceeded! Team={} Current cost: {x}, Max budget: {y}",
            scope.id
        ),
        Level::TeamMember { user, team } => format!(
            "Budget has been exceeded! User={user} in Team={team} Current cost: {x}, Max budget: {y}"
        ),
        Level::EndUser => format!(
            "ExceededBudget: End User={} over budget. Spend={x}, Budget={y}",
            scope.id
        ),
        Level::Organization => format!(
            "Budget has been exceeded! Organization={} Current cost: {x}, Max budget: {y}",
            scope.id
        ),
        Level::Proxy => format!("Budget has been exceeded! Current cost: {x}, Max budget: {y}"),
    };
    ApiError::new(status, "budget_exceeded", message)
}

fn store_error(_: StoreError) -> ApiError {
    ApiError::service_unavailable("Tollgate could not update its budget counters; try again.")
}

/// Checks every budget in order and reserves `estimate_nanos` (capped at what is left) on each
/// that has a limit. Refused: whatever was reserved is given back.
pub fn admit<S: VersionedStore>(
    store: &S,
    scopes: &[Scope],
    estimate_nanos: i64,
    now: i64,
    cal: Calendar<'_>,
    exceeded_status: u16,
) -> Result<BudgetTicket, ApiError> {
    match admit_in(
        store,
        scopes,
        estimate_nanos,
        now,
        cal,
        exceeded_status,
        None,
    )? {
        Admission::Admitted { ticket, .. } => Ok(ticket),
        // Only fleet mode borrows.
        Admission::Borrow(_) => Err(no_lease()),
    }
}

/// Fleet mode's inputs to an admission.
#[derive(Debug, Clone, Copy)]
pub struct FleetCheck<'a> {
    /// The lease TTL (µs): a slice past half of it is renewed.
    pub ttl_micros: i64,
    /// `None`: the first attempt, where a budget without a valid slice asks to borrow.
    /// `Some`: the attempt after a borrow, with what the sidecar answered.
    pub after_borrow: Option<&'a Borrowed>,
}

/// What a borrow got back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Borrowed {
    /// The scopes whose grant was applied (the sidecar answered for this Envoy's period), with
    /// the fleet's settled spend.
    pub answered: Vec<(String, i64)>,
    /// For scopes not answered (no answer, an error, another period).
    pub policy: NoLeasePolicy,
    /// The scopes the borrow asked for (budgets and rate limits). A scope not among them
    /// that cannot admit (its slice ran out or expired while the request waited) asks again.
    pub asked: Vec<String>,
}

impl Borrowed {
    pub fn asked(&self, scope: &str) -> bool {
        self.asked.iter().any(|s| s == scope)
    }
}

/// The outcome of an admission that did not refuse.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Reserved on every budget; `renew` are slices now due for renewal (their `asked` set in
    /// the same write), for the lease queue.
    Admitted {
        ticket: BudgetTicket,
        renew: Vec<LeaseItem>,
    },
    /// Fleet mode: budgets without a valid slice (and any due for renewal), to borrow before
    /// admitting again. Nothing is held.
    Borrow(Vec<LeaseItem>),
}

/// 503 when a budget has no slice and the sidecar lent none (`on_no_lease: deny`).
pub fn no_lease() -> ApiError {
    ApiError::service_unavailable(
        "Tollgate could not get a budget lease from the sidecar; try again.",
    )
}

/// What one budget's check decided.
enum Checked {
    Took {
        counter: Counter,
        take: i64,
        renew: Option<LeaseItem>,
    },
    /// Only checked (another budget is being borrowed for): it could admit.
    Fine,
    NoSlice(LeaseItem),
    /// Refused; the spend figure for the message.
    Exceeded(i64),
    Unavailable,
}

/// Use expected over the sizing horizon, from the use since the last ask.
fn demand(c: &Counter, now: i64) -> i64 {
    crate::leases::demand(c.asked, c.asked_used, c.used(), now)
}

/// How much beyond its use a slice should ask for: the largest reservation, or the demand.
fn want(c: &Counter, take: i64, now: i64) -> i64 {
    take.max(c.peak).max(demand(c, now))
}

/// Today's rule: block at `spend + reserved >= max`, reserve what is left at most.
fn local_rule(stored: Option<&[u8]>, c: Counter, max: i64, estimate: i64) -> Decision<Checked> {
    if c.used() >= max {
        return Decision::Keep(Checked::Exceeded(c.used()));
    }
    let left = max.saturating_sub(c.spend).saturating_sub(c.reserved);
    let take = estimate.clamp(0, left);
    let next = Counter {
        reserved: c.reserved.saturating_add(take),
        ..c
    };
    write_if_changed(
        stored,
        &next,
        Checked::Took {
            counter: next,
            take,
            renew: None,
        },
    )
}

/// Fleet mode's rule on a limited budget (FLEET I2).
#[allow(clippy::too_many_arguments)]
fn fleet_rule(
    stored: Option<&[u8]>,
    c: Counter,
    max: i64,
    estimate: i64,
    now: i64,
    fleet: FleetCheck<'_>,
    scope: &Scope,
    checking_only: bool,
) -> Decision<Checked> {
    let take = estimate.max(0);
    if c.slice_admits(now) {
        if checking_only {
            return Decision::Keep(Checked::Fine);
        }
        // The full estimate, never capped: a crossing of the grant shows in the next report.
        let mut next = Counter {
            reserved: c.reserved.saturating_add(take),
            peak: c.peak.max(take),
            ..c
        };
        // Due at most once a second, when half the TTL is gone or what is left is low; the
        // cheap tests first (the demand is a 128-bit division, on every request otherwise).
        let due = now.saturating_sub(next.asked) >= crate::leases::RENEW_EVERY_MICROS
            && (next.deadline.saturating_sub(now) < fleet.ttl_micros / 2
                || next.grant.saturating_sub(next.used()) < take.max(demand(&next, now)));
        let mut renew = None;
        if due {
            renew = Some(lease_item(scope, &next, want(&next, take, now)));
            next.asked = now;
            next.asked_used = next.used();
            next.peak = take;
        }
        return write_if_changed(
            stored,
            &next,
            Checked::Took {
                counter: next,
                take,
                renew,
            },
        );
    }
    // A budget the borrow did not ask for (its slice ran out or expired while this request
    // waited for the others) is borrowed for in another round.
    let name = lease_item(scope, &c, 0).scope;
    match fleet.after_borrow.filter(|b| b.asked(&name)) {
        None => {
            // A live slice used up while the fleet has spent the whole budget: no hop can help.
            if now < c.deadline && c.global >= max {
                return Decision::Keep(Checked::Exceeded(c.global.saturating_add(c.used())));
            }
            let c = Counter {
                waiting: c.waiting.saturating_add(take),
                ..c
            };
            let item = lease_item(scope, &c, want(&c, take, now).max(c.waiting));
            // Written now (a new entry, or one rolled into a new period) so the period is
            // fixed before the answer comes: the answer is for the period the item names (a
            // `key_model` window starts at its first use).
            write_if_changed(stored, &c, Checked::NoSlice(item))
        }
        Some(borrowed) => match borrowed.answered.iter().find(|(s, _)| *s == name) {
            Some((_, global)) => Decision::Keep(Checked::Exceeded(global.saturating_add(c.used()))),
            None => match borrowed.policy {
                NoLeasePolicy::Deny => Decision::Keep(Checked::Unavailable),
                NoLeasePolicy::Local => local_rule(stored, c, max, estimate),
            },
        },
    }
}

/// [`admit`], and in fleet mode (`fleet`) against this Envoy's slices: `Borrow` when a limited
/// budget has no valid slice (all or nothing: nothing is held then).
pub fn admit_in<S: VersionedStore>(
    store: &S,
    scopes: &[Scope],
    estimate_nanos: i64,
    now: i64,
    cal: Calendar<'_>,
    exceeded_status: u16,
    fleet: Option<FleetCheck<'_>>,
) -> Result<Admission, ApiError> {
    let mut ticket = BudgetTicket::default();
    let mut renew = Vec::new();
    let mut borrow = Vec::new();
    for scope in scopes {
        let key = storage_key(scope);
        let aligned = !matches!(scope.level, Level::KeyModel { .. });
        let duration = scope.duration.as_deref();
        let max = scope
            .max_budget_usd
            .filter(|m| !m.is_nan())
            .map(crate::cost::usd_to_budget_nanos);
        // In fleet mode an entry counts this Envoy's use only: it starts from zero.
        let seed_spend = if fleet.is_some() {
            0
        } else {
            scope.seed_spend_nanos
        };
        let seed = (seed_spend, scope.seed_reset_at_micros);
        let checking_only = !borrow.is_empty();
        let outcome = update(store, &key, now, |v| {
            let c = current(v, seed, duration, aligned, now, cal);
            match (max, fleet) {
                (None, _) if checking_only => Decision::Keep(Checked::Fine),
                (None, _) => write_if_changed(
                    v,
                    &c,
                    Checked::Took {
                        counter: c,
                        take: 0,
                        renew: None,
                    },
                ),
                (Some(m), None) => local_rule(v, c, m, estimate_nanos),
                (Some(m), Some(f)) => {
                    fleet_rule(v, c, m, estimate_nanos, now, f, scope, checking_only)
                }
            }
        });
        let refusal = match outcome {
            Ok(Checked::Took {
                counter,
                take,
                renew: due,
            }) => {
                if matches!(scope.level, Level::Key { .. }) {
                    ticket.key_spend_nanos = Some(match fleet {
                        Some(_) => counter.fleet_spend(),
                        None => counter.spend,
                    });
                    ticket.key_max_budget = scope.max_budget_usd;
                }
                ticket.charges.push(Charge {
                    key,
                    reserved: take,
                    duration: scope.duration.clone(),
                    aligned,
                });
                renew.extend(due);
                continue;
            }
            Ok(Checked::Fine) => continue,
            Ok(Checked::NoSlice(item)) => {
                borrow.push(item);
                continue;
            }
            Ok(Checked::Exceeded(figure)) => exceeded(
                scope,
                figure,
                scope.max_budget_usd.unwrap_or(0.0),
                exceeded_status,
            ),
            Ok(Checked::Unavailable) => no_lease(),
            Err(e) => store_error(e),
        };
        settle(store, &ticket, None, now, cal);
        return Err(refusal);
    }
    if borrow.is_empty() {
        return Ok(Admission::Admitted { ticket, renew });
    }
    settle(store, &ticket, None, now, cal);
    // Slices due for renewal ride along with the borrow.
    borrow.extend(renew);
    Ok(Admission::Borrow(borrow))
}

/// Releases every reservation and charges `actual_nanos` (None: nothing, the call did not
/// happen) to every budget of the ticket. Returns the key's spend afterwards, if tracked.
pub fn settle<S: VersionedStore>(
    store: &S,
    ticket: &BudgetTicket,
    actual_nanos: Option<i64>,
    now: i64,
    cal: Calendar<'_>,
) -> Option<i64> {
    let mut key_spend = None;
    for (i, charge) in ticket.charges.iter().enumerate() {
        let result = update(store, &charge.key, now, |v| {
            let Some(bytes) = v else {
                return Decision::Keep(None);
            };
            let mut c = Counter::decode(bytes);
            let duration = charge.duration.as_deref();
            if duration.is_some() && c.reset_at != 0 && now >= c.reset_at {
                c.roll(period_end(duration, charge.aligned, now, cal));
            }
            c.reserved = c.reserved.saturating_sub(charge.reserved).max(0);
            c.spend = c.spend.saturating_add(actual_nanos.unwrap_or(0).max(0));
            write_if_changed(v, &c, Some(c.spend))
        });
        if i == 0 && ticket.key_spend_nanos.is_some() {
            key_spend = result.ok().flatten();
        }
    }
    key_spend
}

/// Applies a lease answer to the entries of `asked` (scope names) it names, for the lease call
/// numbered `seq` sent at `sent_at` (µs): a grant counts only for an entry in the same period.
/// Budgets (and rate slices, [`crate::rate_leases::apply_grant`]) take answers in seq order: one to a later call than the entry's replaces its grant
/// and deadline, a shrink included (the sidecar keeps counting the larger grant until a report
/// shows this one applied); one to an earlier call (or the same) is out of date and changes
/// nothing. A grant below the entry's use is taken as it is: the slice admits nothing more
/// (`spend + reserved < grant`), and what is in flight settles as usual. The deadline is
/// `sent_at + ttl − 500 ms`, before the sidecar's own expiry. Returns the scopes whose grant
/// was applied (or was already, by a later answer), with the fleet's settled spend.
pub fn apply_lease_answer<S: VersionedStore>(
    store: &S,
    answer: &LeaseAnswer,
    asked: &[String],
    seq: u64,
    sent_at: i64,
    now: i64,
) -> Vec<(String, i64)> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let mut applied: Vec<(String, i64)> = Vec::new();
    for (i, grant) in answer.items.iter().enumerate() {
        if !asked.contains(&grant.scope) {
            continue;
        }
        let ttl = i64::try_from(grant.ttl_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let deadline = sent_at
            .saturating_add(ttl)
            .saturating_sub(LEASE_MARGIN_MICROS);
        // A later grant of a scope already answered is its next period's, issued ahead.
        if answer.items[..i].iter().any(|g| g.scope == grant.scope) {
            if crate::leases::is_rate_scope(&grant.scope) {
                crate::rate_leases::apply_next_grant(store, grant, seq, deadline, now);
            } else {
                apply_next_grant(store, grant, seq, deadline, now);
            }
            continue;
        }
        if applied.iter().any(|(s, _)| *s == grant.scope) {
            continue;
        }
        if crate::leases::is_rate_scope(&grant.scope) {
            if crate::rate_leases::apply_grant(store, grant, seq, deadline, now) {
                applied.push((grant.scope.clone(), grant.spend));
            }
            continue;
        }
        let key = format!("{PREFIX}{}", grant.scope);
        let result = update(store, &key, now, |v| {
            let Some(bytes) = v else {
                return Decision::Keep(false);
            };
            let mut c = Counter::decode(bytes);
            if c.reset_at != grant.period {
                // A key×model window is the sidecar's (opened by the first lease call after
                // the last one ended), not this Envoy's first charge: adopt it while it runs.
                let adoptable = grant.scope.starts_with("key_model:") && grant.period > now;
                if !adoptable {
                    return Decision::Keep(false);
                }
                c.reset_at = grant.period;
                c.grant = 0;
                c.deadline = 0;
                c.seq = 0;
            }
            // A later call's answer stands as it is, live slice or expired; an earlier call's
            // is older than what the entry holds (its deadline too: calls are numbered as
            // they are sent).
            if seq > c.seq {
                c.grant = grant.grant;
                c.deadline = deadline;
                c.seq = seq;
            }
            if grant.spend > c.global {
                c.global = grant.spend;
                c.global_at = c.spend;
            }
            c.waiting = 0;
            write_if_changed(v, &c, true)
        });
        if result == Ok(true) {
            applied.push((grant.scope.clone(), grant.spend));
        }
    }
    applied
}

/// A slice's deadline is this much before the sidecar's expiry (FLEET.md §4.5).
const LEASE_MARGIN_MICROS: i64 = 500_000;

/// Keeps a budget's next-period grant (issued ahead) in its entry, for the period roll to
/// install: only one for a later period than the entry's; for the same period as the one
/// held, only a later call's answer (in seq order, as [`apply_lease_answer`]).
fn apply_next_grant<S: VersionedStore>(
    store: &S,
    grant: &LeaseGrant,
    seq: i64,
    deadline: i64,
    now: i64,
) {
    let key = format!("{PREFIX}{}", grant.scope);
    let _ = update(store, &key, now, |v| {
        let Some(bytes) = v else {
            return Decision::Keep(());
        };
        let mut c = Counter::decode(bytes);
        if c.reset_at == 0 || grant.period <= c.reset_at || now >= grant.period {
            return Decision::Keep(());
        }
        if c.next_period == grant.period && seq <= c.next_seq {
            return Decision::Keep(());
        }
        c.next_period = grant.period;
        c.next_grant = grant.grant;
        c.next_deadline = deadline;
        c.next_seq = seq;
        write_if_changed(v, &c, ())
    });
}

/// The root tick's renewal: the queued items (JSON [`LeaseItem`]s, [`Admission::Admitted`]'s
/// `renew`) de-duplicated by scope (largest `want`), with `period`, `used` and `held` read
/// from their entries now, sorted by scope. Entries gone or past their period are left out
/// (the next admission rolls the period and borrows).
pub fn renewal_items<S: VersionedStore>(store: &S, queued: &[Vec<u8>], now: i64) -> Vec<LeaseItem> {
    let mut by_scope: std::collections::BTreeMap<String, LeaseItem> = Default::default();
    for raw in queued {
        let Ok(item) = serde_json::from_slice::<LeaseItem>(raw) else {
            continue;
        };
        let ids: Vec<&str> = item.ids.iter().map(String::as_str).collect();
        if scope_name(&item.level, &ids) != item.scope {
            continue;
        }
        match by_scope.get_mut(&item.scope) {
            Some(known) => known.want = known.want.max(item.want),
            None => {
                by_scope.insert(item.scope.clone(), item);
            }
        }
    }
    by_scope
        .into_values()
        .filter_map(|mut item| {
            if crate::leases::is_rate_level(&item.level) {
                return crate::rate_leases::refresh_item(store, item, now);
            }
            let (bytes, _) = store.get(&format!("{PREFIX}{}", item.scope))?;
            let c = Counter::decode(&bytes);
            if c.reset_at != 0 && now >= c.reset_at {
                return None;
            }
            item.period = c.reset_at;
            item.used = c.used();
            item.held = c.grant;
            item.held_seq = u64::try_from(c.seq).unwrap_or(0);
            item.returning = false;
            Some(item)
        })
        .collect()
}

/// This Envoy process's id ([`crate::contract::ENVOY_ID_KEY`]): the one in shared data, else
/// `fresh` (hex) written there (created under the store's creation lease, so two VMs
/// configuring at once agree on one).
pub fn ensure_envoy_id<S: VersionedStore>(store: &S, fresh: &[u8; 16], now: i64) -> Option<String> {
    update(store, crate::contract::ENVOY_ID_KEY, now, |v| {
        match v
            .and_then(|b| std::str::from_utf8(b).ok())
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            Some(id) => Decision::Keep(id.to_string()),
            None => {
                let id = hex::encode(fresh);
                Decision::Write(id.clone().into_bytes(), id)
            }
        }
    })
    .ok()
}

/// The last lease report's sequence number numbered so far (0: none).
pub fn last_lease_seq<S: VersionedStore>(store: &S) -> i64 {
    store
        .get(crate::contract::LEASE_SEQ_KEY)
        .and_then(|(v, _)| std::str::from_utf8(&v).ok()?.parse::<i64>().ok())
        .unwrap_or(0)
}

/// The next lease report's sequence number (CAS increment of `LEASE_SEQ_KEY`).
pub fn next_lease_seq<S: VersionedStore>(store: &S, now: i64) -> Option<u64> {
    update(store, crate::contract::LEASE_SEQ_KEY, now, |v| {
        let seq = v
            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_add(1);
        Decision::Write(seq.to_string().into_bytes(), seq)
    })
    .ok()
}

/// Writes `next` only if it differs from what is stored (`stored` is `None` when the entry does
/// not exist yet: then it is always written). A write that changes nothing is a wasted host call.
fn write_if_changed<T>(stored: Option<&[u8]>, next: &Counter, result: T) -> Decision<T> {
    let encoded = next.encode();
    if stored == Some(encoded.as_slice()) {
        Decision::Keep(result)
    } else {
        Decision::Write(encoded, result)
    }
}

/// What the root tick sees of a leased scope's entry ([`crate::lease_tick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickView {
    /// Changes whenever the entry is used (period, use, given back).
    pub mark: [i64; 3],
    /// Requests hold something of it right now (reservations, slots).
    pub in_use: bool,
    /// This Envoy holds lent room it has not used (that the sidecar still counts).
    pub holds: bool,
    /// A report now would get the next period's slice ahead.
    pub next_due: bool,
}

/// A budget's entry as the root tick sees it (`scope` as in [`LeaseItem::scope`]).
pub fn tick_view<S: VersionedStore>(store: &S, scope: &str, now: i64) -> Option<TickView> {
    let (bytes, _) = store.get(&format!("{PREFIX}{scope}"))?;
    let c = Counter::decode(&bytes);
    Some(TickView {
        mark: [c.reset_at, c.used(), 0],
        in_use: c.reserved > 0,
        holds: now < c.deadline && c.grant > c.used(),
        next_due: c.next_due(now),
    })
}

/// Gives an idle budget's slice back: the entry's grant drops to its use and the slice ends
/// (the next request borrows again), and the report item says `returning` (the sidecar lowers
/// its grant to the same). The entry then ignores the answers to every lease call sent so far
/// (its seq becomes the last one numbered, reported as `held_seq`), so none of them raises the
/// grant again and the sidecar may take the return as it is. `None` when it holds nothing
/// unused any more.
pub fn give_back_item<S: VersionedStore>(
    store: &S,
    item: &LeaseItem,
    now: i64,
) -> Option<LeaseItem> {
    let last_seq = last_lease_seq(store);
    update(store, &format!("{PREFIX}{}", item.scope), now, |v| {
        let Some(bytes) = v else {
            return Decision::Keep(None);
        };
        let mut c = Counter::decode(bytes);
        if now >= c.deadline || c.grant <= c.used() {
            return Decision::Keep(None);
        }
        c.grant = c.used();
        c.deadline = 0;
        c.next_period = 0;
        c.next_grant = 0;
        c.next_deadline = 0;
        c.seq = c.seq.max(last_seq);
        c.next_seq = 0;
        let returned = LeaseItem {
            period: c.reset_at,
            used: c.used(),
            held: c.grant,
            held_seq: u64::try_from(c.seq).unwrap_or(0),
            want: 0,
            returning: true,
            ..item.clone()
        };
        write_if_changed(v, &c, Some(returned))
    })
    .ok()
    .flatten()
}

/// Reads a budget's counter without changing it (for headers and tests).
pub fn read<S: VersionedStore>(store: &S, scope: &Scope) -> Option<Counter> {
    store
        .get(&storage_key(scope))
        .map(|(v, _)| Counter::decode(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_store::MemoryStore;

    const CAL: Calendar<'static> = Calendar {
        zone: &UTC,
        reset_time_of_day_seconds: 0,
    };

    fn key_scope(max: Option<f64>, duration: Option<&str>) -> Scope {
        Scope {
            level: Level::Key {
                alias: "key".into(),
                key_name: "sk-...abcd".into(),
            },
            id: "tok".into(),
            max_budget_usd: max,
            duration: duration.map(str::to_string),
            seed_spend_nanos: 0,
            seed_reset_at_micros: None,
        }
    }

    const CENT: i64 = 10_000_000;

    /// The sidecar names lease rows with [`scope_name`] from a level and its ids: the same
    /// names as the filter's entries.
    #[test]
    fn scope_names_are_the_entry_names() {
        let scope = |level: Level, id: &str| Scope {
            level,
            id: id.into(),
            ..key_scope(None, None)
        };
        let cases = [
            (key_scope(None, None), "key", vec!["tok"]),
            (
                scope(
                    Level::KeyModel {
                        token: "tok".into(),
                        alias: "a".into(),
                        model: "gpt-4o".into(),
                    },
                    "tok:gpt-*",
                ),
                "key_model",
                vec!["tok", "gpt-*"],
            ),
            (scope(Level::User, "u1"), "user", vec!["u1"]),
            (scope(Level::Team, "t1"), "team", vec!["t1"]),
            (
                scope(
                    Level::TeamMember {
                        user: "u1".into(),
                        team: "t1".into(),
                    },
                    "t1:u1",
                ),
                "team_member",
                vec!["t1", "u1"],
            ),
            (scope(Level::EndUser, "c:1"), "end_user", vec!["c:1"]),
            (scope(Level::Proxy, PROXY_BUDGET_ID), "proxy", vec![]),
        ];
        for (scope, level, ids) in cases {
            assert_eq!(
                storage_key(&scope),
                format!("{PREFIX}{}", scope_name(level, &ids)),
                "{level}"
            );
        }
    }

    /// Found by fuzzing (fuzz/fuzz_targets/counters.rs): a stored counter with a huge negative
    /// spend made `max - spend - reserved` overflow; wrapped (release), the reservation clamp got
    /// `min > max` and panicked.
    #[test]
    fn stored_counter_extremes_do_not_overflow() {
        let s = MemoryStore::default();
        let scopes = [key_scope(Some(1.0), None)];
        let key = storage_key(&scopes[0]);
        let stored = |spend, reserved| {
            Counter {
                spend,
                reserved,
                ..Counter::default()
            }
            .encode()
        };
        s.set(&key, &stored(i64::MIN, 0), None).unwrap();
        let t = admit(&s, &scopes, CENT, 1, CAL, 422).unwrap();
        assert_eq!(t.charges[0].reserved, CENT);
        s.set(&key, &stored(0, i64::MAX - 1), None).unwrap();
        assert_eq!(
            admit(&s, &scopes, CENT, 2, CAL, 422).unwrap_err().status,
            422
        );
    }

    /// Counts writes that reach the store.
    #[derive(Default)]
    struct CountingWrites {
        inner: MemoryStore,
        sets: std::cell::Cell<u32>,
    }

    impl VersionedStore for CountingWrites {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn unchanged_counters_are_not_written_again() {
        let s = CountingWrites::default();
        let tracked = key_scope(None, Some("30d"));
        let t = admit(&s, std::slice::from_ref(&tracked), CENT, 1, CAL, 422).unwrap();
        settle(&s, &t, Some(CENT), 2, CAL);
        s.sets.set(0);
        // no limit: admission only reads; a free call settles without a write
        let t = admit(&s, std::slice::from_ref(&tracked), CENT, 3, CAL, 422).unwrap();
        assert_eq!(t.charges[0].reserved, 0);
        settle(&s, &t, Some(0), 4, CAL);
        assert_eq!(s.sets.get(), 0);
        // a charge is written
        settle(&s, &t, Some(CENT), 5, CAL);
        assert_eq!(s.sets.get(), 1);
        assert_eq!(read(&s, &tracked).unwrap().spend, 2 * CENT);
        // a limited budget (the same entry) writes its reservation and its settlement
        let limited = [key_scope(Some(1.0), None)];
        let t = admit(&s, &limited, CENT, 6, CAL, 422).unwrap();
        settle(&s, &t, Some(CENT), 7, CAL);
        assert_eq!(s.sets.get(), 1 + 2, "its reservation and its settlement");
    }

    #[test]
    fn blocks_at_spend_equal_to_budget() {
        let s = MemoryStore::default();
        let scopes = [key_scope(Some(0.02), None)];
        let t = admit(&s, &scopes, CENT, 1, CAL, 422).unwrap();
        settle(&s, &t, Some(CENT), 2, CAL);
        let t = admit(&s, &scopes, CENT, 3, CAL, 422).unwrap();
        settle(&s, &t, Some(CENT), 4, CAL);
        let e = admit(&s, &scopes, CENT, 5, CAL, 422).unwrap_err();
        assert_eq!((e.status, e.error_type.as_str()), (422, "budget_exceeded"));
        assert_eq!(
            e.message,
            "Budget has been exceeded! Key=key (sk-...abcd) Current cost: 0.02, Max budget: 0.02"
        );
    }

    #[test]
    fn zero_budget_blocks_first_request() {
        let s = MemoryStore::default();
        let proxy = Scope {
            level: Level::Proxy,
            id: "proxy".into(),
            max_budget_usd: Some(0.0),
            duration: None,
            seed_spend_nanos: 0,
            seed_reset_at_micros: None,
        };
        let e = admit(&s, &[proxy], 0, 1, CAL, 429).unwrap_err();
        assert_eq!(e.status, 429, "configurable status");
        assert_eq!(
            e.message,
            "Budget has been exceeded! Current cost: 0.0, Max budget: 0.0"
        );
    }

    #[test]
    fn organization_budget_is_its_own_entry_with_litellms_message() {
        let s = MemoryStore::default();
        let org = Scope {
            level: Level::Organization,
            id: "org-1".into(),
            max_budget_usd: Some(0.01),
            duration: None,
            seed_spend_nanos: CENT,
            seed_reset_at_micros: None,
        };
        assert_eq!(storage_key(&org), format!("{PREFIX}organization:org-1"));
        let e = admit(&s, &[org], 0, 1, CAL, 422).unwrap_err();
        assert_eq!((e.status, e.error_type.as_str()), (422, "budget_exceeded"));
        assert_eq!(
            e.message,
            "Budget has been exceeded! Organization=org-1 Current cost: 0.01, Max budget: 0.01"
        );
    }

    #[test]
    fn reservations_stop_concurrent_overspend() {
        let s = MemoryStore::default();
        let scopes = [key_scope(Some(0.10), None)];
        let admitted: Vec<_> = (0..50)
            .filter_map(|i| admit(&s, &scopes, CENT, i, CAL, 422).ok())
            .collect();
        assert_eq!(
            admitted.len(),
            10,
            "budget fits exactly 10 in-flight requests"
        );
        for t in &admitted {
            settle(&s, t, Some(CENT), 100, CAL);
        }
        let c = read(&s, &scopes[0]).unwrap();
        assert_eq!((c.spend, c.reserved), (10 * CENT, 0));
    }

    #[test]
    fn reservation_is_capped_at_what_is_left() {
        let s = MemoryStore::default();
        let scopes = [key_scope(Some(0.10), None)];
        let t = admit(&s, &scopes, 100 * CENT, 1, CAL, 422).unwrap();
        assert_eq!(t.charges[0].reserved, 10 * CENT);
        assert!(
            admit(&s, &scopes, 1, 2, CAL, 422).is_err(),
            "whole budget is reserved"
        );
        settle(&s, &t, Some(CENT), 3, CAL);
        assert!(admit(&s, &scopes, 1, 4, CAL, 422).is_ok());
    }

    #[test]
    fn later_refusal_releases_earlier_reservations() {
        let s = MemoryStore::default();
        let user = Scope {
            level: Level::User,
            id: "u1".into(),
            max_budget_usd: Some(0.0),
            duration: None,
            seed_spend_nanos: 0,
            seed_reset_at_micros: None,
        };
        let scopes = [key_scope(Some(1.0), None), user];
        let e = admit(&s, &scopes, CENT, 1, CAL, 422).unwrap_err();
        assert_eq!(
            e.message,
            "ExceededBudget: User=u1 over budget. Spend=0.0, Budget=0.0"
        );
        assert_eq!(read(&s, &scopes[0]).unwrap().reserved, 0);
    }

    #[test]
    fn aligned_period_resets_exactly() {
        let s = MemoryStore::default();
        let scopes = [key_scope(Some(0.01), Some("10s"))];
        let t0 = 1_700_000_003_000_000; // 3 s past a 10 s boundary
        let t = admit(&s, &scopes, CENT, t0, CAL, 422).unwrap();
        settle(&s, &t, Some(CENT), t0 + 1, CAL);
        assert_eq!(
            read(&s, &scopes[0]).unwrap().reset_at,
            1_700_000_010_000_000
        );
        assert!(admit(&s, &scopes, CENT, 1_700_000_009_999_999, CAL, 422).is_err());
        let t = admit(&s, &scopes, CENT, 1_700_000_010_000_000, CAL, 422).unwrap();
        assert_eq!(t.key_spend_nanos, Some(0));
    }

    #[test]
    fn seed_from_sidecar_and_expired_seed_resets() {
        let s = MemoryStore::default();
        let mut scope = key_scope(Some(1.0), Some("1d"));
        scope.seed_spend_nanos = 5 * CENT;
        scope.seed_reset_at_micros = Some(10);
        // the sidecar's period ended before this first request: it starts at 0
        let t = admit(&s, &[scope.clone()], 0, 20, CAL, 422).unwrap();
        assert_eq!(t.key_spend_nanos, Some(0));
        let s2 = MemoryStore::default();
        scope.seed_reset_at_micros = Some(1_000);
        let t = admit(&s2, &[scope], 0, 20, CAL, 422).unwrap();
        assert_eq!(t.key_spend_nanos, Some(5 * CENT));
    }

    #[test]
    fn model_window_starts_at_first_charge() {
        let s = MemoryStore::default();
        let scope = Scope {
            level: Level::KeyModel {
                token: "tok".into(),
                alias: "None".into(),
                model: "m".into(),
            },
            id: "tok:m".into(),
            max_budget_usd: Some(0.01),
            duration: Some("30s".into()),
            seed_spend_nanos: 0,
            seed_reset_at_micros: None,
        };
        let t = admit(&s, std::slice::from_ref(&scope), CENT, 5_000_000, CAL, 422).unwrap();
        settle(&s, &t, Some(CENT), 5_000_001, CAL);
        assert_eq!(read(&s, &scope).unwrap().reset_at, 35_000_000);
        let e = admit(&s, std::slice::from_ref(&scope), CENT, 6_000_000, CAL, 422).unwrap_err();
        assert_eq!(
            e.message,
            "LiteLLM Virtual Key: tok, key_alias: None, exceeded budget for model=m"
        );
        assert!(admit(&s, &[scope], CENT, 35_000_000, CAL, 422).is_ok());
    }

    #[test]
    fn failed_call_releases_without_charging() {
        let s = MemoryStore::default();
        let scopes = [key_scope(Some(1.0), None)];
        let t = admit(&s, &scopes, CENT, 1, CAL, 422).unwrap();
        settle(&s, &t, None, 2, CAL);
        assert_eq!(read(&s, &scopes[0]).unwrap(), Counter::default());
    }

    mod fleet {
        use super::*;

        const TTL: i64 = 10_000_000;
        const NOW: i64 = 1_700_000_003_000_000;

        fn check(after_borrow: Option<&Borrowed>) -> Option<FleetCheck<'_>> {
            Some(FleetCheck {
                ttl_micros: TTL,
                after_borrow,
            })
        }

        fn admitted(a: Admission) -> (BudgetTicket, Vec<LeaseItem>) {
            match a {
                Admission::Admitted { ticket, renew } => (ticket, renew),
                Admission::Borrow(items) => panic!("borrow {items:?}"),
            }
        }

        fn borrowed(a: Admission) -> Vec<LeaseItem> {
            match a {
                Admission::Borrow(items) => items,
                other => panic!("{other:?}"),
            }
        }

        fn grant(scope: &Scope, period: i64, amount: i64, spend: i64) -> LeaseGrant {
            LeaseGrant {
                scope: lease_item(scope, &Counter::default(), 0).scope,
                period,
                grant: amount,
                ttl_ms: 10_000,
                spend,
                max_nanos: None,
            }
        }

        fn apply(s: &MemoryStore, grants: Vec<LeaseGrant>, sent_at: i64) -> Vec<(String, i64)> {
            let asked: Vec<String> = grants.iter().map(|g| g.scope.clone()).collect();
            let answer = LeaseAnswer { items: grants };
            apply_lease_answer(s, &answer, &asked, sent_at as u64, sent_at, sent_at + 1)
        }

        #[test]
        fn entry_round_trips_and_leaves_out_the_lease_fields_outside_fleet_mode() {
            let c = Counter {
                reset_at: 1,
                spend: 2,
                reserved: 3,
                grant: 4,
                deadline: 5,
                global: 6,
                global_at: 7,
                asked: 8,
                asked_used: 9,
                peak: 10,
                waiting: 11,
                next_period: 12,
                next_grant: 13,
                next_deadline: 14,
                seq: 15,
                next_seq: 16,
            };
            let fields: Vec<u8> = (1..=16i64).flat_map(i64::to_le_bytes).collect();
            assert_eq!(c.encode(), fields);
            assert_eq!(Counter::decode(&c.encode()), c);
            // No lease: 3 fields, as outside fleet mode.
            let off = Counter {
                reset_at: 1,
                spend: 2,
                reserved: 3,
                ..Counter::default()
            };
            assert_eq!(off.encode(), fields[..24]);
            assert_eq!(Counter::decode(&fields[..24]), off);
            assert_eq!(Counter::decode(b"garbage"), Counter::default());
        }

        #[test]
        fn scope_names_are_the_entry_names() {
            let mk = |level: Level, id: &str| Scope {
                level,
                id: id.into(),
                max_budget_usd: Some(1.0),
                duration: None,
                seed_spend_nanos: 0,
                seed_reset_at_micros: None,
            };
            let scopes = [
                key_scope(Some(1.0), None),
                mk(
                    Level::KeyModel {
                        token: "tok".into(),
                        alias: "a".into(),
                        model: "gpt-4o".into(),
                    },
                    "tok:openai/*",
                ),
                mk(Level::User, "u:1"),
                mk(Level::Team, "t"),
                mk(
                    Level::TeamMember {
                        user: "u".into(),
                        team: "t".into(),
                    },
                    "t:u",
                ),
                mk(Level::EndUser, "c"),
                mk(Level::Proxy, "litellm-proxy-budget"),
            ];
            for scope in &scopes {
                let ids = lease_ids(scope);
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let name = scope_name(scope.level.tag(), &ids);
                assert_eq!(format!("{PREFIX}{name}"), storage_key(scope), "{scope:?}");
            }
            assert_eq!(lease_ids(&scopes[1]), ["tok", "openai/*"]);
            assert_eq!(lease_ids(&scopes[4]), ["t", "u"]);
            assert!(lease_ids(&scopes[6]).is_empty());
        }

        #[test]
        fn admits_only_inside_a_live_slice_and_reserves_the_full_estimate() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            // Cold: no slice, the entry is created (period fixed), nothing reserved.
            let items =
                borrowed(admit_in(&s, &scopes, 3 * CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(items.len(), 1);
            assert_eq!(
                (
                    items[0].scope.as_str(),
                    items[0].level.as_str(),
                    items[0].want
                ),
                ("key:tok", "key", 3 * CENT)
            );
            assert_eq!(read(&s, &scopes[0]).unwrap().reserved, 0);
            // A grant of 5 cents: admitted while used < grant, each reserving 3 cents in full.
            assert_eq!(
                apply(&s, vec![grant(&scopes[0], 0, 5 * CENT, 0)], NOW).len(),
                1
            );
            let (t1, _) =
                admitted(admit_in(&s, &scopes, 3 * CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(t1.charges[0].reserved, 3 * CENT);
            let (t2, _) =
                admitted(admit_in(&s, &scopes, 3 * CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(
                t2.charges[0].reserved,
                3 * CENT,
                "not capped at what is left"
            );
            assert_eq!(read(&s, &scopes[0]).unwrap().used(), 6 * CENT);
            // used >= grant: exhausted, borrows again.
            borrowed(admit_in(&s, &scopes, 3 * CENT, NOW, CAL, 422, check(None)).unwrap());
            settle(&s, &t1, Some(CENT), NOW, CAL);
            settle(&s, &t2, Some(CENT), NOW, CAL);
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!((c.spend, c.reserved, c.grant), (2 * CENT, 0, 5 * CENT));
            // Past the deadline (sent + ttl − 500 ms): borrows.
            let deadline = NOW + TTL - 500_000;
            assert_eq!(c.deadline, deadline);
            admitted(admit_in(&s, &scopes, CENT, deadline - 1, CAL, 422, check(None)).unwrap());
            borrowed(admit_in(&s, &scopes, CENT, deadline, CAL, 422, check(None)).unwrap());
        }

        #[test]
        fn after_a_borrow_refuses_or_follows_the_policy() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            // Answered with nothing: budget exceeded, with the fleet's spend in the message.
            let answered = apply(&s, vec![grant(&scopes[0], 0, 0, 100 * CENT)], NOW);
            let asked = vec![lease_item(&scopes[0], &Counter::default(), 0).scope];
            let b = Borrowed {
                answered,
                policy: NoLeasePolicy::Deny,
                asked: asked.clone(),
            };
            let e = admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(Some(&b))).unwrap_err();
            assert_eq!(e.status, 422);
            assert!(
                e.message.contains("Current cost: 1.0, Max budget: 1.0"),
                "{}",
                e.message
            );
            // Unanswered: deny is 503, local is today's rule against the whole budget.
            let b = Borrowed {
                asked: asked.clone(),
                ..Borrowed::default()
            };
            let e = admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(Some(&b))).unwrap_err();
            assert_eq!(e.status, 503);
            assert!(e.message.contains("budget lease"));
            // Not asked in this borrow (its slice ran out meanwhile): another round.
            let fresh = MemoryStore::default();
            let not_asked = Borrowed::default();
            borrowed(
                admit_in(
                    &fresh,
                    &scopes,
                    CENT,
                    NOW,
                    CAL,
                    422,
                    check(Some(&not_asked)),
                )
                .unwrap(),
            );
            let b = Borrowed {
                answered: Vec::new(),
                policy: NoLeasePolicy::Local,
                asked,
            };
            let (t, _) = admitted(
                admit_in(&s, &scopes, 200 * CENT, NOW, CAL, 422, check(Some(&b))).unwrap(),
            );
            assert_eq!(
                t.charges[0].reserved,
                100 * CENT,
                "capped, as without fleet mode"
            );
        }

        /// Concurrent first requests each borrow; the answers are taken by `max`, so each
        /// borrow asks for every request waiting, and the largest answer admits them all
        /// (sized for one request each, all but one would be refused: a false 422).
        #[test]
        fn concurrent_borrows_ask_for_every_waiting_request() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            let wants: Vec<i64> = (0..3)
                .map(|_| {
                    borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap())[0]
                        .want
                })
                .collect();
            assert_eq!(wants, [CENT, 2 * CENT, 3 * CENT]);
            apply(&s, vec![grant(&scopes[0], 0, 3 * CENT, 0)], NOW + 1);
            assert_eq!(read(&s, &scopes[0]).unwrap().waiting, 0);
            for _ in 0..3 {
                admitted(admit_in(&s, &scopes, CENT, NOW + 2, CAL, 422, check(None)).unwrap());
            }
        }

        #[test]
        fn a_used_up_budget_is_refused_without_a_hop_until_the_deadline() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            apply(&s, vec![grant(&scopes[0], 0, 0, 100 * CENT)], NOW);
            let e = admit_in(&s, &scopes, CENT, NOW + 1, CAL, 422, check(None)).unwrap_err();
            assert_eq!(e.status, 422);
            borrowed(admit_in(&s, &scopes, CENT, NOW + TTL, CAL, 422, check(None)).unwrap());
        }

        #[test]
        fn grants_apply_in_seq_order_and_only_in_their_period() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), Some("10s"))];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            let period = read(&s, &scopes[0]).unwrap().reset_at;
            assert_eq!(period, 1_700_000_010_000_000);
            // The later-sent answer first, then an older one: the older changes nothing.
            apply(&s, vec![grant(&scopes[0], period, 8 * CENT, 0)], NOW + 2);
            apply(&s, vec![grant(&scopes[0], period, 5 * CENT, 0)], NOW + 1);
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!((c.grant, c.deadline), (8 * CENT, NOW + 2 + TTL - 500_000));
            // Another period's grant is ignored.
            assert!(apply(
                &s,
                vec![grant(&scopes[0], period + 10_000_000, 50 * CENT, 0)],
                NOW + 3
            )
            .is_empty());
            assert_eq!(read(&s, &scopes[0]).unwrap().grant, 8 * CENT);
            // A new period starts without a lease.
            let items =
                borrowed(admit_in(&s, &scopes, CENT, period, CAL, 422, check(None)).unwrap());
            assert_eq!((items[0].period, items[0].held), (period + 10_000_000, 0));
            // The entry moved to the new period with the borrow, so its answer applies (it
            // was ignored while the entry stayed in the old one: a 503 after every reset).
            assert_eq!(read(&s, &scopes[0]).unwrap().reset_at, period + 10_000_000);
            let next = grant(&scopes[0], period + 10_000_000, 5 * CENT, 0);
            assert_eq!(apply(&s, vec![next], period + 1).len(), 1);
            admitted(admit_in(&s, &scopes, CENT, period + 2, CAL, 422, check(None)).unwrap());
        }

        /// Answers in seq order (FLEET.md §4.10): a later call's answer replaces the grant, a
        /// shrink too, even below the use (the slice then admits nothing more); an earlier
        /// call's answer arriving late, or the same answer twice, changes nothing; the entry
        /// reports the seq it applied as `held_seq`.
        #[test]
        fn a_later_answer_replaces_the_grant_and_an_earlier_one_is_ignored() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            let asked = vec![grant(&scopes[0], 0, 0, 0).scope];
            let answer = |amount: i64| LeaseAnswer {
                items: vec![grant(&scopes[0], 0, amount, 0)],
            };
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            apply_lease_answer(&s, &answer(8 * CENT), &asked, 5, NOW, NOW + 1);
            admitted(admit_in(&s, &scopes, 3 * CENT, NOW + 2, CAL, 422, check(None)).unwrap());
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!((c.grant, c.seq, c.used()), (8 * CENT, 5, 3 * CENT));
            // A shrink from a later call (an admin decrease): applied at once, below the use.
            let shrunk = apply_lease_answer(&s, &answer(2 * CENT), &asked, 7, NOW + 3, NOW + 4);
            assert_eq!(shrunk.len(), 1);
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!(
                (c.grant, c.seq, c.deadline),
                (2 * CENT, 7, NOW + 3 + TTL - 500_000)
            );
            // The slice admits nothing more: the request borrows.
            borrowed(admit_in(&s, &scopes, CENT, NOW + 5, CAL, 422, check(None)).unwrap());
            // The answer to call 6 (sent before 7) arrives late with more: ignored.
            apply_lease_answer(&s, &answer(9 * CENT), &asked, 6, NOW + 2, NOW + 6);
            assert_eq!(read(&s, &scopes[0]).unwrap().grant, 2 * CENT);
            // The same answer again: nothing changes.
            let before = read(&s, &scopes[0]).unwrap();
            apply_lease_answer(&s, &answer(9 * CENT), &asked, 7, NOW + 3, NOW + 7);
            assert_eq!(read(&s, &scopes[0]).unwrap(), before);
            // Its next report says which answer it holds.
            let queued = serde_json::to_vec(&lease_item(&scopes[0], &before, 0)).unwrap();
            let items = renewal_items(&s, &[queued], NOW + 8);
            assert_eq!((items[0].held, items[0].held_seq), (2 * CENT, 7));
        }

        /// A next period's slice issued ahead is kept in seq order as well, and the period
        /// roll installs it with its seq.
        #[test]
        fn a_next_period_grant_applies_in_seq_order() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), Some("10s"))];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            let period = read(&s, &scopes[0]).unwrap().reset_at;
            let next = period + 10_000_000;
            let asked = vec![grant(&scopes[0], 0, 0, 0).scope];
            let answer = |ahead: i64| LeaseAnswer {
                items: vec![
                    grant(&scopes[0], period, 5 * CENT, 0),
                    grant(&scopes[0], next, ahead, 0),
                ],
            };
            let sent = period - 2_000_000;
            apply_lease_answer(&s, &answer(4 * CENT), &asked, 3, sent, sent + 1);
            apply_lease_answer(&s, &answer(6 * CENT), &asked, 2, sent, sent + 2);
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!(
                (c.next_grant, c.next_seq),
                (4 * CENT, 3),
                "the older is ignored"
            );
            apply_lease_answer(&s, &answer(CENT), &asked, 4, sent, sent + 3);
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!(
                (c.next_grant, c.next_seq),
                (CENT, 4),
                "a later shrink applies"
            );
            admitted(admit_in(&s, &scopes, CENT / 2, period + 1, CAL, 422, check(None)).unwrap());
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!((c.reset_at, c.grant, c.seq), (next, CENT, 4));
        }

        /// A slice given back ignores the answers to every call sent before it (one of them
        /// could raise it again), and says so in its `held_seq`.
        #[test]
        fn a_given_back_slice_ignores_the_answers_already_on_their_way() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            let asked = vec![grant(&scopes[0], 0, 0, 0).scope];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            let seq = next_lease_seq(&s, NOW).unwrap();
            let answer = LeaseAnswer {
                items: vec![grant(&scopes[0], 0, 8 * CENT, 0)],
            };
            apply_lease_answer(&s, &answer, &asked, seq, NOW, NOW + 1);
            // Two more calls sent (their answers still on the way), then the slice goes back.
            next_lease_seq(&s, NOW + 2).unwrap();
            let last = next_lease_seq(&s, NOW + 2).unwrap();
            let c = read(&s, &scopes[0]).unwrap();
            let item = lease_item(&scopes[0], &c, 0);
            let back = give_back_item(&s, &item, NOW + 3).unwrap();
            assert!(back.returning);
            assert_eq!((back.held, back.held_seq), (0, last));
            apply_lease_answer(&s, &answer, &asked, last, NOW + 2, NOW + 4);
            assert_eq!(read(&s, &scopes[0]).unwrap().grant, 0);
        }

        #[test]
        fn an_expired_slice_takes_the_answer_as_it_is() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            apply(&s, vec![grant(&scopes[0], 0, 8 * CENT, 0)], NOW);
            // Past its deadline the sidecar no longer counts the old grant: a smaller new one
            // replaces it (a `max` would keep lending what nobody counts any more).
            let later = NOW + TTL;
            let answer = LeaseAnswer {
                items: vec![grant(&scopes[0], 0, 3 * CENT, 0)],
            };
            let asked = vec![answer.items[0].scope.clone()];
            apply_lease_answer(&s, &answer, &asked, later as u64, later, later + 1);
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!((c.grant, c.deadline), (3 * CENT, later + TTL - 500_000));
        }

        #[test]
        fn a_key_model_entry_adopts_the_sidecars_window() {
            let s = MemoryStore::default();
            let scope = Scope {
                level: Level::KeyModel {
                    token: "tok".into(),
                    alias: "key".into(),
                    model: "gpt-4o".into(),
                },
                id: "tok:gpt-4o".into(),
                max_budget_usd: Some(1.0),
                duration: Some("1d".into()),
                seed_spend_nanos: 0,
                seed_reset_at_micros: None,
            };
            let scopes = [scope];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            let own = read(&s, &scopes[0]).unwrap().reset_at;
            let sidecars = own - 5_000_000;
            assert_eq!(
                apply(&s, vec![grant(&scopes[0], sidecars, 4 * CENT, 0)], NOW).len(),
                1
            );
            let c = read(&s, &scopes[0]).unwrap();
            assert_eq!((c.reset_at, c.grant), (sidecars, 4 * CENT));
            // A window that has already ended is not adopted.
            assert!(apply(&s, vec![grant(&scopes[0], NOW - 1, 9 * CENT, 0)], NOW).is_empty());
            // Other levels never move their period.
            let key = [key_scope(Some(1.0), Some("10s"))];
            borrowed(admit_in(&s, &key, CENT, NOW, CAL, 422, check(None)).unwrap());
            let period = read(&s, &key[0]).unwrap().reset_at;
            assert!(apply(&s, vec![grant(&key[0], period - 1, 9 * CENT, 0)], NOW).is_empty());
        }

        #[test]
        fn all_or_nothing_across_budgets() {
            let s = MemoryStore::default();
            let user = Scope {
                level: Level::User,
                id: "u1".into(),
                max_budget_usd: Some(1.0),
                duration: None,
                seed_spend_nanos: 0,
                seed_reset_at_micros: None,
            };
            let scopes = [key_scope(Some(1.0), None), user];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            // Only the key gets a slice: the user still borrows, the key's reservation is given back.
            apply(&s, vec![grant(&scopes[0], 0, 50 * CENT, 0)], NOW);
            let items = borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(
                items.iter().map(|i| i.scope.as_str()).collect::<Vec<_>>(),
                ["user:u1"]
            );
            assert_eq!(read(&s, &scopes[0]).unwrap().reserved, 0);
        }

        #[test]
        fn renewal_is_due_when_low_or_half_gone_at_most_once_a_second() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(1.0), None)];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            apply(&s, vec![grant(&scopes[0], 0, 10 * CENT, 0)], NOW);
            // Plenty left, fresh: nothing due.
            let (_, renew) =
                admitted(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            assert!(renew.is_empty());
            // Low: 10 − 2·4 = 2 cents left, under the reservation of 4.
            let (_, renew) =
                admitted(admit_in(&s, &scopes, 4 * CENT, NOW + 1, CAL, 422, check(None)).unwrap());
            assert!(renew.is_empty(), "5 left of 10 after this one");
            let (_, renew) =
                admitted(admit_in(&s, &scopes, 4 * CENT, NOW + 2, CAL, 422, check(None)).unwrap());
            assert_eq!(renew.len(), 1);
            assert_eq!(
                (renew[0].used, renew[0].held, renew[0].want),
                (9 * CENT, 10 * CENT, 4 * CENT)
            );
            assert_eq!(read(&s, &scopes[0]).unwrap().asked, NOW + 2);
            // Within the second: not again, though still low.
            let (_, renew) = admitted(
                admit_in(&s, &scopes, CENT, NOW + 500_000, CAL, 422, check(None)).unwrap(),
            );
            assert!(renew.is_empty());
            // A bigger grant; past half its TTL (and over a second after the ask): due again.
            apply(&s, vec![grant(&scopes[0], 0, 100 * CENT, 0)], NOW + 1);
            let later = NOW + 1 + TTL / 2;
            let (_, renew) =
                admitted(admit_in(&s, &scopes, 0, later - 600_000, CAL, 422, check(None)).unwrap());
            assert!(renew.is_empty(), "not half gone yet");
            let (_, renew) =
                admitted(admit_in(&s, &scopes, 0, later, CAL, 422, check(None)).unwrap());
            assert_eq!(renew.len(), 1);
        }

        #[test]
        fn tick_report_dedupes_refreshes_and_sorts() {
            let s = MemoryStore::default();
            let user = Scope {
                level: Level::User,
                id: "u1".into(),
                max_budget_usd: Some(1.0),
                duration: None,
                seed_spend_nanos: 0,
                seed_reset_at_micros: None,
            };
            let scopes = [user, key_scope(Some(1.0), None)];
            let items = borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            apply(
                &s,
                vec![
                    grant(&scopes[0], 0, 2 * CENT, 0),
                    grant(&scopes[1], 0, 3 * CENT, 0),
                ],
                NOW,
            );
            admitted(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            let mut queued: Vec<Vec<u8>> = items
                .iter()
                .map(|i| serde_json::to_vec(i).unwrap())
                .collect();
            let mut bigger = items[0].clone();
            bigger.want = 7;
            queued.push(serde_json::to_vec(&bigger).unwrap());
            queued.push(b"not json".to_vec());
            let mut forged = items[0].clone();
            forged.scope = "key:other".into();
            queued.push(serde_json::to_vec(&forged).unwrap());
            let items = renewal_items(&s, &queued, NOW);
            assert_eq!(
                items.iter().map(|i| i.scope.as_str()).collect::<Vec<_>>(),
                ["key:tok", "user:u1"]
            );
            let user_item = &items[1];
            assert_eq!(
                (user_item.used, user_item.held, user_item.want),
                (CENT, 2 * CENT, CENT.max(7))
            );
            assert_eq!(next_lease_seq(&s, NOW), Some(1));
            assert_eq!(next_lease_seq(&s, NOW), Some(2));
            assert!(renewal_items(&s, &[], NOW).is_empty());
        }

        #[test]
        fn envoy_id_is_created_once() {
            let s = MemoryStore::default();
            let a = ensure_envoy_id(&s, &[1; 16], 1).unwrap();
            assert_eq!(a, "01".repeat(16));
            assert_eq!(ensure_envoy_id(&s, &[2; 16], 2).unwrap(), a);
        }

        #[test]
        fn key_spend_is_the_fleets_plus_what_this_envoy_spent_since() {
            let s = MemoryStore::default();
            let scopes = [key_scope(Some(10.0), None)];
            borrowed(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            apply(&s, vec![grant(&scopes[0], 0, 100 * CENT, 300 * CENT)], NOW);
            let (t, _) = admitted(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(t.key_spend_nanos, Some(300 * CENT));
            settle(&s, &t, Some(2 * CENT), NOW, CAL);
            let (t, _) = admitted(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(t.key_spend_nanos, Some(302 * CENT));
            // A later answer counts those 2 cents in the fleet's figure.
            apply(
                &s,
                vec![grant(&scopes[0], 0, 100 * CENT, 302 * CENT)],
                NOW + 1,
            );
            let (t, _) = admitted(admit_in(&s, &scopes, CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(t.key_spend_nanos, Some(302 * CENT));
        }

        #[test]
        fn fleet_entries_start_from_zero_not_the_sidecar_seed() {
            let s = MemoryStore::default();
            let mut scope = key_scope(Some(1.0), None);
            scope.seed_spend_nanos = 40 * CENT;
            let items = borrowed(admit_in(&s, &[scope], CENT, NOW, CAL, 422, check(None)).unwrap());
            assert_eq!(items[0].used, 0);
        }
    }
}
