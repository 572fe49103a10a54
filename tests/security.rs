#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Security promises (SECURITY.md; issue 7, item 4): keys are stored and logged only as hashes
//! or `sk-...abcd`; admin routes need the master key (or an admin's key); a virtual key cannot
//! reach admin-only routes; the provider key never reaches a client; admin bodies are bounded.

mod common;

use common::{sha256_hex, Stack, MASTER_KEY, PROVIDER_KEY};
use serde_json::{json, Value};
use std::path::Path;

const CONFIG: &str = r#"
model_list:
  - model_name: priced
    litellm_params:
      model: openai/priced-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: @PROVIDER_KEY@
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
general_settings:
  master_key: @MASTER_KEY@
"#;

fn chat_body(stream: bool) -> String {
    json!({
        "model": "priced",
        "max_tokens": 3,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}]
    })
    .to_string()
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// After keys were generated, used, refused, looked up, updated, regenerated and deleted, no
/// file the stack wrote (SQLite database and its WAL, Envoy's log, the sidecar's and the fake's
/// output, the rendered Envoy config) holds a raw virtual key; the SQLite file does hold their
/// hashes (so the search looked in the right place). The master key appears only in the
/// operator's own config.yaml.
#[test]
fn raw_keys_are_never_stored_or_logged() {
    let s = Stack::start(CONFIG);
    let mut raw_keys = Vec::new();
    let (a, _) = s.generate_key(json!({"key_alias": "alpha"}));
    let (b, _) = s.generate_key(json!({"key": "sk-custom-chosen-key-123456"}));
    let (c, _) = s.generate_key(json!({"max_budget": 0}));
    raw_keys.extend([a.clone(), b.clone(), c.clone()]);
    for key in [&a, &b] {
        s.post_with("/v1/chat/completions", key, &[], &chat_body(false))
            .assert_status(200);
        s.post_with("/v1/chat/completions", key, &[], &chat_body(true))
            .assert_status(200);
        s.post_with("/v1/chat/completions", key, &[], "{not json")
            .assert_status(400);
        s.get(&format!("/key/info?key={key}"), Some(MASTER_KEY))
            .assert_status(200);
        s.get("/key/info", Some(key)).assert_status(200);
        s.get("/v1/models", Some(key)).assert_status(200);
    }
    s.post_with("/v1/chat/completions", &c, &[], &chat_body(false))
        .assert_status(422);
    // Unknown keys, refused at the filter and at the admin API.
    let unknown = "sk-unknown-key-never-issued-0001";
    raw_keys.push(unknown.to_string());
    s.post_with("/v1/chat/completions", unknown, &[], &chat_body(false))
        .assert_status(401);
    s.get("/key/list", Some(unknown)).assert_status(401);
    // Update, regenerate (the old key dies, the new one is used) and delete.
    s.admin_post("/key/update", &json!({"key": a, "max_budget": 10}))
        .assert_status(200);
    let regen = s.admin_post("/key/regenerate", &json!({"key": b}));
    regen.assert_status(200);
    let new_b = regen.json()["key"].as_str().unwrap().to_string();
    raw_keys.push(new_b.clone());
    s.post_with("/v1/chat/completions", &new_b, &[], &chat_body(false))
        .assert_status(200);
    s.admin_post("/key/delete", &json!({"keys": [c]}))
        .assert_status(200);
    // The spend flush has run (the rows are in the store).
    s.wait_spend_logs(&a, 2);

    let mut paths = Vec::new();
    files(&s.data_dir, &mut paths);
    files(s.scratch_dir(), &mut paths);
    match common::test_store_database(&s.data_dir) {
        // On PostgreSQL the store is what the database holds, and the server's log.
        Some(db) => {
            let pg = common::postgres::shared();
            let dumped = s.scratch_dir().join("store-dump.sql");
            std::fs::write(&dumped, pg.dump(&db)).unwrap();
            let log = pg.server_log();
            assert!(
                log.is_file(),
                "no PostgreSQL server log at {}",
                log.display()
            );
            paths.extend([dumped, log]);
        }
        None => assert!(
            paths.iter().any(
                |p| p.extension().is_some_and(|e| e == "db" || e == "sqlite")
                    || p.to_string_lossy().contains("sqlite")
                    || p.to_string_lossy().ends_with(".db-wal")
            ),
            "no SQLite file found among {paths:?}"
        ),
    }
    let mut hashes_found = 0;
    for path in &paths {
        let bytes = std::fs::read(path).unwrap_or_default();
        for key in &raw_keys {
            assert!(
                !contains(&bytes, key),
                "raw key {key} found in {}",
                path.display()
            );
            // Nor its body without the `sk-` prefix.
            assert!(
                !contains(&bytes, &key[3..]),
                "raw key body of {key} found in {}",
                path.display()
            );
        }
        if path.file_name().is_some_and(|n| n != "config.yaml") {
            assert!(
                !contains(&bytes, MASTER_KEY),
                "master key found in {}",
                path.display()
            );
        }
        hashes_found += raw_keys[..3]
            .iter()
            .filter(|k| contains(&bytes, &sha256_hex(k)))
            .count();
    }
    assert!(
        hashes_found >= 3,
        "the key hashes should be in the store: found {hashes_found} in {paths:?}"
    );
    eprintln!(
        "security: searched {} files for {} raw keys",
        paths.len(),
        raw_keys.len()
    );
}

