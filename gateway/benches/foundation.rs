//! Foundation benchmarks (figures, not assertions): authorization decisions/s with the
//! shipped policy and with 100k generated rules. The audit log's figures are
//! `cargo bench -p warden-audit --bench sequencer`.
//!
//! Run with `scripts/bench.sh`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use warden_policy::authz::{parse_policy_csv, Authorizer, DEFAULT_MODEL, DEFAULT_POLICY};
use warden_sdk::PolicyRule;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(authorization());
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
