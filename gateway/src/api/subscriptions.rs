//! Subscriptions for external stages: `POST /v1/datasets/{name}/subscriptions/{group}/poll`
//! and `.../commit`. A stage reads a dataset's protected records through the gateway (never
//! from the broker: it holds no stream credentials), transforms them and writes the results
//! into the next dataset with an ingest — authorized and audited as the stage's identity.
//!
//! The consumer group is the stage's own: `stage-<principal id>-<dataset>-<group>`, so no
//! principal can move another's positions. A subscription idle for five minutes is closed; its uncommitted
//! records are delivered again to the next poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use warden_pipeline::record::H_DATASET;
use warden_pipeline::stream::Subscription;
use warden_pipeline::StreamedRecord;
use warden_sdk::{CommitRequest, PollRequest, PollResponse, StreamRecord};

use super::data::dataset;
use super::noted;
use crate::auth::Principal;
use crate::error::{ApiError, Error};
use crate::extract::ApiJson;
use crate::middleware::AuditNote;
use crate::state::AppState;

/// A subscription unused this long is closed.
const IDLE: Duration = Duration::from_secs(300);
/// Most records one poll returns.
const MAX_POLL: usize = 1000;
/// Longest a poll waits for a first record.
const MAX_WAIT: Duration = Duration::from_secs(10);

struct Held {
    sub: Box<dyn Subscription>,
    used: Instant,
}

/// Most subscriptions open at once in this process (each Kafka one is a consumer).
const MAX_OPEN: usize = 256;

/// The open subscriptions of this process, by consumer group. Created under the map's lock,
/// so two first polls of a group share one member.
#[derive(Default)]
pub struct Subscriptions(tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Held>>>>);

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions").finish_non_exhaustive()
    }
}

impl Subscriptions {
    async fn get(
        &self,
        app: &AppState,
        topic: &str,
        group: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Held>>, ApiError> {
        let key = format!("{topic}\u{0}{group}");
        let mut open = self.0.lock().await;
        // Close the idle ones (their members leave the group; a dropped subscription closes
        // off the runtime's threads).
        open.retain(|_, h| !h.try_lock().is_ok_and(|h| h.used.elapsed() >= IDLE));
        if let Some(h) = open.get(&key) {
            return Ok(Arc::clone(h));
        }
        if open.len() >= MAX_OPEN {
            return Err(ApiError::new(
                warden_sdk::ErrorCode::RateLimited,
                "too many open subscriptions; retry later",
            ));
        }
        app.topics_ensure(topic).await.map_err(ApiError::from)?;
        let sub = app
            .stream
            .subscribe(topic, group)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))?;
        let held = Arc::new(tokio::sync::Mutex::new(Held {
            sub,
            used: Instant::now(),
        }));
        open.insert(key, Arc::clone(&held));
        Ok(held)
    }
}

/// A stage's group name: 1 to 64 of a-z, 0-9, `_` and `-`, starting with a letter (the
/// names stages give themselves, `fraud-scorer`).
fn valid_group(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The consumer group of a stage's subscription to a dataset: the principal's and the
/// dataset's own (datasets may share a stream).
fn group_name(
    app: &AppState,
    principal: &Principal,
    dataset: &str,
    group: &str,
) -> Result<String, ApiError> {
    if !valid_group(group) {
        return Err(ApiError::invalid(
            "group: 1 to 64 of a-z, 0-9, _ and -, starting with a letter",
        ));
    }
    Ok(format!(
        "{}stage-{}-{dataset}-{group}",
        app.config.streams.topic_prefix, principal.id
    ))
}

/// `POST /v1/datasets/{name}/subscriptions/{group}/poll`.
pub async fn poll(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, group)): Path<(String, String)>,
    ApiJson(req): ApiJson<PollRequest>,
) -> Response {
    let note = AuditNote::default().detail("dataset", name.clone()).detail(
        "group",
        if valid_group(&group) {
            group.clone()
        } else {
            String::new()
        },
    );
    let result = async {
        let contract = dataset(&app, &name)?;
        let group = group_name(&app, &principal, &contract.name, &group)?;
        let max = req.max.unwrap_or(100);
        if !(1..=MAX_POLL).contains(&max) {
            return Err(ApiError::invalid(format!("max: 1 to {MAX_POLL}")));
        }
        let wait = Duration::from_millis(req.wait_ms.unwrap_or(1000));
        if wait > MAX_WAIT {
            return Err(ApiError::invalid("wait_ms: at most 10000"));
        }
        let topic = app.topic(&contract);
        let held = app.subscriptions.get(&app, &topic, &group).await?;
        let mut held = held.lock().await;
        held.used = Instant::now();
        let messages = held
            .sub
            .poll(max, wait)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))?;
        let records = messages
            .iter()
            .filter(|m| m.header(H_DATASET).is_none_or(|d| d == contract.name))
            .filter_map(|m| {
                let r = StreamedRecord::from_message(m).ok().flatten()?;
                (r.dataset == contract.name).then_some(StreamRecord {
                    partition: m.partition,
                    offset: m.offset,
                    subject_ref: r.subject_ref,
                    contract_version: r.contract_version,
                    fields: r.fields,
                })
            })
            .collect();
        Ok(PollResponse { records })
    }
    .await;
    let note = match &result {
        Ok(r) => note.detail("records", r.records.len()),
        Err(_) => note,
    };
    noted(note, result.map(Json))
}

/// `POST /v1/datasets/{name}/subscriptions/{group}/commit`.
pub async fn commit(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((name, group)): Path<(String, String)>,
    ApiJson(req): ApiJson<CommitRequest>,
) -> Response {
    let note = AuditNote::default()
        .detail("dataset", name.clone())
        .detail("partitions", req.offsets.len());
    let result = async {
        let contract = dataset(&app, &name)?;
        let group = group_name(&app, &principal, &contract.name, &group)?;
        if req.offsets.is_empty() || req.offsets.len() > 1024 {
            return Err(ApiError::invalid("offsets: 1 to 1024 positions"));
        }
        if req.offsets.iter().any(|o| o.partition < 0 || o.offset < 0) {
            return Err(ApiError::invalid(
                "offsets: partitions and offsets are not negative",
            ));
        }
        let topic = app.topic(&contract);
        let held = app.subscriptions.get(&app, &topic, &group).await?;
        let mut held = held.lock().await;
        held.used = Instant::now();
        let next: Vec<(i32, i64)> = req
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect();
        held.sub
            .commit_offsets(&next)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))?;
        Ok(Json(serde_json::json!({ "committed": next.len() })))
    }
    .await;
    noted(note, result)
}
