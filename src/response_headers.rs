//! The headers Tollgate adds to a successful LLM response (litellm-compat.md §4.4, §7.2).

use crate::cost::{nanos_to_usd, py_float, usd_to_budget_nanos};
use crate::rate_limits::{success_headers as limit_headers, LimitStatus, LimitType};

/// Rate-limit headers (with LiteLLM's per-model ones for the requested `model`), then the key's
/// budget headers. `response_cost_nanos` is known for non-streamed answers (and then counted in
/// `x-litellm-key-spend`); `priced` says whether the model has prices (LiteLLM omits the cost
/// header otherwise).
pub fn success_headers(
    limits: &[LimitStatus],
    model: &str,
    key_spend_nanos: Option<i64>,
    key_max_budget: Option<f64>,
    response_cost_nanos: Option<i64>,
    priced: bool,
) -> Vec<(String, String)> {
    let mut out = limit_headers(limits);
    out.extend(model_limit_headers(limits, model));
    if let (Some(cost), true) = (response_cost_nanos, priced) {
        out.push((
            "x-litellm-response-cost".into(),
            py_float(nanos_to_usd(cost)),
        ));
    }
    if let Some(max) = key_max_budget {
        out.push(("x-litellm-key-max-budget".into(), py_float(max)));
    }
    if let Some(spend) = key_spend_nanos {
        // Money stays in integer nano-dollars until it is printed: no float leftovers.
        let spend = spend.saturating_add(response_cost_nanos.unwrap_or(0));
        out.push(("x-litellm-key-spend".into(), py_float(nanos_to_usd(spend))));
        if let Some(max) = key_max_budget {
            let left = usd_to_budget_nanos(max).saturating_sub(spend).max(0);
            out.push((
                "x-litellm-key-remaining-budget".into(),
                py_float(nanos_to_usd(left)),
            ));
        }
    }
    out
}

/// `x-litellm-key-remaining-requests-<model>` / `x-litellm-key-remaining-tokens-<model>`: what is
/// left of the key's rpm / tpm limit for the requested model (`model_rpm_limit` /
/// `model_tpm_limit`), as LiteLLM documents them. The model name goes into the header name with
/// `/` and `:` turned into `-` (as LiteLLM does for h11), and any other character a header name
/// cannot hold too, lowercased.
pub fn model_limit_headers(limits: &[LimitStatus], model: &str) -> Vec<(String, String)> {
    if !limits.iter().any(|s| s.kind == "model_per_key") {
        return Vec::new();
    }
    let name: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    limits
        .iter()
        .filter(|s| s.kind == "model_per_key")
        .filter_map(|s| {
            let what = match s.limit_type {
                LimitType::Requests => "requests",
                LimitType::Tokens => "tokens",
                LimitType::MaxParallelRequests => return None,
            };
            Some((
                format!("x-litellm-key-remaining-{what}-{name}"),
                s.remaining.to_string(),
            ))
        })
        .collect()
}

/// Headers and body sent instead of an answer over `max_response_size_mb`.
pub type Replacement = (Vec<(String, String)>, Vec<u8>);

