//! The client lifecycle jobs: provisioning, deletion, and applying suspension to the tenant's role.
//!
//! Each job is a list of idempotent steps that look at the real state before acting (a role that exists is
//! updated, a database that exists is kept), so a job interrupted anywhere — a crash, a lost lease, a failing
//! server — is finished by simply running it again. After every step the job records its progress and renews its
//! lease; if the lease was lost, it stops at once. The client becomes `active` only in the last step.
//!
//! Logs carry the client's slug (`client` span field); tenant passwords are derived (`credentials.rs`), never
//! stored or logged.

pub mod credentials;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use crate::config::{Settings, TenantSettings};
use crate::control::clients::Client;
use crate::control::fields::FieldRecord;
use crate::control::jobs::Job;
use crate::control::servers::ServerRecord;
use crate::control::{ControlError, ControlPlane};
use crate::data::schema::{Field, FieldType};
use crate::db::PgTarget;
use crate::domain::ClientStatus;
use crate::embedded::Binaries;
use crate::tenant::TenantError;
use crate::tenant::cluster::{self, admin_connect};
use crate::tenant::fields;
use crate::tenant::migrate::{MigrationSet, migrate_with};
use crate::tenant::template::{self, TemplateNames};
use credentials::Credentials;

/// The steps of provisioning, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Choose a database server and record the database name (once).
    Place,
    /// Make sure the server's template database exists and is current.
    Template,
    /// Create (or reset) the tenant's login role.
    Role,
    /// Clone the tenant database from the template.
    Database,
    /// Revoke CONNECT from PUBLIC and hand the schema objects to the tenant role.
    Restrict,
    /// Catch up tenant migrations (normally nothing to do) and record the schema version.
    Migrate,
    /// Add the central custom fields (and any own ones) to the new database.
    Fields,
    /// `provisioning` → `active`.
    Activate,
}

impl Step {
    pub const ALL: [Self; 8] = [
        Self::Place,
        Self::Template,
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
            Self::Template => "template",
            Self::Role => "role",
            Self::Database => "database",
            Self::Restrict => "restrict",
            Self::Migrate => "migrate",
            Self::Fields => "fields",
            Self::Activate => "activate",
        }
    }
}

