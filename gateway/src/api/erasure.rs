//! Data subjects' rights: erasure requests and their jobs (Art. 17), access and portability
//! exports (Art. 15 and 20), legal holds.
//!
//! `{id}` in `/v1/subjects/{id}/...` is `me` (a data subject itself), a `subject_ref`, or the
//! subject's identifier (the contract's `pii.id` value), turned into its `subject_ref` at
//! once: the audit log, the job and the receipt name the subject by pseudonym only, and the
//! request log shows route templates, never paths.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use warden_pipeline::loader::collection_spec;
use warden_policy::contract::Contract;
use warden_policy::protect::{is_subject_ref, ProtectedRecord, ViewRights};
use warden_sdk::ErrorCode;

use super::noted;
use super::records::{own_subject_ref, subject_ref_of};
use crate::auth::Principal;
use crate::erasure::{holds_against, ListFilter, NewRequest, Requested};
use crate::error::{ApiError, Error};
use crate::middleware::AuditNote;
use crate::state::AppState;

/// Longest identifier, idempotency key or reason accepted.
const MAX_ID: usize = 256;
const MAX_REASON: usize = 1000;
/// Most records of one store and dataset in one export.
const MAX_EXPORT: u64 = 1_000_000;

fn api(e: impl Into<Error>) -> ApiError {
    ApiError::from(e.into())
}

/// Who asks, about whom: the subject's pseudonym, and whether the caller is that subject.
/// A data subject may name only itself; anyone else (the DPO) needs a fresh second factor.
async fn resolve(
    app: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(String, bool), ApiError> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(ApiError::invalid(format!(
            "id: 1 to {MAX_ID} characters: me, a subject_ref or the subject's identifier"
        )));
    }
    if principal.reads_as_subject() {
        let own = own_subject_ref(app, principal).await?;
        let asked = if id == "me" {
            own.clone()
        } else {
            subject_ref_of(app, id).await?
        };
        if asked != own {
            return Err(ApiError::forbidden());
        }
        return Ok((own, true));
    }
    if id == "me" {
        return Err(ApiError::invalid(
            "id: `me` is for data subjects; name the subject",
        ));
    }
    if !principal.mfa_fresh(app.clock.now_secs(), app.config.auth.mfa_window) {
        return Err(ApiError::mfa_required());
    }
    Ok((subject_ref_of(app, id).await?, false))
}

/// `POST /v1/subjects/{id}/erasure`: asks for a subject's erasure. 202 with the new job, or
/// 200 with the job already answering it (the same subject asked before, or the same
/// `Idempotency-Key`). 409 `legal_hold` when a hold covers the subject or one of its datasets.
pub async fn request(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    let mut note = AuditNote::default();
    let result = async {
        let (subject_ref, own) = resolve(&app, &principal, &id).await?;
        note.subject_ref = Some(subject_ref.clone());
        let key = super::data::idempotency_key(&headers)?;
        if app
            .erasures
            .by_subject(&subject_ref)
            .await
            .map_err(api)?
            .is_none()
        {
            let holds = holds_against(&app, &subject_ref).await.map_err(api)?;
            if let Some((scope, target, reason)) = holds.first() {
                note.details.insert("refused".into(), json!("legal_hold"));
                note.details.insert("hold_scope".into(), json!(scope));
                let what = if scope == "dataset" {
                    format!("dataset {target}")
                } else {
                    "this subject".to_owned()
                };
                return Err(ApiError::new(
                    ErrorCode::LegalHold,
                    format!("a legal hold on {what} stops the erasure: {reason}"),
                ));
            }
        }
        // The subject's own login account, renamed to its pseudonym by the job.
        let account = if own {
            Some(principal.id.clone())
        } else if is_subject_ref(&id) {
            None
        } else {
            app.store
                .principal_by_name(&id)
                .await
                .map_err(api)?
                .filter(|p| {
                    p.kind == warden_sdk::PrincipalKind::Subject
                        || p.roles.iter().any(|r| r == "subject")
                })
                .map(|p| p.id)
        };
        let requested = app
            .erasures
            .request(
                &NewRequest {
                    subject_ref: &subject_ref,
                    idempotency_key: key.as_deref(),
                    requested_by: &principal.id,
                    requested_as: if own { "subject" } else { "dpo" },
                    account: account.as_deref(),
                },
                app.clock.now_micros(),
                app.config.erasure.deadline,
            )
            .await
            .map_err(api)?;
        let (status, job) = match requested {
            // The worker picks it up within a second: after this answer and its audit event.
            Requested::Created(job) => (StatusCode::ACCEPTED, job),
            Requested::Existing(job) => (StatusCode::OK, job),
        };
        note.details.insert("job".into(), json!(job.id));
        note.details
            .insert("created".into(), json!(status == StatusCode::ACCEPTED));
        Ok((status, Json(job.view(app.clock.now_micros()))))
    }
    .await;
    noted(note, result)
}

