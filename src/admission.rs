//! The admission decision for an LLM request: who is calling, may they use this model, and
//! where does the request go. Pure: the filter feeds it bytes and applies the answer.

use crate::budgets::{Level, Scope};
use crate::errors::ApiError;
use crate::model_access::{list_allows, ModelFacts};
use crate::plugin_config::{Deployment, PluginConfig, Pricing};
use crate::rate_limits::{estimate_tokens, output_floor, Descriptor};
use crate::records::{BudgetState, CustomerLookup, CustomerRecord, KeyRecord, ModelBudget};
use crate::request_body::{self, LlmRequest};
use crate::routes::{upstream_path, LlmRoute};
use crate::time::format_python_utc;

/// Who sent the request, as established from the headers.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    Master,
    VirtualKey {
        record: std::rc::Rc<KeyRecord>,
        /// Last four characters of the raw key, for `expired_key`'s `param`.
        raw_last4: String,
    },
}

/// What to forward: the deployment, the upstream path and the rewritten body.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted<'a> {
    /// Borrowed from the config; owned when filled in by a wildcard route.
    pub deployment: std::borrow::Cow<'a, Deployment>,
    pub path: String,
    pub request: LlmRequest,
}

/// Decides an LLM request once its body is complete. `pick` spreads load over the deployments
/// of one model name (any counter will do). Checks run in LiteLLM's order (litellm-compat.md §8):
/// blocked, key model access (`all-team-models` resolved), expiry, team blocked, team model
/// access, user model access (personal keys), then routing. The customer's checks need its
/// record: [`check_customer`].
pub fn admit<'a>(
    config: &'a PluginConfig,
    caller: &Caller,
    route: LlmRoute,
    client_path: &str,
    body: &[u8],
    now_micros: i64,
    pick: usize,
) -> Result<Admitted<'a>, ApiError> {
    let mut request = request_body::parse(body)?;
    let no_aliases = std::collections::BTreeMap::new();
    let (team_aliases, key_aliases) = match caller {
        Caller::VirtualKey { record, .. } => (&record.team_model_aliases, &record.aliases),
        Caller::Master => (&no_aliases, &no_aliases),
    };
    let aliased = crate::model_access::resolve_aliases(
        &request.model,
        team_aliases,
        key_aliases,
        &config.aliases,
    );
    let candidates = route_candidates(config, &aliased.dispatched);

    if let Caller::VirtualKey { record, raw_last4 } = caller {
        let groups_of = |name: &str| {
            if name == aliased.dispatched {
                groups_in(&candidates)
            } else {
                groups_in(&route_candidates(config, name))
            }
        };
        let groups = groups_of(&aliased.checked);
        let also_groups = aliased.also_checked.as_deref().map(groups_of);
        let facts = ModelFacts {
            requested: &aliased.checked,
            access_groups: &groups,
            provider: crate::model_access::provider_of_requested(&aliased.checked),
        };
        let also_facts = aliased
            .also_checked
            .as_deref()
            .zip(also_groups.as_deref())
            .map(|(name, groups)| ModelFacts {
                requested: name,
                access_groups: groups,
                provider: crate::model_access::provider_of_requested(name),
            });
        check_key(
            record,
            raw_last4,
            &CheckedNames {
                facts,
                also: also_facts,
                team_alias: aliased.team_alias,
            },
            &request.model,
            now_micros,
        )?;
        // LiteLLM's `_enforce_user_param_check` (after its key checks, before routing).
        if config.enforce_user_param && !request.object.contains_key("user") {
            return Err(ApiError::user_param_missing());
        }
    }
    // Everything after access (routing, prices, budgets, limits, spend) is the target's.
    request.model = aliased.dispatched;

    let count = candidates.len();
    let Some(deployment) = (count > 0)
        .then(|| candidates.into_iter().nth(pick % count))
        .flatten()
    else {
        return Err(ApiError::unknown_model(route.error_name(), &request.model));
    };
    let path = upstream_path(&deployment.base_path, route, client_path);
    Ok(Admitted {
        deployment,
        path,
        request,
    })
}

/// The deployments a model name routes to: those named after it, else a wildcard route's.
pub fn route_candidates<'a>(
    config: &'a PluginConfig,
    model: &str,
) -> Vec<std::borrow::Cow<'a, Deployment>> {
    let exact = config.deployments_for(model);
    if exact.is_empty() {
        let provider = crate::model_access::provider_of_requested(model);
        return config
            .wildcard_route(model, provider)
            .into_iter()
            .map(std::borrow::Cow::Owned)
            .collect();
    }
    exact.into_iter().map(std::borrow::Cow::Borrowed).collect()
}

/// Access groups of the given deployments, each once.
fn groups_in(deployments: &[std::borrow::Cow<'_, Deployment>]) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for d in deployments {
        for g in &d.access_groups {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
    }
    groups
}

/// The names a request's access is checked by (see [`crate::model_access::AliasedModel`]).
struct CheckedNames<'a> {
    /// The alias-resolved name to check.
    facts: ModelFacts<'a>,
    /// The proxy alias's target, which a list may allow instead.
    also: Option<ModelFacts<'a>>,
    /// `facts.requested` is a team alias, which every list allows.
    team_alias: bool,
}

impl CheckedNames<'_> {
    fn allowed_by(&self, list: &[String]) -> bool {
        self.team_alias
            || list_allows(list, &self.facts)
            || self.also.as_ref().is_some_and(|f| list_allows(list, f))
    }
}

