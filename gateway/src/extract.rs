//! Extractors whose rejections are [`ApiError`]s: clear, stable codes, and nothing echoed
//! back that could be a secret (serde's messages quote the offending values, so only the
//! field names are kept).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use warden_sdk::ErrorCode;

use crate::error::ApiError;

/// The client's address, as the connection gives it (`unknown` without one: a test router,
/// a Unix socket); an IPv6 address as its /64, which one client holds whole. Forwarded-for
/// headers are not read: any client can write them.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| source_of(c.0.ip())),
        ))
    }
}

fn source_of(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// `Json<T>` with Warden's errors.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::JsonSyntaxError(_)) => Err(ApiError::new(
                ErrorCode::MalformedJson,
                "the body is not valid JSON",
            )),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::invalid(describe(&e.body_text())))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as application/json",
            )),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the body is larger than the configured limit",
                ))
            }
            Err(_) => Err(ApiError::invalid("the body could not be read")),
        }
    }
}

/// `Query<T>` with Warden's errors.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::invalid(describe(&e.body_text())))
            }
            Err(_) => Err(ApiError::invalid("the query string could not be read")),
        }
    }
}

/// Keeps the part of a serde message that names a field, drops anything quoting a value.
fn describe(serde_message: &str) -> String {
    for marker in [
        "unknown field `",
        "missing field `",
        "unknown variant `",
        "duplicate field `",
    ] {
        if let Some(start) = serde_message.find(marker) {
            let rest = &serde_message[start + marker.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| *c != '`')
                .filter(|c| c.is_ascii_alphanumeric() || "_-.".contains(*c))
                .take(64)
                .collect();
            return format!("{}{name}`", &marker[..marker.len()]);
        }
    }
    "a field has the wrong type or an invalid value".to_owned()
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn values_are_never_echoed() {
        assert_eq!(
            describe("Failed to deserialize: unknown field `pasword`, expected one of `password`"),
            "unknown field `pasword`"
        );
        assert_eq!(
            describe("missing field `code` at line 1"),
            "missing field `code`"
        );
        let m =
            describe("invalid type: string \"hunter2-secret\", expected u64 at line 1 column 30");
        assert!(!m.contains("hunter2"), "{m}");
    }
}
