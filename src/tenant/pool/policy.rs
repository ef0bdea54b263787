//! Which tenants keep their connections when a server's budget is full: W-TinyLFU, as Caffeine and moka do it for
//! cache entries, applied to tenants holding connections.
//!
//! - Every request of a tenant's own is counted in a **frequency sketch** (count-min, 4 rows of 4-bit counters,
//!   conservative update) whose counters are all halved after a sample of `sample_factor × budget` counted
//!   requests, so popularity ages and a tenant that was hot an hour ago does not stay for ever.
//! - A tenant that gets its first connection enters the **window**, a small LRU region (the probation share of
//!   the budget that absorbs bursts of cold tenants). When the budget is full and a cold tenant needs a
//!   connection, the window's least recently used tenant is the *candidate* for the **main** region, and the
//!   main region's least recently used tenant of its probation segment is the *victim*: the one the sketch
//!   counts as used more often keeps its connection, the other gives one up (ties favour the victim, which
//!   has proven itself). So a burst of a cold tenant cycles through the window and cannot evict a tenant used
//!   a hundred times more often.
//! - The main region is a segmented LRU: a tenant of the main region's probation segment that is used again is
//!   promoted to the **protected** segment (80% of the main region); the protected segment's least recently
//!   used tenant is demoted back to probation when it overflows.
//! - Work that visits many tenants once (`Use::Scan`: fan-out, cross-client queries, statistics) is never
//!   counted: its connections form a **scan** region, evicted first by anyone, that may grow by evicting
//!   others only up to its share of the budget; beyond that share a scan reuses its own idle connections or
//!   waits for them.
//!
//! Regions are labels on tenants, not separate pools: moving a tenant between regions costs nothing, and a
//! victim must have an idle connection (a busy one cannot be closed, so the next one in order is taken). The
//! structure is pure (no connections, no clock), so the route benchmark and the tests below replay traces
//! through it.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
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
}

/// How a victim was chosen (the `decision` label of `tenant_pool_admission_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An idle connection a scan opened (everyone's first victim), or a scan's own choice.
    Scan,
    /// The main region was over its share and gave way.
    MainOver,
    /// The window's candidate was used more often than the main region's victim: the victim closed.
    Admitted,
    /// The window's candidate was not: it closed.
    Rejected,
    /// Only the window had an idle tenant.
    Window,
    /// No window tenant was idle; the cold tenant itself was at least as frequent as the victim.
    Newcomer,
    /// The cold tenant waited its patience out and took the least used idle tenant.
    Forced,
}

impl Decision {
    pub const ALL: [Decision; 7] = [
        Decision::Scan,
        Decision::MainOver,
        Decision::Admitted,
        Decision::Rejected,
        Decision::Window,
        Decision::Newcomer,
        Decision::Forced,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Decision::Scan => "scan",
            Decision::MainOver => "main_over",
            Decision::Admitted => "admitted",
            Decision::Rejected => "rejected",
            Decision::Window => "window",
            Decision::Newcomer => "newcomer",
            Decision::Forced => "forced",
        }
    }
}

/// What the pool knows about a tenant's connections at a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    pub connections: usize,
    pub idle: usize,
}

/// Sizes of the regions, in tenants, derived from the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    pub window: usize,
    pub main: usize,
    pub protected: usize,
    /// Counted requests after which every frequency is halved.
    pub sample: u32,
}

