//! Operator and auditor commands that work on the stores directly: audit verification,
//! export and offline verification of an export.

use std::io::{BufRead, Write};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use warden_audit::{
    verify_store, AuditStore, ChainVerifier, Checkpoint, CheckpointKeys, CheckpointKind,
    CheckpointSigner, Db, Sealer, SqlAuditStore, StoredEvent, UnsignedTail,
};
use warden_sdk::{AuditEventView, VerifyReport};

use crate::config::Config;
use crate::store::{SqlStateStore, StateStore};

/// Format tag of audit exports: version 2 ends its checkpoints with the head's seal.
pub const EXPORT_FORMAT: &str = "warden-audit-export/2";
/// Exports of version 1 (no head seal: they end on a periodic checkpoint) still verify.
const EXPORT_FORMAT_V1: &str = "warden-audit-export/1";

/// One line of an export (NDJSON): a header, then every checkpoint (the head's seal last),
/// then every event.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportLine {
    Header {
        format: String,
        head_seq: u64,
    },
    Checkpoint {
        seq: u64,
        ts: i64,
        hash: String,
        kid: String,
        signature: String,
        /// Which statement the signature makes (absent in version 1: a legacy checkpoint).
        #[serde(default = "legacy")]
        kind: CheckpointKind,
    },
    Event(Box<AuditEventView>),
}

fn legacy() -> CheckpointKind {
    CheckpointKind::Legacy
}

/// The checkpoint public keys recorded in the state store, as keys and as `(kid, hex)`.
///
/// # Errors
/// A database failure or a malformed key.
pub async fn checkpoint_keys(
    state_db: &Db,
) -> anyhow::Result<(CheckpointKeys, Vec<(String, String)>)> {
    let store = SqlStateStore::new(state_db.clone());
    let mut keys = CheckpointKeys::new();
    let mut listed = Vec::new();
    for k in store.signing_keys("checkpoint").await? {
        let bytes: [u8; 32] = k
            .public_key
            .as_slice()
            .try_into()
            .context("public key is not 32 bytes")?;
        keys.insert(
            k.kid.clone(),
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)?,
        );
        listed.push((k.kid, hex::encode(bytes)));
    }
    Ok((keys, listed))
}

/// The checkpoint public keys of the configured installation.
///
/// # Errors
/// No installation, or a database failure.
pub async fn public_keys(config: &Config) -> anyhow::Result<Vec<(String, String)>> {
    let (state_db, _) = crate::state::open_existing(config).await?;
    Ok(checkpoint_keys(&state_db).await?.1)
}

/// Verifies the configured audit log.
///
/// # Errors
/// No installation, or a failure to read the stores (a broken chain is a report, not an
/// error).
pub async fn verify_db(config: &Config, tail: UnsignedTail) -> anyhow::Result<VerifyReport> {
    let (state_db, audit_db) = crate::state::open_existing(config).await?;
    let (keys, _) = checkpoint_keys(&state_db).await?;
    Ok(verify_store(&SqlAuditStore::new(audit_db), keys, tail).await?)
}

/// Seals the log's head unless it is sealed: only after recomputing the chain from the last
/// signed checkpoint up to it, so that a tampered tail is refused rather than signed.
async fn seal_head(config: &Config, state_db: &Db, store: &SqlAuditStore) -> anyhow::Result<()> {
    let (keys, _) = checkpoint_keys(state_db).await?;
    let head = store.head().await?;
    if head.seq == 0 || head.seal.as_ref().is_some_and(|s| keys.verify(s)) {
        return Ok(());
    }
    let kek = crate::state::open_kek(config).await?;
    let signing = crate::state::load_signing_keys(
        &SqlStateStore::new(state_db.clone()),
        kek.as_ref(),
        "checkpoint",
    )
    .await?;
    let (kid, key) = signing
        .into_iter()
        .next()
        .context("no checkpoint signing key")?;
    store
        .append(
            Vec::new(),
            Some(&Sealer::new(CheckpointSigner::new(kid, key), keys)),
        )
        .await
        .context("refusing to export: the log's head cannot be sealed")?;
    Ok(())
}

