//! The SQL connection shared by the audit log and the gateway's state store.
//!
//! Both stores run on SQLite (embedded) and PostgreSQL (distributed), chosen by URL. They use
//! sqlx's `Any` driver with SQL written to run unchanged on both (`$n` placeholders, `BIGINT`
//! timestamps in microseconds, blobs as bytes); where the dialects differ, the code asks
//! [`Db::backend`]. Long parameter lists (multi-row inserts, batched lookups) are written by
//! [`placeholders`] and [`value_rows`], anonymous on SQLite.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::{Error, Result};

/// Which SQL database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// When a commit copies the write-ahead log back into the database (a checkpoint): once the
/// log holds 8192 pages (32 MiB), where SQLite's default is 1000. The document loader
/// commits batches of thousands of documents, each past 1000 pages by itself, so every one
/// of its commits was followed by a checkpoint, writing the pages of the subject index it
/// had just changed all over again. Set on every connection to every SQLite file Warden
/// keeps (state, audit log, vault, documents): whichever commits past the mark checkpoints,
/// and one left at 1000 would take the checkpoints over. The log file keeps its largest size
/// after a checkpoint (SQLite reuses it from the start), so each file may have about 32 MiB
/// of log beside it.
const WAL_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 8192";

/// A connection pool and the backend behind it.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The database file, for SQLite on disk.
    sqlite_path: Option<std::path::PathBuf>,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Db {
    /// Connects to `sqlite://PATH` (created if missing) or `postgres://...`.
    ///
    /// # Errors
    /// An unsupported scheme, or a database that cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::Config(format!(
                "unsupported database url scheme (expected sqlite: or postgres://): {}",
                redact_url(url)
            )));
        };
        let url = match backend {
            // Create the file on first start.
            Backend::Sqlite if !url.contains("mode=") => {
                if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                }
            }
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL lets readers run beside the one writer; synchronous=FULL makes
                            // every commit durable (one fsync per commit, hence group commit).
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute(WAL_AUTOCHECKPOINT).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?
            }
        };
        let sqlite_path = (backend == Backend::Sqlite)
            .then(|| {
                let rest = url
                    .strip_prefix("sqlite://")
                    .or_else(|| url.strip_prefix("sqlite:"))?;
                let path = rest.split('?').next()?;
                (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
            })
            .flatten();
        Ok(Self {
            pool,
            backend,
            sqlite_path,
        })
    }

    /// A native connection beside the pool to an SQLite database on disk, with the pool's
    /// durability settings (every commit durable, waits for the other writers): for bulk
    /// writes and batched lookups without a worker-thread round trip per statement. `None`
    /// on PostgreSQL, in memory, or when the file cannot be opened.
    pub fn native_connection(&self) -> Option<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(self.sqlite_path.as_deref()?).ok()?;
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")
            .ok()?;
        conn.execute_batch(WAL_AUTOCHECKPOINT).ok()?;
        Some(conn)
    }

    /// Applies the migrations of this backend (`migrations/sqlite` or `migrations/postgres`).
    ///
    /// # Errors
    /// A failed or modified migration.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection (waits for those in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `n` parameters, numbered from `from` on: `$from, $from+1, …` on PostgreSQL, `?, ?, …` on
/// SQLite.
///
/// SQLite's are anonymous, bound in the order they appear in the statement, so a statement
/// that uses them on SQLite must have no other kind and bind in text order. A numbered name
/// costs SQLite a walk of the statement's list of names at each bind (sqlx looks every
/// parameter's name up), so binding a statement of `n` of them costs `n²/2` steps: a 500-row,
/// 7-column insert spent milliseconds there. Anonymous ones have no names to walk.
pub fn placeholders(backend: Backend, from: usize, n: usize) -> String {
    let one = |i: usize| match backend {
        Backend::Sqlite => "?".to_owned(),
        Backend::Postgres => format!("${i}"),
    };
    (from..from + n).map(one).collect::<Vec<_>>().join(", ")
}

/// The rows of a multi-row `INSERT … VALUES`: `($1, …, $c), ($c+1, …), …` for `rows` rows
/// of `columns` parameters each (`(?, …), …` on SQLite, see [`placeholders`]).
pub fn value_rows(backend: Backend, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", placeholders(backend, i * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A database URL with any password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ignored = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Reads a `BIGINT` column as `u64`, refusing negative values.
pub(crate) fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("negative sequence number {v}")))
}

/// Converts a sequence number for binding as `BIGINT`.
pub(crate) fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Corrupt(format!("sequence number {v} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Any, Row};

    #[test]
    fn parameter_lists_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        assert_eq!(placeholders(Backend::Postgres, 3, 2), "$3, $4");
        assert_eq!(value_rows(Backend::Postgres, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(placeholders(Backend::Sqlite, 3, 2), "?, ?");
        assert_eq!(value_rows(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }

    /// Every connection to an SQLite file checkpoints at the same mark: the pool's and a
    /// native one.
    #[tokio::test]
    async fn every_sqlite_connection_checkpoints_at_one_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = crate::testkit::fresh_sqlite(dir.path()).await;
        let mut pooled = Vec::new();
        for _ in 0..3 {
            pooled.push(db.pool().acquire().await.unwrap());
        }
        for conn in &mut pooled {
            let row = sqlx::query::<Any>("PRAGMA wal_autocheckpoint")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(row.get::<i64, _>(0), 8192);
        }
        let native = db.native_connection().expect("a native connection");
        let mark: i64 = native
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mark, 8192);
    }
}
