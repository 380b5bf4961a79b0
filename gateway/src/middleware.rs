//! The request path: request ids, metrics, error rendering, and the policy-enforcing layer
//! (authentication → rate limit → authorization → MFA step-up → handler → audit).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tracing::{debug, error};
use warden_audit::NewEvent;
use warden_sdk::{Decision, ErrorBody, ErrorCode, ErrorDetail};

use crate::auth::Principal;
use crate::error::{code_for_status, ApiError};
use crate::metrics::HttpLabels;
use crate::routes::{self, Access};
use crate::state::AppState;

pub const REQUEST_ID: &str = "x-request-id";

/// What a handler adds to the audit event of its request.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// Who acted, when the route is public and the handler found out (`(id, kind)`).
    pub actor: Option<(String, String)>,
    /// The action name, for public routes (`auth.token`).
    pub action: Option<String>,
    /// The data subject concerned, by pseudonym only.
    pub subject_ref: Option<String>,
    /// The stated purpose of processing.
    pub purpose: Option<String>,
    /// Extra details; never clear personal data or secrets.
    pub details: Map<String, Value>,
}

impl AuditNote {
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// Drops a client-sent request id that is not a short token, so nothing arbitrary reaches
/// the logs and the audit log through it; one is then generated.
pub async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !ok {
        req.headers_mut().remove(REQUEST_ID);
    }
    next.run(req).await
}

/// Counts and times every request by route template and status.
pub async fn record_metrics(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    // Only the standard methods become label values: anything else could grow the series
    // without bound.
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS => req.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let res = next.run(req).await;
    let labels = HttpLabels {
        route,
        method,
        status: res.status().as_u16(),
    };
    app.metrics.http_requests.get_or_create(&labels).inc();
    app.metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    res
}

/// Renders every error as `{"error": {"code", "message", "request_id"}}`: those of handlers
/// (an [`ApiError`] in the response extensions) and bare statuses from the router, the body
/// limit, the timeout and the panic guard.
pub async fn render_errors(req: Request, next: Next) -> Response {
    let request_id = request_id(&req);
    let mut res = next.run(req).await;
    let status = res.status();
    let error = match res.extensions_mut().remove::<ApiError>() {
        Some(e) => e,
        None if status.is_client_error() || status.is_server_error() => {
            let already_json = res
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if already_json {
                return res;
            }
            let code = code_for_status(status);
            ApiError::new(code, default_message(code))
        }
        None => return res,
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code: error.code,
            message: error.message.clone(),
            request_id,
        },
    };
    let (mut parts, _) = res.into_parts();
    parts.status = error.status();
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let json = serde_json::to_vec(&body).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(json))
}

fn default_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotFound => "no such resource",
        ErrorCode::MethodNotAllowed => "this method is not allowed on this resource",
        ErrorCode::PayloadTooLarge => "the body is larger than the configured limit",
        ErrorCode::Timeout => "the request took longer than the configured timeout",
        ErrorCode::UnsupportedMediaType => "unsupported content type",
        ErrorCode::RateLimited => "too many requests; slow down",
        ErrorCode::Internal => "internal error; quote the request id to the operator",
        _ => "the request was refused",
    }
}

/// The policy-enforcing layer around every matched route.
pub async fn enforce(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let rid = request_id(&req);
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
    let ctx = Ctx {
        app: &app,
        method: &method,
        route: &route,
        request_id: &rid,
    };

    // axum answers HEAD with the GET handler, so HEAD is guarded exactly as GET.
    let policy_method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let Some(spec) = routes::lookup(policy_method, &route) else {
        if routes::ROUTES.iter().any(|r| r.path == route) {
            // No handler runs for a method the route table does not name.
            return ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this method is not allowed on this resource",
            )
            .into_response();
        }
        error!(%method, route, "route has no entry in the route table; denied");
        return ctx.deny(None, "unknown", ApiError::forbidden()).await;
    };
    let Access::Protected {
        resource,
        action,
        mfa,
    } = spec.access
    else {
        // Public routes: rate-limited per client address; audited when the handler says who.
        if !app.limiter.check(&format!("ip:{client}")) {
            return rate_limited(&app);
        }
        let res = next.run(req).await;
        return match res.extensions().get::<AuditNote>().cloned() {
            Some(note) => {
                let action = note.action.clone().unwrap_or_else(|| "public".to_owned());
                ctx.finish(res, None, &action, note).await
            }
            None => res,
        };
    };
    let Some(resource) = routes::resource(resource, &route, req.uri().path()) else {
        return ApiError::not_found().into_response();
    };
    let resource = resource.as_str();
    let action_name = format!("{resource}.{action}");

    let (principal, must_change_password) = match authenticate(&app, req.headers()).await {
        Ok(p) => p,
        Err(reason) => {
            debug!(reason, route, "authentication failed");
            // Failed authentication is limited per client address, so garbage tokens cannot
            // flood the append-only log.
            if !app.limiter.check(&format!("ip:{client}")) {
                return rate_limited(&app);
            }
            return ctx
                .deny(None, &action_name, ApiError::unauthenticated())
                .await;
        }
    };
    if !app.limiter.check(&principal.id) {
        return rate_limited(&app);
    }
    if must_change_password && resource != "self" {
        let e = ApiError::new(
            ErrorCode::PasswordChangeRequired,
            "change the generated first password at POST /v1/auth/password first",
        );
        return ctx.deny(Some(&principal), &action_name, e).await;
    }
    match app.authz.allows(&principal.roles, resource, action) {
        Ok(true) => {}
        Ok(false) => {
            return ctx
                .deny(Some(&principal), &action_name, ApiError::forbidden())
                .await
        }
        Err(e) => {
            error!(error = %e, "policy evaluation failed; denied");
            return ctx
                .deny(Some(&principal), &action_name, ApiError::forbidden())
                .await;
        }
    }
    if mfa && !principal.mfa_fresh(app.clock.now_secs(), app.config.auth.mfa_window) {
        return ctx
            .deny(Some(&principal), &action_name, ApiError::mfa_required())
            .await;
    }
    req.extensions_mut().insert(principal.clone());
    let res = next.run(req).await;
    let note = res
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    ctx.finish(res, Some(&principal), &action_name, note).await
}

