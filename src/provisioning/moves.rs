//! The live move (`move_client` job, issue #21): a tenant's database copied to another server by PostgreSQL's
//! logical replication while it keeps serving, then switched over in a freeze of a fraction of a second.
//!
//! Phases, each idempotent and recorded as the job's step when done (a resumed job starts after the last one):
//! 1. `prepare`: the source can be moved off (`wal_level = logical`, every table has a primary key, its schema
//!    current); on the target the database and both tenant roles, the schema from the same migrations and the
//!    client's fields (the provisioning steps themselves);
//! 2. `copy`: on the source a replication role for this move (password derived from the move's random id) and a
//!    publication; on the target, emptied of what the migrations wrote, a subscription with the initial copy;
//! 3. `catch_up`: until every table is copied and the subscriber is a moment behind the source;
//! 4. `freeze`: every process holds new requests back (the client's `frozen`, notified), requests running on the
//!    source get `tenants.move_drain_ms`, then the source's roles are fenced (`NOLOGIN`, sessions ended); once
//!    the subscriber has applied the source's last position the sequences are carried over;
//! 5. `synced` → the subscription is dropped (disabled, detached, dropped; the slot dropped on the source);
//! 6. `switched`: one control-plane transaction — server, generation, freeze off — that every process hears;
//! 7. `cleaned`: the publication and the replication role dropped; the source database renamed and recorded for
//!    `tenants.move_retention_days`.
//!
//! Until the switch the source is the truth: any error rolls the move back (subscription, target database and
//! roles dropped, slot, publication and replication role dropped, the source's roles let in again, freeze off)
//! and fails the job for good (`MoveGaveUp`). A crash is not an error: the lease runs out and the job resumes.
//! After the switch errors are retried (the clean-up is idempotent).

use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::Client;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use super::provision::{Run, Step};
use super::{ProvisionError, Provisioner};
use crate::control::ControlError;
use crate::control::clients::ClientRecord;
use crate::control::jobs::Job;
use crate::control::moves::MoveRefusal;
use crate::control::servers::ServerRecord;
use crate::domain::ClientStatus;
use crate::domain::servers::ServerName;
use crate::tenant::cluster::{self, admin_connect};
use crate::tenant::inner::inner_role;
use crate::tenant::replication as repl;
use crate::tenant::{TenantError, migrate};

/// The phases of a move, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Prepare,
    Copy,
    CatchUp,
    Freeze,
    Synced,
    Switched,
    Cleaned,
}

impl Phase {
    pub const ALL: [Self; 7] = [
        Self::Prepare,
        Self::Copy,
        Self::CatchUp,
        Self::Freeze,
        Self::Synced,
        Self::Switched,
        Self::Cleaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Copy => "copy",
            Self::CatchUp => "catch_up",
            Self::Freeze => "freeze",
            Self::Synced => "synced",
            Self::Switched => "switched",
            Self::Cleaned => "cleaned",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == value)
    }
}

/// How long the freeze waits for the subscriber to apply the source's last position before it gives up.
const FINAL_SYNC_WITHIN: Duration = Duration::from_secs(30);
/// The least time a freeze waits before it takes "no request running on the source" for an answer.
const FREEZE_GRACE: Duration = Duration::from_millis(30);
/// How often the copy's progress is looked at.
const POLL: Duration = Duration::from_millis(20);

/// What one run of a move works with.
pub(super) struct Move {
    id: Uuid,
    name: String,
    pub(super) client: ClientRecord,
    source: ServerRecord,
    target: ServerRecord,
    database: String,
    roles: Vec<String>,
}

/// The source's tenant database's new name once moved (kept for `tenants.move_retention_days`).
pub fn retired_name(move_id: Uuid) -> String {
    format!("mandant_retired_{}", move_id.simple())
}

impl Provisioner {
    /// The `move_client` job (see the module documentation). Returns the move's outcome for the operation.
    pub async fn move_client(
        &self,
        job: &Job,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let client = self.job_client(job).await?;
        let ids = |key: &str| job.payload.get(key).and_then(serde_json::Value::as_i64);
        let (Some(source_id), Some(target_id)) = (ids("source_server_id"), ids("target_server_id"))
        else {
            return Err(ProvisionError::MoveGaveUp(
                "the move job names no servers".to_owned(),
            ));
        };
        let mv = self.a_move(job.id, client, source_id, target_id).await?;
        let span = tracing::info_span!("move", client = %mv.client.slug, from = %mv.source.name, to = %mv.target.name);
        self.move_steps(job, mv).instrument(span).await
    }

