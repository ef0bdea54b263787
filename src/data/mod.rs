//! The data plane: requests routed to a client's own database through the routing pool.
//!
//! Owns the DML on tenant databases (DDL is `tenant/`'s) and [`DataPlane`]: the route cache (slug → client record
//! and route, kept for [`ROUTE_TTL`] so a busy tenant does not cost a control-plane query per request), the
//! routing pool ([`TenantPools`]) and the tenant targets. A status change in this process invalidates the entry at
//! once; in other processes it is noticed within the TTL, and PostgreSQL itself refuses a suspended tenant's role
//! (NOLOGIN) meanwhile.
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

use crate::control::clients::ClientRecord;
use crate::control::servers::ServerRecord;
use crate::control::{ControlError, ControlPlane};
use crate::domain::{ClientSlug, ClientStatus, Invalid};
use crate::tenant::TenantError;
use crate::tenant::pool::{PooledConn, RouteError, TenantPools, TenantRoute};
use crate::tenant::targets::Targets;

/// Whether a caller may see personal data on a client (its `private_data` right, DESIGN.md §6). Without it,
/// personal fields (e-mail, names, custom fields marked personal) are masked in every recipient returned, and
/// filters and target-group rules on them are refused, so they cannot be inferred either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privacy {
    Visible,
    /// Personal data withheld. Carries the fields the control plane marks personal for this client, so a field
    /// marked personal a moment ago counts even before the tenant's catalogue says so.
    Masked(Arc<[String]>),
}

impl Privacy {
    pub fn is_visible(&self) -> bool {
        matches!(self, Self::Visible)
    }

    /// Whether `name` is personal data on this client (by the tenant's schema or the control plane's desired
    /// state).
    pub fn is_personal(&self, schema: &schema::Schema, name: &str) -> bool {
        schema.get(name).is_some_and(|f| f.personal)
            || matches!(self, Self::Masked(marked) if marked.iter().any(|n| n == name))
    }

    /// Refuses reading these fields (filters, rules) when personal data is masked.
    pub fn check_fields<'a>(
        &self,
        schema: &schema::Schema,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), DataError> {
        if self.is_visible() {
            return Ok(());
        }
        match names.into_iter().find(|n| self.is_personal(schema, n)) {
            Some(name) => Err(DataError::PersonalData(name.clone())),
            None => Ok(()),
        }
    }
}

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
    #[error(transparent)]
    Tenant(#[from] TenantError),
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
    /// A filter or rule on a personal field by a caller without the private-data right; names the field.
    #[error("{0} is personal data")]
    PersonalData(String),
    #[error("tenant query failed: {}", crate::db::describe_pg_error(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// slug → (fetched at, client, route once placed); shared, so a hit costs two reference counts, not copies.
type Routed = (Instant, Arc<ClientRecord>, Option<Arc<TenantRoute>>);

#[derive(Default)]
struct RouteCache {
    entries: Mutex<HashMap<String, Routed>>,
}

impl RouteCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Routed>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The data plane of one process: route cache, routing pool and tenant targets. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    control: ControlPlane,
    targets: Targets,
    pools: TenantPools,
    routes: Arc<RouteCache>,
}

impl DataPlane {
    pub fn new(control: ControlPlane, targets: Targets, pools: TenantPools) -> Self {
        Self {
            control,
            targets,
            pools,
            routes: Arc::default(),
        }
    }

    /// The routing pool to tenant databases.
    pub fn pools(&self) -> &TenantPools {
        &self.pools
    }

    /// Where tenants live and how they connect.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// A route to a client's database on `server`, as its own role.
    pub fn route(
        &self,
        server: &ServerRecord,
        client_id: uuid::Uuid,
    ) -> Result<TenantRoute, TenantError> {
        Ok(TenantRoute {
            client_id,
            server_id: server.id,
            target: self.targets.tenant(server, client_id)?,
        })
    }

    /// Forgets a cached route.
    pub fn invalidate(&self, slug: &str) {
        self.routes.lock().remove(slug);
    }

    /// Tells the data plane of this process that a client's status changed: its cached route is forgotten, and
    /// unless it is active its pooled connections are closed. Other processes notice within [`ROUTE_TTL`];
    /// meanwhile PostgreSQL refuses the role (the access job's NOLOGIN and `pg_terminate_backend`) or the
    /// database is dropped `WITH (FORCE)` by the deletion job.
    pub fn status_changed(&self, client: &ClientRecord) {
        self.invalidate(&client.slug);
        if client.status != ClientStatus::Active {
            self.pools.close_tenant(client.id);
        }
    }

    /// A connection to an active client's database, as its own role.
    pub async fn connect(
        &self,
        slug: &ClientSlug,
    ) -> Result<(Arc<ClientRecord>, PooledConn), DataError> {
        let (client, route) = match self.lookup(slug).await? {
            (_, client, Some(route)) => (client, route),
            (_, client, None) => return Err(DataError::ClientNotActive(client.status)),
        };
        if client.status != ClientStatus::Active {
            return Err(DataError::ClientNotActive(client.status));
        }
        let conn = self.pools.acquire(&route).await?;
        Ok((client, conn))
    }

    /// A live client by slug, from the route cache (the access check of every client-scoped request uses this).
    pub async fn client(&self, slug: &ClientSlug) -> Result<Arc<ClientRecord>, DataError> {
        Ok(self.lookup(slug).await?.1)
    }

    async fn lookup(&self, slug: &ClientSlug) -> Result<Routed, DataError> {
        if let Some(entry) = self.routes.lock().get(slug.as_str())
            && entry.0.elapsed() < ROUTE_TTL
        {
            return Ok(entry.clone());
        }
        let client = match self.control.client_by_slug(slug).await {
            Ok(client) => client,
            Err(ControlError::NotFound) => return Err(DataError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let route = match client.server_id {
            Some(server_id) => {
                let server = self.control.server(server_id).await?;
                Some(Arc::new(self.route(&server, client.id)?))
            }
            None => None,
        };
        let entry = (Instant::now(), Arc::new(client), route);
        self.routes
            .lock()
            .insert(slug.as_str().to_owned(), entry.clone());
        Ok(entry)
    }
}
