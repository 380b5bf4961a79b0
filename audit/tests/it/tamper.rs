//! Tampering done directly in the database, as someone with more privileges than the gateway
//! would: the verifier must name the first bad sequence number every time.

use proptest::prelude::*;
use warden_audit::event::chain_hash;
use warden_audit::{
    verify_store, AuditStore, CheckpointKeys, Db, Sequencer, SequencerConfig, UnsignedTail,
};
use warden_sdk::VerifyReport;

use crate::{event, fixture, sealer, Kind};

fn bodies(range: std::ops::RangeInclusive<u64>) -> Vec<warden_audit::EventBody> {
    range.map(|i| event(i).into_body().unwrap()).collect()
}

/// Rewrites entries `from..` with a recomputed chain and moves the head's hash along, as an
/// attacker with write access to the database would (the head's seal cannot follow).
async fn rewrite_from(f: &crate::Fixture, from: u64) {
    let mut events = f.store.scan(0, 1000).await.unwrap();
    let mut prev = events[(from - 2) as usize].hash;
    for e in events.iter_mut().skip((from - 1) as usize) {
        e.body.actor = "mallory".into();
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
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(prev.to_vec())
        .execute(f.db.pool())
        .await
        .unwrap();
}

warden_audit::on_both_backends!(crate::Kind;
    edited_entry_is_named,
    deleted_entry_is_named,
    deleted_last_entry_is_named,
    reordered_entries_are_named,
    inserted_entry_is_named,
    recomputed_chain_is_caught_by_checkpoint,
    unreadable_entry_is_named,
    truncated_tail_below_a_checkpoint_is_named,
    rewritten_tail_after_the_last_checkpoint_is_refused,
    cut_tail_after_the_last_checkpoint_is_refused,
    cut_back_to_a_checkpoint_or_below_is_refused,
    unsealed_legacy_tail_is_sealed_only_when_it_chains,
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
        .append(
            (1..=n).map(|i| event(i).into_body().unwrap()).collect(),
            None,
        )
        .await
        .unwrap();
    assert!(verify(&f).await.ok);
    disable_guard(&f.db).await;
    f
}

async fn verify(f: &crate::Fixture) -> VerifyReport {
    verify_store(
        f.store.as_ref(),
        CheckpointKeys::new(),
        UnsignedTail::Accept,
    )
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
    let (sealer, keys) = sealer();
    let config = SequencerConfig {
        checkpoint_every: 10,
        ..Default::default()
    };
    let seq = Sequencer::start(f.store.clone(), Some(sealer), config, None);
    for i in 1..=25u64 {
        seq.append(event(i)).await.unwrap();
    }
    seq.shutdown().await;
    disable_guard(&f.db).await;
    rewrite_from(&f, 15).await;
    let unsigned = verify_store(
        f.store.as_ref(),
        CheckpointKeys::new(),
        UnsignedTail::Accept,
    )
    .await
    .unwrap();
    let signed = verify_store(f.store.as_ref(), keys, UnsignedTail::Refuse)
        .await
        .unwrap();
    // Without keys the checkpoints cannot be trusted, so the first one (the one that began
    // sealing, at the first entry) fails its signature.
    assert_eq!(unsigned.first_bad_seq, Some(1), "{unsigned:?}");
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
    let (sealer, keys) = sealer();
    let config = SequencerConfig {
        checkpoint_every: 10,
        ..Default::default()
    };
    let seq = Sequencer::start(f.store.clone(), Some(sealer), config, None);
    for i in 1..=25u64 {
        seq.append(event(i)).await.unwrap();
    }
    seq.shutdown().await;
    disable_guard(&f.db).await;
    exec(&f.db, "DELETE FROM audit_events WHERE seq > 15").await;
    exec(&f.db, "UPDATE audit_head SET seq = 15").await;
    let r = verify_store(f.store.as_ref(), keys, UnsignedTail::Refuse)
        .await
        .unwrap();
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
                f.store.append((0..*n).map(|i| event(total + i).into_body().unwrap()).collect(), None).await.unwrap();
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

/// Entries after the last periodic checkpoint, rewritten with a recomputed chain and a head
/// moved along: the head's seal no longer matches, so they are unverified — the verifier
/// fails unless told to accept an unsigned tail, and no writer seals over them, whether the
/// forged head keeps the old seal or drops it.
async fn rewritten_tail_after_the_last_checkpoint_is_refused(kind: Kind) {
    let f = fixture(kind).await;
    let (sealer, keys) = sealer();
    // The first sealed batch leaves a checkpoint at its head (10); the next is sealed only.
    f.store.append(bodies(1..=10), Some(&sealer)).await.unwrap();
    f.store
        .append(bodies(11..=15), Some(&sealer))
        .await
        .unwrap();
    let before = verify_store(f.store.as_ref(), keys.clone(), UnsignedTail::Refuse)
        .await
        .unwrap();
    assert!(before.ok && before.signed_through == 15, "{before:?}");
    disable_guard(&f.db).await;
    rewrite_from(&f, 12).await;

    let r = verify_store(f.store.as_ref(), keys.clone(), UnsignedTail::Refuse)
        .await
        .unwrap();
    assert!(!r.ok, "{r:?}");
    assert_eq!((r.first_bad_seq, r.signed_through), (Some(11), 10), "{r:?}");
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("11..=15") && reason.contains("seal is not valid"),
        "{reason}"
    );
    let accepted = verify_store(f.store.as_ref(), keys.clone(), UnsignedTail::Accept)
        .await
        .unwrap();
    // Accepting an unsigned tail does not pass a head whose seal was forged after a sealing
    // writer's checkpoint.
    assert!(
        !accepted.ok && accepted.unsigned_entries == 5,
        "{accepted:?}"
    );
    assert!(accepted.reason.unwrap().contains("carries no valid seal"));

    // A gateway started afresh (no memory of the head) refuses to extend or seal it.
    let (fresh, _) = crate::sealer();
    let err = f
        .store
        .append(bodies(16..=16), Some(&fresh))
        .await
        .unwrap_err();
    assert!(matches!(err, warden_audit::Error::ChainBroken(_)), "{err}");
    exec(
        &f.db,
        "UPDATE audit_head SET ts = NULL, kid = NULL, signature = NULL",
    )
    .await;
    let seq = Sequencer::start(
        f.store.clone(),
        Some(fresh),
        SequencerConfig::default(),
        None,
    );
    let err = seq.seal().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("every head after the checkpoint at entry 10 was sealed"),
        "{err}"
    );
    assert!(seq.broken().is_some());
    assert!(matches!(
        seq.append(event(16)).await,
        Err(warden_audit::Error::ChainBroken(_))
    ));
    seq.shutdown().await;
    assert_eq!(
        f.store.head().await.unwrap().seq,
        15,
        "nothing appended over the break"
    );
}

