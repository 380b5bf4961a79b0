-- Owner: warden-audit. Append-only: the triggers below refuse UPDATE and DELETE.
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    decision    TEXT NOT NULL,
    purpose     TEXT,
    request_id  TEXT,
    subject_ref TEXT,
    details     TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_subject ON audit_events (subject_ref, seq);
CREATE INDEX audit_events_action ON audit_events (action, seq);

-- The chain's tip; the sequencer locks this row for each batch. Verification never trusts it.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

-- Signed tree heads: an Ed25519 signature over (seq, hash) of the chain at that point.
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    ts        INTEGER NOT NULL,
    hash      BLOB NOT NULL,
    kid       TEXT NOT NULL,
    signature BLOB NOT NULL
);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
