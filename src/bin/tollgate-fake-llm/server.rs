//! Built-in fake OpenAI-compatible upstream: `tollgate-fake-llm --port N`.
//!
//! Used for offline runs, by the integration tests and by the benchmarks. It
//! answers instantly and deterministically, keeps no per-request logs and uses
//! bounded memory.
//!
//! # Endpoints
//!
//! Every API path is served both with and without the `/v1` prefix.
//!
//! | Method   | Path                   | Answer                                       |
//! |----------|------------------------|----------------------------------------------|
//! | `POST`   | `/v1/chat/completions` | `chat.completion` (or an SSE stream)         |
//! | `POST`   | `/v1/completions`      | `text_completion` (or an SSE stream)         |
//! | `POST`   | `/v1/embeddings`       | `list` of `embedding` objects                |
//! | `GET`    | `/v1/models`           | `list` of a few `model` objects              |
//! | `GET`    | `/fake/requests`       | the recorded requests (see below)            |
//! | `DELETE` | `/fake/requests`       | clears the recorded requests, answers `204`  |
//! | `GET`    | `/fake/stats`          | `{"requests": N, "max_in_flight": M}`: API requests received, most answered at once |
//!
//! Anything else answers `404` with an OpenAI error body
//! (`Invalid URL (METHOD /path)`).
//!
//! # Deterministic usage
//!
//! * Text counts `max(1, chars / 4)` tokens, `chars` being Unicode characters.
//! * chat: `prompt_tokens` as OpenAI counts the chat format: 3 per message, plus
//!   each string field of it (`role`, `content`, `name`...; a `name` 1 more; an
//!   empty string 0), the `text` of every content part, `tool_calls` by their
//!   JSON text; plus 3 priming the reply; `tools` add their JSON text + 9. One
//!   `"hi"` user message is 3 + 1 + 1 + 3 = 8.
//! * completions: `prompt` (a string, or an array of strings), embeddings:
//!   `input` (likewise), counted as text over all items; array items that are
//!   not strings (e.g. token arrays) count with the length of their JSON text.
//! * `completion_tokens` = `max_tokens`, else `max_completion_tokens`, else
//!   10; capped at 4096. Embeddings have no completion tokens.
//! * `total_tokens = prompt_tokens + completion_tokens`.
//!
//! The generated text is `"ok "` repeated `completion_tokens` times, with the
//! trailing space trimmed (`"ok ok ok"` for 3 tokens). `model` echoes the
//! request's `model` (`"fake-model"` when absent). Chat ids are
//! `chatcmpl-fake-<n>`, completion ids `cmpl-fake-<n>`, with `n` a
//! per-server counter starting at 1. `finish_reason` is always `"stop"`.
//! Embeddings are one 8-float vector per input item, derived from a hash of
//! the item (same input, same vector).
//!
//! # Streaming
//!
//! With `"stream": true`, chat and completions answer `text/event-stream`:
//!
//! 1. one `data: {chunk}` event per completion token, each carrying `"ok "`
//!    (chat: `delta.content`, the first delta also has `"role":"assistant"`;
//!    completions: `text`), `finish_reason: null`;
//! 2. a chunk with an empty delta (chat) or empty text (completions) and
//!    `finish_reason: "stop"`;
//! 3. only when `stream_options.include_usage` is `true`: a chunk with
//!    `"choices": []` and the `usage` object (as OpenAI does, the earlier
//!    chunks then carry `"usage": null`);
//! 4. `data: [DONE]`.
//!
//! Every event is written as its own HTTP chunk and flushed separately.
//!
//! # Errors and authentication
//!
//! * A body that is not valid JSON (or not a JSON object) on a `POST` API
//!   endpoint answers `400` with an OpenAI error envelope
//!   (`{"error":{"message","type","param","code"}}`); a body over 16 MiB
//!   answers `413`.
//! * With [`FakeLlmOptions::require_api_key`] set, API requests whose
//!   `Authorization` header is not exactly `Bearer <key>` answer `401`
//!   `{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`.
//!   `/fake/requests` never needs a key.
//!
//! # Per-request test controls (request headers)
//!
//! * `x-fake-delay-ms: N` — sleep N ms before answering (overrides the
//!   server-wide [`FakeLlmOptions::delay_ms`] for this request; capped at
//!   10 minutes). The delay happens before the key check and applies to
//!   every API answer, errors included.
//! * `x-fake-status: S` — answer status `S` (400..=599) with an OpenAI error
//!   body (`429` → type `requests` / code `rate_limit_exceeded`, `5xx` →
//!   type `server_error`, other `4xx` → type `invalid_request_error`). Checked
//!   after the key check, before the body is parsed.
//! * `x-fake-no-usage: 1` (or `true`/`yes`) — omit `usage` everywhere,
//!   including the streamed usage chunk and the `"usage": null` fields.
//! * `x-fake-usage: <JSON>` — replace every `usage` object of the answer
//!   (the JSON body's, or the streamed usage chunk's) with this JSON value.
//! * `x-fake-mode: M` — a misbehaving upstream (checked after the key check):
//!   * `echo-key` — `401` whose error message and `x-fake-echo` header
//!     repeat the `Authorization` header received (a provider that echoes
//!     the key);
//!   * `drop-mid-stream` — a `200` SSE answer that sends two chunks, then
//!     aborts the connection (no terminating chunk);
//!   * `stall-mid-stream` — two SSE chunks, then nothing for 10 minutes;
//!   * `malformed-sse` — a `200` SSE answer of broken events (bad JSON,
//!     non-UTF-8 bytes, wrong `usage` types, no blank-line ends) and `[DONE]`;
//!   * `truncated-json` — a `200` `application/json` body cut in the middle;
//!   * `gzip` — the normal answer, gzip-encoded, with
//!     `content-encoding: gzip` (whatever `accept-encoding` said).
//!
//! # Request recording
//!
//! The last 64 API requests (everything except `/fake/requests` itself,
//! including requests that were then refused) are kept in a ring buffer.
//! `GET /fake/requests` returns them as a JSON array, oldest first / newest
//! last, each as
//! `{"method": "POST", "path": "/v1/chat/completions", "headers": {...}, "body": ...}`
//! where `headers` maps lowercase header names to values (repeated headers
//! joined with `", "`) and `body` is the parsed JSON body, or the body as a
//! string when it is not JSON (`""` when empty). Bodies over 1 MiB are
//! recorded as the string `"<N bytes, not recorded>"`.
//! `DELETE /fake/requests` empties the buffer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

