//! Card numbers (PCI DSS): validation, the token vault, and masking.
//!
//! A PAN is replaced by a random token that keeps only its last four digits
//! (`tok_<16 random letters><last4>`): it is not derivable from the PAN without the vault,
//! fails the Luhn check (it is not a card number) and holds no other digit of the PAN. The
//! same PAN gets the same token within a dataset, found through an HMAC-SHA-256 index under a
//! key of that dataset, and different tokens in different datasets. The PAN itself is kept
//! only encrypted (AES-256-GCM under the dataset key, bound to dataset and token).

use std::collections::HashMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::keyring::{DataKey, KeyRing, SCOPE_DATASET};
use crate::keys::{KeyProvider, LocalKeyFile};
use crate::vault::{NewToken, VaultStore};
use crate::{Clock, Error, Result};

/// Why a value is not a card number (never carries the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PanError {
    #[error("a card number has 12 to 19 digits")]
    Length,
    #[error("a card number holds only digits, spaces and dashes")]
    Characters,
    #[error("the card number fails the Luhn check")]
    Luhn,
}

/// The Luhn check (ISO/IEC 7812-1).
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// `body` (ASCII digits) with its Luhn check digit appended: a valid card number for tests,
/// benchmarks and synthetic data.
pub fn with_check_digit(body: &str) -> String {
    // Exactly one of the ten digits completes a digit string into a Luhn-valid one.
    (b'0'..=b'9')
        .map(|d| format!("{body}{}", char::from(d)))
        .find(|c| luhn_valid(c.as_bytes()))
        .unwrap_or_else(|| format!("{body}0"))
}

/// Normalizes and checks a card number: spaces and dashes dropped, 12 to 19 digits, Luhn.
///
/// # Errors
/// A [`PanError`] saying what is wrong (and nothing of the value).
pub fn parse_pan(input: &str) -> Result<String, PanError> {
    if input.len() > 64 {
        return Err(PanError::Length);
    }
    let mut digits = String::with_capacity(19);
    for c in input.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' => {}
            _ => return Err(PanError::Characters),
        }
    }
    if !(12..=19).contains(&digits.len()) {
        return Err(PanError::Length);
    }
    if !luhn_valid(digits.as_bytes()) {
        return Err(PanError::Luhn);
    }
    Ok(digits)
}

/// PCI DSS 3.4.1: at most the BIN (first six) and the last four digits are shown.
pub fn mask_pan(pan: &str) -> String {
    let n = pan.len();
    if n < 10 {
        return "*".repeat(n);
    }
    format!("{}{}{}", &pan[..6], "*".repeat(n - 10), &pan[n - 4..])
}

/// A token as most readers see it: `****1234`.
pub fn mask_token(token: &str) -> String {
    let last4: String = token
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{last4}")
}

/// Is this a vault token?
pub fn is_token(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.starts_with(b"tok_")
        && b[4..20].iter().all(u8::is_ascii_lowercase)
        && b[20..].iter().all(u8::is_ascii_digit)
}

fn new_token(pan: &str) -> String {
    // The thread-local generator is a CSPRNG (ChaCha) seeded from the OS: unpredictable
    // tokens without a system call per letter.
    let mut rng = rand::thread_rng();
    let letters: String = (0..16)
        .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
        .collect();
    format!("tok_{letters}{}", &pan[pan.len() - 4..])
}

/// The dataset's index and encryption keys, derived from its data key.
struct DatasetKeys {
    index: Hmac<Sha256>,
    cipher: LocalKeyFile,
}

impl DatasetKeys {
    fn derive(dek: &DataKey) -> Result<Self> {
        let sub = |label: &[u8]| -> Result<[u8; 32]> {
            let mut m =
                <Hmac<Sha256> as Mac>::new_from_slice(dek.expose()).map_err(|_| Error::Wrap)?;
            m.update(label);
            Ok(m.finalize().into_bytes().into())
        };
        let index = <Hmac<Sha256> as Mac>::new_from_slice(&sub(b"warden:pan-index")?)
            .map_err(|_| Error::Wrap)?;
        Ok(Self {
            index,
            cipher: LocalKeyFile::from_key(&sub(b"warden:pan-encrypt")?),
        })
    }

