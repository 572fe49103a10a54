//! Fleet mode's rate limits in the filter (FLEET.md §4.3, §4.4): rpm, tpm and
//! `max_parallel_requests` admitted against this Envoy's slices of them, leased from the
//! sidecar over the budgets' lease call ([`crate::leases`] has the arithmetic).
//!
//! Each limit of a scope is one shared-data entry [`RATE_LEASE_PREFIX`]`<level>:<kind>:<value>`
//! (`level` = `rpm`, `tpm`, `parallel`): `period used released grant deadline global global_at
//! asked asked_used peak waiting` ([`Slice`]). `used` counts what this Envoy took (requests, tokens
//! reserved, slots acquired) and `released` what it gave back (tpm refunds, slots released),
//! both cumulative in the period (the rpm/tpm window the sidecar opened; 0 for slots). A limit
//! admits iff `now < deadline`, the window runs, and `used + take ≤ grant`: exact, since a
//! request takes 1 request / 1 slot / its token estimate, and the sidecar never lends more than
//! the limit in all. Outside fleet mode none of this runs ([`crate::rate_limits::admit`]).

use crate::budgets::{scope_name, Borrowed, FleetCheck};
use crate::contract::RATE_LEASE_PREFIX;
use crate::errors::ApiError;
use crate::leases::{demand, RENEW_EVERY_MICROS};
use crate::plugin_config::NoLeasePolicy;
use crate::rate_limits::{store_error, too_many, Descriptor, Held, LimitStatus, LimitType, Ticket};
use crate::records::{LeaseGrant, LeaseItem};
use crate::shared_store::{update, Decision, VersionedStore};

/// What a rate lease lends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lent {
    Rpm,
    Slots,
    Tpm,
}

impl Lent {
    fn level(self) -> &'static str {
        match self {
            Lent::Rpm => "rpm",
            Lent::Slots => "parallel",
            Lent::Tpm => "tpm",
        }
    }

    fn limit_type(self) -> LimitType {
        match self {
            Lent::Rpm => LimitType::Requests,
            Lent::Slots => LimitType::MaxParallelRequests,
            Lent::Tpm => LimitType::Tokens,
        }
    }
}

/// This Envoy's lease on one limit of one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    /// The window's end (µs), as the sidecar opened it (rpm/tpm); 0 for slots.
    pub period: i64,
    /// Taken in the period: requests, tokens reserved (and any excess found at settlement),
    /// slots acquired.
    pub used: i64,
    /// Given back in the period: tpm refunds, slots released.
    pub released: i64,
    /// Lent in the period (cumulative, like `used`), valid while `now < deadline`.
    pub grant: i64,
    pub deadline: i64,
    /// What the fleet held of the limit at the last answer, and `used − released` here then.
    pub global: i64,
    pub global_at: i64,
    /// When a renewal was last enqueued, `used` then, and the largest take since.
    pub asked: i64,
    pub asked_used: i64,
    pub peak: i64,
    /// What requests paused to borrow for this slice since the last answer take: a borrow
    /// asks for all of it (as `budgets::Counter::waiting`).
    pub waiting: i64,
}

impl Slice {
    pub fn decode(bytes: &[u8]) -> Slice {
        let [period, used, released, grant, deadline, global, global_at, asked, asked_used, peak, waiting] =
            crate::budgets::int_fields(bytes);
        Slice {
            period,
            used,
            released,
            grant,
            deadline,
            global,
            global_at,
            asked,
            asked_used,
            peak,
            waiting,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {} {} {} {} {} {} {} {}",
            self.period,
            self.used,
            self.released,
            self.grant,
            self.deadline,
            self.global,
            self.global_at,
            self.asked,
            self.asked_used,
            self.peak,
            self.waiting
        )
        .into_bytes()
    }

    /// Valid: before its deadline and, for a window, before the window's end.
    fn valid(&self, now: i64) -> bool {
        now < self.deadline && (self.period == 0 || now < self.period)
    }

    fn admits(&self, now: i64, take: i64) -> bool {
        self.valid(now) && self.used.saturating_add(take) <= self.grant
    }

    /// Held here now: taken and not given back.
    fn holding(&self) -> i64 {
        self.used.saturating_sub(self.released).max(0)
    }

    /// What the fleet holds as far as this Envoy knows: the last answer's figure plus what
    /// this Envoy took since.
    fn fleet_holding(&self) -> i64 {
        self.global
            .saturating_add(self.holding().saturating_sub(self.global_at))
            .max(0)
    }

