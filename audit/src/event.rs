//! The audit event model and the hash chain.

use serde_json::Value;
use sha2::{Digest, Sha256};
use warden_sdk::{AuditEventView, Decision};

use crate::{canonical, Error, Result};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash before the first entry.
pub const GENESIS: Hash = [0; 32];

/// Longest accepted string field, in bytes.
pub const MAX_FIELD: usize = 1024;
/// Longest accepted canonical `details` JSON, in bytes.
pub const MAX_DETAILS: usize = 16 * 1024;

/// What an event says, before the log gives it a sequence number.
///
/// It holds no clear personal data: subjects appear only as `subject_ref` (a keyed
/// pseudonym) and actors by principal id, so the log survives erasure intact
/// (GDPR Art. 17 with Art. 5(2) accountability).
#[derive(Debug, Clone, PartialEq)]
pub struct EventBody {
    /// Unix microseconds.
    pub ts: i64,
    pub actor: String,
    pub actor_kind: String,
    pub action: String,
    pub resource: String,
    pub decision: Decision,
    pub purpose: Option<String>,
    pub request_id: Option<String>,
    pub subject_ref: Option<String>,
    /// Canonical JSON (see [`canonical::json`]).
    pub details: String,
}

/// Builder-style constructor for events.
#[derive(Debug, Clone)]
pub struct NewEvent {
    body: EventBody,
}

impl NewEvent {
    /// An event with empty details.
    pub fn new(
        ts: i64,
        actor: impl Into<String>,
        actor_kind: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
        decision: Decision,
    ) -> Self {
        Self {
            body: EventBody {
                ts,
                actor: actor.into(),
                actor_kind: actor_kind.into(),
                action: action.into(),
                resource: resource.into(),
                decision,
                purpose: None,
                request_id: None,
                subject_ref: None,
                details: "{}".to_owned(),
            },
        }
    }

    #[must_use]
    pub fn purpose(mut self, purpose: Option<String>) -> Self {
        self.body.purpose = purpose;
        self
    }

    #[must_use]
    pub fn request_id(mut self, request_id: Option<String>) -> Self {
        self.body.request_id = request_id;
        self
    }

    #[must_use]
    pub fn subject_ref(mut self, subject_ref: Option<String>) -> Self {
        self.body.subject_ref = subject_ref;
        self
    }

    /// Sets the details; they are stored in canonical form.
    #[must_use]
    pub fn details(mut self, details: &Value) -> Self {
        self.body.details = canonical::json(details);
        self
    }

    /// Checks the bounds and returns the body.
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] when a field is empty where it must not be or too long.
    pub fn into_body(self) -> Result<EventBody> {
        let b = &self.body;
        for (name, value) in [
            ("actor", Some(&b.actor)),
            ("actor_kind", Some(&b.actor_kind)),
            ("action", Some(&b.action)),
            ("resource", Some(&b.resource)),
            ("purpose", b.purpose.as_ref()),
            ("request_id", b.request_id.as_ref()),
            ("subject_ref", b.subject_ref.as_ref()),
        ] {
            if let Some(v) = value {
                if v.len() > MAX_FIELD {
                    return Err(Error::InvalidEvent(format!(
                        "{name} longer than {MAX_FIELD} bytes"
                    )));
                }
            }
        }
        for (name, v) in [
            ("actor", &b.actor),
            ("action", &b.action),
            ("resource", &b.resource),
        ] {
            if v.is_empty() {
                return Err(Error::InvalidEvent(format!("{name} is empty")));
            }
        }
        if b.details.len() > MAX_DETAILS {
            return Err(Error::InvalidEvent(format!(
                "details longer than {MAX_DETAILS} bytes"
            )));
        }
        Ok(self.body)
    }
}

/// An event as stored: its body, its place in the log and its chain hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub body: EventBody,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// `hash_n = SHA-256(prev_hash ‖ canonical(event_n))`.
pub fn chain_hash(prev: &Hash, seq: u64, body: &EventBody) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical::encode(seq, body));
    h.finalize().into()
}

impl StoredEvent {
    /// The wire form.
    pub fn to_view(&self) -> AuditEventView {
        AuditEventView {
            seq: self.seq,
            ts: self.body.ts,
            actor: self.body.actor.clone(),
            actor_kind: self.body.actor_kind.clone(),
            action: self.body.action.clone(),
            resource: self.body.resource.clone(),
            decision: self.body.decision,
            purpose: self.body.purpose.clone(),
            request_id: self.body.request_id.clone(),
            subject_ref: self.body.subject_ref.clone(),
            details: serde_json::from_str(&self.body.details).unwrap_or(Value::Null),
            prev_hash: hex::encode(self.prev_hash),
            hash: hex::encode(self.hash),
        }
    }

    /// Back from the wire form (the offline verifier reads exports this way). `details` is
    /// re-canonicalized, which gives back the stored bytes because stored details are canonical.
    ///
    /// # Errors
    /// Malformed hashes.
    pub fn from_view(v: &AuditEventView) -> Result<Self> {
        Ok(Self {
            seq: v.seq,
            body: EventBody {
                ts: v.ts,
                actor: v.actor.clone(),
                actor_kind: v.actor_kind.clone(),
                action: v.action.clone(),
                resource: v.resource.clone(),
                decision: v.decision,
                purpose: v.purpose.clone(),
                request_id: v.request_id.clone(),
                subject_ref: v.subject_ref.clone(),
                details: canonical::json(&v.details),
            },
            prev_hash: parse_hash(&v.prev_hash)?,
            hash: parse_hash(&v.hash)?,
        })
    }
}

/// Parses a hex SHA-256 digest.
///
/// # Errors
/// Not 64 hex digits.
pub fn parse_hash(s: &str) -> Result<Hash> {
    let bytes = hex::decode(s).map_err(|_| Error::Corrupt("hash is not hex".to_owned()))?;
    to_hash(&bytes)
}

pub(crate) fn to_hash(bytes: &[u8]) -> Result<Hash> {
    Hash::try_from(bytes).map_err(|_| Error::Corrupt(format!("hash of {} bytes", bytes.len())))
}
