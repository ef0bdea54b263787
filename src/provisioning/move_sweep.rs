//! Cleaning up after moves (issue #21): a moved tenant's retired source database dropped when its days are over
//! (or when the client is deleted), moves whose worker died on the last attempt rolled back, and replication
//! objects (`<db_prefix>mv*`) that a rollback could not reach dropped once their server answers.

use super::{ProvisionError, Provisioner};
use crate::control::moves::RetiredDatabase;
use crate::tenant::TenantError;
use crate::tenant::cluster::{self, admin_connect};
use crate::tenant::inner::inner_role;
use crate::tenant::replication as repl;

impl Provisioner {
    /// Drops a moved tenant's retired source database, and its roles on that server unless the client lives
    /// there again; records it dropped.
    pub(super) async fn drop_retired(
        &self,
        retired: &RetiredDatabase,
    ) -> Result<(), ProvisionError> {
        let server = self.control.server(retired.server_id).await?;
        let admin = admin_connect(&self.targets.admin(&server)?).await?;
        if cluster::database_exists(&admin, &retired.db_name).await? {
            cluster::drop_database(&admin, &retired.db_name).await?;
        }
        if !retired.client_is_back {
            let role = self.targets.names(retired.client_id).role;
            for role in [inner_role(&role), role] {
                if let Err(e) = cluster::drop_role(&admin, &role).await {
                    tracing::warn!(error = %e, role, "could not drop a moved tenant's old role");
                }
            }
        }
        self.control.retired_dropped(retired.id).await?;
        tracing::info!(database = %retired.db_name, server = %server.name, "dropped a moved tenant's retired source database");
        Ok(())
    }

    /// The periodic clean-up of moves (every process runs it; each step is idempotent):
    /// - retired source databases past `tenants.move_retention_days` are dropped, with the tenant's roles on that
    ///   server unless the client lives there again;
    /// - a client still marked as moving whose move job ended without rolling back (its worker died on the last
    ///   attempt) is rolled back;
    /// - replication objects (`<db_prefix>mv*`) of moves that are neither queued nor running — a slot, a
    ///   subscription, a replication role with its publication — left by a server that was down during a
    ///   rollback, are dropped on every server that answers.
    ///
    /// Returns how many objects it removed.
    pub async fn sweep_moves(&self) -> Result<usize, ProvisionError> {
        let mut removed = 0;
        for retired in self.control.retired_due().await? {
            self.drop_retired(&retired).await?;
            removed += 1;
        }
        for stuck in self.control.stuck_moves().await? {
            let client = self.control.client_by_id(stuck.client_id).await?;
            let mv = self
                .a_move(
                    stuck.job_id,
                    client,
                    stuck.source_server_id,
                    stuck.target_server_id,
                )
                .await?;
            tracing::warn!(client = %mv.client.slug, "a move ended without finishing; rolling it back");
            self.roll_back(&mv).await;
            removed += 1;
        }
        for server in self.control.list_servers().await? {
            let Ok(target) = self.targets.admin(&server) else {
                continue;
            };
            let Ok(admin) = admin_connect(&target).await else {
                continue;
            };
            let db_prefix = &self.targets.settings().db_prefix;
            let found = repl::leftovers(&admin, &repl::prefix(db_prefix)).await?;
            // Read after listing: a move started in between is active by now and keeps its objects.
            let active: std::collections::HashSet<String> = self
                .control
                .active_moves()
                .await?
                .into_iter()
                .map(|m| repl::object_name(db_prefix, m.job_id))
                .collect();
            let stale = |name: &str| !active.contains(name);
            // One of the server's databases, as its administrator.
            let database = |db: &str| {
                let target = target.with_dbname(db);
                let context = format!("connecting to {db} on {} to drop a leftover", server.name);
                async move {
                    target
                        .connect()
                        .await
                        .map_err(TenantError::postgres(context))
                }
            };
            for (sub, db) in found.subscriptions.iter().filter(|(s, _)| stale(s)) {
                repl::unsubscribe(&database(db).await?, sub).await?;
                removed += 1;
            }
            for slot in found.slots.iter().filter(|s| stale(s)) {
                repl::drop_slot(&admin, slot).await?;
                removed += 1;
            }
            for (role, db) in found.databases_with_grants.iter().filter(|(r, _)| stale(r)) {
                repl::unpublish(&database(db).await?, role).await?;
                removed += 1;
            }
            for role in found.roles.iter().filter(|r| stale(r)) {
                repl::drop_role_here(&admin, role).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
