//! Fleet mode's lease arithmetic (FLEET.md §4.1, §4.5, §4.6): how much of a budget or of a
//! rate limit each Envoy holds, and how much more it may be lent. Plain functions over plain
//! numbers (nano-dollars, requests, tokens, slots; µs); the sidecar locks and stores, this
//! decides.
//!
//! Rate limits ([`Pool::Window`], [`Pool::Slots`]) are leased with the same arithmetic, in their own units: an rpm
//! window is a budget of `rpm` requests whose period is the window, with nothing ever settled
//! (`S = 0`; requests are not refunded); tpm the same in tokens; `max_parallel_requests` a pool
//! of `P` slots without a period. For them `used` counts what the Envoy took (requests, tokens
//! reserved, slots acquired) and `applied` what it gave back (tpm refunds, slots released), both
//! cumulative and reported by the Envoy itself, so `claim = max(held, grant, used) − given back`
//! and `Σ claim ≤ limit` bounds the requests of a window, its tokens, and the slots in flight.
//!
//! Invariant I1: for a budget with limit `M` and settled spend `S` in one period,
//! `S + Σ claim ≤ M` over every Envoy's lease, and no grant ever breaks it. A grant may only
//! use what [`avail`] leaves; an Envoy admits a request while its use is below its grant and
//! reserves the request's whole estimate, so it passes its grant by less than one request, and
//! the fleet passes `M` by less than one request per Envoy.

use crate::plugin_config::LostLeasePolicy;

/// How long an expired lease still counts its reported but unapplied use: an Envoy that was
/// only cut off from the sidecars may deliver those events late, and that spend must not be
/// lent to another Envoy meanwhile.
pub const EXPIRY_GRACE_MICROS: i64 = 60_000_000;

/// `L_cap`'s share of the limit: no single grant adds more than `max(ĉ, 2 % of M)`, which
/// bounds what a dead Envoy or an admin decrease can leave lent out.
pub const CAP_PERCENT: i64 = 2;

/// One Envoy's lease on one budget in one period, as the sidecar keeps it. Amounts are
/// cumulative for the period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// What the sidecar has lent this Envoy in total.
    pub grant: i64,
    /// The grant the Envoy said it enforces, in its last report.
    pub held: i64,
    /// Settled spend plus reservations in flight, in its last report.
    pub used: i64,
    /// The part of its spend already applied to the budget's settled spend (from its events).
    pub applied: i64,
    /// What it asked for beyond `used` in its last report.
    pub want: i64,
    /// Its last report's sequence number.
    pub seq: u64,
    /// When the lease lapses unless renewed (µs, the sidecar's clock).
    pub expires_at: i64,
    /// Budgets: the use total the budget was charged up to when the lease was found lost
    /// ([`lost_charge`]: its applied spend plus the estimate); 0 = never. Spend applied later
    /// is charged only beyond it ([`beyond_lost`]).
    pub lost: i64,
    /// An acknowledged shrink (FLEET.md §4.5): a renewal answered below what the Envoy may
    /// still enforce (an earlier answer's grant, in flight or applied), so the lease keeps
    /// counting that larger grant, `shrunk_from`, until the Envoy can no longer enforce it: a
    /// report saying its entry applied the shrinking answer (seq `shrunk_seq`) or a later one,
    /// or `shrunk_until`, when every answer given before the shrink has lapsed. 0 = none.
    /// Rate pools count it until acknowledged, lapsed or not ([`Lease::shrunk_in`]).
    pub shrunk_from: i64,
    pub shrunk_seq: u64,
    pub shrunk_until: i64,
}

impl Lease {
    pub fn live(&self, now: i64) -> bool {
        now < self.expires_at
    }

    /// What this lease keeps from the budget: while live, everything it may spend that is not
    /// applied yet (`max(held, grant, used) − applied`: a lowered grant counts only once a
    /// report shows the Envoy enforcing it); for [`EXPIRY_GRACE_MICROS`] after expiry, its
    /// reported use not applied yet; then nothing.
    pub fn claim(&self, now: i64) -> i64 {
        self.claim_in(Pool::Budget, now)
    }

    /// [`Lease::claim`] for a lease of `pool`. A rate lease keeps its whole claim after expiry
    /// (an Envoy may have used all of its grant before its deadline, after its last report, and
    /// nothing settles a rate lease but the Envoy's own next report): a window's until its rows
    /// go with the window, a slot pool's for [`EXPIRY_GRACE_MICROS`].
    pub fn claim_in(&self, pool: Pool, now: i64) -> i64 {
        let settled = self.settled(pool);
        let whole = self
            .held
            .max(self.grant)
            .max(self.used)
            .max(self.shrunk_in(pool, now))
            .saturating_sub(settled)
            .max(0);
        let graced = now < self.expires_at.saturating_add(EXPIRY_GRACE_MICROS);
        match pool {
            _ if self.live(now) => whole,
            Pool::Window => whole,
            Pool::Slots if graced => whole,
            Pool::Budget if graced => self.used.saturating_sub(settled).max(0),
            Pool::Budget | Pool::Slots => 0,
        }
    }

    /// [`Lease::shrunk`] for a lease of `pool`. A rate pool counts the grant a shrink was made
    /// from until a report acknowledges it, even once its answers lapsed: nothing settles a
    /// rate lease, so what the Envoy took under them after its last report (up to that grant)
    /// is known only from its next report, the one acknowledging the shrink (it is made after
    /// the entry applied the shrinking answer, so its `used` has all of it).
    pub fn shrunk_in(&self, pool: Pool, now: i64) -> i64 {
        match pool {
            Pool::Budget => self.shrunk(now),
            Pool::Window | Pool::Slots => self.shrunk_from,
        }
    }

    /// The grant a shrink was made from while the Envoy may still enforce it (its answers
    /// have not all lapsed), else 0. [`renew`] drops it once a report acknowledges the shrink.
    pub fn shrunk(&self, now: i64) -> i64 {
        if now < self.shrunk_until {
            self.shrunk_from
        } else {
            0
        }
    }

    /// How much of its use the budget has been charged for: what its events brought, or more
    /// once it was charged as lost (rate pools: what the Envoy gave back).
    pub fn settled(&self, pool: Pool) -> i64 {
        match pool {
            Pool::Budget => self.applied.max(self.lost),
            Pool::Window | Pool::Slots => self.applied,
        }
    }
}

/// The use total a lost budget lease is charged up to under `policy` (FLEET.md §4.8):
/// `charge_reserved` its last report's use, `charge_grant` everything it could have spent
/// (`max(held, grant, used)`), `release` nothing.
pub fn lost_target(lease: &Lease, policy: LostLeasePolicy) -> i64 {
    match policy {
        LostLeasePolicy::ChargeReserved => lease.used,
        LostLeasePolicy::ChargeGrant => lease
            .held
            .max(lease.grant)
            .max(lease.used)
            .max(lease.shrunk_from),
        LostLeasePolicy::Release => 0,
    }
}

/// What to charge a budget for a lease at `now`: nothing while it is live or its events may
/// still arrive (the [`EXPIRY_GRACE_MICROS`] after expiry, during which [`Lease::claim`] keeps
/// its unapplied use from being lent); then the part of [`lost_target`] the budget has not
/// been charged for yet, by events or by an earlier lost charge. Charging it and storing
/// `lost = lost_target` makes a second finding charge 0.
pub fn lost_charge(lease: &Lease, policy: LostLeasePolicy, now: i64) -> i64 {
    if now < lease.expires_at.saturating_add(EXPIRY_GRACE_MICROS) {
        return 0;
    }
    lost_target(lease, policy)
        .saturating_sub(lease.settled(Pool::Budget))
        .max(0)
}

/// Of `nanos` of spend newly applied to a budget lease (as it was before), the part to charge
/// the budget: what the events of an Envoy that was only cut off bring beyond the lost charge
/// already made for them. The rest nets the estimate, so nothing is charged twice.
pub fn beyond_lost(lease: &Lease, nanos: i64) -> i64 {
    let covered = lease.lost.saturating_sub(lease.applied).max(0);
    nanos.saturating_sub(covered.min(nanos.max(0)))
}

/// The other Envoys' leases on a budget, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Others {
    /// Σ [`Lease::claim`].
    pub claims: i64,
    /// Σ `want` of the live ones (the demand the sizing shares among).
    pub wants: i64,
}

