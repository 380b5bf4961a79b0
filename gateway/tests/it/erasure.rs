//! Data subjects' rights through the real pipeline: several subjects loaded over HTTP into
//! the stream, the document store and the lake; one erased by its own request; every store
//! then holds nothing of it (time travel included), everybody else's rows are untouched, the
//! stream's retained records no longer decrypt, the receipt verifies and the audit log still
//! does, without the subject's identifier. Access exports, legal holds, deadlines, metrics.
//! On the embedded plane (SQLite, PostgreSQL) and on Kafka + MongoDB + S3.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use warden_gateway::erasure::{self, receipt};
use warden_pipeline::docs::Document;
use warden_pipeline::loader::collection_spec;
use warden_pipeline::StreamedRecord;
use warden_sdk::PrincipalKind;

use crate::records::{ingest, lake_loaded, loaded, plane};
use crate::support::{assert_error, Backend, Gateway};

mod embedded {
    use super::*;
    warden_audit::on_both_backends!(crate::support::Backend; erasure_across_every_store);
    async fn erasure_across_every_store(backend: Backend) {
        super::erasure_across_every_store(plane(backend, false).await).await;
    }
}

mod kafka_mongo_s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn erasure_across_every_store() {
        super::erasure_across_every_store(super::plane(super::Backend::Sqlite, true).await).await;
    }
}

const ERASED: &str = "subject-erased";
const KEPT: [&str; 2] = ["subject-kept-a", "subject-kept-b"];
/// The erased subject's own card, and one it shares with the first kept subject.
const OWN_CARD: &str = "5500000000000004";
const SHARED_CARD: &str = "4111111111111111";
const OTHER_CARD: &str = "4000056655665556";

fn record(i: usize, user: &str, card: &str) -> Value {
    json!({"transaction_id": format!("x-{i:03}"), "user_id": user, "card_number": card,
           "email": format!("{user}@example.com"), "ip": "198.51.100.23", "amount": i,
           "country": "DE", "created_at": format!("2026-11-24T10:{:02}:00Z", i % 60)})
}

fn records() -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..12 {
        out.push(record(
            i,
            ERASED,
            if i % 2 == 0 { OWN_CARD } else { SHARED_CARD },
        ));
        out.push(record(100 + i, KEPT[0], SHARED_CARD));
        out.push(record(200 + i, KEPT[1], OTHER_CARD));
    }
    out
}

async fn sref(g: &Gateway, id: &str) -> String {
    g.state.protector.subject_refs(&[id]).await.unwrap()[0].clone()
}

/// Rows of a subject in the lake and the document store.
async fn held(g: &Gateway, subject_ref: &str) -> (u64, u64) {
    let contract = g.state.datasets.get("payments").unwrap();
    (
        g.state
            .lake
            .count_subject(&contract, subject_ref)
            .await
            .unwrap(),
        g.state
            .documents
            .count(&collection_spec(&contract), Some(subject_ref))
            .await
            .unwrap(),
    )
}

/// The card tokens in a subject's payments (from the document store).
async fn card_tokens(g: &Gateway, subject_ref: &str) -> BTreeSet<String> {
    let contract = g.state.datasets.get("payments").unwrap();
    let q = warden_pipeline::docs::Query {
        subject_ref: Some(subject_ref.to_owned()),
        limit: 1000,
        ..warden_pipeline::docs::Query::default()
    };
    g.state
        .documents
        .find(&collection_spec(&contract), &q)
        .await
        .unwrap()
        .iter()
        .filter_map(|d| d.fields["card_number"].as_str().map(str::to_owned))
        .collect()
}

