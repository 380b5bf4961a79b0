//! An async client for Warden's API, for pipeline stages, loaders and tools: tokens, ingest,
//! subscriptions (poll, commit), reads and SQL. Stages never hold store or broker
//! credentials: everything goes through the gateway's policy and audit log.
//!
//! ```no_run
//! # async fn run() -> Result<(), warden_sdk::client::ClientError> {
//! use warden_sdk::client::Client;
//! let client = Client::new("http://127.0.0.1:8080")?
//!     .with_client_credentials("fraud-stage", "secret")
//!     .await?
//!     .with_purpose("fraud_detection");
//! let batch = client.poll("payments", "fraud", Default::default()).await?;
//! // ... transform, then write into the next dataset and commit:
//! client.commit("payments", "fraud", &warden_sdk::CommitRequest::after(&batch.records)).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::{
    CommitRequest, ErrorBody, IngestResponse, PollRequest, PollResponse, QueryRequest,
    QueryResponse, ReadResponse, TokenRequest, TokenResponse,
};

/// Header naming the purpose of processing.
const PURPOSE: &str = "x-purpose";

/// Waits before the retries of a request the connection dropped (a gateway restarting, a
/// load balancer closing an idle connection): about 8 s in all.
const RETRIES: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// What a call can end in.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway refused or failed the request (its error body: code, message, request id).
    #[error("{status}: {} ({}; request {})", .body.error.message, .body.error.code, .body.error.request_id)]
    Api { status: u16, body: ErrorBody },
    /// An answer that is not what the API documents.
    #[error("unexpected answer ({status}): {detail}")]
    Unexpected { status: u16, detail: String },
    /// The gateway could not be reached.
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("invalid base URL: {0}")]
    Url(String),
}

/// A client bound to one gateway, optionally with a token and a purpose.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    purpose: Option<String>,
}

