//! Duration semantics of LiteLLM 1.110.2 (`litellm_core_utils/duration_parser.py`,
//! `proxy/common_utils/timezone_utils.py`), see `litellm-compat.md` §3 and §5.2.
//!
//! Pure: std only, no clock reads (`now` is always a parameter), no panics. Compiles for the
//! host and for `wasm32-wasip1`.
//!
//! Two parsers exist in LiteLLM and both are reproduced here:
//! * `duration_in_seconds` (key `expires`, windows, validation) uses
//!   `re.match(r"(\d+)(mo|[smhdw]?)", s)`: [`parse_duration`].
//! * `get_next_standardized_reset_time` (`budget_reset_at`) uses
//!   `re.match(r"(\d+)([a-z]+)", s)`, so `"1hr"`, `"30min"` or `"1month"` are an unknown unit
//!   there and reset at the next midnight: [`next_reset_at_str`].
//!
//! Because [`ParsedDuration::Seconds`] forgets the unit ("24h" and "1d" are both 86400 s but
//! align differently), callers that still have the original string should compute
//! `budget_reset_at` with [`next_reset_at_str`]; [`next_reset_at`] is a best-effort mapping.
//!
//! Known, deliberate differences from CPython (all documented at the function concerned):
//! * Python's `\d` matches any Unicode decimal digit (`"１h"`); only ASCII digits are accepted here.
//! * Python integers are unbounded. A duration whose length in seconds does not fit `u64`
//!   (e.g. `"99999999999999999999h"`) is `InvalidFormat` here; LiteLLM would accept such an
//!   hour/minute/second value for `budget_duration`. `next_reset_at_str` still aligns it exactly.
//! * `mo` arithmetic is done in UTC; LiteLLM uses the server's local time (UTC in containers).
//! * `litellm_settings.timezone` arrives as a [`ZoneOffsets`] table (the sidecar resolves IANA
//!   names with a bundled tz database, so the filter needs none); wall-clock results map back to
//!   UTC as CPython's `zoneinfo` does for `fold=0`.

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

const SECS_PER_MINUTE: u64 = 60;
const SECS_PER_HOUR: u64 = 3_600;
const SECS_PER_DAY_U: u64 = 86_400;
const SECS_PER_WEEK: u64 = 604_800;
const DAY: i64 = 86_400;
const MICROS_PER_SEC: i64 = 1_000_000;

/// First second Python's `datetime` cannot represent: 10000-01-01T00:00:00 (`datetime.max` is
/// 9999-12-31T23:59:59.999999). Date arithmetic reaching it raises `OverflowError`/`ValueError`.
const PY_DATETIME_END: i64 = 253_402_300_800;
/// 0001-01-01T00:00:00, `datetime.min`.
const PY_DATETIME_START: i64 = -62_135_596_800;

/// `now` used by [`validate_budget_duration`], which has no clock: 2026-01-01T00:00:00Z. It only
/// matters for values whose reset would land beyond year 9999 (millions of days).
const VALIDATION_REFERENCE_NOW: i64 = 1_767_225_600;

/// Python's `str.isspace()` set as used by `str.strip()`: Rust's White_Space plus the
/// information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `_normalize_duration`: the word aliases, matched on `strip().lower()`; anything else is
/// returned **unchanged** (not stripped), so `" 1h"` stays invalid.
fn normalize_duration(s: &str) -> &str {
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
struct LeadingNumber<'a> {
    /// The value, `None` when it does not fit in `u64`.
    value: Option<u64>,
    /// The value modulo 86400 (always exact, even when `value` overflowed).
    mod_day: u64,
    /// What follows the digits.
    rest: &'a str,
}

fn leading_number(s: &str) -> Option<LeadingNumber<'_>> {
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

