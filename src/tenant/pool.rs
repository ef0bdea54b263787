//! The routing pool: one lazily created deadpool pool per tenant database, under a connection budget per database
//! server that is never exceeded.
//!
//! - **Budget.** Every physical connection owns a permit of its server's semaphore for its whole life (the permit
//!   lives inside the pooled object), so the bound holds on every path: a connection dropped by eviction, by the
//!   pool's recycling, by GC or by an error gives its permit back, and nothing else can.
//! - **Eviction.** When the budget is full and a tenant *with no connection* needs one, the least recently used
//!   idle connection of another tenant on the same server is closed. A tenant that already holds connections
//!   waits for its own instead of stealing (stealing by warm tenants thrashes: measured in FACTS.md), unless
//!   the other tenant has gone quiet (unused for a second): then its idle connection is fair game.
//! - **Fair share under pressure.** When a cold tenant has to evict, the tenants in use do not fit the budget:
//!   every tenant's cap on that server drops to `budget / tenants holding connections` (at least 1, via
//!   a per-tenant gate semaphore), so the budget caches as many distinct tenants as possible (an LRU of tenants, not of
//!   connections). Caps double back towards the configured cap once no eviction was needed for a while.
//! - **Bounded waiting.** A per-tenant cap (the pool's size), a bound on waiters per tenant (→ `Busy`, 429) and
//!   an acquire deadline (→ `Timeout`, 503).
//! - **Fast failure.** Connection errors are classified by SQLSTATE; a tenant whose database is missing, whose
//!   role is refused or whose server is down is remembered as broken for a cooldown and fails in microseconds
//!   without touching the budget, so it never evicts healthy tenants' connections.
//! - **Hygiene.** Idle TTL and max lifetime (with jitter) are enforced by [`TenantPools::collect_garbage`]; pools idle for
//!   long are dropped; [`TenantPools::close_tenant`] drains a suspended or deleted tenant's pool.
//!
//! Never: queries the control plane (callers pass a [`TenantRoute`]), or connects as anything but the tenant's own
//! role.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{
    self, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult, Timeouts,
};
use deadpool_postgres::tokio_postgres::{self, NoTls};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use uuid::Uuid;

use crate::config::RoutingSettings;
use crate::db::{PgTarget, describe_pg_error};

/// How long a connection-less tenant waits for a freed permit before looking for idle connections again.
const BUDGET_RETRY: Duration = Duration::from_millis(5);
/// How long a tenant waiting for one of its own connections waits for one to be returned before it looks at
/// its pool again anyway.
const OWN_RETRY: Duration = Duration::from_millis(5);
/// A tenant unused this long has gone quiet: a warm tenant may take over its idle connection.
const STALE_IDLE: Duration = Duration::from_secs(1);

/// Limits and timings of the routing pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections one mandant process may hold to one database server, all tenants together.
    pub budget_per_server: usize,
    /// Connections one tenant may hold.
    pub per_tenant_cap: usize,
    /// Requests that may wait for a connection of one tenant; more are refused at once (`Busy`).
    pub max_waiters_per_tenant: usize,
    /// How long a request waits for a connection.
    pub acquire_timeout: Duration,
    /// An idle connection older than this (since its last use) is closed by garbage collection.
    pub idle_ttl: Duration,
    /// A connection is closed after this long (±10% jitter, so connections do not expire together).
    pub max_lifetime: Duration,
    /// How long a tenant whose connection failed is answered from memory.
    pub breaker_cooldown: Duration,
    /// A tenant pool without connections and unused for this long is dropped.
    pub pool_idle_drop: Duration,
    /// How long after the last eviction by a cold tenant the fair-share caps start growing back.
    pub fair_share_hold: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            budget_per_server: 40,
            per_tenant_cap: 4,
            max_waiters_per_tenant: 64,
            acquire_timeout: Duration::from_secs(5),
            idle_ttl: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(3600),
            breaker_cooldown: Duration::from_secs(2),
            pool_idle_drop: Duration::from_secs(600),
            fair_share_hold: Duration::from_secs(10),
        }
    }
}

