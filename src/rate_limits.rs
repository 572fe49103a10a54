//! rpm, tpm and max-parallel limits with LiteLLM v3's semantics (litellm-compat.md §4), over a
//! `VersionedStore`, so they are exact across all Envoy workers.
//!
//! - rpm/tpm: one fixed window per scope, opened by its first request, `window` long. Requests
//!   1..N pass, N+1 gets 429 until the window ends. rpm is not refunded.
//! - tpm: admission reserves an estimate against every scope (all or nothing) and is refused
//!   when `used + estimate > limit`; settlement swaps the estimate for the real count, and an
//!   upstream failure refunds it.
//! - max parallel: an in-flight gauge; a refused request takes no slot.
//!
//! Tollgate does better than LiteLLM in one place: `retry-after` and `reset_at` give the real
//! end of the window, not a full window from now.

use crate::entry::Fields;
use crate::errors::ApiError;
use crate::shared_store::{update, Decision, StoreError, VersionedStore};
use crate::time::civil_from_unix;

use crate::contract::RATE_LIMIT_PREFIX as PREFIX;

/// One scope a request counts against, e.g. `api_key` = `<hash>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// LiteLLM's descriptor key: `api_key`, `user`, `team`, `end_user`, `model_per_key`, ...
    pub kind: &'static str,
    pub value: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u64>,
}

/// What kind of limit a status is about (`rate_limit_type` header values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitType {
    Requests,
    Tokens,
    MaxParallelRequests,
}

impl LimitType {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitType::Requests => "requests",
            LimitType::Tokens => "tokens",
            LimitType::MaxParallelRequests => "max_parallel_requests",
        }
    }
}

/// Remaining and limit for one scope and type, reported in `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    pub kind: &'static str,
    pub limit_type: LimitType,
    pub limit: u64,
    pub remaining: u64,
}

/// What is left of the key's per-model limit of `limit_type` (`model_per_key`), if it has one.
pub fn model_remaining(statuses: &[LimitStatus], limit_type: LimitType) -> Option<u64> {
    statuses
        .iter()
        .find(|s| s.kind == "model_per_key" && s.limit_type == limit_type)
        .map(|s| s.remaining)
}

/// What admission took in one scope's entry, to give back or settle when the request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: String,
    /// A parallel slot is held.
    pub slot: bool,
    /// A tpm reservation: the window it was made in (start, µs; fleet mode: its end) and its
    /// tokens.
    pub tokens: Option<(i64, u64)>,
    /// Fleet mode: `key` is a leased slice ([`crate::rate_leases`]).
    pub leased: bool,
}

/// What admission took, to be given back or settled when the request ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ticket {
    pub held: Vec<Held>,
    pub statuses: Vec<LimitStatus>,
}

/// One scope's entry: a fixed window (start µs, requests and tokens counted in it) and the
/// in-flight gauge (which windows do not reset); binary ([`crate::entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Window {
    start: i64,
    requests: u64,
    tokens: u64,
    in_flight: u64,
}

/// The entry's fields, in this order ([`crate::entry`]); a negative count (never written)
/// reads 0.
impl Fields<4> for Window {
    fn to_fields(&self) -> [i64; 4] {
        let field = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        [
            self.start,
            field(self.requests),
            field(self.tokens),
            field(self.in_flight),
        ]
    }

    fn from_fields([start, requests, tokens, in_flight]: [i64; 4]) -> Window {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Window {
            start,
            requests: count(requests),
            tokens: count(tokens),
            in_flight: count(in_flight),
        }
    }
}

impl Window {
    /// The window in force at `now`: a new one if this one has ended. A `now` earlier than the
    /// window's start (another worker opened it after this request read the clock) counts in
    /// it; resetting there would hand out a fresh window and admit too many requests.
    fn current(self, now: i64, window: i64) -> Window {
        if self.start == 0 || now.saturating_sub(self.start) >= window {
            Window {
                start: now,
                requests: 0,
                tokens: 0,
                in_flight: self.in_flight,
            }
        } else {
            self
        }
    }
}

fn window_key(d: &Descriptor) -> String {
    format!("{PREFIX}{}:{}", d.kind, d.value)
}

