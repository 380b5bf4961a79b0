//! One contract suite for every KeyProvider.

use warden_policy::keys::{KeyProvider, LocalKeyFile};
use warden_policy::kms::{AwsKms, KmsSettings};
use warden_policy::Error;

/// The KMS endpoint for tests; fails loudly, naming the script that provides it.
fn aws_endpoint() -> String {
    std::env::var("WARDEN_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "WARDEN_TEST_AWS_ENDPOINT is not set: run the tests with scripts/test.sh, or first \
             eval \"$(scripts/dev-services.sh)\""
        )
    })
}

async fn kms() -> AwsKms {
    let settings = KmsSettings {
        key_id: String::new(),
        region: Some("us-east-1".to_owned()),
        endpoint: Some(aws_endpoint()),
        static_credentials: Some(("test".to_owned(), "test".to_owned())),
    };
    let client = AwsKms::connect(&settings).await;
    let key = client.create_key("warden test kek").await.unwrap();
    client.with_key(key)
}

async fn contract(provider: &dyn KeyProvider, other: &dyn KeyProvider) {
    assert!(!provider.key_id().is_empty());
    assert!(
        matches!(provider.wrap(b"", b"ctx").await, Err(Error::Wrap)),
        "secrets are never empty"
    );
    for secret in [&b"x"[..], &[7u8; 32], &[0u8; 200]] {
        let w = provider.wrap(secret, b"warden:test:ctx").await.unwrap();
        assert!(
            !w.windows(secret.len().max(1))
                .any(|win| secret.len() >= 8 && win == secret),
            "plaintext visible"
        );
        assert_eq!(
            provider
                .unwrap(&w, b"warden:test:ctx")
                .await
                .unwrap()
                .expose(),
            secret
        );
        assert!(
            matches!(
                provider.unwrap(&w, b"warden:test:other").await,
                Err(Error::Unwrap)
            ),
            "context is bound"
        );
        let mut tampered = w.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x55;
        assert!(
            provider
                .unwrap(&tampered, b"warden:test:ctx")
                .await
                .is_err(),
            "tampering detected"
        );
        assert!(
            other.unwrap(&w, b"warden:test:ctx").await.is_err(),
            "another key cannot unwrap"
        );
    }
    assert!(matches!(
        provider.unwrap(&[], b"ctx").await,
        Err(Error::Unwrap)
    ));
    assert!(matches!(
        provider.unwrap(&[9, 9, 9], b"ctx").await,
        Err(Error::Unwrap)
    ));
}

#[tokio::test]
async fn local_key_file() {
    let a = LocalKeyFile::from_key(&[1u8; 32]);
    let b = LocalKeyFile::from_key(&[2u8; 32]);
    contract(&a, &b).await;
    // Each provider refuses the other's format outright.
    let wrapped = a.wrap(b"secret", b"ctx").await.unwrap();
    assert!(matches!(
        kms().await.unwrap(&wrapped, b"ctx").await,
        Err(Error::Unwrap)
    ));
}

#[tokio::test]
async fn aws_kms() {
    let a = kms().await;
    let b = a.with_key(a.create_key("another kek").await.unwrap());
    contract(&a, &b).await;
}

#[tokio::test]
async fn aws_kms_unreachable_is_a_kms_error() {
    let settings = KmsSettings {
        key_id: "alias/none".to_owned(),
        region: Some("us-east-1".to_owned()),
        endpoint: Some("http://127.0.0.1:9".to_owned()),
        static_credentials: Some(("test".to_owned(), "test".to_owned())),
    };
    let k = AwsKms::connect(&settings).await;
    let err = k.wrap(b"x", b"ctx").await.unwrap_err();
    assert!(matches!(err, Error::Kms(_)), "{err}");
}
