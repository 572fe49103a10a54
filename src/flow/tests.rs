//! Whole requests through the flow on a mock host: headers → body → lookups → response → log.

use super::mock::MockHost;
use super::*;
use crate::budgets;
use crate::key_format::hash_key;
use crate::plugin_config::{Deployment, Pricing};
use crate::records::{CustomerLookup, CustomerRecord, KeyLookup, KeyRecord, SpendEvent};

const KEY: &str = "sk-known-key-0001";
const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello there"}]}"#;
const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;

fn config() -> PluginConfig {
    super::mock::plugin_config(
        vec![Deployment {
            model_name: "gpt-4o".into(),
            id: "gpt-4o-id".into(),
            provider: "openai".into(),
            backend_model: "gpt-4o-2024".into(),
            cluster: "upstream_openai".into(),
            authority: "api.openai.test".into(),
            base_path: "/v1".into(),
            api_key: Some("provider-secret".into()),
            pricing: Pricing {
                input_cost_per_token: Some(0.000_001),
                output_cost_per_token: Some(0.000_002),
                ..Default::default()
            },
            ..Default::default()
        }],
        1000.0,
    )
}

/// A key with every check on: budgets (key, user, proxy) and limits (rpm, tpm, parallel).
fn full_key() -> KeyRecord {
    KeyRecord {
        token: hash_key(KEY),
        key_name: "sk-...0001".into(),
        user_id: Some("alice".into()),
        max_budget: Some(10.0),
        rpm_limit: Some(100),
        tpm_limit: Some(100_000),
        max_parallel_requests: Some(10),
        user_rpm_limit: Some(1000),
        user_budget: Some(crate::records::BudgetState {
            max_budget: Some(50.0),
            ..Default::default()
        }),
        proxy_budget: Some(crate::records::BudgetState {
            max_budget: Some(1000.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Harness {
    host: MockHost,
    shared: Rc<Shared>,
}

impl Harness {
    fn new(config: PluginConfig) -> Self {
        let (host, shared) = super::mock::configured(config, 1_700_000_000_000_000);
        crate::shared_store::ensure_lease(&host.store).unwrap();
        Harness {
            host,
            shared: Rc::new(shared),
        }
    }

    /// The key cached as a lookup would leave it.
    fn with_key(self, record: &KeyRecord) -> Self {
        key_cache::put(
            &self.host.store,
            &self.shared.decoded,
            &hash_key(KEY),
            record,
            0,
        );
        self
    }

    /// Headers then the whole body (two callbacks, as from Envoy); the steps of both.
    fn send(&self, flow: &mut Flow, body: &str, extra: &[(&str, &str)]) -> (Step, Step) {
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), "/v1/chat/completions".to_string()),
            (":authority".to_string(), "localhost".to_string()),
            ("authorization".to_string(), format!("Bearer {KEY}")),
            ("content-type".to_string(), "application/json".to_string()),
            ("content-length".to_string(), body.len().to_string()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        *self.host.request_headers.borrow_mut() = headers;
        *self.host.request_body.borrow_mut() = body.as_bytes().to_vec();
        *self.host.reply.borrow_mut() = None;
        let on_headers = flow.on_request_headers(&self.host, false);
        let on_body = flow.on_request_body(&self.host, body.len(), true);
        (on_headers, on_body)
    }

    fn flow(&self) -> Flow {
        Flow::new(Rc::clone(&self.shared))
    }

    /// The sum of one counter's increments so far.
    fn counted(&self, metric: crate::metrics::Metric) -> u64 {
        self.host
            .counted
            .borrow()
            .iter()
            .filter(|(m, _)| *m == metric)
            .map(|(_, n)| n)
            .sum()
    }

    /// The sidecar answers the latest dispatched call.
    fn answer(&self, flow: &mut Flow, status: u16, body: &str) -> Step {
        let token = u32::try_from(self.host.dispatched.borrow().len()).unwrap();
        *self.host.call_answer.borrow_mut() = Some((status, body.as_bytes().to_vec()));
        flow.on_call_response(&self.host, token, body.len())
    }

    /// A non-streamed JSON answer from the upstream, then the end of the call.
    fn respond_json(&self, flow: &mut Flow, status: u16, body: &str) -> (Step, Step) {
        *self.host.response_headers.borrow_mut() = vec![
            (":status".to_string(), status.to_string()),
            ("content-type".to_string(), "application/json".to_string()),
            ("content-length".to_string(), body.len().to_string()),
        ];
        *self.host.response_chunk.borrow_mut() = body.as_bytes().to_vec();
        let on_headers = flow.on_response_headers(&self.host, false);
        let on_body = flow.on_response_body(&self.host, body.len(), true);
        flow.on_log(&self.host);
        (on_headers, on_body)
    }

    /// The spend events queued, after the worker's buffer is flushed (as the root's tick does).
    fn events(&self) -> Vec<SpendEvent> {
        self.shared.flush_spend_events(&self.host);
        self.host
            .queue
            .borrow()
            .iter()
            .flat_map(|item| {
                let batch = crate::contract::spend_batch_body(std::slice::from_ref(item));
                let batch: serde_json::Value = serde_json::from_slice(&batch).unwrap();
                batch["events"].as_array().unwrap().clone()
            })
            .map(|e| serde_json::from_value(e).unwrap())
            .collect()
    }

    fn reply_status(&self) -> Option<u16> {
        self.host.reply.borrow().as_ref().map(|r| r.status)
    }
}

fn upstream_body(host: &MockHost) -> serde_json::Value {
    serde_json::from_slice(&host.request_body.borrow()).unwrap()
}

/// The event carries what the key's per-model limits had left at admission (the sidecar's
/// `litellm_remaining_api_key_*_for_model`), and nothing without such limits.
#[test]
fn event_carries_the_model_limits_left() {
    let mut key = full_key();
    key.model_rpm_limit.insert("gpt-4o".into(), 5);
    key.model_tpm_limit.insert("gpt-4o".into(), 10_000);
    for (record, want_requests) in [(key, Some(4)), (full_key(), None)] {
        let h = Harness::new(config()).with_key(&record);
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Continue));
        h.respond_json(&mut flow, 200, ANSWER);
        let event = &h.events()[0];
        assert_eq!(event.model_remaining_requests, want_requests);
        assert_eq!(
            event
                .model_remaining_tokens
                .is_some_and(|t| t > 0 && t < 10_000),
            want_requests.is_some(),
            "{event:?}"
        );
    }
}

#[test]
fn known_key_is_admitted_rewritten_charged_and_settled() {
    let h = Harness::new(config()).with_key(&full_key());
    let mut flow = h.flow();
    assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Continue));
    assert!(h.host.dispatched.borrow().is_empty());
    // Routed to the deployment, with the provider's key and model instead of the caller's.
    let header = |n: &str| h.host.request_header(n);
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer provider-secret")
    );
    assert_eq!(
        header("x-tollgate-cluster").as_deref(),
        Some("upstream_openai")
    );
    assert_eq!(header(":authority").as_deref(), Some("api.openai.test"));
    assert_eq!(upstream_body(&h.host)["model"], "gpt-4o-2024");
    assert_eq!(
        header("content-length"),
        Some(h.host.request_body.borrow().len().to_string())
    );

    // The JSON answer is held for its cost header, then the call settles.
    assert_eq!(
        h.respond_json(&mut flow, 200, ANSWER),
        (Step::Pause, Step::Continue)
    );
    // 10 prompt tokens at $1e-6 and 5 completion tokens at $2e-6.
    assert_eq!(
        h.host
            .response_header_value("x-litellm-response-cost")
            .as_deref(),
        Some("2e-05")
    );
    let events = h.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].spend_nanos, 20_000);
    assert_eq!(events[0].total_tokens, 15);
    assert_eq!(events[0].status, "success");
    assert_eq!(events[0].request_id, "chatcmpl-1");
    // The key's counter holds the spend, and no reservation is left.
    let key_scope = crate::admission::budget_scopes(
        &h.shared.config,
        &crate::admission::Caller::VirtualKey {
            record: Rc::new(full_key()),
            raw_last4: "0001".into(),
        },
        "gpt-4o",
        &h.shared.config.deployments[0].pricing,
    );
    let counter = budgets::read(&h.host.store, &key_scope[0]).unwrap();
    assert_eq!((counter.spend, counter.reserved), (20_000, 0));
}

