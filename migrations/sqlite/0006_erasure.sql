-- Owner: warden-gateway erasure. Data subjects' erasure requests (GDPR Art. 17) as persisted,
-- resumable jobs, and legal holds that stop them. Subjects appear by pseudonym only.
CREATE TABLE erasure_jobs (
    id              TEXT PRIMARY KEY,
    subject_ref     TEXT NOT NULL UNIQUE,  -- one erasure per subject: asking again answers it
    idempotency_key TEXT,
    requested_by    TEXT NOT NULL,         -- principal id
    requested_as    TEXT NOT NULL,         -- 'subject' or 'dpo'
    state           TEXT NOT NULL,         -- 'pending', 'running', 'waiting', 'held', 'completed'
    step            INTEGER NOT NULL,        -- index of the next step to run
    pass            INTEGER NOT NULL,        -- erase passes (the verification scan may ask again)
    progress        TEXT NOT NULL,         -- JSON: what each finished step did
    received_at     INTEGER NOT NULL,        -- Unix microseconds
    due_at          INTEGER NOT NULL,
    extensions      TEXT NOT NULL,         -- JSON list: {by, at, days, reason}
    attempts        INTEGER NOT NULL,        -- failed attempts of the current step
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    receipt         TEXT,                  -- JSON, signed, once completed
    completed_at    INTEGER,
    updated_at      INTEGER NOT NULL,
    UNIQUE (requested_by, idempotency_key)
);
CREATE INDEX erasure_jobs_due ON erasure_jobs (state, next_attempt_at);

CREATE TABLE legal_holds (
    id          TEXT PRIMARY KEY,
    scope       TEXT NOT NULL,             -- 'dataset' or 'subject'
    target      TEXT NOT NULL,             -- dataset name or subject_ref
    reason      TEXT NOT NULL,
    placed_by   TEXT NOT NULL,
    placed_at   INTEGER NOT NULL,
    released_at INTEGER,
    released_by TEXT
);
CREATE INDEX legal_holds_target ON legal_holds (scope, target);
