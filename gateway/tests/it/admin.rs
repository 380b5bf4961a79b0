//! Administration: users, disabling, policy changes (audited, compare-and-set, effective at once).

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_error, gateway, Backend};

warden_audit::on_both_backends!(crate::support::Backend; users_and_disabling, policy_changes_take_effect);

async fn users_and_disabling(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    for (body, code) in [
        (
            json!({"username": "ok.name", "password": "short", "roles": ["analyst"]}),
            "invalid_request",
        ),
        (
            json!({"username": "a", "password": "long enough pass", "roles": ["analyst"]}),
            "invalid_request",
        ),
        (
            json!({"username": "ok.name", "password": "long enough pass", "roles": []}),
            "invalid_request",
        ),
        (
            json!({"username": "ok.name", "password": "long enough pass", "roles": ["bad role!"]}),
            "invalid_request",
        ),
        (
            json!({"username": "ok.name", "password": "long enough pass", "roles": ["x"], "kind": "service"}),
            "invalid_request",
        ),
    ] {
        assert_error(
            &g.post("/v1/users", Some(&admin), body).await,
            StatusCode::BAD_REQUEST,
            code,
        );
    }
    let r = g.post("/v1/users", Some(&admin), json!({"username": "sam.subject", "password": "long enough pass", "roles": ["subject"], "kind": "subject"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.json["id"].as_str().unwrap().to_owned();
    let dup = g.post("/v1/users", Some(&admin), json!({"username": "sam.subject", "password": "long enough pass", "roles": ["subject"]})).await;
    assert_error(&dup, StatusCode::CONFLICT, "conflict");

    let token = g.login("sam.subject", "long enough pass").await;
    assert_eq!(g.get("/v1/auth/me", &token).await.json["kind"], "subject");
    let list = g.get("/v1/users", &admin).await;
    let names: Vec<&str> = list
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["admin", "sam.subject"]);
    assert_eq!(list.json[0]["mfa_enrolled"], true);

    // Disabling takes effect on tokens already issued.
    let off = g
        .post(&format!("/v1/users/{id}/disable"), Some(&admin), json!({}))
        .await;
    assert_eq!(off.status, StatusCode::NO_CONTENT, "{off:?}");
    assert_error(
        &g.get("/v1/auth/me", &token).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let login = g.post("/v1/auth/token", None, json!({"grant_type": "password", "username": "sam.subject", "password": "long enough pass"})).await;
    assert_error(&login, StatusCode::UNAUTHORIZED, "invalid_grant");
    assert_eq!(
        g.post(&format!("/v1/users/{id}/enable"), Some(&admin), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(g.get("/v1/auth/me", &token).await.status, StatusCode::OK);

    // Admins cannot lock themselves out.
    let me = g.get("/v1/auth/me", &admin).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_error(
        &g.post(&format!("/v1/users/{me}/disable"), Some(&admin), json!({}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );

    // Password change: the old one stops working.
    let r = g
        .post(
            "/v1/auth/password",
            Some(&token),
            json!({"current_password": "long enough pass", "new_password": "an even longer pass"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // Every session opened before the change ends with it; the answer carries a new one.
    assert_error(
        &g.get("/v1/auth/me", &token).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let renewed = r.json["access_token"].as_str().unwrap();
    assert_eq!(g.get("/v1/auth/me", renewed).await.status, StatusCode::OK);
    g.login("sam.subject", "an even longer pass").await;
    let old = g.post("/v1/auth/token", None, json!({"grant_type": "password", "username": "sam.subject", "password": "long enough pass"})).await;
    assert_error(&old, StatusCode::UNAUTHORIZED, "invalid_grant");
}

async fn policy_changes_take_effect(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    let (_, analyst) = g
        .principal_token(warden_sdk::PrincipalKind::User, &["analyst"], true)
        .await;
    assert_error(
        &g.get("/v1/policy", &analyst).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    let current = g.get("/v1/policy", &admin).await;
    assert_eq!(current.status, StatusCode::OK);
    let version = current.json["version"].as_i64().unwrap();
    let mut rules: Vec<Value> = current.json["rules"].as_array().unwrap().clone();
    rules.push(json!({"ptype": "p", "values": ["analyst", "policy", "read"]}));

    // A second replica on the same database, started before the change.
    let (replica, first) =
        warden_gateway::state::start(g.state.config.clone(), &Default::default(), g.clock.clone())
            .await
            .unwrap();
    assert!(first.is_none(), "the store is already initialized");
    assert!(!replica
        .authz
        .allows(&["analyst".to_owned()], "policy", "read")
        .unwrap());

    let stale = g
        .call(
            axum::http::Method::PUT,
            "/v1/policy",
            Some(&admin),
            Some(json!({"version": version - 1, "rules": rules})),
        )
        .await;
    assert_error(&stale, StatusCode::CONFLICT, "conflict");
    let bad = g
        .call(
            axum::http::Method::PUT,
            "/v1/policy",
            Some(&admin),
            Some(json!({"version": version, "rules": [{"ptype": "p", "values": ["a", "b"]}]})),
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(bad.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("rules[0]"));
    let lockout = g
        .call(axum::http::Method::PUT, "/v1/policy", Some(&admin), Some(json!({"version": version, "rules": [{"ptype": "p", "values": ["admin", "users", "*"]}]})))
        .await;
    assert_error(&lockout, StatusCode::BAD_REQUEST, "invalid_request");

    let ok = g
        .call(
            axum::http::Method::PUT,
            "/v1/policy",
            Some(&admin),
            Some(json!({"version": version, "rules": rules})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(ok.json["version"], version + 1);
    assert_eq!(
        g.get("/v1/policy", &analyst).await.status,
        StatusCode::OK,
        "effective at once"
    );

    g.audit_settled().await;
    let changes = g
        .get(
            "/v1/audit/events?action=policy.write&decision=allow",
            &admin,
        )
        .await;
    let e = &changes.json["events"][0];
    assert_eq!(e["details"]["rules_added"], 1);
    assert_eq!(e["details"]["rules_removed"], 0);
    assert_eq!(e["details"]["from_version"], version);

    replica_before_change_sees_it_after_refresh(&replica).await;
    replica.shutdown().await;
}

async fn replica_before_change_sees_it_after_refresh(replica: &warden_gateway::state::AppState) {
    assert!(
        !replica
            .authz
            .allows(&["analyst".to_owned()], "policy", "read")
            .unwrap(),
        "stale until refreshed"
    );
    replica.refresh_policy().await.unwrap();
    assert!(replica
        .authz
        .allows(&["analyst".to_owned()], "policy", "read")
        .unwrap());
}
