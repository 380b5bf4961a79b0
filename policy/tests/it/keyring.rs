//! Data keys and the PAN vault over a real database: one KEK call per batch, cache bounds,
//! crypto-shredding, tokenization.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use warden_policy::keyring::{CachePolicy, SCOPE_DATASET, SCOPE_SUBJECT};
use warden_policy::keys::{KeyProvider, LocalKeyFile, SecretBytes};
use warden_policy::pan::{is_token, Tokenizer};
use warden_policy::vault::VaultStore;
use warden_policy::Error;

use crate::{fixture, Kind};

warden_audit::on_both_backends!(crate::Kind;
    one_kek_call_per_batch_and_cache_bounds,
    destroyed_keys_stay_destroyed,
    tokens_are_deterministic_per_dataset_and_round_trip,
    racing_tokenizers_agree,
);

/// Counts the calls that reach the key-encryption key.
#[derive(Debug)]
struct Counting {
    inner: LocalKeyFile,
    unwraps: AtomicUsize,
}

#[async_trait]
impl KeyProvider for Counting {
    fn key_id(&self) -> &str {
        self.inner.key_id()
    }
    async fn wrap(&self, p: &[u8], aad: &[u8]) -> warden_policy::Result<Vec<u8>> {
        self.inner.wrap(p, aad).await
    }
    async fn unwrap(&self, w: &[u8], aad: &[u8]) -> warden_policy::Result<SecretBytes> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(w, aad).await
    }
}

fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        inner: LocalKeyFile::from_key(&[8u8; 32]),
        unwraps: AtomicUsize::new(0),
    })
}

fn subjects(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("sr-{i}")).collect()
}

async fn one_kek_call_per_batch_and_cache_bounds(kind: Kind) {
    let f = fixture(kind).await;
    let kek = counting();
    let policy = CachePolicy {
        ttl: Duration::from_secs(60),
        max_uses: 3,
        capacity: 10_000,
    };
    let ring = f.keyring(kek.clone(), policy);
    let created = ring
        .data_keys(SCOPE_SUBJECT, &subjects(1000), true)
        .await
        .unwrap();
    assert_eq!(created.keys.len(), 1000);

    // Another replica, cold cache: 1000 subjects' keys cost one unwrap at the KEK.
    let replica = f.keyring(kek.clone(), policy);
    let before = kek.unwraps.load(Ordering::SeqCst);
    let found = replica
        .data_keys(SCOPE_SUBJECT, &subjects(1000), false)
        .await
        .unwrap();
    assert_eq!(
        kek.unwraps.load(Ordering::SeqCst) - before,
        1,
        "one KEK call for the whole batch"
    );
    for (r, k) in &found.keys {
        assert_eq!(
            k.expose(),
            created.keys[r].expose(),
            "replicas see the same key"
        );
    }

    // Within the TTL and use bound: no KEK call. Past the TTL: unwrapped again.
    let one = vec!["sr-1".to_owned()];
    let calls = kek.unwraps.load(Ordering::SeqCst);
    replica.data_keys(SCOPE_SUBJECT, &one, false).await.unwrap();
    assert_eq!(kek.unwraps.load(Ordering::SeqCst), calls);
    f.clock.tick(Duration::from_secs(61));
    replica.data_keys(SCOPE_SUBJECT, &one, false).await.unwrap();
    assert_eq!(
        kek.unwraps.load(Ordering::SeqCst),
        calls + 1,
        "expired keys are unwrapped again"
    );
    // The use bound (3): a fresh ring unwraps the wrapping key once, uses it for three
    // misses, then unwraps it again for the fourth.
    let bounded = f.keyring(kek.clone(), policy);
    let calls = kek.unwraps.load(Ordering::SeqCst);
    for r in ["sr-10", "sr-11", "sr-12"] {
        bounded
            .data_keys(SCOPE_SUBJECT, &[r.to_owned()], false)
            .await
            .unwrap();
    }
    assert_eq!(kek.unwraps.load(Ordering::SeqCst), calls + 1);
    bounded
        .data_keys(SCOPE_SUBJECT, &["sr-13".to_owned()], false)
        .await
        .unwrap();
    assert_eq!(
        kek.unwraps.load(Ordering::SeqCst),
        calls + 2,
        "past its use bound the key is unwrapped again"
    );

    // Without `create`, unknown subjects have no key.
    let none = replica
        .data_keys(SCOPE_SUBJECT, &["sr-new".to_owned()], false)
        .await
        .unwrap();
    assert!(none.keys.is_empty() && none.destroyed.is_empty());
    assert!(matches!(
        replica.data_key(SCOPE_SUBJECT, "sr-new", false).await,
        Err(Error::KeyMissing { .. })
    ));
}

