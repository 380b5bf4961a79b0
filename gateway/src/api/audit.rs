//! `/v1/audit/*`: searching and verifying the audit trail (auditors and the DPO, with MFA).

use axum::extract::State;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use warden_audit::{verify_store, Query, UnsignedTail};
use warden_sdk::{AuditPage, Decision, VerifyReport};

use crate::error::{ApiError, Error};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// Default and largest page of `GET /v1/audit/events`.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Query parameters of `GET /v1/audit/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    subject_ref: Option<String>,
    decision: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

fn parse_time(name: &str, v: Option<&String>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
            ApiError::invalid(format!(
                "{name} must be an RFC 3339 time like 2026-01-31T12:00:00Z"
            ))
        })?;
        let d = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| ApiError::invalid(format!("{name} is before 1970")))?;
        i64::try_from(d.as_micros())
            .map_err(|_| ApiError::invalid(format!("{name} is out of range")))
    })
    .transpose()
}

fn bounded(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.len() > 256 => Err(ApiError::invalid(format!(
            "{name} is longer than 256 bytes"
        ))),
        other => Ok(other),
    }
}

fn encode_cursor(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_cursor(c: &str) -> Result<u64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("seq:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| ApiError::invalid("cursor is not one this server issued"))
}

/// `GET /v1/audit/events`: filtered, in sequence order, cursor-paginated.
pub async fn events(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let decision = q
        .decision
        .as_deref()
        .map(|d| {
            Decision::parse(d)
                .ok_or_else(|| ApiError::invalid("decision must be allow, deny or error"))
        })
        .transpose()?;
    let query = Query {
        from_ts: parse_time("from", q.from.as_ref())?,
        to_ts: parse_time("to", q.to.as_ref())?,
        actor: bounded("actor", q.actor)?,
        action: bounded("action", q.action)?,
        resource: bounded("resource", q.resource)?,
        subject_ref: bounded("subject_ref", q.subject_ref)?,
        decision,
        after_seq: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit,
    };
    let events = app.audit_store.query(&query).await.map_err(Error::from)?;
    let next_cursor = (events.len() == limit as usize)
        .then(|| events.last().map(|e| encode_cursor(e.seq)))
        .flatten();
    Ok(Json(AuditPage {
        events: events
            .iter()
            .map(warden_audit::StoredEvent::to_view)
            .collect(),
        next_cursor,
    }))
}

/// `GET /v1/audit/verify`: recomputes the whole chain and checks every signed checkpoint and
/// the head's seal; entries no signature covers fail it.
pub async fn verify(State(app): State<AppState>) -> Result<Json<VerifyReport>, ApiError> {
    let report = verify_store(
        app.audit_store.as_ref(),
        app.checkpoint_keys.clone(),
        UnsignedTail::Refuse,
    )
    .await
    .map_err(Error::from)?;
    if !report.ok {
        tracing::error!(first_bad_seq = ?report.first_bad_seq, reason = ?report.reason, "audit log verification failed");
    }
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("not-a-cursor").is_err());
    }
}
