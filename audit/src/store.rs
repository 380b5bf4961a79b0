//! Where the audit log lives: the [`AuditStore`] contract and its SQL implementation.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};
use warden_sdk::Decision;

use crate::checkpoint::Checkpoint;
use crate::db::{to_i64, to_u64, Db};
use crate::event::{chain_hash, to_hash, EventBody, Hash, StoredEvent};
use crate::{Error, Result};

/// Most events returned by one [`AuditStore::query`] or [`AuditStore::scan`] call.
pub const MAX_PAGE: u32 = 10_000;

/// A stored row that cannot be read back as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRow {
    pub seq: u64,
    pub reason: String,
}

/// One row read back: the event, or why it cannot be read.
pub type Scanned = std::result::Result<StoredEvent, CorruptRow>;

/// Filters for [`AuditStore::query`]; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub subject_ref: Option<String>,
    pub decision: Option<Decision>,
    /// Unix microseconds, inclusive.
    pub from_ts: Option<i64>,
    /// Unix microseconds, exclusive.
    pub to_ts: Option<i64>,
    /// Only events with a larger sequence number (the pagination cursor).
    pub after_seq: Option<u64>,
    /// At most this many events, capped at [`MAX_PAGE`].
    pub limit: u32,
}

/// An append-only, hash-chained sequence of audit events.
///
/// Contract, for every implementation:
/// - **Atomic, ordered batches.** [`append`](Self::append) gives the events consecutive
///   sequence numbers after the current tip, chains each to the one before
///   (`hash_n = SHA-256(hash_{n-1} ‖ canonical(event_n))`) and makes the whole batch visible and
///   durable at once, or none of it. Appends from many processes on one store are serialized
///   by the store: no two events ever share a sequence number and no gap is ever created.
/// - **Append-only.** Stored events and checkpoints are never changed or removed through this
///   trait, and the backing database refuses to (triggers), so tampering needs privileges
///   beyond the gateway's and is then caught by the verifier.
/// - **Reads are in sequence order** and see only committed batches.
#[async_trait]
pub trait AuditStore: Send + Sync + std::fmt::Debug + 'static {
    /// Appends a batch; returns the stored events in order.
    async fn append(&self, events: Vec<EventBody>) -> Result<Vec<StoredEvent>>;

    /// The sequence number and hash of the last entry (`0` and the genesis hash when empty).
    async fn head(&self) -> Result<(u64, Hash)>;

    /// Rows with `seq > after_seq`, in order, at most `limit` (capped at [`MAX_PAGE`]); a
    /// row that cannot be read as an event (its content was tampered with) comes back as a
    /// [`CorruptRow`] in its place, so a verifier can name it.
    async fn scan_rows(&self, after_seq: u64, limit: u32) -> Result<Vec<Scanned>>;

    /// As [`scan_rows`](Self::scan_rows), failing on the first unreadable row.
    async fn scan(&self, after_seq: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        self.scan_rows(after_seq, limit)
            .await?
            .into_iter()
            .map(|r| r.map_err(|c| Error::Corrupt(format!("entry {}: {}", c.seq, c.reason))))
            .collect()
    }

    /// Events matching `query`, in sequence order.
    async fn query(&self, query: &Query) -> Result<Vec<StoredEvent>>;

    /// Stores a signed checkpoint.
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()>;

    /// Every checkpoint, in sequence order.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>>;
}

/// [`AuditStore`] on SQLite or PostgreSQL (see `migrations/*/0002_audit_init.sql`).
#[derive(Debug, Clone)]
pub struct SqlAuditStore {
    db: Db,
}

const COLUMNS: &str = "seq, ts, actor, actor_kind, action, resource, decision, purpose, \
                       request_id, subject_ref, details, prev_hash, hash";
/// Rows per INSERT statement: 13 parameters each stays far below both databases' limits.
const ROWS_PER_INSERT: usize = 200;

impl SqlAuditStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}

#[async_trait]
impl AuditStore for SqlAuditStore {
    async fn append(&self, events: Vec<EventBody>) -> Result<Vec<StoredEvent>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.pool().begin().await?;
        // A write first: SQLite takes its write lock now (so the tip read next cannot be
        // stale) and PostgreSQL locks the tip row until commit, which serializes the
        // sequencers of all replicas.
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let mut seq = to_u64(row.try_get::<i64, _>("seq")?)?;
        let mut prev = to_hash(&row.try_get::<Vec<u8>, _>("hash")?)?;

