//! End users / customers (`LiteLLM_EndUserTable`): the row, the budget that applies to it,
//! and its reads and writes in a [`Tx`].

use super::sql::{args, Exec};
use super::{load_budgeted, nanos_to_usd, to_doc, BudgetRow, Budgeted, Tx};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// An end user / customer (`LiteLLM_EndUserTable`). LiteLLM keeps the budget in a linked
/// `LiteLLM_BudgetTable` row (`litellm_budget_table` in responses); here its fields are inline.
/// Rows are created by `/customer/new` or, with `blocked: false` and no budget, by the first
/// spend event naming the end user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndUserRow {
    pub user_id: String,
    pub alias: Option<String>,
    /// USD, derived from `spend_nanos`.
    pub spend: f64,
    /// Authoritative spend, nano-dollars.
    pub spend_nanos: i64,
    pub allowed_model_region: Option<String>,
    pub default_model: Option<String>,
    pub budget_id: Option<String>,
    pub blocked: bool,
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    /// ISO 8601 UTC.
    pub budget_reset_at: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub created_at: String,
    pub updated_at: String,
}

impl Budgeted for EndUserRow {
    fn parts(&mut self) -> (&mut i64, &mut f64, Option<&str>, &mut Option<String>) {
        (
            &mut self.spend_nanos,
            &mut self.spend,
            self.budget_duration.as_deref(),
            &mut self.budget_reset_at,
        )
    }
}

impl EndUserRow {
    pub fn set_spend_nanos(&mut self, nanos: i64) {
        self.spend_nanos = nanos;
        self.spend = nanos_to_usd(nanos);
    }
}

pub(super) fn get_end_user(db: &dyn Exec, user_id: &str) -> Result<Option<EndUserRow>> {
    db.row(
        "SELECT doc FROM end_users WHERE user_id = ?1",
        args![user_id],
    )?
    .map(|r| load_budgeted(&r.text(0)?))
    .transpose()
}

pub(super) fn put_end_user(db: &dyn Exec, row: &EndUserRow) -> Result<()> {
    db.exec(
        "INSERT INTO end_users (user_id, doc) VALUES (?1, ?2)
         ON CONFLICT(user_id) DO UPDATE SET doc = excluded.doc",
        args![&row.user_id, to_doc(row)?],
    )?;
    Ok(())
}

impl Tx<'_> {
    // ---- end users (customers) ----

    /// The budget that applies to a customer: its linked `budget_id` row, else its own inline
    /// limits (rows from before budget rows existed), else `max_end_user_budget_id`'s row.
    pub fn end_user_budget(&self, row: &EndUserRow) -> Result<Option<BudgetRow>> {
        if let Some(id) = row.budget_id.as_deref() {
            if let Some(b) = self.budget(id)? {
                return Ok(Some(b));
            }
        }
        if row.max_budget.is_some() || row.tpm_limit.is_some() || row.rpm_limit.is_some() {
            return Ok(Some(BudgetRow {
                max_budget: row.max_budget,
                tpm_limit: row.tpm_limit,
                rpm_limit: row.rpm_limit,
                budget_duration: row.budget_duration.clone(),
                ..Default::default()
            }));
        }
        self.default_end_user_budget()
    }

    /// `litellm_settings.max_end_user_budget_id`'s row, if configured and present; without an
    /// id, `litellm_settings.max_end_user_budget` (lifetime, no period).
    pub fn default_end_user_budget(&self) -> Result<Option<BudgetRow>> {
        match self.default_end_user_budget.clone() {
            Some(id) => self.budget(&id),
            None => Ok(self.default_end_user_max_budget.map(|b| BudgetRow {
                max_budget: Some(b),
                ..Default::default()
            })),
        }
    }

    pub fn default_end_user_budget_id(&self) -> Option<&str> {
        self.default_end_user_budget.as_deref()
    }

    /// The customer as of now with the budget that applies (its period followed, a due reset
    /// applied and persisted).
    pub fn end_user(&self, user_id: &str) -> Result<Option<(EndUserRow, Option<BudgetRow>)>> {
        let Some(mut row) = get_end_user(&self.db, user_id)? else {
            return Ok(None);
        };
        let budget = self.end_user_budget(&row)?;
        let changed = follow_period(&mut row, budget.as_ref());
        if row.lazy_reset(&self.clock, self.now) || changed {
            self.save_end_user(&row)?;
        }
        Ok(Some((row, budget)))
    }

    pub fn save_end_user(&self, row: &EndUserRow) -> Result<()> {
        let mut row = row.clone();
        row.sync_spend();
        super::put_end_user(&self.db, &row)
    }

    pub fn delete_end_user(&self, user_id: &str) -> Result<bool> {
        Ok(self
            .db
            .exec("DELETE FROM end_users WHERE user_id = ?1", args![user_id])?
            > 0)
    }

    /// Every customer, oldest first, with its budget.
    pub fn end_users(&self) -> Result<Vec<(EndUserRow, Option<BudgetRow>)>> {
        let ids = self
            .db
            .strings("SELECT user_id FROM end_users ORDER BY rowid", &[])?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.end_user(&id)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Customers linked to a budget row.
    pub fn end_users_with_budget(&self, budget_id: &str) -> Result<Vec<String>> {
        self.db.strings(
            &format!(
                "SELECT user_id FROM end_users WHERE {} = ?1 ORDER BY rowid",
                self.db.dialect().doc_field("budget_id")
            ),
            args![budget_id],
        )
    }
}

/// A customer follows its budget's period: `budget_duration` is copied from the budget that
/// applies (a new period starts when it changes). True when the row changed.
pub(super) fn follow_period(row: &mut EndUserRow, budget: Option<&BudgetRow>) -> bool {
    let inline = row.max_budget.is_some() || row.tpm_limit.is_some() || row.rpm_limit.is_some();
    if inline && row.budget_id.is_none() {
        return false;
    }
    let duration = budget.and_then(|b| b.budget_duration.clone());
    if row.budget_duration != duration {
        row.budget_duration = duration;
        row.budget_reset_at = None;
        return true;
    }
    false
}
