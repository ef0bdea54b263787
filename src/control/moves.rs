//! Live moves and drains (issue #21): starting a move (the client's `moving_to` and its `move_client` job in one
//! transaction), the freeze flag, the switch (server, generation, freeze and `moving_to` in one transaction, with
//! the source database recorded for later removal), giving a move up, the retired source databases, and what a
//! drain needs (the tenants left on a server, the moves running per server).

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::clients::{ClientRecord, enqueue};
use super::jobs::JobKind;
use super::servers::ServerRecord;
use super::{ControlError, ControlPlane};
use crate::domain::ClientStatus;
use crate::domain::servers::{ServerName, ServerPolicy};

/// Why a move cannot start (the API answers 409 with the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveRefusal {
    /// A move of this client runs already.
    Moving,
    /// The client is on that server already.
    SameServer,
    /// The target takes no new clients (paused, draining) or is full.
    TargetNotAccepting(String),
    /// The client is not in a state that can move (provisioning, deleting, failed) or has no database.
    NotMovable(String),
    /// No server of that name is registered.
    UnknownServer(String),
    /// The client's server cannot publish (`wal_level` below `logical`).
    WalLevel(String),
}

impl MoveRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Moving => "client_moving",
            Self::SameServer => "same_server",
            Self::TargetNotAccepting(_) => "server_not_accepting",
            Self::NotMovable(_) => "client_not_movable",
            Self::UnknownServer(_) => "unknown_server",
            Self::WalLevel(_) => "wal_level_not_logical",
        }
    }
}

impl std::fmt::Display for MoveRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Moving => f.write_str("a move of this client is running already"),
            Self::SameServer => f.write_str("the client is on that server already"),
            Self::TargetNotAccepting(why) | Self::NotMovable(why) => f.write_str(why),
            Self::UnknownServer(name) => write!(f, "there is no database server {name}"),
            Self::WalLevel(level) => write!(
                f,
                "the client's server runs with wal_level = {level}; moves off it need wal_level = logical"
            ),
        }
    }
}

/// A moved tenant's source database kept for a while.
#[derive(Debug, Clone, FromRow)]
pub struct RetiredDatabase {
    pub id: i64,
    pub client_id: Uuid,
    pub server_id: i64,
    pub db_name: String,
    pub move_id: Uuid,
    pub drop_after: DateTime<Utc>,
    /// Whether the client lives on that server again (then its roles there are its live roles: keep them).
    pub client_is_back: bool,
}

/// A tenant a drain has still to move off its server.
#[derive(Debug, Clone, FromRow)]
pub struct DrainCandidate {
    pub id: Uuid,
    pub slug: String,
    pub bytes: i64,
}

/// A move job queued or running: which client, from where, to where.
#[derive(Debug, Clone, FromRow)]
pub struct ActiveMove {
    pub job_id: Uuid,
    pub client_id: Uuid,
    pub source_server_id: i64,
    pub target_server_id: i64,
    /// The drain (its job id) that started the move.
    pub drain: Option<Uuid>,
}

/// status, kind, server, moving_to, database of a client about to move.
type MovableRow = (String, String, Option<i64>, Option<i64>, Option<String>);

impl ControlPlane {
    /// Starts a move of a client to `target`: under a lock on the client, checks that it can move (it has its own
    /// database, is active or suspended, no move runs, the target differs, takes clients and has room), records
    /// `moving_to` and queues the `move_client` job (its id is the move's). `drain`: the server a drain moves it
    /// off, recorded in the job.
    pub async fn start_move(
        &self,
        client_id: Uuid,
        target: &ServerRecord,
        max_attempts: i32,
        drain: Option<Uuid>,
    ) -> Result<Result<(ClientRecord, Uuid), MoveRefusal>, ControlError> {
        let mut tx = self.pool.begin().await?;
        // The placement lock: a move's room on the target is counted with every placement.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mandant.placement'))")
            .execute(&mut *tx)
            .await?;
        let row: Option<MovableRow> =
            sqlx::query_as(
                "SELECT status, kind, server_id, moving_to, db_name FROM clients WHERE id = $1 FOR UPDATE",
            )
            .bind(client_id)
            .fetch_optional(&mut *tx)
            .await?;
        let (status, kind, server_id, moving_to, db_name) = row.ok_or(ControlError::NotFound)?;
        let status = ClientStatus::parse(&status)
            .map_err(|e| ControlError::Query(sqlx::Error::Decode(e.to_string().into())))?;
        let refusal = if kind == "inner" || db_name.is_none() {
            Some(MoveRefusal::NotMovable(
                "the client has no database of its own (an inner client moves with its parent)"
                    .to_owned(),
            ))
        } else if !matches!(status, ClientStatus::Active | ClientStatus::Suspended) {
            Some(MoveRefusal::NotMovable(format!(
                "the client is {}; only an active or suspended client can move",
                status.as_str()
            )))
        } else if moving_to.is_some() {
            Some(MoveRefusal::Moving)
        } else if server_id == Some(target.id) {
            Some(MoveRefusal::SameServer)
        } else if target.policy() != ServerPolicy::Active {
            Some(MoveRefusal::TargetNotAccepting(format!(
                "server {} is {} and takes no clients",
                target.name, target.status
            )))
        } else {
            let used: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM clients
                 WHERE (server_id = $1 OR moving_to = $1) AND status <> 'deleted'",
            )
            .bind(target.id)
            .fetch_one(&mut *tx)
            .await?;
            (used >= i64::from(target.max_databases)).then(|| {
                MoveRefusal::TargetNotAccepting(format!(
                    "server {} holds its maximum of {} databases",
                    target.name, target.max_databases
                ))
            })
        };
        if let Some(refusal) = refusal {
            return Ok(Err(refusal));
        }
        let source = server_id.ok_or(ControlError::NotFound)?;
        sqlx::query("UPDATE clients SET moving_to = $2, updated_at = now() WHERE id = $1")
            .bind(client_id)
            .bind(target.id)
            .execute(&mut *tx)
            .await?;
        let job = enqueue(
            &mut tx,
            JobKind::MoveClient,
            client_id,
            serde_json::json!({"source_server_id": source, "target_server_id": target.id, "drain": drain}),
            max_attempts,
        )
        .await?
        .ok_or(MoveRefusal::Moving);
        let job = match job {
            Ok(job) => job,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let client = super::clients::client_by_id_on(&mut tx, client_id).await?;
        tx.commit().await?;
        Ok(Ok((client, job)))
    }