impl Others {
    pub fn of<'a>(leases: impl IntoIterator<Item = &'a Lease>, now: i64) -> Others {
        Others::of_in(Pool::Budget, leases, now)
    }

    /// [`Others::of`] for leases of `pool`.
    pub fn of_in<'a>(pool: Pool, leases: impl IntoIterator<Item = &'a Lease>, now: i64) -> Others {
        leases.into_iter().fold(Others::default(), |acc, l| Others {
            claims: acc.claims.saturating_add(l.claim_in(pool, now)),
            wants: if l.live(now) {
                acc.wants.saturating_add(l.want.max(0))
            } else {
                acc.wants
            },
        })
    }
}

/// What is left to lend to an Envoy: `M − S − others' claims − its own unapplied use`.
/// Negative after an admin decrease below what is already spent and lent.
pub fn avail(max: i64, spend: i64, others: i64, used: i64, applied: i64) -> i64 {
    max.saturating_sub(spend)
        .saturating_sub(others)
        .saturating_sub(used.saturating_sub(applied).max(0))
}

/// What a lease lends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pool {
    /// A dollar budget: `applied` is settled spend, from the spend events; a grant adds at most
    /// `max(ĉ, 2 % of M)`.
    #[default]
    Budget,
    /// An rpm/tpm window: `applied` is what the Envoy reported giving back
    /// ([`Report::released`]: tpm refunds); no 2 % cap (a rate grant left unused by a dead Envoy
    /// only under-delivers, and 2 % of a small rpm would be one request per hop). An expired
    /// lease keeps claiming its use until the window's rows go (use in a window stays used).
    Window,
    /// A parallel-slot pool (no period): as [`Pool::Window`], `applied` being the slots given
    /// back; an expired lease's slots still out come back after [`EXPIRY_GRACE_MICROS`] (a
    /// killed Envoy's calls are gone by then).
    Slots,
}

/// One Envoy's report on one budget (a `LeaseItem`, already in the budget's current period:
/// an item from another period reports `used`/`held` 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub seq: u64,
    pub used: i64,
    pub held: i64,
    /// The seq of the answer `held` came from; the Envoy's entry (budget or rate slice)
    /// applies no answer to a call numbered at or below it (a slice given back: the last seq
    /// sent before).
    pub held_seq: u64,
    pub want: i64,
    /// `ĉ`: its largest recent reservation; 0 = not said, then `want` stands for it.
    pub reservation: i64,
    pub returning: bool,
    /// Rate pools: what it has given back in total (tpm refunds, slots released).
    pub released: i64,
    pub pool: Pool,
}

/// The answer to a report, and the lease to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// A stale or repeated report (`seq` not above the lease's): the current grant, nothing
    /// stored.
    Stale { grant: i64 },
    /// The new lease (its `grant` is the answer).
    Renewed(Lease),
}

impl Renewal {
    pub fn grant(&self) -> i64 {
        match self {
            Renewal::Stale { grant } => *grant,
            Renewal::Renewed(l) => l.grant,
        }
    }
}

/// How much more to lend (§4.6): `want`, capped by `L_cap = max(ĉ, 2 % of M)` and by the
/// Envoy's share of what is left: half of `avail` split by demand (`want / Σ wants`), so
/// half of what is left always stays unlent and slices shrink toward the end; but while
/// anything is left, one request's worth (`min(ĉ, avail)`) is always given. Never above
/// `avail`, never negative.
pub fn size(max: i64, avail: i64, want: i64, reservation: i64, all_wants: i64) -> i64 {
    size_in(Pool::Budget, max, avail, want, reservation, all_wants)
}

/// [`size`] for a lease of `pool` (rate pools: no cap but `avail`).
pub fn size_in(
    pool: Pool,
    max: i64,
    avail: i64,
    want: i64,
    reservation: i64,
    all_wants: i64,
) -> i64 {
    if avail <= 0 || want <= 0 {
        return 0;
    }
    let one_request = if reservation > 0 {
        reservation.min(want)
    } else {
        want
    };
    let cap = match pool {
        Pool::Budget => one_request.max(max.max(0) / 100 * CAP_PERCENT),
        Pool::Window | Pool::Slots => max,
    };
    let demand = all_wants.max(want);
    // avail · want / (2 · W), in i128: nano-dollar products overflow i64.
    let share = (i128::from(avail) * i128::from(want) / (2 * i128::from(demand))) as i64;
    let floor = one_request.min(avail);
    want.min(cap).min(floor.max(share)).min(avail).max(0)
}

/// Renews one Envoy's lease on a budget with limit `max` and settled spend `spend`, given the
/// other Envoys' leases, its current lease (`None`: none in this period) and its report.
///
/// - A report whose `seq` is not above the lease's is stale: the current grant, unchanged
///   (budgets: while it fits `M`; else nothing beyond the reported use).
/// - `returning`: the grant drops to what it used (the Envoy lowered its own entry first);
///   for a budget that use is taken as reported, even below an earlier report's.
/// - Otherwise the grant is `used + size(..)`, never below `used`, and not below what the
///   Envoy may enforce of a live lease while that still fits `M` (I1).
/// - A shrink (FLEET.md §4.10): when what the Envoy may enforce no longer fits (an admin
///   decrease, or other Envoys' use past their grants), the grant drops to what fits,
///   `used + avail`, never below `used`. The filter applies answers in seq order (budgets and
///   rate slices alike), so the shrink takes effect on the Envoy when this answer lands; until
///   it is sure of that, the lease keeps counting what the Envoy may enforce
///   ([`Lease::shrunk_from`]).
/// - What the Envoy may enforce of the answers given so far: nothing once the lease expired
///   (the Envoy's deadlines pass before the sidecar's expiry); only `held` once its entry
///   ignores every one of them (`held_seq ≥` the lease's seq: it applied the latest answer, or
///   gave its slice back); else also the lease's grant, and a shrink's `shrunk_from` not yet
///   acknowledged (`held_seq <` its seq) nor lapsed (every answer after a shrink is at most
///   the lease's grant, or it is a shrink again).
/// - `expires_at = max(old, now + ttl)`.
/// - Rate pools: `spend` is 0 and the lease's `applied` is the largest `released` reported.
pub fn renew(
    max: i64,
    spend: i64,
    others: Others,
    current: Option<&Lease>,
    report: &Report,
    now: i64,
    ttl_micros: i64,
) -> Renewal {
    let old = current.copied().unwrap_or_default();
    if current.is_some() && report.seq <= old.seq {
        // The Envoy gets (or lost) the later call's answer; this one repeats its grant while
        // it fits the limit. After a decrease it does not: the answer gives nothing beyond
        // the use reported (its Envoy may have lost the later answer, and the grant that
        // answer brought was lent when the limit was higher).
        let fits = avail(
            max,
            spend,
            others.claims,
            old.grant,
            old.settled(report.pool),
        ) >= 0;
        return Renewal::Stale {
            grant: if fits {
                old.grant
            } else {
                old.grant.min(report.used.max(0))
            },
        };
    }
    // A budget lease given back says what the Envoy finally used (its reservations settled
    // since lower reports): its events will bring that much, so a later lost charge is 0.
    let used = if report.returning && report.pool == Pool::Budget {
        report.used.max(0)
    } else {
        report.used.max(old.used).max(0)
    };
    let want = report.want.max(0);
    let applied = match report.pool {
        // Spend applied by events (and charged as lost) counts as settled.
        Pool::Budget => old.settled(Pool::Budget),
        // Given back can never exceed taken.
        Pool::Window | Pool::Slots => report.released.max(old.applied).clamp(0, used),
    };
    let live = current.is_some() && old.live(now);
    let unacked = match report.pool {
        _ if report.held_seq >= old.shrunk_seq => 0,
        Pool::Budget if live => old.shrunk(now),
        Pool::Budget => 0,
        Pool::Window | Pool::Slots => old.shrunk_from,
    };
    let enforceable = if !live {
        0
    } else if report.held_seq >= old.seq {
        report.held.max(0)
    } else {
        report.held.max(old.grant).max(unacked)
    };
    let grant = if report.returning {
        used
    } else {
        let room = avail(max, spend, others.claims, used, applied);
        let add = size_in(
            report.pool,
            max,
            room,
            want,
            report.reservation,
            others.wants.saturating_add(want),
        );
        // What fits I1: `used + avail`, never below `used`.
        let kept = enforceable.min(used.saturating_add(room).max(used));
        used.saturating_add(add).max(kept)
    };
    // Below what the Envoy may enforce: counted until acknowledged or lapsed (every answer
    // given so far lapses by the lease's expiry before this renewal). A shrink not yet
    // acknowledged that this answer does not lower further stays as it was, so the Envoy's
    // applying that shrink's answer acknowledges it.
    // A rate pool keeps counting a shrink not acknowledged even once lapsed
    // ([`Lease::shrunk_in`]); and a lapsed lease's grant, renewed by a report that may have
    // been sent before the Envoy applied it and took from it: until a later report says the
    // Envoy applied this answer (it has all the use made under the old one), as a shrink.
    let lapsed_grant = match report.pool {
        Pool::Window | Pool::Slots if current.is_some() && !live && report.held_seq < old.seq => {
            old.grant
        }
        _ => 0,
    };
    let counted = enforceable.max(unacked).max(lapsed_grant);
    let (shrunk_from, shrunk_seq, shrunk_until) = if grant >= counted {
        (0, 0, 0)
    } else if unacked > 0 && counted <= unacked && grant >= old.grant {
        (old.shrunk_from, old.shrunk_seq, old.shrunk_until)
    } else {
        (counted, report.seq, old.expires_at)
    };
    Renewal::Renewed(Lease {
        grant,
        held: report.held.max(0),
        used,
        applied: match report.pool {
            Pool::Budget => old.applied,
            Pool::Window | Pool::Slots => applied,
        },
        want: if report.returning { 0 } else { want },
        seq: report.seq,
        expires_at: old.expires_at.max(now.saturating_add(ttl_micros)),
        lost: old.lost,
        shrunk_from,
        shrunk_seq,
        shrunk_until,
    })
}

