//! The admission decision for an LLM request: who is calling, may they use this model, and
//! where does the request go. Pure: the filter feeds it bytes and applies the answer.

use crate::duration::format_python_utc;
use crate::errors::ApiError;
use crate::model_access::{list_allows, ModelFacts};
use crate::plugin_config::{Deployment, PluginConfig};
use crate::rate_limits::{estimate_tokens, output_floor, Descriptor};
use crate::records::KeyRecord;
use crate::request_body::{self, LlmRequest};
use crate::routes::{upstream_path, LlmRoute};

/// Who sent the request, as established from the headers.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    Master,
    VirtualKey {
        record: Box<KeyRecord>,
        /// Last four characters of the raw key, for `expired_key`'s `param`.
        raw_last4: String,
    },
}

/// What to forward: the deployment, the upstream path and the rewritten body.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted<'a> {
    pub deployment: &'a Deployment,
    pub path: String,
    pub body: Vec<u8>,
    pub request: LlmRequest,
}

/// Decides an LLM request once its body is complete. `pick` spreads load over the deployments
/// of one model name (any counter will do). Checks run in LiteLLM's order (litellm-compat.md §8):
/// blocked, key model access, expiry, user model access, then routing.
pub fn admit<'a>(
    config: &'a PluginConfig,
    caller: &Caller,
    route: LlmRoute,
    client_path: &str,
    body: &[u8],
    now_micros: i64,
    pick: usize,
) -> Result<Admitted<'a>, ApiError> {
    let request = request_body::parse(body)?;
    let candidates: Vec<&Deployment> = config.deployments_for(&request.model);
    let mut groups: Vec<String> = Vec::new();
    for d in &candidates {
        for g in &d.access_groups {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
    }
    let facts = ModelFacts {
        requested: &request.model,
        access_groups: &groups,
        provider: candidates.first().map(|d| d.provider.as_str()),
    };

    if let Caller::VirtualKey { record, raw_last4 } = caller {
        check_key(record, raw_last4, &facts, now_micros)?;
    }

    let count = candidates.len();
    let Some(deployment) = (count > 0)
        .then(|| candidates.get(pick % count).copied())
        .flatten()
    else {
        return Err(ApiError::unknown_model(route.error_name(), &request.model));
    };
    Ok(Admitted {
        deployment,
        path: upstream_path(&deployment.base_path, route, client_path),
        body: request.upstream_body(&deployment.backend_model),
        request,
    })
}

fn check_key(
    record: &KeyRecord,
    raw_last4: &str,
    facts: &ModelFacts<'_>,
    now_micros: i64,
) -> Result<(), ApiError> {
    if record.blocked {
        return Err(ApiError::key_blocked());
    }
    if !list_allows(&record.models, facts) {
        return Err(ApiError::model_access_denied("key", facts.requested));
    }
    if let Some(expires) = record.expires_at_micros {
        if expires < now_micros {
            return Err(ApiError::expired_key(
                &format!("sk-...{raw_last4}"),
                &format_python_utc(expires),
                &format_python_utc(now_micros),
            ));
        }
    }
    if record.team_id.is_none() && !list_allows(&record.user_models, facts) {
        return Err(ApiError::model_access_denied("user", facts.requested));
    }
    Ok(())
}

/// The rate-limit scopes a request counts against, in LiteLLM's order (§4.1): the key, its
/// user, then the key's per-model limit (its own, else the deployments' smallest default).
pub fn descriptors(config: &PluginConfig, caller: &Caller, model: &str) -> Vec<Descriptor> {
    let Caller::VirtualKey { record, .. } = caller else {
        return Vec::new();
    };
    let mut out = vec![Descriptor {
        kind: "api_key",
        value: record.token.clone(),
        rpm: record.rpm_limit,
        tpm: record.tpm_limit,
        max_parallel: record.max_parallel_requests,
    }];
    if let Some(user) = &record.user_id {
        out.push(Descriptor {
            kind: "user",
            value: user.clone(),
            rpm: record.user_rpm_limit,
            tpm: record.user_tpm_limit,
            max_parallel: None,
        });
    }
    let deployments = config.deployments_for(model);
    let default_rpm = deployments
        .iter()
        .filter_map(|d| d.default_api_key_rpm_limit)
        .min();
    let default_tpm = deployments
        .iter()
        .filter_map(|d| d.default_api_key_tpm_limit)
        .min();
    let rpm = record.model_rpm_limit.get(model).copied().or(default_rpm);
    let tpm = record.model_tpm_limit.get(model).copied().or(default_tpm);
    if rpm.is_some() || tpm.is_some() {
        out.push(Descriptor {
            kind: "model_per_key",
            value: format!("{}:{model}", record.token),
            rpm,
            tpm,
            max_parallel: None,
        });
    }
    out.retain(|d| d.rpm.is_some() || d.tpm.is_some() || d.max_parallel.is_some());
    out
}

