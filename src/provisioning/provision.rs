//! The provisioning job: place → template → role → database → restrict → migrate → fields → activate, each
//! step idempotent and re-checking real state, the job's progress recorded after each.

use deadpool_postgres::tokio_postgres;
use tracing::Instrument;

use super::{ProvisionError, Provisioner};
use crate::control::ControlError;
use crate::control::clients::ClientRecord;
use crate::control::jobs::Job;
use crate::control::servers::ServerRecord;
use crate::domain::ClientStatus;
use crate::tenant::TenantError;
use crate::tenant::cluster::{self, admin_connect};
use crate::tenant::inner;
use crate::tenant::migrate::migrate_with;
use crate::tenant::targets::TenantNames;
use crate::tenant::template_db;

/// The steps of provisioning, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Choose a database server and record the database name (once).
    Place,
    /// Make sure the server's template database exists and is current.
    TemplateDb,
    /// Create (or reset) the tenant's login role.
    Role,
    /// Clone the tenant database from the template.
    Database,
    /// Revoke CONNECT from PUBLIC and hand the schema objects to the tenant role.
    Restrict,
    /// Catch up tenant migrations (normally nothing to do) and record the schema version.
    Migrate,
    /// Add the central custom fields (and any own ones) and the master templates to the new database.
    Fields,
    /// `provisioning` → `active`.
    Activate,
}

impl Step {
    pub const ALL: [Self; 8] = [
        Self::Place,
        Self::TemplateDb,
        Self::Role,
        Self::Database,
        Self::Restrict,
        Self::Migrate,
        Self::Fields,
        Self::Activate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Place => "place",
            Self::TemplateDb => "template",
            Self::Role => "role",
            Self::Database => "database",
            Self::Restrict => "restrict",
            Self::Migrate => "migrate",
            Self::Fields => "fields",
            Self::Activate => "activate",
        }
    }
}

/// What the steps of one run share: the client, its names, its server once placed, and one administrator
/// connection for the role, database and restrict steps.
pub(super) struct Run {
    pub(super) client: ClientRecord,
    pub(super) names: TenantNames,
    pub(super) server: Option<ServerRecord>,
    pub(super) admin: Option<tokio_postgres::Client>,
}

impl Run {
    fn server(&self) -> Result<&ServerRecord, ProvisionError> {
        Ok(self.server.as_ref().ok_or(ControlError::NotFound)?)
    }
}

impl Provisioner {
    /// The provisioning job. Returns early, successfully, if the client is no longer `provisioning` (for
    /// example, deletion was requested meanwhile).
    pub async fn provision(&self, job: &Job) -> Result<(), ProvisionError> {
        let client = self.job_client(job).await?;
        let span = tracing::info_span!("provision", client = %client.slug, attempt = job.attempt);
        self.provision_steps(job, client).instrument(span).await
    }

