//! Wire types shared by the Warden gateway and its clients (pipeline stages, the CLI, tests).
//!
//! Everything here is plain serde data: the JSON shapes of requests, responses and errors.
//! The server and every client use the same definitions, so a change to the wire is a
//! change to this crate.
//!
//! ```
//! use warden_sdk::{ErrorBody, ErrorCode};
//! let body: ErrorBody = serde_json::from_str(
//!     r#"{"error":{"code":"mfa_required","message":"a fresh second factor is required","request_id":"r1"}}"#,
//! ).unwrap();
//! assert_eq!(body.error.code, ErrorCode::MfaRequired);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON.
    MalformedJson,
    /// The JSON is well formed but does not fit the expected shape (unknown or missing field,
    /// wrong type, value out of range).
    InvalidRequest,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The request's content type is not accepted by this endpoint.
    UnsupportedMediaType,
    /// No, or an invalid, bearer token.
    Unauthenticated,
    /// Wrong credentials at the token endpoint.
    InvalidGrant,
    /// The action needs a second factor younger than the configured window.
    MfaRequired,
    /// The one-time code is wrong, already used, or no second factor is enrolled.
    InvalidOtp,
    /// Too many failed attempts; the account or factor is locked for a while.
    Locked,
    /// The policy does not allow this action.
    Forbidden,
    /// The dataset's contract does not list the stated purpose (GDPR Art. 5(1)(b)).
    PurposeNotAllowed,
    /// The account still has its generated first password: change it at
    /// `POST /v1/auth/password` before anything else.
    PasswordChangeRequired,
    /// No such resource.
    NotFound,
    /// The method is not allowed on this resource.
    MethodNotAllowed,
    /// The resource already exists or the request conflicts with its state.
    Conflict,
    /// A legal hold covers the data: the erasure is refused (the message gives the reason).
    LegalHold,
    /// Too many requests from this principal.
    RateLimited,
    /// The request took longer than the configured timeout.
    Timeout,
    /// The audit log could not record the decision; nothing is acknowledged without it.
    AuditUnavailable,
    /// In all-or-nothing mode, some records were refused, so none was accepted (the body
    /// lists the rejections).
    RecordsRejected,
    /// A backend the request needs (stream, document store) is unreachable; nothing was
    /// acknowledged. Retry later.
    Unavailable,
    /// An internal failure; the detail is in the server log under the request id.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::InvalidRequest => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidGrant => "invalid_grant",
            Self::MfaRequired => "mfa_required",
            Self::InvalidOtp => "invalid_otp",
            Self::Locked => "locked",
            Self::Forbidden => "forbidden",
            Self::PasswordChangeRequired => "password_change_required",
            Self::PurposeNotAllowed => "purpose_not_allowed",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::LegalHold => "legal_hold",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::AuditUnavailable => "audit_unavailable",
            Self::RecordsRejected => "records_rejected",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one error body every endpoint returns: `{"error": {"code", "message", "request_id"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// A short human-readable message; never internal detail, personal data or secrets.
    pub message: String,
    /// The request id (`x-request-id`) under which the server logged the detail.
    pub request_id: String,
}

/// `POST /v1/auth/token`, OAuth2-style (RFC 6749 §4.3 and §4.4) but as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "grant_type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenRequest {
    Password {
        username: String,
        password: String,
    },
    ClientCredentials {
        client_id: String,
        client_secret: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
}

/// `POST /v1/auth/mfa` (step-up) and `POST /v1/auth/mfa/confirm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtpRequest {
    pub code: String,
}

/// `POST /v1/auth/mfa/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfaEnrollment {
    /// `otpauth://totp/...` URI for authenticator apps.
    pub otpauth_uri: String,
    /// The same URI as a QR code, a PNG image in standard base64.
    pub qr_png_base64: String,
}

/// `POST /v1/auth/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Who a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person working with Warden (operator, DPO, auditor, analyst).
    User,
    /// A pipeline stage or other program, authenticated with client credentials.
    Service,
    /// A data subject acting on its own data.
    Subject,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
            Self::Subject => "subject",
        }
    }

    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "service" => Some(Self::Service),
            "subject" => Some(Self::Subject),
            _ => None,
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/auth/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub id: String,
    pub kind: PrincipalKind,
    pub roles: Vec<String>,
    pub amr: Vec<String>,
    /// Unix seconds of the last second-factor check, if any.
    pub mfa_at: Option<i64>,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    pub roles: Vec<String>,
    /// `user` (default) or `subject`.
    #[serde(default)]
    pub kind: Option<PrincipalKind>,
}

