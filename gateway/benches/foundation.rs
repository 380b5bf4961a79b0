//! Foundation benchmarks (figures, not assertions): authorization decisions/s with the
//! shipped policy and with 100k generated rules, durable audit appends/s on SQLite and
//! PostgreSQL with group commit, and audit verification events/s.
//!
//! Run with `scripts/bench.sh` (it starts PostgreSQL and sets `WARDEN_TEST_POSTGRES_URL`).

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_audit::{
    verify_store, AuditObserver, CheckpointKeys, CheckpointSigner, NewEvent, Sequencer,
    SequencerConfig, SqlAuditStore,
};
use warden_policy::authz::{parse_policy_csv, Authorizer, DEFAULT_MODEL, DEFAULT_POLICY};
use warden_sdk::{Decision, PolicyRule};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        authorization().await;
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = warden_audit::testkit::fresh_sqlite(dir.path()).await;
        audit("sqlite", db).await;
        let (db, _) = warden_audit::testkit::fresh_postgres().await;
        audit("postgres", db).await;
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

/// Runs `f` until `budget` passes or `max` calls; returns calls and time.
fn timed(budget: Duration, max: u64, mut f: impl FnMut(u64)) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0;
    while n < max && (n % 64 != 0 || start.elapsed() < budget) {
        f(n);
        n += 1;
    }
    (n, start.elapsed())
}

async fn authorization() {
    let shipped = parse_policy_csv(DEFAULT_POLICY).unwrap();
    let authz = Authorizer::new(DEFAULT_MODEL, &shipped).await.unwrap();
    let roles = ["admin", "dpo", "auditor", "analyst", "stage", "subject"];
    let asks = [
        ("self", "read"),
        ("users", "write"),
        ("policy", "read"),
        ("policy", "write"),
        ("audit", "read"),
        ("audit", "verify"),
    ];
    let requests: Vec<(Vec<String>, &str, &str)> = roles
        .iter()
        .flat_map(|r| {
            asks.iter()
                .map(move |(res, act)| (vec![(*r).to_owned()], *res, *act))
        })
        .collect();
    let (n, d) = timed(Duration::from_secs(2), 5_000_000, |i| {
        let (r, res, act) = &requests[i as usize % requests.len()];
        std::hint::black_box(authz.allows(r, res, act).unwrap());
    });
    println!(
        "authz  shipped policy ({} rules), cached decisions:   {}",
        shipped.len(),
        rate(n, d)
    );
    let (n, d) = timed(Duration::from_secs(2), 1_000_000, |i| {
        let (r, res, act) = &requests[i as usize % requests.len()];
        std::hint::black_box(authz.allows_uncached(&r[0], res, act).unwrap());
    });
    println!(
        "authz  shipped policy, uncached (casbin enforce):      {}",
        rate(n, d)
    );

    let rules: Vec<PolicyRule> = (0..100_000)
        .map(|i| PolicyRule {
            ptype: "p".into(),
            values: vec![
                format!("role{}", i % 500),
                format!("dataset{i}"),
                "read".into(),
            ],
        })
        .collect();
    let started = Instant::now();
    let big = Authorizer::new(DEFAULT_MODEL, &rules).await.unwrap();
    println!(
        "authz  100k generated rules: loaded in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let (n, d) = timed(Duration::from_secs(5), 1_000_000, |i| {
        let k = (i * 7919) % 100_000;
        std::hint::black_box(
            big.allows_uncached(&format!("role{}", k % 500), &format!("dataset{k}"), "read")
                .unwrap(),
        );
    });
    println!(
        "authz  100k rules, uncached (casbin enforce):          {} ({n} decisions)",
        rate(n, d)
    );
    // A working set of repeated requests, as a gateway sees repeated callers (each first
    // decision costs an uncached enforce, hence the small set).
    let working: Vec<(Vec<String>, String)> = (0..100u64)
        .map(|i| {
            let k = (i * 7919) % 100_000;
            (vec![format!("role{}", k % 500)], format!("dataset{k}"))
        })
        .collect();
    for (r, res) in &working {
        big.allows(r, res, "read").unwrap();
    }
    let (n, d) = timed(Duration::from_secs(2), 5_000_000, |i| {
        let (r, res) = &working[i as usize % working.len()];
        std::hint::black_box(big.allows(r, res, "read").unwrap());
    });
    println!(
        "authz  100k rules, cached (100 distinct requests):     {}",
        rate(n, d)
    );
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

async fn audit(backend: &str, db: warden_audit::Db) {
    let store = Arc::new(SqlAuditStore::new(db));
    let signer = CheckpointSigner::new(
        "cp-bench",
        ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]),
    );
    let mut keys = CheckpointKeys::new();
    keys.insert("cp-bench", signer.verifying_key());
    let batches = Arc::new(Batches::default());
    let seq = Sequencer::start(
        store.clone(),
        Some(signer),
        SequencerConfig::default(),
        Some(batches.clone()),
    );

    // One caller at a time: every append waits for its own commit (one fsync each).
    let serial = 300;
    let started = Instant::now();
    for i in 0..serial {
        seq.append(event(i)).await.unwrap();
    }
    let d = started.elapsed();
    println!(
        "audit  {backend:8} 1 caller, durable appends:             {} ({:.2} ms each)",
        rate(serial, d),
        d.as_secs_f64() * 1e3 / serial as f64
    );

    // Many callers: group commit shares each transaction.
    let callers = 256u64;
    let per = 200u64;
    let before = batches.0.load(Ordering::Relaxed);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let s = seq.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    s.append(event(c * per + i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let d = started.elapsed();
    let n = callers * per;
    let b = batches.0.load(Ordering::Relaxed) - before;
    println!("audit  {backend:8} {callers} callers, durable appends:          {} ({} events in {b} transactions, {:.0} per batch)", rate(n, d), n, n as f64 / b as f64);
    seq.shutdown().await;

    let started = Instant::now();
    let report = verify_store(store.as_ref(), keys).await.unwrap();
    assert!(report.ok);
    println!(
        "audit  {backend:8} verification:                          {} ({} events, {} checkpoints)",
        rate(report.entries, started.elapsed()),
        report.entries,
        report.checkpoints
    );
}
