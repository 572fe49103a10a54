//! Fleet mode's lease report on each root tick (FLEET.md §4.4, §4.5, §4.7). proxy-wasm cannot
//! list shared-data keys, so each root context keeps the scopes it has reported (from the
//! renewal queue) with when they were last used, and each tick reports:
//! - the queued renewals (their entries read now);
//! - budgets in the last seconds of their period without the next period's slice: the answer
//!   brings that slice ahead, so the first request after the reset does not borrow;
//! - scopes unused for the idle time that still hold lent room: returned (`returning`, want 0;
//!   the entry's grant drops to its use first, and the next request borrows again), so the
//!   room is free for the other Envoys.
//!
//! - after an admin change (an invalidation heard through an admin answer or the change log,
//!   [`renew_all_soon`]): every budget slice still holding lent room, so a lowered budget
//!   shrinks it at once (FLEET.md §4.10) and a raised one grows it. Not rate slices: their
//!   limit comes in the report, from the key record, which the change has just dropped; the
//!   first request with the record fetched again borrows under the new limit instead
//!   ([`crate::rate_leases::admit`]).
//!
//! A scope that holds nothing and has been idle that long is forgotten, so the set is the
//! scopes used lately, capped at [`MAX_TRACKED`]. A scope only ever borrowed (never renewed)
//! is not known here: its budget slice simply lapses at its deadline. With several workers
//! each tracks the scopes it dequeued; a scope reported or returned by two is harmless
//! (reports are cumulative and idempotent).

use crate::budgets::{self, TickView};
use crate::contract::LEASE_RENEW_ALL_KEY;
use crate::leases::is_rate_level;
use crate::records::{LeaseItem, LeaseRequest};
use crate::shared_store::{update, Decision, VersionedStore};
use std::collections::BTreeMap;

/// Most scopes one root context keeps track of (one shared-data read each per tick).
pub const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone)]
struct Tracked {
    /// The last queued item (names the scope; its `want`, and a rate limit's `limit`).
    item: LeaseItem,
    /// The entry's use when last seen, and when it last changed (µs).
    mark: [i64; 3],
    last_use: i64,
    /// A budget's use as last reported (calls in flight counted at their reservation).
    reported_used: i64,
}

/// The scopes this root context reports on ([`ActiveScopes::report`]).
#[derive(Debug, Default)]
pub struct ActiveScopes {
    scopes: BTreeMap<String, Tracked>,
    /// [`LEASE_RENEW_ALL_KEY`] as this root context last acted on it.
    renew_all_seen: i64,
}

fn renew_all_count<S: VersionedStore>(store: &S) -> i64 {
    store
        .get(LEASE_RENEW_ALL_KEY)
        .and_then(|(v, _)| std::str::from_utf8(&v).ok()?.parse::<i64>().ok())
        .unwrap_or(0)
}

/// An admin change was heard of (an invalidation): every root context of this Envoy reports
/// its budget slices at its next tick instead of at half their TTL. Any change does, not only
/// those of the keys, teams or users whose budgets it touched: an invalidation names key
/// hashes (a team's or user's change lists its keys), which do not name the budgets the slices
/// are of, and admin changes are rare.
pub fn renew_all_soon<S: VersionedStore>(store: &S, now: i64) {
    let _ = update(store, LEASE_RENEW_ALL_KEY, now, |v| {
        let n = v
            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<i64>().ok())
            .unwrap_or(0)
            .saturating_add(1);
        Decision::Write(n.to_string().into_bytes(), ())
    });
}

fn view<S: VersionedStore>(store: &S, item: &LeaseItem, now: i64) -> Option<TickView> {
    if is_rate_level(&item.level) {
        crate::rate_leases::tick_view(store, &item.scope, now)
    } else {
        budgets::tick_view(store, &item.scope, now)
    }
}

fn refresh<S: VersionedStore>(store: &S, item: &LeaseItem, now: i64) -> Option<LeaseItem> {
    if is_rate_level(&item.level) {
        crate::rate_leases::refresh_item(store, item.clone(), now)
    } else {
        let raw = serde_json::to_vec(item).ok()?;
        budgets::renewal_items(store, &[raw], now).pop()
    }
}

fn give_back<S: VersionedStore>(store: &S, item: &LeaseItem, now: i64) -> Option<LeaseItem> {
    if is_rate_level(&item.level) {
        crate::rate_leases::give_back_item(store, item, now)
    } else {
        budgets::give_back_item(store, item, now)
    }
}

