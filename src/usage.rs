//! Token usage extraction from upstream responses (`litellm-compat.md` §7, DESIGN "Response").
//!
//! The filter sees a response body as a sequence of chunks split at arbitrary points. A
//! [`UsageReader`] (one per response) reads the token usage from those chunks as they pass:
//!
//! * **JSON** (non-streamed) bodies are forwarded untouched and buffered up to
//!   `max_buffer_bytes`; the usage is parsed once at [`UsageReader::finish`]. A larger body is
//!   forwarded without being kept ([`UsageReader::overflowed`]).
//! * **Server-sent events** are parsed incrementally: only the current incomplete event is kept
//!   (its joined `data:` payload, and, when stripping, its raw bytes), so memory is bounded by
//!   `max_buffer_bytes` and the work per chunk is linear in the chunk length. The last usage
//!   object seen wins; Anthropic's `message_start` / `message_delta` usages are merged.
//!
//! When the client did not ask for usage, Tollgate still sends `stream_options.include_usage`
//! upstream and the reader removes the final usage-only chunk (`choices: []` plus a `usage`
//! object) from what the client sees, as LiteLLM's `_litellm_strip_stream_usage` does. Every other
//! byte passes through unchanged.
//!
//! Pure: `serde_json` only, no host calls, no panics. Compiles for the host and `wasm32-wasip1`.

use serde_json::{Map, Value};

/// Token counts of one response, normalised to OpenAI's chat-completions meaning.
///
/// * `prompt_tokens` includes cached and cache-creation tokens (for Anthropic, which reports them
///   apart, they are added back).
/// * `cached_tokens` is the part of `prompt_tokens` read from a prompt cache.
/// * `reasoning_tokens` is the part of `completion_tokens` spent on reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document (or anything that is not an event stream).
    Json,
    /// `text/event-stream`.
    EventStream,
}

