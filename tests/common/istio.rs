//! An Istio-shaped stack: the manifests of `tollgate render --format istio`, turned into the
//! Envoy configuration Istio would hand its ingress gateway, run by a real Envoy in front of
//! `tollgate serve` and the fake upstream.
//!
//! The translation follows Istio's own rules (istio/istio, `pilot/pkg/networking/core/
//! envoyfilter` for the patches, `pilot/pkg/networking/core/route` for VirtualService routes,
//! `pkg/wasm/convert.go` for istio-agent's module download):
//! * the EnvoyFilter's `EXTENSION_CONFIG` ADD value becomes the ECDS resource, verbatim, except
//!   that (as istio-agent does) the TypedStruct is unpacked into the Wasm config and the
//!   `remote` code is fetched, checked against its sha256 and replaced by the local file;
//! * its `HTTP_FILTER` INSERT_BEFORE router value is the listener's filter (config_discovery
//!   of that name), before the router; its `LISTENER` MERGE sets the buffer limit;
//! * VirtualService routes become Envoy routes in order: header `exact` and uri `prefix`
//!   matches, `directResponse`, destination `host`+`port` as cluster `outbound|PORT||HOST`,
//!   request header removal, timeout;
//! * ServiceEntries and the sidecar's Service become `outbound|PORT||HOST` clusters;
//! * the gateway's proxy config (the `proxy.istio.io/config` annotation of
//!   `tollgate render --format istio-gateway`) becomes the bootstrap's `stats_config` as Istio's
//!   template (`tools/packaging/common/envoy_bootstrap.json`) makes it: no Envoy default tags,
//!   a `(TAG=\.=(.*?);\.;)` regex per `extraStatTags` entry, and a stats matcher keeping only
//!   `reporter=`, the `proxyStatsMatcher` inclusions, `component` and `istio`.
//!
//! What stands in for the cluster: Kubernetes DNS and EDS (the sidecar's Service host is
//! mapped to 127.0.0.1:its port) and ADS (the ECDS resource is read from a file).

use super::*;

/// Namespace the manifests are rendered for.
pub const NAMESPACE: &str = "tollgate-it";
/// The manifests name provider and master keys only as environment variables.
pub const PROVIDER_KEY_ENV: &str = "TOLLGATE_IT_PROVIDER_KEY";
pub const MASTER_KEY_ENV: &str = "TOLLGATE_IT_MASTER_KEY";

/// A config for Kubernetes: secrets only as `os.environ/` references.
pub const ISTIO_CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini-backend
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: os.environ/TOLLGATE_IT_PROVIDER_KEY
      input_cost_per_token: 0.001
      output_cost_per_token: 0.002
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:@FAKE_PORT@/v1
      api_key: os.environ/TOLLGATE_IT_PROVIDER_KEY
general_settings:
  master_key: os.environ/TOLLGATE_IT_MASTER_KEY
"#;

/// What a test gets besides the stack: the rendered manifests.
pub struct IstioStack {
    pub stack: Stack,
    pub manifests: String,
    /// The gateway Envoy's admin port (its `/stats/prometheus`).
    pub admin_port: u16,
}

fn docs_of(manifests: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(manifests)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|d: &Value| !d.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn patch<'a>(envoy_filter: &'a Value, apply_to: &str) -> &'a Value {
    envoy_filter["spec"]["configPatches"]
        .as_array()
        .expect("configPatches")
        .iter()
        .find(|p| p["applyTo"] == apply_to)
        .unwrap_or_else(|| panic!("no {apply_to} patch"))
}

fn outbound(port: &Value, host: &Value) -> String {
    format!(
        "outbound|{}||{}",
        port.as_u64().expect("port number"),
        host.as_str().expect("host")
    )
}