/// Options of the fake upstream.
#[derive(Debug, Clone, Default)]
pub struct FakeLlmOptions {
    /// Address to bind; empty means `"127.0.0.1"`.
    pub host: String,
    /// Port to bind; `0` picks a free port (the printed line shows it).
    pub port: u16,
    /// Delay before every API answer, in milliseconds (the
    /// `x-fake-delay-ms` request header overrides it).
    pub delay_ms: u64,
    /// When set, API requests must carry `Authorization: Bearer <key>`.
    pub require_api_key: Option<String>,
}

/// Number of requests kept for `GET /fake/requests`.
pub const RECORDED_REQUESTS: usize = 64;

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_MODEL: &str = "fake-model";
const SYSTEM_FINGERPRINT: &str = "fp_fake";
const MAX_BODY_BYTES: usize = 16 << 20;
const MAX_RECORDED_BODY_BYTES: usize = 1 << 20;
const DEFAULT_COMPLETION_TOKENS: u64 = 10;
const MAX_COMPLETION_TOKENS: u64 = 4096;
const EMBEDDING_DIMS: usize = 8;
const MAX_DELAY_MS: u64 = 600_000;
const TOKEN_TEXT: &str = "ok ";

/// Binds `opts.host:opts.port`, prints `fake-llm listening on http://ADDR`
/// to stdout and serves forever.
pub async fn run(opts: FakeLlmOptions) -> anyhow::Result<()> {
    let host = match opts.host.trim() {
        "" => DEFAULT_HOST,
        h => h.trim_start_matches('[').trim_end_matches(']'),
    };
    let listener = tokio::net::TcpListener::bind((host, opts.port))
        .await
        .with_context(|| format!("fake-llm: cannot bind {host}:{}", opts.port))?;
    let addr = listener
        .local_addr()
        .context("fake-llm: cannot read the bound address")?;
    println!("fake-llm listening on http://{addr}");
    // Small SSE chunks must leave immediately, not wait for Nagle.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router(&opts))
        .await
        .context("fake-llm: server error")?;
    Ok(())
}

/// The fake upstream as a router, for in-process use.
pub fn router(opts: &FakeLlmOptions) -> Router {
    let shared = Arc::new(Shared {
        delay_ms: opts.delay_ms,
        expected_authorization: opts.require_api_key.as_ref().map(|k| format!("Bearer {k}")),
        next_id: AtomicU64::new(1),
        recorded: Mutex::new(VecDeque::with_capacity(RECORDED_REQUESTS)),
        received: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
    });
    Router::new()
        .route("/fake/requests", get(list_recorded).delete(clear_recorded))
        .route("/fake/stats", get(stats))
        .fallback(api)
        .with_state(shared)
}

struct Shared {
    /// API requests received, whatever became of their answer: what a provider would bill,
    /// counted even when the client's connection died (the fleet tests kill Envoys).
    received: AtomicU64,
    /// API requests being answered now, and the most at once: what a provider saw of
    /// `max_parallel_requests` (the fleet tests hold calls open with `x-fake-delay-ms`).
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    delay_ms: u64,
    expected_authorization: Option<String>,
    next_id: AtomicU64,
    recorded: Mutex<VecDeque<Recorded>>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn ring(&self) -> MutexGuard<'_, VecDeque<Recorded>> {
        // A poisoned lock only means a panic elsewhere; the data is still fine.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, method: &Method, path: &str, headers: &HeaderMap, body: &Bytes) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let body = if body.len() <= MAX_RECORDED_BODY_BYTES {
            RecordedBody::Bytes(body.clone())
        } else {
            RecordedBody::Omitted(body.len())
        };
        let entry = Recorded {
            method: method.clone(),
            path: path.to_owned(),
            headers: headers.clone(),
            body,
        };
        let mut ring = self.ring();
        if ring.len() >= RECORDED_REQUESTS {
            ring.pop_front();
        }
        ring.push_back(entry);
    }
}

#[derive(Clone)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: RecordedBody,
}

#[derive(Clone)]
enum RecordedBody {
    Bytes(Bytes),
    Omitted(usize),
}

impl Recorded {
    fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            match headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
                }
            }
        }
        let body = match &self.body {
            RecordedBody::Bytes(bytes) => serde_json::from_slice::<Value>(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
            RecordedBody::Omitted(len) => Value::String(format!("<{len} bytes, not recorded>")),
        };
        json!({
            "method": self.method.as_str(),
            "path": self.path,
            "headers": headers,
            "body": body,
        })
    }
}

