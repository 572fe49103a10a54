//! Where the caller's key is read from, in LiteLLM's order (litellm-compat.md §5.1).

use crate::errors::ApiError;

use crate::contract::CREDENTIAL_HEADERS as KEY_HEADERS;

fn strip_bearer(value: &str) -> &str {
    let v = value.trim();
    for prefix in ["Bearer ", "bearer ", "BEARER "] {
        if let Some(rest) = v.strip_prefix(prefix) {
            return rest.trim();
        }
    }
    v
}

/// The raw credential from request headers. `get` returns a header's value by lowercase name;
/// `custom_header` is `general_settings.litellm_key_header_name`, which overrides the list.
pub fn extract_credential(
    get: impl Fn(&str) -> Option<String>,
    custom_header: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(name) = custom_header {
        return match get(&name.to_ascii_lowercase()) {
            Some(v) if !strip_bearer(&v).is_empty() => Ok(strip_bearer(&v).to_string()),
            _ => Err(ApiError::no_api_key()),
        };
    }
    for name in KEY_HEADERS {
        let Some(value) = get(name) else { continue };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if name == "authorization" {
            let token = ["Bearer ", "bearer ", "Basic ", "basic "]
                .iter()
                .find_map(|p| value.strip_prefix(p));
            return match token.map(str::trim) {
                Some(t) if !t.is_empty() => Ok(t.to_string()),
                _ => Err(ApiError::malformed_authorization()),
            };
        }
        return Ok(strip_bearer(value).to_string());
    }
    Err(ApiError::no_api_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn reads_bearer() {
        let got = extract_credential(headers(&[("authorization", "Bearer sk-abc")]), None);
        assert_eq!(got.unwrap(), "sk-abc");
    }

    #[test]
    fn litellm_header_wins_over_authorization() {
        let got = extract_credential(
            headers(&[
                ("authorization", "Bearer sk-a"),
                ("x-litellm-api-key", "sk-b"),
            ]),
            None,
        );
        assert_eq!(got.unwrap(), "sk-b");
    }

    #[test]
    fn authorization_without_prefix_is_malformed() {
        let err = extract_credential(headers(&[("authorization", "sk-abc")]), None).unwrap_err();
        assert_eq!(err, ApiError::malformed_authorization());
        let err = extract_credential(headers(&[("authorization", "Bearer   ")]), None).unwrap_err();
        assert_eq!(err, ApiError::malformed_authorization());
    }

    #[test]
    fn other_headers_in_order() {
        assert_eq!(
            extract_credential(headers(&[("x-api-key", "sk-x"), ("api-key", "sk-y")]), None)
                .unwrap(),
            "sk-y"
        );
        assert_eq!(
            extract_credential(headers(&[("ocp-apim-subscription-key", "sk-z")]), None).unwrap(),
            "sk-z"
        );
    }

    #[test]
    fn none_is_no_api_key() {
        assert_eq!(
            extract_credential(headers(&[]), None).unwrap_err(),
            ApiError::no_api_key()
        );
    }

    #[test]
    fn custom_header_overrides() {
        let h = headers(&[("authorization", "Bearer sk-a"), ("x-my-key", "sk-b")]);
        assert_eq!(extract_credential(&h, Some("X-My-Key")).unwrap(), "sk-b");
        let h = headers(&[("authorization", "Bearer sk-a")]);
        assert!(extract_credential(&h, Some("x-my-key")).is_err());
    }
}
