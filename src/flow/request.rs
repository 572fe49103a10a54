//! One HTTP request: identify the caller (headers), decide once the body is complete (model
//! access, budgets, limits, routing), then follow the response to settle spend, tokens and
//! slots when it ends (also on upstream error and client abort).

use super::{key_cache, send_error, Host, Shared, SidecarCall};
use crate::admission::{self, Admitted, Caller};
use crate::budgets::{self, Admission, Borrowed, BudgetTicket, Calendar, FleetCheck};
use crate::contract::INVALIDATE_HEADER;
use crate::contract::{self, CREDENTIAL_HEADERS};
use crate::cost;
use crate::credential::extract_credential;
use crate::errors::ApiError;
use crate::key_format::{self, constant_time_eq, hash_key, redact_secret};
use crate::metrics::{Borrow, Lookup, Metric, Outcome, StatusClass};
use crate::model_list;
use crate::plugin_config::{Pricing, CLUSTER_HEADER};
use crate::rate_leases::{self, Leased};
use crate::rate_limits::{self, Ticket};
use crate::records::{CustomerLookup, KeyLookup, LeaseAnswer, LeaseItem, LeaseRequest, SpendEvent};
use crate::response_headers::{oversized_response, success_headers};
use crate::routes::{self, LlmRoute};
use crate::usage::{BodyKind, Usage, UsageReader};
use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

/// Largest non-streamed response body read for usage (and held for cost headers), bytes.
const MAX_USAGE_BUFFER: usize = 4 * 1024 * 1024;

/// What the adapter does after a callback: let the request (or response) go on, or hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    Pause,
}

/// What the request is, once its headers are read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// An LLM call.
    Llm(LlmRoute),
    /// `GET /v1/models`, answered by the filter.
    ModelList,
}

/// Where the request is.
enum Phase {
    /// Not ours (admin API, health), or not started: passed through untouched.
    Pass,
    /// The sidecar is looking up the caller's key.
    AwaitKey(PendingLookup),
    /// The caller is known; the body is not complete yet.
    AwaitBody,
    /// Admission is prepared (body parsed, key checked, deployment picked); the sidecar is
    /// looking up the request's customer. Its answer completes admission from there.
    AwaitCustomer {
        token: u32,
        id: String,
        prepared: Box<Prepared<'static>>,
    },
    /// Fleet mode: admission is prepared, but a budget has no valid slice; the sidecar is
    /// asked to lend the `asked` scopes (pause-to-borrow, FLEET.md §4.7). Its answer (or its
    /// absence) runs the admission once more.
    AwaitLease {
        token: u32,
        /// The call's seq (answers are applied in seq order) and when it was sent.
        seq: u64,
        sent_at: i64,
        asked: Vec<String>,
        prepared: Box<Prepared<'static>>,
        customer: Option<CustomerLookup>,
        /// The request's items and how many more times a failed attempt is sent again
        /// ([`BORROW_RETRIES`]).
        retry: (Vec<LeaseItem>, u8),
    },
    /// Admitted and sent upstream: the response is followed to its end.
    Forwarded(Box<AdmittedCall>),
    /// A response was sent locally; nothing more to do.
    Done,
}

/// A borrow under way ([`Phase::AwaitLease`] without its token).
struct LeaseWait {
    seq: u64,
    sent_at: i64,
    asked: Vec<String>,
    prepared: Prepared<'static>,
    customer: Option<CustomerLookup>,
    retry: (Vec<LeaseItem>, u8),
}

/// Borrow rounds per request: one, and more only for slices that ran out while it waited for
/// the others (each round asks only for what cannot admit then).
const MAX_BORROWS: u8 = 3;

/// A failed borrow is sent again up to this many times before `on_no_lease` decides: the
/// cluster's round robin moves to another sidecar replica, and a dead one is ejected after two
/// failures in a row, so the third attempt reaches a live one (as key lookups do).
const BORROW_RETRIES: u8 = 2;

struct PendingLookup {
    token: u32,
    hash: String,
    raw_last4: String,
    /// Lookups sent so far for this request.
    attempts: u8,
}

/// Key lookups per request before a 503. Sidecar replicas sit behind one cluster: a lookup
/// that failed is sent again, to the next replica (round robin); the rendered cluster ejects a
/// replica after two failures in a row, so the third attempt reaches a live one if any.
const KEY_LOOKUP_ATTEMPTS: u8 = 3;

/// The first half of admission: everything decided before the customer's record is needed.
struct Prepared<'a> {
    route: LlmRoute,
    body: Vec<u8>,
    admitted: Admitted<'a>,
    provider_key: Option<String>,
    end_user: Option<String>,
}

impl Prepared<'_> {
    fn into_owned(self) -> Prepared<'static> {
        Prepared {
            route: self.route,
            body: self.body,
            admitted: Admitted {
                deployment: Cow::Owned(self.admitted.deployment.into_owned()),
                path: self.admitted.path,
                request: self.admitted.request,
            },
            provider_key: self.provider_key,
            end_user: self.end_user,
        }
    }
}

/// What an admission attempt came to, short of a refusal.
enum Admit<'a> {
    Call(Box<AdmittedCall>),
    /// Fleet mode: these budgets need a slice first; the prepared admission is given back.
    Borrow {
        prepared: Box<Prepared<'a>>,
        customer: Option<CustomerLookup>,
        items: Vec<LeaseItem>,
    },
}