fn is_leap_year(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Number of days in month `m` (1-12) of year `y`; 31 for an out-of-range month.
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 => {
            if is_leap_year(y) {
                29
            } else {
                28
            }
        }
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i128 {
    let m = i128::from(m);
    let d = i128::from(d);
    let y = i128::from(y) - i128::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = i128::from(z) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    (
        clamp_i64(y),
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Unix seconds → UTC (year, month 1-12, day, hour, minute, second), proleptic Gregorian.
pub fn civil_from_unix(unix_secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix_secs.div_euclid(DAY);
    let sod = unix_secs.rem_euclid(DAY);
    let (y, m, d) = civil_from_days(days);
    let hh = u32::try_from(sod / 3_600).unwrap_or(0);
    let mm = u32::try_from(sod % 3_600 / 60).unwrap_or(0);
    let ss = u32::try_from(sod % 60).unwrap_or(0);
    (y, m, d, hh, mm, ss)
}

/// UTC civil time → unix seconds, proleptic Gregorian. Fields are not range-checked: a day,
/// hour, minute or second past its range simply carries (`Jan 32` = `Feb 1`); a month outside
/// 1-12 gives an unspecified (but non-panicking) result. Saturates at the `i64` range.
pub fn unix_from_civil(y: i64, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> i64 {
    let days = days_from_civil(y, m, d);
    let secs =
        days * i128::from(DAY) + i128::from(hh) * 3_600 + i128::from(mm) * 60 + i128::from(ss);
    clamp_i64(secs)
}

/// Add `n` calendar months to a UTC instant, keeping the time of day and clamping the day to
/// the target month's length (Jan 31 + 1 mo = Feb 28/29). Returns the (possibly out of
/// Python's range) result, saturating at the `i64` range.
fn add_months(start: i64, n: u32) -> i64 {
    let (y, m, d, hh, mm, ss) = civil_from_unix(start);
    let total = i64::from(m) - 1 + i64::from(n); // 0-indexed
    let ty = y.saturating_add(total.div_euclid(12));
    let tm = u32::try_from(total.rem_euclid(12) + 1).unwrap_or(1);
    let td = d.min(days_in_month(ty, tm));
    unix_from_civil(ty, tm, td, hh, mm, ss)
}

/// `start + d`: exact (not aligned). Seconds are added as is; months are real calendar months
/// with the day clamped (Jan 31 + 1mo = Feb 28, or Feb 29 in a leap year), time of day kept.
/// Saturates at the `i64` range. This is key `expires` (§5.2) and window ends.
///
/// LiteLLM computes the month arithmetic on the server's naive local time; this uses UTC.
pub fn add_duration(start_unix_secs: i64, d: ParsedDuration) -> i64 {
    match d {
        ParsedDuration::Seconds(n) => {
            start_unix_secs.saturating_add(i64::try_from(n).unwrap_or(i64::MAX))
        }
        ParsedDuration::Months(n) => add_months(start_unix_secs, n),
    }
}

/// [`add_duration`], but `None` where Python would raise (`OverflowError` / `ValueError`: the
/// result is not a valid `datetime`, i.e. outside years 1..=9999). LiteLLM then answers 500 from
/// `/key/generate`.
pub fn checked_add_duration(start_unix_secs: i64, d: ParsedDuration) -> Option<i64> {
    let out = match d {
        ParsedDuration::Seconds(n) => start_unix_secs.checked_add(i64::try_from(n).ok()?)?,
        ParsedDuration::Months(n) => add_months(start_unix_secs, n),
    };
    (PY_DATETIME_START..PY_DATETIME_END)
        .contains(&out)
        .then_some(out)
}

/// The unit as seen by the reset-time parser `re.match(r"(\d+)([a-z]+)", s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetUnit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    /// Any other run of lowercase ASCII letters (`hr`, `min`, `month`, ...).
    Unrecognized,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ResetSpec {
    /// The value. When the decimal number overflows `u64`, a stand-in with the same residue
    /// modulo 86400 and far larger than any threshold: this gives the exact Python result for
    /// s/m/h (which only depends on the value mod 86400 once it exceeds 86400) and still
    /// overflows for d/w and is still != 1 for mo.
    value: u64,
    unit: ResetUnit,
}

/// Stand-in base for overflowing values, see [`ResetSpec::value`].
const HUGE_VALUE_BASE: u64 = SECS_PER_DAY_U << 20;

/// `_parse_duration` of `get_next_standardized_reset_time`, applied to the normalized string.
/// `None` means "no match": LiteLLM then warns and resets at the next midnight.
fn parse_reset_spec(normalized: &str) -> Option<ResetSpec> {
    let num = leading_number(normalized)?;
    let unit_len = num.rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if unit_len == 0 {
        return None;
    }
    let unit = match num.rest.get(..unit_len)? {
        "s" => ResetUnit::Second,
        "m" => ResetUnit::Minute,
        "h" => ResetUnit::Hour,
        "d" => ResetUnit::Day,
        "w" => ResetUnit::Week,
        "mo" => ResetUnit::Month,
        _ => ResetUnit::Unrecognized,
    };
    let value = num
        .value
        .unwrap_or(HUGE_VALUE_BASE.saturating_add(num.mod_day));
    Some(ResetSpec { value, unit })
}

/// `(x // n + 1) * n`-style next boundary as LiteLLM writes it:
/// `x + n - x % n if x % n != 0 else x + n`. `n > 0`.
fn next_multiple(x: u128, n: u128) -> u128 {
    let r = x % n;
    if r != 0 {
        x + n - r
    } else {
        x + n
    }
}

fn small_i64(v: u128) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The core of `get_next_standardized_reset_time`, in local wall-clock seconds
/// (`unix + utc_offset`). Saturating; never fails. A month spec with a value other than 1
/// (where LiteLLM raises `ValueError`) is treated as 1 month.
fn reset_local(spec: Option<ResetSpec>, local_now: i64, tod: i64) -> i64 {
    let sod = local_now.rem_euclid(DAY);
    let base_midnight = local_now.saturating_sub(sod);
    let next_midnight = base_midnight.saturating_add(DAY);
    let Some(spec) = spec else {
        // Unparseable: "falling back to a next-midnight reset".
        return next_midnight;
    };
    let v = u128::from(spec.value);
    let sod_u = u128::from(sod.unsigned_abs());
    let (h, m, s) = (sod_u / 3_600, sod_u % 3_600 / 60, sod_u % 60);
    match spec.unit {
        ResetUnit::Second | ResetUnit::Minute | ResetUnit::Hour if v == 0 => local_now,
        ResetUnit::Hour => {
            // Quirk: N >= 24 lands on the next day at (N % 24):00 (next midnight for 24h, 48h).
            let next_hour = next_multiple(h, v);
            if next_hour >= 24 {
                next_midnight.saturating_add(small_i64(next_hour % 24) * 3_600)
            } else {
                base_midnight.saturating_add(small_i64(next_hour) * 3_600)
            }
        }
        ResetUnit::Minute => {
            // Quirk: aligned within the hour, so 7m realigns at every hour.
            let next_minute = next_multiple(m, v);
            let next_hour = h + next_minute / 60;
            let minute = small_i64(next_minute % 60);
            if next_hour >= 24 {
                next_midnight.saturating_add(small_i64(next_hour % 24) * 3_600 + minute * 60)
            } else {
                base_midnight.saturating_add(small_i64(next_hour) * 3_600 + minute * 60)
            }
        }
        ResetUnit::Second => {
            let next_second = next_multiple(s, v);
            let next_minute = m + next_second / 60;
            let second = small_i64(next_second % 60);
            let next_hour = h + next_minute / 60;
            let minute = small_i64(next_minute % 60);
            let within = minute * 60 + second;
            if next_hour >= 24 {
                next_midnight.saturating_add(small_i64(next_hour % 24) * 3_600 + within)
            } else {
                base_midnight.saturating_add(small_i64(next_hour) * 3_600 + within)
            }
        }
        ResetUnit::Day => day_reset(v, local_now, base_midnight, tod),
        ResetUnit::Week => day_reset(v.saturating_mul(7), local_now, base_midnight, tod),
        ResetUnit::Month => month_reset(local_now, base_midnight, tod),
        // Unknown unit (`1hr`, `30min`, `1month`): next midnight, ignoring reset_time_of_day.
        ResetUnit::Unrecognized => next_midnight,
    }
}

/// `_handle_day_reset` (also used for weeks, with `value * 7`).
fn day_reset(days: u128, local_now: i64, base_midnight: i64, tod: i64) -> i64 {
    match days {
        0 => local_now,
        1 => next_occurrence(base_midnight, tod, local_now, DAY),
        7 => {
            // Python weekday(): Monday = 0. 1970-01-01 was a Thursday (3).
            let weekday = (base_midnight.div_euclid(DAY).rem_euclid(7) + 3) % 7;
            let days_until_monday = (7 - weekday) % 7;
            let upcoming_monday = base_midnight.saturating_add(days_until_monday * DAY);
            next_occurrence(upcoming_monday, tod, local_now, 7 * DAY)
        }
        30 => month_reset(local_now, base_midnight, tod),
        // Today's midnight + N days, at the reset time of day (never rolled: always ahead).
        n => base_midnight
            .saturating_add(small_i64(n).saturating_mul(DAY))
            .saturating_add(tod),
    }
}

/// `_next_occurrence`: the boundary day at `tod`, one period later if that is not after now.
fn next_occurrence(boundary_midnight: i64, tod: i64, local_now: i64, period: i64) -> i64 {
    let candidate = boundary_midnight.saturating_add(tod);
    if candidate <= local_now {
        candidate.saturating_add(period)
    } else {
        candidate
    }
}

/// `_handle_month_reset` (value 1): the 1st of this month at `tod` if still ahead, else the 1st
/// of next month at `tod`.
fn month_reset(local_now: i64, base_midnight: i64, tod: i64) -> i64 {
    let (y, m, _, _, _, _) = civil_from_unix(base_midnight);
    let candidate = unix_from_civil(y, m, 1, 0, 0, 0).saturating_add(tod);
    if candidate > local_now {
        return candidate;
    }
    let (ny, nm) = if m >= 12 {
        (y.saturating_add(1), 1)
    } else {
        (y, m + 1)
    };
    unix_from_civil(ny, nm, 1, 0, 0, 0).saturating_add(tod)
}

fn clamp_tod(reset_time_of_day_secs: u32) -> i64 {
    i64::from(reset_time_of_day_secs.min(86_399))
}

/// The spec [`next_reset_at`] uses for a [`ParsedDuration`]: the largest unit that divides the
/// length exactly (d, else h, else m, else s). See [`next_reset_at`] for what this loses.
fn spec_for_parsed(d: ParsedDuration) -> ResetSpec {
    match d {
        ParsedDuration::Months(n) => ResetSpec {
            value: u64::from(n),
            unit: ResetUnit::Month,
        },
        ParsedDuration::Seconds(n) => {
            let (value, unit) = if n == 0 {
                (0, ResetUnit::Second)
            } else if n % SECS_PER_DAY_U == 0 {
                (n / SECS_PER_DAY_U, ResetUnit::Day)
            } else if n % SECS_PER_HOUR == 0 {
                (n / SECS_PER_HOUR, ResetUnit::Hour)
            } else if n % SECS_PER_MINUTE == 0 {
                (n / SECS_PER_MINUTE, ResetUnit::Minute)
            } else {
                (n, ResetUnit::Second)
            };
            ResetSpec { value, unit }
        }
    }
}

/// Calendar-aligned `budget_reset_at` (§3.2, `get_next_standardized_reset_time`) for a parsed
/// duration, computed in the local time of `zone`, returned as unix seconds.
///
/// | duration | next reset |
/// |---|---|
/// | `Ns`/`Nm`/`Nh` | next multiple of N of second-of-minute / minute-of-hour / hour-of-day, carrying into the next minute/hour/day |
/// | `1d` | next `reset_time_of_day` |
/// | `7d`/`1w` | next Monday at `reset_time_of_day` (today if Monday and not yet passed) |
/// | `30d`/`1mo` | 1st of this month at `reset_time_of_day` if not passed, else 1st of next month |
/// | other `Nd`/`Nw` | today's midnight + N days (7N), at `reset_time_of_day` |
/// | 0 | now |
///
/// **Lossy**: `Seconds(n)` has forgotten its unit, so it is read with the largest unit that
/// divides it (86400 → `1d`, 3600 → `1h`, 300 → `5m`). LiteLLM distinguishes e.g. `24h`/`daily`
/// (next midnight, ignores `reset_time_of_day`) from `1d`, `48h` (next midnight) from `2d`,
/// `120m` (minute-aligned) from `2h`, `3600s` from `1h`, and `1hr`/`30min`/`1month` (unknown
/// unit → next midnight) from `1h`/`30m`/`1mo`. Use [`next_reset_at_str`] when the original
/// string is available.
///
/// `Months(n)` with n != 1 raises `ValueError` in LiteLLM (and is rejected by validation); here
/// it aligns like `1mo`. Results beyond Python's year 9999 (where LiteLLM raises) saturate.
/// `reset_time_of_day_secs` above 86399 is clamped to 23:59:59.
pub fn next_reset_at(
    d: ParsedDuration,
    now_unix_secs: i64,
    zone: &ZoneOffsets,
    reset_time_of_day_secs: u32,
) -> i64 {
    let local_now = zone.wall_at_utc(now_unix_secs);
    let local = reset_local(
        Some(spec_for_parsed(d)),
        local_now,
        clamp_tod(reset_time_of_day_secs),
    );
    zone.reset_instant(local, now_unix_secs)
}

/// Exact `get_next_standardized_reset_time(duration, now, tz, reset_time_of_day)` from the
/// original `budget_duration` string, failing open like LiteLLM's reset job: an unparseable
/// value (`"1H"`, `"abc"`) or an unknown unit (`"1hr"`, `"30min"`, `"1month"`) resets at the
/// next local midnight. Where LiteLLM raises instead (`Nmo` with N != 1; a date past year
/// 9999), this aligns like `1mo` / saturates; [`validate_budget_duration_at`] rejects those.
pub fn next_reset_at_str(
    duration: &str,
    now_unix_secs: i64,
    zone: &ZoneOffsets,
    reset_time_of_day_secs: u32,
) -> i64 {
    let local_now = zone.wall_at_utc(now_unix_secs);
    let spec = parse_reset_spec(normalize_duration(duration));
    let local = reset_local(spec, local_now, clamp_tod(reset_time_of_day_secs));
    zone.reset_instant(local, now_unix_secs)
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
fn parse_field(s: &str, max: u32) -> Option<u32> {
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

/// `±H`, `±HH`, `±H:MM`, `±HH:MM`, `±HHMM` → seconds east of UTC; |offset| < 24 h.
fn parse_signed_offset(s: &str) -> Option<i32> {
    let (sign, rest) = if let Some(r) = s.strip_prefix('+') {
        (1, r)
    } else if let Some(r) = s.strip_prefix('-') {
        (-1, r)
    } else {
        return None;
    };
    let (hh, mm) = if let Some((h, m)) = rest.split_once(':') {
        if m.len() != 2 {
            return None;
        }
        (h, m)
    } else if rest.len() == 4 {
        (rest.get(..2)?, rest.get(2..)?)
    } else {
        (rest, "0")
    };
    let h = parse_field(hh, 23)?;
    let m = parse_field(mm, 59)?;
    i32::try_from(h * 3_600 + m * 60).ok().map(|v| sign * v)
}

/// A time zone as the filter needs it: UTC offsets over time. `initial` applies before the first
/// transition; each transition `(unix_secs, offset)` starts a new offset at that instant.
/// Transitions are sorted by instant. A fixed zone has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ZoneOffsets {
    pub initial: i32,
    pub transitions: Vec<(i64, i32)>,
}

/// UTC, for defaults.
pub static UTC: ZoneOffsets = ZoneOffsets {
    initial: 0,
    transitions: Vec::new(),
};

impl ZoneOffsets {
    pub fn fixed(utc_offset_secs: i32) -> ZoneOffsets {
        ZoneOffsets {
            initial: utc_offset_secs,
            transitions: Vec::new(),
        }
    }

    /// The offset in effect at a UTC instant.
    pub fn offset_at_utc(&self, unix_secs: i64) -> i32 {
        let passed = self.transitions.partition_point(|(at, _)| *at <= unix_secs);
        self.offset_after(passed)
    }

    /// The offset after the first `passed` transitions.
    fn offset_after(&self, passed: usize) -> i32 {
        passed
            .checked_sub(1)
            .and_then(|i| self.transitions.get(i))
            .map_or(self.initial, |(_, off)| *off)
    }

    /// Local wall-clock seconds (`unix + offset`) at a UTC instant.
    pub fn wall_at_utc(&self, unix_secs: i64) -> i64 {
        unix_secs.saturating_add(i64::from(self.offset_at_utc(unix_secs)))
    }

    /// The UTC instant of a local wall-clock time, as `zoneinfo` resolves it with `fold=0`: a
    /// transition counts as passed once the wall clock reaches it read with the larger of the
    /// offsets around it. So a time that occurs twice (clocks going back) is its first
    /// occurrence, and a time that never occurs (clocks going forward) is read with the offset
    /// from before the jump (02:30 on a spring-forward night in New York is 07:30 UTC).
    pub fn utc_from_wall(&self, wall_secs: i64) -> i64 {
        self.utc_from_wall_fold(wall_secs, false)
    }

    /// `fold=1`: the second occurrence of a repeated time (the smaller offset decides).
    fn utc_from_wall_fold(&self, wall_secs: i64, fold: bool) -> i64 {
        let passed = self.transitions.partition_point(|(at, after)| {
            let before = self.offset_before(*at);
            let decisive = if fold {
                before.min(*after)
            } else {
                before.max(*after)
            };
            at.saturating_add(i64::from(decisive)) <= wall_secs
        });
        wall_secs.saturating_sub(i64::from(self.offset_after(passed)))
    }

    /// A reset at wall time `wall`, computed at `now`: [`Self::utc_from_wall`], except when that
    /// instant is not after `now` but the wall time's second occurrence is (a reset computed
    /// during the repeated hour of a fall-back night for a time in that hour). LiteLLM stores
    /// the past instant there and resets on every check until the hour ends; Tollgate takes
    /// the occurrence still ahead.
    fn reset_instant(&self, wall_secs: i64, now_unix_secs: i64) -> i64 {
        let first = self.utc_from_wall_fold(wall_secs, false);
        if first > now_unix_secs {
            return first;
        }
        let second = self.utc_from_wall_fold(wall_secs, true);
        if second > now_unix_secs {
            second
        } else {
            first
        }
    }

    /// The offset just before the transition at `at`.
    fn offset_before(&self, at: i64) -> i32 {
        let earlier = self.transitions.partition_point(|(t, _)| *t < at);
        self.offset_after(earlier)
    }
}

/// Zones that are a fixed offset today (no DST in current tzdata), so they can be honoured
/// without a tz database. Lower-case names.
const FIXED_ZONES: &[(&str, i32)] = &[
    ("est", -5 * 3_600),
    ("mst", -7 * 3_600),
    ("hst", -10 * 3_600),
    ("asia/kolkata", 19_800),
    ("asia/calcutta", 19_800),
    ("asia/kathmandu", 20_700),
    ("asia/dhaka", 6 * 3_600),
    ("asia/karachi", 5 * 3_600),
    ("asia/tashkent", 5 * 3_600),
    ("asia/dubai", 4 * 3_600),
    ("asia/tehran", 12_600),
    ("asia/riyadh", 3 * 3_600),
    ("europe/moscow", 3 * 3_600),
    ("europe/istanbul", 3 * 3_600),
    ("africa/nairobi", 3 * 3_600),
    ("africa/johannesburg", 2 * 3_600),
    ("africa/lagos", 3_600),
    ("asia/bangkok", 7 * 3_600),
    ("asia/jakarta", 7 * 3_600),
    ("asia/ho_chi_minh", 7 * 3_600),
    ("asia/shanghai", 8 * 3_600),
    ("asia/hong_kong", 8 * 3_600),
    ("asia/singapore", 8 * 3_600),
    ("asia/taipei", 8 * 3_600),
    ("asia/manila", 8 * 3_600),
    ("asia/kuala_lumpur", 8 * 3_600),
    ("australia/perth", 8 * 3_600),
    ("asia/tokyo", 9 * 3_600),
    ("asia/seoul", 9 * 3_600),
    ("australia/brisbane", 10 * 3_600),
    ("pacific/honolulu", -10 * 3_600),
    ("america/phoenix", -7 * 3_600),
    ("america/mexico_city", -6 * 3_600),
    ("america/bogota", -5 * 3_600),
    ("america/lima", -5 * 3_600),
    ("america/panama", -5 * 3_600),
    ("america/sao_paulo", -3 * 3_600),
    ("america/argentina/buenos_aires", -3 * 3_600),
];

const UTC_NAMES: &[&str] = &[
    "utc",
    "z",
    "zulu",
    "uct",
    "gmt",
    "gmt0",
    "universal",
    "greenwich",
    "etc/utc",
    "etc/uct",
    "etc/gmt",
    "etc/gmt0",
    "etc/universal",
    "etc/zulu",
    "etc/greenwich",
];

/// `litellm_settings.timezone` written as a fixed offset → seconds east of UTC, or `None` when
/// the zone needs a tz database (e.g. `"America/New_York"`, `"Europe/London"`; the sidecar
/// resolves those with its bundled one, `sidecar::timezone`).
///
/// Accepted (case-insensitive, surrounding whitespace ignored):
/// * `""` (LiteLLM: `timezone or "UTC"`), `UTC`, `Etc/UTC`, `GMT`, `Z`, `Zulu`, other UTC aliases;
/// * `Etc/GMT+N` / `Etc/GMT-N`: IANA, POSIX-inverted sign (`Etc/GMT+5` = UTC-5);
/// * a few zones that have no DST today (`Asia/Kolkata`, `Asia/Tokyo`, `EST`, ...);
/// * ISO offsets `+05:30`, `-08:00`, `+0530`, `+5`, and `UTC+2` / `GMT-03:30` (human sign).
///
/// Deviation: LiteLLM passes the string to `ZoneInfo`, which rejects `"+05:30"` and `"UTC+2"`
/// and so falls back to UTC; Tollgate honours them as written.
pub fn parse_utc_offset(tz: &str) -> Option<i32> {
    let lower = tz.trim().to_ascii_lowercase();
    if lower.is_empty() || UTC_NAMES.contains(&lower.as_str()) {
        return Some(0);
    }
    if let Some(rest) = lower.strip_prefix("etc/gmt") {
        let (sign, digits) = if let Some(d) = rest.strip_prefix('+') {
            (-1, d)
        } else if let Some(d) = rest.strip_prefix('-') {
            (1, d)
        } else {
            return None;
        };
        let n = i32::try_from(parse_field(digits, 14)?).ok()?;
        // IANA has Etc/GMT-14 .. Etc/GMT+12.
        if sign < 0 && n > 12 {
            return None;
        }
        return Some(sign * n * 3_600);
    }
    if let Some((_, off)) = FIXED_ZONES.iter().find(|(name, _)| *name == lower) {
        return Some(*off);
    }
    let rest = lower
        .strip_prefix("utc")
        .or_else(|| lower.strip_prefix("gmt"))
        .unwrap_or(&lower);
    parse_signed_offset(rest)
}

fn split_micros(unix_micros: i64) -> (i64, i64) {
    (
        unix_micros.div_euclid(MICROS_PER_SEC),
        unix_micros.rem_euclid(MICROS_PER_SEC),
    )
}

fn format_utc(unix_micros: i64, sep: char, suffix: &str) -> String {
    let (secs, micros) = split_micros(unix_micros);
    let (y, mo, d, h, mi, s) = civil_from_unix(secs);
    let frac = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{suffix}")
}

/// Python `str(datetime)` of an aware UTC datetime: `"2026-11-26 15:04:05.123456+00:00"`, or
/// `"2026-11-26 15:04:05+00:00"` when the microseconds are 0.
pub fn format_python_utc(unix_micros: i64) -> String {
    format_utc(unix_micros, ' ', "+00:00")
}

/// ISO 8601 UTC: `"2026-11-26T15:04:05.123456Z"`, fraction omitted when 0.
pub fn format_iso8601_utc(unix_micros: i64) -> String {
    format_utc(unix_micros, 'T', "Z")
}

/// Fixed-width ASCII decimal field.
fn fixed_digits(s: &str, len: usize) -> Option<u32> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `YYYY-MM-DD[(T|t| )HH:MM[:SS[(.|,)fraction]]][Z|z|±HH:MM|±HHMM|±HH]` into unix
/// microseconds. No suffix means UTC. The fraction may have 1-9 digits (truncated to
/// microseconds). Inverse of [`format_iso8601_utc`] and [`format_python_utc`].
pub fn parse_iso8601_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    let date = s.get(..10)?;
    let rest = s.get(10..)?;
    let y = i64::from(fixed_digits(date.get(..4)?, 4)?);
    let mo = fixed_digits(date.get(5..7)?, 2)?;
    let d = fixed_digits(date.get(8..10)?, 2)?;
    if date.get(4..5)? != "-" || date.get(7..8)? != "-" {
        return None;
    }
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    let (mut h, mut mi, mut sec, mut micros) = (0u32, 0u32, 0u32, 0i64);
    let mut offset: i64 = 0;
    if !rest.is_empty() {
        let mut chars = rest.chars();
        if !matches!(chars.next(), Some('T' | 't' | ' ')) {
            return None;
        }
        let time = chars.as_str();
        // Split off the zone designator.
        let zone_at = time.find(['Z', 'z', '+', '-']).unwrap_or(time.len());
        let (clock, zone) = (time.get(..zone_at)?, time.get(zone_at..)?);
        let (hms, frac) = match clock.split_once(['.', ',']) {
            Some((a, b)) => (a, Some(b)),
            None => (clock, None),
        };
        let mut fields = hms.split(':');
        h = fixed_digits(fields.next()?, 2)?;
        mi = fixed_digits(fields.next()?, 2)?;
        if let Some(f) = fields.next() {
            sec = fixed_digits(f, 2)?;
        }
        if fields.next().is_some() || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        if let Some(frac) = frac {
            if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mut v: i64 = 0;
            for b in frac.bytes().chain(std::iter::repeat(b'0')).take(6) {
                v = v * 10 + i64::from(b.wrapping_sub(b'0'));
            }
            micros = v;
        }
        match zone {
            "" | "Z" | "z" => {}
            z => {
                let (sign, body) = if let Some(b) = z.strip_prefix('+') {
                    (1i64, b)
                } else if let Some(b) = z.strip_prefix('-') {
                    (-1i64, b)
                } else {
                    return None;
                };
                let (zh, zm) = match body.split_once(':') {
                    Some((a, b)) => (fixed_digits(a, 2)?, fixed_digits(b, 2)?),
                    None if body.len() == 4 => (
                        fixed_digits(body.get(..2)?, 2)?,
                        fixed_digits(body.get(2..)?, 2)?,
                    ),
                    None => (fixed_digits(body, 2)?, 0),
                };
                if zh > 23 || zm > 59 {
                    return None;
                }
                offset = sign * (i64::from(zh) * 3_600 + i64::from(zm) * 60);
            }
        }
    }
    let secs = unix_from_civil(y, mo, d, h, mi, sec).checked_sub(offset)?;
    secs.checked_mul(MICROS_PER_SEC)?.checked_add(micros)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ParsedDuration::{Months, Seconds};

    /// UTC civil → unix, for readable tests.
    fn u(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        unix_from_civil(y, mo, d, h, mi, s)
    }

    fn z(off: i32) -> ZoneOffsets {
        ZoneOffsets::fixed(off)
    }

    fn hms(h: u32, m: u32, s: u32) -> u32 {
        h * 3600 + m * 60 + s
    }

    /// Reset from the string in UTC with midnight reset time.
    fn r(dur: &str, now: i64) -> i64 {
        next_reset_at_str(dur, now, &z(0), 0)
    }

    // ---------------------------------------------------------------- parse_duration

    #[test]
    fn parse_basic_units() {
        assert_eq!(parse_duration("30s"), Ok(Seconds(30)));
        assert_eq!(parse_duration("5m"), Ok(Seconds(300)));
        assert_eq!(parse_duration("2h"), Ok(Seconds(7_200)));
        assert_eq!(parse_duration("1d"), Ok(Seconds(86_400)));
        assert_eq!(parse_duration("1w"), Ok(Seconds(604_800)));
        assert_eq!(parse_duration("1mo"), Ok(Months(1)));
        assert_eq!(parse_duration("2mo"), Ok(Months(2)));
        assert_eq!(parse_duration("0d"), Ok(Seconds(0)));
        assert_eq!(parse_duration("007h"), Ok(Seconds(25_200)));
        assert_eq!(parse_duration("30d"), Ok(Seconds(2_592_000)));
    }

    #[test]
    fn parse_word_aliases() {
        assert_eq!(parse_duration("hourly"), Ok(Seconds(3_600)));
        assert_eq!(parse_duration("daily"), Ok(Seconds(86_400)));
        assert_eq!(parse_duration("weekly"), Ok(Seconds(604_800)));
        assert_eq!(parse_duration("monthly"), Ok(Seconds(2_592_000)));
        assert_eq!(parse_duration(" Daily\n"), Ok(Seconds(86_400)));
        assert_eq!(parse_duration("HOURLY"), Ok(Seconds(3_600)));
        assert_eq!(parse_duration("wEeKlY"), Ok(Seconds(604_800)));
        // Python str.strip() also strips U+001C..U+001F.
        assert_eq!(
            parse_duration("\u{1f}monthly\u{1c}"),
            Ok(Seconds(2_592_000))
        );
        assert_eq!(parse_duration("daily2"), Err(DurationError::InvalidFormat));
        assert_eq!(parse_duration("day"), Err(DurationError::InvalidFormat));
    }

    #[test]
    fn parse_prefix_match_ignores_trailing() {
        assert_eq!(parse_duration("1hr"), Ok(Seconds(3_600)));
        assert_eq!(parse_duration("30min"), Ok(Seconds(1_800)));
        assert_eq!(parse_duration("1month"), Ok(Months(1)));
        assert_eq!(parse_duration("1ms"), Ok(Seconds(60))); // quirk: 'm' then junk
        assert_eq!(parse_duration("1h "), Ok(Seconds(3_600)));
        assert_eq!(parse_duration("2days"), Ok(Seconds(172_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Seconds(3_600)));
    }

    #[test]
    fn parse_unsupported_unit() {
        for s in [
            "30", "1H", "1.5h", "5x", "1 h", "1D", "1M", "1MO", "12", "1Mo", "1-h",
        ] {
            assert_eq!(
                parse_duration(s),
                Err(DurationError::UnsupportedUnit),
                "{s:?}"
            );
        }
    }

    #[test]
    fn parse_invalid_format() {
        for s in [
            " 1h",
            "h",
            "",
            "   ",
            "-1h",
            "+1h",
            "mo",
            "d1",
            "\u{ff11}h",
            "\t1h",
        ] {
            assert_eq!(
                parse_duration(s),
                Err(DurationError::InvalidFormat),
                "{s:?}"
            );
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

    // ---------------------------------------------------------------- calendar

    #[test]
    fn civil_known_points() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(-1), (1969, 12, 31, 23, 59, 59));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_from_unix(1_767_225_600), (2026, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(253_402_300_799), (9999, 12, 31, 23, 59, 59));
        assert_eq!(civil_from_unix(PY_DATETIME_START), (1, 1, 1, 0, 0, 0));
        assert_eq!(u(2026, 1, 1, 0, 0, 0), VALIDATION_REFERENCE_NOW);
        assert_eq!(u(10_000, 1, 1, 0, 0, 0), PY_DATETIME_END);
        assert_eq!(u(1, 1, 1, 0, 0, 0), PY_DATETIME_START);
        assert_eq!(u(2026, 11, 26, 15, 4, 5), 1_795_705_445);
        // Carry of out-of-range day/second.
        assert_eq!(u(2026, 1, 32, 0, 0, 0), u(2026, 2, 1, 0, 0, 0));
        assert_eq!(u(2026, 1, 1, 0, 0, 86_400), u(2026, 1, 2, 0, 0, 0));
    }

    #[test]
    fn civil_round_trip_many_days() {
        let mut day = -800_000i64;
        while day < 3_000_000 {
            let t = day * 86_400 + 45_296; // 12:34:56
            let (y, m, d, hh, mm, ss) = civil_from_unix(t);
            assert!((1..=12).contains(&m));
            assert!(d >= 1 && d <= days_in_month(y, m));
            assert_eq!((hh, mm, ss), (12, 34, 56));
            assert_eq!(unix_from_civil(y, m, d, hh, mm, ss), t);
            day += 997;
        }
        // Consecutive days are consecutive dates across a leap-year February.
        let mut t = u(2024, 2, 27, 0, 0, 0);
        let expect = [(2, 27), (2, 28), (2, 29), (3, 1), (3, 2)];
        for (m, d) in expect {
            let (_, mm, dd, _, _, _) = civil_from_unix(t);
            assert_eq!((mm, dd), (m, d));
            t += 86_400;
        }
    }

    #[test]
    fn civil_extremes_do_not_panic() {
        let _ = civil_from_unix(i64::MIN);
        let _ = civil_from_unix(i64::MAX);
        assert_eq!(unix_from_civil(i64::MAX, 12, 31, 23, 59, 59), i64::MAX);
        assert_eq!(unix_from_civil(i64::MIN, 1, 1, 0, 0, 0), i64::MIN);
        let _ = unix_from_civil(2026, 0, 0, u32::MAX, u32::MAX, u32::MAX);
        let _ = unix_from_civil(2026, u32::MAX, u32::MAX, 0, 0, 0);
    }

    #[test]
    fn leap_years() {
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2026, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2026, 4), 30);
        assert_eq!(days_in_month(2026, 12), 31);
    }

    // ---------------------------------------------------------------- add_duration

    #[test]
    fn add_seconds() {
        let t = u(2026, 11, 26, 15, 4, 5);
        assert_eq!(add_duration(t, Seconds(3_600)), t + 3_600);
        assert_eq!(add_duration(t, Seconds(0)), t);
        assert_eq!(add_duration(-10, Seconds(5)), -5);
        assert_eq!(add_duration(i64::MAX - 5, Seconds(u64::MAX)), i64::MAX);
        assert_eq!(add_duration(0, Seconds(u64::MAX)), i64::MAX);
    }

    #[test]
    fn add_months_clamps_day() {
        let at = |y, m, d| u(y, m, d, 10, 20, 30);
        assert_eq!(add_duration(at(2026, 1, 31), Months(1)), at(2026, 2, 28));
        assert_eq!(add_duration(at(2024, 1, 31), Months(1)), at(2024, 2, 29));
        assert_eq!(add_duration(at(2100, 1, 31), Months(1)), at(2100, 2, 28));
        assert_eq!(add_duration(at(2000, 1, 31), Months(1)), at(2000, 2, 29));
        assert_eq!(add_duration(at(2026, 3, 31), Months(1)), at(2026, 4, 30));
        assert_eq!(add_duration(at(2025, 12, 31), Months(2)), at(2026, 2, 28));
        assert_eq!(add_duration(at(2024, 2, 29), Months(12)), at(2025, 2, 28));
        assert_eq!(add_duration(at(2026, 1, 15), Months(13)), at(2027, 2, 15));
        assert_eq!(add_duration(at(2026, 12, 15), Months(1)), at(2027, 1, 15));
        assert_eq!(add_duration(at(2026, 5, 15), Months(0)), at(2026, 5, 15));
        assert_eq!(add_duration(at(2026, 1, 1), Months(1200)), at(2126, 1, 1));
        let _ = add_duration(i64::MAX, Months(u32::MAX));
        let _ = add_duration(i64::MIN, Months(u32::MAX));
    }

    #[test]
    fn checked_add_matches_python_range() {
        let t = u(2026, 11, 26, 15, 4, 5);
        assert_eq!(checked_add_duration(t, Seconds(60)), Some(t + 60));
        assert_eq!(
            checked_add_duration(t, Months(1)),
            Some(u(2026, 12, 26, 15, 4, 5))
        );
        assert_eq!(checked_add_duration(t, Seconds(u64::MAX)), None);
        assert_eq!(checked_add_duration(t, Seconds(86_400 * 3_000_000)), None);
        assert_eq!(checked_add_duration(t, Months(100_000)), None);
        assert_eq!(
            checked_add_duration(u(9999, 12, 31, 23, 59, 58), Seconds(1)),
            Some(253_402_300_799)
        );
        assert_eq!(
            checked_add_duration(u(9999, 12, 31, 23, 59, 59), Seconds(1)),
            None
        );
    }

    // ---------------------------------------------------------------- reset table
    // Thursday 2026-11-26 15:04:05 UTC is the reference instant.

    fn thu() -> i64 {
        u(2026, 11, 26, 15, 4, 5)
    }

    #[test]
    fn reset_seconds() {
        assert_eq!(r("10s", thu()), u(2026, 11, 26, 15, 4, 10));
        assert_eq!(r("30s", thu()), u(2026, 11, 26, 15, 4, 30));
        assert_eq!(r("1s", thu()), u(2026, 11, 26, 15, 4, 6));
        // Exactly on a boundary: the next one.
        assert_eq!(
            r("10s", u(2026, 11, 26, 15, 4, 10)),
            u(2026, 11, 26, 15, 4, 20)
        );
        // Carry into the next minute.
        assert_eq!(
            r("10s", u(2026, 11, 26, 15, 4, 59)),
            u(2026, 11, 26, 15, 5, 0)
        );
        // Quirk: 45s realigns every minute: 50 -> 90 = next minute :30.
        assert_eq!(
            r("45s", u(2026, 11, 26, 15, 4, 50)),
            u(2026, 11, 26, 15, 5, 30)
        );
        // Carry into the next day.
        assert_eq!(
            r("30s", u(2026, 11, 26, 23, 59, 45)),
            u(2026, 11, 27, 0, 0, 0)
        );
        // Value beyond a minute: 3600s at :04:05 -> 5 +3600-5 = 3600 s -> +60 min, second 0.
        assert_eq!(r("3600s", thu()), u(2026, 11, 26, 16, 4, 0));
        assert_eq!(r("0s", thu()), thu());
    }

    #[test]
    fn reset_minutes() {
        assert_eq!(r("5m", thu()), u(2026, 11, 26, 15, 5, 0));
        assert_eq!(r("1m", thu()), u(2026, 11, 26, 15, 5, 0));
        assert_eq!(r("15m", thu()), u(2026, 11, 26, 15, 15, 0));
        assert_eq!(
            r("5m", u(2026, 11, 26, 15, 5, 0)),
            u(2026, 11, 26, 15, 10, 0)
        );
        // Quirk: 7m realigns every hour (58 -> 63 -> 16:03).
        assert_eq!(
            r("7m", u(2026, 11, 26, 15, 58, 0)),
            u(2026, 11, 26, 16, 3, 0)
        );
        assert_eq!(
            r("30m", u(2026, 11, 26, 23, 45, 0)),
            u(2026, 11, 27, 0, 0, 0)
        );
        // 120m at 11:25: 25 -> 120 -> 13:00 (whereas 2h -> 12:00).
        assert_eq!(
            r("120m", u(2026, 11, 26, 11, 25, 0)),
            u(2026, 11, 26, 13, 0, 0)
        );
        assert_eq!(
            r("2h", u(2026, 11, 26, 11, 25, 0)),
            u(2026, 11, 26, 12, 0, 0)
        );
        assert_eq!(r("0m", thu()), thu());
    }

    #[test]
    fn reset_hours() {
        assert_eq!(r("1h", thu()), u(2026, 11, 26, 16, 0, 0));
        assert_eq!(r("2h", thu()), u(2026, 11, 26, 16, 0, 0));
        assert_eq!(r("6h", thu()), u(2026, 11, 26, 18, 0, 0));
        assert_eq!(
            r("1h", u(2026, 11, 26, 15, 0, 0)),
            u(2026, 11, 26, 16, 0, 0)
        );
        assert_eq!(r("hourly", thu()), u(2026, 11, 26, 16, 0, 0));
        // 5h at 22:10: 22 -> 25 -> next day 01:00.
        assert_eq!(
            r("5h", u(2026, 11, 26, 22, 10, 0)),
            u(2026, 11, 27, 1, 0, 0)
        );
        // 24h / 48h: next midnight, also exactly at midnight.
        assert_eq!(r("24h", thu()), u(2026, 11, 27, 0, 0, 0));
        assert_eq!(r("24h", u(2026, 11, 27, 0, 0, 0)), u(2026, 11, 28, 0, 0, 0));
        assert_eq!(r("48h", thu()), u(2026, 11, 27, 0, 0, 0));
        assert_eq!(r("daily", thu()), u(2026, 11, 27, 0, 0, 0));
        // Source-exact: N >= 24 -> next day at (N % 24):00 (36h at 01:00 -> 12:00 next day).
        assert_eq!(
            r("36h", u(2026, 11, 26, 1, 0, 0)),
            u(2026, 11, 27, 12, 0, 0)
        );
        assert_eq!(r("168h", thu()), u(2026, 11, 27, 0, 0, 0));
        // 24h ignores reset_time_of_day.
        assert_eq!(
            next_reset_at_str("24h", thu(), &z(0), hms(9, 0, 0)),
            u(2026, 11, 27, 0, 0, 0)
        );
        assert_eq!(r("0h", thu()), thu());
    }

    #[test]
    fn reset_huge_hours_match_python_bignum() {
        // 10^20 - 1 ≡ 15 (mod 24); at 15:04 Python gives next day 15:00.
        assert_eq!(r("99999999999999999999h", thu()), u(2026, 11, 27, 15, 0, 0));
        // v = 10^20 - 1 ≡ 639 (mod 1440): minute 39, hour 15 + 10 = 25 -> next day 01:39.
        assert_eq!(
            r("99999999999999999999m", u(2026, 11, 26, 15, 0, 0)),
            u(2026, 11, 27, 1, 39, 0)
        );
        let _ = r(&("9".repeat(5_000) + "s"), thu());
        let _ = r(&("9".repeat(5_000) + "d"), thu());
    }

    #[test]
    fn reset_one_day() {
        assert_eq!(r("1d", thu()), u(2026, 11, 27, 0, 0, 0));
        assert_eq!(r("1d", u(2026, 11, 27, 0, 0, 0)), u(2026, 11, 28, 0, 0, 0));
        let nine = hms(9, 0, 0);
        assert_eq!(
            next_reset_at_str("1d", thu(), &z(0), nine),
            u(2026, 11, 27, 9, 0, 0)
        );
        assert_eq!(
            next_reset_at_str("1d", u(2026, 11, 26, 8, 0, 0), &z(0), nine),
            u(2026, 11, 26, 9, 0, 0)
        );
        assert_eq!(
            next_reset_at_str("1d", u(2026, 11, 26, 9, 0, 0), &z(0), nine),
            u(2026, 11, 27, 9, 0, 0)
        );
        // Month and year end.
        assert_eq!(r("1d", u(2026, 12, 31, 23, 0, 0)), u(2027, 1, 1, 0, 0, 0));
    }

    #[test]
    fn reset_weekly_next_monday() {
        // Thursday -> Monday 2026-11-30.
        assert_eq!(r("7d", thu()), u(2026, 11, 30, 0, 0, 0));
        assert_eq!(r("1w", thu()), u(2026, 11, 30, 0, 0, 0));
        assert_eq!(r("weekly", thu()), u(2026, 11, 30, 0, 0, 0));
        // Sunday last second -> Monday.
        assert_eq!(
            r("7d", u(2026, 11, 29, 23, 59, 59)),
            u(2026, 11, 30, 0, 0, 0)
        );
        // Monday exactly at the reset time -> next Monday.
        assert_eq!(r("7d", u(2026, 11, 30, 0, 0, 0)), u(2026, 12, 7, 0, 0, 0));
        let nine = hms(9, 0, 0);
        // Monday before the reset time -> today; after -> next week.
        assert_eq!(
            next_reset_at_str("7d", u(2026, 11, 30, 8, 0, 0), &z(0), nine),
            u(2026, 11, 30, 9, 0, 0)
        );
        assert_eq!(
            next_reset_at_str("1w", u(2026, 11, 30, 10, 0, 0), &z(0), nine),
            u(2026, 12, 7, 9, 0, 0)
        );
        // Sunday at noon with a 09:00 reset -> Monday 09:00.
        assert_eq!(
            next_reset_at_str("7d", u(2026, 11, 29, 12, 0, 0), &z(0), nine),
            u(2026, 11, 30, 9, 0, 0)
        );
        // Across a year end: Thu 2026-12-31 -> Mon 2027-01-04.
        assert_eq!(r("7d", u(2026, 12, 31, 12, 0, 0)), u(2027, 1, 4, 0, 0, 0));
        // Before 1970 as well (1969-12-31 was a Wednesday -> Mon 1970-01-05).
        assert_eq!(r("7d", u(1969, 12, 31, 12, 0, 0)), u(1970, 1, 5, 0, 0, 0));
    }

    #[test]
    fn reset_monthly_first_of_month() {
        assert_eq!(r("30d", thu()), u(2026, 12, 1, 0, 0, 0));
        assert_eq!(r("1mo", thu()), u(2026, 12, 1, 0, 0, 0));
        assert_eq!(r("monthly", thu()), u(2026, 12, 1, 0, 0, 0));
        // Exactly at the 1st 00:00 -> next month.
        assert_eq!(r("30d", u(2026, 12, 1, 0, 0, 0)), u(2027, 1, 1, 0, 0, 0));
        // Year rollover.
        assert_eq!(r("1mo", u(2026, 12, 15, 0, 0, 0)), u(2027, 1, 1, 0, 0, 0));
        // Month end (Feb in a leap year).
        assert_eq!(r("1mo", u(2028, 2, 29, 23, 59, 59)), u(2028, 3, 1, 0, 0, 0));
        // The 1st before the reset time -> today.
        let six = hms(6, 0, 0);
        assert_eq!(
            next_reset_at_str("30d", u(2026, 12, 1, 5, 0, 0), &z(0), six),
            u(2026, 12, 1, 6, 0, 0)
        );
        assert_eq!(
            next_reset_at_str("1mo", u(2026, 12, 1, 7, 0, 0), &z(0), six),
            u(2027, 1, 1, 6, 0, 0)
        );
    }

    #[test]
    fn reset_other_days_and_weeks() {
        assert_eq!(r("2d", thu()), u(2026, 11, 28, 0, 0, 0));
        assert_eq!(
            next_reset_at_str("2d", thu(), &z(0), hms(9, 0, 0)),
            u(2026, 11, 28, 9, 0, 0)
        );
        assert_eq!(r("10d", thu()), u(2026, 12, 6, 0, 0, 0));
        assert_eq!(r("14d", thu()), u(2026, 12, 10, 0, 0, 0));
        assert_eq!(r("2w", thu()), u(2026, 12, 10, 0, 0, 0));
        assert_eq!(r("3w", thu()), u(2026, 12, 17, 0, 0, 0));
        assert_eq!(r("31d", thu()), u(2026, 12, 27, 0, 0, 0));
        assert_eq!(r("365d", u(2028, 1, 1, 0, 0, 0)), u(2028, 12, 31, 0, 0, 0));
        assert_eq!(r("0d", thu()), thu());
        assert_eq!(r("0w", thu()), thu());
    }

    #[test]
    fn reset_unknown_unit_and_unparseable_go_to_next_midnight() {
        let midnight = u(2026, 11, 27, 0, 0, 0);
        for s in [
            "1hr", "30min", "1month", "2month", "1dd", "1H", "abc", "", " 1h", "30",
        ] {
            assert_eq!(
                next_reset_at_str(s, thu(), &z(0), hms(9, 0, 0)),
                midnight,
                "{s:?}"
            );
        }
    }

    #[test]
    fn reset_with_utc_offset() {
        let ist = 19_800; // +05:30
                          // 20:00Z = 01:30 Fri 27th local. 1d -> local Sat 28th 00:00 = 27th 18:30Z.
        let now = u(2026, 11, 26, 20, 0, 0);
        assert_eq!(
            next_reset_at_str("1d", now, &z(ist), 0),
            u(2026, 11, 27, 18, 30, 0)
        );
        assert_eq!(
            next_reset_at(Seconds(86_400), now, &z(ist), 0),
            u(2026, 11, 27, 18, 30, 0)
        );
        // 7d -> local Mon 30th 00:00 = 29th 18:30Z.
        assert_eq!(
            next_reset_at_str("7d", now, &z(ist), 0),
            u(2026, 11, 29, 18, 30, 0)
        );
        // 1h: local 20:34:05 -> 21:00 local = 15:30Z.
        assert_eq!(
            next_reset_at_str("1h", thu(), &z(ist), 0),
            u(2026, 11, 26, 15, 30, 0)
        );
        // -08:00: 2026-12-01T03:00Z is still Nov 30 19:00 locally -> Dec 1 00:00 local = 08:00Z.
        let pst = -28_800;
        let now = u(2026, 12, 1, 3, 0, 0);
        assert_eq!(
            next_reset_at_str("1mo", now, &z(pst), 0),
            u(2026, 12, 1, 8, 0, 0)
        );
        assert_eq!(
            next_reset_at(Months(1), now, &z(pst), 0),
            u(2026, 12, 1, 8, 0, 0)
        );
        // In UTC the same instant already passed Dec 1 00:00.
        assert_eq!(
            next_reset_at_str("1mo", now, &z(0), 0),
            u(2027, 1, 1, 0, 0, 0)
        );
        // Weekday is the local one: Mon 2026-11-30 02:00Z is Sun 18:00 in -08:00.
        assert_eq!(
            next_reset_at_str("7d", u(2026, 11, 30, 2, 0, 0), &z(pst), 0),
            u(2026, 11, 30, 8, 0, 0)
        );
    }

    #[test]
    fn next_reset_at_parsed_maps_units() {
        let nine = hms(9, 0, 0);
        assert_eq!(next_reset_at(Seconds(30), thu(), &z(0), 0), r("30s", thu()));
        assert_eq!(next_reset_at(Seconds(300), thu(), &z(0), 0), r("5m", thu()));
        assert_eq!(
            next_reset_at(Seconds(3_600), thu(), &z(0), 0),
            r("1h", thu())
        );
        assert_eq!(
            next_reset_at(Seconds(7_200), thu(), &z(0), 0),
            r("2h", thu())
        );
        assert_eq!(
            next_reset_at(Seconds(86_400), thu(), &z(0), nine),
            next_reset_at_str("1d", thu(), &z(0), nine)
        );
        assert_eq!(
            next_reset_at(Seconds(604_800), thu(), &z(0), 0),
            r("7d", thu())
        );
        assert_eq!(
            next_reset_at(Seconds(1_209_600), thu(), &z(0), 0),
            r("14d", thu())
        );
        assert_eq!(
            next_reset_at(Seconds(2_592_000), thu(), &z(0), 0),
            r("30d", thu())
        );
        assert_eq!(next_reset_at(Months(1), thu(), &z(0), 0), r("1mo", thu()));
        assert_eq!(next_reset_at(Seconds(90), thu(), &z(0), 0), r("90s", thu()));
        assert_eq!(next_reset_at(Seconds(0), thu(), &z(0), 0), thu());
        // Months other than 1 align like 1mo (LiteLLM raises).
        assert_eq!(
            next_reset_at(Months(2), thu(), &z(0), 0),
            u(2026, 12, 1, 0, 0, 0)
        );
    }

    #[test]
    fn reset_extremes_do_not_panic() {
        for now in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            for off in [i32::MIN, -50_400, 0, 50_400, i32::MAX] {
                for tod in [0, 86_399, u32::MAX] {
                    for d in [
                        Seconds(0),
                        Seconds(1),
                        Seconds(u64::MAX),
                        Seconds(86_400),
                        Seconds(604_800),
                        Seconds(2_592_000),
                        Seconds(86_400 * 1_000_000_000),
                        Months(0),
                        Months(1),
                        Months(u32::MAX),
                    ] {
                        let _ = next_reset_at(d, now, &z(off), tod);
                    }
                    for s in ["1mo", "7d", "99999999999999999999d", "5h", "45s", "7m", "x"] {
                        let _ = next_reset_at_str(s, now, &z(off), tod);
                        let _ = validate_budget_duration_at(s, now, &z(off), tod);
                    }
                }
            }
        }
        // Past year 9999: saturates or lands beyond, never panics.
        let late = u(9999, 12, 31, 12, 0, 0);
        assert!(r("2d", late) > late);
    }

    #[test]
    fn reset_time_of_day_is_clamped() {
        assert_eq!(
            next_reset_at_str("1d", thu(), &z(0), 200_000),
            u(2026, 11, 26, 23, 59, 59)
        );
    }

    // ---------------------------------------------------------------- time of day, tz

    #[test]
    fn time_of_day() {
        assert_eq!(parse_time_of_day("00:00"), Some(0));
        assert_eq!(parse_time_of_day("12:00"), Some(43_200));
        assert_eq!(parse_time_of_day("9:05"), Some(32_700));
        assert_eq!(parse_time_of_day("09:5"), Some(32_700));
        assert_eq!(parse_time_of_day("23:59:59"), Some(86_399));
        assert_eq!(parse_time_of_day("1:2:3"), Some(3_723));
        assert_eq!(parse_time_of_day("00:00:00"), Some(0));
        assert_eq!(parse_time_of_day(""), Some(0));
        for s in [
            "24:00",
            "12:60",
            "12:00:60",
            "12:00:61",
            "12",
            "12:00:00:00",
            " 12:00",
            "12:00 ",
            "123:00",
            "12:345",
            "ab:cd",
            "-1:00",
            "+1:00",
            "12:",
            ":30",
            "12::00",
            "12:00:",
            "\u{ff11}2:00",
        ] {
            assert_eq!(parse_time_of_day(s), None, "{s:?}");
        }
    }

    #[test]
    fn utc_offsets() {
        for s in [
            "UTC", "utc", "Etc/UTC", "Z", "GMT", "", " UTC ", "Etc/GMT", "Zulu", "UTC+0",
        ] {
            assert_eq!(parse_utc_offset(s), Some(0), "{s:?}");
        }
        assert_eq!(parse_utc_offset("+05:30"), Some(19_800));
        assert_eq!(parse_utc_offset("-08:00"), Some(-28_800));
        assert_eq!(parse_utc_offset("+0530"), Some(19_800));
        assert_eq!(parse_utc_offset("+5"), Some(18_000));
        assert_eq!(parse_utc_offset("-03"), Some(-10_800));
        assert_eq!(parse_utc_offset("UTC+2"), Some(7_200));
        assert_eq!(parse_utc_offset("UTC-03:30"), Some(-12_600));
        assert_eq!(parse_utc_offset("GMT+5:45"), Some(20_700));
        assert_eq!(parse_utc_offset("Etc/GMT+5"), Some(-18_000));
        assert_eq!(parse_utc_offset("Etc/GMT-14"), Some(50_400));
        assert_eq!(parse_utc_offset("Etc/GMT+12"), Some(-43_200));
        assert_eq!(parse_utc_offset("Asia/Kolkata"), Some(19_800));
        assert_eq!(parse_utc_offset("asia/tokyo"), Some(32_400));
        assert_eq!(parse_utc_offset("EST"), Some(-18_000));
        for s in [
            "America/New_York",
            "Europe/London",
            "US/Eastern",
            "Etc/GMT+13",
            "Etc/GMT-15",
            "Etc/GMT5",
            "+24:00",
            "+05:60",
            "+5:3",
            "UTC+",
            "foo",
            "05:30",
            "+123",
        ] {
            assert_eq!(parse_utc_offset(s), None, "{s:?}");
        }
    }

    // ---------------------------------------------------------------- formatting

    #[test]
    fn format_python() {
        assert_eq!(format_python_utc(0), "1970-01-01 00:00:00+00:00");
        let t = thu() * 1_000_000;
        assert_eq!(format_python_utc(t), "2026-11-26 15:04:05+00:00");
        assert_eq!(
            format_python_utc(t + 123_456),
            "2026-11-26 15:04:05.123456+00:00"
        );
        assert_eq!(format_python_utc(t + 1), "2026-11-26 15:04:05.000001+00:00");
        assert_eq!(format_python_utc(-1), "1969-12-31 23:59:59.999999+00:00");
        let _ = format_python_utc(i64::MIN);
        let _ = format_python_utc(i64::MAX);
    }

    #[test]
    fn format_iso() {
        assert_eq!(format_iso8601_utc(0), "1970-01-01T00:00:00Z");
        let t = thu() * 1_000_000;
        assert_eq!(format_iso8601_utc(t), "2026-11-26T15:04:05Z");
        assert_eq!(
            format_iso8601_utc(t + 123_456),
            "2026-11-26T15:04:05.123456Z"
        );
        assert_eq!(
            format_iso8601_utc(t + 500_000),
            "2026-11-26T15:04:05.500000Z"
        );
        let _ = format_iso8601_utc(i64::MIN);
        let _ = format_iso8601_utc(i64::MAX);
    }

    #[test]
    fn parse_iso_round_trips() {
        let samples = [
            0,
            -1,
            1,
            thu() * 1_000_000,
            thu() * 1_000_000 + 123_456,
            u(2024, 2, 29, 23, 59, 59) * 1_000_000 + 999_999,
            u(1, 1, 1, 0, 0, 0) * 1_000_000,
            u(9999, 12, 31, 23, 59, 59) * 1_000_000 + 999_999,
        ];
        for t in samples {
            assert_eq!(parse_iso8601_utc(&format_iso8601_utc(t)), Some(t), "{t}");
            assert_eq!(parse_iso8601_utc(&format_python_utc(t)), Some(t), "{t}");
        }
    }

    #[test]
    fn parse_iso_variants() {
        let t = thu() * 1_000_000;
        assert_eq!(parse_iso8601_utc("2026-11-26T15:04:05"), Some(t));
        assert_eq!(parse_iso8601_utc("2026-11-26T15:04:05+00:00"), Some(t));
        assert_eq!(parse_iso8601_utc("2026-11-26T15:04:05-00:00"), Some(t));
        assert_eq!(parse_iso8601_utc("2026-11-26t15:04:05z"), Some(t));
        assert_eq!(parse_iso8601_utc("2026-11-26 15:04:05"), Some(t));
        assert_eq!(
            parse_iso8601_utc("2026-11-26T15:04:05.5Z"),
            Some(t + 500_000)
        );
        assert_eq!(
            parse_iso8601_utc("2026-11-26T15:04:05,25Z"),
            Some(t + 250_000)
        );
        assert_eq!(
            parse_iso8601_utc("2026-11-26T15:04:05.123456789Z"),
            Some(t + 123_456)
        );
        assert_eq!(parse_iso8601_utc("2026-11-26T20:34:05+05:30"), Some(t));
        assert_eq!(parse_iso8601_utc("2026-11-26T20:34:05+0530"), Some(t));
        assert_eq!(parse_iso8601_utc("2026-11-26T07:04:05-08"), Some(t));
        assert_eq!(parse_iso8601_utc("2026-11-26T15:04Z"), Some(t - 5_000_000));
        assert_eq!(
            parse_iso8601_utc("2026-11-26"),
            Some(u(2026, 11, 26, 0, 0, 0) * 1_000_000)
        );
        assert_eq!(parse_iso8601_utc(" 2026-11-26T15:04:05Z\n"), Some(t));
    }

    #[test]
    fn parse_iso_rejects() {
        for s in [
            "",
            "abc",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T15:60:00Z",
            "2026-11-26T15:04:60Z",
            "2026-11-26T15:04:05ZZ",
            "2026-11-26T15:04:05Zjunk",
            "2026-11-26T15:04:05.Z",
            "2026-11-26T15:04:05.1234567890Z",
            "2026-11-26T15:04:05+25:00",
            "2026-11-26T15:04:05+05:3",
            "2026-11-26X15:04:05Z",
            "2026/11/26T15:04:05Z",
            "26-11-26T15:04:05Z",
            "2026-11-26T15:04:05:01Z",
            "2026-11-26T1:04:05Z",
            "2026-11-26T",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
            "2026-11-2\u{e9}",
        ] {
            assert_eq!(parse_iso8601_utc(s), None, "{s:?}");
        }
        assert!(parse_iso8601_utc("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_iso8601_utc("2026-02-29T00:00:00Z"), None);
    }
}
