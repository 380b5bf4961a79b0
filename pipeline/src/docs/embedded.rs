//! [`DocumentStore`] as a table in the state database (`documents`).

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use sqlx::{Any, Row};
use warden_audit::db::{value_rows, Backend};
use warden_audit::Db;

use super::{capped, CollectionSpec, Document, DocumentStore, Query};
use crate::{Error, Result};

/// Rows per multi-row upsert (seven parameters each).
const UPSERT_ROWS: usize = 200;

/// The upsert of documents given as `values`: one or more rows of (collection, record_key,
/// subject_ref, subject_key, ts, contract_version, body).
fn upsert_sql(values: &str) -> String {
    format!(
        "INSERT INTO documents \
         (collection, record_key, subject_ref, subject_key, ts, contract_version, body) \
         VALUES {values} ON CONFLICT (collection, record_key) DO UPDATE SET \
         subject_ref = excluded.subject_ref, subject_key = excluded.subject_key, \
         ts = excluded.ts, contract_version = excluded.contract_version, body = excluded.body"
    )
}

/// How every statement finds one subject's documents of a collection (`$1` the collection,
/// `$2` [`subject_key`], `$3` the reference): through the index on (collection, key), then
/// the whole reference.
const SUBJECT_CLAUSE: &str = "collection = $1 AND subject_key = $2 AND subject_ref = $3";

/// The table as the statements on one subject name it. SQLite's planner goes by rules: for a
/// subject's page in time order it walked the whole collection by the time index (which gives
/// the order) rather than read the subject's few documents by the subject index and sort
/// them; PostgreSQL weighs both.
fn subject_table(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "documents INDEXED BY documents_subject_key",
        Backend::Postgres => "documents",
    }
}

/// The `SELECT` of [`DocumentStore::find`] for `query`; its parameters are bound in this
/// order: collection, subject (key and reference), from, to, after (time, time, key), limit.
fn find_sql(backend: Backend, query: &Query) -> String {
    let (table, mut clauses, mut n) = if query.subject_ref.is_some() {
        (subject_table(backend), vec![SUBJECT_CLAUSE.to_owned()], 3)
    } else {
        ("documents", vec!["collection = $1".to_owned()], 1)
    };
    let mut param = || {
        n += 1;
        format!("${n}")
    };
    if query.from.is_some() {
        clauses.push(format!("ts >= {}", param()));
    }
    if query.to.is_some() {
        clauses.push(format!("ts < {}", param()));
    }
    if query.after.is_some() {
        // (ts, key) > (a, b), spelt out for both databases.
        let (a1, a2, b) = (param(), param(), param());
        clauses.push(format!("(ts > {a1} OR (ts = {a2} AND record_key > {b}))"));
    }
    format!(
        "SELECT record_key, subject_ref, ts, contract_version, body FROM {table} \
         WHERE {} ORDER BY ts, record_key LIMIT {}",
        clauses.join(" AND "),
        param()
    )
}

fn delete_subject_sql(backend: Backend) -> String {
    format!(
        "DELETE FROM {} WHERE {SUBJECT_CLAUSE}",
        subject_table(backend)
    )
}

fn count_subject_sql(backend: Backend) -> String {
    format!(
        "SELECT COUNT(*) FROM {} WHERE {SUBJECT_CLAUSE}",
        subject_table(backend)
    )
}

/// The key the subject index holds for a reference: its first 16 hex digits (a pseudonym is
/// `sr_` and 32 of them), as a signed 64-bit integer; 0 for a reference of another form.
/// Migration 0009 computes the same in SQL for documents stored before it.
#[must_use]
pub fn subject_key(subject_ref: &str) -> i64 {
    subject_ref
        .strip_prefix("sr_")
        .and_then(|hex| hex.get(..16))
        .filter(|hex| hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map_or(0, |k| i64::from_be_bytes(k.to_be_bytes()))
}

/// Page cache of the loader's native connection (negative: KiB).
const DOCUMENTS_CACHE: &str = "PRAGMA cache_size = -65536";

/// Documents in the state database.
#[derive(Debug, Clone)]
pub struct EmbeddedDocuments {
    db: Db,
    /// On SQLite on disk: a native connection for the loader's upserts (one prepared
    /// statement, one immediate transaction per batch, off the async threads).
    native: Option<Arc<Native>>,
}

struct Native(Mutex<rusqlite::Connection>);

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Native")
    }
}

fn native_err(e: rusqlite::Error) -> Error {
    Error::Documents(format!("sqlite: {e}"))
}

impl Native {
    fn upsert(&self, collection: &str, rows: &[(String, String, i64, i64, String)]) -> Result<()> {
        let mut conn = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(native_err)?;
        {
            let mut stmt = tx
                .prepare_cached(&upsert_sql("(?1, ?2, ?3, ?4, ?5, ?6, ?7)"))
                .map_err(native_err)?;
            for (key, subject_ref, ts, version, body) in rows {
                stmt.execute(rusqlite::params![
                    collection,
                    key,
                    subject_ref,
                    subject_key(subject_ref),
                    ts,
                    version,
                    body
                ])
                .map_err(native_err)?;
            }
        }
        tx.commit().map_err(native_err)
    }
}

impl EmbeddedDocuments {
    pub fn new(db: Db) -> Self {
        // The upserts walk the table and its two indexes: a page cache of 64 MiB (SQLite's
        // default is 2 MiB) keeps their upper levels in memory instead of reading them back
        // from the file at every batch.
        let native = db.native_connection().map(|c| {
            if let Err(e) = c.execute_batch(DOCUMENTS_CACHE) {
                // Only slower without it.
                tracing::warn!(error = %e, "documents: page cache not enlarged");
            }
            Arc::new(Native(Mutex::new(c)))
        });
        Self { db, native }
    }
}