/// An admitted LLM call, followed to its end.
struct AdmittedCall {
    limits: Ticket,
    budget: BudgetTicket,
    pricing: Pricing,
    /// The prompt's tokens as the reservation counted them (the estimate when no usage comes).
    prompt_tokens: u64,
    /// The client did not ask for the streamed usage chunk; Tollgate did, and hides it.
    strip_usage_chunk: bool,
    upstream_status: Option<u16>,
    usage: Option<UsageReader>,
    /// Response headers were paused to add the cost once the JSON body is read.
    holding_headers: bool,
    /// The held response's headers, written back with Tollgate's added.
    response_headers: Vec<(String, String)>,
    /// The provider key sent upstream: never shown to the client.
    provider_key: Option<String>,
    /// An error answer is held whole to take the provider key out of it.
    redact_body: bool,
    /// The response was over `max_response_size_mb`: its body is replaced by this error.
    replacement_body: Option<Vec<u8>>,
    event: SpendEvent,
}

/// A header map, read once with a single host call.
#[derive(Default)]
struct HeaderSnapshot(Vec<(String, String)>);

impl HeaderSnapshot {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// One request's state, driven by the adapter's callbacks.
pub struct Flow {
    shared: Rc<Shared>,
    headers: HeaderSnapshot,
    kind: Kind,
    phase: Phase,
    caller: Option<Caller>,
    body_complete: bool,
    body_size: usize,
    started_micros: i64,
    /// The latest clock reading of an LLM call's admission: a refusal's end of
    /// `tollgate_admission_time_us` (reused, not read again, where one is fresh).
    clock_micros: i64,
    /// Envoy refused the body itself (over its buffer limit, plain text): the answer is
    /// rewritten into LiteLLM's envelope.
    envoy_413: bool,
    /// Fleet mode: borrows this request has made ([`MAX_BORROWS`]).
    borrows: u8,
}

impl Flow {
    pub fn new(shared: Rc<Shared>) -> Self {
        Flow {
            shared,
            headers: HeaderSnapshot::default(),
            kind: Kind::ModelList,
            phase: Phase::Pass,
            caller: None,
            body_complete: false,
            body_size: 0,
            started_micros: 0,
            clock_micros: 0,
            envoy_413: false,
            borrows: 0,
        }
    }

    fn refuse(&mut self, host: &impl Host, error: &ApiError) -> Step {
        self.phase = Phase::Done;
        if matches!(self.kind, Kind::Llm(_)) {
            let outcome = Outcome::of_refusal(error);
            host.count(Metric::Requests(outcome, StatusClass::None), 1);
            self.record_admission_time(host, outcome, self.clock_micros);
        }
        send_error(host, error);
        Step::Pause
    }

    /// `tollgate_admission_time_us`: headers to the decision taken at `decided_micros`.
    fn record_admission_time(&self, host: &impl Host, outcome: Outcome, decided_micros: i64) {
        let micros = decided_micros.saturating_sub(self.started_micros);
        host.record(
            Metric::AdmissionTime(outcome),
            u64::try_from(micros).unwrap_or(0),
        );
    }

    /// Reads the clock for an admission step (see `clock_micros`).
    fn now(&mut self, host: &impl Host) -> i64 {
        self.clock_micros = host.now_micros();
        self.clock_micros
    }

    fn calendar(&self) -> Calendar<'_> {
        Calendar {
            zone: &self.shared.config.budgets.timezone,
            reset_time_of_day_seconds: self.shared.config.budgets.reset_time_of_day_seconds,
        }
    }

    fn sidecar_get(&self, host: &impl Host, path: &str) -> Option<u32> {
        let config = &self.shared.config;
        host.dispatch_get(&SidecarCall {
            cluster: &config.sidecar_cluster,
            authority: &config.sidecar_authority,
            path,
            authorization: &format!("Bearer {}", config.internal_token),
            timeout: Duration::from_millis(config.sidecar_timeout_ms.max(100)),
        })
    }

    pub fn on_request_headers(&mut self, host: &impl Host, end_of_stream: bool) -> Step {
        self.headers = HeaderSnapshot(host.request_headers());
        // Only the filter may choose an upstream cluster.
        if self.headers.has(CLUSTER_HEADER) {
            host.set_request_header(CLUSTER_HEADER, None);
        }
        let path = self.headers.get(":path").unwrap_or_default();
        self.kind = if let Some(route) = routes::classify(path) {
            Kind::Llm(route)
        } else if routes::is_model_list(path) && self.headers.get(":method") == Some("GET") {
            Kind::ModelList
        } else {
            self.headers = HeaderSnapshot::default();
            return Step::Continue;
        };
        self.started_micros = self.now(host);
        // The body may be rewritten: admission sets its new length while these headers are paused.
        self.body_complete = end_of_stream;
        // A body announced as too large is refused before any of it is buffered (Envoy would
        // otherwise answer its own plain-text 413 once its buffer limit is passed).
        let limit = self.shared.config.max_request_body_bytes;
        if self
            .headers
            .get("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > limit as u64)
        {
            return self.refuse(host, &ApiError::body_too_large(limit));
        }
        match self.identify(host) {
            Err(e) => self.refuse(host, &e),
            Ok(Some(lookup)) => {
                self.phase = Phase::AwaitKey(lookup);
                Step::Pause
            }
            Ok(None) => {
                self.phase = Phase::AwaitBody;
                if end_of_stream {
                    self.decide(host)
                } else {
                    Step::Pause
                }
            }
        }
    }

    pub fn on_request_body(
        &mut self,
        host: &impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Step {
        match self.phase {
            Phase::Pass => return Step::Continue,
            Phase::AwaitKey(_) | Phase::AwaitBody => {}
            Phase::AwaitCustomer { .. }
            | Phase::AwaitLease { .. }
            | Phase::Forwarded(_)
            | Phase::Done => return Step::Pause,
        }
        self.body_size = body_size;
        let limit = self.shared.config.max_request_body_bytes;
        if body_size > limit {
            self.now(host);
            return self.refuse(host, &ApiError::body_too_large(limit));
        }
        if !end_of_stream {
            return Step::Pause;
        }
        self.body_complete = true;
        match self.phase {
            Phase::AwaitBody => self.decide(host),
            // The key lookup is still under way; its answer decides.
            _ => Step::Pause,
        }
    }

    /// The sidecar's answer to a lookup. `Continue`: resume the paused request.
    pub fn on_call_response(&mut self, host: &impl Host, token: u32, body_size: usize) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Pass) {
            Phase::AwaitKey(lookup) if lookup.token == token => {
                self.on_key_lookup(host, lookup, body_size)
            }
            Phase::AwaitCustomer {
                token: expected,
                id,
                prepared,
            } if expected == token => self.on_customer_lookup(host, &id, *prepared, body_size),
            Phase::AwaitLease {
                token: expected,
                seq,
                sent_at,
                asked,
                prepared,
                customer,
                retry,
            } if expected == token => self.on_lease_answer(
                host,
                LeaseWait {
                    seq,
                    sent_at,
                    asked,
                    prepared: *prepared,
                    customer,
                    retry,
                },
                body_size,
            ),
            other => {
                self.phase = other;
                Step::Pause
            }
        }
    }