impl From<&RoutingSettings> for PoolSettings {
    fn from(s: &RoutingSettings) -> Self {
        Self {
            budget_per_server: s.budget_per_server,
            per_tenant_cap: s.per_tenant_cap,
            max_waiters_per_tenant: s.max_waiters_per_tenant,
            acquire_timeout: Duration::from_millis(s.acquire_timeout_ms),
            idle_ttl: Duration::from_secs(s.idle_ttl_secs),
            max_lifetime: Duration::from_secs(s.max_lifetime_secs),
            breaker_cooldown: Duration::from_millis(s.breaker_cooldown_ms),
            pool_idle_drop: Duration::from_secs(s.pool_idle_drop_secs),
            fair_share_hold: Duration::from_secs(s.fair_share_hold_secs),
        }
    }
}

/// Where one tenant's connections go: decided by the caller from the (cached) control-plane record.
#[derive(Debug, Clone)]
pub struct TenantRoute {
    pub client_id: Uuid,
    pub server_id: i64,
    /// The tenant's own database, as its own role.
    pub target: PgTarget,
}

/// Why no connection could be had. Mapped to HTTP in `http/error.rs`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("the tenant database does not exist")]
    DatabaseMissing,
    #[error("the tenant database refused its role: {0}")]
    AuthFailed(String),
    #[error("the database server is unavailable: {0}")]
    Unavailable(String),
    #[error("the database server has no free connection slots")]
    ServerFull,
    #[error("too many requests are waiting for this tenant")]
    Busy,
    #[error("no connection became free in time")]
    Timeout,
    #[error("the tenant's pool is closed")]
    Closed,
    /// Internal: the budget is full and the tenant holds connections; wait for one of them.
    #[error("the budget is full; waiting for one of the tenant's own connections")]
    Saturated,
}

impl RouteError {
    /// Classifies a connect error by SQLSTATE (or as I/O when there is none).
    fn classify(e: &tokio_postgres::Error) -> Self {
        match e.code().map(|c| c.code()) {
            Some("3D000") => Self::DatabaseMissing,
            Some(code) if code.starts_with("28") => Self::AuthFailed(describe_pg_error(e)),
            Some("53300") => Self::ServerFull,
            _ => Self::Unavailable(describe_pg_error(e)),
        }
    }
}

/// A physical connection and the budget permit it owns.
pub struct TenantConn {
    client: tokio_postgres::Client,
    _permit: OwnedSemaphorePermit,
    /// Lifetime limit of this connection (max lifetime with jitter).
    expires_after: Duration,
}

impl std::fmt::Debug for TenantConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConn").finish_non_exhaustive()
    }
}

impl TenantConn {
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// For transactions. A transaction dropped unfinished (a cancelled request) queues its `ROLLBACK` on the
    /// connection before the connection can serve anyone else, and a `COPY` dropped unfinished sends
    /// `CopyFail` (tokio-postgres' `Transaction` and `CopyInSink`), so a connection never returns to the pool
    /// inside a transaction; the `cancelled_transaction` test holds us to it.
    pub fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }
}

/// A checked-out connection; returns to its tenant's pool on drop and wakes one request of the same tenant
/// that is waiting for it (see [`TenantPools::acquire`]).
pub struct PooledConn {
    conn: Option<Object<TenantManager>>,
    /// The tenant's cap (see [`TenantPool::gate`]), held while the connection is out.
    gate: Option<OwnedSemaphorePermit>,
    tenant: Arc<TenantPool>,
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn").finish_non_exhaustive()
    }
}

impl std::ops::Deref for PooledConn {
    type Target = TenantConn;