/// `GET /v1/erasure/{job}`: a job's state, per-store progress and deadline (and its receipt
/// once completed). A data subject sees only its own job. Whoever asked for a job follows it
/// without a fresh second factor (it was given for the request; the job shows counts and
/// the pseudonym only, and its wait for the lake's vacuum outlasts the factor's window);
/// anyone else needs one.
pub async fn status(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(job): Path<String>,
) -> axum::response::Response {
    let mut note = AuditNote::default();
    let result = async {
        if job.len() > MAX_ID {
            return Err(ApiError::not_found());
        }
        let found = app
            .erasures
            .get(&job)
            .await
            .map_err(api)?
            .ok_or_else(ApiError::not_found)?;
        if principal.reads_as_subject() {
            if own_subject_ref(&app, &principal).await? != found.subject_ref {
                return Err(ApiError::not_found());
            }
        } else if found.requested_by != principal.id
            && !principal.mfa_fresh(app.clock.now_secs(), app.config.auth.mfa_window)
        {
            return Err(ApiError::mfa_required());
        }
        note.subject_ref = Some(found.subject_ref.clone());
        Ok(Json(found.view(app.clock.now_micros())))
    }
    .await;
    noted(note, result)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub state: Option<String>,
    pub overdue: Option<bool>,
    pub limit: Option<u32>,
}

