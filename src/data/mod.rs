//! The data plane: requests routed to a client's own database through the routing pool.
//!
//! Owns the DML on tenant databases (DDL is `tenant/`'s) and the route cache: slug → client record and route,
//! kept for [`ROUTE_TTL`] so a busy tenant does not cost a control-plane query per request. A status change in this
//! process invalidates the entry at once; in other processes it is noticed within the TTL, and PostgreSQL itself
//! refuses a suspended tenant's role (NOLOGIN) meanwhile.
//! Never: touches the control plane except through `control/` reads, or connects as anything but the tenant role.

pub mod import;
pub mod lists;
pub mod recipients;
pub mod rules;
pub mod schema;
pub mod target_groups;
pub mod templates;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres;

use crate::app::AppState;
use crate::control::ControlError;
use crate::control::clients::Client;
use crate::domain::{ClientSlug, ClientStatus, Invalid};
use crate::provisioning::ProvisionError;
use crate::tenant::pool::{PooledConn, RouteError, TenantRoute};

/// How long a cached route is trusted.
pub const ROUTE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("not found")]
    NotFound,
    #[error("the client is {0:?}, not active")]
    ClientNotActive(ClientStatus),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("a recipient with this e-mail address exists already")]
    EmailTaken,
    #[error("a mailing list with this name exists already")]
    ListNameTaken,
    #[error(transparent)]
    Import(#[from] import::ImportError),
    /// A target-group rule or filter that cannot be compiled; the message names the problem.
    #[error("{0}")]
    Rule(String),
    /// A field name or value in a recipient write or filter that the tenant's schema refuses; names the field.
    #[error("{0}")]
    Field(String),
    #[error("a target group with this name exists already")]
    GroupNameTaken,
    #[error("tenant query failed: {}", crate::db::describe_pg_error(.0))]
    Query(#[from] tokio_postgres::Error),
}

impl From<ProvisionError> for DataError {
    fn from(e: ProvisionError) -> Self {
        match e {
            ProvisionError::Control(e) => Self::Control(e),
            other => Self::Config(other.to_string()),
        }
    }
}

/// slug → (fetched at, client, route); shared, so a hit costs two reference counts, not copies.
type Routed = (Instant, Arc<Client>, Arc<TenantRoute>);

#[derive(Default)]
pub struct RouteCache {
    entries: Mutex<HashMap<String, Routed>>,
}

impl RouteCache {
    pub fn invalidate(&self, slug: &str) {
        self.lock().remove(slug);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Routed>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tells the data plane of this process that a client's status changed: its cached route is forgotten, and
/// unless it is active its pooled connections are closed. Other processes notice within [`ROUTE_TTL`]; meanwhile
/// PostgreSQL refuses the role (the access job's NOLOGIN and `pg_terminate_backend`) or the database is dropped
/// `WITH (FORCE)` by the deletion job.
pub fn status_changed(state: &AppState, client: &Client) {
    state.routes().invalidate(&client.slug);
    if client.status != ClientStatus::Active {
        state.router().close_tenant(client.id);
    }
}

/// A connection to an active client's database, as its own role.
pub async fn connect(
    state: &AppState,
    slug: &ClientSlug,
) -> Result<(Arc<Client>, PooledConn), DataError> {
    let (client, route) = route(state, slug).await?;
    if client.status != ClientStatus::Active {
        return Err(DataError::ClientNotActive(client.status));
    }
    let conn = state.router().acquire(&route).await?;
    Ok((client, conn))
}

async fn route(
    state: &AppState,
    slug: &ClientSlug,
) -> Result<(Arc<Client>, Arc<TenantRoute>), DataError> {
    let cache = state.routes();
    if let Some((at, client, route)) = cache.lock().get(slug.as_str())
        && at.elapsed() < ROUTE_TTL
    {
        return Ok((client.clone(), route.clone()));
    }
    let client = match state.control().client_by_slug(slug).await {
        Ok(client) => client,
        Err(ControlError::NotFound) => return Err(DataError::NotFound),
        Err(e) => return Err(e.into()),
    };
    let Some(server_id) = client.server_id else {
        return Err(DataError::ClientNotActive(client.status));
    };
    let server = state.control().server(server_id).await?;
    let target = state.provisioner().tenant_target(&server, client.id)?;
    let route = Arc::new(TenantRoute {
        client_id: client.id,
        server_id,
        target,
    });
    let client = Arc::new(client);
    cache.lock().insert(
        slug.as_str().to_owned(),
        (Instant::now(), client.clone(), route.clone()),
    );
    Ok((client, route))
}
