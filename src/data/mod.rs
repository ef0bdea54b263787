//! The data plane: requests routed to a client's own database through the routing pool.
//!
//! Owns the DML on tenant databases (DDL is `tenant/`'s) and [`DataPlane`]: the route cache (slug → client record
//! and route, so a busy tenant does not cost a control-plane query per request), the routing pool
//! ([`TenantPools`]) and the tenant targets.
//!
//! The route cache never contradicts what the API reported: it serves only **active** clients, only while its
//! `LISTEN` on the clients channel is up, and for at most [`ROUTE_SAFETY_TTL`]. Every change of a client's status
//! or placement notifies that channel from its transaction (a trigger), and each process drops the client's route
//! on the notification and closes its pool (with its breaker state). A client that is not active is always read from
//! the control plane before a request is refused with 409, so a client the API has just reported `active` is
//! served at once, even when the notification has not arrived yet. A route loaded while a notification arrived is
//! not cached (a generation counter), so a stale load cannot overwrite an invalidation.
//! Never: touches the control plane except through `control/` reads, or connects as anything but the tenant role.

pub mod content;
pub mod import;
pub mod inner;
pub mod lists;
pub mod recipients;
pub mod retention;
mod routes;
pub mod rules;
pub mod schema;
pub mod target_groups;
pub mod templates;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres;
use deadpool_postgres::tokio_postgres::types::{ToSql, Type};

use crate::control::clients::ClientRecord;
use crate::control::listen::Listening;
use crate::control::servers::ServerRecord;
use crate::control::{CLIENTS_CHANNEL, ControlError, ControlPlane};
use crate::domain::{ClientSlug, ClientStatus, Invalid};
use crate::shutdown::CancellationToken;
use crate::tenant::TenantError;
use crate::tenant::pool::{PooledConn, RouteError, SharedConn, TenantPools, TenantRoute, Use};
use crate::tenant::targets::Targets;
pub use routes::{ROUTE_SAFETY_TTL, Resolved};
use routes::{RouteCache, Routed};

/// A bound value with the PostgreSQL type its placeholder is (or is cast to), for `Client::query_typed`: a rule's
/// parameters ([`rules::Compiled`]) and a recipient write's.
pub type TypedParam = (Box<dyn ToSql + Sync + Send>, Type);

/// `params` as the slice `Client::query_typed` takes.
pub fn typed_refs(params: &[TypedParam]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|(value, ty)| (value.as_ref() as &(dyn ToSql + Sync), ty.clone()))
        .collect()
}

/// Runs a statement like `execute` (its rows, if any, are not wanted) as the unnamed statement in one round trip
/// (`query_typed_raw`, the parameters' types given), where `execute` with a string prepares first. Returns the
/// rows it affected (the command tag's count).
pub async fn execute_typed(
    db: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let stream = db
        .query_typed_raw(sql, params.iter().map(|(value, ty)| (*value, ty.clone())))
        .await?;
    let mut stream = std::pin::pin!(stream);
    while stream.try_next().await?.is_some() {}
    Ok(stream.rows_affected().unwrap_or(0))
}

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
    /// A stored target group's rule that no longer fits the client (a list or field it names was deleted).
    #[error("{0}")]
    StaleRule(String),
    /// A field name or value in a recipient write or filter that the tenant's schema refuses; names the field.
    #[error("{0}")]
    Field(String),
    #[error("a target group with this name exists already")]
    GroupNameTaken,
    #[error("a local template with this name exists already")]
    TemplateNameTaken,
    /// Content to import whose names exist already in the client, by kind; nothing was written.
    #[error("names taken: {0:?}")]
    NamesTaken(content::Clashes),
    /// Content to import that does not fit the client (a rule naming a field it lacks, a list the document
    /// lacks); the message names it.
    #[error("{0}")]
    DoesNotFit(String),
    /// A write through an inner client that would land outside its scope; the message says why.
    #[error("{0}")]
    OutsideScope(String),
    /// A filter or rule on a personal field by a caller without the private-data right; names the field.
    #[error("{0} is personal data")]
    PersonalData(String),
    #[error("tenant query failed: {}", crate::db::describe_pg_error(.0))]
    Query(#[from] tokio_postgres::Error),
    /// The client is in a move's freeze and the switch did not come within `tenants.move_freeze_wait_ms`.
    #[error("the client is being moved to another database server; retry in a moment")]
    Moving,
    /// Work on one client of a cross-client request did not finish within its per-client deadline.
    #[error("the client's database did not answer within {} ms", .0.as_millis())]
    Deadline(Duration),
}

