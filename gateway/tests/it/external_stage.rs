//! An external stage through the SDK: the example in `sdk/examples/amount_bands.rs` reads
//! payments through a subscription, writes payment bands, commits — against a gateway on a
//! real port, as its own service identity.

use std::time::{Duration, Instant};

use serde_json::json;
use warden_sdk::client::{Client, ClientError};
use warden_sdk::PrincipalKind;

use crate::support::{gateway, Backend};

#[allow(dead_code, unreachable_pub)]
#[path = "../../../sdk/examples/amount_bands.rs"]
mod amount_bands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_stage_bands_payments_through_the_gateway() {
    let g = gateway(Backend::Sqlite).await;
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let (_, analyst) = g
        .principal_token(PrincipalKind::User, &["analyst"], false)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(warden_gateway::serve(g.state.clone(), listener, async {
        stopped.await.ok();
    }));

    let client = Client::new(&base)
        .unwrap()
        .with_token(stage)
        .with_purpose("fraud_detection");
    let payments: Vec<_> = (0..60)
        .map(|i| json!({"transaction_id": format!("b-{i}"), "user_id": format!("u-{}", i % 4),
            "card_number": "4111111111111111", "amount": i * 3, "created_at": "2026-11-24T10:00:00Z"}))
        .collect();
    let r = client.ingest("payments", &payments, true).await.unwrap();
    assert_eq!(r.accepted, 60);

    // The stage runs until every payment is banded; a second round finds nothing new.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handled = 0;
    while handled < 60 {
        assert!(Instant::now() < deadline, "banded {handled} of 60");
        handled += amount_bands::step(&client).await.unwrap();
    }
    assert_eq!(handled, 60);
    assert_eq!(
        amount_bands::step(&client).await.unwrap(),
        0,
        "committed: nothing comes again"
    );

    // The derived records, read back as an analyst: same subjects, bands from the amounts.
    let reader = Client::new(&base)
        .unwrap()
        .with_token(analyst)
        .with_purpose("fraud_detection");
    let deadline = Instant::now() + Duration::from_secs(60);
    let bands = loop {
        let page = reader
            .read("payment_bands", &[("limit", "1000")])
            .await
            .unwrap();
        if page.records.len() == 60 {
            break page.records;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 60 bands loaded",
            page.records.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let original = reader
        .read("payments", &[("limit", "1000")])
        .await
        .unwrap()
        .records;
    for b in &bands {
        let p = original
            .iter()
            .find(|p| p["transaction_id"] == b["transaction_id"])
            .unwrap();
        assert_eq!(
            p["user_id"], b["user_id"],
            "one subject across both datasets"
        );
        let amount = p["amount"].as_f64().unwrap();
        assert_eq!(b["band"], amount_bands::band(amount));
    }
    let rows = reader
        .query("SELECT band, count(*) AS n FROM payment_bands GROUP BY band ORDER BY band")
        .await;
    // The lake loader may still be behind the document loader; the query itself must work.
    assert!(rows.is_ok(), "{rows:?}");

    // Refusals come back as the API's error body; an analyst cannot subscribe.
    match reader.poll("payments", "x", Default::default()).await {
        Err(ClientError::Api { status: 403, body }) => {
            assert_eq!(body.error.code.as_str(), "forbidden")
        }
        other => panic!("{other:?}"),
    }
    match client
        .poll("payments", "Bad-Group", Default::default())
        .await
    {
        Err(ClientError::Api { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Group names as stages name themselves, hyphens included.
    let fresh = client
        .poll("payments", "fraud-scorer", Default::default())
        .await
        .unwrap();
    assert!(
        !fresh.records.is_empty(),
        "a new group reads from the start"
    );
    stop.send(()).ok();
    server.await.unwrap().unwrap();
}