    fn deref(&self) -> &TenantConn {
        // Present until drop.
        self.conn.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut TenantConn {
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        drop(self.conn.take());
        if let Some(permit) = self.gate.take() {
            self.tenant.release_gate(permit);
        }
        self.tenant.returned.notify_one();
        self.tenant.budget.returned.notify_waiters();
    }
}

struct ServerBudget {
    permits: Arc<Semaphore>,
    capacity: usize,
    /// The per-tenant cap in force on this server: the configured cap, or a fair share of the budget while
    /// the tenants in use do not fit (see [`Inner::under_pressure`]).
    fair_cap: AtomicUsize,
    /// When a tenant without connections last had to evict another's.
    last_pressure: Mutex<Option<Instant>>,
    /// Signalled when any connection on this server is returned (idle, so evictable).
    returned: tokio::sync::Notify,
}

/// Creates and recycles one tenant's connections, taking a budget permit for each.
pub struct TenantManager {
    client_id: Uuid,
    server_id: i64,
    config: tokio_postgres::Config,
    budget: Arc<ServerBudget>,
    router: Weak<Inner>,
    settings: PoolSettings,
}

impl std::fmt::Debug for TenantManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantManager")
            .field("client_id", &self.client_id)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl managed::Manager for TenantManager {
    type Type = TenantConn;
    type Error = RouteError;

    async fn create(&self) -> Result<TenantConn, RouteError> {
        // A tenant at its fair-share cap waits for its own connections (the gate in `acquire` normally keeps
        // it from getting here; this covers requests that passed the gate just before the cap dropped).
        if let Some(router) = self.router.upgrade() {
            let held = router.connections_of(self.client_id);
            if held > 0 && held >= self.budget.fair_cap.load(Ordering::Relaxed) {
                return Err(RouteError::Saturated);
            }
        }
        let permit = loop {
            if let Ok(permit) = self.budget.permits.clone().try_acquire_owned() {
                break permit;
            }
            // The budget is full. A tenant holding connections waits for one of its own to come back
            // (`acquire` retries the pool); only a tenant holding none may close another tenant's idle one.
            let Some(router) = self.router.upgrade() else {
                return Err(RouteError::Closed);
            };
            if router.connections_of(self.client_id) > 0 {
                // A warm tenant may take over a connection whose tenant has gone quiet, never a recently used
                // one (that thrashes). Otherwise everyone in use wants more than the budget holds: fair share.
                if router.evict_lru_idle(self.server_id, self.client_id, Some(STALE_IDLE)) {
                    continue;
                }
                router.under_pressure(self.server_id, &self.budget, true);
                return Err(RouteError::Saturated);
            }
            // Lowering the caps may close idle surplus connections; only if that freed nothing, evict.
            router.under_pressure(self.server_id, &self.budget, false);
            if let Ok(permit) = self.budget.permits.clone().try_acquire_owned() {
                break permit;
            }
            // Registered before looking for a victim, so a connection returned meanwhile is not missed.
            let returned = self.budget.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            router.evict_lru_idle(self.server_id, self.client_id, None);
            metrics::counter!("tenant_pool_budget_waits_total").increment(1);
            // Wait for the permit the eviction freed (or any other), or for any connection on this server to
            // become idle (then look again); `acquire`'s deadline bounds the loop.
            tokio::select! {
                acquired = self.budget.permits.clone().acquire_owned() => {
                    break acquired.map_err(|_| RouteError::Closed)?;
                }
                () = &mut returned => {}
                () = tokio::time::sleep(BUDGET_RETRY) => {}
            }
        };
        let connected = self.config.connect(NoTls).await;
        let (client, connection) = match connected {
            Ok(pair) => {
                metrics::counter!("tenant_pool_connects_total", "result" => "ok").increment(1);
                pair
            }
            Err(e) => {
                let error = RouteError::classify(&e);
                metrics::counter!("tenant_pool_connects_total", "result" => "error").increment(1);
                if let Some(router) = self.router.upgrade() {
                    router.trip(self.client_id, &error);
                }
                return Err(error);
            }
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let jitter = 0.9 + rand::random::<f64>() * 0.2;
        Ok(TenantConn {
            client,
            _permit: permit,
            expires_after: self.settings.max_lifetime.mul_f64(jitter),
        })
    }

    async fn recycle(&self, conn: &mut TenantConn, metrics: &Metrics) -> RecycleResult<RouteError> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        if metrics.age() > conn.expires_after {
            return Err(RecycleError::message(
                "the connection reached its max lifetime",
            ));
        }
        Ok(())
    }
}

struct TenantPool {
    pool: Pool<TenantManager>,
    budget: Arc<ServerBudget>,
    /// The tenant's current cap as permits (the pool's own size is the configured cap): lowered and raised
    /// with the fair share. `Pool::resize` cannot do this, as it cannot take back permits of connections in
    /// use; this gate can, by forgetting permits as they come back (`gate_debt`).
    gate: Arc<Semaphore>,
    gate_size: AtomicUsize,
    gate_debt: AtomicUsize,
    /// Signalled when a connection of this tenant is returned.
    returned: tokio::sync::Notify,
    server_id: i64,
    waiters: AtomicUsize,
    last_used: Mutex<Instant>,
    broken: Mutex<Option<(Instant, RouteError)>>,
}

/// Counters since the router was built (for benchmarks and tests; `/metrics` has the same as counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Acquires served by a connection that already existed.
    pub warm: u64,
    /// Acquires that had to open a connection.
    pub cold: u64,
    /// Idle connections closed to make room for another tenant.
    pub evictions: u64,
    /// Times a tenant found the budget full and waited for one of its own connections.
    pub own_waits: u64,
}

