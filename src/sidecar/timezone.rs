//! `litellm_settings.timezone` → the offset table the filter aligns budget resets with.
//!
//! LiteLLM hands the name to Python's `ZoneInfo`; here the IANA database bundled into the
//! sidecar (jiff's copy of tzdata) resolves it, so the filter never needs a tz database.

use crate::time::{parse_utc_offset, ZoneOffsets};

/// First instant the table covers: 1970-01-01T00:00:00Z.
const TABLE_START: i64 = 0;
/// Last instant the table covers: 2100-01-01T00:00:00Z. The offset in force then stays.
const TABLE_END: i64 = 4_102_444_800;

/// The zone named by `litellm_settings.timezone`, or a message when it names none (LiteLLM
/// then falls back to UTC, and so does the caller).
///
/// IANA names (`America/New_York`, `Europe/London`, `UTC`) come with every DST transition
/// from 1970 to 2100. Offsets written out (`+05:30`, `UTC-3`, `Etc/GMT+5`) are fixed.
pub fn resolve(name: &str) -> Result<ZoneOffsets, String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Ok(ZoneOffsets::default());
    }
    if let Ok(tz) = jiff::tz::TimeZone::get(trimmed) {
        return offsets_of(&tz);
    }
    parse_utc_offset(trimmed)
        .map(ZoneOffsets::fixed)
        .ok_or_else(|| format!("unknown timezone {trimmed:?}"))
}

