//! `/v1/clients/{slug}/recipients`: recipients in the client's own database (data plane, through the routing
//! pool), with the import. Standard fields and the client's custom fields (central and its own) side by side,
//! flattened, in bodies, filters and imports; personal fields are masked without the private-data right, and
//! writing one needs it.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Deserializer};
use utoipa::{IntoParams, ToSchema};

use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, RowId, cursor_id};
use super::scope::Tenant;
use crate::app::AppState;
use crate::data::DataError;
use crate::data::import::{self, Format, ImportError, ImportOutcome};
use crate::data::recipients::{
    self, GENDER_MAX, NAME_MAX, NewRecipient, Recipient, RecipientPatch,
};
use crate::data::rules;
use crate::data::schema::Schema;
use crate::domain::{Email, optional_text};

/// Standard fields, plus the client's custom fields flattened beside them (`"city": "Berlin"`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRecipient {
    /// An e-mail address, at most 254 characters, unique per client (case-insensitively).
    #[schema(
        example = "anna@example.org",
        max_length = 254,
        pattern = r"^[\u0021-\u003F\u0041-\u007E]{1,64}@[\u0021-\u002D\u002F-\u003F\u0041-\u007E]+(\.[\u0021-\u002D\u002F-\u003F\u0041-\u007E]+)+$"
    )]
    pub email: String,
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub first_name: Option<String>,
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub last_name: Option<String>,
    #[schema(max_length = 32, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub gender: Option<String>,
    /// Custom fields by name; an unknown name is a 400 naming it.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// Bind the new recipient (status `active`) to this mailing list. For an inner client it must be one of its
    /// scope's lists (default: the scope's first list). A query parameter, not a body key: the body's keys are
    /// field names, and `list` is a valid field name.
    #[param(minimum = 1)]
    pub list: Option<i64>,
}

/// Absent fields stay as they are; `null` clears a name, gender or custom field (not a required one).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateRecipient {
    #[schema(
        max_length = 254,
        pattern = r"^[\u0021-\u003F\u0041-\u007E]{1,64}@[\u0021-\u002D\u002F-\u003F\u0041-\u007E]+(\.[\u0021-\u002D\u002F-\u003F\u0041-\u007E]+)+$"
    )]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 32, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub gender: Option<Option<String>>,
    /// Custom fields by name.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Tells a field given as `null` (Some(None)) from an absent one (None).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `limit`, `cursor`, and any field name as an equality filter (`?city=Berlin&email=a@b.org`; an empty value
/// matches recipients without one). E-mail compares case-insensitively.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1-1000 (default 50). (Text here: a flattened query map reads every value as text.)
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(3[0-9]){1,18}$")]
    pub cursor: Option<String>,
    /// Field filters.
    #[serde(flatten)]
    #[param(value_type = Object)]
    pub filters: std::collections::BTreeMap<String, String>,
}

/// The tenant's schema, read only when a request names a field that is not standard.
async fn schema_for<'a>(
    db: &impl crate::tenant::statements::Queries,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<Schema, DataError> {
    let standard = Schema::standard();
    if names.into_iter().all(|n| standard.get(n).is_some()) {
        Ok(standard)
    } else {
        Schema::load(db).await
    }
}

fn text(field: &'static str, value: Option<&str>, max: usize) -> Result<Option<String>, DataError> {
    Ok(optional_text(field, value, max)?)
}

/// Writing a personal field needs the private-data right: a write keyed by or setting an address answers whether it
/// is known (409 `email_taken`), and an upsert would tie a marker of the caller's to a masked recipient.
fn personal_write(tenant: &Tenant, field: &str) -> Result<(), DataError> {
    if tenant.private_data() {
        Ok(())
    } else {
        Err(DataError::PersonalData(field.to_owned()))
    }
}

/// Masks the personal fields of a recipient about to be returned, unless the caller has the private-data right.
async fn shown(
    tenant: &Tenant,
    db: &impl crate::tenant::statements::Queries,
    recipient: &mut Recipient,
) -> Result<(), ApiError> {
    let privacy = tenant.privacy().await?;
    recipients::protect(db, &privacy, None, std::slice::from_mut(recipient)).await?;
    Ok(())
}

/// Add a recipient; its e-mail address must be new to this client (case-insensitively).
#[utoipa::path(post, path = "/v1/clients/{slug}/recipients", tag = "recipients", request_body = CreateRecipient,
    params(("slug" = String, Path, description = "The client's slug"), CreateParams),
    responses(
        (status = 201, description = "Created", body = Recipient,
         headers(("Location" = String, description = "The new recipient"))),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "E-mail taken, or the client is not active", body = ErrorBody),
        (status = 422, description = "Outside the inner client's scope", body = ErrorBody),
        (status = 429, description = "The tenant is busy", body = ErrorBody),
        (status = 503, description = "The tenant database is unavailable", body = ErrorBody)))]