async fn list_recorded(State(shared): State<Arc<Shared>>) -> Response {
    // Copy out (cheap: bodies are reference-counted) and render unlocked.
    let snapshot: Vec<Recorded> = shared.ring().iter().cloned().collect();
    let list: Vec<Value> = snapshot.iter().map(Recorded::to_json).collect();
    Json(Value::Array(list)).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({
        "requests": shared.received.load(Ordering::Relaxed),
        "max_in_flight": shared.max_in_flight.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// One API request being answered (counted in `in_flight` until dropped).
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn clear_recorded(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.ring().clear();
    StatusCode::NO_CONTENT
}

async fn api(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return openai_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large or unreadable",
            "invalid_request_error",
            None,
        );
    };
    let full_path = parts.uri.path();
    shared.record(&parts.method, full_path, &parts.headers, &bytes);
    let _answering = InFlight::enter(&shared);

    let delay = header_str(&parts.headers, "x-fake-delay-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(shared.delay_ms)
        .min(MAX_DELAY_MS);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    if let Some(expected) = &shared.expected_authorization {
        let given = parts.headers.get(header::AUTHORIZATION);
        if given.map(HeaderValue::as_bytes) != Some(expected.as_bytes()) {
            return openai_error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided",
                "invalid_request_error",
                Some("invalid_api_key"),
            );
        }
    }

    if let Some(status) = header_str(&parts.headers, "x-fake-status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
    {
        return forced_error(status);
    }

    let no_usage = header_str(&parts.headers, "x-fake-no-usage").is_some_and(|v| {
        v == "1" || v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes")
    });
    let mode = header_str(&parts.headers, "x-fake-mode").unwrap_or_default();
    match mode {
        "echo-key" => return echo_key(&parts.headers),
        "drop-mid-stream" => return broken_stream(false),
        "stall-mid-stream" => return broken_stream(true),
        "malformed-sse" => return malformed_sse(),
        "truncated-json" => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"id":"chatcmpl-cut","object":"chat.completion","choices":[{"index":0,"mess"#,
            )
                .into_response()
        }
        _ => {}
    }
    let usage_override = header_str(&parts.headers, "x-fake-usage")
        .and_then(|v| serde_json::from_str::<Value>(v).ok());
    let path = full_path.strip_prefix("/v1").unwrap_or(full_path);
    let handler: fn(&Shared, &Value, bool) -> Response = match (&parts.method, path) {
        (&Method::GET, "/models") => return models(),
        (&Method::POST, "/chat/completions") => chat_completions,
        (&Method::POST, "/completions") => completions,
        (&Method::POST, "/embeddings") => embeddings,
        (method, _) => {
            return openai_error(
                StatusCode::NOT_FOUND,
                format!("Invalid URL ({method} {full_path})"),
                "invalid_request_error",
                None,
            )
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(request @ Value::Object(_)) => {
            let response = handler(&shared, &request, no_usage);
            if usage_override.is_none() && mode != "gzip" {
                return response;
            }
            let (mut parts, body) = response.into_parts();
            let Ok(mut body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
                return forced_error(StatusCode::INTERNAL_SERVER_ERROR);
            };
            if let Some(usage) = &usage_override {
                body = Bytes::from(replace_usage(&body, usage));
            }
            if mode == "gzip" {
                body = Bytes::from(gzip_stored(&body));
                parts
                    .headers
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(body))
        }
        _ => openai_error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means \
             you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
             payload, but what was sent was not valid JSON.)",
            "invalid_request_error",
            None,
        ),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn openai_error(
    status: StatusCode,
    message: impl Into<String>,
    kind: &str,
    code: Option<&str>,
) -> Response {
    let body = json!({
        "error": {
            "message": message.into(),
            "type": kind,
            "param": null,
            "code": code,
        }
    });
    (status, Json(body)).into_response()
}

fn forced_error(status: StatusCode) -> Response {
    let message = format!("Fake upstream error (x-fake-status: {})", status.as_u16());
    if status == StatusCode::TOO_MANY_REQUESTS {
        openai_error(status, message, "requests", Some("rate_limit_exceeded"))
    } else if status.is_server_error() {
        openai_error(status, message, "server_error", None)
    } else {
        openai_error(status, message, "invalid_request_error", None)
    }
}

fn models() -> Response {
    let data: Vec<Value> = ["fake-model", "gpt-4o-mini", "text-embedding-3-small"]
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate-fake"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `max(1, chars / 4)`.
fn tokens_for_chars(chars: usize) -> u64 {
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

/// Tokens of one string field of a message: none for `""`, else `max(1, chars / 4)`.
fn field_tokens(text: &str) -> u64 {
    if text.is_empty() {
        0
    } else {
        tokens_for_chars(text.chars().count())
    }
}

/// Prompt tokens of a chat request the way OpenAI counts them: 3 per message, plus every
/// string field (role, content, name...; `name` 1 more), the `text` of content parts and
/// `tool_calls` (by their JSON text), plus 3 priming the reply; tool definitions add their
/// JSON text + 9. One `"hi"` user message is 3 + 1 + 1 + 3 = 8.
fn chat_prompt_tokens(request: &Value) -> u64 {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut tokens: u64 = 3;
    for message in messages {
        tokens += 3;
        let Some(fields) = message.as_object() else {
            continue;
        };
        for (name, value) in fields {
            tokens += match (name.as_str(), value) {
                ("name", Value::String(s)) => field_tokens(s) + 1,
                (_, Value::String(s)) => field_tokens(s),
                ("content", Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .map(field_tokens)
                    .sum(),
                ("tool_calls" | "function_call", v) if !v.is_null() => field_tokens(&v.to_string()),
                _ => 0,
            };
        }
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        if !tools.is_empty() {
            tokens += field_tokens(&Value::Array(tools.clone()).to_string()) + 9;
        }
    }
    tokens
}

/// Characters of a `prompt` / `input`: a string or an array of items.
fn text_input_chars(input: Option<&Value>) -> usize {
    match input {
        None | Some(Value::Null) => 0,
        Some(Value::Array(items)) => items.iter().map(item_chars).sum(),
        Some(other) => item_chars(other),
    }
}

fn item_chars(item: &Value) -> usize {
    match item {
        Value::String(s) => s.chars().count(),
        other => other.to_string().chars().count(),
    }
}

fn completion_tokens(request: &Value) -> u64 {
    ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|key| request.get(*key).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_COMPLETION_TOKENS)
        .min(MAX_COMPLETION_TOKENS)
}

fn generated_text(tokens: u64) -> String {
    let count = usize::try_from(tokens).unwrap_or(0);
    let mut text = TOKEN_TEXT.repeat(count);
    text.truncate(text.trim_end().len());
    text
}

fn usage_json(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
    })
}

fn model_of(request: &Value) -> &str {
    request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL)
}

fn wants_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool) == Some(true)
}

