//! The state store: principals, second factors, signing keys and the policy.
//!
//! [`StateStore`] is the contract; [`SqlStateStore`] implements it on SQLite (embedded) and
//! PostgreSQL (distributed) with the same SQL (see `migrations/*/0001_state_init.sql`).
//! Secrets are stored only as argon2id hashes (passwords, client secrets) or wrapped under
//! the key-encryption key (TOTP seeds, private keys).

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;
use warden_audit::{Backend, Db};
use warden_sdk::{PolicyRule, PrincipalKind};

use crate::error::{Error, Result};

/// A user, data subject or service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRecord {
    pub id: String,
    pub kind: PrincipalKind,
    /// Username or client id.
    pub name: String,
    /// argon2id PHC string.
    pub secret_hash: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub failed_logins: i64,
    /// Unix microseconds; locked while in the future.
    pub locked_until: i64,
    /// Set for a generated first password: until it is changed, only `self` actions work.
    pub must_change_password: bool,
    pub created_at: i64,
    /// Raised by every change of the credentials; tokens of an older epoch are refused.
    pub credentials_epoch: i64,
}

/// What claiming an ingest request's idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestClaim {
    /// The key is new: the request runs.
    New,
    /// The request ran before: its answer.
    Answered { status: u16, response: String },
    /// The same key and request are running now.
    InProgress,
    /// The key was used for another request.
    Mismatch,
}

/// Growing delays after failed logins (OWASP: throttle, never lock an account for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Failures before any delay.
    pub free: u32,
    /// The first delay (microseconds), doubled after each further failure...
    pub first: i64,
    /// ...up to this.
    pub max: i64,
}

/// A TOTP factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaRecord {
    pub principal_id: String,
    /// The seed, wrapped under the key-encryption key.
    pub secret_wrapped: Vec<u8>,
    pub confirmed: bool,
    /// The last accepted time step; a code is accepted only for a later step (replay guard).
    pub last_step: i64,
    pub failures: i64,
    pub locked_until: i64,
}

/// An Ed25519 key pair of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// `jwt` or `checkpoint`.
    pub purpose: String,
    pub public_key: Vec<u8>,
    pub private_wrapped: Vec<u8>,
    pub active: bool,
    pub created_at: i64,
}

/// Everything written on first start, in one transaction.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub keys: Vec<SigningKeyRecord>,
    pub admin: PrincipalRecord,
    pub admin_mfa: MfaRecord,
    pub policy: Vec<PolicyRule>,
}