    /// How much beyond its use to ask for: the largest take, or the demand.
    fn want(&self, take: i64, now: i64) -> i64 {
        take.max(self.peak)
            .max(demand(self.asked, self.asked_used, self.used, now))
    }
}

/// A limit's lease name (`LeaseItem.scope`): `<level>:<kind>:<value>`.
fn lease_scope(lent: Lent, d: &Descriptor) -> String {
    scope_name(lent.level(), &[d.kind, d.value.as_str()])
}

fn entry_key(scope: &str) -> String {
    format!("{RATE_LEASE_PREFIX}{scope}")
}

fn lease_item(lent: Lent, d: &Descriptor, limit: u64, s: &Slice, want: i64) -> LeaseItem {
    LeaseItem {
        scope: lease_scope(lent, d),
        level: lent.level().to_string(),
        ids: vec![d.kind.to_string(), d.value.clone()],
        period: s.period,
        used: s.used,
        held: s.grant,
        want: want.max(0),
        reservation: s.peak.max(0),
        limit: Some(i64::try_from(limit).unwrap_or(i64::MAX)),
        released: s.released,
        returning: false,
        held_seq: 0,
    }
}

/// The outcome of a fleet-mode admission of rate limits that did not refuse.
#[derive(Debug, Clone, PartialEq)]
pub enum Leased {
    /// Taken from every slice; `renew` are slices due for renewal, for the lease queue.
    Admitted {
        ticket: Ticket,
        renew: Vec<LeaseItem>,
    },
    /// Limits without a valid slice (and any due for renewal), to borrow before admitting
    /// again. Nothing is held.
    Borrow(Vec<LeaseItem>),
    /// After a borrow the sidecar did not answer and `on_no_lease` is `local`: admit on this
    /// Envoy's own counters ([`crate::rate_limits::admit`]). Nothing is held.
    Local,
}

/// The leased limits of `descriptors` in LiteLLM's order: rpm of every scope, then parallel
/// slots, then tpm.
fn leases_of(descriptors: &[Descriptor]) -> Vec<(&Descriptor, Lent, u64)> {
    let mut order: Vec<(&Descriptor, Lent, u64)> = Vec::new();
    order.extend(
        descriptors
            .iter()
            .filter_map(|d| Some((d, Lent::Rpm, d.rpm?))),
    );
    order.extend(
        descriptors
            .iter()
            .filter_map(|d| Some((d, Lent::Slots, d.max_parallel?))),
    );
    order.extend(
        descriptors
            .iter()
            .filter_map(|d| Some((d, Lent::Tpm, d.tpm?))),
    );
    order
}

/// The limits whose slice could not admit this request now (read only): asked for in the same
/// borrow as a budget's, so one hop serves both.
pub fn to_borrow<S: VersionedStore>(
    store: &S,
    descriptors: &[Descriptor],
    token_estimate: u64,
    now: i64,
) -> Vec<LeaseItem> {
    let estimate = i64::try_from(token_estimate).unwrap_or(i64::MAX);
    leases_of(descriptors)
        .into_iter()
        .filter_map(|(d, lent, limit)| {
            let take = if lent == Lent::Tpm { estimate } else { 1 };
            let s = store
                .get(&entry_key(&lease_scope(lent, d)))
                .map(|(v, _)| Slice::decode(&v))
                .unwrap_or_default();
            (!s.admits(now, take)).then(|| lease_item(lent, d, limit, &s, s.want(take, now)))
        })
        .collect()
}

/// What one slice's check decided.
enum Checked {
    Took {
        slice: Slice,
        renew: Option<LeaseItem>,
    },
    /// Only checked (another limit is being borrowed for): it could admit.
    Fine,
    NoSlice(LeaseItem),
    /// Refused: the slice, for the message.
    Refused(Slice),
    Unavailable,
    Local,
}

