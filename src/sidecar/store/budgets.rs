//! Budget rows (`LiteLLM_BudgetTable`): named limits that customers, team memberships, teams'
//! default member budgets and keys point at by `budget_id`. A row has no spend of its own: the
//! entity linked to it keeps the spend, and follows the row's limits and period.

use super::sql::{args, Exec};
use super::{from_doc, to_doc, Tx};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS budgets (
    budget_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetRow {
    pub budget_id: String,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub max_parallel_requests: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub model_max_budget: Option<Value>,
    pub budget_duration: Option<String>,
    /// ISO 8601 UTC: the end of the row's first period (informational; each linked entity
    /// keeps its own period end, aligned the same way).
    pub budget_reset_at: Option<String>,
    /// `allowed_models` of a team-membership budget.
    pub allowed_models: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
}

impl Tx<'_> {
    pub fn budget(&self, budget_id: &str) -> Result<Option<BudgetRow>> {
        self.db
            .row(
                "SELECT doc FROM budgets WHERE budget_id = ?1",
                args![budget_id],
            )?
            .map(|r| from_doc(&r.text(0)?))
            .transpose()
    }

    /// Creates or replaces a budget row.
    pub fn save_budget(&self, row: &BudgetRow) -> Result<()> {
        self.db.exec(
            "INSERT INTO budgets (budget_id, doc) VALUES (?1, ?2)
             ON CONFLICT(budget_id) DO UPDATE SET doc = excluded.doc",
            args![&row.budget_id, to_doc(row)?],
        )?;
        Ok(())
    }

    pub fn delete_budget(&self, budget_id: &str) -> Result<bool> {
        Ok(self
            .db
            .exec("DELETE FROM budgets WHERE budget_id = ?1", args![budget_id])?
            > 0)
    }

    /// Every budget row, oldest first.
    pub fn budgets(&self) -> Result<Vec<BudgetRow>> {
        self.db
            .strings("SELECT doc FROM budgets ORDER BY rowid", &[])?
            .iter()
            .map(|d| from_doc(d))
            .collect()
    }
}
