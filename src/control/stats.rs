//! The figures of the overview (`client_stats`): what the statistics worker gathered per client (database size,
//! recipients and lists, each with the time it was taken), the last time a routing pool served the client, and
//! the per-client sync state and last error read from the tables that own them (fields, templates, jobs).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{ControlError, ControlPlane};

/// What one collection found for one client: its database size (through the server's admin connection) and its
/// counts (through its own role), each `None` when it could not be taken, with the error.
#[derive(Debug, Clone)]
pub struct CollectedFigures {
    pub client: Uuid,
    pub database_bytes: Option<i64>,
    pub counts: Option<(i64, i64)>,
    pub error: Option<String>,
}

/// Sync state of one kind of inherited content (fields or templates) in one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// What the client should have.
    pub desired: i64,
    /// In the client's database at the newest version.
    pub current: i64,
    pub failed: i64,
    /// Templates only: replaced by a local override.
    pub overridden: i64,
}

impl SyncCounts {
    /// Neither current, failed nor overridden: on its way.
    pub fn pending(&self) -> i64 {
        (self.desired - self.current - self.failed - self.overridden).max(0)
    }
}

/// An error recorded for a client, where it came from and when.
#[derive(Debug, Clone)]
pub struct RecordedError {
    /// `job:<kind>`, `fields`, `templates` or `statistics`.
    pub source: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// The overview figures of one client.
#[derive(Debug, Clone, Default)]
pub struct ClientFigures {
    pub database_bytes: Option<i64>,
    pub size_at: Option<DateTime<Utc>>,
    pub recipients: Option<i64>,
    pub lists: Option<i64>,
    pub counts_at: Option<DateTime<Utc>>,
    pub last_served_at: Option<DateTime<Utc>>,
    pub fields: SyncCounts,
    pub templates: SyncCounts,
    /// The most recent error still standing (a failed job not followed by a success of its kind, a failed field
    /// or template sync, a failed collection).
    pub last_error: Option<RecordedError>,
}

#[derive(FromRow)]
struct FiguresRow {
    id: Uuid,
    database_bytes: Option<i64>,
    size_at: Option<DateTime<Utc>>,
    recipients: Option<i64>,
    lists: Option<i64>,
    counts_at: Option<DateTime<Utc>>,
    last_served_at: Option<DateTime<Utc>>,
    stats_error: Option<String>,
    stats_error_at: Option<DateTime<Utc>>,
    fields_desired: i64,
    fields_current: i64,
    fields_failed: i64,
    field_error: Option<String>,
    field_error_at: Option<DateTime<Utc>>,
    templates_desired: i64,
    templates_current: i64,
    templates_failed: i64,
    templates_overridden: i64,
    template_error: Option<String>,
    template_error_at: Option<DateTime<Utc>>,
    job_kind: Option<String>,
    job_error: Option<String>,
    job_error_at: Option<DateTime<Utc>>,
}

impl From<FiguresRow> for ClientFigures {
    fn from(r: FiguresRow) -> Self {
        let candidates = [
            (
                r.job_kind.map(|k| format!("job:{k}")),
                r.job_error,
                r.job_error_at,
            ),
            (Some("fields".into()), r.field_error, r.field_error_at),
            (
                Some("templates".into()),
                r.template_error,
                r.template_error_at,
            ),
            (Some("statistics".into()), r.stats_error, r.stats_error_at),
        ];
        let last_error = candidates
            .into_iter()
            .filter_map(|(source, message, at)| {
                Some(RecordedError {
                    source: source?,
                    message: message?,
                    at: at?,
                })
            })
            .max_by_key(|e| e.at);
        Self {
            database_bytes: r.database_bytes,
            size_at: r.size_at,
            recipients: r.recipients,
            lists: r.lists,
            counts_at: r.counts_at,
            last_served_at: r.last_served_at,
            fields: SyncCounts {
                desired: r.fields_desired,
                current: r.fields_current,
                failed: r.fields_failed,
                overridden: 0,
            },
            templates: SyncCounts {
                desired: r.templates_desired,
                current: r.templates_current,
                failed: r.templates_failed,
                overridden: r.templates_overridden,
            },
            last_error,
        }
    }
}

/// The only process doing some periodic work while held (collecting statistics, applying retention): a session
/// advisory lock on a dedicated connection, released when this is dropped (or the process dies).
pub struct SessionLock {
    _session: sqlx::PgConnection,
}

impl ControlPlane {
    /// Takes the session lock `name` unless another process holds it.
    pub async fn try_session_lock(&self, name: &str) -> Result<Option<SessionLock>, ControlError> {
        let mut session = self.pool.acquire().await?.detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(crate::db::lock_key(name))
            .fetch_one(&mut session)
            .await?;
        Ok(taken.then_some(SessionLock { _session: session }))
    }

    /// Takes the statistics lock unless another process holds it.
    pub async fn try_stats_lock(&self) -> Result<Option<SessionLock>, ControlError> {
        self.try_session_lock("mandant.statistics").await
    }

