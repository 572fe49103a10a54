#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What gets charged and what reaches the provider (issue 12, items 2-6), through a real Envoy
//! running the built filter: spend is de-duplicated by an id the filter mints (never the
//! client's `x-request-id`), concurrent calls overshoot a budget by at most the last admitted
//! call, the provider gets the rewritten body with a correct `content-length`, request and
//! response sizes are bounded as `general_settings` says, and malformed fields are refused
//! before any provider call.
//!
//! The fake upstream counts prompt tokens as OpenAI does: one `"hi"` user message is
//! 3 + 1 + 1 + 3 = 8 tokens, so a call with `max_tokens: 5` at $0.001 / $0.002 per token costs
//! 8 × 0.001 + 5 × 0.002 = $0.018.

mod common;

use common::{poll_until, run_concurrently, Resp, Stack, MASTER_KEY};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;

const CONFIG: &str = r#"
model_list:
  - model_name: priced
    litellm_params:
      model: openai/priced-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
  - model_name: free
    litellm_params:
      model: openai/free-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.0
      output_cost_per_token: 0.0
general_settings:
  master_key: @MASTER_KEY@
  max_request_size_mb: 2
  max_response_size_mb: 0.01
"#;

/// The $0.018 call.
fn hi(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        .to_string()
}

fn nanos(spend: &Value) -> i64 {
    (spend.as_f64().unwrap() * 1e9).round() as i64
}

/// The sidecar's own address (not reachable through Envoy), from the rendered config.
fn sidecar_authority(s: &Stack) -> String {
    let mut stack = vec![s.data_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let text = text.replace("\\\"", "\"");
            if let Some(at) = text.find("\"sidecar_authority\":\"") {
                let rest = &text[at + "\"sidecar_authority\":\"".len()..];
                return rest[..rest.find('"').unwrap()].to_string();
            }
        }
    }
    panic!("no sidecar_authority under {}", s.data_dir.display());
}

