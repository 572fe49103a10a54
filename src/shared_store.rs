//! Read → compute → compare-and-set over a versioned key-value store (Envoy shared data in the
//! filter, an in-memory map in tests).
//!
//! Envoy's shared data has no atomic increment, and `set` with a CAS value on a key that does
//! not exist yet always succeeds. Two workers creating the same counter at once could therefore
//! overwrite each other. So existing entries are only ever changed by CAS, and a missing entry is
//! created only while holding a short lease (one well-known key, itself changed only by CAS),
//! after checking again that it is still missing.

/// Why a write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The entry changed since it was read.
    CasMismatch,
    /// The host refused for another reason.
    Failed,
}

/// A versioned store: every value carries a version (`cas`) that changes on each write.
pub trait VersionedStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` if the entry's version is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

use crate::contract::CREATE_LEASE_KEY;
/// How many CAS attempts before giving up on one update.
pub const MAX_ATTEMPTS: usize = 64;
/// A lease older than this (µs) is considered abandoned and may be taken over.
const LEASE_TTL_MICROS: i64 = 1_000_000;

/// The outcome of `update`: what the closure decided, and whether it was written.
pub enum Decision<T> {
    /// Write this value and return `T`.
    Write(Vec<u8>, T),
    /// Leave the entry as it is and return `T`.
    Keep(T),
}

/// Applies `decide` to the current value of `key` (None when missing) atomically: retried on
/// CAS mismatch up to `MAX_ATTEMPTS` times.
pub fn update<S: VersionedStore, T>(
    store: &S,
    key: &str,
    now_micros: i64,
    mut decide: impl FnMut(Option<&[u8]>) -> Decision<T>,
) -> Result<T, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        match store.get(key) {
            Some((value, cas)) => match decide(Some(&value)) {
                Decision::Keep(t) => return Ok(t),
                Decision::Write(new, t) => match store.set(key, &new, Some(cas)) {
                    Ok(()) => return Ok(t),
                    Err(StoreError::CasMismatch) => continue,
                    Err(e) => return Err(e),
                },
            },
            None => match create(store, key, now_micros, &mut decide)? {
                Some(t) => return Ok(t),
                None => continue,
            },
        }
    }
    Err(StoreError::CasMismatch)
}

/// Creates a missing entry under the lease. `Ok(None)`: someone else created it; retry.
fn create<S: VersionedStore, T>(
    store: &S,
    key: &str,
    now_micros: i64,
    decide: &mut impl FnMut(Option<&[u8]>) -> Decision<T>,
) -> Result<Option<T>, StoreError> {
    let lease_cas = acquire_lease(store, now_micros)?;
    let result = if store.get(key).is_some() {
        Ok(None)
    } else {
        match decide(None) {
            Decision::Keep(t) => Ok(Some(t)),
            Decision::Write(new, t) => store.set(key, &new, None).map(|()| Some(t)),
        }
    };
    release_lease(store, lease_cas);
    result
}

/// Creates the lease entry if it does not exist. Must run before any concurrent `update`: the
/// filter calls it from `on_configure`, which Envoy runs on the main thread's VM before it
/// clones the workers' VMs. (Created lazily under traffic, two workers could both write "free"
/// and both believe they hold the lease.)
pub fn ensure_lease<S: VersionedStore>(store: &S) -> Result<(), StoreError> {
    if store.get(CREATE_LEASE_KEY).is_none() {
        store.set(CREATE_LEASE_KEY, b"free", None)?;
    }
    Ok(())
}

fn acquire_lease<S: VersionedStore>(store: &S, now_micros: i64) -> Result<u32, StoreError> {
    let held = format!("held {now_micros}");
    for _ in 0..MAX_ATTEMPTS * 4 {
        match store.get(CREATE_LEASE_KEY) {
            None => {
                // Only where `ensure_lease` did not run first (host tests): nothing else can
                // hold a lease that does not exist yet on a single thread.
                store.set(CREATE_LEASE_KEY, b"free", None)?;
            }
            Some((value, cas)) => {
                let free = value.as_slice() == b"free"
                    || std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.strip_prefix("held "))
                        .and_then(|t| t.parse::<i64>().ok())
                        .is_some_and(|t| now_micros.saturating_sub(t) > LEASE_TTL_MICROS);
                if free {
                    match store.set(CREATE_LEASE_KEY, held.as_bytes(), Some(cas)) {
                        Ok(()) => {
                            if let Some((_, new_cas)) = store.get(CREATE_LEASE_KEY) {
                                return Ok(new_cas);
                            }
                        }
                        Err(StoreError::CasMismatch) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Err(StoreError::CasMismatch)
}

fn release_lease<S: VersionedStore>(store: &S, cas: u32) {
    // If the lease was taken over meanwhile (it expired), leave it to its new holder.
    let _ = store.set(CREATE_LEASE_KEY, b"free", Some(cas));
}

/// An in-memory store for host tests, with Envoy's semantics (CAS ignored on missing keys).
#[derive(Default)]
pub struct MemoryStore {
    map: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
    next: std::cell::Cell<u32>,
}

impl VersionedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut map = self.map.borrow_mut();
        let version = self.next.get().wrapping_add(1).max(1);
        self.next.set(version);
        match map.get_mut(key) {
            Some(entry) => {
                if cas.is_some_and(|c| c != 0 && c != entry.1) {
                    return Err(StoreError::CasMismatch);
                }
                *entry = (value.to_vec(), version);
            }
            None => {
                map.insert(key.to_string(), (value.to_vec(), version));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(store: &impl VersionedStore, key: &str) -> u64 {
        update(store, key, 0, |v| {
            let n = v
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            Decision::Write(n.to_string().into_bytes(), n)
        })
        .unwrap()
    }

    #[test]
    fn increments_and_creates() {
        let s = MemoryStore::default();
        assert_eq!(incr(&s, "a"), 1);
        assert_eq!(incr(&s, "a"), 2);
        assert_eq!(s.get(CREATE_LEASE_KEY).unwrap().0, b"free");
    }

    /// A store that lets a rival write slip in between our read and our write, as another
    /// Envoy worker could.
    struct Racy {
        inner: MemoryStore,
        rival_writes: std::cell::Cell<u32>,
    }

    impl VersionedStore for Racy {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if key != CREATE_LEASE_KEY && self.rival_writes.get() > 0 {
                self.rival_writes.set(self.rival_writes.get() - 1);
                // the rival bumps the counter first
                let current = self
                    .inner
                    .get(key)
                    .and_then(|(v, _)| String::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                self.inner
                    .set(key, (current + 1).to_string().as_bytes(), None)?;
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn cas_mismatch_retries_without_losing_the_rivals_write() {
        let s = Racy {
            inner: MemoryStore::default(),
            rival_writes: std::cell::Cell::new(0),
        };
        incr(&s, "c");
        s.rival_writes.set(3);
        // our increment retries until it lands on top of the rival's three
        assert_eq!(incr(&s, "c"), 5);
    }

    #[test]
    fn abandoned_lease_is_taken_over() {
        let s = MemoryStore::default();
        s.set(CREATE_LEASE_KEY, b"held 0", None).unwrap();
        let n = update(&s, "k", 5_000_000, |_| Decision::Write(b"1".to_vec(), 1)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn live_lease_blocks_creation() {
        let s = MemoryStore::default();
        s.set(CREATE_LEASE_KEY, b"held 100", None).unwrap();
        assert_eq!(
            update(&s, "k", 200, |_| Decision::Write(b"1".to_vec(), 1)).err(),
            Some(StoreError::CasMismatch)
        );
        assert!(s.get("k").is_none());
    }
}
