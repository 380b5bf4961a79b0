//! Key-encryption keys. A [`KeyProvider`] wraps and unwraps small secrets — signing keys, TOTP
//! seeds, and (later) per-subject data keys — binding each to its context with associated data,
//! so a wrapped value moved to another row or purpose fails to unwrap.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Secret bytes: zeroized on drop, never printed.
#[derive(Clone)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("**redacted**")
    }
}

/// Wraps and unwraps secrets under a key-encryption key it never hands out.
///
/// Contract: secrets are never empty (wrapping `[]` fails with [`Error::Wrap`]);
/// `unwrap(wrap(p, aad), aad) == p`; unwrapping with any other `aad`, or bytes
/// altered in any way, fails with [`Error::Unwrap`]; two wraps of the same secret differ.
#[async_trait]
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// A stable identifier of the key-encryption key (for rotation bookkeeping).
    fn key_id(&self) -> &str;

    /// Encrypts `plaintext`, bound to `aad`.
    async fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>>;

    /// Decrypts what [`wrap`](Self::wrap) produced with the same `aad`.
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretBytes>;
}

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;

/// A local 256-bit key file (mode 0600) and AES-256-GCM: the embedded default.
pub struct LocalKeyFile {
    cipher: Aes256Gcm,
    key_id: String,
}

impl std::fmt::Debug for LocalKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyFile")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl LocalKeyFile {
    /// Loads the key at `path`, or creates it (32 random bytes, mode 0600) if it is absent.
    /// Returns whether it was created.
    ///
    /// # Errors
    /// An unreadable file, a file of the wrong size, or a file readable by others.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        match Self::load(path) {
            Ok(k) => Ok((k, false)),
            Err(Error::KeyFile(_)) if !path.exists() => {
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(key.as_mut());
                let mut options = OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path).map_err(|e| {
                    Error::KeyFile(format!("cannot create {}: {e}", path.display()))
                })?;
                file.write_all(key.as_ref())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::KeyFile(format!("cannot write {}: {e}", path.display())))?;
                Ok((Self::from_key(&key), true))
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing key file.
    ///
    /// # Errors
    /// As [`load_or_create`](Self::load_or_create).
    pub fn load(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| Error::KeyFile(format!("cannot open {}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file
                .metadata()
                .map_err(|e| Error::KeyFile(format!("cannot stat {}: {e}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::KeyFile(format!(
                    "{} is accessible to other users (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let mut key = Zeroizing::new(Vec::with_capacity(33));
        Read::by_ref(&mut file)
            .take(33)
            .read_to_end(&mut key)
            .map_err(|e| Error::KeyFile(format!("cannot read {}: {e}", path.display())))?;
        let key: &[u8; 32] = key.as_slice().try_into().map_err(|_| {
            Error::KeyFile(format!("{} must hold exactly 32 bytes", path.display()))
        })?;
        Ok(Self::from_key(key))
    }

    /// A provider over raw key bytes (tests, and keys handed over by another provider).
    pub fn from_key(key: &[u8; 32]) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest([b"warden.kek-id\0".as_slice(), key].concat());
        Self {
            cipher: Aes256Gcm::new(key.into()),
            key_id: format!("local-{}", hex::encode(&digest[..8])),
        }
    }
}

/// Encrypts `plaintext` bound to `aad` under a raw 256-bit key, in the form
/// [`LocalKeyFile::wrap`] gives (and [`LocalKeyFile::from_key`]`(key).unwrap` reads): for the
/// per-record encryption of personal data, without a key provider's set-up for each record.
///
/// # Errors
/// [`Error::Wrap`] for an empty plaintext.
pub fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    seal_with(&Aes256Gcm::new(key.into()), plaintext, aad)
}

fn seal_with(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    if plaintext.is_empty() {
        return Err(Error::Wrap);
    }
    // The version byte, the nonce, then ciphertext and tag, written in place (one
    // allocation).
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
    out.push(FORMAT_V1);
    let mut nonce = [0u8; NONCE_LEN];
    // Random 96-bit nonces from the thread-local CSPRNG (ChaCha, seeded from the OS): no
    // system call per encryption; each key wraps far fewer than the 2^32 messages NIST
    // SP 800-38D allows with random nonces.
    rand::thread_rng().fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[1 + NONCE_LEN..])
        .map_err(|_| Error::Wrap)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

#[async_trait]
impl KeyProvider for LocalKeyFile {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        seal_with(&self.cipher, plaintext, aad)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretBytes> {
        let [FORMAT_V1, rest @ ..] = wrapped else {
            return Err(Error::Unwrap);
        };
        if rest.len() < NONCE_LEN + 16 {
            return Err(Error::Unwrap);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(SecretBytes::new)
            .map_err(|_| Error::Unwrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        let (k1, created) = LocalKeyFile::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (k2, created) = LocalKeyFile::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.key_id(), k2.key_id());
        let wrapped = k1.wrap(b"seed", b"ctx").await.unwrap();
        assert_eq!(k2.unwrap(&wrapped, b"ctx").await.unwrap().expose(), b"seed");
    }

    #[test]
    fn key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalKeyFile::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(LocalKeyFile::load(&path)
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(
            format!("{:?}", SecretBytes::new(b"hunter2".to_vec())),
            "**redacted**"
        );
    }

    proptest! {
        #[test]
        fn wrap_round_trips_and_binds_context(secret in prop::collection::vec(any::<u8>(), 1..64),
                                              aad in prop::collection::vec(any::<u8>(), 0..16),
                                              flip in any::<prop::sample::Index>()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let k = LocalKeyFile::from_key(&[3u8; 32]);
                let w = k.wrap(&secret, &aad).await.unwrap();
                assert_eq!(k.unwrap(&w, &aad).await.unwrap().expose(), secret.as_slice());
                assert_ne!(k.wrap(&secret, &aad).await.unwrap(), w, "fresh nonce per wrap");
                let mut other_aad = aad.clone();
                other_aad.push(0);
                assert!(matches!(k.unwrap(&w, &other_aad).await, Err(Error::Unwrap)));
                let mut tampered = w.clone();
                let i = flip.index(tampered.len());
                tampered[i] ^= 1;
                assert!(k.unwrap(&tampered, &aad).await.is_err());
                let other = LocalKeyFile::from_key(&[4u8; 32]);
                assert!(other.unwrap(&w, &aad).await.is_err());
                // `seal` writes what the key file reads, bound to the same context.
                let sealed = seal(&[3u8; 32], &secret, &aad).unwrap();
                assert_eq!(k.unwrap(&sealed, &aad).await.unwrap().expose(), secret.as_slice());
                assert!(matches!(k.unwrap(&sealed, &other_aad).await, Err(Error::Unwrap)));
                assert!(other.unwrap(&sealed, &aad).await.is_err());
            });
        }
    }
}
