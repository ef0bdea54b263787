//! The routing pool's shared state: per-server budgets, per-tenant pools and gates, eviction, fair shares,
//! the breaker, and garbage collection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::Pool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::*;

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
    /// Of the waiters, those acquiring for a scan (`Use::Scan`).
    pub(super) scan_waiters: AtomicUsize,
    /// When a request of the tenant's own was last served (ms since the Unix epoch; 0: not since the last
    /// [`super::TenantPools::take_served`]). An atomic, so the served path takes no lock for it.
    pub(super) served_at: AtomicU64,
    /// When the tenant was last looked up or served ([`clock`] nanoseconds; an atomic, no lock per request).
    pub(super) last_used: AtomicU64,
    pub(super) broken: Mutex<Option<(Instant, RouteError)>>,
}

/// Handles of the metrics recorded on every acquire, registered once (a lookup per request costs ~5% of a warm
/// request, measured with the route benchmark).
pub(super) struct Handles {
    pub(super) acquire_seconds: metrics::Histogram,
    pub(super) warm: metrics::Counter,
    pub(super) cold: metrics::Counter,
}

pub(super) struct Inner {
    pub(super) settings: PoolSettings,
    /// Registered on first use, after the process installed its recorder.
    pub(super) handles: std::sync::OnceLock<Handles>,
    pub(super) warm: AtomicU64,
    pub(super) cold: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) own_waits: AtomicU64,
    /// Evictions by how they were decided, in the order of [`policy::Decision::ALL`].
    pub(super) decisions: [AtomicU64; 7],
    pub(super) servers: Mutex<HashMap<i64, Arc<ServerBudget>>>,
    pub(super) tenants: Mutex<HashMap<Uuid, Arc<TenantPool>>>,
    /// Served times of tenants whose pools were closed or dropped before [`super::TenantPools::take_served`] took
    /// them (and times put back after a failed flush).
    pub(super) served: Mutex<HashMap<Uuid, std::time::SystemTime>>,
}

impl Inner {
    pub(super) fn metrics(&self) -> &Handles {
        self.handles.get_or_init(|| Handles {
            acquire_seconds: metrics::histogram!("tenant_pool_acquire_seconds"),
            warm: metrics::counter!("tenant_pool_acquires_total", "result" => "warm"),
            cold: metrics::counter!("tenant_pool_acquires_total", "result" => "cold"),
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
                Arc::new(ServerBudget {
                    name: route.server.clone(),
                    permits: Arc::new(Semaphore::new(capacity)),
                    capacity,
                    fair_cap: AtomicUsize::new(self.settings.per_tenant_cap),
                    last_pressure: Mutex::new(None),
                    returned: tokio::sync::Notify::new(),
                    policy: Mutex::new(policy::Admission::new(policy::Shares::for_budget(
                        capacity,
                        policy::SAMPLE_FACTOR,
                    ))),
                    scan_slots: Arc::new(Semaphore::new(self.settings.scan_share.max(1))),
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
            scan_waiters: AtomicUsize::new(0),
            served_at: AtomicU64::new(0),
            last_used: AtomicU64::new(clock()),
            broken: Mutex::new(None),
        });
        Ok(lock(&self.tenants)
            .entry(route.client_id)
            .or_insert(tenant)
            .clone())
    }

    pub(super) fn connections_of(&self, client_id: Uuid) -> usize {
        lock(&self.tenants)
            .get(&client_id)
            .map(|t| t.pool.status().size)
            .unwrap_or(0)
    }

    /// The budget is full and `client_id`, which holds no connection, needs one: closes one idle connection of
    /// the tenant the admission policy picks. Returns whether one was closed.
    pub(super) fn evict_by_policy(
        &self,
        budget: &ServerBudget,
        client_id: Uuid,
        usage: Use,
        impatient: bool,
    ) -> bool {
        self.evict_chosen(budget, |policy, holding| {
            policy.victim(&client_id, usage, impatient, holding)
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
            let mut holding = |id: &Uuid| {
                tenants
                    .get(id)
                    .map(|t| {
                        let status = t.pool.status();
                        policy::Holding {
                            connections: status.size,
                            idle: status.available,
                        }
                    })
                    .unwrap_or_default()
            };
            choose(&mut policy, &mut holding)
                .and_then(|e| tenants.get(&e.victim).map(|t| (e, t.clone())))
        };
        let Some((eviction, victim)) = chosen else {
            return false;
        };
        let closed = victim.close_one_idle();
        if victim.pool.status().size == 0 {
            policy.forget(&eviction.victim);
        }
        drop(policy);
        if closed {
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
            .filter(|(id, t)| {
                **id != except && t.server_id == server_id && t.pool.status().available > 0
            })
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
            policy.prune(|id| tenants.get(id).is_none_or(|t| t.pool.status().size == 0));
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

impl TenantPool {
    /// Closes the pool and fails the requests waiting for it.
    pub(super) fn close(&self) {
        self.gate.close();
        self.pool.close();
    }

    /// Sets the tenant's cap: lowering it closes idle connections over the new cap at once and takes back
    /// gate permits as they are returned; raising it pays back that debt first.
    pub(super) fn set_cap(&self, cap: usize) {
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

    pub(super) fn touch(&self) {
        self.last_used.store(clock(), Ordering::Relaxed);
    }

    /// How long since the tenant was last looked up or served.
    pub(super) fn unused_for(&self) -> Duration {
        Duration::from_nanos(clock().saturating_sub(self.last_used.load(Ordering::Relaxed)))
    }

    /// Closes one idle connection; whether there was one.
    pub(super) fn close_one_idle(&self) -> bool {
        let mut taken = false;
        let removed = self.pool.retain(|_, _| {
            let keep = taken;
            taken = true;
            keep
        });
        !removed.removed.is_empty()
    }

    /// Notes that a request of the tenant's own was served now.
    pub(super) fn note_served(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis().max(1) as u64);
        self.served_at.store(now, Ordering::Relaxed);
    }

    /// The last served time noted since the last call, if any.
    pub(super) fn take_served(&self) -> Option<std::time::SystemTime> {
        match self.served_at.swap(0, Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Gives a gate permit back, or keeps it if the cap was lowered meanwhile.
    pub(super) fn release_gate(&self, permit: OwnedSemaphorePermit) {
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
    pub(super) fn broken(&self) -> Option<RouteError> {
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