fn audit_unavailable() -> Response {
    ApiError::new(
        ErrorCode::AuditUnavailable,
        "the audit log cannot record this request",
    )
    .into_response()
}

/// Load shedding: counted, not audited one by one (the limiter exists so that a flood does
/// not become a flood of audit rows too).
fn rate_limited(app: &AppState) -> Response {
    app.metrics.rate_limited.inc();
    ApiError::new(ErrorCode::RateLimited, "too many requests; slow down").into_response()
}

/// Verifies the bearer token and that a local principal still exists and is enabled;
/// returns the principal and whether it must change its first password.
async fn authenticate(
    app: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<(Principal, bool), &'static str> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or("no authorization header")?;
    let value = header
        .to_str()
        .map_err(|_| "authorization header is not text")?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or("not a bearer token")?;
    let principal = app.tokens.verify(token.trim()).await.map_err(|r| match r {
        crate::auth::tokens::Rejection::Expired => "token expired",
        crate::auth::tokens::Rejection::NotYetValid => "token not yet valid",
        crate::auth::tokens::Rejection::UnknownKid => "unknown key id",
        crate::auth::tokens::Rejection::Algorithm => "algorithm not accepted",
        crate::auth::tokens::Rejection::Malformed => "malformed token",
        crate::auth::tokens::Rejection::Invalid(_) => "invalid signature or claims",
    })?;
    if !principal.local {
        return Ok((principal, false));
    }
    // A disabled account loses access at once, not when its token expires; a password
    // change ends the tokens issued before it.
    match app.store.principal_by_id(&principal.id).await {
        Ok(Some(p)) if p.credentials_epoch != principal.cep => {
            Err("token issued before the credentials changed")
        }
        Ok(Some(p)) if !p.disabled => Ok((principal, p.must_change_password)),
        Ok(_) => Err("principal disabled or removed"),
        Err(e) => {
            error!(error = %e, "cannot load principal");
            Err("principal lookup failed")
        }
    }
}

struct Ctx<'a> {
    app: &'a AppState,
    method: &'a Method,
    route: &'a str,
    request_id: &'a str,
}

impl Ctx<'_> {
    fn event(
        &self,
        principal: Option<&Principal>,
        action: &str,
        decision: Decision,
        note: &AuditNote,
        status: u16,
    ) -> NewEvent {
        let (actor, kind) = match (principal, &note.actor) {
            (Some(p), _) => (p.id.clone(), p.kind.as_str().to_owned()),
            (None, Some((id, kind))) => (id.clone(), kind.clone()),
            (None, None) => ("anonymous".to_owned(), "anonymous".to_owned()),
        };
        let mut details = note.details.clone();
        details.insert("method".to_owned(), json!(self.method.as_str()));
        details.insert("status".to_owned(), json!(status));
        NewEvent::new(
            self.app.clock.now_micros(),
            actor,
            kind,
            action,
            self.route.to_owned(),
            decision,
        )
        .request_id(Some(self.request_id.to_owned()).filter(|r| r != "-"))
        .subject_ref(note.subject_ref.clone())
        .purpose(note.purpose.clone())
        .details(&Value::Object(details))
    }

    /// Refuses the request once its denial is durable in the audit log.
    async fn deny(&self, principal: Option<&Principal>, action: &str, error: ApiError) -> Response {
        self.app.metrics.decision(Decision::Deny);
        let note = AuditNote::default().detail("reason", error.code.as_str());
        let event = self.event(
            principal,
            action,
            Decision::Deny,
            &note,
            error.status().as_u16(),
        );
        if let Err(e) = self.app.audit.append(event).await {
            error!(error = %e, "cannot record a denial in the audit log");
            return audit_unavailable();
        }
        error.into_response()
    }

    /// Answers a request that reached its handler once its outcome is durable in the audit
    /// log: reads as well as writes, so that no answer given survives a crash unrecorded.
    async fn finish(
        &self,
        res: Response,
        principal: Option<&Principal>,
        action: &str,
        note: AuditNote,
    ) -> Response {
        let status = res.status();
        let decision = if status.is_success() || status.is_redirection() {
            Decision::Allow
        } else if status.as_u16() == 401 || status.as_u16() == 403 || status.as_u16() == 429 {
            Decision::Deny
        } else {
            Decision::Error
        };
        self.app.metrics.decision(decision);
        let event = self.event(principal, action, decision, &note, status.as_u16());
        if let Err(e) = self.app.audit.append(event).await {
            error!(error = %e, route = self.route, "audit append failed; response withheld");
            return audit_unavailable();
        }
        res
    }
}
