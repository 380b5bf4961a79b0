-- Owner: warden-gateway. Each keyed ingest removes the keys older than a day: by this
-- index, a range at the table's start, not a scan of a day of keys on every request.
CREATE INDEX ingest_requests_created ON ingest_requests (created_at);
