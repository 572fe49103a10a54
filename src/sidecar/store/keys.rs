//! Virtual keys (`LiteLLM_VerificationToken`): the row, and its reads and writes in a [`Tx`].

use super::sql::{args, Exec, Value};
use super::{load_budgeted, nanos_to_usd, to_doc, Budgeted, Tx};
use crate::time::parse_iso8601_utc;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Filters and page of [`Tx::keys`]; all given filters must match.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub key_alias: Option<String>,
    pub token: Option<String>,
    /// The key's own `organization_id`.
    pub organization_id: Option<String>,
    pub offset: u64,
    pub limit: u64,
}

/// A virtual key as stored (LiteLLM's `LiteLLM_VerificationToken`, minus nothing we know of).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyRow {
    pub token: String,
    pub key_name: String,
    pub key_alias: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub budget_duration: Option<String>,
    /// ISO 8601 UTC: the aligned end of the current budget period.
    pub budget_reset_at: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub metadata: Json,
    pub aliases: Json,
    pub config: Json,
    pub permissions: Json,
    pub model_max_budget: Json,
    /// `{"<model>": spend USD}`, charged per spend event.
    pub model_spend: Json,
    pub allowed_routes: Vec<String>,
    pub tags: Option<Vec<String>>,
    pub key_type: Option<String>,
    pub budget_id: Option<String>,
    pub organization_id: Option<String>,
    pub blocked: Option<bool>,
    /// ISO 8601 UTC; `None` = never expires.
    pub expires: Option<String>,
    /// USD, derived from `spend_nanos` (use [`KeyRow::set_spend_nanos`] to change it).
    pub spend: f64,
    /// Authoritative spend, nano-dollars.
    pub spend_nanos: i64,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
}

impl Budgeted for KeyRow {
    fn parts(&mut self) -> (&mut i64, &mut f64, Option<&str>, &mut Option<String>) {
        (
            &mut self.spend_nanos,
            &mut self.spend,
            self.budget_duration.as_deref(),
            &mut self.budget_reset_at,
        )
    }
}

impl KeyRow {
    /// Sets the spend (nanos and the derived USD).
    pub fn set_spend_nanos(&mut self, nanos: i64) {
        self.spend_nanos = nanos;
        self.spend = nanos_to_usd(nanos);
    }

    /// `budget_reset_at` as unix microseconds.
    pub fn budget_reset_at_micros(&self) -> Option<i64> {
        self.budget_reset_at.as_deref().and_then(parse_iso8601_utc)
    }
}

pub(super) fn get_key(db: &dyn Exec, token: &str) -> Result<Option<KeyRow>> {
    db.row("SELECT doc FROM keys WHERE token = ?1", args![token])?
        .map(|r| load_budgeted(&r.text(0)?))
        .transpose()
}

pub(super) fn put_key_doc(db: &dyn Exec, row: &KeyRow) -> Result<()> {
    db.exec(
        "UPDATE keys SET doc = ?2 WHERE token = ?1",
        args![&row.token, to_doc(row)?],
    )?;
    Ok(())
}

pub(super) fn insert_key(db: &dyn Exec, row: &KeyRow) -> Result<()> {
    let mut row = row.clone();
    row.sync_spend();
    db.exec(
        "INSERT INTO keys (token, user_id, team_id, key_alias, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![
            &row.token,
            &row.user_id,
            &row.team_id,
            &row.key_alias,
            to_doc(&row)?
        ],
    )?;
    Ok(())
}

