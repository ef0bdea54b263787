//! `cargo bench --bench soak`: a long mixed load on a separately spawned `mandant serve` process, watching for
//! leaks and budget breaches rather than peak speed.
//!
//! Setup: a throwaway cluster (fsync on unless `BENCH_FSYNC=off`), `mandant serve` spawned as its own process
//! (so its RSS is the server's alone, not the load generator's) with `routing.budget_per_server` =
//! `SOAK_BUDGET` (40), and `SOAK_TENANTS` (200) clients provisioned through the API. Then, for `SOAK_MINUTES`
//! (10): `SOAK_CLIENTS` (16) concurrent HTTP clients send reads (70%: a page of recipients), writes (25%: a new
//! recipient) and imports (5%: 50 CSV rows) to uniformly chosen tenants; every minute a master template is
//! published (a new version) and a central field created (both fan out to every tenant); every
//! `SOAK_CHURN_SECS` (10) a client is provisioned and an earlier one of those deleted.
//!
//! Reported per minute: requests, p99 latency, the server's RSS (`/proc/<pid>/status` VmRSS, at the minute's
//! end); overall: status counts, the peak of tenant connections (`pg_stat_activity`, application
//! `mandant-router`, sampled every 100 ms; and the server's `tenant_pool_budget_in_use` gauge) against the
//! budget. Exits 1 if the RSS at the end grows more than 10% over the end of the first minute, if tenant
//! connections ever exceed the budget (`pg_stat_activity` may show `SOAK_BUDGET_SLACK` (1) more: a closed
//! backend leaves the view asynchronously, FACTS.md), or if any 5xx other than the documented 503s appears.
//! Writes benches/results/soak.json.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;

/// One finished request: minute, kind, status (0 = transport error), latency.
#[derive(Clone, Copy)]
struct Sample {
    minute: usize,
    kind: &'static str,
    status: u16,
    latency: Duration,
}

async fn active_clients(control: &deadpool_postgres::tokio_postgres::Client) -> (i64, i64) {
    let row = control
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'active'), count(*) FILTER (WHERE status = 'provisioning')
             FROM clients",
            &[],
        )
        .await
        .expect("client counts");
    (row.get(0), row.get(1))
}

fn csv_rows(tenant: usize, n: usize) -> String {
    let batch: u64 = rand::rng().random();
    let mut body = String::from("email,first_name,last_name\n");
    for i in 0..n {
        body.push_str(&format!(
            "i{batch:x}-{i}@t{tenant}.example.org,Imp,Row{i}\n"
        ));
    }
    body
}

