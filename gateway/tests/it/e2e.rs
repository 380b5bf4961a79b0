//! The data plane end to end, through the real `warden` binary: transactions over HTTP →
//! protection (with geo-enrichment) → Kafka (tansu) → stages → Delta Lake and MongoDB
//! (nx-27017); masked reads; every Parquet file, log entry and document scanned for clear
//! values; a loader killed between the Delta commit and the stream commit.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_pipeline::docs::mongo::MongoDocuments;
use warden_pipeline::docs::{CollectionSpec, DocumentStore, Query};

use crate::binary::{files_under, post, Server};

const ADMIN_PASSWORD: &str = "e2e admin pass";

/// A Luhn-valid 16-digit card number.
fn pan(n: u64) -> String {
    warden_policy::pan::with_check_digit(&format!("4{:014}", n % 100_000_000_000_000))
}

fn email(user: usize) -> String {
    format!("person.{user}@e2e.example.org")
}

/// The `i`-th transaction: 400 users, one card each, addresses in two geo networks, times
/// in two forms.
fn transaction(i: usize) -> Value {
    let user = i % 400;
    let ip = if user.is_multiple_of(2) {
        format!("198.51.100.{}", user % 250)
    } else {
        format!("203.0.113.{}", user % 250)
    };
    let created = if i.is_multiple_of(2) {
        json!(1_795_514_400_000_i64 + i as i64 * 1000)
    } else {
        json!(format!("2026-11-24 10:{:02}:00", i % 60))
    };
    json!({"transaction_id": format!("e2e-{i:05}"), "user_id": format!("customer-{user}"), "card_number": pan(user as u64 * 7919),
           "email": email(user), "ip": ip, "amount": (i % 500) as f64 / 4.0, "created_at": created})
}

/// The broker is tansu, debug-built, taking one record a batch (see `TANSU_PRODUCER` in the
/// pipeline's tests) on a busy two-core machine: a request of 2000 records may take it longer
/// than the default 10 s to acknowledge — 25 s was seen too, with another test running
/// beside it — so the test allows 60 s, within a request timeout of 90 s.
fn config(dir: &Path, id: &str, stages: bool) -> String {
    let datasets = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datasets");
    let mut c = format!(
        "datasets_dir = \"{datasets}\"\n[limits]\nmax_ingest_bytes = 33554432\nrequest_timeout = \"90s\"\n\
         [streams]\nurl = \"kafka://{}\"\ntopic_prefix = \"{id}.\"\n[streams.producer]\n\"batch.num.messages\" = \"1\"\n\"message.timeout.ms\" = \"60000\"\n\
         [documents]\nurl = \"{}/{id}\"\n",
        crate::support::kafka_brokers(),
        crate::support::mongodb_url(),
    );
    if stages {
        let mmdb = dir.join("city.mmdb");
        std::fs::write(
            &mmdb,
            warden_pipeline::geo::testkit::city_database(&[
                (std::net::Ipv4Addr::new(198, 51, 100, 0), 24, "DE", "Berlin"),
                (std::net::Ipv4Addr::new(203, 0, 113, 0), 24, "FR", "Paris"),
            ]),
        )
        .unwrap();
        c.push_str(&format!(
            "[pipeline]\ngeoip_db = \"{}\"\n[pipeline.stages]\npayments = [\"geo_enrich\", \"normalize\", \"dedupe\"]\n",
            mmdb.display()
        ));
    }
    c
}

async fn ingest(server: &Server, token: &str, records: &[Value]) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/datasets/payments/records", server.base))
        .bearer_auth(token)
        .header("x-purpose", "fraud_detection")
        .json(&records)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}\n{}", server.stderr());
    body
}

