//! `/v1/servers`: the database servers clients are placed on (issue #20). Registration with its checks is
//! `dbservers::ServerRegistry`'s; these handlers parse, call it or the control plane, and map to views.
//!
//! Never: a server's password in a response (the stored URL has none; the view shows it as stored).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::app::AppState;
use crate::control::servers::{ServerChange, ServerUsage};
use crate::db::{PgTarget, Secret};
use crate::dbservers::{Registration, check_range};
use crate::domain::Invalid;
use crate::domain::servers::{
    MAX_BUDGET, MAX_BYTES, MAX_DATABASES, ServerName, ServerPolicy, Zone,
};

/// A database server with its usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    #[schema(example = "eu-1")]
    pub name: String,
    /// The admin connection URL without its password (`null` for `local`, the control plane's own cluster).
    pub url: Option<String>,
    /// The TLS mode connections to it use (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub sslmode: String,
    /// `active` takes new clients; `paused` keeps its clients and takes none; `draining`: a drain moves its
    /// clients off (set by `POST /v1/servers/{name}/drain`, not by PATCH).
    pub policy: ServerPolicy,
    pub zone: Option<String>,
    pub max_databases: i32,
    /// Declared capacity in bytes (`null`: no byte limit).
    pub max_bytes: Option<i64>,
    /// Live clients placed on it.
    pub databases: i64,
    /// Their total size as last measured by the statistics worker.
    pub bytes: i64,
    /// Tenant connections this process may hold on the server (its own `budget`, or `routing.budget_per_server`).
    pub budget: i64,
    /// Whether the budget is the server's own (else the configured default).
    pub budget_own: bool,
    /// Tenant connections this process holds on it now.
    pub budget_in_use: i64,
    /// `server_version_num` seen at registration (`null` for `local`).
    pub server_version: Option<i32>,
    /// `wal_level` seen at registration (`null` for `local`).
    pub wal_level: Option<String>,
    /// Whether live moves off this server will be possible (`wal_level = logical`); `null` when not checked.
    pub live_moves_possible: Option<bool>,
    /// The tenant migration of its template database.
    pub template_version: i32,
}

impl ServerView {
    fn new(state: &AppState, usage: ServerUsage) -> Self {
        let s = usage.server;
        let default_budget =
            i64::try_from(state.settings().routing.budget_per_server).unwrap_or(i64::MAX);
        let in_use = state
            .pools()
            .budget(s.id)
            .map_or(0, |b| i64::try_from(b.in_use).unwrap_or(i64::MAX));
        let target = s
            .admin_url
            .as_deref()
            .and_then(|u| PgTarget::parse_url(u).ok());
        let sslmode = match &target {
            Some(t) => t.tls().mode().as_str(),
            None => state.targets().control_tls_mode().as_str(),
        };
        Self {
            url: target.as_ref().map(PgTarget::redacted),
            sslmode: sslmode.to_owned(),
            policy: s.policy(),
            zone: s.zone.clone(),
            max_databases: s.max_databases,
            max_bytes: s.max_bytes,
            databases: usage.databases,
            bytes: usage.bytes,
            budget: s.budget.map_or(default_budget, i64::from),
            budget_own: s.budget.is_some(),
            budget_in_use: in_use,
            live_moves_possible: s.wal_level.as_deref().map(|w| w == "logical"),
            server_version: s.server_version,
            wal_level: s.wal_level,
            template_version: s.template_version,
            name: s.name,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServer {
    /// `^[a-z][a-z0-9-]{0,39}$`, unique.
    #[schema(example = "eu-1", pattern = r"^[a-z][a-z0-9-]{0,39}$")]
    pub name: String,
    /// A PostgreSQL connection URL of an admin role (superuser, or CREATEDB and CREATEROLE), e.g.
    /// `postgres://admin:secret@db1.example:5432/postgres?sslmode=verify-full&sslrootcert=/etc/mandant/ca.pem`.
    /// Its password is stored encrypted and never shown. Without `sslmode`, a host that is not loopback gets
    /// `require`.
    #[schema(
        example = "postgres://admin:secret@db1.example:5432/postgres?sslmode=require",
        min_length = 12,
        max_length = 2048,
        pattern = r"^postgres(ql)?://[\u0021-\u007E]+$"
    )]
    pub url: String,
    /// Databases it may hold, 1-100000 (default 2000).
    #[schema(minimum = 1, maximum = 100000)]
    pub max_databases: Option<i64>,
    /// Bytes its databases may take together, at least 1 MiB (default: no byte limit).
    #[schema(minimum = 1048576)]
    pub max_bytes: Option<i64>,
    /// Tenant connections per mandant process, 1-10000 (default `routing.budget_per_server`).
    #[schema(minimum = 1, maximum = 10000)]
    pub budget: Option<i64>,
    /// Placement zone, `^[a-z][a-z0-9-]{0,39}$`.
    #[schema(pattern = r"^[a-z][a-z0-9-]{0,39}$")]
    pub zone: Option<String>,
}

/// `active` or `paused` (`draining` comes with moves).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettablePolicy {
    Active,
    Paused,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateServer {
    pub policy: Option<SettablePolicy>,
    /// 1-100000.
    #[schema(minimum = 1, maximum = 100000)]
    pub max_databases: Option<i64>,
    /// At least 1 MiB; `null` removes the byte limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1048576)]
    pub max_bytes: Option<Option<i64>>,
    /// 1-10000; `null` returns to `routing.budget_per_server`. Each process applies a changed budget when it
    /// next starts.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    pub budget: Option<Option<i64>>,
    /// `^[a-z][a-z0-9-]{0,39}$`; `null` removes the zone.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^[a-z][a-z0-9-]{0,39}$")]
    pub zone: Option<Option<String>>,
}

/// Tells a field given as `null` (Some(None)) from an absent one (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn server_name(name: &str) -> Result<ServerName, ApiError> {
    ServerName::parse(name).map_err(|_| ApiError::not_found())
}

