//! The document-store contract, on the embedded store (SQLite, PostgreSQL) and on MongoDB.

use std::collections::BTreeSet;

use serde_json::{json, Map};
use warden_pipeline::docs::{CollectionSpec, Document, DocumentStore, Query};

use crate::{documents, unique, Backend};

crate::on_every_backend!(
    upserts_replace_by_key_and_finds_page_in_time_order,
    subjects_are_deleted_whole
);

fn spec() -> CollectionSpec {
    CollectionSpec {
        name: unique("c"),
        key_field: "transaction_id".to_owned(),
        subject_field: "user_id".to_owned(),
    }
}

fn doc(i: usize, amount: f64) -> Document {
    // The three subjects share their subject key (their first 16 hex digits are zeros): the
    // embedded store tells them apart by the whole reference.
    let subject = format!("sr_{:032x}", i % 3);
    let mut fields = Map::new();
    fields.insert("transaction_id".into(), json!(format!("tx-{i:04}")));
    fields.insert("user_id".into(), json!(subject));
    fields.insert("amount".into(), json!(amount));
    fields.insert("count".into(), json!(i));
    fields.insert("card_number".into(), json!("tok_4242_abcdefabcdefabcd"));
    Document {
        key: format!("tx-{i:04}"),
        subject_ref: subject,
        // Every third shares a time with its neighbour, so (time, key) decides the order.
        ts: 1_700_000_000_000_000 + (i as i64 / 2) * 1_000_000,
        contract_version: 1,
        fields,
    }
}

async fn all_pages(
    store: &dyn DocumentStore,
    spec: &CollectionSpec,
    mut q: Query,
) -> Vec<Document> {
    let mut out: Vec<Document> = Vec::new();
    loop {
        let page = store.find(spec, &q).await.unwrap();
        assert!(page.len() <= q.limit);
        let Some(last) = page.last() else { break };
        q.after = Some((last.ts, last.key.clone()));
        out.extend(page);
    }
    out
}

