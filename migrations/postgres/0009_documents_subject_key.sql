-- Owner: warden-pipeline documents. Subjects are found by a 64-bit key, the first 16 hex
-- digits of their pseudonym (`sr_` + hex), instead of the 35-character reference itself: the
-- loaders insert into the subject index in random order, and an index of small entries has
-- fewer pages for each batch to rewrite (measured: a fifth less CPU a row at 400,000 rows).
-- A lookup matches the key, then the whole reference, so two subjects sharing a key are
-- still told apart; a reference of another form has the key 0. The key is computed by the
-- store (`docs::embedded::subject_key`); the statement below, which computes it for the
-- documents already stored, is checked against it by the tests.
ALTER TABLE documents ADD COLUMN subject_key BIGINT NOT NULL DEFAULT 0;
UPDATE documents SET subject_key = CASE WHEN subject_ref ~ '^sr_[0-9a-f]{16}'
    THEN ('x' || substr(subject_ref, 4, 16))::bit(64)::bigint ELSE 0 END;
DROP INDEX documents_subject;
CREATE INDEX documents_subject_key ON documents (collection, subject_key);
