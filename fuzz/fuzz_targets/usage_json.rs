//! The non-streamed usage extractor (`UsageReader` on a JSON body, and `usage_from_json`), fed in
//! arbitrary chunkings.
//!
//! Input: `[flags][n][n chunk-length bytes][body bytes]`; `flags` picks the buffer limit and
//! whether a (non-event-stream) reader is asked to strip, which must not matter for JSON.
//!
//! Invariants: every chunk is forwarded unchanged; the usage is `usage_from_json` of the whole
//! body when it fits the buffer (else none, and `overflowed`), whatever the chunking; a missing
//! `total_tokens` is prompt + completion.
#![no_main]

mod common;

use common::{chunks, Input};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::usage::{usage_from_json, BodyKind, UsageReader};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let max = match flags % 4 {
        0 => 8 * 1024 * 1024,
        1 => usize::from(input.byte()),
        2 => 0,
        _ => usize::from(input.byte()) * 16,
    };
    let strip = flags & 4 != 0;
    let n = usize::from(input.byte());
    let control = input.bytes(n);
    let body = input.rest;
    let pieces = chunks(control, body);

    let mut r = UsageReader::new(BodyKind::Json, strip, max);
    for p in &pieces {
        assert_eq!(&r.feed(p), p, "a JSON chunk was changed");
    }
    assert!(r.finish().is_empty());
    assert!(r.finish().is_empty());
    assert_eq!(r.unparsed_events(), 0);
    assert!(!r.saw_done());

    let parsed = serde_json::from_slice::<Value>(body).ok();
    let expected = if body.len() > max {
        assert!(r.overflowed(), "a body over the limit was not flagged");
        None
    } else {
        assert!(!r.overflowed());
        parsed.as_ref().and_then(usage_from_json)
    };
    assert_eq!(r.usage(), expected, "usage depends on the chunking");
    if r.overflowed() || parsed.is_none() {
        assert_eq!(r.streamed_text_chars(), 0);
    }

    if let Some(v) = &parsed {
        if let Some(u) = usage_from_json(v) {
            // A top-level usage object without `total_tokens`: the total is prompt + completion.
            let obj = v.get("usage").and_then(Value::as_object);
            if obj.is_some_and(|o| !o.contains_key("total_tokens")) {
                assert_eq!(
                    u.total_tokens,
                    u.prompt_tokens.saturating_add(u.completion_tokens)
                );
            }
        }
    }
});
