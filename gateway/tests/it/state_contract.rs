//! The StateStore contract suite, run on SQLite and PostgreSQL.

use warden_gateway::error::Error;
use warden_gateway::store::{
    Bootstrap, MfaRecord, PrincipalRecord, SigningKeyRecord, SqlStateStore, StateStore, Throttle,
};
use warden_sdk::{PolicyRule, PrincipalKind};

use crate::support::Backend;

warden_audit::on_both_backends!(crate::support::Backend;
    principals,
    attempts_race,
    mfa_replay_and_lockout,
    policy_compare_and_set,
    initialize_once
);

async fn store(backend: Backend) -> (SqlStateStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = match backend {
        Backend::Sqlite => warden_audit::testkit::fresh_sqlite(dir.path()).await,
        Backend::Postgres => warden_audit::testkit::fresh_postgres().await,
    };
    (SqlStateStore::new(db), dir)
}

fn principal(name: &str, kind: PrincipalKind) -> PrincipalRecord {
    PrincipalRecord {
        id: uuid::Uuid::new_v4().to_string(),
        kind,
        name: name.to_owned(),
        secret_hash: "$argon2id$fake".to_owned(),
        roles: vec!["analyst".to_owned(), "stage".to_owned()],
        disabled: false,
        failed_logins: 0,
        locked_until: 0,
        must_change_password: false,
        created_at: 42,
        credentials_epoch: 0,
    }
}

async fn principals(backend: Backend) {
    let (s, _dir) = store(backend).await;
    let alice = principal("alice", PrincipalKind::User);
    s.create_principal(&alice).await.unwrap();
    assert!(matches!(
        s.create_principal(&principal("alice", PrincipalKind::Service))
            .await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.principal_by_name("alice").await.unwrap().unwrap(), alice);
    assert_eq!(s.principal_by_id(&alice.id).await.unwrap().unwrap(), alice);
    assert!(s.principal_by_name("bob").await.unwrap().is_none());
    s.create_principal(&principal("bob", PrincipalKind::Subject))
        .await
        .unwrap();
    let names: Vec<String> = s
        .list_principals(10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["alice", "bob"]);
    assert_eq!(s.list_principals(1).await.unwrap().len(), 1);

    assert!(s.set_disabled(&alice.id, true).await.unwrap());
    assert!(
        s.principal_by_id(&alice.id)
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    assert!(!s.set_disabled("no-such-id", true).await.unwrap());
    let first = PrincipalRecord {
        must_change_password: true,
        ..principal("carol", PrincipalKind::User)
    };
    s.create_principal(&first).await.unwrap();
    assert!(
        s.principal_by_id(&first.id)
            .await
            .unwrap()
            .unwrap()
            .must_change_password
    );
    s.set_secret_hash(&first.id, "$argon2id$chosen")
        .await
        .unwrap();
    assert!(
        !s.principal_by_id(&first.id)
            .await
            .unwrap()
            .unwrap()
            .must_change_password,
        "a new password clears it"
    );
    s.set_secret_hash(&alice.id, "$argon2id$new").await.unwrap();
    assert_eq!(
        s.principal_by_id(&alice.id)
            .await
            .unwrap()
            .unwrap()
            .secret_hash,
        "$argon2id$new"
    );

    // Attempts are reserved in advance. From the third failure of one source on, its next
    // attempt waits: 1 000, then 2 000, 4 000... up to 5 000 µs; other sources do not wait.
    let t = Throttle {
        free: 3,
        first: 1_000,
        max: 5_000,
    };
    for _ in 0..2 {
        assert!(s.login_attempt(&alice.id, "ip-a", 10, t).await.unwrap());
    }
    assert!(
        s.login_attempt(&alice.id, "ip-a", 10, t).await.unwrap(),
        "the third attempt is still made"
    );
    assert!(
        !s.login_attempt(&alice.id, "ip-a", 1_009, t).await.unwrap(),
        "then the source waits 1 000 µs"
    );
    assert!(
        s.login_attempt(&alice.id, "ip-b", 1_009, t).await.unwrap(),
        "another source does not"
    );
    assert!(s.login_attempt(&alice.id, "ip-a", 1_010, t).await.unwrap());
    assert!(
        !s.login_attempt(&alice.id, "ip-a", 3_009, t).await.unwrap(),
        "the next delay is twice as long"
    );
    let mut now = 3_010;
    for expected in [4_000, 5_000, 5_000] {
        assert!(s.login_attempt(&alice.id, "ip-a", now, t).await.unwrap());
        assert!(!s
            .login_attempt(&alice.id, "ip-a", now + expected - 1, t)
            .await
            .unwrap());
        now += expected;
    }
    // A success clears the source's count (and the account's); ip-b keeps its own.
    s.login_succeeded(&alice.id, "ip-a").await.unwrap();
    for _ in 0..3 {
        assert!(s.login_attempt(&alice.id, "ip-a", now, t).await.unwrap());
    }
    assert!(!s.login_attempt(&alice.id, "ip-a", now, t).await.unwrap());
    // An administrator's unlock ends every delay of the account.
    assert!(s.unlock(&alice.id).await.unwrap());
    assert!(s.login_attempt(&alice.id, "ip-a", now, t).await.unwrap());
    assert!(!s.unlock("no-such-principal").await.unwrap());
}

/// Concurrent attempts never exceed the budget: exactly `free` of many racing ones from one
/// source get through before it must wait.
async fn attempts_race(backend: Backend) {
    let (s, _dir) = store(backend).await;
    let alice = principal("alice", PrincipalKind::User);
    s.create_principal(&alice).await.unwrap();
    let s = std::sync::Arc::new(s);
    let t = Throttle {
        free: 5,
        first: 1_000,
        max: 1_000,
    };
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (s, id) = (s.clone(), alice.id.clone());
            tokio::spawn(async move { s.login_attempt(&id, "ip-a", 10, t).await.unwrap() })
        })
        .collect();
    let mut permitted = 0;
    for t in tasks {
        permitted += usize::from(t.await.unwrap());
    }
    assert_eq!(permitted, 5);
}