impl PoolStats {
    /// Warm acquires over all successful acquires.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.warm + self.cold;
        if total == 0 {
            0.0
        } else {
            self.warm as f64 / total as f64
        }
    }
}

/// Handles of the metrics recorded on every acquire, registered once (a lookup per request costs ~5% of a warm
/// request, measured with the route benchmark).
struct Handles {
    acquire_seconds: metrics::Histogram,
    warm: metrics::Counter,
    cold: metrics::Counter,
}

struct Inner {
    settings: PoolSettings,
    /// Registered on first use, after the process installed its recorder.
    handles: std::sync::OnceLock<Handles>,
    warm: AtomicU64,
    cold: AtomicU64,
    evictions: AtomicU64,
    own_waits: AtomicU64,
    servers: Mutex<HashMap<i64, Arc<ServerBudget>>>,
    tenants: Mutex<HashMap<Uuid, Arc<TenantPool>>>,
}

/// Budget use of one server, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    pub capacity: usize,
    pub in_use: usize,
}

/// The routing pool; cheap to clone.
#[derive(Clone)]
pub struct TenantPools {
    inner: Arc<Inner>,
}

impl TenantPools {
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                handles: std::sync::OnceLock::new(),
                warm: AtomicU64::new(0),
                cold: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                own_waits: AtomicU64::new(0),
                servers: Mutex::new(HashMap::new()),
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A connection to the tenant's database, as its own role.
    pub async fn acquire(&self, route: &TenantRoute) -> Result<PooledConn, RouteError> {
        let started = Instant::now();
        let tenant = self.inner.tenant(route)?;
        if let Some(error) = tenant.broken() {
            metrics::counter!("tenant_pool_fast_failures_total").increment(1);
            return Err(error);
        }
        // Counted down on every path, also when the request is cancelled while it waits.
        let _waiting =
            WaiterGuard::enter(&tenant.waiters, self.inner.settings.max_waiters_per_tenant)
                .ok_or(RouteError::Busy)?;
        let deadline = started + self.inner.settings.acquire_timeout;
        // The tenant's cap first: waiting here is a FIFO queue per tenant, without polling.
        let gate = match tenant.gate.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(RouteError::Closed),
            Err(TryAcquireError::NoPermits) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, tenant.gate.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(RouteError::Closed),
                    Err(_) => {
                        metrics::counter!("tenant_pool_timeouts_total").increment(1);
                        return Err(RouteError::Timeout);
                    }
                }
            }
        };
        // Fast path: an idle connection, taken without arming a timer (the common case of a warm tenant).
        let fast = if tenant.pool.status().available > 0 {
            let timeouts = Timeouts {
                wait: Some(Duration::ZERO),
                create: Some(self.inner.settings.acquire_timeout),
                recycle: None,
            };
            Some(tenant.pool.timeout_get(&timeouts).await)
        } else {
            None
        };
        let result = match fast {
            Some(Ok(conn)) => Ok(Ok(conn)),
            Some(Err(PoolError::Timeout(_) | PoolError::Backend(RouteError::Saturated))) | None => {
                loop {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(remaining, tenant.pool.get()).await {
                        Ok(Err(PoolError::Backend(RouteError::Saturated)))
                            if !remaining.is_zero() =>
                        {
                            // Until one of the tenant's connections comes back (or, as a fallback for one
                            // that is closed instead, a moment).
                            self.inner.own_waits.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("tenant_pool_own_waits_total").increment(1);
                            let _ =
                                tokio::time::timeout(OWN_RETRY, tenant.returned.notified()).await;
                        }
                        other => break other,
                    }
                }
            }
            Some(Err(error)) => Ok(Err(error)),
        };
        *lock(&tenant.last_used) = Instant::now();
        let handles = self.inner.metrics();
        handles
            .acquire_seconds
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(conn)) => {
                // A connection recycled at least once existed before this request: a warm hit.
                let warm = Object::metrics(&conn).recycle_count > 0;
                let (counter, exported) = if warm {
                    (&self.inner.warm, &handles.warm)
                } else {
                    (&self.inner.cold, &handles.cold)
                };
                counter.fetch_add(1, Ordering::Relaxed);
                exported.increment(1);
                Ok(PooledConn {
                    conn: Some(conn),
                    gate: Some(gate),
                    tenant: tenant.clone(),
                })
            }
            Ok(Err(PoolError::Backend(RouteError::Saturated)))
            | Ok(Err(PoolError::Timeout(_)))
            | Err(_) => {
                metrics::counter!("tenant_pool_timeouts_total").increment(1);
                Err(RouteError::Timeout)
            }
            Ok(Err(PoolError::Backend(error))) => Err(error),
            Ok(Err(PoolError::Closed)) => Err(RouteError::Closed),
            Ok(Err(_)) => Err(RouteError::Timeout),
        }
    }

    /// Closes a tenant's pool and its connections (suspension, deletion). The next `acquire` starts afresh.
    pub fn close_tenant(&self, client_id: Uuid) {
        if let Some(tenant) = lock(&self.inner.tenants).remove(&client_id) {
            tenant.close();
        }
    }

    /// Closes every pool (shutdown).
    pub fn close(&self) {
        for (_, tenant) in lock(&self.inner.tenants).drain() {
            tenant.close();
        }
    }

    /// Closes idle connections past their TTL or lifetime, and drops pools unused for long.
    pub fn collect_garbage(&self) {
        let settings = &self.inner.settings;
        let mut tenants = lock(&self.inner.tenants);
        for tenant in tenants.values() {
            let removed = tenant.pool.retain(|conn, metrics| {
                metrics.last_used() < settings.idle_ttl && metrics.age() < conn.expires_after
            });
            if !removed.removed.is_empty() {
                metrics::counter!("tenant_pool_evictions_total", "reason" => "idle_or_lifetime")
                    .increment(removed.removed.len() as u64);
            }
        }
        tenants.retain(|_, tenant| {
            tenant.pool.status().size > 0
                || lock(&tenant.last_used).elapsed() < settings.pool_idle_drop
        });
        drop(tenants);
        self.inner.relax();
    }

    /// Counters since the router was built.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            warm: self.inner.warm.load(Ordering::Relaxed),
            cold: self.inner.cold.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            own_waits: self.inner.own_waits.load(Ordering::Relaxed),
        }
    }

    /// The per-tenant cap in force on a server (the configured cap, or a fair share under pressure).
    pub fn tenant_cap(&self, server_id: i64) -> usize {
        lock(&self.inner.servers)
            .get(&server_id)
            .map(|b| b.fair_cap.load(Ordering::Relaxed))
            .unwrap_or(self.inner.settings.per_tenant_cap)
    }

    /// How much of a server's budget is in use.
    pub fn budget(&self, server_id: i64) -> Option<BudgetStatus> {
        lock(&self.inner.servers)
            .get(&server_id)
            .map(|b| BudgetStatus {
                capacity: b.capacity,
                in_use: b.capacity - b.permits.available_permits(),
            })
    }

    /// Publishes budget and pool gauges to `/metrics`.
    pub fn publish_metrics(&self) {
        for (server, budget) in lock(&self.inner.servers).iter() {
            let server = server.to_string();
            metrics::gauge!("tenant_pool_budget_capacity", "server" => server.clone())
                .set(budget.capacity as f64);
            metrics::gauge!("tenant_pool_budget_in_use", "server" => server.clone())
                .set((budget.capacity - budget.permits.available_permits()) as f64);
            metrics::gauge!("tenant_pool_tenant_cap", "server" => server)
                .set(budget.fair_cap.load(Ordering::Relaxed) as f64);
        }
        let tenants = lock(&self.inner.tenants);
        let (mut idle, mut size, mut broken) = (0usize, 0usize, 0usize);
        for tenant in tenants.values() {
            let status = tenant.pool.status();
            idle += status.available;
            size += status.size;
            broken += usize::from(tenant.broken().is_some());
        }
        metrics::gauge!("tenant_pool_connections", "state" => "idle").set(idle as f64);
        metrics::gauge!("tenant_pool_connections", "state" => "active")
            .set(size.saturating_sub(idle) as f64);
        metrics::gauge!("tenant_pool_tenants").set(tenants.len() as f64);
        metrics::gauge!("tenant_pool_warm_hit_ratio").set(self.stats().hit_ratio());
        metrics::gauge!("tenant_pool_breakers_open").set(broken as f64);
    }
}

