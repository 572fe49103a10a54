//! The proxy-wasm adapter: moves bytes between Envoy and the pure core. Every host call goes
//! through `proxy_wasm::hostcalls`, whose errors are handled (the SDK's trait helpers unwrap).

mod host;
mod key_cache;

use crate::admission::{self, Caller};
use crate::credential::extract_credential;
use crate::errors::ApiError;
use crate::key_format::{self, constant_time_eq, hash_key};
use crate::plugin_config::PluginConfig;
use crate::rate_limits::{self, Ticket};
use crate::records::KeyLookup;
use crate::routes::{self, LlmRoute};
use crate::usage::{BodyKind, UsageReader};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::plugin_config::CLUSTER_HEADER;

/// Headers that may carry the caller's credential; none of them may reach the provider.
const CREDENTIAL_HEADERS: [&str; 6] = [
    "x-litellm-api-key",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
    "authorization",
];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TollgateRoot::default()) });
}}

#[derive(Default)]
struct TollgateRoot {
    config: Option<Rc<PluginConfig>>,
    pick: Rc<Cell<usize>>,
}

impl Context for TollgateRoot {}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = match host::plugin_configuration() {
            Some(raw) => raw,
            None => {
                host::log(LogLevel::Error, "tollgate: no plugin configuration");
                return false;
            }
        };
        match serde_json::from_slice::<PluginConfig>(&raw) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                host::log(
                    LogLevel::Error,
                    &format!("tollgate: invalid plugin configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(TollgateHttp {
            config,
            pick: self.pick.clone(),
            state: State::Idle,
            caller: None,
            body_complete: false,
            body_size: 0,
            lookup: None,
            call: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the request is, once its headers are read.
#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Not ours (admin API, health): passed through untouched.
    Idle,
    /// An LLM call waiting for its caller and/or body.
    Llm(LlmRoute),
    /// `GET /v1/models`, answered by the filter.
    ModelList,
    /// A response was sent locally; nothing more to do.
    Done,
}

struct PendingLookup {
    token: u32,
    hash: String,
    raw_last4: String,
}

struct TollgateHttp {
    config: Rc<PluginConfig>,
    pick: Rc<Cell<usize>>,
    state: State,
    caller: Option<Caller>,
    body_complete: bool,
    body_size: usize,
    lookup: Option<PendingLookup>,
    /// Set once an LLM call is admitted: what to settle when it ends.
    call: Option<AdmittedCall>,
}

/// An admitted LLM call, followed to its end.
struct AdmittedCall {
    ticket: Ticket,
    token_estimate: u64,
    prompt_chars: u64,
    /// The client did not ask for the streamed usage chunk; Tollgate did, and hides it.
    strip_usage_chunk: bool,
    upstream_status: Option<u16>,
    usage: Option<UsageReader>,
}

impl TollgateHttp {
    fn refuse(&mut self, error: &ApiError) {
        self.state = State::Done;
        host::send_error(error);
    }

    /// Establishes the caller from the headers: `Ok(true)` when known now, `Ok(false)` when a
    /// sidecar lookup is under way.
    fn identify(&mut self) -> Result<bool, ApiError> {
        let raw = extract_credential(host::request_header, self.config.key_header_name.as_deref())?;
        let hash = hash_key(&raw);
        if let Some(master) = &self.config.master_key_hash {
            if constant_time_eq(master.as_bytes(), hash.as_bytes()) {
                self.caller = Some(Caller::Master);
                return Ok(true);
            }
        }
        if !raw.starts_with(key_format::KEY_PREFIX) {
            return Err(ApiError::not_a_virtual_key(&raw));
        }
        let raw_last4: String = {
            let chars: Vec<char> = raw.chars().collect();
            chars[chars.len().saturating_sub(4)..].iter().collect()
        };
        let now = host::now_micros();
        match key_cache::get(&hash, now) {
            key_cache::Cached::Known(record) => {
                self.caller = Some(Caller::VirtualKey { record, raw_last4 });
                Ok(true)
            }
            key_cache::Cached::Unknown => Err(ApiError::invalid_api_key()),
            key_cache::Cached::Missing => {
                let path = format!("/tollgate/internal/v1/keys/{hash}");
                let auth = format!("Bearer {}", self.config.internal_token);
                let token = host::dispatch_get(
                    &self.config.sidecar_cluster,
                    &self.config.sidecar_authority,
                    &path,
                    &auth,
                    Duration::from_millis(self.config.sidecar_timeout_ms.max(100)),
                )
                .map_err(|_| {
                    ApiError::service_unavailable(
                        "Tollgate could not verify this key: the key service is unreachable.",
                    )
                })?;
                self.lookup = Some(PendingLookup {
                    token,
                    hash,
                    raw_last4,
                });
                Ok(false)
            }
        }
    }

    /// Runs once the caller is known and the whole body is buffered. Returns whether the
    /// request should continue upstream.
    fn decide(&mut self) -> bool {
        let Some(caller) = self.caller.clone() else {
            return false;
        };
        match self.state {
            State::ModelList => {
                let models = admission::visible_models(&self.config, &caller);
                host::send_json(200, &model_list_body(&models));
                self.state = State::Done;
                false
            }
            State::Llm(route) => {
                let body = host::request_body(self.body_size);
                let path = host::request_header(":path").unwrap_or_default();
                let pick = self.pick.get();
                self.pick.set(pick.wrapping_add(1));
                let now = host::now_micros();
                let admitted =
                    match admission::admit(&self.config, &caller, route, &path, &body, now, pick) {
                        Ok(a) => a,
                        Err(e) => {
                            self.refuse(&e);
                            return false;
                        }
                    };
                let plan = admission::limit_plan(&self.config, &caller, &admitted.request, route);
                let window = i64::try_from(self.config.rate_limit_window_seconds.max(1))
                    .unwrap_or(60)
                    .saturating_mul(1_000_000);
                let ticket = match rate_limits::admit(
                    &host::SharedData,
                    &plan.descriptors,
                    plan.token_estimate,
                    now,
                    window,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        self.refuse(&e);
                        return false;
                    }
                };
                let stream = admitted.request.stream && route != LlmRoute::Embeddings;
                let add_stream_usage = stream && !admitted.request.client_wants_stream_usage();
                let upstream_body = admitted.request.upstream_body_with(
                    &admitted.deployment.backend_model,
                    plan.implicit_max_tokens,
                    add_stream_usage,
                );
                self.call = Some(AdmittedCall {
                    ticket,
                    token_estimate: plan.token_estimate,
                    prompt_chars: admitted.request.prompt_chars(),
                    strip_usage_chunk: add_stream_usage,
                    upstream_status: None,
                    usage: None,
                });
                {
                    {
                        let d = admitted.deployment;
                        for name in CREDENTIAL_HEADERS {
                            host::set_request_header(name, None);
                        }
                        if let Some(key) = &d.api_key {
                            host::set_request_header(
                                "authorization",
                                Some(&format!("Bearer {key}")),
                            );
                        }
                        host::set_request_header(CLUSTER_HEADER, Some(&d.cluster));
                        host::set_request_header(":path", Some(&admitted.path));
                        host::set_request_header(":authority", Some(&d.authority));
                        host::set_request_header("accept-encoding", None);
                        host::replace_request_body(self.body_size, &upstream_body);
                        true
                    }
                }
            }
            State::Idle | State::Done => true,
        }
    }
}

