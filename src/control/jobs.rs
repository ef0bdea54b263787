//! The durable job queue.
//!
//! A job is claimed with `FOR UPDATE SKIP LOCKED` and a lease (`lease_until`); a worker that dies simply stops
//! renewing, and after the lease expires any worker may claim the job again. Jobs of one client run one at a
//! time. Every state change is fenced by the claim (`locked_by` and `attempts`), so a worker whose lease was
//! taken over cannot complete or fail the job afterwards. Retries back off exponentially; after `max_attempts` the
//! job is `failed` with its last error kept. Every job kind is idempotent: running one twice changes nothing more.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::{ControlError, ControlPlane};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Create the client's role and database and bring it to `active`.
    ProvisionClient,
    /// Archive (optionally), drop the database and role, leave a tombstone.
    DeleteClient,
    /// Apply the client's status to its database role (suspended → NOLOGIN).
    SyncAccess,
    /// Bring the client's database to its desired custom fields (central and own).
    ReconcileFields,
    /// Bring the client's inherited template copies to the master's newest versions.
    SyncTemplates,
    /// Sync every active client's templates at once (after a publish; queued for the master client, so several
    /// publishes in a row coalesce into one run).
    PublishTemplates,
    /// Reconcile every client's fields at once (after a central field changed; queued for the master client).
    PropagateFields,
    /// Make a client's database able to hold inner clients (its second role, the lower-case e-mail filled in
    /// and indexed): for databases provisioned before tenant migration V7.
    PrepareInner,
    /// Move a client's database to another server by logical replication (issue #21); the job's id is the
    /// move's, its step the phase reached.
    MoveClient,
    /// Move every tenant off a draining server, a few at a time (no client: the server is in the payload).
    DrainServer,
}

impl JobKind {
    pub const ALL: [Self; 10] = [
        Self::ProvisionClient,
        Self::DeleteClient,
        Self::SyncAccess,
        Self::ReconcileFields,
        Self::SyncTemplates,
        Self::PublishTemplates,
        Self::PropagateFields,
        Self::PrepareInner,
        Self::MoveClient,
        Self::DrainServer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProvisionClient => "provision_client",
            Self::DeleteClient => "delete_client",
            Self::SyncAccess => "sync_access",
            Self::ReconcileFields => "reconcile_fields",
            Self::SyncTemplates => "sync_templates",
            Self::PublishTemplates => "publish_templates",
            Self::PropagateFields => "propagate_fields",
            Self::PrepareInner => "prepare_inner",
            Self::MoveClient => "move_client",
            Self::DrainServer => "drain_server",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub kind: JobKind,
    pub client_id: Option<Uuid>,
    pub payload: serde_json::Value,
    /// This claim's attempt number (1-based); also the fencing token.
    pub attempt: i32,
    pub max_attempts: i32,
    pub locked_by: String,
    /// The last step recorded before this claim (where a resumed job goes on).
    pub step: Option<String>,
}

#[derive(FromRow)]
struct JobRow {
    id: Uuid,
    kind: String,
    client_id: Option<Uuid>,
    payload: serde_json::Value,
    attempts: i32,
    max_attempts: i32,
    locked_by: Option<String>,
    step: Option<String>,
}

/// What became of a job after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    Retrying {
        after: Duration,
    },
    Failed,
    /// A newer job of the same client and kind is queued and will do the work; this one is closed.
    Superseded,
    /// The claim was lost (lease expired and another worker took over): nothing was recorded.
    LostClaim,
}

/// Runs a statement that may put a job back to `queued`; if a sibling was queued between its check and its write
/// (the one-queued-job index refuses), runs it once more, when the check sees the sibling.
async fn retry_once_on_sibling<T, F, Fut>(statement: F) -> Result<T, ControlError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    match statement().await {
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("jobs_one_queued_per_client") => {
            Ok(statement().await?)
        }
        other => Ok(other?),
    }
}