fn include_usage(request: &Value) -> bool {
    request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
}

/// A provider that repeats the credential it was given, in its error body and a header.
fn echo_key(headers: &HeaderMap) -> Response {
    let given = header_str(headers, "authorization").unwrap_or_default();
    let mut response = openai_error(
        StatusCode::UNAUTHORIZED,
        format!("Incorrect API key provided: {given}"),
        "invalid_request_error",
        Some("invalid_api_key"),
    );
    if let Ok(v) = HeaderValue::from_str(given) {
        response.headers_mut().insert("x-fake-echo", v);
    }
    response
}

/// Items of a streamed body fed from a task (an `Err` aborts the connection).
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx)
    }
}

/// Two SSE chunks, then an aborted connection (`stall`: then silence for 10 minutes).
fn broken_stream(stall: bool) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for text in ["ok ", "ok "] {
            let chunk = json!({
                "id": "chatcmpl-broken", "object": "chat.completion.chunk", "created": 0,
                "model": "fake-model",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
            });
            if tx.send(Ok(sse_event(&chunk))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if stall {
            // Ends early when the client goes away.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(MAX_DELAY_MS)) => {}
                _ = tx.closed() => {}
            }
        } else {
            let _ = tx
                .send(Err(std::io::Error::other("fake-llm: dropped mid-stream")))
                .await;
        }
    });
    let mut response = Response::new(Body::from_stream(ChannelBody(rx)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// An SSE answer whose events are broken in every way a reader must survive.
fn malformed_sse() -> Response {
    let mut body: Vec<u8> = Vec::new();
    body.extend_from_slice(b"data: {not json\n\n");
    body.extend_from_slice(b"data: \xff\xfe\xfd garbage\n\n");
    body.extend_from_slice(b"event: weird\nid: 7\nretry: x\n\n");
    body.extend_from_slice(
        b"data: {\"choices\":[{\"delta\":{\"content\":5}}],\"usage\":\"lots\"}\n\n",
    );
    body.extend_from_slice(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-3,\"completion_tokens\":1.5}}\n\n",
    );
    body.extend_from_slice(b"data: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n\n");
    body.extend_from_slice(b": comment only\n\n");
    body.extend_from_slice(b"data:{\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\r\n\r\n");
    body.extend_from_slice(b"data: [DONE]\n\n");
    body.extend_from_slice(b"data: {\"after\":\"done\"}");
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Bytes::from(body),
    )
        .into_response()
}

/// Every `usage` object in a JSON body or in the events of an SSE body replaced by `usage`.
fn replace_usage(body: &[u8], usage: &Value) -> Vec<u8> {
    if let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(body) {
        object.insert("usage".into(), usage.clone());
        return serde_json::to_vec(&object).unwrap_or_default();
    }
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::with_capacity(body.len());
    for event in text.split_inclusive("\n\n") {
        let replaced = event
            .strip_prefix("data: ")
            .map(|rest| rest.trim_end())
            .and_then(|data| serde_json::from_str::<Value>(data).ok())
            .and_then(|mut v| {
                let has_usage = v.get("usage").is_some_and(Value::is_object);
                has_usage.then(|| {
                    v["usage"] = usage.clone();
                    sse_event(&v)
                })
            });
        match replaced {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => out.extend_from_slice(event.as_bytes()),
        }
    }
    out
}

/// `data` as a gzip member of stored (uncompressed) deflate blocks: valid gzip, no codec needed.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = u8::from(blocks.peek().is_none());
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.push(last);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut crc = 0xffff_ffff_u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(data.len() as u64 & 0xffff_ffff)
            .unwrap_or(0)
            .to_le_bytes(),
    );
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn chat_completions(shared: &Shared, request: &Value, no_usage: bool) -> Response {
    let model = model_of(request);
    let prompt_tokens = chat_prompt_tokens(request);
    let completion_tokens = completion_tokens(request);
    let id = format!("chatcmpl-fake-{}", shared.next_id());
    let created = unix_now();

    if wants_stream(request) {
        let with_usage = include_usage(request) && !no_usage;
        let chunk = |choices: Value| {
            let mut chunk = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            });
            if with_usage {
                chunk["usage"] = Value::Null;
            }
            chunk
        };
        let delta = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        let first = chunk(delta(
            json!({"role": "assistant", "content": TOKEN_TEXT}),
            Value::Null,
        ));
        let repeat = chunk(delta(json!({"content": TOKEN_TEXT}), Value::Null));
        let last = chunk(delta(json!({}), json!("stop")));
        let usage_chunk = with_usage.then(|| {
            let mut c = chunk(json!([]));
            c["usage"] = usage_json(prompt_tokens, completion_tokens);
            c
        });
        return sse_response(
            &first,
            &repeat,
            completion_tokens,
            &last,
            usage_chunk.as_ref(),
        );
    }

    let mut response = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": generated_text(completion_tokens),
                "refusal": null,
            },
            "logprobs": null,
            "finish_reason": "stop",
        }],
    });
    if !no_usage {
        response["usage"] = usage_json(prompt_tokens, completion_tokens);
    }
    Json(response).into_response()
}

