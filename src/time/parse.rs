//! `budget_duration` / `duration` strings (`duration_in_seconds`), their validation, and
//! `budget_reset_time` (time of day).

use super::*;
use std::fmt;

/// A parsed `duration` / `budget_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedDuration {
    /// `Ns`, `Nm`, `Nh`, `Nd`, `Nw` (and the word aliases), as a number of seconds.
    Seconds(u64),
    /// `Nmo`: N calendar months (day of month clamped).
    Months(u32),
}

/// Why [`parse_duration`] failed. Messages match LiteLLM's `ValueError`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// No leading digit (`"h"`, `" 1h"`, `""`), or a value too large to represent.
    InvalidFormat,
    /// Digits not followed by one of `s m h d w mo` (`"30"`, `"1H"`, `"1.5h"`, `"5x"`).
    UnsupportedUnit,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::InvalidFormat => f.write_str("Invalid duration format"),
            DurationError::UnsupportedUnit => f.write_str("Unsupported duration unit"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Python's `str.isspace()` set as used by `str.strip()`: Rust's White_Space plus the
/// information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `_normalize_duration`: the word aliases, matched on `strip().lower()`; anything else is
/// returned **unchanged** (not stripped), so `" 1h"` stays invalid.
pub(super) fn normalize_duration(s: &str) -> &str {
    let key = s.trim_matches(is_py_space).to_lowercase();
    match key.as_str() {
        "hourly" => "1h",
        "daily" => "24h",
        "weekly" => "7d",
        "monthly" => "30d",
        _ => s,
    }
}

/// The `(\d+)` prefix of a string (ASCII digits only).
pub(super) struct LeadingNumber<'a> {
    /// The value, `None` when it does not fit in `u64`.
    pub(super) value: Option<u64>,
    /// The value modulo 86400 (always exact, even when `value` overflowed).
    pub(super) mod_day: u64,
    /// What follows the digits.
    pub(super) rest: &'a str,
}

pub(super) fn leading_number(s: &str) -> Option<LeadingNumber<'_>> {
    let len = s.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 {
        return None;
    }
    let digits = s.get(..len)?;
    let rest = s.get(len..)?;
    let mut value: Option<u64> = Some(0);
    let mut mod_day: u64 = 0;
    for b in digits.bytes() {
        let d = u64::from(b.wrapping_sub(b'0'));
        value = value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(d));
        mod_day = (mod_day * 10 + d) % SECS_PER_DAY_U;
    }
    Some(LeadingNumber {
        value,
        mod_day,
        rest,
    })
}

/// LiteLLM `duration_in_seconds` parsing: `re.match(r"(\d+)(mo|[smhdw]?)", normalize(s))`.
///
/// * word aliases (case-insensitive, after strip): hourly→1h, daily→24h, weekly→7d, monthly→30d;
/// * prefix match, trailing characters ignored: `"1hr"` = 1 h, `"30min"` = 30 m,
///   `"1month"` = 1 mo, and (quirk) `"1ms"` = 1 minute;
/// * units are case-sensitive: `"1H"` is `UnsupportedUnit`, as are `"30"`, `"1.5h"`, `"5x"`;
/// * no leading ASCII digit (`"h"`, `" 1h"`, `""`) is `InvalidFormat`.
///
/// Differences from CPython: only ASCII digits are digits (Python's `\d` is Unicode), and a value
/// whose length in seconds (or months) overflows `u64` (`u32`) is `InvalidFormat`, where Python's
/// unbounded `int` would carry on.
pub fn parse_duration(s: &str) -> Result<ParsedDuration, DurationError> {
    let norm = normalize_duration(s);
    let num = leading_number(norm).ok_or(DurationError::InvalidFormat)?;
    let rest = num.rest;
    let multiplier: Option<u64> = if rest.starts_with("mo") {
        None
    } else {
        match rest.as_bytes().first() {
            Some(b's') => Some(1),
            Some(b'm') => Some(SECS_PER_MINUTE),
            Some(b'h') => Some(SECS_PER_HOUR),
            Some(b'd') => Some(SECS_PER_DAY_U),
            Some(b'w') => Some(SECS_PER_WEEK),
            _ => return Err(DurationError::UnsupportedUnit),
        }
    };
    let value = num.value.ok_or(DurationError::InvalidFormat)?;
    match multiplier {
        None => u32::try_from(value)
            .map(ParsedDuration::Months)
            .map_err(|_| DurationError::InvalidFormat),
        Some(mult) => value
            .checked_mul(mult)
            .map(ParsedDuration::Seconds)
            .ok_or(DurationError::InvalidFormat),
    }
}

