//! Spend: the log of settled calls and the totals they charge. Each event is inserted once,
//! keyed by the filter-minted event id; only the rows actually inserted are charged, in the
//! same transaction, so a batch applied twice (or by two replicas at once) counts once.

use super::sql::{Exec, Row, Value};
use super::{
    add_model_spend, get_end_user, get_key, get_proxy, get_user, proxy_lazy_reset, put_end_user,
    put_key_doc, put_proxy, put_user_doc, sql_u64, sql_u64_back, to_doc, Budgeted, EndUserRow,
    KeyFilter, SpendApplied, SpendLogQuery, Store,
};
use crate::records::{SpendBatch, SpendEvent};
use crate::time::format_iso8601_utc;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Most events per INSERT statement (20 parameters each: within SQLite's and PostgreSQL's limits).
const EVENTS_PER_INSERT: usize = 256;

/// Splits `n` events into INSERT chunks whose sizes are powers of two (largest first), so every
/// batch uses the same ≤ 9 statement texts. Sized to fit the batch exactly, each of up to 500
/// widths was a separately prepared and cached statement (~200 KB each in SQLite, and a
/// server-side statement per connection on PostgreSQL): the sidecar's heap grew by ~10 MB per
/// 25 000 calls under load.
fn insert_chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= EVENTS_PER_INSERT {
            EVENTS_PER_INSERT
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        n -= size;
        Some(size)
    })
}

const SPEND_LOG_COLUMNS: &str = "event_id, request_id, client_request_id, api_key, user_id,
    team_id, end_user, model, model_id, spend_nanos, prompt_tokens, completion_tokens,
    total_tokens, cached_tokens, estimated, status, call_type, start_time, end_time, doc";

/// The key an event is de-duplicated by: the filter-minted `event_id`. An event without one
/// (sent by a filter from before event ids) is keyed by a hash of its whole content, so a
/// retried batch still dedupes, but two calls differ by their times and never merge.
fn event_key(e: &SpendEvent) -> String {
    if !e.event_id.is_empty() {
        return e.event_id.clone();
    }
    let doc = serde_json::to_string(e).unwrap_or_default();
    format!("tollgate-{}", crate::key_format::hash_key(&doc))
}

/// What a spend-log row keeps beyond its columns (LiteLLM's `metadata`-like extras). New
/// [`SpendEvent`] fields go here, so they need no migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct SpendLogDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_alias: Option<String>,
}

#[derive(Default)]
struct KeyCharge {
    nanos: i64,
    models: BTreeMap<String, i64>,
}

