#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Foundation behaviour through a real Envoy running the built filter: authentication
//! (litellm-compat.md §5.1), key generation (§5.2, §5.3), model access (§6), the order of checks
//! (§8), what reaches the upstream, the LLM routes, the admin API, persistence, and the
//! `tollgate up` / `tollgate render` commands.

mod common;

use common::{
    chat_body, envoy_bin, run_to_exit, sha256_hex, tollgate_bin, tollgate_wasm, Resp, Stack,
    StackOptions, TempDir, DEFAULT_CONFIG, DEFAULT_MODELS, MASTER_KEY, PROVIDER_KEY,
};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const NO_KEY: &str = "Authentication Error, No api key passed in.";
const MALFORMED: &str =
    "Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix.";
const INVALID_KEY: &str = "Authentication Error, Invalid API key provided.";

fn model_denied_message(model: &str) -> String {
    format!(
        "The requested model '{model}' is not available for this API key, or the model name is invalid. Check the models available to you and try again."
    )
}

fn unknown_model_message(route: &str, model: &str) -> String {
    format!(
        "{route}: Invalid model name passed in model={model}. Call `/v1/models` to view available models for your key."
    )
}

fn assert_model_denied(resp: &Resp, scope: &str, model: &str) {
    let err = resp.assert_error_message(
        403,
        &format!("{scope}_model_access_denied"),
        &model_denied_message(model),
    );
    assert_eq!(err["param"], "model", "param; body: {}", resp.body);
}

fn assert_chat_ok(resp: &Resp) -> Value {
    resp.assert_status(200);
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion", "body: {}", resp.body);
    assert!(
        v["choices"][0]["message"]["content"].is_string(),
        "body: {}",
        resp.body
    );
    v
}

fn embeddings_body(model: &str) -> String {
    json!({"model": model, "input": "the quick brown fox"}).to_string()
}

// ---------------------------------------------------------------------------------------------
// Authentication failures (§5.1)

#[test]
fn no_credential_is_401_no_api_key() {
    let s = Stack::default_config();
    let err = s
        .chat(None, "gpt-4o-mini")
        .assert_error_message(401, "auth_error", NO_KEY);
    assert_eq!(err["param"], Value::Null);
    // An empty bearer is no key at all for the other headers too.
    s.request(
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", ""), ("content-type", "application/json")],
        Some(&chat_body("gpt-4o-mini")),
    )
    .assert_error_message(401, "auth_error", NO_KEY);
    // Nothing reached the upstream.
    assert!(s.fake_requests().is_empty());
}

#[test]
fn authorization_without_bearer_is_malformed() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({}));
    let raw_auth = key.clone();
    let err = s
        .request(
            "POST",
            "/v1/chat/completions",
            &[
                ("authorization", raw_auth.as_str()),
                ("content-type", "application/json"),
            ],
            Some(&chat_body("gpt-4o-mini")),
        )
        .assert_error_message(401, "auth_error", MALFORMED);
    assert_eq!(err["param"], Value::Null);
    assert!(s.fake_requests().is_empty());
}

#[test]
fn non_sk_token_is_virtual_key_expected() {
    let s = Stack::default_config();
    s.chat(Some("abcdefghijklmnopwxyz"), "gpt-4o-mini")
        .assert_error_message(
            401,
            "auth_error",
            "LiteLLM Virtual Key expected. Received=abcd****wxyz, expected to start with 'sk-'.",
        );
    assert!(s.fake_requests().is_empty());
}

#[test]
fn unknown_sk_key_is_token_not_found() {
    let s = Stack::default_config();
    // Twice: the sidecar lookup, then whatever the filter remembers about it.
    for _ in 0..2 {
        let err = s
            .chat(Some("sk-this-key-does-not-exist-0001"), "gpt-4o-mini")
            .assert_error_message(401, "token_not_found_in_db", INVALID_KEY);
        assert_eq!(err["param"], "key");
    }
    // The admin API refuses it the same way.
    let err = s
        .post(
            "/key/generate",
            Some("sk-this-key-does-not-exist-0001"),
            "{}",
        )
        .assert_error(401, "token_not_found_in_db");
    assert_eq!(err["param"], "key");
    assert!(s.fake_requests().is_empty());
}

#[test]
fn master_key_gets_a_completion() {
    let s = Stack::default_config();
    let resp = s.chat(Some(MASTER_KEY), "gpt-4o-mini");
    assert_eq!(resp.header("server"), Some("envoy"));
    let v = assert_chat_ok(&resp);
    // OpenAI's chat count at the fake: 3 + "user" 1 + "hello there" 2 + 3.
    assert_eq!(v["usage"]["prompt_tokens"], 9, "body: {}", resp.body);
    assert_eq!(v["usage"]["completion_tokens"], 10, "body: {}", resp.body);
    assert_eq!(s.fake_requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Keys (§5.2)

#[test]
fn generated_key_has_litellm_shape_and_works_at_once() {
    let s = Stack::default_config();
    let (key, v) = s.generate_key(json!({}));
    assert_eq!(
        key.len(),
        25,
        "LiteLLM keys are sk- + token_urlsafe(16): {key}"
    );
    assert!(key.starts_with("sk-"), "{key}");
    assert!(
        key[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "not base64url: {key}"
    );
    assert_eq!(v["key_name"], format!("sk-...{}", &key[key.len() - 4..]));
    assert_eq!(v["token"], sha256_hex(&key), "token is sha256(raw key)");
    assert_eq!(v["expires"], Value::Null);
    assert_eq!(v["models"], json!([]));
    // The very next request with it succeeds.
    assert_chat_ok(&s.chat(Some(&key), "gpt-4o-mini"));
    let (other, _) = s.generate_key(json!({}));
    assert_ne!(key, other);
    assert_chat_ok(&s.chat(Some(&other), "gpt-4o"));
}

#[test]
fn credential_is_read_from_each_litellm_header() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({}));
    let body = chat_body("gpt-4o-mini");
    let bearer = format!("Bearer {key}");
    let cases: [(&str, &str); 7] = [
        ("x-litellm-api-key", &key),
        ("x-litellm-api-key", &bearer),
        ("authorization", &bearer),
        ("api-key", &key),
        ("x-api-key", &key),
        ("x-goog-api-key", &key),
        ("ocp-apim-subscription-key", &key),
    ];
    for (header, value) in cases {
        let resp = s.request(
            "POST",
            "/v1/chat/completions",
            &[(header, value), ("content-type", "application/json")],
            Some(&body),
        );
        assert_eq!(resp.status, 200, "{header}: {value} → {}", resp.body);
    }
    // The master key too, from a header other than Authorization.
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("x-api-key", MASTER_KEY),
            ("content-type", "application/json"),
        ],
        Some(&body),
    );
    assert_eq!(resp.status, 200, "master key in x-api-key → {}", resp.body);

    // First match wins: x-litellm-api-key before a malformed Authorization ...
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("x-litellm-api-key", &key),
            ("authorization", "garbage-without-prefix"),
            ("content-type", "application/json"),
        ],
        Some(&body),
    );
    assert_eq!(
        resp.status, 200,
        "x-litellm-api-key must win: {}",
        resp.body
    );
    // ... and before a valid Authorization.
    s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("x-litellm-api-key", "sk-unknown-key-in-litellm-header"),
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        Some(&body),
    )
    .assert_error(401, "token_not_found_in_db");
    // Authorization before api-key, api-key before x-api-key.
    s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-unknown-key-in-authorization"),
            ("api-key", &key),
            ("content-type", "application/json"),
        ],
        Some(&body),
    )
    .assert_error(401, "token_not_found_in_db");
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("api-key", &key),
            ("x-api-key", "sk-unknown-key-in-x-api-key"),
            ("content-type", "application/json"),
        ],
        Some(&body),
    );
    assert_eq!(
        resp.status, 200,
        "api-key must win over x-api-key: {}",
        resp.body
    );
    s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("api-key", "sk-unknown-key-in-api-key"),
            ("x-api-key", &key),
            ("content-type", "application/json"),
        ],
        Some(&body),
    )
    .assert_error(401, "token_not_found_in_db");
}

