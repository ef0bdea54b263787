//! The route cache: slug → client record and route, so a busy tenant does not cost a control-plane query per
//! request (the rules it keeps are in the data plane's module documentation), and what a lookup in it found
//! ([`Resolved`]).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::control::clients::ClientRecord;
use crate::domain::ClientStatus;
use crate::domain::FastMap;
use crate::tenant::pool::TenantRoute;

/// How long a cached route is trusted at most, although every change is notified: a safety net for a
/// notification lost in a way the listener's ping does not notice.
pub const ROUTE_SAFETY_TTL: Duration = Duration::from_secs(300);

/// What [`super::DataPlane::resolve`] found: a client, its route once placed (while the listener was up), when the entry
/// was fetched, and the route cache's generation then. Only the data plane reads the route, for the very client it
/// was found with.
#[derive(Clone)]
pub struct Resolved {
    pub(super) client: Arc<ClientRecord>,
    pub(super) route: Option<Arc<TenantRoute>>,
    pub(super) fetched: Instant,
    pub(super) generation: u64,
}

impl Resolved {
    /// A client known without its route (found some other way): a connection for it looks the client up afresh.
    pub fn unrouted(client: Arc<ClientRecord>) -> Self {
        Self {
            client,
            route: None,
            fetched: Instant::now(),
            generation: 0,
        }
    }

    /// The client found.
    pub fn client(&self) -> &Arc<ClientRecord> {
        &self.client
    }
}

/// slug → (fetched at, client, route once placed); shared, so a hit costs two reference counts, not copies.
pub(super) type Routed = (Instant, Arc<ClientRecord>, Option<Arc<TenantRoute>>);

#[derive(Default)]
pub(super) struct RouteCache {
    entries: Mutex<FastMap<String, Routed>>,
    /// Whether the clients listener is up (the cache serves only then).
    pub(super) listening: AtomicBool,
    /// Bumped by every invalidation.
    pub(super) generation: AtomicU64,
    /// Woken by every invalidation (requests waiting for a move's switch look again at once).
    pub(super) changed: tokio::sync::Notify,
}

impl RouteCache {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<String, Routed>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every invalidation: `edit` the entries, then bump the generation, under the map's lock. Whoever reads the
    /// new generation cannot then find a removed entry (`DataPlane::resolve` relies on it), and a load that began
    /// before sees the bump when it comes to insert (`DataPlane::load`).
    pub(super) fn invalidate(&self, edit: impl FnOnce(&mut FastMap<String, Routed>)) {
        let mut entries = self.lock();
        edit(&mut entries);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn clear(&self) {
        self.invalidate(FastMap::clear);
        self.changed.notify_waiters();
    }

    pub(super) fn remove(&self, slug: &str) {
        self.invalidate(|entries| {
            entries.remove(slug);
        });
        self.changed.notify_waiters();
    }

    /// Forgets the routes of a client's inner clients (they lead to its database).
    pub(super) fn remove_children(&self, parent: uuid::Uuid) {
        self.invalidate(|entries| {
            entries.retain(|_, (_, client, _)| {
                !(client.is_inner() && client.parent_id == Some(parent))
            })
        });
    }

    /// Whether `resolved`'s route may still be used as it is: the route cache has not changed since, is kept
    /// current by notifications, and the client is active and not being moved.
    pub(super) fn current(&self, resolved: &Resolved) -> bool {
        self.generation.load(Ordering::Acquire) == resolved.generation
            && self.listening.load(Ordering::Acquire)
            && resolved.fetched.elapsed() < ROUTE_SAFETY_TTL
            && resolved.client.status == ClientStatus::Active
            && !resolved.client.frozen
    }

    /// An active client's route, while the listener is up and the entry is young enough.
    pub(super) fn get(&self, slug: &str) -> Option<Routed> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        self.lock()
            .get(slug)
            .filter(|(at, client, route)| {
                at.elapsed() < ROUTE_SAFETY_TTL
                    && client.status == ClientStatus::Active
                    && !client.frozen
                    && route.is_some()
            })
            .cloned()
    }
}
