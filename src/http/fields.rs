//! Custom recipient fields: central ones (`/v1/fields`, inherited by every client) and each client's own
//! (`/v1/clients/{slug}/fields`). Definitions live in the control plane; applying one is an `ALTER TABLE` in each
//! tenant database (see `tenant/fields.rs`), done within the request for a client's own field and by
//! `reconcile_fields` jobs for central ones.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, FieldPath};
use super::scope::Tenant;
use crate::app::AppState;
use crate::control::ControlError;
use crate::control::clients::ClientRecord;
use crate::control::fields::{FieldRecord, FieldStatusRow, NewField};
use crate::data::DataError;
use crate::data::schema::{Field, FieldType, Origin, Schema};
use crate::domain::rights::Rights;
use crate::domain::{ClientSlug, ClientStatus, FieldName, Invalid, STANDARD_FIELDS};

const TYPES: [&str; 6] = ["text", "integer", "number", "boolean", "date", "timestamp"];
const TEXT_MAX: i32 = 4000;
const TEXT_DEFAULT: i32 = 255;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateField {
    /// `^[a-z][a-z0-9_]{2,62}$`, not a standard field, no `sys_`/`mandant_` prefix, not an SQL keyword.
    #[schema(example = "city", pattern = r"^[a-z][a-z0-9_]{2,62}$")]
    pub name: String,
    /// text, integer, number, boolean, date or timestamp.
    #[serde(rename = "type")]
    #[schema(example = "text", value_type = FieldTypeName, inline)]
    pub data_type: String,
    /// Texts only: the most characters, 1-4000 (default 255). May only grow later.
    #[schema(minimum = 1, maximum = 4000)]
    pub length: Option<i32>,
    /// NOT NULL; needs a default.
    #[serde(default)]
    pub required: bool,
    /// Of the field's type; what existing and new recipients get when they have no value.
    #[schema(value_type = Option<Object>)]
    pub default: Option<serde_json::Value>,
    /// Personal data: masked for users without the private-data right.
    #[serde(default)]
    pub personal: bool,
}

/// The types a field can have (the document's enum; the handlers parse the text with `FieldType`).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum FieldTypeName {
    Text,
    Integer,
    Number,
    Boolean,
    Date,
    Timestamp,
}

/// A change: a longer text, the personal flag. The type cannot change (`type`, if given, must be the same).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateField {
    #[serde(rename = "type")]
    #[schema(value_type = Option<FieldTypeName>, inline)]
    pub data_type: Option<String>,
    /// Texts only: the most characters, up to 4000; never less than now.
    #[schema(minimum = 1, maximum = 4000)]
    pub length: Option<i32>,
    pub personal: Option<bool>,
}

