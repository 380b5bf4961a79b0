//! [`DocumentStore`] on MongoDB (the official `mongodb` driver). A document is the record's
//! protected fields plus `_id` (the record key), `_ts` (its time, Unix microseconds) and
//! `_v` (its contract version); the subject field holds the `subject_ref`. Queries and
//! indexes name the record-key field rather than `_id` (the same value), which keeps them
//! within what MongoDB-compatible servers index.

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document as BsonDocument};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, IndexModel};
use serde_json::{Map, Value};

use super::{capped, CollectionSpec, Document, DocumentStore, Query};
use crate::{Error, Result};

/// Documents per `insert_many`.
const BATCH: usize = 1000;

fn mongo_err(context: &str, e: &mongodb::error::Error) -> Error {
    // The code and kind only: server messages can quote a key.
    let code = match e.kind.as_ref() {
        ErrorKind::Command(c) => format!(" (code {})", c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
            format!(" (code {})", w.code)
        }
        ErrorKind::InsertMany(m) => {
            let codes: std::collections::BTreeSet<i32> = m
                .write_errors
                .iter()
                .flatten()
                .map(|w| w.code)
                .chain(m.write_concern_error.iter().map(|w| w.code))
                .collect();
            format!(" (codes {codes:?})")
        }
        _ => String::new(),
    };
    let kind = match e.kind.as_ref() {
        ErrorKind::Io(_) | ErrorKind::ServerSelection { .. } => "unreachable",
        ErrorKind::Authentication { .. } => "authentication failed",
        ErrorKind::Command(_) | ErrorKind::Write(_) | ErrorKind::InsertMany(_) => "refused",
        _ => "failed",
    };
    Error::Documents(format!("mongodb {context}: {kind}{code}"))
}

/// Documents in a MongoDB database.
#[derive(Debug, Clone)]
pub struct MongoDocuments {
    db: mongodb::Database,
}

impl MongoDocuments {
    /// Connects to `url` (`mongodb://host:port/database`; the database defaults to `warden`).
    ///
    /// # Errors
    /// A URL the driver refuses.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = Client::with_uri_str(url)
            .await
            .map_err(|e| mongo_err("connect", &e))?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database("warden"));
        Ok(Self { db })
    }

    fn collection(&self, spec: &CollectionSpec) -> Collection<BsonDocument> {
        self.db.collection(&spec.name)
    }
}

fn to_bson(spec: &CollectionSpec, d: &Document) -> BsonDocument {
    let mut out = BsonDocument::new();
    out.insert("_id", d.key.clone());
    for (k, v) in &d.fields {
        out.insert(k.clone(), mongodb::bson::to_bson(v).unwrap_or(Bson::Null));
    }
    // The key as text, as `_id` holds it (pages continue from a (time, key) cursor).
    out.insert(spec.key_field.clone(), d.key.clone());
    out.insert(spec.subject_field.clone(), d.subject_ref.clone());
    out.insert("_ts", d.ts);
    out.insert("_v", i64::from(d.contract_version));
    out
}

fn from_bson(spec: &CollectionSpec, mut doc: BsonDocument) -> Result<Document> {
    let bad = || Error::Documents(format!("a document in {} is not Warden's", spec.name));
    let key = match doc.remove("_id") {
        Some(Bson::String(s)) => s,
        _ => return Err(bad()),
    };
    let number = |b: Option<Bson>| match b {
        Some(Bson::Int64(n)) => Some(n),
        Some(Bson::Int32(n)) => Some(i64::from(n)),
        Some(Bson::Double(f)) => Some(f as i64),
        _ => None,
    };
    let ts = number(doc.remove("_ts")).ok_or_else(bad)?;
    let version = number(doc.remove("_v")).ok_or_else(bad)?;
    let subject_ref = match doc.get(&spec.subject_field) {
        Some(Bson::String(s)) => s.clone(),
        _ => return Err(bad()),
    };
    let fields: Map<String, Value> = doc
        .into_iter()
        .map(|(k, v)| (k, v.into_relaxed_extjson()))
        .collect();
    Ok(Document {
        key,
        subject_ref,
        ts,
        contract_version: u32::try_from(version).unwrap_or(0),
        fields,
    })
}

