//! The Warden gateway: the one door in front of an organisation's data.
//!
//! [`app`] builds the axum router with the whole request path (request id, tracing,
//! metrics, error rendering, panic guard, timeout, body limit, then authentication, rate
//! limit, casbin authorization, MFA step-up and audit around every handler). [`state::start`]
//! opens the stores and keys; [`serve`] runs it until a shutdown signal and then flushes the
//! audit log.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! let config = warden_gateway::config::Config::load(None, &HashMap::new())?;
//! let (state, first) = warden_gateway::state::start(config, &HashMap::new(), Arc::new(warden_policy::SystemClock)).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! warden_gateway::serve(state, listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod erasure;
pub mod error;
pub mod extract;
pub mod ingest;
pub mod materialize;
pub mod metrics;
pub mod middleware;
pub mod pipeline;
pub mod ratelimit;
pub mod routes;
pub mod state;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::state::AppState;

/// The router with the whole request path.
pub fn app(state: AppState) -> Router {
    let limits = &state.config.limits;
    let protected = Router::new()
        .route("/healthz", get(api::ops::healthz))
        .route("/readyz", get(api::ops::readyz))
        .route("/metrics", get(api::ops::metrics))
        .route("/.well-known/jwks.json", get(api::ops::jwks))
        .route("/v1/auth/token", post(api::auth::token))
        .route("/v1/auth/me", get(api::auth::me))
        .route("/v1/auth/password", post(api::auth::change_password))
        .route("/v1/auth/mfa/enroll", post(api::auth::enroll))
        .route("/v1/auth/mfa/qr.png", get(api::auth::qr))
        .route("/v1/auth/mfa/confirm", post(api::auth::confirm))
        .route("/v1/auth/mfa", post(api::auth::step_up))
        .route("/v1/audit/events", get(api::audit::events))
        .route("/v1/audit/verify", get(api::audit::verify))
        .route(
            "/v1/policy",
            get(api::admin::get_policy).put(api::admin::put_policy),
        )
        .route(
            "/v1/users",
            get(api::admin::list).post(api::admin::create_user),
        )
        .route("/v1/users/{id}/disable", post(api::admin::disable))
        .route("/v1/users/{id}/unlock", post(api::admin::unlock))
        .route("/v1/users/{id}/enable", post(api::admin::enable))
        .route(
            "/v1/service-accounts",
            post(api::admin::create_service_account),
        )
        .route("/v1/datasets", get(api::data::list))
        .route(
            "/v1/datasets/{name}",
            get(api::data::get).put(api::data::put),
        )
        .route("/v1/datasets/{name}/protect", post(api::data::protect))
        .route(
            "/v1/datasets/{name}/records",
            get(api::records::read)
                .post(api::records::ingest)
                .layer(DefaultBodyLimit::max(limits.max_ingest_bytes)),
        )
        .route("/v1/detokenize", post(api::data::detokenize))
        .route("/v1/query", post(api::query::query))
        .route("/v1/subjects/{id}/erasure", post(api::erasure::request))
        .route("/v1/subjects/{id}/export", get(api::erasure::export))
        .route("/v1/erasure", get(api::erasure::list))
        .route("/v1/erasure/{job}", get(api::erasure::status))
        .route("/v1/erasure/{job}/extend", post(api::erasure::extend))
        .route(
            "/v1/legal-holds",
            get(api::erasure::holds).post(api::erasure::place_hold),
        )
        .route(
            "/v1/legal-holds/{id}/release",
            post(api::erasure::release_hold),
        )
        .route(
            "/v1/datasets/{name}/subscriptions/{group}/poll",
            post(api::subscriptions::poll),
        )
        .route(
            "/v1/datasets/{name}/subscriptions/{group}/commit",
            post(api::subscriptions::commit),
        )
        // Inside the enforcing layer too, so a handler's panic or timeout is audited as an
        // error like any other outcome (the outer copies guard the layers above).
        .route_layer(CatchPanicLayer::new())
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::enforce,
        ));
    protected
        .fallback(|| async { ApiError::not_found() })
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(middleware::sanitize_request_id))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req.headers().get(middleware::REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    // The path template only: concrete paths may carry identifiers.
                    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |m| m.as_str());
                    tracing::info_span!("request", request_id = %id, method = %req.method(), route)
                }))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::record_metrics))
                .layer(axum::middleware::from_fn(middleware::render_errors))
                .layer(CatchPanicLayer::new())
                .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
                .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        )
        .with_state(state)
}

/// How often a replica checks whether another one changed the policy.
const POLICY_SYNC: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then stops accepting, lets requests in flight finish,
/// commits every queued audit event and closes the databases.
///
/// # Errors
/// An I/O failure of the listener.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sync_state = state.clone();
    let sync = tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLICY_SYNC);
        loop {
            tick.tick().await;
            if let Err(e) = sync_state.refresh_policy().await {
                warn!(error = %e, "policy refresh failed");
            }
        }
    });
    if state.config.pipeline.loaders {
        state.start_loaders();
    }
    let erasures = state
        .config
        .erasure
        .run
        .then(|| erasure::start(state.clone()));
    let aggregates = materialize::schedule(state.clone());
    let retention = pipeline::retention(state.clone());
    info!(addr = %listener.local_addr()?, "warden listening");
    let result = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    sync.abort();
    for a in aggregates.into_iter().chain(erasures).chain(retention) {
        a.abort();
    }
    state.shutdown().await;
    info!("warden stopped; audit log flushed");
    result
}