/// A field as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldBody {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<i32>,
    pub required: bool,
    #[schema(value_type = Option<Object>)]
    pub default: Option<serde_json::Value>,
    pub personal: bool,
    /// standard, system, central or client.
    pub origin: &'static str,
    /// For one client: applied, pending or failed (standard and system fields: applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// A central field across the clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Propagation {
    pub applied: usize,
    pub pending: usize,
    pub failed: usize,
    /// The clients where it failed, with the last error (retries go on).
    pub failing: Vec<FailingClient>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailingClient {
    pub client: String,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedField {
    pub name: String,
    /// Clients whose column is being dropped.
    pub clients: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FieldPage {
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(2[0-9a-f]|[3-6][0-9a-f]|7[0-9a-e]){1,200}$")]
    pub cursor: Option<String>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ApiError {
    Invalid {
        field,
        reason: reason.into(),
    }
    .into()
}

/// Validates a new field before anything is written: name rules, type, length, a default of the field's type.
fn validate(body: &CreateField) -> Result<NewField, ApiError> {
    let name = FieldName::parse(&body.name)?;
    let data_type = TYPES
        .into_iter()
        .find(|t| *t == body.data_type)
        .ok_or_else(|| invalid("type", format!("must be one of {}", TYPES.join(", "))))?;
    let length = match (data_type, body.length) {
        ("text", None) => Some(TEXT_DEFAULT),
        ("text", Some(n)) if (1..=TEXT_MAX).contains(&n) => Some(n),
        ("text", Some(_)) => return Err(invalid("length", format!("must be 1-{TEXT_MAX}"))),
        (_, None) => None,
        (_, Some(_)) => return Err(invalid("length", "applies to text fields only")),
    };
    let ty = FieldType::parse(data_type, length)
        .ok_or_else(|| invalid("type", "is not a known type"))?;
    let default = match &body.default {
        None | Some(serde_json::Value::Null) => None,
        Some(json) => {
            let value = Field::custom(name.as_str(), ty, body.personal)
                .parse_json(json)
                .map_err(|e| invalid("default", e))?;
            (!value.is_null()).then(|| value.to_json())
        }
    };
    if body.required && default.is_none() {
        return Err(invalid(
            "default",
            "a required field needs a default (existing recipients get it)",
        ));
    }
    Ok(NewField {
        name: name.to_string(),
        data_type,
        length,
        required: body.required,
        default_value: default,
        personal: body.personal,
    })
}

fn body(field: &FieldRecord, status: Option<&FieldStatusRow>) -> FieldBody {
    FieldBody {
        name: field.name.clone(),
        data_type: field.data_type.clone(),
        length: field.length,
        required: field.required,
        default: field.default_value.clone(),
        personal: field.personal,
        origin: if field.client_id.is_some() {
            "client"
        } else {
            "central"
        },
        status: status.map(|s| s.status.clone()),
        last_error: status.and_then(|s| s.last_error.clone()),
        propagation: None,
    }
}

/// How far a central field has reached, over the clients the caller can see (access to the master implies none
/// to its sub-clients, not even their number).
fn propagation(rows: &[FieldStatusRow], rights: &Rights) -> Propagation {
    let rows: Vec<&FieldStatusRow> = rows
        .iter()
        .filter(|r| rights.grant(r.client_id).is_visible())
        .collect();
    let count = |status: &str| rows.iter().filter(|r| r.status == status).count();
    Propagation {
        applied: count("applied"),
        pending: count("pending"),
        failed: count("failed"),
        failing: rows
            .iter()
            .filter(|r| r.status == "failed")
            .map(|r| FailingClient {
                client: r.slug.clone(),
                error: r.last_error.clone(),
            })
            .collect(),
    }
}

fn page(
    items: Vec<FieldBody>,
    limit: Option<i64>,
    after: Option<&str>,
) -> Result<Page<FieldBody>, ApiError> {
    let limit = cursor::limit(limit)?;
    let after = after.map(cursor::decode).transpose()?;
    let rows: Vec<FieldBody> = items
        .into_iter()
        .filter(|f| after.as_deref().is_none_or(|a| f.name.as_str() > a))
        .take(usize::try_from(limit + 1).unwrap_or(usize::MAX))
        .collect();
    Ok(Page::from_rows(rows, limit, |f| f.name.clone()))
}

/// 409 naming the clients (the caller can see) whose own field has the name a central field wants.
async fn taken_by_clients(state: &AppState, rights: &Rights, slugs: Vec<String>) -> ApiError {
    let mut shown = Vec::new();
    for slug in slugs {
        let Ok(parsed) = ClientSlug::parse(&slug) else {
            continue;
        };
        if let Ok(client) = state.data().client(&parsed).await
            && rights.grant(client.id).is_visible()
        {
            shown.push(slug);
        }
    }
    ApiError::field_taken_by_clients(&shown)
}

/// Central fields, by name.
#[utoipa::path(get, path = "/v1/fields", tag = "fields", params(FieldPage),
    responses((status = 200, description = "A page of central fields", body = Page<FieldBody>)))]
pub async fn list_central(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<FieldPage>,
) -> Result<Json<Page<FieldBody>>, ApiError> {
    let fields = state.control().fields_of(None).await?;
    let items = fields.iter().map(|f| body(f, None)).collect();
    Ok(Json(page(items, params.limit, params.cursor.as_deref())?))
}

/// Create a central field: every client (active and suspended, and every client created later) gets it as a
/// real column. 202: the workers apply it across the fleet; `GET /v1/fields/{name}` shows the progress.
#[utoipa::path(post, path = "/v1/fields", tag = "fields", request_body = CreateField,
    responses(
        (status = 202, description = "Created; being applied to every client", body = FieldBody),
        (status = 400, description = "Invalid name, type, length or default", body = ErrorBody),
        (status = 409, description = "The name is taken (by a central field or by clients' own fields)", body = ErrorBody)))]
