//! `/v1/users`, `/v1/me`: users, their tokens and their access to clients.
//!
//! A user is visible to callers who can see its home client (and to itself). Managing a user (changing,
//! disabling, deleting it, its tokens and access) needs `users.manage`, full access to its home client, and that
//! the caller [dominates](crate::domain::rights::Rights::dominates) it: nobody can act for someone who holds more. A user
//! manages its own tokens; nobody edits its own roles, access or status.
//!
//! Handlers parse input into domain values, call the access service ([`crate::access::RightsService`], which
//! checks, writes and drops the principal cache in one call) and map the result to views and audit notes.
//! Never: a rights check or a write of users, access or tokens of its own.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{AuditNote, Caller};
use super::cursor::{self, Page};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, path_slug};
use crate::app::AppState;
use crate::control::access::{AccessRow, NewUser, TokenMeta, UserChange, UserFilter, UserRecord};
use crate::control::clients::ClientRecord;
use crate::domain::rights::{Grant, Level, Principal, Username};
use crate::domain::{ClientSlug, optional_text};

/// Longest display name and token name.
const NAME_MAX: usize = 200;
const TOKEN_NAME_MAX: usize = 100;
/// Longest token lifetime that can be asked for.
const MAX_TOKEN_DAYS: i64 = 3650;

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessView {
    /// The client's slug.
    pub client: String,
    pub level: Level,
    pub private_data: bool,
}

