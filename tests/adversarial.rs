#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Adversarial input through a real Envoy (issue 7, item 2): bodies and headers no client should
//! send, upstreams that misbehave, clients that hang up. For every input: the right status in
//! LiteLLM's envelope, the Wasm VM still serving the next request, and afterwards the parallel
//! slot free (the keys have `max_parallel_requests: 1`) and the spend exact (no reservation left
//! behind, nothing charged twice or lost).
//!
//! Each test prints how many inputs it tried (`adversarial: <category>: N inputs`).

mod common;

/// Request headers as (name, raw value bytes).
type Headers<'a> = Vec<(&'a str, Vec<u8>)>;

use common::{poll_until, Stack, MASTER_KEY, PROVIDER_KEY, SETTLE_TIMEOUT};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// 12 letters: the fake counts 10 prompt tokens as OpenAI does (3 per message + "user" 1 +
/// 3 for the text + 3 priming the reply), and so does the filter's estimate.
const PROMPT: &str = "abcdefghijkl";

/// One priced model: a call with [`PROMPT`] and `max_tokens: 5` costs exactly $0.02
/// (10 × 0.001 + 5 × 0.002), and so does its reservation.
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
"#;

/// Nano-dollars of a call with `prompt` and `completion` tokens on `priced`.
fn cost_nanos(prompt: u64, completion: u64) -> i64 {
    (prompt * 1_000_000 + completion * 2_000_000) as i64
}

/// The $0.02 call.
fn good_body() -> String {
    body_with(json!({}))
}

