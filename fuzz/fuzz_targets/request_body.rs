//! The request body reader (`request_body::parse`) and what admission derives from the body:
//! model routing and rewrite, `max_tokens`, `stream`, the end user, the token estimate.
//!
//! Input: the raw request body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::rc::Rc;
use std::sync::OnceLock;
use tollgate::admission::{self, Caller};
use tollgate::plugin_config::PluginConfig;
use tollgate::records::KeyRecord;
use tollgate::request_body;
use tollgate::routes::LlmRoute;
use tollgate::sidecar::{litellm_config, render};

const CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:8089/v1"}
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini-2, api_base: "http://127.0.0.1:8089/v1"}
  - model_name: m
    litellm_params: {model: openai/backend-m, api_base: "http://127.0.0.1:8089/v1"}
    model_info: {access_groups: [premium]}
  - model_name: "openai/*"
    litellm_params: {model: "openai/*", api_base: "http://127.0.0.1:8089/v1"}
general_settings: {master_key: sk-1234}
"#;

fn config() -> &'static PluginConfig {
    static C: OnceLock<PluginConfig> = OnceLock::new();
    C.get_or_init(|| {
        let loaded = litellm_config::parse(CONFIG).expect("fixed config parses");
        render::plugin_config(&loaded.config, &render::RenderOptions::default())
            .expect("fixed config renders")
            .plugin
    })
}

fn key_caller() -> Caller {
    Caller::VirtualKey {
        record: Rc::new(KeyRecord {
            models: vec!["premium".into(), "gpt-*".into()],
            rpm_limit: Some(10),
            tpm_limit: Some(1000),
            max_parallel_requests: Some(2),
            user_id: Some("u".into()),
            ..Default::default()
        }),
        raw_last4: "abcd".into(),
    }
}

fn reparse(bytes: &[u8]) -> request_body::LlmRequest {
    request_body::parse(bytes).expect("a rewritten body parses again")
}

fuzz_target!(|data: &[u8]| {
    let parsed = request_body::parse(data);
    let r = match parsed {
        Err(e) => {
            assert_eq!(e.status, 400);
            let body: Value = serde_json::from_slice(&e.body()).expect("error body is JSON");
            assert_eq!(body["error"]["code"], "400");
            return;
        }
        Ok(r) => r,
    };
    // The extracted fields are what the object holds.
    assert_eq!(
        r.object.get("model").and_then(Value::as_str),
        Some(r.model.as_str())
    );
    assert_eq!(
        r.stream,
        r.object.get("stream").and_then(Value::as_bool) == Some(true)
    );
    let cap = |f: &str| r.object.get(f).and_then(Value::as_u64);
    assert_eq!(
        r.max_tokens,
        cap("max_tokens").or(cap("max_completion_tokens"))
    );
    assert!(r.n() >= 1);
    let _ = r.prompt_chars();
    let _ = r.input_token_estimate();

    // Rewrites keep every other field and parse again.
    let plain = reparse(&r.upstream_body("backend-x"));
    assert_eq!(plain.model, "backend-x");
    assert_eq!(plain.stream, r.stream);
    assert_eq!(plain.max_tokens, r.max_tokens);
    for (k, v) in &r.object {
        if k != "model" {
            assert_eq!(plain.object.get(k), Some(v), "field {k} changed");
        }
    }
    assert_eq!(plain.object.len(), r.object.len());

    let full = reparse(&r.upstream_body_with("backend-y", Some(7), true));
    assert_eq!(full.model, "backend-y");
    assert_eq!(full.max_tokens, Some(7));
    assert!(full.client_wants_stream_usage());
    assert_eq!(full.stream, r.stream);
    for (k, v) in &r.object {
        if !matches!(k.as_str(), "model" | "max_tokens" | "stream_options") {
            assert_eq!(full.object.get(k), Some(v), "field {k} changed");
        }
    }

    // The end user, as admission reads it.
    if let Some(u) = admission::end_user_id(None, &r) {
        assert!(!u.is_empty());
        assert_eq!(u, u.trim());
    }
    assert_eq!(
        admission::end_user_id(Some(" h "), &r).as_deref(),
        Some("h")
    );

    // Admission end to end, for the master key and a virtual key.
    let cfg = config();
    for (route, path) in [
        (LlmRoute::ChatCompletions, "/v1/chat/completions?a=b"),
        (LlmRoute::Embeddings, "/embeddings"),
    ] {
        for caller in [Caller::Master, key_caller()] {
            match admission::admit(cfg, &caller, route, path, data, 1_767_225_600_000_000, 3) {
                Ok(a) => {
                    assert_eq!(a.request, r);
                    assert_eq!(a.deployment.model_name, r.model);
                    let sent = reparse(&a.request.upstream_body_from(
                        data,
                        &a.deployment.backend_model,
                        None,
                        false,
                    ));
                    assert_eq!(sent.model, a.deployment.backend_model);
                    assert!(a.path.starts_with(&a.deployment.base_path));
                }
                Err(e) => assert!((400..500).contains(&e.status), "{e:?}"),
            }
            let plan = admission::limit_plan_for(cfg, &caller, &r, route, None);
            if let Some(m) = plan.implicit_max_tokens {
                assert!(r.max_tokens.is_none());
                assert!(m > 0);
            }
        }
    }
});
