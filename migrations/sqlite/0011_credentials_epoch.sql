-- Owner: warden-gateway. Raised whenever an account's credentials change (a new password):
-- tokens carry the epoch they were issued under (claim `cep`), and one from an older epoch
-- is refused, so a password change ends every session opened before it.
ALTER TABLE principals ADD COLUMN credentials_epoch INTEGER NOT NULL DEFAULT 0;