/// Admin routes without a credential, with a wrong one or a near-miss of the master key: 401 in
/// LiteLLM's envelope, and nothing changed.
#[test]
fn admin_routes_need_the_master_key() {
    let s = Stack::start(CONFIG);
    let near_misses = [
        None,
        Some("sk-wrong".to_string()),
        Some(format!("{MASTER_KEY}x")),
        Some(MASTER_KEY[..MASTER_KEY.len() - 1].to_string()),
        Some(MASTER_KEY.to_uppercase()),
        Some(format!(" {MASTER_KEY}x ")),
        Some(sha256_hex(MASTER_KEY)),
    ];
    let posts = [
        "/key/generate",
        "/key/update",
        "/key/delete",
        "/key/block",
        "/key/regenerate",
        "/user/new",
        "/user/update",
        "/user/delete",
        "/team/new",
        "/team/update",
        "/team/delete",
        "/team/member_add",
        "/customer/new",
        "/customer/block",
        "/end_user/new",
        "/budget/new",
        "/budget/delete",
    ];
    let gets = [
        "/key/list",
        "/key/info?key=sk-x",
        "/user/list",
        "/user/info?user_id=u",
        "/team/list",
        "/customer/list",
        "/budget/list",
        "/spend/logs",
        "/global/spend",
        "/model/info",
    ];
    let mut tried = 0;
    for auth in &near_misses {
        for path in posts {
            let r = s.post(
                path,
                auth.as_deref(),
                &json!({"user_id": "x", "team_id": "t", "keys": ["sk-x"]}).to_string(),
            );
            assert_401(&r, path, auth);
            tried += 1;
        }
        for path in gets {
            let r = s.get(path, auth.as_deref());
            assert_401(&r, path, auth);
            tried += 1;
        }
    }
    // Nothing was created.
    let keys = s.get("/key/list", Some(MASTER_KEY));
    keys.assert_status(200);
    assert_eq!(keys.json()["keys"], json!([]), "{}", keys.body);
    let users = s.get("/user/list", Some(MASTER_KEY));
    users.assert_status(200);
    assert!(!users.body.contains("\"x\""), "{}", users.body);
    // The filter's internal endpoints are not reachable through Envoy at all.
    for path in [
        "/tollgate/internal/v1/keys/abc",
        "/tollgate/internal/v1/changes?since=0",
        "/tollgate/internal/v1/provider-keys",
    ] {
        s.get(path, Some(MASTER_KEY)).assert_status(404);
        tried += 1;
    }
    eprintln!("security: {tried} unauthenticated admin requests refused");
}