async fn upserts_replace_by_key_and_finds_page_in_time_order(backend: Backend) {
    let (store, _g) = documents(backend).await;
    let spec = spec();
    store.ensure_collection(&spec).await.unwrap();
    store.ensure_collection(&spec).await.unwrap(); // idempotent
    let docs: Vec<Document> = (0..30).map(|i| doc(i, 10.0)).collect();
    store.upsert(&spec, &docs).await.unwrap();
    // A replayed, partly changed batch: still one document per key, the latest.
    let mut again: Vec<Document> = (20..40).map(|i| doc(i, 1.0)).collect();
    // The same key twice in one batch: the later one wins.
    again.extend((20..40).map(|i| doc(i, 99.5)));
    store.upsert(&spec, &again).await.unwrap();
    assert_eq!(store.count(&spec, None).await.unwrap(), 40);

    let everything = all_pages(
        store.as_ref(),
        &spec,
        Query {
            limit: 7,
            ..Query::default()
        },
    )
    .await;
    let keys: Vec<&str> = everything.iter().map(|d| d.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "(time, key) order");
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>().len(),
        40,
        "no page repeats a document"
    );
    let d25 = everything.iter().find(|d| d.key == "tx-0025").unwrap();
    assert_eq!(d25.fields["amount"].as_f64(), Some(99.5));
    assert_eq!(d25.fields["count"].as_i64(), Some(25));
    assert_eq!(
        d25.fields["card_number"],
        json!("tok_4242_abcdefabcdefabcd")
    );
    assert_eq!(d25.subject_ref, doc(25, 0.0).subject_ref);
    assert_eq!(d25.ts, doc(25, 0.0).ts);
    assert_eq!(d25.contract_version, 1);
    let d5 = everything.iter().find(|d| d.key == "tx-0005").unwrap();
    assert_eq!(d5.fields["amount"].as_f64(), Some(10.0));

    // Subject and time range.
    let subject = doc(1, 0.0).subject_ref;
    let (from, to) = (doc(10, 0.0).ts, doc(30, 0.0).ts);
    let q = Query {
        subject_ref: Some(subject.clone()),
        from: Some(from),
        to: Some(to),
        limit: 4,
        ..Query::default()
    };
    let got: Vec<String> = all_pages(store.as_ref(), &spec, q)
        .await
        .into_iter()
        .map(|d| d.key)
        .collect();
    let want: Vec<String> = (0..40)
        .map(|i| doc(i, 0.0))
        .filter(|d| d.subject_ref == subject && d.ts >= from && d.ts < to)
        .map(|d| d.key)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    // The limit is capped.
    let capped = store
        .find(
            &spec,
            &Query {
                limit: 1_000_000,
                ..Query::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(capped.len(), 40);
    let page = store
        .find(
            &spec,
            &Query {
                limit: 0,
                ..Query::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1, "a zero limit reads as one");
}

async fn subjects_are_deleted_whole(backend: Backend) {
    let (store, _g) = documents(backend).await;
    let spec = spec();
    store.ensure_collection(&spec).await.unwrap();
    let docs: Vec<Document> = (0..30).map(|i| doc(i, 1.0)).collect();
    store.upsert(&spec, &docs).await.unwrap();
    let gone = doc(0, 0.0).subject_ref;
    assert_eq!(store.count(&spec, Some(&gone)).await.unwrap(), 10);
    assert_eq!(store.delete_subject(&spec, &gone).await.unwrap(), 10);
    assert_eq!(store.delete_subject(&spec, &gone).await.unwrap(), 0);
    assert_eq!(store.count(&spec, Some(&gone)).await.unwrap(), 0);
    assert_eq!(store.count(&spec, None).await.unwrap(), 20);
    let left = store
        .find(
            &spec,
            &Query {
                subject_ref: Some(gone),
                limit: 100,
                ..Query::default()
            },
        )
        .await
        .unwrap();
    assert!(left.is_empty());
    // Other collections are untouched.
    let other = CollectionSpec {
        name: unique("c"),
        ..spec.clone()
    };
    store.ensure_collection(&other).await.unwrap();
    assert_eq!(store.count(&other, None).await.unwrap(), 0);
}

/// The subject key of the embedded store: what the store writes, what migration 0009 computes
/// for the documents stored before it, and the index the lookups use.
mod subject_key {
    use sqlx::{Any, Row};
    use warden_audit::testkit::{fresh_postgres, fresh_sqlite};
    use warden_audit::Db;
    use warden_pipeline::docs::embedded::{subject_key, EmbeddedDocuments};
    use warden_pipeline::docs::{Document, DocumentStore};

    fn refs() -> Vec<String> {
        let mut refs: Vec<String> = (0..20_u128)
            .map(|i| {
                format!(
                    "sr_{:032x}",
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                )
            })
            .collect();
        refs.extend(
            [
                "sr_ffffffffffffffff0000000000000000",
                "sr_80000000000000000000000000000001",
                "sr_7fffffffffffffff0000000000000000",
                "sr_00000000000000010000000000000000",
                "sr_ABCDEF0123456789abcdef0123456789",
                "sr_0123",
                "u-1",
                "",
            ]
            .map(str::to_owned),
        );
        refs
    }

    async fn keys(db: &Db, collection: &str) -> Vec<(String, i64)> {
        sqlx::query::<Any>(
            "SELECT subject_ref, subject_key FROM documents WHERE collection = $1 \
             ORDER BY record_key",
        )
        .bind(collection.to_owned())
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    async fn the_migration_keys_subjects_as_the_store_does(db: Db, migration: &str) {
        let store = EmbeddedDocuments::new(db.clone());
        let spec = super::spec();
        let refs = refs();
        let docs: Vec<Document> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| Document {
                subject_ref: r.clone(),
                ..super::doc(i, 1.0)
            })
            .collect();
        store.upsert(&spec, &docs).await.unwrap();
        let stored = keys(&db, &spec.name).await;
        assert_eq!(stored.len(), refs.len());
        for (r, k) in &stored {
            assert_eq!(*k, subject_key(r), "{r}");
        }
        assert_eq!(subject_key("sr_ffffffffffffffff0000000000000000"), -1);
        assert_eq!(subject_key("sr_7fffffffffffffff0000000000000000"), i64::MAX);
        assert_eq!(subject_key("sr_00000000000000010000000000000000"), 1);
        for other in ["sr_ABCDEF0123456789abcdef0123456789", "sr_0123", "u-1", ""] {
            assert_eq!(subject_key(other), 0, "{other}");
        }

        // The migration's own statement, over the same rows.
        sqlx::query::<Any>("UPDATE documents SET subject_key = 7")
            .execute(db.pool())
            .await
            .unwrap();
        let start = migration.find("UPDATE documents").unwrap();
        let len = migration[start..].find(';').unwrap();
        sqlx::query::<Any>(&migration[start..start + len])
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(keys(&db, &spec.name).await, stored);

        // Each is found, and only it.
        for r in &refs {
            assert_eq!(store.count(&spec, Some(r)).await.unwrap(), 1, "{r}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = fresh_sqlite(dir.path()).await;
        the_migration_keys_subjects_as_the_store_does(
            db,
            include_str!("../../../migrations/sqlite/0009_documents_subject_key.sql"),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let (db, _) = fresh_postgres().await;
        the_migration_keys_subjects_as_the_store_does(
            db,
            include_str!("../../../migrations/postgres/0009_documents_subject_key.sql"),
        )
        .await;
    }
}
