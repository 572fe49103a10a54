//! What the filter knows about a caller: the record the sidecar serves for a key hash, cached in
//! Envoy shared data. It carries the key's own settings and those of its user (and, later, team).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// Records omit empty and default fields when written (every struct here reads them back with
// `#[serde(default)]`): a key record is cached in shared data for every warm key, so its size is
// Envoy's memory per key, and the filter copies it on every request.
fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyRecord {
    /// `sha256(raw key)`.
    pub token: String,
    /// `sk-...abcd`.
    pub key_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_alias: Option<String>,
    /// The key's `models` list (empty = all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// The user's `models`, which apply to personal keys (no team).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub user_models: Vec<String>,
    /// Expiry, unix microseconds; `None` = never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_micros: Option<i64>,
    #[serde(skip_serializing_if = "is_false")]
    pub blocked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    pub spend: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u64>,
    /// Per-model limits of this key (`metadata.model_rpm_limit` / `model_tpm_limit`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_rpm_limit: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_tpm_limit: BTreeMap<String, u64>,
    /// The user's own limits, shared by all the user's keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_rpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_tpm_limit: Option<u64>,
    /// Key budget: `budget_duration` and the aligned end of the current period (unix µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_reset_at_micros: Option<i64>,
    /// Spend in nano-dollars as the sidecar has it (seeds the shared-data counter).
    pub spend_nanos: i64,
    /// `model_max_budget` entries: model (or access group / glob) → budget.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_max_budget: BTreeMap<String, ModelBudget>,
    /// The user's budget, for personal keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_budget: Option<BudgetState>,
    /// The proxy-wide budget's state when this record was served (seeds the counter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_budget: Option<BudgetState>,
    /// The team's `models` (empty = all); only meaningful when `team_id` is set. A key whose
    /// `models` contain `all-team-models` is limited to these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub team_models: Vec<String>,
    /// The team is blocked (`/team/block`): every key of the team is refused (401).
    #[serde(skip_serializing_if = "is_false")]
    pub team_blocked: bool,
    /// The team's own budget: `max_budget`, period and spend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_budget: Option<BudgetState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_rpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_tpm_limit: Option<u64>,
    /// The team's per-model limits (`metadata.model_rpm_limit` / `model_tpm_limit`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub team_model_rpm_limit: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub team_model_tpm_limit: BTreeMap<String, u64>,
    /// The key's user as a member of the key's team: its membership budget (its own
    /// `max_budget_in_team`, else the team's `team_member_budget`), with the membership's spend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_member_budget: Option<BudgetState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_member_rpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_member_tpm_limit: Option<u64>,
    /// The organization the key's requests belong to: the key's own `organization_id`, else
    /// its team's (LiteLLM's `org_id or team.organization_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// The organization's `models` (empty = all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub organization_models: Vec<String>,
    /// The organization's budget (its budget row's `max_budget` and period) and spend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_budget: Option<BudgetState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_rpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_tpm_limit: Option<u64>,
    /// The organization's per-model limits (`metadata.model_rpm_limit` / `model_tpm_limit`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub organization_model_rpm_limit: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub organization_model_tpm_limit: BTreeMap<String, u64>,
    /// The key's `aliases` (requested name → model it is sent to).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, String>,
    /// The team's `model_aliases` (requested name → model it is sent to).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub team_model_aliases: BTreeMap<String, String>,
}

/// A budget as the sidecar last knew it: limit, period and spend so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_reset_at_micros: Option<i64>,
    pub spend_nanos: i64,
}

/// One `model_max_budget` entry (LiteLLM: `{"budget_limit"|"max_budget": f, "time_period"|"budget_duration": "1d"}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelBudget {
    pub max_budget: f64,
    pub budget_duration: String,
}

