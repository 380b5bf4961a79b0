//! Integration tests of warden-policy against real services: the KeyProvider contract on the
//! local key file and on AWS KMS (the moto endpoint `scripts/dev-services.sh` starts).

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

mod key_providers;
