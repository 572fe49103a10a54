//! Fleet mode's lease rows (FLEET.md §4.5): per budget, period and Envoy, what the sidecar has
//! lent and what the Envoy last reported. The arithmetic is [`crate::leases`]; this module finds
//! a budget's limit, spend and period in the records, and locks and stores.
//!
//! One write transaction per lease call. On PostgreSQL every write transaction first takes the
//! store's one advisory lock ([`super::pg`]), so the grants of all sidecar replicas for a
//! budget are made one after another, each seeing the rows the previous one committed: the
//! escrow invariant holds across replicas without a leader. Lease expiry uses PostgreSQL's
//! clock (one clock for every replica); budget periods use the sidecar's, as the lazy resets
//! always have, so replicas' clocks must agree on period ends as they do today.

use super::sql::{args, Dialect, Exec, Row};
use super::Tx;
use crate::budgets::scope_name;
use crate::leases::{
    beyond_lost, is_rate_level, lost_charge, lost_target, rate_window, renew, Lease, Others, Pool,
    Renewal, Report,
};
use crate::plugin_config::LostLeasePolicy;
use crate::records::{BudgetState, LeaseAnswer, LeaseGrant, LeaseItem, LeaseRequest};
use crate::time::parse_iso8601_utc;
use anyhow::{anyhow, Result};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lease (
    scope TEXT NOT NULL,
    period INTEGER NOT NULL,
    envoy_id TEXT NOT NULL,
    grant_total INTEGER NOT NULL,
    held INTEGER NOT NULL,
    used_total INTEGER NOT NULL,
    applied_total INTEGER NOT NULL DEFAULT 0,
    want INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    lost_total INTEGER NOT NULL DEFAULT 0,
    shrunk_from INTEGER NOT NULL DEFAULT 0,
    shrunk_seq INTEGER NOT NULL DEFAULT 0,
    shrunk_until INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, period, envoy_id)
);
";

/// PostgreSQL migration 4: [`Lease::lost`], and the index that finds an Envoy's latest lease
/// (is it silent?).
pub(super) const PG_MIGRATION_LOST: &str = "
ALTER TABLE lease ADD COLUMN lost_total BIGINT NOT NULL DEFAULT 0;
CREATE INDEX lease_envoy ON lease(envoy_id, expires_at);
";

/// PostgreSQL migration 5: an acknowledged shrink ([`Lease::shrunk_from`]).
pub(super) const PG_MIGRATION_SHRUNK: &str = "
ALTER TABLE lease ADD COLUMN shrunk_from BIGINT NOT NULL DEFAULT 0;
ALTER TABLE lease ADD COLUMN shrunk_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE lease ADD COLUMN shrunk_until BIGINT NOT NULL DEFAULT 0;
";

/// PostgreSQL migration 6: the index the sweep for lost leases finds the Envoys that went
/// silent since its last run by ([`super::Store::sweep_lost_leases`]).
pub(super) const PG_MIGRATION_EXPIRY: &str = "
CREATE INDEX lease_expiry ON lease(expires_at);
";

/// The SQLite form of [`PG_MIGRATION_LOST`] and [`PG_MIGRATION_SHRUNK`] on a database from
/// before them (the lease table without `lost_total`, `shrunk_*`); the indexes on any.
pub(super) fn migrate_sqlite(conn: &rusqlite::Connection) -> Result<()> {
    for column in ["lost_total", "shrunk_from", "shrunk_seq", "shrunk_until"] {
        let has: i64 = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('lease') WHERE name = ?1",
            [column],
            |r| r.get(0),
        )?;
        if has == 0 {
            conn.execute_batch(&format!(
                "ALTER TABLE lease ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0;"
            ))?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS lease_envoy ON lease(envoy_id, expires_at);
         CREATE INDEX IF NOT EXISTS lease_expiry ON lease(expires_at);",
    )?;
    Ok(())
}

/// PostgreSQL migration 3.
pub(super) const PG_MIGRATION: &str = "
CREATE TABLE lease (
    scope TEXT NOT NULL,
    period BIGINT NOT NULL,
    envoy_id TEXT NOT NULL,
    grant_total BIGINT NOT NULL,
    held BIGINT NOT NULL,
    used_total BIGINT NOT NULL,
    applied_total BIGINT NOT NULL DEFAULT 0,
    want BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (scope, period, envoy_id)
);
";

/// The levels a lease item may name, with how many ids each takes: budgets, then rate limits
/// (`[descriptor kind, value]`, the limit in the item).
pub const LEVELS: [(&str, usize); 11] = [
    ("key", 1),
    ("key_model", 2),
    ("user", 1),
    ("team", 1),
    ("team_member", 2),
    ("end_user", 1),
    ("organization", 1),
    ("proxy", 0),
    ("rpm", 2),
    ("tpm", 2),
    ("parallel", 2),
];

/// Why an item is malformed (a 400), or `None`.
pub fn item_error(item: &LeaseItem) -> Option<String> {
    let Some((_, n)) = LEVELS.iter().find(|(l, _)| *l == item.level) else {
        return Some(format!("unknown budget level '{}'", item.level));
    };
    if item.ids.len() != *n {
        return Some(format!(
            "budget level '{}' takes {n} ids, got {}",
            item.level,
            item.ids.len()
        ));
    }
    if is_rate_level(&item.level) && item.limit.is_none_or(|l| l < 0) {
        return Some(format!("a '{}' item needs its limit", item.level));
    }
    let ids: Vec<&str> = item.ids.iter().map(String::as_str).collect();
    let name = scope_name(&item.level, &ids);
    (item.scope != name).then(|| format!("scope '{}' should be '{name}'", item.scope))
}

/// What the lease call needs from config.yaml.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseSettings {
    pub ttl_ms: u64,
    /// `litellm_settings.max_budget` (the proxy budget's limit).
    pub proxy_max_budget: Option<f64>,
    /// The rpm/tpm window (`rate_limit_window_size`, µs).
    pub rate_window_micros: i64,
}

impl LeaseSettings {
    fn ttl_micros(&self) -> i64 {
        i64::try_from(self.ttl_ms)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
    }
}

/// A budget as the sidecar sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budget {
    /// `None`: tracked only.
    max: Option<i64>,
    /// Settled spend in `period`.
    spend: i64,
    /// The current period's end (µs), 0 = none.
    period: i64,
    /// The next period's end (µs), 0 = none or not known ahead (a `key_model` window is
    /// opened by its first lease call).
    next: i64,
}

/// What a budget lease is renewed against: the limit, the settled spend, and the period.
#[derive(Debug, Clone, Copy)]
struct Limit {
    max: i64,
    spend: i64,
    period: i64,
}

fn lease_of(r: &Row) -> Result<(String, Lease)> {
    Ok((
        r.text(0)?,
        Lease {
            grant: r.int(1)?,
            held: r.int(2)?,
            used: r.int(3)?,
            applied: r.int(4)?,
            want: r.int(5)?,
            seq: u64::try_from(r.int(6)?).unwrap_or(0),
            expires_at: r.int(7)?,
            lost: r.int(8)?,
            shrunk_from: r.int(9)?,
            shrunk_seq: u64::try_from(r.int(10)?).unwrap_or(0),
            shrunk_until: r.int(11)?,
        },
    ))
}

/// The clock lease rows expire by: PostgreSQL's (shared by all replicas), else `now` (the
/// sidecar's, as the transaction was given it).
fn lease_clock(db: &dyn Exec, now: i64) -> Result<i64> {
    match db.dialect() {
        Dialect::Sqlite => Ok(now),
        Dialect::Postgres => db
            .row(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
                &[],
            )?
            .ok_or_else(|| anyhow!("no clock"))?
            .int(0),
    }
}

