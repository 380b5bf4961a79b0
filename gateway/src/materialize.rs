//! Aggregate tables: SQL (DataFusion) over every dataset's masked view, written into the lake
//! as a Delta table (`aggregates/<name>`), replacing the previous content. Run by
//! `warden materialize` and, for aggregates with `every`, on a schedule while serving. Each
//! run is audited (actor `warden`, action `aggregates:<name>.materialize`).

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};
use warden_audit::NewEvent;
use warden_sdk::Decision;

use crate::api::query::{bounded_session, execution_err, read_only_sql, register_views};
use crate::config::AggregateConfig;
use crate::error::{ApiError, Error};
use crate::state::AppState;

/// Materializes one aggregate; the rows written.
///
/// # Errors
/// SQL the planner refuses, or a lake failure; the table keeps its previous content.
pub async fn materialize(app: &AppState, agg: &AggregateConfig) -> Result<u64, ApiError> {
    let result = async {
        let ctx = bounded_session()?;
        register_views(app, &ctx, None, |_| Ok(true)).await?;
        let batches = read_only_sql(&ctx, &agg.sql)
            .await?
            .collect()
            .await
            .map_err(execution_err)?;
        app.lake
            .overwrite_aggregate(&agg.name, batches)
            .await
            .map_err(|e| ApiError::from(Error::from(e)))
    }
    .await;
    let (decision, details) = match &result {
        Ok(rows) => (Decision::Allow, json!({ "rows": rows })),
        Err(e) => (Decision::Error, json!({ "error": e.code.as_str() })),
    };
    let event = NewEvent::new(
        app.clock.now_micros(),
        "warden".to_owned(),
        "service".to_owned(),
        format!("aggregates:{}.materialize", agg.name),
        format!("aggregates:{}", agg.name),
        decision,
    )
    .details(&details);
    app.audit
        .append(event)
        .await
        .map_err(|e| ApiError::from(Error::from(e)))?;
    result
}

/// Materializes the aggregates that have `every`, each on its own schedule, until the task
/// is aborted.
pub fn schedule(app: AppState) -> Vec<tokio::task::JoinHandle<()>> {
    app.config
        .lake
        .aggregates
        .iter()
        .filter_map(|a| a.every.map(|every| (a.clone(), every)))
        .map(|(agg, every)| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
                loop {
                    tick.tick().await;
                    match materialize(&app, &agg).await {
                        Ok(rows) => info!(aggregate = %agg.name, rows, "aggregate materialized"),
                        Err(e) => {
                            warn!(aggregate = %agg.name, error = %e.message, "aggregate failed")
                        }
                    }
                }
            })
        })
        .collect()
}
