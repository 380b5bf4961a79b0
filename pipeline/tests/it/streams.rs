//! The stream contract, on the embedded log (SQLite, PostgreSQL) and on Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use warden_pipeline::stream::{Message, OutRecord, Subscription};

use crate::{stream, unique, Backend};

crate::on_every_backend!(
    published_records_arrive_once_in_key_order,
    a_group_resumes_after_its_last_commit,
    tombstones_and_headers_travel
);

fn record(key: &str, i: usize) -> OutRecord {
    OutRecord {
        key: key.to_owned(),
        value: Some(format!("{{\"i\":{i}}}").into_bytes()),
        headers: vec![
            ("warden-dataset".to_owned(), "payments".to_owned()),
            ("seq".to_owned(), i.to_string()),
        ],
    }
}

/// Polls until `n` messages came, or fails after 30 s.
async fn collect(sub: &mut dyn Subscription, n: usize) -> Vec<Message> {
    collect_with(sub, n, true).await
}

/// As [`collect`], through `poll_values` (headers optional) unless `headers`.
async fn collect_with(sub: &mut dyn Subscription, n: usize, headers: bool) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages arrived",
            out.len()
        );
        let wait = Duration::from_millis(500);
        out.extend(if headers {
            sub.poll(n - out.len(), wait).await.unwrap()
        } else {
            sub.poll_values(n - out.len(), wait).await.unwrap()
        });
    }
    out
}

/// Polls for a while and returns whatever else arrives (nothing, when the contract holds).
async fn extra(sub: &mut dyn Subscription) -> Vec<Message> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.extend(sub.poll(100, Duration::from_millis(500)).await.unwrap());
    }
    out
}

async fn published_records_arrive_once_in_key_order(backend: Backend) {
    let (s, _g) = stream(backend).await;
    let topic = unique("t");
    s.ensure_topic(&topic, 4).await.unwrap();
    s.ensure_topic(&topic, 4).await.unwrap(); // idempotent
    let keys: Vec<String> = (0..10).map(|k| format!("sr_{k:032x}")).collect();
    let records: Vec<OutRecord> = (0..200).map(|i| record(&keys[i % 10], i)).collect();
    let mut positions = Vec::new();
    for batch in records.chunks(50) {
        positions.extend(s.publish(&topic, batch.to_vec()).await.unwrap());
    }
    assert_eq!(positions.len(), 200);
    // One key, one partition; offsets increase in publish order.
    let mut by_key: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for (r, p) in records.iter().zip(&positions) {
        by_key
            .entry(&r.key)
            .or_default()
            .push((p.partition, p.offset));
    }
    for (key, ps) in &by_key {
        assert!(ps.iter().all(|p| p.0 == ps[0].0), "{key} spans partitions");
        assert!(ps.windows(2).all(|w| w[0].1 < w[1].1), "{key} out of order");
    }
    assert!(
        by_key
            .values()
            .map(|p| p[0].0)
            .collect::<BTreeSet<_>>()
            .len()
            > 1,
        "ten keys all landed in one partition"
    );

    let mut sub = s.subscribe(&topic, &unique("g")).await.unwrap();
    let got = collect(sub.as_mut(), 200).await;
    assert!(extra(sub.as_mut()).await.is_empty(), "a record came twice");
    let seen: BTreeSet<(i32, i64)> = got.iter().map(|m| (m.partition, m.offset)).collect();
    let published: BTreeSet<(i32, i64)> =
        positions.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(seen, published);
    for m in &got {
        let i: usize = m.header("seq").unwrap().parse().unwrap();
        assert_eq!(m.key, records[i].key);
        assert_eq!(m.value, records[i].value);
        assert_eq!(m.topic, topic);
    }
    // Per key, delivery follows publish order.
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &got {
        let i: usize = m.header("seq").unwrap().parse().unwrap();
        if let Some(prev) = last.insert(&records[i].key, i) {
            assert!(prev < i, "key {} delivered out of order", m.key);
        }
    }

    // A reader that needs no headers (a loader) gets the same records: each position once,
    // with its key and value; headers left out or as published.
    let mut plain = s.subscribe(&topic, &unique("g")).await.unwrap();
    let values = collect_with(plain.as_mut(), 200, false).await;
    assert!(
        extra(plain.as_mut()).await.is_empty(),
        "a record came twice"
    );
    let full: BTreeMap<(i32, i64), &Message> =
        got.iter().map(|m| ((m.partition, m.offset), m)).collect();
    assert_eq!(values.len(), full.len());
    for m in &values {
        let f = full[&(m.partition, m.offset)];
        assert_eq!((&m.topic, &m.key, &m.value), (&f.topic, &f.key, &f.value));
        assert!(m.headers.is_empty() || m.headers == f.headers);
    }
}

