//! `POST /v1/query`: SQL (DataFusion) over the lake, limited to what the principal may read.
//!
//! Each dataset the principal may read (`datasets:<name> read`) whose contract allows the
//! stated purpose is registered under its name as a *view*: card-number tokens masked to the
//! last four, personal data (`pii.direct`) masked, blind indexes left out; a data subject's
//! views hold its own rows only. The tables themselves are never registered, so no SQL reaches
//! them; DDL, DML and statements are refused.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::{Extension, Json};
use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::prelude::SessionContext;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warden_policy::contract::{Contract, DataClass};
use warden_policy::protect::BLIND_INDEX_SUFFIX;
use warden_sdk::ErrorCode;

use super::data::{purpose, stated_purpose};
use super::noted;
use crate::auth::Principal;
use crate::error::{ApiError, Error};
use crate::extract::ApiJson;
use crate::middleware::AuditNote;
use crate::state::AppState;

/// Longest accepted SQL text.
pub const MAX_SQL: usize = 16 * 1024;
/// Most rows one query returns.
pub const MAX_ROWS: usize = 10_000;
/// Memory one query may use (DataFusion's pool; past it, the query fails).
pub const QUERY_MEMORY: usize = 256 * 1024 * 1024;
/// Queries running at once in this process (others wait).
pub const CONCURRENT_QUERIES: usize = 2;
/// Largest result body.
pub const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;

static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_QUERIES);

/// A session with a bounded memory pool.
pub(crate) fn bounded_session() -> Result<SessionContext, ApiError> {
    let runtime = deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(QUERY_MEMORY, 1.0)
        .build_arc()
        .map_err(datafusion_err)?;
    Ok(SessionContext::new_with_config_rt(
        deltalake::datafusion::prelude::SessionConfig::new(),
        runtime,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
    /// Rows to return at most (default 1000, at most 10 000).
    pub limit: Option<usize>,
}

/// The masked projection of a dataset's table.
fn view_sql(contract: &Contract, subject_ref: Option<&str>, has: impl Fn(&str) -> bool) -> String {
    let mut cols = vec![
        "\"subject_ref\"".to_owned(),
        "\"contract_version\"".to_owned(),
    ];
    for c in warden_pipeline::lake::columns(contract) {
        let name = &c.name;
        if name.ends_with(BLIND_INDEX_SUFFIX) {
            continue;
        }
        if !has(name) {
            // A field a newer contract version added, before its first row reached the table.
            cols.push(format!("NULL AS \"{name}\""));
            continue;
        }
        cols.push(match c.class {
            DataClass::PciPan => format!(
                "CASE WHEN \"{name}\" IS NULL THEN NULL ELSE concat('****', right(\"{name}\", 4)) END AS \"{name}\""
            ),
            DataClass::PiiDirect => {
                format!("CASE WHEN \"{name}\" IS NULL THEN NULL ELSE '****' END AS \"{name}\"")
            }
            _ => format!("\"{name}\""),
        });
    }
    let filter = subject_ref
        .map(|s| format!(" WHERE \"subject_ref\" = '{s}'"))
        .unwrap_or_default();
    format!("SELECT {} FROM t{filter}", cols.join(", "))
}

/// A failure while the query ran: its message can quote the data (a value that would not
/// cast), so only its kind goes back, and nothing of it to the log.
pub(crate) fn execution_err(e: deltalake::datafusion::error::DataFusionError) -> ApiError {
    use deltalake::datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ResourcesExhausted(_) => {
            ApiError::invalid("sql: the query needs more memory than a query may use; narrow it")
        }
        _ => ApiError::invalid("sql: the query failed while running (types, casts or functions)"),
    }
}

pub(crate) fn datafusion_err(e: impl std::fmt::Display) -> ApiError {
    // The planner's message names tables, columns and syntax — the client's own query.
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    ApiError::invalid(format!("sql: {first}"))
}

/// Registers, in `ctx`, the masked view of every dataset `wanted` accepts (a subject's own
/// rows only when `own` is set); the names registered.
///
/// # Errors
/// A lake failure, or `wanted`'s own.
pub(crate) async fn register_views(
    app: &AppState,
    ctx: &SessionContext,
    own: Option<&str>,
    wanted: impl Fn(&Contract) -> Result<bool, ApiError>,
) -> Result<Vec<String>, ApiError> {
    let mut visible = Vec::new();
    for contract in app.datasets.all() {
        if !wanted(&contract)? {
            continue;
        }
        let provider = app
            .lake
            .provider(&contract)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))?;
        // The table is known to an inner context only; the outer one sees the view.
        let schema = provider.schema();
        let sql = view_sql(&contract, own, |c| schema.field_with_name(c).is_ok());
        let inner = SessionContext::new();
        inner
            .register_table("t", provider)
            .map_err(datafusion_err)?;
        let view = inner.sql(&sql).await.map_err(datafusion_err)?.into_view();
        ctx.register_table(contract.name.as_str(), view)
            .map_err(datafusion_err)?;
        visible.push(contract.name.clone());
    }
    Ok(visible)
}