pub async fn create(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<CreateParams>,
    ApiJson(body): ApiJson<CreateRecipient>,
) -> Result<Response, ApiError> {
    let scope = tenant.scope()?;
    let landing = crate::data::inner::landing_list(scope.as_ref(), params.list)?;
    personal_write(&tenant, "email")?;
    let new = NewRecipient {
        email: Email::parse(&body.email)?,
        first_name: text("first_name", body.first_name.as_deref(), NAME_MAX)?,
        last_name: text("last_name", body.last_name.as_deref(), NAME_MAX)?,
        gender: text("gender", body.gender.as_deref(), GENDER_MAX)?,
        custom: Vec::new(),
    };
    let db = tenant.db().await?;
    // The list first: a client's own statements commit as they run, so a list that does not exist must refuse the
    // request before the recipient is written.
    if let Some(list) = landing {
        crate::data::lists::get(db.client(), list)
            .await
            .map_err(|e| match e {
                DataError::NotFound => {
                    DataError::OutsideScope(format!("mailing list {list} does not exist"))
                }
                other => other,
            })?;
    }
    let mut new = new;
    if !body.fields.is_empty() {
        let schema = Schema::load(&*db).await?;
        new.custom = recipients::custom_values(&schema, &body.fields)?;
    }
    let mut recipient = recipients::create(db.client(), &new).await?;
    // Bound to the list named or, for an inner client, to its scope's first list (or it joins by the rule):
    // in the same transaction, so an inner client's recipient is never left outside its slice.
    match (landing, &scope, tenant.client().inner_no) {
        (Some(list), _, _) => {
            crate::data::lists::bind(
                db.client(),
                list,
                recipient.id,
                crate::data::lists::BindingStatus::Active,
            )
            .await?;
        }
        (None, Some(scope), Some(inner_no)) => {
            crate::data::inner::join_by_rule(db.client(), inner_no, scope, recipient.id).await?;
        }
        _ => {}
    }
    shown(&tenant, &*db, &mut recipient).await?;
    Ok(super::created(
        &format!("/v1/clients/{}/recipients/{}", tenant.slug(), recipient.id),
        &recipient,
    ))
}

/// List recipients by id, with equality filters.
#[utoipa::path(get, path = "/v1/clients/{slug}/recipients", tag = "recipients",
    params(("slug" = String, Path, description = "The client's slug"), ListParams),
    responses(
        (status = 200, description = "A page of recipients", body = Page<Recipient>),
        (status = 400, description = "Invalid filter, limit or cursor", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "The client is not active", body = ErrorBody)))]
pub async fn list(
    tenant: Tenant,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Recipient>>, ApiError> {
    let limit = cursor::limit_text(params.limit.as_deref())?;
    let after_id = cursor_id(params.cursor.as_deref())?;
    let db = tenant.read_db().await?;
    let privacy = tenant.privacy().await?;
    let filter = if params.filters.is_empty() {
        None
    } else {
        let schema = schema_for(&*db, params.filters.keys()).await?;
        privacy.check_fields(&schema, params.filters.keys())?;
        let filters: Vec<(String, String)> = params.filters.into_iter().collect();
        Some(rules::equalities(&filters, &schema).map_err(DataError::Field)?)
    };
    let mut items = recipients::list(db.client(), filter, after_id, limit + 1).await?;
    recipients::protect(&*db, &privacy, None, &mut items).await?;
    Ok(Json(Page::from_rows(items, limit, |r| r.id.to_string())))
}

/// One recipient.
#[utoipa::path(get, path = "/v1/clients/{slug}/recipients/{id}", tag = "recipients",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "Recipient id")),
    responses(
        (status = 200, description = "The recipient", body = Recipient),
        (status = 404, description = "No such client or recipient", body = ErrorBody)))]
pub async fn get(tenant: Tenant, RowId(id): RowId) -> Result<Json<Recipient>, ApiError> {
    let db = tenant.read_db().await?;
    let mut recipient = recipients::get(&*db, id).await?;
    shown(&tenant, &*db, &mut recipient).await?;
    Ok(Json(recipient))
}

/// Change a recipient: absent fields stay, `null` clears a name or gender.
#[utoipa::path(patch, path = "/v1/clients/{slug}/recipients/{id}", tag = "recipients", request_body = UpdateRecipient,
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "Recipient id")),
    responses(
        (status = 200, description = "The changed recipient", body = Recipient),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such client or recipient", body = ErrorBody),
        (status = 409, description = "E-mail taken, or the client is not active", body = ErrorBody)))]
