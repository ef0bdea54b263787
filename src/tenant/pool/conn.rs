//! Physical tenant connections: the deadpool manager that takes a permit of the server's budget before it
//! connects and keeps it inside the connection, and the checked-out connection that wakes a waiter on return.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use deadpool_postgres::tokio_postgres::types::{ToSql, Type};
use deadpool_postgres::tokio_postgres::{self, Statement};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use uuid::Uuid;

use super::state::{Admit, WaiterGuard};
use super::*;
use crate::tenant::statements::{Queries, StatementCache};

/// A physical connection and the budget permit it owns.
pub struct TenantConn {
    pub(super) client: tokio_postgres::Client,
    /// The fixed statements kept prepared on this connection.
    pub(super) statements: StatementCache,
    /// The budget permit: freed when the connection is dropped, or passed on to the tenant that evicted it.
    pub(super) permit: OwnedSemaphorePermit,
    /// Lifetime limit of this connection (max lifetime with jitter).
    pub(super) expires_after: Duration,
    /// One of the server's scan slots, while the connection was opened for a scan and no request used it since.
    pub(super) scan_slot: Option<OwnedSemaphorePermit>,
    /// The tenant's reservation while the connection is new and not yet handed out (so the policy does not forget a
    /// tenant between its connect and its first use).
    pub(super) reservation: Option<Tally>,
    /// Counts the connection among the tenant's while it is in the pool or checked out (before `user`: dropped
    /// first); taken when the connection is taken out to close (its permit may outlive it, passed on).
    pub(super) alive: Option<Tally>,
    /// The request holding the connection, counted among the pool's users while it does (see [`Counts`]); taken
    /// back when the connection returns to the pool, and dropped with it when it is closed instead.
    pub(super) user: Option<Tally>,
}

/// A tenant's connection counts, kept by [`Tally`] guards so the admission policy reads them without a lock.
/// deadpool's `Pool::status` locks the pool's slots, and a decision reads every tenant the server's policy tracks,
/// several times (profiled on the route benchmark's overcommitted phase: ~3% of the server's CPU).
#[derive(Default)]
pub(super) struct Counts([AtomicUsize; 3]);

/// What a [`Counts`] entry counts.
#[derive(Clone, Copy)]
pub(super) enum Count {
    /// Cold connects in progress, from the admission decision until the connection is handed out: a
    /// reservation counts as a connection, so the tenant keeps its place while it connects.
    Reserving = 0,
    /// Connections in the pool or checked out (deadpool's `size`).
    Alive = 1,
    /// Requests inside the pool's `get` or holding a connection it gave them (deadpool's `users`).
    Users = 2,
}

impl Counts {
    pub(super) fn get(&self, count: Count) -> usize {
        self.0[count as usize].load(Ordering::Acquire)
    }

    /// Connections, with the cold connects in progress.
    pub(super) fn connections(&self) -> usize {
        self.get(Count::Alive) + self.get(Count::Reserving)
    }

    /// Connections no request holds or waits for (deadpool's `available`).
    pub(super) fn idle(&self) -> usize {
        self.get(Count::Alive)
            .saturating_sub(self.get(Count::Users))
    }
}

/// One unit of a tenant's [`Counts`] while it lives.
pub(super) struct Tally(Arc<Counts>, Count);

impl Tally {
    pub(super) fn new(counts: &Arc<Counts>, count: Count) -> Self {
        counts.0[count as usize].fetch_add(1, Ordering::AcqRel);
        Self(counts.clone(), count)
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.0.0[self.1 as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for TenantConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConn").finish_non_exhaustive()
    }
}

impl TenantConn {
    /// The connection left its pool to be closed (an eviction passing its permit on, an abandoned query, a failed
    /// rollback): it no longer counts among the tenant's connections nor its request among the pool's users, as
    /// deadpool stops counting it too (its permit may outlive it).
    pub(super) fn leave_pool(&mut self) {
        self.alive = None;
        self.user = None;
    }

    /// Takes a checked-out connection out of its pool (see [`Self::leave_pool`]).
    fn detach(conn: Object<TenantManager>) -> Self {
        let mut conn = Object::take(conn);
        conn.leave_pool();
        conn
    }

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
    pub(super) conn: Option<Object<TenantManager>>,
    /// The tenant's cap (see [`TenantPool::gate`]), held while the connection is out.
    pub(super) gate: Option<OwnedSemaphorePermit>,
    pub(super) tenant: Arc<TenantPool>,
    /// Inside a transaction this wrapper opened ([`Self::begin_scoped`]) and has not ended yet: dropped so, the
    /// connection is rolled back before anyone else can have it.
    pub(super) in_tx: bool,
    /// That transaction is read-only (its end need not be awaited).
    pub(super) read_only_tx: bool,
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn").finish_non_exhaustive()
    }
}

