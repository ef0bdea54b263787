//! Background workers. Every loop has one shape: `select!` on a wake-up (NOTIFY), a poll tick and the
//! cancellation token; the work itself is one `tick()` that tests call directly, so background work is
//! deterministic in tests.
//!
//! The job worker claims one job per tick from the control-plane queue (`control/jobs.rs`) and runs it with the
//! provisioner. A job cut off by shutdown is handed back without counting the attempt; a job whose process died
//! is taken over by any worker when its lease expires.

use std::sync::Arc;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::app::AppState;
use crate::config::WorkerSettings;
use crate::control::jobs::{AfterFailure, Job, JobKind};
use crate::control::listen::Listening;
use crate::control::{ControlError, ControlPlane, JOBS_CHANNEL};
use crate::fanout::FanOut;
#[cfg(feature = "testing")]
use crate::provisioning::Faults;
use crate::provisioning::{ProvisionError, Provisioner};
use crate::shutdown::{CancellationToken, TaskTracker};
use crate::telemetry::error_chain;

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// No job was due.
    Idle,
    Succeeded {
        job: Uuid,
        kind: JobKind,
    },
    /// The attempt failed; the job will run again after its backoff.
    Retrying {
        job: Uuid,
        error: String,
    },
    /// The attempt failed and no attempts are left.
    Failed {
        job: Uuid,
        error: String,
    },
    /// Test fault injection: the job stopped as if the process had died.
    #[cfg(feature = "testing")]
    Crashed {
        job: Uuid,
    },
    /// The lease was lost to another worker; nothing was recorded.
    LostClaim {
        job: Uuid,
    },
    /// Shutdown interrupted the job; it was handed back.
    Released {
        job: Uuid,
    },
}

