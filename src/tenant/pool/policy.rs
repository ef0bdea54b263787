//! Which tenants keep their connections when a server's budget is full: W-TinyLFU, as Caffeine and moka do it for
//! cache entries, applied to tenants holding connections, with the window as a *hard* share of the budget.
//!
//! - Every request of a tenant's own is counted in a **frequency sketch** (count-min, 4 rows of 4-bit counters,
//!   conservative update) whose counters are all halved after a sample of `sample_factor × budget` counted
//!   requests, so popularity ages and a tenant that was hot an hour ago does not stay for ever. A request is
//!   counted *before* any decision about it, so a cold tenant competes with the frequency its own request adds.
//! - The budget is split into the **main** region (a segmented LRU: *probation*, and *protected*, 80% of main)
//!   and the **share** (the *window*: `window` tenants, 10% of the budget, at least 1), plus the scans' own share.
//!   A cold tenant (no connection) whose request finds the budget full enters main only by **admission**: the
//!   sketch counts it as used more often than main's *victim* (its least frequent idle probation tenant, else its
//!   least recently used idle protected one), whose connection then closes and passes its permit on. While main
//!   is under its share it enters without comparison. Otherwise it has lost admission and is served from the
//!   share: it takes one of the share's `window` slots (waiting for one in FIFO order if all are taken), and never
//!   makes a main tenant give way, so a burst of cold tenants cannot erode the hot set.
//! - The share makes room for the next cold tenant as W-TinyLFU's window does: its least recently used tenants are
//!   *candidates* against main's victim; a candidate used more often than the victim moves into main (a label:
//!   even a busy one) and the victim closes, otherwise an idle candidate closes. While cold tenants wait for the
//!   share, a share tenant's connection serves one request and is then closed ([`Admission::on_return`], unless
//!   the tenant wins its way into main right then), so a wait for the share is bounded by one request of each of
//!   the `window` tenants ahead in the queue.
//! - Main's membership therefore changes only by those comparisons, while main is under its share, when a scan's
//!   share grows (main's share is the budget minus the window minus the connections scans hold), and when a
//!   tenant of main has gone quiet and loses its connections to garbage collection.
//! - Work that visits many tenants once (`Use::Scan`: fan-out, cross-client queries, statistics) is never
//!   counted: its connections form a **scan** region, evicted first by anyone, that may grow by evicting
//!   others only up to its share of the budget; beyond that share a scan reuses its own idle connections or
//!   waits for them.
//!
//! Regions are labels on tenants, not separate pools: moving a tenant between regions costs nothing, and a
//! victim must have an idle connection (a busy one cannot be closed, so the next one in order is taken). The
//! structure is pure (no connections, no clock, no semaphores: the pool holds the share's slots and asks
//! [`Holding`] of each tenant), so the route benchmark and the tests below replay traces through it.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};

use super::Use;

/// The sketch ages every `SAMPLE_FACTOR × budget` counted requests. Replays of a Zipf trace (500 tenants, budget
/// 40) and of one whose hot set rotates (the tests below), with the first version of this policy: 10 → 0.679/0.675
/// hit ratio, 32 → 0.695/0.684, 64 → 0.691/0.679, 256 → 0.696/0.196 (the 4-bit counters saturate before they
/// age, so the policy stops adapting).
pub const SAMPLE_FACTOR: usize = 32;

/// The regions a tenant holding connections is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Window,
    Probation,
    Protected,
    Scan,
}

/// Whose idle connection closes, and how that was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eviction<K> {
    pub victim: K,
    pub decision: Decision,
    /// A share tenant that moved into main by the same decision (its share slot is free now).
    pub promoted: Option<K>,
}

impl<K> Eviction<K> {
    fn of(victim: K, decision: Decision) -> Self {
        Self {
            victim,
            decision,
            promoted: None,
        }
    }
}