    async fn provision_steps(&self, job: &Job, client: ClientRecord) -> Result<(), ProvisionError> {
        if client.status != ClientStatus::Provisioning {
            tracing::info!(status = ?client.status, "client is no longer provisioning; nothing to do");
            return Ok(());
        }
        let mut run = Run {
            names: self.targets.names(client.id),
            client,
            server: None,
            admin: None,
        };
        for step in Step::ALL {
            #[cfg(feature = "testing")]
            self.inject_before(step)?;
            let started = std::time::Instant::now();
            self.step(step, &mut run).await?;
            self.checkpoint(job, step.as_str()).await?;
            tracing::debug!(
                step = step.as_str(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "step done"
            );
            #[cfg(feature = "testing")]
            if self.faults.crash_after == Some(step) {
                return Err(ProvisionError::SimulatedCrash(step.as_str()));
            }
        }
        Ok(())
    }

    #[cfg(feature = "testing")]
    fn inject_before(&self, step: Step) -> Result<(), ProvisionError> {
        if self.faults.fail_at == Some(step) {
            return Err(ProvisionError::Injected(step.as_str()));
        }
        if self.faults.panic_at == Some(step) {
            panic!("injected panic at step {}", step.as_str());
        }
        Ok(())
    }

    /// One step, idempotent.
    pub(super) async fn step(&self, step: Step, run: &mut Run) -> Result<(), ProvisionError> {
        let id = run.client.id;
        let names = run.names.clone();
        match step {
            Step::Place => {
                // Sub-clients are placed when they are created (`POST /v1/clients`); the master at first start
                // is placed here. Either way the database name is recorded here, once.
                if run.client.db_name.is_none() {
                    let server_id = match run.client.server_id {
                        Some(id) => id,
                        None => self.control.choose_server().await?.id,
                    };
                    run.client = self
                        .control
                        .place_client(id, server_id, &names.database)
                        .await?;
                }
                let server_id = run.client.server_id.ok_or(ControlError::NotFound)?;
                run.server = Some(self.control.server(server_id).await?);
            }
            Step::TemplateDb => {
                let server = run.server()?;
                if server.template_version < self.migrations.latest() {
                    let admin = self.targets.admin(server)?;
                    let outcome = template_db::ensure_template(
                        &admin,
                        self.targets.template_db(),
                        &self.migrations,
                    )
                    .await?;
                    self.control
                        .set_template_version(server.id, outcome.to)
                        .await?;
                }
            }
            Step::Role => {
                let verifier = self.scram(self.targets.password_for(id)).await?;
                let admin = self.admin(run).await?;
                cluster::ensure_login_role(admin, &names.role, &verifier).await?;
            }
            Step::Database => {
                let admin = self.admin(run).await?;
                let template_db = self.targets.template_db();
                if template_db::clone_from_template(admin, template_db, &names.database).await? {
                    tracing::info!(database = %names.database, "created the tenant database");
                }
            }
            Step::Restrict => {
                let admin = self.admin(run).await?;
                cluster::restrict_connect(admin, &names.database, &names.role).await?;
                // The database's second role, for inner clients (owns nothing, sees one slice at a time).
                let verifier = self.scram(self.targets.inner_password_for(id)).await?;
                inner::ensure_inner_role(
                    admin,
                    &names.database,
                    &inner::inner_role(&names.role),
                    &verifier,
                    true,
                )
                .await?;
                let tenant_db = self.targets.admin_on_tenant(run.server()?, id)?;
                template_db::hand_over(&tenant_db, self.targets.template_db(), &names.role).await?;
            }
            Step::Migrate => {
                let target = self.targets.admin_on_tenant(run.server()?, id)?;
                let outcome = migrate_with(&target, Some(&names.role), &self.migrations)
                    .await
                    .map_err(|f| f.error)?;
                self.control.set_schema_version(id, outcome.to).await?;
                // Ready for inner clients (instant on a fresh clone: nothing to fill in, empty indexes).
                let db = target.connect().await.map_err(TenantError::postgres(
                    "connecting to the new tenant database to prepare it for inner clients",
                ))?;
                inner::prepare(&db).await?;
                self.control.set_inner_ready(id).await?;
            }
            Step::Fields => {
                let server = run.server()?;
                self.fanout.apply_fields(id, server).await?;
                // And every current master template, so the client starts with them.
                let target = self.targets.tenant(server, id)?;
                let mut db = target.connect().await.map_err(TenantError::postgres(
                    "connecting to the new tenant database to copy the templates",
                ))?;
                self.fanout.copy_templates(id, &mut db).await?;
            }
            Step::Activate => {
                if self
                    .control
                    .transition(id, ClientStatus::Provisioning, ClientStatus::Active)
                    .await?
                {
                    tracing::info!("client is active");
                }
            }
        }
        Ok(())
    }

    /// The `prepare_inner` job: a database provisioned before tenant migration V7 gets its second role (able to
    /// log in while the client is active) and its lower-case e-mail column filled in and indexed (batches, indexes
    /// built CONCURRENTLY), then the client is marked ready for inner clients. Idempotent.
    pub async fn prepare_inner(&self, job: &Job) -> Result<(), ProvisionError> {
        let client = self.job_client(job).await?;
        let span = tracing::info_span!("prepare_inner", client = %client.slug);
        async {
            let Some(server_id) = client.server_id else {
                return Ok(());
            };
            if client.inner_ready
                || client.status == ClientStatus::Deleting
                || client.status == ClientStatus::Deleted
            {
                return Ok(());
            }
            let server = self.control.server(server_id).await?;
            let names = self.targets.names(client.id);
            let verifier = self
                .scram(self.targets.inner_password_for(client.id))
                .await?;
            let admin = admin_connect(&self.targets.admin(&server)?).await?;
            inner::ensure_inner_role(
                &admin,
                &names.database,
                &inner::inner_role(&names.role),
                &verifier,
                client.status == ClientStatus::Active,
            )
            .await?;
            let target = self.targets.admin_on_tenant(&server, client.id)?;
            let db = target.connect().await.map_err(TenantError::postgres(
                "connecting to the tenant database to prepare it for inner clients",
            ))?;
            let filled = inner::prepare(&db).await?;
            self.control.set_inner_ready(client.id).await?;
            tracing::info!(filled, "the database is ready for inner clients");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// The SCRAM verifier of a derived password (PBKDF2 is CPU work: off the async threads).
    pub(super) async fn scram(
        &self,
        password: crate::db::Secret,
    ) -> Result<crate::db::Secret, ProvisionError> {
        let iterations = self.targets.settings().scram_iterations;
        tokio::task::spawn_blocking(move || cluster::scram_verifier(&password, iterations))
            .await
            .map_err(|e| ProvisionError::Panicked(e.to_string()))
    }

    /// The run's administrator connection, opened on first use.
    async fn admin<'r>(
        &self,
        run: &'r mut Run,
    ) -> Result<&'r tokio_postgres::Client, ProvisionError> {
        if run.admin.is_none() {
            let target = self.targets.admin(run.server()?)?;
            run.admin = Some(admin_connect(&target).await?);
        }
        Ok(run.admin.as_ref().ok_or(ControlError::NotFound)?)
    }
}