fn budget_duration_message(s: &str) -> String {
    format!("Invalid budget_duration '{s}'. Use a format like '1h', '24h', '7d', or '30d'.")
}

/// `validate_budget_duration` / `budget_duration_error` (§3.1), evaluated at a given `now`,
/// timezone offset and reset time of day (as LiteLLM does with the real clock and settings):
/// * `duration_in_seconds(v)` must succeed and be > 0 (`"0d"`, `"0mo"`, `"1H"`, `"30"` fail);
/// * `get_next_standardized_reset_time(v)` must not raise: `Nmo` with N != 1 (`"2mo"`) raises,
///   and so does a reset beyond year 9999 (`"9999999999d"`). An unknown reset unit does not
///   raise, so `"1hr"` and even `"2month"` are accepted (they reset at midnight).
///
/// The error is exactly `Invalid budget_duration '<v>'. Use a format like '1h', '24h', '7d', or '30d'.`
/// (LiteLLM sends it as HTTP 400 with detail `{"error": <message>}`).
pub fn validate_budget_duration_at(
    s: &str,
    now_unix_secs: i64,
    zone: &ZoneOffsets,
    reset_time_of_day_secs: u32,
) -> Result<ParsedDuration, String> {
    let err = || budget_duration_message(s);
    let parsed = parse_duration(s).map_err(|_| err())?;
    match parsed {
        ParsedDuration::Seconds(0) | ParsedDuration::Months(0) => return Err(err()),
        ParsedDuration::Seconds(_) => {}
        // duration_in_seconds builds the target date: ValueError past year 9999.
        ParsedDuration::Months(_) => {
            checked_add_duration(now_unix_secs, parsed).ok_or_else(err)?;
        }
    }
    let spec = parse_reset_spec(normalize_duration(s));
    if let Some(ResetSpec {
        unit: ResetUnit::Month,
        value,
    }) = spec
    {
        if value != 1 {
            // "Monthly resets currently only support 1 month intervals"
            return Err(err());
        }
    }
    let local_now = zone.wall_at_utc(now_unix_secs);
    let local = reset_local(spec, local_now, clamp_tod(reset_time_of_day_secs));
    if !(PY_DATETIME_START..PY_DATETIME_END).contains(&local) {
        // OverflowError in LiteLLM's date arithmetic.
        return Err(err());
    }
    Ok(parsed)
}

/// [`validate_budget_duration_at`] without a clock: evaluated at 2026-01-01T00:00:00Z, UTC,
/// midnight. `now` only matters for values whose reset would fall beyond year 9999 (about
/// 2.9 million days), so the answer is the same as LiteLLM's for every practical input.
pub fn validate_budget_duration(s: &str) -> Result<ParsedDuration, String> {
    validate_budget_duration_at(s, VALIDATION_REFERENCE_NOW, &ZoneOffsets::default(), 0)
}

/// Parse one 1-2 digit ASCII field with an inclusive maximum (strptime `%H`/`%M`/`%S`).
pub(super) fn parse_field(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u32 = s.parse().ok()?;
    (v <= max).then_some(v)
}

