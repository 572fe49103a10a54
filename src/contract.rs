//! The contract between the filter and the sidecar, in one place: the internal API's paths and
//! headers, the spend batch's encoding, and every shared-data key and queue the filter uses.
//! The request and answer bodies are the types of [`crate::records`] ([`KeyLookup`],
//! [`CustomerLookup`], [`Changes`], [`SpendBatch`]) and [`crate::provider_keys::ProviderKeys`].
//!
//! [`KeyLookup`]: crate::records::KeyLookup
//! [`CustomerLookup`]: crate::records::CustomerLookup
//! [`Changes`]: crate::records::Changes
//! [`SpendBatch`]: crate::records::SpendBatch

/// `GET {KEYS_PATH}{hash}` → `KeyLookup`.
pub const KEYS_PATH: &str = "/tollgate/internal/v1/keys/";
/// `GET {CUSTOMERS_PATH}{id}` (percent-encoded) → `CustomerLookup`.
pub const CUSTOMERS_PATH: &str = "/tollgate/internal/v1/customers/";
/// `GET {CHANGES_PATH}?since=<seq>` → `Changes`.
pub const CHANGES_PATH: &str = "/tollgate/internal/v1/changes";
/// `POST` a `SpendBatch` ([`spend_batch_body`]).
pub const SPEND_PATH: &str = "/tollgate/internal/v1/spend";
/// Fleet mode: `POST` a `LeaseRequest` → `LeaseAnswer`.
pub const LEASES_PATH: &str = "/tollgate/internal/v1/leases";
/// `GET` → `ProviderKeys`.
pub const PROVIDER_KEYS_PATH: &str = "/tollgate/internal/v1/provider-keys";

/// Response header of mutating admin calls: comma-separated entries as in `Changes` (key token
/// hashes, `customer:<id>`, or `*`). The filter applies and removes it.
pub const INVALIDATE_HEADER: &str = "x-tollgate-invalidate";

/// Headers a caller's key is read from, in LiteLLM's order (first match wins;
/// `authorization` is special-cased). None of them may reach the provider: the same list is
/// stripped before forwarding.
pub const CREDENTIAL_HEADERS: [&str; 6] = [
    "x-litellm-api-key",
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
];

/// The filter's shared queue of spend events (JSON `SpendEvent`s).
pub const SPEND_QUEUE: &str = "tollgate_spend_v1";
/// Fleet mode: budgets whose lease is due (missing, low, half its TTL gone), enqueued by HTTP
/// contexts and drained by the root tick into one lease call.
pub const LEASE_QUEUE: &str = "tollgate_lease_v1";

// Shared data, process-wide for one `vm_id`: every key is prefixed `tollgate:v1:`, since Istio
// plugins without a `vm_id` share one namespace.
/// A cached key record by token hash (`records::cached_record_header` + JSON). Its spend
/// figures seed missing counters, so it moves with them (see [`RETIRED_PREFIXES`]).
pub const KEY_RECORD_PREFIX: &str = "tollgate:v1:key-record:";
/// The negative cache: a fixed set of slots (first 3 hex digits of the hash).
pub const UNKNOWN_KEY_PREFIX: &str = "tollgate:v1:unknown:";
/// The invalidate-everything generation.
pub const KEY_EPOCH_KEY: &str = "tollgate:v1:key-epoch";
/// A cached customer lookup by customer id (its spend seeds the end user's counter, as
/// [`KEY_RECORD_PREFIX`]).
pub const CUSTOMER_PREFIX: &str = "tollgate:v1:customer-record:";
/// The change-log position this Envoy has applied.
pub const CHANGES_SEQ_KEY: &str = "tollgate:v1:changes-seq";
/// The lease guarding creation of shared-data entries (`shared_store`).
pub const CREATE_LEASE_KEY: &str = "tollgate:v1:create-lease";
// The counter entries are binary (`entry`: little-endian i64 fields), under prefixes no older
// module used ([`RETIRED_PREFIXES`]): a new module never reads an old text entry as binary,
// nor an old one, still draining beside it in the same Envoy (an Istio `WasmPlugin` update),
// a binary one as text (and writes it back). Such an upgrade starts the counters afresh from
// the sidecar's totals, as a restart does: the cached key and customer records, whose spend
// seeds a missing counter, moved too, so they are looked up again rather than seeding it
// with a figure as old as the cache. A later change of an entry's format moves them again.
/// Budget counters: `<prefix><level>:<id>`.
pub const BUDGET_PREFIX: &str = "tollgate:v1:budget-i64:";
/// Rate-limit windows: `<prefix><kind>:<value>`.
pub const RATE_LIMIT_PREFIX: &str = "tollgate:v1:rl-i64:";
/// Fleet mode: rate-limit slices, one entry per scope holding its rpm, parallel and tpm
/// slices: `<prefix><kind>:<value>` (`rate_leases`).
pub const RATE_LEASE_PREFIX: &str = "tollgate:v1:rl-slices-i64:";
/// Where older modules kept the same counters as text (`reset_at spend ...`; per-limit rate
/// slices under `rl-lease:` before they shared one entry per scope) and the records seeding
/// them: never read or written now.
pub const RETIRED_PREFIXES: [&str; 6] = [
    "tollgate:v1:budget:",
    "tollgate:v1:rl:",
    "tollgate:v1:rl-slices:",
    "tollgate:v1:rl-lease:",
    "tollgate:v1:key:",
    "tollgate:v1:customer:",
];
/// Fleet mode: this Envoy process's id (32 hex digits), written once by the first
/// `on_configure`; it survives config reloads (the VM and its shared data stay) and a restarted
/// process draws a new one, so it never inherits a dead process's leases.
pub const ENVOY_ID_KEY: &str = "tollgate:v1:envoy-id";
/// Fleet mode: the sequence number of this Envoy's last lease report.
pub const LEASE_SEQ_KEY: &str = "tollgate:v1:lease-seq";
/// Fleet mode: counts the invalidations (admin changes) this Envoy heard of; each root context
/// reports its budget slices at its next tick when it moves (`lease_tick`).
pub const LEASE_RENEW_ALL_KEY: &str = "tollgate:v1:lease-renew-all";

