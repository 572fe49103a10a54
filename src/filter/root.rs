//! The root context (one per worker): plugin configuration, and the spend-event flusher. Every
//! worker ticks and drains the shared queue, so events go out even if one worker is idle; an
//! event is dequeued once, and a failed batch is put back.

use super::host;
use super::http::TollgateHttp;
use crate::plugin_config::PluginConfig;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// Name of the shared queue of spend events.
pub const SPEND_QUEUE: &str = "tollgate_spend_v1";
/// Most events sent in one batch.
const MAX_BATCH: usize = 1000;
/// Most batches one worker has in flight; the queue is drained up to this each tick, so the
/// flush keeps up with `MAX_BATCH * MAX_IN_FLIGHT` events per second per worker.
const MAX_IN_FLIGHT: usize = 16;
const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// What every HTTP context of a worker shares.
pub struct Shared {
    pub config: Rc<PluginConfig>,
    /// Spreads requests over the deployments of one model name.
    pub pick: Cell<usize>,
    pub spend_queue: Option<u32>,
    /// Key records this worker has decoded.
    pub decoded: super::key_cache::Decoded,
}

#[derive(Default)]
pub struct TollgateRoot {
    shared: Option<Rc<Shared>>,
    /// Batches being sent, by call token, kept until the sidecar acknowledges them.
    in_flight: Vec<(u32, Vec<Vec<u8>>)>,
}

impl TollgateRoot {
    fn flush(&mut self) {
        let Some(shared) = &self.shared else { return };
        let Some(queue) = shared.spend_queue else {
            return;
        };
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let mut raw = Vec::new();
            while raw.len() < MAX_BATCH {
                match host::dequeue(queue) {
                    Some(item) => raw.push(item),
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
        // Events are already JSON: splice them into the batch instead of decoding each one.
        let size = raw.iter().map(Vec::len).sum::<usize>() + raw.len() + 16;
        let mut body = Vec::with_capacity(size);
        body.extend_from_slice(b"{\"events\":[");
        for (i, event) in raw.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        body.extend_from_slice(b"]}");
        let config = &shared.config;
        match host::dispatch_post(
            &config.sidecar_cluster,
            &config.sidecar_authority,
            "/tollgate/internal/v1/spend",
            &format!("Bearer {}", config.internal_token),
            &body,
            Duration::from_millis(config.sidecar_timeout_ms.max(1000)),
        ) {
            Ok(token) => {
                self.in_flight.push((token, raw));
                true
            }
            Err(()) => {
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
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let Some(i) = self.in_flight.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, raw) = self.in_flight.swap_remove(i);
        if host::call_response_status() != Some(200) {
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
        self.shared = Some(Rc::new(Shared {
            config: Rc::new(config),
            pick: Cell::new(0),
            spend_queue: host::register_queue(SPEND_QUEUE),
            decoded: Default::default(),
        }));
        host::set_tick_period(FLUSH_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        self.flush();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(TollgateHttp::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
