//! Protection benchmarks (figures, not assertions): PAN tokenizations/s, batched and durable,
//! on SQLite and PostgreSQL — new card numbers (vaulted) and known ones (looked up).
//!
//! Run with `scripts/bench.sh` (it starts PostgreSQL and sets `WARDEN_TEST_POSTGRES_URL`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use warden_policy::keyring::{CachePolicy, KeyRing};
use warden_policy::keys::{KeyProvider, LocalKeyFile};
use warden_policy::pan::{luhn_valid, Tokenizer};
use warden_policy::vault::SqlVaultStore;
use warden_policy::SystemClock;

const BATCH: usize = 10_000;
const BATCHES: usize = 10;

fn pan(i: usize) -> String {
    let body = format!("4{i:014}");
    let check = (0..10)
        .find(|c| luhn_valid(format!("{body}{c}").as_bytes()))
        .unwrap();
    format!("{body}{check}")
}

async fn run(backend: &str, db: warden_audit::Db) {
    let vault = Arc::new(SqlVaultStore::new(db));
    let clock = Arc::new(SystemClock);
    let ring = Arc::new(KeyRing::new(
        Arc::new(LocalKeyFile::from_key(&[1u8; 32])),
        vault.clone(),
        clock.clone(),
        CachePolicy::default(),
    ));
    let t = Tokenizer::new(ring.clone(), vault, clock);
    let protector = warden_policy::protect::Protector::new(ring, t.clone());
    let batches: Vec<Vec<String>> = (0..BATCHES)
        .map(|b| (0..BATCH).map(|i| pan(b * BATCH + i)).collect())
        .collect();
    let started = Instant::now();
    for b in &batches {
        t.tokenize("payments", b).await.unwrap();
    }
    let d = started.elapsed();
    let n = (BATCH * BATCHES) as f64;
    println!(
        "tokenize {backend:8} new PANs, batches of {BATCH}, durable:   {:>9.0} /s",
        n / d.as_secs_f64()
    );
    let started = Instant::now();
    for b in &batches {
        t.tokenize("payments", b).await.unwrap();
    }
    let d = started.elapsed();
    println!(
        "tokenize {backend:8} known PANs (lookup), batches of {BATCH}: {:>9.0} /s",
        n / d.as_secs_f64()
    );
    let tokens = t.tokenize("payments", &batches[0]).await.unwrap();
    let started = Instant::now();
    t.detokenize("payments", &tokens).await.unwrap();
    println!(
        "tokenize {backend:8} detokenize, batch of {BATCH}:            {:>9.0} /s",
        BATCH as f64 / started.elapsed().as_secs_f64()
    );

    // Whole records: 1,000 subjects, an e-mail (encrypted + blind index), a card number and an
    // IP each, new subjects' keys created on the way.
    let contract = warden_policy::contract::Contract::from_toml(include_str!(
        "../../config/datasets/payments.toml"
    ))
    .unwrap();
    let records: Vec<serde_json::Map<String, serde_json::Value>> = (0..BATCH)
        .map(|i| {
            serde_json::json!({"transaction_id": format!("t-{i}"), "user_id": format!("user-{}", i % 1000),
                "card_number": pan(i), "email": format!("person{}@example.com", i % 1000), "ip": "203.0.113.9",
                "amount": 10, "created_at": 1_790_000_000})
            .as_object()
            .unwrap()
            .clone()
        })
        .collect();
    // Each batch is a copy made before its clock starts: protection takes the records.
    let (protector, contract) = (&protector, &contract);
    let protect_all = |batch: Vec<serde_json::Map<String, serde_json::Value>>| async move {
        let out = protector
            .protect_owned(contract, "fraud_detection", batch)
            .await
            .unwrap();
        assert_eq!(out.records.len(), BATCH);
    };
    let batch = records.clone();
    let started = Instant::now();
    protect_all(batch).await;
    println!(
        "protect  {backend:8} whole records (e-mail, PAN, IP), batch of {BATCH}: {:>9.0} /s",
        BATCH as f64 / started.elapsed().as_secs_f64()
    );
    // The same records again, five times: subjects' keys and cards known (cached), so this
    // is the per-record work itself (pseudonym, encryption, blind index, token lookup).
    let batches: Vec<_> = (0..5).map(|_| records.clone()).collect();
    let started = Instant::now();
    for batch in batches {
        protect_all(batch).await;
    }
    println!(
        "protect  {backend:8} whole records, known subjects and cards:  {:>9.0} /s",
        5.0 * BATCH as f64 / started.elapsed().as_secs_f64()
    );
    let cipher = LocalKeyFile::from_key(&[7u8; 32]);
    let started = Instant::now();
    for i in 0..100_000u32 {
        std::hint::black_box(
            cipher
                .wrap(format!("person{i}@example.com").as_bytes(), b"warden:pii:x")
                .await
                .unwrap(),
        );
    }
    println!(
        "protect  field encryptions (AES-256-GCM, in memory):          {:>9.0} /s",
        100_000.0 / started.elapsed().as_secs_f64()
    );
    // What scanning a `public` text value for card numbers and e-mail addresses costs at
    // the edge, on the values a record typically has (a key, a code, a time, a comment).
    let texts = [
        "t-0012345",
        "DE",
        "2026-11-24T10:00:00Z",
        "Order 12345 shipped to the warehouse in Lyon on 24 November, ref AB-778-2026, 2 parcels",
    ];
    let n = 1_000_000usize;
    let started = Instant::now();
    for i in 0..n {
        std::hint::black_box(warden_policy::detect::scan(std::hint::black_box(
            texts[i % 4],
        )));
    }
    println!(
        "protect  card/e-mail scan of a public text value (typical):   {:>9.0} ns each",
        started.elapsed().as_nanos() as f64 / n as f64
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = warden_audit::testkit::fresh_sqlite(dir.path()).await;
        run("sqlite", db).await;
        let (db, _) = warden_audit::testkit::fresh_postgres().await;
        run("postgres", db).await;
    });
}
