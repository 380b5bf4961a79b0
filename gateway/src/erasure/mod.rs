//! Erasure (GDPR Art. 17) as a persisted, resumable job per data subject.
//!
//! A request is stored as a job (`erasure_jobs`) and run by the erasure worker of any replica
//! that holds its lease. The job is a list of steps, each idempotent; after each one the job
//! records what it did and which step is next, so a crash anywhere resumes at the step that
//! was running, and a step run twice changes nothing the second time:
//!
//! 1. `shred` — destroy the subject's data key. From here on nothing of the subject can be
//!    decrypted (stream history, backups and old lake files included) and the edge refuses
//!    the subject's new records (the concurrency rule: *reject*; records already in flight
//!    are caught by the verification scan, which erases again). This runs first rather than
//!    after the deletes: the earlier the key goes, the less a crash or a slow store leaves
//!    readable, and the tombstone fences every replica's ingest at once.
//! 2. `collect` — per dataset: the rows and documents the subject has, the table version, and
//!    the vault tokens in its rows (tokens only: nothing clear).
//! 3. `lake` — Delta `DELETE` on `subject_bucket` and `subject_ref` (one partition read).
//! 4. `documents` — `delete_many` on `subject_ref`.
//! 5. `stream` — the subject's key erased from each dataset topic (a tombstone on Kafka).
//! 6. `vault` — the tokens only the subject's records carry removed, with its references
//!    (the vault records at the edge which subject's record carries each token; a card shared
//!    with another subject keeps its token).
//! 7. `account` — the subject's own login account, if it has one, is renamed to its
//!    pseudonym: the identifier leaves the state store, the account can still fetch its job
//!    and receipt. Then the state database's files are scrubbed of what the deletes and
//!    overwrites left (SQLite: freed content is zeroed and the write-ahead log checkpointed
//!    and truncated; PostgreSQL: the account tables rewritten), and on SQLite the files are
//!    scanned byte by byte for the former name and password hash.
//! 8. `vacuum` — once `erasure.vacuum_retention` has passed since the lake step, the files the
//!    delete rewrote are removed (time travel to before the delete fails from then on), and
//!    each table's log is checkpointed and its earlier commits removed: the delete's commit
//!    names the subject in its predicate.
//! 9. `verify` — every store must return zero rows of the subject, the lake's log and the
//!    subject's bucket must not hold its pseudonym in any byte, and the key must be gone;
//!    rows or bytes found send the job back to `collect` (a new pass).
//! 10. `receipt` — the completion is audited; the receipt (counts, Delta versions, the
//!     audit event's sequence number) is signed and stored. Asking again returns the same
//!     receipt.
//!
//! A legal hold placed after the request stops the job before its next destructive step
//! (state `held`, audited) until released. A worker renews its lease while a step runs; one
//! that died leaves the job to any replica once `erasure.lease` has passed.
//!
//! A failing step is retried with exponential backoff; the job shows the attempts and the
//! error kind, and `warden_erasure_step_failures` counts them. Deadlines: `due = received +
//! erasure.deadline` (30 days), extendable with a recorded reason.

pub mod cli;
pub mod receipt;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{Any, Row};
use tracing::{error, info, warn};
use warden_audit::{Db, NewEvent};
use warden_policy::contract::Contract;
use warden_policy::keyring::SCOPE_SUBJECT;
use warden_sdk::Decision;

use crate::error::{Error, Result};
use crate::state::AppState;
use receipt::{DatasetReceipt, Receipt, Verification};

/// The steps, in order.
pub const STEPS: &[&str] = &[
    "shred",
    "collect",
    "lake",
    "documents",
    "stream",
    "vault",
    "account",
    "vacuum",
    "verify",
    "receipt",
];

/// Fault injection for tests: the process exits right after recording the named step.
pub const CRASH_ENV: &str = "WARDEN_CRASH_AFTER_ERASURE_STEP";

/// Erase passes before the job gives up for this attempt (rows keep arriving).
const MAX_PASSES: i64 = 5;
/// How long a worker owns a job without renewing (it renews every third of it while a
/// step runs; a worker that died leaves the job to another after this long).
const LEASE: Duration = Duration::from_secs(30);
/// Retry backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// What the finished steps did, per dataset. A step records each dataset as it finishes
/// it (`*_pass`), so a crash in the middle resumes with the datasets left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetProgress {
    /// Rows and documents the subject had when this pass's `collect` looked.
    pub found_lake: u64,
    pub found_documents: u64,
    /// Totals over the passes: what was there, or what the delete removed if more arrived.
    pub lake_rows: u64,
    pub lake_version_before: Option<u64>,
    pub lake_version_after: Option<u64>,
    pub lake_files_removed: u64,
    pub lake_bytes_removed: u64,
    pub documents: u64,
    pub stream_topic: String,
    pub stream_erased: u64,
    pub tokens_purged: u64,
    pub tokens_shared: u64,
    /// The pass in which each step last finished this dataset.
    pub lake_pass: i64,
    pub documents_pass: i64,
    pub stream_pass: i64,
    pub vault_pass: i64,
}

impl DatasetProgress {
    /// The pass in which a per-dataset step last finished this dataset.
    fn pass_of(&mut self, step: &str) -> &mut i64 {
        match step {
            "lake" => &mut self.lake_pass,
            "documents" => &mut self.documents_pass,
            "stream" => &mut self.stream_pass,
            _ => &mut self.vault_pass,
        }
    }
}