        let mut stored = Vec::with_capacity(events.len());
        for body in events {
            seq += 1;
            let hash = chain_hash(&prev, seq, &body);
            stored.push(StoredEvent {
                seq,
                body,
                prev_hash: prev,
                hash,
            });
            prev = hash;
        }
        for chunk in stored.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO audit_events ({COLUMNS}) VALUES {}",
                crate::db::value_rows(self.db.backend(), chunk.len(), 13)
            );
            let mut q = sqlx::query::<Any>(&sql);
            for e in chunk {
                q = q
                    .bind(to_i64(e.seq)?)
                    .bind(e.body.ts)
                    .bind(e.body.actor.clone())
                    .bind(e.body.actor_kind.clone())
                    .bind(e.body.action.clone())
                    .bind(e.body.resource.clone())
                    .bind(e.body.decision.as_str())
                    .bind(e.body.purpose.clone())
                    .bind(e.body.request_id.clone())
                    .bind(e.body.subject_ref.clone())
                    .bind(e.body.details.clone())
                    .bind(e.prev_hash.to_vec())
                    .bind(e.hash.to_vec());
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(to_i64(seq)?)
            .bind(prev.to_vec())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn head(&self) -> Result<(u64, Hash)> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?;
        Ok((
            to_u64(row.try_get::<i64, _>("seq")?)?,
            to_hash(&row.try_get::<Vec<u8>, _>("hash")?)?,
        ))
    }

    async fn scan_rows(&self, after_seq: u64, limit: u32) -> Result<Vec<Scanned>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(to_i64(after_seq)?)
        .bind(i64::from(limit.min(MAX_PAGE)))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                // The primary key is always an integer; anything else in the row may be garbage.
                let seq = to_u64(r.try_get::<i64, _>("seq")?)?;
                Ok(decode_event(r).map_err(|e| CorruptRow {
                    seq,
                    reason: e.to_string(),
                }))
            })
            .collect()
    }

    async fn query(&self, query: &Query) -> Result<Vec<StoredEvent>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1");
        // Parameters are numbered in the order they are pushed.
        let mut binds: Vec<Bind> = Vec::new();
        let mut push = |sql: &mut String, cond: &str, bind: Bind| {
            binds.push(bind);
            sql.push_str(&format!(" AND {cond} ${}", binds.len()));
        };
        for (cond, value) in [
            ("actor =", &query.actor),
            ("action =", &query.action),
            ("resource =", &query.resource),
            ("subject_ref =", &query.subject_ref),
        ] {
            if let Some(v) = value {
                push(&mut sql, cond, Bind::Text(v.clone()));
            }
        }
        if let Some(d) = query.decision {
            push(&mut sql, "decision =", Bind::Text(d.as_str().to_owned()));
        }
        for (cond, value) in [
            ("ts >=", query.from_ts),
            ("ts <", query.to_ts),
            ("seq >", query.after_seq.map(to_i64).transpose()?),
        ] {
            if let Some(v) = value {
                push(&mut sql, cond, Bind::Int(v));
            }
        }
        binds.push(Bind::Int(i64::from(query.limit.clamp(1, MAX_PAGE))));
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", binds.len()));

        let mut q = sqlx::query::<Any>(&sql);
        for b in binds {
            q = match b {
                Bind::Text(v) => q.bind(v),
                Bind::Int(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        rows.iter().map(decode_event).collect()
    }

    async fn put_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, ts, hash, kid, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_i64(cp.seq)?)
        .bind(cp.ts)
        .bind(cp.hash.to_vec())
        .bind(cp.kid.clone())
        .bind(cp.signature.to_vec())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let rows =
            sqlx::query("SELECT seq, ts, hash, kid, signature FROM audit_checkpoints ORDER BY seq")
                .fetch_all(self.db.pool())
                .await?;
        rows.iter()
            .map(|r| {
                let sig: Vec<u8> = r.try_get("signature")?;
                Ok(Checkpoint {
                    seq: to_u64(r.try_get::<i64, _>("seq")?)?,
                    ts: r.try_get("ts")?,
                    hash: to_hash(&r.try_get::<Vec<u8>, _>("hash")?)?,
                    kid: r.try_get("kid")?,
                    signature: <[u8; 64]>::try_from(sig.as_slice()).map_err(|_| {
                        Error::Corrupt("checkpoint signature is not 64 bytes".to_owned())
                    })?,
                })
            })
            .collect()
    }
}

enum Bind {
    Text(String),
    Int(i64),
}

fn decode_event(r: &AnyRow) -> Result<StoredEvent> {
    let decision: String = r.try_get("decision")?;
    Ok(StoredEvent {
        seq: to_u64(r.try_get::<i64, _>("seq")?)?,
        body: EventBody {
            ts: r.try_get("ts")?,
            actor: r.try_get("actor")?,
            actor_kind: r.try_get("actor_kind")?,
            action: r.try_get("action")?,
            resource: r.try_get("resource")?,
            decision: Decision::parse(&decision)
                .ok_or_else(|| Error::Corrupt(format!("unknown decision {decision:?}")))?,
            purpose: r.try_get("purpose")?,
            request_id: r.try_get("request_id")?,
            subject_ref: r.try_get("subject_ref")?,
            details: r.try_get("details")?,
        },
        prev_hash: to_hash(&r.try_get::<Vec<u8>, _>("prev_hash")?)?,
        hash: to_hash(&r.try_get::<Vec<u8>, _>("hash")?)?,
    })
}
