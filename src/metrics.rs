//! The filter's counters and histograms (Envoy stats through proxy-wasm). Names carry their
//! labels as `<tag>=.=<value>;.;` segments before the metric's own name, Istio's convention:
//! the rendered bootstrap's `stats_tags`, or Istio's `extraStatTags`, turn them into
//! Prometheus labels with the same regex ([`stats_tag_regex`]). Labels stay low-cardinality:
//! no per-key or per-model values (per-key figures come from the sidecar's `/metrics`).

use crate::errors::ApiError;

/// Why an LLM call ended where it did (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Admitted,
    Auth,
    ModelAccess,
    Budget,
    RateLimit,
    BadRequest,
    Other,
}

impl Outcome {
    /// The refusal reason of a local error answer.
    pub fn of_refusal(error: &ApiError) -> Self {
        match error.error_type.as_str() {
            "auth_error" | "token_not_found_in_db" | "expired_key" => Outcome::Auth,
            t if t.ends_with("_model_access_denied") => Outcome::ModelAccess,
            "budget_exceeded" => Outcome::Budget,
            "throttling_error" => Outcome::RateLimit,
            "invalid_request_error" | "bad_request_error" => Outcome::BadRequest,
            _ => Outcome::Other,
        }
    }
}

/// The class of the upstream's status (the `upstream` label); `None` for refused calls and
/// calls that ended without an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
    Other,
    None,
}

impl StatusClass {
    pub fn of(status: Option<u16>) -> Self {
        match status {
            Some(200..=299) => StatusClass::Success,
            Some(400..=499) => StatusClass::ClientError,
            Some(500..=599) => StatusClass::ServerError,
            Some(_) => StatusClass::Other,
            None => StatusClass::None,
        }
    }
}

/// One counter of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// LLM calls by outcome and, for admitted ones, upstream status class.
    Requests(Outcome, StatusClass),
    InputTokens,
    OutputTokens,
    /// Spend of admitted calls, nano-dollars.
    SpendNanos,
    /// Key lookups by where the record came from.
    KeyLookups(Lookup),
    /// Spend events put on the shared queue (one per admitted call).
    SpendEventsQueued,
    /// Spend batches by what became of them.
    SpendBatches(Batch),
    /// Fleet mode: borrows (a request's lease call) by outcome.
    LeaseBorrows(Borrow),
    /// Fleet mode: the root tick's renewal reports by outcome.
    LeaseRenewals(Renewal),
    /// Histogram: µs from an LLM call's request headers to its admission decision (forwarded
    /// or refused), by outcome: waiting for the body and the sidecar (key and customer
    /// lookups, borrows), up to the clock reading the decision was taken on.
    AdmissionTime(Outcome),
}

/// How Envoy keeps a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
}

/// Where a virtual key's record came from (the `result` label of `tollgate_key_lookups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Found in shared data (a record or a recent "no such key").
    Cached,
    /// The sidecar answered (found or not).
    Sidecar,
    /// The sidecar could not be asked or did not answer (after the retry): the call got a 503.
    Failed,
}

/// What became of a spend batch (`tollgate_spend_batches_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// The sidecar took it (200).
    Flushed,
    /// Not sent, or not taken: put back on the queue for a later tick.
    Retried,
}

/// A borrow's outcome (`tollgate_lease_borrows_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Borrow {
    /// The sidecar answered and the call's budgets admitted it.
    Granted,
    /// The sidecar answered, but the budgets still refused the call.
    Refused,
    /// No usable answer (not sent, an error, or no answer twice): `on_no_lease` decided.
    Failed,
}

/// A renewal report's outcome (`tollgate_lease_renewals_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Sent and answered with a lease answer.
    Sent,
    /// Not sent, or no usable answer (the slices run to their deadlines).
    Failed,
}

const OUTCOMES: [Outcome; 7] = [
    Outcome::Admitted,
    Outcome::Auth,
    Outcome::ModelAccess,
    Outcome::Budget,
    Outcome::RateLimit,
    Outcome::BadRequest,
    Outcome::Other,
];
const CLASSES: [StatusClass; 5] = [
    StatusClass::Success,
    StatusClass::ClientError,
    StatusClass::ServerError,
    StatusClass::Other,
    StatusClass::None,
];
/// The counters without an (outcome, class) pair, in [`Metric::index`] order after those.
const OTHERS: [Metric; 14] = [
    Metric::InputTokens,
    Metric::OutputTokens,
    Metric::SpendNanos,
    Metric::KeyLookups(Lookup::Cached),
    Metric::KeyLookups(Lookup::Sidecar),
    Metric::KeyLookups(Lookup::Failed),
    Metric::SpendEventsQueued,
    Metric::SpendBatches(Batch::Flushed),
    Metric::SpendBatches(Batch::Retried),
    Metric::LeaseBorrows(Borrow::Granted),
    Metric::LeaseBorrows(Borrow::Refused),
    Metric::LeaseBorrows(Borrow::Failed),
    Metric::LeaseRenewals(Renewal::Sent),
    Metric::LeaseRenewals(Renewal::Failed),
];
/// Number of distinct metrics: every (outcome, class) pair, the others, and one admission-time
/// histogram per outcome.
pub const METRIC_COUNT: usize = OUTCOMES.len() * CLASSES.len() + OTHERS.len() + OUTCOMES.len();

