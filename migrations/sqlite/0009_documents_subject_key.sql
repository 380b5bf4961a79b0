-- Owner: warden-pipeline documents. Subjects are found by a 64-bit key, the first 16 hex
-- digits of their pseudonym (`sr_` + hex), instead of the 35-character reference itself: the
-- loaders insert into the subject index in random order, and an index of small entries has
-- fewer pages for each batch to rewrite (measured: a fifth less CPU a row at 400,000 rows).
-- A lookup matches the key, then the whole reference, so two subjects sharing a key are
-- still told apart; a reference of another form has the key 0. The key is computed by the
-- store (`docs::embedded::subject_key`); the statement below, which computes it for the
-- documents already stored, is checked against it by the tests.
ALTER TABLE documents ADD COLUMN subject_key INTEGER NOT NULL DEFAULT 0;
UPDATE documents SET subject_key = CASE WHEN subject_ref GLOB 'sr_[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]*' THEN
        ((instr('0123456789abcdef', substr(subject_ref, 4, 1)) - 1) << 60) |
        ((instr('0123456789abcdef', substr(subject_ref, 5, 1)) - 1) << 56) |
        ((instr('0123456789abcdef', substr(subject_ref, 6, 1)) - 1) << 52) |
        ((instr('0123456789abcdef', substr(subject_ref, 7, 1)) - 1) << 48) |
        ((instr('0123456789abcdef', substr(subject_ref, 8, 1)) - 1) << 44) |
        ((instr('0123456789abcdef', substr(subject_ref, 9, 1)) - 1) << 40) |
        ((instr('0123456789abcdef', substr(subject_ref, 10, 1)) - 1) << 36) |
        ((instr('0123456789abcdef', substr(subject_ref, 11, 1)) - 1) << 32) |
        ((instr('0123456789abcdef', substr(subject_ref, 12, 1)) - 1) << 28) |
        ((instr('0123456789abcdef', substr(subject_ref, 13, 1)) - 1) << 24) |
        ((instr('0123456789abcdef', substr(subject_ref, 14, 1)) - 1) << 20) |
        ((instr('0123456789abcdef', substr(subject_ref, 15, 1)) - 1) << 16) |
        ((instr('0123456789abcdef', substr(subject_ref, 16, 1)) - 1) << 12) |
        ((instr('0123456789abcdef', substr(subject_ref, 17, 1)) - 1) << 8) |
        ((instr('0123456789abcdef', substr(subject_ref, 18, 1)) - 1) << 4) |
        ((instr('0123456789abcdef', substr(subject_ref, 19, 1)) - 1) << 0)
    ELSE 0 END;
DROP INDEX documents_subject;
CREATE INDEX documents_subject_key ON documents (collection, subject_key);
