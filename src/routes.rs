//! Which request paths are LLM routes, and how they map onto a deployment's `api_base`.

/// The kind of LLM call a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmRoute {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl LlmRoute {
    /// The path below the provider's base (`api_base` already ends in `/v1` for OpenAI).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            LlmRoute::ChatCompletions => "/chat/completions",
            LlmRoute::Completions => "/completions",
            LlmRoute::Embeddings => "/embeddings",
        }
    }

    /// The route name LiteLLM puts in "Invalid model name" errors.
    pub fn error_name(self) -> &'static str {
        self.upstream_suffix()
    }
}

/// Classifies a request path (query string ignored). `None`: not an LLM route.
pub fn classify(path: &str) -> Option<LlmRoute> {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let path = path.strip_prefix("/openai").unwrap_or(path);
    match path {
        "/chat/completions" => Some(LlmRoute::ChatCompletions),
        "/completions" => Some(LlmRoute::Completions),
        "/embeddings" => Some(LlmRoute::Embeddings),
        _ => None,
    }
}

/// The model-listing routes the filter answers itself from the key's allowed models.
pub fn is_model_list(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    matches!(path, "/v1/models" | "/models" | "/v1/models/")
}

/// Joins `api_base`'s path with the route suffix: `/v1` + `/chat/completions`; keeps the
/// client's query string.
pub fn upstream_path(base_path: &str, route: LlmRoute, client_path: &str) -> String {
    let base = base_path.trim_end_matches('/');
    let query = client_path.split_once('?').map(|(_, q)| q);
    match query {
        Some(q) => format!("{base}{}?{q}", route.upstream_suffix()),
        None => format!("{base}{}", route.upstream_suffix()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_litellm_paths() {
        assert_eq!(
            classify("/v1/chat/completions"),
            Some(LlmRoute::ChatCompletions)
        );
        assert_eq!(
            classify("/chat/completions"),
            Some(LlmRoute::ChatCompletions)
        );
        assert_eq!(classify("/openai/v1/chat/completions"), None);
        assert_eq!(classify("/v1/completions?x=1"), Some(LlmRoute::Completions));
        assert_eq!(classify("/embeddings"), Some(LlmRoute::Embeddings));
        assert_eq!(classify("/key/generate"), None);
    }

    #[test]
    fn joins_base() {
        assert_eq!(
            upstream_path("/v1", LlmRoute::ChatCompletions, "/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            upstream_path("", LlmRoute::Embeddings, "/v1/embeddings?a=b"),
            "/embeddings?a=b"
        );
        assert_eq!(
            upstream_path("/openai/v1/", LlmRoute::Completions, "/completions"),
            "/openai/v1/completions"
        );
    }
}
