//! Shared pieces of the system benchmarks: a throwaway cluster, the app on it, timing and the JSON report.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mandant::config::{LoadOptions, Settings, TEST_TOML};
use mandant::embedded::ThrowawayCluster;
use mandant::server::{Application, RunOptions};

/// Jiffies of the whole machine from the first line of `/proc/stat`: (busy, total, softirq). Busy is user + nice +
/// system + irq + softirq + steal; total adds idle and iowait; softirq (loopback network receive among it) is charged
/// to no process. USER_HZ is 100 on Linux: one jiffy is 10 ms of one core.
pub fn machine_jiffies() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let softirq = fields.get(6).copied().unwrap_or(0);
    (total - idle.min(total), total, softirq)
}

/// Clock ticks per second of `/proc` times (USER_HZ).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// What every PostgreSQL process has used so far: CPU time (exited backends included, through their postmaster's
/// reaped-children times) and the voluntary context switches of the live ones (a backend sleeping until its
/// client's next message, mostly; an exited backend's are lost, so compare these only across phases whose
/// backends persist).
pub struct PostgresUsage {
    pub cpu: Duration,
    pub switches: u64,
}

/// See [`PostgresUsage`].
pub fn postgres_usage() -> PostgresUsage {
    let ticks = clock_ticks();
    // pid -> (comm, ppid, own ticks, reaped children's ticks)
    let mut procs: HashMap<u32, (String, u32, u64, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return PostgresUsage {
            cpu: Duration::ZERO,
            switches: 0,
        };
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // rest[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
        let field = |n: usize| -> u64 { rest.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
        procs.insert(
            pid,
            (
                comm,
                field(4) as u32,
                field(14) + field(15),
                field(16) + field(17),
            ),
        );
    }
    let total: u64 = procs
        .values()
        .filter(|(comm, ..)| comm == "postgres")
        .map(|(_, ppid, own, reaped)| {
            let postmaster = procs
                .get(ppid)
                .is_none_or(|(parent, ..)| parent != "postgres");
            own + if postmaster { *reaped } else { 0 }
        })
        .sum();
    let switches = procs
        .iter()
        .filter(|(_, (comm, ..))| comm == "postgres")
        .filter_map(|(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum();
    PostgresUsage {
        cpu: Duration::from_secs_f64(total as f64 / ticks),
        switches,
    }
}

/// Jiffies (clock ticks of `/proc/stat`) as time.
pub fn jiffies_to_duration(jiffies: u64) -> Duration {
    Duration::from_secs_f64(jiffies as f64 / clock_ticks())
}

/// A size from the environment, or its default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The benchmarks' cluster: fsync on (as in production) unless BENCH_FSYNC=off; BENCH_PG_SETTINGS adds server
/// settings (`name=value`, comma-separated: `shared_buffers=1GB`).
pub fn cluster(tag: &str) -> ThrowawayCluster {
    let fsync = std::env::var("BENCH_FSYNC")
        .map(|v| v != "off")
        .unwrap_or(true);
    ThrowawayCluster::start_with_settings(tag, fsync, &pg_settings()).expect("cluster")
}

/// BENCH_PG_SETTINGS, parsed (empty when unset). A pair without `=` stops the benchmark: dropped silently, the run
/// would measure PostgreSQL's default while its report said otherwise.
pub fn pg_settings() -> Vec<(String, String)> {
    std::env::var("BENCH_PG_SETTINGS")
        .unwrap_or_default()
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                (name.trim().to_owned(), value.trim().to_owned())
            }
            _ => panic!("BENCH_PG_SETTINGS: {pair:?} is not name=value"),
        })
        .collect()
}

pub fn fsync_label() -> &'static str {
    if std::env::var("BENCH_FSYNC")
        .map(|v| v != "off")
        .unwrap_or(true)
    {
        "fsync on"
    } else {
        "fsync off"
    }
}

/// A superuser session on `database` of the benchmark's cluster (set-up, sabotage, baselines).
pub async fn superuser(
    cluster: &ThrowawayCluster,
    database: &str,
) -> deadpool_postgres::tokio_postgres::Client {
    cluster
        .cluster()
        .target(database)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("superuser session on {database}: {e}"))
}

/// Settings for an app on `cluster`, with `extra` `MANDANT__` overrides.
pub fn settings(cluster: &ThrowawayCluster, control_db: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert(
        "MANDANT__DATABASE__URL".into(),
        cluster
            .cluster()
            .target(control_db)
            .to_url()
            .expose()
            .to_owned(),
    );
    env.insert("MANDANT__LOG__LEVEL".into(), "error".into());
    env.insert(
        "MANDANT__TENANTS__CREDENTIAL_SECRET".into(),
        CREDENTIAL_SECRET.into(),
    );
    env.insert("MANDANT__AUTH__BOOTSTRAP_TOKEN".into(), ADMIN_TOKEN.into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    Settings::load(&LoadOptions {
        overlay: Some(TEST_TOML.to_owned()),
        config_dir: None,
        explicit_file: None,
        env,
    })
    .expect("bench settings")
}

/// `tenants.credential_secret` of every benchmark app, in-process or spawned: tenant passwords derive from it, so a
/// spawned server reaches the tenants an in-process app provisioned on the same control plane.
pub const CREDENTIAL_SECRET: &str = "bench-secret";

/// The first admin's token of every benchmark app (`auth.bootstrap_token`).
pub const ADMIN_TOKEN: &str = "mdt_bench-admin-token-for-benchmarks-only-0001";

/// Default headers that authenticate as the admin.
pub fn admin_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
    );
    headers
}

