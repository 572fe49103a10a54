//! Timestamps as text: ISO 8601 and Python's `str(datetime)` in UTC, and parsing them back.

use super::*;

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
    use crate::time::test_support::*;

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
