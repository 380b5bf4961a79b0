-- Owner: warden-gateway state store. Dataset contracts, every version kept.
CREATE TABLE dataset_contracts (
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    contract   TEXT NOT NULL,      -- JSON, as validated
    created_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
