//! LiteLLM's OpenAI-style error envelope, and the catalogue of refusals Tollgate sends.
//!
//! Every refusal is `{"error":{"message","type","param","code"}}` with `code` the status as a
//! string (litellm-compat.md §0.1). Messages are LiteLLM's, word for word, so scripts that match
//! on them keep working.

use serde::Serialize;

/// A refusal: status, LiteLLM error type and message, optional `param`, extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error_type: String,
    pub message: String,
    pub param: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: EnvelopeBody<'a>,
}

#[derive(Serialize)]
struct EnvelopeBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    error_type: &'a str,
    param: Option<&'a str>,
    code: String,
}

impl ApiError {
    pub fn new(status: u16, error_type: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type: error_type.to_string(),
            message: message.into(),
            param: None,
            headers: Vec::new(),
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The JSON body LiteLLM sends for this error.
    pub fn body(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: EnvelopeBody {
                message: &self.message,
                error_type: &self.error_type,
                param: self.param.as_deref(),
                code: self.status.to_string(),
            },
        };
        // Serializing plain strings cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_vec(&envelope).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"internal_server_error","param":null,"code":"500"}}"#.to_vec()
        })
    }

    // ---- authentication (litellm-compat.md §5.1) ----

    pub fn no_api_key() -> Self {
        Self::new(
            401,
            "auth_error",
            "Authentication Error, No api key passed in.",
        )
    }

    pub fn malformed_authorization() -> Self {
        Self::new(
            401,
            "auth_error",
            "Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix.",
        )
    }

    /// A credential that is neither the master key nor an `sk-` virtual key.
    /// LiteLLM 1.110.2 raises this one as a plain `HTTPException`: no "Authentication Error, "
    /// prefix. A token shaped like a JWT (three dot-separated parts) gets LiteLLM's hint that
    /// JWT auth is off (Tollgate has none).
    pub fn not_a_virtual_key(raw: &str) -> Self {
        let hint = if raw.split('.').count() == 3 {
            " This key has the structure of a JWT, but JWT auth is not enabled on this proxy, so it was treated as a virtual key. Set `enable_jwt_auth: true` under `general_settings` in your proxy config to authenticate with JWTs."
        } else {
            ""
        };
        Self::new(
            401,
            "auth_error",
            format!(
                "LiteLLM Virtual Key expected. Received={}, expected to start with 'sk-'.{hint}",
                crate::key_format::mask_for_error(raw)
            ),
        )
    }

    pub fn invalid_api_key() -> Self {
        Self::new(
            401,
            "token_not_found_in_db",
            "Authentication Error, Invalid API key provided.",
        )
        .with_param("key")
    }

    pub fn key_blocked() -> Self {
        Self::new(
            401,
            "auth_error",
            "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.",
        )
    }

    /// `general_settings.enforce_user_param`: an LLM request without `user`.
    pub fn user_param_missing() -> Self {
        Self::new(
            401,
            "auth_error",
            "Authentication Error, 'user' param not passed in. 'enforce_user_param'=True",
        )
    }

    pub fn expired_key(key_last4_param: &str, expiry: &str, now: &str) -> Self {
        Self::new(
            401,
            "expired_key",
            format!(
                "Authentication Error - Expired Key. Key Expiry time {expiry} and current time {now}"
            ),
        )
        .with_param(key_last4_param)
    }

    // ---- model access (§6) ----

    /// `scope` is `key`, `team` or `user`: the list that refused.
    pub fn model_access_denied(scope: &str, model: &str) -> Self {
        Self::new(
            403,
            &format!("{scope}_model_access_denied"),
            format!(
                "The requested model '{model}' is not available for this API key, or the model name is invalid. Check the models available to you and try again."
            ),
        )
        .with_param("model")
    }

    pub fn unknown_model(route: &str, model: &str) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            format!(
                "{route}: Invalid model name passed in model={model}. Call `/v1/models` to view available models for your key."
            ),
        )
    }

    // ---- request body ----

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// LiteLLM's `RequestSizeLimitMiddleware` answer (413), in the error envelope.
    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            format!(
                "Request size is too large. Max size is {} MB",
                bytes_to_mb(limit_bytes)
            ),
        )
    }

    /// LiteLLM's `check_response_size_is_safe` answer for a non-streamed response.
    pub fn response_too_large(size_bytes: usize, limit_bytes: usize) -> Self {
        Self::new(
            400,
            "bad_request_error",
            format!(
                "Response size is too large. Response size is {} MB. Max size is {} MB",
                python_float(size_bytes as f64 / (1024.0 * 1024.0)),
                bytes_to_mb(limit_bytes)
            ),
        )
        .with_param("content-length")
    }

    // ---- Tollgate's own conditions ----

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "internal_server_error", message)
    }

    /// The filter has not yet received the provider keys from the sidecar (fails closed).
    pub fn provider_keys_pending() -> Self {
        Self::service_unavailable(
            "Tollgate has not received the provider keys from its sidecar yet; try again.",
        )
    }

    pub fn not_found_route() -> Self {
        Self::new(404, "not_found_error", "Not Found")
    }
}

