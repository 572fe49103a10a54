//! The change log: which cached decisions in the filter a committed change made stale. Entries
//! are key token hashes, `customer:<id>`, or `*` (everything). The filter polls
//! [`Store::changes_since`] and tombstones what it lists, so a change reaches every Envoy even
//! when the admin call went through another one.

use super::pg::CHANGES_CHANNEL;
use super::sql::{args, Dialect, Exec};
use super::Store;
use anyhow::Result;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entry TEXT NOT NULL,
    at INTEGER NOT NULL
);
";

/// Everything is stale (too many entries, or the log no longer reaches back far enough).
pub const ALL: &str = "*";
/// Most entries one change records individually; more become one `*`.
pub const MAX_ENTRIES_PER_CHANGE: usize = 10_000;
/// Most entries one answer of [`Store::changes_since`] lists; more become one `*`.
pub const MAX_ENTRIES_PER_ANSWER: i64 = 10_000;
/// Entries kept; older ones are pruned (a poll from before them gets `*`).
pub const KEEP_ENTRIES: i64 = 100_000;

/// Appends one change's entries (deduplicated, in order) to the log, in the caller's
/// transaction, and prunes the oldest beyond [`KEEP_ENTRIES`].
///
/// On PostgreSQL the sequence numbers come from a one-row counter updated in this
/// transaction: the write lock orders the transactions, so seqs appear in commit order and a
/// poller never skips one (a sequence could commit out of order). Replicas hear of the change
/// on the `tollgate_changes` channel.
pub(super) fn record(db: &dyn Exec, entries: &[String], now_micros: i64) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let all = [ALL.to_string()];
    let entries = if entries.len() > MAX_ENTRIES_PER_CHANGE || entries.iter().any(|e| e == ALL) {
        &all[..]
    } else {
        entries
    };
    let last = match db.dialect() {
        Dialect::Sqlite => {
            for e in entries {
                db.exec(
                    "INSERT INTO changes (entry, at) VALUES (?1, ?2)",
                    args![e, now_micros],
                )?;
            }
            latest_seq(db)?
        }
        Dialect::Postgres => {
            let n = entries.len() as i64;
            let last = db
                .row(
                    "UPDATE change_counter SET seq = seq + ?1 WHERE id = 1 RETURNING seq",
                    args![n],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            for (i, e) in entries.iter().enumerate() {
                db.exec(
                    "INSERT INTO changes (seq, entry, at) VALUES (?1, ?2, ?3)",
                    args![last - n + 1 + i as i64, e, now_micros],
                )?;
            }
            db.exec(
                "SELECT pg_notify(?1, ?2)",
                args![CHANGES_CHANNEL, last.to_string()],
            )?;
            last
        }
    };
    if last % 1000 < entries.len() as i64 {
        db.exec(
            "DELETE FROM changes WHERE seq <= ?1",
            args![last.saturating_sub(KEEP_ENTRIES)],
        )?;
    }
    Ok(())
}

/// What changed after `since`: the latest sequence number and the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangesSince {
    pub seq: i64,
    pub entries: Vec<String>,
}

/// The last sequence number the change log has handed out (0: none yet).
pub(super) fn latest_seq(db: &dyn Exec) -> Result<i64> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "SELECT seq FROM sqlite_sequence WHERE name = 'changes'",
        Dialect::Postgres => "SELECT seq FROM change_counter WHERE id = 1",
    };
    Ok(db
        .row(sql, &[])?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
}

impl super::Tx<'_> {
    /// The change-log position this transaction reads at: a record read here reflects every
    /// change up to it.
    pub fn change_seq(&self) -> Result<i64> {
        latest_seq(&self.db)
    }
}

impl Store {
    /// The entries recorded after `since` (deduplicated, oldest first), or `*` when there are
    /// more than [`MAX_ENTRIES_PER_ANSWER`], when some were already pruned, or when `since` is
    /// ahead of the log (a store that was replaced). Without `since`: only the latest seq.
    pub fn changes_since(&self, since: Option<i64>) -> Result<ChangesSince> {
        self.read(|db| changes_since(db, since))
    }
}

fn changes_since(conn: &dyn Exec, since: Option<i64>) -> Result<ChangesSince> {
    {
        let latest = latest_seq(conn)?;
        let all = |seq| ChangesSince {
            seq,
            entries: vec![ALL.to_string()],
        };
        let Some(since) = since else {
            return Ok(ChangesSince {
                seq: latest,
                entries: Vec::new(),
            });
        };
        if since == latest {
            return Ok(ChangesSince {
                seq: latest,
                entries: Vec::new(),
            });
        }
        if since > latest || since < 0 {
            return Ok(all(latest));
        }
        let oldest = conn
            .row("SELECT MIN(seq) FROM changes", &[])?
            .map(|r| r.opt_int(0))
            .transpose()?
            .flatten();
        match oldest {
            Some(o) if o <= since.saturating_add(1) => {}
            _ => return Ok(all(latest)),
        }
        let count = conn
            .row("SELECT COUNT(*) FROM changes WHERE seq > ?1", args![since])?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0);
        if count > MAX_ENTRIES_PER_ANSWER {
            return Ok(all(latest));
        }
        let rows = conn.strings(
            "SELECT entry FROM changes WHERE seq > ?1 ORDER BY seq",
            args![since],
        )?;
        let mut entries: Vec<String> = Vec::with_capacity(rows.len());
        let mut seen = std::collections::HashSet::new();
        for e in rows {
            if e == ALL {
                return Ok(all(latest));
            }
            if seen.insert(e.clone()) {
                entries.push(e);
            }
        }
        Ok(ChangesSince {
            seq: latest,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_from_before_the_pruned_entries_gets_star() {
        let store = Store::open(std::path::Path::new(":memory:")).unwrap();
        let entries: Vec<String> = (1..=5).map(|i| format!("k{i}")).collect();
        store
            .transact(0, |tx| {
                record(&tx.db, &entries, 0)?;
                tx.db.exec("DELETE FROM changes WHERE seq <= 2", &[])?;
                anyhow::Ok(())
            })
            .unwrap();
        assert_eq!(store.changes_since(Some(1)).unwrap().entries, vec![ALL]);
        assert_eq!(
            store.changes_since(Some(2)).unwrap().entries,
            vec!["k3", "k4", "k5"]
        );
        assert_eq!(store.changes_since(None).unwrap().seq, 5);
        // Duplicates are listed once.
        store
            .transact(0, |tx| record(&tx.db, &["k3".to_string()], 0))
            .unwrap();
        assert_eq!(
            store.changes_since(Some(2)).unwrap().entries,
            vec!["k3", "k4", "k5"]
        );
    }
}
