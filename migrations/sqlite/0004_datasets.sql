-- Owner: warden-gateway state store. Dataset contracts, every version kept.
CREATE TABLE dataset_contracts (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    contract   TEXT NOT NULL,      -- JSON, as validated
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
