//! Test helpers (feature `testkit`): fresh databases for contract suites.
//!
//! PostgreSQL tests read `WARDEN_TEST_POSTGRES_URL`, which `scripts/test.sh` (through
//! `scripts/dev-services.sh`) sets. Without it they fail loudly; they never pass silently.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use sqlx::Connection;

use crate::Db;

/// The server URL for PostgreSQL tests; panics naming the script that provides it.
pub fn postgres_url() -> String {
    std::env::var("WARDEN_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "WARDEN_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, or first \
             eval \"$(scripts/dev-services.sh)\""
        )
    })
}

/// A new, empty, migrated PostgreSQL database of its own (`warden_t_<uuid>`), returned with its URL.
pub async fn fresh_postgres() -> (Db, String) {
    let server = postgres_url();
    let name = format!("warden_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at WARDEN_TEST_POSTGRES_URL ({e}); is scripts/dev-services.sh running?"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    let url = url.to_string();
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    (db, url)
}

/// A new, migrated SQLite database in `dir`, returned with its URL.
pub async fn fresh_sqlite(dir: &Path) -> (Db, String) {
    let url = format!(
        "sqlite://{}",
        dir.join(format!("{}.db", uuid::Uuid::new_v4().simple()))
            .display()
    );
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    (db, url)
}

/// Runs each listed async test body once on SQLite and once on PostgreSQL (the contract-suite
/// pattern): `on_both_backends!(crate::Kind; a, b)` makes `sqlite::a`, `postgres::a`, ...
/// calling `super::a(<crate::Kind>::Sqlite)` and `super::a(<crate::Kind>::Postgres)`.
#[macro_export]
macro_rules! on_both_backends {
    ($kind:ty; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(<$kind>::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(<$kind>::Postgres).await })*
        }
    };
}
