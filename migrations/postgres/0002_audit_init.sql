-- Owner: warden-audit. Append-only: triggers refuse UPDATE, DELETE and TRUNCATE, and no
-- role but the owner holds those privileges.
CREATE TABLE audit_events (
    seq         BIGINT PRIMARY KEY,
    ts          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    decision    TEXT NOT NULL,
    purpose     TEXT,
    request_id  TEXT,
    subject_ref TEXT,
    details     TEXT NOT NULL,
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL
);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_subject ON audit_events (subject_ref, seq);
CREATE INDEX audit_events_action ON audit_events (action, seq);

-- The chain's tip; the sequencer of every replica locks this row for each batch, which
-- serializes appends across replicas. Verification never trusts it.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

-- Signed tree heads: an Ed25519 signature over (seq, hash) of the chain at that point.
CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    ts        BIGINT NOT NULL,
    hash      BYTEA NOT NULL,
    kid       TEXT NOT NULL,
    signature BYTEA NOT NULL
);

CREATE FUNCTION warden_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % on %', TG_OP, TG_TABLE_NAME;
END
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION warden_audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION warden_audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION warden_audit_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_checkpoints FROM PUBLIC;