/// What the job has done so far (stored as JSON in the job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    /// The subject's own login account (a principal id), found when the request came.
    pub account: Option<String>,
    /// Whether this job renamed it to the subject's pseudonym.
    pub account_renamed: bool,
    pub key_destroyed: bool,
    pub datasets: BTreeMap<String, DatasetProgress>,
    /// When the lake step finished (Unix microseconds): the vacuum waits for the retention.
    pub lake_done_at: Option<i64>,
    pub lake_files_vacuumed: u64,
    /// Commit files removed from the lakes' logs.
    pub lake_log_files_removed: u64,
    /// The byte scan of the state database's files for the account's former name and hash.
    pub state_scan: Option<receipt::Scan>,
    pub verification: Option<Verification>,
}

/// A deadline extension (Art. 12(3): by two further months, with the reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub by: String,
    pub at: i64,
    pub days: u32,
    pub reason: String,
}

/// An erasure job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub subject_ref: String,
    pub idempotency_key: Option<String>,
    pub requested_by: String,
    pub requested_as: String,
    pub state: String,
    pub step: i64,
    pub pass: i64,
    pub progress: Progress,
    pub received_at: i64,
    pub due_at: i64,
    pub extensions: Vec<Extension>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub receipt: Option<String>,
    pub completed_at: Option<i64>,
}

impl Job {
    pub fn is_open(&self) -> bool {
        self.state != "completed"
    }

    /// The job as the API shows it: state, step, per-store progress (counts only), deadline.
    pub fn view(&self, now: i64) -> Value {
        let step = usize::try_from(self.step).unwrap_or(0);
        let datasets: BTreeMap<&String, Value> = self
            .progress
            .datasets
            .iter()
            .map(|(name, d)| {
                (
                    name,
                    json!({
                        "lake_rows": d.lake_rows,
                        "lake_version_before": d.lake_version_before,
                        "lake_version_after": d.lake_version_after,
                        "documents": d.documents,
                        "stream_topic": d.stream_topic,
                        "stream_erased": d.stream_erased,
                        "tokens_purged": d.tokens_purged,
                    }),
                )
            })
            .collect();
        json!({
            "job": self.id,
            "subject_ref": self.subject_ref,
            "state": self.state,
            "step": STEPS.get(step).copied().unwrap_or("done"),
            "steps_done": STEPS[..step.min(STEPS.len())],
            "pass": self.pass,
            "progress": {
                "subject_key_destroyed": self.progress.key_destroyed,
                "subject_account_renamed": self.progress.account_renamed,
                "datasets": datasets,
                "lake_files_vacuumed": self.progress.lake_files_vacuumed,
                "verification": self.progress.verification,
            },
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": (self.is_open()).then(|| warden_policy::timefmt::micros_to_rfc3339(self.next_attempt_at)),
            "received_at": warden_policy::timefmt::micros_to_rfc3339(self.received_at),
            "due_at": warden_policy::timefmt::micros_to_rfc3339(self.due_at),
            "overdue": self.is_open() && now > self.due_at,
            "extensions": self.extensions.iter().map(|e| json!({
                "at": warden_policy::timefmt::micros_to_rfc3339(e.at), "days": e.days, "reason": e.reason,
            })).collect::<Vec<_>>(),
            "completed_at": self.completed_at.map(warden_policy::timefmt::micros_to_rfc3339),
            "receipt": self.receipt.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()),
        })
    }
}

const COLUMNS: &str = "id, subject_ref, idempotency_key, requested_by, requested_as, state, step, pass, \
     progress, received_at, due_at, extensions, attempts, last_error, next_attempt_at, receipt, completed_at";

fn job_from_row(row: &sqlx::any::AnyRow) -> Result<Job> {
    let corrupt = |what: &str| Error::Corrupt(format!("erasure job {what}"));
    Ok(Job {
        id: row.try_get("id")?,
        subject_ref: row.try_get("subject_ref")?,
        idempotency_key: row.try_get("idempotency_key")?,
        requested_by: row.try_get("requested_by")?,
        requested_as: row.try_get("requested_as")?,
        state: row.try_get("state")?,
        step: row.try_get("step")?,
        pass: row.try_get("pass")?,
        progress: serde_json::from_str(&row.try_get::<String, _>("progress")?)
            .map_err(|_| corrupt("progress"))?,
        received_at: row.try_get("received_at")?,
        due_at: row.try_get("due_at")?,
        extensions: serde_json::from_str(&row.try_get::<String, _>("extensions")?)
            .map_err(|_| corrupt("extensions"))?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        receipt: row.try_get("receipt")?,
        completed_at: row.try_get("completed_at")?,
    })
}

/// A new request, or the existing job answering it.
#[derive(Debug)]
pub enum Requested {
    Created(Job),
    Existing(Job),
}

/// An update made under a lease: it changed one row, or the lease was lost.
fn still_leased(rows: u64) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(Error::Conflict("the erasure job's lease was lost".into()))
    }
}

/// An erasure request.
#[derive(Debug, Clone, Copy)]
pub struct NewRequest<'a> {
    pub subject_ref: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// The principal asking, and as whom (`subject` or `dpo`).
    pub requested_by: &'a str,
    pub requested_as: &'a str,
    /// The subject's own login account (a principal id), if it has one.
    pub account: Option<&'a str>,
}

/// Filters of the DPO's list.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub state: Option<String>,
    pub overdue: Option<bool>,
    pub limit: u32,
}

/// The jobs and legal holds, in the state database.
#[derive(Debug, Clone)]
pub struct Jobs {
    db: Db,
    lease: Duration,
}

impl Jobs {
    pub fn new(db: Db) -> Self {
        Self { db, lease: LEASE }
    }