impl Queries for PooledConn {
    fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    async fn prepared(
        &self,
        sql: &'static str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Statement>, tokio_postgres::Error> {
        // Inside an inner client's transaction a stale kept statement could not be run again: its error aborts the
        // transaction. There every statement runs unnamed (parsed against the table as it is now).
        if self.in_tx {
            return Ok(None);
        }
        self.statements.prepared(&self.client, sql, params).await
    }

    fn forget(&self, sql: &'static str, _: &[(&(dyn ToSql + Sync), Type)]) {
        self.statements.forget(sql);
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

impl PooledConn {
    /// Keeps the connection out of the pool and cancels what it is running: for work cut off by a deadline,
    /// whose query may still run on the server (returned to the pool, the connection would make its next user
    /// wait for that query). The connection closes once the cancel request was sent.
    pub fn abandon(mut self) {
        if let Some(conn) = self.conn.take() {
            let cancel = conn.client.cancel_token();
            let tls = self.tenant.pool.manager().tls.clone();
            // Closed once the cancel request was sent.
            let conn = TenantConn::detach(conn);
            tokio::spawn(async move {
                if let Err(e) = cancel.cancel_query(tls).await {
                    tracing::debug!(error = %e, "could not cancel an abandoned tenant query");
                }
                drop(conn);
            });
        }
    }
}

impl PooledConn {
    /// Opens the transaction of an inner client's request and names the inner client in it, as its first statement
    /// and transaction-local (`set_config(.., true)`): the setting ends with the transaction, so it can never
    /// reach the next checkout of this connection. `snapshot` makes the transaction `REPEATABLE READ READ ONLY`
    /// (a read request sees one snapshot throughout).
    ///
    /// Costs no round trip of its own: the statement is queued on the connection without waiting for its answer,
    /// so it travels with the request's first query, which PostgreSQL runs after it (one connection, one order).
    /// Should it fail, that query fails too (inside an aborted transaction, or on a closed connection).
    pub fn begin_scoped(
        &mut self,
        inner_no: i32,
        snapshot: bool,
    ) -> Result<(), tokio_postgres::Error> {
        use futures_util::FutureExt;
        let begin = if snapshot {
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        } else {
            "BEGIN"
        };
        self.in_tx = true;
        self.read_only_tx = snapshot;
        // The number is ours (an integer), not user input.
        // `SET LOCAL` is the command form of `set_config(.., true)` (transaction-local), without a plan or a row.
        let sql = format!("{begin}; SET LOCAL mandant.inner_client = '{inner_no}'");
        // The first poll sends the message (tokio-postgres queues it on the connection at once); its answer is
        // not awaited.
        match self.client.batch_execute(&sql).now_or_never() {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether this connection is inside the transaction [`Self::begin_scoped`] opened.
    pub fn in_scoped_transaction(&self) -> bool {
        self.in_tx
    }

    /// Commits (or rolls back) the transaction [`Self::begin_scoped`] opened. A read-only transaction's end is
    /// queued without waiting (nothing to make durable; the connection's next user is served after it); a
    /// writing one's commit is awaited, so its answer follows only once the writes are durable. On failure the
    /// connection is discarded when dropped.
    pub async fn end_scoped(&mut self, commit: bool) -> Result<(), tokio_postgres::Error> {
        use futures_util::FutureExt;
        if !self.in_tx {
            return Ok(());
        }
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        if self.read_only_tx {
            if let Some(Err(e)) = self.client.batch_execute(end).now_or_never() {
                return Err(e);
            }
        } else {
            self.client.batch_execute(end).await?;
        }
        self.in_tx = false;
        Ok(())
    }

    fn release(
        mut conn: Option<Object<TenantManager>>,
        gate: Option<OwnedSemaphorePermit>,
        tenant: &TenantPool,
    ) {
        // Back in the pool before the request stops counting as its user (else it would look idle, to the policy,
        // a moment before it is).
        let user = conn.as_mut().and_then(|c| c.user.take());
        drop(conn);
        drop(user);
        let gate_open = gate.is_some_and(|permit| tenant.release_gate(permit));
        // A connection over a lowered cap (opened before the cap dropped, busy when it did) closes when it comes
        // back: kept, it would hold a slot of the budget that the tenant cannot use at once (a hot tenant keeping
        // two under a cap of one shrinks main by a tenant; measured on the route benchmark).
        let cap = tenant.gate_size.load(Ordering::Relaxed);
        if cap < tenant.budget.per_tenant_cap && tenant.counts.get(Count::Alive) > cap {
            tenant.close_one_idle();
        }
        // A share tenant's connection serves one request while cold requests wait for the share, unless a request
        // of the same tenant waits for this very connection (at its cap's gate, or with the budget full): serving
        // it here costs a query, closing the connection and connecting again for it (at the back of the share's
        // queue) a connect; on the route benchmark's overcommitted phase tenants just outside main often have a
        // second request queued. At most `SHARE_OWN_REQUESTS` in a row, so a busy share tenant cannot keep its
        // slot from the queue, and only while the gate lets the waiting request through.
        if tenant.in_share.load(Ordering::SeqCst)
            && tenant.budget.share_waiters.load(Ordering::SeqCst) > 0
            && (tenant.own_waiters.load(Ordering::SeqCst) == 0
                || !gate_open
                || tenant.share_own_served.fetch_add(1, Ordering::SeqCst) >= SHARE_OWN_REQUESTS)
        {
            let manager = tenant.pool.manager();
            if let Some(router) = manager.router.upgrade() {
                router.yield_share(tenant, manager.client_id);
            }
        }
        tenant.returned.notify_one();
        tenant.budget.returned.notify_waiters();
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let conn = self.conn.take();
        let gate = self.gate.take();
        if self.in_tx
            && let Some(conn) = conn
        {
            // Still inside a scoped transaction (a request cut off, a failed commit): roll back before the
            // connection serves anyone else; discard it if that fails or there is no runtime to do it on.
            let tenant = self.tenant.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let conn = match conn.client.batch_execute("ROLLBACK").await {
                            Ok(()) => Some(conn),
                            Err(_) => {
                                drop(TenantConn::detach(conn));
                                None
                            }
                        };
                        Self::release(conn, gate, &tenant);
                    });
                }
                Err(_) => {
                    drop(TenantConn::detach(conn));
                    Self::release(None, gate, &self.tenant);
                }
            }
            return;
        }
        Self::release(conn, gate, &self.tenant);
    }
}

