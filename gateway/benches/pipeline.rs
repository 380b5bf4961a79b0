//! The data plane's throughput (figures, not assertions), in one run against one broker:
//!
//! 1. first, on a quiet machine, a bare rdkafka producer (no gateway, the gateway's producer
//!    settings) sending the same transactions as JSON records keyed by customer into the
//!    broker: the raw rate, three runs;
//! 2. end to end: HTTP ingest → contract check and protection (tokens, encryption,
//!    pseudonyms) → Kafka → the lake loader (stages) → Delta, timed from the first request
//!    to the last row committed in the lake; the document loader runs beside it (embedded
//!    store), and its finish is printed too. Four rounds: a fresh process, then three of
//!    the same gateway running (other transactions, other customers each time), with the
//!    gateway's CPU time per record in each. The ratio is the median running round's over
//!    the raw producer's best run.
//!
//! Run with `scripts/bench.sh` (it starts an optimized build of the broker and sets
//! `WARDEN_TEST_KAFKA`).
//! `WARDEN_BENCH_RECORDS` sets the record count (default 100 000).
//! `WARDEN_BENCH_STREAM=embedded` measures the default deployment instead: the same rounds
//! through the embedded stream (no broker, no raw producer).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use warden_gateway::store::PrincipalRecord;
use warden_pipeline::stream::Stream as _;
use warden_sdk::PrincipalKind;

/// The binary's allocator: per-record and per-field allocations dominate the data plane.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn brokers() -> String {
    std::env::var("WARDEN_TEST_KAFKA")
        .expect("WARDEN_TEST_KAFKA is not set: run scripts/bench.sh (it starts the broker)")
}

/// True when `WARDEN_BENCH_STREAM` asks for the embedded stream (`embedded`); the default is
/// Kafka (`kafka`). Any other value is refused, not guessed at.
fn embedded_stream() -> bool {
    match std::env::var("WARDEN_BENCH_STREAM").as_deref() {
        Err(_) | Ok("kafka") => false,
        Ok("embedded") => true,
        Ok(other) => panic!("WARDEN_BENCH_STREAM={other}: expected kafka or embedded"),
    }
}

