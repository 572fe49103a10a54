//! The streamed usage extractor (`UsageReader`, `text/event-stream`), fed the same bytes in
//! arbitrary chunkings.
//!
//! Input: `[flags][n][n chunk-length bytes][stream bytes]`. `flags` picks the per-event buffer
//! limit (small limits exercise the "forwarded unparsed" path).
//!
//! Invariants:
//! * whatever the chunking, the client sees the same bytes and the reader reports the same usage,
//!   text count, `[DONE]` and unparsed-event count as when the stream arrives in one piece;
//! * without stripping, every chunk is forwarded unchanged;
//! * with stripping, the output is the input with some bytes removed, the usage read is the same
//!   as without stripping, and stripping the output again changes nothing (only whole usage-only
//!   events were removed);
//! * `finish` is idempotent and later chunks pass through untouched.
#![no_main]

mod common;

use common::{chunks, Input};
use libfuzzer_sys::fuzz_target;
use tollgate::usage::{BodyKind, Usage, UsageReader};

#[derive(Debug, PartialEq)]
struct Outcome {
    out: Vec<u8>,
    usage: Option<Usage>,
    text_chars: u64,
    saw_done: bool,
    unparsed: u64,
}

fn run(strip: bool, max: usize, pieces: &[&[u8]]) -> Outcome {
    let mut r = UsageReader::new(BodyKind::EventStream, strip, max);
    let mut out = Vec::new();
    for p in pieces {
        let fwd = r.feed(p);
        if !strip {
            assert_eq!(&fwd, p, "a non-stripping reader changed a chunk");
        }
        out.extend(fwd);
    }
    out.extend(r.finish());
    assert!(r.finish().is_empty(), "finish is not idempotent");
    assert_eq!(r.feed(b"data: x\n\n"), b"data: x\n\n");
    assert!(!r.overflowed());
    assert_eq!(r.kind(), BodyKind::EventStream);
    Outcome {
        out,
        usage: r.usage(),
        text_chars: r.streamed_text_chars(),
        saw_done: r.saw_done(),
        unparsed: r.unparsed_events(),
    }
}

/// Whether `sub` is `full` with some bytes deleted.
fn is_subsequence(sub: &[u8], full: &[u8]) -> bool {
    let mut it = full.iter();
    sub.iter().all(|b| it.any(|x| x == b))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let max = match flags % 4 {
        0 => 64 * 1024,
        1 => usize::from(input.byte()),
        2 => 0,
        _ => usize::from(input.byte()) * 8,
    };
    let n = usize::from(input.byte());
    let control = input.bytes(n);
    let body = input.rest;
    let pieces = chunks(control, body);

    let whole_plain = run(false, max, &[body]);
    assert_eq!(whole_plain.out, body);
    let plain = run(false, max, &pieces);
    assert_eq!(plain, whole_plain, "result depends on the chunking");

    let whole_strip = run(true, max, &[body]);
    let strip = run(true, max, &pieces);
    assert_eq!(
        strip, whole_strip,
        "stripped result depends on the chunking"
    );
    assert_eq!(strip.usage, plain.usage, "stripping changed the usage read");
    assert_eq!(strip.saw_done, plain.saw_done);
    assert_eq!(strip.unparsed, plain.unparsed);
    assert!(strip.out.len() <= body.len());
    assert!(
        is_subsequence(&strip.out, body),
        "stripped output is not the input minus some bytes"
    );
    let again = run(true, max, &[&strip.out]);
    assert_eq!(
        again.out, strip.out,
        "stripping the stripped output removed more"
    );
});
