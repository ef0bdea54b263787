//! `/v1/clients`: the client registry and lifecycle. Handlers parse into domain types, call the control plane,
//! and map the result; provisioning and deletion happen in jobs (`GET /v1/operations/{id}`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{AuditNote, Caller, ClientScope};
use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::access::NewClient;
use crate::app::AppState;
use crate::control::clients::{ClientFilter, ClientRecord};
use crate::domain::rights::Rights;
use crate::domain::servers::Zone;
use crate::domain::{ClientName, ClientSlug, ClientStatus};
use crate::tenant::migrate::latest_version;

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub id: Uuid,
    #[schema(example = "acme-de")]
    pub slug: String,
    pub name: String,
    /// The parent's slug; null for the master client, and when the caller has no access to the parent.
    pub parent: Option<String>,
    /// `master`, `sub` or `inner`.
    pub kind: String,
    pub status: ClientStatus,
    /// The database server holding the client's database (once placed).
    pub server: Option<String>,
    pub database: Option<String>,
    /// The latest tenant migration applied to the client's database.
    pub schema_version: i32,
    /// The latest tenant migration this mandant knows; a client below it is behind.
    pub latest_schema_version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// An inner client's scope (`kind: inner` only): the parent's recipients bound to one of `lists` or matching
    /// `rule`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<crate::data::inner::Scope>,
    /// While a live move runs: the server the client's database is moving to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
    /// The operation started by this request (create, delete), to poll at `/v1/operations/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Uuid>,
}

