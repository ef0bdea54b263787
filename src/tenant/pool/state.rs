//! The routing pool's shared state: per-server budgets, per-tenant pools and gates, eviction, fair shares,
//! the breaker, and garbage collection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::Pool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::*;
use crate::domain::FastMap;

pub(super) struct TenantPool {
    pub(super) pool: Pool<TenantManager>,
    pub(super) budget: Arc<ServerBudget>,
    /// The tenant's current cap as permits (the pool's own size is the configured cap): lowered and raised
    /// with the fair share. `Pool::resize` cannot do this, as it cannot take back permits of connections in
    /// use; this gate can, by forgetting permits as they come back (`gate_debt`).
    pub(super) gate: Arc<Semaphore>,
    pub(super) gate_size: AtomicUsize,
    pub(super) gate_debt: AtomicUsize,
    /// Signalled when a connection of this tenant is returned.
    pub(super) returned: tokio::sync::Notify,
    pub(super) server_id: i64,
    pub(super) waiters: AtomicUsize,
    /// Its connections, connects in progress and users, counted without a lock (shared with the manager).
    pub(super) counts: Arc<Counts>,
    /// The slot of the server's share the tenant holds while it is in the window (see [`policy`]).
    pub(super) share_slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// Whether `share_slot` is taken (read without a lock when a connection comes back).
    pub(super) in_share: AtomicBool,
    /// Requests waiting for one of this tenant's own connections to come back (at its cap's gate, or with the
    /// budget full): a connection returned now is theirs. (Requests connecting a new one do not count.)
    pub(super) own_waiters: AtomicUsize,
    /// Requests of its own the tenant's share connection served while cold requests waited for the share, since it
    /// took its slot (bounded by [`SHARE_OWN_REQUESTS`]).
    pub(super) share_own_served: AtomicUsize,
    /// Of the waiters, those acquiring for a scan (`Use::Scan`).
    pub(super) scan_waiters: AtomicUsize,
    /// When a request of the tenant's own was last served (ms since the Unix epoch; 0: not since the last
    /// [`super::TenantPools::take_served`]). An atomic, so the served path takes no lock for it.
    pub(super) served_at: AtomicU64,
    /// When the tenant was last looked up or served ([`clock`] nanoseconds; an atomic, no lock per request).
    pub(super) last_used: AtomicU64,
    pub(super) broken: Mutex<Option<(Instant, RouteError)>>,
    /// The connection reads of this tenant last shared ([`super::TenantPools::acquire_shared`]), while they hold it.
    pub(super) shared: Mutex<std::sync::Weak<super::shared::SharedHold>>,
}

/// Handles of the metrics recorded on every acquire, registered once (a lookup per request costs ~5% of a warm
/// request, measured with the route benchmark).
pub(super) struct Handles {
    pub(super) acquire_seconds: metrics::Histogram,
    pub(super) warm: metrics::Counter,
    pub(super) cold: metrics::Counter,
    pub(super) joined: metrics::Counter,
}

/// What a cold request does next (see [`Inner::admit`]).
pub(super) enum Admit {
    /// Connect with this permit.
    Permit(OwnedSemaphorePermit),
    /// It lost admission: wait for a slot of the share.
    Share,
    /// It has a place but no permit is free yet: wait for one.
    Wait,
}

/// The tenants a decision of the policy touches, looked up while the tenants map was locked.
#[derive(Default)]
pub(super) struct Involved {
    victim: Option<Arc<TenantPool>>,
    promoted: Option<Arc<TenantPool>>,
}

impl Involved {
    fn of(tenants: &FastMap<Uuid, Arc<TenantPool>>, e: &policy::Eviction<Uuid>) -> Self {
        Self {
            victim: tenants.get(&e.victim).cloned(),
            promoted: e.promoted.and_then(|p| tenants.get(&p).cloned()),
        }
    }
}

