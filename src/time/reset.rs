//! `budget_reset_at`: the next calendar-aligned reset of a budget period
//! (`get_next_standardized_reset_time`), in a zone's local time.

use super::*;

/// The unit as seen by the reset-time parser `re.match(r"(\d+)([a-z]+)", s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResetUnit {
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
pub(super) struct ResetSpec {
    /// The value. When the decimal number overflows `u64`, a stand-in with the same residue
    /// modulo 86400 and far larger than any threshold: this gives the exact Python result for
    /// s/m/h (which only depends on the value mod 86400 once it exceeds 86400) and still
    /// overflows for d/w and is still != 1 for mo.
    pub(super) value: u64,
    pub(super) unit: ResetUnit,
}

/// Stand-in base for overflowing values, see [`ResetSpec::value`].
const HUGE_VALUE_BASE: u64 = SECS_PER_DAY_U << 20;

/// `_parse_duration` of `get_next_standardized_reset_time`, applied to the normalized string.
/// `None` means "no match": LiteLLM then warns and resets at the next midnight.
pub(super) fn parse_reset_spec(normalized: &str) -> Option<ResetSpec> {
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
pub(super) fn reset_local(spec: Option<ResetSpec>, local_now: i64, tod: i64) -> i64 {
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

pub(super) fn clamp_tod(reset_time_of_day_secs: u32) -> i64 {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::time::test_support::*;
    use ParsedDuration::{Months, Seconds};
    // ---------------------------------------------------------------- reset table
    // Thursday 2026-11-26 15:04:05 UTC is the reference instant.

    /// Seconds, minutes and hours align to the next multiple within the minute / hour / day
    /// (UTC, midnight reset time): `(budget_duration, now, next reset)`.
    #[test]
    fn reset_sub_day_units_table() {
        let table: &[(&str, i64, i64)] = &[
            ("10s", thu(), u(2026, 11, 26, 15, 4, 10)),
            ("30s", thu(), u(2026, 11, 26, 15, 4, 30)),
            ("1s", thu(), u(2026, 11, 26, 15, 4, 6)),
            // Exactly on a boundary: the next one.
            (
                "10s",
                u(2026, 11, 26, 15, 4, 10),
                u(2026, 11, 26, 15, 4, 20),
            ),
            // Carry into the next minute.
            ("10s", u(2026, 11, 26, 15, 4, 59), u(2026, 11, 26, 15, 5, 0)),
            // Quirk: 45s realigns every minute: 50 -> 90 = next minute :30.
            (
                "45s",
                u(2026, 11, 26, 15, 4, 50),
                u(2026, 11, 26, 15, 5, 30),
            ),
            // Carry into the next day.
            ("30s", u(2026, 11, 26, 23, 59, 45), u(2026, 11, 27, 0, 0, 0)),
            // Value beyond a minute: 3600s at :04:05 -> 5 +3600-5 = 3600 s -> +60 min, second 0.
            ("3600s", thu(), u(2026, 11, 26, 16, 4, 0)),
            ("0s", thu(), thu()),
            ("5m", thu(), u(2026, 11, 26, 15, 5, 0)),
            ("1m", thu(), u(2026, 11, 26, 15, 5, 0)),
            ("15m", thu(), u(2026, 11, 26, 15, 15, 0)),
            ("5m", u(2026, 11, 26, 15, 5, 0), u(2026, 11, 26, 15, 10, 0)),
            // Quirk: 7m realigns every hour (58 -> 63 -> 16:03).
            ("7m", u(2026, 11, 26, 15, 58, 0), u(2026, 11, 26, 16, 3, 0)),
            ("30m", u(2026, 11, 26, 23, 45, 0), u(2026, 11, 27, 0, 0, 0)),
            // 120m at 11:25: 25 -> 120 -> 13:00 (whereas 2h -> 12:00).
            (
                "120m",
                u(2026, 11, 26, 11, 25, 0),
                u(2026, 11, 26, 13, 0, 0),
            ),
            ("2h", u(2026, 11, 26, 11, 25, 0), u(2026, 11, 26, 12, 0, 0)),
            ("0m", thu(), thu()),
            ("1h", thu(), u(2026, 11, 26, 16, 0, 0)),
            ("2h", thu(), u(2026, 11, 26, 16, 0, 0)),
            ("6h", thu(), u(2026, 11, 26, 18, 0, 0)),
            ("1h", u(2026, 11, 26, 15, 0, 0), u(2026, 11, 26, 16, 0, 0)),
            ("hourly", thu(), u(2026, 11, 26, 16, 0, 0)),
            // 5h at 22:10: 22 -> 25 -> next day 01:00.
            ("5h", u(2026, 11, 26, 22, 10, 0), u(2026, 11, 27, 1, 0, 0)),
            // 24h / 48h: next midnight, also exactly at midnight.
            ("24h", thu(), u(2026, 11, 27, 0, 0, 0)),
            ("24h", u(2026, 11, 27, 0, 0, 0), u(2026, 11, 28, 0, 0, 0)),
            ("48h", thu(), u(2026, 11, 27, 0, 0, 0)),
            ("daily", thu(), u(2026, 11, 27, 0, 0, 0)),
            // Source-exact: N >= 24 -> next day at (N % 24):00 (36h at 01:00 -> 12:00 next day).
            ("36h", u(2026, 11, 26, 1, 0, 0), u(2026, 11, 27, 12, 0, 0)),
            ("168h", thu(), u(2026, 11, 27, 0, 0, 0)),
            ("0h", thu(), thu()),
        ];
        for (duration, now, want) in table {
            assert_eq!(r(duration, *now), *want, "{duration:?} at {now}");
        }
    }

    #[test]
    fn reset_24h_ignores_the_reset_time_of_day() {
        assert_eq!(
            next_reset_at_str("24h", thu(), &z(0), hms(9, 0, 0)),
            u(2026, 11, 27, 0, 0, 0)
        );
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
}
