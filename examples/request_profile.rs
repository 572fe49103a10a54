//! Where the filter's own time goes, natively: the bench's request (`bench/bench.py`: a key with
//! a 30-day budget, rpm, tpm and parallel limits, a proxy-wide budget, an end user without a
//! record, a priced model, a non-streamed JSON answer) driven through the request [`Flow`] on the
//! mock host, timed per callback with the host calls each one makes; then the pure functions
//! those callbacks run, timed one by one on the same inputs.
//!
//! `cargo run --release --example request_profile [ITERATIONS]` (default 100 000). x86_64 native
//! code, not V8: read the figures as proportions. The mock host's own work (copying headers and
//! bodies, logging each call) is inside the callback figures, as Envoy's is in production.
//!
//! The callbacks are timed with fleet mode off, then on (`tollgate_fleet`, one Envoy, slices
//! warm: the first request borrows, and the renewals the requests enqueue are answered between
//! requests as the root tick would, untimed), so the difference is fleet mode's request-path
//! cost; the shared-data entries' coding is timed last.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;
use tollgate::admission::{self, Caller};
use tollgate::budgets::{self, Calendar};
use tollgate::entry::Fields;
use tollgate::flow::{key_cache, mock, mock::MockHost, Flow, Shared, Step};
use tollgate::key_format::hash_key;
use tollgate::plugin_config::FleetSettings;
use tollgate::plugin_config::{Deployment, PluginConfig, Pricing};
use tollgate::rate_leases::{Slice, Slices};
use tollgate::rate_limits;
use tollgate::records::{
    CustomerLookup, KeyRecord, LeaseAnswer, LeaseGrant, LeaseItem, LeaseRequest, SpendEvent,
};
use tollgate::response_headers::success_headers;
use tollgate::routes::LlmRoute;
use tollgate::usage::{BodyKind, UsageReader};

const KEY: &str = "sk-bench-profile-0001";
/// `bench.py`'s `SMALL_BODY`, as wrk sends it.
const BODY: &str = r#"{"model":"bench-model","user":"bench-customer","max_tokens":16,"messages":[{"role":"user","content":"Say something short about benchmarks."}]}"#;
/// What `tollgate-fake-llm` answers to it.
const ANSWER: &str = r#"{"id":"chatcmpl-fake-1","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Benchmarks measure."},"finish_reason":"stop"}],"usage":{"prompt_tokens":16,"completion_tokens":4,"total_tokens":20}}"#;
const START_MICROS: i64 = 1_764_500_000_000_000;

fn config() -> PluginConfig {
    let deployments = vec![Deployment {
        model_name: "bench-model".into(),
        id: "bench-model-id".into(),
        provider: "openai".into(),
        backend_model: "bench-model".into(),
        cluster: "upstream_bench".into(),
        authority: "127.0.0.1:8089".into(),
        base_path: "/v1".into(),
        api_key: Some("sk-bench-provider".into()),
        pricing: Pricing {
            input_cost_per_token: Some(0.000_000_1),
            output_cost_per_token: Some(0.000_000_2),
            ..Default::default()
        },
        ..Default::default()
    }];
    PluginConfig {
        max_request_body_bytes: 8 << 20,
        ..mock::plugin_config(deployments, 1_000_000.0)
    }
}

