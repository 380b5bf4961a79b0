-- Owner: warden-audit. The head's seal: every batch signs the chain's new head (seq, ts of
-- its entry, hash) in its own transaction, so no acknowledged event is outside a signature.
-- Empty until the first sealed batch (a log written before seals gets one at start, once the
-- chain from its last checkpoint recomputes to its head).
ALTER TABLE audit_head ADD COLUMN ts INTEGER;
ALTER TABLE audit_head ADD COLUMN kid TEXT;
ALTER TABLE audit_head ADD COLUMN signature BLOB;
-- 1: signed before heads were sealed; 2: signed by a sealing writer, which states that
-- every later head is sealed (an unsealed one after it is a forgery, never sealed over).
ALTER TABLE audit_checkpoints ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