/// One settled LLM call, sent from the filter to the sidecar in batches. `event_id` makes
/// applying it idempotent: a retried batch never counts twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpendEvent {
    /// Minted by the filter ([`event_id`]), unique per Envoy process and call: the key that
    /// de-duplicates a replayed batch. Never taken from the client.
    pub event_id: String,
    /// The spend log's `request_id`, as LiteLLM's: the call's id returned in the response
    /// (`chatcmpl-...`), else `event_id`.
    pub request_id: String,
    /// The client's `x-request-id` (Envoy keeps a client-supplied one): a plain field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// Key token (sha256); `None` for the master key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Customer / end user, as identified from the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    /// Public model name.
    pub model: String,
    /// Deployment id (`model_info.id`).
    pub model_id: String,
    /// Cost in nano-dollars (10⁻⁹ USD): integer, so totals never drift.
    pub spend_nanos: i64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    /// No usage came back: tokens and cost are Tollgate's estimate.
    #[serde(skip_serializing_if = "is_false")]
    pub estimated: bool,
    /// `success` or `failure` (upstream error, client abort).
    pub status: String,
    /// `acompletion`, `atext_completion`, `aembedding`.
    pub call_type: String,
    pub start_time_micros: i64,
    pub end_time_micros: i64,
    /// Fleet mode: the Envoy process whose leases the call was admitted under
    /// ([`crate::contract::ENVOY_ID_KEY`]); the sidecar adds the spend to that Envoy's leases as
    /// applied. `None` outside fleet mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy_id: Option<String>,
    /// What was left of the key's rpm / tpm limit for this model (`model_rpm_limit` /
    /// `model_tpm_limit`) when the call was admitted; `None` without such a limit. The sidecar's
    /// `litellm_remaining_api_key_{requests,tokens}_for_model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_remaining_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_remaining_tokens: Option<u64>,
}

/// A spend event's id: this filter instance's random id (128 bits, drawn when the VM starts)
/// and its call counter. Unique per Envoy process and call, whatever the client sends.
pub fn event_id(instance: &[u8; 16], seq: u64) -> String {
    format!("tg-{}-{seq}", hex::encode(instance))
}

/// A batch of spend events (`POST /tollgate/internal/v1/spend`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpendBatch {
    pub events: Vec<SpendEvent>,
}

/// Fleet mode (`POST /tollgate/internal/v1/leases`, FLEET.md §4.5): one Envoy's cumulative
/// report on budgets it uses, asking for slices of them. Idempotent: cumulative figures, and
/// `seq` (monotonic per Envoy) lets the sidecar ignore a stale report (it answers the current
/// grant).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRequest {
    /// [`crate::contract::ENVOY_ID_KEY`]: 128 random bits (hex) per Envoy process.
    pub envoy_id: String,
    pub seq: u64,
    /// Sorted by `scope`, at most one item per scope.
    pub items: Vec<LeaseItem>,
}