/// What the rate limiter needs for one admitted request.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitPlan {
    pub descriptors: Vec<Descriptor>,
    /// The tpm reservation (LiteLLM's estimate).
    pub token_estimate: u64,
    /// `max_tokens` to write upstream when a small tpm limit applies and the client set no cap
    /// (LiteLLM's implicit output cap, §4.2).
    pub implicit_max_tokens: Option<u64>,
}

pub fn limit_plan(
    config: &PluginConfig,
    caller: &Caller,
    request: &LlmRequest,
    route: LlmRoute,
) -> LimitPlan {
    let descriptors = descriptors(config, caller, &request.model);
    let min_tpm = descriptors.iter().filter_map(|d| d.tpm).min();
    let implicit_max_tokens = match (route, request.max_tokens, min_tpm) {
        (LlmRoute::Embeddings, _, _) | (_, Some(_), _) | (_, _, None) => None,
        (_, None, Some(l)) if l < 4096 => Some(output_floor(Some(l))),
        _ => None,
    };
    let token_estimate = if route == LlmRoute::Embeddings {
        estimate_tokens(request.prompt_chars(), Some(0), 1, min_tpm)
    } else {
        estimate_tokens(
            request.prompt_chars(),
            request.max_tokens.or(implicit_max_tokens),
            request.n(),
            min_tpm,
        )
    };
    LimitPlan {
        descriptors,
        token_estimate,
        implicit_max_tokens,
    }
}

