#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Fleet mode (FLEET.md §5) on one machine: three Envoy processes and two sidecar replicas on
//! one PostgreSQL database share one budget through leases. Every scenario counts what clients
//! were admitted and what the provider received, and asserts the overshoot bound
//! `M + N·ĉ (+ the killed Envoy's slice)`, no acknowledged spend lost and no event counted twice.
//! Figures are printed (`--nocapture`) for the closing note and BENCHMARKS.md.

mod common;

use common::fleet::Fleet;
use common::postgres::{shared, Postgres};
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each call costs exactly its reservation: 8 prompt tokens at $0.001 and 5 completion tokens
/// at $0.002 = $0.018 (ĉ), so the bound is in whole calls.
const CONFIG: &str = r#"
model_list:
  - model_name: priced
    litellm_params:
      model: openai/priced-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
general_settings:
  master_key: @MASTER_KEY@
  database_connection_timeout: 2
  tollgate_fleet:
    lease_ttl_seconds: 10
"#;

const CALL_USD: f64 = 0.018;
const ENVOYS: usize = 3;
/// The budget, in calls.
const BUDGET_CALLS: usize = 1000;

fn hi() -> String {
    json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        .to_string()
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    admitted: usize,
    /// 422 budget_exceeded.
    refused: usize,
    /// Anything else (the status and the body's start), e.g. a 503 while no lease could be had.
    other: Vec<String>,
    /// Calls whose connection failed (a killed Envoy): the provider may have served them.
    broken: usize,
    /// When each admitted call was answered, by Envoy.
    admitted_at: Vec<(usize, Duration)>,
}

