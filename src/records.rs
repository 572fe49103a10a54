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
}

/// The sidecar's answer to a key lookup: the record, or that no such key exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum KeyLookup {
    Found { key: Box<KeyRecord> },
    NotFound,
}
