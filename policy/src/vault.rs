//! The vault: data keys (stored wrapped) and the PAN token vault, on SQLite or PostgreSQL
//! (`migrations/*/0003_vault_init.sql`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Any, Row};
use warden_audit::db::{placeholders, value_rows};
use warden_audit::Db;

use crate::{Error, Result};

/// Items per batched lookup: far below both databases' parameter limits (32766, 65535).
const CHUNK: usize = 500;
/// Rows per multi-row INSERT (five parameters each).
const INSERT_ROWS: usize = 100;

/// A data key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The wrapped key; `None` once destroyed (crypto-shredded).
    pub wrapped: Option<Vec<u8>>,
    /// Id of the key that wraps it.
    pub wrapped_by: String,
}

/// One new vault entry.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub pan_index: Vec<u8>,
    pub token: String,
    pub pan_ciphertext: Vec<u8>,
}

/// Persistent keys and tokens.
///
/// Contract, for every implementation: keys and tokens are inserted only if absent (the
/// first writer wins, so racing writers converge on one key and one token per PAN); a
/// destroyed key stays destroyed (its row keeps the fact, never the key); lookups are
/// batched (one round trip per few hundred items, never one per record).
#[async_trait]
pub trait VaultStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores keys `(key_ref, wrapped)`, each unless one exists for `(scope, key_ref)`.
    async fn put_keys(
        &self,
        scope: &str,
        keys: &[(String, Vec<u8>)],
        wrapped_by: &str,
        now: i64,
    ) -> Result<()>;
    /// The stored keys among `refs` (absent ones are missing from the map).
    async fn keys(&self, scope: &str, refs: &[String]) -> Result<HashMap<String, StoredKey>>;
    /// Replaces a key's wrapping if it is still `old` (key rotation); returns whether it did.
    async fn rewrap_key(
        &self,
        scope: &str,
        key_ref: &str,
        old: &[u8],
        new: &[u8],
        wrapped_by: &str,
    ) -> Result<bool>;
    /// Destroys a key: forgets the wrapped bytes, keeps the fact — as a tombstone if there was
    /// no key yet, so none is ever created. Returns false when it was destroyed already.
    async fn destroy_key(&self, scope: &str, key_ref: &str, now: i64) -> Result<bool>;
    /// The vault's epoch: a count raised (by triggers, migration 0008) in the transaction of
    /// every key destroyed or deleted and every token deleted or changed, by whatever
    /// writer, never lowered. While it is unchanged, keys and tokens read earlier are still
    /// in the vault.
    async fn epoch(&self) -> Result<i64>;
    /// Token of each PAN index among `indexes` that has one.
    async fn tokens_by_index(
        &self,
        dataset: &str,
        indexes: &[Vec<u8>],
    ) -> Result<HashMap<Vec<u8>, String>>;
    /// Inserts tokens in one transaction, skipping indexes that have one already; returns
    /// how many were inserted.
    async fn insert_tokens(&self, dataset: &str, tokens: &[NewToken], now: i64) -> Result<usize>;
    /// Records which subject's records carry which card (`(pan_index, subject_ref)`; known
    /// pairs are skipped). Called before the tokens are looked up.
    async fn put_token_refs(&self, dataset: &str, refs: &[(Vec<u8>, String)]) -> Result<()>;
    /// Erases a subject from the vault in one transaction: deletes the tokens only its
    /// records carry and its references. Returns `(tokens deleted, tokens kept because
    /// another subject's records carry them too)`. A second run finds nothing.
    async fn purge_subject(&self, dataset: &str, subject_ref: &str) -> Result<(u64, u64)>;
    /// How many tokens the vault still links to a subject.
    async fn subject_tokens(&self, dataset: &str, subject_ref: &str) -> Result<u64>;
    /// The encrypted PAN of each token among `tokens` that exists.
    async fn pans_by_token(
        &self,
        dataset: &str,
        tokens: &[String],
    ) -> Result<HashMap<String, Vec<u8>>>;
}

/// [`VaultStore`] on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlVaultStore {
    db: Db,
    /// On SQLite on disk: a native connection for bulk inserts (prepared once, one
    /// transaction per batch, no worker-thread round trip per statement).
    native: Option<Arc<Native>>,
}

