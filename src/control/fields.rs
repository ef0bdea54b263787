//! Custom fields in the control plane: the desired state (`fields`: central ones with `client_id` NULL, and each
//! client's own) and the observed state per client (`field_status`). Reconciling a client's database towards
//! its desired fields is a `reconcile_fields` job; a central change is one `propagate_fields` fan-out over all
//! clients (a client it cannot reach gets a `reconcile_fields` job of its own).

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::clients::{JobFor, enqueue, enqueue_for};
use super::jobs::JobKind;
use super::{ControlError, ControlPlane};

/// Clients whose databases carry fields: every live client that has (or is getting) a database.
const LIVE: &str = "('provisioning', 'active', 'suspended')";

#[derive(Debug, Clone, FromRow)]
pub struct FieldRecord {
    pub id: i64,
    /// `None`: a central field.
    pub client_id: Option<Uuid>,
    pub name: String,
    pub data_type: String,
    pub length: Option<i32>,
    pub required: bool,
    pub default_value: Option<serde_json::Value>,
    pub personal: bool,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated new field.
#[derive(Debug, Clone)]
pub struct NewField {
    pub name: String,
    pub data_type: &'static str,
    pub length: Option<i32>,
    pub required: bool,
    pub default_value: Option<serde_json::Value>,
    pub personal: bool,
}

/// One client's status for one field.
#[derive(Debug, Clone, FromRow)]
pub struct FieldStatusRow {
    pub field_id: i64,
    pub client_id: Uuid,
    pub slug: String,
    pub status: String,
    pub applied_version: Option<i32>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

const FIELD_COLUMNS: &str = "f.id, f.client_id, f.name, f.data_type, f.length, f.required, f.default_value, \
                             f.personal, f.version, f.created_at, f.updated_at";

impl ControlPlane {
    /// The fields marked personal for a client: central ones and its own (desired state, so a change counts before
    /// the client's database has applied it).
    pub async fn personal_fields(&self, client: Uuid) -> Result<Vec<String>, ControlError> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM fields WHERE personal AND (client_id IS NULL OR client_id = $1) ORDER BY name",
        )
        .bind(client)
        .fetch_all(&self.pool)
        .await?)
    }

    /// [`Self::personal_fields`] of several clients in one query.
    pub async fn personal_fields_of(
        &self,
        clients: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, Vec<String>>, ControlError> {
        let rows: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
            "SELECT c.id, coalesce(array_agg(f.name ORDER BY f.name) FILTER (WHERE f.name IS NOT NULL), '{}')
             FROM unnest($1::uuid[]) AS c(id)
             LEFT JOIN fields f ON f.personal AND (f.client_id IS NULL OR f.client_id = c.id)
             GROUP BY c.id",
        )
        .bind(clients)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Creates a field. A client's own field: refused when a central field has the name or the client's quota is
    /// used up; its status row is `pending` (the caller applies it). A central field: refused when clients have
    /// an own field of that name (`FieldTakenByClients` lists them); every live client gets a `pending` status
    /// row and a reconcile job.
    pub async fn create_field(
        &self,
        owner: Option<Uuid>,
        new: &NewField,
        quota: i64,
        max_attempts: i32,
    ) -> Result<FieldRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        // Central and client fields of one name are checked against each other under one lock, so two
        // concurrent creations cannot both pass.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mandant.fields'))")
            .execute(&mut *tx)
            .await?;
        match owner {
            Some(client) => {
                let central: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM fields WHERE client_id IS NULL AND name = $1)",
                )
                .bind(&new.name)
                .fetch_one(&mut *tx)
                .await?;
                if central {
                    return Err(ControlError::FieldIsCentral);
                }
                let own: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM fields WHERE client_id = $1")
                        .bind(client)
                        .fetch_one(&mut *tx)
                        .await?;
                if own >= quota {
                    return Err(ControlError::FieldQuota(quota));
                }
            }
            None => {
                let holders: Vec<String> = sqlx::query_scalar(
                    "SELECT c.slug FROM fields f JOIN clients c ON c.id = f.client_id
                     WHERE f.name = $1 AND c.status <> 'deleted' ORDER BY c.slug",
                )
                .bind(&new.name)
                .fetch_all(&mut *tx)
                .await?;
                if !holders.is_empty() {
                    return Err(ControlError::FieldTakenByClients(holders));
                }
            }
        }
        let inserted = sqlx::query_as::<_, FieldRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO fields AS f (client_id, name, data_type, length, required, default_value, personal)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {FIELD_COLUMNS}"
        )))
        .bind(owner)
        .bind(&new.name)
        .bind(new.data_type)
        .bind(new.length)
        .bind(new.required)
        .bind(&new.default_value)
        .bind(new.personal)
        .fetch_one(&mut *tx)
        .await;
        let field = match inserted {
            Ok(field) => field,
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
                return Err(ControlError::FieldExists);
            }
            Err(e) => return Err(e.into()),
        };
        match owner {
            Some(client) => {
                sqlx::query(
                    "INSERT INTO field_status (field_id, client_id, status) VALUES ($1, $2, 'pending')",
                )
                .bind(field.id)
                .bind(client)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO field_status (field_id, client_id, status)
                     SELECT $1, id, 'pending' FROM clients WHERE status IN {LIVE} AND kind <> 'inner'"
                )))
                .bind(field.id)
                .execute(&mut *tx)
                .await?;
                enqueue_for(
                    &mut tx,
                    JobKind::PropagateFields,
                    JobFor::Master,
                    max_attempts,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(field)
    }

    /// The fields of one owner (`None`: the central ones), by name.
    pub async fn fields_of(&self, owner: Option<Uuid>) -> Result<Vec<FieldRecord>, ControlError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FIELD_COLUMNS} FROM fields f WHERE f.client_id IS NOT DISTINCT FROM $1 ORDER BY f.name"
        )))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn field(
        &self,
        owner: Option<Uuid>,
        name: &str,
    ) -> Result<FieldRecord, ControlError> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FIELD_COLUMNS} FROM fields f WHERE f.client_id IS NOT DISTINCT FROM $1 AND f.name = $2"
        )))
        .bind(owner)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ControlError::NotFound)
    }

    /// Every field: the central ones and every client's own (a fan-out reads them once).
    pub async fn all_fields(&self) -> Result<Vec<FieldRecord>, ControlError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FIELD_COLUMNS} FROM fields f ORDER BY f.name"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// What a client's database should have: the central fields and its own.
    pub async fn desired_fields(&self, client: Uuid) -> Result<Vec<FieldRecord>, ControlError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FIELD_COLUMNS} FROM fields f WHERE f.client_id IS NULL OR f.client_id = $1 ORDER BY f.name"
        )))
        .bind(client)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Changes a field (a longer text, the personal flag): a new version, pending for every client that has it.
    pub async fn update_field(
        &self,
        owner: Option<Uuid>,
        name: &str,
        length: Option<i32>,
        personal: Option<bool>,
    ) -> Result<FieldRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        let field: FieldRecord = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE fields f SET length = coalesce($3, f.length), personal = coalesce($4, f.personal),
                 version = f.version + 1, updated_at = now()
             WHERE f.client_id IS NOT DISTINCT FROM $1 AND f.name = $2 RETURNING {FIELD_COLUMNS}"
        )))
        .bind(owner)
        .bind(name)
        .bind(length)
        .bind(personal)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ControlError::NotFound)?;
        sqlx::query(
            "UPDATE field_status SET status = 'pending', updated_at = now() WHERE field_id = $1",
        )
        .bind(field.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(field)
    }

    /// Deletes a field from the desired state; its clients get reconcile jobs (which drop the column). Returns
    /// the clients concerned.
    pub async fn delete_field(
        &self,
        owner: Option<Uuid>,
        name: &str,
        max_attempts: i32,
    ) -> Result<Vec<Uuid>, ControlError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "SELECT id FROM fields WHERE client_id IS NOT DISTINCT FROM $1 AND name = $2 FOR UPDATE",
        )
        .bind(owner)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ControlError::NotFound)?;
        let clients: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM clients WHERE status IN {LIVE} AND kind <> 'inner' AND ($1::uuid IS NULL OR id = $1)"
        )))
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM fields WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        match owner {
            Some(_) => {
                enqueue_for(
                    &mut tx,
                    JobKind::ReconcileFields,
                    JobFor::Live(owner),
                    max_attempts,
                )
                .await?
            }
            None => {
                enqueue_for(
                    &mut tx,
                    JobKind::PropagateFields,
                    JobFor::Master,
                    max_attempts,
                )
                .await?
            }
        }
        tx.commit().await?;
        Ok(clients)
    }

    /// Queues a reconcile of one client's fields (unless one is queued already).
    pub async fn enqueue_field_reconcile(
        &self,
        client: Uuid,
        max_attempts: i32,
    ) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        enqueue(
            &mut tx,
            JobKind::ReconcileFields,
            client,
            serde_json::json!({}),
            max_attempts,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues a reconcile for every live client with a field not applied and no reconcile queued or running
    /// (e.g. one whose retries ran out while its database was down). Returns how many were queued.
    pub async fn requeue_unapplied_fields(&self, max_attempts: i32) -> Result<u64, ControlError> {
        self.requeue_left_behind(
            JobKind::ReconcileFields,
            JobKind::PropagateFields,
            "SELECT s.client_id FROM field_status s JOIN clients c ON c.id = s.client_id
             WHERE s.status <> 'applied' AND c.status IN ('active', 'suspended')",
            max_attempts,
        )
        .await
    }

    /// Records successful reconciles: (client, field, version reconciled), any number of clients in one
    /// statement. A field changed meanwhile (another version) stays pending for the next run.
    pub async fn fields_applied(&self, applied: &[(Uuid, i64, i32)]) -> Result<(), ControlError> {
        if applied.is_empty() {
            return Ok(());
        }
        let clients: Vec<Uuid> = applied.iter().map(|a| a.0).collect();
        let ids: Vec<i64> = applied.iter().map(|a| a.1).collect();
        let versions: Vec<i32> = applied.iter().map(|a| a.2).collect();
        sqlx::query(
            "INSERT INTO field_status AS s (field_id, client_id, status, applied_version)
             SELECT f.id, d.client, 'applied', f.version
             FROM fields f JOIN unnest($1::uuid[], $2::int8[], $3::int4[]) AS d(client, id, version)
                  ON f.id = d.id AND f.version = d.version
             ON CONFLICT (field_id, client_id) DO UPDATE
                 SET status = 'applied', applied_version = EXCLUDED.applied_version, last_error = NULL,
                     updated_at = now()",
        )
        .bind(clients)
        .bind(ids)
        .bind(versions)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed reconcile on every field the client does not have yet.
    pub async fn fields_failed(&self, client: Uuid, error: &str) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE field_status SET status = 'failed', last_error = $2, updated_at = now()
             WHERE client_id = $1 AND status <> 'applied'",
        )
        .bind(client)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every client's status for one field, by slug.
    pub async fn field_statuses(&self, field: i64) -> Result<Vec<FieldStatusRow>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT s.field_id, s.client_id, c.slug, s.status, s.applied_version, s.last_error, s.updated_at
             FROM field_status s JOIN clients c ON c.id = s.client_id
             WHERE s.field_id = $1 AND c.status IN ('provisioning', 'active', 'suspended') ORDER BY c.slug",
        )
        .bind(field)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One client's status for each of its fields.
    pub async fn client_field_statuses(
        &self,
        client: Uuid,
    ) -> Result<Vec<FieldStatusRow>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT s.field_id, s.client_id, c.slug, s.status, s.applied_version, s.last_error, s.updated_at
             FROM field_status s JOIN clients c ON c.id = s.client_id WHERE s.client_id = $1",
        )
        .bind(client)
        .fetch_all(&self.pool)
        .await?)
    }
}
