//! Data keys: one per subject (for `pii.direct`) and one per dataset (for the PAN vault).
//!
//! Keys form three tiers, as in the AWS Encryption SDK's hierarchy: the key-encryption key
//! (local key file or AWS KMS) wraps a single *wrapping key*; the wrapping key wraps every data
//! key with AES-256-GCM, bound to its scope and reference. So a batch of records for thousands
//! of subjects costs at most one KMS call (to unwrap the wrapping key, then cached), never one
//! per subject — and rotating the KEK rewraps one key, not millions.
//!
//! Unwrapped keys are cached with a time-to-live and a bound on uses, and zeroized when the
//! last holder drops them. Destroying a data key (crypto-shredding) forgets its wrapped bytes:
//! from then on every request for it fails with [`Error::KeyDestroyed`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use zeroize::Zeroizing;

use crate::keys::{KeyProvider, LocalKeyFile};
use crate::vault::VaultStore;
use crate::{Clock, Error, Result};

pub const SCOPE_WRAPPING: &str = "wrapping";
pub const SCOPE_DATASET: &str = "dataset";
pub const SCOPE_SUBJECT: &str = "subject";
const WRAPPING_REF: &str = "current";

/// A 256-bit data key; zeroized when the last clone is dropped, never printed.
#[derive(Clone)]
pub struct DataKey(Arc<Zeroizing<[u8; 32]>>);

impl DataKey {
    fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Self(Arc::new(k))
    }

    fn from_slice(bytes: &[u8]) -> Result<Self> {
        let k: [u8; 32] = bytes.try_into().map_err(|_| Error::Unwrap)?;
        Ok(Self(Arc::new(Zeroizing::new(k))))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(**redacted**)")
    }
}

/// How long and how often an unwrapped key may be used before it is unwrapped again.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub max_uses: u64,
    /// Most keys held; beyond it the cache is emptied.
    pub capacity: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_uses: 1_000_000,
            capacity: 100_000,
        }
    }
}

/// Unwrapped keys, valid for one value of the vault's epoch.
#[derive(Default)]
struct KeyCache {
    /// The epoch the entries were checked against (`None`: not read yet).
    epoch: Option<i64>,
    /// By scope, then reference: looked up by `&str`, with no key built for each lookup.
    entries: HashMap<String, HashMap<String, Cached>>,
    /// Entries over all scopes.
    len: usize,
}

impl KeyCache {
    fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }

    fn remove(&mut self, scope: &str, key_ref: &str) {
        if let Some(scoped) = self.entries.get_mut(scope) {
            if scoped.remove(key_ref).is_some() {
                self.len -= 1;
            }
        }
    }
}

struct Cached {
    key: DataKey,
    /// Unix microseconds when unwrapped.
    at: i64,
    uses: u64,
}

/// The keys found for a batch.
#[derive(Debug, Default)]
pub struct KeyBatch {
    pub keys: HashMap<String, DataKey>,
    /// References whose key was destroyed.
    pub destroyed: HashSet<String>,
}

/// Creates, finds, caches and destroys data keys.
pub struct KeyRing {
    kek: Arc<dyn KeyProvider>,
    vault: Arc<dyn VaultStore>,
    clock: Arc<dyn Clock>,
    policy: CachePolicy,
    cache: Mutex<KeyCache>,
    wrapping: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kek", &self.kek.key_id())
            .finish_non_exhaustive()
    }
}

fn dek_aad(scope: &str, key_ref: &str) -> Vec<u8> {
    format!("warden:data-key:{scope}:{key_ref}").into_bytes()
}

