//! Where the audit log lives: the [`AuditStore`] contract and its SQL implementation.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row};
use warden_sdk::Decision;

use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::db::{to_i64, to_u64, Db};
use crate::event::{chain_hash, to_hash, EventBody, StoredEvent, GENESIS};
use crate::seal::{Head, Sealer};
use crate::verify::ChainVerifier;
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
/// - **Sealed heads.** Given a [`Sealer`], an append first makes sure the head it extends is
///   vouched for (sealed, or recomputed from the last signed checkpoint), refusing with
///   [`Error::ChainBroken`] otherwise, and seals the new head in the same transaction.
/// - **Append-only.** Stored events and checkpoints are never changed or removed through this
///   trait, and the backing database refuses to (triggers), so tampering needs privileges
///   beyond the gateway's and is then caught by the verifier.
/// - **Reads are in sequence order** and see only committed batches.
#[async_trait]
pub trait AuditStore: Send + Sync + std::fmt::Debug + 'static {
    /// Appends a batch, sealing the new head with `sealer`; returns the stored events in
    /// order. An empty batch with a sealer seals the current head if it is not sealed yet
    /// (after recomputing the chain up to it).
    async fn append(
        &self,
        events: Vec<EventBody>,
        sealer: Option<&Sealer>,
    ) -> Result<Vec<StoredEvent>>;

    /// The last entry's sequence number and hash (`0` and the genesis hash when empty), with
    /// the head's seal when one was written.
    async fn head(&self) -> Result<Head>;

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
    async fn append(
        &self,
        events: Vec<EventBody>,
        sealer: Option<&Sealer>,
    ) -> Result<Vec<StoredEvent>> {
        if events.is_empty() && sealer.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.pool().begin().await?;
        // A write first: SQLite takes its write lock now (so the tip read next cannot be
        // stale) and PostgreSQL locks the tip row until commit, which serializes the
        // sequencers of all replicas.
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let head = read_head(&mut tx).await?;
        let mut head_ts = head.seal.as_ref().map(|s| s.ts);
        // Sealing begins here: on a fresh log, or on a tail written without seals.
        let mut begins = false;
        if let Some(sealer) = sealer {
            if !sealer.vouches_for(&head)? {
                head_ts = Some(recompute_tail(&mut tx, &head, sealer).await?);
                begins = true;
            } else if events.is_empty() {
                sealer.remember(head.seq, head.hash);
                return Ok(Vec::new());
            } else {
                begins = head.seq == 0;
            }
        }
        let (mut seq, mut prev) = (head.seq, head.hash);

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
        let ts = stored.last().map(|e| e.body.ts).or(head_ts);
        let seal = match (sealer, ts) {
            (Some(sealer), Some(ts)) if seq > 0 => Some(sealer.seal(seq, ts, prev)),
            _ => None,
        };
        sqlx::query(
            "UPDATE audit_head SET seq = $1, hash = $2, ts = $3, kid = $4, signature = $5 \
             WHERE id = 1",
        )
        .bind(to_i64(seq)?)
        .bind(prev.to_vec())
        .bind(seal.as_ref().map(|s| s.ts))
        .bind(seal.as_ref().map(|s| s.kid.clone()))
        .bind(seal.as_ref().map(|s| s.signature.to_vec()))
        .execute(&mut *tx)
        .await?;
        if let (Some(sealer), Some(seal), true) = (sealer, &seal, begins) {
            // A periodic checkpoint states that every head from here on is sealed: a later
            // unsealed head is then refused rather than recomputed and sealed over.
            let cp = sealer
                .signer()
                .sign(CheckpointKind::Periodic, seq, seal.ts, prev);
            insert_checkpoint(&mut tx, &cp).await?;
        }
        tx.commit().await?;
        if let Some(sealer) = sealer {
            sealer.remember(seq, prev);
        }
        Ok(stored)
    }

    async fn head(&self) -> Result<Head> {
        read_head(&mut *self.db.pool().acquire().await?).await
    }

    async fn scan_rows(&self, after_seq: u64, limit: u32) -> Result<Vec<Scanned>> {
        scan_page(&mut *self.db.pool().acquire().await?, after_seq, limit).await
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
        // Another replica may have signed the same head: its checkpoint serves as well.
        insert_checkpoint(&mut *self.db.pool().acquire().await?, cp).await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq"
        ))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(decode_checkpoint).collect()
    }
}

const CHECKPOINT_COLUMNS: &str = "seq, ts, hash, kid, signature, version";

