//! Content between clients (issue #18): `POST /v1/clients/{slug}/templates/{id}/copy` (a local template into
//! other clients as theirs), `GET /v1/clients/{slug}/export` and `POST /v1/clients/{slug}/import-content` (lists,
//! target groups and local templates as one document; recipients move with the recipient import).
//!
//! Access: copying and importing write, so they need full access to the source and to every target (checked for
//! all before anything is written; an invisible target is the 422 `unknown_client` of a cross-client selection).
//! Exporting reads templates and list and group definitions (`templates.read` and `recipients.read`); the
//! document carries no recipient, and values of rule conditions on personal fields are withheld without the
//! private-data right, as `GET .../target-groups` does.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{AuditNote, Caller, ClientScope, denial};
use super::crossclient::visible_client;
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::extract::{ApiJson, TemplateId};
use super::scope::Tenant;
use crate::app::AppState;
use crate::data::content::{self, ContentDocument};
use crate::data::templates;
use crate::domain::rights::{Permission, Principal};
use crate::domain::{Invalid, optional_text, required_text};

/// Most clients one copy names.
const MAX_TARGETS: usize = 100;
/// Most items of one kind in a document.
const MAX_ITEMS: usize = 10_000;
const NAME_MAX: usize = 200;
const DESCRIPTION_MAX: usize = 2000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyInput {
    /// The clients to copy into (slugs, 1-100).
    #[schema(min_items = 1, max_items = 100, value_type = Vec<super::openapi::SlugText>)]
    pub to: Vec<String>,
}

/// One target of a copy: the new template's `id`, or the `error` (e.g. `template_name_taken`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CopyResult {
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CopyReport {
    /// One row per target, in the order named.
    pub results: Vec<CopyResult>,
}

/// A list created by an import, with the id it had in the document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedList {
    pub from: i64,
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedGroup {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedTemplate {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub lists: Vec<ImportedList>,
    pub target_groups: Vec<ImportedGroup>,
    pub templates: Vec<ImportedTemplate>,
}

/// The caller's `permission` on a client it can see (a write permission needs full access there), or the
/// refusal.
fn require(caller: &Principal, client: Uuid, permission: Permission) -> Result<(), ApiError> {
    caller
        .rights
        .authorize(client, permission)
        .map(|_| ())
        .map_err(denial)
}

/// Copy one of the client's own templates into other clients, as their own templates. A target that has an own
/// template of the same name keeps it (`template_name_taken` in its row); the others get the copy. The source
/// itself may be named: its own template always clashes there.
#[utoipa::path(post, path = "/v1/clients/{slug}/templates/{id}/copy", tag = "content", request_body = CopyInput,
    params(("slug" = String, Path, description = "The source client's slug"), ("id" = Uuid, Path, description = "Template id")),
    responses(
        (status = 200, description = "One row per target: the new template's id or the error there", body = CopyReport),
        (status = 400, description = "Invalid list of targets", body = ErrorBody),
        (status = 403, description = "No full access with templates.manage to the source or to a target", body = ErrorBody),
        (status = 404, description = "No such client or template", body = ErrorBody),
        (status = 409, description = "The template is inherited, not the client's own", body = ErrorBody),
        (status = 422, description = "A target client does not exist", body = ErrorBody)))]
pub async fn copy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    tenant: Tenant,
    id: Result<TemplateId, ApiError>,
    ApiJson(body): ApiJson<CopyInput>,
) -> Result<Response, ApiError> {
    let TemplateId(id) = id?;
    if body.to.is_empty() || body.to.len() > MAX_TARGETS {
        return Err(ApiError::invalid_body(format!(
            "to: name 1 to {MAX_TARGETS} clients."
        )));
    }
    // Every target checked before anything is written.
    let mut targets = Vec::with_capacity(body.to.len());
    for slug in &body.to {
        let client = visible_client(&state, &caller.rights, slug).await?;
        require(&caller, client.id, Permission::TemplatesManage)?;
        if !targets
            .iter()
            .any(|t: &ClientScope| t.client.id == client.id)
        {
            let grant = caller.rights.grant(client.id);
            targets.push(ClientScope::new(
                crate::data::Resolved::unrouted(client),
                grant,
                false,
            ));
        }
    }
    let source = {
        let db = tenant.db().await?;
        templates::get(db.client(), id).await?
    };
    if source.origin != "local" {
        return Err(ApiError::inherited_template());
    }
    let content = crate::control::templates::TemplateContent {
        name: source.name,
        subject: source.subject,
        html_body: source.html_body,
        text_body: source.text_body,
    };
    let mut results = Vec::with_capacity(targets.len());
    for target in &targets {
        let copied = async {
            let (_, mut conn) = target.connect(&state).await?;
            let template =
                templates::create_local_unless_taken(conn.client_mut(), &content).await?;
            // An inner client's copy is its own (the column's default names it), inside its transaction.
            conn.end_scoped(true).await?;
            Ok::<_, crate::data::DataError>(template)
        }
        .await;
        let slug = target.client.slug.clone();
        results.push(match copied {
            Ok(template) => {
                tracing::info!(client = %tenant.slug(), to = %slug, template = %template.id, "template copied");
                CopyResult {
                    client: slug,
                    id: Some(template.id),
                    error: None,
                }
            }
            Err(e) => CopyResult {
                client: slug,
                id: None,
                error: Some(ApiError::from(e).detail()),
            },
        });
    }
    let (copied, refused): (Vec<&CopyResult>, Vec<&CopyResult>) =
        results.iter().partition(|r| r.id.is_some());
    let note = AuditNote {
        client: Some((tenant.client().id, tenant.slug().to_owned())),
        detail: Some(serde_json::json!({
            "template": id,
            "copied": copied.iter().map(|r| &r.client).collect::<Vec<_>>(),
            "refused": refused.iter().map(|r| &r.client).collect::<Vec<_>>(),
        })),
    };
    Ok(note.attach(Json(CopyReport { results }).into_response()))
}