/// An idle budget whose slice lapsed, with calls that were in flight at its last report since
/// settled below their reservations: reported once more, `returning`, with what it finally
/// used. Else the sidecar keeps the larger reported use, and `on_lost_lease: charge_reserved`
/// would charge this live Envoy the difference once the lease is past its grace.
fn settled_below_report(t: &Tracked, v: &TickView) -> Option<LeaseItem> {
    let [period, used, _] = v.mark;
    if is_rate_level(&t.item.level) || v.in_use || used >= t.reported_used {
        return None;
    }
    Some(LeaseItem {
        period,
        used,
        held: used,
        want: 0,
        returning: true,
        ..t.item.clone()
    })
}

impl ActiveScopes {
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// This tick's report items, sorted by scope: the queued renewals (raw JSON
    /// [`LeaseItem`]s), next-period slices due, idle slices returned (`idle_micros` without
    /// use), and after an admin change ([`renew_all_soon`]) every budget slice holding room.
    pub fn items<S: VersionedStore>(
        &mut self,
        store: &S,
        queued: &[Vec<u8>],
        now: i64,
        idle_micros: i64,
    ) -> Vec<LeaseItem> {
        let mut out = budgets::renewal_items(store, queued, now);
        let renew_all = renew_all_count(store);
        let changed = renew_all != self.renew_all_seen;
        self.renew_all_seen = renew_all;
        let due: Vec<String> = out.iter().map(|i| i.scope.clone()).collect();
        for item in &out {
            let mark = view(store, item, now).map_or([0; 3], |v| v.mark);
            let tracked = Tracked {
                item: item.clone(),
                mark,
                last_use: now,
                reported_used: item.used,
            };
            if let Some(t) = self.scopes.get_mut(&item.scope) {
                *t = tracked;
            } else if self.scopes.len() < MAX_TRACKED {
                self.scopes.insert(item.scope.clone(), tracked);
            }
        }
        let mut forget = Vec::new();
        let mut more = Vec::new();
        for (scope, t) in self.scopes.iter_mut() {
            if due.binary_search(scope).is_ok() {
                continue;
            }
            let Some(v) = view(store, &t.item, now) else {
                forget.push(scope.clone());
                continue;
            };
            if v.mark != t.mark || v.in_use {
                t.mark = v.mark;
                t.last_use = now;
            }
            let idle = now.saturating_sub(t.last_use) >= idle_micros;
            if idle {
                if v.holds {
                    more.extend(give_back(store, &t.item, now));
                } else {
                    more.extend(settled_below_report(t, &v));
                }
                forget.push(scope.clone());
            } else if v.next_due || (changed && v.holds && !is_rate_level(&t.item.level)) {
                // (A rate slice reported now would carry the limit it was lent under: see
                // the module's doc.)
                let refreshed = refresh(store, &t.item, now);
                if let Some(item) = &refreshed {
                    t.reported_used = item.used;
                }
                more.extend(refreshed);
            }
        }
        for scope in forget {
            self.scopes.remove(&scope);
        }
        out.extend(more);
        out.sort_by(|a, b| a.scope.cmp(&b.scope));
        out
    }

