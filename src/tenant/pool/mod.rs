//! The routing pool: one lazily created deadpool pool per tenant database, under a connection budget per database
//! server that is never exceeded.
//!
//! - **Budget.** Every physical connection owns a permit of its server's semaphore for its whole life (the permit
//!   lives inside the pooled object), so the bound holds on every path: a connection dropped by eviction, by the
//!   pool's recycling, by GC or by an error gives its permit back, and nothing else can.
//! - **Eviction by frequency.** When the budget is full and a tenant *with no connection* needs one, the admission
//!   policy ([`policy`], W-TinyLFU) decides: the cold tenant (its request counted in a frequency sketch first)
//!   takes the idle connection of main's least frequent tenant only if the sketch counts it as used more often;
//!   otherwise it is served from the *share*, a hard 10% of the budget in slots of one tenant each, for which it
//!   waits in FIFO order, and a share connection serves one request while others wait (and a request of its own
//!   tenant already waiting for it, at most three in a row). So cold tenants never
//!   force a main tenant out, and a cold request waits at most for the share's requests ahead of it. Work
//!   visiting many tenants (`Use::Scan`) is not counted and takes at most `scan_share` connections from others.
//!   A tenant that already holds connections waits for its own instead of stealing (stealing by warm tenants
//!   thrashes: measured in FACTS.md), unless the other tenant has gone quiet (unused for a second): then its
//!   idle connection is fair game.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{Object, PoolError, Timeouts};
use deadpool_postgres::tokio_postgres::{self};
use tokio::sync::TryAcquireError;
use uuid::Uuid;

use crate::db::{PgTarget, describe_pg_error};

mod conn;
pub mod policy;
mod settings;
mod shared;
mod state;
mod tenant;

use conn::{Count, Counts, ServerBudget, Tally};
pub use conn::{PooledConn, TenantConn, TenantManager};
pub use policy::Region;
pub use settings::PoolSettings;
pub use shared::SharedConn;
use state::{Inner, TenantPool, WaiterGuard, lock};

/// How long a connection-less tenant waits for a freed permit before looking for idle connections again.
const BUDGET_RETRY: Duration = Duration::from_millis(5);
/// How long a tenant waiting for one of its own connections waits for one to be returned before it looks at
/// its pool again anyway.
const OWN_RETRY: Duration = Duration::from_millis(5);
/// How often a cold request waiting for a slot of the share looks for an idle share tenant to close (a safety net:
/// a share connection that comes back while requests wait closes at once).
const SHARE_RETRY: Duration = Duration::from_millis(20);
/// Requests of its own a share tenant's connection may serve in a row while cold requests wait for the share
/// (then it yields: the share serves the queue, not one busy tenant).
const SHARE_OWN_REQUESTS: usize = 3;
/// A tenant unused this long has gone quiet: a warm tenant may take over its idle connection.
const STALE_IDLE: Duration = Duration::from_secs(1);

/// Where one tenant's connections go: decided by the caller from the (cached) control-plane record.
#[derive(Debug, Clone)]
pub struct TenantRoute {
    pub client_id: Uuid,
    pub server_id: i64,
    /// The server's name: the `server` label of its metrics.
    pub server: String,
    /// The server's own connection budget (its `budget`); `None` = `routing.budget_per_server`. Read when this
    /// process first routes to the server.
    pub budget: Option<usize>,
    /// The tenant's own database, as its own role (with the server's TLS).
    pub target: PgTarget,
}

/// Why no connection could be had. Mapped to HTTP in `http/error/`.
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
    /// Reads served on a connection another read of the same tenant held (counted among `warm` too).
    pub joined: u64,
    /// Evictions for a cold tenant by how the admission policy decided them, in the order of
    /// [`policy::Decision::ALL`] (scan, main over its share, share tenant admitted into main, share tenant
    /// rejected, share tenant closed with no main victim to compare, newcomer admitted, share connection yielded).
    pub decisions: [u64; 7],
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

