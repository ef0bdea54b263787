//! The statistics behind the overview: per client its database size (one query per server through the admin
//! connection), and its recipients and lists (through its own role, one tenant connection at a time per server,
//! as [`Use::Scan`] work), written to the control plane with the time each was taken. Never run by a request:
//! the worker's statistics loop runs it every `workers.stats_interval_secs`, and only one process at a time (a
//! session advisory lock), so several worker processes do not multiply the load.

use std::collections::HashMap;
use std::time::Duration;

use super::{FanOut, Outcome, on_client};
use crate::control::ControlError;
use crate::control::clients::ClientRecord;
use crate::control::servers::ServerRecord;
use crate::control::stats::CollectedFigures;
use crate::data::{DataError, DataPlane, recipients};
use crate::domain::ClientStatus;
use crate::telemetry::error_chain;
use crate::tenant::cluster;

impl FanOut {
    /// Collects the figures of every client whose figures are older than `min_age`, unless another process is
    /// collecting right now (then `None`). Servers are visited in parallel, the clients of one server one at a
    /// time.
    pub async fn collect_stats(&self, min_age: Duration) -> Result<Option<Outcome>, ControlError> {
        let Some(_lock) = self.control.try_stats_lock().await? else {
            return Ok(None);
        };
        let due = self.control.clients_due_for_stats(min_age).await?;
        let servers = self.servers_by_id().await?;
        let mut by_server: HashMap<i64, Vec<ClientRecord>> = HashMap::new();
        for client in due {
            if let Some(server) = client.server_id {
                by_server.entry(server).or_default().push(client);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (server_id, clients) in by_server {
            let Some(server) = servers.get(&server_id).cloned() else {
                continue;
            };
            let (data, control, deadline) =
                (self.data.clone(), self.control.clone(), self.deadline);
            tasks.spawn(async move {
                let span = tracing::info_span!("statistics", server = %server.name);
                let figures = tracing::Instrument::instrument(
                    collect_server(&data, &server, &clients, deadline),
                    span,
                )
                .await;
                control.record_figures(&figures).await?;
                Ok::<_, ControlError>(figures)
            });
        }
        let mut outcome = Outcome::default();
        while let Some(joined) = tasks.join_next().await {
            let figures = match joined {
                Ok(recorded) => recorded?,
                Err(e) => {
                    tracing::error!(error = %e, "a statistics task panicked");
                    continue;
                }
            };
            for f in figures {
                if f.error.is_some() {
                    outcome.failed += 1;
                } else {
                    outcome.done += 1;
                }
            }
        }
        Ok(Some(outcome))
    }
}

/// The figures of one server's clients.
async fn collect_server(
    data: &DataPlane,
    server: &ServerRecord,
    clients: &[ClientRecord],
    deadline: Duration,
) -> Vec<CollectedFigures> {
    let names: Vec<String> = clients.iter().filter_map(|c| c.db_name.clone()).collect();
    let sizes = async {
        let admin = cluster::admin_connect(&data.targets().admin(server)?).await?;
        cluster::database_sizes(&admin, &names).await
    };
    // What the overview shows names no role, host or SQL (any `clients.read` user may read it); the log has all.
    let sizes = match tokio::time::timeout(deadline, sizes).await {
        Ok(Ok(sizes)) => Ok(sizes),
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "could not read the database sizes");
            Err(
                "database size: the server's admin connection failed (see the worker's log)"
                    .to_owned(),
            )
        }
        Err(_) => Err(format!(
            "database size: no answer within {} ms",
            deadline.as_millis()
        )),
    };
    let mut figures = Vec::with_capacity(clients.len());
    for client in clients {
        let database_bytes = match (&sizes, &client.db_name) {
            (Ok(sizes), Some(name)) => sizes.get(name).copied(),
            _ => None,
        };
        let mut error = sizes.as_ref().err().cloned();
        // A suspended client's role cannot log in: its counts stay as they were taken last.
        let counts = if client.status == ClientStatus::Active {
            match count_one(data, client, deadline).await {
                Ok(counts) => Some(counts),
                Err(e) => {
                    tracing::warn!(client = %client.slug, error = %error_chain(&e), "could not count");
                    error = Some(format!("counts: {}", shown(&e)));
                    None
                }
            }
        } else {
            None
        };
        if let Some(error) = &error {
            tracing::info!(client = %client.slug, %error, "statistics incomplete for one client");
        }
        figures.push(CollectedFigures {
            client: client.id,
            database_bytes,
            counts,
            error,
        });
    }
    figures
}

/// A tenant failure as the overview (and the audit of a purge) shows it: no host, role or SQL.
pub(super) fn shown(e: &DataError) -> String {
    match e {
        DataError::Deadline(limit) => format!("no answer within {} ms", limit.as_millis()),
        DataError::Route(_) | DataError::Tenant(_) => "the client's database is unavailable".into(),
        DataError::Query(q) if crate::db::is_connection_lost(q) => {
            "the client's database is unavailable".into()
        }
        _ => "the count failed (see the worker's log)".into(),
    }
}

async fn count_one(
    data: &DataPlane,
    client: &ClientRecord,
    deadline: Duration,
) -> Result<(i64, i64), DataError> {
    on_client(data, &client.slug, deadline, async |conn| {
        recipients::figures(conn.client()).await
    })
    .await
}
