//! Datasets over HTTP: contracts, protection with purposes, detokenization with step-up.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use warden_sdk::PrincipalKind;

use crate::support::{assert_error, gateway, Backend, Gateway};

warden_audit::on_both_backends!(crate::support::Backend; protect_and_detokenize, contracts_are_versioned);

async fn protect(
    g: &Gateway,
    token: &str,
    dataset: &str,
    purpose: Option<&str>,
    records: Value,
) -> crate::support::Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/datasets/{dataset}/protect"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(p) = purpose {
        req = req.header("x-purpose", p);
    }
    g.send(req.body(Body::from(records.to_string())).unwrap())
        .await
}

async fn detok(
    g: &Gateway,
    token: &str,
    body: Value,
    purpose: Option<&str>,
) -> crate::support::Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/v1/detokenize")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(p) = purpose {
        req = req.header("x-purpose", p);
    }
    g.send(req.body(Body::from(body.to_string())).unwrap())
        .await
}

fn records() -> Value {
    json!([
        {"transaction_id": "t-1", "user_id": "u-1", "card_number": "4111111111111111", "email": "ann@example.com",
         "ip": "198.51.100.23", "amount": 10, "created_at": "2026-11-24T10:00:00Z"},
        {"transaction_id": "t-2", "user_id": "u-2", "card_number": "5500000000000004", "cvv": "739", "amount": 5,
         "created_at": "2026-11-24T10:00:00Z"},
    ])
}

async fn protect_and_detokenize(backend: Backend) {
    let g = gateway(backend).await;
    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let r = protect(&g, &stage, "payments", Some("fraud_detection"), records()).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let rec = &r.json["records"][0];
    assert_eq!(rec["index"], 0);
    let token = rec["fields"]["card_number"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tok_") && token.ends_with("1111"));
    assert!(rec["fields"]["email"]
        .as_str()
        .unwrap()
        .starts_with("enc:v1:"));
    assert_eq!(rec["fields"]["ip"], "198.51.100.0");
    assert_eq!(
        r.json["rejections"],
        json!([{"index": 1, "field": "cvv", "reason": "sensitive authentication data is never accepted (PCI DSS 3.3)"}])
    );
    let body = String::from_utf8_lossy(&r.bytes);
    for clear in [
        "4111111111111111",
        "ann@example.com",
        "198.51.100.23",
        // The CVV as a JSON value: three bare digits also turn up in random hex.
        "\"739\"",
        "u-1",
    ] {
        assert!(!body.contains(clear), "{clear} in {body}");
    }

    assert_error(
        &protect(&g, &stage, "payments", None, records()).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &protect(&g, &stage, "payments", Some("marketing"), records()).await,
        StatusCode::FORBIDDEN,
        "purpose_not_allowed",
    );
    assert_error(
        &protect(&g, &stage, "nosuch", Some("fraud_detection"), records()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &protect(&g, &stage, "Pay*", Some("fraud_detection"), records()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (_, analyst) = g
        .principal_token(PrincipalKind::User, &["analyst"], true)
        .await;
    assert_error(
        &protect(&g, &analyst, "payments", Some("fraud_detection"), records()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    // Clear card numbers: `pan reveal` with a fresh second factor, and nobody else.
    let (_, ops) = g
        .principal_token(PrincipalKind::User, &["card_ops"], true)
        .await;
    let (_, ops_stale) = g
        .principal_token(PrincipalKind::User, &["card_ops"], false)
        .await;
    let admin = g.admin().await;
    let ask = json!({"dataset": "payments", "tokens": [token, "tok_abcdefghijklmnop0000"]});
    let r = detok(&g, &ops, ask.clone(), Some("fraud_detection")).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["pans"], json!(["4111111111111111", null]));
    assert_error(
        &detok(&g, &ops_stale, ask.clone(), Some("fraud_detection")).await,
        StatusCode::UNAUTHORIZED,
        "mfa_required",
    );
    assert_error(
        &detok(&g, &admin, ask.clone(), Some("fraud_detection")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let bad = json!({"dataset": "payments", "tokens": ["4111111111111111"]});
    let r = detok(&g, &ops, bad, Some("fraud_detection")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(!String::from_utf8_lossy(&r.bytes).contains("4111111111111111"));

    // A purpose is required, and must be one the contract lists.
    assert_error(
        &detok(&g, &ops, ask.clone(), None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &detok(&g, &ops, ask.clone(), Some("marketing")).await,
        StatusCode::FORBIDDEN,
        "purpose_not_allowed",
    );
    // Unknown datasets, and names that are not plain names, are refused and not recorded.
    let odd = json!({"dataset": "alice@example.com", "tokens": [token]});
    assert_error(
        &detok(&g, &ops, odd, Some("fraud_detection")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // The audit log: purposes, counts and field names — never a value.
    g.audit_settled().await;
    let events = g.get("/v1/audit/events?limit=1000", &admin).await;
    let protects: Vec<&Value> = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "datasets:payments.write")
        .collect();
    assert_eq!(protects[0]["purpose"], "fraud_detection");
    assert_eq!(protects[0]["details"]["accepted"], 1);
    assert_eq!(protects[0]["details"]["rejected_fields"], json!(["cvv"]));
    let refused = protects
        .iter()
        .find(|e| e["purpose"] == "marketing")
        .unwrap();
    assert_eq!(refused["decision"], "deny");
    let reveal = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "pan.reveal" && e["decision"] == "allow")
        .unwrap();
    assert_eq!(
        (
            reveal["details"]["requested"].clone(),
            reveal["details"]["revealed"].clone()
        ),
        (json!(2), json!(1))
    );
    let all = events.json.to_string();
    for clear in [
        "4111111111111111",
        "5500000000000004",
        "ann@example.com",
        "alice@example.com",
        "198.51.100.23",
        "\"739\"",
        "u-1\"",
    ] {
        assert!(!all.contains(clear), "{clear} in the audit log");
    }
}

async fn contracts_are_versioned(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    let list = g.get("/v1/datasets", &admin).await;
    let names: Vec<&str> = list
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["payment_bands", "payments"],
        "the shipped contracts, by name"
    );
    let mut contract = g.get("/v1/datasets/payments", &admin).await.json;
    assert_eq!(contract["version"], 1);
    contract["purposes"] = json!(["payment_processing", "fraud_detection", "chargebacks"]);
    let put = |c: Value| g.call(Method::PUT, "/v1/datasets/payments", Some(&admin), Some(c));
    let stale = put(contract.clone()).await;
    assert_error(&stale, StatusCode::CONFLICT, "conflict");
    contract["version"] = json!(2);
    let ok = put(contract.clone()).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.json["version"], 2);
    let mut downgrade = contract.clone();
    downgrade["version"] = json!(3);
    downgrade["fields"]["card_number"]["class"] = json!("public");
    let r = put(downgrade).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("fields.card_number.class:"),
        "{r:?}"
    );
    let mut broken = contract.clone();
    broken["version"] = json!(3);
    broken["subject_field"] = json!("nobody");
    let r = put(broken).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("subject_field:"),
        "{r:?}"
    );

    let (_, stage) = g
        .principal_token(PrincipalKind::Service, &["stage"], false)
        .await;
    let r = protect(
        &g,
        &stage,
        "payments",
        Some("chargebacks"),
        json!([{"transaction_id": "t", "user_id": "u", "amount": 1, "created_at": 1}]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["records"][0]["contract_version"], 2);
    // Stage may protect but not change contracts.
    assert_error(
        &g.call(
            Method::PUT,
            "/v1/datasets/payments",
            Some(&stage),
            Some(contract),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}
