//! The drain (`drain_server` job, issue #21): every tenant moved off a `draining` server, smallest first, at most
//! `tenants.moves_per_server` moves at once per source and per target; each target chosen by the placement rule
//! among the other servers that take clients. A failed move rolled back on its own: the drain reports it and goes
//! on without it. `POST /v1/servers/{name}/drain/cancel` makes the server `paused`: the drain starts no new move,
//! lets the running ones finish and ends.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;
use tracing::Instrument;

use super::{ProvisionError, Provisioner};
use crate::control::jobs::Job;
use crate::domain::servers::{self, Candidate, ServerPolicy};

/// How often the drain looks at its moves.
const TICK: Duration = Duration::from_millis(250);

impl Provisioner {
    pub async fn drain_server(
        &self,
        job: &Job,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let server_id = job
            .payload
            .get("server_id")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| ProvisionError::DrainStalled("the drain names no server".to_owned()))?;
        let server = self.control.server(server_id).await?;
        let span = tracing::info_span!("drain", server = %server.name);
        self.drain_steps(job, server_id).instrument(span).await
    }

    async fn drain_steps(
        &self,
        job: &Job,
        server_id: i64,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let per_server = usize::from(self.targets.settings().moves_per_server);
        let mut refused: HashMap<String, String> = HashMap::new();
        loop {
            let server = self.control.server(server_id).await?;
            let cancelled = server.policy() != ServerPolicy::Draining;
            let active = self.control.active_moves().await?;
            let failures = self.control.failed_drain_moves(job.id).await?;
            let failed: HashSet<uuid::Uuid> = failures.iter().map(|(id, _, _)| *id).collect();
            let errors: HashMap<&str, &str> = failures
                .iter()
                .map(|(_, slug, error)| (slug.as_str(), error.as_deref().unwrap_or_default()))
                .collect();
            let from_here = active
                .iter()
                .filter(|m| m.source_server_id == server_id)
                .count();
            let candidates: Vec<_> = self
                .control
                .drain_candidates(server_id)
                .await?
                .into_iter()
                .filter(|c| !failed.contains(&c.id) && !refused.contains_key(&c.slug))
                .collect();
            let mut no_target = false;
            // Moves off this server running now: those found above and those started below.
            let mut running = from_here;
            if !cancelled {
                let started = &mut running;
                let mut load: HashMap<i64, usize> = HashMap::new();
                for m in &active {
                    *load.entry(m.target_server_id).or_default() += 1;
                }
                for candidate in &candidates {
                    if *started >= per_server {
                        break;
                    }
                    let Some(target) = self.drain_target(server_id, &load, per_server).await?
                    else {
                        no_target = true;
                        break;
                    };
                    match self
                        .control
                        .start_move(candidate.id, &target, self.max_attempts, Some(job.id))
                        .await?
                    {
                        Ok(_) => {
                            tracing::info!(client = %candidate.slug, to = %target.name, "drain: move started");
                            *started += 1;
                            *load.entry(target.id).or_default() += 1;
                        }
                        Err(refusal) => {
                            refused.insert(candidate.slug.clone(), refusal.to_string());
                        }
                    }
                }
            }
            let left = self.control.clients_on_server(server_id).await?;
            let moved = self.control.finished_drain_moves(job.id).await?;
            let report = json!({
                "server": server.name, "moved": moved, "running": running, "failed": failed.len(),
                "left": left, "refused": refused, "errors": errors, "cancelled": cancelled,
            });
            if !self.control.job_progress(job, &report).await? {
                return Err(ProvisionError::LostClaim);
            }
            if running == 0 && no_target && !cancelled {
                // Nothing runs and no other server takes a client: waiting would hold a worker for ever.
                return Err(ProvisionError::DrainStalled(format!(
                    "no other server takes clients now; {} client(s) left on {} (add or resume a server, then \
                     drain again)",
                    candidates.len(),
                    server.name
                )));
            }
            let nothing_to_start = cancelled || candidates.is_empty();
            if running == 0 && nothing_to_start {
                tracing::info!(
                    moved,
                    left,
                    failed = failed.len(),
                    cancelled,
                    "drain finished"
                );
                return Ok(Some(report));
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// The server the next move of a drain goes to: the placement rule among the other servers that take clients
    /// and run fewer than `per_server` incoming moves. `None`: none can take one now.
    async fn drain_target(
        &self,
        source: i64,
        load: &HashMap<i64, usize>,
        per_server: usize,
    ) -> Result<Option<crate::control::servers::ServerRecord>, ProvisionError> {
        let usages = self.control.servers_with_usage().await?;
        let candidates: Vec<Candidate> = usages
            .iter()
            .filter(|u| {
                u.server.id != source && load.get(&u.server.id).copied().unwrap_or(0) < per_server
            })
            .map(|u| Candidate {
                name: u.server.name.clone(),
                policy: u.server.policy(),
                zone: u.server.zone.clone(),
                max_databases: i64::from(u.server.max_databases),
                max_bytes: u.server.max_bytes,
                databases: u.databases + load.get(&u.server.id).copied().unwrap_or(0) as i64,
                bytes: u.bytes,
            })
            .collect();
        let Ok(chosen) = servers::choose(&candidates, None) else {
            return Ok(None);
        };
        Ok(usages
            .into_iter()
            .find(|u| u.server.name == chosen.name)
            .map(|u| u.server))
    }
}