pub async fn update(
    tenant: Tenant,
    id: Result<RowId, ApiError>,
    ApiJson(body): ApiJson<UpdateRecipient>,
) -> Result<Json<Recipient>, ApiError> {
    let RowId(id) = id?;
    let change =
        |field, value: Option<Option<String>>, max| -> Result<Option<Option<String>>, DataError> {
            value.map(|v| text(field, v.as_deref(), max)).transpose()
        };
    let patch = RecipientPatch {
        email: body.email.as_deref().map(Email::parse).transpose()?,
        first_name: change("first_name", body.first_name, NAME_MAX)?,
        last_name: change("last_name", body.last_name, NAME_MAX)?,
        gender: change("gender", body.gender, GENDER_MAX)?,
        custom: Vec::new(),
    };
    for (field, set) in [
        ("email", patch.email.is_some()),
        ("first_name", patch.first_name.is_some()),
        ("last_name", patch.last_name.is_some()),
    ] {
        if set {
            personal_write(&tenant, field)?;
        }
    }
    let db = tenant.db().await?;
    let mut patch = patch;
    if !body.fields.is_empty() {
        let schema = Schema::load(&*db).await?;
        tenant
            .privacy()
            .await?
            .check_fields(&schema, body.fields.keys())?;
        patch.custom = recipients::custom_values(&schema, &body.fields)?;
    }
    let mut recipient = recipients::update(db.client(), id, &patch).await?;
    shown(&tenant, &*db, &mut recipient).await?;
    Ok(Json(recipient))
}

/// Delete a recipient (and its list bindings).
#[utoipa::path(delete, path = "/v1/clients/{slug}/recipients/{id}", tag = "recipients",
    params(("slug" = String, Path, description = "The client's slug"), ("id" = i64, Path, description = "Recipient id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such client or recipient", body = ErrorBody)))]
pub async fn delete(tenant: Tenant, RowId(id): RowId) -> Result<StatusCode, ApiError> {
    let db = tenant.db().await?;
    recipients::delete(db.client(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// CSV separator: `,` (default), `;`, `tab` or `|`.
    pub delimiter: Option<String>,
    /// Bind every imported recipient (status `active`, unless it is on the list already) to this mailing list.
    /// For an inner client it must be one of its scope's lists (default: the scope's first list; a scope with a
    /// rule only: every record must match the rule).
    #[param(minimum = 1)]
    pub list: Option<i64>,
}

/// The import format from the body's content type (and, for CSV, the `delimiter` parameter).
fn import_format(headers: &HeaderMap, params: &ImportParams) -> Result<Format, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let format = match essence.as_str() {
        "text/csv" => {
            let delimiter = match params.delimiter.as_deref() {
                None | Some(",") => b',',
                Some(";") => b';',
                Some("tab") | Some("\t") => b'\t',
                Some("|") => b'|',
                Some(_) => {
                    return Err(ApiError::invalid_parameter(
                        "delimiter must be \",\", \";\", \"tab\" or \"|\".",
                    ));
                }
            };
            Format::Csv { delimiter }
        }
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Format::Ndjson,
        _ => {
            return Err(ApiError::unsupported_media_type(
                "An import is text/csv (with a header line) or application/x-ndjson (one JSON object per line).",
            ));
        }
    };
    if format == Format::Ndjson && params.delimiter.is_some() {
        return Err(ApiError::invalid_parameter(
            "delimiter applies to CSV imports only.",
        ));
    }
    Ok(format)
}

/// Import recipients from CSV (a header line naming the fields) or NDJSON (one object per line), upserting by
/// e-mail address. All or nothing: a bad record rejects the whole request, naming its line, and nothing is
/// written. Empty cells and absent keys leave stored values alone; a repeated address: the last record wins.
#[utoipa::path(post, path = "/v1/clients/{slug}/recipients/import", tag = "recipients",
    params(("slug" = String, Path, description = "The client's slug"), ImportParams),
    request_body(content = String, content_type = "text/csv",
        description = "CSV with a header line (text/csv), or NDJSON (application/x-ndjson)"),
    responses(
        (status = 200, description = "Imported", body = ImportOutcome),
        (status = 400, description = "A bad record (its line is named); nothing was written", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "The client is not active, or an address exists outside an inner client's slice", body = ErrorBody),
        (status = 413, description = "Larger than server.import_limit_bytes", body = ErrorBody),
        (status = 422, description = "A list or record outside the inner client's scope; nothing was written", body = ErrorBody),
        (status = 415, description = "Neither CSV nor NDJSON", body = ErrorBody),
        (status = 503, description = "The tenant database is unavailable", body = ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(params): ApiQuery<ImportParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportOutcome>, ApiError> {
    personal_write(&tenant, "email")?;
    let format = import_format(&headers, &params)?;
    let limit = state.settings().server.import_limit_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(DataError::Import(ImportError::TooLarge(limit)).into());
    }
    let scope = tenant.scope()?;
    let landing = match (
        crate::data::inner::landing_list(scope.as_ref(), params.list)?,
        scope,
        tenant.client().inner_no,
    ) {
        (Some(list), _, _) => import::Landing::List(list),
        (None, Some(scope), Some(inner_no)) => import::Landing::Rule {
            inner_no,
            rule: scope.rule.unwrap_or(serde_json::Value::Null),
        },
        _ => import::Landing::Nowhere,
    };
    let mut db = tenant.db().await?;
    let schema = Schema::load(&*db).await?;
    let outcome = import::run(
        db.client_mut(),
        &schema,
        format,
        body.into_data_stream(),
        limit,
        &landing,
    )
    .await?;
    tracing::info!(client = %tenant.slug(), records = outcome.records, inserted = outcome.inserted,
        updated = outcome.updated, "recipients imported");
    Ok(Json(outcome))
}