/// 401 in LiteLLM's envelope: `auth_error`, or `token_not_found_in_db` for an `sk-` key that
/// does not exist.
fn assert_401(r: &common::Resp, path: &str, auth: &Option<String>) {
    assert_eq!(r.status, 401, "{path} with {auth:?}: {}", r.body);
    let v = r.json();
    let t = v["error"]["type"].as_str().unwrap_or_default().to_string();
    assert!(
        t == "auth_error" || t == "token_not_found_in_db",
        "{path} with {auth:?}: {}",
        r.body
    );
    assert_eq!(v["error"]["code"], "401", "{}", r.body);
}

/// A virtual key of an internal user may read its own key, but every admin-only route refuses
/// it (401 or 403, LiteLLM's words), and nothing changes. The keys belong to users, so they
/// authenticate and the refusals come from the rights table, not from a key without a role.
#[test]
fn virtual_key_cannot_reach_admin_only_routes() {
    let s = Stack::start(CONFIG);
    for user in ["alice", "bob"] {
        s.post(
            "/user/new",
            Some(MASTER_KEY),
            &json!({"user_id": user, "auto_create_key": false}).to_string(),
        )
        .assert_status(200);
    }
    let (key, _) = s.generate_key(json!({"max_budget": 1, "user_id": "alice"}));
    let (other, _) = s.generate_key(json!({"max_budget": 1, "user_id": "bob"}));
    s.get("/key/info", Some(&key)).assert_status(200);
    let attempts: Vec<(&str, Value)> = vec![
        (
            "/user/new",
            json!({"user_id": "evil", "user_role": "proxy_admin"}),
        ),
        ("/team/new", json!({"team_id": "evil-team"})),
        ("/customer/new", json!({"user_id": "evil-customer"})),
        (
            "/budget/new",
            json!({"budget_id": "evil-budget", "max_budget": 1e9}),
        ),
        ("/key/update", json!({"key": other, "max_budget": 1e9})),
        ("/key/update", json!({"key": key, "max_budget": 1e9})),
        ("/key/update", json!({"key": key, "spend": 0})),
        ("/key/block", json!({"key": other})),
        ("/key/delete", json!({"keys": [other]})),
        ("/key/regenerate", json!({"key": other})),
        ("/key/generate", json!({"user_id": "someone-else"})),
    ];
    let mut tried = 0;
    for (path, body) in &attempts {
        let r = s.post(path, Some(&key), &body.to_string());
        // 401/403 (not allowed) or 400 (a limit above the caller's own): refused either way.
        assert!(
            matches!(r.status, 400 | 401 | 403),
            "{path} {body} as a virtual key: {} {}",
            r.status,
            r.body
        );
        let err = r.json()["error"].clone();
        assert_eq!(
            err["code"],
            Value::String(r.status.to_string()),
            "{}",
            r.body
        );
        tried += 1;
    }
    for path in [
        "/user/list",
        "/customer/list",
        "/budget/list",
        "/global/spend",
        &format!("/key/info?key={other}"),
    ] {
        let r = s.get(path, Some(&key));
        assert!(
            r.status == 401 || r.status == 403,
            "GET {path} as a virtual key: {} {}",
            r.status,
            r.body
        );
        tried += 1;
    }
    // Another user's spend logs are not visible to a virtual key, which does read its own.
    for k in [&key, &other] {
        s.post("/v1/chat/completions", Some(k), &chat_body(false))
            .assert_status(200);
        s.wait_spend_logs(k, 1);
    }
    for path in [format!("/spend/logs?api_key={other}"), "/spend/logs".into()] {
        let r = s.get(&path, Some(&key));
        r.assert_status(200);
        assert!(
            !r.body.contains(&sha256_hex(&other)),
            "another key's spend logs leaked: {}",
            r.body
        );
        tried += 1;
    }
    let own = s.get("/spend/logs", Some(&key));
    assert!(own.body.contains(&sha256_hex(&key)), "{}", own.body);
    // Nothing changed.
    let info = s.key_info(&other);
    assert_eq!(info["max_budget"].as_f64(), Some(1.0), "{info}");
    assert_ne!(info["blocked"], json!(true), "{info}");
    assert_eq!(s.key_info(&key)["max_budget"].as_f64(), Some(1.0));
    let users = s.get("/user/list", Some(MASTER_KEY));
    users.assert_status(200);
    assert!(!users.body.contains("evil"), "{}", users.body);
    eprintln!("security: {tried} admin-only requests with a virtual key refused");
}