/// istio-agent's part: fetch the module the ECDS config names, check its sha256, and hand
/// Envoy the Wasm config with the local file instead.
fn agent_convert(typed_struct: &Value, sidecar_port: u16, cache: &Path) -> Value {
    assert_eq!(
        typed_struct["@type"], "type.googleapis.com/udpa.type.v1.TypedStruct",
        "istio-agent converts TypedStruct (and Wasm) extension configs"
    );
    let mut wasm = typed_struct["value"].clone();
    wasm["@type"] = typed_struct["type_url"].clone();
    let code = &mut wasm["config"]["vm_config"]["code"];
    let uri = code["remote"]["http_uri"]["uri"]
        .as_str()
        .expect("http_uri.uri");
    let sha256 = code["remote"]["sha256"]
        .as_str()
        .expect("sha256")
        .to_string();
    // Kubernetes DNS stand-in: the Service name resolves to the local sidecar.
    let service = format!("tollgate.{NAMESPACE}.svc.cluster.local:{sidecar_port}");
    assert!(uri.contains(&service), "{uri} is not the sidecar's Service");
    let url = uri.replace(&service, &format!("127.0.0.1:{sidecar_port}"));
    let resp = agent()
        .get(&url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).expect("module body");
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        sha256,
        "the module the sidecar serves does not match the sha256 the manifests pin"
    );
    let file = cache.join(format!("{sha256}.wasm"));
    std::fs::write(&file, bytes).expect("write the module");
    *code = serde_json::json!({"local": {"filename": file.display().to_string()}});
    wasm
}

/// The bootstrap's `stats_config` Istio makes of the gateway's proxy config.
fn istio_stats_config(proxy_config: &Value) -> Value {
    use serde_json::json;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut tags = vec![
        json!({"tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"}),
    ];
    for tag in strings(&proxy_config["extraStatTags"]) {
        tags.push(json!({"tag_name": tag, "regex": format!("({tag}=\\.=(.*?);\\.;)")}));
    }
    let matcher = &proxy_config["proxyStatsMatcher"];
    let mut patterns = vec![json!({"prefix": "reporter="})];
    patterns.extend(
        strings(&matcher["inclusionPrefixes"])
            .into_iter()
            .map(|p| json!({"prefix": p})),
    );
    patterns.extend(
        strings(&matcher["inclusionSuffixes"])
            .into_iter()
            .map(|p| json!({"suffix": p})),
    );
    patterns.extend(
        strings(&matcher["inclusionRegexps"])
            .into_iter()
            .map(|p| json!({"safe_regex": {"regex": p}})),
    );
    patterns.push(json!({"prefix": "component"}));
    patterns.push(json!({"prefix": "istio"}));
    json!({
        "use_all_default_tags": false,
        "stats_tags": tags,
        "stats_matcher": {"inclusion_list": {"patterns": patterns}}
    })
}

