//! The AuditStore contract suite, run on every backend.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use warden_audit::{
    verify_store, AuditObserver, AuditStore, CheckpointKeys, Query, Sequencer, SequencerConfig,
    SqlAuditStore, UnsignedTail,
};
use warden_sdk::Decision;

use crate::{event, fixture, sealer, Kind};

warden_audit::on_both_backends!(crate::Kind;
    appends_are_contiguous_and_chained,
    query_filters_and_cursor,
    concurrent_sequencers_never_share_a_seq,
    updates_and_deletes_are_refused_by_the_database,
    group_commit_batches_and_shutdown_flushes,
    checkpoints_are_signed_and_verified,
);

async fn appends_are_contiguous_and_chained(kind: Kind) {
    let f = fixture(kind).await;
    assert_eq!(f.store.head().await.unwrap().seq, 0);
    let first = f
        .store
        .append(
            (1..=3).map(|i| event(i).into_body().unwrap()).collect(),
            None,
        )
        .await
        .unwrap();
    let second = f
        .store
        .append(
            (4..=5).map(|i| event(i).into_body().unwrap()).collect(),
            None,
        )
        .await
        .unwrap();
    let seqs: Vec<u64> = first.iter().chain(&second).map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(second[0].prev_hash, first[2].hash);
    let head = f.store.head().await.unwrap();
    assert_eq!((head.seq, head.hash), (5, second[1].hash));
    assert!(head.seal.is_none(), "appended without a sealer");
    let scanned = f.store.scan(2, 2).await.unwrap();
    assert_eq!(
        scanned.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(scanned[0], first[2], "stored events read back unchanged");
    let report = verify_store(
        f.store.as_ref(),
        CheckpointKeys::new(),
        UnsignedTail::Accept,
    )
    .await
    .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.entries, report.head_seq), (5, 5));
}

async fn query_filters_and_cursor(kind: Kind) {
    let f = fixture(kind).await;
    f.store
        .append(
            (1..=40).map(|i| event(i).into_body().unwrap()).collect(),
            None,
        )
        .await
        .unwrap();
    let all = |q: Query| {
        let store = f.store.clone();
        async move { store.query(&Query { limit: 1000, ..q }).await.unwrap() }
    };
    let by_actor = all(Query {
        actor: Some("actor-1".into()),
        ..Query::default()
    })
    .await;
    assert_eq!(by_actor.len(), 14);
    assert!(by_actor.iter().all(|e| e.body.actor == "actor-1"));
    let denied_reads = all(Query {
        decision: Some(Decision::Deny),
        action: Some("audit.read".into()),
        ..Query::default()
    })
    .await;
    assert_eq!(
        denied_reads.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![10, 20, 30, 40]
    );
    let subject = all(Query {
        subject_ref: Some("sr-4".into()),
        ..Query::default()
    })
    .await;
    assert_eq!(
        subject.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 12, 20, 28, 36]
    );
    let base = 1_700_000_000_000_000;
    let window = all(Query {
        from_ts: Some(base + 10),
        to_ts: Some(base + 13),
        ..Query::default()
    })
    .await;
    assert_eq!(
        window.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    // Cursor pagination walks everything exactly once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = f
            .store
            .query(&Query {
                after_seq: after,
                limit: 7,
                ..Query::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.seq);
        seen.extend(page.into_iter().map(|e| e.seq));
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
}

/// Two sequencers on one database stand for two gateway replicas, each sealing every batch
/// with the installation's key: they never share a seq, and the log verifies sealed.
async fn concurrent_sequencers_never_share_a_seq(kind: Kind) {
    let f = fixture(kind).await;
    let other = Arc::new(SqlAuditStore::new(
        warden_audit::Db::connect(&f.url).await.unwrap(),
    ));
    let (sealer_a, keys) = sealer();
    let (sealer_b, _) = sealer();
    let a = Sequencer::start(
        f.store.clone(),
        Some(sealer_a),
        SequencerConfig {
            max_batch: 8,
            ..Default::default()
        },
        None,
    );
    let b = Sequencer::start(
        other,
        Some(sealer_b),
        SequencerConfig {
            max_batch: 8,
            ..Default::default()
        },
        None,
    );
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(
            async move { s.append(event(i)).await.unwrap() },
        ));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    a.shutdown().await;
    b.shutdown().await;
    assert!(
        verify_store(f.store.as_ref(), keys, UnsignedTail::Refuse)
            .await
            .unwrap()
            .ok
    );
}

