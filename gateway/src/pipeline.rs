//! The gateway's data plane: the configured stream and document store, and the loaders that
//! carry each dataset's records from its stream into the document store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use warden_audit::Db;
use warden_pipeline::docs::embedded::EmbeddedDocuments;
use warden_pipeline::docs::mongo::MongoDocuments;
use warden_pipeline::docs::DocumentStore;
use warden_pipeline::lake::{Lake, LakeConfig, LakeSink};
use warden_pipeline::loader::{self, DocumentSink, LoaderStats};
use warden_pipeline::stream::embedded::EmbeddedStream;
use warden_pipeline::stream::kafka::KafkaStream;
use warden_pipeline::stream::Stream;
use warden_policy::contract::Contract;

use crate::config::Config;
use crate::datasets::Datasets;

/// How often the supervisor looks for datasets without a loader.
const SUPERVISE: Duration = Duration::from_secs(2);

/// The stream as configured.
///
/// # Errors
/// A Kafka configuration librdkafka refuses.
pub fn open_stream(config: &Config, state_db: &Db) -> anyhow::Result<Arc<dyn Stream>> {
    let s = &config.streams;
    if s.url == "embedded" {
        return Ok(Arc::new(EmbeddedStream::new(state_db.clone())));
    }
    let options: Vec<(&str, &str)> = s
        .producer
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let brokers = KafkaStream::brokers_from_url(&s.url);
    let topic: Vec<(&str, &str)> = s
        .topic
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let kafka = KafkaStream::with_options(brokers, s.replication, &options)
        .context("invalid streams configuration")?
        .with_topic_config(&topic);
    info!(brokers, "streams on Kafka");
    Ok(Arc::new(kafka))
}

/// The document store as configured.
///
/// # Errors
/// A MongoDB URL the driver refuses.
pub async fn open_documents(
    config: &Config,
    state_db: &Db,
) -> anyhow::Result<Arc<dyn DocumentStore>> {
    let url = &config.documents.url;
    if url == "embedded" {
        return Ok(Arc::new(EmbeddedDocuments::new(state_db.clone())));
    }
    let mongo = MongoDocuments::connect(url)
        .await
        .context("invalid documents.url")?;
    info!(url = %warden_audit::db::redact_url(url), "documents in MongoDB");
    Ok(Arc::new(mongo))
}

/// A loader's counters and task.
type Running = (Arc<LoaderStats>, JoinHandle<()>);

/// The lake as configured.
///
/// # Errors
/// A lake URL that is not a directory or URL.
pub fn open_lake(config: &Config) -> anyhow::Result<Arc<Lake>> {
    let lake = Lake::new(&LakeConfig {
        root: config.lake_url(),
        storage_options: config
            .lake
            .storage_options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
    .context("invalid lake.url")?;
    Ok(Arc::new(lake))
}

/// The sinks every dataset is loaded into.
#[derive(Clone)]
pub struct Sinks {
    pub documents: Arc<dyn DocumentStore>,
    pub lake: Arc<Lake>,
    /// Where the loaders learn which subjects were erased.
    pub keys: Arc<warden_policy::keyring::KeyRing>,
}

/// A sink that drops the records of erased subjects (their key destroyed) before they reach
/// the store: a record accepted before an erasure but loaded after it (stream lag, a loader
/// that was down) never lands. One batched key lookup per sink write.
pub struct SkipErased {
    inner: Arc<dyn loader::Sink>,
    keys: Arc<warden_policy::keyring::KeyRing>,
}

impl SkipErased {
    pub fn new(inner: Arc<dyn loader::Sink>, keys: Arc<warden_policy::keyring::KeyRing>) -> Self {
        Self { inner, keys }
    }
}

#[async_trait::async_trait]
impl loader::Sink for SkipErased {
    async fn prepare(&self, contract: &Contract) -> warden_pipeline::Result<()> {
        self.inner.prepare(contract).await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn write(
        &self,
        contract: &Contract,
        topic: &str,
        records: Vec<warden_pipeline::stages::Delivered>,
    ) -> warden_pipeline::Result<u64> {
        let refs: Vec<&str> = records
            .iter()
            .map(|d| d.record.subject_ref.as_str())
            .collect();
        let erased = self
            .keys
            .destroyed_among(warden_policy::keyring::SCOPE_SUBJECT, &refs)
            .await
            .map_err(|e| warden_pipeline::Error::Keys(e.to_string()))?;
        if erased.is_empty() {
            return self.inner.write(contract, topic, records).await;
        }
        let count = records.len();
        let live: Vec<warden_pipeline::stages::Delivered> = records
            .into_iter()
            .filter(|d| !erased.contains(&d.record.subject_ref))
            .collect();
        info!(
            dropped = count - live.len(),
            sink = self.inner.name(),
            "records of erased subjects not loaded"
        );
        if live.is_empty() {
            return Ok(0);
        }
        self.inner.write(contract, topic, live).await
    }
}

/// How often the embedded stream's retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Starts the stream's retention (`streams.retention`): every ten minutes, and once at start,
/// deletes the records older than the retention that every consumer group of their topic has
/// read. `None` when nothing is to be done here: Kafka (the broker's retention applies) or a
/// retention of `0s`.
pub fn retention(state: crate::state::AppState) -> Option<JoinHandle<()>> {
    let keep = state.config.streams.retention;
    if state.stream.kind() != "embedded" || keep.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            let now = state.clock.now_micros();
            let before = now.saturating_sub(i64::try_from(keep.as_micros()).unwrap_or(i64::MAX));
            match state.stream.prune_read(before).await {
                Ok(0) => {}
                Ok(n) => info!(records = n, "stream records past retention deleted"),
                Err(e) => tracing::warn!(error = %e, "stream retention failed; trying again later"),
            }
        }
    }))
}

