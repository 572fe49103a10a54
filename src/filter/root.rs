//! The root context (one per worker): plugin configuration, and the spend-event flusher. Every
//! worker ticks and drains the shared queue, so events go out even if one worker is idle; an
//! event is dequeued once, and a failed batch is put back.
//!
//! Fleet mode: every worker also drains the lease queue into one lease report per tick. A
//! queued renewal is dequeued by exactly one worker, so no leader election is needed: a due
//! scope is reported once, by whichever worker took it (HTTP contexts enqueue a scope at most
//! once a second).

use super::host;
use super::http::TollgateHttp;
use crate::budgets;
use crate::contract::{self, CHANGES_SEQ_KEY, LEASE_QUEUE, PROVIDER_KEYS_PATH, SPEND_QUEUE};
use crate::flow::{key_cache, Shared};
use crate::metrics::{Batch, Metric, Renewal};
use crate::plugin_config::PluginConfig;
use crate::provider_keys::ProviderKeys;
use crate::records::{Changes, LeaseAnswer};
use crate::shared_store::{self, update, Decision, VersionedStore};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::rc::Rc;
use std::time::Duration;

/// Most queue items sent in one batch (an item holds up to `SPEND_EVENTS_PER_ITEM` events),
/// and about the most bytes (the sidecar takes up to 8 MiB).
const MAX_BATCH: usize = 1000;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most renewals one lease report carries; the rest wait for the next tick.
const MAX_LEASE_ITEMS: usize = 1000;
/// Most lease reports one worker has in flight.
const MAX_LEASE_CALLS: usize = 4;
/// Most batches one worker has in flight; the queue is drained up to this each tick, so the
/// flush keeps up with `MAX_BATCH * MAX_IN_FLIGHT` events per second per worker.
const MAX_IN_FLIGHT: usize = 16;
const FLUSH_PERIOD: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct TollgateRoot {
    shared: Option<Rc<Shared>>,
    /// Batches being sent, by call token, kept until the sidecar acknowledges them.
    in_flight: Vec<(u32, Vec<Vec<u8>>)>,
    /// The change-log poll under way, if any.
    changes_poll: Option<u32>,
    /// The provider-keys request under way, if any.
    keys_fetch: Option<u32>,
    /// Fleet mode: lease reports under way: token, seq, when sent (µs), the scopes asked.
    lease_calls: Vec<(u32, u64, i64, Vec<String>)>,
    /// Fleet mode: the scopes this worker reports on (next periods ahead, idle returns).
    active: crate::lease_tick::ActiveScopes,
    /// Fleet mode: the change log listed an admin change; report the slices without waiting
    /// for the tick.
    renew_now: bool,
}

impl TollgateRoot {
    /// Adds one to a counter of this VM.
    fn count(&self, metric: Metric) {
        if let Some(shared) = &self.shared {
            host::count(&shared.metric_ids, metric, 1);
        }
    }

