//! [`DocumentStore`] as a table in the state database (`documents`).

use async_trait::async_trait;
use sqlx::{Any, Row};
use warden_audit::db::value_rows;
use warden_audit::Db;

use super::{capped, CollectionSpec, Document, DocumentStore, Query};
use crate::{Error, Result};

/// Rows per multi-row upsert (six parameters each).
const UPSERT_ROWS: usize = 200;

/// Documents in the state database.
#[derive(Debug, Clone)]
pub struct EmbeddedDocuments {
    db: Db,
}

impl EmbeddedDocuments {
    pub fn new(db: Db) -> Self {
        Self { db }
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
        let mut tx = self.db.pool().begin().await?;
        for chunk in docs.chunks(UPSERT_ROWS) {
            let rows = value_rows(chunk.len(), 6);
            let sql = format!(
                "INSERT INTO documents (collection, record_key, subject_ref, ts, contract_version, body) \
                 VALUES {} ON CONFLICT (collection, record_key) DO UPDATE SET \
                 subject_ref = excluded.subject_ref, ts = excluded.ts, \
                 contract_version = excluded.contract_version, body = excluded.body",
                rows
            );
            let mut q = sqlx::query::<Any>(&sql);
            for d in chunk {
                q = q
                    .bind(spec.name.clone())
                    .bind(d.key.clone())
                    .bind(d.subject_ref.clone())
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
        let mut clauses = vec!["collection = $1".to_owned()];
        let mut n = 1;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if query.subject_ref.is_some() {
            clauses.push(format!("subject_ref = {}", param()));
        }
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
        let sql = format!(
            "SELECT record_key, subject_ref, ts, contract_version, body FROM documents \
             WHERE {} ORDER BY ts, record_key LIMIT {}",
            clauses.join(" AND "),
            param()
        );
        let mut q = sqlx::query::<Any>(&sql).bind(spec.name.clone());
        if let Some(s) = &query.subject_ref {
            q = q.bind(s.clone());
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
        let done =
            sqlx::query::<Any>("DELETE FROM documents WHERE collection = $1 AND subject_ref = $2")
                .bind(spec.name.clone())
                .bind(subject_ref.to_owned())
                .execute(self.db.pool())
                .await?;
        Ok(done.rows_affected())
    }

    async fn count(&self, spec: &CollectionSpec, subject_ref: Option<&str>) -> Result<u64> {
        let row = match subject_ref {
            Some(s) => sqlx::query::<Any>(
                "SELECT COUNT(*) FROM documents WHERE collection = $1 AND subject_ref = $2",
            )
            .bind(spec.name.clone())
            .bind(s.to_owned()),
            None => sqlx::query::<Any>("SELECT COUNT(*) FROM documents WHERE collection = $1")
                .bind(spec.name.clone()),
        }
        .fetch_one(self.db.pool())
        .await?;
        Ok(u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}
