//! The config loader: `litellm_config::parse` of arbitrary YAML, `os.environ/` resolution, then
//! `render::plugin_config` and the Envoy / Istio renderings.
//!
//! Input: config.yaml text (non-UTF-8 input is skipped: the loader reads the file as a string).
//!
//! Invariants: a config that loads renders or fails with an error (never a panic); the rendered
//! plugin configuration survives the JSON round trip the filter does in `on_configure` unchanged;
//! every deployment has an upstream cluster; the master key's hash is the one sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::key_format::hash_key;
use tollgate::plugin_config::PluginConfig;
use tollgate::sidecar::{istio, litellm_config, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut loaded) = litellm_config::parse(text) else {
        return;
    };
    // Some variables set, some not (a warning each).
    litellm_config::resolve_env_refs(&mut loaded, |name| {
        (name.len() % 2 == 0).then(|| format!("value-of-{name}"))
    });
    let opts = render::RenderOptions::default();
    let Ok(rendered) = render::plugin_config(&loaded.config, &opts) else {
        return;
    };
    let plugin = &rendered.plugin;
    let json = serde_json::to_vec(plugin).expect("plugin config serializes");
    let back: PluginConfig =
        serde_json::from_slice(&json).expect("the filter parses the rendered plugin config");
    assert_eq!(
        &back, plugin,
        "plugin config changed in the JSON round trip"
    );

    assert_eq!(plugin.deployments.len(), loaded.config.model_list.len());
    for d in &plugin.deployments {
        assert!(
            rendered.upstreams.iter().any(|u| u.cluster == d.cluster),
            "deployment {} has no cluster",
            d.model_name
        );
    }
    if let Some(master) = loaded
        .config
        .general_settings
        .master_key
        .as_deref()
        .filter(|m| !m.is_empty())
    {
        assert_eq!(
            plugin.master_key_hash.as_deref(),
            Some(hash_key(master).as_str())
        );
    }
    let _ = render::envoy_bootstrap(&rendered, &opts);
    let _ = render::envoy_bare_bootstrap(&rendered, &opts);
    let istio_opts = istio::IstioOptions {
        namespace: "tollgate".into(),
        gateway_namespace: "istio-system".into(),
        gateway_selector: ("istio".into(), "ingressgateway".into()),
        gateway_service_account: "istio-ingressgateway-service-account".into(),
        image: "tollgate:fuzz".into(),
        wasm_url: None,
        wasm_sha256: "0".repeat(64),
        config_yaml: String::new(),
        replicas: 1,
    };
    if let Some(master) = loaded.config.general_settings.master_key.as_deref() {
        let _ = istio::manifests(&rendered, &opts, &istio_opts, master);
    }
});