    /// Asks the sidecar what changed since the last position this Envoy applied, so changes
    /// made through another Envoy (or directly on the sidecar) take effect here too.
    fn poll_changes(&mut self) {
        let Some(shared) = &self.shared else { return };
        if self.changes_poll.is_some() {
            return;
        }
        let since = host::SharedData
            .get(CHANGES_SEQ_KEY)
            .and_then(|(v, _)| std::str::from_utf8(&v).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        let config = &shared.config;
        if let Ok(token) = host::dispatch_get(
            &config.sidecar_cluster,
            &config.sidecar_authority,
            &contract::changes_path(since),
            &format!("Bearer {}", config.internal_token),
            Duration::from_millis(config.sidecar_timeout_ms.max(1000)),
        ) {
            self.changes_poll = Some(token);
        }
    }

    /// Asks the sidecar for the provider keys (at start, until it answers, and when the change
    /// log reports other keys).
    fn fetch_provider_keys(&mut self) {
        let Some(shared) = &self.shared else { return };
        if self.keys_fetch.is_some() {
            return;
        }
        let config = &shared.config;
        match host::dispatch_get(
            &config.sidecar_cluster,
            &config.sidecar_authority,
            PROVIDER_KEYS_PATH,
            &format!("Bearer {}", config.internal_token),
            Duration::from_millis(config.sidecar_timeout_ms.max(1000)),
        ) {
            Ok(token) => self.keys_fetch = Some(token),
            Err(()) => host::log(
                LogLevel::Warn,
                "tollgate: cannot ask the sidecar for the provider keys; retrying",
            ),
        }
    }

    fn apply_provider_keys(&mut self, body_size: usize) {
        let Some(shared) = &self.shared else { return };
        let keys = (host::call_response_status() == Some(200))
            .then(|| host::call_response_body(body_size))
            .flatten()
            .and_then(|b| serde_json::from_slice::<ProviderKeys>(&b).ok());
        match keys {
            Some(keys) => *shared.provider_keys.borrow_mut() = Some(Rc::new(keys)),
            None => host::log(
                LogLevel::Warn,
                "tollgate: the sidecar did not hand over the provider keys; retrying",
            ),
        }
    }

    /// Applies a change-log answer; true when it reports provider keys other than the held ones.
    fn apply_changes(&mut self, body_size: usize) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        if host::call_response_status() != Some(200) {
            return false;
        }
        let Some(changes) = host::call_response_body(body_size)
            .and_then(|b| serde_json::from_slice::<Changes>(&b).ok())
        else {
            return false;
        };
        let held = shared
            .provider_keys
            .borrow()
            .as_ref()
            .map(|k| k.fingerprint.clone());
        let now = host::now_micros();
        if !changes.entries.is_empty() {
            key_cache::invalidate(
                &host::SharedData,
                &shared.decoded,
                &changes.entries.join(","),
                now,
                Some(changes.seq),
            );
            if shared.config.fleet.is_some() {
                // An admin change: the budget slices are reported now, here, and at the next
                // tick of the other workers (a lowered budget shrinks them, FLEET.md §4.10).
                crate::lease_tick::renew_all_soon(&host::SharedData, now);
                self.renew_now = true;
            }
        }
        let _ = update(&host::SharedData, CHANGES_SEQ_KEY, now, |v| {
            let current = v
                .and_then(|b| std::str::from_utf8(b).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            if changes.seq > current {
                Decision::Write(changes.seq.to_string().into_bytes(), ())
            } else {
                Decision::Keep(())
            }
        });
        changes.provider_keys.is_some() && changes.provider_keys != held
    }

    /// Fleet mode: one lease report for the renewals queued since the last tick.
    fn renew_leases(&mut self) {
        let Some(shared) = &self.shared else { return };
        let (Some(queue), Some(envoy_id)) = (shared.lease_queue, shared.envoy_id.as_deref()) else {
            return;
        };
        if shared.config.fleet.is_none() || self.lease_calls.len() >= MAX_LEASE_CALLS {
            return;
        }
        let mut raw = Vec::new();
        while raw.len() < MAX_LEASE_ITEMS {
            match host::dequeue(queue) {
                Some(item) => raw.push(item),
                None => break,
            }
        }
        if raw.is_empty() && self.active.is_empty() {
            return;
        }
        let now = host::now_micros();
        let Some(request) = self.active.report(
            &host::SharedData,
            &raw,
            envoy_id,
            now,
            crate::leases::IDLE_RETURN_MICROS,
        ) else {
            return;
        };
        let Ok(body) = serde_json::to_vec(&request) else {
            return;
        };
        let config = &shared.config;
        // A report that cannot be sent is dropped: the scopes are enqueued again by the next
        // admission a second later, and their slices stay valid until their deadlines.
        match host::dispatch_post(
            &config.sidecar_cluster,
            &config.sidecar_authority,
            contract::LEASES_PATH,
            &format!("Bearer {}", config.internal_token),
            &body,
            Duration::from_millis(config.sidecar_timeout_ms.max(1000)),
        ) {
            Ok(token) => {
                let asked = request.items.into_iter().map(|i| i.scope).collect();
                self.lease_calls.push((token, request.seq, now, asked));
            }
            Err(()) => self.count(Metric::LeaseRenewals(Renewal::Failed)),
        }
    }

    fn apply_lease_answer(&self, seq: u64, sent_at: i64, asked: &[String], body_size: usize) {
        let answer = (host::call_response_status() == Some(200))
            .then(|| host::call_response_body(body_size))
            .flatten()
            .and_then(|b| serde_json::from_slice::<LeaseAnswer>(&b).ok());
        match answer {
            Some(answer) => {
                self.count(Metric::LeaseRenewals(Renewal::Sent));
                let now = host::now_micros();
                budgets::apply_lease_answer(&host::SharedData, &answer, asked, seq, sent_at, now);
            }
            None => {
                self.count(Metric::LeaseRenewals(Renewal::Failed));
                host::log(
                    LogLevel::Warn,
                    "tollgate: the sidecar did not answer a lease report; slices run to their deadlines",
                );
            }
        }
    }

    fn flush(&mut self) {
        let Some(shared) = &self.shared else { return };
        let Some(queue) = shared.spend_queue else {
            return;
        };
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let mut raw = Vec::new();
            let mut bytes = 0;
            while raw.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match host::dequeue(queue) {
                    Some(item) => {
                        bytes += item.len();
                        raw.push(item);
                    }
                    None => break,
                }
            }
            if raw.is_empty() {
                return;
            }
            if !self.send(queue, raw) {
                return;
            }
        }
    }

    /// Sends one batch; on failure it goes back on the queue. Returns whether it was sent.
    fn send(&mut self, queue: u32, raw: Vec<Vec<u8>>) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let body = contract::spend_batch_body(&raw);
        let config = &shared.config;
        match host::dispatch_post(
            &config.sidecar_cluster,
            &config.sidecar_authority,
            contract::SPEND_PATH,
            &format!("Bearer {}", config.internal_token),
            &body,
            Duration::from_millis(config.sidecar_timeout_ms.max(1000)),
        ) {
            Ok(token) => {
                self.in_flight.push((token, raw));
                true
            }
            Err(()) => {
                self.count(Metric::SpendBatches(Batch::Retried));
                requeue(queue, &raw);
                false
            }
        }
    }
}

