//! A gateway on a fresh database with a test clock, and helpers to call it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use warden_gateway::config::Config;
use warden_gateway::state::{AppState, FirstStart};
use warden_gateway::store::PrincipalRecord;
use warden_policy::TestClock;
use warden_sdk::PrincipalKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

pub(crate) struct Gateway {
    pub(crate) state: AppState,
    pub(crate) router: Router,
    pub(crate) clock: Arc<TestClock>,
    pub(crate) admin_password: String,
    pub(crate) admin_seed: Vec<u8>,
    pub(crate) state_url: String,
    pub(crate) _dir: tempfile::TempDir,
}

/// A response: status, JSON body (Null when empty or not JSON), headers.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) json: Value,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) bytes: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.json)
    }
}

pub(crate) const START: i64 = 1_800_000_000;

/// The Kafka-protocol broker of `scripts/dev-services.sh`; a test that needs it and does not
/// find it fails.
pub(crate) fn kafka_brokers() -> String {
    std::env::var("WARDEN_TEST_KAFKA")
        .expect("WARDEN_TEST_KAFKA is not set: run the tests with scripts/test.sh")
}

/// The MongoDB-wire server of `scripts/dev-services.sh`.
pub(crate) fn mongodb_url() -> String {
    std::env::var("WARDEN_TEST_MONGODB_URL")
        .expect("WARDEN_TEST_MONGODB_URL is not set: run the tests with scripts/test.sh")
}

/// Object-store options for the S3 endpoint (moto) of `scripts/dev-services.sh`.
pub(crate) fn s3_options() -> std::collections::BTreeMap<String, String> {
    let endpoint = std::env::var("WARDEN_TEST_AWS_ENDPOINT")
        .expect("WARDEN_TEST_AWS_ENDPOINT is not set: run the tests with scripts/test.sh");
    [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

pub(crate) fn test_config(dir: &std::path::Path, state_url: &str) -> Config {
    let mut c = Config::load(None, &HashMap::new()).unwrap();
    c.data_dir = dir.to_path_buf();
    c.state.url = Some(state_url.to_owned());
    c.limits.rate_per_second = 100_000;
    c.limits.rate_burst = 100_000;
    c.audit.checkpoint_every = 50;
    c.datasets_dir =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datasets"));
    c
}

pub(crate) async fn fresh_url(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("warden.db").display()),
        Backend::Postgres => warden_audit::testkit::fresh_postgres().await.1,
    }
}

pub(crate) async fn gateway(backend: Backend) -> Gateway {
    gateway_with(backend, |_| {}).await
}

pub(crate) async fn gateway_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let state_url = fresh_url(backend, dir.path()).await;
    let mut config = test_config(dir.path(), &state_url);
    tweak(&mut config);
    let clock = Arc::new(TestClock::at(START));
    let env = HashMap::from([(
        "WARDEN_ADMIN_PASSWORD".to_owned(),
        "correct horse battery".to_owned(),
    )]);
    let (state, first) = warden_gateway::state::start(config, &env, clock.clone())
        .await
        .unwrap();
    let first: FirstStart = first.expect("a fresh database initializes");
    assert!(
        first.admin_password.is_none(),
        "the password came from the environment"
    );
    Gateway {
        router: warden_gateway::app(state.clone()),
        state,
        clock,
        admin_password: "correct horse battery".to_owned(),
        admin_seed: seed_from_uri(&first.totp_uri),
        state_url,
        _dir: dir,
    }
}

/// The TOTP seed in an `otpauth://` URI.
pub(crate) fn seed_from_uri(uri: &str) -> Vec<u8> {
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap()
}