/// Registers the materialized aggregate tables `wanted` accepts, as `agg_<name>`.
///
/// # Errors
/// A lake failure, or `wanted`'s own.
pub(crate) async fn register_aggregates(
    app: &AppState,
    ctx: &SessionContext,
    wanted: impl Fn(&str) -> Result<bool, ApiError>,
) -> Result<(), ApiError> {
    for agg in &app.config.lake.aggregates {
        if !wanted(&agg.name)? {
            continue;
        }
        // Not materialized yet: not there.
        if let Some(provider) = app
            .lake
            .aggregate_provider(&agg.name)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))?
        {
            ctx.register_table(format!("agg_{}", agg.name).as_str(), provider)
                .map_err(datafusion_err)?;
        }
    }
    Ok(())
}

/// Plans `sql` as a query only: DDL (`CREATE`, `COPY`), DML and statements (`SET`) are
/// refused.
///
/// # Errors
/// SQL the planner refuses, named in an `invalid_request`.
pub(crate) async fn read_only_sql(
    ctx: &SessionContext,
    sql: &str,
) -> Result<deltalake::datafusion::dataframe::DataFrame, ApiError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options)
        .await
        .map_err(datafusion_err)
}

/// `POST /v1/query`.
pub async fn query(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<QueryRequest>,
) -> Response {
    let mut note = AuditNote {
        purpose: stated_purpose(&headers, &principal),
        ..AuditNote::default()
    }
    // The query's fingerprint, not its text: literals may hold anything.
    .detail(
        "sql_sha256",
        hex::encode(Sha256::digest(body.sql.as_bytes())),
    );
    let result = async {
        let purpose = purpose(&headers, &principal)?;
        if body.sql.trim().is_empty() || body.sql.len() > MAX_SQL {
            return Err(ApiError::invalid(format!("sql: 1 to {MAX_SQL} bytes")));
        }
        let limit = body.limit.unwrap_or(1000);
        if !(1..=MAX_ROWS).contains(&limit) {
            return Err(ApiError::invalid(format!("limit: 1 to {MAX_ROWS}")));
        }
        let own = if principal.reads_as_subject() {
            Some(super::records::own_subject_ref(&app, &principal).await?)
        } else {
            None
        };
        let _running = RUNNING.acquire().await.map_err(|_| ApiError::internal())?;
        let ctx = bounded_session()?;
        let visible = register_views(&app, &ctx, own.as_deref(), |contract| {
            Ok(app
                .authz
                .allows(
                    &principal.roles,
                    &format!("datasets:{}", contract.name),
                    "read",
                )
                .map_err(Error::from)?
                && contract.allows_purpose(&purpose))
        })
        .await?;
        register_aggregates(&app, &ctx, |name| {
            Ok(app
                .authz
                .allows(&principal.roles, &format!("aggregates:{name}"), "read")
                .map_err(Error::from)?)
        })
        .await?;
        if visible.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "no dataset is readable by this principal for this purpose",
            ));
        }
        let df = read_only_sql(&ctx, &body.sql)
            .await?
            .limit(0, Some(limit))
            .map_err(datafusion_err)?;
        let batches: Vec<RecordBatch> = df.collect().await.map_err(execution_err)?;
        let rows = to_json_rows(&batches)?;
        Ok((visible, rows))
    }
    .await;
    let result = result.map(|(visible, rows)| {
        note = std::mem::take(&mut note)
            .detail("datasets", visible.clone())
            .detail("rows", rows.len());
        Json(json!({ "rows": rows }))
    });
    noted(note, result)
}

pub(crate) fn to_json_rows(batches: &[RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let mut writer = deltalake::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .map_err(|e| ApiError::from(Error::Invalid(format!("result encoding: {e}"))))?;
    writer
        .finish()
        .map_err(|e| ApiError::from(Error::Invalid(format!("result encoding: {e}"))))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() > MAX_RESULT_BYTES {
        return Err(ApiError::invalid(format!(
            "the result is larger than {} MiB: select fewer columns or rows",
            MAX_RESULT_BYTES >> 20
        )));
    }
    serde_json::from_slice(&bytes).map_err(|_| ApiError::internal())
}