/// Models a caller may use, for `/v1/models`.
pub fn visible_models<'a>(config: &'a PluginConfig, caller: &Caller) -> Vec<&'a str> {
    config
        .model_names()
        .into_iter()
        .filter(|name| match caller {
            Caller::Master => true,
            Caller::VirtualKey { record, .. } => {
                let groups: Vec<String> = config
                    .deployments_for(name)
                    .into_iter()
                    .flat_map(|d| d.access_groups.iter().cloned())
                    .collect();
                let facts = ModelFacts {
                    requested: name,
                    access_groups: &groups,
                    provider: config
                        .deployments_for(name)
                        .first()
                        .map(|d| d.provider.as_str()),
                };
                list_allows(&record.models, &facts)
                    && (record.team_id.is_some() || list_allows(&record.user_models, &facts))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PluginConfig {
        let dep = |name: &str, backend: &str, groups: &[&str]| Deployment {
            model_name: name.into(),
            id: format!("{name}-id"),
            provider: "openai".into(),
            backend_model: backend.into(),
            cluster: format!("upstream_{name}"),
            authority: "127.0.0.1:9".into(),
            base_path: "/v1".into(),
            api_key: Some("provider-key".into()),
            access_groups: groups.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        PluginConfig {
            deployments: vec![
                dep("gpt-a", "real-a", &["beta"]),
                dep("gpt-b", "real-b", &[]),
                dep("gpt-b", "real-b2", &[]),
            ],
            ..Default::default()
        }
    }

    fn key(models: &[&str]) -> Caller {
        Caller::VirtualKey {
            record: Box::new(KeyRecord {
                token: "t".into(),
                models: models.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            raw_last4: "abcd".into(),
        }
    }

    const BODY: &[u8] = br#"{"model":"gpt-a","messages":[{"role":"user","content":"hi"}]}"#;

    #[test]
    fn admits_and_rewrites() {
        let cfg = config();
        let a = admit(
            &cfg,
            &key(&[]),
            LlmRoute::ChatCompletions,
            "/chat/completions",
            BODY,
            0,
            0,
        )
        .unwrap();
        assert_eq!(a.deployment.id, "gpt-a-id");
        assert_eq!(a.path, "/v1/chat/completions");
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["model"], "real-a");
    }

    #[test]
    fn spreads_over_deployments() {
        let cfg = config();
        let body = br#"{"model":"gpt-b"}"#;
        let a0 = admit(
            &cfg,
            &Caller::Master,
            LlmRoute::ChatCompletions,
            "/",
            body,
            0,
            0,
        )
        .unwrap();
        let a1 = admit(
            &cfg,
            &Caller::Master,
            LlmRoute::ChatCompletions,
            "/",
            body,
            0,
            1,
        )
        .unwrap();
        assert_ne!(a0.deployment.backend_model, a1.deployment.backend_model);
    }

    #[test]
    fn key_model_restrictions() {
        let cfg = config();
        let r = LlmRoute::ChatCompletions;
        assert!(admit(&cfg, &key(&["gpt-a"]), r, "/", BODY, 0, 0).is_ok());
        assert!(admit(&cfg, &key(&["beta"]), r, "/", BODY, 0, 0).is_ok());
        let e = admit(&cfg, &key(&["gpt-b"]), r, "/", BODY, 0, 0).unwrap_err();
        assert_eq!(
            (e.status, e.error_type.as_str()),
            (403, "key_model_access_denied")
        );
    }

    #[test]
    fn user_models_apply_to_personal_keys_only() {
        let cfg = config();
        let mut record = KeyRecord {
            user_models: vec!["gpt-b".into()],
            ..Default::default()
        };
        let caller = |record: &KeyRecord| Caller::VirtualKey {
            record: Box::new(record.clone()),
            raw_last4: "abcd".into(),
        };
        let e = admit(
            &cfg,
            &caller(&record),
            LlmRoute::ChatCompletions,
            "/",
            BODY,
            0,
            0,
        )
        .unwrap_err();
        assert_eq!(e.error_type, "user_model_access_denied");
        record.team_id = Some("team".into());
        assert!(admit(
            &cfg,
            &caller(&record),
            LlmRoute::ChatCompletions,
            "/",
            BODY,
            0,
            0
        )
        .is_ok());
    }

    #[test]
    fn unknown_model_is_400_but_forbidden_first() {
        let cfg = config();
        let body = br#"{"model":"nope"}"#;
        let e = admit(&cfg, &key(&[]), LlmRoute::ChatCompletions, "/", body, 0, 0).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e
            .message
            .contains("Invalid model name passed in model=nope"));
        let e = admit(
            &cfg,
            &key(&["gpt-a"]),
            LlmRoute::ChatCompletions,
            "/",
            body,
            0,
            0,
        )
        .unwrap_err();
        assert_eq!(e.status, 403);
    }

    #[test]
    fn blocked_then_access_then_expiry() {
        let cfg = config();
        let mut record = KeyRecord {
            models: vec!["gpt-b".into()],
            expires_at_micros: Some(1_000_000),
            ..Default::default()
        };
        let call = |record: &KeyRecord, body: &[u8]| {
            admit(
                &cfg,
                &Caller::VirtualKey {
                    record: Box::new(record.clone()),
                    raw_last4: "wxyz".into(),
                },
                LlmRoute::ChatCompletions,
                "/",
                body,
                2_000_000,
                0,
            )
        };
        // expired and forbidden: the model check comes first (403)
        assert_eq!(call(&record, BODY).unwrap_err().status, 403);
        let e = call(&record, br#"{"model":"gpt-b"}"#).unwrap_err();
        assert_eq!((e.status, e.error_type.as_str()), (401, "expired_key"));
        assert_eq!(e.param.as_deref(), Some("sk-...wxyz"));
        assert!(e
            .message
            .contains("Key Expiry time 1970-01-01 00:00:01+00:00"));
        record.blocked = true;
        assert_eq!(call(&record, BODY).unwrap_err(), ApiError::key_blocked());
    }

    #[test]
    fn model_list_filtering() {
        let cfg = config();
        assert_eq!(
            visible_models(&cfg, &Caller::Master),
            vec!["gpt-a", "gpt-b"]
        );
        assert_eq!(visible_models(&cfg, &key(&["beta"])), vec!["gpt-a"]);
    }
}
