//! The lake: Delta tables from contracts, exactly-once appends per stream partition, one
//! partition per subject bucket, no personal column in the log's statistics — on local disk
//! and on S3 (moto).

use std::collections::{BTreeSet, HashMap};

use deltalake::datafusion::prelude::SessionContext;
use serde_json::{json, Map};
use warden_pipeline::lake::{self, Lake, LakeConfig};
use warden_pipeline::stages::Delivered;
use warden_pipeline::StreamedRecord;
use warden_policy::contract::Contract;

use crate::unique;

fn contract() -> Contract {
    let mut c =
        Contract::from_toml(include_str!("../../../config/datasets/payments.toml")).unwrap();
    c.lake_table = unique("payments");
    c
}

fn delivered(c: &Contract, partition: i32, offset: i64, i: usize) -> Delivered {
    // Pseudonyms look random: spread their leading bits.
    let k = (i % 7) as u32;
    let subject_ref = format!("sr_{:08x}{:024x}", k.wrapping_mul(0x9e37_79b9), k);
    let mut fields = Map::new();
    fields.insert("transaction_id".into(), json!(format!("tx-{i}")));
    fields.insert("user_id".into(), json!(subject_ref));
    fields.insert("card_number".into(), json!(format!("tok_{i:012}_4242")));
    fields.insert("email".into(), json!(format!("enc:v1:ciphertext{i}")));
    fields.insert("email__bidx".into(), json!(format!("bidx{i}")));
    fields.insert("ip".into(), json!("198.51.100.0"));
    fields.insert("amount".into(), json!(i as f64 + 0.5));
    fields.insert("country".into(), json!("DE"));
    fields.insert("created_at".into(), json!("2026-11-24T10:00:00Z"));
    Delivered {
        partition,
        offset,
        record: StreamedRecord {
            dataset: c.name.clone(),
            subject_ref,
            contract_version: c.version,
            fields,
        },
    }
}