/// Fault injection for tests: the provisioning job fails at, or "crashes" after, a step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The step fails with an error (the normal retry path).
    pub fail_at: Option<Step>,
    /// After the step the job stops as if the process died: nothing more is recorded, the lease runs out.
    pub crash_after: Option<Step>,
    /// The step panics (a bug): the attempt fails, the worker lives on.
    pub panic_at: Option<Step>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("the job has no client")]
    NoClient,
    #[error("database server {0}: its admin URL is not valid: {1}")]
    BadServer(String, String),
    #[error("archiving failed: {0}")]
    Archive(String),
    #[error("injected failure at step {0}")]
    Injected(&'static str),
    #[error("simulated crash after step {0}")]
    SimulatedCrash(&'static str),
    #[error("the claim on the job was lost (lease expired); another worker owns it now")]
    LostClaim,
    #[error("the job panicked: {0}")]
    Panicked(String),
    #[error("field {0}: {1}")]
    BadField(String, String),
    #[error("template sync: {0}")]
    Sync(String),
}

/// Names of one client's database objects, all derived from its immutable id.
#[derive(Debug, Clone)]
pub struct TenantNames {
    pub database: String,
    pub role: String,
}

impl TenantNames {
    pub fn new(settings: &TenantSettings, client_id: Uuid) -> Self {
        let name = format!("{}{}", settings.db_prefix, client_id.as_simple());
        Self {
            database: name.clone(),
            role: name,
        }
    }
}

/// Runs lifecycle jobs against the control plane and the database servers.
#[derive(Clone)]
pub struct Provisioner {
    control: ControlPlane,
    control_target: PgTarget,
    tenants: TenantSettings,
    templates: TemplateNames,
    credentials: Credentials,
    archive_dir: PathBuf,
    bin_dir: Option<PathBuf>,
    lease: Duration,
    faults: Faults,
    migrations: MigrationSet,
}

impl Provisioner {
    pub fn new(
        settings: &Settings,
        control: ControlPlane,
        control_target: PgTarget,
        credentials: Credentials,
    ) -> Self {
        let e = &settings.embedded;
        Self {
            control,
            control_target,
            templates: TemplateNames::new(
                &settings.tenants.db_prefix,
                &settings.tenants.template_db,
            ),
            tenants: settings.tenants.clone(),
            credentials,
            archive_dir: settings.archive_dir(),
            bin_dir: (!e.bin_dir.as_os_str().is_empty()).then(|| e.bin_dir.clone()),
            lease: settings.workers.lease(),
            faults: Faults::default(),
            migrations: MigrationSet::embedded().clone(),
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

    pub fn templates(&self) -> &TemplateNames {
        &self.templates
    }

    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn names(&self, client_id: Uuid) -> TenantNames {
        TenantNames::new(&self.tenants, client_id)
    }

    /// The administrator's target on a server's maintenance database.
    pub fn admin_target(&self, server: &ServerRecord) -> Result<PgTarget, ProvisionError> {
        match &server.admin_url {
            None => Ok(self.control_target.with_dbname("postgres")),
            Some(url) => PgTarget::parse_url(url)
                .map(|t| t.with_dbname("postgres"))
                .map_err(|e| ProvisionError::BadServer(server.name.clone(), e)),
        }
    }

    /// How the tenant itself connects: its own role, its own database.
    pub fn tenant_target(
        &self,
        server: &ServerRecord,
        client_id: Uuid,
    ) -> Result<PgTarget, ProvisionError> {
        let names = self.names(client_id);
        Ok(self
            .admin_target(server)?
            .with_dbname(&names.database)
            .with_credentials(&names.role, self.credentials.password_for(client_id)))
    }

    async fn checkpoint(&self, job: &Job, step: &'static str) -> Result<(), ProvisionError> {
        if self.control.job_step(job, step, self.lease).await? {
            Ok(())
        } else {
            Err(ProvisionError::LostClaim)
        }
    }

    /// The provisioning job. Returns early, successfully, if the client is no longer `provisioning` (for
    /// example, deletion was requested meanwhile).
    pub async fn provision(&self, job: &Job) -> Result<(), ProvisionError> {
        let id = job.client_id.ok_or(ProvisionError::NoClient)?;
        let client = self.control.client_by_id(id).await?;
        let span = tracing::info_span!("provision", client = %client.slug, attempt = job.attempt);
        self.provision_steps(job, client).instrument(span).await
    }

    async fn provision_steps(&self, job: &Job, mut client: Client) -> Result<(), ProvisionError> {
        let id = client.id;
        if client.status != ClientStatus::Provisioning {
            tracing::info!(status = ?client.status, "client is no longer provisioning; nothing to do");
            return Ok(());
        }
        let names = self.names(id);
        let mut server = None;
        // One administrator connection serves the role, database and restrict steps.
        let mut admin = None;
        for step in Step::ALL {
            if self.faults.fail_at == Some(step) {
                return Err(ProvisionError::Injected(step.as_str()));
            }
            if self.faults.panic_at == Some(step) {
                panic!("injected panic at step {}", step.as_str());
            }
            let started = std::time::Instant::now();
            match step {
                Step::Place => {
                    if client.server_id.is_none() {
                        let chosen = self.control.choose_server().await?;
                        client = self
                            .control
                            .place_client(id, chosen.id, &names.database)
                            .await?;
                    }
                    let server_id = client.server_id.ok_or(ControlError::NotFound)?;
                    server = Some(self.control.server(server_id).await?);
                }
                Step::Template => {
                    let server = server.as_ref().ok_or(ControlError::NotFound)?;
                    if server.template_version < self.migrations.latest() {
                        let admin = self.admin_target(server)?;
                        let outcome =
                            template::ensure_template(&admin, &self.templates, &self.migrations)
                                .await?;
                        self.control
                            .set_template_version(server.id, outcome.to)
                            .await?;
                    }
                }
                Step::Role => {
                    let server = server.as_ref().ok_or(ControlError::NotFound)?;
                    let admin = match &admin {
                        Some(admin) => admin,
                        None => admin.insert(admin_connect(&self.admin_target(server)?).await?),
                    };
                    // PBKDF2 for the SCRAM verifier is CPU work: off the async threads.
                    let password = self.credentials.password_for(id);
                    let iterations = self.tenants.scram_iterations;
                    let verifier = tokio::task::spawn_blocking(move || {
                        cluster::scram_verifier(&password, iterations)
                    })
                    .await
                    .map_err(|e| ProvisionError::Panicked(e.to_string()))?;
                    cluster::ensure_login_role(admin, &names.role, &verifier).await?;
                }
                Step::Database => {
                    let server = server.as_ref().ok_or(ControlError::NotFound)?;
                    let admin = match &admin {
                        Some(admin) => admin,
                        None => admin.insert(admin_connect(&self.admin_target(server)?).await?),
                    };
                    if template::clone_from_template(admin, &self.templates, &names.database)
                        .await?
                    {
                        tracing::info!(database = %names.database, "created the tenant database");
                    }
                }
                Step::Restrict => {
                    let server = server.as_ref().ok_or(ControlError::NotFound)?;
                    let admin_target = self.admin_target(server)?;
                    let admin = match &admin {
                        Some(admin) => admin,
                        None => admin.insert(admin_connect(&admin_target).await?),
                    };
                    cluster::restrict_connect(admin, &names.database, &names.role).await?;
                    template::hand_over(
                        &admin_target.with_dbname(&names.database),
                        &self.templates,
                        &names.role,
                    )
                    .await?;
                }
                Step::Migrate => {
                    let server = server.as_ref().ok_or(ControlError::NotFound)?;
                    let target = self.admin_target(server)?.with_dbname(&names.database);
                    let outcome = migrate_with(&target, Some(&names.role), &self.migrations)
                        .await
                        .map_err(|f| f.error)?;
                    self.control.set_schema_version(id, outcome.to).await?;
                }
                Step::Fields => {
                    let server = server.as_ref().ok_or(ControlError::NotFound)?;
                    self.apply_fields(id, server).await?;
                    // And every current master template, so the client starts with them.
                    let target = self.tenant_target(server, id)?;
                    let mut db = target.connect().await.map_err(TenantError::postgres(
                        "connecting to the new tenant database to copy the templates",
                    ))?;
                    self.copy_templates(id, &mut db).await?;
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
            self.checkpoint(job, step.as_str()).await?;
            tracing::debug!(
                step = step.as_str(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "step done"
            );
            if self.faults.crash_after == Some(step) {
                return Err(ProvisionError::SimulatedCrash(step.as_str()));
            }
        }
        Ok(())
    }

    /// Marks a client whose provisioning ran out of attempts as `failed`.
    pub async fn client_failed(&self, id: Uuid) -> Result<(), ProvisionError> {
        self.control
            .transition(id, ClientStatus::Provisioning, ClientStatus::Failed)
            .await?;
        Ok(())
    }

    /// The deletion job: optional archive, drop the database (ending its sessions), drop the role, tombstone.
    /// Returns `{"archive": path}` when an archive was written.
    pub async fn delete(&self, job: &Job) -> Result<Option<serde_json::Value>, ProvisionError> {
        let id = job.client_id.ok_or(ProvisionError::NoClient)?;
        let client = self.control.client_by_id(id).await?;
        let span = tracing::info_span!("delete", client = %client.slug, attempt = job.attempt);
        self.delete_steps(job, client).instrument(span).await
    }

    async fn delete_steps(
        &self,
        job: &Job,
        client: Client,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let id = client.id;
        if client.status != ClientStatus::Deleting {
            tracing::info!(status = ?client.status, "client is not being deleted; nothing to do");
            return Ok(None);
        }
        let names = self.names(id);
        let mut archive = None;
        if let Some(server_id) = client.server_id {
            let server = self.control.server(server_id).await?;
            let admin_target = self.admin_target(&server)?;
            let admin = admin_connect(&admin_target).await?;
            let wants_archive = job.payload["archive"].as_bool().unwrap_or(false);
            if wants_archive {
                let exists = cluster::database_exists(&admin, &names.database).await?;
                let database = admin_target.with_dbname(&names.database);
                if let Some(path) = self.archive(&client, job, &database, exists).await? {
                    archive = Some(path.display().to_string());
                }
                self.checkpoint(job, "archive").await?;
            }
            cluster::drop_database(&admin, &names.database).await?;
            self.checkpoint(job, "drop_database").await?;
            cluster::drop_role(&admin, &names.role).await?;
            self.checkpoint(job, "drop_role").await?;
        }
        self.control
            .transition(id, ClientStatus::Deleting, ClientStatus::Deleted)
            .await?;
        tracing::info!(archived = archive.is_some(), "client deleted");
        Ok(archive.map(|path| serde_json::json!({ "archive": path })))
    }

    /// `pg_dump -Fc` of the tenant database into the archive directory, written under a temporary name and
    /// renamed when complete, so a file with the final name is always a whole dump. A retry of the same job
    /// reuses a finished file.
    ///
    /// A retry (of this job) first looks for its finished file and checks it with `pg_restore --list`, so the
    /// result names the archive even when the database was already dropped by the attempt that wrote it.
    async fn archive(
        &self,
        client: &Client,
        job: &Job,
        database: &PgTarget,
        exists: bool,
    ) -> Result<Option<PathBuf>, ProvisionError> {
        let fail = |e: String| ProvisionError::Archive(e);
        // Archives hold personal data: the directory and files are private to this service's user.
        tokio::fs::create_dir_all(&self.archive_dir)
            .await
            .map_err(|e| fail(format!("creating {}: {e}", self.archive_dir.display())))?;
        let private_dir = std::fs::Permissions::from_mode(0o700);
        tokio::fs::set_permissions(&self.archive_dir, private_dir)
            .await
            .map_err(|e| fail(format!("restricting {}: {e}", self.archive_dir.display())))?;
        let file = self.archive_dir.join(format!(
            "{}-{}-{}.dump",
            client.slug,
            client.id.as_simple(),
            &job.id.as_simple().to_string()[..8]
        ));
        let bin_dir = self.bin_dir.clone();
        let binaries =
            tokio::task::spawn_blocking(move || Binaries::discover(bin_dir.as_deref(), None))
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(e.to_string()))?;
        if tokio::fs::try_exists(&file).await.unwrap_or(false) {
            let check = tokio::process::Command::new(binaries.tool("pg_restore"))
                .arg("--list")
                .arg(&file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            if check.is_ok_and(|s| s.success()) {
                return Ok(Some(file));
            }
            tracing::warn!(file = %file.display(), "an earlier archive of this job is unreadable; dumping again");
        }
        if !exists {
            tracing::warn!("the database is already gone; there is nothing left to archive");
            return Ok(None);
        }
        // Per attempt, so a dump of an attempt that lost its claim can never write into this one's file.
        let partial = file.with_extension(format!("dump.partial-{}", job.attempt));
        let mut command = tokio::process::Command::new(binaries.tool("pg_dump"));
        command
            .arg("--format=custom")
            .arg("--no-password")
            .arg(format!("--file={}", partial.display()))
            .arg(format!("--host={}", database.host_arg()))
            .arg(format!("--port={}", database.port()))
            .arg(format!("--username={}", database.user()))
            .arg(format!("--dbname={}", database.dbname()))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(password) = database.password() {
            command.env("PGPASSWORD", password.expose());
        }
        let output = command
            .output()
            .await
            .map_err(|e| fail(format!("running pg_dump: {e}")))?;
        if !output.status.success() {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(fail(format!(
                "pg_dump exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|e| fail(format!("restricting the archive: {e}")))?;
        tokio::fs::rename(&partial, &file)
            .await
            .map_err(|e| fail(format!("renaming the archive: {e}")))?;
        tracing::info!(file = %file.display(), "archived the tenant database");
        Ok(Some(file))
    }

    /// Runs a `reconcile_fields` job: the client's database gets exactly its desired fields. A client without a
    /// live database has nothing to reconcile (provisioning applies the fields itself).
    pub async fn reconcile_fields(
        &self,
        job: &Job,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let id = job.client_id.ok_or(ProvisionError::NoClient)?;
        let client = self.control.client_by_id(id).await?;
        let span = tracing::info_span!("reconcile_fields", client = %client.slug);
        async {
            let (Some(server_id), true) = (
                client.server_id,
                matches!(
                    client.status,
                    ClientStatus::Active | ClientStatus::Suspended
                ),
            ) else {
                return Ok(None);
            };
            let server = self.control.server(server_id).await?;
            match self.apply_fields(id, &server).await {
                Ok(done) => Ok(Some(serde_json::json!({
                    "added": done.added, "changed": done.changed, "dropped": done.dropped,
                }))),
                Err(e) => {
                    let error = crate::http::error::error_chain(&e);
                    if let Err(record) = self.control.fields_failed(id, &error).await {
                        tracing::warn!(error = %record, "could not record the failure");
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Reconciles one client's fields now and records them applied (the request path of a client's own field,
    /// the provisioning step and the job all end here).
    pub async fn apply_fields(
        &self,
        id: Uuid,
        server: &ServerRecord,
    ) -> Result<fields::Reconciled, ProvisionError> {
        let desired = self.control.desired_fields(id).await?;
        let (done, applied) = self.reconcile_client_fields(id, server, &desired).await?;
        self.control.fields_applied(&applied).await?;
        Ok(done)
    }

    /// Reconciles one client's fields; returns what changed and the (client, field, version) pairs now applied
    /// (for the caller to record, one by one or in batches).
    async fn reconcile_client_fields(
        &self,
        id: Uuid,
        server: &ServerRecord,
        desired: &[FieldRecord],
    ) -> Result<(fields::Reconciled, Vec<(Uuid, i64, i32)>), ProvisionError> {
        let specs = desired
            .iter()
            .map(field_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let names = self.names(id);
        let target = self.admin_target(server)?.with_dbname(&names.database);
        let done = fields::reconcile(&target, &names.role, &specs).await?;
        if !done.is_empty() {
            tracing::info!(added = ?done.added, changed = ?done.changed, dropped = ?done.dropped, "fields reconciled");
        }
        Ok((
            done,
            desired.iter().map(|f| (id, f.id, f.version)).collect(),
        ))
    }

    /// Runs a `propagate_fields` job: every active and suspended client's fields reconciled, `concurrency` at a
    /// time, results recorded in batches; a client that fails is marked failed and gets a `reconcile_fields` job
    /// of its own (retries with backoff), so it never holds up the others.
    pub async fn propagate_fields(
        &self,
        concurrency: usize,
        max_attempts: i32,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let servers: std::collections::HashMap<i64, ServerRecord> = self
            .control
            .list_servers()
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        // Every field once (central and all clients' own), not a query per client.
        let all_fields = self.control.all_fields().await?;
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for client in self.control.all_live_clients().await? {
            let (Some(server), true) = (
                client.server_id.and_then(|id| servers.get(&id)).cloned(),
                matches!(
                    client.status,
                    ClientStatus::Active | ClientStatus::Suspended
                ),
            ) else {
                continue;
            };
            let desired: Vec<FieldRecord> = all_fields
                .iter()
                .filter(|f| f.client_id.is_none_or(|owner| owner == client.id))
                .cloned()
                .collect();
            let (this, permits) = (self.clone(), permits.clone());
            let span = tracing::info_span!("reconcile_fields", client = %client.slug);
            tasks.spawn(
                async move {
                    let _permit = permits.acquire_owned().await;
                    let result = this
                        .reconcile_client_fields(client.id, &server, &desired)
                        .await;
                    (client.id, result)
                }
                .instrument(span),
            );
        }
        let (mut reconciled, mut failed) = (0usize, 0usize);
        let mut batch = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((client, result)) = joined else {
                tracing::error!("a field reconcile task panicked");
                continue;
            };
            match result {
                Ok((_, applied)) => {
                    reconciled += 1;
                    batch.extend(applied);
                }
                Err(e) => {
                    failed += 1;
                    let error = crate::http::error::error_chain(&e);
                    tracing::warn!(%client, %error, "field reconcile failed; the client retries on its own");
                    self.control.fields_failed(client, &error).await?;
                    self.control
                        .enqueue_field_reconcile(client, max_attempts)
                        .await?;
                }
            }
            if batch.len() >= 64 {
                self.control.fields_applied(&batch).await?;
                batch.clear();
            }
        }
        self.control.fields_applied(&batch).await?;
        Ok(Some(
            serde_json::json!({ "reconciled": reconciled, "failed": failed }),
        ))
    }

    /// Runs a `sync_templates` job through the routing pool: the client's inherited copies follow the master's
    /// newest versions. Only active clients are synced (a resumed client is synced again on resume's re-queue).
    pub async fn sync_templates(
        &self,
        router: &crate::tenant::pool::Router,
        job: &Job,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let id = job.client_id.ok_or(ProvisionError::NoClient)?;
        let client = self.control.client_by_id(id).await?;
        let span = tracing::info_span!("sync_templates", client = %client.slug);
        async {
            let (Some(server_id), ClientStatus::Active) = (client.server_id, client.status) else {
                return Ok(None);
            };
            let server = self.control.server(server_id).await?;
            let route = crate::tenant::pool::TenantRoute {
                client_id: id,
                server_id,
                target: self.tenant_target(&server, id)?,
            };
            let outcome = async {
                let mut conn = router
                    .acquire(&route)
                    .await
                    .map_err(|e| ProvisionError::Sync(e.to_string()))?;
                self.copy_templates(id, conn.client_mut()).await
            }
            .await;
            match outcome {
                Ok(applied) => Ok(Some(serde_json::json!({ "applied": applied }))),
                Err(e) => {
                    let error = crate::http::error::error_chain(&e);
                    if let Err(record) = self.control.templates_failed(id, &error).await {
                        tracing::warn!(error = %record, "could not record the failure");
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Syncs the master templates into one tenant database and records the result; returns the templates this
    /// run changed.
    async fn copy_templates(
        &self,
        id: Uuid,
        db: &mut deadpool_postgres::tokio_postgres::Client,
    ) -> Result<Vec<Uuid>, ProvisionError> {
        let masters = self.control.desired_templates().await?;
        if masters.is_empty() {
            return Ok(Vec::new());
        }
        let synced = crate::data::templates::sync(db, &masters)
            .await
            .map_err(|e| ProvisionError::Sync(e.to_string()))?;
        let states: Vec<_> = synced
            .iter()
            .map(|s| (id, s.template, s.status, s.version))
            .collect();
        self.control.templates_synced(&states).await?;
        let applied: Vec<Uuid> = synced
            .iter()
            .filter(|s| s.applied)
            .map(|s| s.template)
            .collect();
        if !applied.is_empty() {
            tracing::info!(templates = applied.len(), "templates synced");
        }
        Ok(applied)
    }

    /// Applies the client's current status to its role: `suspended` → NOLOGIN (and its sessions end), otherwise
    /// LOGIN. Re-reads the status afterwards and applies again if it changed meanwhile.
    pub async fn sync_access(&self, job: &Job) -> Result<(), ProvisionError> {
        let id = job.client_id.ok_or(ProvisionError::NoClient)?;
        let client = self.control.client_by_id(id).await?;
        let span = tracing::info_span!("sync_access", client = %client.slug);
        self.sync_access_steps(client).instrument(span).await
    }

    async fn sync_access_steps(&self, mut client: Client) -> Result<(), ProvisionError> {
        let id = client.id;
        loop {
            let Some(server_id) = client.server_id else {
                return Ok(());
            };
            if !client.status.has_live_database() {
                return Ok(());
            }
            let login = client.status != ClientStatus::Suspended;
            let server = self.control.server(server_id).await?;
            let admin = admin_connect(&self.admin_target(&server)?).await?;
            cluster::set_role_login(&admin, &self.names(id).role, login).await?;
            let now = self.control.client_by_id(id).await?;
            if now.status == client.status {
                tracing::info!(login, "applied the client's access state");
                return Ok(());
            }
            client = now;
        }
    }
}

/// The tenant-side description of a control-plane field.
pub fn field_spec(field: &FieldRecord) -> Result<fields::FieldSpec, ProvisionError> {
    let bad = |what: &str| ProvisionError::BadField(field.name.clone(), what.to_owned());
    let ty = FieldType::parse(&field.data_type, field.length).ok_or_else(|| bad("unknown type"))?;
    let default = match &field.default_value {
        None => None,
        Some(json) => Some(
            Field::custom(&field.name, ty, field.personal)
                .parse_json(json)
                .map_err(|e| bad(&format!("default {e}")))?,
        ),
    };
    Ok(fields::FieldSpec {
        name: field.name.clone(),
        ty,
        required: field.required,
        default,
        personal: field.personal,
        origin: if field.client_id.is_some() {
            "client"
        } else {
            "central"
        },
    })
}
