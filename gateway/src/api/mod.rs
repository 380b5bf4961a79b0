//! HTTP handlers.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod data;
pub mod erasure;
pub mod ops;
pub mod query;
pub mod records;
pub mod subscriptions;

use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::error::ApiError;
use crate::middleware::AuditNote;

/// A handler result with its audit note attached, whichever way it went.
pub(crate) fn noted<T: IntoResponse>(note: AuditNote, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(v) => (Extension(note), v).into_response(),
        Err(e) => (Extension(note), e).into_response(),
    }
}
