//! Streams: keyed records published into topics, read by consumer groups that commit their
//! positions once the records are safe downstream.
//!
//! Two implementations with one contract (`tests/it/streams.rs` runs the same suite on
//! both): [`kafka::KafkaStream`] (rdkafka; idempotent producer, `acks=all`) and
//! [`embedded::EmbeddedStream`], a durable log in the state database for the one-binary mode.

use std::time::Duration;

use async_trait::async_trait;

use crate::Result;

pub mod embedded;
pub mod kafka;

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// The partitioning key: `subject_ref` for Warden's records.
    pub key: String,
    /// `None` publishes a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

/// Where a published record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A record read from a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Message {
    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A stream backend.
///
/// Contract, for every implementation:
/// - `publish` returns once every record is durable (Kafka: acknowledged by all in-sync
///   replicas), with one position per record, in order; records with the same key land in
///   the same partition in publish order;
/// - a subscription of a group starts after the group's last committed position (at the
///   beginning for a new group) and sees every record published after that, once;
/// - `commit` stores, per partition, the offset *after* the last record handled; records not
///   committed are delivered again to the next subscription of the group (at-least-once:
///   sinks are idempotent).
#[async_trait]
pub trait Stream: Send + Sync + std::fmt::Debug + 'static {
    /// Creates the topic if it does not exist.
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<()>;
    /// Publishes records; their positions, in order.
    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Position>>;
    /// Erases a key's records from a topic (a data subject's, when keyed by `subject_ref`):
    /// the embedded log empties them in place (value and headers gone, the position kept, so
    /// no consumer skips a record; retention deletes them later); Kafka appends a tombstone,
    /// and compaction removes the earlier records within the topic's `max.compaction.lag.ms`.
    /// Returns the records emptied, or the tombstones written.
    async fn erase_key(&self, topic: &str, key: &str) -> Result<u64>;
    /// Subscribes a consumer group to a topic.
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>>;
    /// Retention: deletes the records published before `before` (Unix microseconds) that
    /// every consumer group of their topic has committed past; returns how many. A topic no
    /// group has committed on keeps everything, and so does a partition a group of the topic
    /// has not committed on yet. Kafka: nothing here, the broker's own retention
    /// (`retention.ms`) applies.
    async fn prune_read(&self, before: i64) -> Result<u64> {
        let _ = before;
        Ok(0)
    }
    /// The backend's name for logs and metrics (`kafka`, `embedded`).
    fn kind(&self) -> &'static str;
}

/// How long a stopping loader waits for its subscription to close (see
/// [`Subscription::close`]) before the close goes on in the background.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One member of a consumer group.
#[async_trait]
pub trait Subscription: Send + std::fmt::Debug {
    /// Up to `max` records, waiting at most `wait` for the first one; empty when none came.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>>;
    /// As [`Subscription::poll`], for a reader that needs no headers: the loaders, since a
    /// Warden record's value names its dataset too. A backend may leave the headers out
    /// (Kafka: reading them parses them out of the fetched batch, record by record).
    async fn poll_values(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        self.poll(max, wait).await
    }
    /// Commits the positions after `messages` (the highest offset per partition, plus one).
    async fn commit(&mut self, messages: &[Message]) -> Result<()> {
        self.commit_offsets(&next_offsets(messages)).await
    }
    /// Commits, per partition, the next offset to read.
    async fn commit_offsets(&mut self, next: &[(i32, i64)]) -> Result<()>;
    /// Leaves the group, waiting at most `wait` for what closing involves (Kafka: committing
    /// the stored positions and leaving the group, which waits for the broker); past `wait`,
    /// the close goes on in the background. Dropping a subscription closes it the same way
    /// without waiting: no caller ever blocks on an unreachable broker.
    async fn close(self: Box<Self>, wait: Duration) {
        let _ = wait;
    }
}

/// The next offset to consume per partition after `messages`.
pub fn next_offsets(messages: &[Message]) -> Vec<(i32, i64)> {
    let mut next: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for m in messages {
        let e = next.entry(m.partition).or_insert(m.offset + 1);
        *e = (*e).max(m.offset + 1);
    }
    next.into_iter().collect()
}

/// The partition of a key among `partitions`: murmur2, as Kafka's Java client and
/// librdkafka's `murmur2_random` partitioner compute it, so the embedded log places keys as
/// Kafka would.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let h = murmur2(key.as_bytes()) & 0x7fff_ffff;
    (h % partitions.max(1) as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2 (as signed 32-bit ints).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn next_offsets_take_the_highest_per_partition() {
        let m = |partition, offset| Message {
            topic: "t".into(),
            partition,
            offset,
            key: String::new(),
            value: None,
            headers: vec![],
        };
        assert_eq!(
            next_offsets(&[m(0, 4), m(1, 9), m(0, 7), m(0, 5)]),
            vec![(0, 8), (1, 10)]
        );
        assert!(next_offsets(&[]).is_empty());
    }
}
