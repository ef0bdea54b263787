//! Work over every client at once, in one shape: central fields (`fields.rs`), master templates
//! (`templates.rs`), and anything later that must reach every tenant (cross-client queries, moves).
//!
//! [`FanOut::over_clients`] reads the servers once, runs one task per selected client, at most
//! `workers.fanout_concurrency` at a time, writes the results to the control plane in batches of
//! [`RECORD_BATCH`], and hands a client that fails to its [`Recorder`], which marks it failed and queues a job of
//! its own for it (with the job queue's leases, backoff and `NOTIFY`), so a down tenant never holds up the others.
//! The per-client jobs (`reconcile_fields`, `sync_templates`) and the provisioning step reuse the same
//! single-client functions, so there is one way to apply fields and one way to sync templates.
//! Never: DDL of its own (that is `tenant/fields.rs`) or DML of its own (that is `data/templates.rs`).

pub mod crossclient;
pub mod fields;
pub mod inner;
pub mod retention;
pub mod stats;
pub mod templates;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::WorkerSettings;
use crate::control::clients::ClientRecord;
use crate::control::jobs::Job;
use crate::control::servers::ServerRecord;
use crate::control::{ControlError, ControlPlane};
use crate::data::{DataError, DataPlane};
use crate::domain::{ClientSlug, ClientStatus};
use crate::telemetry::error_chain;
use crate::tenant::TenantError;
use crate::tenant::pool::{PooledConn, Use};

/// Results written to the control plane per statement.
pub const RECORD_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("the job has no client")]
    NoClient,
    #[error("field {0}: {1}")]
    BadField(String, String),
    #[error("template sync: {0}")]
    Sync(String),
}

/// What a fan-out records in the control plane: successes in batches; a client that failed is marked failed
/// with the error, and (in a fan-out, not in its own retrying job) gets a job of its own queued.
pub trait Recorder: Sync {
    type Item: Send + 'static;

    fn record(
        &self,
        control: &ControlPlane,
        batch: &[Self::Item],
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    fn mark_failed(
        &self,
        control: &ControlPlane,
        client: Uuid,
        error: &str,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;

    fn queue_retry(
        &self,
        control: &ControlPlane,
        client: Uuid,
        max_attempts: i32,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
}

/// Runs `work` on a client's database as [`Use::Scan`] work (through the route cache and the routing pool, as
/// the client's own role), connecting and working together within `deadline`, then returns the connection to the
/// pool. Work cut off (by the deadline, or because the caller's future is dropped: a request timeout, an aborted
/// task) abandons its connection, its query cancelled, never returned to the pool still busy. Cross-client counts
/// and streams and the statistics all reach a tenant through this.
pub async fn on_client<T>(
    data: &DataPlane,
    slug: &str,
    deadline: Duration,
    work: impl AsyncFnOnce(&mut PooledConn) -> Result<T, DataError>,
) -> Result<T, DataError> {
    let started = std::time::Instant::now();
    let connected = async {
        let slug = ClientSlug::parse(slug)?;
        data.connect_for(&slug, Use::Scan).await
    };
    let conn = match tokio::time::timeout(deadline, connected).await {
        Ok(connected) => connected?.1,
        Err(_) => return Err(DataError::Deadline(deadline)),
    };
    let mut guard = AbandonOnDrop(Some(conn));
    let remaining = deadline.saturating_sub(started.elapsed());
    let outcome = match guard.0.as_mut() {
        Some(conn) => tokio::time::timeout(remaining, work(conn)).await,
        None => return Err(DataError::Deadline(deadline)),
    };
    match outcome {
        Ok(result) => {
            // Finished: back to the pool.
            drop(guard.0.take());
            result
        }
        // The guard abandons the connection.
        Err(_) => Err(DataError::Deadline(deadline)),
    }
}

/// Abandons the connection it holds when dropped (see [`on_client`]).
struct AbandonOnDrop(Option<PooledConn>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.abandon();
        }
    }
}

/// How many clients a fan-out reached and how many failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub done: usize,
    pub failed: usize,
}

/// The fan-out jobs and the single-client steps they share. Cheap to clone.
#[derive(Clone)]
pub struct FanOut {
    control: ControlPlane,
    data: DataPlane,
    concurrency: usize,
    max_attempts: i32,
    /// Per-client deadline of cross-client work.
    deadline: Duration,
}

