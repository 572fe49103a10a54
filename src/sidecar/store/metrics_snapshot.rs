//! What the sidecar's `/metrics` reads from the store at scrape time: every key, user and team
//! that has a budget, with its spend (LiteLLM's remaining-budget gauges).

use super::sql::Exec;
use super::teams::TeamRow;
use super::{load_budgeted, nanos_to_usd as usd, KeyRow, Store, UserRow};
use anyhow::Result;

/// Which kind of entity a [`BudgetedEntity`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    Key,
    User,
    Team,
}

/// One entity with a `max_budget`.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetedEntity {
    pub kind: EntityKind,
    /// Key token (sha256), user id or team id.
    pub id: String,
    /// Key or team alias.
    pub alias: Option<String>,
    pub max_budget: f64,
    pub spend_usd: f64,
    /// Keys only: their rpm/tpm limits (LiteLLM's remaining requests/tokens per model).
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
}

/// Every budgeted entity, in table order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetSnapshot {
    pub entities: Vec<BudgetedEntity>,
}

impl Store {
    /// Keys, users and teams with a `max_budget` (as stored: a period that has ended but not
    /// been reset yet still shows its spend until the next call resets it).
    pub fn budget_snapshot(&self) -> Result<BudgetSnapshot> {
        self.read(snapshot)
    }
}

fn snapshot(db: &dyn Exec) -> Result<BudgetSnapshot> {
    {
        let docs =
            |table: &str| db.strings(&format!("SELECT doc FROM {table} ORDER BY rowid"), &[]);
        let mut out = BudgetSnapshot::default();
        for doc in docs("keys")? {
            let k: KeyRow = load_budgeted(&doc)?;
            if let Some(max_budget) = k.max_budget {
                out.entities.push(BudgetedEntity {
                    kind: EntityKind::Key,
                    id: k.token,
                    alias: k.key_alias,
                    max_budget,
                    spend_usd: usd(k.spend_nanos),
                    rpm_limit: k.rpm_limit,
                    tpm_limit: k.tpm_limit,
                });
            }
        }
        for doc in docs("users")? {
            let u: UserRow = load_budgeted(&doc)?;
            if let Some(max_budget) = u.max_budget {
                out.entities.push(BudgetedEntity {
                    kind: EntityKind::User,
                    id: u.user_id,
                    alias: None,
                    max_budget,
                    spend_usd: usd(u.spend_nanos),
                    rpm_limit: None,
                    tpm_limit: None,
                });
            }
        }
        for doc in docs("teams")? {
            let t: TeamRow = load_budgeted(&doc)?;
            if let Some(max_budget) = t.max_budget {
                out.entities.push(BudgetedEntity {
                    kind: EntityKind::Team,
                    id: t.team_id,
                    alias: t.team_alias,
                    max_budget,
                    spend_usd: usd(t.spend_nanos),
                    rpm_limit: None,
                    tpm_limit: None,
                });
            }
        }
        Ok(out)
    }
}