/// Load on the fleet: `clients` threads, client `c` sending its n-th call to Envoy
/// `route(c, n)` (skipping dead Envoys), until `stop` says so. `on_admitted(total)` runs on the
/// driver thread while the load runs (kills, admin changes); it gets the fleet mutably.
fn drive(
    fleet: &mut Fleet,
    key: &str,
    clients: usize,
    route: impl Fn(usize, usize) -> usize + Sync,
    mut during: impl FnMut(&mut Fleet, usize, Duration),
    stop: impl Fn(&Tally, Duration, Duration) -> bool,
) -> Tally {
    let tally = Mutex::new(Tally::default());
    let admitted = AtomicUsize::new(0);
    let last_admission = Mutex::new(Instant::now());
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let ports: Vec<(u16, AtomicBool)> = fleet
        .envoys
        .iter()
        .map(|e| (e.port, AtomicBool::new(true)))
        .collect();
    let auth = format!("Bearer {key}");
    let body = hi();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (tally, admitted, last_admission, done, ports, auth, body, route) = (
                &tally,
                &admitted,
                &last_admission,
                &done,
                &ports,
                &auth,
                &body,
                &route,
            );
            s.spawn(move || {
                let agent = agent();
                let mut n = 0;
                while !done.load(Ordering::Relaxed) {
                    let mut i = route(c, n) % ports.len();
                    n += 1;
                    for _ in 0..ports.len() {
                        if ports[i].1.load(Ordering::Relaxed) {
                            break;
                        }
                        i = (i + 1) % ports.len();
                    }
                    let url = format!("http://127.0.0.1:{}/v1/chat/completions", ports[i].0);
                    let answer = agent
                        .post(&url)
                        .set("authorization", auth)
                        .set("content-type", "application/json")
                        .send_string(body);
                    let mut t = tally.lock().unwrap();
                    match answer {
                        Ok(r) if r.status() == 200 => {
                            t.admitted += 1;
                            t.admitted_at.push((i, started.elapsed()));
                            admitted.fetch_add(1, Ordering::Relaxed);
                            *last_admission.lock().unwrap() = Instant::now();
                        }
                        Err(ureq::Error::Status(422, _)) => {
                            t.refused += 1;
                            drop(t);
                            // A spent budget: do not spin on refusals.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Ok(r) => t.other.push(format!("{}", r.status())),
                        Err(ureq::Error::Status(code, r)) => {
                            let text = r.into_string().unwrap_or_default();
                            t.other
                                .push(format!("{code} {}", &text[..text.len().min(160)]));
                        }
                        Err(ureq::Error::Transport(_)) => {
                            t.broken += 1;
                            drop(t);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            });
        }
        let deadline = started + Duration::from_secs(90);
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let total = admitted.load(Ordering::Relaxed);
            let quiet = last_admission.lock().unwrap().elapsed();
            during(fleet, total, started.elapsed());
            for (i, (_, alive)) in ports.iter().enumerate() {
                alive.store(fleet.envoy_alive(i), Ordering::Relaxed);
            }
            let t = tally.lock().unwrap();
            if stop(&t, started.elapsed(), quiet) || Instant::now() > deadline {
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    let t = tally.into_inner().unwrap();
    let mut other = std::collections::BTreeMap::<&str, usize>::new();
    for o in &t.other {
        *other.entry(&o[..o.len().min(60)]).or_default() += 1;
    }
    eprintln!(
        "fleet load: {} admitted, {} refused, {} broken, other {other:?}, in {:?}",
        t.admitted,
        t.refused,
        t.broken,
        started.elapsed()
    );
    t
}

/// Stop once nothing has been admitted for 4 s (a stall of a loaded machine, e.g. a lease call
/// waiting for a busy sidecar, is not a spent budget).
fn when_spent(_: &Tally, _: Duration, quiet: Duration) -> bool {
    quiet > Duration::from_secs(4)
}

/// Spend logs of `key` in the database once every Envoy has flushed: `(rows, distinct event
/// ids)`, waiting until there are `expected` rows and the count stops moving (3 s), or, with
/// fewer (a killed Envoy's unflushed calls), until it has not moved for 10 s.
fn settled_logs(pg: &Postgres, fleet: &Fleet, key: &str, expected: usize) -> (usize, usize) {
    let token = sha256_hex(key);
    let query = format!(
        "SELECT count(*) || ' ' || count(DISTINCT event_id) FROM tollgate.spend_logs \
         WHERE api_key = '{token}'"
    );
    let mut last = String::new();
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = pg.psql(&fleet.db, &query);
        let rows: usize = now
            .split(' ')
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let enough = if rows >= expected { 3 } else { 10 };
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(enough) {
            break;
        }
        assert!(Instant::now() < deadline, "spend logs keep moving: {last}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let (rows, distinct) = last.split_once(' ').expect("two counts");
    (rows.parse().unwrap(), distinct.parse().unwrap())
}

fn budget_key(fleet: &Fleet, calls: usize) -> String {
    fleet.generate_key(json!({"max_budget": calls as f64 * CALL_USD}))
}

/// The shared checks of a run in which no Envoy died: the bound, no false refusals beyond one
/// sliver per Envoy, every admitted call logged exactly once.
fn assert_bound_and_books(pg: &Postgres, fleet: &Fleet, key: &str, t: &Tally, budget: usize) {
    assert!(
        t.other.is_empty(),
        "unexpected answers: {:?}",
        &t.other[..t.other.len().min(3)]
    );
    assert!(
        t.admitted <= budget + ENVOYS,
        "overshoot beyond N·ĉ: {} admitted for a budget of {budget} calls",
        t.admitted
    );
    assert!(
        t.admitted + ENVOYS >= budget,
        "false refusals: only {} admitted for a budget of {budget} calls",
        t.admitted
    );
    assert_eq!(
        fleet.provider_requests() as usize,
        t.admitted,
        "the provider saw exactly the admitted calls"
    );
    let (rows, distinct) = settled_logs(pg, fleet, key, t.admitted);
    assert_eq!(rows, distinct, "no event counted twice");
    assert_eq!(rows, t.admitted, "every admitted call is in the spend logs");
}

/// Three Envoys, even load: together they spend the budget once (≤ M + N·ĉ), not three times.
#[test]
fn three_envoys_share_one_budget() {
    let mut fleet = Fleet::start("fleet-even", CONFIG, ENVOYS, 2);
    let key = budget_key(&fleet, BUDGET_CALLS);
    let t = drive(
        &mut fleet,
        &key,
        6,
        |c, _| c % ENVOYS,
        |_, _, _| {},
        when_spent,
    );
    assert_bound_and_books(shared(), &fleet, &key, &t, BUDGET_CALLS);
}

/// Skewed load (80/15/5 %): slices follow demand; the bound and the books hold.
#[test]
fn a_skewed_load_shares_the_budget_by_demand() {
    let mut fleet = Fleet::start("fleet-skew", CONFIG, ENVOYS, 2);
    let key = budget_key(&fleet, BUDGET_CALLS);
    let route = |c: usize, n: usize| match (c * 7 + n) % 20 {
        0..=15 => 0,
        16..=18 => 1,
        _ => 2,
    };
    let t = drive(&mut fleet, &key, 6, route, |_, _, _| {}, when_spent);
    assert_bound_and_books(shared(), &fleet, &key, &t, BUDGET_CALLS);
}

/// `kill -9` of one Envoy at half the budget: the others carry on; once its lease expires its
/// unused slice is lent again. The provider serves at most M + N·ĉ + the dead Envoy's slice.
#[test]
fn kill_9_of_an_envoy_at_half_the_budget() {
    let mut fleet = Fleet::start("fleet-kill-envoy", CONFIG, ENVOYS, 2);
    let key = budget_key(&fleet, BUDGET_CALLS);
    let killed_at = std::cell::Cell::new(None::<Duration>);
    let killed_instant = std::cell::Cell::new(None::<Instant>);
    let t = drive(
        &mut fleet,
        &key,
        6,
        |c, _| c % ENVOYS,
        |fleet, admitted, elapsed| {
            if killed_at.get().is_none() && admitted >= BUDGET_CALLS / 2 {
                fleet.kill_envoy(2);
                killed_at.set(Some(elapsed));
                killed_instant.set(Some(Instant::now()));
            }
        },
        // Past the lease TTL (10 s), so the dead Envoy's slice can come back.
        |_, elapsed, quiet| {
            quiet > Duration::from_secs(2)
                && killed_at
                    .get()
                    .is_some_and(|k| elapsed > k + Duration::from_secs(14))
        },
    );
    let served = fleet.provider_requests() as usize;
    let l_cap = (BUDGET_CALLS / 50).max(1);
    eprintln!(
        "kill -9 of an Envoy: provider served {served}, clients saw {} admitted",
        t.admitted
    );
    assert!(
        served <= BUDGET_CALLS + ENVOYS + l_cap,
        "overshoot beyond M + N·ĉ + the dead Envoy's slice: {served} served"
    );
    let (rows, distinct) = settled_logs(shared(), &fleet, &key, t.admitted);
    assert_eq!(rows, distinct, "no event counted twice");
    // What the killed Envoy answered in its last flush period (1 s tick, plus a batch in
    // flight, up to the 2 s sidecar timeout: 3 s) may be lost with it, as in single-Envoy
    // mode; everything else must be logged.
    let killed_at = killed_at.get().expect("the load reached half the budget");
    let unflushed = t
        .admitted_at
        .iter()
        .filter(|(envoy, at)| *envoy == 2 && *at + Duration::from_millis(3000) > killed_at)
        .count();
    eprintln!("kill -9 of an Envoy: {rows} logged, {unflushed} answered by it in its last 3 s");
    for ms in [250u64, 500, 1000, 2000, 4000] {
        let n = t
            .admitted_at
            .iter()
            .filter(|(envoy, at)| *envoy == 2 && *at + Duration::from_millis(ms) > killed_at)
            .count();
        eprintln!("  answered by the killed Envoy in its last {ms} ms: {n}");
    }
    assert!(
        rows + unflushed >= t.admitted,
        "acknowledged spend lost: {rows} logged, {} admitted, {unflushed} maybe unflushed",
        t.admitted
    );
    assert!(
        rows <= served,
        "logged calls the provider never saw: {rows} > {served}"
    );
    charged_once_as_lost(&fleet, &key, killed_instant.get().expect("killed"), served);
}

/// `on_lost_lease: charge_reserved` (the default) after the kill above: once the dead Envoy's
/// lease has lapsed and its grace for late events ended (TTL 10 s + 60 s), a replica's sweep
/// for lost leases (every 15 s) charges what it reported used and never logged, once, as one
/// `lost:` spend-log row (every call here costs its reservation, so the live Envoys' leases
/// have nothing unlogged). Nothing here touches the budget (no call, no spend: the load has
/// stopped), so the sweep is what finds it. The key's spend then equals its spend log, counted
/// once, within the bound.
fn charged_once_as_lost(fleet: &Fleet, key: &str, killed: Instant, served: usize) {
    let pg = shared();
    let token = sha256_hex(key);
    let scope = format!("key:{token}");
    let unlogged = |db: &str| {
        let q = format!(
            "SELECT count(*) || ' ' || coalesce(sum(used_total - applied_total), 0) \
             FROM tollgate.lease WHERE scope = '{scope}' AND used_total > applied_total"
        );
        let out = pg.psql(db, &q);
        let (n, nanos) = out.split_once(' ').expect("two figures");
        (n.parse::<usize>().unwrap(), nanos.parse::<i64>().unwrap())
    };
    // The lost rows, when the lease they charge lapsed, and the database's clock (µs).
    let lost_rows = |db: &str| {
        let q = format!(
            "SELECT count(*) || ' ' || coalesce(sum(spend_nanos), 0) || ' ' || \
             coalesce(max(start_time), 0) || ' ' || \
             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
             FROM tollgate.spend_logs WHERE api_key = '{token}' AND event_id LIKE 'lost:%'"
        );
        let out = pg.psql(db, &q);
        let f: Vec<i64> = out.split(' ').map(|x| x.parse().unwrap()).collect();
        (f[0] as usize, f[1], f[2], f[3])
    };
    // Charged by a sweep at most 15 s after the grace; 30 s more of slack for a loaded
    // machine. (A killed Envoy that had logged all it reported leaves nothing to charge.)
    let swept_by = killed + Duration::from_secs(10 + 60 + 15 + 5);
    let deadline = swept_by + Duration::from_secs(25);
    let mut lost_at_clock = None;
    let (n, charged) = loop {
        let (n, charged, lapsed_at, clock) = lost_rows(&fleet.db);
        if n > 0 {
            // Seen within 250 ms of the charge: not before the grace.
            assert!(
                clock >= lapsed_at + 60_000_000,
                "charged {} s after the lease lapsed, inside the grace",
                (clock - lapsed_at) as f64 / 1e6
            );
            lost_at_clock = Some((lapsed_at, clock));
            break (n, charged);
        }
        if Instant::now() > swept_by && unlogged(&fleet.db) == (0, 0) {
            break (0, 0);
        }
        assert!(
            Instant::now() < deadline,
            "no sweep charged the lost lease {:?} after the kill",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "on_lost_lease: {n} lost row(s) {:?} after the kill",
        killed.elapsed()
    );
    let (dead, nanos) = unlogged(&fleet.db);
    assert!(
        dead <= 1,
        "only the killed Envoy's lease has unlogged use: {dead}"
    );
    let swept = fleet.replicas.iter().any(|r| {
        let dir = fleet.scratch_dir().join(format!("replica-{}", r.port));
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|log| log.contains("lost leases swept"))
                })
            })
            .unwrap_or(false)
    });
    assert!(
        swept || n == 0,
        "a replica's sweep charged it (its log says so)"
    );
    assert_eq!((n, charged), (dead, nanos), "charged once, as one row");
    // 17 s after the grace ended both replicas have swept since (each every 15 s): still
    // charged once.
    let recheck = lost_at_clock.map_or(0, |(lapsed_at, clock)| {
        (lapsed_at + 77_000_000 - clock).max(0) as u64
    });
    std::thread::sleep(Duration::from_micros(recheck));
    let (n_now, charged_now, _, _) = lost_rows(&fleet.db);
    eprintln!(
        "on_lost_lease: the killed Envoy reported {nanos} nano-dollars ({} calls) it never \
         logged; {n_now} lost row(s) charged {charged_now}",
        nanos as f64 / (CALL_USD * 1e9)
    );
    assert_eq!((n_now, charged_now), (n, charged), "and never again");
    let q = format!(
        "SELECT (doc::json->>'spend_nanos') || ' ' || \
         (SELECT coalesce(sum(spend_nanos), 0) FROM tollgate.spend_logs WHERE api_key = '{token}') \
         FROM tollgate.keys WHERE token = '{token}'"
    );
    let out = pg.psql(&fleet.db, &q);
    let (spend, logged) = out.split_once(' ').expect("two figures");
    let (spend, logged): (i64, i64) = (spend.parse().unwrap(), logged.parse().unwrap());
    assert_eq!(
        spend, logged,
        "the key's spend is its spend log, each row once"
    );
    let l_cap = (BUDGET_CALLS / 50).max(1);
    let bound = (BUDGET_CALLS + ENVOYS + l_cap) as f64 * CALL_USD * 1e9;
    assert!(
        spend as f64 <= bound + 1.0,
        "charged {spend} > bound {bound}"
    );
    eprintln!("on_lost_lease: the key was charged {spend} for {served} calls served");
}

/// `kill -9` of a sidecar replica under load: Envoy's cluster skips it; nothing acknowledged is
/// lost, nothing counts twice, the bound holds.
#[test]
fn kill_9_of_a_replica_under_load() {
    let mut fleet = Fleet::start("fleet-kill-replica", CONFIG, ENVOYS, 2);
    let key = budget_key(&fleet, BUDGET_CALLS);
    let mut killed = false;
    let t = drive(
        &mut fleet,
        &key,
        6,
        |c, _| c % ENVOYS,
        |fleet, admitted, _| {
            if !killed && admitted >= BUDGET_CALLS / 2 {
                fleet.kill_replica(0);
                killed = true;
            }
        },
        when_spent,
    );
    assert!(killed, "the load reached half the budget");
    assert_bound_and_books(shared(), &fleet, &key, &t, BUDGET_CALLS);
}

/// A budget lowered through Envoy 0 mid-run, below what the fleet has spent, is enforced by
/// every Envoy within about a second (FLEET.md §4.10): Envoy 0 hears of it in the admin answer,
/// the others from the change log (polled each second); each then reports its slice at once and
/// the answer shrinks it. Admitted after the change: at most the calls in flight, the unused
/// slices (≤ L_cap each) and one call per Envoy. The load slows down 3 s before the change (a
/// call per client every 600 ms), so each Envoy's slice, sized for that rate, holds seconds of
/// calls when the budget is lowered: not shrunk (as before), they would be admitted.
#[test]
fn a_lowered_budget_holds_across_the_fleet() {
    let mut fleet = Fleet::start("fleet-lower", CONFIG, ENVOYS, 2);
    let key = budget_key(&fleet, BUDGET_CALLS);
    let lowered = BUDGET_CALLS / 4;
    let clients = 6;
    let mut changed_at = None;
    let slow = AtomicBool::new(false);
    let mut slow_since = None;
    let t = drive(
        &mut fleet,
        &key,
        clients,
        |c, _| {
            if slow.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(600));
            }
            c % ENVOYS
        },
        |fleet, admitted, elapsed| {
            if slow_since.is_none() && admitted >= lowered {
                slow.store(true, Ordering::Relaxed);
                slow_since = Some(elapsed);
            }
            let slowed_enough = slow_since.is_some_and(|t| elapsed > t + Duration::from_secs(3));
            if changed_at.is_none() && slowed_enough {
                let call = Instant::now();
                let r = fleet.post(
                    0,
                    "/key/update",
                    &format!("Bearer {MASTER_KEY}"),
                    &json!({"key": key, "max_budget": lowered as f64 * CALL_USD}).to_string(),
                );
                r.assert_status(200);
                // When the admin answer came back, on the load's clock.
                changed_at = Some(elapsed + call.elapsed());
            }
        },
        when_spent,
    );
    let changed_at = changed_at.expect("the budget was lowered");
    let l_cap = (BUDGET_CALLS / 50).max(1);
    let before = t
        .admitted_at
        .iter()
        .filter(|(_, at)| *at <= changed_at)
        .count();
    let last_after = |others_only: bool| {
        t.admitted_at
            .iter()
            .filter(|(i, at)| *at > changed_at && (!others_only || *i != 0))
            .map(|(_, at)| at.saturating_sub(changed_at))
            .max()
            .unwrap_or_default()
    };
    let (effect_others, effect_all) = (last_after(true), last_after(false));
    eprintln!(
        "lowered budget: {} admitted ({before} before the change) for {lowered}; last admission \
         after the change: {effect_others:?} on the other Envoys, {effect_all:?} on any",
        t.admitted
    );
    assert!(t.other.is_empty(), "unexpected answers: {:?}", t.other);
    assert!(
        effect_others <= Duration::from_millis(2500),
        "the other Envoys still admitted {effect_others:?} after the change"
    );
    assert!(
        t.admitted <= before.max(lowered) + clients + ENVOYS * (l_cap + 1),
        "overshoot beyond the calls in flight + N·(L_cap + ĉ): {} admitted, {before} before \
         the change",
        t.admitted
    );
    let (rows, distinct) = settled_logs(shared(), &fleet, &key, t.admitted);
    assert_eq!((rows, distinct), (t.admitted, t.admitted));
}