/// A job as `GET /v1/operations/{id}` shows it.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct Operation {
    pub id: Uuid,
    #[serde(skip)]
    pub client_id: Option<Uuid>,
    #[schema(example = "provision_client")]
    pub kind: String,
    /// The client's slug.
    pub client: Option<String>,
    /// queued | running | succeeded | failed
    #[schema(example = "succeeded")]
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// The last completed step.
    pub step: Option<String>,
    /// What the operation produced, e.g. `{"archive": "/path/to/file.dump"}`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ControlPlane {
    /// Queues a `kind` job for each client `open_clients` (a query of `client_id`s) names that has none queued or
    /// running, unless a `fan_out` job (which covers every client) is queued or running; wakes the workers.
    /// For clients whose own retries ran out: the reconcilers give up on nobody.
    pub(super) async fn requeue_left_behind(
        &self,
        kind: JobKind,
        fan_out: JobKind,
        open_clients: &'static str,
        max_attempts: i32,
    ) -> Result<u64, ControlError> {
        let queued = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs (kind, client_id, payload, max_attempts)
             SELECT DISTINCT $1, open.client_id, '{{}}'::jsonb, $2::int FROM ({open_clients}) AS open
             WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.client_id = open.client_id
                               AND j.kind = $1 AND j.status IN ('queued', 'running'))
               AND NOT EXISTS (SELECT 1 FROM jobs f WHERE f.kind = $3 AND f.status IN ('queued', 'running'))
             ON CONFLICT (client_id, kind) WHERE status = 'queued' DO NOTHING"
        )))
        .bind(kind.as_str())
        .bind(max_attempts)
        .bind(fan_out.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if queued > 0 {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(super::JOBS_CHANNEL)
                .bind(kind.as_str())
                .execute(&self.pool)
                .await?;
        }
        Ok(queued)
    }

    /// Claims the next runnable job of a kind this binary knows: queued and due, or running with an expired lease
    /// (its worker died) and attempts left; never while another job of the same client is running (the partial
    /// unique index `jobs_one_running_per_client` makes that a hard guarantee between racing claims). Counts an
    /// attempt.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<Job>, ControlError> {
        let kinds: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
        // A claim lost in a server crash only means the job is claimed again: no need to wait for the flush.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let claimed = sqlx::query_as::<_, JobRow>(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1,
                    lease_until = now() + make_interval(secs => $2), updated_at = now()
             WHERE id = (
                 SELECT j.id FROM jobs j
                 WHERE j.kind = ANY($3)
                   AND (j.status = 'queued' AND j.run_after <= now()
                        OR j.status = 'running' AND j.lease_until < now() AND j.attempts < j.max_attempts)
                   AND NOT EXISTS (
                       SELECT 1 FROM jobs o
                       WHERE o.client_id = j.client_id AND o.id <> j.id AND o.status = 'running')
                 ORDER BY j.run_after, j.created_at
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING id, kind, client_id, payload, attempts, max_attempts, locked_by, step",
        )
        .bind(worker)
        .bind(lease.as_secs_f64())
        .bind(kinds)
        .fetch_optional(&mut *tx)
        .await;
        let row = match claimed {
            Ok(Some(row)) => {
                tx.commit().await?;
                row
            }
            Ok(None) => return Ok(None),
            // Another worker claimed a job of the same client at the same moment: nothing for us this time.
            Err(sqlx::Error::Database(db))
                if db.constraint() == Some("jobs_one_running_per_client") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let kind = JobKind::parse(&row.kind).ok_or_else(|| {
            ControlError::Query(sqlx::Error::Decode(
                format!("claimed a job of unknown kind {}", row.kind).into(),
            ))
        })?;
        Ok(Some(Job {
            id: row.id,
            kind,
            client_id: row.client_id,
            payload: row.payload,
            attempt: row.attempts,
            max_attempts: row.max_attempts,
            locked_by: row.locked_by.unwrap_or_default(),
            step: row.step,
        }))
    }

    /// Fails the jobs whose worker died during their last attempt (lease expired, no attempts left): nobody would
    /// ever claim them again. Returns them, so provisioning clients can be marked failed too.
    pub async fn fail_abandoned_jobs(&self) -> Result<Vec<(JobKind, Option<Uuid>)>, ControlError> {
        let rows: Vec<(String, Option<Uuid>)> = sqlx::query_as(
            "UPDATE jobs SET status = 'failed', lease_until = NULL, finished_at = now(), updated_at = now(),
                    last_error = coalesce(last_error || '; ', '')
                                 || 'the worker running the last attempt stopped responding (lease expired)'
             WHERE status = 'running' AND lease_until < now() AND attempts >= max_attempts
             RETURNING kind, client_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(kind, client)| JobKind::parse(&kind).map(|k| (k, client)))
            .collect())
    }

    /// Records progress and renews the lease. False if the claim was lost.
    ///
    /// Committed without waiting for the WAL flush (`synchronous_commit = off`): the step is progress information
    /// only (every step re-checks real state), so losing the last one in a server crash costs nothing, while a
    /// flush per step would cost a disk round trip seven times per provisioning.
    pub async fn job_step(
        &self,
        job: &Job,
        step: &str,
        lease: Duration,
    ) -> Result<bool, ControlError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "UPDATE jobs SET step = $4, lease_until = now() + make_interval(secs => $5), updated_at = now()
             WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
        )
        .bind(job.id)
        .bind(&job.locked_by)
        .bind(job.attempt)
        .bind(step)
        .bind(lease.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a running job's progress (`result`, shown by `GET /v1/operations/{id}` while it runs). False if the
    /// claim was lost.
    pub async fn job_progress(
        &self,
        job: &Job,
        progress: &serde_json::Value,
    ) -> Result<bool, ControlError> {
        let done = sqlx::query(
            "UPDATE jobs SET result = $4, updated_at = now()
             WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
        )
        .bind(job.id)
        .bind(&job.locked_by)
        .bind(job.attempt)
        .bind(progress)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Fails a running job for good, whatever attempts are left (a move that rolled back: retrying it would
    /// start a new move nobody asked for). False if the claim was lost.
    pub async fn give_up_job(&self, job: &Job, error: &str) -> Result<bool, ControlError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'failed', last_error = $4, lease_until = NULL, finished_at = now(),
                    updated_at = now()
             WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
        )
        .bind(job.id)
        .bind(&job.locked_by)
        .bind(job.attempt)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Renews the lease of a running job (the worker's heartbeat). False if the claim was lost.
    pub async fn renew_job_lease(&self, job: &Job, lease: Duration) -> Result<bool, ControlError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $4)
             WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
        )
        .bind(job.id)
        .bind(&job.locked_by)
        .bind(job.attempt)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks the job succeeded. False if the claim was lost.
    pub async fn complete_job(
        &self,
        job: &Job,
        result: Option<serde_json::Value>,
    ) -> Result<bool, ControlError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'succeeded', result = $4, lease_until = NULL, last_error = NULL,
                    finished_at = now(), updated_at = now()
             WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
        )
        .bind(job.id)
        .bind(&job.locked_by)
        .bind(job.attempt)
        .bind(result)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a failed attempt: back to `queued` after `backoff`, or `failed` once attempts are used up. If a
    /// newer job of the same client and kind is already queued, this one ends (`failed`, superseded): the queued one
    /// reads the latest state and does the work, and the one-queued-job index stays intact.
    pub async fn fail_job(
        &self,
        job: &Job,
        error: &str,
        backoff: Duration,
    ) -> Result<AfterFailure, ControlError> {
        let status: Option<String> = retry_once_on_sibling(|| {
            sqlx::query_scalar(
                "WITH sibling AS (
                     SELECT EXISTS (SELECT 1 FROM jobs s WHERE s.client_id = $6 AND s.kind = $7
                                    AND s.status = 'queued' AND s.id <> $1) AS queued)
                 UPDATE jobs SET
                     status = CASE WHEN sibling.queued OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                     run_after = now() + make_interval(secs => $5),
                     finished_at = CASE WHEN sibling.queued OR attempts >= max_attempts THEN now() END,
                     lease_until = NULL, updated_at = now(),
                     last_error = CASE WHEN sibling.queued AND attempts < max_attempts
                                       THEN $4 || ' (superseded by a newer queued job)' ELSE $4 END
                 FROM sibling
                 WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'
                 RETURNING CASE WHEN sibling.queued AND attempts < max_attempts THEN 'superseded' ELSE status END",
            )
            .bind(job.id)
            .bind(&job.locked_by)
            .bind(job.attempt)
            .bind(error)
            .bind(backoff.as_secs_f64())
            .bind(job.client_id)
            .bind(job.kind.as_str())
            .fetch_optional(&self.pool)
        })
        .await?;
        Ok(match status.as_deref() {
            Some("failed") => AfterFailure::Failed,
            Some("superseded") => AfterFailure::Superseded,
            Some(_) => AfterFailure::Retrying { after: backoff },
            None => AfterFailure::LostClaim,
        })
    }

    /// Gives a claimed job back without counting the attempt (graceful shutdown in the middle of a job). If a newer
    /// job of the same client and kind is queued, that one will do the work: this one is closed as superseded.
    pub async fn release_job(&self, job: &Job) -> Result<(), ControlError> {
        retry_once_on_sibling(|| {
            sqlx::query(
                "WITH sibling AS (
                     SELECT EXISTS (SELECT 1 FROM jobs s WHERE s.client_id = $4 AND s.kind = $5
                                    AND s.status = 'queued' AND s.id <> $1) AS queued)
                 UPDATE jobs SET
                     status = CASE WHEN sibling.queued THEN 'succeeded' ELSE 'queued' END,
                     result = CASE WHEN sibling.queued THEN '{\"superseded\": true}'::jsonb ELSE result END,
                     finished_at = CASE WHEN sibling.queued THEN now() END,
                     attempts = attempts - 1, lease_until = NULL, locked_by = NULL,
                     run_after = now(), updated_at = now()
                 FROM sibling
                 WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'",
            )
            .bind(job.id)
            .bind(&job.locked_by)
            .bind(job.attempt)
            .bind(job.client_id)
            .bind(job.kind.as_str())
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    pub async fn operation(&self, id: Uuid) -> Result<Operation, ControlError> {
        sqlx::query_as(
            "SELECT j.id, j.kind, j.client_id, c.slug AS client, j.status, j.attempts, j.last_error, j.step, j.result,
                    j.created_at, j.updated_at
             FROM jobs j LEFT JOIN clients c ON c.id = j.client_id
             WHERE j.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ControlError::NotFound)
    }
}

/// How many processes may share one worker identity at once (each takes the first free slot).
const WORKER_SLOTS: u32 = 64;

/// A worker slot held for the life of a process: a session advisory lock on a dedicated connection. Whoever holds
/// slot `identity#n` is the only process whose jobs are claimed as `identity#n/...`; a process that takes the slot
/// after its holder died (the lock goes with the dead session) may take those jobs back at once instead of waiting
/// for their leases to expire.
pub struct WorkerSlot {
    /// `<identity>#<n>`: the prefix of `locked_by` of every job this process claims.
    pub name: String,
    session: sqlx::PgConnection,
}

impl WorkerSlot {
    /// Whether the session holding the slot's lock still answers. When it does not, the lock may be gone (and
    /// the slot another process's): stop claiming under it and take a new one.
    pub async fn is_held(&mut self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&mut self.session);
        matches!(
            tokio::time::timeout(Duration::from_secs(3), ping).await,
            Ok(Ok(_))
        )
    }
}