impl BodyKind {
    /// `text/event-stream` (any case, any parameters) is an event stream; anything else,
    /// including a missing header, is treated as JSON.
    pub fn from_content_type(ct: Option<&str>) -> BodyKind {
        let Some(ct) = ct else {
            return BodyKind::Json;
        };
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("text/event-stream") {
            BodyKind::EventStream
        } else {
            BodyKind::Json
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Usage objects
// ------------------------------------------------------------------------------------------------

/// The provider's fields as found, before normalisation. `None` = absent, null, non-numeric or
/// negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`, else `input_tokens_details.cached_tokens`.
    cached_details: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`, else `output_tokens_details.reasoning_tokens`.
    reasoning_details: Option<u64>,
}

impl RawUsage {
    fn from_object(o: &Map<String, Value>) -> RawUsage {
        RawUsage {
            prompt_tokens: num(o.get("prompt_tokens")),
            completion_tokens: num(o.get("completion_tokens")),
            total_tokens: num(o.get("total_tokens")),
            input_tokens: num(o.get("input_tokens")),
            output_tokens: num(o.get("output_tokens")),
            cache_read_input_tokens: num(o.get("cache_read_input_tokens")),
            cache_creation_input_tokens: num(o.get("cache_creation_input_tokens")),
            cached_details: nested(o, "prompt_tokens_details", "cached_tokens")
                .or_else(|| nested(o, "input_tokens_details", "cached_tokens")),
            reasoning_details: nested(o, "completion_tokens_details", "reasoning_tokens")
                .or_else(|| nested(o, "output_tokens_details", "reasoning_tokens")),
        }
    }

    /// True if any token count was found (a usage object with none of them tells nothing).
    fn any(&self) -> bool {
        self.prompt_tokens.is_some()
            || self.completion_tokens.is_some()
            || self.total_tokens.is_some()
            || self.input_tokens.is_some()
            || self.output_tokens.is_some()
            || self.cache_read_input_tokens.is_some()
            || self.cache_creation_input_tokens.is_some()
    }

    /// `self` updated with every field present in `later` (Anthropic `message_delta` over
    /// `message_start`).
    fn overlay(self, later: RawUsage) -> RawUsage {
        RawUsage {
            prompt_tokens: later.prompt_tokens.or(self.prompt_tokens),
            completion_tokens: later.completion_tokens.or(self.completion_tokens),
            total_tokens: later.total_tokens.or(self.total_tokens),
            input_tokens: later.input_tokens.or(self.input_tokens),
            output_tokens: later.output_tokens.or(self.output_tokens),
            cache_read_input_tokens: later
                .cache_read_input_tokens
                .or(self.cache_read_input_tokens),
            cache_creation_input_tokens: later
                .cache_creation_input_tokens
                .or(self.cache_creation_input_tokens),
            cached_details: later.cached_details.or(self.cached_details),
            reasoning_details: later.reasoning_details.or(self.reasoning_details),
        }
    }

    fn to_usage(self) -> Usage {
        // OpenAI's prompt_tokens already include cached tokens. Anthropic's input_tokens exclude
        // both cache reads and cache writes; the Responses API has neither cache field, so the
        // sum is just input_tokens there.
        let prompt = self.prompt_tokens.unwrap_or_else(|| {
            self.input_tokens
                .unwrap_or(0)
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
        });
        let completion = self.completion_tokens.or(self.output_tokens).unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self
                .total_tokens
                .unwrap_or_else(|| prompt.saturating_add(completion)),
            cached_tokens: self
                .cached_details
                .or(self.cache_read_input_tokens)
                .unwrap_or(0),
            reasoning_tokens: self.reasoning_details.unwrap_or(0),
        }
    }
}

/// A non-negative integer token count; integral floats (`12.0`) are accepted, anything else
/// (strings, negatives, fractions, null) is absent.
fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            // `as` saturates at u64::MAX; it cannot panic.
            (f.is_finite() && f >= 0.0 && f.fract() == 0.0).then_some(f as u64)
        }),
        _ => None,
    }
}

fn nested(o: &Map<String, Value>, outer: &str, inner: &str) -> Option<u64> {
    num(o.get(outer).and_then(|d| d.get(inner)))
}

/// The usage object of a response or stream event: top-level `usage`, else `response.usage`
/// (Responses API stream events such as `response.completed`), else `message.usage` (Anthropic
/// `message_start`). A null usage counts as absent.
fn usage_object(v: &Value) -> Option<&Map<String, Value>> {
    v.get("usage")
        .and_then(Value::as_object)
        .or_else(|| {
            v.get("response")
                .and_then(|r| r.get("usage"))
                .and_then(Value::as_object)
        })
        .or_else(|| {
            v.get("message")
                .and_then(|m| m.get("usage"))
                .and_then(Value::as_object)
        })
}

/// Usage from a complete JSON object (a non-streamed response body, or one SSE `data:` payload).
///
/// Understands OpenAI chat / completions / embeddings (`prompt_tokens`, `completion_tokens`,
/// `*_details`), the OpenAI Responses API (`input_tokens`, `output_tokens`, `*_details`) and
/// Anthropic (`input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens` =
/// prompt). Missing counts are 0 and `total_tokens` defaults to prompt + completion. `None` when
/// there is no usage object, it is null, or it holds no token count at all.
pub fn usage_from_json(v: &Value) -> Option<Usage> {
    let raw = RawUsage::from_object(usage_object(v)?);
    raw.any().then(|| raw.to_usage())
}

/// An OpenAI stream chunk that carries only usage: an empty `choices` array and a `usage` object
/// (`object` is `chat.completion.chunk`, `text_completion`, or absent). This is the chunk that
/// `stream_options.include_usage` adds, and the only one ever stripped.
fn is_usage_only_chunk(v: &Value) -> bool {
    let choices_empty = v
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|a| a.is_empty());
    let has_usage = v.get("usage").is_some_and(Value::is_object);
    let object_ok = match v.get("object") {
        None => true,
        Some(o) => matches!(
            o.as_str(),
            Some("chat.completion.chunk") | Some("text_completion")
        ),
    };
    choices_empty && has_usage && object_ok
}

fn str_chars(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => u64::try_from(s.chars().count()).unwrap_or(u64::MAX),
        _ => 0,
    }
}

/// Output characters in one stream event: OpenAI `choices[].delta.content` (and
/// `reasoning_content`, tool-call `arguments`), `choices[].text`; Responses API
/// `response.output_text.delta` / `response.function_call_arguments.delta`; Anthropic
/// `content_block_delta` (`text`, `partial_json`, `thinking`).
fn delta_chars(v: &Value) -> u64 {
    let mut n: u64 = 0;
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            n = n.saturating_add(str_chars(c.get("text")));
            if let Some(d) = c.get("delta") {
                n = n
                    .saturating_add(str_chars(d.get("content")))
                    .saturating_add(str_chars(d.get("reasoning_content")))
                    .saturating_add(tool_call_chars(d));
            }
        }
    }
    match v.get("type").and_then(Value::as_str) {
        Some("response.output_text.delta") | Some("response.function_call_arguments.delta") => {
            n = n.saturating_add(str_chars(v.get("delta")));
        }
        Some("content_block_delta") => {
            if let Some(d) = v.get("delta") {
                n = n
                    .saturating_add(str_chars(d.get("text")))
                    .saturating_add(str_chars(d.get("partial_json")))
                    .saturating_add(str_chars(d.get("thinking")));
            }
        }
        _ => {}
    }
    n
}

/// Output characters of a complete (non-streamed) response: `choices[].message.content`,
/// its tool-call `arguments`, and `choices[].text`.
fn message_chars(v: &Value) -> u64 {
    let mut n: u64 = 0;
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            n = n.saturating_add(str_chars(c.get("text")));
            if let Some(m) = c.get("message") {
                n = n
                    .saturating_add(str_chars(m.get("content")))
                    .saturating_add(tool_call_chars(m));
            }
        }
    }
    n
}

fn tool_call_chars(msg: &Value) -> u64 {
    msg.get("tool_calls")
        .and_then(Value::as_array)
        .map_or(0, |calls| {
            calls.iter().fold(0u64, |n, tc| {
                n.saturating_add(str_chars(
                    tc.get("function").and_then(|f| f.get("arguments")),
                ))
            })
        })
}

/// The top-level fields of a response or stream event that usage and text counting read. Every
/// other field (ids, model, timestamps, fingerprints...) is checked for syntax and skipped
/// without being built, which is most of the cost of a full `Value` parse of a small event.
/// A field that is present (even `null`) is `Some`, as it is in a `Value`.
#[derive(serde::Deserialize)]
struct Relevant {
    #[serde(default, deserialize_with = "present")]
    choices: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    usage: Option<Value>,
    #[serde(default, deserialize_with = "present", rename = "type")]
    kind: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    object: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    message: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    response: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    delta: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

/// Parses a JSON document into a `Value` holding only the fields [`Relevant`] names: what
/// [`usage_from_json`], [`delta_chars`], [`message_chars`] and [`is_usage_only_chunk`] read
/// gives the same answers on it as on the full document. `None` when it is not valid JSON.
/// Anything unusual (not an object, a duplicated relevant field) takes the full parse.
fn parse_relevant(bytes: &[u8]) -> Option<Value> {
    // serde_json skips the fields it ignores without checking their UTF-8; the full parse
    // refuses such a document, and so must this one (found by fuzzing: fuzz/.../usage_json.rs).
    let text = std::str::from_utf8(bytes).ok()?;
    if text.trim_start().starts_with('{') {
        if let Ok(r) = serde_json::from_str::<Relevant>(text) {
            let mut m = Map::new();
            let fields = [
                ("choices", r.choices),
                ("usage", r.usage),
                ("type", r.kind),
                ("object", r.object),
                ("message", r.message),
                ("response", r.response),
                ("delta", r.delta),
                ("id", r.id),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            return Some(Value::Object(m));
        }
    }
    serde_json::from_str::<Value>(text).ok()
}

// ------------------------------------------------------------------------------------------------
// Incremental reader
// ------------------------------------------------------------------------------------------------

/// Buffers larger than this are released after use rather than kept for the next event.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Where the current SSE line is in recognising the `data` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of a line: this many bytes of `data:` matched so far (0..=4).
    Prefix(u8),
    /// `data:` seen; one optional space to skip.
    DataStart,
    /// Inside a `data` value: bytes go to the payload.
    DataValue,
    /// Another field, a comment, or an unparsed event: bytes are not kept.
    Ignore,
}

/// Who owns a `\n` that may follow a `\r` line end (CRLF split across chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingCr {
    None,
    /// The `\r` ended a line inside the current event.
    Current,
    /// The `\r` ended an event that was forwarded.
    KeptEvent,
    /// The `\r` ended a usage-only event that was dropped: its `\n` is dropped too.
    DroppedEvent,
}

/// Reads token usage from one response body as it passes through; see the module docs.
#[derive(Debug)]
pub struct UsageReader {
    kind: BodyKind,
    strip: bool,
    max: usize,
    finished: bool,
    usage: Option<Usage>,
    text_chars: u64,
    // JSON
    body: Vec<u8>,
    overflowed: bool,
    // SSE: the current, incomplete event only.
    /// Raw bytes held back (strip mode only, until the event is known not to be usage-only).
    held: Vec<u8>,
    /// The event's `data:` values joined with `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// Raw bytes of the event so far.
    event_len: usize,
    /// The event grew beyond `max`: forwarded raw, not parsed.
    unparsed: bool,
    line: LineState,
    /// No byte of the current line seen yet (a line end now is a blank line: end of event).
    line_empty: bool,
    pending_cr: PendingCr,
    /// Anthropic usage merged over `message_start` and `message_delta`.
    anthropic: Option<RawUsage>,
    saw_done: bool,
    unparsed_events: u64,
    /// The response's `id` (`chatcmpl-...`; Anthropic's under `message`), first one seen.
    response_id: Option<String>,
}

impl UsageReader {
    /// `strip_usage_chunk`: hide the usage-only SSE chunk from the client (it did not ask for
    /// usage). `max_buffer_bytes`: the most kept for a JSON body, and for one SSE event.
    pub fn new(kind: BodyKind, strip_usage_chunk: bool, max_buffer_bytes: usize) -> Self {
        UsageReader {
            kind,
            strip: strip_usage_chunk && kind == BodyKind::EventStream,
            max: max_buffer_bytes,
            finished: false,
            usage: None,
            text_chars: 0,
            body: Vec::new(),
            overflowed: false,
            held: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event_len: 0,
            unparsed: false,
            line: LineState::Prefix(0),
            line_empty: true,
            pending_cr: PendingCr::None,
            anthropic: None,
            saw_done: false,
            unparsed_events: 0,
            response_id: None,
        }
    }

    /// Feeds the next chunk; returns the bytes to forward to the client for it.
    ///
    /// Identical to `chunk` except in strip mode on an event stream, where the bytes of the
    /// current incomplete event are held back until its blank line arrives (never more than that
    /// one event, and never more than `max_buffer_bytes` of it), and a usage-only event is
    /// dropped whole. After [`finish`](Self::finish), chunks pass through unread.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.finished {
            return chunk.to_vec();
        }
        match self.kind {
            BodyKind::Json => {
                if !self.overflowed {
                    if self.body.len().saturating_add(chunk.len()) > self.max {
                        self.overflowed = true;
                        self.body = Vec::new();
                    } else {
                        self.body.extend_from_slice(chunk);
                    }
                }
                chunk.to_vec()
            }
            BodyKind::EventStream => {
                // Only written to in strip mode; otherwise the chunk passes as is.
                let mut out = Vec::new();
                self.feed_sse(chunk, &mut out);
                if self.strip {
                    out
                } else {
                    chunk.to_vec()
                }
            }
        }
    }

