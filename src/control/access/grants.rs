//! Per-client access: a user's grants, and changing one.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{lock_rights, notify_auth_change, revoke_undominated, still_dominates};
use crate::control::{ControlError, ControlPlane};
use crate::domain::rights::{Grant, Level, MASTER_ADMIN};

/// One access grant, with the client's slug.
#[derive(Debug, Clone, FromRow)]
pub struct AccessRow {
    pub client_id: Uuid,
    pub client: String,
    pub level: String,
    pub private_data: bool,
    pub updated_at: DateTime<Utc>,
}

/// A user and its access to one client (a row of the access matrix).
#[derive(Debug, Clone, FromRow)]
pub struct MatrixRow {
    pub username: String,
    pub display_name: String,
    pub home_client: String,
    pub status: String,
    pub level: String,
    pub private_data: bool,
    /// Holds the master-admin role (full access with private data to every client, whatever its rows say).
    pub master_admin: bool,
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

    /// Every user's grant on one client (users without one are absent).
    pub async fn grants_on(&self, client: Uuid) -> Result<HashMap<Uuid, Grant>, ControlError> {
        let rows: Vec<(Uuid, String, bool)> = sqlx::query_as(
            "SELECT user_id, level, private_data FROM client_access WHERE client_id = $1",
        )
        .bind(client)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user, level, private_data)| {
                let level = Level::from_stored(&level);
                (
                    user,
                    Grant {
                        level,
                        private_data,
                    },
                )
            })
            .collect())
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
        self.set_client_access(client, &[(user, grant)], granted_by, actor)
            .await
    }

    /// Sets the access of several users to one client in one transaction: all rows or none. `actor` as for
    /// [`Self::set_access`], re-checked for every row under the rights lock.
    pub async fn set_client_access(
        &self,
        client: Uuid,
        rows: &[(Uuid, Grant)],
        granted_by: Uuid,
        actor: Option<Uuid>,
    ) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        lock_rights(&mut tx).await?;
        for &(user, grant) in rows {
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
        }
        let users: Vec<Uuid> = rows.iter().map(|&(user, _)| user).collect();
        revoke_undominated(&mut tx, &users).await?;
        notify_auth_change(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every user whose home client is in `home_clients` (all when `None`), and `also` (the caller), with its
    /// access to `client` (level `none` when it has none), by username; at most `limit`.
    pub async fn client_access_matrix(
        &self,
        client: Uuid,
        home_clients: Option<&[Uuid]>,
        also: Uuid,
        limit: i64,
    ) -> Result<Vec<MatrixRow>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT u.username, u.display_name, c.slug AS home_client, u.status,
                    coalesce(a.level, 'none') AS level, coalesce(a.private_data, false) AS private_data,
                    EXISTS (SELECT 1 FROM user_roles ur WHERE ur.user_id = u.id AND ur.role = $5) AS master_admin
             FROM users u JOIN clients c ON c.id = u.home_client_id
             LEFT JOIN client_access a ON a.user_id = u.id AND a.client_id = $1
             WHERE $2::uuid[] IS NULL OR u.home_client_id = ANY($2) OR u.id = $3
             ORDER BY u.username LIMIT $4",
        )
        .bind(client)
        .bind(home_clients)
        .bind(also)
        .bind(limit)
        .bind(MASTER_ADMIN)
        .fetch_all(&self.pool)
        .await?)
    }
}
