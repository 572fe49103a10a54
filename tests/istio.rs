#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Istio install, without a cluster: the manifests of `tollgate render --format istio`
//! turned into the Envoy configuration Istio gives the gateway (see `common/istio.rs`), and the
//! request path run through it: keys, provider key insertion, budgets, rate limits, the admin
//! API and health through the gateway routes, internal paths hidden, fail-closed start.

mod common;

use common::istio::{IstioStack, ISTIO_CONFIG};
use common::{poll_until, Stack, MASTER_KEY, PROVIDER_KEY, SETTLE_TIMEOUT};
use serde_json::{json, Value};
use std::time::Duration;

/// One 12-letter user message: 10 prompt tokens at the fake as OpenAI counts them (3 per
/// message + "user" 1 + 3 for the text + 3 to prime the reply); 5 completion tokens: $0.02 a
/// call on the priced model (0.001 in, 0.002 out).
fn priced_body() -> String {
    json!({
        "model": "gpt-4o-mini",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "abcdefghijkl"}]
    })
    .to_string()
}

fn chat(s: &Stack, key: &str) -> common::Resp {
    s.post("/v1/chat/completions", Some(key), &priced_body())
}

#[test]
fn istio_shaped_gateway_serves_keys_budgets_limits_the_admin_api_and_metrics() {
    let IstioStack {
        stack: s,
        manifests,
        admin_port,
    } = Stack::start_istio(ISTIO_CONFIG, false);
    // No secret in any rendered document; no WasmPlugin (it cannot carry the Envoy flag).
    assert!(!manifests.contains(PROVIDER_KEY), "provider key rendered");
    assert!(!manifests.contains(MASTER_KEY), "master key rendered");
    assert!(!manifests.contains("kind: WasmPlugin"));

    // Admin API and health through the gateway's catch-all route to the sidecar.
    s.get("/health/readiness", None).assert_status(200);
    let (key, _) = s.generate_key(json!({"max_budget": 0.04}));
    let info = s.get(&format!("/key/info?key={key}"), Some(MASTER_KEY));
    info.assert_status(200);
    // Internal paths are not reachable through the gateway.
    let hidden = s.get("/tollgate/internal/v1/provider-keys", Some(MASTER_KEY));
    hidden.assert_status(404);
    assert!(!hidden.body.contains(PROVIDER_KEY));

    // A virtual key's call reaches the provider with the provider key (the fake refuses any
    // other) through the `outbound|PORT||HOST` route, without Tollgate's routing header.
    s.clear_fake_requests();
    let ok = chat(&s, &key);
    ok.assert_status(200);
    let seen = s.fake_requests();
    let headers = &seen.last().expect("the fake saw the call")["headers"];
    assert_eq!(
        headers["authorization"],
        Value::String(format!("Bearer {PROVIDER_KEY}")),
        "{seen:?}"
    );
    assert!(headers.get("x-tollgate-cluster").is_none(), "{headers}");

    // Unknown keys are refused by the filter.
    let bad = chat(&s, "sk-not-a-real-key-000000");
    bad.assert_error(401, "token_not_found_in_db");

    // Budget: $0.04 holds two calls of $0.02; the third is refused with LiteLLM's 422.
    chat(&s, &key).assert_status(200);
    s.wait_key_spend(&key, 0.04);
    let refused = chat(&s, &key);
    refused.assert_error(422, "budget_exceeded");

    // Rate limit: rpm 1 admits one call, then 429.
    let (limited, _) = s.generate_key(json!({"rpm_limit": 1}));
    chat(&s, &limited).assert_status(200);
    let over = chat(&s, &limited);
    assert_eq!(over.status, 429, "{}", over.body);

    // The filter's metrics on the gateway's `/stats/prometheus`, labelled, under the stats
    // config Istio builds from `render --format istio-gateway`: three calls admitted, one
    // refused per reason, each with its admission time.
    use common::prometheus::{envoy_stats, one, parse, values};
    let stats = poll_until("the gateway's tollgate metrics", SETTLE_TIMEOUT, || {
        let r = envoy_stats(admin_port);
        let e = parse(&r.body);
        // Histograms are merged at Envoy's stats flush (5 s).
        let timed = values(&e, "tollgate_admission_time_us_count", &[]);
        if timed.iter().sum::<f64>() == 6.0 {
            Ok(e)
        } else {
            Err(format!("{}: {}", r.status, r.body))
        }
    });
    let requests = |outcome: &str, upstream: &str| {
        one(
            &stats,
            "tollgate_requests_total",
            &[("outcome", outcome), ("upstream", upstream)],
        )
    };
    assert_eq!(requests("admitted", "2xx"), 3.0);
    for outcome in ["auth", "budget", "rate_limit"] {
        assert_eq!(requests(outcome, "none"), 1.0, "{outcome}");
        assert_eq!(
            one(
                &stats,
                "tollgate_admission_time_us_count",
                &[("outcome", outcome)]
            ),
            1.0
        );
    }
    assert_eq!(
        one(
            &stats,
            "tollgate_admission_time_us_count",
            &[("outcome", "admitted")]
        ),
        3.0
    );
    assert_eq!(
        one(
            &stats,
            "tollgate_key_lookups_total",
            &[("result", "sidecar")]
        ),
        3.0
    );
    // Istio's stats matcher is in force: Envoy's cluster stats are not kept.
    assert!(
        !stats
            .iter()
            .any(|(name, _, _)| name.starts_with("envoy_cluster_upstream_rq")),
        "the gateway kept stats Istio's matcher excludes"
    );
}