/// Fleet mode's [`crate::rate_limits::admit`]: the same order (rpm of every scope, then
/// parallel slots, then tpm; the first refusal is the answer, and rpm counts of a refused
/// request are kept, as LiteLLM counts refused requests), against this Envoy's slices.
/// `Borrow` when a limit has no valid slice or its slice is used up, unless the fleet has used
/// the whole rpm window already (a 429 with no hop).
pub fn admit<S: VersionedStore>(
    store: &S,
    descriptors: &[Descriptor],
    token_estimate: u64,
    now: i64,
    fleet: FleetCheck<'_>,
) -> Result<Leased, ApiError> {
    let estimate = i64::try_from(token_estimate).unwrap_or(i64::MAX);
    let order = leases_of(descriptors);
    let mut ticket = Ticket::default();
    // Everything taken, to give back on a borrow or refusal: (entry, lent, take, period).
    let mut taken: Vec<(String, Lent, i64, i64)> = Vec::new();
    let mut renew = Vec::new();
    let mut borrow = Vec::new();
    for (d, lent, limit) in order {
        let take = if lent == Lent::Tpm { estimate } else { 1 };
        let scope = lease_scope(lent, d);
        let key = entry_key(&scope);
        let checking_only = !borrow.is_empty();
        let outcome = update(store, &key, now, |v| {
            let s = v.map(Slice::decode).unwrap_or_default();
            if s.admits(now, take) {
                if checking_only {
                    return Decision::Keep(Checked::Fine);
                }
                let mut next = Slice {
                    used: s.used.saturating_add(take),
                    peak: s.peak.max(take),
                    ..s
                };
                let left = next.grant.saturating_sub(next.used);
                let low = left < take.max(demand(next.asked, next.asked_used, next.used, now));
                let half_gone = next.deadline.saturating_sub(now) < fleet.ttl_micros / 2;
                let mut due = None;
                if (low || half_gone) && now.saturating_sub(next.asked) >= RENEW_EVERY_MICROS {
                    due = Some(lease_item(lent, d, limit, &next, next.want(take, now)));
                    next.asked = now;
                    next.asked_used = next.used;
                    next.peak = take;
                }
                return Decision::Write(
                    next.encode(),
                    Checked::Took {
                        slice: next,
                        renew: due,
                    },
                );
            }
            match fleet.after_borrow {
                None => {
                    // The fleet has used the whole window (requests are not given back): no
                    // hop can help until it ends.
                    let spent = i64::try_from(limit).unwrap_or(i64::MAX);
                    if lent == Lent::Rpm && s.valid(now) && s.fleet_holding() >= spent {
                        return Decision::Keep(Checked::Refused(s));
                    }
                    let next = Slice {
                        waiting: s.waiting.saturating_add(take),
                        ..s
                    };
                    let want = next.want(take, now).max(next.waiting);
                    Decision::Write(
                        next.encode(),
                        Checked::NoSlice(lease_item(lent, d, limit, &next, want)),
                    )
                }
                // Not asked in that borrow (ran out while the request waited): another round.
                Some(borrowed) if !borrowed.asked(&scope) => {
                    let next = Slice {
                        waiting: s.waiting.saturating_add(take),
                        ..s
                    };
                    let want = next.want(take, now).max(next.waiting);
                    Decision::Write(
                        next.encode(),
                        Checked::NoSlice(lease_item(lent, d, limit, &next, want)),
                    )
                }
                Some(borrowed) => Decision::Keep(after_borrow(borrowed, &scope, s)),
            }
        });
        let refused = match outcome {
            Ok(Checked::Took { slice, renew: due }) => {
                taken.push((key.clone(), lent, take, slice.period));
                renew.extend(due);
                ticket.statuses.push(LimitStatus {
                    kind: d.kind,
                    limit_type: lent.limit_type(),
                    limit,
                    remaining: limit
                        .saturating_sub(u64::try_from(slice.fleet_holding()).unwrap_or(0)),
                });
                match lent {
                    Lent::Rpm => {}
                    Lent::Slots => ticket.held.push(Held {
                        key,
                        slot: true,
                        tokens: None,
                        leased: true,
                    }),
                    Lent::Tpm => ticket.held.push(Held {
                        key,
                        slot: false,
                        tokens: Some((slice.period, token_estimate)),
                        leased: true,
                    }),
                }
                continue;
            }
            Ok(Checked::Fine) => continue,
            Ok(Checked::NoSlice(item)) => {
                borrow.push(item);
                continue;
            }
            Ok(Checked::Refused(s)) => {
                let reset = if lent == Lent::Slots || s.period == 0 {
                    now.saturating_add(1_000_000)
                } else {
                    s.period
                };
                // rpm and slots: nothing more could be lent; tpm: what the fleet holds.
                let current = match lent {
                    Lent::Tpm => u64::try_from(s.fleet_holding()).unwrap_or(0),
                    Lent::Rpm | Lent::Slots => limit,
                };
                too_many(d, lent.limit_type(), limit, current, reset, now)
            }
            Ok(Checked::Unavailable) => crate::budgets::no_lease(),
            Ok(Checked::Local) => {
                give_back(store, &taken, now, |_| true);
                return Ok(Leased::Local);
            }
            Err(e) => store_error(e),
        };
        // LiteLLM counts a refused request against rpm: only slots and tokens go back.
        give_back(store, &taken, now, |lent| lent != Lent::Rpm);
        return Err(refused);
    }
    if borrow.is_empty() {
        return Ok(Leased::Admitted { ticket, renew });
    }
    // Taken again after the borrow: everything goes back, rpm counts too.
    give_back(store, &taken, now, |_| true);
    borrow.extend(renew);
    Ok(Leased::Borrow(borrow))
}

