//! The audit log's write path (figures, not assertions), on SQLite and PostgreSQL:
//! - durable appends/s, one caller and 256 callers (group commit), with every batch's head
//!   sealed (signed in its transaction) beside the same appends unsealed — what sealing at
//!   every group commit costs;
//! - audited reads/s: 256 callers each answering only once its event is durable (every
//!   request now) beside the same callers handing the event over without waiting for it (how
//!   reads without a second factor were audited before: lost if the process died after the
//!   answer);
//! - verification events/s.
//!
//! Run with `cargo bench -p warden-audit --bench sequencer` after
//! `eval "$(scripts/dev-services.sh)"` (PostgreSQL), or through `scripts/bench.sh`.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_audit::{
    verify_store, AuditObserver, CheckpointKeys, CheckpointSigner, NewEvent, Sealer, Sequencer,
    SequencerConfig, SqlAuditStore, UnsignedTail,
};
use warden_sdk::Decision;

const CALLERS: u64 = 256;
const PER_CALLER: u64 = 200;
const SERIAL: u64 = 300;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // A fresh database of each backend for every measurement.
        let fresh = |backend: &'static str| {
            let dir = dir.path().to_owned();
            async move {
                match backend {
                    "sqlite" => warden_audit::testkit::fresh_sqlite(&dir).await.0,
                    _ => warden_audit::testkit::fresh_postgres().await.0,
                }
            }
        };
        for backend in ["sqlite", "postgres"] {
            for sealed in [false, true] {
                appends(backend, fresh(backend).await, sealed).await;
            }
        }
        for backend in ["sqlite", "postgres"] {
            for durable in [false, true] {
                reads(backend, fresh(backend).await, durable).await;
            }
        }
    });
}

fn rate(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64();
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.1} /s")
    }
}

#[derive(Default)]
struct Batches(AtomicU64);

impl AuditObserver for Batches {
    fn committed(&self, _events: usize, _seconds: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn failed(&self, _events: usize) {}
}

fn event(i: u64) -> NewEvent {
    NewEvent::new(
        1_800_000_000_000_000 + i as i64,
        format!("user-{}", i % 100),
        "user",
        "audit.read",
        "/v1/audit/events",
        Decision::Allow,
    )
    .request_id(Some(format!("{i:032x}")))
    .details(&serde_json::json!({"method": "GET", "status": 200}))
}

fn sealer() -> (Sealer, CheckpointKeys) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
    let mut keys = CheckpointKeys::new();
    keys.insert("cp-bench", key.verifying_key());
    (
        Sealer::new(CheckpointSigner::new("cp-bench", key), keys.clone()),
        keys,
    )
}

async fn appends(backend: &str, db: warden_audit::Db, sealed: bool) {
    let store = Arc::new(SqlAuditStore::new(db));
    let (sealer, keys) = sealer();
    let batches = Arc::new(Batches::default());
    let seq = Sequencer::start(
        store.clone(),
        sealed.then_some(sealer),
        SequencerConfig::default(),
        Some(batches.clone()),
    );
    let how = if sealed { "sealed" } else { "unsealed" };

    // One caller at a time: every append waits for its own commit (one fsync each).
    let started = Instant::now();
    for i in 0..SERIAL {
        seq.append(event(i)).await.unwrap();
    }
    let d = started.elapsed();
    println!(
        "audit  {backend:8} {how:8} 1 caller, durable appends:     {} ({:.2} ms each)",
        rate(SERIAL, d),
        d.as_secs_f64() * 1e3 / SERIAL as f64
    );

    // Many callers: group commit shares each transaction.
    let before = batches.0.load(Ordering::Relaxed);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let s = seq.clone();
            tokio::spawn(async move {
                for i in 0..PER_CALLER {
                    s.append(event(c * PER_CALLER + i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let d = started.elapsed();
    let n = CALLERS * PER_CALLER;
    let b = batches.0.load(Ordering::Relaxed) - before;
    println!(
        "audit  {backend:8} {how:8} {CALLERS} callers, durable appends:  {} ({n} events in {b} transactions, {:.0} per batch)",
        rate(n, d),
        n as f64 / b as f64
    );
    seq.shutdown().await;

    let tail = if sealed {
        UnsignedTail::Refuse
    } else {
        UnsignedTail::Accept
    };
    let started = Instant::now();
    let report = verify_store(store.as_ref(), keys, tail).await.unwrap();
    assert!(report.ok, "{report:?}");
    println!(
        "audit  {backend:8} {how:8} verification:                  {} ({} events, {} checkpoints)",
        rate(report.entries, started.elapsed()),
        report.entries,
        report.checkpoints
    );
}

/// 256 callers answering reads: each waits for its event to be durable, or hands it over
/// and answers at once (the event then committed behind the answer).
async fn reads(backend: &str, db: warden_audit::Db, durable: bool) {
    let store = Arc::new(SqlAuditStore::new(db));
    let (sealer, _) = sealer();
    let seq = Sequencer::start(store, Some(sealer), SequencerConfig::default(), None);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let s = seq.clone();
            tokio::spawn(async move {
                for i in 0..PER_CALLER {
                    let e = event(c * PER_CALLER + i);
                    if durable {
                        s.append(e).await.unwrap();
                    } else {
                        let s = s.clone();
                        drop(tokio::spawn(async move { s.append(e).await }));
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let answered = started.elapsed();
    seq.shutdown().await;
    let all = started.elapsed();
    let n = CALLERS * PER_CALLER;
    let how = if durable {
        "answered once durable"
    } else {
        "answered, event queued"
    };
    println!(
        "audit  {backend:8} {CALLERS} callers, reads {how:22}: {} ({} until every event is durable)",
        rate(n, answered),
        rate(n, all)
    );
}
