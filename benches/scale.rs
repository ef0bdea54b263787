//! `cargo bench --bench scale`: memory at scale (issue #16). The RSS of a separately spawned `mandant serve` (not
//! the load generator) with 5,000 registered clients of which 1,000 are real tenant databases, all 1,000 used over
//! the run under a connection budget of 40, and whether the pools of tenants gone quiet are collected.
//!
//! Setup (timed and printed, not part of any figure):
//! - A throwaway cluster (fsync on unless `BENCH_FSYNC=off`).
//! - Baseline 1, *idle master*: `mandant serve` spawned on its own control database, with only the master client
//!   (provisioned at its first start), after a few listing calls; its RSS, then it is stopped.
//! - `SCALE_REAL` (1,000) clients provisioned for real through the API of an in-process app (`POST /v1/clients`,
//!   the provisioning jobs run by its workers, `workers.concurrency` = `SCALE_WORKERS` (8)), each then given
//!   `SCALE_RECIPIENTS` (5) recipients by a CSV import through the API (ids 1..=5). The in-process app is then
//!   stopped: the measured server has never touched a tenant before the load.
//! - `SCALE_REGISTERED` (4,000) clients *registered but never used*: rows inserted into the control plane's
//!   `clients` table in one statement, exactly as a provisioned client's row ends up (kind `sub`, parent master,
//!   status `active`, placed on the local server with the database name the provisioner would give it, the current
//!   schema version), but without the database itself: 4,000 more tenant databases would take ~30 GB of disk
//!   (~7.5 MB each), more than this machine has. That is faithful for the server's memory because the server holds
//!   nothing per client that depends on the database existing: it lists them (`GET /v1/clients`,
//!   `GET /v1/overview`), resolves them (`GET /v1/clients/{slug}` puts each active client's record and route —
//!   target with its derived credentials — into the data plane's route cache, as any request does) and would
//!   only open a connection when a request for the client's data comes, which for a registered-but-unused client
//!   never happens. Only one background task visits every client on its own: the statistics worker, which counts
//!   recipients in each tenant through the routing pool every `workers.stats_interval_secs` (300 s). It is off
//!   (`0`) in the measured server, for the registered clients (no database to count) and the real ones alike,
//!   so "used" means exactly the requests of this benchmark. (Suspended rows would be cheaper still but are
//!   neither listed as active nor kept in the route cache: not what an unused active client costs.)
//!
//! Measured: `mandant serve` spawned after all 5,000 clients exist, with `routing.budget_per_server` =
//! `SCALE_BUDGET` (40) and short hygiene timings so pools of quiet tenants are collected within the run:
//! `routing.idle_ttl_secs` = `SCALE_IDLE_TTL_SECS` (10), `routing.pool_idle_drop_secs` = `SCALE_POOL_DROP_SECS`
//! (20), `routing.gc_interval_secs` = `SCALE_GC_SECS` (2). Its RSS (`/proc/<pid>/status` VmRSS; VmHWM is the
//! peak) is read
//! 1. right after start;
//! 2. after every client was listed (`GET /v1/clients` and `GET /v1/overview`, pages of 1,000) and fetched once
//!    (`GET /v1/clients/{slug}`, all 5,001): no tenant used yet. **This is the baseline** the growth is judged
//!    against;
//! 3. after the load: `SCALE_ROUNDS` (3) sweeps over the real tenants in a shuffled order (each visit a page of
//!    recipients, `GET .../recipients?limit=10`, and one recipient by id), then `SCALE_ZIPF_SECS` (60) s of
//!    Zipf(`SCALE_ZIPF_S`, 1.1)-skewed picks over them (hot tenants), `SCALE_CLIENTS` (32) concurrent HTTP clients
//!    throughout;
//! 4. at the end, after a quiet period longer than idle TTL + pool idle drop + 2 GC intervals, in which the pool
//!    should close every idle connection and drop every tenant's pool.
//!
//! The pool's gauges (`tenant_pool_tenants`, `tenant_pool_connections{state}`, `tenant_pool_budget_in_use`) are
//! shown before and after the quiet period; tenant connections are sampled from `pg_stat_activity` (application
//! `mandant-router`, every 100 ms) and from the budget gauge (every second) against the budget. Exits 1 if the
//! RSS at the end is `SCALE_RSS_LIMIT_MB` (150) or more, if any request was not answered 2xx, if the pools were not
//! collected (tenants or connections gauge above 0 at the end), if the budget was exceeded (`pg_stat_activity` may
//! show one more: a closed backend leaves the view asynchronously, FACTS.md) or if the server died.
//! Non-2xx responses are counted per phase by status and error code; `SCALE_LOG=warn` lets the server log their
//! cause. Writes benches/results/scale.json.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::json;