/// `POST /v1/service-accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    pub name: String,
    pub roles: Vec<String>,
}

/// The answer to `POST /v1/service-accounts`; the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceAccountCreated {
    pub id: String,
    pub client_id: String,
    pub client_secret: String,
}

/// A principal as listed by `GET /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrincipalView {
    pub id: String,
    pub kind: PrincipalKind,
    pub name: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub mfa_enrolled: bool,
}

/// One casbin rule, `p, role, resource, action` or `g, role, parent_role`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// `p` (permission) or `g` (role inheritance).
    pub ptype: String,
    pub values: Vec<String>,
}

/// `GET /v1/policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    pub version: i64,
    pub rules: Vec<PolicyRule>,
}

/// The outcome of an access decision, as recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed by policy and carried out.
    Allow,
    /// Refused: unauthenticated, forbidden by policy, missing second factor, rate-limited.
    Deny,
    /// Allowed by policy but failed (bad input or an internal error).
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit event as returned by `GET /v1/audit/events` and written by `warden audit export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEventView {
    pub seq: u64,
    /// Unix microseconds.
    pub ts: i64,
    pub actor: String,
    pub actor_kind: String,
    pub action: String,
    pub resource: String,
    pub decision: Decision,
    pub purpose: Option<String>,
    pub request_id: Option<String>,
    pub subject_ref: Option<String>,
    pub details: serde_json::Value,
    /// Hex SHA-256 of the previous entry (all zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 chaining this entry to the previous one.
    pub hash: String,
}

/// `GET /v1/audit/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub events: Vec<AuditEventView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/audit/verify` and `warden audit verify --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when every entry chains and every checkpoint signature matches.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// Signed checkpoints checked.
    pub checkpoints: u64,
    /// The last sequence number checked.
    pub head_seq: u64,
    /// The last entry covered by a valid signature (a checkpoint or the head's seal).
    pub signed_through: u64,
    /// Entries after `signed_through`: protected by the hash chain alone, which whoever can
    /// write the database can recompute. They fail the verification unless accepted.
    #[serde(default)]
    pub unsigned_entries: u64,
    /// The first entry that does not verify.
    pub first_bad_seq: Option<u64>,
    /// Why it does not verify.
    pub reason: Option<String>,
}

/// `POST /v1/datasets/{name}/subscriptions/{group}/poll`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// Records to return at most (1 to 1000; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
    /// How long to wait for a first record, in milliseconds (at most 10 000; default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// A protected record read from a dataset's stream (card numbers as tokens, personal data as
/// ciphertext, the subject as its pseudonym).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub partition: i32,
    pub offset: i64,
    pub subject_ref: String,
    pub contract_version: u32,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Answer to a poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    pub records: Vec<StreamRecord>,
}

/// A position to commit: the next offset to read in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextOffset {
    pub partition: i32,
    pub offset: i64,
}

/// `POST /v1/datasets/{name}/subscriptions/{group}/commit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub offsets: Vec<NextOffset>,
}

impl CommitRequest {
    /// The positions after `records` (per partition, the highest offset plus one).
    pub fn after(records: &[StreamRecord]) -> Self {
        let mut next: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
        for r in records {
            let e = next.entry(r.partition).or_insert(r.offset + 1);
            *e = (*e).max(r.offset + 1);
        }
        Self {
            offsets: next
                .into_iter()
                .map(|(partition, offset)| NextOffset { partition, offset })
                .collect(),
        }
    }
}

/// A refused record of an ingest: which, which field, why — never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRejection {
    pub index: usize,
    pub field: Option<String>,
    pub reason: String,
    /// A stable code where a client can act on the refusal
    /// (`card_number_in_unclassified_field`, `email_in_unclassified_field`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Where an accepted record was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedRecord {
    pub index: usize,
    pub partition: i32,
    pub offset: i64,
}

/// `202` answer to an ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub topic: String,
    pub accepted: usize,
    pub rejected: usize,
    pub positions: Vec<PublishedRecord>,
    pub rejections: Vec<RecordRejection>,
}

/// `200` answer to a read of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadResponse {
    pub records: Vec<serde_json::Map<String, serde_json::Value>>,
    pub next_cursor: Option<String>,
}

/// `POST /v1/query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `200` answer to a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[cfg(feature = "client")]
pub mod client;
