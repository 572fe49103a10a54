//! The sidecar's `/metrics` (Prometheus text format): LiteLLM's per-call counters with
//! LiteLLM's names and labels, fed by the spend events the filter posts (each event counted
//! once, when first applied), LiteLLM's remaining-budget gauges read from the store at scrape
//! time, and Tollgate's own (store latency, spend batches, change-log position).

use super::store::{BudgetSnapshot, EntityKind};
use crate::plugin_config::PluginConfig;
use crate::records::SpendEvent;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The value LiteLLM's labels take when it does not know one (`str(None)`).
const NONE: &str = "None";

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Labels of `litellm_requests_metric` (LiteLLM's `UserAPIKeyLabelNames`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub end_user: String,
    pub hashed_api_key: String,
    pub api_key_alias: String,
    pub model: String,
    pub team: String,
    pub team_alias: String,
    pub user: String,
    pub user_email: String,
    pub client_ip: String,
    pub user_agent: String,
    pub requested_model: String,
    pub model_id: String,
    pub api_provider: String,
}

/// Labels of `litellm_spend_metric`: the request labels and `service_tier`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    pub end_user: String,
    pub hashed_api_key: String,
    pub api_key_alias: String,
    pub model: String,
    pub team: String,
    pub team_alias: String,
    pub user: String,
    pub user_email: String,
    pub client_ip: String,
    pub user_agent: String,
    pub requested_model: String,
    pub model_id: String,
    pub api_provider: String,
    pub service_tier: String,
}

/// Labels of the token counters (no client ip or user agent).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub end_user: String,
    pub hashed_api_key: String,
    pub api_key_alias: String,
    pub model: String,
    pub team: String,
    pub team_alias: String,
    pub user: String,
    pub user_email: String,
    pub requested_model: String,
    pub model_id: String,
    pub api_provider: String,
}