impl Gateway {
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            json,
            headers,
            bytes,
        }
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub(crate) async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .post("/v1/auth/token", None, serde_json::json!({"grant_type": "password", "username": username, "password": password}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "login {username}: {r:?}");
        r.json["access_token"].as_str().unwrap().to_owned()
    }

    /// Moves to the next TOTP step (codes are single-use) and steps up.
    pub(crate) async fn step_up(&self, token: &str, seed: &[u8]) -> String {
        self.clock.tick(Duration::from_secs(30));
        let code = warden_gateway::auth::totp::code_at(seed, self.clock_secs()).unwrap();
        let r = self
            .post(
                "/v1/auth/mfa",
                Some(token),
                serde_json::json!({"code": code}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "step-up: {r:?}");
        r.json["access_token"].as_str().unwrap().to_owned()
    }

    /// The admin with a fresh second factor.
    pub(crate) async fn admin(&self) -> String {
        let t = self.login("admin", &self.admin_password).await;
        self.step_up(&t, &self.admin_seed.clone()).await
    }

    pub(crate) fn clock_secs(&self) -> i64 {
        use warden_policy::Clock;
        self.clock.now_secs()
    }

    /// A principal with `roles` stored directly, and a token for it (`mfa` sets `mfa_at` now).
    pub(crate) async fn principal_token(
        &self,
        kind: PrincipalKind,
        roles: &[&str],
        mfa: bool,
    ) -> (String, String) {
        let name = format!("p-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        self.named_principal_token(kind, &name, roles, mfa).await
    }

    /// As [`Gateway::principal_token`], with a chosen name (a data subject's identifier).
    pub(crate) async fn named_principal_token(
        &self,
        kind: PrincipalKind,
        name: &str,
        roles: &[&str],
        mfa: bool,
    ) -> (String, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let record = PrincipalRecord {
            id: id.clone(),
            kind,
            name: name.to_owned(),
            secret_hash: "unused".to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            disabled: false,
            failed_logins: 0,
            locked_until: 0,
            must_change_password: false,
            created_at: 0,
            credentials_epoch: 0,
        };
        self.state.store.create_principal(&record).await.unwrap();
        let roles: Vec<String> = record.roles.clone();
        let amr: &[&str] = if mfa { &["pwd", "otp"] } else { &["pwd"] };
        let token = self
            .state
            .tokens
            .issue(&id, kind, &roles, amr, mfa.then(|| self.clock_secs()), 0)
            .unwrap();
        (id, token)
    }

    /// Waits until the audit sequencer has committed everything queued so far.
    pub(crate) async fn audit_settled(&self) -> u64 {
        let mut last = 0;
        for _ in 0..100 {
            let head = self.state.audit_store.head().await.unwrap().seq;
            if head == last && head > 0 {
                return head;
            }
            last = head;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        last
    }
}

/// Asserts the one error shape: `{"error": {"code", "message", "request_id"}}`.
pub(crate) fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json["error"]["code"], code, "{r:?}");
    assert!(
        r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
    let rid = r.json["error"]["request_id"].as_str().unwrap();
    assert!(!rid.is_empty() && rid != "-", "request id in body: {r:?}");
    assert_eq!(
        r.headers.get("x-request-id").unwrap().to_str().unwrap(),
        rid,
        "same id in header and body"
    );
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
}

/// Alert rules shipped in `config/alerts/NAME.rules.yml`: promtool checks them and runs their
/// unit tests (`NAME.rules.test.yml`), and every `warden_*` metric they read is in
/// `metrics` (the gateway's exposition). Returns how many metrics the rules read.
pub(crate) fn check_alert_rules(name: &str, metrics: &str) -> usize {
    let promtool = std::env::var("WARDEN_TEST_PROMTOOL")
        .expect("WARDEN_TEST_PROMTOOL is not set: run the tests with scripts/test.sh");
    let alerts = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/alerts"));
    let (rules, tests) = (
        format!("{name}.rules.yml"),
        format!("{name}.rules.test.yml"),
    );
    for args in [
        ["check", "rules", rules.as_str()],
        ["test", "rules", tests.as_str()],
    ] {
        let out = std::process::Command::new(&promtool)
            .current_dir(alerts)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(alerts.join(&rules)).unwrap();
    let names: std::collections::BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("warden_"))
        .collect();
    for name in &names {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "the rules read {name}, which the gateway does not export"
        );
    }
    names.len()
}
