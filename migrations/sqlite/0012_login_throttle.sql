-- Owner: warden-gateway. Failed logins throttle the attempts of one source on one account
-- (source: the client's address) with delays that double, and of all sources on the account
-- (source '*') with short delays: nobody who knows an account's name can lock its owner out
-- (the hard lock of principals.failed_logins/locked_until is no longer used for logins).
CREATE TABLE login_throttle (
    principal_id  TEXT NOT NULL,
    source        TEXT NOT NULL,
    failures      BIGINT NOT NULL,
    -- Microseconds the next failure after the free ones waits (doubling), 0 before.
    delay         BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    PRIMARY KEY (principal_id, source)
);