    /// This tick's lease report ([`ActiveScopes::items`]), numbered by
    /// [`budgets::next_lease_seq`]; `None` when nothing is due.
    pub fn report<S: VersionedStore>(
        &mut self,
        store: &S,
        queued: &[Vec<u8>],
        envoy_id: &str,
        now: i64,
        idle_micros: i64,
    ) -> Option<LeaseRequest> {
        let items = self.items(store, queued, now, idle_micros);
        if items.is_empty() {
            return None;
        }
        Some(LeaseRequest {
            envoy_id: envoy_id.to_string(),
            seq: budgets::next_lease_seq(store, now)?,
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budgets::{admit_in, read, Admission, Calendar, FleetCheck, Level, Scope};
    use crate::records::{LeaseAnswer, LeaseGrant};
    use crate::shared_store::MemoryStore;

    const TTL: i64 = 10_000_000;
    const IDLE: i64 = 30_000_000;
    const CENT: i64 = 10_000_000;
    /// 2023-11-14T22:13:23Z: a `10s` budget's period ends at :30.
    const NOW: i64 = 1_700_000_003_000_000;
    const PERIOD_END: i64 = 1_700_000_010_000_000;

    fn user(duration: Option<&str>) -> Scope {
        Scope {
            level: Level::User,
            id: "u1".into(),
            max_budget_usd: Some(1.0),
            duration: duration.map(str::to_string),
            seed_spend_nanos: 0,
            seed_reset_at_micros: None,
        }
    }

    fn admit(s: &MemoryStore, scope: &Scope, now: i64) -> Admission {
        let check = FleetCheck {
            ttl_micros: TTL,
            after_borrow: None,
        };
        admit_in(
            s,
            std::slice::from_ref(scope),
            CENT,
            now,
            Calendar::default(),
            422,
            Some(check),
        )
        .unwrap()
    }

    fn grant(scope: &str, period: i64, amount: i64) -> LeaseGrant {
        LeaseGrant {
            scope: scope.into(),
            period,
            grant: amount,
            ttl_ms: 10_000,
            spend: 0,
            max_nanos: Some(1_000_000_000),
        }
    }

    fn answer(s: &MemoryStore, items: Vec<LeaseGrant>, sent_at: i64) {
        let asked: Vec<String> = items.iter().map(|g| g.scope.clone()).collect();
        let answer = LeaseAnswer { items };
        budgets::apply_lease_answer(s, &answer, &asked, sent_at as u64, sent_at, sent_at + 1);
    }

    /// One request admitted at `now` and settled at its estimate.
    fn spend(s: &MemoryStore, scope: &Scope, now: i64) {
        let Admission::Admitted { ticket, .. } = admit(s, scope, now) else {
            panic!("not admitted")
        };
        budgets::settle(s, &ticket, Some(CENT), now, Calendar::default());
    }

    /// A scope with a live slice of `amount`, borrowed at `now`, one request admitted and
    /// settled, and its renewal queued (as the request path does).
    fn leased(s: &MemoryStore, scope: &Scope, amount: i64, period: i64, now: i64) -> Vec<u8> {
        let Admission::Borrow(items) = admit(s, scope, now) else {
            panic!("a cold slice borrows")
        };
        answer(s, vec![grant(&items[0].scope, period, amount)], now);
        spend(s, scope, now);
        serde_json::to_vec(&items[0]).unwrap()
    }

    /// After an admin change every budget slice holding room is reported at the next tick
    /// (not at half its TTL), once; a slice used up or given back is not.
    #[test]
    fn an_admin_change_reports_every_slice_at_the_next_tick() {
        let s = MemoryStore::default();
        let scope = user(None);
        let queued = leased(&s, &scope, 5 * CENT, 0, NOW);
        let mut active = ActiveScopes::default();
        assert_eq!(active.items(&s, &[queued], NOW, IDLE).len(), 1);
        assert!(active.items(&s, &[], NOW + 1_000_000, IDLE).is_empty());
        renew_all_soon(&s, NOW + 1_500_000);
        let items = active.items(&s, &[], NOW + 2_000_000, IDLE);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].scope.as_str(), items[0].used), ("user:u1", CENT));
        assert_eq!(items[0].held, 5 * CENT);
        // Once per change.
        assert!(active.items(&s, &[], NOW + 3_000_000, IDLE).is_empty());
        // A slice holding nothing unused is not reported.
        answer(&s, vec![grant("user:u1", 0, CENT)], NOW + 3_500_000);
        renew_all_soon(&s, NOW + 3_600_000);
        assert!(active.items(&s, &[], NOW + 4_000_000, IDLE).is_empty());
    }