pub async fn create_central(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(request): ApiJson<CreateField>,
) -> Result<Response, ApiError> {
    let new = validate(&request)?;
    let max_attempts = i32::from(state.settings().workers.max_attempts);
    let field = match state
        .control()
        .create_field(None, &new, i64::MAX, max_attempts)
        .await
    {
        Ok(field) => field,
        Err(ControlError::FieldTakenByClients(slugs)) => {
            return Err(taken_by_clients(&state, &caller.rights, slugs).await);
        }
        Err(e) => return Err(e.into()),
    };
    let statuses = state.control().field_statuses(field.id).await?;
    let mut shown = body(&field, None);
    shown.propagation = Some(propagation(&statuses, &caller.rights));
    tracing::info!(field = %field.name, clients = statuses.len(), "central field created");
    let mut response = super::created(&format!("/v1/fields/{}", field.name), &shown);
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

/// A central field and how far it has reached: applied / pending / failed counts and the failing clients.
#[utoipa::path(get, path = "/v1/fields/{name}", tag = "fields",
    params(("name" = String, Path, description = "Field name")),
    responses(
        (status = 200, description = "The field and its propagation", body = FieldBody),
        (status = 404, description = "No such central field", body = ErrorBody)))]
pub async fn get_central(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<FieldBody>, ApiError> {
    let field = state.control().field(None, &name).await?;
    let statuses = state.control().field_statuses(field.id).await?;
    let mut shown = body(&field, None);
    shown.propagation = Some(propagation(&statuses, &caller.rights));
    Ok(Json(shown))
}

/// Delete a central field: every client's column is dropped (by the workers).
#[utoipa::path(delete, path = "/v1/fields/{name}", tag = "fields",
    params(("name" = String, Path, description = "Field name")),
    responses(
        (status = 202, description = "Deleted; the columns are being dropped", body = DeletedField),
        (status = 404, description = "No such central field", body = ErrorBody)))]
pub async fn delete_central(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let max_attempts = i32::from(state.settings().workers.max_attempts);
    let clients = state
        .control()
        .delete_field(None, &name, max_attempts)
        .await?;
    tracing::info!(field = %name, clients = clients.len(), "central field deleted");
    // Counted over the clients the caller sees.
    let visible = clients
        .iter()
        .filter(|c| caller.rights.grant(**c).is_visible())
        .count();
    Ok((
        StatusCode::ACCEPTED,
        Json(DeletedField {
            name,
            clients: visible,
        }),
    )
        .into_response())
}

/// The client, if its database takes field changes (active or suspended).
async fn client_with_database(state: &AppState, tenant: &Tenant) -> Result<ClientRecord, ApiError> {
    // By the id the access check found (a slug could have been freed and reused since).
    let client = state.control().client_by_id(tenant.client().id).await?;
    if !matches!(
        client.status,
        ClientStatus::Active | ClientStatus::Suspended
    ) {
        return Err(DataError::ClientNotActive(client.status).into());
    }
    Ok(client)
}