#[async_trait]
impl DocumentStore for MongoDocuments {
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<()> {
        let c = self.collection(spec);
        let indexes = [
            IndexModel::builder()
                .keys(doc! { spec.key_field.clone(): 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! { spec.subject_field.clone(): 1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "_ts": 1, spec.key_field.clone(): 1 })
                .build(),
        ];
        c.create_indexes(indexes)
            .await
            .map_err(|e| mongo_err("create indexes", &e))?;
        Ok(())
    }

    async fn upsert(&self, spec: &CollectionSpec, docs: &[Document]) -> Result<()> {
        let c = self.collection(spec);
        for chunk in docs.chunks(BATCH) {
            let bson: Vec<BsonDocument> = chunk.iter().map(|d| to_bson(spec, d)).collect();
            // New keys (the common case) in one round trip; keys already stored are replaced
            // one by one afterwards.
            let replace: Vec<usize> = match c.insert_many(&bson).ordered(false).await {
                Ok(_) => Vec::new(),
                Err(e) => match e.kind.as_ref() {
                    // Per-document refusals (duplicate keys: 11000 from MongoDB, other codes
                    // from some wire-compatible servers) get a second, per-document attempt
                    // as a replacement; what fails then is a real error.
                    ErrorKind::InsertMany(m)
                        if m.write_concern_error.is_none() && m.write_errors.is_some() =>
                    {
                        m.write_errors
                            .as_ref()
                            .map(|w| w.iter().map(|w| w.index).collect())
                            .unwrap_or_default()
                    }
                    _ => return Err(mongo_err("insert", &e)),
                },
            };
            for i in replace {
                let d = &bson[i];
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                c.replace_one(doc! { "_id": id }, d)
                    .upsert(true)
                    .await
                    .map_err(|e| mongo_err("replace", &e))?;
            }
        }
        Ok(())
    }

    async fn find(&self, spec: &CollectionSpec, query: &Query) -> Result<Vec<Document>> {
        let mut filter = BsonDocument::new();
        if let Some(s) = &query.subject_ref {
            filter.insert(spec.subject_field.clone(), s.clone());
        }
        let mut range = BsonDocument::new();
        if let Some(f) = query.from {
            range.insert("$gte", f);
        }
        if let Some(t) = query.to {
            range.insert("$lt", t);
        }
        if !range.is_empty() {
            filter.insert("_ts", range);
        }
        if let Some((ts, key)) = &query.after {
            filter.insert(
                "$or",
                vec![
                    Bson::Document(doc! { "_ts": { "$gt": *ts } }),
                    Bson::Document(
                        doc! { "_ts": *ts, spec.key_field.clone(): { "$gt": key.clone() } },
                    ),
                ],
            );
        }
        let limit = i64::try_from(capped(query.limit)).unwrap_or(1);
        let cursor = self
            .collection(spec)
            .find(filter)
            .sort(doc! { "_ts": 1, spec.key_field.clone(): 1 })
            .limit(limit)
            .await
            .map_err(|e| mongo_err("find", &e))?;
        let docs: Vec<BsonDocument> = cursor
            .try_collect()
            .await
            .map_err(|e| mongo_err("find", &e))?;
        docs.into_iter().map(|d| from_bson(spec, d)).collect()
    }

    async fn delete_subject(&self, spec: &CollectionSpec, subject_ref: &str) -> Result<u64> {
        let done = self
            .collection(spec)
            .delete_many(doc! { spec.subject_field.clone(): subject_ref })
            .await
            .map_err(|e| mongo_err("delete", &e))?;
        Ok(done.deleted_count)
    }

    async fn count(&self, spec: &CollectionSpec, subject_ref: Option<&str>) -> Result<u64> {
        let filter = match subject_ref {
            Some(s) => doc! { spec.subject_field.clone(): s },
            None => doc! {},
        };
        self.collection(spec)
            .count_documents(filter)
            .await
            .map_err(|e| mongo_err("count", &e))
    }

    fn kind(&self) -> &'static str {
        "mongodb"
    }
}