async fn a_group_resumes_after_its_last_commit(backend: Backend) {
    let (s, _g) = stream(backend).await;
    let topic = unique("t");
    s.ensure_topic(&topic, 2).await.unwrap();
    let records: Vec<OutRecord> = (0..60).map(|i| record(&format!("k{}", i % 7), i)).collect();
    s.publish(&topic, records).await.unwrap();
    let group = unique("g");

    let mut first = s.subscribe(&topic, &group).await.unwrap();
    let handled = collect(first.as_mut(), 20).await;
    first.commit(&handled).await.unwrap();
    // What the first member read beyond its commit is not committed.
    drop(first);
    // The committed position per partition: everything below it is done.
    let done: BTreeMap<i32, i64> = warden_pipeline::stream::next_offsets(&handled)
        .into_iter()
        .collect();
    let committed = |m: &Message| done.get(&m.partition).is_some_and(|n| m.offset < *n);

    let mut second = s.subscribe(&topic, &group).await.unwrap();
    let all = {
        let mut fresh = s.subscribe(&topic, &unique("g")).await.unwrap();
        collect(fresh.as_mut(), 60).await
    };
    let expected: BTreeSet<(i32, i64)> = all
        .iter()
        .filter(|m| !committed(m))
        .map(|m| (m.partition, m.offset))
        .collect();
    assert!(expected.len() <= 40);
    let rest = collect(second.as_mut(), expected.len()).await;
    let got: BTreeSet<(i32, i64)> = rest.iter().map(|m| (m.partition, m.offset)).collect();
    assert_eq!(got, expected, "the second member must start at the commit");
    assert!(extra(second.as_mut()).await.is_empty());
}

async fn tombstones_and_headers_travel(backend: Backend) {
    let (s, _g) = stream(backend).await;
    let topic = unique("t");
    s.ensure_topic(&topic, 1).await.unwrap();
    let tomb = OutRecord {
        key: "sr_gone".to_owned(),
        value: None,
        headers: vec![("warden-request-id".to_owned(), "req-1".to_owned())],
    };
    let p = s
        .publish(&topic, vec![record("sr_gone", 0), tomb.clone()])
        .await
        .unwrap();
    assert_eq!(p[0].partition, p[1].partition);
    assert!(p[0].offset < p[1].offset);
    let mut sub = s.subscribe(&topic, &unique("g")).await.unwrap();
    let got = collect(sub.as_mut(), 2).await;
    assert!(got[0].value.is_some());
    assert_eq!(got[1].value, None);
    assert_eq!(got[1].key, "sr_gone");
    assert_eq!(got[1].header("warden-request-id"), Some("req-1"));
    assert_eq!(got[1].header("absent"), None);
}

/// Retention of the embedded log (`prune_read`): only records every group of their topic has
/// committed past, only older than the bound, never a partition's newest record (so a
/// position is never given twice, across a restart too).
mod retention {
    use std::sync::Arc;

    use warden_audit::testkit::{fresh_postgres, fresh_sqlite};
    use warden_pipeline::stream::embedded::EmbeddedStream;
    use warden_pipeline::stream::{partition_of, Stream};

    use super::{collect, record};
    use crate::{stream, unique, Backend};