/// The Envoy configuration Istio gives the gateway for these manifests and its proxy config.
fn istio_envoy_config(
    docs: &[Value],
    proxy_config: &Value,
    listen_port: u16,
    admin_port: u16,
    sidecar_port: u16,
    scratch: &Path,
) -> Value {
    use serde_json::json;
    let envoy_filter = kind(docs, "EnvoyFilter")[0];
    // ECDS: the extension config, as istio-agent leaves it.
    let ext = &patch(envoy_filter, "EXTENSION_CONFIG")["patch"];
    assert_eq!(
        ext["operation"], "ADD",
        "Istio applies only ADD to EXTENSION_CONFIG"
    );
    let cache = scratch.join("wasm-cache");
    std::fs::create_dir_all(&cache).expect("wasm cache dir");
    let ecds = json!({"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": ext["value"]["name"],
        "typed_config": agent_convert(&ext["value"]["typed_config"], sidecar_port, &cache)
    }]});
    let ecds_path = scratch.join("ecds.json");
    std::fs::write(&ecds_path, ecds.to_string()).expect("write ecds");

    // The HTTP filter, before the router; ADS stands in as a file.
    let insert = &patch(envoy_filter, "HTTP_FILTER");
    assert_eq!(insert["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(
        insert["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    let mut http_filter = insert["patch"]["value"].clone();
    assert_eq!(http_filter["name"], ext["value"]["name"]);
    let source = &mut http_filter["config_discovery"]["config_source"];
    assert!(source.get("ads").is_some(), "Istio serves ECDS over ADS");
    *source = json!({
        "resource_api_version": "V3",
        "path_config_source": {"path": ecds_path.display().to_string()},
        "initial_fetch_timeout": source["initial_fetch_timeout"]
    });
    let listener_merge = &patch(envoy_filter, "LISTENER")["patch"];
    assert_eq!(listener_merge["operation"], "MERGE");

    // Routes from the VirtualService.
    let vs = kind(docs, "VirtualService")[0];
    let routes: Vec<Value> = vs["spec"]["http"]
        .as_array()
        .expect("http routes")
        .iter()
        .map(|r| {
            let m = &r["match"][0];
            let mut envoy_match = json!({"prefix": m["uri"]["prefix"].as_str().unwrap_or("/")});
            if let Some(headers) = m["headers"].as_object() {
                envoy_match["headers"] = headers
                    .iter()
                    .map(|(name, v)| json!({"name": name, "string_match": {"exact": v["exact"]}}))
                    .collect();
            }
            let mut route = json!({"name": r["name"], "match": envoy_match});
            if let Some(direct) = r.get("directResponse") {
                route["direct_response"] = json!({
                    "status": direct["status"],
                    "body": {"inline_string": direct["body"]["string"]}
                });
                return route;
            }
            let dest = &r["route"][0]["destination"];
            route["route"] = json!({
                "cluster": outbound(&dest["port"]["number"], &dest["host"]),
                "timeout": r["timeout"]
            });
            if let Some(remove) = r["headers"]["request"]["remove"].as_array() {
                route["request_headers_to_remove"] = json!(remove);
            }
            route
        })
        .collect();

    // Clusters: the sidecar's Service (EDS stand-in: 127.0.0.1) and the ServiceEntries.
    let static_cluster = |name: String, address: &str, port: u64| {
        json!({
            "name": name, "type": "STATIC", "connect_timeout": "10s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": address, "port_value": port}}
            }}]}]}
        })
    };
    let service = kind(docs, "Service")[0];
    let svc_port = &service["spec"]["ports"][0]["port"];
    assert_eq!(svc_port.as_u64(), Some(u64::from(sidecar_port)));
    let mut clusters = vec![static_cluster(
        outbound(
            svc_port,
            &json!(format!("tollgate.{NAMESPACE}.svc.cluster.local")),
        ),
        "127.0.0.1",
        u64::from(sidecar_port),
    )];
    for se in kind(docs, "ServiceEntry") {
        let spec = &se["spec"];
        let port = &spec["ports"][0]["number"];
        assert_eq!(
            spec["resolution"], "STATIC",
            "the test's upstreams are IP addresses"
        );
        let address = spec["endpoints"][0]["address"].as_str().expect("endpoint");
        clusters.push(static_cluster(
            outbound(port, &spec["hosts"][0]),
            address,
            port.as_u64().expect("port"),
        ));
    }

    let mut listener = json!({
        "name": format!("0.0.0.0_{listen_port}"),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound_0.0.0.0_8080",
                "route_config": {"name": "http.8080", "virtual_hosts": [
                    {"name": "*:80", "domains": ["*"], "routes": routes}
                ]},
                "http_filters": [
                    http_filter,
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]
            }
        }]}]
    });
    for (k, v) in listener_merge["value"].as_object().expect("merge value") {
        listener[k] = v.clone();
    }
    json!({
        "node": {"id": format!("router~127.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local"), "cluster": "istio-ingressgateway.istio-system"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": istio_stats_config(proxy_config),
        "static_resources": {"listeners": [listener], "clusters": clusters}
    })
}

