//! A dataset's records: ingest (validate and protect, then publish to the dataset's stream)
//! and reads (from the document store, masked by role, a data subject's own rows only).

use std::collections::HashSet;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use warden_pipeline::docs::{Query as DocQuery, MAX_FIND};
use warden_pipeline::loader::collection_spec;
use warden_pipeline::record::StreamedRef;
use warden_pipeline::stream::Position;
use warden_policy::contract::Contract;
use warden_policy::protect::{ProtectedRecord, Rejection};
use warden_sdk::ErrorCode;

use super::data::{
    dataset, idempotency_key, protection_note, purpose, purpose_not_allowed, stated_purpose,
};
use super::noted;
use crate::auth::Principal;
use crate::error::{ApiError, Error};
use crate::middleware::{AuditNote, REQUEST_ID};
use crate::state::AppState;
use crate::store::IngestClaim;

/// Most records in one ingest request.
pub const MAX_INGEST_RECORDS: usize = 10_000;
/// Records a read returns unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// Topics this process has created (or found), so an ingest does not ask the broker each
/// time.
#[derive(Debug, Default)]
pub struct Topics(Mutex<HashSet<String>>);

impl Topics {
    pub(crate) async fn ensure(&self, app: &AppState, topic: &str) -> Result<(), Error> {
        let known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(topic);
        if !known {
            app.stream
                .ensure_topic(topic, app.config.streams.partitions)
                .await?;
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(topic.to_owned());
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    /// `partial` (default): accept what is valid, report the rest by index. `atomic`: all
    /// or nothing.
    #[serde(default)]
    pub mode: Option<String>,
}

/// Where an accepted record was published.
#[derive(Debug, Serialize)]
pub struct Published {
    pub index: usize,
    pub partition: i32,
    pub offset: i64,
}

/// `202` body of an ingest.
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    pub topic: String,
    pub accepted: usize,
    pub rejected: usize,
    pub positions: Vec<Published>,
    pub rejections: Vec<Rejection>,
}

/// Records of a body with their positions in it, and the items that are not records.
type Parsed = (Vec<(usize, Map<String, Value>)>, Vec<Rejection>);

/// The records of a body: a JSON array, or NDJSON (`application/x-ndjson`, one object a
/// line). Items that are not objects become rejections, by index; nothing is echoed.
fn parse_records(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let not_object = |index| Rejection {
        index,
        field: None,
        reason: "not a JSON object".to_owned(),
        code: None,
    };
    let mut records = Vec::new();
    let mut rejections = Vec::new();
    match content_type.as_str() {
        "application/json" => {
            let items: Vec<Value> = serde_json::from_slice(body).map_err(|_| {
                ApiError::new(
                    ErrorCode::MalformedJson,
                    "the body is not a JSON array of records",
                )
            })?;
            if items.len() > MAX_INGEST_RECORDS {
                return Err(too_many());
            }
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(m) => records.push((i, m)),
                    _ => rejections.push(not_object(i)),
                }
            }
        }
        "application/x-ndjson" | "application/jsonl" | "application/json-seq" => {
            let lines = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
            for (i, line) in lines.enumerate() {
                if i >= MAX_INGEST_RECORDS {
                    return Err(too_many());
                }
                match serde_json::from_slice::<Value>(line) {
                    Ok(Value::Object(m)) => records.push((i, m)),
                    _ => rejections.push(not_object(i)),
                }
            }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send application/json (an array of records) or application/x-ndjson",
            ))
        }
    }
    if records.is_empty() && rejections.is_empty() {
        return Err(ApiError::invalid("send at least one record"));
    }
    Ok((records, rejections))
}

fn too_many() -> ApiError {
    ApiError::invalid(format!(
        "at most {MAX_INGEST_RECORDS} records a request; split the batch or use `warden ingest`"
    ))
}

