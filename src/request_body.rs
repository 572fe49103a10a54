//! Reading and rewriting an LLM request body (OpenAI JSON).

use crate::errors::ApiError;
use serde_json::{Map, Value};

/// The parsed body, with the fields admission needs pulled out.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    pub object: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// `max_tokens`, else `max_completion_tokens`.
    pub max_tokens: Option<u64>,
}

/// Parses the body; refuses what is not a JSON object with a string `model`.
pub fn parse(body: &[u8]) -> Result<LlmRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "Invalid request body: expected a JSON object, got an empty body.",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request(
            "Invalid request body: expected a JSON object.",
        ));
    };
    let model = match object.get("model") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => {
            return Err(
                ApiError::bad_request("Invalid request body: 'model' is required.")
                    .with_param("model"),
            )
        }
        Some(_) => {
            return Err(
                ApiError::bad_request("Invalid request body: 'model' must be a string.")
                    .with_param("model"),
            )
        }
    };
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(
                ApiError::bad_request("Invalid request body: 'stream' must be a boolean.")
                    .with_param("stream"),
            )
        }
    };
    let max_tokens =
        token_cap(&object, "max_tokens")?.or(token_cap(&object, "max_completion_tokens")?);
    token_cap(&object, "n")?;
    check_messages(&object)?;
    Ok(LlmRequest {
        object,
        model,
        stream,
        max_tokens,
    })
}

fn token_cap(object: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None => Err(bad_field(field)),
        },
        Some(_) => Err(bad_field(field)),
    }
}

/// `messages`, when present, is an array of objects: Tollgate counts and charges by them.
fn check_messages(object: &Map<String, Value>) -> Result<(), ApiError> {
    let messages = match object.get("messages") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(messages)) => messages,
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid request body: 'messages' must be an array of objects.",
            )
            .with_param("messages"))
        }
    };
    match messages.iter().position(|m| !m.is_object()) {
        // LiteLLM's words for a message it cannot read (utils.validate_chat_completion_user_messages).
        Some(idx) => Err(ApiError::bad_request(format!(
            "Invalid message at index {idx}. Please ensure all messages are valid OpenAI chat completion messages."
        ))
        .with_param("messages")),
        None => Ok(()),
    }
}

fn bad_field(field: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid request body: '{field}' must be a non-negative integer."
    ))
    .with_param(field)
}

/// Characters of prompt text, for token estimates: message contents (strings or `text` parts),
/// `prompt` and embedding `input` (strings or lists of strings).
fn text_chars(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.chars().count() as u64,
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(o) => o.get("text").map(text_chars).unwrap_or(0),
        _ => 0,
    }
}

