//! Access tokens: short-lived EdDSA (Ed25519) JWTs issued by the gateway, and tokens of an
//! optional external OpenID Connect issuer verified against its JWKS.
//!
//! Verification accepts only what it expects: `alg` must be `EdDSA` for local tokens (so
//! `none` and HS256-signed-with-the-public-key are refused), `kid` must name a known key,
//! `iss` and `aud` must match, and `exp`, `nbf` and `iat` are checked against the injected
//! clock with a few seconds of leeway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{Mutex, RwLock};
use tracing::{debug, warn};
use warden_policy::Clock;
use warden_sdk::PrincipalKind;

use super::Principal;
use crate::config::{AuthConfig, OidcConfig};
use crate::error::{Error, Result};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: i64 = 5;
/// Longest accepted token, in bytes.
pub const MAX_TOKEN: usize = 8 * 1024;

/// The claims of a token issued by Warden.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub kind: PrincipalKind,
    pub roles: Vec<String>,
    pub amr: Vec<String>,
    pub mfa_at: Option<i64>,
    /// The account's credentials epoch when the token was issued: a password change raises
    /// it and ends the token.
    #[serde(default)]
    pub cep: i64,
}

/// Why a token was refused (for the log only; clients see `unauthenticated`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("unknown key id")]
    UnknownKid,
    #[error("bad signature or claims: {0}")]
    Invalid(String),
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
}

/// A public key the gateway verifies its own tokens with.
struct LocalKey {
    decoding: DecodingKey,
    x: String,
}

/// Issues and verifies tokens.
pub struct TokenService {
    issuer: String,
    audience: String,
    ttl: Duration,
    active_kid: String,
    encoding: EncodingKey,
    keys: HashMap<String, LocalKey>,
    oidc: Option<Oidc>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("active_kid", &self.active_kid)
            .finish_non_exhaustive()
    }
}

/// The key id of an Ed25519 public key: a prefix of its SHA-256 (stable, not secret).
pub fn key_id(purpose: &str, public: &[u8; 32]) -> String {
    use sha2::Digest;
    format!(
        "{purpose}-{}",
        hex::encode(&sha2::Sha256::digest(public)[..8])
    )
}

impl TokenService {
    /// `active` signs new tokens; `verify_only` are older public keys still accepted.
    ///
    /// # Errors
    /// A key that cannot be encoded.
    pub fn new(
        config: &AuthConfig,
        active: &SigningKey,
        verify_only: &[[u8; 32]],
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let der = active
            .to_pkcs8_der()
            .map_err(|e| Error::Crypto(format!("pkcs8: {e}")))?;
        let public = active.verifying_key().to_bytes();
        let active_kid = key_id("jwt", &public);
        let mut keys = HashMap::new();
        for pk in std::iter::once(&public).chain(verify_only) {
            let x = URL_SAFE_NO_PAD.encode(pk);
            let decoding = DecodingKey::from_ed_components(&x)
                .map_err(|e| Error::Crypto(format!("jwk: {e}")))?;
            keys.insert(key_id("jwt", pk), LocalKey { decoding, x });
        }
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: config.token_ttl,
            active_kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            keys,
            oidc: config.oidc.clone().map(Oidc::new),
            clock,
        })
    }

    /// Lifetime of issued tokens, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }

    /// Issues a token.
    ///
    /// # Errors
    /// Only a signing failure.
    pub fn issue(
        &self,
        sub: &str,
        kind: PrincipalKind,
        roles: &[String],
        amr: &[&str],
        mfa_at: Option<i64>,
        cep: i64,
    ) -> Result<String> {
        let now = self.clock.now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_owned(),
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(900),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            kind,
            roles: roles.to_vec(),
            amr: amr.iter().map(|s| (*s).to_owned()).collect(),
            mfa_at,
            cep,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims with the active key (tests build edge cases with it).
    ///
    /// # Errors
    /// Only a signing failure.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.active_kid.clone());
        encode(&header, claims, &self.encoding).map_err(|e| Error::Crypto(format!("jwt: {e}")))
    }

    /// The public keys as a JWK set (`GET /.well-known/jwks.json`).
    pub fn jwks(&self) -> Value {
        let mut keys: Vec<(&String, &LocalKey)> = self.keys.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        json!({
            "keys": keys.into_iter().map(|(kid, k)| json!({
                "kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": kid, "alg": "EdDSA", "use": "sig",
            })).collect::<Vec<_>>()
        })
    }

    /// Verifies a bearer token.
    ///
    /// # Errors
    /// A [`Rejection`] saying why (for the log).
    pub async fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        if token.len() > MAX_TOKEN {
            return Err(Rejection::Malformed);
        }
        let header = decode_header(token).map_err(|_| Rejection::Malformed)?;
        let kid = header.kid.as_deref().ok_or(Rejection::UnknownKid)?;
        if let Some(key) = self.keys.get(kid) {
            if header.alg != Algorithm::EdDSA {
                return Err(Rejection::Algorithm);
            }
            let claims: Claims = validate(
                token,
                &key.decoding,
                Algorithm::EdDSA,
                &self.issuer,
                &self.audience,
            )?;
            self.check_times(claims.exp, Some(claims.nbf), Some(claims.iat))?;
            return Ok(Principal {
                id: claims.sub,
                kind: claims.kind,
                roles: claims.roles,
                amr: claims.amr,
                mfa_at: claims.mfa_at,
                local: true,
                purpose: None,
                cep: claims.cep,
            });
        }
        let Some(oidc) = &self.oidc else {
            return Err(Rejection::UnknownKid);
        };
        let (key, alg) = oidc.key(kid).await.ok_or(Rejection::UnknownKid)?;
        if header.alg != alg {
            return Err(Rejection::Algorithm);
        }
        let claims: Map<String, Value> =
            validate(token, &key, alg, &oidc.config.issuer, &oidc.config.audience)?;
        let int = |name: &str| claims.get(name).and_then(Value::as_i64);
        self.check_times(
            int("exp").ok_or(Rejection::Expired)?,
            int("nbf"),
            int("iat"),
        )?;
        oidc.principal(&claims)
    }

    fn check_times(&self, exp: i64, nbf: Option<i64>, iat: Option<i64>) -> Result<(), Rejection> {
        let now = self.clock.now_secs();
        if now > exp + LEEWAY_SECS {
            return Err(Rejection::Expired);
        }
        if nbf.is_some_and(|nbf| now + LEEWAY_SECS < nbf)
            || iat.is_some_and(|iat| now + LEEWAY_SECS < iat)
        {
            return Err(Rejection::NotYetValid);
        }
        Ok(())
    }
}

