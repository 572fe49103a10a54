//! LiteLLM's cost map (`model_prices_and_context_window.json`), bundled with the sidecar, and
//! LiteLLM's lookup of a model in it (`utils.get_model_info_helper`): the sidecar resolves each
//! deployment's prices and `max_output_tokens` here and puts them in the plugin configuration,
//! so the filter never carries the map.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The `litellm` release (PyPI) the bundled map comes from (see README.md beside it).
pub const COST_MAP_LITELLM_VERSION: &str = "1.110.2";
const BUNDLED: &str = include_str!("model_prices_and_context_window.json");
/// LiteLLM's variable naming the cost map to load. Tollgate never fetches: a local path (or
/// `file://` URL) is read and its entries put over the bundled map.
pub const OVERRIDE_ENV: &str = "LITELLM_MODEL_COST_MAP_URL";

/// What Tollgate uses of one cost-map entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostEntry {
    /// `litellm_provider`.
    pub provider: Option<String>,
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    pub cache_read_input_token_cost: Option<f64>,
    pub output_cost_per_reasoning_token: Option<f64>,
    pub max_output_tokens: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub mode: Option<String>,
    /// The entry's `supports_*` flags (`supports_vision`, ...), for `/model/info` and
    /// `/model_group/info`.
    pub supports: std::collections::BTreeMap<String, bool>,
}

impl CostEntry {
    fn from_json(v: &Value) -> Option<CostEntry> {
        let o = v.as_object()?;
        let num = |k: &str| o.get(k).and_then(Value::as_f64).filter(|f| f.is_finite());
        let int = |k: &str| o.get(k).and_then(Value::as_u64);
        let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        Some(CostEntry {
            provider: text("litellm_provider"),
            input_cost_per_token: num("input_cost_per_token"),
            output_cost_per_token: num("output_cost_per_token"),
            cache_read_input_token_cost: num("cache_read_input_token_cost"),
            output_cost_per_reasoning_token: num("output_cost_per_reasoning_token"),
            max_output_tokens: int("max_output_tokens"),
            max_input_tokens: int("max_input_tokens"),
            mode: text("mode"),
            supports: o
                .iter()
                .filter(|(k, _)| k.starts_with("supports_"))
                .filter_map(|(k, v)| Some((k.clone(), v.as_bool()?)))
                .collect(),
        })
    }

    /// Fields `over` sets replace these (LiteLLM's `register_model` updates an entry in place).
    fn update(&mut self, over: CostEntry) {
        fn set<T>(dst: &mut Option<T>, src: Option<T>) {
            if src.is_some() {
                *dst = src;
            }
        }
        set(&mut self.provider, over.provider);
        set(&mut self.input_cost_per_token, over.input_cost_per_token);
        set(&mut self.output_cost_per_token, over.output_cost_per_token);
        set(
            &mut self.cache_read_input_token_cost,
            over.cache_read_input_token_cost,
        );
        set(
            &mut self.output_cost_per_reasoning_token,
            over.output_cost_per_reasoning_token,
        );
        set(&mut self.max_output_tokens, over.max_output_tokens);
        set(&mut self.max_input_tokens, over.max_input_tokens);
        set(&mut self.mode, over.mode);
        self.supports.extend(over.supports);
    }

    /// Whether the entry has a token price.
    pub fn is_priced(&self) -> bool {
        self.input_cost_per_token.is_some() || self.output_cost_per_token.is_some()
    }
}

/// The map, with LiteLLM's case-insensitive fallback index.
#[derive(Debug, Default)]
pub struct CostMap {
    entries: HashMap<String, CostEntry>,
    lowercase: HashMap<String, String>,
}

