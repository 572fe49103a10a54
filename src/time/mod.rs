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
//!
//! One file per job: `parse` (`duration` / `budget_duration` strings, their validation,
//! `budget_reset_time`), `reset` (the next aligned `budget_reset_at`), `civil` (the
//! calendar and exact duration arithmetic), `zone` (UTC offsets over time), `iso8601`
//! (timestamps as text). Everything public is re-exported here.

mod civil;
mod iso8601;
mod parse;
mod reset;
mod zone;

pub use civil::*;
pub use iso8601::*;
pub use parse::*;
pub use reset::*;
pub use zone::*;

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod test_support {
    use super::*;

    /// UTC civil → unix, for readable tests.
    pub(crate) fn u(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        unix_from_civil(y, mo, d, h, mi, s)
    }

    pub(crate) fn z(off: i32) -> ZoneOffsets {
        ZoneOffsets::fixed(off)
    }

    pub(crate) fn hms(h: u32, m: u32, s: u32) -> u32 {
        h * 3600 + m * 60 + s
    }

    /// Reset from the string in UTC with midnight reset time.
    pub(crate) fn r(dur: &str, now: i64) -> i64 {
        next_reset_at_str(dur, now, &z(0), 0)
    }

    /// Thursday 2026-11-26 15:04:05 UTC, the reference instant of the reset and format tests.
    pub(crate) fn thu() -> i64 {
        u(2026, 11, 26, 15, 4, 5)
    }
}
