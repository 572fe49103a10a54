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

/// `existing` with `added` applied (same names replaced) and `removed` names dropped, for
/// writing a whole header map back in one host call.
pub fn merge(
    existing: &[(String, String)],
    added: &[(String, String)],
    removed: &[&str],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = existing
        .iter()
        .filter(|(k, _)| !removed.contains(&k.as_str()) && !added.iter().any(|(a, _)| a == k))
        .cloned()
        .collect();
    out.extend(added.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn merge_replaces_and_removes() {
        let existing = vec![
            (":status".to_string(), "200".to_string()),
            ("content-length".to_string(), "5".to_string()),
            ("x-a".to_string(), "old".to_string()),
        ];
        let added = vec![("x-a".to_string(), "new".to_string())];
        let m = merge(&existing, &added, &["content-length"]);
        assert_eq!(
            m,
            vec![
                (":status".to_string(), "200".to_string()),
                ("x-a".to_string(), "new".to_string())
            ]
        );
    }
}
