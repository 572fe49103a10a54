//! The header credential parser (`credential::extract_credential`) and the key format helpers
//! (`key_format`: hashing, abbreviation, masking, custom-key validation, constant-time compare).
//!
//! Input: `[mask][field]*`: bit i of `mask` says whether header i of LiteLLM's list is present,
//! bit 7 whether `litellm_key_header_name` is set; values are length-prefixed fields, read as
//! UTF-8 (lossy: the filter only sees header values as strings).
//!
//! Invariants: a credential found is non-empty, has no surrounding whitespace and occurs in the
//! header it came from; refusals are 401 with LiteLLM's envelope; `hash_key` is 64 lowercase hex
//! and stable; the abbreviated and masked forms never show more than the last four characters
//! (masking: and the first four); `constant_time_eq` is `==`.
#![no_main]

mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use tollgate::credential::extract_credential;
use tollgate::key_format::{
    abbreviate, constant_time_eq, hash_key, is_token_hash, mask_for_error, validate_custom_key,
    KEY_PREFIX, MIN_CUSTOM_KEY_LENGTH,
};

const NAMES: [&str; 7] = [
    "x-litellm-api-key",
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
    "x-custom-key",
];

fn check_key_format(raw: &str) {
    let h = hash_key(raw);
    assert!(is_token_hash(&h));
    assert_eq!(h, hash_key(raw));
    let chars: Vec<char> = raw.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    assert_eq!(abbreviate(raw), format!("sk-...{tail}"));
    let masked = mask_for_error(raw);
    if chars.len() <= 8 {
        assert_eq!(masked, "****");
    } else {
        let head: String = chars[..4].iter().collect();
        assert_eq!(masked, format!("{head}****{tail}"));
    }
    let ok = raw.starts_with(KEY_PREFIX) && chars.len() >= MIN_CUSTOM_KEY_LENGTH;
    match validate_custom_key(raw) {
        Ok(()) => assert!(ok),
        Err(msg) => {
            assert!(!ok);
            // The refusal never echoes the whole key (only the masked form; a "key" that fits
            // inside its own masked form, such as `********abcd`, cannot be told apart).
            if chars.len() > 8 && !masked.contains(raw) {
                assert!(!msg.contains(raw), "{msg}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mask = input.byte();
    let mut headers: Vec<(&str, String)> = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        if mask & (1 << i) != 0 {
            headers.push((name, String::from_utf8_lossy(input.field()).into_owned()));
        }
    }
    let custom = (mask & 0x80 != 0).then_some("X-Custom-Key");
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    match extract_credential(get, custom) {
        Ok(key) => {
            assert!(!key.is_empty());
            assert_eq!(key, key.trim());
            assert!(
                headers.iter().any(|(_, v)| v.contains(&key)),
                "credential {key:?} is in no header"
            );
            if custom.is_some() {
                assert!(get("x-custom-key").is_some_and(|v| v.contains(&key)));
            }
            check_key_format(&key);
        }
        Err(e) => {
            assert_eq!(e.status, 401);
            assert!(!e.body().is_empty());
        }
    }
    for (_, v) in &headers {
        check_key_format(v);
    }
    let a = input.field();
    let b = input.rest;
    assert_eq!(constant_time_eq(a, b), a == b);
    assert!(constant_time_eq(a, a));
});