    /// Establishes the caller from the headers: `Ok(None)` when known now, `Ok(Some(_))` when
    /// a sidecar lookup is under way.
    fn identify(&mut self, host: &impl Host) -> Result<Option<PendingLookup>, ApiError> {
        let config = &self.shared.config;
        let raw = extract_credential(
            |name| self.headers.get(name).map(str::to_string),
            config.key_header_name.as_deref(),
        )?;
        let hash = hash_key(&raw);
        if let Some(master) = &config.master_key_hash {
            if constant_time_eq(master.as_bytes(), hash.as_bytes()) {
                self.caller = Some(Caller::Master);
                return Ok(None);
            }
        }
        if !raw.starts_with(key_format::KEY_PREFIX) {
            return Err(ApiError::not_a_virtual_key(&raw));
        }
        let raw_last4: String = {
            let chars: Vec<char> = raw.chars().collect();
            chars[chars.len().saturating_sub(4)..].iter().collect()
        };
        match key_cache::get(host, &self.shared.decoded, &hash, self.started_micros) {
            key_cache::Cached::Known(record) => {
                host.count(Metric::KeyLookups(Lookup::Cached), 1);
                self.caller = Some(Caller::VirtualKey { record, raw_last4 });
                Ok(None)
            }
            key_cache::Cached::Unknown => {
                host.count(Metric::KeyLookups(Lookup::Cached), 1);
                Err(ApiError::invalid_api_key())
            }
            key_cache::Cached::Missing => {
                let Some(token) = self.sidecar_get(host, &contract::key_path(&hash)) else {
                    host.count(Metric::KeyLookups(Lookup::Failed), 1);
                    return Err(ApiError::service_unavailable(
                        "Tollgate could not verify this key: the key service is unreachable.",
                    ));
                };
                Ok(Some(PendingLookup {
                    token,
                    hash,
                    raw_last4,
                    attempts: 1,
                }))
            }
        }
    }

    fn on_key_lookup(&mut self, host: &impl Host, lookup: PendingLookup, body_size: usize) -> Step {
        let status = host.call_response_status();
        let parsed = if status == Some(200) {
            host.call_response_body(body_size)
                .and_then(|b| serde_json::from_slice::<KeyLookup>(&b).ok())
        } else {
            None
        };
        if parsed.is_some() {
            host.count(Metric::KeyLookups(Lookup::Sidecar), 1);
        }
        match parsed {
            Some(KeyLookup::Found { key, seq }) => {
                key_cache::put(host, &self.shared.decoded, &lookup.hash, &key, seq);
                self.caller = Some(Caller::VirtualKey {
                    record: Rc::new(*key),
                    raw_last4: lookup.raw_last4,
                });
            }
            Some(KeyLookup::NotFound) => {
                let now = self.now(host);
                key_cache::put_unknown(
                    host,
                    &lookup.hash,
                    now,
                    self.shared.config.negative_cache_seconds,
                );
                return self.refuse(host, &ApiError::invalid_api_key());
            }
            None => {
                host.log_warn(&format!("tollgate: key lookup failed (status {status:?})"));
                if lookup.attempts < KEY_LOOKUP_ATTEMPTS {
                    let path = contract::key_path(&lookup.hash);
                    if let Some(token) = self.sidecar_get(host, &path) {
                        self.phase = Phase::AwaitKey(PendingLookup {
                            token,
                            attempts: lookup.attempts + 1,
                            ..lookup
                        });
                        return Step::Pause;
                    }
                }
                host.count(Metric::KeyLookups(Lookup::Failed), 1);
                self.now(host);
                return self.refuse(
                    host,
                    &ApiError::service_unavailable(
                        "Tollgate could not verify this key: the key service did not answer.",
                    ),
                );
            }
        }
        self.phase = Phase::AwaitBody;
        if self.body_complete {
            self.decide(host)
        } else {
            Step::Pause
        }
    }

    fn on_customer_lookup(
        &mut self,
        host: &impl Host,
        id: &str,
        prepared: Prepared<'static>,
        body_size: usize,
    ) -> Step {
        let parsed = if host.call_response_status() == Some(200) {
            host.call_response_body(body_size)
                .and_then(|b| serde_json::from_slice::<CustomerLookup>(&b).ok())
        } else {
            None
        };
        let Some(lookup) = parsed else {
            self.now(host);
            return self.refuse(
                host,
                &ApiError::service_unavailable(
                    "Tollgate could not look up this customer: the key service did not answer.",
                ),
            );
        };
        key_cache::put_customer(host, &self.shared.decoded, id, &lookup);
        let now = self.now(host);
        self.finish_admission(host, prepared, Some(lookup), now, None)
    }