fn requeue(queue: u32, raw: &[Vec<u8>]) {
    for item in raw {
        host::enqueue(queue, item);
    }
}

impl Context for TollgateRoot {
    /// This configuration is going away (a reload replaced it, or Envoy is stopping): batches
    /// whose answer has not come back go back on the queue, which outlives this root context,
    /// for the next configuration to send. The sidecar ignores events it already has.
    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            shared.stop_buffering_spend_events(&host::ProxyHost {
                metric_ids: &shared.metric_ids,
            });
        }
        if let Some(queue) = self.shared.as_ref().and_then(|s| s.spend_queue) {
            let in_flight = std::mem::take(&mut self.in_flight);
            for (_, raw) in in_flight {
                self.count(Metric::SpendBatches(Batch::Retried));
                requeue(queue, &raw);
            }
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if self.changes_poll == Some(token) {
            self.changes_poll = None;
            if self.apply_changes(body_size) {
                self.fetch_provider_keys();
            }
            if std::mem::take(&mut self.renew_now) {
                self.renew_leases();
            }
            return;
        }
        if self.keys_fetch == Some(token) {
            self.keys_fetch = None;
            self.apply_provider_keys(body_size);
            return;
        }
        if let Some(i) = self.lease_calls.iter().position(|(t, _, _, _)| *t == token) {
            let (_, seq, sent_at, asked) = self.lease_calls.swap_remove(i);
            self.apply_lease_answer(seq, sent_at, &asked, body_size);
            return;
        }
        let Some(i) = self.in_flight.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, raw) = self.in_flight.swap_remove(i);
        if host::call_response_status() == Some(200) {
            self.count(Metric::SpendBatches(Batch::Flushed));
        } else {
            self.count(Metric::SpendBatches(Batch::Retried));
            host::log(
                LogLevel::Warn,
                "tollgate: the sidecar did not take a spend batch; retrying",
            );
            if let Some(queue) = self.shared.as_ref().and_then(|s| s.spend_queue) {
                requeue(queue, &raw);
            }
        }
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(raw) = host::plugin_configuration() else {
            host::log(LogLevel::Error, "tollgate: no plugin configuration");
            return false;
        };
        let config = match serde_json::from_slice::<PluginConfig>(&raw) {
            Ok(c) => c,
            Err(e) => {
                host::log(
                    LogLevel::Error,
                    &format!("tollgate: invalid plugin configuration: {e}"),
                );
                return false;
            }
        };
        let mut instance_id = [0u8; 16];
        if let Err(e) = getrandom::fill(&mut instance_id) {
            host::log(
                LogLevel::Error,
                &format!("tollgate: no randomness for spend event ids: {e}"),
            );
            return false;
        }
        if let Err(e) = shared_store::ensure_lease(&host::SharedData) {
            host::log(
                LogLevel::Error,
                &format!("tollgate: cannot create the counter lease: {e:?}"),
            );
            return false;
        }
        let fleet = config.fleet.is_some();
        let mut shared = Shared::new(config, host::register_queue(SPEND_QUEUE), instance_id);
        shared.metric_ids = host::define_metrics();
        if fleet {
            // Envoy runs `on_configure` on the main thread's VM before the workers', so the
            // first call creates the id and every VM reads the same one.
            let mut fresh = [0u8; 16];
            let id = getrandom::fill(&mut fresh).ok().and_then(|()| {
                budgets::ensure_envoy_id(&host::SharedData, &fresh, host::now_micros())
            });
            let Some(id) = id else {
                host::log(LogLevel::Error, "tollgate: cannot create this Envoy's id");
                return false;
            };
            shared.envoy_id = Some(id);
            shared.lease_queue = host::register_queue(LEASE_QUEUE);
        }
        self.shared = Some(Rc::new(shared));
        host::set_tick_period(FLUSH_PERIOD);
        self.fetch_provider_keys();
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            key_cache::refresh_epoch(&host::SharedData, &shared.decoded);
        }
        if self
            .shared
            .as_ref()
            .is_some_and(|s| s.provider_keys.borrow().is_none())
        {
            self.fetch_provider_keys();
        }
        self.poll_changes();
        // This worker's buffered spend events first, so they go out in this tick's batches.
        if let Some(shared) = &self.shared {
            shared.flush_spend_events(&host::ProxyHost {
                metric_ids: &shared.metric_ids,
            });
        }
        self.flush();
        self.renew_leases();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(TollgateHttp::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
