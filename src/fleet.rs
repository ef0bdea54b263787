//! The fleet migration: every server's template database first, then every tenant database (active and
//! suspended clients; never deleted ones), through a work queue with bounded concurrency overall and per
//! database server.
//!
//! The control plane records each tenant's schema version, so tenants already current are skipped without a
//! connection (a no-op run over thousands of tenants costs one query). `verify` connects to every tenant instead
//! and compares its real history with the migrations: drift is corrected in the registry, an edited (divergent)
//! or unknown migration is reported and nothing is applied there. A failure on one tenant never stops the others.
//! Each tenant is migrated under its own advisory lock (`tenant/migrate.rs`), so two runs, or a run and a
//! provisioning job, never migrate one database at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::control::clients::ClientRecord;
use crate::control::servers::ServerRecord;
use crate::control::{ControlError, ControlPlane};
use crate::db::PgTarget;
use crate::domain::ClientSlug;
use crate::tenant::TenantError;
use crate::tenant::migrate::{MigrationSet, Verification, migrate_with, read_history};
use crate::tenant::targets::Targets;
use crate::tenant::template_db;

/// What a fleet run needs: the registry, where tenants live, and the migrations to bring them to.
#[derive(Clone)]
pub struct Fleet {
    control: ControlPlane,
    targets: Targets,
    migrations: MigrationSet,
}

impl Fleet {
    /// With the migrations embedded in this binary (`tenant_migrations/`).
    pub fn new(control: ControlPlane, targets: Targets) -> Self {
        Self {
            control,
            targets,
            migrations: MigrationSet::embedded().clone(),
        }
    }

    /// With another migration set (tests of a newly added migration).
    pub fn with_migrations(mut self, migrations: MigrationSet) -> Self {
        self.migrations = migrations;
        self
    }

