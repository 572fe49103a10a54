//! Fleet mode's rate limits in the filter (FLEET.md §4.3, §4.4): rpm, tpm and
//! `max_parallel_requests` admitted against this Envoy's slices of them, leased from the
//! sidecar over the budgets' lease call ([`crate::leases`] has the arithmetic).
//!
//! Each rate scope (`<kind>:<value>`, e.g. a key's `api_key:<hash>`) is one shared-data entry
//! [`RATE_LEASE_PREFIX`]`<kind>:<value>` holding the slices of all its leased limits
//! ([`Slices`]: rpm, parallel, tpm), as fleet mode off keeps a scope's window and in-flight
//! gauge in one entry ([`crate::rate_limits`]): an admission, a release or a settlement reads
//! and compare-and-sets it once, so fleet mode adds no host call to the request path. The
//! lease wire stays one item per limit (`<level>:<kind>:<value>`, `level` = `rpm`, `tpm`,
//! `parallel`); each slice is `period used released grant deadline global global_at asked
//! asked_used peak waiting next_period next_grant next_deadline seq next_seq limit` ([`Slice`], binary:
//! [`crate::entry`]). `used` counts what this Envoy took (requests, tokens
//! reserved, slots acquired) and `released` what it gave back (tpm refunds, slots released),
//! both cumulative in the period (the rpm/tpm window the sidecar opened; 0 for slots). A limit
//! admits iff `now < deadline`, the window runs, the slice was lent under the limit the
//! request's record says, and `used + take ≤ grant`: exact, since a request takes 1 request /
//! 1 slot / its token estimate, and the sidecar never lends more than the limit in all.
//! Answers are applied in seq order, so a lowered limit's shrink takes effect when it lands
//! (FLEET.md §4.10). Outside fleet mode none of this runs ([`crate::rate_limits::admit`]).

use crate::budgets::{scope_name, Borrowed, FleetCheck};
use crate::contract::RATE_LEASE_PREFIX;
use crate::entry::Fields;
use crate::errors::ApiError;
use crate::leases::{demand, RENEW_EVERY_MICROS};
use crate::plugin_config::NoLeasePolicy;
use crate::rate_limits::{store_error, too_many, Descriptor, Held, LimitStatus, LimitType, Ticket};
use crate::records::{LeaseGrant, LeaseItem};
use crate::shared_store::{update, Decision, VersionedStore};

/// What a rate lease lends; also its slice's place in the scope's entry (LiteLLM's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lent {
    Rpm = 0,
    Slots = 1,
    Tpm = 2,
}

impl Lent {
    /// LiteLLM's order of checks: rpm, then parallel slots, then tpm.
    const ALL: [Lent; 3] = [Lent::Rpm, Lent::Slots, Lent::Tpm];

    fn level(self) -> &'static str {
        match self {
            Lent::Rpm => "rpm",
            Lent::Slots => "parallel",
            Lent::Tpm => "tpm",
        }
    }

    fn of_level(level: &str) -> Option<Lent> {
        Lent::ALL.into_iter().find(|l| l.level() == level)
    }

    fn limit_type(self) -> LimitType {
        match self {
            Lent::Rpm => LimitType::Requests,
            Lent::Slots => LimitType::MaxParallelRequests,
            Lent::Tpm => LimitType::Tokens,
        }
    }

    fn limit(self, d: &Descriptor) -> Option<u64> {
        match self {
            Lent::Rpm => d.rpm,
            Lent::Slots => d.max_parallel,
            Lent::Tpm => d.tpm,
        }
    }

    /// What a request takes: 1 request, 1 slot, or its token estimate.
    fn take(self, estimate: i64) -> i64 {
        if self == Lent::Tpm {
            estimate
        } else {
            1
        }
    }

    fn index(self) -> usize {
        self as usize
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
    /// The next window's slice, issued ahead in the last seconds of this one (FLEET.md §4.9):
    /// for the window ending at `next_period` (starting where this one ends), valid until
    /// `next_deadline`. Installed when this window ends ([`Slice::current`]).
    pub next_period: i64,
    pub next_grant: i64,
    pub next_deadline: i64,
    /// The seq of the lease call whose answer set `grant` (`next_grant`): answers are applied
    /// in seq order, as a budget's (`budgets::Counter::seq`); reported as `held_seq`.
    pub seq: i64,
    pub next_seq: i64,
    /// The limit the sidecar lent `grant` under (the answer's `max_nanos`; 0 = not known): a
    /// request whose record says another limit (an admin change) borrows under its own
    /// before the slice admits again.
    pub limit: i64,
}

// A slice's fields, in this order ([`crate::entry`]).
crate::entry::i64_fields!(Slice {
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
    next_period,
    next_grant,
    next_deadline,
    seq,
    next_seq,
    limit,
});

impl Slice {
    /// The slice in force at `now`: past its window's end, the next window's slice issued
    /// ahead (if still valid), from nothing taken; the demand estimate goes on (use counted
    /// from the window's start, the largest take), so its first renewal asks for the running
    /// rate. Otherwise as it is (an ended window admits nothing: the next request borrows).
    pub fn current(self, now: i64) -> Slice {
        let ended = self.period != 0 && now >= self.period;
        if !ended || self.next_period <= now || now >= self.next_deadline {
            return self;
        }
        Slice {
            period: self.next_period,
            grant: self.next_grant,
            deadline: self.next_deadline,
            seq: self.next_seq,
            limit: self.limit,
            asked: self.period,
            peak: self.peak,
            ..Slice::default()
        }
    }