async fn count(lake: &Lake, c: &Contract, sql_where: &str) -> i64 {
    let ctx = SessionContext::new();
    ctx.register_table("t", lake.provider(c).await.unwrap())
        .unwrap();
    let batches = ctx
        .sql(&format!("SELECT count(*) AS n FROM t {sql_where}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let col = batches[0].column(0);
    col.as_any()
        .downcast_ref::<deltalake::arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

async fn exactly_once_and_bucketed(root: String, options: HashMap<String, String>) {
    let config = LakeConfig {
        root,
        storage_options: options,
    };
    let lake = Lake::new(&config).unwrap();
    let c = contract();
    let topic = "payments";
    // Two stream partitions, 40 records each.
    let batch: Vec<Delivered> = (0..80)
        .map(|i| delivered(&c, (i % 2) as i32, (i / 2) as i64, i))
        .collect();
    // Another writer (a replica that held these partitions before a rebalance) has seen the
    // table before the first append.
    let other = Lake::new(&config).unwrap();
    other.table(&c).await.unwrap();
    assert_eq!(lake.append(&c, topic, &batch[..50]).await.unwrap(), 50);
    // Its stale view cannot append what the table holds: the commit conflicts on the
    // partitions' application transactions, and its retry skips what is there.
    assert!(
        other.append(&c, topic, &batch[..60]).await.is_err(),
        "a stale writer must not commit"
    );
    assert_eq!(other.append(&c, topic, &batch[..60]).await.unwrap(), 10);
    // A crash after the commit, before the stream commit: the whole poll comes again, and
    // with it the rest (the first attempt meets the other writer's commit, the retry does
    // not).
    assert!(lake.append(&c, topic, &batch).await.is_err());
    assert_eq!(
        lake.append(&c, topic, &batch).await.unwrap(),
        20,
        "only the new ones"
    );
    assert_eq!(lake.append(&c, topic, &batch).await.unwrap(), 0);
    assert_eq!(count(&lake, &c, "").await, 80);
    let table = lake.table(&c).await.unwrap();
    assert_eq!(
        Lake::committed(&table, &lake::app_id(topic, 0))
            .await
            .unwrap(),
        Some(40)
    );
    assert_eq!(
        Lake::committed(&table, &lake::app_id(topic, 1))
            .await
            .unwrap(),
        Some(40)
    );
    assert_eq!(
        Lake::committed(&table, &lake::app_id("other", 1))
            .await
            .unwrap(),
        None
    );

    // One subject, one bucket, one partition directory.
    let subject = batch[3].record.subject_ref.clone();
    let bucket = lake::subject_bucket(&subject);
    assert_eq!(
        count(&lake, &c, &format!("WHERE subject_ref = '{subject}'")).await,
        count(
            &lake,
            &c,
            &format!("WHERE subject_ref = '{subject}' AND subject_bucket = {bucket}")
        )
        .await
    );
    let files = lake.data_files(&c).await.unwrap();
    assert!(!files.is_empty());
    assert!(
        files.iter().all(|f| f.contains("subject_bucket=")),
        "{files:?}"
    );
    let buckets: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.split("subject_bucket=").nth(1)?.split('/').next())
        .collect();
    assert!(
        buckets.len() > 1,
        "seven subjects spread over buckets: {buckets:?}"
    );

    // Types from the contract; the statistics exclude protected columns.
    let ctx = SessionContext::new();
    ctx.register_table("t", lake.provider(&c).await.unwrap())
        .unwrap();
    let df = ctx.sql("SELECT * FROM t LIMIT 1").await.unwrap();
    let schema = df.schema().clone();
    assert!(
        schema.field_with_unqualified_name("cvv").is_err(),
        "pci.sad is never a column"
    );
    assert_eq!(
        schema
            .field_with_unqualified_name("amount")
            .unwrap()
            .data_type()
            .to_string(),
        "Float64"
    );
    assert!(schema
        .field_with_unqualified_name("created_at")
        .unwrap()
        .data_type()
        .to_string()
        .starts_with("Timestamp"));
    let config = table.snapshot().unwrap().metadata().configuration().clone();
    let stats = config
        .get("delta.dataSkippingStatsColumns")
        .unwrap()
        .clone();
    let stats: Vec<&str> = stats.split(',').collect();
    for protected in ["card_number", "email", "email__bidx", "ip", "user_id"] {
        assert!(
            !stats.contains(&protected),
            "{protected} in statistics: {stats:?}"
        );
    }
    for identifying in ["subject_ref", "transaction_id"] {
        assert!(
            !stats.contains(&identifying),
            "{identifying} (the subject, the record key) in statistics: {stats:?}"
        );
    }
    assert!(stats.contains(&"amount"));
}

/// A subject erased from a table made before statistics left the subject and key columns:
/// its delete, vacuum and log compaction leave no byte of its pseudonym or record keys in
/// the log or its bucket, while other subjects' rows and the exactly-once positions stay.
async fn erased_leaves_no_byte(root: String, options: HashMap<String, String>) {
    use warden_pipeline::residue::Needles;
    let config = LakeConfig {
        root,
        storage_options: options,
    };
    let c = contract();
    // The table as earlier versions made it: the subject and the record key in statistics.
    let table = Lake::new(&config).unwrap().table(&c).await.unwrap();
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(
            "delta.dataSkippingStatsColumns".to_owned(),
            "subject_ref,transaction_id,amount".to_owned(),
        )]))
        .await
        .unwrap();
    let lake = Lake::new(&config).unwrap();
    let batch: Vec<Delivered> = (0..28).map(|i| delivered(&c, 0, i as i64, i)).collect();
    assert_eq!(lake.append(&c, "payments", &batch).await.unwrap(), 28);
    let erased = batch[3].record.subject_ref.clone();
    let kept = batch[4].record.subject_ref.clone();
    // Its record keys: every seventh record is its.
    let keys: Vec<String> = (0..4).map(|k| format!("tx-{}", 3 + 7 * k)).collect();
    let mut needles: Vec<&[u8]> = vec![erased.as_bytes()];
    needles.extend(keys.iter().map(|k| k.as_bytes()));
    let needles = Needles::new(&needles);
    let before = lake.scan_residue(&c, &erased, &needles).await.unwrap();
    assert!(before.holding >= 1, "statistics name it: {before:?}");

    let deleted = lake.delete_subject(&c, &erased, "er_test").await.unwrap();
    assert_eq!(deleted.rows, 4);
    lake.vacuum(&c, std::time::Duration::ZERO).await.unwrap();
    let vacuumed = lake.scan_residue(&c, &erased, &needles).await.unwrap();
    assert!(
        vacuumed.holding >= 1,
        "the delete's predicate and the old statistics stay in the log: {vacuumed:?}"
    );
    let removed = lake.compact_log(&c).await.unwrap();
    assert!(removed >= 3, "the commits before the checkpoint: {removed}");
    let after = lake.scan_residue(&c, &erased, &needles).await.unwrap();
    assert!(after.objects >= 2 && after.bytes > 0, "{after:?}");
    assert_eq!(after.holding, 0, "{after:?}");
    // The kept subject's rows are read as before; its pseudonym is in its data files.
    assert_eq!(lake.count_subject(&c, &kept).await.unwrap(), 4);
    assert_eq!(lake.count_subject(&c, &erased).await.unwrap(), 0);
    let kept_scan = lake
        .scan_residue(&c, &kept, &Needles::new(&[kept.as_bytes()]))
        .await
        .unwrap();
    assert!(kept_scan.holding >= 1, "{kept_scan:?}");
    // The table is upgraded, and a fresh reader still knows what was appended exactly once.
    let stats = lake_stats(&lake, &c).await;
    assert!(
        !stats.contains("subject_ref") && !stats.contains("transaction_id"),
        "{stats}"
    );
    let fresh = Lake::new(&config).unwrap();
    assert_eq!(fresh.append(&c, "payments", &batch).await.unwrap(), 0);
    assert_eq!(count(&lake, &c, "").await, 24);
}