/// The tail after the last checkpoint deleted and the head moved back: the head's seal does
/// not match the moved head, the writer that sealed the real head sees it moved back, and
/// a fresh one refuses an unsealed head after a checkpoint of a sealing writer.
async fn cut_tail_after_the_last_checkpoint_is_refused(kind: Kind) {
    let f = fixture(kind).await;
    let (sealer, keys) = sealer();
    f.store.append(bodies(1..=10), Some(&sealer)).await.unwrap();
    let kept = f
        .store
        .append(bodies(11..=12), Some(&sealer))
        .await
        .unwrap();
    f.store
        .append(bodies(13..=15), Some(&sealer))
        .await
        .unwrap();
    disable_guard(&f.db).await;
    exec(&f.db, "DELETE FROM audit_events WHERE seq > 12").await;
    sqlx::query("UPDATE audit_head SET seq = 12, hash = $1")
        .bind(kept[1].hash.to_vec())
        .execute(f.db.pool())
        .await
        .unwrap();

    let r = verify_store(f.store.as_ref(), keys, UnsignedTail::Refuse)
        .await
        .unwrap();
    assert!(!r.ok, "{r:?}");
    assert_eq!((r.first_bad_seq, r.head_seq), (Some(11), 12), "{r:?}");
    assert!(r
        .reason
        .unwrap()
        .contains("not covered by a signed checkpoint"));

    let err = f
        .store
        .append(bodies(13..=13), Some(&sealer))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("moved back from entry 15 to entry 12"),
        "{err}"
    );
    let (fresh, _) = crate::sealer();
    let err = f.store.append(Vec::new(), Some(&fresh)).await.unwrap_err();
    assert!(matches!(err, warden_audit::Error::ChainBroken(_)), "{err}");
}