/// A limit that still cannot admit after a borrow: refused if the sidecar answered for it,
/// else as `on_no_lease` says.
fn after_borrow(borrowed: &Borrowed, scope: &str, s: Slice) -> Checked {
    if borrowed.answered.iter().any(|(name, _)| name == scope) {
        return Checked::Refused(s);
    }
    match borrowed.policy {
        NoLeasePolicy::Deny => Checked::Unavailable,
        NoLeasePolicy::Local => Checked::Local,
    }
}

/// Undoes takes of this admission (`which` of them), in the period they were made in.
fn give_back<S: VersionedStore>(
    store: &S,
    taken: &[(String, Lent, i64, i64)],
    now: i64,
    which: impl Fn(Lent) -> bool,
) {
    for (key, lent, take, period) in taken {
        if !which(*lent) {
            continue;
        }
        let _ = update(store, key, now, |v| {
            let Some(bytes) = v else {
                return Decision::Keep(());
            };
            let mut s = Slice::decode(bytes);
            if s.period != *period {
                return Decision::Keep(());
            }
            s.used = s.used.saturating_sub(*take).max(0);
            Decision::Write(s.encode(), ())
        });
    }
}

/// Ends a request's hold on a leased limit ([`crate::rate_limits::release`]): a slot is given
/// back; a tpm reservation is settled to `actual_tokens` (`None`: refunded), the difference
/// given back or added to `used`; in a later window only the real count is added.
pub fn release<S: VersionedStore>(store: &S, held: &Held, actual_tokens: Option<u64>, now: i64) {
    let _ = update(store, &held.key, now, |v| {
        let Some(bytes) = v else {
            return Decision::Keep(());
        };
        let mut s = Slice::decode(bytes);
        if held.slot {
            s.released = s.released.saturating_add(1).min(s.used);
        }
        if let Some((period, reserved)) = held.tokens {
            let reserved = i64::try_from(reserved).unwrap_or(i64::MAX);
            let actual = i64::try_from(actual_tokens.unwrap_or(0)).unwrap_or(i64::MAX);
            if s.period == period {
                if actual <= reserved {
                    s.released = s.released.saturating_add(reserved - actual);
                } else {
                    s.used = s.used.saturating_add(actual - reserved);
                }
            } else {
                s.used = s.used.saturating_add(actual);
            }
        }
        Decision::Write(s.encode(), ())
    });
}

/// Applies one grant of a lease answer to its slice (created if missing), for a request whose
/// slice deadline is `deadline`: a grant for the slice's period is taken by `max` while the
/// slice is valid (grants only grow), as it is once expired; a grant for a later window
/// (the sidecar opened it) starts that window from nothing; an answer for an earlier window is
/// ignored. Returns whether it was applied.
pub fn apply_grant<S: VersionedStore>(
    store: &S,
    grant: &LeaseGrant,
    deadline: i64,
    now: i64,
) -> bool {
    update(store, &entry_key(&grant.scope), now, |v| {
        let mut s = v.map(Slice::decode).unwrap_or_default();
        if grant.period != s.period {
            if grant.period < s.period || grant.period <= now {
                return Decision::Keep(false);
            }
            s = Slice {
                period: grant.period,
                asked: s.asked,
                peak: s.peak,
                ..Slice::default()
            };
        }
        if now >= s.deadline {
            s.grant = grant.grant;
            s.deadline = deadline;
        } else {
            s.grant = s.grant.max(grant.grant);
            s.deadline = s.deadline.max(deadline);
        }
        s.global = grant.spend;
        s.global_at = s.holding();
        s.waiting = 0;
        Decision::Write(s.encode(), true)
    })
    .unwrap_or(false)
}

