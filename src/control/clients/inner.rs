//! Inner clients in the registry (issue #19): creating one under a ready parent (numbered per parent, never
//! reused), its scope, and whether a parent's database is ready for them.

use uuid::Uuid;

use super::*;
use crate::control::ControlError;
use crate::control::jobs::JobKind;
use crate::domain::{ClientName, ClientSlug, ClientStatus};

impl ControlPlane {
    /// Creates an inner client of `parent` (a client with its own database, ready for inner clients): no database,
    /// no job, `active` at once, with the next unused number of the parent (numbers are never reused). The scope
    /// is validated by the caller.
    pub async fn create_inner_client(
        &self,
        slug: &ClientSlug,
        name: &ClientName,
        parent: &ClientSlug,
        scope: &serde_json::Value,
        creator_access: Option<(Uuid, bool)>,
    ) -> Result<ClientRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        // FOR UPDATE: numbers are handed out one at a time per parent.
        let parent_row: Option<(Uuid, String, String, bool)> = sqlx::query_as(
            "SELECT id, status, kind, inner_ready FROM clients
             WHERE slug = $1 AND status <> 'deleted' FOR UPDATE",
        )
        .bind(parent.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let (parent_id, status, kind, ready) = parent_row.ok_or(ControlError::UnknownParent)?;
        if kind == "inner" {
            return Err(ControlError::ParentIsInner);
        }
        let status = stored_status(&status)?;
        if status != ClientStatus::Active {
            return Err(ControlError::ParentNotActive(status));
        }
        if !ready {
            return Err(ControlError::ParentNotReady);
        }
        let inserted = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO clients (slug, name, parent_id, kind, status, inner_no, scope)
             SELECT $1, $2, $3, 'inner', 'active', coalesce(max(inner_no), 0) + 1, $4
             FROM clients WHERE parent_id = $3
             RETURNING id",
        )
        .bind(slug.as_str())
        .bind(name.as_str())
        .bind(parent_id)
        .bind(scope)
        .fetch_one(&mut *tx)
        .await;
        let id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("clients_slug_live") => {
                return Err(ControlError::SlugTaken);
            }
            Err(e) => return Err(e.into()),
        };
        grant_creator(&mut tx, id, creator_access).await?;
        let client = client_by_id_on(&mut tx, id).await?;
        tx.commit().await?;
        Ok(client)
    }

    /// Replaces an inner client's scope (validated by the caller); notifies like a status change, so every
    /// process forgets the cached record.
    pub async fn set_inner_scope(
        &self,
        id: Uuid,
        scope: &serde_json::Value,
    ) -> Result<ClientRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE clients SET scope = $2, generation = generation + 1, updated_at = now()
             WHERE id = $1 AND kind = 'inner' AND status <> 'deleted'",
        )
        .bind(id)
        .bind(scope)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(ControlError::NotFound);
        }
        let client = client_by_id_on(&mut tx, id).await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::control::CLIENTS_CHANNEL)
            .bind(format!(
                "{} {} {}",
                client.id,
                client.status.as_str(),
                client.slug
            ))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(client)
    }

    /// Queues the job that prepares a client's database for inner clients (unless one is queued).
    pub async fn request_prepare_inner(
        &self,
        id: Uuid,
        max_attempts: i32,
    ) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        enqueue(
            &mut tx,
            JobKind::PrepareInner,
            id,
            serde_json::json!({}),
            max_attempts,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds a list to an inner client's scope (a list it created), atomically (two lists created at once both
    /// join), and notifies like [`Self::set_inner_scope`].
    pub async fn add_to_inner_scope(&self, id: Uuid, list: i64) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        let slug: Option<(String, String)> = sqlx::query_as(
            "UPDATE clients
             SET scope = jsonb_set(scope, '{lists}', coalesce(scope->'lists', '[]'::jsonb) || to_jsonb($2::int8)),
                 generation = generation + 1, updated_at = now()
             WHERE id = $1 AND kind = 'inner' AND NOT coalesce(scope->'lists', '[]'::jsonb) @> to_jsonb($2::int8)
             RETURNING slug, status",
        )
        .bind(id)
        .bind(list)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((slug, status)) = slug {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(crate::control::CLIENTS_CHANNEL)
                .bind(format!("{id} {status} {slug}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a client's database as able to hold inner clients.
    pub async fn set_inner_ready(&self, id: Uuid) -> Result<(), ControlError> {
        sqlx::query("UPDATE clients SET inner_ready = true, updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The live inner clients of a parent.
    pub async fn inner_clients(&self, parent_id: Uuid) -> Result<Vec<ClientRecord>, ControlError> {
        let rows: Vec<ClientRow> = sqlx::query_as(select_clients!(
            "WHERE c.parent_id = $1 AND c.kind = 'inner' AND c.status <> 'deleted' ORDER BY c.inner_no"
        ))
        .bind(parent_id)
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }
}