// ---------------------------------------------------------------------------------------------
// Model access (§6)

#[test]
fn key_restricted_to_a_model() {
    let s = Stack::default_config();
    let (key, v) = s.generate_key(json!({"models": ["gpt-4o-mini"]}));
    assert_eq!(v["models"], json!(["gpt-4o-mini"]));
    assert_chat_ok(&s.chat(Some(&key), "gpt-4o-mini"));
    assert_model_denied(&s.chat(Some(&key), "gpt-4o"), "key", "gpt-4o");
    assert_model_denied(
        &s.post(
            "/v1/embeddings",
            Some(&key),
            &embeddings_body("text-embedding-3-small"),
        ),
        "key",
        "text-embedding-3-small",
    );
    // Only the allowed call reached the upstream.
    assert_eq!(s.fake_requests().len(), 1);
}

#[test]
fn key_restricted_to_an_access_group() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({"models": ["premium"]}));
    assert_chat_ok(&s.chat(Some(&key), "gpt-4o"));
    assert_model_denied(&s.chat(Some(&key), "gpt-4o-mini"), "key", "gpt-4o-mini");
    assert_model_denied(&s.chat(Some(&key), "public-chat"), "key", "public-chat");
    // An access group mixed with a plain name.
    let (key2, _) = s.generate_key(json!({"models": ["premium", "llama-3-70b"]}));
    assert_chat_ok(&s.chat(Some(&key2), "gpt-4o"));
    assert_chat_ok(&s.chat(Some(&key2), "llama-3-70b"));
    assert_model_denied(&s.chat(Some(&key2), "gpt-4o-mini"), "key", "gpt-4o-mini");
}

#[test]
fn wildcard_model_lists() {
    let s = Stack::default_config();
    let (gpt, _) = s.generate_key(json!({"models": ["gpt-*"]}));
    assert_chat_ok(&s.chat(Some(&gpt), "gpt-4o-mini"));
    assert_chat_ok(&s.chat(Some(&gpt), "gpt-4o"));
    assert_model_denied(&s.chat(Some(&gpt), "llama-3-70b"), "key", "llama-3-70b");
    assert_model_denied(
        &s.post(
            "/v1/embeddings",
            Some(&gpt),
            &embeddings_body("text-embedding-3-small"),
        ),
        "key",
        "text-embedding-3-small",
    );

    // `openai/*` admits OpenAI models by their provider, and not a groq one.
    let (openai, _) = s.generate_key(json!({"models": ["openai/*"]}));
    assert_chat_ok(&s.chat(Some(&openai), "gpt-4o-mini"));
    assert_chat_ok(&s.chat(Some(&openai), "gpt-4o"));
    s.post(
        "/v1/embeddings",
        Some(&openai),
        &embeddings_body("text-embedding-3-small"),
    )
    .assert_status(200);
    assert_model_denied(&s.chat(Some(&openai), "llama-3-70b"), "key", "llama-3-70b");

    // `*` and `all-proxy-models` allow everything.
    for all in ["*", "all-proxy-models"] {
        let (k, _) = s.generate_key(json!({"models": [all]}));
        assert_chat_ok(&s.chat(Some(&k), "llama-3-70b"));
        assert_chat_ok(&s.chat(Some(&k), "public-chat"));
    }
}

/// litellm-compat.md §6: the `provider/*` rule derives the provider from the *requested* name
/// (`get_llm_provider(model)`); "the deployment's `litellm_params.model` does not count". A
/// public name LiteLLM cannot place (`public-chat`) gets no provider rewrite, so `openai/*` does
/// not admit it even though its deployment is `openai/backend-chat-v2`.
#[test]
fn provider_wildcard_uses_the_requested_name_not_the_deployment() {
    let s = Stack::default_config();
    let (openai, _) = s.generate_key(json!({"models": ["openai/*"]}));
    assert_model_denied(&s.chat(Some(&openai), "public-chat"), "key", "public-chat");
}