async fn destroyed_keys_stay_destroyed(kind: Kind) {
    let f = fixture(kind).await;
    let ring = f.keyring(counting(), CachePolicy::default());
    let both = vec!["sr-a".to_owned(), "sr-b".to_owned()];
    let keys = ring.data_keys(SCOPE_SUBJECT, &both, true).await.unwrap();
    assert_eq!(f.vault.epoch().await.unwrap(), 0);
    assert!(ring.destroy(SCOPE_SUBJECT, "sr-a").await.unwrap());
    assert!(!ring.destroy(SCOPE_SUBJECT, "sr-a").await.unwrap());
    assert_eq!(
        f.vault.epoch().await.unwrap(),
        1,
        "the epoch rises with each key destroyed, once"
    );
    let err = ring
        .data_key(SCOPE_SUBJECT, "sr-a", true)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyDestroyed { .. }), "{err}");
    assert!(
        !err.to_string().contains("sr-a"),
        "the error names no subject"
    );
    let after = ring.data_keys(SCOPE_SUBJECT, &both, true).await.unwrap();
    assert!(
        after.destroyed.contains("sr-a") && !after.keys.contains_key("sr-a"),
        "never recreated"
    );
    assert_eq!(
        after.keys["sr-b"].expose(),
        keys.keys["sr-b"].expose(),
        "other subjects untouched"
    );
    // Another replica, cold, agrees.
    let replica = f.keyring(counting(), CachePolicy::default());
    assert!(matches!(
        replica.data_key(SCOPE_SUBJECT, "sr-a", false).await,
        Err(Error::KeyDestroyed { .. })
    ));
    // The loaders' question (which of these were erased?), with repeats and a subject that
    // never had a key; asked twice, so the second answer comes from the cache.
    let refs = ["sr-a", "sr-b", "sr-a", "sr-unknown", "sr-b"];
    for _ in 0..2 {
        let erased = replica.destroyed_among(SCOPE_SUBJECT, &refs).await.unwrap();
        assert_eq!(erased, std::collections::HashSet::from(["sr-a".to_owned()]));
    }
    // A replica that holds a key in its cache refuses it as soon as another one destroys it.
    replica
        .data_key(SCOPE_SUBJECT, "sr-b", false)
        .await
        .unwrap();
    assert!(ring.destroy(SCOPE_SUBJECT, "sr-b").await.unwrap());
    assert!(matches!(
        replica.data_key(SCOPE_SUBJECT, "sr-b", false).await,
        Err(Error::KeyDestroyed { .. })
    ));
    let erased = replica.destroyed_among(SCOPE_SUBJECT, &refs).await.unwrap();
    assert!(erased.contains("sr-a") && erased.contains("sr-b") && erased.len() == 2);
    // A subject erased before it ever had a key never gets one.
    assert!(ring.destroy(SCOPE_SUBJECT, "sr-never").await.unwrap());
    assert!(matches!(
        ring.data_key(SCOPE_SUBJECT, "sr-never", true).await,
        Err(Error::KeyDestroyed { .. })
    ));
}

