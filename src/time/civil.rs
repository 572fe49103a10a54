//! The proleptic Gregorian calendar in UTC: civil date ↔ unix seconds, and exact (not
//! aligned) duration arithmetic for key `expires` and window ends.

use super::*;

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
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::time::test_support::*;
    use ParsedDuration::{Months, Seconds};
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
}