#[async_trait]
impl DocumentStore for EmbeddedDocuments {
    async fn ensure_collection(&self, _spec: &CollectionSpec) -> Result<()> {
        // One table holds every collection; its indexes are in the migration.
        Ok(())
    }

    async fn upsert(&self, spec: &CollectionSpec, docs: &[Document]) -> Result<()> {
        // One statement may not touch a row twice (PostgreSQL refuses it): the last version
        // of each key, in order.
        let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, d) in docs.iter().enumerate() {
            last.insert(d.key.as_str(), i);
        }
        let docs: Vec<&Document> = docs
            .iter()
            .enumerate()
            .filter(|(i, d)| last.get(d.key.as_str()) == Some(i))
            .map(|(_, d)| d)
            .collect();
        if let Some(native) = self.native.clone() {
            let collection = spec.name.clone();
            let rows: Vec<(String, String, i64, i64, String)> = docs
                .iter()
                .map(|d| {
                    (
                        d.key.clone(),
                        d.subject_ref.clone(),
                        d.ts,
                        i64::from(d.contract_version),
                        serde_json::to_string(&d.fields).unwrap_or_default(),
                    )
                })
                .collect();
            return tokio::task::spawn_blocking(move || native.upsert(&collection, &rows))
                .await
                .unwrap_or_else(|e| Err(Error::Documents(format!("upsert task: {e}"))));
        }
        let mut tx = self.db.pool().begin().await?;
        for chunk in docs.chunks(UPSERT_ROWS) {
            let sql = upsert_sql(&value_rows(self.db.backend(), chunk.len(), 7));
            let mut q = sqlx::query::<Any>(&sql);
            for d in chunk {
                q = q
                    .bind(spec.name.clone())
                    .bind(d.key.clone())
                    .bind(d.subject_ref.clone())
                    .bind(subject_key(&d.subject_ref))
                    .bind(d.ts)
                    .bind(i64::from(d.contract_version))
                    .bind(serde_json::Value::Object(d.fields.clone()).to_string());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn find(&self, spec: &CollectionSpec, query: &Query) -> Result<Vec<Document>> {
        let sql = find_sql(self.db.backend(), query);
        let mut q = sqlx::query::<Any>(&sql).bind(spec.name.clone());
        if let Some(s) = &query.subject_ref {
            q = q.bind(subject_key(s)).bind(s.clone());
        }
        if let Some(f) = query.from {
            q = q.bind(f);
        }
        if let Some(t) = query.to {
            q = q.bind(t);
        }
        if let Some((ts, key)) = &query.after {
            q = q.bind(*ts).bind(*ts).bind(key.clone());
        }
        q = q.bind(i64::try_from(capped(query.limit)).unwrap_or(1));
        let rows = q.fetch_all(self.db.pool()).await?;
        rows.into_iter()
            .map(|row| {
                let body: String = row.try_get(4)?;
                let fields = serde_json::from_str(&body)
                    .map_err(|_| Error::Documents("a stored document is not JSON".into()))?;
                Ok(Document {
                    key: row.try_get(0)?,
                    subject_ref: row.try_get(1)?,
                    ts: row.try_get(2)?,
                    contract_version: u32::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0),
                    fields,
                })
            })
            .collect()
    }

    async fn delete_subject(&self, spec: &CollectionSpec, subject_ref: &str) -> Result<u64> {
        let done = sqlx::query::<Any>(&delete_subject_sql(self.db.backend()))
            .bind(spec.name.clone())
            .bind(subject_key(subject_ref))
            .bind(subject_ref.to_owned())
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    async fn count(&self, spec: &CollectionSpec, subject_ref: Option<&str>) -> Result<u64> {
        let sql = match subject_ref {
            Some(_) => count_subject_sql(self.db.backend()),
            None => "SELECT COUNT(*) FROM documents WHERE collection = $1".to_owned(),
        };
        let mut q = sqlx::query::<Any>(&sql).bind(spec.name.clone());
        if let Some(s) = subject_ref {
            q = q.bind(subject_key(s)).bind(s.to_owned());
        }
        let row = q.fetch_one(self.db.pool()).await?;
        Ok(u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement on one subject reads it through the subject index on SQLite.
    #[tokio::test]
    async fn subject_statements_use_the_subject_index() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = warden_audit::testkit::fresh_sqlite(dir.path()).await;
        let subject = Query {
            subject_ref: Some("sr_1".into()),
            limit: 10,
            ..Query::default()
        };
        let ranged = Query {
            from: Some(0),
            to: Some(1),
            after: Some((0, "k".into())),
            ..subject.clone()
        };
        for sql in [
            find_sql(Backend::Sqlite, &subject),
            find_sql(Backend::Sqlite, &ranged),
            delete_subject_sql(Backend::Sqlite),
            count_subject_sql(Backend::Sqlite),
        ] {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut q = sqlx::query::<Any>(&explain)
                .bind("c")
                .bind(1_i64)
                .bind("sr_1");
            for _ in 4..=sql.matches('$').count() {
                q = q.bind(0_i64);
            }
            let plan: Vec<String> = q
                .fetch_all(db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(3))
                .collect();
            assert!(
                plan.iter().any(|d| d.contains(
                    "USING INDEX documents_subject_key (collection=? AND subject_key=?)"
                )),
                "{sql}: {plan:?}"
            );
        }
    }
}