/// The end (µs) of the rpm/tpm window in force at `now`, from `running_end`, the earliest end
/// after `now` among the scope's leases: that window while it runs (one issued ahead starts
/// where the one before it ends, [`next_window`], so the earliest end after `now` is the
/// window `now` is in); else a new one from `now` (the first lease call after a window ended
/// opens the next, as LiteLLM's first request does). Windows follow one another and never
/// overlap.
pub fn rate_window(running_end: Option<i64>, now: i64, window_micros: i64) -> i64 {
    match running_end {
        Some(end) if end > now => end,
        _ => now.saturating_add(window_micros.max(1)),
    }
}

/// The end of the window issued ahead after the one ending at `end` (FLEET.md §4.9): it
/// starts exactly there, back to back, so continuous traffic crosses the end without a gap
/// and without two windows overlapping.
pub fn next_window(end: i64, window_micros: i64) -> i64 {
    end.saturating_add(window_micros.max(1))
}

/// Whether a report on the rpm/tpm window ending at `window_end`, with `used` taken in it,
/// gets the next window's slice ahead at `now` (`slack` as in [`pre_issue_due`]): only a
/// window in use, so an idle Envoy is not lent the next window's room.
pub fn window_pre_issue_due(window_end: i64, used: i64, now: i64, slack: i64) -> bool {
    used > 0 && pre_issue_due(window_end, now, slack)
}

/// How far ahead a slice should last (FLEET.md §4.6, `H`).
const DEMAND_HORIZON_MICROS: i128 = 5_000_000;
/// The filter enqueues a scope for renewal at most this often.
pub const RENEW_EVERY_MICROS: i64 = 1_000_000;
/// In the last `H` of a budget's period the next period's slice is issued ahead (FLEET.md
/// §4.7), so the first request after the reset finds a slice and does not pause to borrow.
pub const PRE_ISSUE_MICROS: i64 = DEMAND_HORIZON_MICROS as i64;

/// Whether a budget whose period ends at `period_end` is in its last [`PRE_ISSUE_MICROS`] at
/// `now` (with `slack` more, for the sidecar: the Envoy's clock may run ahead of it).
pub fn pre_issue_due(period_end: i64, now: i64, slack: i64) -> bool {
    period_end > now && period_end.saturating_sub(now) <= PRE_ISSUE_MICROS.saturating_add(slack)
}

/// An Envoy returns the slices of a scope it has not used for this long (FLEET.md §4.4; the
/// default of `tollgate_fleet.idle_return_seconds`).
pub const IDLE_RETURN_MICROS: i64 = 30_000_000;

/// Use expected over the next [`DEMAND_HORIZON_MICROS`], from the use since the last ask (at
/// `asked`, when the use was `asked_used`); 0 before any ask.
pub fn demand(asked: i64, asked_used: i64, used: i64, now: i64) -> i64 {
    if asked <= 0 || now <= asked {
        return 0;
    }
    let grown = i128::from(used.saturating_sub(asked_used).max(0));
    let elapsed = i128::from(now.saturating_sub(asked));
    i64::try_from(grown * DEMAND_HORIZON_MICROS / elapsed).unwrap_or(i64::MAX)
}

/// The lease levels of rate limits (`LeaseItem.level`), with what each lends.
pub const RATE_LEVELS: [&str; 3] = ["rpm", "tpm", "parallel"];

/// A rate-limit lease level (else a budget's).
pub fn is_rate_level(level: &str) -> bool {
    RATE_LEVELS.contains(&level)
}

