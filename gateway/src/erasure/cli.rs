//! `warden erase`, `warden erasure status` and `warden receipt verify`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use warden_sdk::client::Client;

use super::receipt;
use super::STEPS;

/// One line about a job: id, state, step, deadline.
pub fn summary(job: &Value) -> String {
    let s = |k: &str| job[k].as_str().unwrap_or("-").to_owned();
    let overdue = if job["overdue"].as_bool() == Some(true) {
        " OVERDUE"
    } else {
        ""
    };
    let error = job["last_error"]
        .as_str()
        .map(|e| format!(" (retrying after: {e}; attempts {})", job["attempts"]))
        .unwrap_or_default();
    format!(
        "{} {} {} step {} due {}{overdue}{error}",
        s("job"),
        s("subject_ref"),
        s("state"),
        s("step"),
        s("due_at"),
    )
}

/// Asks for an erasure and, with `wait`, follows the job with a progress bar over its steps
/// until it completes; returns the job as last seen.
///
/// # Errors
/// The gateway's refusal or unreachable gateway.
pub async fn erase(
    client: &Client,
    subject: &str,
    idempotency_key: Option<&str>,
    wait: Option<Duration>,
    err: &mut dyn Write,
) -> anyhow::Result<Value> {
    let mut job = client.erase(subject, idempotency_key).await?;
    writeln!(err, "{}", summary(&job))?;
    let Some(wait) = wait else {
        return Ok(job);
    };
    let id = job["job"]
        .as_str()
        .context("the gateway answered without a job id")?
        .to_owned();
    let bar = indicatif::ProgressBar::new(STEPS.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = std::time::Instant::now() + wait;
    while job["state"] != "completed" {
        let done = job["steps_done"].as_array().map_or(0, Vec::len);
        bar.set_position(done as u64);
        // A step that waits (the lake's vacuum keeps rewritten files for older readers)
        // says until when.
        let until = job["next_attempt_at"]
            .as_str()
            .filter(|_| job["state"] == "waiting")
            .map(|t| format!(", next at {t}"))
            .unwrap_or_default();
        bar.set_message(format!(
            "{} ({}{until})",
            job["step"].as_str().unwrap_or("-"),
            job["state"].as_str().unwrap_or("-")
        ));
        if std::time::Instant::now() > deadline {
            bar.abandon();
            anyhow::bail!(
                "the erasure is still running; follow it with `warden erasure status {id}`"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        job = match client.erasure(&id).await {
            Ok(job) => job,
            // A token expires (15 minutes by default) before a job that waits for the
            // vacuum completes: the job goes on; its receipt can be fetched later.
            Err(warden_sdk::client::ClientError::Api { status: 401, .. }) => {
                bar.abandon();
                anyhow::bail!(
                    "the token expired while following the job; it goes on: fetch its receipt with \
                     `warden erasure status {id} --receipt FILE` and a new token"
                );
            }
            Err(e) => return Err(e.into()),
        };
    }
    bar.finish_with_message("completed");
    Ok(job)
}

/// Verifies a receipt file against a public key (hex, as `warden audit public-key` prints).
///
/// # Errors
/// An unreadable file, a malformed key, or a receipt that does not verify.
pub fn verify_receipt(
    path: &std::path::Path,
    public_key: &str,
) -> anyhow::Result<receipt::Receipt> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, key) = crate::cli::parse_public_key(public_key)?;
    // A job as the API shows it carries the receipt inside.
    let text = match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("receipt").is_some_and(Value::is_object) => v["receipt"].to_string(),
        _ => text,
    };
    Ok(receipt::verify(&text, &key)?)
}
