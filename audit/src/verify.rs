//! The verifier: recomputes the chain from the first entry and checks every signed
//! checkpoint. Used on a live store (`GET /v1/audit/verify`, `warden audit verify`) and on an
//! export offline (`warden audit verify --export FILE --public-key KEY`).

use warden_sdk::VerifyReport;

use crate::checkpoint::{Checkpoint, CheckpointKeys};
use crate::event::{chain_hash, Hash, StoredEvent, GENESIS};
use crate::store::AuditStore;
use crate::Result;

/// Entries read per page while verifying a store.
const PAGE: u32 = 5_000;

/// Streaming chain verifier: feed entries in sequence order, then [`finish`](Self::finish).
#[derive(Debug)]
pub struct ChainVerifier {
    keys: CheckpointKeys,
    /// Checkpoints not yet reached, in descending order (next one at the end).
    pending: Vec<Checkpoint>,
    checkpoints_checked: u64,
    last_checkpoint_seq: u64,
    seq: u64,
    prev: Hash,
    entries: u64,
    bad: Option<(u64, String)>,
}

impl ChainVerifier {
    /// `checkpoints` in any order; each must carry a valid signature of a key in `keys`.
    pub fn new(keys: CheckpointKeys, mut checkpoints: Vec<Checkpoint>) -> Self {
        checkpoints.sort_by_key(|c| std::cmp::Reverse(c.seq));
        Self {
            keys,
            pending: checkpoints,
            checkpoints_checked: 0,
            last_checkpoint_seq: 0,
            seq: 0,
            prev: GENESIS,
            entries: 0,
            bad: None,
        }
    }

    /// Checks the next entry. Returns false once a bad entry was found (stop feeding).
    pub fn push(&mut self, e: &StoredEvent) -> bool {
        if self.bad.is_some() {
            return false;
        }
        let expected = self.seq + 1;
        if e.seq != expected {
            let reason = if e.seq > expected {
                format!(
                    "entry {expected} is missing (next entry found is {})",
                    e.seq
                )
            } else {
                format!("entry {} appears out of order after {}", e.seq, self.seq)
            };
            self.bad = Some((expected, reason));
            return false;
        }
        if e.prev_hash != self.prev {
            self.bad = Some((
                e.seq,
                format!("entry {} does not link to entry {}", e.seq, self.seq),
            ));
            return false;
        }
        let hash = chain_hash(&self.prev, e.seq, &e.body);
        if hash != e.hash {
            self.bad = Some((
                e.seq,
                format!(
                    "entry {} was altered: its hash does not match its content",
                    e.seq
                ),
            ));
            return false;
        }
        self.seq = e.seq;
        self.prev = hash;
        self.entries += 1;
        while let Some(cp) = self.pending.last() {
            if cp.seq > self.seq {
                break;
            }
            let cp = self.pending.pop().expect("checked by last()");
            if !self.check_checkpoint(&cp) {
                return false;
            }
        }
        true
    }

    /// Records a row that could not be read as an event. Returns false (stop feeding).
    pub fn corrupt(&mut self, seq: u64, reason: &str) -> bool {
        if self.bad.is_none() {
            let expected = self.seq + 1;
            self.bad = Some(if seq > expected {
                (
                    expected,
                    format!("entry {expected} is missing (next entry found is {seq})"),
                )
            } else {
                (seq, format!("entry {seq} cannot be read: {reason}"))
            });
        }
        false
    }

    fn check_checkpoint(&mut self, cp: &Checkpoint) -> bool {
        if !self.keys.verify(cp) {
            self.bad = Some((
                cp.seq,
                format!("checkpoint at entry {} has no valid signature", cp.seq),
            ));
            return false;
        }
        // Checkpoints are met exactly at their seq because entries are contiguous.
        if cp.seq != self.seq || cp.hash != self.prev {
            let from = self.last_checkpoint_seq + 1;
            self.bad = Some((
                from,
                format!(
                    "entries {from}..={} were rewritten: the chain no longer matches the checkpoint signed at entry {}",
                    cp.seq, cp.seq
                ),
            ));
            return false;
        }
        self.last_checkpoint_seq = cp.seq;
        self.checkpoints_checked += 1;
        true
    }

    /// The report. `expected_head`, when known (the store's tip), must have been reached;
    /// with `require_signed_head` the last entry must be covered by a signed checkpoint (an
    /// export is, so nobody can cut its tail or strip its checkpoints unnoticed).
    pub fn finish(mut self, expected_head: Option<u64>, require_signed_head: bool) -> VerifyReport {
        if self.bad.is_none() && require_signed_head && self.last_checkpoint_seq < self.seq {
            self.bad = Some((
                self.last_checkpoint_seq + 1,
                format!(
                    "entries {}..={} are not covered by a signed checkpoint",
                    self.last_checkpoint_seq + 1,
                    self.seq
                ),
            ));
        }
        if self.bad.is_none() {
            if let Some(cp) = self.pending.last() {
                self.bad = Some((
                    self.seq + 1,
                    format!(
                        "entries after {} are missing: a checkpoint was signed at entry {}",
                        self.seq, cp.seq
                    ),
                ));
            } else if let Some(head) = expected_head.filter(|h| *h > self.seq) {
                self.bad = Some((
                    self.seq + 1,
                    format!(
                        "entries after {} are missing: the log's tip is at {head}",
                        self.seq
                    ),
                ));
            }
        }
        let (first_bad_seq, reason) = match self.bad {
            Some((seq, reason)) => (Some(seq), Some(reason)),
            None => (None, None),
        };
        VerifyReport {
            ok: first_bad_seq.is_none(),
            entries: self.entries,
            checkpoints: self.checkpoints_checked,
            head_seq: self.seq,
            signed_through: self.last_checkpoint_seq,
            first_bad_seq,
            reason,
        }
    }
}

/// Verifies a whole store.
///
/// # Errors
/// Only a failure to read the store; a broken chain is a report with `ok: false`.
pub async fn verify_store(store: &dyn AuditStore, keys: CheckpointKeys) -> Result<VerifyReport> {
    let (head, _) = store.head().await?;
    let mut verifier = ChainVerifier::new(keys, store.checkpoints().await?);
    let mut after = 0;
    loop {
        let page = store.scan_rows(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = match last {
            Ok(e) => e.seq,
            Err(c) => c.seq,
        };
        for row in &page {
            let go_on = match row {
                Ok(e) => verifier.push(e),
                Err(c) => verifier.corrupt(c.seq, &c.reason),
            };
            if !go_on {
                return Ok(verifier.finish(Some(head), false));
            }
        }
    }
    Ok(verifier.finish(Some(head), false))
}