/// Applies the client's desired fields now; on failure (its database unreachable, a lock held too long) leaves
/// them pending for the reconciler. Returns whether they were applied.
async fn apply_now(state: &AppState, client: &ClientRecord) -> Result<bool, ApiError> {
    let server_id = client
        .server_id
        .ok_or(DataError::ClientNotActive(client.status))?;
    let max_attempts = i32::from(state.settings().workers.max_attempts);
    if client.moving_to.is_some() {
        // Logical replication copies no DDL: the change waits for the move's end (its job runs after it).
        state
            .control()
            .enqueue_field_reconcile(client.id, max_attempts)
            .await?;
        return Ok(false);
    }
    let server = state.control().server(server_id).await?;
    match state.fanout().apply_fields(client.id, &server).await {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(client = %client.slug, error = %crate::telemetry::error_chain(&e),
                "could not apply the client's fields now; left to the reconciler");
            state
                .control()
                .enqueue_field_reconcile(client.id, max_attempts)
                .await?;
            Ok(false)
        }
    }
}

/// Every field of the client: standard, system, central and its own, with each one's status in its database.
#[utoipa::path(get, path = "/v1/clients/{slug}/fields", tag = "fields",
    params(("slug" = String, Path, description = "The client's slug"), FieldPage),
    responses(
        (status = 200, description = "The client's fields", body = Page<FieldBody>),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn list_client(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(params): ApiQuery<FieldPage>,
) -> Result<Json<Page<FieldBody>>, ApiError> {
    let client = tenant.client();
    let statuses = state.control().client_field_statuses(client.id).await?;
    let mut items: Vec<FieldBody> = Schema::standard()
        .fields()
        .map(|f| FieldBody {
            name: f.name.clone(),
            data_type: f.ty.name().to_owned(),
            length: match f.ty {
                FieldType::Text { max } => i32::try_from(max).ok(),
                _ => None,
            },
            required: f.required,
            default: None,
            personal: f.personal,
            origin: if f.origin == Origin::System {
                "system"
            } else {
                "standard"
            },
            status: Some("applied".into()),
            last_error: None,
            propagation: None,
        })
        .collect();
    for field in state.control().desired_fields(client.id).await? {
        let status = statuses.iter().find(|s| s.field_id == field.id);
        let mut shown = body(&field, status);
        if shown.status.is_none() {
            shown.status = Some("pending".into());
        }
        items.push(shown);
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(page(items, params.limit, params.cursor.as_deref())?))
}

/// Add a field of the client's own. 201 when its database has it; 202 when its database cannot be reached now
/// (the reconciler applies it when it can).
#[utoipa::path(post, path = "/v1/clients/{slug}/fields", tag = "fields", request_body = CreateField,
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 201, description = "Created and applied", body = FieldBody),
        (status = 202, description = "Created; pending (the tenant database is unreachable now)", body = FieldBody),
        (status = 400, description = "Invalid name, type, length or default", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Name taken, a central field, quota used up, or the client is not active", body = ErrorBody)))]
pub async fn create_client(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(request): ApiJson<CreateField>,
) -> Result<Response, ApiError> {
    let new = validate(&request)?;
    let client = client_with_database(&state, &tenant).await?;
    let settings = state.settings();
    let field = state
        .control()
        .create_field(
            Some(client.id),
            &new,
            i64::from(settings.tenants.field_quota),
            i32::from(settings.workers.max_attempts),
        )
        .await?;
    let applied = apply_now(&state, &client).await?;
    let mut shown = body(&field, None);
    shown.status = Some(if applied { "applied" } else { "pending" }.into());
    let mut response = super::created(
        &format!("/v1/clients/{}/fields/{}", client.slug, field.name),
        &shown,
    );
    if !applied {
        *response.status_mut() = StatusCode::ACCEPTED;
    }
    Ok(response)
}

/// Why a client cannot change or drop `name`: it is standard or central (409), or unknown (404).
async fn own_field(
    state: &AppState,
    client: &ClientRecord,
    name: &str,
) -> Result<FieldRecord, ApiError> {
    if STANDARD_FIELDS.contains(&name) {
        return Err(ApiError::standard_field(name));
    }
    match state.control().field(Some(client.id), name).await {
        Ok(field) => Ok(field),
        Err(ControlError::NotFound) => match state.control().field(None, name).await {
            Ok(_) => Err(ApiError::inherited_field(name)),
            Err(ControlError::NotFound) => Err(ApiError::not_found()),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Change one of the client's own fields: a longer text, the personal flag. The type never changes; a text
/// never gets shorter.
#[utoipa::path(patch, path = "/v1/clients/{slug}/fields/{name}", tag = "fields", request_body = UpdateField,
    params(("slug" = String, Path, description = "The client's slug"), ("name" = String, Path, description = "Field name")),
    responses(
        (status = 200, description = "Changed and applied", body = FieldBody),
        (status = 202, description = "Changed; pending", body = FieldBody),
        (status = 400, description = "Invalid change", body = ErrorBody),
        (status = 404, description = "No such client or field", body = ErrorBody),
        (status = 409, description = "A standard or central field, a type change or a shorter text", body = ErrorBody)))]
pub async fn update_client(
    State(state): State<AppState>,
    tenant: Tenant,
    FieldPath(name): FieldPath,
    ApiJson(request): ApiJson<UpdateField>,
) -> Result<Response, ApiError> {
    let client = client_with_database(&state, &tenant).await?;
    let field = own_field(&state, &client, &name).await?;
    // Un-marking a personal field would unmask its values: only for someone who may see them anyway. A field
    // that is not personal stays as it is (`false` on it is a no-op, written as no change, so a field marked
    // personal meanwhile is never un-marked by it).
    let personal = match request.personal {
        Some(false) if !field.personal => None,
        Some(false) if !tenant.private_data() => {
            return Err(DataError::PersonalData(name).into());
        }
        other => other,
    };
    if request
        .data_type
        .as_deref()
        .is_some_and(|t| t != field.data_type)
    {
        return Err(ApiError::type_change_refused(&name, &field.data_type));
    }
    if let Some(length) = request.length {
        let Some(current) = field.length else {
            return Err(invalid("length", "applies to text fields only"));
        };
        if length < current {
            return Err(ApiError::length_shrink_refused(&name, current));
        }
        if length > TEXT_MAX {
            return Err(invalid("length", format!("must be at most {TEXT_MAX}")));
        }
    }
    let field = state
        .control()
        .update_field(Some(client.id), &name, request.length, personal)
        .await?;
    let applied = apply_now(&state, &client).await?;
    let mut shown = body(&field, None);
    shown.status = Some(if applied { "applied" } else { "pending" }.into());
    let status = if applied {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(shown)).into_response())
}

/// Drop one of the client's own fields (the column and its data). Standard and central fields cannot be
/// dropped by a client (409).
#[utoipa::path(delete, path = "/v1/clients/{slug}/fields/{name}", tag = "fields",
    params(("slug" = String, Path, description = "The client's slug"), ("name" = String, Path, description = "Field name")),
    responses(
        (status = 204, description = "Dropped"),
        (status = 202, description = "Deleted; the column is dropped when the database is reachable"),
        (status = 404, description = "No such client or field", body = ErrorBody),
        (status = 409, description = "A standard or central field", body = ErrorBody)))]
pub async fn delete_client(
    State(state): State<AppState>,
    tenant: Tenant,
    FieldPath(name): FieldPath,
) -> Result<StatusCode, ApiError> {
    let client = client_with_database(&state, &tenant).await?;
    own_field(&state, &client, &name).await?;
    let max_attempts = i32::from(state.settings().workers.max_attempts);
    state
        .control()
        .delete_field(Some(client.id), &name, max_attempts)
        .await?;
    Ok(if apply_now(&state, &client).await? {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::ACCEPTED
    })
}