impl Tx<'_> {
    fn lease_clock(&self) -> Result<i64> {
        lease_clock(&self.db, self.now)
    }

    /// Every Envoy's lease on `scope` in `period`.
    fn leases(&self, scope: &str, period: i64) -> Result<Vec<(String, Lease)>> {
        self.db
            .rows(
                "SELECT envoy_id, grant_total, held, used_total, applied_total, want, seq,
                        expires_at, lost_total, shrunk_from, shrunk_seq, shrunk_until
                 FROM lease WHERE scope = ?1 AND period = ?2",
                args![scope, period],
            )?
            .iter()
            .map(lease_of)
            .collect()
    }

    /// Stores a lease. A budget's `applied_total` is the spend path's, so a renewal never
    /// writes it; a rate lease's (`pool` not [`Pool::Budget`]) is what the Envoy reported.
    fn put_lease(
        &self,
        scope: &str,
        period: i64,
        envoy_id: &str,
        l: &Lease,
        pool: Pool,
    ) -> Result<()> {
        let sql = if pool == Pool::Budget {
            "INSERT INTO lease (scope, period, envoy_id, grant_total, held, used_total,
                 applied_total, want, seq, expires_at, shrunk_from, shrunk_seq, shrunk_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (scope, period, envoy_id) DO UPDATE SET
                 grant_total = excluded.grant_total, held = excluded.held,
                 used_total = excluded.used_total, want = excluded.want, seq = excluded.seq,
                 expires_at = excluded.expires_at, shrunk_from = excluded.shrunk_from,
                 shrunk_seq = excluded.shrunk_seq, shrunk_until = excluded.shrunk_until"
        } else {
            "INSERT INTO lease (scope, period, envoy_id, grant_total, held, used_total,
                 applied_total, want, seq, expires_at, shrunk_from, shrunk_seq, shrunk_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (scope, period, envoy_id) DO UPDATE SET
                 grant_total = excluded.grant_total, held = excluded.held,
                 used_total = excluded.used_total, applied_total = excluded.applied_total,
                 want = excluded.want, seq = excluded.seq, expires_at = excluded.expires_at,
                 shrunk_from = excluded.shrunk_from, shrunk_seq = excluded.shrunk_seq,
                 shrunk_until = excluded.shrunk_until"
        };
        self.db.exec(
            sql,
            args![
                scope,
                period,
                envoy_id,
                l.grant,
                l.held,
                l.used,
                l.applied,
                l.want,
                i64::try_from(l.seq).unwrap_or(i64::MAX),
                l.expires_at,
                l.shrunk_from,
                i64::try_from(l.shrunk_seq).unwrap_or(i64::MAX),
                l.shrunk_until
            ],
        )?;
        Ok(())
    }

    /// The period a budget with `duration` is in: its stored end, else (no end recorded yet)
    /// the end the filter computes the same way.
    fn period_of(&self, duration: Option<&str>, reset_at: Option<i64>) -> i64 {
        match (duration.filter(|d| !d.is_empty()), reset_at) {
            (None, _) => 0,
            (Some(_), Some(at)) => at,
            (Some(d), None) => self.clock.next_reset_micros(d, self.now),
        }
    }

    fn budget_of(&self, state: &BudgetState) -> Budget {
        let duration = state.budget_duration.as_deref().filter(|d| !d.is_empty());
        let period = self.period_of(duration, state.budget_reset_at_micros);
        Budget {
            max: state
                .max_budget
                .filter(|m| !m.is_nan())
                .map(crate::cost::usd_to_budget_nanos),
            spend: state.spend_nanos,
            period,
            // The period after the one ending at `period` (a boundary gives the next one).
            next: match duration {
                Some(d) if period != 0 => self.clock.next_reset_micros(d, period),
                _ => 0,
            },
        }
    }

    /// A key's `model_max_budget` entry: its window is opened by the first lease call after
    /// the last one ended (the filter's opens at its first charge) and its spend is what the
    /// lease rows of the window have applied (no record keeps it).
    fn key_model_budget(&self, token: &str, entry: &str) -> Result<Option<Budget>> {
        let Some(key) = self.key(token)? else {
            return Ok(None);
        };
        let entries = crate::sidecar::admin_api::model_budgets(&key.model_max_budget);
        let Some(b) = entries.get(entry) else {
            return Ok(None);
        };
        let scope = scope_name("key_model", &[token, entry]);
        let latest = self
            .db
            .row(
                "SELECT MAX(period) FROM lease WHERE scope = ?1",
                args![&scope],
            )?
            .and_then(|r| r.opt_int(0).ok().flatten());
        let period = match latest {
            Some(p) if p > self.now => p,
            _ => crate::time::parse_duration(&b.budget_duration)
                .map(|d| {
                    crate::time::add_duration(self.now.div_euclid(1_000_000), d)
                        .saturating_mul(1_000_000)
                })
                .unwrap_or(0),
        };
        let spend = self
            .db
            .row(
                "SELECT CAST(COALESCE(SUM(CASE WHEN lost_total > applied_total
                     THEN lost_total ELSE applied_total END), 0) AS BIGINT) FROM lease
                 WHERE scope = ?1 AND period = ?2",
                args![&scope, period],
            )?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0);
        Ok(Some(Budget {
            max: Some(crate::cost::usd_to_budget_nanos(b.max_budget)),
            spend,
            period,
            next: 0,
        }))
    }

    /// The budget an item names, as of now (due resets applied and persisted); `None` when
    /// its record does not exist.
    fn lease_budget(&self, item: &LeaseItem, proxy_max: Option<f64>) -> Result<Option<Budget>> {
        let id = |i: usize| item.ids.get(i).map(String::as_str).unwrap_or("");
        let state = match item.level.as_str() {
            "key" => match self.key(id(0))? {
                Some(row) => {
                    // A key without its own limits takes its `budget_id` row's (as the
                    // filter's record does).
                    let linked = match &row.budget_id {
                        Some(b) => self.budget(b)?,
                        None => None,
                    };
                    Some(BudgetState {
                        max_budget: row
                            .max_budget
                            .or(linked.as_ref().and_then(|b| b.max_budget)),
                        budget_duration: row
                            .budget_duration
                            .clone()
                            .or(linked.and_then(|b| b.budget_duration)),
                        budget_reset_at_micros: row.budget_reset_at_micros(),
                        spend_nanos: row.spend_nanos,
                    })
                }
                None => None,
            },
            "key_model" => return self.key_model_budget(id(0), id(1)),
            "user" => self.user(id(0))?.map(|u| u.budget_state()),
            "team" => self.team(id(0))?.map(|t| BudgetState {
                max_budget: t.max_budget,
                budget_duration: t.budget_duration.clone(),
                budget_reset_at_micros: t.budget_reset_at.as_deref().and_then(parse_iso8601_utc),
                spend_nanos: t.spend_nanos,
            }),
            "team_member" => match self.membership(id(0), id(1))? {
                Some((m, Some(b))) => Some(BudgetState {
                    max_budget: b.max_budget,
                    budget_duration: b.budget_duration,
                    budget_reset_at_micros: m
                        .budget_reset_at
                        .as_deref()
                        .and_then(parse_iso8601_utc),
                    spend_nanos: m.spend_nanos,
                }),
                _ => None,
            },
            "end_user" => match self.end_user(id(0))? {
                Some((row, budget)) => budget.map(|b| BudgetState {
                    max_budget: b.max_budget,
                    budget_duration: b.budget_duration,
                    budget_reset_at_micros: row
                        .budget_reset_at
                        .as_deref()
                        .and_then(parse_iso8601_utc),
                    spend_nanos: row.spend_nanos,
                }),
                // A customer seen for the first time: the default budget, from zero.
                None => self.default_end_user_budget()?.map(|b| BudgetState {
                    max_budget: b.max_budget,
                    budget_duration: b.budget_duration,
                    budget_reset_at_micros: None,
                    spend_nanos: 0,
                }),
            },
            "organization" => match self.organization(id(0))? {
                Some((row, budget)) => budget.map(|b| BudgetState {
                    max_budget: b.max_budget,
                    budget_duration: b.budget_duration,
                    budget_reset_at_micros: row
                        .budget_reset_at
                        .as_deref()
                        .and_then(parse_iso8601_utc),
                    spend_nanos: row.spend_nanos,
                }),
                None => None,
            },
            "proxy" => Some(self.proxy_budget()?.state(proxy_max)),
            _ => None,
        };
        Ok(state.map(|s| self.budget_of(&s)))
    }

    /// Renews one Envoy's leases on the budgets of `req`, in sorted scope order (one
    /// transaction: rows are locked in one order, and on PostgreSQL the write lock serialises
    /// replicas). Answers in the request's order.
    pub fn lease(&self, req: &LeaseRequest, settings: LeaseSettings) -> Result<LeaseAnswer> {
        let now = self.lease_clock()?;
        let mut order: Vec<usize> = (0..req.items.len()).collect();
        order.sort_by(|a, b| req.items[*a].scope.cmp(&req.items[*b].scope));
        let mut grants: Vec<Option<LeaseGrant>> = vec![None; req.items.len()];
        let mut ahead = Vec::new();
        for i in order {
            let item = &req.items[i];
            let grant = self.lease_item(&req.envoy_id, req.seq, item, settings, now)?;
            grants[i] = Some(grant);
            ahead.extend(self.pre_issue(&req.envoy_id, req.seq, item, settings, now)?);
        }
        let mut items: Vec<LeaseGrant> = grants.into_iter().flatten().collect();
        items.extend(ahead);
        Ok(LeaseAnswer { items })
    }

    /// In the last [`crate::leases::PRE_ISSUE_MICROS`] of a budget's period (on this sidecar's
    /// clock, with a tick of slack for the Envoy's), the next period's slice for the same
    /// Envoy, sized as a first report in it (nothing used, the item's `want`), from the next
    /// period's leases only: its spend is 0 until it starts. Answered after the items' own
    /// grants, under the same scope with the next period (a filter that knows no pre-issue
    /// ignores a grant for another period). Budgets with a known next period, and rate windows
    /// ([`Tx::pre_issue_window`]); not `key_model` windows (opened by the first lease call after
    /// the last one ended, their length is the key's).
    fn pre_issue(
        &self,
        envoy_id: &str,
        seq: u64,
        item: &LeaseItem,
        settings: LeaseSettings,
        now: i64,
    ) -> Result<Option<LeaseGrant>> {
        let slack = crate::leases::RENEW_EVERY_MICROS;
        if is_rate_level(&item.level) {
            return self.pre_issue_window(envoy_id, seq, item, settings, now);
        }
        if item.level == "key_model"
            || item.returning
            || !crate::leases::pre_issue_due(item.period, self.now, slack)
        {
            return Ok(None);
        }
        let Some(budget) = self.lease_budget(item, settings.proxy_max_budget)? else {
            return Ok(None);
        };
        let Some(max) = budget.max else {
            return Ok(None);
        };
        if budget.period != item.period || budget.next <= budget.period {
            return Ok(None);
        }
        let report = Report {
            seq,
            want: item.want.max(0),
            reservation: item.reservation.max(0),
            ..Default::default()
        };
        let next = Limit {
            max,
            spend: 0,
            period: budget.next,
        };
        self.renew_budget_lease(envoy_id, &item.scope, next, &report, now, settings)
            .map(Some)
    }

    /// Renews `envoy_id`'s lease on a budget's `scope` in `limit.period` against the other
    /// Envoys' leases there, stores it, and answers its grant.
    fn renew_budget_lease(
        &self,
        envoy_id: &str,
        scope: &str,
        limit: Limit,
        report: &Report,
        now: i64,
        settings: LeaseSettings,
    ) -> Result<LeaseGrant> {
        let rows = self.leases(scope, limit.period)?;
        let mine = rows.iter().find(|(e, _)| e == envoy_id).map(|(_, l)| l);
        let others = Others::of(
            rows.iter().filter(|(e, _)| e != envoy_id).map(|(_, l)| l),
            now,
        );
        let renewal = renew(
            limit.max,
            limit.spend,
            others,
            mine,
            report,
            now,
            settings.ttl_micros(),
        );
        if let Renewal::Renewed(lease) = &renewal {
            self.put_lease(scope, limit.period, envoy_id, lease, Pool::Budget)?;
        }
        Ok(LeaseGrant {
            scope: scope.to_string(),
            period: limit.period,
            grant: renewal.grant(),
            ttl_ms: settings.ttl_ms,
            spend: limit.spend,
            max_nanos: Some(limit.max),
        })
    }

    /// The next rpm/tpm window's slice ahead (FLEET.md §4.7, §4.9): a report on the window in
    /// force, in its last [`crate::leases::PRE_ISSUE_MICROS`] (on the lease clock, with a tick
    /// of slack) with use in it, also gets a slice of the window starting exactly where this
    /// one ends ([`crate::leases::next_window`]), sized as a first report there (nothing used,
    /// the item's `want`) against that window's leases only, and stored as its lease row; the
    /// filter installs it when the window rolls, so continuous traffic does not pause to
    /// borrow at every window's end. Answered after the items' own grants, as a budget's.
    fn pre_issue_window(
        &self,
        envoy_id: &str,
        seq: u64,
        item: &LeaseItem,
        settings: LeaseSettings,
        now: i64,
    ) -> Result<Option<LeaseGrant>> {
        let slack = crate::leases::RENEW_EVERY_MICROS;
        if item.level == "parallel"
            || item.returning
            || !crate::leases::window_pre_issue_due(item.period, item.used, now, slack)
            || self.running_window(&item.scope, now)? != Some(item.period)
        {
            return Ok(None);
        }
        let next = crate::leases::next_window(item.period, settings.rate_window_micros);
        let grant = self.rate_lease_in(envoy_id, seq, item, settings, Pool::Window, next, now)?;
        Ok(Some(grant))
    }

    fn lease_item(
        &self,
        envoy_id: &str,
        seq: u64,
        item: &LeaseItem,
        settings: LeaseSettings,
        now: i64,
    ) -> Result<LeaseGrant> {
        if is_rate_level(&item.level) {
            return self.rate_lease_item(envoy_id, seq, item, settings, now);
        }
        let budget = self.lease_budget(item, settings.proxy_max_budget)?;
        let tracked = |spend: i64, period: i64| LeaseGrant {
            scope: item.scope.clone(),
            period,
            grant: item.used.max(0).saturating_add(item.want.max(0)),
            ttl_ms: settings.ttl_ms,
            spend,
            max_nanos: None,
        };
        // No record, or no limit: nothing to share; no row.
        let Some(budget) = budget else {
            return Ok(tracked(0, item.period));
        };
        let Some(max) = budget.max else {
            return Ok(tracked(budget.spend, budget.period));
        };
        // A dead Envoy's lease is charged before its old-period row may go.
        let ids: Vec<&str> = item.ids.iter().map(String::as_str).collect();
        let charged =
            self.charge_lost_leases(&item.level, &ids, &item.scope, budget.period, now)?;
        let budget = Budget {
            spend: budget.spend.saturating_add(charged),
            ..budget
        };
        // Old periods' rows are history once expired past the grace.
        self.db.exec(
            "DELETE FROM lease WHERE scope = ?1 AND period <> ?2 AND expires_at < ?3",
            args![
                &item.scope,
                budget.period,
                now.saturating_sub(crate::leases::EXPIRY_GRACE_MICROS)
            ],
        )?;
        // An item from another period has used nothing of this one yet.
        let same_period = item.period == budget.period;
        let report = Report {
            seq,
            used: if same_period { item.used.max(0) } else { 0 },
            held: if same_period { item.held.max(0) } else { 0 },
            held_seq: if same_period { item.held_seq } else { 0 },
            want: item.want.max(0),
            reservation: item.reservation.max(0),
            returning: item.returning,
            ..Default::default()
        };
        let limit = Limit {
            max,
            spend: budget.spend,
            period: budget.period,
        };
        self.renew_budget_lease(envoy_id, &item.scope, limit, &report, now, settings)
    }

    /// A rate limit's lease (FLEET.md §4.3): the limit is the item's, nothing is ever settled
    /// (`S = 0`), and what the Envoy gave back comes in its report. rpm/tpm leases are keyed by
    /// the window in force (opened by the first lease call after the last one ended, on
    /// PostgreSQL's clock, or issued ahead where the one before it ended); slot leases by
    /// period 0.
    fn rate_lease_item(
        &self,
        envoy_id: &str,
        seq: u64,
        item: &LeaseItem,
        settings: LeaseSettings,
        now: i64,
    ) -> Result<LeaseGrant> {
        let pool = if item.level == "parallel" {
            Pool::Slots
        } else {
            Pool::Window
        };
        let period = if pool == Pool::Slots {
            0
        } else {
            rate_window(
                self.running_window(&item.scope, now)?,
                now,
                settings.rate_window_micros,
            )
        };
        // Past windows are history (one issued ahead is not); a slot pool's rows stay
        // (cumulative per Envoy).
        self.db.exec(
            "DELETE FROM lease WHERE scope = ?1 AND period < ?2",
            args![&item.scope, period],
        )?;
        self.rate_lease_in(envoy_id, seq, item, settings, pool, period, now)
    }

    /// The earliest end after `now` among a rate scope's leases: the window in force
    /// ([`rate_window`]; one issued ahead ends later).
    fn running_window(&self, scope: &str, now: i64) -> Result<Option<i64>> {
        Ok(self
            .db
            .row(
                "SELECT MIN(period) FROM lease WHERE scope = ?1 AND period > ?2",
                args![scope, now],
            )?
            .and_then(|r| r.opt_int(0).ok().flatten()))
    }

    /// [`Tx::rate_lease_item`] in the window ending at `period` (0: a slot pool). An item of
    /// another window has used nothing of this one.
    #[allow(clippy::too_many_arguments)]
    fn rate_lease_in(
        &self,
        envoy_id: &str,
        seq: u64,
        item: &LeaseItem,
        settings: LeaseSettings,
        pool: Pool,
        period: i64,
        now: i64,
    ) -> Result<LeaseGrant> {
        let limit = item.limit.unwrap_or(0).max(0);
        let rows = self.leases(&item.scope, period)?;
        let mine = rows.iter().find(|(e, _)| e == envoy_id).map(|(_, l)| l);
        let others = Others::of_in(
            pool,
            rows.iter().filter(|(e, _)| e != envoy_id).map(|(_, l)| l),
            now,
        );
        let same_period = item.period == period;
        let report = Report {
            seq,
            used: if same_period { item.used.max(0) } else { 0 },
            held: if same_period { item.held.max(0) } else { 0 },
            held_seq: if same_period { item.held_seq } else { 0 },
            want: item.want.max(0),
            reservation: item.reservation.max(0),
            returning: item.returning,
            released: if same_period { item.released.max(0) } else { 0 },
            pool,
        };
        let renewal = renew(limit, 0, others, mine, &report, now, settings.ttl_micros());
        let held_by_me = match &renewal {
            Renewal::Renewed(lease) => {
                self.put_lease(&item.scope, period, envoy_id, lease, pool)?;
                lease.used.saturating_sub(lease.applied)
            }
            Renewal::Stale { .. } => mine.map_or(0, |l| l.used.saturating_sub(l.applied)),
        };
        let held_by_others: i64 = rows
            .iter()
            .filter(|(e, _)| e != envoy_id)
            .map(|(_, l)| l.used.saturating_sub(l.applied).max(0))
            .sum();
        Ok(LeaseGrant {
            scope: item.scope.clone(),
            period,
            grant: renewal.grant(),
            ttl_ms: settings.ttl_ms,
            spend: held_by_others.saturating_add(held_by_me.max(0)),
            max_nanos: Some(limit),
        })
    }

    /// Adds the spend of newly inserted events to the leases of the Envoys that admitted
    /// them, as applied, in the spend transaction: `(envoy, level, ids) → nanos` for every
    /// budget the events were charged to (a `key_model` item names the key and the event's
    /// model; its entry is resolved here). Only a lease in the budget's current period is
    /// charged; a budget the Envoy holds no lease on is skipped.
    pub(super) fn apply_lease_charges(
        &self,
        charges: &std::collections::BTreeMap<(&str, &'static str, Vec<&str>), i64>,
    ) -> Result<()> {
        let mut swept = std::collections::HashSet::new();
        let mut now = None;
        for ((envoy_id, level, ids), nanos) in charges {
            let (scope, item) = if *level == "key_model" {
                let (Some(token), Some(model)) = (ids.first(), ids.get(1)) else {
                    continue;
                };
                let Some(key) = super::get_key(&self.db, token)? else {
                    continue;
                };
                let entries = crate::sidecar::admin_api::model_budgets(&key.model_max_budget);
                // Access-group entries need the deployments; exact names and globs resolve.
                let Some((entry, _)) = crate::admission::model_budget_entry(&entries, model, &[])
                else {
                    continue;
                };
                (scope_name(level, &[token, entry]), None)
            } else {
                let item = LeaseItem {
                    scope: scope_name(level, ids),
                    level: (*level).to_string(),
                    ids: ids.iter().map(|s| (*s).to_string()).collect(),
                    ..Default::default()
                };
                (item.scope.clone(), Some(item))
            };
            let held = self.db.rows(
                "SELECT period FROM lease WHERE scope = ?1 AND envoy_id = ?2",
                args![&scope, *envoy_id],
            )?;
            if held.is_empty() {
                continue;
            }
            let period = match &item {
                Some(item) => self.lease_budget(item, None)?.map(|b| b.period),
                // A key_model window is the latest one its leases opened.
                None => held.iter().filter_map(|r| r.int(0).ok()).max(),
            };
            let Some(period) = period else { continue };
            // Other Envoys' leases on the budget, found lost on spend too (a fleet that only
            // settles calls and asks for no lease still charges a dead Envoy's).
            if swept.insert(scope.clone()) {
                now = match now {
                    Some(n) => Some(n),
                    None => Some(self.lease_clock()?),
                };
                self.charge_lost_leases(level, ids, &scope, period, now.unwrap_or(self.now))?;
            }
            let after = self.db.row(
                "UPDATE lease SET applied_total = applied_total + ?1
                 WHERE scope = ?2 AND period = ?3 AND envoy_id = ?4
                 RETURNING applied_total, lost_total",
                args![*nanos, &scope, period, *envoy_id],
            )?;
            let Some(after) = after else { continue };
            // Spend from an Envoy charged as lost: what the estimate already charged is taken
            // back from this charge (the budget was charged the whole of it above).
            let before = Lease {
                applied: after.int(0)?.saturating_sub(*nanos),
                lost: after.int(1)?,
                ..Default::default()
            };
            let netted = nanos.saturating_sub(beyond_lost(&before, *nanos));
            if netted > 0 {
                self.add_scope_spend(level, ids, netted.saturating_neg())?;
                if *level == "key" {
                    self.db.exec(
                        "UPDATE spend_logs SET spend_nanos = spend_nanos - ?1 WHERE event_id = ?2",
                        args![netted, lost_event_id(envoy_id, &scope, period)],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Charges the leases on `scope` whose Envoy is lost (returns what the current period was
    /// charged), under `on_lost_lease`
    /// ([`lost_charge`]): lapsed past the grace for late events, and the Envoy silent as long
    /// (none of its leases renewed since; an Envoy still renewing others is alive and sends its
    /// events, and its lapsed lease is a scope it stopped using, whose `used − applied` is only
    /// the excess of its last reservations over their cost). Each is charged once: its
    /// `lost_total` records how far, under the write lock. The budget is charged in its
    /// current period only (an ended period's spend was reset); a key's lease also gets one
    /// estimated spend-log row per Envoy, key and period ([`lost_event_id`]), the one
    /// request-level record (a request has one key; the other budgets' charges are the same
    /// requests, so logging them too would count them again in the log's totals).
    fn charge_lost_leases(
        &self,
        level: &str,
        ids: &[&str],
        scope: &str,
        current_period: i64,
        now: i64,
    ) -> Result<i64> {
        let policy = self.lost_lease;
        if policy == LostLeasePolicy::Release {
            return Ok(0);
        }
        let mut charged = 0i64;
        let cutoff = now.saturating_sub(crate::leases::EXPIRY_GRACE_MICROS);
        let rows = self.db.rows(
            "SELECT l.envoy_id, l.grant_total, l.held, l.used_total, l.applied_total, l.want,
                    l.seq, l.expires_at, l.lost_total, l.shrunk_from, l.shrunk_seq,
                    l.shrunk_until, l.period
             FROM lease l
             WHERE l.scope = ?1 AND l.expires_at <= ?2
               AND (l.used_total > l.applied_total OR l.grant_total > l.applied_total)
               AND (l.used_total > l.lost_total OR l.grant_total > l.lost_total
                    OR l.shrunk_from > l.lost_total)
               AND NOT EXISTS (SELECT 1 FROM lease o
                               WHERE o.envoy_id = l.envoy_id AND o.expires_at > ?2)",
            args![scope, cutoff],
        )?;
        for r in &rows {
            let (envoy_id, lease) = lease_of(r)?;
            let period = r.int(12)?;
            let charge = lost_charge(&lease, policy, now);
            if charge <= 0 {
                continue;
            }
            self.db.exec(
                "UPDATE lease SET lost_total = ?1 WHERE scope = ?2 AND period = ?3 AND envoy_id = ?4",
                args![lost_target(&lease, policy), scope, period, &envoy_id],
            )?;
            if period == current_period {
                self.add_scope_spend(level, ids, charge)?;
                charged = charged.saturating_add(charge);
            }
            if level == "key" {
                self.log_lost(
                    &envoy_id,
                    scope,
                    period,
                    ids.first().copied(),
                    &lease,
                    charge,
                )?;
            }
        }
        Ok(charged)
    }

    /// The budget a lease row's scope names, as a lease item with its level and ids, and the
    /// budget's current period; `None` for a rate limit's scope or a budget whose record is
    /// gone. [`scope_name`] joins ids with `:`, which ids may contain too: of a two-id scope's
    /// readings the first whose budget exists is taken (a `key_model` token is a hash, so it
    /// has one).
    fn lease_scope(&self, scope: &str) -> Result<Option<(LeaseItem, i64)>> {
        let Some((level, rest)) = scope.split_once(':') else {
            return Ok(None);
        };
        let Some((_, n)) = LEVELS.iter().find(|(l, _)| *l == level) else {
            return Ok(None);
        };
        if is_rate_level(level) {
            return Ok(None);
        }
        let readings: Vec<Vec<String>> = match n {
            0 => vec![Vec::new()],
            1 => vec![vec![rest.to_string()]],
            _ => rest
                .match_indices(':')
                .map(|(i, _)| vec![rest[..i].to_string(), rest[i + 1..].to_string()])
                .collect(),
        };
        for ids in readings {
            let item = LeaseItem {
                scope: scope.to_string(),
                level: level.to_string(),
                ids,
                ..Default::default()
            };
            if item_error(&item).is_some() {
                continue;
            }
            if let Some(budget) = self.lease_budget(&item, None)? {
                return Ok(Some((item, budget.period)));
            }
        }
        Ok(None)
    }

    /// The estimated spend-log row of a key's lost lease (added to, if the lease is lost again
    /// after its Envoy came back).
    fn log_lost(
        &self,
        envoy_id: &str,
        scope: &str,
        period: i64,
        token: Option<&str>,
        lease: &Lease,
        nanos: i64,
    ) -> Result<()> {
        let key = match token {
            Some(t) => super::get_key(&self.db, t)?,
            None => None,
        };
        let id = lost_event_id(envoy_id, scope, period);
        self.db.exec(
            "INSERT INTO spend_logs (event_id, request_id, client_request_id, api_key, user_id,
                 team_id, end_user, model, model_id, spend_nanos, prompt_tokens,
                 completion_tokens, total_tokens, cached_tokens, estimated, status, call_type,
                 start_time, end_time, doc)
             VALUES (?1, ?1, NULL, ?2, ?3, ?4, NULL, '', '', ?5, 0, 0, 0, 0, 1, 'success',
                 'lost_lease', ?6, ?6, '{}')
             ON CONFLICT (event_id) DO UPDATE SET
                 spend_nanos = spend_logs.spend_nanos + excluded.spend_nanos",
            args![
                &id,
                token,
                key.as_ref().and_then(|k| k.user_id.clone()),
                key.as_ref().and_then(|k| k.team_id.clone()),
                nanos,
                lease.expires_at
            ],
        )?;
        Ok(())
    }

    /// Adds `delta` (negative: takes back) to the spend of the budget a lease scope names, with
    /// its due reset first, as the spend path charges it. A `key_model` budget's spend is its
    /// leases' (nothing to write); a record gone charges nothing.
    fn add_scope_spend(&self, level: &str, ids: &[&str], delta: i64) -> Result<()> {
        use super::Budgeted;
        let id = |i: usize| ids.get(i).copied().unwrap_or("");
        match level {
            "key" => {
                if let Some(mut row) = super::get_key(&self.db, id(0))? {
                    row.lazy_reset(&self.clock, self.now);
                    row.add_spend(delta);
                    super::put_key_doc(&self.db, &row)?;
                }
            }
            "user" => {
                if let Some(mut row) = super::get_user(&self.db, id(0))? {
                    row.lazy_reset(&self.clock, self.now);
                    row.add_spend(delta);
                    super::put_user_doc(&self.db, &row)?;
                }
            }
            "end_user" => {
                if let Some(mut row) = super::get_end_user(&self.db, id(0))? {
                    let budget = self.end_user_budget(&row)?;
                    super::end_users::follow_period(&mut row, budget.as_ref());
                    row.lazy_reset(&self.clock, self.now);
                    row.add_spend(delta);
                    super::put_end_user(&self.db, &row)?;
                }
            }
            "team" => {
                if let Some(mut row) = self.team(id(0))? {
                    row.add_spend(delta);
                    self.save_team(&row)?;
                }
            }
            "team_member" => {
                if let Some((mut row, _)) = self.membership(id(0), id(1))? {
                    row.add_spend(delta);
                    self.save_membership(&row)?;
                }
            }
            "organization" => {
                if let Some((mut row, _)) = self.organization(id(0))? {
                    row.add_spend(delta);
                    self.save_organization(&row)?;
                }
            }
            "proxy" => {
                let mut row = super::get_proxy(&self.db)?;
                super::proxy_lazy_reset(&mut row, &self.clock, self.now);
                row.spend_nanos = row.spend_nanos.saturating_add(delta);
                super::put_proxy(&self.db, &row)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The spend-log id of a key's lost lease: one per Envoy, key and period (idempotent).
pub fn lost_event_id(envoy_id: &str, scope: &str, period: i64) -> String {
    format!("lost:{envoy_id}:{scope}:{period}")
}

/// What one sweep for lost leases did ([`super::Store::sweep_lost_leases`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LostSweep {
    /// The Envoys silent up to here (lease clock, µs) were looked at: the next sweep's `since`.
    pub until: i64,
    /// Budgets whose current period was charged, and the nano-dollars charged in all.
    pub budgets: usize,
    pub nanos: i64,
}

/// The lease rows of the Envoys whose latest lease lapsed in `(?1, ?2]` (`?2`: now less the
/// grace): the Envoys that went silent since the last sweep, every row of theirs. The first
/// step is a range on `lease_expiry`, the rest on `lease_envoy`.
const NEWLY_SILENT: &str = "
SELECT l.envoy_id, l.grant_total, l.held, l.used_total, l.applied_total, l.want, l.seq,
       l.expires_at, l.lost_total, l.shrunk_from, l.shrunk_seq, l.shrunk_until, l.scope
FROM lease l
WHERE l.envoy_id IN (
    SELECT n.envoy_id FROM lease n
    WHERE n.expires_at > ?1 AND n.expires_at <= ?2
      AND NOT EXISTS (SELECT 1 FROM lease o
                      WHERE o.envoy_id = n.envoy_id AND o.expires_at > ?2))";

impl super::Store {
    /// Fleet mode's periodic sweep (`on_lost_lease`, FLEET.md §4.8): charges the lost leases of
    /// the Envoys that went silent after `since` (the previous sweep's
    /// [`LostSweep::until`]; `None`: any time), so a budget no lease call or spend batch
    /// touches any more is charged all the same. The search is a read (no write lock): only
    /// when it finds something to charge does one write transaction charge those budgets
    /// through [`Tx::charge_lost_leases`], in scope order as a lease call locks them, finding
    /// the rows again under the lock, so a sweep racing another replica's sweep, a lease call
    /// or a spend batch charges each lease once (its `lost_total`).
    pub fn sweep_lost_leases(&self, since: Option<i64>, now_micros: i64) -> Result<LostSweep> {
        let policy = self.lost_lease_policy();
        let (until, scopes) = self.read(|db| {
            let now = lease_clock(db, now_micros)?;
            let until = now.saturating_sub(crate::leases::EXPIRY_GRACE_MICROS);
            let mut scopes = std::collections::BTreeSet::new();
            for r in &db.rows(NEWLY_SILENT, args![since.unwrap_or(i64::MIN), until])? {
                let (_, lease) = lease_of(r)?;
                let scope = r.text(12)?;
                let rate = scope.split(':').next().is_some_and(is_rate_level);
                if !rate && lost_charge(&lease, policy, now) > 0 {
                    scopes.insert(scope);
                }
            }
            Ok((until, scopes))
        })?;
        let mut sweep = LostSweep {
            until,
            ..Default::default()
        };
        if scopes.is_empty() {
            return Ok(sweep);
        }
        self.write(now_micros, |tx| {
            let now = tx.lease_clock()?;
            for scope in &scopes {
                let Some((item, period)) = tx.lease_scope(scope)? else {
                    continue;
                };
                let ids: Vec<&str> = item.ids.iter().map(String::as_str).collect();
                let charged = tx.charge_lost_leases(&item.level, &ids, scope, period, now)?;
                if charged > 0 {
                    sweep.budgets += 1;
                    sweep.nanos = sweep.nanos.saturating_add(charged);
                }
            }
            Ok(sweep)
        })
    }

    /// [`Tx::lease`] in its own write transaction at `now_micros` (the sidecar's clock, for
    /// budget periods).
    pub fn lease(
        &self,
        req: &LeaseRequest,
        settings: LeaseSettings,
        now_micros: i64,
    ) -> Result<LeaseAnswer> {
        self.write(now_micros, |tx| tx.lease(req, settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{SpendBatch, SpendEvent};
    use crate::sidecar::store::{KeyRow, Store};
    use std::path::Path;

    const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    const M: i64 = 1_000_000_000; // $1
    const SETTINGS: LeaseSettings = LeaseSettings {
        ttl_ms: 10_000,
        proxy_max_budget: None,
        rate_window_micros: 60_000_000,
    };

    fn store_with_key(max: Option<f64>) -> Store {
        let store = Store::open(Path::new(":memory:")).unwrap();
        store
            .insert_key(&KeyRow {
                token: "k1".into(),
                max_budget: max,
                ..Default::default()
            })
            .unwrap();
        store
    }

    fn item(used: i64, held: i64, want: i64) -> LeaseItem {
        LeaseItem {
            scope: "key:k1".into(),
            level: "key".into(),
            ids: vec!["k1".into()],
            period: 0,
            used,
            held,
            want,
            reservation: 1_000_000,
            returning: false,
            ..Default::default()
        }
    }

    fn ask(store: &Store, envoy: &str, seq: u64, it: LeaseItem, now: i64) -> LeaseGrant {
        let req = LeaseRequest {
            envoy_id: envoy.into(),
            seq,
            items: vec![it],
        };
        let mut a = store.lease(&req, SETTINGS, now).unwrap();
        assert_eq!(a.items.len(), 1);
        a.items.remove(0)
    }

    /// (envoy, grant, used, applied) of every lease row, by envoy.
    fn rows(store: &Store) -> Vec<(String, i64, i64, i64)> {
        store
            .read(|db| {
                db.rows(
                    "SELECT envoy_id, grant_total, used_total, applied_total FROM lease
                     ORDER BY envoy_id",
                    &[],
                )?
                .iter()
                .map(|r| Ok((r.text(0)?, r.int(1)?, r.int(2)?, r.int(3)?)))
                .collect()
            })
            .unwrap()
    }

    #[test]
    fn a_repeated_or_stale_seq_answers_the_current_grant_unchanged() {
        let store = store_with_key(Some(1.0));
        let first = ask(&store, "e1", 5, item(0, 0, 10_000_000), T0);
        assert_eq!(first.grant, 10_000_000);
        assert_eq!(
            (first.max_nanos, first.period, first.ttl_ms),
            (Some(M), 0, 10_000)
        );
        let before = rows(&store);
        for seq in [5, 4] {
            let again = ask(&store, "e1", seq, item(3, 10_000_000, 50_000_000), T0 + 1);
            assert_eq!(again, first);
        }
        assert_eq!(rows(&store), before);
    }

    /// A budget lowered below what is lent (FLEET.md §4.10): the next report's answer shrinks
    /// the live grant to the use, and the row keeps counting the old grant until a report
    /// shows the Envoy applied the shrink (`held_seq`), stored and read back.
    /// e1's lease row: its grant, and the shrink counted until acknowledged (from, seq).
    fn e1_grant_and_shrink(store: &Store) -> (i64, i64, i64) {
        store
            .read(|db| {
                let r = db
                    .row(
                        "SELECT grant_total, shrunk_from, shrunk_seq FROM lease
                         WHERE envoy_id = 'e1'",
                        &[],
                    )?
                    .unwrap();
                Ok((r.int(0)?, r.int(1)?, r.int(2)?))
            })
            .unwrap()
    }

    #[test]
    fn a_lowered_budget_shrinks_a_live_grant_counted_until_acknowledged() {
        let store = store_with_key(Some(1.0));
        let lent = ask(&store, "e1", 1, item(0, 0, 20_000_000), T0).grant;
        assert_eq!(lent, 20_000_000);
        ask(&store, "e2", 1, item(0, 0, 20_000_000), T0);
        store
            .write(T0, |tx| {
                let mut key = tx.key("k1")?.unwrap();
                key.max_budget = Some(0.01);
                tx.save_key(&key)
            })
            .unwrap();
        let holding = LeaseItem {
            held_seq: 1,
            ..item(5_000_000, lent, 20_000_000)
        };
        assert_eq!(ask(&store, "e1", 2, holding, T0 + 1).grant, 5_000_000);
        assert_eq!(e1_grant_and_shrink(&store), (5_000_000, lent, 2));
        let applied = LeaseItem {
            held_seq: 2,
            ..item(5_000_000, 5_000_000, 20_000_000)
        };
        assert_eq!(ask(&store, "e1", 3, applied, T0 + 2).grant, 5_000_000);
        assert_eq!(e1_grant_and_shrink(&store), (5_000_000, 0, 0));
    }

    #[test]
    fn grants_only_grow_within_a_period_except_when_returned() {
        let store = store_with_key(Some(1.0));
        let mut last = 0;
        for seq in 1..=20u64 {
            // Demand rises and falls; the grant never goes down.
            let want = if seq % 2 == 0 { 1_000_000 } else { 15_000_000 };
            let g = ask(&store, "e1", seq, item(0, last, want), T0 + seq as i64).grant;
            assert!(g >= last, "seq {seq}: {g} < {last}");
            last = g;
        }
        let r = ask(
            &store,
            "e1",
            21,
            LeaseItem {
                returning: true,
                ..item(4_000, 4_000, 0)
            },
            T0 + 30,
        );
        assert_eq!(r.grant, 4_000);
    }

    #[test]
    fn three_envoys_never_hold_more_than_the_budget() {
        let store = store_with_key(Some(1.0));
        let mut held = [0i64; 3];
        let mut used = [0i64; 3];
        for round in 0..200i64 {
            for (e, envoy) in ["a", "b", "c"].iter().enumerate() {
                // Each uses all it was granted before asking again.
                used[e] = held[e];
                let g = ask(
                    &store,
                    envoy,
                    round as u64 + 1,
                    item(used[e], held[e], 40_000_000),
                    T0 + round * 1000,
                );
                held[e] = g.grant;
                let total: i64 = rows(&store).iter().map(|r| r.1.max(r.2)).sum();
                assert!(total <= M, "round {round}: {total} lent of {M}");
            }
        }
        // Lent down to the last nano-dollars: one request's worth is always given while left.
        let total: i64 = held.iter().sum();
        assert!(total > M - 3, "{total}");
    }

    #[test]
    fn spend_applies_to_the_envoys_lease_once_and_only_for_new_events() {
        let store = store_with_key(Some(1.0));
        ask(&store, "e1", 1, item(0, 0, 10_000), T0);
        ask(&store, "e2", 1, item(0, 0, 10_000), T0);
        let ev = |id: &str, envoy: Option<&str>, nanos: i64| SpendEvent {
            event_id: id.into(),
            api_key: Some("k1".into()),
            model: "m".into(),
            spend_nanos: nanos,
            envoy_id: envoy.map(str::to_string),
            ..Default::default()
        };
        let batch = SpendBatch {
            events: vec![
                ev("x1", Some("e1"), 300),
                ev("x2", Some("e1"), 200),
                ev("x1", Some("e1"), 300),
                ev("x3", None, 7),
            ],
        };
        store.apply_spend_batch(&batch, T0 + 1).unwrap();
        store.apply_spend_batch(&batch, T0 + 2).unwrap();
        let r = rows(&store);
        assert_eq!((r[0].0.as_str(), r[0].3), ("e1", 500));
        assert_eq!((r[1].0.as_str(), r[1].3), ("e2", 0));
        assert_eq!(store.key("k1").unwrap().unwrap().spend_nanos, 507);
        // A renewal keeps what was applied.
        ask(&store, "e1", 2, item(500, 10_000, 10_000), T0 + 3);
        assert_eq!(rows(&store)[0].3, 500);
    }

    #[test]
    fn an_expired_lease_frees_its_grant_and_after_the_grace_its_unapplied_use() {
        // `on_lost_lease: release`: the unapplied use is forgiven (charge_reserved: see
        // `a_dead_envoys_reported_use_is_charged_once_after_the_grace`).
        let store = store_with_key(Some(0.1)).with_lost_lease_policy(LostLeasePolicy::Release);
        let m = 100_000_000;
        // One request of the whole budget: each answer lends all that is left (the floor).
        let greedy = |held: i64| LeaseItem {
            reservation: m,
            ..item(0, held, m)
        };
        let e1 = LeaseItem {
            reservation: m,
            ..item(0, 0, 30_000_000)
        };
        assert_eq!(ask(&store, "e1", 1, e1, T0).grant, 30_000_000);
        // e1 has used 10 of its 30, none applied yet.
        ask(&store, "e1", 2, item(10_000_000, 30_000_000, 0), T0 + 1);
        assert_eq!(ask(&store, "e2", 1, greedy(0), T0 + 2).grant, 70_000_000);
        // e1's lease lapses: its unused grant is free, its 10 unapplied still held back.
        let after_ttl = T0 + 1 + 10_000_000;
        assert_eq!(
            ask(&store, "e2", 2, greedy(70_000_000), after_ttl).grant,
            90_000_000
        );
        // Past the grace nothing of e1's counts.
        let after_grace = after_ttl + crate::leases::EXPIRY_GRACE_MICROS;
        assert_eq!(
            ask(&store, "e2", 3, greedy(90_000_000), after_grace).grant,
            m
        );
    }

    #[test]
    fn a_tracked_only_budget_is_granted_its_want_and_keeps_no_row() {
        let store = store_with_key(None);
        let g = ask(&store, "e1", 1, item(50, 0, 70), T0);
        assert_eq!((g.grant, g.max_nanos), (120, None));
        assert!(rows(&store).is_empty());
        // A budget whose record is gone is answered the same way.
        let gone = LeaseItem {
            scope: "user:nobody".into(),
            level: "user".into(),
            ids: vec!["nobody".into()],
            ..item(5, 0, 7)
        };
        assert_eq!(ask(&store, "e1", 2, gone, T0).grant, 12);
    }

    #[test]
    fn an_item_from_another_period_is_sized_from_zero_in_the_current_one() {
        let store = Store::open(Path::new(":memory:")).unwrap();
        store
            .insert_key(&KeyRow {
                token: "k1".into(),
                max_budget: Some(1.0),
                budget_duration: Some("1d".into()),
                ..Default::default()
            })
            .unwrap();
        let day_end = T0 + 86_400_000_000;
        let g = ask(
            &store,
            "e1",
            1,
            LeaseItem {
                period: T0,
                ..item(900_000_000, 900_000_000, 10_000_000)
            },
            T0 + 5,
        );
        assert_eq!((g.period, g.grant), (day_end, 10_000_000));
    }

    #[test]
    fn malformed_items_are_named() {
        let ok = item(0, 0, 0);
        assert_eq!(item_error(&ok), None);
        let bad_level = LeaseItem {
            level: "org".into(),
            ..ok.clone()
        };
        assert!(item_error(&bad_level).unwrap().contains("org"));
        let bad_ids = LeaseItem {
            ids: vec![],
            ..ok.clone()
        };
        assert!(item_error(&bad_ids).unwrap().contains("1 ids"));
        let bad_scope = LeaseItem {
            scope: "key:k2".into(),
            ..ok
        };
        assert!(item_error(&bad_scope).unwrap().contains("key:k1"));
        let proxy = LeaseItem {
            scope: "proxy:litellm-proxy-budget".into(),
            level: "proxy".into(),
            ids: vec![],
            ..item(0, 0, 0)
        };
        assert_eq!(item_error(&proxy), None);
    }

    fn rate_item(level: &str, used: i64, held: i64, released: i64, period: i64) -> LeaseItem {
        LeaseItem {
            scope: format!("{level}:api_key:k1"),
            level: level.into(),
            ids: vec!["api_key".into(), "k1".into()],
            period,
            used,
            held,
            want: 10,
            reservation: 1,
            limit: Some(6),
            released,
            returning: false,
            held_seq: 0,
        }
    }

    #[test]
    fn an_rpm_window_is_shared_exactly_and_the_next_window_starts_fresh() {
        let store = Store::open(Path::new(":memory:")).unwrap();
        let window_end = T0 + 1 + SETTINGS.rate_window_micros;
        let mut held = [0i64; 3];
        for seq in 1..=10u64 {
            for (e, envoy) in ["a", "b", "c"].iter().enumerate() {
                let period = if seq == 1 { 0 } else { window_end };
                // Each used all it was lent.
                let g = ask(
                    &store,
                    envoy,
                    seq,
                    rate_item("rpm", held[e], held[e], 0, period),
                    T0 + seq as i64,
                );
                assert_eq!((g.period, g.max_nanos), (window_end, Some(6)));
                held[e] = g.grant;
                assert!(held.iter().sum::<i64>() <= 6, "{held:?}");
            }
        }
        assert_eq!(held.iter().sum::<i64>(), 6, "lent to the last request");
        // The window is over: the next lease call opens the next one, from nothing; the old
        // window's rows go.
        let later = window_end + 1;
        let g = ask(
            &store,
            "a",
            11,
            rate_item("rpm", held[0], held[0], 0, window_end),
            later,
        );
        assert_eq!(g.period, later + SETTINGS.rate_window_micros);
        assert!(g.grant > 0 && g.grant <= 3, "{}", g.grant);
        assert_eq!(rows(&store).len(), 1);
    }

    /// FLEET.md §4.9: a window lease reported in its last H with use in it also gets a slice of
    /// the next window, which starts exactly where this one ends; the next window's grants
    /// keep `Σ ≤ limit`; the first lease call after the end (from any Envoy) is in that window,
    /// not in one opened from its own time.
    #[test]
    fn the_next_rate_window_is_issued_ahead_back_to_back() {
        let store = Store::open(Path::new(":memory:")).unwrap();
        let w = SETTINGS.rate_window_micros;
        let lease = |envoy: &str, seq: u64, it: LeaseItem, now: i64| {
            let req = LeaseRequest {
                envoy_id: envoy.into(),
                seq,
                items: vec![it],
            };
            store.lease(&req, SETTINGS, now).unwrap().items
        };
        let first = lease("a", 1, rate_item("rpm", 0, 0, 0, 0), T0);
        let end = T0 + w;
        assert_eq!((first.len(), first[0].period), (1, end));
        let held = first[0].grant;
        let h = crate::leases::PRE_ISSUE_MICROS;
        let slack = crate::leases::RENEW_EVERY_MICROS;
        // Before the last H (and its slack): no window ahead.
        let early = end - h - slack - 1;
        assert_eq!(
            lease("a", 2, rate_item("rpm", 1, held, 0, end), early).len(),
            1
        );
        // In it, with use: the next window too, back to back.
        let late = end - h + 1;
        let a = lease("a", 3, rate_item("rpm", 1, held, 0, end), late);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].period, a[1].scope.as_str(), a[1].period),
            (end, "rpm:api_key:k1", end + w)
        );
        assert!(a[1].grant > 0);
        // Not for a window without use, a returning report, or slots.
        assert_eq!(lease("b", 1, rate_item("rpm", 0, 0, 0, end), late).len(), 1);
        let returning = LeaseItem {
            returning: true,
            ..rate_item("rpm", 1, held, 0, end)
        };
        assert_eq!(lease("a", 4, returning, late).len(), 1);
        assert_eq!(
            lease("a", 5, rate_item("parallel", 1, 1, 0, 0), late).len(),
            1
        );
        // Every Envoy asking ahead: the next window is never lent beyond the limit.
        let mut ahead = a[1].grant;
        for (seq, envoy) in ["b", "c", "d", "e"].iter().enumerate() {
            let got = lease(
                envoy,
                seq as u64 + 2,
                rate_item("rpm", 1, 1, 0, end),
                late + 1,
            );
            if let Some(next) = got.get(1) {
                assert_eq!(next.period, end + w);
                ahead += next.grant;
            }
            assert!(ahead <= 6, "{ahead} of the next window lent, limit 6");
        }
        // Past the end, a lease call is in the window issued ahead; the old window's rows go.
        let after = lease("f", 1, rate_item("rpm", 0, 0, 0, 0), end + 1);
        assert_eq!(after[0].period, end + w);
        let periods = store
            .read(|db| {
                db.rows(
                    "SELECT DISTINCT period FROM lease WHERE scope = 'rpm:api_key:k1'",
                    &[],
                )?
                .iter()
                .map(|r| r.int(0))
                .collect::<Result<Vec<i64>>>()
            })
            .unwrap();
        assert_eq!(periods, [end + w]);
    }

    #[test]
    fn released_slots_are_lent_again() {
        let store = Store::open(Path::new(":memory:")).unwrap();
        // e1 takes everything it can get of 6 slots, then e2 asks.
        let mut e1 = 0;
        for seq in 1..=6 {
            e1 = ask(&store, "e1", seq, rate_item("parallel", e1, e1, 0, 0), T0).grant;
        }
        assert_eq!(e1, 6);
        assert_eq!(
            ask(&store, "e2", 1, rate_item("parallel", 0, 0, 0, 0), T0).grant,
            0
        );
        // e1 reports 4 of its 6 given back: of the 4 free, half is shared by demand with e2
        // (which also wants 10): e1 is lent 1 more; e2 then gets one of the 3 left (the
        // one-slot floor).
        assert_eq!(
            ask(&store, "e1", 7, rate_item("parallel", 6, 6, 4, 0), T0).grant,
            7
        );
        let g = ask(&store, "e2", 2, rate_item("parallel", 0, 0, 0, 0), T0);
        assert_eq!((g.period, g.grant, g.spend), (0, 1, 2));
    }

    /// A lowered `max_parallel_requests` (FLEET.md §4.10; an Envoy's item says the new
    /// limit): the live slot grant shrinks to what fits (never below the slots held), and the
    /// row counts the old grant until a report shows the shrinking answer applied.
    #[test]
    fn a_lowered_rate_limit_shrinks_a_live_grant_counted_until_acknowledged() {
        let store = Store::open(Path::new(":memory:")).unwrap();
        let held = ask(&store, "e1", 1, rate_item("parallel", 0, 0, 0, 0), T0).grant;
        assert_eq!(held, 3, "half of the 6 slots");
        let e2 = ask(&store, "e2", 1, rate_item("parallel", 0, 0, 0, 0), T0).grant;
        assert_eq!(e2, 1);
        let lowered = |used, held, released, held_seq| LeaseItem {
            limit: Some(2),
            held_seq,
            ..rate_item("parallel", used, held, released, 0)
        };
        // Lowered to 2 while each holds a slot: e1's grant drops to its use.
        let g = ask(&store, "e1", 2, lowered(1, held, 0, 1), T0 + 1);
        assert_eq!(g.grant, 1);
        assert_eq!(e1_grant_and_shrink(&store), (1, held, 2));
        // Until e1 says it applied that answer, its old grant counts: nothing more for e2.
        assert_eq!(ask(&store, "e2", 2, lowered(1, 1, 0, 1), T0 + 2).grant, 1);
        // e1 applied it (held_seq 2) and its call ended: the free slot is lent again.
        let g = ask(&store, "e1", 3, lowered(1, 1, 1, 2), T0 + 3);
        assert_eq!((g.grant, e1_grant_and_shrink(&store).1), (2, 0));
    }

    #[test]
    fn a_rate_item_needs_its_limit() {
        let no_limit = LeaseItem {
            limit: None,
            ..rate_item("rpm", 0, 0, 0, 0)
        };
        assert!(item_error(&no_limit).unwrap().contains("limit"));
        assert_eq!(item_error(&rate_item("tpm", 0, 0, 0, 0)), None);
        let org = LeaseItem {
            scope: "organization:o1".into(),
            level: "organization".into(),
            ids: vec!["o1".into()],
            ..item(0, 0, 0)
        };
        assert_eq!(item_error(&org), None, "organizations are a lease level");
    }

    const PROXY_SETTINGS: LeaseSettings = LeaseSettings {
        proxy_max_budget: Some(1.0),
        ..SETTINGS
    };

    fn proxy_item(used: i64, held: i64, want: i64) -> LeaseItem {
        LeaseItem {
            scope: "proxy:litellm-proxy-budget".into(),
            level: "proxy".into(),
            ids: vec![],
            ..item(used, held, want)
        }
    }

    /// One call on the key's and the proxy's budgets (the request-level scopes).
    fn ask_both(store: &Store, envoy: &str, seq: u64, used: i64, held: i64, now: i64) {
        let req = LeaseRequest {
            envoy_id: envoy.into(),
            seq,
            items: vec![
                item(used, held, 30_000_000),
                proxy_item(used, held, 30_000_000),
            ],
        };
        store.lease(&req, PROXY_SETTINGS, now).unwrap();
    }

    /// (event id, api key, spend) of the spend-log rows, by id.
    fn logs(store: &Store) -> Vec<(String, Option<String>, i64)> {
        store
            .read(|db| {
                db.rows(
                    "SELECT event_id, api_key, spend_nanos FROM spend_logs ORDER BY event_id",
                    &[],
                )?
                .iter()
                .map(|r| Ok((r.text(0)?, r.opt_text(1)?, r.int(2)?)))
                .collect()
            })
            .unwrap()
    }

    fn key_spend(store: &Store) -> i64 {
        store.key("k1").unwrap().unwrap().spend_nanos
    }

    fn spend_of(store: &Store, envoy: &str, id: &str, nanos: i64, now: i64) {
        let batch = SpendBatch {
            events: vec![SpendEvent {
                event_id: id.into(),
                api_key: Some("k1".into()),
                model: "m".into(),
                spend_nanos: nanos,
                envoy_id: Some(envoy.into()),
                ..Default::default()
            }],
        };
        store.apply_spend_batch(&batch, now).unwrap();
    }

    /// `on_lost_lease: charge_reserved` (the default): e1 reported 10 M used and died before
    /// its events were sent. Not during the grace; then once, by the first call that finds
    /// it: each budget (key, proxy) is charged 10 M, one spend-log row records it, and what
    /// is lent to others counts it as spent.
    #[test]
    fn a_dead_envoys_reported_use_is_charged_once_after_the_grace() {
        let store = store_with_key(Some(0.1));
        assert_eq!(store.lost_lease_policy(), LostLeasePolicy::ChargeReserved);
        ask_both(&store, "e1", 1, 0, 0, T0);
        ask_both(&store, "e1", 2, 10_000_000, 30_000_000, T0 + 1);
        let expiry = T0 + 1 + 10_000_000;
        ask_both(
            &store,
            "e2",
            1,
            0,
            0,
            expiry + crate::leases::EXPIRY_GRACE_MICROS - 1,
        );
        assert_eq!(key_spend(&store), 0, "its events may still come");
        assert!(logs(&store).is_empty());
        let after_grace = expiry + crate::leases::EXPIRY_GRACE_MICROS;
        for (seq, now) in [(2, after_grace), (3, after_grace + 5_000_000)] {
            ask_both(&store, "e2", seq, 0, 0, now);
            assert_eq!(key_spend(&store), 10_000_000, "charged once");
            assert_eq!(store.proxy_budget_at(now).unwrap().spend_nanos, 10_000_000);
            assert_eq!(
                logs(&store),
                vec![(
                    "lost:e1:key:k1:0".to_string(),
                    Some("k1".into()),
                    10_000_000
                )],
                "one row for the request-level scope, not one per budget"
            );
        }
        // The key's 100 M budget: 10 M charged, so e2 can never be lent more than 90 M.
        let mut held = 0;
        for seq in 4..100 {
            held = ask(
                &store,
                "e2",
                seq,
                item(held, held, 100_000_000),
                after_grace + 6,
            )
            .grant;
        }
        assert_eq!(held, 90_000_000);
    }

    /// Found on spend too: a fleet that only settles calls (no lease call) still charges it.
    #[test]
    fn a_lost_lease_is_found_when_spend_is_applied() {
        let store = store_with_key(Some(0.1));
        ask(&store, "e1", 1, item(0, 0, 30_000_000), T0);
        ask(&store, "e1", 2, item(10_000_000, 30_000_000, 0), T0 + 1);
        ask(&store, "e2", 1, item(0, 0, 30_000_000), T0 + 2);
        let after_grace = T0 + 1 + 10_000_000 + crate::leases::EXPIRY_GRACE_MICROS;
        // e2 renewed its lease a moment ago (it is alive): only e1's is lost.
        ask(&store, "e2", 2, item(1_000, 30_000_000, 0), after_grace - 1);
        spend_of(&store, "e2", "x1", 1_000, after_grace);
        assert_eq!(key_spend(&store), 10_001_000);
        assert_eq!(logs(&store).len(), 2);
    }

    /// An Envoy that was only cut off delivers its events late: they net the estimate first
    /// (in the budget and in its spend-log row); only what passes it is charged again.
    #[test]
    fn late_events_of_an_envoy_charged_as_lost_are_netted() {
        let store = store_with_key(Some(0.1));
        ask(&store, "e1", 1, item(0, 0, 30_000_000), T0);
        ask(&store, "e1", 2, item(10_000_000, 30_000_000, 0), T0 + 1);
        let after_grace = T0 + 1 + 10_000_000 + crate::leases::EXPIRY_GRACE_MICROS;
        ask(&store, "e2", 1, item(0, 0, 1_000), after_grace);
        assert_eq!(key_spend(&store), 10_000_000);
        spend_of(&store, "e1", "late1", 8_000_000, after_grace + 1);
        assert_eq!(key_spend(&store), 10_000_000, "inside the estimate");
        spend_of(&store, "e1", "late2", 5_000_000, after_grace + 2);
        assert_eq!(key_spend(&store), 13_000_000, "3 M beyond it");
        spend_of(&store, "e1", "late2", 5_000_000, after_grace + 3);
        assert_eq!(key_spend(&store), 13_000_000, "a duplicate charges nothing");
        let l = logs(&store);
        assert_eq!(l[0], ("late1".to_string(), Some("k1".into()), 8_000_000));
        assert_eq!(l[2], ("lost:e1:key:k1:0".to_string(), Some("k1".into()), 0));
        // The log and the budget agree: every nano-dollar once.
        assert_eq!(l.iter().map(|r| r.2).sum::<i64>(), 13_000_000);
        // Back and reporting: its lease counts 13 M settled, nothing charged again.
        ask(&store, "e1", 3, item(13_000_000, 0, 1_000), after_grace + 4);
        ask(&store, "e2", 2, item(0, 0, 1_000), after_grace + 5);
        assert_eq!(key_spend(&store), 13_000_000);
    }

    /// `charge_grant` writes off the unused grant too; `release` charges nothing; an Envoy
    /// still renewing another budget is alive, and its lapsed lease is not lost.
    #[test]
    fn the_policy_decides_what_a_lost_lease_costs() {
        let after_grace = T0 + 1 + 10_000_000 + crate::leases::EXPIRY_GRACE_MICROS;
        for (policy, charged) in [
            (LostLeasePolicy::ChargeGrant, 30_000_000),
            (LostLeasePolicy::Release, 0),
        ] {
            let store = store_with_key(Some(0.1)).with_lost_lease_policy(policy);
            ask(&store, "e1", 1, item(0, 0, 30_000_000), T0);
            ask(&store, "e1", 2, item(10_000_000, 30_000_000, 0), T0 + 1);
            ask(&store, "e2", 1, item(0, 0, 1_000), after_grace);
            assert_eq!(key_spend(&store), charged, "{policy:?}");
        }
        let store = store_with_key(Some(0.1));
        ask(&store, "e1", 1, item(0, 0, 30_000_000), T0);
        ask(&store, "e1", 2, item(10_000_000, 30_000_000, 0), T0 + 1);
        let req = LeaseRequest {
            envoy_id: "e1".into(),
            seq: 3,
            items: vec![proxy_item(0, 0, 1_000)],
        };
        store.lease(&req, PROXY_SETTINGS, after_grace - 1).unwrap();
        ask(&store, "e2", 1, item(0, 0, 1_000), after_grace);
        assert_eq!(key_spend(&store), 0, "e1 is alive");
    }

    /// The sweep (fleet mode's timer, no lease call and no spend): e1 reported 10 M used on
    /// the key and proxy budgets and an rpm slice, then died. Nothing while its events may
    /// come; then each budget once (one log row), the rate slice never; a second sweep, one
    /// looking at every silent Envoy (a replica just started), sweeps racing on threads and a
    /// lease call finding the lease after them charge nothing more.
    #[test]
    fn the_sweep_charges_a_lost_lease_no_call_touches_once() {
        let store = store_with_key(Some(0.1));
        ask_both(&store, "e1", 1, 0, 0, T0);
        ask_both(&store, "e1", 2, 10_000_000, 30_000_000, T0 + 1);
        ask(&store, "e1", 3, rate_item("rpm", 4, 6, 0, 0), T0 + 1);
        let ripe = T0 + 1 + 10_000_000 + crate::leases::EXPIRY_GRACE_MICROS;
        let early = store.sweep_lost_leases(None, ripe - 1).unwrap();
        assert_eq!((early.budgets, early.nanos), (0, 0));
        assert_eq!(early.until, ripe - 1 - crate::leases::EXPIRY_GRACE_MICROS);
        assert_eq!(key_spend(&store), 0, "its events may still come");
        let swept = store.sweep_lost_leases(Some(early.until), ripe).unwrap();
        assert_eq!(
            (swept.budgets, swept.nanos),
            (2, 20_000_000),
            "key and proxy"
        );
        let once = |store: &Store, now: i64| {
            assert_eq!(key_spend(store), 10_000_000);
            assert_eq!(store.proxy_budget_at(now).unwrap().spend_nanos, 10_000_000);
            assert_eq!(
                logs(store),
                vec![(
                    "lost:e1:key:k1:0".to_string(),
                    Some("k1".into()),
                    10_000_000
                )]
            );
        };
        once(&store, ripe);
        for (since, now) in [(Some(swept.until), ripe + 15_000_000), (None, ripe + 1)] {
            let again = store.sweep_lost_leases(since, now).unwrap();
            assert_eq!((again.budgets, again.nanos), (0, 0));
        }
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| store.sweep_lost_leases(None, ripe + 2).unwrap());
            }
        });
        ask_both(&store, "e2", 1, 0, 0, ripe + 3);
        once(&store, ripe + 3);
    }

    /// An Envoy still renewing another budget is alive: its lapsed key lease is left. Once it
    /// goes silent, the next sweep charges that lease too, though it lapsed before the last
    /// sweep (it looks at every lease of an Envoy gone silent since).
    #[test]
    fn the_sweep_charges_an_envoy_once_it_is_silent_everywhere() {
        let store = store_with_key(Some(0.1));
        ask(&store, "e1", 1, item(0, 0, 30_000_000), T0);
        ask(&store, "e1", 2, item(10_000_000, 30_000_000, 0), T0 + 1);
        let grace = crate::leases::EXPIRY_GRACE_MICROS;
        let last_call = T0 + 100_000_000;
        let req = LeaseRequest {
            envoy_id: "e1".into(),
            seq: 3,
            items: vec![proxy_item(0, 0, 1_000)],
        };
        store.lease(&req, PROXY_SETTINGS, last_call).unwrap();
        let alive = store.sweep_lost_leases(None, last_call + 1).unwrap();
        assert_eq!((alive.budgets, key_spend(&store)), (0, 0), "e1 is alive");
        let silent = last_call + 10_000_000 + grace;
        let mut since = alive.until;
        for now in [silent - 1, silent] {
            let sweep = store.sweep_lost_leases(Some(since), now).unwrap();
            since = sweep.until;
        }
        assert_eq!(key_spend(&store), 10_000_000);
    }

    /// A scope joins its ids with `:`, which a team id may hold too: the sweep takes the
    /// reading whose membership exists.
    #[test]
    fn the_sweep_reads_a_team_member_scope_whose_ids_hold_colons() {
        let store = Store::open(Path::new(":memory:")).unwrap();
        store
            .write(0, |tx| {
                tx.save_budget(&crate::sidecar::store::BudgetRow {
                    budget_id: "b1".into(),
                    max_budget: Some(0.1),
                    ..Default::default()
                })?;
                tx.save_membership(&crate::sidecar::store::MembershipRow {
                    team_id: "t:1".into(),
                    user_id: "u:1".into(),
                    budget_id: Some("b1".into()),
                    ..Default::default()
                })
            })
            .unwrap();
        let member = |used: i64, held: i64, want: i64| LeaseItem {
            scope: "team_member:t:1:u:1".into(),
            level: "team_member".into(),
            ids: vec!["t:1".into(), "u:1".into()],
            ..item(used, held, want)
        };
        ask(&store, "e1", 1, member(0, 0, 30_000_000), T0);
        ask(&store, "e1", 2, member(7_000, 30_000_000, 0), T0 + 1);
        let ripe = T0 + 1 + 10_000_000 + crate::leases::EXPIRY_GRACE_MICROS;
        let sweep = store.sweep_lost_leases(None, ripe).unwrap();
        assert_eq!((sweep.budgets, sweep.nanos), (1, 7_000));
        let spend = store
            .write(ripe, |tx| {
                Ok(tx.membership("t:1", "u:1")?.unwrap().0.spend_nanos)
            })
            .unwrap();
        assert_eq!(spend, 7_000);
    }

    /// A lease table from before `lost_total` and `shrunk_*` gets them (0 for every row), once.
    #[test]
    fn a_lease_table_without_lost_total_is_migrated() {
        let dir = std::env::temp_dir().join(format!("tollgate-lost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("leases-v3.db");
        let _ = std::fs::remove_file(&path);
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let old_schema = ["lost_total", "shrunk_from", "shrunk_seq", "shrunk_until"]
                .iter()
                .fold(SCHEMA.to_string(), |schema, column| {
                    schema.replace(&format!("    {column} INTEGER NOT NULL DEFAULT 0,\n"), "")
                });
            conn.execute_batch(&old_schema).unwrap();
            conn.execute_batch(
                "INSERT INTO lease VALUES ('key:k1', 0, 'e1', 30, 30, 10, 0, 0, 1, 5);",
            )
            .unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(&path).unwrap();
            let added = store
                .read(|db| {
                    let r = db
                        .row(
                            "SELECT lost_total + shrunk_from + shrunk_seq + shrunk_until \
                             FROM lease",
                            &[],
                        )?
                        .unwrap();
                    r.int(0)
                })
                .unwrap();
            assert_eq!(added, 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn daily_key(max: f64) -> Store {
        let store = Store::open(Path::new(":memory:")).unwrap();
        store
            .insert_key(&KeyRow {
                token: "k1".into(),
                max_budget: Some(max),
                budget_duration: Some("1d".into()),
                ..Default::default()
            })
            .unwrap();
        store
    }

    fn answer(store: &Store, envoy: &str, seq: u64, it: LeaseItem, now: i64) -> LeaseAnswer {
        let req = LeaseRequest {
            envoy_id: envoy.into(),
            seq,
            items: vec![it],
        };
        store.lease(&req, SETTINGS, now).unwrap()
    }

    #[test]
    fn the_next_periods_slice_is_issued_in_the_last_seconds_before_a_reset() {
        let store = daily_key(1.0);
        let day_end = T0 + 86_400_000_000;
        let next_end = day_end + 86_400_000_000;
        let at = |used: i64| LeaseItem {
            period: day_end,
            ..item(used, 0, 10_000_000)
        };
        // Earlier in the period: the period's grant only.
        let a = answer(&store, "e1", 1, at(0), day_end - 10_000_000);
        assert_eq!(a.items.len(), 1);
        // In the last 5 s: the period's grant, then the next period's after it, sized as a
        // first report there (spend there is 0, whatever this period spent).
        let a = answer(&store, "e1", 2, at(900_000_000), day_end - 4_000_000);
        assert_eq!(a.items.len(), 2, "{a:?}");
        assert_eq!(a.items[0].period, day_end);
        let next = &a.items[1];
        assert_eq!(
            (next.scope.as_str(), next.period, next.grant, next.spend),
            ("key:k1", next_end, 10_000_000, 0)
        );
        // After the reset the Envoy reports in the new period, holding the pre-issued grant:
        // the same lease, renewed (never below it).
        let g = ask(
            &store,
            "e1",
            3,
            LeaseItem {
                period: next_end,
                ..item(1_000_000, 10_000_000, 1_000_000)
            },
            day_end + 1_000_000,
        );
        assert_eq!(g.period, next_end);
        assert!(g.grant >= 10_000_000, "{}", g.grant);
        // Returning, rate limits and a period the sidecar is not in get nothing ahead.
        let returning = LeaseItem {
            returning: true,
            ..at(0)
        };
        assert_eq!(
            answer(&store, "e2", 1, returning, day_end - 1).items.len(),
            1
        );
        let stale = LeaseItem {
            period: T0,
            ..item(0, 0, 10)
        };
        assert_eq!(
            answer(&store, "e2", 2, stale, T0 - 1_000_000).items.len(),
            1
        );
    }

    #[test]
    fn pre_issued_slices_keep_the_escrow_invariant_of_the_next_period() {
        let store = daily_key(0.1);
        let m = 100_000_000;
        let day_end = T0 + 86_400_000_000;
        let mut total = 0;
        for (seq, envoy) in ["a", "b", "c", "d"].iter().enumerate() {
            let greedy = LeaseItem {
                period: day_end,
                reservation: m,
                ..item(0, 0, m)
            };
            let a = answer(&store, envoy, seq as u64 + 1, greedy, day_end - 2_000_000);
            total += a.items[1].grant;
            assert!(total <= m, "{total} lent of {m} in the next period");
        }
        assert!(total > m / 2, "{total}");
    }
}