impl Metric {
    /// Every metric, in [`Metric::index`] order (each is defined once per VM).
    pub fn all() -> impl Iterator<Item = Metric> {
        OUTCOMES
            .iter()
            .flat_map(|o| CLASSES.iter().map(move |c| Metric::Requests(*o, *c)))
            .chain(OTHERS)
            .chain(OUTCOMES.iter().map(|o| Metric::AdmissionTime(*o)))
    }

    pub fn index(self) -> usize {
        let pairs = OUTCOMES.len() * CLASSES.len();
        let outcome_index = |o| OUTCOMES.iter().position(|x| *x == o).unwrap_or(0);
        match self {
            Metric::Requests(o, c) => {
                let class = CLASSES.iter().position(|x| *x == c).unwrap_or(0);
                outcome_index(o) * CLASSES.len() + class
            }
            Metric::AdmissionTime(o) => pairs + OTHERS.len() + outcome_index(o),
            other => pairs + OTHERS.iter().position(|x| *x == other).unwrap_or(0),
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Metric::AdmissionTime(_) => Kind::Histogram,
            _ => Kind::Counter,
        }
    }

    /// The Envoy stat name (Prometheus: `tollgate_requests_total{outcome,upstream}`,
    /// `tollgate_tokens_total{direction}`, `tollgate_spend_nanos_total`,
    /// `tollgate_key_lookups_total{result}`, `tollgate_spend_events_queued_total`,
    /// `tollgate_spend_batches_total{result}`, `tollgate_lease_borrows_total{result}`,
    /// `tollgate_lease_renewals_total{result}`, and the histogram
    /// `tollgate_admission_time_us{outcome}`).
    pub fn name(self) -> String {
        let outcome = |o| match o {
            Outcome::Admitted => "admitted",
            Outcome::Auth => "auth",
            Outcome::ModelAccess => "model_access",
            Outcome::Budget => "budget",
            Outcome::RateLimit => "rate_limit",
            Outcome::BadRequest => "bad_request",
            Outcome::Other => "other",
        };
        match self {
            Metric::Requests(o, c) => {
                let class = match c {
                    StatusClass::Success => "2xx",
                    StatusClass::ClientError => "4xx",
                    StatusClass::ServerError => "5xx",
                    StatusClass::Other => "other",
                    StatusClass::None => "none",
                };
                tagged(
                    "requests_total",
                    &[("outcome", outcome(o)), ("upstream", class)],
                )
            }
            Metric::InputTokens => tagged("tokens_total", &[("direction", "input")]),
            Metric::OutputTokens => tagged("tokens_total", &[("direction", "output")]),
            Metric::SpendNanos => "tollgate.spend_nanos_total".into(),
            Metric::KeyLookups(l) => {
                let result = match l {
                    Lookup::Cached => "cached",
                    Lookup::Sidecar => "sidecar",
                    Lookup::Failed => "failed",
                };
                tagged("key_lookups_total", &[("result", result)])
            }
            Metric::SpendEventsQueued => "tollgate.spend_events_queued_total".into(),
            Metric::SpendBatches(b) => {
                let result = match b {
                    Batch::Flushed => "flushed",
                    Batch::Retried => "retried",
                };
                tagged("spend_batches_total", &[("result", result)])
            }
            Metric::LeaseBorrows(b) => {
                let result = match b {
                    Borrow::Granted => "granted",
                    Borrow::Refused => "refused",
                    Borrow::Failed => "failed",
                };
                tagged("lease_borrows_total", &[("result", result)])
            }
            Metric::LeaseRenewals(r) => {
                let result = match r {
                    Renewal::Sent => "sent",
                    Renewal::Failed => "failed",
                };
                tagged("lease_renewals_total", &[("result", result)])
            }
            Metric::AdmissionTime(o) => tagged("admission_time_us", &[("outcome", outcome(o))]),
        }
    }
}