/// A configured limit in MiB as the config said it: the shortest decimal that gives `bytes`
/// back the way LiteLLM converts it (`int(mb * 1024 * 1024)`), so 10485 bytes show as `0.01`.
fn bytes_to_mb(bytes: usize) -> String {
    let mb = bytes as f64 / (1024.0 * 1024.0);
    for decimals in 0..=12 {
        let scale = 10f64.powi(decimals);
        let rounded = (mb * scale).round() / scale;
        if (rounded * 1024.0 * 1024.0) as usize == bytes {
            return format!("{rounded}");
        }
    }
    format!("{mb}")
}

/// A float as Python prints it (`3.0`, `2.5`).
fn python_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_errors_use_litellm_words() {
        let e = ApiError::body_too_large(2 * 1024 * 1024);
        assert_eq!(e.status, 413);
        assert_eq!(e.message, "Request size is too large. Max size is 2 MB");
        assert_eq!(
            ApiError::body_too_large(5 * 1024 * 1024 / 2).message,
            "Request size is too large. Max size is 2.5 MB"
        );
        // 0.01 MB is 10485 bytes (LiteLLM: `int(0.01 * 1024 * 1024)`), shown as configured.
        assert_eq!(
            ApiError::body_too_large(10485).message,
            "Request size is too large. Max size is 0.01 MB"
        );
        let e = ApiError::response_too_large(3 * 1024 * 1024, 1024 * 1024);
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some("content-length"))
        );
        assert_eq!(
            e.message,
            "Response size is too large. Response size is 3.0 MB. Max size is 1 MB"
        );
    }

    #[test]
    fn envelope_has_string_code_and_null_param() {
        let body: serde_json::Value =
            serde_json::from_slice(&ApiError::no_api_key().body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "Authentication Error, No api key passed in.",
                "type": "auth_error", "param": null, "code": "401"}})
        );
    }

    #[test]
    fn model_denial_names_scope_and_param() {
        let e = ApiError::model_access_denied("team", "gpt-4o");
        assert_eq!(e.status, 403);
        assert_eq!(e.error_type, "team_model_access_denied");
        assert_eq!(e.param.as_deref(), Some("model"));
        assert!(e
            .message
            .starts_with("The requested model 'gpt-4o' is not available"));
    }

    #[test]
    fn non_virtual_key_message_matches_litellm() {
        let e = ApiError::not_a_virtual_key("abcdefghijklmnopwxyz");
        assert_eq!(
            e.message,
            "LiteLLM Virtual Key expected. Received=abcd****wxyz, expected to start with 'sk-'."
        );
        assert_eq!((e.status, e.error_type.as_str()), (401, "auth_error"));
        let jwt = ApiError::not_a_virtual_key("eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl");
        assert!(
            jwt.message.ends_with(
                "expected to start with 'sk-'. This key has the structure of a JWT, but JWT auth is not enabled on this proxy, so it was treated as a virtual key. Set `enable_jwt_auth: true` under `general_settings` in your proxy config to authenticate with JWTs."
            ),
            "{}",
            jwt.message
        );
    }

    #[test]
    fn unknown_model_message_matches_litellm() {
        let e = ApiError::unknown_model("/chat/completions", "nope");
        assert_eq!(e.status, 400);
        assert_eq!(e.message, "/chat/completions: Invalid model name passed in model=nope. Call `/v1/models` to view available models for your key.");
    }
}