/// An rpm lowered through Envoy 0 mid-window, below what the fleet has used in it, is enforced
/// by every Envoy within about a second (FLEET.md §4.10): Envoy 0 drops the key's record at the
/// admin answer, the others at their change-log poll (each second); the first request with the
/// record fetched again finds its slice lent under the old limit and borrows under the new
/// one, and the answer shrinks the slice to its use. The load (a call per client every 300 ms)
/// runs 8 s first, so each Envoy's slice, sized for seconds of its demand, holds seconds of
/// calls when the rpm is lowered: not shrunk (as before), they would be admitted.
#[test]
fn a_lowered_rpm_holds_across_the_fleet() {
    let mut fleet = Fleet::start("fleet-lower-rpm", &idle_config(), ENVOYS, 2);
    let key = fleet.generate_key(json!({"rpm_limit": 1000}));
    let lowered = 10;
    let clients = 6;
    let pace = Duration::from_millis(300);
    let changed_at = std::cell::Cell::new(None::<Duration>);
    let t = drive(
        &mut fleet,
        &key,
        clients,
        |c, _| {
            std::thread::sleep(pace);
            c % ENVOYS
        },
        |fleet, _, elapsed| {
            if changed_at.get().is_none() && elapsed > Duration::from_secs(8) {
                let call = Instant::now();
                let r = fleet.post(
                    0,
                    "/key/update",
                    &format!("Bearer {MASTER_KEY}"),
                    &json!({"key": key, "rpm_limit": lowered}).to_string(),
                );
                r.assert_status(200);
                changed_at.set(Some(elapsed + call.elapsed()));
            }
        },
        |_, elapsed, _| {
            changed_at
                .get()
                .is_some_and(|at| elapsed > at + Duration::from_secs(6))
        },
    );
    let changed_at = changed_at.get().expect("the rpm was lowered");
    let before = t
        .admitted_at
        .iter()
        .filter(|(_, at)| *at <= changed_at)
        .count();
    let after = t.admitted - before;
    let last_after = |envoys: &[usize]| {
        t.admitted_at
            .iter()
            .filter(|(i, at)| *at > changed_at && envoys.contains(i))
            .map(|(_, at)| at.saturating_sub(changed_at))
            .max()
            .unwrap_or_default()
    };
    let (effect_0, effect_others) = (last_after(&[0]), last_after(&[1, 2]));
    eprintln!(
        "lowered rpm: {before} admitted in the window before the change to rpm {lowered}, \
         {after} after; last admission after the change: {effect_0:?} on Envoy 0, \
         {effect_others:?} on the others"
    );
    let unexpected: Vec<&String> = t
        .other
        .iter()
        .filter(|o| !(o.starts_with("429") && o.contains("Limit type: requests")))
        .collect();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    assert!(
        before > lowered,
        "the load used only {before} of the window before the change"
    );
    assert!(
        effect_others <= Duration::from_millis(2500),
        "the other Envoys still admitted {effect_others:?} after the change"
    );
    // The calls in flight at the change, and what each client could send in those 2.5 s.
    let in_time = clients * (2500 / pace.as_millis() as usize + 1);
    assert!(
        after <= in_time,
        "{after} admitted after the change (at most {in_time} in 2.5 s at this pace)"
    );
    let (rows, distinct) = settled_logs(shared(), &fleet, &key, t.admitted);
    assert_eq!((rows, distinct), (t.admitted, t.admitted));
}