impl FanOut {
    pub fn new(control: ControlPlane, data: DataPlane, workers: &WorkerSettings) -> Self {
        Self {
            control,
            data,
            concurrency: usize::from(workers.fanout_concurrency).max(1),
            max_attempts: i32::from(workers.max_attempts),
            deadline: workers.fanout_client_deadline(),
        }
    }

    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// The registered database servers by id, read once per fan-out.
    async fn servers_by_id(&self) -> Result<HashMap<i64, ServerRecord>, ControlError> {
        Ok(self
            .control
            .list_servers()
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect())
    }

    /// A per-client job (`reconcile_fields`, `sync_templates`): the job's client gets `work` when `select` accepts
    /// its status and it is placed on a server; a failure is recorded on the client (the job queue retries the job
    /// itself) and returned.
    async fn for_job_client<T, Fut, R>(
        &self,
        job: &Job,
        name: &'static str,
        select: impl Fn(ClientStatus) -> bool,
        recorder: &R,
        work: impl FnOnce(ClientRecord, ServerRecord) -> Fut,
    ) -> Result<Option<T>, FanoutError>
    where
        Fut: Future<Output = Result<T, FanoutError>>,
        R: Recorder,
    {
        let id = job.client_id.ok_or(FanoutError::NoClient)?;
        let client = self.control.client_by_id(id).await?;
        let span = tracing::info_span!("fanout", job = name, client = %client.slug);
        async {
            let (Some(server_id), true) = (client.server_id, select(client.status)) else {
                return Ok(None);
            };
            let server = self.control.server(server_id).await?;
            match work(client, server).await {
                Ok(done) => Ok(Some(done)),
                Err(e) => {
                    let error = error_chain(&e);
                    if let Err(record) = recorder.mark_failed(&self.control, id, &error).await {
                        tracing::warn!(error = %record, "could not record the failure");
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs `work` for every live client on a registered server that `select` accepts, at most `concurrency` at
    /// a time, each in a span naming the job and the client. Successes are recorded in batches; a failure is
    /// logged and handed to `recorder.failed`.
    pub async fn over_clients<W, Fut, R>(
        &self,
        job: &'static str,
        select: impl Fn(&ClientRecord) -> bool,
        work: W,
        recorder: &R,
    ) -> Result<Outcome, ControlError>
    where
        W: Fn(ClientRecord, ServerRecord) -> Fut,
        Fut: Future<Output = Result<Vec<R::Item>, String>> + Send + 'static,
        R: Recorder,
    {
        let servers = self.servers_by_id().await?;
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for client in self.control.all_live_clients().await? {
            let Some(server) = client.server_id.and_then(|id| servers.get(&id)) else {
                continue;
            };
            if !select(&client) {
                continue;
            }
            if client.moving_to.is_some() {
                // A live move copies no DDL and keeps its own copy of the rows: this client gets its own job,
                // which runs after the move (one job of a client at a time).
                recorder
                    .queue_retry(&self.control, client.id, self.max_attempts)
                    .await?;
                continue;
            }
            let id = client.id;
            let span = tracing::info_span!("fanout", job, client = %client.slug);
            let running = work(client, server.clone());
            let permits = permits.clone();
            tasks.spawn(
                async move {
                    let _permit = permits.acquire_owned().await;
                    (id, running.await)
                }
                .instrument(span),
            );
        }
        let mut outcome = Outcome::default();
        let mut batch = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((client, result)) = joined else {
                tracing::error!(job, "a fan-out task panicked");
                continue;
            };
            match result {
                Ok(items) => {
                    outcome.done += 1;
                    batch.extend(items);
                }
                Err(error) => {
                    outcome.failed += 1;
                    tracing::warn!(job, %client, %error, "failed for one client; it retries on its own");
                    recorder.mark_failed(&self.control, client, &error).await?;
                    recorder
                        .queue_retry(&self.control, client, self.max_attempts)
                        .await?;
                }
            }
            if batch.len() >= RECORD_BATCH {
                recorder.record(&self.control, &batch).await?;
                batch.clear();
            }
        }
        recorder.record(&self.control, &batch).await?;
        Ok(outcome)
    }
}