/// The client's content as one document: mailing lists (no recipients), target groups and its own templates.
#[utoipa::path(get, path = "/v1/clients/{slug}/export", tag = "content",
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 200, description = "The document (format 1)", body = ContentDocument),
        (status = 403, description = "Needs templates.read and recipients.read", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn export(
    Caller(caller): Caller,
    tenant: Tenant,
) -> Result<Json<ContentDocument>, ApiError> {
    require(&caller, tenant.client().id, Permission::RecipientsRead)?;
    let privacy = tenant.privacy().await?;
    let mut db = tenant.db().await?;
    Ok(Json(content::export(db.client_mut(), &privacy).await?))
}

/// Checks a document before anything is written: the format, sizes, names (unique per kind,
/// case-insensitively), list ids (positive, unique) and each template's content.
fn validate(doc: &ContentDocument) -> Result<(), ApiError> {
    if doc.format != content::FORMAT {
        return Err(ApiError::invalid_body(format!(
            "format: this server reads format {}, not {}.",
            content::FORMAT,
            doc.format
        )));
    }
    for (kind, n) in [
        ("lists", doc.lists.len()),
        ("target_groups", doc.target_groups.len()),
        ("templates", doc.templates.len()),
    ] {
        if n > MAX_ITEMS {
            return Err(ApiError::invalid_body(format!(
                "{kind}: at most {MAX_ITEMS} per document."
            )));
        }
    }
    let unique = |kind: &str, names: &mut dyn Iterator<Item = &String>| {
        let mut seen = HashSet::new();
        for name in names {
            if !seen.insert(name.to_lowercase()) {
                return Err(ApiError::invalid_body(format!(
                    "{kind}: the name {:?} appears twice.",
                    crate::data::schema::truncate(name)
                )));
            }
        }
        Ok(())
    };
    let mut ids = HashSet::new();
    for list in &doc.lists {
        required_text("lists.name", &list.name, NAME_MAX)?;
        optional_text(
            "lists.description",
            list.description.as_deref(),
            DESCRIPTION_MAX,
        )?;
        if list.id < 1 || !ids.insert(list.id) {
            return Err(Invalid {
                field: "lists.id",
                reason: format!("{} is not a positive id of its own", list.id),
            }
            .into());
        }
    }
    unique("lists", &mut doc.lists.iter().map(|l| &l.name))?;
    for group in &doc.target_groups {
        required_text("target_groups.name", &group.name, NAME_MAX)?;
    }
    unique(
        "target_groups",
        &mut doc.target_groups.iter().map(|g| &g.name),
    )?;
    for template in &doc.templates {
        super::templates::content(template.clone())?;
    }
    unique("templates", &mut doc.templates.iter().map(|t| &t.name))?;
    Ok(())
}

/// Import a document from `GET .../export` (of any client): all or nothing. Names the client has already are
/// refused together (409 `name_taken`, listing them by kind); a rule naming a field the client lacks, or a list
/// the document lacks, is 422 `content_does_not_fit`, naming it. Lists named in rules are remapped to the new
/// lists.
#[utoipa::path(post, path = "/v1/clients/{slug}/import-content", tag = "content", request_body = ContentDocument,
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 201, description = "Everything was created", body = ImportReport),
        (status = 400, description = "Not a valid document (format, names, sizes, duplicate names or list ids)", body = ErrorBody),
        (status = 403, description = "Needs full access with templates.manage and recipients.write (and the private-data right for a rule on a personal field)", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Names the client has already; nothing was written", body = ErrorBody),
        (status = 422, description = "A rule that does not fit the client; nothing was written", body = ErrorBody)))]
pub async fn import(
    Caller(caller): Caller,
    tenant: Tenant,
    ApiJson(doc): ApiJson<ContentDocument>,
) -> Result<Response, ApiError> {
    validate(&doc)?;
    require(&caller, tenant.client().id, Permission::RecipientsWrite)?;
    let privacy = tenant.privacy().await?;
    let mut db = tenant.db().await?;
    let imported = content::import(db.client_mut(), &doc, &privacy).await?;
    // As a list created one by one: an inner client's imported lists join its scope (their rows name it already;
    // without this, the next scope change or evaluation would take them out of the slice again).
    for (_, list) in &imported.lists {
        tenant.joined_scope(list.id).await?;
    }
    tracing::info!(
        client = %tenant.slug(),
        lists = imported.lists.len(),
        target_groups = imported.target_groups.len(),
        templates = imported.templates.len(),
        "content imported"
    );
    let report = ImportReport {
        lists: imported
            .lists
            .into_iter()
            .map(|(from, l)| ImportedList {
                from,
                id: l.id,
                name: l.name,
            })
            .collect(),
        target_groups: imported
            .target_groups
            .into_iter()
            .map(|g| ImportedGroup {
                id: g.id,
                name: g.name,
            })
            .collect(),
        templates: imported
            .templates
            .into_iter()
            .map(|t| ImportedTemplate {
                id: t.id,
                name: t.name,
            })
            .collect(),
    };
    let note = AuditNote {
        client: Some((tenant.client().id, tenant.slug().to_owned())),
        detail: Some(serde_json::json!({
            "lists": report.lists.len(),
            "target_groups": report.target_groups.len(),
            "templates": report.templates.len(),
        })),
    };
    Ok(note.attach((axum::http::StatusCode::CREATED, Json(report)).into_response()))
}
