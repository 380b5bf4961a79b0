//! The protection engine on a real vault: every class, rejections, purposes, AAD binding,
//! crypto-shredding, and no clear value anywhere in what comes out.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use warden_policy::contract::Contract;
use warden_policy::keyring::{CachePolicy, SCOPE_SUBJECT};
use warden_policy::keys::LocalKeyFile;
use warden_policy::pan::{is_token, Tokenizer};
use warden_policy::protect::Protector;
use warden_policy::Error;

use crate::{fixture, Kind};

warden_audit::on_both_backends!(crate::Kind;
    every_class_is_protected,
    bindings_purposes_and_shredding,
    reading_masks_by_rights,
    enrichment_sees_the_address_before_truncation,
    sensitive_values_in_unclassified_text,
    a_subject_cannot_be_invented,
);

const PAYMENTS: &str = include_str!("../../../config/datasets/payments.toml");

fn record(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn setup(f: &crate::Fixture) -> (Protector, Arc<warden_policy::keyring::KeyRing>) {
    let ring = f.keyring(
        Arc::new(LocalKeyFile::from_key(&[8u8; 32])),
        CachePolicy::default(),
    );
    let tokenizer = Tokenizer::new(ring.clone(), f.vault.clone(), f.clock.clone());
    (Protector::new(ring.clone(), tokenizer), ring)
}

fn batch() -> Vec<Map<String, Value>> {
    vec![
        record(
            json!({"transaction_id": "t-1", "user_id": "alice@example.com", "card_number": "4111 1111 1111 1111",
            "email": "alice@example.com", "ip": "203.0.113.77", "amount": 12.5, "country": "FR",
            "created_at": "2026-11-24T10:00:00Z"}),
        ),
        record(
            json!({"transaction_id": "t-2", "user_id": "bob-42", "card_number": "5500000000000004", "cvv": "123",
            "amount": 3, "created_at": 1_790_000_000}),
        ),
        record(
            json!({"transaction_id": "t-3", "user_id": "bob-42", "card_number": "4111111111111112",
            "amount": 3, "created_at": 1_790_000_000}),
        ),
        record(
            json!({"transaction_id": "t-4", "user_id": "carol", "amount": "lots", "created_at": 1_790_000_000}),
        ),
        record(
            json!({"transaction_id": "t-5", "user_id": "carol", "amount": 1, "created_at": 1_790_000_000, "favourite_colour": "red"}),
        ),
        record(
            json!({"transaction_id": "t-6", "user_id": "alice@example.com", "email": "alice@example.com",
            "ip": "2001:db8:abcd:12::1", "amount": 7, "created_at": "2026-11-24T11:00:00Z"}),
        ),
    ]
}

async fn every_class_is_protected(kind: Kind) {
    let f = fixture(kind).await;
    let (p, _) = setup(&f);
    let contract = Contract::from_toml(PAYMENTS).unwrap();
    let out = p
        .protect(&contract, "payment_processing", &batch())
        .await
        .unwrap();

    let rejected: Vec<(usize, Option<&str>)> = out
        .rejections
        .iter()
        .map(|r| (r.index, r.field.as_deref()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, Some("cvv")),
            (2, Some("card_number")),
            (3, Some("amount")),
            (4, None)
        ]
    );
    let accepted: Vec<usize> = out.records.iter().map(|(i, _)| *i).collect();
    assert_eq!(accepted, vec![0, 5]);
    let (_, a) = &out.records[0];
    let (_, a2) = &out.records[1];
    assert_eq!(a.contract_version, 1);
    assert!(a.subject_ref.starts_with("sr_") && a.subject_ref.len() == 35);
    assert_eq!(a.subject_ref, a2.subject_ref, "one subject, one pseudonym");
    assert_eq!(a.fields["user_id"], a.subject_ref.as_str());
    let token = a.fields["card_number"].as_str().unwrap();
    assert!(is_token(token) && token.ends_with("1111"));
    assert_eq!(a.fields["ip"], "203.0.113.0");
    assert_eq!(a2.fields["ip"], "2001:db8:abcd::");
    assert_eq!(a.fields["amount"], 12.5);
    assert_eq!(a.fields["country"], "FR");
    let email = a.fields["email"].as_str().unwrap();
    assert!(email.starts_with("enc:v1:"));
    assert_ne!(
        email,
        a2.fields["email"].as_str().unwrap(),
        "fresh nonce per encryption"
    );
    assert_eq!(
        a.fields["email__bidx"], a2.fields["email__bidx"],
        "equal values, equal blind index"
    );
    assert_eq!(
        a.fields["email__bidx"],
        p.blind_index("payments", "email", "alice@example.com")
            .await
            .unwrap()
            .as_str()
    );
    assert_eq!(
        p.reveal("payments", "email", &a.subject_ref, email)
            .await
            .unwrap(),
        "alice@example.com"
    );

    // The same person in another dataset has the same pseudonym.
    let refs = p
        .subject_refs(&["alice@example.com", "bob-42"])
        .await
        .unwrap();
    assert_eq!(refs[0], a.subject_ref);
    assert_ne!(refs[0], refs[1]);

    // Canary: nothing clear comes out — not in the records, not in the rejections.
    let all = serde_json::to_string(&(&out.records, &out.rejections)).unwrap();
    for clear in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5500000000000004",
        "4111111111111112",
        "alice@example.com",
        "bob-42",
        "203.0.113.77",
        "2001:db8:abcd:12::1",
        "\"123\"",
        "lots",
        "red",
    ] {
        assert!(!all.contains(clear), "{clear} leaked: {all}");
    }
}