/// `pg_ctl restart -m immediate` under load: Envoys keep admitting inside their slices, lease
/// calls and spend batches fail and are retried; afterwards nothing is lost or counted twice
/// and the bound holds.
#[test]
fn a_database_restart_under_load() {
    // Its own server: a restart would disturb the other tests' databases.
    let pg = Postgres::start();
    let mut fleet = Fleet::start_on(&pg, "fleet-pg-restart", CONFIG, ENVOYS, 2);
    let key = budget_key(&fleet, BUDGET_CALLS);
    let mut restarted = false;
    let t = drive(
        &mut fleet,
        &key,
        6,
        |c, _| c % ENVOYS,
        |_, admitted, _| {
            if !restarted && admitted >= BUDGET_CALLS / 3 {
                let started = Instant::now();
                pg.stop_immediate();
                pg.start_again();
                eprintln!("PostgreSQL restarted in {:?}", started.elapsed());
                restarted = true;
            }
        },
        |_, _, quiet| quiet > Duration::from_secs(4),
    );
    assert!(restarted);
    let unavailable: Vec<&String> = t.other.iter().filter(|o| !o.starts_with("503")).collect();
    assert!(
        unavailable.is_empty(),
        "unexpected answers: {unavailable:?}"
    );
    eprintln!(
        "database restart: {} answered 503 (no lease)",
        t.other.len()
    );
    assert!(
        t.admitted <= BUDGET_CALLS + ENVOYS,
        "overshoot: {}",
        t.admitted
    );
    let (rows, distinct) = settled_logs(&pg, &fleet, &key, t.admitted);
    assert_eq!((rows, distinct), (t.admitted, t.admitted));
}

