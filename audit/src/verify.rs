//! The verifier: recomputes the chain from the first entry and checks every signed
//! checkpoint and the head's seal. Used on a live store (`GET /v1/audit/verify`,
//! `warden audit verify`) and on an export offline
//! (`warden audit verify --export FILE --public-key KEY`).
//!
//! Entries after the last valid signature are *unverified*: whoever can write the database
//! can rewrite or cut them and recompute the chain. They fail the verification unless the
//! caller accepts an unsigned tail ([`UnsignedTail::Accept`]), and the report counts them
//! either way.

use warden_sdk::VerifyReport;

use crate::checkpoint::{Checkpoint, CheckpointKeys, CheckpointKind};
use crate::event::{chain_hash, Hash, StoredEvent, GENESIS};
use crate::store::AuditStore;
use crate::Result;

/// What to make of entries no signature covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnsignedTail {
    /// They fail the verification (the default: nothing vouches for them).
    #[default]
    Refuse,
    /// They pass, counted in [`VerifyReport::unsigned_entries`].
    Accept,
}

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
    /// A head seal was presented but its signature is not valid.
    forged_head: bool,
    /// The first periodic checkpoint of a sealing writer: every head after it is sealed.
    sealed_since: Option<u64>,
    /// Where a valid head seal was met.
    head_sealed_at: Option<u64>,
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
            forged_head: false,
            sealed_since: None,
            head_sealed_at: None,
        }
    }

    /// A verifier that starts after `from`, a checkpoint already checked, with the later
    /// `checkpoints`.
    pub fn resume(keys: CheckpointKeys, from: &Checkpoint, checkpoints: Vec<Checkpoint>) -> Self {
        let mut v = Self::new(keys, checkpoints);
        v.seq = from.seq;
        v.prev = from.hash;
        v.last_checkpoint_seq = from.seq;
        v
    }

    /// The last entry checked and its hash.
    pub fn tip(&self) -> (u64, Hash) {
        (self.seq, self.prev)
    }

    /// Why the chain does not verify, once a bad entry was found.
    pub fn failure(&self) -> Option<&str> {
        self.bad.as_ref().map(|(_, reason)| reason.as_str())
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
        if cp.kind == CheckpointKind::Head && !self.keys.verify(cp) {
            // A head without a valid seal vouches for nothing; the entries up to it are then
            // an unsigned tail, reported as such by finish.
            self.forged_head = true;
            return true;
        }
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
                    "entries {from}..={} were rewritten: the chain no longer matches the {} signed at entry {}",
                    cp.seq,
                    kind_name(cp.kind),
                    cp.seq
                ),
            ));
            return false;
        }
        self.last_checkpoint_seq = cp.seq;
        self.checkpoints_checked += 1;
        match cp.kind {
            CheckpointKind::Periodic => {
                self.sealed_since.get_or_insert(cp.seq);
            }
            CheckpointKind::Head => self.head_sealed_at = Some(cp.seq),
            CheckpointKind::Legacy => {}
        }
        true
    }

    /// The report. `expected_head`, when known (the store's tip), must have been reached.
    /// Entries after the last valid signature fail the verification unless `tail` accepts
    /// them.
    pub fn finish(mut self, expected_head: Option<u64>, tail: UnsignedTail) -> VerifyReport {
        while let Some(cp) = self.pending.last() {
            if cp.kind != CheckpointKind::Head || self.keys.verify(cp) {
                break;
            }
            self.forged_head = true;
            self.pending.pop();
        }
        if self.bad.is_none() {
            if let Some(cp) = self.pending.last() {
                self.bad = Some((
                    self.seq + 1,
                    format!(
                        "entries after {} are missing: a {} was signed at entry {}",
                        self.seq,
                        kind_name(cp.kind),
                        cp.seq
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
        let unsigned_entries = self.seq.saturating_sub(self.last_checkpoint_seq);
        if self.bad.is_none() && unsigned_entries > 0 && tail == UnsignedTail::Refuse {
            self.bad = Some((
                self.last_checkpoint_seq + 1,
                format!(
                    "entries {}..={} are not covered by a signed checkpoint{}: anyone who can write the database could have rewritten or cut them",
                    self.last_checkpoint_seq + 1,
                    self.seq,
                    if self.forged_head {
                        " (the head's seal is not valid)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        // After a sealing writer's checkpoint every head is sealed: an unsealed one is a log
        // cut back (to a checkpoint, where no entry is unsigned) or a replaced head — even
        // when an unsigned tail is accepted.
        if let (None, Some(since)) = (&self.bad, self.sealed_since) {
            if self.head_sealed_at != Some(self.seq) {
                self.bad = Some((
                    self.last_checkpoint_seq + 1,
                    format!(
                        "the log's head (entry {}) carries no valid seal, though every head is sealed since the checkpoint at entry {since}: entries after {} were cut or rewritten",
                        self.seq, self.last_checkpoint_seq
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
            unsigned_entries,
            first_bad_seq,
            reason,
        }
    }
}

fn kind_name(kind: CheckpointKind) -> &'static str {
    match kind {
        CheckpointKind::Legacy | CheckpointKind::Periodic => "checkpoint",
        CheckpointKind::Head => "head seal",
    }
}

/// Verifies a whole store: every entry, every checkpoint, and the head's seal.
///
/// # Errors
/// Only a failure to read the store; a broken chain is a report with `ok: false`.
pub async fn verify_store(
    store: &dyn AuditStore,
    keys: CheckpointKeys,
    tail: UnsignedTail,
) -> Result<VerifyReport> {
    let head = store.head().await?;
    let mut checkpoints = store.checkpoints().await?;
    checkpoints.extend(head.seal);
    let mut verifier = ChainVerifier::new(keys, checkpoints);
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
                return Ok(verifier.finish(Some(head.seq), tail));
            }
        }
    }
    Ok(verifier.finish(Some(head.seq), tail))
}
