//! Integration tests of the gateway: the router through `tower::ServiceExt::oneshot` on
//! SQLite and PostgreSQL, and the real `warden` binary on a real port.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

mod admin;
mod audit_api;
mod bad_input;
mod binary;
mod data;
mod matrix;
mod mfa;
mod oidc;
mod state_contract;
mod support;
mod tokens;

/// Runs each listed async test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::support::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::support::Backend::Postgres).await })*
        }
    };
}