    fn index(&self, pan: &str) -> Vec<u8> {
        let mut m = self.index.clone();
        m.update(pan.as_bytes());
        m.finalize().into_bytes().to_vec()
    }
}

fn pan_aad(dataset: &str, token: &str) -> Vec<u8> {
    format!("warden:pan:{dataset}:{token}").into_bytes()
}

/// Subject references to cards this process has recorded in the vault, so a record of a
/// known (subject, card) pair costs no write. Two generations of at most [`KnownRefs::CAP`]
/// entries each: when the young one fills, it becomes the old one and the old one is
/// dropped. An entry is 128 bits of SHA-256 over (dataset, subject, PAN index).
///
/// Only an erasure removes references, and only its subject's, whose records the edge
/// refuses from the moment its key is destroyed (before the purge): an entry that outlived
/// its row can only concern a subject that sends nothing more. A purge in this process
/// forgets everything all the same.
#[derive(Default)]
struct KnownRefs {
    young: std::collections::HashSet<[u8; 16]>,
    old: std::collections::HashSet<[u8; 16]>,
}

impl std::fmt::Debug for KnownRefs {
    /// Sizes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownRefs")
            .field("young", &self.young.len())
            .field("old", &self.old.len())
            .finish()
    }
}

impl KnownRefs {
    const CAP: usize = 1 << 18;

    fn entry(dataset: &str, subject_ref: &str, pan_index: &[u8]) -> [u8; 16] {
        use sha2::Digest;
        let mut h = Sha256::new();
        for part in [dataset.as_bytes(), subject_ref.as_bytes(), pan_index] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        out
    }

    fn contains(&self, e: &[u8; 16]) -> bool {
        self.young.contains(e) || self.old.contains(e)
    }

    fn insert(&mut self, e: [u8; 16]) {
        if self.young.len() >= Self::CAP {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(e);
    }
}

/// Tokens by PAN index, per dataset, valid for one value of the vault's epoch (a purge that
/// deletes tokens raises it). At most [`TokenCache::CAP`] entries; then it starts afresh.
#[derive(Default)]
struct TokenCache {
    epoch: Option<i64>,
    entries: usize,
    tokens: HashMap<String, HashMap<Vec<u8>, String>>,
}

impl std::fmt::Debug for TokenCache {
    /// The epoch and the size only: never a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("epoch", &self.epoch)
            .field("entries", &self.entries)
            .finish()
    }
}

impl TokenCache {
    const CAP: usize = 1 << 18;

    /// A higher epoch empties the cache and moves it on. A lower one (a reader that started
    /// before another, or a database restored from a backup) empties it too but keeps the
    /// epoch, so nothing read at the lower one is cached.
    fn advance(&mut self, epoch: i64) {
        match self.epoch {
            Some(e) if e == epoch => {}
            Some(e) if e > epoch => {
                self.tokens.clear();
                self.entries = 0;
            }
            _ => {
                *self = Self {
                    epoch: Some(epoch),
                    ..Self::default()
                }
            }
        }
    }

    fn get(&self, dataset: &str, index: &[u8]) -> Option<&String> {
        self.tokens.get(dataset)?.get(index)
    }

    /// Caches tokens read from the vault at `epoch`; not when the cache has moved on since.
    fn remember<'a>(
        &mut self,
        dataset: &str,
        epoch: i64,
        tokens: impl Iterator<Item = (&'a Vec<u8>, &'a String)>,
    ) {
        if self.epoch != Some(epoch) {
            return;
        }
        let tokens: Vec<_> = tokens.collect();
        if self.entries + tokens.len() > Self::CAP {
            self.tokens.clear();
            self.entries = 0;
        }
        let per_dataset = match self.tokens.get_mut(dataset) {
            Some(m) => m,
            None => self.tokens.entry(dataset.to_owned()).or_default(),
        };
        per_dataset.reserve(tokens.len());
        for (index, token) in tokens.into_iter().take(Self::CAP) {
            if per_dataset.insert(index.clone(), token.clone()).is_none() {
                self.entries += 1;
            }
        }
    }
}