impl LlmRequest {
    pub fn prompt_chars(&self) -> u64 {
        let messages = self
            .object
            .get("messages")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m.get("content"))
                    .map(text_chars)
                    .sum()
            })
            .unwrap_or(0);
        messages
            + self.object.get("prompt").map(text_chars).unwrap_or(0)
            + self.object.get("input").map(text_chars).unwrap_or(0)
    }

    /// Input tokens for the budget reservation, counted like the provider counts them: chat
    /// framing, names and tools included (see [`crate::token_estimate`]). The tpm estimate stays
    /// LiteLLM's characters / 4 ([`prompt_chars`](Self::prompt_chars)).
    pub fn input_token_estimate(&self) -> u64 {
        use crate::token_estimate::{chat_tokens, input_tokens};
        let chat = match self.object.get("messages") {
            Some(Value::Array(messages)) => chat_tokens(
                messages,
                self.object.get("tools"),
                self.object.get("tool_choice"),
            ),
            _ => 0,
        };
        chat.saturating_add(self.object.get("prompt").map_or(0, input_tokens))
            .saturating_add(self.object.get("input").map_or(0, input_tokens))
            .max(1)
    }

    /// `n` (completions per request), at least 1.
    pub fn n(&self) -> u64 {
        self.object
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1)
    }

    /// The body to send upstream, with the provider's model name in place of the public one.
    pub fn upstream_body(&self, backend_model: &str) -> Vec<u8> {
        self.upstream_body_with(backend_model, None, false)
    }

    /// Whether the client itself asked for the streamed usage chunk.
    pub fn client_wants_stream_usage(&self) -> bool {
        self.object
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The upstream body: backend model name, an optional `max_tokens`, and
    /// `stream_options.include_usage: true` when `add_stream_usage` (so spend and tokens can be
    /// settled from a stream).
    pub fn upstream_body_with(
        &self,
        backend_model: &str,
        max_tokens: Option<u64>,
        add_stream_usage: bool,
    ) -> Vec<u8> {
        let mut object = self.object.clone();
        object.insert(
            "model".to_string(),
            Value::String(backend_model.to_string()),
        );
        if let Some(m) = max_tokens {
            object.insert("max_tokens".to_string(), Value::from(m));
        }
        if add_stream_usage {
            let options = object
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(o) = options {
                o.insert("include_usage".to_string(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&object).unwrap_or_default()
    }

    /// What [`upstream_body_with`](Self::upstream_body_with) sends, made by editing `original`
    /// (the body this request was parsed from) in place: the `model` value is replaced, and
    /// `max_tokens` / `stream_options` are replaced or appended, with every other byte kept as
    /// the client sent it. That costs a scan instead of a copy of the whole document and its
    /// serialization. Bodies this cannot edit safely (duplicate or escaped top-level names, an
    /// existing `stream_options` to merge into) take the `Value` path.
    pub fn upstream_body_from(
        &self,
        original: &[u8],
        backend_model: &str,
        max_tokens: Option<u64>,
        add_stream_usage: bool,
    ) -> Vec<u8> {
        edit_in_place(original, backend_model, max_tokens, add_stream_usage)
            .unwrap_or_else(|| self.upstream_body_with(backend_model, max_tokens, add_stream_usage))
    }
}

/// One top-level member of a JSON object: its raw name and the byte range of its value.
struct Member<'a> {
    name: &'a [u8],
    value: std::ops::Range<usize>,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The index just past the string that starts (with its quote) at `i`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The index just past the value that starts at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The top-level members of `body` (which must already have parsed as a JSON object) and the
/// index of its closing brace.
fn members(b: &[u8]) -> Option<(Vec<Member<'_>>, usize)> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some((out, i));
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let name_end = skip_string(b, i)?;
        let name = b.get(i + 1..name_end - 1)?;
        i = skip_ws(b, name_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start)?;
        out.push(Member {
            name,
            value: start..end,
        });
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some((out, i)),
            _ => return None,
        }
    }
}

fn edit_in_place(
    original: &[u8],
    backend_model: &str,
    max_tokens: Option<u64>,
    add_stream_usage: bool,
) -> Option<Vec<u8>> {
    let (members, close) = members(original)?;
    // Names with escapes could spell a field differently; duplicates are resolved (last wins)
    // only by the `Value` path, which is what admission read.
    for (n, m) in members.iter().enumerate() {
        if m.name.contains(&b'\\') || members[..n].iter().any(|p| p.name == m.name) {
            return None;
        }
    }
    let find = |name: &[u8]| members.iter().find(|m| m.name == name);
    if add_stream_usage && find(b"stream_options").is_some() {
        return None;
    }
    let model = serde_json::to_string(backend_model).ok()?;
    let cap = max_tokens.map(|m| m.to_string());
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    edits.push((find(b"model")?.value.clone(), model));
    let mut appended = String::new();
    if let Some(cap) = cap {
        match find(b"max_tokens") {
            Some(m) => edits.push((m.value.clone(), cap)),
            None => appended.push_str(&format!(",\"max_tokens\":{cap}")),
        }
    }
    if add_stream_usage {
        appended.push_str(",\"stream_options\":{\"include_usage\":true}");
    }
    if !appended.is_empty() {
        let at = members.last().map_or(close, |m| m.value.end);
        if members.is_empty() {
            appended.remove(0);
        }
        edits.push((at..at, appended));
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(original.len() + 64);
    let mut pos = 0;
    for (range, text) in edits {
        out.extend_from_slice(original.get(pos..range.start)?);
        out.extend_from_slice(text.as_bytes());
        pos = range.end;
    }
    out.extend_from_slice(original.get(pos..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let r = parse(br#"{"model":"m","stream":true,"max_tokens":7,"messages":[]}"#).unwrap();
        assert_eq!(r.model, "m");
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(7));
        let r = parse(br#"{"model":"m","max_completion_tokens":9}"#).unwrap();
        assert_eq!(r.max_tokens, Some(9));
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, needle) in [
            (&b"not json"[..], "Invalid JSON"),
            (b"", "empty body"),
            (b"[1,2]", "JSON object"),
            (br#"{"messages":[]}"#, "'model' is required"),
            (br#"{"model":5}"#, "'model' must be a string"),
            (
                br#"{"model":"m","stream":"yes"}"#,
                "'stream' must be a boolean",
            ),
            (br#"{"model":"m","max_tokens":-1}"#, "'max_tokens'"),
            (br#"{"model":"m","max_tokens":"5"}"#, "'max_tokens'"),
            (br#"{"model":"m","max_tokens":"many"}"#, "'max_tokens'"),
            (
                br#"{"model":"m","max_completion_tokens":1.5}"#,
                "'max_completion_tokens'",
            ),
            (
                br#"{"model":"m","n":-2}"#,
                "'n' must be a non-negative integer",
            ),
            (br#"{"model":"m","n":"2"}"#, "'n'"),
            (
                br#"{"model":"m","messages":"hi"}"#,
                "'messages' must be an array of objects",
            ),
            (br#"{"model":"m","messages":{"role":"user"}}"#, "'messages'"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"a"},"hi"]}"#,
                "Invalid message at index 1",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body:?}");
            assert!(e.message.contains(needle), "{} lacks {needle}", e.message);
        }
    }

    #[test]
    fn refusals_name_the_field() {
        for (body, field) in [
            (&br#"{"model":"m","messages":"hi"}"#[..], "messages"),
            (br#"{"model":"m","messages":[1]}"#, "messages"),
            (br#"{"model":"m","n":"x"}"#, "n"),
            (br#"{"model":"m","stream":1}"#, "stream"),
            (br#"{"model":"m","max_tokens":"many"}"#, "max_tokens"),
        ] {
            assert_eq!(parse(body).unwrap_err().param.as_deref(), Some(field));
        }
    }

    #[test]
    fn input_tokens_count_the_chat_format() {
        let r =
            parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#)
                .unwrap();
        assert_eq!(r.input_token_estimate(), 8);
        // The tpm estimate stays characters / 4.
        assert_eq!(r.prompt_chars(), 2);
        let r = parse(br#"{"model":"m","input":"hi"}"#).unwrap();
        assert_eq!(r.input_token_estimate(), 1);
        let r = parse(br#"{"model":"m"}"#).unwrap();
        assert_eq!(r.input_token_estimate(), 1);
    }

    #[test]
    fn adds_stream_usage_and_cap() {
        let r = parse(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#).unwrap();
        assert!(!r.client_wants_stream_usage());
        let out: Value = serde_json::from_slice(&r.upstream_body_with("b", Some(7), true)).unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        assert_eq!(out["max_tokens"], 7);
    }

    #[test]
    fn counts_prompt_text() {
        let r = parse(br#"{"model":"m","messages":[{"role":"user","content":"abcd"},{"role":"user","content":[{"type":"text","text":"ef"},{"type":"image_url"}]}]}"#).unwrap();
        assert_eq!(r.prompt_chars(), 6);
        let r = parse(br#"{"model":"m","input":["ab","cd"],"n":3}"#).unwrap();
        assert_eq!((r.prompt_chars(), r.n()), (4, 3));
    }

    /// Found by fuzzing (fuzz/fuzz_targets/request_body.rs): without serde_json's exact float
    /// parsing, a long number came out of the rewrite one ulp off what the client sent.
    #[test]
    fn rewrite_keeps_numbers_exactly() {
        let body = br#"{"model":"m","x":44444444444444444444444444444444444444444444444444444444444444445,"t":0.30000000000000004}"#;
        let r = parse(body).unwrap();
        let again = parse(&r.upstream_body("b")).unwrap();
        assert_eq!(again.object["x"], r.object["x"]);
        // Rust's own parser rounds correctly: the same double as the client's decimal.
        let exact: f64 = "44444444444444444444444444444444444444444444444444444444444444445"
            .parse()
            .unwrap();
        assert_eq!(r.object["x"].as_f64(), Some(exact));
        assert_eq!(again.object["x"].as_f64(), Some(exact));
        assert_eq!(again.object["t"].as_f64(), Some(0.30000000000000004));
    }

    /// The in-place edit sends the same document as the `Value` path, and keeps the client's
    /// bytes elsewhere.
    #[test]
    fn in_place_edit_matches_the_value_path() {
        let bodies: &[&str] = &[
            r#"{"model":"public","messages":[{"role":"user","content":"hi \"there\" {[,]}"}]}"#,
            r#" { "messages" : [ ] , "model" : "public" , "n" : 2 } "#,
            r#"{"model":"public","max_tokens":5,"stream":true,"user":"u\u00e9"}"#,
            r#"{"model":"public","max_tokens":null,"temperature":0.5e1,"stop":["}"]}"#,
            r#"{"model":"public","stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"a","model":"public"}"#,
            r#"{"mod\u0065l":"public"}"#,
            r#"{"model":"public","tools":[{"a":{"b":[1,{"c":"]}"}]}}],"x":true}"#,
        ];
        for body in bodies {
            let r = parse(body.as_bytes()).unwrap();
            for (cap, usage) in [
                (None, false),
                (Some(7), false),
                (None, true),
                (Some(9), true),
            ] {
                let via_value: Value =
                    serde_json::from_slice(&r.upstream_body_with("be\"nd", cap, usage)).unwrap();
                let bytes = r.upstream_body_from(body.as_bytes(), "be\"nd", cap, usage);
                let in_place: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(in_place, via_value, "{body} {cap:?} {usage}");
            }
        }
        let body = br#"{ "model" : "public", "messages": [ ] }"#;
        let r = parse(body).unwrap();
        assert_eq!(
            r.upstream_body_from(body, "backend", None, false),
            br#"{ "model" : "backend", "messages": [ ] }"#.to_vec()
        );
        assert_eq!(
            r.upstream_body_from(body, "public", Some(3), true),
            br#"{ "model" : "public", "messages": [ ],"max_tokens":3,"stream_options":{"include_usage":true} }"#.to_vec()
        );
    }

    #[test]
    fn rewrites_model_only() {
        let r =
            parse(br#"{"model":"public","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let out: Value = serde_json::from_slice(&r.upstream_body("backend")).unwrap();
        assert_eq!(out["model"], "backend");
        assert_eq!(out["messages"][0]["content"], "hi");
    }
}
