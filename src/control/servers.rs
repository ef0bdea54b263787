//! Database servers: registration, placement, template bookkeeping.

use sqlx::FromRow;

use super::{ControlError, ControlPlane, LOCAL_SERVER};

#[derive(Clone, FromRow)]
pub struct ServerRecord {
    pub id: i64,
    pub name: String,
    /// Secret: NULL for the control plane's own cluster. Never logged or returned.
    pub admin_url: Option<String>,
    pub max_databases: i32,
    pub status: String,
    pub template_version: i32,
}

impl std::fmt::Debug for ServerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Registers the database server that holds the control plane itself (admin URL NULL: reached with the
    /// control plane's own credentials), with its configured capacity. Idempotent.
    pub async fn ensure_local_server(&self, max_databases: u32) -> Result<i64, ControlError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO db_servers (name, max_databases) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET max_databases = EXCLUDED.max_databases, updated_at = now()
             RETURNING id",
        )
        .bind(LOCAL_SERVER)
        .bind(i32::try_from(max_databases).unwrap_or(i32::MAX))
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn server(&self, id: i64) -> Result<ServerRecord, ControlError> {
        sqlx::query_as(
            "SELECT id, name, admin_url, max_databases, status, template_version
             FROM db_servers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ControlError::NotFound)
    }

    /// The active server with the most free capacity (max_databases minus the clients placed on it that are
    /// not deleted), or `NoCapacity`.
    pub async fn choose_server(&self) -> Result<ServerRecord, ControlError> {
        sqlx::query_as(
            "SELECT s.id, s.name, s.admin_url, s.max_databases, s.status, s.template_version
             FROM db_servers s
             LEFT JOIN LATERAL (
                 SELECT count(*) AS used FROM clients c
                 WHERE c.server_id = s.id AND c.status <> 'deleted'
             ) u ON true
             WHERE s.status = 'active' AND s.max_databases > u.used
             ORDER BY s.max_databases - u.used DESC, s.id
             LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ControlError::NoCapacity)
    }

    /// Records the tenant migration version verified on a server's template database.
    pub async fn set_template_version(
        &self,
        server_id: i64,
        version: i32,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE db_servers SET template_version = $2, updated_at = now() WHERE id = $1",
        )
        .bind(server_id)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl ControlPlane {
    /// Every registered server, by id.
    pub async fn list_servers(&self) -> Result<Vec<ServerRecord>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT id, name, admin_url, max_databases, status, template_version
             FROM db_servers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