/// The routing pool's key for the connections of a database's second role (its inner clients share them): the
/// parent's id with fixed bits flipped, so it can never be a client's own id in practice and needs no lookup.
pub fn inner_pool_key(parent_id: uuid::Uuid) -> uuid::Uuid {
    uuid::Uuid::from_u128(parent_id.as_u128() ^ 0x5a5a_0000_0000_0000_0000_0000_0000_a5a5)
}

/// The data plane of one process: route cache, routing pool and tenant targets. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    control: ControlPlane,
    targets: Targets,
    pools: TenantPools,
    routes: Arc<RouteCache>,
    /// How long a request waits for a move's switch (`tenants.move_freeze_wait_ms`).
    freeze_wait: Duration,
}

/// How often a request waiting for a move's switch looks again without a notification.
const FREEZE_POLL: Duration = Duration::from_millis(50);

impl DataPlane {
    pub fn new(control: ControlPlane, targets: Targets, pools: TenantPools) -> Self {
        let freeze_wait = targets.settings().move_freeze_wait();
        Self {
            control,
            targets,
            pools,
            routes: Arc::default(),
            freeze_wait,
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
            server: server.name.clone(),
            budget: server.budget.and_then(|b| usize::try_from(b).ok()),
            target: self.targets.tenant(server, client_id)?,
        })
    }

    /// Forgets a cached route.
    pub fn invalidate(&self, slug: &str) {
        self.routes.remove(slug);
    }

    /// Forgets everything cached about a client: its route, the routes of its inner clients, and the pooled
    /// connections of both its roles (with their breaker state).
    fn forget_client(&self, id: uuid::Uuid) {
        self.routes.remove_children(id);
        self.pools.close_tenant(id);
        self.pools.close_tenant(inner_pool_key(id));
    }

    /// Follows the clients channel until cancelled (see the module documentation); the route cache serves only
    /// while this runs and is connected.
    pub async fn listen(&self, retry: Duration, cancel: CancellationToken) {
        self.control
            .listen(&[CLIENTS_CHANNEL], "routes", self, retry, cancel)
            .await;
    }

    /// Tells the data plane of this process that a client's status changed: its cached route is forgotten and its
    /// pooled connections are closed (with any breaker state). (Every process, this one included, also hears it
    /// from the clients channel; this makes it immediate for the process that made the change.)
    pub fn status_changed(&self, client: &ClientRecord) {
        self.invalidate(&client.slug);
        self.forget_client(client.id);
    }

    /// A connection to an active client's database, as its own role, for a request of the client's own.
    pub async fn connect(
        &self,
        slug: &ClientSlug,
    ) -> Result<(Arc<ClientRecord>, PooledConn), DataError> {
        self.connect_for(slug, Use::Request).await
    }

    /// A connection to an active client's database, as its own role; `usage` says whether the client counts as
    /// served ([`Use::Request`]) or is visited by work over many clients ([`Use::Scan`]).
    pub async fn connect_for(
        &self,
        slug: &ClientSlug,
        usage: Use,
    ) -> Result<(Arc<ClientRecord>, PooledConn), DataError> {
        self.connect_with(slug, usage, false).await
    }

    /// As [`Self::connect_for`]; for an inner client the connection is its parent's database as the second role,
    /// inside a transaction that names the inner client (row-level security admits its slice only), which the
    /// caller ends with [`PooledConn::end_scoped`] (or, dropped, it is rolled back). `snapshot`: that transaction
    /// is `REPEATABLE READ READ ONLY` (read requests).
    pub async fn connect_with(
        &self,
        slug: &ClientSlug,
        usage: Use,
        snapshot: bool,
    ) -> Result<(Arc<ClientRecord>, PooledConn), DataError> {
        let generation = self.routes.generation.load(Ordering::Acquire);
        let (client, route) = self.active_route(slug).await?;
        self.connect_route(generation, client, route, usage, snapshot)
            .await
    }

    /// A client by slug with its route as the route cache has it now, for a connection moments later
    /// ([`Self::connect_resolved`]): the access check resolves the client of every client-scoped request, and its
    /// data-plane handler then connects without looking the client up a second time.
    pub async fn resolve(&self, slug: &ClientSlug) -> Result<Resolved, DataError> {
        let generation = self.routes.generation.load(Ordering::Acquire);
        // Only while the clients listener is up does an unchanged generation mean an unchanged client: without it,
        // another process's suspension would not bump the generation, so the connection looks the client up again.
        let listening = self.routes.listening.load(Ordering::Acquire);
        let (fetched, client, route) = self.lookup(slug).await?;
        Ok(Resolved {
            client,
            route: route.filter(|_| listening),
            fetched,
            generation,
        })
    }

    /// As [`Self::connect_with`] for the client [`Self::resolve`] found. Its route serves as found while the route
    /// cache has not changed since (no invalidation: the client is still active, unfrozen and where it was), the
    /// clients listener was up throughout (it clears the cache, a change of generation, when it goes down) and the
    /// entry is still younger than the cache's safety TTL; otherwise the client is looked up again, exactly as
    /// `connect_with` does.
    pub async fn connect_resolved(
        &self,
        resolved: &Resolved,
        usage: Use,
        snapshot: bool,
    ) -> Result<(Arc<ClientRecord>, PooledConn), DataError> {
        match &resolved.route {
            Some(route) if self.routes.current(resolved) => {
                self.connect_route(
                    resolved.generation,
                    resolved.client.clone(),
                    route.clone(),
                    usage,
                    snapshot,
                )
                .await
            }
            _ => {
                let slug =
                    ClientSlug::parse(&resolved.client.slug).map_err(|_| DataError::NotFound)?;
                // Boxed: the route found serves nearly every request; their futures need not carry this one.
                Box::pin(self.connect_with(&slug, usage, snapshot)).await
            }
        }
    }

    /// As [`Self::connect_resolved`] for a request, for a read by single statements in autocommit: a connection
    /// it may share with concurrent reads of the client ([`TenantPools::acquire_shared`]). An inner client's
    /// read, and a read whose client a move froze meanwhile, gets a connection of its own as `connect_resolved`
    /// gives it.
    pub async fn connect_shared(
        &self,
        resolved: &Resolved,
    ) -> Result<(Arc<ClientRecord>, SharedConn), DataError> {
        if let Some(route) = &resolved.route
            && resolved.client.inner_no.is_none()
            && self.routes.current(resolved)
        {
            let conn = self.pools.acquire_shared(route).await?;
            // As `connect_route`: an invalidation meanwhile (of any client) matters only if this client's move
            // froze it; then the read waits for the switch below, as one arriving a moment later would.
            if self
                .frozen_meanwhile(resolved.generation, &resolved.client)
                .await?
                .is_none()
            {
                return Ok((resolved.client.clone(), conn));
            }
        }
        // Boxed: the shared path serves nearly every read; their futures need not carry this one.
        let (client, conn) = Box::pin(self.connect_resolved(resolved, Use::Request, false)).await?;
        Ok((client, SharedConn::alone(conn)))
    }

    /// The client's slug if a move's freeze of `client` began since route cache `generation` (looked up only when
    /// the cache changed meanwhile, by any client's invalidation).
    async fn frozen_meanwhile(
        &self,
        generation: u64,
        client: &ClientRecord,
    ) -> Result<Option<ClientSlug>, DataError> {
        if self.routes.generation.load(Ordering::Acquire) == generation {
            return Ok(None);
        }
        // Boxed: rare (an invalidation while this request connected), and a lookup's future is large.
        let slug = ClientSlug::parse(&client.slug).map_err(|_| DataError::NotFound)?;
        let frozen = Box::pin(self.lookup(&slug)).await?.1.frozen;
        Ok(frozen.then_some(slug))
    }

    /// A connection by `route` to `client`'s database, found at route cache `generation`.
    async fn connect_route(
        &self,
        generation: u64,
        mut client: Arc<ClientRecord>,
        route: Arc<TenantRoute>,
        usage: Use,
        snapshot: bool,
    ) -> Result<(Arc<ClientRecord>, PooledConn), DataError> {
        // A refusal here (a role just made NOLOGIN, a database just dropped) is re-checked against the client's
        // status where every tenant failure of a request is seen, `http::auth` (`recheck_unavailable`).
        let mut conn = self.pools.acquire_for(&route, usage).await?;
        if let Some(slug) = self.frozen_meanwhile(generation, &client).await? {
            // A move's freeze began while this request was connecting: its fence would cut this connection,
            // so wait for the switch like a request that arrived a moment later.
            drop(conn);
            let route;
            (client, route) = Box::pin(self.active_route(&slug)).await?;
            conn = self.pools.acquire_for(&route, usage).await?;
        }
        if let Some(inner_no) = client.inner_no {
            conn.begin_scoped(inner_no, snapshot)?;
        }
        Ok((client, conn))
    }

    /// Writes when this process's routing pool last served each client since the last call to the control plane
    /// (the overview's `last_served_at`). On failure the times are kept for the next call.
    pub async fn flush_served(&self) -> Result<(), ControlError> {
        let served: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = self
            .pools
            .take_served()
            .into_iter()
            .map(|(id, at)| (id, at.into()))
            .collect();
        if let Err(e) = self.control.record_served(&served).await {
            self.pools
                .restore_served(served.into_iter().map(|(id, at)| (id, at.into())));
            return Err(e);
        }
        Ok(())
    }

    /// Flushes [`Self::flush_served`] every `every` until cancelled, and once more at the end.
    pub async fn record_served(&self, every: Duration, cancel: CancellationToken) {
        crate::shutdown::every(every, &cancel, || async {
            if let Err(e) = self.flush_served().await {
                tracing::warn!(error = %e, "could not record when clients were last served");
            }
        })
        .await;
        let _ = self.flush_served().await;
    }

    async fn active_route(
        &self,
        slug: &ClientSlug,
    ) -> Result<(Arc<ClientRecord>, Arc<TenantRoute>), DataError> {
        let mut entry = self.lookup(slug).await?;
        // A move's freeze: new checkouts wait for the switch (every invalidation wakes them), bounded.
        let deadline = Instant::now() + self.freeze_wait;
        while entry.1.frozen && entry.1.status == ClientStatus::Active {
            let changed = self.routes.changed.notified();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DataError::Moving);
            }
            let _ = tokio::time::timeout(left.min(FREEZE_POLL), changed).await;
            entry = self.lookup(slug).await?;
        }
        match entry {
            (_, client, Some(route)) if client.status == ClientStatus::Active => {
                Ok((client, route))
            }
            (_, client, _) => Err(DataError::ClientNotActive(client.status)),
        }
    }

    /// A live client by slug, from the route cache (the access check of every client-scoped request uses this).
    pub async fn client(&self, slug: &ClientSlug) -> Result<Arc<ClientRecord>, DataError> {
        Ok(self.lookup(slug).await?.1)
    }

    async fn lookup(&self, slug: &ClientSlug) -> Result<Routed, DataError> {
        if let Some(entry) = self.routes.get(slug.as_str()) {
            return Ok(entry);
        }
        // The miss path's control-plane queries make a future of several KB; boxed, the warm path every request
        // takes (and every future that awaits this one: the access check, the handlers) stays small.
        Box::pin(self.load(slug)).await
    }

    /// A route cache miss: the client (and its server, or an inner client's parent) from the control plane.
    async fn load(&self, slug: &ClientSlug) -> Result<Routed, DataError> {
        let generation = self.routes.generation.load(Ordering::Acquire);
        let mut client = match self.control.client_by_slug(slug).await {
            Ok(client) => client,
            Err(ControlError::NotFound) => return Err(DataError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let route = match (client.server_id, client.parent_id) {
            (Some(server_id), _) => {
                let server = self.control.server(server_id).await?;
                Some(Arc::new(self.route(&server, client.id)?))
            }
            // An inner client: its parent's database, as the database's second role. Usable while the parent is
            // active (a suspended parent's roles cannot log in either).
            (None, Some(parent_id)) if client.is_inner() => {
                let parent = self.control.client_by_id(parent_id).await?;
                if parent.status != ClientStatus::Active {
                    return Err(ControlError::ParentNotActive(parent.status).into());
                }
                // The parent's move freezes its inner clients with it.
                client.frozen = parent.frozen;
                let server_id = parent.server_id.ok_or(DataError::NotFound)?;
                let server = self.control.server(server_id).await?;
                Some(Arc::new(TenantRoute {
                    client_id: inner_pool_key(parent.id),
                    target: self.targets.inner(&server, parent.id)?,
                    ..self.route(&server, parent.id)?
                }))
            }
            _ => None,
        };
        let entry = (Instant::now(), Arc::new(client), route);
        if entry.1.status == ClientStatus::Active && !entry.1.frozen {
            let mut entries = self.routes.lock();
            // Not if an invalidation happened meanwhile: this load may predate it.
            if self.routes.generation.load(Ordering::Acquire) == generation {
                entries.insert(slug.as_str().to_owned(), entry.clone());
            }
        }
        Ok(entry)
    }
}

impl Listening for DataPlane {
    fn up(&self) {
        // Changes made while nobody listened may be cached from before: start clean.
        self.routes.clear();
        self.routes.listening.store(true, Ordering::Release);
    }

    fn notified(&self, _channel: &str, payload: &str) {
        // '<client id> <status> <slug>[ <old slug>]'
        let mut parts = payload.split(' ');
        let id = parts.next().and_then(|id| uuid::Uuid::parse_str(id).ok());
        let _status = parts.next();
        let slugs: Vec<&str> = parts.collect();
        if slugs.is_empty() {
            self.routes.clear();
        }
        for slug in slugs {
            self.routes.remove(slug);
        }
        // Every status change drops the tenant's pool, and with it a breaker a request racing the change may
        // have tripped (a resumed role refusing a login a moment before it was allowed again).
        if let Some(id) = id {
            self.forget_client(id);
        }
    }

    fn down(&self) {
        self.routes.listening.store(false, Ordering::Release);
        self.routes.clear();
    }
}