impl ClientView {
    /// The client as `rights` may see it: a parent the caller cannot see is not named.
    pub(super) fn new(client: ClientRecord, operation: Option<Uuid>, rights: &Rights) -> Self {
        let parent_visible = client
            .parent_id
            .is_some_and(|p| rights.grant(p).is_visible());
        Self {
            id: client.id,
            slug: client.slug,
            name: client.name,
            parent: client.parent.filter(|_| parent_visible),
            kind: client.kind,
            status: client.status,
            server: client.server,
            database: client.db_name,
            schema_version: client.schema_version,
            latest_schema_version: latest_version(),
            created_at: client.created_at,
            updated_at: client.updated_at,
            scope: client
                .scope
                .as_ref()
                .and_then(|s| crate::data::inner::Scope::from_stored(s).ok()),
            moving_to: client.moving_to.map(|(_, name)| name),
            operation,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    /// `^[a-z][a-z0-9-]{1,39}$`, unique among live clients.
    #[schema(example = "acme-de", pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub slug: String,
    /// 1-200 characters, not only spaces, no control characters.
    #[schema(
        example = "ACME Deutschland GmbH",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// The parent client's slug (default: the master). Must be active. An inner client's parent is a client with
    /// its own database (required).
    #[schema(pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub parent: Option<String>,
    /// `sub` (default): a client with its own database, provisioned in the background. `inner`: a unit inside
    /// the parent's database (no database of its own, active at once) whose users see only its `scope`.
    pub kind: Option<NewKind>,
    /// An inner client's slice of the parent's recipients: those bound (any status) to one of `lists` or
    /// matching `rule` (a target-group rule); at least one of them. Only with `kind: inner`.
    pub scope: Option<crate::data::inner::Scope>,
    /// Place the client's database only on a server of this zone (see `GET /v1/servers`).
    #[schema(pattern = r"^[a-z][a-z0-9-]{0,39}$")]
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NewKind {
    Sub,
    Inner,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateClient {
    /// 1-200 characters, not only spaces, no control characters.
    #[schema(
        example = "ACME Deutschland GmbH",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: Option<String>,
    /// An inner client's new scope (replaces the old one; only for inner clients).
    pub scope: Option<crate::data::inner::Scope>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only clients in this status (deleted clients are listed only when asked for).
    #[param(value_type = Option<crate::domain::ClientStatus>)]
    pub status: Option<String>,
    /// Only direct sub-clients of this client.
    #[param(pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub parent: Option<String>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(
        pattern = r"^(2[0-9a-e]|[3-6][0-9a-f]|7[0-9a-e]){0,163}2f(3[0-9]|6[1-6]){8}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){12}$"
    )]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Write a `pg_dump -Fc` archive of the client's database before dropping it.
    pub archive: Option<bool>,
}

fn max_attempts(state: &AppState) -> i32 {
    i32::from(state.settings().workers.max_attempts)
}

/// Create a sub-client. Its database is provisioned in the background; poll the returned operation.
#[utoipa::path(post, path = "/v1/clients", tag = "clients", request_body = CreateClient,
    responses(
        (status = 201, description = "An inner client, active at once", body = ClientView,
         headers(("Location" = String, description = "The new client"))),
        (status = 202, description = "Accepted; provisioning", body = ClientView,
         headers(("Location" = String, description = "The new client"))),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 409, description = "Slug taken, the parent is not active, or no database server can take the \
            client (no_server_available, naming why)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Unknown parent, a parent that is inner, or an inner client's kind or scope that does not fit", body = ErrorBody),
        (status = 503, description = "An inner client's parent database is unavailable", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<CreateClient>,
) -> Result<Response, ApiError> {
    let slug = ClientSlug::parse(&body.slug)?;
    let name = ClientName::parse(&body.name)?;
    let zone = body.zone.as_deref().map(Zone::parse).transpose()?;
    let unknown_parent = ApiError::unknown_parent;
    let parent = match &body.parent {
        Some(p) => ClientSlug::parse(p).map_err(|_| unknown_parent())?,
        None => ClientSlug::master(),
    };
    // Creating under a parent needs full access to it; an invisible parent is one that does not exist.
    let parent_client = match state.data().client(&parent).await {
        Ok(client) => client,
        Err(crate::data::DataError::NotFound) => return Err(unknown_parent()),
        Err(e) => return Err(e.into()),
    };
    // Its creator's access to the new client is a change of rights: the access service makes it.
    let new = NewClient {
        slug: &slug,
        name: &name,
        parent: &parent,
        parent_id: parent_client.id,
        max_attempts: max_attempts(&state),
        zone: zone.as_ref(),
    };
    if body.kind == Some(NewKind::Inner) {
        if body.zone.is_some() {
            return Err(ApiError::invalid_client_kind(
                "zone: an inner client lives in its parent's database",
            ));
        }
        return create_inner(
            &state,
            &caller,
            &new,
            &parent_client,
            body.parent.is_some(),
            body.scope,
        )
        .await;
    }
    if body.scope.is_some() {
        return Err(ApiError::invalid_client_kind(
            "scope: only an inner client has a scope",
        ));
    }
    let (client, operation) = state.access().create_client(&caller, &new).await?;
    tracing::info!(client = %slug, %operation, "client created; provisioning");
    let location = format!("/v1/clients/{slug}");
    let note = AuditNote::client(client.id, &client.slug);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(ClientView::new(client, Some(operation), &caller.rights)),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(note.attach(response))
}

/// Creates an inner client: its scope checked against the parent's database (as the parent), registered active,
/// and its memberships applied at once (should that fail, the periodic scope job applies them).
async fn create_inner(
    state: &AppState,
    caller: &crate::domain::rights::Principal,
    new: &NewClient<'_>,
    parent: &ClientRecord,
    parent_named: bool,
    scope: Option<crate::data::inner::Scope>,
) -> Result<Response, ApiError> {
    if !parent_named {
        return Err(ApiError::invalid_client_kind(
            "parent: an inner client needs its parent named",
        ));
    }
    let mut scope = scope
        .ok_or_else(|| ApiError::invalid_client_kind("scope: an inner client needs a scope"))?;
    scope.validate_shape().map_err(scope_error)?;
    // Rights first: a caller who may not create under this parent learns nothing about its lists.
    if let Err(denied) = caller.rights.authorize(
        new.parent_id,
        crate::domain::rights::Permission::ClientsCreate,
    ) {
        return Err(match denied {
            crate::domain::rights::Denied::Invisible => ApiError::unknown_parent(),
            other => super::auth::denial(other),
        });
    }
    if parent.is_inner() {
        return Err(crate::control::ControlError::ParentIsInner.into());
    }
    // Fresh from the control plane (the route cache's copy may predate a database's preparation).
    let parent = state.control().client_by_id(parent.id).await?;
    if parent.status == ClientStatus::Active && !parent.inner_ready {
        state
            .control()
            .request_prepare_inner(parent.id, max_attempts(state))
            .await?;
        return Err(crate::control::ControlError::ParentNotReady.into());
    }
    let (_, db) = state.data().connect(new.parent).await?;
    scope.check(db.client()).await.map_err(scope_error)?;
    drop(db);
    let client = state
        .access()
        .create_inner_client(caller, new, &scope.to_json())
        .await?;
    apply_scope(state, &client).await;
    tracing::info!(client = %client.slug, parent = %new.parent, "inner client created");
    let location = format!("/v1/clients/{}", client.slug);
    let note = AuditNote::client(client.id, &client.slug);
    let mut response = (
        StatusCode::CREATED,
        Json(ClientView::new(client, None, &caller.rights)),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(note.attach(response))
}

/// A scope that does not fit the parent's database is 422 `invalid_scope`; anything else as it comes.
fn scope_error(e: crate::data::DataError) -> ApiError {
    match e {
        crate::data::DataError::Rule(message) => ApiError::invalid_scope(message),
        other => other.into(),
    }
}

/// Applies an inner client's scope in its parent's database now; a failure is logged and left to the periodic
/// scope job (the control plane holds the scope).
async fn apply_scope(state: &AppState, client: &ClientRecord) {
    let (Some(parent), Some(inner_no)) = (client.parent.as_deref(), client.inner_no) else {
        return;
    };
    let applied = async {
        let parent = ClientSlug::parse(parent)?;
        let (_, mut db) = state.data().connect(&parent).await?;
        // The scope as stored when this run holds the inner client's lock (a newer PATCH may have come meanwhile).
        crate::data::inner::apply(db.client_mut(), inner_no, async || {
            let now = state.control().client_by_id(client.id).await?;
            now.scope
                .filter(|_| now.status != ClientStatus::Deleted)
                .map(|stored| crate::data::inner::Scope::from_stored(&stored))
                .transpose()
        })
        .await
    }
    .await;
    match applied {
        Ok(applied) => tracing::info!(client = %client.slug, ?applied, "scope applied"),
        Err(e) => {
            tracing::warn!(client = %client.slug, error = %e, "could not apply the scope now; the scope job will")
        }
    }
}

/// List clients, ordered by slug.
#[utoipa::path(get, path = "/v1/clients", tag = "clients", params(ListParams),
    responses(
        (status = 200, description = "A page of clients", body = Page<ClientView>),
        (status = 400, description = "Invalid filter, limit or cursor", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<ClientView>>, ApiError> {
    let (clients, limit) = visible_page(&state, &caller.rights, &params).await?;
    let views = clients
        .into_iter()
        .map(|c| ClientView::new(c, None, &caller.rights))
        .collect();
    Ok(Json(Page::from_rows(views, limit, page_position)))
}

/// The keyset position of a client in a listing.
pub(super) fn page_position(c: &ClientView) -> String {
    format!("{}/{}", c.slug, c.id)
}

/// One page of the clients `rights` can see, by the listing's filters (one more than the limit, for
/// [`Page::from_rows`]), and the limit.
pub(super) async fn visible_page(
    state: &AppState,
    rights: &Rights,
    params: &ListParams,
) -> Result<(Vec<ClientRecord>, i64), ApiError> {
    let limit = cursor::limit(params.limit)?;
    let status = params
        .status
        .as_deref()
        .map(ClientStatus::parse)
        .transpose()?;
    let parent = params
        .parent
        .as_deref()
        .map(ClientSlug::parse)
        .transpose()?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    // A parent the caller cannot see filters like one that does not exist (its children are not confirmed).
    if let Some(parent) = &parent {
        let visible = match state.data().client(parent).await {
            Ok(client) => rights.grant(client.id).is_visible(),
            Err(crate::data::DataError::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
        if !visible {
            return Ok((Vec::new(), limit));
        }
    }
    let clients = state
        .control()
        .list_clients(&ClientFilter {
            status,
            parent,
            after,
            visible: rights.visible_clients(),
            limit: limit + 1,
        })
        .await?;
    Ok((clients, limit))
}

/// One client.
#[utoipa::path(get, path = "/v1/clients/{slug}", tag = "clients",
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 200, description = "The client", body = ClientView),
        (status = 404, description = "No such client", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    scope: ClientScope,
) -> Result<Json<ClientView>, ApiError> {
    // By the id the access check found (a slug could have been freed and reused since).
    let client = state.control().client_by_id(scope.client.id).await?;
    if client.status == ClientStatus::Deleted {
        return Err(ApiError::not_found());
    }
    Ok(Json(ClientView::new(client, None, &caller.rights)))
}

/// Rename a client (the slug never changes).
#[utoipa::path(patch, path = "/v1/clients/{slug}", tag = "clients", request_body = UpdateClient,
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 200, description = "The renamed client (or an inner client with its new scope)", body = ClientView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "An inner client's parent is not active", body = ErrorBody),
        (status = 422, description = "Nothing to change, a scope for a client that is not inner, or a scope that does not fit the parent's database", body = ErrorBody),
        (status = 503, description = "The parent's database is unavailable", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    scope: ClientScope,
    ApiJson(body): ApiJson<UpdateClient>,
) -> Result<Json<ClientView>, ApiError> {
    let name = body.name.as_deref().map(ClientName::parse).transpose()?;
    if name.is_none() && body.scope.is_none() {
        return Err(ApiError::invalid_client_kind("name a new name or scope"));
    }
    let mut new_scope = body.scope;
    if let Some(new_scope) = &mut new_scope {
        if !scope.client.is_inner() {
            return Err(ApiError::invalid_client_kind(
                "scope: only an inner client has a scope",
            ));
        }
        new_scope.validate_shape().map_err(scope_error)?;
        let parent = scope.client.parent.as_deref().unwrap_or_default();
        let parent = ClientSlug::parse(parent).map_err(|_| ApiError::not_found())?;
        let (_, db) = state.data().connect(&parent).await?;
        new_scope.check(db.client()).await.map_err(scope_error)?;
    }
    let mut client = match &name {
        Some(name) => state.control().rename_client(scope.client.id, name).await?,
        None => state.control().client_by_id(scope.client.id).await?,
    };
    if let Some(new_scope) = &new_scope {
        client = state
            .control()
            .set_inner_scope(scope.client.id, &new_scope.to_json())
            .await?;
        state.data().invalidate(&client.slug);
        apply_scope(&state, &client).await;
    }
    Ok(Json(ClientView::new(client, None, &caller.rights)))
}

/// Suspend an active client: its data plane is refused and its database role may no longer log in.
#[utoipa::path(post, path = "/v1/clients/{slug}/suspend", tag = "clients",
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 200, description = "Suspended", body = ClientView),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Not active, or the master", body = ErrorBody)))]
pub async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    scope: ClientScope,
) -> Result<Json<ClientView>, ApiError> {
    set_suspended(state, caller, scope, true).await
}

/// Resume a suspended client.
#[utoipa::path(post, path = "/v1/clients/{slug}/resume", tag = "clients",
    params(("slug" = String, Path, description = "The client's slug")),
    responses(
        (status = 200, description = "Active again", body = ClientView),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Not suspended", body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    scope: ClientScope,
) -> Result<Json<ClientView>, ApiError> {
    set_suspended(state, caller, scope, false).await
}

/// Acts on the client by the id the access check found (a slug could have been freed and reused since).
async fn set_suspended(
    state: AppState,
    Caller(caller): Caller,
    scope: ClientScope,
    suspend: bool,
) -> Result<Json<ClientView>, ApiError> {
    // Resuming: the role may log in before the client is reported active (no request can see an active client
    // whose role is refused). Suspending: the role's sessions end before the call answers, in every process.
    if !suspend && scope.client.status == ClientStatus::Suspended {
        applied(
            &scope.client,
            state.provisioner().allow_login(&scope.client).await,
        );
    }
    let client = state
        .control()
        .set_suspended(scope.client.id, suspend, max_attempts(&state))
        .await?;
    // Applied after the commit in both directions too: a `sync_access` job of an earlier change that read the
    // old status may have written its login meanwhile; this one reads the new status, so it is the last word.
    applied(&client, state.provisioner().apply_access(client.id).await);
    state.data().status_changed(&client);
    tracing::info!(client = %client.slug, status = client.status.as_str(), "client status changed");
    Ok(Json(ClientView::new(client, None, &caller.rights)))
}

/// Logs a role change a call could not make now: the queued `sync_access` job makes it (with retries), and
/// PostgreSQL keeps the old state meanwhile.
fn applied(client: &ClientRecord, result: Result<(), crate::provisioning::ProvisionError>) {
    if let Err(e) = result {
        tracing::warn!(client = %client.slug, error = %crate::telemetry::error_chain(&e), "could not apply the status to the tenant role now");
    }
}

/// Delete a client: its database (optionally archived first) and role are dropped in the background; the
/// client stays as a `deleted` tombstone and its slug becomes free.
#[utoipa::path(delete, path = "/v1/clients/{slug}", tag = "clients", params(
        ("slug" = String, Path, description = "The client's slug"), DeleteParams),
    responses(
        (status = 202, description = "Accepted; deleting", body = ClientView),
        (status = 404, description = "No such client", body = ErrorBody),
        (status = 409, description = "Already being deleted, the master, or has sub-clients", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    scope: ClientScope,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> Result<Response, ApiError> {
    let archive = params.archive.unwrap_or(false);
    let (client, operation) = state
        .control()
        .request_delete(scope.client.id, archive, max_attempts(&state))
        .await?;
    // The role's sessions end before the call answers (the deletion job drops the role anyway).
    applied(&client, state.provisioner().apply_access(client.id).await);
    state.data().status_changed(&client);
    tracing::info!(client = %client.slug, %operation, archive, "client deletion requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(ClientView::new(client, Some(operation), &caller.rights)),
    )
        .into_response())
}

fn decode_cursor(cursor: &str) -> Result<(String, Uuid), ApiError> {
    let position = cursor::decode(cursor)?;
    let bad = ApiError::invalid_cursor;
    let (slug, id) = position.split_once('/').ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((slug.to_owned(), id))
}