/// The bench key (`KEY_LIMITS` in bench.py), with the proxy-wide budget the sidecar attaches.
fn key_record() -> KeyRecord {
    KeyRecord {
        token: hash_key(KEY),
        key_name: "sk-...0001".into(),
        max_budget: Some(1_000_000.0),
        budget_duration: Some("30d".into()),
        budget_reset_at_micros: Some(START_MICROS + 30 * 86_400_000_000),
        rpm_limit: Some(1_000_000_000),
        tpm_limit: Some(1_000_000_000_000),
        max_parallel_requests: Some(100_000),
        proxy_budget: Some(tollgate::records::BudgetState {
            max_budget: Some(1_000_000.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Bench {
    host: MockHost,
    shared: Rc<Shared>,
    /// Fleet mode: lease calls answered so far (borrows, renewal reports).
    borrows: Cell<usize>,
    renewals: Cell<usize>,
}

impl Bench {
    fn new(fleet: bool) -> Bench {
        let mut config = config();
        if fleet {
            config.fleet = Some(FleetSettings::default());
        }
        let (host, mut shared) = mock::configured(config, START_MICROS);
        if fleet {
            shared.lease_queue = Some(mock::LEASE_QUEUE_ID);
            shared.envoy_id = Some("0123456789abcdef0123456789abcdef".into());
            if tollgate::shared_store::ensure_lease(&host.store).is_err() {
                eprintln!("request_profile: no creation lease");
                std::process::exit(1);
            }
        }
        let shared = Rc::new(shared);
        key_cache::put(&host, &shared.decoded, &hash_key(KEY), &key_record(), 0);
        let no_record = CustomerLookup::NotFound {
            default_budget: None,
        };
        key_cache::put_customer(&host, &shared.decoded, "bench-customer", &no_record);
        *host.request_headers.borrow_mut() = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/v1/chat/completions".into()),
            (":authority".into(), "127.0.0.1:10000".into()),
            (":scheme".into(), "http".into()),
            ("authorization".into(), format!("Bearer {KEY}")),
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), BODY.len().to_string()),
            ("x-forwarded-proto".into(), "http".into()),
            (
                "x-request-id".into(),
                "5f8f1c3e-2b1a-4c1e-9d5e-0123456789ab".into(),
            ),
        ];
        Bench {
            host,
            shared,
            borrows: Cell::new(0),
            renewals: Cell::new(0),
        }
    }

    /// The sidecar's answer to `items`: plenty lent to each (an rpm/tpm window of 60 s opened
    /// when none runs), as a warm key far from its limits gets.
    fn answer(&self, items: &[LeaseItem]) -> LeaseAnswer {
        let now = self.host.now.get();
        let grants = items.iter().map(|item| LeaseGrant {
            scope: item.scope.clone(),
            period: match item.level.as_str() {
                "rpm" | "tpm" if item.period <= now => now + 60_000_000,
                _ => item.period,
            },
            grant: item.used.saturating_add(1_000_000_000_000),
            ttl_ms: 10_000,
            spend: 0,
            max_nanos: None,
        });
        LeaseAnswer {
            items: grants.collect(),
        }
    }

    /// Fleet mode: a request paused on a borrow gets the sidecar's answer.
    fn answer_borrow(&self, flow: &mut Flow) -> Step {
        let Some((_, body)) = self.host.posted.borrow().last().cloned() else {
            eprintln!("request_profile: paused with no lease call");
            std::process::exit(1);
        };
        let Ok(request) = serde_json::from_slice::<LeaseRequest>(&body) else {
            eprintln!("request_profile: the lease call is not a LeaseRequest");
            std::process::exit(1);
        };
        let answer = serde_json::to_vec(&self.answer(&request.items)).unwrap_or_default();
        let token = u32::try_from(self.host.dispatched.borrow().len()).unwrap_or(0);
        *self.host.call_answer.borrow_mut() = Some((200, answer.clone()));
        self.borrows.set(self.borrows.get() + 1);
        flow.on_call_response(&self.host, token, answer.len())
    }

    /// Fleet mode: the root tick's renewal report, answered (the queued renewals).
    fn tick(&self) {
        let queued: Vec<Vec<u8>> = self.host.lease_queue.borrow_mut().drain(..).collect();
        if queued.is_empty() {
            return;
        }
        let now = self.host.now.get();
        let items = budgets::renewal_items(&self.host, &queued, now);
        let Some(seq) = budgets::next_lease_seq(&self.host, now) else {
            return;
        };
        let asked: Vec<String> = items.iter().map(|i| i.scope.clone()).collect();
        budgets::apply_lease_answer(&self.host, &self.answer(&items), &asked, seq, now, now);
        self.renewals.set(self.renewals.get() + 1);
    }
}

const STAGES: [&str; 5] = [
    "on_request_headers (credential, key lookup)",
    "on_request_body (parse, access, customer, budgets, limits, rewrite)",
    "on_response_headers (hold the JSON answer)",
    "on_response_body (usage, cost and limit headers)",
    "on_log (release, settle, spend event, counters)",
];

/// One whole request; adds each callback's time (ns) and host calls to the totals.
fn one_request(
    b: &Bench,
    ns: &mut [u128; 5],
    calls: &mut [usize; 5],
    kinds: &mut BTreeMap<&'static str, usize>,
) {
    let headers = b.host.request_headers.borrow().clone();
    let mut flow = Flow::new(Rc::clone(&b.shared));
    *b.host.request_body.borrow_mut() = BODY.as_bytes().to_vec();
    *b.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "application/json".into()),
        ("content-length".into(), ANSWER.len().to_string()),
    ];
    *b.host.response_chunk.borrow_mut() = ANSWER.as_bytes().to_vec();
    b.host.now.set(b.host.now.get() + 200);
    let mut stage = |i: usize, f: &mut dyn FnMut()| {
        b.host.clear_calls();
        let t = Instant::now();
        f();
        ns[i] += t.elapsed().as_nanos();
        calls[i] += b.host.call_count();
        for name in b.host.calls.borrow().iter() {
            *kinds.entry(name).or_default() += 1;
        }
    };
    stage(0, &mut || {
        black_box(flow.on_request_headers(&b.host, false));
    });
    let mut paused = false;
    stage(1, &mut || {
        paused = flow.on_request_body(&b.host, BODY.len(), true) == Step::Pause;
    });
    if paused && b.answer_borrow(&mut flow) == Step::Pause {
        eprintln!("request_profile: still paused after a borrow");
        std::process::exit(1);
    }
    stage(2, &mut || {
        black_box(flow.on_response_headers(&b.host, false));
    });
    stage(3, &mut || {
        black_box(flow.on_response_body(&b.host, ANSWER.len(), true));
    });
    stage(4, &mut || flow.on_log(&b.host));
    // The request as the next one finds it (the rewrite changed these).
    *b.host.request_headers.borrow_mut() = headers;
    b.host.queue.borrow_mut().clear();
    b.host.counted.borrow_mut().clear();
    b.host.recorded.borrow_mut().clear();
    b.host.posted.borrow_mut().clear();
    b.tick();
}