/// `POST /v1/datasets/{name}/records`: validates and protects records as the dataset's
/// contract says, publishes the accepted ones to the dataset's stream (keyed by
/// `subject_ref`) and answers `202` with their positions; rejections are listed by index.
/// With `?mode=atomic`, one rejection refuses the whole batch (`422`, nothing published).
pub async fn ingest(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut note = AuditNote::default().detail("dataset", name.clone());
    note.purpose = stated_purpose(&headers, &principal);
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    // A retry under the same Idempotency-Key gets the first answer (nothing is published
    // again); the same key with another request is refused.
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return noted(note, Err::<Response, _>(e)),
    };
    let replay = match &key {
        Some(k) => {
            let digest = ingest_digest(&name, params.mode.as_deref(), &body);
            claim(&app, &principal.id, k, &digest).await
        }
        None => Ok(None),
    };
    match replay {
        Ok(None) => {}
        Ok(Some(first)) => {
            return noted(
                note.detail("replayed", true),
                Ok::<_, ApiError>((first.0, Json(first.1)).into_response()),
            )
        }
        Err(e) => return noted(note, Err::<Response, _>(e)),
    }
    let result: Result<(StatusCode, Value), ApiError> = async {
        let contract = dataset(&app, &name)?;
        let purpose = purpose(&headers, &principal)?;
        let atomic = match params.mode.as_deref() {
            None | Some("partial") => false,
            Some("atomic") => true,
            Some(_) => return Err(ApiError::invalid("mode: partial or atomic")),
        };
        note = std::mem::take(&mut note).detail("mode", if atomic { "atomic" } else { "partial" });
        let (records, mut rejections) = parse_records(&headers, &body)?;
        let origin: Vec<usize> = records.iter().map(|(i, _)| *i).collect();
        let maps: Vec<Map<String, Value>> = records.into_iter().map(|(_, m)| m).collect();
        let mut out = app
            .protector
            .protect_owned(&contract, &purpose, maps)
            .await
            .map_err(|e| match e {
                warden_policy::Error::PurposeNotAllowed => purpose_not_allowed(),
                e => ApiError::from(Error::from(e)),
            })?;
        // Back to the positions of the request.
        for r in &mut out.rejections {
            r.index = origin[r.index];
        }
        rejections.append(&mut out.rejections);
        rejections.sort_by_key(|r| r.index);
        out.rejections = rejections;
        note = protection_note(&app, &contract.name, std::mem::take(&mut note), &out)
            .detail("records", out.records.len() + out.rejections.len());
        if atomic && !out.rejections.is_empty() {
            let body = json!({
                "error": {
                    "code": ErrorCode::RecordsRejected.as_str(),
                    "message": "some records were refused, so none was accepted (mode=atomic)",
                    "request_id": request_id,
                },
                "rejections": out.rejections,
            });
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, body));
        }
        let published = publish(&app, &contract, &request_id, &out.records).await?;
        note = std::mem::take(&mut note).detail("topic", app.topic(&contract));
        let positions = out
            .records
            .iter()
            .zip(published)
            .map(|((i, _), p)| Published {
                index: origin[*i],
                partition: p.partition,
                offset: p.offset,
            })
            .collect();
        let response = IngestResponse {
            topic: app.topic(&contract),
            accepted: out.records.len(),
            rejected: out.rejections.len(),
            positions,
            rejections: out.rejections,
        };
        let response = serde_json::to_value(response)
            .map_err(|e| ApiError::from(Error::Corrupt(format!("ingest answer: {e}"))))?;
        Ok((StatusCode::ACCEPTED, response))
    }
    .await;
    if let Some(k) = &key {
        // The answer is kept for a retry; a failure (nothing acknowledged) frees the key.
        let kept = match &result {
            Ok((status, body)) => {
                app.store
                    .finish_ingest(&principal.id, k, status.as_u16(), &body.to_string())
                    .await
            }
            Err(_) => app.store.release_ingest(&principal.id, k).await,
        };
        if let Err(e) = kept {
            tracing::error!(error = %e, "cannot record an ingest request's answer for its Idempotency-Key");
        }
    }
    noted(
        note,
        result.map(|(status, body)| (status, Json(body)).into_response()),
    )
}

/// Claims an ingest's Idempotency-Key: `None` when the request is to run, the first answer
/// for a retry of it, or why neither (the key in use, or used for another request).
async fn claim(
    app: &AppState,
    principal_id: &str,
    key: &str,
    digest: &[u8],
) -> Result<Option<(StatusCode, Value)>, ApiError> {
    let now = app.clock.now_micros();
    let conflict = |message| ApiError::new(ErrorCode::Conflict, message);
    match app
        .store
        .claim_ingest(principal_id, key, digest, now, now - IDEMPOTENCY_WINDOW)
        .await?
    {
        IngestClaim::New => Ok(None),
        IngestClaim::Answered { status, response } => Ok(Some((
            StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED),
            serde_json::from_str(&response).unwrap_or(Value::Null),
        ))),
        IngestClaim::InProgress => Err(conflict(
            "a request with this Idempotency-Key is in progress; retry later",
        )),
        IngestClaim::Mismatch => Err(conflict(
            "this Idempotency-Key was used for another request",
        )),
    }
}

/// How long an ingest's Idempotency-Key is remembered (microseconds): a day.
const IDEMPOTENCY_WINDOW: i64 = 24 * 3600 * 1_000_000;

