//! The durable record: keys and users in SQLite (WAL, one transaction per change).
//!
//! Each entity is a JSON document (its LiteLLM fields) plus the columns it is looked up by, so
//! new LiteLLM fields need no migration.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

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
    pub budget_reset_at: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub metadata: Value,
    pub aliases: Value,
    pub config: Value,
    pub permissions: Value,
    pub model_max_budget: Value,
    pub model_spend: Value,
    pub allowed_routes: Vec<String>,
    pub tags: Option<Vec<String>>,
    pub key_type: Option<String>,
    pub budget_id: Option<String>,
    pub organization_id: Option<String>,
    pub blocked: Option<bool>,
    /// ISO 8601 UTC; `None` = never expires.
    pub expires: Option<String>,
    pub spend: f64,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
}

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
    pub budget_reset_at: Option<String>,
    pub tpm_limit: Option<u64>,
    pub rpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub metadata: Value,
    pub model_max_budget: Value,
    pub model_spend: Value,
    pub spend: f64,
    pub created_at: String,
    pub updated_at: String,
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    token TEXT PRIMARY KEY,
    user_id TEXT,
    team_id TEXT,
    key_alias TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_user ON keys(user_id);
CREATE INDEX IF NOT EXISTS keys_team ON keys(team_id);
CREATE INDEX IF NOT EXISTS keys_alias ON keys(key_alias);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    user_email TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS users_email ON users(user_email);
";

fn to_doc<T: Serialize>(row: &T) -> Result<String> {
    Ok(serde_json::to_string(row)?)
}

fn from_doc<T: for<'de> Deserialize<'de>>(doc: &str) -> Result<T> {
    Ok(serde_json::from_str(doc)?)
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path`; `:memory:` for tests.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock only means another handler panicked mid-call; SQLite's own
        // transactions keep the data consistent, so carry on.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ping(&self) -> Result<()> {
        self.conn().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn insert_key(&self, row: &KeyRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO keys (token, user_id, team_id, key_alias, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.token, row.user_id, row.team_id, row.key_alias, to_doc(row)?],
        )?;
        Ok(())
    }

    pub fn key(&self, token: &str) -> Result<Option<KeyRow>> {
        let doc: Option<String> = self
            .conn()
            .query_row("SELECT doc FROM keys WHERE token = ?1", [token], |r| {
                r.get(0)
            })
            .optional()?;
        doc.map(|d| from_doc(&d)).transpose()
    }

    pub fn keys_of_user(&self, user_id: &str) -> Result<Vec<KeyRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT doc FROM keys WHERE user_id = ?1 ORDER BY rowid")?;
        let docs = stmt
            .query_map([user_id], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        docs.iter().map(|d| from_doc(d)).collect()
    }

    pub fn key_alias_taken(&self, alias: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM keys WHERE key_alias = ?1", [alias], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Inserts a user and, optionally, its first key, in one transaction.
    pub fn insert_user_with_key(&self, user: &UserRow, key: Option<&KeyRow>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO users (user_id, user_email, doc) VALUES (?1, ?2, ?3)",
            params![user.user_id, user.user_email, to_doc(user)?],
        )?;
        if let Some(row) = key {
            tx.execute(
                "INSERT INTO keys (token, user_id, team_id, key_alias, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.token, row.user_id, row.team_id, row.key_alias, to_doc(row)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn user(&self, user_id: &str) -> Result<Option<UserRow>> {
        let doc: Option<String> = self
            .conn()
            .query_row("SELECT doc FROM users WHERE user_id = ?1", [user_id], |r| {
                r.get(0)
            })
            .optional()?;
        doc.map(|d| from_doc(&d)).transpose()
    }

    pub fn user_email_taken(&self, email: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM users WHERE user_email = ?1", [email], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_users_round_trip_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("tollgate-store-{}", std::process::id()));
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let store = Store::open(&path).unwrap();
            let user = UserRow {
                user_id: "u1".into(),
                user_email: Some("a@b.c".into()),
                models: vec!["m".into()],
                ..Default::default()
            };
            let key = KeyRow {
                token: "t1".into(),
                user_id: Some("u1".into()),
                key_alias: Some("alias".into()),
                ..Default::default()
            };
            store.insert_user_with_key(&user, Some(&key)).unwrap();
            assert!(
                store.insert_user_with_key(&user, None).is_err(),
                "duplicate user id"
            );
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.user("u1").unwrap().unwrap().models, vec!["m"]);
        assert_eq!(
            store.key("t1").unwrap().unwrap().user_id.as_deref(),
            Some("u1")
        );
        assert_eq!(store.keys_of_user("u1").unwrap().len(), 1);
        assert!(store.key_alias_taken("alias").unwrap());
        assert!(store.user_email_taken("a@b.c").unwrap());
        assert!(store.key("nope").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