    pub(super) async fn a_move(
        &self,
        id: Uuid,
        client: ClientRecord,
        source_id: i64,
        target_id: i64,
    ) -> Result<Move, ProvisionError> {
        let names = self.targets.names(client.id);
        Ok(Move {
            id,
            name: repl::object_name(&self.targets.settings().db_prefix, id),
            database: names.database.clone(),
            roles: vec![names.role.clone(), inner_role(&names.role)],
            source: self.control.server(source_id).await?,
            target: self.control.server(target_id).await?,
            client,
        })
    }

    /// Starts a move of `client` to the server named `target` (the API's and the CLI's one way): the target must
    /// exist, the client's server must publish (`wal_level = logical`, asked now), then the control plane's checks
    /// (`ControlPlane::start_move`). Returns the client and the move's operation, or why it cannot start.
    pub async fn request_move(
        &self,
        client: &ClientRecord,
        target: &ServerName,
        drain: Option<Uuid>,
    ) -> Result<Result<(ClientRecord, Uuid), MoveRefusal>, ProvisionError> {
        let target = match self.control.server_by_name(target).await {
            Ok(server) => server,
            Err(ControlError::NotFound) => {
                return Ok(Err(MoveRefusal::UnknownServer(target.to_string())));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(level) = self.source_wal_level(client).await?
            && level != "logical"
        {
            return Ok(Err(MoveRefusal::WalLevel(level)));
        }
        Ok(self
            .control
            .start_move(client.id, &target, self.max_attempts, drain)
            .await?)
    }

    /// The `wal_level` of the server a client lives on, asked now (within a few seconds); `None` for a client
    /// that is not placed.
    pub async fn source_wal_level(
        &self,
        client: &ClientRecord,
    ) -> Result<Option<String>, ProvisionError> {
        let Some(server_id) = client.server_id else {
            return Ok(None);
        };
        let server = self.control.server(server_id).await?;
        let asked = async {
            let admin = admin_connect(&self.targets.admin(&server)?).await?;
            Ok::<_, ProvisionError>(repl::wal_level(&admin).await?)
        };
        tokio::time::timeout(Duration::from_secs(5), asked)
            .await
            .map_err(|_| ProvisionError::TimedOut(Duration::from_secs(5)))?
            .map(Some)
    }

    async fn move_steps(
        &self,
        job: &Job,
        mv: Move,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let done = job.step.as_deref().and_then(Phase::parse);
        let switched = mv.client.server_id == Some(mv.target.id);
        if !switched && mv.client.moving_to.as_ref().map(|m| m.0) != Some(mv.target.id) {
            // Given up meanwhile (or the client was deleted): leave nothing behind.
            self.roll_back(&mv).await;
            return Ok(Some(json!({"outcome": "abandoned"})));
        }
        let started = Instant::now();
        let mut report = json!({"from": mv.source.name, "to": mv.target.name});
        if !switched && let Err(e) = self.until_switch(job, &mv, done, &mut report).await {
            if matches!(e, ProvisionError::LostClaim) || is_simulated_crash(&e) {
                return Err(e);
            }
            // An error after the switch committed (or when that cannot be told): the target is the truth now, a
            // rollback would drop the client's live database. Retried: the next attempt only cleans up.
            let now = self.control.client_by_id(mv.client.id).await;
            if now.is_err() || now.is_ok_and(|c| c.server_id == Some(mv.target.id)) {
                return Err(e);
            }
            let error = crate::telemetry::error_chain(&e);
            tracing::error!(%error, "the move failed; rolling back (the source stays the truth)");
            self.roll_back(&mv).await;
            return Err(ProvisionError::MoveGaveUp(error));
        }
        // Field changes skipped during the move are picked up now (again on a retry: one queued job at most).
        self.control
            .enqueue_field_reconcile(mv.client.id, self.max_attempts)
            .await?;
        self.clean_up(&mv).await?;
        self.checkpoint(job, Phase::Cleaned.as_str()).await?;
        report["outcome"] = json!("moved");
        report["ms"] = json!(started.elapsed().as_millis() as u64);
        tracing::info!("the client now lives on {}", mv.target.name);
        Ok(Some(report))
    }

    /// Phases 1-6; an error here means roll back.
    async fn until_switch(
        &self,
        job: &Job,
        mv: &Move,
        done: Option<Phase>,
        report: &mut serde_json::Value,
    ) -> Result<(), ProvisionError> {
        let todo = |phase: Phase| done.is_none_or(|d| phase > d);
        let source_admin = admin_connect(&self.targets.admin(&mv.source)?).await?;
        let source_db = self.tenant_db(mv, &mv.source).await?;
        if todo(Phase::Prepare) {
            self.prepare_target(mv, &source_admin, &source_db).await?;
            self.phase_done(job, Phase::Prepare).await?;
        }
        let target_db = self.tenant_db(mv, &mv.target).await?;
        if todo(Phase::Copy) {
            let verifier = self.scram(self.targets.move_password_for(mv.id)).await?;
            repl::publish(&source_db, &mv.database, &mv.name, &verifier).await?;
            let conninfo = repl::conninfo(
                &self.targets.admin(&mv.source)?,
                &mv.database,
                &mv.name,
                &self.targets.move_password_for(mv.id),
            );
            repl::subscribe(&target_db, &source_admin, &mv.name, &conninfo).await?;
            self.phase_done(job, Phase::Copy).await?;
        }
        if todo(Phase::CatchUp) {
            self.catch_up(job, mv, &source_admin, &target_db, report)
                .await?;
            self.phase_done(job, Phase::CatchUp).await?;
        }
        if todo(Phase::Freeze) {
            let freeze = self
                .freeze(mv, &source_admin, &source_db, &target_db)
                .await?;
            report["freeze_ms"] = json!(freeze.as_millis() as u64);
            self.phase_done(job, Phase::Freeze).await?;
        }
        // Synced: the target has every row and sequence; the subscription goes.
        repl::unsubscribe(&target_db, &mv.name).await?;
        repl::drop_slot(&source_admin, &mv.name).await?;
        if todo(Phase::Synced) {
            self.phase_done(job, Phase::Synced).await?;
        }
        // The target's roles get the client's current access (a suspended client stays locked out).
        let target_admin = admin_connect(&self.targets.admin(&mv.target)?).await?;
        let login = self.control.client_by_id(mv.client.id).await?.status == ClientStatus::Active;
        for role in &mv.roles {
            cluster::set_role_login(&target_admin, role, login).await?;
        }
        let switched = self
            .control
            .switch_move(
                mv.client.id,
                mv.id,
                mv.source.id,
                mv.target.id,
                &retired_name(mv.id),
                self.targets.settings().move_retention_days,
            )
            .await?;
        if switched {
            tracing::info!("switched to {}", mv.target.name);
        }
        self.phase_done(job, Phase::Switched).await?;
        Ok(())
    }

    /// Records a phase done (and, in tests, crashes or fails there on purpose).
    async fn phase_done(&self, job: &Job, phase: Phase) -> Result<(), ProvisionError> {
        self.checkpoint(job, phase.as_str()).await?;
        #[cfg(feature = "testing")]
        {
            if self.faults.move_crash_after == Some(phase.as_str()) {
                return Err(ProvisionError::SimulatedCrash(phase.as_str()));
            }
            if self.faults.move_fail_after == Some(phase.as_str()) {
                return Err(ProvisionError::Injected(phase.as_str()));
            }
        }
        Ok(())
    }

    /// Phase 1: checks on the source, then the target prepared by the provisioning steps.
    async fn prepare_target(
        &self,
        mv: &Move,
        source_admin: &Client,
        source_db: &Client,
    ) -> Result<(), ProvisionError> {
        let level = repl::wal_level(source_admin).await?;
        if level != "logical" {
            return Err(ProvisionError::MoveGaveUp(format!(
                "server {} runs with wal_level = {level}; moves off it need wal_level = logical (a restart)",
                mv.source.name
            )));
        }
        let missing = repl::tables_without_identity(source_db).await?;
        if !missing.is_empty() {
            return Err(ProvisionError::MoveGaveUp(format!(
                "tables without a primary key cannot be replicated: {}",
                missing.join(", ")
            )));
        }
        // The source at the latest schema, so the target's migrations give the very same tables.
        if mv.client.schema_version < self.migrations.latest() {
            let names = self.targets.names(mv.client.id);
            let target = self.targets.admin_on_tenant(&mv.source, mv.client.id)?;
            let outcome = migrate::migrate_with(&target, Some(&names.role), &self.migrations)
                .await
                .map_err(|f| f.error)?;
            self.control
                .set_schema_version(mv.client.id, outcome.to)
                .await?;
        }
        let mut run = Run {
            names: self.targets.names(mv.client.id),
            client: mv.client.clone(),
            server: Some(mv.target.clone()),
            admin: None,
        };
        for step in [
            Step::TemplateDb,
            Step::Role,
            Step::Database,
            Step::Restrict,
            Step::Migrate,
        ] {
            self.step(step, &mut run).await?;
        }
        self.fanout.apply_fields(mv.client.id, &mv.target).await?;
        Ok(())
    }

    /// Phase 3: waits until every table is copied and the subscriber reaches a position of the source within a
    /// short wait; bounded by `tenants.move_copy_timeout_secs`. The progress goes to the operation.
    async fn catch_up(
        &self,
        job: &Job,
        mv: &Move,
        source_admin: &Client,
        target_db: &Client,
        report: &mut serde_json::Value,
    ) -> Result<(), ProvisionError> {
        let deadline = Instant::now() + self.targets.settings().move_copy_timeout();
        let mut last_report = Instant::now() - Duration::from_secs(1);
        let mut errors = 0;
        loop {
            // Also a probe of the source: a source that is down fails the move here.
            let lsn = repl::current_lsn(source_admin).await?;
            let state = repl::subscription_state(target_db, &mv.name).await?;
            let lag = repl::lag_bytes(source_admin, state.latest_end_lsn.as_deref(), &lsn).await?;
            if state.errors > errors {
                // A field added on the source meanwhile (a race with the request path) stops the apply until
                // the target has it too: bring the target to the desired fields.
                errors = state.errors;
                self.fanout.apply_fields(mv.client.id, &mv.target).await?;
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                *report = json!({"from": mv.source.name, "to": mv.target.name, "tables": state.tables,
                                 "tables_copied": state.ready, "lag_bytes": lag.min(i64::from(i32::MAX)),
                                 "errors": state.errors});
                if !self.control.job_progress(job, report).await? {
                    return Err(ProvisionError::LostClaim);
                }
                last_report = Instant::now();
            }
            if state.tables > 0 && state.ready == state.tables {
                // Caught up when the subscriber reaches the position read above within a short wait.
                let wait_until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < wait_until {
                    if repl::reached(target_db, &mv.name, &lsn).await? {
                        return Ok(());
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
            if Instant::now() > deadline {
                return Err(ProvisionError::MoveGaveUp(format!(
                    "the copy did not catch up within {:?} ({} of {} tables copied, {} errors)",
                    self.targets.settings().move_copy_timeout(),
                    state.ready,
                    state.tables,
                    state.errors
                )));
            }
            tokio::time::sleep(POLL * 5).await;
        }
    }

    /// Phase 4: the freeze. Returns how long new requests were held back until the end of the phase.
    async fn freeze(
        &self,
        mv: &Move,
        source_admin: &Client,
        source_db: &Client,
        target_db: &Client,
    ) -> Result<Duration, ProvisionError> {
        let started = Instant::now();
        self.control.set_frozen(mv.client.id, true).await?;
        // Requests already running on the source finish (bounded), then the source is fenced: a role that owns
        // its database could grant itself CONNECT again, so the fence is NOLOGIN with every session ended.
        // Idle means: no statement or transaction of the tenant's roles, seen twice in a row after a short grace
        // (the notification takes a moment to reach every process; a request that had its connection already
        // sends its statement within it).
        let drain_until = started + self.targets.settings().move_drain();
        let mut idle_seen = 0;
        while Instant::now() < drain_until && idle_seen < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let busy = repl::busy_backends(source_admin, &mv.database, &mv.roles).await?;
            idle_seen = if busy == 0 && started.elapsed() >= FREEZE_GRACE {
                idle_seen + 1
            } else {
                0
            };
        }
        for role in &mv.roles {
            cluster::set_role_login(source_admin, role, false).await?;
        }
        #[cfg(feature = "testing")]
        if let Some(sql) = self.faults.move_commit_in_fence {
            source_db.batch_execute(sql).await.map_err(|e| {
                ProvisionError::MoveGaveUp(format!("the injected commit failed: {e}"))
            })?;
        }
        repl::end_database_sessions(source_admin, &mv.database).await?;
        let lsn = repl::final_lsn(source_admin).await?;
        let sync_until = Instant::now() + FINAL_SYNC_WITHIN;
        while !repl::reached(target_db, &mv.name, &lsn).await? {
            if Instant::now() > sync_until {
                return Err(ProvisionError::MoveGaveUp(format!(
                    "the subscriber did not apply the source's last changes within {FINAL_SYNC_WITHIN:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let sequences = repl::copy_sequences(source_db, target_db).await?;
        tracing::info!(
            sequences,
            ms = started.elapsed().as_millis() as u64,
            "source fenced and fully applied"
        );
        Ok(started.elapsed())
    }

    /// Phase 7: the source's publication and replication role dropped, the source database renamed (its roles
    /// stay `NOLOGIN`; the retention sweep drops both later). Idempotent.
    async fn clean_up(&self, mv: &Move) -> Result<(), ProvisionError> {
        let source_admin = admin_connect(&self.targets.admin(&mv.source)?).await?;
        if cluster::database_exists(&source_admin, &mv.database).await? {
            let source_db = self.tenant_db(mv, &mv.source).await?;
            repl::unpublish(&source_db, &mv.name).await?;
            drop(source_db);
            // Still fenced (a resumed clean-up after the switch: make sure).
            for role in &mv.roles {
                cluster::set_role_login(&source_admin, role, false).await?;
            }
            repl::rename_database(&source_admin, &mv.database, &retired_name(mv.id)).await?;
        } else {
            repl::drop_role_here(&source_admin, &mv.name).await?;
        }
        repl::drop_slot(&source_admin, &mv.name).await?;
        Ok(())
    }

    /// Undoes a move that has not switched: every step best effort (a server that is down leaves objects for the
    /// leftover sweep), the freeze and `moving_to` always ended, the source's roles given the client's access
    /// again (also by a queued `sync_access` job, in case the source is down now).
    pub(super) async fn roll_back(&self, mv: &Move) {
        let target = async {
            let admin = admin_connect(&self.targets.admin(&mv.target)?).await?;
            if cluster::database_exists(&admin, &mv.database).await? {
                repl::unsubscribe(&self.tenant_db(mv, &mv.target).await?, &mv.name).await?;
                cluster::drop_database(&admin, &mv.database).await?;
            }
            // Also when the database was never made: the roles come first in `prepare`.
            for role in &mv.roles {
                cluster::drop_role(&admin, role).await?;
            }
            Ok::<_, ProvisionError>(())
        };
        if let Err(e) = target.await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "rolling back on the target; the sweep finishes it");
        }
        let source = async {
            let admin = admin_connect(&self.targets.admin(&mv.source)?).await?;
            repl::drop_slot(&admin, &mv.name).await?;
            if cluster::database_exists(&admin, &mv.database).await? {
                let db = self.tenant_db(mv, &mv.source).await?;
                repl::unpublish(&db, &mv.name).await?;
            }
            let login =
                self.control.client_by_id(mv.client.id).await?.status == ClientStatus::Active;
            for role in &mv.roles {
                cluster::set_role_login(&admin, role, login).await?;
            }
            Ok::<_, ProvisionError>(())
        };
        if let Err(e) = source.await {
            tracing::warn!(error = %crate::telemetry::error_chain(&e), "rolling back on the source; the sweep and sync_access finish it");
            if let Err(e) = self.control.enqueue_sync_access(mv.client.id).await {
                tracing::warn!(error = %e, "could not queue the access job");
            }
        }
        if let Err(e) = self.control.end_move(mv.client.id).await {
            tracing::error!(error = %e, "could not end the move in the control plane");
        }
    }

    /// The administrator's connection to the client's database on one of the move's servers.
    async fn tenant_db(&self, mv: &Move, server: &ServerRecord) -> Result<Client, ProvisionError> {
        let context = format!("connecting to the client's database on {}", server.name);
        Ok(self
            .targets
            .admin_on_tenant(server, mv.client.id)?
            .connect()
            .await
            .map_err(TenantError::postgres(context))?)
    }
}

fn is_simulated_crash(e: &ProvisionError) -> bool {
    #[cfg(feature = "testing")]
    if matches!(e, ProvisionError::SimulatedCrash(_)) {
        return true;
    }
    let _ = e;
    false
}