impl Client {
    /// A client for the gateway at `base` (`https://warden.internal`).
    ///
    /// # Errors
    /// A base that is not an http(s) URL.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Url(base.to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            purpose: None,
        })
    }

    /// Uses this bearer token from now on.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// States this purpose of processing on every call (`X-Purpose`).
    pub fn with_purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = Some(purpose.into());
        self
    }

    /// Obtains a token for a service account and uses it from now on.
    ///
    /// # Errors
    /// Wrong credentials, or the gateway unreachable.
    pub async fn with_client_credentials(
        self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Self, ClientError> {
        let t = self
            .token(&TokenRequest::ClientCredentials {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
            })
            .await?;
        Ok(self.with_token(t.access_token))
    }

    /// `POST /v1/auth/token`.
    ///
    /// # Errors
    /// Wrong credentials, or the gateway unreachable.
    pub async fn token(&self, req: &TokenRequest) -> Result<TokenResponse, ClientError> {
        self.call(reqwest::Method::POST, "/v1/auth/token", Some(req))
            .await
    }

    /// `GET /v1/datasets/{dataset}`: the dataset's contract in force.
    ///
    /// # Errors
    /// An unknown dataset (`not_found`), a refusal, or the gateway unreachable.
    pub async fn dataset(&self, dataset: &str) -> Result<Value, ClientError> {
        self.call::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/datasets/{dataset}"),
            None,
        )
        .await
    }

    /// `POST /v1/datasets/{dataset}/records`: protects and publishes records; `atomic`
    /// refuses the whole batch if any record is refused.
    ///
    /// # Errors
    /// The gateway's refusal (`records_rejected` in atomic mode, with the rejections in the
    /// error), or the gateway unreachable.
    pub async fn ingest<T: Serialize + ?Sized>(
        &self,
        dataset: &str,
        records: &T,
        atomic: bool,
    ) -> Result<IngestResponse, ClientError> {
        let mode = if atomic { "atomic" } else { "partial" };
        self.call(
            reqwest::Method::POST,
            &format!("/v1/datasets/{dataset}/records?mode={mode}"),
            Some(records),
        )
        .await
    }

    /// `POST /v1/datasets/{dataset}/subscriptions/{group}/poll`: the next protected records
    /// of the dataset's stream for this consumer group.
    ///
    /// # Errors
    /// The gateway's refusal, or the gateway unreachable.
    pub async fn poll(
        &self,
        dataset: &str,
        group: &str,
        req: PollRequest,
    ) -> Result<PollResponse, ClientError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/datasets/{dataset}/subscriptions/{group}/poll"),
            Some(&req),
        )
        .await
    }

    /// `POST /v1/datasets/{dataset}/subscriptions/{group}/commit`: records up to these
    /// positions are done (commit after writing their results).
    ///
    /// # Errors
    /// The gateway's refusal, or the gateway unreachable.
    pub async fn commit(
        &self,
        dataset: &str,
        group: &str,
        req: &CommitRequest,
    ) -> Result<(), ClientError> {
        let _: Value = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/datasets/{dataset}/subscriptions/{group}/commit"),
                Some(req),
            )
            .await?;
        Ok(())
    }

    /// `GET /v1/datasets/{dataset}/records`: a page of records as this principal may see
    /// them. `query` holds the parameters (`subject`, `from`, `to`, `limit`, `cursor`).
    ///
    /// # Errors
    /// The gateway's refusal, or the gateway unreachable.
    pub async fn read(
        &self,
        dataset: &str,
        query: &[(&str, &str)],
    ) -> Result<ReadResponse, ClientError> {
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        let path = format!("/v1/datasets/{dataset}/records?{}", qs.join("&"));
        self.call::<(), _>(reqwest::Method::GET, &path, None).await
    }

    /// `POST /v1/query`: SQL over the lake, as this principal may see it.
    ///
    /// # Errors
    /// The gateway's refusal (an `invalid_request` names the SQL problem), or the gateway
    /// unreachable.
    pub async fn query(&self, sql: &str) -> Result<QueryResponse, ClientError> {
        let req = QueryRequest {
            sql: sql.to_owned(),
            limit: None,
        };
        self.call(reqwest::Method::POST, "/v1/query", Some(&req))
            .await
    }

    /// `POST /v1/subjects/{subject}/erasure`: asks for a subject's erasure (`subject` is `me`
    /// for a data subject, a `subject_ref`, or the subject's identifier); the job.
    ///
    /// # Errors
    /// The gateway's refusal (`legal_hold`, `mfa_required`...), or the gateway unreachable.
    pub async fn erase(
        &self,
        subject: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let path = format!("/v1/subjects/{}/erasure", urlencode(subject));
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| vec![("idempotency-key", k)])
            .unwrap_or_default();
        self.call_with::<(), _>(reqwest::Method::POST, &path, None, &headers)
            .await
    }

    /// `GET /v1/erasure/{job}`: an erasure job (its receipt once completed).
    ///
    /// # Errors
    /// The gateway's refusal, or the gateway unreachable.
    pub async fn erasure(&self, job: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/erasure/{}", urlencode(job));
        self.call::<(), _>(reqwest::Method::GET, &path, None).await
    }

    /// `GET /v1/erasure?...`: erasure jobs (`state`, `overdue`, `limit`).
    ///
    /// # Errors
    /// The gateway's refusal, or the gateway unreachable.
    pub async fn erasures(&self, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        let path = format!("/v1/erasure?{}", qs.join("&"));
        self.call::<(), _>(reqwest::Method::GET, &path, None).await
    }

    /// `GET /v1/subjects/{subject}/export`: the subject's records from every store (JSON).
    ///
    /// # Errors
    /// The gateway's refusal, or the gateway unreachable.
    pub async fn export(&self, subject: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/subjects/{}/export", urlencode(subject));
        self.call::<(), _>(reqwest::Method::GET, &path, None).await
    }

    async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
    ) -> Result<R, ClientError> {
        let body =
            body.map(serde_json::to_vec)
                .transpose()
                .map_err(|e| ClientError::Unexpected {
                    status: 0,
                    detail: format!("cannot encode the request: {e}"),
                })?;
        // A request that never reached the gateway is sent again, whatever it is; one the
        // connection dropped after sending only when repeating it changes nothing (a read,
        // or a write under an idempotency key).
        let repeatable = method == reqwest::Method::GET
            || headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"));
        let mut attempt = 0;
        let res = loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(p) = &self.purpose {
                req = req.header(PURPOSE, p);
            }
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            match req.send().await {
                Ok(res) => break res,
                Err(e)
                    if attempt < RETRIES.len()
                        && (e.is_connect()
                            || (repeatable && (e.is_request() || e.is_timeout()))) =>
                {
                    tokio::time::sleep(RETRIES[attempt]).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let status = res.status().as_u16();
        let bytes = res.bytes().await?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api { status, body },
                Err(_) => ClientError::Unexpected {
                    status,
                    detail: "an error without Warden's error body".to_owned(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
            status,
            detail: e.to_string(),
        })
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_encoded() {
        assert_eq!(super::urlencode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(
            super::urlencode("2026-11-24T10:00:00Z"),
            "2026-11-24T10%3A00%3A00Z"
        );
    }

    /// A gateway that is not listening yet (restarting) is waited for: the request goes
    /// through once it is up.
    #[tokio::test]
    async fn a_refused_connection_is_retried() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = super::Client::new(&format!("http://127.0.0.1:{port}"))
            .unwrap()
            .with_token("t");
        let call = tokio::spawn(async move { client.dataset("payments").await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /v1/datasets/payments"));
        let body = r#"{"name":"payments"}"#;
        conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let contract = call.await.unwrap().unwrap();
        assert_eq!(contract["name"], "payments");
    }
}
