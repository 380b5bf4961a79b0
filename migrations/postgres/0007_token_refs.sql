-- Owner: warden-policy vault. Which subjects' records carry each PAN token: an erasure
-- purges the tokens only its subject uses (a card shared with another subject keeps its
-- token), including tokens of records that never reached a store.
CREATE TABLE vault_token_refs (
    dataset     TEXT NOT NULL,
    subject_ref TEXT NOT NULL,
    token       TEXT NOT NULL,
    PRIMARY KEY (dataset, subject_ref, token)
);
CREATE INDEX vault_token_refs_token ON vault_token_refs (dataset, token);
