//! Warden's tamper-evident audit log.
//!
//! Every decision the gateway takes — allow, deny, error — becomes an [`EventBody`]: who, what,
//! on which resource, for which purpose, about which subject (by pseudonym only), with which
//! outcome. The [`Sequencer`] appends events in batches to an [`AuditStore`], chaining each
//! to the one before with SHA-256 over a [canonical](canonical) encoding; with a [`Sealer`]
//! every batch also signs the log's new head with an Ed25519 key in its own transaction, and
//! periodic [checkpoints](checkpoint) keep signed points in the history. [`verify_store`] and
//! [`ChainVerifier`] recompute the chain, name the first entry that does not verify, and
//! refuse entries no signature covers unless told to accept them.
//!
//! ```no_run
//! # async fn demo() -> warden_audit::Result<()> {
//! use std::sync::Arc;
//! use warden_audit::{
//!     CheckpointKeys, CheckpointSigner, Db, NewEvent, Sealer, Sequencer, SequencerConfig,
//!     SqlAuditStore, UnsignedTail,
//! };
//! use warden_sdk::Decision;
//!
//! let db = Db::connect("sqlite://./audit.db").await?;
//! db.migrate().await?;
//! let store = Arc::new(SqlAuditStore::new(db));
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let sealer = Sealer::new(CheckpointSigner::new("cp-1", key.clone()), CheckpointKeys::new());
//! let seq = Sequencer::start(store.clone(), Some(sealer), SequencerConfig::default(), None);
//! let n = seq
//!     .append(NewEvent::new(1_700_000_000_000_000, "u-1", "user", "audit.read", "audit", Decision::Allow))
//!     .await?;
//! seq.shutdown().await;
//! let mut keys = CheckpointKeys::new();
//! keys.insert("cp-1", key.verifying_key());
//! let report = warden_audit::verify_store(store.as_ref(), keys, UnsignedTail::Refuse).await?;
//! assert!(report.ok && report.head_seq == n && report.unsigned_entries == 0);
//! # Ok(()) }
//! ```

pub mod canonical;
pub mod checkpoint;
pub mod db;
pub mod event;
pub mod seal;
pub mod sequencer;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointKeys, CheckpointKind, CheckpointSigner};
pub use db::{Backend, Db};
pub use event::{EventBody, Hash, NewEvent, StoredEvent};
pub use seal::{Head, Sealer};
pub use sequencer::{AuditObserver, Sequencer, SequencerConfig};
pub use store::{AuditStore, CorruptRow, Query, Scanned, SqlAuditStore};
pub use verify::{verify_store, ChainVerifier, UnsignedTail};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid audit event: {0}")]
    InvalidEvent(String),
    #[error("audit log is closed")]
    Closed,
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("stored audit data is corrupt: {0}")]
    Corrupt(String),
    /// The stored chain does not lead to the head it should extend: nothing is appended or
    /// signed over it.
    #[error("the audit log does not verify: {0}")]
    ChainBroken(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