/// How a victim was chosen (the `decision` label of `tenant_pool_admission_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An idle connection a scan opened (everyone's first victim), or a scan's own choice.
    Scan,
    /// The main region was over its share (a scan's share grew, or main filled while the share was empty) and
    /// gave way to a tenant of the share.
    MainOver,
    /// A share tenant was used more often than main's victim: it moved into main and the victim closed.
    Admitted,
    /// A share tenant was not: it closed to make room in the share.
    Rejected,
    /// A share tenant closed to make room in the share; main had no idle victim to compare it with.
    Window,
    /// The cold tenant itself was used more often than main's victim: the victim closed and the cold tenant
    /// took its place (and its permit).
    Newcomer,
    /// A share tenant's connection came back while cold tenants waited for the share: it closed.
    Yielded,
}

impl Decision {
    pub const ALL: [Decision; 7] = [
        Decision::Scan,
        Decision::MainOver,
        Decision::Admitted,
        Decision::Rejected,
        Decision::Window,
        Decision::Newcomer,
        Decision::Yielded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Decision::Scan => "scan",
            Decision::MainOver => "main_over",
            Decision::Admitted => "admitted",
            Decision::Rejected => "rejected",
            Decision::Window => "window",
            Decision::Newcomer => "newcomer",
            Decision::Yielded => "yielded",
        }
    }
}

/// What the pool knows about a tenant's connections at a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// Connections, including those being opened (a reservation counts as a connection).
    pub connections: usize,
    pub idle: usize,
}

/// Where the connection of a cold request (its tenant holds none, the budget may be full) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<K> {
    /// The tenant has a place in `region` (main has room, or it holds a share slot): a free permit of the budget,
    /// else the permit of `evict`'s victim, else it waits for one to be freed.
    Room {
        region: Region,
        evict: Option<Eviction<K>>,
    },
    /// Admitted over main's victim: the victim's idle connection closes and its permit passes to the tenant.
    Displace(Eviction<K>),
    /// It lost admission: it waits for a slot of the share (then asks again).
    Share,
}

/// Sizes of the regions derived from the budget: the share in tenants (one slot each), main and protected in
/// connections and tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    pub window: usize,
    pub main: usize,
    pub protected: usize,
    /// Counted requests after which every frequency is halved.
    pub sample: u32,
}

impl Shares {
    /// The share is 10% of the budget (at least 1), main the rest, the protected segment 80% of main; the sketch ages
    /// every `sample_factor × budget` requests. (Caffeine starts its window at 1% and adapts it; here cold tenants
    /// arrive concurrently and each holds its share slot for a whole connect, so the share is sized for that:
    /// see ARCHITECTURE.md for the measurements.)
    pub fn for_budget(budget: usize, sample_factor: usize) -> Self {
        let budget = budget.max(1);
        let window = (budget / 10).clamp(1, budget);
        Self::with_window(budget, window, sample_factor)
    }

    /// As [`Self::for_budget`] with a share of `window` tenants (1..=budget).
    pub fn with_window(budget: usize, window: usize, sample_factor: usize) -> Self {
        let budget = budget.max(1);
        let window = window.clamp(1, budget);
        let main = budget - window;
        Self {
            window,
            main,
            protected: (main * 4 / 5).max(1),
            sample: u32::try_from(budget.saturating_mul(sample_factor.max(1)))
                .unwrap_or(u32::MAX)
                .max(16),
        }
    }
}

/// The admission and eviction policy of one server's budget.
pub struct Admission<K> {
    sketch: FrequencySketch,
    hasher: crate::domain::FastHasher,
    entries: crate::domain::FastMap<K, (Region, u64)>,
    window: BTreeMap<u64, K>,
    probation: BTreeMap<u64, K>,
    protected: BTreeMap<u64, K>,
    scan: BTreeMap<u64, K>,
    tick: u64,
    shares: Shares,
}

impl<K: Copy + Eq + Hash> Admission<K> {
    pub fn new(shares: Shares) -> Self {
        // Wide enough that the tenants competing for a budget rarely share all four counters.
        let width = (shares.main + shares.window).saturating_mul(16).max(1024);
        Self {
            sketch: FrequencySketch::new(width, shares.sample),
            hasher: crate::domain::FastHasher::default(),
            entries: crate::domain::FastMap::default(),
            window: BTreeMap::new(),
            probation: BTreeMap::new(),
            protected: BTreeMap::new(),
            scan: BTreeMap::new(),
            tick: 0,
            shares,
        }
    }