pub(super) struct ServerBudget {
    /// The server's name (the `server` label of the budget's metrics).
    pub(super) name: String,
    pub(super) permits: Arc<Semaphore>,
    pub(super) capacity: usize,
    /// The configured per-tenant cap (the fair share is lower under pressure).
    pub(super) per_tenant_cap: usize,
    /// The per-tenant cap in force on this server: the configured cap, or a fair share of the budget while
    /// the tenants in use do not fit (see [`Inner::under_pressure`]).
    pub(super) fair_cap: AtomicUsize,
    /// When a tenant without connections last had to evict another's.
    pub(super) last_pressure: Mutex<Option<Instant>>,
    /// Signalled when any connection on this server is returned (idle, so evictable).
    pub(super) returned: tokio::sync::Notify,
    /// Which tenants keep their connections when the budget is full (lock order: this, then `Inner::tenants`).
    pub(super) policy: Mutex<policy::Admission<Uuid>>,
    /// `scan_share` permits: a connection opened for a scan holds one until it closes or a request uses it, so
    /// scans never hold more than their share of the budget.
    pub(super) scan_slots: Arc<Semaphore>,
    /// The share's slots, one per tenant in the window (see [`policy`]): a cold request that lost admission
    /// waits for one in FIFO order.
    pub(super) share_slots: Arc<Semaphore>,
    /// Cold requests waiting for a slot of the share (share tenants' connections then serve one request each).
    pub(super) share_waiters: AtomicUsize,
    /// When a waiter for the share last looked for an idle share tenant to close (the safety net's sweep), in
    /// milliseconds since `created`: one sweep per [`SHARE_RETRY`] for the server, however many wait.
    pub(super) share_swept_ms: std::sync::atomic::AtomicU64,
    pub(super) created: std::time::Instant,
}

