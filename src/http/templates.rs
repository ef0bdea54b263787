//! Templates: the master's (`/v1/templates`, versioned in the control plane, synced to every client by the
//! workers) and each client's view (`/v1/clients/{slug}/templates`: inherited copies, overrides, its own).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, TemplateId, template_id};
use super::scope::Tenant;
use crate::app::AppState;
use crate::control::templates::{MasterTemplate, SyncRow, TemplateContent};
use crate::data::DataError;
use crate::data::templates::{self, TenantTemplate};
use crate::domain::{Invalid, required_text};

/// Longest body (HTML or text), in bytes.
pub const BODY_MAX: usize = 1024 * 1024;

pub use crate::data::templates::TemplateInput;

/// A master template at its newest version.
#[derive(Debug, Serialize, ToSchema)]
pub struct MasterBody {
    pub id: Uuid,
    pub version: i32,
    pub name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<MasterTemplate> for MasterBody {
    fn from(t: MasterTemplate) -> Self {
        Self {
            id: t.id,
            version: t.version,
            name: t.name,
            subject: t.subject,
            html_body: t.html_body,
            text_body: t.text_body,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncState {
    pub client: String,
    /// synced, pending, failed or overridden.
    pub status: String,
    pub synced_version: Option<i32>,
    pub last_error: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncReport {
    pub template: Uuid,
    pub version: i32,
    pub clients: Vec<SyncState>,
}

impl From<SyncRow> for SyncState {
    fn from(r: SyncRow) -> Self {
        Self {
            client: r.client,
            status: r.status,
            synced_version: r.synced_version,
            last_error: r.last_error,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TemplatePage {
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(
        pattern = r"^(3[0-9]|6[1-6]){8}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){12}$"
    )]
    pub cursor: Option<String>,
}

/// Validates a template's content (sizes, required fields).
pub(super) fn content(input: TemplateInput) -> Result<TemplateContent, ApiError> {
    let name = required_text("name", &input.name, 200).map_err(DataError::from)?;
    let subject = required_text("subject", &input.subject, 998).map_err(DataError::from)?;
    if input.html_body.len() > BODY_MAX {
        return Err(ApiError::field_too_large("html_body", BODY_MAX));
    }
    if input.text_body.len() > BODY_MAX {
        return Err(ApiError::field_too_large("text_body", BODY_MAX));
    }
    if input.html_body.trim().is_empty() && input.text_body.trim().is_empty() {
        return Err(Invalid {
            field: "html_body",
            reason: "a template needs an HTML or a text body".into(),
        }
        .into());
    }
    Ok(TemplateContent {
        name,
        subject,
        html_body: input.html_body,
        text_body: input.text_body,
    })
}

fn after(cursor: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    cursor
        .map(|c| {
            cursor::decode(c)?
                .parse::<Uuid>()
                .map_err(|_| ApiError::invalid_cursor())
        })
        .transpose()
}

fn max_attempts(state: &AppState) -> i32 {
    i32::from(state.settings().workers.max_attempts)
}

/// Master templates, by id.
#[utoipa::path(get, path = "/v1/templates", tag = "templates", params(TemplatePage),
    responses((status = 200, description = "A page of master templates", body = Page<MasterBody>)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<TemplatePage>,
) -> Result<Json<Page<MasterBody>>, ApiError> {
    let limit = cursor::limit(params.limit)?;
    let rows = state
        .control()
        .templates(after(params.cursor.as_deref())?, limit + 1)
        .await?;
    let items = rows.into_iter().map(MasterBody::from).collect();
    Ok(Json(Page::from_rows(items, limit, |t| t.id.to_string())))
}

/// Create a master template (version 1); every active client gets a copy (and every client created later).
#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = TemplateInput,
    responses(
        (status = 201, description = "Created; being synced to every client", body = MasterBody),
        (status = 400, description = "Invalid name, subject or bodies", body = ErrorBody),
        (status = 413, description = "A body over 1 MiB", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<TemplateInput>,
) -> Result<Response, ApiError> {
    let content = content(input)?;
    let template = state
        .control()
        .create_template(&content, max_attempts(&state))
        .await?;
    tracing::info!(template = %template.id, "template published (v1)");
    Ok(super::created(
        &format!("/v1/templates/{}", template.id),
        &MasterBody::from(template),
    ))
}

/// A master template at its newest version.
#[utoipa::path(get, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "The template", body = MasterBody),
        (status = 404, description = "No such template", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MasterBody>, ApiError> {
    let id = template_id(&id)?;
    Ok(Json(state.control().template(id).await?.into()))
}

/// Publish a new version. Clients that did not override the template get it; an overriding client records it
/// as available.
#[utoipa::path(put, path = "/v1/templates/{id}", tag = "templates", request_body = TemplateInput,
    params(("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "The new version; being synced", body = MasterBody),
        (status = 400, description = "Invalid content", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<TemplateInput>,
) -> Result<Json<MasterBody>, ApiError> {
    let id = template_id(&id)?;
    let content = content(input)?;
    let template = state
        .control()
        .publish_template(id, &content, max_attempts(&state))
        .await?;
    tracing::info!(template = %template.id, version = template.version, "template published");
    Ok(Json(template.into()))
}

/// Retract a template: removed from every client except where overridden (that copy stays the client's).
#[utoipa::path(delete, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 202, description = "Retracted; being removed from the clients"),
        (status = 404, description = "No such template", body = ErrorBody)))]
pub async fn retract(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = template_id(&id)?;
    state
        .control()
        .retract_template(id, max_attempts(&state))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Per client: the version its copy holds and the sync status (synced, pending, failed with the error, or
/// overridden).
#[utoipa::path(get, path = "/v1/templates/{id}/sync", tag = "templates",
    params(("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "The sync state per client", body = SyncReport),
        (status = 404, description = "No such template", body = ErrorBody)))]
pub async fn sync_status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<SyncReport>, ApiError> {
    let id = template_id(&id)?;
    let template = state.control().template(id).await?;
    let rows = state.control().template_sync(id).await?;
    // Only the clients the caller can see (access to the master implies none to its sub-clients).
    let clients = rows
        .into_iter()
        .filter(|r| caller.rights.grant(r.client_id).is_visible())
        .map(SyncState::from)
        .collect();
    Ok(Json(SyncReport {
        template: id,
        version: template.version,
        clients,
    }))
}

/// The client's templates: inherited copies (by their master template's id) and its own.
#[utoipa::path(get, path = "/v1/clients/{slug}/templates", tag = "templates",
    params(("slug" = String, Path, description = "The client's slug"), TemplatePage),
    responses(
        (status = 200, description = "A page of the client's templates", body = Page<TenantTemplate>),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn client_list(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<TemplatePage>,
) -> Result<Json<Page<TenantTemplate>>, ApiError> {
    let limit = cursor::limit(params.limit)?;
    let after = after(params.cursor.as_deref())?;
    let db = tenant.db().await?;
    let items = templates::list(db.client(), after, limit + 1).await?;
    Ok(Json(Page::from_rows(items, limit, |t| t.id.to_string())))
}

/// Create a template of the client's own.
#[utoipa::path(post, path = "/v1/clients/{slug}/templates", tag = "templates", request_body = TemplateInput,
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 201, description = "Created", body = TenantTemplate),
        (status = 400, description = "Invalid content", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn client_create(
    tenant: Tenant,
    ApiJson(input): ApiJson<TemplateInput>,
) -> Result<Response, ApiError> {
    let content = content(input)?;
    let db = tenant.db().await?;
    let template = templates::create_local(db.client(), &content).await?;
    Ok(super::created(
        &format!("/v1/clients/{}/templates/{}", tenant.slug(), template.id),
        &template,
    ))
}

/// One of the client's templates.
#[utoipa::path(get, path = "/v1/clients/{slug}/templates/{id}", tag = "templates",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "The template", body = TenantTemplate),
        (status = 404, description = "No such client or template", body = ErrorBody)))]
pub async fn client_get(
    tenant: Tenant,
    TemplateId(id): TemplateId,
) -> Result<Json<TenantTemplate>, ApiError> {
    let db = tenant.db().await?;
    Ok(Json(templates::get(db.client(), id).await?))
}

/// Change a template: the client's own in place; an inherited one becomes an override (later master versions
/// are recorded as available, not applied, until the override is reverted).
#[utoipa::path(put, path = "/v1/clients/{slug}/templates/{id}", tag = "templates", request_body = TemplateInput,
    params(("slug" = String, Path, description = "The client's slug"), ("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "Changed", body = TenantTemplate),
        (status = 400, description = "Invalid content", body = ErrorBody),
        (status = 404, description = "No such client or template", body = ErrorBody)))]
pub async fn client_update(
    State(state): State<AppState>,
    tenant: Tenant,
    id: Result<TemplateId, ApiError>,
    ApiJson(input): ApiJson<TemplateInput>,
) -> Result<Json<TenantTemplate>, ApiError> {
    let TemplateId(id) = id?;
    let content = content(input)?;
    let db = tenant.db().await?;
    let template = templates::update(db.client(), id, &content).await?;
    if template.overridden {
        state
            .control()
            .templates_synced(&[(
                tenant.client().id,
                id,
                "overridden",
                template.master_version,
            )])
            .await?;
    }
    Ok(Json(template))
}

/// End an override: the copy takes the master's newest version again.
#[utoipa::path(delete, path = "/v1/clients/{slug}/templates/{id}/override", tag = "templates",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "Reverted to the master's newest version", body = TenantTemplate),
        (status = 404, description = "No such client or template", body = ErrorBody),
        (status = 409, description = "A local template (it has no master) or one that is not overridden", body = ErrorBody)))]
pub async fn client_revert(
    State(state): State<AppState>,
    tenant: Tenant,
    TemplateId(id): TemplateId,
) -> Result<Response, ApiError> {
    let db = tenant.db().await?;
    let copy = templates::get(db.client(), id).await?;
    if copy.origin != "inherited" {
        return Err(ApiError::local_template());
    }
    if !copy.overridden {
        return Err(ApiError::not_overridden());
    }
    let master = state.control().template(id).await?;
    let reverted = templates::revert(db.client(), id, &master).await?;
    state
        .control()
        .templates_synced(&[(tenant.client().id, id, "synced", reverted.master_version)])
        .await?;
    Ok((StatusCode::OK, Json(reverted)).into_response())
}
