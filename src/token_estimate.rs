//! Input tokens of a request, counted the way the chat format charges them, for the budget
//! reservation (LiteLLM reserves with its `token_counter`). The filter has no tokenizer, so text
//! is estimated from character classes, with a bound chosen to be at or above what OpenAI's
//! tokenizers (cl100k / o200k) count for ordinary text:
//!
//! * a run of ASCII letters: one token per 4 letters, rounded up (English words are 1 token per
//!   4-5 letters, a word of 1-4 letters is one token);
//! * a run of digits: one per 3, rounded up (the tokenizers split numbers in groups of 3);
//! * punctuation and every non-ASCII character: one token each (CJK is about one per character;
//!   accented letters mostly merge with their word, so this over-counts);
//! * a single space is free (the tokenizers fold it into the next word); other whitespace runs
//!   one per 4 characters, at least one;
//! * never below one token per 4 characters overall.
//!
//! Text made to defeat a tokenizer (random letters, rare scripts) can count more than this; a
//! real bound for any text is one token per UTF-8 byte, too dear to reserve on every call.

use serde_json::Value;

/// Tokens OpenAI's chat format adds per message (`<|start|>role ... <|end|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra token for a message's `name`.
const TOKENS_PER_NAME: u64 = 1;
/// Tokens priming the reply (`<|start|>assistant<|message|>`).
const REPLY_PRIMER_TOKENS: u64 = 3;
/// Tokens around the tool definitions (LiteLLM's `_count_tool_definitions`).
const TOOL_DEFINITION_TOKENS: u64 = 9;

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Letter,
    Digit,
    Space,
    /// Punctuation, control and non-ASCII characters: one token each.
    Single,
}

fn class(c: char) -> Class {
    if c.is_ascii_alphabetic() {
        Class::Letter
    } else if c.is_ascii_digit() {
        Class::Digit
    } else if c.is_ascii_whitespace() {
        Class::Space
    } else {
        Class::Single
    }
}

fn run_tokens(class: Class, len: u64, single_space: bool) -> u64 {
    match class {
        Class::Letter => len.div_ceil(4),
        Class::Digit => len.div_ceil(3),
        Class::Space if single_space => 0,
        Class::Space => len.div_ceil(4),
        Class::Single => len,
    }
}

/// Tokens of a piece of text (see the module doc for the bound).
pub fn text_tokens(text: &str) -> u64 {
    let mut tokens = 0u64;
    let mut chars = 0u64;
    let mut run: Option<(Class, u64, bool)> = None;
    for c in text.chars() {
        chars += 1;
        let cls = class(c);
        match &mut run {
            Some((current, len, single_space)) if *current == cls && cls != Class::Single => {
                *len += 1;
                *single_space = false;
            }
            _ => {
                if let Some((current, len, single_space)) = run {
                    tokens = tokens.saturating_add(run_tokens(current, len, single_space));
                }
                run = Some((cls, 1, c == ' '));
            }
        }
    }
    if let Some((current, len, single_space)) = run {
        tokens = tokens.saturating_add(run_tokens(current, len, single_space));
    }
    tokens.max(chars.div_ceil(4))
}

/// Tokens of a JSON value sent as its text (tool calls, tool definitions, non-text parts).
fn json_tokens(value: &Value) -> u64 {
    text_tokens(&serde_json::to_string(value).unwrap_or_default())
}

/// LiteLLM's tokens for a low-detail image (`calculate_img_tokens`' `base_tokens`, OpenAI's 85).
const LOW_DETAIL_IMAGE_TOKENS: u64 = 85;
/// LiteLLM's count for any other image whose dimensions it does not read
/// (`high_detail_image_token_upper_bound(85, 170)`): 85 + 170 per 512px tile of the largest
/// high-detail image, 2000x768, i.e. 8 tiles. The filter never decodes images, so every image
/// is counted at this bound.
const HIGH_DETAIL_IMAGE_TOKENS: u64 = 85 + 170 * 8;

/// Tokens of an `image_url` part as LiteLLM's `token_counter` counts them: a fixed number by
/// `detail`, never the characters of the (base64) URL.
fn image_part_tokens(image_url: &Value) -> u64 {
    match image_url.get("detail").and_then(Value::as_str) {
        Some("low") => LOW_DETAIL_IMAGE_TOKENS,
        _ => HIGH_DETAIL_IMAGE_TOKENS,
    }
}

/// A message `content` given as a list of parts: the `text` of text parts, images by
/// [`image_part_tokens`], other parts (files, audio) by their JSON text.
fn content_parts_tokens(parts: &[Value]) -> u64 {
    parts
        .iter()
        .map(|part| match (part.get("text"), part.get("image_url")) {
            (Some(Value::String(t)), _) => text_tokens(t),
            (_, Some(image_url)) => image_part_tokens(image_url),
            _ => json_tokens(part),
        })
        .fold(0, u64::saturating_add)
}