/// The running loaders, one per dataset, and their counters.
#[derive(Debug, Default)]
pub struct Loaders {
    running: Mutex<HashMap<String, Running>>,
    stop: Mutex<Option<watch::Sender<bool>>>,
}

impl Loaders {
    /// Starts the supervisor: every few seconds, a loader for each dataset that has none.
    /// Topics and consumer groups carry `topic_prefix`.
    pub fn start(
        self: &Arc<Self>,
        stream: Arc<dyn Stream>,
        sinks: Sinks,
        datasets: Datasets,
        topic_prefix: String,
        stages: HashMap<String, Vec<warden_pipeline::stages::StageKind>>,
        partitions: i32,
    ) -> JoinHandle<()> {
        let (stop, shutdown) = watch::channel(false);
        *self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stop);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let kinds: [(&str, Arc<dyn loader::Sink>); 2] = [
                (
                    "documents",
                    Arc::new(SkipErased::new(
                        Arc::new(DocumentSink(sinks.documents)),
                        sinks.keys.clone(),
                    )),
                ),
                (
                    "lake",
                    Arc::new(SkipErased::new(Arc::new(LakeSink(sinks.lake)), sinks.keys)),
                ),
            ];
            let contracts: Arc<dyn loader::Contracts> = {
                let datasets = datasets.clone();
                Arc::new(move |name: &str| datasets.get(name))
            };
            let mut tick = tokio::time::interval(SUPERVISE);
            let mut shutdown_seen = shutdown.clone();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown_seen.changed() => break,
                }
                if *shutdown.borrow() {
                    break;
                }
                let mut running = this
                    .running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                running.retain(|_, (_, task)| !task.is_finished());
                for contract in datasets.all() {
                    for (kind, sink) in &kinds {
                        let key = format!("{}/{kind}", contract.name);
                        if running.contains_key(&key) {
                            continue;
                        }
                        let group = match *kind {
                            "lake" => warden_pipeline::lake::lake_group(&contract.name),
                            _ => loader::documents_group(&contract.name),
                        };
                        let stats = Arc::new(LoaderStats::default());
                        let task = tokio::spawn(loader::run(
                            Arc::clone(&stream),
                            Arc::clone(sink),
                            Arc::clone(&contracts),
                            loader::LoaderSpec {
                                dataset: contract.name.clone(),
                                group: format!("{topic_prefix}{group}"),
                                topic_prefix: topic_prefix.clone(),
                                stages: stages.get(&contract.name).cloned().unwrap_or_default(),
                                partitions,
                            },
                            Arc::clone(&stats),
                            shutdown.clone(),
                        ));
                        info!(dataset = %contract.name, sink = kind, "loader started");
                        running.insert(key, (stats, task));
                    }
                }
            }
        })
    }

    /// Counters of a dataset's loader into `sink` (`documents`, `lake`).
    pub fn stats(&self, dataset: &str, sink: &str) -> Option<Arc<LoaderStats>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&format!("{dataset}/{sink}"))
            .map(|(s, _)| Arc::clone(s))
    }

    /// Stops every loader after its current batch (uncommitted records are read again on the
    /// next start).
    pub async fn stop(&self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            // No receiver left means every loader has stopped already.
            stop.send(true).ok();
        }
        let tasks: Vec<JoinHandle<()>> = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, (_, t))| t)
            .collect();
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("a loader did not stop within 10 s");
            }
        }
    }
}