    pub fn shares(&self) -> Shares {
        self.shares
    }

    /// The region a tenant is in, if it holds (or is opening) connections.
    pub fn region(&self, key: &K) -> Option<Region> {
        self.entries.get(key).map(|(region, _)| *region)
    }

    /// The tenants of a region, least recently used first.
    pub fn members(&self, region: Region) -> Vec<K> {
        self.list(region).values().copied().collect()
    }

    /// Tenants in a region.
    pub fn len(&self, region: Region) -> usize {
        self.list(region).len()
    }

    /// The sketch's estimate of how often a tenant was used recently (0-15).
    pub fn frequency(&self, key: &K) -> u8 {
        self.sketch.frequency(self.hasher.hash_one(key))
    }

    /// Counts a request of `key` in the sketch (before anything is decided about it).
    pub fn count(&mut self, key: K) {
        self.sketch.increment(self.hasher.hash_one(key));
    }

    /// A connection was handed out for `key` (the request was counted already; `fresh`: it was just opened). A
    /// request refreshes the tenant's place: a share tenant moves to the share's most recently used end, a main tenant to protected (from
    /// probation: promoted), a tenant whose connection a scan opened into main's probation segment (its
    /// connection left the scans' share, so main's share grew by it). A scan changes nothing, except that a
    /// tenant not in any region enters the scan region.
    pub fn record(&mut self, key: K, usage: Use, fresh: bool) {
        if usage == Use::Scan {
            if !self.entries.contains_key(&key) {
                self.place(key, Region::Scan);
            }
            return;
        }
        match self.region(&key) {
            Some(Region::Window) => self.place(key, Region::Window),
            None | Some(Region::Scan) => self.place(key, Region::Probation),
            // Placed in main by admission just now: promoted when used again.
            Some(Region::Probation | Region::Protected) if fresh => {}
            Some(Region::Probation | Region::Protected) => {
                self.place(key, Region::Protected);
                while self.protected.len() > self.shares.protected {
                    let Some((_, demoted)) = self.protected.pop_first() else {
                        break;
                    };
                    self.entries.remove(&demoted);
                    self.place(demoted, Region::Probation);
                }
            }
        }
    }

    /// The tenant took a slot of the share: it enters the window (before it connects).
    pub fn join_share(&mut self, key: K) {
        self.place(key, Region::Window);
    }

    /// The tenant holds no connection any more.
    pub fn forget(&mut self, key: &K) {
        if let Some((region, tick)) = self.entries.remove(key) {
            self.list_mut(region).remove(&tick);
        }
    }

    /// Forgets the tenants `gone` says hold no connection any more; returns them (the pool frees their share slots).
    pub fn prune(&mut self, mut gone: impl FnMut(&K) -> bool) -> Vec<K> {
        let keys: Vec<K> = self.entries.keys().filter(|k| gone(k)).copied().collect();
        for k in &keys {
            self.forget(k);
        }
        keys
    }

    /// Connections per region: window, main (probation and protected), scan.
    fn connections(&self, holding: &mut dyn FnMut(&K) -> Holding) -> (usize, usize, usize) {
        let sum = |list: &BTreeMap<u64, K>, holding: &mut dyn FnMut(&K) -> Holding| {
            list.values().map(|k| holding(k).connections).sum::<usize>()
        };
        (
            sum(&self.window, holding),
            sum(&self.probation, holding) + sum(&self.protected, holding),
            sum(&self.scan, holding),
        )
    }

    /// Main's share of the budget in connections: the budget minus the share minus what scans hold.
    fn main_share(&self, scan_connections: usize) -> usize {
        self.shares.main.saturating_sub(scan_connections)
    }

