//! Per-client access: a user's grants, and changing one.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{lock_rights, notify_auth_change, revoke_undominated, still_dominates};
use crate::control::{ControlError, ControlPlane};
use crate::domain::rights::{Grant, Level};

/// One access grant, with the client's slug.
#[derive(Debug, Clone, FromRow)]
pub struct AccessRow {
    pub client_id: Uuid,
    pub client: String,
    pub level: String,
    pub private_data: bool,
    pub updated_at: DateTime<Utc>,
}

impl ControlPlane {
    /// A user's grants on live clients, by slug.
    pub async fn access_of(&self, user: Uuid) -> Result<Vec<AccessRow>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT a.client_id, c.slug AS client, a.level, a.private_data, a.updated_at
             FROM client_access a JOIN clients c ON c.id = a.client_id
             WHERE a.user_id = $1 AND c.status <> 'deleted' ORDER BY c.slug",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sets (or, for level none, removes) a user's access to a client. `actor`: who grants it, if its dominance
    /// over the user and its right to give this grant must hold.
    pub async fn set_access(
        &self,
        user: Uuid,
        client: Uuid,
        grant: Grant,
        granted_by: Uuid,
        actor: Option<Uuid>,
    ) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        lock_rights(&mut tx).await?;
        if let Some(mine) = still_dominates(&mut tx, actor, user).await?
            && !mine.may_grant(client, grant)
        {
            return Err(ControlError::NotDominated);
        }
        if grant.level == Level::None {
            sqlx::query("DELETE FROM client_access WHERE user_id = $1 AND client_id = $2")
                .bind(user)
                .bind(client)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO client_access (user_id, client_id, level, private_data, granted_by)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, client_id) DO UPDATE
                 SET level = $3, private_data = $4, granted_by = $5, updated_at = now()",
            )
            .bind(user)
            .bind(client)
            .bind(grant.level.as_str())
            .bind(grant.private_data)
            .bind(granted_by)
            .execute(&mut *tx)
            .await?;
        }
        revoke_undominated(&mut tx, &[user]).await?;
        notify_auth_change(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