/// A rate-limit lease's scope name (`<level>:<kind>:<value>`, [`crate::budgets::scope_name`]).
pub fn is_rate_scope(scope: &str) -> bool {
    scope
        .split_once(':')
        .is_some_and(|(level, _)| is_rate_level(level))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;
    const TTL: i64 = 10_000_000;

    fn lease(grant: i64, held: i64, used: i64, applied: i64) -> Lease {
        Lease {
            grant,
            held,
            used,
            applied,
            want: 10,
            seq: 1,
            expires_at: NOW + TTL,
            ..Default::default()
        }
    }

    fn report(seq: u64, used: i64, held: i64, want: i64) -> Report {
        Report {
            seq,
            used,
            held,
            want,
            reservation: 0,
            returning: false,
            ..Default::default()
        }
    }

    /// [`renew`] at `NOW` with a fresh `seq`: the renewed lease.
    fn renewed(
        max: i64,
        spend: i64,
        others: Others,
        mine: Option<&Lease>,
        report: &Report,
    ) -> Lease {
        match renew(max, spend, others, mine, report, NOW, TTL) {
            Renewal::Renewed(l) => l,
            stale => panic!("{stale:?}"),
        }
    }

    #[test]
    fn a_live_claim_is_the_largest_of_held_grant_and_used_less_applied() {
        assert_eq!(lease(50, 30, 20, 5).claim(NOW), 45);
        assert_eq!(lease(30, 50, 20, 5).claim(NOW), 45);
        assert_eq!(lease(30, 20, 60, 5).claim(NOW), 55);
        assert_eq!(lease(30, 20, 10, 40).claim(NOW), 0);
    }

    #[test]
    fn an_expired_claim_keeps_unapplied_use_for_the_grace_then_nothing() {
        let l = lease(50, 50, 20, 5);
        assert_eq!(l.claim(NOW + TTL), 15);
        assert_eq!(l.claim(NOW + TTL + EXPIRY_GRACE_MICROS - 1), 15);
        assert_eq!(l.claim(NOW + TTL + EXPIRY_GRACE_MICROS), 0);
        assert_eq!(lease(50, 50, 20, 30).claim(NOW + TTL), 0);
    }

    #[test]
    fn others_sum_claims_and_live_wants() {
        let mut dead = lease(40, 40, 10, 0);
        dead.expires_at = NOW - 1;
        let o = Others::of(&[lease(50, 50, 20, 5), dead], NOW);
        assert_eq!(
            o,
            Others {
                claims: 55,
                wants: 10
            }
        );
    }

    #[test]
    fn avail_subtracts_spend_others_and_own_unapplied_use() {
        assert_eq!(avail(100, 30, 20, 15, 5), 40);
        assert_eq!(avail(100, 30, 20, 5, 15), 50);
        assert_eq!(avail(10, 30, 20, 0, 0), -40);
    }

    #[test]
    fn uncontended_an_envoy_gets_its_want() {
        // M = 1000, nothing spent, wants 10: well under half of what is left.
        assert_eq!(size(1000, 1000, 10, 5, 10), 10);
    }

    #[test]
    fn a_grant_is_capped_at_two_percent_of_the_limit_or_one_request() {
        assert_eq!(size(10_000, 10_000, 1_000, 50, 1_000), 200);
        // One request larger than 2 %: one request.
        assert_eq!(size(10_000, 10_000, 1_000, 700, 1_000), 700);
    }

    #[test]
    fn half_of_what_is_left_stays_unlent_shared_by_demand() {
        // avail 100, wants 30 (this one) of 60: share 100·30/120 = 25.
        assert_eq!(size(1_000_000, 100, 30, 5, 60), 25);
        // Alone: half of what is left.
        assert_eq!(size(1_000_000, 100, 80, 5, 80), 50);
    }

    #[test]
    fn while_anything_is_left_one_request_is_granted() {
        // The share (10·5/(2·1000) = 0) is below one request (5): one request.
        assert_eq!(size(1_000_000, 10, 5, 5, 1_000), 5);
        // Less than one request left: what is left.
        assert_eq!(size(1_000_000, 3, 5, 5, 1_000), 3);
        assert_eq!(size(1_000_000, 0, 5, 5, 5), 0);
        assert_eq!(size(1_000_000, -7, 5, 5, 5), 0);
    }

    #[test]
    fn a_first_report_is_granted_used_plus_the_size() {
        let l = renewed(1000, 100, Others::default(), None, &report(1, 0, 0, 10));
        assert_eq!(
            (l.grant, l.used, l.seq, l.expires_at),
            (10, 0, 1, NOW + TTL)
        );
    }

    #[test]
    fn a_stale_or_repeated_report_answers_the_current_grant() {
        let cur = Lease {
            seq: 7,
            ..lease(40, 40, 20, 0)
        };
        for seq in [6, 7] {
            let r = renew(
                1000,
                0,
                Others::default(),
                Some(&cur),
                &report(seq, 30, 40, 10),
                NOW,
                TTL,
            );
            assert_eq!(r, Renewal::Stale { grant: 40 });
        }
    }

    #[test]
    fn grants_never_drop_below_a_live_grant_that_fits_nor_used() {
        let cur = lease(40, 40, 20, 0);
        // Little room left, but the live grant fits: it stays.
        let tight = Others {
            claims: 960,
            wants: 0,
        };
        let r = renew(1000, 0, tight, Some(&cur), &report(2, 25, 40, 10), NOW, TTL);
        assert_eq!(r.grant(), 40);
        // Used beyond the grant (one request over): the grant follows used.
        let r = renew(1000, 0, tight, Some(&cur), &report(2, 45, 40, 10), NOW, TTL);
        assert_eq!(r.grant(), 45);
    }

    /// An admin decrease (FLEET.md §4.10): the live grant no longer fits, so the answer shrinks
    /// it to what fits (`used + avail`, never below `used`), and the lease keeps counting the
    /// old grant until a report says the Envoy applied the shrink (or the old answers lapse).
    #[test]
    fn a_decrease_shrinks_a_live_grant_and_counts_the_old_one_until_acknowledged() {
        let mut cur = lease(40, 40, 20, 0);
        cur.expires_at = NOW + TTL / 2;
        let others = Others {
            claims: 50,
            wants: 10,
        };
        // M lowered to 80: 80 − 50 others − 20 used leaves 10: grant 30, shrunk from 40.
        let Renewal::Renewed(l) =
            renew(80, 0, others, Some(&cur), &report(2, 20, 40, 10), NOW, TTL)
        else {
            panic!("renewed")
        };
        assert_eq!((l.grant, l.shrunk_from, l.shrunk_seq), (30, 40, 2));
        assert_eq!(l.shrunk_until, cur.expires_at);
        assert_eq!(l.claim(NOW), 40, "the old grant still counts");
        assert_eq!(l.shrunk(cur.expires_at), 0, "its answers have lapsed");
        // Lowered below what is spent and lent: the grant drops to used, not below.
        let r = renew(60, 0, others, Some(&cur), &report(2, 20, 40, 10), NOW, TTL);
        assert_eq!(r.grant(), 20);
        // A later report whose entry still holds an answer from before the shrink (seq 1):
        // the shrink is not acknowledged, the old grant still counts.
        let Renewal::Renewed(l2) = renew(80, 0, others, Some(&l), &report(3, 20, 40, 10), NOW, TTL)
        else {
            panic!("renewed")
        };
        assert_eq!((l2.grant, l2.shrunk_from), (30, 40));
        assert_eq!(l2.claim(NOW), 40);
        // The entry applied the shrinking answer (seq 2): acknowledged, only 30 counts.
        let acked = Report {
            held_seq: 2,
            ..report(4, 20, 30, 10)
        };
        let Renewal::Renewed(l3) = renew(80, 0, others, Some(&l2), &acked, NOW, TTL) else {
            panic!("renewed")
        };
        assert_eq!((l3.grant, l3.shrunk_from, l3.claim(NOW)), (30, 0, 30));
    }

    /// A lowered rpm/tpm or `max_parallel_requests` (FLEET.md §4.10) shrinks a live rate
    /// grant as a budget's: to what fits (`used + avail`, what was given back counted), never
    /// below `used`, the old grant counted until acknowledged; and a stale report after the
    /// decrease gets nothing beyond its use.
    #[test]
    fn a_lowered_rate_limit_shrinks_a_live_rate_grant_until_acknowledged() {
        for pool in [Pool::Window, Pool::Slots] {
            // Granted 40, took 20, gave 5 back (slots released, tpm refunds): 15 held.
            let cur = lease(40, 40, 20, 5);
            let others = Others {
                claims: 30,
                wants: 10,
            };
            let rate = |seq, held_seq| Report {
                pool,
                released: 5,
                held_seq,
                ..report(seq, 20, 40, 10)
            };
            // Unchanged limit 100: the live grant stays (and grows).
            assert!(renew(100, 0, others, Some(&cur), &rate(2, 1), NOW, TTL).grant() >= 40);
            // Lowered to 50: 50 − 30 others − 15 held leaves 5: grant 25, shrunk from 40.
            let Renewal::Renewed(l) = renew(50, 0, others, Some(&cur), &rate(2, 1), NOW, TTL)
            else {
                panic!("renewed")
            };
            assert_eq!(
                (l.grant, l.shrunk_from, l.shrunk_seq),
                (25, 40, 2),
                "{pool:?}"
            );
            assert_eq!(l.claim_in(pool, NOW), 35, "the old grant still counts");
            // Lowered below what the others and this Envoy hold: down to its use, not below.
            let r = renew(20, 0, others, Some(&cur), &rate(2, 1), NOW, TTL);
            assert_eq!(r.grant(), 20);
            // The shrinking answer applied (held_seq 2): only 25 counts.
            let acked = Report {
                held: 25,
                ..rate(3, 2)
            };
            let Renewal::Renewed(l2) = renew(50, 0, others, Some(&l), &acked, NOW, TTL) else {
                panic!("renewed")
            };
            assert_eq!(
                (l2.grant, l2.shrunk_from, l2.claim_in(pool, NOW)),
                (25, 0, 20)
            );
            // A stale report (seq 1) after the decrease: nothing beyond its use.
            assert_eq!(
                renew(20, 0, others, Some(&l), &rate(1, 0), NOW, TTL),
                Renewal::Stale { grant: 20 }
            );
        }
    }

    /// Two calls in flight (seq 2 and 3): the later answered first. The earlier one, stale,
    /// repeats the grant while it fits the limit, and gives nothing beyond the use reported
    /// once a decrease left no room (its Envoy may have lost the later answer).
    #[test]
    fn a_stale_report_after_a_decrease_gets_nothing_new() {
        let mut cur = lease(40, 40, 20, 0);
        cur.seq = 3;
        let others = Others {
            claims: 50,
            wants: 10,
        };
        let stale = report(2, 15, 30, 10);
        assert_eq!(
            renew(1000, 0, others, Some(&cur), &stale, NOW, TTL),
            Renewal::Stale { grant: 40 }
        );
        assert_eq!(
            renew(80, 0, others, Some(&cur), &stale, NOW, TTL),
            Renewal::Stale { grant: 15 }
        );
    }

    /// A slice given back whose entry ignores every answer sent before (`held_seq` at the
    /// lease's seq) is taken as it is; one whose entry might still apply an earlier answer is
    /// an unacknowledged shrink.
    #[test]
    fn a_return_is_taken_as_it_is_when_no_earlier_answer_can_apply() {
        let cur = lease(40, 40, 20, 0);
        let back = Report {
            returning: true,
            held_seq: 1,
            ..report(2, 22, 22, 0)
        };
        let Renewal::Renewed(l) = renew(1000, 0, Others::default(), Some(&cur), &back, NOW, TTL)
        else {
            panic!("renewed")
        };
        assert_eq!((l.grant, l.shrunk_from, l.claim(NOW)), (22, 0, 22));
        let early = Report {
            held_seq: 0,
            ..back
        };
        let Renewal::Renewed(l) = renew(1000, 0, Others::default(), Some(&cur), &early, NOW, TTL)
        else {
            panic!("renewed")
        };
        assert_eq!((l.grant, l.shrunk_from, l.claim(NOW)), (22, 40, 40));
    }

    #[test]
    fn an_expired_grant_is_void() {
        let mut cur = lease(40, 40, 20, 0);
        cur.expires_at = NOW - 1;
        let full = Others {
            claims: 1000,
            wants: 0,
        };
        let r = renew(1000, 0, full, Some(&cur), &report(2, 20, 0, 10), NOW, TTL);
        assert_eq!(r.grant(), 20);
    }

    #[test]
    fn returning_lowers_the_grant_to_used() {
        let cur = lease(40, 40, 20, 0);
        let l = renewed(
            1000,
            0,
            Others::default(),
            Some(&cur),
            &Report {
                returning: true,
                ..report(2, 22, 22, 0)
            },
        );
        assert_eq!((l.grant, l.held, l.want), (22, 22, 0));
    }

    #[test]
    fn expiry_only_moves_forward() {
        let mut cur = lease(40, 40, 20, 0);
        cur.expires_at = NOW + 3 * TTL;
        let l = renewed(
            1000,
            0,
            Others::default(),
            Some(&cur),
            &report(2, 20, 40, 10),
        );
        assert_eq!(l.expires_at, NOW + 3 * TTL);
    }

    #[test]
    fn an_admin_decrease_gives_no_room_until_spend_and_claims_are_below_it() {
        // M lowered from 1000 to 50 while 30 is spent and others claim 40.
        let o = Others {
            claims: 40,
            wants: 10,
        };
        let r = renew(50, 30, o, None, &report(1, 0, 0, 10), NOW, TTL);
        assert_eq!(r.grant(), 0);
        // Others' claims fell to 10: 10 left, half stays unlent.
        let o = Others {
            claims: 10,
            wants: 10,
        };
        let r = renew(50, 30, o, None, &report(1, 0, 0, 10), NOW, TTL);
        assert_eq!(
            r.grant(),
            size(50, 10, 10, 0, 20),
            "what the sizing gives of 10 left"
        );
        assert!(r.grant() > 0 && r.grant() <= 10);
    }

    fn rate(seq: u64, used: i64, held: i64, want: i64, released: i64) -> Report {
        Report {
            reservation: 1,
            released,
            pool: Pool::Slots,
            ..report(seq, used, held, want)
        }
    }

    #[test]
    fn a_rate_grant_is_not_capped_at_two_percent() {
        // rpm 60: 2 % would be one request per grant.
        assert_eq!(size_in(Pool::Window, 60, 60, 10, 1, 10), 10);
        assert_eq!(size_in(Pool::Budget, 60, 60, 10, 1, 10), 1);
        // Half of what is left stays unlent, as for budgets.
        assert_eq!(size_in(Pool::Slots, 60, 60, 100, 1, 100), 30);
    }

    #[test]
    fn a_rate_lease_takes_what_was_given_back_from_the_report() {
        // 4 slots, this Envoy took 3 and gave 2 back: 1 in flight, 3 free.
        let l = renewed(4, 0, Others::default(), None, &rate(1, 3, 3, 10, 2));
        assert_eq!(l.applied, 2);
        // used 3 + half of the 3 free (the one-request floor is 1).
        assert_eq!(l.grant, 3 + 1);
        assert_eq!(l.claim(NOW), 2);
        // A stale `released` never lowers what was given back; more than taken is clamped.
        let n = renewed(4, 0, Others::default(), Some(&l), &rate(2, 3, 4, 1, 1));
        assert_eq!(n.applied, 2);
        let o = renewed(4, 0, Others::default(), Some(&n), &rate(3, 3, 4, 1, 9));
        assert_eq!(o.applied, 3);
    }

    #[test]
    fn an_rpm_window_is_lent_to_the_last_request() {
        // Two Envoys on rpm 5, each asking for 10: never more than 5 lent in all, and all 5 are.
        let mut rows = [None::<Lease>, None];
        let mut used = [0i64; 2];
        for seq in 1..=20u64 {
            for i in 0..2 {
                let others = Others::of(rows[1 - i].iter(), NOW);
                let held = rows[i].map_or(0, |l| l.grant);
                used[i] = held;
                let l = renewed(
                    5,
                    0,
                    others,
                    rows[i].as_ref(),
                    &rate(seq, used[i], held, 10, 0),
                );
                rows[i] = Some(l);
                let lent: i64 = rows.iter().flatten().map(|l| l.claim(NOW)).sum();
                assert!(lent <= 5, "{lent}");
            }
        }
        assert_eq!(rows.iter().flatten().map(|l| l.grant).sum::<i64>(), 5);
    }

    #[test]
    fn an_expired_rate_lease_keeps_its_whole_claim() {
        let mut l = lease(50, 50, 20, 5);
        l.expires_at = NOW - 1;
        assert_eq!(l.claim_in(Pool::Window, NOW), 45);
        assert_eq!(l.claim_in(Pool::Slots, NOW), 45);
        assert_eq!(l.claim(NOW), 15);
        l.expires_at = NOW - EXPIRY_GRACE_MICROS - 1;
        assert_eq!(l.claim_in(Pool::Window, NOW), 45, "until the window goes");
        assert_eq!(l.claim_in(Pool::Slots, NOW), 0);
        assert_eq!(l.claim(NOW), 0);
    }

    #[test]
    fn rate_windows_follow_one_another() {
        assert_eq!(rate_window(None, NOW, TTL), NOW + TTL);
        assert_eq!(rate_window(Some(NOW + 5), NOW, TTL), NOW + 5);
        assert_eq!(rate_window(Some(NOW), NOW, TTL), NOW + TTL);
        // Issued ahead: the next window starts where the running one ends; before that end
        // the running one is in force, from it on the next one, and no instant is in both.
        let end = NOW + 5;
        let next = next_window(end, TTL);
        assert_eq!(next - TTL, end);
        assert_eq!(rate_window(Some(end), end - 1, TTL), end);
        assert_eq!(rate_window(Some(next), end, TTL), next);
        assert_eq!(rate_window(Some(next), next - 1, TTL), next);
        assert_eq!(rate_window(None, next, TTL), next + TTL);
        // Ahead only in the last H of a window in use.
        let h = PRE_ISSUE_MICROS;
        assert!(window_pre_issue_due(end, 1, end - h, 0));
        assert!(!window_pre_issue_due(end, 1, end - h - 1, 0));
        assert!(window_pre_issue_due(end, 1, end - h - 1, 1));
        assert!(!window_pre_issue_due(end, 0, end - 1, 0));
        assert!(!window_pre_issue_due(end, 1, end, 0));
        assert!(is_rate_scope("rpm:api_key:abc") && is_rate_scope("parallel:user:u:x"));
        assert!(!is_rate_scope("key:abc") && !is_rate_scope("rpm"));
    }

    /// xorshift64*: a seeded, dependency-free source for the random interleavings below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A lease call of a simulated Envoy: sent (its report), answered by the sidecar (the
    /// grant), then delivered to the Envoy or lost.
    #[derive(Clone, Copy)]
    struct Call {
        report: Report,
        sent_at: i64,
        answer: Option<i64>,
    }

    /// One answered call of `calls` (any of them first) taken off them, and whether it is lost
    /// on its way (1 in 8); `None` while no call has an answer.
    fn take_answered(calls: &mut Vec<Call>, rng: &mut Rng) -> Option<(Call, bool)> {
        let answered: Vec<usize> = (0..calls.len())
            .filter(|k| calls[*k].answer.is_some())
            .collect();
        if answered.is_empty() {
            return None;
        }
        let k = answered[rng.below(answered.len() as u64) as usize];
        Some((calls.remove(k), rng.below(8) == 0))
    }

    /// The grants an Envoy may enforce from `now` on: the one it holds (`grant` until
    /// `deadline`, from call `seq`) and every answer on its way to a later call, before that
    /// answer's deadline.
    fn enforceable(grant: i64, deadline: i64, seq: u64, calls: &[Call], now: i64) -> i64 {
        let held = if now < deadline { grant } else { 0 };
        calls
            .iter()
            .filter(|c| c.report.seq > seq && now < c.sent_at + TTL - 500_000)
            .filter_map(|c| c.answer)
            .fold(held, i64::max)
    }

    /// An answer applied as the filter does: only a later call's than the one held.
    fn apply_in_seq_order(call: &Call, grant: &mut i64, deadline: &mut i64, seq: &mut u64) {
        if call.report.seq > *seq {
            *grant = call.answer.unwrap_or(0);
            *deadline = call.sent_at + TTL - 500_000;
            *seq = call.report.seq;
        }
    }

    /// One simulated Envoy: its local entry (the grant it enforces, its deadline, the seq of
    /// the answer it applied), its spend events not applied yet, its calls in flight, and the
    /// lease row the sidecar keeps for it.
    #[derive(Default)]
    struct Envoy {
        grant: i64,
        deadline: i64,
        seq: u64,
        used: i64,
        unapplied: Vec<i64>,
        calls: Vec<Call>,
        row: Option<Lease>,
        reservation: i64,
        /// Its lease was live at the last step.
        was_live: bool,
    }

    impl Envoy {
        /// The grants this Envoy may enforce from `now` on: its entry's while live, and every
        /// answer on its way that the entry would still apply (a later seq) before its deadline.
        fn enforceable(&self, now: i64) -> i64 {
            enforceable(self.grant, self.deadline, self.seq, &self.calls, now)
        }

        /// What this Envoy may still spend, or spent and the sidecar knows of but has not had
        /// applied: its claim as it truly is. Use it has not reported is left out (past a
        /// grant it is the `N·ĉ` of the overshoot bound; after its last report before a
        /// lapse it is the gap `on_lost_lease` deals with, and events here may be late
        /// without bound).
        fn exposure(&self, now: i64) -> i64 {
            let Some(row) = self.row else { return 0 };
            let known = if row.live(now) {
                self.enforceable(now).max(row.used)
            } else if now < row.expires_at + EXPIRY_GRACE_MICROS {
                row.used
            } else {
                0
            };
            known.saturating_sub(row.applied).max(0)
        }
    }

    /// Many random interleavings of 3–5 Envoys on one budget: admissions reserving `ĉ` while
    /// `used < grant` and the slice is live; lease calls from two sources sharing the Envoy's
    /// seq (several in flight), answered by [`renew`] in any order (an earlier call answered
    /// after a later one is stale), delivered in any order or lost, and applied in seq order as
    /// the filter does; idle slices given back; spend applied late and in batches; admin
    /// decreases (and an increase) of `M` at any time. At every step:
    /// - the sidecar counts what each Envoy may enforce: its lease's claim covers every grant
    ///   the Envoy holds or may still apply (acknowledged shrinks);
    /// - I1: a grant never lifts the fleet's true exposure (settled spend plus what each Envoy
    ///   may enforce or used, not applied) above `M`, nor raises it while above (a decrease);
    ///
    /// and at the end total spend ≤ `M + N·ĉ`, or, after a decrease, ≤ the exposure when `M`
    /// last changed (at most what was spent and lent then) + `N·ĉ`; plus, in both, the use an
    /// Envoy made after its last report before its lease lapsed (the known gap of
    /// `on_lost_lease`, here with events late without bound).
    #[test]
    fn random_fleets_keep_the_escrow_invariant_and_the_overshoot_bound() {
        let mut exhausted = 0;
        let mut shrinks = 0;
        for seed in 1..=400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let n = 3 + rng.below(3) as usize;
            let c_hat = 1 + rng.below(50) as i64;
            let mut max = 100 + rng.below(5_000) as i64;
            let mut envoys: Vec<Envoy> = (0..n)
                .map(|_| Envoy {
                    reservation: c_hat,
                    ..Default::default()
                })
                .collect();
            let mut spend = 0i64; // S: applied
            let mut now = NOW;
            let mut changes = 0;
            let mut unreported = 0i64;
            // The fleet's exposure when `M` last changed.
            let mut exposure_at_change = 0i64;
            let exposure = |envoys: &[Envoy], spend: i64, now: i64| -> i64 {
                spend + envoys.iter().map(|e| e.exposure(now)).sum::<i64>()
            };
            for _ in 0..4_000 {
                now += rng.below(300_000) as i64;
                let i = rng.below(n as u64) as usize;
                match rng.below(20) {
                    // Admit one request: reserves ĉ, settles later at a cost ≤ ĉ.
                    0..=7 => {
                        let e = &mut envoys[i];
                        if now < e.deadline && e.used < e.grant {
                            let cost = 1 + rng.below(c_hat as u64) as i64;
                            e.used += cost;
                            e.unapplied.push(cost);
                        }
                    }
                    // A lease call is sent (the root tick's report or a borrow: one seq
                    // counter); sometimes the idle slice is given back first.
                    8..=9 => {
                        let e = &mut envoys[i];
                        let last_seq = e.calls.iter().map(|c| c.report.seq).max();
                        let next_seq = last_seq
                            .unwrap_or(0)
                            .max(e.seq)
                            .max(e.row.map_or(0, |r| r.seq))
                            + 1;
                        let returning = rng.below(10) == 0 && now < e.deadline;
                        if returning {
                            // `budgets::give_back_item`: the entry ignores every answer to a
                            // call already sent.
                            e.grant = e.used;
                            e.deadline = 0;
                            e.seq = e.seq.max(next_seq - 1);
                        }
                        let want = c_hat * (1 + rng.below(20) as i64);
                        e.calls.push(Call {
                            report: Report {
                                seq: next_seq,
                                used: e.used,
                                held: e.grant,
                                held_seq: e.seq,
                                want: if returning { 0 } else { want },
                                reservation: e.reservation,
                                returning,
                                ..Default::default()
                            },
                            sent_at: now,
                            answer: None,
                        });
                    }
                    // The sidecar answers one of the Envoy's calls (any of them first).
                    10..=12 => {
                        let waiting: Vec<usize> = (0..envoys[i].calls.len())
                            .filter(|k| envoys[i].calls[*k].answer.is_none())
                            .collect();
                        if waiting.is_empty() {
                            continue;
                        }
                        let k = waiting[rng.below(waiting.len() as u64) as usize];
                        let before = exposure(&envoys, spend, now);
                        let others = Others::of(
                            envoys
                                .iter()
                                .enumerate()
                                .filter(|(j, _)| *j != i)
                                .filter_map(|(_, o)| o.row.as_ref()),
                            now,
                        );
                        let e = &mut envoys[i];
                        let report = e.calls[k].report;
                        let r = renew(max, spend, others, e.row.as_ref(), &report, now, TTL);
                        if let Renewal::Renewed(row) = r {
                            assert!(row.grant >= row.used, "seed {seed}: grant below used");
                            if row.shrunk_from > 0 {
                                shrinks += 1;
                            }
                            e.row = Some(row);
                        }
                        e.calls[k].answer = Some(r.grant());
                        let after = exposure(&envoys, spend, now);
                        assert!(
                            after <= max || after <= before || r.grant() <= report.used,
                            "seed {seed}: I1 broken: exposure {before} -> {after} > M {max}: \
                             {r:?} for {report:?}"
                        );
                    }
                    // An answer reaches the Envoy (any of them first), or is lost.
                    13..=15 => {
                        let e = &mut envoys[i];
                        let Some((call, lost)) = take_answered(&mut e.calls, &mut rng) else {
                            continue;
                        };
                        // `budgets::apply_lease_answer`: in seq order.
                        if !lost {
                            apply_in_seq_order(&call, &mut e.grant, &mut e.deadline, &mut e.seq);
                        }
                    }
                    // Spend applied late, in a batch.
                    16..=17 => {
                        let e = &mut envoys[i];
                        let k = rng.below(e.unapplied.len() as u64 + 1) as usize;
                        let batch: i64 = e.unapplied.drain(..k).sum();
                        spend += batch;
                        if let Some(row) = e.row.as_mut() {
                            row.applied += batch;
                        }
                    }
                    // An admin change: mostly decreases, a few times.
                    _ => {
                        if changes < 3 && rng.below(15) == 0 {
                            max = if rng.below(4) == 0 {
                                max * 12 / 10
                            } else {
                                max * (1 + rng.below(9) as i64) / 10
                            };
                            changes += 1;
                            exposure_at_change = exposure(&envoys, spend, now);
                        }
                    }
                }
                // Acknowledged shrinks: each live lease counts every grant its Envoy may
                // enforce (a lapsed lease's Envoy enforces nothing).
                for (j, e) in envoys.iter_mut().enumerate() {
                    let enforceable = e.enforceable(now);
                    let live = e.row.is_some_and(|r| r.live(now));
                    if let (Some(row), true, false) = (e.row, e.was_live, live) {
                        // Use after its last report, not known when the lease lapsed.
                        unreported += (e.used - row.used).max(0);
                    }
                    e.was_live = live;
                    match e.row {
                        Some(row) if row.live(now) => {
                            let counted = row.claim(now) + row.settled(Pool::Budget);
                            assert!(
                                enforceable <= counted.max(row.used),
                                "seed {seed}: Envoy {j} may enforce {enforceable}, the \
                                 sidecar counts {counted}: {row:?}"
                            );
                        }
                        _ => {
                            assert_eq!(enforceable, 0, "seed {seed}: Envoy {j} outlives its lease")
                        }
                    }
                }
            }
            // Everything is applied in the end: total spend is what the Envoys used.
            let total: i64 = envoys.iter().map(|e| e.used).sum();
            let bound = max.max(exposure_at_change) + n as i64 * c_hat + unreported;
            assert!(
                total <= bound,
                "seed {seed}: spent {total} > M {max} (exposure at the change \
                 {exposure_at_change}) + {n}·{c_hat} + unreported {unreported}"
            );
            if changes == 0 {
                assert!(total <= max + n as i64 * c_hat, "seed {seed}");
            }
            if total >= max - n as i64 * c_hat {
                exhausted += 1;
            }
        }
        // The fleets did run their budgets out (so the bound was tested at the edge), leases
        // did not strand what was left (one request's worth is always lent), and shrinks
        // happened.
        assert!(exhausted > 300, "only {exhausted} of 400 budgets ran out");
        assert!(shrinks > 100, "only {shrinks} shrinks");
    }

    /// Rate leases over random interleavings of 3–5 Envoys on one limit: rpm (take 1, nothing
    /// given back), tpm (take an estimate ≤ t̂ while it fits the grant, refund part of it at
    /// settlement) and parallel slots (take 1, give it back when the call ends, within 30 s).
    /// Each Envoy reports what it took and gave back, with the seq of the answer its slice
    /// holds; lease calls (several in flight, from the tick and from borrows) are answered by
    /// [`renew`] in any order, delivered in any order or lost, and applied in seq order as the
    /// filter does; idle slices are given back; in half of the runs the limit is changed up to
    /// three times (mostly decreases, FLEET.md §4.10). At every step:
    /// - each live lease counts every grant its Envoy may enforce (acknowledged shrinks), and
    ///   each lease what its Envoy took and did not give back, reported or not;
    /// - no grant lifts the fleet's exposure (what each Envoy may enforce or took, less what it
    ///   gave back) above the limit, nor raises it while above (after a decrease);
    /// - what the fleet took and did not give back (rpm and tpm: in the window; slots: in
    ///   flight) is within the limit, exactly, or after a decrease within the exposure when
    ///   the limit last changed (what was taken and lent then: the shrinks stop the rest);
    ///
    /// and without a change the limit is lent out to the end.
    #[test]
    fn random_fleets_never_pass_a_rate_limit() {
        #[derive(Default, Clone)]
        struct RateEnvoy {
            grant: i64,
            deadline: i64,
            /// The seq of the answer the slice holds.
            seq: u64,
            used: i64,
            released: i64,
            row: Option<Lease>,
            /// Calls in flight: (tokens or slots to give back, when the call ends).
            calls: Vec<(i64, i64)>,
            lease_calls: Vec<Call>,
        }
        impl RateEnvoy {
            /// The grants it may enforce from `now` on: its slice's while valid, and every
            /// answer on its way to a later call than the slice's, before that answer's deadline.
            fn enforceable(&self, now: i64) -> i64 {
                enforceable(self.grant, self.deadline, self.seq, &self.lease_calls, now)
            }

            /// What it may take or has taken, less what it gave back.
            fn exposure(&self, now: i64) -> i64 {
                (self.enforceable(now).max(self.used) - self.released).max(0)
            }
        }
        let mut lent_out = 0;
        let mut shrinks = 0;
        for seed in 1..=600u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let n = 3 + rng.below(3) as usize;
            let mode = seed % 3; // 0 rpm, 1 tpm, 2 slots
            let pool = if mode == 2 { Pool::Slots } else { Pool::Window };
            let mut limit = 1 + rng.below(if mode == 2 { 12 } else { 400 }) as i64;
            let t_hat = if mode == 1 {
                1 + rng.below(30) as i64
            } else {
                1
            };
            let changing = seed > 300;
            let mut changes = 0;
            let mut exposure_at_change = 0i64;
            let exposure = |envoys: &[RateEnvoy], now: i64| -> i64 {
                envoys.iter().map(|e| e.exposure(now)).sum()
            };
            let mut envoys = vec![RateEnvoy::default(); n];
            let mut now = NOW;
            for _ in 0..3_000 {
                now += rng.below(400_000) as i64;
                let i = rng.below(n as u64) as usize;
                // Calls that have ended give back.
                for e in envoys.iter_mut() {
                    let ended: i64 = e.calls.iter().filter(|c| c.1 <= now).map(|c| c.0).sum();
                    e.calls.retain(|c| c.1 > now);
                    e.released += ended;
                }
                match rng.below(16) {
                    0..=5 => {
                        let e = &mut envoys[i];
                        let take = 1 + rng.below(t_hat as u64) as i64;
                        if now < e.deadline && e.used + take <= e.grant {
                            e.used += take;
                            let back = match mode {
                                0 => 0,
                                1 => rng.below(take as u64 + 1) as i64,
                                _ => 1,
                            };
                            let ends = now + rng.below(30_000_000) as i64;
                            e.calls.push((back, ends));
                        }
                    }
                    // A lease call is sent; sometimes the idle slice is given back first
                    // (`rate_leases::give_back_item`: the slice ignores every answer to a call
                    // already sent).
                    6..=7 => {
                        let e = &mut envoys[i];
                        let next_seq = e
                            .lease_calls
                            .iter()
                            .map(|c| c.report.seq)
                            .max()
                            .unwrap_or(0)
                            .max(e.seq)
                            .max(e.row.map_or(0, |r| r.seq))
                            + 1;
                        let returning = rng.below(10) == 0 && now < e.deadline;
                        if returning {
                            e.grant = e.used;
                            e.deadline = 0;
                            e.seq = e.seq.max(next_seq - 1);
                        }
                        e.lease_calls.push(Call {
                            report: Report {
                                seq: next_seq,
                                used: e.used,
                                held: e.grant,
                                held_seq: e.seq,
                                want: if returning {
                                    0
                                } else {
                                    t_hat * (1 + rng.below(20) as i64)
                                },
                                reservation: t_hat,
                                released: e.released,
                                pool,
                                returning,
                            },
                            sent_at: now,
                            answer: None,
                        });
                    }
                    // The sidecar answers one of the Envoy's calls (any of them first).
                    8..=10 => {
                        let waiting: Vec<usize> = (0..envoys[i].lease_calls.len())
                            .filter(|k| envoys[i].lease_calls[*k].answer.is_none())
                            .collect();
                        if waiting.is_empty() {
                            continue;
                        }
                        let k = waiting[rng.below(waiting.len() as u64) as usize];
                        let before = exposure(&envoys, now);
                        let others = Others::of_in(
                            pool,
                            envoys
                                .iter()
                                .enumerate()
                                .filter(|(j, _)| *j != i)
                                .filter_map(|(_, o)| o.row.as_ref()),
                            now,
                        );
                        let e = &mut envoys[i];
                        let report = e.lease_calls[k].report;
                        let r = renew(limit, 0, others, e.row.as_ref(), &report, now, TTL);
                        if let Renewal::Renewed(row) = r {
                            assert!(row.grant >= row.used, "seed {seed}: grant below used");
                            if row.shrunk_from > 0 {
                                shrinks += 1;
                            }
                            e.row = Some(row);
                        }
                        e.lease_calls[k].answer = Some(r.grant());
                        let after = exposure(&envoys, now);
                        assert!(
                            after <= limit || after <= before || r.grant() <= report.used,
                            "seed {seed} mode {mode}: exposure {before} -> {after} > limit \
                             {limit}: {r:?} for {report:?}"
                        );
                    }
                    // An answer reaches the Envoy (any of them first), or is lost; applied in
                    // seq order (`rate_leases::apply_grant`).
                    11..=13 => {
                        let e = &mut envoys[i];
                        let Some((call, lost)) = take_answered(&mut e.lease_calls, &mut rng) else {
                            continue;
                        };
                        if !lost {
                            apply_in_seq_order(&call, &mut e.grant, &mut e.deadline, &mut e.seq);
                        }
                    }
                    // An admin change of the limit: mostly decreases.
                    _ => {
                        if changing && changes < 3 && rng.below(10) == 0 {
                            limit = if rng.below(4) == 0 {
                                limit * 12 / 10 + 1
                            } else {
                                limit * rng.below(10) as i64 / 10
                            };
                            changes += 1;
                            exposure_at_change = exposure(&envoys, now);
                        }
                    }
                }
                for (j, e) in envoys.iter().enumerate() {
                    // What it took and did not give back is counted, reported or not: nothing
                    // settles a rate lease.
                    if let Some(row) = e.row {
                        let holding = e.used - e.released;
                        assert!(
                            holding <= row.claim_in(pool, now),
                            "seed {seed} mode {mode}: Envoy {j} holds {holding}, the sidecar \
                             counts {}: {row:?}",
                            row.claim_in(pool, now)
                        );
                    }
                    let enforceable = e.enforceable(now);
                    match e.row {
                        Some(row) if row.live(now) => {
                            let counted = row.claim_in(pool, now) + row.settled(pool);
                            assert!(
                                enforceable <= counted.max(row.used),
                                "seed {seed} mode {mode}: Envoy {j} may enforce \
                                 {enforceable}, the sidecar counts {counted}: {row:?}"
                            );
                        }
                        _ => {
                            assert_eq!(enforceable, 0, "seed {seed}: Envoy {j} outlives its lease")
                        }
                    }
                }
                let held: i64 = envoys.iter().map(|e| e.used - e.released).sum();
                let bound = limit.max(exposure_at_change);
                assert!(
                    held <= bound,
                    "seed {seed} mode {mode}: {held} > {limit} (exposure at the change \
                     {exposure_at_change})"
                );
            }
            if mode == 0 && !changing {
                // Then every Envoy renews in turn, its answers delivered at once, and takes
                // what it can: the window is lent out to the last request (what was lent and
                // lost, given back or left to lapse is not stranded).
                for e in envoys.iter_mut() {
                    e.lease_calls.clear();
                }
                for _ in 0..300 {
                    for i in 0..n {
                        now += 1_000;
                        let others = Others::of_in(
                            pool,
                            envoys
                                .iter()
                                .enumerate()
                                .filter(|(j, _)| *j != i)
                                .filter_map(|(_, o)| o.row.as_ref()),
                            now,
                        );
                        let e = &mut envoys[i];
                        let seq = e.seq.max(e.row.map_or(0, |r| r.seq)) + 1;
                        let report = Report {
                            seq,
                            used: e.used,
                            held: e.grant,
                            held_seq: e.seq,
                            want: 20,
                            reservation: 1,
                            released: e.released,
                            pool,
                            returning: false,
                        };
                        let r = renew(limit, 0, others, e.row.as_ref(), &report, now, TTL);
                        if let Renewal::Renewed(row) = r {
                            e.row = Some(row);
                        }
                        (e.grant, e.deadline, e.seq) = (r.grant(), now + TTL - 500_000, seq);
                        e.used = e.used.max(e.grant);
                    }
                }
                let taken: i64 = envoys.iter().map(|e| e.used).sum();
                assert!(taken <= limit, "seed {seed}: {taken} > {limit}");
                if taken == limit {
                    lent_out += 1;
                }
            }
        }
        // rpm windows were used to the last request (one is always lent while any is left),
        // and shrinks happened.
        assert_eq!(
            lent_out, 100,
            "rpm windows not lent out to the last request"
        );
        assert!(shrinks > 100, "only {shrinks} shrinks");
    }

    #[test]
    fn a_lost_lease_is_charged_after_the_grace_by_policy_once() {
        // Granted 50, held 40, used 30 at its last report, 10 applied.
        let l = lease(50, 40, 30, 10);
        let after_grace = NOW + TTL + EXPIRY_GRACE_MICROS;
        for (policy, charge) in [
            (LostLeasePolicy::ChargeReserved, 20),
            (LostLeasePolicy::ChargeGrant, 40),
            (LostLeasePolicy::Release, 0),
        ] {
            assert_eq!(lost_charge(&l, policy, NOW), 0, "live");
            assert_eq!(
                lost_charge(&l, policy, after_grace - 1),
                0,
                "events may come"
            );
            assert_eq!(lost_charge(&l, policy, after_grace), charge, "{policy:?}");
            // Charged: `lost` is the target; finding it again charges nothing.
            let charged = Lease {
                lost: lost_target(&l, policy),
                ..l
            };
            assert_eq!(lost_charge(&charged, policy, after_grace + 1), 0);
        }
        // Everything it used arrived: nothing to charge.
        let whole = lease(50, 40, 30, 30);
        let reserved = LostLeasePolicy::ChargeReserved;
        assert_eq!(lost_charge(&whole, reserved, after_grace), 0);
    }

    #[test]
    fn late_events_net_the_lost_charge_first() {
        // Charged as lost up to 30 with 10 applied: the next 20 applied are already charged.
        let l = Lease {
            lost: 30,
            ..lease(50, 40, 30, 10)
        };
        assert_eq!(beyond_lost(&l, 15), 0);
        assert_eq!(beyond_lost(&Lease { applied: 25, ..l }, 15), 10);
        assert_eq!(beyond_lost(&Lease { applied: 30, ..l }, 15), 15);
        assert_eq!(beyond_lost(&lease(50, 40, 30, 10), 15), 15, "never lost");
        // The charged part counts as settled: the claim does not count it again.
        assert_eq!(l.claim(NOW), 20);
        assert_eq!(l.claim(NOW + TTL), 0);
        assert_eq!(l.settled(Pool::Budget), 30);
        assert_eq!(l.settled(Pool::Window), 10);
    }

    #[test]
    fn a_renewal_after_a_lost_charge_lends_from_what_was_charged() {
        // An Envoy cut off and charged as lost for 30 reports again (used 35): only its 5
        // beyond the charge is its own unsettled use; the charge is in the budget's spend.
        let lost = Lease {
            lost: 30,
            expires_at: NOW - EXPIRY_GRACE_MICROS - 1,
            ..lease(50, 40, 30, 10)
        };
        let l = renewed(
            100,
            30,
            Others::default(),
            Some(&lost),
            &report(2, 35, 0, 10),
        );
        // avail = 100 − 30 − 5 = 65: want 10 fits under the 2 % cap (2)? no: one request (10).
        assert_eq!((l.used, l.applied, l.lost), (35, 10, 30));
        assert_eq!(l.claim(NOW), l.grant - 30);
    }

    /// Random histories of one Envoy's budget lease: reports, events applied late and in any
    /// batches, some lost with the Envoy, the lease found lost at random times (before or
    /// after its grace, more than once), then late events from an Envoy that was only cut off.
    /// The budget is charged exactly `max(applied events, lost target)`: every reported use
    /// once (`charge_reserved`), or the grant (`charge_grant`), never an event twice.
    #[test]
    fn random_lost_leases_are_charged_once_and_netted() {
        for seed in 1..=500u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let policy = match seed % 3 {
                0 => LostLeasePolicy::ChargeReserved,
                1 => LostLeasePolicy::ChargeGrant,
                _ => LostLeasePolicy::Release,
            };
            let mut l = Lease {
                grant: 1_000,
                held: 1_000,
                expires_at: NOW + TTL,
                ..Default::default()
            };
            let mut now = NOW;
            let mut spent = 0i64; // what the Envoy admitted
            let mut pending: Vec<i64> = Vec::new(); // its events not applied
            let mut charged = 0i64; // what the budget was charged
            let mut reported_at_loss = 0i64;
            for _ in 0..200 {
                now += rng.below(3_000_000) as i64;
                match rng.below(6) {
                    0 | 1 if spent < l.grant => {
                        let cost = 1 + rng.below(20) as i64;
                        spent += cost;
                        pending.push(cost);
                    }
                    2 => l.used = spent, // a report (the lease keeps its expiry)
                    3 => {
                        let k = rng.below(pending.len() as u64 + 1) as usize;
                        for n in pending.drain(..k) {
                            charged += beyond_lost(&l, n);
                            l.applied += n;
                        }
                    }
                    4 => {
                        let c = lost_charge(&l, policy, now);
                        if c > 0 {
                            charged += c;
                            l.lost = lost_target(&l, policy);
                            reported_at_loss = l.used;
                        }
                    }
                    _ => {}
                }
                assert_eq!(
                    charged,
                    l.applied.max(l.lost),
                    "seed {seed}: charged twice or not at all"
                );
            }
            // Everything still in flight arrives late (the Envoy was only cut off).
            for n in pending.drain(..) {
                charged += beyond_lost(&l, n);
                l.applied += n;
            }
            assert_eq!(charged, spent.max(l.lost), "seed {seed}");
            if policy == LostLeasePolicy::ChargeReserved {
                assert!(l.lost <= spent && reported_at_loss <= spent, "seed {seed}");
            }
            if policy == LostLeasePolicy::Release {
                assert_eq!(charged, spent, "seed {seed}");
            }
        }
    }

    #[test]
    fn a_returned_budget_lease_keeps_its_final_use_so_nothing_is_charged_as_lost() {
        // Reported 30 with calls in flight; they settled at 22 and the lease is given back.
        let old = lease(50, 50, 30, 22);
        let l = renewed(
            1000,
            22,
            Others::default(),
            Some(&old),
            &Report {
                returning: true,
                ..report(2, 22, 22, 0)
            },
        );
        assert_eq!((l.grant, l.used), (22, 22));
        let later = l.expires_at + EXPIRY_GRACE_MICROS;
        assert_eq!(lost_charge(&l, LostLeasePolicy::ChargeReserved, later), 0);
        // Not given back: the largest report stands.
        let r = renew(
            1000,
            22,
            Others::default(),
            Some(&old),
            &report(2, 22, 50, 0),
            NOW,
            TTL,
        );
        assert_eq!(r.grant(), 50);
    }
}
