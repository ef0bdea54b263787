//! One tenant's pool: closing, its cap under fair shares, idle connections, the share, served times, its gate and
//! breaker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::state::*;
use super::*;

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
        self.take_one_idle().is_some()
    }

    /// Takes one idle connection out of the pool (dropping it closes it and frees its permit).
    pub(super) fn take_one_idle(&self) -> Option<TenantConn> {
        let mut taken = false;
        let removed = self.pool.retain(|_, _| {
            let keep = taken;
            taken = true;
            keep
        });
        removed.removed.into_iter().next().map(|mut conn| {
            conn.leave_pool();
            conn
        })
    }

    /// Gives the tenant's share slot back, if it holds one (it left the window).
    pub(super) fn leave_share(&self) {
        self.in_share.store(false, Ordering::Release);
        drop(lock(&self.share_slot).take());
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
    /// Returns whether the permit went back to the gate (it is forgotten while the cap is being lowered).
    pub(super) fn release_gate(&self, permit: OwnedSemaphorePermit) -> bool {
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
        !owed
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
