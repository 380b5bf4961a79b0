//! Records over HTTP: ingest (JSON and NDJSON, partial and atomic) → stream → loader →
//! document store → reads masked by role, a data subject's own rows only. On the embedded
//! plane (SQLite, PostgreSQL) and on Kafka (tansu) + MongoDB (nx-27017).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use warden_sdk::PrincipalKind;

use crate::support::{assert_error, gateway_with, Backend, Gateway, Reply};

mod embedded {
    use super::*;
    warden_audit::on_both_backends!(crate::support::Backend; ingest_then_read_masked, ingest_input_is_checked);
    async fn ingest_then_read_masked(backend: Backend) {
        super::ingest_then_read_masked(super::plane(backend, false).await).await;
    }
    async fn ingest_input_is_checked(backend: Backend) {
        super::ingest_input_is_checked(super::plane(backend, false).await).await;
    }
}

/// A card number and an e-mail address typed into a field the contract classifies `public`:
/// refused with stable codes, counted in the metrics, audited without the values, and no byte
/// of them in the stream, the documents or the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_values_in_unclassified_fields_reach_no_store() {
    let g = plane(Backend::Sqlite, false).await;
    g.state.start_loaders();
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let card = "4111 1111 1111 1111";
    let mail = "zoe.q@example.net";
    let mut with_card = tx(1, "u-1", "5500000000000004");
    with_card["country"] = json!(format!("paid with {card}, thanks"));
    let mut with_mail = tx(2, "u-2", "5500000000000004");
    with_mail["country"] = json!(format!("<{mail}>"));
    let clean = tx(3, "u-3", "5500000000000004");
    let r = ingest(&g, &stage, "", &json!([with_card, with_mail, clean])).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.json["accepted"], 1);
    let codes: Vec<&Value> = r.json["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["code"])
        .collect();
    assert_eq!(
        codes,
        [
            &json!("card_number_in_unclassified_field"),
            &json!("email_in_unclassified_field")
        ]
    );
    loaded(&g, 1).await;
    lake_loaded(&g, 1).await;

    let (_, admin) = g
        .principal_token(PrincipalKind::User, &["auditor"], true)
        .await;
    let events = g
        .get("/v1/audit/events?action=datasets:payments.write", &admin)
        .await;
    let event = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["details"]["detections"].is_object())
        .unwrap_or_else(|| panic!("{events:?}"))
        .clone();
    assert_eq!(event["details"]["detections"]["card_number.refuse"], 1);
    assert_eq!(event["details"]["detections"]["email.refuse"], 1);
    let metrics =
        String::from_utf8(g.call(Method::GET, "/metrics", None, None).await.bytes).unwrap();
    assert!(
        metrics.contains(
            r#"warden_detections_total{dataset="payments",detector="card_number",action="refuse"} 1"#
        ),
        "{metrics}"
    );

    // Every file Warden wrote: the state database (embedded stream, documents, audit log,
    // vault), its write-ahead logs, the lake's data and log.
    let needles = [
        card.as_bytes(),
        b"4111111111111111".as_slice(),
        mail.as_bytes(),
    ];
    let mut files = vec![g._dir.path().to_path_buf()];
    let mut seen = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        seen += 1;
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n),
                "{} holds {}",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    assert!(
        seen >= 3,
        "the state database and the lake's files were read ({seen})"
    );
}