async fn bindings_purposes_and_shredding(kind: Kind) {
    let f = fixture(kind).await;
    let (p, ring) = setup(&f);
    let contract = Contract::from_toml(PAYMENTS).unwrap();
    assert!(matches!(
        p.protect(&contract, "marketing", &batch()).await,
        Err(Error::PurposeNotAllowed)
    ));

    let out = p
        .protect(&contract, "fraud_detection", &batch())
        .await
        .unwrap();
    let (_, a) = &out.records[0];
    let email = a.fields["email"].as_str().unwrap();
    let other = p.subject_refs(&["bob-42"]).await.unwrap().remove(0);
    // Bound to subject, field and dataset: moved anywhere else, it does not decrypt.
    p.protect(
        &contract,
        "fraud_detection",
        &[record(json!({"transaction_id": "t-9", "user_id": "bob-42",
        "email": "bob@example.com", "amount": 1, "created_at": 1}))],
    )
    .await
    .unwrap();
    assert!(matches!(
        p.reveal("payments", "email", &other, email).await,
        Err(Error::Unwrap)
    ));
    assert!(matches!(
        p.reveal("payments", "country", &a.subject_ref, email).await,
        Err(Error::Unwrap)
    ));
    assert!(matches!(
        p.reveal("refunds", "email", &a.subject_ref, email).await,
        Err(Error::Unwrap)
    ));

    // Strip instead of reject.
    let stripping =
        Contract::from_toml(&PAYMENTS.replace("sad = \"reject\"", "sad = \"strip\"")).unwrap();
    let out = p
        .protect(&stripping, "fraud_detection", &batch()[1..2])
        .await
        .unwrap();
    assert_eq!(out.stripped, vec![(0, "cvv".to_owned())]);
    assert!(!out.records[0].1.fields.contains_key("cvv"));

    // Crypto-shredding: the subject's data no longer decrypts, and no new personal data is taken.
    assert!(ring.destroy(SCOPE_SUBJECT, &a.subject_ref).await.unwrap());
    assert!(matches!(
        p.reveal("payments", "email", &a.subject_ref, email).await,
        Err(Error::KeyDestroyed { .. })
    ));
    let again = p
        .protect(&contract, "fraud_detection", &batch()[..1])
        .await
        .unwrap();
    assert!(again.records.is_empty());
    assert_eq!(again.rejections[0].field.as_deref(), Some("user_id"));
    assert!(again.rejections[0].reason.contains("erased"));
}

