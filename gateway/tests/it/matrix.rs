//! The role × action matrix, derived from the shipped `config/policy.csv` by a reading of
//! its own (not the gateway's enforcer), checked cell by cell against the running gateway.

use axum::http::{Method, StatusCode};
use serde_json::json;
use warden_gateway::routes::{Access, ROUTES};
use warden_sdk::PrincipalKind;

use crate::support::{assert_error, gateway, Backend};

warden_audit::on_both_backends!(crate::support::Backend; every_role_and_route_matches_the_shipped_policy);

const ROLES: &[&str] = &[
    "admin", "dpo", "auditor", "analyst", "stage", "subject", "card_ops",
];

/// `(role, resource, action)` triples and `(role, parent)` pairs of the policy file.
fn shipped_policy() -> (Vec<[String; 3]>, Vec<[String; 2]>) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/policy.csv"))
            .unwrap();
    let (mut p, mut g) = (Vec::new(), Vec::new());
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<String> = line.split(',').map(|s| s.trim().to_owned()).collect();
        match f[0].as_str() {
            "p" => p.push([f[1].clone(), f[2].clone(), f[3].clone()]),
            "g" => g.push([f[1].clone(), f[2].clone()]),
            other => panic!("unexpected rule type {other}"),
        }
    }
    (p, g)
}

fn expected(
    role: &str,
    resource: &str,
    action: &str,
    p: &[[String; 3]],
    g: &[[String; 2]],
) -> bool {
    let mut roles = vec![role.to_owned()];
    let mut i = 0;
    while i < roles.len() {
        for [r, parent] in g {
            if *r == roles[i] && !roles.contains(parent) {
                roles.push(parent.clone());
            }
        }
        i += 1;
    }
    p.iter().any(|[r, res, act]| {
        let res_ok = res == resource
            || res
                .strip_suffix('*')
                .is_some_and(|pre| resource.starts_with(pre));
        roles.contains(r) && res_ok && (act == action || act == "*")
    })
}

fn kind(role: &str) -> PrincipalKind {
    match role {
        "stage" => PrincipalKind::Service,
        "subject" => PrincipalKind::Subject,
        _ => PrincipalKind::User,
    }
}

async fn every_role_and_route_matches_the_shipped_policy(backend: Backend) {
    let g = gateway(backend).await;
    let (p, inherit) = shipped_policy();
    let mut cells = 0;
    let mut allowed_cells = 0;
    for role in ROLES {
        let (_, fresh) = g.principal_token(kind(role), &[role], true).await;
        let (_, stale) = g.principal_token(kind(role), &[role], false).await;
        for route in ROUTES {
            let Access::Protected {
                resource,
                action,
                mfa,
            } = route.access
            else {
                continue;
            };
            // A subject's routes name the caller itself (`me`); other ids name nothing.
            let id = if route.path.starts_with("/v1/subjects/") {
                "me".to_owned()
            } else {
                uuid::Uuid::new_v4().to_string()
            };
            let path = route
                .path
                .replace("{id}", &id)
                .replace("{job}", &uuid::Uuid::new_v4().to_string())
                .replace("{name}", "payments");
            let resource = resource.replace("{name}", "payments");
            let resource = resource.as_str();
            let method = Method::from_bytes(route.method.as_bytes()).unwrap();
            let body = (method != Method::GET).then(|| json!({}));
            let r = g
                .call(method.clone(), &path, Some(&fresh), body.clone())
                .await;
            cells += 1;
            if expected(role, resource, action, &p, &inherit) {
                allowed_cells += 1;
                let code = r.json["error"]["code"].as_str().unwrap_or("");
                let refused = [
                    "forbidden",
                    "unauthenticated",
                    "mfa_required",
                    "method_not_allowed",
                    "internal",
                ];
                // An allowed request reaches its handler, which may still refuse the empty body
                // (400) or find no such user, job or hold (404), but never errs.
                let may_miss = ["/v1/users/", "/v1/erasure/", "/v1/legal-holds/"];
                assert!(
                    r.status.as_u16() < 500
                        && !refused.contains(&code)
                        && (r.status != StatusCode::NOT_FOUND
                            || may_miss.iter().any(|p| path.starts_with(p))),
                    "{role} may {action} {resource} ({} {}) but got {r:?}",
                    route.method,
                    route.path
                );
                if mfa {
                    let r = g.call(method.clone(), &path, Some(&stale), body).await;
                    assert_error(&r, StatusCode::UNAUTHORIZED, "mfa_required");
                }
            } else {
                assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
            }
            // HEAD runs the GET handler, so it is guarded exactly as GET.
            if method == Method::GET {
                let head = g.call(Method::HEAD, &path, Some(&fresh), None).await;
                let anonymous = g.call(Method::HEAD, &path, None, None).await;
                assert_eq!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "HEAD {path} without a token"
                );
                if expected(role, resource, action, &p, &inherit) {
                    let passed = head.status.as_u16() < 500
                        && head.status != StatusCode::UNAUTHORIZED
                        && head.status != StatusCode::FORBIDDEN;
                    assert!(passed, "{role}: HEAD {path}: {head:?}");
                } else {
                    assert_eq!(head.status, StatusCode::FORBIDDEN, "{role}: HEAD {path}");
                }
            }
        }
    }
    assert_eq!(
        cells,
        ROLES.len() * ROUTES.iter().filter(|r| r.access != Access::Public).count()
    );
    assert!(
        allowed_cells > 0 && allowed_cells < cells,
        "the matrix has both allowed and denied cells"
    );
}
