//! Bad input gets a clear JSON error with a stable code and the request id — never a panic,
//! internal detail or an echoed secret.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::support::{assert_error, gateway, gateway_with, Backend};

warden_audit::on_both_backends!(crate::support::Backend;
    malformed_oversized_unknown_and_unauthenticated,
    rate_limits_per_principal
);

async fn malformed_oversized_unknown_and_unauthenticated(backend: Backend) {
    let g = gateway(backend).await;
    let raw = |body: &'static str, ctype: &'static str| {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/auth/token")
            .header("content-type", ctype)
            .body(Body::from(body))
            .unwrap()
    };
    assert_error(
        &g.send(raw("{\"grant_type\": ", "application/json")).await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    assert_error(
        &g.send(raw(
            "grant_type=password",
            "application/x-www-form-urlencoded",
        ))
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let r = g
        .post(
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "admin", "password": "x", "pasword": "y"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("pasword"));
    let r = g
        .post("/v1/auth/token", None, json!({"grant_type": "magic"}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    // A wrongly typed secret is not echoed back.
    let r = g
        .post(
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "admin", "password": 123456789}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(!r.bytes.windows(9).any(|w| w == b"123456789"), "{r:?}");
    let r = g
        .post(
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "admin", "password": "wrong password!"}),
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_grant");
    assert!(!String::from_utf8_lossy(&r.bytes).contains("wrong password!"));

    // Larger than the 1 MiB limit.
    let big = format!(
        "{{\"grant_type\":\"password\",\"username\":\"{}\",\"password\":\"x\"}}",
        "a".repeat(2 << 20)
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/token")
        .header("content-type", "application/json")
        .body(Body::from(big))
        .unwrap();
    assert_error(
        &g.send(req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // Tokens: missing, garbage, wrong scheme, absurdly long.
    for header in [
        None,
        Some("Bearer garbage"),
        Some("Basic YWRtaW46YWRtaW4="),
        Some("Bearer "),
    ] {
        let mut req = Request::builder().uri("/v1/auth/me");
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        assert_error(
            &g.send(req.body(Body::empty()).unwrap()).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
    }
    let long = format!("Bearer {}", "a".repeat(20_000));
    let req = Request::builder()
        .uri("/v1/auth/me")
        .header("authorization", long)
        .body(Body::empty())
        .unwrap();
    assert_error(
        &g.send(req).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    // Wrong TOTP codes of every shape.
    let token = g.login("admin", &g.admin_password).await;
    for code in [
        "",
        "12345",
        "1234567",
        "abcdef",
        "000000",
        "99999999999999999999",
    ] {
        let r = g
            .post("/v1/auth/mfa", Some(&token), json!({"code": code}))
            .await;
        assert!(
            r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::TOO_MANY_REQUESTS,
            "{code}: {r:?}"
        );
        assert!(
            ["invalid_otp", "locked"].contains(&r.json["error"]["code"].as_str().unwrap()),
            "{r:?}"
        );
    }

    // Unknown routes and methods.
    assert_error(
        &g.call(Method::GET, "/v1/nothing-here", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &g.call(Method::DELETE, "/healthz", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        &g.call(Method::DELETE, "/v1/users", Some(&token), None)
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // A client-chosen request id is kept when it is a short token and replaced otherwise.
    let req = Request::builder()
        .uri("/v1/auth/me")
        .header("x-request-id", "trace-123")
        .body(Body::empty())
        .unwrap();
    assert_eq!(g.send(req).await.json["error"]["request_id"], "trace-123");
    let req = Request::builder()
        .uri("/v1/auth/me")
        .header("x-request-id", "alice@example.com")
        .body(Body::empty())
        .unwrap();
    let r = g.send(req).await;
    assert_ne!(r.json["error"]["request_id"], "alice@example.com");
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated");
}

async fn rate_limits_per_principal(backend: Backend) {
    let g = gateway_with(backend, |c| {
        c.limits.rate_per_second = 1;
        c.limits.rate_burst = 5;
    })
    .await;
    let (_, a) = g
        .principal_token(warden_sdk::PrincipalKind::User, &["analyst"], false)
        .await;
    let (_, b) = g
        .principal_token(warden_sdk::PrincipalKind::User, &["analyst"], false)
        .await;
    let mut allowed = 0;
    let mut limited = None;
    for _ in 0..50 {
        let r = g.get("/v1/auth/me", &a).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        allowed += 1;
    }
    assert!(allowed >= 5, "the burst is allowed: {allowed}");
    assert_error(
        &limited.expect("the limit is reached"),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_eq!(
        g.get("/v1/auth/me", &b).await.status,
        StatusCode::OK,
        "another principal is unaffected"
    );
}