fn pans() -> Vec<String> {
    [
        "4111111111111111",
        "5500000000000004",
        "340000000000009",
        "4111111111111111",
        "6011000000000004",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

async fn tokens_are_deterministic_per_dataset_and_round_trip(kind: Kind) {
    let f = fixture(kind).await;
    let ring = f.keyring(counting(), CachePolicy::default());
    let t = Tokenizer::new(ring.clone(), f.vault.clone(), f.clock.clone());
    let a = t.tokenize("payments", &pans()).await.unwrap();
    assert!(a.iter().all(|x| is_token(x)), "{a:?}");
    assert_eq!(a[0], a[3], "same PAN, same token within a dataset");
    assert_ne!(a[0], a[1]);
    for (token, pan) in a.iter().zip(pans()) {
        assert!(token.ends_with(&pan[pan.len() - 4..]));
        assert!(!token.contains(&pan[6..pan.len() - 4]));
    }
    assert_eq!(
        t.tokenize("payments", &pans()).await.unwrap(),
        a,
        "stable across calls"
    );
    let b = t.tokenize("refunds", &pans()).await.unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| x != y),
        "different datasets, different tokens"
    );

    let mut query = a.clone();
    query.push("tok_unknownunknownu1111".to_owned());
    let back = t.detokenize("payments", &query).await.unwrap();
    assert_eq!(
        back[..5]
            .iter()
            .map(|p| p.clone().unwrap())
            .collect::<Vec<_>>(),
        pans()
    );
    assert_eq!(back[5], None);
    assert_eq!(
        t.detokenize("refunds", &a[..1]).await.unwrap(),
        vec![None],
        "tokens do not cross datasets"
    );

    // Crypto-shredding the dataset key makes the vault unreadable.
    assert!(ring.destroy(SCOPE_DATASET, "payments").await.unwrap());
    assert!(matches!(
        t.detokenize("payments", &a).await,
        Err(Error::KeyDestroyed { .. })
    ));
}

async fn racing_tokenizers_agree(kind: Kind) {
    let f = fixture(kind).await;
    let batch: Vec<String> = (0..300u64)
        .map(|i| {
            let body = format!("4000{i:011}");
            let check = (0..10)
                .find(|c| warden_policy::pan::luhn_valid(format!("{body}{c}").as_bytes()))
                .unwrap();
            format!("{body}{check}")
        })
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        // Separate key rings stand for separate replicas.
        let ring = f.keyring(
            Arc::new(LocalKeyFile::from_key(&[8u8; 32])),
            CachePolicy::default(),
        );
        let t = Tokenizer::new(ring, f.vault.clone(), f.clock.clone());
        let b = batch.clone();
        tasks.push(tokio::spawn(async move {
            t.tokenize("payments", &b).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "every replica got the same tokens"
    );
}

/// Luhn-valid card numbers of 12 to 19 digits.
fn arb_pan() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop::collection::vec(0u8..10, 11..=18).prop_map(|body| {
        let digits: String = body.iter().map(|x| char::from(b'0' + x)).collect();
        let check = (0..10u8)
            .find(|c| warden_policy::pan::luhn_valid(format!("{digits}{c}").as_bytes()))
            .unwrap_or(0);
        format!("{digits}{check}")
    })
}

/// Property: tokenize → detokenize gives the PANs back; tokens are stable within a dataset
/// and differ across datasets.
#[test]
fn tokenize_properties() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = rt.block_on(fixture(Kind::Sqlite));
    let ring = f.keyring(counting(), CachePolicy::default());
    let t = Tokenizer::new(ring, f.vault.clone(), f.clock.clone());
    let mut runner = TestRunner::new(Config {
        cases: 32,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(arb_pan(), 1..20),
        "[a-z]{1,6}",
        "[a-z]{1,6}",
    );
    runner
        .run(&strategy, |(pans, d1, d2)| {
            rt.block_on(async {
                let a = t.tokenize(&d1, &pans).await.unwrap();
                assert_eq!(
                    t.detokenize(&d1, &a).await.unwrap(),
                    pans.iter().cloned().map(Some).collect::<Vec<_>>()
                );
                assert_eq!(t.tokenize(&d1, &pans).await.unwrap(), a);
                if d1 != d2 {
                    let b = t.tokenize(&d2, &pans).await.unwrap();
                    assert!(a.iter().zip(&b).all(|(x, y)| x != y));
                }
                for (i, p) in pans.iter().enumerate() {
                    for (j, q) in pans.iter().enumerate() {
                        assert_eq!(
                            p == q,
                            a[i] == a[j],
                            "equal PANs, equal tokens; else different"
                        );
                    }
                }
            });
            Ok(())
        })
        .unwrap();
}