impl Metric {
    /// The Prometheus name Envoy gives the stat once its tags are extracted (a histogram's
    /// series add `_bucket`, `_sum` and `_count`).
    pub fn prometheus_name(self) -> String {
        let name = self.name();
        let base = name.rsplit(";.;").next().unwrap_or(&name);
        let base = base.strip_prefix("tollgate.").unwrap_or(base);
        format!("tollgate_{base}")
    }
}

/// `tollgate.<tag>=.=<value>;.;…<name>`: Istio's tag convention, so one regex per tag
/// ([`stats_tag_regex`]) cuts each pair out and leaves `tollgate.<name>`.
fn tagged(name: &str, tags: &[(&str, &str)]) -> String {
    let mut out = String::from("tollgate.");
    for (tag, value) in tags {
        out.push_str(&format!("{tag}=.={value};.;"));
    }
    out.push_str(name);
    out
}

/// The labels the filter's stat names carry ([`tagged`]): Envoy `stats_tags` in the rendered
/// bootstrap, `extraStatTags` in Istio's proxy config.
pub const STATS_TAGS: [&str; 4] = ["outcome", "upstream", "direction", "result"];

/// The tag-extraction regex for one of [`STATS_TAGS`]: the first group is cut from the name,
/// the second is the value. The regex Istio's bootstrap makes of each `extraStatTags` entry.
pub fn stats_tag_regex(tag: &str) -> String {
    format!(r"({tag}=\.=(.*?);\.;)")
}

/// The prefix of the filter's stat names as Envoy's stats matcher sees them (proxy-wasm puts
/// custom metrics in the `wasmcustom` namespace); Istio keeps only included names.
pub const STATS_PREFIX: &str = "wasmcustom.tollgate.";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_metric_has_its_own_index_and_name() {
        let all: Vec<Metric> = Metric::all().collect();
        assert_eq!(all.len(), METRIC_COUNT);
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.index(), i, "{m:?}");
        }
        let names: HashSet<String> = all.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), METRIC_COUNT);
        assert_eq!(
            all.iter().filter(|m| m.kind() == Kind::Histogram).count(),
            OUTCOMES.len()
        );
    }

    /// Each tag's regex, applied as Envoy applies `stats_tags`, leaves `tollgate.<name>` and
    /// the label values.
    #[test]
    fn names_carry_their_labels_in_istios_convention() {
        let name = Metric::Requests(Outcome::RateLimit, StatusClass::None).name();
        assert_eq!(
            name,
            "tollgate.outcome=.=rate_limit;.;upstream=.=none;.;requests_total"
        );
        let mut rest = name.clone();
        let mut labels = Vec::new();
        for tag in STATS_TAGS {
            let pattern = format!("{tag}=.=");
            if let Some(start) = rest.find(&pattern) {
                let value_start = start + pattern.len();
                let end = value_start + rest[value_start..].find(";.;").unwrap();
                labels.push((tag, rest[value_start..end].to_string()));
                rest.replace_range(start..end + 3, "");
            }
            assert_eq!(stats_tag_regex(tag), format!(r"({tag}=\.=(.*?);\.;)"));
        }
        assert_eq!(rest, "tollgate.requests_total");
        assert_eq!(
            labels,
            [
                ("outcome", "rate_limit".into()),
                ("upstream", "none".into())
            ]
        );
        assert_eq!(
            Metric::AdmissionTime(Outcome::Admitted).name(),
            "tollgate.outcome=.=admitted;.;admission_time_us"
        );
        assert_eq!(Metric::SpendNanos.name(), "tollgate.spend_nanos_total");
        assert!(Metric::all().all(|m| m.name().starts_with(&STATS_PREFIX["wasmcustom.".len()..])));
    }

    #[test]
    fn refusals_are_classified_by_reason() {
        use crate::errors::ApiError;
        assert_eq!(Outcome::of_refusal(&ApiError::no_api_key()), Outcome::Auth);
        assert_eq!(
            Outcome::of_refusal(&ApiError::invalid_api_key()),
            Outcome::Auth
        );
        assert_eq!(
            Outcome::of_refusal(&ApiError::model_access_denied("key", "m")),
            Outcome::ModelAccess
        );
        assert_eq!(
            Outcome::of_refusal(&ApiError::new(400, "budget_exceeded", "x")),
            Outcome::Budget
        );
        assert_eq!(
            Outcome::of_refusal(&ApiError::new(429, "throttling_error", "x")),
            Outcome::RateLimit
        );
        assert_eq!(
            Outcome::of_refusal(&ApiError::bad_request("x")),
            Outcome::BadRequest
        );
        assert_eq!(
            Outcome::of_refusal(&ApiError::provider_keys_pending()),
            Outcome::Other
        );
        assert_eq!(StatusClass::of(Some(503)), StatusClass::ServerError);
        assert_eq!(StatusClass::of(None), StatusClass::None);
    }
}