/// Labels of `litellm_remaining_api_key_{requests,tokens}_for_model` (`model`: the model
/// group, i.e. the requested public name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyModelLabels {
    hashed_api_key: String,
    api_key_alias: String,
    model: String,
    model_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyBudgetLabels {
    hashed_api_key: String,
    api_key_alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamBudgetLabels {
    team: String,
    team_alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserBudgetLabels {
    user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendEventLabels {
    result: String,
}

/// Store operations timed by `tollgate_store_latency_seconds`.
#[derive(Debug, Clone, Copy)]
pub enum StoreOp {
    SpendBatch,
    KeyLookup,
}

impl StoreOp {
    fn label(self) -> &'static str {
        match self {
            StoreOp::SpendBatch => "spend_batch",
            StoreOp::KeyLookup => "key_lookup",
        }
    }
}

/// The sidecar's live counters (cheap to clone: each family shares its state).
#[derive(Clone)]
pub struct SidecarMetrics {
    requests: Family<RequestLabels, Counter>,
    spend: Family<SpendLabels, FloatCounter>,
    total_tokens: Family<TokenLabels, Counter>,
    input_tokens: Family<TokenLabels, Counter>,
    output_tokens: Family<TokenLabels, Counter>,
    store_latency: Family<StoreOpLabels, Histogram>,
    spend_batches: Counter,
    spend_events: Family<SpendEventLabels, Counter>,
    remaining_requests_for_model: Family<KeyModelLabels, Gauge>,
    remaining_tokens_for_model: Family<KeyModelLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100µs .. ~3.3s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        SidecarMetrics {
            requests: Family::default(),
            spend: Family::default(),
            total_tokens: Family::default(),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            store_latency: Family::new_with_constructor(latency_histogram),
            spend_batches: Counter::default(),
            spend_events: Family::default(),
            remaining_requests_for_model: Family::default(),
            remaining_tokens_for_model: Family::default(),
        }
    }
}

fn or_none(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or(NONE).to_string()
}

/// LiteLLM's labels for one settled call. `model` is the provider's model name and
/// `api_provider` the provider, from the deployment that served it; `end_user` stays `None`
/// as in LiteLLM by default (`enable_end_user_cost_tracking_prometheus_only` unset), which
/// also keeps customer ids out of the label space.
pub fn request_labels(e: &SpendEvent, plugin: &PluginConfig) -> RequestLabels {
    let deployment = plugin.deployments.iter().find(|d| d.id == e.model_id);
    RequestLabels {
        end_user: NONE.into(),
        hashed_api_key: or_none(e.api_key.as_deref()),
        api_key_alias: or_none(e.key_alias.as_deref()),
        model: or_none(
            deployment
                .map(|d| d.backend_model.as_str())
                .filter(|m| !m.is_empty() && !m.contains('*'))
                .or(Some(e.model.as_str())),
        ),
        team: or_none(e.team_id.as_deref()),
        team_alias: NONE.into(),
        user: or_none(e.user_id.as_deref()),
        user_email: NONE.into(),
        client_ip: NONE.into(),
        user_agent: NONE.into(),
        requested_model: or_none(Some(&e.model)),
        model_id: or_none(Some(&e.model_id)),
        api_provider: or_none(deployment.map(|d| d.provider.as_str())),
    }
}

impl From<&RequestLabels> for SpendLabels {
    fn from(r: &RequestLabels) -> Self {
        SpendLabels {
            end_user: r.end_user.clone(),
            hashed_api_key: r.hashed_api_key.clone(),
            api_key_alias: r.api_key_alias.clone(),
            model: r.model.clone(),
            team: r.team.clone(),
            team_alias: r.team_alias.clone(),
            user: r.user.clone(),
            user_email: r.user_email.clone(),
            client_ip: r.client_ip.clone(),
            user_agent: r.user_agent.clone(),
            requested_model: r.requested_model.clone(),
            model_id: r.model_id.clone(),
            api_provider: r.api_provider.clone(),
            service_tier: NONE.into(),
        }
    }
}

impl From<&RequestLabels> for TokenLabels {
    fn from(r: &RequestLabels) -> Self {
        TokenLabels {
            end_user: r.end_user.clone(),
            hashed_api_key: r.hashed_api_key.clone(),
            api_key_alias: r.api_key_alias.clone(),
            model: r.model.clone(),
            team: r.team.clone(),
            team_alias: r.team_alias.clone(),
            user: r.user.clone(),
            user_email: r.user_email.clone(),
            requested_model: r.requested_model.clone(),
            model_id: r.model_id.clone(),
            api_provider: r.api_provider.clone(),
        }
    }
}

impl SidecarMetrics {
    /// A spend batch the store took: `events` are the ones it had not seen before (only
    /// those count), `duplicates` the number of replayed ones.
    pub fn record_spend_batch(
        &self,
        events: &[&SpendEvent],
        duplicates: u64,
        plugin: &PluginConfig,
    ) {
        self.spend_batches.inc();
        self.spend_events
            .get_or_create(&SpendEventLabels {
                result: "applied".into(),
            })
            .inc_by(events.len() as u64);
        self.spend_events
            .get_or_create(&SpendEventLabels {
                result: "duplicate".into(),
            })
            .inc_by(duplicates);
        // LiteLLM counts these on success only (its failures go to other metrics).
        for e in events.iter().filter(|e| e.status == "success") {
            let labels = request_labels(e, plugin);
            self.requests.get_or_create(&labels).inc();
            let tokens = TokenLabels::from(&labels);
            self.total_tokens
                .get_or_create(&tokens)
                .inc_by(e.total_tokens);
            self.input_tokens
                .get_or_create(&tokens)
                .inc_by(e.prompt_tokens);
            self.output_tokens
                .get_or_create(&tokens)
                .inc_by(e.completion_tokens);
            self.spend
                .get_or_create(&SpendLabels::from(&labels))
                .inc_by(super::store::nanos_to_usd(e.spend_nanos.max(0)));
            // As LiteLLM: set on each successful call from what its limiter reported at
            // admission, `sys.maxsize` when the key has no limit for the model.
            let key_model = KeyModelLabels {
                hashed_api_key: labels.hashed_api_key.clone(),
                api_key_alias: labels.api_key_alias.clone(),
                model: labels.requested_model.clone(),
                model_id: labels.model_id.clone(),
            };
            let remaining =
                |r: Option<u64>| r.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
            self.remaining_requests_for_model
                .get_or_create(&key_model)
                .set(remaining(e.model_remaining_requests));
            self.remaining_tokens_for_model
                .get_or_create(&key_model)
                .set(remaining(e.model_remaining_tokens));
        }
    }

    /// How long one store operation took.
    pub fn observe_store(&self, op: StoreOp, seconds: f64) {
        self.store_latency
            .get_or_create(&StoreOpLabels {
                op: op.label().into(),
            })
            .observe(seconds);
    }

    /// The exposition: the live counters, then gauges from `budgets` and the change-log
    /// position.
    pub fn encode(
        &self,
        budgets: &BudgetSnapshot,
        change_seq: i64,
    ) -> Result<String, std::fmt::Error> {
        let mut r = Registry::default();
        r.register(
            "litellm_requests_metric",
            "Total number of LLM calls to litellm - track total per API Key, team, user",
            self.requests.clone(),
        );
        r.register(
            "litellm_spend_metric",
            "Total spend on LLM requests",
            self.spend.clone(),
        );
        r.register(
            "litellm_total_tokens_metric",
            "Total number of input + output tokens from LLM requests",
            self.total_tokens.clone(),
        );
        r.register(
            "litellm_input_tokens_metric",
            "Total number of input tokens from LLM requests",
            self.input_tokens.clone(),
        );
        r.register(
            "litellm_output_tokens_metric",
            "Total number of output tokens from LLM requests",
            self.output_tokens.clone(),
        );
        r.register(
            "litellm_remaining_api_key_requests_for_model",
            "Remaining Requests API Key can make for model (model based rpm limit on key)",
            self.remaining_requests_for_model.clone(),
        );
        r.register(
            "litellm_remaining_api_key_tokens_for_model",
            "Remaining Tokens API Key can make for model (model based tpm limit on key)",
            self.remaining_tokens_for_model.clone(),
        );
        let key_remaining = Family::<KeyBudgetLabels, FloatGauge>::default();
        let key_max = Family::<KeyBudgetLabels, FloatGauge>::default();
        let team_remaining = Family::<TeamBudgetLabels, FloatGauge>::default();
        let team_max = Family::<TeamBudgetLabels, FloatGauge>::default();
        let user_remaining = Family::<UserBudgetLabels, FloatGauge>::default();
        let user_max = Family::<UserBudgetLabels, FloatGauge>::default();
        for b in &budgets.entities {
            let remaining = b.max_budget - b.spend_usd;
            match b.kind {
                EntityKind::Key => {
                    let l = KeyBudgetLabels {
                        hashed_api_key: b.id.clone(),
                        api_key_alias: or_none(b.alias.as_deref()),
                    };
                    key_remaining.get_or_create(&l).set(remaining);
                    key_max.get_or_create(&l).set(b.max_budget);
                }
                EntityKind::Team => {
                    let l = TeamBudgetLabels {
                        team: b.id.clone(),
                        team_alias: or_none(b.alias.as_deref()),
                    };
                    team_remaining.get_or_create(&l).set(remaining);
                    team_max.get_or_create(&l).set(b.max_budget);
                }
                EntityKind::User => {
                    let l = UserBudgetLabels { user: b.id.clone() };
                    user_remaining.get_or_create(&l).set(remaining);
                    user_max.get_or_create(&l).set(b.max_budget);
                }
            }
        }
        r.register(
            "litellm_remaining_api_key_budget_metric",
            "Remaining budget for api key",
            key_remaining,
        );
        r.register(
            "litellm_api_key_max_budget_metric",
            "Maximum budget set for api key",
            key_max,
        );
        r.register(
            "litellm_remaining_team_budget_metric",
            "Remaining budget for team",
            team_remaining,
        );
        r.register(
            "litellm_team_max_budget_metric",
            "Maximum budget set for team",
            team_max,
        );
        r.register(
            "litellm_remaining_user_budget_metric",
            "Remaining budget for user",
            user_remaining,
        );
        r.register(
            "litellm_user_max_budget_metric",
            "Maximum budget set for user",
            user_max,
        );
        r.register(
            "tollgate_store_latency_seconds",
            "Time the sidecar's store took per operation",
            self.store_latency.clone(),
        );
        r.register(
            "tollgate_spend_batches_applied",
            "Spend batches from the filter the store applied",
            self.spend_batches.clone(),
        );
        r.register(
            "tollgate_spend_events",
            "Spend events received, by result (applied, or duplicate of one already applied)",
            self.spend_events.clone(),
        );
        let position = Gauge::<i64>::default();
        position.set(change_seq);
        r.register(
            "tollgate_change_log_position",
            "Sequence number of the latest change-log entry the filter polls",
            position,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::store::BudgetedEntity;

    fn exposition() -> String {
        let m = SidecarMetrics::default();
        let e = SpendEvent {
            api_key: Some("abc".into()),
            model: "m".into(),
            model_id: "m-id".into(),
            spend_nanos: 1,
            status: "success".into(),
            ..Default::default()
        };
        m.record_spend_batch(&[&e], 0, &PluginConfig::default());
        m.observe_store(StoreOp::SpendBatch, 0.001);
        let entity = |kind| BudgetedEntity {
            kind,
            id: "x".into(),
            alias: None,
            max_budget: 1.0,
            spend_usd: 0.0,
            rpm_limit: None,
            tpm_limit: None,
        };
        let budgets = BudgetSnapshot {
            entities: vec![
                entity(EntityKind::Key),
                entity(EntityKind::Team),
                entity(EntityKind::User),
            ],
        };
        m.encode(&budgets, 7).unwrap()
    }

    /// The dashboard in the repo queries only series Tollgate exports (the sidecar's, or the
    /// filter's on Envoy), and has a panel for every one of them.
    #[test]
    fn dashboard_uses_exported_names_and_shows_every_one() {
        use crate::metrics::{Kind, Metric};
        let text = exposition();
        let dashboard = include_str!("../../dashboards/tollgate.json");
        let parsed: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let filter: Vec<(String, Kind)> = Metric::all()
            .map(|m| (m.prometheus_name(), m.kind()))
            .collect();
        let from_filter = |word: &str| {
            filter.iter().any(|(name, kind)| {
                word == name
                    || (*kind == Kind::Histogram
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| word == format!("{name}{suffix}")))
            })
        };
        let mut words = Vec::new();
        for panel in parsed["panels"].as_array().unwrap() {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                words.extend(
                    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| w.starts_with("litellm_") || w.starts_with("tollgate_"))
                        .map(str::to_string),
                );
            }
        }
        for word in &words {
            let from_sidecar = text
                .lines()
                .any(|l| l.starts_with(&format!("{word}{{")) || l.starts_with(&format!("{word} ")));
            assert!(
                from_sidecar || from_filter(word),
                "{word} is not exported:\n{text}"
            );
        }
        let families = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next());
        let exported: Vec<String> = families
            .map(str::to_string)
            .chain(filter.iter().map(|(name, _)| name.clone()))
            .collect();
        assert!(exported.len() >= 20, "{exported:?}");
        for name in exported {
            assert!(
                words.iter().any(|w| w.starts_with(&name)),
                "no panel shows {name}"
            );
        }
    }

    #[test]
    fn remaining_for_model_is_the_last_successful_calls_or_max() {
        let m = SidecarMetrics::default();
        let event = |remaining: Option<u64>, status: &str| SpendEvent {
            api_key: Some("abc".into()),
            key_alias: Some("k".into()),
            model: "m".into(),
            model_id: "m-id".into(),
            status: status.into(),
            model_remaining_requests: remaining,
            model_remaining_tokens: remaining.map(|r| r * 100),
            ..Default::default()
        };
        let plugin = PluginConfig::default();
        let labels = "{hashed_api_key=\"abc\",api_key_alias=\"k\",model=\"m\",model_id=\"m-id\"}";
        let text = |m: &SidecarMetrics| m.encode(&BudgetSnapshot::default(), 0).unwrap();
        m.record_spend_batch(
            &[&event(Some(4), "success"), &event(Some(3), "success")],
            0,
            &plugin,
        );
        // A failed call does not set them.
        m.record_spend_batch(&[&event(Some(1), "failure")], 0, &plugin);
        let t = text(&m);
        assert!(
            t.contains(&format!(
                "litellm_remaining_api_key_requests_for_model{labels} 3\n"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "litellm_remaining_api_key_tokens_for_model{labels} 300\n"
            )),
            "{t}"
        );
        m.record_spend_batch(&[&event(None, "success")], 0, &plugin);
        let t = text(&m);
        assert!(
            t.contains(&format!(
                "litellm_remaining_api_key_requests_for_model{labels} {}\n",
                i64::MAX
            )),
            "{t}"
        );
    }

    #[test]
    fn a_missing_label_value_is_none_as_in_litellm() {
        let text = exposition();
        assert!(
            text.contains("litellm_requests_metric_total{end_user=\"None\",hashed_api_key=\"abc\",api_key_alias=\"None\",model=\"m\",team=\"None\""),
            "{text}"
        );
        assert!(text.contains("tollgate_change_log_position 7"), "{text}");
    }
}