/// Input tokens of a chat request as LiteLLM's `token_counter` counts them for OpenAI models:
/// per message 3 + every string field (+1 for `name`), text parts of a `content` list,
/// `tool_calls` / `function_call`; 3 to prime the reply; tool definitions + 9, and a named
/// `tool_choice`.
pub fn chat_tokens(messages: &[Value], tools: Option<&Value>, tool_choice: Option<&Value>) -> u64 {
    let mut tokens = REPLY_PRIMER_TOKENS;
    for message in messages {
        tokens = tokens.saturating_add(TOKENS_PER_MESSAGE);
        let Some(fields) = message.as_object() else {
            continue;
        };
        for (name, value) in fields {
            let counted = match (name.as_str(), value) {
                ("tool_calls" | "function_call", v) if !v.is_null() => json_tokens(v),
                ("name", Value::String(s)) => text_tokens(s).saturating_add(TOKENS_PER_NAME),
                (_, Value::String(s)) => text_tokens(s),
                ("content", Value::Array(parts)) => content_parts_tokens(parts),
                _ => 0,
            };
            tokens = tokens.saturating_add(counted);
        }
    }
    if let Some(tools) = tools.and_then(Value::as_array).filter(|t| !t.is_empty()) {
        tokens = tokens
            .saturating_add(json_tokens(&Value::Array(tools.clone())))
            .saturating_add(TOOL_DEFINITION_TOKENS);
    }
    if let Some(choice) = tool_choice.filter(|c| c.is_object()) {
        tokens = tokens.saturating_add(json_tokens(choice));
    }
    tokens
}

/// Tokens of a completions `prompt` or embeddings `input`: strings, lists of strings, and token
/// arrays (one token per number).
pub fn input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(s) => text_tokens(s),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(input_tokens).fold(0, u64::saturating_add),
        Value::Null | Value::Bool(_) | Value::Object(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Token counts of OpenAI's cl100k_base tokenizer for ordinary text: the estimate is never
    /// below them.
    #[test]
    fn text_estimate_is_not_below_the_tokenizer_for_ordinary_text() {
        for (text, cl100k) in [
            ("hi", 1),
            ("Hello world", 2),
            ("The quick brown fox jumps over the lazy dog.", 10),
            ("user", 1),
            ("1234567890", 4),
            ("a b c d", 4),
            ("line one\nline two", 5),
            ("你好，世界", 5),
        ] {
            let estimate = text_tokens(text);
            assert!(estimate >= cl100k, "{text:?}: {estimate} < {cl100k}");
        }
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("hi"), 1);
        // Never below characters / 4 (what the fake upstream counts).
        assert_eq!(text_tokens("abcd abcd abcd abcd abcd abcd"), 8);
    }

    /// OpenAI's count for one "hi" user message is 8: 3 + "user" + "hi" + 3.
    #[test]
    fn chat_framing_is_counted() {
        let messages = json!([{"role": "user", "content": "hi"}]);
        let m = messages.as_array().unwrap();
        assert_eq!(chat_tokens(m, None, None), 8);
        let named = json!([{"role": "user", "content": "hi", "name": "bob"}]);
        assert_eq!(chat_tokens(named.as_array().unwrap(), None, None), 10);
        let parts = json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
        assert_eq!(chat_tokens(parts.as_array().unwrap(), None, None), 8);
        let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let with_tools = chat_tokens(m, Some(&tools), None);
        assert!(with_tools >= 8 + 9 + 5, "{with_tools}");
        assert_eq!(chat_tokens(m, Some(&json!([])), None), 8);
        assert_eq!(chat_tokens(&[], None, None), 3);
    }

    /// An inline image counts LiteLLM's fixed tokens, not its base64 characters (a 1 MB image
    /// was ~400k tokens).
    #[test]
    fn image_parts_count_fixed_tokens_by_detail() {
        let data = format!("data:image/png;base64,{}", "A".repeat(1_000_000));
        let image = |detail: Option<&str>| {
            let mut image_url = json!({"url": data});
            if let Some(d) = detail {
                image_url["detail"] = json!(d);
            }
            json!([{"role": "user", "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": image_url}
            ]}])
        };
        let count = |m: Value| chat_tokens(m.as_array().unwrap(), None, None);
        assert_eq!(count(image(Some("low"))), 8 + 85);
        assert_eq!(count(image(Some("high"))), 8 + 1445);
        assert_eq!(count(image(None)), 8 + 1445);
        // A plain URL string is an image too.
        let plain = json!([{"role": "user", "content": [
            {"type": "image_url", "image_url": "https://example.com/cat.png"}
        ]}]);
        assert_eq!(count(plain), 3 + 1 + 1445 + 3);
    }

    #[test]
    fn prompt_and_input_tokens() {
        assert_eq!(input_tokens(&json!("hi")), 1);
        assert_eq!(input_tokens(&json!(["hi", "Hello world"])), 1 + 4);
        assert_eq!(input_tokens(&json!([1, 2, 3])), 3);
        assert_eq!(input_tokens(&json!(null)), 0);
    }
}