impl KeyRing {
    pub fn new(
        kek: Arc<dyn KeyProvider>,
        vault: Arc<dyn VaultStore>,
        clock: Arc<dyn Clock>,
        policy: CachePolicy,
    ) -> Self {
        Self {
            kek,
            vault,
            clock,
            policy,
            cache: Mutex::new(KeyCache::default()),
            wrapping: tokio::sync::Mutex::new(()),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, scope: &str, key_ref: &str) -> Option<DataKey> {
        self.cached_in(
            &mut self.lock_cache(),
            scope,
            key_ref,
            self.clock.now_micros(),
        )
    }

    /// The cached key of `key_ref` if it is still live at `now` (a use counted); a batch reads
    /// the clock once for all its references.
    fn cached_in(
        &self,
        cache: &mut KeyCache,
        scope: &str,
        key_ref: &str,
        now: i64,
    ) -> Option<DataKey> {
        let ttl = i64::try_from(self.policy.ttl.as_micros()).unwrap_or(i64::MAX);
        let entry = cache.entries.get_mut(scope)?.get_mut(key_ref)?;
        if now - entry.at < ttl && entry.uses < self.policy.max_uses {
            entry.uses += 1;
            return Some(entry.key.clone());
        }
        cache.remove(scope, key_ref);
        None
    }

    /// Moves the cache to the vault's `epoch`: a higher one than the cache was checked
    /// against empties it (something was destroyed somewhere). A lower one (a reader that
    /// started before another, or a database restored from a backup) empties it too but
    /// keeps the epoch, so nothing read at the lower one is cached.
    fn advance(&self, epoch: i64) {
        let mut cache = self.lock_cache();
        match cache.epoch {
            Some(e) if e == epoch => {}
            Some(e) if e > epoch => cache.clear(),
            _ => {
                cache.clear();
                cache.epoch = Some(epoch);
            }
        }
    }

    /// Caches a key unwrapped from a store read made at `epoch`; not when the cache has
    /// moved on since (the key may have been destroyed meanwhile).
    fn remember_at(&self, scope: &str, key_ref: &str, key: &DataKey, epoch: i64) {
        let mut cache = self.lock_cache();
        if cache.epoch == Some(epoch) {
            self.remember_in(&mut cache, scope, key_ref, key);
        }
    }

    fn remember(&self, scope: &str, key_ref: &str, key: &DataKey) {
        self.remember_in(&mut self.lock_cache(), scope, key_ref, key);
    }

    fn remember_in(&self, cache: &mut KeyCache, scope: &str, key_ref: &str, key: &DataKey) {
        if cache.len >= self.policy.capacity {
            cache.clear();
        }
        let fresh = Cached {
            key: key.clone(),
            at: self.clock.now_micros(),
            uses: 1,
        };
        let scoped = cache.entries.entry(scope.to_owned()).or_default();
        if scoped.insert(key_ref.to_owned(), fresh).is_none() {
            cache.len += 1;
        }
    }

    /// The wrapping key, created on first use.
    async fn wrapping_key(&self) -> Result<LocalKeyFile> {
        if let Some(k) = self.cached(SCOPE_WRAPPING, WRAPPING_REF) {
            return Ok(LocalKeyFile::from_key(k.expose()));
        }
        // One unwrap at a time: concurrent misses wait for the first instead of all calling KMS.
        let _one = self.wrapping.lock().await;
        if let Some(k) = self.cached(SCOPE_WRAPPING, WRAPPING_REF) {
            return Ok(LocalKeyFile::from_key(k.expose()));
        }
        let aad = dek_aad(SCOPE_WRAPPING, WRAPPING_REF);
        let refs = [WRAPPING_REF.to_owned()];
        let stored = match self
            .vault
            .keys(SCOPE_WRAPPING, &refs)
            .await?
            .remove(WRAPPING_REF)
        {
            Some(s) => s,
            None => {
                let fresh = DataKey::random();
                let wrapped = self.kek.wrap(fresh.expose(), &aad).await?;
                self.vault
                    .put_keys(
                        SCOPE_WRAPPING,
                        &[(WRAPPING_REF.to_owned(), wrapped)],
                        self.kek.key_id(),
                        self.clock.now_micros(),
                    )
                    .await?;
                // Another replica may have won the race; use whatever is stored.
                self.vault
                    .keys(SCOPE_WRAPPING, &refs)
                    .await?
                    .remove(WRAPPING_REF)
                    .ok_or(Error::Unwrap)?
            }
        };
        let wrapped = stored.wrapped.ok_or_else(|| Error::KeyDestroyed {
            scope: SCOPE_WRAPPING.to_owned(),
        })?;
        let key = DataKey::from_slice(self.kek.unwrap(&wrapped, &aad).await?.expose())?;
        self.remember(SCOPE_WRAPPING, WRAPPING_REF, &key);
        Ok(LocalKeyFile::from_key(key.expose()))
    }

    /// The data keys of `refs` in `scope`; with `create`, keys that never existed are made.
    /// Destroyed keys are reported in [`KeyBatch::destroyed`] and never recreated.
    ///
    /// # Errors
    /// Vault or key-encryption-key failures.
    pub async fn data_keys(&self, scope: &str, refs: &[String], create: bool) -> Result<KeyBatch> {
        let mut batch = KeyBatch::default();
        // Borrowed: a batch names each of thousands of subjects many times over.
        let mut unique: Vec<&String> = refs.iter().collect();
        unique.sort_unstable();
        unique.dedup();
        if unique.is_empty() {
            return Ok(batch);
        }
        // The vault's epoch is read every time (one point query): while it is unchanged,
        // every cached key is still live; once it rose, the cache is emptied, so a key
        // destroyed by another replica is refused at this one's next batch. Only the keys
        // not cached are looked up (one batched query).
        let epoch = self.vault.epoch().await?;
        self.advance(epoch);
        let unique: Vec<String> = {
            let now = self.clock.now_micros();
            let mut cache = self.lock_cache();
            batch.keys.reserve(unique.len());
            unique
                .into_iter()
                .filter(|r| match self.cached_in(&mut cache, scope, r, now) {
                    Some(k) => {
                        batch.keys.insert((*r).clone(), k);
                        false
                    }
                    None => true,
                })
                .cloned()
                .collect()
        };
        if unique.is_empty() {
            return Ok(batch);
        }
        let mut stored = self.vault.keys(scope, &unique).await?;
        let absent: Vec<String> = unique
            .iter()
            .filter(|r| !stored.contains_key(*r))
            .cloned()
            .collect();
        let mut wrapping = None;
        if create && !absent.is_empty() {
            let w = self.wrapping_key().await?;
            let mut new = Vec::with_capacity(absent.len());
            for r in &absent {
                let k = DataKey::random();
                new.push((r.clone(), w.wrap(k.expose(), &dek_aad(scope, r)).await?));
            }
            self.vault
                .put_keys(scope, &new, w.key_id(), self.clock.now_micros())
                .await?;
            // Re-read: where another writer won, its key is the one.
            stored.extend(self.vault.keys(scope, &absent).await?);
            wrapping = Some(w);
        }
        for (r, s) in stored {
            let Some(w) = s.wrapped else {
                self.forget(scope, &r);
                batch.destroyed.insert(r);
                continue;
            };
            if wrapping.is_none() {
                wrapping = Some(self.wrapping_key().await?);
            }
            let unwrapper = wrapping.as_ref().ok_or(Error::Unwrap)?;
            let k = DataKey::from_slice(unwrapper.unwrap(&w, &dek_aad(scope, &r)).await?.expose())?;
            self.remember_at(scope, &r, &k, epoch);
            batch.keys.insert(r, k);
        }
        Ok(batch)
    }

    /// Which of `refs` have their key destroyed (erased subjects), for a reader that needs no
    /// key — a loader dropping erased subjects' records. As [`data_keys`](Self::data_keys)
    /// without `create`, but borrowing the references: the ones cached (live, at the vault's
    /// current epoch) cost a lookup each; only the others are looked up in the vault.
    ///
    /// # Errors
    /// Vault or key failures.
    pub async fn destroyed_among(&self, scope: &str, refs: &[&str]) -> Result<HashSet<String>> {
        let epoch = self.vault.epoch().await?;
        self.advance(epoch);
        let mut seen: HashSet<&str> = HashSet::with_capacity(refs.len());
        let missing: Vec<String> = {
            let now = self.clock.now_micros();
            let mut cache = self.lock_cache();
            refs.iter()
                .copied()
                .filter(|r| seen.insert(r))
                .filter(|r| self.cached_in(&mut cache, scope, r, now).is_none())
                .map(str::to_owned)
                .collect()
        };
        if missing.is_empty() {
            return Ok(HashSet::new());
        }
        Ok(self.data_keys(scope, &missing, false).await?.destroyed)
    }

    fn forget(&self, scope: &str, key_ref: &str) {
        self.lock_cache().remove(scope, key_ref);
    }

    /// One data key; [`Error::KeyDestroyed`] if it was destroyed.
    ///
    /// # Errors
    /// As [`data_keys`](Self::data_keys), and a missing key without `create`.
    pub async fn data_key(&self, scope: &str, key_ref: &str, create: bool) -> Result<DataKey> {
        let mut batch = self.data_keys(scope, &[key_ref.to_owned()], create).await?;
        if batch.destroyed.contains(key_ref) {
            return Err(Error::KeyDestroyed {
                scope: scope.to_owned(),
            });
        }
        batch.keys.remove(key_ref).ok_or_else(|| Error::KeyMissing {
            scope: scope.to_owned(),
        })
    }

    /// Rewraps the wrapping key from `old` to this ring's key-encryption key (KEK rotation:
    /// data keys stay as they are, wrapped by the wrapping key). Returns whether it rewrapped
    /// (false when it is already under the new key, or there is none yet).
    ///
    /// # Errors
    /// Neither key unwraps it, or a vault failure.
    pub async fn rotate_wrapping_key(&self, old: &dyn KeyProvider) -> Result<bool> {
        let aad = dek_aad(SCOPE_WRAPPING, WRAPPING_REF);
        let refs = [WRAPPING_REF.to_owned()];
        let Some(stored) = self
            .vault
            .keys(SCOPE_WRAPPING, &refs)
            .await?
            .remove(WRAPPING_REF)
        else {
            return Ok(false);
        };
        let wrapped = stored.wrapped.ok_or_else(|| Error::KeyDestroyed {
            scope: SCOPE_WRAPPING.to_owned(),
        })?;
        if self.kek.unwrap(&wrapped, &aad).await.is_ok() {
            return Ok(false);
        }
        let key = old.unwrap(&wrapped, &aad).await?;
        let rewrapped = self.kek.wrap(key.expose(), &aad).await?;
        self.vault
            .rewrap_key(
                SCOPE_WRAPPING,
                WRAPPING_REF,
                &wrapped,
                &rewrapped,
                self.kek.key_id(),
            )
            .await
    }

    /// Destroys a data key (crypto-shredding); returns whether a live key was destroyed.
    ///
    /// # Errors
    /// A vault failure.
    pub async fn destroy(&self, scope: &str, key_ref: &str) -> Result<bool> {
        let destroyed = self
            .vault
            .destroy_key(scope, key_ref, self.clock.now_micros())
            .await?;
        self.forget(scope, key_ref);
        Ok(destroyed)
    }
}