    pub fn migrations(&self) -> &MigrationSet {
        &self.migrations
    }
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Tenants migrated at once overall.
    pub concurrency: usize,
    /// Tenants migrated at once on one database server.
    pub per_server: usize,
    /// Only these clients (empty = all).
    pub only: Vec<ClientSlug>,
    /// Report what would run; change nothing.
    pub dry_run: bool,
    /// Connect to every tenant and compare its real history instead of trusting the registry.
    pub verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("no such client(s): {0}")]
    UnknownClients(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Migrations were applied.
    Migrated,
    /// Nothing to do.
    Current,
    /// Dry run: these migrations would be applied.
    WouldMigrate,
    /// The history has edited or unknown migrations; nothing was applied.
    Divergent,
    Failed,
    /// A live move of the tenant runs (logical replication copies no DDL): skipped, nothing connected. The move
    /// builds its target at the latest migrations; the next run finds it current or migrates it.
    Moving,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantResult {
    #[serde(skip)]
    pub client_id: uuid::Uuid,
    /// The version to record in the registry (recorded in batches by the run).
    #[serde(skip)]
    pub record: Option<i32>,
    pub client: String,
    pub client_status: &'static str,
    pub server: String,
    pub database: String,
    pub outcome: Outcome,
    pub from: i32,
    pub to: i32,
    /// Applied (or, in a dry run, pending) migrations.
    pub migrations: Vec<String>,
    pub duration_ms: f64,
    /// Whether the run opened a connection to this tenant.
    pub connected: bool,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TemplateResult {
    pub server: String,
    pub from: i32,
    pub to: i32,
    pub outcome: Outcome,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub latest: i32,
    pub templates: Vec<TemplateResult>,
    pub tenants: Vec<TenantResult>,
    pub migrated: usize,
    pub current: usize,
    pub would_migrate: usize,
    pub divergent: usize,
    pub failed: usize,
    /// Skipped: a live move runs.
    pub moving: usize,
    pub duration_ms: f64,
}

impl FleetReport {
    /// True when nothing failed or diverged (the command's exit status).
    pub fn ok(&self) -> bool {
        self.failed == 0
            && self.divergent == 0
            && self.templates.iter().all(|t| t.outcome != Outcome::Failed)
    }
}

/// Runs the fleet migration with the fleet's migration set. `on_result` sees each tenant as it finishes
/// (progress display).
pub async fn migrate_fleet(
    fleet: &Fleet,
    options: &FleetOptions,
    on_result: impl Fn(&TenantResult) + Send + Sync + 'static,
) -> Result<FleetReport, FleetError> {
    let started = Instant::now();
    let control = &fleet.control;
    let set = fleet.migrations.clone();
    let clients = select(control.all_live_clients().await?, &options.only)?;
    let servers: HashMap<i64, ServerRecord> = control
        .list_servers()
        .await?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();

    // 1. Template databases, so clients provisioned from now on start current.
    let templates = migrate_templates(fleet, servers.values(), options).await;

    // 2. Tenants, through a queue bounded overall and per server.
    let overall = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let per_server: HashMap<i64, Arc<Semaphore>> = servers
        .keys()
        .map(|id| (*id, Arc::new(Semaphore::new(options.per_server.max(1)))))
        .collect();
    let on_result = Arc::new(on_result);
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let Some(server) = client.server_id.and_then(|id| servers.get(&id)).cloned() else {
            continue;
        };
        let server_permits = per_server[&server.id].clone();
        let overall = overall.clone();
        let fleet = fleet.clone();
        let options = options.clone();
        let on_result = on_result.clone();
        let span = tracing::info_span!("tenant_migrate", client = %client.slug);
        tasks.spawn(
            async move {
                // Server first, then overall: a tenant waiting for a busy server never holds an overall slot.
                let _server = server_permits.acquire_owned().await;
                let _overall = overall.acquire_owned().await;
                let result = migrate_tenant(&fleet, &client, &server, &options).await;
                on_result(&result);
                result
            }
            .instrument(span),
        );
    }
    // Versions are recorded in batches: one statement per RECORD_BATCH tenants instead of one each. A crash before
    // a batch is written only means the next run connects to those tenants again and finds them current.
    let mut tenants = Vec::new();
    let mut unrecorded: Vec<(uuid::Uuid, i32)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => {
                if let Some(version) = result.record {
                    unrecorded.push((result.client_id, version));
                }
                tenants.push(result);
            }
            Err(e) => tracing::error!(error = %e, "a tenant migration task panicked"),
        }
        if unrecorded.len() >= RECORD_BATCH {
            record_versions(control, &mut unrecorded).await;
        }
    }
    record_versions(control, &mut unrecorded).await;
    tenants.sort_by(|a, b| a.client.cmp(&b.client));
    let count = |o: Outcome| tenants.iter().filter(|t| t.outcome == o).count();
    Ok(FleetReport {
        latest: set.latest(),
        migrated: count(Outcome::Migrated),
        current: count(Outcome::Current),
        would_migrate: count(Outcome::WouldMigrate),
        divergent: count(Outcome::Divergent),
        failed: count(Outcome::Failed),
        moving: count(Outcome::Moving),
        templates,
        tenants,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Tenant versions written to the registry per statement.
const RECORD_BATCH: usize = 64;

async fn record_versions(control: &ControlPlane, versions: &mut Vec<(uuid::Uuid, i32)>) {
    if versions.is_empty() {
        return;
    }
    if let Err(e) = control.set_schema_versions(versions).await {
        tracing::warn!(error = %e, tenants = versions.len(), "could not record schema versions; the next run will re-check these tenants");
    }
    versions.clear();
}

/// Brings the template database of every active server in `servers` to the fleet's latest migration
/// (`mandant migrate` runs this after the control plane; the fleet run starts with it).
pub async fn migrate_templates<'a>(
    fleet: &Fleet,
    servers: impl IntoIterator<Item = &'a ServerRecord>,
    options: &FleetOptions,
) -> Vec<TemplateResult> {
    let mut results = Vec::new();
    for server in servers.into_iter().filter(|s| s.status == "active") {
        results.push(migrate_template(fleet, server, options).await);
    }
    results
}

/// Active and suspended clients (those with a database to keep current), narrowed to `only`.
fn select(
    clients: Vec<ClientRecord>,
    only: &[ClientSlug],
) -> Result<Vec<ClientRecord>, FleetError> {
    let unknown: Vec<&str> = only
        .iter()
        .filter(|slug| !clients.iter().any(|c| c.slug == slug.as_str()))
        .map(ClientSlug::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(FleetError::UnknownClients(unknown.join(", ")));
    }
    Ok(clients
        .into_iter()
        .filter(|c| c.status.has_live_database() && c.db_name.is_some())
        .filter(|c| only.is_empty() || only.iter().any(|s| s.as_str() == c.slug))
        .collect())
}

async fn migrate_template(
    fleet: &Fleet,
    server: &ServerRecord,
    options: &FleetOptions,
) -> TemplateResult {
    let set = &fleet.migrations;
    let mut result = TemplateResult {
        server: server.name.clone(),
        from: server.template_version,
        to: server.template_version,
        outcome: Outcome::Current,
        error: None,
    };
    if server.template_version >= set.latest() && !options.verify {
        return result;
    }
    if options.dry_run {
        result.outcome = Outcome::WouldMigrate;
        result.to = set.latest();
        return result;
    }
    let migrated = async {
        let admin = fleet.targets.admin(server).map_err(|e| e.to_string())?;
        let outcome = template_db::ensure_template(&admin, fleet.targets.template_db(), set)
            .await
            .map_err(|e| e.to_string())?;
        fleet
            .control
            .set_template_version(server.id, outcome.to)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(outcome)
    };
    match migrated.await {
        Ok(outcome) => {
            result.from = outcome.from;
            result.to = outcome.to;
            if !outcome.applied.is_empty() {
                result.outcome = Outcome::Migrated;
            }
        }
        Err(e) => {
            tracing::error!(server = %server.name, error = %e, "template database migration failed");
            result.outcome = Outcome::Failed;
            result.error = Some(e);
        }
    }
    result
}

async fn migrate_tenant(
    fleet: &Fleet,
    client: &ClientRecord,
    server: &ServerRecord,
    options: &FleetOptions,
) -> TenantResult {
    let started = Instant::now();
    let names = fleet.targets.names(client.id);
    let mut result = TenantResult {
        client_id: client.id,
        record: None,
        client: client.slug.clone(),
        client_status: client.status.as_str(),
        server: server.name.clone(),
        database: names.database.clone(),
        outcome: Outcome::Current,
        from: client.schema_version,
        to: client.schema_version,
        migrations: Vec::new(),
        duration_ms: 0.0,
        connected: false,
        error: None,
        verification: None,
    };
    if client.moving_to.is_some() {
        result.outcome = Outcome::Moving;
        tracing::info!("tenant is being moved; skipped");
        return result;
    }
    match fleet.targets.admin_on_tenant(server, client.id) {
        Ok(target) => {
            if needs_migration(&mut result, client, &target, &fleet.migrations, options).await {
                apply(&mut result, client, &target, &names.role, &fleet.migrations).await;
            }
        }
        Err(e) => fail(&mut result, &e),
    }
    result.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result.outcome {
        Outcome::Failed => tracing::error!(
            error = result.error.as_deref().unwrap_or(""),
            "tenant migration failed"
        ),
        Outcome::Divergent => tracing::warn!("tenant migration history diverges; nothing applied"),
        Outcome::Migrated => tracing::info!(from = result.from, to = result.to, "tenant migrated"),
        _ => {}
    }
    result
}

fn fail(result: &mut TenantResult, e: &TenantError) {
    result.outcome = Outcome::Failed;
    result.error = Some(e.to_string());
}

/// Whether the tenant has migrations to apply now: by the registry, or (`verify`) by its real history, whose
/// drift from the registry is recorded. Fills in `result` for every tenant that ends here (current, divergent,
/// a dry run's pending list, a failed check).
async fn needs_migration(
    result: &mut TenantResult,
    client: &ClientRecord,
    target: &PgTarget,
    set: &MigrationSet,
    options: &FleetOptions,
) -> bool {
    let pending = if options.verify {
        result.connected = true;
        let history = match read_history(target).await {
            Ok(history) => history,
            Err(e) => {
                fail(result, &e);
                return false;
            }
        };
        let verification = set.verify(&history);
        let known_version = verification.applied_version;
        result.from = known_version;
        result.to = known_version;
        if known_version != client.schema_version && !options.dry_run {
            // The registry drifted from the database: the database is the truth (recorded with the run's other
            // versions, in batches; a migration below overrides it).
            result.record = Some(known_version);
        }
        let clean = verification.is_clean();
        let pending = verification.pending.clone();
        result.verification = Some(verification);
        if !clean {
            result.outcome = Outcome::Divergent;
            return false;
        }
        pending
    } else if client.schema_version >= set.latest() {
        Vec::new()
    } else {
        set.pending_after(client.schema_version)
    };
    if pending.is_empty() {
        return false;
    }
    if options.dry_run {
        result.outcome = Outcome::WouldMigrate;
        result.to = set.latest();
        result.migrations = pending;
        return false;
    }
    true
}

/// Applies the pending migrations as the tenant's role under the tenant's advisory lock.
async fn apply(
    result: &mut TenantResult,
    client: &ClientRecord,
    target: &PgTarget,
    role: &str,
    set: &MigrationSet,
) {
    result.connected = true;
    match migrate_with(target, Some(role), set).await {
        Ok(outcome) => {
            result.from = outcome.from;
            result.to = outcome.to;
            if !outcome.applied.is_empty() {
                result.outcome = Outcome::Migrated;
            }
            result.migrations = outcome.applied;
            // The database's version now; written only if the registry says otherwise.
            result.record = (outcome.to != client.schema_version).then_some(outcome.to);
        }
        Err(failure) => {
            result.outcome = if failure.divergent {
                Outcome::Divergent
            } else {
                Outcome::Failed
            };
            result.error = Some(failure.error.to_string());
            if let Some(reached) = failure.reached {
                result.to = reached;
                result.record = Some(reached);
            }
        }
    }
}
