-- Owner: warden-pipeline. The embedded stream (a durable log per topic and partition, with
-- committed positions per consumer group) and the embedded document store.
CREATE TABLE stream_topics (
    topic      TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE stream_records (
    topic      TEXT NOT NULL,
    part       INTEGER NOT NULL,
    pos        INTEGER NOT NULL,
    record_key TEXT NOT NULL,
    value      BLOB,               -- NULL: a tombstone
    headers    TEXT NOT NULL,      -- JSON object of string values
    ts         INTEGER NOT NULL,
    PRIMARY KEY (topic, part, pos)
);

CREATE TABLE stream_offsets (
    grp      TEXT NOT NULL,
    topic    TEXT NOT NULL,
    part     INTEGER NOT NULL,
    next_pos INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, part)
);

CREATE TABLE documents (
    collection       TEXT NOT NULL,
    record_key       TEXT NOT NULL,
    subject_ref      TEXT NOT NULL,
    ts               INTEGER NOT NULL,   -- the record's time, Unix microseconds
    contract_version INTEGER NOT NULL,
    body             TEXT NOT NULL,      -- the protected fields, JSON
    PRIMARY KEY (collection, record_key)
);
CREATE INDEX documents_subject ON documents (collection, subject_ref);
CREATE INDEX documents_time ON documents (collection, ts, record_key);