    /// End of the body: returns the held-back bytes still to forward (strip mode), and reads the
    /// usage of a JSON body. An SSE event left without its blank line is parsed too (a usage-only
    /// one is still dropped; clients discard unterminated events anyway). Idempotent.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut out = Vec::new();
        match self.kind {
            BodyKind::Json => {
                if !self.overflowed {
                    if let Some(v) = parse_relevant(&self.body) {
                        self.note_id(&v);
                        self.usage = usage_from_json(&v);
                        self.text_chars = self.text_chars.saturating_add(message_chars(&v));
                    }
                }
                self.body = Vec::new();
            }
            BodyKind::EventStream => {
                self.pending_cr = PendingCr::None;
                if !self.line_empty {
                    self.end_line();
                }
                if self.event_len > 0 {
                    self.dispatch(&mut out);
                }
                self.held = Vec::new();
                self.data = Vec::new();
            }
        }
        out
    }

    /// The usage seen so far: for SSE the last usage object (Anthropic's merged), for JSON the
    /// body's usage once [`finish`](Self::finish) ran.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Output text characters seen (SSE deltas; for JSON, the message content at finish), to
    /// estimate completion tokens when no usage arrives.
    pub fn streamed_text_chars(&self) -> u64 {
        self.text_chars
    }

    /// True if the JSON body exceeded `max_buffer_bytes`, so its usage could not be read.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// How many SSE events exceeded `max_buffer_bytes` and were forwarded unparsed.
    pub fn unparsed_events(&self) -> u64 {
        self.unparsed_events
    }

    /// True once a `data: [DONE]` event was seen.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    /// The call's id as the provider returned it (the spend log's `request_id`, as LiteLLM's).
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }

    fn note_id(&mut self, v: &Value) {
        if self.response_id.is_some() {
            return;
        }
        let id = v
            .get("id")
            .or_else(|| v.get("message").and_then(|m| m.get("id")))
            .or_else(|| v.get("response").and_then(|m| m.get("id")));
        if let Some(id) = id.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            // Bounded: a provider's id is short; a huge one is not worth keeping.
            self.response_id = Some(id.chars().take(256).collect());
        }
    }

    /// The body kind this reader was made for.
    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    // --- SSE internals ------------------------------------------------------------------------

    fn feed_sse(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let pending = std::mem::replace(&mut self.pending_cr, PendingCr::None);
            if pending != PendingCr::None && rest.first() == Some(&b'\n') {
                // Second half of a CRLF whose CR ended a line or an event.
                match pending {
                    PendingCr::Current => self.raw(b"\n", out),
                    PendingCr::KeptEvent => {
                        if self.strip {
                            out.push(b'\n');
                        }
                    }
                    PendingCr::DroppedEvent | PendingCr::None => {}
                }
                rest = rest.get(1..).unwrap_or_default();
                continue;
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(p) => {
                    let content = rest.get(..p).unwrap_or_default();
                    if !content.is_empty() {
                        self.line_bytes(content, out);
                    }
                    let term = rest.get(p).copied().unwrap_or(b'\n');
                    self.raw(&[term], out);
                    let is_cr = term == b'\r';
                    if self.line_empty {
                        let kept = self.dispatch(out);
                        self.pending_cr = match (is_cr, kept) {
                            (false, _) => PendingCr::None,
                            (true, true) => PendingCr::KeptEvent,
                            (true, false) => PendingCr::DroppedEvent,
                        };
                    } else {
                        self.end_line();
                        if is_cr {
                            self.pending_cr = PendingCr::Current;
                        }
                    }
                    rest = rest.get(p.saturating_add(1)..).unwrap_or_default();
                }
                None => {
                    self.line_bytes(rest, out);
                    rest = &[];
                }
            }
        }
    }

    /// Accounts raw bytes of the current event: held back (strip mode) or forwarded once the
    /// event went unparsed. Switches to unparsed when the event grows beyond `max`.
    fn raw(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.event_len = self.event_len.saturating_add(bytes.len());
        if !self.unparsed && self.event_len > self.max {
            self.unparsed = true;
            self.unparsed_events = self.unparsed_events.saturating_add(1);
            self.line = LineState::Ignore;
            self.data.clear();
            self.has_data = false;
            if self.strip {
                out.append(&mut self.held);
            }
            release(&mut self.held);
            release(&mut self.data);
        }
        if self.strip {
            if self.unparsed {
                out.extend_from_slice(bytes);
            } else {
                self.held.extend_from_slice(bytes);
            }
        }
    }

    /// Content bytes of the current line (no line terminator in `bytes`).
    fn line_bytes(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.raw(bytes, out);
        self.line_empty = false;
        if self.unparsed {
            return;
        }
        const DATA: &[u8] = b"data:";
        let mut s = bytes;
        loop {
            match self.line {
                LineState::Prefix(n) => {
                    let Some((&b, tail)) = s.split_first() else {
                        break;
                    };
                    if DATA.get(usize::from(n)) == Some(&b) {
                        let m = n.saturating_add(1);
                        if usize::from(m) == DATA.len() {
                            self.start_data_line();
                            self.line = LineState::DataStart;
                        } else {
                            self.line = LineState::Prefix(m);
                        }
                    } else {
                        self.line = LineState::Ignore;
                    }
                    s = tail;
                }
                LineState::DataStart => {
                    let Some((&b, tail)) = s.split_first() else {
                        break;
                    };
                    if b == b' ' {
                        s = tail;
                    }
                    self.line = LineState::DataValue;
                }
                LineState::DataValue => {
                    self.data.extend_from_slice(s);
                    break;
                }
                LineState::Ignore => break,
            }
        }
    }

    fn start_data_line(&mut self) {
        if self.has_data {
            self.data.push(b'\n');
        }
        self.has_data = true;
    }

    /// A non-blank line ended.
    fn end_line(&mut self) {
        // A bare `data` line (no colon) is a data field with an empty value.
        if !self.unparsed && self.line == LineState::Prefix(4) {
            self.start_data_line();
        }
        self.line = LineState::Prefix(0);
        self.line_empty = true;
    }

    /// The current event is complete: read it, forward or drop its held bytes, reset.
    /// Returns false if it was dropped.
    fn dispatch(&mut self, out: &mut Vec<u8>) -> bool {
        let usage_only = !self.unparsed && self.has_data && self.read_payload();
        let drop = usage_only && self.strip;
        if self.strip && !drop {
            out.append(&mut self.held);
        }
        self.held.clear();
        self.data.clear();
        release(&mut self.held);
        release(&mut self.data);
        self.has_data = false;
        self.event_len = 0;
        self.unparsed = false;
        self.line = LineState::Prefix(0);
        self.line_empty = true;
        !drop
    }

    /// Reads usage and text from the event's payload; true if it is a usage-only chunk.
    fn read_payload(&mut self) -> bool {
        let payload = self.data.trim_ascii();
        if payload == b"[DONE]" {
            self.saw_done = true;
            return false;
        }
        let Some(v) = parse_relevant(payload) else {
            return false;
        };
        self.note_id(&v);
        self.text_chars = self.text_chars.saturating_add(delta_chars(&v));
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = v
                    .get("message")
                    .and_then(|m| m.get("usage"))
                    .and_then(Value::as_object)
                {
                    let raw = RawUsage::from_object(u);
                    self.anthropic = Some(raw);
                    if raw.any() {
                        self.usage = Some(raw.to_usage());
                    }
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage").and_then(Value::as_object) {
                    let raw = RawUsage::from_object(u);
                    let merged = match self.anthropic {
                        Some(start) => start.overlay(raw),
                        None => raw,
                    };
                    self.anthropic = Some(merged);
                    if merged.any() {
                        self.usage = Some(merged.to_usage());
                    }
                }
            }
            _ => {
                if let Some(u) = usage_from_json(&v) {
                    self.usage = Some(u);
                }
            }
        }
        is_usage_only_chunk(&v)
    }
}

