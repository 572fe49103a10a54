//! The durable record: keys, users, end users, the proxy budget and spend logs in SQLite (WAL,
//! one transaction per change).
//!
//! Each entity is a JSON document (its LiteLLM fields) plus the columns it is looked up by, so
//! new LiteLLM fields need no migration.
//!
//! Money: spend is integer nano-dollars ([`NANOS_PER_USD`](crate::records::NANOS_PER_USD)). In the key, user and end-user
//! documents `spend_nanos` is authoritative and LiteLLM's `spend` (float USD, what the API shows)
//! is derived from it on every write; `spend_logs.spend_nanos` and `proxy_budget.spend_nanos` are
//! INTEGER columns. A document written before `spend_nanos` existed (`spend_nanos` 0, `spend` not)
//! takes its nanos from `spend` when loaded.
//!
//! Budget resets are lazy (DESIGN.md): whenever a budgeted entity is read for an answer or
//! charged, a `budget_reset_at` that has passed zeroes its spend and moves `budget_reset_at` to
//! the next aligned time ([`ResetClock`]), and that is persisted.

use crate::plugin_config::BudgetSettings;
use crate::time::{format_iso8601_utc, next_reset_at_str, parse_iso8601_utc};
use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;

mod budgets;
pub mod changes;
mod end_users;
mod keys;
pub mod leases;
mod metrics_snapshot;
mod orgs;
mod proxy;
mod users;
pub use metrics_snapshot::{BudgetSnapshot, BudgetedEntity, EntityKind};
mod pg;
mod pg_tls;
mod spend;
pub mod sql;
mod teams;
#[cfg(test)]
mod test_support;
mod tx;

pub use pg::{PgOptions, Unavailable};
use sql::{Dialect, Exec};

pub use budgets::BudgetRow;
pub use changes::ChangesSince;
pub use end_users::EndUserRow;
use end_users::{get_end_user, put_end_user};
use keys::{get_key, insert_key, put_key_doc};
pub use keys::{KeyQuery, KeyRow};
pub use orgs::{OrgMembershipRow, OrgRow};
use proxy::{get_proxy, proxy_lazy_reset, put_proxy};
pub use proxy::{ProxyBudgetRow, PROXY_BUDGET_ID};
pub use teams::{Member, MembershipRow, TeamRow};
pub use tx::{Committed, Tx};
pub use users::UserRow;
use users::{get_user, put_user_doc};

pub use crate::cost::{nanos_to_usd, usd_to_nanos};

/// Timezone and time of day that budget periods align to (`litellm_settings.timezone`,
/// `budget_reset_time`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetClock {
    pub timezone: std::sync::Arc<crate::time::ZoneOffsets>,
    pub reset_time_of_day_seconds: u32,
}

impl ResetClock {
    pub fn from_budget_settings(b: &BudgetSettings) -> Self {
        ResetClock {
            timezone: std::sync::Arc::new(b.timezone.clone()),
            reset_time_of_day_seconds: b.reset_time_of_day_seconds,
        }
    }

    /// LiteLLM's `budget_reset_at` for `duration` computed at `now`, unix microseconds.
    pub fn next_reset_micros(&self, duration: &str, now_micros: i64) -> i64 {
        next_reset_at_str(
            duration,
            now_micros.div_euclid(1_000_000),
            &self.timezone,
            self.reset_time_of_day_seconds,
        )
        .saturating_mul(1_000_000)
    }

    /// The same, as the ISO 8601 string the rows keep.
    pub fn next_reset_iso(&self, duration: &str, now_micros: i64) -> String {
        format_iso8601_utc(self.next_reset_micros(duration, now_micros))
    }