async fn mfa_replay_and_lockout(backend: Backend) {
    let (s, _dir) = store(backend).await;
    let alice = principal("alice", PrincipalKind::User);
    s.create_principal(&alice).await.unwrap();
    let pending = MfaRecord {
        principal_id: alice.id.clone(),
        secret_wrapped: vec![1, 2, 3],
        confirmed: false,
        last_step: -1,
        failures: 0,
        locked_until: 0,
    };
    s.begin_mfa(&pending, 1).await.unwrap();
    // A second enrolment replaces the pending one.
    s.begin_mfa(
        &MfaRecord {
            secret_wrapped: vec![4, 5],
            ..pending.clone()
        },
        2,
    )
    .await
    .unwrap();
    assert_eq!(
        s.mfa(&alice.id).await.unwrap().unwrap().secret_wrapped,
        vec![4, 5]
    );
    assert!(
        !s.confirm_mfa(&alice.id, &[1, 2, 3]).await.unwrap(),
        "the replaced seed cannot be confirmed"
    );
    assert!(s.confirm_mfa(&alice.id, &[4, 5]).await.unwrap());
    assert!(s.mfa(&alice.id).await.unwrap().unwrap().confirmed);
    assert!(matches!(
        s.begin_mfa(&pending, 3).await,
        Err(Error::Conflict(_))
    ));

    assert!(s.accept_mfa_step(&alice.id, 100).await.unwrap());
    assert!(
        !s.accept_mfa_step(&alice.id, 100).await.unwrap(),
        "same step twice is a replay"
    );
    assert!(
        !s.accept_mfa_step(&alice.id, 99).await.unwrap(),
        "an older step is a replay"
    );
    assert!(s.accept_mfa_step(&alice.id, 101).await.unwrap());

    assert!(s.mfa_attempt(&alice.id, 10, 2, 500).await.unwrap());
    assert_eq!(s.mfa(&alice.id).await.unwrap().unwrap().failures, 1);
    assert!(s.mfa_attempt(&alice.id, 10, 2, 500).await.unwrap());
    let m = s.mfa(&alice.id).await.unwrap().unwrap();
    assert_eq!((m.failures, m.locked_until), (0, 500));
    assert!(
        !s.mfa_attempt(&alice.id, 499, 2, 900).await.unwrap(),
        "refused while locked"
    );
    assert!(s.mfa_attempt(&alice.id, 500, 5, 900).await.unwrap());
    assert!(s.accept_mfa_step(&alice.id, 102).await.unwrap());
    let m = s.mfa(&alice.id).await.unwrap().unwrap();
    assert_eq!(
        (m.failures, m.locked_until),
        (0, 0),
        "a right code clears the count"
    );
}

fn rule(ptype: &str, values: &[&str]) -> PolicyRule {
    PolicyRule {
        ptype: ptype.to_owned(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

async fn policy_compare_and_set(backend: Backend) {
    let (s, _dir) = store(backend).await;
    assert_eq!(s.policy().await.unwrap(), (0, vec![]));
    let rules = vec![
        rule("p", &["admin", "policy", "*"]),
        rule("g", &["dpo", "auditor"]),
    ];
    assert_eq!(s.replace_policy(0, &rules).await.unwrap(), 1);
    let (v, stored) = s.policy().await.unwrap();
    assert_eq!(v, 1);
    assert_eq!(stored, rules);
    assert!(
        matches!(s.replace_policy(0, &[]).await, Err(Error::Conflict(_))),
        "stale version refused"
    );
    assert_eq!(
        s.policy().await.unwrap().1,
        rules,
        "nothing changed by the refused write"
    );
}

async fn initialize_once(backend: Backend) {
    let (s, _dir) = store(backend).await;
    assert!(!s.is_initialized().await.unwrap());
    let admin = principal("admin", PrincipalKind::User);
    let init = Bootstrap {
        keys: vec![SigningKeyRecord {
            kid: "jwt-1".into(),
            purpose: "jwt".into(),
            public_key: vec![1; 32],
            private_wrapped: vec![2; 60],
            active: true,
            created_at: 5,
        }],
        admin_mfa: MfaRecord {
            principal_id: admin.id.clone(),
            secret_wrapped: vec![9],
            confirmed: true,
            last_step: -1,
            failures: 0,
            locked_until: 0,
        },
        admin,
        policy: vec![rule("p", &["admin", "users", "*"])],
    };
    assert!(s.initialize(&init).await.unwrap());
    assert!(s.is_initialized().await.unwrap());
    assert!(
        !s.initialize(&init).await.unwrap(),
        "a second initialization is a no-op"
    );
    assert_eq!(s.signing_keys("jwt").await.unwrap(), init.keys);
    assert!(s.signing_keys("checkpoint").await.unwrap().is_empty());
    assert_eq!(s.policy().await.unwrap(), (1, init.policy.clone()));
    assert!(s.mfa(&init.admin.id).await.unwrap().unwrap().confirmed);
}
