//! Password and client-secret hashing: argon2id with the crate's defaults (the OWASP
//! minimum, m=19 MiB, t=2, p=1), run off the async workers.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

use crate::error::{Error, Result};

/// Shortest accepted password (NIST SP 800-63B asks for at least 8; we ask for more).
pub const MIN_PASSWORD: usize = 12;
/// Longest accepted password or secret, in bytes: bounds the hashing work.
pub const MAX_PASSWORD: usize = 256;

/// Checks a new password's length.
///
/// # Errors
/// [`Error::Invalid`] saying the bounds.
pub fn check_new_password(p: &str) -> Result<()> {
    if p.chars().count() < MIN_PASSWORD || p.len() > MAX_PASSWORD {
        return Err(Error::Invalid(format!(
            "passwords must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes long"
        )));
    }
    Ok(())
}

/// Hashes a secret (PHC string).
///
/// # Errors
/// Only an internal failure of the hasher.
pub async fn hash(secret: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Crypto(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| Error::Crypto(format!("hashing task: {e}")))?
}

/// A hash of a random secret, verified against when the account does not exist, so that
/// unknown and known names take the same time.
static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Checks `secret` against `phc` (or against a dummy hash when `phc` is `None`, always false).
pub async fn verify(secret: String, phc: Option<String>) -> bool {
    if secret.len() > MAX_PASSWORD {
        return false;
    }
    let result = tokio::task::spawn_blocking(move || {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    let salt = SaltString::generate(&mut OsRng);
                    Argon2::default()
                        .hash_password(b"not a real password", &salt)
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let ok = PasswordHash::new(&phc)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await;
    result.unwrap_or(false)
}