/// Every database server with its usage, by name.
#[utoipa::path(get, path = "/v1/servers", tag = "servers",
    responses((status = 200, description = "The servers", body = Vec<ServerView>),
        (status = 403, description = "No servers.manage with full access to the master", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<ServerView>>, ApiError> {
    let servers = state.control().servers_with_usage().await?;
    Ok(Json(
        servers
            .into_iter()
            .map(|s| ServerView::new(&state, s))
            .collect(),
    ))
}

/// Register a database server: checked (reachable with its TLS mode, PostgreSQL 13 or newer, an admin role that is
/// a superuser or has CREATEDB and CREATEROLE), its template database made, then recorded `active`.
#[utoipa::path(post, path = "/v1/servers", tag = "servers", request_body = CreateServer,
    responses((status = 201, description = "Registered", body = ServerView,
         headers(("Location" = String, description = "The new server"))),
        (status = 400, description = "Invalid name, zone or number", body = ErrorBody),
        (status = 403, description = "No servers.manage with full access to the master", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "A check failed: the URL, reachability (TLS included), the version, the \
            admin role's rights, or the template database", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateServer>,
) -> Result<Response, ApiError> {
    // The document's shape of a URL (the CLI also takes libpq's key=value form); parsed by the registry.
    let url_shape = (12..=2048).contains(&body.url.len())
        && (body.url.starts_with("postgres://") || body.url.starts_with("postgresql://"))
        && body.url.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !url_shape {
        return Err(Invalid {
            field: "url",
            reason:
                "must be a postgres:// or postgresql:// URL of 12-2048 printable ASCII characters \
                     without spaces"
                    .to_owned(),
        }
        .into());
    }
    let registration = Registration {
        name: body.name,
        url: Secret::new(body.url),
        max_databases: body.max_databases,
        max_bytes: body.max_bytes,
        budget: body.budget,
        zone: body.zone,
    };
    let record = state.servers().register(&registration).await?;
    let name = ServerName::parse(&record.name)?;
    let usage = state.control().server_with_usage(&name).await?;
    Ok(super::created(
        &format!("/v1/servers/{name}"),
        &ServerView::new(&state, usage),
    ))
}

/// One database server with its usage.
#[utoipa::path(get, path = "/v1/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "The server")),
    responses((status = 200, description = "The server", body = ServerView),
        (status = 403, description = "No servers.manage with full access to the master", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ServerView>, ApiError> {
    let name = server_name(&name)?;
    let usage = state.control().server_with_usage(&name).await?;
    Ok(Json(ServerView::new(&state, usage)))
}

/// Change a server's policy (`active`, `paused`), capacity, budget or zone. Absent fields stay.
#[utoipa::path(patch, path = "/v1/servers/{name}", tag = "servers", request_body = UpdateServer,
    params(("name" = String, Path, description = "The server")),
    responses((status = 200, description = "The server now", body = ServerView),
        (status = 400, description = "Invalid zone or number", body = ErrorBody),
        (status = 403, description = "No servers.manage with full access to the master", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateServer>,
) -> Result<Json<ServerView>, ApiError> {
    let name = server_name(&name)?;
    let change = ServerChange {
        policy: body.policy.map(|p| match p {
            SettablePolicy::Active => ServerPolicy::Active,
            SettablePolicy::Paused => ServerPolicy::Paused,
        }),
        max_databases: check_range("max_databases", body.max_databases, &MAX_DATABASES)?
            .map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
        max_bytes: body
            .max_bytes
            .map(|v| check_range("max_bytes", v, &MAX_BYTES))
            .transpose()?,
        budget: body
            .budget
            .map(|v| check_range("budget", v, &MAX_BUDGET))
            .transpose()?
            .map(|v| v.map(|b| i32::try_from(b).unwrap_or(i32::MAX))),
        zone: body
            .zone
            .map(|z| z.as_deref().map(Zone::parse).transpose())
            .transpose()?,
    };
    state.control().update_server(&name, &change).await?;
    let usage = state.control().server_with_usage(&name).await?;
    Ok(Json(ServerView::new(&state, usage)))
}

/// Remove a server that holds no client (its template database is left on it).
#[utoipa::path(delete, path = "/v1/servers/{name}", tag = "servers",
    params(("name" = String, Path, description = "The server")),
    responses((status = 204, description = "Removed"),
        (status = 403, description = "No servers.manage with full access to the master", body = ErrorBody),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "The server holds clients, or is the local server", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = server_name(&name)?;
    state.control().delete_server(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
