-- Owner: warden-policy vault. Which subjects' records carry each card (by its PAN index):
-- an erasure purges the tokens only its subject uses (a card shared with another subject
-- keeps its token), including tokens of records that never reached a store. A reference is
-- recorded before the token is looked up, so a purge never removes a token a concurrent
-- tokenization is about to hand out.
CREATE TABLE vault_token_refs (
    dataset     TEXT NOT NULL,
    subject_ref TEXT NOT NULL,
    pan_index   BYTEA NOT NULL,
    PRIMARY KEY (dataset, subject_ref, pan_index)
);
CREATE INDEX vault_token_refs_index ON vault_token_refs (dataset, pan_index);
