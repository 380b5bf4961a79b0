-- Owner: warden-policy vault. A count of the vault's destructive changes — data keys
-- destroyed, tokens purged — raised in the transaction that makes one, never lowered. A
-- reader that finds it unchanged knows the keys and tokens it caches are still in the
-- vault without asking for each; one that finds it risen empties its caches, so a key
-- destroyed or a token purged by any replica is refused at this one's next batch.
CREATE TABLE vault_epoch (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    changes BIGINT NOT NULL
);
INSERT INTO vault_epoch (id, changes)
    SELECT 1, COUNT(*) FROM vault_keys WHERE wrapped IS NULL;
