//! Shared reads: concurrent reads of a tenant at its cap run on the connection another read holds, pipelined on it,
//! instead of waiting for it ([`TenantPools::acquire_shared`]; ARCHITECTURE.md, "Shared reads").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::state::{TenantPool, lock};
use super::{PooledConn, RouteError, TenantPools, TenantRoute, Use};

/// Reads holding one shared connection at most (the one that checked it out included): a read that would wait
/// deeper in the pipeline than this waits for the connection instead.
const SHARED_IN_FLIGHT: usize = 8;
/// Reads that may join one shared connection while it is out, so it returns to its pool (recycled, expired, its
/// tenant's other requests served in turn) however steady the reads are.
const SHARED_JOINS: usize = 64;

/// A connection lent to concurrent reads of one tenant ([`TenantPools::acquire_shared`]); returns to its pool
/// when the last of them drops it.
#[derive(Clone)]
pub struct SharedConn(Arc<SharedHold>);

/// The connection behind a [`SharedConn`], and how many reads joined it.
pub(super) struct SharedHold {
    conn: PooledConn,
    joins: AtomicUsize,
}

impl SharedConn {
    /// A connection of its own as a `SharedConn` that no other read joins.
    pub fn alone(conn: PooledConn) -> Self {
        Self(Arc::new(SharedHold::new(conn)))
    }
}

impl SharedHold {
    fn new(conn: PooledConn) -> Self {
        Self {
            conn,
            joins: AtomicUsize::new(0),
        }
    }
}

impl std::ops::Deref for SharedConn {
    type Target = PooledConn;

    fn deref(&self) -> &PooledConn {
        &self.0.conn
    }
}

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConn")
            .field("readers", &Arc::strong_count(&self.0))
            .finish_non_exhaustive()
    }
}

impl TenantPools {
    /// A connection for a request that only reads, and only by single statements in autocommit (no transaction, no
    /// `COPY`, no session setting): another such request of the tenant may run its statements on the same
    /// connection at the same time. tokio-postgres pipelines them (a query is sent while earlier ones run;
    /// PostgreSQL answers in order), and each statement is its own transaction, as it would be on a connection of
    /// its own. A [`SharedConn`] only lends the connection (`&`), so nothing that needs it alone (an inner
    /// client's transaction, [`PooledConn::abandon`]) can be done through it.
    ///
    /// A read joins a connection another read holds only where it would otherwise wait for that very
    /// connection: it is the tenant's one connection and out, the tenant is at its cap (so may not open another),
    /// nobody waits for it already (so a write queued at the gate is not overtaken), and it is not a share
    /// connection that cold requests are waiting for; at most `SHARED_IN_FLIGHT` (8) reads hold it at once and
    /// `SHARED_JOINS` (64) joins per checkout. Otherwise it is [`Self::acquire`]. A join is recorded as a warm acquire
    /// that took no time (`tenant_pool_acquire_seconds`): its wait is in its statement, behind those sent before.
    pub async fn acquire_shared(&self, route: &TenantRoute) -> Result<SharedConn, RouteError> {
        let tenant = self.inner.tenant(route)?;
        if !self.inner.settings.shared_reads {
            let conn = self.acquire_from(tenant, route, Use::Request).await?;
            return Ok(SharedConn::alone(conn));
        }
        if let Some(joined) = self.join(&tenant, route) {
            return Ok(joined);
        }
        let hold = Arc::new(SharedHold::new(
            self.acquire_from(tenant, route, Use::Request).await?,
        ));
        *lock(&hold.conn.tenant.shared) = Arc::downgrade(&hold);
        Ok(SharedConn(hold))
    }

    /// The connection another read of the tenant holds, if this read may join it (see [`Self::acquire_shared`]).
    fn join(&self, tenant: &TenantPool, route: &TenantRoute) -> Option<SharedConn> {
        // One connection, out, at the tenant's cap: a request would wait for this very connection (with two or
        // more it gets whichever comes back first, which a read queued behind one slow statement would not;
        // found in review), and a connect in progress (counted) would be another one to wait for.
        let waits = tenant.counts.connections() == 1
            && tenant.counts.idle() == 0
            && tenant.gate.available_permits() == 0
            && tenant.own_waiters.load(Ordering::SeqCst) == 0
            && !(tenant.in_share.load(Ordering::SeqCst)
                && tenant.budget.share_waiters.load(Ordering::SeqCst) > 0);
        if !waits {
            return None;
        }
        let hold = lock(&tenant.shared).upgrade()?;
        if Arc::strong_count(&hold) > SHARED_IN_FLIGHT
            || hold.conn.client.is_closed()
            || hold.joins.fetch_add(1, Ordering::Relaxed) >= SHARED_JOINS
        {
            return None;
        }
        // Served as a warm request is: counted in the policy's sketch and refreshed in its region.
        {
            let mut policy = lock(&tenant.budget.policy);
            policy.count(route.client_id);
            policy.record(route.client_id, Use::Request, false);
        }
        tenant.note_served();
        tenant.touch();
        let handles = self.inner.metrics();
        handles.acquire_seconds.record(0.0);
        handles.warm.increment(1);
        handles.joined.increment(1);
        self.inner.warm.fetch_add(1, Ordering::Relaxed);
        self.inner.joined.fetch_add(1, Ordering::Relaxed);
        Some(SharedConn(hold))
    }
}
