//! The access matrix of one client (seed 004: tick a client, set each user's access to it, save): every user the
//! caller can see with its access to the client, and all of those rows changed in one call, all or none. The
//! per-user routes (`/v1/users/{username}/access/{slug}`, `users.rs`) change one cell; both go through the same
//! checks in `access/users.rs`.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{AuditNote, Caller, ClientScope};
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::app::AppState;
use crate::control::access::grants::MatrixRow;
use crate::domain::Invalid;
use crate::domain::rights::{Grant, Level, Principal, Username};

/// Users listed at most in one matrix (and rows in one change).
const MAX_ROWS: usize = 5000;

/// A user's access to the client.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessCell {
    #[schema(example = "anna")]
    pub username: String,
    pub display_name: String,
    /// The slug of the user's home client.
    pub home_client: String,
    /// `active` or `disabled`.
    pub status: String,
    /// `full`, `read` or `none` (the client is invisible to the user).
    pub level: Level,
    pub private_data: bool,
    /// The user holds the master-admin role: full access with private data to every client, whatever its level
    /// here says (it cannot be limited per client).
    pub master_admin: bool,
}

/// The access matrix of one client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientAccess {
    /// The client's slug.
    pub client: String,
    /// Every user the caller can see (those of the clients it sees, and itself), by username.
    pub users: Vec<AccessCell>,
    /// More users than one answer lists (5000) are visible.
    pub truncated: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRowInput {
    #[schema(example = "anna", pattern = r"^[a-z][a-z0-9._-]{1,62}$")]
    pub username: String,
    /// `full`, `read` or `none` (removes the access).
    pub level: Level,
    /// Whether the user may see personal data on this client (ignored for `none`).
    #[serde(default)]
    pub private_data: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetClientAccess {
    /// The rows to set (users not listed keep their access). Each username at most once.
    #[schema(min_items = 1, max_items = 5000)]
    pub users: Vec<AccessRowInput>,
}

/// The access matrix of a client: every user the caller can see, with its access to this client.
#[utoipa::path(get, path = "/v1/clients/{slug}/access", tag = "users",
    params(("slug" = String, Path, description = "The client's slug")),
    responses((status = 200, description = "The users and their access", body = ClientAccess),
        (status = 403, description = "Not permitted", body = ErrorBody),
        (status = 404, description = "No such client (or not visible)", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    scope: ClientScope,
) -> Result<Json<ClientAccess>, ApiError> {
    Ok(Json(matrix(&state, &caller, &scope).await?))
}

/// Set several users' access to a client at once: every row is checked as a single change would be (manage the
/// user, full access to the client, the private-data right to pass it on); when any row is refused nothing
/// changes and the error lists each refused row.
#[utoipa::path(put, path = "/v1/clients/{slug}/access", tag = "users", request_body = SetClientAccess,
    params(("slug" = String, Path, description = "The client's slug")),
    responses((status = 200, description = "Applied; the matrix now", body = ClientAccess),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 403, description = "Not permitted, read-only access, or rows refused (`access_refused` with `rows`)", body = ErrorBody),
        (status = 404, description = "No such client (or not visible)", body = ErrorBody),
        (status = 422, description = "A username listed twice (`duplicate_rows`)", body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Caller(caller): Caller,
    scope: ClientScope,
    ApiJson(body): ApiJson<SetClientAccess>,
) -> Result<Response, ApiError> {
    let rows = parse_rows(body.users)?;
    state
        .access()
        .set_client_access(&caller, &scope.client, &rows)
        .await?;
    tracing::info!(client = %scope.client.slug, rows = rows.len(), "access matrix changed");
    let detail: Vec<_> = rows
        .iter()
        .map(|(user, grant)| {
            serde_json::json!({
                "user": user.as_str(), "level": grant.level, "private_data": grant.private_data
            })
        })
        .collect();
    let note = AuditNote {
        client: Some((scope.client.id, scope.client.slug.clone())),
        detail: Some(serde_json::json!({ "users": detail })),
    };
    let now = matrix(&state, &caller, &scope).await?;
    Ok(note.attach(Json(now).into_response()))
}

/// The rows of a change as domain values; a username twice, an empty or an overlong list is invalid.
fn parse_rows(rows: Vec<AccessRowInput>) -> Result<Vec<(Username, Grant)>, ApiError> {
    if rows.is_empty() || rows.len() > MAX_ROWS {
        let invalid = Invalid {
            field: "users",
            reason: format!("between 1 and {MAX_ROWS} rows"),
        };
        return Err(invalid.into());
    }
    let mut seen = HashSet::new();
    rows.into_iter()
        .map(|row| {
            let name = Username::parse(&row.username)?;
            if !seen.insert(row.username) {
                return Err(ApiError::duplicate_rows("users"));
            }
            let grant = Grant {
                level: row.level,
                private_data: row.private_data && row.level != Level::None,
            };
            Ok((name, grant))
        })
        .collect()
}

async fn matrix(
    state: &AppState,
    caller: &Principal,
    scope: &ClientScope,
) -> Result<ClientAccess, ApiError> {
    let visible = caller.rights.visible_clients();
    let mut rows = state
        .control()
        .client_access_matrix(
            scope.client.id,
            visible.as_deref(),
            caller.user_id,
            MAX_ROWS as i64 + 1,
        )
        .await?;
    let truncated = rows.len() > MAX_ROWS;
    rows.truncate(MAX_ROWS);
    Ok(ClientAccess {
        client: scope.client.slug.clone(),
        users: rows.into_iter().map(AccessCell::from).collect(),
        truncated,
    })
}

impl From<MatrixRow> for AccessCell {
    fn from(row: MatrixRow) -> Self {
        Self {
            username: row.username,
            display_name: row.display_name,
            home_client: row.home_client,
            status: row.status,
            level: Level::from_stored(&row.level),
            private_data: row.private_data,
            master_admin: row.master_admin,
        }
    }
}