    /// The cold request of `key` (it holds no connection; the pool counts a reservation for it) needs a connection:
    /// where from. A tenant in the share (it holds a slot) or already placed in main (it is waiting for its
    /// permit) has its place; so does any tenant while main is under its share. Otherwise it is compared with
    /// main's victim: more frequent, it displaces it; not, it lost admission and waits for the share.
    ///
    /// A tenant with a place takes a free permit, else the permit of: an idle scan connection; for the share,
    /// main's victim when main is over its share (a scan's share shrank, main filled while the share was empty);
    /// an idle tenant of the share when the share holds more connections than slots (caps above one).
    pub fn entry(&mut self, key: &K, mut holding: impl FnMut(&K) -> Holding) -> Entry<K> {
        let (window, main, scan) = self.connections(&mut holding);
        let mut idle = |k: &K| k != key && holding(k).idle > 0;
        let scan_idle = self.first_idle(Region::Scan, &mut idle);
        let region = match self.region(key) {
            Some(Region::Window) => Some(Region::Window),
            Some(Region::Probation | Region::Protected) => Some(Region::Probation),
            // Main has room: it fills without comparison.
            _ if main < self.main_share(scan) => {
                self.place(*key, Region::Probation);
                Some(Region::Probation)
            }
            _ => None,
        };
        if let Some(region) = region {
            let evict = scan_idle
                .map(|v| Eviction::of(v, Decision::Scan))
                .or_else(|| {
                    (region == Region::Window && main > self.main_share(scan))
                        .then(|| self.main_victim(&mut idle))
                        .flatten()
                        .map(|(v, _)| Eviction::of(v, Decision::MainOver))
                })
                .or_else(|| {
                    (window > self.shares.window)
                        .then(|| self.first_idle(Region::Window, &mut idle))
                        .flatten()
                        .map(|v| Eviction::of(v, Decision::Window))
                });
            return Entry::Room { region, evict };
        }
        match self.main_victim(&mut idle) {
            Some((victim, _)) if self.frequency(key) > self.frequency(&victim) => {
                self.place(*key, Region::Probation);
                Entry::Displace(Eviction::of(victim, Decision::Newcomer))
            }
            _ => Entry::Share,
        }
    }

    /// A cold tenant lost admission and every slot of the share is taken: which share tenant makes room (the slot
    /// goes to the first tenant waiting for one). The share's tenants, least recently used first, are candidates
    /// against main's victim: one used more often moves into main (even a busy one: a label) and the victim
    /// closes; else the first idle candidate closes. `None`: every share tenant is busy; one will yield its
    /// connection when it comes back ([`Self::on_return`]).
    pub fn make_room_in_share(
        &mut self,
        key: &K,
        mut holding: impl FnMut(&K) -> Holding,
    ) -> Option<Eviction<K>> {
        let mut idle = |k: &K| k != key && holding(k).idle > 0;
        let victim = self.main_victim(&mut idle).map(|(v, _)| v);
        let candidates: Vec<K> = self.window.values().copied().filter(|k| k != key).collect();
        for candidate in candidates {
            match victim {
                Some(v) if self.frequency(&candidate) > self.frequency(&v) => {
                    self.place(candidate, Region::Probation);
                    return Some(Eviction {
                        victim: v,
                        decision: Decision::Admitted,
                        promoted: Some(candidate),
                    });
                }
                Some(_) if idle(&candidate) => {
                    return Some(Eviction::of(candidate, Decision::Rejected));
                }
                None if idle(&candidate) => return Some(Eviction::of(candidate, Decision::Window)),
                _ => {}
            }
        }
        None
    }

    /// A connection of `key`, a share tenant, came back while cold tenants wait for the share: `key` moves into
    /// main if used more often than main's victim (which closes instead), else its own idle connection closes.
    pub fn on_return(&mut self, key: &K, mut holding: impl FnMut(&K) -> Holding) -> Eviction<K> {
        let mut idle = |k: &K| k != key && holding(k).idle > 0;
        match self.main_victim(&mut idle) {
            Some((v, _)) if self.frequency(key) > self.frequency(&v) => {
                self.place(*key, Region::Probation);
                Eviction {
                    victim: v,
                    decision: Decision::Admitted,
                    promoted: Some(*key),
                }
            }
            _ => Eviction::of(*key, Decision::Yielded),
        }
    }