impl Tx<'_> {
    // ---- keys ----

    /// The key as of now (a due budget reset applied).
    pub fn key(&self, token: &str) -> Result<Option<KeyRow>> {
        let Some(mut row) = get_key(&self.db, token)? else {
            return Ok(None);
        };
        if row.lazy_reset(&self.clock, self.now) {
            self.save_key(&row)?;
        }
        Ok(Some(row))
    }

    /// The key with this alias, if any.
    pub fn key_by_alias(&self, alias: &str) -> Result<Option<KeyRow>> {
        let token = self.db.row(
            "SELECT token FROM keys WHERE key_alias = ?1 ORDER BY rowid LIMIT 1",
            args![alias],
        )?;
        match token {
            Some(t) => self.key(&t.text(0)?),
            None => Ok(None),
        }
    }

    /// Whether a key other than `except_token` has this alias.
    pub fn key_alias_taken(&self, alias: &str, except_token: &str) -> Result<bool> {
        Ok(self
            .db
            .row(
                "SELECT 1 FROM keys WHERE key_alias = ?1 AND token != ?2",
                args![alias, except_token],
            )?
            .is_some())
    }

    /// Creates or replaces a key (its lookup columns too).
    pub fn save_key(&self, row: &KeyRow) -> Result<()> {
        let mut row = row.clone();
        row.sync_spend();
        self.db.exec(
            "INSERT INTO keys (token, user_id, team_id, key_alias, doc) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(token) DO UPDATE SET user_id = excluded.user_id,
                 team_id = excluded.team_id, key_alias = excluded.key_alias, doc = excluded.doc",
            args![
                &row.token,
                &row.user_id,
                &row.team_id,
                &row.key_alias,
                to_doc(&row)?
            ],
        )?;
        Ok(())
    }

    /// Inserts a new key; fails if the token exists.
    pub fn insert_key(&self, row: &KeyRow) -> Result<()> {
        super::insert_key(&self.db, row)
    }

    pub fn delete_key(&self, token: &str) -> Result<bool> {
        Ok(self
            .db
            .exec("DELETE FROM keys WHERE token = ?1", args![token])?
            > 0)
    }

    /// Keys matching `q` (oldest first, one page) and how many match in all.
    pub fn keys(&self, q: &KeyQuery) -> Result<(Vec<KeyRow>, u64)> {
        let mut filter = String::from(" WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        for (col, v) in [
            ("user_id", &q.user_id),
            ("team_id", &q.team_id),
            ("key_alias", &q.key_alias),
            ("token", &q.token),
        ] {
            if let Some(v) = v {
                args.push(Value::from(v));
                filter.push_str(&format!(" AND {col} = ?{}", args.len()));
            }
        }
        if let Some(org) = &q.organization_id {
            args.push(Value::from(org));
            let field = self.db.dialect().doc_field("organization_id");
            filter.push_str(&format!(" AND {field} = ?{}", args.len()));
        }
        let total = self
            .db
            .row(&format!("SELECT COUNT(*) FROM keys{filter}"), &args)?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0);
        args.push(Value::Int(i64::try_from(q.limit).unwrap_or(i64::MAX)));
        let limit_arg = args.len();
        args.push(Value::Int(i64::try_from(q.offset).unwrap_or(i64::MAX)));
        let offset_arg = args.len();
        let tokens = self.db.strings(
            &format!(
                "SELECT token FROM keys{filter} ORDER BY rowid LIMIT ?{limit_arg} OFFSET ?{offset_arg}"
            ),
            &args,
        )?;
        Ok((self.keys_now(tokens)?, u64::try_from(total).unwrap_or(0)))
    }

    /// These keys as of now (a key deleted meanwhile is left out).
    fn keys_now(&self, tokens: Vec<String>) -> Result<Vec<KeyRow>> {
        let mut rows = Vec::with_capacity(tokens.len());
        for t in tokens {
            if let Some(r) = self.key(&t)? {
                rows.push(r);
            }
        }
        Ok(rows)
    }

    /// All keys of a user (as of now).
    pub fn keys_of_user(&self, user_id: &str) -> Result<Vec<KeyRow>> {
        self.keys_now(self.tokens_of_user(user_id)?)
    }

    /// All keys of a team (as of now).
    pub fn keys_of_team(&self, team_id: &str) -> Result<Vec<KeyRow>> {
        self.keys_now(self.tokens_of_team(team_id)?)
    }

    pub fn tokens_of_user(&self, user_id: &str) -> Result<Vec<String>> {
        self.db.strings(
            "SELECT token FROM keys WHERE user_id = ?1 ORDER BY rowid",
            args![user_id],
        )
    }

    pub fn tokens_of_team(&self, team_id: &str) -> Result<Vec<String>> {
        self.db.strings(
            "SELECT token FROM keys WHERE team_id = ?1 ORDER BY rowid",
            args![team_id],
        )
    }

    /// Keys of `user_id` in `team_id` (those a membership change affects).
    pub fn tokens_of_member(&self, team_id: &str, user_id: &str) -> Result<Vec<String>> {
        self.db.strings(
            "SELECT token FROM keys WHERE team_id = ?1 AND user_id = ?2 ORDER BY rowid",
            args![team_id, user_id],
        )
    }

    /// Keys linked to a budget row (`budget_id`).
    pub fn tokens_with_budget(&self, budget_id: &str) -> Result<Vec<String>> {
        let field = self.db.dialect().doc_field("budget_id");
        self.db.strings(
            &format!("SELECT token FROM keys WHERE {field} = ?1 ORDER BY rowid"),
            args![budget_id],
        )
    }
}
