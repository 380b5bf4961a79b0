//! The embedded stream: a durable log in the state database (`stream_records`), with committed
//! positions per consumer group (`stream_offsets`). For the one-binary mode: one writer
//! process; a group has one member, which reads every partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::{Any, Row};
use tokio::sync::{Mutex, Notify};
use warden_audit::db::value_rows;
use warden_audit::Db;

use super::{partition_of, Message, OutRecord, Position, Stream, Subscription};
use crate::{Error, Result};

/// Rows per multi-row INSERT (seven parameters each).
const INSERT_ROWS: usize = 500;
/// Positions deleted per statement when old records are pruned.
const PRUNE_WINDOW: i64 = 10_000;
/// How often a waiting subscription looks for records another process appended.
const RECHECK: Duration = Duration::from_millis(200);

/// [`Stream`] over the state database.
#[derive(Debug, Clone)]
pub struct EmbeddedStream {
    db: Db,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Partitions per topic, once known.
    topics: std::sync::Mutex<HashMap<String, i32>>,
    /// Next position per (topic, partition); appends are serialized here.
    next: Mutex<HashMap<(String, i32), i64>>,
    /// Woken on every append, so waiting subscriptions in this process see it at once.
    appended: Notify,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl EmbeddedStream {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            inner: Arc::default(),
        }
    }

    async fn partitions(&self, topic: &str) -> Result<i32> {
        if let Some(n) = self.cached_partitions(topic) {
            return Ok(n);
        }
        let row = sqlx::query::<Any>("SELECT partitions FROM stream_topics WHERE topic = $1")
            .bind(topic.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| Error::NoSuchTopic(topic.to_owned()))?;
        let n = i32::try_from(row.try_get::<i64, _>(0)?).unwrap_or(1);
        self.inner
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_owned(), n);
        Ok(n)
    }

    fn cached_partitions(&self, topic: &str) -> Option<i32> {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .copied()
    }

    async fn next_position(&self, topic: &str, partition: i32) -> Result<i64> {
        let row = sqlx::query::<Any>(
            "SELECT COALESCE(MAX(pos) + 1, 0) FROM stream_records WHERE topic = $1 AND part = $2",
        )
        .bind(topic.to_owned())
        .bind(i64::from(partition))
        .fetch_one(self.db.pool())
        .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }
}