/// Sends raw bytes to Envoy and reads the whole answer (the request says `connection: close`).
fn raw_exchange(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (and close) before the whole body is written.
    let _ = stream.write_all(request);
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A chunked upload of `body` in 64 KiB chunks.
fn chunked_request(key: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nauthorization: Bearer {key}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(64 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

// ---------------------------------------------------------------------------------------------
// Item 2: the client cannot erase its own spend

/// Three calls sent with the same `x-request-id` are three charges, in `/key/info` and in
/// `/spend/logs`; each row's `request_id` is the id the response carried (as in LiteLLM), and
/// the client's id is kept as a plain field. Replaying the filter's batch to the sidecar
/// charges nothing more.
#[test]
fn a_reused_x_request_id_is_charged_every_time() {
    let s = Stack::start(CONFIG);
    let (key, _) = s.generate_key(json!({}));
    let mut response_ids = Vec::new();
    for _ in 0..3 {
        let r = s.post_with(
            "/v1/chat/completions",
            &key,
            &[("x-request-id", "same-id")],
            &hi("priced"),
        );
        r.assert_status(200);
        response_ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let rows = s.wait_spend_logs(&key, 3);
    s.wait_key_spend(&key, 0.054);
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    response_ids.sort();
    assert_eq!(ids, response_ids, "{rows:#?}");
    for row in &rows {
        assert_eq!(nanos(&row["spend"]), 18_000_000, "{row:#}");
        assert_eq!(row["prompt_tokens"], 8, "{row:#}");
        assert_eq!(row["metadata"]["client_request_id"], "same-id", "{row:#}");
    }
    // `/spend/logs?request_id=` with the response's id finds that call.
    let one = s.get(
        &format!("/spend/logs?request_id={}", response_ids[1]),
        Some(MASTER_KEY),
    );
    one.assert_status(200);
    let found = one.json();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found:#}");
    assert_eq!(found[0]["request_id"], response_ids[1].as_str());

    // The batch the filter sent, replayed: all duplicates, no charge.
    let events: Vec<Value> = rows
        .iter()
        .map(|r| {
            let event_id = r["metadata"]["spend_event_id"].as_str().unwrap();
            assert!(event_id.starts_with("tg-"), "{r:#}");
            json!({
                "event_id": event_id,
                "request_id": r["request_id"],
                "client_request_id": "same-id",
                "api_key": r["api_key"],
                "model": "priced",
                "model_id": r["model_id"],
                "spend_nanos": 18_000_000,
                "status": "success",
                "call_type": "acompletion",
            })
        })
        .collect();
    let internal = format!(
        "Bearer {}",
        common::sha256_hex(&format!("tollgate-internal:{MASTER_KEY}"))
    );
    let url = format!(
        "http://{}/tollgate/internal/v1/spend",
        sidecar_authority(&s)
    );
    let replay = common::send(
        &common::agent(),
        "POST",
        &url,
        &[
            ("authorization", internal.as_str()),
            ("content-type", "application/json"),
        ],
        Some(&json!({"events": events}).to_string()),
    );
    replay.assert_status(200);
    assert_eq!(
        replay.json(),
        json!({"applied": 0, "duplicates": 3}),
        "{}",
        replay.body
    );
    assert_eq!(s.key_info(&key)["spend"].as_f64(), Some(0.054));
    assert_eq!(s.spend_logs(&key).len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Item 3: the reservation counts the prompt as the provider does

/// A key with `max_budget: 0.20`, 30 concurrent $0.018 calls: the reservation of each is its
/// full cost (8 prompt tokens, chat framing included), so 11 fit whole and the 12th takes what
/// is left: 12 admitted, $0.216 spent, an overshoot below one call (LiteLLM's rule). Counting
/// the prompt as characters / 4 admitted 19 and spent $0.342.
#[test]
fn concurrent_calls_overshoot_a_budget_by_at_most_the_last_call() {
    let s = Stack::start(CONFIG);
    let (key, _) = s.generate_key(json!({"max_budget": 0.2}));
    // Fetch the key into the filter first (a free call checks no budget).
    s.post_with("/v1/chat/completions", &key, &[], &hi("free"))
        .assert_status(200);
    let answers = run_concurrently(30, |_| {
        s.post_with(
            "/v1/chat/completions",
            &key,
            &[("x-fake-delay-ms", "300")],
            &hi("priced"),
        )
    });
    let admitted = answers.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Resp> = answers.iter().filter(|r| r.status != 200).collect();
    for r in &refused {
        r.assert_error(422, "budget_exceeded");
    }
    eprintln!("budget concurrency: admitted {admitted} of 30");
    let rows = s.wait_spend_logs(&key, admitted + 1);
    let spent: i64 = rows.iter().map(|r| nanos(&r["spend"])).sum();
    eprintln!("budget concurrency: spent {spent} nano-dollars of 200000000");
    assert!(
        spent <= 200_000_000 + 18_000_000,
        "overshoot beyond one call: {spent}"
    );
    assert_eq!(admitted, 12, "11 whole reservations and one capped");
    assert_eq!(spent, 216_000_000);
}

// ---------------------------------------------------------------------------------------------
// Item 4: the provider gets a plain content-length request

/// The rewritten body (public model name → backend name) reaches the provider with its exact
/// `content-length`, never chunked; a chunked client upload is forwarded the same way.
#[test]
fn the_rewritten_request_has_its_content_length() {
    let s = Stack::start(CONFIG);
    let (key, _) = s.generate_key(json!({}));
    let body = hi("priced");
    s.clear_fake_requests();
    s.post_with("/v1/chat/completions", &key, &[], &body)
        .assert_status(200);
    let (status, answer) = raw_exchange(s.port, &chunked_request(&key, body.as_bytes()));
    assert_eq!(status, 200, "{answer}");
    let expected = body.len() - "priced".len() + "priced-backend".len();
    let got = s.fake_requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    for req in &got {
        assert_eq!(req["body"]["model"], "priced-backend", "{req:#}");
        assert_eq!(
            req["headers"]["content-length"],
            expected.to_string(),
            "{req:#}"
        );
        assert!(req["headers"].get("transfer-encoding").is_none(), "{req:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 5: max_request_size_mb / max_response_size_mb

/// Over `max_request_size_mb: 2`: LiteLLM's 413 ("Request size is too large. Max size is 2 MB")
/// in the error envelope, whether the size is announced or the body arrives chunked, before
/// any provider call; the VM keeps serving. A non-streamed answer over `max_response_size_mb`
/// is LiteLLM's 400 instead (and still charged, as LiteLLM charges it); a stream passes.
#[test]
fn request_and_response_sizes_are_bounded() {
    let s = Stack::start(CONFIG);
    let (key, _) = s.generate_key(json!({}));
    s.clear_fake_requests();
    let big = json!({
        "model": "priced",
        "messages": [{"role": "user", "content": "x".repeat(3 * 1024 * 1024)}],
    })
    .to_string();
    let mut announced = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    announced.extend_from_slice(big.as_bytes());
    for request in [announced, chunked_request(&key, big.as_bytes())] {
        let (status, answer) = raw_exchange(s.port, &request);
        assert_eq!(status, 413, "{answer}");
        let err: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            err["error"],
            json!({
                "message": "Request size is too large. Max size is 2 MB",
                "type": "invalid_request_error",
                "param": null,
                "code": "413",
            })
        );
    }
    assert!(s.fake_requests().is_empty(), "{:#?}", s.fake_requests());
    // Just under the limit: forwarded.
    let under = json!({
        "model": "priced",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "y".repeat(2 * 1024 * 1024 - 1024)}],
    })
    .to_string();
    s.post_with("/v1/chat/completions", &key, &[], &under)
        .assert_status(200);

    // 4000 completion tokens ("ok ok ..."): about 12 kB, over 0.01 MB (10485 bytes).
    let (big_answer_key, _) = s.generate_key(json!({}));
    let long = json!({
        "model": "priced",
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let r = s.post_with(
        "/v1/chat/completions",
        &big_answer_key,
        &[],
        &long.to_string(),
    );
    let err = r.assert_error(400, "bad_request_error");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.starts_with("Response size is too large. Response size is ")
            && message.ends_with(" MB. Max size is 0.01 MB"),
        "{message}"
    );
    assert_eq!(err["param"], "content-length");
    // Charged as LiteLLM charges it: 8 × 0.001 + 4000 × 0.002.
    s.wait_key_spend(&big_answer_key, 8.008);
    // A stream is not held back or cut.
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let r = s.post_with(
        "/v1/chat/completions",
        &big_answer_key,
        &[],
        &streamed.to_string(),
    );
    r.assert_status(200);
    assert!(r.body.len() > 10485, "{}", r.body.len());
    // Still serving.
    s.post_with("/v1/chat/completions", &key, &[], &hi("priced"))
        .assert_status(200);
}

// ---------------------------------------------------------------------------------------------
// Item 6: fields Tollgate reads or charges by are type-checked

#[test]
fn malformed_fields_are_refused_before_the_provider() {
    let s = Stack::start(CONFIG);
    let (key, _) = s.generate_key(json!({}));
    s.clear_fake_requests();
    let cases: &[(Value, &str)] = &[
        (json!({"model": "priced", "messages": "hi"}), "messages"),
        (json!({"model": "priced", "messages": ["hi"]}), "messages"),
        (
            json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}),
            "max_tokens",
        ),
        (
            json!({"model": "priced", "messages": [], "max_completion_tokens": -1}),
            "max_completion_tokens",
        ),
        (json!({"model": "priced", "messages": [], "n": 1.5}), "n"),
        (
            json!({"model": "priced", "messages": [], "stream": "yes"}),
            "stream",
        ),
    ];
    for (body, field) in cases {
        let r = s.post_with("/v1/chat/completions", &key, &[], &body.to_string());
        let err = r.assert_error(400, "invalid_request_error");
        assert_eq!(err["param"], *field, "{body}: {}", r.body);
    }
    assert!(s.fake_requests().is_empty(), "{:#?}", s.fake_requests());
    poll_until("nothing charged", Duration::from_secs(3), || {
        let spend = s.key_info(&key)["spend"].as_f64();
        (spend == Some(0.0))
            .then_some(())
            .ok_or(format!("{spend:?}"))
    });
}
