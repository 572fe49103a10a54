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

use crate::duration::civil_from_unix;
use crate::errors::ApiError;
use crate::shared_store::{update, Decision, StoreError, VersionedStore};

const PREFIX: &str = "tollgate:v1:rl:";

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

/// A tpm reservation to settle later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReservation {
    pub key: String,
    pub window_start: i64,
    pub tokens: u64,
}

/// What admission took, to be given back or settled when the request ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ticket {
    pub reservations: Vec<TokenReservation>,
    /// Shared-data keys of parallel gauges holding a slot for this request.
    pub parallel_slots: Vec<String>,
    pub statuses: Vec<LimitStatus>,
}

/// A fixed window: start (µs), requests and tokens counted in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Window {
    start: i64,
    requests: u64,
    tokens: u64,
}

impl Window {
    fn decode(bytes: Option<&[u8]>) -> Window {
        let mut parts = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
            .split(' ')
            .map(|p| p.parse::<i64>().unwrap_or(0));
        Window {
            start: parts.next().unwrap_or(0),
            requests: u64::try_from(parts.next().unwrap_or(0)).unwrap_or(0),
            tokens: u64::try_from(parts.next().unwrap_or(0)).unwrap_or(0),
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!("{} {} {}", self.start, self.requests, self.tokens).into_bytes()
    }

    /// The window in force at `now`: a new one if this one has ended. A `now` earlier than the
    /// window's start (another worker opened it after this request read the clock) counts in
    /// it; resetting there would hand out a fresh window and admit too many requests.
    fn current(self, now: i64, window: i64) -> Window {
        if self.start == 0 || now.saturating_sub(self.start) >= window {
            Window {
                start: now,
                requests: 0,
                tokens: 0,
            }
        } else {
            self
        }
    }
}

fn window_key(d: &Descriptor) -> String {
    format!("{PREFIX}{}:{}", d.kind, d.value)
}

fn parallel_key(d: &Descriptor) -> String {
    format!("{PREFIX}parallel:{}:{}", d.kind, d.value)
}

/// `"%Y-%m-%d %H:%M:%S UTC"`, as LiteLLM's `reset_at`.
fn format_reset_at(micros: i64) -> String {
    let (y, mo, d, h, mi, s) = civil_from_unix(micros.div_euclid(1_000_000));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

fn too_many(
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

fn store_error(_: StoreError) -> ApiError {
    ApiError::service_unavailable("Tollgate could not update its rate-limit counters; try again.")
}

/// Admits a request against every descriptor, in LiteLLM's order: rpm for every scope, then
/// max parallel, then the tpm reservation. On refusal, whatever was taken is given back except
/// rpm counts (LiteLLM counts refused requests too).
pub fn admit<S: VersionedStore>(
    store: &S,
    descriptors: &[Descriptor],
    token_estimate: u64,
    now: i64,
    window_micros: i64,
) -> Result<Ticket, ApiError> {
    let mut ticket = Ticket::default();
    for d in descriptors {
        let Some(limit) = d.rpm else { continue };
        let key = window_key(d);
        let outcome = update(store, &key, now, |v| {
            let w = Window::decode(v).current(now, window_micros);
            if w.requests + 1 > limit {
                Decision::Keep(Err(w))
            } else {
                let next = Window {
                    requests: w.requests + 1,
                    ..w
                };
                Decision::Write(next.encode(), Ok(next))
            }
        })
        .map_err(store_error)?;
        match outcome {
            Ok(w) => ticket.statuses.push(LimitStatus {
                kind: d.kind,
                limit_type: LimitType::Requests,
                limit,
                remaining: limit.saturating_sub(w.requests),
            }),
            Err(w) => {
                return Err(too_many(
                    d,
                    LimitType::Requests,
                    limit,
                    w.requests,
                    w.start.saturating_add(window_micros),
                    now,
                ))
            }
        }
    }
    for d in descriptors {
        let Some(limit) = d.max_parallel else {
            continue;
        };
        let key = parallel_key(d);
        let outcome = update(store, &key, now, |v| {
            let in_flight = Window::decode(v).start.max(0) as u64;
            if in_flight + 1 > limit {
                Decision::Keep(Err(in_flight))
            } else {
                let n = in_flight + 1;
                Decision::Write(n.to_string().into_bytes(), Ok(n))
            }
        });
        match outcome {
            Ok(Ok(n)) => {
                ticket.parallel_slots.push(key);
                ticket.statuses.push(LimitStatus {
                    kind: d.kind,
                    limit_type: LimitType::MaxParallelRequests,
                    limit,
                    remaining: limit.saturating_sub(n),
                });
            }
            Ok(Err(n)) => {
                release(store, &ticket, None, now);
                return Err(too_many(
                    d,
                    LimitType::MaxParallelRequests,
                    limit,
                    n,
                    now.saturating_add(1_000_000),
                    now,
                ));
            }
            Err(e) => {
                release(store, &ticket, None, now);
                return Err(store_error(e));
            }
        }
    }
    for d in descriptors {
        let Some(limit) = d.tpm else { continue };
        let key = window_key(d);
        let outcome = update(store, &key, now, |v| {
            let w = Window::decode(v).current(now, window_micros);
            if w.tokens.saturating_add(token_estimate) > limit {
                Decision::Keep(Err(w))
            } else {
                let next = Window {
                    tokens: w.tokens + token_estimate,
                    ..w
                };
                Decision::Write(next.encode(), Ok(next))
            }
        });
        match outcome {
            Ok(Ok(w)) => {
                ticket.reservations.push(TokenReservation {
                    key,
                    window_start: w.start,
                    tokens: token_estimate,
                });
                ticket.statuses.push(LimitStatus {
                    kind: d.kind,
                    limit_type: LimitType::Tokens,
                    limit,
                    remaining: limit.saturating_sub(w.tokens),
                });
            }
            Ok(Err(w)) => {
                release(store, &ticket, None, now);
                return Err(too_many(
                    d,
                    LimitType::Tokens,
                    limit,
                    w.tokens,
                    w.start.saturating_add(window_micros),
                    now,
                ));
            }
            Err(e) => {
                release(store, &ticket, None, now);
                return Err(store_error(e));
            }
        }
    }
    Ok(ticket)
}

/// Ends a request: frees its parallel slots and settles its token reservations to `actual`
/// tokens (`None`: the call failed, refund the reservation).
pub fn release<S: VersionedStore>(
    store: &S,
    ticket: &Ticket,
    actual_tokens: Option<u64>,
    now: i64,
) {
    for key in &ticket.parallel_slots {
        let _ = update(store, key, now, |v| {
            let n = Window::decode(v).start.max(0) as u64;
            Decision::Write(n.saturating_sub(1).to_string().into_bytes(), ())
        });
    }
    for r in &ticket.reservations {
        let _ = update(store, &r.key, now, |v| {
            let Some(bytes) = v else {
                return Decision::Keep(());
            };
            let mut w = Window::decode(Some(bytes));
            if w.start == r.window_start {
                w.tokens = w
                    .tokens
                    .saturating_sub(r.tokens)
                    .saturating_add(actual_tokens.unwrap_or(0));
            } else {
                // The window rolled over while the call ran: charge the real count to the new one.
                w.tokens = w.tokens.saturating_add(actual_tokens.unwrap_or(0));
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
        s.set(
            &window_key(&d),
            format!("{} 5 5", i64::MAX - 1).as_bytes(),
            None,
        )
        .unwrap();
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
        assert_eq!(s.get(&parallel_key(&d[0])).unwrap().0, b"0");
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
        let w = Window::decode(s.get(&window_key(&d[0])).map(|v| v.0).as_deref());
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
        let w = Window::decode(s.get(&window_key(&d[0])).map(|v| v.0).as_deref());
        assert_eq!(w.tokens, 0);
        assert_eq!(s.get(&parallel_key(&d[0])).unwrap().0, b"0");
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
