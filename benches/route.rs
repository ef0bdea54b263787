//! `cargo bench --bench route`: the routing pool's own cost, and how it behaves when the working set does not
//! fit its budget. All phases use the same HTTP load generator (64 keep-alive clients, `GET
//! /v1/clients/{slug}/recipients/{id}`), in the same run, interleaved over BENCH_ROUNDS rounds:
//!
//! - fits: 40 tenants, budget 40, uniform tenant choice. mandant (the real server and its routing pool) beside a
//!   static router (one fixed pool per tenant opened up front, no budget logic, the same query and JSON, its
//!   statement kept prepared per connection in deadpool's cache as mandant's routing pool keeps it) and, for
//!   context, the static router over a single tenant and the static router running the statement unnamed
//!   (`fits_static_unnamed`: parsed and planned on every request, as every router here did before session 20) and
//!   sharing each tenant's one connection among all its requests at once (`fits_static_shared`, pipelined, as
//!   mandant's reads share a busy connection since session 21).
//! - fits_interleaved (after the rounds): the static router and mandant's full server on the same 40 tenants in
//!   alternating short windows (BENCH_PAIRS × 2 × BENCH_PAIR_MS), both warm: the median of the per-pair ratios, which
//!   a VM whose speed drifts between phases moves far less than the per-round ratios.
//! - overcommitted: 500 tenants with 100 recipients each, budget 40, Zipf(s = 1.1) tenant choice. mandant beside
//!   a no-pool router that opens a connection per request. On the very request trace the router served (the
//!   warm-up, then the measured window), the hit ratios of three reference caches of 40 tenants: an ideal LRU,
//!   a static top-k (the 40 tenants most frequent in the measured window, always cached; also the top 36, the size of
//!   the admission policy's main region, since the rest of the budget serves the misses), and Belady's optimum
//!   (on a miss, evict the tenant used again farthest in the future: the limit for any policy with this budget).
//!   Also connects per second, admission decisions, and the budget's peak use (router permits, sampled every
//!   millisecond, and PostgreSQL backends of tenant roles).
//! - oracle (`over_oracle`): the same Zipf requests through a router that knows the popularity in advance and costs
//!   nothing to run: the 36 most popular tenants (main's share) keep one connection each, opened up front; every
//!   other request connects, queries and disconnects, 4 at a time (the rest of the budget); no middleware. Its
//!   share of its own ceiling is what this machine lets any router reach; mandant / oracle is the policy's and the
//!   server's whole cost.
//! - tail (`over_no_pool_tail`, a diagnostic): the no-pool router over the same Zipf picks without the `budget` most
//!   popular tenants, the requests a static top-k cache misses. A miss to a tail tenant may cost more than the
//!   average connect-per-request (colder pages and catalog); the ceiling with that miss cost is printed beside the
//!   bar's.
//! - misses (`over_no_pool_misses`, a diagnostic): the no-pool router replaying the tenants of mandant's cold
//!   acquires in the round's `over_mandant` window, in their order (recorded by the routing pool's test
//!   scaffolding); `over_no_pool_miss_mix` replays the same tenants in the same proportions in random order. What
//!   mandant's own misses cost as connects-per-request: a policy that keeps more of the warm tail misses colder
//!   tenants, each after a longer gap, and PostgreSQL's shared buffers (a second cache under the router's) tend to
//!   miss their catalog pages too. The ceiling with that miss cost is printed beside the bar's.
//! - shifting: the same Zipf distribution, but the tenants behind the ranks rotate every BENCH_SHIFT_PERIOD
//!   (20 s; by 97 tenants, so the hot set is replaced), measured for BENCH_SHIFT_SECS (40) after the warm-up: the
//!   policy must adapt (hit ratio near the ideal LRU's on that trace).
//! - The throughput ceiling of a cache with hit ratio h over a connect-per-request router is
//!   T_miss / ((1 − h)·T_miss + h·T_hit). T_miss is the no-pool router's cost per request (1 / its req/s, 2 cores
//!   saturated) and T_hit mandant's full server on `fits` (every acquire warm), both from this run.
//! - Where the machine's time goes, per request and phase: this process's CPU (server, routers and load generator;
//!   its system part and how often its threads blocked), PostgreSQL's (every `postgres` process, exited backends
//!   included), softirq and the rest. For mandant and the oracle, each part against the ceiling's own mix (misses
//!   at the no-pool router's cost, hits at the `fits` phase's): what a router spends beyond the model, and where.
//!   BENCH_PG_SETTINGS (`name=value,...`) starts the cluster with more settings (`shared_buffers=1GB`).
//!
//! Prints a table and writes benches/results/route.json. Knobs: BENCH_TENANTS (500), BENCH_FIT_TENANTS (40),
//! BENCH_BUDGET (40), BENCH_CLIENTS (64), BENCH_SECS (8 per phase), BENCH_ROUNDS (3), BENCH_ZIPF_S (1.1),
//! BENCH_SHIFT_SECS (40), BENCH_SHIFT_PERIOD (20), BENCH_PAIRS (20) and BENCH_PAIR_MS (2000) for fits_interleaved,
//! BENCH_PHASES (all; comma-separated phase names).

// The report's `json!` has more keys than the macro's default recursion limit allows.
#![recursion_limit = "256"]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use deadpool_postgres::tokio_postgres::{self, NoTls};
use mandant::data::recipients::{self, Recipient};
use mandant::db::PgTarget;
use mandant::server::RunOptions;
use mandant::tenant::statements::{Queries, types_of};
use rand::Rng;
use serde_json::json;

/// One request: which tenant (index) and which recipient.
type Pick = Box<dyn Fn(&mut rand::rngs::ThreadRng) -> usize + Send + Sync>;