/// `litellm_settings.budget_reset_time` (`parse_budget_reset_time`): `"HH:MM"` or `"HH:MM:SS"`
/// through `strptime`, so 1- or 2-digit fields (`"9:05"`), hours 0-23, minutes and seconds 0-59,
/// no surrounding whitespace. Returns seconds since midnight. An empty string is midnight
/// (`Some(0)`), as in LiteLLM; `None` is a malformed value (LiteLLM fails at startup).
pub fn parse_time_of_day(s: &str) -> Option<u32> {
    if s.is_empty() {
        return Some(0);
    }
    let mut parts = s.split(':');
    let h = parse_field(parts.next()?, 23)?;
    let m = parse_field(parts.next()?, 59)?;
    let sec = match parts.next() {
        Some(p) => parse_field(p, 59)?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(h * 3_600 + m * 60 + sec)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::time::test_support::*;
    use ParsedDuration::{Months, Seconds};
    // ---------------------------------------------------------------- parse_duration

    /// `duration_in_seconds` parsing: input → result (Python's `re.match(r"(\d+)(mo|[smhdw]?)")`
    /// on the normalized string).
    #[test]
    fn parse_duration_table() {
        use DurationError::{InvalidFormat, UnsupportedUnit};
        let table: &[(&str, Result<ParsedDuration, DurationError>)] = &[
            ("30s", Ok(Seconds(30))),
            ("5m", Ok(Seconds(300))),
            ("2h", Ok(Seconds(7_200))),
            ("1d", Ok(Seconds(86_400))),
            ("1w", Ok(Seconds(604_800))),
            ("1mo", Ok(Months(1))),
            ("2mo", Ok(Months(2))),
            ("0d", Ok(Seconds(0))),
            ("007h", Ok(Seconds(25_200))),
            ("30d", Ok(Seconds(2_592_000))),
            ("hourly", Ok(Seconds(3_600))),
            ("daily", Ok(Seconds(86_400))),
            ("weekly", Ok(Seconds(604_800))),
            ("monthly", Ok(Seconds(2_592_000))),
            (" Daily\n", Ok(Seconds(86_400))),
            ("HOURLY", Ok(Seconds(3_600))),
            ("wEeKlY", Ok(Seconds(604_800))),
            // Python str.strip() also strips U+001C..U+001F.
            ("\u{1f}monthly\u{1c}", Ok(Seconds(2_592_000))),
            ("daily2", Err(InvalidFormat)),
            ("day", Err(InvalidFormat)),
            ("1hr", Ok(Seconds(3_600))),
            ("30min", Ok(Seconds(1_800))),
            ("1month", Ok(Months(1))),
            // quirk: 'm' then junk
            ("1ms", Ok(Seconds(60))),
            ("1h ", Ok(Seconds(3_600))),
            ("2days", Ok(Seconds(172_800))),
            ("1h30m", Ok(Seconds(3_600))),
            ("30", Err(UnsupportedUnit)),
            ("1H", Err(UnsupportedUnit)),
            ("1.5h", Err(UnsupportedUnit)),
            ("5x", Err(UnsupportedUnit)),
            ("1 h", Err(UnsupportedUnit)),
            ("1D", Err(UnsupportedUnit)),
            ("1M", Err(UnsupportedUnit)),
            ("1MO", Err(UnsupportedUnit)),
            ("12", Err(UnsupportedUnit)),
            ("1Mo", Err(UnsupportedUnit)),
            ("1-h", Err(UnsupportedUnit)),
            (" 1h", Err(InvalidFormat)),
            ("h", Err(InvalidFormat)),
            ("", Err(InvalidFormat)),
            ("   ", Err(InvalidFormat)),
            ("-1h", Err(InvalidFormat)),
            ("+1h", Err(InvalidFormat)),
            ("mo", Err(InvalidFormat)),
            ("d1", Err(InvalidFormat)),
            ("\u{ff11}h", Err(InvalidFormat)),
            ("\t1h", Err(InvalidFormat)),
        ];
        for (input, want) in table {
            assert_eq!(parse_duration(input), *want, "{input:?}");
        }
    }

    #[test]
    fn parse_huge_values_never_panic() {
        assert_eq!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::InvalidFormat)
        );
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::InvalidFormat)
        );
        // Empty unit is reported first, as in Python.
        assert_eq!(
            parse_duration("99999999999999999999"),
            Err(DurationError::UnsupportedUnit)
        );
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Ok(Seconds(u64::MAX))
        );
        assert_eq!(
            parse_duration("18446744073709551616s"),
            Err(DurationError::InvalidFormat)
        );
        assert_eq!(
            parse_duration("30500568904944w"),
            Err(DurationError::InvalidFormat)
        );
        assert_eq!(parse_duration("4294967295mo"), Ok(Months(u32::MAX)));
        assert_eq!(
            parse_duration("4294967296mo"),
            Err(DurationError::InvalidFormat)
        );
        let long = "9".repeat(10_000) + "s";
        assert_eq!(parse_duration(&long), Err(DurationError::InvalidFormat));
    }

    #[test]
    fn error_display() {
        assert_eq!(
            DurationError::InvalidFormat.to_string(),
            "Invalid duration format"
        );
        assert_eq!(
            DurationError::UnsupportedUnit.to_string(),
            "Unsupported duration unit"
        );
    }

    // ---------------------------------------------------------------- validation

    #[test]
    fn validate_accepts() {
        assert_eq!(validate_budget_duration("1h"), Ok(Seconds(3_600)));
        assert_eq!(validate_budget_duration("24h"), Ok(Seconds(86_400)));
        assert_eq!(validate_budget_duration("7d"), Ok(Seconds(604_800)));
        assert_eq!(validate_budget_duration("30d"), Ok(Seconds(2_592_000)));
        assert_eq!(validate_budget_duration("1mo"), Ok(Months(1)));
        assert_eq!(validate_budget_duration("1w"), Ok(Seconds(604_800)));
        assert_eq!(validate_budget_duration("daily"), Ok(Seconds(86_400)));
        assert_eq!(validate_budget_duration("30s"), Ok(Seconds(30)));
        // Unknown reset unit does not raise in LiteLLM: accepted, resets at midnight.
        assert_eq!(validate_budget_duration("1hr"), Ok(Seconds(3_600)));
        assert_eq!(validate_budget_duration("2month"), Ok(Months(2)));
        assert_eq!(
            validate_budget_duration("1000000d"),
            Ok(Seconds(86_400_000_000))
        );
    }

    #[test]
    fn validate_rejects_with_exact_message() {
        for s in [
            "0d",
            "0s",
            "0h",
            "0w",
            "0mo",
            "2mo",
            "12mo",
            "1H",
            "30",
            "h",
            " 1h",
            "",
            "1.5h",
            "99999999999999999999d",
            "99999999999999999999h",
            "9999999999d",
            "3000000d",
            "1000000000w",
            "100000month",
        ] {
            assert_eq!(
                validate_budget_duration(s),
                Err(format!(
                    "Invalid budget_duration '{s}'. Use a format like '1h', '24h', '7d', or '30d'."
                )),
                "{s:?}"
            );
        }
        assert_eq!(
            validate_budget_duration("1H").unwrap_err(),
            "Invalid budget_duration '1H'. Use a format like '1h', '24h', '7d', or '30d'."
        );
    }

    #[test]
    fn validate_at_year_9999_boundary() {
        let late = u(9999, 12, 31, 12, 0, 0);
        assert!(validate_budget_duration_at("1h", late, &z(0), 0).is_ok());
        assert!(validate_budget_duration_at("1d", late, &z(0), 0).is_err());
        assert!(validate_budget_duration_at("1mo", late, &z(0), 0).is_err());
        assert!(validate_budget_duration_at("1d", u(9999, 12, 30, 12, 0, 0), &z(0), 0).is_ok());
        // Days from 2026-01-01 to 10000-01-01: 2_912_443.
        assert!(validate_budget_duration("2912442d").is_ok());
        assert!(validate_budget_duration("2912443d").is_err());
    }

    // ---------------------------------------------------------------- time of day, tz

    /// `budget_reset_time` through `strptime("%H:%M[:%S]")`: input → seconds after midnight.
    #[test]
    fn time_of_day_table() {
        let table: &[(&str, Option<u32>)] = &[
            ("00:00", Some(0)),
            ("12:00", Some(43_200)),
            ("9:05", Some(32_700)),
            ("09:5", Some(32_700)),
            ("23:59:59", Some(86_399)),
            ("1:2:3", Some(3_723)),
            ("00:00:00", Some(0)),
            ("", Some(0)),
            ("24:00", None),
            ("12:60", None),
            ("12:00:60", None),
            ("12:00:61", None),
            ("12", None),
            ("12:00:00:00", None),
            (" 12:00", None),
            ("12:00 ", None),
            ("123:00", None),
            ("12:345", None),
            ("ab:cd", None),
            ("-1:00", None),
            ("+1:00", None),
            ("12:", None),
            (":30", None),
            ("12::00", None),
            ("12:00:", None),
            ("\u{ff11}2:00", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_time_of_day(input), *want, "{input:?}");
        }
    }
}
