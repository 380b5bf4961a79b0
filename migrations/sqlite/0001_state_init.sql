-- Owner: warden-gateway state store. Timestamps are Unix microseconds.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE principals (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'service', 'subject')),
    name          TEXT NOT NULL UNIQUE,
    secret_hash   TEXT NOT NULL,
    roles         TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER NOT NULL DEFAULT 0,
    must_change_password INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE mfa_factors (
    principal_id   TEXT PRIMARY KEY REFERENCES principals (id),
    secret_wrapped BLOB NOT NULL,
    confirmed      INTEGER NOT NULL DEFAULT 0,
    last_step      INTEGER NOT NULL DEFAULT -1,
    failures       INTEGER NOT NULL DEFAULT 0,
    locked_until   INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    purpose         TEXT NOT NULL,
    public_key      BLOB NOT NULL,
    private_wrapped BLOB NOT NULL,
    active          INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE policy_rules (
    ptype  TEXT NOT NULL,
    rule   TEXT NOT NULL,
    PRIMARY KEY (ptype, rule)
);

CREATE TABLE policy_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO policy_version (id, version) VALUES (1, 0);
