//! [`Stream`] on Kafka (rdkafka over the bundled librdkafka): an idempotent producer with
//! `acks=all`, records keyed by `subject_ref` with Warden's headers; consumer groups with
//! positions stored only after the sink confirmed (and committed from there by librdkafka,
//! every second and on close).

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{Message, OutRecord, Position, Stream, Subscription, CLOSE_WAIT};
use crate::{Error, Result};

/// How long a publish may wait for the broker before it fails: well inside the gateway's
/// request timeout, so a request that answers has its fate settled.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Producer properties options may not change: they make delivery exactly-once per
/// partition and durable.
const PINNED: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "bootstrap.servers",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    // A publish waits for every record's report: a producer reporting failures only would
    // leave it waiting.
    "delivery.report.only.error",
];

/// How long the broker may hold a consumer's fetch while it has fewer records than asked
/// for (librdkafka's `fetch.wait.max.ms`, 500 by default). Kafka answers as soon as records
/// are there, so on Kafka this only paces an idle consumer's requests (about ten a second).
/// tansu 0.6 sleeps after reading a fetch's records even when it found some: half of the
/// time remaining if that is 250 ms or more, all of it below. At 500 ms every fetch took
/// about 250 ms more, and a loader idled up to 435 ms a poll while its topic filled; at
/// 100 ms a fetch takes 100 ms.
const FETCH_WAIT_MS: &str = "100";

/// Producer properties options may set, but not to 0: librdkafka reads 0 as "no limit", and
/// a publish (an erasure's tombstone too) would then wait for an unreachable broker for ever.
const BOUNDED: &[&str] = &["message.timeout.ms", "delivery.timeout.ms"];

/// How long a publish waits before it offers a record again to a full producer queue.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

fn kafka_err(context: &str, e: &KafkaError) -> Error {
    Error::Stream(format!("kafka {context}: {e}"))
}

/// One `publish` call's records in flight: where each landed, how many are still
/// unacknowledged, the first failure, and whom to tell when the last one is settled.
/// librdkafka reports every record once (delivered, or failed after its retries), on the
/// producer's polling thread; the publishing task is woken once per batch, not per record.
struct Batch {
    partitions: Box<[AtomicI32]>,
    offsets: Box<[AtomicI64]>,
    unsettled: AtomicUsize,
    failed: Mutex<Option<KafkaError>>,
    settled: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Batch {
    fn new(n: usize) -> (Arc<Self>, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let batch = Self {
            partitions: (0..n).map(|_| AtomicI32::new(-1)).collect(),
            offsets: (0..n).map(|_| AtomicI64::new(-1)).collect(),
            unsettled: AtomicUsize::new(n),
            failed: Mutex::new(None),
            settled: Mutex::new(Some(tx)),
        };
        (Arc::new(batch), rx)
    }

    /// Records that record `index` is settled, delivered at `landed` or failed.
    fn settle(&self, index: usize, landed: std::result::Result<(i32, i64), KafkaError>) {
        match landed {
            Ok((partition, offset)) => {
                self.partitions[index].store(partition, Ordering::Relaxed);
                self.offsets[index].store(offset, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(e);
            }
        }
        // AcqRel: the last settler sees every other record's position (and the publisher,
        // woken by it, sees them too).
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self
                .settled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                tx.send(()).ok();
            }
        }
    }

    fn failure(&self) -> Option<KafkaError> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn positions(&self) -> Vec<Position> {
        self.partitions
            .iter()
            .zip(self.offsets.iter())
            .map(|(p, o)| Position {
                partition: p.load(Ordering::Relaxed),
                offset: o.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The producer's context: settles each record in its [`Batch`].
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<(Arc<Batch>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (batch, index) = *opaque;
        let landed = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        batch.settle(index, landed);
    }
}

/// [`Stream`] on a Kafka cluster.
#[derive(Clone)]
pub struct KafkaStream {
    brokers: String,
    /// Clones share one producer (and its polling thread).
    producer: ThreadedProducer<Deliveries>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    replication: i32,
    topic_config: Vec<(String, String)>,
}

/// Configuration of the topics Warden creates: records are keyed by `subject_ref`, so
/// compaction plus a subject's tombstone removes the subject's records from the topic.
/// `min.compaction.lag.ms` leaves a day's records uncompacted (the loaders read them first);
/// `max.compaction.lag.ms` bounds how long an erased subject's records stay (a week); they
/// are unreadable from the moment the subject's key is destroyed anyway.
pub const TOPIC_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "compact,delete"),
    ("min.compaction.lag.ms", "86400000"),
    ("max.compaction.lag.ms", "604800000"),
];

impl std::fmt::Debug for KafkaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStream")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaStream {
    /// Connects to `brokers` (`host:port,...`). `replication` is the replication factor of
    /// topics Warden creates (1 for a single broker).
    ///
    /// # Errors
    /// A configuration librdkafka refuses.
    pub fn new(brokers: &str, replication: i32) -> Result<Self> {
        Self::with_options(brokers, replication, &[])
    }

