//! Master templates in the control plane: every published version (desired state) and, per client, the version
//! its copy holds (`template_sync`, observed state). Publishing queues one `publish_templates` fan-out; a client
//! it could not reach gets a `sync_templates` job of its own (retries with backoff).

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::clients::{JobFor, enqueue_for};
use super::jobs::JobKind;
use super::{ControlError, ControlPlane};

/// The content of one template version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateContent {
    pub name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
}

/// A master template at its newest version.
#[derive(Debug, Clone, FromRow)]
pub struct MasterTemplate {
    pub id: Uuid,
    pub version: i32,
    pub retracted: bool,
    pub name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One client's sync state for one template.
#[derive(Debug, Clone, FromRow)]
pub struct SyncRow {
    pub template_id: Uuid,
    pub client_id: Uuid,
    pub client: String,
    pub status: String,
    pub synced_version: Option<i32>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

const LATEST: &str = "SELECT t.id, t.version, t.retracted, v.name, v.subject, v.html_body, v.text_body, \
                      t.created_at, t.updated_at \
                      FROM templates t JOIN template_versions v ON v.template_id = t.id AND v.version = t.version";

impl ControlPlane {
    /// Creates a template at version 1 and queues its sync to every active client.
    pub async fn create_template(
        &self,
        content: &TemplateContent,
        max_attempts: i32,
    ) -> Result<MasterTemplate, ControlError> {
        let mut tx = self.pool.begin().await?;
        let id: Uuid = sqlx::query_scalar("INSERT INTO templates DEFAULT VALUES RETURNING id")
            .fetch_one(&mut *tx)
            .await?;
        insert_version(&mut tx, id, 1, content).await?;
        sqlx::query(
            "INSERT INTO template_sync (template_id, client_id, status)
             SELECT $1, id, 'pending' FROM clients WHERE status IN ('active', 'suspended') AND kind <> 'inner'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        enqueue_for(
            &mut tx,
            JobKind::PublishTemplates,
            JobFor::Master,
            max_attempts,
        )
        .await?;
        let template = latest_on(&mut tx, id).await?;
        tx.commit().await?;
        Ok(template)
    }

    /// Publishes a new version; every client that did not override the template becomes pending.
    pub async fn publish_template(
        &self,
        id: Uuid,
        content: &TemplateContent,
        max_attempts: i32,
    ) -> Result<MasterTemplate, ControlError> {
        let mut tx = self.pool.begin().await?;
        let version: i32 = sqlx::query_scalar(
            "UPDATE templates SET version = version + 1, updated_at = now()
             WHERE id = $1 AND NOT retracted RETURNING version",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ControlError::NotFound)?;
        insert_version(&mut tx, id, version, content).await?;
        resync(&mut tx, id, max_attempts).await?;
        let template = latest_on(&mut tx, id).await?;
        tx.commit().await?;
        Ok(template)
    }

    /// Retracts a template: clients' copies go, except overridden ones (those are the clients' own now).
    pub async fn retract_template(&self, id: Uuid, max_attempts: i32) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query(
            "UPDATE templates SET retracted = true, updated_at = now() WHERE id = $1 AND NOT retracted",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if found == 0 {
            return Err(ControlError::NotFound);
        }
        resync(&mut tx, id, max_attempts).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn template(&self, id: Uuid) -> Result<MasterTemplate, ControlError> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{LATEST} WHERE t.id = $1 AND NOT t.retracted"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ControlError::NotFound)
    }

    /// Templates (not retracted) by id, after `after`.
    pub async fn templates(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<MasterTemplate>, ControlError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{LATEST} WHERE NOT t.retracted AND ($1::uuid IS NULL OR t.id > $1) ORDER BY t.id LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every template at its newest version, retracted ones included (a sync removes their copies).
    pub async fn desired_templates(&self) -> Result<Vec<MasterTemplate>, ControlError> {
        Ok(
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{LATEST} ORDER BY t.id")))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Records what syncs found: (client, template, status, version its copy holds), any number of clients in
    /// one statement.
    pub async fn templates_synced(
        &self,
        states: &[(Uuid, Uuid, &'static str, Option<i32>)],
    ) -> Result<(), ControlError> {
        if states.is_empty() {
            return Ok(());
        }
        let clients: Vec<Uuid> = states.iter().map(|s| s.0).collect();
        let ids: Vec<Uuid> = states.iter().map(|s| s.1).collect();
        let statuses: Vec<&str> = states.iter().map(|s| s.2).collect();
        let versions: Vec<Option<i32>> = states.iter().map(|s| s.3).collect();
        sqlx::query(
            "INSERT INTO template_sync AS s (template_id, client_id, status, synced_version)
             SELECT d.id, d.client, d.status, d.version
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[]) AS d(client, id, status, version)
             JOIN templates t ON t.id = d.id
             ON CONFLICT (template_id, client_id) DO UPDATE
                 SET status = EXCLUDED.status, synced_version = EXCLUDED.synced_version, last_error = NULL,
                     updated_at = now()",
        )
        .bind(clients)
        .bind(ids)
        .bind(statuses)
        .bind(versions)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues a sync of one client's templates (a retry after a failed fan-out).
    pub async fn enqueue_template_sync(
        &self,
        client: Uuid,
        max_attempts: i32,
    ) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        super::clients::enqueue(
            &mut tx,
            JobKind::SyncTemplates,
            client,
            serde_json::json!({}),
            max_attempts,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed sync on the client's templates that are not in sync.
    pub async fn templates_failed(&self, client: Uuid, error: &str) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE template_sync SET status = 'failed', last_error = $2, updated_at = now()
             WHERE client_id = $1 AND status IN ('pending', 'failed')",
        )
        .bind(client)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every active and suspended client's sync state for one template, by slug (a suspended client is synced
    /// by the periodic re-queue once it is active again).
    pub async fn template_sync(&self, id: Uuid) -> Result<Vec<SyncRow>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT s.template_id, s.client_id, c.slug AS client, s.status, s.synced_version, s.last_error, s.updated_at
             FROM template_sync s JOIN clients c ON c.id = s.client_id
             WHERE s.template_id = $1 AND c.status IN ('active', 'suspended') ORDER BY c.slug",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Queues a sync for every active client with a template not in sync and no sync queued or running.
    pub async fn requeue_unsynced_templates(&self, max_attempts: i32) -> Result<u64, ControlError> {
        self.requeue_left_behind(
            JobKind::SyncTemplates,
            JobKind::PublishTemplates,
            "SELECT s.client_id FROM template_sync s JOIN clients c ON c.id = s.client_id
             WHERE s.status IN ('pending', 'failed') AND c.status = 'active'",
            max_attempts,
        )
        .await
    }
}

async fn insert_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    version: i32,
    content: &TemplateContent,
) -> Result<(), ControlError> {
    sqlx::query(
        "INSERT INTO template_versions (template_id, version, name, subject, html_body, text_body)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(version)
    .bind(&content.name)
    .bind(&content.subject)
    .bind(&content.html_body)
    .bind(&content.text_body)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn latest_on(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
) -> Result<MasterTemplate, ControlError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{LATEST} WHERE t.id = $1")))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(ControlError::NotFound)
}

/// After a new version or a retraction: every copy that follows the master is pending, and the fan-out queued.
async fn resync(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    max_attempts: i32,
) -> Result<(), ControlError> {
    sqlx::query(
        "UPDATE template_sync SET status = 'pending', updated_at = now()
         WHERE template_id = $1 AND status <> 'overridden'",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    enqueue_for(tx, JobKind::PublishTemplates, JobFor::Master, max_attempts).await
}
