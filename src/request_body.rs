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
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body:?}");
            assert!(e.message.contains(needle), "{} lacks {needle}", e.message);
        }
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

    #[test]
    fn rewrites_model_only() {
        let r =
            parse(br#"{"model":"public","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let out: Value = serde_json::from_slice(&r.upstream_body("backend")).unwrap();
        assert_eq!(out["model"], "backend");
        assert_eq!(out["messages"][0]["content"], "hi");
    }
}