/// Drops an empty buffer's allocation if it grew large (keeps steady-state memory small).
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = Vec::new();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The selective parse answers exactly as the full one, on ordinary and odd documents.
    /// Found by fuzzing (fuzz/fuzz_targets/usage_json.rs): invalid UTF-8 inside a field the
    /// lighter parse ignores made it read a usage the full parse refuses; the answer must not
    /// depend on which parse ran.
    #[test]
    fn invalid_utf8_in_an_ignored_field_reads_like_the_full_parse() {
        let mut body = br#"{"id":"x","Choices":[{"message":{"content":""#.to_vec();
        body.extend_from_slice(b"\xc0i");
        body.extend_from_slice(br#""}}],"usage":{"prompt_tokens":10,"completion_tokens":3}}"#);
        assert!(serde_json::from_slice::<Value>(&body).is_err());
        let mut r = UsageReader::new(BodyKind::Json, false, 1 << 20);
        r.feed(&body);
        r.finish();
        assert_eq!(r.usage(), None);
    }

    #[test]
    fn relevant_parse_matches_full_parse() {
        let docs: &[&str] = &[
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"ok "},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            r#"{"object":null,"choices":[],"usage":{"prompt_tokens":3}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3},"usage":null}"#,
            r#"{"id":"x","choices":[{"message":{"content":"héllo","tool_calls":[{"function":{"arguments":"{}"}}]},"text":"ab"}],"usage":{"prompt_tokens":1,"completion_tokens_details":{"reasoning_tokens":2}}}"#,
            r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"cache_read_input_tokens":2}}}"#,
            r#"{"type":"content_block_delta","delta":{"text":"abc","partial_json":"{"}}"#,
            r#"{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":6}}}"#,
            r#"{"type":"response.output_text.delta","delta":"hey"}"#,
            r#"{"choices":"nope","usage":[1],"type":7,"object":"x","delta":null}"#,
            r#"[{"choices":[{"text":"abc"}],"usage":{"prompt_tokens":1}}]"#,
            r#""just a string""#,
            r#"  {"usage":{"total_tokens":9.0}}  "#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"a":[1,2,{"b":"é
