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

impl LlmRequest {
    /// The body to send upstream, with the provider's model name in place of the public one.
    pub fn upstream_body(&self, backend_model: &str) -> Vec<u8> {
        let mut object = self.object.clone();
        object.insert(
            "model".to_string(),
            Value::String(backend_model.to_string()),
        );
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
    fn rewrites_model_only() {
        let r =
            parse(br#"{"model":"public","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let out: Value = serde_json::from_slice(&r.upstream_body("backend")).unwrap();
        assert_eq!(out["model"], "backend");
        assert_eq!(out["messages"][0]["content"], "hi");
    }
}
