//! Budgets at every level (litellm-compat.md §2), over a `VersionedStore`.
//!
//! Each budget is one shared-data entry `reset_at spend reserved` (µs, nano-dollars). Checks
//! run in LiteLLM's order; every level blocks at `spend + reserved >= max_budget` (Tollgate's
//! one deliberate difference: LiteLLM is strict `>` for teams, customers and the proxy).
//! Admission reserves the request's maximum cost against every budget (all or nothing), so
//! concurrent requests cannot together pass a budget; settlement swaps it for the real cost.
//! Resets are lazy and exact: the first check or charge after `reset_at` starts the new period.

use crate::cost::{nanos_to_usd, py_float};
use crate::duration::{add_duration, next_reset_at_str, parse_duration, ZoneOffsets, UTC};
use crate::errors::ApiError;
use crate::shared_store::{update, Decision, StoreError, VersionedStore};

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
    Proxy,
}

impl Level {
    fn tag(&self) -> &'static str {
        match self {
            Level::Key { .. } => "key",
            Level::KeyModel { .. } => "key_model",
            Level::User => "user",
            Level::Team => "team",
            Level::TeamMember { .. } => "team_member",
            Level::EndUser => "end_user",
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
}

impl Counter {
    fn decode(bytes: &[u8]) -> Counter {
        let mut parts = std::str::from_utf8(bytes)
            .unwrap_or("")
            .split(' ')
            .map(|p| p.parse::<i64>().unwrap_or(0));
        Counter {
            reset_at: parts.next().unwrap_or(0),
            spend: parts.next().unwrap_or(0),
            reserved: parts.next().unwrap_or(0),
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!("{} {} {}", self.reset_at, self.spend, self.reserved).into_bytes()
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
            reserved: 0,
        },
    };
    match duration {
        None => c.reset_at = 0,
        Some(_) => {
            let ended = c.reset_at != 0 && now >= c.reset_at;
            if ended {
                c.spend = 0;
            }
            if ended || c.reset_at == 0 {
                c.reset_at = period_end(duration, aligned, now, cal);
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
    let mut ticket = BudgetTicket::default();
    for scope in scopes {
        let key = storage_key(scope);
        let aligned = !matches!(scope.level, Level::KeyModel { .. });
        let duration = scope.duration.as_deref();
        let max = scope
            .max_budget_usd
            .filter(|m| !m.is_nan())
            .map(crate::cost::usd_to_budget_nanos);
        let seed = (scope.seed_spend_nanos, scope.seed_reset_at_micros);
        let outcome = update(store, &key, now, |v| {
            let c = current(v, seed, duration, aligned, now, cal);
            let (next, take) = match max {
                Some(m) if c.spend.saturating_add(c.reserved) >= m => {
                    return Decision::Keep(Err(c))
                }
                Some(m) => {
                    let left = m.saturating_sub(c.spend).saturating_sub(c.reserved);
                    let take = estimate_nanos.clamp(0, left);
                    let next = Counter {
                        reserved: c.reserved.saturating_add(take),
                        ..c
                    };
                    (next, take)
                }
                None => (c, 0),
            };
            write_if_changed(v, &next, Ok((next, take)))
        });
        match outcome {
            Ok(Ok((c, take))) => {
                if matches!(scope.level, Level::Key { .. }) {
                    ticket.key_spend_nanos = Some(c.spend);
                    ticket.key_max_budget = scope.max_budget_usd;
                }
                ticket.charges.push(Charge {
                    key,
                    reserved: take,
                    duration: scope.duration.clone(),
                    aligned,
                });
            }
            Ok(Err(c)) => {
                settle(store, &ticket, None, now, cal);
                let max_usd = scope.max_budget_usd.unwrap_or(0.0);
                return Err(exceeded(
                    scope,
                    c.spend.saturating_add(c.reserved),
                    max_usd,
                    exceeded_status,
                ));
            }
            Err(e) => {
                settle(store, &ticket, None, now, cal);
                return Err(store_error(e));
            }
        }
    }
    Ok(ticket)
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
                c.spend = 0;
                c.reset_at = period_end(duration, charge.aligned, now, cal);
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
        s.set(&key, format!("0 {} 0", i64::MIN).as_bytes(), None)
            .unwrap();
        let t = admit(&s, &scopes, CENT, 1, CAL, 422).unwrap();
        assert_eq!(t.charges[0].reserved, CENT);
        s.set(&key, format!("0 0 {}", i64::MAX - 1).as_bytes(), None)
            .unwrap();
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
        assert_eq!(
            read(&s, &scopes[0]).unwrap(),
            Counter {
                reset_at: 0,
                spend: 0,
                reserved: 0
            }
        );
    }
}