/// Fleet mode with a 10 s rpm/tpm window (`rate_limit_window_size`), for the rate-limit
/// scenarios: the windows are the sidecar's, opened by the first lease call after the last one
/// ended.
const RATE_CONFIG: &str = r#"
model_list:
  - model_name: priced
    litellm_params:
      model: openai/priced-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
general_settings:
  master_key: @MASTER_KEY@
  database_connection_timeout: 2
  rate_limit_window_size: 10
  tollgate_fleet:
    lease_ttl_seconds: 10
"#;

const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What the clients of a rate-limit run saw.
#[derive(Debug, Default)]
struct RateTally {
    admitted: usize,
    /// 429s, by `rate_limit_type`.
    throttled: std::collections::BTreeMap<String, usize>,
    /// Anything else (status and the body's start).
    other: Vec<String>,
}

/// `clients` threads sending to the Envoys in turn (client `c` to Envoy `c % 3`) for `run`,
/// with `headers` on every call.
fn drive_for(
    fleet: &Fleet,
    key: &str,
    clients: usize,
    run: Duration,
    headers: &[(&str, &str)],
) -> RateTally {
    let tally = Mutex::new(RateTally::default());
    let auth = format!("Bearer {key}");
    let body = hi();
    let until = Instant::now() + run;
    std::thread::scope(|s| {
        for c in 0..clients {
            let (tally, auth, body) = (&tally, &auth, &body);
            let url = fleet.url(c % ENVOYS, "/v1/chat/completions");
            s.spawn(move || {
                let agent = agent();
                while Instant::now() < until {
                    let mut request = agent
                        .post(&url)
                        .set("authorization", auth)
                        .set("content-type", "application/json");
                    for (name, value) in headers {
                        request = request.set(name, value);
                    }
                    let answer = request.send_string(body);
                    let mut t = tally.lock().unwrap();
                    match answer {
                        Ok(r) if r.status() == 200 => t.admitted += 1,
                        Err(ureq::Error::Status(429, r)) => {
                            let kind = r.header("rate_limit_type").unwrap_or("?").to_string();
                            *t.throttled.entry(kind).or_default() += 1;
                            drop(t);
                            // Refused: do not spin.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Ok(r) => t.other.push(format!("{}", r.status())),
                        Err(ureq::Error::Status(code, r)) => {
                            let text = r.into_string().unwrap_or_default();
                            t.other
                                .push(format!("{code} {}", &text[..text.len().min(160)]));
                        }
                        Err(e) => t.other.push(format!("transport: {e}")),
                    }
                }
            });
        }
    });
    let t = tally.into_inner().unwrap();
    eprintln!(
        "rate load: {} admitted, throttled {:?}, other {:?}",
        t.admitted,
        t.throttled,
        &t.other[..t.other.len().min(3)]
    );
    t
}

/// rpm, tpm and `max_parallel_requests` across three Envoys and two replicas: each is enforced
/// for the fleet, exactly (without fleet mode each Envoy would admit the whole limit).
#[test]
fn rate_limits_hold_across_the_fleet() {
    let fleet = Fleet::start("fleet-rates", RATE_CONFIG, ENVOYS, 2);

    // max_parallel_requests 4, calls held open 300 ms, 9 clients: never more than 4 at the
    // provider (the fake counts what it answers at once). First, while the fake has seen
    // nothing else.
    let parallel = fleet.generate_key(json!({"max_parallel_requests": 4}));
    let t = drive_for(
        &fleet,
        &parallel,
        9,
        Duration::from_secs(5),
        &[("x-fake-delay-ms", "300")],
    );
    let stats = {
        let url = format!("http://127.0.0.1:{}/fake/stats", fleet.fake_port);
        send(&fleet.agent, "GET", &url, &[], None).json()
    };
    let max_in_flight = stats["max_in_flight"].as_u64().unwrap();
    eprintln!("max_parallel_requests 4: {max_in_flight} in flight at most at the provider");
    assert!(t.other.is_empty(), "unexpected answers: {:?}", t.other);
    assert!(
        max_in_flight <= 4,
        "{max_in_flight} calls in flight for a limit of 4"
    );
    assert!(
        t.admitted >= 20,
        "the slots were not shared: only {} admitted in 5 s",
        t.admitted
    );
    assert!(
        t.throttled
            .get("max_parallel_requests")
            .copied()
            .unwrap_or(0)
            > 0
    );

    // rpm 30 in a 10 s window, 6 clients pushing for 5 s (inside one window): exactly 30,
    // then, in the next window, 30 again.
    let rpm = 30;
    let key = fleet.generate_key(json!({"rpm_limit": rpm}));
    let started = Instant::now();
    for window in 0..2 {
        let t = drive_for(&fleet, &key, 6, Duration::from_secs(5), &[]);
        assert!(
            t.other.is_empty(),
            "unexpected answers: {:?}",
            &t.other[..t.other.len().min(3)]
        );
        assert!(
            t.admitted <= rpm,
            "window {window}: {} admitted for rpm {rpm}",
            t.admitted
        );
        assert!(
            t.admitted + ENVOYS >= rpm,
            "window {window}: only {} admitted for rpm {rpm}: the window was not lent out",
            t.admitted
        );
        assert!(t.throttled.get("requests").copied().unwrap_or(0) > 0);
        // Into the next window (opened by the first call after this one ends).
        if let Some(rest) =
            (RATE_WINDOW + Duration::from_millis(500)).checked_sub(started.elapsed())
        {
            std::thread::sleep(rest);
        }
    }

    // tpm 120 with calls of exactly their estimate (1 prompt token by LiteLLM's chars/4 + 5
    // completion tokens): 20 calls' worth across the fleet in one window.
    let tpm = 120;
    let key = fleet.generate_key(json!({"tpm_limit": tpm}));
    let usage = r#"{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}"#;
    let t = drive_for(
        &fleet,
        &key,
        6,
        Duration::from_secs(5),
        &[("x-fake-usage", usage)],
    );
    assert!(
        t.other.is_empty(),
        "unexpected answers: {:?}",
        &t.other[..t.other.len().min(3)]
    );
    assert!(
        t.admitted * 6 <= tpm,
        "{} calls of 6 tokens admitted for tpm {tpm}",
        t.admitted
    );
    assert!(
        t.admitted * 6 + ENVOYS * 6 >= tpm,
        "only {} calls of 6 tokens admitted for tpm {tpm}",
        t.admitted
    );
    assert!(t.throttled.get("tokens").copied().unwrap_or(0) > 0);
}

/// `budget_duration: 10s` (resets aligned at :00, :10, :20, ... as LiteLLM computes them; the
/// shortest period worth a test) crossing resets under load on three Envoys: in every period
/// at most M + N·ĉ is admitted, and each new period's slices are lent (the budget is used
/// again after each reset). Calls are put in the period their start falls in (the spend logs'
/// `start_time`, Envoy's clock); a call started within 1 s before a reset may have been
/// admitted after it (a loaded machine, a pause to borrow), and is counted in both periods.
#[test]
fn budget_resets_cross_the_fleet() {
    let mut fleet = Fleet::start("fleet-resets", CONFIG, ENVOYS, 2);
    let calls = 30;
    let key = fleet.generate_key(json!({
        "max_budget": calls as f64 * CALL_USD,
        "budget_duration": "10s",
    }));
    // Start 200 ms into a period, and run through two whole periods after it.
    let period = 10_000_000i64;
    let now_micros = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    };
    let into = now_micros().rem_euclid(period);
    std::thread::sleep(Duration::from_micros(
        (period - into + 200_000).rem_euclid(period) as u64,
    ));
    let first = now_micros().div_euclid(period);
    let t = drive(
        &mut fleet,
        &key,
        6,
        |c, _| c % ENVOYS,
        |_, _, _| {},
        |_, elapsed, _| elapsed > Duration::from_secs(29),
    );
    assert!(
        t.other.is_empty(),
        "{} unexpected answers: {:?}",
        t.other.len(),
        &t.other[..t.other.len().min(3)]
    );
    let (rows, distinct) = settled_logs(shared(), &fleet, &key, t.admitted);
    assert_eq!((rows, distinct), (t.admitted, t.admitted));
    let starts = shared().psql(
        &fleet.db,
        &format!(
            "SELECT string_agg(start_time::text, ' ') FROM tollgate.spend_logs \
             WHERE api_key = '{}'",
            sha256_hex(&key)
        ),
    );
    let starts: Vec<i64> = starts.split(' ').map(|s| s.parse().unwrap()).collect();
    for p in first..first + 3 {
        let (begin, end) = (p * period, (p + 1) * period);
        let certain = starts.iter().filter(|s| (begin..end).contains(*s)).count();
        let straddling = starts
            .iter()
            .filter(|s| (begin - 1_000_000..begin).contains(*s))
            .count();
        eprintln!(
            "period {}: {certain} admitted (+{straddling} started just before its reset) of {calls}",
            p - first
        );
        assert!(
            certain + straddling <= calls + ENVOYS,
            "period {}: {certain} + {straddling} admitted for a budget of {calls} calls",
            p - first
        );
        assert!(
            certain + ENVOYS >= calls,
            "period {}: only {certain} admitted: the new period's slices were not lent",
            p - first
        );
    }
}