#[tokio::main]
async fn main() {
    let tenants = common::env_usize("SOAK_TENANTS", 200);
    let minutes = common::env_usize("SOAK_MINUTES", 10).max(2);
    let clients = common::env_usize("SOAK_CLIENTS", 16);
    let budget = common::env_usize("SOAK_BUDGET", 40);
    let slack = common::env_usize("SOAK_BUDGET_SLACK", 1) as i64;
    let churn_every = Duration::from_secs(common::env_usize("SOAK_CHURN_SECS", 10) as u64);
    let cluster = common::cluster("bench-soak");
    let data_dir = tempfile::tempdir().expect("data dir");
    let url = cluster
        .cluster()
        .target("soak_ctl")
        .to_url()
        .expose()
        .to_owned();
    let http = common::http();
    let mut server = common::spawn_server(
        &url,
        data_dir.path(),
        &[("MANDANT__ROUTING__BUDGET_PER_SERVER", budget.to_string())],
    );
    common::wait_ready(&http, &mut server).await;
    let base = server.base.clone();
    let pid = server.pid();

    // Setup (untimed): the tenants, 50 at a time.
    let setup = Instant::now();
    let control = common::superuser(&cluster, "soak_ctl").await;
    let slugs: Vec<String> = (0..tenants).map(|i| format!("soak-{i:04}")).collect();
    for chunk in slugs.chunks(50) {
        for slug in chunk {
            let status = http
                .post(format!("{base}/v1/clients"))
                .json(&json!({"slug": slug, "name": slug}))
                .send()
                .await
                .expect("POST client")
                .status();
            assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{slug}");
        }
        let deadline = Instant::now() + Duration::from_secs(1200);
        while active_clients(&control).await.1 > 0 {
            assert!(Instant::now() < deadline, "provisioning did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (active, _) = active_clients(&control).await;
    assert!(active as usize > tenants, "only {active} clients active");
    eprintln!(
        "setup: {tenants} tenants in {:.1} s; soaking for {minutes} min with {clients} clients, budget {budget}",
        setup.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let end = started + Duration::from_secs(60 * minutes as u64);
    let minute_of = move |at: Instant| ((at - started).as_secs() / 60) as usize;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let written = Arc::new(AtomicU64::new(0));

    // Load.
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let (http, base, samples, slugs, written) = (
            http.clone(),
            base.clone(),
            samples.clone(),
            slugs.clone(),
            written.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let (tenant, roll) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..slugs.len()), rng.random_range(0..100))
                };
                let slug = &slugs[tenant];
                let at = Instant::now();
                let (kind, request) = if roll < 70 {
                    (
                        "read",
                        http.get(format!("{base}/v1/clients/{slug}/recipients?limit=20")),
                    )
                } else if roll < 95 {
                    let n = written.fetch_add(1, Ordering::Relaxed);
                    (
                        "write",
                        http.post(format!("{base}/v1/clients/{slug}/recipients"))
                            .json(&json!({"email": format!("w{worker}-{n}@example.org"), "first_name": "Soak"})),
                    )
                } else {
                    (
                        "import",
                        http.post(format!("{base}/v1/clients/{slug}/recipients/import"))
                            .header(reqwest::header::CONTENT_TYPE, "text/csv")
                            .body(csv_rows(tenant, 50)),
                    )
                };
                let status = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                samples.lock().expect("samples").push(Sample {
                    minute: minute_of(at),
                    kind,
                    status,
                    latency: at.elapsed(),
                });
            }
        }));
    }

    // Tenant connections, sampled every 100 ms from pg_stat_activity and every second from /metrics.
    let sampler = common::RouterPeaks::start(&cluster, &http, &base).await;

    // The control-plane side: a template version and a central field every minute, churn of clients between.
    let mut admin_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut note = |what: &str, status: reqwest::StatusCode| {
        if !status.is_success() {
            *admin_errors
                .entry(format!("{what} {}", status.as_u16()))
                .or_default() += 1;
        }
    };
    let mut rss = vec![0.0f64; minutes];
    let mut template: Option<String> = None;
    let mut churn: Vec<String> = Vec::new();
    let (mut provisioned, mut deleted) = (0u64, 0u64);
    let mut next_churn = started;
    let mut last_minute = usize::MAX;
    while Instant::now() < end {
        let minute = minute_of(Instant::now());
        if minute != last_minute {
            last_minute = minute;
            let body = json!({"name": "Soak", "subject": format!("Minute {minute}"),
                              "html_body": format!("<p>version for minute {minute}</p>")});
            let response = match &template {
                None => {
                    http.post(format!("{base}/v1/templates"))
                        .json(&body)
                        .send()
                        .await
                }
                Some(id) => {
                    http.put(format!("{base}/v1/templates/{id}"))
                        .json(&body)
                        .send()
                        .await
                }
            }
            .expect("template");
            note("template", response.status());
            if template.is_none() {
                let created: serde_json::Value = response.json().await.expect("template body");
                template = created["id"].as_str().map(str::to_owned);
            }
            let field = http
                .post(format!("{base}/v1/fields"))
                .json(&json!({"name": format!("soak_central_{minute}"), "type": "text"}))
                .send()
                .await
                .expect("central field");
            note("central field", field.status());
        }
        if Instant::now() >= next_churn {
            next_churn += churn_every;
            let slug = format!("churn-{provisioned:04}");
            let created = http
                .post(format!("{base}/v1/clients"))
                .json(&json!({"slug": slug, "name": slug}))
                .send()
                .await
                .expect("churn client");
            note("provision", created.status());
            provisioned += 1;
            churn.push(slug);
            if churn.len() > 2 {
                let old = churn.remove(0);
                let gone = http
                    .delete(format!("{base}/v1/clients/{old}?archive=false"))
                    .send()
                    .await
                    .expect("delete client");
                note("delete", gone.status());
                deleted += 1;
            }
        }
        // The RSS at each minute's end (the last sample taken within the minute).
        if let Some(slot) = rss.get_mut(minute) {
            *slot = common::rss_mb(pid);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    let peaks = sampler.finish().await;
    let server_alive = server.alive();

    // Report.
    let samples = samples.lock().expect("samples").clone();
    let mut status_counts: BTreeMap<String, u64> = BTreeMap::new();
    for s in &samples {
        *status_counts
            .entry(format!("{} {}", s.kind, s.status))
            .or_default() += 1;
    }
    println!(
        "\nsoak: {tenants} tenants, {clients} clients, {minutes} min, budget {budget} ({})",
        common::fsync_label()
    );
    println!("| minute | requests | reads | writes | imports | p99 ms | RSS MB |");
    println!("|---|---|---|---|---|---|---|");
    let mut per_minute = Vec::new();
    for (minute, rss_at_end) in rss.iter().enumerate() {
        let these: Vec<&Sample> = samples.iter().filter(|s| s.minute == minute).collect();
        let mut latencies: Vec<Duration> = these.iter().map(|s| s.latency).collect();
        latencies.sort();
        let count = |kind: &str| these.iter().filter(|s| s.kind == kind).count();
        let p99 = common::ms(common::percentile(&latencies, 99.0));
        println!(
            "| {} | {} | {} | {} | {} | {p99} | {rss_at_end} |",
            minute + 1,
            these.len(),
            count("read"),
            count("write"),
            count("import")
        );
        per_minute.push(json!({"minute": minute + 1, "requests": these.len(), "reads": count("read"),
            "writes": count("write"), "imports": count("import"), "p99_ms": p99, "rss_mb": rss_at_end}));
    }
    println!(
        "tenant connections: peak {} in pg_stat_activity ({} in two samples in a row), {} in the server's gauge; budget {budget}",
        peaks.pg, peaks.pg_sustained, peaks.gauge
    );
    println!("statuses: {status_counts:?}");
    println!(
        "churn: {provisioned} provisioned, {deleted} deleted; control-plane calls not 2xx: {admin_errors:?}"
    );

    let mut failures = Vec::new();
    let first = rss[0];
    let last = rss[minutes - 1];
    if first > 0.0 && last > first * 1.10 {
        failures.push(format!(
            "RSS grew {:.1}% after the first minute ({first} → {last} MB)",
            (last / first - 1.0) * 100.0
        ));
    }
    if peaks.pg_sustained > budget as i64 + slack || peaks.gauge > budget as i64 {
        failures.push(format!(
            "tenant connections exceeded the budget {budget}: {} (pg_stat_activity, two samples in a row), {} (gauge)",
            peaks.pg_sustained, peaks.gauge
        ));
    }
    let bad: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status >= 500 && s.status != 503)
        .collect();
    if !bad.is_empty() {
        failures.push(format!("{} responses 5xx other than 503", bad.len()));
    }
    if samples.iter().any(|s| s.status == 0) {
        failures.push("requests failed without a response".into());
    }
    if admin_errors.keys().any(|k| k.ends_with(" 500")) {
        failures.push(format!(
            "control-plane calls answered 500: {admin_errors:?}"
        ));
    }
    if !server_alive {
        failures.push("mandant serve exited during the soak".into());
    }
    common::write_report(
        "soak",
        &json!({
            "tenants": tenants, "clients": clients, "minutes": minutes, "budget": budget,
            "budget_slack_pg_stat_activity": slack, "fsync": common::fsync_label(),
            "per_minute": per_minute,
            "peak_tenant_connections": {"pg_stat_activity": peaks.pg,
                "pg_stat_activity_sustained": peaks.pg_sustained, "gauge": peaks.gauge},
            "status_counts": status_counts, "control_plane_not_2xx": admin_errors,
            "churn": {"provisioned": provisioned, "deleted": deleted},
            "failures": failures,
        }),
    );
    drop(server);
    // process::exit runs no destructors: stop and remove the throwaway cluster first.
    drop(control);
    drop(cluster);
    if !failures.is_empty() {
        eprintln!("soak FAILED: {failures:?}");
        std::process::exit(1);
    }
}