use mandant::server::RunOptions;

const CONTROL_DB: &str = "scale_ctl";
const IDLE_CONTROL_DB: &str = "scale_idle";

/// One memory reading of the measured server.
#[derive(Clone, Debug)]
struct Reading {
    point: &'static str,
    rss_mb: f64,
    hwm_mb: f64,
    anon_mb: f64,
    file_mb: f64,
}

fn reading(point: &'static str, pid: u32) -> Reading {
    Reading {
        point,
        rss_mb: common::rss_mb(pid),
        hwm_mb: common::proc_mb(pid, "VmHWM"),
        anon_mb: common::proc_mb(pid, "RssAnon"),
        file_mb: common::proc_mb(pid, "RssFile"),
    }
}

/// The routing pool's gauges at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct PoolGauges {
    tenants: f64,
    idle: f64,
    active: f64,
    budget_in_use: f64,
    breakers_open: f64,
}

impl PoolGauges {
    fn json(&self) -> serde_json::Value {
        json!({"tenants": self.tenants, "connections_idle": self.idle, "connections_active": self.active,
               "budget_in_use": self.budget_in_use, "breakers_open": self.breakers_open})
    }
}

async fn gauges(http: &reqwest::Client, base: &str) -> PoolGauges {
    let text = common::scrape(http, base).await.unwrap_or_default();
    // A gauge not published yet (the budget of a server no tenant was used on) counts as 0.
    let get = |name: &str, label: &str| common::metric_sum(&text, name, label).unwrap_or(0.0);
    PoolGauges {
        tenants: get("tenant_pool_tenants", ""),
        idle: get("tenant_pool_connections", "state=\"idle\""),
        active: get("tenant_pool_connections", "state=\"active\""),
        budget_in_use: get("tenant_pool_budget_in_use", ""),
        breakers_open: get("tenant_pool_breakers_open", ""),
    }
}

/// Requests of one phase: count, statuses (0 = no response), latencies, and the responses not 2xx by status
/// and error code.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    latencies: Vec<Duration>,
    refusals: BTreeMap<String, u64>,
}

impl Tally {
    fn errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    fn note(&mut self, (status, latency, refusal): (u16, Duration, Option<String>)) {
        *self.statuses.entry(status).or_default() += 1;
        self.latencies.push(latency);
        if let Some(refusal) = refusal {
            *self.refusals.entry(refusal).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        for (r, n) in other.refusals {
            *self.refusals.entry(r).or_default() += n;
        }
        self.latencies.extend(other.latencies);
    }

    fn json(&mut self, wall: Duration) -> serde_json::Value {
        self.latencies.sort();
        let n = self.latencies.len();
        json!({
            "requests": n, "wall_s": (wall.as_secs_f64() * 10.0).round() / 10.0,
            "per_s": (n as f64 / wall.as_secs_f64().max(1e-9)).round(),
            "p50_ms": common::ms(common::percentile(&self.latencies, 50.0)),
            "p99_ms": common::ms(common::percentile(&self.latencies, 99.0)),
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "not_2xx": self.errors(),
            "not_2xx_by_code": self.refusals,
        })
    }
}

/// GETs every URL, `clients` at a time; statuses and latencies.
async fn get_all(http: &reqwest::Client, urls: Vec<String>, clients: usize) -> Tally {
    let urls = Arc::new(urls);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, urls, next) = (http.clone(), urls.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = urls.get(i) else { break };
                tally.note(get(&http, url).await);
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        all.merge(task.await.expect("request task"));
    }
    all
}