fn offsets_of(tz: &jiff::tz::TimeZone) -> Result<ZoneOffsets, String> {
    let start = jiff::Timestamp::from_second(TABLE_START).map_err(|e| e.to_string())?;
    let mut zone = ZoneOffsets::fixed(tz.to_offset(start).seconds());
    let mut last = zone.initial;
    for transition in tz.following(start) {
        let at = transition.timestamp().as_second();
        if at >= TABLE_END {
            break;
        }
        let offset = transition.offset().seconds();
        // Abbreviation-only changes (same offset) do not matter for resets.
        if offset != last {
            zone.transitions.push((at, offset));
            last = offset;
        }
    }
    Ok(zone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{next_reset_at_str, unix_from_civil};

    fn u(y: i64, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        unix_from_civil(y, mo, d, h, mi, 0)
    }

    #[test]
    fn new_york_has_its_dst_transitions() {
        let ny = resolve("America/New_York").unwrap();
        assert_eq!(ny.initial, -5 * 3600);
        // 2026-03-08 07:00Z: EST → EDT; 2026-11-01 06:00Z: EDT → EST.
        assert!(ny.transitions.contains(&(u(2026, 3, 8, 7, 0), -4 * 3600)));
        assert!(ny.transitions.contains(&(u(2026, 11, 1, 6, 0), -5 * 3600)));
        assert_eq!(ny.offset_at_utc(u(2026, 7, 1, 12, 0)), -4 * 3600);
        assert_eq!(ny.offset_at_utc(u(2026, 12, 1, 12, 0)), -5 * 3600);
        assert!(ny.transitions.len() > 200, "1970..2100 has two a year");
    }

    #[test]
    fn daily_reset_follows_local_midnight_across_dst() {
        let ny = resolve("America/New_York").unwrap();
        // Summer: local midnight is 04:00Z; winter: 05:00Z.
        assert_eq!(
            next_reset_at_str("1d", u(2026, 7, 1, 12, 0), &ny, 0),
            u(2026, 7, 2, 4, 0)
        );
        assert_eq!(
            next_reset_at_str("1d", u(2026, 12, 1, 12, 0), &ny, 0),
            u(2026, 12, 2, 5, 0)
        );
        // Computed on 2026-10-31 (EDT) for midnight on Nov 1st (still EDT): 04:00Z.
        assert_eq!(
            next_reset_at_str("1d", u(2026, 10, 31, 12, 0), &ny, 0),
            u(2026, 11, 1, 4, 0)
        );
        // Computed on Nov 1st after the switch, for Nov 2nd (EST): 05:00Z.
        assert_eq!(
            next_reset_at_str("1d", u(2026, 11, 1, 12, 0), &ny, 0),
            u(2026, 11, 2, 5, 0)
        );
        // Monthly from October (EDT) to December 1st (EST): 05:00Z.
        assert_eq!(
            next_reset_at_str("1mo", u(2026, 11, 15, 12, 0), &ny, 0),
            u(2026, 12, 1, 5, 0)
        );
    }

    #[test]
    fn wall_times_in_gaps_and_overlaps_resolve_like_zoneinfo_fold_0() {
        let ny = resolve("America/New_York").unwrap();
        let wall = |y, mo, d, h, mi| u(y, mo, d, h, mi);
        // 02:30 on 2026-03-08 does not exist; zoneinfo (fold=0) reads it as EST: 07:30Z.
        assert_eq!(
            ny.utc_from_wall(wall(2026, 3, 8, 2, 30)),
            u(2026, 3, 8, 7, 30)
        );
        // 01:30 on 2026-11-01 happens twice; fold=0 is the first (EDT): 05:30Z.
        assert_eq!(
            ny.utc_from_wall(wall(2026, 11, 1, 1, 30)),
            u(2026, 11, 1, 5, 30)
        );
        // Either side of the changes.
        assert_eq!(
            ny.utc_from_wall(wall(2026, 3, 8, 3, 0)),
            u(2026, 3, 8, 7, 0)
        );
        assert_eq!(
            ny.utc_from_wall(wall(2026, 11, 1, 2, 0)),
            u(2026, 11, 1, 7, 0)
        );
        // A 1h reset spanning spring-forward: at 01:30 EST the next hour boundary is 02:00,
        // which does not exist; it lands on 07:00Z (03:00 EDT), as in LiteLLM.
        assert_eq!(
            next_reset_at_str("1h", u(2026, 3, 8, 6, 30), &ny, 0),
            u(2026, 3, 8, 7, 0)
        );
    }

    #[test]
    fn a_reset_inside_the_repeated_hour_is_still_ahead() {
        let ny = resolve("America/New_York").unwrap();
        // 2026-11-01 06:15Z is 01:15 EST, the second 01:15 of the night. A daily reset at
        // 01:30 is the 01:30 still to come (EST, 06:30Z), not the first one (EDT, 05:30Z),
        // which has passed.
        let tod = 3600 + 30 * 60;
        let now = u(2026, 11, 1, 6, 15);
        assert_eq!(
            next_reset_at_str("1d", now, &ny, tod),
            u(2026, 11, 1, 6, 30)
        );
        // During the first 01:15 (EDT, 05:15Z) it is the first 01:30 (05:30Z).
        assert_eq!(
            next_reset_at_str("1d", u(2026, 11, 1, 5, 15), &ny, tod),
            u(2026, 11, 1, 5, 30)
        );
    }

    #[test]
    fn southern_hemisphere_and_fixed_offsets() {
        let sydney = resolve("Australia/Sydney").unwrap();
        assert_eq!(sydney.offset_at_utc(u(2026, 1, 15, 0, 0)), 11 * 3600);
        assert_eq!(sydney.offset_at_utc(u(2026, 7, 15, 0, 0)), 10 * 3600);
        assert_eq!(
            resolve("UTC").unwrap().offset_at_utc(u(2026, 7, 1, 0, 0)),
            0
        );
        assert_eq!(resolve("").unwrap(), ZoneOffsets::default());
        assert_eq!(resolve("+05:30").unwrap(), ZoneOffsets::fixed(19_800));
        assert_eq!(resolve("UTC-3").unwrap(), ZoneOffsets::fixed(-10_800));
        assert_eq!(
            resolve("Asia/Kolkata")
                .unwrap()
                .offset_at_utc(u(2026, 7, 1, 0, 0)),
            19_800
        );
        assert!(resolve("Mars/Olympus_Mons").is_err());
    }
}