/// Claims and runs jobs.
pub struct JobRunner {
    control: ControlPlane,
    provisioner: Provisioner,
    fanout: FanOut,
    settings: WorkerSettings,
    /// `locked_by` of the jobs this runner claims (changes when the process takes a new worker slot).
    worker_id: std::sync::Mutex<String>,
    /// No claims while this process holds no worker slot it can prove (see `spawn`).
    paused: std::sync::atomic::AtomicBool,
    cancel: CancellationToken,
    /// When this runner last failed abandoned jobs; the sweep runs at most once per poll interval, not before
    /// every claim.
    last_sweep: std::sync::Mutex<Option<std::time::Instant>>,
    /// When this runner last re-queued field reconciles that ran out of retries.
    last_requeue: std::sync::Mutex<Option<std::time::Instant>>,
    /// `auth.audit_retention_days` (0 = keep the audit log forever), and when it last pruned (the audit log and
    /// ended console sessions).
    audit_retention_days: u32,
    last_prune: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often the audit log is pruned to `auth.audit_retention_days` (and ended console sessions deleted).
const AUDIT_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often clients whose fields are not applied (and have no reconcile queued, e.g. because its retries ran out
/// while the database was down) get a fresh reconcile job: the reconciler gives up on nobody.
const FIELD_REQUEUE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl JobRunner {
    pub fn new(state: &AppState, worker_id: impl Into<String>) -> Self {
        Self {
            control: state.control().clone(),
            provisioner: state.provisioner().clone(),
            fanout: state.fanout().clone(),
            settings: state.settings().workers.clone(),
            worker_id: std::sync::Mutex::new(worker_id.into()),
            paused: std::sync::atomic::AtomicBool::new(false),
            cancel: CancellationToken::new(),
            last_sweep: std::sync::Mutex::new(None),
            last_requeue: std::sync::Mutex::new(None),
            audit_retention_days: state.settings().auth.audit_retention_days,
            last_prune: std::sync::Mutex::new(None),
        }
    }

    #[cfg(feature = "testing")]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.provisioner = self.provisioner.with_faults(faults);
        self
    }

    fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Claims one due job, runs it, records the outcome.
    ///
    /// The job runs in its own task: a panic is a failed attempt, not a dead worker loop. While it runs, a
    /// heartbeat renews the lease every third of it; if the claim is lost (the control plane gave the job to
    /// another worker), the job is stopped at once, so two workers never work on one job.
    pub async fn tick(&self) -> Result<Tick, ControlError> {
        if self.sweep_due() {
            self.fail_abandoned().await?;
        }
        if due(&self.last_requeue, FIELD_REQUEUE_EVERY) {
            let queued = self
                .control
                .requeue_unapplied_fields(i32::from(self.settings.max_attempts))
                .await?;
            let syncs = self
                .control
                .requeue_unsynced_templates(i32::from(self.settings.max_attempts))
                .await?;
            if queued + syncs > 0 {
                tracing::info!(
                    fields = queued,
                    templates = syncs,
                    "re-queued reconciles that ran out of retries"
                );
            }
        }
        if due(&self.last_prune, AUDIT_PRUNE_EVERY) {
            if self.audit_retention_days > 0 {
                let pruned = self.control.prune_audit(self.audit_retention_days).await?;
                if pruned > 0 {
                    tracing::info!(
                        entries = pruned,
                        days = self.audit_retention_days,
                        "pruned the audit log"
                    );
                }
            }
            let sessions = self.control.delete_expired_sessions().await?;
            if sessions > 0 {
                tracing::info!(sessions, "deleted ended console sessions");
            }
        }
        if self.paused.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Tick::Idle);
        }
        let worker_id = self
            .worker_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(job) = self
            .control
            .claim_job(&worker_id, self.settings.lease())
            .await?
        else {
            return Ok(Tick::Idle);
        };
        self.run(job).await
    }

    fn sweep_due(&self) -> bool {
        due(&self.last_sweep, self.settings.poll_interval())
    }

    /// Fails jobs whose worker died on their last attempt, and their provisioning clients.
    async fn fail_abandoned(&self) -> Result<(), ControlError> {
        for (kind, client) in self.control.fail_abandoned_jobs().await? {
            tracing::error!(kind = kind.as_str(), client = ?client, "job abandoned on its last attempt; failed");
            if let (JobKind::ProvisionClient, Some(id)) = (kind, client)
                && let Err(e) = self.provisioner.client_failed(id).await
            {
                tracing::error!(error = %e, "could not mark the client failed");
            }
        }
        Ok(())
    }

    /// Runs a claimed job beside its heartbeat and records the outcome.
    async fn run(&self, job: Job) -> Result<Tick, ControlError> {
        let (provisioner, fanout) = (self.provisioner.clone(), self.fanout.clone());
        let owned = job.clone();
        let mut task = tokio::spawn(async move { execute(&provisioner, &fanout, &owned).await });
        let outcome = tokio::select! {
            joined = &mut task => match joined {
                Ok(outcome) => outcome,
                Err(e) => Err(ProvisionError::Panicked(e.to_string())),
            },
            () = self.heartbeat(&job) => {
                task.abort();
                tracing::warn!(job = %job.id, "lost the claim on a running job; stopped it");
                return Ok(Tick::LostClaim { job: job.id });
            }
            () = self.cancel.cancelled() => {
                task.abort();
                let _ = task.await;
                self.control.release_job(&job).await?;
                return Ok(Tick::Released { job: job.id });
            }
        };
        match outcome {
            Ok(result) => {
                if self.control.complete_job(&job, result).await? {
                    Ok(Tick::Succeeded {
                        job: job.id,
                        kind: job.kind,
                    })
                } else {
                    Ok(Tick::LostClaim { job: job.id })
                }
            }
            #[cfg(feature = "testing")]
            Err(ProvisionError::SimulatedCrash(_)) => Ok(Tick::Crashed { job: job.id }),
            Err(ProvisionError::LostClaim) => Ok(Tick::LostClaim { job: job.id }),
            Err(e) => self.record_failure(&job, e).await,
        }
    }

    /// Renews the job's lease until the claim is lost (then returns). Runs beside the job.
    async fn heartbeat(&self, job: &Job) {
        let lease = self.settings.lease();
        loop {
            tokio::time::sleep(lease / 3).await;
            match self.control.renew_job_lease(job, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "could not renew the job's lease")
                }
            }
        }
    }

    async fn record_failure(&self, job: &Job, e: ProvisionError) -> Result<Tick, ControlError> {
        let error = error_chain(&e);
        if let ProvisionError::MoveGaveUp(_) | ProvisionError::DrainStalled(_) = e {
            // Rolled back already: failed for good, whatever attempts are left.
            tracing::error!(job = %job.id, kind = job.kind.as_str(), %error, "job failed for good");
            return Ok(if self.control.give_up_job(job, &error).await? {
                Tick::Failed { job: job.id, error }
            } else {
                Tick::LostClaim { job: job.id }
            });
        }
        let backoff = self.settings.backoff(job.attempt.max(1) as u32);
        match self.control.fail_job(job, &error, backoff).await? {
            AfterFailure::Retrying { after } => {
                tracing::warn!(job = %job.id, kind = job.kind.as_str(), attempt = job.attempt, ?after, %error, "job failed; will retry");
                Ok(Tick::Retrying { job: job.id, error })
            }
            AfterFailure::Superseded => {
                tracing::info!(job = %job.id, kind = job.kind.as_str(), %error, "job failed; a newer queued job takes over");
                Ok(Tick::Failed { job: job.id, error })
            }
            AfterFailure::Failed => {
                tracing::error!(job = %job.id, kind = job.kind.as_str(), attempt = job.attempt, %error, "job failed for good");
                if job.kind == JobKind::ProvisionClient
                    && let Some(id) = job.client_id
                    && let Err(e) = self.provisioner.client_failed(id).await
                {
                    tracing::error!(job = %job.id, error = %e, "could not mark the client failed");
                }
                Ok(Tick::Failed { job: job.id, error })
            }
            AfterFailure::LostClaim => Ok(Tick::LostClaim { job: job.id }),
        }
    }
}