/// Persistent state of the gateway.
///
/// Contract, for every implementation: each method is atomic; names are unique (a duplicate
/// is [`Error::Conflict`]); [`accept_mfa_step`](Self::accept_mfa_step) and
/// [`replace_policy`](Self::replace_policy) are compare-and-set operations that stay correct
/// with many gateway replicas on one database.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes the first-start state unless the store is initialized already; returns whether
    /// it did.
    async fn initialize(&self, init: &Bootstrap) -> Result<bool>;
    async fn is_initialized(&self) -> Result<bool>;

    /// Adds a principal; [`Error::Conflict`] if the name is taken.
    async fn create_principal(&self, p: &PrincipalRecord) -> Result<()>;
    async fn principal_by_name(&self, name: &str) -> Result<Option<PrincipalRecord>>;
    async fn principal_by_id(&self, id: &str) -> Result<Option<PrincipalRecord>>;
    /// Principals ordered by name, at most `limit`.
    async fn list_principals(&self, limit: u32) -> Result<Vec<PrincipalRecord>>;
    async fn set_secret_hash(&self, id: &str, hash: &str) -> Result<()>;
    /// Returns false when there is no such principal.
    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool>;
    /// Erases an account's identifying credentials: its name becomes `name` (an erased
    /// subject's pseudonym) and its password hash an unusable marker — neither the clear
    /// identifier nor the old hash stays in the row. False when there is no such principal.
    async fn erase_principal(&self, id: &str, name: &str) -> Result<bool>;
    /// Removes the bytes of deleted and overwritten rows from the database's files (SQLite:
    /// `secure_delete` zeroes them in place, and the write-ahead log, which still holds the
    /// old pages, is checkpointed and truncated; PostgreSQL: the account tables are
    /// rewritten).
    async fn scrub(&self) -> Result<()>;
    /// The store's files on this host, to scan for residue (none on PostgreSQL).
    fn files(&self) -> Vec<std::path::PathBuf>;
    /// Reserves one login attempt on the account from `source` (a client address, or `*` for
    /// the account as a whole): counts it as a failure in advance; from the `throttle.free`-th
    /// failure on, the next attempt waits a delay that doubles with each further failure, up
    /// to `throttle.max`. Returns false, reserving nothing, while that delay runs at `now`.
    /// One atomic statement, so concurrent attempts can never exceed the budget.
    async fn login_attempt(
        &self,
        id: &str,
        source: &str,
        now: i64,
        throttle: Throttle,
    ) -> Result<bool>;
    /// The reserved attempt succeeded: clears the counts of the source and of the account.
    async fn login_succeeded(&self, id: &str, source: &str) -> Result<()>;
    /// Clears every login throttle and lock of the account, and its second factor's lock;
    /// false when there is no such principal.
    async fn unlock(&self, id: &str) -> Result<bool>;

    /// Sets a new, unconfirmed factor, replacing an unconfirmed one; [`Error::Conflict`] when
    /// a confirmed factor exists.
    async fn begin_mfa(&self, m: &MfaRecord, now: i64) -> Result<()>;
    async fn mfa(&self, principal_id: &str) -> Result<Option<MfaRecord>>;
    /// Confirms the pending factor whose wrapped seed is `secret_wrapped` (the one whose code
    /// was just checked); false when it was replaced or confirmed meanwhile.
    async fn confirm_mfa(&self, principal_id: &str, secret_wrapped: &[u8]) -> Result<bool>;
    /// Accepts time step `step` if it is later than the last accepted one, and clears the
    /// failure count and lock; false means the code was already used.
    async fn accept_mfa_step(&self, principal_id: &str, step: i64) -> Result<bool>;
    /// Reserves one code attempt, as [`login_attempt`](Self::login_attempt) does for logins.
    async fn mfa_attempt(
        &self,
        principal_id: &str,
        now: i64,
        max_failures: u32,
        lock_until: i64,
    ) -> Result<bool>;

    async fn put_signing_key(&self, key: &SigningKeyRecord) -> Result<()>;
    /// Replaces a signing key's wrapping if it is still `old` (KEK rotation).
    async fn rewrap_signing_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool>;
    /// Every second factor, by principal id, at most `limit` after `after`.
    async fn mfa_factors(&self, after: &str, limit: u32) -> Result<Vec<MfaRecord>>;
    /// Replaces a TOTP seed's wrapping if it is still `old` (KEK rotation).
    async fn rewrap_mfa(&self, principal_id: &str, old: &[u8], new: &[u8]) -> Result<bool>;
    /// Keys of one purpose, newest first.
    async fn signing_keys(&self, purpose: &str) -> Result<Vec<SigningKeyRecord>>;

    /// Stores version `version` of a dataset contract (JSON); [`Error::Conflict`] if that
    /// version exists.
    async fn put_contract(&self, name: &str, version: u32, contract: &str, now: i64) -> Result<()>;
    /// The latest version of every contract: `(name, version, JSON)`.
    async fn contracts(&self) -> Result<Vec<(String, u32, String)>>;

    /// Claims an ingest request's idempotency key for `principal_id` (the request's digest
    /// `digest`), unless it was claimed before; keys older than `expire_before` are removed
    /// first.
    async fn claim_ingest(
        &self,
        principal_id: &str,
        key: &str,
        digest: &[u8],
        now: i64,
        expire_before: i64,
    ) -> Result<IngestClaim>;
    /// Records the answer of a claimed ingest request.
    async fn finish_ingest(
        &self,
        principal_id: &str,
        key: &str,
        status: u16,
        response: &str,
    ) -> Result<()>;
    /// Releases a claim whose request failed (nothing was acknowledged): a retry runs anew.
    async fn release_ingest(&self, principal_id: &str, key: &str) -> Result<()>;

    /// The policy version and rules.
    async fn policy(&self) -> Result<(i64, Vec<PolicyRule>)>;
    /// Replaces the rules if the version is still `expected_version`; returns the new
    /// version, or [`Error::Conflict`] when someone else changed the policy first.
    async fn replace_policy(&self, expected_version: i64, rules: &[PolicyRule]) -> Result<i64>;
}

/// [`StateStore`] over SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStateStore {
    db: Db,
}