impl CostMap {
    /// Parses a cost map document (an object of entries; entries that are not objects are
    /// skipped, as LiteLLM's lookups never return them).
    pub fn from_json(text: &str) -> Result<CostMap> {
        let doc: serde_json::Map<String, Value> =
            serde_json::from_str(text).context("not a JSON object of model entries")?;
        let mut map = CostMap::default();
        for (key, value) in &doc {
            if key == "sample_spec" {
                continue;
            }
            if let Some(entry) = CostEntry::from_json(value) {
                map.insert(key.clone(), entry);
            }
        }
        Ok(map)
    }

    fn insert(&mut self, key: String, entry: CostEntry) {
        self.lowercase
            .entry(key.to_lowercase())
            .or_insert_with(|| key.clone());
        self.entries.insert(key, entry);
    }

    /// Puts `other`'s entries over these, field by field.
    pub fn merge(&mut self, other: CostMap) {
        for (key, entry) in other.entries {
            match self.entries.get_mut(&key) {
                Some(existing) => existing.update(entry),
                None => self.insert(key, entry),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `get_model_cost_key`: the exact key, else a case-insensitive match.
    pub fn get(&self, key: &str) -> Option<(&str, &CostEntry)> {
        if let Some((k, e)) = self.entries.get_key_value(key) {
            return Some((k.as_str(), e));
        }
        let k = self.lowercase.get(&key.to_lowercase())?;
        self.entries.get_key_value(k).map(|(k, e)| (k.as_str(), e))
    }

    /// LiteLLM's lookup of `model` for `provider` (the prefix of `provider/model` when `None`):
    /// the first name of [`candidates`] in the map whose entry's provider matches.
    pub fn lookup(&self, model: &str, provider: Option<&str>) -> Option<(&str, &CostEntry)> {
        let provider = provider.or_else(|| prefix_provider(model));
        candidates(model, provider)
            .iter()
            .filter_map(|c| self.get(c))
            .find(|(_, e)| provider_matches(e.provider.as_deref(), provider))
    }

    /// Every entry of `provider` a chat route can use, keyed by the name a client sends after
    /// the provider prefix (`gpt-4o` for `openai`), lowercased. A name the map has both bare and
    /// prefixed keeps the prefixed entry (LiteLLM tries `provider/model` first).
    pub fn provider_entries(&self, provider: &str) -> Vec<(String, &CostEntry)> {
        let mut bare: HashMap<String, &CostEntry> = HashMap::new();
        let mut prefixed: HashMap<String, &CostEntry> = HashMap::new();
        for (key, e) in &self.entries {
            if e.provider.as_deref() != Some(provider)
                || !e.is_priced()
                || !matches!(
                    e.mode.as_deref(),
                    None | Some("chat" | "completion" | "embedding")
                )
            {
                continue;
            }
            match key.strip_prefix(provider).and_then(|r| r.strip_prefix('/')) {
                Some(rest) => prefixed.insert(rest.to_lowercase(), e),
                None => bare.insert(key.to_lowercase(), e),
            };
        }
        bare.extend(prefixed);
        let mut out: Vec<(String, &CostEntry)> = bare.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The prefix of `provider/model`.
fn prefix_provider(model: &str) -> Option<&str> {
    model
        .split_once('/')
        .map(|(p, _)| p)
        .filter(|p| !p.is_empty())
}

/// `get_potential_model_names` in `_model_cost_lookup_order`: `provider/model`, the model as
/// given, the model without its provider prefix, then the stripped forms and the
/// provider-prefixed original.
pub fn candidates(model: &str, provider: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    match provider {
        None => {
            out.push(model.to_string());
            out.push(crate::cost::strip_model_name(model, None));
        }
        Some(p) => {
            let (combined, split, provider_prefixed) =
                match model.strip_prefix(p).and_then(|r| r.strip_prefix('/')) {
                    Some(rest) => (model.to_string(), rest.to_string(), format!("{p}/{model}")),
                    None => (
                        format!("{p}/{model}"),
                        model.to_string(),
                        format!("{p}/{model}"),
                    ),
                };
            let stripped = crate::cost::strip_model_name(&split, Some(p));
            out.push(combined);
            out.push(model.to_string());
            out.push(split);
            out.push(format!("{p}/{stripped}"));
            out.push(stripped);
            out.push(provider_prefixed);
        }
    }
    let mut seen: Vec<String> = Vec::new();
    out.retain(|c| {
        let fresh = !seen.contains(c);
        if fresh {
            seen.push(c.clone());
        }
        fresh
    });
    out
}

/// `_check_provider_match`.
fn provider_matches(entry: Option<&str>, provider: Option<&str>) -> bool {
    let (Some(entry), Some(p)) = (entry, provider) else {
        return true;
    };
    entry == p
        || (p == "vertex_ai" && entry.starts_with("vertex_ai"))
        || (p == "fireworks_ai" && entry.starts_with("fireworks_ai"))
        || (p.starts_with("bedrock") && entry.starts_with("bedrock"))
        || matches!(p, "litellm_proxy" | "github" | "nadir")
        || (p == "azure_ai" && matches!(entry, "azure" | "openai"))
}

/// The bundled map, parsed once.
fn bundled() -> Result<Arc<CostMap>> {
    static MAP: OnceLock<std::result::Result<Arc<CostMap>, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        CostMap::from_json(BUNDLED)
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!("the bundled cost map does not parse: {e}"))
}

/// Where `LITELLM_MODEL_COST_MAP_URL` points, when it names a local file. A remote URL is an
/// error: Tollgate does not fetch at startup, so the user must know their map is not used.
pub fn override_path(value: Option<&str>) -> Result<Option<PathBuf>> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Some(path) = v.strip_prefix("file://") {
        return Ok(Some(PathBuf::from(path)));
    }
    if v.starts_with("http://") || v.starts_with("https://") || v.starts_with("s3://") {
        return Err(anyhow!(
            "{OVERRIDE_ENV}={v}: Tollgate does not download cost maps; save the file and set {OVERRIDE_ENV} to its path (its entries go over the bundled map of LiteLLM {COST_MAP_LITELLM_VERSION})"
        ));
    }
    Ok(Some(PathBuf::from(v)))
}

/// The map in force: the bundled one with the entries of the file `LITELLM_MODEL_COST_MAP_URL`
/// names put over it (read again when the file changes).
pub fn current() -> Result<Arc<CostMap>> {
    type Cached = (PathBuf, Option<std::time::SystemTime>, u64, Arc<CostMap>);
    static CACHE: Mutex<Option<Cached>> = Mutex::new(None);
    let Some(path) = override_path(std::env::var(OVERRIDE_ENV).ok().as_deref())? else {
        return bundled();
    };
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("{OVERRIDE_ENV}: cannot read {}", path.display()))?;
    let stamp = (meta.modified().ok(), meta.len());
    let mut cache = CACHE
        .lock()
        .map_err(|_| anyhow!("cost map cache poisoned"))?;
    if let Some((p, m, l, map)) = cache.as_ref() {
        if *p == path && (*m, *l) == stamp {
            return Ok(map.clone());
        }
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{OVERRIDE_ENV}: cannot read {}", path.display()))?;
    let extra = CostMap::from_json(&text)
        .with_context(|| format!("{OVERRIDE_ENV}: {} is not a cost map", path.display()))?;
    let base = bundled()?;
    let mut map = clone_map(&base);
    map.merge(extra);
    let map = Arc::new(map);
    *cache = Some((path, stamp.0, stamp.1, map.clone()));
    Ok(map)
}

fn clone_map(m: &CostMap) -> CostMap {
    CostMap {
        entries: m.entries.clone(),
        lowercase: m.lowercase.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> &'static CostMap {
        static M: OnceLock<Arc<CostMap>> = OnceLock::new();
        M.get_or_init(|| bundled().unwrap())
    }

    #[test]
    fn bundled_map_has_gpt_4o_mini_at_litellm_prices() {
        let (key, e) = map().lookup("openai/gpt-4o-mini", None).unwrap();
        assert_eq!(key, "gpt-4o-mini");
        assert_eq!(e.input_cost_per_token, Some(1.5e-7));
        assert_eq!(e.output_cost_per_token, Some(6e-7));
        assert_eq!(e.cache_read_input_token_cost, Some(7.5e-8));
        assert_eq!(e.max_output_tokens, Some(16384));
        assert!(map().len() > 4000);
    }

    #[test]
    fn lookup_order_matches_litellm() {
        // Bare name, no provider: the name itself.
        assert_eq!(map().lookup("gpt-4o-mini", None).unwrap().0, "gpt-4o-mini");
        // Provider prefix kept when the map has it (`groq/...` keys).
        let groq = map()
            .provider_entries("groq")
            .into_iter()
            .next()
            .map(|(k, _)| k)
            .unwrap();
        let (key, e) = map().lookup(&format!("groq/{groq}"), None).unwrap();
        assert!(key.eq_ignore_ascii_case(&format!("groq/{groq}")), "{key}");
        assert_eq!(e.provider.as_deref(), Some("groq"));
        // Case-insensitive fallback.
        assert_eq!(
            map().lookup("openai/GPT-4o-Mini", None).unwrap().0,
            "gpt-4o-mini"
        );
        // Dated snapshot not in the map falls back to the undated name.
        assert_eq!(
            map()
                .lookup("openai/gpt-4o-mini-2099-01-01", None)
                .unwrap()
                .0,
            "gpt-4o-mini"
        );
        // Provider mismatch: an OpenAI name under another provider is not priced as OpenAI's.
        assert!(map().lookup("groq/gpt-4o-mini", None).is_none());
        // Unknown model.
        assert!(map().lookup("openai/no-such-model-xyz", None).is_none());
    }

    #[test]
    fn candidates_in_litellm_order() {
        assert_eq!(
            candidates("openai/gpt-4o-2024-08-06", Some("openai")),
            vec![
                "openai/gpt-4o-2024-08-06",
                "gpt-4o-2024-08-06",
                "openai/gpt-4o",
                "gpt-4o",
                "openai/openai/gpt-4o-2024-08-06"
            ]
        );
        assert_eq!(
            candidates("gpt-4o", Some("azure")),
            vec!["azure/gpt-4o", "gpt-4o"]
        );
        assert_eq!(
            crate::cost::strip_model_name("ft:gpt-4o:org:suffix:id", None),
            "ft:gpt-4o"
        );
        assert_eq!(
            crate::cost::strip_model_name("gemini-1.5-pro-002", Some("gemini")),
            "gemini-1.5-pro"
        );
    }

    #[test]
    fn override_entries_go_over_the_bundled_map() {
        let mut m = clone_map(map());
        m.merge(
            CostMap::from_json(
                r#"{"gpt-4o-mini": {"input_cost_per_token": 1.0}, "my-model": {"input_cost_per_token": 2.0, "output_cost_per_token": 3.0, "litellm_provider": "openai"}}"#,
            )
            .unwrap(),
        );
        let (_, e) = m.lookup("openai/gpt-4o-mini", None).unwrap();
        assert_eq!(e.input_cost_per_token, Some(1.0));
        assert_eq!(e.output_cost_per_token, Some(6e-7));
        assert_eq!(
            m.lookup("openai/my-model", None)
                .unwrap()
                .1
                .output_cost_per_token,
            Some(3.0)
        );
        assert!(CostMap::from_json("[1]").is_err());
    }

    #[test]
    fn remote_override_is_refused() {
        assert!(override_path(Some("https://example.com/map.json")).is_err());
        assert_eq!(
            override_path(Some("file:///tmp/m.json")).unwrap(),
            Some(PathBuf::from("/tmp/m.json"))
        );
        assert_eq!(override_path(None).unwrap(), None);
    }
}