async fn reading_masks_by_rights(kind: Kind) {
    use warden_policy::protect::{ViewRights, MASKED};
    let f = fixture(kind).await;
    let (p, ring) = setup(&f);
    let contract = Contract::from_toml(PAYMENTS).unwrap();
    let out = p
        .protect(&contract, "fraud_detection", &batch())
        .await
        .unwrap();
    let records: Vec<_> = out.records.into_iter().map(|(_, r)| r).collect();

    let nobody = p
        .view(&contract, ViewRights::default(), &records)
        .await
        .unwrap();
    assert_eq!(nobody[0]["card_number"], "****1111");
    assert_eq!(nobody[0]["email"], MASKED);
    assert!(
        !nobody[0].contains_key("email__bidx"),
        "blind indexes are not for readers"
    );
    assert_eq!(nobody[0]["ip"], "203.0.113.0");
    assert_eq!(nobody[0]["user_id"], records[0].subject_ref.as_str());
    // A field the contract in force does not list (dropped by a later version) is not shown.
    let mut legacy = records[0].clone();
    legacy.fields.insert(
        "old_card".into(),
        serde_json::json!("tok_legacy_unmasked_9999"),
    );
    let shown = p
        .view(&contract, ViewRights::default(), &[legacy])
        .await
        .unwrap();
    assert!(!shown[0].contains_key("old_card"));

    let privileged = p
        .view(
            &contract,
            ViewRights {
                pii_read: true,
                pan_bin: true,
            },
            &records,
        )
        .await
        .unwrap();
    // PCI DSS 3.4.1: at most the BIN and the last four.
    assert_eq!(privileged[0]["card_number"], "411111******1111");
    assert_eq!(privileged[0]["email"], "alice@example.com");

    // An erased subject's personal data reads as nothing.
    ring.destroy(SCOPE_SUBJECT, &records[0].subject_ref)
        .await
        .unwrap();
    let after = p
        .view(
            &contract,
            ViewRights {
                pii_read: true,
                pan_bin: false,
            },
            &records,
        )
        .await
        .unwrap();
    assert_eq!(after[0]["email"], Value::Null);
    assert_eq!(after[0]["card_number"], "****1111");
}

#[derive(Debug, Default)]
struct Geo {
    seen: std::sync::Mutex<Vec<String>>,
}

impl warden_policy::protect::NetworkEnricher for Geo {
    fn enrich(&self, dataset: &str, field: &str, ip: std::net::IpAddr) -> Map<String, Value> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("{dataset}.{field}={ip}"));
        record(json!({"country": "FR", "not_in_contract": "x", "amount": 999}))
    }
}

async fn enrichment_sees_the_address_before_truncation(kind: Kind) {
    let f = fixture(kind).await;
    let (p, _) = setup(&f);
    let geo = Arc::new(Geo::default());
    let p = p.with_enricher(geo.clone());
    let contract = Contract::from_toml(PAYMENTS).unwrap();
    let out = p
        .protect(&contract, "fraud_detection", &batch()[5..6])
        .await
        .unwrap();
    let fields = &out.records[0].1.fields;
    assert_eq!(
        geo.seen.lock().unwrap().as_slice(),
        ["payments.ip=2001:db8:abcd:12::1"],
        "the full address, before truncation"
    );
    assert_eq!(fields["ip"], "2001:db8:abcd::");
    assert_eq!(
        fields["country"], "FR",
        "a public field of the contract is added"
    );
    assert!(!fields.contains_key("not_in_contract"));
    assert_eq!(fields["amount"], 7, "the record's own values win");
    // A public field the record gives as null stays absent: enrichment does not fill it.
    let mut nulled = batch()[5].clone();
    nulled.insert("country".into(), Value::Null);
    let out = p
        .protect_owned(&contract, "fraud_detection", vec![nulled])
        .await
        .unwrap();
    let fields = &out.records[0].1.fields;
    assert!(!fields.contains_key("country"), "{fields:?}");
    assert_eq!(fields["ip"], "2001:db8:abcd::");
}