impl SqlStateStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The principal whose unique `column` (a constant of this module) is `value`.
    async fn principal_where(&self, column: &str, value: &str) -> Result<Option<PrincipalRecord>> {
        sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE {column} = $1"
        ))
        .bind(value.to_owned())
        .fetch_optional(self.db.pool())
        .await?
        .as_ref()
        .map(principal)
        .transpose()
    }
}

const PRINCIPAL_COLUMNS: &str =
    "id, kind, name, secret_hash, roles, disabled, failed_logins, locked_until, must_change_password, created_at, credentials_epoch";
const MFA_COLUMNS: &str =
    "principal_id, secret_wrapped, confirmed, last_step, failures, locked_until";
const KEY_COLUMNS: &str = "kid, purpose, public_key, private_wrapped, active, created_at";

fn principal(r: &AnyRow) -> Result<PrincipalRecord> {
    let kind: String = r.try_get("kind")?;
    let roles: String = r.try_get("roles")?;
    Ok(PrincipalRecord {
        id: r.try_get("id")?,
        kind: PrincipalKind::parse(&kind)
            .ok_or_else(|| Error::Corrupt(format!("principal kind {kind:?}")))?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        failed_logins: r.try_get("failed_logins")?,
        locked_until: r.try_get("locked_until")?,
        must_change_password: r.try_get::<i64, _>("must_change_password")? != 0,
        created_at: r.try_get("created_at")?,
        credentials_epoch: r.try_get("credentials_epoch")?,
    })
}

fn mfa(r: &AnyRow) -> Result<MfaRecord> {
    Ok(MfaRecord {
        principal_id: r.try_get("principal_id")?,
        secret_wrapped: r.try_get("secret_wrapped")?,
        confirmed: r.try_get::<i64, _>("confirmed")? != 0,
        last_step: r.try_get("last_step")?,
        failures: r.try_get("failures")?,
        locked_until: r.try_get("locked_until")?,
    })
}

fn signing_key(r: &AnyRow) -> Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: r.try_get("kid")?,
        purpose: r.try_get("purpose")?,
        public_key: r.try_get("public_key")?,
        private_wrapped: r.try_get("private_wrapped")?,
        active: r.try_get::<i64, _>("active")? != 0,
        created_at: r.try_get("created_at")?,
    })
}