/// A batch re-sent under its Idempotency-Key after a lost answer gets the first answer and
/// publishes nothing again (the same positions; each record once in the documents and the
/// lake); the key with another batch is refused; without a key a re-send is a new request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_retried_under_its_idempotency_key_is_taken_once() {
    let g = plane(Backend::Sqlite, false).await;
    g.state.start_loaders();
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let batch = json!([
        tx(1, "u-1", "4111111111111111"),
        tx(2, "u-2", "5500000000000004")
    ]);
    let with_key = |body: &Value, key: &str| {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/datasets/payments/records")
            .header("authorization", format!("Bearer {stage}"))
            .header("content-type", "application/json")
            .header("x-purpose", "fraud_detection")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap();
        g.send(req)
    };
    let first = with_key(&batch, "batch-7").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    // The answer was lost; the client sends the same batch again.
    let again = with_key(&batch, "batch-7").await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{again:?}");
    assert_eq!(
        again.json, first.json,
        "the first answer, the same positions"
    );
    let other = with_key(&json!([tx(3, "u-3", "4111111111111111")]), "batch-7").await;
    assert_error(&other, StatusCode::CONFLICT, "conflict");
    loaded(&g, 2).await;
    lake_loaded(&g, 2).await;
    // Without a key the same batch is a new request: published again (the documents keep
    // one per record key; the lake's dedupe is the contract's `dedupe` stage).
    let unkeyed = ingest(&g, &stage, "", &batch).await;
    assert_eq!(unkeyed.status, StatusCode::ACCEPTED);
    assert_ne!(unkeyed.json["positions"], first.json["positions"]);
}

mod kafka_mongo {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingest_then_read_masked() {
        super::ingest_then_read_masked(super::plane(super::Backend::Sqlite, true).await).await;
    }
}

/// A gateway on the embedded plane, or on Kafka + MongoDB + a lake on S3 (topics, groups,
/// database and prefix of its own).
pub(crate) async fn plane(backend: Backend, remote: bool) -> Gateway {
    let g = gateway_with(backend, |c| {
        c.lake.aggregates = vec![warden_gateway::config::AggregateConfig {
            name: "by_country".into(),
            sql: "SELECT country, count(*) AS n, sum(amount) AS amount FROM payments GROUP BY country".into(),
            every: None,
        }];
        if remote {
            let id = uuid::Uuid::new_v4().simple().to_string();
            c.streams.url = format!("kafka://{}", crate::support::kafka_brokers());
            c.streams.topic_prefix = format!("t{id}.");
            // tansu serves fetches only from batch starts (see warden-pipeline's tests).
            c.streams
                .producer
                .insert("batch.num.messages".into(), "1".into());
            c.documents.url = format!("{}/t{id}", crate::support::mongodb_url());
            let bucket = std::env::var("WARDEN_TEST_S3_BUCKET")
                .expect("WARDEN_TEST_S3_BUCKET is not set: run the tests with scripts/test.sh");
            c.lake.url = Some(format!("s3://{bucket}/t{id}/"));
            c.lake.storage_options = crate::support::s3_options();
        }
        // Erasures vacuum the files they rewrote at once (the tests run jobs themselves).
        c.erasure.vacuum_retention = Duration::ZERO;
    })
    .await;
    let kinds = (g.state.stream.kind(), g.state.documents.kind());
    assert_eq!(
        kinds,
        if remote {
            ("kafka", "mongodb")
        } else {
            ("embedded", "embedded")
        }
    );
    g
}

async fn send(
    g: &Gateway,
    method: Method,
    uri: &str,
    token: &str,
    purpose: Option<&str>,
    content_type: &str,
    body: String,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type);
    if let Some(p) = purpose {
        req = req.header("x-purpose", p);
    }
    g.send(req.body(Body::from(body)).unwrap()).await
}

pub(crate) async fn ingest(g: &Gateway, token: &str, query: &str, records: &Value) -> Reply {
    send(
        g,
        Method::POST,
        &format!("/v1/datasets/payments/records{query}"),
        token,
        Some("fraud_detection"),
        "application/json",
        records.to_string(),
    )
    .await
}

async fn read(g: &Gateway, token: &str, query: &str) -> Reply {
    send(
        g,
        Method::GET,
        &format!("/v1/datasets/payments/records{query}"),
        token,
        Some("fraud_detection"),
        "application/json",
        String::new(),
    )
    .await
}

fn tx(i: usize, user: &str, pan: &str) -> Value {
    json!({"transaction_id": format!("t-{i:03}"), "user_id": user, "card_number": pan,
           "email": format!("{user}@example.com"), "ip": "198.51.100.23", "amount": i,
           "country": "DE", "created_at": format!("2026-11-24T10:{:02}:00Z", i % 60)})
}