    /// With another lease length (tests of worker failover).
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Extends the lease `owner` holds; false when it is no longer its.
    async fn renew(&self, id: &str, owner: &str, now: i64) -> Result<bool> {
        let n = sqlx::query::<Any>(
            "UPDATE erasure_jobs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND lease_until >= $4",
        )
        .bind(now + micros(self.lease))
        .bind(id.to_owned())
        .bind(owner.to_owned())
        .bind(now)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Records progress within a step (one dataset done), while `owner` holds the lease.
    async fn save_progress(&self, job: &Job, owner: &str, now: i64) -> Result<()> {
        let n = sqlx::query::<Any>(
            "UPDATE erasure_jobs SET progress = $1, lease_until = $2, updated_at = $3 WHERE id = $4 AND lease_owner = $5",
        )
        .bind(serde_json::to_string(&job.progress).unwrap_or_default())
        .bind(now + micros(self.lease))
        .bind(now)
        .bind(job.id.clone())
        .bind(owner.to_owned())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        still_leased(n)
    }

    /// Parks a job a legal hold stops: `held`, the hold named in `last_error`, looked at
    /// again at `until`.
    async fn park(&self, job: &Job, owner: &str, why: &str, until: i64, now: i64) -> Result<()> {
        sqlx::query::<Any>(
            "UPDATE erasure_jobs SET state = 'held', last_error = $1, next_attempt_at = $2, lease_owner = NULL, \
             lease_until = NULL, updated_at = $3 WHERE id = $4 AND lease_owner = $5",
        )
        .bind(why.to_owned())
        .bind(until)
        .bind(now)
        .bind(job.id.clone())
        .bind(owner.to_owned())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Creates the job for a subject, unless one exists (one erasure per subject: a second
    /// request, by anyone, answers with the first job). An idempotency key reused by the same
    /// requester for another subject is a conflict.
    ///
    /// # Errors
    /// A database failure, or the conflict.
    pub async fn request(
        &self,
        asked: &NewRequest<'_>,
        now: i64,
        deadline: Duration,
    ) -> Result<Requested> {
        let NewRequest {
            subject_ref,
            idempotency_key,
            requested_by,
            requested_as,
            account,
        } = *asked;
        if let Some(job) = self
            .by_key(requested_by, idempotency_key, subject_ref)
            .await?
        {
            return Ok(Requested::Existing(job));
        }
        if let Some(job) = self.by_subject(subject_ref).await? {
            return Ok(Requested::Existing(job));
        }
        let id = format!("er_{}", uuid::Uuid::new_v4().simple());
        let inserted = sqlx::query::<Any>(
            "INSERT INTO erasure_jobs (id, subject_ref, idempotency_key, requested_by, requested_as, state, step, pass, \
             progress, received_at, due_at, extensions, attempts, last_error, next_attempt_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, 1, $8, $6, $7, '[]', 0, NULL, $6, $6) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id.clone())
        .bind(subject_ref.to_owned())
        .bind(idempotency_key.map(str::to_owned))
        .bind(requested_by.to_owned())
        .bind(requested_as.to_owned())
        .bind(now)
        .bind(now.saturating_add(micros(deadline)))
        .bind(
            serde_json::to_string(&Progress {
                account: account.map(str::to_owned),
                ..Progress::default()
            })
            .unwrap_or_default(),
        )
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if inserted == 0 {
            // A concurrent request won: for this subject, or with this key (for another
            // subject: a conflict).
            self.by_key(requested_by, idempotency_key, subject_ref)
                .await?;
        }
        let job = self
            .by_subject(subject_ref)
            .await?
            .ok_or_else(|| Error::Corrupt("erasure job vanished".into()))?;
        Ok(if inserted == 1 {
            Requested::Created(job)
        } else {
            Requested::Existing(job)
        })
    }

    /// The job a requester's idempotency key names; a conflict if it names another
    /// subject's.
    async fn by_key(
        &self,
        requested_by: &str,
        key: Option<&str>,
        subject_ref: &str,
    ) -> Result<Option<Job>> {
        let Some(key) = key else { return Ok(None) };
        let row = sqlx::query::<Any>(&format!(
            "SELECT {COLUMNS} FROM erasure_jobs WHERE requested_by = $1 AND idempotency_key = $2"
        ))
        .bind(requested_by.to_owned())
        .bind(key.to_owned())
        .fetch_optional(self.db.pool())
        .await?;
        let job = row.as_ref().map(job_from_row).transpose()?;
        if job.as_ref().is_some_and(|j| j.subject_ref != subject_ref) {
            return Err(Error::Conflict(
                "this Idempotency-Key was used for another subject's erasure".into(),
            ));
        }
        Ok(job)
    }

    /// # Errors
    /// A database failure or a corrupt row.
    pub async fn get(&self, id: &str) -> Result<Option<Job>> {
        let row = sqlx::query::<Any>(&format!("SELECT {COLUMNS} FROM erasure_jobs WHERE id = $1"))
            .bind(id.to_owned())
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// # Errors
    /// A database failure or a corrupt row.
    pub async fn by_subject(&self, subject_ref: &str) -> Result<Option<Job>> {
        let row = sqlx::query::<Any>(&format!(
            "SELECT {COLUMNS} FROM erasure_jobs WHERE subject_ref = $1"
        ))
        .bind(subject_ref.to_owned())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs by the DPO's filters, oldest first.
    ///
    /// # Errors
    /// A database failure or a corrupt row.
    pub async fn list(&self, filter: &ListFilter, now: i64) -> Result<Vec<Job>> {
        let mut sql = format!("SELECT {COLUMNS} FROM erasure_jobs WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(s) = &filter.state {
            args.push(json!(s));
            sql.push_str(&format!(" AND state = ${}", args.len()));
        }
        match filter.overdue {
            Some(true) => {
                args.push(json!(now));
                sql.push_str(&format!(
                    " AND state <> 'completed' AND due_at < ${}",
                    args.len()
                ));
            }
            Some(false) => {
                args.push(json!(now));
                sql.push_str(&format!(
                    " AND (state = 'completed' OR due_at >= ${})",
                    args.len()
                ));
            }
            None => {}
        }
        sql.push_str(&format!(
            " ORDER BY received_at, id LIMIT {}",
            filter.limit.clamp(1, 1000)
        ));
        let mut q = sqlx::query::<Any>(&sql);
        for a in args {
            q = match a {
                Value::String(s) => q.bind(s),
                other => q.bind(other.as_i64().unwrap_or(0)),
            };
        }
        q.fetch_all(self.db.pool())
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    /// Extends a job's deadline by `days` with a reason; the total extension is capped.
    ///
    /// # Errors
    /// No such open job, an extension past the cap, or a database failure.
    pub async fn extend(
        &self,
        id: &str,
        by: &str,
        days: u32,
        reason: &str,
        now: i64,
        max_total: Duration,
    ) -> Result<Job> {
        let job = self
            .get(id)
            .await?
            .ok_or_else(|| Error::Invalid("no such erasure job".into()))?;
        if !job.is_open() {
            return Err(Error::Conflict("the erasure is completed already".into()));
        }
        let total: u64 = job
            .extensions
            .iter()
            .map(|e| u64::from(e.days))
            .sum::<u64>()
            + u64::from(days);
        if total * 86_400 > max_total.as_secs() {
            return Err(Error::Invalid(format!(
                "days: the deadline may be extended by at most {} days in all",
                max_total.as_secs() / 86_400
            )));
        }
        let mut extensions = job.extensions.clone();
        extensions.push(Extension {
            by: by.to_owned(),
            at: now,
            days,
            reason: reason.to_owned(),
        });
        let n = sqlx::query::<Any>(
            "UPDATE erasure_jobs SET due_at = $1, extensions = $2, updated_at = $3 WHERE id = $4 AND due_at = $5",
        )
        .bind(job.due_at + i64::from(days) * 86_400_000_000)
        .bind(serde_json::to_string(&extensions).unwrap_or_default())
        .bind(now)
        .bind(id.to_owned())
        .bind(job.due_at)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if n != 1 {
            return Err(Error::Conflict(
                "the deadline changed meanwhile; try again".into(),
            ));
        }
        self.get(id)
            .await?
            .ok_or_else(|| Error::Corrupt("erasure job vanished".into()))
    }

    /// Claims one due job for `owner` (a lease, so one worker runs it at a time).
    async fn claim(&self, owner: &str, now: i64) -> Result<Option<Job>> {
        let ids: Vec<String> = sqlx::query::<Any>(
            "SELECT id FROM erasure_jobs WHERE state <> 'completed' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) ORDER BY next_attempt_at LIMIT 8",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
        for id in ids {
            let n = sqlx::query::<Any>(
                "UPDATE erasure_jobs SET lease_owner = $1, lease_until = $2, state = 'running', updated_at = $3 \
                 WHERE id = $4 AND state <> 'completed' AND (lease_until IS NULL OR lease_until < $3)",
            )
            .bind(owner.to_owned())
            .bind(now + micros(self.lease))
            .bind(now)
            .bind(id.clone())
            .execute(self.db.pool())
            .await?
            .rows_affected();
            if n == 1 {
                return self.get(&id).await;
            }
        }
        Ok(None)
    }

    /// Records a finished step (and the next one), while `owner` holds the lease.
    async fn advance(&self, job: &Job, owner: &str, now: i64) -> Result<()> {
        let n = sqlx::query::<Any>(
            "UPDATE erasure_jobs SET step = $1, pass = $2, progress = $3, state = $4, attempts = 0, last_error = NULL, \
             next_attempt_at = $5, lease_until = $6, receipt = $7, completed_at = $8, updated_at = $9 \
             WHERE id = $10 AND lease_owner = $11",
        )
        .bind(job.step)
        .bind(job.pass)
        .bind(serde_json::to_string(&job.progress).unwrap_or_default())
        .bind(job.state.clone())
        .bind(job.next_attempt_at)
        .bind(now + micros(self.lease))
        .bind(job.receipt.clone())
        .bind(job.completed_at)
        .bind(now)
        .bind(job.id.clone())
        .bind(owner.to_owned())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        still_leased(n)
    }

    /// Records a failed attempt and when to try again; releases the lease.
    async fn failed(&self, job: &Job, owner: &str, error: &str, now: i64) -> Result<i64> {
        let attempts = job.attempts + 1;
        let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
        let backoff = BACKOFF_MIN
            .saturating_mul(2u32.saturating_pow(exp))
            .min(BACKOFF_MAX);
        let next = now + micros(backoff);
        sqlx::query::<Any>(
            "UPDATE erasure_jobs SET state = 'pending', attempts = $1, last_error = $2, next_attempt_at = $3, \
             lease_owner = NULL, lease_until = NULL, updated_at = $4 WHERE id = $5 AND lease_owner = $6",
        )
        .bind(attempts)
        .bind(error.to_owned())
        .bind(next)
        .bind(now)
        .bind(job.id.clone())
        .bind(owner.to_owned())
        .execute(self.db.pool())
        .await?;
        Ok(next)
    }

    /// Releases a job in `state` until `until` (a wait for the vacuum's retention, or a
    /// worker stopping early).
    async fn wait(&self, job: &Job, owner: &str, state: &str, until: i64, now: i64) -> Result<()> {
        sqlx::query::<Any>(
            "UPDATE erasure_jobs SET state = $5, next_attempt_at = $1, lease_owner = NULL, lease_until = NULL, \
             updated_at = $2 WHERE id = $3 AND lease_owner = $4",
        )
        .bind(until)
        .bind(now)
        .bind(job.id.clone())
        .bind(owner.to_owned())
        .bind(state.to_owned())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Open jobs by state, and the received time of the oldest open one and the earliest
    /// due time (for the metrics).
    ///
    /// # Errors
    /// A database failure.
    pub async fn open_summary(&self) -> Result<(BTreeMap<String, i64>, Option<i64>, Option<i64>)> {
        let rows = sqlx::query::<Any>(
            "SELECT state, COUNT(*), MIN(received_at), MIN(due_at) FROM erasure_jobs WHERE state <> 'completed' GROUP BY state",
        )
        .fetch_all(self.db.pool())
        .await?;
        let mut by_state = BTreeMap::new();
        let (mut oldest, mut due): (Option<i64>, Option<i64>) = (None, None);
        for r in rows {
            by_state.insert(r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?);
            let received: i64 = r.try_get(2)?;
            let d: i64 = r.try_get(3)?;
            oldest = Some(oldest.map_or(received, |o| o.min(received)));
            due = Some(due.map_or(d, |o| o.min(d)));
        }
        Ok((by_state, oldest, due))
    }

    /// Places a legal hold on a dataset or a subject.
    ///
    /// # Errors
    /// A database failure.
    pub async fn hold(
        &self,
        scope: &str,
        target: &str,
        reason: &str,
        by: &str,
        now: i64,
    ) -> Result<String> {
        let id = format!("hold_{}", uuid::Uuid::new_v4().simple());
        sqlx::query::<Any>(
            "INSERT INTO legal_holds (id, scope, target, reason, placed_by, placed_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.clone())
        .bind(scope.to_owned())
        .bind(target.to_owned())
        .bind(reason.to_owned())
        .bind(by.to_owned())
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(id)
    }

    /// Releases a hold; whether one was active.
    ///
    /// # Errors
    /// A database failure.
    pub async fn release(&self, id: &str, by: &str, now: i64) -> Result<bool> {
        let n = sqlx::query::<Any>(
            "UPDATE legal_holds SET released_at = $1, released_by = $2 WHERE id = $3 AND released_at IS NULL",
        )
        .bind(now)
        .bind(by.to_owned())
        .bind(id.to_owned())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Active holds: `(id, scope, target, reason, placed_at)`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn holds(&self) -> Result<Vec<(String, String, String, String, i64)>> {
        let rows = sqlx::query::<Any>(
            "SELECT id, scope, target, reason, placed_at FROM legal_holds WHERE released_at IS NULL ORDER BY placed_at, id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }
}

/// Why an erasure is refused: the active legal holds covering the subject or a dataset
/// that holds its data (`(scope, target, reason)`), none when it may go ahead.
///
/// # Errors
/// A database or store failure.
pub async fn holds_against(
    app: &AppState,
    subject_ref: &str,
) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for (_, scope, target, reason, _) in app.erasures.holds().await? {
        let applies = match scope.as_str() {
            "subject" => target == subject_ref,
            "dataset" => match app.datasets.get(&target) {
                Some(contract) => {
                    app.documents
                        .count(
                            &warden_pipeline::loader::collection_spec(&contract),
                            Some(subject_ref),
                        )
                        .await?
                        > 0
                        || app.lake.count_subject(&contract, subject_ref).await? > 0
                }
                None => false,
            },
            _ => false,
        };
        if applies {
            out.push((scope, target, reason));
        }
    }
    Ok(out)
}

/// How a step ended.
enum Outcome {
    /// Go on with the next step.
    Next,
    /// Wait until this time (Unix microseconds), then run the same step again.
    WaitUntil(i64),
    /// Go back to a step (a new erase pass).
    Back(usize),
    /// A legal hold stops the job (the hold's scope and target).
    Held(String),
}

/// Runs due jobs until none is left (or `max_steps` steps ran); returns how many steps ran.
/// Called by the worker, and by tests that want the work done now.
///
/// # Errors
/// A database failure while claiming.
pub async fn run_due(app: &AppState, owner: &str, max_steps: usize) -> Result<usize> {
    let mut steps = 0;
    while steps < max_steps {
        let Some(job) = app.erasures.claim(owner, app.clock.now_micros()).await? else {
            break;
        };
        let ran = run_job(app, owner, job, max_steps - steps).await;
        if ran == 0 {
            // It failed, waits, is held, or its state could not be recorded: the next tick
            // goes on.
            break;
        }
        steps += ran;
    }
    Ok(steps)
}

/// Runs one step while renewing the job's lease; `None` when the lease was lost (another
/// worker owns the job now: this one stops).
async fn step_with_lease(
    app: &AppState,
    owner: &str,
    job: &mut Job,
    step: &str,
) -> Option<Result<Outcome>> {
    let id = job.id.clone();
    let every = app.erasures.lease / 3;
    let run = run_step(app, owner, job, step);
    tokio::pin!(run);
    loop {
        tokio::select! {
            outcome = &mut run => return Some(outcome),
            () = tokio::time::sleep(every) => {
                match app.erasures.renew(&id, owner, app.clock.now_micros()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(job = id, step, "erasure job lease lost; leaving the step to its new owner");
                        return None;
                    }
                    Err(e) => warn!(job = id, error = %e, "cannot renew an erasure job lease"),
                }
            }
        }
    }
}

/// Runs a claimed job until it completes, waits or fails (or `max_steps` steps ran); the
/// number of steps run (0 also when the job's state could not be recorded).
async fn run_job(app: &AppState, owner: &str, mut job: Job, max_steps: usize) -> usize {
    let mut ran = 0;
    loop {
        if ran >= max_steps {
            let now = app.clock.now_micros();
            if let Err(e) = app.erasures.wait(&job, owner, "pending", now, now).await {
                warn!(job = job.id, error = %e, "cannot release an erasure job");
            }
            return ran;
        }
        let Ok(index) = usize::try_from(job.step) else {
            return ran;
        };
        let Some(step) = STEPS.get(index).copied() else {
            return ran;
        };
        let Some(outcome) = step_with_lease(app, owner, &mut job, step).await else {
            return 0;
        };
        let now = app.clock.now_micros();
        match outcome {
            Ok(Outcome::Next) => {
                ran += 1;
                job.step += 1;
                if index + 1 == STEPS.len() {
                    job.state = "completed".into();
                    job.completed_at = Some(now);
                }
                if let Err(e) = app.erasures.advance(&job, owner, now).await {
                    warn!(job = job.id, step, error = %e, "cannot record an erasure step");
                    return 0;
                }
                app.metrics.erasure_steps(step, "done");
                info!(job = job.id, step, "erasure step done");
                crash_point(step);
                if job.state == "completed" {
                    return ran;
                }
            }
            Ok(Outcome::WaitUntil(until)) => {
                if let Err(e) = app.erasures.wait(&job, owner, "waiting", until, now).await {
                    warn!(job = job.id, error = %e, "cannot release a waiting erasure job");
                }
                return ran;
            }
            Ok(Outcome::Back(to)) => {
                ran += 1;
                job.step = i64::try_from(to).unwrap_or(0);
                job.pass += 1;
                if let Err(e) = app.erasures.advance(&job, owner, now).await {
                    warn!(job = job.id, error = %e, "cannot record an erasure pass");
                    return 0;
                }
                info!(
                    job = job.id,
                    pass = job.pass,
                    "rows arrived during the erasure, or lake files still hold the subject's \
                     pseudonym; erasing again"
                );
                if job.pass > MAX_PASSES {
                    // Rows keep coming back: go on erasing, but with backoff, visibly.
                    app.metrics.erasure_steps("verify", "failed");
                    if let Err(e) = app
                        .erasures
                        .failed(
                            &job,
                            owner,
                            "verify: the subject's rows keep arriving, or lake files keep its \
                             pseudonym; erasing again",
                            now,
                        )
                        .await
                    {
                        warn!(job = job.id, error = %e, "cannot record an erasure failure");
                    }
                    return 0;
                }
            }
            Ok(Outcome::Held(why)) => {
                if job.state != "held" {
                    held_event(app, &job, step, &why).await;
                }
                let until = now + micros(HOLD_RECHECK);
                if let Err(e) = app
                    .erasures
                    .park(&job, owner, &format!("legal hold on {why}"), until, now)
                    .await
                {
                    warn!(job = job.id, error = %e, "cannot park a held erasure job");
                }
                return 0;
            }
            Err(e) => {
                app.metrics.erasure_steps(step, "failed");
                let kind = error_kind(&e);
                error!(job = job.id, step, error = %e, "erasure step failed; retrying with backoff");
                if let Err(e) = app
                    .erasures
                    .failed(&job, owner, &format!("{step}: {kind}"), now)
                    .await
                {
                    warn!(job = job.id, error = %e, "cannot record an erasure failure");
                }
                return 0;
            }
        }
    }
}

/// How often a held job looks at its holds again.
const HOLD_RECHECK: Duration = Duration::from_secs(60);

/// Audits that a legal hold stopped a job (once per hold period).
async fn held_event(app: &AppState, job: &Job, step: &str, why: &str) {
    let event = NewEvent::new(
        app.clock.now_micros(),
        "warden".to_owned(),
        "service".to_owned(),
        "erasure.held".to_owned(),
        format!("erasure:{}", job.id),
        Decision::Deny,
    )
    .subject_ref(Some(job.subject_ref.clone()))
    .details(&json!({"job": job.id, "step": step, "hold": why}));
    if let Err(e) = app.audit.append(event).await {
        warn!(job = job.id, error = %e, "cannot audit a held erasure job");
    }
}

/// The error's kind, for the job and the API (the full error goes to the log).
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Database(_) => "state database unavailable",
        Error::Audit(_) => "audit log unavailable",
        Error::Policy(_) => "vault or key failure",
        Error::Pipeline(warden_pipeline::Error::Lake(_)) => "lake unavailable",
        Error::Pipeline(warden_pipeline::Error::Documents(_)) => "document store unavailable",
        Error::Pipeline(warden_pipeline::Error::Stream(_)) => "stream unavailable",
        Error::Pipeline(_) => "data plane failure",
        Error::Conflict(_) => "conflict",
        Error::Invalid(_) => "invalid",
        Error::Corrupt(_) => "corrupt state",
        Error::Crypto(_) => "cryptographic failure",
        Error::Config(_) => "configuration",
    }
}

fn crash_point(step: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|s| s == step) {
        eprintln!("{CRASH_ENV}={step}: dying right after the erasure step {step}");
        std::process::exit(86);
    }
}

/// Steps that remove or destroy something: a legal hold placed after the request stops them.
const DESTRUCTIVE: &[&str] = &[
    "shred",
    "lake",
    "documents",
    "stream",
    "vault",
    "account",
    "vacuum",
];

async fn run_step(app: &AppState, owner: &str, job: &mut Job, step: &str) -> Result<Outcome> {
    let sr = job.subject_ref.clone();
    let pass = job.pass;
    let datasets = app.datasets.all();
    if DESTRUCTIVE.contains(&step) {
        if let Some((scope, target, _)) = holds_against(app, &sr).await?.into_iter().next() {
            let what = if scope == "dataset" {
                format!("dataset {target}")
            } else {
                "the subject".to_owned()
            };
            return Ok(Outcome::Held(what));
        }
    }
    match step {
        "shred" => {
            let destroyed = app.keys.destroy(SCOPE_SUBJECT, &sr).await?;
            job.progress.key_destroyed |= destroyed;
        }
        "collect" => {
            for contract in &datasets {
                let found_lake = app.lake.count_subject(contract, &sr).await?;
                let version = app.lake.version(contract).await?;
                let spec = warden_pipeline::loader::collection_spec(contract);
                let found_documents = app.documents.count(&spec, Some(&sr)).await?;
                let d = job
                    .progress
                    .datasets
                    .entry(contract.name.clone())
                    .or_default();
                d.found_lake = found_lake;
                d.found_documents = found_documents;
                if d.lake_version_before.is_none() {
                    d.lake_version_before = version;
                }
            }
        }
        "lake" | "documents" | "stream" | "vault" => {
            for contract in &datasets {
                if *dataset(job, contract).pass_of(step) == pass {
                    continue;
                }
                erase_in(app, job, contract, step).await?;
                *dataset(job, contract).pass_of(step) = pass;
                app.erasures
                    .save_progress(job, owner, app.clock.now_micros())
                    .await?;
            }
            if step == "lake" {
                job.progress.lake_done_at = Some(app.clock.now_micros());
            }
        }
        "account" => {
            // The former name and hash, held only in memory until the files are scanned.
            let mut former: Option<(String, String)> = None;
            if let Some(id) = job.progress.account.clone() {
                if let Some(p) = app.store.principal_by_id(&id).await? {
                    if p.name != sr && app.store.erase_principal(&id, &sr).await? {
                        job.progress.account_renamed = true;
                        former = Some((p.name, p.secret_hash));
                    }
                }
            }
            // What the erasure's deletes and overwrites (account, documents, stream records
            // in the state database) left in free pages and the write-ahead log goes from
            // the files too. A reader holding an old snapshot makes this fail; the step is
            // retried.
            app.store.scrub().await?;
            let files = app.store.files();
            if let (Some((name, hash)), false) = (&former, files.is_empty()) {
                let needles =
                    warden_pipeline::residue::Needles::new(&[name.as_bytes(), hash.as_bytes()]);
                let scan = warden_pipeline::residue::scan_files(&files, &needles)
                    .await
                    .map_err(|e| Error::Database(sqlx::Error::Io(e)))?;
                // Kept, found or not: a second attempt no longer knows the name; the verify
                // step refuses to complete on a finding.
                job.progress.state_scan = Some(scan);
            }
        }
        "vacuum" => {
            let retention = app.config.erasure.vacuum_retention;
            let ready = job
                .progress
                .lake_done_at
                .map_or(0, |t| t.saturating_add(micros(retention)));
            if app.clock.now_micros() < ready {
                return Ok(Outcome::WaitUntil(ready));
            }
            for contract in &datasets {
                job.progress.lake_files_vacuumed += app.lake.vacuum(contract, retention).await?;
                job.progress.lake_log_files_removed += app.lake.compact_log(contract).await?;
            }
        }
        "verify" => {
            let mut v = Verification {
                subject_key_destroyed: app
                    .keys
                    .data_keys(SCOPE_SUBJECT, std::slice::from_ref(&sr), false)
                    .await?
                    .destroyed
                    .contains(&sr),
                state_scan: job.progress.state_scan,
                ..Verification::default()
            };
            let needles = warden_pipeline::residue::Needles::new(&[sr.as_bytes()]);
            for contract in &datasets {
                v.lake_rows += app.lake.count_subject(contract, &sr).await?;
                v.lake_scan
                    .add(app.lake.scan_residue(contract, &sr, &needles).await?);
                let spec = warden_pipeline::loader::collection_spec(contract);
                v.documents += app.documents.count(&spec, Some(&sr)).await?;
                v.vault_tokens += app.tokenizer.subject_tokens(&contract.name, &sr).await?;
            }
            v.account_pseudonymous = match &job.progress.account {
                Some(id) => app
                    .store
                    .principal_by_id(id)
                    .await?
                    .is_none_or(|p| p.name == sr),
                None => true,
            };
            if v.state_scan.is_some_and(|s| s.holding > 0) {
                return Err(Error::Corrupt(
                    "the state database's files still held the erased account's name or \
                     password hash after the scrub"
                        .into(),
                ));
            }
            if !v.account_pseudonymous {
                return Err(Error::Conflict(
                    "the subject's account still carries its identifier".into(),
                ));
            }
            // Bytes without rows (a commit after the log was compacted) send the job round
            // again too: its vacuum step compacts the log anew.
            let clean = v.lake_rows == 0
                && v.lake_scan.holding == 0
                && v.documents == 0
                && v.vault_tokens == 0;
            if !clean {
                job.progress.verification = None;
                return Ok(Outcome::Back(1));
            }
            if !v.subject_key_destroyed {
                return Err(Error::Corrupt(
                    "the subject's key is not destroyed after the shred step".into(),
                ));
            }
            job.progress.verification = Some(v);
        }
        "receipt" => {
            let (seq, hash) = completion_event(app, job).await?;
            let receipt = app.receipt_signer.sign(build_receipt(app, job, seq, &hash));
            job.receipt = Some(serde_json::to_string(&receipt).unwrap_or_default());
        }
        other => return Err(Error::Corrupt(format!("unknown erasure step {other}"))),
    }
    Ok(Outcome::Next)
}

/// One store's erasure of the subject in one dataset (`lake`, `documents`, `stream`,
/// `vault`), recorded in the job's progress.
async fn erase_in(app: &AppState, job: &mut Job, contract: &Contract, step: &str) -> Result<()> {
    let sr = job.subject_ref.clone();
    match step {
        "lake" => {
            let done = app.lake.delete_subject(contract, &sr, &job.id).await?;
            let d = dataset(job, contract);
            d.lake_rows += d.found_lake.max(done.rows);
            d.lake_version_after = done.version_after.or(d.lake_version_after);
            d.lake_files_removed += done.files_removed;
            d.lake_bytes_removed += done.bytes_removed;
        }
        "documents" => {
            let spec = warden_pipeline::loader::collection_spec(contract);
            let deleted = app.documents.delete_subject(&spec, &sr).await?;
            let d = dataset(job, contract);
            d.documents += d.found_documents.max(deleted);
        }
        "stream" => {
            let topic = app.topic(contract);
            app.topics_ensure(&topic).await?;
            let erased = app.stream.erase_key(&topic, &sr).await?;
            let d = dataset(job, contract);
            d.stream_topic = topic;
            d.stream_erased += erased;
        }
        "vault" => {
            let (purged, shared) = app.tokenizer.purge_subject(&contract.name, &sr).await?;
            let d = dataset(job, contract);
            d.tokens_purged += purged;
            d.tokens_shared += shared;
        }
        other => return Err(Error::Corrupt(format!("unknown erasure step {other}"))),
    }
    Ok(())
}

/// The progress of a dataset in the job.
fn dataset<'a>(job: &'a mut Job, contract: &Contract) -> &'a mut DatasetProgress {
    job.progress
        .datasets
        .entry(contract.name.clone())
        .or_default()
}

/// The audit event of the job's completion: the one recorded before a crash, or a new one.
async fn completion_event(app: &AppState, job: &Job) -> Result<(u64, String)> {
    let query = warden_audit::Query {
        action: Some("erasure.complete".into()),
        subject_ref: Some(job.subject_ref.clone()),
        limit: 100,
        ..warden_audit::Query::default()
    };
    for e in app.audit_store.query(&query).await? {
        let details: Value = serde_json::from_str(&e.body.details).unwrap_or(Value::Null);
        if details["job"] == json!(job.id) {
            return Ok((e.seq, hex::encode(e.hash)));
        }
    }
    let counts: BTreeMap<&String, Value> = job
        .progress
        .datasets
        .iter()
        .map(|(n, d)| {
            (
                n,
                json!({"lake_rows": d.lake_rows, "documents": d.documents, "stream_erased": d.stream_erased,
                       "tokens_purged": d.tokens_purged}),
            )
        })
        .collect();
    let event = NewEvent::new(
        app.clock.now_micros(),
        "warden".to_owned(),
        "service".to_owned(),
        "erasure.complete".to_owned(),
        format!("erasure:{}", job.id),
        Decision::Allow,
    )
    .subject_ref(Some(job.subject_ref.clone()))
    .details(
        &json!({"job": job.id, "passes": job.pass, "datasets": counts,
                     "lake_files_vacuumed": job.progress.lake_files_vacuumed}),
    );
    let seq = app.audit.append(event).await?;
    let stored = app
        .audit_store
        .query(&warden_audit::Query {
            after_seq: Some(seq.saturating_sub(1)),
            limit: 1,
            ..warden_audit::Query::default()
        })
        .await?;
    let hash = stored
        .first()
        .filter(|e| e.seq == seq)
        .map(|e| hex::encode(e.hash))
        .ok_or_else(|| Error::Corrupt("the completion event cannot be read back".into()))?;
    Ok((seq, hash))
}

fn build_receipt(app: &AppState, job: &Job, seq: u64, hash: &str) -> Receipt {
    Receipt {
        version: 2,
        job: job.id.clone(),
        subject_ref: job.subject_ref.clone(),
        received_at: warden_policy::timefmt::micros_to_rfc3339(job.received_at),
        due_at: warden_policy::timefmt::micros_to_rfc3339(job.due_at),
        completed_at: warden_policy::timefmt::micros_to_rfc3339(
            job.completed_at.unwrap_or(app.clock.now_micros()),
        ),
        datasets: job
            .progress
            .datasets
            .iter()
            .map(|(n, d)| {
                (
                    n.clone(),
                    DatasetReceipt {
                        lake_rows_deleted: d.lake_rows,
                        lake_version_before: d.lake_version_before,
                        lake_version_after: d.lake_version_after,
                        documents_deleted: d.documents,
                        stream_topic: d.stream_topic.clone(),
                        stream_erased: d.stream_erased,
                        tokens_purged: d.tokens_purged,
                        tokens_shared: d.tokens_shared,
                    },
                )
            })
            .collect(),
        subject_key_destroyed: job.progress.key_destroyed,
        subject_account_renamed: job.progress.account_renamed,
        lake_files_vacuumed: job.progress.lake_files_vacuumed,
        lake_log_files_removed: job.progress.lake_log_files_removed,
        verification: job.progress.verification.clone().unwrap_or_default(),
        audit_seq: seq,
        audit_hash: hash.to_owned(),
        kid: String::new(),
        signature: String::new(),
    }
}

/// The erasure worker: runs due jobs every second and keeps the erasure metrics current,
/// until aborted. A new request waits for the next tick: by then its answer and audit event
/// are out.
pub fn start(app: AppState) -> tokio::task::JoinHandle<()> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "warden".to_owned());
    // Unique per process: a restarted process waits for its predecessor's leases to expire,
    // so two processes never run one job at once.
    let owner = format!(
        "{host}:{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = update_metrics(&app).await {
                warn!(error = %e, "cannot read the erasure jobs for the metrics");
            }
            if let Err(e) = run_due(&app, &owner, usize::MAX).await {
                warn!(error = %e, "erasure worker cannot claim jobs");
            }
        }
    })
}

/// Sets the erasure gauges from the jobs (shared by every replica, so any one's are right).
///
/// # Errors
/// A database failure.
pub async fn update_metrics(app: &AppState) -> Result<()> {
    let (by_state, oldest, due) = app.erasures.open_summary().await?;
    let now = app.clock.now_micros();
    app.metrics
        .erasure_gauges(&by_state, oldest.map(|t| now - t), due.map(|t| t - now));
    Ok(())
}