#[async_trait]
impl Stream for EmbeddedStream {
    async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        if !(1..=1024).contains(&partitions) {
            return Err(Error::Invalid("partitions: 1 to 1024".into()));
        }
        sqlx::query::<Any>(
            "INSERT INTO stream_topics (topic, partitions, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (topic) DO NOTHING",
        )
        .bind(topic.to_owned())
        .bind(i64::from(partitions))
        .bind(now_micros())
        .execute(self.db.pool())
        .await?;
        self.partitions(topic).await.map(|_| ())
    }

    async fn publish(&self, topic: &str, records: Vec<OutRecord>) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let partitions = self.partitions(topic).await?;
        let ts = now_micros();
        let mut next = self.inner.next.lock().await;
        let mut positions = Vec::with_capacity(records.len());
        let mut assigned: HashMap<i32, i64> = HashMap::new();
        for r in &records {
            let p = partition_of(&r.key, partitions);
            let pos = match assigned.get(&p) {
                Some(pos) => *pos,
                None => match next.get(&(topic.to_owned(), p)) {
                    Some(pos) => *pos,
                    None => self.next_position(topic, p).await?,
                },
            };
            assigned.insert(p, pos + 1);
            positions.push(Position {
                partition: p,
                offset: pos,
            });
        }
        let mut tx = self.db.pool().begin().await?;
        let rows: Vec<(&OutRecord, &Position)> = records.iter().zip(&positions).collect();
        for chunk in rows.chunks(INSERT_ROWS) {
            let values = value_rows(self.db.backend(), chunk.len(), 7);
            let sql = format!(
                "INSERT INTO stream_records (topic, part, pos, record_key, value, headers, ts) VALUES {}",
                values
            );
            let mut q = sqlx::query::<Any>(&sql);
            for (r, p) in chunk {
                let headers: serde_json::Map<String, serde_json::Value> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                q = q
                    .bind(topic.to_owned())
                    .bind(i64::from(p.partition))
                    .bind(p.offset)
                    .bind(r.key.clone())
                    .bind(r.value.clone())
                    .bind(serde_json::Value::Object(headers).to_string())
                    .bind(ts);
            }
            if let Err(e) = q.execute(&mut *tx).await {
                // Another process appended (the embedded log wants one writer): forget what
                // this one believed, so the next attempt starts from the table.
                next.retain(|(t, _), _| t != topic);
                return Err(e.into());
            }
        }
        tx.commit().await?;
        for (p, pos) in assigned {
            next.insert((topic.to_owned(), p), pos);
        }
        drop(next);
        self.inner.appended.notify_waiters();
        Ok(positions)
    }

    /// The key's records become tombstones in place: their values and headers are gone,
    /// their positions stay (a position is never reused, so no consumer skips a record).
    async fn erase_key(&self, topic: &str, key: &str) -> Result<u64> {
        // Every partition: the key's records are where its partition was when they were
        // written.
        let n = sqlx::query::<Any>(
            "UPDATE stream_records SET value = NULL, headers = '{}' \
             WHERE topic = $1 AND record_key = $2 AND value IS NOT NULL",
        )
        .bind(topic.to_owned())
        .bind(key.to_owned())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Deletes in windows of [`PRUNE_WINDOW`] positions, one short transaction each, so the
    /// writers (ingest, loaders committing) are never held up for long. The newest record of
    /// each partition stays: the next position is found from it after a restart, so a
    /// position is never given twice.
    async fn prune_read(&self, before: i64) -> Result<u64> {
        let topics = sqlx::query::<Any>("SELECT topic, partitions FROM stream_topics")
            .fetch_all(self.db.pool())
            .await?;
        let mut pruned = 0;
        for row in topics {
            let topic: String = row.try_get(0)?;
            let partitions: i64 = row.try_get(1)?;
            let committed = sqlx::query::<Any>(
                "SELECT grp, part, next_pos FROM stream_offsets WHERE topic = $1",
            )
            .bind(topic.clone())
            .fetch_all(self.db.pool())
            .await?;
            let mut groups: HashMap<String, HashMap<i64, i64>> = HashMap::new();
            for c in committed {
                groups
                    .entry(c.try_get(0)?)
                    .or_default()
                    .insert(c.try_get(1)?, c.try_get(2)?);
            }
            if groups.is_empty() {
                continue;
            }
            for part in 0..partitions {
                // The slowest group's position here; a group of the topic that has not
                // committed on this partition has read none of it.
                let read = groups
                    .values()
                    .map(|g| g.get(&part).copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                if read <= 0 {
                    continue;
                }
                let bounds = sqlx::query::<Any>(
                    "SELECT MIN(pos), MAX(pos) FROM stream_records WHERE topic = $1 AND part = $2",
                )
                .bind(topic.clone())
                .bind(part)
                .fetch_one(self.db.pool())
                .await?;
                let (Some(first), Some(last)) = (
                    bounds.try_get::<Option<i64>, _>(0)?,
                    bounds.try_get::<Option<i64>, _>(1)?,
                ) else {
                    continue;
                };
                let end = read.min(last);
                let mut from = first;
                while from < end {
                    let to = end.min(from.saturating_add(PRUNE_WINDOW));
                    pruned += sqlx::query::<Any>(
                        "DELETE FROM stream_records \
                         WHERE topic = $1 AND part = $2 AND pos >= $3 AND pos < $4 AND ts < $5",
                    )
                    .bind(topic.clone())
                    .bind(part)
                    .bind(from)
                    .bind(to)
                    .bind(before)
                    .execute(self.db.pool())
                    .await?
                    .rows_affected();
                    from = to;
                }
            }
        }
        Ok(pruned)
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>> {
        let partitions = self.partitions(topic).await?;
        let mut positions = vec![0_i64; usize::try_from(partitions).unwrap_or(1)];
        let rows = sqlx::query::<Any>(
            "SELECT part, next_pos FROM stream_offsets WHERE grp = $1 AND topic = $2",
        )
        .bind(group.to_owned())
        .bind(topic.to_owned())
        .fetch_all(self.db.pool())
        .await?;
        for row in rows {
            let p = usize::try_from(row.try_get::<i64, _>(0)?).unwrap_or(usize::MAX);
            if let Some(slot) = positions.get_mut(p) {
                *slot = row.try_get::<i64, _>(1)?;
            }
        }
        Ok(Box::new(EmbeddedSubscription {
            stream: self.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            positions,
            turn: 0,
        }))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// A group's reader of every partition of a topic.
#[derive(Debug)]
struct EmbeddedSubscription {
    stream: EmbeddedStream,
    topic: String,
    group: String,
    /// Next position to read, per partition.
    positions: Vec<i64>,
    /// The partition to read first in the next poll (round robin, so none starves).
    turn: usize,
}

impl EmbeddedSubscription {
    async fn read(&mut self, max: usize) -> Result<Vec<Message>> {
        let n = self.positions.len();
        let mut out = Vec::new();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let p = (self.turn + i) % n;
            let rows = sqlx::query::<Any>(
                "SELECT pos, record_key, value, headers FROM stream_records \
                 WHERE topic = $1 AND part = $2 AND pos >= $3 ORDER BY pos LIMIT $4",
            )
            .bind(self.topic.clone())
            .bind(p as i64)
            .bind(self.positions[p])
            .bind(i64::try_from(max - out.len()).unwrap_or(i64::MAX))
            .fetch_all(self.stream.db.pool())
            .await?;
            for row in rows {
                let offset: i64 = row.try_get(0)?;
                let headers: String = row.try_get(3)?;
                let headers: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&headers).unwrap_or_default();
                out.push(Message {
                    topic: self.topic.clone(),
                    partition: p as i32,
                    offset,
                    key: row.try_get(1)?,
                    value: row.try_get(2)?,
                    headers: headers
                        .into_iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
                        .collect(),
                });
                self.positions[p] = offset + 1;
            }
        }
        self.turn = (self.turn + 1) % n.max(1);
        Ok(out)
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for the wake-up before looking, so an append in between is not missed.
            let inner = Arc::clone(&self.stream.inner);
            let appended = inner.appended.notified();
            let out = self.read(max.max(1)).await?;
            let now = tokio::time::Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            let pause = (deadline - now).min(RECHECK);
            tokio::select! {
                () = appended => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn commit_offsets(&mut self, next: &[(i32, i64)]) -> Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tx = self.stream.db.pool().begin().await?;
        for &(p, pos) in next {
            sqlx::query::<Any>(
                "INSERT INTO stream_offsets (grp, topic, part, next_pos) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (grp, topic, part) DO UPDATE SET next_pos = excluded.next_pos",
            )
            .bind(self.group.clone())
            .bind(self.topic.clone())
            .bind(i64::from(p))
            .bind(pos)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