impl Context for TollgateHttp {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(lookup) = self.lookup.take() else {
            return;
        };
        if lookup.token != token {
            self.lookup = Some(lookup);
            return;
        }
        let now = host::now_micros();
        let status = host::call_response_status();
        let parsed = if status == Some(200) {
            host::call_response_body(body_size)
                .and_then(|b| serde_json::from_slice::<KeyLookup>(&b).ok())
        } else {
            None
        };
        match parsed {
            Some(KeyLookup::Found { key }) => {
                key_cache::put(&lookup.hash, &key);
                self.caller = Some(Caller::VirtualKey {
                    record: key,
                    raw_last4: lookup.raw_last4,
                });
            }
            Some(KeyLookup::NotFound) => {
                key_cache::put_unknown(&lookup.hash, now, self.config.negative_cache_seconds);
                self.refuse(&ApiError::invalid_api_key());
                return;
            }
            None => {
                host::log(
                    LogLevel::Warn,
                    &format!("tollgate: key lookup failed (status {status:?})"),
                );
                self.refuse(&ApiError::service_unavailable(
                    "Tollgate could not verify this key: the key service did not answer.",
                ));
                return;
            }
        }
        if self.body_complete && self.decide() {
            host::resume_request();
        }
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_response_headers(
        &mut self,
        _num_headers: usize,
        _end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        use proxy_wasm::types::Action;
        let Some(call) = self.call.as_mut() else {
            return Action::Continue;
        };
        let status = host::response_header(":status").and_then(|s| s.parse::<u16>().ok());
        call.upstream_status = status;
        // Limit headers go on streamed responses too (LiteLLM omits them there).
        if status.is_some_and(|s| (200..300).contains(&s)) {
            for (name, value) in rate_limits::success_headers(&call.ticket.statuses) {
                host::set_response_header(&name, Some(&value));
            }
        }
        let kind = BodyKind::from_content_type(host::response_header("content-type").as_deref());
        let strip = call.strip_usage_chunk && kind == BodyKind::EventStream;
        if strip {
            host::set_response_header("content-length", None);
        }
        call.usage = Some(UsageReader::new(kind, strip, MAX_USAGE_BUFFER));
        Action::Continue
    }