/// Envoy `i`'s lease borrows so far (`tollgate_lease_borrows_total`, every result), from its
/// admin port (in its rendered bootstrap).
fn borrows(fleet: &Fleet, i: usize) -> f64 {
    let bootstrap =
        std::fs::read_to_string(fleet.scratch_dir().join(format!("envoy-{i}.yaml"))).unwrap();
    let admin = &bootstrap[bootstrap.find("admin").expect("an admin section")..];
    let at = &admin[admin.find("port_value").expect("an admin port") + "port_value".len()..];
    let port: u16 = at
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let r = common::prometheus::envoy_stats(port);
    r.assert_status(200);
    common::prometheus::values(
        &common::prometheus::parse(&r.body),
        "tollgate_lease_borrows_total",
        &[],
    )
    .iter()
    .sum()
}

fn all_borrows(fleet: &Fleet) -> f64 {
    (0..ENVOYS).map(|i| borrows(fleet, i)).sum()
}

/// FLEET.md §4.7: the next period's slice is issued in the last seconds before a reset, so
/// steady traffic crosses `budget_duration: 10s` resets on three Envoys without pausing to
/// borrow (without it each Envoy's first request after each reset borrows), and every call is
/// admitted and booked once.
#[test]
fn resets_are_crossed_without_borrowing() {
    let fleet = Fleet::start("fleet-ahead", CONFIG, ENVOYS, 2);
    let key = fleet.generate_key(json!({
        "max_budget": BUDGET_CALLS as f64 * CALL_USD,
        "budget_duration": "10s",
    }));
    let period = 10_000_000i64;
    let into = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64)
        .rem_euclid(period);
    // Start 1 s into a period; warm up for 3 s, then run across two resets.
    std::thread::sleep(Duration::from_micros(
        (period - into + 1_000_000).rem_euclid(period) as u64,
    ));
    let pace = [("x-fake-delay-ms", "200")];
    let warm = drive_for(&fleet, &key, ENVOYS, Duration::from_secs(3), &pace);
    let before = all_borrows(&fleet);
    let run = drive_for(&fleet, &key, ENVOYS, Duration::from_secs(21), &pace);
    let during = all_borrows(&fleet) - before;
    eprintln!(
        "{} + {} admitted; borrows: {before} warming up, {during} across two resets",
        warm.admitted, run.admitted
    );
    for t in [&warm, &run] {
        assert!(t.other.is_empty(), "unexpected answers: {:?}", t.other);
        assert!(t.throttled.is_empty(), "refused: {:?}", t.throttled);
    }
    assert!(run.admitted >= 60, "only {} calls in 21 s", run.admitted);
    assert!(
        during < ENVOYS as f64,
        "{during} borrows across two resets: the next periods' slices were not issued ahead"
    );
    let admitted = warm.admitted + run.admitted;
    assert_eq!(fleet.provider_requests() as usize, admitted);
    let (rows, distinct) = settled_logs(shared(), &fleet, &key, admitted);
    assert_eq!((rows, distinct), (admitted, admitted));
}

