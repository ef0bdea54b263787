//! The routing pool's limits and timings ([`PoolSettings`], from the `[routing]` configuration).

use std::time::Duration;

use super::policy;
use crate::config::RoutingSettings;

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
    /// Connections that work visiting many tenants (`Use::Scan`) may take from others when the budget is full.
    pub scan_share: usize,
    /// Fixed statements are kept prepared on each connection (see [`crate::tenant::statements`]).
    pub prepared_statements: bool,
    /// Concurrent reads of one tenant may share a busy connection instead of waiting for one (see
    /// [`super::TenantPools::acquire_shared`]).
    pub shared_reads: bool,
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
            scan_share: 10,
            prepared_statements: true,
            shared_reads: true,
        }
    }
}

impl PoolSettings {
    /// The admission policy's regions for this budget (see [`policy::Shares::for_budget`]).
    pub fn shares(&self) -> policy::Shares {
        policy::Shares::for_budget(self.budget_per_server, policy::SAMPLE_FACTOR)
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
            scan_share: s.scan_share,
            prepared_statements: s.prepared_statements,
            shared_reads: s.shared_reads,
        }
    }
}
