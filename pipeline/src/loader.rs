//! Loaders: move a dataset's protected records from its stream into a sink, committing the
//! stream position only after the sink confirmed (at-least-once; sinks are idempotent, so a
//! replay after a crash leaves each record once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use warden_policy::contract::Contract;

use crate::docs::{CollectionSpec, Document, DocumentStore};
use crate::record::{StreamedRecord, H_DATASET};
use crate::stages::{Delivered, StageKind, Stages};
use crate::stream::{Message, Stream, Subscription, CLOSE_WAIT};
use crate::Result;

/// Most records per sink write (one Delta commit each: larger batches, fewer commits and
/// fewer small files; a poll takes what is fetched already, so a loader that keeps up
/// writes smaller ones).
pub const BATCH: usize = 20_000;
/// How long a poll waits for a first record.
const POLL_WAIT: Duration = Duration::from_millis(500);
/// Pause after a failure before reading again (from the last committed position).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// A subscription that has delivered nothing this long is replaced by a fresh one.
const IDLE_RESUBSCRIBE: Duration = Duration::from_secs(30);

/// Where a loader finds a dataset's current contract.
pub trait Contracts: Send + Sync + 'static {
    fn contract(&self, dataset: &str) -> Option<Arc<Contract>>;
}

impl<F> Contracts for F
where
    F: Fn(&str) -> Option<Arc<Contract>> + Send + Sync + 'static,
{
    fn contract(&self, dataset: &str) -> Option<Arc<Contract>> {
        self(dataset)
    }
}

/// The consumer group of the document loader of a dataset.
pub fn documents_group(dataset: &str) -> String {
    format!("warden-documents-{dataset}")
}

/// The collection layout of a dataset.
pub fn collection_spec(contract: &Contract) -> CollectionSpec {
    CollectionSpec {
        name: contract.collection.clone(),
        key_field: contract.record_key.clone(),
        subject_field: contract.subject_field.clone(),
    }
}

/// Counters of a loader, for metrics and tests.
#[derive(Debug, Default)]
pub struct LoaderStats {
    /// Records written to the sink.
    pub stored: AtomicU64,
    /// Records skipped: another dataset's, tombstones, unreadable, or without a record key.
    pub skipped: AtomicU64,
    /// Failed batches (each retried).
    pub failures: AtomicU64,
    /// Records `dedupe` dropped.
    pub deduplicated: AtomicU64,
}

/// A sink a loader writes batches of one dataset into.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Makes the sink ready for the dataset (collection, indexes, table).
    async fn prepare(&self, contract: &Contract) -> Result<()>;
    /// The sink's name for logs, metrics and consumer groups (`documents`, `lake`).
    fn name(&self) -> &'static str;
    /// Writes records read from `topic` durably; returns how many it wrote (a sink may skip
    /// records it holds already), once they are safe. The batch is the sink's: a sink that
    /// keeps the fields (the documents) moves them instead of copying every record.
    async fn write(&self, contract: &Contract, topic: &str, records: Vec<Delivered>)
        -> Result<u64>;
}

/// The document store as a sink: upserts by record key.
#[derive(Debug, Clone)]
pub struct DocumentSink(pub Arc<dyn DocumentStore>);

#[async_trait]
impl Sink for DocumentSink {
    fn name(&self) -> &'static str {
        "documents"
    }

    async fn prepare(&self, contract: &Contract) -> Result<()> {
        self.0.ensure_collection(&collection_spec(contract)).await
    }

    async fn write(
        &self,
        contract: &Contract,
        _topic: &str,
        records: Vec<Delivered>,
    ) -> Result<u64> {
        let docs: Vec<Document> = records
            .into_iter()
            .map(|d| d.record)
            .filter_map(|r| {
                Some(Document {
                    key: r.key(contract)?,
                    ts: r.time_micros(contract).unwrap_or(0),
                    subject_ref: r.subject_ref,
                    contract_version: r.contract_version,
                    fields: r.fields,
                })
            })
            .collect();
        self.0.upsert(&collection_spec(contract), &docs).await?;
        Ok(docs.len() as u64)
    }
}