async fn sql(base: &str, token: &str, q: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/query"))
        .bearer_auth(token)
        .header("x-purpose", "fraud_detection")
        .json(&json!({"sql": q}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{q}: {body}");
    body["rows"].clone()
}

/// Waits until the lake holds `n` payments (by SQL through the gateway).
async fn lake_holds(server: &Server, token: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let rows = sql(&server.base, token, "SELECT count(*) AS n FROM payments").await;
        let got = rows[0]["n"].as_i64().unwrap();
        if got >= n {
            assert_eq!(got, n, "each record once in the lake");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the lake holds {got} of {n}: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn all_documents(
    docs: &MongoDocuments,
    spec: &CollectionSpec,
) -> Vec<warden_pipeline::docs::Document> {
    let mut out: Vec<warden_pipeline::docs::Document> = Vec::new();
    let mut q = Query {
        limit: 1000,
        ..Query::default()
    };
    loop {
        let page = docs.find(spec, &q).await.unwrap();
        let Some(last) = page.last() else { break };
        q.after = Some((last.ts, last.key.clone()));
        out.extend(page);
    }
    out
}

/// Every string in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_transactions_through_kafka_into_delta_and_mongodb() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = format!("e2e{}", uuid::Uuid::new_v4().simple());
    std::fs::write(dir.join("warden.toml"), config(dir, &id, true)).unwrap();
    let server = Server::start(
        dir,
        &["--config", "warden.toml"],
        &[("WARDEN_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let tokens = server
        .service_tokens(
            ADMIN_PASSWORD,
            &[("e2e-stage", &["stage"]), ("e2e-analyst", &["analyst"])],
        )
        .await;
    let (stage, analyst) = (&tokens[0], &tokens[1]);

    let all: Vec<Value> = (0..10_000).map(transaction).collect();
    for batch in all.chunks(2000) {
        let r = ingest(&server, stage, batch).await;
        assert_eq!(r["accepted"], 2000, "{}", r["rejections"]);
    }
    // A client retry: 50 transactions sent again; dedupe keeps each once.
    let r = ingest(&server, stage, &all[100..150]).await;
    assert_eq!(r["accepted"], 50);

    lake_holds(&server, analyst, 10_000).await;
    let rows = sql(
        &server.base,
        analyst,
        "SELECT count(DISTINCT transaction_id) AS n FROM payments",
    )
    .await;
    assert_eq!(rows[0]["n"], 10_000);
    let rows = sql(
        &server.base,
        analyst,
        "SELECT country, count(*) AS n FROM payments GROUP BY country ORDER BY country",
    )
    .await;
    assert_eq!(
        rows,
        json!([{"country": "DE", "n": 5000}, {"country": "FR", "n": 5000}]),
        "geo-enriched at the edge"
    );
    let rows = sql(
        &server.base,
        analyst,
        "SELECT card_number, email, ip FROM payments WHERE transaction_id = 'e2e-00001'",
    )
    .await;
    assert_eq!(rows[0]["email"], "****");
    assert!(rows[0]["card_number"].as_str().unwrap().starts_with("****"));
    assert_eq!(rows[0]["ip"], "203.0.113.0", "truncated");

    // MongoDB: one document per transaction, normalized times.
    let docs = MongoDocuments::connect(&format!("{}/{id}", crate::support::mongodb_url()))
        .await
        .unwrap();
    let spec = CollectionSpec {
        name: "payments".into(),
        key_field: "transaction_id".into(),
        subject_field: "user_id".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while docs.count(&spec, None).await.unwrap() < 10_000 {
        assert!(Instant::now() < deadline, "documents: {}", server.stderr());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stored = all_documents(&docs, &spec).await;
    assert_eq!(stored.len(), 10_000);
    let d1 = stored.iter().find(|d| d.key == "e2e-00001").unwrap();
    assert_eq!(
        d1.fields["created_at"], "2026-11-24T10:01:00Z",
        "normalized to RFC 3339 UTC"
    );
    assert_eq!(d1.fields["country"], "FR");

    // Reads through the gateway are masked.
    let r = reqwest::Client::new()
        .get(format!(
            "{}/v1/datasets/payments/records?subject=customer-7&limit=100",
            server.base
        ))
        .bearer_auth(analyst)
        .header("x-purpose", "fraud_detection")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let recs = body["records"].as_array().unwrap();
    assert_eq!(recs.len(), 25, "customer-7's transactions");
    assert!(recs
        .iter()
        .all(|x| x["email"] == "****" && x["card_number"].as_str().unwrap().starts_with("****")));

    // No clear card number or email anywhere: every Parquet row, every Delta log entry,
    // every document.
    let clear: HashSet<String> = (0..400)
        .flat_map(|u| [pan(u as u64 * 7919), email(u)])
        .collect();
    let canaries = [pan(7 * 7919), email(7), "customer-7".to_owned()];
    let lake_dir = dir.join("warden-data").join("lake");
    let files = files_under(&lake_dir);
    let parquet: Vec<_> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(!parquet.is_empty());
    let mut rows_scanned = 0;
    for f in &parquet {
        let file = std::fs::File::open(f).unwrap();
        let reader =
            deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            // Checkpoints (in _delta_log) hold the log's actions and statistics, not rows.
            if !f.components().any(|c| c.as_os_str() == "_delta_log") {
                rows_scanned += batch.num_rows();
            }
            let mut w = deltalake::arrow::json::ArrayWriter::new(Vec::new());
            w.write_batches(&[&batch]).unwrap();
            w.finish().unwrap();
            let rows: Value = serde_json::from_slice(&w.into_inner()).unwrap();
            let mut values = Vec::new();
            strings(&rows, &mut values);
            assert!(
                values.iter().all(|v| !clear.contains(v)),
                "a clear value in {}",
                f.display()
            );
        }
    }
    assert_eq!(rows_scanned, 10_000);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for c in &canaries {
            assert!(
                !bytes.windows(c.len()).any(|w| w == c.as_bytes()),
                "{c} in {}",
                f.display()
            );
        }
    }
    for d in &stored {
        let mut values = Vec::new();
        strings(&Value::Object(d.fields.clone()), &mut values);
        assert!(
            values
                .iter()
                .all(|v| !clear.contains(v) && !v.starts_with("customer-")),
            "a clear value in document {}",
            d.key
        );
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_killed_between_the_delta_commit_and_the_offset_commit_writes_each_record_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = format!("crash{}", uuid::Uuid::new_v4().simple());
    // First the records go in, with no loader running...
    std::fs::write(
        dir.join("warden.toml"),
        config(dir, &id, false) + "[pipeline]\nloaders = false\n",
    )
    .unwrap();
    let server = Server::start(
        dir,
        &["--config", "warden.toml"],
        &[("WARDEN_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let tokens = server
        .service_tokens(
            ADMIN_PASSWORD,
            &[("crash-stage", &["stage"]), ("crash-analyst", &["analyst"])],
        )
        .await;
    let (stage, analyst) = (tokens[0].clone(), tokens[1].clone());
    let all: Vec<Value> = (0..600).map(transaction).collect();
    ingest(&server, &stage, &all).await;
    server.stop();
    // ...then the lake loader starts, commits to Delta, and dies before the stream commit.
    std::fs::write(dir.join("warden.toml"), config(dir, &id, false)).unwrap();
    let mut server = Server::start(
        dir,
        &["--config", "warden.toml"],
        &[(warden_pipeline::loader::CRASH_ENV, "lake")],
    )
    .await;
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("the armed loader kills the process");
    assert!(!status.success(), "{status}");
    assert!(server
        .stderr()
        .contains("dying between the sink write and the stream commit"));
    drop(server);

    // Restarted (not armed): the records after the last stream commit are read again; the
    // ones the table already holds are skipped by their application transactions.
    let server = Server::start(dir, &["--config", "warden.toml"], &[]).await;
    lake_holds(&server, &analyst, 600).await;
    let rows = sql(
        &server.base,
        &analyst,
        "SELECT count(DISTINCT transaction_id) AS n, count(*) AS total FROM payments",
    )
    .await;
    assert_eq!(rows[0], json!({"n": 600, "total": 600}));
    // And the pipeline goes on.
    ingest(
        &server,
        &stage,
        &(600..700).map(transaction).collect::<Vec<_>>(),
    )
    .await;
    lake_holds(&server, &analyst, 700).await;
    let _ = post(&server.base, "/healthz", None, json!({})).await;
    server.stop();
}

/// `warden ingest` sends CSV, NDJSON, JSON and Parquet files through the gateway; refusals
/// are listed by record number and field, never by value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warden_ingest_sends_batch_files_through_the_gateway() {
    use deltalake::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let datasets = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datasets");
    std::fs::write(
        dir.join("warden.toml"),
        format!("datasets_dir = \"{datasets}\"\n[[lake.aggregates]]\nname = \"amounts\"\nsql = \"SELECT count(*) AS n FROM payments\"\n"),
    )
    .unwrap();
    let server = Server::start(
        dir,
        &["--config", "warden.toml"],
        &[("WARDEN_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let tokens = server
        .service_tokens(
            ADMIN_PASSWORD,
            &[("files-stage", &["stage"]), ("files-analyst", &["analyst"])],
        )
        .await;

    std::fs::write(
        dir.join("a.csv"),
        "transaction_id,user_id,card_number,email,amount,created_at\n\
         f-1,cust-1,4111111111111111,one@files.example.org,10.5,2026-11-24T10:00:00Z\n\
         f-2,cust-2,4111111111111112,two@files.example.org,11,1795514400\n\
         f-3,cust-3,5500000000000004,,12.25,2026-11-24 10:00:00\n",
    )
    .unwrap();
    let nd: Vec<String> = (4..8)
        .map(|i| transaction(i).to_string().replace("e2e-", "f-"))
        .collect();
    std::fs::write(dir.join("b.ndjson"), nd.join("\n")).unwrap();
    std::fs::write(
        dir.join("c.json"),
        json!([transaction(8)]).to_string().replace("e2e-", "f-"),
    )
    .unwrap();
    let batch = RecordBatch::try_from_iter([
        (
            "transaction_id",
            Arc::new(StringArray::from(vec!["f-9", "f-10"])) as ArrayRef,
        ),
        (
            "user_id",
            Arc::new(StringArray::from(vec!["cust-9", "cust-10"])) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
        ),
        (
            "created_at",
            Arc::new(StringArray::from(vec![
                "2026-11-24T10:00:00Z",
                "2026-11-24T11:00:00Z",
            ])) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(dir.join("d.parquet")).unwrap();
    let mut w =
        deltalake::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .current_dir(dir)
            .args(["--config", "warden.toml", "ingest"])
            .args(args)
            .args([
                "--dataset",
                "payments",
                "--purpose",
                "fraud_detection",
                "--url",
                &server.base,
                "--batch",
                "2",
            ])
            .env("WARDEN_TOKEN", &tokens[0])
            .output()
            .unwrap()
    };
    let out = run(&["a.csv"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "one refused: {stdout} {stderr}");
    assert!(
        stdout.contains("3 records read, 2 accepted, 1 refused"),
        "{stdout}"
    );
    assert!(
        stderr.contains("record 2: card_number: not a card number"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("4111111111111112") && !stderr.contains("two@files"),
        "{stderr}"
    );
    for f in ["b.ndjson", "c.json", "d.parquet"] {
        let out = run(&[f]);
        assert!(
            out.status.success(),
            "{f}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&["a.csv", "--atomic"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the refused batch stops an atomic ingest"
    );
    let out = run(&["missing.csv"]);
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(dir)
        .args([
            "ingest",
            "a.csv",
            "--dataset",
            "payments",
            "--purpose",
            "fraud_detection",
            "--url",
            &server.base,
        ])
        .env_remove("WARDEN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no credentials");

    // Every accepted record is readable: 2 + 4 + 1 + 2 (the atomic run's first batch held
    // the refused record, so none of it was accepted).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = reqwest::Client::new()
            .get(format!(
                "{}/v1/datasets/payments/records?limit=1000",
                server.base
            ))
            .bearer_auth(&tokens[1])
            .header("x-purpose", "fraud_detection")
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        let ids: HashSet<String> = body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["transaction_id"].as_str().unwrap().to_owned())
            .collect();
        if ids.len() == 9 {
            for id in ["f-1", "f-3", "f-00004", "f-00007", "f-00008", "f-9", "f-10"] {
                assert!(ids.contains(id), "{id}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{ids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
    // `warden materialize` on the stopped installation.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(dir)
        .args(["--config", "warden.toml", "materialize"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("amounts: 1 rows"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .current_dir(dir)
        .args(["--config", "warden.toml", "materialize", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