/// A log written before heads were sealed (legacy checkpoints, an unsealed head) is sealed
/// at start once its tail chains from the last checkpoint, and refused when it does not.
async fn unsealed_legacy_tail_is_sealed_only_when_it_chains(kind: Kind) {
    for tampered in [false, true] {
        let f = fixture(kind).await;
        let (sealer, keys) = sealer();
        let first = f.store.append(bodies(1..=10), None).await.unwrap();
        let legacy = sealer.signer().sign(
            warden_audit::CheckpointKind::Legacy,
            10,
            first[9].body.ts,
            first[9].hash,
        );
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, ts, hash, kid, signature, version) \
             VALUES ($1, $2, $3, $4, $5, 1)",
        )
        .bind(10i64)
        .bind(legacy.ts)
        .bind(legacy.hash.to_vec())
        .bind(legacy.kid.clone())
        .bind(legacy.signature.to_vec())
        .execute(f.db.pool())
        .await
        .unwrap();
        f.store.append(bodies(11..=14), None).await.unwrap();
        let unsealed = verify_store(f.store.as_ref(), keys.clone(), UnsignedTail::Refuse)
            .await
            .unwrap();
        assert!(
            !unsealed.ok && unsealed.unsigned_entries == 4,
            "{unsealed:?}"
        );
        if tampered {
            disable_guard(&f.db).await;
            exec(
                &f.db,
                "UPDATE audit_events SET actor = 'mallory' WHERE seq = 13",
            )
            .await;
        }

        let seq = Sequencer::start(
            f.store.clone(),
            Some(sealer),
            SequencerConfig::default(),
            None,
        );
        let sealed = seq.seal().await;
        seq.shutdown().await;
        let r = verify_store(f.store.as_ref(), keys, UnsignedTail::Refuse)
            .await
            .unwrap();
        if tampered {
            let err = sealed.unwrap_err();
            assert!(err.to_string().contains("entry 13 was altered"), "{err}");
            assert!(
                f.store.head().await.unwrap().seal.is_none(),
                "nothing signed over the break"
            );
            assert_eq!(r.first_bad_seq, Some(13), "{r:?}");
        } else {
            sealed.unwrap();
            assert!(
                r.ok && r.signed_through == 14 && r.unsigned_entries == 0,
                "{r:?}"
            );
        }
    }
}

/// The log cut back exactly to a periodic checkpoint (no entry left unsigned) with the head
/// moved there and its seal removed: the verifier refuses it, even accepting an unsigned
/// tail; cut below a sealing writer's checkpoint, no gateway seals over it.
async fn cut_back_to_a_checkpoint_or_below_is_refused(kind: Kind) {
    let f = fixture(kind).await;
    let (sealer, keys) = sealer();
    // The first sealed batch leaves a checkpoint at its head, 10.
    let first = f.store.append(bodies(1..=10), Some(&sealer)).await.unwrap();
    f.store
        .append(bodies(11..=15), Some(&sealer))
        .await
        .unwrap();
    disable_guard(&f.db).await;
    exec(&f.db, "DELETE FROM audit_events WHERE seq > 10").await;
    sqlx::query(
        "UPDATE audit_head SET seq = 10, hash = $1, ts = NULL, kid = NULL, signature = NULL",
    )
    .bind(first[9].hash.to_vec())
    .execute(f.db.pool())
    .await
    .unwrap();
    for tail in [UnsignedTail::Refuse, UnsignedTail::Accept] {
        let r = verify_store(f.store.as_ref(), keys.clone(), tail)
            .await
            .unwrap();
        assert!(!r.ok, "{tail:?}: {r:?}");
        assert_eq!(r.unsigned_entries, 0);
        assert!(r.reason.unwrap().contains("carries no valid seal"));
    }
    let (fresh, _) = crate::sealer();
    assert!(matches!(
        f.store.append(Vec::new(), Some(&fresh)).await,
        Err(warden_audit::Error::ChainBroken(_))
    ));
    // Below the checkpoint: no checkpoint at or under the head is a sealing writer's, but
    // one beyond it says entries are missing.
    exec(&f.db, "DELETE FROM audit_events WHERE seq > 6").await;
    sqlx::query("UPDATE audit_head SET seq = 6, hash = $1")
        .bind(first[5].hash.to_vec())
        .execute(f.db.pool())
        .await
        .unwrap();
    let err = f.store.append(Vec::new(), Some(&fresh)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("a checkpoint was signed at entry 10"),
        "{err}"
    );
}
