//! Live moves and drains (issue #21): `POST /v1/clients/{slug}/move` and `POST /v1/servers/{name}/drain` (with
//! `/drain/cancel`). The work is the `move_client` and `drain_server` jobs' (`provisioning/moves.rs`,
//! `provisioning/drain.rs`); these handlers check, start and answer 202 with the operation to poll.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Caller, ClientScope};
use super::clients::ClientView;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::app::AppState;
use crate::control::moves::MoveRefusal;
use crate::domain::ClientSlug;
use crate::domain::rights::{Level, Permission, Rights};
use crate::domain::servers::ServerName;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveClient {
    /// The database server to move the client's database to.
    #[schema(example = "eu-2", pattern = r"^[a-z][a-z0-9-]{0,39}$")]
    pub server: String,
}

/// Moving needs `servers.manage` with full access to the master, besides `clients.manage` on the client.
pub(super) async fn check_servers_manage(
    state: &AppState,
    rights: &Rights,
) -> Result<(), ApiError> {
    let master = state.data().client(&ClientSlug::master()).await?;
    match rights.authorize(master.id, Permission::ServersManage) {
        Ok(grant) if grant.level == Level::Full => Ok(()),
        _ => Err(ApiError::servers_manage_required()),
    }
}

/// Move a client's database to another server while it keeps serving (logical replication, then a freeze of a
/// fraction of a second for the switch). Poll the operation: its `step` is the phase reached, its `result` the
/// copy's progress and, at the end, the outcome. A failed move rolls back; the client stays where it was.
#[utoipa::path(post, path = "/v1/clients/{slug}/move", tag = "clients", request_body = MoveClient,
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 202, description = "Accepted; moving", body = ClientView),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 403, description = "No clients.manage on the client, or no servers.manage with full access to the master", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Cannot move now: client_moving, same_server, server_not_accepting, client_not_movable, wal_level_not_logical", body = ErrorBody),
        (status = 422, description = "No such server", body = ErrorBody),
        (status = 503, description = "The client's server cannot be reached", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Caller(caller): Caller,
    scope: ClientScope,
    ApiJson(body): ApiJson<MoveClient>,
) -> Result<Response, ApiError> {
    check_servers_manage(&state, &caller.rights).await?;
    let name = ServerName::parse(&body.server).map_err(ApiError::from)?;
    let (client, operation) = state
        .provisioner()
        .request_move(&scope.client, &name, None)
        .await
        .map_err(|e| {
            tracing::warn!(client = %scope.client.slug, error = %crate::telemetry::error_chain(&e),
                "could not start the move");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tenant_unavailable",
                "The client's database server cannot be reached right now; retry later.",
            )
            .with_retry_after(5)
        })?
        .map_err(|refusal| match refusal {
            MoveRefusal::UnknownServer(name) => ApiError::unknown_server(&name),
            refusal => ApiError::move_refused(refusal.code(), &refusal),
        })?;
    tracing::info!(client = %client.slug, to = %name, %operation, "move requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(ClientView::new(client, Some(operation), &caller.rights)),
    )
        .into_response())
}

/// A drain started or cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrainView {
    pub server: String,
    /// The server's policy now (`draining`, or `paused` after a cancel).
    pub policy: String,
    /// The drain's operation (`/v1/operations/{id}`; its `result` counts moved, running, failed, left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Uuid>,
}

/// Drain a server: it takes no new clients and its tenants move off, a few at a time, smallest first. Poll the
/// operation. Starting a drain of a server that is draining already answers its running drain.
#[utoipa::path(post, path = "/v1/servers/{name}/drain", tag = "servers",
    params(("name" = String, Path, description = "The server")),
    responses(
        (status = 202, description = "Accepted; draining", body = DrainView),
        (status = 403, description = "No servers.manage with full access to the master", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = ServerName::parse(&name).map_err(|_| ApiError::not_found())?;
    let max_attempts = i32::from(state.settings().workers.max_attempts);
    let operation = state.control().start_drain(&name, max_attempts).await?;
    tracing::info!(server = %name, %operation, "drain requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainView {
            server: name.to_string(),
            policy: "draining".to_owned(),
            operation: Some(operation),
        }),
    )
        .into_response())
}

/// Stop a drain: no new move starts (running ones finish) and the server is left `paused`.
#[utoipa::path(post, path = "/v1/servers/{name}/drain/cancel", tag = "servers",
    params(("name" = String, Path, description = "The server")),
    responses(
        (status = 200, description = "Cancelled; the server is paused", body = DrainView),
        (status = 403, description = "No servers.manage with full access to the master", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "The server is not draining", body = ErrorBody)))]
pub async fn cancel_drain(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DrainView>, ApiError> {
    let name = ServerName::parse(&name).map_err(|_| ApiError::not_found())?;
    if !state.control().cancel_drain(&name).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "server_not_draining",
            "The server is not draining.",
        ));
    }
    Ok(Json(DrainView {
        server: name.to_string(),
        policy: "paused".to_owned(),
        operation: None,
    }))
}