/// Budget use of one server, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    pub capacity: usize,
    pub in_use: usize,
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A request of the tenant's own (recorded as the tenant's last use).
    Request,
    /// Work that visits many tenants once (statistics, cross-client queries, fan-out).
    Scan,
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
                joined: AtomicU64::new(0),
                decisions: Default::default(),
                servers: Mutex::new(HashMap::new()),
                tenants: Mutex::default(),
                served: Mutex::new(HashMap::new()),
                #[cfg(feature = "testing")]
                misses: Mutex::new(None),
            }),
        }
    }

    /// A connection to the tenant's database, as its own role, for a request of the tenant's own.
    pub async fn acquire(&self, route: &TenantRoute) -> Result<PooledConn, RouteError> {
        self.acquire_for(route, Use::Request).await
    }

    /// A connection to the tenant's database, as its own role, for a request (`Use::Request`: the tenant counts
    /// as served) or for work that visits many tenants (`Use::Scan`: statistics, cross-client queries, fan-out).
    pub async fn acquire_for(
        &self,
        route: &TenantRoute,
        usage: Use,
    ) -> Result<PooledConn, RouteError> {
        let tenant = self.inner.tenant(route)?;
        self.acquire_from(tenant, route, usage).await
    }

    /// [`Self::acquire_for`] from the tenant's pool, looked up by the caller.
    async fn acquire_from(
        &self,
        tenant: Arc<TenantPool>,
        route: &TenantRoute,
        usage: Use,
    ) -> Result<PooledConn, RouteError> {
        let (mut conn, counted) = self.checkout(tenant, route, usage).await?;
        let fresh = conn
            .conn
            .as_ref()
            .is_some_and(|c| Object::metrics(c).recycle_count == 0);
        {
            let mut policy = lock(&conn.tenant.budget.policy);
            if usage == Use::Request && !counted {
                policy.count(route.client_id);
            }
            policy.record(route.client_id, usage, fresh);
        }
        // Handed out: the tenant holds the connection now, its reservation ends.
        conn.reservation = None;
        if usage == Use::Request {
            conn.tenant.note_served();
            // A connection a scan opened now serves the tenant's own requests: it leaves the scans' share.
            conn.scan_slot = None;
        }
        Ok(conn)
    }

    /// The tenants served to requests since the last call, with the time each was last served.
    pub fn take_served(&self) -> Vec<(Uuid, std::time::SystemTime)> {
        let mut served: HashMap<Uuid, std::time::SystemTime> =
            lock(&self.inner.served).drain().collect();
        for (id, tenant) in lock(&self.inner.tenants).iter() {
            if let Some(at) = tenant.take_served() {
                let entry = served.entry(*id).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
        served.into_iter().collect()
    }

    /// Puts back times [`Self::take_served`] returned that could not be recorded (a later time wins).
    pub fn restore_served(&self, served: impl IntoIterator<Item = (Uuid, std::time::SystemTime)>) {
        let mut map = lock(&self.inner.served);
        for (id, at) in served {
            let entry = map.entry(id).or_insert(at);
            *entry = (*entry).max(at);
        }
    }

    /// A connection for the tenant, and whether the request was counted in the admission policy's sketch (it is,
    /// before a tenant without an idle connection may have to be admitted).
    async fn checkout(
        &self,
        tenant: Arc<TenantPool>,
        route: &TenantRoute,
        usage: Use,
    ) -> Result<(PooledConn, bool), RouteError> {
        let started = Instant::now();
        if let Some(error) = tenant.broken() {
            metrics::counter!("tenant_pool_fast_failures_total").increment(1);
            return Err(error);
        }
        // Counted down on every path, also when the request is cancelled while it waits.
        let _waiting =
            WaiterGuard::enter(&tenant.waiters, self.inner.settings.max_waiters_per_tenant)
                .ok_or(RouteError::Busy)?;
        // Tells the tenant's manager, should it have to evict, what the connection is for.
        let _scanning = (usage == Use::Scan)
            .then(|| WaiterGuard::enter(&tenant.scan_waiters, usize::MAX))
            .flatten();
        let deadline = started + self.inner.settings.acquire_timeout;
        // The tenant's cap first: waiting here is a FIFO queue per tenant, without polling.
        let gate = match tenant.gate.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(RouteError::Closed),
            Err(TryAcquireError::NoPermits) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let _own = WaiterGuard::enter(&tenant.own_waiters, usize::MAX);
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
        // The request counts among the pool's users from before it asks the pool until its connection is back
        // (see `Counts`); a failed attempt drops its count.
        let idle = tenant.counts.idle() > 0;
        let mut user = Tally::new(&tenant.counts, Count::Users);
        let fast = if idle {
            let timeouts = Timeouts {
                wait: Some(Duration::ZERO),
                create: Some(self.inner.settings.acquire_timeout),
                recycle: None,
            };
            Some(tenant.pool.timeout_get(&timeouts).await)
        } else {
            None
        };
        let mut counted = false;
        let result = match fast {
            Some(Ok(conn)) => Ok(Ok(conn)),
            Some(Err(PoolError::Timeout(_) | PoolError::Backend(RouteError::Saturated))) | None => {
                // Counted before the admission decision a connect may need, so a cold tenant competes with the
                // frequency its own request adds.
                if usage == Use::Request {
                    lock(&tenant.budget.policy).count(route.client_id);
                    counted = true;
                }
                // Boxed: a warm request never gets here, and this future (a timer around the pool's `get`) would
                // otherwise be part of every request's, and of every future that awaits it, up to the handler's.
                let waited;
                (waited, user) = Box::pin(self.wait_for_connection(&tenant, deadline, user)).await;
                waited
            }
            Some(Err(error)) => Ok(Err(error)),
        };
        tenant.touch();
        let handles = self.inner.metrics();
        handles
            .acquire_seconds
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(mut conn)) => {
                conn.user = Some(user);
                // A connection recycled at least once existed before this request: a warm hit.
                let warm = Object::metrics(&conn).recycle_count > 0;
                let (counter, exported) = if warm {
                    (&self.inner.warm, &handles.warm)
                } else {
                    #[cfg(feature = "testing")]
                    if let Some(misses) = lock(&self.inner.misses).as_mut() {
                        misses.push(route.client_id);
                    }
                    (&self.inner.cold, &handles.cold)
                };
                counter.fetch_add(1, Ordering::Relaxed);
                exported.increment(1);
                Ok((
                    PooledConn {
                        conn: Some(conn),
                        gate: Some(gate),
                        tenant: tenant.clone(),
                        in_tx: false,
                        read_only_tx: false,
                    },
                    counted,
                ))
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

    /// A connection of the tenant's pool (a new one, or one it waits for), by `deadline`. `user`: the request's
    /// count among the pool's users, dropped while it waits outside the pool and given back with the answer.
    async fn wait_for_connection(
        &self,
        tenant: &TenantPool,
        deadline: Instant,
        mut user: Tally,
    ) -> (
        Result<Result<Object<TenantManager>, PoolError<RouteError>>, tokio::time::error::Elapsed>,
        Tally,
    ) {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, tenant.pool.get()).await {
                Ok(Err(PoolError::Backend(RouteError::Saturated))) if !remaining.is_zero() => {
                    // Not a user while it waits outside the pool (as deadpool counts).
                    drop(user);
                    // Until one of the tenant's connections comes back (or, as a fallback for one that is
                    // closed instead, a moment).
                    self.inner.own_waits.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("tenant_pool_own_waits_total").increment(1);
                    let _own = WaiterGuard::enter(&tenant.own_waiters, usize::MAX);
                    let _ = tokio::time::timeout(OWN_RETRY, tenant.returned.notified()).await;
                    user = Tally::new(&tenant.counts, Count::Users);
                }
                other => return (other, user),
            }
        }
    }

    /// Closes a tenant's pool and its connections (suspension, deletion). The next `acquire` starts afresh.
    pub fn close_tenant(&self, client_id: Uuid) {
        let removed = lock(&self.inner.tenants).remove(&client_id);
        if let Some(tenant) = removed {
            self.inner.retire(client_id, &tenant);
        }
    }

    /// Closes every pool (shutdown).
    pub fn close(&self) {
        let drained: Vec<_> = lock(&self.inner.tenants).drain().collect();
        for (client_id, tenant) in drained {
            self.inner.retire(client_id, &tenant);
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
        let mut dropped = Vec::new();
        tenants.retain(|id, tenant| {
            // A pool with connections, or with a request in `checkout` (waiting for the budget, say), stays.
            let keep = tenant.pool.status().size > 0
                || tenant.waiters.load(Ordering::Acquire) > 0
                || tenant.unused_for() < settings.pool_idle_drop;
            if !keep {
                dropped.push((*id, tenant.clone()));
            }
            keep
        });
        drop(tenants);
        for (client_id, tenant) in dropped {
            self.inner.retire(client_id, &tenant);
        }
        self.inner.prune_policies();
        self.inner.relax();
    }

    /// Counters since the router was built.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            warm: self.inner.warm.load(Ordering::Relaxed),
            cold: self.inner.cold.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            own_waits: self.inner.own_waits.load(Ordering::Relaxed),
            joined: self.inner.joined.load(Ordering::Relaxed),
            decisions: std::array::from_fn(|i| self.inner.decisions[i].load(Ordering::Relaxed)),
        }
    }

    /// Test scaffolding (benchmarks): starts recording the tenant of every cold acquire, in order, dropping what
    /// was recorded so far.
    #[cfg(feature = "testing")]
    pub fn record_misses(&self) {
        *lock(&self.inner.misses) = Some(Vec::new());
    }

    /// Test scaffolding: stops recording cold acquires and returns their tenants, in order.
    #[cfg(feature = "testing")]
    pub fn take_misses(&self) -> Vec<Uuid> {
        lock(&self.inner.misses).take().unwrap_or_default()
    }

    /// Connections a tenant holds (idle and in use) in this process.
    pub fn connections(&self, client_id: Uuid) -> usize {
        self.inner.connections_of(client_id)
    }

    /// Tenants whose lock-free connection counts (what the admission policy reads) differ from their pool's own
    /// (`Pool::status`, read under its lock). Both move at slightly different moments while connections come and
    /// go; once no request is running they must agree. For tests and diagnostics.
    pub fn count_drift(&self) -> Vec<Uuid> {
        lock(&self.inner.tenants)
            .iter()
            .filter(|(_, t)| {
                let status = t.pool.status();
                (t.counts.get(Count::Alive), t.counts.idle()) != (status.size, status.available)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The tenants of each region on a server (least recently used first) with the sketch's frequency of each:
    /// window, probation, protected, scan. For diagnostics and the route benchmark.
    pub fn region_members(&self, server_id: i64) -> Vec<(Region, Uuid, u8)> {
        let Some(budget) = lock(&self.inner.servers).get(&server_id).cloned() else {
            return Vec::new();
        };
        let policy = lock(&budget.policy);
        [
            Region::Window,
            Region::Probation,
            Region::Protected,
            Region::Scan,
        ]
        .into_iter()
        .flat_map(|r| {
            policy
                .members(r)
                .into_iter()
                .map(move |id| (r, id))
                .collect::<Vec<_>>()
        })
        .map(|(r, id)| (r, id, policy.frequency(&id)))
        .collect()
    }

    /// Tenants per region on a server: window, probation, protected, scan.
    pub fn regions(&self, server_id: i64) -> Option<[usize; 4]> {
        let budget = lock(&self.inner.servers).get(&server_id).cloned()?;
        let policy = lock(&budget.policy);
        Some(
            [
                Region::Window,
                Region::Probation,
                Region::Protected,
                Region::Scan,
            ]
            .map(|r| policy.len(r)),
        )
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
        for budget in lock(&self.inner.servers).values() {
            let server = budget.name.clone();
            metrics::gauge!("tenant_pool_budget_capacity", "server" => server.clone())
                .set(budget.capacity as f64);
            metrics::gauge!("tenant_pool_budget_in_use", "server" => server.clone())
                .set((budget.capacity - budget.permits.available_permits()) as f64);
            metrics::gauge!("tenant_pool_tenant_cap", "server" => server.clone())
                .set(budget.fair_cap.load(Ordering::Relaxed) as f64);
            let policy = lock(&budget.policy);
            for (region, label) in [
                (Region::Window, "window"),
                (Region::Probation, "probation"),
                (Region::Protected, "protected"),
                (Region::Scan, "scan"),
            ] {
                metrics::gauge!("tenant_pool_region_tenants", "server" => server.clone(), "region" => label)
                    .set(policy.len(region) as f64);
            }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn served_times_a_failed_flush_put_back_are_merged_and_the_later_time_wins() {
        let pools = TenantPools::new(PoolSettings::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let earlier = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let later = earlier + Duration::from_secs(60);
        // Served again (later) while a flush of the earlier time failed: the restore keeps the later time.
        lock(&pools.inner.served).insert(a, later);
        pools.restore_served([(a, earlier), (b, earlier)]);
        let mut taken = pools.take_served();
        taken.sort_by_key(|(_, at)| *at);
        assert_eq!(taken.len(), 2);
        assert!(taken.contains(&(a, later)));
        assert!(taken.contains(&(b, earlier)));
        assert!(pools.take_served().is_empty(), "taken means gone");
    }
}
