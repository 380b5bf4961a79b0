//! TOTP second factor (RFC 6238 with authenticator-compatible defaults: SHA-1, 6 digits,
//! 30-second steps, one step of clock skew either way).

use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use crate::error::{Error, Result};

pub const STEP_SECONDS: i64 = 30;
const DIGITS: usize = 6;
const SEED_BYTES: usize = 20;

/// A new random seed (160 bits, as RFC 4226 recommends).
pub fn new_seed() -> Vec<u8> {
    use rand::RngCore;
    let mut seed = vec![0u8; SEED_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}

fn totp(seed: &[u8], issuer: &str, account: &str) -> Result<TOTP> {
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECONDS as u64,
        seed.to_vec(),
        Some(issuer.to_owned()),
        account.to_owned(),
    )
    .map_err(|e| Error::Crypto(format!("totp: {e}")))
}

/// The `otpauth://` enrolment URI.
///
/// # Errors
/// An issuer or account name with a `:`.
pub fn otpauth_uri(seed: &[u8], issuer: &str, account: &str) -> Result<String> {
    Ok(totp(seed, issuer, account)?.get_url())
}

/// The enrolment URI as a QR code PNG.
///
/// # Errors
/// As [`otpauth_uri`], or a failure to render.
pub fn qr_png(seed: &[u8], issuer: &str, account: &str) -> Result<Vec<u8>> {
    totp(seed, issuer, account)?
        .get_qr_png()
        .map_err(|e| Error::Crypto(format!("qr code: {e}")))
}

/// The code for the step containing `unix_secs` (used by tests and the CLI walkthrough).
///
/// # Errors
/// As [`otpauth_uri`].
pub fn code_at(seed: &[u8], unix_secs: i64) -> Result<String> {
    Ok(totp(seed, "x", "x")?.generate(u64::try_from(unix_secs).unwrap_or(0)))
}

/// The time step a code matches (current, previous or next), compared in constant time.
pub fn matching_step(seed: &[u8], code: &str, unix_secs: i64) -> Option<i64> {
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = unix_secs.div_euclid(STEP_SECONDS);
    let mut found = None;
    // Check every candidate whatever matched, so timing does not tell which step did.
    for step in [now - 1, now, now + 1] {
        let expected = code_at(seed, step * STEP_SECONDS).ok()?;
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 Appendix B: seed "12345678901234567890", T = 59 → 94287082 (8 digits);
        // the 6-digit code is its last six digits.
        assert_eq!(code_at(b"12345678901234567890", 59).unwrap(), "287082");
    }

    #[test]
    fn skew_of_one_step_and_no_more() {
        let seed = new_seed();
        let t = 1_700_000_000;
        let code = code_at(&seed, t).unwrap();
        assert_eq!(matching_step(&seed, &code, t), Some(t / 30));
        assert_eq!(matching_step(&seed, &code, t + 30), Some(t / 30));
        assert_eq!(matching_step(&seed, &code, t - 30), Some(t / 30));
        assert_eq!(matching_step(&seed, &code, t + 90), None);
        assert_eq!(matching_step(&seed, "12345", t), None);
        assert_eq!(matching_step(&seed, "abcdef", t), None);
    }

    #[test]
    fn enrolment_uri_and_qr() {
        let seed = new_seed();
        let uri = otpauth_uri(&seed, "Warden", "alice").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/Warden:alice?secret="),
            "{uri}"
        );
        let png = qr_png(&seed, "Warden", "alice").unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
