//! Datasets: their contracts, protection of records, and detokenization.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use warden_policy::contract::{valid_name, Contract};
use warden_policy::protect::Rejection;
use warden_sdk::ErrorCode;

use super::noted;
use crate::auth::Principal;
use crate::error::{ApiError, Error};
use crate::extract::ApiJson;
use crate::middleware::AuditNote;
use crate::state::AppState;

/// Header naming the purpose of processing (GDPR Art. 5(1)(b)).
pub const PURPOSE_HEADER: &str = "x-purpose";
/// Most records protected in one request.
pub const MAX_RECORDS: usize = 10_000;
/// Most tokens revealed in one request.
pub const MAX_TOKENS: usize = 1_000;

fn contract_json(c: &Contract) -> Value {
    serde_json::from_str(&c.to_json()).unwrap_or(Value::Null)
}

pub(crate) fn dataset(app: &AppState, name: &str) -> Result<std::sync::Arc<Contract>, ApiError> {
    app.datasets
        .get(name)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such dataset"))
}

/// `GET /v1/datasets`.
pub async fn list(State(app): State<AppState>) -> Json<Vec<Value>> {
    Json(
        app.datasets
            .all()
            .iter()
            .map(|c| contract_json(c))
            .collect(),
    )
}

/// `GET /v1/datasets/{name}`.
pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let contract = dataset(&app, &name)?;
    Ok(Json(contract_json(&contract)))
}

/// `PUT /v1/datasets/{name}`: a new version of the contract (JSON).
pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Response {
    let result = async {
        let contract =
            Contract::from_json(&body.to_string()).map_err(|e| ApiError::invalid(e.to_string()))?;
        if contract.name != name {
            return Err(ApiError::invalid(
                "name: must be the dataset named in the path",
            ));
        }
        let c = app
            .datasets
            .put(contract, app.store.as_ref(), app.clock.now_micros())
            .await?;
        Ok((StatusCode::OK, Json(contract_json(&c))))
    }
    .await;
    let note = match &result {
        Ok((_, Json(c))) => AuditNote::default()
            .detail("dataset", name.clone())
            .detail("version", c["version"].clone()),
        Err(_) => AuditNote::default().detail("dataset", name.clone()),
    };
    noted(note, result)
}

/// The purpose as stated (header, else claim), for the audit log; validated or absent.
pub(crate) fn stated_purpose(headers: &HeaderMap, principal: &Principal) -> Option<String> {
    headers
        .get(PURPOSE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|p| valid_name(p))
        .map(str::to_owned)
        .or_else(|| principal.purpose.clone())
}

/// The purpose of processing: the `X-Purpose` header, or the token's `purpose` claim. When
/// both are there they must agree.
pub(crate) fn purpose(headers: &HeaderMap, principal: &Principal) -> Result<String, ApiError> {
    let header = headers
        .get(PURPOSE_HEADER)
        .map(|v| v.to_str().unwrap_or_default());
    if let Some(h) = header {
        if !valid_name(h) {
            return Err(ApiError::invalid("X-Purpose: 1 to 64 of a-z, 0-9 and _"));
        }
    }
    match (header, principal.purpose.as_deref()) {
        (Some(h), Some(c)) if h != c => Err(ApiError::invalid(
            "X-Purpose differs from the purpose the token was issued for",
        )),
        (Some(p), _) | (None, Some(p)) => Ok(p.to_owned()),
        (None, None) => Err(ApiError::invalid(
            "state the purpose of processing in the X-Purpose header (or in the token's purpose claim)",
        )),
    }
}

/// The audit details of a protection outcome: counts, and the names of the fields refused or
/// stripped — never their values.
/// What protection did, for the audit log (field names and counts, never a value), and the
/// detections counted in the metrics.
pub(crate) fn protection_note(
    app: &AppState,
    dataset: &str,
    note: AuditNote,
    out: &warden_policy::protect::Protected,
) -> AuditNote {
    app.metrics.detections(dataset, &out.detections);
    let detections: serde_json::Map<String, serde_json::Value> = out
        .detections
        .iter()
        .map(|((detector, action), n)| (format!("{detector}.{action}"), (*n).into()))
        .collect();
    let note = if detections.is_empty() {
        note
    } else {
        note.detail("detections", detections)
    };
    let rejected: BTreeSet<&str> = out
        .rejections
        .iter()
        .filter_map(|r| r.field.as_deref())
        .collect();
    let stripped: BTreeSet<&str> = out.stripped.iter().map(|(_, f)| f.as_str()).collect();
    note.detail("accepted", out.records.len())
        .detail("rejected", out.rejections.len())
        .detail("rejected_fields", rejected.into_iter().collect::<Vec<_>>())
        .detail("stripped_fields", stripped.into_iter().collect::<Vec<_>>())
}

