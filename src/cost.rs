//! Cost of a call from its usage and the deployment's prices (litellm-compat.md §7.1), in
//! integer nano-dollars so that running totals never drift.

use crate::plugin_config::Pricing;
use crate::records::NANOS_PER_USD;
use crate::usage::Usage;

/// LiteLLM's "free model" rule: both prices explicitly 0 → every budget check is skipped.
pub fn is_free(pricing: &Pricing) -> bool {
    pricing.input_cost_per_token == Some(0.0) && pricing.output_cost_per_token == Some(0.0)
}

/// Whether the model has a token price at all (reservations need one).
pub fn is_priced(pricing: &Pricing) -> bool {
    pricing.input_cost_per_token.is_some() || pricing.output_cost_per_token.is_some()
}

/// LiteLLM's `_strip_model_name`, the one normalisation of a model name before a price lookup
/// (the sidecar's cost map and the filter's wildcard price table both use it): dated snapshot (`-2024-07-18`), fine-tune suffix (`ft:gpt-4o:org:x:id`
/// → `ft:gpt-4o`), or a Vertex/Gemini/Databricks version (`-002`).
pub fn strip_model_name(model: &str, provider: Option<&str>) -> String {
    if matches!(provider, Some("bedrock" | "bedrock_converse")) {
        return model.to_string();
    }
    if matches!(provider, Some("vertex_ai" | "gemini" | "databricks")) {
        let trimmed = model.trim_end_matches(|c: char| c.is_ascii_digit());
        return match trimmed.strip_suffix('-') {
            Some(base) if trimmed.len() < model.len() => base.to_string(),
            _ => model.to_string(),
        };
    }
    if model.contains("ft:") {
        // `(:[^:]*){3}$`: drop the last three `:`-segments when there are three.
        let parts: Vec<&str> = model.split(':').collect();
        if parts.len() >= 4 {
            return parts[..parts.len() - 3].join(":");
        }
        return model.to_string();
    }
    // `-\d{4}-\d{2}-\d{2}$`
    let b = model.as_bytes();
    if b.len() >= 11 {
        let tail = &b[b.len() - 11..];
        let digits = |r: std::ops::Range<usize>| tail[r].iter().all(u8::is_ascii_digit);
        if tail[0] == b'-'
            && digits(1..5)
            && tail[5] == b'-'
            && digits(6..8)
            && tail[8] == b'-'
            && digits(9..11)
        {
            return model[..model.len() - 11].to_string();
        }
    }
    model.to_string()
}

/// USD → nano-dollars, rounded; NaN → 0, out of range saturates. The one conversion, used by
/// the filter and the sidecar.
pub fn usd_to_nanos(usd: f64) -> i64 {
    // `as` saturates and maps NaN to 0.
    (usd * NANOS_PER_USD as f64).round() as i64
}

/// A call's cost: never negative, and nothing for a price that is not a number.
fn charge_nanos(usd: f64) -> i64 {
    if usd.is_finite() {
        usd_to_nanos(usd).max(0)
    } else {
        0
    }
}

/// `generic_cost_per_token`: cached prompt tokens at the cache-read rate (input rate when
/// absent), the rest of the prompt at the input rate, reasoning tokens at the reasoning rate
/// (output rate when absent), the rest of the completion at the output rate.
pub fn cost_nanos(pricing: &Pricing, usage: &Usage) -> i64 {
    let input = pricing.input_cost_per_token.unwrap_or(0.0);
    let output = pricing.output_cost_per_token.unwrap_or(0.0);
    let cache_read = pricing.cache_read_input_token_cost.unwrap_or(input);
    let reasoning_rate = pricing.output_cost_per_reasoning_token.unwrap_or(output);
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let text_in = usage.prompt_tokens - cached;
    let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
    let text_out = usage.completion_tokens - reasoning;
    let usd = text_in as f64 * input
        + cached as f64 * cache_read
        + text_out as f64 * output
        + reasoning as f64 * reasoning_rate;
    charge_nanos(usd)
}

/// The most a call can cost: the prompt estimate at the input rate plus its output cap at the
/// output rate (LiteLLM's reservation estimate, §2.9).
pub fn max_cost_nanos(pricing: &Pricing, prompt_tokens: u64, output_tokens: u64) -> i64 {
    let input = pricing.input_cost_per_token.unwrap_or(0.0);
    let output = pricing.output_cost_per_token.unwrap_or(0.0);
    charge_nanos(prompt_tokens as f64 * input + output_tokens as f64 * output)
}

/// Nano-dollars → USD. Exact enough to round-trip through [`usd_to_nanos`] below ~$4.5M.
pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD as f64
}

/// A budget's limit: never negative, an infinite budget saturates.
pub fn usd_to_budget_nanos(usd: f64) -> i64 {
    usd_to_nanos(usd).max(0)
}