/// FLEET.md §4.9: under continuous traffic each rpm window's slices are issued ahead in the
/// last seconds of the window before, back to back: the fleet crosses window ends without
/// pausing to borrow (without it each Envoy's first request after each end borrows), the
/// windows the sidecars open follow one another exactly `rate_limit_window_size` apart (one
/// opened by a call after the end would start later), and no call is refused.
/// `rate_limits_hold_across_the_fleet` checks that a window issued ahead still admits at most
/// its rpm.
#[test]
fn rate_windows_are_crossed_without_borrowing() {
    let fleet = Fleet::start("fleet-windows", RATE_CONFIG, ENVOYS, 2);
    let key = fleet.generate_key(json!({"rpm_limit": 1000}));
    let scope = format!("rpm:api_key:{}", sha256_hex(&key));
    let pace = [("x-fake-delay-ms", "200")];
    let warm = drive_for(&fleet, &key, ENVOYS, Duration::from_secs(3), &pace);
    let before = all_borrows(&fleet);
    // The windows' ends, as the lease rows show them while the load runs.
    let ends = Mutex::new(std::collections::BTreeSet::new());
    let done = AtomicBool::new(false);
    let run = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let periods = shared().psql(
                    &fleet.db,
                    &format!(
                        "SELECT string_agg(DISTINCT period::text, ' ') FROM tollgate.lease \
                         WHERE scope = '{scope}'"
                    ),
                );
                let mut ends = ends.lock().unwrap();
                ends.extend(
                    periods
                        .split_whitespace()
                        .map(|p| p.parse::<i64>().unwrap()),
                );
                drop(ends);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let run = drive_for(&fleet, &key, ENVOYS, Duration::from_secs(23), &pace);
        done.store(true, Ordering::SeqCst);
        run
    });
    let during = all_borrows(&fleet) - before;
    let ends: Vec<i64> = ends.into_inner().unwrap().into_iter().collect();
    eprintln!(
        "{} + {} admitted; borrows: {before} warming up, {during} across the window ends; \
         window ends {ends:?}",
        warm.admitted, run.admitted
    );
    for t in [&warm, &run] {
        assert!(t.other.is_empty(), "unexpected answers: {:?}", t.other);
        assert!(t.throttled.is_empty(), "refused: {:?}", t.throttled);
    }
    assert!(run.admitted >= 60, "only {} calls in 23 s", run.admitted);
    assert!(ends.len() >= 3, "two window ends not crossed: {ends:?}");
    let window = RATE_WINDOW.as_micros() as i64;
    for pair in ends.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            window,
            "windows not back to back: {ends:?}"
        );
    }
    assert!(
        during < ENVOYS as f64,
        "{during} borrows across two window ends: the next windows' slices were not issued ahead"
    );
    assert_eq!(
        fleet.provider_requests() as usize,
        warm.admitted + run.admitted
    );
}

