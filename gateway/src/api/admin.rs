//! Administration: users, service accounts and the policy (admins, with MFA; every change
//! audited).

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use warden_policy::authz::validate_rule;
use warden_sdk::{
    CreateServiceAccount, CreateUser, ErrorCode, PolicyRule, PolicyView, PrincipalKind,
    PrincipalView, ServiceAccountCreated,
};

use super::noted;
use crate::auth::{passwords, Principal};
use crate::error::{ApiError, Error};
use crate::extract::ApiJson;
use crate::middleware::AuditNote;
use crate::state::AppState;
use crate::store::PrincipalRecord;

/// Most principals listed.
const MAX_LIST: u32 = 1000;
/// Most rules in a policy.
const MAX_RULES: usize = 10_000;

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (3..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "names are 3 to 64 letters, digits or . _ @ -",
        ))
    }
}

fn check_roles(roles: &[String]) -> Result<(), ApiError> {
    let ok = !roles.is_empty()
        && roles.len() <= 16
        && roles.iter().all(|r| {
            (1..=64).contains(&r.len())
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "roles: 1 to 16 names of letters, digits, _ or -",
        ))
    }
}

/// `GET /v1/users`.
pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<PrincipalView>>, ApiError> {
    let mut out = Vec::new();
    for p in app.store.list_principals(MAX_LIST).await? {
        let mfa_enrolled = app.store.mfa(&p.id).await?.is_some_and(|m| m.confirmed);
        out.push(PrincipalView {
            id: p.id,
            kind: p.kind,
            name: p.name,
            roles: p.roles,
            disabled: p.disabled,
            mfa_enrolled,
        });
    }
    Ok(Json(out))
}

fn new_record(
    kind: PrincipalKind,
    name: String,
    secret_hash: String,
    roles: Vec<String>,
    now: i64,
) -> PrincipalRecord {
    PrincipalRecord {
        id: uuid::Uuid::new_v4().to_string(),
        kind,
        name,
        secret_hash,
        roles,
        disabled: false,
        failed_logins: 0,
        locked_until: 0,
        must_change_password: false,
        created_at: now,
        credentials_epoch: 0,
    }
}

/// `POST /v1/users`: a user or data subject with a password.
pub async fn create_user(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<CreateUser>,
) -> Response {
    let result = async {
        check_name(&body.username)?;
        check_roles(&body.roles)?;
        let kind = body.kind.unwrap_or(PrincipalKind::User);
        if kind == PrincipalKind::Service {
            return Err(ApiError::invalid(
                "create service accounts at POST /v1/service-accounts",
            ));
        }
        passwords::check_new_password(&body.password)?;
        let hash = passwords::hash(body.password).await?;
        let record = new_record(
            kind,
            body.username,
            hash,
            body.roles,
            app.clock.now_micros(),
        );
        app.store.create_principal(&record).await?;
        Ok(record)
    }
    .await;
    let note = match &result {
        Ok(r) => AuditNote::default()
            .detail("principal_id", r.id.clone())
            .detail("roles", r.roles.join(",")),
        Err(_) => AuditNote::default(),
    };
    noted(note, result.map(|r| (StatusCode::CREATED, Json(view(r)))))
}

fn view(p: PrincipalRecord) -> PrincipalView {
    PrincipalView {
        id: p.id,
        kind: p.kind,
        name: p.name,
        roles: p.roles,
        disabled: p.disabled,
        mfa_enrolled: false,
    }
}

