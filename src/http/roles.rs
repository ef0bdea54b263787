//! `/v1/roles`, `/v1/permissions`: the central roles (sets of permission tokens, usable for users of every
//! client). Built-in roles are fixed; a role can only be given permissions its author holds.
//!
//! Handlers parse input into domain values, call the access service ([`crate::access::RightsService`], which
//! checks, writes and drops the principal cache in one call) and map the result to views. Never: a rights check
//! or a write of roles of its own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::app::AppState;
use crate::control::access::RoleRecord;
use crate::domain::optional_text;
use crate::domain::rights::{Permission, Permissions, Principal, parse_role_name};

const DESCRIPTION_MAX: usize = 500;

#[derive(Debug, Serialize, ToSchema)]
pub struct PermissionView {
    #[schema(example = "recipients.read")]
    pub name: &'static str,
    pub description: &'static str,
    /// Whether `read` access to a client allows it (only the `*.read` permissions).
    pub read: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleView {
    #[schema(example = "campaign-manager")]
    pub name: String,
    pub description: String,
    /// Built-in roles cannot be changed or deleted.
    pub builtin: bool,
    pub permissions: Vec<String>,
    /// How many users hold the role (shown to master admins only: holders span every client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<i64>,
}

impl RoleView {
    fn new(r: RoleRecord, caller: &Principal) -> Self {
        Self {
            name: r.name,
            description: r.description,
            builtin: r.builtin,
            permissions: r.permissions,
            users: caller.rights.master_admin.then_some(r.users),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    /// `^[a-z][a-z0-9-]{1,39}$`.
    #[schema(example = "campaign-manager", pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub name: String,
    /// At most 500 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: String,
    /// Permission tokens (`GET /v1/permissions`); the caller must hold each.
    #[schema(value_type = Vec<crate::domain::rights::Permission>)]
    pub permissions: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRole {
    /// At most 500 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: String,
    /// Permission tokens (`GET /v1/permissions`); the caller must hold each.
    #[schema(value_type = Vec<crate::domain::rights::Permission>)]
    pub permissions: Vec<String>,
}

/// Every permission token.
#[utoipa::path(get, path = "/v1/permissions", tag = "users",
    responses((status = 200, description = "The permission tokens", body = Vec<PermissionView>)))]
pub async fn permissions() -> Json<Vec<PermissionView>> {
    Json(
        Permission::ALL
            .iter()
            .map(|p| PermissionView {
                name: p.as_str(),
                description: p.description(),
                read: p.is_read(),
            })
            .collect(),
    )
}

/// Every role, built-in ones first.
#[utoipa::path(get, path = "/v1/roles", tag = "users",
    responses((status = 200, description = "The roles", body = Vec<RoleView>),
        (status = 403, description = "No users.read", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<RoleView>>, ApiError> {
    let roles = state.control().roles().await?;
    Ok(Json(
        roles
            .into_iter()
            .map(|r| RoleView::new(r, &caller))
            .collect(),
    ))
}

fn description(text: &str) -> Result<String, ApiError> {
    Ok(optional_text("description", Some(text), DESCRIPTION_MAX)?.unwrap_or_default())
}

/// Define a role.
#[utoipa::path(post, path = "/v1/roles", tag = "users", request_body = CreateRole,
    responses((status = 201, description = "Created", body = RoleView),
        (status = 400, description = "Invalid name or unknown permission", body = ErrorBody),
        (status = 403, description = "No roles.manage, or a permission the caller lacks", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<CreateRole>,
) -> Result<Response, ApiError> {
    let name = parse_role_name(&body.name)?;
    let description = description(&body.description)?;
    let permissions = Permissions::parse_all(&body.permissions)?;
    let role = state
        .access()
        .create_role(&caller, &name, &description, permissions)
        .await?;
    let location = format!("/v1/roles/{name}");
    Ok(super::created(&location, &RoleView::new(role, &caller)))
}

/// Replace a custom role's description and permissions (its holders' rights change at once).
#[utoipa::path(put, path = "/v1/roles/{name}", tag = "users", request_body = ReplaceRole,
    params(("name" = String, Path, description = "The role")),
    responses((status = 200, description = "The role now", body = RoleView),
        (status = 400, description = "Unknown permission", body = ErrorBody),
        (status = 403, description = "No roles.manage, or a permission the caller lacks", body = ErrorBody),
        (status = 404, description = "No such role", body = ErrorBody),
        (status = 409, description = "A built-in role", body = ErrorBody)))]
pub async fn replace(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ReplaceRole>,
) -> Result<Response, ApiError> {
    let name = parse_role_name(&name).map_err(|_| ApiError::not_found())?;
    let description = description(&body.description)?;
    let permissions = Permissions::parse_all(&body.permissions)?;
    let role = state
        .access()
        .replace_role(&caller, &name, &description, permissions)
        .await?;
    Ok(Json(RoleView::new(role, &caller)).into_response())
}

/// Delete a custom role nobody holds.
#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "users",
    params(("name" = String, Path, description = "The role")),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "No roles.manage", body = ErrorBody),
        (status = 404, description = "No such role", body = ErrorBody),
        (status = 409, description = "A built-in role, or held by users", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = parse_role_name(&name).map_err(|_| ApiError::not_found())?;
    state.access().delete_role(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
