//! The client lifecycle jobs: provisioning (`provision.rs`), deletion with its archive (`delete.rs`), and
//! applying suspension to the tenant's role (`access.rs`).
//!
//! Each job is a list of idempotent steps that look at the real state before acting (a role that exists is
//! updated, a database that exists is kept), so a job interrupted anywhere — a crash, a lost lease, a failing
//! server — is finished by simply running it again. After every step the job records its progress and renews its
//! lease; if the lease was lost, it stops at once. The client becomes `active` only in the last step.
//!
//! Logs carry the client's slug (`client` span field); tenant passwords are derived (`tenant/credentials.rs`),
//! never stored or logged. Fields and templates of a new client are applied by the same single-client steps the
//! fan-out jobs use (`fanout/`).
//! Never: HTTP, or SQL of its own.

mod access;
mod delete;
mod drain;
mod move_sweep;
mod moves;
mod provision;

use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

pub use moves::{Phase, retired_name};
pub use provision::Step;

use crate::config::Settings;
use crate::control::jobs::Job;
use crate::control::{ControlError, ControlPlane};
use crate::domain::ClientStatus;
use crate::fanout::{FanOut, FanoutError};
use crate::tenant::TenantError;
use crate::tenant::migrate::MigrationSet;
use crate::tenant::targets::Targets;

/// Fault injection for tests: the provisioning job fails at, or "crashes" after, a step.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The step fails with an error (the normal retry path).
    pub fail_at: Option<Step>,
    /// After the step the job stops as if the process died: nothing more is recorded, the lease runs out.
    pub crash_after: Option<Step>,
    /// The step panics (a bug): the attempt fails, the worker lives on.
    pub panic_at: Option<Step>,
    /// A move "crashes" after this phase (`moves::Phase::as_str`): nothing more is recorded, the lease runs out.
    pub move_crash_after: Option<&'static str>,
    /// A move fails after this phase (an error: the move rolls back).
    pub move_fail_after: Option<&'static str>,
    /// SQL committed on the source's tenant database in the freeze after its roles are fenced and before its
    /// sessions end (the last commit a request with a connection already open could make).
    pub move_commit_in_fence: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    Fanout(#[from] FanoutError),
    #[error("the job has no client")]
    NoClient,
    #[error("archiving failed: {0}")]
    Archive(String),
    #[cfg(feature = "testing")]
    #[error("injected failure at step {0}")]
    Injected(&'static str),
    #[cfg(feature = "testing")]
    #[error("simulated crash after step {0}")]
    SimulatedCrash(&'static str),
    #[error("the claim on the job was lost (lease expired); another worker owns it now")]
    LostClaim,
    #[error("the job panicked: {0}")]
    Panicked(String),
    #[error("no answer from the database server within {0:?}")]
    TimedOut(std::time::Duration),
    /// A move that failed before its switch and was rolled back: the job fails for good (the source stayed the
    /// truth; retrying would start a move nobody asked for again).
    #[error("the move was rolled back: {0}")]
    MoveGaveUp(String),
    /// A drain that cannot go on (no other server takes clients): fails for good, like a rolled-back move.
    #[error("the drain stopped: {0}")]
    DrainStalled(String),
}

/// Runs lifecycle jobs against the control plane and the database servers.
#[derive(Clone)]
pub struct Provisioner {
    control: ControlPlane,
    targets: Targets,
    fanout: FanOut,
    archive_dir: PathBuf,
    bin_dir: Option<PathBuf>,
    lease: Duration,
    /// `workers.max_attempts`, for the jobs the lifecycle jobs queue themselves.
    max_attempts: i32,
    migrations: MigrationSet,
    #[cfg(feature = "testing")]
    faults: Faults,
}

impl Provisioner {
    pub fn new(settings: &Settings, fanout: FanOut, targets: Targets) -> Self {
        let e = &settings.embedded;
        Self {
            control: fanout.control().clone(),
            targets,
            fanout,
            archive_dir: settings.archive_dir(),
            bin_dir: (!e.bin_dir.as_os_str().is_empty()).then(|| e.bin_dir.clone()),
            lease: settings.workers.lease(),
            max_attempts: i32::from(settings.workers.max_attempts),
            migrations: MigrationSet::embedded().clone(),
            #[cfg(feature = "testing")]
            faults: Faults::default(),
        }
    }

    /// Provision with another migration set (tests of a newly added migration).
    pub fn with_migrations(mut self, migrations: MigrationSet) -> Self {
        self.migrations = migrations;
        self
    }

    pub fn migrations(&self) -> &MigrationSet {
        &self.migrations
    }

    #[cfg(feature = "testing")]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The client a job is for.
    async fn job_client(
        &self,
        job: &Job,
    ) -> Result<crate::control::clients::ClientRecord, ProvisionError> {
        let id = job.client_id.ok_or(ProvisionError::NoClient)?;
        Ok(self.control.client_by_id(id).await?)
    }

    /// Records a finished step and renews the lease; a lost claim stops the job.
    async fn checkpoint(&self, job: &Job, step: &'static str) -> Result<(), ProvisionError> {
        if self.control.job_step(job, step, self.lease).await? {
            Ok(())
        } else {
            Err(ProvisionError::LostClaim)
        }
    }

    /// Marks a client whose provisioning ran out of attempts as `failed`.
    pub async fn client_failed(&self, id: Uuid) -> Result<(), ProvisionError> {
        self.control
            .transition(id, ClientStatus::Provisioning, ClientStatus::Failed)
            .await?;
        Ok(())
    }
}
