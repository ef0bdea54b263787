//! `GET /v1/operations/{id}`: the state of a background job started by a request.

use axum::Json;
use axum::extract::{Path, State};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::app::AppState;
use crate::control::jobs::Operation;

/// The state of an operation: `queued` (also while waiting to retry, with `last_error`), `running`,
/// `succeeded` or `failed`.
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "clients",
    params(("id" = Uuid, Path, description = "The operation id returned by the request that started it")),
    responses(
        (status = 200, description = "The operation", body = Operation),
        (status = 404, description = "No such operation", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Operation>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found())?;
    let operation = state.control().operation(id).await?;
    // An operation is as visible as its client (one without a client: to master admins only).
    let visible = match operation.client_id {
        Some(client) => caller.rights.grant(client).is_visible(),
        // A drain: whoever may start one may follow it.
        None if operation.kind == "drain_server" => {
            super::moves::check_servers_manage(&state, &caller.rights)
                .await
                .is_ok()
        }
        None => caller.rights.master_admin,
    };
    if visible {
        Ok(Json(operation))
    } else {
        Err(ApiError::not_found())
    }
}