    /// The sidecar's answer to a borrow: grants applied, then the admission runs once more
    /// (budgets still without a slice are refused, or follow `on_no_lease` when unanswered).
    fn on_lease_answer(&mut self, host: &impl Host, wait: LeaseWait, body_size: usize) -> Step {
        let status = host.call_response_status();
        let answer = if status == Some(200) {
            host.call_response_body(body_size)
                .and_then(|b| serde_json::from_slice::<LeaseAnswer>(&b).ok())
        } else {
            None
        };
        let now = self.now(host);
        let LeaseWait {
            seq,
            sent_at,
            asked,
            prepared,
            customer,
            retry,
        } = wait;
        let got_answer = answer.is_some();
        let mut asked = asked;
        let answered = match answer {
            Some(answer) => {
                // A slice the sidecar lent more of, but that requests admitted meanwhile used
                // up again (answers are applied with `max`, and others resumed first), is not
                // refused: it counts as not asked, so it gets another round.
                let answered =
                    budgets::apply_lease_answer(host, &answer, &asked, seq, sent_at, now);
                // On the last round the slice's own refusal stands (near exhaustion the
                // answers lend slivers that others keep taking).
                if self.borrows < MAX_BORROWS {
                    let lent = lent_scopes(&answer, &retry.0);
                    asked.retain(|scope| {
                        !(lent.contains(scope) && answered.iter().any(|(s, _)| s == scope))
                    });
                }
                answered
            }
            None => {
                host.log_warn(&format!(
                    "tollgate: budget lease request failed (status {status:?})"
                ));
                let (items, left) = retry;
                if left > 0 {
                    // A replica that died or restarted: ask again before `on_no_lease`.
                    if let Some((token, seq)) = self.send_lease_request(host, items.clone(), now) {
                        self.phase = Phase::AwaitLease {
                            token,
                            seq,
                            sent_at: now,
                            asked,
                            prepared: Box::new(prepared),
                            customer,
                            retry: (items, left - 1),
                        };
                        return Step::Pause;
                    }
                }
                Vec::new()
            }
        };
        let borrowed = self.borrowed(answered, asked);
        self.finish_admission(host, prepared, customer, now, Some((&borrowed, got_answer)))
    }

    fn borrowed(&self, answered: Vec<(String, i64)>, asked: Vec<String>) -> Borrowed {
        Borrowed {
            answered,
            asked,
            policy: self
                .shared
                .config
                .fleet
                .as_ref()
                .map(|f| f.on_no_lease)
                .unwrap_or_default(),
        }
    }

    /// Pauses to borrow slices of `items`' budgets (one lease request), keeping the prepared
    /// admission. When the request cannot be sent, `on_no_lease` decides at once.
    fn borrow(
        &mut self,
        host: &impl Host,
        prepared: Prepared<'_>,
        customer: Option<CustomerLookup>,
        mut items: Vec<LeaseItem>,
        now: i64,
    ) -> Step {
        items.sort_by(|a, b| a.scope.cmp(&b.scope));
        items.dedup_by(|a, b| a.scope == b.scope);
        let asked: Vec<String> = items.iter().map(|i| i.scope.clone()).collect();
        let retry = items.clone();
        self.borrows = self.borrows.saturating_add(1);
        let token = self.send_lease_request(host, items, now);
        let Some((token, seq)) = token else {
            let borrowed = self.borrowed(Vec::new(), asked);
            return self.finish_admission(host, prepared, customer, now, Some((&borrowed, false)));
        };
        self.phase = Phase::AwaitLease {
            token,
            seq,
            sent_at: now,
            asked,
            prepared: Box::new(prepared.into_owned()),
            customer,
            retry: (retry, BORROW_RETRIES),
        };
        Step::Pause
    }

    /// The call's token and seq; `None` when it cannot be sent (no Envoy id, no sequence
    /// number, no dispatch).
    fn send_lease_request(
        &self,
        host: &impl Host,
        items: Vec<LeaseItem>,
        now: i64,
    ) -> Option<(u32, u64)> {
        let shared = &self.shared;
        let envoy_id = shared.envoy_id.clone()?;
        let seq = budgets::next_lease_seq(host, now)?;
        let body = serde_json::to_vec(&LeaseRequest {
            envoy_id,
            seq,
            items,
        })
        .ok()?;
        let config = &shared.config;
        host.dispatch_post(
            &SidecarCall {
                cluster: &config.sidecar_cluster,
                authority: &config.sidecar_authority,
                path: contract::LEASES_PATH,
                authorization: &format!("Bearer {}", config.internal_token),
                timeout: Duration::from_millis(config.sidecar_timeout_ms.max(100)),
            },
            &body,
        )
        .map(|token| (token, seq))
    }

    /// Runs once the caller is known and the whole body is buffered.
    fn decide(&mut self, host: &impl Host) -> Step {
        let Some(caller) = self.caller.clone() else {
            return Step::Pause;
        };
        match self.kind {
            Kind::ModelList => {
                let path = self.headers.get(":path").unwrap_or_default();
                let options = model_list::ListOptions::from_path(path);
                let models = model_list::listed_models(&self.shared.config, &caller, options);
                host.send_response(200, &[], &model_list::model_list_body(&models));
                self.phase = Phase::Done;
                Step::Pause
            }
            Kind::Llm(route) => {
                let shared = Rc::clone(&self.shared);
                let now = self.now(host);
                match self.prepare(host, &shared, &caller, route, now) {
                    Err(e) => self.refuse(host, &e),
                    Ok(prepared) => {
                        let customer = match &prepared.end_user {
                            None => None,
                            Some(id) => match key_cache::get_customer(host, &shared.decoded, id) {
                                Some(lookup) => Some(lookup),
                                None => return self.await_customer(host, prepared),
                            },
                        };
                        self.finish_admission(host, prepared, customer, now, None)
                    }
                }
            }
        }
    }

