//! What the filter knows about a caller: the record the sidecar serves for a key hash, cached in
//! Envoy shared data. It carries the key's own settings and those of its user (and, later, team).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyRecord {
    /// `sha256(raw key)`.
    pub token: String,
    /// `sk-...abcd`.
    pub key_name: String,
    pub key_alias: Option<String>,
    /// The key's `models` list (empty = all).
    pub models: Vec<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// The user's `models`, which apply to personal keys (no team).
    pub user_models: Vec<String>,
    /// Expiry, unix microseconds; `None` = never.
    pub expires_at_micros: Option<i64>,
    pub blocked: bool,
    pub max_budget: Option<f64>,
    pub spend: f64,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    /// Per-model limits of this key (`metadata.model_rpm_limit` / `model_tpm_limit`).
    pub model_rpm_limit: BTreeMap<String, u64>,
    pub model_tpm_limit: BTreeMap<String, u64>,
    /// The user's own limits, shared by all the user's keys.
    pub user_rpm_limit: Option<u64>,
    pub user_tpm_limit: Option<u64>,
    /// Key budget: `budget_duration` and the aligned end of the current period (unix µs).
    pub budget_duration: Option<String>,
    pub budget_reset_at_micros: Option<i64>,
    /// Spend in nano-dollars as the sidecar has it (seeds the shared-data counter).
    pub spend_nanos: i64,
    /// `model_max_budget` entries: model (or access group / glob) → budget.
    pub model_max_budget: BTreeMap<String, ModelBudget>,
    /// The user's budget, for personal keys.
    pub user_budget: Option<BudgetState>,
    /// The proxy-wide budget's state when this record was served (seeds the counter).
    pub proxy_budget: Option<BudgetState>,
    /// The team's `models` (empty = all); only meaningful when `team_id` is set. A key whose
    /// `models` contain `all-team-models` is limited to these.
    pub team_models: Vec<String>,
    /// The team is blocked (`/team/block`): every key of the team is refused (401).
    pub team_blocked: bool,
    /// The team's own budget: `max_budget`, period and spend.
    pub team_budget: Option<BudgetState>,
    pub team_rpm_limit: Option<u64>,
    pub team_tpm_limit: Option<u64>,
    /// The team's per-model limits (`metadata.model_rpm_limit` / `model_tpm_limit`).
    pub team_model_rpm_limit: BTreeMap<String, u64>,
    pub team_model_tpm_limit: BTreeMap<String, u64>,
    /// The key's user as a member of the key's team: its membership budget (its own
    /// `max_budget_in_team`, else the team's `team_member_budget`), with the membership's spend.
    pub team_member_budget: Option<BudgetState>,
    pub team_member_rpm_limit: Option<u64>,
    pub team_member_tpm_limit: Option<u64>,
}

/// A budget as the sidecar last knew it: limit, period and spend so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetState {
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
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

/// One settled LLM call, sent from the filter to the sidecar in batches. `request_id` makes
/// applying it idempotent: a retried batch never counts twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpendEvent {
    /// Envoy's `x-request-id`: unique per request.
    pub request_id: String,
    /// Key token (sha256); `None` for the master key.
    pub api_key: Option<String>,
    pub key_alias: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Customer / end user, as identified from the request.
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
    pub estimated: bool,
    /// `success` or `failure` (upstream error, client abort).
    pub status: String,
    /// `acompletion`, `atext_completion`, `aembedding`.
    pub call_type: String,
    pub start_time_micros: i64,
    pub end_time_micros: i64,
}

/// A batch of spend events (`POST /tollgate/internal/v1/spend`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpendBatch {
    pub events: Vec<SpendEvent>,
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
    pub blocked: bool,
    /// The customer's `models` (empty = all).
    pub models: Vec<String>,
    pub budget: Option<BudgetState>,
    pub rpm_limit: Option<u64>,
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
}

/// Response header of mutating admin calls: comma-separated entries as in [`Changes`].
pub const INVALIDATE_HEADER: &str = "x-tollgate-invalidate";

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
}
