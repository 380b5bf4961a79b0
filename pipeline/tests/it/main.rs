//! warden-pipeline's integration tests: the stream and document-store contract suites, each
//! run against every implementation — the embedded ones on SQLite and PostgreSQL, Kafka
//! against the real broker (tansu) and MongoDB against the real wire server (nx-27017) that
//! `scripts/dev-services.sh` starts.
#![allow(clippy::unwrap_used)]

mod docs;
mod lake;
mod loader;
mod streams;

use std::sync::Arc;

use warden_audit::testkit::{fresh_postgres, fresh_sqlite};
use warden_pipeline::docs::embedded::EmbeddedDocuments;
use warden_pipeline::docs::mongo::MongoDocuments;
use warden_pipeline::docs::DocumentStore;
use warden_pipeline::stream::embedded::EmbeddedStream;
use warden_pipeline::stream::kafka::KafkaStream;
use warden_pipeline::stream::Stream;

/// Keeps a test's temporary directory alive.
pub struct Guard(#[allow(dead_code)] Option<tempfile::TempDir>);

/// The broker the Kafka tests use; a test that needs it and does not find it fails.
pub fn kafka_brokers() -> String {
    std::env::var("WARDEN_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "WARDEN_TEST_KAFKA is not set: run the tests with scripts/test.sh, or first \
             eval \"$(scripts/dev-services.sh)\""
        )
    })
}

/// The MongoDB-wire server the document tests use.
pub fn mongodb_url() -> String {
    std::env::var("WARDEN_TEST_MONGODB_URL").unwrap_or_else(|_| {
        panic!(
            "WARDEN_TEST_MONGODB_URL is not set: run the tests with scripts/test.sh, or first \
             eval \"$(scripts/dev-services.sh)\""
        )
    })
}

/// Producer settings for tansu 0.6, the test broker: it serves a fetch only from the batch
/// that *starts* at the requested offset, so a group resuming from a commit inside a batch
/// would skip the rest of that batch. One record per batch keeps every offset a batch start.
/// (Apache Kafka serves the batch containing the offset; production keeps librdkafka's
/// batching.)
pub const TANSU_PRODUCER: &[(&str, &str)] = &[("batch.num.messages", "1")];

/// A name no other test uses (topics, groups, collections, databases).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
    Remote,
}

pub async fn stream(backend: Backend) -> (Arc<dyn Stream>, Guard) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let (db, _) = fresh_sqlite(dir.path()).await;
            (Arc::new(EmbeddedStream::new(db)), Guard(Some(dir)))
        }
        Backend::Postgres => {
            let (db, _) = fresh_postgres().await;
            (Arc::new(EmbeddedStream::new(db)), Guard(None))
        }
        Backend::Remote => (
            Arc::new(KafkaStream::with_options(&kafka_brokers(), 1, TANSU_PRODUCER).unwrap()),
            Guard(None),
        ),
    }
}

pub async fn documents(backend: Backend) -> (Arc<dyn DocumentStore>, Guard) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let (db, _) = fresh_sqlite(dir.path()).await;
            (Arc::new(EmbeddedDocuments::new(db)), Guard(Some(dir)))
        }
        Backend::Postgres => {
            let (db, _) = fresh_postgres().await;
            (Arc::new(EmbeddedDocuments::new(db)), Guard(None))
        }
        Backend::Remote => {
            let url = format!("{}/{}", mongodb_url(), unique("t"));
            (
                Arc::new(MongoDocuments::connect(&url).await.unwrap()),
                Guard(None),
            )
        }
    }
}

/// Runs each listed async test body on the embedded backend over SQLite and PostgreSQL and on
/// the remote one (Kafka or MongoDB): `on_every_backend!(a, b)` makes `sqlite::a`,
/// `postgres::a`, `remote::a`, ...
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Postgres).await })*
        }
        mod remote {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Remote).await })*
        }
    };
}
