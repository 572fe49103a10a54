//! Key records cached in Envoy shared data (process-wide, all workers), plus a bounded
//! negative cache of keys the sidecar said do not exist.

use super::host;
use crate::records::KeyRecord;

const KEY_PREFIX: &str = "tollgate:v1:key:";
/// The negative cache is a fixed set of slots (first 3 hex digits of the hash), so random
/// unknown keys cannot grow shared data without bound.
const NEGATIVE_PREFIX: &str = "tollgate:v1:unknown:";

pub enum Cached {
    Known(Box<KeyRecord>),
    /// Recently confirmed not to exist.
    Unknown,
    /// Not cached either way: ask the sidecar.
    Missing,
}

fn negative_slot(hash: &str) -> String {
    format!("{NEGATIVE_PREFIX}{}", hash.get(..3).unwrap_or(hash))
}

pub fn get(hash: &str, now_micros: i64) -> Cached {
    if let Some(bytes) = host::shared_get(&format!("{KEY_PREFIX}{hash}")) {
        if let Ok(record) = serde_json::from_slice::<KeyRecord>(&bytes) {
            return Cached::Known(Box::new(record));
        }
    }
    if let Some(bytes) = host::shared_get(&negative_slot(hash)) {
        if let Some((stored, until)) = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.split_once(' '))
        {
            if stored == hash && until.parse::<i64>().is_ok_and(|u| u > now_micros) {
                return Cached::Unknown;
            }
        }
    }
    Cached::Missing
}

pub fn put(hash: &str, record: &KeyRecord) {
    if let Ok(bytes) = serde_json::to_vec(record) {
        host::shared_set(&format!("{KEY_PREFIX}{hash}"), &bytes);
    }
}

pub fn put_unknown(hash: &str, now_micros: i64, seconds: u64) {
    let until = now_micros.saturating_add(
        i64::try_from(seconds)
            .unwrap_or(0)
            .saturating_mul(1_000_000),
    );
    host::shared_set(&negative_slot(hash), format!("{hash} {until}").as_bytes());
}
