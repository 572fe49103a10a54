//! Istio: everything `kubectl apply -f -` needs, from one `tollgate render --format istio`.
//!
//! The filter needs `allow_on_headers_stop_iteration: true` (it reads the body before routing).
//! Istio's `WasmPlugin` has no field for it, and an `EnvoyFilter` can only ADD an extension
//! config, never MERGE into the one a WasmPlugin produces. So the filter is delivered as an
//! `EnvoyFilter` that ADDs the whole Wasm extension config (with the flag) and inserts an HTTP
//! filter that names it through `config_discovery`; Istio serves that config over ECDS and
//! istio-agent swaps the module's URL for the downloaded file (checked against the sha256).

use super::render::{RenderOptions, Rendered, Upstream};
use super::wasm_module::MODULE_PATH;
use crate::plugin_config::CLUSTER_HEADER;
use crate::provider_keys::without_provider_keys;
use anyhow::{anyhow, Result};
use serde_json::{json, Value};

/// The Secret the sidecar's environment comes from (master key, provider keys); the user
/// creates it, so no secret is ever rendered.
pub const SECRET_NAME: &str = "tollgate-secrets";
/// Name of the sidecar's Deployment, Service, ConfigMap and claim.
pub const APP: &str = "tollgate";
/// Where the container image keeps the module (Dockerfile).
pub const IMAGE_WASM_PATH: &str = "/usr/local/lib/tollgate/tollgate.wasm";
const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// What only the Kubernetes rendering needs.
#[derive(Debug, Clone)]
pub struct IstioOptions {
    /// Namespace of the sidecar and the routing objects.
    pub namespace: String,
    /// Namespace of the gateway workload (the EnvoyFilter must live there).
    pub gateway_namespace: String,
    /// Label selecting the gateway pods, `key=value`.
    pub gateway_selector: (String, String),
    /// The gateway's service account (its mesh identity may call the internal endpoints).
    pub gateway_service_account: String,
    pub image: String,
    /// Where gateways fetch the module; default: the sidecar itself.
    pub wasm_url: Option<String>,
    /// sha256 (hex) of the module the URL serves.
    pub wasm_sha256: String,
    /// config.yaml as written (with `os.environ/` references), for the ConfigMap.
    pub config_yaml: String,
    /// Sidecar pods. More than one needs a PostgreSQL store (`database_url`): they are then
    /// stateless (no volume claim, rolling updates) and the gateway ejects a failing one.
    pub replicas: u16,
}

impl IstioOptions {
    fn service_host(&self) -> String {
        format!("{APP}.{}.svc.cluster.local", self.namespace)
    }
}