/// Adds a periodic checkpoint, unless one is at its entry already.
async fn insert_checkpoint(conn: &mut AnyConnection, cp: &Checkpoint) -> Result<()> {
    if cp.kind != CheckpointKind::Periodic {
        return Err(Error::InvalidEvent(
            "only periodic checkpoints are added to the history".to_owned(),
        ));
    }
    sqlx::query(&format!(
        "INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (seq) DO NOTHING"
    ))
    .bind(to_i64(cp.seq)?)
    .bind(cp.ts)
    .bind(cp.hash.to_vec())
    .bind(cp.kid.clone())
    .bind(cp.signature.to_vec())
    .bind(cp.kind.version())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn decode_checkpoint(r: &AnyRow) -> Result<Checkpoint> {
    let kind = match r.try_get::<i64, _>("version")? {
        1 => CheckpointKind::Legacy,
        2 => CheckpointKind::Periodic,
        v => return Err(Error::Corrupt(format!("unknown checkpoint version {v}"))),
    };
    Ok(Checkpoint {
        kind,
        seq: to_u64(r.try_get::<i64, _>("seq")?)?,
        ts: r.try_get("ts")?,
        hash: to_hash(&r.try_get::<Vec<u8>, _>("hash")?)?,
        kid: r.try_get("kid")?,
        signature: signature(&r.try_get::<Vec<u8>, _>("signature")?)?,
    })
}

fn signature(bytes: &[u8]) -> Result<[u8; 64]> {
    <[u8; 64]>::try_from(bytes)
        .map_err(|_| Error::Corrupt("checkpoint signature is not 64 bytes".to_owned()))
}

async fn read_head(conn: &mut AnyConnection) -> Result<Head> {
    let row = sqlx::query("SELECT seq, hash, ts, kid, signature FROM audit_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    let seq = to_u64(row.try_get::<i64, _>("seq")?)?;
    let hash = to_hash(&row.try_get::<Vec<u8>, _>("hash")?)?;
    let seal = match (
        row.try_get::<Option<i64>, _>("ts")?,
        row.try_get::<Option<String>, _>("kid")?,
        row.try_get::<Option<Vec<u8>>, _>("signature")?,
    ) {
        (Some(ts), Some(kid), Some(sig)) => Some(Checkpoint {
            kind: CheckpointKind::Head,
            seq,
            ts,
            hash,
            kid,
            signature: signature(&sig)?,
        }),
        _ => None,
    };
    Ok(Head { seq, hash, seal })
}

async fn scan_page(conn: &mut AnyConnection, after_seq: u64, limit: u32) -> Result<Vec<Scanned>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
    ))
    .bind(to_i64(after_seq)?)
    .bind(i64::from(limit.min(MAX_PAGE)))
    .fetch_all(&mut *conn)
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

/// Recomputes the chain from the last signed checkpoint up to `head`, inside the append's
/// transaction; returns the time of the head's entry.
///
/// # Errors
/// [`Error::ChainBroken`] when the entries do not chain from the checkpoint to the head.
async fn recompute_tail(conn: &mut AnyConnection, head: &Head, sealer: &Sealer) -> Result<i64> {
    // A checkpoint beyond the head: the log was cut back below it.
    let beyond =
        sqlx::query("SELECT seq FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT 1")
            .bind(to_i64(head.seq)?)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(row) = beyond {
        return Err(Error::ChainBroken(format!(
            "entries after {} are missing: a checkpoint was signed at entry {}",
            head.seq,
            row.try_get::<i64, _>("seq")?
        )));
    }
    let remembered = sealer.last();
    let row = sqlx::query(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq <= $1 \
         ORDER BY seq DESC LIMIT 1"
    ))
    .bind(to_i64(head.seq)?)
    .fetch_optional(&mut *conn)
    .await?;
    let from = match row {
        Some(r) => {
            let cp = decode_checkpoint(&r)?;
            if !sealer.keys().verify(&cp) {
                return Err(Error::ChainBroken(format!(
                    "the checkpoint at entry {} has no valid signature",
                    cp.seq
                )));
            }
            if cp.kind == CheckpointKind::Periodic {
                // Heads are sealed since this checkpoint: this one's seal was removed or forged.
                return Err(Error::ChainBroken(format!(
                    "the log's head (entry {}) has no valid seal, though every head after the checkpoint at entry {} was sealed",
                    head.seq, cp.seq
                )));
            }
            cp
        }
        None => Checkpoint {
            kind: CheckpointKind::Legacy,
            seq: 0,
            ts: 0,
            hash: GENESIS,
            kid: String::new(),
            signature: [0; 64],
        },
    };
    let mut verifier = ChainVerifier::resume(sealer.keys().clone(), &from, Vec::new());
    let mut ts = from.ts;
    let mut after = from.seq;
    while after < head.seq {
        let page = scan_page(conn, after, MAX_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for row in page {
            let go_on = match &row {
                Ok(e) if e.seq <= head.seq => {
                    ts = e.body.ts;
                    // The head this process sealed must still be on the chain.
                    if let Some((seq, hash)) = remembered.filter(|(seq, _)| *seq == e.seq) {
                        if e.hash != hash {
                            return Err(Error::ChainBroken(format!(
                                "entry {seq}, sealed by this gateway, was rewritten"
                            )));
                        }
                    }
                    verifier.push(e)
                }
                Ok(_) => true,
                Err(c) => verifier.corrupt(c.seq, &c.reason),
            };
            after = match &row {
                Ok(e) => e.seq,
                Err(c) => c.seq,
            };
            if !go_on {
                break;
            }
        }
        if verifier.failure().is_some() {
            break;
        }
    }
    if let Some(reason) = verifier.failure() {
        return Err(Error::ChainBroken(reason.to_owned()));
    }
    if verifier.tip() != (head.seq, head.hash) {
        return Err(Error::ChainBroken(format!(
            "the log's head (entry {}) is not where entries {}..={} lead",
            head.seq,
            from.seq + 1,
            verifier.tip().0
        )));
    }
    Ok(ts)
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
