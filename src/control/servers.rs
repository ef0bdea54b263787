//! Database servers: registration, changes, removal, usage, placement, template bookkeeping.
//!
//! What is stored: each server's admin URL *without* its password, the password sealed with the credential secret
//! (`admin_password`, opened only by `tenant/targets.rs`), declared capacity (`max_databases`, `max_bytes`), the
//! routing budget, the zone, the policy (`status`: active, paused, draining: set by a drain) and what registration
//! observed (version, `wal_level`). Usage (databases, bytes) is not stored: it is counted from the clients and the
//! statistics worker's figures when asked.

use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::{ControlError, ControlPlane, LOCAL_SERVER};
use crate::domain::servers::{self, Candidate, ServerName, ServerPolicy, Zone};

#[derive(Clone, FromRow)]
pub struct ServerRecord {
    pub id: i64,
    pub name: String,
    /// NULL for the control plane's own cluster. Without its password for servers registered through the API
    /// (that is `admin_password`); never logged or returned.
    pub admin_url: Option<String>,
    /// The admin password, sealed (see `tenant/credentials.rs`). Never logged or returned.
    pub admin_password: Option<Vec<u8>>,
    pub max_databases: i32,
    pub max_bytes: Option<i64>,
    pub budget: Option<i32>,
    pub zone: Option<String>,
    pub status: String,
    pub template_version: i32,
    pub server_version: Option<i32>,
    pub wal_level: Option<String>,
}

impl ServerRecord {
    pub fn policy(&self) -> ServerPolicy {
        ServerPolicy::stored(&self.status)
    }
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

/// The columns of a [`ServerRecord`], `s` being `db_servers`.
macro_rules! select_servers {
    ($($tail:literal)*) => {
        concat!(
            "SELECT s.id, s.name, s.admin_url, s.admin_password, s.max_databases, s.max_bytes, s.budget, s.zone,
                    s.status, s.template_version, s.server_version, s.wal_level
             FROM db_servers s ",
            $($tail),*
        )
    };
}

/// A server with its usage, for `GET /v1/servers` and the CLI.
#[derive(Debug, Clone)]
pub struct ServerUsage {
    pub server: ServerRecord,
    /// Live (not deleted) clients placed on it.
    pub databases: i64,
    /// Their total size as last measured by the statistics worker (0 before any measurement).
    pub bytes: i64,
}

#[derive(FromRow)]
struct UsageRow {
    #[sqlx(flatten)]
    server: ServerRecord,
    databases: i64,
    bytes: i64,
}

/// The usage join: `u.databases`, `u.bytes` per server `s`.
macro_rules! select_usage {
    ($($tail:literal)*) => {
        concat!(
            "SELECT s.id, s.name, s.admin_url, s.admin_password, s.max_databases, s.max_bytes, s.budget, s.zone,
                    s.status, s.template_version, s.server_version, s.wal_level,
                    u.databases, u.bytes
             FROM db_servers s
             LEFT JOIN LATERAL (
                 SELECT count(*)::int8 AS databases, coalesce(sum(st.database_bytes), 0)::int8 AS bytes
                 FROM clients c LEFT JOIN client_stats st ON st.client_id = c.id
                 WHERE c.server_id = s.id AND c.status <> 'deleted'
             ) u ON true ",
            $($tail),*
        )
    };
}

/// A server to register (checked by `dbservers`; the password already sealed).
pub struct NewServer<'a> {
    pub name: &'a ServerName,
    /// The admin URL without its password.
    pub admin_url: &'a str,
    pub admin_password: Option<Vec<u8>>,
    pub max_databases: i32,
    pub max_bytes: Option<i64>,
    pub budget: Option<i32>,
    pub zone: Option<&'a Zone>,
    pub server_version: i32,
    pub wal_level: &'a str,
}

/// A change of a server (absent fields stay; `Some(None)` clears an optional one).
#[derive(Debug, Default)]
pub struct ServerChange {
    pub policy: Option<ServerPolicy>,
    pub max_databases: Option<i32>,
    pub max_bytes: Option<Option<i64>>,
    pub budget: Option<Option<i32>>,
    pub zone: Option<Option<Zone>>,
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
        sqlx::query_as(select_servers!("WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ControlError::NotFound)
    }

    pub async fn server_by_name(&self, name: &ServerName) -> Result<ServerRecord, ControlError> {
        sqlx::query_as(select_servers!("WHERE s.name = $1"))
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ControlError::NotFound)
    }

    /// The server a client that was not placed when it was created (the master, at first start) goes to, by the
    /// placement rule without a zone.
    pub async fn choose_server(&self) -> Result<ServerRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        let id = choose_on(&mut tx, None).await?;
        tx.commit().await?;
        self.server(id).await
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