    fn on_http_response_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        use proxy_wasm::types::Action;
        let Some(reader) = self.call.as_mut().and_then(|c| c.usage.as_mut()) else {
            return Action::Continue;
        };
        let chunk = host::response_body(body_size);
        let mut out = reader.feed(&chunk);
        if end_of_stream {
            out.extend_from_slice(&reader.finish());
        }
        if out != chunk {
            host::replace_response_body(body_size, &out);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(call) = self.call.take() else { return };
        let tokens = self.settled_tokens(&call);
        rate_limits::release(&host::SharedData, &call.ticket, tokens, host::now_micros());
    }

    fn on_http_request_headers(
        &mut self,
        _num_headers: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        use proxy_wasm::types::Action;
        // Only the filter may choose an upstream cluster.
        host::set_request_header(CLUSTER_HEADER, None);
        let path = host::request_header(":path").unwrap_or_default();
        self.state = if let Some(route) = routes::classify(&path) {
            State::Llm(route)
        } else if routes::is_model_list(&path)
            && host::request_header(":method").as_deref() == Some("GET")
        {
            State::ModelList
        } else {
            return Action::Continue;
        };
        // The body may be rewritten, so its length will change.
        host::set_request_header("content-length", None);
        self.body_complete = end_of_stream;
        match self.identify() {
            Err(e) => {
                self.refuse(&e);
                Action::Pause
            }
            Ok(false) => Action::Pause,
            Ok(true) => {
                if end_of_stream && self.decide() {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
        }
    }

    fn on_http_request_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        use proxy_wasm::types::Action;
        if matches!(self.state, State::Idle) {
            return Action::Continue;
        }
        if matches!(self.state, State::Done) {
            return Action::Pause;
        }
        self.body_size = body_size;
        if body_size > self.config.max_request_body_bytes {
            self.refuse(&ApiError::body_too_large(
                self.config.max_request_body_bytes,
            ));
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_complete = true;
        if self.caller.is_none() {
            // The key lookup is still under way; its callback decides.
            return Action::Pause;
        }
        if self.decide() {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Largest non-streamed response body read for usage, bytes.
const MAX_USAGE_BUFFER: usize = 4 * 1024 * 1024;

impl TollgateHttp {
    /// Tokens to settle tpm with: the real usage, else an estimate from what was seen; `None`
    /// when the upstream failed (the reservation is refunded).
    fn settled_tokens(&self, call: &AdmittedCall) -> Option<u64> {
        let status = call.upstream_status?;
        if !(200..300).contains(&status) {
            return None;
        }
        let reader = call.usage.as_ref()?;
        Some(match reader.usage() {
            Some(u) => rate_limits::counted_tokens(
                self.config.token_rate_limit_type,
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens,
            ),
            None => {
                let prompt = (call.prompt_chars / 4).max(1);
                let completion = reader.streamed_text_chars() / 4;
                if completion == 0 {
                    call.token_estimate
                } else {
                    prompt + completion
                }
            }
        })
    }
}

fn model_list_body(models: &[&str]) -> Vec<u8> {
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 1677610602, "owned_by": "openai"}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap_or_default()
}