    /// A grant for this slice's own period, from the answer to lease call `seq`: a later
    /// call's answer replaces the grant and deadline, a shrink included (the sidecar keeps
    /// counting the larger grant until a report's `held_seq` shows this one applied; below the
    /// use the slice admits nothing more); an earlier call's (or the same) is out of date and
    /// changes nothing. Whether it was applied.
    fn take_answer(&mut self, grant: &LeaseGrant, seq: i64, deadline: i64) -> bool {
        if seq <= self.seq {
            return false;
        }
        self.grant = grant.grant;
        self.deadline = deadline;
        self.seq = seq;
        self.limit = grant.max_nanos.unwrap_or(self.limit);
        true
    }

    /// Whether the slice was lent under `limit` (the request's record's), or not known.
    fn lent_under(&self, limit: u64) -> bool {
        self.limit == 0 || u64::try_from(self.limit).is_ok_and(|l| l == limit)
    }

    /// The last seconds of a window in use, and no slice of the next one held past its end:
    /// a report now gets the next window's slice ahead.
    fn next_due(&self, now: i64) -> bool {
        crate::leases::window_pre_issue_due(self.period, self.used, now, 0)
            && self.next_deadline <= self.period
    }

    /// Valid: before its deadline and, for a window, before the window's end.
    fn valid(&self, now: i64) -> bool {
        now < self.deadline && (self.period == 0 || now < self.period)
    }