/// Python's `str(float)`: `0.0`, `0.02`, `1e-05`, `1.5e+16` (LiteLLM's header and message format).
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // One shortest round-trip formatting (`d.ddde-N`, as Python's repr picks its digits); its
    // exponent chooses the form as Python does: positional for 1e-4 <= |v| < 1e16.
    let sci = format!("{:e}", v.abs());
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut out = String::with_capacity(sci.len() + 20);
    if v.is_sign_negative() {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let (lead, rest) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let int_len = usize::try_from(exp).map_or(0, |e| e + 1);
        if int_len == 0 {
            // 0.000ddd
            out.push_str("0.");
            for _ in exp..-1 {
                out.push('0');
            }
            out.push_str(lead);
            out.push_str(rest);
        } else if rest.len() < int_len {
            // An integer: ddd000.0
            out.push_str(lead);
            out.push_str(rest);
            for _ in rest.len() + 1..int_len {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            let (int_rest, frac) = rest.split_at(int_len - 1);
            out.push_str(lead);
            out.push_str(int_rest);
            out.push('.');
            out.push_str(if frac.is_empty() { "0" } else { frac });
        }
    } else {
        // Python style: `1e-05`, `1.5e+16`.
        out.push_str(mantissa);
        out.push_str(if exp < 0 { "e-" } else { "e+" });
        if exp.unsigned_abs() < 10 {
            out.push('0');
        }
        out.push_str(&exp.unsigned_abs().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: f64, o: f64) -> Pricing {
        Pricing {
            input_cost_per_token: Some(i),
            output_cost_per_token: Some(o),
            ..Default::default()
        }
    }

    #[test]
    fn cost_matches_litellm_examples() {
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            ..Default::default()
        };
        assert_eq!(cost_nanos(&p(0.001, 0.002), &u), 20_000_000); // $0.02
        let u = Usage {
            prompt_tokens: 100,
            completion_tokens: 50,
            ..Default::default()
        };
        assert_eq!(cost_nanos(&p(1e-6, 2e-6), &u), 200_000); // $0.0002, no float drift
    }

    #[test]
    fn cached_tokens_at_cache_rate() {
        let mut pricing = p(1e-6, 0.0);
        pricing.cache_read_input_token_cost = Some(1e-7);
        let u = Usage {
            prompt_tokens: 100,
            cached_tokens: 40,
            ..Default::default()
        };
        assert_eq!(cost_nanos(&pricing, &u), 60_000 + 4_000);
        pricing.cache_read_input_token_cost = None;
        assert_eq!(cost_nanos(&pricing, &u), 100_000);
    }

    #[test]
    fn reasoning_tokens_at_reasoning_rate() {
        let mut pricing = p(0.0, 1e-6);
        let u = Usage {
            completion_tokens: 100,
            reasoning_tokens: 30,
            ..Default::default()
        };
        assert_eq!(cost_nanos(&pricing, &u), 100_000);
        pricing.output_cost_per_reasoning_token = Some(2e-6);
        assert_eq!(cost_nanos(&pricing, &u), 70_000 + 60_000);
    }

    #[test]
    fn free_and_priced() {
        assert!(is_free(&p(0.0, 0.0)));
        assert!(!is_free(&Pricing::default()));
        assert!(!is_priced(&Pricing::default()));
        assert!(is_priced(&p(0.0, 1.0)));
    }

    #[test]
    fn python_float_strings() {
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(0.02), "0.02");
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(10.5), "10.5");
        assert_eq!(py_float(0.00001), "1e-05");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(0.00019999999999999998), "0.00019999999999999998");
        assert_eq!(py_float(1.5e16), "1.5e+16");
        assert_eq!(py_float(2.5e-7), "2.5e-07");
        // Python's `repr` for each (the form follows the shortest digits' exponent).
        for (v, python) in [
            (9.999999999999999e-05, "9.999999999999999e-05"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.00012, "0.00012"),
            (1234.5678, "1234.5678"),
            (-0.5, "-0.5"),
            (-1e-300, "-1e-300"),
            (1e100, "1e+100"),
            (999999.9999966, "999999.9999966"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(py_float(v), python, "{v:e}");
        }
    }

    #[test]
    fn budget_conversion_saturates() {
        assert_eq!(usd_to_budget_nanos(f64::INFINITY), i64::MAX);
        assert_eq!(usd_to_budget_nanos(-1.0), 0);
        assert_eq!(usd_to_budget_nanos(0.5), 500_000_000);
        assert_eq!(usd_to_budget_nanos(f64::NAN), 0);
    }

    #[test]
    fn one_conversion_both_ways() {
        // The sidecar's figures may be negative (refunds); costs and budgets never are.
        assert_eq!(usd_to_nanos(-0.25), -250_000_000);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(1e30), i64::MAX);
        assert_eq!(usd_to_nanos(0.1 + 0.2), 300_000_000);
        assert_eq!(
            nanos_to_usd(usd_to_nanos(4_000_000.000_000_001)),
            4_000_000.000_000_001
        );
        assert_eq!(charge_nanos(f64::INFINITY), 0);
        assert_eq!(charge_nanos(-1.0), 0);
    }
}