/// Mean ns of `f` over `n` runs.
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let n: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 100_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: request_profile [ITERATIONS]");
            std::process::exit(2);
        }
    };
    let benches = [Bench::new(false), Bench::new(true)];
    for b in &benches {
        callbacks(b, n);
    }
    functions(&benches[0], n);
    // Whole requests again, off and on alternating, so a busy machine weighs on both alike.
    let mut diffs: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let [off, on] = benches.each_ref().map(|b| callbacks_quiet(b, n));
            on - off
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    println!(
        "Fleet mode on − off, whole request, median of {ROUNDS} alternating rounds: {:+.2} µs \
         ({:+.2} to {:+.2}).\n",
        diffs[ROUNDS / 2],
        diffs[0],
        diffs[ROUNDS - 1]
    );
    entries(n);
}

/// Alternating rounds of the on − off comparison.
const ROUNDS: usize = 5;

/// µs per request of `n` requests, nothing printed.
fn callbacks_quiet(b: &Bench, n: u32) -> f64 {
    let (mut ns, mut calls, mut kinds) = ([0u128; 5], [0usize; 5], BTreeMap::new());
    for _ in 0..n {
        one_request(b, &mut ns, &mut calls, &mut kinds);
    }
    ns.iter().sum::<u128>() as f64 / f64::from(n) / 1000.0
}