/// One budget or rate limit in a [`LeaseRequest`]. Amounts are nano-dollars (budgets) or
/// requests, tokens, slots (rate limits), cumulative for the period.
///
/// Rate limits (FLEET.md §4.3): `level` is `rpm`, `tpm` or `parallel`, `ids` the descriptor's
/// `[kind, value]` (`["api_key", <token>]`, `["model_per_key", "<token>:<model>"]`, ...),
/// `limit` the limit the filter enforces, `period` the window's end (rpm/tpm; the sidecar opens
/// windows, the filter takes the answer's) or 0 (slots), `used` what this Envoy took in it
/// (requests, tokens reserved, slots acquired) and `released` what it gave back (tpm refunds,
/// slots released).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseItem {
    /// The budget's shared-data entry name without [`crate::contract::BUDGET_PREFIX`]:
    /// `<level>:<id>` ([`crate::budgets::storage_key`]); the lease's identity. Made from
    /// `level` and `ids` by [`crate::budgets::scope_name`] (the sidecar refuses an item whose
    /// scope is not that name).
    pub scope: String,
    /// The level (`key`, `key_model`, `user`, `team`, `team_member`, `organization`,
    /// `end_user`, `proxy`) and
    /// the ids naming the budget: `[token]`, `[token, model entry]`, `[user]`, `[team]`,
    /// `[team, user]`, `[customer]`, `[]`. Ids may contain `:`, so they are not parsed out of
    /// `scope`.
    pub level: String,
    pub ids: Vec<String>,
    /// The period this Envoy counts in: its entry's `reset_at` (µs); 0 = no period. An item
    /// in another period than the sidecar's current one is sized as having used nothing of it.
    /// `key_model` budgets: the sidecar keeps the window (opened by the first lease call after
    /// the last window ended), so the filter takes the answer's `period` for them.
    pub period: i64,
    /// Settled spend plus reservations in flight on this Envoy in `period`.
    pub used: i64,
    /// The grant this Envoy enforces now (0 = none).
    pub held: i64,
    /// The seq of the lease call whose answer `held` came from; the entry (a budget's or a rate
    /// slice) applies no answer to a call numbered at or below it (0 = not said). It tells
    /// the sidecar when a shrink is acknowledged.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub held_seq: u64,
    /// How much beyond `used` it expects to need over the sizing horizon (at least its largest
    /// reservation).
    pub want: i64,
    /// Idle or stopping: the sidecar lowers the grant to `used`.
    pub returning: bool,
    /// `ĉ`: the largest reservation of one request on this budget lately (optional; 0 = not
    /// said, then the sidecar takes `want` for it). It sizes the one-request floor and the cap
    /// `max(ĉ, 2 % of the limit)` of a grant (FLEET.md §4.6): without it a grant is simply
    /// `want` while it fits, which is safe but shares less evenly near exhaustion.
    #[serde(skip_serializing_if = "is_zero")]
    pub reservation: i64,
    /// Rate limits: the limit (requests, tokens, slots) this Envoy enforces; the sidecar lends
    /// at most this much in all (a lowered limit shrinks this Envoy's grant to what fits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Rate limits: given back in total in `period` (tpm refunds, slots released).
    #[serde(skip_serializing_if = "is_zero")]
    pub released: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The answer to a [`LeaseRequest`]: one grant per item, same order; then, for budgets in the
/// last seconds of their period, a grant of the same scope for the next period (issued ahead,
/// FLEET.md §4.7: the filter keeps it for when its clock crosses the reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseAnswer {
    pub items: Vec<LeaseGrant>,
}

/// A slice of one budget for one Envoy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseGrant {
    pub scope: String,
    /// The period the grant is for: the budget's current period on the sidecar (µs; 0 = none).
    /// The filter applies a grant only to an entry in the same period.
    pub period: i64,
    /// Cumulative for this Envoy in `period`: never below the `used` it reported; below an
    /// earlier answer's grant after an admin decrease (a shrink) or `returning`, so the filter
    /// applies answers in the order of the calls' seq (budgets and rate limits). A lease that
    /// expired (no renewal within `ttl_ms`) is void on both sides.
    pub grant: i64,
    /// Valid for this long from when the request was sent: the filter's deadline is
    /// `sent + ttl_ms − 500 ms`, before the sidecar's own expiry (`now() + ttl` at commit).
    pub ttl_ms: u64,
    /// The budget's settled spend across the fleet, and its limit (`None`: tracked only), for
    /// response headers and refusal messages. Rate limits: what the fleet holds of the limit
    /// (taken and not given back, as last reported), and the limit the grant was computed
    /// under (the item's), which the filter keeps with the slice.
    pub spend: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_nanos: Option<i64>,
}

/// Nano-dollars per USD.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// The sidecar's answer to a key lookup: the record, or that no such key exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum KeyLookup {
    Found {
        key: Box<KeyRecord>,
        /// The change-log position the record reflects: a later poll listing this key for a
        /// change at or before it need not drop it.
        #[serde(default)]
        seq: i64,
    },
    NotFound,
}

/// What the filter knows about a customer (end user): the `end_users` row with its budget
/// (its own, or its linked `budget_id` row).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomerRecord {
    pub user_id: String,
    /// `/customer/block`: Tollgate refuses the customer's requests (401); LiteLLM only stores it.
    #[serde(skip_serializing_if = "is_false")]
    pub blocked: bool,
    /// The customer's `models` (empty = all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
}