/// One GET: its status (0 = no response), latency and, when not 2xx, "<status> <error code>".
async fn get(http: &reqwest::Client, url: &str) -> (u16, Duration, Option<String>) {
    let at = Instant::now();
    let (status, body) = match http.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap_or_default())
        }
        Err(e) => (0, bytes::Bytes::from(e.to_string())),
    };
    let latency = at.elapsed();
    let refusal = (!(200..300).contains(&status)).then(|| {
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(80).collect());
        format!("{status} {code}")
    });
    (status, latency, refusal)
}

/// Every page of a listing (`GET {path}?limit=1000`, following `next_cursor`): the number of items and the
/// requests' tally.
async fn all_pages(http: &reqwest::Client, base: &str, path: &str) -> (usize, Tally) {
    let mut tally = Tally::default();
    let mut items = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut request = http
            .get(format!("{base}{path}"))
            .query(&[("limit", "1000")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let at = Instant::now();
        let response = request.send().await.expect("listing");
        let status = response.status().as_u16();
        *tally.statuses.entry(status).or_default() += 1;
        if status != 200 {
            tally.latencies.push(at.elapsed());
            break;
        }
        let page: serde_json::Value = response.json().await.expect("listing body");
        tally.latencies.push(at.elapsed());
        items += page["items"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    (items, tally)
}

/// Knobs of the measured server.
struct Knobs {
    budget: usize,
    idle_ttl: u64,
    pool_drop: u64,
    gc: u64,
    /// The server's log level (`SCALE_LOG`, default `error`; `warn` names the cause of a 503).
    log: String,
}

impl Knobs {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "MANDANT__ROUTING__BUDGET_PER_SERVER",
                self.budget.to_string(),
            ),
            ("MANDANT__ROUTING__IDLE_TTL_SECS", self.idle_ttl.to_string()),
            (
                "MANDANT__ROUTING__POOL_IDLE_DROP_SECS",
                self.pool_drop.to_string(),
            ),
            ("MANDANT__ROUTING__GC_INTERVAL_SECS", self.gc.to_string()),
            ("MANDANT__WORKERS__STATS_INTERVAL_SECS", "0".to_owned()),
            ("MANDANT__LOG__LEVEL", self.log.clone()),
        ]
    }
}

