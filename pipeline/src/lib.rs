//! Warden's data plane: streams (Kafka and the embedded log), sinks (documents; the Delta
//! Lake follows), and the loaders that move protected records from a stream into a store.
//!
//! Everything here handles records that were protected at the edge (`warden-policy`): card
//! numbers are tokens, personal data is ciphertext, identifiers are `subject_ref`s. Nothing in
//! this crate sees a clear value, so nothing here can leak one.

pub mod docs;
pub mod geo;
pub mod lake;
pub mod loader;
pub mod record;
pub mod residue;
pub mod stages;
pub mod stream;

pub use record::StreamedRecord;

/// Partitions of the topics Warden creates.
pub const DEFAULT_PARTITIONS: i32 = 4;

/// What can go wrong in the data plane. Messages name topics, collections and counts, never a
/// record's values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stream: {0}")]
    Stream(String),
    #[error("document store: {0}")]
    Documents(String),
    #[error("lake: {0}")]
    Lake(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("no such topic: {0}")]
    NoSuchTopic(String),
    #[error("keys: {0}")]
    Keys(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