async fn updates_and_deletes_are_refused_by_the_database(kind: Kind) {
    let f = fixture(kind).await;
    f.store
        .append(vec![event(1).into_body().unwrap()], None)
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_events SET actor = 'someone-else' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
    ] {
        let err = sqlx::query(sql).execute(f.db.pool()).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    if matches!(kind, Kind::Postgres) {
        let err = sqlx::query("TRUNCATE audit_events")
            .execute(f.db.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert_eq!(f.store.scan(0, 10).await.unwrap().len(), 1);
}

/// The store, with every append held until the gate opens: appends queue up behind it.
#[derive(Debug)]
struct Gated {
    inner: Arc<SqlAuditStore>,
    gate: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl AuditStore for Gated {
    async fn append(
        &self,
        events: Vec<warden_audit::EventBody>,
        sealer: Option<&warden_audit::Sealer>,
    ) -> warden_audit::Result<Vec<warden_audit::StoredEvent>> {
        let mut gate = self.gate.clone();
        // The guard of the watched value is dropped before the append (it is not Send).
        let opened = gate.wait_for(|open| *open).await.is_ok();
        assert!(opened, "the gate's sender is gone");
        drop(gate);
        self.inner.append(events, sealer).await
    }
    async fn head(&self) -> warden_audit::Result<warden_audit::Head> {
        self.inner.head().await
    }
    async fn scan_rows(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> warden_audit::Result<Vec<warden_audit::Scanned>> {
        self.inner.scan_rows(after_seq, limit).await
    }
    async fn query(&self, query: &Query) -> warden_audit::Result<Vec<warden_audit::StoredEvent>> {
        self.inner.query(query).await
    }
    async fn put_checkpoint(&self, cp: &warden_audit::Checkpoint) -> warden_audit::Result<()> {
        self.inner.put_checkpoint(cp).await
    }
    async fn checkpoints(&self) -> warden_audit::Result<Vec<warden_audit::Checkpoint>> {
        self.inner.checkpoints().await
    }
}

#[derive(Default)]
struct Counting {
    batches: AtomicUsize,
    events: AtomicUsize,
}

impl AuditObserver for Counting {
    fn committed(&self, events: usize, _seconds: f64) {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.events.fetch_add(events, Ordering::SeqCst);
    }
    fn failed(&self, _events: usize) {}
}

async fn group_commit_batches_and_shutdown_flushes(kind: Kind) {
    let f = fixture(kind).await;
    let counting = Arc::new(Counting::default());
    let seq = Sequencer::start(
        f.store.clone(),
        None,
        SequencerConfig::default(),
        Some(counting.clone()),
    );
    let mut tasks = Vec::new();
    for i in 0..500u64 {
        let s = seq.clone();
        tasks.push(tokio::spawn(
            async move { s.append(event(i)).await.unwrap() },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let batches = counting.batches.load(Ordering::SeqCst);
    assert_eq!(counting.events.load(Ordering::SeqCst), 500);
    assert!(
        batches < 500,
        "500 concurrent appends committed in {batches} transactions: no grouping"
    );
    seq.shutdown().await;
    assert!(matches!(
        seq.append(event(1)).await,
        Err(warden_audit::Error::Closed)
    ));

    // Appends queued behind a commit in progress when shutdown is asked: every one is
    // committed and answered before the sequencer stops.
    let (open, gate) = tokio::sync::watch::channel(false);
    let gated = Arc::new(Gated {
        inner: f.store.clone(),
        gate,
    });
    let seq = Sequencer::start(gated, None, SequencerConfig::default(), None);
    let held = {
        let s = seq.clone();
        tokio::spawn(async move { s.append(event(0)).await })
    };
    // The writer holds the first append at the gate (its clone of the receiver shows it).
    while open.receiver_count() < 2 {
        tokio::task::yield_now().await;
    }
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut queued = Vec::new();
    for i in 1..=300u64 {
        // One poll hands the event over (outside tokio's cooperative budget, which would
        // make a late poll yield before sending); it then waits for its commit.
        let mut append = Box::pin(tokio::task::unconstrained(seq.append(event(i))));
        assert!(append.as_mut().poll(&mut cx).is_pending());
        queued.push(append);
    }
    let stopping = {
        let s = seq.clone();
        tokio::spawn(async move { s.shutdown().await })
    };
    open.send(true).unwrap();
    stopping.await.unwrap();
    held.await.unwrap().unwrap();
    for append in queued {
        append.await.unwrap();
    }
    assert_eq!(f.store.head().await.unwrap().seq, 500 + 1 + 300);
    assert!(matches!(
        seq.append(event(1)).await,
        Err(warden_audit::Error::Closed)
    ));
}

async fn checkpoints_are_signed_and_verified(kind: Kind) {
    let f = fixture(kind).await;
    let (sealer, keys) = sealer();
    let config = SequencerConfig {
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let seq = Sequencer::start(f.store.clone(), Some(sealer), config, None);
    for i in 0..25u64 {
        seq.append(event(i)).await.unwrap();
    }
    seq.shutdown().await;
    let cps = f.store.checkpoints().await.unwrap();
    assert!(
        cps.len() >= 3,
        "checkpoints at 10, 20 and the final one at shutdown: {cps:?}"
    );
    assert_eq!(cps.last().unwrap().seq, 25);
    let report = verify_store(f.store.as_ref(), keys, UnsignedTail::Refuse)
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    // Every periodic checkpoint and the head's seal.
    assert_eq!(report.checkpoints, cps.len() as u64 + 1);
    assert_eq!((report.signed_through, report.unsigned_entries), (25, 0));
    // A verifier that trusts another key rejects the checkpoints.
    let mut wrong = CheckpointKeys::new();
    wrong.insert(
        "cp-test",
        ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key(),
    );
    let report = verify_store(f.store.as_ref(), wrong, UnsignedTail::Refuse)
        .await
        .unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, Some(cps[0].seq));
}