#[test]
fn unknown_model_is_400_unless_access_is_denied_first() {
    let s = Stack::default_config();
    let expected = unknown_model_message("/chat/completions", "no-such-model");
    s.chat(Some(MASTER_KEY), "no-such-model")
        .assert_error_message(400, "invalid_request_error", &expected);
    let (open, _) = s.generate_key(json!({}));
    s.chat(Some(&open), "no-such-model").assert_error_message(
        400,
        "invalid_request_error",
        &expected,
    );
    // Embeddings name their own route.
    s.post(
        "/v1/embeddings",
        Some(&open),
        &embeddings_body("no-such-model"),
    )
    .assert_error_message(
        400,
        "invalid_request_error",
        &unknown_model_message("/embeddings", "no-such-model"),
    );
    // A restricted key is refused on access before the router looks the model up.
    let (restricted, _) = s.generate_key(json!({"models": ["gpt-4o-mini"]}));
    assert_model_denied(
        &s.chat(Some(&restricted), "no-such-model"),
        "key",
        "no-such-model",
    );
    assert!(s.fake_requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Expiry and the order of checks (§5.1, §8)

fn assert_expired(resp: &Resp, key: &str) {
    let err = resp.assert_error(401, "expired_key");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Authentication Error - Expired Key. Key Expiry time ")
            && message.contains(" and current time "),
        "message: {message}"
    );
    // `sk-...` + last 4 of the raw key (cached path) or of its hash (DB path).
    let raw4 = &key[key.len() - 4..];
    let hash = sha256_hex(key);
    let hash4 = &hash[hash.len() - 4..];
    let param = err["param"].as_str().unwrap_or_default();
    assert!(
        param == format!("sk-...{raw4}") || param == format!("sk-...{hash4}"),
        "param: {param}"
    );
}

#[test]
fn expired_key_is_401_but_model_access_is_checked_first() {
    let s = Stack::default_config();
    // Long enough for the call below to come before the expiry on a loaded machine.
    let lifetime = Duration::from_secs(3);
    let (used, v) = s.generate_key(json!({"models": ["gpt-4o-mini"], "duration": "3s"}));
    assert!(v["expires"].is_string(), "expires: {v}");
    // Valid before it expires (this also caches it in the filter).
    assert_chat_ok(&s.chat(Some(&used), "gpt-4o-mini"));
    let (unused, _) = s.generate_key(json!({"models": ["gpt-4o-mini"], "duration": "3s"}));
    // Both keys' expiry is at most `lifetime` after this (each was made before its answer).
    let both_made = Instant::now();

    let wake = both_made + lifetime + Duration::from_millis(100);
    std::thread::sleep(wake.saturating_duration_since(Instant::now()));

    assert_expired(&s.chat(Some(&used), "gpt-4o-mini"), &used);
    // Never seen by the filter before expiry: same answer.
    assert_expired(&s.chat(Some(&unused), "gpt-4o-mini"), &unused);
    // Expired and asking for a forbidden model: the model check comes first (403).
    assert_model_denied(&s.chat(Some(&used), "gpt-4o"), "key", "gpt-4o");
    assert_model_denied(&s.chat(Some(&unused), "gpt-4o"), "key", "gpt-4o");
    // /key/info reports it.
    let info = s.get(&format!("/key/info?key={used}"), Some(MASTER_KEY));
    info.assert_status(200);
    assert_eq!(info.json()["info"]["status"], "expired", "{}", info.body);
    // Only the request made before expiry reached the upstream.
    assert_eq!(s.fake_requests().len(), 1);
}

#[test]
fn user_models_limit_the_users_keys() {
    let s = Stack::default_config();
    let resp = s.admin_post(
        "/user/new",
        &json!({"user_id": "user-with-models", "models": ["gpt-4o"]}),
    );
    resp.assert_status(200);
    let user = resp.json();
    assert_eq!(user["user_id"], "user-with-models");
    let auto_key = user["key"]
        .as_str()
        .expect("/user/new returns a key")
        .to_string();
    assert!(
        auto_key.starts_with("sk-") && auto_key.len() == 25,
        "{auto_key}"
    );

    // The auto-created key copies the user's models: the key-level check refuses first.
    assert_chat_ok(&s.chat(Some(&auto_key), "gpt-4o"));
    assert_model_denied(
        &s.chat(Some(&auto_key), "gpt-4o-mini"),
        "key",
        "gpt-4o-mini",
    );

    // A second personal key with no models of its own is still bound by the user's models.
    let (second, v) = s.generate_key(json!({"user_id": "user-with-models"}));
    assert_eq!(v["user_id"], "user-with-models");
    assert_eq!(v["models"], json!([]));
    assert_chat_ok(&s.chat(Some(&second), "gpt-4o"));
    assert_model_denied(&s.chat(Some(&second), "gpt-4o-mini"), "user", "gpt-4o-mini");
    assert_model_denied(&s.chat(Some(&second), "llama-3-70b"), "user", "llama-3-70b");

    // /v1/models agrees.
    for k in [&auto_key, &second] {
        let models = s.get("/v1/models", Some(k));
        models.assert_status(200);
        assert_eq!(model_ids(&models), vec!["gpt-4o"], "{}", models.body);
    }
}

#[test]
fn blocked_key_is_401_before_model_access() {
    let s = Stack::default_config();
    let (key, v) = s.generate_key(json!({"models": ["gpt-4o-mini"], "blocked": true}));
    assert_eq!(v["blocked"], true, "{v}");
    let blocked =
        "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.";
    s.chat(Some(&key), "gpt-4o-mini")
        .assert_error_message(401, "auth_error", blocked);
    // Blocked comes before model access (§8).
    s.chat(Some(&key), "gpt-4o")
        .assert_error_message(401, "auth_error", blocked);
    assert!(s.fake_requests().is_empty());
}

/// Many first uses of fresh keys at once (each one a sidecar lookup), across Envoy's workers.
#[test]
fn concurrent_first_use_of_fresh_keys() {
    let s = Stack::default_config();
    // Even keys may use everything, odd keys only gpt-4o.
    let keys: Vec<String> = (0..4)
        .map(|i| {
            let models = if i % 2 == 0 {
                json!([])
            } else {
                json!(["gpt-4o"])
            };
            s.generate_key(json!({ "models": models })).0
        })
        .collect();
    let cases: Vec<(String, &str, u16)> = (0..24)
        .map(|i| match i % 6 {
            0 | 1 => {
                let k = i % 4;
                (
                    keys[k].clone(),
                    "gpt-4o-mini",
                    if k % 2 == 0 { 200 } else { 403 },
                )
            }
            2 | 3 => (keys[i % 4].clone(), "gpt-4o", 200),
            4 => (format!("sk-unknown-concurrent-key-{i:04}"), "gpt-4o", 401),
            _ => (MASTER_KEY.to_string(), "gpt-4o-mini", 200),
        })
        .collect();
    let wrong: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(auth, model, expected)| {
                let url = s.url("/v1/chat/completions");
                scope.spawn(move || {
                    let bearer = format!("Bearer {auth}");
                    let resp = common::send(
                        &common::agent(),
                        "POST",
                        &url,
                        &[
                            ("authorization", &bearer),
                            ("content-type", "application/json"),
                        ],
                        Some(&chat_body(model)),
                    );
                    (resp.status != *expected).then(|| {
                        format!(
                            "{auth} {model}: expected {expected}, got {} {}",
                            resp.status, resp.body
                        )
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("request thread"))
            .collect()
    });
    assert!(wrong.is_empty(), "unexpected answers: {wrong:#?}");
    // And the stack still answers normally afterwards.
    assert_chat_ok(&s.chat(Some(&keys[0]), "gpt-4o-mini"));
}

const CUSTOM_HEADER_CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
general_settings:
  master_key: @MASTER_KEY@
  litellm_key_header_name: x-my-gateway-key
"#;

/// `general_settings.litellm_key_header_name` overrides the usual headers (§1.2, §5.1), and the
/// credential read from it must not reach the provider either.
#[test]
fn custom_key_header_is_used_and_never_forwarded() {
    let s = Stack::start(CUSTOM_HEADER_CONFIG);
    let json_ct = ("content-type", "application/json");
    // The admin API reads the master key from the custom header too.
    let resp = s.request(
        "POST",
        "/key/generate",
        &[("x-my-gateway-key", MASTER_KEY), json_ct],
        Some("{}"),
    );
    resp.assert_status(200);
    let key = resp.json()["key"].as_str().expect("key").to_string();

    let body = chat_body("gpt-4o-mini");
    for value in [key.clone(), format!("Bearer {key}"), MASTER_KEY.to_string()] {
        let resp = s.request(
            "POST",
            "/v1/chat/completions",
            &[("x-my-gateway-key", &value), json_ct],
            Some(&body),
        );
        assert_eq!(
            resp.status, 200,
            "x-my-gateway-key: {value} → {}",
            resp.body
        );
    }
    // The standard header is not read when a custom one is configured.
    s.chat(Some(&key), "gpt-4o-mini")
        .assert_error_message(401, "auth_error", NO_KEY);

    let seen = s.fake_requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for request in &seen {
        for (name, value) in header_values(request) {
            assert!(
                !value.contains(&key) && !value.contains(MASTER_KEY),
                "the caller's credential reached the provider in `{name}: {value}`"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the upstream sees

fn header_values(request: &Value) -> Vec<(String, String)> {
    request["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn upstream_sees_provider_key_and_backend_model_never_the_virtual_key() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({}));
    let bearer = format!("Bearer {key}");
    let master_bearer = format!("Bearer {MASTER_KEY}");
    let json_ct = ("content-type", "application/json");
    let chat = chat_body("gpt-4o-mini");

    type Sent<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
    let sent: Vec<Sent> = vec![
        (
            "/v1/chat/completions",
            vec![
                ("x-litellm-api-key", key.as_str()),
                ("accept-encoding", "gzip, br"),
                json_ct,
            ],
            chat.clone(),
        ),
        (
            "/chat/completions",
            vec![("authorization", bearer.as_str()), json_ct],
            chat.clone(),
        ),
        (
            "/v1/embeddings",
            vec![("api-key", key.as_str()), json_ct],
            embeddings_body("text-embedding-3-small"),
        ),
        (
            "/v1/chat/completions",
            vec![("x-api-key", key.as_str()), json_ct],
            chat_body("llama-3-70b"),
        ),
        (
            "/v1/chat/completions",
            vec![("authorization", master_bearer.as_str()), json_ct],
            chat_body("public-chat"),
        ),
        (
            "/v1/chat/completions",
            vec![("x-goog-api-key", key.as_str()), json_ct],
            chat.clone(),
        ),
        // api_base without a path (and with a trailing slash): joined without /v1 or `//`.
        (
            "/v1/chat/completions",
            vec![("authorization", bearer.as_str()), json_ct],
            chat_body("root-base-chat"),
        ),
        (
            "/v1/chat/completions",
            vec![
                ("ocp-apim-subscription-key", key.as_str()),
                ("x-api-key", MASTER_KEY),
                json_ct,
            ],
            chat.clone(),
        ),
    ];
    for (path, headers, body) in &sent {
        let resp = s.request("POST", path, headers, Some(body));
        assert_eq!(resp.status, 200, "{path} {headers:?} → {}", resp.body);
    }

    let seen = s.fake_requests();
    assert_eq!(seen.len(), sent.len(), "upstream saw: {seen:#?}");
    let expected = [
        ("/v1/chat/completions", "gpt-4o-mini-backend"),
        ("/v1/chat/completions", "gpt-4o-mini-backend"),
        ("/v1/embeddings", "text-embedding-3-small"),
        ("/v1/chat/completions", "llama-3-70b-versatile"),
        ("/v1/chat/completions", "backend-chat-v2"),
        ("/v1/chat/completions", "gpt-4o-mini-backend"),
        ("/chat/completions", "root-backend"),
        ("/v1/chat/completions", "gpt-4o-mini-backend"),
    ];
    assert_eq!(expected.len(), sent.len());
    for (request, (path, backend)) in seen.iter().zip(expected) {
        assert_eq!(request["method"], "POST");
        assert_eq!(request["path"], path, "{request:#}");
        assert_eq!(request["body"]["model"], backend, "{request:#}");
        let headers = header_values(request);
        let auth: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(auth, vec![format!("Bearer {PROVIDER_KEY}")], "{request:#}");
        for (name, value) in &headers {
            assert!(
                !value.contains(&key) && !value.contains(MASTER_KEY),
                "the caller's credential leaked upstream in {name}: {request:#}"
            );
            assert!(
                ![
                    "x-litellm-api-key",
                    "api-key",
                    "x-api-key",
                    "x-goog-api-key",
                    "ocp-apim-subscription-key",
                    "accept-encoding"
                ]
                .contains(&name.as_str()),
                "{name} must not reach the upstream: {request:#}"
            );
        }
        let body = request["body"].to_string();
        assert!(
            !body.contains(&key) && !body.contains(MASTER_KEY),
            "credential in the upstream body: {body}"
        );
    }
    // The rest of the body is forwarded as sent.
    assert_eq!(
        seen[0]["body"]["messages"],
        json!([{"role": "user", "content": "hello there"}])
    );
    assert_eq!(seen[2]["body"]["input"], "the quick brown fox");
}

#[test]
fn large_body_is_forwarded_intact() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({}));
    let prompt = "abcd".repeat(150_000); // 600 KB
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
        .to_string();
    let resp = s.post("/v1/chat/completions", Some(&key), &body);
    let v = assert_chat_ok(&resp);
    // 600 000 characters / 4, plus the chat framing (3 + "user" 1 + 3).
    assert_eq!(v["usage"]["prompt_tokens"], 150_007);
    let seen = s.fake_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]["body"]["messages"][0]["content"]
            .as_str()
            .map(str::len),
        Some(600_000)
    );
}

// ---------------------------------------------------------------------------------------------
// Bad bodies

#[test]
fn bad_bodies_are_400_and_the_vm_keeps_serving() {
    let s = Stack::default_config();
    let (fresh, _) = s.generate_key(json!({}));
    let bad: [(&str, Option<&str>); 6] = [
        ("not json", Some("this is not json")),
        ("model is a number", Some(r#"{"model": 5, "messages": []}"#)),
        ("empty body", Some("")),
        ("no body at all", None),
        ("a JSON array", Some("[1, 2, 3]")),
        ("truncated JSON", Some(r#"{"model": "gpt-4o-mini", "messa"#)),
    ];
    // First with a key the filter has not seen yet (the body waits for the sidecar lookup),
    // then with the master key (decided at once).
    for auth in [fresh.as_str(), MASTER_KEY] {
        let bearer = format!("Bearer {auth}");
        for (what, body) in bad {
            let mut headers = vec![("authorization", bearer.as_str())];
            if body.is_some() {
                headers.push(("content-type", "application/json"));
            }
            let resp = s.request("POST", "/v1/chat/completions", &headers, body);
            assert_eq!(resp.status, 400, "{what}: {}", resp.body);
            resp.assert_error(400, "invalid_request_error");
        }
        assert_chat_ok(&s.chat(Some(auth), "gpt-4o-mini"));
    }
    let resp = s.post(
        "/v1/embeddings",
        Some(MASTER_KEY),
        r#"{"model": ["text-embedding-3-small"], "input": "x"}"#,
    );
    resp.assert_error(400, "invalid_request_error");
    // Still alive after all of that.
    assert_chat_ok(&s.chat(Some(&fresh), "gpt-4o"));
    assert_eq!(s.fake_requests().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Streaming and routes

fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn streaming_passes_through_as_sse() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({}));
    for auth in [key.as_str(), MASTER_KEY] {
        let body = json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "count to three"}]
        })
        .to_string();
        let resp = s.post("/v1/chat/completions", Some(auth), &body);
        resp.assert_status(200);
        assert!(
            resp.header("content-type")
                .is_some_and(|c| c.starts_with("text/event-stream")),
            "content-type: {:?}",
            resp.header("content-type")
        );
        let events = sse_data(&resp.body);
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{}",
            resp.body
        );
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).expect("SSE data is JSON"))
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk"),
            "{}",
            resp.body
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "ok ok ok ", "{}", resp.body);
    }
    // Text completions stream too.
    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say ok", "stream": true, "max_tokens": 2})
        .to_string();
    let resp = s.post("/v1/completions", Some(&key), &body);
    resp.assert_status(200);
    let events = sse_data(&resp.body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        resp.body
    );
    assert!(events.len() >= 3, "{}", resp.body);
    // The upstream got the request as a stream.
    let seen = s.fake_requests();
    assert!(
        seen.iter().all(|r| r["body"]["stream"] == true),
        "{seen:#?}"
    );
}

