//! Provider keys travel from the sidecar to the filter at run time, never in the plugin
//! configuration (which Istio and Envoy configs expose to anyone who can read them). The filter
//! asks the sidecar's internal endpoint when it starts and again whenever the change log
//! reports another fingerprint, and keeps the answer in VM memory only.

use crate::plugin_config::{Deployment, PluginConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every deployment's provider key, by deployment id, and a fingerprint that changes with them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderKeys {
    /// Changes whenever any key changes; the change log carries it so filters refetch.
    pub fingerprint: String,
    /// Deployment id → key. A deployment without an entry sends no `Authorization`.
    pub keys: BTreeMap<String, String>,
}

impl ProviderKeys {
    /// The keys of `deployments` (those that have one). The fingerprint hashes ids and keys
    /// together, so it reveals nothing usable about a key.
    pub fn of(deployments: &[Deployment]) -> ProviderKeys {
        let keys: BTreeMap<String, String> = deployments
            .iter()
            .filter_map(|d| Some((d.id.clone(), d.api_key.clone()?)))
            .collect();
        let mut seed = String::from("tollgate-provider-keys:");
        for (id, key) in &keys {
            seed.push_str(&format!("{}:{id}{}:{key};", id.len(), key.len()));
        }
        ProviderKeys {
            fingerprint: crate::key_format::hash_key(&seed),
            keys,
        }
    }

    pub fn key_for(&self, deployment_id: &str) -> Option<&str> {
        self.keys.get(deployment_id).map(String::as_str)
    }
}

/// The plugin configuration as it may be written into Envoy or Istio configuration: the same,
/// without any provider key.
pub fn without_provider_keys(plugin: &PluginConfig) -> PluginConfig {
    let mut plugin = plugin.clone();
    for d in &mut plugin.deployments {
        d.api_key = None;
    }
    plugin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(id: &str, key: Option<&str>) -> Deployment {
        Deployment {
            id: id.into(),
            api_key: key.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn keys_by_deployment_and_fingerprint_follows_them() {
        let a = ProviderKeys::of(&[deployment("d1", Some("sk-a")), deployment("d2", None)]);
        assert_eq!(a.key_for("d1"), Some("sk-a"));
        assert_eq!(a.key_for("d2"), None);
        let same = ProviderKeys::of(&[deployment("d1", Some("sk-a")), deployment("d2", None)]);
        assert_eq!(a.fingerprint, same.fingerprint);
        let rotated = ProviderKeys::of(&[deployment("d1", Some("sk-b")), deployment("d2", None)]);
        assert_ne!(a.fingerprint, rotated.fingerprint);
        assert!(!a.fingerprint.contains("sk-a"));
    }

    #[test]
    fn rendered_plugin_config_carries_no_key() {
        let plugin = PluginConfig {
            deployments: vec![deployment("d1", Some("sk-secret-provider"))],
            ..Default::default()
        };
        let clean = without_provider_keys(&plugin);
        assert!(!serde_json::to_string(&clean)
            .unwrap()
            .contains("sk-secret-provider"));
        assert_eq!(clean.deployments[0].id, "d1");
    }
}