/// The sidecar's answer to a customer lookup (`GET /tollgate/internal/v1/customers/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CustomerLookup {
    Found {
        customer: Box<CustomerRecord>,
    },
    /// No such customer yet: `default_budget` is `litellm_settings.max_end_user_budget_id`'s
    /// budget (with zero spend), which applies to customers without their own.
    NotFound {
        #[serde(default)]
        default_budget: Option<BudgetState>,
    },
}

/// The sidecar's change log (`GET /tollgate/internal/v1/changes?since=<seq>`): entries are key
/// token hashes, `customer:<id>`, or `*` (everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Changes {
    /// The latest sequence number the answer covers; ask with `since=<seq>` next time.
    pub seq: i64,
    pub entries: Vec<String>,
    /// [`crate::provider_keys::ProviderKeys::fingerprint`]: a filter holding other keys fetches
    /// them again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_keys: Option<String>,
}

/// How the filter stores a cached record in shared data: `<epoch> <seq>\n<json>`, where
/// `epoch` is the invalidate-everything generation it was stored under and `seq` the change-log
/// position it reflects (`KeyLookup::Found::seq`).
pub fn cached_record_header(epoch: u64, seq: i64) -> String {
    format!("{epoch} {seq}\n")
}

/// Splits a cached record into (epoch, seq, json). Records written before `seq` existed
/// (`<epoch>\n<json>`) read as seq 0. `None` for a tombstone or anything malformed.
pub fn split_cached_record(bytes: &[u8]) -> Option<(u64, i64, &[u8])> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(bytes.get(..nl)?).ok()?;
    let (epoch, seq) = match head.split_once(' ') {
        Some((e, s)) => (e.parse().ok()?, s.parse().ok()?),
        None => (head.parse().ok()?, 0),
    };
    Some((epoch, seq, bytes.get(nl + 1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_record_header_round_trips() {
        let mut stored = cached_record_header(3, 42).into_bytes();
        stored.extend_from_slice(b"{\"a\":1}");
        assert_eq!(
            split_cached_record(&stored),
            Some((3, 42, &b"{\"a\":1}"[..]))
        );
        assert_eq!(split_cached_record(b"7\n{}"), Some((7, 0, &b"{}"[..])));
        assert_eq!(split_cached_record(b""), None);
        assert_eq!(split_cached_record(b"x 1\n{}"), None);
        assert_eq!(split_cached_record(b"1 y\n{}"), None);
        assert_eq!(split_cached_record(b"1 2"), None);
    }

    #[test]
    fn records_omit_defaults_and_read_back_the_same() {
        let key = KeyRecord {
            token: "ab".repeat(32),
            key_name: "sk-...abcd".into(),
            max_budget: Some(10.0),
            rpm_limit: Some(5),
            budget_duration: Some("30d".into()),
            proxy_budget: Some(BudgetState {
                max_budget: Some(100.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&key).unwrap();
        for absent in [
            "null",
            "[]",
            "{}",
            "false",
            "team_",
            "user_",
            "models",
            "organization",
        ] {
            assert!(!json.contains(absent), "{absent} in {json}");
        }
        assert_eq!(serde_json::from_str::<KeyRecord>(&json).unwrap(), key);
        // Records cached by an older filter, with every field written out, still read.
        let mut full = serde_json::to_value(&key).unwrap();
        full["team_id"] = serde_json::Value::Null;
        full["models"] = serde_json::json!([]);
        full["blocked"] = serde_json::json!(false);
        assert_eq!(serde_json::from_value::<KeyRecord>(full).unwrap(), key);

        let event = SpendEvent {
            request_id: "r".into(),
            model: "m".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            !json.contains("null") && !json.contains("estimated"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<SpendEvent>(&json).unwrap(), event);
    }

    #[test]
    fn event_ids_differ_by_instance_and_call() {
        let a = [7u8; 16];
        let b = [8u8; 16];
        assert_eq!(event_id(&a, 3), format!("tg-{}-3", "07".repeat(16)));
        assert_ne!(event_id(&a, 3), event_id(&a, 4));
        assert_ne!(event_id(&a, 3), event_id(&b, 3));
    }
}
