//! `/v1/clients/{slug}/mailing-lists`: mailing lists and the recipients bound to them, in the client's own
//! database.

use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, ListRecipient, RowId};
use super::scope::Tenant;
use crate::data::DataError;
use crate::data::lists::{self, Binding, BindingStatus, ListMember, MailingList};
use crate::domain::{optional_text, required_text};

const LIST_NAME_MAX: usize = 200;
const DESCRIPTION_MAX: usize = 2000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateList {
    /// 1-200 characters, unique per client (case-insensitively).
    #[schema(
        example = "Newsletter",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// At most 2000 characters, no control characters.
    #[schema(max_length = 2000, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBinding {
    pub status: BindingStatus,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(3[0-9]){1,18}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemberParams {
    /// Only recipients with this status on the list.
    pub status: Option<BindingStatus>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(3[0-9]){1,18}$")]
    pub cursor: Option<String>,
}

/// Create a mailing list.
#[utoipa::path(post, path = "/v1/clients/{slug}/mailing-lists", tag = "mailing-lists", request_body = CreateList,
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 201, description = "Created", body = MailingList),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Name taken, or the client is not active", body = ErrorBody)))]
pub async fn create(
    tenant: Tenant,
    ApiJson(body): ApiJson<CreateList>,
) -> Result<Response, ApiError> {
    let name = required_text("name", &body.name, LIST_NAME_MAX).map_err(DataError::from)?;
    let description = optional_text("description", body.description.as_deref(), DESCRIPTION_MAX)
        .map_err(DataError::from)?;
    let db = tenant.db().await?;
    // An inner client's list is in its scope from the start (the row's default names the inner client).
    let list = lists::create(db.client(), &name, description.as_deref()).await?;
    tenant.joined_scope(list.id).await?;
    Ok(super::created(
        &format!("/v1/clients/{}/mailing-lists/{}", tenant.slug(), list.id),
        &list,
    ))
}

/// The client's mailing lists, by id.
#[utoipa::path(get, path = "/v1/clients/{slug}/mailing-lists", tag = "mailing-lists",
    params(("slug" = String, Path, description = "The client's slug"), PageParams),
    responses(
        (status = 200, description = "A page of lists", body = Page<MailingList>),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn list(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<MailingList>>, ApiError> {
    let (limit, after) = cursor::keyset(params.limit, params.cursor.as_deref())?;
    let db = tenant.read_db().await?;
    let items = lists::list(db.client(), after, limit + 1).await?;
    Ok(Json(Page::from_rows(items, limit, |l| l.id.to_string())))
}

/// One mailing list.
#[utoipa::path(get, path = "/v1/clients/{slug}/mailing-lists/{id}", tag = "mailing-lists",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "List id")),
    responses(
        (status = 200, description = "The list", body = MailingList),
        (status = 404, description = "No such client or list", body = ErrorBody)))]
pub async fn get(tenant: Tenant, RowId(id): RowId) -> Result<Json<MailingList>, ApiError> {
    let db = tenant.read_db().await?;
    Ok(Json(lists::get(db.client(), id).await?))
}

/// Delete a mailing list and its bindings (the recipients stay).
#[utoipa::path(delete, path = "/v1/clients/{slug}/mailing-lists/{id}", tag = "mailing-lists",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "List id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such client or list", body = ErrorBody)))]
pub async fn delete(tenant: Tenant, RowId(id): RowId) -> Result<StatusCode, ApiError> {
    let db = tenant.db().await?;
    lists::delete(db.client(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a recipient's status on a list (binds it if it is not on the list yet).
#[utoipa::path(put, path = "/v1/clients/{slug}/mailing-lists/{id}/recipients/{rid}", tag = "mailing-lists",
    request_body = SetBinding,
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "List id"),
           ("rid" = i64, Path, description = "Recipient id")),
    responses(
        (status = 200, description = "The binding", body = Binding),
        (status = 400, description = "Invalid status", body = ErrorBody),
        (status = 404, description = "No such client, list or recipient", body = ErrorBody)))]
pub async fn bind(
    tenant: Tenant,
    path: Result<ListRecipient, ApiError>,
    ApiJson(body): ApiJson<SetBinding>,
) -> Result<Json<Binding>, ApiError> {
    let ListRecipient { list, recipient } = path?;
    let db = tenant.db().await?;
    Ok(Json(
        lists::bind(db.client(), list, recipient, body.status).await?,
    ))
}

/// The recipients on a list with their status, by recipient id.
#[utoipa::path(get, path = "/v1/clients/{slug}/mailing-lists/{id}/recipients", tag = "mailing-lists",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "List id"),
           MemberParams),
    responses(
        (status = 200, description = "A page of list members", body = Page<ListMember>),
        (status = 404, description = "No such client or list", body = ErrorBody)))]
pub async fn members(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<MemberParams>,
    RowId(id): RowId,
) -> Result<Json<Page<ListMember>>, ApiError> {
    let (limit, after) = cursor::keyset(params.limit, params.cursor.as_deref())?;
    let db = tenant.db().await?;
    let privacy = tenant.privacy().await?;
    let items = lists::members(db.client(), id, params.status, after, limit + 1, &privacy).await?;
    Ok(Json(Page::from_rows(items, limit, |m| {
        m.recipient.id.to_string()
    })))
}