/// A card number or an e-mail address in a `public` text field: refused by default with a
/// stable code, tokenized or kept as the contract's `[detectors]` say, counted either way —
/// and never echoed in a rejection.
async fn sensitive_values_in_unclassified_text(kind: Kind) {
    let f = fixture(kind).await;
    let (p, _) = setup(&f);
    let texts = [
        "paid with 4111 1111 1111 1111 yesterday",
        "card 5500-0000-0000-0004",
        "write to ann.b+x@mail.example.co.uk please",
        "FR",
        "ref 123 4111111111111111 and carol@example.org",
    ];
    let records: Vec<Map<String, Value>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            record(
                json!({"transaction_id": format!("t-{i}"), "user_id": "dana", "amount": 1,
                "country": t, "created_at": 1_790_000_000}),
            )
        })
        .collect();
    let with = |card: &str, email: &str| {
        let shipped = "[detectors]\ncard_number = \"refuse\"\nemail = \"refuse\"\n";
        assert!(PAYMENTS.contains(shipped));
        Contract::from_toml(&PAYMENTS.replace(
            shipped,
            &format!("[detectors]\ncard_number = \"{card}\"\nemail = \"{email}\"\n"),
        ))
        .unwrap()
    };

    // The shipped contract: both detectors refuse.
    let out = p
        .protect(
            &Contract::from_toml(PAYMENTS).unwrap(),
            "fraud_detection",
            &records,
        )
        .await
        .unwrap();
    let refused: Vec<(usize, Option<&str>)> =
        out.rejections.iter().map(|r| (r.index, r.code)).collect();
    assert_eq!(
        refused,
        vec![
            (0, Some("card_number_in_unclassified_field")),
            (1, Some("card_number_in_unclassified_field")),
            (2, Some("email_in_unclassified_field")),
            (4, Some("card_number_in_unclassified_field")),
        ]
    );
    assert_eq!(out.records.len(), 1);
    let said = serde_json::to_string(&out.rejections).unwrap();
    for secret in ["4111", "5500", "ann.b", "carol@"] {
        assert!(!said.contains(secret), "{said}");
    }
    assert_eq!(out.detections.get(&("card_number", "refuse")), Some(&3));
    assert_eq!(out.detections.get(&("email", "refuse")), Some(&2));

    // Tokenized: the text keeps its words, the card becomes a vault token, the address a
    // pseudonym, the same one for the same address.
    let out = p
        .protect(&with("tokenize", "tokenize"), "fraud_detection", &records)
        .await
        .unwrap();
    assert!(out.rejections.is_empty(), "{:?}", out.rejections);
    let country = |i: usize| {
        out.records[i].1.fields["country"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = country(0);
    let token = first
        .strip_prefix("paid with ")
        .and_then(|t| t.strip_suffix(" yesterday"))
        .unwrap();
    assert!(is_token(token) && token.ends_with("1111"), "{first}");
    let mail = country(2);
    let pseudonym = mail
        .strip_prefix("write to ")
        .and_then(|t| t.strip_suffix(" please"))
        .unwrap();
    assert!(
        pseudonym.starts_with("em_") && pseudonym.len() == 35,
        "{mail}"
    );
    assert_eq!(country(3), "FR");
    let last = country(4);
    assert!(
        last.starts_with("ref 123 tok_") && last.contains(" and em_"),
        "{last}"
    );
    let again = p
        .protect(
            &with("tokenize", "tokenize"),
            "fraud_detection",
            &records[2..3],
        )
        .await
        .unwrap();
    assert_eq!(again.records[0].1.fields["country"], mail.as_str());
    for i in 0..5 {
        let text = country(i);
        for clear in ["4111", "5500", "ann.b", "carol"] {
            assert!(!text.contains(clear), "{text}");
        }
    }
    assert_eq!(out.detections.get(&("card_number", "tokenize")), Some(&3));

    // An address allowed but hiding a card number in its local part: the card's refusal wins.
    let hidden = [record(
        json!({"transaction_id": "t-9", "user_id": "dana", "amount": 1,
        "country": "4111-1111-1111-1111@example.io", "created_at": 1_790_000_000}),
    )];
    let out = p
        .protect(&with("refuse", "allow"), "fraud_detection", &hidden)
        .await
        .unwrap();
    assert_eq!(
        out.rejections.iter().map(|r| r.code).collect::<Vec<_>>(),
        [Some("card_number_in_unclassified_field")]
    );

    // Allowed: kept as sent, counted.
    let out = p
        .protect(&with("allow", "allow"), "fraud_detection", &records)
        .await
        .unwrap();
    assert!(out.rejections.is_empty());
    assert_eq!(out.records[0].1.fields["country"], texts[0]);
    assert_eq!(out.detections.get(&("email", "allow")), Some(&2));
}

/// A record's subject is its clear identifier (pseudonymized here) or a pseudonym Warden
/// issued — one it computed before, in any dataset, even one without personal fields to
/// encrypt — never a well-formed `sr_…` a client made up.
async fn a_subject_cannot_be_invented(kind: Kind) {
    let f = fixture(kind).await;
    let (p, _) = setup(&f);
    // A dataset without pii.direct fields: its subjects still get a key when first seen.
    let lean = Contract::from_toml(
        &PAYMENTS
            .replace(
                "[fields.email]\nclass = \"pii.direct\"\ntype = \"string\"\n",
                "",
            )
            .replace(
                "[fields.card_number]\nclass = \"pci.pan\"\ntype = \"string\"\n",
                "",
            ),
    )
    .unwrap();
    assert!(lean
        .fields
        .values()
        .all(|s| s.class != warden_policy::contract::DataClass::PiiDirect));
    let tx = |id: &str, user: &str| {
        record(
            json!({"transaction_id": id, "user_id": user, "amount": 1, "created_at": 1_790_000_000}),
        )
    };
    let first = p
        .protect(&lean, "fraud_detection", &[tx("t-1", "erin")])
        .await
        .unwrap();
    let issued = first.records[0].1.subject_ref.clone();
    let invented = format!("sr_{}", "ab".repeat(16));
    assert!(warden_policy::protect::is_subject_ref(&invented) && invented != issued);

    let out = p
        .protect(
            &Contract::from_toml(PAYMENTS).unwrap(),
            "fraud_detection",
            &[tx("t-2", &issued), tx("t-3", &invented), tx("t-4", "frank")],
        )
        .await
        .unwrap();
    let accepted: Vec<(usize, &str)> = out
        .records
        .iter()
        .map(|(i, r)| (*i, r.subject_ref.as_str()))
        .collect();
    assert_eq!(accepted.len(), 2, "{:?}", out.rejections);
    assert_eq!(
        accepted[0],
        (0, issued.as_str()),
        "an issued pseudonym is kept"
    );
    assert_eq!(out.rejections.len(), 1);
    let r = &out.rejections[0];
    assert_eq!(
        (r.index, r.field.as_deref(), r.code),
        (1, Some("user_id"), Some("unknown_subject_ref"))
    );
    assert!(!r.reason.contains(&invented));
    // The invented subject left nothing behind: no key was made for it.
    let keys = f.keyring(
        Arc::new(LocalKeyFile::from_key(&[8u8; 32])),
        CachePolicy::default(),
    );
    let batch = keys
        .data_keys(SCOPE_SUBJECT, &[invented.clone(), issued.clone()], false)
        .await
        .unwrap();
    assert!(!batch.keys.contains_key(&invented));
    assert!(batch.keys.contains_key(&issued));
}
