//! The proxy-wide budget row (LiteLLM's `litellm-proxy-budget` user).

use super::sql::{args, Exec};
use super::{nanos_to_usd, ResetAction, ResetClock, Tx};
use crate::records::BudgetState;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// LiteLLM's `litellm-proxy-budget` user row: the proxy-wide budget's spend and period. The
/// limit itself (`litellm_settings.max_budget`) comes from the config, not from here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyBudgetRow {
    pub spend_nanos: i64,
    pub budget_duration: Option<String>,
    pub budget_reset_at_micros: Option<i64>,
}

impl ProxyBudgetRow {
    pub fn spend_usd(&self) -> f64 {
        nanos_to_usd(self.spend_nanos)
    }

    /// As the filter wants it, with the limit from the config.
    pub fn state(&self, max_budget: Option<f64>) -> BudgetState {
        BudgetState {
            max_budget,
            budget_duration: self.budget_duration.clone(),
            budget_reset_at_micros: self.budget_reset_at_micros,
            spend_nanos: self.spend_nanos,
        }
    }
}

/// LiteLLM's user id for the proxy-wide budget row.
pub const PROXY_BUDGET_ID: &str = "litellm-proxy-budget";

pub(super) fn get_proxy(db: &dyn Exec) -> Result<ProxyBudgetRow> {
    let Some(r) = db.row(
        "SELECT spend_nanos, budget_duration, budget_reset_at FROM proxy_budget WHERE id = ?1",
        args![PROXY_BUDGET_ID],
    )?
    else {
        return Ok(ProxyBudgetRow::default());
    };
    Ok(ProxyBudgetRow {
        spend_nanos: r.int(0)?,
        budget_duration: r.opt_text(1)?,
        budget_reset_at_micros: r.opt_int(2)?,
    })
}

pub(super) fn put_proxy(db: &dyn Exec, row: &ProxyBudgetRow) -> Result<()> {
    db.exec(
        "INSERT INTO proxy_budget (id, spend_nanos, budget_duration, budget_reset_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET spend_nanos = excluded.spend_nanos,
             budget_duration = excluded.budget_duration,
             budget_reset_at = excluded.budget_reset_at",
        args![
            PROXY_BUDGET_ID,
            row.spend_nanos,
            &row.budget_duration,
            row.budget_reset_at_micros
        ],
    )?;
    Ok(())
}

/// Lazy reset of the proxy row; true when it changed.
pub(super) fn proxy_lazy_reset(
    row: &mut ProxyBudgetRow,
    clock: &ResetClock,
    now_micros: i64,
) -> bool {
    match clock.due(
        row.budget_duration.as_deref(),
        row.budget_reset_at_micros,
        now_micros,
    ) {
        ResetAction::Keep => false,
        ResetAction::Schedule(next) => {
            row.budget_reset_at_micros = Some(next);
            true
        }
        ResetAction::Reset(next) => {
            row.spend_nanos = 0;
            row.budget_reset_at_micros = Some(next);
            true
        }
    }
}

impl Tx<'_> {
    // ---- proxy ----

    pub fn proxy_budget(&self) -> Result<ProxyBudgetRow> {
        let mut row = get_proxy(&self.db)?;
        if proxy_lazy_reset(&mut row, &self.clock, self.now) {
            put_proxy(&self.db, &row)?;
        }
        Ok(row)
    }
}
