//! The document loader: stream → document store, commits after the store confirmed, replays
//! leave one document per record.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map};
use warden_pipeline::docs::Query;
use warden_pipeline::loader::{self, collection_spec, DocumentSink, LoaderStats, Sink};
use warden_pipeline::stages::{Delivered, StageKind, Stages};
use warden_pipeline::stream::{OutRecord, Stream};
use warden_pipeline::StreamedRecord;
use warden_policy::contract::Contract;

use crate::{documents, stream, unique, Backend};

crate::on_every_backend!(
    records_land_once_even_when_a_commit_is_lost,
    the_run_loop_loads_and_stops
);

/// The shipped payments contract, on a stream and collection of its own.
fn contract() -> Contract {
    let text = include_str!("../../../config/datasets/payments.toml");
    let mut c = Contract::from_toml(text).unwrap();
    c.stream = unique("payments");
    c.collection = unique("payments");
    c
}

fn records(c: &Contract, n: usize) -> Vec<StreamedRecord> {
    (0..n)
        .map(|i| {
            let subject_ref = format!("sr_{:032x}", i % 5);
            let mut fields = Map::new();
            fields.insert("transaction_id".into(), json!(format!("tx-{i}")));
            fields.insert("user_id".into(), json!(subject_ref));
            fields.insert("amount".into(), json!(i as f64 / 4.0));
            fields.insert(
                "created_at".into(),
                json!(format!("2026-11-{:02}T10:00:00Z", 1 + i % 20)),
            );
            StreamedRecord {
                dataset: c.name.clone(),
                subject_ref,
                contract_version: c.version,
                fields,
            }
        })
        .collect()
}

async fn publish(s: &dyn Stream, c: &Contract, recs: &[StreamedRecord]) {
    s.ensure_topic(&c.stream, 4).await.unwrap();
    let mut out: Vec<OutRecord> = recs.iter().map(|r| r.to_out("req-test")).collect();
    // Noise the loader must skip: another dataset's record and a tombstone.
    let mut other = recs[0].clone();
    other.dataset = "other".into();
    out.push(other.to_out("req-test"));
    out.push(OutRecord {
        key: recs[0].subject_ref.clone(),
        value: None,
        headers: vec![],
    });
    s.publish(&c.stream, out).await.unwrap();
}

async fn records_land_once_even_when_a_commit_is_lost(backend: Backend) {
    let (s, _g1) = stream(backend).await;
    let (docs, _g2) = documents(backend).await;
    let c = contract();
    let recs = records(&c, 300);
    publish(s.as_ref(), &c, &recs).await;
    let sink = DocumentSink(Arc::clone(&docs));
    sink.prepare(&c).await.unwrap();
    let group = unique("g");
    let spec = collection_spec(&c);

    // A loader that wrote a batch and crashed before committing it...
    let mut sub = s.subscribe(&c.stream, &group).await.unwrap();
    let batch = sub.poll(1000, Duration::from_secs(5)).await.unwrap();
    assert!(!batch.is_empty());
    let decoded: Vec<Delivered> = batch
        .iter()
        .filter_map(|m| {
            let record = StreamedRecord::from_message(m).ok().flatten()?;
            (record.dataset == c.name).then_some(Delivered {
                partition: m.partition,
                offset: m.offset,
                record,
            })
        })
        .collect();
    sink.write(&c, &c.stream, decoded).await.unwrap();
    drop(sub);

    // ...is replaced by one that reads from the last commit: everything lands, once.
    let stats = LoaderStats::default();
    let mut stages = Stages::new(&[]);
    let mut sub = s.subscribe(&c.stream, &group).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.stored.load(Ordering::Relaxed) + stats.skipped.load(Ordering::Relaxed) < 302 {
        assert!(Instant::now() < deadline, "loader stalled: {stats:?}");
        loader::step(
            sub.as_mut(),
            &sink,
            &mut stages,
            &c,
            &stats,
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    }
    assert_eq!(stats.stored.load(Ordering::Relaxed), 300);
    assert_eq!(
        stats.skipped.load(Ordering::Relaxed),
        2,
        "the other dataset's record and the tombstone"
    );
    assert_eq!(docs.count(&spec, None).await.unwrap(), 300);
    let one = docs
        .find(
            &spec,
            &Query {
                subject_ref: Some(recs[7].subject_ref.clone()),
                limit: 1000,
                ..Query::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(one.len(), 60);
    let tx7 = one.iter().find(|d| d.key == "tx-7").unwrap();
    assert_eq!(tx7.fields["amount"].as_f64(), Some(1.75));
    assert_eq!(tx7.ts, 1_794_132_000_000_000, "2026-11-08T10:00:00Z");
    // Nothing is left uncommitted.
    assert!(sub
        .poll(100, Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
}

async fn the_run_loop_loads_and_stops(backend: Backend) {
    let (s, _g1) = stream(backend).await;
    let (docs, _g2) = documents(backend).await;
    let c = Arc::new(contract());
    publish(s.as_ref(), &c, &records(&c, 50)).await;
    let stats = Arc::new(LoaderStats::default());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let contracts = {
        let c = Arc::clone(&c);
        Arc::new(move |name: &str| (name == c.name).then(|| Arc::clone(&c)))
    };
    let task = tokio::spawn(loader::run(
        Arc::clone(&s),
        Arc::new(DocumentSink(Arc::clone(&docs))),
        contracts,
        loader::LoaderSpec {
            dataset: c.name.clone(),
            group: unique("g"),
            topic_prefix: String::new(),
            stages: vec![StageKind::Normalize, StageKind::Dedupe],
            partitions: 4,
        },
        Arc::clone(&stats),
        shutdown,
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while docs.count(&collection_spec(&c), None).await.unwrap() < 50 {
        assert!(Instant::now() < deadline, "loader stalled: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
}
