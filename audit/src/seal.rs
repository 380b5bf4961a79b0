//! Sealing the log's head: every committed batch signs the new head in its own transaction,
//! after checking that the head it extends is one the gateway's key vouches for.
//!
//! A head is vouched for when it is the one this process sealed last, or when it carries a
//! valid head seal. Any other head (a log written before seals existed, or by a writer
//! without a key, or rewritten) is trusted only after the chain from the last signed
//! checkpoint up to it recomputes to it: Warden never signs over a break.

use std::sync::Mutex;

use crate::checkpoint::{Checkpoint, CheckpointKeys, CheckpointKind, CheckpointSigner};
use crate::event::{Hash, GENESIS};
use crate::{Error, Result};

/// The log's head row as the store holds it: its tip and, when sealed, the seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
    /// The head seal, when one was written.
    pub seal: Option<Checkpoint>,
}

/// Signs heads and checkpoints, and remembers the last head it vouched for.
#[derive(Debug)]
pub struct Sealer {
    signer: CheckpointSigner,
    keys: CheckpointKeys,
    last: Mutex<Option<(u64, Hash)>>,
}

impl Sealer {
    /// `keys` are every key whose seals this writer accepts (older kids after a rotation); the
    /// signer's own key is added.
    pub fn new(signer: CheckpointSigner, mut keys: CheckpointKeys) -> Self {
        keys.insert(signer.kid().to_owned(), signer.verifying_key());
        Self {
            signer,
            keys,
            last: Mutex::new(None),
        }
    }

    pub fn signer(&self) -> &CheckpointSigner {
        &self.signer
    }

    pub fn keys(&self) -> &CheckpointKeys {
        &self.keys
    }

    /// Whether `head` can be extended without recomputing the chain up to it.
    ///
    /// # Errors
    /// [`Error::ChainBroken`] when the head moved back or was replaced since this process
    /// last saw it: no valid writer ever does either.
    pub fn vouches_for(&self, head: &Head) -> Result<bool> {
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seq, hash)) = last {
            if head.seq < seq {
                return Err(Error::ChainBroken(format!(
                    "the log's head moved back from entry {seq} to entry {}",
                    head.seq
                )));
            }
            if head.seq == seq {
                if head.hash != hash {
                    return Err(Error::ChainBroken(format!(
                        "the log's head at entry {seq} was replaced"
                    )));
                }
                return Ok(true);
            }
        }
        if head.seq == 0 {
            return Ok(head.hash == GENESIS);
        }
        Ok(head.seal.as_ref().is_some_and(|s| {
            s.kind == CheckpointKind::Head
                && s.seq == head.seq
                && s.hash == head.hash
                && self.keys.verify(s)
        }))
    }

    /// The last head this process sealed or checked.
    pub fn last(&self) -> Option<(u64, Hash)> {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs the head at `seq` (whose entry has time `ts`).
    pub fn seal(&self, seq: u64, ts: i64, hash: Hash) -> Checkpoint {
        self.signer.sign(CheckpointKind::Head, seq, ts, hash)
    }

    /// Remembers a head written or checked, once its transaction committed.
    pub fn remember(&self, seq: u64, hash: Hash) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|(s, _)| s <= seq) {
            *last = Some((seq, hash));
        }
    }
}
