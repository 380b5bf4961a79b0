//! The SQL connection shared by the audit log and the gateway's state store.
//!
//! Both stores run on SQLite (embedded) and PostgreSQL (distributed), chosen by URL. They use
//! sqlx's `Any` driver with SQL written to run unchanged on both (`$n` placeholders, `BIGINT`
//! timestamps in microseconds, blobs as bytes); where the dialects differ, the code asks
//! [`Db::backend`]. Long parameter lists (multi-row inserts, batched lookups) are written by
//! [`placeholders`] and [`value_rows`], anonymous on SQLite.

use std::str::FromStr;
use std::sync::Arc;
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
/// and one left at 1000 would take the checkpoints over.
///
/// The mark does not bound the log's file: SQLite writes the log from its start again only
/// after a checkpoint that copied every frame back, which a reader on an older snapshot
/// prevents — and under a steady load the loaders are always reading — and the file keeps
/// its largest size afterwards. Measured: 325 MiB of log beside the state file, and growing,
/// 35 seconds into the embedded pipeline bench. [`WAL_LIMIT`] bounds it.
const WAL_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 8192";

/// Deleted and overwritten content is zeroed in the database file rather than left in free
/// space (an erased subject's name or password hash must not stay on disk). It costs writes
/// of freed space; the write-ahead log still holds old pages until [`Db::scrub`] empties it.
const SECURE_DELETE: &str = "PRAGMA secure_delete = ON";

/// The most write-ahead log an SQLite file keeps beside it for long: when the log's file is
/// larger (looked at every [`WAL_WATCH`]), a checkpoint in `TRUNCATE` mode copies every frame
/// back and empties it. It waits for readers on older snapshots to finish — and new writers
/// wait for it meanwhile — at most [`WAL_TRUNCATE_WAIT`]; a checkpoint that could not finish
/// in that time is tried again at the next look.
const WAL_LIMIT: u64 = 64 * 1024 * 1024;
/// How often the log's file size is looked at.
const WAL_WATCH: Duration = Duration::from_secs(1);
/// How long a truncating checkpoint waits for readers and writers (the busy timeout of its
/// connection): writers wait behind it, so it is short.
const WAL_TRUNCATE_WAIT: &str = "PRAGMA busy_timeout = 1000";

/// The write-ahead log file of the SQLite database at `db`.
fn wal_file(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// What a look at an SQLite file's write-ahead log did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalCheck {
    /// The log's file was at most the limit (or absent): nothing done.
    WithinLimit,
    /// The log was copied back and its file emptied.
    Truncated,
    /// A reader or writer held the log past the wait: tried again at the next look.
    Busy,
}

/// Truncates the write-ahead log of the SQLite database at `db` when its file holds more
/// than `limit` bytes (see [`WAL_LIMIT`]). Blocking: run it off the async threads.
///
/// # Errors
/// The database cannot be opened or the checkpoint fails.
fn truncate_wal_over(db: &std::path::Path, limit: u64) -> rusqlite::Result<WalCheck> {
    let size = std::fs::metadata(wal_file(db)).map_or(0, |m| m.len());
    if size <= limit {
        return Ok(WalCheck::WithinLimit);
    }
    let conn = rusqlite::Connection::open(db)?;
    conn.execute_batch(WAL_TRUNCATE_WAIT)?;
    // One row: busy (1 when the checkpoint could not finish), frames in the log, frames
    // copied back.
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    Ok(if busy == 0 {
        WalCheck::Truncated
    } else {
        WalCheck::Busy
    })
}

/// Looks at the write-ahead log of `db` every [`WAL_WATCH`] (see [`WAL_LIMIT`]) until
/// `gone` reports that every handle on the database was dropped.
async fn watch_wal(db: std::path::PathBuf, mut gone: tokio::sync::watch::Receiver<()>) {
    let mut every = tokio::time::interval(WAL_WATCH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            // The sender is never used: this completes when it is dropped.
            _ = gone.changed() => return,
        }
        let path = db.clone();
        match tokio::task::spawn_blocking(move || truncate_wal_over(&path, WAL_LIMIT)).await {
            Ok(Ok(WalCheck::WithinLimit)) => {}
            Ok(Ok(WalCheck::Truncated)) => {
                tracing::debug!(db = %db.display(), "write-ahead log past its limit: truncated");
            }
            Ok(Ok(WalCheck::Busy)) => {
                tracing::debug!(db = %db.display(), "write-ahead log past its limit, busy: trying again");
            }
            Ok(Err(e)) => {
                tracing::warn!(db = %db.display(), error = %e, "write-ahead log checkpoint failed");
            }
            // The runtime is shutting down.
            Err(_) => return,
        }
    }
}

