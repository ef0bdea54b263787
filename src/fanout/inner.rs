//! The inner clients' scope job: every live inner client's scope (control plane, the desired state) applied in
//! its parent's database: lists joined or left, the rule evaluated again on every recipient (so a recipient whose
//! fields changed joins or leaves a rule scope within `workers.inner_scope_interval_secs`), and a scope that could
//! not be applied when it was set (the parent's database down) applied now. One process at a time; each parent's
//! database visited once, through the routing pool as [`Use::Scan`](crate::tenant::pool::Use) work.

use std::collections::BTreeMap;

use super::{FanOut, on_client};
use crate::control::ControlError;
use crate::control::clients::ClientRecord;
use crate::data::inner::{Applied, Scope, apply};
use crate::domain::ClientStatus;
use crate::telemetry::error_chain;

/// What one run did for one inner client.
#[derive(Debug)]
pub struct ScopeRun {
    pub client: String,
    pub applied: Result<Applied, String>,
}

impl FanOut {
    /// One run over every live inner client, unless another process is running it (then `None`).
    pub async fn apply_inner_scopes(&self) -> Result<Option<Vec<ScopeRun>>, ControlError> {
        let Some(_lock) = self
            .control
            .try_session_lock("mandant.inner_scopes")
            .await?
        else {
            return Ok(None);
        };
        let clients = self.control.all_live_clients().await?;
        let parents: BTreeMap<uuid::Uuid, &ClientRecord> = clients
            .iter()
            .filter(|c| c.status == ClientStatus::Active && c.server_id.is_some())
            .map(|c| (c.id, c))
            .collect();
        let mut runs = Vec::new();
        for inner in clients.iter().filter(|c| c.is_inner()) {
            let (Some(parent), Some(inner_no), Some(stored)) = (
                inner.parent_id.and_then(|p| parents.get(&p)),
                inner.inner_no,
                inner.scope.as_ref(),
            ) else {
                continue;
            };
            let id = inner.id;
            let control = &self.control;
            let applied = match Scope::from_stored(stored) {
                // Read again under the inner client's lock (see `data::inner::apply`): a PATCH may be newer.
                Ok(_) => on_client(&self.data, &parent.slug, self.deadline, async |conn| {
                    apply(conn.client_mut(), inner_no, async || {
                        let now = control.client_by_id(id).await?;
                        now.scope
                            .filter(|_| now.status != ClientStatus::Deleted)
                            .map(|stored| Scope::from_stored(&stored))
                            .transpose()
                    })
                    .await
                })
                .await
                .map_err(|e| {
                    tracing::warn!(client = %inner.slug, parent = %parent.slug, error = %error_chain(&e), "could not apply an inner client's scope");
                    super::stats::shown(&e)
                }),
                Err(e) => Err(e.to_string()),
            };
            if let Ok(applied) = &applied
                && (applied.lists > 0 || applied.rule_joined > 0 || applied.rule_left > 0)
            {
                tracing::info!(client = %inner.slug, parent = %parent.slug, ?applied, "inner client's scope changed");
            }
            runs.push(ScopeRun {
                client: inner.slug.clone(),
                applied,
            });
        }
        Ok(Some(runs))
    }
}
