//! Clients: the registry rows and their lifecycle transitions. Every transition that needs background work
//! enqueues its job in the same transaction, so a client never exists without the job that completes it.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::jobs::JobKind;
use super::{ControlError, ControlPlane};
use crate::domain::servers::Zone;
use crate::domain::{ClientName, ClientSlug, ClientStatus};

/// A client as the registry knows it (desired state plus the recorded observations).
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub parent: Option<String>,
    pub kind: String,
    pub status: ClientStatus,
    pub server_id: Option<i64>,
    pub server: Option<String>,
    pub db_name: Option<String>,
    pub schema_version: i32,
    pub generation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// An inner client's number in its parent's database (row-level security), `None` for other kinds.
    pub inner_no: Option<i32>,
    /// An inner client's scope `{lists, rule}`, as stored.
    pub scope: Option<serde_json::Value>,
    /// Whether the client's database can hold inner clients (`tenant::inner::prepare` ran).
    pub inner_ready: bool,
    /// While a move runs: the server it goes to (id, name).
    pub moving_to: Option<(i64, String)>,
    /// Whether a move's freeze holds new checkouts back right now.
    pub frozen: bool,
}

impl ClientRecord {
    pub fn is_inner(&self) -> bool {
        self.kind == "inner"
    }

    pub fn is_master(&self) -> bool {
        self.kind == "master"
    }
}

#[derive(FromRow)]
struct ClientRow {
    id: Uuid,
    slug: String,
    name: String,
    parent_id: Option<Uuid>,
    parent: Option<String>,
    kind: String,
    status: String,
    server_id: Option<i64>,
    server: Option<String>,
    db_name: Option<String>,
    schema_version: i32,
    generation: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    inner_no: Option<i32>,
    scope: Option<serde_json::Value>,
    inner_ready: bool,
    moving_to: Option<i64>,
    moving_to_name: Option<String>,
    frozen: bool,
}

impl TryFrom<ClientRow> for ClientRecord {
    type Error = ControlError;
    fn try_from(r: ClientRow) -> Result<Self, ControlError> {
        let status = stored_status(&r.status)?;
        Ok(Self {
            id: r.id,
            slug: r.slug,
            name: r.name,
            parent_id: r.parent_id,
            parent: r.parent,
            kind: r.kind,
            status,
            server_id: r.server_id,
            server: r.server,
            db_name: r.db_name,
            schema_version: r.schema_version,
            generation: r.generation,
            created_at: r.created_at,
            updated_at: r.updated_at,
            inner_no: r.inner_no,
            scope: r.scope,
            inner_ready: r.inner_ready,
            moving_to: r.moving_to.zip(r.moving_to_name),
            frozen: r.frozen,
        })
    }
}

/// A status as stored; the table's CHECK constraint makes anything else a decoding failure.
fn stored_status(value: &str) -> Result<ClientStatus, ControlError> {
    ClientStatus::parse(value)
        .map_err(|e| ControlError::Query(sqlx::Error::Decode(e.to_string().into())))
}

fn convert(rows: Vec<ClientRow>) -> Result<Vec<ClientRecord>, ControlError> {
    rows.into_iter().map(ClientRecord::try_from).collect()
}

/// The joined select every client query starts from; `c` is the client.
macro_rules! select_clients {
    ($($tail:literal)*) => {
        concat!(
            "SELECT c.id, c.slug, c.name, c.parent_id, p.slug AS parent, c.kind, c.status, c.server_id, s.name AS server,
                    c.db_name, c.schema_version, c.generation, c.created_at, c.updated_at,
                    c.inner_no, c.scope, c.inner_ready, c.moving_to, mt.name AS moving_to_name, c.frozen
             FROM clients c
             LEFT JOIN clients p ON p.id = c.parent_id
             LEFT JOIN db_servers s ON s.id = c.server_id
             LEFT JOIN db_servers mt ON mt.id = c.moving_to ",
            $($tail),*
        )
    };
}