    /// Every registered server, by id.
    pub async fn list_servers(&self) -> Result<Vec<ServerRecord>, ControlError> {
        Ok(sqlx::query_as(select_servers!("ORDER BY s.id"))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every registered server with its usage, by name.
    pub async fn servers_with_usage(&self) -> Result<Vec<ServerUsage>, ControlError> {
        let rows: Vec<UsageRow> = sqlx::query_as(select_usage!("ORDER BY s.name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(UsageRow::into_usage).collect())
    }

    /// One server with its usage.
    pub async fn server_with_usage(&self, name: &ServerName) -> Result<ServerUsage, ControlError> {
        let row: Option<UsageRow> = sqlx::query_as(select_usage!("WHERE s.name = $1"))
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.ok_or(ControlError::NotFound)?.into_usage())
    }

    /// Registers a checked server (`active`); a taken name is `ServerNameTaken`.
    pub async fn insert_server(&self, new: &NewServer<'_>) -> Result<ServerRecord, ControlError> {
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO db_servers (name, admin_url, admin_password, max_databases, max_bytes, budget, zone,
                                     server_version, wal_level)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(new.name.as_str())
        .bind(new.admin_url)
        .bind(new.admin_password.as_deref())
        .bind(new.max_databases)
        .bind(new.max_bytes)
        .bind(new.budget)
        .bind(new.zone.map(Zone::as_str))
        .bind(new.server_version)
        .bind(new.wal_level)
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(id) => self.server(id).await,
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("db_servers_name_key") => {
                Err(ControlError::ServerNameTaken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Changes a server's policy, capacity, budget or zone.
    pub async fn update_server(
        &self,
        name: &ServerName,
        change: &ServerChange,
    ) -> Result<ServerRecord, ControlError> {
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE db_servers SET
                 status = coalesce($2, status),
                 max_databases = coalesce($3, max_databases),
                 max_bytes = CASE WHEN $4 THEN $5 ELSE max_bytes END,
                 budget = CASE WHEN $6 THEN $7 ELSE budget END,
                 zone = CASE WHEN $8 THEN $9 ELSE zone END,
                 updated_at = now()
             WHERE name = $1 RETURNING id",
        )
        .bind(name.as_str())
        .bind(change.policy.map(ServerPolicy::as_str))
        .bind(change.max_databases)
        .bind(change.max_bytes.is_some())
        .bind(change.max_bytes.flatten())
        .bind(change.budget.is_some())
        .bind(change.budget.flatten())
        .bind(change.zone.is_some())
        .bind(change.zone.clone().flatten().map(|z| z.as_str().to_owned()))
        .fetch_optional(&self.pool)
        .await?;
        self.server(updated.ok_or(ControlError::NotFound)?).await
    }

    /// Removes a server that holds no live client (`ServerInUse` otherwise, with the count). Deleted clients'
    /// tombstones forget the server. The local server (the control plane's own cluster) is never removed.
    pub async fn delete_server(&self, name: &ServerName) -> Result<(), ControlError> {
        if name.as_str() == LOCAL_SERVER {
            return Err(ControlError::ServerIsLocal);
        }
        let mut tx = self.pool.begin().await?;
        // Placement locks the same key: no client is placed on the server while it is being removed.
        lock_placement(&mut tx).await?;
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM db_servers WHERE name = $1 FOR UPDATE")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let id = id.ok_or(ControlError::NotFound)?;
        // Clients placed there, or moving there.
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM clients WHERE (server_id = $1 AND status <> 'deleted') OR moving_to = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if live > 0 {
            return Err(ControlError::ServerInUse(live));
        }
        sqlx::query(
            "UPDATE clients SET server_id = NULL WHERE server_id = $1 AND status = 'deleted'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // Retired source databases of moves go with their server.
        sqlx::query("DELETE FROM retired_databases WHERE server_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM db_servers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl UsageRow {
    fn into_usage(self) -> ServerUsage {
        ServerUsage {
            server: self.server,
            databases: self.databases,
            bytes: self.bytes,
        }
    }
}

/// Serialises placements (and server removals) between processes: each placement reads the usage and records
/// its choice in one transaction, so two new clients never both take a server's last slot.
async fn lock_placement(tx: &mut Transaction<'_, Postgres>) -> Result<(), ControlError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mandant.placement'))")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The server the placement rule (`domain::servers::choose`) picks now, under the placement lock held until the
/// transaction ends; `NoServerAvailable` says why none fits.
async fn choose_on(
    tx: &mut Transaction<'_, Postgres>,
    zone: Option<&Zone>,
) -> Result<i64, ControlError> {
    lock_placement(tx).await?;
    let rows: Vec<UsageRow> = sqlx::query_as(select_usage!("ORDER BY s.name"))
        .fetch_all(&mut **tx)
        .await?;
    let candidates: Vec<Candidate> = rows
        .iter()
        .map(|r| Candidate {
            name: r.server.name.clone(),
            policy: r.server.policy(),
            zone: r.server.zone.clone(),
            max_databases: i64::from(r.server.max_databases),
            max_bytes: r.server.max_bytes,
            databases: r.databases,
            bytes: r.bytes,
        })
        .collect();
    let chosen = servers::choose(&candidates, zone).map_err(ControlError::NoServerAvailable)?;
    rows.iter()
        .find(|r| r.server.name == chosen.name)
        .map(|r| r.server.id)
        .ok_or(ControlError::NotFound)
}

/// Places a new client (inside the transaction that creates it): the chosen server is recorded on the client
/// at once, so the answer to `POST /v1/clients` names it and a full fleet is refused before anything is made.
pub(super) async fn place_new_client(
    tx: &mut Transaction<'_, Postgres>,
    client_id: Uuid,
    zone: Option<&Zone>,
) -> Result<(), ControlError> {
    let server_id = choose_on(tx, zone).await?;
    sqlx::query("UPDATE clients SET server_id = $2 WHERE id = $1")
        .bind(client_id)
        .bind(server_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