/// What the policy needs to know of a tenant's connections: a reservation counts as one, not idle; nor is a
/// connection that a request of the tenant's own is waiting for (it takes it a moment later; closed, that request
/// would connect again), unless the tenant's cap is being lowered (then the waiter may not pass its gate).
fn holding(tenants: &FastMap<Uuid, Arc<TenantPool>>, id: &Uuid) -> policy::Holding {
    tenants
        .get(id)
        .map(|t| {
            let claimed = t.own_waiters.load(Ordering::Acquire) > 0
                && t.gate_debt.load(Ordering::Acquire) == 0;
            policy::Holding {
                connections: t.counts.connections(),
                idle: if claimed { 0 } else { t.counts.idle() },
            }
        })
        .unwrap_or_default()
}

pub(super) struct Inner {
    pub(super) settings: PoolSettings,
    /// Registered on first use, after the process installed its recorder.
    pub(super) handles: std::sync::OnceLock<Handles>,
    pub(super) warm: AtomicU64,
    pub(super) cold: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) own_waits: AtomicU64,
    /// Reads that joined a connection another read held ([`super::TenantPools::acquire_shared`]).
    pub(super) joined: AtomicU64,
    /// Evictions by how they were decided, in the order of [`policy::Decision::ALL`].
    pub(super) decisions: [AtomicU64; 7],
    pub(super) servers: Mutex<HashMap<i64, Arc<ServerBudget>>>,
    pub(super) tenants: Mutex<FastMap<Uuid, Arc<TenantPool>>>,
    /// Served times of tenants whose pools were closed or dropped before [`super::TenantPools::take_served`] took
    /// them (and times put back after a failed flush).
    pub(super) served: Mutex<HashMap<Uuid, std::time::SystemTime>>,
    /// Test scaffolding: the tenants of cold acquires, in order, while a benchmark records them
    /// ([`super::TenantPools::record_misses`]).
    #[cfg(feature = "testing")]
    pub(super) misses: Mutex<Option<Vec<Uuid>>>,
}

impl Inner {
    pub(super) fn metrics(&self) -> &Handles {
        self.handles.get_or_init(|| Handles {
            acquire_seconds: metrics::histogram!("tenant_pool_acquire_seconds"),
            warm: metrics::counter!("tenant_pool_acquires_total", "result" => "warm"),
            cold: metrics::counter!("tenant_pool_acquires_total", "result" => "cold"),
            joined: metrics::counter!("tenant_pool_shared_joins_total"),
        })
    }