    /// Model access and routing (LiteLLM's order): what needs the body and the key only.
    fn prepare<'a>(
        &self,
        host: &impl Host,
        shared: &'a Shared,
        caller: &Caller,
        route: LlmRoute,
        now: i64,
    ) -> Result<Prepared<'a>, ApiError> {
        let config = &shared.config;
        let body = host.request_body(self.body_size);
        let path = self.headers.get(":path").unwrap_or_default();
        let pick = shared.pick.get();
        shared.pick.set(pick.wrapping_add(1));
        let admitted = admission::admit(config, caller, route, path, &body, now, pick)?;
        // Fail closed until the sidecar has handed over the provider keys.
        let provider_key = match shared.provider_keys.borrow().as_ref() {
            Some(keys) => keys.key_for(&admitted.deployment.id).map(str::to_string),
            None => return Err(ApiError::provider_keys_pending()),
        };
        // LiteLLM's standard customer headers, then the configured ones.
        let end_user = admission::end_user_id(
            ["x-litellm-customer-id", "x-litellm-end-user-id"]
                .into_iter()
                .chain(config.customer_id_headers.iter().map(String::as_str))
                .find_map(|name| self.headers.get(name).filter(|v| !v.trim().is_empty())),
            &admitted.request,
        );
        Ok(Prepared {
            route,
            body,
            admitted,
            provider_key,
            end_user,
        })
    }

    /// Asks the sidecar for the request's customer, keeping the prepared admission.
    fn await_customer(&mut self, host: &impl Host, prepared: Prepared<'_>) -> Step {
        let Some(id) = prepared.end_user.clone() else {
            return Step::Pause;
        };
        match self.sidecar_get(host, &contract::customer_path(&id)) {
            Some(token) => {
                self.phase = Phase::AwaitCustomer {
                    token,
                    id,
                    prepared: Box::new(prepared.into_owned()),
                };
                Step::Pause
            }
            None => self.refuse(
                host,
                &ApiError::service_unavailable(
                    "Tollgate could not look up this customer: the key service is unreachable.",
                ),
            ),
        }
    }

    /// Admits (`after_borrow`: after a borrow, with its outcome and whether the sidecar
    /// answered it) and forwards, borrows, or refuses.
    fn finish_admission(
        &mut self,
        host: &impl Host,
        prepared: Prepared<'_>,
        customer: Option<CustomerLookup>,
        now: i64,
        after_borrow: Option<(&Borrowed, bool)>,
    ) -> Step {
        let Some(caller) = self.caller.clone() else {
            return Step::Pause;
        };
        let borrowed = after_borrow.map(|(b, _)| b);
        let admitted = self.admit(host, &caller, prepared, customer, now, borrowed);
        if let Some((_, answered)) = after_borrow {
            host.count(Metric::LeaseBorrows(borrow_outcome(answered, &admitted)), 1);
        }
        match admitted {
            Ok(Admit::Call(call)) => {
                self.record_admission_time(host, Outcome::Admitted, now);
                self.phase = Phase::Forwarded(call);
                Step::Continue
            }
            // A slice not asked for last time ran out while this request waited: another
            // round, a bounded number of times.
            Ok(Admit::Borrow { .. }) if self.borrows >= MAX_BORROWS => {
                self.refuse(host, &budgets::no_lease())
            }
            Ok(Admit::Borrow {
                prepared,
                customer,
                items,
            }) => self.borrow(host, *prepared, customer, items, now),
            Err(e) => self.refuse(host, &e),
        }
    }

    /// The customer's checks, budgets, then limits (LiteLLM's order); on success the request is
    /// rewritten for its deployment.
    fn admit<'a>(
        &self,
        host: &impl Host,
        caller: &Caller,
        prepared: Prepared<'a>,
        customer: Option<CustomerLookup>,
        now: i64,
        borrowed: Option<&Borrowed>,
    ) -> Result<Admit<'a>, ApiError> {
        let shared = &self.shared;
        let config = &shared.config;
        let route = prepared.route;
        let request = &prepared.admitted.request;
        let deployment = &prepared.admitted.deployment;
        let end_user = &prepared.end_user;
        let customer_record = match &customer {
            Some(CustomerLookup::Found { customer }) => {
                admission::check_customer(config, customer, &request.model)?;
                Some(customer.as_ref())
            }
            _ => None,
        };
        let scopes = admission::budget_scopes_with_customer(
            config,
            caller,
            &request.model,
            &deployment.pricing,
            end_user.as_deref().zip(customer.as_ref()),
        );
        admission::check_priced(config, &request.model, deployment, &scopes)?;
        let plan = admission::limit_plan_for(config, caller, request, route, customer_record);
        // Counted like the provider counts the prompt (chat framing included), so concurrent
        // reservations stay at or above what the calls cost.
        let prompt_estimate = request.input_token_estimate();
        let output_cap = match route {
            LlmRoute::Embeddings => 0,
            _ => request
                .max_tokens
                .or(plan.implicit_max_tokens)
                .unwrap_or_else(|| {
                    let model_cap = deployment.pricing.max_output_tokens.unwrap_or(u64::MAX);
                    config.budgets.default_output_tokens.min(model_cap)
                }),
        };
        let reservation =
            if config.budgets.disable_reservation || !cost::is_priced(&deployment.pricing) {
                0
            } else {
                cost::max_cost_nanos(
                    &deployment.pricing,
                    prompt_estimate,
                    output_cap.saturating_mul(request.n()),
                )
            };
        let fleet = config.fleet.as_ref().map(|f| FleetCheck {
            ttl_micros: i64::try_from(f.lease_ttl_ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            after_borrow: borrowed,
        });
        let budget = match budgets::admit_in(
            host,
            &scopes,
            reservation,
            now,
            self.calendar(),
            config.budgets.exceeded_status_code,
            fleet,
        )? {
            Admission::Admitted { ticket, renew } => {
                self.enqueue_renewals(host, &renew);
                ticket
            }
            Admission::Borrow(mut items) => {
                // Rate limits without a valid slice ride along: one hop for everything.
                items.extend(rate_leases::to_borrow(
                    host,
                    &plan.descriptors,
                    plan.token_estimate,
                    now,
                ));
                return Ok(Admit::Borrow {
                    prepared: Box::new(prepared),
                    customer,
                    items,
                });
            }
        };
        let window = i64::try_from(config.rate_limit_window_seconds.max(1))
            .unwrap_or(60)
            .saturating_mul(1_000_000);
        let leased = match fleet {
            Some(f) => {
                match rate_leases::admit(host, &plan.descriptors, plan.token_estimate, now, f) {
                    Ok(Leased::Admitted { ticket, renew }) => {
                        self.enqueue_renewals(host, &renew);
                        Ok(Some(ticket))
                    }
                    Ok(Leased::Borrow(items)) => {
                        budgets::settle(host, &budget, None, now, self.calendar());
                        return Ok(Admit::Borrow {
                            prepared: Box::new(prepared),
                            customer,
                            items,
                        });
                    }
                    // `on_no_lease: local`: this Envoy's own counters.
                    Ok(Leased::Local) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            None => Ok(None),
        };
        let limits = match leased.and_then(|t| match t {
            Some(t) => Ok(t),
            None => rate_limits::admit(host, &plan.descriptors, plan.token_estimate, now, window),
        }) {
            Ok(t) => t,
            Err(e) => {
                budgets::settle(host, &budget, None, now, self.calendar());
                return Err(e);
            }
        };

        let Prepared {
            body,
            admitted,
            provider_key,
            end_user,
            ..
        } = prepared;
        let request = &admitted.request;
        let deployment = &admitted.deployment;
        let stream = request.stream && route != LlmRoute::Embeddings;
        let add_stream_usage = stream && !request.client_wants_stream_usage();
        let upstream_body = request.upstream_body_from(
            &body,
            &deployment.backend_model,
            plan.implicit_max_tokens,
            add_stream_usage,
        );
        self.rewrite_request(
            host,
            &admitted,
            provider_key.as_deref(),
            &body,
            &upstream_body,
        );

        let (api_key, key_alias, user_id, team_id) = match caller {
            Caller::VirtualKey { record, .. } => (
                Some(record.token.clone()),
                record.key_alias.clone(),
                record.user_id.clone(),
                record.team_id.clone(),
            ),
            Caller::Master => (None, None, None, None),
        };
        let model_remaining = |t| rate_limits::model_remaining(&limits.statuses, t);
        let (model_remaining_requests, model_remaining_tokens) = (
            model_remaining(rate_limits::LimitType::Requests),
            model_remaining(rate_limits::LimitType::Tokens),
        );
        Ok(Admit::Call(Box::new(AdmittedCall {
            limits,
            budget,
            pricing: deployment.pricing.clone(),
            prompt_tokens: prompt_estimate,
            strip_usage_chunk: add_stream_usage,
            upstream_status: None,
            usage: None,
            holding_headers: false,
            response_headers: Vec::new(),
            provider_key,
            redact_body: false,
            replacement_body: None,
            event: SpendEvent {
                // Minted here: the client's `x-request-id` is only recorded, never a key.
                event_id: shared.next_event_id(),
                client_request_id: self.headers.get("x-request-id").map(str::to_string),
                api_key,
                key_alias,
                user_id,
                team_id,
                end_user,
                model: request.model.clone(),
                model_id: deployment.id.clone(),
                call_type: match route {
                    LlmRoute::ChatCompletions => "acompletion",
                    LlmRoute::Completions => "atext_completion",
                    LlmRoute::Embeddings => "aembedding",
                }
                .to_string(),
                start_time_micros: self.started_micros,
                envoy_id: config.fleet.as_ref().and(shared.envoy_id.clone()),
                model_remaining_requests,
                model_remaining_tokens,
                ..Default::default()
            },
        })))
    }

    /// Fleet mode: slices due for renewal go on the lease queue for the root tick.
    fn enqueue_renewals(&self, host: &impl Host, renew: &[LeaseItem]) {
        let Some(queue) = self.shared.lease_queue else {
            return;
        };
        for item in renew {
            if let Ok(bytes) = serde_json::to_vec(item) {
                host.enqueue(queue, &bytes);
            }
        }
    }

    /// Points the request at its deployment: credentials, cluster, path, authority, body.
    fn rewrite_request(
        &self,
        host: &impl Host,
        admitted: &Admitted<'_>,
        provider_key: Option<&str>,
        body: &[u8],
        upstream_body: &[u8],
    ) {
        let config = &self.shared.config;
        let deployment = &admitted.deployment;
        // No credential of the caller reaches the provider (only headers present are touched:
        // every host call costs).
        let custom = config
            .key_header_name
            .as_deref()
            .map(str::to_ascii_lowercase);
        for name in CREDENTIAL_HEADERS.iter().copied().chain(custom.as_deref()) {
            if name != "authorization" && self.headers.has(name) {
                host.set_request_header(name, None);
            }
        }
        match provider_key {
            Some(key) => host.set_request_header("authorization", Some(&format!("Bearer {key}"))),
            None if self.headers.has("authorization") => {
                host.set_request_header("authorization", None)
            }
            None => {}
        }
        host.set_request_header(CLUSTER_HEADER, Some(&deployment.cluster));
        // Usually the client's path already is the deployment's (`/v1/chat/completions`).
        for (name, value) in [
            (":path", admitted.path.as_str()),
            (":authority", deployment.authority.as_str()),
        ] {
            if self.headers.get(name) != Some(value) {
                host.set_request_header(name, Some(value));
            }
        }
        if self.headers.has("accept-encoding") {
            host.set_request_header("accept-encoding", None);
        }
        if upstream_body != body {
            host.replace_request_body(self.body_size, upstream_body);
        }
        // The headers are still paused: the provider gets a plain `content-length` request
        // (without it Envoy would send the body chunked, which some servers do not read).
        let length = upstream_body.len().to_string();
        if self.headers.get("content-length") != Some(length.as_str()) {
            host.set_request_header("content-length", Some(&length));
        }
        if self.headers.has("transfer-encoding") {
            host.set_request_header("transfer-encoding", None);
        }
    }

    pub fn on_response_headers(&mut self, host: &impl Host, end_of_stream: bool) -> Step {
        let call = match &mut self.phase {
            Phase::Pass => {
                // An admin change passing through: drop what it made stale before the admin
                // sees the answer, so the very next request is decided on the new state.
                if let Some(entries) = host.response_header(INVALIDATE_HEADER) {
                    key_cache::invalidate(
                        host,
                        &self.shared.decoded,
                        &entries,
                        host.now_micros(),
                        None,
                    );
                    if self.shared.config.fleet.is_some() {
                        // Budget slices are reported at the next tick (FLEET.md §4.10).
                        crate::lease_tick::renew_all_soon(host, host.now_micros());
                    }
                    host.set_response_header(INVALIDATE_HEADER, None);
                }
                return Step::Continue;
            }
            Phase::Forwarded(call) => call,
            _ => {
                if host.response_header(":status").as_deref() == Some("413")
                    && !host
                        .response_header("content-type")
                        .is_some_and(|t| t.starts_with("application/json"))
                {
                    self.envoy_413 = true;
                    host.set_response_header("content-type", Some("application/json"));
                    // The envelope's length is known now: the client gets a plain (not chunked)
                    // answer, whichever of Envoy's limit or the filter's refused the body first.
                    let limit = self.shared.config.max_request_body_bytes;
                    let length = ApiError::body_too_large(limit).body().len().to_string();
                    host.set_response_header("content-length", Some(&length));
                }
                return Step::Continue;
            }
        };
        let response = HeaderSnapshot(host.response_headers());
        let status = response.get(":status").and_then(|s| s.parse::<u16>().ok());
        call.upstream_status = status;
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        // An encoded body (gzip despite the dropped accept-encoding) is passed on untouched:
        // read as one opaque document, never rewritten.
        let encoded = response
            .get("content-encoding")
            .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        let kind = if encoded {
            BodyKind::Json
        } else {
            BodyKind::from_content_type(response.get("content-type"))
        };
        let strip = call.strip_usage_chunk && kind == BodyKind::EventStream;
        call.usage = Some(UsageReader::new(kind, strip, MAX_USAGE_BUFFER));
        // `max_response_size_mb`: a long non-streamed answer becomes LiteLLM's 400 (still read
        // for usage and charged, as LiteLLM charges it).
        if let Some((headers, body)) = oversized_response(
            &response.0,
            kind == BodyKind::EventStream,
            self.shared.config.max_response_body_bytes,
        ) {
            host.set_response_headers(&headers);
            call.replacement_body = Some(body);
            return Step::Continue;
        }
        if !ok {
            // A provider may echo the key it was given in its error (body or headers).
            if let Some(secret) = call.provider_key.as_deref() {
                let mut cleaned = Vec::with_capacity(response.0.len());
                for (name, value) in &response.0 {
                    if name == "content-length" {
                        continue;
                    }
                    let value = match redact_secret(value.as_bytes(), secret) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None => value.clone(),
                    };
                    cleaned.push((name.clone(), value));
                }
                if cleaned != response.0 {
                    host.set_response_headers(&cleaned);
                }
                call.redact_body = !end_of_stream;
                return Step::Continue;
            }
        }
        // A non-streamed JSON answer of known, modest size is held so its cost can go in a header;
        // a stream is never held back.
        let small = response
            .get("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| l <= MAX_USAGE_BUFFER);
        if ok && kind == BodyKind::Json && small && !end_of_stream {
            call.holding_headers = true;
            call.response_headers = response.0;
            return Step::Pause;
        }
        // Limit and budget headers go on streamed responses too (LiteLLM omits them there).
        let added = if ok {
            success_headers(
                &call.limits.statuses,
                &call.event.model,
                call.budget.key_spend_nanos,
                call.budget.key_max_budget,
                None,
                cost::is_priced(&call.pricing),
            )
        } else {
            Vec::new()
        };
        if strip && response.has("content-length") {
            host.set_response_header("content-length", None);
        }
        write_headers(host, &response.0, &added);
        Step::Continue
    }

    pub fn on_response_body(
        &mut self,
        host: &impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Step {
        if self.envoy_413 {
            if !end_of_stream {
                return Step::Pause;
            }
            let limit = self.shared.config.max_request_body_bytes;
            host.replace_response_body(body_size, &ApiError::body_too_large(limit).body());
            return Step::Continue;
        }
        let Phase::Forwarded(call) = &mut self.phase else {
            return Step::Continue;
        };
        if let Some(replacement) = &call.replacement_body {
            let chunk = host.response_body(body_size);
            let mut out = Vec::new();
            if let Some(reader) = call.usage.as_mut() {
                reader.feed(&chunk);
                if end_of_stream {
                    reader.finish();
                }
            }
            if end_of_stream {
                out.clone_from(replacement);
            }
            host.replace_response_body(body_size, &out);
            return Step::Continue;
        }
        if call.holding_headers {
            if !end_of_stream {
                return Step::Pause;
            }
            let body = host.response_body(body_size);
            if let Some(reader) = call.usage.as_mut() {
                reader.feed(&body);
                reader.finish();
            }
            let response_cost = final_usage(call).map(|(u, _)| cost::cost_nanos(&call.pricing, &u));
            let added = success_headers(
                &call.limits.statuses,
                &call.event.model,
                call.budget.key_spend_nanos,
                call.budget.key_max_budget,
                response_cost,
                cost::is_priced(&call.pricing),
            );
            write_headers(host, &call.response_headers, &added);
            return Step::Continue;
        }
        if call.redact_body {
            if !end_of_stream {
                return Step::Pause;
            }
            if let Some(secret) = call.provider_key.as_deref() {
                let body = host.response_body(body_size);
                if let Some(clean) = redact_secret(&body, secret) {
                    host.replace_response_body(body_size, &clean);
                }
            }
            return Step::Continue;
        }
        let Some(reader) = call.usage.as_mut() else {
            return Step::Continue;
        };
        let chunk = host.response_body(body_size);
        let mut out = reader.feed(&chunk);
        if end_of_stream {
            out.extend_from_slice(&reader.finish());
        }
        if out != chunk {
            host.replace_response_body(body_size, &out);
        }
        Step::Continue
    }

    /// The end of every admitted call, also after an upstream error or a client abort: settle
    /// tokens, slots and spend, and queue the spend event.
    pub fn on_log(&mut self, host: &impl Host) {
        let Phase::Forwarded(mut call) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let config = &self.shared.config;
        let now = host.now_micros();
        let usage = final_usage(&call);
        let tokens = usage.map(|(u, _)| {
            rate_limits::counted_tokens(
                config.token_rate_limit_type,
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens,
            )
        });
        rate_limits::release(host, &call.limits, tokens, now);
        let cost = usage.map(|(u, _)| cost::cost_nanos(&call.pricing, &u));
        budgets::settle(host, &call.budget, cost, now, self.calendar());

        let event = &mut call.event;
        if let Some((u, estimated)) = usage {
            event.prompt_tokens = u.prompt_tokens;
            event.completion_tokens = u.completion_tokens;
            event.total_tokens = u
                .total_tokens
                .max(u.prompt_tokens.saturating_add(u.completion_tokens));
            event.cached_tokens = u.cached_tokens;
            event.estimated = estimated;
            event.status = "success".into();
        } else {
            event.status = "failure".into();
        }
        event.spend_nanos = cost.unwrap_or(0);
        event.end_time_micros = now;
        // LiteLLM's spend-log `request_id`: the call's id from the response, else the call id.
        event.request_id = call
            .usage
            .as_ref()
            .and_then(UsageReader::response_id)
            .map_or_else(|| event.event_id.clone(), str::to_string);
        if self.shared.spend_queue.is_some() {
            if let Ok(bytes) = serde_json::to_vec(event) {
                self.shared.queue_spend_event(host, &bytes);
            }
        }
        // One increment for the outcome, and one per non-zero usage figure.
        let class = StatusClass::of(call.upstream_status);
        host.count(Metric::Requests(Outcome::Admitted, class), 1);
        for (metric, n) in [
            (Metric::InputTokens, event.prompt_tokens),
            (Metric::OutputTokens, event.completion_tokens),
            (
                Metric::SpendNanos,
                u64::try_from(event.spend_nanos).unwrap_or(0),
            ),
        ] {
            if n > 0 {
                host.count(metric, n);
            }
        }
    }
}

/// Puts `added` on the response whose headers were `existing`: a name it has is replaced (every
/// value), one it lacks is added. One call per header, each only what changes: cheaper in Envoy
/// than writing the whole map back, which clears and rebuilds it (BENCHMARKS.md, "Cuts,
/// measured").
fn write_headers(host: &impl Host, existing: &[(String, String)], added: &[(String, String)]) {
    for (name, value) in added {
        if existing.iter().any(|(k, _)| k == name) {
            host.set_response_header(name, Some(value));
        } else {
            host.add_response_header(name, value);
        }
    }
}

/// The scopes an answer lent more of than their items had used (in the item's period; a grant
/// for another period lends anything above zero). A scope's later grants (its next period's,
/// issued ahead) lend nothing now.
fn lent_scopes(answer: &LeaseAnswer, items: &[LeaseItem]) -> Vec<String> {
    answer
        .items
        .iter()
        .enumerate()
        .filter(|(n, g)| !answer.items[..*n].iter().any(|e| e.scope == g.scope))
        .map(|(_, g)| g)
        .filter(|g| {
            items.iter().any(|i| {
                i.scope == g.scope && g.grant > if i.period == g.period { i.used } else { 0 }
            })
        })
        .map(|g| g.scope.clone())
        .collect()
}

/// A borrow's outcome: no answer is a failure whatever `on_no_lease` then decided; with an
/// answer, a budget refusal (or a slice still missing) is a refusal, anything else (admitted,
/// or refused later for a rate limit) a grant.
fn borrow_outcome(answered: bool, admitted: &Result<Admit<'_>, ApiError>) -> Borrow {
    if !answered {
        return Borrow::Failed;
    }
    match admitted {
        // Answered; another slice needs a round.
        Ok(Admit::Borrow { .. }) => Borrow::Granted,
        Err(e)
            if e.error_type == "budget_exceeded"
                || e.error_type == "throttling_error"
                || *e == budgets::no_lease() =>
        {
            Borrow::Refused
        }
        _ => Borrow::Granted,
    }
}

/// Usage of a finished call: what the provider reported, else an estimate from the prompt and
/// the streamed text (flagged as estimated). `None` when the upstream failed.
fn final_usage(call: &AdmittedCall) -> Option<(Usage, bool)> {
    let status = call.upstream_status?;
    if !(200..300).contains(&status) {
        return None;
    }
    let reader = call.usage.as_ref()?;
    if let Some(u) = reader.usage() {
        return Some((u, false));
    }
    let prompt = call.prompt_tokens;
    let completion = reader.streamed_text_chars() / 4;
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        ..Default::default()
    };
    Some((usage, true))
}