    /// Queues the job that applies a client's status to its roles (after a rollback that could not reach the
    /// source).
    pub async fn enqueue_sync_access(&self, client_id: Uuid) -> Result<(), ControlError> {
        let mut tx = self.pool.begin().await?;
        enqueue(
            &mut tx,
            JobKind::SyncAccess,
            client_id,
            serde_json::json!({}),
            10,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts or ends a move's freeze (the clients channel tells every process).
    pub async fn set_frozen(&self, client_id: Uuid, frozen: bool) -> Result<(), ControlError> {
        sqlx::query("UPDATE clients SET frozen = $2 WHERE id = $1")
            .bind(client_id)
            .bind(frozen)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The switch, in one transaction: the client now lives on the target (`server_id`, a new `generation`), the
    /// freeze and `moving_to` end, and the source database is recorded under its retired name, to be dropped
    /// after `retention_days`. False if the client is no longer moving there from `source` (switched already).
    pub async fn switch_move(
        &self,
        client_id: Uuid,
        move_id: Uuid,
        source: i64,
        target: i64,
        retired_name: &str,
        retention_days: u32,
    ) -> Result<bool, ControlError> {
        let mut tx = self.pool.begin().await?;
        let switched = sqlx::query(
            "UPDATE clients SET server_id = $3, generation = generation + 1, frozen = false, moving_to = NULL,
                    updated_at = now()
             WHERE id = $1 AND server_id = $2 AND moving_to = $3",
        )
        .bind(client_id)
        .bind(source)
        .bind(target)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if switched {
            sqlx::query(
                "INSERT INTO retired_databases (client_id, server_id, db_name, move_id, drop_after)
                 VALUES ($1, $2, $3, $4, now() + make_interval(days => $5))
                 ON CONFLICT (server_id, db_name) DO NOTHING",
            )
            .bind(client_id)
            .bind(source)
            .bind(retired_name)
            .bind(move_id)
            .bind(i32::try_from(retention_days).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(switched)
    }

    /// A move given up (rolled back) or finished: the client is no longer moving or frozen.
    pub async fn end_move(&self, client_id: Uuid) -> Result<(), ControlError> {
        sqlx::query(
            "UPDATE clients SET moving_to = NULL, frozen = false, updated_at = now() WHERE id = $1",
        )
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Retired source databases whose time has come.
    pub async fn retired_due(&self) -> Result<Vec<RetiredDatabase>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT r.id, r.client_id, r.server_id, r.db_name, r.move_id, r.drop_after,
                    (c.server_id = r.server_id AND c.status <> 'deleted') AS client_is_back
             FROM retired_databases r JOIN clients c ON c.id = r.client_id
             WHERE r.dropped_at IS NULL AND r.drop_after <= now()
             ORDER BY r.drop_after LIMIT 20",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// A client's retired source databases not dropped yet (its deletion drops them at once).
    pub async fn retired_of(&self, client_id: Uuid) -> Result<Vec<RetiredDatabase>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT r.id, r.client_id, r.server_id, r.db_name, r.move_id, r.drop_after,
                    (c.server_id = r.server_id AND c.status <> 'deleted') AS client_is_back
             FROM retired_databases r JOIN clients c ON c.id = r.client_id
             WHERE r.dropped_at IS NULL AND r.client_id = $1",
        )
        .bind(client_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn retired_dropped(&self, id: i64) -> Result<(), ControlError> {
        sqlx::query("UPDATE retired_databases SET dropped_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Move jobs queued or running (a replication object of any other move is a leftover).
    pub async fn active_moves(&self) -> Result<Vec<ActiveMove>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT id AS job_id, client_id, (payload->>'source_server_id')::int8 AS source_server_id,
                    (payload->>'target_server_id')::int8 AS target_server_id,
                    (payload->>'drain')::uuid AS drain
             FROM jobs WHERE kind = 'move_client' AND status IN ('queued', 'running')",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Clients marked as moving whose move job is neither queued nor running any more (it ran out of attempts
    /// while its worker kept dying): their latest move, to roll back.
    pub async fn stuck_moves(&self) -> Result<Vec<ActiveMove>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT ON (c.id) j.id AS job_id, c.id AS client_id,
                    (j.payload->>'source_server_id')::int8 AS source_server_id,
                    (j.payload->>'target_server_id')::int8 AS target_server_id,
                    (j.payload->>'drain')::uuid AS drain
             FROM clients c JOIN jobs j ON j.client_id = c.id AND j.kind = 'move_client'
             WHERE c.moving_to IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM jobs a WHERE a.client_id = c.id AND a.kind = 'move_client'
                               AND a.status IN ('queued', 'running'))
             ORDER BY c.id, j.created_at DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// A move job by its id (any status): the client and both servers, to clean up after it.
    pub async fn move_by_id(&self, move_id: Uuid) -> Result<Option<ActiveMove>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT id AS job_id, client_id, (payload->>'source_server_id')::int8 AS source_server_id,
                    (payload->>'target_server_id')::int8 AS target_server_id,
                    (payload->>'drain')::uuid AS drain
             FROM jobs WHERE id = $1 AND kind = 'move_client'",
        )
        .bind(move_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The tenants still on a server that a drain moves (own database, active or suspended, not moving), smallest
    /// first (by the last measured size).
    pub async fn drain_candidates(
        &self,
        server_id: i64,
    ) -> Result<Vec<DrainCandidate>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT c.id, c.slug, coalesce(st.database_bytes, 0)::int8 AS bytes
             FROM clients c LEFT JOIN client_stats st ON st.client_id = c.id
             WHERE c.server_id = $1 AND c.status IN ('active', 'suspended') AND c.kind <> 'inner'
               AND c.db_name IS NOT NULL AND c.moving_to IS NULL
             ORDER BY bytes, c.slug",
        )
        .bind(server_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Clients whose move, started by this drain, failed, with the error (the drain does not try them again).
    pub async fn failed_drain_moves(
        &self,
        drain: Uuid,
    ) -> Result<Vec<(Uuid, String, Option<String>)>, ControlError> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT ON (j.client_id) j.client_id, c.slug, j.last_error
             FROM jobs j JOIN clients c ON c.id = j.client_id
             WHERE j.kind = 'move_client' AND j.status = 'failed' AND j.payload->>'drain' = $1::text
             ORDER BY j.client_id, j.finished_at DESC",
        )
        .bind(drain)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves started by this drain that succeeded.
    pub async fn finished_drain_moves(&self, drain: Uuid) -> Result<i64, ControlError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM jobs
             WHERE kind = 'move_client' AND status = 'succeeded' AND payload->>'drain' = $1::text",
        )
        .bind(drain)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Live clients still placed on a server (a drain is done when none is left).
    pub async fn clients_on_server(&self, server_id: i64) -> Result<i64, ControlError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM clients WHERE server_id = $1 AND status <> 'deleted'",
        )
        .bind(server_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Starts a drain: the server becomes `draining` (no new clients) and a `drain_server` job is queued for it
    /// (on the master client's queue, so one drain of a server runs at a time and its id is the operation's).
    /// Returns the job, or the one already queued or running for this server.
    pub async fn start_drain(
        &self,
        name: &ServerName,
        max_attempts: i32,
    ) -> Result<Uuid, ControlError> {
        let mut tx = self.pool.begin().await?;
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM db_servers WHERE name = $1 FOR UPDATE")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let id = id.ok_or(ControlError::NotFound)?;
        sqlx::query("UPDATE db_servers SET status = 'draining', updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let existing: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE kind = 'drain_server' AND status IN ('queued', 'running')
               AND (payload->>'server_id')::int8 = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let job = match existing {
            Some(job) => job,
            None => {
                let job: Uuid = sqlx::query_scalar(
                    "INSERT INTO jobs (kind, payload, max_attempts) VALUES ('drain_server', $1, $2) RETURNING id",
                )
                .bind(serde_json::json!({"server_id": id, "server": name.as_str()}))
                .bind(max_attempts)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("SELECT pg_notify($1, 'drain_server')")
                    .bind(super::JOBS_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                job
            }
        };
        tx.commit().await?;
        Ok(job)
    }

    /// Cancels a drain: a draining server becomes `paused` (the drain job sees it and starts no new move; moves
    /// running finish). False if the server was not draining.
    pub async fn cancel_drain(&self, name: &ServerName) -> Result<bool, ControlError> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT status FROM db_servers WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
        if row.is_none() {
            return Err(ControlError::NotFound);
        }
        Ok(sqlx::query(
            "UPDATE db_servers SET status = 'paused', updated_at = now() WHERE name = $1 AND status = 'draining'",
        )
        .bind(name.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }
}