    /// Admits `take` for a request whose record says `limit`.
    fn admits(&self, now: i64, take: i64, limit: u64) -> bool {
        self.valid(now) && self.lent_under(limit) && self.used.saturating_add(take) <= self.grant
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

/// One rate scope's entry: the slices of its limits in [`Lent`] order, each a count of its
/// fields (one byte) and those fields ([`crate::entry`]); a limit never leased here has none.
/// The count lets a slice with more or fewer fields (another version) be read without
/// shifting the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slices([Slice; 3]);

impl Slices {
    pub fn decode(bytes: &[u8]) -> Slices {
        let mut rest = bytes;
        Slices(std::array::from_fn(|_| {
            let Some((&count, fields)) = rest.split_first() else {
                return Slice::default();
            };
            let (slice, after) = fields.split_at((usize::from(count) * 8).min(fields.len()));
            rest = after;
            Slice::decode(slice)
        }))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 * (1 + std::mem::size_of::<Slice>()));
        for s in &self.0 {
            let at = out.len();
            out.push(0);
            let count = crate::entry::put(&mut out, &s.to_fields());
            out[at] = u8::try_from(count).unwrap_or(u8::MAX);
        }
        out
    }

    /// Every slice as in force at `now` ([`Slice::current`]).
    pub fn current(mut self, now: i64) -> Slices {
        for s in &mut self.0 {
            *s = s.current(now);
        }
        self
    }

    pub fn get(&self, lent: Lent) -> &Slice {
        &self.0[lent.index()]
    }

    pub fn get_mut(&mut self, lent: Lent) -> &mut Slice {
        &mut self.0[lent.index()]
    }
}

/// A limit's lease name (`LeaseItem.scope`): `<level>:<kind>:<value>`.
fn lease_scope(lent: Lent, d: &Descriptor) -> String {
    scope_name(lent.level(), &[d.kind, d.value.as_str()])
}

/// A rate scope's entry, holding all its slices.
fn entry_key(d: &Descriptor) -> String {
    format!("{RATE_LEASE_PREFIX}{}:{}", d.kind, d.value)
}

/// The entry holding a lease's slice (`scope` as in [`LeaseItem::scope`]), and which slice.
pub fn scope_entry(scope: &str) -> Option<(String, Lent)> {
    let (level, rest) = scope.split_once(':')?;
    Some((format!("{RATE_LEASE_PREFIX}{rest}"), Lent::of_level(level)?))
}

/// A lease's slice as stored (`None`: never leased here).
pub fn read_slice<S: VersionedStore>(store: &S, scope: &str) -> Option<Slice> {
    let (key, lent) = scope_entry(scope)?;
    let (bytes, _) = store.get(&key)?;
    Some(*Slices::decode(&bytes).get(lent)).filter(|s| *s != Slice::default())
}

/// [`read_slice`] as in force at `now` ([`Slice::current`]).
fn slice_at<S: VersionedStore>(store: &S, scope: &str, now: i64) -> Option<Slice> {
    read_slice(store, scope).map(|s| s.current(now))
}

/// Changes one lease's slice in its entry (one compare-and-set): `decide` returns `None` to
/// leave it as it is. A missing entry is created only if `create`.
fn update_slice<S: VersionedStore, T>(
    store: &S,
    scope: &str,
    now: i64,
    create: bool,
    mut decide: impl FnMut(&mut Slice) -> Option<T>,
) -> Option<T> {
    let (key, lent) = scope_entry(scope)?;
    update(store, &key, now, |v| {
        if v.is_none() && !create {
            return Decision::Keep(None);
        }
        let mut slices = v.map(Slices::decode).unwrap_or_default();
        let s = slices.get_mut(lent);
        *s = s.current(now);
        match decide(s) {
            Some(t) => Decision::Write(slices.encode(), Some(t)),
            None => Decision::Keep(None),
        }
    })
    .ok()
    .flatten()
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
        held_seq: u64::try_from(s.seq).unwrap_or(0),
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

/// The leased limits of a scope, in [`Lent`] order.
fn limits_of(d: &Descriptor) -> impl Iterator<Item = (Lent, u64)> + '_ {
    Lent::ALL
        .into_iter()
        .filter_map(|lent| Some((lent, lent.limit(d)?)))
}

/// The limits whose slice could not admit this request now (read only, one read per scope):
/// asked for in the same borrow as a budget's, so one hop serves both.
pub fn to_borrow<S: VersionedStore>(
    store: &S,
    descriptors: &[Descriptor],
    token_estimate: u64,
    now: i64,
) -> Vec<LeaseItem> {
    let estimate = i64::try_from(token_estimate).unwrap_or(i64::MAX);
    let mut items = Vec::new();
    for d in descriptors {
        if limits_of(d).next().is_none() {
            continue;
        }
        let slices = store
            .get(&entry_key(d))
            .map(|(v, _)| Slices::decode(&v).current(now))
            .unwrap_or_default();
        for (lent, limit) in limits_of(d) {
            let s = slices.get(lent);
            let take = lent.take(estimate);
            if !s.admits(now, take, limit) {
                items.push(lease_item(lent, d, limit, s, s.want(take, now)));
            }
        }
    }
    items
}

/// A limit that cannot admit, where no borrow (or no more) can help.
enum Problem {
    /// The slice, for the message.
    Refused(Slice),
    Unavailable,
    Local,
}

/// What one scope's compare-and-set decided.
struct ScopeCheck {
    /// What was taken from each slice.
    took: [Option<i64>; 3],
    /// The slices as written.
    slices: Slices,
    renew: Vec<LeaseItem>,
    borrow: Vec<LeaseItem>,
    problem: Option<(Lent, Problem)>,
}

/// What an admission took from one scope's entry, with each slice's period then.
struct Taken {
    key: String,
    took: [Option<i64>; 3],
    periods: [i64; 3],
}

/// Fleet mode's [`crate::rate_limits::admit`]: LiteLLM's order (rpm of every scope, then
/// parallel slots, then tpm; the first refusal in that order is the answer, and rpm counts of
/// a refused request are kept, as LiteLLM counts refused requests), against this Envoy's
/// slices, one compare-and-set per scope as with fleet mode off. `Borrow` when a limit has no
/// valid slice, its slice is used up or was lent under another limit than the request's
/// record says (an admin change: the sidecar answers under the new one), unless the fleet has used the whole rpm window already
/// (a 429 with no hop). Once a limit must be borrowed nothing more is taken (a borrow gives
/// everything back); once a slots or tpm refusal is known, later scopes take rpm only.
pub fn admit<S: VersionedStore>(
    store: &S,
    descriptors: &[Descriptor],
    token_estimate: u64,
    now: i64,
    fleet: FleetCheck<'_>,
) -> Result<Leased, ApiError> {
    let estimate = i64::try_from(token_estimate).unwrap_or(i64::MAX);
    let mut statuses: [Vec<LimitStatus>; 3] = Default::default();
    let mut held = Vec::new();
    let mut taken: Vec<Taken> = Vec::new();
    let mut renew = Vec::new();
    let mut borrow: Vec<LeaseItem> = Vec::new();
    // The first slots or tpm problem in LiteLLM's order so far (an rpm one is answered at once).
    let mut pending: Option<(Lent, Problem, &Descriptor, u64)> = None;
    for d in descriptors {
        if limits_of(d).next().is_none() {
            continue;
        }
        let key = entry_key(d);
        let borrowing = !borrow.is_empty();
        let pending_at = pending.as_ref().map(|(lent, ..)| lent.index());
        let outcome = update(store, &key, now, |v| {
            let mut slices = v
                .map(|b| Slices::decode(b).current(now))
                .unwrap_or_default();
            let mut check = ScopeCheck {
                took: [None; 3],
                slices: Slices::default(),
                renew: Vec::new(),
                borrow: Vec::new(),
                problem: None,
            };
            let mut fits = [false; 3];
            let mut changed = false;
            for (lent, limit) in limits_of(d) {
                let first_problem = check
                    .problem
                    .as_ref()
                    .map(|(l, _)| l.index())
                    .or(pending_at);
                if first_problem.is_some_and(|at| at <= lent.index()) {
                    break;
                }
                let take = lent.take(estimate);
                let s = slices.get_mut(lent);
                if s.admits(now, take, limit) {
                    fits[lent.index()] = true;
                    continue;
                }
                let scope = lease_scope(lent, d);
                let spent = i64::try_from(limit).unwrap_or(i64::MAX);
                let problem = match fleet.after_borrow {
                    // The fleet has used the whole window (requests are not given back): no
                    // hop can help until it ends.
                    None if lent == Lent::Rpm && s.valid(now) && s.fleet_holding() >= spent => {
                        Some(Problem::Refused(*s))
                    }
                    // Asked in that borrow and still short; one not asked ran out while the
                    // request waited: another round.
                    Some(borrowed) if borrowed.asked(&scope) => {
                        Some(after_borrow(borrowed, &scope, *s))
                    }
                    _ => None,
                };
                match problem {
                    Some(p) => check.problem = Some((lent, p)),
                    None => {
                        s.waiting = s.waiting.saturating_add(take);
                        changed = true;
                        let want = s.want(take, now).max(s.waiting);
                        check.borrow.push(lease_item(lent, d, limit, s, want));
                    }
                }
            }
            if !borrowing && check.borrow.is_empty() {
                let refusing = pending_at.is_some() || check.problem.is_some();
                for (lent, limit) in limits_of(d) {
                    if !fits[lent.index()] || (refusing && lent != Lent::Rpm) {
                        continue;
                    }
                    let take = lent.take(estimate);
                    let s = slices.get_mut(lent);
                    s.used = s.used.saturating_add(take);
                    s.peak = s.peak.max(take);
                    // As a budget's (`budgets::fleet_rule`): the cheap tests first.
                    let due = now.saturating_sub(s.asked) >= RENEW_EVERY_MICROS
                        && (s.deadline.saturating_sub(now) < fleet.ttl_micros / 2
                            || s.grant.saturating_sub(s.used)
                                < take.max(demand(s.asked, s.asked_used, s.used, now)));
                    if due {
                        check
                            .renew
                            .push(lease_item(lent, d, limit, s, s.want(take, now)));
                        s.asked = now;
                        s.asked_used = s.used;
                        s.peak = take;
                    }
                    check.took[lent.index()] = Some(take);
                    changed = true;
                }
            }
            check.slices = slices.clone();
            if changed {
                Decision::Write(slices.encode(), check)
            } else {
                Decision::Keep(check)
            }
        });
        let check = match outcome {
            Ok(check) => check,
            Err(e) => {
                give_back(store, &taken, now, |lent| lent != Lent::Rpm);
                return Err(store_error(e));
            }
        };
        if check.took.iter().any(Option::is_some) {
            for (lent, limit) in limits_of(d) {
                if check.took[lent.index()].is_none() {
                    continue;
                }
                let s = check.slices.get(lent);
                statuses[lent.index()].push(LimitStatus {
                    kind: d.kind,
                    limit_type: lent.limit_type(),
                    limit,
                    remaining: limit.saturating_sub(u64::try_from(s.fleet_holding()).unwrap_or(0)),
                });
            }
            let slot = check.took[Lent::Slots.index()].is_some();
            let tokens = check.took[Lent::Tpm.index()]
                .map(|_| (check.slices.get(Lent::Tpm).period, token_estimate));
            if slot || tokens.is_some() {
                held.push(Held {
                    key: key.clone(),
                    slot,
                    tokens,
                    leased: true,
                });
            }
            taken.push(Taken {
                key,
                took: check.took,
                periods: Lent::ALL.map(|lent| check.slices.get(lent).period),
            });
        }
        renew.extend(check.renew);
        borrow.extend(check.borrow);
        if let Some((lent, problem)) = check.problem {
            let limit = lent.limit(d).unwrap_or(0);
            if lent == Lent::Rpm {
                return answer_problem(store, &taken, now, (lent, problem, d, limit));
            }
            if pending
                .as_ref()
                .is_none_or(|(first, ..)| lent.index() < first.index())
            {
                pending = Some((lent, problem, d, limit));
            }
        }
    }
    if let Some(first) = pending {
        return answer_problem(store, &taken, now, first);
    }
    if borrow.is_empty() {
        let [mut rpm, mut slots, mut tpm] = statuses;
        rpm.append(&mut slots);
        rpm.append(&mut tpm);
        let ticket = Ticket {
            held,
            statuses: rpm,
        };
        return Ok(Leased::Admitted { ticket, renew });
    }
    // Taken again after the borrow: everything goes back, rpm counts too.
    give_back(store, &taken, now, |_| true);
    borrow.extend(renew);
    Ok(Leased::Borrow(borrow))
}

/// The answer to the first problem in LiteLLM's order: a 429 for a refusal (the rpm counts
/// taken stay, as LiteLLM counts refused requests; slots and tokens go back), else as
/// `on_no_lease` says.
fn answer_problem<S: VersionedStore>(
    store: &S,
    taken: &[Taken],
    now: i64,
    (lent, problem, d, limit): (Lent, Problem, &Descriptor, u64),
) -> Result<Leased, ApiError> {
    let e = match problem {
        Problem::Refused(s) => {
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
        Problem::Unavailable => crate::budgets::no_lease(),
        Problem::Local => {
            give_back(store, taken, now, |_| true);
            return Ok(Leased::Local);
        }
    };
    give_back(store, taken, now, |lent| lent != Lent::Rpm);
    Err(e)
}

/// A limit that still cannot admit after a borrow that asked for it: refused if the sidecar
/// answered for it, else as `on_no_lease` says.
fn after_borrow(borrowed: &Borrowed, scope: &str, s: Slice) -> Problem {
    if borrowed.answered.iter().any(|(name, _)| name == scope) {
        return Problem::Refused(s);
    }
    match borrowed.policy {
        NoLeasePolicy::Deny => Problem::Unavailable,
        NoLeasePolicy::Local => Problem::Local,
    }
}

/// Undoes takes of this admission (`which` of them), each in the period it was made in: one
/// compare-and-set per scope.
fn give_back<S: VersionedStore>(
    store: &S,
    taken: &[Taken],
    now: i64,
    which: impl Fn(Lent) -> bool,
) {
    for t in taken {
        let undo: Vec<(Lent, i64)> = Lent::ALL
            .into_iter()
            .filter(|lent| which(*lent))
            .filter_map(|lent| Some((lent, t.took[lent.index()]?)))
            .collect();
        if undo.is_empty() {
            continue;
        }
        let _ = update(store, &t.key, now, |v| {
            let Some(bytes) = v else {
                return Decision::Keep(());
            };
            let mut slices = Slices::decode(bytes);
            let mut changed = false;
            for &(lent, take) in &undo {
                let s = slices.get_mut(lent);
                if s.period == t.periods[lent.index()] {
                    s.used = s.used.saturating_sub(take).max(0);
                    changed = true;
                }
            }
            if changed {
                Decision::Write(slices.encode(), ())
            } else {
                Decision::Keep(())
            }
        });
    }
}

/// Ends a request's hold on a scope's leased limits ([`crate::rate_limits::release`]), in one
/// compare-and-set: a slot is given back; a tpm reservation is settled to `actual_tokens`
/// (`None`: refunded), the difference given back or added to `used`; in a later window only
/// the real count is added.
pub fn release<S: VersionedStore>(store: &S, held: &Held, actual_tokens: Option<u64>, now: i64) {
    let _ = update(store, &held.key, now, |v| {
        let Some(bytes) = v else {
            return Decision::Keep(());
        };
        let mut slices = Slices::decode(bytes);
        if held.slot {
            let s = slices.get_mut(Lent::Slots);
            s.released = s.released.saturating_add(1).min(s.used);
        }
        if let Some((period, reserved)) = held.tokens {
            let s = slices.get_mut(Lent::Tpm);
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
        Decision::Write(slices.encode(), ())
    });
}

/// Applies one grant of the answer to lease call `seq` to its slice (created if missing), with
/// the slice deadline `deadline`: a grant for the slice's period in seq order
/// ([`Slice::take_answer`]: a later shrink at once, an earlier answer ignored); a grant for a
/// later window (the sidecar opened it) starts that window from nothing; an answer for an
/// earlier window is ignored. Returns whether it was for the slice's window (applied, or
/// already by a later answer).
pub fn apply_grant<S: VersionedStore>(
    store: &S,
    grant: &LeaseGrant,
    seq: i64,
    deadline: i64,
    now: i64,
) -> bool {
    update_slice(store, &grant.scope, now, true, |s| {
        if grant.period != s.period {
            if grant.period < s.period || grant.period <= now {
                return None;
            }
            *s = Slice {
                period: grant.period,
                asked: s.asked,
                peak: s.peak,
                ..Slice::default()
            };
        }
        if s.take_answer(grant, seq, deadline) {
            s.global = grant.spend;
            s.global_at = s.holding();
        }
        s.waiting = 0;
        Some(())
    })
    .is_some()
}

/// Keeps the next window's grant of an rpm/tpm slice (issued ahead, the answer's second grant
/// of the scope, to lease call `seq`) in its entry, for [`Slice::current`] to install when
/// the window ends: only one for a later window than the slice's (for the same window as the
/// one held, only a later call's answer, in seq order); one for the slice's own window (it
/// rolled meanwhile) is applied as [`apply_grant`] does.
pub fn apply_next_grant<S: VersionedStore>(
    store: &S,
    grant: &LeaseGrant,
    seq: i64,
    deadline: i64,
    now: i64,
) {
    update_slice(store, &grant.scope, now, false, |s| {
        if s.period == 0 || grant.period < s.period || now >= grant.period {
            return None;
        }
        if grant.period == s.period {
            return s.take_answer(grant, seq, deadline).then_some(());
        }
        if s.next_period == grant.period && seq <= s.next_seq {
            return None;
        }
        s.next_period = grant.period;
        s.next_grant = grant.grant;
        s.next_deadline = deadline;
        s.next_seq = seq;
        Some(())
    });
}

/// A queued renewal of a rate lease, refreshed from its slice now (`None`: no slice, or its
/// window is over; the next admission borrows for the next one).
pub fn refresh_item<S: VersionedStore>(
    store: &S,
    mut item: LeaseItem,
    now: i64,
) -> Option<LeaseItem> {
    let s = slice_at(store, &item.scope, now)?;
    if s.period != 0 && now >= s.period {
        return None;
    }
    item.period = s.period;
    item.used = s.used;
    item.held = s.grant;
    item.held_seq = u64::try_from(s.seq).unwrap_or(0);
    item.released = s.released;
    item.returning = false;
    // The limit of the slice's last answer: at least as recent as the queued item's (a
    // request whose record says another limit borrows under it first).
    if s.limit > 0 {
        item.limit = Some(s.limit);
    }
    Some(item)
}

/// A rate slice as the root tick sees it ([`crate::lease_tick`]). A window's lease keeps its
/// claim on the sidecar past its deadline, so unused room counts as held until the window ends.
pub fn tick_view<S: VersionedStore>(
    store: &S,
    scope: &str,
    now: i64,
) -> Option<crate::budgets::TickView> {
    let s = slice_at(store, scope, now)?;
    let running = s.period == 0 || now < s.period;
    Some(crate::budgets::TickView {
        mark: [s.period, s.used, s.released],
        in_use: scope.starts_with("parallel:") && s.holding() > 0,
        holds: running && s.grant > s.used,
        next_due: s.next_due(now),
    })
}

/// Gives an idle rate slice back, as [`crate::budgets::give_back_item`]: the slice ignores
/// the answers to every lease call sent so far (its seq becomes the last one numbered,
/// reported as `held_seq`).
pub fn give_back_item<S: VersionedStore>(
    store: &S,
    item: &LeaseItem,
    now: i64,
) -> Option<LeaseItem> {
    let last_seq = crate::budgets::last_lease_seq(store);
    update_slice(store, &item.scope, now, false, |s| {
        if (s.period != 0 && now >= s.period) || s.grant <= s.used {
            return None;
        }
        s.grant = s.used;
        s.deadline = 0;
        s.next_period = 0;
        s.next_grant = 0;
        s.next_deadline = 0;
        s.seq = s.seq.max(last_seq);
        s.next_seq = 0;
        Some(LeaseItem {
            period: s.period,
            used: s.used,
            held: s.grant,
            held_seq: u64::try_from(s.seq).unwrap_or(0),
            released: s.released,
            want: 0,
            returning: true,
            ..item.clone()
        })
    })
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

    /// A lease call's seq: each answer applied here is to a later call than the last.
    fn next_seq() -> u64 {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn apply(s: &MemoryStore, g: LeaseGrant) -> bool {
        crate::budgets::apply_lease_answer(
            s,
            &LeaseAnswer {
                items: vec![g.clone()],
            },
            &[g.scope],
            next_seq(),
            NOW,
            NOW,
        )
        .len()
            == 1
    }

    fn slice(s: &MemoryStore, scope: &str) -> Slice {
        read_slice(s, scope).unwrap()
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
            ..Slice::default()
        };
        assert_eq!(Slice::decode(&s.encode()), s);
        let ahead = Slice {
            next_period: 12,
            next_grant: 13,
            next_deadline: 14,
            ..s
        };
        assert_eq!(Slice::decode(&ahead.encode()), ahead);
        let answered = Slice {
            seq: 15,
            next_seq: 16,
            limit: 17,
            ..ahead
        };
        assert_eq!(Slice::decode(&answered.encode()), answered);
        let no_next = Slice { seq: 15, ..s };
        assert_eq!(Slice::decode(&no_next.encode()), no_next);
        assert_eq!(Slice::decode(b"garbage"), Slice::default());
        // A scope's entry: its slices in rpm, parallel, tpm order, each its count of fields
        // and those; one never leased has none.
        let mut slices = Slices::default();
        *slices.get_mut(Lent::Tpm) = s;
        let mut expected = vec![0, 0, 11];
        expected.extend((1..=11i64).flat_map(i64::to_le_bytes));
        assert_eq!(slices.encode(), expected);
        assert_eq!(Slices::decode(&slices.encode()), slices);
        assert_eq!(Slices::decode(b""), Slices::default());
        *slices.get_mut(Lent::Rpm) = ahead;
        assert_eq!(Slices::decode(&slices.encode()), slices);
        // A slice of another version (more fields, or fewer) does not shift the next one.
        let mut other = vec![16];
        other.extend((1..=16i64).flat_map(i64::to_le_bytes));
        other.push(0);
        other.push(2);
        other.extend([7i64, 8].into_iter().flat_map(i64::to_le_bytes));
        let read = Slices::decode(&other);
        assert_eq!(read.get(Lent::Rpm).next_deadline, 14);
        assert_eq!(*read.get(Lent::Slots), Slice::default());
        assert_eq!(
            *read.get(Lent::Tpm),
            Slice {
                period: 7,
                used: 8,
                ..Slice::default()
            }
        );
        assert_eq!(
            scope_entry("parallel:api_key:h"),
            Some((format!("{RATE_LEASE_PREFIX}api_key:h"), Lent::Slots))
        );
        assert_eq!(scope_entry("key:h"), None);
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

    /// Counts host calls, as the filter's shared data.
    #[derive(Default)]
    struct Counting {
        store: MemoryStore,
        gets: std::cell::Cell<usize>,
        sets: std::cell::Cell<usize>,
    }

    impl VersionedStore for Counting {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.gets.set(self.gets.get() + 1);
            self.store.get(key)
        }

        fn set(
            &self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), crate::shared_store::StoreError> {
            self.sets.set(self.sets.get() + 1);
            self.store.set(key, value, cas)
        }
    }

    fn user(rpm: Option<u64>) -> Descriptor {
        Descriptor {
            kind: "user",
            value: "alice".into(),
            rpm,
            tpm: None,
            max_parallel: None,
        }
    }

    /// As with fleet mode off, a scope costs one read and one compare-and-set at admission and
    /// at release, however many of its limits are leased.
    #[test]
    fn each_scope_is_read_and_written_once_per_admission_and_release() {
        let s = Counting::default();
        let d = [key(Some(10), Some(1000), Some(2)), user(Some(10))];
        for scope in [
            "rpm:api_key:hash",
            "parallel:api_key:hash",
            "rpm:user:alice",
        ] {
            assert!(apply(&s.store, grant(scope, WINDOW_END, 5, 0)));
        }
        assert!(apply(
            &s.store,
            grant("tpm:api_key:hash", WINDOW_END, 500, 0)
        ));
        assert!(s
            .store
            .get(&format!("{RATE_LEASE_PREFIX}user:alice"))
            .is_some());
        s.gets.set(0);
        let t = admitted(admit(&s, &d, 7, NOW + 1, check(None)));
        assert_eq!((s.gets.get(), s.sets.get()), (2, 2));
        assert_eq!(
            t.statuses
                .iter()
                .map(|st| (st.kind, st.limit_type, st.remaining))
                .collect::<Vec<_>>(),
            [
                ("api_key", LimitType::Requests, 9),
                ("user", LimitType::Requests, 9),
                ("api_key", LimitType::MaxParallelRequests, 1),
                ("api_key", LimitType::Tokens, 993),
            ]
        );
        // One hold for the key's slot and tokens.
        assert_eq!(t.held.len(), 1);
        s.gets.set(0);
        s.sets.set(0);
        crate::rate_limits::release(&s, &t, Some(3), NOW + 2);
        assert_eq!((s.gets.get(), s.sets.get()), (1, 1));
        let (par, tpm) = (
            slice(&s.store, "parallel:api_key:hash"),
            slice(&s.store, "tpm:api_key:hash"),
        );
        assert_eq!(
            (par.used, par.released, tpm.used, tpm.released),
            (1, 1, 7, 4)
        );
        assert_eq!(slice(&s.store, "rpm:user:alice").used, 1);
    }

    fn answered(scopes: &[&str]) -> Borrowed {
        Borrowed {
            answered: scopes.iter().map(|s| (s.to_string(), 0)).collect(),
            policy: NoLeasePolicy::Deny,
            asked: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Scopes are checked one entry at a time, yet the answer is LiteLLM's: the first refusal
    /// in the order rpm of every scope, slots, tpm.
    #[test]
    fn a_later_scopes_rpm_refusal_comes_before_an_earlier_scopes_tpm_or_slots_refusal() {
        let s = MemoryStore::default();
        let d = [key(Some(10), Some(100), Some(1)), user(Some(10))];
        for (scope, amount) in [
            ("rpm:api_key:hash", 5),
            ("parallel:api_key:hash", 1),
            ("tpm:api_key:hash", 10),
            ("rpm:user:alice", 1),
        ] {
            assert!(apply(&s, grant(scope, WINDOW_END, amount, 0)));
        }
        admitted(admit(&s, &d[1..], 1, NOW + 1, check(None)));
        let all = answered(&["tpm:api_key:hash", "rpm:user:alice"]);
        let e = admit(&s, &d, 50, NOW + 2, check(Some(&all))).unwrap_err();
        assert!(
            e.message.contains("for user: alice. Limit type: requests"),
            "{}",
            e.message
        );
        // The key's rpm counts (LiteLLM counts refused requests); its slot went back.
        assert_eq!(slice(&s, "rpm:api_key:hash").used, 1);
        assert_eq!(slice(&s, "parallel:api_key:hash").used, 0);
        // Slots before tpm: the key's slot is taken, so the next one is refused for slots,
        // and the user's rpm (room again) still counts.
        assert!(apply(&s, grant("rpm:user:alice", WINDOW_END, 5, 0)));
        let t = admitted(admit(&s, &d, 5, NOW + 3, check(None)));
        let slots = answered(&["parallel:api_key:hash", "tpm:api_key:hash"]);
        let e = admit(&s, &d, 50, NOW + 4, check(Some(&slots))).unwrap_err();
        assert!(
            e.message.contains("Limit type: max_parallel_requests"),
            "{}",
            e.message
        );
        assert_eq!(slice(&s, "rpm:user:alice").used, 3);
        assert_eq!(slice(&s, "tpm:api_key:hash").used, 5);
        crate::rate_limits::release(&s, &t, Some(5), NOW + 5);
    }

    /// FLEET.md §4.9: in a window's last seconds, with use in it, the root tick reports the
    /// slice; the answer's second grant (the next window, back to back) is kept in the entry
    /// and installed when the window ends: the first request after it does not borrow.
    #[test]
    fn the_next_window_issued_ahead_is_installed_when_the_window_ends() {
        let s = MemoryStore::default();
        let d = [key(Some(100), Some(1000), None)];
        let next_end = WINDOW_END + 60_000_000;
        let sent = WINDOW_END - 4_000_000;
        let both = |grants: Vec<LeaseGrant>, at: i64| {
            let asked: Vec<String> = grants.iter().map(|g| g.scope.clone()).collect();
            crate::budgets::apply_lease_answer(
                &s,
                &LeaseAnswer { items: grants },
                &asked,
                next_seq(),
                at,
                at,
            )
        };
        both(
            vec![
                grant("rpm:api_key:hash", WINDOW_END, 10, 0),
                grant("tpm:api_key:hash", WINDOW_END, 100, 0),
            ],
            NOW,
        );
        let due = |at| tick_view(&s, "rpm:api_key:hash", at).unwrap().next_due;
        assert!(!due(sent), "no use in the window yet");
        let t = admitted(admit(&s, &d, 30, NOW + 1, check(None)));
        assert!(!due(NOW + 2), "not in the last seconds");
        assert!(due(sent));
        let applied = both(
            vec![
                grant("rpm:api_key:hash", WINDOW_END, 10, 1),
                grant("rpm:api_key:hash", next_end, 7, 0),
                grant("tpm:api_key:hash", WINDOW_END, 100, 30),
                grant("tpm:api_key:hash", next_end, 70, 0),
            ],
            sent,
        );
        assert_eq!(
            applied.len(),
            2,
            "the next windows' grants are kept, not applied"
        );
        let deadline = sent + TTL - 500_000;
        let rpm = slice(&s, "rpm:api_key:hash");
        assert_eq!(
            (
                rpm.period,
                rpm.grant,
                rpm.next_period,
                rpm.next_grant,
                rpm.next_deadline
            ),
            (WINDOW_END, 10, next_end, 7, deadline)
        );
        assert!(!due(sent + 1_000_000), "held");
        // The call reserved in the old window settles after the roll: its real count lands in
        // the new window (as with fleet mode off).
        let after = WINDOW_END + 1;
        let t2 = admitted(admit(&s, &d, 20, after, check(None)));
        assert_eq!(t2.statuses[0].remaining, 99);
        let (rpm, tpm) = (slice(&s, "rpm:api_key:hash"), slice(&s, "tpm:api_key:hash"));
        assert_eq!(
            (
                rpm.period,
                rpm.used,
                rpm.grant,
                rpm.deadline,
                rpm.next_period
            ),
            (next_end, 1, 7, deadline, 0)
        );
        assert_eq!((tpm.period, tpm.used, tpm.grant), (next_end, 20, 70));
        assert_eq!(
            rpm.asked, WINDOW_END,
            "the demand counts from the window's start"
        );
        crate::rate_limits::release(&s, &t, Some(6), after + 1);
        assert_eq!(slice(&s, "tpm:api_key:hash").used, 26);
        // A late answer for the old window changes nothing; one for the new window (its
        // first renewal, a later call) is applied.
        assert!(both(vec![grant("rpm:api_key:hash", WINDOW_END, 50, 0)], after).is_empty());
        both(vec![grant("rpm:api_key:hash", next_end, 9, 0)], after);
        assert_eq!(slice(&s, "rpm:api_key:hash").grant, 9);
    }

    #[test]
    fn without_a_valid_slice_ahead_the_first_request_after_a_window_borrows() {
        let s = MemoryStore::default();
        let d = [key(Some(100), None, None)];
        assert!(apply(&s, grant("rpm:api_key:hash", WINDOW_END, 10, 0)));
        admitted(admit(&s, &d, 1, NOW + 1, check(None)));
        assert!(matches!(
            admit(&s, &d, 1, WINDOW_END, check(None)),
            Ok(Leased::Borrow(_))
        ));
        // Issued ahead, but its deadline passed before the window ended: not installed.
        let next_end = WINDOW_END + 60_000_000;
        let sent = WINDOW_END - 4_000_000;
        crate::budgets::apply_lease_answer(
            &s,
            &LeaseAnswer {
                items: vec![
                    grant("rpm:api_key:hash", WINDOW_END, 10, 0),
                    LeaseGrant {
                        ttl_ms: 1_000,
                        ..grant("rpm:api_key:hash", next_end, 7, 0)
                    },
                ],
            },
            &["rpm:api_key:hash".into()],
            1,
            sent,
            sent,
        );
        assert_eq!(slice(&s, "rpm:api_key:hash").next_period, next_end);
        assert!(matches!(
            admit(&s, &d, 1, WINDOW_END + 1, check(None)),
            Ok(Leased::Borrow(_))
        ));
        // Slots have no window: nothing is kept ahead for them.
        assert!(apply(&s, grant("parallel:api_key:hash", 0, 2, 0)));
        apply_next_grant(
            &s,
            &grant("parallel:api_key:hash", next_end, 2, 0),
            next_seq() as i64,
            NOW + TTL,
            NOW,
        );
        assert_eq!(slice(&s, "parallel:api_key:hash").next_period, 0);
    }

    fn lent(scope: &str, amount: i64, limit: i64) -> LeaseGrant {
        LeaseGrant {
            max_nanos: Some(limit),
            ..grant(scope, WINDOW_END, amount, 0)
        }
    }

    fn answer_call(s: &MemoryStore, g: LeaseGrant, seq: u64) {
        crate::budgets::apply_lease_answer(
            s,
            &LeaseAnswer {
                items: vec![g.clone()],
            },
            &[g.scope],
            seq,
            NOW,
            NOW,
        );
    }

    /// FLEET.md §4.10: answers are applied in seq order: a later call's shrink at once (below
    /// the use: nothing more is admitted), an earlier call's answer arriving late changes
    /// nothing; a report says which answer the slice holds (`held_seq`).
    #[test]
    fn rate_answers_apply_in_seq_order_and_a_shrink_at_once() {
        let s = MemoryStore::default();
        let d = [key(Some(100), None, None)];
        let scope = "rpm:api_key:hash";
        answer_call(&s, lent(scope, 10, 100), 5);
        for _ in 0..4 {
            admitted(admit(&s, &d, 1, NOW + 1, check(None)));
        }
        // An earlier call's larger answer, late: ignored.
        answer_call(&s, lent(scope, 40, 100), 4);
        assert_eq!((slice(&s, scope).grant, slice(&s, scope).seq), (10, 5));
        // A later call's shrink (the limit lowered, same record here): applied at once.
        answer_call(&s, lent(scope, 4, 100), 7);
        assert_eq!((slice(&s, scope).grant, slice(&s, scope).seq), (4, 7));
        let answered = answered(&[scope]);
        let e = admit(&s, &d, 1, NOW + 2, check(Some(&answered))).unwrap_err();
        assert_eq!(e.status, 429);
        let queued = LeaseItem {
            scope: scope.into(),
            limit: Some(100),
            ..Default::default()
        };
        let item = refresh_item(&s, queued.clone(), NOW + 3).unwrap();
        assert_eq!((item.held, item.held_seq, item.used), (4, 7, 4));
        // A slice given back ignores every answer to a call already sent (numbered up to
        // `seq`).
        answer_call(&s, lent(scope, 9, 100), 8);
        for _ in 0..10 {
            crate::budgets::next_lease_seq(&s, NOW);
        }
        let seq = crate::budgets::next_lease_seq(&s, NOW).unwrap();
        let back = give_back_item(&s, &queued, NOW + 4).unwrap();
        assert_eq!((back.held, back.held_seq, back.returning), (4, seq, true));
        answer_call(&s, lent(scope, 9, 100), seq);
        assert_eq!(slice(&s, scope).grant, 4);
    }

    /// A request whose record says another limit than the slice was lent under (an admin
    /// change the Envoy heard of) does not take from the slice: it borrows under its own
    /// limit, and the answer (a shrink for a lowered limit) stands.
    #[test]
    fn a_slice_lent_under_another_limit_borrows_under_the_records() {
        let s = MemoryStore::default();
        let scope = "rpm:api_key:hash";
        answer_call(&s, lent(scope, 30, 100), 1);
        admitted(admit(
            &s,
            &[key(Some(100), None, None)],
            1,
            NOW + 1,
            check(None),
        ));
        let lowered = [key(Some(10), None, None)];
        let Ok(Leased::Borrow(items)) = admit(&s, &lowered, 1, NOW + 2, check(None)) else {
            panic!("borrows under the new limit")
        };
        assert_eq!(
            (
                items[0].limit,
                items[0].used,
                items[0].held,
                items[0].held_seq
            ),
            (Some(10), 1, 30, 1)
        );
        assert_eq!(slice(&s, scope).used, 1, "nothing taken");
        // The sidecar shrinks the slice to what fits the new limit: 3 more.
        answer_call(&s, lent(scope, 4, 10), 2);
        for _ in 0..3 {
            admitted(admit(&s, &lowered, 1, NOW + 3, check(None)));
        }
        let answered = answered(&[scope]);
        assert_eq!(
            admit(&s, &lowered, 1, NOW + 4, check(Some(&answered)))
                .unwrap_err()
                .status,
            429
        );
        // A slice whose limit is not known (an entry from before) admits as it is.
        let old = MemoryStore::default();
        answer_call(&old, grant(scope, WINDOW_END, 3, 0), 1);
        admitted(admit(&old, &lowered, 1, NOW + 1, check(None)));
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
