//! The shared-data counter decoders of `budgets` (`reset_at spend reserved`) and `rate_limits`
//! (`start requests tokens in_flight`; both little-endian i64 fields, `tollgate::entry`), reached through admission and settlement over a
//! store whose entries hold arbitrary bytes (shared data outlives VM restarts and versions).
//!
//! Input: `[flags][field: budget entry][field: window entry][field: gauge entry][8: now]
//! [8: estimate][8: actual][rest: budget duration]`.
//!
//! Invariants: no arithmetic overflow or panic whatever the stored bytes; reservations are never
//! negative; a refused or settled request leaves no reservation behind; a released request gives
//! its parallel slot back.
#![no_main]

mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use tollgate::budgets::{self, Calendar, Level, Scope};
use tollgate::time::ZoneOffsets;
use tollgate::rate_limits::{self, Descriptor};
use tollgate::shared_store::{MemoryStore, VersionedStore};

/// Same format as `rate_limits::window_key` (private there).
fn window_key() -> String {
    format!("{}api_key:k", tollgate::contract::RATE_LIMIT_PREFIX)
}

/// The in-flight gauge: the 4th field of a scope's entry (`start requests tokens in_flight`).
fn gauge(store: &MemoryStore) -> i64 {
    store
        .get(&window_key())
        .map_or(0, |(v, _)| tollgate::entry::read::<4>(&v)[3])
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let budget_entry = input.field();
    let window_entry = input.field();
    // Once the separate parallel-gauge entry; still read so the seeds keep their meaning.
    let _ = input.field();
    let now = input.i64();
    let estimate = input.i64();
    let actual = input.i64();
    let duration = String::from_utf8_lossy(input.rest).into_owned();

    let store = MemoryStore::default();
    let scope = Scope {
        level: if flags & 1 != 0 {
            Level::Key {
                alias: "a".into(),
                key_name: "sk-...abcd".into(),
            }
        } else {
            Level::KeyModel {
                token: "t".into(),
                alias: "a".into(),
                model: "m".into(),
            }
        },
        id: "k".into(),
        max_budget_usd: match flags >> 1 & 3 {
            0 => None,
            1 => Some(f64::from(flags)),
            2 => Some(f64::from_bits(estimate as u64)),
            _ => Some(0.0),
        },
        duration: (flags & 8 != 0).then(|| duration.clone()),
        seed_spend_nanos: actual,
        seed_reset_at_micros: (flags & 16 != 0).then_some(now),
    };
    let budget_key = budgets::storage_key(&scope);
    if flags & 32 != 0 {
        let _ = store.set(&budget_key, budget_entry, None);
    }
    if flags & 64 != 0 {
        let _ = store.set(&window_key(), window_entry, None);
    }
    let zone = ZoneOffsets::fixed((actual % 86_400) as i32);
    let cal = Calendar {
        zone: &zone,
        reset_time_of_day_seconds: (estimate as u64 % 86_400) as u32,
    };

    // Budgets: admit, then settle (refund or charge).
    let before = budgets::read(&store, &scope);
    match budgets::admit(&store, &[scope.clone()], estimate, now, cal, 429) {
        Ok(ticket) => {
            for c in &ticket.charges {
                assert!(c.reserved >= 0);
            }
            let charge = (flags & 128 != 0).then_some(actual);
            let _ = budgets::settle(&store, &ticket, charge, now, cal);
            if let Some(c) = budgets::read(&store, &scope) {
                assert!(c.reserved >= 0, "{c:?}");
                if let Some(b) = before.filter(|b| b.reserved >= 0) {
                    assert!(c.reserved <= b.reserved, "{b:?} -> {c:?}");
                }
            }
        }
        Err(e) => assert!(e.status == 429 || e.status == 503, "{e:?}"),
    }

    // Rate limits: admit against every kind, then release.
    let d = Descriptor {
        kind: "api_key",
        value: "k".into(),
        rpm: (flags & 2 != 0).then_some(u64::from(flags)),
        tpm: (flags & 4 != 0).then_some(estimate as u64),
        max_parallel: (flags & 8 != 0).then_some(u64::from(flags % 5)),
    };
    let gauge_before = gauge(&store).max(0);
    let window_micros = (actual as u64 % 7_200_000_000) as i64 + 1;
    match rate_limits::admit(&store, &[d], actual as u64 >> 1, now, window_micros) {
        Ok(ticket) => {
            let _ = rate_limits::success_headers(&ticket.statuses);
            rate_limits::release(&store, &ticket, Some(estimate as u64), now);
            if ticket.held.iter().any(|h| h.slot) {
                assert_eq!(gauge(&store), gauge_before);
            }
        }
        Err(e) => {
            assert!(e.status == 429 || e.status == 503, "{e:?}");
            assert!(!e.body().is_empty());
        }
    }
});