/// [`good_body`] with `extra` merged in.
fn body_with(extra: Value) -> String {
    let mut v = json!({
        "model": "priced",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": PROMPT}]
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        for (k, val) in e {
            o.insert(k, val);
        }
    }
    v.to_string()
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: arbitrary bytes in bodies and header values, repeated headers.

#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended cleanly (content-length reached, or the last chunk of a chunked body).
    complete: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// LiteLLM's envelope with `code` the status as a string; returns `error`.
    fn assert_envelope(&self, status: u16, what: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "{what}: status; body {:?} headers {:?}",
            self.text(),
            self.headers
        );
        let v = self.json();
        let err = v["error"].clone();
        assert!(err["message"].is_string(), "{what}: error.message in {v}");
        assert!(err["type"].is_string(), "{what}: error.type in {v}");
        assert!(err.get("param").is_some(), "{what}: error.param in {v}");
        assert_eq!(
            err["code"],
            Value::String(status.to_string()),
            "{what}: error.code in {v}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}: content-type"
        );
        err
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses what a server sent on a `connection: close` request.
fn parse_raw(mut raw: &[u8]) -> Option<Raw> {
    // Interim answers (`100 Continue`) come first.
    while raw.starts_with(b"HTTP/1.1 1") {
        raw = &raw[find(raw, b"\r\n\r\n")? + 4..];
    }
    let head_end = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let (body, complete) = if chunked {
        let mut body = Vec::new();
        let mut rest = rest;
        let mut complete = false;
        while let Some(line_end) = find(rest, b"\r\n") {
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
            let Some(size) = size else { break };
            rest = &rest[line_end + 2..];
            if size == 0 {
                complete = true;
                break;
            }
            if rest.len() < size {
                body.extend_from_slice(rest);
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        (body, complete)
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let complete = len.is_none_or(|l| rest.len() >= l);
        (rest.to_vec(), complete)
    };
    Some(Raw {
        status,
        headers,
        body,
        complete,
    })
}

/// Writes `head` + `body` to a fresh connection and reads to EOF (at most `timeout`).
fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone the socket");
    std::thread::scope(|scope| {
        // Envoy may answer (413, 400) before it has read everything: the answer is read while
        // the request is still being written, and a failed write is fine.
        scope.spawn(move || {
            let _ = writer.write_all(request);
        });
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        out
    })
}

/// Sends `request` and reads until what arrived satisfies `enough` (or the server closes, or
/// 30 s pass), then hangs up: a client that leaves once it has seen what it waited for.
fn exchange_until(port: u16, request: &[u8], enough: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    stream.write_all(request).expect("write the request");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !enough(&out) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    out
}

fn request_bytes(port: u16, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// `POST path` with exactly these headers (plus host, connection, content-length) and body.
fn raw_post(s: &Stack, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Raw {
    let bytes = raw_exchange(
        s.port,
        &request_bytes(s.port, path, headers, body),
        Duration::from_secs(30),
    );
    parse_raw(&bytes).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to POST {path}: got {:?}\n{}",
            String::from_utf8_lossy(&bytes),
            s.logs()
        )
    })
}

/// A chat call as `key` with a JSON content type and `extra` headers.
fn chat_raw(s: &Stack, key: &str, extra: &[(&str, &[u8])], body: &[u8]) -> Raw {
    let bearer = format!("Bearer {key}");
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/json"),
        ("authorization", bearer.as_bytes()),
    ];
    headers.extend_from_slice(extra);
    raw_post(s, "/v1/chat/completions", &headers, body)
}

// ---------------------------------------------------------------------------------------------
// The ledger: what a key must have been charged.

struct Victim {
    key: String,
    /// Nano-dollars charged so far, from the usage the fake reported (or the documented
    /// estimate).
    expected_nanos: i64,
    /// Calls that reached the upstream with success (each one a spend-log row too).
    rows: usize,
}

impl Victim {
    fn new(s: &Stack) -> Victim {
        let (key, _) = s.generate_key(json!({"max_parallel_requests": 1, "max_budget": 1000}));
        Victim {
            key,
            expected_nanos: 0,
            rows: 0,
        }
    }

    /// The VM still serves, the key's only parallel slot is free and its budget admits: one
    /// normal $0.02 call answers 200 with the fake's usage.
    fn probe(&mut self, s: &Stack, after: &str) {
        let r = poll_until(
            &format!("a normal call admitted after {after}"),
            SETTLE_TIMEOUT,
            || {
                let r = chat_raw(s, &self.key, &[], good_body().as_bytes());
                if r.status == 200 {
                    Ok(r)
                } else {
                    Err(format!("{} {}", r.status, r.text()))
                }
            },
        );
        let usage = &r.json()["usage"];
        assert_eq!(usage["prompt_tokens"], 10, "after {after}: {}", r.text());
        assert_eq!(usage["completion_tokens"], 5, "after {after}: {}", r.text());
        self.charge(cost_nanos(10, 5));
    }

    fn charge(&mut self, nanos: i64) {
        self.expected_nanos += nanos;
        self.rows += 1;
    }

    /// A failed call: a spend-log row, no charge.
    fn failure(&mut self) {
        self.rows += 1;
    }

    /// After the spend flush: `/key/info` spend is exactly what was charged, and no reservation
    /// is left behind (a budget of spend + $0.02 admits exactly one more call).
    fn assert_settled(&mut self, s: &Stack) {
        s.wait_spend_logs(&self.key, self.rows);
        let spend = self.expected_nanos as f64 / 1e9;
        let info = s.wait_key_spend(&self.key, spend);
        eprintln!(
            "adversarial: key spend {} (expected {spend}), {} spend-log rows",
            info["spend"], self.rows
        );
        let update = s.admin_post(
            "/key/update",
            &json!({"key": self.key, "max_budget": spend + 0.02}),
        );
        update.assert_status(200);
        let r = chat_raw(s, &self.key, &[], good_body().as_bytes());
        assert_eq!(
            r.status,
            200,
            "a leaked reservation blocks the last $0.02: {}",
            r.text()
        );
        let r = chat_raw(s, &self.key, &[], good_body().as_bytes());
        r.assert_envelope(422, "budget exhausted by exactly one call");
        self.charge(cost_nanos(10, 5));
        self.failure_free_rows_check(s);
    }

    fn failure_free_rows_check(&self, s: &Stack) {
        let spend = self.expected_nanos as f64 / 1e9;
        s.wait_key_spend(&self.key, spend);
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies

/// Bodies that are not JSON, truncated, deeply nested, non-UTF-8 or of the wrong shape: a 400
/// in LiteLLM's envelope (naming the field in `param` where one is at fault), never a 5xx or a
/// reset, nothing forwarded, nothing charged; the VM serves the next call.
#[test]
fn malformed_bodies_get_400_and_change_nothing() {
    let s = Stack::start(CONFIG);
    let mut v = Victim::new(&s);
    v.probe(&s, "start");
    s.clear_fake_requests();

    let good = good_body();
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    for b in [
        "",
        " ",
        "\n\t",
        "hello",
        "<xml/>",
        "{",
        "}",
        "nul\0l",
        "true",
        "null",
        "123",
        "-1e999",
        "\"priced\"",
        "[]",
        "[1,2]",
        "{}",
        "{\"model\"}",
        "{\"model\":}",
        "{'model':'priced'}",
        "{\"model\":\"priced\",}",
        "{\"model\":\"priced\"}{}",
        "\u{feff}{}",
    ] {
        bodies.push((format!("not json {b:?}"), b.as_bytes().to_vec()));
    }
    // Every prefix of a good body at 5-byte steps is truncated JSON.
    for cut in (1..good.len() - 1).step_by(5) {
        bodies.push((
            format!("truncated at {cut}"),
            good.as_bytes()[..cut].to_vec(),
        ));
    }
    // Deep nesting, bare and inside a valid-looking object.
    for depth in [129usize, 1_000, 100_000] {
        bodies.push((format!("{depth} ["), "[".repeat(depth).into_bytes()));
        bodies.push((
            format!("{depth} [] closed"),
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
        ));
        bodies.push((
            format!("{depth} nested objects"),
            "{\"a\":".repeat(depth).into_bytes(),
        ));
        bodies.push((
            format!("messages nested {depth}"),
            format!(
                "{{\"model\":\"priced\",\"messages\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes(),
        ));
    }
    // Not UTF-8.
    for b in [
        &b"{\"model\":\"pri\xffced\",\"messages\":[]}"[..],
        b"\xff\xfe{\0\"\0m\0",
        b"{\"model\":\"priced\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}",
        b"{\"model\":\"priced\",\"user\":\"\xed\xa0\x80\"}",
        b"\x80\x81\x82",
    ] {
        bodies.push((format!("not utf-8 {b:?}"), b.to_vec()));
    }
    let mut tried = 0;
    for (what, body) in &bodies {
        let r = chat_raw(&s, &v.key, &[], body);
        r.assert_envelope(400, what);
        tried += 1;
    }
    eprintln!("adversarial: malformed bodies: {tried} inputs");

    // Wrong types for every field the filter reads: refused with the field as `param`.
    let mut typed = 0;
    for (field, values) in [
        (
            "model",
            vec![
                json!(5),
                json!(1.5),
                json!([]),
                json!(["priced"]),
                json!({}),
                json!(true),
            ],
        ),
        (
            "stream",
            vec![
                json!("true"),
                json!("yes"),
                json!(1),
                json!(0),
                json!([]),
                json!({}),
            ],
        ),
        (
            "max_tokens",
            vec![
                json!(-1),
                json!(1.5),
                json!(5.0),
                json!("5"),
                json!(1e300),
                json!(-0.0),
                json!([5]),
                json!({}),
                json!(true),
            ],
        ),
        (
            "max_completion_tokens",
            vec![json!(-5), json!(2.5), json!("x"), json!([])],
        ),
        // Charged by (issue 12, item 6): `n` multiplies the reservation, `messages` is counted.
        ("n", vec![json!("many"), json!(-1), json!(1.5), json!([2])]),
        (
            "messages",
            vec![
                json!("hello"),
                json!(5),
                json!({"role": "user"}),
                json!([1, [2], {"content": 7}, {"content": {"text": 5}}]),
                json!([{"role": "user", "content": "hi"}, "hi"]),
            ],
        ),
    ] {
        for value in values {
            let body = body_with(json!({ field: value }));
            let r = chat_raw(&s, &v.key, &[], body.as_bytes());
            let err = r.assert_envelope(400, &format!("{field}={value}"));
            assert_eq!(err["param"], field, "{field}={value}: {err}");
            typed += 1;
        }
    }
    // Integers too large for u64 are not a u64.
    let body = good.replace("\"max_tokens\":5", "\"max_tokens\":18446744073709551616");
    assert_ne!(body, good);
    chat_raw(&s, &v.key, &[], body.as_bytes()).assert_envelope(400, "max_tokens 2^64");
    typed += 1;
    // `model` missing or null.
    for body in [
        json!({"messages": []}),
        json!({"model": null, "messages": []}),
    ] {
        let r = chat_raw(&s, &v.key, &[], body.to_string().as_bytes());
        assert_eq!(r.assert_envelope(400, "no model")["param"], "model");
        typed += 1;
    }
    // An unknown model name (odd bytes included) is LiteLLM's 400 "Invalid model name".
    for model in [
        "",
        " ",
        "priced ",
        "PRICED",
        "pri\u{0}ced",
        "💸",
        &"m".repeat(10_000),
    ] {
        let body = body_with(json!({ "model": model }));
        chat_raw(&s, &v.key, &[], body.as_bytes()).assert_envelope(400, "unknown model");
        typed += 1;
    }
    assert!(
        s.fake_requests().is_empty(),
        "a refused body reached the upstream"
    );
    eprintln!("adversarial: wrong field types: {typed} inputs");

    // Fields the filter does not interpret pass through to the provider (which decides); the
    // call is charged exactly what the provider reports.
    let mut passed = 0;
    for extra in [
        json!({"user": {"id": 1}}),
        json!({"user": [1, 2]}),
        json!({"user": ""}),
        json!({"user": null}),
        json!({"user": 12345}),
        json!({"messages": null}),
        json!({"messages": [{"content": 7}, {"content": {"text": 5}}]}),
        json!({"stream": null}),
        json!({"stream_options": "x", "stream": false}),
        json!({"n": null}),
        json!({"max_tokens": null}),
        json!({"metadata": [1]}),
    ] {
        let body = body_with(extra.clone());
        let r = chat_raw(&s, &v.key, &[], body.as_bytes());
        assert_eq!(r.status, 200, "{extra}: {}", r.text());
        let usage = r.json()["usage"].clone();
        let p = usage["prompt_tokens"].as_u64().unwrap();
        let c = usage["completion_tokens"].as_u64().unwrap();
        v.charge(cost_nanos(p, c));
        v.probe(&s, &extra.to_string());
        passed += 1;
    }
    eprintln!("adversarial: fields passed through: {passed} inputs");
    v.probe(&s, "all bodies");
    v.assert_settled(&s);
}

/// A body over the limit (8 MiB by default) is refused with 413 in LiteLLM's envelope, not a
/// reset and not Envoy's plain-text 413, whether it arrives in one piece or trickles in; a body
/// just under the limit still goes through.
#[test]
fn oversized_body_is_a_413_envelope() {
    let s = Stack::start(CONFIG);
    let mut v = Victim::new(&s);
    let limit = 8 * 1024 * 1024;
    let mut tried = 0;
    for size in [limit + 1, limit + 64 * 1024, limit + 1024 * 1024, 3 * limit] {
        let filler = "x".repeat(size);
        let body = body_with(json!({"padding": filler}));
        let r = chat_raw(&s, &v.key, &[], body.as_bytes());
        let err = r.assert_envelope(413, &format!("{size} bytes"));
        assert!(
            err["message"].as_str().unwrap().contains("too large"),
            "{err}"
        );
        tried += 1;
        v.probe(&s, &format!("a {size}-byte body"));
    }
    // Chunked transfer encoding (no content-length): the limit holds as the body streams in.
    {
        let bearer = format!("Bearer {}", v.key);
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nauthorization: {bearer}\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        let chunk = vec![b' '; 256 * 1024];
        for _ in 0..40 {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(&chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let raw = raw_exchange(s.port, &req, Duration::from_secs(30));
        let r = parse_raw(&raw).expect("an answer to a chunked 10 MiB body");
        r.assert_envelope(413, "chunked 10 MiB");
        tried += 1;
        v.probe(&s, "a chunked oversized body");
    }
    // Under the limit: forwarded and charged as usual.
    let filler = "y".repeat(limit - 4096);
    let body = body_with(json!({"padding": filler}));
    let r = chat_raw(&s, &v.key, &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    v.charge(cost_nanos(10, 5));
    tried += 1;
    eprintln!("adversarial: oversized bodies: {tried} inputs");
    v.assert_settled(&s);
}

// ---------------------------------------------------------------------------------------------
// Credentials and headers

/// Keys with odd bytes, odd `Authorization` shapes and many `Authorization` headers: the first
/// `Authorization` decides (as in LiteLLM), the provider receives only its own key, every
/// refusal is a 401 envelope and nothing is charged.
#[test]
fn odd_credentials_and_headers() {
    let s = Stack::start(CONFIG);
    let mut v = Victim::new(&s);
    let key = v.key.clone();
    let bad = |what: &str, headers: &[(&str, &[u8])]| {
        let mut h: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
        h.extend_from_slice(headers);
        let r = raw_post(&s, "/v1/chat/completions", &h, good_body().as_bytes());
        r.assert_envelope(401, what);
    };
    let mut tried = 0;
    let long = format!("sk-{}", "a".repeat(8_000));
    let wrong_last = format!("{}X", &key[..key.len() - 1]);
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("no key", Vec::new()),
        ("Bearer alone", b"Bearer".to_vec()),
        ("Bearer space", b"Bearer ".to_vec()),
        ("Bearer spaces", b"Bearer     ".to_vec()),
        ("Bearer tab key", format!("Bearer\t{key}").into_bytes()),
        ("no scheme", key.clone().into_bytes()),
        ("BEARER", format!("BEARER {key}").into_bytes()),
        ("Token scheme", format!("Token {key}").into_bytes()),
        ("non-ASCII key", "Bearer sk-ключ-🔑".as_bytes().to_vec()),
        ("latin-1 bytes", b"Bearer sk-\xe9\xe8\xff".to_vec()),
        ("very long key", format!("Bearer {long}").into_bytes()),
        (
            "wrong last char",
            format!("Bearer {wrong_last}").into_bytes(),
        ),
        (
            "key prefix",
            format!("Bearer {}", &key[..key.len() - 1]).into_bytes(),
        ),
        ("key twice", format!("Bearer {key}{key}").into_bytes()),
        ("not sk-", b"Bearer pk-1234567890".to_vec()),
        (
            "provider key",
            format!("Bearer {PROVIDER_KEY}X").into_bytes(),
        ),
        ("sk- only", b"Bearer sk-".to_vec()),
        (
            "hash of the key",
            format!("Bearer {}", common::sha256_hex(&key)).into_bytes(),
        ),
    ];
    for (what, value) in &refused {
        if value.is_empty() {
            bad(what, &[]);
        } else {
            bad(what, &[("authorization", value)]);
        }
        tried += 1;
    }
    // Odd shapes that still carry the key are accepted.
    let accepted: Vec<(&str, Headers)> = vec![
        (
            "lowercase bearer",
            vec![("authorization", format!("bearer {key}").into_bytes())],
        ),
        // LiteLLM strips `Basic ` as it strips `Bearer `.
        (
            "Basic",
            vec![("authorization", format!("Basic {key}").into_bytes())],
        ),
        (
            "two spaces",
            vec![("authorization", format!("Bearer  {key}").into_bytes())],
        ),
        (
            "trailing tab",
            vec![("authorization", format!("Bearer {key}\t").into_bytes())],
        ),
        (
            "x-litellm-api-key",
            vec![("x-litellm-api-key", key.clone().into_bytes())],
        ),
        ("api-key", vec![("api-key", key.clone().into_bytes())]),
        (
            "x-api-key Bearer",
            vec![("x-api-key", format!("Bearer {key}").into_bytes())],
        ),
        (
            "x-litellm-api-key beats a bad authorization",
            vec![
                ("authorization", b"Bearer sk-nonsense".to_vec()),
                ("x-litellm-api-key", key.clone().into_bytes()),
            ],
        ),
    ];
    for (what, headers) in &accepted {
        let mut h: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
        h.extend(headers.iter().map(|(k, v)| (*k, v.as_slice())));
        let r = raw_post(&s, "/v1/chat/completions", &h, good_body().as_bytes());
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        v.charge(cost_nanos(10, 5));
        tried += 1;
    }

    // Many Authorization headers: Envoy hands the filter one value joined with commas, which is
    // no key: refused, whichever position the valid one has, and nothing goes upstream.
    let good_auth = format!("Bearer {key}");
    let junk: Vec<Vec<u8>> = (0..49)
        .map(|i| format!("Bearer sk-junk-{i}").into_bytes())
        .collect();
    s.clear_fake_requests();
    for valid_first in [false, true] {
        let mut h: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
        if valid_first {
            h.push(("authorization", good_auth.as_bytes()));
        }
        h.extend(junk.iter().map(|j| ("authorization", j.as_slice())));
        if !valid_first {
            h.push(("authorization", good_auth.as_bytes()));
        }
        raw_post(&s, "/v1/chat/completions", &h, good_body().as_bytes()).assert_envelope(
            401,
            &format!("50 authorization headers, valid first: {valid_first}"),
        );
        tried += 1;
    }
    let mut h: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    h.push(("authorization", good_auth.as_bytes()));
    h.push(("authorization", good_auth.as_bytes()));
    raw_post(&s, "/v1/chat/completions", &h, good_body().as_bytes())
        .assert_envelope(401, "the valid key twice");
    tried += 1;
    assert!(s.fake_requests().is_empty(), "a refused call went upstream");
    // One valid Authorization and 49 junk keys in the other key headers (which come after it
    // in LiteLLM's order): admitted, and the provider gets only its own key.
    let mut h: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/json"),
        ("authorization", good_auth.as_bytes()),
    ];
    // (Envoy allows 100 headers per request: 40 + 40 junk.)
    h.extend(junk.iter().take(40).map(|j| ("x-api-key", j.as_slice())));
    h.extend(junk.iter().take(40).map(|j| ("api-key", j.as_slice())));
    let r = raw_post(&s, "/v1/chat/completions", &h, good_body().as_bytes());
    assert_eq!(r.status, 200, "valid key first: {}", r.text());
    v.charge(cost_nanos(10, 5));
    tried += 1;
    let seen = s.fake_requests();
    let upstream = &seen.last().expect("the call reached the fake")["headers"];
    assert_eq!(
        upstream["authorization"],
        format!("Bearer {PROVIDER_KEY}"),
        "the provider must get exactly one authorization, its own: {upstream}"
    );
    assert!(upstream.get("x-api-key").is_none(), "{upstream}");
    assert!(upstream.get("api-key").is_none(), "{upstream}");

    // Odd or missing ordinary headers change nothing.
    for (what, headers) in [
        ("no content-type", vec![]),
        ("text/plain", vec![("content-type", b"text/plain".to_vec())]),
        (
            "spoofed cluster",
            vec![("x-tollgate-cluster", b"tollgate_sidecar".to_vec())],
        ),
        (
            "odd request id",
            vec![("x-request-id", "🙃é".as_bytes().to_vec())],
        ),
        ("long request id", vec![("x-request-id", vec![b'r'; 4_000])]),
        (
            "accept-encoding gzip",
            vec![("accept-encoding", b"gzip, br".to_vec())],
        ),
        (
            "content-encoding lie",
            vec![("content-encoding", b"identity".to_vec())],
        ),
        (
            "expect 100-continue",
            vec![("expect", b"100-continue".to_vec())],
        ),
    ] {
        let bearer = format!("Bearer {key}");
        let mut h: Vec<(&str, &[u8])> = vec![("authorization", bearer.as_bytes())];
        if what != "no content-type" && what != "text/plain" {
            h.push(("content-type", b"application/json"));
        }
        h.extend(headers.iter().map(|(k, v)| (*k, v.as_slice())));
        let r = raw_post(&s, "/v1/chat/completions", &h, good_body().as_bytes());
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        v.charge(cost_nanos(10, 5));
        tried += 1;
    }
    // A header over Envoy's header limits is refused by Envoy's codec itself (431, before any
    // filter runs); the VM is untouched.
    let bearer = format!("Bearer {key}");
    let huge = vec![b'r'; 100_000];
    let r = raw_post(
        &s,
        "/v1/chat/completions",
        &[
            ("authorization", bearer.as_bytes()),
            ("x-request-id", &huge),
        ],
        good_body().as_bytes(),
    );
    assert_eq!(r.status, 431, "{}", r.text());
    tried += 1;
    v.probe(&s, "a 100 kB header");
    // A customer id the sidecar never heard of, with odd bytes: looked up, then admitted.
    for id in ["cust/../../key/info", "cust?x=1#y", "кастомер", "%2F%00"] {
        let r = chat_raw(
            &s,
            &key,
            &[("x-litellm-customer-id", id.as_bytes())],
            good_body().as_bytes(),
        );
        assert_eq!(r.status, 200, "customer {id:?}: {}", r.text());
        v.charge(cost_nanos(10, 5));
        tried += 1;
    }
    eprintln!("adversarial: credentials and headers: {tried} inputs");
    v.probe(&s, "odd headers");
    v.assert_settled(&s);
}

// ---------------------------------------------------------------------------------------------
// The upstream misbehaves

fn stream_body() -> String {
    body_with(json!({"stream": true}))
}

/// Stored-block gzip (what the fake sends), decoded and checked against its CRC.
fn gunzip_stored(z: &[u8]) -> Vec<u8> {
    assert_eq!(&z[..3], &[0x1f, 0x8b, 8], "gzip magic");
    let mut i = 10;
    let mut out = Vec::new();
    loop {
        let last = z[i] & 1;
        assert_eq!(z[i] >> 1, 0, "stored block");
        let len = u16::from_le_bytes([z[i + 1], z[i + 2]]) as usize;
        out.extend_from_slice(&z[i + 5..i + 5 + len]);
        i += 5 + len;
        if last == 1 {
            break;
        }
    }
    let mut crc = 0xffff_ffff_u32;
    for byte in &out {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    assert_eq!(
        z[i..i + 4],
        (!crc).to_le_bytes(),
        "gzip CRC: the body was altered in transit"
    );
    out
}

/// Upstream errors, hangs, broken and compressed streams, missing or absurd usage: the client
/// gets the upstream's status (or its truncated stream), the provider key never shows, failures
/// cost nothing, answers without usage are charged the documented estimate, and the key's one
/// parallel slot is free again each time.
#[test]
fn upstream_faults_settle_exactly() {
    let s = Stack::start(CONFIG);
    let mut v = Victim::new(&s);
    let mut tried = 0;

    // Upstream errors pass through; they are not charged.
    for status in ["400", "401", "404", "429", "500", "502", "503", "504"] {
        let r = chat_raw(
            &s,
            &v.key,
            &[("x-fake-status", status.as_bytes())],
            good_body().as_bytes(),
        );
        assert_eq!(r.status.to_string(), status, "{}", r.text());
        assert!(r.json()["error"]["message"].is_string(), "{}", r.text());
        v.failure();
        v.probe(&s, &format!("upstream {status}"));
        tried += 1;
    }

    // A provider that echoes its key: the client sees it masked, in body and headers.
    for body in [good_body(), stream_body()] {
        let r = chat_raw(&s, &v.key, &[("x-fake-mode", b"echo-key")], body.as_bytes());
        assert_eq!(r.status, 401, "{}", r.text());
        let all = format!("{:?} {}", r.headers, r.text());
        assert!(!all.contains(PROVIDER_KEY), "provider key leaked: {all}");
        let masked = format!("sk-...{}", &PROVIDER_KEY[PROVIDER_KEY.len() - 4..]);
        assert!(
            r.text().contains(&masked)
                && r.header("x-fake-echo").is_some_and(|h| h.contains(&masked)),
            "the echo is there, masked: {all}"
        );
        v.failure();
        v.probe(&s, "echo-key");
        tried += 1;
    }

    // No usage: charged the estimate (the prompt as the reservation counts it, completion text
    // chars / 4).
    let r = chat_raw(
        &s,
        &v.key,
        &[("x-fake-no-usage", b"1")],
        good_body().as_bytes(),
    );
    assert_eq!(r.status, 200);
    // "ok ok ok ok ok" = 14 chars → 3 tokens.
    v.charge(cost_nanos(10, 3));
    v.probe(&s, "no usage");
    let r = chat_raw(
        &s,
        &v.key,
        &[("x-fake-no-usage", b"1")],
        stream_body().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.complete && r.text().ends_with("data: [DONE]\n\n"),
        "{}",
        r.text()
    );
    // Five "ok " deltas = 15 chars → 3 tokens.
    v.charge(cost_nanos(10, 3));
    v.probe(&s, "stream without usage");
    tried += 2;

    // Truncated JSON: forwarded as is, charged the prompt estimate.
    let r = chat_raw(
        &s,
        &v.key,
        &[("x-fake-mode", b"truncated-json")],
        good_body().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("\"mess"), "{}", r.text());
    v.charge(cost_nanos(10, 0));
    v.probe(&s, "truncated json");
    tried += 1;

    // Malformed SSE: forwarded unchanged up to [DONE], charged the estimate from the one
    // readable delta ("ok" → 0 tokens).
    let r = chat_raw(
        &s,
        &v.key,
        &[("x-fake-mode", b"malformed-sse")],
        stream_body().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(r.complete, "malformed SSE must not break the response");
    assert!(
        find(&r.body, b"\xff\xfe\xfd garbage").is_some(),
        "{}",
        r.text()
    );
    v.probe(&s, "malformed sse");
    tried += 1;
    // Its cost is what the rows add up to beyond everything counted so far.
    let rows = s.wait_spend_logs(&v.key, v.rows + 1);
    let total: i64 = rows
        .iter()
        .map(|r| (r["spend"].as_f64().unwrap() * 1e9).round() as i64)
        .sum();
    let malformed_cost = total - v.expected_nanos;
    eprintln!("adversarial: malformed SSE charged {malformed_cost} nano-dollars");
    assert!(
        (0..=cost_nanos(10, 5)).contains(&malformed_cost),
        "malformed SSE charged {malformed_cost}"
    );
    v.charge(malformed_cost);

    // Gzip despite accept-encoding being dropped: passed through byte-exact (the CRC holds),
    // charged the estimate since usage cannot be read.
    let r = chat_raw(
        &s,
        &v.key,
        &[("x-fake-mode", b"gzip")],
        good_body().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let plain: Value = serde_json::from_slice(&gunzip_stored(&r.body)).unwrap();
    assert_eq!(plain["usage"]["completion_tokens"], 5);
    v.charge(cost_nanos(10, 0));
    v.probe(&s, "gzip json");
    let r = chat_raw(
        &s,
        &v.key,
        &[("x-fake-mode", b"gzip")],
        stream_body().as_bytes(),
    );
    assert_eq!(r.status, 200);
    let plain = gunzip_stored(&r.body);
    assert!(find(&plain, b"data: [DONE]").is_some());
    v.charge(cost_nanos(10, 0));
    v.probe(&s, "gzip sse");
    tried += 2;

    // Absurd usage numbers: the provider's word is taken, saturating, never wrapping.
    for (usage, prompt, completion) in [
        (
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}),
            1,
            2,
        ),
        (json!({"prompt_tokens": -5, "completion_tokens": 2}), 0, 2),
        (json!({"prompt_tokens": "10", "completion_tokens": 2}), 0, 2),
        (
            json!({"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": -1}),
            3,
            1,
        ),
    ] {
        let r = chat_raw(
            &s,
            &v.key,
            &[("x-fake-usage", usage.to_string().as_bytes())],
            good_body().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["usage"], usage);
        // Cost header agrees with what will be settled.
        let cost = r.header("x-litellm-response-cost").map(str::to_string);
        v.charge(cost_nanos(prompt, completion));
        eprintln!("adversarial: usage {usage} → cost header {cost:?}");
        v.probe(&s, &format!("usage {usage}"));
        tried += 1;
    }
    eprintln!("adversarial: upstream faults (settled): {tried} inputs");
    v.assert_settled(&s);

    // u64::MAX tokens on a key of its own: spend saturates, the key is then over budget, and
    // the VM keeps serving everyone else.
    let (big, _) = s.generate_key(json!({"max_budget": 5}));
    let usage =
        json!({"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX, "total_tokens": u64::MAX});
    let r = chat_raw(
        &s,
        &big,
        &[("x-fake-usage", usage.to_string().as_bytes())],
        good_body().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    chat_raw(&s, &big, &[], good_body().as_bytes()).assert_envelope(422, "after u64::MAX usage");
    let rows = s.wait_spend_logs(&big, 1);
    // The store keeps token counts as SQLite integers: they saturate at i64::MAX.
    assert_eq!(rows[0]["total_tokens"].as_i64(), Some(i64::MAX), "{rows:?}");
    let (fresh, _) = s.generate_key(json!({"max_parallel_requests": 1}));
    let r = chat_raw(&s, &fresh, &[], good_body().as_bytes());
    assert_eq!(
        r.status,
        200,
        "the VM serves after u64::MAX usage: {}",
        r.text()
    );
    eprintln!("adversarial: upstream faults: {} inputs", tried + 1);
}

/// Hangs and hang-ups: an upstream that never answers (the client gives up), a stream that
/// stops or is cut mid-way, a client that sends half a body or leaves mid-stream. Each frees
/// the key's only parallel slot; a cut stream is charged its estimate, the rest nothing.
#[test]
fn hangs_and_aborts_free_the_slot() {
    let s = Stack::start(CONFIG);
    let mut v = Victim::new(&s);
    let bearer = format!("Bearer {}", v.key);
    let mut tried = 0;

    // The upstream hangs; the client gives up after 1 s.
    let got = s.abort_request(
        "/v1/chat/completions",
        &[("authorization", &bearer), ("x-fake-delay-ms", "600000")],
        &good_body(),
        Duration::from_secs(1),
    );
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    v.failure();
    v.probe(&s, "an upstream that hangs");
    tried += 1;

    // The upstream cuts the stream after two chunks: the client sees a truncated body; the
    // call is charged its estimate (10 prompt tokens, "ok ok " → 1 token).
    let r = chat_raw(
        &s,
        &v.key,
        &[("x-fake-mode", b"drop-mid-stream")],
        stream_body().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(
        !r.complete,
        "a cut stream must not look complete: {}",
        r.text()
    );
    assert!(r.text().contains("chatcmpl-broken"));
    v.charge(cost_nanos(10, 1));
    v.probe(&s, "a stream cut by the upstream");
    tried += 1;

    // The upstream stalls mid-stream; the client leaves once both chunks have come (not after
    // a fixed time, which a loaded machine could outlast before they come).
    let req = request_bytes(
        s.port,
        "/v1/chat/completions",
        &[
            ("content-type", b"application/json"),
            ("authorization", bearer.as_bytes()),
            ("x-fake-mode", b"stall-mid-stream"),
        ],
        stream_body().as_bytes(),
    );
    let chunks = |got: &[u8]| got.windows(15).filter(|w| w == b"chatcmpl-broken").count();
    let got = exchange_until(s.port, &req, |got| chunks(got) >= 2);
    assert_eq!(chunks(&got), 2, "{}", String::from_utf8_lossy(&got));
    v.charge(cost_nanos(10, 1));
    v.probe(&s, "a stalled stream the client left");
    tried += 1;

    // The client leaves mid-stream (a long stream, read one chunk, close).
    let long = body_with(json!({"stream": true, "max_tokens": 4000}));
    {
        let req = request_bytes(
            s.port,
            "/v1/chat/completions",
            &[
                ("content-type", b"application/json"),
                ("authorization", bearer.as_bytes()),
            ],
            long.as_bytes(),
        );
        let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        stream.write_all(&req).unwrap();
        let mut buf = vec![0u8; 512];
        let n = stream.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        drop(stream);
    }
    tried += 1;
    // Charged an estimate of what had streamed by then: between 10 prompt tokens and the cap.
    v.probe(&s, "a client that left mid-stream");
    let rows = s.wait_spend_logs(&v.key, v.rows + 1);
    let total: i64 = rows
        .iter()
        .map(|r| (r["spend"].as_f64().unwrap() * 1e9).round() as i64)
        .sum();
    let left_cost = total - v.expected_nanos;
    eprintln!("adversarial: client left mid-stream, charged {left_cost} nano-dollars");
    assert!(
        (cost_nanos(10, 0)..=cost_nanos(10, 4000)).contains(&left_cost),
        "{left_cost}"
    );
    v.charge(left_cost);

    // Half a body, then the client closes: never admitted, nothing charged, no row.
    for sent in [0usize, 1, 20, good_body().len() - 1] {
        let body = good_body();
        let mut req = request_bytes(
            s.port,
            "/v1/chat/completions",
            &[
                ("content-type", b"application/json"),
                ("authorization", bearer.as_bytes()),
            ],
            body.as_bytes(),
        );
        req.truncate(req.len() - body.len() + sent);
        let got = raw_exchange(s.port, &req, Duration::from_millis(300));
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        tried += 1;
        v.probe(
            &s,
            &format!("a client that sent {sent} body bytes and left"),
        );
    }
    // Half a body and a shutdown of the write side: Envoy sees the end and refuses or resets.
    eprintln!("adversarial: hangs and aborts: {tried} inputs");
    v.assert_settled(&s);
}

/// Admin requests that are too big or malformed are refused by the sidecar with a clear status,
/// and the master key is never accepted in a mangled form.
#[test]
fn admin_api_refuses_oversized_and_malformed_requests() {
    let s = Stack::start(CONFIG);
    let mut tried = 0;
    let master = format!("Bearer {MASTER_KEY}");
    let headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/json"),
        ("authorization", master.as_bytes()),
    ];
    // 2 MiB of JSON for /key/generate: over the admin limit (1 MiB).
    let big = json!({"metadata": {"pad": "z".repeat(2 * 1024 * 1024)}}).to_string();
    let r = raw_post(&s, "/key/generate", &headers, big.as_bytes());
    r.assert_envelope(413, "2 MiB admin body");
    tried += 1;
    for body in [
        &b"{"[..],
        b"\xff\xfe",
        b"{\"max_budget\":\"x\"}",
        b"{\"models\":7}",
    ] {
        let r = raw_post(&s, "/key/generate", &headers, body);
        assert!(
            (400..500).contains(&r.status),
            "{:?}: {} {}",
            String::from_utf8_lossy(body),
            r.status,
            r.text()
        );
        tried += 1;
    }
    let keys = s.get("/key/list", Some(MASTER_KEY));
    keys.assert_status(200);
    assert_eq!(
        keys.json()["keys"].as_array().map(Vec::len),
        Some(0),
        "{}",
        keys.body
    );
    eprintln!("adversarial: admin requests: {tried} inputs");
}
