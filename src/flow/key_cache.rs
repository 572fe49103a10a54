//! Key records cached in Envoy shared data (process-wide, all workers), a bounded negative
//! cache of keys the sidecar said do not exist, and invalidation.
//!
//! A record is stored as `<epoch> <seq>\n<json>` (`records::split_cached_record`). Invalidating
//! one key overwrites its entry with an empty tombstone, unless the change-log poll lists a
//! change the record already reflects (its `seq` is at or past the poll's): then there is
//! nothing to refetch, and nothing to lose if the sidecar is down. Invalidating everything (`*`)
//! bumps the shared epoch, so older records are fetched again. Shared data cannot delete, so
//! tombstones stay until the key is used again.

use crate::records::{cached_record_header, split_cached_record, KeyRecord};
use crate::shared_store::{update, Decision, VersionedStore};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

// The negative cache is a fixed set of slots (first 3 hex digits of the hash), so random
// unknown keys cannot grow shared data without bound.
use crate::contract::{
    CUSTOMER_PREFIX, KEY_EPOCH_KEY as EPOCH_KEY, KEY_RECORD_PREFIX as KEY_PREFIX,
    UNKNOWN_KEY_PREFIX as NEGATIVE_PREFIX,
};

/// Most decoded records a worker keeps; past it the map starts afresh (records stay in
/// shared data, so this only costs a decode).
const MAX_DECODED: usize = 100_000;

/// This worker's view: decoded records by hash with the shared-data version they came from,
/// and the epoch last seen.
#[derive(Default)]
pub struct Decoded {
    records: RefCell<HashMap<String, (u32, Rc<KeyRecord>)>>,
    epoch: Cell<u64>,
}

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

fn split_epoch(bytes: &[u8]) -> Option<(u64, &[u8])> {
    split_cached_record(bytes).map(|(epoch, _, json)| (epoch, json))
}

pub fn get(store: &impl VersionedStore, decoded: &Decoded, hash: &str, now_micros: i64) -> Cached {
    if let Some((bytes, version)) = store.get(&format!("{KEY_PREFIX}{hash}")) {
        if let Some((v, record)) = decoded.records.borrow().get(hash) {
            if *v == version {
                return Cached::Known(Rc::clone(record));
            }
        }
        if let Some((epoch, json)) = split_epoch(&bytes) {
            if epoch >= decoded.epoch.get() {
                if let Ok(record) = serde_json::from_slice::<KeyRecord>(json) {
                    let record = Rc::new(record);
                    let mut map = decoded.records.borrow_mut();
                    if map.len() >= MAX_DECODED {
                        map.clear();
                    }
                    map.insert(hash.to_string(), (version, Rc::clone(&record)));
                    return Cached::Known(record);
                }
            }
        }
        // A tombstone or a record from before the last invalidation: ask again.
        return Cached::Missing;
    }
    if let Some((bytes, _)) = store.get(&negative_slot(hash)) {
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

pub fn put(
    store: &impl VersionedStore,
    decoded: &Decoded,
    hash: &str,
    record: &KeyRecord,
    seq: i64,
) {
    if let Ok(json) = serde_json::to_vec(record) {
        let mut value = cached_record_header(decoded.epoch.get(), seq).into_bytes();
        value.extend_from_slice(&json);
        set(store, &format!("{KEY_PREFIX}{hash}"), &value);
    }
}

pub fn put_unknown(store: &impl VersionedStore, hash: &str, now_micros: i64, seconds: u64) {
    let until = now_micros.saturating_add(
        i64::try_from(seconds)
            .unwrap_or(0)
            .saturating_mul(1_000_000),
    );
    set(
        store,
        &negative_slot(hash),
        format!("{hash} {until}").as_bytes(),
    );
}

/// Reads the shared epoch (on each tick), so this worker stops using records from before an
/// invalidation of everything made by another worker.
pub fn refresh_epoch(store: &impl VersionedStore, decoded: &Decoded) {
    let epoch = store
        .get(EPOCH_KEY)
        .and_then(|(v, _)| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    if epoch != decoded.epoch.get() {
        decoded.epoch.set(epoch);
        decoded.records.borrow_mut().clear();
    }
}

/// Applies an invalidation list from the sidecar: key hashes, `customer:<id>` entries, or `*`.
/// `upto`: the change-log position the list reaches (from the poll); a key record that already
/// reflects it stays. `None` (an admin answer passing through): drop every listed key.
pub fn invalidate(
    store: &impl VersionedStore,
    decoded: &Decoded,
    entries: &str,
    now_micros: i64,
    upto: Option<i64>,
) {
    for entry in entries.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry == "*" {
            let bumped = update(store, EPOCH_KEY, now_micros, |v| {
                let n = v
                    .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
                    .unwrap_or(0)
                    .saturating_add(1);
                Decision::Write(n.to_string().into_bytes(), n)
            });
            if let Ok(n) = bumped {
                decoded.epoch.set(n);
            }
            decoded.records.borrow_mut().clear();
        } else if let Some(id) = entry.strip_prefix("customer:") {
            set(store, &format!("{CUSTOMER_PREFIX}{id}"), b"");
        } else if crate::key_format::is_token_hash(entry) {
            let slot = format!("{KEY_PREFIX}{entry}");
            if let (Some(upto), Some((bytes, _))) = (upto, store.get(&slot)) {
                if split_cached_record(&bytes).is_some_and(|(_, seq, _)| seq >= upto) {
                    continue;
                }
            }
            set(store, &slot, b"");
            set(store, &negative_slot(entry), b"");
            decoded.records.borrow_mut().remove(entry);
        }
    }
}

/// A customer's record as cached (`None`: not cached, or invalidated: ask the sidecar).
pub fn get_customer(
    store: &impl VersionedStore,
    decoded: &Decoded,
    id: &str,
) -> Option<crate::records::CustomerLookup> {
    let (bytes, _) = store.get(&format!("{CUSTOMER_PREFIX}{id}"))?;
    let (epoch, json) = split_epoch(&bytes)?;
    if epoch < decoded.epoch.get() {
        return None;
    }
    serde_json::from_slice(json).ok()
}

pub fn put_customer(
    store: &impl VersionedStore,
    decoded: &Decoded,
    id: &str,
    lookup: &crate::records::CustomerLookup,
) {
    if let Ok(json) = serde_json::to_vec(lookup) {
        let mut value = cached_record_header(decoded.epoch.get(), 0).into_bytes();
        value.extend_from_slice(&json);
        set(store, &format!("{CUSTOMER_PREFIX}{id}"), &value);
    }
}

/// An unconditional write; a failure only costs a later lookup, so it is not reported.
fn set(store: &impl VersionedStore, key: &str, value: &[u8]) {
    let _ = store.set(key, value, None);
}
