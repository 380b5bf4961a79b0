-- Owner: warden-policy vault. A count of the vault's destructive changes — data keys
-- destroyed or deleted, tokens deleted or changed — raised by triggers in the transaction
-- that makes one, whoever makes it (an older replica, an operator), never lowered. A reader
-- that finds it unchanged knows the keys and tokens it caches are still in the vault without
-- asking for each; one that finds it risen empties its caches, so a key destroyed or a token
-- purged by any replica is refused at this one's next batch.
CREATE TABLE vault_epoch (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    changes BIGINT NOT NULL
);
INSERT INTO vault_epoch (id, changes)
    SELECT 1, COUNT(*) FROM vault_keys WHERE wrapped IS NULL;

CREATE TRIGGER vault_epoch_key_destroyed AFTER UPDATE OF wrapped ON vault_keys
    WHEN NEW.wrapped IS NULL AND OLD.wrapped IS NOT NULL
BEGIN
    UPDATE vault_epoch SET changes = changes + 1 WHERE id = 1;
END;

CREATE TRIGGER vault_epoch_key_tombstone AFTER INSERT ON vault_keys
    WHEN NEW.wrapped IS NULL
BEGIN
    UPDATE vault_epoch SET changes = changes + 1 WHERE id = 1;
END;

CREATE TRIGGER vault_epoch_key_deleted AFTER DELETE ON vault_keys
BEGIN
    UPDATE vault_epoch SET changes = changes + 1 WHERE id = 1;
END;

CREATE TRIGGER vault_epoch_token_deleted AFTER DELETE ON vault_tokens
BEGIN
    UPDATE vault_epoch SET changes = changes + 1 WHERE id = 1;
END;

CREATE TRIGGER vault_epoch_token_changed AFTER UPDATE ON vault_tokens
BEGIN
    UPDATE vault_epoch SET changes = changes + 1 WHERE id = 1;
END;