/// Runs the loaders and waits until the document store holds `n` payments.
pub(crate) async fn loaded(g: &Gateway, n: u64) {
    let s = &g.state;
    let spec = warden_pipeline::loader::collection_spec(&s.datasets.get("payments").unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = s.documents.count(&spec, None).await.unwrap();
        if count >= n {
            assert_eq!(count, n, "each record once");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {count} of {n} documents loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the lake loader has appended `n` payments.
pub(crate) async fn lake_loaded(g: &Gateway, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = g
            .state
            .loaders
            .stats("payments", "lake")
            .map_or(0, |s| s.stored.load(std::sync::atomic::Ordering::Relaxed));
        if stored >= n {
            assert_eq!(stored, n, "each record once");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} of {n} rows in the lake"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn query(g: &Gateway, token: &str, sql: &str) -> Reply {
    send(
        g,
        Method::POST,
        "/v1/query",
        token,
        Some("fraud_detection"),
        "application/json",
        json!({"sql": sql}).to_string(),
    )
    .await
}

async fn ingest_then_read_masked(g: Gateway) {
    g.state.start_loaders();
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let mut batch: Vec<Value> = (0..30)
        .map(|i| tx(i, &format!("u-{}", i % 3), "4111111111111111"))
        .collect();
    batch[7]["cvv"] = json!("123");
    batch[9]["card_number"] = json!("4111111111111112"); // fails Luhn
    let r = ingest(&g, &stage, "", &Value::Array(batch)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.json["accepted"], 28);
    assert_eq!(r.json["rejected"], 2);
    let rejected: Vec<(u64, &str)> = r.json["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["index"].as_u64().unwrap(), x["field"].as_str().unwrap()))
        .collect();
    assert_eq!(rejected, vec![(7, "cvv"), (9, "card_number")]);
    let positions = r.json["positions"].as_array().unwrap();
    assert_eq!(positions.len(), 28);
    assert!(positions.iter().all(|p| p["index"] != 7 && p["index"] != 9));
    let body = String::from_utf8_lossy(&r.bytes);
    assert!(
        !body.contains("4111111111111111")
            && !body.contains("@example.com")
            && !body.contains("123\"")
    );

    // NDJSON, with a line that is not a record.
    let nd = format!(
        "{}\n{}\n[1]\n\n",
        tx(100, "u-0", "5500000000000004"),
        tx(101, "u-1", "5500000000000004")
    );
    let r = send(
        &g,
        Method::POST,
        "/v1/datasets/payments/records",
        &stage,
        Some("fraud_detection"),
        "application/x-ndjson",
        nd,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.json["accepted"], 2);
    assert_eq!(
        r.json["rejections"],
        json!([{"index": 2, "field": null, "reason": "not a JSON object"}])
    );
    loaded(&g, 30).await;
    lake_loaded(&g, 30).await;

    // An analyst: card numbers as the last four, personal data masked.
    let (_, analyst) = g
        .principal_token(PrincipalKind::User, &["analyst"], false)
        .await;
    let r = read(&g, &analyst, "?limit=1000").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let recs = r.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 30);
    assert!(r.json["next_cursor"].is_null());
    let first = recs
        .iter()
        .find(|x| x["transaction_id"] == "t-000")
        .unwrap();
    assert_eq!(first["card_number"], "****1111");
    assert_eq!(first["email"], "****");
    assert_eq!(first["ip"], "198.51.100.0");
    assert_eq!(first["amount"], 0);
    assert!(first["user_id"].as_str().unwrap().starts_with("sr_"));
    assert!(first
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.ends_with("__bidx")));
    let body = String::from_utf8_lossy(&r.bytes);
    assert!(
        !body.contains("411111") && !body.contains("@example.com") && !body.contains("enc:v1:")
    );

    // The DPO reads personal data in clear with a fresh second factor only (as in exports);
    // card operations see first six and last four.
    let (_, dpo_stale) = g
        .principal_token(PrincipalKind::User, &["dpo"], false)
        .await;
    let r = read(&g, &dpo_stale, "?subject=u-1&limit=1000").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["email"] == "****"));
    let (_, dpo) = g.principal_token(PrincipalKind::User, &["dpo"], true).await;
    let r = read(&g, &dpo, "?subject=u-1&limit=1000").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let recs = r.json["records"].as_array().unwrap();
    assert_eq!(
        recs.len(),
        9 + 1,
        "u-1's nine JSON records (t-007 was refused) and one NDJSON"
    );
    assert!(recs.iter().all(|x| x["email"] == "u-1@example.com"));
    assert!(recs
        .iter()
        .all(|x| x["card_number"].as_str().unwrap().starts_with("****")));
    let (_, card_ops) = g
        .principal_token(PrincipalKind::User, &["card_ops"], false)
        .await;
    let r = read(&g, &card_ops, "?subject=u-2&limit=1").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["records"][0]["card_number"], "411111******1111");
    assert_eq!(r.json["records"][0]["email"], "****");

    // Pages follow (time, key) order through the cursor, each record once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = read(&g, &analyst, &format!("?limit=7{cursor}")).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        for x in r.json["records"].as_array().unwrap() {
            seen.push(x["transaction_id"].as_str().unwrap().to_owned());
        }
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);
    // A time range.
    let r = read(
        &g,
        &analyst,
        "?from=2026-11-24T10:10:00Z&to=2026-11-24T10:20:00Z&limit=1000",
    )
    .await;
    assert_eq!(r.json["records"].as_array().unwrap().len(), 10);

    // A data subject sees its own rows only, in clear, and cannot ask for another's.
    let (_, subject) = g
        .named_principal_token(PrincipalKind::Subject, "u-2", &["subject"], false)
        .await;
    let r = read(&g, &subject, "?limit=1000").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let recs = r.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 10, "u-2's ten records");
    assert!(recs.iter().all(|x| x["email"] == "u-2@example.com"));
    let r = read(&g, &subject, "?subject=u-1").await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    // The row filter follows the role too: a user account given the subject role is limited
    // to the rows of its own name.
    let (_, user_as_subject) = g
        .named_principal_token(PrincipalKind::User, "u-1", &["subject"], false)
        .await;
    let r = read(&g, &user_as_subject, "?limit=1000").await;
    assert_eq!(r.json["records"].as_array().unwrap().len(), 10, "{r:?}");

    // SQL over the lake: masked views of what the role may read.
    let r = query(
        &g,
        &analyst,
        "SELECT card_number, email, amount, country FROM payments ORDER BY amount LIMIT 3",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.json["rows"][0],
        json!({"card_number": "****1111", "email": "****", "amount": 0.0, "country": "DE"})
    );
    let r = query(
        &g,
        &analyst,
        "SELECT count(*) AS n, sum(amount) AS total FROM payments",
    )
    .await;
    assert_eq!(r.json["rows"][0]["n"], 30, "{r:?}");
    let r = query(&g, &analyst, "SELECT email__bidx FROM payments").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = query(&g, &analyst, "SELECT * FROM t").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    for sql in [
        "CREATE TABLE x AS SELECT 1",
        "COPY payments TO '/tmp/warden-x.csv'",
        "SET datafusion.execution.batch_size = 1",
        "INSERT INTO payments SELECT * FROM payments",
    ] {
        let r = query(&g, &analyst, sql).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let r = query(&g, &subject, "SELECT count(*) AS n FROM payments").await;
    assert_eq!(
        r.json["rows"][0]["n"], 10,
        "a subject's view holds its own rows: {r:?}"
    );
    let r = query(&g, &stage, "SELECT 1").await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let body = String::from_utf8_lossy(&r.bytes);
    assert!(!body.contains("4111111111111111"));

    // An aggregate table, materialized from the masked views, readable in SQL.
    let r = query(&g, &analyst, "SELECT * FROM agg_by_country").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let agg = g.state.config.lake.aggregates[0].clone();
    assert_eq!(
        warden_gateway::materialize::materialize(&g.state, &agg)
            .await
            .unwrap(),
        1
    );
    let r = query(&g, &analyst, "SELECT country, n FROM agg_by_country").await;
    assert_eq!(r.json["rows"], json!([{"country": "DE", "n": 30}]), "{r:?}");
    let r = query(&g, &subject, "SELECT * FROM agg_by_country").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");

    // Purpose limitation and the read's audit event.
    let r = send(
        &g,
        Method::GET,
        "/v1/datasets/payments/records",
        &analyst,
        Some("marketing"),
        "application/json",
        String::new(),
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "purpose_not_allowed");
    let r = send(
        &g,
        Method::GET,
        "/v1/datasets/payments/records",
        &analyst,
        None,
        "application/json",
        String::new(),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    g.audit_settled().await;
    let events = g.state.audit_store.scan(0, 10_000).await.unwrap();
    let reads: Vec<_> = events
        .iter()
        .filter(|e| e.body.action == "datasets:payments.read")
        .collect();
    assert!(reads.iter().any(|e| e
        .body
        .subject_ref
        .as_deref()
        .is_some_and(|s| s.starts_with("sr_"))));
    let ingests: Vec<_> = events
        .iter()
        .filter(|e| e.body.action == "datasets:payments.write")
        .collect();
    assert_eq!(ingests.len(), 2);
    let details: Value = serde_json::from_str(&ingests[0].body.details).unwrap();
    assert_eq!(details["rejected_fields"], json!(["card_number", "cvv"]));
    for e in &events {
        let d = &e.body.details;
        assert!(
            !d.contains("@example.com") && !d.contains("4111111111111111") && !d.contains("u-1"),
            "{d}"
        );
    }
}

async fn ingest_input_is_checked(g: Gateway) {
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    // All or nothing.
    let batch = json!([tx(1, "u-1", "4111111111111111"), tx(2, "u-2", "1234")]);
    let r = ingest(&g, &stage, "?mode=atomic", &batch).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "records_rejected");
    assert_eq!(r.json["rejections"][0]["index"], 1);
    assert_eq!(r.json["rejections"][0]["field"], "card_number");
    assert!(!String::from_utf8_lossy(&r.bytes).contains("1234"));
    let r = ingest(
        &g,
        &stage,
        "?mode=atomic",
        &json!([tx(3, "u-3", "4111111111111111")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    // Nothing from the refused batch reached the stream: the next offset follows the one
    // accepted record only.
    assert_eq!(r.json["positions"].as_array().unwrap().len(), 1);
    let mut sub = g
        .state
        .stream
        .subscribe("payments", "test-probe")
        .await
        .unwrap();
    let got = sub.poll(100, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(!String::from_utf8_lossy(got[0].value.as_deref().unwrap()).contains("4111111111111111"));

    let r = ingest(&g, &stage, "?mode=sometimes", &batch).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = ingest(&g, &stage, "?unknown=1", &batch).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send(
        &g,
        Method::POST,
        "/v1/datasets/payments/records",
        &stage,
        Some("fraud_detection"),
        "application/json",
        "{\"not\": \"an array\"}".into(),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "malformed_json");
    let r = send(
        &g,
        Method::POST,
        "/v1/datasets/payments/records",
        &stage,
        Some("fraud_detection"),
        "text/csv",
        "a,b\n1,2".into(),
    )
    .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let r = ingest(&g, &stage, "", &json!([])).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let many = Value::Array((0..10_001).map(|_| json!({})).collect());
    let r = ingest(&g, &stage, "", &many).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = send(
        &g,
        Method::POST,
        "/v1/datasets/payments/records",
        &stage,
        Some("marketing"),
        "application/json",
        batch.to_string(),
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "purpose_not_allowed");
    let r = send(
        &g,
        Method::POST,
        "/v1/datasets/nope/records",
        &stage,
        Some("fraud_detection"),
        "application/json",
        batch.to_string(),
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    // Analysts read but do not write; bad read parameters are named.
    let (_, analyst) = g
        .principal_token(PrincipalKind::User, &["analyst"], false)
        .await;
    let r = ingest(&g, &analyst, "", &batch).await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    for (q, what) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?from=yesterday", "from"),
        ("?cursor=%%%", "cursor"),
    ] {
        let r = read(&g, &analyst, q).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(what),
            "{r:?}"
        );
    }
}
