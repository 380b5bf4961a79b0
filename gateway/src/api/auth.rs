//! `/v1/auth/*`: tokens, second factors, passwords.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use warden_sdk::{
    ErrorCode, MfaEnrollment, OtpRequest, PasswordChange, PrincipalKind, TokenRequest,
    TokenResponse, WhoAmI,
};

use super::noted;
use crate::auth::{passwords, totp, Principal};
use crate::error::{ApiError, Error};
use crate::middleware::AuditNote;
use crate::state::{totp_aad, AppState};
use crate::store::{MfaRecord, PrincipalRecord, Throttle};

fn invalid_grant() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidGrant,
        "wrong credentials, or too many failed attempts: try again later",
    )
}

fn locked() -> ApiError {
    ApiError::new(
        ErrorCode::Locked,
        "too many failed attempts; try again later",
    )
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `POST /v1/auth/token`.
pub async fn token(
    State(app): State<AppState>,
    crate::extract::ClientAddr(source): crate::extract::ClientAddr,
    body: Result<crate::extract::ApiJson<TokenRequest>, ApiError>,
) -> Response {
    let mut note = AuditNote {
        action: Some("auth.token".to_owned()),
        ..AuditNote::default()
    };
    let request = match body {
        Ok(crate::extract::ApiJson(r)) => r,
        Err(e) => return noted(note.detail("reason", e.code.as_str()), Err::<(), _>(e)),
    };
    let (grant, name, secret, kinds): (&str, String, String, &[PrincipalKind]) = match request {
        TokenRequest::Password { username, password } => (
            "password",
            username,
            password,
            &[PrincipalKind::User, PrincipalKind::Subject],
        ),
        TokenRequest::ClientCredentials {
            client_id,
            client_secret,
        } => (
            "client_credentials",
            client_id,
            client_secret,
            &[PrincipalKind::Service],
        ),
    };
    note = note.detail("grant_type", grant);
    let result = login(&app, &name, &source, secret, kinds, &mut note).await;
    noted(note, result)
}

async fn login(
    app: &AppState,
    name: &str,
    source: &str,
    secret: String,
    kinds: &[PrincipalKind],
    note: &mut AuditNote,
) -> Result<Json<TokenResponse>, ApiError> {
    if name.is_empty() || name.len() > 128 {
        return Err(invalid_grant());
    }
    let now = app.clock.now_micros();
    let auth = &app.config.auth;
    // One source on one account: delays from the configured failures on, doubling up to
    // the configured longest. The account from every source: short delays after ten times
    // as many, so a botnet guesses slowly and the owner waits a minute at most.
    let per_source = Throttle {
        free: auth.login_max_failures,
        first: 1_000_000,
        max: micros(auth.login_lockout).max(1_000_000),
    };
    let per_account = Throttle {
        free: auth.login_max_failures.saturating_mul(10),
        first: 1_000_000,
        max: 60_000_000,
    };
    let principal = app
        .store
        .principal_by_name(name)
        .await?
        .filter(|p| kinds.contains(&p.kind));
    // The attempt is reserved (and counted) before the secret is checked: concurrent guesses
    // cannot exceed the budget.
    let permitted = match &principal {
        Some(p) => {
            note.actor = Some((p.id.clone(), p.kind.as_str().to_owned()));
            // The account-wide wait first: while it runs, nothing is counted against the
            // address, so an owner retrying during an attack is not pushed further back.
            app.store
                .login_attempt(&p.id, "*", now, per_account)
                .await?
                && app
                    .store
                    .login_attempt(&p.id, source, now, per_source)
                    .await?
        }
        None => false,
    };
    // Unknown, locked and known accounts take the same time and get the same answer.
    let hash = principal
        .as_ref()
        .filter(|_| permitted)
        .map(|p| p.secret_hash.clone());
    let ok = passwords::verify(secret, hash).await;
    let reason = match &principal {
        None => Some("unknown_account"),
        Some(_) if !permitted => Some("throttled"),
        Some(_) if !ok => Some("wrong_credentials"),
        Some(p) if p.disabled => Some("disabled"),
        Some(_) => None,
    };
    let (Some(p), None) = (principal, reason) else {
        *note = std::mem::take(note).detail("reason", reason.unwrap_or("wrong_credentials"));
        return Err(invalid_grant());
    };
    app.store.login_succeeded(&p.id, source).await?;
    let amr: &[&str] = if p.kind == PrincipalKind::Service {
        &["client_secret"]
    } else {
        &["pwd"]
    };
    session(app, &p, amr, None)
}

/// A new token for `account`, under its current credentials epoch: its roles as stored now.
fn session(
    app: &AppState,
    account: &PrincipalRecord,
    amr: &[&str],
    mfa_at: Option<i64>,
) -> Result<Json<TokenResponse>, ApiError> {
    let access_token = app.tokens.issue(
        &account.id,
        account.kind,
        &account.roles,
        amr,
        mfa_at,
        account.credentials_epoch,
    )?;
    Ok(Json(TokenResponse {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: app.tokens.ttl_secs(),
    }))
}

/// `GET /v1/auth/me`.
pub async fn me(Extension(p): Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI {
        id: p.id,
        kind: p.kind,
        roles: p.roles,
        amr: p.amr,
        mfa_at: p.mfa_at,
    })
}

/// The stored account of a principal that may hold a second factor (local users and
/// subjects; not service accounts or external identities).
async fn mfa_account(app: &AppState, p: &Principal) -> Result<PrincipalRecord, ApiError> {
    if !p.local || p.kind == PrincipalKind::Service {
        return Err(ApiError::invalid("second factors are managed by your identity provider or not available to service accounts"));
    }
    app.store
        .principal_by_id(&p.id)
        .await?
        .ok_or_else(ApiError::unauthenticated)
}

