//! Internal users (`LiteLLM_UserTable`): the row, and its reads and writes in a [`Tx`].

use super::sql::{args, Exec, Value};
use super::{load_budgeted, nanos_to_usd, to_doc, Budgeted, Tx};
use crate::records::BudgetState;
use crate::time::parse_iso8601_utc;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// An internal user (`LiteLLM_UserTable`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserRow {
    pub user_id: String,
    pub user_email: Option<String>,
    pub user_alias: Option<String>,
    pub user_role: Option<String>,
    pub teams: Vec<String>,
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    /// ISO 8601 UTC.
    pub budget_reset_at: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub metadata: Json,
    pub model_max_budget: Json,
    pub model_spend: Json,
    /// USD, derived from `spend_nanos` (use [`UserRow::set_spend_nanos`] to change it).
    pub spend: f64,
    /// Authoritative spend, nano-dollars.
    pub spend_nanos: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Budgeted for UserRow {
    fn parts(&mut self) -> (&mut i64, &mut f64, Option<&str>, &mut Option<String>) {
        (
            &mut self.spend_nanos,
            &mut self.spend,
            self.budget_duration.as_deref(),
            &mut self.budget_reset_at,
        )
    }
}

impl UserRow {
    pub fn set_spend_nanos(&mut self, nanos: i64) {
        self.spend_nanos = nanos;
        self.spend = nanos_to_usd(nanos);
    }

    pub fn budget_reset_at_micros(&self) -> Option<i64> {
        self.budget_reset_at.as_deref().and_then(parse_iso8601_utc)
    }

    /// The user's budget as the filter wants it.
    pub fn budget_state(&self) -> BudgetState {
        BudgetState {
            max_budget: self.max_budget,
            budget_duration: self.budget_duration.clone(),
            budget_reset_at_micros: self.budget_reset_at_micros(),
            spend_nanos: self.spend_nanos,
        }
    }
}

pub(super) fn get_user(db: &dyn Exec, user_id: &str) -> Result<Option<UserRow>> {
    db.row("SELECT doc FROM users WHERE user_id = ?1", args![user_id])?
        .map(|r| load_budgeted(&r.text(0)?))
        .transpose()
}

pub(super) fn put_user_doc(db: &dyn Exec, row: &UserRow) -> Result<()> {
    db.exec(
        "UPDATE users SET doc = ?2 WHERE user_id = ?1",
        args![&row.user_id, to_doc(row)?],
    )?;
    Ok(())
}

impl Tx<'_> {
    // ---- users ----

    /// The user as of now (a due budget reset applied).
    pub fn user(&self, user_id: &str) -> Result<Option<UserRow>> {
        let Some(mut row) = get_user(&self.db, user_id)? else {
            return Ok(None);
        };
        if row.lazy_reset(&self.clock, self.now) {
            self.save_user(&row)?;
        }
        Ok(Some(row))
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        let id = self.db.row(
            "SELECT user_id FROM users WHERE user_email = ?1 ORDER BY rowid LIMIT 1",
            args![email],
        )?;
        match id {
            Some(id) => self.user(&id.text(0)?),
            None => Ok(None),
        }
    }

    /// Creates or replaces a user.
    pub fn save_user(&self, row: &UserRow) -> Result<()> {
        let mut row = row.clone();
        row.sync_spend();
        self.db.exec(
            "INSERT INTO users (user_id, user_email, doc) VALUES (?1, ?2, ?3)
             ON CONFLICT(user_id) DO UPDATE SET user_email = excluded.user_email,
                 doc = excluded.doc",
            args![&row.user_id, &row.user_email, to_doc(&row)?],
        )?;
        Ok(())
    }

    pub fn delete_user(&self, user_id: &str) -> Result<bool> {
        Ok(self
            .db
            .exec("DELETE FROM users WHERE user_id = ?1", args![user_id])?
            > 0)
    }

    /// Users (oldest first, one page), optionally of one role, and how many there are.
    pub fn users(
        &self,
        role: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<UserRow>, u64)> {
        let (filter, args): (String, Vec<Value>) = match role {
            Some(r) => (
                format!(" WHERE {} = ?1", self.db.dialect().doc_field("user_role")),
                vec![Value::from(r)],
            ),
            None => (String::new(), vec![]),
        };
        let total = self
            .db
            .row(&format!("SELECT COUNT(*) FROM users{filter}"), &args)?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0);
        let ids = self.db.strings(
            &format!(
                "SELECT user_id FROM users{filter} ORDER BY rowid LIMIT {} OFFSET {}",
                i64::try_from(limit).unwrap_or(i64::MAX),
                i64::try_from(offset).unwrap_or(i64::MAX)
            ),
            &args,
        )?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(u) = self.user(&id)? {
                rows.push(u);
            }
        }
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }
}