/// The provider key is swapped in on the way upstream only: no answer a client can get, from
/// the LLM routes (success, stream, upstream errors that echo the key) or the admin API
/// (`/model/info`, `/key/info`, `/v1/models`), carries it, in a header or the body.
#[test]
fn provider_key_never_reaches_the_client() {
    let s = Stack::start(CONFIG);
    let (key, _) = s.generate_key(json!({}));
    let mut answers = Vec::new();
    for (extra, stream) in [
        (vec![], false),
        (vec![], true),
        (vec![("x-fake-mode", "echo-key")], false),
        (vec![("x-fake-mode", "echo-key")], true),
        (vec![("x-fake-status", "401")], false),
        (vec![("x-fake-status", "500")], true),
    ] {
        let r = s.post_with("/v1/chat/completions", &key, &extra, &chat_body(stream));
        answers.push((format!("chat {extra:?} stream={stream}"), r));
    }
    // The fake really did get (and echo) the key: the filter masked it.
    let echoed = &answers[2].1;
    assert_eq!(echoed.status, 401);
    let masked = format!("sk-...{}", &PROVIDER_KEY[PROVIDER_KEY.len() - 4..]);
    assert!(echoed.body.contains(&masked), "{}", echoed.body);
    for path in [
        "/model/info",
        "/v1/model/info",
        "/key/list",
        "/global/spend",
    ] {
        answers.push((path.to_string(), s.get(path, Some(MASTER_KEY))));
    }
    answers.push(("/key/info".into(), s.get("/key/info", Some(&key))));
    answers.push(("/v1/models".into(), s.get("/v1/models", Some(&key))));
    answers.push((
        "/model/info as key".into(),
        s.get("/model/info", Some(&key)),
    ));
    for (what, r) in &answers {
        assert!(
            !r.body.contains(PROVIDER_KEY),
            "{what}: provider key in the body: {}",
            r.body
        );
        for (name, value) in &r.headers {
            assert!(
                !value.contains(PROVIDER_KEY),
                "{what}: provider key in header {name}"
            );
        }
    }
    eprintln!(
        "security: {} answers free of the provider key",
        answers.len()
    );
}

/// Admin request bodies are bounded (1 MiB): a bigger one is refused with 413 before it is
/// parsed, and nothing is created.
#[test]
fn admin_request_bodies_are_bounded() {
    let s = Stack::start(CONFIG);
    let big = json!({"metadata": {"pad": "z".repeat(2 * 1024 * 1024)}}).to_string();
    let r = s.post("/key/generate", Some(MASTER_KEY), &big);
    r.assert_error(413, "invalid_request_error");
    let r = s.post("/user/new", Some(MASTER_KEY), &big);
    r.assert_error(413, "invalid_request_error");
    // Just under the limit is fine.
    let ok = json!({"metadata": {"pad": "z".repeat(512 * 1024)}}).to_string();
    s.post("/key/generate", Some(MASTER_KEY), &ok)
        .assert_status(200);
    let keys = s.get("/key/list", Some(MASTER_KEY));
    assert_eq!(
        keys.json()["keys"].as_array().map(Vec::len),
        Some(1),
        "{}",
        keys.body
    );
}