/// [`CONFIG`] with 60 s rate windows, long enough to outlast the idle time.
fn idle_config() -> String {
    CONFIG.replace(
        "  tollgate_fleet:",
        "  rate_limit_window_size: 60\n  tollgate_fleet:",
    )
}

/// Calls from one client to Envoy `i` until `until`, or `calls` admitted: (admitted, 429s).
fn calls_to(fleet: &Fleet, i: usize, key: &str, calls: usize, until: Instant) -> (usize, usize) {
    let (mut admitted, mut throttled) = (0, 0);
    let auth = format!("Bearer {key}");
    while admitted < calls && Instant::now() < until {
        let r = fleet.post(i, "/v1/chat/completions", &auth, &hi());
        match r.status {
            200 => admitted += 1,
            429 => {
                throttled += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    (admitted, throttled)
}

/// FLEET.md §4.4: an Envoy that stops using a scope returns its slice after the idle time
/// (30 s), so the others can use the whole limit. rpm 40 in a 60 s window: Envoy 0 sends 10
/// quick calls (its slices grow past what it uses), goes idle; after 33 s Envoys 1 and 2
/// together get the 30 left, not what Envoy 0's unused slice would strand (a rate lease
/// counts until its window ends, even expired).
#[test]
fn idle_slices_are_returned_to_the_fleet() {
    let fleet = Fleet::start("fleet-idle", &idle_config(), ENVOYS, 2);
    let rpm = 40;
    let key = fleet.generate_key(json!({"rpm_limit": rpm}));
    let started = Instant::now();
    let far = started + Duration::from_secs(20);
    let (first, refused) = calls_to(&fleet, 0, &key, 10, far);
    assert_eq!((first, refused), (10, 0));
    std::thread::sleep(Duration::from_secs(33));
    // Envoys 1 and 2, in turn, until the window is used up (well inside its 60 s).
    let until = started + Duration::from_secs(50);
    let auth = format!("Bearer {key}");
    let (mut rest, mut throttled, mut n) = (0, 0, 0);
    while Instant::now() < until && throttled < 10 {
        n += 1;
        let r = fleet.post(1 + n % 2, "/v1/chat/completions", &auth, &hi());
        match r.status {
            200 => rest += 1,
            429 => throttled += 1,
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    eprintln!("rpm {rpm}: 10 on Envoy 0, then {rest} on Envoys 1 and 2 after it went idle");
    assert!(
        started.elapsed() < Duration::from_secs(58),
        "ran past the window"
    );
    assert!(
        first + rest <= rpm,
        "{} admitted for rpm {rpm}",
        first + rest
    );
    assert!(
        first + rest + ENVOYS >= rpm,
        "only {rest} admitted after Envoy 0 went idle: its slice was not returned"
    );
}
