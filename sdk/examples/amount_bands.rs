//! An external stage: reads `payments` through a subscription, derives each payment's amount
//! band, writes the results into `payment_bands` and commits — all through the gateway, as
//! its own service identity (policy, purpose and audit apply; it holds no broker or store
//! credentials and sees only protected records).
//!
//! ```sh
//! WARDEN_URL=http://127.0.0.1:8080 WARDEN_CLIENT_ID=bands WARDEN_CLIENT_SECRET=… \
//!   cargo run -p warden-sdk --example amount_bands
//! ```

use serde_json::{json, Value};
use warden_sdk::client::{Client, ClientError};
use warden_sdk::{CommitRequest, PollRequest};

/// The consumer group of this stage.
pub const GROUP: &str = "amount_bands";

/// The band of an amount.
pub fn band(amount: f64) -> &'static str {
    match amount {
        a if a < 10.0 => "small",
        a if a < 100.0 => "medium",
        _ => "large",
    }
}

/// One round: poll, transform, write (all or nothing), commit. How many records it handled.
///
/// # Errors
/// Any refusal or transport failure; nothing is committed then, so the records come again.
pub async fn step(client: &Client) -> Result<usize, ClientError> {
    let batch = client
        .poll(
            "payments",
            GROUP,
            PollRequest {
                max: Some(500),
                wait_ms: Some(1000),
            },
        )
        .await?;
    if batch.records.is_empty() {
        return Ok(0);
    }
    let out: Vec<Value> = batch
        .records
        .iter()
        .map(|r| {
            let amount = r
                .fields
                .get("amount")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            json!({
                "transaction_id": r.fields.get("transaction_id"),
                "user_id": r.subject_ref,
                "band": band(amount),
                "created_at": r.fields.get("created_at"),
            })
        })
        .collect();
    client.ingest("payment_bands", &out, true).await?;
    client
        .commit("payments", GROUP, &CommitRequest::after(&batch.records))
        .await?;
    Ok(batch.records.len())
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("set {k}"));
    let client = Client::new(&var("WARDEN_URL")?)?
        .with_client_credentials(&var("WARDEN_CLIENT_ID")?, &var("WARDEN_CLIENT_SECRET")?)
        .await?
        .with_purpose("fraud_detection");
    loop {
        let n = step(&client).await?;
        if n > 0 {
            println!("{n} payments banded");
        }
    }
}