/// The key's checks on the alias-resolved names. Denials name what the client sent.
fn check_key(
    record: &KeyRecord,
    raw_last4: &str,
    names: &CheckedNames<'_>,
    sent: &str,
    now_micros: i64,
) -> Result<(), ApiError> {
    if record.blocked {
        return Err(ApiError::key_blocked());
    }
    if !names.allowed_by(key_models(record)) {
        return Err(ApiError::model_access_denied("key", sent));
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
    if let Some(team_id) = &record.team_id {
        if record.team_blocked {
            return Err(team_blocked(team_id));
        }
        if !names.allowed_by(&record.team_models) {
            return Err(ApiError::model_access_denied("team", sent));
        }
    }
    // (A key without a team has no team aliases.)
    if record.team_id.is_none() && !names.allowed_by(&record.user_models) {
        return Err(ApiError::model_access_denied("user", sent));
    }
    // The organization's models hold at request time too (LiteLLM checks them only when a
    // team joins the organization, so a team allowed every model would escape them).
    if record.organization_id.is_some() && !names.allowed_by(&record.organization_models) {
        return Err(ApiError::model_access_denied("org", sent));
    }
    Ok(())
}

/// The model list a key's requests are checked against: its own `models`, where
/// `all-team-models` means its team's models (no team: no restriction) (§6).
pub fn key_models(record: &KeyRecord) -> &[String] {
    if record.models.iter().any(|m| m == ALL_TEAM_MODELS) {
        return match record.team_id {
            Some(_) => &record.team_models,
            None => &[],
        };
    }
    &record.models
}

/// A call to a deployment with no price: LiteLLM's `block_requests_for_models_without_pricing`
/// refuses it (403 `model_cost_map_missing`); without it, a wildcard-routed model (the client
/// chose it, not the config) is refused while any budget applies, since it would spend $0
/// against that budget. An unpriced named deployment passes (it was warned about at startup).
pub fn check_priced(
    config: &PluginConfig,
    model: &str,
    deployment: &Deployment,
    scopes: &[Scope],
) -> Result<(), ApiError> {
    if crate::cost::is_priced(&deployment.pricing) {
        return Ok(());
    }
    let message = if config.block_unpriced_models {
        format!(
            "Model '{model}' has no pricing in the cost map, so litellm cannot price the request. Requests for unpriced models are blocked because 'block_requests_for_models_without_pricing' is enabled. Add pricing (input_cost_per_token/output_cost_per_token) to allow the request."
        )
    } else if !deployment.model_pattern.is_empty()
        && scopes.iter().any(|s| s.max_budget_usd.is_some())
    {
        format!(
            "Model '{model}' has no pricing in the cost map, so its spend cannot count against this request's budget. Requests for unpriced models routed by a wildcard are refused while a budget applies. Add pricing (input_cost_per_token/output_cost_per_token) to allow the request."
        )
    } else {
        return Ok(());
    };
    Err(ApiError::new(403, "model_cost_map_missing", message).with_param("model"))
}

/// `all-team-models` in a key's `models`.
pub const ALL_TEAM_MODELS: &str = "all-team-models";

/// LiteLLM's refusal of a blocked team's keys (§8).
pub fn team_blocked(team_id: &str) -> ApiError {
    ApiError::new(
        401,
        "auth_error",
        format!(
            "Authentication Error, Team={team_id} is blocked. Update via `/team/unblock` if you're an admin."
        ),
    )
}

/// Tollgate's refusal of a blocked customer (LiteLLM stores `blocked` but only its enterprise
/// `blocked_user_list` hook enforces it; Tollgate always does).
pub fn customer_blocked(end_user_id: &str) -> ApiError {
    ApiError::new(
        401,
        "auth_error",
        format!(
            "Authentication Error, End User={end_user_id} is blocked. Update via `/customer/unblock` if you're an admin."
        ),
    )
}

/// LiteLLM's refusal of a model outside a customer's `models` (§6).
pub fn customer_model_access_denied(model: &str) -> ApiError {
    ApiError::new(
        403,
        "customer_model_access_denied",
        format!(
            "The requested model '{model}' is not in the allowed models for this customer. Check the models this customer can use and try again."
        ),
    )
    .with_param("model")
}

/// Access groups of every deployment serving `model`.
fn groups_of(config: &PluginConfig, model: &str) -> Vec<String> {
    groups_in(&route_candidates(config, model))
}

/// The customer checks for a request naming an end user, after [`admit`] (the key's, team's
/// and user's checks): a blocked customer is refused (401), then a non-empty `models` list
/// must allow the model (403 `customer_model_access_denied`).
pub fn check_customer(
    config: &PluginConfig,
    customer: &CustomerRecord,
    model: &str,
) -> Result<(), ApiError> {
    if customer.blocked {
        return Err(customer_blocked(&customer.user_id));
    }
    if customer.models.is_empty() {
        return Ok(());
    }
    let groups = groups_of(config, model);
    let facts = ModelFacts {
        requested: model,
        access_groups: &groups,
        provider: crate::model_access::provider_of_requested(model),
    };
    if !list_allows(&customer.models, &facts) {
        return Err(customer_model_access_denied(model));
    }
    Ok(())
}

/// The rate-limit scopes a request counts against, in LiteLLM's order (§4.1): the key, its
/// user, its team, its team membership, then the key's per-model limit (its own, else the
/// team's, else the deployments' smallest default) and the team's per-model limit; with the
/// request's customer (end user), its `end_user` limits come after the team membership's:
/// `api_key`, `user`, `team`, `team_member`, `end_user`, `model_per_key`, `model_per_team`,
/// then the organization's `organization` and `model_per_organization`.
/// Scopes without any limit are left out.
pub fn descriptors_for(
    config: &PluginConfig,
    caller: &Caller,
    model: &str,
    customer: Option<&CustomerRecord>,
) -> Vec<Descriptor> {
    let end_user = customer.map(|c| Descriptor {
        kind: "end_user",
        value: c.user_id.clone(),
        rpm: c.rpm_limit,
        tpm: c.tpm_limit,
        max_parallel: None,
    });
    let Caller::VirtualKey { record, .. } = caller else {
        let mut out: Vec<Descriptor> = end_user.into_iter().collect();
        out.retain(|d| d.rpm.is_some() || d.tpm.is_some());
        return out;
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
    if let Some(team) = &record.team_id {
        out.push(Descriptor {
            kind: "team",
            value: team.clone(),
            rpm: record.team_rpm_limit,
            tpm: record.team_tpm_limit,
            max_parallel: None,
        });
        if let Some(user) = &record.user_id {
            out.push(Descriptor {
                kind: "team_member",
                value: format!("{team}:{user}"),
                rpm: record.team_member_rpm_limit,
                tpm: record.team_member_tpm_limit,
                max_parallel: None,
            });
        }
    }
    out.extend(end_user);
    let deployments = config.deployments_for(model);
    let default_rpm = deployments
        .iter()
        .filter_map(|d| d.default_api_key_rpm_limit)
        .min();
    let default_tpm = deployments
        .iter()
        .filter_map(|d| d.default_api_key_tpm_limit)
        .min();
    let team_rpm = record.team_model_rpm_limit.get(model).copied();
    let team_tpm = record.team_model_tpm_limit.get(model).copied();
    let own_rpm = record.model_rpm_limit.get(model).copied();
    let own_tpm = record.model_tpm_limit.get(model).copied();
    let rpm = own_rpm.or(team_rpm).or(default_rpm);
    let tpm = own_tpm.or(team_tpm).or(default_tpm);
    if rpm.is_some() || tpm.is_some() {
        out.push(Descriptor {
            kind: "model_per_key",
            value: format!("{}:{model}", record.token),
            rpm,
            tpm,
            max_parallel: None,
        });
    }
    if let Some(team) = &record.team_id {
        // The team's per-model limit, unless the key has its own for this model.
        let rpm = team_rpm.filter(|_| own_rpm.is_none());
        let tpm = team_tpm.filter(|_| own_tpm.is_none());
        if rpm.is_some() || tpm.is_some() {
            out.push(Descriptor {
                kind: "model_per_team",
                value: format!("{team}:{model}"),
                rpm,
                tpm,
                max_parallel: None,
            });
        }
    }
    // LiteLLM's v3 limiter appends the organization's scopes after all the others.
    if let Some(org) = &record.organization_id {
        out.push(Descriptor {
            kind: "organization",
            value: org.clone(),
            rpm: record.organization_rpm_limit,
            tpm: record.organization_tpm_limit,
            max_parallel: None,
        });
        out.push(Descriptor {
            kind: "model_per_organization",
            value: format!("{org}:{model}"),
            rpm: record.organization_model_rpm_limit.get(model).copied(),
            tpm: record.organization_model_tpm_limit.get(model).copied(),
            max_parallel: None,
        });
    }
    out.retain(|d| d.rpm.is_some() || d.tpm.is_some() || d.max_parallel.is_some());
    out
}

/// The budgets a request touches, in LiteLLM's check order (§2.2): the key, the key's budget
/// for this model, the team member and the team, the organization, the user (personal keys),
/// the proxy. The end user's comes from the sidecar ([`budget_scopes_with_customer`]). A free
/// model (both prices explicitly 0) touches none.
pub fn budget_scopes(
    config: &PluginConfig,
    caller: &Caller,
    model: &str,
    pricing: &Pricing,
) -> Vec<Scope> {
    if crate::cost::is_free(pricing) {
        return Vec::new();
    }
    let mut scopes = Vec::new();
    if let Caller::VirtualKey { record, .. } = caller {
        let alias = record.key_alias.clone();
        scopes.push(Scope {
            level: Level::Key {
                alias: alias.clone().unwrap_or_else(|| "key".into()),
                key_name: record.key_name.clone(),
            },
            id: record.token.clone(),
            max_budget_usd: record.max_budget,
            duration: record.budget_duration.clone(),
            seed_spend_nanos: record.spend_nanos,
            seed_reset_at_micros: record.budget_reset_at_micros,
        });
        let groups: Vec<String> = config
            .deployments_for(model)
            .iter()
            .flat_map(|d| d.access_groups.iter().cloned())
            .collect();
        if let Some((entry, budget)) = model_budget_entry(&record.model_max_budget, model, &groups)
        {
            scopes.push(Scope {
                level: Level::KeyModel {
                    token: record.token.clone(),
                    alias: alias.unwrap_or_else(|| "None".into()),
                    model: model.to_string(),
                },
                id: format!("{}:{entry}", record.token),
                max_budget_usd: Some(budget.max_budget),
                duration: Some(budget.budget_duration.clone()),
                seed_spend_nanos: 0,
                seed_reset_at_micros: None,
            });
        }
        scopes.extend(team_budget_scopes(record));
        if let (Some(org), Some(b)) = (&record.organization_id, &record.organization_budget) {
            scopes.push(Scope {
                level: Level::Organization,
                id: org.clone(),
                max_budget_usd: b.max_budget,
                duration: b.budget_duration.clone(),
                seed_spend_nanos: b.spend_nanos,
                seed_reset_at_micros: b.budget_reset_at_micros,
            });
        }
        if let (Some(user_id), Some(user)) = (&record.user_id, &record.user_budget) {
            // LiteLLM charges the user for team keys too, but enforces its budget on personal
            // keys only, unless `general_settings.apply_user_budget_to_team_keys`.
            scopes.push(Scope {
                level: Level::User,
                id: user_id.clone(),
                max_budget_usd: if record.team_id.is_none() || config.apply_user_budget_to_team_keys
                {
                    user.max_budget
                } else {
                    None
                },
                duration: user.budget_duration.clone(),
                seed_spend_nanos: user.spend_nanos,
                seed_reset_at_micros: user.budget_reset_at_micros,
            });
        }
    }
    if let Some(max) = config.budgets.proxy_max_budget {
        let seed = match caller {
            Caller::VirtualKey { record, .. } => record.proxy_budget.clone().unwrap_or_default(),
            Caller::Master => BudgetState::default(),
        };
        scopes.push(Scope {
            level: Level::Proxy,
            id: "litellm-proxy-budget".into(),
            max_budget_usd: Some(max),
            duration: config.budgets.proxy_budget_duration.clone(),
            seed_spend_nanos: seed.spend_nanos,
            seed_reset_at_micros: seed.budget_reset_at_micros,
        });
    }
    scopes
}

/// Which `model_max_budget` entry governs a model (LiteLLM's `resolve_model_budget`): the exact
/// name, else an access group serving it, else the most specific matching glob.
pub fn model_budget_entry<'a>(
    entries: &'a std::collections::BTreeMap<String, ModelBudget>,
    model: &str,
    groups: &[String],
) -> Option<(&'a str, &'a ModelBudget)> {
    if let Some((k, v)) = entries.get_key_value(model) {
        return Some((k, v));
    }
    if let Some((k, v)) = entries.iter().find(|(k, _)| groups.contains(k)) {
        return Some((k, v));
    }
    entries
        .iter()
        .filter(|(k, _)| k.contains('*') && crate::model_access::wildcard_match(k, model))
        .max_by_key(|(k, _)| k.chars().filter(|c| *c != '*').count())
        .map(|(k, v)| (k.as_str(), v))
}

/// The team budgets a team key's requests touch, in LiteLLM's order: the key's user as a
/// member of the team (`max_budget_in_team`, else the team's `team_member_budget`), then the
/// team's own `max_budget`.
pub fn team_budget_scopes(record: &KeyRecord) -> Vec<Scope> {
    let Some(team_id) = &record.team_id else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let (Some(user_id), Some(b)) = (&record.user_id, &record.team_member_budget) {
        out.push(Scope {
            level: Level::TeamMember {
                user: user_id.clone(),
                team: team_id.clone(),
            },
            id: format!("{team_id}:{user_id}"),
            max_budget_usd: b.max_budget,
            duration: b.budget_duration.clone(),
            seed_spend_nanos: b.spend_nanos,
            seed_reset_at_micros: b.budget_reset_at_micros,
        });
    }
    if let Some(b) = &record.team_budget {
        out.push(Scope {
            level: Level::Team,
            id: team_id.clone(),
            max_budget_usd: b.max_budget,
            duration: b.budget_duration.clone(),
            seed_spend_nanos: b.spend_nanos,
            seed_reset_at_micros: b.budget_reset_at_micros,
        });
    }
    out
}

/// The customer's budget scope from the sidecar's answer (§2.3): its own budget (or the
/// proxy's default, already resolved by the sidecar) with its spend; for an unknown customer,
/// `max_end_user_budget_id`'s budget from zero. `None` when no budget applies.
pub fn customer_budget_scope(end_user_id: &str, lookup: &CustomerLookup) -> Option<Scope> {
    let (budget, seed) = match lookup {
        CustomerLookup::Found { customer } => {
            let b = customer.budget.as_ref()?;
            (b, (b.spend_nanos, b.budget_reset_at_micros))
        }
        CustomerLookup::NotFound { default_budget } => (default_budget.as_ref()?, (0, None)),
    };
    Some(Scope {
        level: Level::EndUser,
        id: end_user_id.to_string(),
        max_budget_usd: budget.max_budget,
        duration: budget.budget_duration.clone(),
        seed_spend_nanos: seed.0,
        seed_reset_at_micros: seed.1,
    })
}

/// [`budget_scopes`] with the customer's budget from the sidecar's answer (its own, else
/// `max_end_user_budget_id`'s) in LiteLLM's place: after the user's, before the proxy's.
/// Free models touch no budget.
pub fn budget_scopes_with_customer(
    config: &PluginConfig,
    caller: &Caller,
    model: &str,
    pricing: &Pricing,
    customer: Option<(&str, &CustomerLookup)>,
) -> Vec<Scope> {
    let mut scopes = budget_scopes(config, caller, model, pricing);
    if crate::cost::is_free(pricing) {
        return scopes;
    }
    if let Some(scope) = customer.and_then(|(id, lookup)| customer_budget_scope(id, lookup)) {
        let at = scopes
            .iter()
            .position(|s| s.level == Level::Proxy)
            .unwrap_or(scopes.len());
        scopes.insert(at, scope);
    }
    scopes
}

/// The end user (customer) of a request, as LiteLLM identifies it (§2.5): the
/// `x-litellm-customer-id` / `x-litellm-end-user-id` header, else body `user`,
/// `litellm_metadata.user`, `metadata.user_id`, `safety_identifier`. Numbers are stringified,
/// strings trimmed; other types are ignored.
pub fn end_user_id(header: Option<&str>, request: &LlmRequest) -> Option<String> {
    if let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) {
        return Some(h.to_string());
    }
    let o = &request.object;
    let candidates = [
        o.get("user"),
        o.get("litellm_metadata").and_then(|m| m.get("user")),
        o.get("metadata").and_then(|m| m.get("user_id")),
        o.get("safety_identifier"),
    ];
    candidates.into_iter().flatten().find_map(|v| match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
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

/// The limits of a request, with its customer's (its `end_user` limits, §4.1).
pub fn limit_plan_for(
    config: &PluginConfig,
    caller: &Caller,
    request: &LlmRequest,
    route: LlmRoute,
    customer: Option<&CustomerRecord>,
) -> LimitPlan {
    let descriptors = descriptors_for(config, caller, &request.model, customer);
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
            record: std::rc::Rc::new(KeyRecord {
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
        let upstream = a.request.upstream_body(&a.deployment.backend_model);
        let body: serde_json::Value = serde_json::from_slice(&upstream).unwrap();
        assert_eq!(body["model"], "real-a");
    }

    fn admit_as(record: KeyRecord, model: &str) -> Result<Admitted<'static>, ApiError> {
        let cfg: &'static PluginConfig = Box::leak(Box::new(config()));
        let caller = Caller::VirtualKey {
            record: std::rc::Rc::new(record),
            raw_last4: "abcd".into(),
        };
        let body = format!(r#"{{"model":"{model}"}}"#);
        admit(
            cfg,
            &caller,
            LlmRoute::ChatCompletions,
            "/chat/completions",
            body.as_bytes(),
            0,
            0,
        )
    }

    fn aliases(entries: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        entries
            .iter()
            .map(|(a, t)| (a.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn team_alias_is_allowed_and_goes_to_its_target() {
        let record = KeyRecord {
            models: vec!["gpt-a".into()],
            team_id: Some("t1".into()),
            team_models: vec!["gpt-a".into()],
            team_model_aliases: aliases(&[("fast", "gpt-b")]),
            ..Default::default()
        };
        let a = admit_as(record.clone(), "fast").unwrap();
        assert_eq!(a.deployment.model_name, "gpt-b");
        assert_eq!(a.request.model, "gpt-b");
        // The target by its own name is still outside both lists.
        let e = admit_as(record.clone(), "gpt-b").unwrap_err();
        assert_eq!(e.error_type, "key_model_access_denied");
        // A blocked team stays blocked through an alias.
        let blocked = KeyRecord {
            team_blocked: true,
            ..record
        };
        assert_eq!(admit_as(blocked, "fast").unwrap_err().status, 401);
    }

    #[test]
    fn key_alias_is_checked_by_its_target() {
        let record = KeyRecord {
            models: vec!["gpt-b".into()],
            aliases: aliases(&[("mine", "gpt-b"), ("other", "gpt-a")]),
            ..Default::default()
        };
        let a = admit_as(record.clone(), "mine").unwrap();
        assert_eq!(a.deployment.model_name, "gpt-b");
        let e = admit_as(record, "other").unwrap_err();
        assert_eq!(e.error_type, "key_model_access_denied");
        assert_eq!(
            e.message,
            "The requested model 'other' is not available for this API key, or the model name is invalid. Check the models available to you and try again."
        );
    }

    fn admit_with_proxy_aliases(
        caller: Caller,
        model: &str,
    ) -> Result<Admitted<'static>, ApiError> {
        let mut cfg = config();
        cfg.aliases.model_alias_map = aliases(&[("a-alias", "gpt-a")]);
        cfg.aliases.model_group_alias.insert(
            "b-hidden".into(),
            crate::plugin_config::GroupAlias {
                model: "gpt-b".into(),
                hidden: true,
            },
        );
        let cfg: &'static PluginConfig = Box::leak(Box::new(cfg));
        let body = format!(r#"{{"model":"{model}"}}"#);
        admit(
            cfg,
            &caller,
            LlmRoute::ChatCompletions,
            "/chat/completions",
            body.as_bytes(),
            0,
            0,
        )
    }

    #[test]
    fn proxy_aliases_route_to_their_target_for_keys_allowed_either_name() {
        // The master key: sent to the target.
        let a = admit_with_proxy_aliases(Caller::Master, "a-alias").unwrap();
        assert_eq!(
            (a.deployment.id.as_str(), a.request.model.as_str()),
            ("gpt-a-id", "gpt-a")
        );
        let a = admit_with_proxy_aliases(Caller::Master, "b-hidden").unwrap();
        assert_eq!(a.request.model, "gpt-b");
        // A key listing the target, its access group, or the alias itself may call the alias.
        for models in [&["gpt-a"][..], &["beta"], &["a-alias"]] {
            let a = admit_with_proxy_aliases(key(models), "a-alias").unwrap();
            assert_eq!(a.request.model, "gpt-a", "{models:?}");
        }
        let a = admit_with_proxy_aliases(key(&["gpt-b"]), "b-hidden").unwrap();
        assert_eq!(a.deployment.model_name, "gpt-b");
        // A key allowed neither is refused, named by what it sent.
        let e = admit_with_proxy_aliases(key(&["gpt-b"]), "a-alias").unwrap_err();
        assert_eq!(e.error_type, "key_model_access_denied");
        assert!(e.message.contains("'a-alias'"), "{}", e.message);
        // A team's list is checked the same way.
        let team_key = Caller::VirtualKey {
            record: std::rc::Rc::new(KeyRecord {
                team_id: Some("t".into()),
                team_models: vec!["gpt-b".into()],
                ..Default::default()
            }),
            raw_last4: "abcd".into(),
        };
        let e = admit_with_proxy_aliases(team_key, "a-alias").unwrap_err();
        assert_eq!(e.error_type, "team_model_access_denied");
    }

    #[test]
    fn enforce_user_param_refuses_a_key_without_user() {
        let mut cfg = config();
        cfg.enforce_user_param = true;
        let admit_body = |caller: &Caller, body: &[u8]| {
            admit(
                &cfg,
                caller,
                LlmRoute::ChatCompletions,
                "/chat/completions",
                body,
                0,
                0,
            )
            .map(|_| ())
        };
        let e = admit_body(&key(&[]), br#"{"model":"gpt-a"}"#).unwrap_err();
        assert_eq!((e.status, e.error_type.as_str()), (401, "auth_error"));
        assert_eq!(
            e.message,
            "Authentication Error, 'user' param not passed in. 'enforce_user_param'=True"
        );
        // Model access is checked first; `user` present (even null) passes; the master key
        // is not checked.
        let e = admit_body(&key(&["gpt-b"]), br#"{"model":"gpt-a"}"#).unwrap_err();
        assert_eq!(e.error_type, "key_model_access_denied");
        assert!(admit_body(&key(&[]), br#"{"model":"gpt-a","user":null}"#).is_ok());
        assert!(admit_body(&Caller::Master, br#"{"model":"gpt-a"}"#).is_ok());
    }

    #[test]
    fn alias_to_an_unknown_model_names_the_target() {
        let record = KeyRecord {
            aliases: aliases(&[("mine", "nope")]),
            ..Default::default()
        };
        let e = admit_as(record, "mine").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("model=nope"), "{}", e.message);
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
            record: std::rc::Rc::new(record.clone()),
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
                    record: std::rc::Rc::new(record.clone()),
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
    fn end_user_identification_order() {
        let r = request_body::parse(br#"{"model":"m","user":" u1 ","metadata":{"user_id":"u2"}}"#)
            .unwrap();
        assert_eq!(end_user_id(Some("h"), &r).as_deref(), Some("h"));
        assert_eq!(end_user_id(None, &r).as_deref(), Some("u1"));
        let r = request_body::parse(br#"{"model":"m","user":{"x":1},"metadata":{"user_id":7}}"#)
            .unwrap();
        assert_eq!(end_user_id(None, &r).as_deref(), Some("7"));
        let r = request_body::parse(br#"{"model":"m"}"#).unwrap();
        assert_eq!(end_user_id(Some("  "), &r), None);
    }

    #[test]
    fn model_budget_resolution() {
        let mb = |n: f64| ModelBudget {
            max_budget: n,
            budget_duration: "1d".into(),
        };
        let entries: std::collections::BTreeMap<String, ModelBudget> = [
            ("gpt-4o".to_string(), mb(1.0)),
            ("beta".to_string(), mb(2.0)),
            ("gpt-*".to_string(), mb(3.0)),
            ("gpt-4*".to_string(), mb(4.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            model_budget_entry(&entries, "gpt-4o", &[]).unwrap().0,
            "gpt-4o"
        );
        assert_eq!(
            model_budget_entry(&entries, "x", &["beta".into()])
                .unwrap()
                .0,
            "beta"
        );
        assert_eq!(
            model_budget_entry(&entries, "gpt-4-turbo", &[]).unwrap().0,
            "gpt-4*"
        );
        assert_eq!(
            model_budget_entry(&entries, "gpt-3.5", &[]).unwrap().0,
            "gpt-*"
        );
        assert!(model_budget_entry(&entries, "claude", &[]).is_none());
    }

    #[test]
    fn budget_scopes_in_order_and_free_models_skip() {
        let mut cfg = config();
        cfg.budgets.proxy_max_budget = Some(5.0);
        let record = KeyRecord {
            token: "t".into(),
            key_name: "sk-...abcd".into(),
            max_budget: Some(1.0),
            user_id: Some("u".into()),
            user_budget: Some(BudgetState {
                max_budget: Some(2.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let caller = Caller::VirtualKey {
            record: std::rc::Rc::new(record),
            raw_last4: "abcd".into(),
        };
        let scopes = budget_scopes(&cfg, &caller, "gpt-a", &Pricing::default());
        let levels: Vec<_> = scopes.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(levels, vec!["t", "u", "litellm-proxy-budget"]);
        let free = Pricing {
            input_cost_per_token: Some(0.0),
            output_cost_per_token: Some(0.0),
            ..Default::default()
        };
        assert!(budget_scopes(&cfg, &caller, "gpt-a", &free).is_empty());
    }

    /// An unpriced model: refused always with `block_requests_for_models_without_pricing`, and
    /// when routed by a wildcard while a budget applies; otherwise admitted.
    #[test]
    fn unpriced_models_are_refused_where_they_would_spend_nothing_against_a_budget() {
        let mut cfg = config();
        let named = Deployment::default();
        let wild = Deployment {
            model_pattern: "*".into(),
            ..Default::default()
        };
        let budget = |max: Option<f64>| Scope {
            level: Level::Proxy,
            id: "p".into(),
            max_budget_usd: max,
            duration: None,
            seed_spend_nanos: 0,
            seed_reset_at_micros: None,
        };
        assert!(check_priced(&cfg, "m", &named, &[budget(Some(1.0))]).is_ok());
        assert!(check_priced(&cfg, "m", &wild, &[budget(None)]).is_ok());
        assert!(check_priced(&cfg, "m", &wild, &[]).is_ok());
        let e = check_priced(&cfg, "m", &wild, &[budget(None), budget(Some(1.0))]).unwrap_err();
        assert_eq!(
            (e.status, e.error_type.as_str()),
            (403, "model_cost_map_missing")
        );
        assert_eq!(e.param.as_deref(), Some("model"));
        assert!(
            e.message.starts_with("Model 'm' has no pricing"),
            "{}",
            e.message
        );
        let mut priced = wild.clone();
        priced.pricing.output_cost_per_token = Some(0.0);
        assert!(check_priced(&cfg, "m", &priced, &[budget(Some(1.0))]).is_ok());
        cfg.block_unpriced_models = true;
        let e = check_priced(&cfg, "m", &named, &[]).unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(
            e.message,
            "Model 'm' has no pricing in the cost map, so litellm cannot price the request. Requests for unpriced models are blocked because 'block_requests_for_models_without_pricing' is enabled. Add pricing (input_cost_per_token/output_cost_per_token) to allow the request."
        );
        assert!(check_priced(&cfg, "m", &priced, &[]).is_ok());
    }

    #[test]
    fn model_list_filtering() {
        let cfg = config();
        let visible = |c: &Caller| crate::model_list::visible_models(&cfg, c, Default::default());
        assert_eq!(visible(&Caller::Master), vec!["gpt-a", "gpt-b"]);
        assert_eq!(visible(&key(&["beta"])), vec!["gpt-a"]);
    }
    fn team_key(team: &str) -> KeyRecord {
        KeyRecord {
            token: "tok".into(),
            key_name: "sk-...abcd".into(),
            user_id: Some("u".into()),
            team_id: Some(team.into()),
            ..Default::default()
        }
    }

    fn as_caller(record: &KeyRecord) -> Caller {
        Caller::VirtualKey {
            record: std::rc::Rc::new(record.clone()),
            raw_last4: "abcd".into(),
        }
    }

    #[test]
    fn blocked_team_is_401_after_the_key_checks() {
        let cfg = config();
        let mut record = team_key("t1");
        record.team_blocked = true;
        let call = |record: &KeyRecord| {
            admit(
                &cfg,
                &as_caller(record),
                LlmRoute::ChatCompletions,
                "/",
                BODY,
                0,
                0,
            )
        };
        let e = call(&record).unwrap_err();
        assert_eq!((e.status, e.error_type.as_str()), (401, "auth_error"));
        assert_eq!(
            e.message,
            "Authentication Error, Team=t1 is blocked. Update via `/team/unblock` if you're an admin."
        );
        // The key's own checks come first.
        record.models = vec!["gpt-b".into()];
        assert_eq!(
            call(&record).unwrap_err().error_type,
            "key_model_access_denied"
        );
        record.models.clear();
        record.blocked = true;
        assert_eq!(call(&record).unwrap_err(), ApiError::key_blocked());
        // A key without team ignores the flag.
        let mut personal = record.clone();
        personal.blocked = false;
        personal.team_id = None;
        assert!(call(&personal).is_ok());
    }

    #[test]
    fn team_models_restrict_team_keys() {
        let cfg = config();
        let mut record = team_key("t1");
        record.team_models = vec!["gpt-b".into()];
        let call = |record: &KeyRecord, body: &[u8]| {
            admit(
                &cfg,
                &as_caller(record),
                LlmRoute::ChatCompletions,
                "/",
                body,
                0,
                0,
            )
        };
        let e = call(&record, BODY).unwrap_err();
        assert_eq!(
            (e.status, e.error_type.as_str()),
            (403, "team_model_access_denied")
        );
        assert_eq!(e.param.as_deref(), Some("model"));
        assert!(call(&record, br#"{"model":"gpt-b"}"#).is_ok());
        // User models do not apply to team keys.
        record.user_models = vec!["nothing".into()];
        assert!(call(&record, br#"{"model":"gpt-b"}"#).is_ok());
        // Access groups work in team lists too.
        record.team_models = vec!["beta".into()];
        assert!(call(&record, BODY).is_ok());
    }

    #[test]
    fn organization_models_restrict_its_keys_after_the_team() {
        let cfg = config();
        let mut record = team_key("t1");
        record.organization_id = Some("org".into());
        record.organization_models = vec!["gpt-b".into()];
        let call = |record: &KeyRecord, body: &[u8]| {
            admit(
                &cfg,
                &as_caller(record),
                LlmRoute::ChatCompletions,
                "/",
                body,
                0,
                0,
            )
        };
        let e = call(&record, BODY).unwrap_err();
        assert_eq!(
            (e.status, e.error_type.as_str(), e.param.as_deref()),
            (403, "org_model_access_denied", Some("model"))
        );
        assert!(call(&record, br#"{"model":"gpt-b"}"#).is_ok());
        // The team's list is checked first.
        record.team_models = vec!["gpt-b".into()];
        assert_eq!(
            call(&record, BODY).unwrap_err().error_type,
            "team_model_access_denied"
        );
        // An empty organization list allows every model; no organization, no check.
        record.team_models.clear();
        record.organization_models.clear();
        assert!(call(&record, BODY).is_ok());
        record.organization_models = vec!["gpt-b".into()];
        record.organization_id = None;
        assert!(call(&record, BODY).is_ok());
    }

    #[test]
    fn user_budget_binds_team_keys_only_when_configured() {
        let mut record = team_key("t1");
        record.user_budget = Some(BudgetState {
            max_budget: Some(2.0),
            ..Default::default()
        });
        let priced = Pricing {
            input_cost_per_token: Some(1.0),
            ..Default::default()
        };
        let user_limit = |cfg: &PluginConfig| {
            budget_scopes(cfg, &as_caller(&record), "gpt-a", &priced)
                .into_iter()
                .find(|s| s.level == Level::User)
                .map(|s| s.max_budget_usd)
        };
        let mut cfg = config();
        assert_eq!(user_limit(&cfg), Some(None));
        cfg.apply_user_budget_to_team_keys = true;
        assert_eq!(user_limit(&cfg), Some(Some(2.0)));
    }

    #[test]
    fn organization_budget_and_limits_follow_the_team() {
        let cfg = config();
        let mut record = team_key("t1");
        record.organization_id = Some("org".into());
        record.team_budget = Some(BudgetState {
            max_budget: Some(5.0),
            ..Default::default()
        });
        record.organization_budget = Some(BudgetState {
            max_budget: Some(1.0),
            budget_duration: Some("1d".into()),
            budget_reset_at_micros: Some(9),
            spend_nanos: 4,
        });
        record.user_budget = Some(BudgetState::default());
        let priced = Pricing {
            input_cost_per_token: Some(1.0),
            ..Default::default()
        };
        let scopes = budget_scopes(&cfg, &as_caller(&record), "gpt-a", &priced);
        let levels: Vec<_> = scopes.iter().map(|s| (&s.level, s.id.as_str())).collect();
        assert_eq!(
            levels[1..],
            [
                (&Level::Team, "t1"),
                (&Level::Organization, "org"),
                (&Level::User, "u"),
            ]
        );
        let org = &scopes[2];
        assert_eq!(
            (
                org.max_budget_usd,
                org.duration.as_deref(),
                org.seed_spend_nanos
            ),
            (Some(1.0), Some("1d"), 4)
        );
        assert_eq!(org.seed_reset_at_micros, Some(9));

        record.organization_rpm_limit = Some(8);
        record.organization_model_tpm_limit = [("gpt-a".to_string(), 9)].into_iter().collect();
        let d = descriptors_for(&cfg, &as_caller(&record), "gpt-a", None);
        let got: Vec<_> = d
            .iter()
            .map(|d| (d.kind, d.value.as_str(), d.rpm, d.tpm))
            .collect();
        assert_eq!(
            got,
            vec![
                ("organization", "org", Some(8), None),
                ("model_per_organization", "org:gpt-a", None, Some(9)),
            ]
        );
        // Without limits the organization adds no scope.
        record.organization_rpm_limit = None;
        record.organization_model_tpm_limit.clear();
        assert!(descriptors_for(&cfg, &as_caller(&record), "gpt-a", None).is_empty());
    }

    #[test]
    fn all_team_models_resolves_to_the_team_list() {
        let cfg = config();
        let mut record = team_key("t1");
        record.models = vec!["all-team-models".into()];
        record.team_models = vec!["gpt-b".into()];
        assert_eq!(key_models(&record), ["gpt-b".to_string()]);
        let e = admit(
            &cfg,
            &as_caller(&record),
            LlmRoute::ChatCompletions,
            "/",
            BODY,
            0,
            0,
        )
        .unwrap_err();
        assert_eq!(e.error_type, "key_model_access_denied");
        // No team: no restriction.
        record.team_id = None;
        assert!(key_models(&record).is_empty());
        assert!(admit(
            &cfg,
            &as_caller(&record),
            LlmRoute::ChatCompletions,
            "/",
            BODY,
            0,
            0
        )
        .is_ok());
        // The team allows everything: so does the key.
        record.team_id = Some("t1".into());
        record.team_models.clear();
        assert!(admit(
            &cfg,
            &as_caller(&record),
            LlmRoute::ChatCompletions,
            "/",
            BODY,
            0,
            0
        )
        .is_ok());
        assert_eq!(
            crate::model_list::visible_models(&cfg, &as_caller(&record), Default::default()),
            vec!["gpt-a", "gpt-b"]
        );
        record.team_models = vec!["gpt-b".into()];
        assert_eq!(
            crate::model_list::visible_models(&cfg, &as_caller(&record), Default::default()),
            vec!["gpt-b"]
        );
    }

    #[test]
    fn customer_checks() {
        let cfg = config();
        let mut c = CustomerRecord {
            user_id: "cust".into(),
            ..Default::default()
        };
        assert!(check_customer(&cfg, &c, "gpt-a").is_ok());
        c.models = vec!["beta".into()];
        assert!(check_customer(&cfg, &c, "gpt-a").is_ok());
        let e = check_customer(&cfg, &c, "gpt-b").unwrap_err();
        assert_eq!(
            (e.status, e.error_type.as_str()),
            (403, "customer_model_access_denied")
        );
        assert_eq!(e.message, "The requested model 'gpt-b' is not in the allowed models for this customer. Check the models this customer can use and try again.");
        assert_eq!(e.param.as_deref(), Some("model"));
        c.blocked = true;
        let e = check_customer(&cfg, &c, "gpt-a").unwrap_err();
        assert_eq!((e.status, e.error_type.as_str()), (401, "auth_error"));
        assert!(e.message.contains("End User=cust is blocked"));
    }

    #[test]
    fn descriptors_follow_litellm_order() {
        let mut cfg = config();
        cfg.deployments[0].default_api_key_rpm_limit = Some(99);
        let mut record = team_key("t1");
        record.rpm_limit = Some(1);
        record.user_rpm_limit = Some(2);
        record.team_rpm_limit = Some(3);
        record.team_member_tpm_limit = Some(4);
        record.team_model_rpm_limit = [("gpt-a".to_string(), 5)].into_iter().collect();
        let customer = CustomerRecord {
            user_id: "cust".into(),
            rpm_limit: Some(6),
            ..Default::default()
        };
        let d = descriptors_for(&cfg, &as_caller(&record), "gpt-a", Some(&customer));
        let got: Vec<(&str, &str, Option<u64>, Option<u64>)> = d
            .iter()
            .map(|d| (d.kind, d.value.as_str(), d.rpm, d.tpm))
            .collect();
        assert_eq!(
            got,
            vec![
                ("api_key", "tok", Some(1), None),
                ("user", "u", Some(2), None),
                ("team", "t1", Some(3), None),
                ("team_member", "t1:u", None, Some(4)),
                ("end_user", "cust", Some(6), None),
                // No own per-model limit: the team's, before the deployments' default.
                ("model_per_key", "tok:gpt-a", Some(5), None),
                ("model_per_team", "t1:gpt-a", Some(5), None),
            ]
        );
        // The key's own per-model limit wins, and the team's per-model scope steps aside.
        record.model_rpm_limit = [("gpt-a".to_string(), 7)].into_iter().collect();
        let d = descriptors_for(&cfg, &as_caller(&record), "gpt-a", None);
        let kinds: Vec<_> = d.iter().map(|d| (d.kind, d.rpm)).collect();
        assert!(kinds.contains(&("model_per_key", Some(7))));
        assert!(!kinds
            .iter()
            .any(|k| k.0 == "model_per_team" || k.0 == "end_user"));
        // The master key counts only against the customer.
        let d = descriptors_for(&cfg, &Caller::Master, "gpt-a", Some(&customer));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, "end_user");
        assert!(descriptors_for(&cfg, &Caller::Master, "gpt-a", None).is_empty());
    }

    #[test]
    fn team_budget_scopes_member_first() {
        let mut record = team_key("t1");
        assert!(team_budget_scopes(&record).is_empty());
        record.team_budget = Some(BudgetState {
            max_budget: Some(10.0),
            budget_duration: Some("30d".into()),
            budget_reset_at_micros: Some(5),
            spend_nanos: 7,
        });
        record.team_member_budget = Some(BudgetState {
            max_budget: Some(1.0),
            spend_nanos: 3,
            ..Default::default()
        });
        let scopes = team_budget_scopes(&record);
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].id, "t1:u");
        assert_eq!(scopes[0].seed_spend_nanos, 3);
        assert_eq!(
            (&scopes[1].level, scopes[1].id.as_str()),
            (&Level::Team, "t1")
        );
        assert_eq!(scopes[1].duration.as_deref(), Some("30d"));
        record.team_id = None;
        assert!(team_budget_scopes(&record).is_empty());
    }

    #[test]
    fn customer_budget_scope_from_the_lookup() {
        let mut cfg = config();
        cfg.budgets.proxy_max_budget = Some(100.0);
        let found = CustomerLookup::Found {
            customer: Box::new(CustomerRecord {
                user_id: "c".into(),
                budget: Some(BudgetState {
                    max_budget: Some(2.0),
                    budget_duration: Some("1d".into()),
                    budget_reset_at_micros: Some(11),
                    spend_nanos: 5,
                }),
                ..Default::default()
            }),
        };
        let s = customer_budget_scope("c", &found).unwrap();
        assert_eq!(
            (s.level.clone(), s.max_budget_usd, s.seed_spend_nanos),
            (Level::EndUser, Some(2.0), 5)
        );
        let default = CustomerLookup::NotFound {
            default_budget: Some(BudgetState {
                max_budget: Some(1.0),
                spend_nanos: 99,
                ..Default::default()
            }),
        };
        let s = customer_budget_scope("new", &default).unwrap();
        assert_eq!((s.max_budget_usd, s.seed_spend_nanos), (Some(1.0), 0));
        assert!(customer_budget_scope(
            "x",
            &CustomerLookup::NotFound {
                default_budget: None
            }
        )
        .is_none());

        let scopes = budget_scopes_with_customer(
            &cfg,
            &Caller::Master,
            "gpt-a",
            &Pricing::default(),
            Some(("c", &found)),
        );
        let levels: Vec<_> = scopes
            .iter()
            .map(|s| (s.level.clone(), s.max_budget_usd))
            .collect();
        assert_eq!(
            levels,
            vec![(Level::EndUser, Some(2.0)), (Level::Proxy, Some(100.0))]
        );
        // The sidecar says no budget applies: the config's default goes too.
        let none = CustomerLookup::NotFound {
            default_budget: None,
        };
        let scopes = budget_scopes_with_customer(
            &cfg,
            &Caller::Master,
            "gpt-a",
            &Pricing::default(),
            Some(("c", &none)),
        );
        assert_eq!(scopes.len(), 1);
        let free = Pricing {
            input_cost_per_token: Some(0.0),
            output_cost_per_token: Some(0.0),
            ..Default::default()
        };
        assert!(budget_scopes_with_customer(
            &cfg,
            &Caller::Master,
            "gpt-a",
            &free,
            Some(("c", &found))
        )
        .is_empty());
    }
}