/// Issue 12, item 1, as reported: a key that belongs to no user, with a tiny budget and one
/// model, cannot mint a key (LiteLLM gives it no role); an internal user's key mints only keys
/// inside its own limits, and such a key cannot call a model its parent may not.
#[test]
fn a_key_without_user_cannot_mint_an_unrestricted_key() {
    let s = Stack::default_config();
    let (parent, _) = s.generate_key(json!({"max_budget": 0.000001, "models": ["gpt-4o-mini"]}));
    s.chat(Some(&parent), "gpt-4o-mini").assert_status(200);
    let r = s.post(
        "/key/generate",
        Some(&parent),
        &json!({"models": ["gpt-4o"]}).to_string(),
    );
    r.assert_error_message(
        401,
        "auth_error",
        "Authentication Error, Only proxy admin can be used to generate, delete, update info for new keys/users/teams. Route=/key/generate. Your role=unknown. Your user_id=unknown",
    );
    s.chat(Some(&parent), "gpt-4o").assert_status(403);

    s.admin_post(
        "/user/new",
        // A user budget covering all her keys: a key-level budget alone cannot mint keys.
        &json!({"user_id": "alice", "auto_create_key": false, "max_budget": 10}),
    )
    .assert_status(200);
    let (alice, _) =
        s.generate_key(json!({"user_id": "alice", "max_budget": 1, "models": ["gpt-4o-mini"]}));
    let r = s.post(
        "/key/generate",
        Some(&alice),
        &json!({"models": ["gpt-4o"]}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.post(
        "/key/generate",
        Some(&alice),
        &json!({"max_budget": 100}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.post("/key/generate", Some(&alice), "{}");
    r.assert_status(200);
    let child = r.json();
    assert_eq!(child["max_budget"].as_f64(), Some(1.0), "{child}");
    assert_eq!(child["models"], json!(["gpt-4o-mini"]), "{child}");
    let child = child["key"].as_str().unwrap().to_string();
    s.chat(Some(&child), "gpt-4o-mini").assert_status(200);
    s.chat(Some(&child), "gpt-4o").assert_status(403);
}

/// Issue 12, item 9: a second `tollgate up` on a port a running stack holds refuses to start,
/// and the first stack keeps answering every call.
#[test]
fn a_second_up_on_a_taken_port_refuses_to_start() {
    let s = Stack::start(CONFIG);
    let (key, _) = s.generate_key(json!({}));
    let scratch = common::TempDir::new("second-up");
    let config = scratch.path().join("config.yaml");
    std::fs::write(&config, common::render_template(CONFIG, s.fake_port)).unwrap();
    let (status, out, err) = common::run_to_exit(
        "second tollgate up",
        std::process::Command::new(common::tollgate_bin())
            .arg("up")
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &s.port.to_string()])
            .arg("--data-dir")
            .arg(scratch.path().join("data"))
            .arg("--wasm")
            .arg(common::tollgate_wasm())
            .env("ENVOY_BIN", common::envoy_bin()),
        std::time::Duration::from_secs(60),
    );
    assert!(!status.success(), "the second stack started:\n{out}\n{err}");
    assert!(
        err.contains(&format!(
            "port {} is in use; pick another with --port or PORT=",
            s.port
        )),
        "{err}"
    );
    assert!(!out.contains("ready"), "{out}");
    for _ in 0..10 {
        s.post("/v1/chat/completions", Some(&key), &chat_body(false))
            .assert_status(200);
    }
    // The race after the check: a listener without SO_REUSEPORT cannot be shared.
    let bootstrap = std::fs::read_to_string(s.data_dir.join("envoy.yaml")).unwrap();
    assert!(
        bootstrap.contains("enable_reuse_port: false"),
        "the listener must not share its port:\n{bootstrap}"
    );
}
