//! [`Tx`]: one transaction over the store, for admin changes. What a change makes stale in the
//! filter is noted with [`Tx::invalidate`] and written to the change log in the same
//! transaction ([`Store::transact`]).

use super::pg::PgTx;
use super::sql::{Dialect, Exec, Row, Value};
use super::{blocking, changes, Backend, ResetClock, Store};
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
    /// `tollgate_fleet.on_lost_lease`.
    pub(super) lost_lease: crate::plugin_config::LostLeasePolicy,
    pub(super) now: i64,
    entries: Vec<String>,
}

/// A committed transaction's result and the change-log entries it recorded.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub entries: Vec<String>,
}

impl<'c> Tx<'c> {
    fn new(db: Db<'c>, store: &Store, now_micros: i64) -> Tx<'c> {
        Tx {
            db,
            clock: store.reset_clock(),
            default_end_user_budget: store.default_end_user_budget_id(),
            default_end_user_max_budget: store.default_end_user_max_budget(),
            lost_lease: store.lost_lease_policy(),
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
}
