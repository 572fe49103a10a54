//! Teams (`LiteLLM_TeamTable`) and team memberships (`LiteLLM_TeamMembership`: a member's spend
//! in the team and its budget row).

use super::sql::{args, Exec};
use super::{load_budgeted, nanos_to_usd, to_doc, BudgetRow, Budgeted, Tx};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS teams (
    team_id TEXT PRIMARY KEY,
    team_alias TEXT,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS team_memberships (
    team_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    budget_id TEXT,
    doc TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX IF NOT EXISTS team_memberships_user ON team_memberships(user_id);
CREATE INDEX IF NOT EXISTS team_memberships_budget ON team_memberships(budget_id);
";

/// One entry of a team's `members_with_roles`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Member {
    /// `admin` or `user`.
    pub role: String,
    pub user_id: Option<String>,
    pub user_email: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TeamRow {
    pub team_id: String,
    pub team_alias: Option<String>,
    pub organization_id: Option<String>,
    pub admins: Vec<String>,
    pub members: Vec<String>,
    pub members_with_roles: Vec<Member>,
    /// Holds `model_rpm_limit`, `model_tpm_limit` and `team_member_budget_id`, as in LiteLLM.
    pub metadata: Value,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub budget_duration: Option<String>,
    /// ISO 8601 UTC.
    pub budget_reset_at: Option<String>,
    /// Empty = every model.
    pub models: Vec<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub blocked: bool,
    pub model_aliases: Value,
    pub model_max_budget: Value,
    pub model_spend: Value,
    pub team_member_permissions: Vec<String>,
    /// USD, derived from `spend_nanos`.
    pub spend: f64,
    /// Authoritative spend, nano-dollars.
    pub spend_nanos: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Budgeted for TeamRow {
    fn parts(&mut self) -> (&mut i64, &mut f64, Option<&str>, &mut Option<String>) {
        (
            &mut self.spend_nanos,
            &mut self.spend,
            self.budget_duration.as_deref(),
            &mut self.budget_reset_at,
        )
    }
}

impl TeamRow {
    pub fn set_spend_nanos(&mut self, nanos: i64) {
        self.spend_nanos = nanos;
        self.spend = nanos_to_usd(nanos);
    }

    /// `metadata.team_member_budget_id`: the budget of members without their own.
    pub fn member_budget_id(&self) -> Option<&str> {
        self.metadata
            .get("team_member_budget_id")
            .and_then(Value::as_str)
    }

    pub fn member(&self, user_id: &str) -> Option<&Member> {
        self.members_with_roles
            .iter()
            .find(|m| m.user_id.as_deref() == Some(user_id))
    }

    pub fn is_admin(&self, user_id: &str) -> bool {
        self.member(user_id).is_some_and(|m| m.role == "admin")
    }
}

/// A user's membership in a team: its spend there and, maybe, its own budget row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MembershipRow {
    pub team_id: String,
    pub user_id: String,
    /// The member's own budget (`max_budget_in_team`); `None`: the team's default applies.
    pub budget_id: Option<String>,
    /// The period of the budget that applies (copied from it whenever it is resolved).
    pub budget_duration: Option<String>,
    /// ISO 8601 UTC: end of the current period of the member's spend.
    pub budget_reset_at: Option<String>,
    pub spend: f64,
    pub spend_nanos: i64,
}

impl Budgeted for MembershipRow {
    fn parts(&mut self) -> (&mut i64, &mut f64, Option<&str>, &mut Option<String>) {
        (
            &mut self.spend_nanos,
            &mut self.spend,
            self.budget_duration.as_deref(),
            &mut self.budget_reset_at,
        )
    }
}

impl Tx<'_> {
    /// The team as of now (a due budget reset applied and persisted).
    pub fn team(&self, team_id: &str) -> Result<Option<TeamRow>> {
        let Some(r) = self
            .db
            .row("SELECT doc FROM teams WHERE team_id = ?1", args![team_id])?
        else {
            return Ok(None);
        };
        let mut row: TeamRow = load_budgeted(&r.text(0)?)?;
        if row.lazy_reset(&self.clock, self.now) {
            self.save_team(&row)?;
        }
        Ok(Some(row))
    }

    pub fn save_team(&self, row: &TeamRow) -> Result<()> {
        let mut row = row.clone();
        row.sync_spend();
        self.db.exec(
            "INSERT INTO teams (team_id, team_alias, doc) VALUES (?1, ?2, ?3)
             ON CONFLICT(team_id) DO UPDATE SET team_alias = excluded.team_alias,
                 doc = excluded.doc",
            args![&row.team_id, &row.team_alias, to_doc(&row)?],
        )?;
        Ok(())
    }

    /// Deletes the team and its memberships.
    pub fn delete_team(&self, team_id: &str) -> Result<bool> {
        self.db.exec(
            "DELETE FROM team_memberships WHERE team_id = ?1",
            args![team_id],
        )?;
        Ok(self
            .db
            .exec("DELETE FROM teams WHERE team_id = ?1", args![team_id])?
            > 0)
    }

    /// Every team, oldest first (due resets applied).
    pub fn teams(&self) -> Result<Vec<TeamRow>> {
        let ids = self
            .db
            .strings("SELECT team_id FROM teams ORDER BY rowid", &[])?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = self.team(&id)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Teams whose default member budget is `budget_id`.
    pub fn teams_with_member_budget(&self, budget_id: &str) -> Result<Vec<String>> {
        let field = self
            .db
            .dialect()
            .doc_field("metadata.team_member_budget_id");
        self.db.strings(
            &format!("SELECT team_id FROM teams WHERE {field} = ?1"),
            args![budget_id],
        )
    }

    /// The budget row that applies to a membership: its own, else the team's default.
    pub fn membership_budget(
        &self,
        membership: &MembershipRow,
        team: Option<&TeamRow>,
    ) -> Result<Option<BudgetRow>> {
        if let Some(own) = membership.budget_id.as_deref() {
            if let Some(b) = self.budget(own)? {
                return Ok(Some(b));
            }
        }
        match team.and_then(TeamRow::member_budget_id) {
            Some(id) => self.budget(id),
            None => Ok(None),
        }
    }

    /// The membership as of now with the budget that applies to it (its period followed and a
    /// due reset applied and persisted).
    pub fn membership(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<Option<(MembershipRow, Option<BudgetRow>)>> {
        let Some(r) = self.db.row(
            "SELECT doc FROM team_memberships WHERE team_id = ?1 AND user_id = ?2",
            args![team_id, user_id],
        )?
        else {
            return Ok(None);
        };
        let mut row: MembershipRow = load_budgeted(&r.text(0)?)?;
        let team = self.team(team_id)?;
        let budget = self.membership_budget(&row, team.as_ref())?;
        let duration = budget.as_ref().and_then(|b| b.budget_duration.clone());
        let mut changed = false;
        if row.budget_duration != duration {
            row.budget_duration = duration;
            row.budget_reset_at = None;
            changed = true;
        }
        if row.lazy_reset(&self.clock, self.now) || changed {
            self.save_membership(&row)?;
        }
        Ok(Some((row, budget)))
    }

    pub fn save_membership(&self, row: &MembershipRow) -> Result<()> {
        let mut row = row.clone();
        row.sync_spend();
        self.db.exec(
            "INSERT INTO team_memberships (team_id, user_id, budget_id, doc) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(team_id, user_id) DO UPDATE SET budget_id = excluded.budget_id,
                 doc = excluded.doc",
            args![&row.team_id, &row.user_id, &row.budget_id, to_doc(&row)?],
        )?;
        Ok(())
    }

    pub fn delete_membership(&self, team_id: &str, user_id: &str) -> Result<bool> {
        Ok(self.db.exec(
            "DELETE FROM team_memberships WHERE team_id = ?1 AND user_id = ?2",
            args![team_id, user_id],
        )? > 0)
    }

    /// Deletes every membership of a user.
    pub fn delete_memberships_of_user(&self, user_id: &str) -> Result<()> {
        self.db.exec(
            "DELETE FROM team_memberships WHERE user_id = ?1",
            args![user_id],
        )?;
        Ok(())
    }

    /// The team's memberships, with the budget that applies to each.
    pub fn memberships_of_team(
        &self,
        team_id: &str,
    ) -> Result<Vec<(MembershipRow, Option<BudgetRow>)>> {
        let users = self.db.strings(
            "SELECT user_id FROM team_memberships WHERE team_id = ?1 ORDER BY rowid",
            args![team_id],
        )?;
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            if let Some(m) = self.membership(team_id, &u)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// `(team_id, user_id)` of memberships whose own budget is `budget_id`.
    pub fn memberships_with_budget(&self, budget_id: &str) -> Result<Vec<(String, String)>> {
        self.db
            .rows(
                "SELECT team_id, user_id FROM team_memberships WHERE budget_id = ?1",
                args![budget_id],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect()
    }
}