/// What a retry must repeat exactly: the dataset, the mode and the body.
fn ingest_digest(dataset: &str, mode: Option<&str>, body: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [dataset.as_bytes(), mode.unwrap_or("partial").as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    h.finalize().to_vec()
}

/// Publishes protected records to the dataset's stream; their positions, in order.
async fn publish(
    app: &AppState,
    contract: &Contract,
    request_id: &str,
    records: &[(usize, ProtectedRecord)],
) -> Result<Vec<Position>, ApiError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let topic = app.topic(contract);
    app.topics
        .ensure(app, &topic)
        .await
        .map_err(ApiError::from)?;
    let out = records
        .iter()
        .map(|(_, r)| {
            StreamedRef {
                dataset: &contract.name,
                subject_ref: &r.subject_ref,
                contract_version: r.contract_version,
                fields: &r.fields,
            }
            .to_out(request_id)
        })
        .collect();
    app.stream
        .publish(&topic, out)
        .await
        .map_err(|e| ApiError::from(Error::from(e)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// A subject identifier (pseudonymized here) or a `subject_ref`.
    pub subject: Option<String>,
    /// From this time (inclusive): RFC 3339 or epoch seconds.
    pub from: Option<String>,
    /// Before this time (exclusive).
    pub to: Option<String>,
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `200` body of a read.
#[derive(Debug, Serialize)]
pub struct ReadResponse {
    pub records: Vec<Map<String, Value>>,
    /// Present when there may be more: pass it as `cursor`.
    pub next_cursor: Option<String>,
}

fn parse_time(name: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let parsed = match v.parse::<i64>() {
        Ok(secs) => Value::from(secs),
        Err(_) => Value::String(v.to_owned()),
    };
    warden_pipeline::record::time_micros(&parsed)
        .map(Some)
        .ok_or_else(|| ApiError::invalid(format!("{name}: an RFC 3339 time or epoch seconds")))
}

fn encode_cursor(ts: i64, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{ts}:{key}"))
}

fn decode_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::invalid("cursor: not a cursor from this API");
    if c.len() > 1024 {
        return Err(bad());
    }
    let text = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (ts, key) = text.split_once(':').ok_or_else(bad)?;
    Ok((ts.parse().map_err(|_| bad())?, key.to_owned()))
}

/// The `subject_ref` a data subject principal may read: its own.
pub(crate) async fn own_subject_ref(
    app: &AppState,
    principal: &Principal,
) -> Result<String, ApiError> {
    let record = app
        .store
        .principal_by_id(&principal.id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(ApiError::forbidden)?;
    subject_ref_of(app, &record.name).await
}

/// The `subject_ref` of a subject's identifier (a `subject_ref` stays as it is).
pub(crate) async fn subject_ref_of(app: &AppState, id: &str) -> Result<String, ApiError> {
    let refs = app
        .protector
        .subject_refs(&[id])
        .await
        .map_err(|e| ApiError::from(Error::from(e)))?;
    refs.into_iter().next().ok_or_else(ApiError::internal)
}

/// `GET /v1/datasets/{name}/records`: a page of the dataset's records from the document
/// store, in (time, key) order — card numbers masked (first six and last four at most, for
/// roles allowed `pan bin`), personal data decrypted for roles allowed `pii read` and masked
/// otherwise. A data subject sees only its own records. Audited durably, with the subject's
/// pseudonym when one is named.
pub async fn read(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Response {
    let mut note = AuditNote {
        purpose: stated_purpose(&headers, &principal),
        ..AuditNote::default()
    }
    .detail("dataset", name.clone());
    let result = async {
        let contract = dataset(&app, &name)?;
        if !contract.allows_purpose(&purpose(&headers, &principal)?) {
            return Err(purpose_not_allowed());
        }
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_FIND).contains(&limit) {
            return Err(ApiError::invalid(format!("limit: 1 to {MAX_FIND}")));
        }
        let asked = match params.subject.as_deref() {
            None => None,
            Some(s) if s.is_empty() || s.len() > 256 => {
                return Err(ApiError::invalid("subject: 1 to 256 bytes"))
            }
            Some(s) => Some(subject_ref_of(&app, s).await?),
        };
        let subject_ref = if principal.reads_as_subject() {
            // Row filter: a data subject reads its own records, whatever it asks for.
            let own = own_subject_ref(&app, &principal).await?;
            if asked.as_ref().is_some_and(|a| *a != own) {
                return Err(ApiError::forbidden());
            }
            Some(own)
        } else {
            asked
        };
        let query = DocQuery {
            subject_ref: subject_ref.clone(),
            from: parse_time("from", params.from.as_deref())?,
            to: parse_time("to", params.to.as_deref())?,
            after: params.cursor.as_deref().map(decode_cursor).transpose()?,
            limit,
        };
        let docs = app
            .documents
            .find(&collection_spec(&contract), &query)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))?;
        let next_cursor = (docs.len() == limit)
            .then(|| docs.last().map(|d| encode_cursor(d.ts, &d.key)))
            .flatten();
        let rights = super::data::view_rights(&app, &principal)?;
        let protected: Vec<ProtectedRecord> = docs
            .into_iter()
            .map(|d| ProtectedRecord {
                subject_ref: d.subject_ref,
                contract_version: d.contract_version,
                fields: d.fields,
            })
            .collect();
        let records = app
            .protector
            .view(&contract, rights, &protected)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))?;
        Ok((
            subject_ref,
            rights,
            ReadResponse {
                records,
                next_cursor,
            },
        ))
    }
    .await;
    let result = result.map(|(subject_ref, rights, response)| {
        note.subject_ref = subject_ref;
        note = std::mem::take(&mut note)
            .detail("returned", response.records.len())
            .detail("pii_clear", rights.pii_read)
            .detail("pan_bin", rights.pan_bin);
        Json(response)
    });
    noted(note, result)
}