/// An HTTP client that authenticates as the admin.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(admin_headers())
        .build()
        .expect("http client")
}

/// A running app: its address and a stop handle.
pub struct RunningApp {
    pub base: String,
    pub state: mandant::app::AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn start_app(settings: Settings, options: RunOptions) -> RunningApp {
    let app = Application::build(settings, options)
        .await
        .expect("build app");
    let base = format!("http://{}", app.local_addr().expect("addr"));
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    RunningApp {
        base,
        state,
        stop,
        task,
    }
}

impl RunningApp {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The median of `f` over `items` (the upper one of an even count, as the route benchmark always reported).
pub fn median_of<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    let mut v: Vec<f64> = items.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// Writes `benches/results/<name>.json` and says where.
pub fn write_report(name: &str, report: &serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&dir).expect("results dir");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(report).expect("json"))
        .expect("write report");
    println!("\nwrote {}", path.display());
}

/// Waits until at least `n` clients are active and no provisioning is queued (n = 0: only the latter).
pub async fn wait_active(app: &RunningApp, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let clients = app
            .state
            .control()
            .all_live_clients()
            .await
            .expect("clients");
        let active = clients
            .iter()
            .filter(|c| c.status == mandant::domain::ClientStatus::Active)
            .count();
        let busy = clients
            .iter()
            .any(|c| c.status == mandant::domain::ClientStatus::Provisioning);
        if active >= n && !busy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {active} of {n} clients active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `slugs` as clients through the API, 50 at a time (each batch provisioned before the next), and waits
/// until all of them (and the master) are active.
pub async fn create_clients(app: &RunningApp, http: &reqwest::Client, slugs: &[String]) {
    for chunk in slugs.chunks(50) {
        for slug in chunk {
            let status = http
                .post(format!("{}/v1/clients", app.base))
                .json(&serde_json::json!({"slug": slug, "name": slug}))
                .send()
                .await
                .expect("POST client")
                .status();
            assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{slug}");
        }
        wait_active(app, 0).await;
    }
    wait_active(app, slugs.len() + 1).await;
}

/// The stand-in for the access check in handler-only phases (full access, the client from the route cache):
/// handlers read the check's result.
pub async fn full_access(
    axum::extract::State(state): axum::extract::State<mandant::app::AppState>,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let slug = params
        .iter()
        .find(|(k, _)| k == "slug")
        .map(|(_, v)| v.as_str())
        .expect("a {slug} route");
    let slug = mandant::domain::ClientSlug::parse(slug).expect("slug");
    let resolved = state.data().resolve(&slug).await.expect("client");
    request
        .extensions_mut()
        .insert(mandant::http::auth::ClientScope::new(
            resolved,
            mandant::domain::rights::Grant::EVERYTHING,
            false,
        ));
    next.run(request).await
}

/// Serves `router` on a free local port; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

/// mandant's own handler on `route`, behind the stand-in for the access check and none of the server's other
/// middleware, served on a free port; returns its base URL.
pub async fn handler_only(
    state: &mandant::app::AppState,
    route: &str,
    handler: axum::routing::MethodRouter<mandant::app::AppState>,
) -> String {
    serve(
        axum::Router::new()
            .route(route, handler)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                full_access,
            ))
            .with_state(state.clone()),
    )
    .await
}

/// A `mandant serve` spawned as its own process (so its RSS is the server's alone, not the load generator's);
/// stopped with SIGTERM (then SIGKILL after 30 s) on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Spawns `mandant serve` on the control plane `url` (a free port, the benchmark admin token and credential
/// secret, log level error), with `extra` `MANDANT__` overrides; every `MANDANT__` variable and `RUST_LOG` of this
/// process's environment is removed first.
pub fn spawn_server(url: &str, data_dir: &Path, extra: &[(&str, String)]) -> Server {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mandant"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MANDANT__") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
        .arg("serve")
        .env("MANDANT__DATABASE__URL", url)
        .env("MANDANT__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("MANDANT__EMBEDDED__DATA_DIR", data_dir)
        .env("MANDANT__AUTH__BOOTSTRAP_TOKEN", ADMIN_TOKEN)
        .env("MANDANT__TENANTS__CREDENTIAL_SECRET", CREDENTIAL_SECRET)
        .env("MANDANT__LOG__LEVEL", "error");
    for (key, value) in extra {
        command.env(key, value);
    }
    command.stdout(Stdio::null()).stderr(Stdio::inherit());
    let child = command.spawn().expect("spawn mandant serve");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Waits until the spawned server answers `/readyz` (panics if it exits or takes over two minutes).
pub async fn wait_ready(http: &reqwest::Client, server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("mandant serve exited during start: {status}");
        }
        if let Ok(r) = http.get(format!("{}/readyz", server.base)).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "mandant serve did not get ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A memory figure of a process from `/proc/<pid>/status` (`VmRSS`, `VmHWM`, `RssAnon`, ...) in MB, one decimal;
/// 0 when unreadable.
pub fn proc_mb(pid: u32, field: &str) -> f64 {
    let prefix = format!("{field}:");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(&prefix))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}

