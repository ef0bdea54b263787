//! `GET /v1/overview`: every client the caller can see with its figures — status, server, schema version,
//! database size, recipients and lists, field and template sync state, last error, last served — read from the
//! control plane (gathered by the statistics worker, never by a fan-out per request), each figure with the time
//! it was taken.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::clients::{ClientView, ListParams, page_position, visible_page};
use super::cursor::Page;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiQuery;
use crate::app::AppState;
use crate::control::stats::{ClientFigures, RecordedError, SyncCounts};

/// Sync state of inherited content in one client.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncView {
    /// What the client should have (central and own fields; the master's templates).
    pub desired: i64,
    /// At the newest version in the client's database.
    pub current: i64,
    pub pending: i64,
    pub failed: i64,
    /// Templates: replaced by a local override.
    pub overridden: i64,
}

impl From<SyncCounts> for SyncView {
    fn from(c: SyncCounts) -> Self {
        Self {
            desired: c.desired,
            current: c.current,
            pending: c.pending(),
            failed: c.failed,
            overridden: c.overridden,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastErrorView {
    /// `job:<kind>`, `fields`, `templates` or `statistics`.
    #[schema(example = "job:reconcile_fields")]
    pub source: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

impl From<RecordedError> for LastErrorView {
    fn from(e: RecordedError) -> Self {
        Self {
            source: e.source,
            message: e.message,
            at: e.at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewRow {
    #[serde(flatten)]
    pub client: ClientView,
    /// Size of the client's database on disk, taken at `size_at`.
    pub database_bytes: Option<i64>,
    pub size_at: Option<DateTime<Utc>>,
    /// Recipients and mailing lists in the client's database, counted at `counts_at`.
    pub recipients: Option<i64>,
    pub lists: Option<i64>,
    pub counts_at: Option<DateTime<Utc>>,
    pub fields: SyncView,
    pub templates: SyncView,
    /// The most recent error still standing for the client, if any.
    pub last_error: Option<LastErrorView>,
    /// The last time a routing pool served a request for this client (any process; cross-client work and
    /// statistics do not count).
    pub last_served_at: Option<DateTime<Utc>>,
}

/// Every client the caller can see, with its figures (filters and pages as `GET /v1/clients`).
#[utoipa::path(get, path = "/v1/overview", tag = "cross-client", params(ListParams),
    responses(
        (status = 200, description = "A page of clients with their figures", body = Page<OverviewRow>),
        (status = 400, description = "Invalid filter, limit or cursor", body = ErrorBody),
        (status = 403, description = "Needs clients.read", body = ErrorBody)))]
pub async fn overview(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<OverviewRow>>, ApiError> {
    let (clients, limit) = visible_page(&state, &caller.rights, &params).await?;
    // This process's routing pool first, so a request served a moment ago shows.
    if let Err(e) = state.data().flush_served().await {
        tracing::warn!(error = %e, "could not record when clients were last served");
    }
    let ids: Vec<uuid::Uuid> = clients.iter().map(|c| c.id).collect();
    let mut figures = state.control().client_figures(&ids).await?;
    let rows: Vec<OverviewRow> = clients
        .into_iter()
        .map(|c| {
            let f: ClientFigures = figures.remove(&c.id).unwrap_or_default();
            OverviewRow {
                client: ClientView::new(c, None, &caller.rights),
                database_bytes: f.database_bytes,
                size_at: f.size_at,
                recipients: f.recipients,
                lists: f.lists,
                counts_at: f.counts_at,
                fields: f.fields.into(),
                templates: f.templates.into(),
                last_error: f.last_error.map(Into::into),
                last_served_at: f.last_served_at,
            }
        })
        .collect();
    Ok(Json(Page::from_rows(rows, limit, |r| {
        page_position(&r.client)
    })))
}
