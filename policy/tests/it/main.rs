//! Integration tests of warden-policy against real services: the KeyProvider contract on the
//! local key file and on AWS KMS (the moto endpoint `scripts/dev-services.sh` starts).

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

mod key_providers;
mod keyring;
mod protect;
mod vault;

use std::sync::Arc;

use warden_policy::keyring::{CachePolicy, KeyRing};
use warden_policy::keys::KeyProvider;
use warden_policy::vault::SqlVaultStore;
use warden_policy::TestClock;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

pub(crate) struct Fixture {
    pub(crate) vault: Arc<SqlVaultStore>,
    pub(crate) clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn fixture(kind: Kind) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = match kind {
        Kind::Sqlite => warden_audit::testkit::fresh_sqlite(dir.path()).await,
        Kind::Postgres => warden_audit::testkit::fresh_postgres().await,
    };
    Fixture {
        vault: Arc::new(SqlVaultStore::new(db)),
        clock: Arc::new(TestClock::at(1_800_000_000)),
        _dir: dir,
    }
}

impl Fixture {
    pub(crate) fn keyring(&self, kek: Arc<dyn KeyProvider>, policy: CachePolicy) -> Arc<KeyRing> {
        Arc::new(KeyRing::new(
            kek,
            self.vault.clone(),
            self.clock.clone(),
            policy,
        ))
    }
}