    #[test]
    fn the_next_periods_slice_is_asked_for_and_installed_at_the_reset() {
        let s = MemoryStore::default();
        let scope = user(Some("10s"));
        let queued = leased(&s, &scope, 5 * CENT, PERIOD_END, NOW);
        let mut active = ActiveScopes::default();
        // Queued: reported, and tracked from now on.
        let items = active.items(&s, &[queued], NOW, IDLE);
        assert_eq!(items.len(), 1);
        assert_eq!(active.len(), 1);
        // More than 5 s before the reset nothing is due; in the last 5 s, the scope is
        // reported (the answer brings the next period's slice), until that slice is held.
        assert!(active.items(&s, &[], NOW + 1, IDLE).is_empty());
        let late = PERIOD_END - 4_000_000;
        let items = active.items(&s, &[], late, IDLE);
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].period, items[0].used), (PERIOD_END, CENT));
        let next_end = PERIOD_END + 10_000_000;
        answer(
            &s,
            vec![
                grant("user:u1", PERIOD_END, 5 * CENT),
                grant("user:u1", next_end, 3 * CENT),
            ],
            late,
        );
        let c = read(&s, &scope).unwrap();
        assert_eq!(
            (c.grant, c.next_period, c.next_grant, c.next_deadline),
            (5 * CENT, next_end, 3 * CENT, late + TTL - 500_000)
        );
        assert!(active.items(&s, &[], late + 1_000_000, IDLE).is_empty());
        // Across the reset the first request is admitted from the slice issued ahead: no
        // borrow; the entry is in the new period with that grant.
        let after = PERIOD_END + 1_000;
        assert!(matches!(
            admit(&s, &scope, after),
            Admission::Admitted { .. }
        ));
        let c = read(&s, &scope).unwrap();
        assert_eq!(
            (c.reset_at, c.grant, c.deadline, c.used()),
            (next_end, 3 * CENT, late + TTL - 500_000, CENT)
        );
    }

    #[test]
    fn without_a_slice_ahead_the_first_request_after_a_reset_borrows() {
        let s = MemoryStore::default();
        let scope = user(Some("10s"));
        leased(&s, &scope, 5 * CENT, PERIOD_END, NOW);
        // An answer for a later period that is not the next one is not installed.
        answer(
            &s,
            vec![
                grant("user:u1", PERIOD_END, 5 * CENT),
                grant("user:u1", PERIOD_END + 20_000_000, 3 * CENT),
            ],
            PERIOD_END - 1_000_000,
        );
        assert!(matches!(
            admit(&s, &scope, PERIOD_END + 1),
            Admission::Borrow(_)
        ));
    }

    #[test]
    fn an_idle_slice_is_returned_once_then_forgotten() {
        let s = MemoryStore::default();
        let scope = user(None);
        let queued = leased(&s, &scope, 5 * CENT, 0, NOW);
        let mut active = ActiveScopes::default();
        active.items(&s, &[queued], NOW, IDLE);
        // Used again 10 s later: the idle time counts from then.
        let used_at = NOW + 10_000_000;
        answer(&s, vec![grant("user:u1", 0, 5 * CENT)], used_at - 1);
        spend(&s, &scope, used_at);
        assert!(active.items(&s, &[], used_at + 500_000, IDLE).is_empty());
        answer(
            &s,
            vec![grant("user:u1", 0, 5 * CENT)],
            used_at + IDLE - 2_000_000,
        );
        assert!(active.items(&s, &[], used_at + IDLE - 1, IDLE).is_empty());
        let idle_at = used_at + 500_000 + IDLE;
        let items = active.items(&s, &[], idle_at, IDLE);
        assert_eq!(items.len(), 1, "{items:?}");
        let r = &items[0];
        assert_eq!(
            (r.returning, r.want, r.used, r.held),
            (true, 0, 2 * CENT, 2 * CENT)
        );
        // The entry gave its room up first: the next request borrows again.
        let c = read(&s, &scope).unwrap();
        assert_eq!((c.grant, c.deadline), (2 * CENT, 0));
        assert!(active.is_empty());
        assert!(active.items(&s, &[], idle_at + 1_000_000, IDLE).is_empty());
        assert!(matches!(
            admit(&s, &scope, idle_at + 1),
            Admission::Borrow(_)
        ));
    }

    /// A call in flight at the last report settles below its reservation; the slice lapses
    /// and the scope goes idle: one more report, `returning`, with the use as settled (else the
    /// sidecar keeps the reported figure and `charge_reserved` charges a live Envoy for it).
    #[test]
    fn an_idle_lapsed_slice_reports_use_settled_below_its_last_report() {
        let s = MemoryStore::default();
        let scope = user(None);
        let queued = leased(&s, &scope, 5 * CENT, 0, NOW);
        let Admission::Admitted { ticket, .. } = admit(&s, &scope, NOW + 1) else {
            panic!("not admitted")
        };
        let mut active = ActiveScopes::default();
        let items = active.items(&s, &[queued], NOW + 2, IDLE);
        assert_eq!(
            items[0].used,
            2 * CENT,
            "the call in flight at its reservation"
        );
        budgets::settle(&s, &ticket, Some(CENT / 2), NOW + 3, Calendar::default());
        assert!(active.items(&s, &[], NOW + 1_000_000, IDLE).is_empty());
        let items = active.items(&s, &[], NOW + 2_000_000 + IDLE, IDLE);
        assert_eq!(items.len(), 1, "{items:?}");
        let r = &items[0];
        assert_eq!(
            (r.returning, r.want, r.used, r.held, r.period),
            (true, 0, CENT + CENT / 2, CENT + CENT / 2, 0)
        );
        assert!(active.is_empty());
    }

    #[test]
    fn an_idle_scope_holding_nothing_is_forgotten_without_a_report() {
        let s = MemoryStore::default();
        let scope = user(None);
        let queued = leased(&s, &scope, 5 * CENT, 0, NOW);
        let mut active = ActiveScopes::default();
        active.items(&s, &[queued], NOW, IDLE);
        // The slice lapsed long before the idle time: nothing to give back.
        assert!(active.items(&s, &[], NOW + IDLE, IDLE).is_empty());
        assert!(active.is_empty());
    }

    #[test]
    fn a_request_in_flight_keeps_a_scope_in_use() {
        let s = MemoryStore::default();
        let scope = user(None);
        let queued = leased(&s, &scope, 5 * CENT, 0, NOW);
        let mut active = ActiveScopes::default();
        active.items(&s, &[queued], NOW, IDLE);
        // An admitted request not settled yet (reserved): not idle, however long it runs.
        assert!(matches!(admit(&s, &scope, NOW), Admission::Admitted { .. }));
        answer(&s, vec![grant("user:u1", 0, 5 * CENT)], NOW + IDLE);
        assert!(active.items(&s, &[], NOW + IDLE + 1, IDLE).is_empty());
        assert_eq!(active.len(), 1);
    }

    /// A tracked rpm slice in its window's last seconds, with use in it, is reported (the
    /// answer brings the next window's slice), until that slice is held.
    #[test]
    fn a_rate_window_in_use_is_reported_in_its_last_seconds_for_the_next_one() {
        use crate::rate_leases::{scope_entry, Slice, Slices};
        let s = MemoryStore::default();
        let window_end = NOW + 20_000_000;
        let (entry, rpm) = scope_entry("rpm:api_key:h").unwrap();
        let mut slices = Slices::default();
        *slices.get_mut(rpm) = Slice {
            period: window_end,
            used: 10,
            grant: 1_000,
            deadline: window_end + TTL,
            ..Slice::default()
        };
        s.set(&entry, &slices.encode(), None).unwrap();
        let item = LeaseItem {
            scope: "rpm:api_key:h".into(),
            level: "rpm".into(),
            ids: vec!["api_key".into(), "h".into()],
            limit: Some(1_000),
            want: 5,
            ..Default::default()
        };
        let mut active = ActiveScopes::default();
        let queued = serde_json::to_vec(&item).unwrap();
        assert_eq!(active.items(&s, &[queued], NOW, IDLE).len(), 1);
        assert!(active.items(&s, &[], NOW + 1_000_000, IDLE).is_empty());
        let late = window_end - 4_000_000;
        let items = active.items(&s, &[], late, IDLE);
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(
            (items[0].period, items[0].used, items[0].held),
            (window_end, 10, 1_000)
        );
        let next = LeaseGrant {
            max_nanos: Some(1_000),
            ..grant("rpm:api_key:h", window_end + 60_000_000, 300)
        };
        let current = LeaseGrant {
            max_nanos: Some(1_000),
            ..grant("rpm:api_key:h", window_end, 1_000)
        };
        answer(&s, vec![current, next], late);
        assert!(active.items(&s, &[], late + 1_000_000, IDLE).is_empty());
    }

    #[test]
    fn an_idle_rate_slice_is_returned_while_its_window_runs_even_past_its_deadline() {
        use crate::rate_leases::{Slice, Slices};
        let s = MemoryStore::default();
        let window_end = NOW + 60_000_000;
        let slice = |grant, deadline| Slice {
            period: window_end,
            used: 10,
            grant,
            deadline,
            ..Slice::default()
        };
        let entry = &format!("{}api_key:h", crate::contract::RATE_LEASE_PREFIX);
        let (key, rpm) = crate::rate_leases::scope_entry("rpm:api_key:h").unwrap();
        assert_eq!(key, *entry);
        let mut slices = Slices::default();
        *slices.get_mut(rpm) = slice(25, NOW + TTL);
        s.set(entry, &slices.encode(), None).unwrap();
        let item = LeaseItem {
            scope: "rpm:api_key:h".into(),
            level: "rpm".into(),
            ids: vec!["api_key".into(), "h".into()],
            limit: Some(40),
            want: 5,
            ..Default::default()
        };
        let mut active = ActiveScopes::default();
        let queued = serde_json::to_vec(&item).unwrap();
        assert_eq!(active.items(&s, &[queued], NOW, IDLE).len(), 1);
        // Past its deadline the sidecar still counts the slice (until the window ends).
        let items = active.items(&s, &[], NOW + IDLE, IDLE);
        assert_eq!(items.len(), 1, "{items:?}");
        let r = &items[0];
        assert_eq!(
            (r.returning, r.used, r.held, r.period, r.limit),
            (true, 10, 10, window_end, Some(40))
        );
        let (bytes, _) = s.get(entry).unwrap();
        assert_eq!(*Slices::decode(&bytes).get(rpm), slice(10, 0));
    }
}
