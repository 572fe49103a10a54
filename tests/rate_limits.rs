#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Rate limits through a real Envoy running the built filter (litellm-compat.md §4): rpm and
//! tpm fixed windows anchored at the first request, `max_parallel_requests` as a gauge that
//! client aborts give back, the 429 body and headers, the success headers (streams too), and
//! the key, user and per-model scopes.
//!
//! Windows are shortened with `LITELLM_RATE_LIMIT_WINDOW_SIZE` where a test waits for one to
//! end; tests that must not see a window roll over keep the default 60 s.

mod common;

use common::{
    hang_up, poll_until, run_concurrently, unix_now, within_attempts, Resp, Stack, StackOptions,
    MASTER_KEY, SETTLE_TIMEOUT,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// 12 letters: 10 prompt tokens at the fake (OpenAI's chat count: 3 per message + "user" 1 +
/// 3 for the text + 3 priming the reply); LiteLLM's tpm estimate (characters / 4) is 3.
const PROMPT: &str = "abcdefghijkl";

const CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
  - model_name: limited-model
    litellm_params:
      model: openai/limited-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      default_api_key_rpm_limit: 2
general_settings:
  master_key: @MASTER_KEY@
"#;

/// A stack whose rpm/tpm windows last `window_seconds` (None: the default 60 s).
fn stack(window_seconds: Option<u64>) -> Stack {
    Stack::start_with(StackOptions {
        config: CONFIG.to_string(),
        env: window_seconds
            .map(|w| vec![("LITELLM_RATE_LIMIT_WINDOW_SIZE".to_string(), w.to_string())])
            .unwrap_or_default(),
        ..Default::default()
    })
}

fn body_with(model: &str, max_tokens: Option<u64>, stream: bool) -> String {
    let mut b = json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}]
    });
    if let Some(m) = max_tokens {
        b["max_tokens"] = json!(m);
    }
    b.to_string()
}

/// 10 prompt + 5 completion tokens; LiteLLM's tpm estimate is 3 + 5 = 8.
fn body(model: &str) -> String {
    body_with(model, Some(5), false)
}

fn chat(s: &Stack, key: &str, model: &str) -> Resp {
    s.post_with("/v1/chat/completions", key, &[], &body(model))
}

fn chat_ok(s: &Stack, key: &str, model: &str) -> Resp {
    let r = chat(s, key, model);
    r.assert_status(200);
    r
}

fn header_u64(r: &Resp, name: &str) -> Option<u64> {
    r.header(name).map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: {v} is not an integer"))
    })
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses LiteLLM's `reset_at` (`%Y-%m-%d %H:%M:%S UTC`) into Unix seconds.
fn parse_reset_at(s: &str) -> i64 {
    let bad = || panic!("reset_at {s:?} is not `%Y-%m-%d %H:%M:%S UTC`");
    let Some(rest) = s.strip_suffix(" UTC") else {
        bad()
    };
    let Some((date, time)) = rest.split_once(' ') else {
        bad()
    };
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap_or(-1)).collect();
    let t: Vec<i64> = time.split(':').map(|p| p.parse().unwrap_or(-1)).collect();
    if d.len() != 3 || t.len() != 3 || date.len() != 10 || time.len() != 8 {
        bad();
    }
    days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]
}

/// Asserts a 429 from the limiter (§4.3) and returns its `reset_at`.
fn assert_throttled(
    r: &Resp,
    scope: &str,
    value: &str,
    limit_type: &str,
    limit: u64,
    remaining: u64,
) -> String {
    let reset_at = r
        .header("reset_at")
        .unwrap_or_else(|| panic!("no reset_at header: {:?}", r.headers))
        .to_string();
    let err = r.assert_error_message(
        429,
        "throttling_error",
        &format!(
            "Rate limit exceeded for {scope}: {value}. Limit type: {limit_type}. Current limit: {limit}, Remaining: {remaining}. Limit resets at: {reset_at}"
        ),
    );
    assert_eq!(err["param"], Value::Null, "{}", r.body);
    assert_eq!(
        r.header("rate_limit_type"),
        Some(limit_type),
        "{:?}",
        r.headers
    );
    let retry: u64 = header_u64(r, "retry-after")
        .unwrap_or_else(|| panic!("no retry-after header: {:?}", r.headers));
    assert!(retry >= 1, "retry-after {retry}");
    // reset_at is when the window ends: about now + retry-after.
    let at = parse_reset_at(&reset_at) as f64;
    let expected = unix_now() + retry as f64;
    assert!(
        (at - expected).abs() <= 2.0,
        "reset_at {reset_at} is not about now + retry-after ({retry} s)"
    );
    reset_at
}

