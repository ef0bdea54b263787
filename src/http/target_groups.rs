//! `/v1/clients/{slug}/target-groups`: named rules over the client's recipients, evaluated in its own database.

use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, RowId};
use super::lists::PageParams;
use super::scope::Tenant;
use crate::data::DataError;
use crate::data::recipients::Recipient;
use crate::data::target_groups::{self, TargetGroup};
use crate::domain::required_text;

const GROUP_NAME_MAX: usize = 200;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTargetGroup {
    /// 1-200 characters, unique per client (case-insensitively).
    #[schema(
        example = "Berlin, opted in",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// `{"all": [...]}`, `{"any": [...]}`, `{"not": {...}}`,
    /// `{"field": "city", "op": "eq|ne|lt|le|gt|ge|contains|starts_with|in|is_null|not_null", "value": ...}`,
    /// `{"list": <id>, "status": "active"}`.
    #[schema(value_type = Object, example = json!({"all": [{"field": "city", "op": "eq", "value": "Berlin"}, {"list": 1, "status": "active"}]}))]
    pub rule: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupCount {
    pub count: i64,
}

/// Create a target group. The rule is checked against the client's fields and lists now (400 naming the
/// problem) and evaluated whenever the group is used.
#[utoipa::path(post, path = "/v1/clients/{slug}/target-groups", tag = "target-groups", request_body = CreateTargetGroup,
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 201, description = "Created", body = TargetGroup),
        (status = 400, description = "Invalid name or rule", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Name taken, or the client is not active", body = ErrorBody)))]
pub async fn create(
    tenant: Tenant,
    ApiJson(body): ApiJson<CreateTargetGroup>,
) -> Result<Response, ApiError> {
    let name = required_text("name", &body.name, GROUP_NAME_MAX).map_err(DataError::from)?;
    let db = tenant.db().await?;
    let privacy = tenant.privacy().await?;
    let group = target_groups::create(db.client(), &name, &body.rule, &privacy).await?;
    Ok(super::created(
        &format!("/v1/clients/{}/target-groups/{}", tenant.slug(), group.id),
        &group,
    ))
}

/// The client's target groups, by id.
#[utoipa::path(get, path = "/v1/clients/{slug}/target-groups", tag = "target-groups",
    params(("slug" = String, Path, description = "The client's slug"), PageParams),
    responses(
        (status = 200, description = "A page of target groups", body = Page<TargetGroup>),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn list(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<TargetGroup>>, ApiError> {
    let (limit, after) = cursor::keyset(params.limit, params.cursor.as_deref())?;
    let db = tenant.read_db().await?;
    let mut items = target_groups::list(db.client(), after, limit + 1).await?;
    target_groups::protect(&*db, &tenant.privacy().await?, &mut items).await?;
    Ok(Json(Page::from_rows(items, limit, |g| g.id.to_string())))
}

/// One target group.
#[utoipa::path(get, path = "/v1/clients/{slug}/target-groups/{id}", tag = "target-groups",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "Target group id")),
    responses(
        (status = 200, description = "The target group", body = TargetGroup),
        (status = 404, description = "No such client or target group", body = ErrorBody)))]
pub async fn get(tenant: Tenant, RowId(id): RowId) -> Result<Json<TargetGroup>, ApiError> {
    let db = tenant.read_db().await?;
    let mut group = target_groups::get(db.client(), id).await?;
    target_groups::protect(
        &*db,
        &tenant.privacy().await?,
        std::slice::from_mut(&mut group),
    )
    .await?;
    Ok(Json(group))
}

/// Delete a target group (recipients are not touched).
#[utoipa::path(delete, path = "/v1/clients/{slug}/target-groups/{id}", tag = "target-groups",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "Target group id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such client or target group", body = ErrorBody)))]
pub async fn delete(tenant: Tenant, RowId(id): RowId) -> Result<StatusCode, ApiError> {
    let db = tenant.db().await?;
    target_groups::delete(db.client(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How many recipients the group matches now.
#[utoipa::path(get, path = "/v1/clients/{slug}/target-groups/{id}/count", tag = "target-groups",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "Target group id")),
    responses(
        (status = 200, description = "The number of matching recipients", body = GroupCount),
        (status = 409, description = "The stored rule no longer fits the client's fields or lists (`rule_no_longer_fits`)", body = ErrorBody),
        (status = 404, description = "No such client or target group", body = ErrorBody)))]
pub async fn count(tenant: Tenant, RowId(id): RowId) -> Result<Json<GroupCount>, ApiError> {
    let db = tenant.db().await?;
    let privacy = tenant.privacy().await?;
    let count = target_groups::count(db.client(), id, &privacy).await?;
    Ok(Json(GroupCount { count }))
}

/// The recipients the group matches now, by id.
#[utoipa::path(get, path = "/v1/clients/{slug}/target-groups/{id}/recipients", tag = "target-groups",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "Target group id"), PageParams),
    responses(
        (status = 200, description = "A page of matching recipients", body = Page<Recipient>),
        (status = 409, description = "The stored rule no longer fits the client's fields or lists (`rule_no_longer_fits`)", body = ErrorBody),
        (status = 404, description = "No such client or target group", body = ErrorBody)))]
pub async fn members(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<PageParams>,
    RowId(id): RowId,
) -> Result<Json<Page<Recipient>>, ApiError> {
    let (limit, after) = cursor::keyset(params.limit, params.cursor.as_deref())?;
    let db = tenant.db().await?;
    let privacy = tenant.privacy().await?;
    let items = target_groups::members(db.client(), id, after, limit + 1, &privacy).await?;
    Ok(Json(Page::from_rows(items, limit, |r| r.id.to_string())))
}