/// `POST /v1/auth/mfa/enroll`: a new, unconfirmed TOTP factor.
pub async fn enroll(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<MfaEnrollment>, ApiError> {
    let account = mfa_account(&app, &p).await?;
    let seed = zeroize::Zeroizing::new(totp::new_seed());
    let record = MfaRecord {
        principal_id: account.id.clone(),
        secret_wrapped: app
            .kek
            .wrap(&seed, &totp_aad(&account.id))
            .await
            .map_err(Error::from)?,
        confirmed: false,
        last_step: -1,
        failures: 0,
        locked_until: 0,
    };
    app.store.begin_mfa(&record, app.clock.now_micros()).await?;
    let issuer = &app.config.auth.totp_issuer;
    Ok(Json(MfaEnrollment {
        otpauth_uri: totp::otpauth_uri(&seed, issuer, &account.name)?,
        qr_png_base64: base64::engine::general_purpose::STANDARD.encode(totp::qr_png(
            &seed,
            issuer,
            &account.name,
        )?),
    }))
}

/// `GET /v1/auth/mfa/qr.png`: the QR code of the pending (unconfirmed) enrolment. A confirmed
/// seed is never shown again.
pub async fn qr(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    let account = mfa_account(&app, &p).await?;
    let m = app
        .store
        .mfa(&account.id)
        .await?
        .filter(|m| !m.confirmed)
        .ok_or_else(ApiError::not_found)?;
    let seed = app
        .kek
        .unwrap(&m.secret_wrapped, &totp_aad(&account.id))
        .await
        .map_err(Error::from)?;
    let png = totp::qr_png(seed.expose(), &app.config.auth.totp_issuer, &account.name)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        png,
    )
        .into_response())
}

/// Checks a one-time code against the principal's factor: right code, not replayed, not
/// locked. Counts failures and locks after too many.
async fn check_code(
    app: &AppState,
    account: &PrincipalRecord,
    code: &str,
    confirmed: bool,
) -> Result<MfaRecord, ApiError> {
    let now = app.clock.now_micros();
    let m = app
        .store
        .mfa(&account.id)
        .await?
        .filter(|m| m.confirmed == confirmed)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidOtp,
                if confirmed {
                    "no confirmed second factor: enroll at POST /v1/auth/mfa/enroll"
                } else {
                    "no pending enrolment: start one at POST /v1/auth/mfa/enroll"
                },
            )
        })?;
    // Reserve the attempt first (it counts as a failure until the code proves right), so
    // concurrent guesses cannot exceed the budget.
    let until = now + micros(app.config.auth.mfa_lockout);
    if !app
        .store
        .mfa_attempt(&account.id, now, app.config.auth.mfa_max_failures, until)
        .await?
    {
        return Err(locked());
    }
    let seed = app
        .kek
        .unwrap(&m.secret_wrapped, &totp_aad(&account.id))
        .await
        .map_err(Error::from)?;
    let accepted = match totp::matching_step(seed.expose(), code, app.clock.now_secs()) {
        Some(step) => app.store.accept_mfa_step(&account.id, step).await?,
        None => false,
    };
    if !accepted {
        return Err(ApiError::new(
            ErrorCode::InvalidOtp,
            "wrong or already used code",
        ));
    }
    Ok(m)
}

fn bounded_code(body: &OtpRequest) -> Result<&str, ApiError> {
    if body.code.len() > 16 {
        return Err(ApiError::new(
            ErrorCode::InvalidOtp,
            "wrong or already used code",
        ));
    }
    Ok(body.code.trim())
}

/// `POST /v1/auth/mfa/confirm`: activates the pending factor with a first code.
pub async fn confirm(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    crate::extract::ApiJson(body): crate::extract::ApiJson<OtpRequest>,
) -> Result<StatusCode, ApiError> {
    let account = mfa_account(&app, &p).await?;
    let pending = check_code(&app, &account, bounded_code(&body)?, false).await?;
    if !app
        .store
        .confirm_mfa(&account.id, &pending.secret_wrapped)
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the enrolment changed meanwhile: enroll again",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/mfa`: step-up. Returns a new token with `otp` in `amr` and `mfa_at` now.
pub async fn step_up(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    crate::extract::ApiJson(body): crate::extract::ApiJson<OtpRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let account = mfa_account(&app, &p).await?;
    check_code(&app, &account, bounded_code(&body)?, true).await?;
    let mut amr: Vec<&str> = p
        .amr
        .iter()
        .map(String::as_str)
        .filter(|m| *m != "otp")
        .collect();
    amr.push("otp");
    // Roles come from the account, not the old token: a change since login applies now.
    session(&app, &account, &amr, Some(app.clock.now_secs()))
}

/// `POST /v1/auth/password`: changes the caller's own password.
pub async fn change_password(
    State(app): State<AppState>,
    Extension(p): Extension<Principal>,
    crate::extract::ApiJson(body): crate::extract::ApiJson<PasswordChange>,
) -> Result<Json<TokenResponse>, ApiError> {
    let account = mfa_account(&app, &p).await?;
    if !passwords::verify(body.current_password, Some(account.secret_hash.clone())).await {
        return Err(invalid_grant());
    }
    passwords::check_new_password(&body.new_password)?;
    let hash = passwords::hash(body.new_password).await?;
    // Raises the credentials epoch: every token issued before, this one too, stops working.
    app.store.set_secret_hash(&account.id, &hash).await?;
    let account = app
        .store
        .principal_by_id(&account.id)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    // A password proves the password only: the new session starts without a second factor.
    session(&app, &account, &["pwd"], None)
}