impl Inner {
    fn metrics(&self) -> &Handles {
        self.handles.get_or_init(|| Handles {
            acquire_seconds: metrics::histogram!("tenant_pool_acquire_seconds"),
            warm: metrics::counter!("tenant_pool_acquires_total", "result" => "warm"),
            cold: metrics::counter!("tenant_pool_acquires_total", "result" => "cold"),
        })
    }

    fn tenant(self: &Arc<Self>, route: &TenantRoute) -> Result<Arc<TenantPool>, RouteError> {
        if let Some(tenant) = lock(&self.tenants).get(&route.client_id) {
            return Ok(tenant.clone());
        }
        let budget = lock(&self.servers)
            .entry(route.server_id)
            .or_insert_with(|| {
                Arc::new(ServerBudget {
                    permits: Arc::new(Semaphore::new(self.settings.budget_per_server)),
                    capacity: self.settings.budget_per_server,
                    fair_cap: AtomicUsize::new(self.settings.per_tenant_cap),
                    last_pressure: Mutex::new(None),
                    returned: tokio::sync::Notify::new(),
                })
            })
            .clone();
        let cap = budget.fair_cap.load(Ordering::Relaxed);
        let manager = TenantManager {
            client_id: route.client_id,
            server_id: route.server_id,
            // Named, so operators (and the route benchmark) can tell the router's backends apart.
            config: route
                .target
                .with_application_name("mandant-router")
                .tokio_config(),
            budget: budget.clone(),
            router: Arc::downgrade(self),
            settings: self.settings.clone(),
        };
        let pool = Pool::builder(manager)
            .max_size(self.settings.per_tenant_cap)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| RouteError::Unavailable(format!("building the tenant's pool: {e}")))?;
        let tenant = Arc::new(TenantPool {
            pool,
            budget,
            gate: Arc::new(Semaphore::new(cap)),
            gate_size: AtomicUsize::new(cap),
            gate_debt: AtomicUsize::new(0),
            returned: tokio::sync::Notify::new(),
            server_id: route.server_id,
            waiters: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            broken: Mutex::new(None),
        });
        Ok(lock(&self.tenants)
            .entry(route.client_id)
            .or_insert(tenant)
            .clone())
    }

    fn connections_of(&self, client_id: Uuid) -> usize {
        lock(&self.tenants)
            .get(&client_id)
            .map(|t| t.pool.status().size)
            .unwrap_or(0)
    }

    /// Closes the least recently used idle connection of another tenant on the server.
    /// `idle_for`: only a tenant unused for at least that long. Returns whether a connection was closed.
    fn evict_lru_idle(&self, server_id: i64, except: Uuid, idle_for: Option<Duration>) -> bool {
        let victim = lock(&self.tenants)
            .iter()
            .filter(|(id, t)| {
                **id != except && t.server_id == server_id && t.pool.status().available > 0
            })
            .map(|(_, t)| (*lock(&t.last_used), t))
            .filter(|(used, _)| idle_for.is_none_or(|d| used.elapsed() >= d))
            .min_by_key(|(used, _)| *used)
            .map(|(_, t)| t.clone());
        let Some(victim) = victim else {
            return false;
        };
        let mut taken = false;
        let removed = victim.pool.retain(|_, _| {
            let keep = taken;
            taken = true;
            keep
        });
        if removed.removed.is_empty() {
            return false;
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
        let reason = if idle_for.is_some() {
            "stale"
        } else {
            "budget"
        };
        metrics::counter!("tenant_pool_evictions_total", "reason" => reason).increment(1);
        true
    }

    /// The budget is full and a tenant wants another connection (`holder`: it has some already): the tenants
    /// in use do not fit. Each tenant's cap drops to a fair share of the budget (at least 1), so the budget
    /// holds connections of as many distinct tenants as possible instead of several of a few hot ones, and
    /// warm tenants queue on their own connections (in the pool, without polling). Only the first signal at a
    /// given share does work.
    fn under_pressure(&self, server_id: i64, budget: &ServerBudget, holder: bool) {
        *lock(&budget.last_pressure) = Some(Instant::now());
        let current = budget.fair_cap.load(Ordering::Relaxed);
        if current <= 1 {
            return;
        }
        let tenants = lock(&self.tenants);
        let holders = tenants
            .values()
            .filter(|t| t.server_id == server_id && t.pool.status().size > 0)
            .count();
        let share = (budget.capacity / (holders + usize::from(!holder)).max(1)).max(1);
        if share < current {
            budget.fair_cap.store(share, Ordering::Relaxed);
            for tenant in tenants.values().filter(|t| t.server_id == server_id) {
                tenant.set_cap(share);
            }
            metrics::counter!("tenant_pool_fair_share_changes_total", "direction" => "down")
                .increment(1);
        }
    }

    /// Without pressure for a while, caps grow back (doubling per garbage-collection pass) to the configured cap.
    fn relax(&self) {
        let configured = self.settings.per_tenant_cap;
        let servers: Vec<(i64, Arc<ServerBudget>)> = lock(&self.servers)
            .iter()
            .map(|(id, b)| (*id, b.clone()))
            .collect();
        for (server_id, budget) in servers {
            let current = budget.fair_cap.load(Ordering::Relaxed);
            let calm = lock(&budget.last_pressure)
                .is_none_or(|at| at.elapsed() >= self.settings.fair_share_hold);
            if current >= configured || !calm {
                continue;
            }
            let raised = (current * 2).min(configured);
            budget.fair_cap.store(raised, Ordering::Relaxed);
            for tenant in lock(&self.tenants)
                .values()
                .filter(|t| t.server_id == server_id)
            {
                tenant.set_cap(raised);
            }
            metrics::counter!("tenant_pool_fair_share_changes_total", "direction" => "up")
                .increment(1);
        }
    }

    fn trip(&self, client_id: Uuid, error: &RouteError) {
        let cooldown = match error {
            RouteError::ServerFull => self.settings.breaker_cooldown / 4,
            RouteError::Timeout | RouteError::Busy | RouteError::Closed | RouteError::Saturated => {
                return;
            }
            _ => self.settings.breaker_cooldown,
        };
        if let Some(tenant) = lock(&self.tenants).get(&client_id) {
            *lock(&tenant.broken) = Some((Instant::now() + cooldown, error.clone()));
            metrics::counter!("tenant_pool_breaker_trips_total").increment(1);
        }
    }
}