/// Istio's name of the outbound cluster for `host:port`.
pub fn outbound_cluster(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// The mesh host name of an upstream: its DNS name, or for an IP address a name the
/// ServiceEntry gives it (Istio service hosts are names).
pub fn upstream_host(u: &Upstream) -> String {
    if u.host.parse::<std::net::IpAddr>().is_ok() {
        let dashed: String = u
            .host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("ip-{dashed}.tollgate.external")
    } else {
        u.host.clone()
    }
}

fn object_name(u: &Upstream) -> String {
    let host = upstream_host(u);
    let mut name: String = format!("tollgate-{host}-{}", u.port)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// Refuses a config.yaml that would put a secret into the ConfigMap: provider keys and the
/// master key must come from the environment (`os.environ/NAME`, filled from the Secret).
fn check_no_inline_secrets(
    rendered: &Rendered,
    opts: &IstioOptions,
    master_key: &str,
) -> Result<()> {
    let inline = |secret: &str| !secret.is_empty() && opts.config_yaml.contains(secret);
    for d in &rendered.plugin.deployments {
        if d.api_key.as_deref().is_some_and(inline) {
            return Err(anyhow!(
                "model `{}`: its api_key is written in config.yaml, which becomes a ConfigMap; write `api_key: os.environ/NAME` and put NAME in the `{SECRET_NAME}` Secret",
                d.model_name
            ));
        }
    }
    if inline(master_key) {
        return Err(anyhow!(
            "the master key is written in config.yaml, which becomes a ConfigMap; write `master_key: os.environ/LITELLM_MASTER_KEY` and put LITELLM_MASTER_KEY in the `{SECRET_NAME}` Secret"
        ));
    }
    Ok(())
}

/// The documents, in apply order.
pub fn documents(
    rendered: &Rendered,
    render: &RenderOptions,
    opts: &IstioOptions,
    master_key: &str,
) -> Result<Vec<Value>> {
    check_no_inline_secrets(rendered, opts, master_key)?;
    let ns = opts.namespace.as_str();
    let port = render.first_sidecar()?.port;
    let service_host = opts.service_host();
    let sidecar_cluster = outbound_cluster(port, &service_host);
    let labels = json!({"app": APP});
    let (sel_key, sel_value) = &opts.gateway_selector;
    let mut selector = serde_json::Map::new();
    selector.insert(sel_key.clone(), json!(sel_value));

    let mut plugin = without_provider_keys(&rendered.plugin);
    for d in &mut plugin.deployments {
        if let Some(u) = rendered.upstreams.iter().find(|u| u.cluster == d.cluster) {
            d.cluster = outbound_cluster(u.port, &upstream_host(u));
        }
    }
    plugin.sidecar_cluster = sidecar_cluster.clone();
    plugin.sidecar_authority = format!("{service_host}:{port}");
    let wasm_url = opts
        .wasm_url
        .clone()
        .unwrap_or_else(|| format!("http://{service_host}:{port}{MODULE_PATH}"));
    let filter_name = format!("{ns}.{APP}");

    let mut docs = vec![
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{APP}-config"), "namespace": ns, "labels": labels},
            "data": {"config.yaml": opts.config_yaml}
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": APP, "namespace": ns, "labels": labels},
            "spec": {
                // One writer on the SQLite volume.
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {
                        "labels": {"app": APP, "sidecar.istio.io/inject": "true"},
                        // The sidecar's `/metrics`; Istio's metrics merging serves it with the
                        // proxy's own stats on the agent's port.
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": port.to_string(),
                            "prometheus.io/path": "/metrics"
                        }
                    },
                    "spec": {
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}
                        },
                        "containers": [{
                            "name": APP,
                            "image": opts.image,
                            "args": ["serve", "--config", "/etc/tollgate/config.yaml",
                                     "--host", "0.0.0.0", "--port", port.to_string(),
                                     "--data-dir", "/var/lib/tollgate", "--wasm", IMAGE_WASM_PATH],
                            "envFrom": [{"secretRef": {"name": SECRET_NAME}}],
                            "ports": [{"name": "http", "containerPort": port}],
                            "readinessProbe": {"httpGet": {"path": "/health/readiness", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/health/liveliness", "port": "http"}, "periodSeconds": 10},
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}
                            },
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/tollgate", "readOnly": true},
                                {"name": "data", "mountPath": "/var/lib/tollgate"},
                                // The root is read-only; SQLite may spill temporary files.
                                {"name": "tmp", "mountPath": "/tmp"}
                            ]
                        }],
                        "volumes": [
                            {"name": "config", "configMap": {"name": format!("{APP}-config")}},
                            {"name": "data", "persistentVolumeClaim": {"claimName": format!("{APP}-data")}},
                            {"name": "tmp", "emptyDir": {}}
                        ]
                    }
                }
            }
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": APP, "namespace": ns, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": port, "targetPort": "http", "appProtocol": "http"}]
            }
        }),
        // The internal endpoints (provider keys among them) answer only the gateway's mesh
        // identity (mTLS), on top of the internal bearer.
        json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": format!("{APP}-internal"), "namespace": ns},
            "spec": {
                "selector": {"matchLabels": labels},
                "action": "DENY",
                "rules": [{
                    "from": [{"source": {"notPrincipals": [format!(
                        "cluster.local/ns/{}/sa/{}", opts.gateway_namespace, opts.gateway_service_account
                    )]}}],
                    "to": [{"operation": {"paths": ["/tollgate/internal/*"]}}]
                }]
            }
        }),
    ];

    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("{APP}-data"), "namespace": ns, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    });
    if opts.replicas > 1 {
        // Stateless replicas on the shared PostgreSQL store: no claim, rolling updates.
        let deployment = &mut docs[1]["spec"];
        deployment["replicas"] = json!(opts.replicas);
        deployment["strategy"] = json!({"type": "RollingUpdate"});
        deployment["template"]["spec"]["volumes"][1] = json!({"name": "data", "emptyDir": {}});
        // As the plain Envoy rendering's sidecar cluster: a replica failing calls in a row is
        // ejected at once.
        docs.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": APP, "namespace": ns},
            "spec": {
                "host": service_host,
                "trafficPolicy": {"outlierDetection": {
                    "consecutiveGatewayErrors": 2,
                    "consecutive5xxErrors": 5,
                    "interval": "1s",
                    "baseEjectionTime": "10s",
                    "maxEjectionPercent": 100
                }}
            }
        }));
    } else {
        docs.insert(1, claim);
    }

    let mut routes = Vec::new();
    for u in &rendered.upstreams {
        let host = upstream_host(u);
        let name = object_name(u);
        let mut service_entry = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "hosts": [host],
                "location": "MESH_EXTERNAL",
                "resolution": "DNS",
                // Plain HTTP from the gateway's point of view: the DestinationRule below
                // originates TLS, since the filter hands Envoy an HTTP request.
                "ports": [{"number": u.port, "name": format!("http-{}", u.port), "protocol": "HTTP"}]
            }
        });
        if host != u.host {
            service_entry["spec"]["resolution"] = json!("STATIC");
            service_entry["spec"]["endpoints"] = json!([{"address": u.host}]);
        }
        docs.push(service_entry);
        if u.tls {
            docs.push(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "host": host,
                    "trafficPolicy": {"portLevelSettings": [{
                        "port": {"number": u.port},
                        "tls": {"mode": "SIMPLE", "sni": u.host}
                    }]}
                }
            }));
        }
        routes.push(json!({
            "name": name,
            "match": [{"headers": {CLUSTER_HEADER: {"exact": outbound_cluster(u.port, &host)}}}],
            "route": [{"destination": {"host": host, "port": {"number": u.port}}}],
            // The routing header is Tollgate's; the provider never sees it.
            "headers": {"request": {"remove": [CLUSTER_HEADER]}},
            "timeout": "600s"
        }));
    }
    routes.push(json!({
        "name": "tollgate-internal",
        "match": [{"uri": {"prefix": "/tollgate/internal"}}],
        "directResponse": {"status": 404, "body": {"string": "{\"detail\":\"Not Found\"}"}}
    }));
    // Everything else (the admin API, health, and LLM calls the filter did not route) goes to
    // the sidecar, as in the plain Envoy configuration.
    routes.push(json!({
        "name": "tollgate-sidecar",
        "route": [{"destination": {"host": service_host, "port": {"number": port}}}],
        "timeout": "60s"
    }));
    docs.push(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": APP, "namespace": ns},
        "spec": {
            "selector": selector,
            "servers": [{"port": {"number": 80, "name": "http-tollgate", "protocol": "HTTP"}, "hosts": ["*"]}]
        }
    }));
    docs.push(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": APP, "namespace": ns},
        "spec": {"hosts": ["*"], "gateways": [APP], "http": routes}
    }));

    let wasm_config = json!({
        "name": APP,
        "root_id": APP,
        "vm_config": {
            "vm_id": APP,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"remote": {
                "http_uri": {"uri": wasm_url, "cluster": sidecar_cluster, "timeout": "30s"},
                "sha256": opts.wasm_sha256
            }}
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": serde_json::to_string(&plugin)?
        },
        // Without it a paused request never gets its body callback (DESIGN.md).
        "allow_on_headers_stop_iteration": true,
        "failure_policy": "FAIL_CLOSED"
    });
    let gateway_match = json!({"context": "GATEWAY"});
    docs.push(json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": APP, "namespace": opts.gateway_namespace},
        "spec": {
            "workloadSelector": {"labels": selector},
            "configPatches": [
                {
                    // The whole Wasm configuration, served to the gateway over ECDS. A
                    // TypedStruct, as istio-agent expects when it fetches the module.
                    "applyTo": "EXTENSION_CONFIG",
                    "match": gateway_match,
                    "patch": {"operation": "ADD", "value": {
                        "name": filter_name,
                        "typed_config": {
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": WASM_TYPE_URL,
                            "value": {"config": wasm_config}
                        }
                    }}
                },
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {
                        "context": "GATEWAY",
                        "listener": {"filterChain": {"filter": {
                            "name": "envoy.filters.network.http_connection_manager",
                            "subFilter": {"name": "envoy.filters.http.router"}
                        }}}
                    },
                    "patch": {"operation": "INSERT_BEFORE", "value": {
                        "name": filter_name,
                        "config_discovery": {
                            // 0s: the listener waits for the filter instead of serving without it.
                            "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                            "type_urls": [WASM_TYPE_URL]
                        }
                    }}
                },
                {
                    // Istio's gateways buffer 32 KiB per connection; prompts need the filter's
                    // body limit.
                    "applyTo": "LISTENER",
                    "match": gateway_match,
                    "patch": {"operation": "MERGE", "value": {
                        "per_connection_buffer_limit_bytes": rendered.plugin.max_request_body_bytes + 64 * 1024
                    }}
                }
            ]
        }
    }));
    Ok(docs)
}

