//! The filter's counters (Envoy stats through proxy-wasm). Names carry their labels as
//! `.<tag>.<value>` segments that the rendered bootstrap's `stats_tags` turn into Prometheus
//! labels. Labels stay low-cardinality: no per-key or per-model values (per-key figures come
//! from the sidecar's `/metrics`).

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
/// Number of distinct counters: every (outcome, class) pair plus the others.
pub const METRIC_COUNT: usize = OUTCOMES.len() * CLASSES.len() + OTHERS.len();

impl Metric {
    /// Every counter, in [`Metric::index`] order (each is defined once per VM).
    pub fn all() -> impl Iterator<Item = Metric> {
        OUTCOMES
            .iter()
            .flat_map(|o| CLASSES.iter().map(move |c| Metric::Requests(*o, *c)))
            .chain(OTHERS)
    }

    pub fn index(self) -> usize {
        let pairs = OUTCOMES.len() * CLASSES.len();
        match self {
            Metric::Requests(o, c) => {
                let outcome = OUTCOMES.iter().position(|x| *x == o).unwrap_or(0);
                let class = CLASSES.iter().position(|x| *x == c).unwrap_or(0);
                outcome * CLASSES.len() + class
            }
            other => pairs + OTHERS.iter().position(|x| *x == other).unwrap_or(0),
        }
    }

    /// The Envoy stat name (Prometheus: `tollgate_requests_total{outcome,upstream}`,
    /// `tollgate_tokens_total{direction}`, `tollgate_spend_nanos_total`,
    /// `tollgate_key_lookups_total{result}`, `tollgate_spend_events_queued_total`,
    /// `tollgate_spend_batches_total{result}`, `tollgate_lease_borrows_total{result}`,
    /// `tollgate_lease_renewals_total{result}`).
    pub fn name(self) -> String {
        match self {
            Metric::Requests(o, c) => {
                let outcome = match o {
                    Outcome::Admitted => "admitted",
                    Outcome::Auth => "auth",
                    Outcome::ModelAccess => "model_access",
                    Outcome::Budget => "budget",
                    Outcome::RateLimit => "rate_limit",
                    Outcome::BadRequest => "bad_request",
                    Outcome::Other => "other",
                };
                let class = match c {
                    StatusClass::Success => "2xx",
                    StatusClass::ClientError => "4xx",
                    StatusClass::ServerError => "5xx",
                    StatusClass::Other => "other",
                    StatusClass::None => "none",
                };
                format!("tollgate.requests_total.outcome.{outcome}.upstream.{class}")
            }
            Metric::InputTokens => "tollgate.tokens_total.direction.input".into(),
            Metric::OutputTokens => "tollgate.tokens_total.direction.output".into(),
            Metric::SpendNanos => "tollgate.spend_nanos_total".into(),
            Metric::KeyLookups(l) => {
                let result = match l {
                    Lookup::Cached => "cached",
                    Lookup::Sidecar => "sidecar",
                    Lookup::Failed => "failed",
                };
                format!("tollgate.key_lookups_total.result.{result}")
            }
            Metric::SpendEventsQueued => "tollgate.spend_events_queued_total".into(),
            Metric::SpendBatches(b) => {
                let result = match b {
                    Batch::Flushed => "flushed",
                    Batch::Retried => "retried",
                };
                format!("tollgate.spend_batches_total.result.{result}")
            }
            Metric::LeaseBorrows(b) => {
                let result = match b {
                    Borrow::Granted => "granted",
                    Borrow::Refused => "refused",
                    Borrow::Failed => "failed",
                };
                format!("tollgate.lease_borrows_total.result.{result}")
            }
            Metric::LeaseRenewals(r) => {
                let result = match r {
                    Renewal::Sent => "sent",
                    Renewal::Failed => "failed",
                };
                format!("tollgate.lease_renewals_total.result.{result}")
            }
        }
    }
}

/// Envoy `stats_tags` that make the name segments above Prometheus labels: (tag name, regex
/// whose first group is cut from the name and whose second is the value).
pub const STATS_TAGS: [(&str, &str); 4] = [
    (
        "outcome",
        r"^(?:wasmcustom\.)?tollgate\.requests_total(\.outcome\.([a-z_]+))",
    ),
    (
        "upstream",
        r"^(?:wasmcustom\.)?tollgate\.requests_total\.outcome\.[a-z_]+(\.upstream\.([a-z0-9]+))$",
    ),
    (
        "direction",
        r"^(?:wasmcustom\.)?tollgate\.tokens_total(\.direction\.([a-z]+))$",
    ),
    (
        "result",
        r"^(?:wasmcustom\.)?tollgate\.(?:key_lookups|spend_batches|lease_borrows|lease_renewals)_total(\.result\.([a-z]+))$",
    ),
];

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
