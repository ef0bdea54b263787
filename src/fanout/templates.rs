//! Master templates, synced: one client's inherited copies brought to the master's newest versions through the
//! routing pool ([`FanOut::copy_templates`], used by the provisioning step and the `sync_templates` job), and the
//! `publish_templates` fan-out after a publish, over every active client.

use std::sync::Arc;

use deadpool_postgres::tokio_postgres;
use uuid::Uuid;

use super::{FanOut, FanoutError, Recorder};
use crate::control::clients::ClientRecord;
use crate::control::jobs::Job;
use crate::control::servers::ServerRecord;
use crate::control::{ControlError, ControlPlane};
use crate::data::templates::sync;
use crate::domain::ClientStatus;
use crate::telemetry::error_chain;
use crate::tenant::pool::Use;

/// (client, template, status, synced version).
type SyncState = (Uuid, Uuid, &'static str, Option<i32>);

impl FanOut {
    /// Syncs the master templates into one tenant database and records the result; returns the templates this
    /// run changed.
    pub async fn copy_templates(
        &self,
        id: Uuid,
        db: &mut tokio_postgres::Client,
    ) -> Result<Vec<Uuid>, FanoutError> {
        let masters = self.control.desired_templates().await?;
        if masters.is_empty() {
            return Ok(Vec::new());
        }
        let synced = sync(db, &masters)
            .await
            .map_err(|e| FanoutError::Sync(e.to_string()))?;
        let states: Vec<SyncState> = synced
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

    /// Runs a `sync_templates` job through the routing pool: the client's inherited copies follow the master's
    /// newest versions. Only active clients are synced (a resumed client is synced again on resume's re-queue).
    pub async fn sync_templates(
        &self,
        job: &Job,
    ) -> Result<Option<serde_json::Value>, FanoutError> {
        let sync_one = |client: ClientRecord, server: ServerRecord| async move {
            let route = self.data.route(&server, client.id)?;
            let mut conn = self
                .data
                .pools()
                .acquire_for(&route, Use::Scan)
                .await
                .map_err(|e| FanoutError::Sync(e.to_string()))?;
            let applied = self.copy_templates(client.id, conn.client_mut()).await?;
            Ok(serde_json::json!({ "applied": applied }))
        };
        let active = |status| status == ClientStatus::Active;
        self.for_job_client(job, "sync_templates", active, &TemplatesRecorder, sync_one)
            .await
    }

    /// Runs a `publish_templates` job: every active client synced; returns `{"synced": n, "failed": n}`.
    pub async fn publish_templates(&self) -> Result<Option<serde_json::Value>, FanoutError> {
        let masters = Arc::new(self.control.desired_templates().await?);
        let outcome = self
            .over_clients(
                "sync_templates",
                |client| client.status == ClientStatus::Active,
                |client, server| {
                    let (data, masters) = (self.data.clone(), masters.clone());
                    let route = data.route(&server, client.id);
                    async move {
                        let route = route.map_err(|e| error_chain(&e))?;
                        let mut conn = data
                            .pools()
                            .acquire_for(&route, Use::Scan)
                            .await
                            .map_err(|e| e.to_string())?;
                        let states = sync(conn.client_mut(), &masters)
                            .await
                            .map_err(|e| error_chain(&e))?;
                        Ok(states
                            .iter()
                            .map(|s| (client.id, s.template, s.status, s.version))
                            .collect())
                    }
                },
                &TemplatesRecorder,
            )
            .await?;
        tracing::info!(
            synced = outcome.done,
            failed = outcome.failed,
            "templates published"
        );
        Ok(Some(serde_json::json!({
            "synced": outcome.done, "failed": outcome.failed,
        })))
    }
}

struct TemplatesRecorder;

impl Recorder for TemplatesRecorder {
    type Item = SyncState;

    async fn record(
        &self,
        control: &ControlPlane,
        batch: &[SyncState],
    ) -> Result<(), ControlError> {
        control.templates_synced(batch).await
    }

    async fn mark_failed(
        &self,
        control: &ControlPlane,
        client: Uuid,
        error: &str,
    ) -> Result<(), ControlError> {
        control.templates_failed(client, error).await
    }

    async fn queue_retry(
        &self,
        control: &ControlPlane,
        client: Uuid,
        max_attempts: i32,
    ) -> Result<(), ControlError> {
        control.enqueue_template_sync(client, max_attempts).await
    }
}