// ---------------------------------------------------------------------------------------------
// rpm (§4.2, §4.3)

/// rpm 3 with a 2 s window: 3 calls pass (remaining 2, 1, 0), the 4th and 5th get LiteLLM's
/// 429 with the real seconds left, and calls pass again once the window has ended (not before).
#[test]
fn rpm_limit_admits_n_then_429_and_recovers_when_the_window_ends() {
    let window = 2.0;
    let s = stack(Some(2));
    // The three calls and two refusals below must all fall in one 2 s window. A machine too
    // slow for that (a loaded CI box) tries again with a new key, whose window is its own,
    // instead of failing; a wrong answer inside the window fails at once.
    let (key, hash, t0, t429, retry) = within_attempts(|_| {
        let (key, v) = s.generate_key(json!({"rpm_limit": 3}));
        let hash = v["token"].as_str().unwrap().to_string();
        // Fetch the key into the filter first: rpm windows start at the first counted call.
        s.post_with("/v1/chat/completions", &key, &[], "{}")
            .assert_status(400);
        s.clear_fake_requests();

        let t0 = unix_now();
        let admitted: Vec<Resp> = (0..3).map(|_| chat(&s, &key, "gpt-4o-mini")).collect();
        let refused = chat(&s, &key, "gpt-4o-mini");
        let t429 = unix_now();
        // A refused call does not count, and the window end does not move.
        let again = chat(&s, &key, "gpt-4o");
        if unix_now() - t0 >= window {
            return None;
        }
        for (r, remaining) in admitted.iter().zip([2, 1, 0]) {
            r.assert_status(200);
            assert_eq!(
                header_u64(r, "x-ratelimit-api_key-remaining-requests"),
                Some(remaining),
                "{:?}",
                r.headers
            );
            assert_eq!(header_u64(r, "x-ratelimit-api_key-limit-requests"), Some(3));
        }
        let first_reset = assert_throttled(&refused, "api_key", &hash, "requests", 3, 0);
        let retry: f64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!(
            retry <= window,
            "retry-after {retry} is longer than the window"
        );
        assert_eq!(
            assert_throttled(&again, "api_key", &hash, "requests", 3, 0),
            first_reset
        );
        assert_eq!(s.fake_requests().len(), 3);
        Some((key, hash, t0, t429, retry))
    });

    let (r, t_ok) = poll_until("the rpm window to end", SETTLE_TIMEOUT, || {
        let sent = unix_now();
        let r = chat(&s, &key, "gpt-4o-mini");
        let t = unix_now();
        match r.status {
            200 => Ok((r, t)),
            429 => {
                // Timed when the call left: a slow answer on a loaded machine is no breach.
                assert!(
                    sent - t429 <= retry + 0.1,
                    "refused a call sent {:.3} s after the 429 whose retry-after was {retry}: {}",
                    sent - t429,
                    r.body
                );
                assert_throttled(&r, "api_key", &hash, "requests", 3, 0);
                Err(r.body)
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    });
    assert!(
        t_ok - t0 >= window - 0.05,
        "recovered {:.3} s after the window opened, before it ended",
        t_ok - t0
    );
    assert_eq!(
        header_u64(&r, "x-ratelimit-api_key-remaining-requests"),
        Some(2),
        "a new window: {:?}",
        r.headers
    );
}

/// 40 simultaneous calls on rpm 10 (Envoy with 2 workers): exactly 10 pass.
#[test]
fn forty_concurrent_requests_on_rpm_10_admit_exactly_10() {
    let s = stack(None);
    let (key, v) = s.generate_key(json!({"rpm_limit": 10}));
    let hash = v["token"].as_str().unwrap().to_string();
    s.post_with("/v1/chat/completions", &key, &[], "{}")
        .assert_status(400);

    let answers = run_concurrently(40, |_| {
        s.post_with(
            "/v1/chat/completions",
            &key,
            &[("x-fake-delay-ms", "200")],
            &body("gpt-4o-mini"),
        )
    });
    let ok = answers.iter().filter(|r| r.status == 200).count();
    eprintln!("rpm concurrency: admitted {ok} of 40 on rpm 10");
    for r in answers.iter().filter(|r| r.status != 200) {
        assert_throttled(r, "api_key", &hash, "requests", 10, 0);
    }
    assert_eq!(ok, 10, "admitted calls on rpm 10");
    assert_eq!(s.fake_requests().len(), 10);
    let mut remaining: Vec<u64> = answers
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| header_u64(r, "x-ratelimit-api_key-remaining-requests").unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<u64>>(),
        "each admitted call counted once"
    );
}

// ---------------------------------------------------------------------------------------------
// max_parallel_requests (§4.2)

fn slow(s: &Stack, key: &str, delay_ms: &str) -> Resp {
    s.post_with(
        "/v1/chat/completions",
        key,
        &[("x-fake-delay-ms", delay_ms)],
        &body("gpt-4o-mini"),
    )
}

fn wait_upstream_count(s: &Stack, n: usize) {
    poll_until(
        &format!("{n} calls at the upstream"),
        SETTLE_TIMEOUT,
        || {
            let seen = s.fake_requests().len();
            if seen >= n {
                Ok(())
            } else {
                Err(format!("{seen}"))
            }
        },
    );
}

/// `max_parallel_requests: 2` with a slow upstream: two calls in flight, the third refused
/// (`max_parallel_requests`), and the slots come back when calls end, also when the client
/// hangs up mid-call: no slot leaks.
#[test]
fn max_parallel_requests_admits_two_and_frees_slots_even_after_aborts() {
    let s = stack(None);
    let (key, v) = s.generate_key(json!({"max_parallel_requests": 2}));
    let hash = v["token"].as_str().unwrap().to_string();
    let r = chat_ok(&s, &key, "gpt-4o-mini");
    assert_eq!(
        header_u64(&r, "x-ratelimit-api_key-remaining-max_parallel_requests"),
        Some(1),
        "{:?}",
        r.headers
    );
    assert_eq!(
        header_u64(&r, "x-ratelimit-api_key-limit-max_parallel_requests"),
        Some(2)
    );
    s.clear_fake_requests();

    std::thread::scope(|scope| {
        // Slow enough that both are still in flight when the third call comes, on a loaded
        // machine too.
        let a = scope.spawn(|| slow(&s, &key, "5000"));
        let b = scope.spawn(|| slow(&s, &key, "5000"));
        wait_upstream_count(&s, 2);
        let third = chat(&s, &key, "gpt-4o-mini");
        assert_throttled(&third, "api_key", &hash, "max_parallel_requests", 2, 0);
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        a.assert_status(200);
        b.assert_status(200);
        let mut left = [
            header_u64(&a, "x-ratelimit-api_key-remaining-max_parallel_requests").unwrap(),
            header_u64(&b, "x-ratelimit-api_key-remaining-max_parallel_requests").unwrap(),
        ];
        left.sort_unstable();
        assert_eq!(left, [0, 1]);
    });
    assert_eq!(
        s.fake_requests().len(),
        2,
        "the refused call never went out"
    );
    // Both slots are back.
    let r = chat_ok(&s, &key, "gpt-4o-mini");
    assert_eq!(
        header_u64(&r, "x-ratelimit-api_key-remaining-max_parallel_requests"),
        Some(1)
    );

    // Client aborts: two calls reach the (slow) upstream, then their clients hang up.
    for round in 0..2 {
        s.clear_fake_requests();
        let bearer = format!("Bearer {key}");
        let body = body("gpt-4o-mini");
        // The clients hang up once the check below is done (not after a fixed time, which a
        // loaded machine could outlast); the upstream would answer only after a minute.
        let calls: Vec<_> = (0..2)
            .map(|_| {
                s.open_request(
                    "/v1/chat/completions",
                    &[("authorization", &bearer), ("x-fake-delay-ms", "60000")],
                    &body,
                )
            })
            .collect();
        wait_upstream_count(&s, 2);
        // Both slots are taken while they are in flight.
        let r = chat(&s, &key, "gpt-4o-mini");
        assert_throttled(&r, "api_key", &hash, "max_parallel_requests", 2, 0);
        for call in calls {
            let got = hang_up(call, Duration::from_millis(10));
            assert!(
                got.is_empty(),
                "round {round}: an aborted call got an answer: {}",
                String::from_utf8_lossy(&got)
            );
        }
        // Envoy notices the hang-ups and the filter releases both slots.
        let started = Instant::now();
        poll_until("slots released after client aborts", SETTLE_TIMEOUT, || {
            let r = chat(&s, &key, "gpt-4o-mini");
            match r.status {
                200 => Ok(()),
                _ => Err(r.body),
            }
        });
        eprintln!(
            "round {round}: slots back {:?} after the aborts",
            started.elapsed()
        );
        // No leak: two slow calls in flight together again.
        let both = run_concurrently(2, |_| slow(&s, &key, "300"));
        for r in &both {
            assert_eq!(r.status, 200, "round {round}: slot leaked: {}", r.body);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tpm (§4.2)

/// tpm 100 with a 3 s window and calls of 50 real tokens (10 prompt + `max_tokens` 40). The
/// first asks for `n: 2`, so it reserves LiteLLM's estimate 3 + 2 × 40 = 83, but the provider
/// uses 50: settlement to the real usage leaves room for a second call. A failed call is
/// refunded; once real usage fills the window, calls are refused (`tokens`) until it ends.
/// Without `max_tokens`, a small tpm limit writes LiteLLM's implicit cap (tpm / 4 = 25) upstream.
#[test]
fn tpm_limit_refuses_once_usage_fills_the_window_and_recovers() {
    let window = 3.0;
    let s = stack(Some(3));
    let fifty = body_with("gpt-4o-mini", Some(40), false);
    let mut two: Value = serde_json::from_str(&fifty).unwrap();
    two["n"] = json!(2);
    let tiny = body_with("gpt-4o-mini", Some(1), false);
    // The five calls below must all fall in one 3 s window. A machine too slow for that (a
    // loaded CI box) tries again with a new key, whose window is its own, instead of failing;
    // a wrong answer inside the window fails at once.
    let (key, hash, t0, t429, retry) = within_attempts(|_| {
        let (key, v) = s.generate_key(json!({"tpm_limit": 100}));
        let hash = v["token"].as_str().unwrap().to_string();
        s.post_with("/v1/chat/completions", &key, &[], "{}")
            .assert_status(400);

        let t0 = unix_now();
        let first = s.post_with("/v1/chat/completions", &key, &[], &two.to_string());
        // Settled to 50: a 50-token call fits. It fails upstream, and is refunded.
        let failed = s.post_with(
            "/v1/chat/completions",
            &key,
            &[("x-fake-status", "500")],
            &fifty,
        );
        let second = s.post_with("/v1/chat/completions", &key, &[], &fifty);
        // 100 used: even the smallest call is refused.
        let refused_fifty = s.post_with("/v1/chat/completions", &key, &[], &fifty);
        let refused = s.post_with("/v1/chat/completions", &key, &[], &tiny);
        let t429 = unix_now();
        if t429 - t0 >= window {
            return None;
        }
        first.assert_status(200);
        assert_eq!(first.json()["usage"]["total_tokens"], 50, "{}", first.body);
        assert_eq!(
            header_u64(&first, "x-ratelimit-api_key-remaining-tokens"),
            Some(17),
            "reserved the estimate 83; {:?}",
            first.headers
        );
        assert_eq!(
            header_u64(&first, "x-ratelimit-api_key-limit-tokens"),
            Some(100)
        );
        assert_eq!(
            failed.status, 500,
            "the first call was not settled to its real usage (50 of the 90 reserved): {}",
            failed.body
        );
        assert_eq!(
            second.status, 200,
            "the failed call's tokens were not refunded: {}",
            second.body
        );
        // 50 used + this call's estimate 43.
        assert_eq!(
            header_u64(&second, "x-ratelimit-api_key-remaining-tokens"),
            Some(7)
        );
        assert_throttled(&refused_fifty, "api_key", &hash, "tokens", 100, 0);
        assert_throttled(&refused, "api_key", &hash, "tokens", 100, 0);
        let retry: f64 = refused.header("retry-after").unwrap().parse().unwrap();
        assert!(
            retry <= window,
            "retry-after {retry} is longer than the window"
        );
        Some((key, hash, t0, t429, retry))
    });

    // Recovery, with a call that sets no max_tokens: estimate 3 + 25.
    s.clear_fake_requests();
    let no_cap = body_with("gpt-4o-mini", None, false);
    let (r, t_ok) = poll_until("the tpm window to end", SETTLE_TIMEOUT, || {
        let sent = unix_now();
        let r = s.post_with("/v1/chat/completions", &key, &[], &no_cap);
        let t = unix_now();
        match r.status {
            200 => Ok((r, t)),
            429 => {
                // Timed when the call left: a slow answer on a loaded machine is no breach.
                assert!(
                    sent - t429 <= retry + 0.1,
                    "refused a call sent {:.3} s after the 429 whose retry-after was {retry}: {}",
                    sent - t429,
                    r.body
                );
                assert_throttled(&r, "api_key", &hash, "tokens", 100, 0);
                Err(r.body)
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    });
    assert!(
        t_ok - t0 >= window - 0.05,
        "tpm recovered {:.3} s after the window opened, before it ended",
        t_ok - t0
    );
    assert_eq!(
        header_u64(&r, "x-ratelimit-api_key-remaining-tokens"),
        Some(72)
    );
    assert_eq!(r.json()["usage"]["completion_tokens"], 25, "{}", r.body);
    let seen = s.fake_requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(
        seen[0]["body"]["max_tokens"], 25,
        "implicit output cap: {:#}",
        seen[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Success headers (§4.4)

fn assert_limit_headers(r: &Resp, what: &str) {
    let expect = [
        ("x-ratelimit-api_key-remaining-requests", 9),
        ("x-ratelimit-api_key-limit-requests", 10),
        ("x-ratelimit-api_key-remaining-tokens", 10_000 - 8),
        ("x-ratelimit-api_key-limit-tokens", 10_000),
        ("x-ratelimit-api_key-remaining-max_parallel_requests", 4),
        ("x-ratelimit-api_key-limit-max_parallel_requests", 5),
    ];
    for (name, value) in expect {
        assert_eq!(
            header_u64(r, name),
            Some(value),
            "{what}: {name}; {:?}",
            r.headers
        );
    }
}

/// Every limit of the key is reported on success, on plain and on streamed answers (where
/// LiteLLM omits them; Tollgate adds them before the first byte).
#[test]
fn success_headers_on_non_stream_and_stream_responses() {
    let s = stack(None);
    let limits = json!({"rpm_limit": 10, "tpm_limit": 10000, "max_parallel_requests": 5});
    let (plain, _) = s.generate_key(limits.clone());
    let (streamed, _) = s.generate_key(limits);

    let r = chat_ok(&s, &plain, "gpt-4o-mini");
    assert_limit_headers(&r, "non-streamed");

    let r = s.post_with(
        "/v1/chat/completions",
        &streamed,
        &[],
        &body_with("gpt-4o-mini", Some(5), true),
    );
    r.assert_status(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    assert!(r.body.contains("data: [DONE]"), "{}", r.body);
    assert_limit_headers(&r, "streamed");

    // No limits, no headers.
    let (none, _) = s.generate_key(json!({}));
    let r = chat_ok(&s, &none, "gpt-4o-mini");
    assert!(
        r.headers
            .iter()
            .all(|(k, _)| !k.starts_with("x-ratelimit-")),
        "{:?}",
        r.headers
    );
    // The master key has no limits either.
    let r = chat_ok(&s, MASTER_KEY, "gpt-4o-mini");
    assert!(
        r.headers
            .iter()
            .all(|(k, _)| !k.starts_with("x-ratelimit-")),
        "{:?}",
        r.headers
    );
}

// ---------------------------------------------------------------------------------------------
// Scopes (§4.1)

/// A user's `rpm_limit` (`/user/new`) is one window for all of its keys.
#[test]
fn user_rpm_limit_is_shared_by_the_users_keys() {
    let s = stack(None);
    s.admin_post(
        "/user/new",
        &json!({"user_id": "rl-user", "rpm_limit": 3, "auto_create_key": false}),
    )
    .assert_status(200);
    let (k1, _) = s.generate_key(json!({"user_id": "rl-user"}));
    let (k2, _) = s.generate_key(json!({"user_id": "rl-user"}));
    let (stranger, _) = s.generate_key(json!({}));

    for (key, remaining) in [(&k1, 2), (&k2, 1), (&k1, 0)] {
        let r = chat_ok(&s, key, "gpt-4o-mini");
        assert_eq!(
            header_u64(&r, "x-ratelimit-user-remaining-requests"),
            Some(remaining),
            "{:?}",
            r.headers
        );
        assert_eq!(header_u64(&r, "x-ratelimit-user-limit-requests"), Some(3));
        assert_eq!(r.header("x-ratelimit-api_key-limit-requests"), None);
    }
    for key in [&k2, &k1] {
        assert_throttled(
            &chat(&s, key, "gpt-4o"),
            "user",
            "rl-user",
            "requests",
            3,
            0,
        );
    }
    // Someone else's key is not affected.
    chat_ok(&s, &stranger, "gpt-4o-mini");

    // A user's tpm_limit is shared the same way: 30 tokens hold two 15-token calls (the headers
    // show the limit less what is used and this call's estimate of 8).
    s.admin_post(
        "/user/new",
        &json!({"user_id": "tpm-user", "tpm_limit": 30, "auto_create_key": false}),
    )
    .assert_status(200);
    let (t1, _) = s.generate_key(json!({"user_id": "tpm-user"}));
    let (t2, _) = s.generate_key(json!({"user_id": "tpm-user"}));
    for (key, remaining) in [(&t1, 22), (&t2, 7)] {
        let r = chat_ok(&s, key, "gpt-4o-mini");
        assert_eq!(
            header_u64(&r, "x-ratelimit-user-remaining-tokens"),
            Some(remaining),
            "{:?}",
            r.headers
        );
        assert_eq!(header_u64(&r, "x-ratelimit-user-limit-tokens"), Some(30));
    }
    assert_throttled(
        &chat(&s, &t1, "gpt-4o-mini"),
        "user",
        "tpm-user",
        "tokens",
        30,
        0,
    );
}

/// An organization's `rpm_limit` is one window for the keys of all its teams (LiteLLM's v3
/// `organization` descriptor, value the organization id).
#[test]
fn organization_rpm_limit_is_shared_by_its_teams_keys() {
    let s = stack(None);
    s.admin_post(
        "/organization/new",
        &json!({"organization_id": "rl-org", "organization_alias": "RL", "rpm_limit": 3}),
    )
    .assert_status(200);
    for team in ["rl-a", "rl-b"] {
        s.admin_post(
            "/team/new",
            &json!({"team_id": team, "organization_id": "rl-org"}),
        )
        .assert_status(200);
    }
    let (ka, _) = s.generate_key(json!({"team_id": "rl-a"}));
    let (kb, _) = s.generate_key(json!({"team_id": "rl-b"}));
    for (key, remaining) in [(&ka, 2), (&kb, 1), (&ka, 0)] {
        let r = chat_ok(&s, key, "gpt-4o-mini");
        assert_eq!(
            header_u64(&r, "x-ratelimit-organization-remaining-requests"),
            Some(remaining),
            "{:?}",
            r.headers
        );
        assert_eq!(
            header_u64(&r, "x-ratelimit-organization-limit-requests"),
            Some(3)
        );
    }
    assert_throttled(
        &chat(&s, &kb, "gpt-4o-mini"),
        "organization",
        "rl-org",
        "requests",
        3,
        0,
    );
}

/// Per-model limits of a key (`model_rpm_limit`) and the deployments' `default_api_key_rpm_limit`
/// count per key and model (`model_per_key`, value `<hash>:<model>`).
#[test]
fn model_per_key_rpm_limits() {
    let s = stack(None);
    let (key, v) = s.generate_key(json!({"model_rpm_limit": {"gpt-4o-mini": 2}}));
    let hash = v["token"].as_str().unwrap().to_string();
    for remaining in [1, 0] {
        let r = chat_ok(&s, &key, "gpt-4o-mini");
        assert_eq!(
            header_u64(&r, "x-ratelimit-model_per_key-remaining-requests"),
            Some(remaining),
            "{:?}",
            r.headers
        );
        assert_eq!(
            header_u64(&r, "x-ratelimit-model_per_key-limit-requests"),
            Some(2)
        );
    }
    assert_throttled(
        &chat(&s, &key, "gpt-4o-mini"),
        "model_per_key",
        &format!("{hash}:gpt-4o-mini"),
        "requests",
        2,
        0,
    );
    // Other models of the key are not limited.
    for _ in 0..3 {
        let r = chat_ok(&s, &key, "gpt-4o");
        assert_eq!(
            r.header("x-ratelimit-model_per_key-limit-requests"),
            None,
            "{:?}",
            r.headers
        );
    }

    // `default_api_key_rpm_limit: 2` on limited-model: 2 per key, each key its own window.
    let (k1, v1) = s.generate_key(json!({}));
    let (k2, _) = s.generate_key(json!({}));
    let h1 = v1["token"].as_str().unwrap().to_string();
    chat_ok(&s, &k1, "limited-model");
    chat_ok(&s, &k1, "limited-model");
    assert_throttled(
        &chat(&s, &k1, "limited-model"),
        "model_per_key",
        &format!("{h1}:limited-model"),
        "requests",
        2,
        0,
    );
    let r = chat_ok(&s, &k2, "limited-model");
    assert_eq!(
        header_u64(&r, "x-ratelimit-model_per_key-remaining-requests"),
        Some(1)
    );
    chat_ok(&s, &k1, "gpt-4o-mini");

    // `model_tpm_limit`: 20 tokens for gpt-4o hold one 15-token call (estimated 8 at admission).
    let (tk, v) = s.generate_key(json!({"model_tpm_limit": {"gpt-4o": 20}}));
    let th = v["token"].as_str().unwrap().to_string();
    let r = chat_ok(&s, &tk, "gpt-4o");
    assert_eq!(
        header_u64(&r, "x-ratelimit-model_per_key-remaining-tokens"),
        Some(12),
        "{:?}",
        r.headers
    );
    assert_eq!(
        header_u64(&r, "x-ratelimit-model_per_key-limit-tokens"),
        Some(20)
    );
    assert_throttled(
        &chat(&s, &tk, "gpt-4o"),
        "model_per_key",
        &format!("{th}:gpt-4o"),
        "tokens",
        20,
        5,
    );
    chat_ok(&s, &tk, "gpt-4o-mini");
}
