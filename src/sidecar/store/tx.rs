//! [`Tx`]: one transaction over the store, for admin changes. What a change makes stale in the
//! filter is noted with [`Tx::invalidate`] and written to the change log in the same
//! transaction ([`Store::transact`]).

use super::pg::PgTx;
use super::sql::{args, Dialect, Exec, Row, Value};
use super::{
    blocking, changes, get_end_user, get_key, get_proxy, get_user, proxy_lazy_reset, put_proxy,
    to_doc, Backend, BudgetRow, Budgeted, EndUserRow, KeyRow, ProxyBudgetRow, ResetClock, Store,
    UserRow,
};
use anyhow::Result;

/// The open transaction of either backend.
pub(super) enum Db<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Postgres(Box<PgTx>),
}

impl Db<'_> {
    fn commit(self) -> Result<()> {
        match self {
            Db::Sqlite(tx) => Ok(tx.commit()?),
            Db::Postgres(tx) => tx.commit(),
        }
    }
}

impl Exec for Db<'_> {
    fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64> {
        match self {
            Db::Sqlite(tx) => (**tx).exec(sql, args),
            Db::Postgres(tx) => tx.exec(sql, args),
        }
    }

    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        match self {
            Db::Sqlite(tx) => (**tx).rows(sql, args),
            Db::Postgres(tx) => tx.rows(sql, args),
        }
    }

    fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite(tx) => (**tx).batch(sql),
            Db::Postgres(tx) => tx.batch(sql),
        }
    }
}

/// A transaction: reads apply due budget resets (persisted with the change), writes go to
/// the store, and [`Tx::invalidate`] collects the change-log entries.
pub struct Tx<'c> {
    pub(super) db: Db<'c>,
    pub(super) clock: ResetClock,
    pub(super) default_end_user_budget: Option<String>,
    pub(super) default_end_user_max_budget: Option<f64>,
    pub(super) now: i64,
    entries: Vec<String>,
}

/// A committed transaction's result and the change-log entries it recorded.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub entries: Vec<String>,
}

/// Filters and page of [`Tx::keys`]; all given filters must match.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub key_alias: Option<String>,
    pub token: Option<String>,
    pub offset: u64,
    pub limit: u64,
}

impl<'c> Tx<'c> {
    fn new(db: Db<'c>, store: &Store, now_micros: i64) -> Tx<'c> {
        Tx {
            db,
            clock: store.reset_clock(),
            default_end_user_budget: store.default_end_user_budget_id(),
            default_end_user_max_budget: store.default_end_user_max_budget(),
            now: now_micros,
            entries: Vec::new(),
        }
    }

    /// Runs `f`, records the change-log entries it noted and commits.
    fn run<T, E: From<anyhow::Error>>(
        mut self,
        f: impl FnOnce(&mut Tx<'c>) -> Result<T, E>,
    ) -> Result<Committed<T>, E> {
        let value = f(&mut self)?;
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<String> = self
            .entries
            .drain(..)
            .filter(|e| seen.insert(e.clone()))
            .collect();
        changes::record(&self.db, &entries, self.now).map_err(E::from)?;
        self.db.commit().map_err(E::from)?;
        Ok(Committed { value, entries })
    }
}

impl Store {
    /// Runs `f` in one transaction and commits it with the change-log entries it noted. An
    /// error rolls everything back. On PostgreSQL the transaction holds the store's write lock,
    /// so replicas' transactions apply one after another. Every store transaction goes through
    /// here (off the async workers, see [`blocking`]).
    pub fn transact<T, E: From<anyhow::Error>>(
        &self,
        now_micros: i64,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<Committed<T>, E> {
        blocking(|| match &self.backend {
            Backend::Sqlite(conn) => {
                // A poisoned lock only means another handler panicked mid-call; SQLite's own
                // transactions keep the data consistent, so carry on.
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                let tx = conn
                    .transaction()
                    .map_err(|e| E::from(anyhow::Error::from(e)))?;
                Tx::new(Db::Sqlite(tx), self, now_micros).run(f)
            }
            Backend::Postgres(pg) => {
                let tx = pg.begin(true).map_err(E::from)?;
                Tx::new(Db::Postgres(Box::new(tx)), self, now_micros).run(f)
            }
        })
    }
}

impl Tx<'_> {
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Notes that the filter's cached decisions for `entry` (a key token, `customer:<id>` or
    /// `*`) are stale once this transaction commits.
    pub fn invalidate(&mut self, entry: impl Into<String>) {
        self.entries.push(entry.into());
    }

    pub fn invalidate_all<I: IntoIterator<Item = String>>(&mut self, entries: I) {
        self.entries.extend(entries);
    }

    pub fn invalidate_customer(&mut self, id: &str) {
        self.entries.push(format!("customer:{id}"));
    }

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
        let mut rows = Vec::with_capacity(tokens.len());
        for t in tokens {
            if let Some(r) = self.key(&t)? {
                rows.push(r);
            }
        }
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }

    /// All keys of a user (as of now).
    pub fn keys_of_user(&self, user_id: &str) -> Result<Vec<KeyRow>> {
        let tokens = self.tokens_of_user(user_id)?;
        let mut rows = Vec::with_capacity(tokens.len());
        for t in tokens {
            if let Some(r) = self.key(&t)? {
                rows.push(r);
            }
        }
        Ok(rows)
    }

    /// All keys of a team (as of now).
    pub fn keys_of_team(&self, team_id: &str) -> Result<Vec<KeyRow>> {
        let tokens = self.tokens_of_team(team_id)?;
        let mut rows = Vec::with_capacity(tokens.len());
        for t in tokens {
            if let Some(r) = self.key(&t)? {
                rows.push(r);
            }
        }
        Ok(rows)
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

    // ---- proxy ----

    pub fn proxy_budget(&self) -> Result<ProxyBudgetRow> {
        let mut row = get_proxy(&self.db)?;
        if proxy_lazy_reset(&mut row, &self.clock, self.now) {
            put_proxy(&self.db, &row)?;
        }
        Ok(row)
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