fn completions(shared: &Shared, request: &Value, no_usage: bool) -> Response {
    let model = model_of(request);
    let prompt_tokens = tokens_for_chars(text_input_chars(request.get("prompt")));
    let completion_tokens = completion_tokens(request);
    let id = format!("cmpl-fake-{}", shared.next_id());
    let created = unix_now();

    if wants_stream(request) {
        let with_usage = include_usage(request) && !no_usage;
        let chunk = |choices: Value| {
            let mut chunk = json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            });
            if with_usage {
                chunk["usage"] = Value::Null;
            }
            chunk
        };
        let text = |text: &str, finish: Value| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
        let repeat = chunk(text(TOKEN_TEXT, Value::Null));
        let last = chunk(text("", json!("stop")));
        let usage_chunk = with_usage.then(|| {
            let mut c = chunk(json!([]));
            c["usage"] = usage_json(prompt_tokens, completion_tokens);
            c
        });
        return sse_response(
            &repeat,
            &repeat,
            completion_tokens,
            &last,
            usage_chunk.as_ref(),
        );
    }

    let mut response = json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{
            "text": generated_text(completion_tokens),
            "index": 0,
            "logprobs": null,
            "finish_reason": "stop",
        }],
    });
    if !no_usage {
        response["usage"] = usage_json(prompt_tokens, completion_tokens);
    }
    Json(response).into_response()
}

fn embeddings(_shared: &Shared, request: &Value, no_usage: bool) -> Response {
    let input = request.get("input");
    let items: Vec<&Value> = match input {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single) => vec![single],
    };
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let vector = match item {
                Value::String(s) => fake_vector(s.as_bytes()),
                other => fake_vector(other.to_string().as_bytes()),
            };
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    let mut response = json!({
        "object": "list",
        "data": data,
        "model": model_of(request),
    });
    if !no_usage {
        let tokens = tokens_for_chars(text_input_chars(input));
        response["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    Json(response).into_response()
}

/// Deterministic 8-float vector in [-1, 1) from an FNV-1a hash of `bytes`.
fn fake_vector(bytes: &[u8]) -> Vec<f64> {
    let mut state = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    (0..EMBEDDING_DIMS)
        .map(|_| {
            // splitmix64 step
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 40) as f64 / (1u64 << 24) as f64; // [0, 1)
            ((unit * 2.0 - 1.0) * 1e6).round() / 1e6
        })
        .collect()
}

