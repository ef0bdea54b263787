//! The access job: a client's status applied to its tenant role (`suspended` → NOLOGIN, its sessions ended;
//! otherwise LOGIN), re-reading the status afterwards so the last change always wins.

use tracing::Instrument;

use super::{ProvisionError, Provisioner};
use crate::control::clients::ClientRecord;
use crate::control::jobs::Job;
use crate::domain::ClientStatus;
use crate::tenant::cluster::{self, admin_connect};

impl Provisioner {
    /// Applies the client's status to its role now (the suspend and resume calls do this before they answer, so
    /// a suspended client's connections are gone and a resumed client's role can log in at once; the queued
    /// `sync_access` job repeats it if this fails).
    pub async fn apply_access(&self, id: uuid::Uuid) -> Result<(), ProvisionError> {
        let client = self.control.client_by_id(id).await?;
        let span = tracing::info_span!("apply_access", client = %client.slug);
        self.sync_access_steps(client).instrument(span).await
    }

    /// Applies the client's current status to its role: `suspended` → NOLOGIN (and its sessions end), otherwise
    /// LOGIN. Re-reads the status afterwards and applies again if it changed meanwhile.
    pub async fn sync_access(&self, job: &Job) -> Result<(), ProvisionError> {
        let client = self.job_client(job).await?;
        let span = tracing::info_span!("sync_access", client = %client.slug);
        self.sync_access_steps(client).instrument(span).await
    }

    async fn sync_access_steps(&self, mut client: ClientRecord) -> Result<(), ProvisionError> {
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
            let admin = admin_connect(&self.targets.admin(&server)?).await?;
            cluster::set_role_login(&admin, &self.targets.names(id).role, login).await?;
            let now = self.control.client_by_id(id).await?;
            if now.status == client.status {
                tracing::info!(login, "applied the client's access state");
                return Ok(());
            }
            client = now;
        }
    }
}