/// Decodes a batch: this dataset's records, in stream order. A record's dataset header, when
/// the backend read it, skips another dataset's record undecoded; its value decides anyway.
fn decode(dataset: &str, messages: &[Message], stats: &LoaderStats) -> Vec<Delivered> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        if m.header(H_DATASET).is_some_and(|d| d != dataset) {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match StreamedRecord::from_message(m) {
            Ok(Some(r)) if r.dataset == dataset => out.push(Delivered {
                partition: m.partition,
                offset: m.offset,
                record: r,
            }),
            Ok(_) => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Position only: a malformed record is logged by where it is, not what it holds.
                tracing::warn!(error = %e, "skipping an unreadable record");
                stats.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out
}

/// The environment variable naming a sink whose loader dies (abort, as from `kill -9`)
/// right after its first write, before the stream commit: the crash window exactly-once
/// delivery is about. For the end-to-end tests; unset in any real deployment.
pub const CRASH_ENV: &str = "WARDEN_CRASH_AFTER_SINK_WRITE";

fn crash_point(sink: &str) {
    static CRASH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = CRASH.get_or_init(|| std::env::var(CRASH_ENV).ok());
    if armed.as_deref() == Some(sink) {
        eprintln!("{CRASH_ENV}={sink}: dying between the sink write and the stream commit");
        std::process::abort();
    }
}

/// Handles one poll: reads up to [`BATCH`] records, writes this dataset's into the sink,
/// then commits. Returns how many messages were read.
///
/// # Errors
/// Stream or sink failures; nothing was committed then.
pub async fn step(
    sub: &mut dyn Subscription,
    sink: &dyn Sink,
    stages: &mut Stages,
    contract: &Contract,
    stats: &LoaderStats,
    wait: Duration,
) -> Result<usize> {
    let messages = sub.poll_values(BATCH, wait).await?;
    let Some(topic) = messages.first().map(|m| m.topic.clone()) else {
        return Ok(0);
    };
    let records = decode(&contract.name, &messages, stats);
    let mut staged = stages.apply(contract, records);
    let batch = std::mem::take(&mut staged.records);
    if !batch.is_empty() {
        let count = batch.len() as u64;
        let stored = sink.write(contract, &topic, batch).await?;
        stats
            .skipped
            .fetch_add(count.saturating_sub(stored), Ordering::Relaxed);
        stats.stored.fetch_add(stored, Ordering::Relaxed);
    }
    stats
        .deduplicated
        .fetch_add(staged.dropped as u64, Ordering::Relaxed);
    stages.written(staged);
    crash_point(sink.name());
    sub.commit(&messages).await?;
    Ok(messages.len())
}

/// What a loader reads: a dataset's records, from `topic_prefix` + the contract's stream, as
/// consumer group `group`, through `stages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderSpec {
    pub dataset: String,
    pub group: String,
    pub topic_prefix: String,
    pub stages: Vec<StageKind>,
    /// Partitions of the topic, should the loader be the first to create it.
    pub partitions: i32,
}

/// Runs a dataset's loader until `shutdown` turns true: subscribes to `topic_prefix` + the
/// contract's stream as `group`, and after any failure pauses and subscribes again, so
/// uncommitted records are read again.
pub async fn run(
    stream: Arc<dyn Stream>,
    sink: Arc<dyn Sink>,
    contracts: Arc<dyn Contracts>,
    spec: LoaderSpec,
    stats: Arc<LoaderStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let LoaderSpec {
        dataset,
        group,
        topic_prefix,
        stages,
        partitions,
    } = spec;
    let mut stages = Stages::new(&stages);
    let mut prepared = None;
    while !*shutdown.borrow() {
        let Some(contract) = contracts.contract(&dataset) else {
            tracing::info!(%dataset, "dataset gone; loader stops");
            return;
        };
        let attempt = async {
            if prepared != Some(contract.version) {
                sink.prepare(&contract).await?;
                prepared = Some(contract.version);
            }
            let topic = format!("{topic_prefix}{}", contract.stream);
            stream.ensure_topic(&topic, partitions).await?;
            stream.subscribe(&topic, &group).await
        };
        let mut sub = match attempt.await {
            Ok(sub) => sub,
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%dataset, error = %e, "loader cannot start; retrying");
                if pause(&mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        let mut last_record = std::time::Instant::now();
        // True to stop, false to subscribe again.
        let stop = loop {
            if *shutdown.borrow() {
                break true;
            }
            if last_record.elapsed() > IDLE_RESUBSCRIBE {
                // A member can stay assigned yet fed nothing after a broker restart: a fresh
                // one resumes from the last commit (an idle stream just re-joins).
                tracing::debug!(%dataset, "no record for a while; subscribing again");
                break false;
            }
            let contract = contracts
                .contract(&dataset)
                .unwrap_or_else(|| contract.clone());
            let stepped = tokio::select! {
                r = step(sub.as_mut(), sink.as_ref(), &mut stages, &contract, &stats, POLL_WAIT) => r,
                _ = shutdown.changed() => break true,
            };
            if matches!(stepped, Ok(n) if n > 0) {
                last_record = std::time::Instant::now();
            }
            if let Err(e) = stepped {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%dataset, error = %e, "loader batch failed; reading again from the last commit");
                break pause(&mut shutdown).await;
            }
        };
        // The group hears this member leave (and gets its last positions) before a new one
        // joins; a broker that does not answer holds the loader up for CLOSE_WAIT at most.
        sub.close(CLOSE_WAIT).await;
        if stop {
            break;
        }
    }
}

/// Waits [`RETRY_PAUSE`]; true when shutdown came first.
async fn pause(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RETRY_PAUSE) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
