//! Time zones as the filter needs them: UTC offsets over time (`litellm_settings.timezone`,
//! resolved by the sidecar), fixed offsets and UTC names.

use super::*;

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
    pub(super) fn reset_instant(&self, wall_secs: i64, now_unix_secs: i64) -> i64 {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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
}
