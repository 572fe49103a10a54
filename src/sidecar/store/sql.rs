//! The SQL the store runs, written once for both backends: values and rows as plain data,
//! `?N` placeholders (rewritten to `$N` for PostgreSQL), and the few spellings that differ
//! between SQLite and PostgreSQL behind [`Dialect`].

use anyhow::{anyhow, Result};

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&i64> for Value {
    fn from(v: &i64) -> Self {
        Value::Int(*v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}
impl From<&bool> for Value {
    fn from(v: &bool) -> Self {
        Value::Int(i64::from(*v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        v.map_or(Value::Null, Value::Text)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        v.as_ref().map_or(Value::Null, Value::from)
    }
}
impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Value::Null, Value::from)
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Value::Null, Value::Int)
    }
}
impl From<&Option<i64>> for Value {
    fn from(v: &Option<i64>) -> Self {
        Value::from(*v)
    }
}

/// `args![a, b]`: a slice of [`Value`]s.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::sidecar::store::sql::Value::from($v)),*][..] };
}
pub(crate) use args;

/// One result row.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or_else(|| anyhow!("no column {i}"))
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| anyhow!("column {i} is NULL"))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            Value::Int(n) => Ok(Some(n.to_string())),
            Value::Real(f) => Ok(Some(f.to_string())),
        }
    }

    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?
            .ok_or_else(|| anyhow!("column {i} is NULL"))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(*n)),
            other => Err(anyhow!("column {i} is not an integer: {other:?}")),
        }
    }

    pub fn bool(&self, i: usize) -> Result<bool> {
        Ok(self.int(i)? != 0)
    }
}

/// Which SQL the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A string field (a dotted path) of the JSON document column `doc`.
    pub fn doc_field(self, path: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract(doc, '$.{path}')"),
            Dialect::Postgres => format!("(doc::jsonb #>> '{{{}}}')", path.replace('.', ",")),
        }
    }

    /// The statement in this dialect's placeholders (`?N` → `$N` for PostgreSQL).
    pub fn placeholders(self, sql: &str) -> std::borrow::Cow<'_, str> {
        match self {
            Dialect::Sqlite => sql.into(),
            Dialect::Postgres => sql.replace('?', "$").into(),
        }
    }
}

/// What runs statements inside one transaction (SQLite or PostgreSQL).
pub trait Exec {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; the number of rows it changed.
    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64>;
    /// Runs a query; every row.
    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>>;
    /// Runs statements without parameters (schema).
    fn batch(&self, sql: &str) -> Result<()>;

    /// The first row, if any.
    fn row(&self, sql: &str, args: &[Value]) -> Result<Option<Row>> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// The first column of every row, as text.
    fn strings(&self, sql: &str, args: &[Value]) -> Result<Vec<String>> {
        self.rows(sql, args)?.iter().map(|r| r.text(0)).collect()
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

impl Exec for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(&self, sql: &str, args: &[Value]) -> Result<u64> {
        let n = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args.iter()))?;
        Ok(n as u64)
    }

    fn rows(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.prepare_cached(sql)?;
        let width = stmt.column_count();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                (0..width)
                    .map(|i| r.get_ref(i).map(sqlite_value))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(Row)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.execute_batch(sql)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_dialect() {
        let sql = "SELECT doc FROM keys WHERE token = ?1 AND user_id = ?2";
        assert_eq!(Dialect::Sqlite.placeholders(sql), sql);
        assert_eq!(
            Dialect::Postgres.placeholders(sql),
            "SELECT doc FROM keys WHERE token = $1 AND user_id = $2"
        );
    }

    #[test]
    fn doc_fields_follow_the_dialect() {
        assert_eq!(
            Dialect::Sqlite.doc_field("metadata.team_member_budget_id"),
            "json_extract(doc, '$.metadata.team_member_budget_id')"
        );
        assert_eq!(
            Dialect::Postgres.doc_field("metadata.team_member_budget_id"),
            "(doc::jsonb #>> '{metadata,team_member_budget_id}')"
        );
    }

    #[test]
    fn sqlite_rows_come_back_as_values() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.batch("CREATE TABLE t (a INTEGER, b TEXT, c REAL)")
            .unwrap();
        let none: Option<String> = None;
        assert_eq!(
            conn.exec(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                args![7i64, none, Value::Real(1.5)]
            )
            .unwrap(),
            1
        );
        let row = conn.row("SELECT a, b, c FROM t", &[]).unwrap().unwrap();
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.opt_text(1).unwrap(), None);
        assert_eq!(row.0[2], Value::Real(1.5));
        assert!(conn
            .row("SELECT a FROM t WHERE a = ?1", args![8i64])
            .unwrap()
            .is_none());
    }
}
