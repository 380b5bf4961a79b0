//! Tampering done directly in the database, as someone with more privileges than the gateway
//! would: the verifier must name the first bad sequence number every time.

use proptest::prelude::*;
use warden_audit::event::chain_hash;
use warden_audit::{verify_store, AuditStore, CheckpointKeys, Db, Sequencer, SequencerConfig};
use warden_sdk::VerifyReport;

use crate::{event, fixture, signer, Kind};

warden_audit::on_both_backends!(crate::Kind;
    edited_entry_is_named,
    deleted_entry_is_named,
    deleted_last_entry_is_named,
    reordered_entries_are_named,
    inserted_entry_is_named,
    recomputed_chain_is_caught_by_checkpoint,
    unreadable_entry_is_named,
    truncated_tail_below_a_checkpoint_is_named,
);

/// Removes the append-only guard, as a database superuser could.
async fn disable_guard(db: &Db) {
    let statements: &[&str] = match db.backend() {
        warden_audit::Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
        ],
        warden_audit::Backend::Postgres => &["ALTER TABLE audit_events DISABLE TRIGGER USER"],
    };
    for s in statements {
        sqlx::query(s).execute(db.pool()).await.unwrap();
    }
}

async fn exec(db: &Db, sql: &str) {
    sqlx::query(sql)
        .execute(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn loaded(kind: Kind, n: u64) -> crate::Fixture {
    let f = fixture(kind).await;
    f.store
        .append((1..=n).map(|i| event(i).into_body().unwrap()).collect())
        .await
        .unwrap();
    assert!(verify(&f).await.ok);
    disable_guard(&f.db).await;
    f
}

async fn verify(f: &crate::Fixture) -> VerifyReport {
    verify_store(f.store.as_ref(), CheckpointKeys::new())
        .await
        .unwrap()
}

async fn edited_entry_is_named(kind: Kind) {
    let f = loaded(kind, 10).await;
    exec(
        &f.db,
        "UPDATE audit_events SET decision = 'allow', actor = 'actor-0' WHERE seq = 5",
    )
    .await;
    let r = verify(&f).await;
    assert_eq!(r.first_bad_seq, Some(5), "{r:?}");
    assert!(!r.ok);
}

async fn deleted_entry_is_named(kind: Kind) {
    let f = loaded(kind, 10).await;
    exec(&f.db, "DELETE FROM audit_events WHERE seq = 4").await;
    let r = verify(&f).await;
    assert_eq!(r.first_bad_seq, Some(4), "{r:?}");
}

async fn deleted_last_entry_is_named(kind: Kind) {
    let f = loaded(kind, 10).await;
    exec(&f.db, "DELETE FROM audit_events WHERE seq = 10").await;
    let r = verify(&f).await;
    assert_eq!(r.first_bad_seq, Some(10), "{r:?}");
}

async fn reordered_entries_are_named(kind: Kind) {
    let f = loaded(kind, 10).await;
    exec(&f.db, "UPDATE audit_events SET seq = -1 WHERE seq = 3").await;
    exec(&f.db, "UPDATE audit_events SET seq = 3 WHERE seq = 7").await;
    exec(&f.db, "UPDATE audit_events SET seq = 7 WHERE seq = -1").await;
    let r = verify(&f).await;
    assert_eq!(r.first_bad_seq, Some(3), "{r:?}");
}

async fn inserted_entry_is_named(kind: Kind) {
    let f = loaded(kind, 10).await;
    // Make room at 6, then forge an entry there that links to entry 5.
    exec(
        &f.db,
        "UPDATE audit_events SET seq = -seq - 1 WHERE seq >= 6",
    )
    .await;
    exec(&f.db, "UPDATE audit_events SET seq = -seq WHERE seq < 0").await;
    exec(
        &f.db,
        "INSERT INTO audit_events (seq, ts, actor, actor_kind, action, resource, decision, purpose, \
         request_id, subject_ref, details, prev_hash, hash) \
         SELECT 6, ts, 'actor-9', actor_kind, action, resource, 'allow', purpose, request_id, \
         subject_ref, details, hash, hash FROM audit_events WHERE seq = 5",
    )
    .await;
    exec(&f.db, "UPDATE audit_head SET seq = 11").await;
    let r = verify(&f).await;
    assert_eq!(r.first_bad_seq, Some(6), "{r:?}");
}

/// An attacker who rewrites entry 15 and recomputes every later hash leaves a chain that
/// verifies on its own; the checkpoint signed at 20 does not match it.
async fn recomputed_chain_is_caught_by_checkpoint(kind: Kind) {
    let f = fixture(kind).await;
    let (signer, keys) = signer();
    let config = SequencerConfig {
        checkpoint_every: 10,
        ..Default::default()
    };
    let seq = Sequencer::start(f.store.clone(), Some(signer), config, None);
    for i in 1..=25u64 {
        seq.append(event(i)).await.unwrap();
    }
    seq.shutdown().await;
    disable_guard(&f.db).await;
    let mut events = f.store.scan(0, 100).await.unwrap();
    events[14].body.actor = "mallory".into();
    let mut prev = events[13].hash;
    for e in events.iter_mut().skip(14) {
        e.prev_hash = prev;
        e.hash = chain_hash(&prev, e.seq, &e.body);
        prev = e.hash;
        sqlx::query("UPDATE audit_events SET actor = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(e.body.actor.clone())
            .bind(e.prev_hash.to_vec())
            .bind(e.hash.to_vec())
            .bind(e.seq as i64)
            .execute(f.db.pool())
            .await
            .unwrap();
    }
    let unsigned = verify_store(f.store.as_ref(), CheckpointKeys::new())
        .await
        .unwrap();
    let signed = verify_store(f.store.as_ref(), keys).await.unwrap();
    // Without keys the checkpoints cannot be trusted, so the first one fails its signature.
    assert_eq!(unsigned.first_bad_seq, Some(10), "{unsigned:?}");
    assert!(!signed.ok);
    assert_eq!(
        signed.first_bad_seq,
        Some(11),
        "tampering lies after the checkpoint at 10: {signed:?}"
    );
    assert!(signed.reason.unwrap().contains("11..=20"));
}

async fn unreadable_entry_is_named(kind: Kind) {
    let f = loaded(kind, 10).await;
    exec(
        &f.db,
        "UPDATE audit_events SET decision = 'maybe' WHERE seq = 6",
    )
    .await;
    let r = verify(&f).await;
    assert_eq!(r.first_bad_seq, Some(6), "{r:?}");
    assert!(r.reason.unwrap().contains("cannot be read"));
}

/// Cutting the log's tail and moving the tip back is caught wherever a checkpoint was signed
/// beyond the cut.
async fn truncated_tail_below_a_checkpoint_is_named(kind: Kind) {
    let f = fixture(kind).await;
    let (signer, keys) = signer();
    let config = SequencerConfig {
        checkpoint_every: 10,
        ..Default::default()
    };
    let seq = Sequencer::start(f.store.clone(), Some(signer), config, None);
    for i in 1..=25u64 {
        seq.append(event(i)).await.unwrap();
    }
    seq.shutdown().await;
    disable_guard(&f.db).await;
    exec(&f.db, "DELETE FROM audit_events WHERE seq > 15").await;
    exec(&f.db, "UPDATE audit_head SET seq = 15").await;
    let r = verify_store(f.store.as_ref(), keys).await.unwrap();
    assert_eq!(r.first_bad_seq, Some(16), "{r:?}");
    assert_eq!(r.signed_through, 10);
    assert!(r
        .reason
        .unwrap()
        .contains("checkpoint was signed at entry 20"));
}

#[derive(Debug, Clone)]
enum Tamper {
    Edit(u64),
    Delete(u64),
    Swap(u64, u64),
    Insert(u64),
    Unreadable(u64),
}

fn scenario() -> impl Strategy<Value = (Vec<u64>, Option<Tamper>)> {
    prop::collection::vec(1u64..6, 1..8).prop_flat_map(|batches| {
        let total: u64 = batches.iter().sum();
        let tamper = prop_oneof![
            Just(None),
            (1..=total).prop_map(|k| Some(Tamper::Edit(k))),
            (1..=total).prop_map(|k| Some(Tamper::Delete(k))),
            // Two distinct entries (a one-entry log has nothing to swap: edit it instead).
            (1..=total, 1..=total).prop_map(move |(a, k)| {
                let b = (a - 1 + k) % total + 1;
                Some(if a == b {
                    Tamper::Edit(a)
                } else {
                    Tamper::Swap(a.min(b), a.max(b))
                })
            }),
            (1..=total).prop_map(|k| Some(Tamper::Insert(k))),
            (1..=total).prop_map(|k| Some(Tamper::Unreadable(k))),
        ];
        (Just(batches), tamper)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Model check: after any sequence of appended batches the log verifies with the model's
    /// head; after one tampering the verifier names exactly the model's first bad entry.
    #[test]
    fn append_verify_tamper_model((batches, tamper) in scenario()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = fixture(Kind::Sqlite).await;
            let mut total = 0;
            for n in &batches {
                f.store.append((0..*n).map(|i| event(total + i).into_body().unwrap()).collect()).await.unwrap();
                total += n;
                let r = verify(&f).await;
                assert!(r.ok, "{r:?}");
                assert_eq!(r.head_seq, total);
            }
            let Some(t) = tamper else { return };
            disable_guard(&f.db).await;
            let expected = match t {
                Tamper::Edit(k) => {
                    exec(&f.db, &format!("UPDATE audit_events SET resource = 'x' WHERE seq = {k}")).await;
                    k
                }
                Tamper::Delete(k) => {
                    exec(&f.db, &format!("DELETE FROM audit_events WHERE seq = {k}")).await;
                    k
                }
                Tamper::Swap(a, b) => {
                    exec(&f.db, &format!("UPDATE audit_events SET seq = -1 WHERE seq = {a}")).await;
                    exec(&f.db, &format!("UPDATE audit_events SET seq = {a} WHERE seq = {b}")).await;
                    exec(&f.db, &format!("UPDATE audit_events SET seq = {b} WHERE seq = -1")).await;
                    a
                }
                Tamper::Insert(k) => {
                    // Room at k, then a forged entry there linking to entry k - 1.
                    exec(&f.db, &format!("UPDATE audit_events SET seq = -seq - 1 WHERE seq >= {k}")).await;
                    exec(&f.db, "UPDATE audit_events SET seq = -seq WHERE seq < 0").await;
                    exec(
                        &f.db,
                        &format!(
                            "INSERT INTO audit_events (seq, ts, actor, actor_kind, action, resource, decision, \
                             purpose, request_id, subject_ref, details, prev_hash, hash) \
                             SELECT {k}, ts, 'forger', actor_kind, action, resource, decision, purpose, \
                             request_id, subject_ref, details, prev_hash, hash FROM audit_events WHERE seq = {}",
                            k + 1
                        ),
                    )
                    .await;
                    k
                }
                Tamper::Unreadable(k) => {
                    exec(&f.db, &format!("UPDATE audit_events SET decision = 'maybe' WHERE seq = {k}")).await;
                    k
                }
            };
            let r = verify(&f).await;
            assert_eq!(r.first_bad_seq, Some(expected), "{t:?}: {r:?}");
        });
    }
}