/// A queued renewal of a rate lease, refreshed from its slice now (`None`: no slice, or its
/// window is over; the next admission borrows for the next one).
pub fn refresh_item<S: VersionedStore>(
    store: &S,
    mut item: LeaseItem,
    now: i64,
) -> Option<LeaseItem> {
    let (bytes, _) = store.get(&entry_key(&item.scope))?;
    let s = Slice::decode(&bytes);
    if s.period != 0 && now >= s.period {
        return None;
    }
    item.period = s.period;
    item.used = s.used;
    item.held = s.grant;
    item.released = s.released;
    item.returning = false;
    Some(item)
}

/// A rate slice as the root tick sees it ([`crate::lease_tick`]). A window's lease keeps its
/// claim on the sidecar past its deadline, so unused room counts as held until the window ends.
pub fn tick_view<S: VersionedStore>(
    store: &S,
    scope: &str,
    now: i64,
) -> Option<crate::budgets::TickView> {
    let (bytes, _) = store.get(&entry_key(scope))?;
    let s = Slice::decode(&bytes);
    let running = s.period == 0 || now < s.period;
    Some(crate::budgets::TickView {
        mark: [s.period, s.used, s.released],
        in_use: scope.starts_with("parallel:") && s.holding() > 0,
        holds: running && s.grant > s.used,
        next_due: false,
    })
}