impl TenantPool {
    /// Closes the pool and fails the requests waiting for it.
    fn close(&self) {
        self.gate.close();
        self.pool.close();
    }

    /// Sets the tenant's cap: lowering it closes idle connections over the new cap at once and takes back
    /// gate permits as they are returned; raising it pays back that debt first.
    fn set_cap(&self, cap: usize) {
        let old = self.gate_size.swap(cap, Ordering::AcqRel);
        if cap < old {
            let surplus = old - cap;
            let forgotten = self.gate.forget_permits(surplus);
            self.gate_debt
                .fetch_add(surplus - forgotten, Ordering::AcqRel);
            let mut size = self.pool.status().size;
            self.pool.retain(|_, _| {
                let keep = size <= cap;
                if !keep {
                    size -= 1;
                }
                keep
            });
        } else if cap > old {
            let mut grant = cap - old;
            let mut debt = self.gate_debt.load(Ordering::Acquire);
            loop {
                let paid = debt.min(grant);
                match self.gate_debt.compare_exchange(
                    debt,
                    debt - paid,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        grant -= paid;
                        break;
                    }
                    Err(now) => debt = now,
                }
            }
            self.gate.add_permits(grant);
        }
    }

    /// Gives a gate permit back, or keeps it if the cap was lowered meanwhile.
    fn release_gate(&self, permit: OwnedSemaphorePermit) {
        let owed = self
            .gate_debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                debt.checked_sub(1)
            })
            .is_ok();
        if owed {
            permit.forget();
        } else {
            drop(permit);
        }
    }

    /// The remembered failure, while its cooldown lasts.
    fn broken(&self) -> Option<RouteError> {
        let mut broken = lock(&self.broken);
        match &*broken {
            Some((until, error)) if Instant::now() < *until => Some(error.clone()),
            Some(_) => {
                *broken = None;
                None
            }
            None => None,
        }
    }
}

/// One waiting request of a tenant; the count goes down when it is dropped.
struct WaiterGuard<'a>(&'a AtomicUsize);

impl<'a> WaiterGuard<'a> {
    fn enter(waiters: &'a AtomicUsize, max: usize) -> Option<Self> {
        if waiters.fetch_add(1, Ordering::AcqRel) >= max {
            waiters.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(waiters))
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Locks a mutex, recovering from poisoning (every critical section here leaves consistent state).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
