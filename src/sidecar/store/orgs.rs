//! Organizations (`LiteLLM_OrganizationTable`) and their memberships
//! (`LiteLLM_OrganizationMembership`). An organization's limits live in its budget row
//! (`budget_id`), as in LiteLLM; the organization keeps the spend and follows the row's period.

use super::sql::{args, Exec};
use super::{load_budgeted, nanos_to_usd, to_doc, BudgetRow, Budgeted, Tx};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The SQLite tables (PostgreSQL: migration 2 in `pg.rs`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS organizations (
    organization_id TEXT PRIMARY KEY,
    organization_alias TEXT,
    budget_id TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS organizations_budget ON organizations(budget_id);
CREATE TABLE IF NOT EXISTS organization_memberships (
    organization_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);
CREATE INDEX IF NOT EXISTS organization_memberships_user ON organization_memberships(user_id);
";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrgRow {
    pub organization_id: String,
    pub organization_alias: Option<String>,
    /// The row holding `max_budget`, `budget_duration`, `tpm_limit`, `rpm_limit`, ...
    pub budget_id: String,
    /// Holds `model_rpm_limit` and `model_tpm_limit`, as in LiteLLM.
    pub metadata: Value,
    /// Empty = every model.
    pub models: Vec<String>,
    /// USD, derived from `spend_nanos`.
    pub spend: f64,
    /// Authoritative spend, nano-dollars.
    pub spend_nanos: i64,
    pub model_spend: Value,
    pub object_permission_id: Option<String>,
    /// The budget row's period (copied from it whenever it is resolved).
    pub budget_duration: Option<String>,
    /// ISO 8601 UTC: end of the current period of the organization's spend.
    pub budget_reset_at: Option<String>,
    pub created_by: String,
    pub updated_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Budgeted for OrgRow {
    fn parts(&mut self) -> (&mut i64, &mut f64, Option<&str>, &mut Option<String>) {
        (
            &mut self.spend_nanos,
            &mut self.spend,
            self.budget_duration.as_deref(),
            &mut self.budget_reset_at,
        )
    }
}

impl OrgRow {
    pub fn set_spend_nanos(&mut self, nanos: i64) {
        self.spend_nanos = nanos;
        self.spend = nanos_to_usd(nanos);
    }
}

/// A user's membership in an organization: its role there (`org_admin`, `internal_user`,
/// `internal_user_viewer`) and, maybe, its own budget row (`max_budget_in_organization`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrgMembershipRow {
    pub user_id: String,
    pub organization_id: String,
    pub user_role: Option<String>,
    pub spend: f64,
    pub budget_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Tx<'_> {
    /// The organization as of now with its budget row (the row's period followed and a due
    /// reset applied and persisted).
    pub fn organization(
        &self,
        organization_id: &str,
    ) -> Result<Option<(OrgRow, Option<BudgetRow>)>> {
        let Some(r) = self.db.row(
            "SELECT doc FROM organizations WHERE organization_id = ?1",
            args![organization_id],
        )?
        else {
            return Ok(None);
        };
        let mut row: OrgRow = load_budgeted(&r.text(0)?)?;
        let budget = self.budget(&row.budget_id)?;
        let duration = budget.as_ref().and_then(|b| b.budget_duration.clone());
        let mut changed = false;
        if row.budget_duration != duration {
            // A new period: aligned from the row's own first period end when it has one.
            row.budget_reset_at = budget.as_ref().and_then(|b| b.budget_reset_at.clone());
            row.budget_duration = duration;
            changed = true;
        }
        if row.lazy_reset(&self.clock, self.now) || changed {
            self.save_organization(&row)?;
        }
        Ok(Some((row, budget)))
    }

    pub fn save_organization(&self, row: &OrgRow) -> Result<()> {
        let mut row = row.clone();
        row.sync_spend();
        self.db.exec(
            "INSERT INTO organizations (organization_id, organization_alias, budget_id, doc)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(organization_id) DO UPDATE SET
                 organization_alias = excluded.organization_alias,
                 budget_id = excluded.budget_id, doc = excluded.doc",
            args![
                &row.organization_id,
                &row.organization_alias,
                &row.budget_id,
                to_doc(&row)?
            ],
        )?;
        Ok(())
    }

    /// Deletes the organization and its memberships.
    pub fn delete_organization(&self, organization_id: &str) -> Result<bool> {
        self.db.exec(
            "DELETE FROM organization_memberships WHERE organization_id = ?1",
            args![organization_id],
        )?;
        Ok(self.db.exec(
            "DELETE FROM organizations WHERE organization_id = ?1",
            args![organization_id],
        )? > 0)
    }

    /// Every organization id, oldest first.
    pub fn organization_ids(&self) -> Result<Vec<String>> {
        self.db.strings(
            "SELECT organization_id FROM organizations ORDER BY rowid",
            &[],
        )
    }

    /// Organizations whose budget row is `budget_id`.
    pub fn organizations_with_budget(&self, budget_id: &str) -> Result<Vec<String>> {
        self.db.strings(
            "SELECT organization_id FROM organizations WHERE budget_id = ?1 ORDER BY rowid",
            args![budget_id],
        )
    }

    /// Teams that belong to the organization, oldest first.
    pub fn teams_of_organization(&self, organization_id: &str) -> Result<Vec<String>> {
        let field = self.db.dialect().doc_field("organization_id");
        self.db.strings(
            &format!("SELECT team_id FROM teams WHERE {field} = ?1 ORDER BY rowid"),
            args![organization_id],
        )
    }

    /// Keys whose own `organization_id` is the organization.
    pub fn keys_naming_organization(&self, organization_id: &str) -> Result<Vec<String>> {
        let field = self.db.dialect().doc_field("organization_id");
        self.db.strings(
            &format!("SELECT token FROM keys WHERE {field} = ?1 ORDER BY rowid"),
            args![organization_id],
        )
    }

    /// Keys whose requests the organization governs: keys naming it, and keys of its teams.
    pub fn tokens_of_organization(&self, organization_id: &str) -> Result<Vec<String>> {
        let mut tokens = self.keys_naming_organization(organization_id)?;
        for team in self.teams_of_organization(organization_id)? {
            for t in self.tokens_of_team(&team)? {
                if !tokens.contains(&t) {
                    tokens.push(t);
                }
            }
        }
        Ok(tokens)
    }

    pub fn org_membership(
        &self,
        organization_id: &str,
        user_id: &str,
    ) -> Result<Option<OrgMembershipRow>> {
        self.db
            .row(
                "SELECT doc FROM organization_memberships
                 WHERE organization_id = ?1 AND user_id = ?2",
                args![organization_id, user_id],
            )?
            .map(|r| Ok(serde_json::from_str(&r.text(0)?)?))
            .transpose()
    }

    pub fn save_org_membership(&self, row: &OrgMembershipRow) -> Result<()> {
        self.db.exec(
            "INSERT INTO organization_memberships (organization_id, user_id, doc)
             VALUES (?1, ?2, ?3)
             ON CONFLICT(organization_id, user_id) DO UPDATE SET doc = excluded.doc",
            args![&row.organization_id, &row.user_id, to_doc(row)?],
        )?;
        Ok(())
    }

    pub fn delete_org_membership(&self, organization_id: &str, user_id: &str) -> Result<bool> {
        Ok(self.db.exec(
            "DELETE FROM organization_memberships WHERE organization_id = ?1 AND user_id = ?2",
            args![organization_id, user_id],
        )? > 0)
    }

    /// Deletes every organization membership of a user.
    pub fn delete_org_memberships_of_user(&self, user_id: &str) -> Result<()> {
        self.db.exec(
            "DELETE FROM organization_memberships WHERE user_id = ?1",
            args![user_id],
        )?;
        Ok(())
    }

    fn org_memberships_where(&self, column: &str, id: &str) -> Result<Vec<OrgMembershipRow>> {
        self.db
            .strings(
                &format!(
                    "SELECT doc FROM organization_memberships WHERE {column} = ?1 ORDER BY rowid"
                ),
                args![id],
            )?
            .iter()
            .map(|d| Ok(serde_json::from_str(d)?))
            .collect()
    }

    /// The organization's members, oldest first.
    pub fn org_memberships_of_organization(
        &self,
        organization_id: &str,
    ) -> Result<Vec<OrgMembershipRow>> {
        self.org_memberships_where("organization_id", organization_id)
    }

    /// The user's organization memberships, oldest first.
    pub fn org_memberships_of_user(&self, user_id: &str) -> Result<Vec<OrgMembershipRow>> {
        self.org_memberships_where("user_id", user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{SpendBatch, SpendEvent};
    use crate::sidecar::store::{KeyRow, Store, TeamRow};
    use std::path::Path;

    const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    const DAY: i64 = 86_400_000_000;

    fn store_with_org() -> Store {
        let store = Store::open(Path::new(":memory:")).unwrap();
        store
            .transact(T0, |tx| -> Result<()> {
                tx.save_budget(&BudgetRow {
                    budget_id: "b-org".into(),
                    max_budget: Some(1.0),
                    rpm_limit: Some(5),
                    budget_duration: Some("1d".into()),
                    budget_reset_at: Some("2026-01-02T00:00:00Z".into()),
                    ..Default::default()
                })?;
                tx.save_organization(&OrgRow {
                    organization_id: "org".into(),
                    organization_alias: Some("Org".into()),
                    budget_id: "b-org".into(),
                    models: vec!["gpt-a".into()],
                    ..Default::default()
                })?;
                for team in ["t1", "t2"] {
                    tx.save_team(&TeamRow {
                        team_id: team.into(),
                        organization_id: Some("org".into()),
                        ..Default::default()
                    })?;
                }
                tx.save_team(&TeamRow {
                    team_id: "other".into(),
                    ..Default::default()
                })?;
                Ok(())
            })
            .unwrap();
        for (token, team, org) in [
            ("k1", Some("t1"), None),
            ("k2", Some("t2"), None),
            ("k3", None, Some("org")),
            ("k4", Some("other"), None),
        ] {
            store
                .insert_key(&KeyRow {
                    token: token.into(),
                    team_id: team.map(str::to_string),
                    organization_id: org.map(str::to_string),
                    ..Default::default()
                })
                .unwrap();
        }
        store
    }

    fn org_at(store: &Store, now: i64) -> (OrgRow, Option<BudgetRow>) {
        store
            .transact(now, |tx| -> Result<_> { tx.organization("org") })
            .unwrap()
            .value
            .unwrap()
    }

    #[test]
    fn organizations_members_and_their_keys() {
        let store = store_with_org();
        let (org, budget) = org_at(&store, T0);
        assert_eq!(org.organization_alias.as_deref(), Some("Org"));
        assert_eq!(budget.unwrap().rpm_limit, Some(5));
        // The organization follows its budget row's period.
        assert_eq!(org.budget_duration.as_deref(), Some("1d"));
        assert_eq!(org.budget_reset_at.as_deref(), Some("2026-01-02T00:00:00Z"));
        let committed = store
            .transact(T0, |tx| -> Result<_> {
                for (user, role) in [("u1", "org_admin"), ("u2", "internal_user")] {
                    tx.save_org_membership(&OrgMembershipRow {
                        user_id: user.into(),
                        organization_id: "org".into(),
                        user_role: Some(role.into()),
                        ..Default::default()
                    })?;
                }
                let members: Vec<_> = tx
                    .org_memberships_of_organization("org")?
                    .into_iter()
                    .map(|m| (m.user_id, m.user_role))
                    .collect();
                let of_user = tx.org_memberships_of_user("u2")?;
                let one = tx.org_membership("org", "u1")?;
                let tokens = tx.tokens_of_organization("org")?;
                let teams = tx.teams_of_organization("org")?;
                let by_budget = tx.organizations_with_budget("b-org")?;
                Ok((members, of_user, one, tokens, teams, by_budget))
            })
            .unwrap()
            .value;
        let (members, of_user, one, tokens, teams, by_budget) = committed;
        assert_eq!(
            members,
            vec![
                ("u1".to_string(), Some("org_admin".to_string())),
                ("u2".to_string(), Some("internal_user".to_string()))
            ]
        );
        assert_eq!(of_user.len(), 1);
        assert_eq!(one.unwrap().user_role.as_deref(), Some("org_admin"));
        assert_eq!(tokens, ["k3", "k1", "k2"]);
        assert_eq!(teams, ["t1", "t2"]);
        assert_eq!(by_budget, ["org"]);
        let left = store
            .transact(T0, |tx| -> Result<_> {
                assert!(tx.delete_org_membership("org", "u2")?);
                assert!(!tx.delete_org_membership("org", "u2")?);
                tx.delete_org_memberships_of_user("u1")?;
                let left = tx.org_memberships_of_organization("org")?.len();
                assert!(tx.delete_organization("org")?);
                Ok((
                    left,
                    tx.organization("org")?.is_none(),
                    tx.organization_ids()?,
                ))
            })
            .unwrap()
            .value;
        assert_eq!(left, (0, true, vec![]));
    }

    #[test]
    fn spend_of_its_teams_and_keys_charges_the_organization_and_resets() {
        let store = store_with_org();
        let ev = |id: &str, key: &str, team: Option<&str>, nanos: i64| SpendEvent {
            event_id: id.into(),
            api_key: Some(key.into()),
            team_id: team.map(str::to_string),
            model: "gpt-a".into(),
            spend_nanos: nanos,
            ..Default::default()
        };
        let batch = SpendBatch {
            events: vec![
                ev("e1", "k1", Some("t1"), 100),
                ev("e2", "k2", Some("t2"), 20),
                // A key naming the organization itself.
                ev("e3", "k3", None, 3),
                // A team outside it.
                ev("e4", "k4", Some("other"), 1000),
            ],
        };
        store.apply_spend_batch(&batch, T0 + 1).unwrap();
        // A replayed batch charges nothing.
        store.apply_spend_batch(&batch, T0 + 2).unwrap();
        let (org, _) = org_at(&store, T0 + 3);
        assert_eq!(org.spend_nanos, 123);
        assert_eq!(org.spend, 1.23e-7);
        // The next day the period has ended: spend starts again from 0.
        let (org, _) = org_at(&store, T0 + DAY);
        assert_eq!(org.spend_nanos, 0);
        assert_eq!(org.budget_reset_at.as_deref(), Some("2026-01-03T00:00:00Z"));
    }
}
