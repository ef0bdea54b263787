//! `GET /v1/audit`: the audit log of mutating calls, newest first, limited to the clients the caller can see.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::ApiQuery;
use crate::app::AppState;
use crate::control::access::{AuditFilter, AuditRecord};
use crate::domain::ClientSlug;
use crate::domain::rights::{Permission, Username};

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who (the username at the time).
    pub user: Option<String>,
    /// The client concerned (its slug at the time).
    pub client: Option<String>,
    /// `METHOD /route/{template}`.
    #[schema(example = "POST /v1/clients/{slug}/recipients")]
    pub action: String,
    /// The path called.
    pub target: String,
    /// `succeeded`, `denied` (by the access check) or `failed`.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: i16,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            at: r.at,
            user: r.username,
            client: r.client_slug,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            status: r.status,
            request_id: r.request_id,
            detail: r.detail,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only entries on this client.
    #[param(pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub client: Option<String>,
    /// Only entries by this user.
    #[param(pattern = r"^[a-z][a-z0-9._-]{1,62}$")]
    pub user: Option<String>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(3[0-9]){1,18}$")]
    pub cursor: Option<String>,
}

/// Audit entries, newest first: every mutating call (who, when, client, action, target, outcome).
#[utoipa::path(get, path = "/v1/audit", tag = "users", params(AuditParams),
    responses((status = 200, description = "A page of entries", body = Page<AuditView>),
        (status = 400, description = "Invalid filter, limit or cursor", body = ErrorBody),
        (status = 403, description = "No audit.read", body = ErrorBody),
        (status = 404, description = "No such client (or not visible)", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditView>>, ApiError> {
    let (limit, before) = cursor::keyset(params.limit, params.cursor.as_deref())?;
    let client = match &params.client {
        Some(slug) => {
            let slug = ClientSlug::parse(slug).map_err(|_| ApiError::not_found())?;
            let client = super::auth::resolve(&state, &slug).await?;
            caller
                .rights
                .authorize(client.id, Permission::AuditRead)
                .map_err(super::auth::denial)?;
            Some(client.id)
        }
        None => None,
    };
    let username = params
        .user
        .as_deref()
        .map(Username::parse)
        .transpose()?
        .map(|u| u.as_str().to_owned());
    let entries = state
        .control()
        .audit(&AuditFilter {
            client,
            username,
            visible: caller.rights.visible_clients(),
            before,
            limit: limit + 1,
        })
        .await?;
    let views = entries.into_iter().map(AuditView::from).collect();
    Ok(Json(Page::from_rows(views, limit, |e| e.id.to_string())))
}
