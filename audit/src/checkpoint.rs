//! Signed checkpoints: the gateway's Ed25519 key signs the chain's `(seq, hash)`. A hash chain
//! alone cannot reveal a log rewritten from some entry on with every later hash recomputed; a
//! signature made before the rewrite can. Verifiers need only the public key (RFC 9162 calls
//! these signed tree heads).
//!
//! Kinds, signed under different domains so that one never passes for another:
//! - the **head** seal, rewritten with every committed batch in the batch's own transaction,
//!   so no acknowledged event is ever outside a signature;
//! - **periodic** checkpoints every N events or T seconds, kept for good: they name where a
//!   rewrite begins, and cutting the log back to one of them leaves no head seal to match
//!   (the seals of older heads are overwritten, never stored). A periodic checkpoint also
//!   states that every head after it is sealed, so an unsealed head after one is a forgery;
//! - **legacy** checkpoints, written before heads were sealed: they still verify, and say
//!   nothing about the heads after them.

use std::collections::HashMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::event::Hash;

const LEGACY_DOMAIN: &[u8] = b"warden.audit.checkpoint.v1\0";
const DOMAIN: &[u8] = b"warden.audit.checkpoint.v2\0";
const HEAD_DOMAIN: &[u8] = b"warden.audit.head.v1\0";

/// Which statement a signature makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A checkpoint kept in the log's history, from before heads were sealed.
    Legacy,
    /// A checkpoint kept in the log's history; every later head is sealed.
    Periodic,
    /// The seal of the log's head: the chain ends here.
    Head,
}

impl CheckpointKind {
    /// The version stored beside a history checkpoint.
    pub fn version(self) -> i64 {
        match self {
            Self::Legacy => 1,
            Self::Periodic | Self::Head => 2,
        }
    }
}

/// A signature over the chain at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub kind: CheckpointKind,
    pub seq: u64,
    /// Unix microseconds of the entry at `seq`.
    pub ts: i64,
    pub hash: Hash,
    /// Which key signed it.
    pub kid: String,
    pub signature: [u8; 64],
}

/// The bytes a checkpoint signature covers.
pub fn message(kind: CheckpointKind, seq: u64, ts: i64, hash: &Hash) -> Vec<u8> {
    let domain = match kind {
        CheckpointKind::Legacy => LEGACY_DOMAIN,
        CheckpointKind::Periodic => DOMAIN,
        CheckpointKind::Head => HEAD_DOMAIN,
    };
    let mut m = Vec::with_capacity(domain.len() + 48);
    m.extend_from_slice(domain);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// Signs checkpoints with the gateway's checkpoint key.
pub struct CheckpointSigner {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        Self {
            kid: kid.into(),
            key,
        }
    }

    pub fn sign(&self, kind: CheckpointKind, seq: u64, ts: i64, hash: Hash) -> Checkpoint {
        let signature = self.key.sign(&message(kind, seq, ts, &hash)).to_bytes();
        Checkpoint {
            kind,
            seq,
            ts,
            hash,
            kid: self.kid.clone(),
            signature,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

/// The public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct CheckpointKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl CheckpointKeys {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.keys.insert(kid.into(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when the checkpoint is signed by a trusted key.
    pub fn verify(&self, cp: &Checkpoint) -> bool {
        self.keys.get(&cp.kid).is_some_and(|k| {
            k.verify(
                &message(cp.kind, cp.seq, cp.ts, &cp.hash),
                &Signature::from_bytes(&cp.signature),
            )
            .is_ok()
        })
    }
}
