//! Errors: the gateway library's [`Error`] and the HTTP mapping, [`ApiError`].
//!
//! Only this module turns errors into HTTP. A handler returns an [`ApiError`]: a stable
//! [`ErrorCode`] and a short public message. The detail of internal failures goes to the log
//! under the request id; the body never carries it. The body itself (with the request id) is
//! rendered once, by [`crate::middleware::render_errors`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::error;
use warden_sdk::ErrorCode;

/// Errors of the gateway's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Audit(#[from] warden_audit::Error),
    #[error(transparent)]
    Policy(#[from] warden_policy::Error),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    #[error("cryptographic failure: {0}")]
    Crypto(String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error(transparent)]
    Pipeline(#[from] warden_pipeline::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// HTTP status of each error code.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::MalformedJson | ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Unauthenticated
        | ErrorCode::InvalidGrant
        | ErrorCode::MfaRequired
        | ErrorCode::InvalidOtp => StatusCode::UNAUTHORIZED,
        ErrorCode::Locked | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Forbidden | ErrorCode::PasswordChangeRequired | ErrorCode::PurposeNotAllowed => {
            StatusCode::FORBIDDEN
        }
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Conflict | ErrorCode::LegalHold => StatusCode::CONFLICT,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::AuditUnavailable | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::RecordsRejected => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The code for a bare status produced outside the handlers (router, limits, timeouts).
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::BAD_REQUEST => ErrorCode::InvalidRequest,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::Timeout,
        StatusCode::CONFLICT => ErrorCode::Conflict,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::AuditUnavailable,
        s if s.is_client_error() => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    }
}

/// A public error: code and message, both safe to show to anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorCode::Unauthenticated,
            "a valid bearer token is required",
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            ErrorCode::Forbidden,
            "the policy does not allow this action",
        )
    }

    pub fn mfa_required() -> Self {
        Self::new(
            ErrorCode::MfaRequired,
            "this action needs a fresh second factor: step up at POST /v1/auth/mfa",
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such resource")
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "internal error; quote the request id to the operator",
        )
    }

    pub fn status(&self) -> StatusCode {
        http_status(self.code)
    }
}

/// Rendered into the JSON body (with the request id) by the error-rendering middleware.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status().into_response();
        res.extensions_mut().insert(self);
        res
    }
}

/// Internal failures: logged in full here, shown as `internal` (or as the precise public
/// error where one exists).
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Conflict(m) => Self::new(ErrorCode::Conflict, m),
            Error::Invalid(m) => Self::invalid(m),
            Error::Policy(warden_policy::Error::KeyDestroyed { .. }) => Self::new(
                ErrorCode::NotFound,
                "the data was erased (its key was destroyed)",
            ),
            Error::Audit(
                warden_audit::Error::Unavailable(_)
                | warden_audit::Error::Closed
                | warden_audit::Error::ChainBroken(_),
            ) => {
                error!(error = %e, "audit log unavailable");
                Self::new(
                    ErrorCode::AuditUnavailable,
                    "the audit log cannot record this request; nothing was done",
                )
            }
            Error::Pipeline(
                warden_pipeline::Error::Stream(_)
                | warden_pipeline::Error::Documents(_)
                | warden_pipeline::Error::Lake(_)
                | warden_pipeline::Error::Database(_),
            ) => {
                error!(error = %e, "data plane unavailable");
                Self::new(
                    ErrorCode::Unavailable,
                    "a backend of the data plane is unavailable; nothing was acknowledged",
                )
            }
            e => {
                error!(error = %e, "request failed");
                Self::internal()
            }
        }
    }
}