/// litellm-compat.md §7.3: streams are sent upstream with `stream_options.include_usage` (so
/// spend can be settled), but a client that did not ask does not see the usage chunk.
#[test]
fn stream_usage_is_requested_upstream_and_shown_only_when_asked() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({}));
    let plain = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "count to three"}]
    });
    let mut asked = plain.clone();
    asked["stream_options"] = json!({"include_usage": true});

    let resp = s.post("/v1/chat/completions", Some(&key), &plain.to_string());
    resp.assert_status(200);
    let events = sse_data(&resp.body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        resp.body
    );
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).expect("SSE data is JSON");
        assert!(
            chunk.get("usage").is_none_or(Value::is_null),
            "usage chunk shown to a client that did not ask: {}",
            resp.body
        );
        assert_ne!(chunk["choices"], json!([]), "{}", resp.body);
    }

    let resp = s.post("/v1/chat/completions", Some(&key), &asked.to_string());
    resp.assert_status(200);
    let events = sse_data(&resp.body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        resp.body
    );
    let usage: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).expect("SSE data is JSON"))
        .filter_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .collect();
    assert_eq!(usage.len(), 1, "{}", resp.body);
    assert_eq!(usage[0]["completion_tokens"], 3, "{}", resp.body);

    let seen = s.fake_requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(
            request["body"]["stream_options"]["include_usage"], true,
            "{request:#}"
        );
    }
}

