//! The access job: a client's status applied to its tenant role (`suspended` or `deleting` → NOLOGIN, its
//! sessions ended; `active` → LOGIN), re-reading the status afterwards so the last change always wins. The
//! suspend, resume and delete calls apply it themselves before answering, bounded by [`APPLY_WITHIN`].

use std::time::Duration;

use tracing::Instrument;

use super::{ProvisionError, Provisioner};
use crate::control::clients::ClientRecord;
use crate::control::jobs::Job;
use crate::domain::ClientStatus;
use crate::tenant::cluster::{self, admin_connect};

/// How long a call waits for a role change before it answers anyway (a locked role, a server that is down);
/// the queued `sync_access` job finishes it.
pub const APPLY_WITHIN: Duration = Duration::from_secs(3);

/// The login a status gives the tenant role (`None`: leave it as it is).
fn login_for(status: ClientStatus) -> Option<bool> {
    match status {
        ClientStatus::Active => Some(true),
        ClientStatus::Suspended | ClientStatus::Deleting => Some(false),
        _ => None,
    }
}

impl Provisioner {
    /// Applies the client's status to its role now (suspend and delete do this before they answer, so the
    /// client's connections are gone in every process), within [`APPLY_WITHIN`].
    pub async fn apply_access(&self, id: uuid::Uuid) -> Result<(), ProvisionError> {
        within_bound(async {
            let client = self.control.client_by_id(id).await?;
            let span = tracing::info_span!("apply_access", client = %client.slug);
            self.sync_access_steps(client).instrument(span).await
        })
        .await
    }

    /// Lets the client's role log in again, whatever its status says yet (resume does this before it commits
    /// `active`, so no request can see an active client whose role is still refused), within [`APPLY_WITHIN`].
    pub async fn allow_login(&self, client: &ClientRecord) -> Result<(), ProvisionError> {
        within_bound(self.set_login(client, true)).await
    }

    /// Sets the login of the client's role on its server (a client not placed yet has no role).
    async fn set_login(&self, client: &ClientRecord, login: bool) -> Result<(), ProvisionError> {
        let Some(server_id) = client.server_id else {
            return Ok(());
        };
        let server = self.control.server(server_id).await?;
        let admin = admin_connect(&self.targets.admin(&server)?).await?;
        let role = self.targets.names(client.id).role;
        // Both roles of the database: the tenant's own and the inner clients' (which may not exist yet).
        cluster::set_role_login(&admin, &role, login).await?;
        cluster::set_role_login(&admin, &crate::tenant::inner::inner_role(&role), login).await?;
        Ok(())
    }

    /// Applies the client's current status to its role (see [`login_for`]). Re-reads the status afterwards and
    /// applies again if it changed meanwhile.
    pub async fn sync_access(&self, job: &Job) -> Result<(), ProvisionError> {
        let client = self.job_client(job).await?;
        let span = tracing::info_span!("sync_access", client = %client.slug);
        self.sync_access_steps(client).instrument(span).await
    }

    async fn sync_access_steps(&self, mut client: ClientRecord) -> Result<(), ProvisionError> {
        loop {
            let Some(login) = login_for(client.status) else {
                return Ok(());
            };
            self.set_login(&client, login).await?;
            let now = self.control.client_by_id(client.id).await?;
            if now.status == client.status {
                tracing::info!(login, "applied the client's access state");
                return Ok(());
            }
            client = now;
        }
    }
}

/// A role change made by a call, bounded by [`APPLY_WITHIN`].
async fn within_bound(
    work: impl std::future::Future<Output = Result<(), ProvisionError>>,
) -> Result<(), ProvisionError> {
    tokio::time::timeout(APPLY_WITHIN, work)
        .await
        .map_err(|_| ProvisionError::TimedOut(APPLY_WITHIN))?
}