/// Writes the whole audit log as NDJSON, ending on the head's seal; returns the number of
/// events.
///
/// # Errors
/// No installation, a log whose chain does not lead to its head (nothing is signed over a
/// break), or a failure to read the store or to write.
pub async fn export(config: &Config, out: &mut dyn Write) -> anyhow::Result<u64> {
    let (state_db, audit_db) = crate::state::open_existing(config).await?;
    let store = SqlAuditStore::new(audit_db);
    seal_head(config, &state_db, &store).await?;
    // The head first: every checkpoint and event up to it were committed before it.
    let head = store.head().await?;
    let mut checkpoints: Vec<Checkpoint> = store
        .checkpoints()
        .await?
        .into_iter()
        .filter(|c| c.seq <= head.seq)
        .collect();
    checkpoints.extend(head.seal);
    let mut line = |l: &ExportLine| -> anyhow::Result<()> {
        serde_json::to_writer(&mut *out, l)?;
        out.write_all(b"\n")?;
        Ok(())
    };
    line(&ExportLine::Header {
        format: EXPORT_FORMAT.to_owned(),
        head_seq: head.seq,
    })?;
    for c in checkpoints {
        line(&ExportLine::Checkpoint {
            seq: c.seq,
            ts: c.ts,
            hash: hex::encode(c.hash),
            kid: c.kid,
            signature: hex::encode(c.signature),
            kind: c.kind,
        })?;
    }
    let mut after = 0;
    let mut n = 0;
    while after < head.seq {
        let page = store.scan(after, 5_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq.min(head.seq);
        for e in page.iter().filter(|e| e.seq <= head.seq) {
            line(&ExportLine::Event(Box::new(e.to_view())))?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}

/// Parses a public key given as 64 hex digits.
///
/// # Errors
/// Not a valid Ed25519 public key.
pub fn parse_public_key(hex_key: &str) -> anyhow::Result<(String, ed25519_dalek::VerifyingKey)> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .context("the public key must be hex")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the public key must be 32 bytes (64 hex digits)"))?;
    Ok((
        crate::auth::tokens::key_id("checkpoint", &bytes),
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)?,
    ))
}

/// Verifies an export offline with the given public keys only.
///
/// # Errors
/// A malformed export (a broken chain is a report, not an error).
pub fn verify_export(
    input: impl BufRead,
    keys: CheckpointKeys,
    tail: UnsignedTail,
) -> anyhow::Result<VerifyReport> {
    let mut lines = input.lines().enumerate();
    let head = match lines.next() {
        Some((_, l)) => match serde_json::from_str::<ExportLine>(&l?)? {
            ExportLine::Header { format, head_seq }
                if format == EXPORT_FORMAT || format == EXPORT_FORMAT_V1 =>
            {
                head_seq
            }
            _ => anyhow::bail!("not a {EXPORT_FORMAT} file"),
        },
        None => anyhow::bail!("empty export"),
    };
    let mut checkpoints = Vec::new();
    let mut verifier: Option<ChainVerifier> = None;
    let mut keys = Some(keys);
    for (n, line) in lines {
        let line = line?;
        match serde_json::from_str::<ExportLine>(&line)
            .with_context(|| format!("line {}", n + 1))?
        {
            ExportLine::Checkpoint {
                seq,
                ts,
                hash,
                kid,
                signature,
                kind,
            } => {
                anyhow::ensure!(
                    verifier.is_none(),
                    "line {}: checkpoint after events",
                    n + 1
                );
                checkpoints.push(Checkpoint {
                    kind,
                    seq,
                    ts,
                    hash: warden_audit::event::parse_hash(&hash)?,
                    kid,
                    signature: hex::decode(signature)?.try_into().map_err(|_| {
                        anyhow::anyhow!("line {}: signature is not 64 bytes", n + 1)
                    })?,
                });
            }
            ExportLine::Event(view) => {
                let v = verifier.get_or_insert_with(|| {
                    ChainVerifier::new(
                        keys.take().unwrap_or_default(),
                        std::mem::take(&mut checkpoints),
                    )
                });
                let go_on = match StoredEvent::from_view(&view) {
                    Ok(e) => v.push(&e),
                    Err(e) => v.corrupt(view.seq, &e.to_string()),
                };
                if !go_on {
                    break;
                }
            }
            ExportLine::Header { .. } => anyhow::bail!("line {}: second header", n + 1),
        }
    }
    let verifier = verifier
        .unwrap_or_else(|| ChainVerifier::new(keys.take().unwrap_or_default(), checkpoints));
    Ok(verifier.finish(Some(head), tail))
}

/// What a key rotation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Secrets rewrapped under the new key.
    pub rewrapped: u64,
    /// Secrets found under the new key already (an earlier, interrupted run did them).
    pub already: u64,
}