impl ControlPlane {
    /// Takes the first free slot of `identity` (see [`WorkerSlot`]). Slot names never contain `/` (it ends the
    /// slot in `locked_by`; `%` and `/` of the identity are escaped), so one slot is never a prefix of another's
    /// jobs.
    pub async fn take_worker_slot(&self, identity: &str) -> Result<WorkerSlot, ControlError> {
        let identity = identity.replace('%', "%25").replace('/', "%2F");
        let mut session = self.pool.acquire().await?.detach();
        for n in 0..WORKER_SLOTS {
            let name = format!("{identity}#{n}");
            let key = crate::db::lock_key(&format!("mandant.worker:{name}"));
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut session)
                .await?;
            if taken {
                return Ok(WorkerSlot { name, session });
            }
        }
        Err(ControlError::Unavailable(format!(
            "all {WORKER_SLOTS} worker slots of {identity:?} are taken"
        )))
    }

    /// Ends the leases of the jobs a dead holder of `slot` left running, so they are claimed again now. Returns
    /// how many. Safe: the slot's lock proves that holder is gone, and every job write is fenced by its claim.
    pub async fn reclaim_jobs(&self, slot: &WorkerSlot) -> Result<u64, ControlError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = now() - interval '1 millisecond', updated_at = now()
             WHERE status = 'running' AND starts_with(locked_by, $1 || '/')",
        )
        .bind(&slot.name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