#[test]
fn istio_shaped_gateway_fails_closed_until_the_sidecar_hands_over_provider_keys() {
    let IstioStack { stack: mut s, .. } = Stack::start_istio(ISTIO_CONFIG, true);
    // The master key needs no lookup, so only the missing provider keys stop the call.
    let waiting = chat(&s, MASTER_KEY);
    let err = waiting.assert_error(503, "internal_server_error");
    assert!(
        err["message"].as_str().unwrap().contains("provider keys"),
        "{err}"
    );
    assert!(
        s.fake_requests().is_empty(),
        "nothing may reach the provider"
    );
    s.restart_sidecar();
    poll_until("the filter has the provider keys", SETTLE_TIMEOUT, || {
        let r = chat(&s, MASTER_KEY);
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
}

#[test]
fn rotated_provider_key_reaches_the_filter_without_a_restart() {
    let IstioStack { stack: s, .. } = Stack::start_istio(ISTIO_CONFIG, false);
    chat(&s, MASTER_KEY).assert_status(200);
    // Point the models at another variable (the sidecar's environment has the master key's
    // variable too: any other value than PROVIDER_KEY makes the fake answer 401).
    let path = s.scratch_dir().join("config.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace(
            "os.environ/TOLLGATE_IT_PROVIDER_KEY",
            "os.environ/TOLLGATE_IT_MASTER_KEY",
        ),
    )
    .unwrap();
    poll_until(
        "the filter uses the rotated key",
        Duration::from_secs(30),
        || {
            let r = chat(&s, MASTER_KEY);
            if r.status == 401 {
                Ok(())
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        },
    );
    let seen = s.fake_requests();
    assert_eq!(
        seen.last().unwrap()["headers"]["authorization"],
        Value::String(format!("Bearer {MASTER_KEY}"))
    );
}

/// `tollgate wasm-image` writes an OCI image layout of the module; with an `oci://` URL the
/// manifests pin that image's manifest digest (what istio-agent checks for OCI), otherwise the
/// module's own sha256 (what it checks for http(s)).
#[test]
fn oci_layout_digest_is_what_the_manifests_pin_for_oci_urls() {
    use common::{tollgate_bin, tollgate_wasm, TempDir};
    let run = |cmd: &mut std::process::Command| {
        common::run_to_exit("tollgate", cmd, Duration::from_secs(60))
    };
    let dir = TempDir::new("oci");
    let layout = dir.path().join("layout");
    let (status, digest, err) = run(std::process::Command::new(tollgate_bin())
        .args(["wasm-image", "--tag", "it"])
        .arg("--out")
        .arg(&layout)
        .arg("--wasm")
        .arg(tollgate_wasm()));
    assert!(status.success(), "{err}");
    let digest = digest.trim().to_string();
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], format!("sha256:{digest}"));
    assert!(layout.join("blobs/sha256").join(&digest).is_file());

    let config = dir.path().join("config.yaml");
    std::fs::write(&config, common::render_template(ISTIO_CONFIG, 18089)).unwrap();
    let render = |url: Option<&str>| {
        let mut cmd = std::process::Command::new(tollgate_bin());
        cmd.args(["render", "--format", "istio", "--config"])
            .arg(&config)
            .arg("--wasm")
            .arg(tollgate_wasm())
            .env(common::istio::MASTER_KEY_ENV, MASTER_KEY);
        if let Some(url) = url {
            cmd.args(["--wasm-url", url]);
        }
        let (status, out, err) = run(&mut cmd);
        assert!(status.success(), "{err}");
        out
    };
    let oci = render(Some("oci://registry.example/tollgate-wasm:it"));
    assert!(oci.contains(&format!("sha256: {digest}")), "{oci}");
    assert!(oci.contains("uri: oci://registry.example/tollgate-wasm:it"));
    let module = std::fs::read(tollgate_wasm()).unwrap();
    use sha2::Digest;
    let module_sha = hex::encode(sha2::Sha256::digest(&module));
    assert!(render(None).contains(&format!("sha256: {module_sha}")));
}