/// The key lookup's path.
pub fn key_path(hash: &str) -> String {
    format!("{KEYS_PATH}{hash}")
}

/// The customer lookup's path, the id percent-encoded as one path segment.
pub fn customer_path(id: &str) -> String {
    let mut out = String::with_capacity(CUSTOMERS_PATH.len() + id.len());
    out.push_str(CUSTOMERS_PATH);
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The change-log poll's path.
pub fn changes_path(since: i64) -> String {
    format!("{CHANGES_PATH}?since={since}")
}

/// A `SpendBatch` body from events already encoded as JSON: spliced, not decoded again.
pub fn spend_batch_body(events: &[Vec<u8>]) -> Vec<u8> {
    let size = events.iter().map(Vec::len).sum::<usize>() + events.len() + 16;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(b"{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{SpendBatch, SpendEvent};

    #[test]
    fn spend_batch_body_is_a_spend_batch() {
        let events: Vec<SpendEvent> = (0..3)
            .map(|i| SpendEvent {
                event_id: format!("e{i}"),
                spend_nanos: i,
                ..Default::default()
            })
            .collect();
        let encoded: Vec<Vec<u8>> = events
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect();
        let batch: SpendBatch = serde_json::from_slice(&spend_batch_body(&encoded)).unwrap();
        assert_eq!(batch.events, events);
        let empty: SpendBatch = serde_json::from_slice(&spend_batch_body(&[])).unwrap();
        assert!(empty.events.is_empty());
    }

    #[test]
    fn customer_path_encodes_one_segment() {
        assert_eq!(
            customer_path("a b/c~é"),
            "/tollgate/internal/v1/customers/a%20b%2Fc~%C3%A9"
        );
        assert_eq!(key_path("ab"), "/tollgate/internal/v1/keys/ab");
        assert_eq!(changes_path(7), "/tollgate/internal/v1/changes?since=7");
    }

    #[test]
    fn every_shared_data_key_is_prefixed() {
        for key in [
            KEY_RECORD_PREFIX,
            UNKNOWN_KEY_PREFIX,
            KEY_EPOCH_KEY,
            CUSTOMER_PREFIX,
            CHANGES_SEQ_KEY,
            CREATE_LEASE_KEY,
            BUDGET_PREFIX,
            RATE_LIMIT_PREFIX,
            RATE_LEASE_PREFIX,
            ENVOY_ID_KEY,
            LEASE_SEQ_KEY,
            LEASE_RENEW_ALL_KEY,
        ] {
            assert!(key.starts_with("tollgate:v1:"), "{key}");
        }
    }

    /// No key of the binary counters or of the records seeding them can be one an older
    /// module wrote: neither prefix starts the other (then no key is under both).
    #[test]
    fn counters_and_their_seeds_share_no_key_with_older_modules() {
        for now in [
            BUDGET_PREFIX,
            RATE_LIMIT_PREFIX,
            RATE_LEASE_PREFIX,
            KEY_RECORD_PREFIX,
            CUSTOMER_PREFIX,
        ] {
            for old in RETIRED_PREFIXES {
                assert!(
                    !now.starts_with(old) && !old.starts_with(now),
                    "{now} {old}"
                );
            }
        }
    }
}