impl Store {
    /// Records a batch of settled calls and charges them, in one transaction.
    ///
    /// Each event is inserted into `spend_logs` unless its `event_id` is already there
    /// (then it is a duplicate and charges nothing, so a retried batch is harmless). Each new
    /// event charges: its key (`spend` and `model_spend[model]`), its user if the user row
    /// exists (team keys included, as LiteLLM does), its team, team membership and organization
    /// (the key's, else the team's), its end user (created with `blocked: false` if unknown)
    /// and the proxy budget. Each charged entity first gets its lazy reset at `now`.
    ///
    /// Also tells which events (indexes into `batch.events`) were newly applied: the metrics
    /// count those only, not replayed duplicates.
    pub fn apply_spend_batch_indexed(
        &self,
        batch: &SpendBatch,
        now_micros: i64,
    ) -> Result<(SpendApplied, Vec<usize>)> {
        let mut out = SpendApplied::default();
        let mut applied_events = Vec::new();
        let mut keys: HashMap<&str, KeyCharge> = HashMap::new();
        let mut users: HashMap<&str, i64> = HashMap::new();
        let mut end_users: HashMap<&str, i64> = HashMap::new();
        let mut teams: HashMap<&str, i64> = HashMap::new();
        let mut members: HashMap<(&str, &str), i64> = HashMap::new();
        let mut proxy: i64 = 0;
        // Fleet mode: (envoy, level, ids) → spend its events bring to its leases.
        let mut lease_charges: BTreeMap<(&str, &'static str, Vec<&str>), i64> = BTreeMap::new();
        let mut event_ids = Vec::with_capacity(batch.events.len());
        let mut rows = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let event_id = event_key(e);
            let request_id = if e.request_id.is_empty() {
                event_id.clone()
            } else {
                e.request_id.clone()
            };
            // A cost is never negative; a bad one must not credit anyone.
            let nanos = e.spend_nanos.max(0);
            let doc = SpendLogDoc {
                key_alias: e.key_alias.clone(),
            };
            rows.push(vec![
                Value::from(&event_id),
                Value::from(request_id),
                Value::from(&e.client_request_id),
                Value::from(&e.api_key),
                Value::from(&e.user_id),
                Value::from(&e.team_id),
                Value::from(&e.end_user),
                Value::from(&e.model),
                Value::from(&e.model_id),
                Value::from(nanos),
                Value::from(sql_u64(e.prompt_tokens)),
                Value::from(sql_u64(e.completion_tokens)),
                Value::from(sql_u64(e.total_tokens)),
                Value::from(sql_u64(e.cached_tokens)),
                Value::from(e.estimated),
                Value::from(&e.status),
                Value::from(&e.call_type),
                Value::from(e.start_time_micros),
                Value::from(e.end_time_micros),
                Value::from(to_doc(&doc)?),
            ]);
            event_ids.push(event_id);
        }
        let clock = self.reset_clock();
        self.write(now_micros, |t| {
            let tx = &t.db;
            // One statement per chunk inserts the events whose id is new and names them; an id
            // already logged (or repeated in the batch) is a duplicate and charges nothing.
            let mut inserted: HashSet<String> = HashSet::new();
            let mut rest = rows.as_slice();
            for size in insert_chunk_sizes(rows.len()) {
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                rest = tail;
                let width = chunk.first().map_or(0, Vec::len);
                let values: Vec<String> = (0..chunk.len())
                    .map(|r| {
                        let cols: Vec<String> =
                            (1..=width).map(|c| format!("?{}", r * width + c)).collect();
                        format!("({})", cols.join(", "))
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO spend_logs ({SPEND_LOG_COLUMNS}) VALUES {}
                     ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    values.join(", ")
                );
                let args: Vec<Value> = chunk.iter().flatten().cloned().collect();
                for r in tx.rows(&sql, &args)? {
                    inserted.insert(r.text(0)?);
                }
            }
            for (index, e) in batch.events.iter().enumerate() {
                // The first occurrence of an inserted id is the one applied.
                if !event_ids.get(index).is_some_and(|id| inserted.remove(id)) {
                    out.duplicates += 1;
                    continue;
                }
                let nanos = e.spend_nanos.max(0);
                out.applied += 1;
                applied_events.push(index);
                proxy = proxy.saturating_add(nanos);
                if let Some(k) = e.api_key.as_deref().filter(|k| !k.is_empty()) {
                    let c = keys.entry(k).or_default();
                    c.nanos = c.nanos.saturating_add(nanos);
                    let m = c.models.entry(e.model.clone()).or_default();
                    *m = m.saturating_add(nanos);
                }
                if let Some(u) = e.user_id.as_deref().filter(|u| !u.is_empty()) {
                    let v = users.entry(u).or_default();
                    *v = v.saturating_add(nanos);
                }
                if let Some(u) = e.end_user.as_deref().filter(|u| !u.is_empty()) {
                    let v = end_users.entry(u).or_default();
                    *v = v.saturating_add(nanos);
                }
                if let Some(team) = e.team_id.as_deref().filter(|t| !t.is_empty()) {
                    let v = teams.entry(team).or_default();
                    *v = v.saturating_add(nanos);
                    if let Some(u) = e.user_id.as_deref().filter(|u| !u.is_empty()) {
                        let v = members.entry((team, u)).or_default();
                        *v = v.saturating_add(nanos);
                    }
                }
                if let Some(envoy) = e.envoy_id.as_deref().filter(|x| !x.is_empty()) {
                    for (level, ids) in charged_budgets(e) {
                        let v = lease_charges.entry((envoy, level, ids)).or_default();
                        *v = v.saturating_add(nanos);
                    }
                }
            }
            if out.applied == 0 {
                return Ok(());
            }
            // An event charges its organization: its key's own, else its team's (LiteLLM's
            // `org_id or team.organization_id`).
            let mut orgs: HashMap<String, i64> = HashMap::new();
            // Fleet mode: (envoy, organization) → spend applied to that Envoy's lease.
            let mut org_leases: BTreeMap<(String, String), i64> = BTreeMap::new();
            {
                let mut key_org: HashMap<&str, Option<String>> = HashMap::new();
                let mut team_org: HashMap<&str, Option<String>> = HashMap::new();
                for index in &applied_events {
                    let Some(e) = batch.events.get(*index) else {
                        continue;
                    };
                    let mut org = None;
                    if let Some(k) = e.api_key.as_deref().filter(|k| !k.is_empty()) {
                        if !key_org.contains_key(k) {
                            let found = get_key(tx, k)?.and_then(|r| r.organization_id);
                            key_org.insert(k, found);
                        }
                        org = key_org.get(k).cloned().flatten();
                    }
                    if org.is_none() {
                        if let Some(team) = e.team_id.as_deref().filter(|t| !t.is_empty()) {
                            if !team_org.contains_key(team) {
                                let found = t.team(team)?.and_then(|r| r.organization_id);
                                team_org.insert(team, found);
                            }
                            org = team_org.get(team).cloned().flatten();
                        }
                    }
                    if let Some(org) = org {
                        if let Some(envoy) = e.envoy_id.as_deref().filter(|x| !x.is_empty()) {
                            let v = org_leases
                                .entry((envoy.to_string(), org.clone()))
                                .or_default();
                            *v = v.saturating_add(e.spend_nanos.max(0));
                        }
                        let v = orgs.entry(org).or_default();
                        *v = v.saturating_add(e.spend_nanos.max(0));
                    }
                }
            }
            {
                let now_iso = format_iso8601_utc(now_micros);
                for (token, charge) in &keys {
                    // A key deleted since the call: its log row stays, nothing to charge.
                    let Some(mut row) = get_key(tx, token)? else {
                        continue;
                    };
                    row.lazy_reset(&clock, now_micros);
                    row.add_spend(charge.nanos);
                    for (model, n) in &charge.models {
                        add_model_spend(&mut row.model_spend, model, *n);
                    }
                    put_key_doc(tx, &row)?;
                }
                for (user_id, nanos) in &users {
                    let Some(mut row) = get_user(tx, user_id)? else {
                        continue;
                    };
                    row.lazy_reset(&clock, now_micros);
                    row.add_spend(*nanos);
                    put_user_doc(tx, &row)?;
                }
                for (user_id, nanos) in &end_users {
                    let mut row = match get_end_user(tx, user_id)? {
                        Some(row) => row,
                        None => EndUserRow {
                            user_id: (*user_id).to_string(),
                            blocked: false,
                            created_at: now_iso.clone(),
                            updated_at: now_iso.clone(),
                            ..Default::default()
                        },
                    };
                    let budget = t.end_user_budget(&row)?;
                    super::end_users::follow_period(&mut row, budget.as_ref());
                    row.lazy_reset(&clock, now_micros);
                    row.add_spend(*nanos);
                    put_end_user(tx, &row)?;
                }
                for (team_id, nanos) in &teams {
                    // A team deleted since the call: nothing to charge.
                    let Some(mut row) = t.team(team_id)? else {
                        continue;
                    };
                    row.add_spend(*nanos);
                    t.save_team(&row)?;
                }
                for (org_id, nanos) in &orgs {
                    // An organization deleted since the call: nothing to charge.
                    let Some((mut row, _)) = t.organization(org_id)? else {
                        continue;
                    };
                    row.add_spend(*nanos);
                    t.save_organization(&row)?;
                }
                for ((team_id, user_id), nanos) in &members {
                    // Only members have a team spend (LiteLLM charges the membership row).
                    let Some((mut row, _)) = t.membership(team_id, user_id)? else {
                        continue;
                    };
                    row.add_spend(*nanos);
                    t.save_membership(&row)?;
                }
                let mut row = get_proxy(tx)?;
                proxy_lazy_reset(&mut row, &clock, now_micros);
                row.spend_nanos = row.spend_nanos.saturating_add(proxy);
                put_proxy(tx, &row)?;
            }
            t.apply_lease_charges(&lease_charges)?;
            let org_charges: BTreeMap<(&str, &'static str, Vec<&str>), i64> = org_leases
                .iter()
                .map(|((envoy, org), n)| ((envoy.as_str(), "organization", vec![org.as_str()]), *n))
                .collect();
            t.apply_lease_charges(&org_charges)?;
            Ok(())
        })?;
        Ok((out, applied_events))
    }

    /// Spend-log rows matching `q`, newest first (by start time).
    pub fn spend_logs(&self, q: &SpendLogQuery) -> Result<Vec<SpendEvent>> {
        let mut sql = String::from(
            "SELECT request_id, api_key, user_id, team_id, end_user, model, model_id,
                spend_nanos, prompt_tokens, completion_tokens, total_tokens, cached_tokens,
                estimated, status, call_type, start_time, end_time, doc, event_id,
                client_request_id
             FROM spend_logs WHERE 1 = 1",
        );
        let mut args: Vec<Value> = Vec::new();
        match &q.api_key {
            KeyFilter::Any => {}
            KeyFilter::Token(t) => {
                args.push(Value::from(t));
                sql.push_str(&format!(" AND api_key = ?{}", args.len()));
            }
            KeyFilter::Master => sql.push_str(" AND api_key IS NULL"),
        }
        if let Some(u) = &q.user_id {
            args.push(Value::from(u));
            sql.push_str(&format!(" AND user_id = ?{}", args.len()));
        }
        if let Some(r) = &q.request_id {
            args.push(Value::from(r));
            sql.push_str(&format!(" AND request_id = ?{}", args.len()));
        }
        if let Some(s) = q.start_micros {
            args.push(Value::from(s));
            sql.push_str(&format!(" AND start_time >= ?{}", args.len()));
        }
        if let Some(e) = q.end_micros {
            args.push(Value::from(e));
            sql.push_str(&format!(" AND start_time < ?{}", args.len()));
        }
        sql.push_str(" ORDER BY start_time DESC, rowid DESC");
        if let Some(l) = q.limit {
            args.push(Value::from(sql_u64(l)));
            sql.push_str(&format!(" LIMIT ?{}", args.len()));
        }
        self.read(|db| db.rows(&sql, &args)?.iter().map(spend_event).collect())
    }
}

/// The budgets an event is charged to, as (level, ids) of their lease scopes (the key's
/// `model_max_budget` entry is found when the leases are charged).
fn charged_budgets(e: &SpendEvent) -> Vec<(&'static str, Vec<&str>)> {
    fn some(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|x| !x.is_empty())
    }
    let mut out = vec![("proxy", Vec::new())];
    if let Some(k) = some(&e.api_key) {
        out.push(("key", vec![k]));
        out.push(("key_model", vec![k, e.model.as_str()]));
    }
    if let Some(u) = some(&e.user_id) {
        out.push(("user", vec![u]));
    }
    if let Some(c) = some(&e.end_user) {
        out.push(("end_user", vec![c]));
    }
    if let Some(t) = some(&e.team_id) {
        out.push(("team", vec![t]));
        if let Some(u) = some(&e.user_id) {
            out.push(("team_member", vec![t, u]));
        }
    }
    out
}

fn spend_event(r: &Row) -> Result<SpendEvent> {
    let doc: SpendLogDoc = serde_json::from_str(&r.text(17)?).unwrap_or_default();
    Ok(SpendEvent {
        event_id: r.text(18)?,
        request_id: r.text(0)?,
        client_request_id: r.opt_text(19)?,
        api_key: r.opt_text(1)?,
        key_alias: doc.key_alias,
        user_id: r.opt_text(2)?,
        team_id: r.opt_text(3)?,
        end_user: r.opt_text(4)?,
        model: r.text(5)?,
        model_id: r.text(6)?,
        spend_nanos: r.int(7)?,
        prompt_tokens: sql_u64_back(r.int(8)?),
        completion_tokens: sql_u64_back(r.int(9)?),
        total_tokens: sql_u64_back(r.int(10)?),
        cached_tokens: sql_u64_back(r.int(11)?),
        estimated: r.bool(12)?,
        status: r.text(13)?,
        call_type: r.text(14)?,
        start_time_micros: r.int(15)?,
        end_time_micros: r.int(16)?,
        // Not kept in the spend log: only for the live gauges.
        envoy_id: None,
        model_remaining_requests: None,
        model_remaining_tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_chunks_cover_the_batch_with_few_statement_shapes() {
        let mut shapes = HashSet::new();
        for n in 0..=2_000usize {
            let sizes: Vec<usize> = insert_chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}: {sizes:?}");
            assert!(sizes
                .iter()
                .all(|s| s.is_power_of_two() && *s <= EVENTS_PER_INSERT));
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{n}: largest first");
            assert!(sizes.len() <= n / EVENTS_PER_INSERT + 8, "{n}: {sizes:?}");
            shapes.extend(sizes);
        }
        assert_eq!(shapes.len(), 9, "{shapes:?}");
    }
}