fn records() -> usize {
    std::env::var("WARDEN_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Requests in flight at once (`WARDEN_BENCH_IN_FLIGHT`, default 4), as concurrent sources.
fn in_flight_requests() -> usize {
    std::env::var("WARDEN_BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn luhn_pan(n: u64) -> String {
    warden_policy::pan::with_check_digit(&format!("5{:014}", n % 100_000_000_000_000))
}

/// Distinct customers (and so card numbers and e-mail addresses) in a round.
const CUSTOMERS: usize = 5000;
/// Records a request carries (and the raw producer sends before it waits).
const REQUEST_RECORDS: usize = 5000;

/// Transaction `i`, of one of the customers from `customers_from` on.
fn transaction(i: usize, customers_from: usize) -> Value {
    let user = customers_from + i % CUSTOMERS;
    json!({"transaction_id": format!("bench-{i:08}"), "user_id": format!("customer-{user}"),
           "card_number": luhn_pan(user as u64 * 7919), "email": format!("person.{user}@bench.example.org"),
           "ip": format!("198.51.{}.{}", user % 200, i % 250), "amount": (i % 1000) as f64 / 4.0,
           "country": "DE", "created_at": "2026-11-24T10:00:00Z"})
}

/// CPU time this process has used so far (user and system, all threads), from
/// `/proc/self/stat` in clock ticks of 1/100 s (Linux's `USER_HZ`); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// The broker's process id (`WARDEN_BENCH_BROKER_PID`, which `scripts/bench.sh` sets when it
/// started the broker on this machine): its CPU per record is printed beside the gateway's.
fn broker_pid() -> Option<String> {
    std::env::var("WARDEN_BENCH_BROKER_PID")
        .ok()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The broker's CPU seconds so far, when it runs here.
fn broker_cpu_seconds() -> Option<f64> {
    cpu_seconds_of(&broker_pid()?)
}

/// CPU time process `pid` (or `self`) has used so far, as [`cpu_seconds`].
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Waits until `sink`'s loader of the bench dataset has stored `target` records.
async fn stored(
    state: &warden_gateway::state::AppState,
    sink: &str,
    target: usize,
    start: Instant,
) {
    loop {
        let stored = state
            .loaders
            .stats("payments", sink)
            .map_or(0, |s| s.stored.load(Ordering::Relaxed));
        if stored >= target as u64 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "{sink}: {stored} of {target} stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The same transactions as the gateway takes, each one JSON record keyed by its customer,
/// sent as a bare producer would (no protection), with the gateway's producer settings.
async fn raw_producer(topic: &str, records: &[(String, Vec<u8>)]) -> Raw {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let (cpu_start, broker_start) = (cpu_seconds(), broker_cpu_seconds());
    let start = Instant::now();
    for chunk in records.chunks(REQUEST_RECORDS) {
        let sends = chunk.iter().map(|(key, payload)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Timeout::After(Duration::from_secs(30)),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }
    producer
        .flush(Timeout::After(Duration::from_secs(30)))
        .unwrap();
    let elapsed = start.elapsed();
    let n = records.len() as f64;
    Raw {
        rate: rate(records.len(), elapsed),
        producer_us: cpu_start.zip(cpu_seconds()).map(|(a, b)| (b - a) * 1e6 / n),
        broker_us: broker_start
            .zip(broker_cpu_seconds())
            .map(|(a, b)| (b - a) * 1e6 / n),
    }
}

/// One run of the bare producer: its rate, and the CPU a record cost the producer's process
/// and the broker.
struct Raw {
    rate: f64,
    producer_us: Option<f64>,
    broker_us: Option<f64>,
}

async fn run() {
    let n = records();
    let embedded = embedded_stream();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = tempfile::tempdir().unwrap();

    // First, on a quiet machine: the same records straight into the broker.
    let raw_records: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let t = transaction(i, 0);
            (
                t["user_id"].as_str().unwrap().to_owned(),
                serde_json::to_vec(&t).unwrap(),
            )
        })
        .collect();
    let raw_len = raw_records.iter().map(|(_, p)| p.len()).sum::<usize>() / n;
    // A protected record as streamed, for its size.
    let email = format!("enc:v1:{}", "A".repeat(64));
    let sample = warden_pipeline::StreamedRecord {
        dataset: "payments".into(),
        subject_ref: format!("sr_{:032x}", 1),
        contract_version: 1,
        fields: serde_json::from_value(json!({"transaction_id": "bench-00000001", "user_id": "sr_00000000000000000000000000000001",
            "card_number": "tok_abcdefghijklmnop1234", "email": email,
            "email__bidx": "b".repeat(64), "ip": "198.51.1.0", "amount": 1.25, "country": "DE",
            "created_at": "2026-11-24T10:00:00Z"})).unwrap(),
    };
    let streamed_len = serde_json::to_vec(&sample).unwrap().len();
    let raw_topic = format!("bench{id}.raw");
    // Three runs (one topic each): the broker's rate varies from run to run.
    let mut raw: Vec<Raw> = Vec::new();
    for run in (0..RUNS).filter(|_| !embedded) {
        let topic = format!("{raw_topic}{run}");
        warden_pipeline::stream::kafka::KafkaStream::new(&brokers(), 1)
            .unwrap()
            .ensure_topic(&topic, warden_pipeline::DEFAULT_PARTITIONS)
            .await
            .unwrap();
        raw.push(raw_producer(&topic, &raw_records).await);
    }

    // The gateway: embedded state, Kafka (or the embedded stream), the lake on local disk,
    // loaders on.
    let mut config = warden_gateway::config::Config::load(None, &HashMap::new()).unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.datasets_dir =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datasets"));
    config.limits.rate_per_second = 1_000_000;
    config.limits.rate_burst = 1_000_000;
    config.limits.max_ingest_bytes = 64 * 1024 * 1024;
    if !embedded {
        config.streams.url = format!("kafka://{}", brokers());
    }
    config.streams.topic_prefix = format!("bench{id}.");
    config
        .pipeline
        .stages
        .insert("payments".into(), vec!["normalize".into(), "dedupe".into()]);
    let env = HashMap::from([(
        "WARDEN_ADMIN_PASSWORD".to_owned(),
        "bench admin pass".to_owned(),
    )]);
    let (state, _) =
        warden_gateway::state::start(config, &env, Arc::new(warden_policy::SystemClock))
            .await
            .unwrap();
    let principal = PrincipalRecord {
        id: uuid::Uuid::new_v4().to_string(),
        kind: PrincipalKind::Service,
        name: "bench-stage".into(),
        secret_hash: "unused".into(),
        roles: vec!["stage".into()],
        disabled: false,
        failed_logins: 0,
        locked_until: 0,
        must_change_password: false,
        created_at: 0,
        credentials_epoch: 0,
    };
    state.store.create_principal(&principal).await.unwrap();
    let token = state
        .tokens
        .issue(
            &principal.id,
            PrincipalKind::Service,
            &principal.roles,
            &["client_secret"],
            None,
            principal.credentials_epoch,
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(warden_gateway::serve(state.clone(), listener, async {
        stopped.await.ok();
    }));

    let client = reqwest::Client::new();
    let post = |body: String| {
        let req = client
            .post(format!("{base}/v1/datasets/payments/records"))
            .bearer_auth(&token)
            .header("x-purpose", "fraud_detection")
            .header("content-type", "application/json")
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
        }
    };
    // One round: `n` transactions from id `ids_from` on, of customers from `customers_from`
    // on, until both sinks hold `sinks_hold` records.
    let round = |ids_from: usize, customers_from: usize, sinks_hold: usize| {
        let state = state.clone();
        let post = &post;
        async move {
            // The batches, encoded before the clock starts.
            let bodies: Vec<String> = (ids_from..ids_from + n)
                .collect::<Vec<_>>()
                .chunks(REQUEST_RECORDS)
                .map(|c| {
                    Value::Array(c.iter().map(|i| transaction(*i, customers_from)).collect())
                        .to_string()
                })
                .collect();
            let (cpu_start, broker_start) = (cpu_seconds(), broker_cpu_seconds());
            let start = Instant::now();
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut next = bodies.into_iter();
            for _ in 0..in_flight_requests() {
                if let Some(b) = next.next() {
                    in_flight.push(post(b));
                }
            }
            use futures::StreamExt;
            while in_flight.next().await.is_some() {
                if let Some(b) = next.next() {
                    in_flight.push(post(b));
                }
            }
            let accepted = start.elapsed();
            stored(&state, "lake", sinks_hold, start).await;
            let end_to_end = start.elapsed();
            let cpu = cpu_start.zip(cpu_seconds()).map(|(a, b)| b - a);
            let broker_cpu = broker_start.zip(broker_cpu_seconds()).map(|(a, b)| b - a);
            stored(&state, "documents", sinks_hold, start).await;
            Round {
                accepted,
                end_to_end,
                both: start.elapsed(),
                cpu,
                broker_cpu,
            }
        }
    };
    // The first round meets a fresh process: its heap grows from nothing, and on a virtual
    // machine every page it touches first costs a fault in the host too. A gateway that has
    // been running meets the next ones: other customers (new cards again), other
    // transactions each time.
    let first = round(0, 0, n).await;
    let mut running = Vec::new();
    for r in 1..=RUNS {
        running.push(round(r * n, r * CUSTOMERS, (r + 1) * n).await);
    }
    stop.send(()).ok();
    server.await.unwrap().unwrap();

    println!(
        "pipeline: {n} records a round: ~{raw_len} bytes as sent, ~{streamed_len} bytes protected on the stream"
    );
    let path = if embedded {
        "HTTP → embedded stream → stages → Delta"
    } else {
        "HTTP → Kafka → stages → Delta"
    };
    first.print("first round (a fresh process)", path, n);
    for (i, r) in running.iter().enumerate() {
        r.print(&format!("round {} (a running gateway)", i + 2), path, n);
    }
    let e2e = median(running.iter().map(|r| rate(n, r.end_to_end)).collect());
    let cpu = running
        .iter()
        .map(|r| r.cpu)
        .collect::<Option<Vec<f64>>>()
        .map(median);
    // The raw producer's best run: its slow runs are the broker's hiccups (a run of three can
    // hold a slow one or two), and the ratio should not profit from them.
    let raw_best = raw.iter().map(|r| r.rate).fold(0.0, f64::max);
    let raw_runs: Vec<String> = raw.iter().map(|r| format!("{:.0}", r.rate)).collect();
    let broker_cpu = running
        .iter()
        .map(|r| r.broker_cpu)
        .collect::<Option<Vec<f64>>>()
        .map(median);
    println!("  running gateway, median of {RUNS} rounds:");
    println!("    end to end ({path}): {e2e:>9.0} records/s");
    if let Some(cpu) = cpu {
        println!(
            "    gateway CPU until the lake held all:       {:>9.1} µs a record",
            cpu * 1e6 / n as f64
        );
    }
    if let Some(b) = broker_cpu {
        println!(
            "    broker CPU meanwhile:                      {:>9.1} µs a record",
            b * 1e6 / n as f64
        );
    }
    if embedded {
        return;
    }
    println!(
        "  bare rdkafka producer into the same broker:  {raw_best:>9.0} records/s (best of {RUNS}: {})",
        raw_runs.join(", ")
    );
    // The CPU a record cost in the bare producer's runs: what a record costs the broker and
    // librdkafka alone, the floor under the gateway's end-to-end figures on these cores.
    let per_record =
        |f: fn(&Raw) -> Option<f64>| raw.iter().map(f).collect::<Option<Vec<f64>>>().map(median);
    if let Some(p) = per_record(|r| r.producer_us) {
        println!("    producer process CPU (median run):        {p:>9.1} µs a record");
    }
    if let Some(b) = per_record(|r| r.broker_us) {
        println!("    broker CPU (median run):                  {b:>9.1} µs a record");
    }
    println!(
        "  end to end (median running round) / raw (best run): {:.2} (first round {:.2})",
        e2e / raw_best,
        rate(n, first.end_to_end) / raw_best
    );
}

/// Runs of the raw producer (the best counts) and rounds of the running gateway (the median
/// counts).
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// What one round measured.
struct Round {
    accepted: Duration,
    end_to_end: Duration,
    both: Duration,
    /// The gateway's CPU seconds until the lake held every record.
    cpu: Option<f64>,
    /// The broker's CPU seconds meanwhile, when it runs here.
    broker_cpu: Option<f64>,
}

impl Round {
    fn print(&self, name: &str, path: &str, n: usize) {
        println!("  {name}:");
        println!(
            "    accepted over HTTP (protected, published): {:>9.0} records/s",
            rate(n, self.accepted)
        );
        println!(
            "    end to end ({path}): {:>9.0} records/s",
            rate(n, self.end_to_end)
        );
        println!(
            "    ... and into the documents as well:          {:>9.0} records/s",
            rate(n, self.both)
        );
        if let Some(cpu) = self.cpu {
            // The gateway's own CPU (not the broker's) while the lake was being filled, the
            // document loader included: what bounds the rate on a machine of few cores.
            println!(
                "    gateway CPU until the lake held all: {:.1} µs a record ({:.1} cores busy)",
                cpu * 1e6 / n as f64,
                cpu / self.end_to_end.as_secs_f64()
            );
        }
        if let Some(b) = self.broker_cpu {
            println!(
                "    broker CPU meanwhile: {:.1} µs a record ({:.1} cores busy)",
                b * 1e6 / n as f64,
                b / self.end_to_end.as_secs_f64()
            );
        }
    }
}