/// What `principal` may see of protected records: personal data in clear with the policy's
/// `pii read`, card numbers as first six and last four with `pan bin` — each, when its class
/// is in `auth.reveal_needs_mfa`, only with a fresh second factor too, except for a data
/// subject, whose reads are its own rows.
///
/// # Errors
/// The policy cannot be evaluated.
pub(crate) fn view_rights(
    app: &AppState,
    principal: &Principal,
) -> Result<warden_policy::protect::ViewRights, ApiError> {
    use warden_policy::contract::DataClass;
    let fresh = principal.reads_as_subject()
        || principal.mfa_fresh(app.clock.now_secs(), app.config.auth.mfa_window);
    let stepped = |class: DataClass| fresh || !app.config.auth.reveal_needs_mfa.contains(&class);
    let allows = |resource: &str, action: &str| {
        app.authz
            .allows(&principal.roles, resource, action)
            .map_err(|e| ApiError::from(Error::from(e)))
    };
    Ok(warden_policy::protect::ViewRights {
        pii_read: allows("pii", "read")? && stepped(DataClass::PiiDirect),
        pan_bin: allows("pan", "bin")? && stepped(DataClass::PciPan),
    })
}

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// The request's `Idempotency-Key`, if it sent one: 1 to 256 visible characters.
///
/// # Errors
/// A key that is empty, too long or not text.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} visible characters"
                    ))
                })
        })
        .transpose()
}

/// The purpose-limitation error.
pub(crate) fn purpose_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::PurposeNotAllowed,
        "the dataset's contract does not allow this purpose",
    )
}

/// One protected record in a response.
#[derive(Debug, Serialize)]
pub struct ProtectedView {
    /// Position in the request.
    pub index: usize,
    pub subject_ref: String,
    pub contract_version: u32,
    pub fields: Map<String, Value>,
}

/// `POST /v1/datasets/{name}/protect`.
#[derive(Debug, Serialize)]
pub struct ProtectResponse {
    pub records: Vec<ProtectedView>,
    pub rejections: Vec<Rejection>,
}

/// `POST /v1/datasets/{name}/protect`: protects records as the contract says, for the stated
/// purpose, and returns them (tokens, ciphertext, pseudonyms) with precise rejections.
pub async fn protect(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(records): ApiJson<Vec<Map<String, Value>>>,
) -> Response {
    let mut note = AuditNote::default()
        .detail("dataset", name.clone())
        .detail("records", records.len());
    note.purpose = stated_purpose(&headers, &principal);
    let result = async {
        let contract = dataset(&app, &name)?;
        let purpose = purpose(&headers, &principal)?;
        if records.len() > MAX_RECORDS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_RECORDS} records a request"
            )));
        }
        let out = app
            .protector
            .protect_owned(&contract, &purpose, records)
            .await
            .map_err(|e| match e {
                warden_policy::Error::PurposeNotAllowed => ApiError::new(
                    ErrorCode::PurposeNotAllowed,
                    "the dataset's contract does not allow this purpose",
                ),
                e => ApiError::from(Error::from(e)),
            })?;
        Ok(out)
    }
    .await;
    let result = result.map(|out| {
        note = protection_note(&app, &name, std::mem::take(&mut note), &out);
        Json(ProtectResponse {
            records: out
                .records
                .into_iter()
                .map(|(index, r)| ProtectedView {
                    index,
                    subject_ref: r.subject_ref,
                    contract_version: r.contract_version,
                    fields: r.fields,
                })
                .collect(),
            rejections: out.rejections,
        })
    });
    noted(note, result)
}

/// `POST /v1/detokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub dataset: String,
    pub tokens: Vec<String>,
}

/// `POST /v1/detokenize`: card numbers in clear, for roles allowed `pan reveal` with a fresh
/// second factor. Audited with counts, never values.
pub async fn detokenize(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DetokenizeRequest>,
) -> Response {
    // The dataset name is the client's text: it is recorded only once it is a plain name.
    let named = valid_name(&body.dataset).then(|| body.dataset.clone());
    let mut note = AuditNote::default()
        .detail("dataset", named.clone().unwrap_or_default())
        .detail("requested", body.tokens.len());
    note.purpose = stated_purpose(&headers, &principal);
    let result = async {
        if body.tokens.is_empty() || body.tokens.len() > MAX_TOKENS {
            return Err(ApiError::invalid(format!("send 1 to {MAX_TOKENS} tokens")));
        }
        if body.tokens.iter().any(|t| !warden_policy::pan::is_token(t)) {
            return Err(ApiError::invalid(
                "tokens: every item must be a vault token (tok_…)",
            ));
        }
        let contract = dataset(&app, named.as_deref().unwrap_or("-"))?;
        // `pan reveal` (the route) lets a role reveal at all; which datasets is a second,
        // per-dataset permission, and the purpose must be one the contract lists.
        let resource = format!("datasets:{}", contract.name);
        if !app
            .authz
            .allows(&principal.roles, &resource, "reveal")
            .map_err(Error::from)?
        {
            return Err(ApiError::forbidden());
        }
        if !contract.allows_purpose(&purpose(&headers, &principal)?) {
            return Err(ApiError::new(
                ErrorCode::PurposeNotAllowed,
                "the dataset's contract does not allow this purpose",
            ));
        }
        let pans = app
            .tokenizer
            .detokenize(&body.dataset, &body.tokens)
            .await
            .map_err(Error::from)?;
        Ok(pans)
    }
    .await;
    if let Ok(pans) = &result {
        note = note.detail("revealed", pans.iter().filter(|p| p.is_some()).count());
    }
    noted(
        note,
        result.map(|pans| Json(serde_json::json!({ "pans": pans }))),
    )
}