/// Every object of a dataset's lake table — the data files of every bucket and the whole
/// log — read as stored (on disk or S3): the names of those holding any of `needles`, and
/// how many objects there are.
async fn lake_objects_holding(
    g: &Gateway,
    dataset: &str,
    needles: &[String],
) -> (Vec<String>, usize) {
    use deltalake::logstore::object_store::ObjectStoreExt as _;
    use futures::TryStreamExt as _;
    let contract = g.state.datasets.get(dataset).unwrap();
    let url = g.state.lake.table_url(&contract).unwrap();
    let options = g
        .state
        .config
        .lake
        .storage_options
        .clone()
        .into_iter()
        .collect();
    let table = deltalake::DeltaTableBuilder::from_url(url)
        .unwrap()
        .with_storage_options(options)
        .build()
        .unwrap();
    let store = table.object_store();
    let objects: Vec<deltalake::ObjectMeta> = store.list(None).try_collect().await.unwrap();
    let mut holding = Vec::new();
    for meta in &objects {
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        if needles.iter().any(|n| contains(&bytes, n.as_bytes())) {
            holding.push(meta.location.to_string());
        }
    }
    (holding, objects.len())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files of the state database holding any of `needles`: SQLite's database and
/// write-ahead log; on PostgreSQL (running on this host, as `scripts/dev-services.sh` starts
/// it), the files of the `principals` table and of its indexes.
async fn state_files_holding(g: &Gateway, needles: &[&str]) -> Vec<String> {
    let files: Vec<std::path::PathBuf> = match g.state_url.strip_prefix("sqlite://") {
        Some(path) => vec![path.into(), format!("{path}-wal").into()],
        None => {
            use sqlx::Row as _;
            let pool = sqlx::PgPool::connect(&g.state_url).await.unwrap();
            // Pages reach the files at a checkpoint; until then they are in shared memory.
            sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
            let dir: String = sqlx::query("SELECT current_setting('data_directory')")
                .fetch_one(&pool)
                .await
                .unwrap()
                .get(0);
            let rels = sqlx::query(
                "SELECT pg_relation_filepath('principals'::regclass) UNION ALL \
                 SELECT pg_relation_filepath(indexrelid) FROM pg_index \
                 WHERE indrelid = 'principals'::regclass",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let files: Vec<std::path::PathBuf> = rels
                .iter()
                .map(|r| std::path::Path::new(&dir).join(r.get::<String, _>(0)))
                .collect();
            for f in &files {
                assert!(
                    f.exists(),
                    "{} is not readable here: the PostgreSQL of the tests must run on this host",
                    f.display()
                );
            }
            files
        }
    };
    files
        .into_iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap_or_default();
            needles.iter().any(|n| contains(&bytes, n.as_bytes()))
        })
        .map(|f| f.display().to_string())
        .collect()
}

/// Every message of the payments topic, from its beginning.
async fn topic_messages(g: &Gateway) -> Vec<warden_pipeline::stream::Message> {
    let contract = g.state.datasets.get("payments").unwrap();
    let topic = g.state.topic(&contract);
    let group = format!("inspect-{}", uuid::Uuid::new_v4().simple());
    let mut sub = g.state.stream.subscribe(&topic, &group).await.unwrap();
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let batch = sub.poll(1000, Duration::from_secs(2)).await.unwrap();
        if batch.is_empty() {
            empty += 1;
        } else {
            empty = 0;
            out.extend(batch);
        }
    }
    out
}