#[test]
fn embeddings_completions_and_unversioned_chat_routes() {
    let s = Stack::default_config();
    let (key, _) = s.generate_key(json!({}));

    let resp = s.post(
        "/v1/embeddings",
        Some(&key),
        &embeddings_body("text-embedding-3-small"),
    );
    resp.assert_status(200);
    let v = resp.json();
    assert_eq!(v["object"], "list", "{}", resp.body);
    assert_eq!(v["data"][0]["object"], "embedding", "{}", resp.body);
    assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(8));

    let body =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say ok", "max_tokens": 2}).to_string();
    let resp = s.post("/v1/completions", Some(&key), &body);
    resp.assert_status(200);
    let v = resp.json();
    assert_eq!(v["object"], "text_completion", "{}", resp.body);
    assert_eq!(v["choices"][0]["text"], "ok ok", "{}", resp.body);

    assert_chat_ok(&s.post("/chat/completions", Some(&key), &chat_body("gpt-4o")));
    s.post(
        "/embeddings",
        Some(&key),
        &embeddings_body("text-embedding-3-small"),
    )
    .assert_status(200);
    s.post("/completions", Some(&key), &body).assert_status(200);

    let paths: Vec<String> = s
        .fake_requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/embeddings",
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1/completions"
        ]
    );
}