/// Gives an idle rate slice back, as [`crate::budgets::give_back_item`].
pub fn give_back_item<S: VersionedStore>(
    store: &S,
    item: &LeaseItem,
    now: i64,
) -> Option<LeaseItem> {
    update(store, &entry_key(&item.scope), now, |v| {
        let Some(bytes) = v else {
            return Decision::Keep(None);
        };
        let mut s = Slice::decode(bytes);
        if (s.period != 0 && now >= s.period) || s.grant <= s.used {
            return Decision::Keep(None);
        }
        s.grant = s.used;
        s.deadline = 0;
        let returned = LeaseItem {
            period: s.period,
            used: s.used,
            held: s.grant,
            released: s.released,
            want: 0,
            returning: true,
            ..item.clone()
        };
        Decision::Write(s.encode(), Some(returned))
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::LeaseAnswer;
    use crate::shared_store::MemoryStore;

    const NOW: i64 = 1_000_000_000;
    const TTL: i64 = 10_000_000;
    const WINDOW_END: i64 = NOW + 60_000_000;

    fn key(rpm: Option<u64>, tpm: Option<u64>, par: Option<u64>) -> Descriptor {
        Descriptor {
            kind: "api_key",
            value: "hash".into(),
            rpm,
            tpm,
            max_parallel: par,
        }
    }

    fn check(after: Option<&Borrowed>) -> FleetCheck<'_> {
        FleetCheck {
            ttl_micros: TTL,
            after_borrow: after,
        }
    }

    fn grant(scope: &str, period: i64, amount: i64, spend: i64) -> LeaseGrant {
        LeaseGrant {
            scope: scope.into(),
            period,
            grant: amount,
            ttl_ms: 10_000,
            spend,
            max_nanos: None,
        }
    }

    fn apply(s: &MemoryStore, g: LeaseGrant) -> bool {
        crate::budgets::apply_lease_answer(
            s,
            &LeaseAnswer {
                items: vec![g.clone()],
            },
            &[g.scope],
            1,
            NOW,
            NOW,
        )
        .len()
            == 1
    }

    fn slice(s: &MemoryStore, scope: &str) -> Slice {
        Slice::decode(&s.get(&entry_key(scope)).unwrap().0)
    }

    fn admitted(r: Result<Leased, ApiError>) -> Ticket {
        match r {
            Ok(Leased::Admitted { ticket, .. }) => ticket,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn slices_round_trip() {
        let s = Slice {
            period: 1,
            used: 2,
            released: 3,
            grant: 4,
            deadline: 5,
            global: 6,
            global_at: 7,
            asked: 8,
            asked_used: 9,
            peak: 10,
            waiting: 11,
        };
        assert_eq!(Slice::decode(&s.encode()), s);
        assert_eq!(Slice::decode(b"garbage"), Slice::default());
    }

    #[test]
    fn without_a_slice_every_limit_is_borrowed_at_once_and_nothing_is_held() {
        let s = MemoryStore::default();
        let d = [key(Some(10), Some(1000), Some(2))];
        let Ok(Leased::Borrow(items)) = admit(&s, &d, 7, NOW, check(None)) else {
            panic!()
        };
        let scopes: Vec<&str> = items.iter().map(|i| i.scope.as_str()).collect();
        assert_eq!(
            scopes,
            [
                "rpm:api_key:hash",
                "parallel:api_key:hash",
                "tpm:api_key:hash"
            ]
        );
        assert_eq!(
            (items[2].limit, items[2].want, items[2].ids.len()),
            (Some(1000), 7, 2)
        );
        // Nothing taken; the borrow is counted as waiting, so concurrent ones ask for all.
        assert_eq!(slice(&s, "rpm:api_key:hash").used, 0);
        let Ok(Leased::Borrow(again)) = admit(&s, &d, 7, NOW, check(None)) else {
            panic!()
        };
        assert_eq!((again[0].want, again[2].want), (2, 14));
    }

    #[test]
    fn an_rpm_slice_admits_exactly_its_grant_then_borrows_then_refuses() {
        let s = MemoryStore::default();
        let d = [key(Some(10), None, None)];
        assert!(apply(&s, grant("rpm:api_key:hash", WINDOW_END, 3, 0)));
        for _ in 0..3 {
            admitted(admit(&s, &d, 1, NOW + 1, check(None)));
        }
        // Used up: borrow, and nothing taken meanwhile.
        let Ok(Leased::Borrow(items)) = admit(&s, &d, 1, NOW + 2, check(None)) else {
            panic!()
        };
        assert_eq!(
            (items[0].used, items[0].held, items[0].period),
            (3, 3, WINDOW_END)
        );
        assert_eq!(slice(&s, "rpm:api_key:hash").used, 3);
        // The sidecar lent nothing more: 429, LiteLLM's message, reset at the window's end.
        let answered = Borrowed {
            answered: vec![("rpm:api_key:hash".into(), 10)],
            policy: NoLeasePolicy::Deny,
            asked: vec!["rpm:api_key:hash".into()],
        };
        assert!(apply(&s, grant("rpm:api_key:hash", WINDOW_END, 3, 10)));
        let e = admit(&s, &d, 1, NOW + 3, check(Some(&answered))).unwrap_err();
        assert_eq!(e.status, 429);
        assert!(
            e.message
                .contains("Limit type: requests. Current limit: 10, Remaining: 0"),
            "{}",
            e.message
        );
        // The fleet has used the window: refused with no hop.
        let e = admit(&s, &d, 1, NOW + 4, check(None)).unwrap_err();
        assert_eq!(e.status, 429);
        // The next window (the sidecar's): a fresh slice.
        let next = WINDOW_END + 60_000_000;
        let later = WINDOW_END + 1;
        assert!(
            crate::budgets::apply_lease_answer(
                &s,
                &LeaseAnswer {
                    items: vec![grant("rpm:api_key:hash", next, 2, 0)]
                },
                &["rpm:api_key:hash".into()],
                1,
                later,
                later,
            )
            .len()
                == 1
        );
        let t = admitted(admit(&s, &d, 1, later + 1, check(None)));
        assert_eq!(t.statuses[0].remaining, 9);
        // An answer for the old window arriving late changes nothing.
        assert!(crate::budgets::apply_lease_answer(
            &s,
            &LeaseAnswer {
                items: vec![grant("rpm:api_key:hash", WINDOW_END, 9, 0)]
            },
            &["rpm:api_key:hash".into()],
            2,
            later,
            later,
        )
        .is_empty());
        assert_eq!(
            (
                slice(&s, "rpm:api_key:hash").period,
                slice(&s, "rpm:api_key:hash").grant
            ),
            (next, 2)
        );
    }

    #[test]
    fn slots_are_given_back_and_reported() {
        let s = MemoryStore::default();
        let d = [key(None, None, Some(2))];
        assert!(apply(&s, grant("parallel:api_key:hash", 0, 2, 0)));
        let a = admitted(admit(&s, &d, 1, NOW + 1, check(None)));
        let b = admitted(admit(&s, &d, 1, NOW + 1, check(None)));
        assert!(matches!(
            admit(&s, &d, 1, NOW + 2, check(None)),
            Ok(Leased::Borrow(_))
        ));
        for t in [&a, &b] {
            release(&s, &t.held[0], None, NOW + 3);
        }
        let sl = slice(&s, "parallel:api_key:hash");
        assert_eq!((sl.used, sl.released), (2, 2));
        // A renewal reports both.
        let queued = LeaseItem {
            scope: "parallel:api_key:hash".into(),
            ..Default::default()
        };
        let item = refresh_item(&s, queued, NOW + 4).unwrap();
        assert_eq!((item.used, item.released, item.held), (2, 2, 2));
    }

    #[test]
    fn tpm_reserves_the_estimate_and_settles_the_difference() {
        let s = MemoryStore::default();
        let d = [key(None, Some(100), None)];
        assert!(apply(&s, grant("tpm:api_key:hash", WINDOW_END, 50, 0)));
        let t = admitted(admit(&s, &d, 30, NOW + 1, check(None)));
        // 30 + 30 > 50: borrow.
        assert!(matches!(
            admit(&s, &d, 30, NOW + 1, check(None)),
            Ok(Leased::Borrow(_))
        ));
        release(&s, &t.held[0], Some(10), NOW + 2);
        let sl = slice(&s, "tpm:api_key:hash");
        assert_eq!((sl.used, sl.released), (30, 20));
        let t = admitted(admit(&s, &d, 20, NOW + 3, check(None)));
        release(&s, &t.held[0], Some(25), NOW + 4);
        assert_eq!(slice(&s, "tpm:api_key:hash").used, 55);
    }

    #[test]
    fn a_refusal_gives_back_slots_and_tokens_but_keeps_rpm_counts() {
        let s = MemoryStore::default();
        let d = [key(Some(10), Some(100), Some(5))];
        assert!(apply(&s, grant("rpm:api_key:hash", WINDOW_END, 5, 0)));
        assert!(apply(&s, grant("parallel:api_key:hash", 0, 5, 0)));
        assert!(apply(&s, grant("tpm:api_key:hash", WINDOW_END, 10, 100)));
        let asked: Vec<String> = ["parallel", "rpm", "tpm"]
            .iter()
            .map(|l| format!("{l}:api_key:hash"))
            .collect();
        let answered = Borrowed {
            answered: vec![("tpm:api_key:hash".into(), 100)],
            policy: NoLeasePolicy::Deny,
            asked: asked.clone(),
        };
        let e = admit(&s, &d, 50, NOW + 1, check(Some(&answered))).unwrap_err();
        assert!(e.message.contains("Limit type: tokens"), "{}", e.message);
        assert_eq!(slice(&s, "rpm:api_key:hash").used, 1);
        assert_eq!(slice(&s, "parallel:api_key:hash").used, 0);
        // Unanswered after a borrow: `on_no_lease` decides.
        let unanswered = Borrowed {
            answered: vec![],
            policy: NoLeasePolicy::Local,
            asked,
        };
        assert_eq!(
            admit(&s, &d, 50, NOW + 2, check(Some(&unanswered))),
            Ok(Leased::Local)
        );
        assert_eq!(
            slice(&s, "rpm:api_key:hash").used,
            1,
            "given back for the local admission"
        );
        let deny = Borrowed {
            policy: NoLeasePolicy::Deny,
            ..unanswered
        };
        let e = admit(&s, &d, 50, NOW + 3, check(Some(&deny))).unwrap_err();
        assert_eq!(e, crate::budgets::no_lease());
    }

    #[test]
    fn to_borrow_lists_only_limits_that_cannot_admit() {
        let s = MemoryStore::default();
        let d = [key(Some(10), Some(100), None)];
        assert!(apply(&s, grant("rpm:api_key:hash", WINDOW_END, 5, 0)));
        let items = to_borrow(&s, &d, 7, NOW + 1);
        let scopes: Vec<&str> = items.iter().map(|i| i.scope.as_str()).collect();
        assert_eq!(scopes, ["tpm:api_key:hash"]);
        assert_eq!(slice(&s, "rpm:api_key:hash").used, 0, "read only");
    }

    #[test]
    fn an_expired_slice_admits_nothing() {
        let s = MemoryStore::default();
        let d = [key(Some(10), None, None)];
        assert!(apply(&s, grant("rpm:api_key:hash", WINDOW_END, 5, 0)));
        let deadline = NOW + TTL - 500_000;
        admitted(admit(&s, &d, 1, deadline - 1, check(None)));
        assert!(matches!(
            admit(&s, &d, 1, deadline, check(None)),
            Ok(Leased::Borrow(_))
        ));
    }
}