/// Rewraps every secret held directly under the key-encryption key — the vault's wrapping
/// key, the signing keys and the TOTP seeds — from the key at `from` to the configured one.
/// Data keys stay as they are (the wrapping key wraps them). Each secret is rewrapped by
/// compare-and-set, so an interrupted run can simply run again.
///
/// # Errors
/// No installation, an old key that does not unwrap a secret, or a store failure.
pub async fn rotate_keys(
    config: &Config,
    from: &str,
    progress: &mut dyn Write,
) -> anyhow::Result<Rotation> {
    let mut old_config = config.clone();
    old_config.keys.kek = Some(from.to_owned());
    if let crate::config::KekSource::File(path) = old_config.kek_source()? {
        anyhow::ensure!(
            path.exists(),
            "the old key file {} does not exist",
            path.display()
        );
    }
    let old = crate::state::open_kek(&old_config).await?;
    let new = crate::state::open_kek(config).await?;
    anyhow::ensure!(
        old.key_id() != new.key_id(),
        "the old and the new key-encryption key are the same key"
    );
    let (state_db, _) = crate::state::open_existing(config).await?;
    let store = SqlStateStore::new(state_db.clone());

    // Every secret: (what, aad, wrapped bytes).
    let mut items: Vec<(Item, Vec<u8>, Vec<u8>)> = Vec::new();
    for purpose in ["jwt", "checkpoint"] {
        for k in store.signing_keys(purpose).await? {
            let aad = crate::state::signing_key_aad(purpose, &k.kid);
            items.push((Item::Signing(k.kid), aad, k.private_wrapped));
        }
    }
    let mut after = String::new();
    loop {
        let page = store.mfa_factors(&after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.principal_id.clone();
        for m in page {
            items.push((
                Item::Totp(m.principal_id.clone()),
                crate::state::totp_aad(&m.principal_id),
                m.secret_wrapped,
            ));
        }
    }
    let total = items.len() + 1;
    let mut done = Rotation::default();
    let mut tick = |done: &Rotation| -> anyhow::Result<()> {
        write!(
            progress,
            "\rrotating keys: {}/{total}",
            done.rewrapped + done.already
        )?;
        progress.flush()?;
        Ok(())
    };
    for (item, aad, wrapped) in items {
        if new.unwrap(&wrapped, &aad).await.is_ok() {
            done.already += 1;
        } else {
            let secret = old
                .unwrap(&wrapped, &aad)
                .await
                .with_context(|| format!("the old key does not unwrap {item}"))?;
            let rewrapped = new.wrap(secret.expose(), &aad).await?;
            let swapped = match &item {
                Item::Signing(kid) => store.rewrap_signing_key(kid, &wrapped, &rewrapped).await?,
                Item::Totp(id) => store.rewrap_mfa(id, &wrapped, &rewrapped).await?,
            };
            // Lost a race with another rotation or a re-enrolment: the row is someone else's now.
            if swapped {
                done.rewrapped += 1;
            } else {
                done.already += 1;
            }
        }
        tick(&done)?;
    }
    let vault = std::sync::Arc::new(warden_policy::vault::SqlVaultStore::new(state_db));
    let ring = warden_policy::keyring::KeyRing::new(
        new,
        vault,
        std::sync::Arc::new(warden_policy::SystemClock),
        warden_policy::keyring::CachePolicy::default(),
    );
    if ring.rotate_wrapping_key(old.as_ref()).await? {
        done.rewrapped += 1;
    } else {
        done.already += 1;
    }
    tick(&done)?;
    writeln!(progress)?;
    Ok(done)
}

/// A secret under the key-encryption key.
enum Item {
    Signing(String),
    Totp(String),
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signing(kid) => write!(f, "signing key {kid}"),
            // The principal id is a pseudonymous UUID.
            Self::Totp(id) => write!(f, "the TOTP seed of principal {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use warden_audit::event::{chain_hash, GENESIS};
    use warden_audit::{EventBody, NewEvent};
    use warden_sdk::Decision;

    use super::*;

    fn chain(n: u64) -> Vec<StoredEvent> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let body: EventBody =
                    NewEvent::new(1, "u", "user", "self.read", "/", Decision::Allow)
                        .into_body()
                        .unwrap();
                let hash = chain_hash(&prev, seq, &body);
                let e = StoredEvent {
                    seq,
                    body,
                    prev_hash: prev,
                    hash,
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn export(format: &str, events: &[StoredEvent], checkpoints: &[(Checkpoint, bool)]) -> String {
        let mut out = String::new();
        let mut line = |l: serde_json::Value| {
            out.push_str(&l.to_string());
            out.push('\n');
        };
        line(serde_json::json!({"header": {"format": format, "head_seq": events.len()}}));
        for (c, with_kind) in checkpoints {
            let mut cp = serde_json::json!({"seq": c.seq, "ts": c.ts, "hash": hex::encode(c.hash),
                "kid": c.kid, "signature": hex::encode(c.signature)});
            if *with_kind {
                cp["kind"] = serde_json::to_value(c.kind).unwrap();
            }
            line(serde_json::json!({ "checkpoint": cp }));
        }
        for e in events {
            line(serde_json::to_value(ExportLine::Event(Box::new(e.to_view()))).unwrap());
        }
        out
    }

    #[test]
    fn exports_of_both_versions_verify_and_kinds_cannot_be_swapped() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let signer = CheckpointSigner::new("cp", key.clone());
        let mut keys = CheckpointKeys::new();
        keys.insert("cp", key.verifying_key());
        let events = chain(4);
        let at = |kind, seq: u64| signer.sign(kind, seq, 1, events[seq as usize - 1].hash);
        let verify = |text: String| {
            verify_export(text.as_bytes(), keys.clone(), UnsignedTail::Refuse).unwrap()
        };

        // Version 1: legacy checkpoints, no kind on the line.
        let v1 = verify(export(
            EXPORT_FORMAT_V1,
            &events,
            &[(at(CheckpointKind::Legacy, 4), false)],
        ));
        assert!(v1.ok && v1.signed_through == 4, "{v1:?}");
        // Version 2: a periodic checkpoint and the head's seal.
        let v2 = verify(export(
            EXPORT_FORMAT,
            &events,
            &[
                (at(CheckpointKind::Periodic, 2), true),
                (at(CheckpointKind::Head, 4), true),
            ],
        ));
        assert!(
            v2.ok && v2.checkpoints == 2 && v2.signed_through == 4,
            "{v2:?}"
        );
        // A head seal passed off as a periodic checkpoint (or the reverse) does not verify.
        let mut swapped = at(CheckpointKind::Head, 4);
        swapped.kind = CheckpointKind::Periodic;
        let r = verify(export(EXPORT_FORMAT, &events, &[(swapped, true)]));
        assert_eq!(r.first_bad_seq, Some(4), "{r:?}");
        // Without the head's seal the last entries are unsigned.
        let r = verify(export(
            EXPORT_FORMAT,
            &events,
            &[(at(CheckpointKind::Periodic, 2), true)],
        ));
        assert_eq!(
            (r.ok, r.first_bad_seq, r.unsigned_entries),
            (false, Some(3), 2),
            "{r:?}"
        );
    }
}
