//! Request-path parsing (`routes`) and model access matching (`model_access`).
//!
//! Input: `[field: path][field: api_base path][field: pattern][rest: model name]`, as UTF-8
//! (lossy).
//!
//! Invariants: a classified path ignores its query and a trailing slash; the upstream path is
//! the base, the route's suffix and the client's query; `wildcard_match` agrees with a
//! reference glob matcher; the provider of `p/x` is `p`; `*` and the model's own name allow it.
#![no_main]

mod common;

use common::{glob_reference, Input};
use libfuzzer_sys::fuzz_target;
use tollgate::model_access::{list_allows, provider_of_requested, wildcard_match, ModelFacts};
use tollgate::routes::{classify, is_model_list, upstream_path};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let path = String::from_utf8_lossy(input.field()).into_owned();
    let base = String::from_utf8_lossy(input.field()).into_owned();
    let pattern = String::from_utf8_lossy(input.field()).into_owned();
    let model = String::from_utf8_lossy(input.rest).into_owned();

    let route = classify(&path);
    let _ = is_model_list(&path);
    let (no_query, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path.as_str(), None),
    };
    assert_eq!(classify(no_query), route);
    if let Some(r) = route {
        assert_eq!(classify(&format!("{no_query}?x=1")), Some(r));
        let up = upstream_path(&base, r, &path);
        let expected = format!("{}{}", base.trim_end_matches('/'), r.upstream_suffix());
        match query {
            Some(q) => assert_eq!(up, format!("{expected}?{q}")),
            None => assert_eq!(up, expected),
        }
    }

    assert_eq!(
        wildcard_match(&pattern, &model),
        glob_reference(&pattern, &model),
        "pattern {pattern:?} text {model:?}"
    );
    let provider = provider_of_requested(&model);
    if let Some((p, rest)) = model.split_once('/') {
        if !p.is_empty() && !rest.is_empty() {
            assert_eq!(provider, Some(p));
        }
    }
    let groups = vec![pattern.clone()];
    let facts = ModelFacts {
        requested: &model,
        access_groups: &groups,
        provider,
    };
    assert!(list_allows(&[], &facts));
    assert!(list_allows(&["*".to_string()], &facts));
    assert!(list_allows(&[model.clone()], &facts));
    assert!(list_allows(&[pattern.clone()], &facts));
    let no_groups = ModelFacts {
        requested: &model,
        access_groups: &[],
        provider,
    };
    if wildcard_match(&pattern, &model) {
        assert!(list_allows(&[pattern.clone()], &no_groups));
    }
});