/// Reserves one attempt on a row of `table` with a failure counter `count` and a
/// `locked_until`: counts it as a failure in advance and, at `max_failures`, locks until
/// `lock_until` and resets the count — unless the row is locked at `now`. One statement, so
/// concurrent attempts cannot exceed the budget. Table and column names are this module's
/// constants, never input.
#[allow(clippy::too_many_arguments)]
async fn reserve_attempt(
    db: &Db,
    table: &str,
    key: &str,
    count: &str,
    id: &str,
    now: i64,
    max_failures: u32,
    lock_until: i64,
) -> Result<bool> {
    let n = sqlx::query(&format!(
        "UPDATE {table} SET \
           locked_until = CASE WHEN {count} + 1 >= $1 THEN $2 ELSE locked_until END, \
           {count} = CASE WHEN {count} + 1 >= $1 THEN 0 ELSE {count} + 1 END \
         WHERE {key} = $3 AND locked_until <= $4"
    ))
    .bind(i64::from(max_failures))
    .bind(lock_until)
    .bind(id.to_owned())
    .bind(now)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(n == 1)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// One INSERT, shared by the pool and the transaction paths.
macro_rules! insert_principal {
    ($exec:expr, $p:expr) => {
        sqlx::query(&format!(
            "INSERT INTO principals ({PRINCIPAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind($p.id.clone())
        .bind($p.kind.as_str())
        .bind($p.name.clone())
        .bind($p.secret_hash.clone())
        .bind($p.roles.join(","))
        .bind(i64::from($p.disabled))
        .bind($p.failed_logins)
        .bind($p.locked_until)
        .bind(i64::from($p.must_change_password))
        .bind($p.created_at)
        .bind($p.credentials_epoch)
        .execute($exec)
    };
}

macro_rules! insert_key {
    ($exec:expr, $k:expr) => {
        sqlx::query(&format!(
            "INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind($k.kid.clone())
        .bind($k.purpose.clone())
        .bind($k.public_key.clone())
        .bind($k.private_wrapped.clone())
        .bind(i64::from($k.active))
        .bind($k.created_at)
        .execute($exec)
    };
}

#[async_trait]
impl StateStore for SqlStateStore {
    async fn initialize(&self, init: &Bootstrap) -> Result<bool> {
        let mut tx = self.db.pool().begin().await?;
        let claimed = sqlx::query("INSERT INTO meta (key, value) VALUES ('initialized', '1') ON CONFLICT (key) DO NOTHING")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            return Ok(false);
        }
        for k in &init.keys {
            insert_key!(&mut *tx, k).await?;
        }
        insert_principal!(&mut *tx, init.admin).await?;
        let m = &init.admin_mfa;
        sqlx::query(&format!("INSERT INTO mfa_factors ({MFA_COLUMNS}, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(m.principal_id.clone())
            .bind(m.secret_wrapped.clone())
            .bind(i64::from(m.confirmed))
            .bind(m.last_step)
            .bind(m.failures)
            .bind(m.locked_until)
            .bind(init.admin.created_at)
            .execute(&mut *tx)
            .await?;
        for r in &init.policy {
            sqlx::query("INSERT INTO policy_rules (ptype, rule) VALUES ($1, $2)")
                .bind(r.ptype.clone())
                .bind(r.values.join(", "))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE policy_version SET version = 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn is_initialized(&self) -> Result<bool> {
        Ok(
            sqlx::query("SELECT value FROM meta WHERE key = 'initialized'")
                .fetch_optional(self.db.pool())
                .await?
                .is_some(),
        )
    }

    async fn create_principal(&self, p: &PrincipalRecord) -> Result<()> {
        match insert_principal!(self.db.pool(), p).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict("that name is taken".to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn principal_by_name(&self, name: &str) -> Result<Option<PrincipalRecord>> {
        self.principal_where("name", name).await
    }

    async fn principal_by_id(&self, id: &str) -> Result<Option<PrincipalRecord>> {
        self.principal_where("id", id).await
    }

    async fn list_principals(&self, limit: u32) -> Result<Vec<PrincipalRecord>> {
        sqlx::query(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals ORDER BY name LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(principal)
        .collect()
    }

    async fn set_secret_hash(&self, id: &str, hash: &str) -> Result<()> {
        sqlx::query(
            "UPDATE principals SET secret_hash = $1, must_change_password = 0, \
             credentials_epoch = credentials_epoch + 1 WHERE id = $2",
        )
        .bind(hash.to_owned())
        .bind(id.to_owned())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn scrub(&self) -> Result<()> {
        self.db
            .scrub(&["principals", "mfa_factors", "login_throttle"])
            .await?;
        Ok(())
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        self.db.files()
    }

    async fn erase_principal(&self, id: &str, name: &str) -> Result<bool> {
        let n =
            sqlx::query("UPDATE principals SET name = $1, secret_hash = '!erased' WHERE id = $2")
                .bind(name.to_owned())
                .bind(id.to_owned())
                .execute(self.db.pool())
                .await?
                .rows_affected();
        Ok(n == 1)
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<bool> {
        let n = sqlx::query("UPDATE principals SET disabled = $1 WHERE id = $2")
            .bind(i64::from(disabled))
            .bind(id.to_owned())
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn login_attempt(
        &self,
        id: &str,
        source: &str,
        now: i64,
        throttle: Throttle,
    ) -> Result<bool> {
        let least = match self.db.backend() {
            Backend::Sqlite => "min",
            Backend::Postgres => "LEAST",
        };
        let next = format!(
            "CASE WHEN login_throttle.failures + 1 >= $5 THEN {least}($7, \
               CASE WHEN login_throttle.delay = 0 THEN $6 ELSE login_throttle.delay * 2 END) \
             ELSE 0 END"
        );
        let first = if throttle.free <= 1 {
            throttle.first.min(throttle.max)
        } else {
            0
        };
        let n = sqlx::query(&format!(
            "INSERT INTO login_throttle (principal_id, source, failures, delay, blocked_until) \
             VALUES ($1, $2, 1, $3, $4 + $3) \
             ON CONFLICT (principal_id, source) DO UPDATE SET \
               failures = login_throttle.failures + 1, delay = {next}, \
               blocked_until = $4 + {next} \
             WHERE login_throttle.blocked_until <= $4"
        ))
        .bind(id.to_owned())
        .bind(source.to_owned())
        .bind(first)
        .bind(now)
        .bind(i64::from(throttle.free))
        .bind(throttle.first)
        .bind(throttle.max)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn login_succeeded(&self, id: &str, source: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_throttle WHERE principal_id = $1 AND source IN ($2, '*')")
            .bind(id.to_owned())
            .bind(source.to_owned())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    async fn unlock(&self, id: &str) -> Result<bool> {
        let mut tx = self.db.pool().begin().await?;
        let n =
            sqlx::query("UPDATE principals SET failed_logins = 0, locked_until = 0 WHERE id = $1")
                .bind(id.to_owned())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        sqlx::query("DELETE FROM login_throttle WHERE principal_id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE mfa_factors SET failures = 0, locked_until = 0 WHERE principal_id = $1",
        )
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn begin_mfa(&self, m: &MfaRecord, now: i64) -> Result<()> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query("DELETE FROM mfa_factors WHERE principal_id = $1 AND confirmed = 0")
            .bind(m.principal_id.clone())
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO mfa_factors ({MFA_COLUMNS}, created_at) VALUES ($1, $2, 0, -1, 0, 0, $3) \
             ON CONFLICT (principal_id) DO NOTHING"
        ))
        .bind(m.principal_id.clone())
        .bind(m.secret_wrapped.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::Conflict(
                "a confirmed second factor is already enrolled".to_owned(),
            ));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mfa(&self, principal_id: &str) -> Result<Option<MfaRecord>> {
        sqlx::query(&format!(
            "SELECT {MFA_COLUMNS} FROM mfa_factors WHERE principal_id = $1"
        ))
        .bind(principal_id.to_owned())
        .fetch_optional(self.db.pool())
        .await?
        .as_ref()
        .map(mfa)
        .transpose()
    }

    async fn confirm_mfa(&self, principal_id: &str, secret_wrapped: &[u8]) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE mfa_factors SET confirmed = 1 WHERE principal_id = $1 AND confirmed = 0 AND secret_wrapped = $2",
        )
        .bind(principal_id.to_owned())
        .bind(secret_wrapped.to_vec())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn accept_mfa_step(&self, principal_id: &str, step: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE mfa_factors SET last_step = $1, failures = 0, locked_until = 0 \
             WHERE principal_id = $2 AND last_step < $1",
        )
        .bind(step)
        .bind(principal_id.to_owned())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn mfa_attempt(
        &self,
        principal_id: &str,
        now: i64,
        max_failures: u32,
        lock_until: i64,
    ) -> Result<bool> {
        reserve_attempt(
            &self.db,
            "mfa_factors",
            "principal_id",
            "failures",
            principal_id,
            now,
            max_failures,
            lock_until,
        )
        .await
    }

    async fn put_signing_key(&self, key: &SigningKeyRecord) -> Result<()> {
        insert_key!(self.db.pool(), key).await?;
        Ok(())
    }

    async fn rewrap_signing_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE signing_keys SET private_wrapped = $1 WHERE kid = $2 AND private_wrapped = $3",
        )
        .bind(new.to_vec())
        .bind(kid.to_owned())
        .bind(old.to_vec())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn mfa_factors(&self, after: &str, limit: u32) -> Result<Vec<MfaRecord>> {
        sqlx::query(&format!(
            "SELECT {MFA_COLUMNS} FROM mfa_factors WHERE principal_id > $1 ORDER BY principal_id LIMIT $2"
        ))
        .bind(after.to_owned())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(mfa)
        .collect()
    }

    async fn rewrap_mfa(&self, principal_id: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let n = sqlx::query("UPDATE mfa_factors SET secret_wrapped = $1 WHERE principal_id = $2 AND secret_wrapped = $3")
            .bind(new.to_vec())
            .bind(principal_id.to_owned())
            .bind(old.to_vec())
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn signing_keys(&self, purpose: &str) -> Result<Vec<SigningKeyRecord>> {
        sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE purpose = $1 ORDER BY created_at DESC, kid"))
            .bind(purpose.to_owned())
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(signing_key)
            .collect()
    }

    async fn put_contract(&self, name: &str, version: u32, contract: &str, now: i64) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO dataset_contracts (name, version, contract, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name.to_owned())
        .bind(i64::from(version))
        .bind(contract.to_owned())
        .bind(now)
        .execute(self.db.pool())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!(
                "version {version} of this contract exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn claim_ingest(
        &self,
        principal_id: &str,
        key: &str,
        digest: &[u8],
        now: i64,
        expire_before: i64,
    ) -> Result<IngestClaim> {
        sqlx::query("DELETE FROM ingest_requests WHERE created_at < $1")
            .bind(expire_before)
            .execute(self.db.pool())
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO ingest_requests (principal_id, idempotency_key, digest, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (principal_id, idempotency_key) DO NOTHING",
        )
        .bind(principal_id.to_owned())
        .bind(key.to_owned())
        .bind(digest.to_vec())
        .bind(now)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(IngestClaim::New);
        }
        let row = sqlx::query(
            "SELECT digest, status, response FROM ingest_requests \
             WHERE principal_id = $1 AND idempotency_key = $2",
        )
        .bind(principal_id.to_owned())
        .bind(key.to_owned())
        .fetch_optional(self.db.pool())
        .await?;
        // Released between the insert and the read: the retry's caller tries again.
        let Some(row) = row else {
            return Ok(IngestClaim::InProgress);
        };
        let stored: Vec<u8> = row.try_get("digest")?;
        if stored != digest {
            return Ok(IngestClaim::Mismatch);
        }
        Ok(
            match (
                row.try_get::<Option<i64>, _>("status")?,
                row.try_get::<Option<String>, _>("response")?,
            ) {
                (Some(status), Some(response)) => IngestClaim::Answered {
                    status: u16::try_from(status)
                        .map_err(|_| Error::Corrupt(format!("ingest status {status}")))?,
                    response,
                },
                _ => IngestClaim::InProgress,
            },
        )
    }

    async fn finish_ingest(
        &self,
        principal_id: &str,
        key: &str,
        status: u16,
        response: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE ingest_requests SET status = $1, response = $2 \
             WHERE principal_id = $3 AND idempotency_key = $4",
        )
        .bind(i64::from(status))
        .bind(response.to_owned())
        .bind(principal_id.to_owned())
        .bind(key.to_owned())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn release_ingest(&self, principal_id: &str, key: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM ingest_requests WHERE principal_id = $1 AND idempotency_key = $2 \
             AND status IS NULL",
        )
        .bind(principal_id.to_owned())
        .bind(key.to_owned())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn contracts(&self) -> Result<Vec<(String, u32, String)>> {
        sqlx::query(
            "SELECT c.name, c.version, c.contract FROM dataset_contracts c \
             WHERE c.version = (SELECT MAX(version) FROM dataset_contracts m WHERE m.name = c.name) ORDER BY c.name",
        )
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| {
            let version: i64 = r.try_get("version")?;
            Ok((
                r.try_get("name")?,
                u32::try_from(version).map_err(|_| Error::Corrupt(format!("contract version {version}")))?,
                r.try_get("contract")?,
            ))
        })
        .collect()
    }

    async fn policy(&self) -> Result<(i64, Vec<PolicyRule>)> {
        let version: i64 = sqlx::query("SELECT version FROM policy_version WHERE id = 1")
            .fetch_one(self.db.pool())
            .await?
            .try_get("version")?;
        let rules = sqlx::query("SELECT ptype, rule FROM policy_rules ORDER BY ptype DESC, rule")
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(|r| {
                let rule: String = r.try_get("rule")?;
                Ok(PolicyRule {
                    ptype: r.try_get("ptype")?,
                    values: rule.split(',').map(|v| v.trim().to_owned()).collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((version, rules))
    }

    async fn replace_policy(&self, expected_version: i64, rules: &[PolicyRule]) -> Result<i64> {
        let mut tx = self.db.pool().begin().await?;
        let bumped = sqlx::query(
            "UPDATE policy_version SET version = version + 1 WHERE id = 1 AND version = $1",
        )
        .bind(expected_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if bumped == 0 {
            return Err(Error::Conflict(
                "the policy changed since it was read; read it again".to_owned(),
            ));
        }
        sqlx::query("DELETE FROM policy_rules")
            .execute(&mut *tx)
            .await?;
        for r in rules {
            sqlx::query("INSERT INTO policy_rules (ptype, rule) VALUES ($1, $2) ON CONFLICT (ptype, rule) DO NOTHING")
                .bind(r.ptype.clone())
                .bind(r.values.join(", "))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(expected_version + 1)
    }
}