    /// What a lazy reset does to a budget with `duration` whose period ends at `reset_at`.
    fn due(&self, duration: Option<&str>, reset_at: Option<i64>, now_micros: i64) -> ResetAction {
        let Some(duration) = duration.filter(|d| !d.is_empty()) else {
            return ResetAction::Keep;
        };
        match reset_at {
            // A duration without a period end (a row from before resets existed): start one.
            None => ResetAction::Schedule(self.next_reset_micros(duration, now_micros)),
            Some(at) if at <= now_micros => {
                ResetAction::Reset(self.next_reset_micros(duration, now_micros))
            }
            Some(_) => ResetAction::Keep,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetAction {
    Keep,
    /// Set `budget_reset_at`, keep spend.
    Schedule(i64),
    /// Spend to 0, new `budget_reset_at`.
    Reset(i64),
}

/// A stored entity with a spend and, maybe, a budget period.
trait Budgeted {
    fn parts(&mut self) -> (&mut i64, &mut f64, Option<&str>, &mut Option<String>);

    /// Makes `spend_nanos` authoritative and `spend` its USD value (a legacy document with only
    /// `spend` gets its nanos from it).
    fn sync_spend(&mut self) {
        let (nanos, usd, _, _) = self.parts();
        if *nanos == 0 && *usd != 0.0 && usd.is_finite() {
            *nanos = usd_to_nanos(*usd);
        }
        *usd = nanos_to_usd(*nanos);
    }

    fn add_spend(&mut self, delta_nanos: i64) {
        let (nanos, usd, _, _) = self.parts();
        *nanos = nanos.saturating_add(delta_nanos);
        *usd = nanos_to_usd(*nanos);
    }

    /// Applies a due reset; true when the row changed.
    fn lazy_reset(&mut self, clock: &ResetClock, now_micros: i64) -> bool {
        let (nanos, usd, duration, reset_at) = self.parts();
        let at = reset_at.as_deref().and_then(parse_iso8601_utc);
        match clock.due(duration, at, now_micros) {
            ResetAction::Keep => false,
            ResetAction::Schedule(next) => {
                *reset_at = Some(format_iso8601_utc(next));
                true
            }
            ResetAction::Reset(next) => {
                *nanos = 0;
                *usd = 0.0;
                *reset_at = Some(format_iso8601_utc(next));
                true
            }
        }
    }
}

/// Adds `delta` nano-dollars to `model_spend[model]` (a JSON object of USD floats).
fn add_model_spend(model_spend: &mut Value, model: &str, delta: i64) {
    if !model_spend.is_object() {
        *model_spend = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(m) = model_spend {
        let before = m
            .get(model)
            .and_then(Value::as_f64)
            .map(usd_to_nanos)
            .unwrap_or(0);
        m.insert(
            model.to_string(),
            Value::from(nanos_to_usd(before.saturating_add(delta))),
        );
    }
}

/// Which key a spend-log query is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyFilter {
    #[default]
    Any,
    /// Calls made with this key token (sha256).
    Token(String),
    /// Calls made with the master key (no token).
    Master,
}

/// Filters for [`Store::spend_logs`]; all given filters must match.
#[derive(Debug, Clone, Default)]
pub struct SpendLogQuery {
    pub api_key: KeyFilter,
    pub user_id: Option<String>,
    pub request_id: Option<String>,
    /// `start_time >= start_micros`.
    pub start_micros: Option<i64>,
    /// `start_time < end_micros` (exclusive).
    pub end_micros: Option<i64>,
    pub limit: Option<u64>,
}

/// What [`Store::apply_spend_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendApplied {
    /// Events recorded and charged.
    pub applied: u64,
    /// Events already recorded (same `event_id`): ignored.
    pub duplicates: u64,
}

pub struct Store {
    backend: Backend,
    /// From config.yaml; a reload replaces them.
    settings: std::sync::RwLock<StoreSettings>,
}

/// Where the record is kept.
enum Backend {
    /// One file, one writer (the connection's mutex).
    Sqlite(Mutex<Connection>),
    /// A database shared by any number of sidecar replicas.
    Postgres(pg::PgStore),
}

/// Whether `url` names a PostgreSQL database (`postgresql://` or `postgres://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgresql://") || url.starts_with("postgres://")
}

/// Runs blocking store work without stalling the async runtime's other tasks: on a worker of
/// the multi-thread runtime it is moved off the worker ([`tokio::task::block_in_place`]);
/// elsewhere (a blocking thread, a current-thread test runtime, no runtime) it runs as is.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[derive(Debug, Clone, Default)]
struct StoreSettings {
    clock: ResetClock,
    /// `litellm_settings.max_end_user_budget_id`: the budget row of customers without their own.
    default_end_user_budget: Option<String>,
    /// `litellm_settings.max_end_user_budget`: the customers' default budget when no
    /// `max_end_user_budget_id` is set (LiteLLM 1.110.2 reads it and does nothing).
    default_end_user_max_budget: Option<f64>,
    /// `general_settings.tollgate_fleet.on_lost_lease`.
    lost_lease: crate::plugin_config::LostLeasePolicy,
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
CREATE TABLE IF NOT EXISTS end_users (
    user_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS proxy_budget (
    id TEXT PRIMARY KEY,
    spend_nanos INTEGER NOT NULL DEFAULT 0,
    budget_duration TEXT,
    budget_reset_at INTEGER
);
CREATE TABLE IF NOT EXISTS spend_logs (
    event_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    client_request_id TEXT,
    api_key TEXT,
    user_id TEXT,
    team_id TEXT,
    end_user TEXT,
    model TEXT NOT NULL,
    model_id TEXT NOT NULL,
    spend_nanos INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    status TEXT NOT NULL,
    call_type TEXT NOT NULL,
    start_time INTEGER NOT NULL,
    end_time INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_logs_key ON spend_logs(api_key, start_time);
CREATE INDEX IF NOT EXISTS spend_logs_user ON spend_logs(user_id, start_time);
CREATE INDEX IF NOT EXISTS spend_logs_start ON spend_logs(start_time);
CREATE INDEX IF NOT EXISTS spend_logs_request ON spend_logs(request_id);
";

/// The spend-log columns kept from the first schema (keyed by the client's `x-request-id`).
const SPEND_LOG_V1_COLUMNS: &str = "api_key, user_id, team_id, end_user, model, model_id,
    spend_nanos, prompt_tokens, completion_tokens, total_tokens, cached_tokens, estimated,
    status, call_type, start_time, end_time, doc";

/// Moves a first-schema `spend_logs` (primary key `request_id`, the client's `x-request-id`)
/// to the current one, in one transaction: each row keeps its `request_id`, which also becomes
/// its `client_request_id`, and gets the event id `v1:<request_id>` (no filter mints that form).
/// Nothing to do on a new or already migrated database.
fn migrate_spend_logs(conn: &mut Connection) -> Result<()> {
    let has_event_id: Option<i64> = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('spend_logs') WHERE name = 'event_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let exists: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'spend_logs'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 || has_event_id.unwrap_or(0) > 0 {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "ALTER TABLE spend_logs RENAME TO spend_logs_v1;
         DROP INDEX IF EXISTS spend_logs_key;
         DROP INDEX IF EXISTS spend_logs_user;
         DROP INDEX IF EXISTS spend_logs_start;",
    )?;
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(&format!(
        "INSERT INTO spend_logs (event_id, request_id, client_request_id, {SPEND_LOG_V1_COLUMNS})
         SELECT 'v1:' || request_id, request_id, request_id, {SPEND_LOG_V1_COLUMNS}
         FROM spend_logs_v1;
         DROP TABLE spend_logs_v1;"
    ))?;
    tx.commit()?;
    Ok(())
}

fn to_doc<T: Serialize>(row: &T) -> Result<String> {
    Ok(serde_json::to_string(row)?)
}

fn from_doc<T: for<'de> Deserialize<'de>>(doc: &str) -> Result<T> {
    Ok(serde_json::from_str(doc)?)
}

fn load_budgeted<T: for<'de> Deserialize<'de> + Budgeted>(doc: &str) -> Result<T> {
    let mut row: T = from_doc(doc)?;
    row.sync_spend();
    Ok(row)
}

fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn sql_u64_back(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path`; `:memory:` for tests. Budgets align
    /// to UTC midnight until [`Store::with_reset_clock`] says otherwise.
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
        let mut conn = conn;
        migrate_spend_logs(&mut conn)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(budgets::SCHEMA)?;
        conn.execute_batch(teams::SCHEMA)?;
        conn.execute_batch(orgs::SCHEMA)?;
        conn.execute_batch(changes::SCHEMA)?;
        conn.execute_batch(leases::SCHEMA)?;
        leases::migrate_sqlite(&conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store::with_backend(Backend::Sqlite(Mutex::new(conn))))
    }

    /// Connects to PostgreSQL at `url` (`postgresql://…`) and creates or migrates Tollgate's
    /// schema `tollgate` there.
    pub fn open_postgres(url: &str, options: &PgOptions) -> Result<Store> {
        // Connecting blocks on the store's own runtime: off the async workers.
        let pg = blocking(|| pg::PgStore::open(url, options))?;
        Ok(Store::with_backend(Backend::Postgres(pg)))
    }

    /// PostgreSQL when `database_url` is a `postgresql://` URL, else the SQLite file in
    /// `data_dir`.
    pub fn open_configured(
        database_url: Option<&str>,
        data_dir: &Path,
        options: &PgOptions,
    ) -> Result<Store> {
        match database_url.filter(|u| !u.trim().is_empty()) {
            Some(url) if is_postgres_url(url) => Store::open_postgres(url, options),
            Some(url) => Err(anyhow::anyhow!(
                "database_url must be a postgresql:// URL (got `{}…`); without it the store is {}",
                url.chars().take(12).collect::<String>(),
                data_dir.join("tollgate.db").display()
            )),
            None => Store::open(&data_dir.join("tollgate.db")),
        }
    }

    fn with_backend(backend: Backend) -> Store {
        Store {
            backend,
            settings: Default::default(),
        }
    }

    /// Which SQL this store speaks.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The budget row (`litellm_settings.max_end_user_budget_id`) of customers without their own.
    pub fn with_default_end_user_budget(self, budget_id: Option<String>) -> Store {
        self.settings_mut().default_end_user_budget = budget_id.filter(|b| !b.is_empty());
        self
    }

    /// `litellm_settings.max_end_user_budget`, the default used without a budget id.
    pub fn with_default_end_user_max_budget(self, max_budget: Option<f64>) -> Store {
        self.settings_mut().default_end_user_max_budget = max_budget;
        self
    }

    /// The timezone and time of day budget periods align to.
    pub fn with_reset_clock(self, clock: ResetClock) -> Store {
        self.settings_mut().clock = clock;
        self
    }

    /// What a dead Envoy's budget leases are charged (fleet mode).
    pub fn with_lost_lease_policy(self, policy: crate::plugin_config::LostLeasePolicy) -> Store {
        self.settings_mut().lost_lease = policy;
        self
    }

    /// A reloaded config.yaml's settings, in force from the next call on.
    pub fn reconfigure(
        &self,
        clock: ResetClock,
        default_end_user_budget: Option<String>,
        default_end_user_max_budget: Option<f64>,
        lost_lease: crate::plugin_config::LostLeasePolicy,
    ) {
        let mut s = self.settings_mut();
        s.clock = clock;
        s.default_end_user_budget = default_end_user_budget.filter(|b| !b.is_empty());
        s.default_end_user_max_budget = default_end_user_max_budget;
        s.lost_lease = lost_lease;
    }

    fn settings_mut(&self) -> std::sync::RwLockWriteGuard<'_, StoreSettings> {
        // Plain values: a poisoned lock holds nothing half-written that matters.
        self.settings.write().unwrap_or_else(|e| e.into_inner())
    }

    fn settings(&self) -> StoreSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reset_clock(&self) -> ResetClock {
        self.settings().clock
    }

    pub fn default_end_user_budget_id(&self) -> Option<String> {
        self.settings().default_end_user_budget
    }

    pub fn default_end_user_max_budget(&self) -> Option<f64> {
        self.settings().default_end_user_max_budget
    }

    pub fn lost_lease_policy(&self) -> crate::plugin_config::LostLeasePolicy {
        self.settings().lost_lease
    }

    /// Records that every cached decision is stale (a reload changed what records carry).
    pub fn record_change_all(&self, now_micros: i64) -> Result<()> {
        self.transact(now_micros, |tx| {
            tx.invalidate(changes::ALL);
            anyhow::Ok(())
        })?;
        Ok(())
    }

    /// Runs `f` over a read-only view (no lock beyond the backend's own consistency).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&dyn Exec) -> Result<T>) -> Result<T> {
        blocking(|| match &self.backend {
            Backend::Sqlite(conn) => {
                // A poisoned lock only means another handler panicked mid-call; SQLite's own
                // transactions keep the data consistent, so carry on.
                let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                f(&*conn)
            }
            Backend::Postgres(pg) => {
                let tx = pg.begin(false)?;
                let value = f(&tx)?;
                tx.commit()?;
                Ok(value)
            }
        })
    }