impl From<&AccessRow> for AccessView {
    fn from(a: &AccessRow) -> Self {
        Self {
            client: a.client.clone(),
            level: Level::from_stored(&a.level),
            private_data: a.private_data,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    #[schema(example = "anna")]
    pub username: String,
    pub display_name: String,
    /// The slug of the client the user belongs to.
    pub home_client: String,
    /// `active` or `disabled` (a disabled user's tokens are refused).
    pub status: String,
    pub roles: Vec<String>,
    /// The user's access to the clients the caller can see (not in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Vec<AccessView>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserView {
    fn new(user: UserRecord, access: Option<Vec<AccessView>>) -> Self {
        Self {
            username: user.username,
            display_name: user.display_name,
            home_client: user.home_client,
            status: user.status,
            roles: user.roles,
            access,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    #[serde(flatten)]
    pub user: UserView,
    /// Everything the caller's roles allow (on clients where it has access).
    pub permissions: Vec<&'static str>,
    /// Whether the caller has the master-admin role (everything on every client).
    pub master_admin: bool,
    /// The token this request used.
    pub token: TokenMeta,
}

/// A new token: the only response that ever contains it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub meta: TokenMeta,
    /// The bearer token. Shown once; only its hash is stored.
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// `^[a-z][a-z0-9._-]{1,62}$`, unique across all clients.
    #[schema(example = "anna", pattern = r"^[a-z][a-z0-9._-]{1,62}$")]
    pub username: String,
    /// At most 200 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub display_name: String,
    /// The client the user belongs to (default: the caller's). The caller needs full access to it.
    #[schema(pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub home_client: Option<String>,
    /// Role names; the caller must hold every permission they give.
    #[serde(default)]
    #[schema(value_type = Vec<super::openapi::RoleNameText>)]
    pub roles: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// At most 200 characters, no control characters.
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub display_name: Option<String>,
    /// Disabling revokes the user's live tokens at once; enabling again does not revive them (mint new ones).
    pub disabled: Option<bool>,
    /// Replaces the user's roles.
    #[schema(value_type = Option<Vec<super::openapi::RoleNameText>>)]
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label, 1-100 characters (e.g. where it is used).
    #[schema(
        example = "newsletter-sync",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// Lifetime in days (1-3650); absent = until revoked.
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAccess {
    /// `full`, `read` or `none` (none removes the access: the client becomes invisible to the user).
    pub level: Level,
    /// Whether the user may see personal data (e-mail, names, fields marked personal) on this client.
    #[serde(default)]
    pub private_data: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only users of this home client.
    #[param(pattern = r"^[a-z][a-z0-9-]{1,39}$")]
    pub client: Option<String>,
    /// Page size, 1-1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(2[0-9a-f]|[3-6][0-9a-f]|7[0-9a-e]){1,200}$")]
    pub cursor: Option<String>,
}

/// A user the caller can see (404 otherwise, as for one that does not exist).
async fn visible_user(
    state: &AppState,
    caller: &Principal,
    username: &str,
) -> Result<UserRecord, ApiError> {
    let name = Username::parse(username).map_err(|_| ApiError::not_found())?;
    Ok(state.access().user(caller, &name).await?)
}

/// The user's access, restricted to clients the caller can see.
async fn access_view(
    state: &AppState,
    caller: &Principal,
    user: &UserRecord,
) -> Result<Vec<AccessView>, ApiError> {
    let rows = state.access().access_of(caller, user).await?;
    Ok(rows.iter().map(AccessView::from).collect())
}

/// A client named in a body or path, as the caller may see it (invisible = not found).
async fn visible_client(
    state: &AppState,
    caller: &Principal,
    slug: &ClientSlug,
) -> Result<Arc<ClientRecord>, ApiError> {
    let client = super::auth::resolve(state, slug).await?;
    if caller.rights.grant(client.id).is_visible() {
        Ok(client)
    } else {
        Err(ApiError::not_found())
    }
}

fn home_note(user: &UserRecord) -> AuditNote {
    AuditNote::client(user.home_client_id, &user.home_client)
}

/// The caller: its user, roles, permissions, access and the token in use.
#[utoipa::path(get, path = "/v1/me", tag = "users",
    responses((status = 200, description = "The caller", body = MeView),
        (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn me(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<MeView>, ApiError> {
    let user = state.control().user_by_name(&caller.username).await?;
    let access = access_view(&state, &caller, &user).await?;
    let token = state
        .control()
        .tokens(caller.user_id)
        .await?
        .into_iter()
        .find(|t| t.id == caller.token_id)
        .ok_or_else(ApiError::not_found)?;
    let rights = &caller.rights;
    let permissions = if rights.master_admin {
        crate::domain::rights::Permissions::all().names()
    } else {
        rights.permissions.names()
    };
    Ok(Json(MeView {
        user: UserView::new(user, Some(access)),
        permissions,
        master_admin: rights.master_admin,
        token,
    }))
}

/// Users whose home client the caller can see, by username.
#[utoipa::path(get, path = "/v1/users", tag = "users", params(ListParams),
    responses((status = 200, description = "A page of users", body = Page<UserView>),
        (status = 400, description = "Invalid filter, limit or cursor", body = ErrorBody),
        (status = 403, description = "No users.read", body = ErrorBody),
        (status = 404, description = "No such client (or not visible)", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<UserView>>, ApiError> {
    let limit = cursor::limit(params.limit)?;
    let after = params.cursor.as_deref().map(cursor::decode).transpose()?;
    let home_clients = match &params.client {
        Some(slug) => {
            let slug = ClientSlug::parse(slug)?;
            Some(vec![visible_client(&state, &caller, &slug).await?.id])
        }
        None => caller.rights.visible_clients(),
    };
    let users = state
        .control()
        .list_users(&UserFilter {
            home_clients,
            after,
            limit: limit + 1,
        })
        .await?;
    let views = users.into_iter().map(|u| UserView::new(u, None)).collect();
    Ok(Json(Page::from_rows(views, limit, |u| u.username.clone())))
}

/// Create a user. It can do nothing until it has a token, roles and access to clients.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, description = "Created", body = UserView,
            headers(("Location" = String, description = "The new user"))),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 403, description = "No users.manage, no full access to the home client, or a role with more \
            than the caller's permissions", body = ErrorBody),
        (status = 409, description = "Username taken", body = ErrorBody),
        (status = 422, description = "Unknown home client or role", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    let username = Username::parse(&body.username)?;
    let display_name =
        optional_text("display_name", Some(&body.display_name), NAME_MAX)?.unwrap_or_default();
    let home = match &body.home_client {
        Some(slug) => {
            let unknown = ApiError::unknown_home_client;
            let slug = ClientSlug::parse(slug).map_err(|_| unknown())?;
            visible_client(&state, &caller, &slug).await.map_err(|e| {
                if e.status() == StatusCode::NOT_FOUND {
                    unknown()
                } else {
                    e
                }
            })?
        }
        None => {
            let home = state.control().client_by_id(caller.home_client).await?;
            if home.status == crate::domain::ClientStatus::Deleted {
                return Err(ApiError::home_client_deleted());
            }
            Arc::new(home)
        }
    };
    let user = state
        .access()
        .create_user(
            &caller,
            &NewUser {
                username: username.as_str(),
                display_name: &display_name,
                home_client: home.id,
                roles: &body.roles,
            },
        )
        .await?;
    tracing::info!(user = %username, client = %home.slug, "user created");
    let note = home_note(&user);
    let location = format!("/v1/users/{username}");
    Ok(note.attach(super::created(
        &location,
        &UserView::new(user, Some(Vec::new())),
    )))
}

/// One user, with its access to the clients the caller can see.
#[utoipa::path(get, path = "/v1/users/{username}", tag = "users",
    params(("username" = String, Path, description = "The username")),
    responses((status = 200, description = "The user", body = UserView),
        (status = 404, description = "No such user (or not visible)", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(username): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = visible_user(&state, &caller, &username).await?;
    let access = access_view(&state, &caller, &user).await?;
    Ok(Json(UserView::new(user, Some(access))))
}

/// Change a user's display name, status (`disabled`) or roles.
#[utoipa::path(patch, path = "/v1/users/{username}", tag = "users", request_body = UpdateUser,
    params(("username" = String, Path, description = "The username")),
    responses((status = 200, description = "The changed user", body = UserView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 403, description = "Not permitted, escalation, or one's own roles or status", body = ErrorBody),
        (status = 404, description = "No such user (or not visible)", body = ErrorBody),
        (status = 422, description = "Unknown role", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(username): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Response, ApiError> {
    let user = visible_user(&state, &caller, &username).await?;
    let display_name = body
        .display_name
        .as_deref()
        .map(|n| optional_text("display_name", Some(n), NAME_MAX).map(Option::unwrap_or_default))
        .transpose()?;
    let change = UserChange {
        display_name,
        disabled: body.disabled,
        roles: body.roles,
    };
    let updated = state.access().update_user(&caller, &user, &change).await?;
    let changed = updated.user;
    tracing::info!(user = %changed.username, status = %changed.status, revoked_tokens = updated.revoked, "user changed");
    let access = access_view(&state, &caller, &changed).await?;
    let mut note = home_note(&changed);
    if change.disabled == Some(true) {
        note.detail = Some(serde_json::json!({ "revoked_tokens": updated.revoked }));
    }
    Ok(note.attach(Json(UserView::new(changed, Some(access))).into_response()))
}

/// Delete a user: its tokens stop working at once; its audit entries stay.
#[utoipa::path(delete, path = "/v1/users/{username}", tag = "users",
    params(("username" = String, Path, description = "The username")),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "Not permitted, escalation, or oneself", body = ErrorBody),
        (status = 404, description = "No such user (or not visible)", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(username): Path<String>,
) -> Result<Response, ApiError> {
    let user = visible_user(&state, &caller, &username).await?;
    state.access().delete_user(&caller, &user).await?;
    tracing::info!(user = %user.username, "user deleted");
    Ok(home_note(&user).attach(StatusCode::NO_CONTENT.into_response()))
}

/// A user's tokens (metadata only; never the tokens).
#[utoipa::path(get, path = "/v1/users/{username}/tokens", tag = "users",
    params(("username" = String, Path, description = "The username")),
    responses((status = 200, description = "The tokens, newest first", body = Vec<TokenMeta>),
        (status = 403, description = "Someone else's, and not permitted", body = ErrorBody),
        (status = 404, description = "No such user (or not visible)", body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(username): Path<String>,
) -> Result<Json<Vec<TokenMeta>>, ApiError> {
    let user = visible_user(&state, &caller, &username).await?;
    let tokens = state.access().tokens(&caller, &user).await?;
    Ok(Json(tokens))
}

/// Create a token: 256 random bits, returned once in this response; only its hash is stored.
#[utoipa::path(post, path = "/v1/users/{username}/tokens", tag = "users", request_body = CreateToken,
    params(("username" = String, Path, description = "The username")),
    responses((status = 201, description = "The token, shown only now", body = NewToken),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 403, description = "Someone else's, and not permitted", body = ErrorBody),
        (status = 404, description = "No such user (or not visible)", body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(username): Path<String>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    let name = crate::domain::required_text("name", &body.name, TOKEN_NAME_MAX)?;
    let expires_at = match body.expires_in_days {
        None => None,
        Some(days) if (1..=MAX_TOKEN_DAYS).contains(&days) => {
            Some(Utc::now() + chrono::Duration::days(days))
        }
        Some(_) => {
            return Err(crate::domain::Invalid {
                field: "expires_in_days",
                reason: format!("must be between 1 and {MAX_TOKEN_DAYS}"),
            }
            .into());
        }
    };
    let user = visible_user(&state, &caller, &username).await?;
    let minted = state
        .access()
        .create_token(&caller, &user, &name, expires_at)
        .await?;
    tracing::info!(user = %user.username, token = %minted.meta.id, "token created");
    let location = format!("/v1/users/{}/tokens/{}", user.username, minted.meta.id);
    let view = NewToken {
        meta: minted.meta,
        token: minted.token,
    };
    Ok(home_note(&user).attach(super::created(&location, &view)))
}

/// Revoke a token: refused at once by every process.
#[utoipa::path(delete, path = "/v1/users/{username}/tokens/{id}", tag = "users",
    params(("username" = String, Path, description = "The username"), ("id" = Uuid, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"),
        (status = 403, description = "Someone else's, and not permitted", body = ErrorBody),
        (status = 404, description = "No such user or token", body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((username, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found())?;
    let user = visible_user(&state, &caller, &username).await?;
    state.access().revoke_token(&caller, &user, id).await?;
    tracing::info!(user = %user.username, token = %id, "token revoked");
    Ok(home_note(&user).attach(StatusCode::NO_CONTENT.into_response()))
}

/// Give a user access to a client (`none` removes it). The caller needs full access to the client, the
/// private-data right to pass it on, and must be able to manage the user; nobody changes their own access.
#[utoipa::path(put, path = "/v1/users/{username}/access/{slug}", tag = "users", request_body = SetAccess,
    params(("username" = String, Path, description = "The username"), ("slug" = String, Path, description = "The client's slug")),
    responses((status = 200, description = "The access now", body = AccessView),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 403, description = "Not permitted, escalation, or one's own access", body = ErrorBody),
        (status = 404, description = "No such user or client (or not visible)", body = ErrorBody)))]
pub async fn set_access(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((username, slug)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetAccess>,
) -> Result<Response, ApiError> {
    let grant = Grant {
        level: body.level,
        private_data: body.private_data && body.level != Level::None,
    };
    change_access(&state, &caller, &username, &slug, grant).await
}

/// Remove a user's access to a client (it becomes invisible to the user).
#[utoipa::path(delete, path = "/v1/users/{username}/access/{slug}", tag = "users",
    params(("username" = String, Path, description = "The username"), ("slug" = String, Path, description = "The client's slug")),
    responses((status = 200, description = "The access now (none)", body = AccessView),
        (status = 403, description = "Not permitted, escalation, or one's own access", body = ErrorBody),
        (status = 404, description = "No such user or client (or not visible)", body = ErrorBody)))]
pub async fn remove_access(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((username, slug)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    change_access(&state, &caller, &username, &slug, Grant::NONE).await
}

async fn change_access(
    state: &AppState,
    caller: &Principal,
    username: &str,
    slug: &str,
    grant: Grant,
) -> Result<Response, ApiError> {
    let user = visible_user(state, caller, username).await?;
    let client = super::auth::resolve(state, &path_slug(slug)?).await?;
    state
        .access()
        .set_access(caller, &user, &client, grant)
        .await?;
    tracing::info!(user = %user.username, client = %client.slug, level = grant.level.as_str(),
        private_data = grant.private_data, "access changed");
    let view = AccessView {
        client: client.slug.clone(),
        level: grant.level,
        private_data: grant.private_data,
    };
    let note = AuditNote {
        client: Some((client.id, client.slug.clone())),
        detail: Some(serde_json::json!({
            "user": user.username, "level": grant.level, "private_data": grant.private_data
        })),
    };
    Ok(note.attach(Json(view).into_response()))
}
