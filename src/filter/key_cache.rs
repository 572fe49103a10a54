//! Key records cached in Envoy shared data (process-wide, all workers), plus a bounded
//! negative cache of keys the sidecar said do not exist.

use super::host;
use crate::records::KeyRecord;
use crate::shared_store::VersionedStore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Decoded records of this worker, by hash, with the shared-data version they were decoded
/// from: a record is decoded again only when its shared-data entry changed.
#[derive(Default)]
pub struct Decoded {
    records: RefCell<HashMap<String, (u32, Rc<KeyRecord>)>>,
}

/// Most decoded records a worker keeps; past it the map starts afresh (records stay in
/// shared data, so this only costs a decode).
const MAX_DECODED: usize = 100_000;

const KEY_PREFIX: &str = "tollgate:v1:key:";
/// The negative cache is a fixed set of slots (first 3 hex digits of the hash), so random
/// unknown keys cannot grow shared data without bound.
const NEGATIVE_PREFIX: &str = "tollgate:v1:unknown:";

pub enum Cached {
    Known(Rc<KeyRecord>),
    /// Recently confirmed not to exist.
    Unknown,
    /// Not cached either way: ask the sidecar.
    Missing,
}

fn negative_slot(hash: &str) -> String {
    format!("{NEGATIVE_PREFIX}{}", hash.get(..3).unwrap_or(hash))
}

pub fn get(decoded: &Decoded, hash: &str, now_micros: i64) -> Cached {
    if let Some((bytes, version)) = host::SharedData.get(&format!("{KEY_PREFIX}{hash}")) {
        if let Some((v, record)) = decoded.records.borrow().get(hash) {
            if *v == version {
                return Cached::Known(Rc::clone(record));
            }
        }
        if let Ok(record) = serde_json::from_slice::<KeyRecord>(&bytes) {
            let record = Rc::new(record);
            let mut map = decoded.records.borrow_mut();
            if map.len() >= MAX_DECODED {
                map.clear();
            }
            map.insert(hash.to_string(), (version, Rc::clone(&record)));
            return Cached::Known(record);
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