/// `"%Y-%m-%d %H:%M:%S UTC"`, as LiteLLM's `reset_at`.
fn format_reset_at(micros: i64) -> String {
    let (y, mo, d, h, mi, s) = civil_from_unix(micros.div_euclid(1_000_000));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

pub(crate) fn too_many(
    d: &Descriptor,
    limit_type: LimitType,
    limit: u64,
    current: u64,
    reset_micros: i64,
    now: i64,
) -> ApiError {
    let reset_at = format_reset_at(reset_micros);
    let retry_after = reset_micros.saturating_sub(now).saturating_add(999_999) / 1_000_000;
    let mut e = ApiError::new(
        429,
        "throttling_error",
        format!(
            "Rate limit exceeded for {}: {}. Limit type: {}. Current limit: {limit}, Remaining: {}. Limit resets at: {reset_at}",
            d.kind,
            d.value,
            limit_type.as_str(),
            limit.saturating_sub(current)
        ),
    );
    e.headers = vec![
        ("retry-after".into(), retry_after.max(1).to_string()),
        ("rate_limit_type".into(), limit_type.as_str().into()),
        ("reset_at".into(), reset_at),
    ];
    e
}

pub(crate) fn store_error(_: StoreError) -> ApiError {
    ApiError::service_unavailable("Tollgate could not update its rate-limit counters; try again.")
}

/// Admits a request against every descriptor with LiteLLM's outcome: rpm for every scope, then
/// max parallel, then the tpm reservation; the first refusal in that order is the answer. On
/// refusal, whatever was taken is given back except rpm counts (LiteLLM counts refused requests
/// too).
///
/// Each scope's rpm/tpm window and parallel gauge live in one entry, so a scope costs one
/// compare-and-set: rpm, parallel and tpm are decided together. To keep LiteLLM's order, once a
/// parallel or tpm refusal is pending the later scopes still count rpm (an rpm refusal there
/// takes precedence) and, after a tpm refusal, still check parallel, but take nothing else.
pub fn admit<S: VersionedStore>(
    store: &S,
    descriptors: &[Descriptor],
    token_estimate: u64,
    now: i64,
    window_micros: i64,
) -> Result<Ticket, ApiError> {
    let mut ticket = Ticket::default();
    let (mut rpm_statuses, mut parallel_statuses, mut tpm_statuses) =
        (Vec::new(), Vec::new(), Vec::new());
    // A refusal not returned yet: (0 parallel | 1 tpm, its error); the lower rank wins.
    let mut pending: Option<(u8, ApiError)> = None;
    for d in descriptors {
        if d.rpm.is_none() && d.max_parallel.is_none() && d.tpm.is_none() {
            continue;
        }
        let take = pending.is_none();
        let check_parallel = !matches!(pending, Some((0, _)));
        let key = window_key(d);
        let outcome = update(store, &key, now, |v| {
            let w = Window::decode(v.unwrap_or_default()).current(now, window_micros);
            let mut next = w;
            if let Some(limit) = d.rpm {
                if w.requests + 1 > limit {
                    return Decision::Keep(Step::RefusedRpm(w));
                }
                next.requests = w.requests + 1;
            }
            let mut refusal = None;
            if let Some(limit) = d.max_parallel.filter(|_| check_parallel) {
                if w.in_flight + 1 > limit {
                    refusal = Some(Refusal::Parallel(w.in_flight));
                } else if take {
                    next.in_flight = w.in_flight + 1;
                }
            }
            if let Some(limit) = d.tpm.filter(|_| take && refusal.is_none()) {
                if w.tokens.saturating_add(token_estimate) > limit {
                    refusal = Some(Refusal::Tokens(w));
                } else {
                    next.tokens = w.tokens + token_estimate;
                }
            }
            if let Some(r) = refusal {
                // Only the rpm count (if any) is kept.
                next = Window {
                    requests: next.requests,
                    ..w
                };
                let step = Step::Refused(next, r);
                return if next == w && v.is_some() {
                    Decision::Keep(step)
                } else {
                    Decision::Write(next.encode(), step)
                };
            }
            if next == w && v.is_some() {
                Decision::Keep(Step::Taken(next))
            } else {
                Decision::Write(next.encode(), Step::Taken(next))
            }
        });
        let step = match outcome {
            Ok(step) => step,
            Err(e) => {
                release(store, &ticket, None, now);
                return Err(store_error(e));
            }
        };
        let counted = match step {
            Step::RefusedRpm(w) => {
                release(store, &ticket, None, now);
                let limit = d.rpm.unwrap_or(0);
                return Err(too_many(
                    d,
                    LimitType::Requests,
                    limit,
                    w.requests,
                    w.start.saturating_add(window_micros),
                    now,
                ));
            }
            Step::Taken(w) | Step::Refused(w, _) => w,
        };
        if let Some(limit) = d.rpm {
            rpm_statuses.push(LimitStatus {
                kind: d.kind,
                limit_type: LimitType::Requests,
                limit,
                remaining: limit.saturating_sub(counted.requests),
            });
        }
        if let Step::Refused(_, r) = step {
            let error = match r {
                Refusal::Parallel(n) => (
                    0,
                    too_many(
                        d,
                        LimitType::MaxParallelRequests,
                        d.max_parallel.unwrap_or(0),
                        n,
                        now.saturating_add(1_000_000),
                        now,
                    ),
                ),
                Refusal::Tokens(w) => (
                    1,
                    too_many(
                        d,
                        LimitType::Tokens,
                        d.tpm.unwrap_or(0),
                        w.tokens,
                        w.start.saturating_add(window_micros),
                        now,
                    ),
                ),
            };
            if pending.as_ref().is_none_or(|(rank, _)| error.0 < *rank) {
                pending = Some(error);
            }
            continue;
        }
        if !take {
            continue;
        }
        let slot = d.max_parallel.is_some();
        if let Some(limit) = d.max_parallel {
            parallel_statuses.push(LimitStatus {
                kind: d.kind,
                limit_type: LimitType::MaxParallelRequests,
                limit,
                remaining: limit.saturating_sub(counted.in_flight),
            });
        }
        let tokens = d.tpm.map(|limit| {
            tpm_statuses.push(LimitStatus {
                kind: d.kind,
                limit_type: LimitType::Tokens,
                limit,
                remaining: limit.saturating_sub(counted.tokens),
            });
            (counted.start, token_estimate)
        });
        if slot || tokens.is_some() {
            ticket.held.push(Held {
                key,
                slot,
                tokens,
                leased: false,
            });
        }
    }
    if let Some((_, e)) = pending {
        release(store, &ticket, None, now);
        return Err(e);
    }
    ticket.statuses = rpm_statuses;
    ticket.statuses.append(&mut parallel_statuses);
    ticket.statuses.append(&mut tpm_statuses);
    Ok(ticket)
}

/// What one scope's compare-and-set decided.
#[derive(Clone, Copy)]
enum Step {
    /// rpm refused: nothing written.
    RefusedRpm(Window),
    /// Everything asked was taken; the window as written.
    Taken(Window),
    /// rpm counted (if limited), but parallel or tpm refused.
    Refused(Window, Refusal),
}

#[derive(Clone, Copy)]
enum Refusal {
    Parallel(u64),
    Tokens(Window),
}

/// Ends a request: frees its parallel slots and settles its token reservations to `actual`
/// tokens (`None`: the call failed, refund the reservation); one compare-and-set per scope.
pub fn release<S: VersionedStore>(
    store: &S,
    ticket: &Ticket,
    actual_tokens: Option<u64>,
    now: i64,
) {
    for h in &ticket.held {
        if h.leased {
            crate::rate_leases::release(store, h, actual_tokens, now);
            continue;
        }
        let _ = update(store, &h.key, now, |v| {
            let Some(bytes) = v else {
                return Decision::Keep(());
            };
            let mut w = Window::decode(bytes);
            if h.slot {
                w.in_flight = w.in_flight.saturating_sub(1);
            }
            if let Some((window_start, tokens)) = h.tokens {
                if w.start == window_start {
                    w.tokens = w
                        .tokens
                        .saturating_sub(tokens)
                        .saturating_add(actual_tokens.unwrap_or(0));
                } else {
                    // The window rolled over while the call ran: charge the real count to the
                    // new one.
                    w.tokens = w.tokens.saturating_add(actual_tokens.unwrap_or(0));
                }
            }
            Decision::Write(w.encode(), ())
        });
    }
}

/// `x-ratelimit-<scope>-{remaining,limit}-<type>` headers for a successful response.
pub fn success_headers(statuses: &[LimitStatus]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in statuses {
        let t = s.limit_type.as_str();
        out.push((
            format!("x-ratelimit-{}-remaining-{t}", s.kind),
            s.remaining.to_string(),
        ));
        out.push((
            format!("x-ratelimit-{}-limit-{t}", s.kind),
            s.limit.to_string(),
        ));
    }
    out
}

/// Which tokens count against tpm (`general_settings.token_rate_limit_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCountType {
    #[default]
    Total,
    Input,
    Output,
}