/// The callbacks of `n` requests, timed and printed.
fn callbacks(b: &Bench, n: u32) {
    let fleet = b.shared.config.fleet.is_some();
    let (mut ns, mut calls, mut kinds) = ([0u128; 5], [0usize; 5], BTreeMap::new());
    // Warm-up: the worker's decoded record, allocator, caches (fleet mode: the slices).
    for _ in 0..1000 {
        one_request(b, &mut [0; 5], &mut [0; 5], &mut BTreeMap::new());
    }
    if b.host.reply.borrow().is_some() {
        eprintln!(
            "request_profile: the bench request was refused: {:?}",
            b.host.reply.borrow()
        );
        std::process::exit(1);
    }
    let (borrows, renewals) = (b.borrows.get(), b.renewals.get());
    for _ in 0..n {
        one_request(b, &mut ns, &mut calls, &mut kinds);
    }
    let mode = if fleet { "on" } else { "off" };
    println!("## Per callback, fleet mode {mode} ({n} requests through Flow on the mock host)\n");
    println!("| callback | µs per request | host calls |");
    println!("|---|---|---|");
    let total: u128 = ns.iter().sum();
    for (i, name) in STAGES.iter().enumerate() {
        let us = ns[i] as f64 / f64::from(n) / 1000.0;
        println!("| {name} | {us:.2} | {} |", calls[i] / n as usize);
    }
    println!(
        "| **whole request** | **{:.2}** | **{}** |\n",
        total as f64 / f64::from(n) / 1000.0,
        calls.iter().sum::<usize>() / n as usize
    );
    println!(
        "Host calls per request by kind (the mock's names): {}.\n",
        kinds
            .iter()
            .map(|(k, c)| format!("{k} {}", *c as f64 / f64::from(n)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if fleet {
        println!(
            "Lease calls while measured: {} borrows, {} renewal reports (answered untimed).\n",
            b.borrows.get() - borrows,
            b.renewals.get() - renewals
        );
    }
}

/// The shared-data entries' coding: decoded and encoded again, as every update does.
fn entries(n: u32) {
    let fleet_off = budgets::Counter {
        reset_at: START_MICROS,
        spend: 123_456_789,
        reserved: 2_400,
        ..Default::default()
    };
    let leased = budgets::Counter {
        grant: 1_000_000_000_000,
        deadline: START_MICROS + 10_000_000,
        global: 98_765_432_100,
        global_at: 123_000_000,
        asked: START_MICROS - 400_000,
        asked_used: 120_000_000,
        peak: 2_400,
        seq: 42,
        ..fleet_off
    };
    let slice = Slice {
        period: START_MICROS + 60_000_000,
        used: 123_456,
        released: 120_000,
        grant: 1_000_000_000,
        deadline: START_MICROS + 10_000_000,
        global: 234_567,
        global_at: 3_456,
        asked: START_MICROS - 400_000,
        asked_used: 120_000,
        peak: 36,
        ..Default::default()
    };
    let mut slices = Slices::default();
    for lent in [
        tollgate::rate_leases::Lent::Rpm,
        tollgate::rate_leases::Lent::Slots,
        tollgate::rate_leases::Lent::Tpm,
    ] {
        *slices.get_mut(lent) = slice;
    }
    let counter_bytes = [fleet_off.encode(), leased.encode()];
    let slices_bytes = slices.encode();
    let rows: [(&str, usize, f64); 3] = [
        (
            "budget entry, fleet off (no lease fields)",
            counter_bytes[0].len(),
            time(n, || {
                black_box(budgets::Counter::decode(black_box(&counter_bytes[0])).encode());
            }),
        ),
        (
            "budget entry, fleet on (leased)",
            counter_bytes[1].len(),
            time(n, || {
                black_box(budgets::Counter::decode(black_box(&counter_bytes[1])).encode());
            }),
        ),
        (
            "rate scope's slices, fleet on (rpm, parallel, tpm)",
            slices_bytes.len(),
            time(n, || {
                black_box(Slices::decode(black_box(&slices_bytes)).encode());
            }),
        ),
    ];
    println!("## Shared-data entries: decode + encode ({n} runs each)\n");
    println!("| entry | bytes | µs |");
    println!("|---|---|---|");
    for (name, bytes, ns) in rows {
        println!("| {name} | {bytes} | {:.3} |", ns / 1000.0);
    }
}

/// The pure functions the callbacks run, each timed alone on the bench request's inputs.
fn functions(b: &Bench, n: u32) {
    let config = &b.shared.config;
    let host = &b.host;
    let hash = hash_key(KEY);
    let record = match key_cache::get(host, &b.shared.decoded, &hash, START_MICROS) {
        key_cache::Cached::Known(r) => r,
        _ => {
            eprintln!("request_profile: the key is not cached");
            std::process::exit(1);
        }
    };
    let caller = Caller::VirtualKey {
        record: Rc::clone(&record),
        raw_last4: "0001".into(),
    };
    let route = LlmRoute::ChatCompletions;
    let path = "/v1/chat/completions";
    let now = START_MICROS + 1_000_000;
    let cal = Calendar::default();
    let admitted = match admission::admit(config, &caller, route, path, BODY.as_bytes(), now, 0) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("request_profile: refused: {e:?}");
            std::process::exit(1);
        }
    };
    let request = &admitted.request;
    let pricing = &admitted.deployment.pricing;
    let customer = CustomerLookup::NotFound {
        default_budget: None,
    };
    let scopes = admission::budget_scopes_with_customer(
        config,
        &caller,
        &request.model,
        pricing,
        Some(("bench-customer", &customer)),
    );
    let plan = admission::limit_plan_for(config, &caller, request, route, None);
    let event = SpendEvent {
        event_id: b.shared.next_event_id(),
        api_key: Some(record.token.clone()),
        model: request.model.clone(),
        model_id: admitted.deployment.id.clone(),
        call_type: "acompletion".into(),
        start_time_micros: now,
        end_time_micros: now + 300,
        prompt_tokens: 16,
        completion_tokens: 4,
        total_tokens: 20,
        spend_nanos: 2_400,
        status: "success".into(),
        request_id: "chatcmpl-fake-1".into(),
        ..Default::default()
    };
    let headers = host.request_headers.borrow().clone();
    let mut rows: Vec<(&str, f64)> = Vec::new();
    rows.push((
        "credential read + sha256 of the key",
        time(n, || {
            let raw = tollgate::credential::extract_credential(
                |name| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                },
                None,
            );
            black_box(raw.map(|r| hash_key(&r)).ok());
        }),
    ));
    rows.push((
        "key record from shared data (decoded copy reused)",
        time(n, || {
            black_box(key_cache::get(host, &b.shared.decoded, &hash, now));
        }),
    ));
    rows.push((
        "request body parse (serde_json tree) + model access + deployment",
        time(n, || {
            black_box(admission::admit(config, &caller, route, path, BODY.as_bytes(), now, 0).ok());
        }),
    ));
    rows.push((
        "  of which request_body::parse",
        time(n, || {
            black_box(tollgate::request_body::parse(BODY.as_bytes()).ok());
        }),
    ));
    rows.push((
        "customer record from shared data + JSON decode",
        time(n, || {
            black_box(key_cache::get_customer(
                host,
                &b.shared.decoded,
                "bench-customer",
            ));
        }),
    ));
    rows.push((
        "budget scopes + limit plan + prompt estimate",
        time(n, || {
            black_box(admission::budget_scopes_with_customer(
                config,
                &caller,
                &request.model,
                pricing,
                Some(("bench-customer", &customer)),
            ));
            black_box(admission::limit_plan_for(
                config, &caller, request, route, None,
            ));
            black_box(request.input_token_estimate());
        }),
    ));
    rows.push((
        "two budgets admitted and settled (4 get + 4 set)",
        time(n, || {
            if let Ok(budgets::Admission::Admitted { ticket, .. }) =
                budgets::admit_in(host, &scopes, 2_000, now, cal, 400, None)
            {
                black_box(budgets::settle(host, &ticket, Some(2_400), now, cal));
            }
        }),
    ));
    rows.push((
        "the key's limits admitted and released (2 get + 2 set)",
        time(n, || {
            if let Ok(ticket) = rate_limits::admit(
                host,
                &plan.descriptors,
                plan.token_estimate,
                now,
                60_000_000,
            ) {
                rate_limits::release(host, &ticket, Some(20), now);
            }
        }),
    ));
    rows.push((
        "upstream body (in-place edit)",
        time(n, || {
            black_box(request.upstream_body_from(BODY.as_bytes(), "bench-model", None, false));
        }),
    ));
    rows.push((
        "usage read from the JSON answer",
        time(n, || {
            let mut reader = UsageReader::new(BodyKind::Json, false, 1 << 20);
            reader.feed(ANSWER.as_bytes());
            reader.finish();
            black_box(reader.usage());
        }),
    ));
    let statuses = match rate_limits::admit(
        host,
        &plan.descriptors,
        plan.token_estimate,
        now,
        60_000_000,
    ) {
        Ok(t) => {
            rate_limits::release(host, &t, Some(20), now);
            t.statuses
        }
        Err(_) => Vec::new(),
    };
    rows.push((
        "cost + limit and budget headers (4 Python-style floats, 10 names)",
        time(n, || {
            black_box(success_headers(
                &statuses,
                &request.model,
                Some(1_000),
                Some(1_000_000.0),
                Some(2_400),
                true,
            ));
        }),
    ));
    rows.push((
        "  of which the 4 money figures (Python float repr)",
        time(n, || {
            for usd in [0.0000024, 1_000_000.0, 0.000001, 999_999.9999966] {
                black_box(tollgate::cost::py_float(black_box(usd)));
            }
        }),
    ));
    rows.push((
        "spend event id + JSON",
        time(n, || {
            black_box(b.shared.next_event_id());
            black_box(serde_json::to_vec(&event).ok());
        }),
    ));
    println!("## Per function ({n} runs each, same inputs, mock host)\n");
    println!("| function | µs |");
    println!("|---|---|");
    for (name, ns) in rows {
        println!("| {name} | {:.2} |", ns / 1000.0);
    }
}
