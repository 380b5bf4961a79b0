//! The audit trail through the API: every decision recorded, searched, verified.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use warden_sdk::PrincipalKind;

use crate::support::{assert_error, gateway, Backend};

warden_audit::on_both_backends!(crate::support::Backend;
    every_decision_is_recorded_and_searchable,
    verify_names_tampered_entry,
    a_rewritten_head_stops_a_running_gateway
);

async fn events(g: &crate::support::Gateway, token: &str, query: &str) -> Vec<Value> {
    let r = g.get(&format!("/v1/audit/events?{query}"), token).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {r:?}");
    r.json["events"].as_array().unwrap().clone()
}

async fn every_decision_is_recorded_and_searchable(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    let (analyst_id, analyst) = g
        .principal_token(PrincipalKind::User, &["analyst"], true)
        .await;
    // deny (forbidden), deny (no token), allow, error (bad input after authorization).
    assert_eq!(
        g.get("/v1/users", &analyst).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        g.call(Method::GET, "/v1/users", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let created = g
        .post("/v1/users", Some(&admin), json!({"username": "eve.example", "password": "secret passphrase 1", "roles": ["analyst"]}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let new_id = created.json["id"].as_str().unwrap().to_owned();
    let bad = g
        .post(
            "/v1/users",
            Some(&admin),
            json!({"username": "x", "password": "short", "roles": ["analyst"]}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    g.audit_settled().await;

    let denied = events(&g, &admin, &format!("actor={analyst_id}&decision=deny")).await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["action"], "users.read");
    assert_eq!(denied[0]["resource"], "/v1/users");
    assert_eq!(denied[0]["details"]["reason"], "forbidden");
    let anonymous = events(&g, &admin, "actor=anonymous&action=users.read").await;
    assert_eq!(anonymous[0]["details"]["reason"], "unauthenticated");
    let writes = events(&g, &admin, "action=users.write").await;
    let outcomes: Vec<(&str, u64)> = writes
        .iter()
        .map(|e| {
            (
                e["decision"].as_str().unwrap(),
                e["details"]["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, vec![("allow", 201), ("error", 400)]);
    assert_eq!(writes[0]["details"]["principal_id"], new_id.as_str());
    assert!(writes
        .iter()
        .all(|e| e["request_id"].as_str().is_some_and(|r| r.len() == 36)));
    let logins = events(&g, &admin, "action=auth.token").await;
    assert!(logins
        .iter()
        .all(|e| e["details"]["grant_type"] == "password"));

    // The log holds no clear personal data or secret: not the new user's name or password.
    let all = events(&g, &admin, "limit=1000").await;
    let text = serde_json::to_string(&all).unwrap();
    for needle in [
        "eve.example",
        "secret passphrase 1",
        &g.admin_password,
        "correct horse",
    ] {
        assert!(!text.contains(needle), "{needle} found in the audit log");
    }

    // Cursor pagination walks every event once, in order.
    let mut seqs = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = g
            .get(&format!("/v1/audit/events?limit=3{cursor}"), &admin)
            .await;
        seqs.extend(
            r.json["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap()),
        );
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs[0] == 1,
        "{seqs:?}"
    );

    // Time range and bad filters.
    let r = g
        .get(
            "/v1/audit/events?from=2000-01-01T00:00:00Z&to=2001-01-01T00:00:00Z",
            &admin,
        )
        .await;
    assert_eq!(r.json["events"], json!([]));
    assert_error(
        &g.get("/v1/audit/events?from=yesterday", &admin).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &g.get("/v1/audit/events?decision=maybe", &admin).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &g.get("/v1/audit/events?limit=100000", &admin).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &g.get("/v1/audit/events?cursor=abc", &admin).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &g.get("/v1/audit/events?colour=red", &admin).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );

    let report = g.get("/v1/audit/verify", &admin).await;
    assert_eq!(report.json["ok"], true, "{report:?}");
}

async fn verify_names_tampered_entry(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    for _ in 0..5 {
        g.get("/v1/users", &admin).await;
    }
    let head = g.audit_settled().await;
    assert!(head >= 6);
    let db = warden_audit::Db::connect(&g.state_url).await.unwrap();
    let disable = match db.backend() {
        warden_audit::Backend::Sqlite => "DROP TRIGGER audit_events_no_update",
        warden_audit::Backend::Postgres => "ALTER TABLE audit_events DISABLE TRIGGER USER",
    };
    sqlx::query(disable).execute(db.pool()).await.unwrap();
    sqlx::query("UPDATE audit_events SET decision = 'deny' WHERE seq = 3")
        .execute(db.pool())
        .await
        .unwrap();
    let report = g.get("/v1/audit/verify", &admin).await;
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(report.json["ok"], false, "{report:?}");
    assert_eq!(report.json["first_bad_seq"], 3, "{report:?}");
}

/// The log's last entries rewritten under a running gateway (chain recomputed, head moved
/// along): the next request finds its sealed head replaced, is refused rather than recorded
/// over the forgery, and the gateway turns unready and says so in its metrics.
async fn a_rewritten_head_stops_a_running_gateway(backend: Backend) {
    let g = gateway(backend).await;
    let admin = g.admin().await;
    assert_eq!(g.get("/v1/users", &admin).await.status, StatusCode::OK);
    let head = g.audit_settled().await;
    let db = warden_audit::Db::connect(&g.state_url).await.unwrap();
    let disable = match db.backend() {
        warden_audit::Backend::Sqlite => "DROP TRIGGER audit_events_no_update",
        warden_audit::Backend::Postgres => "ALTER TABLE audit_events DISABLE TRIGGER USER",
    };
    sqlx::query(disable).execute(db.pool()).await.unwrap();
    let mut last = g
        .state
        .audit_store
        .scan(head - 1, 1)
        .await
        .unwrap()
        .remove(0);
    last.body.decision = warden_sdk::Decision::Deny;
    last.hash = warden_audit::event::chain_hash(&last.prev_hash, last.seq, &last.body);
    sqlx::query("UPDATE audit_events SET decision = 'deny', hash = $1 WHERE seq = $2")
        .bind(last.hash.to_vec())
        .bind(last.seq as i64)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(last.hash.to_vec())
        .execute(db.pool())
        .await
        .unwrap();

    let refused = g.get("/v1/users", &admin).await;
    assert_error(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
    );
    let ready = g.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert_eq!(ready.json["reason"], "audit_chain_broken");
    let metrics = g.call(Method::GET, "/metrics", None, None).await;
    let text = String::from_utf8(metrics.bytes).unwrap();
    assert!(text.contains("warden_audit_chain_broken 1"), "{text}");
    assert_eq!(
        g.state.audit_store.head().await.unwrap().seq,
        head,
        "nothing recorded over the forgery"
    );
}

/// The audit alert rules: valid, unit-tested by promtool (a broken chain pages, a sealed
/// head lower than before pages), and every metric they read is one the gateway exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_alert_rules_read_exported_metrics() {
    let g = gateway(Backend::Sqlite).await;
    let admin = g.admin().await;
    assert_eq!(g.get("/v1/users", &admin).await.status, StatusCode::OK);
    let head = g.audit_settled().await;
    let metrics =
        String::from_utf8(g.call(Method::GET, "/metrics", None, None).await.bytes).unwrap();
    assert!(metrics.contains("warden_audit_chain_broken 0"), "{metrics}");
    assert!(
        metrics.contains(&format!("warden_audit_sealed_seq {head}")),
        "{metrics}"
    );
    assert_eq!(crate::support::check_alert_rules("audit", &metrics), 2);
}