fn model_ids(resp: &Resp) -> Vec<String> {
    let v = resp.json();
    assert_eq!(v["object"], "list", "{}", resp.body);
    v["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model", "{m}");
            m["id"].as_str().expect("id").to_string()
        })
        .collect()
}

#[test]
fn model_list_shows_only_what_the_key_may_use() {
    let s = Stack::default_config();
    let (limited, _) = s.generate_key(json!({"models": ["gpt-4o-mini", "premium"]}));
    let resp = s.get("/v1/models", Some(&limited));
    resp.assert_status(200);
    let mut ids = model_ids(&resp);
    ids.sort();
    assert_eq!(ids, vec!["gpt-4o", "gpt-4o-mini"]);

    let (open, _) = s.generate_key(json!({}));
    for auth in [open.as_str(), MASTER_KEY] {
        let resp = s.get("/v1/models", Some(auth));
        resp.assert_status(200);
        let mut ids = model_ids(&resp);
        ids.sort();
        let mut all: Vec<&str> = DEFAULT_MODELS.to_vec();
        all.sort();
        assert_eq!(ids, all);
    }
    s.get("/v1/models", None)
        .assert_error_message(401, "auth_error", NO_KEY);
    s.get("/v1/models", Some("sk-not-a-real-key-0000000"))
        .assert_error(401, "token_not_found_in_db");
}

// ---------------------------------------------------------------------------------------------
// Admin API (§5.3)

#[test]
fn admin_routes_are_admin_only_and_users_make_their_own_keys() {
    let s = Stack::default_config();
    s.post("/key/generate", None, "{}")
        .assert_error_message(401, "auth_error", NO_KEY);
    let (key, _) = s.generate_key(json!({"user_id": "some-user"}));
    // Without a user row the key has no role (LiteLLM's route checks): no key writes.
    s.post("/key/generate", Some(&key), "{}").assert_error_message(
        401,
        "auth_error",
        "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route=/key/generate. Your role=unknown. Your user_id=unknown",
    );
    s.admin_post(
        "/user/new",
        &json!({"user_id": "some-user", "auto_create_key": false}),
    )
    .assert_status(200);
    // An internal user may create keys for itself (litellm-compat.md §5.1), owned by itself.
    let own = s.post("/key/generate", Some(&key), "{}");
    own.assert_status(200);
    assert_eq!(own.json()["user_id"], "some-user", "{}", own.body);
    for route in ["/user/new", "/team/new", "/customer/new", "/budget/new"] {
        let err = s
            .post(route, Some(&key), "{}")
            .assert_error(401, "auth_error");
        let message = err["message"].as_str().unwrap_or_default();
        let expected = format!(
            "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route={route}. Your role=internal_user. Your user_id="
        );
        assert!(message.starts_with(&expected), "message: {message}");
    }
    s.post("/key/generate", Some("not-an-sk-key-at-all"), "{}")
        .assert_error(401, "auth_error");
}

#[test]
fn key_info_and_user_info() {
    let s = Stack::default_config();
    let (key, generated) = s.generate_key(json!({"models": ["gpt-4o"], "key_alias": "info-test"}));
    let token = sha256_hex(&key);
    for asked in [key.as_str(), token.as_str()] {
        let resp = s.get(&format!("/key/info?key={asked}"), Some(MASTER_KEY));
        resp.assert_status(200);
        let v = resp.json();
        assert_eq!(v["key"], asked);
        let info = &v["info"];
        assert_eq!(info["models"], json!(["gpt-4o"]), "{}", resp.body);
        assert_eq!(info["key_alias"], "info-test");
        assert_eq!(info["key_name"], generated["key_name"]);
        assert_eq!(info["status"], "active");
        assert!(
            info.get("token").is_none(),
            "info must not carry the token: {info}"
        );
        if asked == token {
            assert!(
                !resp.body.contains(&key),
                "raw key in /key/info: {}",
                resp.body
            );
        }
    }
    let err = s
        .get("/key/info?key=sk-no-such-key-000000000", Some(MASTER_KEY))
        .assert_error(404, "not_found_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Key not found"),
        "{err}"
    );

    let resp = s.admin_post(
        "/user/new",
        &json!({"user_id": "info-user", "models": ["gpt-4o-mini"], "max_budget": 5.0}),
    );
    resp.assert_status(200);
    let user_key = resp.json()["key"].as_str().expect("key").to_string();
    let resp = s.get("/user/info?user_id=info-user", Some(MASTER_KEY));
    resp.assert_status(200);
    let v = resp.json();
    assert_eq!(v["user_id"], "info-user");
    assert_eq!(v["user_info"]["models"], json!(["gpt-4o-mini"]));
    assert_eq!(v["user_info"]["max_budget"], 5.0);
    let tokens: Vec<&str> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["token"].as_str())
        .collect();
    assert_eq!(tokens, vec![sha256_hex(&user_key)], "{}", resp.body);
    // No admin rights needed for a user's own info.
    s.get("/user/info", Some(&user_key)).assert_status(200);
}

#[test]
fn custom_keys_are_validated_and_work() {
    let s = Stack::default_config();
    s.admin_post("/key/generate", &json!({"key": "sk-short"}))
        .assert_error(400, "invalid_request_error");
    let err = s
        .admin_post("/key/generate", &json!({"key": "pk-0123456789abcdefgh"}))
        .assert_error(400, "invalid_request_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Invalid key format. LiteLLM Virtual Key must start with 'sk-'"),
        "{err}"
    );

    let custom = "sk-my-custom-key-0123456789";
    let (key, v) = s.generate_key(json!({"key": custom, "models": ["gpt-4o-mini"]}));
    assert_eq!(key, custom);
    assert_eq!(v["token"], sha256_hex(custom));
    assert_eq!(v["key_name"], "sk-...6789");
    assert_chat_ok(&s.chat(Some(custom), "gpt-4o-mini"));
    assert_model_denied(&s.chat(Some(custom), "gpt-4o"), "key", "gpt-4o");
}

