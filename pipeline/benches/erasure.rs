//! Erasure benchmark (figures, not assertions): one subject erased from a Delta table of ten
//! million rows partitioned by subject bucket and from a collection of a million documents —
//! wall time, bytes rewritten and the share of the table rewritten — beside the same delete
//! on the same rows in a table without subject buckets.
//!
//! `scripts/bench.sh` runs it; `WARDEN_BENCH_ROWS` and `WARDEN_BENCH_DOCS` change the sizes.

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::time::Instant;

use deltalake::datafusion::prelude::{col, lit};
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use serde_json::json;
use warden_pipeline::docs::embedded::EmbeddedDocuments;
use warden_pipeline::docs::{Document, DocumentStore};
use warden_pipeline::lake::{to_batch, Lake, LakeConfig, SUBJECT_REF};
use warden_pipeline::loader::collection_spec;
use warden_pipeline::StreamedRecord;
use warden_policy::contract::Contract;

/// Rows per commit (a table after the loaders' batches were compacted).
const COMMIT_ROWS: usize = 100_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A pseudonym-shaped `subject_ref` for subject number `n`.
fn subject_ref(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = String::from("sr_");
    for _ in 0..4 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// The subject of row `i`: rows scattered over `subjects` subjects.
fn subject_of(i: usize, subjects: u64) -> u64 {
    (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) % subjects
}

fn record(i: usize, subjects: u64) -> StreamedRecord {
    let sr = subject_ref(subject_of(i, subjects));
    let fields = json!({
        "transaction_id": format!("t-{i:010}"),
        "user_id": sr,
        "card_number": format!("tok_{:016x}4242", i.wrapping_mul(7919)),
        "email": format!("enc:v1:{:064x}{:032x}", i.wrapping_mul(31), i),
        "email__bidx": format!("{:064x}", i.wrapping_mul(131)),
        "ip": "198.51.100.0",
        "amount": (i % 1000) as f64 / 4.0,
        "country": "DE",
        "created_at": 1_790_000_000_000_000_i64 + i as i64,
    });
    StreamedRecord {
        dataset: "payments".into(),
        subject_ref: sr,
        contract_version: 1,
        fields: fields.as_object().unwrap().clone(),
    }
}

fn sizes(table: &DeltaTable) -> HashMap<String, i64> {
    table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| (f.path().into_owned(), f.size()))
        .collect()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let rows = env_or("WARDEN_BENCH_ROWS", 10_000_000);
    let docs = env_or("WARDEN_BENCH_DOCS", 1_000_000);
    // About ten rows per subject.
    let subjects = (rows as u64 / 10).max(1);
    let contract =
        Contract::from_toml(include_str!("../../config/datasets/payments.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(&LakeConfig {
        root: dir.path().join("lake").display().to_string(),
        storage_options: HashMap::new(),
    })
    .unwrap();
    std::fs::create_dir_all(dir.path().join("flat")).unwrap();
    let flat_url = url::Url::from_directory_path(dir.path().join("flat")).unwrap();
    let mut flat = DeltaTable::try_from_url(flat_url).await.unwrap();

    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let n = COMMIT_ROWS.min(rows - done);
        let recs: Vec<StreamedRecord> = (done..done + n).map(|i| record(i, subjects)).collect();
        let refs: Vec<&StreamedRecord> = recs.iter().collect();
        let batch = to_batch(&contract, &refs).unwrap();
        let table = lake.table(&contract).await.unwrap();
        table
            .write(vec![batch.clone()])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap();
        flat = flat
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_table_name("flat")
            .await
            .unwrap();
        done += n;
    }
    let table = lake.table(&contract).await.unwrap();
    let bucketed_files = sizes(&table);
    let flat_files = sizes(&flat);
    println!(
        "erasure  lake generated: {rows} rows in {} commits: {} files ({:.0} MiB) by subject bucket, {} files ({:.0} MiB) without, in {:.0} s",
        rows.div_ceil(COMMIT_ROWS),
        bucketed_files.len(),
        mib(bucketed_files.values().map(|s| *s as u64).sum()),
        flat_files.len(),
        mib(flat_files.values().map(|s| *s as u64).sum()),
        started.elapsed().as_secs_f64()
    );

    let db_dir = dir.path().join("docs");
    std::fs::create_dir_all(&db_dir).unwrap();
    let (db, _) = warden_audit::testkit::fresh_sqlite(&db_dir).await;
    let store = EmbeddedDocuments::new(db);
    let spec = collection_spec(&contract);
    store.ensure_collection(&spec).await.unwrap();
    let started = Instant::now();
    let mut done = 0;
    while done < docs {
        let n = 10_000.min(docs - done);
        let page: Vec<Document> = (done..done + n)
            .map(|i| {
                let r = record(i, subjects);
                Document {
                    key: format!("t-{i:010}"),
                    subject_ref: r.subject_ref,
                    ts: 1_790_000_000_000_000 + i as i64,
                    contract_version: 1,
                    fields: r.fields,
                }
            })
            .collect();
        store.upsert(&spec, &page).await.unwrap();
        done += n;
    }
    println!(
        "erasure  documents generated: {docs} in the embedded store (SQLite) in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // The subject of row 0: it has rows in both.
    let target = subject_ref(subject_of(0, subjects));
    let started = Instant::now();
    let lake_rows = lake.count_subject(&contract, &target).await.unwrap();
    let count_time = started.elapsed();
    let started = Instant::now();
    let deleted = lake
        .delete_subject(&contract, &target, "bench")
        .await
        .unwrap();
    let lake_time = started.elapsed();
    let started = Instant::now();
    let documents = store.delete_subject(&spec, &target).await.unwrap();
    let docs_time = started.elapsed();
    let started = Instant::now();
    let vacuumed = lake
        .vacuum(&contract, std::time::Duration::ZERO)
        .await
        .unwrap();
    let vacuum_time = started.elapsed();
    assert_eq!(deleted.rows, lake_rows);
    assert_eq!(lake.count_subject(&contract, &target).await.unwrap(), 0);
    println!(
        "erasure  the subject's {lake_rows} rows counted in its bucket in {:.2} s",
        count_time.as_secs_f64()
    );
    println!(
        "erasure  lake DELETE by subject bucket: {:.2} s, {} rows, {} files ({:.2} MiB) rewritten of {:.0} MiB: {:.3} % of the table",
        lake_time.as_secs_f64(),
        deleted.rows,
        deleted.files_removed,
        mib(deleted.bytes_removed),
        mib(deleted.bytes_table),
        100.0 * deleted.bytes_removed as f64 / deleted.bytes_table.max(1) as f64
    );
    println!(
        "erasure  documents delete_many: {:.3} s, {documents} of {docs} documents",
        docs_time.as_secs_f64()
    );
    println!(
        "erasure  lake VACUUM (zero retention): {:.2} s, {vacuumed} files removed",
        vacuum_time.as_secs_f64()
    );
    // What leaving no residue adds (issue 23): the log checkpointed and its earlier commits
    // removed, then the byte scan of the log and the subject's bucket.
    let started = Instant::now();
    let log_removed = lake.compact_log(&contract).await.unwrap();
    let compact_time = started.elapsed();
    let started = Instant::now();
    let needles = warden_pipeline::residue::Needles::new(&[target.as_bytes()]);
    let scan = lake
        .scan_residue(&contract, &target, &needles)
        .await
        .unwrap();
    let scan_time = started.elapsed();
    assert_eq!(scan.holding, 0);
    println!(
        "erasure  lake log checkpoint + cleanup: {:.2} s, {log_removed} commit files removed",
        compact_time.as_secs_f64()
    );
    println!(
        "erasure  byte scan of the log and the subject's bucket: {:.2} s, {} objects, {:.1} MiB",
        scan_time.as_secs_f64(),
        scan.objects,
        mib(scan.bytes)
    );
    let before = lake_time + docs_time + vacuum_time;
    println!(
        "erasure  one subject, lake + documents + vacuum: {:.2} s (baseline, before issue 23); \
         with log compaction and byte scan: {:.2} s",
        before.as_secs_f64(),
        (before + compact_time + scan_time).as_secs_f64()
    );

    // The same delete without subject buckets: every file is a candidate.
    let before = sizes(&flat);
    let started = Instant::now();
    let (flat, metrics) = flat
        .delete()
        .with_predicate(col(SUBJECT_REF).eq(lit(target.clone())))
        .await
        .unwrap();
    let flat_time = started.elapsed();
    let after = sizes(&flat);
    let removed: Vec<i64> = before
        .iter()
        .filter(|(p, _)| !after.contains_key(*p))
        .map(|(_, s)| *s)
        .collect();
    let removed_bytes: u64 = removed.iter().map(|s| *s as u64).sum();
    let total: u64 = before.values().map(|s| *s as u64).sum();
    println!(
        "erasure  lake DELETE without buckets:   {:.2} s, {} rows, {} files ({:.2} MiB) rewritten of {:.0} MiB: {:.3} % of the table",
        flat_time.as_secs_f64(),
        metrics.num_deleted_rows.unwrap_or(0),
        removed.len(),
        mib(removed_bytes),
        mib(total),
        100.0 * removed_bytes as f64 / total.max(1) as f64
    );
}
