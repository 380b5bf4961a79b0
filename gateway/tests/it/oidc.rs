//! Tokens of an external OpenID Connect issuer, verified against its JWKS served on a real
//! local port.

use axum::http::StatusCode;
use axum::routing::get;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use warden_gateway::config::OidcConfig;

use crate::support::{assert_error, gateway_with, Backend};

const ISSUER: &str = "https://idp.example.test";

fn token(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    let der = key.to_pkcs8_der().unwrap();
    encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_issuer_tokens() {
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ext-1", "alg": "EdDSA", "use": "sig"}]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let idp = tokio::spawn(async move {
        let app = axum::Router::new().route("/jwks", get(move || async move { axum::Json(jwks) }));
        axum::serve(listener, app).await.unwrap();
    });

    let g = gateway_with(Backend::Sqlite, |c| {
        c.auth.oidc = Some(OidcConfig {
            issuer: ISSUER.to_owned(),
            jwks_url: format!("http://{addr}/jwks"),
            audience: "warden".to_owned(),
            roles_claim: "groups".to_owned(),
        });
    })
    .await;
    let now = g.clock_secs();
    let claims = json!({
        "iss": ISSUER, "aud": "warden", "sub": "00u1a2b3c", "exp": now + 300, "iat": now,
        "groups": ["auditor"], "amr": ["pwd", "otp"], "auth_time": now,
    });
    let t = token(&key, "ext-1", &claims);
    let me = g.get("/v1/auth/me", &t).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.json["id"], "oidc:00u1a2b3c");
    assert_eq!(me.json["roles"], json!(["auditor"]));
    assert_eq!(
        g.get("/v1/audit/events", &t).await.status,
        StatusCode::OK,
        "MFA at the issuer counts"
    );

    let mut no_mfa = claims.clone();
    no_mfa["amr"] = json!(["pwd"]);
    assert_error(
        &g.get("/v1/audit/events", &token(&key, "ext-1", &no_mfa))
            .await,
        StatusCode::UNAUTHORIZED,
        "mfa_required",
    );

    for (field, value) in [
        ("iss", json!("https://evil.example")),
        ("aud", json!("someone-else")),
        ("exp", json!(now - 60)),
        ("sub", json!("alice@example.com")),
    ] {
        let mut c = claims.clone();
        c[field] = value;
        assert_error(
            &g.get("/v1/auth/me", &token(&key, "ext-1", &c)).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
    }
    let other = SigningKey::from_bytes(&[43u8; 32]);
    assert_error(
        &g.get("/v1/auth/me", &token(&other, "ext-1", &claims)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(
        &g.get("/v1/auth/me", &token(&key, "ext-2", &claims)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // A symmetric token naming the external key id is refused.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("ext-1".to_owned());
    let hs = encode(&hs, &claims, &EncodingKey::from_secret(x.as_bytes())).unwrap();
    assert_error(
        &g.get("/v1/auth/me", &hs).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    // A purpose carried by the token serves where the header is absent, and must agree with it.
    let mut stage = claims.clone();
    stage["groups"] = json!(["stage"]);
    stage["purpose"] = json!("fraud_detection");
    let t = token(&key, "ext-1", &stage);
    let records = json!([{"transaction_id": "t", "user_id": "u", "amount": 1, "created_at": 1}]);
    let send = |purpose: Option<&'static str>| {
        let mut req = axum::http::Request::builder()
            .method(axum::http::Method::POST)
            .uri("/v1/datasets/payments/protect")
            .header("authorization", format!("Bearer {t}"))
            .header("content-type", "application/json");
        if let Some(p) = purpose {
            req = req.header("x-purpose", p);
        }
        g.send(
            req.body(axum::body::Body::from(records.to_string()))
                .unwrap(),
        )
    };
    assert_eq!(send(None).await.status, StatusCode::OK);
    assert_eq!(send(Some("fraud_detection")).await.status, StatusCode::OK);
    assert_error(
        &send(Some("payment_processing")).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    idp.abort();
}