    /// As [`KafkaStream::new`], with librdkafka producer properties on top of Warden's
    /// (`[streams.producer]` in the config). Idempotence and `acks=all` cannot be turned off.
    ///
    /// # Errors
    /// A configuration librdkafka refuses, or one that weakens delivery.
    pub fn with_options(brokers: &str, replication: i32, options: &[(&str, &str)]) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        for (k, v) in options {
            if PINNED.contains(k) {
                return Err(Error::Invalid(format!(
                    "streams.producer: {k} is fixed by Warden (idempotent, acks=all, \
                     every delivery reported)"
                )));
            }
            if BOUNDED.contains(k) && !v.trim().parse::<u64>().is_ok_and(|ms| ms > 0) {
                return Err(Error::Invalid(format!(
                    "streams.producer: {k} must be a positive number of milliseconds"
                )));
            }
            config.set(*k, *v);
        }
        let producer: ThreadedProducer<Deliveries> = config
            .create_with_context(Deliveries)
            .map_err(|e| kafka_err("producer", &e))?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .map_err(|e| kafka_err("admin client", &e))?;
        Ok(Self {
            brokers: brokers.to_owned(),
            producer,
            admin: Arc::new(admin),
            replication: replication.max(1),
            topic_config: TOPIC_CONFIG
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    /// Topic properties set when Warden creates a topic, over [`TOPIC_CONFIG`]
    /// (`[streams.topic]` in the config).
    #[must_use]
    pub fn with_topic_config(mut self, config: &[(&str, &str)]) -> Self {
        for (k, v) in config {
            self.topic_config.retain(|(key, _)| key != k);
            self.topic_config.push(((*k).to_owned(), (*v).to_owned()));
        }
        self
    }

    /// `host:port,...` from a `kafka://host:port,host:port` URL (or a bare broker list).
    pub fn brokers_from_url(url: &str) -> &str {
        url.strip_prefix("kafka://")
            .unwrap_or(url)
            .trim_end_matches('/')
    }
}

#[async_trait]
impl Stream for KafkaStream {
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        if !(1..=1024).contains(&partitions) {
            return Err(Error::Invalid("partitions: 1 to 1024".into()));
        }
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.replication));
        for (k, v) in &self.topic_config {
            new = new.set(k, v);
        }
        let results = self
            .admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .map_err(|e| kafka_err("create topic", &e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(Error::Stream(format!("kafka create topic {t}: {code}")))
                }
            }
        }
        Ok(())
    }

    async fn erase_key(&self, topic: &str, key: &str) -> Result<u64> {
        let tombstone = OutRecord {
            key: key.to_owned(),
            value: None,
            headers: Vec::new(),
        };
        self.publish(topic, vec![tombstone]).await?;
        Ok(1)
    }

    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let (batch, settled) = Batch::new(records.len());
        for (index, r) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record = BaseRecord::with_opaque_to(topic, Box::new((batch.clone(), index)))
                .key(&r.key)
                .headers(headers);
            if let Some(v) = &r.value {
                record = record.payload(v);
            }
            // A full queue empties as the broker acknowledges: offer the record again, for
            // as long as a delivery may take.
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if started.elapsed() < DELIVERY_TIMEOUT =>
                    {
                        record = back;
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    // The records handed over before still settle, into a batch no one
                    // waits for any more.
                    Err((e, _)) => return Err(kafka_err("publish", &e)),
                }
            }
        }
        // librdkafka settles every record it took, within `message.timeout.ms` (never
        // unbounded here, see BOUNDED); the sender goes only with the batch, which the records
        // in flight hold.
        settled
            .await
            .map_err(|_| Error::Stream("kafka publish: the producer went away".into()))?;
        if let Some(e) = batch.failure() {
            return Err(kafka_err("publish", &e));
        }
        Ok(batch.positions())
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            // Offsets are stored only once the sink confirmed (`commit_offsets`), and
            // librdkafka commits the stored ones every second and on close: nothing blocks on
            // a broker that is down, and a crash replays at most a second's worth.
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .create()
            .map_err(|e| kafka_err("consumer", &e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| kafka_err("subscribe", &e))?;
        Ok(Box::new(KafkaSubscription {
            consumer: Some(consumer),
            topic: topic.to_owned(),
        }))
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

struct KafkaSubscription {
    /// `None` once handed to [`close_off_thread`].
    consumer: Option<StreamConsumer>,
    topic: String,
}

impl KafkaSubscription {
    fn consumer(&self) -> Result<&StreamConsumer> {
        self.consumer
            .as_ref()
            .ok_or_else(|| Error::Stream(format!("kafka consumer of {} closed", self.topic)))
    }
}

/// Closes `consumer` on a thread of its own and returns what fires once it is closed.
/// rust-rdkafka's drop polls until librdkafka's close finished: committing the stored
/// positions and leaving the group, which waits for the broker without bound (a consumer
/// dropped just after its broker was killed was still closing 90 s later). A runtime thread
/// blocked there would stall every task on it, and a gateway's shutdown with it.
fn close_off_thread(consumer: StreamConsumer, topic: &str) -> tokio::sync::oneshot::Receiver<()> {
    let (done, closed) = tokio::sync::oneshot::channel();
    let topic = topic.to_owned();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            drop(consumer);
            if started.elapsed() > CLOSE_WAIT {
                tracing::info!(%topic, after = ?started.elapsed(), "kafka consumer closed");
            }
            done.send(()).ok();
        });
    if let Err(e) = spawned {
        // The consumer went with the closure, closed on this thread.
        tracing::warn!(error = %e, "no thread to close a kafka consumer on");
    }
    closed
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            drop(close_off_thread(consumer, &self.topic));
        }
    }
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// A fetched record as a [`Message`]; without its headers unless `headers`.
fn owned(m: &rdkafka::message::BorrowedMessage<'_>, headers: bool) -> Message {
    Message {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        value: m.payload().map(<[u8]>::to_vec),
        // Only when asked: librdkafka parses a record's headers on the first look at them.
        headers: headers
            .then(|| m.headers())
            .flatten()
            .map(|h| {
                h.iter()
                    .filter_map(|h| {
                        let v = std::str::from_utf8(h.value?).ok()?;
                        Some((h.key.to_owned(), v.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl KafkaSubscription {
    /// Up to `max` records, waiting at most `wait` for the first; headers if `headers`.
    async fn fetched(&self, max: usize, wait: Duration, headers: bool) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        let consumer = self.consumer()?;
        match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(Err(e)) => return Err(kafka_err("poll", &e)),
            Ok(Ok(m)) => out.push(owned(&m, headers)),
        }
        // Then whatever is already fetched, without waiting.
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(owned(&m, headers)),
                Some(Err(e)) => return Err(kafka_err("poll", &e)),
                None => break,
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        self.fetched(max, wait, true).await
    }

    async fn poll_values(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        self.fetched(max, wait, false).await
    }

    async fn commit_offsets(&mut self, next: &[(i32, i64)]) -> Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &(p, offset) in next {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(offset))
                .map_err(|e| kafka_err("commit", &e))?;
        }
        self.consumer()?
            .store_offsets(&tpl)
            .map_err(|e| kafka_err("store offsets", &e))
    }

    async fn close(mut self: Box<Self>, wait: Duration) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let closed = close_off_thread(consumer, &self.topic);
        if tokio::time::timeout(wait, closed).await.is_err() {
            tracing::warn!(topic = %self.topic, ?wait,
                "kafka consumer not closed yet (broker unreachable?); closing in the background");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No broker needed: librdkafka checks the configuration when the producer is created.
    #[test]
    fn options_cannot_weaken_delivery_or_unbound_a_publish() {
        let with = |k: &str, v: &str| KafkaStream::with_options("127.0.0.1:1", 1, &[(k, v)]);
        for (k, v) in [
            ("acks", "1"),
            ("enable.idempotence", "false"),
            ("delivery.report.only.error", "true"),
            ("message.timeout.ms", "0"),
            ("delivery.timeout.ms", "0"),
            ("message.timeout.ms", "soon"),
        ] {
            let refused = with(k, v).map(|_| ()).unwrap_err().to_string();
            assert!(refused.contains(k), "{k}={v}: {refused}");
        }
        for (k, v) in [("message.timeout.ms", "25000"), ("linger.ms", "10")] {
            assert!(with(k, v).is_ok(), "{k}={v} refused");
        }
    }
}