/// A connection pool and the backend behind it.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The database file, for SQLite on disk.
    sqlite_path: Option<std::path::PathBuf>,
    /// Held by every clone: when the last is dropped, the log watcher of an SQLite file on
    /// disk stops.
    _wal_watch: Option<Arc<tokio::sync::watch::Sender<()>>>,
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
                            conn.execute(SECURE_DELETE).await?;
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
        let _wal_watch = sqlite_path.clone().map(|path| {
            let (watch, gone) = tokio::sync::watch::channel(());
            tokio::spawn(watch_wal(path, gone));
            Arc::new(watch)
        });
        Ok(Self {
            pool,
            backend,
            sqlite_path,
            _wal_watch,
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
        conn.execute_batch(SECURE_DELETE).ok()?;
        Some(conn)
    }

    /// The files holding the database on this host (SQLite: the database and its
    /// write-ahead log; none for PostgreSQL, whose files are the server's).
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.sqlite_path.iter().fold(Vec::new(), |mut out, p| {
            let mut wal = p.clone().into_os_string();
            wal.push("-wal");
            out.push(p.clone());
            out.push(wal.into());
            out
        })
    }

    /// Removes what deleted and overwritten rows left in the database's files. SQLite (whose
    /// connections zero freed content, `secure_delete`): the write-ahead log, which still
    /// holds the pages as they were, is checkpointed into the file and truncated — waiting
    /// for readers on older snapshots up to the busy timeout. PostgreSQL: `tables` are
    /// rewritten (`VACUUM FULL`; a plain vacuum only marks dead tuples' space reusable, their
    /// bytes stay in the pages until overwritten), each under a short exclusive lock — meant
    /// for small tables. The server's write-ahead log keeps the old rows until it recycles
    /// its segments.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when a reader kept the log from being emptied; a database error.
    pub async fn scrub(&self, tables: &[&str]) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&self.pool)
                    .await?;
                let busy: i64 = sqlx::Row::try_get(&row, 0)?;
                if busy != 0 {
                    return Err(Error::Unavailable(
                        "a reader kept the write-ahead log from being emptied".to_owned(),
                    ));
                }
            }
            Backend::Postgres => {
                for t in tables {
                    // Table names are the caller's constants, never input.
                    sqlx::query(&format!("VACUUM FULL {t}"))
                        .execute(&self.pool)
                        .await?;
                }
            }
        }
        Ok(())
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

    /// A reader on an old snapshot keeps the log's file growing past every checkpoint mark;
    /// the limit's checkpoint waits for it, and once it is gone empties the file.
    #[test]
    fn a_log_past_its_limit_is_truncated_once_the_readers_let_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 100; \
                 CREATE TABLE t (v BLOB); INSERT INTO t VALUES (zeroblob(10));",
            )
            .unwrap();
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let rows: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "the reader holds its snapshot from here on");
        for _ in 0..200 {
            writer
                .execute("INSERT INTO t VALUES (zeroblob(8192))", [])
                .unwrap();
        }
        let wal = || std::fs::metadata(wal_file(&path)).unwrap().len();
        assert!(wal() > 1024 * 1024, "the log grew past the mark: {}", wal());
        assert_eq!(
            truncate_wal_over(&path, u64::MAX).unwrap(),
            WalCheck::WithinLimit
        );
        assert_eq!(
            truncate_wal_over(&path, 1024 * 1024).unwrap(),
            WalCheck::Busy,
            "the reader still holds the log"
        );
        assert!(wal() > 1024 * 1024);
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(
            truncate_wal_over(&path, 1024 * 1024).unwrap(),
            WalCheck::Truncated
        );
        assert_eq!(wal(), 0);
        let rows: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 201, "nothing lost");
    }

    /// Every SQLite file on disk has its log watched: one grown past the limit by a single
    /// large transaction (which no checkpoint mark prevents) is emptied within a few looks.
    #[tokio::test]
    async fn an_sqlite_file_on_disk_has_its_log_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = crate::testkit::fresh_sqlite(dir.path()).await;
        let path = db.sqlite_path.clone().expect("a file on disk");
        let limit = usize::try_from(WAL_LIMIT).unwrap();
        let native = db.native_connection().unwrap();
        native
            .execute_batch(&format!(
                "CREATE TABLE big (v BLOB); INSERT INTO big VALUES (zeroblob({}));",
                limit + 1024 * 1024
            ))
            .unwrap();
        let wal = || std::fs::metadata(wal_file(&path)).map_or(0, |m| m.len());
        assert!(wal() > WAL_LIMIT, "the log grew past the limit: {}", wal());
        let start = std::time::Instant::now();
        while wal() > 0 {
            assert!(
                start.elapsed() < WAL_WATCH * 4,
                "the log still holds {} bytes",
                wal()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
