//! Erasure receipts: what an erasure did in every store, signed with the gateway's Ed25519
//! key (the audit checkpoint key, `warden audit public-key`), verifiable offline with
//! `warden receipt verify`. A receipt names the subject by `subject_ref` only.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use warden_pipeline::residue::Scan;

/// Domain separation: a receipt signature cannot be taken for a checkpoint's, or the reverse.
const CONTEXT: &[u8] = b"warden-erasure-receipt-v1\n";

/// What the erasure did in one dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetReceipt {
    /// Delta table: rows deleted, and the table's versions before and after.
    pub lake_rows_deleted: u64,
    pub lake_version_before: Option<u64>,
    pub lake_version_after: Option<u64>,
    /// Documents deleted.
    pub documents_deleted: u64,
    /// The dataset's topic, and the records erased there (embedded: made tombstones;
    /// Kafka: tombstones written for compaction).
    pub stream_topic: String,
    pub stream_erased: u64,
    /// Vault tokens of the subject's cards removed, and kept because another subject's
    /// rows use the same card.
    pub tokens_purged: u64,
    pub tokens_shared: u64,
}

/// The verification scan: what every store still held of the subject at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub lake_rows: u64,
    pub documents: u64,
    pub vault_tokens: u64,
    pub subject_key_destroyed: bool,
    /// The subject's login account, if any, no longer carries its identifier.
    pub account_pseudonymous: bool,
    /// The byte scan of every dataset's lake files — its whole log and the data files of the
    /// subject's bucket, as stored — for the subject's pseudonym: objects and bytes read, and
    /// how many held it (zero, or the job would not have completed).
    #[serde(default)]
    pub lake_scan: Scan,
    /// The byte scan of the state database's files (SQLite: the database and its
    /// write-ahead log, after the erasure's deletes were checkpointed) for the subject's
    /// former account name and password hash. Absent when nothing was scanned: the subject
    /// had no account, or the state database is PostgreSQL (whose files are the server's;
    /// its account tables are rewritten instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_scan: Option<Scan>,
}

/// A signed erasure receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub version: u32,
    pub job: String,
    pub subject_ref: String,
    pub received_at: String,
    pub due_at: String,
    pub completed_at: String,
    pub datasets: BTreeMap<String, DatasetReceipt>,
    /// Whether the subject's data key was destroyed by this erasure (false: there was none,
    /// or it was destroyed before); either way none is left.
    pub subject_key_destroyed: bool,
    /// Whether the subject's own login account was renamed to its pseudonym.
    pub subject_account_renamed: bool,
    /// Lake files physically removed by the vacuum.
    pub lake_files_vacuumed: u64,
    /// Commit files removed from the lakes' logs after a checkpoint (the delete's among
    /// them: its predicate names the subject).
    #[serde(default)]
    pub lake_log_files_removed: u64,
    pub verification: Verification,
    /// The audit event recording the completion: its sequence number and chain hash (hex).
    pub audit_seq: u64,
    pub audit_hash: String,
    /// The signing key's id, and the Ed25519 signature (base64) of the rest.
    pub kid: String,
    pub signature: String,
}

/// Signs receipts.
#[derive(Clone)]
pub struct ReceiptSigner {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn message(receipt: &Receipt) -> Vec<u8> {
    let mut value = serde_json::to_value(receipt).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut value {
        m.remove("signature");
    }
    let mut out = CONTEXT.to_vec();
    out.extend_from_slice(warden_audit::canonical::json(&value).as_bytes());
    out
}

impl ReceiptSigner {
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        Self {
            kid: kid.into(),
            key,
        }
    }

    /// Sets `kid` and `signature`.
    pub fn sign(&self, mut receipt: Receipt) -> Receipt {
        receipt.kid.clone_from(&self.kid);
        receipt.signature = String::new();
        let sig = self.key.sign(&message(&receipt));
        receipt.signature = STANDARD.encode(sig.to_bytes());
        receipt
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("the receipt is not valid JSON of a Warden erasure receipt: {0}")]
    Malformed(String),
    #[error("the signature is not Ed25519 base64")]
    BadSignatureEncoding,
    #[error("the signature does not match the receipt and key (altered, or another key)")]
    Mismatch,
}

/// Checks a receipt (as JSON text) against a public key.
///
/// # Errors
/// Malformed JSON, a malformed signature, or a signature that does not match.
pub fn verify(text: &str, key: &VerifyingKey) -> Result<Receipt, ReceiptError> {
    let receipt: Receipt =
        serde_json::from_str(text).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let sig: [u8; 64] = STANDARD
        .decode(&receipt.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(ReceiptError::BadSignatureEncoding)?;
    key.verify(&message(&receipt), &Signature::from_bytes(&sig))
        .map_err(|_| ReceiptError::Mismatch)?;
    Ok(receipt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            version: 1,
            job: "er_1".into(),
            subject_ref: "sr_00".into(),
            received_at: "2026-11-24T00:00:00Z".into(),
            due_at: "2026-12-24T00:00:00Z".into(),
            completed_at: "2026-11-24T00:01:00Z".into(),
            datasets: BTreeMap::from([(
                "payments".to_owned(),
                DatasetReceipt {
                    lake_rows_deleted: 3,
                    ..DatasetReceipt::default()
                },
            )]),
            subject_key_destroyed: true,
            subject_account_renamed: false,
            lake_files_vacuumed: 2,
            lake_log_files_removed: 3,
            verification: Verification::default(),
            audit_seq: 9,
            audit_hash: "00".into(),
            kid: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn a_signed_receipt_verifies_and_any_change_breaks_it() {
        let signer = ReceiptSigner::new("cp1", SigningKey::from_bytes(&[7; 32]));
        let signed = signer.sign(receipt());
        let text = serde_json::to_string_pretty(&signed).unwrap();
        assert_eq!(verify(&text, &signer.verifying_key()).unwrap(), signed);

        let altered = text.replace("\"lake_rows_deleted\": 3", "\"lake_rows_deleted\": 4");
        assert_ne!(altered, text);
        assert_eq!(
            verify(&altered, &signer.verifying_key()),
            Err(ReceiptError::Mismatch)
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(verify(&text, &other), Err(ReceiptError::Mismatch));
        assert!(matches!(
            verify("{}", &other),
            Err(ReceiptError::Malformed(_))
        ));
    }
}
