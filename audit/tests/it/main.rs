//! Integration tests of warden-audit against real SQLite files and a real PostgreSQL server.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

mod contract;
mod tamper;

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use serde_json::json;
use warden_audit::{CheckpointKeys, CheckpointSigner, Db, NewEvent, Sealer, SqlAuditStore};
use warden_sdk::Decision;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

pub(crate) struct Fixture {
    pub(crate) db: Db,
    pub(crate) url: String,
    pub(crate) store: Arc<SqlAuditStore>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn fixture(kind: Kind) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = match kind {
        Kind::Sqlite => warden_audit::testkit::fresh_sqlite(dir.path()).await,
        Kind::Postgres => warden_audit::testkit::fresh_postgres().await,
    };
    Fixture {
        store: Arc::new(SqlAuditStore::new(db.clone())),
        db,
        url,
        _dir: dir,
    }
}

pub(crate) fn event(i: u64) -> NewEvent {
    NewEvent::new(
        1_700_000_000_000_000 + i as i64,
        format!("actor-{}", i % 3),
        "user",
        if i.is_multiple_of(2) {
            "audit.read"
        } else {
            "policy.write"
        },
        "audit",
        if i.is_multiple_of(5) {
            Decision::Deny
        } else {
            Decision::Allow
        },
    )
    .request_id(Some(format!("req-{i}")))
    .subject_ref(if i.is_multiple_of(4) {
        Some(format!("sr-{}", i % 8))
    } else {
        None
    })
    .details(&json!({"status": 200, "i": i}))
}

/// A sealer, as a gateway holds one, and the keys a verifier trusts for it.
pub(crate) fn sealer() -> (Sealer, CheckpointKeys) {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let mut keys = CheckpointKeys::new();
    keys.insert("cp-test", key.verifying_key());
    (
        Sealer::new(CheckpointSigner::new("cp-test", key), keys.clone()),
        keys,
    )
}
