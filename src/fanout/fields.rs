//! Custom fields, applied: one client's database brought to exactly its desired fields (the request path of a
//! client's own field, the provisioning step and the `reconcile_fields` job all end in [`FanOut::apply_fields`]),
//! and the `propagate_fields` fan-out of central fields to every client.

use std::sync::Arc;

use uuid::Uuid;

use super::{FanOut, FanoutError, Recorder};
use crate::control::fields::FieldRecord;
use crate::control::jobs::Job;
use crate::control::servers::ServerRecord;
use crate::control::{ControlError, ControlPlane};
use crate::domain::ClientStatus;
use crate::domain::field::{Field, FieldType};
use crate::telemetry::error_chain;
use crate::tenant::fields::{self, FieldSpec, Reconciled};

/// (client, field, version) pairs now applied.
type Applied = (Uuid, i64, i32);

impl FanOut {
    /// Reconciles one client's fields now and records them applied.
    pub async fn apply_fields(
        &self,
        id: Uuid,
        server: &ServerRecord,
    ) -> Result<Reconciled, FanoutError> {
        let desired = self.control.desired_fields(id).await?;
        let (done, applied) = self.reconcile_client_fields(id, server, &desired).await?;
        self.control.fields_applied(&applied).await?;
        Ok(done)
    }

    /// Reconciles one client's fields; returns what changed and the pairs now applied (for the caller to record,
    /// one by one or in batches).
    async fn reconcile_client_fields(
        &self,
        id: Uuid,
        server: &ServerRecord,
        desired: &[FieldRecord],
    ) -> Result<(Reconciled, Vec<Applied>), FanoutError> {
        let specs = desired
            .iter()
            .map(field_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let targets = self.data.targets();
        let target = targets.admin_on_tenant(server, id)?;
        let done = fields::reconcile(&target, &targets.names(id).role, &specs).await?;
        if !done.is_empty() {
            tracing::info!(added = ?done.added, changed = ?done.changed, dropped = ?done.dropped, "fields reconciled");
        }
        Ok((
            done,
            desired.iter().map(|f| (id, f.id, f.version)).collect(),
        ))
    }

    /// Runs a `reconcile_fields` job: the client's database gets exactly its desired fields. A client without a
    /// live database has nothing to reconcile (provisioning applies the fields itself).
    pub async fn reconcile_fields(
        &self,
        job: &Job,
    ) -> Result<Option<serde_json::Value>, FanoutError> {
        let apply = |client: crate::control::clients::ClientRecord, server: ServerRecord| async move {
            let done = self.apply_fields(client.id, &server).await?;
            Ok(serde_json::json!({
                "added": done.added, "changed": done.changed, "dropped": done.dropped,
            }))
        };
        self.for_job_client(job, "reconcile_fields", has_fields, &FieldsRecorder, apply)
            .await
    }

    /// Runs a `propagate_fields` job: every active and suspended client's fields reconciled (every field read
    /// once, not a query per client).
    pub async fn propagate_fields(&self) -> Result<Option<serde_json::Value>, FanoutError> {
        let all_fields = Arc::new(self.control.all_fields().await?);
        let outcome = self
            .over_clients(
                "reconcile_fields",
                |client| has_fields(client.status),
                |client, server| {
                    let (this, all_fields) = (self.clone(), all_fields.clone());
                    async move {
                        let desired: Vec<FieldRecord> = all_fields
                            .iter()
                            .filter(|f| f.client_id.is_none_or(|owner| owner == client.id))
                            .cloned()
                            .collect();
                        this.reconcile_client_fields(client.id, &server, &desired)
                            .await
                            .map(|(_, applied)| applied)
                            .map_err(|e| error_chain(&e))
                    }
                },
                &FieldsRecorder,
            )
            .await?;
        Ok(Some(serde_json::json!({
            "reconciled": outcome.done, "failed": outcome.failed,
        })))
    }
}

/// Clients whose database holds fields: active and suspended ones (suspended ones are reconciled over the
/// administrator's connection, their role cannot log in).
fn has_fields(status: ClientStatus) -> bool {
    matches!(status, ClientStatus::Active | ClientStatus::Suspended)
}

struct FieldsRecorder;

impl Recorder for FieldsRecorder {
    type Item = Applied;

    async fn record(&self, control: &ControlPlane, batch: &[Applied]) -> Result<(), ControlError> {
        control.fields_applied(batch).await
    }

    async fn mark_failed(
        &self,
        control: &ControlPlane,
        client: Uuid,
        error: &str,
    ) -> Result<(), ControlError> {
        control.fields_failed(client, error).await
    }

    async fn queue_retry(
        &self,
        control: &ControlPlane,
        client: Uuid,
        max_attempts: i32,
    ) -> Result<(), ControlError> {
        control.enqueue_field_reconcile(client, max_attempts).await
    }
}

/// The tenant-side description of a control-plane field.
pub fn field_spec(field: &FieldRecord) -> Result<FieldSpec, FanoutError> {
    let bad = |what: &str| FanoutError::BadField(field.name.clone(), what.to_owned());
    let ty = FieldType::parse(&field.data_type, field.length).ok_or_else(|| bad("unknown type"))?;
    let default = match &field.default_value {
        None => None,
        Some(json) => Some(
            Field::custom(&field.name, ty, field.personal)
                .parse_json(json)
                .map_err(|e| bad(&format!("default {e}")))?,
        ),
    };
    Ok(FieldSpec {
        name: field.name.clone(),
        ty,
        required: field.required,
        default,
        personal: field.personal,
        origin: if field.client_id.is_some() {
            "client"
        } else {
            "central"
        },
    })
}