/// `general_settings.max_response_size_mb`, checked as LiteLLM checks it: a non-streamed
/// success (`headers` with `:status`) whose announced `content-length` is over `limit_bytes`
/// becomes LiteLLM's 400. Returns the headers to send instead and the error body. A stream, an
/// error answer, or an answer without a length passes (a filter cannot change the status of an
/// answer whose headers it already let through).
pub fn oversized_response(
    headers: &[(String, String)],
    streamed: bool,
    limit_bytes: Option<usize>,
) -> Option<Replacement> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    let ok = get(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .is_some_and(|s| (200..300).contains(&s));
    let length = get("content-length").and_then(|l| l.parse::<usize>().ok())?;
    let limit = limit_bytes?;
    if !ok || streamed || length <= limit {
        return None;
    }
    let body = crate::errors::ApiError::response_too_large(length, limit).body();
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                ":status" | "content-length" | "content-type" | "content-encoding"
            )
        })
        .cloned()
        .collect();
    out.push((":status".into(), "400".into()));
    out.push(("content-type".into(), "application/json".into()));
    out.push(("content-length".into(), body.len().to_string()));
    Some((out, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_long_non_streamed_success_is_replaced() {
        let h = |status: &str, len: &str| -> Vec<(String, String)> {
            vec![
                (":status".into(), status.into()),
                ("content-length".into(), len.into()),
                ("content-encoding".into(), "gzip".into()),
                ("x-request-id".into(), "r".into()),
            ]
        };
        let (headers, body) = oversized_response(&h("200", "2000"), false, Some(1000)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "400");
        assert_eq!(v["error"]["param"], "content-length");
        assert!(headers.contains(&(":status".into(), "400".into())));
        assert!(headers.contains(&("content-length".into(), body.len().to_string())));
        assert!(headers.contains(&("x-request-id".into(), "r".into())));
        assert!(!headers.iter().any(|(k, _)| k == "content-encoding"));
        assert_eq!(headers.iter().filter(|(k, _)| k == ":status").count(), 1);
        for (headers, streamed, limit) in [
            (h("200", "1000"), false, Some(1000)),
            (h("200", "2000"), true, Some(1000)),
            (h("500", "2000"), false, Some(1000)),
            (h("200", "2000"), false, None),
            (h("200", "many"), false, Some(1000)),
        ] {
            assert!(oversized_response(&headers, streamed, limit).is_none());
        }
    }

    #[test]
    fn budget_and_cost_headers() {
        let h = success_headers(
            &[],
            "m",
            Some(10_000_000),
            Some(0.1),
            Some(20_000_000),
            true,
        );
        assert_eq!(
            h,
            vec![
                ("x-litellm-response-cost".to_string(), "0.02".to_string()),
                ("x-litellm-key-max-budget".to_string(), "0.1".to_string()),
                ("x-litellm-key-spend".to_string(), "0.03".to_string()),
                (
                    "x-litellm-key-remaining-budget".to_string(),
                    "0.07".to_string()
                ),
            ]
        );
        // 0.1 - 0.04 in floats is 0.060000000000000005; in nano-dollars it is 0.06.
        let h = success_headers(
            &[],
            "m",
            Some(20_000_000),
            Some(0.1),
            Some(20_000_000),
            true,
        );
        assert_eq!(h[3].1, "0.06");
        let h = success_headers(&[], "m", None, None, Some(5), false);
        assert!(h.is_empty(), "unpriced: no cost header");
    }

    #[test]
    fn limits_come_first() {
        let s = LimitStatus {
            kind: "api_key",
            limit_type: LimitType::Requests,
            limit: 2,
            remaining: 1,
        };
        let h = success_headers(&[s], "m", None, None, None, true);
        assert_eq!(h[0].0, "x-ratelimit-api_key-remaining-requests");
    }

    /// Issue 13 §2: LiteLLM's per-model key limit headers, beside Tollgate's own.
    #[test]
    fn per_model_key_limit_headers() {
        let st = |kind, limit_type, remaining| LimitStatus {
            kind,
            limit_type,
            limit: 10,
            remaining,
        };
        let limits = [
            st("api_key", LimitType::Requests, 9),
            st("model_per_key", LimitType::Requests, 4),
            st("model_per_key", LimitType::Tokens, 0),
        ];
        let h = success_headers(&limits, "openai/GPT-4o:mini", None, None, None, true);
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("x-litellm-key-remaining-requests-openai-gpt-4o-mini"),
            Some("4")
        );
        assert_eq!(
            get("x-litellm-key-remaining-tokens-openai-gpt-4o-mini"),
            Some("0")
        );
        assert_eq!(
            get("x-ratelimit-model_per_key-remaining-requests"),
            Some("4")
        );
        assert!(model_limit_headers(&limits[..1], "m").is_empty());
    }
}
