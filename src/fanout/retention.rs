//! The retention purge: every active client's recipients that its rules in force remove, deleted in batches of
//! [`PURGE_BATCH`] through the routing pool as [`Use::Scan`](crate::tenant::pool::Use) work (each batch its own
//! statement within `workers.fanout_client_deadline_ms`), and one audit entry per client and run with the counts.
//!
//! Only one process purges at a time (a session advisory lock). The periods applied are the rules *in force*
//! (`domain::retention`): a rule tightened less than [`TIGHTENING_WAIT`] ago is applied with the value it had
//! before, so nothing is deleted under a new, stricter setting until it has been visible (and its preview
//! checkable) for a day. Deleting is final.
//!
//! [`TIGHTENING_WAIT`]: crate::domain::retention::TIGHTENING_WAIT

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{FanOut, on_client};
use crate::control::ControlError;
use crate::control::access::AuditEntry;
use crate::control::clients::ClientRecord;
use crate::control::retention::AllRules;
use crate::data::retention::{Batch, PURGE_BATCH, purge_batch};
use crate::data::{DataError, DataPlane};
use crate::domain::ClientStatus;
use crate::domain::retention::{ClientRule, RetentionRule};
use crate::telemetry::error_chain;

/// The audit action of a purge (not an HTTP route: the worker's).
pub const PURGE_ACTION: &str = "WORKER retention purge";

/// What one run did in one client.
#[derive(Debug)]
pub struct Purged {
    pub client: String,
    /// The periods applied (days; `None`: the rule was not in force).
    pub periods: [(RetentionRule, Option<i32>); 2],
    /// Recipients deleted under each rule (also when the run stopped on an error).
    pub deleted: [(RetentionRule, u64); 2],
    pub error: Option<String>,
}

impl Purged {
    pub fn count(&self, rule: RetentionRule) -> u64 {
        self.deleted
            .iter()
            .find(|(r, _)| *r == rule)
            .map_or(0, |(_, n)| *n)
    }
}

/// The periods the purge job applies to `client` at `now` (master and override, each as in force).
pub fn periods_in_force(
    rules: &AllRules,
    client: uuid::Uuid,
    now: DateTime<Utc>,
) -> [(RetentionRule, Option<i32>); 2] {
    RetentionRule::ALL.map(|rule| {
        let both = ClientRule {
            master: rules.master.get(&rule).map(|r| r.state).unwrap_or_default(),
            client: rules
                .clients
                .get(&client)
                .and_then(|c| c.get(&rule))
                .map(|r| r.state)
                .unwrap_or_default(),
        };
        (rule, both.in_force(now))
    })
}

impl FanOut {
    /// One purge run over every active client with a rule in force, unless another process is purging right
    /// now (then `None`). Clients are visited one at a time; one that fails is audited with its error and the
    /// run goes on.
    pub async fn apply_retention(&self) -> Result<Option<Vec<Purged>>, ControlError> {
        let Some(_lock) = self.control.try_session_lock("mandant.retention").await? else {
            return Ok(None);
        };
        let rules = self.control.all_retention_rules().await?;
        let now = Utc::now();
        let mut runs = Vec::new();
        for client in self.control.all_live_clients().await? {
            if client.status != ClientStatus::Active || client.server_id.is_none() {
                continue;
            }
            let periods = periods_in_force(&rules, client.id, now);
            if periods.iter().all(|(_, days)| days.is_none()) {
                continue;
            }
            let span = tracing::info_span!("retention", client = %client.slug);
            let run = tracing::Instrument::instrument(
                purge_client(&self.data, &client, periods, now, self.deadline),
                span,
            )
            .await;
            self.audit_purge(&client, &run).await;
            runs.push(run);
        }
        Ok(Some(runs))
    }

    async fn audit_purge(&self, client: &ClientRecord, run: &Purged) {
        let days: serde_json::Map<String, serde_json::Value> = run
            .periods
            .iter()
            .map(|(rule, days)| (rule.as_str().to_owned(), json!(days)))
            .collect();
        let mut detail = json!({
            "opted_out_or_bounced": run.count(RetentionRule::OptedOutOrBounced),
            "unbound": run.count(RetentionRule::Unbound),
            "days": days,
        });
        if let Some(error) = &run.error {
            detail["error"] = json!(error);
        }
        let entry = AuditEntry {
            user_id: None,
            username: None,
            client_id: Some(client.id),
            client_slug: Some(client.slug.clone()),
            action: PURGE_ACTION.to_owned(),
            target: format!("/v1/clients/{}/retention", client.slug),
            outcome: if run.error.is_none() {
                "succeeded"
            } else {
                "failed"
            },
            status: if run.error.is_none() { 200 } else { 503 },
            request_id: None,
            detail: Some(detail),
        };
        if let Err(e) = self.control.record_audit(&entry).await {
            tracing::error!(client = %client.slug, error = %e, detail = ?entry.detail, "could not audit a retention purge");
        }
    }
}

/// Purges one client under `periods`, batch by batch, each rule until a batch comes back short.
async fn purge_client(
    data: &DataPlane,
    client: &ClientRecord,
    periods: [(RetentionRule, Option<i32>); 2],
    as_of: DateTime<Utc>,
    deadline: Duration,
) -> Purged {
    let mut run = Purged {
        client: client.slug.clone(),
        periods,
        deleted: RetentionRule::ALL.map(|rule| (rule, 0)),
        error: None,
    };
    for (i, (rule, days)) in periods.into_iter().enumerate() {
        let Some(days) = days else { continue };
        loop {
            let batch: Result<Batch, DataError> =
                on_client(data, &client.slug, deadline, async |conn| {
                    purge_batch(conn.client_mut(), rule, days, as_of, PURGE_BATCH).await
                })
                .await;
            match batch {
                Ok(batch) => {
                    run.deleted[i].1 += batch.deleted;
                    if batch.candidates < PURGE_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(client = %client.slug, rule = rule.as_str(), error = %error_chain(&e), "retention purge failed");
                    run.error = Some(super::stats::shown(&e));
                    return run;
                }
            }
        }
    }
    if run.deleted.iter().any(|(_, n)| *n > 0) {
        tracing::info!(
            client = %client.slug,
            opted_out_or_bounced = run.count(RetentionRule::OptedOutOrBounced),
            unbound = run.count(RetentionRule::Unbound),
            "retention purge deleted recipients"
        );
    }
    run
}