/// The tpm count of a finished call (`_get_total_tokens_from_usage`).
pub fn counted_tokens(
    kind: TokenCountType,
    prompt: u64,
    completion: u64,
    total: u64,
    cached: u64,
) -> u64 {
    match kind {
        TokenCountType::Total => total.max(prompt + completion).saturating_sub(cached),
        TokenCountType::Input => prompt.saturating_sub(cached),
        TokenCountType::Output => completion,
    }
}

/// LiteLLM's tpm estimate for a request (`_estimate_input_and_output_tokens`):
/// `input = max(1, chars / 4)` (0 without text); output = the explicit cap, else
/// `max(input, floor)` with `floor = min(1024, max(1, min_tpm / 4))`; times `n`.
pub fn estimate_tokens(
    text_chars: u64,
    max_tokens: Option<u64>,
    n: u64,
    min_tpm_limit: Option<u64>,
) -> u64 {
    let input = if text_chars == 0 {
        0
    } else {
        (text_chars / 4).max(1)
    };
    let output = match max_tokens {
        Some(m) => m,
        None => input.max(output_floor(min_tpm_limit)),
    };
    input.saturating_add(output.saturating_mul(n.max(1))).max(1)
}

/// The no-`max_tokens` output floor.
pub fn output_floor(min_tpm_limit: Option<u64>) -> u64 {
    match min_tpm_limit {
        Some(l) => (l / 4).clamp(1, 1024),
        None => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_store::MemoryStore;

    const W: i64 = 60_000_000;

    fn key(rpm: Option<u64>, tpm: Option<u64>, par: Option<u64>) -> Descriptor {
        Descriptor {
            kind: "api_key",
            value: "hash".into(),
            rpm,
            tpm,
            max_parallel: par,
        }
    }

    /// Found by fuzzing (fuzz/fuzz_targets/counters.rs): reset times computed from a clock or a
    /// stored window start near `i64::MAX` overflowed (a panic with overflow checks; a reset in
    /// year -292277 without).
    #[test]
    fn extreme_clock_and_stored_window_do_not_overflow() {
        let reset_at = |e: ApiError| -> String {
            let h: std::collections::HashMap<_, _> = e.headers.into_iter().collect();
            assert!(h["retry-after"].parse::<i64>().unwrap() >= 1);
            h["reset_at"].clone()
        };
        let s = MemoryStore::default();
        let e = admit(&s, &[key(None, None, Some(0))], 1, i64::MAX - 7, W).unwrap_err();
        assert!(!reset_at(e).starts_with('-'));
        let d = key(Some(1), Some(1), None);
        let stored = Window {
            start: i64::MAX - 1,
            requests: 5,
            tokens: 5,
            in_flight: 0,
        };
        s.set(&window_key(&d), &stored.encode(), None).unwrap();
        let e = admit(&s, &[d], 1, i64::MAX - 2, W).unwrap_err();
        assert!(!reset_at(e).starts_with('-'));
    }

    #[test]
    fn rpm_admits_n_then_429_until_window_ends() {
        let s = MemoryStore::default();
        let d = [key(Some(3), None, None)];
        for i in 0..3 {
            let t = admit(&s, &d, 1, 1_000_000 + i, W).unwrap();
            assert_eq!(t.statuses[0].remaining, 2 - i as u64);
        }
        let e = admit(&s, &d, 1, 2_000_000, W).unwrap_err();
        assert_eq!((e.status, e.error_type.as_str()), (429, "throttling_error"));
        assert!(e.message.starts_with("Rate limit exceeded for api_key: hash. Limit type: requests. Current limit: 3, Remaining: 0. Limit resets at: 1970-01-01 00:01:01 UTC"), "{}", e.message);
        let h: std::collections::HashMap<_, _> = e.headers.into_iter().collect();
        assert_eq!(h["retry-after"], "59");
        assert_eq!(h["rate_limit_type"], "requests");
        assert!(admit(&s, &d, 1, 1_000_000 + W, W).is_ok(), "new window");
    }

    #[test]
    fn a_slightly_stale_clock_counts_in_the_current_window() {
        let s = MemoryStore::default();
        let d = [key(Some(2), None, None)];
        admit(&s, &d, 1, 1_000_000, W).unwrap();
        admit(&s, &d, 1, 999_000, W).unwrap();
        assert!(
            admit(&s, &d, 1, 998_000, W).is_err(),
            "no fresh window for an older clock"
        );
    }

    #[test]
    fn parallel_slots_are_released() {
        let s = MemoryStore::default();
        let d = [key(None, None, Some(2))];
        let a = admit(&s, &d, 1, 1, W).unwrap();
        let b = admit(&s, &d, 1, 2, W).unwrap();
        let e = admit(&s, &d, 1, 3, W).unwrap_err();
        assert_eq!(e.headers[1].1, "max_parallel_requests");
        release(&s, &a, Some(5), 4);
        let c = admit(&s, &d, 1, 5, W).unwrap();
        release(&s, &b, None, 6);
        release(&s, &c, None, 7);
        let w = Window::decode(&s.get(&window_key(&d[0])).map(|v| v.0).unwrap_or_default());
        assert_eq!(w.in_flight, 0);
    }

    #[test]
    fn tpm_reserves_settles_and_refunds() {
        let s = MemoryStore::default();
        let d = [key(None, Some(100), None)];
        let t = admit(&s, &d, 60, 1, W).unwrap();
        assert_eq!(t.statuses[0].remaining, 40);
        assert!(admit(&s, &d, 60, 2, W).is_err(), "60 + 60 > 100");
        release(&s, &t, Some(20), 3);
        let t2 = admit(&s, &d, 60, 4, W).unwrap();
        assert_eq!(t2.statuses[0].remaining, 20);
        release(&s, &t2, None, 5);
        let w = Window::decode(&s.get(&window_key(&d[0])).map(|v| v.0).unwrap_or_default());
        assert_eq!(w.tokens, 20, "refund leaves only the settled 20");
    }

    #[test]
    fn refusal_by_a_later_scope_gives_back_earlier_reservations() {
        let s = MemoryStore::default();
        let d = [
            key(None, Some(1000), Some(5)),
            Descriptor {
                kind: "user",
                value: "u".into(),
                rpm: None,
                tpm: Some(10),
                max_parallel: None,
            },
        ];
        let e = admit(&s, &d, 50, 1, W).unwrap_err();
        assert!(e.message.contains("for user: u. Limit type: tokens"));
        let w = Window::decode(&s.get(&window_key(&d[0])).map(|v| v.0).unwrap_or_default());
        assert_eq!((w.tokens, w.in_flight), (0, 0));
    }

    fn scope(
        kind: &'static str,
        rpm: Option<u64>,
        tpm: Option<u64>,
        par: Option<u64>,
    ) -> Descriptor {
        Descriptor {
            kind,
            value: kind.into(),
            rpm,
            tpm,
            max_parallel: par,
        }
    }

    fn entry(s: &MemoryStore, d: &Descriptor) -> Window {
        Window::decode(&s.get(&window_key(d)).map(|v| v.0).unwrap_or_default())
    }

    /// Counts reads and writes, to hold the filter to one compare-and-set per scope.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        gets: std::cell::Cell<u32>,
        sets: std::cell::Cell<u32>,
    }

    impl VersionedStore for Counting {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.gets.set(self.gets.get() + 1);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn one_read_and_one_write_per_scope_for_rpm_tpm_and_parallel() {
        let s = Counting::default();
        let d = [key(Some(10), Some(1000), Some(5))];
        admit(&s, &d, 7, 1, W).unwrap(); // creates the entry (under the lease)
        s.gets.set(0);
        s.sets.set(0);
        let t = admit(&s, &d, 7, 2, W).unwrap();
        assert_eq!((s.gets.get(), s.sets.get()), (1, 1));
        let kinds: Vec<_> = t.statuses.iter().map(|x| x.limit_type).collect();
        assert_eq!(
            kinds,
            [
                LimitType::Requests,
                LimitType::MaxParallelRequests,
                LimitType::Tokens
            ]
        );
        release(&s, &t, Some(3), 3);
        assert_eq!((s.gets.get(), s.sets.get()), (2, 2));
        let w = entry(&s.inner, &d[0]);
        assert_eq!((w.requests, w.tokens, w.in_flight), (2, 7 + 3, 1));
    }

    #[test]
    fn an_rpm_refusal_in_a_later_scope_wins_over_an_earlier_tpm_refusal() {
        let s = MemoryStore::default();
        let d = [
            scope("api_key", Some(10), Some(5), Some(3)),
            scope("user", Some(1), None, None),
        ];
        admit(&s, &d[1..], 1, 1, W).unwrap(); // uses the user's one request
        let e = admit(&s, &d, 50, 2, W).unwrap_err();
        assert!(
            e.message.contains("for user: user. Limit type: requests"),
            "{}",
            e.message
        );
        let w = entry(&s, &d[0]);
        assert_eq!(
            (w.requests, w.tokens, w.in_flight),
            (1, 0, 0),
            "only rpm counted"
        );
    }

    #[test]
    fn a_parallel_refusal_in_a_later_scope_wins_over_an_earlier_tpm_refusal() {
        let s = MemoryStore::default();
        let d = [
            scope("api_key", Some(10), Some(5), Some(3)),
            scope("user", Some(10), None, Some(1)),
        ];
        let held = admit(&s, &d[1..], 1, 1, W).unwrap(); // takes the user's one slot
        let e = admit(&s, &d, 50, 2, W).unwrap_err();
        assert!(
            e.message
                .contains("for user: user. Limit type: max_parallel_requests"),
            "{}",
            e.message
        );
        let (k, u) = (entry(&s, &d[0]), entry(&s, &d[1]));
        assert_eq!((k.requests, k.tokens, k.in_flight), (1, 0, 0));
        assert_eq!(
            (u.requests, u.in_flight),
            (2, 1),
            "rpm counted, slot untouched"
        );
        release(&s, &held, None, 3);
        assert_eq!(entry(&s, &d[1]).in_flight, 0);
    }

    #[test]
    fn after_a_parallel_refusal_later_scopes_still_count_rpm() {
        let s = MemoryStore::default();
        let d = [
            scope("api_key", Some(10), None, Some(1)),
            scope("user", Some(10), Some(100), Some(5)),
        ];
        let held = admit(&s, &d[..1], 1, 1, W).unwrap();
        let e = admit(&s, &d, 1, 2, W).unwrap_err();
        assert!(e
            .message
            .contains("for api_key: api_key. Limit type: max_parallel_requests"));
        let u = entry(&s, &d[1]);
        assert_eq!((u.requests, u.tokens, u.in_flight), (1, 0, 0));
        assert_eq!(entry(&s, &d[0]).requests, 2);
        release(&s, &held, None, 3);
    }

    #[test]
    fn a_new_window_keeps_the_in_flight_gauge() {
        let s = MemoryStore::default();
        let d = [key(Some(5), Some(100), Some(2))];
        let a = admit(&s, &d, 10, 1, W).unwrap();
        let b = admit(&s, &d, 10, 1 + W, W).unwrap();
        let w = entry(&s, &d[0]);
        assert_eq!(
            (w.start, w.requests, w.tokens, w.in_flight),
            (1 + W, 1, 10, 2)
        );
        release(&s, &a, Some(4), 2 + W); // old window: only the real count goes to the new one
        release(&s, &b, Some(4), 3 + W);
        let w = entry(&s, &d[0]);
        assert_eq!((w.tokens, w.in_flight), (8, 0));
    }

    #[test]
    fn estimates_like_litellm() {
        assert_eq!(estimate_tokens(40, Some(5), 1, None), 15);
        assert_eq!(estimate_tokens(40, None, 1, Some(100)), 10 + 25);
        assert_eq!(estimate_tokens(0, None, 1, None), 1024);
        assert_eq!(estimate_tokens(0, Some(0), 1, None), 1);
        assert_eq!(estimate_tokens(8, Some(3), 2, None), 2 + 6);
        assert_eq!(counted_tokens(TokenCountType::Total, 10, 5, 15, 4), 11);
        assert_eq!(counted_tokens(TokenCountType::Input, 10, 5, 15, 4), 6);
        assert_eq!(counted_tokens(TokenCountType::Output, 10, 5, 15, 4), 5);
    }

    #[test]
    fn headers_per_status() {
        let h = success_headers(&[LimitStatus {
            kind: "api_key",
            limit_type: LimitType::Requests,
            limit: 2,
            remaining: 1,
        }]);
        assert_eq!(
            h[0],
            ("x-ratelimit-api_key-remaining-requests".into(), "1".into())
        );
        assert_eq!(
            h[1],
            ("x-ratelimit-api_key-limit-requests".into(), "2".into())
        );
    }
}
