//! `cargo bench --bench provision`: 100 clients through the HTTP API end to end (POST → active), beside two
//! baselines measured in the same run on the same cluster:
//!   floor: a plain sequential loop of `CREATE DATABASE ... TEMPLATE mandant_template`;
//!   naive: what other tools do, `CREATE DATABASE` from template0 plus every tenant migration, sequentially.
//! Prints a table and writes benches/results/provision.json.

mod common;

use std::time::{Duration, Instant};

use mandant::app::RunOptions;
use mandant::tenant::migrate::migrate_database;

const CLIENTS: usize = 100;
/// Clients provisioned one at a time first, for the idle sign-up latency.
const IDLE_SAMPLES: usize = 10;

#[tokio::main]
async fn main() {
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CLIENTS);
    let cluster = common::cluster("bench-provision");
    let admin = cluster
        .cluster()
        .target("postgres")
        .connect()
        .await
        .expect("admin");

    // mandant: the real service, HTTP in, workers provisioning.
    let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into());
    let settings = common::settings(&cluster, "bench_ctl", &[("MANDANT__LOG__LEVEL", &level)]);
    mandant::telemetry::init(&settings.log);
    let template = settings.tenants.template_db.clone();
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = reqwest::Client::new();
    common::wait_active(&app, 1).await; // the master: creates and migrates the template, untimed

    // Sign-up latency on an idle system: one client at a time, POST until the operation has succeeded.
    let mut idle = Vec::new();
    for i in 0..IDLE_SAMPLES {
        let t = Instant::now();
        let created: serde_json::Value = http
            .post(format!("{}/v1/clients", app.base))
            .json(&serde_json::json!({"slug": format!("idle-{i}"), "name": "Idle"}))
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("body");
        let op = created["operation"].as_str().expect("operation").to_owned();
        loop {
            let state: serde_json::Value = http
                .get(format!("{}/v1/operations/{op}", app.base))
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("body");
            if state["status"] == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        idle.push(t.elapsed());
    }
    idle.sort();
    let already = 1 + IDLE_SAMPLES;

    let started = Instant::now();
    let mut posts = Vec::new();
    for i in 0..clients {
        let http = http.clone();
        let base = app.base.clone();
        posts.push(tokio::spawn(async move {
            let response = http
                .post(format!("{base}/v1/clients"))
                .json(&serde_json::json!({"slug": format!("bench-{i:04}"), "name": format!("Bench {i}")}))
                .send()
                .await
                .expect("POST");
            assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        }));
    }
    for post in posts {
        post.await.expect("post task");
    }
    common::wait_active(&app, clients + already).await;
    let wall = started.elapsed();
    let control = cluster
        .cluster()
        .target("bench_ctl")
        .connect()
        .await
        .expect("control");
    let mut latencies: Vec<Duration> = control
        .query(
            "SELECT extract(epoch FROM j.finished_at - c.created_at)::float8
             FROM clients c JOIN jobs j ON j.client_id = c.id
             WHERE c.slug LIKE 'bench-%' AND j.kind = 'provision_client'",
            &[],
        )
        .await
        .expect("latencies")
        .iter()
        .map(|r| Duration::from_secs_f64(r.get::<_, f64>(0)))
        .collect();
    latencies.sort();
    app.stop().await;
    checkpoint(&admin).await;

    // floor: clone the same (current) template sequentially.
    let floor_started = Instant::now();
    for i in 0..clients {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE floor_{i} TEMPLATE \"{template}\""
            ))
            .await
            .expect("floor create");
    }
    let floor = floor_started.elapsed();
    drop_databases(&admin, "floor_").await;

    // floor with two sessions, for context (2 cores).
    let two_started = Instant::now();
    let halves = [0..clients / 2, clients / 2..clients];
    let mut sessions = Vec::new();
    for half in halves {
        let target = cluster.cluster().target("postgres");
        let template = template.clone();
        sessions.push(tokio::spawn(async move {
            let conn = target.connect().await.expect("session");
            for i in half {
                conn.batch_execute(&format!(
                    "CREATE DATABASE floor2_{i} TEMPLATE \"{template}\""
                ))
                .await
                .expect("floor2 create");
            }
        }));
    }
    for session in sessions {
        session.await.expect("session task");
    }
    let floor2 = two_started.elapsed();
    drop_databases(&admin, "floor2_").await;

    // naive: empty database from template0, then run every tenant migration, sequentially.
    let naive_started = Instant::now();
    for i in 0..clients {
        admin
            .batch_execute(&format!("CREATE DATABASE naive_{i} TEMPLATE template0"))
            .await
            .expect("naive create");
        migrate_database(&cluster.cluster().target(&format!("naive_{i}")), None)
            .await
            .expect("naive migrate");
    }
    let naive = naive_started.elapsed();
    drop_databases(&admin, "naive_").await;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let (ours, floor_rate, naive_rate) = (
        rate(clients, wall),
        rate(clients, floor),
        rate(clients, naive),
    );
    println!(
        "provision: {clients} clients, 2 cores, {} (same cluster for all rows)\n",
        common::fsync_label()
    );
    println!(
        "{:<58} {:>10} {:>12} {:>10} {:>10}",
        "method", "wall s", "clients/s", "p50 ms", "p95 ms"
    );
    println!(
        "{:<58} {:>10.2} {:>12.1} {:>10.1} {:>10.1}",
        "mandant: POST /v1/clients -> active (4 workers)",
        wall.as_secs_f64(),
        ours,
        common::ms(common::percentile(&latencies, 50.0)),
        common::ms(common::percentile(&latencies, 95.0))
    );
    println!(
        "{:<58} {:>10.2} {:>12.1} {:>10} {:>10}",
        "floor: CREATE DATABASE ... TEMPLATE (sequential)",
        floor.as_secs_f64(),
        floor_rate,
        "-",
        "-"
    );
    println!(
        "{:<58} {:>10.2} {:>12.1} {:>10} {:>10}",
        "floor, 2 sessions (context)",
        floor2.as_secs_f64(),
        rate(clients, floor2),
        "-",
        "-"
    );
    println!(
        "{:<58} {:>10.2} {:>12.1} {:>10} {:>10}",
        "naive: CREATE DATABASE from template0 + migrations",
        naive.as_secs_f64(),
        naive_rate,
        "-",
        "-"
    );
    println!(
        "{:<58} {:>10} {:>12} {:>10.1} {:>10.1}",
        format!("mandant, idle: one client at a time (n={IDLE_SAMPLES})"),
        "-",
        "-",
        common::ms(common::percentile(&idle, 50.0)),
        common::ms(common::percentile(&idle, 95.0))
    );
    println!(
        "\nmandant / floor = {:.2} (target >= 0.5); mandant / naive = {:.2}",
        ours / floor_rate,
        ours / naive_rate
    );
    common::write_report(
        "provision",
        &serde_json::json!({
            "clients": clients,
            "mandant": {"wall_s": wall.as_secs_f64(), "per_s": ours,
                        "p50_ms": common::ms(common::percentile(&latencies, 50.0)),
                        "p95_ms": common::ms(common::percentile(&latencies, 95.0))},
            "mandant_idle_signup": {"p50_ms": common::ms(common::percentile(&idle, 50.0)),
                                    "p95_ms": common::ms(common::percentile(&idle, 95.0))},
            "floor_template_clone": {"wall_s": floor.as_secs_f64(), "per_s": floor_rate},
            "floor_two_sessions": {"wall_s": floor2.as_secs_f64(), "per_s": rate(clients, floor2)},
            "naive_template0_plus_migrations": {"wall_s": naive.as_secs_f64(), "per_s": naive_rate},
            "ratio_vs_floor": ours / floor_rate,
            "ratio_vs_naive": ours / naive_rate,
        }),
    );
}

/// Drops the databases a phase made (untimed) and checkpoints, so every phase starts from the same state.
async fn drop_databases(admin: &deadpool_postgres::tokio_postgres::Client, prefix: &str) {
    let names: Vec<String> = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&prefix],
        )
        .await
        .expect("list")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in names {
        admin
            .batch_execute(&format!("DROP DATABASE \"{name}\""))
            .await
            .expect("drop");
    }
    checkpoint(admin).await;
}

async fn checkpoint(admin: &deadpool_postgres::tokio_postgres::Client) {
    admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
}
