//! End to end: the real `warden` binary on a real port, its first start, graceful shutdown,
//! restart, and the audit commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub(crate) async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .args(args)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env_remove("WARDEN_ADMIN_PASSWORD")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap());
        let child = cmd.spawn().unwrap();
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            let health = client.get(format!("{}/healthz", server.base)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(server);
        panic!(
            "warden did not start: {}",
            std::fs::read_to_string(dir.join("stderr.txt")).unwrap()
        );
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.txt")).unwrap()
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "warden exited with {status}");
                return std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("warden did not stop on SIGTERM");
    }
}

impl Server {
    /// Waits (up to `wait`) for the process to end by itself; its exit status.
    pub(crate) fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default()
    }

    /// Signs in as the admin (password, then the TOTP code from the first start's
    /// enrolment URI), creates service accounts with the given roles and returns a token for
    /// each. For a server started with `WARDEN_ADMIN_PASSWORD=admin_password`.
    pub(crate) async fn service_tokens(
        &self,
        admin_password: &str,
        accounts: &[(&str, &[&str])],
    ) -> Vec<String> {
        let base = &self.base;
        let seed = crate::support::seed_from_uri(
            self.stdout()
                .lines()
                .find_map(|l| l.split("authenticator app): ").nth(1))
                .unwrap(),
        );
        let (_, body) = post(
            base,
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "admin", "password": admin_password}),
        )
        .await;
        let token = body["access_token"].as_str().unwrap().to_owned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let code = warden_gateway::auth::totp::code_at(&seed, now).unwrap();
        let (_, body) = post(base, "/v1/auth/mfa", Some(&token), json!({"code": code})).await;
        let admin = body["access_token"].as_str().unwrap().to_owned();
        let mut tokens = Vec::new();
        for (name, roles) in accounts {
            let (status, svc) = post(
                base,
                "/v1/service-accounts",
                Some(&admin),
                json!({"name": name, "roles": roles}),
            )
            .await;
            assert_eq!(status, 201, "{svc}");
            let (_, body) = post(base, "/v1/auth/token", None, json!({"grant_type": "client_credentials", "client_id": name, "client_secret": svc["client_secret"]})).await;
            tokens.push(body["access_token"].as_str().unwrap().to_owned());
        }
        tokens
    }
}

/// A server left running by a failed test is killed.
impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

