//! AWS KMS as the key-encryption key: the distributed counterpart of [`LocalKeyFile`]
//! (crate::keys::LocalKeyFile). The key never leaves KMS; Warden sends it small secrets (data
//! keys, signing keys, TOTP seeds) to encrypt and decrypt, bound to their context through the
//! KMS encryption context.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;

use crate::keys::{KeyProvider, SecretBytes};
use crate::{Error, Result};

/// First byte of values wrapped by KMS (the local key file writes 1).
const FORMAT_KMS: u8 = 2;
/// Encryption-context entry carrying the associated data.
const CONTEXT_KEY: &str = "warden-aad";

/// How to reach KMS.
#[derive(Debug, Clone, Default)]
pub struct KmsSettings {
    /// Key id, ARN or alias of the key-encryption key.
    pub key_id: String,
    /// Region; default: from the AWS environment.
    pub region: Option<String>,
    /// Endpoint override (a KMS-compatible service, a VPC endpoint); default: AWS.
    pub endpoint: Option<String>,
    /// Static credentials `(access key, secret)`; default: the AWS credential chain
    /// (environment, profile, instance or task role).
    pub static_credentials: Option<(String, String)>,
}

/// [`KeyProvider`] backed by an AWS KMS key.
#[derive(Clone)]
pub struct AwsKms {
    client: Client,
    key_id: String,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A short description of a KMS failure: the service's code and message, or the transport
/// error (never the request, which may hold a secret).
fn kms_error<E, R>(op: &str, e: &aws_sdk_kms::error::SdkError<E, R>) -> Error
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => Error::Kms(format!(
            "{op}: {}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("no message")
        )),
        None => Error::Kms(format!(
            "{op}: {}",
            aws_sdk_kms::error::DisplayErrorContext(e)
        )),
    }
}

impl AwsKms {
    /// A client for `settings` (no call is made yet).
    pub async fn connect(settings: &KmsSettings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((id, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "warden-static",
            ));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_kms::config::Builder::from(&shared);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(config.build()),
            key_id: settings.key_id.clone(),
        }
    }

    /// Creates a new symmetric KMS key and returns its id (set-up and tests).
    ///
    /// # Errors
    /// A KMS failure.
    pub async fn create_key(&self, description: &str) -> Result<String> {
        let out = self
            .client
            .create_key()
            .description(description)
            .send()
            .await
            .map_err(|e| kms_error("CreateKey", &e))?;
        out.key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| Error::Kms("CreateKey returned no key".to_owned()))
    }

    /// The same client on another key.
    #[must_use]
    pub fn with_key(&self, key_id: impl Into<String>) -> Self {
        Self {
            client: self.client.clone(),
            key_id: key_id.into(),
        }
    }

    fn context(aad: &[u8]) -> HashMap<String, String> {
        HashMap::from([(CONTEXT_KEY.to_owned(), hex::encode(aad))])
    }
}

#[async_trait]
impl KeyProvider for AwsKms {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        if plaintext.is_empty() {
            return Err(Error::Wrap);
        }
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(Some(Self::context(aad)))
            .send()
            .await
            .map_err(|e| kms_error("Encrypt", &e))?;
        let blob = out.ciphertext_blob().ok_or(Error::Wrap)?;
        let mut wrapped = Vec::with_capacity(1 + blob.as_ref().len());
        wrapped.push(FORMAT_KMS);
        wrapped.extend_from_slice(blob.as_ref());
        Ok(wrapped)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<SecretBytes> {
        let [FORMAT_KMS, blob @ ..] = wrapped else {
            return Err(Error::Unwrap);
        };
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(blob))
            .set_encryption_context(Some(Self::context(aad)))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                // A wrong context, key or ciphertext is the caller's Unwrap.
                Some(s)
                    if s.is_invalid_ciphertext_exception() || s.is_incorrect_key_exception() =>
                {
                    Error::Unwrap
                }
                _ => kms_error("Decrypt", &e),
            })?;
        let plaintext = out.plaintext().ok_or(Error::Unwrap)?;
        Ok(SecretBytes::new(plaintext.as_ref().to_vec()))
    }
}