async fn erasure_across_every_store(g: Gateway) {
    g.state.start_loaders();
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let r = ingest(&g, &stage, "", &Value::Array(records())).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.json["accepted"], 36);
    loaded(&g, 36).await;
    lake_loaded(&g, 36).await;
    let contract = g.state.datasets.get("payments").unwrap();
    let erased = sref(&g, ERASED).await;
    let kept = [sref(&g, KEPT[0]).await, sref(&g, KEPT[1]).await];
    assert_eq!(held(&g, &erased).await, (12, 12));
    for k in &kept {
        assert_eq!(held(&g, k).await, (12, 12));
    }
    let tokens = card_tokens(&g, &erased).await;
    assert_eq!(tokens.len(), 2, "its own card and the shared one");
    let kept_tokens = card_tokens(&g, &kept[0]).await;
    let shared: Vec<String> = tokens.intersection(&kept_tokens).cloned().collect();
    let own: Vec<String> = tokens.difference(&kept_tokens).cloned().collect();
    assert_eq!((shared.len(), own.len()), (1, 1));
    let version_before = g.state.lake.version(&contract).await.unwrap().unwrap();
    let (holding, _) = lake_objects_holding(&g, "payments", &["x-000".to_owned()]).await;
    assert!(!holding.is_empty(), "the lake holds the record keys before");

    // The subject's access export: its own records from both stores, decrypted for it.
    let (subject_id, _) = g
        .named_principal_token(PrincipalKind::Subject, ERASED, &["subject"], false)
        .await;
    // A password of its own (which ends the sessions before it: a token of the new epoch).
    let former_hash = "$argon2id$v=19$m=19456,t=2,p=1$ZXJhc2VkLXNhbHQ$ZXJhc2VkLWhhc2g".to_owned();
    g.state
        .store
        .set_secret_hash(&subject_id, &former_hash)
        .await
        .unwrap();
    assert!(
        !state_files_holding(&g, &[ERASED, &former_hash])
            .await
            .is_empty(),
        "the scan finds the account before the erasure"
    );
    let subject = g
        .state
        .tokens
        .issue(
            &subject_id,
            PrincipalKind::Subject,
            &["subject".to_owned()],
            &["pwd"],
            None,
            1,
        )
        .unwrap();
    let r = g.get("/v1/subjects/me/export", &subject).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["subject_ref"], json!(erased));
    let docs = r.json["datasets"]["payments"]["documents"]
        .as_array()
        .unwrap();
    let lake = r.json["datasets"]["payments"]["lake"].as_array().unwrap();
    assert_eq!((docs.len(), lake.len()), (12, 12));
    for rec in docs.iter().chain(lake) {
        assert_eq!(rec["email"], format!("{ERASED}@example.com"), "{rec}");
        assert!(rec["card_number"].as_str().unwrap().starts_with("****"));
    }
    let body = String::from_utf8_lossy(&r.bytes);
    assert!(KEPT.iter().all(|k| !body.contains(k)), "only its own rows");
    assert!(!body.contains(OWN_CARD) && !body.contains("enc:v1:"));
    let r = g
        .get(
            "/v1/subjects/me/export?format=csv&dataset=payments",
            &subject,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    let csv = String::from_utf8(r.bytes.clone()).unwrap();
    assert_eq!(csv.lines().count(), 13, "a header and 12 rows:\n{csv}");
    assert!(csv.contains(&format!("{ERASED}@example.com")));

    // Who may ask: the subject for itself only; the DPO with a fresh second factor.
    let r = g
        .post(
            &format!("/v1/subjects/{}/erasure", KEPT[0]),
            Some(&subject),
            json!({}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let (_, dpo_stale) = g
        .principal_token(PrincipalKind::User, &["dpo"], false)
        .await;
    let r = g
        .post(
            &format!("/v1/subjects/{ERASED}/erasure"),
            Some(&dpo_stale),
            json!({}),
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "mfa_required");
    let (_, analyst) = g
        .principal_token(PrincipalKind::User, &["analyst"], true)
        .await;
    let r = g
        .post(
            &format!("/v1/subjects/{ERASED}/erasure"),
            Some(&analyst),
            json!({}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");

    // The request, idempotent.
    let ask = |key: Option<&'static str>| {
        let mut req = axum::http::Request::builder()
            .method(Method::POST)
            .uri("/v1/subjects/me/erasure")
            .header("authorization", format!("Bearer {subject}"));
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.body(axum::body::Body::empty()).unwrap()
    };
    let r = g.send(ask(Some("first"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let job = r.json["job"].as_str().unwrap().to_owned();
    assert_eq!(r.json["state"], "pending");
    assert_eq!(r.json["subject_ref"], json!(erased));
    let r = g.send(ask(Some("first"))).await;
    assert_eq!(
        (r.status, r.json["job"].as_str()),
        (StatusCode::OK, Some(job.as_str()))
    );
    let r = g.send(ask(None)).await;
    assert_eq!(
        (r.status, r.json["job"].as_str()),
        (StatusCode::OK, Some(job.as_str()))
    );

    // Five steps: the key is destroyed, the lake, document store and stream erased...
    let ran = erasure::run_due(&g.state, "test-worker", 5).await.unwrap();
    assert_eq!(ran, 5);
    assert_eq!(held(&g, &erased).await, (0, 0));
    let r = g.get(&format!("/v1/erasure/{job}"), &subject).await;
    assert_eq!(r.json["step"], "vault", "{r:?}");
    // ...from here the edge refuses the subject's records (the rule: reject)...
    let r = ingest(
        &g,
        &stage,
        "",
        &json!([
            record(50, ERASED, OWN_CARD),
            record(150, KEPT[0], SHARED_CARD)
        ]),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(
        (
            r.json["accepted"].as_u64(),
            r.json["rejections"][0]["index"].as_u64()
        ),
        (Some(1), Some(0)),
        "{r:?}"
    );
    assert!(r.json["rejections"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("erased"));
    // ...and a record accepted before the request but loaded only now (in flight) is found
    // by the verification scan, which erases again.
    g.state
        .documents
        .upsert(
            &collection_spec(&contract),
            &[Document {
                key: "in-flight".into(),
                subject_ref: erased.clone(),
                ts: 1_800_000_000_000_000,
                contract_version: 1,
                fields: json!({"transaction_id": "in-flight", "user_id": erased, "amount": 1})
                    .as_object()
                    .unwrap()
                    .clone(),
            }],
        )
        .await
        .unwrap();
    erasure::run_due(&g.state, "test-worker", usize::MAX)
        .await
        .unwrap();
    loaded(&g, 25).await;
    lake_loaded(&g, 37).await;
    let r = g.get(&format!("/v1/erasure/{job}"), &subject).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["state"], "completed", "{r:?}");
    assert_eq!(
        r.json["pass"], 2,
        "the verification scan sent it round again"
    );
    // The running gateway's state database holds no byte of the erased account's name nor
    // of its password hash: not in its rows, its free pages nor its write-ahead log.
    assert_eq!(
        state_files_holding(&g, &[ERASED, &former_hash]).await,
        Vec::<String>::new()
    );
    // No byte of any lake file, data or log, holds the subject's pseudonym or one of its
    // record keys (not in column statistics, not in the delete's predicate).
    let mut needles = vec![erased.clone()];
    needles.extend((0..12).map(|i| format!("x-{i:03}")));
    let (holding, objects) = lake_objects_holding(&g, "payments", &needles).await;
    assert_eq!(holding, Vec::<String>::new(), "of {objects} lake objects");
    let (holding, _) = lake_objects_holding(&g, "payments", &[kept[0].clone()]).await;
    assert!(!holding.is_empty(), "the scan finds what is there");
    let receipt_json = r.json["receipt"].clone();

    // Nothing of the subject anywhere; everybody else untouched.
    assert_eq!(held(&g, &erased).await, (0, 0));
    assert_eq!(held(&g, &kept[0]).await, (13, 13));
    assert_eq!(held(&g, &kept[1]).await, (12, 12));
    // Time travel to before the delete: its files are vacuumed.
    let old = g
        .state
        .lake
        .count_subject_at(&contract, &erased, version_before)
        .await;
    assert!(
        old.as_ref().is_err() || old.as_ref().is_ok_and(|n| *n == 0),
        "version {version_before} still holds the subject: {old:?}"
    );
    // The vault: its own card's token is gone, the shared card's stays for the other subject.
    assert_eq!(g.state.tokenizer.held("payments", &own).await.unwrap(), 0);
    assert_eq!(
        g.state.tokenizer.held("payments", &shared).await.unwrap(),
        1
    );
    assert_eq!(
        g.state
            .tokenizer
            .detokenize("payments", &shared)
            .await
            .unwrap(),
        vec![Some(SHARED_CARD.to_owned())]
    );
    // The stream: what it retains of the subject no longer decrypts.
    let messages = topic_messages(&g).await;
    let mut retained = 0;
    let mut kept_seen = 0;
    for m in &messages {
        let Some(rec) = StreamedRecord::from_message(m).unwrap() else {
            continue;
        };
        let email = rec.fields["email"].as_str().unwrap();
        let revealed = g
            .state
            .protector
            .reveal("payments", "email", &rec.subject_ref, email)
            .await;
        if rec.subject_ref == erased {
            retained += 1;
            assert!(
                matches!(revealed, Err(warden_policy::Error::KeyDestroyed { .. })),
                "{revealed:?}"
            );
        } else {
            kept_seen += 1;
            assert!(revealed.unwrap().ends_with("@example.com"));
        }
    }
    assert_eq!(kept_seen, 25, "the other subjects' records are all there");
    assert!(messages
        .iter()
        .all(|m| m.key != erased || m.value.is_none() || g.state.stream.kind() == "kafka"));
    if g.state.stream.kind() == "embedded" {
        assert_eq!(retained, 0, "the embedded log erased them in place");
    }

    // A record accepted before the erasure but still in the stream after it (a lagging
    // loader) is dropped by the loaders, not stored.
    let topic = g.state.topic(&contract);
    let late = |key: &str, subject_ref: &str| {
        StreamedRecord {
            dataset: "payments".into(),
            subject_ref: subject_ref.to_owned(),
            contract_version: 1,
            fields: json!({"transaction_id": key, "user_id": subject_ref, "amount": 2,
                       "created_at": "2026-11-24T11:00:00Z"})
            .as_object()
            .unwrap()
            .clone(),
        }
        .to_out("late")
    };
    g.state
        .stream
        .publish(
            &topic,
            vec![late("late-erased", &erased), late("late-kept", &kept[1])],
        )
        .await
        .unwrap();
    loaded(&g, 26).await;
    lake_loaded(&g, 38).await;
    assert_eq!(held(&g, &erased).await, (0, 0));
    assert_eq!(held(&g, &kept[1]).await, (13, 13));

    // The receipt: signed, counts per store, the audit event of the completion.
    let text = receipt_json.to_string();
    let r = receipt::verify(&text, &g.state.receipt_signer.verifying_key()).unwrap();
    assert_eq!(r.subject_ref, erased);
    let p = &r.datasets["payments"];
    assert_eq!(
        (
            p.lake_rows_deleted,
            p.documents_deleted,
            p.tokens_purged,
            p.tokens_shared
        ),
        (12, 13, 1, 1)
    );
    assert_eq!(p.lake_version_before, Some(version_before));
    assert!(p.lake_version_after > Some(version_before));
    assert!(p.stream_erased >= 1);
    assert!(r.subject_key_destroyed && r.verification.subject_key_destroyed);
    // Its login account no longer carries its identifier (and still reads its own job).
    assert!(r.subject_account_renamed && r.verification.account_pseudonymous);
    assert!(g
        .state
        .store
        .principal_by_name(ERASED)
        .await
        .unwrap()
        .is_none());
    assert!(g
        .state
        .store
        .principal_by_name(&erased)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        (
            r.verification.lake_rows,
            r.verification.documents,
            r.verification.vault_tokens
        ),
        (0, 0, 0)
    );
    assert!(r.lake_files_vacuumed >= 1);
    assert!(r.lake_log_files_removed >= 1, "{r:?}");
    assert_eq!(r.version, 2);
    let scan = r.verification.lake_scan;
    assert!(
        scan.objects >= 3 && scan.bytes > 0 && scan.holding == 0,
        "{scan:?}"
    );
    match g.state.store.files().is_empty() {
        true => assert_eq!(r.verification.state_scan, None),
        false => {
            let scan = r.verification.state_scan.unwrap();
            assert!(
                scan.objects >= 1 && scan.bytes > 0 && scan.holding == 0,
                "{scan:?}"
            );
        }
    }
    let forged = text.replace("\"documents_deleted\":13", "\"documents_deleted\":12");
    assert_ne!(forged, text);
    assert!(receipt::verify(&forged, &g.state.receipt_signer.verifying_key()).is_err());
    // Asking again changes nothing and answers with the same receipt.
    let r2 = g.send(ask(Some("again"))).await;
    assert_eq!(r2.status, StatusCode::OK);
    assert_eq!(r2.json["receipt"], receipt_json);
    assert_eq!(
        erasure::run_due(&g.state, "test-worker", usize::MAX)
            .await
            .unwrap(),
        0
    );

    // The audit log: intact, the completion at the receipt's sequence number, and no clear
    // identifier of the subject anywhere.
    g.audit_settled().await;
    let admin = g.admin().await;
    let v = g.get("/v1/audit/verify", &admin).await;
    assert_eq!(v.json["ok"], true, "{v:?}");
    let events = g
        .state
        .audit_store
        .query(&warden_audit::Query {
            limit: 10_000,
            ..warden_audit::Query::default()
        })
        .await
        .unwrap();
    let completion = events.iter().find(|e| e.seq == r.audit_seq).unwrap();
    assert_eq!(completion.body.action, "erasure.complete");
    assert_eq!(
        completion.body.subject_ref.as_deref(),
        Some(erased.as_str())
    );
    assert_eq!(r.audit_hash, hex::encode(completion.hash));
    for e in &events {
        let b = &e.body;
        let text = format!(
            "{} {} {} {} {:?} {:?} {}",
            b.actor, b.actor_kind, b.action, b.resource, b.purpose, b.subject_ref, b.details
        );
        assert!(
            !text.contains(ERASED) && !text.contains(OWN_CARD) && !text.contains("@example.com"),
            "event {} names the subject in clear: {text}",
            e.seq
        );
    }
    assert!(events.iter().any(|e| e.body.action == "erasure.request"
        && e.body.subject_ref.as_deref() == Some(erased.as_str())));
    g.state.loaders.stop().await;
}

/// Legal holds refuse erasures with their reason; deadlines, extensions, the DPO's list and
/// the metrics an alert reads; a failing store makes the job retry with backoff, visibly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_deadlines_retries_and_metrics() {
    let g = plane(Backend::Sqlite, false).await;
    let (dpo_id, dpo) = g.principal_token(PrincipalKind::User, &["dpo"], true).await;
    let kept = sref(&g, KEPT[1]).await;

    // A hold on the subject: refused, with the reason, audited.
    let r = g
        .post(
            "/v1/legal-holds",
            Some(&dpo),
            json!({"subject": KEPT[1], "reason": "litigation 2026-17"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let hold = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json["target"], json!(kept));
    let r = g
        .post(
            &format!("/v1/subjects/{}/erasure", KEPT[1]),
            Some(&dpo),
            json!({}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "legal_hold");
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("litigation 2026-17"));
    let r = g.get("/v1/legal-holds", &dpo).await;
    assert_eq!(r.json["holds"].as_array().unwrap().len(), 1, "{r:?}");
    let r = g
        .post(
            &format!("/v1/legal-holds/{hold}/release"),
            Some(&dpo),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");

    // Released: the request goes in; due in 30 days; extended with a reason, within the cap.
    let r = g
        .post(
            &format!("/v1/subjects/{}/erasure", KEPT[1]),
            Some(&dpo),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let job = r.json["job"].as_str().unwrap().to_owned();
    assert_eq!(r.json["due_at"], "2027-02-14T08:00:00Z", "{r:?}");
    // The requester follows its job once its second factor is no longer fresh (the job's
    // wait for the vacuum outlasts the window); another DPO needs a fresh one.
    let stale = g
        .state
        .tokens
        .issue(
            &dpo_id,
            PrincipalKind::User,
            &["dpo".to_owned()],
            &["pwd", "otp"],
            Some(g.clock_secs() - 3600),
            0,
        )
        .unwrap();
    let followed = g.get(&format!("/v1/erasure/{job}"), &stale).await;
    assert_eq!(followed.status, StatusCode::OK, "{followed:?}");
    let (_, other_dpo) = g
        .principal_token(PrincipalKind::User, &["dpo"], false)
        .await;
    assert_error(
        &g.get(&format!("/v1/erasure/{job}"), &other_dpo).await,
        StatusCode::UNAUTHORIZED,
        "mfa_required",
    );
    let r = g
        .post(
            &format!("/v1/erasure/{job}/extend"),
            Some(&dpo),
            json!({"days": 30, "reason": "complex request across archives"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["due_at"], "2027-03-16T08:00:00Z");
    let r = g
        .post(
            &format!("/v1/erasure/{job}/extend"),
            Some(&dpo),
            json!({"days": 31, "reason": "more"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = g
        .post(
            &format!("/v1/erasure/{job}/extend"),
            Some(&dpo),
            json!({"days": 1, "reason": " "}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");

    // A hold on a dataset that holds a subject's data refuses that subject's erasure.
    let contract = g.state.datasets.get("payments").unwrap();
    let other = sref(&g, KEPT[0]).await;
    g.state
        .documents
        .upsert(
            &collection_spec(&contract),
            &[Document {
                key: "held".into(),
                subject_ref: other.clone(),
                ts: 1_800_000_000_000_000,
                contract_version: 1,
                fields: json!({"transaction_id": "held", "user_id": other, "amount": 1})
                    .as_object()
                    .unwrap()
                    .clone(),
            }],
        )
        .await
        .unwrap();
    let r = g
        .post(
            "/v1/legal-holds",
            Some(&dpo),
            json!({"dataset": "payments", "reason": "tax audit"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = g
        .post(
            &format!("/v1/subjects/{other}/erasure"),
            Some(&dpo),
            json!({}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "legal_hold");
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("dataset payments"));
    let r = g
        .post(
            "/v1/legal-holds",
            Some(&dpo),
            json!({"dataset": "nope", "reason": "x"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");

    // The metrics and the DPO's list: one open request, overdue once its deadline passed.
    erasure::update_metrics(&g.state).await.unwrap();
    let m = g.get("/metrics", &dpo).await;
    let text = String::from_utf8_lossy(&m.bytes).to_string();
    assert!(
        text.contains("warden_erasure_open_requests{state=\"pending\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("warden_erasure_next_due_seconds 5184000"),
        "{text}"
    );
    g.clock.tick(Duration::from_secs(61 * 86_400));
    let (_, dpo) = g.principal_token(PrincipalKind::User, &["dpo"], true).await;
    erasure::update_metrics(&g.state).await.unwrap();
    let m = g.get("/metrics", &dpo).await;
    let text = String::from_utf8_lossy(&m.bytes).to_string();
    assert!(
        text.contains("warden_erasure_next_due_seconds -86400"),
        "{text}"
    );
    assert!(
        text.contains("warden_erasure_oldest_open_age_seconds 5270400"),
        "{text}"
    );
    let r = g.get("/v1/erasure?overdue=true", &dpo).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let jobs = r.json["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["overdue"], true);
    let r = g.get("/v1/erasure?state=completed", &dpo).await;
    assert!(r.json["jobs"].as_array().unwrap().is_empty());
    let r = g.get("/v1/erasure?state=bogus", &dpo).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");

    // A hold placed after the request stops the job before it destroys anything (audited);
    // released, the job goes on.
    let r = g
        .post(
            "/v1/legal-holds",
            Some(&dpo),
            json!({"subject": kept, "reason": "late litigation"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let late_hold = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        erasure::run_due(&g.state, "w", usize::MAX).await.unwrap(),
        0
    );
    let r = g.get(&format!("/v1/erasure/{job}"), &dpo).await;
    assert_eq!(r.json["state"], "held", "{r:?}");
    assert_eq!(r.json["last_error"], "legal hold on the subject");
    assert_eq!(r.json["steps_done"], json!([]));
    assert!(g
        .state
        .keys
        .data_keys("subject", std::slice::from_ref(&kept), false)
        .await
        .unwrap()
        .destroyed
        .is_empty());
    g.audit_settled().await;
    let held_events = g
        .state
        .audit_store
        .query(&warden_audit::Query {
            action: Some("erasure.held".into()),
            limit: 100,
            ..warden_audit::Query::default()
        })
        .await
        .unwrap();
    assert_eq!(held_events.len(), 1);
    assert_eq!(
        held_events[0].body.subject_ref.as_deref(),
        Some(kept.as_str())
    );
    let r = g
        .post(
            &format!("/v1/legal-holds/{late_hold}/release"),
            Some(&dpo),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    g.clock.tick(Duration::from_secs(61));

    // A store that fails: the step is retried with backoff, the job says so, the metric counts.
    let lake_dir = g.state.config.data_dir.join("lake");
    let payments_dir = lake_dir.join("payments");
    std::fs::create_dir_all(payments_dir.join("_delta_log")).unwrap();
    std::fs::write(
        payments_dir.join("_delta_log/00000000000000000000.json"),
        "not delta",
    )
    .unwrap();
    erasure::run_due(&g.state, "w", usize::MAX).await.unwrap();
    let r = g.get(&format!("/v1/erasure/{job}"), &dpo).await;
    assert_eq!(r.json["state"], "pending", "{r:?}");
    assert_eq!(r.json["attempts"], 1, "{r:?}");
    // (A hold on the dataset is checked against the lake before anything is destroyed.)
    assert_eq!(r.json["last_error"], "shred: lake unavailable", "{r:?}");
    assert_eq!(r.json["steps_done"], json!([]));
    // Not due again before its backoff...
    assert_eq!(
        erasure::run_due(&g.state, "w", usize::MAX).await.unwrap(),
        0
    );
    let m = g.get("/metrics", &dpo).await;
    let text = String::from_utf8_lossy(&m.bytes).to_string();
    assert!(
        text.contains("warden_erasure_steps_total{step=\"shred\",outcome=\"failed\"} 1"),
        "{text}"
    );
    // ...then, the store repaired, it finishes.
    std::fs::remove_dir_all(&payments_dir).unwrap();
    g.clock.tick(Duration::from_secs(5));
    erasure::run_due(&g.state, "w", usize::MAX).await.unwrap();
    let r = g.get(&format!("/v1/erasure/{job}"), &dpo).await;
    assert_eq!(r.json["state"], "completed", "{r:?}");
    assert!(r.json["last_error"].is_null());
    let ids: BTreeSet<String> = [job].into();
    assert_eq!(ids.len(), 1);
}

/// The real binary, killed right after each step in turn: every restart resumes the job
/// where it stopped, and the end is the same as without crashes. Then `warden erase`,
/// `warden erasure status` and `warden receipt verify` on the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_after_each_step_resumes_and_finishes_once() {
    use crate::binary::Server;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let datasets = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datasets");
    std::fs::write(
        dir.join("warden.toml"),
        format!(
            "datasets_dir = \"{datasets}\"\n[erasure]\nvacuum_retention = \"0s\"\nlease = \"2s\"\n"
        ),
    )
    .unwrap();
    let args = ["--config", "warden.toml"];
    let server = Server::start(dir, &args, &[("WARDEN_ADMIN_PASSWORD", "crash admin pass")]).await;
    // The data subject: an account of its own holding the `subject` role, named by its
    // identifier; `warden erase` takes its token from the environment.
    let tokens = server
        .service_tokens(
            "crash admin pass",
            &[
                ("crash-stage", &["stage"]),
                ("crash-analyst", &["analyst"]),
                (ERASED, &["subject"]),
            ],
        )
        .await;
    let (stage, analyst) = (tokens[0].clone(), tokens[1].clone());
    let subject_env = [("WARDEN_TOKEN", tokens[2].as_str())];
    let client = reqwest::Client::new();
    let records = records();
    let r = client
        .post(format!("{}/v1/datasets/payments/records", server.base))
        .bearer_auth(&stage)
        .header("x-purpose", "fraud_detection")
        .json(&records)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let count = |token: String, base: String| async move {
        let r: Value = reqwest::Client::new()
            .post(format!("{base}/v1/query"))
            .bearer_auth(token)
            .header("x-purpose", "fraud_detection")
            .json(&json!({"sql": "SELECT count(*) AS n FROM payments"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["rows"][0]["n"].as_i64().unwrap_or(-1)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(analyst.clone(), server.base.clone()).await < 36 {
        assert!(std::time::Instant::now() < deadline, "{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
    // The subject's account as stored before the erasure: its name and password hash must
    // leave no byte behind in the state database's files.
    let state_db = dir.join("warden-data/warden.db");
    let old_hash: String = {
        let db = warden_audit::Db::connect(&format!("sqlite://{}", state_db.display()))
            .await
            .unwrap();
        let row = sqlx::query("SELECT secret_hash FROM principals WHERE name = $1")
            .bind(ERASED)
            .fetch_one(db.pool())
            .await
            .unwrap();
        let hash = sqlx::Row::try_get(&row, "secret_hash").unwrap();
        db.pool().close().await;
        hash
    };

    let mut job = String::new();
    for (i, step) in erasure::STEPS.iter().enumerate() {
        let mut server = Server::start(dir, &args, &[(erasure::CRASH_ENV, step)]).await;
        if i == 0 {
            // The request; the worker takes it on its next tick and dies after the first
            // step (the answer is out by then, almost always: the job id is checked below).
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
                .current_dir(dir)
                .args(["erase", "me", "--no-wait", "--url", &server.base])
                .envs(subject_env)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() {
                job = stdout.split_whitespace().next().unwrap().to_owned();
                assert!(job.starts_with("er_"), "{stdout}");
            }
        }
        let status = server
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| {
                panic!(
                    "armed at {step}, the worker did not die: {}",
                    server.stderr()
                )
            });
        assert_eq!(status.code(), Some(86), "{}", server.stderr());
        assert!(
            server
                .stderr()
                .contains(&format!("dying right after the erasure step {step}")),
            "{}",
            server.stderr()
        );
    }

    // Restarted unarmed: the job is complete; asking again returns its receipt.
    let server = Server::start(dir, &args, &[]).await;
    let receipt_path = dir.join("receipt.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(dir)
        .args(["erase", "me", "--url", &server.base, "--receipt"])
        .arg(&receipt_path)
        .envs(subject_env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = stdout.split_whitespace().next().unwrap().to_owned();
    assert!(job.is_empty() || job == done, "one job: {job} {done}");
    let job = done;
    assert!(stdout.contains(" completed "), "{stdout}");
    let receipt: receipt::Receipt =
        serde_json::from_str(&std::fs::read_to_string(&receipt_path).unwrap()).unwrap();
    let p = &receipt.datasets["payments"];
    assert_eq!(
        (p.lake_rows_deleted, p.documents_deleted, p.tokens_purged),
        (12, 12, 1)
    );
    assert_eq!(receipt.verification.lake_rows, 0);
    assert!(receipt.subject_key_destroyed && receipt.subject_account_renamed);
    assert_eq!(count(analyst.clone(), server.base.clone()).await, 24);
    // `erasure status` reads the gateway from WARDEN_URL and writes the receipt too.
    let later_receipt = dir.join("receipt-later.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(dir)
        .args(["erasure", "status", &job, "--receipt"])
        .arg(&later_receipt)
        .env("WARDEN_URL", &server.base)
        .envs(subject_env)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(
        serde_json::from_str::<receipt::Receipt>(&std::fs::read_to_string(&later_receipt).unwrap())
            .unwrap(),
        receipt
    );
    let status_out: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status_out["state"], "completed");
    assert_eq!(status_out["pass"], 1, "each step ran to its end once");
    assert_eq!(
        serde_json::from_value::<receipt::Receipt>(status_out["receipt"].clone()).unwrap(),
        receipt,
        "the same receipt"
    );
    server.stop();
    // Nothing of the erased account in the state database's files: not in the rows, free
    // pages or write-ahead log (SQLite's secure_delete, the log checkpointed and truncated).
    for file in ["warden.db", "warden.db-wal"] {
        let Ok(bytes) = std::fs::read(dir.join("warden-data").join(file)) else {
            continue;
        };
        for needle in [ERASED.as_bytes(), old_hash.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{file} still holds {}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    // Offline: the receipt verifies with the gateway's public key, and not once altered.
    let keys = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(dir)
        .args(["--config", "warden.toml", "audit", "public-key"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    let hex_key = keys.split_whitespace().nth(1).unwrap().to_owned();
    let verify = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .current_dir(dir)
            .args(["receipt", "verify"])
            .arg(path)
            .args(["--public-key", &hex_key])
            .output()
            .unwrap()
    };
    let ok = verify(&receipt_path);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("receipt valid"));
    let text = std::fs::read_to_string(&receipt_path).unwrap();
    let altered = text.replace("\"lake_rows_deleted\": 12", "\"lake_rows_deleted\": 11");
    assert_ne!(altered, text);
    let altered_path = dir.join("altered.json");
    std::fs::write(&altered_path, altered).unwrap();
    let bad = verify(&altered_path);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("does NOT verify"));
    // The audit log still verifies.
    let audit = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(dir)
        .args(["--config", "warden.toml", "audit", "verify"])
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
}

/// The alert rules: valid, unit-tested by promtool (a warning three days before a deadline,
/// a page once overdue, a step failing again and again), and every metric they read is one
/// the gateway exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_fire_before_deadlines_on_exported_metrics() {
    let g = plane(Backend::Sqlite, false).await;
    let (_, dpo) = g.principal_token(PrincipalKind::User, &["dpo"], true).await;
    g.state.metrics.erasure_steps("lake", "failed");
    let metrics = String::from_utf8(g.get("/metrics", &dpo).await.bytes).unwrap();
    assert!(
        metrics.contains("warden_erasure_next_due_seconds 31536000"),
        "nothing due before the first reading: {metrics}"
    );
    let read = crate::support::check_alert_rules("erasure", &metrics);
    assert!(read >= 2, "{read}");
}