#[test]
fn no_credential_header_reaches_the_provider() {
    let h = Harness::new(config()).with_key(&full_key());
    let mut flow = h.flow();
    // Every header a key is read from, with the key in `authorization` (read first of these).
    let extra: Vec<(&str, &str)> = crate::contract::CREDENTIAL_HEADERS
        .iter()
        .filter(|n| **n != "authorization" && **n != "x-litellm-api-key")
        .map(|n| (*n, "sk-other"))
        .collect();
    assert_eq!(h.send(&mut flow, CHAT, &extra).1, Step::Continue);
    for name in crate::contract::CREDENTIAL_HEADERS {
        let sent = h.host.request_header(name);
        if name == "authorization" {
            assert_eq!(sent.as_deref(), Some("Bearer provider-secret"));
        } else {
            assert_eq!(sent, None, "{name}");
        }
    }
}

#[test]
fn unknown_key_is_looked_up_once_then_cached() {
    let h = Harness::new(config());
    let mut flow = h.flow();
    // The lookup is under way when the body completes: the answer decides and resumes.
    assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
    assert_eq!(
        h.host.dispatched.borrow().as_slice(),
        [format!("/tollgate/internal/v1/keys/{}", hash_key(KEY))]
    );
    let found = KeyLookup::Found {
        key: Box::new(full_key()),
        seq: 3,
    };
    let step = h.answer(&mut flow, 200, &serde_json::to_string(&found).unwrap());
    assert_eq!(step, Step::Continue);
    assert_eq!(
        h.host.request_header("authorization").as_deref(),
        Some("Bearer provider-secret")
    );
    h.respond_json(&mut flow, 200, ANSWER);
    // The next request finds the record in shared data.
    let mut again = h.flow();
    assert_eq!(h.send(&mut again, CHAT, &[]), (Step::Pause, Step::Continue));
    assert_eq!(h.host.dispatched.borrow().len(), 1);

    // A key the sidecar does not know: 401, remembered.
    let h = Harness::new(config());
    let mut flow = h.flow();
    h.send(&mut flow, CHAT, &[]);
    assert_eq!(
        h.answer(&mut flow, 200, r#"{"status":"not_found"}"#),
        Step::Pause
    );
    assert_eq!(h.reply_status(), Some(401));
    let mut again = h.flow();
    assert_eq!(h.send(&mut again, CHAT, &[]), (Step::Pause, Step::Pause));
    assert_eq!(h.reply_status(), Some(401));
    assert_eq!(h.host.dispatched.borrow().len(), 1);

    // The sidecar down: asked twice more (another replica may answer), then 503, and the
    // request is not forwarded.
    let h = Harness::new(config());
    let mut flow = h.flow();
    h.send(&mut flow, CHAT, &[]);
    for attempt in 1..3 {
        assert_eq!(h.answer(&mut flow, 503, ""), Step::Pause);
        assert_eq!(h.reply_status(), None, "asked again first");
        assert_eq!(h.host.dispatched.borrow().len(), attempt + 1);
    }
    assert_eq!(h.answer(&mut flow, 500, ""), Step::Pause);
    assert_eq!(h.reply_status(), Some(503));
    assert_eq!(h.host.dispatched.borrow().len(), 3, "three lookups at most");

    // One replica dead, the next one answers: the call goes on.
    let h = Harness::new(config());
    let mut flow = h.flow();
    h.send(&mut flow, CHAT, &[]);
    assert_eq!(h.answer(&mut flow, 503, ""), Step::Pause);
    let step = h.answer(&mut flow, 200, &serde_json::to_string(&found).unwrap());
    assert_eq!(step, Step::Continue);
    assert_eq!(h.reply_status(), None);
}

/// `:path` and `:authority` are written only when the deployment's differ from the client's
/// (each write is a host call); a differing path is still rewritten.
#[test]
fn path_and_authority_written_only_when_they_change() {
    let h = Harness::new(config()).with_key(&full_key());
    let send = |path: &str, authority: &str| {
        h.host.clear_calls();
        *h.host.request_headers.borrow_mut() = vec![
            (":method".into(), "POST".into()),
            (":path".into(), path.into()),
            (":authority".into(), authority.into()),
            ("authorization".into(), format!("Bearer {KEY}")),
            ("content-length".into(), CHAT.len().to_string()),
        ];
        *h.host.request_body.borrow_mut() = CHAT.as_bytes().to_vec();
        let mut flow = h.flow();
        assert_eq!(flow.on_request_headers(&h.host, false), Step::Pause);
        assert_eq!(
            flow.on_request_body(&h.host, CHAT.len(), true),
            Step::Continue
        );
        h.host.count_of("set_request_header")
    };
    // The deployment's own path and authority: neither is written.
    let unchanged = send("/v1/chat/completions", "api.openai.test");
    assert_eq!(
        h.host.request_header(":path").as_deref(),
        Some("/v1/chat/completions")
    );
    // Another spelling of the route from another host: both are written.
    assert_eq!(send("/openai/chat/completions", "localhost"), unchanged + 2);
    assert_eq!(
        h.host.request_header(":path").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_eq!(
        h.host.request_header(":authority").as_deref(),
        Some("api.openai.test")
    );
}

#[test]
fn key_lookup_answered_before_the_body_waits_for_it() {
    let h = Harness::new(config());
    let mut flow = h.flow();
    *h.host.request_headers.borrow_mut() = vec![
        (":method".into(), "POST".into()),
        (":path".into(), "/v1/chat/completions".into()),
        ("authorization".into(), format!("Bearer {KEY}")),
    ];
    *h.host.request_body.borrow_mut() = CHAT.as_bytes().to_vec();
    assert_eq!(flow.on_request_headers(&h.host, false), Step::Pause);
    let found = KeyLookup::Found {
        key: Box::new(full_key()),
        seq: 0,
    };
    assert_eq!(
        h.answer(&mut flow, 200, &serde_json::to_string(&found).unwrap()),
        Step::Pause
    );
    assert_eq!(flow.on_request_body(&h.host, 10, false), Step::Pause);
    assert_eq!(
        flow.on_request_body(&h.host, CHAT.len(), true),
        Step::Continue
    );
}

#[test]
fn customer_lookup_completes_the_prepared_admission() {
    let h = Harness::new(config()).with_key(&full_key());
    let body = r#"{"model":"gpt-4o","user":"cust-1","messages":[{"role":"user","content":"hi"}]}"#;
    let mut flow = h.flow();
    assert_eq!(h.send(&mut flow, body, &[]), (Step::Pause, Step::Pause));
    assert_eq!(
        h.host.dispatched.borrow().as_slice(),
        ["/tollgate/internal/v1/customers/cust-1".to_string()]
    );
    let found = CustomerLookup::Found {
        customer: Box::new(CustomerRecord {
            user_id: "cust-1".into(),
            ..Default::default()
        }),
    };
    h.host.clear_calls();
    let step = h.answer(&mut flow, 200, &serde_json::to_string(&found).unwrap());
    assert_eq!(step, Step::Continue);
    // Admission went on from where it stopped: the body is not read again, the key not
    // looked up again, and the round-robin counter moved once.
    assert_eq!(h.host.count_of("request_body"), 0);
    assert_eq!(h.host.count_of("request_headers"), 0);
    assert_eq!(h.shared.pick.get(), 1);
    assert_eq!(
        h.host.request_header("authorization").as_deref(),
        Some("Bearer provider-secret")
    );
    h.respond_json(&mut flow, 200, ANSWER);
    assert_eq!(h.events()[0].end_user.as_deref(), Some("cust-1"));

    // A blocked customer is refused after the lookup; the answer is cached for the next call.
    let h = Harness::new(config()).with_key(&full_key());
    let mut flow = h.flow();
    h.send(&mut flow, body, &[]);
    let blocked = CustomerLookup::Found {
        customer: Box::new(CustomerRecord {
            user_id: "cust-1".into(),
            blocked: true,
            ..Default::default()
        }),
    };
    let step = h.answer(&mut flow, 200, &serde_json::to_string(&blocked).unwrap());
    assert_eq!((step, h.reply_status()), (Step::Pause, Some(401)));
    let mut again = h.flow();
    assert_eq!(h.send(&mut again, body, &[]), (Step::Pause, Step::Pause));
    assert_eq!(h.reply_status(), Some(401));
    assert_eq!(h.host.dispatched.borrow().len(), 1);
}

/// `user_header_name` / `user_header_mappings`: the configured header names the customer
/// after LiteLLM's standard ones and before the body's `user`.
#[test]
fn configured_customer_header_names_the_customer() {
    let mut cfg = config();
    cfg.customer_id_headers = vec!["x-my-user".into()];
    let body =
        r#"{"model":"gpt-4o","user":"from-body","messages":[{"role":"user","content":"hi"}]}"#;
    for (headers, customer) in [
        (&[("x-my-user", "from-header")][..], "from-header"),
        (
            &[
                ("x-my-user", "from-header"),
                ("x-litellm-customer-id", "standard"),
            ],
            "standard",
        ),
        (&[("x-my-user", " ")], "from-body"),
        (&[], "from-body"),
    ] {
        let h = Harness::new(cfg.clone()).with_key(&full_key());
        let mut flow = h.flow();
        h.send(&mut flow, body, headers);
        assert_eq!(
            h.host.dispatched.borrow().as_slice(),
            [format!("/tollgate/internal/v1/customers/{customer}")],
            "{headers:?}"
        );
    }
}

#[test]
fn budget_refusal_answers_locally_and_holds_nothing() {
    let mut key = full_key();
    key.max_budget = Some(0.001);
    key.spend_nanos = 1_000_000;
    let h = Harness::new(config()).with_key(&key);
    let mut flow = h.flow();
    assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
    let reply = h.host.reply.borrow().clone().unwrap();
    assert_eq!(reply.status, h.shared.config.budgets.exceeded_status_code);
    assert!(String::from_utf8_lossy(&reply.body).contains("budget_exceeded"));
    // Not forwarded: the caller's key was not swapped, nothing settles or is queued.
    assert_eq!(
        h.host.request_header("authorization"),
        Some(format!("Bearer {KEY}"))
    );
    flow.on_log(&h.host);
    assert!(h.events().is_empty());
}

#[test]
fn rate_limit_refusal_gives_the_budget_reservation_back() {
    let mut key = full_key();
    key.rpm_limit = Some(1);
    let h = Harness::new(config()).with_key(&key);
    let mut first = h.flow();
    assert_eq!(h.send(&mut first, CHAT, &[]).1, Step::Continue);
    let mut second = h.flow();
    assert_eq!(h.send(&mut second, CHAT, &[]), (Step::Pause, Step::Pause));
    assert_eq!(h.reply_status(), Some(429));
    let reply = h.host.reply.borrow().clone().unwrap();
    assert!(reply.headers.iter().any(|(k, _)| k == "retry-after"));
    // Only the first call's reservation is held on the key's budget.
    let caller = crate::admission::Caller::VirtualKey {
        record: Rc::new(key.clone()),
        raw_last4: "0001".into(),
    };
    let scopes = crate::admission::budget_scopes(
        &h.shared.config,
        &caller,
        "gpt-4o",
        &h.shared.config.deployments[0].pricing,
    );
    let reserved_one = budgets::read(&h.host.store, &scopes[0]).unwrap().reserved;
    h.respond_json(&mut first, 200, ANSWER);
    let after = budgets::read(&h.host.store, &scopes[0]).unwrap();
    assert!(reserved_one > 0);
    assert_eq!((after.spend, after.reserved), (20_000, 0));
}

#[test]
fn streamed_response_passes_through_with_the_usage_chunk_hidden() {
    let h = Harness::new(config()).with_key(&full_key());
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut flow = h.flow();
    assert_eq!(h.send(&mut flow, body, &[]).1, Step::Continue);
    assert_eq!(
        upstream_body(&h.host)["stream_options"]["include_usage"],
        true
    );
    *h.host.response_headers.borrow_mut() = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    assert_eq!(flow.on_response_headers(&h.host, false), Step::Continue);
    assert!(h
        .host
        .response_header_value("x-ratelimit-api_key-remaining-requests")
        .is_some());
    let content =
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello\"}}]}\n\n";
    let usage = "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n\ndata: [DONE]\n\n";
    *h.host.response_chunk.borrow_mut() = content.as_bytes().to_vec();
    assert_eq!(
        flow.on_response_body(&h.host, content.len(), false),
        Step::Continue
    );
    assert_eq!(
        h.host.response_chunk.borrow().as_slice(),
        content.as_bytes()
    );
    *h.host.response_chunk.borrow_mut() = usage.as_bytes().to_vec();
    assert_eq!(
        flow.on_response_body(&h.host, usage.len(), true),
        Step::Continue
    );
    let out = String::from_utf8(h.host.response_chunk.borrow().clone()).unwrap();
    assert!(!out.contains("usage"), "{out}");
    assert!(out.contains("[DONE]"), "{out}");
    flow.on_log(&h.host);
    let events = h.events();
    assert_eq!(
        (events[0].prompt_tokens, events[0].completion_tokens),
        (8, 2)
    );
    assert_eq!(events[0].spend_nanos, 12_000);
}

/// Tollgate's headers replace every value of a name the provider already sent (OpenAI sends
/// its own `x-ratelimit-*`), leave the provider's other headers alone, and a stream whose usage
/// chunk is hidden loses its `content-length`.
#[test]
fn success_headers_replace_the_providers_and_keep_the_rest() {
    let h = Harness::new(config()).with_key(&full_key());
    let ours = "x-ratelimit-api_key-remaining-requests";
    let provider_headers = |content_type: &str| -> Vec<(String, String)> {
        vec![
            (":status".into(), "200".into()),
            ("content-type".into(), content_type.into()),
            (ours.into(), "provider-1".into()),
            ("x-request-id".into(), "r1".into()),
            (ours.into(), "provider-2".into()),
        ]
    };
    let values = |name: &str| -> Vec<String> {
        let headers = h.host.response_headers.borrow();
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };

    let mut held = h.flow();
    h.send(&mut held, CHAT, &[]);
    let mut headers = provider_headers("application/json");
    headers.push(("content-length".into(), ANSWER.len().to_string()));
    *h.host.response_headers.borrow_mut() = headers;
    *h.host.response_chunk.borrow_mut() = ANSWER.as_bytes().to_vec();
    assert_eq!(held.on_response_headers(&h.host, false), Step::Pause);
    assert_eq!(
        held.on_response_body(&h.host, ANSWER.len(), true),
        Step::Continue
    );
    held.on_log(&h.host);
    let remaining = values(ours);
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert!(remaining[0].parse::<u64>().is_ok(), "{remaining:?}");
    assert_eq!(values("x-request-id"), ["r1"]);
    assert_eq!(values("content-length"), [ANSWER.len().to_string()]);
    assert_eq!(values("x-litellm-response-cost"), ["2e-05"]);

    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut streamed = h.flow();
    h.send(&mut streamed, body, &[]);
    let mut headers = provider_headers("text/event-stream");
    headers.push(("content-length".into(), "1000".into()));
    *h.host.response_headers.borrow_mut() = headers;
    assert_eq!(streamed.on_response_headers(&h.host, false), Step::Continue);
    assert!(values("content-length").is_empty());
    let remaining = values(ours);
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert!(remaining[0].parse::<u64>().is_ok(), "{remaining:?}");
    assert_eq!(values("x-request-id"), ["r1"]);
    assert_eq!(values("x-litellm-key-max-budget").len(), 1);
}

#[test]
fn requests_not_ours_pass_untouched() {
    let h = Harness::new(config());
    let mut flow = h.flow();
    *h.host.request_headers.borrow_mut() = vec![
        (":method".into(), "POST".into()),
        (":path".into(), "/key/generate".into()),
    ];
    assert_eq!(flow.on_request_headers(&h.host, false), Step::Continue);
    assert_eq!(flow.on_request_body(&h.host, 10, true), Step::Continue);
    assert_eq!(h.host.call_count(), 1);
}

/// Host calls per request kind, so a change that adds one is seen in review. Shared data
/// `get`/`set` are one host call each.
mod host_calls {
    use super::*;
    use crate::metrics::{Lookup, Metric, Outcome, StatusClass};

    fn known_key_request(body: &str, h: &Harness) -> Flow {
        // A first request warms the worker's decoded record (as on a running filter).
        let mut warm = h.flow();
        h.send(&mut warm, body, &[]);
        h.respond_json(&mut warm, 200, ANSWER);
        h.host.clear_calls();
        let mut flow = h.flow();
        h.send(&mut flow, body, &[]);
        flow
    }

    fn counts(h: &Harness) -> String {
        let mut names: Vec<&str> = h.host.calls.borrow().clone();
        names.sort_unstable();
        names.dedup();
        names
            .iter()
            .map(|n| format!("{n}={}", h.host.count_of(n)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn known_key_non_streamed_every_check_on() {
        let h = Harness::new(config()).with_key(&full_key());
        let mut flow = known_key_request(CHAT, &h);
        assert_eq!(
            counts(&h),
            "count=1 now=2 record=1 replace_request_body=1 request_body=1 request_headers=1 \
             set_request_header=4 shared_get=6 shared_set=5"
        );
        h.host.clear_calls();
        h.respond_json(&mut flow, 200, ANSWER);
        // The outcome, input tokens, output tokens, spend: four increments. The spend event
        // waits in the worker's buffer (no enqueue: `spend_events_share_one_enqueue`).
        assert_eq!(
            counts(&h),
            "add_response_header=12 count=4 now=1 response_body=1 response_headers=1 \
             shared_get=4 shared_set=4"
        );
        let counted = h.host.counted.borrow();
        assert_eq!(counted[0], (Metric::KeyLookups(Lookup::Cached), 1));
        assert_eq!(
            counted[1],
            (Metric::Requests(Outcome::Admitted, StatusClass::Success), 1)
        );
        assert_eq!(
            counted[2..4].iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            [Metric::InputTokens, Metric::OutputTokens]
        );
        assert_eq!(counted[4].0, Metric::SpendNanos);
        assert!(counted.iter().all(|(_, n)| *n > 0), "{counted:?}");
    }

    /// Settled calls' spend events wait in the worker: one enqueue (and one count) per
    /// `SPEND_EVENTS_PER_ITEM` calls, the rest on the root's next tick; none is lost or doubled.
    #[test]
    fn spend_events_share_one_enqueue() {
        let h = Harness::new(config()).with_key(&full_key());
        let calls = super::super::SPEND_EVENTS_PER_ITEM + 3;
        for _ in 0..calls {
            let mut flow = h.flow();
            h.send(&mut flow, CHAT, &[]);
            h.respond_json(&mut flow, 200, ANSWER);
        }
        assert_eq!(h.host.count_of("enqueue"), 1);
        assert_eq!(
            h.counted(Metric::SpendEventsQueued),
            super::super::SPEND_EVENTS_PER_ITEM
        );
        // The tick's flush: the last three as one more item.
        let events = h.events();
        assert_eq!(h.host.count_of("enqueue"), 2);
        assert_eq!(h.counted(Metric::SpendEventsQueued), calls);
        let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len() as u64, calls);
        // Nothing buffered: a flush enqueues nothing.
        h.shared.flush_spend_events(&h.host);
        assert_eq!(h.host.count_of("enqueue"), 2);

        // The root is done (a reload): calls still in flight queue their events at once.
        let mut in_flight = h.flow();
        h.send(&mut in_flight, CHAT, &[]);
        h.shared.stop_buffering_spend_events(&h.host);
        assert_eq!(h.host.count_of("enqueue"), 2);
        h.respond_json(&mut in_flight, 200, ANSWER);
        assert_eq!(h.host.count_of("enqueue"), 3);
        assert_eq!(h.counted(Metric::SpendEventsQueued), calls + 1);
    }

    /// The bench's request (`bench/bench.py`, profiled by `examples/request_profile.rs`): key
    /// budget + proxy-wide budget, rpm + tpm + parallel on the key, an end user without a
    /// record (cached), the body unchanged by the rewrite. BENCHMARKS.md "Where the time goes"
    /// prices these counts.
    #[test]
    fn bench_request() {
        let mut config = config();
        config.deployments[0].backend_model = "gpt-4o".into();
        let h = Harness::new(config).with_key(&KeyRecord {
            user_id: None,
            user_rpm_limit: None,
            user_budget: None,
            budget_duration: Some("30d".into()),
            ..full_key()
        });
        let lookup = CustomerLookup::NotFound {
            default_budget: None,
        };
        key_cache::put_customer(&h.host, &h.shared.decoded, "bench-customer", &lookup);
        let body = r#"{"model":"gpt-4o","user":"bench-customer","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}"#;
        let mut flow = known_key_request(body, &h);
        assert_eq!(
            counts(&h),
            "count=1 now=2 record=1 request_body=1 request_headers=1 set_request_header=3 \
             shared_get=5 shared_set=3"
        );
        h.host.clear_calls();
        h.respond_json(&mut flow, 200, ANSWER);
        assert_eq!(
            counts(&h),
            "add_response_header=10 count=4 now=1 response_body=1 response_headers=1 \
             shared_get=3 shared_set=3"
        );
    }

    #[test]
    fn upstream_error() {
        let h = Harness::new(config()).with_key(&full_key());
        let mut flow = known_key_request(CHAT, &h);
        h.host.clear_calls();
        h.host.counted.borrow_mut().clear();
        h.respond_json(&mut flow, 500, r#"{"error":{"message":"down"}}"#);
        // No usage: the outcome is the one increment.
        assert_eq!(h.host.count_of("count"), 1);
        assert_eq!(
            *h.host.counted.borrow(),
            [(
                Metric::Requests(Outcome::Admitted, StatusClass::ServerError),
                1
            )]
        );
    }

    #[test]
    fn known_key_streamed() {
        let h = Harness::new(config()).with_key(&full_key());
        let body =
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let mut flow = known_key_request(body, &h);
        assert_eq!(
            counts(&h),
            "count=1 now=2 record=1 replace_request_body=1 request_body=1 request_headers=1 \
             set_request_header=4 shared_get=6 shared_set=5"
        );
        h.host.clear_calls();
        *h.host.response_headers.borrow_mut() = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "text/event-stream".into()),
        ];
        flow.on_response_headers(&h.host, false);
        let chunks = [
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":2,\"total_tokens\":10}}\n\ndata: [DONE]\n\n",
        ];
        for (i, chunk) in chunks.iter().enumerate() {
            *h.host.response_chunk.borrow_mut() = chunk.as_bytes().to_vec();
            flow.on_response_body(&h.host, chunk.len(), i == 1);
        }
        flow.on_log(&h.host);
        assert_eq!(
            counts(&h),
            "add_response_header=11 count=4 now=1 replace_response_body=1 response_body=2 \
             response_headers=1 shared_get=4 shared_set=4"
        );
    }

    #[test]
    fn refused() {
        let mut key = full_key();
        key.max_budget = Some(0.001);
        key.spend_nanos = 1_000_000;
        let h = Harness::new(config()).with_key(&key);
        known_key_request(CHAT, &h);
        assert_eq!(
            counts(&h),
            "count=2 now=2 record=1 request_body=1 request_headers=1 send_response=1 shared_get=5 shared_set=2",
            "budget"
        );
        assert_eq!(
            h.host.counted.borrow().last(),
            Some(&(Metric::Requests(Outcome::Budget, StatusClass::None), 1))
        );

        // The warm-up request takes the one request of the window.
        let mut key = full_key();
        key.rpm_limit = Some(1);
        let h = Harness::new(config()).with_key(&key);
        known_key_request(CHAT, &h);
        assert_eq!(
            counts(&h),
            "count=2 now=2 record=1 request_body=1 request_headers=1 send_response=1 shared_get=8 shared_set=6",
            "rate limit"
        );
        assert_eq!(
            h.host.counted.borrow().last(),
            Some(&(Metric::Requests(Outcome::RateLimit, StatusClass::None), 1))
        );

        // No credential: refused on the headers alone.
        let h = Harness::new(config());
        let mut flow = h.flow();
        *h.host.request_headers.borrow_mut() = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/v1/chat/completions".into()),
        ];
        assert_eq!(flow.on_request_headers(&h.host, false), Step::Pause);
        assert_eq!(flow.on_request_body(&h.host, 10, true), Step::Pause);
        assert_eq!(h.reply_status(), Some(401));
        assert_eq!(
            counts(&h),
            "count=1 now=1 record=1 request_headers=1 send_response=1",
            "no key"
        );
        assert_eq!(
            *h.host.counted.borrow(),
            [(Metric::Requests(Outcome::Auth, StatusClass::None), 1)]
        );
    }

    /// `tollgate_admission_time_us`: from the request headers to the decision, on the clock
    /// readings admission takes anyway; the sidecar's lookups count, a cached key waits 0.
    #[test]
    fn admission_time_spans_the_sidecar_lookups() {
        let h = Harness::new(config());
        let found = KeyLookup::Found {
            key: Box::new(full_key()),
            seq: 1,
        };
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        h.host.now.set(h.host.now.get() + 1_500);
        h.answer(&mut flow, 200, &serde_json::to_string(&found).unwrap());
        let mut cached = h.flow();
        h.send(&mut cached, CHAT, &[]);
        // An unknown key, answered by the sidecar after 700 µs.
        let unknown = Harness::new(config());
        let mut flow = unknown.flow();
        unknown.send(&mut flow, CHAT, &[]);
        unknown.host.now.set(unknown.host.now.get() + 700);
        unknown.answer(&mut flow, 200, r#"{"status":"not_found"}"#);
        // No answer after the retries, 3 × 100 µs.
        let failed = Harness::new(config());
        let mut flow = failed.flow();
        failed.send(&mut flow, CHAT, &[]);
        while failed.reply_status().is_none() {
            failed.host.now.set(failed.host.now.get() + 100);
            failed.answer(&mut flow, 503, "");
        }
        let admitted = Metric::AdmissionTime(Outcome::Admitted);
        assert_eq!(
            *h.host.recorded.borrow(),
            [(admitted, 1_500), (admitted, 0)]
        );
        assert_eq!(
            *unknown.host.recorded.borrow(),
            [(Metric::AdmissionTime(Outcome::Auth), 700)]
        );
        assert_eq!(
            *failed.host.recorded.borrow(),
            [(Metric::AdmissionTime(Outcome::Other), 300)]
        );
    }

    /// Where each key record came from, and one queued event per finished call.
    #[test]
    fn key_lookups_and_queued_events() {
        let lookups = |h: &Harness| {
            [Lookup::Cached, Lookup::Sidecar, Lookup::Failed]
                .map(|l| h.counted(Metric::KeyLookups(l)))
        };
        // A new key: one sidecar lookup, then the record is in shared data.
        let h = Harness::new(config());
        let found = KeyLookup::Found {
            key: Box::new(full_key()),
            seq: 1,
        };
        for i in 0..3 {
            let mut flow = h.flow();
            h.send(&mut flow, CHAT, &[]);
            if i == 0 {
                h.answer(&mut flow, 200, &serde_json::to_string(&found).unwrap());
            }
            h.respond_json(&mut flow, 200, ANSWER);
        }
        assert_eq!(lookups(&h), [2, 1, 0]);
        // Buffered in the worker until its tick (or a full item): one queue item for three.
        assert_eq!(h.counted(Metric::SpendEventsQueued), 0);
        assert_eq!(h.events().len(), 3);
        assert_eq!(h.counted(Metric::SpendEventsQueued), 3);
        assert_eq!(h.host.queue.borrow().len(), 1);

        // An unknown key: the sidecar says so once, then the negative cache answers.
        let h = Harness::new(config());
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        h.answer(&mut flow, 200, r#"{"status":"not_found"}"#);
        let mut again = h.flow();
        h.send(&mut again, CHAT, &[]);
        assert_eq!(lookups(&h), [1, 1, 0]);
        assert_eq!(h.counted(Metric::SpendEventsQueued), 0);

        // No answer after the retries, or no dispatch at all: one failure each.
        let h = Harness::new(config());
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        while h.reply_status().is_none() {
            h.answer(&mut flow, 503, "");
        }
        assert_eq!(lookups(&h), [0, 0, 1]);
        h.host.dispatch_fails.set(true);
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        assert_eq!(h.reply_status(), Some(503));
        assert_eq!(lookups(&h), [0, 0, 2]);
    }

    #[test]
    fn customer_lookup_answer() {
        let h = Harness::new(config()).with_key(&full_key());
        let body =
            r#"{"model":"gpt-4o","user":"cust-1","messages":[{"role":"user","content":"hi"}]}"#;
        known_key_request(CHAT, &h);
        let mut flow = h.flow();
        h.send(&mut flow, body, &[]);
        h.host.clear_calls();
        let found = CustomerLookup::NotFound {
            default_budget: None,
        };
        h.answer(&mut flow, 200, &serde_json::to_string(&found).unwrap());
        // Admission goes on from the prepared half: before the flow it started again (the body
        // read and parsed again, the customer read back from shared data: two more calls).
        assert_eq!(
            counts(&h),
            "call_response_body=1 call_response_status=1 now=1 record=1 replace_request_body=1 \
             set_request_header=4 shared_get=5 shared_set=6"
        );
    }
}

/// Fleet mode: budgets admitted against this Envoy's slices (FLEET.md §4.4–4.7).
mod fleet {
    use super::*;
    use crate::entry::Fields;
    use crate::flow::mock::LEASE_QUEUE_ID;
    use crate::metrics::{Borrow, Metric};
    use crate::plugin_config::{FleetSettings, NoLeasePolicy};
    use crate::records::{LeaseAnswer, LeaseGrant, LeaseItem, LeaseRequest};

    const ENVOY: &str = "0123456789abcdef0123456789abcdef";
    const USD: i64 = 1_000_000_000;

    fn fleet_harness(policy: NoLeasePolicy) -> Harness {
        let mut config = config();
        config.fleet = Some(FleetSettings {
            lease_ttl_ms: 10_000,
            on_no_lease: policy,
            ..Default::default()
        });
        let (host, mut shared) = super::mock::configured(config, 1_700_000_000_000_000);
        shared.lease_queue = Some(LEASE_QUEUE_ID);
        shared.envoy_id = Some(ENVOY.into());
        crate::shared_store::ensure_lease(&host.store).unwrap();
        Harness {
            host,
            shared: Rc::new(shared),
        }
        .with_key(&full_key())
    }

    fn key_scope_name() -> String {
        format!("key:{}", hash_key(KEY))
    }

    /// An admin answer passing through with its invalidation list makes every root context
    /// report its budget slices at its next tick (FLEET.md §4.10): the shared count moves.
    #[test]
    fn an_admin_answer_passing_through_asks_for_the_slices_at_the_next_tick() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let count = |h: &Harness| {
            h.host
                .store
                .get(crate::contract::LEASE_RENEW_ALL_KEY)
                .map(|(v, _)| String::from_utf8(v).unwrap())
        };
        assert_eq!(count(&h), None);
        let mut flow = h.flow();
        *h.host.request_headers.borrow_mut() = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/key/update".into()),
        ];
        assert_eq!(flow.on_request_headers(&h.host, false), Step::Continue);
        assert_eq!(flow.on_request_body(&h.host, 10, true), Step::Continue);
        *h.host.response_headers.borrow_mut() = vec![
            (":status".into(), "200".into()),
            (crate::contract::INVALIDATE_HEADER.into(), hash_key(KEY)),
        ];
        assert_eq!(flow.on_response_headers(&h.host, false), Step::Continue);
        assert_eq!(count(&h).as_deref(), Some("1"));
    }

    /// The three budgets of `full_key`, in scope order.
    fn scope_names() -> Vec<String> {
        vec![
            key_scope_name(),
            "proxy:litellm-proxy-budget".to_string(),
            "user:alice".to_string(),
        ]
    }

    fn posted(h: &Harness) -> Vec<LeaseRequest> {
        h.host
            .posted
            .borrow()
            .iter()
            .map(|(path, body)| {
                assert_eq!(path, crate::contract::LEASES_PATH);
                serde_json::from_slice(body).unwrap()
            })
            .collect()
    }

    /// The rate limits of `full_key` (rpm, tpm and slots of the key, the user's rpm), leased
    /// in fleet mode, in scope order.
    fn rate_scope_names() -> Vec<String> {
        let token = hash_key(KEY);
        vec![
            format!("parallel:api_key:{token}"),
            format!("rpm:api_key:{token}"),
            "rpm:user:alice".to_string(),
            format!("tpm:api_key:{token}"),
        ]
    }

    /// What the tests' answers lend of every rate limit: plenty.
    const RATE_GRANT: i64 = 1_000_000;

    /// Grants of `grant` on every budget, and of [`RATE_GRANT`] on every rate limit.
    fn answer_body(grant: i64, period: i64, spend: i64) -> String {
        let budgets = scope_names().into_iter().map(|scope| LeaseGrant {
            scope,
            period,
            grant,
            ttl_ms: 10_000,
            spend,
            max_nanos: None,
        });
        let rates = rate_scope_names().into_iter().map(|scope| LeaseGrant {
            scope,
            period: 0,
            grant: RATE_GRANT,
            ttl_ms: 10_000,
            spend: 0,
            max_nanos: None,
        });
        let items = budgets.chain(rates).collect();
        serde_json::to_string(&LeaseAnswer { items }).unwrap()
    }

    /// The sidecar answers the call with this token.
    fn answer_token(h: &Harness, flow: &mut Flow, token: u32, status: u16, body: &str) -> Step {
        *h.host.call_answer.borrow_mut() = Some((status, body.as_bytes().to_vec()));
        flow.on_call_response(&h.host, token, body.len())
    }

    fn key_entry(h: &Harness) -> budgets::Counter {
        let key = format!("{}{}", crate::contract::BUDGET_PREFIX, key_scope_name());
        budgets::Counter::decode(&h.host.store.get(&key).unwrap().0)
    }

    /// A cold Envoy: one borrow for every limited budget, then admitted.
    fn warm(h: &Harness, grant: i64) {
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
        assert_eq!(
            h.answer(&mut flow, 200, &answer_body(grant, 0, 0)),
            Step::Continue
        );
        h.respond_json(&mut flow, 200, ANSWER);
    }

    /// A used-up rpm slice borrows for that limit alone, after giving back the budgets'
    /// reservations; when nothing more is lent, LiteLLM's 429.
    #[test]
    fn a_used_up_rate_slice_borrows_then_is_refused_with_a_429() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let rpm_scope = format!("rpm:api_key:{}", hash_key(KEY));
        let mut answer: LeaseAnswer = serde_json::from_str(&answer_body(USD, 0, 0)).unwrap();
        for g in answer.items.iter_mut().filter(|g| g.scope == rpm_scope) {
            g.grant = 1;
        }
        let answer = serde_json::to_string(&answer).unwrap();
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        assert_eq!(h.answer(&mut flow, 200, &answer), Step::Continue);
        h.respond_json(&mut flow, 200, ANSWER);
        let spent = key_entry(&h).spend;
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
        let requests = posted(&h);
        let scopes: Vec<&str> = requests[1].items.iter().map(|i| i.scope.as_str()).collect();
        assert_eq!(scopes, [rpm_scope.as_str()]);
        assert_eq!(
            (requests[1].items[0].used, requests[1].items[0].held),
            (1, 1)
        );
        assert_eq!(
            (key_entry(&h).spend, key_entry(&h).reserved),
            (spent, 0),
            "the budget's reservation is given back while borrowing"
        );
        let none = LeaseAnswer {
            items: vec![LeaseGrant {
                scope: rpm_scope.clone(),
                period: 0,
                grant: 1,
                ttl_ms: 10_000,
                spend: 100,
                max_nanos: Some(100),
            }],
        };
        h.answer(&mut flow, 200, &serde_json::to_string(&none).unwrap());
        let reply = h.host.reply.borrow().clone().unwrap();
        assert_eq!(reply.status, 429);
        assert!(
            String::from_utf8_lossy(&reply.body).contains("Limit type: requests"),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(key_entry(&h).reserved, 0);
    }

    /// A slice that runs out while the request waits for another's borrow gets a second round
    /// (it was not asked for), not a 503.
    #[test]
    fn a_slice_used_up_during_a_borrow_is_borrowed_in_another_round() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        warm(&h, USD);
        let set = |key: &str, f: &dyn Fn(&[u8]) -> Vec<u8>| {
            let (bytes, _) = h.host.store.get(key).unwrap();
            h.host.store.set(key, &f(&bytes), None).unwrap();
        };
        // The key's budget slice is used up: the next request borrows for it alone.
        let key_budget = format!("{}{}", crate::contract::BUDGET_PREFIX, key_scope_name());
        set(&key_budget, &|b| {
            let mut c = budgets::Counter::decode(b);
            c.grant = c.used();
            c.encode()
        });
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
        assert_eq!(posted(&h)[1].items.len(), 1);
        // Meanwhile the key's rpm slice runs out.
        let rpm_scope = format!("rpm:api_key:{}", hash_key(KEY));
        let (entry, rpm) = crate::rate_leases::scope_entry(&rpm_scope).unwrap();
        set(&entry, &|b| {
            let mut slices = crate::rate_leases::Slices::decode(b);
            let s = slices.get_mut(rpm);
            s.grant = s.used;
            slices.encode()
        });
        let budget_only = LeaseAnswer {
            items: vec![LeaseGrant {
                scope: key_scope_name(),
                period: 0,
                grant: 2 * USD,
                ttl_ms: 10_000,
                spend: 0,
                max_nanos: None,
            }],
        };
        let body = serde_json::to_string(&budget_only).unwrap();
        assert_eq!(h.answer(&mut flow, 200, &body), Step::Pause);
        let requests = posted(&h);
        let scopes: Vec<&str> = requests[2].items.iter().map(|i| i.scope.as_str()).collect();
        assert_eq!(scopes, [rpm_scope.as_str()]);
        assert_eq!(
            h.answer(&mut flow, 200, &answer_body(2 * USD, 0, 0)),
            Step::Continue
        );
    }

    /// An answer that lent more, used up meanwhile by requests that resumed first, is not a
    /// refusal: another round.
    #[test]
    fn an_answer_used_up_by_others_before_it_came_asks_again() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let rpm_scope = format!("rpm:api_key:{}", hash_key(KEY));
        let mut answer: LeaseAnswer = serde_json::from_str(&answer_body(USD, 0, 0)).unwrap();
        for g in answer.items.iter_mut().filter(|g| g.scope == rpm_scope) {
            g.grant = 1;
        }
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        h.answer(&mut flow, 200, &serde_json::to_string(&answer).unwrap());
        h.respond_json(&mut flow, 200, ANSWER);
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
        // Others take 2 more (their answers came first) before this one lends up to 3.
        let (entry, rpm) = crate::rate_leases::scope_entry(&rpm_scope).unwrap();
        let mut slices = crate::rate_leases::Slices::decode(&h.host.store.get(&entry).unwrap().0);
        let slice = slices.get_mut(rpm);
        (slice.used, slice.grant) = (3, 3);
        h.host.store.set(&entry, &slices.encode(), None).unwrap();
        let more = LeaseAnswer {
            items: vec![LeaseGrant {
                scope: rpm_scope.clone(),
                period: 0,
                grant: 3,
                ttl_ms: 10_000,
                spend: 3,
                max_nanos: Some(100),
            }],
        };
        let step = h.answer(&mut flow, 200, &serde_json::to_string(&more).unwrap());
        assert_eq!((step, h.reply_status()), (Step::Pause, None));
        assert_eq!(posted(&h)[2].items[0].scope, rpm_scope);
    }

    #[test]
    fn cold_start_borrows_then_admits() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
        let requests = posted(&h);
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!((request.envoy_id.as_str(), request.seq), (ENVOY, 1));
        let scopes: Vec<String> = request.items.iter().map(|i| i.scope.clone()).collect();
        // Budgets and rate limits in one borrow, in scope order.
        let mut all = scope_names();
        all.extend(rate_scope_names());
        all.sort();
        assert_eq!(scopes, all);
        let reservation = request.items[0].want;
        assert!(reservation > 0);
        assert_eq!(
            request.items[0],
            LeaseItem {
                scope: key_scope_name(),
                level: "key".into(),
                ids: vec![hash_key(KEY)],
                period: 0,
                used: 0,
                held: 0,
                want: reservation,
                returning: false,
                reservation: 0,
                ..Default::default()
            }
        );
        let proxy = request.items.iter().find(|i| i.level == "proxy").unwrap();
        assert_eq!(proxy.ids, Vec::<String>::new());
        let rpm = request.items.iter().find(|i| i.level == "rpm").unwrap();
        assert_eq!(
            (rpm.ids.clone(), rpm.limit, rpm.want, rpm.used),
            (vec!["api_key".to_string(), hash_key(KEY)], Some(100), 1, 0)
        );
        // Not forwarded while borrowing.
        assert_eq!(
            h.host.request_header("authorization"),
            Some(format!("Bearer {KEY}"))
        );
        h.host.clear_calls();
        assert_eq!(
            h.answer(&mut flow, 200, &answer_body(USD, 0, 0)),
            Step::Continue
        );
        // The prepared admission goes on: the body is not read again.
        assert_eq!(h.host.count_of("request_body"), 0);
        assert_eq!(h.shared.pick.get(), 1);
        assert_eq!(
            h.host.request_header("authorization").as_deref(),
            Some("Bearer provider-secret")
        );
        let c = key_entry(&h);
        assert_eq!((c.grant, c.reserved), (USD, reservation));
        assert_eq!(c.deadline, 1_700_000_000_000_000 + 10_000_000 - 500_000);
        h.respond_json(&mut flow, 200, ANSWER);
        let events = h.events();
        assert_eq!(events[0].envoy_id.as_deref(), Some(ENVOY));
        assert_eq!(events[0].spend_nanos, 20_000);
        let c = key_entry(&h);
        assert_eq!((c.spend, c.reserved), (20_000, 0));
        // Fleet off: no envoy id on the event.
        let h = Harness::new(config()).with_key(&full_key());
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        h.respond_json(&mut flow, 200, ANSWER);
        assert_eq!(h.events()[0].envoy_id, None);
    }

    /// With a live slice a request makes no hop and exactly the host calls of fleet mode off,
    /// at admission and at settlement: the key's rpm, tpm and slots slices share one entry, as
    /// its window and in-flight gauge do with fleet mode off (one read and one compare-and-set
    /// per rate scope: the key's and the user's).
    #[test]
    fn live_slice_no_hop_same_host_calls_as_fleet_off() {
        let key = full_key();
        assert!(key.rpm_limit.is_some() && key.tpm_limit.is_some());
        assert!(key.max_parallel_requests.is_some() && key.user_rpm_limit.is_some());
        // Fleet mode off, a warm worker.
        let off = Harness::new(config()).with_key(&key);
        let mut warm_flow = off.flow();
        off.send(&mut warm_flow, CHAT, &[]);
        off.respond_json(&mut warm_flow, 200, ANSWER);
        off.host.clear_calls();
        let mut flow = off.flow();
        assert_eq!(
            off.send(&mut flow, CHAT, &[]),
            (Step::Pause, Step::Continue)
        );
        let off_admission = host_calls_of(&off);
        off.host.clear_calls();
        off.respond_json(&mut flow, 200, ANSWER);
        let off_settlement = host_calls_of(&off);
        assert_eq!(
            off_admission,
            "count=1 now=2 record=1 replace_request_body=1 request_body=1 request_headers=1 \
             set_request_header=4 shared_get=6 shared_set=5"
        );
        // Fleet mode on, slices live.
        let h = fleet_harness(NoLeasePolicy::Deny);
        warm(&h, USD);
        h.host.clear_calls();
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Continue));
        assert_eq!(
            h.host.posted.borrow().len(),
            1,
            "only the cold start's borrow"
        );
        assert_eq!(host_calls_of(&h), off_admission);
        h.host.clear_calls();
        h.respond_json(&mut flow, 200, ANSWER);
        assert_eq!(host_calls_of(&h), off_settlement);
        assert!(h.host.lease_queue.borrow().is_empty());
    }

    fn host_calls_of(h: &Harness) -> String {
        let mut names: Vec<&str> = h.host.calls.borrow().clone();
        names.sort_unstable();
        names.dedup();
        names
            .iter()
            .map(|n| format!("{n}={}", h.host.count_of(n)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The borrow's cost, paid once per slice. The first request also creates its rate-limit
    /// windows (under the creation lease), as with fleet mode off.
    #[test]
    fn cold_start_host_calls() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        // Three budget entries read and created (each under the creation lease), two rate
        // scopes' slices read, the lease sequence, the POST.
        assert_eq!(
            host_calls_of(&h),
            "count=1 dispatch_post=1 now=2 request_body=1 request_headers=1 shared_get=19 shared_set=12"
        );
        h.host.clear_calls();
        h.answer(&mut flow, 200, &answer_body(USD, 0, 0));
        // Seven grants applied (the two rate scopes' entries created under the creation lease
        // by their first grant, the key's two others one compare-and-set each), then the
        // admission as usual.
        assert_eq!(
            host_calls_of(&h),
            "call_response_body=1 call_response_status=1 count=1 now=1 record=1 replace_request_body=1 \
             set_request_header=4 shared_get=18 shared_set=16"
        );
        assert_eq!(
            h.host.counted.borrow().last(),
            Some(&(Metric::LeaseBorrows(Borrow::Granted), 1))
        );
    }

    #[test]
    fn exhausted_slice_borrows_and_is_refused_when_nothing_is_lent() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        // A slice of one request's reservation.
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        let want = posted(&h)[0].items[0].want;
        assert_eq!(
            h.answer(&mut flow, 200, &answer_body(want, 0, 0)),
            Step::Continue
        );
        // In flight, the slice is used up: the next request borrows.
        let mut second = h.flow();
        assert_eq!(h.send(&mut second, CHAT, &[]), (Step::Pause, Step::Pause));
        let requests = posted(&h);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].seq, 2);
        assert_eq!(
            (requests[1].items[0].used, requests[1].items[0].held),
            (want, want)
        );
        // Nothing more lent: LiteLLM's budget error, with the fleet's spend.
        let step = h.answer(&mut second, 200, &answer_body(want, 0, 9 * USD));
        assert_eq!((step, h.reply_status()), (Step::Pause, Some(422)));
        let reply = h.host.reply.borrow().clone().unwrap();
        let body = String::from_utf8_lossy(&reply.body).to_string();
        assert!(body.contains("budget_exceeded"), "{body}");
        assert!(body.contains("Max budget: 10.0"), "{body}");
        let borrows = [Borrow::Granted, Borrow::Refused, Borrow::Failed]
            .map(|b| h.counted(Metric::LeaseBorrows(b)));
        assert_eq!(borrows, [1, 1, 0]);
        // The first call still settles its own reservation.
        h.respond_json(&mut flow, 200, ANSWER);
        assert_eq!(key_entry(&h).reserved, 0);
    }

    #[test]
    fn sidecar_down_denies_or_falls_back_to_local() {
        for (status, dispatch_fails) in [(500, false), (200, false), (0, true)] {
            let h = fleet_harness(NoLeasePolicy::Deny);
            h.host.dispatch_fails.set(dispatch_fails);
            let mut flow = h.flow();
            let (_, on_body) = h.send(&mut flow, CHAT, &[]);
            if !dispatch_fails {
                assert_eq!(on_body, Step::Pause);
                // 200 with a body that is not a lease answer counts as no answer; a failed
                // borrow is sent once more (another replica), then `on_no_lease` decides.
                for attempt in 2..=3 {
                    assert_eq!(h.answer(&mut flow, status, "not json"), Step::Pause);
                    assert_eq!(posted(&h).len(), attempt, "sent again");
                    assert_eq!(h.reply_status(), None);
                }
                h.answer(&mut flow, status, "not json");
                assert_eq!(posted(&h).len(), 3, "not a fourth time");
            }
            assert_eq!(h.reply_status(), Some(503), "{status}");
            let reply = h.host.reply.borrow().clone().unwrap();
            assert!(String::from_utf8_lossy(&reply.body).contains("budget lease"));
            assert_eq!(key_entry(&h).reserved, 0);
            // One failed borrow (the retry is part of it), whatever `on_no_lease` decides.
            let failed = Metric::LeaseBorrows(Borrow::Failed);
            assert_eq!(h.counted(failed), 1);

            let h = fleet_harness(NoLeasePolicy::Local);
            h.host.dispatch_fails.set(dispatch_fails);
            let mut flow = h.flow();
            let (_, on_body) = h.send(&mut flow, CHAT, &[]);
            if !dispatch_fails {
                assert_eq!(h.answer(&mut flow, status, "not json"), Step::Pause);
                assert_eq!(h.answer(&mut flow, status, "not json"), Step::Pause);
                assert_eq!(h.answer(&mut flow, status, "not json"), Step::Continue);
            } else {
                assert_eq!(on_body, Step::Continue);
            }
            assert_eq!(h.reply_status(), None);
            assert!(
                key_entry(&h).reserved > 0,
                "reserved against the whole budget"
            );
            assert_eq!(h.counted(failed), 1);
            assert_eq!(h.counted(Metric::LeaseBorrows(Borrow::Granted)), 0);
        }
    }

    #[test]
    fn expired_slice_borrows() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        warm(&h, USD);
        let deadline = key_entry(&h).deadline;
        h.host.now.set(deadline - 1);
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]).1, Step::Continue);
        h.respond_json(&mut flow, 200, ANSWER);
        h.host.now.set(deadline);
        let mut flow = h.flow();
        assert_eq!(h.send(&mut flow, CHAT, &[]), (Step::Pause, Step::Pause));
        let requests = posted(&h);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].items[0].held, USD);
        assert_eq!(
            h.answer(&mut flow, 200, &answer_body(2 * USD, 0, 0)),
            Step::Continue
        );
        let c = key_entry(&h);
        assert_eq!(
            (c.grant, c.deadline),
            (2 * USD, deadline + 10_000_000 - 500_000)
        );
    }

    #[test]
    fn due_renewal_is_enqueued_once_a_second_per_scope() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        // A slice of three reservations.
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        let want = posted(&h)[0].items[0].want;
        assert_eq!(
            h.answer(&mut flow, 200, &answer_body(3 * want, 0, 0)),
            Step::Continue
        );
        assert!(h.host.lease_queue.borrow().is_empty());
        // With three in flight less than one reservation is left: every budget is due, once.
        let mut flows = Vec::new();
        for _ in 0..2 {
            let mut f = h.flow();
            assert_eq!(h.send(&mut f, CHAT, &[]).1, Step::Continue);
            flows.push(f);
        }
        let queued: Vec<LeaseItem> = h
            .host
            .lease_queue
            .borrow()
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect();
        assert_eq!(
            queued.iter().map(|i| i.scope.clone()).collect::<Vec<_>>(),
            [
                key_scope_name(),
                "user:alice".into(),
                "proxy:litellm-proxy-budget".into()
            ]
        );
        assert_eq!(queued[0].want, want);
        // Settled and admitted again within the second: still low, not enqueued again.
        for mut f in flows {
            h.respond_json(&mut f, 200, ANSWER);
        }
        h.host.now.set(h.host.now.get() + 999_999);
        let mut f = h.flow();
        assert_eq!(h.send(&mut f, CHAT, &[]).1, Step::Continue);
        h.respond_json(&mut f, 200, ANSWER);
        assert_eq!(h.host.lease_queue.borrow().len(), 3);
        // A second after the ask: due again.
        h.host.now.set(h.host.now.get() + 1);
        let mut f = h.flow();
        assert_eq!(h.send(&mut f, CHAT, &[]).1, Step::Continue);
        assert_eq!(h.host.lease_queue.borrow().len(), 6);
        // The tick's report: one item per scope, sorted, with the entries' figures.
        let now = h.host.now.get();
        let report = crate::lease_tick::ActiveScopes::default()
            .report(
                &h.host.store,
                &h.host.lease_queue.borrow(),
                ENVOY,
                now,
                crate::leases::IDLE_RETURN_MICROS,
            )
            .unwrap();
        assert_eq!(report.items.len(), 3);
        assert_eq!(report.items[0].scope, key_scope_name());
        assert_eq!(report.items[0].held, 3 * want);
        assert_eq!(report.items[0].used, key_entry(&h).used());
        assert_eq!(report.seq, 2, "after the borrow's");
    }

    #[test]
    fn answers_out_of_order_are_applied_with_max() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let mut first = h.flow();
        h.send(&mut first, CHAT, &[]);
        h.host.now.set(h.host.now.get() + 100);
        let mut second = h.flow();
        h.send(&mut second, CHAT, &[]);
        assert_eq!(posted(&h).len(), 2);
        // The later request's answer (more) arrives first.
        assert_eq!(
            answer_token(&h, &mut second, 2, 200, &answer_body(2 * USD, 0, 0)),
            Step::Continue
        );
        assert_eq!(
            answer_token(&h, &mut first, 1, 200, &answer_body(USD, 0, 0)),
            Step::Continue
        );
        let c = key_entry(&h);
        assert_eq!(c.grant, 2 * USD);
        assert_eq!(c.deadline, 1_700_000_000_000_100 + 10_000_000 - 500_000);
    }

    #[test]
    fn an_answer_for_another_period_is_ignored() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        // The budgets have no period (0); a grant for period 5 does not count.
        h.answer(&mut flow, 200, &answer_body(USD, 5, 0));
        assert_eq!(h.reply_status(), Some(503));
        assert_eq!(key_entry(&h).grant, 0);
    }

    #[test]
    fn a_late_answer_to_a_finished_request_is_not_applied_to_it() {
        let h = fleet_harness(NoLeasePolicy::Deny);
        let mut flow = h.flow();
        h.send(&mut flow, CHAT, &[]);
        // A token that is not the one awaited changes nothing.
        assert_eq!(
            answer_token(&h, &mut flow, 99, 200, &answer_body(USD, 0, 0)),
            Step::Pause
        );
        assert_eq!(key_entry(&h).grant, 0);
        assert_eq!(h.reply_status(), None);
    }
}