/// Filters and position of a client listing.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    pub status: Option<ClientStatus>,
    pub parent: Option<ClientSlug>,
    /// Keyset position: list clients after this (slug, id).
    pub after: Option<(String, Uuid)>,
    /// Only these clients (`None` = all): the clients a caller can see.
    pub visible: Option<Vec<Uuid>>,
    pub limit: i64,
}

impl ControlPlane {
    /// Creates a sub-client in `provisioning`, placed on a server (in `zone` if given; see
    /// `servers::place_new_client`), together with its provisioning job (and wakes the workers).
    pub async fn create_client(
        &self,
        slug: &ClientSlug,
        name: &ClientName,
        parent: Option<&ClientSlug>,
        creator_access: Option<(Uuid, bool)>,
        max_attempts: i32,
        zone: Option<&Zone>,
    ) -> Result<(ClientRecord, Uuid), ControlError> {
        let mut tx = self.pool.begin().await?;
        let parent_slug = parent.cloned().unwrap_or_else(ClientSlug::master);
        let parent_row: Option<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, status, kind FROM clients WHERE slug = $1 AND status <> 'deleted' FOR SHARE",
        )
        .bind(parent_slug.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let (parent_id, parent_status, parent_kind) =
            parent_row.ok_or(ControlError::UnknownParent)?;
        if parent_kind == "inner" {
            return Err(ControlError::ParentIsInner);
        }
        let parent_status = stored_status(&parent_status)?;
        // The master can be neither suspended nor deleted; while its own database is still being provisioned
        // (the first seconds after the first start) it is already a valid parent.
        let usable = parent_status == ClientStatus::Active
            || parent_kind == "master" && parent_status == ClientStatus::Provisioning;
        if !usable {
            return Err(ControlError::ParentNotActive(parent_status));
        }
        let inserted = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO clients (slug, name, parent_id, kind, status)
             VALUES ($1, $2, $3, 'sub', 'provisioning') RETURNING id",
        )
        .bind(slug.as_str())
        .bind(name.as_str())
        .bind(parent_id)
        .fetch_one(&mut *tx)
        .await;
        let id = match inserted {
            Ok(id) => id,
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("clients_slug_live") => {
                return Err(ControlError::SlugTaken);
            }
            Err(e) => return Err(e.into()),
        };
        super::servers::place_new_client(&mut tx, id, zone).await?;
        let job = enqueue(
            &mut tx,
            JobKind::ProvisionClient,
            id,
            serde_json::json!({}),
            max_attempts,
        )
        .await?
        .ok_or_else(|| ControlError::Query(sqlx::Error::RowNotFound))?;
        grant_creator(&mut tx, id, creator_access).await?;
        let client = client_by_id_on(&mut tx, id).await?;
        tx.commit().await?;
        Ok((client, job))
    }

    /// Makes sure the master client has a provisioning job while it is not provisioned (first start, or a
    /// restart after its provisioning failed). Idempotent; safe from several processes.
    pub async fn ensure_master_provisioning(
        &self,
        max_attempts: i32,
    ) -> Result<Option<Uuid>, ControlError> {
        let mut tx = self.pool.begin().await?;
        let master: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM clients WHERE kind = 'master' FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await?;
        let Some((id, status)) = master else {
            return Ok(None);
        };
        if status != "provisioning" && status != "failed" {
            return Ok(None);
        }
        sqlx::query("UPDATE clients SET status = 'provisioning', updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let job = enqueue(
            &mut tx,
            JobKind::ProvisionClient,
            id,
            serde_json::json!({}),
            max_attempts,
        )
        .await?;
        tx.commit().await?;
        Ok(job)
    }

    /// A live (not deleted) client by slug.
    pub async fn client_by_slug(&self, slug: &ClientSlug) -> Result<ClientRecord, ControlError> {
        let row: Option<ClientRow> = sqlx::query_as(select_clients!(
            "WHERE c.slug = $1 AND c.status <> 'deleted'"
        ))
        .bind(slug.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or(ControlError::NotFound)?.try_into()
    }

    /// Any client, tombstones included.
    pub async fn client_by_id(&self, id: Uuid) -> Result<ClientRecord, ControlError> {
        let mut conn = self.pool.acquire().await?;
        client_by_id_on(&mut conn, id).await
    }

    /// Clients ordered by (slug, id), after the filter's position. Deleted clients only when asked for.
    pub async fn list_clients(
        &self,
        filter: &ClientFilter,
    ) -> Result<Vec<ClientRecord>, ControlError> {
        let (after_slug, after_id) = match &filter.after {
            Some((slug, id)) => (Some(slug.as_str()), Some(*id)),
            None => (None, None),
        };
        let rows: Vec<ClientRow> = sqlx::query_as(select_clients!(
            "WHERE ($1::text IS NULL AND c.status <> 'deleted' OR c.status = $1)
               AND ($2::text IS NULL OR p.slug = $2 AND p.status <> 'deleted')
               AND ($3::text IS NULL OR (c.slug, c.id) > ($3, $4::uuid))
               AND ($6::uuid[] IS NULL OR c.id = ANY($6))
             ORDER BY c.slug, c.id
             LIMIT $5"
        ))
        .bind(filter.status.map(ClientStatus::as_str))
        .bind(filter.parent.as_ref().map(ClientSlug::as_str))
        .bind(after_slug)
        .bind(after_id)
        .bind(filter.limit)
        .bind(filter.visible.as_deref())
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    /// Every client that is not deleted, for the CLI.
    pub async fn all_live_clients(&self) -> Result<Vec<ClientRecord>, ControlError> {
        let rows: Vec<ClientRow> = sqlx::query_as(select_clients!(
            "WHERE c.status <> 'deleted' ORDER BY c.kind, c.slug"
        ))
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    /// Active and suspended clients on a server whose overview figures (`client_stats`) are older than `min_age`
    /// or missing, oldest first: the statistics worker's next round.
    pub async fn clients_due_for_stats(
        &self,
        min_age: std::time::Duration,
    ) -> Result<Vec<ClientRecord>, ControlError> {
        let rows: Vec<ClientRow> = sqlx::query_as(select_clients!(
            "LEFT JOIN client_stats st ON st.client_id = c.id
             WHERE c.status IN ('active', 'suspended') AND c.server_id IS NOT NULL
               AND (st.size_at IS NULL OR st.size_at < now() - make_interval(secs => $1))
             ORDER BY st.size_at NULLS FIRST, c.slug"
        ))
        .bind(min_age.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        convert(rows)
    }

    /// Renames a live client (by id: the one the caller's access was checked on).
    pub async fn rename_client(
        &self,
        id: Uuid,
        name: &ClientName,
    ) -> Result<ClientRecord, ControlError> {
        let mut tx = self.pool.begin().await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE clients SET name = $2, updated_at = now()
             WHERE id = $1 AND status <> 'deleted' RETURNING id",
        )
        .bind(id)
        .bind(name.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let client = client_by_id_on(&mut tx, id.ok_or(ControlError::NotFound)?).await?;
        tx.commit().await?;
        Ok(client)
    }

    /// `active` → `suspended`, or back, with a job that applies it to the tenant's role.
    pub async fn set_suspended(
        &self,
        id: Uuid,
        suspend: bool,
        max_attempts: i32,
    ) -> Result<ClientRecord, ControlError> {
        let (from, to, action, allowed) = if suspend {
            ("active", "suspended", "suspend", "active")
        } else {
            ("suspended", "active", "resume", "suspended")
        };
        let mut tx = self.pool.begin().await?;
        let client = locked_live_client(&mut tx, id).await?;
        if client.is_master() && suspend {
            return Err(ControlError::IsMaster("suspended"));
        }
        if client.status.as_str() != from {
            return Err(ControlError::InvalidState {
                current: client.status,
                action,
                allowed,
            });
        }
        sqlx::query(
            "UPDATE clients SET status = $2, generation = generation + 1, updated_at = now() WHERE id = $1",
        )
        .bind(client.id)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        enqueue(
            &mut tx,
            JobKind::SyncAccess,
            client.id,
            serde_json::json!({}),
            max_attempts,
        )
        .await?;
        let client = client_by_id_on(&mut tx, client.id).await?;
        tx.commit().await?;
        Ok(client)
    }

    /// Marks a client `deleting` and enqueues its deletion. Queued provisioning or access jobs of the client are
    /// cancelled; a running one notices the status at its next step and stops.
    pub async fn request_delete(
        &self,
        id: Uuid,
        archive: bool,
        max_attempts: i32,
    ) -> Result<(ClientRecord, Uuid), ControlError> {
        let mut tx = self.pool.begin().await?;
        let client = locked_live_client(&mut tx, id).await?;
        if client.is_master() {
            return Err(ControlError::IsMaster("deleted"));
        }
        if client.moving_to.is_some() {
            // A live move holds both copies; delete once it has ended (or rolled back).
            return Err(ControlError::InvalidState {
                current: client.status,
                action: "delete",
                allowed: "not being moved (wait for the move to end)",
            });
        }
        if client.status == ClientStatus::Deleting {
            // Deletion already under way; only a deletion that failed for good may be requested again.
            let open: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE client_id = $1 AND kind = $2
                                AND status IN ('queued', 'running'))",
            )
            .bind(client.id)
            .bind(JobKind::DeleteClient.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if open {
                return Err(ControlError::InvalidState {
                    current: client.status,
                    action: "delete",
                    allowed: "provisioning, active, suspended or failed",
                });
            }
        }
        let children: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM clients WHERE parent_id = $1 AND status <> 'deleted'",
        )
        .bind(client.id)
        .fetch_one(&mut *tx)
        .await?;
        if children > 0 {
            return Err(ControlError::HasChildren(children));
        }
        sqlx::query(
            "UPDATE clients SET status = 'deleting', generation = generation + 1, updated_at = now() WHERE id = $1",
        )
        .bind(client.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE jobs SET status = 'failed', last_error = 'cancelled: the client is being deleted',
                    finished_at = now(), updated_at = now()
             WHERE client_id = $1 AND status = 'queued' AND kind <> $2",
        )
        .bind(client.id)
        .bind(JobKind::DeleteClient.as_str())
        .execute(&mut *tx)
        .await?;
        let job = enqueue(
            &mut tx,
            JobKind::DeleteClient,
            client.id,
            serde_json::json!({ "archive": archive }),
            max_attempts,
        )
        .await?
        .ok_or_else(|| ControlError::Query(sqlx::Error::RowNotFound))?;
        let client = client_by_id_on(&mut tx, client.id).await?;
        tx.commit().await?;
        Ok((client, job))
    }

    /// Provisioning placed the client: records its database name, and the server if creation did not choose
    /// one already, once (a retry keeps the first choice).
    pub async fn place_client(
        &self,
        id: Uuid,
        server_id: i64,
        db_name: &str,
    ) -> Result<ClientRecord, ControlError> {
        sqlx::query(
            "UPDATE clients SET server_id = coalesce(server_id, $2), db_name = $3, updated_at = now()
             WHERE id = $1 AND db_name IS NULL",
        )
        .bind(id)
        .bind(server_id)
        .bind(db_name)
        .execute(&self.pool)
        .await?;
        self.client_by_id(id).await
    }

    pub async fn set_schema_version(&self, id: Uuid, version: i32) -> Result<(), ControlError> {
        sqlx::query("UPDATE clients SET schema_version = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records many tenants' schema versions in one statement (the fleet migration batches them).
    pub async fn set_schema_versions(&self, versions: &[(Uuid, i32)]) -> Result<(), ControlError> {
        let (ids, numbers): (Vec<Uuid>, Vec<i32>) = versions.iter().copied().unzip();
        sqlx::query(
            "UPDATE clients SET schema_version = v.version, updated_at = now()
             FROM unnest($1::uuid[], $2::int4[]) AS v(id, version)
             WHERE clients.id = v.id",
        )
        .bind(ids)
        .bind(numbers)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `from` → `to` if the client is still in `from`; false if it moved on (e.g. deletion overtook provisioning).
    pub async fn transition(
        &self,
        id: Uuid,
        from: ClientStatus,
        to: ClientStatus,
    ) -> Result<bool, ControlError> {
        let done = sqlx::query(
            "UPDATE clients SET status = $3, generation = generation + 1, updated_at = now(),
                    deleted_at = CASE WHEN $3 = 'deleted' THEN now() ELSE deleted_at END
             WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

async fn locked_live_client(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<ClientRecord, ControlError> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM clients WHERE id = $1 AND status <> 'deleted' FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    client_by_id_on(tx, id.ok_or(ControlError::NotFound)?).await
}

/// One client by id, on a pooled connection or inside a transaction.
pub(super) async fn client_by_id_on(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
) -> Result<ClientRecord, ControlError> {
    let row: Option<ClientRow> = sqlx::query_as(select_clients!("WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.ok_or(ControlError::NotFound)?.try_into()
}

/// A creator who is not a master admin would not see the client it made (access to a parent implies none to its
/// children): it gets full access to it, with the private-data right it has on the parent (`creator_access`).
async fn grant_creator(
    tx: &mut Transaction<'_, Postgres>,
    client: Uuid,
    creator_access: Option<(Uuid, bool)>,
) -> Result<(), ControlError> {
    let Some((user, private_data)) = creator_access else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO client_access (user_id, client_id, level, private_data, granted_by)
         VALUES ($1, $2, 'full', $3, $1)",
    )
    .bind(user)
    .bind(client)
    .bind(private_data)
    .execute(&mut **tx)
    .await?;
    // The creator's rights grew: tokens others minted for it may no longer be covered.
    super::access::revoke_undominated(tx, &[user]).await?;
    super::access::notify_auth_change(tx).await
}

/// Inserts a job unless the client already has a queued one of that kind (which will see the latest state when it
/// runs), and notifies workers at commit. Returns the new job's id, or `None` if one was already queued.
pub(super) async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    kind: JobKind,
    client_id: Uuid,
    payload: serde_json::Value,
    max_attempts: i32,
) -> Result<Option<Uuid>, ControlError> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO jobs (kind, client_id, payload, max_attempts) VALUES ($1, $2, $3, $4)
         ON CONFLICT (client_id, kind) WHERE status = 'queued' DO NOTHING
         RETURNING id",
    )
    .bind(kind.as_str())
    .bind(client_id)
    .bind(payload)
    .bind(max_attempts)
    .fetch_optional(&mut **tx)
    .await?;
    if id.is_some() {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::JOBS_CHANNEL)
            .bind(kind.as_str())
            .execute(&mut **tx)
            .await?;
    }
    Ok(id)
}

/// Whom [`enqueue_for`] queues a job for.
pub(super) enum JobFor {
    /// The master client: a fan-out over everyone, coalesced while one is queued.
    Master,
    /// Every client with a database (or just the one given).
    Live(Option<Uuid>),
}

/// Queues a job of `kind` for many clients in one statement (skipping clients with one queued already) and
/// notifies workers at commit.
pub(super) async fn enqueue_for(
    tx: &mut Transaction<'_, Postgres>,
    kind: JobKind,
    who: JobFor,
    max_attempts: i32,
) -> Result<(), ControlError> {
    let (master, only) = match who {
        JobFor::Master => (true, None),
        JobFor::Live(only) => (false, only),
    };
    sqlx::query(
        "INSERT INTO jobs (kind, client_id, payload, max_attempts)
         SELECT $1, id, '{}'::jsonb, $2 FROM clients
         WHERE CASE WHEN $3 THEN kind = 'master'
                    ELSE status IN ('provisioning', 'active', 'suspended') AND kind <> 'inner'
                         AND ($4::uuid IS NULL OR id = $4) END
         ON CONFLICT (client_id, kind) WHERE status = 'queued' DO NOTHING",
    )
    .bind(kind.as_str())
    .bind(max_attempts)
    .bind(master)
    .bind(only)
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::JOBS_CHANNEL)
        .bind(kind.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// Inner clients: their registration, scope and the parent's readiness (issue #19).
mod inner;
