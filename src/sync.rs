//! The template fan-out: after a publish, every active client's copies are synced through the routing pool, a
//! bounded number of tenants at a time (`workers.fanout_concurrency`), and the results are written to the control
//! plane in batches. A client that cannot be reached is marked failed and gets a `sync_templates` job of its own,
//! which retries with backoff; it never delays the others.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use crate::data::templates::{Synced, sync};
use crate::domain::ClientStatus;
use crate::provisioning::{ProvisionError, Provisioner};
use crate::tenant::pool::{Router, TenantRoute};

/// Results written to the control plane per statement.
const RECORD_BATCH: usize = 64;

/// Syncs every active client; returns `{"synced": n, "failed": n}`.
pub async fn publish_templates(
    provisioner: &Provisioner,
    router: &Router,
    concurrency: usize,
    max_attempts: i32,
) -> Result<serde_json::Value, ProvisionError> {
    let control = provisioner.control();
    let masters = Arc::new(control.desired_templates().await?);
    let servers: HashMap<i64, _> = control
        .list_servers()
        .await?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for client in control.all_live_clients().await? {
        let (ClientStatus::Active, Some(server)) = (
            client.status,
            client.server_id.and_then(|id| servers.get(&id)),
        ) else {
            continue;
        };
        let route = TenantRoute {
            client_id: client.id,
            server_id: server.id,
            target: provisioner.tenant_target(server, client.id)?,
        };
        let (router, masters, permits) = (router.clone(), masters.clone(), permits.clone());
        let span = tracing::info_span!("sync_templates", client = %client.slug);
        tasks.spawn(
            async move {
                let _permit = permits.acquire_owned().await;
                let result: Result<Vec<Synced>, String> = async {
                    let mut conn = router.acquire(&route).await.map_err(|e| e.to_string())?;
                    sync(conn.client_mut(), &masters)
                        .await
                        .map_err(|e| crate::http::error::error_chain(&e))
                }
                .await;
                (route.client_id, result)
            }
            .instrument(span),
        );
    }
    let (mut synced, mut failed) = (0usize, 0usize);
    let mut batch: Vec<(Uuid, Uuid, &'static str, Option<i32>)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((client, result)) = joined else {
            tracing::error!("a template sync task panicked");
            continue;
        };
        match result {
            Ok(states) => {
                synced += 1;
                batch.extend(
                    states
                        .iter()
                        .map(|s| (client, s.template, s.status, s.version)),
                );
            }
            Err(error) => {
                failed += 1;
                tracing::warn!(%client, %error, "template sync failed; the client retries on its own");
                control.templates_failed(client, &error).await?;
                control.enqueue_template_sync(client, max_attempts).await?;
            }
        }
        if batch.len() >= RECORD_BATCH {
            control.templates_synced(&batch).await?;
            batch.clear();
        }
    }
    control.templates_synced(&batch).await?;
    tracing::info!(synced, failed, "templates published");
    Ok(serde_json::json!({ "synced": synced, "failed": failed }))
}
