//! Second factors: enrolment, confirmation, step-up, replay, lockout and freshness.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use warden_gateway::auth::totp::code_at;

use crate::support::{assert_error, gateway, seed_from_uri, Backend};

warden_audit::on_both_backends!(crate::support::Backend; enrol_confirm_step_up, replay_lockout_and_freshness);

async fn enrol_confirm_step_up(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    let created = g
        .post("/v1/users", Some(&admin), json!({"username": "ann.auditor", "password": "a long passphrase", "roles": ["auditor"]}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let token = g.login("ann.auditor", "a long passphrase").await;

    // Without a factor the auditor cannot read the audit trail, nor step up.
    assert_error(
        &g.get("/v1/audit/events", &token).await,
        StatusCode::UNAUTHORIZED,
        "mfa_required",
    );
    assert_error(
        &g.post("/v1/auth/mfa", Some(&token), json!({"code": "123456"}))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    );

    let enrolled = g.post("/v1/auth/mfa/enroll", Some(&token), json!({})).await;
    assert_eq!(enrolled.status, StatusCode::OK, "{enrolled:?}");
    let uri = enrolled.json["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Warden:ann.auditor?"),
        "{uri}"
    );
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        enrolled.json["qr_png_base64"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    let qr = g.get("/v1/auth/mfa/qr.png", &token).await;
    assert_eq!(qr.status, StatusCode::OK);
    assert_eq!(qr.headers["content-type"], "image/png");
    let seed = seed_from_uri(uri);

    // A pending factor does not step up; confirming needs a right code.
    let code = code_at(&seed, g.clock_secs()).unwrap();
    assert_error(
        &g.post("/v1/auth/mfa", Some(&token), json!({"code": code}))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    );
    assert_error(
        &g.post(
            "/v1/auth/mfa/confirm",
            Some(&token),
            json!({"code": "000000"}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    );
    let ok = g
        .post("/v1/auth/mfa/confirm", Some(&token), json!({"code": code}))
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{ok:?}");
    // The confirmed seed is never shown again, nor can it be replaced.
    assert_error(
        &g.get("/v1/auth/mfa/qr.png", &token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &g.post("/v1/auth/mfa/enroll", Some(&token), json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let stepped = g.step_up(&token, &seed).await;
    let me = g.get("/v1/auth/me", &stepped).await;
    assert_eq!(me.json["amr"], json!(["pwd", "otp"]));
    assert_eq!(me.json["mfa_at"], json!(g.clock_secs()));
    assert_eq!(
        g.get("/v1/audit/events", &stepped).await.status,
        StatusCode::OK
    );
}

async fn replay_lockout_and_freshness(backend: Backend) {
    let g = gateway(backend).await;
    let token = g.login("admin", &g.admin_password).await;
    let seed = g.admin_seed.clone();
    g.clock.tick(Duration::from_secs(30));
    let code = code_at(&seed, g.clock_secs()).unwrap();
    let first = g
        .post("/v1/auth/mfa", Some(&token), json!({"code": code}))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    // The same code again, even within its window, is refused.
    let replay = g
        .post("/v1/auth/mfa", Some(&token), json!({"code": code}))
        .await;
    assert_error(&replay, StatusCode::UNAUTHORIZED, "invalid_otp");

    // Freshness: the step-up token works for sensitive actions until the window passes.
    let stepped = first.json["access_token"].as_str().unwrap().to_owned();
    assert_eq!(g.get("/v1/users", &stepped).await.status, StatusCode::OK);
    g.clock.tick(Duration::from_secs(5 * 60 + 10));
    assert_error(
        &g.get("/v1/users", &stepped).await,
        StatusCode::UNAUTHORIZED,
        "mfa_required",
    );
    assert_eq!(
        g.get("/v1/auth/me", &stepped).await.status,
        StatusCode::OK,
        "non-sensitive actions still work"
    );

    // Five wrong codes (the replay above was the first) lock the factor; then even the right
    // code is refused until it unlocks.
    let token = g.login("admin", &g.admin_password).await;
    for _ in 0..3 {
        assert_error(
            &g.post("/v1/auth/mfa", Some(&token), json!({"code": "000000"}))
                .await,
            StatusCode::UNAUTHORIZED,
            "invalid_otp",
        );
    }
    assert_error(
        &g.post("/v1/auth/mfa", Some(&token), json!({"code": "not-a-code"}))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    );
    g.clock.tick(Duration::from_secs(30));
    let right = code_at(&seed, g.clock_secs()).unwrap();
    assert_error(
        &g.post("/v1/auth/mfa", Some(&token), json!({"code": right}))
            .await,
        StatusCode::TOO_MANY_REQUESTS,
        "locked",
    );
    g.clock.tick(Duration::from_secs(15 * 60));
    let token = g.login("admin", &g.admin_password).await;
    let right = code_at(&seed, g.clock_secs()).unwrap();
    assert_eq!(
        g.post("/v1/auth/mfa", Some(&token), json!({"code": right}))
            .await
            .status,
        StatusCode::OK
    );

    // Service accounts have no second factor, even where the policy would let them manage one.
    let (_, svc) = g
        .principal_token(warden_sdk::PrincipalKind::Service, &["subject"], false)
        .await;
    let enroll = g
        .call(
            Method::POST,
            "/v1/auth/mfa/enroll",
            Some(&svc),
            Some(json!({})),
        )
        .await;
    assert_error(&enroll, StatusCode::BAD_REQUEST, "invalid_request");
    let step_up = g
        .call(
            Method::POST,
            "/v1/auth/mfa",
            Some(&svc),
            Some(json!({"code": "123456"})),
        )
        .await;
    assert_error(&step_up, StatusCode::BAD_REQUEST, "invalid_request");
}
