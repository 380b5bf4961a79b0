-- Owner: warden-policy vault. Data keys (stored wrapped) and the PAN token vault.
-- Keys lead with the looked-up column, so batched lookups stay index probes whatever the
-- planner's statistics say after a bulk load.
CREATE TABLE vault_keys (
    scope        TEXT NOT NULL,      -- 'wrapping', 'dataset' or 'subject'
    key_ref      TEXT NOT NULL,      -- wrapping key id, dataset name or subject_ref
    wrapped      BLOB,               -- NULL once destroyed (crypto-shredded)
    wrapped_by   TEXT NOT NULL,      -- the key that wraps it (KEK id or wrapping key id)
    created_at   INTEGER NOT NULL,
    destroyed_at INTEGER,
    PRIMARY KEY (key_ref, scope)
);

CREATE TABLE vault_tokens (
    dataset        TEXT NOT NULL,
    pan_index      BLOB NOT NULL,    -- HMAC-SHA-256 of the PAN under the dataset's index key
    token          TEXT NOT NULL,
    pan_ciphertext BLOB NOT NULL,    -- AES-256-GCM under the dataset key, bound to the token
    created_at     INTEGER NOT NULL,
    -- Index values are HMACs under per-dataset keys and tokens carry 75 random bits: both are
    -- unique across datasets, so each has a single-column index lookups cannot miss.
    PRIMARY KEY (pan_index),
    UNIQUE (token)
);