/// Native SQLite connections to the state database: one for bulk inserts, [`READERS`] for
/// batched point lookups (the edge's and the loaders' key lookups run side by side).
struct Native {
    writer: std::sync::Mutex<rusqlite::Connection>,
    readers: Vec<std::sync::Mutex<rusqlite::Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

/// Native read connections (WAL: readers do not wait for each other or for the writer).
const READERS: usize = 3;

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Native")
    }
}

fn native_err(e: rusqlite::Error) -> Error {
    Error::Store(format!("sqlite: {e}"))
}

impl Native {
    fn open(db: &Db) -> Option<Self> {
        let connect = || db.native_connection().map(std::sync::Mutex::new);
        Some(Self {
            writer: connect()?,
            readers: (0..READERS).map(|_| connect()).collect::<Option<_>>()?,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A free read connection, or the next one in turn when all are busy.
    fn reader(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        for r in &self.readers {
            if let Ok(conn) = r.try_lock() {
                return conn;
            }
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
        self.readers[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token of each of `indexes` that has one in `dataset` (one prepared probe each).
    fn tokens(&self, dataset: &str, indexes: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT token FROM vault_tokens WHERE pan_index = ?1 AND dataset = ?2")
            .map_err(native_err)?;
        let mut out = HashMap::with_capacity(indexes.len());
        for index in indexes {
            let mut rows = stmt
                .query(rusqlite::params![index, dataset])
                .map_err(native_err)?;
            if let Some(row) = rows.next().map_err(native_err)? {
                out.insert(index.clone(), row.get::<_, String>(0).map_err(native_err)?);
            }
        }
        Ok(out)
    }

    /// The stored keys among `refs` in `scope` (one prepared probe each).
    fn keys(&self, scope: &str, refs: &[String]) -> Result<HashMap<String, StoredKey>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT wrapped, wrapped_by FROM vault_keys WHERE key_ref = ?1 AND scope = ?2",
            )
            .map_err(native_err)?;
        let mut out = HashMap::with_capacity(refs.len());
        for r in refs {
            let mut rows = stmt
                .query(rusqlite::params![r, scope])
                .map_err(native_err)?;
            if let Some(row) = rows.next().map_err(native_err)? {
                let key = StoredKey {
                    wrapped: row.get(0).map_err(native_err)?,
                    wrapped_by: row.get(1).map_err(native_err)?,
                };
                out.insert(r.clone(), key);
            }
        }
        Ok(out)
    }

    /// Runs `sql` once per row of `rows` in one immediate transaction; the rows changed.
    fn insert<const N: usize>(
        &self,
        sql: &str,
        rows: &[[rusqlite::types::Value; N]],
    ) -> Result<usize> {
        let mut conn = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(native_err)?;
        let mut changed = 0;
        {
            let mut stmt = tx.prepare_cached(sql).map_err(native_err)?;
            for row in rows {
                changed += stmt
                    .execute(rusqlite::params_from_iter(row.iter()))
                    .map_err(native_err)?;
            }
        }
        tx.commit().map_err(native_err)?;
        Ok(changed)
    }
}

impl SqlVaultStore {
    pub fn new(db: Db) -> Self {
        let native = Native::open(&db).map(Arc::new);
        Self { db, native }
    }

    /// Bulk insert on the native SQLite connection, off the async threads; `None` when
    /// there is none (PostgreSQL, or SQLite in memory).
    async fn native_insert<const N: usize>(
        &self,
        sql: &'static str,
        rows: Vec<[rusqlite::types::Value; N]>,
    ) -> Option<Result<usize>> {
        let native = self.native.clone()?;
        Some(
            tokio::task::spawn_blocking(move || native.insert(sql, &rows))
                .await
                .unwrap_or_else(|e| Err(Error::Store(format!("vault insert task: {e}")))),
        )
    }

    /// The rows of `table` whose `key` is one of `items` and whose `filter` is
    /// `filter_value`, fetched in chunks as index probes (see [`lookup_sql`]).
    async fn lookup<T>(
        &self,
        columns: &str,
        table: &str,
        key: &str,
        filter: &str,
        filter_value: &str,
        items: &[T],
    ) -> Result<Vec<sqlx::any::AnyRow>>
    where
        T: for<'q> sqlx::Encode<'q, Any> + sqlx::Type<Any> + Clone + Send + Sync + 'static,
    {
        let mut rows = Vec::with_capacity(items.len());
        for chunk in items.chunks(CHUNK) {
            let sql = lookup_sql(&self.db, columns, table, key, filter, chunk.len());
            let mut q = sqlx::query::<Any>(&sql);
            for item in chunk {
                q = q.bind(item.clone());
            }
            rows.extend(self.probe(q.bind(filter_value.to_owned())).await?);
        }
        Ok(rows)
    }

    /// Runs a batched point lookup as index probes, one per item, whatever the planner's
    /// statistics say. Right after a bulk load they are stale, and a planner that believes
    /// the table empty scans it once per batch: quadratic in the vault's size. SQLite keeps
    /// the batch as the outer loop of a `CROSS JOIN`; PostgreSQL is told so per transaction.
    async fn probe<'q>(
        &self,
        q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Vec<sqlx::any::AnyRow>> {
        match self.db.backend() {
            warden_audit::Backend::Sqlite => Ok(q.fetch_all(self.db.pool()).await?),
            warden_audit::Backend::Postgres => {
                let mut tx = self.db.pool().begin().await?;
                // One round trip, for this transaction only: a parameterized index probe per
                // batch item, nothing else.
                sqlx::query(
                    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true), \
                     set_config('enable_mergejoin', 'off', true), set_config('enable_material', 'off', true)",
                )
                .execute(&mut *tx)
                .await?;
                let rows = q.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
        }
    }
}

/// A batched point lookup: the rows of `table` whose `key` is one of the first `n`
/// parameters and whose `filter` is the last one (bound in that order: SQLite's parameters are
/// anonymous, see [`placeholders`]), as index probes (see [`SqlVaultStore::probe`]). SQLite
/// probes from a `VALUES` table kept as the outer loop of a `CROSS JOIN`; PostgreSQL takes an
/// `IN` list that, with scans disabled, becomes one index scan over the whole list.
fn lookup_sql(db: &Db, columns: &str, table: &str, key: &str, filter: &str, n: usize) -> String {
    let backend = db.backend();
    let last = placeholders(backend, n + 1, 1);
    match backend {
        warden_audit::Backend::Sqlite => format!(
            "WITH v(i) AS (VALUES {}) SELECT {columns} FROM v CROSS JOIN {table} WHERE {key} = v.i AND {filter} = {last}",
            value_rows(backend, n, 1)
        ),
        warden_audit::Backend::Postgres => format!(
            "SELECT {columns} FROM {table} WHERE {key} IN ({}) AND {filter} = {last}",
            placeholders(backend, 1, n)
        ),
    }
}

#[async_trait]
impl VaultStore for SqlVaultStore {
    async fn put_keys(
        &self,
        scope: &str,
        keys: &[(String, Vec<u8>)],
        wrapped_by: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        for chunk in keys.chunks(INSERT_ROWS) {
            let rows = value_rows(self.db.backend(), chunk.len(), 5);
            let sql = format!(
                "INSERT INTO vault_keys (scope, key_ref, wrapped, wrapped_by, created_at) VALUES {} \
                 ON CONFLICT (key_ref, scope) DO NOTHING",
                rows
            );
            let mut q = sqlx::query::<Any>(&sql);
            for (key_ref, wrapped) in chunk {
                q = q
                    .bind(scope.to_owned())
                    .bind(key_ref.clone())
                    .bind(wrapped.clone())
                    .bind(wrapped_by.to_owned())
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn keys(&self, scope: &str, refs: &[String]) -> Result<HashMap<String, StoredKey>> {
        if let Some(native) = self.native.clone() {
            let (scope, refs) = (scope.to_owned(), refs.to_vec());
            return tokio::task::spawn_blocking(move || native.keys(&scope, &refs))
                .await
                .unwrap_or_else(|e| Err(Error::Store(format!("vault key lookup task: {e}"))));
        }
        let mut out = HashMap::with_capacity(refs.len());
        let columns = "key_ref, wrapped, wrapped_by";
        for row in self
            .lookup(columns, "vault_keys", "key_ref", "scope", scope, refs)
            .await?
        {
            out.insert(
                row.try_get::<String, _>("key_ref")?,
                StoredKey {
                    wrapped: row.try_get("wrapped")?,
                    wrapped_by: row.try_get("wrapped_by")?,
                },
            );
        }
        Ok(out)
    }

    async fn rewrap_key(
        &self,
        scope: &str,
        key_ref: &str,
        old: &[u8],
        new: &[u8],
        wrapped_by: &str,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE vault_keys SET wrapped = $1, wrapped_by = $2 WHERE scope = $3 AND key_ref = $4 AND wrapped = $5",
        )
        .bind(new.to_vec())
        .bind(wrapped_by.to_owned())
        .bind(scope.to_owned())
        .bind(key_ref.to_owned())
        .bind(old.to_vec())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn destroy_key(&self, scope: &str, key_ref: &str, now: i64) -> Result<bool> {
        // An upsert: a subject erased before it ever had a key gets a tombstone, so no key is
        // ever made for it afterwards. The epoch rises in the same transaction (a trigger), so
        // no reader can see the key gone yet the epoch unchanged.
        let n = sqlx::query(
            "INSERT INTO vault_keys (scope, key_ref, wrapped, wrapped_by, created_at, destroyed_at) \
             VALUES ($1, $2, NULL, 'destroyed', $3, $3) \
             ON CONFLICT (key_ref, scope) DO UPDATE SET wrapped = NULL, destroyed_at = excluded.destroyed_at \
             WHERE vault_keys.wrapped IS NOT NULL",
        )
        .bind(scope.to_owned())
        .bind(key_ref.to_owned())
        .bind(now)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn epoch(&self) -> Result<i64> {
        const SQL: &str = "SELECT changes FROM vault_epoch WHERE id = 1";
        if let Some(native) = self.native.clone() {
            return tokio::task::spawn_blocking(move || {
                native
                    .reader()
                    .query_row(SQL, [], |row| row.get::<_, i64>(0))
                    .map_err(native_err)
            })
            .await
            .unwrap_or_else(|e| Err(Error::Store(format!("vault epoch task: {e}"))));
        }
        Ok(sqlx::query::<Any>(SQL)
            .fetch_one(self.db.pool())
            .await?
            .try_get(0)?)
    }

    async fn tokens_by_index(
        &self,
        dataset: &str,
        indexes: &[Vec<u8>],
    ) -> Result<HashMap<Vec<u8>, String>> {
        if let Some(native) = self.native.clone() {
            let (dataset, indexes) = (dataset.to_owned(), indexes.to_vec());
            return tokio::task::spawn_blocking(move || native.tokens(&dataset, &indexes))
                .await
                .unwrap_or_else(|e| Err(Error::Store(format!("vault lookup task: {e}"))));
        }
        let mut out = HashMap::with_capacity(indexes.len());
        let columns = "pan_index, token";
        for row in self
            .lookup(
                columns,
                "vault_tokens",
                "pan_index",
                "dataset",
                dataset,
                indexes,
            )
            .await?
        {
            out.insert(
                row.try_get::<Vec<u8>, _>("pan_index")?,
                row.try_get("token")?,
            );
        }
        Ok(out)
    }

    async fn insert_tokens(&self, dataset: &str, tokens: &[NewToken], now: i64) -> Result<usize> {
        use rusqlite::types::Value as V;
        let rows: Vec<[V; 5]> = tokens
            .iter()
            .map(|t| {
                [
                    V::Text(dataset.to_owned()),
                    V::Blob(t.pan_index.clone()),
                    V::Text(t.token.clone()),
                    V::Blob(t.pan_ciphertext.clone()),
                    V::Integer(now),
                ]
            })
            .collect();
        if let Some(done) = self
            .native_insert(
                "INSERT INTO vault_tokens (dataset, pan_index, token, pan_ciphertext, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (pan_index) DO NOTHING",
                rows,
            )
            .await
        {
            return done;
        }
        let mut tx = self.db.pool().begin().await?;
        let mut inserted = 0;
        for chunk in tokens.chunks(INSERT_ROWS) {
            let rows = value_rows(self.db.backend(), chunk.len(), 5);
            let sql = format!(
                "INSERT INTO vault_tokens (dataset, pan_index, token, pan_ciphertext, created_at) VALUES {} \
                 ON CONFLICT (pan_index) DO NOTHING",
                rows
            );
            let mut q = sqlx::query::<Any>(&sql);
            for t in chunk {
                q = q
                    .bind(dataset.to_owned())
                    .bind(t.pan_index.clone())
                    .bind(t.token.clone())
                    .bind(t.pan_ciphertext.clone())
                    .bind(now);
            }
            inserted += q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
    }

    async fn put_token_refs(&self, dataset: &str, refs: &[(Vec<u8>, String)]) -> Result<()> {
        use rusqlite::types::Value as V;
        if refs.is_empty() {
            return Ok(());
        }
        let rows: Vec<[V; 3]> = refs
            .iter()
            .map(|(index, subject_ref)| {
                [
                    V::Text(dataset.to_owned()),
                    V::Text(subject_ref.clone()),
                    V::Blob(index.clone()),
                ]
            })
            .collect();
        if let Some(done) = self
            .native_insert(
                "INSERT INTO vault_token_refs (dataset, subject_ref, pan_index) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
                rows,
            )
            .await
        {
            return done.map(|_| ());
        }
        let mut tx = self.db.pool().begin().await?;
        for chunk in refs.chunks(INSERT_ROWS) {
            let sql = format!(
                "INSERT INTO vault_token_refs (dataset, subject_ref, pan_index) VALUES {} ON CONFLICT DO NOTHING",
                value_rows(self.db.backend(), chunk.len(), 3)
            );
            let mut q = sqlx::query::<Any>(&sql);
            for (index, subject_ref) in chunk {
                q = q
                    .bind(dataset.to_owned())
                    .bind(subject_ref.clone())
                    .bind(index.clone());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn purge_subject(&self, dataset: &str, subject_ref: &str) -> Result<(u64, u64)> {
        let mut tx = self.db.pool().begin().await?;
        // References recorded meanwhile wait for this purge: a tokenization either is seen
        // here, and its card keeps its token, or looks the token up after it is gone and
        // vaults the card afresh. PostgreSQL: a lock against inserts; SQLite: the write lock
        // taken before the first read (a write first), so no writer slips in between.
        let lock = match self.db.backend() {
            warden_audit::Backend::Postgres => {
                "LOCK TABLE vault_token_refs IN SHARE ROW EXCLUSIVE MODE"
            }
            warden_audit::Backend::Sqlite => "DELETE FROM vault_token_refs WHERE 1 = 0",
        };
        sqlx::query::<Any>(lock).execute(&mut *tx).await?;
        let shared: i64 = sqlx::query::<Any>(
            "SELECT COUNT(*) FROM vault_token_refs r WHERE r.dataset = $1 AND r.subject_ref = $2 \
             AND EXISTS (SELECT 1 FROM vault_token_refs o WHERE o.dataset = $1 AND o.pan_index = r.pan_index \
             AND o.subject_ref <> $2)",
        )
        .bind(dataset.to_owned())
        .bind(subject_ref.to_owned())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let deleted = sqlx::query::<Any>(
            "DELETE FROM vault_tokens WHERE dataset = $1 AND pan_index IN (\
             SELECT r.pan_index FROM vault_token_refs r WHERE r.dataset = $1 AND r.subject_ref = $2 \
             AND NOT EXISTS (SELECT 1 FROM vault_token_refs o WHERE o.dataset = $1 AND o.pan_index = r.pan_index \
             AND o.subject_ref <> $2))",
        )
        .bind(dataset.to_owned())
        .bind(subject_ref.to_owned())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query::<Any>("DELETE FROM vault_token_refs WHERE dataset = $1 AND subject_ref = $2")
            .bind(dataset.to_owned())
            .bind(subject_ref.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((deleted, u64::try_from(shared).unwrap_or(0)))
    }

    async fn subject_tokens(&self, dataset: &str, subject_ref: &str) -> Result<u64> {
        let n: i64 = sqlx::query::<Any>(
            "SELECT COUNT(*) FROM vault_token_refs WHERE dataset = $1 AND subject_ref = $2",
        )
        .bind(dataset.to_owned())
        .bind(subject_ref.to_owned())
        .fetch_one(self.db.pool())
        .await?
        .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn pans_by_token(
        &self,
        dataset: &str,
        tokens: &[String],
    ) -> Result<HashMap<String, Vec<u8>>> {
        let mut out = HashMap::with_capacity(tokens.len());
        let columns = "token, pan_ciphertext";
        for row in self
            .lookup(columns, "vault_tokens", "token", "dataset", dataset, tokens)
            .await?
        {
            out.insert(
                row.try_get::<String, _>("token")?,
                row.try_get("pan_ciphertext")?,
            );
        }
        Ok(out)
    }
}
