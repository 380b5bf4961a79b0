//! Warden's policy: who may do what ([`authz`], casbin RBAC, default deny), the keys that
//! protect secrets at rest ([`keys`]) and the injected [`clock`] every time-based rule reads.
//!
//! ```
//! # tokio_test_block_on(async {
//! use warden_policy::authz::{parse_policy_csv, Authorizer, DEFAULT_MODEL};
//! let rules = parse_policy_csv("p, auditor, audit, read\n").unwrap();
//! let authz = Authorizer::new(DEFAULT_MODEL, &rules).await.unwrap();
//! assert!(authz.allows(&["auditor".to_owned()], "audit", "read").unwrap());
//! assert!(!authz.allows(&["analyst".to_owned()], "audit", "read").unwrap());
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

pub mod authz;
pub mod clock;
pub mod contract;
pub mod detect;
pub mod keyring;
pub mod keys;
pub mod kms;
pub mod pan;
pub mod protect;
pub mod suggest;
pub mod timefmt;
pub mod vault;

pub use clock::{Clock, SystemClock, TestClock};

/// Errors of the policy crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy error: {0}")]
    Casbin(#[from] casbin::Error),
    #[error("invalid policy rule: {0}")]
    InvalidRule(String),
    #[error("key file error: {0}")]
    KeyFile(String),
    #[error("key unwrap failed: the data is corrupt, bound to other context, or wrapped under another key")]
    Unwrap,
    #[error("key wrap failed")]
    Wrap,
    #[error("AWS KMS error: {0}")]
    Kms(String),
    #[error("vault database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the {scope} key was destroyed (crypto-shredded); its data cannot be decrypted")]
    KeyDestroyed { scope: String },
    #[error("the dataset's contract does not allow this purpose")]
    PurposeNotAllowed,
    #[error("vault inconsistency: {0}")]
    Store(String),
    #[error("no {scope} key exists")]
    KeyMissing { scope: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