    pub fn ping(&self) -> Result<()> {
        self.read(|db| db.row("SELECT 1", &[]).map(|_| ()))
    }

    /// The stored key, as it is (no reset applied): for authentication.
    pub fn key(&self, token: &str) -> Result<Option<KeyRow>> {
        self.read(|db| get_key(db, token))
    }

    /// The stored user, as it is (no reset applied).
    pub fn user(&self, user_id: &str) -> Result<Option<UserRow>> {
        self.read(|db| get_user(db, user_id))
    }

    /// Sets the proxy budget's period from the config (at startup), keeping its spend. A changed
    /// (or first) duration starts a new aligned period end; no duration means no resets.
    pub fn configure_proxy_budget(
        &self,
        budget_duration: Option<&str>,
        now_micros: i64,
    ) -> Result<ProxyBudgetRow> {
        let clock = self.reset_clock();
        self.write(now_micros, |tx| {
            let mut row = get_proxy(&tx.db)?;
            let duration = budget_duration
                .filter(|d| !d.is_empty())
                .map(str::to_string);
            if row.budget_duration != duration {
                row.budget_reset_at_micros = duration
                    .as_deref()
                    .map(|d| clock.next_reset_micros(d, now_micros));
                row.budget_duration = duration;
            }
            proxy_lazy_reset(&mut row, &clock, now_micros);
            put_proxy(&tx.db, &row)?;
            Ok(row)
        })
    }