    /// Records one collection's figures; a figure that could not be taken keeps its previous value and time.
    pub async fn record_figures(&self, figures: &[CollectedFigures]) -> Result<(), ControlError> {
        if figures.is_empty() {
            return Ok(());
        }
        let clients: Vec<Uuid> = figures.iter().map(|f| f.client).collect();
        let bytes: Vec<Option<i64>> = figures.iter().map(|f| f.database_bytes).collect();
        let recipients: Vec<Option<i64>> = figures.iter().map(|f| f.counts.map(|c| c.0)).collect();
        let lists: Vec<Option<i64>> = figures.iter().map(|f| f.counts.map(|c| c.1)).collect();
        let errors: Vec<Option<&str>> = figures.iter().map(|f| f.error.as_deref()).collect();
        sqlx::query(
            "INSERT INTO client_stats AS s (client_id, database_bytes, size_at, recipients, lists, counts_at,
                                            error, error_at)
             SELECT d.client, d.bytes, CASE WHEN d.bytes IS NOT NULL THEN now() END,
                    d.recipients, d.lists, CASE WHEN d.recipients IS NOT NULL THEN now() END,
                    d.error, CASE WHEN d.error IS NOT NULL THEN now() END
             FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::text[])
                  AS d(client, bytes, recipients, lists, error)
             JOIN clients c ON c.id = d.client
             ON CONFLICT (client_id) DO UPDATE SET
                 database_bytes = coalesce(EXCLUDED.database_bytes, s.database_bytes),
                 size_at = CASE WHEN EXCLUDED.database_bytes IS NOT NULL THEN now() ELSE s.size_at END,
                 recipients = coalesce(EXCLUDED.recipients, s.recipients),
                 lists = coalesce(EXCLUDED.lists, s.lists),
                 counts_at = CASE WHEN EXCLUDED.recipients IS NOT NULL THEN now() ELSE s.counts_at END,
                 error = EXCLUDED.error,
                 error_at = EXCLUDED.error_at",
        )
        .bind(clients)
        .bind(bytes)
        .bind(recipients)
        .bind(lists)
        .bind(errors)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records when routing pools last served clients (a later time wins: several processes write).
    pub async fn record_served(
        &self,
        served: &[(Uuid, DateTime<Utc>)],
    ) -> Result<(), ControlError> {
        if served.is_empty() {
            return Ok(());
        }
        let clients: Vec<Uuid> = served.iter().map(|s| s.0).collect();
        let times: Vec<DateTime<Utc>> = served.iter().map(|s| s.1).collect();
        sqlx::query(
            "INSERT INTO client_stats AS s (client_id, last_served_at)
             SELECT d.client, d.at FROM unnest($1::uuid[], $2::timestamptz[]) AS d(client, at)
             JOIN clients c ON c.id = d.client
             ON CONFLICT (client_id) DO UPDATE
                 SET last_served_at = greatest(s.last_served_at, EXCLUDED.last_served_at)",
        )
        .bind(clients)
        .bind(times)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The overview figures of these clients.
    pub async fn client_figures(
        &self,
        clients: &[Uuid],
    ) -> Result<HashMap<Uuid, ClientFigures>, ControlError> {
        let rows: Vec<FiguresRow> = sqlx::query_as(
            "SELECT c.id, s.database_bytes, s.size_at, s.recipients, s.lists, s.counts_at, s.last_served_at,
                    s.error AS stats_error, s.error_at AS stats_error_at,
                    (SELECT count(*) FROM fields f WHERE f.client_id IS NULL OR f.client_id = c.id)
                        AS fields_desired,
                    (SELECT count(*) FROM field_status fs JOIN fields f ON f.id = fs.field_id
                     WHERE fs.client_id = c.id AND fs.status = 'applied' AND fs.applied_version = f.version)
                        AS fields_current,
                    (SELECT count(*) FROM field_status fs WHERE fs.client_id = c.id AND fs.status = 'failed')
                        AS fields_failed,
                    fe.last_error AS field_error, fe.updated_at AS field_error_at,
                    (SELECT count(*) FROM templates t WHERE NOT t.retracted) AS templates_desired,
                    (SELECT count(*) FROM template_sync ts JOIN templates t ON t.id = ts.template_id
                     WHERE ts.client_id = c.id AND NOT t.retracted AND ts.status = 'synced'
                       AND ts.synced_version = t.version) AS templates_current,
                    (SELECT count(*) FROM template_sync ts JOIN templates t ON t.id = ts.template_id
                     WHERE ts.client_id = c.id AND NOT t.retracted AND ts.status = 'failed') AS templates_failed,
                    (SELECT count(*) FROM template_sync ts JOIN templates t ON t.id = ts.template_id
                     WHERE ts.client_id = c.id AND NOT t.retracted AND ts.status = 'overridden')
                        AS templates_overridden,
                    te.last_error AS template_error, te.updated_at AS template_error_at,
                    je.kind AS job_kind, je.last_error AS job_error, je.updated_at AS job_error_at
             FROM clients c
             LEFT JOIN client_stats s ON s.client_id = c.id
             LEFT JOIN LATERAL (SELECT last_error, updated_at FROM field_status
                                WHERE client_id = c.id AND status = 'failed' AND last_error IS NOT NULL
                                ORDER BY updated_at DESC LIMIT 1) fe ON true
             LEFT JOIN LATERAL (SELECT last_error, updated_at FROM template_sync
                                WHERE client_id = c.id AND status = 'failed' AND last_error IS NOT NULL
                                ORDER BY updated_at DESC LIMIT 1) te ON true
             LEFT JOIN LATERAL (SELECT j.kind, j.last_error, j.updated_at FROM jobs j
                                WHERE j.client_id = c.id AND j.last_error IS NOT NULL AND j.status <> 'succeeded'
                                  AND NOT EXISTS (SELECT 1 FROM jobs k
                                                  WHERE k.client_id = j.client_id AND k.kind = j.kind
                                                    AND k.status = 'succeeded' AND k.finished_at > j.updated_at)
                                ORDER BY j.updated_at DESC LIMIT 1) je ON true
             WHERE c.id = ANY($1)",
        )
        .bind(clients)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.id, r.into())).collect())
    }
}