/// The gateway's proxy config for the filter's metrics (Istio's `ProxyConfig`, for the gateway
/// pods' `proxy.istio.io/config` annotation): Istio's Envoy keeps only the stats its
/// `proxyStatsMatcher` includes, and makes labels only of the tags its bootstrap has a regex
/// for; `extraStatTags` adds the regex [`crate::metrics::stats_tag_regex`] for each. (No
/// EnvoyFilter can set either: Istio stopped applying `BOOTSTRAP` patches in 1.21.)
pub fn gateway_proxy_config() -> Value {
    json!({
        "proxyStatsMatcher": {"inclusionPrefixes": [crate::metrics::STATS_PREFIX]},
        "extraStatTags": crate::metrics::STATS_TAGS,
    })
}

/// A strategic-merge patch of the gateway's Deployment that sets [`gateway_proxy_config`]
/// (`kubectl -n istio-system patch deployment istio-ingressgateway --patch-file FILE`; the
/// gateway pods restart with it).
pub fn gateway_patch() -> Result<String> {
    let proxy_config = serde_yaml_ng::to_string(&gateway_proxy_config())?;
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "proxy.istio.io/config": proxy_config
    }}}}});
    Ok(serde_yaml_ng::to_string(&patch)?)
}

/// The documents as one YAML stream, separated by `---`.
pub fn manifests(
    rendered: &Rendered,
    render: &RenderOptions,
    opts: &IstioOptions,
    master_key: &str,
) -> Result<String> {
    let mut out = String::new();
    for doc in documents(rendered, render, opts, master_key)? {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&doc)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::litellm_config::parse;
    use crate::sidecar::render::plugin_config;

    const CONFIG: &str = "model_list:\n  - model_name: gpt-4o\n    litellm_params: {model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY}\n  - model_name: local\n    litellm_params: {model: openai/l, api_base: 'http://10.0.0.7:8000/v1', api_key: os.environ/LOCAL_KEY}\ngeneral_settings: {master_key: os.environ/LITELLM_MASTER_KEY}\n";

    fn options(config_yaml: &str) -> IstioOptions {
        IstioOptions {
            namespace: "llm".into(),
            gateway_namespace: "istio-system".into(),
            gateway_selector: ("istio".into(), "ingressgateway".into()),
            gateway_service_account: "istio-ingressgateway-service-account".into(),
            image: "tollgate:test".into(),
            wasm_url: None,
            wasm_sha256: "ab".repeat(32),
            config_yaml: config_yaml.into(),
            replicas: 1,
        }
    }

    fn rendered_with_keys(config: &str) -> Rendered {
        let mut loaded = parse(config).unwrap();
        crate::sidecar::litellm_config::resolve_env_refs(&mut loaded, |name| {
            Some(format!("sk-resolved-{name}-0123456789"))
        });
        plugin_config(&loaded.config, &RenderOptions::default()).unwrap()
    }

    fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    #[test]
    fn filter_delivered_by_ecds_with_the_flag_and_no_secret() {
        let rendered = rendered_with_keys(CONFIG);
        let docs = documents(
            &rendered,
            &RenderOptions::default(),
            &options(CONFIG),
            "sk-resolved-LITELLM_MASTER_KEY-0123456789",
        )
        .unwrap();
        let text = serde_json::to_string(&docs).unwrap();
        assert!(!text.contains("sk-resolved-"), "a secret was rendered");
        assert!(find(&docs, "WasmPlugin").is_empty());
        let ef = find(&docs, "EnvoyFilter")[0];
        let patches = ef["spec"]["configPatches"].as_array().unwrap();
        let ext = &patches[0];
        assert_eq!(ext["applyTo"], "EXTENSION_CONFIG");
        assert_eq!(ext["patch"]["operation"], "ADD");
        let config = &ext["patch"]["value"]["typed_config"]["value"]["config"];
        assert_eq!(config["allow_on_headers_stop_iteration"], true);
        let remote = &config["vm_config"]["code"]["remote"];
        assert_eq!(
            remote["http_uri"]["uri"],
            "http://tollgate.llm.svc.cluster.local:4001/tollgate/tollgate.wasm"
        );
        assert_eq!(remote["sha256"], "ab".repeat(32));
        let plugin: crate::plugin_config::PluginConfig =
            serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            plugin.sidecar_cluster,
            "outbound|4001||tollgate.llm.svc.cluster.local"
        );
        assert_eq!(
            plugin.deployments[0].cluster,
            "outbound|443||api.openai.com"
        );
        assert_eq!(
            plugin.deployments[1].cluster,
            "outbound|8000||ip-10-0-0-7.tollgate.external"
        );
        let insert = &patches[1];
        assert_eq!(insert["patch"]["value"]["name"], "llm.tollgate");
        assert_eq!(ext["patch"]["value"]["name"], "llm.tollgate");
        // TLS origination for the HTTPS provider only.
        let rules = find(&docs, "DestinationRule");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["spec"]["host"], "api.openai.com");
        // Prometheus finds the sidecar's `/metrics`.
        let pod = &find(&docs, "Deployment")[0]["spec"]["template"]["metadata"];
        assert_eq!(pod["annotations"]["prometheus.io/scrape"], "true");
        assert_eq!(pod["annotations"]["prometheus.io/port"], "4001");
        assert_eq!(pod["annotations"]["prometheus.io/path"], "/metrics");
        // Every upstream has a header route; the sidecar takes the rest.
        let vs = find(&docs, "VirtualService")[0];
        let http = vs["spec"]["http"].as_array().unwrap();
        assert_eq!(http.len(), 4);
        assert_eq!(
            http[0]["match"][0]["headers"][CLUSTER_HEADER]["exact"],
            "outbound|443||api.openai.com"
        );
    }

    /// Issue 15: several stateless sidecar replicas (PostgreSQL store): no volume claim,
    /// rolling updates, outlier detection on the sidecar Service.
    #[test]
    fn several_replicas_are_stateless_and_ejected_when_failing() {
        let rendered = rendered_with_keys(CONFIG);
        let key = "sk-resolved-LITELLM_MASTER_KEY-0123456789";
        let single =
            documents(&rendered, &RenderOptions::default(), &options(CONFIG), key).unwrap();
        assert_eq!(find(&single, "PersistentVolumeClaim").len(), 1);
        assert_eq!(find(&single, "Deployment")[0]["spec"]["replicas"], 1);
        let opts = IstioOptions {
            replicas: 3,
            ..options(CONFIG)
        };
        let docs = documents(&rendered, &RenderOptions::default(), &opts, key).unwrap();
        assert!(find(&docs, "PersistentVolumeClaim").is_empty());
        let spec = &find(&docs, "Deployment")[0]["spec"];
        assert_eq!(spec["replicas"], 3);
        assert_eq!(spec["strategy"]["type"], "RollingUpdate");
        let volumes = spec["template"]["spec"]["volumes"].as_array().unwrap();
        assert!(volumes
            .iter()
            .all(|v| v.get("persistentVolumeClaim").is_none()));
        let rule = find(&docs, "DestinationRule")
            .into_iter()
            .find(|r| r["spec"]["host"] == "tollgate.llm.svc.cluster.local")
            .unwrap();
        let outlier = &rule["spec"]["trafficPolicy"]["outlierDetection"];
        assert_eq!(outlier["consecutiveGatewayErrors"], 2);
        assert_eq!(outlier["maxEjectionPercent"], 100);
    }

    /// The gateway keeps the filter's stats and labels them: every metric name starts with
    /// the included prefix (as Envoy's stats matcher sees it) and every tag is extracted.
    #[test]
    fn gateway_proxy_config_includes_and_tags_the_filter_metrics() {
        let patch: Value = serde_yaml_ng::from_str(&gateway_patch().unwrap()).unwrap();
        let annotation = patch["spec"]["template"]["metadata"]["annotations"]
            ["proxy.istio.io/config"]
            .as_str()
            .unwrap();
        let config: Value = serde_yaml_ng::from_str(annotation).unwrap();
        assert_eq!(config, gateway_proxy_config());
        let prefix = config["proxyStatsMatcher"]["inclusionPrefixes"][0]
            .as_str()
            .unwrap();
        let tags: Vec<&str> = config["extraStatTags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        for metric in crate::metrics::Metric::all() {
            let name = format!("wasmcustom.{}", metric.name());
            assert!(name.starts_with(prefix), "{name}");
            for pair in name.split(";.;").filter(|p| p.contains("=.=")) {
                let before = pair.split("=.=").next().unwrap();
                let tag = before.rsplit('.').next().unwrap();
                assert!(tags.contains(&tag), "{name}: {tag}");
            }
        }
    }

    #[test]
    fn inline_keys_are_refused() {
        let inline = "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_key: sk-inline-provider-key}\ngeneral_settings: {master_key: os.environ/LITELLM_MASTER_KEY}\n";
        let rendered = rendered_with_keys(inline);
        let err = documents(
            &rendered,
            &RenderOptions::default(),
            &options(inline),
            "sk-x-0123456789",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("os.environ"), "{err}");
        let err = documents(
            &rendered_with_keys(CONFIG),
            &RenderOptions::default(),
            &options(&format!("{CONFIG}# sk-master-inline-01\n")),
            "sk-master-inline-01",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("master key"), "{err}");
    }
}