impl ServerBudget {
    /// Whether this waiter should run the share's safety-net sweep now: no other waiter did in the last
    /// [`SHARE_RETRY`]. (Forty cold requests waiting each sweeping every 20 ms made the policy's bookkeeping a
    /// tenth of the router's CPU on the route benchmark's overcommitted phase; the sweep only serves the
    /// first waiter anyway.)
    pub(super) fn claim_share_sweep(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        let last = self.share_swept_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= SHARE_RETRY.as_millis() as u64
            && self
                .share_swept_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// Creates and recycles one tenant's connections, taking a budget permit for each.
pub struct TenantManager {
    pub(super) client_id: Uuid,
    pub(super) server_id: i64,
    pub(super) config: tokio_postgres::Config,
    /// The server's TLS (`sslmode`, `sslrootcert`), for connects and cancel requests.
    pub(super) tls: crate::db::tls::MakeTls,
    pub(super) budget: Arc<ServerBudget>,
    /// The tenant's connection counts (see [`TenantPool::counts`]).
    pub(super) counts: Arc<Counts>,
    pub(super) router: Weak<Inner>,
    pub(super) settings: PoolSettings,
}

impl std::fmt::Debug for TenantManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantManager")
            .field("client_id", &self.client_id)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl TenantManager {
    /// One of the scans' slots for a connection about to be opened for a scan: free, or freed by closing another
    /// scan's idle connection, or waited for (`acquire`'s deadline bounds the wait).
    async fn scan_slot(&self) -> Result<OwnedSemaphorePermit, RouteError> {
        loop {
            if let Ok(slot) = self.budget.scan_slots.clone().try_acquire_owned() {
                return Ok(slot);
            }
            let Some(router) = self.router.upgrade() else {
                return Err(RouteError::Closed);
            };
            let returned = self.budget.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            router.evict_scan_idle(&self.budget, self.client_id);
            drop(router);
            tokio::select! {
                slot = self.budget.scan_slots.clone().acquire_owned() => {
                    return slot.map_err(|_| RouteError::Closed);
                }
                () = &mut returned => {}
                () = tokio::time::sleep(BUDGET_RETRY) => {}
            }
        }
    }
}

impl TenantManager {
    /// A budget permit for a cold request of the tenant's own (it holds no connection; a reservation is counted):
    /// as the admission policy decides ([`Inner::admit`]) — a free permit or a displaced victim's if it has a place
    /// (main has room, it won admission, or it holds a slot of the share); otherwise it waits for a slot of the
    /// share (FIFO), then for a permit. Never takes a main tenant's connection without winning admission.
    async fn cold_permit(&self) -> Result<OwnedSemaphorePermit, RouteError> {
        loop {
            let Some(router) = self.router.upgrade() else {
                return Err(RouteError::Closed);
            };
            if self.budget.permits.available_permits() == 0 {
                // Lowering the caps may close idle surplus connections, which makes room without evicting anyone.
                router.under_pressure(self.server_id, &self.budget, false);
            }
            // Registered before deciding, so a connection returned meanwhile is not missed.
            let returned = self.budget.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            match router.admit(&self.budget, self.client_id) {
                Admit::Permit(permit) => return Ok(permit),
                Admit::Share => {
                    // Counted before making room, so a share connection coming back meanwhile yields (see
                    // `PooledConn::drop`) or is seen idle here.
                    let waiting = WaiterGuard::enter(&self.budget.share_waiters, usize::MAX);
                    let slot = match self.budget.share_slots.clone().try_acquire_owned() {
                        Ok(slot) => slot,
                        Err(TryAcquireError::Closed) => return Err(RouteError::Closed),
                        Err(TryAcquireError::NoPermits) => {
                            router.make_room_in_share(&self.budget, self.client_id);
                            drop(router);
                            metrics::counter!("tenant_pool_share_waits_total").increment(1);
                            // In FIFO order; looking for an idle share tenant now and then (a safety net: share
                            // connections coming back yield to waiters).
                            let acquire = self.budget.share_slots.clone().acquire_owned();
                            tokio::pin!(acquire);
                            loop {
                                tokio::select! {
                                    slot = &mut acquire => break slot.map_err(|_| RouteError::Closed)?,
                                    () = tokio::time::sleep(SHARE_RETRY) => {
                                        let Some(router) = self.router.upgrade() else {
                                            return Err(RouteError::Closed);
                                        };
                                        if self.budget.claim_share_sweep() {
                                            router.make_room_in_share(&self.budget, self.client_id);
                                        }
                                    }
                                }
                            }
                        }
                    };
                    drop(waiting);
                    let Some(router) = self.router.upgrade() else {
                        return Err(RouteError::Closed);
                    };
                    if !router.join_share(&self.budget, self.client_id, slot) {
                        return Err(RouteError::Closed);
                    }
                }
                Admit::Wait => {
                    drop(router);
                    metrics::counter!("tenant_pool_budget_waits_total").increment(1);
                    tokio::select! {
                        acquired = self.budget.permits.clone().acquire_owned() => {
                            let permit = acquired.map_err(|_| RouteError::Closed)?;
                            let router = self.router.upgrade().ok_or(RouteError::Closed)?;
                            if router.has_place(&self.budget, self.client_id) {
                                return Ok(permit);
                            }
                        }
                        () = &mut returned => {}
                        () = tokio::time::sleep(BUDGET_RETRY) => {}
                    }
                }
            }
        }
    }

    /// A budget permit for a tenant that holds connections (it waits for its own when the budget is full) or for
    /// a scan (which holds a scan slot).
    async fn permit(&self, usage: Use) -> Result<OwnedSemaphorePermit, RouteError> {
        loop {
            if let Ok(permit) = self.budget.permits.clone().try_acquire_owned() {
                return Ok(permit);
            }
            // The budget is full. A tenant holding connections waits for one of its own to come back
            // (`acquire` retries the pool); only a scan holding none may close another tenant's idle one.
            let Some(router) = self.router.upgrade() else {
                return Err(RouteError::Closed);
            };
            let held = router.connections_of(self.client_id);
            if held > 0 {
                // A warm tenant may take over a connection whose tenant has gone quiet, never a recently used
                // one (that thrashes). Otherwise everyone in use wants more than the budget holds: fair share.
                if router.evict_stale_idle(self.server_id, self.client_id, STALE_IDLE) {
                    continue;
                }
                router.under_pressure(self.server_id, &self.budget, true);
                return Err(RouteError::Saturated);
            }
            if usage == Use::Request {
                // Its connections are gone meanwhile: `acquire` retries, and the next connect is a cold one.
                return Err(RouteError::Saturated);
            }
            router.under_pressure(self.server_id, &self.budget, false);
            if let Ok(permit) = self.budget.permits.clone().try_acquire_owned() {
                return Ok(permit);
            }
            // Registered before looking for a victim, so a connection returned meanwhile is not missed.
            let returned = self.budget.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            router.evict_for_scan(&self.budget, self.client_id);
            drop(router);
            metrics::counter!("tenant_pool_budget_waits_total").increment(1);
            tokio::select! {
                acquired = self.budget.permits.clone().acquire_owned() => {
                    return acquired.map_err(|_| RouteError::Closed);
                }
                () = &mut returned => {}
                () = tokio::time::sleep(BUDGET_RETRY) => {}
            }
        }
    }
}

impl managed::Manager for TenantManager {
    type Type = TenantConn;
    type Error = RouteError;

    /// Boxed: deadpool's `get` future holds this one inline, and every checkout's future (and so every data
    /// handler's, which axum boxes per request) was sized by the connect path (~4 KB of ~8 KB per request, copied
    /// and allocated on every hit). A connect pays one allocation instead.
    async fn create(&self) -> Result<TenantConn, RouteError> {
        Box::pin(self.connect_new()).await
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

impl TenantManager {
    /// A new connection of the tenant, with its budget permit (see [`managed::Manager::create`]).
    async fn connect_new(&self) -> Result<TenantConn, RouteError> {
        // What the connection is for, and whether the tenant holds none yet (a cold request), from one look at the
        // router (which is not kept across the waits below).
        let (usage, cold) = match self.router.upgrade() {
            Some(router) => {
                let held = router.connections_of(self.client_id);
                // A tenant at its fair-share cap waits for its own connections (the gate in `acquire` normally
                // keeps it from getting here; this covers requests that passed the gate just before the cap
                // dropped).
                if held > 0 && held >= self.budget.fair_cap.load(Ordering::Relaxed) {
                    return Err(RouteError::Saturated);
                }
                (router.usage_of(self.client_id), held == 0)
            }
            None => (Use::Request, false),
        };
        let (permit, scan_slot, reservation) = match usage {
            Use::Request if cold => {
                let reservation = Tally::new(&self.counts, Count::Reserving);
                (self.cold_permit().await?, None, Some(reservation))
            }
            Use::Request => (self.permit(usage).await?, None, None),
            Use::Scan => {
                let slot = self.scan_slot().await?;
                (self.permit(usage).await?, Some(slot), None)
            }
        };
        let connected = self.config.connect(self.tls.clone()).await;
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
            statements: StatementCache::new(self.settings.prepared_statements),
            permit,
            expires_after: self.settings.max_lifetime.mul_f64(jitter),
            scan_slot,
            reservation,
            alive: Some(Tally::new(&self.counts, Count::Alive)),
            user: None,
        })
    }
}
