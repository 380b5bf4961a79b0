//! Document stores: one collection per dataset, protected records upserted by their record
//! key, found by key, subject and time.
//!
//! Two implementations with one contract (`tests/it/docs.rs` runs the same suite on both):
//! [`mongo::MongoDocuments`] (the `mongodb` driver) and [`embedded::EmbeddedDocuments`], a
//! table in the state database for the one-binary mode.

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::Result;

pub mod embedded;
pub mod mongo;

/// Most documents returned by one `find`.
pub const MAX_FIND: usize = 1000;

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The record key's value (unique in the collection).
    pub key: String,
    pub subject_ref: String,
    /// The record's time, Unix microseconds.
    pub ts: i64,
    pub contract_version: u32,
    /// The protected fields.
    pub fields: Map<String, Value>,
}

/// How a dataset's collection is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionSpec {
    pub name: String,
    /// The field holding the record key (unique index).
    pub key_field: String,
    /// The field holding the subject (its `subject_ref`; indexed).
    pub subject_field: String,
}

/// A page of a collection, in (time, key) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub subject_ref: Option<String>,
    /// From this time on (inclusive), Unix microseconds.
    pub from: Option<i64>,
    /// Before this time (exclusive), Unix microseconds.
    pub to: Option<i64>,
    /// Strictly after this (time, key): the cursor of the previous page.
    pub after: Option<(i64, String)>,
    /// At most this many (capped at [`MAX_FIND`]).
    pub limit: usize,
}

/// A document backend.
///
/// Contract, for every implementation: `upsert` replaces a document with the same key (so a
/// replayed batch leaves one document per key, the latest); `find` returns documents in
/// ascending (time, key) order, filtered by subject and time range, after the cursor;
/// `delete_subject` removes every document of a subject and says how many.
#[async_trait]
pub trait DocumentStore: Send + Sync + std::fmt::Debug + 'static {
    /// Creates the collection and its indexes (record key unique, subject, time) if missing.
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<()>;
    /// Inserts or replaces documents by key.
    async fn upsert(&self, spec: &CollectionSpec, docs: &[Document]) -> Result<()>;
    /// A page of documents.
    async fn find(&self, spec: &CollectionSpec, query: &Query) -> Result<Vec<Document>>;
    /// Removes a subject's documents; how many.
    async fn delete_subject(&self, spec: &CollectionSpec, subject_ref: &str) -> Result<u64>;
    /// How many documents (of one subject, if given).
    async fn count(&self, spec: &CollectionSpec, subject_ref: Option<&str>) -> Result<u64>;
    /// The backend's name for logs and metrics (`mongodb`, `embedded`).
    fn kind(&self) -> &'static str;
}

/// The limit actually applied.
pub(crate) fn capped(limit: usize) -> usize {
    limit.clamp(1, MAX_FIND)
}