fn warden(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The README's walkthrough, run as written by `bash` (with `curl` and `jq`) against the binary
/// started in an empty temporary directory: only the lines a reader fills in (the address,
/// the printed password, the authenticator's code) are replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("## Walkthrough")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("the README has a walkthrough with a sh block")
        .to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(dir, &[], &[]).await;
    let out = server.stdout();
    let password = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("one-time password: "))
        .expect("password shown")
        .to_owned();
    let seed = crate::support::seed_from_uri(
        out.lines()
            .find_map(|l| l.split("URI (add it to an authenticator app): ").nth(1))
            .expect("totp uri shown"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let code = warden_gateway::auth::totp::code_at(&seed, now).unwrap();
    let mut filled = 0;
    let script: Vec<String> = block
        .lines()
        .map(|line| {
            let value = match line.split('=').next() {
                Some("W") => server.base.clone(),
                Some("PASSWORD") => format!("'{password}'"),
                Some("CODE") => code.clone(),
                _ => return line.to_owned(),
            };
            filled += 1;
            format!("{}={value}", line.split('=').next().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        filled, 3,
        "the walkthrough sets W, PASSWORD and CODE once each:\n{block}"
    );
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script.join("\n")])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "\"roles\":[\"admin\"]",
        "mfa_required",
        "\"code\":\"forbidden\"",
        "\"decision\": \"deny\"",
        "\"ok\":true",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} not in:\n{stdout}\n{stderr}"
        );
    }
    server.stop();
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_walkthrough_shutdown_and_audit_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(dir, &[], &[]).await;
    let out = server.stdout();
    let password = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("one-time password: "))
        .expect("password shown")
        .to_owned();
    let uri = out
        .lines()
        .find_map(|l| l.split("URI (add it to an authenticator app): ").nth(1))
        .expect("totp uri shown")
        .to_owned();
    let seed = crate::support::seed_from_uri(&uri);
    assert_eq!(mode(&dir.join("warden-data/kek.key")), 0o600);
    assert_eq!(mode(&dir.join("warden-data/warden.db")), 0o600);
    assert_eq!(mode(&dir.join("warden-data")), 0o700);

    let base = server.base.clone();
    // Started outside the repository, on the defaults: the shipped example contracts.
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["datasets"], 2, "{ready}");
    let (status, body) = post(
        &base,
        "/v1/auth/token",
        None,
        json!({"grant_type": "password", "username": "admin", "password": password}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    // The generated password is for one use: nothing but `self` works until it is changed.
    let (status, body) = get(&base, "/v1/audit/events", &token).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("password_change_required"), "{body}");
    let new_password = "the admin's own passphrase";
    let (status, body) = post(
        &base,
        "/v1/auth/password",
        Some(&token),
        json!({"current_password": password, "new_password": new_password}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The change ended the session it was made in; its answer opens a new one.
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, _) = get(&base, "/v1/audit/events", &token).await;
    assert_eq!(status, 401, "needs a second factor");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let code = warden_gateway::auth::totp::code_at(&seed, now).unwrap();
    let (status, body) = post(&base, "/v1/auth/mfa", Some(&token), json!({"code": code})).await;
    assert_eq!(status, 200, "{body}");
    let stepped = body["access_token"].as_str().unwrap().to_owned();
    let (status, events) = get(&base, "/v1/audit/events", &stepped).await;
    assert_eq!(status, 200, "{events}");
    let (status, metrics) = get(&base, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "warden_http_requests_total{route=\"/v1/auth/token\",method=\"POST\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_http_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_decisions_total{outcome=\"deny\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("warden_audit_appends_total"), "{metrics}");
    let (status, ready) = get(&base, "/readyz", "").await;
    assert_eq!((status, ready.contains("ready")), (200, true));

    // Graceful shutdown commits everything acknowledged (the last request's audit event too).
    let (status, _) = get(&base, "/v1/audit/verify", &stepped).await;
    assert_eq!(status, 200);
    let logs = server.stop();
    for secret in [
        password.as_str(),
        new_password,
        &token,
        &stepped,
        uri.split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap(),
    ] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
    assert!(logs.contains("audit log flushed"), "{logs}");
    // A first start and a clean stop log no ERROR, and no library's INFO lines.
    for line in logs.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (level, target) = (entry["level"].as_str(), entry["target"].as_str());
        assert_ne!(level, Some("ERROR"), "{line}");
        if level == Some("INFO") {
            assert!(
                target.is_some_and(|t| t.starts_with("warden")),
                "a library's INFO line: {line}"
            );
        }
    }

    let verify = warden(dir, &["audit", "verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
    let report: Value =
        serde_json::from_slice(&warden(dir, &["audit", "verify", "--json"]).stdout).unwrap();
    assert!(
        report["checkpoints"].as_u64().unwrap() >= 1,
        "a final checkpoint is signed at shutdown: {report}"
    );
    // token, the read refused for the first password, the password change, the read refused
    // for want of MFA, step-up, the read, verify: the last one, answered just before SIGTERM,
    // is there too.
    assert_eq!(
        report["entries"], 7,
        "every audited request is in the log: {report}"
    );

    // A restart does not initialize again, and the data stays.
    let again = Server::start(dir, &[], &[]).await;
    assert!(
        !again.stdout().contains("password"),
        "credentials are shown only once"
    );
    let login = |pw: &str| {
        post(
            &again.base,
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "admin", "password": pw}),
        )
    };
    assert_eq!(login(new_password).await.0, 200);
    assert_eq!(login(&password).await.0, 401, "the first password is gone");
    again.stop();

    // Export and verify offline with the public key alone.
    let export = dir.join("audit.ndjson");
    assert!(
        warden(dir, &["audit", "export", "--out", export.to_str().unwrap()])
            .status
            .success()
    );
    let keys = text(&warden(dir, &["audit", "public-key"]).stdout);
    let public = keys.split_whitespace().nth(1).unwrap().to_owned();
    let offline = warden(
        dir,
        &[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--public-key",
            &public,
        ],
    );
    assert_eq!(
        offline.status.code(),
        Some(0),
        "{}{}",
        text(&offline.stdout),
        text(&offline.stderr)
    );
    let wrong_key = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .to_bytes(),
    );
    let w = warden(
        dir,
        &[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--public-key",
            &wrong_key,
        ],
    );
    assert_eq!(
        w.status.code(),
        Some(1),
        "checkpoints signed by another key are refused"
    );
    // Stripping the signatures (to rewrite the chain unnoticed) is caught.
    let stripped_path = dir.join("stripped.ndjson");
    let stripped: String = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("{\"checkpoint\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&stripped_path, stripped).unwrap();
    let s = warden(
        dir,
        &[
            "audit",
            "verify",
            "--export",
            stripped_path.to_str().unwrap(),
            "--public-key",
            &public,
        ],
    );
    assert_eq!(s.status.code(), Some(1), "{}", text(&s.stdout));
    assert!(
        text(&s.stdout).contains("not covered by a signed checkpoint"),
        "{}",
        text(&s.stdout)
    );
    let edited = std::fs::read_to_string(&export).unwrap().replacen(
        "\"decision\":\"deny\"",
        "\"decision\":\"allow\"",
        1,
    );
    std::fs::write(&export, edited).unwrap();
    let tampered = warden(
        dir,
        &[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--public-key",
            &public,
        ],
    );
    assert_eq!(tampered.status.code(), Some(1));
    assert!(
        text(&tampered.stdout).contains("does NOT verify: first bad entry"),
        "{}",
        text(&tampered.stdout)
    );

    // Tampering with the database itself: verify exits 1 naming the entry.
    let db = warden_audit::Db::connect(&format!(
        "sqlite://{}",
        dir.join("warden-data/warden.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("DROP TRIGGER audit_events_no_update")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET actor = 'someone' WHERE seq = 2")
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
    let bad = warden(dir, &["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stdout).contains("first bad entry 2"),
        "{}",
        text(&bad.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_password_from_environment_and_postgres_by_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, url) = warden_audit::testkit::fresh_postgres().await;
    // The distributed set-up: PostgreSQL for state and audit, AWS KMS for the key.
    let endpoint = std::env::var("WARDEN_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("WARDEN_TEST_AWS_ENDPOINT is not set: run scripts/test.sh or eval \"$(scripts/dev-services.sh)\"")
    });
    let kms = warden_policy::kms::AwsKms::connect(&warden_policy::kms::KmsSettings {
        key_id: String::new(),
        region: Some("us-east-1".to_owned()),
        endpoint: Some(endpoint.clone()),
        static_credentials: Some(("test".to_owned(), "test".to_owned())),
    })
    .await;
    let key = kms.create_key("warden e2e").await.unwrap();
    let bucket = std::env::var("WARDEN_TEST_S3_BUCKET")
        .expect("WARDEN_TEST_S3_BUCKET is not set: run the tests with scripts/test.sh");
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    // Everything distributed: PostgreSQL, AWS KMS, the lake on S3 (credentials from the
    // environment).
    let config = |key: &str| {
        format!(
            "[state]\nurl = \"{url}\"\n[keys]\nkek = \"aws-kms:{key}\"\nkms_region = \"us-east-1\"\nkms_endpoint = \"{endpoint}\"\n\
             [lake]\nurl = \"s3://{bucket}/{prefix}/\"\n[lake.storage_options]\nAWS_ENDPOINT_URL = \"{endpoint}\"\nAWS_REGION = \"us-east-1\"\nAWS_ALLOW_HTTP = \"true\"\n"
        )
    };
    std::fs::write(dir.join("warden.toml"), config(&key)).unwrap();
    let aws = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let migrate = warden(dir, &["--config", "warden.toml", "migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));
    let server = Server::start(
        dir,
        &["--config", "warden.toml"],
        &[
            ("WARDEN_ADMIN_PASSWORD", "from the environment"),
            aws[0],
            aws[1],
        ],
    )
    .await;
    let out = server.stdout();
    assert!(
        out.contains("password: from WARDEN_ADMIN_PASSWORD")
            && !out.contains("from the environment"),
        "{out}"
    );
    assert!(
        !dir.join("warden-data").exists(),
        "nothing embedded when PostgreSQL is configured"
    );
    let (status, body) = post(
        &server.base,
        "/v1/auth/token",
        None,
        json!({"grant_type": "password", "username": "admin", "password": "from the environment"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.stop();

    // The same installation under another KMS key cannot start: its keys do not unwrap.
    let other = kms.create_key("not warden's key").await.unwrap();
    std::fs::write(dir.join("warden.toml"), config(&other)).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args([
            "--config",
            "warden.toml",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .envs(aws)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..400 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("warden started under the wrong key-encryption key");
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.unwrap().code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot unwrap signing key"), "{stderr}");
    std::fs::write(dir.join("warden.toml"), config(&key)).unwrap();

    let verify = warden(dir, &["--config", "warden.toml", "audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stdout));
    // Audit commands never create an installation to "verify".
    let empty = tempfile::tempdir().unwrap();
    let nothing = warden(empty.path(), &["audit", "verify"]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(
        text(&nothing.stderr).contains("no Warden database"),
        "{}",
        text(&nothing.stderr)
    );
    assert!(!empty.path().join("warden-data/warden.db").exists());
    let bad = warden(dir, &["--config", "missing.toml", "migrate"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("missing.toml"));
}

/// The canary test: records carrying seeded card numbers, CVVs, e-mails, IPs and subject ids
/// go through the real gateway; afterwards not one byte written anywhere — the state
/// database and its WAL, the logs, the audit export, the responses — holds a clear value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_values_appear_nowhere() {
    const PAN: &str = "4000056655665556";
    const PAN_SPACED: &str = "4000 0566 5566 5556";
    const EMAIL: &str = "canary.person@example.org";
    const IP: &str = "198.51.100.231";
    const SUBJECT: &str = "canary-user-77";
    const CVV_JSON: &str = "\"9317\"";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let datasets = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datasets");
    std::fs::write(
        dir.join("warden.toml"),
        format!("datasets_dir = \"{datasets}\"\n"),
    )
    .unwrap();
    let server = Server::start(
        dir,
        &["--config", "warden.toml"],
        &[("WARDEN_ADMIN_PASSWORD", "canary admin pass")],
    )
    .await;
    let base = server.base.clone();
    let stage = server
        .service_tokens("canary admin pass", &[("canary-stage", &["stage"])])
        .await
        .remove(0);

    let records = json!([
        {"transaction_id": "c-1", "user_id": SUBJECT, "card_number": PAN_SPACED, "email": EMAIL, "ip": IP, "amount": 1, "created_at": 1},
        {"transaction_id": "c-2", "user_id": SUBJECT, "card_number": PAN, "cvv": "9317", "amount": 1, "created_at": 1},
        {"transaction_id": "c-3", "user_id": SUBJECT, "card_number": "4000056655665557", "email": EMAIL, "amount": 1, "created_at": 1},
        {"transaction_id": "c-4", "user_id": SUBJECT, "notes": PAN, "amount": 1, "created_at": 1},
        {"transaction_id": "c-5", "user_id": SUBJECT, "email": 42, "amount": 1, "created_at": 1},
    ]);
    let mut responses = String::new();
    for purpose in ["fraud_detection", "marketing"] {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/datasets/payments/protect"))
            .bearer_auth(&stage)
            .header("x-purpose", purpose)
            .json(&records)
            .send()
            .await
            .unwrap();
        responses.push_str(&r.text().await.unwrap());
    }
    // Malformed bodies carrying the canaries get error bodies without them.
    for raw in [
        format!("[{{\"card_number\": \"{PAN}\""),
        format!("{{\"email\": \"{EMAIL}\"}}"),
    ] {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/datasets/payments/protect"))
            .bearer_auth(&stage)
            .header("x-purpose", "fraud_detection")
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        responses.push_str(&r.text().await.unwrap());
    }
    assert!(
        responses.contains("tok_"),
        "the first batch was protected: {responses}"
    );
    server.stop();
    let export = dir.join("audit.ndjson");
    assert!(warden(
        dir,
        &[
            "--config",
            "warden.toml",
            "audit",
            "export",
            "--out",
            export.to_str().unwrap()
        ]
    )
    .status
    .success());

    let mut files = vec![dir.join("stdout.txt"), dir.join("stderr.txt"), export];
    files.extend(files_under(&dir.join("warden-data")));
    let mut scanned = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        scanned += bytes.len();
        for canary in [PAN, PAN_SPACED, EMAIL, IP, SUBJECT, CVV_JSON] {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} found in {}",
                f.display()
            );
        }
    }
    for canary in [
        PAN,
        PAN_SPACED,
        EMAIL,
        IP,
        SUBJECT,
        CVV_JSON,
        "4000056655665557",
    ] {
        assert!(
            !responses.contains(canary),
            "{canary} in a response: {responses}"
        );
    }
    assert!(
        scanned > 100_000,
        "the database and logs were read ({scanned} bytes)"
    );
}

/// Rotating the key-encryption key: everything wrapped under the old key is rewrapped under
/// the new one, the gateway starts on the new key alone, and a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_complete_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let datasets = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datasets");
    let old_config = format!("datasets_dir = \"{datasets}\"\n");
    std::fs::write(dir.join("warden.toml"), &old_config).unwrap();
    let env = [("WARDEN_ADMIN_PASSWORD", "rotation admin pass")];
    let server = Server::start(dir, &["--config", "warden.toml"], &env).await;
    let seed = crate::support::seed_from_uri(
        server
            .stdout()
            .lines()
            .find_map(|l| l.split("authenticator app): ").nth(1))
            .unwrap(),
    );
    let base = server.base.clone();
    let login = || {
        post(
            &base,
            "/v1/auth/token",
            None,
            json!({"grant_type": "password", "username": "admin", "password": "rotation admin pass"}),
        )
    };
    let (_, body) = login().await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    // Protecting a record creates the vault's wrapping key and a subject key.
    let (_, svc) = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let code = warden_gateway::auth::totp::code_at(&seed, now).unwrap();
        let (_, b) = post(&base, "/v1/auth/mfa", Some(&token), json!({"code": code})).await;
        let admin = b["access_token"].as_str().unwrap().to_owned();
        post(
            &base,
            "/v1/service-accounts",
            Some(&admin),
            json!({"name": "rot-stage", "roles": ["stage"]}),
        )
        .await
    };
    let (_, b) = post(&base, "/v1/auth/token", None, json!({"grant_type": "client_credentials", "client_id": "rot-stage", "client_secret": svc["client_secret"]})).await;
    let stage = b["access_token"].as_str().unwrap().to_owned();
    let protect = |base: String, stage: String| async move {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/datasets/payments/protect"))
            .bearer_auth(stage)
            .header("x-purpose", "fraud_detection")
            .json(&json!([{"transaction_id": "r-1", "user_id": "u-1", "email": "u1@example.com", "card_number": "4111111111111111", "amount": 1, "created_at": 1}]))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, before) = protect(base.clone(), stage.clone()).await;
    assert_eq!(status, 200, "{before}");
    server.stop();

    let old_key = dir.join("warden-data/kek.key");
    let new_key = dir.join("new-kek.key");
    std::fs::write(
        dir.join("warden.toml"),
        format!(
            "{old_config}[keys]\nkek = \"file://{}\"\n",
            new_key.display()
        ),
    )
    .unwrap();
    let rotate = warden(
        dir,
        &[
            "--config",
            "warden.toml",
            "keys",
            "rotate",
            "--from",
            &format!("file://{}", old_key.display()),
        ],
    );
    assert!(rotate.status.success(), "{}", text(&rotate.stderr));
    // Two signing keys, the admin's TOTP seed, the wrapping key.
    assert!(
        text(&rotate.stdout).contains("4 rewrapped, 0 already"),
        "{}",
        text(&rotate.stdout)
    );
    let again = warden(
        dir,
        &[
            "--config",
            "warden.toml",
            "keys",
            "rotate",
            "--from",
            &format!("file://{}", old_key.display()),
        ],
    );
    assert!(
        text(&again.stdout).contains("0 rewrapped, 4 already"),
        "{}",
        text(&again.stdout)
    );

    // The old key is no longer needed: remove it and start on the new one.
    std::fs::remove_file(&old_key).unwrap();
    let server = Server::start(dir, &["--config", "warden.toml"], &env).await;
    let base = server.base.clone();
    let (status, body) = post(
        &base,
        "/v1/auth/token",
        None,
        json!({"grant_type": "password", "username": "admin", "password": "rotation admin pass"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 30;
    let code = warden_gateway::auth::totp::code_at(&seed, now).unwrap();
    let (status, body) = post(&base, "/v1/auth/mfa", Some(&token), json!({"code": code})).await;
    assert_eq!(
        status, 200,
        "the TOTP seed decrypts under the new key: {body}"
    );
    let (_, b) = post(&base, "/v1/auth/token", None, json!({"grant_type": "client_credentials", "client_id": "rot-stage", "client_secret": svc["client_secret"]})).await;
    let (status, after) =
        protect(base.clone(), b["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after["records"][0]["fields"]["card_number"], before["records"][0]["fields"]["card_number"],
        "the vault still finds the PAN"
    );
    assert_eq!(
        after["records"][0]["subject_ref"],
        before["records"][0]["subject_ref"]
    );
    server.stop();
    let bad = warden(
        dir,
        &[
            "--config",
            "warden.toml",
            "keys",
            "rotate",
            "--from",
            "file:///nonexistent/kek.key",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
}

/// Every file under `dir`, recursively.
pub(crate) fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An answered read's audit event survives the process killed right after the answer; a
/// tail rewritten in the database afterwards (chain recomputed, head moved along) fails
/// `warden audit verify` (unless the unsigned tail is accepted, which says how much),
/// cannot be exported, and keeps a restarted gateway unready, alerting and recording nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_reads_survive_a_crash_and_a_forged_tail_is_refused() {
    use warden_audit::AuditStore;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let password = "a long admin passphrase";
    let mut server = Server::start(dir, &[], &[("WARDEN_ADMIN_PASSWORD", password)]).await;
    let (status, body) = post(
        &server.base,
        "/v1/auth/token",
        None,
        json!({"grant_type": "password", "username": "admin", "password": password}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let read = reqwest::Client::new()
        .get(format!("{}/v1/auth/me", server.base))
        .bearer_auth(&token)
        .header("x-request-id", &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    // SIGKILL as soon as the answer is in: no shutdown flushes anything.
    server.child.kill().unwrap();
    server.wait_exit(Duration::from_secs(10)).unwrap();

    let url = format!("sqlite://{}", dir.join("warden-data/warden.db").display());
    let db = warden_audit::Db::connect(&url).await.unwrap();
    let store = warden_audit::SqlAuditStore::new(db.clone());
    let events = store.scan(0, 1000).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.body.action.as_str(), last.body.request_id.as_deref()),
        ("self.read", Some(request_id.as_str())),
        "the answered read is in the log: {events:?}"
    );
    let intact = warden(dir, &["audit", "verify"]);
    assert_eq!(intact.status.code(), Some(0), "{}", text(&intact.stdout));

    // Rewrite the last entry as someone with write access to the file would.
    sqlx::query("DROP TRIGGER audit_events_no_update")
        .execute(db.pool())
        .await
        .unwrap();
    let mut forged = last.clone();
    forged.body.actor = "mallory".to_owned();
    forged.hash = warden_audit::event::chain_hash(&forged.prev_hash, forged.seq, &forged.body);
    sqlx::query("UPDATE audit_events SET actor = $1, hash = $2 WHERE seq = $3")
        .bind(&forged.body.actor)
        .bind(forged.hash.to_vec())
        .bind(forged.seq as i64)
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(forged.hash.to_vec())
        .execute(db.pool())
        .await
        .unwrap();
    db.pool().close().await;

    let verify = warden(dir, &["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify.stdout));
    assert!(
        text(&verify.stdout).contains("not covered by a signed checkpoint"),
        "{}",
        text(&verify.stdout)
    );
    // Accepting an unsigned tail does not pass it: its head's seal no longer matches, after
    // checkpoints of a sealing writer.
    let accepted = warden(dir, &["audit", "verify", "--accept-unsigned-tail"]);
    assert_eq!(
        accepted.status.code(),
        Some(1),
        "{}",
        text(&accepted.stdout)
    );
    assert!(
        text(&accepted.stdout).contains("carries no valid seal"),
        "{}",
        text(&accepted.stdout)
    );
    let export = warden(dir, &["audit", "export", "--out", "audit.ndjson"]);
    assert_eq!(
        export.status.code(),
        Some(2),
        "a forged log is not signed for export"
    );
    assert!(
        text(&export.stderr).contains("refusing to export"),
        "{}",
        text(&export.stderr)
    );

    let server = Server::start(dir, &[], &[]).await;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["reason"],
        "audit_chain_broken"
    );
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("warden_audit_chain_broken 1"), "{metrics}");
    let (status, body) = post(
        &server.base,
        "/v1/auth/token",
        None,
        json!({"grant_type": "password", "username": "admin", "password": password}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("audit_unavailable")),
        "{body}"
    );
    let logs = server.stop();
    assert!(logs.contains("the audit log does not verify"), "{logs}");
    let still = warden(dir, &["audit", "verify"]);
    assert_eq!(
        still.status.code(),
        Some(1),
        "nothing was signed over the forgery"
    );
}

/// `warden datasets suggest` on a CSV and an NDJSON sample: a contract with a class for each
/// field, valid as suggested when the sample decides everything, and no value of the sample
/// in what it prints.
#[test]
fn datasets_suggest_proposes_a_contract_without_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut csv =
        String::from("order_id,customer_id,card_number,cvv,email,ip,amount,created_at,comment\n");
    let mut ndjson = String::new();
    for i in 0..20 {
        let pan = warden_policy::pan::with_check_digit(&format!("5500000000000{i:02}"));
        csv.push_str(&format!(
            "o-{i},c-{},{pan},123,c{i}@example.org,203.0.113.{i},{i}.5,2026-11-24T10:00:00Z,fine\n",
            i % 4
        ));
        ndjson.push_str(
            &json!({"order_id": format!("o-{i}"), "customer_id": format!("c-{}", i % 4),
                    "card_number": pan, "amount": i, "created_at": 1_790_000_000 + i})
            .to_string(),
        );
        ndjson.push('\n');
    }
    std::fs::write(dir.join("orders.csv"), &csv).unwrap();
    std::fs::write(dir.join("orders.ndjson"), &ndjson).unwrap();

    let out = warden(dir, &["datasets", "suggest", "orders.csv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    let contract = warden_policy::contract::Contract::from_toml(&toml)
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let class = |f: &str| contract.fields[f].class;
    use warden_policy::contract::{DataClass, FieldType};
    assert_eq!(class("card_number"), DataClass::PciPan);
    assert_eq!(class("cvv"), DataClass::PciSad);
    assert_eq!(class("email"), DataClass::PiiDirect);
    assert_eq!(class("ip"), DataClass::PiiNetwork);
    assert_eq!(contract.subject_field, "customer_id");
    assert_eq!(contract.record_key, "order_id");
    assert_eq!(contract.fields["amount"].ty, FieldType::Number);
    assert_eq!(contract.name, "orders");
    for value in ["550000", "@example.org", "203.0.113", "o-1\"", "c-1\""] {
        assert!(!toml.contains(value), "{value} in\n{toml}");
    }

    let out = warden(
        dir,
        &[
            "datasets",
            "suggest",
            "orders.ndjson",
            "--name",
            "orders",
            "--out",
            "o.toml",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(dir.join("o.toml")).unwrap();
    let contract = warden_policy::contract::Contract::from_toml(&written).unwrap();
    assert_eq!(contract.time_field, "created_at");
    assert_eq!(contract.fields["created_at"].ty, FieldType::Timestamp);
    let bad = warden(dir, &["datasets", "suggest", "missing.csv"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// A gateway whose configured contract directory holds nothing says so at start and in
/// /readyz (still ready: authentication and the audit log work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dataset_loaded_is_said_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("contracts")).unwrap();
    std::fs::write(dir.join("warden.toml"), "datasets_dir = \"contracts\"\n").unwrap();
    let server = Server::start(dir, &["--config", "warden.toml"], &[]).await;
    let ready = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["datasets"], 0, "{body}");
    assert!(body["warning"]
        .as_str()
        .unwrap()
        .contains("no dataset contract"));
    let logs = server.stop();
    assert!(logs.contains("NO DATASET CONTRACT IS LOADED"), "{logs}");
}