    /// A scan that holds its whole share needs a connection: the scan region's least recently used idle tenant,
    /// if any (a scan then reuses its own connections instead of taking more from others).
    pub fn scan_victim(&mut self, key: &K, mut holding: impl FnMut(&K) -> Holding) -> Option<K> {
        self.scan
            .values()
            .find(|k| *k != key && holding(k).idle > 0)
            .copied()
    }

    /// The budget is full and a scan (which holds one of the scans' slots, see [`Self::scan_victim`]) needs a
    /// connection for `key`: idle scan connections, then the share's, main's probation segment's and the protected
    /// segment's idle tenants, in that order.
    pub fn victim_for_scan(
        &mut self,
        key: &K,
        mut holding: impl FnMut(&K) -> Holding,
    ) -> Option<Eviction<K>> {
        let mut idle = |k: &K| k != key && holding(k).idle > 0;
        self.first_idle(Region::Scan, &mut idle)
            .or_else(|| self.first_idle(Region::Window, &mut idle))
            .or_else(|| self.least_used_idle(Region::Probation, &mut idle))
            .or_else(|| self.first_idle(Region::Protected, &mut idle))
            .map(|v| Eviction::of(v, Decision::Scan))
    }

    /// Main's victim and whether it is from the protected segment: the least frequent idle probation tenant, else
    /// the least recently used idle protected one.
    fn main_victim(&self, idle: &mut dyn FnMut(&K) -> bool) -> Option<(K, bool)> {
        self.least_used_idle(Region::Probation, idle)
            .map(|v| (v, false))
            .or_else(|| self.first_idle(Region::Protected, idle).map(|v| (v, true)))
    }

    fn first_idle(&self, region: Region, idle: &mut dyn FnMut(&K) -> bool) -> Option<K> {
        self.list(region).values().find(|k| idle(k)).copied()
    }

    /// The idle tenant of `region` with the lowest frequency (the least recently used among equals).
    fn least_used_idle(&self, region: Region, idle: &mut dyn FnMut(&K) -> bool) -> Option<K> {
        let mut best: Option<(u8, K)> = None;
        for k in self.list(region).values() {
            if !idle(k) {
                continue;
            }
            let f = self.frequency(k);
            if best.is_none_or(|(b, _)| f < b) {
                best = Some((f, *k));
            }
        }
        best.map(|(_, k)| k)
    }

    /// Puts `key` at the most recently used end of `region`.
    fn place(&mut self, key: K, region: Region) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((old, old_tick)) = self.entries.insert(key, (region, tick)) {
            self.list_mut(old).remove(&old_tick);
        }
        self.list_mut(region).insert(tick, key);
    }

    fn list(&self, region: Region) -> &BTreeMap<u64, K> {
        match region {
            Region::Window => &self.window,
            Region::Probation => &self.probation,
            Region::Protected => &self.protected,
            Region::Scan => &self.scan,
        }
    }

    fn list_mut(&mut self, region: Region) -> &mut BTreeMap<u64, K> {
        match region {
            Region::Window => &mut self.window,
            Region::Probation => &mut self.probation,
            Region::Protected => &mut self.protected,
            Region::Scan => &mut self.scan,
        }
    }
}

/// A count-min sketch of 4 rows of 4-bit counters (kept in bytes: a few KiB per server), with conservative
/// update (only the smallest counters grow, which tightens the estimate) and aging (after `sample` counted
/// increments every counter is halved).
struct FrequencySketch {
    counters: Vec<u8>,
    mask: usize,
    added: u32,
    sample: u32,
}

/// Odd multipliers that spread one 64-bit hash over the four rows.
const ROW_SEEDS: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0xd6e8_feb8_6659_fd93,
];

impl FrequencySketch {
    fn new(width: usize, sample: u32) -> Self {
        let width = width.next_power_of_two();
        Self {
            counters: vec![0; width * ROW_SEEDS.len()],
            mask: width - 1,
            added: 0,
            sample: sample.max(1),
        }
    }

