//! Shortcuts the unit tests use to set up and inspect a store; production code goes through
//! [`Store::transact`] (and its [`Tx`] methods) or the other methods of [`Store`].

use super::sql::args;
use super::*;

impl Store {
    pub fn insert_key(&self, row: &KeyRow) -> Result<()> {
        self.write(0, |tx| insert_key(&tx.db, row))
    }

    /// The key as of `now`: a budget period that has ended is reset (and that is persisted).
    pub fn key_at(&self, token: &str, now_micros: i64) -> Result<Option<KeyRow>> {
        self.write(now_micros, |tx| tx.key(token))
    }

    pub fn keys_of_user(&self, user_id: &str) -> Result<Vec<KeyRow>> {
        self.read(|db| {
            db.strings(
                "SELECT doc FROM keys WHERE user_id = ?1 ORDER BY rowid",
                args![user_id],
            )?
            .iter()
            .map(|d| load_budgeted(d))
            .collect()
        })
    }

    /// [`Store::keys_of_user`] with due resets applied and persisted.
    pub fn keys_of_user_at(&self, user_id: &str, now_micros: i64) -> Result<Vec<KeyRow>> {
        self.write(now_micros, |tx| tx.keys_of_user(user_id))
    }

    pub fn key_alias_taken(&self, alias: &str) -> Result<bool> {
        self.read(|db| {
            Ok(db
                .row("SELECT 1 FROM keys WHERE key_alias = ?1", args![alias])?
                .is_some())
        })
    }

    /// Inserts a user and, optionally, its first key, in one transaction.
    pub fn insert_user_with_key(&self, user: &UserRow, key: Option<&KeyRow>) -> Result<()> {
        let mut user = user.clone();
        user.sync_spend();
        self.write(0, |tx| {
            tx.db.exec(
                "INSERT INTO users (user_id, user_email, doc) VALUES (?1, ?2, ?3)",
                args![&user.user_id, &user.user_email, to_doc(&user)?],
            )?;
            if let Some(row) = key {
                insert_key(&tx.db, row)?;
            }
            Ok(())
        })
    }

    /// The user as of `now`, with a due reset applied and persisted.
    pub fn user_at(&self, user_id: &str, now_micros: i64) -> Result<Option<UserRow>> {
        self.write(now_micros, |tx| tx.user(user_id))
    }

    pub fn user_email_taken(&self, email: &str) -> Result<bool> {
        self.read(|db| {
            Ok(db
                .row("SELECT 1 FROM users WHERE user_email = ?1", args![email])?
                .is_some())
        })
    }

    /// The end user as of `now`, with a due reset applied and persisted (its period follows the
    /// budget that applies to it).
    pub fn end_user_at(&self, user_id: &str, now_micros: i64) -> Result<Option<EndUserRow>> {
        Ok(self
            .write(now_micros, |tx| tx.end_user(user_id))?
            .map(|(row, _)| row))
    }

    /// [`Store::apply_spend_batch_indexed`] without the indexes.
    pub fn apply_spend_batch(
        &self,
        batch: &crate::records::SpendBatch,
        now_micros: i64,
    ) -> Result<SpendApplied> {
        Ok(self.apply_spend_batch_indexed(batch, now_micros)?.0)
    }
}