fn sse_event(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `first` once, then `repeat` until `tokens` token chunks were sent, then
/// `last`, the optional usage chunk and `[DONE]`.
fn sse_response(
    first: &Value,
    repeat: &Value,
    tokens: u64,
    last: &Value,
    usage: Option<&Value>,
) -> Response {
    let mut tail = Vec::with_capacity(3);
    tail.push(sse_event(last));
    if let Some(usage) = usage {
        tail.push(sse_event(usage));
    }
    tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stream = SseStream {
        first: (tokens > 0).then(|| sse_event(first)),
        repeat: sse_event(repeat),
        repeat_left: tokens.saturating_sub(1),
        tail: tail.into_iter(),
        just_yielded: false,
    };
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Lazily yields pre-rendered SSE events (a repeated event is the same
/// reference-counted buffer, so a long stream costs no extra memory).
///
/// After each event it returns `Pending` once (waking itself at once), so the
/// HTTP/1 connection flushes every event separately instead of coalescing
/// them in its write buffer: clients see real, chunk-by-chunk streaming.
struct SseStream {
    first: Option<Bytes>,
    repeat: Bytes,
    repeat_left: u64,
    tail: std::vec::IntoIter<Bytes>,
    just_yielded: bool,
}

impl futures_core::Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.just_yielded {
            this.just_yielded = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = if let Some(first) = this.first.take() {
            Some(first)
        } else if this.repeat_left > 0 {
            this.repeat_left -= 1;
            Some(this.repeat.clone())
        } else {
            this.tail.next()
        };
        this.just_yielded = next.is_some();
        Poll::Ready(next.map(Ok))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn start(opts: FakeLlmOptions) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(&opts);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        /// HTTP chunks when the body was chunked, else one element.
        chunks: Vec<Vec<u8>>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn body(&self) -> Vec<u8> {
            self.chunks.concat()
        }
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body()).unwrap()
        }
        /// The `data:` payloads of an SSE body.
        fn events(&self) -> Vec<String> {
            String::from_utf8(self.body())
                .unwrap()
                .split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
                .collect()
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// Minimal HTTP/1.1 client: one request per connection, reads to EOF.
    async fn send(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: fake\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();

        let head_end = find(&raw, b"\r\n\r\n").unwrap();
        let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let mut rest = &raw[head_end + 4..];
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let chunks = if chunked {
            let mut chunks = Vec::new();
            loop {
                let line_end = find(rest, b"\r\n").unwrap();
                let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
                let size_text = size_text.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size_text, 16).unwrap();
                rest = &rest[line_end + 2..];
                if size == 0 {
                    break;
                }
                chunks.push(rest[..size].to_vec());
                rest = &rest[size + 2..];
            }
            chunks
        } else {
            vec![rest.to_vec()]
        };
        Reply {
            status,
            headers,
            chunks,
        }
    }

    async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Value) -> Reply {
        send(addr, "POST", path, headers, &body.to_string()).await
    }

    #[test]
    fn usage_rules() {
        assert_eq!(tokens_for_chars(0), 1);
        assert_eq!(tokens_for_chars(7), 1);
        assert_eq!(tokens_for_chars(8), 2);
        let req = json!({"messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": [{"type": "text", "text": "éééé"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null},
        ]});
        // 3 + (3 + system 1 + 1) + (3 + user 1 + 1) + (3 + assistant 2) = 18.
        assert_eq!(chat_prompt_tokens(&req), 18);
        let hi = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(chat_prompt_tokens(&hi), 8);
        let named = json!({"messages": [{"role": "user", "content": "hi", "name": "bob"}]});
        assert_eq!(chat_prompt_tokens(&named), 10);
        assert_eq!(chat_prompt_tokens(&json!({"messages": []})), 3);
        assert_eq!(completion_tokens(&json!({})), 10);
        assert_eq!(completion_tokens(&json!({"max_tokens": 3})), 3);
        assert_eq!(completion_tokens(&json!({"max_completion_tokens": 5})), 5);
        assert_eq!(completion_tokens(&json!({"max_tokens": 100000})), 4096);
        assert_eq!(generated_text(3), "ok ok ok");
        assert_eq!(generated_text(0), "");
        assert_eq!(text_input_chars(Some(&json!(["abcd", "efgh"]))), 8);
        // Pinned, so a client that caches embeddings sees the same vector on every run.
        assert_eq!(fake_vector(b"x").len(), EMBEDDING_DIMS);
        assert_eq!(fake_vector(b"x")[..3], [-0.597584, 0.617054, 0.286647]);
        assert_ne!(fake_vector(b"x"), fake_vector(b"y"));
        assert!(fake_vector(b"x").iter().all(|v| (-1.0..1.0).contains(v)));
    }

    #[tokio::test]
    async fn chat_non_stream_usage() {
        let addr = start(FakeLlmOptions::default()).await;
        // 3 + (3 + "system" 1 + 40 chars 10) + (3 + "user" 1 + "abcd" 1 + "efgh" 1) = 23.
        let body = json!({
            "model": "gpt-4o-mini",
            "max_tokens": 3,
            "messages": [
                {"role": "system", "content": "x".repeat(40)},
                {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "text", "text": "efgh"}]},
            ],
        });
        let reply = post(addr, "/v1/chat/completions", &[], body).await;
        assert_eq!(reply.status, 200);
        assert!(reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        let v = reply.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o-mini");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-fake-"));
        assert_eq!(v["choices"][0]["message"]["content"], "ok ok ok");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 23, "completion_tokens": 3, "total_tokens": 26})
        );

        // Defaults, cap, path without /v1, ids increase.
        let first_id = v["id"].as_str().unwrap().to_owned();
        let v = post(
            addr,
            "/chat/completions",
            &[],
            json!({"model": "m", "messages": []}),
        )
        .await
        .json();
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13})
        );
        assert_ne!(v["id"].as_str().unwrap(), first_id);
        let v = post(
            addr,
            "/v1/chat/completions",
            &[],
            json!({"model": "m", "messages": [], "max_completion_tokens": 9999}),
        )
        .await
        .json();
        assert_eq!(v["usage"]["completion_tokens"], 4096);
    }

    fn chat_stream_body(include_usage: Option<bool>) -> Value {
        let mut body = json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "12345678"}],
        });
        if let Some(include) = include_usage {
            body["stream_options"] = json!({"include_usage": include});
        }
        body
    }

    #[tokio::test]
    async fn chat_stream_without_usage() {
        let addr = start(FakeLlmOptions::default()).await;
        for include in [None, Some(false)] {
            let reply = post(addr, "/v1/chat/completions", &[], chat_stream_body(include)).await;
            assert_eq!(reply.status, 200);
            assert!(reply
                .header("content-type")
                .unwrap()
                .starts_with("text/event-stream"));
            let events = reply.events();
            assert_eq!(events.len(), 4 + 1 + 1, "{events:?}");
            // Every event travelled as its own HTTP chunk.
            assert_eq!(reply.chunks.len(), events.len());
            let chunks: Vec<Value> = events[..5]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            for (i, c) in chunks[..4].iter().enumerate() {
                assert_eq!(c["object"], "chat.completion.chunk");
                assert_eq!(c["model"], "gpt-4o-mini");
                assert_eq!(c["choices"][0]["delta"]["content"], "ok ");
                assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
                assert_eq!(c.get("usage"), None);
                assert_eq!(c["id"], chunks[0]["id"]);
                if i == 0 {
                    assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
                }
            }
            assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
            assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
            assert_eq!(events[5], "[DONE]");
        }
    }

    #[tokio::test]
    async fn chat_stream_with_usage() {
        let addr = start(FakeLlmOptions::default()).await;
        let reply = post(
            addr,
            "/v1/chat/completions",
            &[],
            chat_stream_body(Some(true)),
        )
        .await;
        let events = reply.events();
        assert_eq!(events.len(), 4 + 1 + 1 + 1, "{events:?}");
        assert_eq!(reply.chunks.len(), events.len());
        let usage_chunk: Value = serde_json::from_str(&events[5]).unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(
            usage_chunk["usage"],
            // 3 + "user" 1 + 8 characters 2 + 3.
            json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13})
        );
        let stop: Value = serde_json::from_str(&events[4]).unwrap();
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
        assert_eq!(stop["usage"], Value::Null);
        assert_eq!(events[6], "[DONE]");

        // Zero tokens: just the stop chunk, usage and [DONE].
        let mut body = chat_stream_body(Some(true));
        body["max_tokens"] = json!(0);
        let events = post(addr, "/v1/chat/completions", &[], body).await.events();
        assert_eq!(events.len(), 3, "{events:?}");
    }

    #[tokio::test]
    async fn no_usage_header() {
        let addr = start(FakeLlmOptions::default()).await;
        let no_usage = [("x-fake-no-usage", "1")];
        let v = post(
            addr,
            "/v1/chat/completions",
            &no_usage,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .json();
        assert_eq!(v["choices"][0]["message"]["content"], generated_text(10));
        assert_eq!(v.get("usage"), None);

        let events = post(
            addr,
            "/v1/chat/completions",
            &no_usage,
            chat_stream_body(Some(true)),
        )
        .await
        .events();
        assert_eq!(events.len(), 6, "{events:?}");
        assert!(events.iter().all(|e| !e.contains("usage")), "{events:?}");

        let v = post(addr, "/v1/embeddings", &no_usage, json!({"input": "abc"}))
            .await
            .json();
        assert_eq!(v.get("usage"), None);
        let v = post(addr, "/v1/completions", &no_usage, json!({"prompt": "abc"}))
            .await
            .json();
        assert_eq!(v.get("usage"), None);
    }

    #[tokio::test]
    async fn status_and_delay_headers() {
        let addr = start(FakeLlmOptions::default()).await;
        let body = json!({"model": "m", "messages": []});
        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-status", "500")],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 500);
        let v = reply.json();
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["message"].is_string());
        assert_eq!(v["error"]["param"], Value::Null);

        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-status", "429")],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

        // Not an error status: ignored.
        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-status", "200")],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 200);

        let started = std::time::Instant::now();
        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-delay-ms", "150")],
            body,
        )
        .await;
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn global_delay() {
        let addr = start(FakeLlmOptions {
            delay_ms: 120,
            ..FakeLlmOptions::default()
        })
        .await;
        let started = std::time::Instant::now();
        let reply = send(addr, "GET", "/v1/models", &[], "").await;
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(120));
        // The header overrides the global delay.
        let started = std::time::Instant::now();
        send(addr, "GET", "/v1/models", &[("x-fake-delay-ms", "0")], "").await;
        assert!(started.elapsed() < Duration::from_millis(120));
    }

    #[tokio::test]
    async fn completions_and_embeddings() {
        let addr = start(FakeLlmOptions::default()).await;
        let v = post(
            addr,
            "/v1/completions",
            &[],
            json!({"model": "davinci", "prompt": "abcdefghijkl", "max_tokens": 2}),
        )
        .await
        .json();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["model"], "davinci");
        assert_eq!(v["choices"][0]["text"], "ok ok");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
        );
        let v = post(
            addr,
            "/completions",
            &[],
            json!({"model": "d", "prompt": ["abcd", "efgh"]}),
        )
        .await
        .json();
        assert_eq!(v["usage"]["prompt_tokens"], 2);
        assert_eq!(v["usage"]["completion_tokens"], 10);

        let events = post(
            addr,
            "/v1/completions",
            &[],
            json!({"model": "d", "prompt": "x", "max_tokens": 2, "stream": true,
                   "stream_options": {"include_usage": true}}),
        )
        .await
        .events();
        assert_eq!(events.len(), 5, "{events:?}");
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["choices"][0]["text"], "ok ");

        let reply = post(
            addr,
            "/v1/embeddings",
            &[],
            json!({"model": "text-embedding-3-small", "input": ["abcdefgh", "abcd", "abcdefgh"]}),
        )
        .await;
        assert_eq!(reply.status, 200);
        let v = reply.json();
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "text-embedding-3-small");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for (i, item) in data.iter().enumerate() {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], i);
            assert_eq!(item["embedding"].as_array().unwrap().len(), 8);
        }
        assert_eq!(data[0]["embedding"], data[2]["embedding"]);
        assert_ne!(data[0]["embedding"], data[1]["embedding"]);
        assert_eq!(v["usage"], json!({"prompt_tokens": 5, "total_tokens": 5}));

        let v = post(
            addr,
            "/embeddings",
            &[],
            json!({"model": "e", "input": "ab"}),
        )
        .await
        .json();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
        assert_eq!(v["usage"]["total_tokens"], 1);
    }

    #[tokio::test]
    async fn models_bad_json_and_unknown_path() {
        let addr = start(FakeLlmOptions::default()).await;
        let v = send(addr, "GET", "/v1/models", &[], "").await.json();
        assert_eq!(v["object"], "list");
        assert!(!v["data"].as_array().unwrap().is_empty());

        let reply = send(addr, "POST", "/v1/chat/completions", &[], "not json{").await;
        assert_eq!(reply.status, 400);
        let v = reply.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"].get("code").is_some());

        let reply = send(addr, "POST", "/v1/embeddings", &[], "[1,2]").await;
        assert_eq!(reply.status, 400);

        let reply = send(addr, "GET", "/v1/chat/completions", &[], "").await;
        assert_eq!(reply.status, 404);
        assert_eq!(
            reply.json()["error"]["message"],
            "Invalid URL (GET /v1/chat/completions)"
        );
    }

    #[tokio::test]
    async fn require_api_key() {
        let addr = start(FakeLlmOptions {
            require_api_key: Some("sk-upstream".into()),
            ..FakeLlmOptions::default()
        })
        .await;
        let body = json!({"model": "m", "messages": []});
        let expected = json!({"error": {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_api_key",
        }});
        for headers in [
            &[][..],
            &[("authorization", "Bearer sk-wrong")][..],
            &[("authorization", "sk-upstream")][..],
            &[("authorization", "bearer sk-upstream")][..],
        ] {
            let reply = post(addr, "/v1/chat/completions", headers, body.clone()).await;
            assert_eq!(reply.status, 401, "{headers:?}");
            assert_eq!(reply.json(), expected);
        }
        let reply = send(addr, "GET", "/v1/models", &[], "").await;
        assert_eq!(reply.status, 401);

        let ok = [("authorization", "Bearer sk-upstream")];
        let reply = post(addr, "/v1/chat/completions", &ok, body).await;
        assert_eq!(reply.status, 200);
        // Introspection needs no key, and is not counted.
        let reply = send(addr, "GET", "/fake/requests", &[], "").await;
        assert_eq!(reply.status, 200);
        let stats = send(addr, "GET", "/fake/stats", &[], "").await;
        assert_eq!(stats.status, 200);
        let received = stats.json()["requests"].as_u64().unwrap();
        assert_eq!(received, 6, "every API request counts, refused or served");
    }

    #[tokio::test]
    async fn stats_count_requests_answered_at_once() {
        let addr = start(FakeLlmOptions::default()).await;
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let slow = [("x-fake-delay-ms", "300")];
        let call = || post(addr, "/v1/chat/completions", &slow, body.clone());
        let (a, b, c) = tokio::join!(call(), call(), call());
        assert_eq!((a.status, b.status, c.status), (200, 200, 200));
        post(addr, "/v1/chat/completions", &[], body.clone()).await;
        let stats = send(addr, "GET", "/fake/stats", &[], "").await;
        assert_eq!(stats.json()["max_in_flight"], 3);
        assert_eq!(stats.json()["requests"], 4);
    }

    #[tokio::test]
    async fn recorded_requests_ring() {
        let addr = start(FakeLlmOptions::default()).await;
        let reply = send(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("X-Custom", "A"), ("authorization", "Bearer k")],
            "plain text",
        )
        .await;
        assert_eq!(reply.status, 400);
        let list = send(addr, "GET", "/fake/requests", &[], "").await.json();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["method"], "POST");
        assert_eq!(list[0]["path"], "/v1/chat/completions");
        assert_eq!(list[0]["headers"]["x-custom"], "A");
        assert_eq!(list[0]["headers"]["authorization"], "Bearer k");
        assert_eq!(list[0]["body"], "plain text");

        for i in 0..70 {
            post(
                addr,
                "/v1/embeddings",
                &[],
                json!({"input": format!("n{i}")}),
            )
            .await;
        }
        let list = send(addr, "GET", "/fake/requests", &[], "").await.json();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), RECORDED_REQUESTS);
        assert_eq!(list[0]["body"], json!({"input": "n6"}));
        assert_eq!(list[63]["body"], json!({"input": "n69"}));
        assert_eq!(list[63]["path"], "/v1/embeddings");

        let reply = send(addr, "DELETE", "/fake/requests", &[], "").await;
        assert_eq!(reply.status, 204);
        let list = send(addr, "GET", "/fake/requests", &[], "").await.json();
        assert_eq!(list, json!([]));
    }

    #[test]
    fn gzip_stored_is_valid_gzip() {
        let z = gzip_stored(b"123456789");
        assert_eq!(&z[..3], &[0x1f, 0x8b, 8]);
        // One final stored block: 1, LEN=9, NLEN, the data.
        assert_eq!(&z[10..15], &[1, 9, 0, 0xf6, 0xff]);
        assert_eq!(&z[15..24], b"123456789");
        // CRC-32 of "123456789" is 0xCBF43926; ISIZE 9.
        assert_eq!(&z[24..], &[0x26, 0x39, 0xf4, 0xcb, 9, 0, 0, 0]);
        assert_eq!(gzip_stored(b"").len(), 10 + 5 + 8);
    }

    #[tokio::test]
    async fn misbehaving_modes() {
        let addr = start(FakeLlmOptions::default()).await;
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let reply = post(
            addr,
            "/v1/chat/completions",
            &[
                ("x-fake-mode", "echo-key"),
                ("authorization", "Bearer sk-secret"),
            ],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.header("x-fake-echo"), Some("Bearer sk-secret"));
        assert!(reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer sk-secret"));

        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-usage", r#"{"prompt_tokens":-1}"#)],
            body.clone(),
        )
        .await;
        assert_eq!(reply.json()["usage"], json!({"prompt_tokens": -1}));
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-usage", "7")],
            streamed.clone(),
        )
        .await;
        let events = reply.events();
        assert!(
            events.iter().any(|e| e.ends_with("\"usage\":7}")),
            "{events:?}"
        );
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-mode", "gzip")],
            body.clone(),
        )
        .await;
        assert_eq!(reply.header("content-encoding"), Some("gzip"));
        assert_eq!(&reply.body()[..2], &[0x1f, 0x8b]);

        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-mode", "truncated-json")],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert!(serde_json::from_slice::<Value>(&reply.body()).is_err());

        let reply = post(
            addr,
            "/v1/chat/completions",
            &[("x-fake-mode", "malformed-sse")],
            body.clone(),
        )
        .await;
        assert_eq!(reply.header("content-type"), Some("text/event-stream"));
        assert!(find(&reply.body(), b"data: [DONE]").is_some());

        // Two chunks, then the connection ends without the terminating chunk.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let text = body.to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: fake\r\nx-fake-mode: drop-mid-stream\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .unwrap();
        assert!(find(&raw, b"200 OK").is_some());
        assert!(find(&raw, b"chatcmpl-broken").is_some());
        assert!(
            find(&raw, b"\r\n0\r\n\r\n").is_none(),
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }
}
