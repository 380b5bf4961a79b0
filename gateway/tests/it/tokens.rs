//! Token issuance and every way verification must refuse a token.

use std::time::Duration;

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use warden_gateway::auth::tokens::Claims;

use crate::support::{assert_error, gateway, Backend, Gateway};

warden_audit::on_both_backends!(crate::support::Backend;
    issued_tokens_work_and_forged_ones_do_not,
    client_credentials_and_lockout
);

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let p = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, p, it.next().unwrap().to_owned())
}

async fn refused(g: &Gateway, token: &str, why: &str) {
    let r = g.get("/v1/auth/me", token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{why}: {r:?}");
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated");
}

async fn issued_tokens_work_and_forged_ones_do_not(backend: Backend) {
    let g = gateway(backend).await;
    let token = g.login("admin", &g.admin_password).await;
    let (header, payload, sig) = parts(&token);
    assert_eq!(header["alg"], "EdDSA");
    for claim in [
        "iss", "aud", "exp", "iat", "jti", "sub", "roles", "amr", "mfa_at",
    ] {
        assert!(payload.get(claim).is_some(), "claim {claim} in {payload}");
    }
    assert_eq!(payload["amr"], json!(["pwd"]));
    assert_eq!(payload["mfa_at"], Value::Null);
    let kid = header["kid"].as_str().unwrap();
    let jwks = g
        .call(
            axum::http::Method::GET,
            "/.well-known/jwks.json",
            None,
            None,
        )
        .await;
    assert_eq!(jwks.json["keys"][0]["kid"], kid);
    assert_eq!(jwks.json["keys"][0]["kty"], "OKP");
    let me = g.get("/v1/auth/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.json["roles"], json!(["admin"]));

    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
        b64(&payload)
    );
    refused(&g, &none, "alg none").await;
    // HS256 "signed" with the public key as the HMAC secret (the classic key-confusion attack).
    let x = jwks.json["keys"][0]["x"].as_str().unwrap();
    let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let hs = jsonwebtoken::encode(
        &serde_json::from_value(hs_header).unwrap(),
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
    )
    .unwrap();
    refused(&g, &hs, "HS256 with the public key").await;
    // A token properly signed by a key the gateway does not know, under an unknown kid.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&stranger).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some("jwt-0000000000000000".to_owned());
    let foreign = jsonwebtoken::encode(
        &h,
        &payload,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap();
    refused(&g, &foreign, "unknown kid").await;
    // The same stranger's token claiming the gateway's own kid fails its signature.
    h.kid = Some(kid.to_owned());
    let impostor = jsonwebtoken::encode(
        &h,
        &payload,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .unwrap();
    refused(&g, &impostor, "signed by another key").await;
    // Tampered payload: roles changed, signature kept.
    let mut p = payload.clone();
    p["roles"] = json!(["admin", "auditor"]);
    refused(
        &g,
        &format!("{}.{}.{sig}", b64(&header), b64(&p)),
        "tampered payload",
    )
    .await;
    // Garbage.
    refused(&g, "not.a.token", "garbage").await;
    refused(&g, "", "empty").await;

    // Properly signed but with wrong claims.
    let good: Claims = serde_json::from_value(payload.clone()).unwrap();
    let signed = |c: Claims| g.state.tokens.sign(&c).unwrap();
    refused(
        &g,
        &signed(Claims {
            iss: "someone-else".into(),
            ..good.clone()
        }),
        "wrong iss",
    )
    .await;
    refused(
        &g,
        &signed(Claims {
            aud: "other-api".into(),
            ..good.clone()
        }),
        "wrong aud",
    )
    .await;
    let now = g.clock_secs();
    refused(
        &g,
        &signed(Claims {
            nbf: now + 600,
            iat: now,
            ..good.clone()
        }),
        "not yet valid",
    )
    .await;
    assert_eq!(
        g.get("/v1/auth/me", &signed(good.clone())).await.status,
        StatusCode::OK
    );

    // Expiry follows the injected clock.
    g.clock.tick(Duration::from_secs(15 * 60 + 6));
    refused(&g, &token, "expired").await;

    // Without a header at all.
    let r = g
        .call(axum::http::Method::GET, "/v1/auth/me", None, None)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthenticated");
}

async fn client_credentials_and_lockout(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    let created = g
        .post(
            "/v1/service-accounts",
            Some(&admin),
            json!({"name": "ingest-stage", "roles": ["stage"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let secret = created.json["client_secret"].as_str().unwrap().to_owned();
    let ok = g
        .post("/v1/auth/token", None, json!({"grant_type": "client_credentials", "client_id": "ingest-stage", "client_secret": secret}))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    let token = ok.json["access_token"].as_str().unwrap();
    let me = g.get("/v1/auth/me", token).await;
    assert_eq!(me.json["kind"], "service");
    assert_eq!(me.json["amr"], json!(["client_secret"]));
    // A service account cannot log in with the password grant, nor a user with client credentials.
    let wrong_grant = g
        .post(
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "ingest-stage", "password": secret}),
        )
        .await;
    assert_error(&wrong_grant, StatusCode::UNAUTHORIZED, "invalid_grant");

    // Ten wrong secrets from one address make its next attempt wait (a second, doubling
    // after each further failure), with the same answer as a wrong secret (no telling
    // throttled accounts apart); another address is not held back, and the owner is never
    // locked out for good.
    for _ in 0..10 {
        let r = g
            .post("/v1/auth/token", None, json!({"grant_type": "client_credentials", "client_id": "ingest-stage", "client_secret": "wrong-secret"}))
            .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_grant");
    }
    let body = json!({"grant_type": "client_credentials", "client_id": "ingest-stage", "client_secret": secret});
    let while_waiting = g.post("/v1/auth/token", None, body.clone()).await;
    assert_error(&while_waiting, StatusCode::UNAUTHORIZED, "invalid_grant");
    assert_eq!(
        while_waiting.json["error"]["message"],
        g.post(
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "nobody", "password": "x"})
        )
        .await
        .json["error"]["message"],
        "a throttled account answers like an unknown one"
    );
    let elsewhere = from(&g, "198.51.100.9", &body).await;
    assert_eq!(
        elsewhere.status,
        StatusCode::OK,
        "another address: {elsewhere:?}"
    );
    g.clock.tick(Duration::from_secs(1));
    assert_eq!(
        g.post("/v1/auth/token", None, body.clone()).await.status,
        StatusCode::OK,
        "a second later"
    );

    // Failures again; an administrator ends the wait at once (audited).
    for _ in 0..12 {
        g.post("/v1/auth/token", None, json!({"grant_type": "client_credentials", "client_id": "ingest-stage", "client_secret": "wrong-secret"}))
            .await;
    }
    assert_error(
        &g.post("/v1/auth/token", None, body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "invalid_grant",
    );
    let id = created.json["id"].as_str().unwrap();
    let unlocked = g
        .post(&format!("/v1/users/{id}/unlock"), Some(&admin), json!({}))
        .await;
    assert_eq!(unlocked.status, StatusCode::NO_CONTENT, "{unlocked:?}");
    assert_eq!(
        g.post("/v1/auth/token", None, body).await.status,
        StatusCode::OK
    );
    let events = g
        .get("/v1/audit/events?action=users.write", &admin)
        .await
        .json["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        events
            .iter()
            .any(|e| e["resource"] == "/v1/users/{id}/unlock" && e["details"]["principal_id"] == id),
        "{events:?}"
    );
}

/// A token request from `addr` (the connection's address, as a server sees it).
async fn from(g: &Gateway, addr: &str, body: &Value) -> crate::support::Reply {
    let mut req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/auth/token")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
            addr.parse().unwrap(),
            40_000,
        )));
    g.send(req).await
}