/// `GET /v1/erasure?state=&overdue=`: the DPO's list of erasure jobs, oldest first.
pub async fn list(
    State(app): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = &params.state {
        if !["pending", "running", "waiting", "held", "completed"].contains(&s.as_str()) {
            return Err(ApiError::invalid(
                "state: pending, running, waiting, held or completed",
            ));
        }
    }
    let now = app.clock.now_micros();
    let jobs = app
        .erasures
        .list(
            &ListFilter {
                state: params.state,
                overdue: params.overdue,
                limit: params.limit.unwrap_or(100),
            },
            now,
        )
        .await
        .map_err(api)?;
    Ok(Json(json!({
        "jobs": jobs.iter().map(|j| j.view(now)).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    pub days: u32,
    pub reason: String,
}

/// `POST /v1/erasure/{job}/extend`: extends the deadline (Art. 12(3)), with a reason that the
/// job and the audit log record.
pub async fn extend(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(job): Path<String>,
    Json(body): Json<ExtendBody>,
) -> axum::response::Response {
    let mut note = AuditNote::default();
    let result = async {
        if job.len() > MAX_ID {
            return Err(ApiError::not_found());
        }
        if !(1..=60).contains(&body.days) {
            return Err(ApiError::invalid("days: 1 to 60"));
        }
        let reason = body.reason.trim();
        if reason.is_empty() || reason.len() > MAX_REASON {
            return Err(ApiError::invalid(format!(
                "reason: 1 to {MAX_REASON} characters"
            )));
        }
        let extended = app
            .erasures
            .extend(
                &job,
                &principal.id,
                body.days,
                reason,
                app.clock.now_micros(),
                app.config.erasure.max_extension,
            )
            .await
            .map_err(|e| match e {
                Error::Invalid(m) if m.starts_with("no such") => ApiError::not_found(),
                e => api(e),
            })?;
        note.subject_ref = Some(extended.subject_ref.clone());
        note.details.insert("job".into(), json!(extended.id));
        note.details.insert("days".into(), json!(body.days));
        // The reason itself stays in the job (free text could name someone).
        note.details
            .insert("extension".into(), json!(extended.extensions.len()));
        Ok(Json(extended.view(app.clock.now_micros())))
    }
    .await;
    noted(note, result)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// `json` (default) or `csv` (then `dataset` is required).
    pub format: Option<String>,
    pub dataset: Option<String>,
}

/// `GET /v1/subjects/{id}/export`: the subject's records from every store (the document
/// store and the lake), decrypted for the subject itself (or the DPO, with a fresh second
/// factor), card numbers masked; JSON, or CSV for one dataset. Audited durably.
pub async fn export(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    Query(params): Query<ExportParams>,
) -> axum::response::Response {
    let mut note = AuditNote::default();
    let result = async {
        let format = params.format.as_deref().unwrap_or("json");
        if format != "json" && format != "csv" {
            return Err(ApiError::invalid("format: json or csv"));
        }
        if format == "csv" && params.dataset.is_none() {
            return Err(ApiError::invalid("dataset: required with format=csv"));
        }
        let (subject_ref, own) = resolve(&app, &principal, &id).await?;
        note.subject_ref = Some(subject_ref.clone());
        let datasets: Vec<std::sync::Arc<Contract>> = match &params.dataset {
            Some(name) => vec![app.datasets.get(name).ok_or_else(ApiError::not_found)?],
            None => app.datasets.all(),
        };
        // The subject gets its own data in clear (Art. 15); anyone else by the one rule of
        // reads. Card numbers stay masked to the last four either way.
        let rights = ViewRights {
            pii_read: own || super::data::view_rights(&app, &principal)?.pii_read,
            pan_bin: false,
        };
        let mut out = Map::new();
        let mut returned = 0usize;
        for contract in &datasets {
            let documents = subject_documents(&app, contract, &subject_ref).await?;
            let documents = app
                .protector
                .view(contract, rights, &documents)
                .await
                .map_err(api)?;
            let lake = lake_records(&app, contract, &subject_ref).await?;
            let lake = app
                .protector
                .view(contract, rights, &lake)
                .await
                .map_err(api)?;
            returned += documents.len() + lake.len();
            if documents.is_empty() && lake.is_empty() {
                continue;
            }
            out.insert(
                contract.name.clone(),
                json!({"documents": documents, "lake": lake}),
            );
        }
        note.details.insert("returned".into(), json!(returned));
        note.details.insert("format".into(), json!(format));
        match format {
            "json" => Ok(Json(json!({
                "subject_ref": subject_ref,
                "exported_at": warden_policy::timefmt::micros_to_rfc3339(app.clock.now_micros()),
                "datasets": out,
            }))
            .into_response()),
            "csv" => {
                let Some(name) = &params.dataset else {
                    return Err(ApiError::internal());
                };
                let rows = out
                    .get(name)
                    .and_then(|d| d["documents"].as_array().cloned())
                    .unwrap_or_default();
                let contract = &datasets[0];
                Ok((
                    [(CONTENT_TYPE, "text/csv; charset=utf-8")],
                    to_csv(contract, &rows).map_err(|_| ApiError::internal())?,
                )
                    .into_response())
            }
            _ => Err(ApiError::invalid("format: json or csv")),
        }
    }
    .await;
    noted(note, result)
}

async fn subject_documents(
    app: &AppState,
    contract: &Contract,
    subject_ref: &str,
) -> Result<Vec<ProtectedRecord>, ApiError> {
    let spec = collection_spec(contract);
    let mut q = warden_pipeline::docs::Query {
        subject_ref: Some(subject_ref.to_owned()),
        limit: warden_pipeline::docs::MAX_FIND,
        ..warden_pipeline::docs::Query::default()
    };
    let mut out = Vec::new();
    loop {
        let page = app.documents.find(&spec, &q).await.map_err(api)?;
        let Some(last) = page.last() else { break };
        q.after = Some((last.ts, last.key.clone()));
        out.extend(page.into_iter().map(|d| ProtectedRecord {
            subject_ref: d.subject_ref,
            contract_version: d.contract_version,
            fields: d.fields,
        }));
        if out.len() as u64 > MAX_EXPORT {
            return Err(ApiError::invalid("the export is too large for one answer"));
        }
    }
    Ok(out)
}

/// The subject's lake rows as protected records.
async fn lake_records(
    app: &AppState,
    contract: &Contract,
    subject_ref: &str,
) -> Result<Vec<ProtectedRecord>, ApiError> {
    if app
        .lake
        .count_subject(contract, subject_ref)
        .await
        .map_err(api)?
        > MAX_EXPORT
    {
        return Err(ApiError::invalid("the export is too large for one answer"));
    }
    let batches = app
        .lake
        .subject_rows(contract, subject_ref)
        .await
        .map_err(api)?;
    let mut writer = deltalake::arrow::json::ArrayWriter::new(Vec::new());
    for b in &batches {
        writer.write(b).map_err(|_| ApiError::internal())?;
    }
    writer.finish().map_err(|_| ApiError::internal())?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Map<String, Value>> =
        serde_json::from_slice(&bytes).map_err(|_| ApiError::internal())?;
    Ok(rows
        .into_iter()
        .map(|mut r| {
            let subject_ref = r
                .remove(warden_pipeline::lake::SUBJECT_REF)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            r.remove(warden_pipeline::lake::SUBJECT_BUCKET);
            let contract_version = r
                .remove(warden_pipeline::lake::CONTRACT_VERSION)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0);
            ProtectedRecord {
                subject_ref,
                contract_version,
                fields: r,
            }
        })
        .collect())
}

/// CSV of one dataset's records, columns in contract order.
fn to_csv(contract: &Contract, rows: &[Value]) -> Result<Vec<u8>, csv::Error> {
    let columns: Vec<&String> = contract.fields.keys().collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&columns)?;
    for r in rows {
        let record: Vec<String> = columns
            .iter()
            .map(|c| match &r[c.as_str()] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect();
        w.write_record(&record)?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// A dataset name, or a subject (`subject_ref` or identifier): exactly one.
    pub dataset: Option<String>,
    pub subject: Option<String>,
    pub reason: String,
}

/// `POST /v1/legal-holds`: places a hold; erasures it covers are refused with its reason.
pub async fn place_hold(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<HoldBody>,
) -> axum::response::Response {
    let mut note = AuditNote::default();
    let result = async {
        let reason = body.reason.trim();
        if reason.is_empty() || reason.len() > MAX_REASON {
            return Err(ApiError::invalid(format!(
                "reason: 1 to {MAX_REASON} characters"
            )));
        }
        let (scope, target) = match (&body.dataset, &body.subject) {
            (Some(d), None) => {
                if app.datasets.get(d).is_none() {
                    return Err(ApiError::invalid(format!("dataset: no dataset {d:?}")));
                }
                ("dataset", d.clone())
            }
            (None, Some(s)) if !s.is_empty() && s.len() <= MAX_ID => {
                let sr = subject_ref_of(&app, s).await?;
                note.subject_ref = Some(sr.clone());
                ("subject", sr)
            }
            _ => {
                return Err(ApiError::invalid(
                    "exactly one of dataset or subject (1 to 256 characters)",
                ))
            }
        };
        let id = app
            .erasures
            .hold(
                scope,
                &target,
                reason,
                &principal.id,
                app.clock.now_micros(),
            )
            .await
            .map_err(api)?;
        note.details.insert("hold".into(), json!(id));
        note.details.insert("scope".into(), json!(scope));
        if scope == "dataset" {
            note.details.insert("dataset".into(), json!(target));
        }
        Ok((
            StatusCode::CREATED,
            Json(json!({"id": id, "scope": scope, "target": target})),
        ))
    }
    .await;
    noted(note, result)
}

/// `GET /v1/legal-holds`: the active holds.
pub async fn holds(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let holds = app.erasures.holds().await.map_err(api)?;
    let list: Vec<BTreeMap<&str, Value>> = holds
        .into_iter()
        .map(|(id, scope, target, reason, at)| {
            BTreeMap::from([
                ("id", json!(id)),
                ("scope", json!(scope)),
                ("target", json!(target)),
                ("reason", json!(reason)),
                (
                    "placed_at",
                    json!(warden_policy::timefmt::micros_to_rfc3339(at)),
                ),
            ])
        })
        .collect();
    Ok(Json(json!({ "holds": list })))
}

/// `POST /v1/legal-holds/{id}/release`.
pub async fn release_hold(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> axum::response::Response {
    let mut note = AuditNote::default();
    let result = async {
        if id.len() > MAX_ID {
            return Err(ApiError::not_found());
        }
        note.details.insert("hold".into(), json!(id));
        if app
            .erasures
            .release(&id, &principal.id, app.clock.now_micros())
            .await
            .map_err(api)?
        {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found())
        }
    }
    .await;
    noted(note, result)
}