    pub(super) fn tenant(
        self: &Arc<Self>,
        route: &TenantRoute,
    ) -> Result<Arc<TenantPool>, RouteError> {
        if let Some(tenant) = lock(&self.tenants).get(&route.client_id) {
            // Under the map's lock, so garbage collection (which drops pools unused for long under the same lock)
            // cannot drop a pool a request has just looked up.
            tenant.touch();
            return Ok(tenant.clone());
        }
        let budget = lock(&self.servers)
            .entry(route.server_id)
            .or_insert_with(|| {
                let capacity = route
                    .budget
                    .unwrap_or(self.settings.budget_per_server)
                    .max(1);
                // The server's own budget, split into main and the newcomers' share.
                let shares = policy::Shares::for_budget(capacity, policy::SAMPLE_FACTOR);
                Arc::new(ServerBudget {
                    name: route.server.clone(),
                    permits: Arc::new(Semaphore::new(capacity)),
                    capacity,
                    per_tenant_cap: self.settings.per_tenant_cap,
                    fair_cap: AtomicUsize::new(self.settings.per_tenant_cap),
                    last_pressure: Mutex::new(None),
                    returned: tokio::sync::Notify::new(),
                    policy: Mutex::new(policy::Admission::new(shares)),
                    scan_slots: Arc::new(Semaphore::new(self.settings.scan_share.max(1))),
                    share_slots: Arc::new(Semaphore::new(shares.window)),
                    share_waiters: AtomicUsize::new(0),
                    share_swept_ms: AtomicU64::new(0),
                    created: Instant::now(),
                })
            })
            .clone();
        let cap = budget.fair_cap.load(Ordering::Relaxed);
        let counts = Arc::new(Counts::default());
        let manager = TenantManager {
            counts: counts.clone(),
            client_id: route.client_id,
            server_id: route.server_id,
            // Named, so operators (and the route benchmark) can tell the router's backends apart.
            config: route
                .target
                .with_application_name("mandant-router")
                .tokio_config(),
            tls: route.target.tls_connector(),
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
            counts,
            share_slot: Mutex::new(None),
            in_share: AtomicBool::new(false),
            own_waiters: AtomicUsize::new(0),
            share_own_served: AtomicUsize::new(0),
            scan_waiters: AtomicUsize::new(0),
            served_at: AtomicU64::new(0),
            last_used: AtomicU64::new(clock()),
            broken: Mutex::new(None),
            shared: Mutex::new(std::sync::Weak::new()),
        });
        Ok(lock(&self.tenants)
            .entry(route.client_id)
            .or_insert(tenant)
            .clone())
    }

    pub(super) fn connections_of(&self, client_id: Uuid) -> usize {
        lock(&self.tenants)
            .get(&client_id)
            .map(|t| t.counts.get(Count::Alive))
            .unwrap_or(0)
    }

    /// The cold request of `client_id` (it holds no connection, and a reservation) needs a permit: asks the
    /// admission policy where it goes and acts on the answer (see [`policy::Admission::entry`]).
    pub(super) fn admit(&self, budget: &ServerBudget, client_id: Uuid) -> Admit {
        let mut policy = lock(&budget.policy);
        let (entry, tenants) = {
            let tenants = lock(&self.tenants);
            self.prune_locked(&mut policy, &tenants);
            let entry = policy.entry(&client_id, |id| holding(&tenants, id));
            let involved = |e: &policy::Eviction<Uuid>| Involved::of(&tenants, e);
            let involved = match &entry {
                policy::Entry::Room { evict: Some(e), .. } | policy::Entry::Displace(e) => {
                    involved(e)
                }
                _ => Involved::default(),
            };
            (entry, involved)
        };
        match entry {
            policy::Entry::Room { evict, .. } => {
                if let Ok(permit) = budget.permits.clone().try_acquire_owned() {
                    return Admit::Permit(permit);
                }
                match evict.and_then(|e| self.apply(&mut policy, e, tenants)) {
                    Some(conn) => Admit::Permit(conn.permit),
                    None => Admit::Wait,
                }
            }
            policy::Entry::Displace(e) => match self.apply(&mut policy, e, tenants) {
                Some(conn) => Admit::Permit(conn.permit),
                None => {
                    // The victim's idle connection was taken meanwhile: decide afresh.
                    policy.forget(&client_id);
                    Admit::Wait
                }
            },
            policy::Entry::Share => Admit::Share,
        }
    }

    /// A cold request lost admission and every slot of the share is taken: makes room in the share for the first
    /// request waiting for a slot (see [`policy::Admission::make_room_in_share`]).
    pub(super) fn make_room_in_share(&self, budget: &ServerBudget, client_id: Uuid) {
        let mut policy = lock(&budget.policy);
        let chosen = {
            let tenants = lock(&self.tenants);
            self.prune_locked(&mut policy, &tenants);
            policy
                .make_room_in_share(&client_id, |id| holding(&tenants, id))
                .map(|e| (e, Involved::of(&tenants, &e)))
        };
        if let Some((eviction, involved)) = chosen {
            self.apply(&mut policy, eviction, involved);
        }
    }

    /// The tenant took a slot of the share: it keeps the slot while it is in the window.
    pub(super) fn join_share(
        &self,
        budget: &ServerBudget,
        client_id: Uuid,
        slot: OwnedSemaphorePermit,
    ) -> bool {
        let mut policy = lock(&budget.policy);
        let Some(tenant) = lock(&self.tenants).get(&client_id).cloned() else {
            return false;
        };
        *lock(&tenant.share_slot) = Some(slot);
        tenant.share_own_served.store(0, Ordering::SeqCst);
        tenant.in_share.store(true, Ordering::SeqCst);
        policy.join_share(client_id);
        true
    }

    /// Whether a tenant has a place (in the share or in main) that entitles it to a free permit.
    pub(super) fn has_place(&self, budget: &ServerBudget, client_id: Uuid) -> bool {
        lock(&budget.policy)
            .region(&client_id)
            .is_some_and(|r| r != Region::Scan)
    }

    /// A connection of a share tenant came back while cold requests wait for the share: the tenant moves into
    /// main if it was used more often than main's victim (which closes), else its idle connection closes, so
    /// the share's connections serve one request each while the share is in demand.
    pub(super) fn yield_share(&self, tenant: &TenantPool, client_id: Uuid) {
        let mut policy = lock(&tenant.budget.policy);
        if policy.region(&client_id) != Some(Region::Window) {
            return;
        }
        let chosen = {
            let tenants = lock(&self.tenants);
            let eviction = policy.on_return(&client_id, |id| holding(&tenants, id));
            (eviction, Involved::of(&tenants, &eviction))
        };
        self.apply(&mut policy, chosen.0, chosen.1);
    }

    /// A scan holding a scan slot needs a connection and the budget is full: closes one idle connection of the
    /// tenant the admission policy picks. Returns whether one was closed.
    pub(super) fn evict_for_scan(&self, budget: &ServerBudget, client_id: Uuid) -> bool {
        self.evict_chosen(budget, |policy, holding| {
            policy.victim_for_scan(&client_id, holding)
        })
    }

    /// A scan holding its whole share needs a connection: closes an idle connection of another scan, if any.
    pub(super) fn evict_scan_idle(&self, budget: &ServerBudget, client_id: Uuid) -> bool {
        self.evict_chosen(budget, |policy, holding| {
            policy
                .scan_victim(&client_id, holding)
                .map(|victim| policy::Eviction {
                    victim,
                    decision: policy::Decision::Scan,
                    promoted: None,
                })
        })
    }

    fn evict_chosen(
        &self,
        budget: &ServerBudget,
        choose: impl FnOnce(
            &mut policy::Admission<Uuid>,
            &mut dyn FnMut(&Uuid) -> policy::Holding,
        ) -> Option<policy::Eviction<Uuid>>,
    ) -> bool {
        let mut policy = lock(&budget.policy);
        let chosen = {
            let tenants = lock(&self.tenants);
            self.prune_locked(&mut policy, &tenants);
            let mut holding = |id: &Uuid| holding(&tenants, id);
            choose(&mut policy, &mut holding).map(|e| (e, Involved::of(&tenants, &e)))
        };
        let Some((eviction, involved)) = chosen else {
            return false;
        };
        self.apply(&mut policy, eviction, involved).is_some()
    }

    /// Carries out a decision of the policy (under its lock): closes one idle connection of the victim and returns
    /// it (its permit may pass on to the tenant that needed it), forgets a victim left without connections and
    /// frees the share slots of tenants that left the share. Counts the decision if a connection closed.
    fn apply(
        &self,
        policy: &mut policy::Admission<Uuid>,
        eviction: policy::Eviction<Uuid>,
        involved: Involved,
    ) -> Option<TenantConn> {
        if let Some(promoted) = &involved.promoted {
            promoted.leave_share();
        }
        let victim = involved.victim?;
        let closed = victim.take_one_idle();
        // A yielded share tenant leaves the share even if a request of its own is about to reconnect: that request
        // then competes for admission like any cold one.
        let reserved = eviction.decision != policy::Decision::Yielded
            && victim.counts.get(Count::Reserving) > 0;
        if victim.counts.get(Count::Alive) == 0 && !reserved {
            policy.forget(&eviction.victim);
            victim.leave_share();
        }
        if closed.is_some() {
            if let Some(i) = policy::Decision::ALL
                .iter()
                .position(|d| *d == eviction.decision)
            {
                self.decisions[i].fetch_add(1, Ordering::Relaxed);
            }
            metrics::counter!("tenant_pool_admission_decisions_total", "decision" => eviction.decision.label())
                .increment(1);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tenant_pool_evictions_total", "reason" => "budget").increment(1);
        }
        closed
    }

    /// Forgets, in a server's policy, the tenants without connections or reservations, and frees their share slots.
    fn prune_locked(
        &self,
        policy: &mut policy::Admission<Uuid>,
        tenants: &FastMap<Uuid, Arc<TenantPool>>,
    ) {
        for gone in policy.prune(|id| holding(tenants, id).connections == 0) {
            if let Some(tenant) = tenants.get(&gone) {
                tenant.leave_share();
            }
        }
    }

    /// What a connection being created for `client_id` is for: a scan only while no request of the tenant's
    /// own waits for it too.
    pub(super) fn usage_of(&self, client_id: Uuid) -> Use {
        match lock(&self.tenants).get(&client_id) {
            Some(t) => {
                let scans = t.scan_waiters.load(Ordering::Acquire);
                if scans > 0 && scans >= t.waiters.load(Ordering::Acquire) {
                    Use::Scan
                } else {
                    Use::Request
                }
            }
            None => Use::Request,
        }
    }

    /// A warm tenant wants another connection and the budget is full: closes an idle connection of the least
    /// recently used tenant unused for at least `idle_for` on the server (one that has gone quiet).
    pub(super) fn evict_stale_idle(
        &self,
        server_id: i64,
        except: Uuid,
        idle_for: Duration,
    ) -> bool {
        let victim = lock(&self.tenants)
            .iter()
            .filter(|(id, t)| **id != except && t.server_id == server_id && t.counts.idle() > 0)
            .map(|(_, t)| (t.last_used.load(Ordering::Relaxed), t))
            .filter(|(used, _)| clock().saturating_sub(*used) >= idle_for.as_nanos() as u64)
            .min_by_key(|(used, _)| *used)
            .map(|(_, t)| t.clone());
        let Some(victim) = victim else {
            return false;
        };
        if !victim.close_one_idle() {
            return false;
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tenant_pool_evictions_total", "reason" => "stale").increment(1);
        true
    }

    /// A tenant's pool leaves the map (closed, suspended, deleted or unused for long): closes it, forgets it in
    /// its server's policy and keeps its last served time for the next flush.
    pub(super) fn retire(&self, client_id: Uuid, tenant: &TenantPool) {
        tenant.close();
        lock(&tenant.budget.policy).forget(&client_id);
        tenant.leave_share();
        if let Some(at) = tenant.take_served() {
            let mut served = lock(&self.served);
            let entry = served.entry(client_id).or_insert(at);
            *entry = (*entry).max(at);
        }
    }

    /// Forgets, in every server's policy, the tenants that hold no connection any more.
    pub(super) fn prune_policies(&self) {
        let budgets: Vec<Arc<ServerBudget>> = lock(&self.servers).values().cloned().collect();
        for budget in budgets {
            let mut policy = lock(&budget.policy);
            let tenants = lock(&self.tenants);
            self.prune_locked(&mut policy, &tenants);
        }
    }

    /// The budget is full and a tenant wants another connection (`holder`: it has some already): the tenants
    /// in use do not fit. Each tenant's cap drops to a fair share of the budget (at least 1), so the budget
    /// holds connections of as many distinct tenants as possible instead of several of a few hot ones, and
    /// warm tenants queue on their own connections (in the pool, without polling). Only the first signal at a
    /// given share does work.
    pub(super) fn under_pressure(&self, server_id: i64, budget: &ServerBudget, holder: bool) {
        *lock(&budget.last_pressure) = Some(Instant::now());
        let current = budget.fair_cap.load(Ordering::Relaxed);
        if current <= 1 {
            return;
        }
        let tenants = lock(&self.tenants);
        let holders = tenants
            .values()
            .filter(|t| t.server_id == server_id && t.counts.get(Count::Alive) > 0)
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
    pub(super) fn relax(&self) {
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

    pub(super) fn trip(&self, client_id: Uuid, error: &RouteError) {
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

/// One waiting request of a tenant; the count goes down when it is dropped.
pub(super) struct WaiterGuard<'a>(&'a AtomicUsize);

impl<'a> WaiterGuard<'a> {
    pub(super) fn enter(waiters: &'a AtomicUsize, max: usize) -> Option<Self> {
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

/// Nanoseconds since the first call in this process: a monotonic clock that fits an atomic.
pub(super) fn clock() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Locks a mutex, recovering from poisoning (every critical section here leaves consistent state).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
