//! Virtual-key format, hashing and the abbreviated forms used in responses and logs.
//!
//! LiteLLM stores only `sha256(raw key)` as lowercase hex, over the whole string including `sk-`
//! (litellm-compat.md §5.2). Keys are shown as `sk-...abcd`, never in full.

use sha2::{Digest, Sha256};

/// Prefix every virtual key carries.
pub const KEY_PREFIX: &str = "sk-";
/// Minimum length of a caller-chosen key (`MINIMUM_CUSTOM_KEY_LENGTH`).
pub const MIN_CUSTOM_KEY_LENGTH: usize = 16;

/// `sha256(raw)` as lowercase hex: the token LiteLLM stores and looks keys up by.
pub fn hash_key(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

/// Whether `s` looks like a stored token (64 lowercase hex characters) rather than a raw key.
pub fn is_token_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn last_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    match s.char_indices().nth(count - n) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}

/// `sk-...abcd`: LiteLLM's `key_name` (`abbreviate_api_key`).
pub fn abbreviate(raw: &str) -> String {
    format!("sk-...{}", last_chars(raw, 4))
}

/// `haystack` with every occurrence of `secret` replaced by its `sk-...abcd` abbreviation;
/// `None` when it does not occur (or `secret` is empty).
pub fn redact_secret(haystack: &[u8], secret: &str) -> Option<Vec<u8>> {
    let needle = secret.as_bytes();
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let mask = abbreviate(secret);
    let mut out = Vec::with_capacity(haystack.len());
    let mut found = false;
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(mask.as_bytes());
            i += needle.len();
            found = true;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    found.then_some(out)
}

/// `abcd****wxyz` as in LiteLLM's "Virtual Key expected" error; short values are fully masked.
pub fn mask_for_error(raw: &str) -> String {
    let count = raw.chars().count();
    if count <= 8 {
        return "****".to_string();
    }
    let head: String = raw.chars().take(4).collect();
    format!("{head}****{}", last_chars(raw, 4))
}

/// Validation of a caller-chosen key on `/key/generate` (`key` field), with LiteLLM's messages.
pub fn validate_custom_key(raw: &str) -> Result<(), String> {
    if !raw.starts_with(KEY_PREFIX) {
        return Err(
            "Invalid key format. LiteLLM Virtual Key must start with 'sk-'. Received: ".to_string()
                + &mask_for_error(raw),
        );
    }
    if raw.chars().count() < MIN_CUSTOM_KEY_LENGTH {
        return Err(format!(
            "Custom key must be at least {MIN_CUSTOM_KEY_LENGTH} characters long (including 'sk-' prefix)."
        ));
    }
    Ok(())
}

/// Constant-time equality of two byte strings of equal length (used on hashes, so lengths are
/// public). Unequal lengths return false at once.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_litellm_hash_token() {
        // python: hashlib.sha256(b"sk-1234").hexdigest()
        assert_eq!(
            hash_key("sk-1234"),
            "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"
        );
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_token_hash(&hash_key("sk-anything")));
        assert!(!is_token_hash("sk-anything"));
    }

    #[test]
    fn abbreviations() {
        assert_eq!(abbreviate("sk-abcdefghijklmnop"), "sk-...mnop");
        assert_eq!(mask_for_error("abcdefghijklmnopwxyz"), "abcd****wxyz");
        assert_eq!(mask_for_error("short"), "****");
    }

    #[test]
    fn custom_key_rules() {
        assert!(validate_custom_key("sk-0123456789abc").is_ok());
        assert!(validate_custom_key("sk-short")
            .unwrap_err()
            .contains("at least 16"));
        assert!(validate_custom_key("pk-0123456789abcdef")
            .unwrap_err()
            .starts_with("Invalid key format. LiteLLM Virtual Key must start with 'sk-'"));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn redacts_every_occurrence() {
        let got = redact_secret(b"key sk-prov-1234 and sk-prov-1234!", "sk-prov-1234").unwrap();
        assert_eq!(got, b"key sk-...1234 and sk-...1234!");
        assert_eq!(redact_secret(b"nothing here", "sk-prov-1234"), None);
        assert_eq!(redact_secret(b"short", "sk-prov-1234"), None);
        assert_eq!(redact_secret(b"anything", ""), None);
    }
}
