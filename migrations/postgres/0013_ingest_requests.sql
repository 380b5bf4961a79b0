-- Owner: warden-gateway. Ingest requests sent with an Idempotency-Key: a retry of one (its
-- answer lost) gets the first answer again instead of publishing the records a second time.
-- The same key with another body is refused. Rows older than a day are removed as new keys
-- come in.
CREATE TABLE ingest_requests (
    principal_id    TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- SHA-256 of the dataset, the mode and the body.
    digest          BYTEA NOT NULL,
    -- The answer's status and body once known; NULL while the request is in progress.
    status          INTEGER,
    response        TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (principal_id, idempotency_key)
);