#[test]
fn invalid_budgets_are_400() {
    let s = Stack::default_config();
    let err = s
        .admin_post("/key/generate", &json!({"max_budget": -1}))
        .assert_error(400, "invalid_request_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_budget must be a non-negative finite number"),
        "{err}"
    );
    s.admin_post("/key/generate", &json!({"budget_duration": "soon"}))
        .assert_error(400, "invalid_request_error");
    s.admin_post("/key/generate", &json!({"budget_duration": "1x"}))
        .assert_error(400, "invalid_request_error");
    s.admin_post("/user/new", &json!({"user_id": "neg", "max_budget": -5}))
        .assert_error(400, "invalid_request_error");
    // Valid ones are accepted.
    s.admin_post(
        "/key/generate",
        &json!({"max_budget": 0, "budget_duration": "30d"}),
    )
    .assert_status(200);
    s.admin_post("/user/new", &json!({"user_id": "neg", "max_budget": 5}))
        .assert_status(200);
}

#[test]
fn duplicate_user_is_409() {
    let s = Stack::default_config();
    s.admin_post("/user/new", &json!({"user_id": "dup-user"}))
        .assert_status(200);
    s.admin_post("/user/new", &json!({"user_id": "dup-user"}))
        .assert_error_message(
            409,
            "invalid_request_error",
            "{'error': 'User with id dup-user already exists'}",
        );
    s.admin_post(
        "/user/new",
        &json!({"user_id": "mail-1", "user_email": "a@example.com"}),
    )
    .assert_status(200);
    s.admin_post(
        "/user/new",
        &json!({"user_id": "mail-2", "user_email": "a@example.com"}),
    )
    .assert_error(409, "invalid_request_error");
}

#[test]
fn health_endpoints_answer_through_envoy() {
    let s = Stack::default_config();
    for path in ["/health/liveliness", "/health/readiness"] {
        let resp = s.get(path, None);
        resp.assert_status(200);
        assert_eq!(resp.header("server"), Some("envoy"), "{path}");
        resp.json();
    }
}

/// The client cannot choose the upstream cluster, and the sidecar's internal key endpoint is
/// not reachable through Envoy (even with the right internal bearer).
#[test]
fn clients_cannot_reach_upstreams_or_internal_endpoints_directly() {
    let s = Stack::default_config();
    let cluster = format!("tollgate_upstream_127_0_0_1_{}", s.fake_port);
    let provider_bearer = format!("Bearer {PROVIDER_KEY}");
    let resp = s.request(
        "GET",
        "/fake/requests",
        &[("x-tollgate-cluster", &cluster)],
        None,
    );
    assert_eq!(
        resp.status, 404,
        "smuggled cluster header was routed: {}",
        resp.body
    );
    let resp = s.request(
        "POST",
        "/key/generate",
        &[
            ("x-tollgate-cluster", &cluster),
            ("authorization", &provider_bearer),
            ("content-type", "application/json"),
        ],
        Some("{}"),
    );
    // It reached the sidecar (which does not know the provider key), not the fake upstream.
    resp.assert_error(401, "token_not_found_in_db");
    s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("x-tollgate-cluster", &cluster),
            ("content-type", "application/json"),
        ],
        Some(&chat_body("gpt-4o-mini")),
    )
    .assert_error_message(401, "auth_error", NO_KEY);
    assert!(s.fake_requests().is_empty(), "{:#?}", s.fake_requests());

    let (key, _) = s.generate_key(json!({}));
    let internal = format!(
        "Bearer {}",
        sha256_hex(&format!("tollgate-internal:{MASTER_KEY}"))
    );
    let resp = s.request(
        "GET",
        &format!("/tollgate/internal/v1/keys/{}", sha256_hex(&key)),
        &[("authorization", &internal)],
        None,
    );
    assert_eq!(resp.status, 404, "internal endpoint exposed: {}", resp.body);
}

// ---------------------------------------------------------------------------------------------
// Persistence and configuration

#[test]
fn keys_survive_a_restart_on_the_same_data_dir() {
    let data = TempDir::new("persist");
    let (key, user_key) = {
        let s = Stack::start_with_data_dir(DEFAULT_CONFIG, data.path());
        let (key, _) = s.generate_key(json!({"models": ["gpt-4o-mini"]}));
        assert_chat_ok(&s.chat(Some(&key), "gpt-4o-mini"));
        let resp = s.admin_post(
            "/user/new",
            &json!({"user_id": "persisted-user", "models": ["gpt-4o"]}),
        );
        resp.assert_status(200);
        let user_key = resp.json()["key"].as_str().expect("key").to_string();
        (key, user_key)
        // The stack (sidecar and Envoy) stops here.
    };
    let s = Stack::start_with_data_dir(DEFAULT_CONFIG, data.path());
    assert_chat_ok(&s.chat(Some(&key), "gpt-4o-mini"));
    assert_model_denied(&s.chat(Some(&key), "gpt-4o"), "key", "gpt-4o");
    assert_chat_ok(&s.chat(Some(&user_key), "gpt-4o"));
    s.get(&format!("/key/info?key={key}"), Some(MASTER_KEY))
        .assert_status(200);
    s.get("/user/info?user_id=persisted-user", Some(MASTER_KEY))
        .assert_status(200);
    s.admin_post("/user/new", &json!({"user_id": "persisted-user"}))
        .assert_error(409, "invalid_request_error");
}

const ENV_CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: os.environ/TG_IT_PROVIDER_KEY
environment_variables:
  TG_IT_PROVIDER_KEY: @PROVIDER_KEY@
"#;

#[test]
fn master_key_from_litellm_master_key_env_and_os_environ_refs() {
    // No master_key in the config: LITELLM_MASTER_KEY is used; the provider key comes through
    // environment_variables + os.environ/ (the fake refuses a wrong one with 401).
    let s = Stack::start_with(StackOptions {
        config: ENV_CONFIG.to_string(),
        env: vec![("LITELLM_MASTER_KEY".into(), MASTER_KEY.into())],
        ..Default::default()
    });
    assert_chat_ok(&s.chat(Some(MASTER_KEY), "gpt-4o-mini"));
    let (key, _) = s.generate_key(json!({}));
    assert_chat_ok(&s.chat(Some(&key), "gpt-4o-mini"));
    drop(s);

    // master_key: os.environ/NAME
    let config = format!("{ENV_CONFIG}general_settings:\n  master_key: os.environ/TG_IT_MASTER\n");
    let s = Stack::start_with(StackOptions {
        config,
        env: vec![("TG_IT_MASTER".into(), MASTER_KEY.into())],
        ..Default::default()
    });
    assert_chat_ok(&s.chat(Some(MASTER_KEY), "gpt-4o-mini"));
    s.chat(Some("sk-some-other-key-00000000"), "gpt-4o-mini")
        .assert_error(401, "token_not_found_in_db");
}