/// `POST /v1/service-accounts`: client credentials for a pipeline stage; the secret is
/// returned this once.
pub async fn create_service_account(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<CreateServiceAccount>,
) -> Response {
    let result = async {
        check_name(&body.name)?;
        check_roles(&body.roles)?;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let client_secret = URL_SAFE_NO_PAD.encode(secret);
        let hash = passwords::hash(client_secret.clone()).await?;
        let record = new_record(
            PrincipalKind::Service,
            body.name,
            hash,
            body.roles,
            app.clock.now_micros(),
        );
        app.store.create_principal(&record).await?;
        Ok(ServiceAccountCreated {
            id: record.id,
            client_id: record.name,
            client_secret,
        })
    }
    .await;
    let note = match &result {
        Ok(c) => AuditNote::default().detail("principal_id", c.id.clone()),
        Err(_) => AuditNote::default(),
    };
    noted(note, result.map(|c| (StatusCode::CREATED, Json(c))))
}

async fn set_disabled(app: &AppState, caller: &Principal, id: &str, disabled: bool) -> Response {
    let result = async {
        if disabled && caller.id == id {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "you cannot disable your own account",
            ));
        }
        Ok(app.store.set_disabled(id, disabled).await?)
    }
    .await;
    account_changed(id, result)
}

/// The answer to a change of the account `id` that `changed` says was found (or why not),
/// audited with the account's id.
fn account_changed(id: &str, changed: Result<bool, ApiError>) -> Response {
    let result = changed.and_then(|found| {
        if found {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found())
        }
    });
    let target: String = id.chars().take(64).collect();
    noted(AuditNote::default().detail("principal_id", target), result)
}

/// `POST /v1/users/{id}/unlock`: ends the account's login delays and its second factor's
/// lock at once (after a flood of wrong passwords, say), audited with the account's id.
pub async fn unlock(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let changed = app.store.unlock(&id).await.map_err(ApiError::from);
    account_changed(&id, changed)
}

/// `POST /v1/users/{id}/disable`: takes effect at once, for tokens already issued too.
pub async fn disable(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    set_disabled(&app, &p, &id, true).await
}

/// `POST /v1/users/{id}/enable`.
pub async fn enable(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    set_disabled(&app, &p, &id, false).await
}

/// `GET /v1/policy`.
pub async fn get_policy(State(app): State<AppState>) -> Result<Json<PolicyView>, ApiError> {
    let (version, rules) = app.store.policy().await?;
    Ok(Json(PolicyView { version, rules }))
}

/// `PUT /v1/policy`: replaces every rule, if `version` is still current.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    version: i64,
    rules: Vec<PolicyRule>,
}

pub async fn put_policy(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<PolicyUpdate>,
) -> Response {
    let (old_version, old_rules) = match app.store.policy().await {
        Ok(p) => p,
        Err(e) => return noted(AuditNote::default(), Err::<(), _>(ApiError::from(e))),
    };
    let old: HashSet<&PolicyRule> = old_rules.iter().collect();
    let new: HashSet<&PolicyRule> = body.rules.iter().collect();
    let note = AuditNote::default()
        .detail("from_version", old_version)
        .detail("rules_added", new.difference(&old).count())
        .detail("rules_removed", old.difference(&new).count());
    let result = async {
        if body.rules.len() > MAX_RULES {
            return Err(ApiError::invalid(format!("at most {MAX_RULES} rules")));
        }
        for (i, r) in body.rules.iter().enumerate() {
            validate_rule(r).map_err(|e| ApiError::invalid(format!("rules[{i}]: {e}")))?;
        }
        // Refuse a policy that nobody could ever change again.
        let can_write = body.rules.iter().any(|r| {
            r.ptype == "p"
                && (r.values[1] == "policy" || r.values[1] == "*")
                && (r.values[2] == "write" || r.values[2] == "*")
        });
        if !can_write {
            return Err(ApiError::invalid(
                "the policy must let some role write the policy",
            ));
        }
        // Held across the store write and the swap, so concurrent changes and the background
        // refresh apply in version order.
        let mut held = app.policy_version.lock().await;
        let version = app.store.replace_policy(body.version, &body.rules).await?;
        app.authz.replace(&body.rules).await.map_err(Error::from)?;
        *held = version;
        Ok(Json(PolicyView {
            version,
            rules: body.rules,
        }))
    }
    .await;
    noted(note, result)
}