    fn index(&self, hash: u64, row: usize) -> usize {
        let mixed = (hash ^ (hash >> 29)).wrapping_mul(ROW_SEEDS[row]);
        row * (self.mask + 1) + ((mixed >> 32) as usize & self.mask)
    }

    fn frequency(&self, hash: u64) -> u8 {
        (0..ROW_SEEDS.len())
            .map(|row| self.counters[self.index(hash, row)])
            .min()
            .unwrap_or(0)
    }

    fn increment(&mut self, hash: u64) {
        let current = self.frequency(hash);
        if current >= 15 {
            return;
        }
        for row in 0..ROW_SEEDS.len() {
            let i = self.index(hash, row);
            if self.counters[i] == current {
                self.counters[i] += 1;
            }
        }
        self.added += 1;
        if self.added >= self.sample {
            for c in &mut self.counters {
                *c >>= 1;
            }
            self.added /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A sequential replay: every tenant holds at most one connection, idle between its requests; scans hold at
    /// most `scan_share` connections, as the pool's scan slots make them.
    struct Replay {
        policy: Admission<u32>,
        held: HashSet<u32>,
        budget: usize,
        scan_share: usize,
        hits: u64,
        requests: u64,
    }

    impl Replay {
        fn new(budget: usize, scan: usize) -> Self {
            Self {
                policy: Admission::new(Shares::for_budget(budget, SAMPLE_FACTOR)),
                held: HashSet::new(),
                budget,
                scan_share: scan,
                hits: 0,
                requests: 0,
            }
        }

        fn access(&mut self, tenant: u32, usage: Use) -> bool {
            let hit = self.held.contains(&tenant);
            if usage == Use::Request {
                self.policy.count(tenant);
                self.requests += 1;
                self.hits += u64::from(hit);
            }
            if hit {
                self.policy.record(tenant, usage, false);
                return true;
            }
            // The cold tenant holds a reservation from here on (one connection, not idle).
            let held = self.held.clone();
            let holding = move |k: &u32| {
                let n = usize::from(held.contains(k));
                Holding {
                    connections: if *k == tenant { 1 } else { n },
                    idle: n,
                }
            };
            let evicted = if usage == Use::Scan {
                if self.policy.len(Region::Scan) >= self.scan_share {
                    self.policy
                        .scan_victim(&tenant, holding)
                        .map(|v| Eviction::of(v, Decision::Scan))
                } else if self.held.len() >= self.budget {
                    self.policy.victim_for_scan(&tenant, holding)
                } else {
                    None
                }
            } else {
                loop {
                    match self.policy.entry(&tenant, holding.clone()) {
                        Entry::Room { evict, .. } => {
                            break if self.held.len() < self.budget {
                                None
                            } else {
                                assert!(evict.is_some(), "a tenant with a place gets a permit");
                                evict
                            };
                        }
                        Entry::Displace(eviction) => break Some(eviction),
                        Entry::Share => {
                            if self.policy.len(Region::Window) >= self.policy.shares().window {
                                let room = self
                                    .policy
                                    .make_room_in_share(&tenant, holding.clone())
                                    .expect("sequentially, share tenants are idle");
                                self.close(room);
                            }
                            self.policy.join_share(tenant);
                        }
                    }
                }
            };
            if let Some(eviction) = evicted {
                self.close(eviction);
            }
            assert!(self.held.len() < self.budget, "no victim for a cold tenant");
            self.held.insert(tenant);
            self.policy.record(tenant, usage, true);
            false
        }

        fn close(&mut self, eviction: Eviction<u32>) {
            assert!(self.held.remove(&eviction.victim), "{eviction:?}");
            self.policy.forget(&eviction.victim);
        }

        fn hit_ratio(&self) -> f64 {
            self.hits as f64 / self.requests.max(1) as f64
        }
    }

    fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|i| {
                acc += 1.0 / (i as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        cdf
    }

    fn sample(cdf: &[f64], rng: &mut StdRng) -> u32 {
        let u: f64 = rng.random();
        cdf.partition_point(|c| *c < u).min(cdf.len() - 1) as u32
    }

    fn lru_hit_ratio(trace: &[u32], warm: usize, capacity: usize) -> f64 {
        let mut stamp: HashMap<u32, usize> = HashMap::new();
        let mut hits = 0;
        for (i, t) in trace.iter().enumerate() {
            let hit = stamp.contains_key(t);
            stamp.insert(*t, i);
            if stamp.len() > capacity {
                let (&old, _) = stamp.iter().min_by_key(|(_, at)| **at).expect("full");
                stamp.remove(&old);
            }
            if i >= warm && hit {
                hits += 1;
            }
        }
        hits as f64 / (trace.len() - warm) as f64
    }

    #[test]
    fn on_a_zipf_trace_the_policy_comes_close_to_a_static_cache_of_the_most_popular_tenants() {
        let (n, budget) = (500, 40);
        let cdf = zipf_cdf(n, 1.1);
        let mut rng = StdRng::seed_from_u64(7);
        let trace: Vec<u32> = (0..200_000).map(|_| sample(&cdf, &mut rng)).collect();
        let mut replay = Replay::new(budget, 10);
        for t in &trace[..50_000] {
            replay.access(*t, Use::Request);
        }
        let (hits, requests) = (replay.hits, replay.requests);
        for t in &trace[50_000..] {
            replay.access(*t, Use::Request);
        }
        let ratio = (replay.hits - hits) as f64 / (replay.requests - requests) as f64;
        let top_k = trace[50_000..]
            .iter()
            .filter(|t| (**t as usize) < budget)
            .count() as f64
            / (trace.len() - 50_000) as f64;
        let lru = lru_hit_ratio(&trace, 50_000, budget);
        assert!(
            ratio >= top_k - 0.03 && ratio > lru + 0.05,
            "policy {ratio:.3}, static top-k {top_k:.3}, LRU {lru:.3}"
        );
    }

    #[test]
    fn when_the_hot_set_rotates_the_policy_adapts_about_as_fast_as_lru() {
        let (n, budget) = (500, 40);
        let cdf = zipf_cdf(n, 1.1);
        let mut rng = StdRng::seed_from_u64(11);
        // The ranks map to a different slice of tenants every 20,000 requests.
        let trace: Vec<u32> = (0..200_000)
            .map(|i| (sample(&cdf, &mut rng) + (i / 20_000) as u32 * 97) % n as u32)
            .collect();
        let mut replay = Replay::new(budget, 10);
        for t in &trace {
            replay.access(*t, Use::Request);
        }
        let lru = lru_hit_ratio(&trace, 0, budget);
        assert!(
            replay.hit_ratio() >= lru - 0.05,
            "policy {:.3}, LRU {lru:.3}",
            replay.hit_ratio()
        );
    }

    #[test]
    fn a_scan_over_every_tenant_takes_no_more_than_its_share_from_the_hot_tenants() {
        let budget = 40;
        let mut replay = Replay::new(budget, 4);
        // 40 hot tenants, each used often.
        for round in 0..50 {
            for t in 0..40u32 {
                replay.access(t, Use::Request);
                let _ = round;
            }
        }
        // A scan over 1,000 other tenants.
        for t in 1_000..2_000u32 {
            replay.access(t, Use::Scan);
        }
        let hot_kept = (0..40u32).filter(|t| replay.held.contains(t)).count();
        assert!(hot_kept >= 36, "hot tenants kept: {hot_kept}");
        assert!(replay.policy.len(Region::Scan) <= 4);
    }

    #[test]
    fn a_burst_of_cold_tenants_cycles_through_the_window_and_leaves_the_main_region_alone() {
        // Budget 20: a window of 2, a main region of 18 that the hot tenants fill.
        let budget = 20;
        let mut replay = Replay::new(budget, 4);
        for _ in 0..30 {
            for t in 0..18u32 {
                replay.access(t, Use::Request);
            }
        }
        // Every cold tenant is served (each gets a connection) ...
        for t in 100..600u32 {
            assert!(!replay.access(t, Use::Request));
            assert!(replay.held.contains(&t));
        }
        // ... and the hot ones kept theirs.
        let hot_kept = (0..18u32).filter(|t| replay.held.contains(t)).count();
        assert_eq!(hot_kept, 18);
    }

    /// Budget 10: a share of 1 slot and a main region of 9, filled with tenants 0..9 (each used `uses` times),
    /// plus tenant 100 in the share. `busy` tenants' connections are in use.
    fn full_budget(uses: usize) -> Admission<u32> {
        let mut policy = Admission::new(Shares::for_budget(10, SAMPLE_FACTOR));
        for t in 0..9u32 {
            for _ in 0..uses {
                policy.count(t);
            }
            assert!(matches!(
                policy.entry(&t, |k| one(*k, &[t])),
                Entry::Room {
                    region: Region::Probation,
                    evict: None
                }
            ));
            policy.record(t, Use::Request, true);
        }
        policy.count(100);
        assert_eq!(policy.entry(&100, |k| one(*k, &[100])), Entry::Share);
        policy.join_share(100);
        policy
    }

    /// Tenants 0..9 and 100 hold one connection each (idle unless `busy`); others hold none, except the
    /// tenant whose request is being decided (a reservation).
    fn one(k: u32, busy: &[u32]) -> Holding {
        let held = k < 9 || k == 100 || busy.contains(&k);
        Holding {
            connections: usize::from(held),
            idle: usize::from(held && !busy.contains(&k)),
        }
    }

    #[test]
    fn a_cold_tenant_that_loses_admission_waits_for_the_share_and_never_displaces_a_main_tenant() {
        let mut policy = full_budget(5);
        // A cold tenant used once: main is full and its victim more frequent, so it goes to the share ...
        policy.count(200);
        assert_eq!(policy.entry(&200, |k| one(*k, &[200])), Entry::Share);
        // ... where, with the share tenant busy, nothing may be closed: it waits, main stays whole.
        assert_eq!(
            policy.make_room_in_share(&200, |k| one(*k, &[200, 100])),
            None
        );
        assert_eq!(
            policy.len(Region::Probation) + policy.len(Region::Protected),
            9
        );
        // Once the share tenant is idle, it makes room (rejected: it was used less often than main's victim).
        let room = policy.make_room_in_share(&200, |k| one(*k, &[200]));
        assert_eq!(room, Some(Eviction::of(100, Decision::Rejected)));
        // A share connection that comes back while others wait closes.
        assert_eq!(
            policy.on_return(&100, |k| one(*k, &[])),
            Eviction::of(100, Decision::Yielded)
        );
    }

    #[test]
    fn a_cold_tenant_used_more_often_than_mains_victim_takes_its_place() {
        let mut policy = full_budget(1);
        for _ in 0..3 {
            policy.count(300);
        }
        match policy.entry(&300, |k| one(*k, &[300])) {
            Entry::Displace(e) => {
                assert_eq!(e.decision, Decision::Newcomer);
                assert!(e.victim < 9, "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(policy.region(&300), Some(Region::Probation));
        // A share tenant that became more frequent than main's victim moves into main when its connection comes
        // back, and the victim closes instead.
        for _ in 0..5 {
            policy.count(100);
        }
        let e = policy.on_return(&100, |k| one(*k, &[]));
        assert_eq!((e.decision, e.promoted), (Decision::Admitted, Some(100)));
        assert_eq!(policy.region(&100), Some(Region::Probation));
    }

    #[test]
    fn aging_halves_the_counts_so_old_popularity_fades() {
        let mut sketch = FrequencySketch::new(1024, 100);
        for _ in 0..10 {
            sketch.increment(42);
        }
        assert_eq!(sketch.frequency(42), 10);
        for i in 0..90u64 {
            sketch.increment(1_000 + i * 7919);
        }
        assert!(sketch.frequency(42) <= 5, "{}", sketch.frequency(42));
        for _ in 0..40 {
            sketch.increment(7);
        }
        assert_eq!(sketch.frequency(7), 15, "counters saturate at 15");
    }
}