fn validate<T: serde::de::DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
    issuer: &str,
    audience: &str,
) -> Result<T, Rejection> {
    let mut v = Validation::new(alg);
    // Time claims are checked against the injected clock instead.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    decode::<T>(token, key, &v)
        .map(|d| d.claims)
        .map_err(|e| Rejection::Invalid(e.to_string()))
}

/// How often an unknown `kid` may trigger a refetch of the external JWKS.
const JWKS_REFRESH: Duration = Duration::from_secs(30);
/// Largest accepted JWKS document.
const MAX_JWKS: usize = 256 * 1024;

/// An external OIDC issuer and its cached keys.
struct Oidc {
    config: OidcConfig,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    fetched: Mutex<Option<Instant>>,
}

impl Oidc {
    fn new(config: OidcConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            config,
            client,
            keys: RwLock::new(HashMap::new()),
            fetched: Mutex::new(None),
        }
    }

    async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(k) = self.keys.read().await.get(kid) {
            return Some(k.clone());
        }
        {
            let mut fetched = self.fetched.lock().await;
            if fetched.is_some_and(|at| at.elapsed() < JWKS_REFRESH) {
                return None;
            }
            *fetched = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => *self.keys.write().await = keys,
                Err(e) => warn!(error = %e, "cannot fetch the external issuer's JWKS"),
            }
        }
        self.keys.read().await.get(kid).cloned()
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, (DecodingKey, Algorithm)>> {
        let mut resp = self
            .client
            .get(&self.config.jwks_url)
            .send()
            .await?
            .error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS {
                anyhow::bail!("JWKS larger than {MAX_JWKS} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                // Symmetric keys are never accepted from outside.
                AlgorithmParameters::OctetKey(_) => continue,
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    keys.insert(kid, (k, alg));
                }
                Err(e) => debug!(error = %e, "skipping unusable JWK"),
            }
        }
        Ok(keys)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, Rejection> {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // The id lands in the audit log, so it must be an opaque identifier (OIDC Core §2
        // asks issuers for exactly that), never an e-mail address or a name.
        if sub.is_empty()
            || sub.len() > 128
            || !sub
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.|".contains(c))
        {
            return Err(Rejection::Invalid(
                "sub is not an opaque identifier".to_owned(),
            ));
        }
        let strings = |name: &str| -> Vec<String> {
            claims
                .get(name)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .take(32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let amr = strings("amr");
        let mfa_at = if amr.iter().any(|m| m == "otp" || m == "mfa" || m == "hwk") {
            claims.get("auth_time").and_then(Value::as_i64)
        } else {
            None
        };
        Ok(Principal {
            id: format!("oidc:{sub}"),
            kind: PrincipalKind::User,
            roles: strings(&self.config.roles_claim),
            amr,
            mfa_at,
            local: false,
            cep: 0,
            purpose: claims
                .get("purpose")
                .and_then(Value::as_str)
                .filter(|p| warden_policy::contract::valid_name(p))
                .map(str::to_owned),
        })
    }
}