/// `tollgate up` with these arguments must exit non-zero, quickly, saying why.
fn up_must_fail(config: &str, wasm: &std::path::Path, env: &[(&str, &str)]) -> String {
    let dir = TempDir::new("upfail");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(
        &config_path,
        common::render_template(config, common::free_port()),
    )
    .expect("write config");
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("up")
        .arg("--config")
        .arg(&config_path)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &common::free_port().to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--wasm")
        .arg(wasm)
        .args([
            "--concurrency",
            "1",
            "--envoy-admin-port",
            "0",
            "--exit-on-stdin-eof",
        ])
        .env("ENVOY_BIN", envoy_bin())
        .env_remove("LITELLM_MASTER_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (status, stdout, stderr) = run_to_exit("tollgate up", &mut cmd, Duration::from_secs(60));
    assert!(
        !status.success(),
        "tollgate up should have failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("tollgate is ready on"),
        "it claimed to be ready:\n{stdout}"
    );
    assert!(!stderr.trim().is_empty(), "no message on stderr");
    stderr
}

#[test]
fn up_fails_fast_with_a_broken_wasm() {
    let dir = TempDir::new("badwasm");
    let missing = dir.path().join("no-such-dir/tollgate.wasm");
    let stderr = up_must_fail(DEFAULT_CONFIG, &missing, &[]);
    assert!(
        stderr.contains("no-such-dir/tollgate.wasm") && stderr.contains("not found"),
        "stderr: {stderr}"
    );

    // A file that is not a Wasm module: Envoy refuses it and `up` reports Envoy's log.
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not a wasm module\n".repeat(40)).expect("write");
    let stderr = up_must_fail(DEFAULT_CONFIG, &garbage, &[]);
    assert!(
        stderr.contains("Envoy") && stderr.to_ascii_lowercase().contains("wasm"),
        "stderr: {stderr}"
    );
}

#[test]
fn up_fails_fast_without_a_master_key() {
    let no_master = DEFAULT_CONFIG.replace("  master_key: @MASTER_KEY@\n", "");
    assert!(!no_master.contains("master_key"));
    let stderr = up_must_fail(&no_master, &tollgate_wasm(), &[]);
    assert!(stderr.contains("master key"), "stderr: {stderr}");
    // An os.environ/ reference to an unset variable is no master key either.
    let unresolved = DEFAULT_CONFIG.replace("@MASTER_KEY@", "os.environ/TG_IT_UNSET_MASTER_KEY");
    let stderr = up_must_fail(&unresolved, &tollgate_wasm(), &[]);
    assert!(stderr.contains("master key"), "stderr: {stderr}");
}

fn render(config_path: &std::path::Path, format: &str) -> String {
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("render")
        .arg("--config")
        .arg(config_path)
        .args(["--format", format])
        .arg("--wasm")
        .arg(tollgate_wasm())
        .env_remove("LITELLM_MASTER_KEY");
    let (status, stdout, stderr) =
        run_to_exit("tollgate render", &mut cmd, Duration::from_secs(30));
    assert!(
        status.success(),
        "render --format {format} failed: {stderr}"
    );
    stdout
}

#[test]
fn render_outputs_are_deployable() {
    let dir = TempDir::new("render");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, common::render_template(DEFAULT_CONFIG, 18089)).expect("write");

    // Envoy bootstrap: accepted by `envoy --mode validate`.
    let envoy_yaml = render(&config_path, "envoy");
    let rendered = dir.path().join("envoy.yaml");
    std::fs::write(&rendered, &envoy_yaml).expect("write");
    let mut cmd = Command::new(envoy_bin());
    cmd.args(["--mode", "validate", "-c"]).arg(&rendered).args([
        "--log-level",
        "error",
        "--disable-hot-restart",
    ]);
    let (status, stdout, stderr) =
        run_to_exit("envoy --mode validate", &mut cmd, Duration::from_secs(60));
    assert!(
        status.success(),
        "envoy --mode validate rejected the rendered bootstrap\nstdout:\n{stdout}\nstderr:\n{stderr}\nconfig:\n{envoy_yaml}"
    );

    // Plugin configuration: JSON with every deployment, the master key only as a hash.
    let plugin_text = render(&config_path, "plugin");
    let plugin: Value = serde_json::from_str(&plugin_text).expect("plugin config is JSON");
    let deployments = plugin["deployments"].as_array().expect("deployments");
    let names: Vec<&str> = deployments
        .iter()
        .filter_map(|d| d["model_name"].as_str())
        .collect();
    assert_eq!(names, DEFAULT_MODELS.to_vec());
    assert_eq!(deployments[0]["backend_model"], "gpt-4o-mini-backend");
    assert_eq!(deployments[0]["base_path"], "/v1");
    // Provider keys stay with the sidecar; the filter fetches them at start.
    assert_eq!(deployments[0]["api_key"], Value::Null);
    assert!(!plugin_text.contains(PROVIDER_KEY), "{plugin_text}");
    assert!(
        !envoy_yaml.contains(PROVIDER_KEY),
        "provider key in the Envoy bootstrap"
    );
    assert_eq!(deployments[1]["access_groups"], json!(["premium"]));
    assert_eq!(deployments[4]["provider"], "groq");
    assert_eq!(deployments[4]["backend_model"], "llama-3-70b-versatile");
    assert_eq!(plugin["master_key_hash"], sha256_hex(MASTER_KEY));
    assert!(
        !plugin_text.contains(MASTER_KEY),
        "the raw master key must not be in the plugin configuration"
    );

    // Istio manifests: this config writes provider keys inline, and a config.yaml becomes a
    // ConfigMap, so render refuses it (tests/istio.rs renders and runs a proper one).
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("render")
        .arg("--config")
        .arg(&config_path)
        .args(["--format", "istio", "--wasm"])
        .arg(tollgate_wasm())
        .env_remove("LITELLM_MASTER_KEY");
    let (status, stdout, stderr) =
        run_to_exit("tollgate render", &mut cmd, Duration::from_secs(30));
    assert!(!status.success(), "{stdout}");
    assert!(stderr.contains("os.environ/NAME"), "{stderr}");
    assert!(!stdout.contains(PROVIDER_KEY) && !stderr.contains(PROVIDER_KEY));
}
