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
    disabled      BIGINT NOT NULL DEFAULT 0,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    locked_until  BIGINT NOT NULL DEFAULT 0,
    must_change_password BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);

CREATE TABLE mfa_factors (
    principal_id   TEXT PRIMARY KEY REFERENCES principals (id),
    secret_wrapped BYTEA NOT NULL,
    confirmed      BIGINT NOT NULL DEFAULT 0,
    last_step      BIGINT NOT NULL DEFAULT -1,
    failures       BIGINT NOT NULL DEFAULT 0,
    locked_until   BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    purpose         TEXT NOT NULL,
    public_key      BYTEA NOT NULL,
    private_wrapped BYTEA NOT NULL,
    active          BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE TABLE policy_rules (
    ptype  TEXT NOT NULL,
    rule   TEXT NOT NULL,
    PRIMARY KEY (ptype, rule)
);

CREATE TABLE policy_version (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO policy_version (id, version) VALUES (1, 0);
