//! Authentication: who is calling. Passwords and client secrets ([`passwords`]), EdDSA
//! access tokens and external OIDC tokens ([`tokens`]), TOTP second factors ([`totp`]).

pub mod passwords;
pub mod tokens;
pub mod totp;

use std::time::Duration;

use warden_sdk::PrincipalKind;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable pseudonymous id (a UUID, or `oidc:<sub>`); what the audit log records.
    pub id: String,
    pub kind: PrincipalKind,
    pub roles: Vec<String>,
    /// Authentication methods (RFC 8176): `pwd`, `otp`, `client_secret`...
    pub amr: Vec<String>,
    /// Unix seconds of the last second-factor check.
    pub mfa_at: Option<i64>,
    /// Whether the token was issued by this gateway (not an external issuer).
    pub local: bool,
    /// The purpose of processing the token was issued for (claim `purpose`), if any.
    pub purpose: Option<String>,
    /// The credentials epoch the token was issued under (local tokens).
    pub cep: i64,
}

impl Principal {
    /// Whether reads are limited to the principal's own rows: a data subject, or any
    /// principal holding the `subject` role (whose grants assume that filter).
    pub fn reads_as_subject(&self) -> bool {
        self.kind == PrincipalKind::Subject || self.roles.iter().any(|r| r == "subject")
    }

    /// True when a second factor was checked within `window` of `now` (Unix seconds).
    pub fn mfa_fresh(&self, now: i64, window: Duration) -> bool {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        self.mfa_at
            .is_some_and(|at| at <= now + 5 && now - at <= window)
    }
}