/// Runs one job by its kind: lifecycle jobs by the provisioner, fan-out jobs by the fan-out.
async fn execute(
    provisioner: &Provisioner,
    fanout: &FanOut,
    job: &Job,
) -> Result<Option<serde_json::Value>, ProvisionError> {
    Ok(match job.kind {
        JobKind::PropagateFields => fanout.propagate_fields().await?,
        JobKind::PublishTemplates => fanout.publish_templates().await?,
        JobKind::SyncTemplates => fanout.sync_templates(job).await?,
        JobKind::ReconcileFields => fanout.reconcile_fields(job).await?,
        JobKind::ProvisionClient => provisioner.provision(job).await.map(|()| None)?,
        JobKind::DeleteClient => provisioner.delete(job).await?,
        JobKind::SyncAccess => provisioner.sync_access(job).await.map(|()| None)?,
        JobKind::PrepareInner => provisioner.prepare_inner(job).await.map(|()| None)?,
        JobKind::MoveClient => provisioner.move_client(job).await?,
        JobKind::DrainServer => provisioner.drain_server(job).await?,
    })
}

/// Starts `workers.concurrency` job loops and one NOTIFY listener on `tasks`, all stopped by `cancel`. The loops
/// claim jobs under this process's worker slot (`Settings::worker_identity`), after taking back the jobs a dead
/// predecessor in the same slot left running.
pub fn spawn(state: &AppState, tasks: &TaskTracker, cancel: &CancellationToken) {
    let settings = state.settings().workers.clone();
    let wake = Arc::new(Notify::new());
    let (control, waker, retry, token) = (
        state.control().clone(),
        Wake(wake.clone()),
        settings.poll_interval(),
        cancel.clone(),
    );
    tasks.spawn(async move {
        control
            .listen(&[JOBS_CHANNEL], "jobs", &waker, retry, token)
            .await
    });
    if let Some(every) = settings.stats_interval() {
        tasks.spawn(stats_loop(state.fanout().clone(), every, cancel.clone()));
    }
    if let Some(every) = settings.retention_interval() {
        tasks.spawn(retention_loop(
            state.fanout().clone(),
            every,
            cancel.clone(),
        ));
    }
    if let Some(every) = settings.inner_scope_interval() {
        tasks.spawn(inner_scope_loop(
            state.fanout().clone(),
            every,
            cancel.clone(),
        ));
    }
    if let Some(every) = settings.move_sweep_interval() {
        tasks.spawn(move_sweep_loop(
            state.provisioner().clone(),
            every,
            cancel.clone(),
        ));
    }
    let (state, tracker, cancel) = (state.clone(), tasks.clone(), cancel.clone());
    tasks.spawn(async move {
        let identity = state.settings().worker_identity();
        let mut slot = take_slot(&state, &identity, true).await;
        let prefix = slot.as_ref().map_or(identity.clone(), |s| s.name.clone());
        let runner =
            Arc::new(JobRunner::new(&state, worker_id(&prefix)).with_cancel(cancel.clone()));
        for _ in 0..settings.concurrency {
            tracker.spawn(job_loop(
                runner.clone(),
                wake.clone(),
                settings.clone(),
                cancel.clone(),
            ));
        }
        tracing::info!(concurrency = settings.concurrency, "job workers started");
        // The slot is held until shutdown: its session's lock is the proof that this process is alive. If the
        // session stops answering, the lock may be gone and the slot another process's: claim nothing until a
        // new slot is held (jobs already running keep their claims, fenced as always).
        let mut check = tokio::time::interval(SLOT_CHECK_EVERY);
        loop {
            tokio::select! {
                _ = check.tick() => {}
                () = cancel.cancelled() => break,
            }
            let held = match slot.as_mut() {
                Some(slot) => slot.is_held().await,
                None => false,
            };
            if held {
                continue;
            }
            runner
                .paused
                .store(true, std::sync::atomic::Ordering::Release);
            slot = take_slot(&state, &identity, false).await;
            if let Some(new) = &slot {
                *runner.worker_id.lock().unwrap_or_else(|p| p.into_inner()) = worker_id(&new.name);
                runner
                    .paused
                    .store(false, std::sync::atomic::Ordering::Release);
            }
        }
        drop(slot);
    });
}

