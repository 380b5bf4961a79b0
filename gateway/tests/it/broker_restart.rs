//! A broker restart mid-stream loses nothing acknowledged: a tansu broker of the test's own,
//! storing its log in S3 (moto), is killed and started again between two ingests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use warden_sdk::PrincipalKind;

use crate::support::{gateway_with, Backend};

struct Broker {
    child: Child,
    port: u16,
    bucket: String,
}

impl Broker {
    /// A broker on a free port, storing its log in a new bucket.
    fn fresh() -> Self {
        let bucket = format!("tansu-{}", uuid::Uuid::new_v4().simple());
        create_bucket(&bucket);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start(port, bucket)
    }

    fn start(port: u16, bucket: String) -> Self {
        let tansu = std::env::var("WARDEN_TEST_TANSU")
            .expect("WARDEN_TEST_TANSU is not set: run the tests with scripts/test.sh");
        let endpoint = std::env::var("WARDEN_TEST_AWS_ENDPOINT")
            .expect("WARDEN_TEST_AWS_ENDPOINT is not set: run the tests with scripts/test.sh");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &format!("s3://{bucket}/")])
            .envs([
                ("AWS_ENDPOINT", endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ALLOW_HTTP", "true"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            bucket,
        }
    }

    /// `host:port` of the broker.
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no chance to flush anything it had not made durable.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Killed, then started again on the same port and storage.
    fn restart(self) -> Self {
        let (port, bucket) = (self.port, self.bucket.clone());
        self.kill();
        Self::start(port, bucket)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn create_bucket(bucket: &str) {
    let endpoint = std::env::var("WARDEN_TEST_AWS_ENDPOINT").unwrap();
    let status = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "test:test",
            "-X",
            "PUT",
        ])
        .arg(format!("{endpoint}/{bucket}"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot create bucket {bucket}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_acknowledged() {
    let broker = Broker::fresh();
    let g = gateway_with(Backend::Sqlite, |c| {
        c.streams.url = format!("kafka://{}", broker.address());
        // One record a batch (tansu's fetch gap, see the e2e tests), and each batch costs this
        // broker three writes to the S3 emulator, fewer a second as its log grows: 100 records
        // take seconds, and under a loaded machine more than the 10 s a delivery is given by
        // default (the ingest then answered 503, nothing acknowledged). As in the e2e tests,
        // deliveries get 25 s here, within the 30 s request timeout.
        c.streams
            .producer
            .insert("batch.num.messages".into(), "1".into());
        c.streams
            .producer
            .insert("message.timeout.ms".into(), "25000".into());
    })
    .await;
    let s = &g.state;
    s.start_loaders();
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let tx = |i: usize| {
        json!({"transaction_id": format!("r-{i}"), "user_id": format!("u-{}", i % 9),
        "card_number": "4111111111111111", "amount": i, "created_at": "2026-11-24T10:00:00Z"})
    };
    let ingest = |range: std::ops::Range<usize>| {
        let body = serde_json::Value::Array(range.map(tx).collect());
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/datasets/payments/records")
            .header("authorization", format!("Bearer {stage}"))
            .header("content-type", "application/json")
            .header("x-purpose", "fraud_detection")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        g.send(req)
    };
    let r = ingest(0..100).await;
    assert_eq!(r.status, 202, "{r:?}");

    // Killed mid-stream (the loaders are reading), started again on the same storage.
    let broker = broker.restart();
    let r = ingest(100..200).await;
    assert_eq!(r.status, 202, "{r:?}");

    let spec = warden_pipeline::loader::collection_spec(&s.datasets.get("payments").unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let docs = s.documents.count(&spec, None).await.unwrap();
        let lake = s
            .loaders
            .stats("payments", "lake")
            .map_or(0, |l| l.stored.load(std::sync::atomic::Ordering::Relaxed));
        if docs == 200 && lake == 200 {
            break;
        }
        assert!(
            docs <= 200 && lake <= 200,
            "duplicates: {docs} documents, {lake} lake rows"
        );
        assert!(
            Instant::now() < deadline,
            "after the restart: {docs} documents, {lake} lake rows of 200"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An orderly stop while the broker is up: the loaders commit and leave their groups.
    tokio::time::timeout(Duration::from_secs(60), s.shutdown())
        .await
        .expect("the gateway did not shut down within 60 s");
    drop(broker);
}

/// librdkafka's close (commit the stored positions, leave the group) waits for the broker:
/// with the broker dead, 10 s on this machine and, under load, for good. A consumer closed on
/// a runtime thread blocked it that long (a loader's, and a gateway's shutdown with it). Now
/// `close` waits `wait` at most and a dropped subscription closes off the caller's thread.
/// The 5 s bounds below are ten times the wait, and half what librdkafka takes at best.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_closes_when_its_broker_is_gone() {
    use warden_pipeline::stream::{kafka::KafkaStream, OutRecord, Stream};

    let broker = Broker::fresh();
    // One record a batch, as everywhere tansu serves a group resuming from a commit.
    let stream =
        KafkaStream::with_options(&broker.address(), 1, &[("batch.num.messages", "1")]).unwrap();
    stream.ensure_topic("t", 2).await.unwrap();
    let records = (0..20)
        .map(|i| OutRecord {
            key: format!("k{i}"),
            value: Some(b"{}".to_vec()),
            headers: Vec::new(),
        })
        .collect();
    stream.publish("t", records).await.unwrap();
    let mut subs = Vec::new();
    for group in ["closed", "dropped"] {
        let mut sub = stream.subscribe("t", group).await.unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < 20 {
            assert!(
                Instant::now() < deadline,
                "{group}: {} of 20 records",
                got.len()
            );
            got.extend(sub.poll(20, Duration::from_millis(500)).await.unwrap());
        }
        sub.commit(&got).await.unwrap();
        subs.push(sub);
    }
    broker.kill();

    // Each on a thread (and runtime) of its own, so that one blocking fails the test instead
    // of hanging it.
    let dropped = subs.pop().unwrap();
    let closed = subs.pop().unwrap();
    off_thread(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(closed.close(Duration::from_millis(500)));
    })
    .recv_timeout(Duration::from_secs(5))
    .expect("close(0.5 s) was still waiting for the dead broker after 5 s");
    off_thread(move || drop(dropped))
        .recv_timeout(Duration::from_secs(5))
        .expect("dropping the subscription blocked on the dead broker for 5 s");
}

/// Runs `f` on a new thread; the receiver hears when it returned.
fn off_thread(f: impl FnOnce() + Send + 'static) -> std::sync::mpsc::Receiver<()> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        done.send(()).ok();
    });
    finished
}