/// Baseline 1: a server on its own control plane holding only the master. Returns its RSS (after start, after a
/// few listing calls).
async fn idle_master_rss(
    cluster: &mandant::embedded::ThrowawayCluster,
    http: &reqwest::Client,
    knobs: &Knobs,
) -> (f64, f64) {
    let url = cluster
        .cluster()
        .target(IDLE_CONTROL_DB)
        .to_url()
        .expose()
        .to_owned();
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut server = common::spawn_server(&url, data_dir.path(), &knobs.env());
    common::wait_ready(http, &mut server).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let master: serde_json::Value = http
            .get(format!("{}/v1/clients/master", server.base))
            .send()
            .await
            .expect("master")
            .json()
            .await
            .expect("master body");
        if master["status"] == "active" {
            break;
        }
        assert!(Instant::now() < deadline, "the master was not provisioned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = common::rss_mb(server.pid());
    for path in ["/v1/clients", "/v1/overview"] {
        let (items, tally) = all_pages(http, &server.base, path).await;
        assert_eq!((items, tally.errors()), (1, 0), "{path}");
    }
    let _ = gauges(http, &server.base).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let listed = common::rss_mb(server.pid());
    drop(server);
    (started, listed)
}

/// Inserts `n` registered clients (see the module documentation) next to the real ones, their database names
/// derived from their ids with `db_prefix` as the provisioner names them; returns their slugs.
async fn register(
    control: &deadpool_postgres::tokio_postgres::Client,
    n: usize,
    db_prefix: &str,
) -> Vec<String> {
    let inserted = control
        .execute(
            "INSERT INTO clients (id, slug, name, parent_id, kind, status, server_id, db_name, schema_version)
             SELECT r.id, 'reg-' || lpad(r.i::text, 5, '0'), 'Registered ' || r.i, m.id, 'sub', 'active',
                    m.server_id, $2 || replace(r.id::text, '-', ''), m.schema_version
             FROM (SELECT i, gen_random_uuid() AS id FROM generate_series(0, $1 - 1) AS i) AS r
             CROSS JOIN (SELECT id, server_id, schema_version FROM clients WHERE kind = 'master') AS m",
            &[&(n as i32), &db_prefix],
        )
        .await
        .expect("register clients");
    assert_eq!(inserted as usize, n);
    (0..n).map(|i| format!("reg-{i:05}")).collect()
}

#[tokio::main]
async fn main() {
    let real = common::env_usize("SCALE_REAL", 1000);
    let registered = common::env_usize("SCALE_REGISTERED", 4000);
    let recipients = common::env_usize("SCALE_RECIPIENTS", 5).max(1);
    let workers = common::env_usize("SCALE_WORKERS", 8);
    let clients = common::env_usize("SCALE_CLIENTS", 32);
    let rounds = common::env_usize("SCALE_ROUNDS", 3);
    let zipf_secs = common::env_usize("SCALE_ZIPF_SECS", 60) as u64;
    let zipf_s: f64 = std::env::var("SCALE_ZIPF_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.1);
    let limit_mb = common::env_usize("SCALE_RSS_LIMIT_MB", 150) as f64;
    let knobs = Knobs {
        budget: common::env_usize("SCALE_BUDGET", 40),
        idle_ttl: common::env_usize("SCALE_IDLE_TTL_SECS", 10) as u64,
        pool_drop: common::env_usize("SCALE_POOL_DROP_SECS", 20) as u64,
        gc: common::env_usize("SCALE_GC_SECS", 2).max(1) as u64,
        log: std::env::var("SCALE_LOG").unwrap_or_else(|_| "error".to_owned()),
    };
    let cluster = common::cluster("bench-scale");
    let http = common::http();

    // Baseline 1: an idle server with only the master.
    let (idle_started, idle_listed) = idle_master_rss(&cluster, &http, &knobs).await;
    eprintln!(
        "idle server with only the master: {idle_started} MB after start, {idle_listed} MB after listing"
    );

    // Setup: the real tenants, through the API of an in-process app.
    let setup = Instant::now();
    let worker_env = workers.to_string();
    let settings = common::settings(
        &cluster,
        CONTROL_DB,
        &[
            ("MANDANT__WORKERS__CONCURRENCY", worker_env.as_str()),
            ("MANDANT__WORKERS__STATS_INTERVAL_SECS", "0"),
        ],
    );
    let db_prefix = settings.tenants.db_prefix.clone();
    let app = common::start_app(settings, RunOptions::default()).await;
    let slugs: Vec<String> = (0..real).map(|i| format!("t-{i:05}")).collect();
    common::create_clients(&app, &http, &slugs).await;
    let provisioned_s = setup.elapsed().as_secs_f64();
    eprintln!("setup: {real} clients provisioned in {provisioned_s:.1} s ({workers} workers)");
    let imports = Instant::now();
    let csv: String = std::iter::once("email,first_name,last_name\n".to_owned())
        .chain((1..=recipients).map(|i| format!("r{i}@scale.example.org,Scale,Row{i}\n")))
        .collect();
    {
        let next = Arc::new(AtomicUsize::new(0));
        let slugs = Arc::new(slugs.clone());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (http, next, slugs, csv, base) = (
                http.clone(),
                next.clone(),
                slugs.clone(),
                csv.clone(),
                app.base.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(slug) = slugs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let response = http
                        .post(format!("{base}/v1/clients/{slug}/recipients/import"))
                        .header(reqwest::header::CONTENT_TYPE, "text/csv")
                        .body(csv.clone())
                        .send()
                        .await
                        .expect("import");
                    assert_eq!(response.status(), reqwest::StatusCode::OK, "{slug}");
                }
            }));
        }
        for task in tasks {
            task.await.expect("import task");
        }
    }
    let imported_s = imports.elapsed().as_secs_f64();
    app.stop().await;
    let control = common::superuser(&cluster, CONTROL_DB).await;
    let registering = Instant::now();
    let registered_slugs = register(&control, registered, &db_prefix).await;
    let registered_s = registering.elapsed().as_secs_f64();
    let setup_s = setup.elapsed().as_secs_f64();
    eprintln!(
        "setup: {recipients} recipients imported into each in {imported_s:.1} s; {registered} clients registered in \
         {registered_s:.1} s; {setup_s:.1} s in all"
    );

    // The measured server, started after every client exists.
    let url = cluster
        .cluster()
        .target(CONTROL_DB)
        .to_url()
        .expose()
        .to_owned();
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut server = common::spawn_server(&url, data_dir.path(), &knobs.env());
    common::wait_ready(&http, &mut server).await;
    let base = server.base.clone();
    let pid = server.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut readings = vec![reading("after start", pid)];
    let mut phases: Vec<(String, serde_json::Value)> = Vec::new();
    let mut errors = 0u64;

    // Every client listed and fetched once: the server knows all 5,001, no tenant used.
    let total = real + registered + 1;
    let known = Instant::now();
    let (listed, mut tally) = all_pages(&http, &base, "/v1/clients").await;
    let (overviewed, overview_tally) = all_pages(&http, &base, "/v1/overview").await;
    assert_eq!(
        (listed, overviewed),
        (total, total),
        "clients listed, in the overview"
    );
    tally.merge(overview_tally);
    errors += tally.errors();
    phases.push((
        "list (clients, overview)".into(),
        tally.json(known.elapsed()),
    ));
    let every: Vec<String> = std::iter::once("master".to_owned())
        .chain(slugs.iter().cloned())
        .chain(registered_slugs.iter().cloned())
        .map(|slug| format!("{base}/v1/clients/{slug}"))
        .collect();
    let fetched = Instant::now();
    let mut tally = get_all(&http, every, clients).await;
    errors += tally.errors();
    phases.push((
        format!("GET /v1/clients/{{slug}} x {total}"),
        tally.json(fetched.elapsed()),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    readings.push(reading("all clients known, no tenant used (baseline)", pid));
    let before_load = gauges(&http, &base).await;

    // The load: every real tenant, then a skewed phase.
    let sampler = common::RouterPeaks::start(&cluster, &http, &base).await;
    let load = Instant::now();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..real).collect();
        order.shuffle(&mut rand::rng());
        let urls: Vec<String> = order
            .iter()
            .flat_map(|&t| {
                let slug = &slugs[t];
                let id = rand::rng().random_range(1..=recipients);
                [
                    format!("{base}/v1/clients/{slug}/recipients?limit=10"),
                    format!("{base}/v1/clients/{slug}/recipients/{id}"),
                ]
            })
            .collect();
        let started = Instant::now();
        let mut tally = get_all(&http, urls, clients).await;
        errors += tally.errors();
        phases.push((
            format!("sweep {} (every tenant)", round + 1),
            tally.json(started.elapsed()),
        ));
        eprintln!("sweep {} done", round + 1);
    }
    let zipf_started = Instant::now();
    let hot_tenants = {
        let zipf = Arc::new(common::Zipf::new(real, zipf_s));
        let mut rank_to_tenant: Vec<usize> = (0..real).collect();
        rank_to_tenant.shuffle(&mut rand::rng());
        let rank_to_tenant = Arc::new(rank_to_tenant);
        let slugs = Arc::new(slugs.clone());
        let end = zipf_started + Duration::from_secs(zipf_secs);
        let touched = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (http, base, zipf, rank_to_tenant, slugs, touched) = (
                http.clone(),
                base.clone(),
                zipf.clone(),
                rank_to_tenant.clone(),
                slugs.clone(),
                touched.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < end {
                    let (tenant, read_page, id) = {
                        let mut rng = rand::rng();
                        (
                            rank_to_tenant[zipf.sample(&mut rng)],
                            rng.random_bool(0.5),
                            rng.random_range(1..=recipients),
                        )
                    };
                    let slug = &slugs[tenant];
                    let url = if read_page {
                        format!("{base}/v1/clients/{slug}/recipients?limit=10")
                    } else {
                        format!("{base}/v1/clients/{slug}/recipients/{id}")
                    };
                    tally.note(get(&http, &url).await);
                    touched.lock().expect("touched").insert(tenant);
                }
                tally
            }));
        }
        let mut all = Tally::default();
        for task in tasks {
            all.merge(task.await.expect("zipf task"));
        }
        errors += all.errors();
        phases.push((
            format!("zipf s={zipf_s}, {zipf_secs} s"),
            all.json(zipf_started.elapsed()),
        ));
        touched.lock().expect("touched").len()
    };
    let load_s = load.elapsed().as_secs_f64();
    let peaks = sampler.finish().await;
    readings.push(reading("after the load", pid));
    let after_load = gauges(&http, &base).await;
    // The independent check of the budget: tenant backends once the load has stopped (a second for the last
    // closed ones to exit). During the sweeps' churn (hundreds of evictions a second) a steady number of backends
    // is always exiting and still listed, which no sampling window tells from a held connection; at rest every
    // listed backend is one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_rest: i64 = control
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mandant-router'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);

    // The quiet period: idle connections close after the TTL, then the pools are dropped.
    let quiet = Duration::from_secs(knobs.idle_ttl + knobs.pool_drop + 2 * knobs.gc + 5);
    eprintln!("quiet for {} s", quiet.as_secs());
    let quiet_started = Instant::now();
    let mut timeline = Vec::new();
    while quiet_started.elapsed() < quiet {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let g = gauges(&http, &base).await;
        let mut point = g.json();
        point["at_s"] = json!(quiet_started.elapsed().as_secs());
        point["rss_mb"] = json!(common::rss_mb(pid));
        timeline.push(point);
    }
    let after_quiet = gauges(&http, &base).await;
    readings.push(reading("end (after the quiet period)", pid));
    let server_alive = server.alive();

    // Report.
    let baseline = readings[1].rss_mb;
    let end = readings.last().expect("readings").clone();
    println!(
        "\nscale: {real} real + {registered} registered clients (+ master), budget {}, {clients} HTTP clients, {}",
        knobs.budget,
        common::fsync_label()
    );
    println!(
        "setup {setup_s:.0} s: provisioning {provisioned_s:.0} s ({workers} workers), imports {imported_s:.0} s, \
         registration {registered_s:.1} s"
    );
    println!("\n| point | VmRSS MB | VmHWM MB | RssAnon MB | RssFile MB | vs baseline |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| idle server, only the master (after start / listed) | {idle_started} / {idle_listed} | | | | |"
    );
    for r in &readings {
        println!(
            "| {} | {} | {} | {} | {} | {:+.1} |",
            r.point,
            r.rss_mb,
            r.hwm_mb,
            r.anon_mb,
            r.file_mb,
            r.rss_mb - baseline
        );
    }
    println!("\n| phase | requests | req/s | p50 ms | p99 ms | not 2xx |");
    println!("|---|---|---|---|---|---|");
    for (name, p) in &phases {
        let codes = p["not_2xx_by_code"]
            .as_object()
            .filter(|o| !o.is_empty())
            .map(|o| format!(" {}", serde_json::Value::Object(o.clone())))
            .unwrap_or_default();
        println!(
            "| {name} | {} | {} | {} | {} | {}{codes} |",
            p["requests"], p["per_s"], p["p50_ms"], p["p99_ms"], p["not_2xx"]
        );
    }
    println!(
        "\n| pool gauges | tenants | connections idle | connections active | budget in use | breakers open |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, g) in [
        ("before the load", before_load),
        ("after the load", after_load),
        ("after the quiet period", after_quiet),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            g.tenants, g.idle, g.active, g.budget_in_use, g.breakers_open
        );
    }
    println!(
        "\ntenants used: {real} in the sweeps, {hot_tenants} distinct in the zipf phase; load {load_s:.0} s; \
         quiet {} s",
        quiet.as_secs()
    );
    println!(
        "tenant connections: peak {} in pg_stat_activity ({} in two samples in a row, closing ones included; {at_rest} once the load stopped), {} in the budget gauge; budget {}",
        peaks.pg, peaks.pg_sustained, peaks.gauge, knobs.budget
    );
    println!("requests not answered 2xx: {errors}");

    let mut failures = Vec::new();
    if end.rss_mb >= limit_mb {
        failures.push(format!("RSS at the end {} MB >= {limit_mb} MB", end.rss_mb));
    }
    if errors > 0 {
        failures.push(format!("{errors} requests not answered 2xx"));
    }
    if after_quiet.tenants != 0.0 || after_quiet.idle + after_quiet.active != 0.0 {
        failures.push(format!(
            "pools of quiet tenants not collected: {after_quiet:?}"
        ));
    }
    if at_rest > knobs.budget as i64 || peaks.gauge > knobs.budget as i64 {
        failures.push(format!(
            "tenant connections exceeded the budget {}: {at_rest} (pg_stat_activity once the load stopped), {} (gauge)",
            knobs.budget, peaks.gauge
        ));
    }
    if !server_alive {
        failures.push("mandant serve exited during the run".into());
    }
    common::write_report(
        "scale",
        &json!({
            "real_clients": real, "registered_clients": registered, "recipients_per_tenant": recipients,
            "budget": knobs.budget, "http_clients": clients, "fsync": common::fsync_label(),
            "routing": {"idle_ttl_secs": knobs.idle_ttl, "pool_idle_drop_secs": knobs.pool_drop,
                        "gc_interval_secs": knobs.gc},
            "setup_s": {"provisioning": provisioned_s, "imports": imported_s, "registration": registered_s,
                        "total": setup_s, "workers": workers},
            "baseline": {
                "rss_mb_all_clients_known_no_tenant_used": baseline,
                "idle_server_only_master_rss_mb": {"after_start": idle_started, "after_listing": idle_listed},
            },
            "readings": readings.iter().map(|r| json!({"point": r.point, "rss_mb": r.rss_mb, "hwm_mb": r.hwm_mb,
                "rss_anon_mb": r.anon_mb, "rss_file_mb": r.file_mb})).collect::<Vec<_>>(),
            "rss_limit_mb": limit_mb,
            "phases": phases.iter().map(|(n, p)| json!({"phase": n, "result": p})).collect::<Vec<_>>(),
            "pool_gauges": {"before_load": before_load.json(), "after_load": after_load.json(),
                            "after_quiet": after_quiet.json(), "quiet_timeline": timeline},
            "tenants_used": {"sweeps": real, "zipf_distinct": hot_tenants},
            "peak_tenant_connections": {"pg_stat_activity": peaks.pg,
                "pg_stat_activity_sustained": peaks.pg_sustained, "pg_stat_activity_at_rest": at_rest,
                "gauge": peaks.gauge},
            "not_2xx": errors,
            "failures": failures,
        }),
    );
    // process::exit runs no destructors: stop the server and remove the throwaway cluster first.
    drop(server);
    drop(control);
    drop(cluster);
    if !failures.is_empty() {
        eprintln!("scale FAILED: {failures:?}");
        std::process::exit(1);
    }
}