impl Stack {
    /// The Istio-shaped stack on `config_template` (placeholders as in [`DEFAULT_CONFIG`]).
    /// `withhold_keys`: the sidecar is stopped once the module is fetched, so Envoy starts
    /// without provider keys; [`Stack::restart_sidecar`] brings it back.
    pub fn start_istio(config_template: &str, withhold_keys: bool) -> IstioStack {
        let bin = tollgate_bin();
        let wasm = tollgate_wasm();
        let envoy = envoy_bin();
        let scratch = TempDir::new("istio");
        let (fake, fake_port) = start_fake(scratch.path());
        let config_path = scratch.path().join("config.yaml");
        std::fs::write(&config_path, render_template(config_template, fake_port))
            .expect("write config.yaml");
        let data = TempDir::new("data");
        let data_dir = data.path().to_path_buf();
        let sidecar_port = free_port();
        let text = |p: &Path| p.display().to_string();
        let secrets = [
            format!("{PROVIDER_KEY_ENV}={PROVIDER_KEY}"),
            format!("{MASTER_KEY_ENV}={MASTER_KEY}"),
        ];

        let (status, manifests, err) = run_to_exit(
            "tollgate render --format istio",
            Command::new(&bin)
                .args(["render", "--format", "istio", "--namespace", NAMESPACE])
                .arg("--config")
                .arg(&config_path)
                .args(["--sidecar-port", &sidecar_port.to_string()])
                .arg("--wasm")
                .arg(&wasm)
                .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
                .env(MASTER_KEY_ENV, MASTER_KEY)
                .env_remove("LITELLM_MASTER_KEY"),
            Duration::from_secs(30),
        );
        assert!(
            status.success(),
            "tollgate render --format istio failed: {err}"
        );
        let docs = docs_of(&manifests);
        let (status, gateway_patch, err) = run_to_exit(
            "tollgate render --format istio-gateway",
            Command::new(&bin)
                .args(["render", "--format", "istio-gateway", "--config"])
                .arg(&config_path)
                .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
                .env(MASTER_KEY_ENV, MASTER_KEY)
                .env_remove("LITELLM_MASTER_KEY"),
            Duration::from_secs(30),
        );
        assert!(
            status.success(),
            "tollgate render --format istio-gateway failed: {err}"
        );
        let patch: Value = serde_yaml_ng::from_str(&gateway_patch).expect("the gateway patch");
        let proxy_config: Value = serde_yaml_ng::from_str(
            patch["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
                .as_str()
                .expect("the proxy.istio.io/config annotation"),
        )
        .expect("the gateway's proxy config");

        // The sidecar as the Deployment runs it (environment from the Secret), on the suites'
        // store (`TOLLGATE_TEST_STORE`).
        let store_args = test_store_args(&data_dir);
        let mut command = vec!["env".to_string()];
        command.extend(secrets.iter().cloned());
        command.extend([
            text(&bin),
            "serve".into(),
            "--config".into(),
            text(&config_path),
            "--port".into(),
            sidecar_port.to_string(),
            "--data-dir".into(),
            text(&data_dir),
            "--wasm".into(),
            text(&wasm),
            "--exit-on-stdin-eof".into(),
        ]);
        command.extend(store_args.iter().cloned());
        let mut sidecar = split::Sidecar::new(command, scratch.path().to_path_buf());
        sidecar.start();

        let port = free_port();
        let admin_port = free_port();
        let bootstrap = istio_envoy_config(
            &docs,
            &proxy_config,
            port,
            admin_port,
            sidecar_port,
            scratch.path(),
        );
        let bootstrap_path = scratch.path().join("envoy.json");
        std::fs::write(&bootstrap_path, bootstrap.to_string()).expect("write envoy.json");
        let envoy_log = scratch.path().join("envoy.log");
        let mut envoy_cmd = Command::new(&envoy);
        envoy_cmd
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--concurrency", "2", "--disable-hot-restart"])
            .args(["--log-level", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&envoy_log).expect("create envoy log"),
            ));
        if withhold_keys {
            sidecar.kill();
        }
        let stack = Stack {
            port,
            fake_port,
            data_dir,
            agent: agent(),
            up: Proc::spawn("envoy", &mut envoy_cmd),
            sidecar: Some(sidecar),
            replicas: Vec::new(),
            fake,
            scratch,
            own_data: Some(data),
        };
        let probe = if withhold_keys {
            // Envoy is up once the filter answers (it cannot reach the sidecar).
            "/v1/models"
        } else {
            "/health/liveliness"
        };
        poll_until("the Istio-shaped Envoy answers", READY_TIMEOUT, || {
            let url = stack.url(probe);
            match stack.agent.get(&url).call() {
                Ok(r) if r.header("server") == Some("envoy") => Ok(()),
                Err(ureq::Error::Status(_, r))
                    if withhold_keys && r.header("server") == Some("envoy") =>
                {
                    Ok(())
                }
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(format!("{e}: {}", read_file(&envoy_log))),
            }
        });
        assert!(
            store_args.is_empty() || !stack.data_dir.join("tollgate.db").exists(),
            "TOLLGATE_TEST_STORE=postgres, yet the sidecar made a SQLite store"
        );
        IstioStack {
            stack,
            manifests,
            admin_port,
        }
    }
}