    async fn the_embedded_log_prunes_only_what_every_group_read(db: warden_audit::Db) {
        let s: Arc<dyn Stream> = Arc::new(EmbeddedStream::new(db.clone()));
        let topic = unique("r");
        s.ensure_topic(&topic, 1).await.unwrap();
        let key = format!("sr_{:032x}", 1);
        let out = (0..10).map(|i| record(&key, i)).collect();
        s.publish(&topic, out).await.unwrap();
        assert_eq!(
            s.prune_read(i64::MAX).await.unwrap(),
            0,
            "no group read yet"
        );

        let mut a = s.subscribe(&topic, &unique("a")).await.unwrap();
        let mut b = s.subscribe(&topic, &unique("b")).await.unwrap();
        let read_a = collect(a.as_mut(), 10).await;
        let read_b = collect(b.as_mut(), 10).await;
        a.commit(&read_a[..6]).await.unwrap();
        b.commit(&read_b[..3]).await.unwrap();
        assert_eq!(
            s.prune_read(0).await.unwrap(),
            0,
            "records younger than the bound stay"
        );
        assert_eq!(
            s.prune_read(i64::MAX).await.unwrap(),
            3,
            "up to the slowest group"
        );
        let mut fresh = s.subscribe(&topic, &unique("c")).await.unwrap();
        let left: Vec<i64> = collect(fresh.as_mut(), 7)
            .await
            .iter()
            .map(|m| m.offset)
            .collect();
        assert_eq!(left, (3..10).collect::<Vec<_>>());

        b.commit(&read_b).await.unwrap();
        a.commit(&read_a).await.unwrap();
        assert_eq!(
            s.prune_read(i64::MAX).await.unwrap(),
            6,
            "all read: all but the newest"
        );
        assert_eq!(s.prune_read(i64::MAX).await.unwrap(), 0);

        // A restart (a new stream over the same database) goes on after the newest position.
        let again = EmbeddedStream::new(db.clone());
        let p = again.publish(&topic, vec![record(&key, 10)]).await.unwrap();
        assert_eq!(p[0].offset, 10, "a position is never given twice");
        assert_eq!(
            s.prune_read(i64::MAX).await.unwrap(),
            1,
            "the former newest, read by both groups"
        );

        // A group that has committed on one partition of a topic pins the other: it has read
        // nothing there.
        let two = unique("r2");
        s.ensure_topic(&two, 2).await.unwrap();
        let keys: Vec<String> = (0..40).map(|k| format!("sr_{k:032x}")).collect();
        let on = |p: i32| keys.iter().filter(move |k| partition_of(k, 2) == p);
        let (k0, k1) = (on(0).next().unwrap(), on(1).next().unwrap());
        let out = (0..5)
            .flat_map(|i| [record(k0, i), record(k1, i)])
            .collect();
        s.publish(&two, out).await.unwrap();
        let mut g = s.subscribe(&two, &unique("g")).await.unwrap();
        let read = collect(g.as_mut(), 10).await;
        let first: Vec<_> = read.iter().filter(|m| m.partition == 0).cloned().collect();
        g.commit(&first).await.unwrap();
        assert_eq!(
            s.prune_read(i64::MAX).await.unwrap(),
            4,
            "partition 0 up to its newest record; partition 1 untouched"
        );
        let mut fresh = s.subscribe(&two, &unique("c")).await.unwrap();
        let left = collect(fresh.as_mut(), 6).await;
        assert_eq!(left.iter().filter(|m| m.partition == 1).count(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = fresh_sqlite(dir.path()).await;
        the_embedded_log_prunes_only_what_every_group_read(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let (db, _) = fresh_postgres().await;
        the_embedded_log_prunes_only_what_every_group_read(db).await;
    }

    /// Kafka: the broker's `retention.ms` applies; the gateway deletes nothing itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote() {
        let (s, _g) = stream(Backend::Remote).await;
        assert_eq!(s.prune_read(i64::MAX).await.unwrap(), 0);
    }
}