#[derive(Debug, Clone, Default)]
struct Run {
    requests: u64,
    errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time of this whole process (server, routers and load generator; PostgreSQL not included) per request:
    /// the load generator's share is the same for every phase, so differences between phases are the server's.
    cpu_us_per_request: f64,
    /// Share of the whole machine's CPU time (every core, PostgreSQL and the load generator included) that was busy:
    /// below ~0.95, something other than CPU (a queue, a semaphore, a round trip) held the phase back.
    machine_busy: f64,
    /// CPU time of every PostgreSQL process per request, exited backends included (`common::postgres_usage`).
    pg_cpu_us_per_request: f64,
    /// The machine's softirq time per request (loopback network receive among it), charged to no process.
    softirq_us_per_request: f64,
    /// The machine's busy time per request that is none of the above: other processes, kernel threads, irq.
    other_cpu_us_per_request: f64,
    /// The system (kernel) part of `cpu_us_per_request`.
    sys_us_per_request: f64,
    /// Times a thread of this process blocked (a tokio worker parking with nothing to run, mostly) per request:
    /// each costs a sleep and a wake-up, and on a VM the wake-up of another core is an interrupt between vCPUs.
    switches_per_request: f64,
    /// Times a live PostgreSQL process blocked per request (a backend waiting for its client's next message,
    /// mostly): meaningful where backends persist (`fits`), as an exited backend's count is lost.
    pg_switches_per_request: f64,
    /// Blocks every database read into shared buffers (from the OS or disk) and found there, per request
    /// (`pg_stat_database`, overcommitted phases only; NaN elsewhere): a connect to a colder tenant reads more of its
    /// catalog.
    blks_read_per_request: f64,
    blks_hit_per_request: f64,
    /// Tenant indexes in the order requests started (overcommitted phases: for the ideal LRU).
    trace: Vec<u32>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

#[tokio::main]
async fn main() {
    let tenants = common::env_usize("BENCH_TENANTS", 500);
    let fit_tenants = common::env_usize("BENCH_FIT_TENANTS", 40).min(tenants);
    let budget = common::env_usize("BENCH_BUDGET", 40);
    let clients = common::env_usize("BENCH_CLIENTS", 64);
    let secs = common::env_usize("BENCH_SECS", 8) as u64;
    let rounds = common::env_usize("BENCH_ROUNDS", 3);
    let zipf_s: f64 = std::env::var("BENCH_ZIPF_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.1);
    let recipients_per_tenant = 100usize;
    let shift_secs = common::env_usize("BENCH_SHIFT_SECS", 40) as u64;
    let shift_period = common::env_usize("BENCH_SHIFT_PERIOD", 20).max(1) as u64;
    // The tenants the admission policy's main region holds (the rest of the budget is the share for misses).
    let main_share = mandant::tenant::pool::PoolSettings {
        budget_per_server: budget,
        ..Default::default()
    }
    .shares()
    .main;

    let cluster = common::cluster("bench-route");
    let budget_text = budget.to_string();
    let cap_text = common::env_usize("BENCH_CAP", 4).to_string();
    let settings = common::settings(
        &cluster,
        "bench_ctl",
        &[
            ("MANDANT__WORKERS__CONCURRENCY", "4"),
            ("MANDANT__ROUTING__BUDGET_PER_SERVER", &budget_text),
            ("MANDANT__ROUTING__PER_TENANT_CAP", &cap_text),
            ("MANDANT__LOG__LEVEL", "error"),
            // The statistics worker would visit all 500 tenants every few minutes in the middle of a phase.
            ("MANDANT__WORKERS__STATS_INTERVAL_SECS", "0"),
        ],
    );
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .default_headers(common::admin_headers())
        .build()
        .expect("http client");

    // Setup (untimed): the tenants, each with 100 recipients (ids 1..=100) imported through the API.
    let setup = Instant::now();
    let slugs: Vec<String> = (0..tenants).map(|i| format!("t-{i:04}")).collect();
    common::create_clients(&app, &http, &slugs).await;
    let mut body = String::from("email,first_name\n");
    for i in 0..recipients_per_tenant {
        body.push_str(&format!("person{i}@example.org,Person {i}\n"));
    }
    for slug in &slugs {
        let response = http
            .post(format!("{}/v1/clients/{slug}/recipients/import", app.base))
            .header("content-type", "text/csv")
            .body(body.clone())
            .send()
            .await
            .expect("import");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{slug}");
    }
    let mut targets = Vec::new();
    let mut ids = HashMap::new();
    let mut index_of: HashMap<uuid::Uuid, usize> = HashMap::new();
    for slug in &slugs {
        let parsed = mandant::domain::ClientSlug::parse(slug).expect("slug");
        let client = app
            .state
            .control()
            .client_by_slug(&parsed)
            .await
            .expect("client");
        index_of.insert(client.id, ids.len());
        ids.insert(client.id, slug.clone());
        let server = app
            .state
            .control()
            .server(client.server_id.expect("placed"))
            .await
            .expect("server");
        targets.push(
            app.state
                .targets()
                .tenant(&server, client.id)
                .expect("target"),
        );
    }
    let server_id = {
        let parsed = mandant::domain::ClientSlug::parse(&slugs[0]).expect("slug");
        app.state
            .control()
            .client_by_slug(&parsed)
            .await
            .expect("client")
            .server_id
            .expect("placed")
    };
    // The setup's connections are not part of any phase.
    app.state.pools().close();
    eprintln!(
        "setup: {tenants} tenants x {recipients_per_tenant} recipients in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    // The baselines' servers.
    let per_tenant = (budget / fit_tenants).max(1);
    let fit_router = |mode| {
        StaticRouter::start(
            &slugs[..fit_tenants],
            &targets[..fit_tenants],
            per_tenant,
            mode,
        )
    };
    let fit_static = fit_router(Mode::Kept).await;
    // The same without kept statements (every request parsed and planned again): what keeping them is worth.
    let fit_static_unnamed = fit_router(Mode::Unnamed).await;
    // The same with each tenant's connection shared by all its requests (pipelined), as mandant's reads share a
    // busy one: like with like for what the rest of mandant's server costs.
    let fit_static_shared = fit_router(Mode::Shared).await;
    // Only connected during its own phase: 40 more backends held through the overcommitted phases left the
    // connect-per-request replays without connection slots (`max_connections`, errors in a run of session 21).
    fit_static_shared.close_idle();
    let single_static = StaticRouter::start(&slugs[..1], &targets[..1], budget, Mode::Kept).await;
    let no_pool = NoPoolRouter::start(&slugs, &targets).await;
    let (oracle, oracle_state) = OracleRouter::start(
        &slugs,
        &targets,
        main_share,
        budget.saturating_sub(main_share),
    )
    .await;
    // mandant's own handler and routing pool without its HTTP middleware (request id, tracing, access check
    // and audit, metrics, timeout, error normaliser): separates the router's cost from the middleware's. The
    // handler reads the access check's result, so a stand-in supplies it (full access, from the route cache).
    let handler_only = common::handler_only(
        &app.state,
        "/v1/clients/{slug}/recipients/{id}",
        axum::routing::get(mandant::http::recipients::get),
    )
    .await;

    let uniform = |n: usize| -> Arc<Pick> { Arc::new(Box::new(move |rng| rng.random_range(0..n))) };
    let zipf = Arc::new(common::Zipf::new(tenants, zipf_s));
    let zipf_pick: Arc<Pick> = {
        let zipf = zipf.clone();
        Arc::new(Box::new(move |rng| zipf.sample(rng)))
    };
    // The misses of a static top-k cache: the same Zipf picks, without the `budget` most popular tenants (only run
    // when there are more tenants than that).
    let tail_pick: Arc<Pick> = {
        let zipf = zipf.clone();
        Arc::new(Box::new(move |rng| {
            loop {
                let pick = zipf.sample(rng);
                if pick >= budget {
                    break pick;
                }
            }
        }))
    };
    let slugs = Arc::new(slugs);
    // The hot set moves by 97 tenants every period, counted from the phase's warm-up.
    let shifting_pick = || -> Arc<Pick> {
        let zipf = zipf.clone();
        let started = Instant::now();
        Arc::new(Box::new(move |rng| {
            let rotation = (started.elapsed().as_secs() / shift_period) as usize;
            (zipf.sample(rng) + rotation * 97) % tenants
        }))
    };
    let load_for = |base: String, pick: Arc<Pick>, record: bool, duration: Duration| {
        let http = http.clone();
        let slugs = slugs.clone();
        async move {
            drive(
                &http,
                &base,
                &slugs,
                pick,
                clients,
                recipients_per_tenant,
                duration,
                record,
            )
            .await
        }
    };
    let load = |base: String, pick: Arc<Pick>, record: bool| {
        load_for(base, pick, record, Duration::from_secs(secs))
    };

    let mut results: HashMap<&'static str, Vec<serde_json::Value>> = HashMap::new();
    let mut table: HashMap<&'static str, Vec<Run>> = HashMap::new();
    let mut over_extra = Vec::new();
    let mut shift_extra = Vec::new();
    let mut oracle_extra: Vec<serde_json::Value> = Vec::new();
    // Block statistics of every database, read around the overcommitted phases' measured windows.
    let stats = cluster
        .cluster()
        .target("postgres")
        .connect()
        .await
        .expect("stats session");
    let measured = |run: Run, before: (i64, i64), after: (i64, i64)| Run {
        blks_read_per_request: (after.0 - before.0) as f64 / run.requests.max(1) as f64,
        blks_hit_per_request: (after.1 - before.1) as f64 / run.requests.max(1) as f64,
        ..run
    };
    // The tenants of the cold acquires of the last `over_mandant` window, in order, for the replays.
    let mut misses: Vec<usize> = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        // fits: the order alternates per round, so drift on this VM does not favour one side.
        let fits: [(&str, String); 6] = [
            ("fits_static", fit_static.base.clone()),
            ("fits_mandant_handler", handler_only.clone()),
            ("fits_mandant", app.base.clone()),
            ("single_tenant_static", single_static.base.clone()),
            ("fits_static_unnamed", fit_static_unnamed.base.clone()),
            ("fits_static_shared", fit_static_shared.base.clone()),
        ];
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1, 2, 3, 4, 5]
        } else {
            vec![2, 1, 0, 3, 4, 5]
        };
        for i in order {
            let (name, base) = &fits[i];
            if !selected(name) {
                continue;
            }
            let n = if *name == "single_tenant_static" {
                1
            } else {
                fit_tenants
            };
            app.state.pools().close();
            // Warm-up, then the measured window.
            let _ = load(base.clone(), uniform(n), false).await;
            // The measured window starts here (a profiler started on this line sees no warm-up or connects).
            eprintln!("  {name}: warm, measuring");
            let before = app.state.pools().stats();
            let run = load(base.clone(), uniform(n), false).await;
            let after = app.state.pools().stats();
            eprintln!(
                "  {name}: {:.0} req/s, p99 {:.2} ms, errors {}, process CPU {:.1} us/request, machine busy {:.2} (mandant pool: cap {}, {} cold acquires, {} evictions, {} own waits, {} shared joins)",
                run.rps(),
                run.p99_ms,
                run.errors,
                run.cpu_us_per_request,
                run.machine_busy,
                app.state.pools().tenant_cap(server_id),
                after.cold - before.cold,
                after.evictions - before.evictions,
                after.own_waits - before.own_waits,
                after.joined - before.joined,
            );
            table.entry(name).or_default().push(run);
        }
        fit_static_shared.close_idle();

        // overcommitted and shifting
        for name in if round % 2 == 0 {
            [
                "over_no_pool",
                "over_no_pool_tail",
                "over_oracle",
                "over_mandant",
                "over_no_pool_misses",
                "over_no_pool_miss_mix",
                "shift_mandant",
            ]
        } else {
            [
                "over_mandant",
                "over_no_pool_misses",
                "over_no_pool_miss_mix",
                "over_oracle",
                "over_no_pool_tail",
                "over_no_pool",
                "shift_mandant",
            ]
        } {
            if !selected(name) {
                continue;
            }
            if name == "over_no_pool_tail" && tenants <= budget {
                // No tenant outside the top `budget`: the tail's pick would never return.
                eprintln!("  {name}: skipped (BENCH_TENANTS <= BENCH_BUDGET: no tail)");
                continue;
            }
            if name == "over_oracle" {
                let (hits, misses) = (
                    oracle_state.hits.load(Ordering::Relaxed),
                    oracle_state.misses.load(Ordering::Relaxed),
                );
                let blocks = block_counts(&stats).await;
                let run = load(oracle.base.clone(), zipf_pick.clone(), false).await;
                let run = measured(run, blocks, block_counts(&stats).await);
                let (hits, misses) = (
                    oracle_state.hits.load(Ordering::Relaxed) - hits,
                    oracle_state.misses.load(Ordering::Relaxed) - misses,
                );
                let hit_ratio = hits as f64 / (hits + misses).max(1) as f64;
                eprintln!(
                    "  {name}: {:.0} req/s, p99 {:.2} ms, errors {}, hit {hit_ratio:.3}, machine busy {:.2}",
                    run.rps(),
                    run.p99_ms,
                    run.errors,
                    run.machine_busy
                );
                oracle_extra.push(json!({"hit_ratio": hit_ratio}));
                table.entry(name).or_default().push(run);
                continue;
            }
            let replay = matches!(name, "over_no_pool_misses" | "over_no_pool_miss_mix");
            if replay && misses.is_empty() {
                eprintln!("  {name}: skipped (needs over_mandant's misses from the same round)");
                continue;
            }
            if name.starts_with("over_no_pool") {
                let pick = match name {
                    "over_no_pool" => zipf_pick.clone(),
                    "over_no_pool_tail" => tail_pick.clone(),
                    "over_no_pool_misses" => {
                        eprintln!(
                            "  {name}: replaying {} connects over {} tenants in their order",
                            misses.len(),
                            misses
                                .iter()
                                .collect::<std::collections::HashSet<_>>()
                                .len()
                        );
                        sequence_pick(misses.clone())
                    }
                    _ => {
                        let mut weights = vec![0i64; tenants];
                        for &i in &misses {
                            weights[i] += 1;
                        }
                        weighted_pick(weights)
                    }
                };
                let blocks = block_counts(&stats).await;
                let run = load(no_pool.base.clone(), pick, false).await;
                let run = measured(run, blocks, block_counts(&stats).await);
                eprintln!(
                    "  {name}: {:.0} req/s, p99 {:.2} ms, errors {}, machine busy {:.2}",
                    run.rps(),
                    run.p99_ms,
                    run.errors,
                    run.machine_busy
                );
                table.entry(name).or_default().push(run);
                continue;
            }
            app.state.pools().close();
            let (pick, measured_for) = if name == "shift_mandant" {
                (shifting_pick(), Duration::from_secs(shift_secs))
            } else {
                (zipf_pick.clone(), Duration::from_secs(secs))
            };
            // Warm-up fills the cache; the reference caches replay the warm-up and the measured trace, counting
            // hits in the measured part only.
            let warm = load(app.base.clone(), pick.clone(), true).await;
            let router = app.state.pools().clone();
            let before = router.stats();
            let sampling = Arc::new(AtomicBool::new(true));
            let permit_peak = Arc::new(AtomicUsize::new(0));
            let backend_peak = Arc::new(AtomicU64::new(0));
            let sampler = {
                let (sampling, permit_peak) = (sampling.clone(), permit_peak.clone());
                let router = router.clone();
                tokio::spawn(async move {
                    while sampling.load(Ordering::Relaxed) {
                        if let Some(b) = router.budget(server_id) {
                            permit_peak.fetch_max(b.in_use, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            };
            let backend_sampler = {
                let (sampling, backend_peak) = (sampling.clone(), backend_peak.clone());
                let admin = cluster.cluster().target("postgres");
                tokio::spawn(async move {
                    let admin = admin.connect().await.expect("admin");
                    while sampling.load(Ordering::Relaxed) {
                        // The backend status array itself, not the `pg_stat_activity` view: the view joins every
                        // backend to `pg_authid` (500 tenant roles), and the earlier `usename LIKE` form of this
                        // sample cost PostgreSQL ~3 ms each, 6.7% of the machine at up to 50 samples a second, in the
                        // mandant phases only (perf -a, session 17). Only the routing pool names its connections
                        // `mandant-router`.
                        let n: i64 = admin
                            .query_one(
                                "SELECT count(*) FROM pg_stat_get_activity(NULL) WHERE application_name = 'mandant-router'",
                                &[],
                            )
                            .await
                            .expect("sample")
                            .get(0);
                        backend_peak.fetch_max(n as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            };
            let blocks = block_counts(&stats).await;
            // The tenants the router connects to in over_mandant's window (its misses), in order, for the replays.
            let replayed = name == "over_mandant";
            if replayed {
                router.record_misses();
            }
            let run = load_for(app.base.clone(), pick, true, measured_for).await;
            if replayed {
                misses = router
                    .take_misses()
                    .iter()
                    .filter_map(|id| index_of.get(id).copied())
                    .collect();
            }
            let run = measured(run, blocks, block_counts(&stats).await);
            sampling.store(false, Ordering::Relaxed);
            let _ = sampler.await;
            let _ = backend_sampler.await;
            let after = router.stats();
            let (warm_hits, cold) = (after.warm - before.warm, after.cold - before.cold);
            let hit_ratio = warm_hits as f64 / (warm_hits + cold).max(1) as f64;
            let ideal = ideal_lru_hit_ratio(&warm.trace, &run.trace, budget);
            let top_k = static_top_k_hit_ratio(&run.trace, budget);
            // The main region's size: what a static cache gets when the share's connections serve the misses.
            let top_main = static_top_k_hit_ratio(&run.trace, main_share);
            let belady = belady_hit_ratio(&warm.trace, &run.trace, budget);
            let extra = json!({
                "hit_ratio": hit_ratio,
                "ideal_lru_hit_ratio": ideal,
                "static_top_k_hit_ratio": top_k,
                "static_top_main_hit_ratio": top_main,
                "belady_hit_ratio": belady,
                "decisions": mandant::tenant::pool::policy::Decision::ALL
                    .iter()
                    .zip(after.decisions.iter().zip(before.decisions))
                    .map(|(d, (a, b))| (d.label().to_owned(), json!(a - b)))
                    .collect::<serde_json::Map<_, _>>(),
                "connects_per_sec": cold as f64 / run.secs,
                "evictions": after.evictions - before.evictions,
                "shared_joins": after.joined - before.joined,
                "budget_permit_peak": permit_peak.load(Ordering::Relaxed),
                "tenant_backend_peak": backend_peak.load(Ordering::Relaxed),
                "tenant_cap_at_end": router.tenant_cap(server_id),
            });
            eprintln!(
                "  {name}: {:.0} req/s, p99 {:.2} ms, errors {}, hit {:.3} (ideal LRU {:.3}, static top-k {:.3}, Belady {:.3}), {:.0} connects/s, {} shared joins, decisions {}, permit peak {}, backend peak {}, machine busy {:.2}",
                run.rps(),
                run.p99_ms,
                run.errors,
                hit_ratio,
                ideal,
                top_k,
                belady,
                cold as f64 / run.secs,
                after.joined - before.joined,
                extra["decisions"],
                permit_peak.load(Ordering::Relaxed),
                backend_peak.load(Ordering::Relaxed),
                run.machine_busy
            );
            // Which tenants (by popularity rank = index) each region holds at the end.
            let mut by_region: HashMap<String, Vec<(usize, u8)>> = HashMap::new();
            for (region, id, freq) in router.region_members(server_id) {
                let rank = ids
                    .get(&id)
                    .and_then(|s| s.trim_start_matches("t-").parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                by_region
                    .entry(format!("{region:?}"))
                    .or_default()
                    .push((rank, freq));
            }
            for (region, mut members) in by_region {
                members.sort();
                eprintln!("    {region}: {members:?}");
            }
            if name == "shift_mandant" {
                shift_extra.push(extra);
            } else {
                over_extra.push(extra);
            }
            table.entry(name).or_default().push(run);
        }
    }

    // fits_interleaved: the static router and mandant's full server in alternating short windows, both warm (nothing
    // closed in between), BENCH_PAIRS pairs of BENCH_PAIR_MS each, the order swapped every pair. A VM whose speed
    // drifts over tens of seconds moves both windows of a pair alike, so the median of the per-pair ratios is far
    // steadier than a ratio of whole phases seconds apart.
    let mut interleaved: Vec<f64> = Vec::new();
    let mut interleaved_errors = 0u64;
    if selected("fits_interleaved") {
        let pairs = common::env_usize("BENCH_PAIRS", 20).max(1);
        let window = Duration::from_millis(common::env_usize("BENCH_PAIR_MS", 2000) as u64);
        let sides = [fit_static.base.clone(), app.base.clone()];
        app.state.pools().close();
        for base in &sides {
            let _ = load(base.clone(), uniform(fit_tenants), false).await;
        }
        for pair in 0..pairs {
            let mut rps = [0.0; 2];
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let run = load_for(sides[side].clone(), uniform(fit_tenants), false, window).await;
                interleaved_errors += run.errors;
                rps[side] = run.rps();
            }
            interleaved.push(rps[1] / rps[0]);
        }
        interleaved.sort_by(f64::total_cmp);
    }
    // The per-pair ratio at quarter `q` (0 lowest, 2 median, 4 highest); NaN when the phase did not run.
    let quarter = |q: usize| {
        let last = interleaved.len().saturating_sub(1);
        interleaved
            .get((interleaved.len() * q / 4).min(last))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let interleaved_median = quarter(2);
    if !interleaved.is_empty() {
        eprintln!(
            "  fits_interleaved: {} pairs, mandant / static per pair {:.3} (lowest) {:.3} (quartile) {interleaved_median:.3} (median) {:.3} (quartile) {:.3} (highest), errors {interleaved_errors}",
            interleaved.len(),
            quarter(0),
            quarter(1),
            quarter(3),
            quarter(4),
        );
    }

    // Report: medians over rounds.
    let median = |runs: &[Run], f: &dyn Fn(&Run) -> f64| -> f64 { common::median_of(runs, f) };
    println!(
        "\nroute ({}{}, {clients} clients, budget {budget}, {secs} s per phase, {rounds} rounds; medians)",
        common::fsync_label(),
        common::pg_settings()
            .iter()
            .map(|(name, value)| format!(", {name}={value}"))
            .collect::<String>()
    );
    println!(
        "{:<24} {:>10} {:>9} {:>9} {:>8} {:>12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "phase",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU us/req",
        "sys us",
        "blocked",
        "PG us",
        "softirq",
        "other",
        "busy"
    );
    for name in [
        "fits_static",
        "fits_mandant_handler",
        "fits_mandant",
        "single_tenant_static",
        "fits_static_unnamed",
        "fits_static_shared",
        "over_no_pool",
        "over_no_pool_tail",
        "over_no_pool_misses",
        "over_no_pool_miss_mix",
        "over_oracle",
        "over_mandant",
        "shift_mandant",
    ] {
        let Some(runs) = table.get(name) else {
            continue;
        };
        let rps = median(runs, &|r| r.rps());
        let p50 = median(runs, &|r| r.p50_ms);
        let p99 = median(runs, &|r| r.p99_ms);
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        let cpu = median(runs, &|r| r.cpu_us_per_request);
        let busy = median(runs, &|r| r.machine_busy);
        let pg = median(runs, &|r| r.pg_cpu_us_per_request);
        let softirq = median(runs, &|r| r.softirq_us_per_request);
        let other = median(runs, &|r| r.other_cpu_us_per_request);
        let sys = median(runs, &|r| r.sys_us_per_request);
        let switches = median(runs, &|r| r.switches_per_request);
        println!(
            "{name:<24} {rps:>10.0} {p50:>9.2} {p99:>9.2} {errors:>8} {cpu:>12.1} {sys:>8.1} {switches:>8.2} {pg:>9.1} {softirq:>9.1} {other:>9.1} {busy:>8.2}"
        );
        results.insert(
            name,
            runs.iter()
                .map(|r| json!({"requests": r.requests, "secs": r.secs, "rps": r.rps(), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors, "process_cpu_us_per_request": r.cpu_us_per_request, "postgres_cpu_us_per_request": r.pg_cpu_us_per_request, "softirq_us_per_request": r.softirq_us_per_request, "other_cpu_us_per_request": r.other_cpu_us_per_request, "process_sys_us_per_request": r.sys_us_per_request, "process_switches_per_request": r.switches_per_request, "postgres_switches_per_request": r.pg_switches_per_request, "blks_read_per_request": r.blks_read_per_request, "blks_hit_per_request": r.blks_hit_per_request, "machine_cpu_busy": r.machine_busy}))
                .collect(),
        );
    }
    let rate = |name: &str| table.get(name).map(|runs| median(runs, &|r| r.rps()));
    // A phase's median of a per-run figure (NaN when the phase did not run).
    let per = |name: &str, f: &dyn Fn(&Run) -> f64| {
        table.get(name).map_or(f64::NAN, |runs| median(runs, f))
    };
    let ratio = |a: &str, b: &str| match (rate(a), rate(b)) {
        (Some(x), Some(y)) => x / y,
        _ => f64::NAN,
    };
    let fits_ratio = ratio("fits_mandant", "fits_static");
    // The same, paired by round (both sides measured minutes apart in the same round, the order alternating):
    // robust to the drift of this VM between rounds.
    let paired = |a: &str, b: &str| match (table.get(a), table.get(b)) {
        (Some(x), Some(y)) => {
            let mut r: Vec<f64> = x.iter().zip(y).map(|(x, y)| x.rps() / y.rps()).collect();
            r.sort_by(|a, b| a.total_cmp(b));
            r.get(r.len() / 2).copied().unwrap_or(f64::NAN)
        }
        _ => f64::NAN,
    };
    let fits_paired = paired("fits_mandant", "fits_static");
    let handler_ratio = ratio("fits_mandant_handler", "fits_static");
    let over_ratio = ratio("over_mandant", "over_no_pool");
    let median_of_key = |extras: &[serde_json::Value], key: &str| {
        let mut v: Vec<f64> = extras
            .iter()
            .map(|e| e[key].as_f64().unwrap_or(0.0))
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let hit = |key: &str| median_of_key(&over_extra, key);
    let shift_hit = |key: &str| median_of_key(&shift_extra, key);
    let peak = |key: &str| {
        over_extra
            .iter()
            .chain(&shift_extra)
            .map(|e| e[key].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    let permit_peak = peak("budget_permit_peak");
    let backend_peak = peak("tenant_backend_peak");
    // The ceiling: every miss costs what the no-pool router pays per request, every hit what the full server pays
    // on `fits`.
    let (t_miss, t_hit) = (
        1.0 / rate("over_no_pool").unwrap_or(f64::NAN),
        1.0 / rate("fits_mandant").unwrap_or(f64::NAN),
    );
    // Over the no-pool router, with hit ratio `h` and a miss costing `t_cost` (T_miss for the bar; the diagnostics
    // below price a miss otherwise).
    let ceiling_with = |t_cost: f64, h: f64| t_miss / ((1.0 - h) * t_cost + h * t_hit);
    let ceiling = |h: f64| ceiling_with(t_miss, h);
    let ceiling_at_router = ceiling(hit("hit_ratio"));
    let ceiling_at_top_k = ceiling(hit("static_top_k_hit_ratio"));
    let oracle_hit = median_of_key(&oracle_extra, "hit_ratio");
    let oracle_ratio = ratio("over_oracle", "over_no_pool");
    let ceiling_at_oracle = ceiling(oracle_hit);
    // Diagnostic, not the bar: a cache's misses are the tail's requests, and a connect-per-request to a tail tenant
    // may cost more than one to the average tenant (its pages and catalog are colder). With that miss cost:
    let t_tail = 1.0 / rate("over_no_pool_tail").unwrap_or(f64::NAN);
    let tail_ceiling = |h: f64| ceiling_with(t_tail, h);
    let tail_ceiling_at_router = tail_ceiling(hit("hit_ratio"));
    let tail_ceiling_at_oracle = tail_ceiling(oracle_hit);
    // The same with the misses the router actually had: the no-pool router replaying the connects of mandant's own
    // measured window in their order (each after the gap it had there), and the same tenants in the same proportions
    // but in random order (`miss_mix`): a router's misses are its colder tenants, and PostgreSQL's buffers are a
    // second cache under it that those misses tend to miss too.
    let t_misses = 1.0 / rate("over_no_pool_misses").unwrap_or(f64::NAN);
    let t_miss_mix = 1.0 / rate("over_no_pool_miss_mix").unwrap_or(f64::NAN);
    let misses_ceiling_at_router = ceiling_with(t_misses, hit("hit_ratio"));
    println!(
        "\nfits: mandant handler + routing pool / static = {handler_ratio:.3}; with mandant's full HTTP middleware: \
         {fits_ratio:.3} (ratio of medians), {fits_paired:.3} (median of per-round ratios) (target >= 0.92)"
    );
    if !interleaved.is_empty() {
        println!(
            "fits, interleaved ({} pairs of short windows, both warm): mandant full server / static = {interleaved_median:.3} (median of per-pair ratios; quartiles {:.3}-{:.3}), errors {interleaved_errors}",
            interleaved.len(),
            quarter(1),
            quarter(3),
        );
    }
    // Where the fits gap goes: the process (router, server and load generator) and PostgreSQL, whose backends
    // persist here, so how often they sleep waiting for the next query is counted too.
    let fits_part = |f: &dyn Fn(&Run) -> f64| {
        ["fits_static", "fits_mandant_handler", "fits_mandant"]
            .map(|name| format!("{:.2}", per(name, f)))
            .join(" / ")
    };
    println!(
        "fits, per request (static / handler + pool / full): process CPU {} us (system {} us; blocked {} times), PostgreSQL CPU {} us (its processes blocked {} times)",
        fits_part(&|r| r.cpu_us_per_request),
        fits_part(&|r| r.sys_us_per_request),
        fits_part(&|r| r.switches_per_request),
        fits_part(&|r| r.pg_cpu_us_per_request),
        fits_part(&|r| r.pg_switches_per_request),
    );
    // What keeping statements prepared is worth: the static router with and without, and mandant (which keeps
    // them) against the static router that does not (the baseline before the routing pool kept them).
    let kept_gain = ratio("fits_static", "fits_static_unnamed");
    let over_unnamed = ratio("fits_mandant", "fits_static_unnamed");
    println!(
        "fits, statements kept prepared: static kept / static unnamed = {kept_gain:.3} (PostgreSQL CPU {:.2} / {:.2} us per request); mandant (kept) / static unnamed = {over_unnamed:.3}",
        per("fits_static", &|r| r.pg_cpu_us_per_request),
        per("fits_static_unnamed", &|r| r.pg_cpu_us_per_request),
    );
    // What sharing a busy connection among reads is worth to the static router, and mandant (whose reads share one)
    // against the static router that shares too: like with like for the rest of the server's cost.
    let shared_gain = ratio("fits_static_shared", "fits_static");
    let over_shared = ratio("fits_mandant", "fits_static_shared");
    let handler_over_shared = ratio("fits_mandant_handler", "fits_static_shared");
    println!(
        "fits, reads sharing a busy connection: static shared / static = {shared_gain:.3} (p99 {:.2} / {:.2} ms); mandant (shares) / static shared = {over_shared:.3} (paired {:.3}), handler + pool / static shared = {handler_over_shared:.3}",
        per("fits_static_shared", &|r| r.p99_ms),
        per("fits_static", &|r| r.p99_ms),
        paired("fits_mandant", "fits_static_shared"),
    );
    println!(
        "overcommitted: warm-hit {:.3}; on the same trace: ideal LRU {:.3}, static top-k {:.3} (target: within 0.03; top-{main_share}, main's share, {:.3}), Belady {:.3}; {:.0} connects/s",
        hit("hit_ratio"),
        hit("ideal_lru_hit_ratio"),
        hit("static_top_k_hit_ratio"),
        hit("static_top_main_hit_ratio"),
        hit("belady_hit_ratio"),
        hit("connects_per_sec")
    );
    println!(
        "overcommitted: mandant / no-pool = {over_ratio:.2}x; ceiling from T_miss {:.3} ms, T_hit {:.3} ms: {ceiling_at_router:.2}x at the router's hit ratio ({:.3} of it, target >= 0.90), {ceiling_at_top_k:.2}x at static top-k ({:.3} of it)",
        t_miss * 1e3,
        t_hit * 1e3,
        over_ratio / ceiling_at_router,
        over_ratio / ceiling_at_top_k,
    );
    println!(
        "overcommitted, oracle (top-{main_share} kept, the rest connect per request, {} at a time): hit {oracle_hit:.3}, {oracle_ratio:.2}x no-pool = {:.3} of its own ceiling ({:.2}x); mandant / oracle = {:.3}",
        budget.saturating_sub(main_share),
        oracle_ratio / ceiling_at_oracle,
        ceiling_at_oracle,
        ratio("over_mandant", "over_oracle"),
    );
    println!(
        "overcommitted, a miss at the tail's cost (no-pool over the Zipf picks outside the top {budget}: T_tail {:.3} ms, {:.2} of T_miss): ceiling {tail_ceiling_at_router:.2}x at the router's hit ratio ({:.3} of it), {tail_ceiling_at_oracle:.2}x at the oracle's ({:.3} of it)",
        t_tail * 1e3,
        t_tail / t_miss,
        over_ratio / tail_ceiling_at_router,
        oracle_ratio / tail_ceiling_at_oracle,
    );
    println!(
        "overcommitted, a miss at the cost of mandant's own misses (no-pool replaying mandant's connects in their order: T_misses {:.3} ms, {:.2} of T_miss; the same tenants in random order {:.2} of T_miss): ceiling {misses_ceiling_at_router:.2}x at the router's hit ratio ({:.3} of it)",
        t_misses * 1e3,
        t_misses / t_miss,
        t_miss_mix / t_miss,
        over_ratio / misses_ceiling_at_router,
    );
    // Where a request's machine time goes (medians): PostgreSQL's CPU per miss (per request / miss ratio) should be
    // the same for every router; the rest is each router's own process, softirq and everything else.
    let breakdown = |name: &str, miss_ratio: f64| {
        format!(
            "{name}: PostgreSQL {:.2} ms per miss ({:.0} us per request, miss ratio {miss_ratio:.3}; blocks read {:.0}, found {:.0} per miss), process {:.0} us, softirq {:.0} us, other {:.0} us per request",
            per(name, &|r| r.pg_cpu_us_per_request) / miss_ratio / 1e3,
            per(name, &|r| r.pg_cpu_us_per_request),
            per(name, &|r| r.blks_read_per_request) / miss_ratio,
            per(name, &|r| r.blks_hit_per_request) / miss_ratio,
            per(name, &|r| r.cpu_us_per_request),
            per(name, &|r| r.softirq_us_per_request),
            per(name, &|r| r.other_cpu_us_per_request),
        )
    };
    println!(
        "overcommitted, machine time by part: {}; {}; {}; {}; {}; {}",
        breakdown("over_mandant", 1.0 - hit("hit_ratio")),
        breakdown("over_oracle", 1.0 - oracle_hit),
        breakdown("over_no_pool", 1.0),
        breakdown("over_no_pool_tail", 1.0),
        breakdown("over_no_pool_misses", 1.0),
        breakdown("over_no_pool_miss_mix", 1.0),
    );
    // The ceiling prices a request as a mix: a miss at the no-pool router's cost, a hit at the cost of a warm
    // request on `fits`. Against that mix, part by part, where a router's measured machine time goes over it.
    let mix = |name: &str, hit_phase: &str, hit_ratio: f64| {
        let part = |f: &dyn Fn(&Run) -> f64| {
            let measured = per(name, f);
            let expected =
                (1.0 - hit_ratio) * per("over_no_pool", f) + hit_ratio * per(hit_phase, f);
            (measured, expected)
        };
        let parts: [(&str, (f64, f64)); 4] = [
            ("process", part(&|r| r.cpu_us_per_request)),
            ("PostgreSQL", part(&|r| r.pg_cpu_us_per_request)),
            ("softirq", part(&|r| r.softirq_us_per_request)),
            ("other", part(&|r| r.other_cpu_us_per_request)),
        ];
        let (sys, switches) = (
            part(&|r| r.sys_us_per_request),
            part(&|r| r.switches_per_request),
        );
        let total: (f64, f64) = parts
            .iter()
            .fold((0.0, 0.0), |(m, e), (_, (pm, pe))| (m + pm, e + pe));
        format!(
            "{name}: {:.0} us per request against the mix's {:.0} ({:+.0}: {}; the process's system time {:+.0} us, its threads blocked {:.2} times per request against the mix's {:.2})",
            total.0,
            total.1,
            total.0 - total.1,
            parts
                .iter()
                .map(|(label, (m, e))| format!("{label} {:+.0}", m - e))
                .collect::<Vec<_>>()
                .join(", "),
            sys.0 - sys.1,
            switches.0,
            switches.1,
        )
    };
    println!(
        "overcommitted, machine time over the ceiling's mix (a miss at over_no_pool's cost, a hit at fits' own): {}; {}",
        mix("over_mandant", "fits_mandant", hit("hit_ratio")),
        mix("over_oracle", "fits_static", oracle_hit),
    );
    println!(
        "shifting (hot set rotates every {shift_period} s): warm-hit {:.3} vs ideal LRU {:.3} (target: within 0.05), static top-k {:.3}, Belady {:.3}",
        shift_hit("hit_ratio"),
        shift_hit("ideal_lru_hit_ratio"),
        shift_hit("static_top_k_hit_ratio"),
        shift_hit("belady_hit_ratio"),
    );
    println!(
        "budget {budget}: router permits peak {permit_peak}, tenant backends peak {backend_peak}"
    );

    common::write_report(
        "route",
        &json!({
            "fsync": common::fsync_label(),
            "pg_settings": common::pg_settings().into_iter().collect::<HashMap<_, _>>(),
            "tenants": tenants,
            "fit_tenants": fit_tenants,
            "budget": budget,
            "clients": clients,
            "secs_per_phase": secs,
            "rounds": rounds,
            "zipf_s": zipf_s,
            "runs": results,
            "overcommitted_mandant_pool": over_extra,
            "shifting_mandant_pool": shift_extra,
            "shift_period_secs": shift_period,
            "shift_secs": shift_secs,
            "t_miss_ms": t_miss * 1e3,
            "t_hit_ms": t_hit * 1e3,
            "ceiling_at_router_hit_ratio": ceiling_at_router,
            "ceiling_at_static_top_k": ceiling_at_top_k,
            "t_tail_ms": t_tail * 1e3,
            "tail_ceiling_at_router_hit_ratio": tail_ceiling_at_router,
            "overcommitted_share_of_tail_ceiling": over_ratio / tail_ceiling_at_router,
            "oracle_share_of_its_tail_ceiling": oracle_ratio / tail_ceiling_at_oracle,
            "t_misses_ms": t_misses * 1e3,
            "t_miss_mix_ms": t_miss_mix * 1e3,
            "misses_ceiling_at_router_hit_ratio": misses_ceiling_at_router,
            "overcommitted_share_of_misses_ceiling": over_ratio / misses_ceiling_at_router,
            "overcommitted_share_of_ceiling": over_ratio / ceiling_at_router,
            "oracle_hit_ratio": oracle_hit,
            "oracle_over_no_pool": oracle_ratio,
            "oracle_share_of_its_ceiling": oracle_ratio / ceiling_at_oracle,
            "mandant_over_oracle": ratio("over_mandant", "over_oracle"),
            "fits_ratio_mandant_over_static": fits_ratio,
            "fits_ratio_mandant_over_static_paired": fits_paired,
            "fits_ratio_mandant_over_static_interleaved": interleaved_median,
            "fits_interleaved_ratios": interleaved,
            "fits_interleaved_errors": interleaved_errors,
            "fits_ratio_mandant_handler_over_static": handler_ratio,
            "fits_ratio_static_kept_over_unnamed": kept_gain,
            "fits_ratio_mandant_over_static_unnamed": over_unnamed,
            "fits_ratio_static_shared_over_static": shared_gain,
            "fits_ratio_mandant_over_static_shared": over_shared,
            "fits_ratio_mandant_handler_over_static_shared": handler_over_shared,
            "overcommitted_ratio_mandant_over_no_pool": over_ratio,
            "budget_permit_peak": permit_peak,
            "tenant_backend_peak": backend_peak,
        }),
    );
    app.stop().await;
}

/// Whether BENCH_PHASES (a comma-separated list; default all) selects a phase. The report needs all of them.
fn selected(name: &str) -> bool {
    std::env::var("BENCH_PHASES").map_or(true, |p| p.split(',').any(|x| x == name))
}

/// Runs `clients` concurrent loops for `duration` against `base`, each request to a tenant chosen by `pick`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    http: &reqwest::Client,
    base: &str,
    slugs: &Arc<Vec<String>>,
    pick: Arc<Pick>,
    clients: usize,
    recipients: usize,
    duration: Duration,
    record: bool,
) -> Run {
    let trace = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let usage_before = ProcessUsage::now();
    let machine_before = common::machine_jiffies();
    let pg_before = common::postgres_usage();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, base, slugs, pick, trace) = (
            http.clone(),
            base.to_owned(),
            slugs.clone(),
            pick.clone(),
            trace.clone(),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let (tenant, id) = {
                    let mut rng = rand::rng();
                    (pick(&mut rng), rng.random_range(1..=recipients))
                };
                if record {
                    trace.lock().expect("trace").push(tenant as u32);
                }
                let url = format!("{base}/v1/clients/{}/recipients/{id}", slugs[tenant]);
                let t = Instant::now();
                let ok = match http.get(&url).send().await {
                    Ok(response) => {
                        let ok = response.status() == reqwest::StatusCode::OK;
                        let _ = response.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                latencies.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.expect("load task");
        latencies.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let usage = ProcessUsage::now().since(&usage_before);
    let cpu = usage.user + usage.sys;
    let machine_after = common::machine_jiffies();
    let softirq = machine_after.2.saturating_sub(machine_before.2);
    let pg_after = common::postgres_usage();
    let pg = pg_after.cpu.saturating_sub(pg_before.cpu);
    let pg_switches = pg_after.switches.saturating_sub(pg_before.switches);
    let machine_busy = (machine_after.0 - machine_before.0) as f64
        / (machine_after.1 - machine_before.1).max(1) as f64;
    let requests = latencies.len().max(1) as f64;
    let per_request = |d: Duration| d.as_secs_f64() * 1e6 / requests;
    let busy_time = common::jiffies_to_duration(machine_after.0 - machine_before.0);
    let softirq = common::jiffies_to_duration(softirq);
    let other = busy_time
        .saturating_sub(cpu)
        .saturating_sub(pg)
        .saturating_sub(softirq);
    latencies.sort();
    let trace = std::mem::take(&mut *trace.lock().expect("trace"));
    Run {
        requests: latencies.len() as u64,
        errors,
        secs,
        p50_ms: common::ms(common::percentile(&latencies, 50.0)),
        p99_ms: common::ms(common::percentile(&latencies, 99.0)),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / latencies.len().max(1) as f64,
        machine_busy,
        pg_cpu_us_per_request: per_request(pg),
        softirq_us_per_request: per_request(softirq),
        other_cpu_us_per_request: per_request(other),
        sys_us_per_request: per_request(usage.sys),
        switches_per_request: usage.switches as f64 / requests,
        pg_switches_per_request: pg_switches as f64 / requests,
        blks_read_per_request: f64::NAN,
        blks_hit_per_request: f64::NAN,
        trace,
    }
}

/// Picks the tenants of `sequence` in its order, from the start again when it runs out (the load's 64 clients
/// take them as they come, so the order holds up to what is in flight).
fn sequence_pick(sequence: Vec<usize>) -> Arc<Pick> {
    let next = AtomicUsize::new(0);
    Arc::new(Box::new(move |_rng| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        sequence
            .get(i % sequence.len().max(1))
            .copied()
            .unwrap_or(0)
    }))
}

/// Picks tenant `i` with probability `weights[i] / sum` (negative weights count as none).
fn weighted_pick(weights: Vec<i64>) -> Arc<Pick> {
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut total = 0u64;
    for w in weights {
        total += w.max(0) as u64;
        cumulative.push(total);
    }
    let total = total.max(1);
    Arc::new(Box::new(move |rng| {
        let x = rng.random_range(0..total);
        cumulative.partition_point(|&c| c <= x)
    }))
}

/// Blocks read into shared buffers and found there, summed over every database (`pg_stat_database`, as backends
/// have flushed them: an exited backend's at its exit).
async fn block_counts(stats: &tokio_postgres::Client) -> (i64, i64) {
    let row = stats
        .query_one(
            "SELECT sum(blks_read)::int8, sum(blks_hit)::int8 FROM pg_stat_database",
            &[],
        )
        .await
        .expect("block statistics");
    (row.get(0), row.get(1))
}

/// This process's CPU time (user and system) and voluntary context switches, summed over its threads.
struct ProcessUsage {
    user: Duration,
    sys: Duration,
    switches: u64,
}

impl ProcessUsage {
    fn now() -> Self {
        // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Self {
            user: time(usage.ru_utime),
            sys: time(usage.ru_stime),
            switches: usage.ru_nvcsw as u64,
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(before.user),
            sys: self.sys.saturating_sub(before.sys),
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}

/// The hit ratio of an LRU cache of `capacity` tenants over `measured`, after replaying `warmup`.
fn ideal_lru_hit_ratio(warmup: &[u32], measured: &[u32], capacity: usize) -> f64 {
    // Recency stamps; the cache holds the `capacity` most recently used tenants.
    let mut last_use: HashMap<u32, u64> = HashMap::new();
    let mut clock = 0u64;
    let mut touch = |tenant: u32, last_use: &mut HashMap<u32, u64>| -> bool {
        clock += 1;
        let hit = last_use.contains_key(&tenant);
        last_use.insert(tenant, clock);
        if last_use.len() > capacity {
            let (&oldest, _) = last_use.iter().min_by_key(|(_, t)| **t).expect("non-empty");
            last_use.remove(&oldest);
        }
        hit
    };
    for &t in warmup {
        touch(t, &mut last_use);
    }
    let hits = measured
        .iter()
        .filter(|&&t| touch(t, &mut last_use))
        .count();
    hits as f64 / measured.len().max(1) as f64
}

/// The hit ratio over `measured` of a cache that always holds the `capacity` tenants most frequent in it.
fn static_top_k_hit_ratio(measured: &[u32], capacity: usize) -> f64 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for t in measured {
        *counts.entry(*t).or_default() += 1;
    }
    let mut by_count: Vec<usize> = counts.into_values().collect();
    by_count.sort_unstable_by(|a, b| b.cmp(a));
    let hits: usize = by_count.iter().take(capacity).sum();
    hits as f64 / measured.len().max(1) as f64
}

/// Belady's optimum over `measured` after replaying `warmup`: on a miss with the cache full, evict the tenant whose
/// next use is farthest away (or never comes).
fn belady_hit_ratio(warmup: &[u32], measured: &[u32], capacity: usize) -> f64 {
    let trace: Vec<u32> = warmup.iter().chain(measured).copied().collect();
    let never = usize::MAX;
    let mut next_use = vec![never; trace.len()];
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for (i, t) in trace.iter().enumerate().rev() {
        next_use[i] = seen.get(t).copied().unwrap_or(never);
        seen.insert(*t, i);
    }
    // The cache as (next use, tenant), so the farthest is the last; ties among "never" are broken by tenant.
    let mut cache: std::collections::BTreeSet<(usize, u32)> = std::collections::BTreeSet::new();
    let mut cached: HashMap<u32, usize> = HashMap::new();
    let mut hits = 0usize;
    for (i, t) in trace.iter().enumerate() {
        let hit = if let Some(old) = cached.remove(t) {
            cache.remove(&(old, *t));
            true
        } else {
            if cached.len() >= capacity
                && let Some(&(far, victim)) = cache.iter().next_back()
            {
                cache.remove(&(far, victim));
                cached.remove(&victim);
            }
            false
        };
        cache.insert((next_use[i], *t));
        cached.insert(*t, next_use[i]);
        if hit && i >= warmup.len() {
            hits += 1;
        }
    }
    hits as f64 / measured.len().max(1) as f64
}

/// The fair floor for the router's own cost: one fixed pool per tenant, opened up front, no budget logic.
struct StaticRouter {
    base: String,
    pools: Arc<HashMap<String, deadpool_postgres::Pool>>,
}

#[derive(Clone)]
struct StaticState {
    pools: Arc<HashMap<String, deadpool_postgres::Pool>>,
    /// Statements kept prepared per connection, as mandant's routing pool keeps them (else run unnamed).
    keep: bool,
    /// `Mode::Shared`: per tenant, the connection its requests in flight share (checked out by the first, back in
    /// the pool when the last is done: mandant's `acquire_shared` without its conditions).
    shared: Option<Arc<HashMap<String, SharedSlot>>>,
}

/// The connection a tenant's requests in flight share, while they hold it.
type SharedSlot = std::sync::Mutex<std::sync::Weak<deadpool_postgres::Object>>;

/// How the static router runs its query.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Unnamed: parsed and planned on every request.
    Unnamed,
    /// Kept prepared per connection (deadpool's statement cache), a connection checked out per request.
    Kept,
    /// Kept, and a tenant's connection shared by all its requests in flight (tokio-postgres pipelines them).
    Shared,
}

/// Each tenant's connect configuration, by slug.
fn connect_configs(
    slugs: &[String],
    targets: &[PgTarget],
    application_name: &str,
) -> HashMap<String, tokio_postgres::Config> {
    slugs
        .iter()
        .cloned()
        .zip(
            targets
                .iter()
                .map(|t| t.with_application_name(application_name).tokio_config()),
        )
        .collect()
}

/// One deadpool pool of `size` connections per tenant, every connection opened up front.
async fn opened_pools(
    slugs: &[String],
    targets: &[PgTarget],
    size: usize,
    application_name: &str,
) -> HashMap<String, deadpool_postgres::Pool> {
    let mut pools = HashMap::new();
    for (slug, target) in slugs.iter().zip(targets) {
        let manager = deadpool_postgres::Manager::from_config(
            target
                .with_application_name(application_name)
                .tokio_config(),
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("pool");
        let mut held = Vec::new();
        for _ in 0..size {
            held.push(pool.get().await.expect("connect"));
        }
        drop(held);
        pools.insert(slug.clone(), pool);
    }
    pools
}

impl StaticRouter {
    async fn start(slugs: &[String], targets: &[PgTarget], size: usize, mode: Mode) -> Self {
        let pools = opened_pools(slugs, targets, size, "bench-static").await;
        let shared = (mode == Mode::Shared).then(|| {
            Arc::new(
                slugs
                    .iter()
                    .map(|slug| (slug.clone(), SharedSlot::default()))
                    .collect(),
            )
        });
        let pools = Arc::new(pools);
        let state = StaticState {
            pools: pools.clone(),
            keep: mode != Mode::Unnamed,
            shared,
        };
        let router = axum::Router::new()
            .route(
                "/v1/clients/{slug}/recipients/{id}",
                axum::routing::get(static_get),
            )
            .with_state(state);
        Self {
            base: common::serve(router).await,
            pools,
        }
    }

    /// Closes the router's idle connections (the next phase's warm-up opens them again).
    fn close_idle(&self) {
        for pool in self.pools.values() {
            pool.retain(|_, _| false);
        }
    }
}

async fn static_get(
    State(state): State<StaticState>,
    Path((slug, id)): Path<(String, i64)>,
) -> Result<Json<Recipient>, StatusCode> {
    let pool = state.pools.get(&slug).ok_or(StatusCode::NOT_FOUND)?;
    if let Some(slot) = state.shared.as_ref().and_then(|s| s.get(&slug)) {
        let held = slot.lock().expect("slot").upgrade();
        let conn = match held {
            Some(conn) => conn,
            None => {
                let conn = Arc::new(
                    pool.get()
                        .await
                        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?,
                );
                *slot.lock().expect("slot") = Arc::downgrade(&conn);
                conn
            }
        };
        let found = recipients::get(&Kept(&conn), id).await;
        return found.map(Json).map_err(|_| StatusCode::NOT_FOUND);
    }
    pooled_query(pool, id, state.keep).await
}

/// The query on a connection of a fixed pool; `keep`: its statement kept prepared on the connection.
async fn pooled_query(
    pool: &deadpool_postgres::Pool,
    id: i64,
    keep: bool,
) -> Result<Json<Recipient>, StatusCode> {
    let conn = pool
        .get()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let found = if keep {
        recipients::get(&Kept(&conn), id).await
    } else {
        let client: &tokio_postgres::Client = &conn;
        recipients::get(client, id).await
    };
    found.map(Json).map_err(|_| StatusCode::NOT_FOUND)
}

/// A typed parameter, as the data plane binds them.
type Typed<'a> = (
    &'a (dyn tokio_postgres::types::ToSql + Sync),
    tokio_postgres::types::Type,
);

/// A deadpool-postgres connection that keeps its statements prepared in deadpool's own statement cache, as
/// mandant's routing pool keeps its fixed statements: the baselines' hits cost PostgreSQL what mandant's do.
struct Kept<'a>(&'a deadpool_postgres::ClientWrapper);

impl Queries for Kept<'_> {
    fn client(&self) -> &tokio_postgres::Client {
        self.0
    }

    async fn prepared(
        &self,
        sql: &'static str,
        params: &[Typed<'_>],
    ) -> Result<Option<tokio_postgres::Statement>, tokio_postgres::Error> {
        self.0
            .prepare_typed_cached(sql, &types_of(params))
            .await
            .map(Some)
    }

    fn forget(&self, sql: &'static str, params: &[Typed<'_>]) {
        self.0.statement_cache.remove(sql, &types_of(params));
    }
}

/// The oracle router: a policy that knows the popularity in advance and costs nothing to run. The `keep` most popular
/// tenants (ranks 0..keep, as the Zipf sampler numbers them) each have one connection opened up front, as a static
/// cache of main's size would; every other request connects, queries and disconnects, at most `share` at a time (the
/// rest of the budget). Its throughput is what the hit ratio of a static top-k cache is worth on this machine, with
/// no admission logic, no middleware and no sketch: the practical ceiling for any router with this budget here.
struct OracleRouter {
    base: String,
}

#[derive(Clone)]
struct OracleState {
    kept: Arc<HashMap<String, deadpool_postgres::Pool>>,
    configs: Arc<HashMap<String, tokio_postgres::Config>>,
    share: Arc<tokio::sync::Semaphore>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl OracleRouter {
    async fn start(
        slugs: &[String],
        targets: &[PgTarget],
        keep: usize,
        share: usize,
    ) -> (Self, OracleState) {
        let keep = keep.min(slugs.len());
        let kept = opened_pools(&slugs[..keep], &targets[..keep], 1, "bench-oracle").await;
        let configs = connect_configs(slugs, targets, "bench-oracle");
        let state = OracleState {
            kept: Arc::new(kept),
            configs: Arc::new(configs),
            share: Arc::new(tokio::sync::Semaphore::new(share.max(1))),
            hits: Arc::new(AtomicU64::new(0)),
            misses: Arc::new(AtomicU64::new(0)),
        };
        let router = axum::Router::new()
            .route(
                "/v1/clients/{slug}/recipients/{id}",
                axum::routing::get(oracle_get),
            )
            .with_state(state.clone());
        (
            Self {
                base: common::serve(router).await,
            },
            state,
        )
    }
}

async fn oracle_get(
    State(state): State<OracleState>,
    Path((slug, id)): Path<(String, i64)>,
) -> Result<Json<Recipient>, StatusCode> {
    if let Some(pool) = state.kept.get(&slug) {
        state.hits.fetch_add(1, Ordering::Relaxed);
        return pooled_query(pool, id, true).await;
    }
    state.misses.fetch_add(1, Ordering::Relaxed);
    let _slot = state
        .share
        .acquire()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    no_pool_query(&state.configs, &slug, id).await
}

/// The no-pool router: a new connection (as the tenant's role) for every request.
struct NoPoolRouter {
    base: String,
}

#[derive(Clone)]
struct NoPoolState {
    configs: Arc<HashMap<String, tokio_postgres::Config>>,
}

impl NoPoolRouter {
    async fn start(slugs: &[String], targets: &[PgTarget]) -> Self {
        let configs = connect_configs(slugs, targets, "bench-no-pool");
        let router = axum::Router::new()
            .route(
                "/v1/clients/{slug}/recipients/{id}",
                axum::routing::get(no_pool_get),
            )
            .with_state(NoPoolState {
                configs: Arc::new(configs),
            });
        Self {
            base: common::serve(router).await,
        }
    }
}

async fn no_pool_get(
    State(state): State<NoPoolState>,
    Path((slug, id)): Path<(String, i64)>,
) -> Result<Json<Recipient>, StatusCode> {
    no_pool_query(&state.configs, &slug, id).await
}

/// Connect, query, disconnect.
async fn no_pool_query(
    configs: &HashMap<String, tokio_postgres::Config>,
    slug: &str,
    id: i64,
) -> Result<Json<Recipient>, StatusCode> {
    let config = configs.get(slug).ok_or(StatusCode::NOT_FOUND)?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let driver = tokio::spawn(connection);
    let result = recipients::get(&client, id).await;
    drop(client);
    let _ = driver.await;
    result.map(Json).map_err(|_| StatusCode::NOT_FOUND)
}