/// Tokenizes and detokenizes card numbers, in batches.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    keys: Arc<KeyRing>,
    vault: Arc<dyn VaultStore>,
    clock: Arc<dyn Clock>,
    known: Arc<std::sync::Mutex<KnownRefs>>,
    cache: Arc<std::sync::Mutex<TokenCache>>,
}

impl Tokenizer {
    pub fn new(keys: Arc<KeyRing>, vault: Arc<dyn VaultStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            keys,
            vault,
            clock,
            known: Arc::default(),
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, KnownRefs> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn dataset_keys(&self, dataset: &str, create: bool) -> Result<DatasetKeys> {
        DatasetKeys::derive(&self.keys.data_key(SCOPE_DATASET, dataset, create).await?)
    }

    /// Tokens for `pans` (already checked by [`parse_pan`]), in order; new PANs are vaulted
    /// in one transaction.
    ///
    /// # Errors
    /// Vault or key failures.
    pub async fn tokenize(&self, dataset: &str, pans: &[String]) -> Result<Vec<String>> {
        self.tokenize_inner(dataset, pans, None).await
    }

    async fn tokenize_inner(
        &self,
        dataset: &str,
        pans: &[String],
        subjects: Option<&[&str]>,
    ) -> Result<Vec<String>> {
        if pans.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.dataset_keys(dataset, true).await?;
        let indexes: Vec<Vec<u8>> = pans.iter().map(|p| keys.index(p)).collect();
        // Positions of the references this process wrote before and skips now; written
        // again below for any card that turns out to need a new token (its old one was
        // purged meanwhile).
        let mut skipped: Vec<usize> = Vec::new();
        if let Some(subjects) = subjects {
            // Before the lookup: an erasure purging these cards meanwhile either sees the
            // references (and keeps the tokens) or has removed the tokens before the lookup.
            let entries: Vec<[u8; 16]> = indexes
                .iter()
                .zip(subjects)
                .map(|(i, s)| KnownRefs::entry(dataset, s, i))
                .collect();
            let mut refs: Vec<(Vec<u8>, String)> = Vec::new();
            {
                let known = self.known();
                for (pos, ((i, s), e)) in indexes.iter().zip(subjects).zip(&entries).enumerate() {
                    if known.contains(e) {
                        skipped.push(pos);
                    } else {
                        refs.push((i.clone(), (*s).to_owned()));
                    }
                }
            }
            refs.sort_unstable();
            refs.dedup();
            if !refs.is_empty() {
                self.vault.put_token_refs(dataset, &refs).await?;
                let mut known = self.known();
                for e in entries {
                    known.insert(e);
                }
            }
        }
        let mut unique: Vec<Vec<u8>> = indexes.clone();
        unique.sort_unstable();
        unique.dedup();
        // The epoch is read after the references are in the vault: a purge that deleted
        // one of these tokens committed before (the epoch rose, the cache is emptied), or
        // after, and then it saw the references and kept the token.
        let epoch = self.vault.epoch().await?;
        let mut found: HashMap<Vec<u8>, String> = HashMap::with_capacity(unique.len());
        let missing: Vec<Vec<u8>> = {
            let mut cache = self.cache();
            cache.advance(epoch);
            unique
                .into_iter()
                .filter(|i| match cache.get(dataset, i) {
                    Some(t) => {
                        found.insert(i.clone(), t.clone());
                        false
                    }
                    None => true,
                })
                .collect()
        };
        if !missing.is_empty() {
            let stored = self.vault.tokens_by_index(dataset, &missing).await?;
            self.cache().remember(dataset, epoch, stored.iter());
            found.extend(stored);
        }
        let mut new = Vec::new();
        let mut planned: HashMap<&[u8], ()> = HashMap::new();
        for (pan, index) in pans.iter().zip(&indexes) {
            if found.contains_key(index) || planned.insert(index.as_slice(), ()).is_some() {
                continue;
            }
            let token = new_token(pan);
            let pan_ciphertext = keys
                .cipher
                .wrap(pan.as_bytes(), &pan_aad(dataset, &token))
                .await?;
            new.push(NewToken {
                pan_index: index.clone(),
                token,
                pan_ciphertext,
            });
        }
        if !new.is_empty() {
            // A reference skipped as known may have been purged with its token (an erasure
            // of that subject racing this batch): a new token is never vaulted without its
            // references, so the erasure's verification finds it and purges it again.
            let new_indexes: std::collections::HashSet<&[u8]> =
                new.iter().map(|t| t.pan_index.as_slice()).collect();
            let mut again: Vec<(Vec<u8>, String)> = skipped
                .into_iter()
                .filter(|pos| new_indexes.contains(indexes[*pos].as_slice()))
                .filter_map(|pos| Some((indexes[pos].clone(), (*subjects?.get(pos)?).to_owned())))
                .collect();
            if !again.is_empty() {
                again.sort_unstable();
                again.dedup();
                self.vault.put_token_refs(dataset, &again).await?;
            }
            let inserted = self
                .vault
                .insert_tokens(dataset, &new, self.clock.now_micros())
                .await?;
            let vaulted: HashMap<Vec<u8>, String> = if inserted == new.len() {
                new.into_iter().map(|t| (t.pan_index, t.token)).collect()
            } else {
                // A concurrent writer vaulted some of these PANs first: its tokens are the ones.
                let fresh: Vec<Vec<u8>> = new.into_iter().map(|t| t.pan_index).collect();
                self.vault.tokens_by_index(dataset, &fresh).await?
            };
            // Not cached: a card seen once may never come again, and filling the cache with
            // every new card cost a tenth of the new-card rate. Its next lookup caches it.
            found.extend(vaulted);
        }
        indexes
            .iter()
            .map(|i| {
                found
                    .get(i)
                    .cloned()
                    .ok_or_else(|| Error::Store("token missing after insert".to_owned()))
            })
            .collect()
    }

    /// As [`tokenize`](Self::tokenize), recording which subject's record carries each
    /// token (`subjects[i]` for `pans[i]`), so an erasure can purge the subject's tokens.
    ///
    /// # Errors
    /// Vault or key failures.
    pub async fn tokenize_for(
        &self,
        dataset: &str,
        pans: &[String],
        subjects: &[&str],
    ) -> Result<Vec<String>> {
        if subjects.len() != pans.len() {
            return Err(Error::Store(
                "one subject per card number is needed".to_owned(),
            ));
        }
        self.tokenize_inner(dataset, pans, Some(subjects)).await
    }

    /// Erases a subject from the vault: the tokens only its records carry (afterwards they
    /// detokenize to nothing, and the same card number gets a new token) and its references.
    /// Returns `(tokens deleted, tokens kept for other subjects)`.
    ///
    /// # Errors
    /// Vault failures.
    pub async fn purge_subject(&self, dataset: &str, subject_ref: &str) -> Result<(u64, u64)> {
        *self.known() = KnownRefs::default();
        self.vault.purge_subject(dataset, subject_ref).await
    }

    /// How many tokens the vault still links to a subject (zero after its erasure).
    ///
    /// # Errors
    /// Vault failures.
    pub async fn subject_tokens(&self, dataset: &str, subject_ref: &str) -> Result<u64> {
        self.vault.subject_tokens(dataset, subject_ref).await
    }

    /// How many of `tokens` the vault holds.
    ///
    /// # Errors
    /// Vault failures.
    pub async fn held(&self, dataset: &str, tokens: &[String]) -> Result<u64> {
        Ok(self.vault.pans_by_token(dataset, tokens).await?.len() as u64)
    }

    /// The card numbers behind `tokens`, in order (`None` for a token the vault does not know).
    ///
    /// # Errors
    /// Vault or key failures, [`Error::KeyDestroyed`] if the dataset key was destroyed.
    pub async fn detokenize(
        &self,
        dataset: &str,
        tokens: &[String],
    ) -> Result<Vec<Option<String>>> {
        let keys = self.dataset_keys(dataset, false).await?;
        let found = self.vault.pans_by_token(dataset, tokens).await?;
        let mut out = Vec::with_capacity(tokens.len());
        for t in tokens {
            out.push(match found.get(t) {
                Some(ct) => {
                    let pan = keys.cipher.unwrap(ct, &pan_aad(dataset, t)).await?;
                    Some(String::from_utf8(pan.expose().to_vec()).map_err(|_| Error::Unwrap)?)
                }
                None => None,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn check_digits_complete_card_numbers() {
        assert_eq!(with_check_digit("411111111111111"), "4111111111111111");
        assert_eq!(with_check_digit("550000000000000"), "5500000000000004");
        assert_eq!(with_check_digit("400005665566555"), "4000056655665556");
    }

    #[test]
    fn luhn_and_parsing() {
        assert_eq!(
            parse_pan("4111 1111 1111 1111").unwrap(),
            "4111111111111111"
        );
        assert_eq!(
            parse_pan("5500-0000-0000-0004").unwrap(),
            "5500000000000004"
        );
        assert_eq!(parse_pan("4111111111111112"), Err(PanError::Luhn));
        assert_eq!(parse_pan("41111"), Err(PanError::Length));
        assert_eq!(parse_pan("4111x111"), Err(PanError::Characters));
        assert_eq!(parse_pan(&"4".repeat(100)), Err(PanError::Length));
    }

    #[test]
    fn token_shape_never_panics() {
        assert!(is_token("tok_abcdefghijklmnop1111"));
        assert!(
            !is_token("tok_aaaaaaaaaaaaaaaéaa11"),
            "multi-byte characters are refused, not sliced"
        );
        assert!(!is_token("tok_abcdefghijklmnop111a"));
        assert!(!is_token(""));
    }

    #[test]
    fn masks() {
        assert_eq!(mask_pan("4111111111111111"), "411111******1111");
        assert_eq!(mask_pan("378282246310005"), "378282*****0005");
        assert_eq!(mask_token("tok_abcdefghijklmnop1111"), "****1111");
    }

    /// Luhn-valid PANs of 12 to 19 digits.
    pub(crate) fn arb_pan() -> impl Strategy<Value = String> {
        prop::collection::vec(0u8..10, 11..=18).prop_map(|body| {
            let digits: String = body.iter().map(|x| char::from(b'0' + x)).collect();
            let check = (0..10u8)
                .find(|c| luhn_valid(format!("{digits}{c}").as_bytes()))
                .unwrap_or(0);
            format!("{digits}{check}")
        })
    }

    proptest! {
        #[test]
        fn tokens_hide_all_but_the_last_four(pan in arb_pan()) {
            prop_assert!(parse_pan(&pan).is_ok());
            let t = new_token(&pan);
            prop_assert!(is_token(&t));
            prop_assert!(t.ends_with(&pan[pan.len() - 4..]));
            // No digit of the PAN but the last four: before them the token is letters only, so
            // the middle digits (and the BIN) appear nowhere.
            prop_assert!(t[..20].bytes().all(|b| !b.is_ascii_digit()));
            let middle = &pan[6..pan.len() - 4];
            prop_assert!(middle.is_empty() || !t[..20].contains(middle));
            prop_assert!(parse_pan(&t).is_err(), "a token is not a card number");
            // PCI DSS 3.4.1: the mask shows the first six and last four, nothing between.
            let masked = mask_pan(&pan);
            let n = pan.len();
            prop_assert_eq!(masked.len(), n);
            prop_assert_eq!(&masked[..6], &pan[..6]);
            prop_assert_eq!(&masked[n - 4..], &pan[n - 4..]);
            prop_assert!(masked[6..n - 4].bytes().all(|b| b == b'*'));
        }
    }
}
