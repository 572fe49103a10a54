//! The duration parser and reset computation (`duration`): `parse_duration`, budget-duration
//! validation, aligned and exact period ends, time-of-day, UTC offsets, timestamps.
//!
//! Input: `[8: now][4: utc offset][4: reset time of day][text]`; the text is read as UTF-8
//! (lossy) and used for every string parser.
//!
//! Invariants: validation accepts only what `parse_duration` parses to a non-zero length; a
//! validated duration's next reset is not before `now` (for a `now` between 1970 and 9000);
//! exact additions are exact; civil <-> unix round-trips; a parsed time of day is under 24 h; a
//! parsed offset is under 24 h; timestamps parse back to the instant they were formatted from.
#![no_main]

mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use tollgate::time::{
    add_duration, checked_add_duration, civil_from_unix, format_iso8601_utc, format_python_utc,
    next_reset_at, next_reset_at_str, parse_duration, parse_iso8601_utc, parse_time_of_day,
    parse_utc_offset, unix_from_civil, ZoneOffsets, validate_budget_duration, validate_budget_duration_at,
    ParsedDuration,
};

/// 1970-01-01 .. about 8940-01-01: where `next reset >= now` must hold.
const NOW_SPAN: u64 = 220_000_000_000;
/// Python's datetime range, 0001-01-01 .. 9999-12-31 (seconds).
const PY_START: i64 = -62_135_596_800;
const PY_END: i64 = 253_402_300_800;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let raw_now = input.i64();
    let raw_off = input.u32();
    let raw_tod = input.u32();
    let text = String::from_utf8_lossy(input.rest);
    let s = text.as_ref();

    // Arbitrary instants: civil <-> unix round-trips (over the whole i64 range), and so do the
    // timestamp formats within years 1..=9999.
    let (y, mo, d, h, mi, se) = civil_from_unix(raw_now);
    assert!((1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && se < 60);
    assert_eq!(unix_from_civil(y, mo, d, h, mi, se), raw_now);
    let span = (PY_END - PY_START) as u64;
    let in_py = PY_START + (raw_now as u64 % span) as i64;
    let micros = in_py * 1_000_000 + (raw_off % 1_000_000) as i64;
    assert_eq!(parse_iso8601_utc(&format_iso8601_utc(micros)), Some(micros));
    assert_eq!(parse_iso8601_utc(&format_python_utc(micros)), Some(micros));

    let now = (raw_now as u64 % NOW_SPAN) as i64;
    let offset = (raw_off % 172_799) as i32 - 86_399;
    // Half the inputs get a DST-like transition (one hour forward or back) near `now`.
    let zone = if raw_off % 2 == 0 {
        ZoneOffsets::fixed(offset)
    } else {
        let shift = if raw_off % 4 == 1 { 3_600 } else { -3_600 };
        let at = now.saturating_add((raw_off % 200_000) as i64 - 100_000);
        ZoneOffsets {
            initial: offset,
            transitions: vec![(at, (offset + shift).clamp(-86_399, 86_399))],
        }
    };
    let tod = raw_tod % 90_000;

    // parse_duration and exact additions.
    let parsed = parse_duration(s);
    if let Ok(p) = parsed {
        match p {
            ParsedDuration::Seconds(n) => {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                assert_eq!(add_duration(now, p), now.saturating_add(n));
                if let Some(end) = checked_add_duration(now, p) {
                    assert_eq!(end, now + n);
                }
            }
            ParsedDuration::Months(m) => {
                let end = add_duration(now, p);
                if m > 0 {
                    // At least 28 days per month, at most 31.
                    assert!(end >= now + 28 * 86_400, "{s:?} {now} -> {end}");
                }
                if m < 1_000 {
                    assert!(
                        end <= now + i64::from(m) * 31 * 86_400,
                        "{s:?} {now} -> {end}"
                    );
                }
            }
        }
        if let Some(end) = checked_add_duration(now, p) {
            assert!((PY_START..PY_END).contains(&end));
        }
    }

    // Budget-duration validation agrees with parse_duration.
    for v in [
        validate_budget_duration_at(s, now, &zone, tod),
        validate_budget_duration(s),
    ] {
        if let Ok(p) = v {
            assert_eq!(parsed, Ok(p));
            assert!(p != ParsedDuration::Seconds(0) && p != ParsedDuration::Months(0));
        }
    }
    let reset = next_reset_at_str(s, now, &zone, tod);
    if validate_budget_duration_at(s, now, &zone, tod).is_ok() {
        assert!(
            reset >= now,
            "{s:?} now={now} off={offset} tod={tod} -> {reset}"
        );
    }
    if let Ok(p) = parsed {
        let r = next_reset_at(p, now, &zone, tod);
        if p != ParsedDuration::Seconds(0) && r < PY_END {
            assert!(r >= now, "{p:?} now={now} off={offset} tod={tod} -> {r}");
        }
    }

    // Time of day: under 24 h, and HH:MM:SS of it parses back.
    if let Some(t) = parse_time_of_day(s) {
        assert!(t < 86_400);
        let again = format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
        assert_eq!(parse_time_of_day(&again), Some(t));
    }

    // UTC offsets: under 24 h either way.
    if let Some(o) = parse_utc_offset(s) {
        assert!(o.abs() < 86_400, "{s:?} -> {o}");
    }

    // Timestamps: what parses formats back to the same instant.
    if let Some(us) =
        parse_iso8601_utc(s).filter(|us| (PY_START..PY_END).contains(&us.div_euclid(1_000_000)))
    {
        assert_eq!(
            parse_iso8601_utc(&format_iso8601_utc(us)),
            Some(us),
            "{s:?}"
        );
    }
});