async fn lake_stats(lake: &Lake, c: &Contract) -> String {
    let table = lake.table(c).await.unwrap();
    let config = table.snapshot().unwrap().metadata().configuration().clone();
    config
        .get("delta.dataSkippingStatsColumns")
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk() {
    let dir = tempfile::tempdir().unwrap();
    exactly_once_and_bucketed(
        dir.path().join("lake").display().to_string(),
        HashMap::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_leaves_no_byte_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    erased_leaves_no_byte(
        dir.path().join("lake").display().to_string(),
        HashMap::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_leaves_no_byte_on_s3() {
    let bucket = std::env::var("WARDEN_TEST_S3_BUCKET")
        .expect("WARDEN_TEST_S3_BUCKET is not set: run the tests with scripts/test.sh");
    erased_leaves_no_byte(format!("s3://{bucket}/{}/", unique("lake")), s3_options()).await;
}

/// Object-store options for the S3 endpoint of `scripts/dev-services.sh` (moto).
pub(crate) fn s3_options() -> HashMap<String, String> {
    let endpoint = std::env::var("WARDEN_TEST_AWS_ENDPOINT")
        .expect("WARDEN_TEST_AWS_ENDPOINT is not set: run the tests with scripts/test.sh");
    HashMap::from([
        ("AWS_ENDPOINT_URL".into(), endpoint),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3() {
    let bucket = std::env::var("WARDEN_TEST_S3_BUCKET")
        .expect("WARDEN_TEST_S3_BUCKET is not set: run the tests with scripts/test.sh");
    exactly_once_and_bucketed(format!("s3://{bucket}/{}/", unique("lake")), s3_options()).await;
}