    /// The proxy budget row as of `now` (a due reset applied and persisted).
    pub fn proxy_budget_at(&self, now_micros: i64) -> Result<ProxyBudgetRow> {
        self.write(now_micros, |tx| tx.proxy_budget())
    }

    /// One transaction that records no change-log entries.
    fn write<T>(&self, now_micros: i64, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        Ok(self.transact(now_micros, f)?.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{SpendBatch, SpendEvent};

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

    const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

    fn mem() -> Store {
        Store::open(Path::new(":memory:")).unwrap()
    }

    fn ev(id: &str, key: Option<&str>, user: Option<&str>, nanos: i64) -> SpendEvent {
        SpendEvent {
            event_id: id.into(),
            request_id: id.into(),
            api_key: key.map(str::to_string),
            user_id: user.map(str::to_string),
            model: "gpt-4o".into(),
            model_id: "d1".into(),
            spend_nanos: nanos,
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            status: "success".into(),
            call_type: "acompletion".into(),
            start_time_micros: T0,
            end_time_micros: T0 + 1000,
            ..Default::default()
        }
    }

    fn seed(store: &Store) {
        store
            .insert_user_with_key(
                &UserRow {
                    user_id: "u1".into(),
                    ..Default::default()
                },
                Some(&KeyRow {
                    token: "k1".into(),
                    user_id: Some("u1".into()),
                    ..Default::default()
                }),
            )
            .unwrap();
        store
            .insert_key(&KeyRow {
                token: "k2".into(),
                user_id: Some("u1".into()),
                team_id: Some("t1".into()),
                ..Default::default()
            })
            .unwrap();
    }

    #[test]
    fn spend_batch_is_idempotent_and_charges_every_level() {
        let store = mem();
        seed(&store);
        let mut e3 = ev("r3", None, None, 7);
        e3.end_user = Some("cust".into());
        let mut e4 = ev("r4", Some("k1"), Some("u1"), 1_000_000_000);
        e4.model = "gpt-4o-mini".into();
        e4.end_user = Some("cust".into());
        let batch = SpendBatch {
            events: vec![
                ev("r1", Some("k1"), Some("u1"), 100),
                ev("r2", Some("k2"), Some("u1"), 20),
                e3,
                e4,
                // The same request twice in one batch counts once.
                ev("r1", Some("k1"), Some("u1"), 100),
                // Unknown key and user: logged and counted for the proxy only.
                ev("r5", Some("gone"), Some("nobody"), 3),
            ],
        };
        let first = store.apply_spend_batch(&batch, T0).unwrap();
        assert_eq!(
            first,
            SpendApplied {
                applied: 5,
                duplicates: 1
            }
        );
        let check = |store: &Store| {
            let k1 = store.key("k1").unwrap().unwrap();
            assert_eq!(k1.spend_nanos, 1_000_000_100);
            assert_eq!(k1.spend, 1.0000001);
            assert_eq!(k1.model_spend["gpt-4o"].as_f64(), Some(1e-7));
            assert_eq!(k1.model_spend["gpt-4o-mini"].as_f64(), Some(1.0));
            assert_eq!(store.key("k2").unwrap().unwrap().spend_nanos, 20);
            // The user pays for its team key too.
            assert_eq!(
                store.user("u1").unwrap().unwrap().spend_nanos,
                1_000_000_120
            );
            let cust = store.end_user_at("cust", T0).unwrap().unwrap();
            assert_eq!(cust.spend_nanos, 1_000_000_007);
            assert!(!cust.blocked);
            assert_eq!(
                store.proxy_budget_at(T0).unwrap().spend_nanos,
                1_000_000_130
            );
            assert!(store.user("nobody").unwrap().is_none());
            assert_eq!(
                store.spend_logs(&SpendLogQuery::default()).unwrap().len(),
                5
            );
        };
        check(&store);
        let again = store.apply_spend_batch(&batch, T0 + 5).unwrap();
        assert_eq!(
            again,
            SpendApplied {
                applied: 0,
                duplicates: 6
            }
        );
        check(&store);
    }

    #[test]
    fn lazy_reset_zeroes_spend_after_the_period() {
        let store = mem();
        store
            .insert_user_with_key(
                &UserRow {
                    user_id: "u1".into(),
                    budget_duration: Some("1s".into()),
                    budget_reset_at: Some(format_iso8601_utc(T0 + 1_000_000)),
                    ..Default::default()
                },
                Some(&KeyRow {
                    token: "k1".into(),
                    user_id: Some("u1".into()),
                    budget_duration: Some("1s".into()),
                    budget_reset_at: Some(format_iso8601_utc(T0 + 1_000_000)),
                    ..Default::default()
                }),
            )
            .unwrap();
        store.configure_proxy_budget(Some("1s"), T0).unwrap();
        let batch = |id: &str| SpendBatch {
            events: vec![ev(id, Some("k1"), Some("u1"), 500)],
        };
        store.apply_spend_batch(&batch("a"), T0 + 100).unwrap();
        store.apply_spend_batch(&batch("b"), T0 + 200).unwrap();
        assert_eq!(
            store.key_at("k1", T0 + 300).unwrap().unwrap().spend_nanos,
            1000
        );
        assert_eq!(store.proxy_budget_at(T0 + 300).unwrap().spend_nanos, 1000);
        // The period ended at T0+1s: a charge after it starts from 0.
        store
            .apply_spend_batch(&batch("c"), T0 + 1_000_000)
            .unwrap();
        let k = store.key("k1").unwrap().unwrap();
        assert_eq!(k.spend_nanos, 500);
        assert_eq!(k.budget_reset_at_micros(), Some(T0 + 2_000_000));
        assert_eq!(store.user("u1").unwrap().unwrap().spend_nanos, 500);
        let p = store.proxy_budget_at(T0 + 1_500_000).unwrap();
        assert_eq!(
            (p.spend_nanos, p.budget_reset_at_micros),
            (500, Some(T0 + 2_000_000))
        );
        // A read after the next period end reports 0 with no event, and persists it.
        let k = store.key_at("k1", T0 + 2_500_000).unwrap().unwrap();
        assert_eq!(k.spend_nanos, 0);
        assert_eq!(k.spend, 0.0);
        assert_eq!(k.budget_reset_at_micros(), Some(T0 + 3_000_000));
        assert_eq!(store.key("k1").unwrap().unwrap().spend_nanos, 0);
        let u = store.user_at("u1", T0 + 2_500_000).unwrap().unwrap();
        assert_eq!(u.spend_nanos, 0);
        assert_eq!(
            store.keys_of_user_at("u1", T0 + 2_500_000).unwrap()[0].spend,
            0.0
        );
        assert_eq!(
            store.proxy_budget_at(T0 + 2_500_000).unwrap().spend_nanos,
            0
        );
        // Model spend is history, not a budget: it is not reset.
        assert_eq!(k.model_spend["gpt-4o"].as_f64(), Some(1.5e-6));
    }

    #[test]
    fn proxy_budget_configuration_keeps_spend() {
        let store = mem();
        let p = store.configure_proxy_budget(None, T0).unwrap();
        assert_eq!(p, ProxyBudgetRow::default());
        store
            .apply_spend_batch(
                &SpendBatch {
                    events: vec![ev("x", None, None, 42)],
                },
                T0,
            )
            .unwrap();
        // 2026-01-01 is a Thursday: `7d` resets next Monday.
        let p = store.configure_proxy_budget(Some("7d"), T0 + 10).unwrap();
        assert_eq!(p.spend_nanos, 42);
        assert_eq!(p.budget_reset_at_micros, Some(T0 + 4 * 86_400_000_000));
        // Same duration again (a restart): the period end stays.
        let again = store
            .configure_proxy_budget(Some("7d"), T0 + 3_600_000_000)
            .unwrap();
        assert_eq!(again, p);
        assert_eq!(p.state(Some(5.0)).spend_nanos, 42);
    }

    #[test]
    fn legacy_float_spend_is_taken_over() {
        let store = mem();
        store
            .insert_key(&KeyRow {
                token: "k".into(),
                spend: 2.5,
                ..Default::default()
            })
            .unwrap();
        let k = store.key("k").unwrap().unwrap();
        assert_eq!((k.spend_nanos, k.spend), (2_500_000_000, 2.5));
    }

    #[test]
    fn spend_logs_filter_and_order() {
        let store = mem();
        let mut events = Vec::new();
        for i in 0..5i64 {
            let mut e = ev(
                &format!("r{i}"),
                Some(if i % 2 == 0 { "ka" } else { "kb" }),
                None,
                i,
            );
            e.start_time_micros = T0 + i * 86_400_000_000;
            e.user_id = Some(format!("u{}", i % 3));
            events.push(e);
        }
        events.push(ev("m", None, None, 1));
        store.apply_spend_batch(&SpendBatch { events }, T0).unwrap();
        let ids = |q: SpendLogQuery| -> Vec<String> {
            store
                .spend_logs(&q)
                .unwrap()
                .into_iter()
                .map(|e| e.request_id)
                .collect()
        };
        assert_eq!(
            ids(SpendLogQuery {
                api_key: KeyFilter::Token("ka".into()),
                ..Default::default()
            }),
            ["r4", "r2", "r0"]
        );
        assert_eq!(
            ids(SpendLogQuery {
                api_key: KeyFilter::Master,
                ..Default::default()
            }),
            ["m"]
        );
        assert_eq!(
            ids(SpendLogQuery {
                start_micros: Some(T0 + 86_400_000_000),
                end_micros: Some(T0 + 3 * 86_400_000_000),
                ..Default::default()
            }),
            ["r2", "r1"]
        );
        assert_eq!(
            ids(SpendLogQuery {
                user_id: Some("u1".into()),
                api_key: KeyFilter::Token("kb".into()),
                ..Default::default()
            }),
            ["r1"]
        );
        assert_eq!(
            ids(SpendLogQuery {
                request_id: Some("r3".into()),
                ..Default::default()
            }),
            ["r3"]
        );
        let r3 = &store
            .spend_logs(&SpendLogQuery {
                request_id: Some("r3".into()),
                ..Default::default()
            })
            .unwrap()[0];
        assert_eq!(
            (r3.spend_nanos, r3.total_tokens, r3.model_id.as_str()),
            (3, 15, "d1")
        );
    }

    #[test]
    fn empty_request_ids_still_dedupe() {
        let store = mem();
        let b = SpendBatch {
            events: vec![ev("", None, None, 5)],
        };
        assert_eq!(store.apply_spend_batch(&b, T0).unwrap().applied, 1);
        assert_eq!(store.apply_spend_batch(&b, T0).unwrap().duplicates, 1);
        assert_eq!(store.proxy_budget_at(T0).unwrap().spend_nanos, 5);
    }

    /// The client's `x-request-id` (and the response id) are plain fields: three calls sharing
    /// them are three charges; only a replayed event id is a duplicate.
    #[test]
    fn only_the_event_id_dedupes() {
        let store = mem();
        seed(&store);
        let events: Vec<SpendEvent> = (0..3)
            .map(|i| SpendEvent {
                event_id: format!("tg-x-{i}"),
                request_id: "chatcmpl-same".into(),
                client_request_id: Some("same".into()),
                ..ev("", Some("k1"), None, 7)
            })
            .collect();
        let b = SpendBatch { events };
        assert_eq!(store.apply_spend_batch(&b, T0).unwrap().applied, 3);
        let replay = store.apply_spend_batch(&b, T0).unwrap();
        assert_eq!((replay.applied, replay.duplicates), (0, 3));
        assert_eq!(store.key("k1").unwrap().unwrap().spend_nanos, 21);
        let rows = store
            .spend_logs(&SpendLogQuery {
                request_id: Some("chatcmpl-same".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows
            .iter()
            .all(|r| r.client_request_id.as_deref() == Some("same")));
        // An event without a response id is listed under its event id.
        let lone = SpendEvent {
            event_id: "tg-x-9".into(),
            request_id: String::new(),
            ..ev("", None, None, 1)
        };
        store
            .apply_spend_batch(&SpendBatch { events: vec![lone] }, T0)
            .unwrap();
        let rows = store
            .spend_logs(&SpendLogQuery {
                request_id: Some("tg-x-9".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
    }

    /// A database made by the first schema (keyed by the client's `x-request-id`) opens with
    /// its rows kept, and then charges calls that reuse an old `x-request-id`.
    #[test]
    fn first_schema_spend_logs_are_migrated() {
        let dir = std::env::temp_dir().join(format!("tollgate-migrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v1.db");
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE spend_logs (
                    request_id TEXT PRIMARY KEY, api_key TEXT, user_id TEXT, team_id TEXT,
                    end_user TEXT, model TEXT NOT NULL, model_id TEXT NOT NULL,
                    spend_nanos INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
                    completion_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
                    cached_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL,
                    status TEXT NOT NULL, call_type TEXT NOT NULL, start_time INTEGER NOT NULL,
                    end_time INTEGER NOT NULL, doc TEXT NOT NULL);
                 CREATE INDEX spend_logs_key ON spend_logs(api_key, start_time);
                 CREATE INDEX spend_logs_user ON spend_logs(user_id, start_time);
                 CREATE INDEX spend_logs_start ON spend_logs(start_time);
                 INSERT INTO spend_logs VALUES ('client-id', 'k1', NULL, NULL, NULL, 'gpt-4o',
                    'd1', 9, 1, 2, 3, 0, 0, 'success', 'acompletion', 5, 6,
                    '{\"key_alias\":\"a\"}');",
            )
            .unwrap();
        }
        for _ in 0..2 {
            // Twice: a migrated database opens as is.
            let store = Store::open(&path).unwrap();
            let rows = store.spend_logs(&SpendLogQuery::default()).unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].request_id, "client-id");
            assert_eq!(rows[0].event_id, "v1:client-id");
            assert_eq!(rows[0].client_request_id.as_deref(), Some("client-id"));
            assert_eq!(rows[0].key_alias.as_deref(), Some("a"));
            assert_eq!((rows[0].spend_nanos, rows[0].total_tokens), (9, 3));
        }
        let store = Store::open(&path).unwrap();
        let e = SpendEvent {
            event_id: "tg-new-1".into(),
            client_request_id: Some("client-id".into()),
            ..ev("client-id", None, None, 4)
        };
        let applied = store
            .apply_spend_batch(&SpendBatch { events: vec![e] }, T0)
            .unwrap();
        assert_eq!(applied.applied, 1);
        assert_eq!(
            store.spend_logs(&SpendLogQuery::default()).unwrap().len(),
            2
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn thousand_event_batch_is_fast() {
        let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
        let path = dir.join("bench.db");
        let _ = std::fs::remove_file(&path);
        let store = Store::open(&path).unwrap();
        seed(&store);
        let events: Vec<SpendEvent> = (0..1000)
            .map(|i| {
                let mut e = ev(
                    &format!("req-{i}"),
                    Some(if i % 2 == 0 { "k1" } else { "k2" }),
                    Some("u1"),
                    1_000,
                );
                e.end_user = Some(format!("cust-{}", i % 10));
                e
            })
            .collect();
        let batch = SpendBatch { events };
        let started = std::time::Instant::now();
        let r = store.apply_spend_batch(&batch, T0).unwrap();
        let first = started.elapsed();
        let started = std::time::Instant::now();
        let again = store.apply_spend_batch(&batch, T0).unwrap();
        let second = started.elapsed();
        println!("1000-event spend batch (file-backed, WAL, synchronous=FULL): {first:?} applied, {second:?} as duplicates");
        assert_eq!(r.applied, 1000);
        assert_eq!(again.duplicates, 1000);
        assert_eq!(store.user("u1").unwrap().unwrap().spend_nanos, 1_000_000);
        assert_eq!(store.key("k1").unwrap().unwrap().spend_nanos, 500_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