/// How often the worker slot's session is checked.
const SLOT_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn worker_id(slot: &str) -> String {
    format!(
        "{slot}/{}-{}",
        std::process::id(),
        Uuid::new_v4().as_simple()
    )
}

/// Takes a worker slot of `identity`; at start (`reclaim`), also takes back the jobs a dead predecessor in that
/// slot left running.
async fn take_slot(
    state: &AppState,
    identity: &str,
    reclaim: bool,
) -> Option<crate::control::jobs::WorkerSlot> {
    let slot = match state.control().take_worker_slot(identity).await {
        Ok(slot) => slot,
        Err(e) => {
            tracing::warn!(error = %e, "no worker slot; jobs a crashed process left running wait for their leases");
            return None;
        }
    };
    if reclaim {
        match state.control().reclaim_jobs(&slot).await {
            Ok(0) => {}
            Ok(jobs) => tracing::info!(
                jobs,
                slot = %slot.name,
                "took back the jobs a previous process of this slot left running"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not take back left-over jobs; their leases expire")
            }
        }
    }
    Some(slot)
}

async fn job_loop(
    runner: Arc<JobRunner>,
    wake: Arc<Notify>,
    settings: WorkerSettings,
    cancel: CancellationToken,
) {
    loop {
        // Register for wake-ups before looking for work, so a NOTIFY during the tick is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let busy = match runner.tick().await {
            Ok(Tick::Idle) => false,
            Ok(Tick::Released { .. }) => break,
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "job worker could not reach the control plane");
                false
            }
        };
        if cancel.is_cancelled() {
            break;
        }
        if busy {
            continue;
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(settings.poll_interval()) => {}
            () = cancel.cancelled() => break,
        }
    }
}

/// Gathers the overview's figures every `every` (see `fanout::stats`): each round collects the clients whose
/// figures are older than 90% of the interval, so several worker processes together collect each client about
/// once per interval; only one collects at a time.
async fn stats_loop(fanout: FanOut, every: std::time::Duration, cancel: CancellationToken) {
    crate::shutdown::every(every, &cancel, || async {
        match fanout.collect_stats(every.mul_f64(0.9)).await {
            Ok(Some(outcome)) if outcome.done + outcome.failed > 0 => tracing::info!(
                clients = outcome.done,
                incomplete = outcome.failed,
                "gathered the overview's statistics"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not gather the overview's statistics"),
        }
    })
    .await
}

/// Applies the retention rules every `every` (see `fanout::retention`); only one process purges at a time.
async fn retention_loop(fanout: FanOut, every: std::time::Duration, cancel: CancellationToken) {
    crate::shutdown::every(every, &cancel, || async {
        match fanout.apply_retention().await {
            Ok(Some(runs)) if !runs.is_empty() => {
                let failed = runs.iter().filter(|r| r.error.is_some()).count();
                tracing::info!(clients = runs.len(), failed, "applied the retention rules");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not apply the retention rules"),
        }
    })
    .await
}

/// Applies every inner client's scope every `every` (see `fanout::inner`); one process at a time.
async fn inner_scope_loop(fanout: FanOut, every: std::time::Duration, cancel: CancellationToken) {
    crate::shutdown::every(every, &cancel, || async {
        match fanout.apply_inner_scopes().await {
            Ok(Some(runs)) => {
                let failed = runs.iter().filter(|r| r.applied.is_err()).count();
                if failed > 0 {
                    tracing::warn!(
                        clients = runs.len(),
                        failed,
                        "applied the inner clients' scopes"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not apply the inner clients' scopes"),
        }
    })
    .await
}

/// Cleans up after moves every `every` (see `Provisioner::sweep_moves`).
async fn move_sweep_loop(
    provisioner: Provisioner,
    every: std::time::Duration,
    cancel: CancellationToken,
) {
    crate::shutdown::every(every, &cancel, || async {
        match provisioner.sweep_moves().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "cleaned up after moves"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "could not clean up after moves"),
        }
    })
    .await
}

/// Wakes the job loops on every notification of the jobs channel (polling covers the gaps while it is down).
struct Wake(Arc<Notify>);

impl Listening for Wake {
    fn up(&self) {
        // Jobs queued while nobody listened: look now.
        self.0.notify_waiters();
    }
    fn notified(&self, _channel: &str, _payload: &str) {
        self.0.notify_waiters();
    }
    fn down(&self) {}
}

/// Whether `every` has passed since `last` (and if so, marks now).
fn due(last: &std::sync::Mutex<Option<std::time::Instant>>, every: std::time::Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    let due = last.is_none_or(|at| at.elapsed() >= every);
    if due {
        *last = Some(std::time::Instant::now());
    }
    due
}