/// The resident set size of a process in MB (`VmRSS`).
pub fn rss_mb(pid: u32) -> f64 {
    proc_mb(pid, "VmRSS")
}

/// The server's `/metrics` text.
pub async fn scrape(http: &reqwest::Client, base: &str) -> Option<String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The sum of metric `name` over its label sets whose labels contain `label` (e.g. `state="idle"`; "" = all), from
/// a `/metrics` text; `None` when absent.
pub fn metric_sum(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let labels = match rest.chars().next() {
            Some('{') => &rest[..rest.find('}').unwrap_or(rest.len())],
            Some(' ') => "",
            _ => continue,
        };
        if !labels.contains(label) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            total = Some(total.unwrap_or(0.0) + value);
        }
    }
    total
}

/// `tenant_pool_budget_in_use` summed over servers, from the server's `/metrics`.
pub async fn metric_in_use(http: &reqwest::Client, base: &str) -> Option<i64> {
    let text = scrape(http, base).await?;
    metric_sum(&text, "tenant_pool_budget_in_use", "").map(|v| v as i64)
}

/// Zipf over `n` ranks with exponent `s`: rank i (0-based) has weight 1 / (i + 1)^s.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for i in 0..n {
            total += 1.0 / ((i + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    pub fn sample(&self, rng: &mut impl rand::Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// The tenant connections of a spawned server, sampled until [`RouterPeaks::finish`]: `pg_stat_activity`
/// (application `mandant-router`) every 100 ms, the server's `tenant_pool_budget_in_use` gauge every second.
pub struct RouterPeaks {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pg: std::sync::Arc<std::sync::atomic::AtomicI64>,
    pg_sustained: std::sync::Arc<std::sync::atomic::AtomicI64>,
    gauge: std::sync::Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

/// The peaks [`RouterPeaks`] saw. `pg_sustained` is the highest `pg_stat_activity` count seen in two consecutive
/// samples: a backend whose connection the router closed leaves the view only once its process has exited, which
/// on a loaded machine can lag the close, so a single sample counts closing backends too (the soak saw 42-44
/// against a budget of 40, with `routing.prepared_statements` on and off alike, the server's gauge never above
/// 40); a connection really held is still there 100 ms later.
#[derive(Debug, Clone, Copy)]
pub struct Peaks {
    pub pg: i64,
    pub pg_sustained: i64,
    pub gauge: i64,
}

impl RouterPeaks {
    pub async fn start(cluster: &ThrowawayCluster, http: &reqwest::Client, base: &str) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicI64};
        let stop = Arc::new(AtomicBool::new(false));
        let (pg, pg_sustained, gauge) = (
            Arc::new(AtomicI64::new(0)),
            Arc::new(AtomicI64::new(0)),
            Arc::new(AtomicI64::new(0)),
        );
        let task = sample_router_peaks(
            cluster,
            http,
            base,
            stop.clone(),
            [pg.clone(), pg_sustained.clone(), gauge.clone()],
        )
        .await;
        Self {
            stop,
            pg,
            pg_sustained,
            gauge,
            task,
        }
    }

    pub async fn finish(self) -> Peaks {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Peaks {
            pg: self.pg.load(Ordering::Relaxed),
            pg_sustained: self.pg_sustained.load(Ordering::Relaxed),
            gauge: self.gauge.load(Ordering::Relaxed),
        }
    }
}

async fn sample_router_peaks(
    cluster: &ThrowawayCluster,
    http: &reqwest::Client,
    base: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    [peak_pg, peak_pg_sustained, peak_gauge]: [std::sync::Arc<std::sync::atomic::AtomicI64>; 3],
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let admin = superuser(cluster, "postgres").await;
    let (http, base) = (http.clone(), base.to_owned());
    tokio::spawn(async move {
        let mut tick = 0u64;
        let mut previous = 0i64;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(row) = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mandant-router'",
                    &[],
                )
                .await
            {
                let now = row.get::<_, i64>(0);
                peak_pg.fetch_max(now, Ordering::Relaxed);
                peak_pg_sustained.fetch_max(now.min(previous), Ordering::Relaxed);
                previous = now;
            }
            if tick.is_multiple_of(10)
                && let Some(in_use) = metric_in_use(&http, &base).await
            {
                peak_gauge.fetch_max(in_use, Ordering::Relaxed);
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
