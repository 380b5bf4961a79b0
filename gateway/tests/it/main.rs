//! Integration tests of the gateway: the router through `tower::ServiceExt::oneshot` on
//! SQLite and PostgreSQL, and the real `warden` binary on a real port.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

mod admin;
mod audit_api;
mod bad_input;
mod binary;
mod broker_restart;
mod data;
mod e2e;
mod erasure;
mod external_stage;
mod matrix;
mod mfa;
mod oidc;
mod records;
mod state_contract;
mod support;
mod tokens;