"}],"usage":{"prompt_tokens":1}} trailing"#,
            "",
        ];
        for doc in docs {
            let full = serde_json::from_slice::<Value>(doc.as_bytes()).ok();
            let part = parse_relevant(doc.as_bytes());
            assert_eq!(full.is_some(), part.is_some(), "{doc}");
            if let (Some(f), Some(p)) = (full, part) {
                assert_eq!(usage_from_json(&f), usage_from_json(&p), "{doc}");
                assert_eq!(delta_chars(&f), delta_chars(&p), "{doc}");
                assert_eq!(message_chars(&f), message_chars(&p), "{doc}");
                assert_eq!(is_usage_only_chunk(&f), is_usage_only_chunk(&p), "{doc}");
            }
        }
    }

    fn u(p: u64, c: u64, t: u64, cached: u64, reasoning: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
            cached_tokens: cached,
            reasoning_tokens: reasoning,
        }
    }

    /// Feeds `chunks`, returns (forwarded bytes including finish, reader).
    fn run(kind: BodyKind, strip: bool, max: usize, chunks: &[&[u8]]) -> (Vec<u8>, UsageReader) {
        let mut r = UsageReader::new(kind, strip, max);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.feed(c));
        }
        out.extend(r.finish());
        (out, r)
    }

    fn sse(strip: bool, input: &[u8]) -> (Vec<u8>, UsageReader) {
        run(BodyKind::EventStream, strip, 1 << 20, &[input])
    }

    // --- usage_from_json ------------------------------------------------------------------------

    #[test]
    fn openai_chat_usage_with_details() {
        let v = json!({"id":"x","object":"chat.completion","choices":[],"usage":{
            "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 40, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 20}}});
        assert_eq!(usage_from_json(&v), Some(u(100, 50, 150, 40, 20)));
    }

    #[test]
    fn openai_total_computed_when_absent_and_details_null() {
        let v = json!({"usage":{"prompt_tokens": 7, "completion_tokens": 3,
            "prompt_tokens_details": null, "completion_tokens_details": null}});
        assert_eq!(usage_from_json(&v), Some(u(7, 3, 10, 0, 0)));
    }

    #[test]
    fn embeddings_usage_has_no_completion() {
        let v = json!({"object":"list","data":[],"usage":{"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(usage_from_json(&v), Some(u(8, 0, 8, 0, 0)));
    }

    #[test]
    fn responses_api_usage() {
        let v = json!({"object":"response","usage":{
            "input_tokens": 36, "input_tokens_details": {"cached_tokens": 6},
            "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 12},
            "total_tokens": 123}});
        assert_eq!(usage_from_json(&v), Some(u(36, 87, 123, 6, 12)));
    }

    #[test]
    fn responses_api_completed_event_nested_usage() {
        let v = json!({"type":"response.completed","response":{"id":"r","usage":{
            "input_tokens": 10, "output_tokens": 5, "total_tokens": 15}}});
        assert_eq!(usage_from_json(&v), Some(u(10, 5, 15, 0, 0)));
        let created = json!({"type":"response.created","response":{"id":"r","usage":null}});
        assert_eq!(usage_from_json(&created), None);
    }

    #[test]
    fn anthropic_usage_adds_cache_tokens_to_prompt() {
        let v = json!({"type":"message","usage":{
            "input_tokens": 10, "output_tokens": 20,
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}});
        assert_eq!(usage_from_json(&v), Some(u(115, 20, 135, 100, 0)));
    }

    #[test]
    fn anthropic_message_start_usage_found_under_message() {
        let v = json!({"type":"message_start","message":{"usage":{"input_tokens": 3, "output_tokens": 1}}});
        assert_eq!(usage_from_json(&v), Some(u(3, 1, 4, 0, 0)));
    }

    #[test]
    fn litellm_style_mixed_fields_prefer_openai_names() {
        // LiteLLM's Anthropic responses carry both; prompt_tokens already includes the cache.
        let v = json!({"usage":{"prompt_tokens": 115, "completion_tokens": 20, "total_tokens": 135,
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 100}}});
        assert_eq!(usage_from_json(&v), Some(u(115, 20, 135, 100, 0)));
    }

    #[test]
    fn absent_null_and_empty_usage_is_none() {
        assert_eq!(usage_from_json(&json!({"choices": []})), None);
        assert_eq!(usage_from_json(&json!({"usage": null})), None);
        assert_eq!(usage_from_json(&json!({"usage": {}})), None);
        assert_eq!(usage_from_json(&json!({"usage": 5})), None);
        assert_eq!(usage_from_json(&json!([1, 2])), None);
        assert_eq!(usage_from_json(&json!("usage")), None);
        assert_eq!(usage_from_json(&json!({"usage": {"foo": 1}})), None);
    }

    #[test]
    fn bad_numbers_are_absent() {
        let v = json!({"usage":{"prompt_tokens": "12", "completion_tokens": -4,
            "total_tokens": 1.5, "prompt_tokens_details": {"cached_tokens": true},
            "completion_tokens_details": {"reasoning_tokens": [1]}, "input_tokens": 9}});
        // prompt_tokens unusable -> falls back to input_tokens; completion absent -> 0.
        assert_eq!(usage_from_json(&v), Some(u(9, 0, 9, 0, 0)));
        let all_bad = json!({"usage":{"prompt_tokens": "12", "completion_tokens": -4}});
        assert_eq!(usage_from_json(&all_bad), None);
    }

    #[test]
    fn integral_floats_and_huge_numbers() {
        let v = json!({"usage":{"prompt_tokens": 12.0, "completion_tokens": 3}});
        assert_eq!(usage_from_json(&v), Some(u(12, 3, 15, 0, 0)));
        let big = json!({"usage":{"prompt_tokens": u64::MAX, "completion_tokens": 10}});
        assert_eq!(usage_from_json(&big), Some(u(u64::MAX, 10, u64::MAX, 0, 0)));
        let huge: Value = serde_json::from_str(r#"{"usage":{"prompt_tokens":1e300}}"#).unwrap();
        assert_eq!(usage_from_json(&huge).unwrap().prompt_tokens, u64::MAX);
        let anth = json!({"usage":{"input_tokens": u64::MAX, "cache_read_input_tokens": 5}});
        assert_eq!(usage_from_json(&anth).unwrap().prompt_tokens, u64::MAX);
    }

    #[test]
    fn usage_serde_roundtrip() {
        let x = u(1, 2, 3, 4, 5);
        let s = serde_json::to_string(&x).unwrap();
        assert_eq!(serde_json::from_str::<Usage>(&s).unwrap(), x);
    }

    // --- BodyKind -------------------------------------------------------------------------------

    #[test]
    fn body_kind_from_content_type() {
        use BodyKind::*;
        assert_eq!(BodyKind::from_content_type(None), Json);
        assert_eq!(BodyKind::from_content_type(Some("application/json")), Json);
        assert_eq!(
            BodyKind::from_content_type(Some("text/event-stream")),
            EventStream
        );
        assert_eq!(
            BodyKind::from_content_type(Some(" Text/Event-Stream ; charset=utf-8")),
            EventStream
        );
        assert_eq!(BodyKind::from_content_type(Some("text/plain")), Json);
        assert_eq!(BodyKind::from_content_type(Some("")), Json);
    }

    // --- JSON bodies ----------------------------------------------------------------------------

    const CHAT_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Héllo!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;

    #[test]
    fn json_body_usage_at_finish_any_split() {
        let body = CHAT_JSON.as_bytes();
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            let mut r = UsageReader::new(BodyKind::Json, true, 4096);
            let mut out = r.feed(a);
            out.extend(r.feed(b));
            assert_eq!(r.usage(), None, "JSON usage only at finish");
            out.extend(r.finish());
            assert_eq!(out, body);
            assert_eq!(r.usage(), Some(u(9, 3, 12, 0, 0)));
            assert_eq!(r.streamed_text_chars(), 6);
            assert!(!r.overflowed());
            assert_eq!(r.response_id(), Some("chatcmpl-1"));
        }
    }

    #[test]
    fn json_overflow_forwards_everything_without_usage() {
        let body = CHAT_JSON.as_bytes();
        let chunks: Vec<&[u8]> = body.chunks(10).collect();
        let (out, r) = run(BodyKind::Json, false, body.len() - 1, &chunks);
        assert_eq!(out, body);
        assert!(r.overflowed());
        assert_eq!(r.usage(), None);
        assert!(r.body.capacity() == 0);
        // Exactly at the limit is fine.
        let (_, r) = run(BodyKind::Json, false, body.len(), &chunks);
        assert!(!r.overflowed());
        assert_eq!(r.usage(), Some(u(9, 3, 12, 0, 0)));
    }

    #[test]
    fn json_malformed_or_empty_gives_no_usage() {
        for body in [
            &b"{\"usage\":{\"prompt_tokens\":1"[..],
            b"",
            b"not json",
            b"\xff\xfe",
        ] {
            let (out, r) = run(BodyKind::Json, false, 1024, &[body]);
            assert_eq!(out, body);
            assert_eq!(r.usage(), None);
            assert!(!r.overflowed());
        }
    }

    #[test]
    fn json_kind_never_strips() {
        let (out, r) = run(BodyKind::Json, true, 1024, &[USAGE_EVENT.as_bytes()]);
        assert_eq!(out, USAGE_EVENT.as_bytes());
        assert_eq!(r.usage(), None); // not a JSON document
    }

    #[test]
    fn finish_is_idempotent_and_feed_after_finish_passes_through() {
        let mut r = UsageReader::new(BodyKind::EventStream, true, 1024);
        assert_eq!(r.feed(b"data: {\"a\":1}"), b"");
        assert_eq!(r.finish(), b"data: {\"a\":1}");
        assert_eq!(r.finish(), b"");
        assert_eq!(r.feed(USAGE_EVENT.as_bytes()), USAGE_EVENT.as_bytes());
        assert_eq!(r.usage(), None);
    }

    // --- SSE ------------------------------------------------------------------------------------

    const USAGE_EVENT: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":4,\"total_tokens\":15,\"prompt_tokens_details\":{\"cached_tokens\":2},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\n";

    fn openai_stream() -> (Vec<String>, usize) {
        let ev = |s: &str| format!("data: {s}\n\n");
        let events = vec![
            ev(
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#,
            ),
            ev(
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}"#,
            ),
            ": keep-alive\n\n".to_string(),
            ev(
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo ✓"}}],"usage":null}"#,
            ),
            ev(
                r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            ),
            USAGE_EVENT.to_string(),
            "data: [DONE]\n\n".to_string(),
        ];
        (events, 5)
    }

    fn without(events: &[String], idx: usize) -> Vec<u8> {
        events
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != idx)
            .flat_map(|(_, e)| e.bytes())
            .collect()
    }

    const STREAM_USAGE: Usage = Usage {
        prompt_tokens: 11,
        completion_tokens: 4,
        total_tokens: 15,
        cached_tokens: 2,
        reasoning_tokens: 1,
    };

    #[test]
    fn openai_stream_usage_text_and_done() {
        let (events, _) = openai_stream();
        let input = events.concat();
        let (out, r) = sse(false, input.as_bytes());
        assert_eq!(out, input.as_bytes());
        assert_eq!(r.usage(), Some(STREAM_USAGE));
        assert_eq!(r.streamed_text_chars(), 7);
        assert!(r.saw_done());
        assert!(!r.overflowed());
        assert_eq!(r.unparsed_events(), 0);
        assert_eq!(r.response_id(), Some("c"));
    }

    #[test]
    fn strip_removes_exactly_the_usage_event() {
        let (events, idx) = openai_stream();
        let input = events.concat();
        let (out, r) = sse(true, input.as_bytes());
        assert_eq!(out, without(&events, idx));
        assert_eq!(r.usage(), Some(STREAM_USAGE));
        assert!(r.saw_done());
    }

    #[test]
    fn every_two_way_split_and_single_bytes_agree() {
        let (events, idx) = openai_stream();
        let lf = events.concat();
        let crlf = lf.replace('\n', "\r\n");
        let cr = lf.replace('\n', "\r");
        for (input, stripped) in [
            (lf.clone(), without(&events, idx)),
            (
                crlf,
                String::from_utf8(without(&events, idx))
                    .unwrap()
                    .replace('\n', "\r\n")
                    .into_bytes(),
            ),
            (
                cr,
                String::from_utf8(without(&events, idx))
                    .unwrap()
                    .replace('\n', "\r")
                    .into_bytes(),
            ),
        ] {
            let input = input.as_bytes();
            for strip in [false, true] {
                let expected: &[u8] = if strip { &stripped } else { input };
                for i in 0..=input.len() {
                    let (a, b) = input.split_at(i);
                    let (out, r) = run(BodyKind::EventStream, strip, 1 << 20, &[a, b]);
                    assert_eq!(out, expected, "split at {i}, strip {strip}");
                    assert_eq!(r.usage(), Some(STREAM_USAGE), "split at {i}");
                    assert_eq!(r.streamed_text_chars(), 7);
                    assert!(r.saw_done());
                }
                let bytes: Vec<&[u8]> = input.chunks(1).collect();
                let (out, r) = run(BodyKind::EventStream, strip, 1 << 20, &bytes);
                assert_eq!(out, expected);
                assert_eq!(r.usage(), Some(STREAM_USAGE));
                assert_eq!(r.streamed_text_chars(), 7);
            }
        }
    }

    #[test]
    fn crlf_and_mixed_line_endings_parse() {
        let input = "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\r\n\r\n\
                     data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\r\n\
                     data: [DONE]\r\r";
        let (out, r) = sse(true, input.as_bytes());
        assert_eq!(
            out,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\r\n\r\ndata: [DONE]\r\r"
        );
        assert_eq!(r.usage(), Some(u(1, 2, 3, 0, 0)));
        assert_eq!(r.streamed_text_chars(), 2);
        assert!(r.saw_done());
    }

    #[test]
    fn dropped_event_ending_in_cr_takes_its_lf_even_across_chunks() {
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r";
        let mut r = UsageReader::new(BodyKind::EventStream, true, 1024);
        assert_eq!(r.feed(usage.as_bytes()), b"");
        assert_eq!(r.feed(b"\n"), b"");
        assert_eq!(r.feed(b"data: [DONE]\r\n\r\n"), b"data: [DONE]\r\n\r\n");
        assert_eq!(r.finish(), b"");
        assert_eq!(r.usage(), Some(u(1, 0, 1, 0, 0)));
    }

    #[test]
    fn only_usage_only_chunks_are_stripped() {
        let keep = [
            // content and usage in the same chunk
            "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1}}\n\n",
            // empty choices, null usage (Azure prompt_filter_results chunk)
            "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":null,\"prompt_filter_results\":[]}\n\n",
            // no choices key at all
            "data: {\"object\":\"chat.completion.chunk\",\"usage\":{\"prompt_tokens\":1}}\n\n",
            // another object type
            "data: {\"object\":\"response\",\"choices\":[],\"usage\":{\"input_tokens\":1}}\n\n",
            // Anthropic / Responses events with usage
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1}}}\n\n",
            // malformed
            "data: {\"choices\":[],\"usage\":{\n\n",
        ];
        for e in keep {
            let (out, _) = sse(true, e.as_bytes());
            assert_eq!(out, e.as_bytes(), "{e}");
        }
        let strip = [
            USAGE_EVENT,
            "data: {\"object\":\"text_completion\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
            "data: {\"choices\":[],\"usage\":{}}\n\n",
            "id: 7\nevent: chunk\n: note\ndata:{\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1}}\n\n",
        ];
        for e in strip {
            let (out, _) = sse(true, e.as_bytes());
            assert_eq!(out, b"", "{e}");
            let (out, _) = sse(false, e.as_bytes());
            assert_eq!(out, e.as_bytes());
        }
    }

    #[test]
    fn data_line_forms_and_multi_line_join() {
        // `data:` without space, with two spaces (one is kept), bare `data` (empty value).
        let (_, r) = sse(false, b"data:{\"usage\":\ndata: {\"prompt_tokens\":2}}\n\n");
        assert_eq!(r.usage(), Some(u(2, 0, 2, 0, 0)));
        let (_, r) = sse(false, b"data:  {\"usage\":{\"prompt_tokens\":3}}\n\n");
        assert_eq!(r.usage(), Some(u(3, 0, 3, 0, 0)));
        // A bare `data` line adds an empty line: still valid JSON whitespace.
        let (_, r) = sse(
            false,
            b"data\ndata: {\"usage\":{\"prompt_tokens\":4}}\ndata\n\n",
        );
        assert_eq!(r.usage(), Some(u(4, 0, 4, 0, 0)));
        let mut r = UsageReader::new(BodyKind::EventStream, false, 1024);
        r.feed(b"data\ndata: x\ndata\n");
        assert_eq!(r.data, b"\nx\n");
        // Field names are case-sensitive; `dat` or `datum:` are not data.
        let (_, r) = sse(false, b"Data: {\"usage\":{\"prompt_tokens\":5}}\n\n");
        assert_eq!(r.usage(), None);
        let (_, r) = sse(false, b"datum: {\"usage\":{\"prompt_tokens\":5}}\n\n");
        assert_eq!(r.usage(), None);
    }

    #[test]
    fn comments_event_and_id_lines_pass_through() {
        let input =
            b": ping\n\nevent: x\nid: 42\nretry: 10\ndata: {\"choices\":[{\"text\":\"abc\"}]}\n\n";
        for strip in [false, true] {
            let (out, r) = sse(strip, input);
            assert_eq!(out, input);
            assert_eq!(r.usage(), None);
            assert_eq!(r.streamed_text_chars(), 3);
        }
    }

    #[test]
    fn done_is_not_json_and_sets_flag() {
        let (out, r) = sse(true, b"data: [DONE]\n\n");
        assert_eq!(out, b"data: [DONE]\n\n");
        assert!(r.saw_done());
        assert_eq!(r.usage(), None);
        let (_, r) = sse(false, b"data:[DONE]  \n\n");
        assert!(r.saw_done());
        let (_, r) = sse(false, b"data: [DONE]x\n\n");
        assert!(!r.saw_done());
    }

    #[test]
    fn last_usage_wins_and_malformed_payloads_are_ignored() {
        let input = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
            data: {not json}\n\n\
            data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n\
            data: {\"usage\":{\"prompt_tokens\":\n\n\
            data: \xff\xfe\n\n\
            data: {\"usage\":null}\n\n";
        let (out, r) = sse(true, input);
        assert_eq!(out, input);
        assert_eq!(r.usage(), Some(u(5, 6, 11, 0, 0)));
        assert_eq!(r.streamed_text_chars(), 1);
    }

    #[test]
    fn unterminated_final_event_is_read_at_finish() {
        let (out, r) = sse(
            false,
            b"data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}",
        );
        assert_eq!(
            out,
            b"data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}"
        );
        assert_eq!(r.usage(), Some(u(2, 1, 3, 0, 0)));
        let (out, r) = sse(
            true,
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2}}\n",
        );
        assert_eq!(out, b"");
        assert_eq!(r.usage(), Some(u(2, 0, 2, 0, 0)));
        let (out, _) = sse(true, b"data: {\"choices\":[1]}\r");
        assert_eq!(out, b"data: {\"choices\":[1]}\r");
    }

    #[test]
    fn anthropic_stream_merges_start_and_delta() {
        let input = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":10}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let expected = u(128, 15, 143, 100, 0);
        for strip in [false, true] {
            let (out, r) = sse(strip, input.as_bytes());
            assert_eq!(out, input.as_bytes(), "Anthropic events are never stripped");
            assert_eq!(r.usage(), Some(expected));
            assert_eq!(r.streamed_text_chars(), 5);
            for i in 0..=input.len() {
                let (a, b) = input.as_bytes().split_at(i);
                let (out, r) = run(BodyKind::EventStream, strip, 1 << 20, &[a, b]);
                assert_eq!(out, input.as_bytes());
                assert_eq!(r.usage(), Some(expected));
            }
        }
        // Newer API: message_delta repeats cumulative input counts; they override.
        let newer = concat!(
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":30,\"cache_read_input_tokens\":4,\"output_tokens\":9}}\n\n",
        );
        let (_, r) = sse(false, newer.as_bytes());
        assert_eq!(r.usage(), Some(u(34, 9, 43, 4, 0)));
        // message_delta without a message_start: output only.
        let (_, r) = sse(
            false,
            b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n",
        );
        assert_eq!(r.usage(), Some(u(0, 9, 9, 0, 0)));
        // After message_start alone (e.g. the client aborted): input known, output 1.
        let (_, r) = sse(false, newer.lines().next().unwrap().as_bytes());
        assert_eq!(r.usage(), Some(u(25, 1, 26, 0, 0)));
    }

    #[test]
    fn responses_api_stream() {
        let input = concat!(
            "event: response.created\n",
            "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"i\",\"delta\":\"Hi there\"}\n\n",
            "event: response.completed\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":12,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":15}}}\n\n",
        );
        let (out, r) = sse(true, input.as_bytes());
        assert_eq!(out, input.as_bytes());
        assert_eq!(r.usage(), Some(u(12, 3, 15, 0, 0)));
        assert_eq!(r.streamed_text_chars(), 8);
    }

    #[test]
    fn text_counts_tool_calls_and_reasoning() {
        let input = b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"think\",\"tool_calls\":[{\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n";
        let (_, r) = sse(false, input);
        assert_eq!(r.streamed_text_chars(), 5 + 7);
    }

    #[test]
    fn oversized_event_is_forwarded_raw_and_unparsed() {
        let big = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(500)
        );
        let big_usage = format!(
            "data: {{\"choices\":[],\"pad\":\"{}\",\"usage\":{{\"prompt_tokens\":99}}}}\n\n",
            "y".repeat(500)
        );
        let input = format!("{big}{USAGE_EVENT}{big_usage}data: [DONE]\n\n");
        let max = 300;
        for strip in [false, true] {
            let mut r = UsageReader::new(BodyKind::EventStream, strip, max);
            let mut out = Vec::new();
            for c in input.as_bytes().chunks(7) {
                out.extend(r.feed(c));
                assert!(r.held.len() <= max, "held {}", r.held.len());
                assert!(r.data.len() <= max, "data {}", r.data.len());
            }
            out.extend(r.finish());
            let expected = if strip {
                format!("{big}{big_usage}data: [DONE]\n\n")
            } else {
                input.clone()
            };
            assert_eq!(out, expected.as_bytes(), "strip {strip}");
            assert_eq!(r.unparsed_events(), 2);
            // The oversized usage event was not read (and not stripped): the earlier one counts.
            assert_eq!(r.usage(), Some(STREAM_USAGE));
            assert_eq!(r.streamed_text_chars(), 0);
            assert!(r.saw_done());
            assert!(!r.overflowed());
        }
    }

    #[test]
    fn oversized_event_forwards_as_soon_as_it_overflows() {
        let mut r = UsageReader::new(BodyKind::EventStream, true, 14);
        assert_eq!(r.feed(b"data: 1234"), b"");
        assert_eq!(r.feed(b"56789"), b"data: 123456789");
        assert_eq!(r.feed(b"0\n"), b"0\n");
        assert_eq!(r.feed(b"\ndata: [DONE]"), b"\n");
        assert_eq!(r.feed(b"\n"), b"");
        assert_eq!(r.feed(b"\n"), b"data: [DONE]\n\n");
        assert_eq!(r.finish(), b"");
        assert_eq!(r.unparsed_events(), 1);
        assert!(r.saw_done());
    }

    #[test]
    fn zero_max_forwards_everything_unparsed() {
        let (events, _) = openai_stream();
        let input = events.concat();
        let (out, r) = run(BodyKind::EventStream, true, 0, &[input.as_bytes()]);
        assert_eq!(out, input.as_bytes());
        assert_eq!(r.usage(), None);
    }

    // --- property-style test --------------------------------------------------------------------

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A realistic 50-event OpenAI chat stream; returns (events, index of the usage event,
    /// expected usage, expected text chars).
    fn fifty_events() -> (Vec<String>, usize, Usage, u64) {
        let words = [
            "The",
            " quick",
            " brown",
            " fox",
            " — ",
            "jumps",
            " over",
            " the",
            " lazy",
            " 🐕",
            ".",
            "\\n",
            " \\\"Quoted\\\"",
            " data: fake",
            "\\n\\n",
            " ok",
        ];
        let mut events = Vec::new();
        let mut chars = 0u64;
        let head = r#""id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_1""#;
        events.push(format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
        let mut i = 0usize;
        while events.len() < 47 {
            let n = events.len();
            if n % 11 == 0 {
                events.push(": keep-alive\n\n".to_string());
                continue;
            }
            if n % 13 == 0 {
                // event/id fields, and a payload split over two data lines.
                events.push(format!(
                    "id: {n}\nevent: chunk\ndata: {{{head},\ndata: \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"xy\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
                ));
                chars += 2;
                continue;
            }
            let w = words[i % words.len()];
            i += 1;
            let decoded: String = serde_json::from_str(&format!("\"{w}\"")).unwrap();
            chars += decoded.chars().count() as u64;
            events.push(format!(
                "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ));
        }
        events.push(format!(
            "data: {{{head},\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
        ));
        let usage_idx = events.len();
        events.push(format!(
            "data: {{{head},\"choices\":[],\"usage\":{{\"prompt_tokens\":1234,\"completion_tokens\":56,\"total_tokens\":1290,\"prompt_tokens_details\":{{\"cached_tokens\":1024,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0}}}}}}\n\n"
        ));
        events.push("data: [DONE]\n\n".to_string());
        assert_eq!(events.len(), 50);
        (events, usage_idx, u(1234, 56, 1290, 1024, 0), chars)
    }

    #[test]
    fn random_chunkings_of_fifty_event_stream() {
        let (events, usage_idx, usage, chars) = fifty_events();
        let input = events.concat().into_bytes();
        let stripped = without(&events, usage_idx);
        // Cumulative event end offsets, to check that at most the current event is held.
        let mut ends = Vec::new();
        let mut acc = 0;
        for e in &events {
            acc += e.len();
            ends.push(acc);
        }
        let max_event = events.iter().map(String::len).max().unwrap();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            let strip = round % 2 == 0;
            let max_chunk = [1u64, 2, 3, 8, 64, 512, 4096][round % 7];
            let mut r = UsageReader::new(BodyKind::EventStream, strip, 64 * 1024);
            let mut out = Vec::new();
            let mut pos = 0usize;
            while pos < input.len() {
                let n = 1 + rng.below(max_chunk) as usize;
                let end = (pos + n).min(input.len());
                let fwd = r.feed(&input[pos..end]);
                if !strip {
                    assert_eq!(fwd, &input[pos..end]);
                }
                out.extend(fwd);
                pos = end;
                let boundary = ends
                    .iter()
                    .copied()
                    .filter(|&e| e <= pos)
                    .max()
                    .unwrap_or(0);
                if strip {
                    assert_eq!(r.held.len(), pos - boundary, "round {round} pos {pos}");
                    assert!(r.held.len() < max_event);
                } else {
                    assert!(r.held.is_empty());
                }
                assert!(r.data.len() < max_event);
            }
            out.extend(r.finish());
            let expected: &[u8] = if strip { &stripped } else { &input };
            assert_eq!(out, expected, "round {round}");
            assert_eq!(r.usage(), Some(usage), "round {round}");
            assert_eq!(r.streamed_text_chars(), chars, "round {round}");
            assert!(r.saw_done());
            assert_eq!(r.unparsed_events(), 0);
        }
    }
}