impl Shares {
    /// The window is 10% of the budget (at least 1), the protected segment 80% of the rest; the sketch ages every
    /// `sample_factor × budget` requests. (Caffeine starts its window at 1% and adapts it; here cold tenants arrive
    /// concurrently and each holds its window connection for a connect, so the window is sized for that: with
    /// 5% the window's tenants were mostly busy when the next cold tenant came, measured with the route benchmark.)
    pub fn for_budget(budget: usize, sample_factor: usize) -> Self {
        let budget = budget.max(1);
        let window = (budget / 10).max(1).min(budget);
        let main = budget.saturating_sub(window).max(1);
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
    hasher: RandomState,
    entries: HashMap<K, (Region, u64)>,
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
            hasher: RandomState::new(),
            entries: HashMap::new(),
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

    /// The region a tenant is in, if it holds connections.
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

    /// A connection was handed out for `key`. A request is counted and refreshes the tenant's place (promotes it
    /// from the main region's probation segment to protected; takes it out of the scan region into the window); a
    /// scan changes nothing. A tenant not yet in any region (its first connection) enters the window, or the
    /// scan region for a scan.
    pub fn record(&mut self, key: K, usage: Use) {
        if usage == Use::Scan {
            if !self.entries.contains_key(&key) {
                self.place(key, Region::Scan);
            }
            return;
        }
        self.sketch.increment(self.hasher.hash_one(key));
        match self.region(&key) {
            None | Some(Region::Window | Region::Scan) => {
                self.place(key, Region::Window);
                self.spill_window();
            }
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

    /// The tenant holds no connection any more.
    pub fn forget(&mut self, key: &K) {
        if let Some((region, tick)) = self.entries.remove(key) {
            self.list_mut(region).remove(&tick);
        }
    }

    /// A scan that holds its whole share needs a connection: the scan region's least recently used idle tenant,
    /// if any (a scan then reuses its own connections instead of taking more from others).
    pub fn scan_victim(&mut self, key: &K, mut holding: impl FnMut(&K) -> Holding) -> Option<K> {
        self.prune(|k| k != key && holding(k).connections == 0);
        self.scan
            .values()
            .find(|k| *k != key && holding(k).idle > 0)
            .copied()
    }

    /// The budget is full and `key`, which holds no connection, needs one for `usage`: the tenant that should give
    /// up an idle connection, or `None` when no one may yet (then the caller waits for a connection to come back
    /// and asks again). Tenants that hold no connection any more are forgotten on the way.
    ///
    /// For a request: idle scan connections go first. Then the window's least recently used idle tenant is the
    /// candidate: it is compared with the main region's victim (its least used idle tenant, probation before
    /// protected) and the one used less often gives up its connection (a tie keeps the victim, which has proven
    /// itself; the main region refills from the window, without comparison, only while it is under its share). When no
    /// window tenant is idle (cold tenants arrive faster than they finish), the request itself is compared: it
    /// displaces a probation tenant used no more often than itself, a protected one only if used less often;
    /// otherwise it waits, until `impatient` (the caller has waited long enough) lifts that, so no tenant starves.
    ///
    /// For a scan (which holds one of the scans' share of connections, see [`Self::scan_victim`]): idle scan
    /// connections; then the window's, the main region's probation segment's and the protected segment's idle
    /// tenants, in that order.
    pub fn victim(
        &mut self,
        key: &K,
        usage: Use,
        impatient: bool,
        mut holding: impl FnMut(&K) -> Holding,
    ) -> Option<Eviction<K>> {
        self.prune(|k| k != key && holding(k).connections == 0);
        let mut idle = |k: &K| k != key && holding(k).idle > 0;
        let by = |decision: Decision| move |victim: K| Eviction { victim, decision };
        let first_idle = |this: &Self, region: Region, idle: &mut dyn FnMut(&K) -> bool| {
            this.list(region).values().find(|k| idle(k)).copied()
        };
        if let Some(v) = first_idle(self, Region::Scan, &mut idle) {
            return Some(by(Decision::Scan)(v));
        }
        if usage == Use::Scan {
            let v = first_idle(self, Region::Window, &mut idle)
                .or_else(|| self.least_used_idle(Region::Probation, &mut idle))
                .or_else(|| first_idle(self, Region::Protected, &mut idle));
            return v.map(by(Decision::Scan));
        }
        let main_len = |this: &Self| this.probation.len() + this.protected.len();
        // The main region's victim and whether it is from the protected segment.
        let main_victim = |this: &Self, idle: &mut dyn FnMut(&K) -> bool| {
            this.least_used_idle(Region::Probation, idle)
                .map(|v| (v, false))
                .or_else(|| first_idle(this, Region::Protected, idle).map(|v| (v, true)))
        };
        if main_len(self) > self.shares.main {
            // The main region is over its share (scans or a warm-up left it so): it gives way first.
            let v = main_victim(self, &mut idle)
                .map(|(v, _)| v)
                .or_else(|| first_idle(self, Region::Window, &mut idle));
            return v.map(by(Decision::MainOver));
        }
        // Candidates in the window's LRU order. A busy one cannot close, but it can still win its way into the main
        // region (a label): otherwise a hot tenant that is never idle would sit in the window for ever.
        let window: Vec<K> = self.window.values().copied().filter(|k| k != key).collect();
        let victim = main_victim(self, &mut idle);
        for candidate in window {
            match victim {
                Some((v, _)) if self.frequency(&candidate) > self.frequency(&v) => {
                    self.place(candidate, Region::Probation);
                    return Some(by(Decision::Admitted)(v));
                }
                Some(_) if idle(&candidate) => return Some(by(Decision::Rejected)(candidate)),
                None if idle(&candidate) => return Some(by(Decision::Window)(candidate)),
                _ => {}
            }
        }
        let (victim, protected) = main_victim(self, &mut idle)?;
        let (mine, theirs) = (self.frequency(key), self.frequency(&victim));
        let displaces = if protected {
            mine > theirs
        } else {
            mine >= theirs
        };
        if displaces {
            Some(by(Decision::Newcomer)(victim))
        } else if impatient {
            // The least used idle tenant of the window and probation, a protected one only if there is none.
            let v = self
                .least_used_idle(Region::Window, &mut idle)
                .into_iter()
                .chain(self.least_used_idle(Region::Probation, &mut idle))
                .min_by_key(|k| self.frequency(k))
                .or_else(|| self.least_used_idle(Region::Protected, &mut idle));
            v.map(by(Decision::Forced))
        } else {
            None
        }
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

    /// Forgets the tenants `gone` says hold no connection any more.
    pub fn prune(&mut self, mut gone: impl FnMut(&K) -> bool) {
        let keys: Vec<K> = self.entries.keys().filter(|k| gone(k)).copied().collect();
        for k in &keys {
            self.forget(k);
        }
    }

    /// While the regions are filling up (fewer tenants than the budget holds: no one had to leave yet), moves the
    /// window's oldest tenants into the main region. Once the budget is full the main region takes tenants only by
    /// admission: a window tenant that was used more often than main's victim.
    fn spill_window(&mut self) {
        while self.window.len() > self.shares.window
            && self.probation.len() + self.protected.len() < self.shares.main
            && self.window.len() + self.probation.len() + self.protected.len()
                <= self.shares.window + self.shares.main
        {
            let Some((_, oldest)) = self.window.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.place(oldest, Region::Probation);
        }
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
            let held = self.held.clone();
            let holding = |k: &u32| {
                let n = usize::from(held.contains(k));
                Holding {
                    connections: n,
                    idle: n,
                }
            };
            let victim = if hit {
                None
            } else if usage == Use::Scan && self.policy.len(Region::Scan) >= self.scan_share {
                self.policy.scan_victim(&tenant, holding)
            } else if self.held.len() >= self.budget {
                self.policy
                    .victim(&tenant, usage, false, holding)
                    .map(|e| e.victim)
            } else {
                None
            };
            if let Some(victim) = victim {
                self.held.remove(&victim);
                self.policy.forget(&victim);
            }
            assert!(
                self.held.len() < self.budget || hit,
                "no victim for a cold tenant"
            );
            self.held.insert(tenant);
            self.policy.record(tenant, usage);
            if usage == Use::Request {
                self.requests += 1;
                self.hits += u64::from(hit);
            }
            hit
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
